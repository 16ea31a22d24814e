//! labd as a worker of a lava-server (2023.01's worker protocol, `[lava]`):
//! it asks the server for work, runs the server's jobs on the boards that
//! are its devices, and sends back their logs, test results and ends.
//!
//! The protocol is plain HTTP (`lava_scheduler_app/views.py`'s
//! `internal_v1_*` on the server, `lava_dispatcher/worker.py` and
//! `lava_common/log.py` on a worker):
//! - a ping, `GET /scheduler/internal/v1/workers/<name>/?version=<v>` with
//!   the worker's token, answers the jobs to `start`, the `running` ones
//!   and those to `cancel`, each with its job token. A version the server
//!   is not gets HTTP 409 and the worker goes Offline there: labd says so
//!   in its log and keeps pinging, slowly.
//! - a job's definition and its device's rendered configuration come from
//!   `GET /scheduler/internal/v1/jobs/<id>/`; `POST` of `state=RUNNING`,
//!   and of `state=FINISHED` with `result`, `error_type`, `errors` and
//!   `description`, report its course.
//! - its log goes to `POST .../jobs/<id>/logs/` as YAML lines (`lines`),
//!   numbered from the batch's first (`index`): the server skips lines it
//!   already has, so a batch whose answer was lost is sent again as it was.
//!   `lvl: results` lines become the server's test cases.
//!
//! A job the server starts is submitted to the lab like any other
//! (`LabRequest::SubmitLava`: the lab picks its board, stores it with the
//! server's job id, queues and runs it), so it is durable and runs as a
//! local job would. The worker follows it in the store: the console as
//! `target` lines, labd's events as `info` lines, each test case as a
//! `results` line, and LAVA's `lava`/`job` result at the end. It reports
//! FINISHED as soon as the store says the job finished, not at the next
//! ping. A cancel from a ping goes to the lab's own cancel.
//!
//! A restart: labd's start-up reconcile ends every job that was not
//! finished, LAVA's too. The server still lists such a job as running; the
//! worker finds labd's job by the server's id (`StoreReader::job_for_lava`)
//! and reports it FINISHED with its end, Incomplete (Infrastructure),
//! after the rest of its log: each batch the server takes is recorded in
//! the store ([`LavaSent`]: its index there and how far into the job's
//! events, console and results it goes; a job starts at the empty
//! position, stored before its first line), and the restarted worker
//! sends from there. A job with no position was taken by a labd from
//! before positions were kept (an upgrade): only its end is sent, since
//! its lines again would repeat its test cases on the server.
//!
//! lava-publisher's websocket (`ws_url`, `<url>/ws/` by default) says
//! when the server schedules or cancels a job of this worker: the worker
//! pings at once then, as lava-worker does, and also on each
//! (re)connection, since events are lost while away. While the events are
//! heard it pings every 20 s besides (lava-worker's default), which keeps
//! the worker Online; without them every `ping_interval_secs` (5 s by
//! default), the longest a new job then waits to start.
//!
//! The server down or slow: a ping that fails is retried with backoff
//! (doubling from the interval to at most 30 s, or the interval when that
//! is longer); a job's log stays in the store, where the worker reads it
//! from, and goes out when the server answers again; a job's end waits
//! for the server as long as labd runs, and the job on its board never
//! stops for it. An answer that cannot change by trying again (HTTP 4xx:
//! the job's token refused, the job unknown) ends the reporting of that
//! job, said in labd's log.
//!
//! Invariants:
//! - Every HTTP call is blocking (ureq) and runs on tokio's blocking pool;
//!   nothing here blocks the actors' thread.
//! - No token, the worker's or a job's, is ever logged or put in an error:
//!   [`Token`]'s `Debug` and `Display` hide it.
//! - A job's log lines are sent in order, each exactly once as far as the
//!   server's line count goes: a batch is resent only with its own index.
//! - The worker writes nothing to the store but how much of each job's
//!   log its server took (`Store::set_lava_sent`); the lab stores the
//!   server's jobs.

use crate::config::LavaWorkerConfig;
use crate::error::{ApiError, ErrorCode};
use crate::lab::{Caller, LabActor, LabRequest};
use crate::model::{now_ms, ErrorClass, JobHealth, JobId, JobRecord, JobState, LavaSent, TestCase};
use crate::store::{Change, Store, StoreReader};
use actix::Addr;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch, Notify};

/// Why a call to the server failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("lava-server {what}: {source}")]
    Http {
        what: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("lava-server answered HTTP {status} to {what}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("lava-server refused this worker's version `{ours}` ({body}); the server shows the worker Offline until a ping with its own version: set [lava] version to the server's")]
    VersionMismatch { ours: String, body: String },
    #[error("lava-server's answer to {what} is not 2023.01's: {why}")]
    Protocol { what: String, why: String },
    #[error("token file {path}: {source}")]
    TokenFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP call's thread failed: {0}")]
    Thread(#[from] tokio::task::JoinError),
}

impl WorkerError {
    /// Whether asking again cannot help: the server understood the call
    /// and refused it (HTTP 4xx but a timeout or too many requests).
    fn is_final(&self) -> bool {
        matches!(self, WorkerError::Status { status, .. } if (400..500).contains(status) && *status != 408 && *status != 429)
    }
}

/// A token, the worker's or a job's: shown nowhere.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token([hidden])")
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[hidden]")
    }
}

/// A job in a ping's answer.
#[derive(Debug, Clone, Deserialize)]
struct JobRef {
    id: u64,
    token: Token,
}

/// A ping's answer.
#[derive(Debug, Deserialize)]
struct PingReply {
    #[serde(default)]
    start: Vec<JobRef>,
    #[serde(default)]
    running: Vec<JobRef>,
    #[serde(default)]
    cancel: Vec<JobRef>,
}

/// What the server sends for a job to start (YAML texts).
#[derive(Debug, Deserialize)]
struct JobStart {
    definition: String,
    /// None when the server could not render the device's dictionary.
    device: Option<String>,
}

