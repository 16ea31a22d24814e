//! The job runner: the long async sequence of one job on one board
//! (deploy, power on, interrupt U-Boot, boot commands, kernel, login, tests).
//!
//! A runner is a future that the board actor spawns in its own context; it
//! owns nothing of the board. It gets console bytes through a `ConsoleFeed`
//! (a channel bounded by the bytes waiting) fed by the actor, writes through the actor's console writer, reports each phase
//! back to the actor, and records events and test results in the store. Each
//! phase is bounded by its timeout; the whole run by the job timeout. When
//! the actor cancels the run it simply drops this future.
//!
//! ## Console before power
//!
//! The board actor publishes whether its console is attached (`console_up`,
//! a watch); the runner powers a board on only once it is, so a console
//! server still starting or a re-plugged adapter never costs the boot's
//! first bytes. A `command` console is attached when its program runs,
//! unless it has a `ready` pattern: then `CommandConsole::connect` reads the
//! program's output until the pattern (bounded by `ready_timeout_secs`)
//! before it returns, so telnet still connecting holds the power-on too; the
//! program's chatter up to the pattern never reaches the board actor. A
//! telnet console is a task between the TCP socket and an in-memory pipe
//! that answers negotiation and strips it from the data, so the board actor
//! sees plain bytes from every console kind.
//!
//! ## U-Boot pacing
//!
//! A bootloader command counts as done at the first prompt *after its own
//! echo*: the interrupt's newline prints one prompt more, and counting
//! prompts alone typed each command one early, into a running `tftp` that
//! swallows keys. After the interrupt, the kernel's start message instead of
//! the prompt means U-Boot's countdown ran out before the key reached it (a
//! loaded host, a slow console path): the job ends at once as an
//! Infrastructure failure saying so, not at the action's timeout.
//!
//! ## How a test step ends
//!
//! A prompt cannot say when a shell line ended: the line's echo or its
//! output may hold it (`'# '` is in every comment). The runner types each
//! line inside two markers the shell prints (`printf '<LABD_%s T>\n' START;
//! eval 'LINE'; printf '<LABD_%s T %s>\n' END "$?"`, T a token of the run
//! and the step's number) and waits for the printed end marker, which the
//! echo, holding `%s` where the output holds `END`, cannot contain. Nothing
//! is typed ahead, so a step reading stdin cannot eat the marker. Signals
//! are fed to the parser only from what a wait consumed between a step's
//! markers (and what the board printed before the line was typed), never the
//! echo; the parser's `end` finishes a line the marker ended. A definition
//! without its ENDRUN, and a test timeout, end the job as the test's failure
//! (Test), which leaves the board's health alone.
//!
//! ## Retries
//!
//! A block's `failure_retry` is the runner's loop around the block (its
//! timeout shared among the attempts). A job's `failure_retry` is the lab's:
//! a job that ends Incomplete (Infrastructure) gets a new job record
//! (`retry_of`, `attempt`) queued like a submission; for jobs cut short by a
//! crash, the new record is stored inside the start-up reconcile, before
//! labd serves anyone. Queue timeouts are a timer per queued job
//! (`run_later`) that cancels the job if it is still queued when it fires.
//!
//! ## Invariants
//!
//! Never ends a test step at a prompt, never types a line before the last
//! one's end marker, never takes a signal from the echo of what it typed. A
//! test timeout or a missing ENDRUN is a Test error. It holds no
//! board state; everything it learns goes out as events, results, or phase
//! messages. It never powers off (the actor does), and it never powers on
//! before the console is attached (unless the console attaches after
//! power-on, as QEMU's does).

mod interactive;
mod monitors;
mod nfsroot;
mod overlay;
mod ramdisk;
mod ssh;

use crate::device_type::DeviceType;
use crate::job::{Action, Boot, BootCommands, Deploy, JobDefinition, KernelType, Test};
use crate::matcher::Matcher;
use crate::model::{ErrorClass, JobEvent, JobId, JobOutcome, TestCase};
use crate::power::{Power, PowerAction};
use crate::signals::{self, Signal, SignalParser};
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Whether a failed action block may be tried again: infrastructure and
/// job errors (timeouts, a missing prompt) may pass; a test's own verdict,
/// a cancel, a bad configuration or a bug will not.
fn retryable(o: &JobOutcome) -> bool {
    matches!(
        o.error_class,
        Some(ErrorClass::Infrastructure | ErrorClass::Job)
    )
}

/// Console bytes from the board actor to the runner. The actor never
/// blocks, so the feed is bounded by bytes instead: the actor counts what it
/// sends, the runner what it takes, and while more than [`FEED_LIMIT`] is
/// waiting the actor drops bytes for the runner (they still go to the log,
/// with a note). The runner reads all the time it waits for a pattern, so
/// only a flood during a slow step can reach the limit.
pub struct ConsoleFeed {
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
    waiting: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// The most console bytes waiting for the runner.
pub const FEED_LIMIT: usize = 8 << 20;

/// The actor's end of a [`ConsoleFeed`].
pub struct FeedSender {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    waiting: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FeedSender {
    /// Whether the runner can take `n` more bytes (it is not too far
    /// behind). Only the runner takes bytes out, so the answer holds until
    /// the next [`FeedSender::send`].
    pub fn has_room(&self, n: usize) -> bool {
        self.waiting.load(std::sync::atomic::Ordering::Acquire) + n <= FEED_LIMIT
    }

    /// Hands `bytes` to the runner; call only after [`FeedSender::has_room`]
    /// said yes. The buffer itself goes, not a copy of it.
    pub fn send(&self, bytes: Vec<u8>) {
        self.waiting
            .fetch_add(bytes.len(), std::sync::atomic::Ordering::AcqRel);
        // A closed feed means the runner is done; nothing is owed to it.
        let _ = self.tx.send(bytes);
    }
}

impl ConsoleFeed {
    pub fn new() -> (FeedSender, ConsoleFeed) {
        let (tx, rx) = mpsc::unbounded_channel();
        let waiting = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        (
            FeedSender {
                tx,
                waiting: waiting.clone(),
            },
            ConsoleFeed { rx, waiting },
        )
    }

