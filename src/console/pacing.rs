//! How often a board's console reads reach its actor: the pacing
//! settings and the token bucket that applies them.
//!
//! ## Why reads are paced
//!
//! A board at 115200 baud hands the kernel ~200 bytes every few
//! milliseconds; passing each read on would wake the actor, the runner and
//! the store hundreds of times a second per board. `console::ReadPacer` is a
//! token bucket per console (`limits.console_read_interval_ms` = 100,
//! `console_read_burst` = 50): the first reads after a quiet line (a turn
//! that found nothing to read) go at once, each spending a token, and a
//! board that keeps talking is read once per interval, everything the kernel
//! buffered in one piece. Time alone grants one turn, never the burst back:
//! were the burst refilled by time, a board whose reads each gathered
//! several chunks (under load) would drain it for tens of seconds, each read
//! a registration with the event loop (two thirds of all reads at 1000
//! boards). Turns stay on the grid: a turn taken late grants one read, not
//! two. Each write labd makes to the console grants a few immediate reads
//! (`Replies`) and wakes a waiting read, so a command's echo and prompt are
//! never held back by a chatty boot before it. A socket console (QEMU's unix
//! socket, ser2net's raw TCP) is paced much more finely
//! (`console::SOCKET_PACING`, 5 ms), because its sender is held back by what
//! the socket holds: QEMU writes a byte at a time, a unix socket takes only
//! ~270 such writes before QEMU's vCPU waits, and at 100 ms a guest's boot
//! took seconds longer; read as it came, the rig's socket cost a wake-up per
//! 3 bytes. A `pty` console (a pty pair labd makes for QEMU; its link goes
//! when the console closes, unless a newer console of the board already
//! moved it) is paced at 25 ms (`console::PTY_PACING`): its buffers hold 68
//! KB before QEMU waits, and at 100 ms a shell exchange's byte-at-a-time
//! reply outlasted the reads a write grants. Other streams (telnet's
//! filtered pipe, a command's pipe) are read as they come. Paced reads wake
//! on a process-wide grid of the interval, so streaming boards are read
//! together, one timer wake-up for all of them. A batch of a whole tty ring
//! (4095 bytes) or more is a flood: it spends no token and is never slowed;
//! a smaller one (also a late turn catching up) uses its turn. A tty (serial
//! adapter, pty) or a socket is read directly from its non-blocking fd
//! (`FdReader`): it is registered with the event loop (a duplicate fd) only
//! while its reads wait for bytes (a quiet line, then a burst), and taken
//! out as soon as they wait for turns again, because tokio's edge-triggered
//! registration would otherwise wake the runtime for every chunk the adapter
//! delivers (every byte QEMU writes) while the reads wait their turn; its
//! writer is a duplicate fd registered for writability only.

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
    pub(super) wake: tokio::sync::Notify,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::{Console, ConsoleIo, ConsoleReader, UnixConsole};
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
}
