//! Consoles: how labd reaches a board's serial line.
//!
//! Every console kind implements [`Console`]; a board actor only sees the
//! trait. The serial driver (tokio-serial) is the real one; the simulated
//! board is reached through the very same serial driver, on a PTY whose path
//! the simulator hands out, so the demo and the tests exercise labd's real
//! console path.

use crate::config::ConsoleConfig;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::driver::BoxFuture;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("console {device}: {source}")]
    Open {
        device: String,
        #[source]
        source: std::io::Error,
    },
    #[error("console: simulator: {0}")]
    Sim(String),
    #[error("console: {0}")]
    Locked(#[from] crate::uucp::LockError),
}

/// An open console: a byte stream each way.
pub struct ConsoleIo {
    pub reader: ConsoleReader,
    pub writer: Box<dyn AsyncWrite + Send + Unpin>,
}

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
    fn holding(self, hold: std::sync::Arc<dyn std::any::Any + Send + Sync>) -> Self {
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

pub trait Console: Send + Sync {
    /// Opens (or re-opens) the console.
    fn connect(&self) -> BoxFuture<'_, Result<ConsoleIo, ConsoleError>>;
    /// A short human description, for logs.
    fn describe(&self) -> String;
    /// True when the board itself connects only once powered (a QEMU
    /// process started by power-on): then power must not wait for the
    /// console.
    fn attaches_after_power_on(&self) -> bool {
        false
    }
}

/// A serial device: a USB adapter, a UART, or a PTY slave.
pub struct Serial {
    pub device: PathBuf,
    pub settings: SerialSettings,
    /// Where UUCP lock files live (`/run/lock`).
    pub lock_dir: PathBuf,
}

/// Line settings of a serial port.
#[derive(Debug, Clone, Copy)]
pub struct SerialSettings {
    pub baud: u32,
    pub parity: tokio_serial::Parity,
    pub flow: tokio_serial::FlowControl,
    pub data_bits: tokio_serial::DataBits,
    pub stop_bits: tokio_serial::StopBits,
}

impl SerialSettings {
    /// 8N1 without flow control, at `baud`.
    pub fn plain(baud: u32) -> Self {
        SerialSettings {
            baud,
            parity: tokio_serial::Parity::None,
            flow: tokio_serial::FlowControl::None,
            data_bits: tokio_serial::DataBits::Eight,
            stop_bits: tokio_serial::StopBits::One,
        }
    }
}

/// How often a board's console reads reach its actor
/// (`limits.console_read_interval_ms` and `console_read_burst`).
///
/// A serial line at 115200 baud delivers about 200 bytes every few
/// milliseconds; passing each read on would wake the board actor, its
/// runner and the log buffer hundreds of times a second per board. Reads
/// are therefore batched: up to `burst` deliveries go at once (interactive
/// exchanges, a U-Boot command and its prompt, are not slowed), and a board
/// that keeps talking is then delivered at most once per `interval`,
/// everything the kernel buffered in between in one piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPacing {
    pub interval: std::time::Duration,
    pub burst: u32,
}

impl ReadPacing {
    /// The pacing the lab config's `[limits]` ask for.
    pub fn from_limits(limits: &crate::config::Limits) -> Self {
        ReadPacing {
            interval: std::time::Duration::from_millis(limits.console_read_interval_ms),
            burst: limits.console_read_burst,
        }
    }

    /// Every read passed on at once.
    pub const UNPACED: ReadPacing = ReadPacing {
        interval: std::time::Duration::ZERO,
        burst: 0,
    };
}

/// The pacing of a socket console (QEMU's unix socket, ser2net's raw TCP).
///
/// Unlike a tty's, a socket's sender is held back by what the socket holds:
/// QEMU writes its guest's serial output a byte at a time, and a unix socket
/// takes only about 270 one-byte writes (each costs a whole buffer of the
/// sender's 208 KiB allowance) before QEMU's vCPU waits. Reading every 5 ms
/// still lets a guest print 50 KB/s, four times a serial line, without
/// waiting; a read per 100 ms, like a tty's, held the rig's kernel boot back
/// by seconds. Read as it came, the same socket cost a wake-up and a read per
/// 3 bytes (7 000 per rig job).
pub const SOCKET_PACING: ReadPacing = ReadPacing {
    interval: std::time::Duration::from_millis(5),
    burst: 8,
};

/// The pacing of a pty labd made for a QEMU board (a `pty` console).
///
/// A pty holds about 68 KB (the line discipline's 4 KB and 64 KB of flip
/// buffers) before QEMU waits, so reading every 25 ms still lets a guest
/// print 2.7 MB/s. Read every 5 ms like a socket, a rig job cost labd 20%
/// more CPU for no shorter job; every 100 ms like a serial line, a shell
/// exchange's reply (arriving a byte at a time, so in many small reads)
/// outlasted the reads a write grants, and the rig's test phase took twice
/// as long.
pub const PTY_PACING: ReadPacing = ReadPacing {
    interval: std::time::Duration::from_millis(25),
    burst: 8,
};

