//! The board actor: the one owner of a board's console, power relay and boot
//! state machine.
//!
//! A console connection's reads are a stream of this actor's context, so
//! the actor sees every byte in order: while a job runs they are queued for
//! the job's log (the store writes them in groups) and passed to the job's
//! runner through its `ConsoleFeed`; while idle they go to a bounded ring
//! buffer. A job runs as a runner future spawned in this actor's
//! context (see `runner`); cancelling is dropping that future, after which
//! the actor powers the board off itself. The actor never blocks: store
//! writes and power commands are futures.
//!
//! ## Console bytes as an actor stream
//!
//! A console connection's reads are a stream added to the board actor's
//! context (`ctx.add_stream`), each item tagged with the connection's
//! generation. The actor handles a read where its context polls it: no
//! message envelope, reply channel or second task's wake-up per read (at
//! 1000 streaming boards that machinery was about a sixth of the actors'
//! thread). The actor counts the bytes, copies them into the job's queued
//! log chunk (`Store::queue_log`) and hands the read's own buffer to the
//! runner; when idle, to a bounded ring buffer. End of file or an error is
//! the stream's last item and triggers a reconnect with backoff, noted in
//! the job log; a new connection cancels the old one's stream, so no stale
//! bytes arrive. Memory stays bounded under a flood: the stream is read
//! again only after the actor handled the last read (so the kernel's buffer
//! fills and the source slows down), the runner's feed is bounded by bytes
//! waiting (`ConsoleFeed`; the excess is dropped for matching and noted),
//! and a job's stored log stops at `limits.max_job_log_bytes` with a note.
//! The reads live in the actor's context and its writer task is owned
//! (`AbortOnDrop`) by the actor, so neither outlives it nor holds the
//! console open for a replacement.
//!
//! ## Supervision
//!
//! actix does not restart an actor whose handler panicked: tokio catches the
//! panic and drops the actor's context, and that `Drop` still runs
//! `stopped`, so `stopped` cannot tell a crash from a stop. Each
//! `BoardActor` holds a `DeathGuard` whose `Drop` always sends
//! `BoardReport::Died` to the lab (a board actor never stops on purpose
//! while the lab runs). The lab starts a new board actor, has it power the
//! board off, then ends the job Incomplete (Bug) and sets the board Unknown.
//! A start request that finds the mailbox closed is left to that report. A
//! panic is logged through tracing by the daemon's panic hook.
//! (Event-driven: no polling of `Addr::connected`.) Tests inject panics with
//! `LABD_INJECT_PANIC` (module `faults`), once per listed fault.
//!
//! ## Invariants
//!
//! The only owner of its console and power relay. It never blocks; power
//! commands and store writes are futures. It reports the end of a job only
//! after the power-off attempt and the last log flush. It never waits on the
//! store for console bytes (they are queued). Its console tasks never
//! outlive it; it stops on purpose only on `Retire`, otherwise its death is
//! reported. A job's log never exceeds `max_job_log_bytes` (plus labd's own
//! notes).

use crate::console::Console;
use crate::device_type::DeviceType;
use crate::job::JobDefinition;
use crate::model::{ErrorClass, JobEvent, JobId, JobOutcome, PhaseTime};
use crate::power::{Power, PowerAction};
use crate::runner::{self, ConsoleFeed, FeedSender, Phase, RunCtx, TftpInfo};
use crate::store::Store;
use actix::prelude::*;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// What a board actor tells the lab actor.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum BoardReport {
    Phase {
        board: String,
        phase: Phase,
    },
    JobEnded {
        board: String,
        job: JobId,
        outcome: JobOutcome,
        timing: Vec<PhaseTime>,
    },
    /// The actor is gone without stopping normally (a panic unwound it).
    Died {
        board: String,
        job: Option<JobId>,
    },
}

/// Why a board refused a request.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("board {board} is busy with job {job}")]
    Busy { board: String, job: JobId },
    #[error("board {board} is running job {job}")]
    Running { board: String, job: JobId },
    #[error("board {0}: console not attached")]
    NotAttached(String),
    #[error("board {0}: console closed")]
    ConsoleClosed(String),
    #[error(transparent)]
    Power(#[from] crate::power::PowerError),
}

#[derive(Message)]
#[rtype(result = "Result<(), BoardError>")]
pub struct StartJob {
    pub id: JobId,
    pub def: JobDefinition,
    /// Whose rights the job's `file://` artifacts are read with.
    pub reader: Option<crate::model::Identity>,
}

