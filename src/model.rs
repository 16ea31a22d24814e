//! Core domain types shared by the scheduler, the board actors and the store.
//!
//! These are labd's own types; the socket protocol has separate wire types in
//! `protocol` so that the on-disk and on-wire formats can evolve apart. The names
//! and states follow LAVA so that LAVA users read them without translation.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Milliseconds since the Unix epoch; every recorded time in labd uses this unit.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub type JobId = u64;

/// A job's lifecycle state, as LAVA names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum JobState {
    Submitted,
    Scheduled,
    Running,
    Canceling,
    Finished,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Submitted,
        JobState::Scheduled,
        JobState::Running,
        JobState::Canceling,
        JobState::Finished,
    ];

    /// The one-byte tag used as the prefix of the store's state index.
    pub fn tag(self) -> u8 {
        match self {
            JobState::Submitted => 0,
            JobState::Scheduled => 1,
            JobState::Running => 2,
            JobState::Canceling => 3,
            JobState::Finished => 4,
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL
            .into_iter()
            .find(|st| st.to_string().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A job's outcome, as LAVA names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobHealth {
    Unknown,
    Complete,
    Incomplete,
    Canceled,
}

impl fmt::Display for JobHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// LAVA's error classes: who is to blame for an Incomplete job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorClass {
    Infrastructure,
    Job,
    Test,
    Configuration,
    Bug,
    Canceled,
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A board's scheduling state, as LAVA names device states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BoardState {
    Idle,
    Reserved,
    Running,
}

impl fmt::Display for BoardState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A board's health, as LAVA names device health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BoardHealth {
    Good,
    Unknown,
    Bad,
    Maintenance,
    Retired,
}

impl BoardHealth {
    /// Whether the scheduler may give this board a job.
    pub fn schedulable(self) -> bool {
        matches!(self, BoardHealth::Good | BoardHealth::Unknown)
    }
}

impl fmt::Display for BoardHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// How a job ended, with LAVA's error class when it did not complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOutcome {
    pub health: JobHealth,
    pub error_class: Option<ErrorClass>,
    pub error: Option<String>,
}

impl JobOutcome {
    pub fn complete() -> Self {
        JobOutcome {
            health: JobHealth::Complete,
            error_class: None,
            error: None,
        }
    }

    pub fn incomplete(class: ErrorClass, msg: impl Into<String>) -> Self {
        JobOutcome {
            health: JobHealth::Incomplete,
            error_class: Some(class),
            error: Some(msg.into()),
        }
    }

    pub fn canceled(msg: impl Into<String>) -> Self {
        JobOutcome {
            health: JobHealth::Canceled,
            error_class: Some(ErrorClass::Canceled),
            error: Some(msg.into()),
        }
    }
}

/// A job's `secrets`, sealed with the lab's key (see [`crate::secrets`]):
/// base64 of the nonce and of the ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecrets {
    pub nonce: String,
    pub data: String,
}

/// A job as the store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    pub name: String,
    pub device_type: String,
    pub priority: u8,
    pub tags: Vec<String>,
    pub submitter: String,
    /// The YAML as submitted, so the job can be re-parsed after a restart;
    /// the values of its `secrets` replaced by `[MASKED]`.
    pub definition: String,
    /// The `secrets` values, sealed: the only place they are kept.
    #[serde(default)]
    pub sealed_secrets: Option<SealedSecrets>,
    pub state: JobState,
    pub health: JobHealth,
    pub error_class: Option<ErrorClass>,
    pub error: Option<String>,
    pub board: Option<String>,
    pub submit_time: u64,
    pub start_time: Option<u64>,
    pub end_time: Option<u64>,
    /// A health check labd submitted for `board`, not a user's job.
    #[serde(default)]
    pub health_check: bool,
    /// The submitter's uid, from the socket peer's credentials.
    #[serde(default)]
    pub submitter_uid: Option<u32>,
    /// The submitter's group and supplementary groups, from the socket
    /// peer's credentials: with the uid, the rights its `file://`
    /// artifacts are read with.
    #[serde(default)]
    pub submitter_gid: Option<u32>,
    #[serde(default)]
    pub submitter_groups: Option<Vec<u32>>,
    /// The console log was dropped by the retention policy.
    #[serde(default)]
    pub log_pruned: bool,
    /// The job this one retries (the job's `failure_retry`).
    #[serde(default)]
    pub retry_of: Option<JobId>,
    /// Which attempt this is, from 1.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// Where the job's time went on its board, phase by phase, in order.
    #[serde(default)]
    pub timing: Vec<PhaseTime>,
    /// The lava-server job this one runs, when labd took it as a LAVA
    /// worker: it runs on that board only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lava: Option<LavaJob>,
}