/// How a job ended, as FINISHED says it.
#[derive(Debug, Clone, PartialEq)]
struct Finished {
    /// `pass` or `fail`.
    result: &'static str,
    /// LAVA's error type (`Infrastructure`, `Job`, ...), empty for a pass.
    error_type: String,
    errors: String,
    description: String,
}

/// The server's worker API, called blocking (on the blocking pool).
#[derive(Clone)]
struct Server {
    agent: ureq::Agent,
    base: String,
    worker: String,
    version: String,
}

impl Server {
    fn new(cfg: &LavaWorkerConfig) -> Server {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            // A log batch can take gunicorn a while; a call that hangs
            // longer is retried.
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .user_agent(format!(
                "labd {} (lava {})",
                env!("CARGO_PKG_VERSION"),
                cfg.version
            ))
            .build()
            .into();
        Server {
            agent,
            base: format!("{}/scheduler/internal/v1", cfg.url.trim_end_matches('/')),
            worker: cfg.worker.clone(),
            version: cfg.version.clone(),
        }
    }

    /// The answer's body, or the error its status means.
    fn answer(
        what: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<String, WorkerError> {
        let mut r = r.map_err(|e| WorkerError::Http {
            what: what.into(),
            source: Box::new(e),
        })?;
        let status = r.status().as_u16();
        let body = r
            .body_mut()
            .read_to_string()
            .map_err(|e| WorkerError::Http {
                what: what.into(),
                source: Box::new(e),
            })?;
        if status == 200 {
            Ok(body)
        } else {
            Err(WorkerError::Status {
                what: what.into(),
                status,
                body: shorten(&body),
            })
        }
    }

    fn json<T: serde::de::DeserializeOwned>(what: &str, body: &str) -> Result<T, WorkerError> {
        serde_json::from_str(body).map_err(|e| WorkerError::Protocol {
            what: what.into(),
            why: e.to_string(),
        })
    }

    /// Registers the worker (lava-server allows it from loopback) and
    /// answers its token.
    fn register(&self) -> Result<Token, WorkerError> {
        #[derive(Deserialize)]
        struct Registered {
            token: Token,
        }
        let what = format!("registering worker {}", self.worker);
        let r = self
            .agent
            .post(format!("{}/workers/", self.base))
            .send_form([("name", self.worker.as_str())]);
        let body = Self::answer(&what, r)?;
        Ok(Self::json::<Registered>(&what, &body)?.token)
    }

    fn ping(&self, token: &Token) -> Result<PingReply, WorkerError> {
        let what = format!("the ping of worker {}", self.worker);
        let r = self
            .agent
            .get(format!("{}/workers/{}/", self.base, self.worker))
            .query("version", &self.version)
            .header("LAVA-Token", &token.0)
            .call();
        match Self::answer(&what, r) {
            Err(WorkerError::Status {
                status: 409, body, ..
            }) => Err(WorkerError::VersionMismatch {
                ours: self.version.clone(),
                body,
            }),
            r => Self::json(&what, &r?),
        }
    }

    fn job(&self, id: u64, token: &Token) -> Result<JobStart, WorkerError> {
        let what = format!("job {id}'s definition");
        let r = self
            .agent
            .get(format!("{}/jobs/{id}/", self.base))
            .header("LAVA-Token", &token.0)
            .call();
        Self::json(&what, &Self::answer(&what, r)?)
    }

    fn post_state(&self, id: u64, token: &Token, form: &[(&str, &str)]) -> Result<(), WorkerError> {
        let what = format!("job {id}'s state {}", form.first().map_or("", |f| f.1));
        let r = self
            .agent
            .post(format!("{}/jobs/{id}/", self.base))
            .header("LAVA-Token", &token.0)
            .send_form(form.iter().copied());
        Self::answer(&what, r).map(drop)
    }

    fn running(&self, id: u64, token: &Token) -> Result<(), WorkerError> {
        self.post_state(id, token, &[("state", "RUNNING")])
    }

    fn finished(&self, id: u64, token: &Token, f: &Finished) -> Result<(), WorkerError> {
        self.post_state(
            id,
            token,
            &[
                ("state", "FINISHED"),
                ("result", f.result),
                ("error_type", &f.error_type),
                ("errors", &f.errors),
                ("description", &f.description),
            ],
        )
    }

    /// Sends `lines` (YAML flow mappings), the first of which is line
    /// `index` of the job's log; answers how many the server took.
    fn logs(
        &self,
        id: u64,
        token: &Token,
        lines: &[String],
        index: u64,
    ) -> Result<usize, WorkerError> {
        #[derive(Deserialize)]
        struct Count {
            line_count: usize,
        }
        let what = format!("job {id}'s log lines from {index}");
        let body = format!("- {}", lines.join("\n- "));
        let index = index.to_string();
        let r = self
            .agent
            .post(format!("{}/jobs/{id}/logs/", self.base))
            .header("LAVA-Token", &token.0)
            .send_form([("lines", body.as_str()), ("index", index.as_str())]);
        Ok(Self::json::<Count>(&what, &Self::answer(&what, r)?)?.line_count)
    }
}

/// The first part of a server's answer, for an error message: gunicorn's
/// error pages are whole HTML documents.
fn shorten(body: &str) -> String {
    let one_line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &one_line[..i]),
        None => one_line,
    }
}

/// Runs a blocking call to the server on the blocking pool.
async fn call<T: Send + 'static>(
    server: &Server,
    f: impl FnOnce(&Server) -> Result<T, WorkerError> + Send + 'static,
) -> Result<T, WorkerError> {
    let s = server.clone();
    tokio::task::spawn_blocking(move || f(&s)).await?
}

/// The worker token, read from its file (and again when the file changes),
/// or got by registering when there is no file.
struct TokenSource {
    path: PathBuf,
    token: Option<Token>,
    read_at: Option<SystemTime>,
}

impl TokenSource {
    fn modified(&self) -> Option<SystemTime> {
        std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
    }

