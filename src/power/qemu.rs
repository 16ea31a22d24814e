//! The relay of a QEMU virtual board: its power is a QEMU process.
//!
//! Power on starts QEMU from the board's argv, paused (`-S`), with a QMP
//! socket and (with a `unix` console) a serial chardev that connects to the
//! console socket labd already listens on. Both QMP and the console are
//! client sockets to labd's listeners, so nothing is polled: QEMU connects
//! during its start-up. The relay lets the guest run (QMP `cont`) only once
//! the board's console has attached this QEMU's connection, so no byte of
//! the boot is lost. Power off is QMP `quit`, then SIGTERM and SIGKILL of the
//! process group. A QEMU that exits by itself (a guest reboot under
//! `-no-reboot`, a crash) is a board that lost power: the owning board is
//! told at once.
//!
//! This module owns the QEMU process of one board and nothing else: it never
//! reads the console, which stays the board actor's.
//!
//! ## Design
//!
//! QEMU is started paused (`-S`) with its QMP socket and its first serial
//! port as *client* sockets to listeners labd already holds, so nothing
//! polls for a socket file: QEMU connects during its start-up. The relay is
//! told of every console attachment through `RelayHooks` (a watch of the
//! board's attachment count, given by the board actor when it starts) and
//! sends QMP `cont` only once the count passed the value it read before
//! spawning, which can only be this QEMU's connection: the U-Boot banner is
//! the first byte of the job's log. The relay's monitor task owns the child;
//! an exit labd did not ask for, after `cont`, goes to the board as
//! `PowerLost` and ends the running job Incomplete (Infrastructure). An exit
//! during start-up is the power-on's own error, with QEMU's stderr. QEMU is
//! its own process group (a kill reaches everything it started) and gets
//! `PR_SET_PDEATHSIG` so it never outlives labd (a QEMU at a U-Boot prompt
//! burns a core). With a `pty` console instead, labd holds a pty pair for
//! the board's whole life (the master to read, a slave fd so QEMU closing
//! its side is no hang-up) and a symlink to the slave; QEMU opens the link
//! as a `serial` chardev, the console is attached before QEMU exists, and
//! the relay sends `cont` right after the QMP handshake. The relay drops
//! what labd wrote to the line while no QEMU had it open before starting the
//! next, so a new boot never reads keys meant for the last. A pty is the
//! rig's console because it is cheaper for labd: QEMU writes a byte at a
//! time, and a unix socket carries each byte in a socket buffer labd's
//! thread must free (a quarter of that thread's time), where a pty hands
//! over what accumulated in one copy. A console that the board itself
//! connects (`attaches_after_power_on`) closing is the board powering off,
//! not a loss: no note in the log, no reconnect timer, just the next accept.
//!
//! ## Invariants
//!
//! Owns one board's QEMU process and QMP connection; it never reads the
//! console, never lets the guest run before the console attached, and never
//! reports an exit it caused (or one during start-up) as a power loss. With
//! a `pty` console it never starts a QEMU without first dropping the input
//! queued for the last one.

use crate::driver::BoxFuture;
use crate::power::{DirectBoot, Power, PowerAction, PowerError, PowerState, RelayHooks};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The most stderr lines kept to explain a QEMU that failed.
const STDERR_LINES: usize = 8;

pub struct QemuPower {
    pub board: String,
    pub argv: Vec<String>,
    pub qmp_path: PathBuf,
    /// How QEMU's first serial port reaches the board's console, if labd
    /// wires it.
    pub console: QemuConsole,
    pub timeout: Duration,
    hooks: Mutex<Option<Arc<RelayHooks>>>,
    direct: Mutex<Option<DirectBoot>>,
    running: tokio::sync::Mutex<Option<Running>>,
    /// Whether a QEMU process of this board is alive, as seen by its monitor.
    alive: Arc<std::sync::atomic::AtomicBool>,
}