    async fn next(&mut self) -> Option<Vec<u8>> {
        let b = self.rx.recv().await?;
        self.waiting
            .fetch_sub(b.len(), std::sync::atomic::Ordering::AcqRel);
        Some(b)
    }
}

/// The board's boot state machine, as the board actor reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Off,
    Deploying,
    /// Waiting for a boot slot (`limits.max_concurrent_boots`).
    WaitingToBoot,
    PoweringOn,
    Bootloader,
    BootloaderCommands,
    Kernel,
    Login,
    /// Opening an ssh board's connection (`method: ssh`).
    Connecting,
    Shell,
    Testing,
    PoweringOff,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Where the TFTP server is, as the boards see it.
#[derive(Debug, Clone)]
pub struct TftpInfo {
    pub root: PathBuf,
    pub server_ip: String,
    pub port: u16,
    /// The largest artifact a deploy fetches (`limits.max_artifact_bytes`).
    pub max_artifact_bytes: u64,
    /// Downloads shared by jobs; None when the lab turned it off.
    pub cache: Option<Arc<crate::cache::ArtifactCache>>,
    /// Where `file://` artifacts may come from (`[deploy] file_roots`).
    pub file_roots: crate::local_file::FileRoots,
    /// The repositories of `from: git` test definitions, shared by jobs.
    pub git: Option<Arc<crate::git::GitCache>>,
    /// Where boards fetch overlays for `transfer_overlay`, if the lab
    /// serves them.
    pub overlay_http: Option<Arc<crate::overlay_http::OverlayHttp>>,
    /// The NFS server for jobs' `nfsrootfs`, if the lab runs one.
    pub nfs: Option<Arc<crate::nfs::NfsServer>>,
}

pub struct RunCtx {
    pub job_id: JobId,
    pub def: JobDefinition,
    /// Whose rights the job's `file://` artifacts are read with.
    pub reader: Option<crate::model::Identity>,
    pub dt: DeviceType,
    pub input: ConsoleFeed,
    pub output: mpsc::UnboundedSender<Vec<u8>>,
    pub power: Arc<dyn Power>,
    pub store: Store,
    pub tftp: TftpInfo,
    /// A boot holds one of these from power-on to the shell.
    pub boot_slots: crate::boots::BootSlots,
    pub relay_device: Option<String>,
    pub phase: Box<dyn Fn(Phase) + Send>,
    /// Whether the board's console is attached now.
    pub console_up: tokio::sync::watch::Receiver<bool>,
    /// The board's ssh settings, when its console is an ssh session: a
    /// `method: ssh` boot opens it and hands it to the board (`attach`).
    pub ssh: Option<crate::console::SshConsole>,
    /// Gives the board a console connection this job opened; the board
    /// reads and writes it from then on, and closes it at the job's end.
    pub attach: Box<dyn Fn(crate::console::ConsoleIo) + Send>,
}

/// Why a run stopped early.
struct Stop(JobOutcome);

fn infra(msg: impl Into<String>) -> Stop {
    Stop(JobOutcome::incomplete(ErrorClass::Infrastructure, msg))
}

struct Runner {
    ctx: RunCtx,
    rest: Vec<u8>,
    signals: SignalParser,
    /// In a test action: waits are not bounded by the connection timeout,
    /// and a timeout is the test's (`ErrorClass::Test`), not the lab's.
    collecting: bool,
    /// Whether the bytes a wait consumes go to the signal parser: only
    /// the board's output between a step's start and end markers, never
    /// the echo of what labd typed.
    feeding: bool,
    collected: Vec<Signal>,
    /// Marks this run's step markers apart from any earlier run's (and
    /// from whatever a test prints), with `steps` counting them.
    step_token: String,
    steps: u64,
    /// The shell line running now, for a timeout's message.
    current_step: Option<String>,
    /// The bounded action running now (`bootloader-commands`, ...).
    current_action: Option<String>,
    /// The job's `secrets` values, masked in events, results and errors.
    mask: Option<crate::secrets::Masker>,
    /// The test definitions whose ENDRUN signal was seen.
    ended_runs: Vec<String>,
    /// Deployed files by role (`kernel`, `ramdisk`, `dtb`, or a tmpfs
    /// image's name), relative to the TFTP root.
    deployed: BTreeMap<String, String>,
    /// A tmpfs deploy's QEMU arguments, with the images' paths filled in.
    image_args: Vec<String>,
    kernel_type: Option<KernelType>,
    ramdisk_options: crate::job::RamdiskOptions,
    /// The deployed ramdisk is in a U-Boot legacy image, so `{BOOTX}`
    /// passes it by its address alone: U-Boot reads its size in the header.
    ramdisk_in_uimage: bool,
    shell_prompt: Vec<String>,
    /// A boot action has ended where it meant to: at a shell, at the
    /// bootloader's prompt, or (before a monitors test) as the board boots.
    booted: bool,
    helpers_sent: bool,
    current_set: Option<String>,
    /// Held from power-on until the shell (or the run's end).
    boot_slot: Option<crate::boots::BootPermit>,
    /// The running action block's deadline and the error naming it, when
    /// the block is bounded as a whole (a boot): a phase timer inside it
    /// that expires no earlier than the block's is the block's timeout.
    block_deadline: Option<(tokio::time::Instant, String)>,
    /// The last error ending an action was its running out of time (for
    /// LAVA's `timeout: {skip: true}`).
    timed_out: bool,
    /// Each definition's `expected` test cases, by suite, and the cases
    /// reported so far, by suite and case: for the typed path and the
    /// overlay alike.
    expected: BTreeMap<String, Option<Vec<String>>>,
    reported: BTreeMap<(String, String), &'static str>,
    /// The test actions that run from the overlay (by action index): the
    /// line that runs them on the board, and their definitions' names.
    overlay_runs: BTreeMap<usize, (String, Vec<String>)>,
    /// Running `lava-test-runner`: results go to the suite of the last
    /// STARTRUN, held to that suite's `expected`.
    overlay_run: bool,
    run_suite: Option<String>,
    /// The overlay reaches the board, so inline test actions run from it
    /// too (set at the deploy).
    inline_from_overlay: bool,
    /// The overlay as a tarball, for a boot with `transfer_overlay`, and
    /// its place on the lab's HTTP listener while the job runs.
    overlay_tar: Option<Vec<u8>>,
    overlay_served: Option<crate::overlay_http::Served>,
    /// The job's unpacked `nfsrootfs` (the directory served, after any
    /// `prefix`) and the bytes unpacked into its tree so far.
    nfs_root: Option<(std::path::PathBuf, u64)>,
    /// `{NFSROOTFS}`, once the root is exported.
    nfs_export: Option<String>,
    /// A `to: nfs` deploy's kernel argument for a `qemu-nfs` boot.
    nfs_kernel_arg: Option<String>,
}

/// A token no earlier run used: its step markers cannot be mistaken for
/// another run's still on the console.
fn step_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:08x}", h.finish() as u32)
}

/// How a test step's timeout is classed: a step that does not return is
/// the test's doing, not the lab's, and must not cost the board its health.
fn timed_out(in_test: bool, msg: String) -> Stop {
    if in_test {
        Stop(JobOutcome::incomplete(ErrorClass::Test, msg))
    } else {
        infra(msg)
    }
}