    /// The current token: the file's, read again if it changed since.
    async fn current(&mut self, server: &Server) -> Result<Token, WorkerError> {
        let modified = self.modified();
        if let (Some(t), true) = (&self.token, modified == self.read_at) {
            return Ok(t.clone());
        }
        let path = self.path.clone();
        let read = tokio::task::spawn_blocking(move || std::fs::read_to_string(&path)).await?;
        match read {
            Ok(text) if !text.trim().is_empty() => {
                if self.token.is_some() {
                    tracing::info!(file = %self.path.display(), "LAVA worker token file changed; using the new token");
                }
                self.token = Some(Token(text.trim().to_owned()));
                self.read_at = modified;
                Ok(Token(text.trim().to_owned()))
            }
            Ok(_) | Err(_) if self.token.is_none() => {
                if modified.is_some() {
                    return Err(WorkerError::TokenFile {
                        path: self.path.display().to_string(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "the file is empty or unreadable",
                        ),
                    });
                }
                let token = call(server, Server::register).await?;
                write_token(&self.path, &token).map_err(|source| WorkerError::TokenFile {
                    path: self.path.display().to_string(),
                    source,
                })?;
                tracing::info!(file = %self.path.display(), "registered with lava-server as a new worker; its token is in the file");
                self.read_at = self.modified();
                self.token = Some(token.clone());
                Ok(token)
            }
            // The file went away or became unreadable: the token read last
            // stays, as a reload that fails keeps the running config.
            _ => self.token.clone().ok_or_else(|| WorkerError::TokenFile {
                path: self.path.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no token"),
            }),
        }
    }
}

/// Writes a new token file, readable by its owner only.
fn write_token(path: &Path, token: &Token) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(token.0.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

/// A running worker; `close` ends it.
pub struct WorkerHandle {
    closing: watch::Sender<bool>,
    done: tokio::sync::oneshot::Receiver<()>,
}

impl WorkerHandle {
    /// Stops asking for work and waits, at most `limit`, for the jobs
    /// being reported to be reported (the lab has ended them by now).
    pub async fn close(self, limit: Duration) {
        let _ = self.closing.send(true);
        if tokio::time::timeout(limit, self.done).await.is_err() {
            tracing::warn!(
                "LAVA worker: jobs still unreported at exit; the next start reports them"
            );
        }
    }
}

/// What every task of the worker shares.
#[derive(Clone)]
struct Ctx {
    server: Server,
    lab: Addr<LabActor>,
    store: StoreReader,
    /// Only for how much of each job's log the server took
    /// ([`Store::set_lava_sent`]).
    sent: Store,
    closing: watch::Receiver<bool>,
    metrics: crate::metrics::LavaLinkMetrics,
}

/// Starts the worker on the current actix system.
pub fn start(
    cfg: &LavaWorkerConfig,
    state_dir: &Path,
    lab: Addr<LabActor>,
    store: StoreReader,
    sent: Store,
    metrics: crate::metrics::LavaLinkMetrics,
) -> WorkerHandle {
    let (closing, closing_rx) = watch::channel(false);
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let ctx = Ctx {
        server: Server::new(cfg),
        lab,
        store,
        sent,
        closing: closing_rx,
        metrics,
    };
    let tokens = TokenSource {
        path: cfg.token_path(state_dir),
        token: None,
        read_at: None,
    };
    let interval = Duration::from_secs(cfg.ping_interval_secs.max(1));
    let wake = Arc::new(Events {
        news: Notify::new(),
        connected: AtomicBool::new(false),
        metrics: ctx.metrics.clone(),
    });
    let events = cfg.events_url();
    tracing::info!(url = %cfg.url, worker = %cfg.worker, version = %cfg.version, ping_secs = interval.as_secs(), events = events.as_deref().unwrap_or("none"), "LAVA worker starting");
    if let Some(url) = events {
        actix::spawn(listen(
            url,
            cfg.worker.clone(),
            wake.clone(),
            ctx.closing.clone(),
        ));
    }
    actix::spawn(async move {
        run(ctx, tokens, interval, wake).await;
        let _ = done_tx.send(());
    });
    WorkerHandle { closing, done }
}

/// What a job task is told by the ping loop.
enum Order {
    Cancel,
}

/// The ping loop: asks for work, starts a task per job, passes cancels on.
/// It pings every `interval`, and at once when `wake` says the server has
/// news for this worker.
async fn run(ctx: Ctx, mut tokens: TokenSource, interval: Duration, wake: Arc<Events>) {
    let mut closing = ctx.closing.clone();
    let mut jobs: HashMap<u64, (mpsc::UnboundedSender<Order>, tokio::task::JoinHandle<()>)> =
        HashMap::new();
    let (ended_tx, mut ended) = mpsc::unbounded_channel::<u64>();
    let mut failures: u32 = 0;
    let mut offline = false;
    // Pings left to make soon after an event that a ping did not explain:
    // lava-server sends a job's event inside the transaction that
    // schedules it, so a ping can come before the job is there to start.
    let mut rechecks: u32 = 0;
    loop {
        let pinged = std::time::Instant::now();
        let answer = match tokens.current(&ctx.server).await {
            Ok(token) => call(&ctx.server, move |s| s.ping(&token)).await,
            Err(e) => Err(e),
        };
        let wait = match answer {
            Ok(reply) => {
                ctx.metrics.ping_ok(pinged.elapsed());
                if failures > 0 || offline {
                    tracing::info!("LAVA worker: the server answers again");
                }
                failures = 0;
                offline = false;
                let news = !reply.start.is_empty() || !reply.cancel.is_empty();
                for j in reply.start {
                    spawn_job(&ctx, &mut jobs, &ended_tx, j, Mode::Start);
                }
                for j in reply.running {
                    spawn_job(&ctx, &mut jobs, &ended_tx, j, Mode::Adopt);
                }
                for j in reply.cancel {
                    match jobs.get(&j.id) {
                        Some((tx, _)) => {
                            let _ = tx.send(Order::Cancel);
                        }
                        None => spawn_job(&ctx, &mut jobs, &ended_tx, j, Mode::Cancel),
                    }
                }
                if news {
                    rechecks = 0;
                }
                if rechecks > 0 {
                    rechecks -= 1;
                    Duration::from_millis(250 << (RECHECKS - rechecks))
                } else if wake.connected.load(Ordering::Relaxed) {
                    // While the events tell of new jobs and cancels, a
                    // ping only keeps the worker Online, at lava-worker's
                    // pace.
                    interval.max(EVENTS_PING)
                } else {
                    interval
                }
            }
            Err(e @ WorkerError::VersionMismatch { .. }) => {
                ctx.metrics.version_mismatch();
                if !offline {
                    tracing::error!(error = %e, "LAVA worker is Offline on the server");
                }
                offline = true;
                interval.max(Duration::from_secs(60))
            }
            Err(e) => {
                ctx.metrics.ping_failed();
                failures += 1;
                let wait = backoff(interval, failures);
                tracing::warn!(error = %e, failures, retry_secs = wait.as_secs(), "LAVA worker: ping failed");
                wait
            }
        };
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                _ = wake.news.notified() => {
                    rechecks = RECHECKS;
                    break;
                }
                Some(id) = ended.recv() => {
                    jobs.remove(&id);
                }
                _ = closing.wait_for(|c| *c) => {
                    // The jobs' reports go on: the lab has ended the jobs.
                    for (_, (_, task)) in jobs.drain() {
                        let _ = task.await;
                    }
                    return;
                }
            }
        }
    }
}

