//! `file://` artifacts, opened with the rights of the job's submitter.
//!
//! labd usually runs as root (TFTP's port 69, serial ports, relays), so a
//! job's `file:///root/secret` must not become a way to read what its
//! submitter could not: every `file://` artifact is opened here, at submit
//! (so a refusal names the job's key path) and again at deploy (the file
//! may have changed meanwhile), and nowhere else.
//!
//! What holds for a file labd reads:
//! - it lies under one of the lab's `[deploy] file_roots` once every
//!   symlink is resolved (a lab allows none unless it says so; the demo lab
//!   allows `/`);
//! - the submitter could open it themselves: the open runs on a thread of
//!   its own whose filesystem uid, gid and supplementary groups are the
//!   submitter's (`setfsuid`, `setfsgid` and a raw `setgroups` change only
//!   the calling thread, and a filesystem uid other than 0 drops the
//!   thread's `CAP_DAC_OVERRIDE`), so the kernel makes the check, ACLs and
//!   all. A labd that may not switch (not root) opens a file for another
//!   user only if anyone may read it and reach it;
//! - it is a regular file, not on procfs, sysfs or another kernel
//!   filesystem: FIFOs, devices and sockets are refused before they are
//!   ever opened, and the open itself is `O_NONBLOCK` (cleared after
//!   `fstat`), so a FIFO swapped in at the last moment cannot hold a thread.
//!
//! ## Invariants
//!
//! The only code that opens a job's `file://` path; it opens only regular
//! files under `file_roots`, with the submitter's rights, never blocking on
//! the open.

use crate::model::Identity;
use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why a `file://` artifact is not read.
#[derive(Debug, thiserror::Error)]
pub enum FileRefusal {
    #[error(
        "{path}: this lab allows no file:// artifacts (its config sets no [deploy] file_roots)"
    )]
    NoRoots { path: String },
    #[error("{path}: not under a directory this lab allows for file:// artifacts ([deploy] file_roots: {roots})")]
    OutsideRoots { path: String, roots: String },
    #[error("{path}: {kind}; only regular files are deployed")]
    NotRegular { path: String, kind: &'static str },
    #[error("{path}: a file of {fs}, which labd never deploys")]
    KernelFs { path: String, fs: &'static str },
    #[error("{path}: {who} cannot read it: {source}")]
    Unreadable {
        path: String,
        who: String,
        source: std::io::Error,
    },
    #[error("{path}: labd cannot open files as {who} (it runs without the right to switch users), so it reads only files anyone may read; this one is not")]
    NotPublic { path: String, who: String },
    #[error("{path}: changed while it was being opened; submit again")]
    Raced { path: String },
}

/// The lab's rule for `file://` artifacts: the directories they may come
/// from, canonical where they exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileRoots(Vec<PathBuf>);

impl FileRoots {
    pub fn new(roots: &[PathBuf]) -> FileRoots {
        FileRoots(roots.to_vec())
    }

    /// Whether `resolved` (a canonical path) is under a root. Roots are
    /// resolved at each check: a root that is itself a symlink, or that
    /// appears after labd started, counts as it is now.
    fn allows(&self, resolved: &Path) -> bool {
        self.0.iter().any(|r| {
            std::fs::canonicalize(r)
                .map(|r| resolved.starts_with(r))
                .unwrap_or(false)
        })
    }

    fn describe(&self) -> String {
        self.0
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// An opened artifact and its size.
pub struct Opened {
    pub file: File,
    pub len: u64,
}

/// Opens `path` for reading as `who` (None: labd itself, for what the lab's
/// own config asked for, such as health checks), under `roots`. Blocks:
/// callers run it on the blocking pool.
pub fn open(path: &str, who: Option<&Identity>, roots: &FileRoots) -> Result<Opened, FileRefusal> {
    if roots.0.is_empty() {
        return Err(FileRefusal::NoRoots { path: path.into() });
    }
    let opened = match who {
        None => open_checked(path, roots, "labd", false)?,
        // The same user may do whatever labd may: nothing to switch.
        Some(w) if w.uid == nix::unistd::geteuid().as_raw() => {
            open_checked(path, roots, &describe(w), false)?
        }
        Some(w) => open_as(path, w, roots)?,
    };
    // What was opened is still under a root: a path component swapped for
    // a symlink between the look and the open is caught here. Read as
    // labd, since /proc/self/fd answers only the process's own users.
    let fd = {
        use std::os::fd::AsRawFd;
        opened.file.as_raw_fd()
    };
    if let Ok(at) = std::fs::read_link(format!("/proc/self/fd/{fd}")) {
        if !roots.allows(&at) {
            return Err(FileRefusal::OutsideRoots {
                path: path.to_owned(),
                roots: roots.describe(),
            });
        }
    }
    Ok(opened)
}

/// [`open_checked`] on a thread of its own that has `who`'s filesystem
/// identity.
fn open_as(path: &str, who: &Identity, roots: &FileRoots) -> Result<Opened, FileRefusal> {
    let who = resolved(who);
    let name = describe(&who);
    std::thread::scope(|s| {
        // A labd that may not switch reads only what anyone may read.
        s.spawn(|| open_checked(path, roots, &name, !become_fs(&who)))
            .join()
            .unwrap_or_else(|_| {
                Err(FileRefusal::Unreadable {
                    path: path.to_owned(),
                    who: name.clone(),
                    source: std::io::Error::other("the thread opening it panicked"),
                })
            })
    })
}

/// `uid N` with the user's name when it has one.
fn describe(who: &Identity) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(who.uid)) {
        Ok(Some(u)) => format!("{} (uid {})", u.name, who.uid),
        _ => format!("uid {}", who.uid),
    }
}

/// `who` with its primary group and groups filled in from the user
/// database where the record lacks them (jobs stored before labd kept
/// them): the rights the user has now.
fn resolved(who: &Identity) -> Identity {
    use nix::unistd::{Uid, User};
    if who.gid.is_some() && who.groups.is_some() {
        return who.clone();
    }
    let user = User::from_uid(Uid::from_raw(who.uid)).ok().flatten();
    let gid = who
        .gid
        .or_else(|| user.as_ref().map(|u| u.gid.as_raw()))
        .unwrap_or(who.uid);
    let groups = who.groups.clone().unwrap_or_else(|| {
        user.and_then(|u| listed_groups(&u.name, gid))
            .unwrap_or_default()
    });
    Identity {
        uid: who.uid,
        gid: Some(gid),
        groups: Some(groups),
    }
}

/// The groups the user database gives `name` (with `gid`, its primary
/// group); may block (NSS).
pub fn listed_groups(name: &str, gid: u32) -> Option<Vec<u32>> {
    let name = std::ffi::CString::new(name).ok()?;
    let groups = nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(gid)).ok()?;
    Some(groups.iter().map(|g| g.as_raw()).collect())
}

