//! Life under systemd: readiness, stopping and watchdog notifications over
//! `NOTIFY_SOCKET`, and a listening socket inherited by socket activation.
//!
//! All of it is a no-op when labd is not started by systemd (the variables
//! are absent), so the same binary runs by hand, in tests and under systemd.
//!
//! ## Design
//!
//! `systemd::ready` after the socket is served, `stopping` when the drain
//! begins, and a watchdog task that pings only after the lab actor answers a
//! `Ping` (a wedged actor system stops the pings). With `LISTEN_FDS`, the
//! inherited socket is used instead of binding one, after checking its mode
//! and group against `[auth]`. Units in `systemd/`.
//!
//! ## Invariants
//!
//! Every notification is a no-op without `NOTIFY_SOCKET`; an inherited
//! socket is used only if its mode and group match `[auth]`.

use crate::lab::{LabActor, Ping};
use actix::Addr;
use sd_notify::NotifyState;
use std::os::fd::FromRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("socket activation: {0}")]
    Io(#[from] std::io::Error),
    #[error("socket activation: expected one listening socket, got {0}")]
    Count(usize),
    #[error(
        "socket activation: {path} has mode {found:o} and group {gid}, but the config's [auth] asks for mode {want:o}{group}; make labd.socket's SocketMode and SocketGroup match"
    )]
    Mismatch {
        path: String,
        found: u32,
        gid: u32,
        want: u32,
        group: String,
    },
}

fn notify(state: NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "notifying systemd failed");
    }
}

/// READY=1: the socket is served and the lab has started.
pub fn ready() {
    notify(NotifyState::Ready);
}

/// STOPPING=1: the drain has begun.
pub fn stopping() {
    notify(NotifyState::Stopping);
}

/// Sends WATCHDOG=1 at half the interval systemd asked for, but only while
/// the lab actor answers: a wedged lab stops the pings and systemd restarts
/// labd.
pub fn start_watchdog(lab: Addr<LabActor>) {
    let Some(every) = sd_notify::watchdog_enabled() else {
        return;
    };
    let half = every / 2;
    tracing::info!(ms = every.as_millis() as u64, "systemd watchdog on");
    actix::spawn(async move {
        let mut tick = tokio::time::interval(half);
        loop {
            tick.tick().await;
            match tokio::time::timeout(half, lab.send(Ping)).await {
                Ok(Ok(())) => notify(NotifyState::Watchdog),
                Ok(Err(_)) => return,
                Err(_) => tracing::error!("lab actor did not answer within the watchdog interval"),
            }
        }
    });
}

/// The listening socket systemd passed (`LISTEN_FDS`), if any, checked
/// against the mode and group the config asks for.
pub fn inherited_listener(
    path: &Path,
    mode: u32,
    group: Option<(u32, &str)>,
) -> Result<Option<std::os::unix::net::UnixListener>, ActivationError> {
    let fds: Vec<_> = sd_notify::listen_fds()?.collect();
    match fds.len() {
        0 => return Ok(None),
        1 => {}
        n => return Err(ActivationError::Count(n)),
    }
    // SAFETY: under the sd_listen_fds protocol (LISTEN_PID is ours, checked
    // by `listen_fds`) the passed descriptor is open and belongs to this
    // process alone; it is wrapped exactly once, here.
    let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fds[0]) };
    let meta = std::fs::metadata(path)?;
    let found = meta.mode() & 0o7777;
    let gid_ok = group.is_none_or(|(gid, _)| meta.gid() == gid);
    if found != mode || !gid_ok {
        return Err(ActivationError::Mismatch {
            path: path.display().to_string(),
            found,
            gid: meta.gid(),
            want: mode,
            group: group
                .map(|(_, n)| format!(" and group {n}"))
                .unwrap_or_default(),
        });
    }
    listener.set_nonblocking(true)?;
    Ok(Some(listener))
}