/// Where QEMU's first serial port goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QemuConsole {
    /// The argv sets up the serial port itself.
    None,
    /// A `unix` console: QEMU connects to the socket labd listens on, and
    /// the guest runs only once the board's console has attached it.
    Socket(PathBuf),
    /// A `pty` console: QEMU opens the slave side through labd's link. The
    /// console is attached before QEMU starts, so nothing waits for it.
    Pty(PathBuf),
}

struct Running {
    pid: i32,
    qmp: Qmp,
    /// Set before labd stops QEMU, so that its exit is not a power loss.
    expected: Arc<std::sync::atomic::AtomicBool>,
    /// Becomes `Some(status)` when the process has exited.
    exited: tokio::sync::watch::Receiver<Option<String>>,
}

impl QemuPower {
    pub fn new(
        board: String,
        argv: Vec<String>,
        qmp_path: PathBuf,
        console: QemuConsole,
        timeout: Duration,
    ) -> Self {
        QemuPower {
            board,
            argv,
            qmp_path,
            console,
            timeout,
            hooks: Mutex::new(None),
            direct: Mutex::new(None),
            running: tokio::sync::Mutex::new(None),
            alive: Arc::default(),
        }
    }

    fn failed(action: PowerAction, message: impl Into<String>) -> PowerError {
        PowerError::Failed {
            action: action.as_str(),
            message: message.into(),
        }
    }

    /// The full command line: the board's machine, then the job's options
    /// (its context's, then its images'), then what labd owns. QEMU takes
    /// the last of a repeated option, so a job may change the board's
    /// `-cpu` or `-m` but never labd's console, QMP or `-no-reboot`; what a
    /// job may give at all is checked at submit (`crate::qemu_args`).
    pub fn command_line(&self) -> Vec<String> {
        let mut a = self.argv.clone();
        let s = |x: &str| x.to_owned();
        if let Ok(d) = self.direct.lock() {
            if let Some(d) = d.as_ref() {
                a.extend(d.options.iter().cloned());
                for (opt, path) in [
                    ("-kernel", &d.kernel),
                    ("-initrd", &d.initrd),
                    ("-dtb", &d.dtb),
                ] {
                    if let Some(p) = path {
                        a.extend([s(opt), p.display().to_string()]);
                    }
                }
                a.extend(d.extra.iter().cloned());
                // QEMU refuses a command line without a kernel to take it;
                // a job that gives its own `-append` (LAVA's image_arg) has
                // the whole command line, as in LAVA.
                let has = |o: &str| a.iter().any(|x| crate::qemu_args::canonical(x) == o);
                if !d.append.is_empty() && has("-kernel") && !has("-append") {
                    a.extend([s("-append"), d.append.clone()]);
                }
            }
        }
        a.extend([
            s("-S"),
            s("-qmp"),
            format!("unix:{},server=off", self.qmp_path.display()),
            s("-display"),
            s("none"),
            s("-monitor"),
            s("none"),
            s("-no-reboot"),
        ]);
        let chardev = match &self.console {
            QemuConsole::None => None,
            QemuConsole::Socket(p) => Some(format!(
                "socket,id=labd-console,path={},server=off",
                p.display()
            )),
            QemuConsole::Pty(p) => Some(format!("serial,id=labd-console,path={}", p.display())),
        };
        if let Some(c) = chardev {
            a.extend([s("-chardev"), c, s("-serial"), s("chardev:labd-console")]);
        }
        a
    }