/// How long to wait after `failures` failures in a row: doubling from
/// `interval`, at most 30 s (or `interval` when that is longer), so that a
/// server back from a restart hears from labd soon.
fn backoff(interval: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.min(6);
    (interval * factor).min(interval.max(Duration::from_secs(30)))
}

/// The publisher's side of the ping loop.
struct Events {
    /// Told when the server has news for this worker.
    news: Notify,
    /// Whether the event stream is connected now.
    connected: AtomicBool,
    metrics: crate::metrics::LavaLinkMetrics,
}

/// How many pings follow an event whose ping found nothing, 0.5 s, 1 s
/// and 2 s apart.
const RECHECKS: u32 = 3;

/// The ping interval while the events are heard: lava-worker's default.
const EVENTS_PING: Duration = Duration::from_secs(20);

/// Listens to lava-publisher's websocket at `url` and wakes the ping loop
/// when an event says a job of `worker` is scheduled or canceling, and on
/// each connection (events sent while away are lost). Reconnects with
/// backoff, from 1 s to a minute, as lava-worker does.
async fn listen(
    url: String,
    worker: String,
    wake: Arc<Events>,
    mut closing: watch::Receiver<bool>,
) {
    let mut retry = Duration::from_secs(1);
    let mut said = false;
    loop {
        let heard = tokio::select! {
            r = listen_once(&url, &worker, &wake) => r,
            _ = closing.wait_for(|c| *c) => return,
        };
        wake.connected.store(false, Ordering::Relaxed);
        match heard {
            Ok(()) => {
                tracing::info!(url = %url, "LAVA worker: the server's event stream closed; reconnecting");
                retry = Duration::from_secs(1);
                said = false;
            }
            Err(e) => {
                // Said once until it works again: a server without a
                // publisher is a valid setup, where the pings do.
                if !said {
                    tracing::warn!(url = %url, error = %e, "LAVA worker: no events from the server; pinging every interval meanwhile");
                    said = true;
                }
                retry = (retry * 2).min(Duration::from_secs(60));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = closing.wait_for(|c| *c) => return,
        }
    }
}

/// Why the event stream failed.
#[derive(Debug, thiserror::Error)]
enum EventsError {
    #[error("{0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("no answer within {0} s")]
    Silent(u64),
}

/// How often the event stream is pinged, and how long a silent one lasts.
const HEARTBEAT: Duration = Duration::from_secs(30);

/// One connection to the publisher, until it closes (Ok) or fails.
async fn listen_once(url: &str, worker: &str, wake: &Events) -> Result<(), EventsError> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{protocol::WebSocketConfig, Message};
    // An event is a few hundred bytes; a hostile or broken server gets no
    // more memory than this.
    let config = WebSocketConfig::default()
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    let connect = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
    let (mut ws, _) = tokio::time::timeout(HEARTBEAT, connect)
        .await
        .map_err(|_| EventsError::Silent(HEARTBEAT.as_secs()))??;
    tracing::info!(url = %url, "LAVA worker: listening to the server's events");
    wake.connected.store(true, Ordering::Relaxed);
    wake.news.notify_one();
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    let mut heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            m = ws.next() => {
                heard = tokio::time::Instant::now();
                match m {
                    None | Some(Ok(Message::Close(_))) => return Ok(()),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(Message::Text(t))) => {
                        wake.metrics.event();
                        if mentions(t.as_str(), worker) {
                            tracing::debug!("LAVA worker: an event for this worker");
                            wake.news.notify_one();
                        }
                    }
                    Some(Ok(_)) => {}
                }
            }
            _ = heartbeat.tick() => {
                if heard.elapsed() > HEARTBEAT * 2 {
                    return Err(EventsError::Silent((HEARTBEAT * 2).as_secs()));
                }
                ws.send(Message::Ping(Default::default())).await?;
            }
        }
    }
}

/// Whether a publisher event (`[topic, uuid, time, user, data]`, the data
/// JSON in a string) says a job of `worker` is scheduled or canceling:
/// what the worker must ping for.
fn mentions(event: &str, worker: &str) -> bool {
    let Ok(serde_json::Value::Array(parts)) = serde_json::from_str(event) else {
        return false;
    };
    let [topic, _, _, _, data] = parts.as_slice() else {
        return false;
    };
    if !topic.as_str().is_some_and(|t| t.ends_with(".testjob")) {
        return false;
    }
    let Some(data) = data
        .as_str()
        .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
    else {
        return false;
    };
    data["worker"].as_str() == Some(worker)
        && matches!(data["state"].as_str(), Some("Scheduled" | "Canceling"))
}

/// What a job task does first.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// The server starts the job.
    Start,
    /// The server says it is running, and no task of this labd has it: a
    /// labd before this one took it.
    Adopt,
    /// The server cancels a job no task of this labd has.
    Cancel,
}

