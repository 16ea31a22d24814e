//! A console's byte streams: reading a tty or socket fd directly, outside
//! the event loop while it streams, and writing it; the batches the board
//! actor's stream receives.

use super::pacing::{
    ReadPacer, ReadPacing, BATCH_READ_BYTES, FLOOD_BATCH_BYTES, PTY_PACING, SOCKET_PACING,
};
use super::{ConsoleIo, Held};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite};

/// The reading side of a console.
pub enum ConsoleReader {
    /// Any other byte stream (telnet's filtered pipe, a command's pipe),
    /// read as it comes, never paced.
    Stream(Box<dyn AsyncRead + Send + Unpin>),
    /// A tty (a serial adapter, a PTY) or a socket (QEMU's unix socket,
    /// a raw TCP console), read directly from its fd: see [`FdReader`].
    Fd(FdReader),
}

impl ConsoleReader {
    pub fn stream(r: impl AsyncRead + Send + Unpin + 'static) -> Self {
        ConsoleReader::Stream(Box::new(r))
    }

    /// How this console's reads are paced, given the lab's pacing for
    /// serial lines (`limits.console_read_interval_ms`): a serial line by
    /// the lab's, a socket by [`SOCKET_PACING`], labd's pty by
    /// [`PTY_PACING`], other streams not at all.
    pub fn pacing(&self, line: ReadPacing) -> ReadPacing {
        match self {
            ConsoleReader::Stream(_) => ReadPacing::UNPACED,
            ConsoleReader::Fd(f) => match f.kind {
                FdKind::Line => line,
                FdKind::Socket => SOCKET_PACING,
                FdKind::Pty => PTY_PACING,
            },
        }
    }

    /// Reads the next batch of console bytes into `buf`, paced by `pacer`
    /// (see [`ReadPacing`]). `Ok(0)` is the end of the stream.
    /// When the board has used up its burst, the read waits for its next
    /// turn first and then takes everything the kernel buffered meanwhile.
    pub async fn read_batch(
        &mut self,
        buf: &mut [u8],
        pacer: &mut ReadPacer,
    ) -> std::io::Result<usize> {
        let mut turn = false;
        while let Some(at) = pacer.ready_at(tokio::time::Instant::now()) {
            if !turn {
                // Waiting for a turn, not for bytes: out of the event loop.
                self.park();
                turn = true;
            }
            // A write to the console ends the wait early (see `Replies`).
            let replies = pacer.replies();
            tokio::select! {
                _ = tokio::time::sleep_until(at) => break,
                _ = replies.wake.notified() => {}
            }
        }
        // In a burst the fd is still registered, and waiting on it reads
        // at once what is there (a read of our own first would find the
        // line empty twice).
        let registered = matches!(self, ConsoleReader::Fd(t) if t.waiter.is_some());
        let first = if registered {
            None
        } else {
            self.read_now(buf).await?
        };
        let mut filled = match first {
            Some(n) => n,
            None => {
                // Nothing at its turn: the line has been quiet for at least
                // an interval, and what comes next starts an exchange. (A
                // read that finds nothing right after the last one, between
                // turns, says nothing of the kind; nor does the time a read
                // waits, which under load is mostly the actor's lateness.)
                if turn {
                    pacer.quiet();
                }
                self.read_when_ready(buf).await?
            }
        };
        // More may wait right behind a large read (a fast console, or a
        // pty's ring buffer wrapping around): take it now, without waiting.
        let mut last = filled;
        while last >= BATCH_READ_BYTES && filled < buf.len() {
            match self.read_now(&mut buf[filled..]).await? {
                Some(n) if n > 0 => {
                    filled += n;
                    last = n;
                }
                // The end (which the next read reports again) or nothing yet.
                _ => break,
            }
        }
        // A flood goes without using a turn: the next read comes at once.
        // Any smaller batch uses its turn, also one that gathered a few KB
        // because its turn came late (free, the next read would find the
        // line empty and wait on the event loop for the very next chunk: at
        // 1000 boards, thousands of registrations a second).
        if filled > 0 && filled < FLOOD_BATCH_BYTES {
            pacer.spend(tokio::time::Instant::now());
        }
        Ok(filled)
    }

    /// Waits for the next bytes and reads them.
    async fn read_when_ready(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use tokio::io::AsyncReadExt;
        match self {
            ConsoleReader::Stream(r) => r.read(buf).await,
            ConsoleReader::Fd(t) => t.read_when_ready(buf).await,
        }
    }

    /// Takes a tty or socket out of the event loop (see [`FdReader`]).
    fn park(&mut self) {
        if let ConsoleReader::Fd(t) = self {
            t.waiter = None;
        }
    }

    /// Reads what is there now, without waiting: `None` if nothing is.
    async fn read_now(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        use tokio::io::AsyncReadExt;
        match self {
            ConsoleReader::Stream(r) => futures_lite::future::poll_once(r.read(buf))
                .await
                .transpose(),
            ConsoleReader::Fd(t) => t.read_now(buf),
        }
    }

    /// Keeps `hold` (a UUCP lock, a child process) alive as long as this reader.
    pub(super) fn holding(self, hold: std::sync::Arc<dyn std::any::Any + Send + Sync>) -> Self {
        match self {
            ConsoleReader::Stream(inner) => ConsoleReader::stream(Held { inner, _lock: hold }),
            ConsoleReader::Fd(mut t) => {
                t.hold.push(hold);
                ConsoleReader::Fd(t)
            }
        }
    }
}

impl AsyncRead for ConsoleReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ConsoleReader::Stream(r) => Pin::new(r).poll_read(cx, buf),
            ConsoleReader::Fd(t) => Pin::new(t).poll_read(cx, buf),
        }
    }
}

