//! The lab's contract with the socket server: the requests it takes
//! ([`LabRequest`]), the replies it gives ([`LabReply`]), who asks
//! ([`Caller`]), a board as `boards` reports it ([`BoardInfo`], with its
//! lava-server owner, [`LavaOwner`]), and the
//! read queries the server answers without the actor ([`read_query`]).
//!
//! It exists so that the server depends on a small set of types rather than
//! on the actor's insides: what crosses the socket is defined here and
//! nowhere else.
//!
//! Invariants:
//! - These types carry data only; they hold no actor state and make no
//!   decision except who may do what ([`Caller`]'s checks).
//! - [`read_query`] only reads: it never changes the store, and answers only
//!   the requests [`LabRequest::reads_records`] names.
//! - [`BoardInfo`] is wire-shaped: a renamed or retyped field changes what
//!   clients see.

use crate::error::{ApiError, ErrorCode};
use crate::job::Diagnostic;
use crate::model::{BoardHealth, BoardState, JobEvent, JobId, JobRecord, TestCase};
use crate::power::{self, PowerAction};
use crate::runner::Phase;
use crate::store::{JobFilter, StoreReader};
use actix::prelude::*;
use serde::{Deserialize, Serialize};

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
    /// The lava-server that owns the board (`lava_worker_device`), if one
    /// does; absent for a board of the lab's own. Absent fields read as
    /// before, so clients of either side of the change understand each
    /// other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lava: Option<LavaOwner>,
    /// The running job's id on its lava-server, beside labd's `job`, when
    /// it is a server's job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lava_job: Option<u64>,
}

/// Which lava-server owns a board, and as which of its devices.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LavaOwner {
    /// The board's device name on the server (`lava_worker_device`).
    pub device: String,
    /// The server's URL (`[lava] url`).
    pub url: String,
    /// This lab's worker name on the server (`[lava] worker`).
    pub worker: String,
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
    pub(super) fn may_cancel(&self, j: &JobRecord) -> bool {
        self.admin
            || match j.submitter_uid {
                Some(uid) => uid == self.uid,
                None => j.submitter == self.name,
            }
    }

    /// The answer to a request the caller may not make; the denial is logged.
    pub(super) fn denied(&self, what: &str) -> ApiError {
        tracing::warn!(caller = %self.name, uid = self.uid, action = what, "permission denied");
        ApiError::new(
            ErrorCode::PermissionDenied,
            format!("{} (uid {}) may not {what}", self.name, self.uid),
        )
    }

    pub(super) fn require_admin(&self, what: &str) -> Result<(), ApiError> {
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
    /// A lava-server's job, for the board of its device (`lava_worker`):
    /// `definition` and `device` as the server sent them (the job's YAML,
    /// the device's rendered configuration). Admins only: labd's own
    /// worker.
    SubmitLava {
        lava_id: u64,
        definition: String,
        device: String,
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
