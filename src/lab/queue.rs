//! The job queue: what a queued job carries, putting jobs in line (new,
//! retried, or back after a failed cancel), and the queue timeout.
//!
//! It exists to keep the queue's bookkeeping apart from the decision of
//! which board takes which job (`schedule`).
//!
//! Invariants:
//! - The queue is kept best first, by [`Rank`]; only [`LabActor::enqueue`]
//!   inserts into it.
//! - A job in the queue is Submitted in the store. A job leaves the queue
//!   before its end is written (a queue timeout, a cancel), or as it is
//!   given to a board.
//! - A queued job's definition is parsed from the stored text and capped by
//!   the lab's timeout maxima ([`stored_definition`]), so that a restart
//!   queues the same job the submitter was told about.

use super::schedule::{place, Rank};
use super::LabActor;
use crate::job::{self, JobDefinition};
use crate::model::{
    now_ms, ErrorClass, Identity, JobHealth, JobId, JobOutcome, JobRecord, JobState, LavaJob,
};
use crate::store::Refused;
use actix::prelude::*;

/// A job waiting for a board.
pub(super) struct Queued {
    pub id: JobId,
    pub priority: u8,
    pub submit_time: u64,
    pub def: JobDefinition,
    /// Whose rights its `file://` artifacts are read with.
    pub reader: Option<Identity>,
    /// A lava-server's job: its id there, and the one board it runs on
    /// (its device's).
    pub lava: Option<LavaJob>,
}

impl Queued {
    pub(super) fn of(r: &JobRecord, def: JobDefinition) -> Queued {
        Queued {
            id: r.id,
            priority: r.priority,
            submit_time: r.submit_time,
            def,
            reader: r.reader(),
            lava: r.lava.clone(),
        }
    }

    fn rank(&self) -> Rank {
        Rank::new(self.priority, self.submit_time, self.id)
    }
}

impl LabActor {
    /// Queues a job, in priority then submit order, and arms its queue
    /// timeout (the job's `timeouts.queue`, else the lab's).
    pub(super) fn enqueue(&mut self, q: Queued, ctx: &mut Context<Self>) {
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
        let pos = place(&self.queue, Queued::rank, q.rank());
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
    pub(super) fn queue_retry(&mut self, old: JobId, retry: &JobRecord, ctx: &mut Context<Self>) {
        // It was made from a definition that parsed: it parses again.
        let Ok(def) = stored_definition(retry, &self.cfg.limits.timeout_maxima()) else {
            return;
        };
        let def = match with_secrets(def, retry, &self.secrets_key) {
            Ok(d) => d,
            Err(msg) => {
                let fut = self.store.update_job(retry.id, move |r| {
                    r.finish(JobOutcome::incomplete(ErrorClass::Configuration, msg));
                    Ok(())
                });
                actix::spawn(async move {
                    let _ = fut.await;
                });
                return;
            }
        };
        tracing::info!(
            job = old,
            retry = retry.id,
            attempt = retry.attempt,
            "retrying after an infrastructure error"
        );
        self.enqueue(Queued::of(retry, def), ctx);
    }
}

/// A stored job's definition as it is queued: parsed again from the text
/// it was submitted with, its timeouts capped by the lab's maxima.
pub(super) fn stored_definition(
    j: &JobRecord,
    maxima: &job::TimeoutMaxima,
) -> Result<JobDefinition, job::JobError> {
    let mut def = job::parse(&format!("job {}", j.id), &j.definition)?.definition;
    def.cap_timeouts(maxima);
    Ok(def)
}

/// A stored job's definition with its `secrets` opened from their sealed
/// copy (the stored text holds only their masks).
pub(super) fn with_secrets(
    mut def: JobDefinition,
    j: &JobRecord,
    key: &Result<std::sync::Arc<crate::secrets::LabKey>, String>,
) -> Result<JobDefinition, String> {
    let Some(sealed) = &j.sealed_secrets else {
        return Ok(def);
    };
    let key = key
        .as_ref()
        .map_err(|e| format!("its secrets cannot be opened: {e}"))?;
    def.secrets = key
        .open(sealed)
        .map_err(|e| format!("its secrets cannot be opened: {e}"))?;
    Ok(def)
}

/// The next attempt of a job that ended with an Infrastructure error, if
/// its `failure_retry` allows one more: the record to store.
pub(super) fn next_attempt(j: &JobRecord, maxima: &job::TimeoutMaxima) -> Option<JobRecord> {
    // A lava-server's job is retried by the server (or not), never here:
    // it has one job there to report to.
    if j.health != JobHealth::Incomplete
        || j.error_class != Some(ErrorClass::Infrastructure)
        || j.health_check
        || j.lava.is_some()
    {
        return None;
    }
    let def = stored_definition(j, maxima).ok()?;
    if def.failure_retry.unwrap_or(1) <= j.attempt {
        return None;
    }
    let rec = JobRecord {
        sealed_secrets: j.sealed_secrets.clone(),
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