    async fn on(&self) -> Result<(), PowerError> {
        let act = PowerAction::On;
        let mut running = self.running.lock().await;
        if running
            .as_ref()
            .is_some_and(|r| r.exited.borrow().is_none())
        {
            return Ok(());
        }
        let hooks = self.hooks.lock().ok().and_then(|h| h.clone());
        // The attachment count before this QEMU exists: with a socket
        // console the guest runs only after a newer attachment, which can
        // only be this QEMU's.
        let mut attached = hooks
            .as_ref()
            .filter(|_| matches!(self.console, QemuConsole::Socket(_)))
            .map(|h| h.console_attached.clone());
        let before = attached.as_ref().map(|a| *a.borrow());

        if let Some(dir) = self.qmp_path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Self::failed(act, format!("{}: {e}", dir.display())))?;
        }
        // A socket file left by an earlier labd is stale: only this relay
        // listens on it.
        let _ = std::fs::remove_file(&self.qmp_path);
        let listener = tokio::net::UnixListener::bind(&self.qmp_path)
            .map_err(|e| Self::failed(act, format!("{}: {e}", self.qmp_path.display())))?;

        if let QemuConsole::Pty(link) = &self.console {
            discard_pending_input(link);
        }
        let argv = self.command_line();
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| Self::failed(act, "empty argv"))?;
        let mut cmd = tokio::process::Command::new(prog);
        crate::child::scrub(&mut cmd)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            // Its own process group, so that a SIGKILL reaches QEMU and
            // whatever it started, and nothing of labd's.
            .process_group(0);
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe; nothing
        // else runs between fork and exec. It makes QEMU die with labd (a
        // restarted labd starts its boards afresh), which matters because
        // a QEMU at a U-Boot prompt burns a whole core.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        tracing::info!(board = %self.board, argv = ?argv, "starting qemu");
        let mut child = cmd
            .spawn()
            .map_err(|e| Self::failed(act, format!("{prog}: {e}")))?;
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        let stderr_tail: Arc<Mutex<VecDeque<String>>> = Arc::default();
        if let Some(err) = child.stderr.take() {
            let (tail, board) = (stderr_tail.clone(), self.board.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    tracing::warn!(board = %board, "qemu: {l}");
                    if let Ok(mut t) = tail.lock() {
                        if t.len() == STDERR_LINES {
                            t.pop_front();
                        }
                        t.push_back(l);
                    }
                }
            });
        }
        let expected = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Whether the guest was let run: an exit before that is a failed
        // power-on (answered by this call), not a power loss.
        let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (exit_tx, mut exited) = tokio::sync::watch::channel(None);
        {
            let (expected, released, hooks, tail, alive) = (
                expected.clone(),
                released.clone(),
                hooks.clone(),
                stderr_tail.clone(),
                self.alive.clone(),
            );
            alive.store(true, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let status = match child.wait().await {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("wait failed: {e}"),
                };
                alive.store(false, std::sync::atomic::Ordering::SeqCst);
                if released.load(std::sync::atomic::Ordering::SeqCst)
                    && !expected.load(std::sync::atomic::Ordering::SeqCst)
                {
                    let why = explain(&format!("qemu exited on its own ({status})"), &tail);
                    if let Some(h) = &hooks {
                        (h.lost)(why);
                    }
                }
                let _ = exit_tx.send(Some(status));
            });
        }
        let died = |status: &str| {
            Self::failed(
                act,
                explain(
                    &format!("qemu exited while starting ({status})"),
                    &stderr_tail,
                ),
            )
        };

        let start = async {
            let (stream, _) = listener
                .accept()
                .await
                .map_err(|e| Self::failed(act, format!("QMP accept: {e}")))?;
            let mut qmp = Qmp::new(stream);
            qmp.handshake()
                .await
                .map_err(|e| Self::failed(act, format!("QMP: {e}")))?;
            if let (Some(a), Some(b)) = (attached.as_mut(), before) {
                if a.wait_for(|n| *n > b).await.is_err() {
                    return Err(Self::failed(act, "the board's console is gone"));
                }
            }
            released.store(true, std::sync::atomic::Ordering::SeqCst);
            qmp.execute("cont")
                .await
                .map_err(|e| Self::failed(act, format!("QMP cont: {e}")))?;
            Ok(qmp)
        };
        let mut watch_exit = exited.clone();
        let qmp = tokio::select! {
            r = tokio::time::timeout(self.timeout, start) => match r {
                Ok(Ok(q)) => q,
                Ok(Err(e)) => {
                    expected.store(true, std::sync::atomic::Ordering::SeqCst);
                    kill_group(pid, &mut exited, Duration::from_secs(2)).await;
                    return Err(e);
                }
                Err(_) => {
                    expected.store(true, std::sync::atomic::Ordering::SeqCst);
                    kill_group(pid, &mut exited, Duration::from_secs(2)).await;
                    return Err(Self::failed(act, explain(&format!(
                        "qemu did not connect its QMP socket and console within {} s",
                        self.timeout.as_secs()
                    ), &stderr_tail)));
                }
            },
            status = async { watch_exit.wait_for(|s| s.is_some()).await.ok().and_then(|s| s.clone()) } => {
                return Err(died(&status.unwrap_or_default()));
            }
        };
        drop(listener);
        let _ = std::fs::remove_file(&self.qmp_path);
        *running = Some(Running {
            pid,
            qmp,
            expected,
            exited,
        });
        Ok(())
    }

    async fn off(&self) -> Result<(), PowerError> {
        let mut running = self.running.lock().await;
        let Some(mut r) = running.take() else {
            return Ok(());
        };
        r.expected.store(true, std::sync::atomic::Ordering::SeqCst);
        if r.exited.borrow().is_some() {
            return Ok(());
        }
        // QMP `quit` exits in milliseconds; signals are for a QEMU that no
        // longer listens.
        let quit = tokio::time::timeout(Duration::from_secs(2), r.qmp.execute("quit")).await;
        if !matches!(quit, Ok(Ok(()))) {
            tracing::warn!(board = %self.board, "QMP quit failed; signalling qemu");
        }
        let exited = matches!(
            tokio::time::timeout(self.timeout, r.exited.wait_for(|s| s.is_some())).await,
            Ok(Ok(_))
        );
        if !exited {
            kill_group(r.pid, &mut r.exited, Duration::from_secs(5)).await;
        }
        if r.exited.borrow().is_none() {
            return Err(Self::failed(
                PowerAction::Off,
                format!("qemu (pid {}) did not exit even after SIGKILL", r.pid),
            ));
        }
        Ok(())
    }
}

