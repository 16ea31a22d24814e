//! The lab actor: the scheduler and the supervisor of the board actors.
//!
//! It owns the job queue and each board's scheduling view (state, health,
//! current job); the board actors own the hardware. Every job state change
//! is made durable in the store before it is acted on or acknowledged.
//! Requests from the socket arrive as [`LabRequest`] messages.

use crate::board::{
    BoardActor, BoardReport, IdleConsole, PowerBoard, Retire, StartJob, StopJob, TypeConsole,
    WatchConsole,
};
use crate::config::{BoardConfig, LabConfig};
use crate::console;
use crate::device_type::DeviceType;
use crate::error::{ApiError, ErrorCode};
use crate::job::{self, BootCommands, Diagnostic, JobDefinition};
use crate::model::*;
use crate::power::{self, PowerAction};
use crate::runner::{Phase, TftpInfo};
use crate::store::{JobFilter, Refused, Retention, Store, StoreReader};
use actix::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A board as `boards` reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BoardInfo {
    pub name: String,
    pub device_type: String,
    pub tags: Vec<String>,
    pub state: BoardState,
    pub health: BoardHealth,
    pub health_reason: Option<String>,
    pub job: Option<JobId>,
    pub phase: Phase,
    /// When the board entered its phase, and took its job (ms since the epoch).
    pub phase_since: u64,
    pub job_since: Option<u64>,
    /// The relay's last commanded state (Unknown after a failed command).
    pub power: power::PowerState,
}

/// Who sent a request, as the kernel told the socket layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub uid: u32,
    /// The peer's group and supplementary groups: with the uid, the rights
    /// its jobs' `file://` artifacts are read with.
    pub gid: u32,
    pub groups: Vec<u32>,
    pub name: String,
    /// Root, labd's own user, or a member of the configured admin group.
    pub admin: bool,
}

impl Caller {
    fn may_cancel(&self, j: &JobRecord) -> bool {
        self.admin
            || match j.submitter_uid {
                Some(uid) => uid == self.uid,
                None => j.submitter == self.name,
            }
    }

    /// The answer to a request the caller may not make; the denial is logged.
    fn denied(&self, what: &str) -> ApiError {
        tracing::warn!(caller = %self.name, uid = self.uid, action = what, "permission denied");
        ApiError::new(
            ErrorCode::PermissionDenied,
            format!("{} (uid {}) may not {what}", self.name, self.uid),
        )
    }

    fn require_admin(&self, what: &str) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(self.denied(&format!("{what}: admins only")))
        }
    }
}

#[derive(Debug, Clone)]
pub enum LabRequest {
    Submit {
        definition: String,
        file: String,
        caller: Caller,
    },
    Cancel {
        job: JobId,
        caller: Caller,
    },
    Jobs(JobFilter),
    Job {
        job: JobId,
    },
    Results {
        job: JobId,
    },
    Boards,
    SetHealth {
        board: String,
        /// Maintenance, Retired, or Unknown (online: a health check decides).
        health: BoardHealth,
        reason: Option<String>,
        caller: Caller,
    },
    Power {
        board: String,
        action: PowerAction,
        caller: Caller,
    },
    IdleConsole {
        board: String,
    },
    /// Watch a board's console (anyone may).
    WatchConsole {
        board: String,
    },
    /// Type on the console of a board in maintenance (admins).
    TypeConsole {
        board: String,
        data: Vec<u8>,
        caller: Caller,
    },
    /// A handle for reading logs; reading never changes anything.
    LogSource {
        job: JobId,
    },
    /// Every metric, in Prometheus text format.
    Metrics,
    /// Re-read the config file and device types (SIGHUP, `labctl reload`).
    Reload {
        caller: Caller,
    },
}

#[derive(Debug)]
pub enum LabReply {
    Submitted {
        id: JobId,
        warnings: Vec<Diagnostic>,
    },
    Done,
    Jobs(Vec<JobRecord>),
    Job(Box<JobRecord>, Vec<JobEvent>),
    Results(Box<JobRecord>, Vec<TestCase>),
    /// The boards, and how many jobs are queued for a board.
    Boards(Vec<BoardInfo>, usize),
    Bytes(Vec<u8>),
    LogSource(StoreReader),
    Text(String),
    Reloaded(Vec<String>),
    ConsoleStream(Vec<u8>, tokio::sync::broadcast::Receiver<Vec<u8>>),
}

impl Message for LabRequest {
    type Result = Result<LabReply, ApiError>;
}

/// The start error that means the board actor died while taking a job.
const BOARD_DIED: &str = "board actor died";

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
    after_job: Option<AfterJob>,
    phase_since: u64,
    job_since: Option<u64>,
    /// Jobs in a row that a lost console ended.
    console_failures: u32,
    /// The board's relay (shared with its actor): its last commanded state.
    power: std::sync::Arc<dyn power::Power>,
}

/// A reload's change to a busy board, applied when its job ends.
enum AfterJob {
    /// The board left the config.
    Remove,
    /// Its config or device type changed.
    Restart(Box<(BoardConfig, DeviceType)>),
}

struct Queued {
    id: JobId,
    priority: u8,
    submit_time: u64,
    def: JobDefinition,
    reader: Option<crate::model::Identity>,
}

impl Queued {
    fn of(r: &JobRecord, def: JobDefinition) -> Queued {
        Queued {
            id: r.id,
            priority: r.priority,
            submit_time: r.submit_time,
            def,
            reader: r.reader(),
        }
    }
}

pub struct LabActor {
    cfg: LabConfig,
    store: Store,
    device_types: BTreeMap<String, DeviceType>,
    tftp: TftpInfo,
    boards: BTreeMap<String, Slot>,
    queue: Vec<Queued>,
    ready: bool,
    /// Set by [`Shutdown`]: no job starts any more.
    draining: bool,
    /// Told when draining and no board has a job.
    drained: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Health-check jobs by device type.
    health_checks: BTreeMap<String, HealthCheck>,
    metrics: crate::metrics::Metrics,
    /// How many boards may boot at once; shared with every board.
    boot_slots: crate::boots::BootSlots,
    /// The config file, for reloads; None for the demo lab.
    config_path: Option<std::path::PathBuf>,
}

/// A device type's health-check job, read and validated at start.
struct HealthCheck {
    file: String,
    text: String,
    def: JobDefinition,
}

