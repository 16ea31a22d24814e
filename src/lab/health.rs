//! Health checks and board health: loading each device type's health-check
//! job, starting one on a board, and judging a board by how its jobs end.
//!
//! When a check is due is the scheduler's rule
//! (`schedule::BoardView::health_check_due`); this module owns the rest.
//!
//! Invariants:
//! - A health check is read and validated whole before it is used: at
//!   start, where a bad one stops the daemon, and at reload, where it leaves
//!   the running config alone. Its device type must be the one it is for.
//! - A board running its health check is Reserved from the moment the
//!   check is decided, so nothing else takes it meanwhile.
//! - A passing health check makes a board Good, and so does a complete job
//!   when its device type has no health check; a failing health check, or a
//!   console lost in `console_failures_before_bad` jobs in a row, makes it
//!   Bad; an Infrastructure or Bug error only casts doubt (Good to Unknown).
//! - A job's end never changes a board that is Bad, in Maintenance or
//!   Retired: those wait for an admin (a maintenance asked for during the
//!   job applies after it is judged).

use super::queue::Queued;
use super::{LabActor, Slot};
use crate::config::LabConfig;
use crate::error::{ApiError, ErrorCode};
use crate::job::{self, JobDefinition};
use crate::model::{
    now_ms, BoardHealth, BoardState, ErrorClass, JobHealth, JobId, JobOutcome, JobRecord,
};
use actix::prelude::*;
use std::collections::BTreeMap;

/// A device type's health-check job, read and validated at start.
pub(super) struct HealthCheck {
    file: String,
    text: String,
    def: JobDefinition,
}

/// Reads `<dir>/<device type>.yaml` for each device type the boards use.
pub(super) fn load_health_checks(
    cfg: &LabConfig,
) -> Result<BTreeMap<String, HealthCheck>, ApiError> {
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
        let refused = |e: job::JobError| {
            let mut e = ApiError::from(e);
            e.message = format!("health check: {}", e.message);
            e
        };
        let parsed = job::parse(&file, &text).map_err(refused)?;
        // Its record keeps the text with the secrets' values masked; a
        // health check is never queued again after a restart, so the
        // values need no sealed copy.
        let text = job::mask_secrets(&file, &text, &parsed).map_err(refused)?;
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

impl LabActor {
    /// Stores a health-check job for `board` and gives it to the board. The
    /// board is Reserved meanwhile, so nothing else takes it.
    pub(super) fn start_health_check(&mut self, board: String, ctx: &mut Context<Self>) {
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
}

/// Judges a board by the end of its job `id`: `was_health_check` when the
/// job was the board's health check, `has_health_check` when its device
/// type has one. A console lost in `console_failures_before_bad` jobs in a
/// row makes the board Bad.
pub(super) fn judge(
    s: &mut Slot,
    id: JobId,
    outcome: &JobOutcome,
    was_health_check: bool,
    has_health_check: bool,
    console_failures_before_bad: u32,
) {
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
        if s.console_failures >= console_failures_before_bad && s.health.schedulable() {
            s.health = BoardHealth::Bad;
            s.health_reason = Some(format!(
                "console lost in {} jobs in a row",
                s.console_failures
            ));
        }
    } else if outcome.health == JobHealth::Complete {
        s.console_failures = 0;
    }
}
