//! Power relays: how labd switches a board on and off.
//!
//! Every relay kind implements [`Power`]; a board actor only sees the trait.
//! `command` runs LAVA-style power commands as argv (never through a shell,
//! never with job-supplied text) with a timeout and retries; `sim` switches
//! a `labd-sim` board through the simulator's control socket; `NoPower` is
//! a board without a relay (an ssh device that is always on).

pub mod qemu;

use crate::config::PowerConfig;
use crate::driver::BoxFuture;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    #[error("power {action}: {message}")]
    Failed {
        action: &'static str,
        message: String,
    },
    #[error("power {action}: timed out after {secs} s")]
    Timeout { action: &'static str, secs: u64 },
    #[error("power {0}: not supported by this relay")]
    Unsupported(&'static str),
    #[error("power {0}: this board has no relay (no `power` in its config)")]
    NoRelay(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    On,
    Off,
    Reset,
}

impl PowerAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::On => "on",
            PowerAction::Off => "off",
            PowerAction::Reset => "reset",
        }
    }
}

pub trait Power: Send + Sync {
    fn switch(&self, action: PowerAction) -> BoxFuture<'_, Result<(), PowerError>>;
    fn describe(&self) -> String;
    /// The last commanded state, as far as labd knows.
    fn state(&self) -> PowerState {
        PowerState::Unknown
    }
    /// What the relay sees of the board by itself, when it can (a QEMU
    /// process that is gone is Off whatever was commanded).
    fn observed(&self) -> Option<PowerState> {
        None
    }
    /// False for a board with no relay ([`NoPower`]).
    fn has_relay(&self) -> bool {
        true
    }
    /// Called once by the board that owns the relay.
    fn bind(&self, _hooks: RelayHooks) {}
    /// The kernel to start on the next power-on (boot method `qemu`);
    /// `None` clears it. Only a relay that starts the board itself can.
    fn set_direct_boot(&self, _boot: Option<DirectBoot>) -> Result<(), PowerError> {
        Err(PowerError::Unsupported(
            "direct kernel boot (boot method qemu)",
        ))
    }
}

/// What a relay may need from the board that owns it.
pub struct RelayHooks {
    /// Counts the board's console attachments: a relay that starts the
    /// board (QEMU) lets it run only after the next one.
    pub console_attached: tokio::sync::watch::Receiver<u64>,
    /// Told when the board lost power on its own (QEMU exited).
    pub lost: Box<dyn Fn(String) + Send + Sync>,
}

/// A kernel booted directly by the relay, from the job's deploy.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectBoot {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub dtb: Option<PathBuf>,
    /// The kernel command line; used only with a kernel.
    pub append: String,
    /// A tmpfs deploy's `image_arg`s, checked at submit, paths filled in.
    pub extra: Vec<String>,
    /// The QEMU options of the job's `context` (`-cpu`, `-machine`, `-m`,
    /// `extra_options`), checked at submit.
    pub options: Vec<String>,
    /// The job's `context.arch`: the relay refuses a job whose architecture
    /// its QEMU does not run.
    pub arch: Option<String>,
}

/// What labd last told a relay, and whether it worked: after a failed
/// command the state is Unknown, never the previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PowerState {
    On,
    Off,
    Unknown,
}

/// A board with no relay (an ssh device, always on): off has nothing to
/// do, and on and reset are refused, so no one is told a board was
/// switched that was not.
pub struct NoPower;

impl Power for NoPower {
    fn switch(&self, action: PowerAction) -> BoxFuture<'_, Result<(), PowerError>> {
        Box::pin(async move {
            match action {
                PowerAction::Off => Ok(()),
                other => Err(PowerError::NoRelay(other.as_str())),
            }
        })
    }
    fn describe(&self) -> String {
        "no relay".into()
    }
    /// Nothing was switched, whatever was asked: the board's power is not
    /// known (a successful `off` must not show it Off).
    fn observed(&self) -> Option<PowerState> {
        Some(PowerState::Unknown)
    }
    fn has_relay(&self) -> bool {
        false
    }
}

pub struct SimPower {
    pub control: PathBuf,
    pub board: String,
}