/// Ends the running job early with the given outcome (a cancel, or the
/// end of the shutdown grace); the board is powered off as after any job.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopJob {
    pub id: JobId,
    pub outcome: JobOutcome,
}

#[derive(Message)]
#[rtype(result = "Result<(), BoardError>")]
pub struct PowerBoard(pub PowerAction);

/// The idle console: what the board printed while no job ran.
#[derive(Message)]
#[rtype(result = "Vec<u8>")]
pub struct IdleConsole;

/// Watch the console: what the idle ring holds now, then every byte the
/// board prints from here on.
#[derive(Message)]
#[rtype(result = "(Vec<u8>, tokio::sync::broadcast::Receiver<Vec<u8>>)")]
pub struct WatchConsole;

/// Bytes typed by an admin on an idle board's console. They go into the
/// board's idle log too, so every byte typed and shown is kept.
#[derive(Message)]
#[rtype(result = "Result<(), BoardError>")]
pub struct TypeConsole(pub Vec<u8>);

/// What a console's reads give its board actor, tagged with the
/// connection's generation: an actor stream's item (see `BoardActor::connect`).
enum ConsoleEvent {
    Bytes(Vec<u8>),
    /// End of file or a read error: the connection is gone, and the stream ends.
    Lost(String),
}

/// The relay saw the board lose power by itself (a QEMU that exited).
#[derive(Message)]
#[rtype(result = "()")]
struct PowerLost(String);

#[derive(Message)]
#[rtype(result = "()")]
struct PhaseChanged(Phase);

/// Tells the lab when the actor is dropped: actix does not restart an actor
/// whose handler panicked. tokio catches the panic and drops the actor's
/// context, which (in its own `Drop`) stops the actor and even calls
/// `stopped`, so `stopped` cannot tell a crash from a stop: this guard's
/// `Drop` is the signal. A board actor stops on purpose only when the lab
/// retires it (`Retire`, on a reload), which disarms the guard first; at
/// shutdown the lab is gone and the report goes nowhere.
struct DeathGuard {
    board: String,
    lab: Recipient<BoardReport>,
    job: Option<JobId>,
    armed: bool,
}

impl Drop for DeathGuard {
    fn drop(&mut self) {
        if self.armed {
            self.lab.do_send(BoardReport::Died {
                board: self.board.clone(),
                job: self.job,
            });
        }
    }
}

/// Stops an idle board actor for good (its board left the config, or its
/// config changed): the console is closed and no death is reported.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retire;

/// Aborts a task when dropped, so a task never outlives its owner.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct CurrentJob {
    id: JobId,
    input: Option<FeedSender>,
    /// The log reached the configured cap; further bytes are not kept.
    truncated: bool,
    /// Bytes the runner could not take (it was too far behind).
    unfed: u64,
    /// Each phase's duration so far.
    timing: Vec<PhaseTime>,
    /// How long the console may stay lost before the job ends.
    reconnect_limit: Duration,
    handle: Option<SpawnHandle>,
    /// labd's own notes for the job's log (a lost console, a truncation),
    /// queued in order with the console's bytes by `flush_log`.
    log_buf: Vec<u8>,
    /// The job's log bytes queued so far (console and notes).
    log_offset: u64,
    ending: bool,
    /// The job's `secrets` values, masked in what is kept and shown of
    /// the console (the runner sees the bytes as they are).
    mask: Option<crate::secrets::Masker>,
}

impl CurrentJob {
    /// Hands the job's buffered notes to the store (see `BoardActor::flush_log`).
    fn flush_log(&mut self, store: &Store) {
        if self.log_buf.is_empty() {
            return;
        }
        store.queue_log(self.id, self.log_offset, &self.log_buf);
        self.log_offset += self.log_buf.len() as u64;
        self.log_buf.clear();
    }
}