impl Default for ReadPacing {
    fn default() -> Self {
        ReadPacing {
            interval: std::time::Duration::from_millis(
                crate::config::DEFAULT_CONSOLE_READ_INTERVAL_MS,
            ),
            burst: crate::config::DEFAULT_CONSOLE_READ_BURST,
        }
    }
}

/// A read this large is a fast console: it may have more right behind it
/// (a pty gives at most 4 KiB per read, its line discipline's ring buffer,
/// and less when the ring wraps), so the batch tries another read at once.
/// A board at 115200 baud gathers about 1.2 KB per 100 ms turn.
pub const BATCH_READ_BYTES: usize = 2048;

/// A batch this large is a flood: a tty's or pty's whole line discipline
/// ring (4 KiB, of which a read gets at most 4095 bytes) or more. It goes
/// without using a turn, so that a flood is never slowed down by pacing.
/// (The batch may have drained the ring, but behind it the tty's flip
/// buffers refill it a moment later.) A board at 115200 baud gathers this
/// much only when its turn comes 250 ms late.
pub const FLOOD_BATCH_BYTES: usize = 4095;

/// The token bucket behind [`ReadPacing`]: one token per small read
/// delivered. A quiet line (a turn that found nothing to read) fills the
/// bucket to `burst`, and each write labd makes adds
/// a few (see [`Replies`]); time alone adds one token per interval (a
/// turn), never more than one at a time.
///
/// Time does not refill the burst because a board that keeps talking is
/// then read as each chunk arrives for as long as its reads outpace the
/// refill: under load, when reads gather several chunks each, that was
/// tens of seconds per board of reads that each registered with the event
/// loop (measured at 1000 boards: two thirds of all reads).
#[derive(Debug)]
pub struct ReadPacer {
    pacing: ReadPacing,
    tokens: u32,
    /// When the next turn is due.
    next: tokio::time::Instant,
    replies: std::sync::Arc<Replies>,
}

/// Reads granted because labd wrote to the console: a command's echo, its
/// output and the prompt after it are awaited, and go at once even when a
/// chatty boot used up the burst. The writer calls [`Replies::wrote`].
#[derive(Debug, Default)]
pub struct Replies {
    granted: std::sync::atomic::AtomicU32,
    wake: tokio::sync::Notify,
}

/// Immediate reads granted per write to the console.
const READS_PER_WRITE: u32 = 4;

impl Replies {
    /// labd wrote to the console: the next few reads go at once, and a
    /// read waiting for its turn is woken.
    pub fn wrote(&self) {
        self.granted
            .fetch_add(READS_PER_WRITE, std::sync::atomic::Ordering::AcqRel);
        self.wake.notify_one();
    }
}

/// The origin of the grid that paced reads are aligned to: the first paced
/// read in the process.
fn pacing_epoch() -> tokio::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    tokio::time::Instant::from_std(*EPOCH.get_or_init(std::time::Instant::now))
}

impl ReadPacer {
    pub fn new(pacing: ReadPacing, now: tokio::time::Instant) -> Self {
        ReadPacer {
            pacing,
            tokens: pacing.burst,
            next: now + pacing.interval,
            replies: Default::default(),
        }
    }

    /// The grants this pacer takes from its console's writer.
    pub fn replies(&self) -> std::sync::Arc<Replies> {
        self.replies.clone()
    }

    fn refill(&mut self, now: tokio::time::Instant) {
        let granted = self
            .replies
            .granted
            .swap(0, std::sync::atomic::Ordering::AcqRel);
        self.tokens = (self.tokens + granted).min(self.pacing.burst.max(READS_PER_WRITE));
        if self.next <= now {
            // A turn is due: one read. Turns do not save up: those missed
            // (a turn taken late) are skipped, and the next is due after
            // now on the same clock (so a streaming board's turns stay on
            // the grid).
            self.tokens = self.tokens.max(1);
            let step = self.pacing.interval.as_nanos();
            let skipped = (now - self.next).as_nanos() / step + 1;
            let ahead = (skipped * step).min(u64::MAX as u128) as u64;
            self.next += std::time::Duration::from_nanos(ahead);
        }
    }

