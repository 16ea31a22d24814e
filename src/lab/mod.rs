//! The lab actor: the scheduler and the supervisor of the board actors.
//!
//! It owns the job queue and each board's scheduling view (state, health,
//! current job); the board actors own the hardware. Requests from the
//! socket arrive as [`LabRequest`] messages.
//!
//! This file holds the actor's state, its start-up and its message
//! handlers, which only dispatch; the work is by concern:
//! - `api`: the server's contract (requests, replies, [`Caller`],
//!   [`BoardInfo`], [`read_query`]).
//! - `requests`: one method per request.
//! - `schedule`: which board takes which queued job, and handing it over.
//! - `queue`: putting jobs in line, queue timeouts, retries.
//! - `finish`: a job's end.
//! - `health`: health checks and judging a board by its jobs.
//! - `lava`: which board runs a lava-server's job, and the boards such a
//!   server owns.
//! - `supervise`: starting and replacing board actors.
//! - `reload`: applying a re-read config.
//! - `reconcile`: the store made consistent at start.
//!
//! Invariants:
//! - Every job state change is made durable in the store before it is
//!   acted on or acknowledged.
//! - The lab never drives hardware itself: it asks board actors.
//! - The actor thread never blocks: file reads, sled walks and store
//!   writes are awaited off it, in futures the actor spawns or returns.
//! - No job starts before the start-up reconcile has run, nor once the lab
//!   is draining.

mod api;
mod finish;
mod health;
mod lava;
mod queue;
mod reconcile;
mod reload;
mod requests;
mod schedule;
mod supervise;

pub use api::{read_query, BoardInfo, Caller, LabReply, LabRequest, LavaOwner};

use crate::board::{BoardActor, BoardReport, StopJob};
use crate::config::{BoardConfig, LabConfig};
use crate::device_type::DeviceType;
use crate::error::{ApiError, ErrorCode};
use crate::model::{BoardHealth, BoardState, ErrorClass, JobId, JobOutcome};
use crate::power;
use crate::runner::{Phase, TftpInfo};
use crate::store::Store;
use actix::prelude::*;
use std::collections::BTreeMap;

/// A board as the lab sees it: its config, its actor, and its scheduling
/// view.
struct Slot {
    cfg: BoardConfig,
    dt: DeviceType,
    addr: Addr<BoardActor>,
    state: BoardState,
    health: BoardHealth,
    health_reason: Option<String>,
    job: Option<JobId>,
    /// The current job is this board's health check.
    health_check: bool,
    /// When the board last passed a health check.
    last_health_check: Option<u64>,
    phase: Phase,
    /// Maintenance or Retired asked for while the board was busy: it
    /// applies when the job ends.
    pending_health: Option<BoardHealth>,
    /// What a reload asked of this board while it was busy.
    after_job: Option<reload::AfterJob>,
    phase_since: u64,
    job_since: Option<u64>,
    /// The current job's id on its lava-server, for a server's job: set
    /// with `job`, read only while `job` is (as `job_since`).
    lava_job: Option<u64>,
    /// Jobs in a row that a lost console ended.
    console_failures: u32,
    /// The board's relay (shared with its actor): its last commanded state.
    power: std::sync::Arc<dyn power::Power>,
}

pub struct LabActor {
    cfg: LabConfig,
    store: Store,
    device_types: BTreeMap<String, DeviceType>,
    tftp: TftpInfo,
    boards: BTreeMap<String, Slot>,
    /// Jobs waiting for a board, best first (see `schedule::Rank`).
    queue: Vec<queue::Queued>,
    /// Set once the start-up reconcile has run: jobs may start.
    ready: bool,
    /// Set by [`Shutdown`]: no job starts any more.
    draining: bool,
    /// Told when draining and no board has a job.
    drained: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Health-check jobs by device type.
    health_checks: BTreeMap<String, health::HealthCheck>,
    metrics: crate::metrics::Metrics,
    /// How many boards may boot at once; shared with every board.
    boot_slots: crate::boots::BootSlots,
    /// The config file, for reloads; None for the demo lab.
    config_path: Option<std::path::PathBuf>,
    /// The key that seals jobs' `secrets` (see [`crate::secrets`]), or why
    /// there is none: then jobs with secrets are refused, others run.
    secrets_key: Result<std::sync::Arc<crate::secrets::LabKey>, String>,
}