/// Drops what labd wrote to a pty console while no QEMU had it open: it
/// was meant for an earlier power cycle, and a new boot must not read it
/// (a stray key stops U-Boot's autoboot). Best effort: without the link
/// there is nothing queued either.
fn discard_pending_input(link: &std::path::Path) {
    use nix::fcntl::OFlag;
    let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    if let Ok(fd) = nix::fcntl::open(link, flags, nix::sys::stat::Mode::empty()) {
        // SAFETY: `open` just returned this fd, and nothing else owns it.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let _ = nix::sys::termios::tcflush(&fd, nix::sys::termios::FlushArg::TCIFLUSH);
    }
}

/// SIGTERM the process group, then SIGKILL it if it does not exit in `grace`.
async fn kill_group(
    pid: i32,
    exited: &mut tokio::sync::watch::Receiver<Option<String>>,
    grace: Duration,
) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    if pid <= 0 {
        return;
    }
    let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
    let gone = matches!(
        tokio::time::timeout(grace, exited.wait_for(|s| s.is_some())).await,
        Ok(Ok(_))
    );
    if !gone {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = tokio::time::timeout(grace, exited.wait_for(|s| s.is_some())).await;
    }
}

fn explain(what: &str, tail: &Mutex<VecDeque<String>>) -> String {
    match tail.lock() {
        Ok(t) if !t.is_empty() => {
            format!(
                "{what}: {}",
                t.iter().cloned().collect::<Vec<_>>().join(" / ")
            )
        }
        _ => what.to_owned(),
    }
}