    /// When the next read may be made: `None` for now, or the instant
    /// the next token is due. That instant is rounded up to a process-wide
    /// grid of `interval`, so that the boards that keep talking wake
    /// together, once per interval, instead of each at its own moment.
    pub fn ready_at(&mut self, now: tokio::time::Instant) -> Option<tokio::time::Instant> {
        if self.pacing.interval.is_zero() {
            return None;
        }
        self.refill(now);
        if self.tokens > 0 {
            return None;
        }
        let epoch = pacing_epoch();
        // The grid starts at the first paced read in the process. A turn
        // due before that needs no rounding (and under a test's paused
        // clock, another test's epoch can lie in this clock's future).
        if self.next <= epoch {
            return Some(self.next);
        }
        let since = (self.next - epoch).as_nanos();
        let step = self.pacing.interval.as_nanos();
        let steps = since.div_ceil(step);
        let offset = std::time::Duration::from_nanos((steps * step).min(u64::MAX as u128) as u64);
        // The token is due at the grid point, and the one after it a whole
        // interval later: were the clock left at `next`, a turn taken at the
        // grid (up to an interval late) plus the actor's own lateness would
        // often find two tokens, and the spare one would send the next read
        // to an empty line (see `read_batch`).
        self.next = (epoch + offset).max(self.next);
        Some(self.next)
    }

    /// The line was quiet for a whole interval (its turn found nothing to
    /// read): what comes next starts an exchange, and the burst is there
    /// for it.
    pub fn quiet(&mut self) {
        self.tokens = self.tokens.max(self.pacing.burst);
    }

    /// A small read was delivered at `now`.
    pub fn spend(&mut self, now: tokio::time::Instant) {
        if self.pacing.interval.is_zero() {
            return;
        }
        self.refill(now);
        self.tokens = self.tokens.saturating_sub(1);
    }
}

/// Keeps something (a UUCP lock, a child process) for as long as either
/// half of a console lives.
struct Held<T> {
    inner: T,
    _lock: std::sync::Arc<dyn std::any::Any + Send + Sync>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Held<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Held<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn open_serial(device: &str, baud: u32) -> Result<ConsoleIo, ConsoleError> {
    open_serial_with(device, SerialSettings::plain(baud))
}

fn open_serial_with(device: &str, st: SerialSettings) -> Result<ConsoleIo, ConsoleError> {
    let open_err = |source: std::io::Error| ConsoleError::Open {
        device: device.to_owned(),
        source,
    };
    let port = tokio_serial::new(device, st.baud)
        .parity(st.parity)
        .flow_control(st.flow)
        .data_bits(st.data_bits)
        .stop_bits(st.stop_bits)
        .open_native()
        .map_err(|e| open_err(std::io::Error::other(e)))?;
    // SAFETY: into_raw_fd hands over the port's open fd, owned from here on.
    let fd =
        unsafe { std::os::fd::OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(port)) };
    fd_console(fd, FdKind::Line).map_err(open_err)
}

/// A console on an open fd (a tty or a connected socket), read and written
/// directly: see [`FdReader`].
fn fd_console(fd: std::os::fd::OwnedFd, kind: FdKind) -> std::io::Result<ConsoleIo> {
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

impl Console for Serial {
    fn connect(&self) -> BoxFuture<'_, Result<ConsoleIo, ConsoleError>> {
        Box::pin(async move {
            // The UUCP lock first: a port someone else holds is not opened at all.
            let lock: std::sync::Arc<dyn std::any::Any + Send + Sync> =
                std::sync::Arc::new(crate::uucp::lock(&self.lock_dir, &self.device)?);
            let io = open_serial_with(&self.device.display().to_string(), self.settings)?;
            Ok(ConsoleIo {
                reader: io.reader.holding(lock.clone()),
                writer: Box::new(Held {
                    inner: io.writer,
                    _lock: lock,
                }),
            })
        })
    }
    fn describe(&self) -> String {
        format!("serial {} at {}", self.device.display(), self.settings.baud)
    }
}

/// A `labd-sim` board: its PTY path comes from the simulator, then it is a serial device.
pub struct SimConsole {
    pub control: PathBuf,
    pub board: String,
    pub baud: u32,
}

impl Console for SimConsole {
    fn connect(&self) -> BoxFuture<'_, Result<ConsoleIo, ConsoleError>> {
        Box::pin(async move {
            let req = crate::sim_control::ControlRequest::Pty {
                board: self.board.clone(),
            };
            let resp = crate::sim_control::control(&self.control, &req)
                .await
                .map_err(|e| ConsoleError::Sim(format!("{}: {e}", self.control.display())))?;
            let path = match (resp.ok, resp.path) {
                (true, Some(p)) => p,
                _ => return Err(ConsoleError::Sim(resp.error.unwrap_or_default())),
            };
            open_serial(&path, self.baud)
        })
    }
    fn describe(&self) -> String {
        format!("sim board {} via {}", self.board, self.control.display())
    }
}

/// A console served over TCP, such as ser2net: raw bytes, or telnet.
pub struct Tcp {
    pub host: String,
    pub port: u16,
    pub telnet: bool,
}

