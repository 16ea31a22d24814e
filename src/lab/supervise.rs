//! Supervising the board actors: starting one per board with its console
//! and relay, storing each board's health, and following what the board
//! actors report (a phase, a job's end, a death).
//!
//! Invariants:
//! - A board actor owns its hardware; the lab only starts it, retires it,
//!   and keeps a handle on its relay to report the last commanded state.
//! - A board actor that dies is replaced at once; the board is powered off
//!   by the new actor and its job, if any, ends Incomplete (Bug) before the
//!   board is free for another. The board must prove itself again
//!   (Unknown), unless it is in Maintenance or Retired, which stay so.

use super::{LabActor, Slot};
use crate::board::{BoardActor, PowerBoard};
use crate::config::BoardConfig;
use crate::console;
use crate::device_type::DeviceType;
use crate::model::{now_ms, BoardHealth, BoardRecord, BoardState, ErrorClass, JobId, JobOutcome};
use crate::power::{self, PowerAction};
use crate::runner::Phase;
use actix::prelude::*;

impl LabActor {
    /// A new board's slot, its actor started: Idle, health Unknown until
    /// the store or a job says otherwise.
    pub(super) fn new_slot(
        &self,
        b: &BoardConfig,
        dt: DeviceType,
        ctx: &mut Context<Self>,
    ) -> Slot {
        let (addr, power) = self.start_board(b, &dt, ctx);
        Slot {
            cfg: b.clone(),
            addr,
            power,
            dt,
            state: BoardState::Idle,
            health: BoardHealth::Unknown,
            health_reason: None,
            job: None,
            health_check: false,
            last_health_check: None,
            phase: Phase::Off,
            pending_health: None,
            after_job: None,
            phase_since: now_ms(),
            job_since: None,
            lava_job: None,
            console_failures: 0,
        }
    }

    /// Starts a board's actor, with its console and its (timed) relay.
    pub(super) fn start_board(
        &self,
        b: &BoardConfig,
        dt: &DeviceType,
        ctx: &mut Context<Self>,
    ) -> (Addr<BoardActor>, std::sync::Arc<dyn power::Power>) {
        let sim = self.cfg.sim_control.as_ref();
        let console = console::from_config(
            &b.name,
            &b.console,
            dt.console_baud,
            sim,
            &self.cfg.lock_dir,
        );
        // The lab keeps a handle too, to report the last commanded state.
        let power: std::sync::Arc<dyn power::Power> = std::sync::Arc::new(power::Timed::new(
            power::from_config(b, &self.cfg.state_dir, sim),
            b.name.clone(),
            self.metrics.clone(),
        ));
        let addr = BoardActor::new(
            b.name.clone(),
            dt.clone(),
            console,
            power.clone(),
            self.store.clone(),
            self.tftp.clone(),
            ctx.address().recipient(),
            self.cfg.limits.idle_console_ring_bytes,
            self.cfg.limits.max_job_log_bytes,
            std::time::Duration::from_secs(self.cfg.limits.console_reconnect_secs),
            self.metrics.clone(),
        )
        .with_boot_slots(self.boot_slots.clone(), b.power.relay_device())
        .with_read_pacing(crate::console::ReadPacing::from_limits(&self.cfg.limits))
        .start();
        (addr, power)
    }

    /// Stores a board's health, in the background.
    pub(super) fn persist_board(&self, name: &str) {
        if let Some(s) = self.boards.get(name) {
            let fut = self.store.put_board(BoardRecord {
                name: name.to_owned(),
                health: s.health,
                health_reason: s.health_reason.clone(),
                last_health_check: s.last_health_check,
            });
            actix::spawn(async move {
                if let Err(e) = fut.await {
                    tracing::error!(error = %e, "storing board health failed");
                }
            });
        }
    }

    /// A board entered a phase of its job (or went back to Off).
    pub(super) fn board_phase(&mut self, board: &str, phase: Phase) {
        if let Some(s) = self.boards.get_mut(board) {
            if s.phase != phase {
                s.phase_since = now_ms();
            }
            s.phase = phase;
        }
    }

    /// Replaces a board actor that died, powers the board off, and ends the
    /// job it had (`job`, as the actor knew it, or the one the lab gave it).
    pub(super) fn board_died(
        &mut self,
        board: String,
        job: Option<JobId>,
        ctx: &mut Context<Self>,
    ) {
        tracing::error!(%board, "board actor died; replacing it");
        let Some(slot) = self.boards.get(&board) else {
            return;
        };
        let (cfg, dt) = (slot.cfg.clone(), slot.dt.clone());
        // The job the lab gave the board, even if the actor died
        // before it took note of it.
        let job = job.or(slot.job);
        let (addr, power) = self.start_board(&cfg, &dt, ctx);
        if let Some(s) = self.boards.get_mut(&board) {
            s.addr = addr.clone();
            s.power = power;
            s.phase = Phase::Off;
            // Retired and maintenance boards stay so; anything else
            // must prove itself again.
            if s.health.schedulable() || s.health == BoardHealth::Bad {
                s.health = BoardHealth::Unknown;
                s.health_reason = Some("board actor crashed".into());
            }
        }
        self.persist_board(&board);
        // The dead actor may have left the board powered; the new one
        // powers it off before the board is free for the next job.
        let name = board;
        ctx.spawn(
            async move { addr.send(PowerBoard(PowerAction::Off)).await }
                .into_actor(self)
                .map(move |r, act, ctx| {
                    if !matches!(r, Ok(Ok(()))) {
                        tracing::warn!(board = %name, result = ?r, "power off after a crash failed");
                    }
                    match job {
                        Some(id) => act.finish(
                            id,
                            &name,
                            JobOutcome::incomplete(ErrorClass::Bug, "board actor crashed"),
                            ctx,
                        ),
                        None => act.schedule(ctx),
                    }
                }),
        );
    }
}