pub struct BoardActor {
    name: String,
    dt: DeviceType,
    console: Arc<dyn Console>,
    power: Arc<dyn Power>,
    store: Store,
    tftp: TftpInfo,
    lab: Recipient<BoardReport>,
    writer: Option<mpsc::UnboundedSender<Vec<u8>>>,
    /// The console's writer task and its reads (an actor stream); dropping
    /// the task and cancelling the reads (on reconnect), or dropping both
    /// with a crashed actor's context, closes the console so that the next
    /// owner can open it and no stale reader steals its bytes.
    console_writer: Option<AbortOnDrop>,
    console_reads: Option<SpawnHandle>,
    /// This board's console byte counter (`labd_console_bytes_total`), kept
    /// so that a read does not look its label up.
    console_bytes: prometheus_client::metrics::counter::Counter,
    /// Whether the console is attached, for runners waiting to power on.
    console_up: tokio::sync::watch::Sender<bool>,
    /// How many times the console was attached, for a relay that lets its
    /// board run only once the console has it (QEMU).
    console_attached: tokio::sync::watch::Sender<u64>,
    /// Everyone watching the console (`labctl console`).
    watchers: tokio::sync::broadcast::Sender<Vec<u8>>,
    console_gen: u64,
    reconnect_delay: Duration,
    phase: Phase,
    job: Option<CurrentJob>,
    ring: VecDeque<u8>,
    ring_cap: usize,
    /// How console reads are batched on their way to this actor.
    pacing: crate::console::ReadPacing,
    /// The most console bytes kept per job.
    max_log: u64,
    /// How long a lost console may stay away during a job, unless the job's
    /// own connection timeout says otherwise.
    reconnect_limit: Duration,
    /// Since when the console is lost, why, and the timer that gives up on
    /// the running job.
    lost: Option<(std::time::Instant, String, Option<SpawnHandle>)>,
    metrics: crate::metrics::Metrics,
    /// Every log line of this actor is inside it (and a job's span is its child).
    span: tracing::Span,
    /// When the current phase began.
    phase_since: std::time::Instant,
    guard: DeathGuard,
    /// The lab's boot slots, and the relay device this board shares.
    boot_slots: crate::boots::BootSlots,
    relay_device: Option<String>,
}