impl Console for Tcp {
    fn connect(&self) -> BoxFuture<'_, Result<ConsoleIo, ConsoleError>> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|source| ConsoleError::Open {
                    device: format!("{}:{}", self.host, self.port),
                    source,
                })?;
            let _ = stream.set_nodelay(true);
            if !self.telnet {
                return stream
                    .into_std()
                    .and_then(|s| fd_console(s.into(), FdKind::Socket))
                    .map_err(|source| ConsoleError::Open {
                        device: format!("{}:{}", self.host, self.port),
                        source,
                    });
            }
            // Telnet: a task between the socket and a pipe takes the
            // negotiation out of what is read, answers it, and escapes what
            // is written. It ends when either side closes.
            let (user, inner) = tokio::io::duplex(64 * 1024);
            tokio::spawn(telnet_pump(stream, inner));
            let (reader, writer) = tokio::io::split(user);
            Ok(ConsoleIo {
                reader: ConsoleReader::stream(reader),
                writer: Box::new(writer),
            })
        })
    }
    fn describe(&self) -> String {
        let kind = if self.telnet { "telnet" } else { "tcp" };
        format!("{kind} {}:{}", self.host, self.port)
    }
}

async fn telnet_pump(stream: tokio::net::TcpStream, inner: tokio::io::DuplexStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut net_r, mut net_w) = stream.into_split();
    let (mut pipe_r, mut pipe_w) = tokio::io::split(inner);
    let mut filter = crate::telnet::Filter::default();
    let mut from_net = vec![0u8; 16 * 1024];
    let mut from_labd = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            r = net_r.read(&mut from_net) => {
                let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                let (data, reply) = filter.feed(&from_net[..n]);
                if !reply.is_empty() && net_w.write_all(&reply).await.is_err() {
                    return;
                }
                if !data.is_empty() && pipe_w.write_all(&data).await.is_err() {
                    return;
                }
            }
            r = pipe_r.read(&mut from_labd) => {
                let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                if net_w.write_all(&crate::telnet::escape(&from_labd[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A Unix socket that labd listens on and the board connects to: QEMU's
/// `-chardev socket,path=...,server=off`. The listener lives as long as the
/// board's console, so the console outlives every power cycle (each QEMU
/// run connects anew); each `connect` takes the next connection.
pub struct UnixConsole {
    pub path: PathBuf,
    listener: tokio::sync::Mutex<Option<tokio::net::UnixListener>>,
}

impl UnixConsole {
    pub fn new(path: PathBuf) -> Self {
        UnixConsole {
            path,
            listener: tokio::sync::Mutex::new(None),
        }
    }
}

impl Console for UnixConsole {
    fn connect(&self) -> BoxFuture<'_, Result<ConsoleIo, ConsoleError>> {
        Box::pin(async move {
            let open_err = |source| ConsoleError::Open {
                device: self.path.display().to_string(),
                source,
            };
            let mut guard = self.listener.lock().await;
            if guard.is_none() {
                if let Some(dir) = self.path.parent() {
                    std::fs::create_dir_all(dir).map_err(open_err)?;
                }
                // A socket file left by an earlier run is stale: nobody can
                // listen on it but this board's console.
                let _ = std::fs::remove_file(&self.path);
                *guard = Some(tokio::net::UnixListener::bind(&self.path).map_err(open_err)?);
            }
            let Some(listener) = guard.as_ref() else {
                return Err(open_err(std::io::Error::other("no listener")));
            };
            let (stream, _) = listener.accept().await.map_err(open_err)?;
            stream
                .into_std()
                .and_then(|s| fd_console(s.into(), FdKind::Socket))
                .map_err(open_err)
        })
    }
    fn describe(&self) -> String {
        format!("unix socket {} (labd listens)", self.path.display())
    }
    fn attaches_after_power_on(&self) -> bool {
        true
    }
}

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

/// LAVA's `connection_command`: a program (argv, no shell) whose stdin and
/// stdout are the console, such as `telnet consoles.lab 7001`. It is killed
/// when the console closes; its exit is the console's end.
///
/// Such a program is running long before it has reached the board's line
/// (telnet resolving and connecting, a bridge starting up). With `ready`,
/// the console is attached only once the program has printed that pattern,
/// so the board is not powered on while the program is still connecting: a
/// boot whose first second went by unseen misses U-Boot's autoboot
/// countdown. What the program printed up to and including the pattern is
/// its own chatter, not the board's, and is not part of the console.
pub struct CommandConsole {
    pub argv: Vec<String>,
    pub ready: Option<regex::bytes::Regex>,
    pub ready_timeout: std::time::Duration,
}

/// How much of a command's chatter is kept while waiting for its `ready`
/// pattern: enough for any banner, bounded whatever the program prints.
const READY_WINDOW: usize = 16 * 1024;

impl CommandConsole {
    /// Reads the program's output until `ready` matches; returns what
    /// followed the match in the same read (the board's first bytes).
    async fn until_ready(
        &self,
        ready: &regex::bytes::Regex,
        out: &mut (impl AsyncRead + Unpin),
    ) -> std::io::Result<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let mut seen = Vec::new();
        let wait = async {
            let mut buf = [0u8; 4096];
            loop {
                let n = out.read(&mut buf).await?;
                if n == 0 {
                    return Err(None);
                }
                seen.extend_from_slice(&buf[..n]);
                if let Some(m) = ready.find(&seen) {
                    return Ok(m.end());
                }
                if seen.len() > 2 * READY_WINDOW {
                    seen.drain(..seen.len() - READY_WINDOW);
                }
            }
        };
        let outcome = tokio::time::timeout(self.ready_timeout, wait).await;
        let said = || {
            let tail = &seen[seen.len().saturating_sub(200)..];
            format!("{:?}", String::from_utf8_lossy(tail))
        };
        match outcome {
            Ok(Ok(end)) => Ok(seen.split_off(end)),
            Ok(Err(Some(e))) => Err(e),
            Ok(Err(None)) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "the program ended before printing `ready` ({}); it printed {}",
                    ready.as_str(),
                    said()
                ),
            )),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the program did not print `ready` ({}) within {} s; it printed {}",
                    ready.as_str(),
                    self.ready_timeout.as_secs(),
                    said()
                ),
            )),
        }
    }
}

