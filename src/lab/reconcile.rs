//! The start-up reconcile: bringing the store to a consistent state after a
//! start or a crash, then loading the boards' health and the queue from it.
//!
//! It runs once, before the lab answers any message (`ctx.wait`), so that
//! nobody sees a job that a dead daemon left Running, or a job ended by the
//! restart without the retry it calls for.
//!
//! Invariants:
//! - Every job left Scheduled, Running or Canceling is ended (Incomplete,
//!   or Canceled if it was being canceled), and its retry stored with the
//!   end, before the lab serves anyone.
//! - A board whose job was cut short is no longer trusted as Good.
//! - A queued lava-server's job is not kept either: it ends Incomplete
//!   (Infrastructure), and the worker reports that to the server.
//! - A queued health check is not kept: boards get fresh ones as they need
//!   them. A queued job whose stored definition no longer parses ends
//!   Incomplete (Configuration) instead of being queued.
//! - The lab schedules only once this is done (`ready`); if the store
//!   cannot be read, the daemon stops.

use super::queue::{next_attempt, stored_definition, with_secrets, Queued};
use super::LabActor;
use crate::job;
use crate::model::{BoardHealth, BoardRecord, ErrorClass, JobOutcome, JobRecord, JobState};
use crate::store::{PruneReport, Retention, Store, StoreError};
use actix::prelude::*;

/// What the store holds once reconciled: the boards' health, the queued
/// jobs, and the jobs the restart ended.
type Reconciled = (Vec<BoardRecord>, Vec<JobRecord>, Vec<JobRecord>);

impl LabActor {
    /// Runs the reconcile before any other message, then schedules.
    pub(super) fn start_reconcile(&mut self, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        let retention = self
            .cfg
            .retention
            .enabled()
            .then(|| crate::store::Retention::from_config(&self.cfg.retention));
        let maxima = self.cfg.limits.timeout_maxima();
        ctx.wait(
            reconcile(store, retention, maxima)
                .into_actor(self)
                .map(|res, act, ctx| act.reconciled(res, ctx)),
        );
    }

    /// Takes in the reconciled store: the boards' stored health, doubt on
    /// the boards whose jobs were cut short, and the queue.
    fn reconciled(&mut self, res: Result<Reconciled, StoreError>, ctx: &mut Context<Self>) {
        let (boards, queued, interrupted) = match res {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "reading the store at start failed");
                System::current().stop_with_code(1);
                return;
            }
        };
        for r in boards {
            if let Some(s) = self.boards.get_mut(&r.name) {
                s.health = r.health;
                s.health_reason = r.health_reason;
                s.last_health_check = r.last_health_check;
            }
        }
        for j in &interrupted {
            let Some(name) = &j.board else { continue };
            if let Some(s) = self.boards.get_mut(name) {
                if s.health == BoardHealth::Good {
                    s.health = BoardHealth::Unknown;
                    s.health_reason = Some("dispatcher restarted during a job".into());
                    self.persist_board(name);
                }
            }
        }
        for j in queued {
            if j.lava.is_some() {
                // A lava-server's job does not outlive the labd that took
                // it: its worker reports it ended, and the server decides
                // whether it runs again.
                let fut = self.store.update_job(j.id, |r| {
                    r.finish(JobOutcome::incomplete(
                        ErrorClass::Infrastructure,
                        "labd restarted before the lava-server's job ran",
                    ));
                    Ok(())
                });
                actix::spawn(async move {
                    let _ = fut.await;
                });
                continue;
            }
            if j.health_check {
                // A health check that never started: the boards get fresh
                // ones as they need them.
                let fut = self.store.update_job(j.id, |r| {
                    r.finish(JobOutcome::canceled(
                        "health check superseded after a restart",
                    ));
                    Ok(())
                });
                actix::spawn(async move {
                    let _ = fut.await;
                });
                continue;
            }
            let def = stored_definition(&j, &self.cfg.limits.timeout_maxima())
                .map_err(|e| format!("definition no longer valid: {e}"))
                .and_then(|def| with_secrets(def, &j, &self.secrets_key));
            match def {
                Ok(def) => self.enqueue(Queued::of(&j, def), ctx),
                Err(msg) => {
                    tracing::error!(job = j.id, error = %msg, "stored job cannot run");
                    let fut = self.store.update_job(j.id, move |r| {
                        r.finish(JobOutcome::incomplete(ErrorClass::Configuration, msg));
                        Ok(())
                    });
                    actix::spawn(async move {
                        let _ = fut.await;
                    });
                }
            }
        }
        self.ready = true;
        self.schedule(ctx);
    }
}

/// Brings the store to a consistent state after a start or a crash.
async fn reconcile(
    store: Store,
    retention: Option<Retention>,
    maxima: job::TimeoutMaxima,
) -> Result<Reconciled, StoreError> {
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

/// Logs what a retention pass dropped, or why it failed.
pub(super) fn log_prune(r: Result<PruneReport, StoreError>) {
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
