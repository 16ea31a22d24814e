//! Reloading the config (SIGHUP, `labctl reload`): re-reading the config
//! file, the device types and the health checks, and applying the change to
//! the running lab.
//!
//! Invariants:
//! - A reload is all or nothing: every file is read and every board's
//!   device type resolved before anything changes, and a refused reload
//!   leaves the running config as it was.
//! - Keys that need a restart (the socket, the store, TFTP, auth, ...)
//!   must not change; a reload that changes one is refused.
//! - A busy board is never pulled from under its job: its removal or
//!   restart waits for the job's end ([`AfterJob`]).
//! - Files are read off the actor thread.

use super::api::{Caller, LabReply};
use super::requests::{ready, Reply};
use super::{health, LabActor};
use crate::board::Retire;
use crate::config::{BoardConfig, LabConfig};
use crate::device_type::DeviceType;
use crate::error::{ApiError, ErrorCode};
use crate::model::BoardState;
use crate::runner::Phase;
use actix::prelude::*;
use std::collections::BTreeMap;

/// A reload's change to a busy board, applied when its job ends.
pub(super) enum AfterJob {
    /// The board left the config.
    Remove,
    /// Its config or device type changed.
    Restart(Box<(BoardConfig, DeviceType)>),
}

impl LabActor {
    /// `Reload`: re-reads the config file and applies it (admins).
    pub(super) fn reload(&mut self, caller: Caller) -> Reply {
        if let Err(e) = caller.require_admin("reload the config") {
            return ready(Err(e));
        }
        let Some(path) = self.config_path.clone() else {
            return ready(Err(ApiError::new(
                ErrorCode::InvalidState,
                "this lab runs without a config file (the demo); nothing to reload",
            )));
        };
        Box::pin(
            async move {
                // Reading files may block: off the actor thread.
                tokio::task::spawn_blocking(move || {
                    let cfg = LabConfig::load(&path)?;
                    let dts = crate::device_type::load(cfg.device_types_dir.as_deref())?;
                    let hcs = health::load_health_checks(&cfg)?;
                    Ok::<_, ApiError>((cfg, dts, hcs))
                })
                .await
                .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
            }
            .into_actor(self)
            .map(|r, act, ctx| {
                let (cfg, dts, hcs) = r.inspect_err(|e| {
                    tracing::error!(error = %e.message, "reload refused; the running config stays");
                })?;
                Ok(LabReply::Reloaded(act.apply_config(cfg, dts, hcs, ctx)?))
            }),
        )
    }

    /// Applies a re-read config. Keys that need a restart must not change.
    /// Added boards start at once; removed or changed boards leave or
    /// restart now if idle, else when their job ends. Says what it did.
    fn apply_config(
        &mut self,
        cfg: LabConfig,
        device_types: BTreeMap<String, DeviceType>,
        health_checks: BTreeMap<String, health::HealthCheck>,
        ctx: &mut Context<Self>,
    ) -> Result<Vec<String>, ApiError> {
        let old = &self.cfg;
        let fixed = [
            ("socket", old.socket != cfg.socket),
            ("state_dir", old.state_dir != cfg.state_dir),
            ("store", old.store != cfg.store),
            ("tftp", old.tftp != cfg.tftp),
            ("artifact_cache", old.artifact_cache != cfg.artifact_cache),
            ("deploy", old.deploy != cfg.deploy),
            ("git", old.git != cfg.git),
            ("nfs", old.nfs != cfg.nfs),
            ("auth", old.auth != cfg.auth),
            ("metrics_listen", old.metrics_listen != cfg.metrics_listen),
            ("slow", old.slow != cfg.slow),
            ("sim_control", old.sim_control != cfg.sim_control),
            // The worker's server and name (its token file is read again
            // whenever it changes, reload or not).
            ("lava", old.lava != cfg.lava),
            ("log", old.log != cfg.log),
            ("lock_dir", old.lock_dir != cfg.lock_dir),
        ];
        let changed: Vec<&str> = fixed.iter().filter(|(_, c)| *c).map(|(k, _)| *k).collect();
        if !changed.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidState,
                format!(
                    "reload: {} changed; restart labd to apply that (nothing was changed)",
                    changed.join(", ")
                ),
            ));
        }
        let mut wanted = BTreeMap::new();
        for b in &cfg.boards {
            // A board's LAVA device configuration was rendered again with
            // the config: a changed dictionary or template restarts it.
            let dt = super::board_device_type(b, &device_types).map_err(|e| ApiError {
                message: format!("reload: {}", e.message),
                ..e
            })?;
            wanted.insert(b.name.clone(), (b.clone(), dt));
        }
        super::warn_lava_ignored(&cfg);
        let mut report = Vec::new();
        let names: Vec<String> = self.boards.keys().cloned().collect();
        for name in names {
            let Some(slot) = self.boards.get_mut(&name) else {
                continue;
            };
            let change = match wanted.remove(&name) {
                None => AfterJob::Remove,
                Some((b, dt)) if b != slot.cfg || dt != slot.dt => {
                    AfterJob::Restart(Box::new((b, dt)))
                }
                Some(_) => continue,
            };
            let what = match change {
                AfterJob::Remove => "removed",
                AfterJob::Restart(_) => "restarted with its new config",
            };
            if slot.state == BoardState::Idle {
                report.push(format!("board {name} {what}"));
                self.apply_after_job(&name, change, ctx);
            } else {
                report.push(format!("board {name} will be {what} when its job ends"));
                slot.after_job = Some(change);
            }
        }
        for (name, (b, dt)) in wanted {
            report.push(format!("board {name} added"));
            let slot = self.new_slot(&b, dt, ctx);
            self.boards.insert(name, slot);
        }
        self.boot_slots.set_limits(
            cfg.limits.max_concurrent_boots,
            cfg.limits.max_concurrent_boots_per_relay,
        );
        self.cfg = cfg;
        self.device_types = device_types;
        self.health_checks = health_checks;
        if report.is_empty() {
            report.push("no board changed".into());
        }
        tracing::info!(changes = ?report, "config reloaded");
        self.schedule(ctx);
        Ok(report)
    }

    /// Removes or restarts an idle board as a reload asked.
    pub(super) fn apply_after_job(
        &mut self,
        name: &str,
        change: AfterJob,
        ctx: &mut Context<Self>,
    ) {
        let Some(slot) = self.boards.get(name) else {
            return;
        };
        slot.addr.do_send(Retire);
        match change {
            AfterJob::Remove => {
                self.boards.remove(name);
            }
            AfterJob::Restart(new) => {
                let (b, dt) = *new;
                let (addr, power) = self.start_board(&b, &dt, ctx);
                if let Some(slot) = self.boards.get_mut(name) {
                    slot.addr = addr;
                    slot.power = power;
                    slot.cfg = b;
                    slot.dt = dt;
                    slot.phase = Phase::Off;
                }
            }
        }
    }
}