impl Console for CommandConsole {
    fn connect(&self) -> BoxFuture<'_, Result<ConsoleIo, ConsoleError>> {
        Box::pin(async move {
            let open_err = |source| ConsoleError::Open {
                device: self.argv.join(" "),
                source,
            };
            let (prog, args) = self
                .argv
                .split_first()
                .ok_or_else(|| open_err(std::io::Error::other("empty command")))?;
            let mut cmd = tokio::process::Command::new(prog);
            let mut child = crate::child::scrub(&mut cmd)
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(open_err)?;
            let (Some(stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(open_err(std::io::Error::other("no pipes to the command")));
            };
            // On an error the child is dropped here, which kills it.
            let first = match &self.ready {
                Some(ready) => self
                    .until_ready(ready, &mut stdout)
                    .await
                    .map_err(open_err)?,
                None => Vec::new(),
            };
            let stdout = tokio::io::AsyncReadExt::chain(std::io::Cursor::new(first), stdout);
            let keep: std::sync::Arc<dyn std::any::Any + Send + Sync> =
                std::sync::Arc::new(std::sync::Mutex::new(child));
            Ok(ConsoleIo {
                reader: ConsoleReader::stream(Held {
                    inner: stdout,
                    _lock: keep.clone(),
                }),
                writer: Box::new(Held {
                    inner: stdin,
                    _lock: keep,
                }),
            })
        })
    }
    fn describe(&self) -> String {
        format!("command {:?}", self.argv)
    }
}