/// Reads `<dir>/<device type>.yaml` for each device type the boards use.
fn load_health_checks(cfg: &LabConfig) -> Result<BTreeMap<String, HealthCheck>, ApiError> {
    let mut out = BTreeMap::new();
    let Some(dir) = &cfg.health_checks.dir else {
        return Ok(out);
    };
    for dt in cfg.boards.iter().map(|b| &b.device_type) {
        let path = dir.join(format!("{dt}.yaml"));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(ApiError::new(
                    ErrorCode::InvalidJob,
                    format!("{}: {e}", path.display()),
                ))
            }
        };
        let file = path.display().to_string();
        let parsed = job::parse(&file, &text).map_err(|e| ApiError {
            code: e.code(),
            message: format!("health check: {e}"),
            location: Some(e.first().location.clone()),
        })?;
        if parsed.definition.device_type != *dt {
            return Err(ApiError::new(
                ErrorCode::InvalidJob,
                format!(
                    "{file}: a health check for `{dt}` names device_type `{}`",
                    parsed.definition.device_type
                ),
            ));
        }
        out.insert(
            dt.clone(),
            HealthCheck {
                file,
                text,
                def: parsed.definition,
            },
        );
    }
    Ok(out)
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
            let dt = device_types.get(&b.device_type).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::NoSuchDeviceType,
                    format!("board {}: unknown device type `{}`", b.name, b.device_type),
                )
            })?;
            dt.with_overrides(&b.name, &b.parameters)
                .map_err(|e| ApiError::new(ErrorCode::InvalidState, e.to_string()))?;
        }
        let health_checks = load_health_checks(&cfg)?;
        Ok(LabActor {
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

    fn new_slot(&self, b: &BoardConfig, dt: DeviceType, ctx: &mut Context<Self>) -> Slot {
        let (addr, power) = self.start_board(b, &dt, ctx);
        Slot {
            cfg: b.clone(),
            addr,
            power,
            dt,
            state: BoardState::Idle,
            health: BoardHealth::Unknown,
            health_reason: None,
            job: None,
            health_check: false,
            last_health_check: None,
            phase: Phase::Off,
            pending_health: None,
            after_job: None,
            phase_since: now_ms(),
            job_since: None,
            console_failures: 0,
        }
    }

    /// Applies a re-read config. Keys that need a restart must not change.
    /// Added boards start at once; removed or changed boards leave or
    /// restart now if idle, else when their job ends. Says what it did.
    fn apply_config(
        &mut self,
        cfg: LabConfig,
        device_types: BTreeMap<String, DeviceType>,
        health_checks: BTreeMap<String, HealthCheck>,
        ctx: &mut Context<Self>,
    ) -> Result<Vec<String>, ApiError> {
        let old = &self.cfg;
        let fixed = [
            ("socket", old.socket != cfg.socket),
            ("state_dir", old.state_dir != cfg.state_dir),
            ("store", old.store != cfg.store),
            ("tftp", old.tftp != cfg.tftp),
            ("artifact_cache", old.artifact_cache != cfg.artifact_cache),
            ("deploy", old.deploy != cfg.deploy),
            ("auth", old.auth != cfg.auth),
            ("metrics_listen", old.metrics_listen != cfg.metrics_listen),
            ("slow", old.slow != cfg.slow),
            ("sim_control", old.sim_control != cfg.sim_control),
            ("log", old.log != cfg.log),
            ("lock_dir", old.lock_dir != cfg.lock_dir),
        ];
        let changed: Vec<&str> = fixed.iter().filter(|(_, c)| *c).map(|(k, _)| *k).collect();
        if !changed.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidState,
                format!(
                    "reload: {} changed; restart labd to apply that (nothing was changed)",
                    changed.join(", ")
                ),
            ));
        }
        let mut wanted = BTreeMap::new();
        for b in &cfg.boards {
            let base = device_types.get(&b.device_type).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::NoSuchDeviceType,
                    format!(
                        "reload: board {}: unknown device type `{}`",
                        b.name, b.device_type
                    ),
                )
            })?;
            let dt = base
                .with_overrides(&b.name, &b.parameters)
                .map_err(|e| ApiError::new(ErrorCode::InvalidState, format!("reload: {e}")))?;
            wanted.insert(b.name.clone(), (b.clone(), dt));
        }
        let mut report = Vec::new();
        let names: Vec<String> = self.boards.keys().cloned().collect();
        for name in names {
            let Some(slot) = self.boards.get_mut(&name) else {
                continue;
            };
            let change = match wanted.remove(&name) {
                None => AfterJob::Remove,
                Some((b, dt)) if b != slot.cfg || dt != slot.dt => {
                    AfterJob::Restart(Box::new((b, dt)))
                }
                Some(_) => continue,
            };
            let what = match change {
                AfterJob::Remove => "removed",
                AfterJob::Restart(_) => "restarted with its new config",
            };
            if slot.state == BoardState::Idle {
                report.push(format!("board {name} {what}"));
                self.apply_after_job(&name, change, ctx);
            } else {
                report.push(format!("board {name} will be {what} when its job ends"));
                slot.after_job = Some(change);
            }
        }
        for (name, (b, dt)) in wanted {
            report.push(format!("board {name} added"));
            let slot = self.new_slot(&b, dt, ctx);
            self.boards.insert(name, slot);
        }
        self.boot_slots.set_limits(
            cfg.limits.max_concurrent_boots,
            cfg.limits.max_concurrent_boots_per_relay,
        );
        self.cfg = cfg;
        self.device_types = device_types;
        self.health_checks = health_checks;
        if report.is_empty() {
            report.push("no board changed".into());
        }
        tracing::info!(changes = ?report, "config reloaded");
        self.schedule(ctx);
        Ok(report)
    }

    /// Removes or restarts an idle board as a reload asked.
    fn apply_after_job(&mut self, name: &str, change: AfterJob, ctx: &mut Context<Self>) {
        let Some(slot) = self.boards.get(name) else {
            return;
        };
        slot.addr.do_send(Retire);
        match change {
            AfterJob::Remove => {
                self.boards.remove(name);
            }
            AfterJob::Restart(new) => {
                let (b, dt) = *new;
                let (addr, power) = self.start_board(&b, &dt, ctx);
                if let Some(slot) = self.boards.get_mut(name) {
                    slot.addr = addr;
                    slot.power = power;
                    slot.cfg = b;
                    slot.dt = dt;
                    slot.phase = Phase::Off;
                }
            }
        }
    }

    fn start_board(
        &self,
        b: &BoardConfig,
        dt: &DeviceType,
        ctx: &mut Context<Self>,
    ) -> (Addr<BoardActor>, std::sync::Arc<dyn power::Power>) {
        let sim = self.cfg.sim_control.as_ref();
        let console = console::from_config(
            &b.name,
            &b.console,
            dt.console_baud,
            sim,
            &self.cfg.lock_dir,
        );
        // The lab keeps a handle too, to report the last commanded state.
        let power: std::sync::Arc<dyn power::Power> = std::sync::Arc::new(power::Timed::new(
            power::from_config(b, &self.cfg.state_dir, sim),
            b.name.clone(),
            self.metrics.clone(),
        ));
        let addr = BoardActor::new(
            b.name.clone(),
            dt.clone(),
            console,
            power.clone(),
            self.store.clone(),
            self.tftp.clone(),
            ctx.address().recipient(),
            self.cfg.limits.idle_console_ring_bytes,
            self.cfg.limits.max_job_log_bytes,
            std::time::Duration::from_secs(self.cfg.limits.console_reconnect_secs),
            self.metrics.clone(),
        )
        .with_boot_slots(self.boot_slots.clone(), b.power.relay_device())
        .with_read_pacing(self.cfg.limits.read_pacing())
        .start();
        (addr, power)
    }

    fn persist_board(&self, name: &str) {
        if let Some(s) = self.boards.get(name) {
            let fut = self.store.put_board(BoardRecord {
                name: name.to_owned(),
                health: s.health,
                health_reason: s.health_reason.clone(),
                last_health_check: s.last_health_check,
            });
            actix::spawn(async move {
                if let Err(e) = fut.await {
                    tracing::error!(error = %e, "storing board health failed");
                }
            });
        }
    }

    /// Queues a job, in priority then submit order, and arms its queue
    /// timeout (the job's `timeouts.queue`, else the lab's).
    fn enqueue(&mut self, q: Queued, ctx: &mut Context<Self>) {
        let limit = q.def.timeouts.queue.or(self
            .cfg
            .limits
            .queue_timeout_secs
            .map(std::time::Duration::from_secs));
        if let Some(limit) = limit {
            let deadline = q.submit_time + limit.as_millis() as u64;
            let wait = std::time::Duration::from_millis(deadline.saturating_sub(now_ms()));
            let id = q.id;
            ctx.run_later(wait, move |act, _ctx| act.queue_timed_out(id, limit));
        }
        // The queue is kept sorted, best first: a binary search finds the
        // place (usually the end of its priority), however long the queue.
        let key = |j: &Queued| {
            (
                j.priority,
                std::cmp::Reverse(j.submit_time),
                std::cmp::Reverse(j.id),
            )
        };
        let pos = self.queue.partition_point(|o| key(o) >= key(&q));
        self.queue.insert(pos, q);
    }

    /// Cancels a job that is still queued when its queue timeout ends.
    fn queue_timed_out(&mut self, id: JobId, limit: std::time::Duration) {
        let Some(pos) = self.queue.iter().position(|q| q.id == id) else {
            return;
        };
        let q = self.queue.remove(pos);
        let msg = format!(
            "queue timeout: no board took the job within {} s",
            limit.as_secs()
        );
        tracing::info!(job = id, "{msg}");
        self.metrics.job_finished("Canceled");
        let fut = self.store.update_job(id, move |j| {
            if j.state != JobState::Submitted {
                return Err(Refused(format!("job {id} is {}", j.state)));
            }
            j.finish(JobOutcome::canceled(msg));
            Ok(())
        });
        drop(q);
        actix::spawn(async move {
            if let Err(e) = fut.await {
                tracing::error!(job = id, error = %e, "canceling a job after its queue timeout");
            }
        });
    }

    /// Queues the next attempt of a job that ended with an Infrastructure
    /// error, which the store keeps with the end (`update_job_then`).
    fn queue_retry(&mut self, old: JobId, retry: &JobRecord, ctx: &mut Context<Self>) {
        // It was made from a definition that parsed: it parses again.
        let Ok(def) = stored_definition(retry, &self.cfg.limits.timeout_maxima()) else {
            return;
        };
        tracing::info!(
            job = old,
            retry = retry.id,
            attempt = retry.attempt,
            "retrying after an infrastructure error"
        );
        self.enqueue(Queued::of(retry, def), ctx);
    }

    fn matches(slot: &Slot, def: &JobDefinition) -> bool {
        slot.cfg.device_type == def.device_type
            && def.tags.iter().all(|t| slot.cfg.tags.contains(t))
    }

    /// Gives queued jobs to idle boards: highest priority first, then oldest.
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if self.draining {
            self.notify_if_drained();
            return;
        }
        if !self.ready {
            return;
        }
        // A board that must prove itself runs its health check before any
        // user job.
        let due: Vec<String> = self
            .boards
            .iter()
            .filter(|(_, s)| self.free(s) && self.health_check_due(s))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            self.start_health_check(name, ctx);
        }
        // With every board busy (the usual state of a loaded lab) there is
        // nothing to look for in the queue, however long it is.
        if !self
            .boards
            .values()
            .any(|s| self.free(s) && !self.health_check_due(s))
        {
            return;
        }
        let mut i = 0;
        while i < self.queue.len() {
            if !self
                .boards
                .values()
                .any(|s| self.free(s) && !self.health_check_due(s))
            {
                break;
            }
            let def = &self.queue[i].def;
            let board = self
                .boards
                .iter()
                .find(|(_, s)| self.free(s) && !self.health_check_due(s) && Self::matches(s, def))
                .map(|(n, _)| n.clone());
            match board {
                Some(name) => {
                    let q = self.queue.remove(i);
                    self.assign(q, name, ctx);
                }
                None => i += 1,
            }
        }
    }

    /// Idle, in service, and not about to go to maintenance.
    fn free(&self, s: &Slot) -> bool {
        s.state == BoardState::Idle && s.health.schedulable() && s.pending_health.is_none()
    }

    /// Whether the board's device type has a health check and the board
    /// needs it: health Unknown, or no pass within the frequency.
    fn health_check_due(&self, s: &Slot) -> bool {
        if !self.health_checks.contains_key(&s.cfg.device_type) {
            return false;
        }
        let every = self
            .cfg
            .health_checks
            .frequency_hours
            .saturating_mul(3_600_000);
        s.health == BoardHealth::Unknown
            || s.last_health_check
                .is_none_or(|t| now_ms().saturating_sub(t) >= every)
    }

    /// Stores a health-check job for `board` and gives it to the board. The
    /// board is Reserved meanwhile, so nothing else takes it.
    fn start_health_check(&mut self, board: String, ctx: &mut Context<Self>) {
        let Some(hc) = self
            .boards
            .get(&board)
            .and_then(|s| self.health_checks.get(&s.cfg.device_type))
        else {
            return;
        };
        let def = hc.def.clone();
        let rec = JobRecord {
            health_check: true,
            ..JobRecord::submitted(
                def.job_name.clone(),
                def.device_type.clone(),
                100,
                def.tags.clone(),
                format!("labd (health check of {board}, {})", hc.file),
                hc.text.clone(),
            )
        };
        if let Some(s) = self.boards.get_mut(&board) {
            s.state = BoardState::Reserved;
            s.health_check = true;
        }
        tracing::info!(%board, "running a health check");
        ctx.spawn(
            self.store
                .insert_job(rec)
                .into_actor(self)
                .map(move |r, act, ctx| match r {
                    Ok(r) => act.assign(Queued::of(&r, def), board, ctx),
                    Err(e) => {
                        tracing::error!(%board, error = %e, "storing a health check failed");
                        if let Some(s) = act.boards.get_mut(&board) {
                            s.state = BoardState::Idle;
                            s.health_check = false;
                        }
                    }
                }),
        );
    }

    fn assign(&mut self, q: Queued, board: String, ctx: &mut Context<Self>) {
        let Some(slot) = self.boards.get_mut(&board) else {
            return;
        };
        slot.state = BoardState::Reserved;
        slot.job = Some(q.id);
        slot.job_since = Some(now_ms());
        let addr = slot.addr.clone();
        let store = self.store.clone();
        let id = q.id;
        self.metrics.queue_waited(std::time::Duration::from_millis(
            now_ms().saturating_sub(q.submit_time),
        ));
        let bn = board.clone();
        let fut = async move {
            store
                .update_job(id, move |j| {
                    if j.state != JobState::Submitted {
                        return Err(Refused(format!("job {id} is {} already", j.state)));
                    }
                    j.state = JobState::Scheduled;
                    j.board = Some(bn);
                    Ok(())
                })
                .await
                .map_err(|e| e.to_string())?;
            // A closed mailbox means the board actor died taking the job;
            // its death report ends the job (as a Bug), not this path.
            addr.send(StartJob {
                id,
                def: q.def,
                reader: q.reader,
            })
            .await
            .map_err(|_| BOARD_DIED.to_owned())??;
            store
                .update_job(id, |j| {
                    if j.state == JobState::Scheduled {
                        j.state = JobState::Running;
                    }
                    j.start_time = Some(now_ms());
                    Ok(())
                })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        ctx.spawn(
            fut.into_actor(self)
                .map(move |res: Result<(), String>, act, ctx| {
                    if let Some(s) = act.boards.get_mut(&board) {
                        if s.job == Some(id) && s.state == BoardState::Reserved {
                            s.state = BoardState::Running;
                        }
                    }
                    if let Some(e) = res.err().filter(|e| e != BOARD_DIED) {
                        tracing::error!(job = id, %board, error = %e, "starting job failed");
                        act.finish(
                            id,
                            &board,
                            JobOutcome::incomplete(
                                ErrorClass::Infrastructure,
                                format!("could not start: {e}"),
                            ),
                            ctx,
                        );
                    }
                }),
        );
    }

    /// Records a job's end, frees its board and schedules again.
    ///
    /// The board's view changes at once, so that whoever sees the job
    /// finished also sees its board free; the store applies writes in the
    /// order they are queued, so the job's Finished record still lands
    /// before anything the board does next. Scheduling waits for it.
    fn finish(&mut self, id: JobId, board: &str, outcome: JobOutcome, ctx: &mut Context<Self>) {
        self.finish_timed(id, board, outcome, Vec::new(), ctx)
    }

    /// `finish`, with where the job's time went on its board.
    fn finish_timed(
        &mut self,
        id: JobId,
        board: &str,
        outcome: JobOutcome,
        timing: Vec<PhaseTime>,
        ctx: &mut Context<Self>,
    ) {
        let store = self.store.clone();
        let o2 = outcome.clone();
        let maxima = self.cfg.limits.timeout_maxima();
        let logs = self.store.clone();
        // Called now, so the write is queued now (see the doc above). A
        // retry the end calls for is stored in the same transaction.
        let write = store.update_job_then(
            id,
            move |j| {
                if j.state == JobState::Finished {
                    return Err(Refused(format!("job {id} already finished")));
                }
                // A job being canceled ends Canceled whatever the runner saw.
                let mut o = if j.state == JobState::Canceling && o2.health != JobHealth::Canceled {
                    JobOutcome::canceled("canceled by request")
                } else {
                    o2
                };
                // A job whose log could not be stored whole is not Complete.
                // Asked here, on the store's writer, after the job's last
                // bytes went: nothing about the log can change after this.
                if o.health == JobHealth::Complete {
                    if let Some(why) = logs.log_stopped(id) {
                        o = JobOutcome::incomplete(
                            ErrorClass::Infrastructure,
                            format!("the console log could not be stored: {why}"),
                        );
                    }
                }
                j.finish(o);
                j.timing = timing;
                Ok(())
            },
            move |j| next_attempt(j, &maxima),
        );
        let fut = write.into_actor(self).map(move |r, act, ctx| {
            match r {
                Ok((_, Some(retry))) => act.queue_retry(id, &retry, ctx),
                Ok((_, None)) => {}
                Err(e) => tracing::warn!(job = id, error = %e, "recording job end"),
            }
            act.schedule(ctx);
        });
        // Counted now, like the board is freed now: whoever sees the job
        // finished sees it counted.
        let counted = match self.store.log_stopped(id) {
            Some(_) if outcome.health == JobHealth::Complete => JobHealth::Incomplete,
            _ => outcome.health,
        };
        self.metrics.job_finished(&counted.to_string());
        let board = board.to_owned();
        let has_health_check = self
            .boards
            .get(&board)
            .is_some_and(|s| self.health_checks.contains_key(&s.cfg.device_type));
        if let Some(s) = self.boards.get_mut(&board) {
            let was_health_check = s.job == Some(id) && s.health_check;
            if s.job == Some(id) {
                s.job = None;
                s.health_check = false;
                s.state = BoardState::Idle;
            }
            let in_service = s.health.schedulable();
            if was_health_check && in_service {
                // As LAVA: a passing health check makes the board Good, a
                // failing one Bad (no jobs until an admin sets it online),
                // a canceled one leaves it Unknown.
                match outcome.health {
                    JobHealth::Complete => {
                        s.health = BoardHealth::Good;
                        s.health_reason = None;
                        s.last_health_check = Some(now_ms());
                    }
                    JobHealth::Canceled => {
                        s.health = BoardHealth::Unknown;
                        s.health_reason = Some(format!("health check {id} canceled"));
                    }
                    _ => {
                        s.health = BoardHealth::Bad;
                        s.health_reason = Some(format!(
                            "health check {id} failed: {}",
                            outcome.error.as_deref().unwrap_or("incomplete")
                        ));
                    }
                }
            } else if matches!(
                outcome.error_class,
                Some(ErrorClass::Infrastructure | ErrorClass::Bug)
            ) && s.health == BoardHealth::Good
            {
                s.health = BoardHealth::Unknown;
                s.health_reason = outcome.error.clone();
            } else if !has_health_check
                && outcome.health == JobHealth::Complete
                && s.health == BoardHealth::Unknown
            {
                // Without a health check for its device type, a complete job
                // is the best evidence there is that the board works.
                s.health = BoardHealth::Good;
                s.health_reason = None;
            }
            // A console that keeps getting lost is a broken board (or cable).
            if outcome
                .error
                .as_deref()
                .is_some_and(|e| e.starts_with("console lost"))
            {
                s.console_failures += 1;
                if s.console_failures >= self.cfg.limits.console_failures_before_bad
                    && s.health.schedulable()
                {
                    s.health = BoardHealth::Bad;
                    s.health_reason = Some(format!(
                        "console lost in {} jobs in a row",
                        s.console_failures
                    ));
                }
            } else if outcome.health == JobHealth::Complete {
                s.console_failures = 0;
            }
            if let Some(h) = s.pending_health.take() {
                s.health = h;
            }
        }
        let after = self
            .boards
            .get_mut(&board)
            .filter(|s| s.job.is_none())
            .and_then(|s| s.after_job.take());
        if let Some(change) = after {
            self.apply_after_job(&board, change, ctx);
        }
        // Queued after the job's write: the store keeps that order.
        ctx.spawn(fut);
        self.persist_board(&board);
    }

    fn notify_if_drained(&mut self) {
        if self.boards.values().all(|s| s.job.is_none()) {
            for tx in self.drained.drain(..) {
                let _ = tx.send(());
            }
        }
    }

    /// Brings the store to a consistent state after a start or a crash.
    async fn reconcile(
        store: Store,
        retention: Option<crate::store::Retention>,
        maxima: job::TimeoutMaxima,
    ) -> Result<(Vec<BoardRecord>, Vec<JobRecord>, Vec<JobRecord>), crate::store::StoreError> {
        if crate::faults::take("reconcile-slow", "lab") {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        // Jobs cut short, as now ended: their boards' state is unknown.
        let mut interrupted = Vec::new();
        for state in [JobState::Scheduled, JobState::Running, JobState::Canceling] {
            for j in store.jobs_in_state(state).await? {
                let canceled = j.state == JobState::Canceling;
                // The next attempt is stored with the end, before labd
                // serves anyone, so nobody sees the ended job without it.
                let (ended, retry) = store
                    .update_job_then(
                        j.id,
                        move |r| {
                            r.finish(if canceled {
                                JobOutcome::canceled("canceled; dispatcher restarted")
                            } else {
                                JobOutcome::incomplete(
                                    ErrorClass::Infrastructure,
                                    "dispatcher restarted",
                                )
                            });
                            Ok(())
                        },
                        move |ended| next_attempt(ended, &maxima),
                    )
                    .await?;
                if let Some(r) = retry {
                    tracing::info!(
                        job = ended.id,
                        retry = r.id,
                        attempt = r.attempt,
                        "retrying a job the restart cut short"
                    );
                }
                interrupted.push(ended);
            }
        }
        if let Some(r) = retention {
            log_prune(store.prune_logs(r).await);
        }
        let boards = store.boards().await?;
        let queued = store.jobs_in_state(JobState::Submitted).await?;
        Ok((boards, queued, interrupted))
    }
}

impl Actor for LabActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let cfgs = self.cfg.boards.clone();
        for b in &cfgs {
            let Some(base) = self.device_types.get(&b.device_type) else {
                continue;
            };
            // Invariant: LabActor::new checked every board's overrides.
            let Ok(dt) = base.with_overrides(&b.name, &b.parameters) else {
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
                    .prune_logs(Retention::from_config(&act.cfg.retention));
                actix::spawn(async move { log_prune(fut.await) });
            });
        }
        let store = self.store.clone();
        let retention = self
            .cfg
            .retention
            .enabled()
            .then(|| Retention::from_config(&self.cfg.retention));
        let maxima = self.cfg.limits.timeout_maxima();
        ctx.wait(Self::reconcile(store, retention, maxima).into_actor(self).map(|res, act, ctx| {
            match res {
                Ok((boards, queued, interrupted)) => {
                    for r in boards {
                        if let Some(s) = act.boards.get_mut(&r.name) {
                            s.health = r.health;
                            s.health_reason = r.health_reason;
                            s.last_health_check = r.last_health_check;
                        }
                    }
                    for j in &interrupted {
                        let Some(name) = &j.board else { continue };
                        if let Some(s) = act.boards.get_mut(name) {
                            if s.health == BoardHealth::Good {
                                s.health = BoardHealth::Unknown;
                                s.health_reason = Some("dispatcher restarted during a job".into());
                                act.persist_board(name);
                            }
                        }
                    }
                    for j in queued {
                        if j.health_check {
                            // A health check that never started: the boards
                            // get fresh ones as they need them.
                            let fut = act.store.update_job(j.id, |r| {
                                r.finish(JobOutcome::canceled("health check superseded after a restart"));
                                Ok(())
                            });
                            actix::spawn(async move {
                                let _ = fut.await;
                            });
                            continue;
                        }
                        match stored_definition(&j, &act.cfg.limits.timeout_maxima()) {
                            Ok(def) => act.enqueue(Queued::of(&j, def), ctx),
                            Err(e) => {
                                tracing::error!(job = j.id, error = %e, "stored job no longer parses");
                                let msg = format!("definition no longer valid: {e}");
                                let fut = act.store.update_job(j.id, move |r| {
                                    r.finish(JobOutcome::incomplete(ErrorClass::Configuration, msg));
                                    Ok(())
                                });
                                actix::spawn(async move {
                                    let _ = fut.await;
                                });
                            }
                        }
                    }
                    act.ready = true;
                    act.schedule(ctx);
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading the store at start failed");
                    System::current().stop_with_code(1);
                }
            }
        }));
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

