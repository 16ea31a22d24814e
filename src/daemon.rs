//! Starting a lab: store, device types, TFTP server, lab actor and socket,
//! in that order, inside the current actix system.
//!
//! ## Threads
//!
//! All actors run on the actix system arbiter (one thread); handlers never
//! block. The socket server runs on a thread of its own (`labd-socket`, a
//! current-thread tokio runtime): it reads, decodes, answers and writes
//! every request there and sends the lab actor only what needs it, so the
//! actors' thread spends nothing on the wire, and reads of job records
//! (`jobs`, `job`, `results`, `logs`) never wait in the lab actor's mailbox
//! behind a burst of submits: `jobs` p99 under 32 clients went from 12–14 ms
//! to 6–7 ms (BENCHMARKS.md). It starts only after the lab actor has
//! reconciled the store at start-up, so no read sees a job the restart has
//! not yet ended. sled's writer and the TFTP server (async-tftp brings its
//! own reactor) have threads of their own. async-tftp runs a server and all
//! its transfers on the one thread that drives it, so labd runs
//! `tftp.threads` servers (the CPUs, at most 4), each on its own socket
//! bound to the same address with `SO_REUSEPORT`: the kernel picks the
//! server by a hash of the client's address, so a client's retried request
//! reaches the same one, and concurrent transfers use every core (32
//! concurrent transfers: 43 MB/s on one thread, 55 on two). Each server
//! thread runs under `async_io::block_on`, which polls async-io's reactor on
//! that thread while it waits; under a plain `block_on` every packet's
//! readiness went through async-io's own reactor thread and a wake-up of the
//! server's thread (70 against 55 MB/s, and a third less CPU). The port is
//! first bound without `SO_REUSEPORT`, so a port anything else holds
//! (another labd's servers included) is refused as before, never shared.
//!
//! ## Shutdown
//!
//! SIGTERM sends `Shutdown { grace }` to the lab: it stops scheduling
//! (submits are still stored and queued), lets running jobs go on for
//! `limits.shutdown_grace_secs`, then sends each board `StopJob` with
//! Incomplete (Infrastructure, "dispatcher shutdown"), which powers the
//! board off like any job end. The lab answers once no board has a job; then
//! the server's handle closes the socket (stops reading, ends follows of
//! unfinished jobs with `shutting_down`, waits up to 5 s for answers in
//! flight) and the process exits 0. A second signal makes the grace zero.
//!
//! With `[lava]`, the LAVA worker (`lava_worker`) starts with the socket
//! server, on the actix system; its HTTP calls run on tokio's blocking
//! pool. At shutdown it reports the jobs the drain ended before the socket
//! closes.
//!
//! ## Logging
//!
//! tracing throughout; the binary installs one subscriber at start from
//! `[log]` (human or JSON lines on stderr, or the journal, chosen by
//! `JOURNAL_STREAM` when unset) with `RUST_LOG` over the config's filter.
//! Each board actor has a `board` span, entered in its handlers; each job's
//! runner future is instrumented with a `job` span (`id`, `board`) inside
//! it, so whatever the boot sequence logs says which job and board it is
//! about.
//!
//! ## Metrics
//!
//! Event counts and durations are recorded where they happen (store writer
//! thread: batch time; TFTP handler: transfers and bytes; board actor:
//! console bytes and each phase's duration per device type; lab: jobs
//! submitted/finished and queue wait; server: request time by method; a
//! `Timed` wrapper around every relay: power command time; LAVA worker: its
//! link to the server, on a `LavaLinkMetrics` made here). State gauges
//! (boards by state and health, unfinished jobs, queue depth, store size,
//! process RSS and CPU) are filled by the lab actor at scrape time from what
//! it owns. The same text goes out on the socket (`metrics`) and, when
//! `metrics_listen` is set, over a minimal HTTP/1.1 `GET /metrics`
//! responder. Anything above its `[slow]` threshold is logged as a warning
//! with its fields and counted in `labd_slow_operations_total{kind}`.