fn spawn_job(
    ctx: &Ctx,
    jobs: &mut HashMap<u64, (mpsc::UnboundedSender<Order>, tokio::task::JoinHandle<()>)>,
    ended: &mpsc::UnboundedSender<u64>,
    j: JobRef,
    mode: Mode,
) {
    if jobs.contains_key(&j.id) {
        return;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let ctx = ctx.clone();
    let ended = ended.clone();
    let id = j.id;
    let task = actix::spawn(async move {
        job_task(ctx, j, mode, rx).await;
        let _ = ended.send(id);
    });
    jobs.insert(id, (tx, task));
}

/// labd's own identity for its requests to the lab.
fn worker_caller() -> Caller {
    Caller {
        uid: nix::unistd::Uid::effective().as_raw(),
        gid: nix::unistd::Gid::effective().as_raw(),
        groups: Vec::new(),
        name: "lava-worker".into(),
        admin: true,
    }
}

/// LAVA's error type for a job the lab refused.
fn refusal_type(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidJob | ErrorCode::Unsupported | ErrorCode::PermissionDenied => "Job",
        ErrorCode::NoSuchBoard | ErrorCode::NoSuchDeviceType | ErrorCode::InvalidState => {
            "Configuration"
        }
        _ => "Infrastructure",
    }
}

/// One server job, from its start (or adoption) to its FINISHED.
async fn job_task(ctx: Ctx, j: JobRef, mode: Mode, mut orders: mpsc::UnboundedReceiver<Order>) {
    let lava_id = j.id;
    let token = j.token;
    // What a labd before this one sent of the job's log, if it sent any:
    // the rest goes from there.
    let resume = match ctx.store.lava_sent(lava_id).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(lava_job = lava_id, error = %e, "LAVA worker: reading the store");
            return;
        }
    };
    let mut log = LogSender::new(lava_id, token.clone(), resume.unwrap_or_default());
    if resume.is_none() && mode != Mode::Start {
        // A job a labd from before sent positions were kept took (an
        // upgrade): where the server's log of it stands is not known, and
        // sending it again would repeat its test cases there. Only its end
        // goes.
        log.sending = false;
    }
    let labd_job = match mode {
        Mode::Start => {
            let t = token.clone();
            let start = match call(&ctx.server, move |s| s.job(lava_id, &t)).await {
                Ok(s) => s,
                Err(e) => {
                    // The next ping lists the job again; its task starts over.
                    tracing::warn!(lava_job = lava_id, error = %e, "LAVA worker: could not fetch the job");
                    return;
                }
            };
            let req = LabRequest::SubmitLava {
                lava_id,
                definition: start.definition,
                device: start.device.unwrap_or_default(),
                caller: worker_caller(),
            };
            match ctx.lab.send(req).await {
                Ok(Ok(reply)) => reply.submitted_id(),
                Ok(Err(e)) => {
                    tracing::warn!(lava_job = lava_id, error = %e.message, "LAVA worker: the lab refused the server's job");
                    let f = refused(&e);
                    log.push(line("error", &now_ms(), serde_json::json!(f.errors)));
                    log.push_end(job_result(&f));
                    log.flush(&ctx, true).await;
                    report_finished(&ctx, lava_id, &token, &f).await;
                    return;
                }
                Err(_) => return,
            }
        }
        Mode::Adopt | Mode::Cancel => match ctx.store.job_for_lava(lava_id).await {
            Ok(j) => j.map(|j| j.id),
            Err(e) => {
                tracing::warn!(lava_job = lava_id, error = %e, "LAVA worker: reading the store");
                return;
            }
        },
    };
    let Some(id) = labd_job else {
        // The server has a job here that no labd took (the server says it
        // runs, or cancels it): it ends, and says why.
        let f = Finished {
            result: "fail",
            error_type: if mode == Mode::Cancel {
                "Canceled"
            } else {
                "Infrastructure"
            }
            .into(),
            errors: "labd has no job for it: the labd that took it stopped before storing it"
                .into(),
            description: String::new(),
        };
        report_finished(&ctx, lava_id, &token, &f).await;
        return;
    };
    if mode == Mode::Start && resume.is_none() {
        // Stored before the first line goes: a restarted labd that finds
        // no position knows the job is from before positions were kept.
        if let Err(e) = ctx.sent.set_lava_sent(lava_id, LavaSent::default()).await {
            tracing::warn!(lava_job = lava_id, error = %e, "LAVA worker: storing where the job's log starts");
        }
    }
    if mode == Mode::Start {
        ctx.metrics.job_started();
        tracing::info!(
            lava_job = lava_id,
            job = id,
            "LAVA worker: running the server's job"
        );
        let t = token.clone();
        if let Err(e) = call(&ctx.server, move |s| s.running(lava_id, &t)).await {
            // FINISHED works from any state, so the job still ends right.
            tracing::warn!(lava_job = lava_id, error = %e, "LAVA worker: could not report RUNNING");
        }
    }
    if mode == Mode::Cancel {
        cancel(&ctx, lava_id, id).await;
    }
    follow(&ctx, id, &mut log, &mut orders).await;
    let Ok(rec) = ctx.store.job(id).await else {
        return;
    };
    if rec.state != JobState::Finished {
        // Closing before the job ended: the next start reports it.
        return;
    }
    let f = finished_of(&rec, mode == Mode::Adopt);
    log.push_end(job_result(&f));
    log.flush(&ctx, true).await;
    report_finished(&ctx, lava_id, &token, &f).await;
}

async fn cancel(ctx: &Ctx, lava_id: u64, id: JobId) {
    tracing::info!(
        lava_job = lava_id,
        job = id,
        "LAVA worker: the server cancels the job"
    );
    let req = LabRequest::Cancel {
        job: id,
        caller: worker_caller(),
    };
    if let Ok(Err(e)) = ctx.lab.send(req).await {
        // A job that ended meanwhile has nothing to cancel.
        tracing::debug!(lava_job = lava_id, error = %e.message, "LAVA worker: cancel");
    }
}

