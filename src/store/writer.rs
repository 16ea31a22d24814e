//! The store's writer thread: the one place that changes an open store
//! (`fsck --repair` works on one no daemon has open).
//!
//! Every write a `Store` handle makes (a job, an event, console bytes,
//! results, a board, a prune) is a [`Write`] sent to this thread, except
//! streaming console bytes, which wait in [`PendingLogs`] and only wake it.
//! It lives apart from the handle so that sled's blocking flush never runs
//! on an actor thread, and so that the ordering rules below are kept in one
//! loop instead of by every caller.
//!
//! Each turn it takes a batch of queued writes, applies them and flushes
//! once (group commit). What it guarantees, and the code relies on:
//!
//! 1. **Call order.** A handle queues a write when it is called, on the one
//!    channel every handle shares, and the writer applies writes in the
//!    order received: writes apply in the order they were queued (the lab
//!    relies on it: a job's Finished record lands before anything its
//!    board does next). Queued console bytes are the exception: they keep
//!    their order among themselves, and go before writes as 4 and 5 say.
//! 2. **Acknowledged only once durable.** A write's reply waits for the
//!    flush of the batch it was applied in; a failed flush fails every
//!    reply of that batch.
//! 3. **Published only once durable.** What changed is sent on the
//!    `changes` channel after the flush that made it durable, never
//!    before: a log follower never sees bytes a crash could take back.
//! 4. **A job's bytes before the job's write.** A write about a job first
//!    takes that job's queued console bytes, so they are durable (and
//!    indexed) before the write's reply: whoever sees a job Finished can
//!    read its last bytes. Other jobs' bytes are not taken with it: a
//!    Finished state waits for its own job's bytes only.
//! 5. **Everything before a sync.** A `Sync` or a `Prune` answers for
//!    every write before it, so it takes every queued byte first; so does
//!    closing.
//! 6. **An index entry never points at bytes a crash could lose.** Console
//!    bytes are appended to a segment, the segment is synced, and only then
//!    is the chunk indexed in sled. A job's chunks are indexed in order, so
//!    a reader always sees a prefix of its log.
//! 7. **A stopped log ends with its mark, never with a gap.** A job's log
//!    stops at the first byte the disk cannot take (or the first chunk a
//!    failed sync may have lost), with a truncation mark there; its later
//!    bytes are dropped. The mark is indexed after the job's chunks of the
//!    same turn. A job leaves the stopped set only once its Finished state
//!    is durable, so `Store::log_stopped`, asked from an update running on
//!    this thread, cannot change after the job's end is decided.
//! 8. **Waiting writes go first, without starving the drain.** Due console
//!    bytes are written in slices and indexed in pieces; a write waiting for
//!    its reply goes before the next slice or piece, and a turn that put one
//!    off does one next, so a stream of writes cannot stall the drain.
//! 9. **A full disk holds writes, it does not reorder them.** While space
//!    is short (see `space`) a submit is refused at once, because it changes
//!    nothing yet; every other write goes on in order while sled has room,
//!    and below that is held, in order, until space returns (or fails with
//!    `NoSpace` if the store closes meanwhile).
//!
//! An update's closure runs on this thread inside the write, with no lock
//! of the writer held: it may ask `Store::log_stopped`, but it must not
//! wait for another write, which would wait for it.

use super::retention::prune;
use super::segments::{self, Location};
use super::space;
use super::{be_u64, dec, enc, io_err, key2, state_key, tx_err};
use super::{Change, PruneReport, Refused, Retention, StoreError, Trees};
use crate::model::{BoardRecord, JobEvent, JobId, JobRecord, JobState, TestCase};
use sled::transaction::ConflictableTransactionError;
use sled::Transactional;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, oneshot};

/// The most writes applied before one flush.
const MAX_BATCH: usize = 512;
/// How long a batch of queued console bytes waits for more before its
/// flush: a console byte is durable within this of its arrival.
const LOG_GROUP: std::time::Duration = std::time::Duration::from_millis(500);
/// Room a job's queued chunk starts with: a log group of a console at
/// 115200 baud (11 520 bytes/s for 500 ms) fits without growing it.
const LOG_CHUNK_RESERVE: usize = 8 << 10;

/// The most queued console bytes written in one go once their log group is
/// due: at 1000 streaming boards a whole group is about 6 MB in 1000
/// chunks, and a write arriving meanwhile (a job's Finished state) goes
/// before the next slice instead of after the whole group.
const LOG_SLICE_BYTES: usize = 256 << 10;

/// The most console chunks indexed in one turn of the writer besides those
/// of the turn's own jobs. A log group at 1000 streaming boards is about
/// 1000 chunks, and sled indexed them at 10 to 50 µs each: 25 to 55 ms in
/// one go, which a job's Finished state arriving meanwhile waited behind.
/// In pieces, it waits for one piece at most.
const INDEX_PIECE: usize = 128;

/// The most console bytes waiting for the writer: a store that cannot
/// keep up for this long drops console bytes (logged) instead of growing.
const MAX_PENDING_LOG_BYTES: usize = 256 << 20;

/// How often a suspended store looks at its free space again: nothing
/// announces that space came back.
const SPACE_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// A deferred reply, sent once the batch it belongs to is flushed.
type Reply = Box<dyn FnOnce(Result<(), StoreError>)>;

/// A change to a job, run on this thread inside its write; it may refuse
/// (see [`Refused`]), and then nothing is stored.
pub(super) type Update = Box<dyn FnOnce(&mut JobRecord) -> Result<(), Refused> + Send>;
/// The job to store after an update, given the updated record (a retry).
pub(super) type Successor = Box<dyn FnOnce(&JobRecord) -> Option<JobRecord> + Send>;