/// Runs a job to its end and returns how it ended. Powering off is the
/// caller's business, so that a cancelled run is powered off the same way.
pub async fn run(ctx: RunCtx) -> JobOutcome {
    let job_timeout = ctx.def.timeouts.job.unwrap_or(Duration::from_secs(3600));
    let mask = crate::secrets::Masker::new(ctx.def.secrets.values().map(String::as_str));
    let mut r = Runner {
        mask,
        ctx,
        rest: Vec::new(),
        signals: SignalParser::new(),
        collecting: false,
        feeding: false,
        collected: Vec::new(),
        step_token: step_token(),
        steps: 0,
        current_step: None,
        current_action: None,
        ended_runs: Vec::new(),
        deployed: BTreeMap::new(),
        image_args: Vec::new(),
        kernel_type: None,
        ramdisk_options: crate::job::RamdiskOptions::default(),
        ramdisk_in_uimage: false,
        shell_prompt: Vec::new(),
        booted: false,
        helpers_sent: false,
        current_set: None,
        boot_slot: None,
        timed_out: false,
        expected: BTreeMap::new(),
        reported: BTreeMap::new(),
        overlay_runs: BTreeMap::new(),
        overlay_run: false,
        run_suite: None,
        inline_from_overlay: false,
        overlay_tar: None,
        overlay_served: None,
        nfs_root: None,
        nfs_export: None,
        nfs_kernel_arg: None,
        block_deadline: None,
    };
    let job_id = r.ctx.job_id;
    let store = r.ctx.store.clone();
    match tokio::time::timeout(job_timeout, r.all()).await {
        Ok(Ok(())) => JobOutcome::complete(),
        Ok(Err(Stop(mut o))) => {
            // An error may quote the console, where a secret can be.
            if let (Some(m), Some(e)) = (&r.mask, o.error.as_mut()) {
                *e = m.mask_str(e);
            }
            o
        }
        Err(_) => {
            let msg = format!("job timed out after {} s", job_timeout.as_secs());
            store.record_event(job_id, JobEvent::now("timeout", &msg));
            JobOutcome::incomplete(ErrorClass::Job, msg)
        }
    }
}

impl Runner {
    fn event(&self, kind: &str, message: &str) {
        // Queued now, in order; the store makes it durable with the next batch.
        let message = match &self.mask {
            Some(m) => std::borrow::Cow::Owned(m.mask_str(message)),
            None => std::borrow::Cow::Borrowed(message),
        };
        self.ctx
            .store
            .record_event(self.ctx.job_id, JobEvent::now(kind, message.as_ref()));
    }

    fn phase(&self, p: Phase) {
        tracing::debug!(phase = %p, "phase");
        self.event("phase", &p.to_string());
        (self.ctx.phase)(p);
    }