/// A console fd's reading side (a tty or a socket), kept out of the event
/// loop while it streams.
///
/// tokio's readiness is edge-triggered and permanent: a registered serial
/// port wakes the runtime for every chunk its adapter hands the kernel
/// (every few milliseconds at line rate), and a registered socket for every
/// write its sender makes (QEMU writes its serial output a byte at a time),
/// even while the board's reads wait their paced turn. This reader instead
/// reads the non-blocking fd directly when its turn comes and registers
/// with the event loop only while its reads wait for bytes (a quiet line,
/// then the burst after it); [`ConsoleReader::read_batch`] takes it out
/// when they wait for turns again. A thousand streaming boards then cost
/// one timer wake-up per pacing interval, not tens of thousands of events.
pub struct FdReader {
    fd: std::os::fd::OwnedFd,
    kind: FdKind,
    /// A registration of a duplicate of `fd`, only while reads wait for
    /// bytes rather than for turns.
    waiter: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
    hold: Vec<std::sync::Arc<dyn std::any::Any + Send + Sync>>,
}

/// What a console fd is, which decides how its reads are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    /// A serial line with a baud rate behind it (an adapter, a simulated
    /// board's PTY): the lab's pacing.
    Line,
    /// A socket (QEMU's unix socket, a raw TCP console): no baud rate
    /// behind it, and its sender held back by what the socket holds:
    /// [`SOCKET_PACING`].
    Socket,
    /// A pty labd made for a board's driver (QEMU): no baud rate behind it
    /// either, but a pty's buffers hold far more: [`PTY_PACING`].
    Pty,
}

impl AsyncRead for FdReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        loop {
            match self.read_now(buf.initialize_unfilled()) {
                Ok(Some(n)) => {
                    buf.advance(n);
                    // Out of the event loop again until the line is quiet.
                    self.waiter = None;
                    return std::task::Poll::Ready(Ok(()));
                }
                Ok(None) => {
                    let w = self.waiter()?;
                    let mut ready = std::task::ready!(w.poll_read_ready(cx))?;
                    ready.clear_ready();
                }
                Err(e) => return std::task::Poll::Ready(Err(e)),
            }
        }
    }
}

impl FdReader {
    /// Waits until the fd has bytes, and reads them. The fd stays in the
    /// event loop afterwards, while its reads go as the bytes come (a
    /// burst); [`ConsoleReader::read_batch`] takes it out when its reads
    /// wait for turns again. (Registering anew for each read of a burst
    /// cost a `dup`, two `epoll_ctl`s and a `close` per read.)
    async fn read_when_ready(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::fd::AsFd;
        let fd = self.fd.as_fd().as_raw_fd();
        let w = self.waiter()?;
        loop {
            let mut ready = w.readable().await?;
            // A `WouldBlock` clears the readiness, so the next wait is for
            // new bytes.
            match ready.try_io(|_| loop {
                match nix::unistd::read(fd, buf) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    r => return r.map_err(std::io::Error::from),
                }
            }) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// The fd's registration with the event loop (a duplicate of it),
    /// made now if there is none.
    fn waiter(&mut self) -> std::io::Result<&tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
        let w = match self.waiter.take() {
            Some(w) => w,
            None => {
                let dup = self.fd.try_clone()?;
                // SAFETY: the AsyncFd owns `dup` for its whole life.
                unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        dup,
                        tokio::io::Interest::READABLE,
                    )
                }
                .map_err(std::io::Error::from)?
            }
        };
        Ok(self.waiter.insert(w))
    }

    /// Reads what the fd has now: `None` if nothing is there yet.
    fn read_now(&self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        use std::os::fd::AsFd;
        loop {
            return match nix::unistd::read(self.fd.as_fd().as_raw_fd(), buf) {
                Ok(n) => Ok(Some(n)),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => Ok(None),
                Err(e) => Err(e.into()),
            };
        }
    }
}

/// A console fd's writing side: an fd of its own in the event loop, for
/// writability only, so incoming bytes never wake it.
struct FdWriter {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

impl AsyncWrite for FdWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        loop {
            let mut guard = std::task::ready!(self.fd.poll_write_ready(cx))?;
            match guard
                .try_io(|fd| nix::unistd::write(fd.get_ref(), buf).map_err(std::io::Error::from))
            {
                Ok(r) => return std::task::Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }
    fn poll_flush(
        self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A console on an open fd (a tty or a connected socket), read and written
/// directly: see [`FdReader`].
pub(super) fn fd_console(fd: std::os::fd::OwnedFd, kind: FdKind) -> std::io::Result<ConsoleIo> {
    let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
    nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(
            nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK,
        ),
    )?;
    let write_fd = fd.try_clone()?;
    // SAFETY: the AsyncFd owns `write_fd` for its whole life.
    let writer = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(write_fd, tokio::io::Interest::WRITABLE)
    }?;
    Ok(ConsoleIo {
        reader: ConsoleReader::Fd(FdReader {
            fd,
            kind,
            waiter: None,
            hold: Vec::new(),
        }),
        writer: Box::new(FdWriter { fd: writer }),
    })
}

/// Reads batches until `want` has arrived and checks it is all there was,
/// for the tests of the drivers that share this reader.
#[cfg(test)]
pub(super) async fn read_until(reader: &mut ConsoleReader, pacer: &mut ReadPacer, want: &[u8]) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    while got.len() < want.len() {
        let n = reader.read_batch(&mut buf, pacer).await.unwrap();
        assert_ne!(n, 0, "the console ended after {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, want);
}
