//! A job's end: recording it, judging the board by it, freeing the board,
//! queuing a retry, and scheduling again.
//!
//! Every way a job ends (its board's report, a start that failed, a board
//! actor that died) comes through [`LabActor::finish_timed`], so that the
//! order of the writes and of the board's release is decided in one place.
//!
//! Invariants:
//! - The job's end is queued on the store's writer before anything else the
//!   board does next, and before the next scheduling pass.
//! - The board is freed in the lab's view at once, so whoever sees the job
//!   finished also sees its board free.
//! - A retry is stored in the same transaction as the end it follows.
//! - An end is recorded once: a job already Finished is left as it is.

use super::health;
use super::queue::next_attempt;
use super::LabActor;
use crate::model::{BoardState, ErrorClass, JobHealth, JobId, JobOutcome, JobState, PhaseTime};
use crate::store::Refused;
use actix::prelude::*;

impl LabActor {
    /// Records a job's end, frees its board and schedules again.
    ///
    /// The board's view changes at once, so that whoever sees the job
    /// finished also sees its board free; the store applies writes in the
    /// order they are queued, so the job's Finished record still lands
    /// before anything the board does next. Scheduling waits for it.
    pub(super) fn finish(
        &mut self,
        id: JobId,
        board: &str,
        outcome: JobOutcome,
        ctx: &mut Context<Self>,
    ) {
        self.finish_timed(id, board, outcome, Vec::new(), ctx)
    }

    /// `finish`, with where the job's time went on its board.
    pub(super) fn finish_timed(
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
            health::judge(
                s,
                id,
                &outcome,
                was_health_check,
                has_health_check,
                self.cfg.limits.console_failures_before_bad,
            );
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
}