impl Power for QemuPower {
    fn switch(&self, action: PowerAction) -> BoxFuture<'_, Result<(), PowerError>> {
        Box::pin(async move {
            match action {
                PowerAction::On => self.on().await,
                PowerAction::Off => self.off().await,
                // A fresh process, not `system_reset`: a direct boot's
                // kernel may have changed, and nothing of the last job stays.
                PowerAction::Reset => {
                    self.off().await?;
                    self.on().await.map_err(|e| match e {
                        PowerError::Failed { message, .. } => PowerError::Failed {
                            action: "reset",
                            message,
                        },
                        e => e,
                    })
                }
            }
        })
    }
    fn describe(&self) -> String {
        format!(
            "qemu relay {}",
            self.argv.first().map_or("", String::as_str)
        )
    }
    fn bind(&self, hooks: RelayHooks) {
        if let Ok(mut h) = self.hooks.lock() {
            *h = Some(Arc::new(hooks));
        }
    }
    fn set_direct_boot(&self, boot: Option<DirectBoot>) -> Result<(), PowerError> {
        // LAVA's qemu device type picks the binary from `context.arch`;
        // here the board's argv names it, and a job for another
        // architecture cannot run on it.
        if let Some(arch) = boot.as_ref().and_then(|b| b.arch.as_deref()) {
            let want = crate::qemu_args::binary_for_arch(arch);
            let have = self.argv.first().map_or("", String::as_str);
            let have_name = std::path::Path::new(have)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(have);
            if !crate::qemu_args::runs_arch(have_name, arch) {
                return Err(PowerError::Failed {
                    action: "on",
                    message: format!(
                        "context.arch `{arch}` needs {want}; board {} runs {have_name}",
                        self.board
                    ),
                });
            }
        }
        if let Ok(mut d) = self.direct.lock() {
            *d = boot;
        }
        Ok(())
    }
    fn observed(&self) -> Option<PowerState> {
        if self.alive.load(std::sync::atomic::Ordering::SeqCst) {
            None
        } else {
            Some(PowerState::Off)
        }
    }
}

/// A QMP connection: JSON lines; asynchronous events are skipped while
/// waiting for a command's answer.
struct Qmp {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Qmp {
    fn new(s: UnixStream) -> Self {
        let (r, w) = s.into_split();
        Qmp {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    async fn read(&mut self) -> Result<serde_json::Value, QmpError> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line).await? == 0 {
                return Err(QmpError::Closed);
            }
            let v: serde_json::Value = serde_json::from_str(line.trim())?;
            if v.get("event").is_none() {
                return Ok(v);
            }
        }
    }

    async fn handshake(&mut self) -> Result<(), QmpError> {
        let greeting = self.read().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Greeting(greeting));
        }
        self.execute("qmp_capabilities").await
    }

    async fn execute(&mut self, command: &str) -> Result<(), QmpError> {
        let line = format!("{{\"execute\":\"{command}\"}}\n");
        self.writer.write_all(line.as_bytes()).await?;
        let answer = self.read().await?;
        if let Some(e) = answer.get("error") {
            return Err(QmpError::Refused {
                command: command.to_owned(),
                error: e.clone(),
            });
        }
        Ok(())
    }
}

/// What went wrong talking to QEMU's monitor; it becomes a power error
/// naming the step (accept, handshake, `cont`).
#[derive(Debug, thiserror::Error)]
enum QmpError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("QMP socket closed")]
    Closed,
    #[error("bad QMP line: {0}")]
    BadLine(#[from] serde_json::Error),
    #[error("unexpected greeting {0}")]
    Greeting(serde_json::Value),
    #[error("{command}: {error}")]
    Refused {
        command: String,
        error: serde_json::Value,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::{Console, ConsoleIo, PtyConsole};
    use tokio::io::AsyncWriteExt;

    /// What labd wrote while no QEMU had the pty open is dropped before the
    /// next QEMU starts; what it writes afterwards arrives.
    #[tokio::test]
    async fn a_new_qemu_does_not_read_what_was_meant_for_the_last() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let console = PtyConsole {
            link: dir.path().join("board.console"),
        };
        // The reader holds the pty's link: it stays, unread.
        let ConsoleIo {
            mut writer,
            reader: _reader,
        } = console.connect().await.unwrap();
        writer.write_all(b"stale keys").await.unwrap();
        discard_pending_input(&console.link);
        let mut qemu = crate::pty::open_driver(&console.link);
        writer.write_all(b"fresh").await.unwrap();
        let mut got = [0u8; 5];
        qemu.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"fresh");
    }
}
