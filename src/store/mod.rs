//! The store: the only module that touches sled.
//!
//! It owns the on-disk state: jobs (with an index by state), job events,
//! console logs, test results and board health. Console bytes are appended
//! to log segment files beside sled, which keeps an index entry per chunk
//! (see `segments`); everything else is in sled.
//!
//! This file holds the handles, their types and the reads. A [`Store`]
//! reads and writes: every write goes to one writer thread (`writer`, whose
//! docs state the ordering the rest of labd relies on) that applies a batch
//! of queued writes and then flushes once (group commit), so sled's
//! blocking flush never runs on an actor thread and a write is acknowledged
//! only once it is durable. After each flush the writer publishes what
//! changed on a broadcast channel, so log followers only ever see durable
//! data. A [`StoreReader`] only reads: the socket server holds one, so that
//! the compiler, not a reviewer, keeps anything on the wire from writing.
//! Reads run on tokio's blocking pool, or inline for the server's small ones.
//!
//! The rest is split by concern, each part small enough to check on its
//! own: `writer` (the writer thread and its ordering), `fsck` (`labd fsck`
//! and `--repair`, on a store no daemon has open), `retention` (which
//! console logs to drop, and the segments that frees), `segments` (the log
//! segment files) and `space` (free space, and the reserve that keeps sled
//! writable).

use crate::model::{BoardRecord, JobEvent, JobId, JobRecord, JobState, TestCase};
use serde::{de::DeserializeOwned, Serialize};
use sled::transaction::TransactionError;
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, oneshot};

mod fsck;
mod retention;
mod segments;
mod space;
mod writer;

pub use retention::{PruneReport, Retention};
use segments::Location;
use writer::{PendingLogs, Write};

/// Bumped whenever the on-disk layout changes; a store with another version is refused,
/// except those this labd upgrades in place.
pub const SCHEMA_VERSION: u64 = 2;
/// Schema 1 kept console bytes inline in sled's `logs` tree. Schema 2 appends
/// new ones to segment files; the inline chunks of a schema 1 store stay
/// where they are and are read as before, so the upgrade rewrites nothing.
const SCHEMA_INLINE_LOGS: u64 = 1;

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
    /// An update refused the change (see [`Refused`]).
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

/// Why an update left a job alone: the change does not apply to the job as
/// it is now (it already finished, say). The write then stores nothing and
/// answers [`StoreError::Rejected`] with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl From<String> for Refused {
    fn from(why: String) -> Self {
        Refused(why)
    }
}

impl From<&str> for Refused {
    fn from(why: &str) -> Self {
        Refused(why.to_owned())
    }
}

/// How a store error reaches a client: the errors a client can act on (no
/// such job, a refused change, a full disk) get codes of their own, the
/// rest is the store's. It lives with the store so that the wire's error
/// type need know nothing of the store.
impl From<StoreError> for crate::error::ApiError {
    fn from(e: StoreError) -> Self {
        use crate::error::{ApiError, ErrorCode};
        match e {
            StoreError::NoSuchJob(id) => {
                ApiError::new(ErrorCode::NoSuchJob, format!("no such job {id}"))
            }
            StoreError::Rejected(m) => ApiError::new(ErrorCode::InvalidState, m),
            e @ StoreError::NoSpace(_) => ApiError::new(ErrorCode::NoSpace, e.to_string()),
            other => ApiError::new(ErrorCode::Store, other.to_string()),
        }
    }
}

/// The sled trees the store keeps, shared by every handle and the writer
/// (a sled tree is itself a cheap handle).
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

impl std::fmt::Debug for StoreReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreReader")
    }
}

