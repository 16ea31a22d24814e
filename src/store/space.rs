//! Free space on the store's filesystem, and the reserve that keeps sled
//! writable when it runs out.
//!
//! sled 0.34 cannot live through a failed write: its first I/O error is
//! kept as a global error, and every write after it (an insert, a flush, a
//! transaction) fails with it until the database is reopened, even once
//! space is back (an experiment on an 8 MiB tmpfs: ENOSPC at a flush, then
//! every insert and flush refused after the filler file was deleted; a
//! reopen found the last flushed state and wrote again). So the store never
//! lets sled reach a full disk. Console bytes, nearly all of what it
//! writes, go to the log segments, which it controls: it stops appending
//! them while less than `low` bytes would be left. A reserve file of the
//! same size is kept beside sled and deleted the moment the store runs
//! short, so the small writes that must land (a job's end, its events and
//! results, a log's truncation mark) still have room even if something else
//! filled the disk. Below `floor` even those wait, held in order, rather
//! than poison sled; submits are refused meanwhile. When the space is back
//! (enough to make the reserve again and keep three times `low` free), the store
//! resumes by itself.

use std::path::{Path, PathBuf};

/// The reserve file, in the store's directory.
const RESERVE_FILE: &str = "space-reserve";
/// The most the reserve and the free-space margin take: sled's writes
/// while suspended are small (state changes, events, results, marks), and
/// a sled segment is 512 KiB.
const MAX_RESERVE: u64 = 8 << 20;
/// The least, however small the filesystem.
const MIN_RESERVE: u64 = 1 << 20;
/// Below this much free space sled is not written at all: one segment of
/// sled's log with room to spare.
const FLOOR: u64 = 512 << 10;

/// Whether an I/O error means the disk cannot take writes now (full, over
/// quota, or failing): a state the store waits out, not corruption.
pub(super) fn is_space(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || matches!(
            e.raw_os_error(),
            Some(nix::libc::ENOSPC | nix::libc::EDQUOT | nix::libc::EIO | nix::libc::EROFS)
        )
}

/// The store's view of its filesystem's free space.
pub(super) struct Space {
    dir: PathBuf,
    /// The reserve's size, and the free space console appends leave.
    low: u64,
    /// Why writes are suspended, while they are.
    suspended: Option<String>,
    /// Whether the reserve file is in place.
    reserved: bool,
}

impl Space {
    /// Watches the filesystem of `dir` (the store's directory) and makes
    /// the reserve there if it is missing; with too little space for it, the
    /// store starts suspended.
    pub fn open(dir: &Path) -> Space {
        // A sixteenth of the filesystem, within bounds: a lab on a small
        // disk still keeps most of it for logs.
        let low = statvfs(dir)
            .map(|(_, total)| total / 16)
            .unwrap_or(MAX_RESERVE)
            .clamp(MIN_RESERVE, MAX_RESERVE);
        let mut s = Space {
            dir: dir.to_owned(),
            low,
            suspended: None,
            reserved: false,
        };
        match s.make_reserve() {
            Ok(()) => s.reserved = true,
            Err(e) => {
                let why = format!("cannot reserve {low} bytes: {e}");
                tracing::warn!(reason = %why, "store writes suspended from the start: submits are refused and console logs stop until space returns");
                s.suspend(why);
            }
        }
        s
    }

    /// Free bytes for labd on the store's filesystem; `u64::MAX` when the
    /// filesystem cannot say (nothing is then held back).
    pub fn free(&self) -> u64 {
        statvfs(&self.dir).map_or(u64::MAX, |(free, _)| free)
    }

    /// How many console bytes may be appended now, leaving `low` free.
    pub fn log_budget(&self, free: u64) -> u64 {
        if self.suspended.is_some() {
            0
        } else {
            free.saturating_sub(self.low)
        }
    }

    /// Whether sled may be written: never below the floor.
    pub fn sled_room(&self, free: u64) -> bool {
        free >= FLOOR
    }

    pub fn suspended(&self) -> bool {
        self.suspended.is_some()
    }

    /// Why writes are suspended, naming the path and the free space.
    pub fn why(&self, free: u64) -> String {
        self.suspended
            .clone()
            .unwrap_or_else(|| self.no_space(free))
    }

    /// "no space left on device" with the path and the free space.
    pub fn no_space(&self, free: u64) -> String {
        format!(
            "no space left on device: {} has {free} bytes free",
            self.dir.display()
        )
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Suspends console appends and submits, releasing the reserve so the
    /// writes that must land have room. Returns whether this suspended them
    /// (the caller says so, once its metrics do).
    pub fn suspend(&mut self, why: String) -> bool {
        if self.suspended.is_some() {
            return false;
        }
        if self.reserved {
            match std::fs::remove_file(self.dir.join(RESERVE_FILE)) {
                Ok(()) => self.reserved = false,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.reserved = false,
                Err(e) => tracing::error!(error = %e, "releasing the store's space reserve failed"),
            }
        }
        self.suspended = Some(why);
        true
    }

    /// Resumes once there is room for the reserve and three times the
    /// margin besides (suspended, about the reserve and the margin are
    /// free: twice the margin must come back, so the store does not flap); returns whether this resumed (the caller says so, once its
    /// metrics do).
    pub fn try_resume(&mut self, free: u64) -> bool {
        if self.suspended.is_none() || free < 4 * self.low {
            return false;
        }
        if let Err(e) = self.make_reserve() {
            tracing::warn!(error = %e, "store still short of space: making its reserve failed");
            return false;
        }
        self.reserved = true;
        self.suspended = None;
        true
    }

    /// Makes the reserve file, its blocks allocated (not a sparse file).
    fn make_reserve(&self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let p = self.dir.join(RESERVE_FILE);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)?;
        let r = nix::fcntl::posix_fallocate(f.as_raw_fd(), 0, self.low as nix::libc::off_t)
            .map_err(std::io::Error::from)
            .and_then(|()| f.sync_all());
        if let Err(e) = r {
            // A part-made reserve gives its space back at once.
            drop(f);
            let _ = std::fs::remove_file(&p);
            return Err(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", p.display()),
            ));
        }
        Ok(())
    }
}

/// (free bytes for unprivileged users, total bytes) of the filesystem of `dir`.
fn statvfs(dir: &Path) -> Option<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    let unit = s.fragment_size() as u64;
    Some((
        (s.blocks_available() as u64).saturating_mul(unit),
        (s.blocks() as u64).saturating_mul(unit),
    ))
}