impl Handler<BoardReport> for LabActor {
    type Result = ();
    fn handle(&mut self, msg: BoardReport, ctx: &mut Context<Self>) {
        match msg {
            BoardReport::Phase { board, phase } => {
                if let Some(s) = self.boards.get_mut(&board) {
                    if s.phase != phase {
                        s.phase_since = now_ms();
                    }
                    s.phase = phase;
                }
            }
            BoardReport::JobEnded {
                board,
                job,
                outcome,
                timing,
            } => self.finish_timed(job, &board, outcome, timing, ctx),
            BoardReport::Died { board, job } => {
                tracing::error!(%board, "board actor died; replacing it");
                let Some(slot) = self.boards.get(&board) else {
                    return;
                };
                let (cfg, dt) = (slot.cfg.clone(), slot.dt.clone());
                // The job the lab gave the board, even if the actor died
                // before it took note of it.
                let job = job.or(slot.job);
                let (addr, power) = self.start_board(&cfg, &dt, ctx);
                if let Some(s) = self.boards.get_mut(&board) {
                    s.addr = addr.clone();
                    s.power = power;
                    s.phase = Phase::Off;
                    // Retired and maintenance boards stay so; anything else
                    // must prove itself again.
                    if s.health.schedulable() || s.health == BoardHealth::Bad {
                        s.health = BoardHealth::Unknown;
                        s.health_reason = Some("board actor crashed".into());
                    }
                }
                self.persist_board(&board);
                // The dead actor may have left the board powered; the new one
                // powers it off before the board is free for the next job.
                let name = board.clone();
                ctx.spawn(
                    async move { addr.send(PowerBoard(PowerAction::Off)).await }
                        .into_actor(self)
                        .map(move |r, act, ctx| {
                            if !matches!(r, Ok(Ok(()))) {
                                tracing::warn!(board = %name, result = ?r, "power off after a crash failed");
                            }
                            match job {
                                Some(id) => act.finish(
                                    id,
                                    &name,
                                    JobOutcome::incomplete(ErrorClass::Bug, "board actor crashed"),
                                    ctx,
                                ),
                                None => act.schedule(ctx),
                            }
                        }),
                );
            }
        }
    }
}