/// A write queued for this thread, with where its reply goes.
pub(super) enum Write {
    InsertJob(
        Box<JobRecord>,
        oneshot::Sender<Result<JobRecord, StoreError>>,
    ),
    UpdateJob(
        JobId,
        Update,
        oneshot::Sender<Result<JobRecord, StoreError>>,
    ),
    UpdateJobThen(
        JobId,
        Update,
        Successor,
        oneshot::Sender<Result<(JobRecord, Option<JobRecord>), StoreError>>,
    ),
    Event(JobId, JobEvent, oneshot::Sender<Result<(), StoreError>>),
    Log(JobId, u64, Vec<u8>, oneshot::Sender<Result<(), StoreError>>),
    /// Console bytes wait in `PendingLogs` (see `Store::queue_log`).
    LogsQueued,
    /// Replies once everything before it is durable.
    Sync(oneshot::Sender<Result<(), StoreError>>),
    Results(
        JobId,
        Vec<TestCase>,
        oneshot::Sender<Result<(), StoreError>>,
    ),
    Board(BoardRecord, oneshot::Sender<Result<(), StoreError>>),
    LavaSent(
        u64,
        crate::model::LavaSent,
        oneshot::Sender<Result<(), StoreError>>,
    ),
    Prune(Retention, oneshot::Sender<Result<PruneReport, StoreError>>),
}

impl Write {
    /// The job a write concerns, whose queued console bytes go before it.
    fn job(&self) -> Option<JobId> {
        match self {
            Write::UpdateJob(id, ..)
            | Write::UpdateJobThen(id, ..)
            | Write::Event(id, ..)
            | Write::Log(id, ..)
            | Write::Results(id, ..) => Some(*id),
            Write::InsertJob(..)
            | Write::LogsQueued
            | Write::Sync(_)
            | Write::Board(..)
            | Write::LavaSent(..)
            | Write::Prune(..) => None,
        }
    }
}

/// Console bytes queued by `Store::queue_log`, waiting for the writer.
///
/// They are kept here, not sent as writes, so that a lab of streaming
/// consoles costs one writer wake-up per log group instead of one per read.
#[derive(Default)]
pub(super) struct PendingLogs {
    /// Each job's (offset, bytes) chunks; contiguous appends to one job are
    /// merged, so a streaming board costs one record per flush, not one per
    /// read.
    jobs: std::collections::HashMap<JobId, Vec<(u64, Vec<u8>)>>,
    /// Jobs in the order their queued bytes began, with when, oldest
    /// first (a job taken out of turn stays listed until its turn comes,
    /// which at worst writes its newer bytes early).
    order: std::collections::VecDeque<(JobId, std::time::Instant)>,
    bytes: usize,
    /// Bytes dropped because the writer fell too far behind.
    dropped: u64,
    /// Jobs whose console log stopped (the disk full or failing), and why:
    /// their log ends with a truncation mark, and later bytes are dropped.
    /// A job leaves once it is Finished.
    stopped: std::collections::HashMap<JobId, String>,
}

impl PendingLogs {
    /// Queues console bytes of job `id` at `offset` (see
    /// `Store::queue_log`), merged into the job's last chunk when they
    /// follow it. Says whether the writer must be woken: only the first
    /// bytes queued since it last took them wake it, the rest wait for
    /// their log group.
    pub(super) fn queue(&mut self, id: JobId, offset: u64, bytes: &[u8]) -> bool {
        if self.stopped.contains_key(&id) {
            // The log ended with its truncation mark.
            return false;
        }
        if self.bytes + bytes.len() > MAX_PENDING_LOG_BYTES {
            if self.dropped == 0 {
                tracing::error!(
                    job = id,
                    "the store is far behind; console bytes are being dropped"
                );
            }
            self.dropped += bytes.len() as u64;
            return false;
        }
        let wake = self.jobs.is_empty();
        self.bytes += bytes.len();
        let chunks = match self.jobs.entry(id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                self.order.push_back((id, std::time::Instant::now()));
                e.insert(Vec::new())
            }
        };
        match chunks.last_mut() {
            Some((off, b)) if *off + b.len() as u64 == offset => b.extend_from_slice(bytes),
            _ => {
                let mut chunk = Vec::with_capacity(bytes.len().max(LOG_CHUNK_RESERVE));
                chunk.extend_from_slice(bytes);
                chunks.push((offset, chunk));
            }
        }
        wake
    }

    /// Why job `id`'s console log stopped, if it did.
    pub(super) fn why_stopped(&self, id: JobId) -> Option<String> {
        self.stopped.get(&id).cloned()
    }

    /// Takes the queued chunks of the jobs in `own`; then, oldest first,
    /// those of jobs due by `upto` until `more` bytes are taken; or
    /// everything with `all`.
    fn take(
        &mut self,
        own: &std::collections::HashSet<JobId>,
        more: usize,
        all: bool,
        upto: Option<std::time::Instant>,
    ) -> Vec<(JobId, u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut take_job = |p: &mut PendingLogs, id: JobId| -> usize {
            let mut n = 0;
            for (offset, bytes) in p.jobs.remove(&id).unwrap_or_default() {
                n += bytes.len();
                out.push((id, offset, bytes));
            }
            p.bytes = p.bytes.saturating_sub(n);
            n
        };
        for &id in own {
            take_job(self, id);
        }
        let mut taken = 0;
        while all || (taken < more && self.due().zip(upto).is_some_and(|(d, u)| d <= u)) {
            let Some((id, _)) = self.order.pop_front() else {
                break;
            };
            taken += take_job(self, id);
        }
        if self.jobs.is_empty() {
            self.order.clear();
        }
        out
    }

    /// When the oldest queued bytes must be written.
    fn due(&self) -> Option<std::time::Instant> {
        self.order.front().map(|&(_, at)| at + LOG_GROUP)
    }
}