    async fn all(&mut self) -> Result<(), Stop> {
        let actions = self.ctx.def.actions.clone();
        for (i, action) in actions.iter().enumerate() {
            let (kind, attempts, block) = match action {
                Action::Deploy(d) => ("deploy", d.failure_retry, d.timeout),
                Action::Boot(b) => ("boot", b.failure_retry, b.timeout),
                Action::Test(t) => ("test", t.failure_retry, t.timeout),
            };
            let skip_on_timeout = matches!(action, Action::Test(t) if t.skip_on_timeout);
            let attempts = attempts.unwrap_or(1).max(1);
            // As LAVA: with failure_retry the block's timeout is shared out
            // among the attempts. A boot's timeout bounds the whole boot
            // (power-on, bootloader, kernel, login), not each phase of it.
            let per_attempt = block
                .filter(|_| attempts > 1 || matches!(action, Action::Boot(_)))
                .map(|t| t / attempts);
            let mut attempt = 1;
            loop {
                // The block's own deadline and the error naming it, also
                // seen by the phase timers inside it (`bounded`).
                self.block_deadline = per_attempt.map(|limit| {
                    let msg = if attempts > 1 {
                        format!(
                            "{kind} attempt {attempt} of {attempts} timed out after {} s",
                            limit.as_secs()
                        )
                    } else {
                        format!("{kind} timed out after {} s", limit.as_secs())
                    };
                    (tokio::time::Instant::now() + limit, msg)
                });
                let block = self.block_deadline.clone();
                let in_test = matches!(action, Action::Test(_));
                let run = self.action(i, action);
                let r = match block {
                    Some((deadline, msg)) => match tokio::time::timeout_at(deadline, run).await {
                        Ok(r) => r,
                        Err(_) => {
                            let msg = self.with_step(msg);
                            self.event("timeout", &msg);
                            self.timed_out = true;
                            Err(timed_out(in_test, msg))
                        }
                    },
                    None => run.await,
                };
                self.block_deadline = None;
                let ran_out = std::mem::take(&mut self.timed_out);
                match r {
                    Err(Stop(o)) if skip_on_timeout && ran_out => {
                        let why = o.error.unwrap_or_default();
                        self.event(
                            "timeout-skip",
                            &format!("{why}; `skip: true`: the job goes on with the next action"),
                        );
                        break;
                    }
                    Err(Stop(o)) if attempt < attempts && retryable(&o) => {
                        attempt += 1;
                        let why = o.error.unwrap_or_default();
                        self.event(
                            "retry",
                            &format!("{kind} attempt {attempt} of {attempts} after: {why}"),
                        );
                    }
                    r => {
                        r?;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    async fn action(&mut self, i: usize, action: &Action) -> Result<(), Stop> {
        match action {
            Action::Deploy(d) => self.deploy(i, d).await,
            Action::Boot(b) => self.boot(i, b).await,
            Action::Test(t) => self.test(i, t).await,
        }
    }

    fn timeout(&self, name: &str, block: Option<Duration>) -> Duration {
        let default = self
            .ctx
            .dt
            .timeouts
            .get(name)
            .unwrap_or(Duration::from_secs(60));
        self.ctx.def.timeout_for(name, block, default)
    }

    async fn bounded<T>(
        &mut self,
        name: &str,
        limit: Duration,
        f: impl AsyncFnOnce(&mut Self) -> Result<T, Stop>,
    ) -> Result<T, Stop> {
        let deadline = tokio::time::Instant::now() + limit;
        // The action's name picks its `timeouts.connections` entry.
        let outer = self.current_action.replace(name.to_owned());
        let result = tokio::time::timeout_at(deadline, f(self)).await;
        self.current_action = outer;
        match result {
            Ok(r) => r,
            Err(_) => {
                // A late wake-up can find the block's deadline passed too;
                // the earlier deadline is the one that ran out.
                let msg = match &self.block_deadline {
                    Some((block, msg)) if *block <= deadline => msg.clone(),
                    _ => format!("{name} timed out after {} s", limit.as_secs()),
                };
                let msg = self.with_step(msg);
                self.event("timeout", &msg);
                self.timed_out = true;
                Err(timed_out(self.collecting, msg))
            }
        }
    }

    /// A timeout's message, naming the shell step that did not return.
    fn with_step(&self, msg: String) -> String {
        match &self.current_step {
            Some(step) => format!("{msg}: the step `{step}` did not return"),
            None => msg,
        }
    }

    async fn deploy(&mut self, index: usize, d: &Deploy) -> Result<(), Stop> {
        self.phase(Phase::Deploying);
        let limit = self.timeout("tftp-deploy", d.timeout);
        let dir = self.ctx.tftp.root.join(self.ctx.job_id.to_string());
        let job = self.ctx.job_id;
        use crate::deploy::Placement;
        // Each artifact, where it goes and under which name (relative to
        // the job's directory; by default a name of the deploy's own).
        let mut items: Vec<(String, crate::job::Artifact, Placement, Option<String>)> = Vec::new();
        // What the TFTP server serves is only read: it may share the cache's
        // blob. A QEMU image may be written by the board: it is a copy, and
        // so is a ramdisk that labd adds modules to (a new file, renamed).
        for (kind, a) in [
            ("kernel", &d.kernel),
            ("ramdisk", &d.ramdisk),
            ("dtb", &d.dtb),
            ("modules", &d.modules),
        ] {
            if let Some(a) = a {
                items.push((kind.to_owned(), a.clone(), Placement::Link, None));
            }
        }
        for im in &d.images {
            items.push((im.name.clone(), im.artifact.clone(), Placement::Copy, None));
        }
        for dl in &d.downloads {
            let file = crate::job::download_file_name(&dl.artifact);
            items.push((
                dl.name.clone(),
                dl.artifact.clone(),
                Placement::Link,
                Some(format!("downloads/{file}")),
            ));
        }
        let max = self.ctx.tftp.max_artifact_bytes;
        self.kernel_type = d.kernel_type;
        self.ramdisk_options = d.ramdisk_options;
        let deployed = self
            .bounded("tftp-deploy", limit, async move |r: &mut Self| {
                tokio::fs::create_dir_all(&dir)
                    .await
                    .map_err(|e| infra(format!("creating {}: {e}", dir.display())))?;
                let mut out = BTreeMap::new();
                for (kind, art, placement, named) in items {
                    let url = art.url.clone();
                    let path = url.split(['?', '#']).next().unwrap_or(&url);
                    let base = path
                        .rsplit('/')
                        .next()
                        .filter(|b| !b.is_empty())
                        .map(|b| {
                            art.compression
                                .suffix()
                                .and_then(|x| b.strip_suffix(x))
                                .unwrap_or(b)
                        })
                        .unwrap_or(&kind)
                        .to_owned();
                    // Keep names distinct even if two artifacts share a file name.
                    let name = named.unwrap_or_else(|| format!("{index}-{kind}-{base}"));
                    let dst = dir.join(&name);
                    if let Some(parent) = dst.parent() {
                        tokio::fs::create_dir_all(parent)
                            .await
                            .map_err(|e| infra(format!("creating {}: {e}", parent.display())))?;
                    }
                    if let Some(file) = url.strip_prefix("downloads://") {
                        let f = r.take_download(&dir, file, &dst, placement).await?;
                        r.event(
                            "deploy",
                            &format!(
                                "{kind}: {url} ({f} bytes, an earlier download) as {job}/{name}"
                            ),
                        );
                        out.insert(kind, format!("{job}/{name}"));
                        continue;
                    }
                    r.event("deploy", &format!("{kind}: fetching {url}"));
                    let (u, sha, comp) = (url.clone(), art.sha256.clone(), art.compression);
                    let store = r.ctx.store.clone();
                    let cache = r.ctx.tftp.cache.clone();
                    let local = crate::deploy::LocalRights {
                        who: r.ctx.reader.clone(),
                        roots: r.ctx.tftp.file_roots.clone(),
                    };
                    let what = kind.clone();
                    let fetched = tokio::task::spawn_blocking(move || {
                        let mut progress = |read: u64, total: Option<u64>| {
                            let mb = |b: u64| b as f64 / 1e6;
                            let msg = match total {
                                Some(t) if t > 0 => format!(
                                    "{what}: {:.1} of {:.1} MB ({}%)",
                                    mb(read),
                                    mb(t),
                                    read * 100 / t
                                ),
                                _ => format!("{what}: {:.1} MB", mb(read)),
                            };
                            store.record_event(job, JobEvent::now("deploy-progress", &msg));
                        };
                        crate::deploy::fetch(
                            &u,
                            sha.as_deref(),
                            comp,
                            &dst,
                            max,
                            limit,
                            &mut progress,
                            cache.as_deref(),
                            placement,
                            &local,
                        )
                    })
                    .await
                    .map_err(|e| infra(format!("deploy {kind}: {e}")))?;
                    match fetched {
                        Ok(f) => r.event(
                            "deploy",
                            &format!(
                                "{kind}: {url} ({} bytes{}, {} for the board) as {job}/{name}",
                                f.read,
                                if f.cached {
                                    ", from the artifact cache"
                                } else {
                                    ""
                                },
                                f.written
                            ),
                        ),
                        Err(e) => {
                            return Err(Stop(JobOutcome::incomplete(
                                ErrorClass::Job,
                                format!("deploy {kind}: {e}"),
                            )))
                        }
                    }
                    out.insert(kind, format!("{job}/{name}"));
                }
                Ok(out)
            })
            .await?;
        self.deployed = deployed;
        if let Some(n) = &d.nfsrootfs {
            self.unpack_nfsroot(n, limit).await?;
        }
        self.prepare_ramdisk(d).await?;
        self.deliver_overlay().await?;
        self.finish_ramdisk().await?;
        if d.nfsrootfs.is_some() {
            self.export_nfsroot().await?;
        }
        let root = self.ctx.tftp.root.clone();
        // Every image's placeholder, with the file it became: an image_arg
        // may name another image of the deploy (a drive and its device).
        let files: Vec<(String, std::path::PathBuf)> = d
            .images
            .iter()
            .filter_map(|im| {
                let p = self.deployed.get(&im.name)?;
                Some((format!("{{{}}}", im.name), root.join(p)))
            })
            .collect();
        for im in d.images.iter().filter(|im| !im.args.is_empty()) {
            let Some((_, path)) = files.iter().find(|(p, _)| *p == format!("{{{}}}", im.name))
            else {
                continue;
            };
            if let Some(why) = image_refers_outside(path).await {
                return Err(Stop(JobOutcome::incomplete(
                    ErrorClass::Job,
                    format!(
                        "deploy {}: {why}: it would give QEMU other files of the host",
                        im.name
                    ),
                )));
            }
        }
        self.image_args = d
            .images
            .iter()
            .flat_map(|im| im.args.iter())
            .map(|a| {
                files.iter().fold(a.clone(), |a, (p, f)| {
                    a.replace(p, &f.display().to_string())
                })
            })
            .collect();
        Ok(())
    }

    /// Sends text to the console, honouring the device's character delay.
    async fn send(&mut self, text: &str) {
        let delay = self
            .ctx
            .dt
            .bootloader
            .as_ref()
            .map_or(0, |b| b.boot_character_delay_ms);
        if delay == 0 {
            let _ = self.ctx.output.send(text.as_bytes().to_vec());
        } else {
            for b in text.bytes() {
                let _ = self.ctx.output.send(vec![b]);
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
        }
    }

    /// Waits until one of `wanted` matches; a match of `errors` stops the job.
    /// Both are regexes.
    async fn expect(&mut self, wanted: &[String], errors: &[String]) -> Result<usize, Stop> {
        Ok(self.expect_match(wanted, errors).await?.0)
    }

    /// [`Runner::expect`], also giving the text that matched.
    async fn expect_match(
        &mut self,
        wanted: &[String],
        errors: &[String],
    ) -> Result<(usize, String), Stop> {
        let pats: Vec<&str> = wanted.iter().chain(errors).map(String::as_str).collect();
        let mut m = Matcher::new(&pats).map_err(|e| {
            Stop(JobOutcome::incomplete(
                ErrorClass::Configuration,
                e.to_string(),
            ))
        })?;
        // LAVA's connection timeout bounds each wait for a pattern, inside
        // the action's own timeout; `timeouts.connections` sets it per
        // action. A test run may rightly stay silent for long, so it is
        // bounded by its action timeout only, unless the job gives its
        // action (`lava-test-shell`) a connection timeout of its own.
        let timeouts = &self.ctx.def.timeouts;
        let own = self
            .current_action
            .as_ref()
            .and_then(|a| timeouts.connections.get(a))
            .copied();
        let deadline = own
            .or(timeouts.connection.filter(|_| !self.collecting))
            .map(|c| (c, tokio::time::Instant::now() + c));
        let mut chunk = std::mem::take(&mut self.rest);
        loop {
            let hit = m.feed(&chunk);
            if self.feeding {
                // Up to the match's end: what follows it is the next
                // wait's, and fed there if that wait feeds.
                let rest = m.rest_len();
                let upto = if hit.is_some() {
                    chunk.len().saturating_sub(rest)
                } else {
                    chunk.len()
                };
                let sigs = self.signals.feed(&chunk[..upto]);
                self.collected.extend(sigs);
            }
            if let Some(hit) = hit {
                self.rest = m.take_rest();
                if hit.index >= wanted.len() {
                    let msg = format!("error on the console: {}", hit.text);
                    self.event("error", &msg);
                    return Err(infra(msg));
                }
                return Ok((hit.index, hit.text));
            }
            let next = match deadline {
                Some((limit, at)) => match tokio::time::timeout_at(at, self.ctx.input.next()).await
                {
                    Ok(c) => c,
                    Err(_) => {
                        let msg = format!(
                            "connection timed out after {} s waiting for {:?}",
                            limit.as_secs(),
                            wanted
                        );
                        self.event("timeout", &msg);
                        return Err(infra(msg));
                    }
                },
                None => self.ctx.input.next().await,
            };
            chunk = match next {
                Some(c) => c,
                None => return Err(infra("console closed")),
            };
        }
    }

    /// The device type's bootloader, which a `u-boot` boot needs.
    fn bootloader(&self) -> Result<&crate::device_type::Bootloader, Stop> {
        self.ctx.dt.bootloader.as_ref().ok_or_else(|| {
            Stop(JobOutcome::incomplete(
                ErrorClass::Job,
                format!(
                    "device type {} has no bootloader; it boots with `method: minimal` or `qemu`",
                    self.ctx.dt.name
                ),
            ))
        })
    }

    fn substitute(&self, cmd: &str) -> Result<String, Stop> {
        let cmd = &self.substitute_nfs(cmd)?;
        let get = |k: &str| self.deployed.get(k).cloned().unwrap_or_default();
        let plain = |c: &str| {
            c.replace("{SERVER_IP}", &self.ctx.tftp.server_ip)
                .replace("{TFTP_PORT}", &self.ctx.tftp.port.to_string())
                .replace("{KERNEL}", &get("kernel"))
                .replace("{RAMDISK}", &get("ramdisk"))
                .replace("{DTB}", &get("dtb"))
        };
        let by_type = ["{BOOTX}", "{KERNEL_ADDR}", "{RAMDISK_ADDR}", "{DTB_ADDR}"];
        let Some(kt) = self.kernel_type else {
            // As LAVA: with no `kernel: type`, there are no load addresses
            // and no boot command to fill in.
            if let Some(p) = by_type.iter().find(|p| cmd.contains(**p)) {
                return Err(Stop(JobOutcome::incomplete(
                    ErrorClass::Job,
                    format!(
                        "the boot command `{cmd}` uses {p}, which comes from the deploy's `kernel: type` (image, zimage or uimage); the job gives none"
                    ),
                )));
            }
            return Ok(plain(cmd));
        };
        let bl = self.bootloader()?;
        let addrs = bl.load_addresses.get(kt.as_str()).ok_or_else(|| {
            Stop(JobOutcome::incomplete(
                ErrorClass::Job,
                format!(
                    "device type {} cannot boot a kernel of type {}",
                    self.ctx.dt.name,
                    kt.as_str()
                ),
            ))
        })?;
        let bootx_cmd = bl
            .bootx
            .get(kt.as_str())
            .cloned()
            .unwrap_or_else(|| "booti".into());
        let has_rd = self.deployed.contains_key("ramdisk");
        let has_dtb = self.deployed.contains_key("dtb");
        let rd = if has_rd && self.ramdisk_in_uimage {
            addrs.ramdisk.clone()
        } else if has_rd {
            format!("{}:${{initrd_size}}", addrs.ramdisk)
        } else {
            "-".into()
        };
        let mut bootx = format!("{bootx_cmd} {} {rd}", addrs.kernel);
        if has_dtb || addrs.dtb.starts_with('$') {
            bootx.push(' ');
            bootx.push_str(&addrs.dtb);
        }
        Ok(plain(
            &cmd.replace("{BOOTX}", &bootx)
                .replace("{KERNEL_ADDR}", &addrs.kernel)
                .replace("{RAMDISK_ADDR}", &addrs.ramdisk)
                .replace("{DTB_ADDR}", &addrs.dtb),
        ))
    }

    fn boot_commands(&self, b: &Boot) -> Result<Vec<String>, Stop> {
        let raw = match &b.commands {
            BootCommands::Inline(c) => c.clone(),
            BootCommands::Named(n) => {
                self.bootloader()?.commands.get(n).cloned().ok_or_else(|| {
                    Stop(JobOutcome::incomplete(
                        ErrorClass::Job,
                        format!(
                            "device type {} has no `{n}` boot commands",
                            self.ctx.dt.name
                        ),
                    ))
                })?
            }
        };
        // Refused at submit too; a device type changed by a reload since
        // may still hold one.
        if let Some((i, ph)) = crate::device_type::unfillable(&raw) {
            return Err(Stop(JobOutcome::incomplete(
                ErrorClass::Job,
                format!(
                    "boot command {} (`{}`) uses {ph}, which labd cannot fill",
                    i + 1,
                    raw[i]
                ),
            )));
        }
        // The context's kernel arguments go into a command set's bootargs,
        // as LAVA's base-uboot template puts them; the job's own commands
        // are its own.
        let kernel_args = match &b.commands {
            BootCommands::Named(_) => self
                .ctx
                .def
                .context
                .kernel_args(Some(self.ctx.dt.console_baud)),
            BootCommands::Inline(_) => String::new(),
        };
        let mut out = Vec::new();
        for c in raw {
            let c = crate::job::with_bootargs(&c, &kernel_args);
            // As LAVA does, a command about an artifact the job did not
            // deploy is left out; labd never deploys those of `DROPPED`.
            if (c.contains("{RAMDISK}") && !self.deployed.contains_key("ramdisk"))
                || (c.contains("{DTB}") && !self.deployed.contains_key("dtb"))
                || (c.contains("{KERNEL}") && !self.deployed.contains_key("kernel"))
                || crate::device_type::DROPPED.iter().any(|d| c.contains(d))
            {
                continue;
            }
            out.push(self.substitute(&c)?);
        }
        Ok(out)
    }

    /// Whether this boot ends as the board boots, with no login or shell:
    /// a boot with no prompts before a `monitors` test, whose results the
    /// board prints as it boots (LAVA waits for a shell only when asked).
    fn boots_without_shell(&self, index: usize, b: &Boot) -> bool {
        b.prompts.is_empty()
            && b.auto_login.is_none()
            && matches!(
                self.ctx.def.actions.get(index + 1),
                Some(Action::Test(t)) if !t.monitors.is_empty()
            )
    }

    /// The end of a boot that stops short of a shell (at the bootloader's
    /// prompt, or as the board boots): the boot slot goes, and only an
    /// interactive or monitors test may follow.
    fn booted_without_shell(&mut self) {
        self.boot_slot = None;
        self.shell_prompt.clear();
        self.booted = true;
    }

    async fn boot(&mut self, index: usize, b: &Boot) -> Result<(), Stop> {
        use crate::job::BootMethod;
        self.booted = false;
        self.shell_prompt.clear();
        let to_bootloader = b.method == BootMethod::Bootloader;
        let no_shell = self.boots_without_shell(index, b);
        let commands = match b.method {
            BootMethod::UBoot | BootMethod::Bootloader => self.boot_commands(b)?,
            _ => Vec::new(),
        };
        let direct = match b.method {
            crate::job::BootMethod::Qemu => Some(self.direct_boot()?),
            _ => None,
        };
        let uses_relay_boot = direct.is_some();
        if let Err(e) = self.ctx.power.set_direct_boot(direct) {
            if let (true, crate::power::PowerError::Failed { message, .. }) = (uses_relay_boot, &e)
            {
                // The relay refused the job's QEMU (its `context.arch`).
                return Err(Stop(JobOutcome::incomplete(
                    ErrorClass::Job,
                    format!("boot method qemu: {message}"),
                )));
            }
            if uses_relay_boot {
                return Err(Stop(JobOutcome::incomplete(
                    ErrorClass::Configuration,
                    format!("boot method qemu: {e}; the board needs a `qemu` relay"),
                )));
            }
        }
        self.helpers_sent = false;
        self.collecting = false;
        if b.method == BootMethod::Ssh {
            return self.ssh_boot(b).await;
        }
        if !b.reset {
            // A board already running (booted by hand in an interactive
            // test): no power cycle, no boot slot; what it prints next is
            // its kernel's.
            self.event("boot", "reset: false: the board is not power-cycled");
            return self.login(b).await;
        }
        // Waiting for a slot is not part of the power-on timeout; the job's
        // own timeout still bounds it.
        let relay = self.ctx.relay_device.clone();
        let slot = match self.ctx.boot_slots.try_acquire(relay.as_deref()) {
            Some(p) => p,
            None => {
                self.phase(Phase::WaitingToBoot);
                let p = self.ctx.boot_slots.acquire(relay.as_deref()).await;
                p
            }
        };
        self.boot_slot = Some(slot);
        self.phase(Phase::PoweringOn);
        let limit = self.timeout("power-on", None);
        let power = self.ctx.power.clone();
        let mut up = self.ctx.console_up.clone();
        self.bounded("power-on", limit, async move |r: &mut Self| {
            // Power only with the console attached, so that no byte of the
            // boot is lost (a console server still starting, a USB adapter
            // being re-plugged).
            if !*up.borrow() {
                r.event("console", "waiting for the console before powering on");
                if up.wait_for(|c| *c).await.is_err() {
                    return Err(infra("console gone"));
                }
            }
            power
                .switch(PowerAction::Reset)
                .await
                .map_err(|e| infra(e.to_string()))
        })
        .await?;
        if !matches!(b.method, BootMethod::UBoot | BootMethod::Bootloader) {
            if no_shell {
                self.phase(Phase::Kernel);
                self.booted_without_shell();
                return Ok(());
            }
            // The board (or its relay) boots the kernel; what follows is the kernel's.
            return self.login(b).await;
        }
        let bl = self.bootloader()?.clone();
        // U-Boot's error messages are plain text (LAVA's lists hold `?`, `.`, `(`);
        // the kernel's are regexes, validated with the device type.
        let errors: Vec<String> = bl.error_messages.iter().map(|e| regex::escape(e)).collect();
        self.phase(Phase::Bootloader);
        let limit = self.timeout("bootloader-interrupt", None);
        let start_message = self.ctx.dt.kernel.start_message.clone();
        self.bounded("bootloader-interrupt", limit, async |r: &mut Self| {
            if !bl.needs_interrupt {
                r.expect(std::slice::from_ref(&bl.prompt), &errors).await?;
                return Ok(());
            }
            r.expect(std::slice::from_ref(&bl.interrupt_prompt), &errors)
                .await?;
            // As lava-dispatcher interrupts: the control characters if the
            // device has any, else the character and (by default) a newline.
            if bl.interrupt_ctrl_list.is_empty() {
                r.send(&bl.interrupt_char).await;
                if bl.interrupt_newline {
                    r.send("\n").await;
                }
            } else {
                for c in &bl.interrupt_ctrl_list {
                    // Invariant: the device type's validation checked each entry.
                    if let Some(b) = crate::device_type::control_byte(c) {
                        r.send(&char::from(b).to_string()).await;
                    }
                }
            }
            // A kernel starting instead of the prompt is U-Boot booting by
            // itself: the key came too late for its countdown. Waiting on
            // would only end in this action's timeout, long after.
            let seen = [bl.prompt.clone(), start_message.clone()];
            if r.expect(&seen, &errors).await? == 1 {
                let msg = "U-Boot booted by itself: the interrupt did not reach it within its autoboot countdown (bootdelay)";
                r.event("error", msg);
                return Err(infra(msg));
            }
            Ok(())
        })
        .await?;
        self.phase(Phase::BootloaderCommands);
        let limit = self.timeout("bootloader-commands", b.timeout);
        self.bounded("bootloader-commands", limit, async |r: &mut Self| {
            let n = commands.len();
            for (i, c) in commands.iter().enumerate() {
                r.event("bootloader-command", c);
                r.send(c).await;
                r.send("\n").await;
                // The prompt counts only after the command's own echo: a
                // prompt already on its way (the interrupt's newline prints
                // one more) would otherwise pace every later command one
                // early, typing into a running `tftp`, which eats the keys.
                r.expect(&[regex::escape(c)], &errors).await?;
                if i + 1 < n || to_bootloader {
                    r.expect(std::slice::from_ref(&bl.prompt), &errors).await?;
                }
            }
            if !to_bootloader {
                // The last command boots: wait for the kernel.
                r.expect(std::slice::from_ref(&start_message), &errors)
                    .await?;
            }
            Ok(())
        })
        .await?;
        if to_bootloader || no_shell {
            self.booted_without_shell();
            return Ok(());
        }
        self.login(b).await
    }

    /// What the relay boots for `method: qemu`: the deployed files, and the
    /// device type's command line.
    fn direct_boot(&self) -> Result<crate::power::DirectBoot, Stop> {
        let spec = self.ctx.dt.direct_boot.as_ref().ok_or_else(|| {
            Stop(JobOutcome::incomplete(
                ErrorClass::Job,
                format!(
                    "device type {} cannot boot a kernel directly (no `direct_boot`); use `method: u-boot`",
                    self.ctx.dt.name
                ),
            ))
        })?;
        let path = |k: &str| self.deployed.get(k).map(|p| self.ctx.tftp.root.join(p));
        // A tmpfs deploy's images, or a tftp deploy's kernel, ramdisk and DTB.
        let tmpfs = !self.image_args.is_empty();
        let file = |k: &str| path(k).filter(|_| !tmpfs);
        let kernel = file("kernel");
        if kernel.is_none() && !tmpfs {
            return Err(Stop(JobOutcome::incomplete(
                ErrorClass::Job,
                "boot method qemu needs a deploy action with a kernel or images before it",
            )));
        }
        let context = &self.ctx.def.context;
        let append = [spec.append.clone(), context.kernel_args(None)]
            .into_iter()
            .filter(|a| !a.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        Ok(crate::power::DirectBoot {
            kernel,
            initrd: file("ramdisk"),
            dtb: file("dtb"),
            append: self.nfs_append(&append)?,
            extra: self.image_args.clone(),
            options: context.qemu_options(),
            arch: context.arch.clone(),
        })
    }

    /// From the kernel to a shell: the login, if any, and the prompt.
    async fn login(&mut self, b: &Boot) -> Result<(), Stop> {
        self.phase(Phase::Kernel);
        let limit = self.timeout("auto-login-action", b.timeout);
        let kernel_errors = self.ctx.dt.kernel.error_messages.clone();
        let login = b.auto_login.clone().or_else(|| {
            self.ctx.dt.login.clone().map(|l| crate::job::AutoLogin {
                login_prompt: l.prompt,
                username: l.username,
                password_prompt: l.password_prompt,
                password: l.password,
            })
        });
        let prompts = if b.prompts.is_empty() {
            vec![self.ctx.dt.shell_prompt.clone()]
        } else {
            b.prompts.clone()
        };
        self.shell_prompt = prompts.clone();
        self.bounded("auto-login-action", limit, async |r: &mut Self| {
            if let Some(l) = &login {
                r.expect(std::slice::from_ref(&l.login_prompt), &kernel_errors)
                    .await?;
                r.phase(Phase::Login);
                r.send(&l.username).await;
                r.send("\n").await;
                if let (Some(pp), Some(pw)) = (&l.password_prompt, &l.password) {
                    r.expect(std::slice::from_ref(pp), &kernel_errors).await?;
                    r.send(pw).await;
                    r.send("\n").await;
                }
            }
            r.expect(&prompts, &kernel_errors).await?;
            Ok(())
        })
        .await?;
        self.boot_slot = None;
        self.booted = true;
        self.phase(Phase::Shell);
        if let Some(t) = &b.transfer_overlay {
            self.transfer_overlay(t).await?;
        }
        Ok(())
    }

    /// Runs one shell line and waits for it to end.
    ///
    /// A prompt cannot say when a line ended: the echo of the line itself,
    /// or the line's output, may hold it (`# ` is in every comment). So the
    /// line goes to the shell as
    /// `printf '<LABD_%s T>\n' START; eval 'LINE'; printf '<LABD_%s T %s>\n' END "$?"`
    /// with T this run's token and the step's number: the markers are
    /// printed by the shell, and the echo, which holds `%s` where the
    /// printed text holds `START`/`END`, can contain neither. Signals are
    /// taken only from the output between the two markers (and from what
    /// the board printed before the line was typed), never from the echo.
    /// `eval` runs the line in the shell itself (`cd`, `export` and
    /// functions last), and a comment or a trailing `&` in it cannot
    /// swallow the end marker.
    async fn shell_step(&mut self, line: &str) -> Result<(), Stop> {
        self.steps += 1;
        let tok = format!("{}.{}", self.step_token, self.steps);
        if self.collecting {
            // Printed before the line was typed: the board's own output (a
            // background process's), not an echo.
            let before = std::mem::take(&mut self.rest);
            let sigs = self.signals.feed(&before);
            self.collected.extend(sigs);
            self.rest = before;
        }
        let quoted = line.replace('\'', r"'\''");
        let typed = format!(
            "printf '<LABD_%s {tok}>\\n' START; eval '{quoted}'; printf '<LABD_%s {tok} %s>\\n' END \"$?\""
        );
        self.current_step = Some(line.to_owned());
        self.send(&typed).await;
        self.send("\n").await;
        self.feeding = false;
        self.expect(&[regex::escape(&format!("<LABD_START {tok}>"))], &[])
            .await?;
        self.feeding = self.collecting;
        // Plain text, found with memmem and never compiled (each step's
        // token is new); the exit status after it is left to the console.
        let end_marker = regex::escape(&format!("<LABD_END {tok} "));
        let end = self.expect(&[end_marker], &[]).await;
        self.feeding = false;
        end?;
        if self.collecting {
            let sigs = self.signals.end();
            self.collected.extend(sigs);
        }
        self.current_step = None;
        Ok(())
    }

    /// Runs one shell line, as [`Runner::shell_step`], and gives its exit
    /// status: the number the end marker carries after its token.
    async fn shell_step_status(&mut self, line: &str) -> Result<i32, Stop> {
        self.shell_step(line).await?;
        let (_, text) = self.expect_match(&["[0-9]+>".to_owned()], &[]).await?;
        Ok(text.trim_end_matches('>').parse().unwrap_or(-1))
    }

    async fn test(&mut self, index: usize, t: &Test) -> Result<(), Stop> {
        if !t.interactive.is_empty() {
            return self.interactive(index, t).await;
        }
        if !t.monitors.is_empty() {
            return self.monitors(t).await;
        }
        if self.shell_prompt.is_empty() {
            let msg = if self.booted {
                "a test action with definitions needs a boot that reaches a shell (this one stops at the bootloader or before a login)"
            } else {
                "a test action needs a boot action before it"
            };
            return Err(Stop(JobOutcome::incomplete(ErrorClass::Job, msg)));
        }
        if self.overlay_runs.contains_key(&index) || overlay::uses_overlay(t) {
            return self.test_from_overlay(index, t).await;
        }
        self.phase(Phase::Testing);
        let limit = self.timeout("lava-test-shell", t.timeout);
        let defs = t.definitions.clone();
        let first = overlay::definitions_before(&self.ctx.def.actions, index);
        self.bounded("lava-test-shell", limit, async |r: &mut Self| {
            r.collecting = true;
            if !r.helpers_sent {
                for h in signals::SHELL_HELPERS {
                    r.shell_step(h).await?;
                }
                r.write_secrets().await?;
                r.helpers_sent = true;
            }
            for (i, d) in defs.iter().enumerate() {
                // As LAVA's, definitions are numbered across the job.
                let n = first + i;
                let suite = format!("{n}_{}", d.name);
                let uuid = format!("{}_{n}", r.ctx.job_id);
                r.event("test-definition", &suite);
                if d.signal_kmsg {
                    r.event(
                        "test-warning",
                        &format!("{suite}: `lava-signal: kmsg` applies to definitions run from the overlay; on the shell, signals are read from its output"),
                    );
                }
                r.expected.insert(suite.clone(), d.expected.clone());
                r.shell_step(&signals::run_marker("STARTRUN", &suite, &uuid))
                    .await?;
                for (k, v) in &d.parameters {
                    let quoted = v.replace('\'', r"'\''");
                    r.shell_step(&format!("export {k}='{quoted}'")).await?;
                }
                for step in &d.steps {
                    r.shell_step(step).await?;
                    r.take_results(&suite).await?;
                }
                r.shell_step(&signals::run_marker("ENDRUN", &suite, &uuid))
                    .await?;
                r.take_results(&suite).await?;
                // As LAVA: an expected case never reported is a fail.
                let missing = r.missing_expected(&suite);
                r.record(missing).await?;
                // As LAVA's test shell: a definition that did not reach
                // its ENDRUN (a step ended the shell, the signal was
                // garbled) did not run to its end, whatever it reported.
                if !r.ended_runs.contains(&suite) {
                    let msg = format!("test definition {suite} did not reach its ENDRUN");
                    r.event("error", &msg);
                    return Err(Stop(JobOutcome::incomplete(ErrorClass::Test, msg)));
                }
            }
            Ok(())
        })
        .await
    }

    /// LAVA's `/lava-<job>/secrets` on the typed path, where no overlay
    /// brings it: written by the shell (mode 0600), so that a definition
    /// can source it as under LAVA. The echo of the lines is masked in the
    /// log like every other appearance of the values.
    async fn write_secrets(&mut self) -> Result<(), Stop> {
        if self.ctx.def.secrets.is_empty() {
            return Ok(());
        }
        let text = crate::overlay::secrets_file(&self.ctx.def.secrets)
            .map_err(|e| Stop(JobOutcome::incomplete(ErrorClass::Job, e.to_string())))?;
        let dir = format!("/lava-{}", self.ctx.job_id);
        self.shell_step(&format!(
            "mkdir -p {dir} && (umask 077 && : > {dir}/secrets)"
        ))
        .await?;
        for line in text.lines() {
            let quoted = line.replace('\'', r"'\''");
            self.shell_step(&format!("printf '%s\\n' '{quoted}' >> {dir}/secrets"))
                .await?;
        }
        Ok(())
    }

    /// A definition's `expected` cases it never reported, as fails.
    fn missing_expected(&self, suite: &str) -> Vec<TestCase> {
        let reported: BTreeMap<String, &'static str> = self
            .reported
            .iter()
            .filter(|((s, _), _)| s == suite)
            .map(|((_, c), v)| (c.clone(), *v))
            .collect();
        let expected = self.expected.get(suite).cloned().flatten();
        interactive::missing_expected(suite, expected.as_deref(), &reported)
    }

    /// The suite a case goes to: the last STARTRUN's when running from the
    /// overlay, else the definition's own.
    fn suite_of(&self, suite: &str) -> String {
        match (&self.run_suite, self.overlay_run) {
            (Some(s), true) => s.clone(),
            _ => suite.to_owned(),
        }
    }

    /// Stores the test cases signalled so far; a TESTRAISE ends the job.
    async fn take_results(&mut self, suite: &str) -> Result<(), Stop> {
        let mut cases = Vec::new();
        let mut raise = None;
        for s in std::mem::take(&mut self.collected) {
            match s {
                Signal::TestCase {
                    id,
                    result,
                    measurement,
                    units,
                } => cases.push(TestCase {
                    suite: self.suite_of(suite),
                    set: self.current_set.clone(),
                    name: id,
                    result,
                    measurement,
                    units,
                    reference: None,
                }),
                Signal::TestSetStart { name } => self.current_set = Some(name),
                Signal::TestSetStop => self.current_set = None,
                Signal::TestRaise { reason } => raise = Some(reason),
                Signal::TestReference {
                    id,
                    result,
                    reference,
                } => cases.push(TestCase {
                    suite: self.suite_of(suite),
                    set: self.current_set.clone(),
                    name: id,
                    result,
                    measurement: None,
                    units: None,
                    reference: Some(reference),
                }),
                Signal::StartRun { name } => {
                    self.event("startrun", &name);
                    if self.overlay_run {
                        self.run_suite = Some(name);
                    }
                }
                Signal::EndRun { name } => {
                    self.event("endrun", &name);
                    self.ended_runs.push(name);
                }
                // Kept in the job's events, as LAVA logs the signals it
                // does not act on.
                Signal::Other { kind, body } => self.event("signal", &format!("{kind} {body}")),
                // Kept in the log as printed; the event says it was not taken.
                Signal::Malformed { text } => self.event(
                    "signal-malformed",
                    &format!("not a valid LAVA signal, ignored: {text}"),
                ),
            }
        }
        // As LAVA: with `expected`, a case not listed cannot pass.
        for c in &mut cases {
            let expected = self.expected.get(&c.suite).cloned().flatten();
            let r = interactive::unexpected(
                expected.as_deref(),
                &c.name,
                interactive::result_str(&c.result),
            );
            if r == "fail" {
                c.result = "fail".into();
            }
            self.reported.insert((c.suite.clone(), c.name.clone()), r);
        }
        self.record(cases).await?;
        if let Some(reason) = raise {
            self.event("testraise", &reason);
            return Err(Stop(JobOutcome::incomplete(
                ErrorClass::Test,
                format!("test raised: {reason}"),
            )));
        }
        Ok(())
    }
}

/// What a downloaded image's header says of other host files (a qcow2
/// backing file, a vmdk's extents), if anything: QEMU would open them.
async fn image_refers_outside(path: &std::path::Path) -> Option<&'static str> {
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::open(path).await.ok()?;
    let mut head = Vec::with_capacity(512);
    (&mut f).take(512).read_to_end(&mut head).await.ok()?;
    crate::qemu_args::image_header_refers_outside(&head)
}