/// A stored job's definition as it is queued: parsed again from the text
/// it was submitted with, its timeouts capped by the lab's maxima.
fn stored_definition(
    j: &JobRecord,
    maxima: &job::TimeoutMaxima,
) -> Result<JobDefinition, job::JobError> {
    let mut def = job::parse(&format!("job {}", j.id), &j.definition)?.definition;
    def.cap_timeouts(maxima);
    Ok(def)
}

/// The next attempt of a job that ended with an Infrastructure error, if
/// its `failure_retry` allows one more: the record to store.
fn next_attempt(j: &JobRecord, maxima: &job::TimeoutMaxima) -> Option<JobRecord> {
    if j.health != JobHealth::Incomplete
        || j.error_class != Some(ErrorClass::Infrastructure)
        || j.health_check
    {
        return None;
    }
    let def = stored_definition(j, maxima).ok()?;
    if def.failure_retry.unwrap_or(1) <= j.attempt {
        return None;
    }
    let rec = JobRecord {
        retry_of: Some(j.id),
        attempt: j.attempt + 1,
        submitter_uid: j.submitter_uid,
        submitter_gid: j.submitter_gid,
        submitter_groups: j.submitter_groups.clone(),
        ..JobRecord::submitted(
            j.name.clone(),
            j.device_type.clone(),
            j.priority,
            j.tags.clone(),
            j.submitter.clone(),
            j.definition.clone(),
        )
    };
    Some(rec)
}