/// The writer thread's loop: runs until every `Store` handle is gone and
/// what they queued is written (see the module docs for its invariants).
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    t: Trees,
    mut segs: segments::Appender,
    mut space: space::Space,
    rx: std_mpsc::Receiver<Write>,
    logs: Arc<Mutex<PendingLogs>>,
    changes: broadcast::Sender<Change>,
    metrics: crate::metrics::Metrics,
) {
    // When the oldest queued console bytes must be written: LOG_GROUP after
    // they were queued, while any are queued.
    let mut logs_due: Option<std::time::Instant> = None;
    // While due console bytes are written (in slices, only the last one
    // flushed): the drain takes everything that was at least half a group
    // old when it began, so the next bytes are due half a group later at
    // the soonest (a few flushes a second for a lab of streaming boards),
    // and nothing queued since, so it ends even while boards keep talking.
    let mut drain_upto: Option<std::time::Instant> = None;
    // Console chunks appended to the segments and not yet indexed.
    let mut unindexed = Unindexed::default();
    // The last turn wrote a batch of writes and put a due slice off.
    let mut slice_put_off = false;
    // The last turn wrote a batch of writes and put a piece of indexing off.
    let mut piece_put_off = false;
    // What the writes and index entries since the last flush changed, to
    // publish once they are durable.
    let mut published: Vec<Change> = Vec::new();
    // Writes waiting, in order, for sled to have room (see `space`).
    let mut held: std::collections::VecDeque<Write> = Default::default();
    metrics.store_suspended(space.suspended());
    loop {
        // Queued console bytes are nobody's acknowledgement: they wait up to
        // LOG_GROUP for more, so that a lab of streaming consoles costs a few
        // flushes a second, not one per append. Any other write is written
        // and flushed at once, with the queued bytes of the jobs it concerns
        // only: a job's Finished state waits for its own last bytes, not for
        // every streaming board's, and for one slice or piece at most.
        let mut closing = false;
        let mut wait = if drain_upto.is_some() || (unindexed.has_synced() && held.is_empty()) {
            Some(std::time::Instant::now())
        } else {
            logs_due
        };
        if space.suspended() {
            // Space coming back is no event: look again now and then.
            let poll = std::time::Instant::now() + SPACE_POLL;
            wait = Some(wait.map_or(poll, |w| w.min(poll)));
        }
        let first = match wait {
            Some(due) => {
                match rx.recv_timeout(due.saturating_duration_since(std::time::Instant::now())) {
                    Ok(w) => Some(w),
                    Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                        // What is queued is written below, then the loop ends.
                        closing = true;
                        None
                    }
                }
            }
            None => match rx.recv() {
                Ok(w) => Some(w),
                Err(_) => break,
            },
        };
        let mut batch = Vec::new();
        for w in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            // LogsQueued only wakes the writer: the deadline is read below.
            if !matches!(w, Write::LogsQueued) {
                batch.push(w);
            }
            if batch.len() >= MAX_BATCH {
                break;
            }
        }
        // The disk's state, once a turn: one statvfs.
        let mut free = space.free();
        if space.try_resume(free) {
            metrics.store_resumed();
            metrics.store_suspended(false);
            free = space.free();
            tracing::info!(
                path = %space.dir().display(),
                free,
                "store writes resumed: space is back"
            );
        } else if !space.suspended() && space.log_budget(free) == 0 {
            let why = space.no_space(free);
            suspend(&mut space, why, &metrics);
            free = space.free();
        }
        // While suspended a submit is refused at once (it changes nothing);
        // every other write goes on, in order, as long as sled has room.
        if space.suspended() {
            batch = batch
                .into_iter()
                .filter_map(|w| match w {
                    Write::InsertJob(_, tx) => {
                        let _ = tx.send(Err(StoreError::NoSpace(format!(
                            "{}; submits are refused until space returns",
                            space.why(free)
                        ))));
                        None
                    }
                    w => Some(w),
                })
                .collect();
        }
        let sled_room = space.sled_room(free);
        if !sled_room {
            if closing {
                // Nobody will wait for space: the held writes fail.
                for w in held.drain(..).chain(batch.drain(..)) {
                    fail(w, StoreError::NoSpace(space.why(free)));
                }
                break;
            }
            held.extend(batch.drain(..));
        } else if !held.is_empty() {
            held.extend(batch.drain(..));
            batch = held.drain(..).collect();
        }
        let now = std::time::Instant::now();
        if drain_upto.is_none() && logs_due.is_some_and(|d| d <= now) {
            drain_upto = Some(now + LOG_GROUP / 2);
        }
        // Whose queued bytes go first: a write's own job's, taken here, so
        // they are durable before that write's reply (a job's last bytes
        // before its Finished state); a slice of those that are due, oldest
        // first; all of them for a write that answers for everything before
        // it, and when closing.
        let all = closing
            || batch
                .iter()
                .any(|w| matches!(w, Write::Sync(_) | Write::Prune(..)));
        let own: std::collections::HashSet<JobId> = batch.iter().filter_map(Write::job).collect();
        let (queued, stopped) = {
            let mut p = logs.lock().unwrap_or_else(|e| e.into_inner());
            if p.dropped > 0 {
                tracing::error!(
                    bytes = p.dropped,
                    "console bytes dropped while the store was behind"
                );
                p.dropped = 0;
            }
            // A write waiting for its reply goes before the next slice of
            // due bytes, which the next turn writes; a turn that put a slice
            // off always writes one, so a stream of writes cannot stall the
            // drain.
            let slice = if batch.is_empty() || slice_put_off {
                LOG_SLICE_BYTES
            } else {
                0
            };
            slice_put_off = slice == 0 && drain_upto.is_some();
            let queued = p.take(&own, slice, all, drain_upto);
            logs_due = p.due();
            if logs_due.zip(drain_upto).is_none_or(|(d, u)| d > u) {
                drain_upto = None;
            }
            (queued, p.stopped.keys().copied().collect::<Vec<_>>())
        };
        if batch.is_empty() && queued.is_empty() && unindexed.is_empty() && !closing {
            continue;
        }
        // A slice that more slices follow, with no reply waiting on it, is
        // not flushed on its own: the last slice (or the next write's reply)
        // flushes it, so slicing costs no extra flushes. Its bytes are
        // appended to the segment now, and indexed (after one sync of the
        // segment) and published only with a flush.
        let slicing = batch.is_empty() && drain_upto.is_some() && !closing;
        // The time spent writing, not waiting for a log group to fill.
        let started = std::time::Instant::now();
        let queued_chunks = queued.len();
        let mut done: Vec<Reply> = Vec::new();
        // A job's log stops at its first byte the disk cannot take, with a
        // truncation mark there: never a gap with later bytes after it.
        let mut stop: Vec<(JobId, u64, String)> = Vec::new();
        let is_stopped = |stop: &[(JobId, u64, String)], id: JobId| {
            stopped.contains(&id) || stop.iter().any(|s| s.0 == id)
        };
        let mut budget = space.log_budget(free);
        let mut append = Vec::with_capacity(queued.len());
        for (id, offset, bytes) in &queued {
            if is_stopped(&stop, *id) {
                continue;
            }
            if bytes.len() as u64 > budget {
                // What fits is kept, to the byte; the mark goes after it.
                let fits = budget as usize;
                if fits > 0 {
                    append.push((*id, *offset, &bytes[..fits]));
                }
                let why = space.no_space(free.saturating_sub(budget));
                if !space.suspended() {
                    suspend(&mut space, why.clone(), &metrics);
                }
                stop.push((*id, *offset + fits as u64, why));
                budget = 0;
                continue;
            }
            budget -= bytes.len() as u64;
            append.push((*id, *offset, &bytes[..]));
        }
        let bytes: Vec<&[u8]> = append.iter().map(|(_, _, b)| *b).collect();
        for ((id, offset, _), loc) in append.iter().zip(segs.append_all(&bytes)) {
            // After a job's first failed chunk its later ones are dead
            // bytes (the part of a chunk kept before a mark is not later).
            let at = stop.iter().position(|s| s.0 == *id);
            if at.is_some_and(|i| stop[i].1 <= *offset) {
                continue;
            }
            match loc {
                Ok(loc) => unindexed.unsynced.push((*id, *offset, Piece::Segment(loc))),
                Err(e) => {
                    tracing::error!(job = id, error = %e, "storing console bytes failed");
                    if space::is_space(&e) {
                        suspend(&mut space, e.to_string(), &metrics);
                    }
                    match at {
                        Some(i) => stop[i] = (*id, *offset, e.to_string()),
                        None => stop.push((*id, *offset, e.to_string())),
                    }
                }
            }
        }
        for (id, offset, why) in &stop {
            unindexed
                .unsynced
                .push((*id, *offset, Piece::Mark(why.clone())));
        }
        note_stopped(&logs, stop, &metrics);
        if slicing || !sled_room {
            continue;
        }
        // Indexed before the batch is applied: whoever sees a job's
        // Finished state can read its last bytes. Other jobs' chunks are
        // indexed a piece per turn, the same way as slices: a write waiting
        // for its reply goes before the next piece, and only the last piece
        // (or the write's reply) flushes.
        let piece = if batch.is_empty() || piece_put_off {
            INDEX_PIECE
        } else {
            0
        };
        let mut lost = Vec::new();
        if let Err(e) = unindexed.index(&t, &mut segs, &own, piece, all, &mut published, &mut lost)
        {
            tracing::error!(error = %e, "storing console bytes failed");
            if let StoreError::Sled(sled::Error::Io(io)) = &e {
                if space::is_space(io) {
                    suspend(&mut space, e.to_string(), &metrics);
                }
            }
        }
        note_stopped(&logs, lost, &metrics);
        piece_put_off = piece == 0 && unindexed.has_synced();
        if batch.is_empty() && !closing && unindexed.has_synced() {
            continue;
        }
        for w in batch {
            apply(&t, &mut segs, w, &mut done, &mut published);
        }
        let flushed = t.db.flush().map(|_| ());
        metrics.store_batch(done.len() + queued_chunks, started.elapsed());
        if let Err(e) = &flushed {
            // sled keeps its first I/O error and refuses every write after
            // it until it is reopened: only a restart recovers (the reserve
            // and the floor exist so that this never happens).
            tracing::error!(error = %e, "sled refused a flush; it takes no more writes until labd restarts");
            if let sled::Error::Io(io) = e {
                if space::is_space(io) {
                    let why = format!("{}: {io}", space.dir().display());
                    suspend(&mut space, why, &metrics);
                }
            }
        }
        for reply in done {
            reply(match &flushed {
                Ok(()) => Ok(()),
                Err(sled::Error::Io(io)) if space::is_space(io) => Err(StoreError::NoSpace(
                    format!("flushing {} failed: {io}", space.dir().display()),
                )),
                Err(e) => Err(StoreError::Failed(format!("flush failed: {e}"))),
            });
        }
        if flushed.is_ok() {
            let mut ended = Vec::new();
            for c in published.drain(..) {
                if let Change::Job {
                    id,
                    state: JobState::Finished,
                } = c
                {
                    ended.push(id);
                }
                let _ = changes.send(c);
            }
            if !ended.is_empty() {
                let mut p = logs.lock().unwrap_or_else(|e| e.into_inner());
                if !p.stopped.is_empty() {
                    for id in ended {
                        p.stopped.remove(&id);
                    }
                }
            }
        }
        if closing {
            break;
        }
    }
}

