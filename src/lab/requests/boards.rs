//! Requests about boards and the lab as a whole: `Boards`, `SetHealth`,
//! `Power`, the consoles (`WatchConsole`, `IdleConsole`, `TypeConsole`)
//! and `Metrics`.
//!
//! Invariants:
//! - Anyone may look (the board list, a console, the metrics); changing a
//!   board (its health, its power, typing on its console) is for admins.
//! - Hands-on work ([`LabActor::by_hand`]) needs a board idle in
//!   Maintenance, so that it never meets a job: the scheduler gives such a
//!   board nothing.
//! - A health change asked for while the board is busy applies when its
//!   job ends, but is stored as done at once, so that it survives a
//!   restart.

use super::{not_found, ready, Reply};
use crate::board::{BoardActor, BoardError, IdleConsole, PowerBoard, TypeConsole, WatchConsole};
use crate::error::{ApiError, ErrorCode};
use crate::lab::{BoardInfo, Caller, LabActor, LabReply};
use crate::model::{BoardHealth, BoardRecord, BoardState};
use crate::power::PowerAction;
use actix::prelude::*;
use std::collections::BTreeMap;

impl LabActor {
    /// `Boards`: every board as the lab sees it, and the queue's length.
    pub(in crate::lab) fn list_boards(&mut self) -> Reply {
        ready(Ok(LabReply::Boards(
            self.boards
                .iter()
                .map(|(n, s)| BoardInfo {
                    name: n.clone(),
                    device_type: s.cfg.device_type.clone(),
                    tags: s.cfg.tags.clone(),
                    state: s.state,
                    health: s.health,
                    health_reason: s.health_reason.clone(),
                    job: s.job,
                    phase: s.phase,
                    phase_since: s.phase_since,
                    job_since: s.job.and(s.job_since),
                    power: s.power.state(),
                    lava: self.lava_owner(s),
                    lava_job: s.job.and(s.lava_job),
                })
                .collect(),
            self.queue.len(),
        )))
    }

    /// `SetHealth`: an admin takes a board out of service (Maintenance,
    /// Retired) or puts it back (Unknown: a health check decides).
    pub(in crate::lab) fn set_health(
        &mut self,
        board: String,
        health: BoardHealth,
        reason: Option<String>,
        caller: Caller,
    ) -> Reply {
        if let Err(e) = caller.require_admin(&format!("change the health of {board}")) {
            return ready(Err(e));
        }
        let Some(s) = self.boards.get_mut(&board) else {
            return ready(Err(not_found(&board)));
        };
        if health == BoardHealth::Unknown {
            // Online, as LAVA: the board proves itself again.
            s.pending_health = None;
            s.health = BoardHealth::Unknown;
        } else if s.state != BoardState::Idle {
            s.pending_health = Some(health);
        } else {
            s.health = health;
        }
        s.health_reason = reason;
        let rec = BoardRecord {
            name: board.clone(),
            // A pending change is stored as done: if the daemon dies
            // first, the job is cut short anyway and the admin's
            // wish still holds after the restart.
            health: s.pending_health.unwrap_or(s.health),
            health_reason: s.health_reason.clone(),
            last_health_check: s.last_health_check,
        };
        let store = self.store.clone();
        Box::pin(
            async move { store.put_board(rec).await }
                .into_actor(self)
                .map(|r, act, ctx| {
                    r?;
                    act.schedule(ctx);
                    Ok(LabReply::Done)
                }),
        )
    }

    /// `Power`: an admin switches the relay of a board in maintenance.
    pub(in crate::lab) fn power(
        &mut self,
        board: String,
        action: PowerAction,
        caller: Caller,
    ) -> Reply {
        let what = format!("switch the power of {board}");
        match self.by_hand(&board, &caller, &what, "for manual power") {
            Ok(addr) => self.send_by_hand(addr, PowerBoard(action)),
            Err(e) => ready(Err(e)),
        }
    }