/// Makes this thread's filesystem identity `who`'s. Only for a thread that
/// ends right after (the scoped thread in `open`); false when labd may not
/// switch (not root), in which case nothing changed.
fn become_fs(who: &Identity) -> bool {
    use nix::libc;
    let groups: Vec<libc::gid_t> = who.groups.clone().unwrap_or_default();
    // SAFETY: raw system calls that change only the calling thread's
    // credentials (glibc's wrappers would change every thread's); the
    // groups pointer and length describe a live Vec.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0 {
            return false;
        }
        let gid = who.gid.unwrap_or(who.uid);
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, who.uid);
        // setfsuid answers with the previous value, never an error: ask
        // again with an invalid id to read what it is now.
        let uid_now = libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32;
        let gid_now = libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32;
        uid_now == who.uid && gid_now == gid
    }
}

fn kind_of(ft: &std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Kernel filesystems whose "regular files" are views of the system
/// (`/proc/self/environ`, `/sys/...`): never an artifact.
fn kernel_fs(f: &File) -> Option<&'static str> {
    use nix::sys::statfs::*;
    let t = fstatfs(f).ok()?.filesystem_type();
    let known: &[(FsType, &str)] = &[
        (PROC_SUPER_MAGIC, "procfs"),
        (SYSFS_MAGIC, "sysfs"),
        (DEBUGFS_MAGIC, "debugfs"),
        (TRACEFS_MAGIC, "tracefs"),
        (SECURITYFS_MAGIC, "securityfs"),
        (CGROUP_SUPER_MAGIC, "cgroupfs"),
        (CGROUP2_SUPER_MAGIC, "cgroup2fs"),
        (DEVPTS_SUPER_MAGIC, "devpts"),
        (FsType(0xde5e_81e4), "efivarfs"),
        (BPF_FS_MAGIC, "bpffs"),
    ];
    known.iter().find(|(m, _)| *m == t).map(|(_, n)| *n)
}

/// Whether anyone may read `resolved`: every directory above it
/// searchable by others and the file readable by others.
fn public(resolved: &Path, meta: &std::fs::Metadata) -> bool {
    if meta.mode() & 0o004 == 0 {
        return false;
    }
    resolved.ancestors().skip(1).all(|dir| {
        std::fs::metadata(dir)
            .map(|m| m.mode() & 0o001 != 0)
            .unwrap_or(false)
    })
}