/// Suspends console appends and submits (see `space`), saying so in the metrics.
fn suspend(space: &mut space::Space, why: String, metrics: &crate::metrics::Metrics) {
    if space.suspend(why.clone()) {
        metrics.store_suspended(true);
        tracing::warn!(
            path = %space.dir().display(),
            free = space.free(),
            reason = %why,
            "store writes suspended: submits are refused and console logs stop until space returns"
        );
    }
}

/// Records jobs whose console log stopped (job, byte, why): their later
/// bytes are dropped, and they are not Complete.
fn note_stopped(
    logs: &Mutex<PendingLogs>,
    stopped: Vec<(JobId, u64, String)>,
    metrics: &crate::metrics::Metrics,
) {
    if stopped.is_empty() {
        return;
    }
    let mut p = logs.lock().unwrap_or_else(|e| e.into_inner());
    for (id, offset, why) in stopped {
        tracing::warn!(job = id, byte = offset, reason = %why, "console log stopped");
        metrics.store_log_stopped();
        p.stopped.insert(id, why);
    }
}

/// Answers a write that will never be applied with `e`.
fn fail(w: Write, e: StoreError) {
    match w {
        Write::InsertJob(_, tx) | Write::UpdateJob(_, _, tx) => {
            let _ = tx.send(Err(e));
        }
        Write::UpdateJobThen(_, _, _, tx) => {
            let _ = tx.send(Err(e));
        }
        Write::Event(_, _, tx)
        | Write::Log(_, _, _, tx)
        | Write::Sync(tx)
        | Write::Results(_, _, tx)
        | Write::Board(_, tx)
        | Write::LavaSent(_, _, tx) => {
            let _ = tx.send(Err(e));
        }
        Write::Prune(_, tx) => {
            let _ = tx.send(Err(e));
        }
        Write::LogsQueued => {}
    }
}