    /// `TypeConsole`: an admin types on the console of a board in
    /// maintenance.
    pub(in crate::lab) fn type_console(
        &mut self,
        board: String,
        data: Vec<u8>,
        caller: Caller,
    ) -> Reply {
        let what = format!("type on the console of {board}");
        match self.by_hand(&board, &caller, &what, "to type on its console") {
            Ok(addr) => self.send_by_hand(addr, TypeConsole(data)),
            Err(e) => ready(Err(e)),
        }
    }

    /// `WatchConsole`: what the console said lately, then what it says
    /// (anyone may, as `console_watch`).
    pub(in crate::lab) fn watch_console(&mut self, board: String) -> Reply {
        let Some(s) = self.boards.get(&board) else {
            return ready(Err(not_found(&board)));
        };
        let addr = s.addr.clone();
        Box::pin(
            async move {
                let (ring, rx) = addr
                    .send(WatchConsole)
                    .await
                    .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
                Ok(LabReply::ConsoleStream(ring, rx))
            }
            .into_actor(self),
        )
    }

    /// `IdleConsole`: what an idle board's console said lately (anyone
    /// may).
    pub(in crate::lab) fn idle_console(&mut self, board: String) -> Reply {
        let Some(s) = self.boards.get(&board) else {
            return ready(Err(not_found(&board)));
        };
        let addr = s.addr.clone();
        Box::pin(
            async move {
                let b = addr
                    .send(IdleConsole)
                    .await
                    .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
                Ok(LabReply::Bytes(b))
            }
            .into_actor(self),
        )
    }

    /// `Metrics`: every metric, with the lab's own counts of boards and
    /// jobs, in Prometheus text format.
    pub(in crate::lab) fn scrape(&mut self) -> Reply {
        let mut scrape = crate::metrics::Scrape {
            queue_depth: self.queue.len(),
            ..Default::default()
        };
        let mut by_state: BTreeMap<&'static str, usize> = BTreeMap::new();
        *by_state.entry("Submitted").or_default() += self.queue.len();
        for s in self.boards.values() {
            *scrape
                .boards
                .entry((s.state.to_string(), s.health.to_string()))
                .or_default() += 1;
            if s.job.is_some() {
                let st = if s.state == BoardState::Running {
                    "Running"
                } else {
                    "Scheduled"
                };
                *by_state.entry(st).or_default() += 1;
            }
        }
        scrape.jobs_by_state = by_state.into_iter().collect();
        let metrics = self.metrics.clone();
        let store = self.store.clone();
        Box::pin(
            async move {
                // sled walks its files for this: off the actor thread.
                let s2 = store.clone();
                scrape.store_disk_bytes = tokio::task::spawn_blocking(move || s2.disk_bytes())
                    .await
                    .unwrap_or(0);
                Ok(LabReply::Text(metrics.render(scrape)))
            }
            .into_actor(self),
        )
    }

    /// The actor of a board an admin may work on by hand: the caller may
    /// `what` only as an admin, and the board must be idle in maintenance
    /// (`purpose` says what for, in the refusal).
    fn by_hand(
        &self,
        board: &str,
        caller: &Caller,
        what: &str,
        purpose: &str,
    ) -> Result<Addr<BoardActor>, ApiError> {
        caller.require_admin(what)?;
        let s = self.boards.get(board).ok_or_else(|| not_found(board))?;
        if s.health != BoardHealth::Maintenance || s.job.is_some() {
            return Err(ApiError::new(
                ErrorCode::InvalidState,
                format!(
                    "board {board} must be idle in maintenance {purpose} (it is {}, {})",
                    s.state, s.health
                ),
            ));
        }
        Ok(s.addr.clone())
    }

    /// Sends a hands-on command to a board actor; a refusal from the
    /// hardware is a Hardware error.
    fn send_by_hand<M>(&mut self, addr: Addr<BoardActor>, msg: M) -> Reply
    where
        M: Message<Result = Result<(), BoardError>> + Send + 'static,
        BoardActor: Handler<M>,
    {
        Box::pin(
            async move {
                addr.send(msg)
                    .await
                    .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
                    .map_err(|e| ApiError::new(ErrorCode::Hardware, e.to_string()))?;
                Ok(LabReply::Done)
            }
            .into_actor(self),
        )
    }
}