fn log_prune(r: Result<crate::store::PruneReport, crate::store::StoreError>) {
    match r {
        Ok(p) if p.jobs > 0 => tracing::info!(
            jobs = p.jobs,
            bytes = p.bytes,
            kept_bytes = p.kept_bytes,
            "retention: dropped old console logs"
        ),
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "retention: pruning logs failed"),
    }
}

fn not_found(board: &str) -> ApiError {
    ApiError::new(ErrorCode::NoSuchBoard, format!("no such board `{board}`"))
}

impl LabRequest {
    /// A query that only reads job records, which the store owns: the
    /// socket server answers it with [`read_query`] on its own thread,
    /// without a turn of the lab actor.
    pub fn reads_records(&self) -> bool {
        matches!(
            self,
            LabRequest::Jobs(_)
                | LabRequest::Job { .. }
                | LabRequest::Results { .. }
                | LabRequest::LogSource { .. }
        )
    }
}

/// Answers a query for which [`LabRequest::reads_records`] holds, from the
/// store alone.
///
/// Job records need no actor to read them: every change to one is in sled
/// before it is acknowledged, so a read here sees every acknowledged change,
/// exactly what the lab actor would read for the same query.
pub async fn read_query(store: &StoreReader, req: LabRequest) -> Result<LabReply, ApiError> {
    Ok(match req {
        LabRequest::Jobs(filter) => LabReply::Jobs(store.list_jobs(filter).await?),
        LabRequest::Job { job } => {
            let j = store.job(job).await?;
            let ev = store.events(job).await?;
            LabReply::Job(Box::new(j), ev)
        }
        LabRequest::Results { job } => {
            let j = store.job(job).await?;
            LabReply::Results(Box::new(j), store.results(job).await?)
        }
        LabRequest::LogSource { job } => {
            store.job(job).await?;
            // A log is read in pieces as it streams, however long it is:
            // on the blocking pool.
            LabReply::LogSource(store.reading_pooled())
        }
        _ => {
            return Err(ApiError::new(
                ErrorCode::Internal,
                "read_query was given a request that is not a read of job records",
            ))
        }
    })
}