/// Where a piece of a job's console log is: bytes in a segment, or a
/// truncation mark (the log stopped there, and why), stored inline.
#[derive(Debug, Clone)]
enum Piece {
    Segment(Location),
    Mark(String),
}

/// The text of a truncation mark at byte `offset` of a log.
fn mark_text(offset: u64, why: &str) -> Vec<u8> {
    format!(
        "\r\n[labd: console log stopped at byte {offset}: {why}; the rest of this job's console is not kept]\r\n"
    )
    .into_bytes()
}

/// A console chunk appended to a segment (or a truncation mark): its job,
/// its offset in the job's log, and where its bytes lie.
type Appended = (JobId, u64, Piece);

/// Console chunks appended to the segments and not yet indexed, in the
/// order they were appended: first those whose bytes may not be on disk
/// yet, then, once a sync of the segments made them durable, those waiting
/// for their piece of indexing.
#[derive(Default)]
struct Unindexed {
    unsynced: Vec<Appended>,
    synced: std::collections::VecDeque<Appended>,
}

impl Unindexed {
    fn is_empty(&self) -> bool {
        self.unsynced.is_empty() && self.synced.is_empty()
    }

    /// Chunks are durable and wait only for their index entries.
    fn has_synced(&self) -> bool {
        !self.synced.is_empty()
    }

    /// Indexes every chunk of the jobs in `own` and up to `piece` others,
    /// oldest first; or all of them with `all`. The segments are synced
    /// first when any chunk to index might not be on disk yet, so an index
    /// entry never points at bytes a crash could lose. A job's chunks are
    /// indexed in order, so a reader always sees a prefix of its log.
    ///
    /// A failed sync stops the log of every job with unsynced chunks at
    /// the first of them (a truncation mark instead, listed in `lost`):
    /// after a failed `fsync` the kernel may have dropped the pages, and a
    /// second one may succeed without them.
    #[allow(clippy::too_many_arguments)]
    fn index(
        &mut self,
        t: &Trees,
        segs: &mut segments::Appender,
        own: &std::collections::HashSet<JobId>,
        piece: usize,
        all: bool,
        published: &mut Vec<Change>,
        lost: &mut Vec<(JobId, u64, String)>,
    ) -> Result<(), StoreError> {
        let needs_sync = !self.unsynced.is_empty()
            && (all
                || piece > self.synced.len()
                || self.unsynced.iter().any(|(id, ..)| own.contains(id)));
        let synced = if needs_sync {
            let r = segs.sync().map_err(io_err);
            match &r {
                Ok(()) => self.synced.extend(self.unsynced.drain(..)),
                Err(e) => {
                    let why = e.to_string();
                    let mut firsts: Vec<Appended> = Vec::new();
                    for (id, offset, p) in self.unsynced.drain(..) {
                        if firsts.iter().any(|f| f.0 == id) {
                            continue;
                        }
                        let why = match p {
                            Piece::Mark(w) => w,
                            Piece::Segment(_) => why.clone(),
                        };
                        lost.push((id, offset, why.clone()));
                        firsts.push((id, offset, Piece::Mark(why)));
                    }
                    self.synced.extend(firsts);
                }
            }
            r
        } else {
            Ok(())
        };
        let take = if all {
            self.synced.drain(..).collect()
        } else {
            let mut take = Vec::new();
            let mut others = 0;
            self.synced.retain(|c| {
                let mine = own.contains(&c.0);
                let now = mine || others < piece;
                if now {
                    others += usize::from(!mine);
                    take.push(c.clone());
                }
                !now
            });
            take
        };
        index_chunks(t, take, published).and(synced)
    }
}