/// A lava-server's job as labd runs it (see `lava_worker`). The job's
/// token is not kept: the server gives it again with every ping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LavaJob {
    /// The job's id on the server.
    pub id: u64,
    /// The board the server's device is.
    pub board: String,
}

/// How much of a job's log a lava-server has taken (see `lava_worker`): its
/// next line's index there, and how far into each of the job's console
/// log, events and results those lines go. Kept in the store after each
/// batch the server takes, so that a restarted labd sends the rest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LavaSent {
    pub index: u64,
    /// Bytes of the console log sent (always at a line's end, or a piece's).
    pub log: u64,
    pub events: usize,
    pub results: usize,
    /// Whether LAVA's own `lava`/`job` result, the last line, was taken.
    pub ended: bool,
}

/// Whose rights a job's `file://` artifacts are read with: its submitter,
/// as the kernel named them on the socket (`SO_PEERCRED`, `SO_PEERGROUPS`).
/// A group list the record lacks (jobs from before it was kept) is looked
/// up when a file is opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub uid: u32,
    pub gid: Option<u32>,
    pub groups: Option<Vec<u32>>,
}

impl JobRecord {
    /// The identity the job's files are read with; None for labd's own
    /// jobs (health checks), which come from the lab's config.
    pub fn reader(&self) -> Option<Identity> {
        self.submitter_uid.map(|uid| Identity {
            uid,
            gid: self.submitter_gid,
            groups: self.submitter_groups.clone(),
        })
    }
}

/// Time spent in one board phase of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseTime {
    pub phase: String,
    pub ms: u64,
}

fn first_attempt() -> u32 {
    1
}

impl JobRecord {
    /// A new job, as submitted: not yet stored (its id comes from the store).
    pub fn submitted(
        name: String,
        device_type: String,
        priority: u8,
        tags: Vec<String>,
        submitter: String,
        definition: String,
    ) -> JobRecord {
        JobRecord {
            id: 0,
            name,
            device_type,
            priority,
            tags,
            submitter,
            definition,
            sealed_secrets: None,
            state: JobState::Submitted,
            health: JobHealth::Unknown,
            error_class: None,
            error: None,
            board: None,
            submit_time: now_ms(),
            start_time: None,
            end_time: None,
            health_check: false,
            submitter_uid: None,
            submitter_gid: None,
            submitter_groups: None,
            log_pruned: false,
            retry_of: None,
            attempt: 1,
            timing: Vec::new(),
            lava: None,
        }
    }

    /// Ends the job with `outcome`, now.
    pub fn finish(&mut self, outcome: JobOutcome) {
        self.state = JobState::Finished;
        self.health = outcome.health;
        self.error_class = outcome.error_class;
        self.error = outcome.error;
        self.end_time = Some(now_ms());
    }
}

/// One recorded step of a job: a state change, a board phase transition, a timeout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub time: u64,
    pub kind: String,
    pub message: String,
}

impl JobEvent {
    /// An event that happens now.
    pub fn now(kind: &str, message: impl Into<String>) -> Self {
        JobEvent {
            time: now_ms(),
            kind: kind.to_owned(),
            message: message.into(),
        }
    }
}

/// One LAVA test case result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestCase {
    pub suite: String,
    pub set: Option<String>,
    pub name: String,
    pub result: String,
    pub measurement: Option<String>,
    pub units: Option<String>,
    /// LAVA's `lava-test-reference`: a URL the result refers to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// A board as the store keeps it (its persistent part: health survives restarts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoardRecord {
    pub name: String,
    pub health: BoardHealth,
    pub health_reason: Option<String>,
    /// When the board last passed a health check (ms since the epoch).
    #[serde(default)]
    pub last_health_check: Option<u64>,
}