impl LabActor {
    pub fn new(
        cfg: LabConfig,
        store: Store,
        device_types: BTreeMap<String, DeviceType>,
        tftp: TftpInfo,
        metrics: crate::metrics::Metrics,
    ) -> Result<Self, ApiError> {
        // Resolve every board's device type now, so a bad config fails at start.
        for b in &cfg.boards {
            board_device_type(b, &device_types)?;
        }
        warn_lava_ignored(&cfg);
        let health_checks = health::load_health_checks(&cfg)?;
        let secrets_key =
            crate::secrets::LabKey::load_or_create(&cfg.state_dir.join("secrets.key"))
                .map(std::sync::Arc::new)
                .map_err(|e| {
                    tracing::warn!(error = %e, "jobs with secrets will be refused");
                    e.to_string()
                });
        Ok(LabActor {
            secrets_key,
            boot_slots: crate::boots::BootSlots::new(
                cfg.limits.max_concurrent_boots,
                cfg.limits.max_concurrent_boots_per_relay,
            ),
            config_path: None,
            metrics,
            health_checks,
            cfg,
            store,
            device_types,
            tftp,
            boards: BTreeMap::new(),
            queue: Vec::new(),
            ready: false,
            draining: false,
            drained: Vec::new(),
        })
    }

    /// Sets the config file a reload re-reads.
    pub fn with_config_path(mut self, path: Option<std::path::PathBuf>) -> Self {
        self.config_path = path;
        self
    }

    fn notify_if_drained(&mut self) {
        if self.boards.values().all(|s| s.job.is_none()) {
            for tx in self.drained.drain(..) {
                let _ = tx.send(());
            }
        }
    }
}

/// A board's device type with its overrides applied: its LAVA device
/// configuration's when it has one, else the lab's of its name.
pub(crate) fn board_device_type(
    b: &crate::config::BoardConfig,
    device_types: &BTreeMap<String, DeviceType>,
) -> Result<DeviceType, ApiError> {
    let base = match &b.lava {
        Some(l) => &l.dt,
        None => device_types.get(&b.device_type).ok_or_else(|| {
            ApiError::new(
                ErrorCode::NoSuchDeviceType,
                format!("board {}: unknown device type `{}`", b.name, b.device_type),
            )
        })?,
    };
    base.with_overrides(&b.name, &b.parameters)
        .map_err(|e| ApiError::new(ErrorCode::InvalidState, e.to_string()))
}

/// The one warning about what the boards' LAVA device configurations say
/// that labd reads past.
pub(crate) fn warn_lava_ignored(cfg: &LabConfig) {
    let ignored = cfg.lava_ignored();
    if !ignored.is_empty() {
        tracing::warn!(
            ignored = %ignored.join("; "),
            "LAVA device configuration: keys labd ignores (they only matter to features labd does not have)"
        );
    }
}

impl Actor for LabActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let cfgs = self.cfg.boards.clone();
        for b in &cfgs {
            // Invariant: LabActor::new resolved every board's device type.
            let Ok(dt) = board_device_type(b, &self.device_types) else {
                continue;
            };
            let slot = self.new_slot(b, dt, ctx);
            self.boards.insert(b.name.clone(), slot);
        }
        // Health checks fall due with time too, with no event to say so.
        ctx.run_interval(std::time::Duration::from_secs(60), |act, ctx| {
            act.schedule(ctx)
        });
        if self.cfg.retention.enabled() {
            let every =
                std::time::Duration::from_secs(self.cfg.retention.interval_minutes.max(1) * 60);
            ctx.run_interval(every, |act, _ctx| {
                let fut = act
                    .store
                    .prune_logs(crate::store::Retention::from_config(&act.cfg.retention));
                actix::spawn(async move { reconcile::log_prune(fut.await) });
            });
        }
        self.start_reconcile(ctx);
    }
}