/// The `state` event recorded with every job state change, in the same
/// transaction, so a job's history never misses or repeats a change.
fn state_message(j: &JobRecord) -> String {
    match (j.state, &j.board, &j.error) {
        (JobState::Scheduled, Some(b), _) => format!("Scheduled on {b}"),
        (JobState::Finished, _, Some(e)) => format!("Finished {}: {e}", j.health),
        (JobState::Finished, _, None) => format!("Finished {}", j.health),
        (s, _, _) => s.to_string(),
    }
}

/// Stores a new job inside a transaction: its id is the next one, with its
/// state index entry and its first `state` event.
fn insert_in(
    meta: &sled::transaction::TransactionalTree,
    jobs: &sled::transaction::TransactionalTree,
    idx: &sled::transaction::TransactionalTree,
    events: &sled::transaction::TransactionalTree,
    job: &JobRecord,
) -> Result<JobRecord, ConflictableTransactionError<StoreError>> {
    // A lava-server's job is stored once: asked again (its worker restarted
    // between the insert and hearing of it), the store answers the job it
    // already holds, decided inside this transaction.
    let lava_key = job.lava.as_ref().map(|l| super::lava_key(l.id));
    if let Some(k) = &lava_key {
        if let Some(id) = meta.get(k)? {
            if let Some(old) = jobs.get(id)? {
                return dec(&old).map_err(ConflictableTransactionError::Abort);
            }
        }
    }
    let next = meta.get("next_job_id")?.map_or(1, |v| be_u64(&v));
    meta.insert("next_job_id", &(next + 1).to_be_bytes())?;
    let mut j = job.clone();
    j.id = next;
    if let Some(k) = &lava_key {
        meta.insert(&k[..], &next.to_be_bytes())?;
    }
    jobs.insert(&next.to_be_bytes(), enc(&j))?;
    idx.insert(&state_key(j.state, next), &[])?;
    let ev = JobEvent {
        time: j.submit_time,
        ..JobEvent::now("state", state_message(&j))
    };
    events.insert(&key2(next, events.generate_id()?), enc(&ev))?;
    Ok(j)
}

/// Changes job `id` with `f`, and stores the job `successor` makes of the
/// result, all in one transaction.
fn update_then(
    t: &Trees,
    id: JobId,
    f: Update,
    successor: Option<Successor>,
    published: &mut Vec<Change>,
) -> Result<(JobRecord, Option<JobRecord>), StoreError> {
    let Some(old) = t.jobs.get(id.to_be_bytes())? else {
        return Err(StoreError::NoSuchJob(id));
    };
    let old: JobRecord = dec(&old)?;
    let mut new = old.clone();
    f(&mut new).map_err(|Refused(why)| StoreError::Rejected(why))?;
    new.id = id;
    let next = successor.and_then(|s| s(&new));
    let stored = (&t.meta, &t.jobs, &t.by_state, &t.events)
        .transaction(|(meta, jobs, idx, events)| {
            if old.state != new.state {
                idx.remove(&state_key(old.state, id))?;
                idx.insert(&state_key(new.state, id), &[])?;
                let ev = JobEvent::now("state", state_message(&new));
                events.insert(&key2(id, events.generate_id()?), enc(&ev))?;
            }
            jobs.insert(&id.to_be_bytes(), enc(&new))?;
            let Some(next) = &next else { return Ok(None) };
            let n = insert_in(meta, jobs, idx, events, next)?;
            let ev = JobEvent::now("retry", format!("attempt {} is job {}", n.attempt, n.id));
            events.insert(&key2(id, events.generate_id()?), enc(&ev))?;
            Ok::<_, ConflictableTransactionError<StoreError>>(Some(n))
        })
        .map_err(tx_err)?;
    published.push(Change::Job {
        id,
        state: new.state,
    });
    if let Some(n) = &stored {
        published.push(Change::Event { id });
        published.push(Change::Job {
            id: n.id,
            state: n.state,
        });
    }
    Ok((new, stored))
}

/// Indexes chunks appended to the segments, whose bytes the caller made
/// durable: an index entry never points at bytes a crash could lose.
fn index_chunks(
    t: &Trees,
    appended: Vec<Appended>,
    published: &mut Vec<Change>,
) -> Result<(), StoreError> {
    if appended.is_empty() {
        return Ok(());
    }
    // A job's marks follow all its chunks: the chunks are indexed first, so
    // a reader never sees a mark with a gap before it.
    let mut batch = sled::Batch::default();
    let mut marks = sled::Batch::default();
    let mut has_marks = false;
    for (id, offset, piece) in &appended {
        match piece {
            Piece::Segment(loc) => batch.insert(&key2(*id, *offset)[..], &loc.encode()[..]),
            Piece::Mark(why) => {
                has_marks = true;
                marks.insert(&key2(*id, *offset)[..], mark_text(*offset, why));
            }
        }
    }
    t.log_index.apply_batch(batch)?;
    if has_marks {
        // Inline, like a schema 1 store's chunks: a mark takes no segment
        // space, which is what ran out.
        t.logs.apply_batch(marks)?;
    }
    published.extend(appended.into_iter().map(|(id, offset, piece)| Change::Log {
        id,
        end: offset
            + match &piece {
                Piece::Segment(loc) => u64::from(loc.len),
                Piece::Mark(why) => mark_text(offset, why).len() as u64,
            },
    }));
    Ok(())
}