/// The checks and the open, as whoever this thread is now.
fn open_checked(
    path: &str,
    roots: &FileRoots,
    who: &str,
    need_public: bool,
) -> Result<Opened, FileRefusal> {
    let unreadable = |source| FileRefusal::Unreadable {
        path: path.to_owned(),
        who: who.to_owned(),
        source,
    };
    let outside = || FileRefusal::OutsideRoots {
        path: path.to_owned(),
        roots: roots.describe(),
    };
    let resolved = std::fs::canonicalize(path).map_err(unreadable)?;
    if !roots.allows(&resolved) {
        return Err(outside());
    }
    // Look before opening: opening a device or a FIFO is itself an act.
    let meta = std::fs::metadata(&resolved).map_err(unreadable)?;
    if !meta.file_type().is_file() {
        return Err(FileRefusal::NotRegular {
            path: path.to_owned(),
            kind: kind_of(&meta.file_type()),
        });
    }
    if need_public && !public(&resolved, &meta) {
        return Err(FileRefusal::NotPublic {
            path: path.to_owned(),
            who: who.to_owned(),
        });
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY | nix::libc::O_NOFOLLOW)
        .open(&resolved)
        .map_err(unreadable)?;
    // What was opened is what was looked at, and still under a root: a
    // path component swapped for a symlink in between is caught here.
    let now = file.metadata().map_err(unreadable)?;
    if !now.file_type().is_file() || now.dev() != meta.dev() || now.ino() != meta.ino() {
        return Err(FileRefusal::Raced {
            path: path.to_owned(),
        });
    }
    if let Some(fs) = kernel_fs(&file) {
        return Err(FileRefusal::KernelFs {
            path: path.to_owned(),
            fs,
        });
    }
    // Reads of a regular file never wait on O_NONBLOCK anyway; cleared so
    // that nothing downstream sees EAGAIN.
    let _ = nix::fcntl::fcntl(
        {
            use std::os::fd::AsRawFd;
            file.as_raw_fd()
        },
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    );
    Ok(Opened {
        len: now.len(),
        file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn roots(p: &Path) -> FileRoots {
        FileRoots::new(&[p.to_path_buf()])
    }

    #[test]
    fn a_lab_without_roots_reads_no_file() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("k");
        std::fs::write(&f, b"x").unwrap();
        let e = open(f.to_str().unwrap(), None, &FileRoots::default()).err();
        assert!(matches!(e, Some(FileRefusal::NoRoots { .. })), "{e:?}");
    }

    #[test]
    fn a_file_outside_the_roots_is_refused_even_through_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let (inside, outside) = (d.path().join("in"), d.path().join("out"));
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), inside.join("link")).unwrap();
        for p in [outside.join("secret"), inside.join("link")] {
            let e = open(p.to_str().unwrap(), None, &roots(&inside)).err();
            assert!(matches!(e, Some(FileRefusal::OutsideRoots { .. })), "{e:?}");
        }
        std::fs::write(inside.join("ok"), b"fine").unwrap();
        let o = open(inside.join("ok").to_str().unwrap(), None, &roots(&inside)).unwrap();
        assert_eq!(o.len, 4);
    }

    #[test]
    fn fifos_and_kernel_files_are_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let all = FileRoots::new(&[PathBuf::from("/")]);
        let e = open(fifo.to_str().unwrap(), None, &all).err();
        assert!(
            matches!(e, Some(FileRefusal::NotRegular { kind: "a FIFO", .. })),
            "{e:?}"
        );
        let e = open("/proc/self/environ", None, &all).err();
        assert!(matches!(e, Some(FileRefusal::KernelFs { .. })), "{e:?}");
        let e = open("/dev/null", None, &all).err();
        assert!(
            matches!(
                e,
                Some(FileRefusal::NotRegular {
                    kind: "a character device",
                    ..
                })
            ),
            "{e:?}"
        );
    }

    /// As root, a file only root may read is refused for another user and
    /// read for a user who may read it.
    #[test]
    fn a_file_is_read_only_with_its_readers_rights() {
        // The same rule as tests/common's `require`: under CI=true a missing
        // condition fails the test, elsewhere it is skipped and said so.
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "root is missing (CI=true): switching users needs root; .ci/run runs as root"
            );
            eprintln!("skipped: a_file_is_read_only_with_its_readers_rights: root missing");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let secret = d.path().join("secret");
        std::fs::write(&secret, b"root only").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let public = d.path().join("public");
        std::fs::write(&public, b"anyone").unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).unwrap();
        let nobody = Identity {
            uid: 65534,
            gid: Some(65534),
            groups: Some(vec![]),
        };
        let r = roots(d.path());
        let e = open(secret.to_str().unwrap(), Some(&nobody), &r).err();
        assert!(
            matches!(&e, Some(FileRefusal::Unreadable { source, .. }) if source.kind() == std::io::ErrorKind::PermissionDenied),
            "{e:?}"
        );
        assert_eq!(
            open(public.to_str().unwrap(), Some(&nobody), &r)
                .unwrap()
                .len,
            6
        );
        // A group the reader is in opens a group-readable file.
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
        nix::unistd::chown(&secret, None, Some(nix::unistd::Gid::from_raw(4242))).unwrap();
        let member = Identity {
            groups: Some(vec![4242]),
            ..nobody.clone()
        };
        assert!(open(secret.to_str().unwrap(), Some(&member), &r).is_ok());
        assert!(open(secret.to_str().unwrap(), Some(&nobody), &r).is_err());
        // labd's own thread kept its rights.
        assert!(std::fs::read(&secret).is_ok());
    }
}