/// Refuses a job whose `file://` artifacts its submitter may not have
/// deployed (see [`crate::local_file`]), naming the first one's key path.
fn check_local_files(
    files: &[(crate::error::Location, String)],
    reader: Option<&Identity>,
    roots: &crate::local_file::FileRoots,
) -> Result<(), ApiError> {
    use crate::local_file::FileRefusal;
    for (at, path) in files {
        if let Err(e) = crate::local_file::open(path, reader, roots) {
            // A file not there yet may be by the time the job runs (a build
            // still writing it): its deploy checks everything again.
            if matches!(&e, FileRefusal::Unreadable { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
            {
                continue;
            }
            let code = match e {
                FileRefusal::NoRoots { .. }
                | FileRefusal::OutsideRoots { .. }
                | FileRefusal::Unreadable { .. }
                | FileRefusal::NotPublic { .. } => ErrorCode::PermissionDenied,
                FileRefusal::NotRegular { .. }
                | FileRefusal::KernelFs { .. }
                | FileRefusal::Raced { .. } => ErrorCode::InvalidJob,
            };
            return Err(ApiError {
                code,
                message: format!("{at}: {e}"),
                location: Some(at.clone()),
            });
        }
    }
    Ok(())
}

impl Handler<LabRequest> for LabActor {
    type Result = ResponseActFuture<Self, Result<LabReply, ApiError>>;

    fn handle(&mut self, msg: LabRequest, _ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        let ready = |r: Result<LabReply, ApiError>| -> Self::Result { Box::pin(fut::ready(r)) };
        match msg {
            LabRequest::Submit {
                definition,
                file,
                caller,
            } => {
                if definition.len() > self.cfg.limits.max_job_bytes {
                    return ready(Err(ApiError::new(
                        ErrorCode::InvalidJob,
                        format!(
                            "{file}: job definition is {} bytes; the limit is {}",
                            definition.len(),
                            self.cfg.limits.max_job_bytes
                        ),
                    )));
                }
                let parsed = match job::parse(&file, &definition) {
                    Ok(p) => p,
                    Err(e) => {
                        let first = e.first().clone();
                        return ready(Err(ApiError {
                            code: e.code(),
                            message: e.to_string(),
                            location: Some(first.location),
                        }));
                    }
                };
                if let Err(e) = self.check_runnable(&parsed.definition) {
                    return ready(Err(e));
                }
                let mut def = parsed.definition;
                let mut warnings = parsed.warnings;
                for (path, message) in def.cap_timeouts(&self.cfg.limits.timeout_maxima()) {
                    warnings.push(Diagnostic {
                        code: ErrorCode::InvalidJob,
                        location: crate::error::Location {
                            file: Some(file.clone()),
                            path: Some(path),
                            line: None,
                            column: None,
                        },
                        message,
                    });
                }
                let rec = JobRecord {
                    submitter_uid: Some(caller.uid),
                    submitter_gid: Some(caller.gid),
                    submitter_groups: Some(caller.groups.clone()),
                    ..JobRecord::submitted(
                        def.job_name.clone(),
                        def.device_type.clone(),
                        def.priority,
                        def.tags.clone(),
                        caller.name,
                        definition,
                    )
                };
                let files = parsed.files;
                let reader = rec.reader();
                let roots = crate::local_file::FileRoots::new(&self.cfg.deploy.file_roots);
                Box::pin(
                    async move {
                        if !files.is_empty() {
                            // Opening files may block (and runs with the
                            // submitter's rights on a thread of its own).
                            tokio::task::spawn_blocking(move || {
                                check_local_files(&files, reader.as_ref(), &roots)
                            })
                            .await
                            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))??;
                        }
                        Ok::<_, ApiError>(store.insert_job(rec).await?)
                    }
                    .into_actor(self)
                    .map(move |res, act, ctx| {
                        let r = res?;
                        act.metrics.job_submitted();
                        act.enqueue(Queued::of(&r, def), ctx);
                        act.schedule(ctx);
                        Ok(LabReply::Submitted { id: r.id, warnings })
                    }),
                )
            }
            LabRequest::Cancel { job, caller } => {
                Box::pin(async move { store.job(job).await }.into_actor(self).then(
                    move |r, act, _ctx| -> Self::Result {
                        match r {
                            Err(e) => Box::pin(fut::ready(Err(e.into()))),
                            Ok(j) if !caller.may_cancel(&j) => Box::pin(fut::ready(Err(
                                caller.denied(&format!("cancel job {job} of {}", j.submitter))
                            ))),
                            Ok(_) => act.cancel(job),
                        }
                    },
                ))
            }
            req @ (LabRequest::Jobs(_)
            | LabRequest::Job { .. }
            | LabRequest::Results { .. }
            | LabRequest::LogSource { .. }) => {
                Box::pin(async move { read_query(&store.reader(), req).await }.into_actor(self))
            }
            LabRequest::Reload { caller } => {
                if let Err(e) = caller.require_admin("reload the config") {
                    return ready(Err(e));
                }
                let Some(path) = self.config_path.clone() else {
                    return ready(Err(ApiError::new(
                        ErrorCode::InvalidState,
                        "this lab runs without a config file (the demo); nothing to reload",
                    )));
                };
                Box::pin(
                    async move {
                        // Reading files may block: off the actor thread.
                        tokio::task::spawn_blocking(move || {
                            let cfg = LabConfig::load(&path)?;
                            let dts = crate::daemon::load_device_types(&cfg)?;
                            let hcs = load_health_checks(&cfg)?;
                            Ok::<_, ApiError>((cfg, dts, hcs))
                        })
                        .await
                        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
                    }
                    .into_actor(self)
                    .map(|r, act, ctx| {
                        let (cfg, dts, hcs) = r.inspect_err(|e| {
                            tracing::error!(error = %e.message, "reload refused; the running config stays");
                        })?;
                        Ok(LabReply::Reloaded(act.apply_config(cfg, dts, hcs, ctx)?))
                    }),
                )
            }
            LabRequest::Metrics => {
                let mut scrape = crate::metrics::Scrape {
                    queue_depth: self.queue.len(),
                    ..Default::default()
                };
                let mut by_state: BTreeMap<&'static str, usize> = BTreeMap::new();
                *by_state.entry("Submitted").or_default() += self.queue.len();
                for s in self.boards.values() {
                    *scrape
                        .boards
                        .entry((s.state.to_string(), s.health.to_string()))
                        .or_default() += 1;
                    if s.job.is_some() {
                        let st = if s.state == BoardState::Running {
                            "Running"
                        } else {
                            "Scheduled"
                        };
                        *by_state.entry(st).or_default() += 1;
                    }
                }
                scrape.jobs_by_state = by_state.into_iter().collect();
                let metrics = self.metrics.clone();
                Box::pin(
                    async move {
                        // sled walks its files for this: off the actor thread.
                        let s2 = store.clone();
                        scrape.store_disk_bytes =
                            tokio::task::spawn_blocking(move || s2.disk_bytes())
                                .await
                                .unwrap_or(0);
                        Ok(LabReply::Text(metrics.render(scrape)))
                    }
                    .into_actor(self),
                )
            }
            LabRequest::Boards => ready(Ok(LabReply::Boards(
                self.boards
                    .iter()
                    .map(|(n, s)| BoardInfo {
                        name: n.clone(),
                        device_type: s.cfg.device_type.clone(),
                        tags: s.cfg.tags.clone(),
                        state: s.state,
                        health: s.health,
                        health_reason: s.health_reason.clone(),
                        job: s.job,
                        phase: s.phase,
                        phase_since: s.phase_since,
                        job_since: s.job.and(s.job_since),
                        power: s.power.state(),
                    })
                    .collect(),
                self.queue.len(),
            ))),
            LabRequest::SetHealth {
                board,
                health,
                reason,
                caller,
            } => {
                if let Err(e) = caller.require_admin(&format!("change the health of {board}")) {
                    return ready(Err(e));
                }
                let Some(s) = self.boards.get_mut(&board) else {
                    return ready(Err(not_found(&board)));
                };
                if health == BoardHealth::Unknown {
                    // Online, as LAVA: the board proves itself again.
                    s.pending_health = None;
                    s.health = BoardHealth::Unknown;
                } else if s.state != BoardState::Idle {
                    s.pending_health = Some(health);
                } else {
                    s.health = health;
                }
                s.health_reason = reason;
                let rec = BoardRecord {
                    name: board.clone(),
                    // A pending change is stored as done: if the daemon dies
                    // first, the job is cut short anyway and the admin's
                    // wish still holds after the restart.
                    health: s.pending_health.unwrap_or(s.health),
                    health_reason: s.health_reason.clone(),
                    last_health_check: s.last_health_check,
                };
                Box::pin(
                    async move { store.put_board(rec).await }
                        .into_actor(self)
                        .map(|r, act, ctx| {
                            r?;
                            act.schedule(ctx);
                            Ok(LabReply::Done)
                        }),
                )
            }
            LabRequest::Power {
                board,
                action,
                caller,
            } => {
                if let Err(e) = caller.require_admin(&format!("switch the power of {board}")) {
                    return ready(Err(e));
                }
                let Some(s) = self.boards.get(&board) else {
                    return ready(Err(not_found(&board)));
                };
                if s.health != BoardHealth::Maintenance || s.job.is_some() {
                    return ready(Err(ApiError::new(ErrorCode::InvalidState, format!("board {board} must be idle in maintenance for manual power (it is {}, {})", s.state, s.health))));
                }
                let addr = s.addr.clone();
                Box::pin(
                    async move {
                        addr.send(PowerBoard(action))
                            .await
                            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
                            .map_err(|e| ApiError::new(ErrorCode::Hardware, e))?;
                        Ok(LabReply::Done)
                    }
                    .into_actor(self),
                )
            }
            LabRequest::WatchConsole { board } => {
                let Some(s) = self.boards.get(&board) else {
                    return ready(Err(not_found(&board)));
                };
                let addr = s.addr.clone();
                Box::pin(
                    async move {
                        let (ring, rx) = addr
                            .send(WatchConsole)
                            .await
                            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
                        Ok(LabReply::ConsoleStream(ring, rx))
                    }
                    .into_actor(self),
                )
            }
            LabRequest::TypeConsole {
                board,
                data,
                caller,
            } => {
                if let Err(e) = caller.require_admin(&format!("type on the console of {board}")) {
                    return ready(Err(e));
                }
                let Some(s) = self.boards.get(&board) else {
                    return ready(Err(not_found(&board)));
                };
                if s.health != BoardHealth::Maintenance || s.job.is_some() {
                    return ready(Err(ApiError::new(
                        ErrorCode::InvalidState,
                        format!("board {board} must be idle in maintenance to type on its console (it is {}, {})", s.state, s.health),
                    )));
                }
                let addr = s.addr.clone();
                Box::pin(
                    async move {
                        addr.send(TypeConsole(data))
                            .await
                            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
                            .map_err(|e| ApiError::new(ErrorCode::Hardware, e))?;
                        Ok(LabReply::Done)
                    }
                    .into_actor(self),
                )
            }
            // Anyone may watch a console (as `console_watch`); typing on
            // it is for admins.
            LabRequest::IdleConsole { board } => {
                let Some(s) = self.boards.get(&board) else {
                    return ready(Err(not_found(&board)));
                };
                let addr = s.addr.clone();
                Box::pin(
                    async move {
                        let b = addr
                            .send(IdleConsole)
                            .await
                            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
                        Ok(LabReply::Bytes(b))
                    }
                    .into_actor(self),
                )
            }
        }
    }
}