impl BoardActor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        dt: DeviceType,
        console: Box<dyn Console>,
        power: Arc<dyn Power>,
        store: Store,
        tftp: TftpInfo,
        lab: Recipient<BoardReport>,
        ring_cap: usize,
        max_log: u64,
        reconnect_limit: Duration,
        metrics: crate::metrics::Metrics,
    ) -> Self {
        let span = tracing::info_span!("board", board = %name);
        let console_bytes = metrics.console_bytes(&name);
        BoardActor {
            span,
            guard: DeathGuard {
                board: name.clone(),
                lab: lab.clone(),
                job: None,
                armed: true,
            },
            name,
            dt,
            console: Arc::from(console),
            power,
            store,
            tftp,
            lab,
            writer: None,
            console_writer: None,
            console_reads: None,
            console_bytes,
            console_up: tokio::sync::watch::channel(false).0,
            console_attached: tokio::sync::watch::channel(0).0,
            watchers: tokio::sync::broadcast::channel(256).0,
            console_gen: 0,
            reconnect_delay: Duration::from_millis(100),
            phase: Phase::Off,
            job: None,
            ring: VecDeque::new(),
            ring_cap,
            pacing: crate::console::ReadPacing::default(),
            max_log,
            reconnect_limit,
            lost: None,
            metrics,
            phase_since: std::time::Instant::now(),
            boot_slots: crate::boots::BootSlots::default(),
            relay_device: None,
        }
    }

    /// Console reads reach this actor in batches paced by `pacing`.
    pub fn with_read_pacing(mut self, pacing: crate::console::ReadPacing) -> Self {
        self.pacing = pacing;
        self
    }

    /// Boots of this board take a slot of `slots` (lab-wide, and per relay device).
    pub fn with_boot_slots(
        mut self,
        slots: crate::boots::BootSlots,
        relay_device: Option<String>,
    ) -> Self {
        self.boot_slots = slots;
        self.relay_device = relay_device;
        self
    }

    fn set_phase(&mut self, phase: Phase) {
        // How long each phase of a job took, per device type.
        if self.phase != Phase::Off && self.phase != phase {
            let took = self.phase_since.elapsed();
            self.metrics
                .phase(&self.dt.name, &self.phase.to_string(), took);
            if let Some(job) = &mut self.job {
                job.timing.push(PhaseTime {
                    phase: self.phase.to_string(),
                    ms: took.as_millis() as u64,
                });
            }
        }
        if self.phase != phase {
            self.phase_since = std::time::Instant::now();
        }
        self.phase = phase;
        self.lab.do_send(BoardReport::Phase {
            board: self.name.clone(),
            phase,
        });
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        let span = self.span.clone();
        let _in_board = span.enter();
        self.console_gen += 1;
        let gen = self.console_gen;
        let console = self.console.clone();
        ctx.spawn(async move { console.connect().await }.into_actor(self).map(
            move |res, act, ctx| match res {
                Ok(io) => act.attach(io, gen, ctx),
                Err(e) => {
                    tracing::warn!(board = %act.name, error = %e, "console connect failed");
                    act.schedule_reconnect(ctx);
                }
            },
        ));
    }

    /// Makes `io` the board's console connection `gen`: its reads become
    /// this actor's stream and its writer the console's.
    fn attach(&mut self, io: crate::console::ConsoleIo, gen: u64, ctx: &mut Context<Self>) {
        let span = self.span.clone();
        let _in_board = span.enter();
        tracing::info!(board = %self.name, console = %self.console.describe(), "console attached");
        self.reconnect_delay = Duration::from_millis(100);
        self.console_up.send_replace(true);
        self.console_attached.send_modify(|n| *n += 1);
        if let Some((since, _, timer)) = self.lost.take() {
            if let Some(t) = timer {
                ctx.cancel_future(t);
            }
            if let Some(job) = &mut self.job {
                let note = format!(
                    "\r\n[labd: console back after {:.1} s]\r\n",
                    since.elapsed().as_secs_f64()
                );
                job.log_buf.extend_from_slice(note.as_bytes());
            }
            self.flush_log();
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        self.writer = Some(tx);
        let mut writer = io.writer;
        let pacer = crate::console::ReadPacer::new(
            io.reader.pacing(self.pacing),
            tokio::time::Instant::now(),
        );
        // What labd writes is answered: its replies are read at once.
        let replies = pacer.replies();
        let w = tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if writer.write_all(&b).await.is_err() {
                    break;
                }
                let _ = writer.flush().await;
                replies.wrote();
            }
        });
        // The reads are a stream of this actor's context, not a
        // task sending messages: a read is handled where it is
        // polled, with no envelope, reply channel or second
        // task's wake-up per read (a cost per read at 1000
        // boards). The stream is polled only while the actor is,
        // and each read is handled before the next is made, so
        // memory is bounded under a flood: the kernel's buffer
        // fills and the sender slows down.
        let reads = futures_lite::stream::unfold(
            Some((io.reader, pacer, vec![0u8; 16 * 1024])),
            move |state| async move {
                let (mut reader, mut pacer, mut buf) = state?;
                match reader.read_batch(&mut buf, &mut pacer).await {
                    Ok(0) => Some(((gen, ConsoleEvent::Lost("end of file".into())), None)),
                    Ok(n) => {
                        let bytes = buf[..n].to_vec();
                        Some((
                            (gen, ConsoleEvent::Bytes(bytes)),
                            Some((reader, pacer, buf)),
                        ))
                    }
                    Err(e) => Some(((gen, ConsoleEvent::Lost(e.to_string())), None)),
                }
            },
        );
        if let Some(old) = self.console_reads.replace(ctx.add_stream(reads)) {
            ctx.cancel_future(old);
        }
        self.console_writer = Some(AbortOnDrop(w.abort_handle()));
    }

    /// Closes an ssh console at a job's end: it is opened per job, so the
    /// next job gets a fresh login and no session stays open while idle.
    /// Its reads are cancelled, so no loss is reported for it.
    fn close_ssh_console(&mut self, ctx: &mut Context<Self>) {
        if self.console.ssh().is_none() {
            return;
        }
        self.console_gen += 1;
        self.writer = None;
        if let Some(reads) = self.console_reads.take() {
            ctx.cancel_future(reads);
        }
        // Dropping the writer task drops ssh's last handle: it is killed.
        self.console_writer = None;
        self.console_up.send_replace(false);
    }

    fn schedule_reconnect(&mut self, ctx: &mut Context<Self>) {
        let delay = self.reconnect_delay;
        self.reconnect_delay = (delay * 2).min(Duration::from_secs(10));
        ctx.run_later(delay, |act, ctx| act.connect(ctx));
    }

    /// Hands the job's buffered console bytes to the store, which makes
    /// them durable within its log group time (see `Store::queue_log`).
    fn flush_log(&mut self) {
        if let Some(job) = &mut self.job {
            job.flush_log(&self.store);
        }
    }

    fn event(&self, id: JobId, kind: &str, message: String) {
        self.store.record_event(id, JobEvent::now(kind, message));
    }

    /// Ends the current job: stop the runner, power off, flush, report.
    fn end_job(&mut self, outcome: JobOutcome, ctx: &mut Context<Self>) {
        let Some(job) = &mut self.job else { return };
        if job.ending {
            return;
        }
        job.ending = true;
        if let Some(h) = job.handle.take() {
            ctx.cancel_future(h);
        }
        job.input = None;
        let id = job.id;
        self.close_ssh_console(ctx);
        self.set_phase(Phase::PoweringOff);
        self.event(id, "phase", Phase::PoweringOff.to_string());
        let power = self.power.clone();
        let relay = power.has_relay();
        let limit = self
            .dt
            .timeouts
            .get("power-off")
            .unwrap_or(Duration::from_secs(30));
        let nfs = self.tftp.nfs.clone();
        ctx.spawn(
            async move {
                let res = tokio::time::timeout(limit, power.switch(PowerAction::Off)).await;
                // The board is off: its NFS root goes (export, then tree)
                // before the job is reported ended.
                let unexported = match nfs {
                    Some(n) => n.remove(id).await.err(),
                    None => None,
                };
                (res, unexported)
            }
            .into_actor(self)
            .map(move |(res, unexported), act, _ctx| {
                if let Some(e) = unexported {
                    act.event(id, "nfs", format!("removing the job's NFS export: {e}"));
                }
                let msg = match res {
                    Ok(Ok(())) if !relay => "no relay: the board stays on".to_owned(),
                    Ok(Ok(())) => "board powered off".to_owned(),
                    Ok(Err(e)) => format!("power off failed: {e}"),
                    Err(_) => format!("power off timed out after {} s", limit.as_secs()),
                };
                act.event(id, "power-off", msg);
                // The end of a read that might have begun a secret's
                // value: no more bytes will tell, so it is kept as it is.
                if let Some(j) = act.job.as_mut() {
                    if let Some(rest) = j.mask.as_mut().map(|m| m.finish()) {
                        if !j.truncated {
                            j.log_buf.extend_from_slice(&rest);
                        }
                    }
                }
                act.flush_log();
                // Removing a job's files can take a while (freeing the
                // pages of a copied image): not on the actor's thread.
                let dir = act.tftp.root.join(id.to_string());
                tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir));
                // Off ends the PoweringOff phase, which counts too.
                act.set_phase(Phase::Off);
                let timing = act.job.take().map(|j| j.timing).unwrap_or_default();
                act.guard.job = None;
                act.lab.do_send(BoardReport::JobEnded {
                    board: act.name.clone(),
                    job: id,
                    outcome,
                    timing,
                });
            }),
        );
    }
}

