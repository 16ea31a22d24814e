//! Pseudo-terminals: the two helpers both sides of a PTY console need.
//!
//! labd makes a pty for a QEMU board's `pty` console, and `labd-sim` makes
//! one per simulated board; both must open it so that no child inherits it,
//! and both set it raw. One module keeps the simulator from depending on
//! the console drivers.

/// Opens a pty pair that no child process inherits. `openpty` leaves both
/// ends open across `exec`: every process labd (or the simulator) starts
/// would hold every console's pty, keeping them alive after their owner
/// dies (found when a killed `labd-sim` left a thousand shells holding
/// 4000 ptys, the host's limit).
pub fn openpty_cloexec() -> nix::Result<nix::pty::OpenptyResult> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    use std::os::fd::AsRawFd;
    let pty = nix::pty::openpty(None, None)?;
    for fd in [&pty.master, &pty.slave] {
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    }
    Ok(pty)
}

/// Makes a tty raw: no echo, no line editing, no translation. On a pty
/// this sets the line both sides share.
pub fn set_raw(fd: &std::os::fd::OwnedFd) -> nix::Result<()> {
    use nix::sys::termios;
    let mut t = termios::tcgetattr(fd)?;
    termios::cfmakeraw(&mut t);
    termios::tcsetattr(fd, termios::SetArg::TCSANOW, &t)
}

/// Opens a pty console's link as a board's driver would (QEMU), for tests.
#[cfg(test)]
pub(crate) fn open_driver(link: &std::path::Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::File::options()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY)
        .open(link)
        .unwrap()
}