/// Builds the console driver a board's config asks for.
pub fn from_config(
    board: &str,
    cfg: &ConsoleConfig,
    default_baud: u32,
    sim_control: Option<&PathBuf>,
    lock_dir: &std::path::Path,
) -> Box<dyn Console> {
    match cfg {
        ConsoleConfig::Serial {
            device,
            baud,
            parity,
            flow_control,
            data_bits,
            stop_bits,
        } => Box::new(Serial {
            device: device.clone(),
            settings: SerialSettings {
                baud: baud.unwrap_or(default_baud),
                parity: match parity {
                    crate::config::Parity::None => tokio_serial::Parity::None,
                    crate::config::Parity::Even => tokio_serial::Parity::Even,
                    crate::config::Parity::Odd => tokio_serial::Parity::Odd,
                },
                flow: match flow_control {
                    crate::config::FlowControl::None => tokio_serial::FlowControl::None,
                    crate::config::FlowControl::Software => tokio_serial::FlowControl::Software,
                    crate::config::FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
                },
                data_bits: match data_bits {
                    5 => tokio_serial::DataBits::Five,
                    6 => tokio_serial::DataBits::Six,
                    7 => tokio_serial::DataBits::Seven,
                    _ => tokio_serial::DataBits::Eight,
                },
                stop_bits: if *stop_bits == 2 {
                    tokio_serial::StopBits::Two
                } else {
                    tokio_serial::StopBits::One
                },
            },
            lock_dir: lock_dir.to_path_buf(),
        }),
        ConsoleConfig::Tcp {
            host,
            port,
            protocol,
        } => Box::new(Tcp {
            host: host.clone(),
            port: *port,
            telnet: *protocol == crate::config::TcpProtocol::Telnet,
        }),
        ConsoleConfig::Unix { path } => Box::new(UnixConsole::new(path.clone())),
        ConsoleConfig::Pty { link } => Box::new(PtyConsole { link: link.clone() }),
        ConsoleConfig::Command {
            command,
            ready,
            ready_timeout_secs,
        } => Box::new(CommandConsole {
            argv: command.clone(),
            // Invariant: config validation compiled this pattern already.
            ready: ready
                .as_deref()
                .and_then(|r| regex::bytes::Regex::new(r).ok()),
            ready_timeout: std::time::Duration::from_secs(*ready_timeout_secs),
        }),
        ConsoleConfig::Sim { board: b } => Box::new(SimConsole {
            // Invariant: config validation refuses a sim console without sim_control.
            control: sim_control.cloned().unwrap_or_default(),
            board: b.clone().unwrap_or_else(|| board.to_owned()),
            baud: default_baud,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::time::Instant;

    fn pacing(ms: u64, burst: u32) -> ReadPacing {
        ReadPacing {
            interval: Duration::from_millis(ms),
            burst,
        }
    }

    #[test]
    fn the_pacer_allows_a_burst_then_one_read_per_interval() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = ReadPacer::new(pacing(100, 3), t0);
        for _ in 0..3 {
            assert_eq!(p.ready_at(t0), None);
            p.spend(t0);
        }
        // Used up: the next read waits for the next token, on the grid.
        let at = p.ready_at(t0).expect("the burst is used up");
        assert!(at >= t0 + ms(100) && at < t0 + ms(200), "{:?}", at - t0);
        p.spend(at);
        let at2 = p.ready_at(at).expect("still used up");
        assert!(
            at2 >= at + ms(100) - ms(1) && at2 < at + ms(200),
            "{:?}",
            at2 - at
        );
        // Time alone grants one turn, however long it was...
        let later = t0 + Duration::from_secs(10);
        assert_eq!(p.ready_at(later), None);
        p.spend(later);
        assert!(p.ready_at(later).is_some());
        // ...and a quiet line the whole burst, but never beyond it.
        p.quiet();
        p.quiet();
        for _ in 0..3 {
            assert_eq!(p.ready_at(later), None);
            p.spend(later);
        }
        assert!(p.ready_at(later).is_some());
    }

    /// A turn that finds nothing to read finds a quiet line: the reads
    /// after it go at once (an exchange starting), where a board that kept
    /// talking waits for its turns.
    #[tokio::test(start_paused = true)]
    async fn a_quiet_line_gets_its_burst_back() {
        let (mut board, labd) = tokio::io::duplex(64 * 1024);
        let mut labd = ConsoleReader::stream(labd);
        let mut pacer = ReadPacer::new(pacing(100, 3), Instant::now());
        let mut buf = vec![0u8; 1024];
        // A chatty stretch uses up the burst: then it waits for turns.
        for _ in 0..3 {
            board.write_all(b"line\r\n").await.unwrap();
            labd.read_batch(&mut buf, &mut pacer).await.unwrap();
        }
        board.write_all(b"line\r\n").await.unwrap();
        let t = Instant::now();
        labd.read_batch(&mut buf, &mut pacer).await.unwrap();
        assert!(t.elapsed() > Duration::ZERO);
        // The line goes quiet: its next turn finds nothing to read...
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            board.write_all(b"=> ").await.unwrap();
            board
        });
        labd.read_batch(&mut buf, &mut pacer).await.unwrap();
        let mut board = writer.await.unwrap();
        // ...so the reads after it go at once.
        let t = Instant::now();
        for _ in 0..2 {
            board.write_all(b"z").await.unwrap();
            labd.read_batch(&mut buf, &mut pacer).await.unwrap();
        }
        assert_eq!(t.elapsed(), Duration::ZERO);
    }

    /// Boards whose turns fall due within one interval of the grid take
    /// them together, at its next point. The grid is the process's (other
    /// tests may have started it): the boards start just after a point.
    #[test]
    fn paced_boards_wake_on_one_grid() {
        let ms = Duration::from_millis;
        let epoch = pacing_epoch();
        let t0 =
            epoch + ms(100) * (((Instant::now() - epoch).as_millis() / 100 + 1) as u32) + ms(1);
        let mut a = ReadPacer::new(pacing(100, 0), t0);
        let mut b = ReadPacer::new(pacing(100, 0), t0 + ms(37));
        let at = a.ready_at(t0 + ms(50)).unwrap();
        let bt = b.ready_at(t0 + ms(50)).unwrap();
        assert_eq!(at, bt);
        assert_eq!(at, t0 - ms(1) + ms(200));
    }

    /// A streaming board's turn comes at the grid point, and the actor
    /// may take it late (1000 boards are served one after another): still
    /// one read per turn, never a spare token for a read of an empty line.
    #[test]
    fn a_late_turn_on_the_grid_grants_one_read() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = ReadPacer::new(pacing(100, 1), t0);
        assert_eq!(p.ready_at(t0), None);
        p.spend(t0);
        let mut turn = p.ready_at(t0).unwrap();
        for _ in 0..20 {
            let late = turn + ms(99);
            assert_eq!(p.ready_at(late), None, "the turn's token");
            p.spend(late);
            let next = p.ready_at(late).expect("no spare token");
            assert_eq!(next - turn, ms(100), "the next turn is the next grid point");
            turn = next;
        }
    }

    #[test]
    fn a_zero_interval_never_paces() {
        let t0 = Instant::now();
        let mut p = ReadPacer::new(pacing(0, 0), t0);
        for _ in 0..1000 {
            assert_eq!(p.ready_at(t0), None);
            p.spend(t0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_talkative_board_is_read_in_batches_and_nothing_is_lost() {
        let (mut board, labd) = tokio::io::duplex(64 * 1024);
        let mut labd = ConsoleReader::stream(labd);
        let writer = tokio::spawn(async move {
            // 200 small writes, 10 ms apart: a slow serial line.
            for i in 0..200u32 {
                board
                    .write_all(format!("{i:04}\n").as_bytes())
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let mut pacer = ReadPacer::new(pacing(100, 5), Instant::now());
        let mut buf = vec![0u8; 16 * 1024];
        let mut got = Vec::new();
        let mut deliveries = 0;
        loop {
            let n = labd.read_batch(&mut buf, &mut pacer).await.unwrap();
            if n == 0 {
                break;
            }
            deliveries += 1;
            got.extend_from_slice(&buf[..n]);
        }
        writer.await.unwrap();
        let want: Vec<u8> = (0..200u32)
            .flat_map(|i| format!("{i:04}\n").into_bytes())
            .collect();
        assert_eq!(got, want);
        // 2 s of output: the burst of 5, then about one per 100 ms, far
        // fewer than the 200 writes.
        assert!((20..=30).contains(&deliveries), "{deliveries} deliveries");
    }

    #[tokio::test(start_paused = true)]
    async fn large_reads_are_not_held_back() {
        let (mut board, labd) = tokio::io::duplex(64 * 1024);
        let mut labd = ConsoleReader::stream(labd);
        let mut pacer = ReadPacer::new(pacing(100, 1), Instant::now());
        let mut buf = vec![0u8; 16 * 1024];
        let start = Instant::now();
        for _ in 0..10 {
            board.write_all(&[b'x'; FLOOD_BATCH_BYTES]).await.unwrap();
            let n = labd.read_batch(&mut buf, &mut pacer).await.unwrap();
            assert_eq!(n, FLOOD_BATCH_BYTES);
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        // The flood used no turn: the burst's one is still there.
        board.write_all(b"login: ").await.unwrap();
        labd.read_batch(&mut buf, &mut pacer).await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    /// A turn that comes late finds a few KB gathered at line rate; taking
    /// them is catching up, not a flood, and uses the turn.
    #[tokio::test(start_paused = true)]
    async fn a_late_turn_that_catches_up_uses_its_turn() {
        let (mut board, labd) = tokio::io::duplex(64 * 1024);
        let mut labd = ConsoleReader::stream(labd);
        let mut pacer = ReadPacer::new(pacing(100, 1), Instant::now());
        let mut buf = vec![0u8; 16 * 1024];
        board.write_all(&[b'x'; 3000]).await.unwrap();
        assert_eq!(labd.read_batch(&mut buf, &mut pacer).await.unwrap(), 3000);
        board.write_all(b"more").await.unwrap();
        let start = Instant::now();
        let n = labd.read_batch(&mut buf, &mut pacer).await.unwrap();
        assert_eq!(&buf[..n], b"more");
        assert!(
            start.elapsed() > Duration::ZERO,
            "the next read waited for its turn"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_to_the_console_makes_its_reply_go_at_once() {
        let (mut board, labd) = tokio::io::duplex(1024);
        let mut labd = ConsoleReader::stream(labd);
        let mut pacer = ReadPacer::new(pacing(100, 0), Instant::now());
        let replies = pacer.replies();
        let mut buf = vec![0u8; 1024];
        // A chatty board with no turns left waits for the grid...
        board.write_all(b"boot log").await.unwrap();
        let t = Instant::now();
        labd.read_batch(&mut buf, &mut pacer).await.unwrap();
        assert!(t.elapsed() > Duration::ZERO);
        // ...but the echo and prompt after labd typed a command do not.
        replies.wrote();
        board.write_all(b"echo\r\n=> ").await.unwrap();
        let t = Instant::now();
        let n = labd.read_batch(&mut buf, &mut pacer).await.unwrap();
        assert_eq!(&buf[..n], b"echo\r\n=> ");
        assert_eq!(t.elapsed(), Duration::ZERO);
    }

    /// QEMU's serial console: labd listens on a unix socket and the board
    /// writes its output a byte at a time. The socket is read directly, in
    /// batches paced by `SOCKET_PACING`, and a closed peer is the end.
    #[tokio::test(start_paused = true)]
    async fn a_socket_console_is_read_in_paced_batches() {
        let dir = tempfile::tempdir().unwrap();
        let console = UnixConsole::new(dir.path().join("ttyAMA0.sock"));
        let path = console.path.clone();
        let accepting = tokio::spawn(async move {
            let io = console.connect().await;
            (console, io)
        });
        // The listener exists once connect runs; the board connects then.
        let mut board = loop {
            match tokio::net::UnixStream::connect(&path).await {
                Ok(s) => break s,
                Err(_) => tokio::task::yield_now().await,
            }
        };
        let (_console, io) = accepting.await.unwrap();
        let ConsoleIo {
            mut reader,
            mut writer,
        } = io.unwrap();
        let line = ReadPacing::default();
        assert!(matches!(reader, ConsoleReader::Fd(_)));
        assert_eq!(reader.pacing(line), SOCKET_PACING);
        let mut pacer = ReadPacer::new(reader.pacing(line), Instant::now());
        let mut buf = vec![0u8; 1024];
        // The burst: each byte is passed on as it comes.
        for i in 0..SOCKET_PACING.burst {
            board.write_all(&[b'a' + i as u8]).await.unwrap();
            let n = reader.read_batch(&mut buf, &mut pacer).await.unwrap();
            assert_eq!(&buf[..n], &[b'a' + i as u8]);
        }
        // Then a byte-at-a-time stream waits for its turn and comes in one piece.
        for _ in 0..100 {
            board.write_all(b"#").await.unwrap();
        }
        let t = Instant::now();
        let n = reader.read_batch(&mut buf, &mut pacer).await.unwrap();
        assert_eq!(&buf[..n], &[b'#'; 100][..]);
        // Its turn: the next token (one interval on), rounded up to the
        // grid (up to one more) and to the timer's millisecond.
        let waited = t.elapsed();
        assert!(
            waited > Duration::ZERO
                && waited <= 2 * SOCKET_PACING.interval + Duration::from_millis(1),
            "{waited:?}"
        );
        // labd's writes reach the board.
        writer.write_all(b"help\r").await.unwrap();
        let mut got = [0u8; 5];
        tokio::io::AsyncReadExt::read_exact(&mut board, &mut got)
            .await
            .unwrap();
        assert_eq!(&got, b"help\r");
        // The board going away is the end of the stream.
        drop(board);
        assert_eq!(reader.read_batch(&mut buf, &mut pacer).await.unwrap(), 0);
    }

    async fn read_until(reader: &mut ConsoleReader, pacer: &mut ReadPacer, want: &[u8]) {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        while got.len() < want.len() {
            let n = reader.read_batch(&mut buf, pacer).await.unwrap();
            assert_ne!(n, 0, "the console ended after {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, want);
    }

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

    fn command(script: &str, ready: &str, timeout_ms: u64) -> CommandConsole {
        CommandConsole {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            ready: Some(regex::bytes::Regex::new(ready).unwrap()),
            ready_timeout: Duration::from_millis(timeout_ms),
        }
    }

    /// The program's chatter up to `ready` is its own; what follows it,
    /// even in the same write, is the board's.
    #[tokio::test]
    async fn a_command_console_starts_after_its_ready_pattern() {
        use tokio::io::AsyncReadExt;
        let c = command(
            "printf 'Trying 10.0.0.1...\\r\\nEscape character is x.\\r\\nU-Boot'; read line; printf \"<$line>\"",
            "Escape character is",
            30_000,
        );
        let ConsoleIo { reader, mut writer } = c.connect().await.unwrap();
        let ConsoleReader::Stream(mut r) = reader else {
            panic!("a command's pipe is a stream")
        };
        writer.write_all(b"hello\n").await.unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out), " x.\r\nU-Boot<hello>");
    }

    /// A program that ends, or says nothing like `ready` in time, is a
    /// failed attempt that names what it printed.
    #[tokio::test]
    async fn a_command_console_that_never_gets_ready_is_a_failed_connect() {
        let refused =
            async |c: CommandConsole| c.connect().await.err().expect("no console").to_string();
        let ended = refused(command(
            "echo 'telnet: Unable to connect'",
            "Escape character",
            30_000,
        ))
        .await;
        assert!(ended.contains("ended before printing `ready`"), "{ended}");
        assert!(ended.contains("Unable to connect"), "{ended}");
        let silent = refused(command(
            "echo 'Trying...'; exec sleep 60",
            "Escape character",
            2_000,
        ))
        .await;
        assert!(silent.contains("did not print `ready`"), "{silent}");
        assert!(silent.contains("Trying..."), "{silent}");
    }
}
