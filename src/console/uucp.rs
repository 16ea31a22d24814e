//! UUCP lock files for serial ports, as minicom, picocom and cu honour them.
//!
//! The serial crate already takes TIOCEXCL and an flock, but root ignores
//! TIOCEXCL and the usual terminal programs look only at the UUCP lock
//! (`/run/lock/LCK..ttyUSB0`, holding the owner's PID as ten right-aligned
//! digits and a newline). labd takes it before opening a port and removes it
//! when the console closes; a lock whose PID is dead is stale and removed.
//!
//! ## Invariants
//!
//! A lock file is created exclusively (O_EXCL) and removed only by its
//! holder's drop, or as stale when its PID is dead.

use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{device} is in use by PID {pid} ({program}): lock {lock}")]
    Held {
        device: String,
        pid: i32,
        program: String,
        lock: String,
    },
    #[error("lock {lock}: {source}")]
    Io {
        lock: String,
        #[source]
        source: std::io::Error,
    },
}

/// A held lock; dropping it removes the file.
#[derive(Debug)]
pub struct Lock {
    path: PathBuf,
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The lock file's name for a device: `/dev/ttyUSB0` (or a by-id link to
/// it) is `LCK..ttyUSB0`; deeper nodes such as `/dev/pts/3` are
/// `LCK..pts_3`.
pub fn lock_name(device: &Path) -> String {
    let real = std::fs::canonicalize(device).unwrap_or_else(|_| device.to_path_buf());
    let rel = real
        .strip_prefix("/dev")
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| PathBuf::from(real.file_name().unwrap_or_default()));
    format!("LCK..{}", rel.display().to_string().replace('/', "_"))
}

fn alive(pid: i32) -> bool {
    use nix::errno::Errno;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        // Someone else's process: alive all the same.
        Err(Errno::EPERM) => true,
        Err(_) => false,
    }
}

fn program(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown program".into())
}

/// Takes the lock of `device` in `dir` for this process.
pub fn lock(dir: &Path, device: &Path) -> Result<Lock, LockError> {
    let path = dir.join(lock_name(device));
    let io = |source| LockError::Io {
        lock: path.display().to_string(),
        source,
    };
    // Two tries: the second after removing a stale lock.
    for _ in 0..2 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                let pid = std::process::id();
                f.write_all(format!("{pid:>10}\n").as_bytes()).map_err(io)?;
                return Ok(Lock { path });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                match text.trim().parse::<i32>() {
                    Ok(pid) if pid > 0 && alive(pid) => {
                        return Err(LockError::Held {
                            device: device.display().to_string(),
                            pid,
                            program: program(pid),
                            lock: path.display().to_string(),
                        })
                    }
                    _ => {
                        tracing::warn!(lock = %path.display(), "removing a stale UUCP lock");
                        std::fs::remove_file(&path).map_err(io)?;
                    }
                }
            }
            Err(e) => return Err(io(e)),
        }
    }
    Err(io(std::io::Error::other("lock keeps reappearing")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_holder_is_named_and_a_dead_one_is_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Path::new("/dev/ttyFAKE9");
        let held = lock(dir.path(), dev).unwrap();
        let text = std::fs::read_to_string(dir.path().join("LCK..ttyFAKE9")).unwrap();
        assert_eq!(text, format!("{:>10}\n", std::process::id()));
        match lock(dir.path(), dev) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid as u32, std::process::id()),
            other => panic!("{other:?}"),
        }
        drop(held);
        assert!(!dir.path().join("LCK..ttyFAKE9").exists());
        // A lock left by a process that is gone.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        std::fs::write(dir.path().join("LCK..ttyFAKE9"), format!("{dead:>10}\n")).unwrap();
        let _again = lock(dir.path(), dev).unwrap();
    }

    #[test]
    fn names_follow_the_device_node() {
        assert_eq!(lock_name(Path::new("/dev/ttyNOPE0")), "LCK..ttyNOPE0");
        assert_eq!(lock_name(Path::new("/dev/pts/77777")), "LCK..pts_77777");
    }
}