/// A cheap, cloneable handle to the store: its reads, and the writes it
/// queues for the writer thread.
#[derive(Clone)]
pub struct Store {
    /// The reads, shared with the readers this handle gives out.
    reader: StoreReader,
    /// The writer thread's queue; the writer runs while any handle holds it.
    tx: std_mpsc::Sender<Write>,
    /// Console bytes queued for the writer (see [`Store::queue_log`]).
    logs: Arc<Mutex<PendingLogs>>,
    /// The writer thread, for `close`.
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

/// A cheap, cloneable handle that can only read the store (see
/// [`Store::reader`]): it has no way to queue a write, so code that holds
/// one, like the socket server, cannot change the store.
#[derive(Clone)]
pub struct StoreReader {
    trees: Trees,
    /// The writer publishes on it; a reader only subscribes.
    changes: broadcast::Sender<Change>,
    /// Reads run on the calling thread instead of tokio's blocking pool
    /// (see [`StoreReader::reading_inline`]).
    inline_reads: bool,
}

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

/// The key in `meta` of a lava-server job's labd job id (`lava_job/` and
/// the server's id, big-endian).
fn lava_key(lava_id: u64) -> Vec<u8> {
    let mut k = b"lava_job/".to_vec();
    k.extend_from_slice(&lava_id.to_be_bytes());
    k
}

/// The key in `meta` of how much of a lava-server job's log the server took
/// (`lava_sent/` and the server's id, big-endian).
fn lava_sent_key(lava_id: u64) -> Vec<u8> {
    let mut k = b"lava_sent/".to_vec();
    k.extend_from_slice(&lava_id.to_be_bytes());
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
/// Every entry a tree keeps under a job's id (its events, its results), in
/// key order.
fn of_job<T: DeserializeOwned>(tree: &sled::Tree, id: JobId) -> Result<Vec<T>, StoreError> {
    tree.scan_prefix(id.to_be_bytes())
        .map(|kv| dec(&kv?.1))
        .collect()
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[8 - n..].copy_from_slice(&b[b.len() - n..]);
    u64::from_be_bytes(a)
}

fn tx_err(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    }
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
                writer::run(
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
            reader: StoreReader {
                trees,
                changes,
                inline_reads: false,
            },
            tx,
            logs,
            writer: Arc::new(Mutex::new(Some(handle))),
        })
    }

    /// A handle that can only read, its reads on the blocking pool. It
    /// does not keep the writer running: only `Store` handles do.
    pub fn reader(&self) -> StoreReader {
        self.reader.clone()
    }

    /// Subscribes to durable changes.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.reader.subscribe()
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
    /// with a [`Refused`]: nothing is stored, and the write fails with
    /// [`StoreError::Rejected`].
    pub fn update_job(
        &self,
        id: JobId,
        f: impl FnOnce(&mut JobRecord) -> Result<(), Refused> + Send + 'static,
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
        f: impl FnOnce(&mut JobRecord) -> Result<(), Refused> + Send + 'static,
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
        let wake = self
            .logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .queue(id, offset, bytes);
        if wake {
            let _ = self.tx.send(Write::LogsQueued);
        }
    }

    /// Why job `id`'s console log stopped before its end (the disk was
    /// full or failing), if it did: such a job is not Complete.
    pub fn log_stopped(&self, id: JobId) -> Option<String> {
        let p = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        p.why_stopped(id)
    }

    /// Closes the store and waits until its writer has written what was
    /// queued and let go of the files (another process may open them then).
    /// Only for the last handle: other `Store` clones keep the writer
    /// running, and any handle, a `StoreReader` too, keeps sled's files open.
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

    /// Records how much of lava-server job `lava_id`'s log the server took
    /// (only `lava_worker` writes it; see [`StoreReader::lava_sent`]).
    pub fn set_lava_sent(
        &self,
        lava_id: u64,
        sent: crate::model::LavaSent,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        self.send(move |tx| Write::LavaSent(lava_id, sent, tx))
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
        let t = self.trees();
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
        self.trees().db.size_on_disk().unwrap_or(0) + segments::disk_bytes(&self.trees().seg_dir)
    }

    /// The trees, for the reads and checks that run on the calling thread.
    fn trees(&self) -> &Trees {
        &self.reader.trees
    }

    /// See [`StoreReader::job`].
    pub async fn job(&self, id: JobId) -> Result<JobRecord, StoreError> {
        self.reader.job(id).await
    }

    /// Jobs in one state, oldest first, read through the state index.
    pub async fn jobs_in_state(&self, state: JobState) -> Result<Vec<JobRecord>, StoreError> {
        self.reader
            .read(move |t| {
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

    /// See [`StoreReader::list_jobs`].
    pub async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        self.reader.list_jobs(filter).await
    }

    /// See [`StoreReader::events`].
    pub async fn events(&self, id: JobId) -> Result<Vec<JobEvent>, StoreError> {
        self.reader.events(id).await
    }

    /// See [`StoreReader::log`].
    pub async fn log(
        &self,
        id: JobId,
        from: u64,
        max: usize,
    ) -> Result<(Vec<u8>, u64), StoreError> {
        self.reader.log(id, from, max).await
    }

    /// See [`StoreReader::results`].
    pub async fn results(&self, id: JobId) -> Result<Vec<TestCase>, StoreError> {
        self.reader.results(id).await
    }

    pub async fn boards(&self) -> Result<Vec<BoardRecord>, StoreError> {
        self.reader
            .read(|t| t.boards.iter().map(|kv| dec(&kv?.1)).collect())
            .await
    }
}

impl StoreReader {
    /// A handle whose reads run on the calling thread, for the socket
    /// server's small reads (a job, a page of jobs).
    ///
    /// A read from sled's cache takes microseconds, while a hop to the
    /// blocking pool and back costs two thread wake-ups, which on a busy
    /// machine wait for a core: under 32 clients, moving the `jobs` page
    /// read inline took its p99 from 10-11 to 6 ms (BENCHMARKS.md). Only a
    /// thread that may block briefly takes such a handle; an actor never
    /// does, and nor does a read whose size has no bound.
    pub fn reading_inline(&self) -> StoreReader {
        StoreReader {
            inline_reads: true,
            ..self.clone()
        }
    }

    /// A handle whose reads run on the blocking pool: the default.
    pub fn reading_pooled(&self) -> StoreReader {
        StoreReader {
            inline_reads: false,
            ..self.clone()
        }
    }

    /// Subscribes to durable changes.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// The job labd runs for lava-server job `lava_id`, if it took it.
    pub async fn job_for_lava(&self, lava_id: u64) -> Result<Option<JobRecord>, StoreError> {
        self.read(move |t| match t.meta.get(lava_key(lava_id))? {
            None => Ok(None),
            Some(id) => match t.jobs.get(id)? {
                Some(v) => dec(&v).map(Some),
                None => Ok(None),
            },
        })
        .await
    }

    /// How much of lava-server job `lava_id`'s log the server took, if
    /// it took any.
    pub async fn lava_sent(
        &self,
        lava_id: u64,
    ) -> Result<Option<crate::model::LavaSent>, StoreError> {
        self.read(move |t| match t.meta.get(lava_sent_key(lava_id))? {
            None => Ok(None),
            Some(v) => dec(&v).map(Some),
        })
        .await
    }

    /// Runs `f` on the trees, on this thread or the blocking pool as this
    /// handle says.
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
        self.read(move |t| of_job(&t.events, id)).await
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
        self.read(move |t| of_job(&t.results, id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::JobOutcome;

    /// A submitted job, for the tests of every part of the store.
    pub(super) fn record(name: &str) -> JobRecord {
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
    pub(super) async fn finish(store: &Store, id: JobId) {
        store
            .update_job(id, |j| {
                j.finish(JobOutcome::canceled("test"));
                Ok(())
            })
            .await
            .unwrap();
    }

    /// How much of a lava-server job's log was sent survives a reopen, per
    /// server job, and the store stays sound with it.
    #[tokio::test]
    async fn a_lava_job_s_sent_position_is_kept_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20, Default::default()).unwrap();
        assert_eq!(store.reader().lava_sent(7).await.unwrap(), None);
        let sent = crate::model::LavaSent {
            index: 120,
            log: 4096,
            events: 3,
            results: 2,
            ended: false,
        };
        store.set_lava_sent(7, sent).await.unwrap();
        let later = crate::model::LavaSent {
            index: 130,
            ended: true,
            ..sent
        };
        store.set_lava_sent(7, later).await.unwrap();
        store.set_lava_sent(8, sent).await.unwrap();
        store.close();
        let store = Store::open(dir.path(), 1 << 20, Default::default()).unwrap();
        let r = store.reader();
        assert_eq!(r.lava_sent(7).await.unwrap(), Some(later));
        assert_eq!(r.lava_sent(8).await.unwrap(), Some(sent));
        assert_eq!(store.check().unwrap(), Vec::<String>::new());
        store.close();
    }

    /// A schema 1 store (console bytes inline in sled) opens upgraded: its
    /// old chunks read as before, new bytes go to a segment, and a log read
    /// joins the two.
    #[tokio::test]
    async fn a_schema_1_store_is_upgraded_and_keeps_its_inline_logs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20, Default::default()).unwrap();
        let old = store.insert_job(record("old")).await.unwrap().id;
        let t = store.trees();
        t.logs.insert(key2(old, 0), &b"U-Boot "[..]).unwrap();
        t.logs.insert(key2(old, 7), &b"2023.01"[..]).unwrap();
        t.meta
            .insert("schema_version", &1u64.to_be_bytes())
            .unwrap();
        store.close();

        let store = Store::open(dir.path(), 1 << 20, Default::default()).unwrap();
        let v = store.trees().meta.get("schema_version").unwrap().unwrap();
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
        assert_eq!(
            store.trees().logs.len(),
            2,
            "old chunks stay where they are"
        );
        assert_eq!(store.trees().log_index.len(), 1, "new ones go to a segment");
        assert_eq!(store.check().unwrap(), Vec::<String>::new());
        store.close();

        // A version this labd does not know is refused, and left alone.
        // No background flusher: its thread could still hold sled's lock
        // file for a moment after `drop(db)` (seen under load in CI), and
        // the open below would find it taken.
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .flush_every_ms(None)
            .open()
            .unwrap();
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
}