impl LabActor {
    /// Cancels a job the caller may cancel: a queued one ends Canceled now,
    /// a running one is stopped by its board (which powers it off).
    fn cancel(&mut self, job: JobId) -> ResponseActFuture<Self, Result<LabReply, ApiError>> {
        let store = self.store.clone();
        if let Some(pos) = self.queue.iter().position(|q| q.id == job) {
            let q = self.queue.remove(pos);
            return Box::pin(
                async move {
                    store
                        .update_job(job, |j| {
                            j.finish(JobOutcome::canceled("canceled before it started"));
                            Ok(())
                        })
                        .await?;
                    Ok::<_, ApiError>(())
                }
                .into_actor(self)
                .map(move |r, act, ctx| {
                    match &r {
                        // Nothing changed on disk: the job stays queued.
                        Err(_) => act.enqueue(q, ctx),
                        Ok(()) => act.metrics.job_finished("Canceled"),
                    }
                    r.map(|_| LabReply::Done)
                }),
            );
        }
        let running = self
            .boards
            .values()
            .find(|s| s.job == Some(job))
            .map(|s| s.addr.clone());
        Box::pin(
            async move {
                let Some(addr) = running else {
                    let j = store.job(job).await?;
                    return Err(ApiError::new(
                        ErrorCode::InvalidState,
                        format!("job {job} is {} {}; nothing to cancel", j.state, j.health),
                    ));
                };
                store
                    .update_job(job, |j| {
                        if j.state == JobState::Finished {
                            return Err("job already finished".into());
                        }
                        j.state = JobState::Canceling;
                        Ok(())
                    })
                    .await?;
                addr.do_send(StopJob {
                    id: job,
                    outcome: JobOutcome::canceled("canceled by request"),
                });
                Ok(LabReply::Done)
            }
            .into_actor(self),
        )
    }
}

