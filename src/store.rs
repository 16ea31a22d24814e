//! The store: the only module that touches sled.
//!
//! It owns the on-disk state: jobs (with an index by state), job events,
//! console logs, test results and board health. Console bytes are appended
//! to log segment files beside sled, which keeps an index entry per chunk
//! (see `segments`); everything else is in sled. All writes go to one
//! writer thread that applies a batch of queued writes and then flushes once
//! (group commit), so sled's blocking flush never runs on an actor thread and
//! a write is acknowledged only once it is durable. Reads run on tokio's
//! blocking pool. After each flush the writer publishes what changed on a
//! broadcast channel, so log followers only ever see durable data.

use crate::model::{BoardRecord, JobEvent, JobId, JobRecord, JobState, TestCase};
use serde::{de::DeserializeOwned, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, oneshot};

mod segments;
mod space;
use segments::Location;

/// Bumped whenever the on-disk layout changes; a store with another version is refused,
/// except those this labd upgrades in place.
pub const SCHEMA_VERSION: u64 = 2;
/// Schema 1 kept console bytes inline in sled's `logs` tree. Schema 2 appends
/// new ones to segment files; the inline chunks of a schema 1 store stay
/// where they are and are read as before, so the upgrade rewrites nothing.
const SCHEMA_INLINE_LOGS: u64 = 1;
/// The most writes applied before one flush.
const MAX_BATCH: usize = 512;
/// How long a batch of queued console bytes waits for more before its
/// flush: a console byte is durable within this of its arrival.
const LOG_GROUP: std::time::Duration = std::time::Duration::from_millis(500);
/// Room a job's queued chunk starts with: a log group of a console at
/// 115200 baud (11 520 bytes/s for 500 ms) fits without growing it.
const LOG_CHUNK_RESERVE: usize = 8 << 10;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    // Not a `#[source]`: the message already holds sled's, and a chain
    // printer would say it twice.
    #[error("store: {0}")]
    Sled(sled::Error),
    #[error("store: corrupt record: {0}")]
    Corrupt(String),
    #[error("store: schema version {found} on disk, this labd uses {expected}")]
    Schema { found: u64, expected: u64 },
    #[error("no such job {0}")]
    NoSuchJob(JobId),
    #[error("{0}")]
    Rejected(String),
    #[error("store: the writer thread is gone")]
    Closed,
    /// The disk is full (or failing): a state the store waits out, not
    /// corruption. The message names the path and the free space.
    #[error("store: {0}")]
    NoSpace(String),
    /// A write failed for another reason than space (sled's own error).
    #[error("store: {0}")]
    Failed(String),
}

/// An I/O error of the store's own files (sled's directory, log segments).
fn io_err(e: std::io::Error) -> StoreError {
    StoreError::Sled(sled::Error::Io(e))
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Sled(e)
    }
}

/// What changed, published after it is durable.
#[derive(Debug, Clone)]
pub enum Change {
    Job { id: JobId, state: JobState },
    Log { id: JobId, end: u64 },
    Event { id: JobId },
}

/// A deferred reply, sent once the batch it belongs to is flushed.
type Reply = Box<dyn FnOnce(Result<(), StoreError>)>;

type Update = Box<dyn FnOnce(&mut JobRecord) -> Result<(), String> + Send>;
/// The job to store after an update, given the updated record (a retry).
type Successor = Box<dyn FnOnce(&JobRecord) -> Option<JobRecord> + Send>;

enum Write {
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
            | Write::Prune(..) => None,
        }
    }
}

/// Which finished jobs' console logs to drop (the job records, events and
/// results stay): those that ended before `ended_before` (ms since the
/// epoch), then the oldest until the logs total at most `max_total_bytes`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Retention {
    pub ended_before: Option<u64>,
    pub max_total_bytes: Option<u64>,
}

/// What a prune did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub jobs: usize,
    pub bytes: u64,
    /// The console logs kept, in bytes.
    pub kept_bytes: u64,
}

#[derive(Clone)]
struct Trees {
    db: sled::Db,
    meta: sled::Tree,
    jobs: sled::Tree,
    by_state: sled::Tree,
    events: sled::Tree,
    /// Console log chunks stored inline (schema 1), read but no longer written.
    logs: sled::Tree,
    /// Where each console log chunk lies in the segments: (job, offset) → `Location`.
    log_index: sled::Tree,
    /// The log segments' directory.
    seg_dir: Arc<std::path::PathBuf>,
    results: sled::Tree,
    boards: sled::Tree,
}

impl Trees {
    /// Opens sled in `dir/db` and the trees the store keeps there.
    fn open(dir: &Path, cache_capacity: u64) -> Result<Trees, StoreError> {
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(cache_capacity)
            .mode(sled::Mode::LowSpace)
            .open()?;
        Ok(Trees {
            meta: db.open_tree("meta")?,
            jobs: db.open_tree("jobs")?,
            by_state: db.open_tree("jobs_by_state")?,
            events: db.open_tree("events")?,
            logs: db.open_tree("logs")?,
            log_index: db.open_tree("log_chunks")?,
            seg_dir: Arc::new(dir.join("logs")),
            results: db.open_tree("results")?,
            boards: db.open_tree("boards")?,
            db,
        })
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// A cheap, cloneable handle to the store.
#[derive(Clone)]
pub struct Store {
    trees: Trees,
    tx: std_mpsc::Sender<Write>,
    changes: broadcast::Sender<Change>,
    logs: Arc<Mutex<PendingLogs>>,
    /// The writer thread, for `close`.
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// Reads run on the calling thread instead of tokio's blocking pool
    /// (see [`Store::reading_inline`]).
    inline_reads: bool,
}

/// Console bytes queued by `Store::queue_log`, waiting for the writer.
#[derive(Default)]
struct PendingLogs {
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

/// Jobs in a `jobs` page when the filter names no limit.
pub const DEFAULT_PAGE: usize = 100;
/// The most jobs one page holds, whatever the filter asks.
pub const MAX_PAGE: usize = 10_000;

/// Filters for listing jobs. `cursor` is the last id of the previous page.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub board: Option<String>,
    pub device_type: Option<String>,
    pub limit: Option<usize>,
    pub cursor: Option<JobId>,
}

fn key2(id: JobId, n: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8..].copy_from_slice(&n.to_be_bytes());
    k
}

fn state_key(state: JobState, id: JobId) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = state.tag();
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    // Invariant: our record types serialize to JSON without failure (no maps
    // with non-string keys, no non-finite floats).
    serde_json::to_vec(v).unwrap_or_default()
}