impl Actor for BoardActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let addr = ctx.address();
        self.power.bind(crate::power::RelayHooks {
            console_attached: self.console_attached.subscribe(),
            lost: Box::new(move |why| addr.do_send(PowerLost(why))),
        });
        // An ssh console is opened by a job's boot, not held while idle.
        if self.console.ssh().is_none() {
            self.connect(ctx);
        }
    }
}

impl StreamHandler<(u64, ConsoleEvent)> for BoardActor {
    fn handle(&mut self, (gen, event): (u64, ConsoleEvent), ctx: &mut Context<Self>) {
        // A connection's reads are cancelled when it is replaced, so an
        // older generation should never arrive; if one did, it is ignored.
        if gen != self.console_gen {
            return;
        }
        match event {
            ConsoleEvent::Bytes(bytes) => self.console_read(bytes),
            ConsoleEvent::Lost(why) => self.console_lost(why, ctx),
        }
    }

    /// A connection's reads end right after reporting its loss, which is
    /// handled there; the default (stopping the actor) must not happen.
    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

impl BoardActor {
    /// One read of the console: counted, shown to watchers, kept in the
    /// job's log (or the idle ring) and handed to the job's runner.
    fn console_read(&mut self, bytes: Vec<u8>) {
        let n = bytes.len();
        self.console_bytes.inc_by(n as u64);
        // What may be kept and shown: with a job's secrets masked.
        let shown = match self.job.as_mut().and_then(|j| j.mask.as_mut()) {
            Some(m) => std::borrow::Cow::Owned(m.feed(&bytes)),
            None => std::borrow::Cow::Borrowed(&bytes[..]),
        };
        if self.watchers.receiver_count() > 0 && !shown.is_empty() {
            let _ = self.watchers.send(shown.to_vec());
        }
        let Some(job) = &mut self.job else {
            self.ring.extend(bytes);
            while self.ring.len() > self.ring_cap {
                self.ring.pop_front();
            }
            return;
        };
        let fed = job.input.as_ref().map(|input| input.has_room(n));
        match fed {
            Some(false) => {
                if job.unfed == 0 {
                    let _in_board = self.span.enter();
                    tracing::warn!(board = %self.name, job = job.id, "boot sequence too far behind the console; dropping its input");
                }
                job.unfed += n as u64;
            }
            Some(true) if job.unfed > 0 => {
                let note = format!("\r\n[labd: {} console bytes came faster than the job could read them and were not matched]\r\n", job.unfed);
                job.log_buf.extend_from_slice(note.as_bytes());
                job.unfed = 0;
            }
            _ => {}
        }
        // Notes first, then this read: the log keeps the order they came in.
        job.flush_log(&self.store);
        if !job.truncated {
            let cap = self.max_log;
            let shown_n = shown.len();
            let keep = shown_n.min(cap.saturating_sub(job.log_offset) as usize);
            if keep > 0 {
                // The store copies the bytes into the job's queued chunk, so
                // the read's buffer itself can go on to the runner.
                self.store.queue_log(job.id, job.log_offset, &shown[..keep]);
                job.log_offset += keep as u64;
            }
            if keep < shown_n {
                job.truncated = true;
                let note = format!("\r\n[labd: console log truncated at {cap} bytes (limits.max_job_log_bytes); the rest of this job's console is not kept]\r\n");
                job.log_buf.extend_from_slice(note.as_bytes());
                job.flush_log(&self.store);
                let _in_board = self.span.enter();
                tracing::warn!(board = %self.name, job = job.id, cap, "job console log truncated");
            }
        }
        if fed == Some(true) {
            if let Some(input) = &job.input {
                input.send(bytes);
            }
        }
    }
    /// The console's connection is gone (end of file or a read error):
    /// reconnect, and give the running job as long as its connection
    /// timeout allows.
    fn console_lost(&mut self, why: String, ctx: &mut Context<Self>) {
        let span = self.span.clone();
        let _in_board = span.enter();
        self.writer = None;
        // The reads end by themselves after this.
        self.console_reads = None;
        self.console_writer = None;
        self.console_up.send_replace(false);
        if self.console.ssh().is_some() {
            self.ssh_lost(why, ctx);
            return;
        }
        if self.console.attaches_after_power_on() {
            // A board that connects its own console (QEMU) closes it when
            // it powers off: that is no loss. A board dying during a job is
            // reported by its relay as lost power.
            tracing::info!(board = %self.name, reason = %why, "console closed by the board");
            // Waiting for the next connection is an accept: no backoff.
            self.connect(ctx);
            return;
        }
        tracing::warn!(board = %self.name, reason = %why, "console lost; reconnecting");
        let mut timer = None;
        if let Some(job) = &mut self.job {
            let note = format!("\r\n[labd: console lost: {}; reconnecting]\r\n", why);
            job.log_buf.extend_from_slice(note.as_bytes());
            if !job.ending {
                // The job waits for the console as long as its connection
                // timeout allows, then ends as an infrastructure failure.
                let (limit, id) = (job.reconnect_limit, job.id);
                timer = Some(ctx.run_later(limit, move |act, ctx| {
                    let Some((_, why, _)) = &act.lost else { return };
                    // Only the job that lost its console ends for it.
                    if act.job.as_ref().map(|j| j.id) != Some(id) {
                        return;
                    }
                    let msg = format!("console lost for {} s: {why}", limit.as_secs());
                    act.event(id, "console", msg.clone());
                    act.end_job(JobOutcome::incomplete(ErrorClass::Infrastructure, msg), ctx);
                }));
            }
        }
        self.flush_log();
        // A loss comes only from an attached console, and attaching clears
        // `lost`: this is the start of the gap.
        self.lost = Some((std::time::Instant::now(), why, timer));
        self.schedule_reconnect(ctx);
    }
}

impl BoardActor {
    /// An ssh session ended by itself (the board went away, its shell
    /// exited, the network dropped it). It is not reopened: a job's boot
    /// opens it, and a job that loses it mid-way ends as the lab's failure,
    /// naming what ssh said.
    fn ssh_lost(&mut self, why: String, ctx: &mut Context<Self>) {
        tracing::warn!(board = %self.name, reason = %why, "ssh session ended");
        let Some(job) = &mut self.job else { return };
        if job.ending {
            return;
        }
        let note = format!("\r\n[labd: {why}]\r\n");
        job.log_buf.extend_from_slice(note.as_bytes());
        let id = job.id;
        self.flush_log();
        self.event(id, "console", why.clone());
        self.end_job(JobOutcome::incomplete(ErrorClass::Infrastructure, why), ctx);
    }
}

/// A console connection the job's runner opened (an ssh boot's), for the
/// board to read and write from now on, as long as that job runs.
#[derive(Message)]
#[rtype(result = "()")]
struct AttachConsole {
    job: JobId,
    io: crate::console::ConsoleIo,
}

impl Handler<AttachConsole> for BoardActor {
    type Result = ();
    fn handle(&mut self, msg: AttachConsole, ctx: &mut Context<Self>) {
        // A connection opened for a job that has ended is dropped (which
        // closes it); a new one replaces the job's last (a boot's retry).
        if !self
            .job
            .as_ref()
            .is_some_and(|j| j.id == msg.job && !j.ending)
        {
            return;
        }
        self.console_gen += 1;
        let gen = self.console_gen;
        self.attach(msg.io, gen, ctx);
    }
}

impl Handler<PowerLost> for BoardActor {
    type Result = ();
    fn handle(&mut self, msg: PowerLost, ctx: &mut Context<Self>) {
        let span = self.span.clone();
        let _in_board = span.enter();
        tracing::warn!(board = %self.name, reason = %msg.0, "board lost power");
        let Some(job) = &mut self.job else { return };
        if job.ending {
            return;
        }
        let note = format!("\r\n[labd: board lost power: {}]\r\n", msg.0);
        job.log_buf.extend_from_slice(note.as_bytes());
        let id = job.id;
        let why = format!("board lost power: {}", msg.0);
        self.event(id, "power", why.clone());
        self.end_job(JobOutcome::incomplete(ErrorClass::Infrastructure, why), ctx);
    }
}

impl Handler<PhaseChanged> for BoardActor {
    type Result = ();
    fn handle(&mut self, msg: PhaseChanged, _ctx: &mut Context<Self>) {
        if self.job.as_ref().is_some_and(|j| !j.ending) {
            self.set_phase(msg.0);
        }
    }
}

impl Handler<StartJob> for BoardActor {
    type Result = Result<(), BoardError>;
    fn handle(&mut self, msg: StartJob, ctx: &mut Context<Self>) -> Self::Result {
        let span = self.span.clone();
        let _in_board = span.enter();
        if let Some(j) = &self.job {
            return Err(BoardError::Busy {
                board: self.name.clone(),
                job: j.id,
            });
        }
        let reconnect_limit = msg.def.timeouts.connection.unwrap_or(self.reconnect_limit);
        let (input_tx, input_rx) = ConsoleFeed::new();
        // Writes go through the current console writer; when the console is
        // being reconnected they are lost, like keystrokes on an unplugged cable.
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let addr = ctx.address();
        let writer_addr = addr.clone();
        tokio::spawn(async move {
            while let Some(b) = out_rx.recv().await {
                if writer_addr.send(WriteConsole(b)).await.is_err() {
                    break;
                }
            }
        });
        let phase_addr = addr.clone();
        let attach_addr = addr.clone();
        let job_id = msg.id;
        let board = self.name.clone();
        let mask = crate::secrets::Masker::new(msg.def.secrets.values().map(String::as_str));
        let rc = RunCtx {
            job_id: msg.id,
            def: msg.def,
            reader: msg.reader,
            dt: self.dt.clone(),
            input: input_rx,
            output: out_tx,
            power: self.power.clone(),
            store: self.store.clone(),
            tftp: self.tftp.clone(),
            boot_slots: self.boot_slots.clone(),
            relay_device: self.relay_device.clone(),
            // A board that connects its own console once powered (QEMU)
            // is powered without waiting for it.
            console_up: if self.console.attaches_after_power_on() {
                tokio::sync::watch::channel(true).1
            } else {
                self.console_up.subscribe()
            },
            ssh: self.console.ssh().cloned(),
            attach: Box::new(move |io| attach_addr.do_send(AttachConsole { job: job_id, io })),
            phase: Box::new(move |p| {
                if p == Phase::BootloaderCommands {
                    crate::faults::maybe_panic("board-boot", &board);
                }
                phase_addr.do_send(PhaseChanged(p))
            }),
        };
        // What the board printed before the job is not the job's.
        self.ring.clear();
        self.job = Some(CurrentJob {
            mask,
            id: msg.id,
            input: Some(input_tx),
            truncated: false,
            unfed: 0,
            timing: Vec::new(),
            reconnect_limit,
            handle: None,
            log_buf: Vec::new(),
            log_offset: 0,
            ending: false,
        });
        self.guard.job = Some(msg.id);
        crate::faults::maybe_panic("board-handler", &self.name);
        // Everything the runner logs carries the job and the board.
        let span = tracing::info_span!(parent: &self.span, "job", id = msg.id, board = %self.name);
        let run = tracing::Instrument::instrument(runner::run(rc), span);
        let handle = ctx.spawn(run.into_actor(self).map(|outcome, act, ctx| {
            if let Some(j) = &mut act.job {
                j.handle = None;
            }
            act.end_job(outcome, ctx)
        }));
        if let Some(j) = &mut self.job {
            j.handle = Some(handle);
        }
        Ok(())
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct WriteConsole(Vec<u8>);

impl Handler<Retire> for BoardActor {
    type Result = ();
    fn handle(&mut self, _msg: Retire, ctx: &mut Context<Self>) {
        self.guard.armed = false;
        ctx.stop();
    }
}

impl Handler<WriteConsole> for BoardActor {
    type Result = ();
    fn handle(&mut self, msg: WriteConsole, _ctx: &mut Context<Self>) {
        if let Some(w) = &self.writer {
            let _ = w.send(msg.0);
        }
    }
}

impl Handler<StopJob> for BoardActor {
    type Result = ();
    fn handle(&mut self, msg: StopJob, ctx: &mut Context<Self>) {
        let span = self.span.clone();
        let _in_board = span.enter();
        if self.job.as_ref().is_some_and(|j| j.id == msg.id) {
            let why = msg.outcome.error.clone().unwrap_or_default();
            self.event(msg.id, "stop", why);
            self.end_job(msg.outcome, ctx);
        }
    }
}

impl Handler<PowerBoard> for BoardActor {
    type Result = ResponseFuture<Result<(), BoardError>>;
    fn handle(&mut self, msg: PowerBoard, _ctx: &mut Context<Self>) -> Self::Result {
        if let Some(j) = &self.job {
            let err = BoardError::Running {
                board: self.name.clone(),
                job: j.id,
            };
            return Box::pin(async move { Err(err) });
        }
        let power = self.power.clone();
        Box::pin(async move { Ok(power.switch(msg.0).await?) })
    }
}

impl Handler<WatchConsole> for BoardActor {
    type Result = MessageResult<WatchConsole>;
    fn handle(&mut self, _msg: WatchConsole, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult((
            self.ring.iter().copied().collect(),
            self.watchers.subscribe(),
        ))
    }
}

impl Handler<TypeConsole> for BoardActor {
    type Result = Result<(), BoardError>;
    fn handle(&mut self, msg: TypeConsole, _ctx: &mut Context<Self>) -> Self::Result {
        if let Some(j) = &self.job {
            return Err(BoardError::Running {
                board: self.name.clone(),
                job: j.id,
            });
        }
        let Some(w) = &self.writer else {
            return Err(BoardError::NotAttached(self.name.clone()));
        };
        w.send(msg.0.clone())
            .map_err(|_| BoardError::ConsoleClosed(self.name.clone()))?;
        self.ring.extend(msg.0);
        while self.ring.len() > self.ring_cap {
            self.ring.pop_front();
        }
        Ok(())
    }
}

impl Handler<IdleConsole> for BoardActor {
    type Result = Vec<u8>;
    fn handle(&mut self, _msg: IdleConsole, _ctx: &mut Context<Self>) -> Vec<u8> {
        self.ring.iter().copied().collect()
    }
}