use crate::config::LabConfig;
use crate::device_type;
use crate::lab::LabActor;
use crate::runner::TftpInfo;
use crate::store::Store;
use actix::prelude::*;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    DeviceType(#[from] crate::error::ConfigError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Tftp(#[from] crate::tftp::TftpError),
    #[error("socket {path}: {source}")]
    Socket {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Lab(crate::error::ApiError),
    #[error("auth: group `{0}` does not exist")]
    NoSuchGroup(String),
    #[error(transparent)]
    Activation(#[from] crate::systemd::ActivationError),
    #[error("[nfs]: {0}")]
    Nfs(#[from] crate::nfs::NfsError),
    #[error("artifact cache {path}: {source}")]
    Cache {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A group's gid by name.
fn group_id(name: &Option<String>) -> Result<Option<u32>, StartError> {
    let Some(name) = name else { return Ok(None) };
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(Some(g.gid.as_raw())),
        _ => Err(StartError::NoSuchGroup(name.clone())),
    }
}

/// Starts everything; must run inside an actix system.
/// `config_path` is the file a reload re-reads (None for the demo lab).
pub async fn start(
    cfg: LabConfig,
    socket: &Path,
    config_path: Option<std::path::PathBuf>,
) -> Result<Daemon, StartError> {
    let device_types = device_type::load(cfg.device_types_dir.as_deref())?;
    raise_fd_limit(cfg.boards.len());
    let metrics =
        crate::metrics::Metrics::new(crate::metrics::SlowThresholds::from_config(&cfg.slow));
    let store = Store::open(
        &cfg.state_dir.join("store"),
        cfg.store.cache_capacity,
        metrics.clone(),
    )?;
    let root = cfg.tftp_root();
    let addr = crate::tftp::start(
        cfg.tftp.bind,
        &root,
        cfg.tftp.window_size_limit,
        cfg.tftp.threads(),
        metrics.clone(),
    )?;
    let server_ip = cfg
        .tftp
        .server_ip
        .clone()
        .unwrap_or_else(|| addr.ip().to_string());
    let cache = if cfg.artifact_cache.max_bytes == 0 {
        None
    } else {
        let dir = cfg
            .artifact_cache
            .dir
            .clone()
            .unwrap_or_else(|| cfg.state_dir.join("artifact-cache"));
        let c = crate::cache::ArtifactCache::open(&dir, cfg.artifact_cache.max_bytes).map_err(
            |source| StartError::Cache {
                path: dir.display().to_string(),
                source,
            },
        )?;
        Some(std::sync::Arc::new(c))
    };
    let git_dir = cfg.git_cache_dir();
    let git = crate::git::GitCache::new(&git_dir, crate::git::GitLimits::from_config(&cfg.git))
        .map_err(|source| StartError::Cache {
            path: git_dir.display().to_string(),
            source,
        })?;
    let overlay_http = match cfg.deploy.overlay_http {
        Some(addr) => Some(
            crate::overlay_http::OverlayHttp::start(addr)
                .await
                .map_err(|source| StartError::Socket {
                    path: addr.to_string(),
                    source,
                })?,
        ),
        None => None,
    };
    let nfs = match &cfg.nfs.server {
        Some(_) => {
            let ip = cfg
                .nfs
                .server_ip
                .clone()
                .unwrap_or_else(|| server_ip.clone());
            Some(crate::nfs::NfsServer::start(&cfg.nfs, &cfg.nfs_dir(), ip).await?)
        }
        None => None,
    };
    let tftp = TftpInfo {
        nfs: nfs.clone(),
        overlay_http,
        cache,
        git: Some(std::sync::Arc::new(git)),
        max_artifact_bytes: cfg.limits.max_artifact_bytes,
        file_roots: crate::local_file::FileRoots::new(&cfg.deploy.file_roots),
        root,
        server_ip,
        port: addr.port(),
    };
    tracing::info!(tftp = %addr, "TFTP server listening");
    let socket_gid = group_id(&cfg.auth.socket_group)?;
    let admin_gid = group_id(&cfg.auth.admin_group)?;
    let socket_err = |source| StartError::Socket {
        path: socket.display().to_string(),
        source,
    };
    let socket_group = cfg.auth.socket_group.clone();
    let socket_mode = cfg.auth.socket_mode;
    let limits = crate::server::ServerLimits {
        admin_gid,
        ..crate::server::ServerLimits::from_config(&cfg.limits)
    };
    let metrics_listen = cfg.metrics_listen;
    let lava = cfg.lava.clone();
    let state_dir = cfg.state_dir.clone();
    let statsd = cfg.statsd.clone();
    // Everything that can refuse the config is checked before the socket
    // exists, so a refused start leaves no socket behind and no client waits
    // on a lab that will not come.
    let store_reader = store.reader();
    // The LAVA worker's one write: how much of each job's log its server
    // took.
    let lava_sent = store.clone();
    let lab = LabActor::new(cfg, store, device_types, tftp, metrics.clone())
        .map_err(StartError::Lab)?
        .with_config_path(config_path);
    let http = match metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Socket {
                    path: addr.to_string(),
                    source,
                })?,
        ),
        None => None,
    };
    let group = socket_gid.zip(socket_group.as_deref());
    // A socket labd created is labd's to remove at a clean exit; one that
    // systemd passed stays systemd's (it keeps queueing clients meanwhile).
    let mut owned_socket = None;
    let listener = match crate::systemd::inherited_listener(socket, socket_mode, group)? {
        Some(l) => {
            tracing::info!(socket = %socket.display(), "serving the socket systemd passed");
            tokio::net::UnixListener::from_std(l).map_err(socket_err)?
        }
        None => {
            owned_socket = Some(socket.to_path_buf());
            crate::server::bind(socket, socket_mode, socket_gid).map_err(socket_err)?
        }
    };
    let lab = lab.start();
    if let Some(http) = http {
        if let Ok(addr) = http.local_addr() {
            tracing::info!(%addr, "metrics over HTTP");
        }
        actix::spawn(crate::server::serve_metrics_http(http, lab.clone()));
    }
    if let Some(sd) = statsd {
        actix::spawn(push_statsd(sd, lab.clone()));
    }
    // The socket server answers reads of job records from the store itself,
    // so it starts only once the lab actor has reconciled the store with
    // the restart (interrupted jobs ended, logs pruned): the actor handles
    // no message before that, so the answer to this ping says it is done.
    // A reconcile that fails stops the system, and this send with it.
    lab.send(crate::lab::Ping).await.map_err(|_| {
        StartError::Lab(crate::error::ApiError::new(
            crate::error::ErrorCode::Internal,
            "the lab stopped while reconciling the store at start",
        ))
    })?;
    // The worker, like the socket, starts once the restart is reconciled:
    // it finds the server's jobs a killed labd took already ended.
    let lava = lava.map(|l| {
        let link = metrics.lava_link(&l.url, &l.worker);
        crate::lava_worker::start(
            &l,
            &state_dir,
            lab.clone(),
            store_reader.clone(),
            lava_sent,
            link,
        )
    });
    let server = crate::server::serve(listener, lab.clone(), store_reader, limits, metrics)
        .map_err(socket_err)?;
    tracing::info!(socket = %socket.display(), "labd ready");
    crate::systemd::ready();
    crate::systemd::start_watchdog(lab.clone());
    Ok(Daemon {
        lab,
        server,
        owned_socket,
        nfs,
        lava,
    })
}

/// A started lab: its actor and its socket server.
pub struct Daemon {
    pub lab: Addr<LabActor>,
    pub server: crate::server::ServerHandle,
    /// The socket file labd created (not one systemd passed), removed at a
    /// clean exit.
    owned_socket: Option<std::path::PathBuf>,
    /// The NFS server labd started, stopped at the end.
    nfs: Option<std::sync::Arc<crate::nfs::NfsServer>>,
    /// The LAVA worker (`[lava]`), closed once the jobs have ended.
    lava: Option<crate::lava_worker::WorkerHandle>,
}

impl Daemon {
    /// Re-reads the config file on every SIGHUP, as an admin would with
    /// `labctl reload`; a bad file is logged and the running config stays.
    pub fn reload_on_sighup(&self) {
        let lab = self.lab.clone();
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP; use labctl reload");
            return;
        };
        actix::spawn(async move {
            while hup.recv().await.is_some() {
                let caller = crate::lab::Caller {
                    uid: nix::unistd::Uid::effective().as_raw(),
                    gid: nix::unistd::Gid::effective().as_raw(),
                    groups: Vec::new(),
                    name: "SIGHUP".into(),
                    admin: true,
                };
                match lab.send(crate::lab::LabRequest::Reload { caller }).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e.message, "SIGHUP: reload refused"),
                    Err(_) => return,
                }
            }
        });
    }

    /// Drains the lab: no job starts, running jobs get `grace`, and a
    /// `second_signal` that resolves first ends them at once. Then the
    /// socket closes once the answers in flight are out (at most 5 s).
    pub async fn shutdown(
        self,
        grace: std::time::Duration,
        second_signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), MailboxError> {
        tracing::info!("shutting down");
        crate::systemd::stopping();
        let mut drained = self.lab.send(crate::lab::Shutdown { grace }).await?;
        tokio::select! {
            _ = &mut drained => {}
            _ = second_signal => {
                tracing::warn!("second signal: ending running jobs now");
                let now = self
                    .lab
                    .send(crate::lab::Shutdown { grace: std::time::Duration::ZERO })
                    .await?;
                let _ = tokio::join!(drained, now);
            }
        }
        if let Some(w) = self.lava {
            // The lab ended every job: their ends go to the server first.
            w.close(std::time::Duration::from_secs(10)).await;
        }
        tracing::info!("all boards idle; closing the socket");
        self.server.close(std::time::Duration::from_secs(5)).await;
        if let Some(nfs) = &self.nfs {
            nfs.stop_and_wait().await;
        }
        if let Some(path) = &self.owned_socket {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(socket = %path.display(), error = %e, "could not remove the socket file");
            }
        }
        Ok(())
    }
}