impl LabActor {
    /// Refuses a job that no board of this lab could ever run.
    fn check_runnable(&self, def: &JobDefinition) -> Result<(), ApiError> {
        let Some(dt) = self.device_types.get(&def.device_type) else {
            return Err(ApiError::new(
                ErrorCode::NoSuchDeviceType,
                format!("unknown device type `{}`", def.device_type),
            ));
        };
        let any = self
            .boards
            .values()
            .any(|s| Self::matches(s, def) && s.health != BoardHealth::Retired);
        if !any {
            return Err(ApiError::new(
                ErrorCode::NoSuchDeviceType,
                format!(
                    "no board of device type `{}` with tags {:?} in this lab",
                    def.device_type, def.tags
                ),
            ));
        }
        for a in &def.actions {
            if let job::Action::Boot(b) = a {
                let reject = |m: String| Err(ApiError::new(ErrorCode::InvalidJob, m));
                match b.method {
                    job::BootMethod::UBoot if dt.bootloader.is_none() => {
                        return reject(format!(
                            "device type `{}` has no bootloader; boot it with `method: minimal` or `qemu`",
                            dt.name
                        ))
                    }
                    job::BootMethod::Qemu if dt.direct_boot.is_none() => {
                        return reject(format!(
                            "device type `{}` cannot boot a kernel directly (no `direct_boot`); use `method: u-boot`",
                            dt.name
                        ))
                    }
                    _ => {}
                }
                if let BootCommands::Named(n) = &b.commands {
                    if !dt
                        .bootloader
                        .as_ref()
                        .is_some_and(|bl| bl.commands.contains_key(n))
                    {
                        return Err(ApiError::new(
                            ErrorCode::InvalidJob,
                            format!("device type `{}` has no boot commands named `{n}`", dt.name),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
