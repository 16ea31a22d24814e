//! A pseudo-terminal pair labd creates for a QEMU board's `pty` console.

use super::fdio::{fd_console, FdKind};
use super::{Console, ConsoleError, ConsoleIo};
use crate::driver::BoxFuture;
use std::path::PathBuf;

/// A pseudo-terminal pair labd creates: labd reads and writes the master,
/// and `link` is a symlink to the slave (`/dev/pts/N`) for the board's
/// driver to open (QEMU's `-chardev serial,path=...`).
///
/// labd keeps a slave fd open itself, so the master never sees a hang-up
/// when the driver closes its side (a QEMU powering off): the console stays
/// attached across power cycles, and the next driver to open the link finds
/// the same line. A pty hands its reader the bytes its writer made in one
/// copy from the line discipline's buffer, where a Unix socket carries each
/// of QEMU's one-byte writes in a socket buffer of its own.
pub struct PtyConsole {
    pub link: PathBuf,
}

/// A pty console's slave, held open while the console is, and its link:
/// when the console closes, the link goes with it, unless a newer console
/// already moved it to its own pty. A driver then finds no link instead of
/// one to a pty nobody reads.
struct PtyLink {
    _slave: std::os::fd::OwnedFd,
    link: PathBuf,
    target: PathBuf,
}

impl Drop for PtyLink {
    fn drop(&mut self) {
        if std::fs::read_link(&self.link).is_ok_and(|t| t == self.target) {
            let _ = std::fs::remove_file(&self.link);
        }
    }
}

impl PtyConsole {
    fn open(&self) -> std::io::Result<ConsoleIo> {
        let pty = crate::pty::openpty_cloexec()?;
        // Raw on the line itself (a pty has one termios for both sides):
        // a cooked line would echo what labd writes back as console output.
        crate::pty::set_raw(&pty.slave)?;
        let slave_path = nix::unistd::ttyname(&pty.slave)?;
        if let Some(dir) = self.link.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // The link is replaced in one rename, so a driver opening it never
        // finds it missing or half made.
        let mut tmp = self.link.clone().into_os_string();
        tmp.push(".new");
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&slave_path, &tmp)?;
        std::fs::rename(&tmp, &self.link)?;
        let slave: std::sync::Arc<dyn std::any::Any + Send + Sync> = std::sync::Arc::new(PtyLink {
            _slave: pty.slave,
            link: self.link.clone(),
            target: slave_path,
        });
        let io = fd_console(pty.master, FdKind::Pty)?;
        Ok(ConsoleIo {
            reader: io.reader.holding(slave),
            writer: io.writer,
        })
    }
}

impl Console for PtyConsole {
    fn connect(&self) -> BoxFuture<'_, Result<ConsoleIo, ConsoleError>> {
        Box::pin(async move {
            self.open().map_err(|source| ConsoleError::Open {
                device: self.link.display().to_string(),
                source,
            })
        })
    }
    fn describe(&self) -> String {
        format!("pty {} (labd holds the master)", self.link.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::fdio::read_until;
    use crate::console::pacing::{ReadPacer, ReadPacing, PTY_PACING};
    use tokio::io::AsyncWriteExt;
    use tokio::time::Instant;

    /// A `pty` console: labd holds the master, the link names the slave,
    /// the line is raw both ways, and a driver closing its side (QEMU
    /// powering off) does not end the console: the next one finds it.
    #[tokio::test]
    async fn a_pty_console_outlives_the_driver_that_opens_it() {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let console = PtyConsole {
            link: dir.path().join("board.console"),
        };
        let ConsoleIo {
            mut reader,
            mut writer,
        } = console.connect().await.unwrap();
        let slave = std::fs::read_link(&console.link).unwrap();
        assert!(slave.starts_with("/dev/pts/"), "{}", slave.display());
        assert_eq!(reader.pacing(ReadPacing::default()), PTY_PACING);
        let mut pacer = ReadPacer::new(PTY_PACING, Instant::now());

        let mut driver = crate::pty::open_driver(&console.link);
        driver.write_all(b"U-Boot 2023.01\r\n=> ").unwrap();
        read_until(&mut reader, &mut pacer, b"U-Boot 2023.01\r\n=> ").await;
        // labd's writes reach the driver unchanged, and are not echoed back.
        writer.write_all(b"help\r").await.unwrap();
        let mut got = [0u8; 5];
        driver.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"help\r");
        driver.write_all(b"ok").unwrap();
        read_until(&mut reader, &mut pacer, b"ok").await;

        // The driver goes; the next one opens the same link and is heard.
        drop(driver);
        let mut driver = crate::pty::open_driver(&console.link);
        driver.write_all(b"again").unwrap();
        read_until(&mut reader, &mut pacer, b"again").await;

        // Opening the console anew makes a new pty and moves the link; the
        // old console closing leaves the new link alone.
        let second = console.connect().await.unwrap();
        let second_slave = std::fs::read_link(&console.link).unwrap();
        assert_ne!(second_slave, slave);
        drop((reader, writer));
        assert_eq!(std::fs::read_link(&console.link).unwrap(), second_slave);
        // The last console closing takes its link away.
        drop(second);
        assert!(std::fs::symlink_metadata(&console.link).is_err());
    }
}