fn dec<T: DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[8 - n..].copy_from_slice(&b[b.len() - n..]);
    u64::from_be_bytes(a)
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(
        dir: &Path,
        cache_capacity: u64,
        metrics: crate::metrics::Metrics,
    ) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let trees = Trees::open(dir, cache_capacity)?;
        match trees.meta.get("schema_version")? {
            Some(v) => match be_u64(&v) {
                SCHEMA_VERSION => {}
                SCHEMA_INLINE_LOGS => {
                    trees
                        .meta
                        .insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
                    trees.db.flush()?;
                    tracing::info!(
                        from = SCHEMA_INLINE_LOGS,
                        to = SCHEMA_VERSION,
                        "store upgraded: new console bytes go to log segments"
                    );
                }
                found => {
                    return Err(StoreError::Schema {
                        found,
                        expected: SCHEMA_VERSION,
                    });
                }
            },
            None => {
                trees
                    .meta
                    .insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
                trees.db.flush()?;
            }
        }
        let appender = segments::Appender::open(&trees.seg_dir).map_err(io_err)?;
        let (tx, rx) = std_mpsc::channel();
        let (changes, _) = broadcast::channel(4096);
        let writer_trees = trees.clone();
        let writer_changes = changes.clone();
        let logs = Arc::new(Mutex::new(PendingLogs::default()));
        let writer_logs = logs.clone();
        let space = space::Space::open(dir);
        let handle = std::thread::Builder::new()
            .name("labd-store".into())
            .spawn(move || {
                writer(
                    writer_trees,
                    appender,
                    space,
                    rx,
                    writer_logs,
                    writer_changes,
                    metrics,
                )
            })
            .map_err(io_err)?;
        Ok(Store {
            trees,
            tx,
            changes,
            logs,
            writer: Arc::new(Mutex::new(Some(handle))),
            inline_reads: false,
        })
    }

    /// A handle whose reads run on the calling thread, for the socket
    /// server's small reads (a job, a page of jobs).
    ///
    /// A read from sled's cache takes microseconds, while a hop to the
    /// blocking pool and back costs two thread wake-ups, which on a busy
    /// machine wait for a core: under 32 clients, moving the `jobs` page
    /// read inline took its p99 from 10-11 to 6 ms (BENCHMARKS.md). Only a
    /// thread that may block briefly takes such a handle; an actor never
    /// does, and nor does a read whose size has no bound.
    pub fn reading_inline(&self) -> Store {
        Store {
            inline_reads: true,
            ..self.clone()
        }
    }

    /// A handle whose reads run on the blocking pool: the default.
    pub fn reading_pooled(&self) -> Store {
        Store {
            inline_reads: false,
            ..self.clone()
        }
    }

    /// Subscribes to durable changes.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Queues a write now (so writes from one caller apply in call order)
    /// and returns a future that resolves once it is durable.
    fn send<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Write,
    ) -> impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let queued = self.tx.send(make(tx)).is_ok();
        async move {
            if !queued {
                return Err(StoreError::Closed);
            }
            rx.await.map_err(|_| StoreError::Closed)?
        }
    }

    /// Stores a new job (its `id` is assigned here) with its `Submitted`
    /// state event, and returns it once durable.
    pub fn insert_job(
        &self,
        job: JobRecord,
    ) -> impl std::future::Future<Output = Result<JobRecord, StoreError>> + Send + 'static {
        self.send(move |tx| Write::InsertJob(Box::new(job), tx))
    }

    /// Changes a job; the state index follows, and a change of state is
    /// recorded as a `state` event in the same transaction. `f` may refuse
    /// with a message.
    pub fn update_job(
        &self,
        id: JobId,
        f: impl FnOnce(&mut JobRecord) -> Result<(), String> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<JobRecord, StoreError>> + Send + 'static {
        self.send(move |tx| Write::UpdateJob(id, Box::new(f), tx))
    }

    /// Changes a job as [`Store::update_job`] does and, in the same
    /// transaction, stores the job `successor` makes of the changed record
    /// (its id assigned here), with a `retry` event on the changed job that
    /// names it. A crash therefore never leaves a job ended without the
    /// retry its end called for.
    pub fn update_job_then(
        &self,
        id: JobId,
        f: impl FnOnce(&mut JobRecord) -> Result<(), String> + Send + 'static,
        successor: impl FnOnce(&JobRecord) -> Option<JobRecord> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<(JobRecord, Option<JobRecord>), StoreError>>
           + Send
           + 'static {
        self.send(move |tx| Write::UpdateJobThen(id, Box::new(f), Box::new(successor), tx))
    }

    pub fn add_event(
        &self,
        id: JobId,
        event: JobEvent,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        self.send(move |tx| Write::Event(id, event, tx))
    }

    /// Queues an event without waiting for it; a failure is logged by the writer.
    pub fn record_event(&self, id: JobId, event: JobEvent) {
        drop(self.add_event(id, event));
    }

    /// Appends console bytes at `offset` (the job log's length before them).
    pub fn append_log(
        &self,
        id: JobId,
        offset: u64,
        bytes: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        self.send(move |tx| Write::Log(id, offset, bytes, tx))
    }

    /// Queues console bytes of job `id` at `offset` without waiting: they
    /// are durable within `LOG_GROUP`, and before any write queued after
    /// them is acknowledged. A lab of streaming consoles costs one writer
    /// wake-up and one flush per `LOG_GROUP`, not one per append.
    ///
    /// The bytes are copied into the job's queued chunk (the first read of
    /// a group starts one with room for a group's worth at line rate), so
    /// the caller keeps its buffer: a board hands the same read to its
    /// runner afterwards without copying it again.
    pub fn queue_log(&self, id: JobId, offset: u64, bytes: &[u8]) {
        let wake = {
            let mut guard = self.logs.lock().unwrap_or_else(|e| e.into_inner());
            let p = &mut *guard;
            if p.stopped.contains_key(&id) {
                // The log ended with its truncation mark.
                return;
            }
            if p.bytes + bytes.len() > MAX_PENDING_LOG_BYTES {
                if p.dropped == 0 {
                    tracing::error!(
                        job = id,
                        "the store is far behind; console bytes are being dropped"
                    );
                }
                p.dropped += bytes.len() as u64;
                return;
            }
            let wake = p.jobs.is_empty();
            p.bytes += bytes.len();
            let chunks = match p.jobs.entry(id) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    p.order.push_back((id, std::time::Instant::now()));
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
        };
        if wake {
            let _ = self.tx.send(Write::LogsQueued);
        }
    }

    /// Why job `id`'s console log stopped before its end (the disk was
    /// full or failing), if it did: such a job is not Complete.
    pub fn log_stopped(&self, id: JobId) -> Option<String> {
        let p = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        p.stopped.get(&id).cloned()
    }

    /// Closes the store and waits until its writer has written what was
    /// queued and let go of the files (another process may open them then).
    /// Only for the last handle: other clones keep the writer running.
    pub fn close(self) {
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(self);
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// Waits until every write queued before it is durable.
    pub fn sync(
        &self,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        self.send(Write::Sync)
    }

    pub fn add_results(
        &self,
        id: JobId,
        results: Vec<TestCase>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        self.send(move |tx| Write::Results(id, results, tx))
    }

    pub fn put_board(
        &self,
        board: BoardRecord,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        self.send(move |tx| Write::Board(board, tx))
    }

    /// Drops finished jobs' console logs as `r` says, oldest job first.
    pub fn prune_logs(
        &self,
        r: Retention,
    ) -> impl std::future::Future<Output = Result<PruneReport, StoreError>> + Send + 'static {
        self.send(move |tx| Write::Prune(r, tx))
    }

    /// Calls `f` with every job, its events and its results, in id order
    /// (for `labd export`, on a store no daemon has open).
    pub fn for_each_job(
        &self,
        mut f: impl FnMut(JobRecord, Vec<JobEvent>, Vec<TestCase>) -> std::io::Result<()>,
    ) -> Result<usize, StoreError> {
        let t = &self.trees;
        let mut n = 0;
        for kv in t.jobs.iter() {
            let j: JobRecord = dec(&kv?.1)?;
            let prefix = j.id.to_be_bytes();
            let events = t
                .events
                .scan_prefix(prefix)
                .map(|kv| dec(&kv?.1))
                .collect::<Result<_, _>>()?;
            let results = t
                .results
                .scan_prefix(prefix)
                .map(|kv| dec(&kv?.1))
                .collect::<Result<_, _>>()?;
            f(j, events, results).map_err(io_err)?;
            n += 1;
        }
        Ok(n)
    }

    /// The store's size on disk, in bytes: sled's files and the log segments.
    pub fn disk_bytes(&self) -> u64 {
        self.trees.db.size_on_disk().unwrap_or(0) + segments::disk_bytes(&self.trees.seg_dir)
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Trees) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if self.inline_reads {
            return f(&self.trees);
        }
        let trees = self.trees.clone();
        tokio::task::spawn_blocking(move || f(&trees))
            .await
            .map_err(|_| StoreError::Closed)?
    }

    pub async fn job(&self, id: JobId) -> Result<JobRecord, StoreError> {
        self.read(move |t| match t.jobs.get(id.to_be_bytes())? {
            Some(v) => dec(&v),
            None => Err(StoreError::NoSuchJob(id)),
        })
        .await
    }

    /// Jobs in one state, oldest first, read through the state index.
    pub async fn jobs_in_state(&self, state: JobState) -> Result<Vec<JobRecord>, StoreError> {
        self.read(move |t| {
            let mut out = Vec::new();
            for kv in t.by_state.scan_prefix([state.tag()]) {
                let (k, _) = kv?;
                if let Some(v) = t.jobs.get(&k[1..])? {
                    out.push(dec(&v)?);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Jobs newest first, filtered; uses the state index when a state is given.
    pub async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        self.read(move |t| {
            let limit = filter.limit.unwrap_or(DEFAULT_PAGE).min(MAX_PAGE);
            let upper = filter.cursor.unwrap_or(u64::MAX);
            let mut out = Vec::new();
            let keep = |j: &JobRecord| {
                filter
                    .board
                    .as_ref()
                    .is_none_or(|b| j.board.as_ref() == Some(b))
                    && filter
                        .device_type
                        .as_ref()
                        .is_none_or(|d| &j.device_type == d)
            };
            match filter.state {
                Some(state) => {
                    let range = state_key(state, 0)..state_key(state, upper);
                    for kv in t.by_state.range(range).rev() {
                        let (k, _) = kv?;
                        if let Some(v) = t.jobs.get(&k[1..])? {
                            let j: JobRecord = dec(&v)?;
                            if keep(&j) {
                                out.push(j);
                                if out.len() >= limit {
                                    break;
                                }
                            }
                        }
                    }
                }
                None => {
                    for kv in t.jobs.range(..upper.to_be_bytes()).rev() {
                        let (_, v) = kv?;
                        let j: JobRecord = dec(&v)?;
                        if keep(&j) {
                            out.push(j);
                            if out.len() >= limit {
                                break;
                            }
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    pub async fn events(&self, id: JobId) -> Result<Vec<JobEvent>, StoreError> {
        self.read(move |t| {
            t.events
                .scan_prefix(id.to_be_bytes())
                .map(|kv| dec(&kv?.1))
                .collect()
        })
        .await
    }

    /// The job's console log from `from` on, at most `max` bytes, and the offset after it.
    pub async fn log(
        &self,
        id: JobId,
        from: u64,
        max: usize,
    ) -> Result<(Vec<u8>, u64), StoreError> {
        self.read(move |t| {
            let mut out = Vec::new();
            let mut pos = from;
            // The chunk holding `from` may start before it.
            let before = |tree: &sled::Tree| -> Result<Option<u64>, StoreError> {
                Ok(tree
                    .range(key2(id, 0)..=key2(id, from))
                    .next_back()
                    .transpose()?
                    .map(|(k, _)| be_u64(&k[8..])))
            };
            let start = before(&t.log_index)?.max(before(&t.logs)?).unwrap_or(from);
            let mut segs = segments::Reader::new(&t.seg_dir);
            for c in chunks(t, key2(id, start), key2(id, u64::MAX)) {
                let (_, off, chunk) = c?;
                let end = off + chunk.len();
                if end <= pos {
                    continue;
                }
                if off > pos {
                    // A gap would mean a lost chunk; never paper over it silently.
                    return Err(StoreError::Corrupt(format!("job {id}: log gap at {pos}")));
                }
                let skip = (pos - off) as usize;
                let room = max.saturating_sub(out.len());
                let take = (chunk.len() as usize - skip).min(room);
                match &chunk {
                    Chunk::Inline(v) => out.extend_from_slice(&v[skip..skip + take]),
                    Chunk::Segment(loc) => segs.read(loc, skip, take, &mut out).map_err(|e| {
                        StoreError::Corrupt(format!(
                            "job {id}: log chunk at byte {off} (segment {}) unreadable: {e}",
                            loc.seg
                        ))
                    })?,
                }
                pos += take as u64;
                if out.len() >= max {
                    break;
                }
            }
            Ok((out, pos))
        })
        .await
    }

    pub async fn results(&self, id: JobId) -> Result<Vec<TestCase>, StoreError> {
        self.read(move |t| {
            t.results
                .scan_prefix(id.to_be_bytes())
                .map(|kv| dec(&kv?.1))
                .collect()
        })
        .await
    }

    pub async fn boards(&self) -> Result<Vec<BoardRecord>, StoreError> {
        self.read(|t| t.boards.iter().map(|kv| dec(&kv?.1)).collect())
            .await
    }
}

impl Store {
    /// Checks the store's invariants (for `labd fsck`, on a store no daemon
    /// has open) and says what is wrong, one line per problem: each job in
    /// exactly one state index entry that agrees with it, ids below the next
    /// id, no board with two unfinished jobs, every started job on a board,
    /// finished jobs with an end, log chunks without gaps or overlaps, and no
    /// events, logs or results of jobs that do not exist.
    pub fn check(&self) -> Result<Vec<String>, StoreError> {
        let t = &self.trees;
        let mut problems = Vec::new();
        let next = t.meta.get("next_job_id")?.map_or(1, |v| be_u64(&v));
        let mut jobs = std::collections::BTreeMap::new();
        let mut on_board: std::collections::BTreeMap<String, Vec<JobId>> = Default::default();
        for kv in t.jobs.iter() {
            let (k, v) = kv?;
            let key = be_u64(&k);
            let j: JobRecord = match dec(&v) {
                Ok(j) => j,
                Err(e) => {
                    problems.push(format!("job {key}: unreadable record: {e}"));
                    continue;
                }
            };
            if j.id != key {
                problems.push(format!("job {key}: record says it is job {}", j.id));
            }
            if key >= next {
                problems.push(format!("job {key}: at or above the next job id {next}"));
            }
            if !t.by_state.contains_key(state_key(j.state, key))? {
                problems.push(format!(
                    "job {key}: {} but not in that state index",
                    j.state
                ));
            }
            match j.state {
                JobState::Scheduled | JobState::Running | JobState::Canceling => match &j.board {
                    Some(b) => on_board.entry(b.clone()).or_default().push(key),
                    None => problems.push(format!("job {key}: {} without a board", j.state)),
                },
                JobState::Finished if j.end_time.is_none() => {
                    problems.push(format!("job {key}: Finished without an end time"))
                }
                _ => {}
            }
            jobs.insert(key, j.state);
        }
        for (board, ids) in on_board {
            if ids.len() > 1 {
                problems.push(format!("board {board}: several unfinished jobs {ids:?}"));
            }
        }
        for kv in t.by_state.iter() {
            let (k, _) = kv?;
            let id = be_u64(&k[1..]);
            let state = JobState::ALL.into_iter().find(|s| s.tag() == k[0]);
            match (state, jobs.get(&id)) {
                (None, _) => problems.push(format!(
                    "state index: unknown state tag {} for job {id}",
                    k[0]
                )),
                (Some(s), None) => {
                    problems.push(format!("state index: job {id} ({s}) does not exist"))
                }
                (Some(s), Some(actual)) if s != *actual => problems.push(format!(
                    "state index: job {id} listed as {s} but is {actual}"
                )),
                _ => {}
            }
        }
        let mut log_end: Option<(JobId, u64)> = None;
        let mut seg_len: std::collections::HashMap<u32, Option<u64>> = Default::default();
        for c in all_chunks(t) {
            let (id, off, chunk) = c?;
            if let Chunk::Segment(loc) = &chunk {
                let len = *seg_len.entry(loc.seg).or_insert_with(|| {
                    std::fs::metadata(segments::path(&t.seg_dir, loc.seg))
                        .ok()
                        .map(|m| m.len())
                });
                match len {
                    None => problems.push(format!(
                        "log of job {id}: chunk at byte {off} in segment {}, which is missing",
                        loc.seg
                    )),
                    Some(n) if loc.pos + u64::from(loc.len) > n => problems.push(format!(
                        "log of job {id}: chunk at byte {off} ends past segment {}'s end",
                        loc.seg
                    )),
                    Some(_) => {}
                }
            }
            let expected = match log_end {
                Some((j, end)) if j == id => end,
                _ => {
                    if !jobs.contains_key(&id) {
                        problems.push(format!("log of job {id}, which does not exist"));
                    }
                    0
                }
            };
            if off != expected {
                problems.push(format!(
                    "log of job {id}: chunk at byte {off}, expected {expected} ({})",
                    if off > expected {
                        "a gap"
                    } else {
                        "an overlap"
                    }
                ));
            }
            log_end = Some((id, off + chunk.len()));
        }
        // Each finished job ended exactly once (its state events say so).
        let mut ends: std::collections::BTreeMap<JobId, usize> = Default::default();
        for kv in t.events.iter() {
            let (k, v) = kv?;
            if let Ok(ev) = dec::<JobEvent>(&v) {
                if ev.kind == "state" && ev.message.starts_with("Finished") {
                    *ends.entry(be_u64(&k[..8])).or_default() += 1;
                }
            }
        }
        for (id, state) in &jobs {
            let n = ends.get(id).copied().unwrap_or(0);
            let want = usize::from(*state == JobState::Finished);
            if n != want {
                problems.push(format!("job {id}: {state} with {n} Finished events"));
            }
        }
        for (name, tree) in [("events", &t.events), ("results", &t.results)] {
            let mut last = None;
            for kv in tree.iter() {
                let (k, _) = kv?;
                let id = be_u64(&k[..8]);
                if last != Some(id) && !jobs.contains_key(&id) {
                    problems.push(format!("{name} of job {id}, which does not exist"));
                }
                last = Some(id);
            }
        }
        Ok(problems)
    }
}

impl Store {
    /// Turns every gap in a console log (chunks after a lost one, left by
    /// a labd older than the truncation marks) into a mark saying how many
    /// bytes are missing there, and moves the chunks after it to follow the
    /// mark: the whole log reads again and nothing stored is dropped. For
    /// `labd fsck --repair`, on a store no daemon has open. Says what it
    /// did, one line per gap.
    pub fn repair(&self) -> Result<Vec<String>, StoreError> {
        let t = &self.trees;
        let mut done = Vec::new();
        // Each moved chunk: its tree (segment index or inline), old and new key, value.
        let mut moves: Vec<(bool, [u8; 16], [u8; 16], sled::IVec)> = Vec::new();
        let mut marks: Vec<([u8; 16], Vec<u8>)> = Vec::new();
        // The job being walked, where its next byte should be, and how far
        // its later chunks move.
        let mut at: Option<(JobId, u64, i128)> = None;
        for c in all_chunks(t) {
            let (id, off, chunk) = c?;
            let (expected, shift) = match at {
                Some((j, end, shift)) if j == id => (end, shift),
                _ => (0, 0),
            };
            let mut shift = shift;
            let mut new_off = (i128::from(off) + shift) as u64;
            if new_off > expected {
                let missing = new_off - expected;
                let note = format!(
                    "\r\n[labd: {missing} bytes of this console log are missing here (a gap left by an older labd, marked by labd fsck --repair)]\r\n"
                )
                .into_bytes();
                done.push(format!(
                    "log of job {id}: {missing} missing bytes at byte {expected} marked"
                ));
                let after = expected + note.len() as u64;
                marks.push((key2(id, expected), note));
                shift += i128::from(after) - i128::from(new_off);
                new_off = after;
            }
            if new_off != off {
                let (inline, v) = match &chunk {
                    Chunk::Inline(v) => (true, v.clone()),
                    Chunk::Segment(l) => (false, sled::IVec::from(&l.encode()[..])),
                };
                moves.push((inline, key2(id, off), key2(id, new_off), v));
            }
            at = Some((id, new_off + chunk.len(), shift));
        }
        if done.is_empty() {
            return Ok(done);
        }
        // All at once: a crash leaves the log as it was, or repaired.
        (&t.log_index, &t.logs)
            .transaction(|(index, inline)| {
                for (is_inline, old, _, _) in &moves {
                    let tree = if *is_inline { inline } else { index };
                    tree.remove(&old[..])?;
                }
                for (is_inline, _, new, v) in &moves {
                    let tree = if *is_inline { inline } else { index };
                    tree.insert(&new[..], v.clone())?;
                }
                for (k, note) in &marks {
                    inline.insert(&k[..], &note[..])?;
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(tx_err)?;
        t.db.flush()?;
        Ok(done)
    }
}

/// How often a suspended store looks at its free space again: nothing
/// announces that space came back.
const SPACE_POLL: std::time::Duration = std::time::Duration::from_secs(1);

#[allow(clippy::too_many_arguments)]
fn writer(
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
        | Write::Board(_, tx) => {
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

fn tx_err(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
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
    let next = meta.get("next_job_id")?.map_or(1, |v| be_u64(&v));
    meta.insert("next_job_id", &(next + 1).to_be_bytes())?;
    let mut j = job.clone();
    j.id = next;
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
    f(&mut new).map_err(StoreError::Rejected)?;
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

/// A chunk of a job's console log: in a segment, or inline in sled (a
/// schema 1 store's).
enum Chunk {
    Inline(sled::IVec),
    Segment(Location),
}

impl Chunk {
    fn len(&self) -> u64 {
        match self {
            Chunk::Inline(v) => v.len() as u64,
            Chunk::Segment(l) => u64::from(l.len),
        }
    }
}

/// The console log chunks keyed (job, offset) in `lo..hi`, segment and
/// inline ones merged, in key order.
fn chunks(
    t: &Trees,
    lo: [u8; 16],
    hi: [u8; 16],
) -> impl Iterator<Item = Result<(JobId, u64, Chunk), StoreError>> {
    fn parse(
        kv: sled::Result<(sled::IVec, sled::IVec)>,
        in_segment: bool,
    ) -> Result<(JobId, u64, Chunk), StoreError> {
        let (k, v) = kv?;
        let (id, off) = (be_u64(&k[..8]), be_u64(&k[8..]));
        let chunk = if in_segment {
            Chunk::Segment(Location::decode(&v).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "job {id}: the log index entry at byte {off} has {} bytes, not 16",
                    v.len()
                ))
            })?)
        } else {
            Chunk::Inline(v)
        };
        Ok((id, off, chunk))
    }
    let mut seg = t
        .log_index
        .range(lo..hi)
        .map(|kv| parse(kv, true))
        .peekable();
    let mut inline = t.logs.range(lo..hi).map(|kv| parse(kv, false)).peekable();
    std::iter::from_fn(move || {
        let from_seg = match (seg.peek(), inline.peek()) {
            (None, None) => return None,
            (Some(_), None) | (Some(Err(_)), _) => true,
            (None, Some(_)) | (_, Some(Err(_))) => false,
            (Some(Ok(a)), Some(Ok(b))) => (a.0, a.1) <= (b.0, b.1),
        };
        if from_seg {
            seg.next()
        } else {
            inline.next()
        }
    })
}

/// Every console log chunk in the store, in (job, offset) order.
fn all_chunks(t: &Trees) -> impl Iterator<Item = Result<(JobId, u64, Chunk), StoreError>> {
    chunks(t, [0; 16], [0xff; 16])
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
        Write::Prune(r, tx) => defer(done, tx, prune(t, segs.current(), r)),
    }
}

fn prune(t: &Trees, current: Option<u32>, r: Retention) -> Result<PruneReport, StoreError> {
    // Log sizes per job, in id order (which is submit order), and the
    // segments each job's log lies in.
    let mut sizes: Vec<(JobId, u64, Vec<u32>)> = Vec::new();
    for c in all_chunks(t) {
        let (id, _, chunk) = c?;
        if !matches!(sizes.last(), Some((last, ..)) if *last == id) {
            sizes.push((id, 0, Vec::new()));
        }
        if let Some((_, n, segs)) = sizes.last_mut() {
            *n += chunk.len();
            if let Chunk::Segment(l) = chunk {
                if segs.last() != Some(&l.seg) {
                    segs.push(l.seg);
                }
            }
        }
    }
    let mut report = PruneReport {
        kept_bytes: sizes.iter().map(|(_, n, _)| n).sum(),
        ..Default::default()
    };
    let mut live = std::collections::BTreeSet::new();
    for (id, size, segs) in sizes {
        let over = r.max_total_bytes.is_some_and(|m| report.kept_bytes > m);
        let prunable = match t.jobs.get(id.to_be_bytes())? {
            Some(v) => {
                let j: JobRecord = dec(&v)?;
                j.end_time
                    .filter(|_| j.state == JobState::Finished)
                    .filter(|&end| over || r.ended_before.is_some_and(|b| end < b))
                    .map(|_| j)
            }
            // A log without its job (`check` reports it) is left alone.
            None => None,
        };
        let Some(mut j) = prunable else {
            live.extend(segs);
            continue;
        };
        for tree in [&t.log_index, &t.logs] {
            let mut batch = sled::Batch::default();
            for kv in tree.scan_prefix(id.to_be_bytes()) {
                batch.remove(kv?.0);
            }
            tree.apply_batch(batch)?;
        }
        j.log_pruned = true;
        t.jobs.insert(id.to_be_bytes(), enc(&j))?;
        report.jobs += 1;
        report.bytes += size;
        report.kept_bytes -= size;
    }
    reclaim_segments(t, current, &live)?;
    Ok(report)
}

/// Deletes the log segments outside `live` (those kept logs lie in): all
/// their jobs' logs pruned, or bytes never indexed. Never the one being
/// appended to, and only once the removals that freed them are durable.
fn reclaim_segments(
    t: &Trees,
    current: Option<u32>,
    live: &std::collections::BTreeSet<u32>,
) -> Result<(), StoreError> {
    let dead: Vec<u32> = segments::list(&t.seg_dir)
        .map_err(io_err)?
        .into_iter()
        .filter(|s| Some(*s) != current && !live.contains(s))
        .collect();
    if dead.is_empty() {
        return Ok(());
    }
    t.db.flush()?;
    for s in dead {
        if let Err(e) = std::fs::remove_file(segments::path(&t.seg_dir, s)) {
            tracing::warn!(segment = s, error = %e, "removing a log segment failed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::JobOutcome;

    fn record(name: &str) -> JobRecord {
        JobRecord::submitted(
            name.into(),
            "sim-uboot".into(),
            50,
            vec![],
            "test".into(),
            String::new(),
        )
    }

    /// Ends job `id` (canceled), as a finished job for retention.
    async fn finish(store: &Store, id: JobId) {
        store
            .update_job(id, |j| {
                j.finish(JobOutcome::canceled("test"));
                Ok(())
            })
            .await
            .unwrap();
    }

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

    #[tokio::test]
    async fn prune_by_age_drops_only_finished_jobs_logs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20, Default::default()).unwrap();
        let done = store.insert_job(record("done")).await.unwrap();
        let running = store.insert_job(record("running")).await.unwrap();
        for id in [done.id, running.id] {
            store.append_log(id, 0, vec![b'x'; 1000]).await.unwrap();
        }
        finish(&store, done.id).await;
        store
            .update_job(running.id, |j| {
                j.state = JobState::Running;
                j.board = Some("b".into());
                Ok(())
            })
            .await
            .unwrap();
        let keep = Retention {
            ended_before: Some(1),
            max_total_bytes: None,
        };
        assert_eq!(store.prune_logs(keep).await.unwrap().jobs, 0);
        let all = Retention {
            ended_before: Some(u64::MAX),
            max_total_bytes: None,
        };
        let r = store.prune_logs(all).await.unwrap();
        assert_eq!((r.jobs, r.bytes, r.kept_bytes), (1, 1000, 1000));
        assert!(store.log(done.id, 0, 10).await.unwrap().0.is_empty());
        assert_eq!(store.log(running.id, 0, 10).await.unwrap().0.len(), 10);
        assert!(store.job(done.id).await.unwrap().log_pruned);
        assert_eq!(store.check().unwrap(), Vec::<String>::new());
    }

    /// A schema 1 store (console bytes inline in sled) opens upgraded: its
    /// old chunks read as before, new bytes go to a segment, and a log read
    /// joins the two.
    #[tokio::test]
    async fn a_schema_1_store_is_upgraded_and_keeps_its_inline_logs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20, Default::default()).unwrap();
        let old = store.insert_job(record("old")).await.unwrap().id;
        let t = &store.trees;
        t.logs.insert(key2(old, 0), &b"U-Boot "[..]).unwrap();
        t.logs.insert(key2(old, 7), &b"2023.01"[..]).unwrap();
        t.meta
            .insert("schema_version", &1u64.to_be_bytes())
            .unwrap();
        store.close();

        let store = Store::open(dir.path(), 1 << 20, Default::default()).unwrap();
        let v = store.trees.meta.get("schema_version").unwrap().unwrap();
        assert_eq!(be_u64(&v), SCHEMA_VERSION);
        store
            .append_log(old, 14, b"\r\n=> ".to_vec())
            .await
            .unwrap();
        assert_eq!(
            store.log(old, 0, 100).await.unwrap(),
            (b"U-Boot 2023.01\r\n=> ".to_vec(), 19)
        );
        assert_eq!(
            store.log(old, 10, 6).await.unwrap(),
            (b"3.01\r\n".to_vec(), 16)
        );
        assert_eq!(store.trees.logs.len(), 2, "old chunks stay where they are");
        assert_eq!(store.trees.log_index.len(), 1, "new ones go to a segment");
        assert_eq!(store.check().unwrap(), Vec::<String>::new());
        store.close();

        // A version this labd does not know is refused, and left alone.
        let db = sled::open(dir.path().join("db")).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("schema_version", &9u64.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
        drop(db);
        let e = Store::open(dir.path(), 1 << 20, Default::default()).unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::Schema {
                    found: 9,
                    expected: SCHEMA_VERSION
                }
            ),
            "{e}"
        );
    }

    /// A segment goes once every log in it is pruned, and not before; the
    /// segment being appended to stays. `check` notices a missing segment.
    #[tokio::test]
    async fn pruned_logs_give_their_segments_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20, Default::default()).unwrap();
        let seg_dir = dir.path().join("logs");
        let half = vec![b'x'; (segments::SEGMENT_BYTES / 2 + 1) as usize];
        let done = store.insert_job(record("done")).await.unwrap().id;
        let running = store.insert_job(record("running")).await.unwrap().id;
        // Segment 1: done's log and the start of running's; segment 2: the
        // rest of running's.
        store.append_log(done, 0, half.clone()).await.unwrap();
        store
            .append_log(running, 0, b"boot".to_vec())
            .await
            .unwrap();
        store.append_log(running, 4, half.clone()).await.unwrap();
        assert_eq!(segments::list(&seg_dir).unwrap(), vec![1, 2]);
        finish(&store, done).await;
        let all = Retention {
            ended_before: Some(u64::MAX),
            max_total_bytes: None,
        };
        assert_eq!(store.prune_logs(all).await.unwrap().jobs, 1);
        assert_eq!(
            segments::list(&seg_dir).unwrap(),
            vec![1, 2],
            "running's first chunk keeps segment 1"
        );
        finish(&store, running).await;
        let before = segments::disk_bytes(&seg_dir);
        assert!(
            store.disk_bytes() > before,
            "the store's size counts its segments"
        );
        assert_eq!(store.prune_logs(all).await.unwrap().jobs, 1);
        assert_eq!(
            segments::list(&seg_dir).unwrap(),
            vec![2],
            "segment 1 went, the one appended to stays"
        );
        assert_eq!(
            segments::disk_bytes(&seg_dir),
            before - half.len() as u64 - 4
        );
        assert_eq!(store.check().unwrap(), Vec::<String>::new());

        let next = store.insert_job(record("next")).await.unwrap().id;
        store.append_log(next, 0, b"=> ".to_vec()).await.unwrap();
        std::fs::remove_file(segments::path(&seg_dir, 2)).unwrap();
        let p = store.check().unwrap();
        assert!(
            p.iter()
                .any(|l| l.contains("chunk at byte 0 in segment 2, which is missing")),
            "{p:?}"
        );
        assert!(matches!(
            store.log(next, 0, 10).await,
            Err(StoreError::Corrupt(m)) if m.contains("unreadable")
        ));
    }

    /// A gap an older labd left (a chunk written after a lost one) made
    /// the whole log unreadable; `repair` turns it into a mark saying how
    /// many bytes are missing, the bytes after it follow the mark, and the
    /// store checks clean.
    #[tokio::test]
    async fn repair_turns_a_log_gap_into_a_mark_and_keeps_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20, Default::default()).unwrap();
        let a = store.insert_job(record("a")).await.unwrap().id;
        let b = store.insert_job(record("b")).await.unwrap().id;
        store.append_log(a, 0, b"U-Boot".to_vec()).await.unwrap();
        // Bytes 6..4469 were lost; the next chunks went on being stored.
        store
            .append_log(a, 4469, b" login:".to_vec())
            .await
            .unwrap();
        store.append_log(a, 4476, b" root".to_vec()).await.unwrap();
        store.append_log(b, 0, b"sound".to_vec()).await.unwrap();
        assert!(matches!(
            store.log(a, 0, 1 << 20).await,
            Err(StoreError::Corrupt(m)) if m.contains("log gap at 6")
        ));
        assert_eq!(store.check().unwrap().len(), 1);
        let done = store.repair().unwrap();
        assert_eq!(
            done,
            vec![format!(
                "log of job {a}: 4463 missing bytes at byte 6 marked"
            )]
        );
        assert_eq!(store.check().unwrap(), Vec::<String>::new());
        let (log, end) = store.log(a, 0, 1 << 20).await.unwrap();
        let note = "\r\n[labd: 4463 bytes of this console log are missing here (a gap left by an older labd, marked by labd fsck --repair)]\r\n";
        assert_eq!(
            String::from_utf8(log).unwrap(),
            format!("U-Boot{note} login: root")
        );
        assert_eq!(end, (6 + note.len() + 12) as u64);
        assert_eq!(store.log(b, 0, 100).await.unwrap().0, b"sound");
        assert!(store.repair().unwrap().is_empty(), "nothing left to repair");
    }

    #[tokio::test]
    async fn check_finds_broken_invariants_and_nothing_in_a_sound_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20, Default::default()).unwrap();
        let a = store.insert_job(record("a")).await.unwrap();
        let b = store.insert_job(record("b")).await.unwrap();
        store
            .update_job(a.id, |j| {
                j.state = JobState::Running;
                j.board = Some("sim-01".into());
                Ok(())
            })
            .await
            .unwrap();
        store.append_log(a.id, 0, b"U-Boot".to_vec()).await.unwrap();
        store.append_log(a.id, 6, b" 2023".to_vec()).await.unwrap();
        finish(&store, b.id).await;
        assert_eq!(store.check().unwrap(), Vec::<String>::new());

        // Break it the ways a bug or a torn write could.
        let t = &store.trees;
        t.by_state
            .remove(state_key(JobState::Running, a.id))
            .unwrap();
        t.by_state
            .insert(state_key(JobState::Submitted, 99), &[])
            .unwrap();
        t.logs.insert(key2(a.id, 20), &b"late"[..]).unwrap();
        let mut c = record("c");
        c.id = 7;
        c.state = JobState::Running;
        c.board = Some("sim-01".into());
        t.jobs.insert(7u64.to_be_bytes(), enc(&c)).unwrap();
        t.by_state
            .insert(state_key(JobState::Running, 7), &[])
            .unwrap();
        let p = store.check().unwrap();
        let has = |s: &str| p.iter().any(|l| l.contains(s));
        assert!(has("job 1: Running but not in that state index"), "{p:?}");
        assert!(
            has("state index: job 99 (Submitted) does not exist"),
            "{p:?}"
        );
        assert!(
            has("log of job 1: chunk at byte 20, expected 11 (a gap)"),
            "{p:?}"
        );
        assert!(has("job 7: at or above the next job id"), "{p:?}");
        assert!(has("board sim-01: several unfinished jobs [1, 7]"), "{p:?}");
        assert_eq!(p.len(), 5, "{p:?}");
    }
}