/// Applies one write; its reply waits for the batch's flush.
fn apply(
    t: &Trees,
    segs: &mut segments::Appender,
    w: Write,
    done: &mut Vec<Reply>,
    published: &mut Vec<Change>,
) {
    fn defer<T: Send + 'static>(
        done: &mut Vec<Reply>,
        tx: oneshot::Sender<Result<T, StoreError>>,
        r: Result<T, StoreError>,
    ) {
        done.push(Box::new(move |flush: Result<(), StoreError>| {
            // Nobody waits for a fire-and-forget write: its failure is logged here.
            if let Err(Err(e)) = tx.send(flush.and(r)) {
                tracing::error!(error = %e, "store write failed");
            }
        }));
    }
    match w {
        Write::InsertJob(job, tx) => {
            let r = (&t.meta, &t.jobs, &t.by_state, &t.events)
                .transaction(|(meta, jobs, idx, events)| insert_in(meta, jobs, idx, events, &job))
                .map_err(tx_err);
            if let Ok(j) = &r {
                published.push(Change::Job {
                    id: j.id,
                    state: j.state,
                });
            }
            defer(done, tx, r);
        }
        Write::UpdateJob(id, f, tx) => {
            let r = update_then(t, id, f, None, published).map(|(j, _)| j);
            defer(done, tx, r);
        }
        Write::UpdateJobThen(id, f, successor, tx) => {
            let r = update_then(t, id, f, Some(successor), published);
            defer(done, tx, r);
        }
        Write::Event(id, ev, tx) => {
            let r =
                t.db.generate_id()
                    .and_then(|n| t.events.insert(key2(id, n), enc(&ev)))
                    .map(|_| ())
                    .map_err(StoreError::from);
            if r.is_ok() {
                published.push(Change::Event { id });
            }
            defer(done, tx, r);
        }
        Write::Log(id, offset, bytes, tx) => {
            let r = segs.append(&bytes).map_err(io_err).and_then(|loc| {
                segs.sync().map_err(io_err)?;
                index_chunks(t, vec![(id, offset, Piece::Segment(loc))], published)
            });
            defer(done, tx, r);
        }
        Write::LogsQueued => {}
        Write::Sync(tx) => defer(done, tx, Ok(())),
        Write::Results(id, results, tx) => {
            // One batch: a crash stores all of a definition's results or none.
            let r = (|| {
                let mut batch = sled::Batch::default();
                for tc in &results {
                    batch.insert(&key2(id, t.db.generate_id()?)[..], enc(tc));
                }
                t.results.apply_batch(batch)
            })()
            .map_err(StoreError::from);
            defer(done, tx, r);
        }
        Write::Board(b, tx) => {
            let r = t
                .boards
                .insert(b.name.as_bytes(), enc(&b))
                .map(|_| ())
                .map_err(StoreError::from);
            defer(done, tx, r);
        }
        Write::LavaSent(lava_id, sent, tx) => {
            let r = t
                .meta
                .insert(super::lava_sent_key(lava_id), enc(&sent))
                .map(|_| ())
                .map_err(StoreError::from);
            defer(done, tx, r);
        }
        Write::Prune(r, tx) => defer(done, tx, prune(t, segs.current(), r)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::JobOutcome;
    use crate::store::tests::record;
    use crate::store::Store;

    /// Queued console bytes go before any write about their job, and only
    /// theirs: another job's stay queued for their log group (a Finished
    /// state under a lab of streaming boards waits for its own bytes only),
    /// and reach the store in their turn, in order, merged.
    #[tokio::test]
    async fn a_write_takes_its_own_jobs_queued_bytes_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20, Default::default()).unwrap();
        let a = store.insert_job(record("a")).await.unwrap().id;
        let b = store.insert_job(record("b")).await.unwrap().id;
        let mut changes = store.subscribe();
        let queued_at = std::time::Instant::now();
        store.queue_log(b, 0, b"b's boot ");
        store.queue_log(a, 0, b"a's last ");
        store.queue_log(a, 9, b"bytes");
        store.queue_log(b, 9, b"goes on");
        store
            .update_job(a, |j| {
                j.finish(JobOutcome::complete());
                Ok(())
            })
            .await
            .unwrap();
        // Durable by the reply: all of a's bytes, merged into one record.
        assert_eq!(store.log(a, 0, 1 << 20).await.unwrap().0, b"a's last bytes");
        {
            let p = store.logs.lock().unwrap();
            assert!(!p.jobs.contains_key(&a));
            // b's were not written with a's: still queued, unless their
            // group came due meanwhile (a machine stalled for LOG_GROUP).
            assert!(
                p.jobs.contains_key(&b) || queued_at.elapsed() >= LOG_GROUP,
                "b's bytes went with a's write"
            );
        }
        // b's come when their group is due, whole and in order.
        loop {
            match changes.recv().await.unwrap() {
                Change::Log { id, end } if id == b && end == 16 => break,
                _ => continue,
            }
        }
        assert_eq!(
            store.log(b, 0, 1 << 20).await.unwrap().0,
            b"b's boot goes on"
        );
    }

    /// Appended chunks are indexed only after a sync, a write's own job's
    /// all at once, others a piece at a time, oldest first, each job's in
    /// order; `all` indexes everything.
    #[test]
    fn chunks_are_indexed_after_a_sync_own_jobs_first_then_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let t = Trees::open(dir.path(), 1 << 20).unwrap();
        let mut segs = segments::Appender::open(&t.seg_dir).unwrap();
        let mut u = Unindexed::default();
        let others = 2 * INDEX_PIECE + 10;
        for job in 0..others as JobId {
            let loc = segs.append(b"chunk").unwrap();
            u.unsynced.push((100 + job, 0, Piece::Segment(loc)));
        }
        // Job 7's two chunks, the second after every other job's.
        let loc = segs.append(b"first").unwrap();
        u.unsynced.insert(0, (7, 0, Piece::Segment(loc)));
        let loc = segs.append(b"second").unwrap();
        u.unsynced.push((7, 5, Piece::Segment(loc)));
        let indexed = |t: &Trees| t.log_index.len();
        let mut published = Vec::new();
        let own: std::collections::HashSet<JobId> = [7].into();
        // A write with its reply waiting and no piece: only its job's.
        u.index(
            &t,
            &mut segs,
            &own,
            0,
            false,
            &mut published,
            &mut Vec::new(),
        )
        .unwrap();
        assert!(
            u.unsynced.is_empty(),
            "the own job's chunks were synced first"
        );
        assert_eq!(indexed(&t), 2);
        let ends: Vec<_> = published
            .iter()
            .map(|c| match c {
                Change::Log { id, end } => (*id, *end),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ends, vec![(7, 5), (7, 11)], "job 7's, in order");
        // Then a piece per turn, oldest first.
        u.index(
            &t,
            &mut segs,
            &Default::default(),
            INDEX_PIECE,
            false,
            &mut published,
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(indexed(&t), 2 + INDEX_PIECE);
        assert_eq!(
            u.synced.front().map(|c| c.0),
            Some(100 + INDEX_PIECE as JobId)
        );
        // Chunks appended meanwhile wait for a sync; `all` takes everything.
        let loc = segs.append(b"late").unwrap();
        u.unsynced.push((9999, 0, Piece::Segment(loc)));
        u.index(
            &t,
            &mut segs,
            &Default::default(),
            0,
            true,
            &mut published,
            &mut Vec::new(),
        )
        .unwrap();
        assert!(u.is_empty());
        assert_eq!(indexed(&t), 2 + others + 1);
    }

    /// The writer takes a write's own jobs' bytes whatever their age, then
    /// due jobs oldest first until the slice is full, never one queued
    /// after the drain's bound; `all` takes everything.
    #[test]
    fn queued_bytes_are_taken_by_job_then_oldest_first_in_slices() {
        let t0 = std::time::Instant::now();
        let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
        let mut p = PendingLogs::default();
        for (id, ms) in [(1, 0), (2, 10), (3, 20), (4, 400)] {
            p.jobs.insert(id, vec![(0, vec![b'x'; 100])]);
            p.order.push_back((id, at(ms)));
            p.bytes += 100;
        }
        let ids = |v: Vec<(JobId, u64, Vec<u8>)>| v.into_iter().map(|c| c.0).collect::<Vec<_>>();
        // Nothing due: only the write's own job, however recent.
        assert_eq!(ids(p.take(&[4].into(), 1000, false, None)), [4]);
        // A drain bound that covers jobs 1 to 3, a slice of 150 bytes: the
        // two oldest (a job is never split), then the slice is full.
        let upto = Some(at(20) + LOG_GROUP);
        assert_eq!(ids(p.take(&[].into(), 150, false, upto)), [1, 2]);
        assert_eq!(p.due(), Some(at(20) + LOG_GROUP));
        // A job queued after the bound stays for the next drain.
        p.jobs.insert(5, vec![(0, vec![b'y'; 10])]);
        p.order.push_back((5, at(600)));
        p.bytes += 10;
        assert_eq!(ids(p.take(&[].into(), 1000, false, upto)), [3]);
        assert_eq!(p.bytes, 10);
        assert_eq!(ids(p.take(&[].into(), 0, true, None)), [5]);
        assert_eq!((p.bytes, p.due()), (0, None));
    }

    /// A job's end and the retry it calls for are one write: after the
    /// reply (and a reopen) both are there, the retry named by an event; a
    /// refused change stores no retry either.
    #[tokio::test]
    async fn a_job_end_and_its_retry_are_stored_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20, Default::default()).unwrap();
        let first = store.insert_job(record("flaky")).await.unwrap();
        let (ended, retry) = store
            .update_job_then(
                first.id,
                |j| {
                    j.finish(JobOutcome::incomplete(
                        crate::model::ErrorClass::Infrastructure,
                        "power lost",
                    ));
                    Ok(())
                },
                |j| {
                    Some(JobRecord {
                        retry_of: Some(j.id),
                        attempt: j.attempt + 1,
                        ..record("flaky")
                    })
                },
            )
            .await
            .unwrap();
        assert_eq!(ended.state, JobState::Finished);
        let retry = retry.expect("a retry");
        assert_eq!((retry.retry_of, retry.attempt), (Some(first.id), 2));
        let refused = store
            .update_job_then(
                first.id,
                |_| Err("already finished".into()),
                |_| Some(record("never")),
            )
            .await;
        assert!(matches!(refused, Err(StoreError::Rejected(_))));
        store.close();
        let store = Store::open(dir.path(), 1 << 20, Default::default()).unwrap();
        assert_eq!(store.job(first.id).await.unwrap().state, JobState::Finished);
        let stored = store.job(retry.id).await.unwrap();
        assert_eq!(stored.state, JobState::Submitted);
        assert_eq!(stored.retry_of, Some(first.id));
        let queued = store.jobs_in_state(JobState::Submitted).await.unwrap();
        assert_eq!(queued.iter().map(|j| j.id).collect::<Vec<_>>(), [retry.id]);
        let events = store.events(first.id).await.unwrap();
        let retry_event = format!("attempt 2 is job {}", retry.id);
        assert!(
            events
                .iter()
                .any(|e| e.kind == "retry" && e.message == retry_event),
            "{events:?}"
        );
        assert!(store.check().unwrap().is_empty());
    }
}