/// Follows labd job `id` until it finishes: its log goes to the server
/// as it is stored, and the server's cancels to the lab.
async fn follow(
    ctx: &Ctx,
    id: JobId,
    log: &mut LogSender,
    orders: &mut mpsc::UnboundedReceiver<Order>,
) {
    let mut changes = ctx.store.subscribe();
    let mut closing = ctx.closing.clone();
    let mut closed = false;
    loop {
        // The state before the log: what was stored before the end is
        // read below, so the end never cuts the log short.
        let rec = match ctx.store.job(id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(job = id, error = %e, "LAVA worker: reading the job");
                return;
            }
        };
        let done = rec.state == JobState::Finished;
        let read_all = match log.collect(&ctx.store, id, done).await {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!(job = id, error = %e, "LAVA worker: reading the job's log");
                true
            }
        };
        // Once the job is done, every line goes before its end: the flush
        // waits for the server however long it is away.
        log.flush(ctx, closed || done).await;
        if closed || (done && (read_all || !log.sending)) {
            return;
        }
        // More to read while the server takes lines: read on at once.
        if done || (!read_all && log.pending.len() < MAX_PENDING) {
            continue;
        }
        // A change of this job, a cancel, or a second: results are stored
        // without a change notice, and a batch waits for its interval.
        let tick = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(tick);
        loop {
            tokio::select! {
                _ = &mut tick => break,
                Some(Order::Cancel) = orders.recv() => {
                    cancel(ctx, log.lava_id, id).await;
                    break;
                }
                c = changes.recv() => match c {
                    Ok(Change::Job { id: j, .. }) if j == id => break,
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                    Err(_) => return,
                },
                _ = closing.wait_for(|c| *c), if !closed => {
                    // One more round: the lab has ended the job by now.
                    closed = true;
                    break;
                }
            }
        }
    }
}

/// FINISHED, sent until the server takes it, however long it is away; not
/// when it refuses it for good, or when labd closes (then the next start
/// reports the job, which the server still lists as running).
async fn report_finished(ctx: &Ctx, lava_id: u64, token: &Token, f: &Finished) {
    ctx.metrics.job_finished(lava_id, f.result, &f.error_type);
    let mut failures = 0;
    loop {
        let (t, f2) = (token.clone(), f.clone());
        match call(&ctx.server, move |s| s.finished(lava_id, &t, &f2)).await {
            Ok(()) => {
                tracing::info!(lava_job = lava_id, result = f.result, error_type = %f.error_type, "LAVA worker: job reported finished");
                return;
            }
            Err(e) if e.is_final() => {
                tracing::error!(lava_job = lava_id, error = %e, "LAVA worker: the server refuses the job's end; it is not sent again");
                return;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(lava_job = lava_id, error = %e, failures, "LAVA worker: could not report the job finished; trying again");
                if pause(ctx, backoff(Duration::from_secs(1), failures)).await && failures >= 3 {
                    return;
                }
            }
        }
    }
}

/// Sleeps `d`, or less when labd closes (half a second once it is
/// closing: a few last tries); answers whether it is closing.
async fn pause(ctx: &Ctx, d: Duration) -> bool {
    let mut closing = ctx.closing.clone();
    if *closing.borrow() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = closing.wait_for(|c| *c) => {}
    }
    let closed = *closing.borrow();
    closed
}

/// A refused job's FINISHED.
fn refused(e: &ApiError) -> Finished {
    Finished {
        result: "fail",
        error_type: refusal_type(e.code).into(),
        errors: format!("labd refused the job: {}", e.message),
        description: String::new(),
    }
}

/// FINISHED for labd job `j`, which has finished; `adopted` says a labd
/// before this one took it.
fn finished_of(j: &JobRecord, adopted: bool) -> Finished {
    let (result, error_type) = match (j.health, j.error_class) {
        (JobHealth::Complete, _) => ("pass", String::new()),
        (JobHealth::Canceled, _) => ("fail", "Canceled".into()),
        (_, Some(c)) => ("fail", c.to_string()),
        (_, None) => ("fail", ErrorClass::Infrastructure.to_string()),
    };
    let mut errors = j.error.clone().unwrap_or_default();
    if adopted {
        errors = format!(
            "{errors} (labd restarted during the job or before reporting its end; labd job {})",
            j.id
        );
    }
    Finished {
        result,
        error_type,
        errors: errors.trim().to_owned(),
        description: format!(
            "labd:\n  job: {}\n  board: {}\n",
            j.id,
            serde_json::to_string(j.board.as_deref().unwrap_or("")).unwrap_or_default()
        ),
    }
}

/// LAVA's own result for the job, `lava`/`job`, as lava-run logs it.
fn job_result(f: &Finished) -> String {
    let mut msg = serde_json::json!({"definition": "lava", "case": "job", "result": f.result});
    if f.result != "pass" {
        msg["error_type"] = serde_json::json!(f.error_type);
        msg["error_msg"] = serde_json::json!(f.errors);
    }
    line("results", &now_ms(), msg)
}

/// A job's log lines on their way to the server.
///
/// The server's log of a job is three streams of labd's store merged (its
/// events, console and results) into numbered lines. Each line pending
/// carries how far into each stream the lines up to it go, so that when
/// the server takes a batch, that position is stored ([`LavaSent`]) and a
/// labd restarted after a kill sends exactly the rest.
struct LogSender {
    lava_id: u64,
    token: Token,
    /// False once the server refused the job's log for good.
    sending: bool,
    /// Lines not yet taken by the server, the first of which is `index`,
    /// each with the position after it.
    pending: Vec<(String, LavaSent)>,
    index: u64,
    /// How far the job's console log has been read (`partial` holds its
    /// bytes read but not yet a line), and how many of its events and
    /// results are lines.
    log_offset: u64,
    partial: Vec<u8>,
    events: usize,
    results: usize,
    /// Whether LAVA's `lava`/`job` result is among the lines.
    ended: bool,
    last_sent: Option<std::time::Instant>,
    failures: u32,
}

/// At most this many lines a batch, as lava-run sends them.
const MAX_LINES: usize = 1000;
/// At most this many lines of a job read from the store and not yet sent.
const MAX_PENDING: usize = 10 * MAX_LINES;
/// A console line longer than this is sent in pieces of this size.
const MAX_LINE_BYTES: usize = 64 * 1024;