/// Pushes every metric to a statsd every interval, a datagram per batch of
/// lines under 1400 bytes (one Ethernet frame).
async fn push_statsd(cfg: crate::config::StatsdConfig, lab: Addr<LabActor>) {
    let sock = match tokio::net::UdpSocket::bind(("0.0.0.0", 0)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "statsd: no UDP socket; not pushing metrics");
            return;
        }
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(cfg.interval_secs.max(1)));
    loop {
        tick.tick().await;
        let Ok(Ok(crate::lab::LabReply::Text(text))) =
            lab.send(crate::lab::LabRequest::Metrics).await
        else {
            return;
        };
        let mut packet = String::new();
        for line in crate::metrics::statsd_lines(&cfg.prefix, &text) {
            if !packet.is_empty() && packet.len() + line.len() + 1 > 1400 {
                let _ = sock.send_to(packet.as_bytes(), cfg.address).await;
                packet.clear();
            }
            if !packet.is_empty() {
                packet.push('\n');
            }
            packet.push_str(&line);
        }
        if !packet.is_empty() {
            let _ = sock.send_to(packet.as_bytes(), cfg.address).await;
        }
    }
}

/// Raises the soft limit on open files to the hard one: each board holds
/// a console (and a lock, a relay connection), and a systemd service
/// starts with a soft limit of 1024, too few for a large lab.
fn raise_fd_limit(boards: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            tracing::warn!(soft, hard, error = %e, "could not raise the open-file limit");
        }
    }
    let now = getrlimit(Resource::RLIMIT_NOFILE).map_or(soft, |(s, _)| s);
    // About four descriptors a board, plus the daemon's own.
    if now < (boards as u64) * 4 + 256 {
        tracing::warn!(
            limit = now,
            boards,
            "the open-file limit is low for this many boards; raise LimitNOFILE"
        );
    }
}