impl Power for SimPower {
    fn switch(&self, action: PowerAction) -> BoxFuture<'_, Result<(), PowerError>> {
        Box::pin(async move {
            use crate::sim_control::ControlRequest as R;
            let board = self.board.clone();
            let req = match action {
                PowerAction::On => R::On { board },
                PowerAction::Off => R::Off { board },
                PowerAction::Reset => R::Reset { board },
            };
            let failed = |message: String| PowerError::Failed {
                action: action.as_str(),
                message,
            };
            let resp = crate::sim_control::control(&self.control, &req)
                .await
                .map_err(|e| failed(format!("{}: {e}", self.control.display())))?;
            if resp.ok {
                Ok(())
            } else {
                Err(failed(resp.error.unwrap_or_default()))
            }
        })
    }
    fn describe(&self) -> String {
        format!("sim relay {} via {}", self.board, self.control.display())
    }
}

pub struct CommandPower {
    /// Each action's commands, each as argv, run in order (LAVA allows a
    /// list: a USB hub, then the relay).
    pub on: Vec<Vec<String>>,
    pub off: Vec<Vec<String>>,
    pub reset: Option<Vec<Vec<String>>>,
    pub timeout: Duration,
    pub retries: u32,
}

impl CommandPower {
    async fn run_once(&self, action: PowerAction, argv: &[String]) -> Result<(), PowerError> {
        let Some((prog, args)) = argv.split_first() else {
            return Err(PowerError::Unsupported(action.as_str()));
        };
        let mut cmd = tokio::process::Command::new(prog);
        crate::child::scrub(&mut cmd)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        match tokio::time::timeout(self.timeout, cmd.output()).await {
            Err(_) => Err(PowerError::Timeout {
                action: action.as_str(),
                secs: self.timeout.as_secs(),
            }),
            Ok(Err(e)) => Err(PowerError::Failed {
                action: action.as_str(),
                message: format!("{prog}: {e}"),
            }),
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => Err(PowerError::Failed {
                action: action.as_str(),
                message: format!(
                    "{prog} exited with {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            }),
        }
    }

    /// Runs an action's commands in order; the first failure ends it.
    async fn run_all(&self, action: PowerAction, cmds: &[Vec<String>]) -> Result<(), PowerError> {
        if cmds.is_empty() {
            return Err(PowerError::Unsupported(action.as_str()));
        }
        for argv in cmds {
            self.run_once(action, argv).await?;
        }
        Ok(())
    }
}

impl Power for CommandPower {
    fn switch(&self, action: PowerAction) -> BoxFuture<'_, Result<(), PowerError>> {
        Box::pin(async move {
            let cmds = match action {
                PowerAction::On => self.on.clone(),
                PowerAction::Off => self.off.clone(),
                PowerAction::Reset => match &self.reset {
                    Some(r) => r.clone(),
                    None => {
                        self.run_all(PowerAction::Off, &self.off).await?;
                        return self.run_all(PowerAction::On, &self.on).await;
                    }
                },
            };
            let mut last = None;
            for _ in 0..=self.retries {
                match self.run_all(action, &cmds).await {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        tracing::warn!(error = %e, "power command failed");
                        last = Some(e);
                    }
                }
            }
            Err(last.unwrap_or(PowerError::Unsupported(action.as_str())))
        })
    }
    fn describe(&self) -> String {
        format!("command relay {:?}", self.on)
    }
}

pub fn from_config(
    board: &crate::config::BoardConfig,
    state_dir: &std::path::Path,
    sim_control: Option<&PathBuf>,
) -> Box<dyn Power> {
    let name = board.name.as_str();
    match &board.power {
        PowerConfig::None => Box::new(NoPower),
        PowerConfig::Qemu {
            argv,
            qmp,
            timeout_secs,
        } => Box::new(qemu::QemuPower::new(
            name.to_owned(),
            argv.clone(),
            qmp.clone()
                .unwrap_or_else(|| state_dir.join("qemu").join(format!("{name}.qmp"))),
            match &board.console {
                crate::config::ConsoleConfig::Unix { path } => {
                    qemu::QemuConsole::Socket(path.clone())
                }
                crate::config::ConsoleConfig::Pty { link } => qemu::QemuConsole::Pty(link.clone()),
                _ => qemu::QemuConsole::None,
            },
            Duration::from_secs(*timeout_secs),
        )),
        PowerConfig::Sim { board: b } => Box::new(SimPower {
            // Invariant: config validation refuses sim power without sim_control.
            control: sim_control.cloned().unwrap_or_default(),
            board: b.clone().unwrap_or_else(|| name.to_owned()),
        }),
        PowerConfig::Command {
            on,
            off,
            reset,
            timeout_secs,
            retries,
        } => Box::new(CommandPower {
            on: on.list(),
            off: off.list(),
            reset: reset.as_ref().map(|r| r.list()),
            timeout: Duration::from_secs(*timeout_secs),
            retries: *retries,
        }),
        PowerConfig::Pdudaemon {
            url,
            hostname,
            port,
            delay,
            timeout_secs,
            retries,
        } => Box::new(Pdudaemon {
            url: url.clone(),
            hostname: hostname.clone(),
            port: *port,
            delay: *delay,
            timeout: Duration::from_secs(*timeout_secs),
            retries: *retries,
        }),
    }
}

/// A PDU port behind pdudaemon. Every board on one PDU shares one queue
/// (the PDU's own task, see [`pdu_queue`]), so the PDU gets one command at a
/// time and a slow PDU delays only the boards waiting for it.
pub struct Pdudaemon {
    pub url: String,
    pub hostname: String,
    pub port: u32,
    pub delay: Option<u32>,
    pub timeout: Duration,
    pub retries: u32,
}

/// Why one request to pdudaemon failed.
#[derive(Debug, thiserror::Error)]
enum PduError {
    #[error("pdudaemon answered {0}")]
    Status(ureq::http::StatusCode),
    #[error("{0}")]
    Http(#[from] ureq::Error),
    #[error("the request's thread failed: {0}")]
    Thread(#[from] tokio::task::JoinError),
    #[error("the PDU's queue is gone")]
    QueueGone,
    #[error("the PDU's task ended")]
    TaskEnded,
}

type PduRequest = (String, tokio::sync::oneshot::Sender<Result<(), PduError>>);
type PduQueue = tokio::sync::mpsc::UnboundedSender<PduRequest>;

/// The queue of the task that owns one PDU (by pdudaemon URL and hostname),
/// started on first use.
fn pdu_queue(
    url: &str,
    hostname: &str,
    timeout: Duration,
) -> tokio::sync::mpsc::UnboundedSender<PduRequest> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static PDUS: OnceLock<Mutex<HashMap<(String, String), PduQueue>>> = OnceLock::new();
    let key = (url.to_owned(), hostname.to_owned());
    let mut map = match PDUS.get_or_init(Default::default).lock() {
        Ok(m) => m,
        // Nothing panics while holding this lock; if it ever did, the map
        // itself is still whole.
        Err(p) => p.into_inner(),
    };
    if let Some(tx) = map.get(&key).filter(|tx| !tx.is_closed()) {
        return tx.clone();
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PduRequest>();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    tokio::spawn(async move {
        while let Some((request, reply)) = rx.recv().await {
            let agent = agent.clone();
            let r = tokio::task::spawn_blocking(move || match agent.get(&request).call() {
                Ok(resp) if resp.status().is_success() => Ok(()),
                Ok(resp) => Err(PduError::Status(resp.status())),
                Err(e) => Err(PduError::Http(e)),
            })
            .await
            .unwrap_or_else(|e| Err(PduError::Thread(e)));
            let _ = reply.send(r);
        }
    });
    map.insert(key, tx.clone());
    tx
}

impl Pdudaemon {
    fn request(&self, command: &str) -> String {
        let mut q = format!(
            "{}/power/control/{command}?hostname={}&port={}",
            self.url.trim_end_matches('/'),
            self.hostname,
            self.port
        );
        if let Some(d) = self.delay {
            q.push_str(&format!("&delay={d}"));
        }
        q
    }
}

impl Power for Pdudaemon {
    fn switch(&self, action: PowerAction) -> BoxFuture<'_, Result<(), PowerError>> {
        Box::pin(async move {
            let command = match action {
                PowerAction::On => "on",
                PowerAction::Off => "off",
                PowerAction::Reset => "reboot",
            };
            let request = self.request(command);
            let queue = pdu_queue(&self.url, &self.hostname, self.timeout);
            // The loop runs at least once and always sets `last` before it ends.
            let mut last = PduError::TaskEnded;
            for _ in 0..=self.retries {
                let (tx, rx) = tokio::sync::oneshot::channel();
                if queue.send((request.clone(), tx)).is_err() {
                    last = PduError::QueueGone;
                    break;
                }
                match rx.await {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(e)) => {
                        tracing::warn!(pdu = %self.hostname, port = self.port, error = %e, "pdudaemon request failed");
                        last = e;
                    }
                    Err(_) => last = PduError::TaskEnded,
                }
            }
            Err(PowerError::Failed {
                action: action.as_str(),
                message: format!("{}: {last}", self.describe()),
            })
        })
    }
    fn describe(&self) -> String {
        format!(
            "pdudaemon {} {} port {}",
            self.url, self.hostname, self.port
        )
    }
}

/// Any relay, timed (a command above the slow threshold is logged and
/// counted) and remembering the last commanded state.
pub struct Timed {
    pub inner: Box<dyn Power>,
    pub board: String,
    pub metrics: crate::metrics::Metrics,
    pub last: std::sync::Mutex<PowerState>,
}

impl Timed {
    pub fn new(inner: Box<dyn Power>, board: String, metrics: crate::metrics::Metrics) -> Self {
        Timed {
            inner,
            board,
            metrics,
            last: std::sync::Mutex::new(PowerState::Unknown),
        }
    }
}

impl Power for Timed {
    fn switch(&self, action: PowerAction) -> BoxFuture<'_, Result<(), PowerError>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            // Until the command is done the relay's state is not known.
            if let Ok(mut l) = self.last.lock() {
                *l = PowerState::Unknown;
            }
            let r = self.inner.switch(action).await;
            self.metrics
                .power(&self.board, action.as_str(), started.elapsed());
            if let (Ok(()), Ok(mut l)) = (&r, self.last.lock()) {
                *l = match action {
                    PowerAction::Off => PowerState::Off,
                    PowerAction::On | PowerAction::Reset => PowerState::On,
                };
            }
            r
        })
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn state(&self) -> PowerState {
        self.inner
            .observed()
            .unwrap_or_else(|| self.last.lock().map(|l| *l).unwrap_or(PowerState::Unknown))
    }
    fn observed(&self) -> Option<PowerState> {
        self.inner.observed()
    }
    fn bind(&self, hooks: RelayHooks) {
        self.inner.bind(hooks)
    }
    fn set_direct_boot(&self, boot: Option<DirectBoot>) -> Result<(), PowerError> {
        self.inner.set_direct_boot(boot)
    }
    fn has_relay(&self) -> bool {
        self.inner.has_relay()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(on: Vec<String>, timeout_ms: u64, retries: u32) -> CommandPower {
        CommandPower {
            on: vec![on.clone()],
            off: vec![on],
            reset: None,
            timeout: Duration::from_millis(timeout_ms),
            retries,
        }
    }

    /// A pdudaemon stand-in: records each request line, answers 500 to the
    /// first `fail_first` requests, and notes how many were in flight at once.
    async fn fake_pdudaemon(
        fail_first: usize,
    ) -> (
        String,
        std::sync::Arc<std::sync::Mutex<Vec<String>>>,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (in_flight, max) = (
            std::sync::Arc::new(AtomicUsize::new(0)),
            std::sync::Arc::new(AtomicUsize::new(0)),
        );
        let (seen2, max2) = (seen.clone(), max.clone());
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                let (seen, in_flight, max) = (seen2.clone(), in_flight.clone(), max2.clone());
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut r = tokio::io::BufReader::new(r);
                    let mut line = String::new();
                    r.read_line(&mut line).await.unwrap();
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(now, Ordering::SeqCst);
                    let n = {
                        let mut v = seen.lock().unwrap();
                        v.push(line.trim().to_owned());
                        v.len()
                    };
                    // Long enough that overlapping requests would show.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    let status = if n <= fail_first {
                        "500 Internal Server Error"
                    } else {
                        "200 OK"
                    };
                    let _ = w
                        .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes())
                        .await;
                });
            }
        });
        (url, seen, max)
    }

    fn pdu(url: &str, port: u32) -> Pdudaemon {
        Pdudaemon {
            url: url.to_owned(),
            hostname: "pdu1".into(),
            port,
            delay: Some(5),
            timeout: Duration::from_secs(5),
            retries: 2,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pdudaemon_requests_are_retried_and_one_pdu_takes_one_at_a_time() {
        let (url, seen, max) = fake_pdudaemon(1).await;
        pdu(&url, 3).switch(PowerAction::Reset).await.unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "GET /power/control/reboot?hostname=pdu1&port=3&delay=5 HTTP/1.1",
                "GET /power/control/reboot?hostname=pdu1&port=3&delay=5 HTTP/1.1"
            ]
        );
        // Eight ports of one PDU switched at once reach it one by one.
        let handles: Vec<_> = (1..=8)
            .map(|p| {
                let b = pdu(&url, p);
                tokio::spawn(async move { b.switch(PowerAction::Off).await })
            })
            .collect();
        for h in handles {
            h.await.unwrap().unwrap();
        }
        assert_eq!(seen.lock().unwrap().len(), 10);
        assert_eq!(max.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_pdudaemon_that_keeps_failing_is_an_error_naming_it() {
        let (url, seen, _) = fake_pdudaemon(usize::MAX).await;
        let e = pdu(&url, 4).switch(PowerAction::On).await.unwrap_err();
        assert!(e.to_string().contains("pdudaemon answered 500"), "{e}");
        assert_eq!(seen.lock().unwrap().len(), 3, "one try and two retries");
    }

    #[tokio::test]
    async fn a_failing_relay_command_is_retried_then_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        // Fails twice, then succeeds: a flaky PDU.
        let script = format!(
            "echo x >> {c}; [ $(wc -l < {c}) -ge 3 ]",
            c = count.display()
        );
        let p = relay(vec!["sh".into(), "-c".into(), script], 5000, 2);
        p.switch(PowerAction::On).await.unwrap();
        let runs = std::fs::read_to_string(&count).unwrap().lines().count();
        assert_eq!(runs, 3);
    }

    /// LAVA's list of power commands: run in order, and a failing one
    /// stops the rest (the whole list is tried again).
    #[tokio::test]
    async fn a_list_of_power_commands_runs_in_order_and_stops_at_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let step = |s: &str| {
            vec![
                "sh".to_string(),
                "-c".into(),
                format!("echo {s} >> {}", log.display()),
            ]
        };
        let p = CommandPower {
            on: vec![step("hub"), step("relay")],
            off: vec![step("off"), vec!["false".into()], step("never")],
            reset: None,
            timeout: Duration::from_secs(5),
            retries: 1,
        };
        p.switch(PowerAction::On).await.unwrap();
        p.switch(PowerAction::Off).await.unwrap_err();
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "hub\nrelay\noff\noff\n"
        );
    }

    #[tokio::test]
    async fn a_hung_relay_command_times_out_on_every_attempt() {
        let p = relay(vec!["sleep".into(), "30".into()], 100, 1);
        let e = p.switch(PowerAction::Off).await.unwrap_err();
        assert!(
            matches!(e, PowerError::Timeout { action: "off", .. }),
            "{e}"
        );
    }

    #[tokio::test]
    async fn the_last_commanded_state_is_unknown_after_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let broken = dir.path().join("broken");
        let script = format!("[ ! -e {} ]", broken.display());
        let relay = relay(vec!["sh".into(), "-c".into(), script], 5000, 0);
        let p = Timed::new(Box::new(relay), "b".into(), Default::default());
        assert_eq!(p.state(), PowerState::Unknown);
        p.switch(PowerAction::On).await.unwrap();
        assert_eq!(p.state(), PowerState::On);
        p.switch(PowerAction::Off).await.unwrap();
        assert_eq!(p.state(), PowerState::Off);
        std::fs::write(&broken, b"").unwrap();
        p.switch(PowerAction::On).await.unwrap_err();
        assert_eq!(p.state(), PowerState::Unknown);
    }

    #[tokio::test]
    async fn arguments_are_never_seen_by_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let witness = dir.path().join("pwned");
        let arg = format!("$(touch {w}); touch {w}", w = witness.display());
        let p = relay(vec!["echo".into(), arg], 5000, 0);
        p.switch(PowerAction::On).await.unwrap();
        assert!(!witness.exists());
    }
}