impl LogSender {
    /// A sender from `from`: where the server's log of the job stands
    /// (nothing yet, or what a labd before this one sent).
    fn new(lava_id: u64, token: Token, from: LavaSent) -> LogSender {
        LogSender {
            lava_id,
            token,
            sending: true,
            pending: Vec::new(),
            index: from.index,
            log_offset: from.log,
            partial: Vec::new(),
            events: from.events,
            results: from.results,
            ended: from.ended,
            last_sent: None,
            failures: 0,
        }
    }

    /// Where the lines made so far end in the job's three streams.
    fn here(&self) -> LavaSent {
        LavaSent {
            index: 0,
            log: self.log_offset - self.partial.len() as u64,
            events: self.events,
            results: self.results,
            ended: self.ended,
        }
    }

    fn push(&mut self, l: String) {
        if self.sending {
            let at = self.here();
            self.pending.push((l, at));
        }
    }

    /// Pushes LAVA's `lava`/`job` result, the job's last line, unless a
    /// labd before this one sent it.
    fn push_end(&mut self, l: String) {
        if !self.ended {
            self.ended = true;
            self.push(l);
        }
    }

    /// Reads what the store has of the job past what was read, as lines:
    /// its new events, console lines (a last partial one only once the job
    /// is `done`), then its new results. While the server is away the
    /// lines wait in the store, not here: reading stops once
    /// [`MAX_PENDING`] lines wait to be sent. Answers whether it read
    /// everything there was.
    async fn collect(
        &mut self,
        store: &StoreReader,
        id: JobId,
        done: bool,
    ) -> Result<bool, crate::store::StoreError> {
        if !self.sending {
            return Ok(true);
        }
        let events = store.events(id).await?;
        for e in events.iter().skip(self.events) {
            self.events += 1;
            self.push(line(
                "info",
                &e.time,
                serde_json::json!(format!("{}: {}", e.kind, e.message)),
            ));
        }
        loop {
            if self.pending.len() >= MAX_PENDING {
                return Ok(false);
            }
            let (data, _) = store.log(id, self.log_offset, 256 * 1024).await?;
            if data.is_empty() {
                break;
            }
            self.log_offset += data.len() as u64;
            self.partial.extend_from_slice(&data);
            let now = now_ms();
            while let Some(n) = memchr::memchr(b'\n', &self.partial) {
                let l: Vec<u8> = self.partial.drain(..=n).collect();
                self.push(console_line(&l, now));
            }
            // A console that never ends its line (a binary dump, a
            // flood) is sent in pieces rather than held whole.
            while self.partial.len() >= MAX_LINE_BYTES {
                let l: Vec<u8> = self.partial.drain(..MAX_LINE_BYTES).collect();
                self.push(console_line(&l, now));
            }
        }
        if done && !self.partial.is_empty() {
            let l = std::mem::take(&mut self.partial);
            self.push(console_line(&l, now_ms()));
        }
        let results = store.results(id).await?;
        for r in results.iter().skip(self.results) {
            self.results += 1;
            self.push(result_line(r));
        }
        Ok(true)
    }

    /// Sends the pending lines in batches, each with its index. Unless
    /// `all`, at most one round a second (more slowly after failures), and
    /// a batch that fails stays pending for the next round; with `all`,
    /// until every line is sent, however long the server is away (a few
    /// tries only once labd closes). A batch is always sent again as it
    /// was, with its own index.
    async fn flush(&mut self, ctx: &Ctx, all: bool) {
        ctx.metrics.lines_queued(self.lava_id, self.pending.len());
        if !self.sending || self.pending.is_empty() {
            return;
        }
        let mut tries = 0;
        while !self.pending.is_empty() {
            // Full batches go at once, the rest (and everything after a
            // failure) at the pace of a round.
            if !all
                && (self.failures > 0 || self.pending.len() < MAX_LINES)
                && self.last_sent.is_some_and(|t| {
                    t.elapsed() < backoff(Duration::from_millis(500), self.failures)
                })
            {
                return;
            }
            let batch: Vec<String> = self
                .pending
                .iter()
                .take(MAX_LINES)
                .map(|(l, _)| l.clone())
                .collect();
            let (token, lava_id, index) = (self.token.clone(), self.lava_id, self.index);
            self.last_sent = Some(std::time::Instant::now());
            match call(&ctx.server, move |s| s.logs(lava_id, &token, &batch, index)).await {
                Ok(n) => {
                    let n = n.min(self.pending.len());
                    if let Some((_, at)) = n.checked_sub(1).and_then(|last| self.pending.get(last))
                    {
                        let sent = LavaSent {
                            index: self.index + n as u64,
                            ..*at
                        };
                        // Not waited for: a position lost to a crash only
                        // sends lines the server skips by their index.
                        drop(ctx.sent.set_lava_sent(self.lava_id, sent));
                    }
                    self.pending.drain(..n);
                    ctx.metrics.lines_sent(n);
                    ctx.metrics.lines_queued(self.lava_id, self.pending.len());
                    self.index += n as u64;
                    self.failures = 0;
                }
                Err(e) if e.is_final() => {
                    tracing::error!(lava_job = self.lava_id, error = %e, "LAVA worker: the server refuses the job's log; no more of it is sent");
                    self.sending = false;
                    self.pending.clear();
                    return;
                }
                Err(e) => {
                    ctx.metrics.batch_failed();
                    self.failures += 1;
                    tries += 1;
                    tracing::warn!(lava_job = self.lava_id, error = %e, pending = self.pending.len(), "LAVA worker: sending log lines failed; they are kept and sent again");
                    if !all {
                        return;
                    }
                    let wait = backoff(Duration::from_millis(500), self.failures);
                    if pause(ctx, wait).await && tries >= 3 {
                        return;
                    }
                }
            }
        }
    }
}

/// One console line (its end of line dropped) as a `target` log line.
fn console_line(raw: &[u8], at: u64) -> String {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim_end_matches(['\n', '\r']);
    line("target", &at, serde_json::json!(text))
}