/// Stops starting jobs; running jobs get `grace`, then they are ended
/// Incomplete (Infrastructure, "dispatcher shutdown"). The answer resolves
/// once no board has a job. Sent again, the new grace applies too (a second
/// signal sends a zero grace).
#[derive(Message)]
#[rtype(result = "tokio::sync::oneshot::Receiver<()>")]
pub struct Shutdown {
    pub grace: std::time::Duration,
}

impl Handler<Shutdown> for LabActor {
    type Result = MessageResult<Shutdown>;
    fn handle(&mut self, msg: Shutdown, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.draining = true;
        self.drained.push(tx);
        let running = self.boards.values().filter(|s| s.job.is_some()).count();
        tracing::info!(
            running,
            queued = self.queue.len(),
            grace_secs = msg.grace.as_secs(),
            "draining: no new jobs start"
        );
        ctx.run_later(msg.grace, |act, _ctx| {
            for s in act.boards.values() {
                if let Some(id) = s.job {
                    tracing::warn!(job = id, "shutdown grace is over; ending the job");
                    s.addr.do_send(StopJob {
                        id,
                        outcome: JobOutcome::incomplete(
                            ErrorClass::Infrastructure,
                            "dispatcher shutdown",
                        ),
                    });
                }
            }
        });
        self.notify_if_drained();
        MessageResult(rx)
    }
}

/// Answered at once: proves the lab actor is alive (the systemd watchdog).
/// Before the start-up reconcile has run, it waits for it like any message
/// (the daemon starts its socket server on that answer).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ping;

impl Handler<Ping> for LabActor {
    type Result = ();
    fn handle(&mut self, _msg: Ping, _ctx: &mut Context<Self>) {}
}

impl Handler<BoardReport> for LabActor {
    type Result = ();
    fn handle(&mut self, msg: BoardReport, ctx: &mut Context<Self>) {
        match msg {
            BoardReport::Phase { board, phase } => self.board_phase(&board, phase),
            BoardReport::JobEnded {
                board,
                job,
                outcome,
                timing,
            } => self.finish_timed(job, &board, outcome, timing, ctx),
            BoardReport::Died { board, job } => self.board_died(board, job, ctx),
        }
    }
}

impl Handler<LabRequest> for LabActor {
    type Result = requests::Reply;

    fn handle(&mut self, msg: LabRequest, _ctx: &mut Context<Self>) -> Self::Result {
        use LabRequest as R;
        match msg {
            R::Submit {
                definition,
                file,
                caller,
            } => self.submit(definition, file, caller),
            R::SubmitLava {
                lava_id,
                definition,
                device,
                caller,
            } => self.submit_lava(lava_id, definition, device, caller),
            R::Cancel { job, caller } => self.cancel(job, caller),
            req @ (R::Jobs(_) | R::Job { .. } | R::Results { .. } | R::LogSource { .. }) => {
                self.read(req)
            }
            R::Reload { caller } => self.reload(caller),
            R::Metrics => self.scrape(),
            R::Boards => self.list_boards(),
            R::SetHealth {
                board,
                health,
                reason,
                caller,
            } => self.set_health(board, health, reason, caller),
            R::Power {
                board,
                action,
                caller,
            } => self.power(board, action, caller),
            R::WatchConsole { board } => self.watch_console(board),
            R::TypeConsole {
                board,
                data,
                caller,
            } => self.type_console(board, data, caller),
            R::IdleConsole { board } => self.idle_console(board),
        }
    }
}