/// A labd test case as a `results` log line.
fn result_line(r: &TestCase) -> String {
    let mut msg = serde_json::json!({
        "definition": r.suite,
        "case": r.name,
        "result": r.result,
    });
    if let Some(s) = &r.set {
        msg["set"] = serde_json::json!(s);
    }
    if let Some(m) = &r.measurement {
        msg["measurement"] = serde_json::json!(m);
    }
    if let Some(u) = &r.units {
        msg["units"] = serde_json::json!(u);
    }
    if let Some(u) = &r.reference {
        msg["reference"] = serde_json::json!(u);
    }
    line("results", &now_ms(), msg)
}

/// A log line as lava-run writes it: `{"dt": ..., "lvl": ..., "msg": ...}`
/// on one line, as JSON (a YAML flow mapping the server's PyYAML reads),
/// every character PyYAML refuses unescaped written as `\uXXXX`.
fn line(lvl: &str, at_ms: &u64, msg: serde_json::Value) -> String {
    let v = serde_json::json!({"dt": iso_utc(*at_ms), "lvl": lvl, "msg": msg});
    yaml_safe(&v.to_string())
}

/// JSON text with the characters PyYAML's reader refuses (DEL, the C1
/// controls but NEL, U+FFFE, U+FFFF) escaped; serde_json already escapes
/// the C0 controls. Inside a JSON string only, where an escape is valid.
fn yaml_safe(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        // A Rust char is never a surrogate: those need no check.
        if matches!(c, '\u{7f}'..='\u{84}' | '\u{86}'..='\u{9f}' | '\u{fffe}' | '\u{ffff}') {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// `ms` since the epoch as lava-run's `dt`: ISO 8601 UTC, microseconds,
/// no zone (`datetime.utcnow().isoformat()`).
fn iso_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        (ms % 1000) * 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_lava_run_s() {
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00.000000");
        // 2023-01-02T03:04:05.678 UTC
        assert_eq!(iso_utc(1_672_628_645_678), "2023-01-02T03:04:05.678000");
        assert_eq!(iso_utc(951_782_400_000), "2000-02-29T00:00:00.000000");
    }

    /// A console line is one line of JSON whatever it holds, with what
    /// PyYAML refuses escaped, and the line's end dropped.
    #[test]
    fn a_console_line_is_one_yaml_safe_line() {
        let l = console_line(b"a\x1b[0m \x7f \xc2\x85 \"q\" \xff\r\n", 0);
        assert!(!l.contains('\n') && !l.contains('\u{7f}'), "{l}");
        assert!(l.contains("\\u007f") && l.contains("\\u001b"), "{l}");
        assert!(l.contains("\u{85}"), "NEL is printable to PyYAML: {l}");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["lvl"], "target");
        assert_eq!(v["msg"], "a\u{1b}[0m \u{7f} \u{85} \"q\" \u{fffd}");
    }

    #[test]
    fn a_result_line_has_lava_s_keys() {
        let r = TestCase {
            suite: "0_smoke".into(),
            set: None,
            name: "uname".into(),
            result: "pass".into(),
            measurement: Some("1.5".into()),
            units: Some("s".into()),
            reference: None,
        };
        let v: serde_json::Value = serde_json::from_str(&result_line(&r)).unwrap();
        assert_eq!(v["lvl"], "results");
        assert_eq!(
            v["msg"],
            serde_json::json!({"definition": "0_smoke", "case": "uname", "result": "pass", "measurement": "1.5", "units": "s"})
        );
    }

    /// The events the worker pings for, in lava-publisher's shape.
    #[test]
    fn events_for_this_worker_wake_the_ping() {
        let ev = |topic: &str, data: serde_json::Value| {
            serde_json::json!([topic, "u", "t", "lavaserver", data.to_string()]).to_string()
        };
        let job = |worker: &str, state: &str| serde_json::json!({"job": 3, "worker": worker, "state": state, "health": "Unknown"});
        assert!(mentions(
            &ev("org.lavasoftware.testjob", job("lab-1", "Scheduled")),
            "lab-1"
        ));
        assert!(mentions(
            &ev("org.lavasoftware.testjob", job("lab-1", "Canceling")),
            "lab-1"
        ));
        assert!(!mentions(
            &ev("org.lavasoftware.testjob", job("lab-2", "Scheduled")),
            "lab-1"
        ));
        assert!(!mentions(
            &ev("org.lavasoftware.testjob", job("lab-1", "Running")),
            "lab-1"
        ));
        assert!(!mentions(
            &ev("org.lavasoftware.device", job("lab-1", "Scheduled")),
            "lab-1"
        ));
        assert!(!mentions("[1, 2]", "lab-1"));
        assert!(!mentions("not json", "lab-1"));
        let null_worker = ev(
            "org.lavasoftware.testjob",
            serde_json::json!({"worker": null, "state": "Scheduled"}),
        );
        assert!(!mentions(&null_worker, "lab-1"));
    }

    #[test]
    fn tokens_are_never_shown() {
        let t = Token("s3cret".into());
        assert!(!format!("{t} {t:?}").contains("s3cret"));
        let j: JobRef = serde_json::from_str(r#"{"id": 3, "token": "s3cret"}"#).unwrap();
        assert!(!format!("{j:?}").contains("s3cret"));
    }

    #[test]
    fn finished_says_lava_s_result_and_error_type() {
        let mut j = JobRecord::submitted(
            "n".into(),
            "t".into(),
            50,
            vec![],
            "s".into(),
            String::new(),
        );
        j.finish(crate::model::JobOutcome::complete());
        assert_eq!(finished_of(&j, false).result, "pass");
        j.finish(crate::model::JobOutcome::incomplete(
            ErrorClass::Infrastructure,
            "dispatcher shutdown",
        ));
        let f = finished_of(&j, true);
        assert_eq!(
            (f.result, f.error_type.as_str()),
            ("fail", "Infrastructure")
        );
        assert!(f.errors.contains("restarted"), "{}", f.errors);
        j.finish(crate::model::JobOutcome::canceled("by request"));
        assert_eq!(finished_of(&j, false).error_type, "Canceled");
    }
}
