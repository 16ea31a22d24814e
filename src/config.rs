//! The lab config (TOML): where the socket and state live, the TFTP server,
//! the device types, and the boards with their consoles, power and device
//! dictionaries.
//!
//! This module owns parsing and validation; errors name the file, the key
//! path and the line and column. The compiled-in demo lab is here too.

use crate::error::ConfigError;
use crate::error::Location;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The socket path used when neither `--socket`, `$LABD_SOCKET` nor the config names one.
pub const DEFAULT_SOCKET: &str = "/run/labd/labd.sock";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LabConfig {
    #[serde(default)]
    pub socket: Option<PathBuf>,
    pub state_dir: PathBuf,
    /// Where device-type YAML files live; when absent, the compiled-in ones are used.
    #[serde(default)]
    pub device_types_dir: Option<PathBuf>,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub tftp: TftpConfig,
    /// Downloaded artifacts shared by jobs (`[artifact_cache]`).
    #[serde(default)]
    pub artifact_cache: ArtifactCacheConfig,
    /// Where `file://` artifacts may come from (`[deploy]`).
    #[serde(default)]
    pub deploy: DeployConfig,
    /// The git cache `from: git` test definitions are fetched into (`[git]`).
    #[serde(default)]
    pub git: GitConfig,
    /// The NFS server for jobs' `nfsrootfs` (`[nfs]`); off by default.
    #[serde(default)]
    pub nfs: NfsConfig,
    /// What jobs may add to a QEMU board's command line (`[qemu]`).
    #[serde(default)]
    pub qemu: QemuConfig,
    /// The lava-server this lab works for as a LAVA worker (`[lava]`); off
    /// when absent.
    #[serde(default)]
    pub lava: Option<LavaWorkerConfig>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub health_checks: HealthChecks,
    #[serde(default)]
    pub auth: Auth,
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Serve Prometheus metrics over HTTP here (`GET /metrics`), e.g.
    /// `127.0.0.1:9464`; they are always on the socket (`labctl metrics`).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    #[serde(default)]
    pub slow: SlowConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// Push the metrics to a statsd (graphite) over UDP.
    #[serde(default)]
    pub statsd: Option<StatsdConfig>,
    /// The control socket of a `labd-sim` serving this lab's simulated boards.
    #[serde(default)]
    pub sim_control: Option<PathBuf>,
    /// Where UUCP lock files for serial ports live.
    #[serde(default = "default_lock_dir")]
    pub lock_dir: PathBuf,
    /// The boards as written (`[[boards]]`); [`LabConfig::parse`] resolves
    /// them into `boards`, reading each one's LAVA device configuration.
    #[serde(default, rename = "boards")]
    board_entries: Vec<BoardEntry>,
    /// The boards, resolved: device type, console and power known.
    #[serde(skip)]
    pub boards: Vec<BoardConfig>,
}

/// `[lava]`: labd as a worker of a lava-server (see `lava_worker`). The
/// boards the server may use say which of its devices they are
/// (`lava_worker_device`); only the server gives them jobs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LavaWorkerConfig {
    /// The server's base URL, e.g. `http://lava.example.com/`.
    pub url: String,
    /// This worker's name on the server (`lava-server manage workers add`).
    pub worker: String,
    /// The file holding the worker's token. Read at start and again when it
    /// changes; never logged. When it does not exist, labd registers the
    /// worker (lava-server allows that from 127.0.0.0/8 only) and writes
    /// the token it gets there, mode 0600. Default `<state_dir>/lava-token`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The LAVA version labd says it is: lava-server refuses (HTTP 409,
    /// and sets the worker Offline) a worker of another version.
    #[serde(default = "default_lava_version")]
    pub version: String,
    /// How often labd asks the server for work and cancels.
    #[serde(default = "default_lava_ping")]
    pub ping_interval_secs: u64,
    /// lava-publisher's websocket (lava-worker's `--ws-url`): labd pings at
    /// once when it says a job of this worker is scheduled or canceled, so
    /// a job starts without waiting for the next ping. Default
    /// `<url>/ws/` (where apache serves it in front of lava-publisher);
    /// `http(s)://` is taken as `ws(s)://`. An empty string turns the
    /// events off.
    #[serde(default)]
    pub ws_url: Option<String>,
}

fn default_lava_version() -> String {
    "2023.01".into()
}
fn default_lava_ping() -> u64 {
    5
}

impl LavaWorkerConfig {
    /// The token file, `<state_dir>/lava-token` unless the config names one.
    pub fn token_path(&self, state_dir: &Path) -> PathBuf {
        self.token_file
            .clone()
            .unwrap_or_else(|| state_dir.join("lava-token"))
    }

    /// The publisher's websocket URL as `ws://` or `wss://`, None when the
    /// events are turned off (`ws_url = ""`).
    pub fn events_url(&self) -> Option<String> {
        let given = match &self.ws_url {
            Some(u) if u.is_empty() => return None,
            Some(u) => u.clone(),
            None => format!("{}/ws/", self.url.trim_end_matches('/')),
        };
        Some(if let Some(rest) = given.strip_prefix("http://") {
            format!("ws://{rest}")
        } else if let Some(rest) = given.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            given
        })
    }
}

/// A statsd to push every metric to, as gauges, every `interval_secs`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StatsdConfig {
    pub address: SocketAddr,
    #[serde(default = "default_statsd_prefix")]
    pub prefix: String,
    #[serde(default = "default_statsd_interval")]
    pub interval_secs: u64,
}

fn default_statsd_prefix() -> String {
    "labd".into()
}
fn default_statsd_interval() -> u64 {
    10
}

/// Where labd's own log goes and how much of it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `human`, `json` or `journald`; by default journald when started by
    /// systemd with the journal as output (`JOURNAL_STREAM`), else human.
    #[serde(default)]
    pub format: Option<LogFormat>,
    /// A tracing filter such as `labd=info,warn`; `RUST_LOG` wins over it.
    #[serde(default)]
    pub filter: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
    Journald,
}

/// Thresholds above which an operation is logged as slow (with its
/// fields) and counted in `labd_slow_operations_total`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlowConfig {
    /// A store write batch (apply and flush).
    #[serde(default = "default_slow_store")]
    pub store_ms: u64,
    /// A socket request (log follows excepted).
    #[serde(default = "default_slow_request")]
    pub request_ms: u64,
    /// A power command.
    #[serde(default = "default_slow_power")]
    pub power_ms: u64,
}

impl Default for SlowConfig {
    fn default() -> Self {
        SlowConfig {
            store_ms: default_slow_store(),
            request_ms: default_slow_request(),
            power_ms: default_slow_power(),
        }
    }
}

fn default_slow_store() -> u64 {
    500
}
fn default_slow_request() -> u64 {
    2000
}
fn default_slow_power() -> u64 {
    10_000
}

/// How long finished jobs' console logs are kept. Logs are dropped oldest
/// job first; job records, events and results are always kept (`labd
/// export` writes them out for backup).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Drop the logs of jobs that ended longer ago than this.
    #[serde(default)]
    pub max_log_age_days: Option<u64>,
    /// Then drop the oldest logs until all logs total at most this.
    #[serde(default)]
    pub max_log_total_bytes: Option<u64>,
    /// How often to apply the policy (also applied at every start).
    #[serde(default = "default_retention_interval")]
    pub interval_minutes: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            max_log_age_days: None,
            max_log_total_bytes: None,
            interval_minutes: default_retention_interval(),
        }
    }
}

fn default_retention_interval() -> u64 {
    60
}

impl RetentionConfig {
    pub fn enabled(&self) -> bool {
        self.max_log_age_days.is_some() || self.max_log_total_bytes.is_some()
    }
}

/// Who may use the socket and who is an admin. The socket is created with
/// `socket_mode` and group `socket_group`, so only that group's members
/// reach labd at all. labd reads each caller's uid and gid from the kernel
/// (SO_PEERCRED); admins are root, labd's own user and the members of
/// `admin_group`. Anyone may submit and read; a job may be canceled by its
/// submitter or an admin; board health, power and consoles are admin only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    #[serde(default)]
    pub socket_group: Option<String>,
    #[serde(default = "default_socket_mode")]
    pub socket_mode: u32,
    #[serde(default)]
    pub admin_group: Option<String>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            socket_group: None,
            socket_mode: default_socket_mode(),
            admin_group: None,
        }
    }
}

fn default_socket_mode() -> u32 {
    0o660
}

/// Health checks as LAVA runs them: `<dir>/<device type>.yaml` is the
/// health-check job of that device type. A board of that type runs it when
/// its health is Unknown (new, after an Infrastructure or Bug error, after
/// a restart, when set online) or its last pass is older than the frequency,
/// before any user job. Device types without a file have no health check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthChecks {
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// LAVA's `health_frequency`, in hours.
    #[serde(default = "default_health_hours")]
    pub frequency_hours: u64,
}

impl Default for HealthChecks {
    fn default() -> Self {
        HealthChecks {
            dir: None,
            frequency_hours: default_health_hours(),
        }
    }
}

fn default_health_hours() -> u64 {
    24
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// sled's page cache in bytes (sled's own default is 1 GiB).
    #[serde(default = "default_cache")]
    pub cache_capacity: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            cache_capacity: default_cache(),
        }
    }
}

fn default_cache() -> u64 {
    64 * 1024 * 1024
}

/// `[deploy]`: what a job's `file://` artifacts may be.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeployConfig {
    /// Directories `file://` artifacts may lie under (after symlinks are
    /// resolved); each is still read only with its submitter's rights.
    /// Empty (the default): no `file://` artifact is read.
    #[serde(default)]
    pub file_roots: Vec<PathBuf>,
    /// Where labd serves job overlays over HTTP for LAVA's
    /// `transfer_overlay` (`"0.0.0.0:8090"`); unset (the default), no
    /// port is opened and such jobs are refused at submit.
    #[serde(default)]
    pub overlay_http: Option<SocketAddr>,
}

/// `[qemu]`: the lab's policy for the QEMU options a job gives (LAVA's
/// `image_arg`s and `context.extra_options`, see `crate::qemu_args`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QemuConfig {
    /// Options jobs may use beyond labd's default allow-list, such as
    /// `"-device-foo"`. Their values are still checked (no host path but
    /// an image's placeholder), and the options that reach the host
    /// (`-chardev`, `-monitor`, `-plugin`, ...) cannot be allowed.
    #[serde(default)]
    pub extra_allowed_options: Vec<String>,
}

impl QemuConfig {
    /// Whether jobs may use `opt` (an option labd does not list itself).
    pub fn allows(&self, opt: &str) -> bool {
        let opt = crate::qemu_args::canonical(opt);
        self.extra_allowed_options
            .iter()
            .any(|o| crate::qemu_args::canonical(o) == opt)
    }
}

/// `[git]`: the lab host's git cache, one bare mirror per repository URL,
/// shared by the jobs whose test definitions come `from: git`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GitConfig {
    /// Where the mirrors are kept; defaults to `<state_dir>/git-cache`.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// How long one git run (a clone or fetch, or a checkout from the
    /// mirror) may take before git and everything it started are killed.
    #[serde(default = "default_git_timeout")]
    pub timeout_secs: u64,
    /// The largest a repository's mirror may grow on disk. A fetch that
    /// takes it past this is killed and the mirror removed.
    #[serde(default = "default_git_max_repo_bytes")]
    pub max_repo_bytes: u64,
    /// Directories `file://` repositories may lie under (after symlinks are
    /// resolved). git reads them with labd's rights, not the submitter's,
    /// so list only directories every submitter may read. Empty (the
    /// default): no `file://` repository is fetched.
    #[serde(default)]
    pub file_roots: Vec<PathBuf>,
}

fn default_git_timeout() -> u64 {
    300
}

fn default_git_max_repo_bytes() -> u64 {
    1 << 30
}

impl Default for GitConfig {
    fn default() -> Self {
        GitConfig {
            cache_dir: None,
            timeout_secs: default_git_timeout(),
            max_repo_bytes: default_git_max_repo_bytes(),
            file_roots: Vec::new(),
        }
    }
}

/// `[nfs]`: the NFS server labd starts for jobs with an `nfsrootfs`
/// (nfs-ganesha, see `crate::nfs`). Without `server` there is none, and
/// such jobs are refused at submit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NfsConfig {
    /// Which server `server` is; only `ganesha` (nfs-ganesha) is known.
    #[serde(default)]
    pub kind: NfsServerKind,
    /// The server program (`/usr/bin/ganesha.nfsd`); unset (the default),
    /// labd serves no NFS.
    #[serde(default)]
    pub server: Option<PathBuf>,
    /// Where the server listens for NFS (its MOUNT program too, for NFSv3).
    #[serde(default = "default_nfs_listen")]
    pub listen: SocketAddr,
    /// The address boards use to reach it (`{NFS_SERVER_IP}`); defaults to
    /// `[tftp] server_ip`.
    #[serde(default)]
    pub server_ip: Option<String>,
    /// Where jobs' root filesystems are unpacked and the server's files
    /// kept; defaults to `<state_dir>/nfs`. labd owns everything in it.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// The NFS versions served: 3 needs the host's rpcbind, 4 does not.
    #[serde(default = "default_nfs_protocols")]
    pub protocols: Vec<u8>,
    /// Who may mount a job's root (Ganesha's `Clients`: addresses, CIDR
    /// networks, host names); empty (the default): anyone reaching `listen`.
    #[serde(default)]
    pub clients: Vec<String>,
    /// The most one job's root filesystem (and its overlay and modules)
    /// may unpack to.
    #[serde(default = "default_nfs_max_unpacked")]
    pub max_unpacked_bytes: u64,
}

/// The NFS servers labd knows how to run.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NfsServerKind {
    #[default]
    Ganesha,
}

fn default_nfs_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 2049))
}

fn default_nfs_protocols() -> Vec<u8> {
    vec![3, 4]
}

fn default_nfs_max_unpacked() -> u64 {
    16 << 30
}

impl Default for NfsConfig {
    fn default() -> Self {
        NfsConfig {
            kind: NfsServerKind::default(),
            server: None,
            listen: default_nfs_listen(),
            server_ip: None,
            dir: None,
            protocols: default_nfs_protocols(),
            clients: Vec::new(),
            max_unpacked_bytes: default_nfs_max_unpacked(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArtifactCacheConfig {
    /// Where downloads are kept; defaults to `<state_dir>/artifact-cache`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// The most bytes kept; the least recently used go first. 0 turns the
    /// cache off (every job downloads its artifacts).
    #[serde(default = "default_cache_bytes")]
    pub max_bytes: u64,
}

fn default_cache_bytes() -> u64 {
    8 << 30
}

impl Default for ArtifactCacheConfig {
    fn default() -> Self {
        ArtifactCacheConfig {
            dir: None,
            max_bytes: default_cache_bytes(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TftpConfig {
    /// Address and port the TFTP server binds; port 0 picks a free one.
    #[serde(default = "default_tftp_bind")]
    pub bind: SocketAddr,
    /// The address boards use to reach this server (`{SERVER_IP}`); defaults to the bind address.
    #[serde(default)]
    pub server_ip: Option<String>,
    /// Root of the per-job directories; defaults to `<state_dir>/tftp`.
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// Largest RFC 7440 window the server agrees to.
    #[serde(default = "default_window")]
    pub window_size_limit: u16,
    /// Threads serving TFTP, each with its own transfers (see
    /// `tftp::serve`); default: the CPUs, at most 4.
    #[serde(default)]
    pub threads: Option<usize>,
}

impl TftpConfig {
    /// The TFTP threads to run: `threads`, or the CPUs up to 4.
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(default_tftp_threads).max(1)
    }
}

/// One TFTP thread per CPU, at most 4: transfers are spread over them.
pub fn default_tftp_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

impl Default for TftpConfig {
    fn default() -> Self {
        TftpConfig {
            bind: default_tftp_bind(),
            server_ip: None,
            root: None,
            window_size_limit: default_window(),
            threads: None,
        }
    }
}

fn default_tftp_bind() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 69))
}
fn default_window() -> u16 {
    16
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// The longest request line accepted on the socket, in bytes.
    #[serde(default = "default_request")]
    pub max_request_bytes: usize,
    /// The largest job definition accepted, in bytes.
    #[serde(default = "default_job_bytes")]
    pub max_job_bytes: usize,
    /// Console bytes kept per board while it is idle.
    #[serde(default = "default_ring")]
    pub idle_console_ring_bytes: usize,
    /// Console bytes kept per job; the rest is dropped, with a note in the log.
    #[serde(default = "default_job_log")]
    pub max_job_log_bytes: u64,
    /// The largest artifact a deploy fetches (also after decompression).
    #[serde(default = "default_artifact")]
    pub max_artifact_bytes: u64,
    /// How long a console lost during a job may stay away (a job's
    /// `timeouts.connection` wins) before the job ends Incomplete.
    #[serde(default = "default_console_reconnect")]
    pub console_reconnect_secs: u64,
    /// Jobs in a row ended by a lost console before the board goes Bad.
    #[serde(default = "default_console_failures")]
    pub console_failures_before_bad: u32,
    /// On SIGTERM, how long running jobs may go on before they are ended
    /// Incomplete ("dispatcher shutdown") and their boards powered off.
    #[serde(default = "default_grace")]
    pub shutdown_grace_secs: u64,
    /// The longest job timeout a job may ask for; longer ones are capped.
    #[serde(default = "default_max_job_timeout")]
    pub max_job_timeout_secs: u64,
    /// The longest action (or block) timeout; longer ones are capped.
    #[serde(default = "default_max_action_timeout")]
    pub max_action_timeout_secs: u64,
    /// The longest connection timeout; longer ones are capped.
    #[serde(default = "default_max_connection_timeout")]
    pub max_connection_timeout_secs: u64,
    /// A job no board took within this time is canceled (a job's own
    /// `timeouts.queue` wins). None: jobs wait as long as it takes.
    #[serde(default)]
    pub queue_timeout_secs: Option<u64>,
    /// Socket connections served at once; more are refused with `busy`.
    #[serde(default = "default_connections")]
    pub max_connections: usize,
    /// Connections one user (uid) other than an admin may hold at once.
    #[serde(default = "default_connections_per_user")]
    pub max_connections_per_user: usize,
    /// Of `max_connections`, how many only admins may take, so that they
    /// can always reach labd. Default: a sixteenth of `max_connections`.
    #[serde(default)]
    pub admin_connections: Option<usize>,
    /// A new connection that has not said hello within this time is closed.
    #[serde(default = "default_hello_timeout")]
    pub hello_timeout_secs: u64,
    /// Requests of one connection answered at once (log follows count);
    /// the connection's next request is read when one ends.
    #[serde(default = "default_requests_in_flight")]
    pub max_requests_in_flight: usize,
    /// Answer bytes waiting for one client to read them, at most; a
    /// client that reads slower is slowed down, then dropped at
    /// `client_write_timeout_secs`.
    #[serde(default = "default_queued_bytes")]
    pub max_queued_bytes_per_connection: usize,
    /// A client that starts a request line must finish it within this time
    /// (the whole line, however slowly its bytes come).
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// A client that does not read its answers for this long is dropped.
    #[serde(default = "default_write_timeout")]
    pub client_write_timeout_secs: u64,
    /// Boards booting at once in the whole lab (power-on to shell); more
    /// wait their turn. None: no limit.
    #[serde(default)]
    pub max_concurrent_boots: Option<usize>,
    /// Boards booting at once on one relay device (a PDU behind
    /// pdudaemon): its supply's inrush current. None: no limit.
    #[serde(default)]
    pub max_concurrent_boots_per_relay: Option<usize>,
    /// A serial or pty console that keeps talking reaches its board's actor
    /// at most once per this many milliseconds (0: every read at once); see
    /// `console::ReadPacing`. Read when a board starts.
    #[serde(default = "default_read_interval")]
    pub console_read_interval_ms: u64,
    /// Console reads passed on at once after a quiet line (one whose turn
    /// found nothing to read), before the pacing above applies again.
    #[serde(default = "default_read_burst")]
    pub console_read_burst: u32,
}

impl PowerConfig {
    /// The relay device this board shares with others, if any: boots on
    /// one device are limited together.
    pub fn relay_device(&self) -> Option<String> {
        match self {
            PowerConfig::Pdudaemon { url, hostname, .. } => Some(format!("{url} {hostname}")),
            _ => None,
        }
    }
}

impl Limits {
    /// The connections kept for admins (`admin_connections`, else a
    /// sixteenth of `max_connections`).
    pub fn admin_connections(&self) -> usize {
        self.admin_connections
            .unwrap_or(self.max_connections / 16)
            .min(self.max_connections)
    }

    pub fn timeout_maxima(&self) -> crate::job::TimeoutMaxima {
        use std::time::Duration;
        crate::job::TimeoutMaxima {
            job: Duration::from_secs(self.max_job_timeout_secs),
            action: Duration::from_secs(self.max_action_timeout_secs),
            connection: Duration::from_secs(self.max_connection_timeout_secs),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: default_request(),
            max_job_bytes: default_job_bytes(),
            idle_console_ring_bytes: default_ring(),
            max_job_log_bytes: default_job_log(),
            max_artifact_bytes: default_artifact(),
            console_reconnect_secs: default_console_reconnect(),
            console_failures_before_bad: default_console_failures(),
            shutdown_grace_secs: default_grace(),
            max_job_timeout_secs: default_max_job_timeout(),
            max_action_timeout_secs: default_max_action_timeout(),
            max_connection_timeout_secs: default_max_connection_timeout(),
            queue_timeout_secs: None,
            max_connections: default_connections(),
            max_connections_per_user: default_connections_per_user(),
            admin_connections: None,
            hello_timeout_secs: default_hello_timeout(),
            max_requests_in_flight: default_requests_in_flight(),
            max_queued_bytes_per_connection: default_queued_bytes(),
            request_timeout_secs: default_request_timeout(),
            client_write_timeout_secs: default_write_timeout(),
            max_concurrent_boots: None,
            max_concurrent_boots_per_relay: None,
            console_read_interval_ms: default_read_interval(),
            console_read_burst: default_read_burst(),
        }
    }
}

/// A serial console's reads reach its board at most this often once it
/// keeps talking (see `console::ReadPacing`).
pub const DEFAULT_CONSOLE_READ_INTERVAL_MS: u64 = 100;
/// Reads delivered at once before pacing starts (see `console::ReadPacing`).
pub const DEFAULT_CONSOLE_READ_BURST: u32 = 50;

fn default_read_interval() -> u64 {
    DEFAULT_CONSOLE_READ_INTERVAL_MS
}
fn default_read_burst() -> u32 {
    DEFAULT_CONSOLE_READ_BURST
}

fn default_request() -> usize {
    1024 * 1024
}
fn default_job_bytes() -> usize {
    512 * 1024
}
fn default_max_job_timeout() -> u64 {
    24 * 3600
}
fn default_max_action_timeout() -> u64 {
    6 * 3600
}
fn default_max_connection_timeout() -> u64 {
    3600
}
fn default_connections() -> usize {
    256
}
fn default_connections_per_user() -> usize {
    32
}
fn default_hello_timeout() -> u64 {
    5
}
fn default_requests_in_flight() -> usize {
    16
}
fn default_queued_bytes() -> usize {
    4 << 20
}
fn default_request_timeout() -> u64 {
    30
}
fn default_write_timeout() -> u64 {
    60
}
fn default_grace() -> u64 {
    120
}
fn default_console_reconnect() -> u64 {
    30
}
fn default_console_failures() -> u32 {
    3
}
fn default_artifact() -> u64 {
    4 << 30
}
fn default_job_log() -> u64 {
    128 << 20
}
fn default_ring() -> usize {
    64 * 1024
}

/// A board as the lab runs it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BoardConfig {
    pub name: String,
    pub device_type: String,
    #[serde(default)]
    pub tags: Vec<String>,
    pub console: ConsoleConfig,
    /// Left out (or `type = "none"`) only for a board reached over ssh,
    /// which is always on (LAVA's ssh device type has no power commands).
    #[serde(default)]
    pub power: PowerConfig,
    /// The device dictionary: dotted device-type keys this board overrides.
    #[serde(default)]
    pub parameters: BTreeMap<String, toml::Value>,
    /// The board's LAVA device configuration, when it has one: its device
    /// type is the board's own, not one of `device_types_dir`.
    #[serde(skip)]
    pub lava: Option<Box<crate::lava_device::LavaDevice>>,
    /// The device of the `[lava]` server this board is: only that server
    /// gives it jobs, and local submits are refused.
    #[serde(default)]
    pub lava_worker_device: Option<String>,
}

/// A `[[boards]]` table as written. With a LAVA device configuration
/// (`lava_device` and `lava_templates`, or `lava_device_yaml`) the device
/// type, console and power may come from it instead.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct BoardEntry {
    name: String,
    #[serde(default)]
    device_type: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    console: Option<ConsoleConfig>,
    #[serde(default)]
    power: Option<PowerConfig>,
    #[serde(default)]
    parameters: BTreeMap<String, toml::Value>,
    /// A LAVA device dictionary (`bbb-01.jinja2`), rendered with the
    /// templates of `lava_templates`.
    #[serde(default)]
    lava_device: Option<PathBuf>,
    /// LAVA's device-type templates (a lava-server's
    /// `/etc/lava-server/dispatcher-config/device-types`).
    #[serde(default)]
    lava_templates: Option<PathBuf>,
    /// A device configuration lava-server already rendered.
    #[serde(default)]
    lava_device_yaml: Option<PathBuf>,
    /// The `[lava]` server's device this board is.
    #[serde(default)]
    lava_worker_device: Option<String>,
}

/// One command as argv, or several run in order (LAVA's lists of power
/// commands): `["relay", "2", "on"]` or `[["hub", "on"], ["relay", "2", "on"]]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Commands {
    One(Vec<String>),
    Several(Vec<Vec<String>>),
}

impl Commands {
    /// The commands, each as argv.
    pub fn list(&self) -> Vec<Vec<String>> {
        match self {
            Commands::One(argv) => vec![argv.clone()],
            Commands::Several(l) => l.clone(),
        }
    }

    /// No command, or one with an empty argv.
    pub fn is_empty(&self) -> bool {
        let l = self.list();
        l.is_empty() || l.iter().any(|a| a.is_empty())
    }
}

impl From<Vec<String>> for Commands {
    fn from(argv: Vec<String>) -> Self {
        Commands::One(argv)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ConsoleConfig {
    /// A serial device (USB adapter, UART, or a PTY slave), locked with a
    /// UUCP lock file while labd has it open.
    Serial {
        device: PathBuf,
        /// Defaults to the device type's console baud rate.
        #[serde(default)]
        baud: Option<u32>,
        #[serde(default)]
        parity: Parity,
        #[serde(default)]
        flow_control: FlowControl,
        #[serde(default = "default_data_bits")]
        data_bits: u8,
        #[serde(default = "default_stop_bits")]
        stop_bits: u8,
    },
    /// A console served over TCP, such as ser2net: `raw` bytes or `telnet`.
    Tcp {
        host: String,
        port: u16,
        #[serde(default)]
        protocol: TcpProtocol,
    },
    /// A Unix socket labd listens on and the board (QEMU's chardev with
    /// `server=off`) connects to.
    Unix { path: PathBuf },
    /// A pseudo-terminal labd creates and holds. `link` becomes a symlink
    /// to its slave side (`/dev/pts/N`), which whatever drives the board's
    /// serial line opens: with `qemu` power, QEMU's first serial port.
    /// Unlike a `unix` console it stays attached across power cycles.
    Pty { link: PathBuf },
    /// LAVA's `connection_command`: a program (argv, no shell) whose stdin
    /// and stdout are the console.
    Command {
        command: Vec<String>,
        /// A regex the program prints once it has reached the board's line,
        /// such as telnet's `Escape character is`: the console counts as
        /// attached (and the board may be powered on) only after it, so no
        /// byte of the boot goes by while the program is still connecting.
        /// What the program printed up to it is its own, not the board's.
        #[serde(default)]
        ready: Option<String>,
        /// How long the program has to print `ready` before labd gives up
        /// on this attempt, kills it and tries again.
        #[serde(default = "default_console_ready_timeout")]
        ready_timeout_secs: u64,
    },
    /// LAVA's ssh device: the board's shell over OpenSSH's `ssh`, opened
    /// by a job's `boot: method: ssh` and closed at the job's end. labd
    /// builds the whole command line itself (`-tt`, `BatchMode=yes`,
    /// `StrictHostKeyChecking=yes` against `known_hosts`, this key only, no
    /// agent, no forwarding); nothing of it comes from a job.
    Ssh {
        host: String,
        #[serde(default = "default_ssh_port")]
        port: u16,
        #[serde(default = "default_ssh_user")]
        user: String,
        /// The private key labd logs in with (absolute path, readable by
        /// labd's user only, as ssh insists).
        #[serde(default)]
        identity_file: Option<PathBuf>,
        /// A `known_hosts` file holding the board's host key (absolute
        /// path): a board whose key is not the one listed is refused.
        #[serde(default)]
        known_hosts: Option<PathBuf>,
        /// ssh's `ConnectTimeout`: how long the TCP connection may take.
        #[serde(default = "default_ssh_connect_timeout")]
        connect_timeout_secs: u64,
    },
    /// A board of `labd-sim`: labd asks the simulator for its PTY and opens it as a serial device.
    Sim {
        #[serde(default)]
        board: Option<String>,
    },
}

impl ConsoleConfig {
    /// The console's `type`, as the config writes it.
    pub fn kind(&self) -> &'static str {
        match self {
            ConsoleConfig::Serial { .. } => "serial",
            ConsoleConfig::Tcp { .. } => "tcp",
            ConsoleConfig::Unix { .. } => "unix",
            ConsoleConfig::Pty { .. } => "pty",
            ConsoleConfig::Command { .. } => "command",
            ConsoleConfig::Ssh { .. } => "ssh",
            ConsoleConfig::Sim { .. } => "sim",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    #[default]
    None,
    Even,
    Odd,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FlowControl {
    #[default]
    None,
    Software,
    Hardware,
}

fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}

fn default_lock_dir() -> PathBuf {
    PathBuf::from("/run/lock")
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TcpProtocol {
    #[default]
    Raw,
    Telnet,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum PowerConfig {
    /// No relay: a board that is always on (an ssh device). Power on
    /// and reset are refused; off has nothing to do.
    #[default]
    None,
    /// A `labd-sim` board's relay, through the simulator's control socket.
    Sim {
        #[serde(default)]
        board: Option<String>,
    },
    /// LAVA's power commands, run as argv without a shell; each may be a
    /// list of commands run in order.
    Command {
        on: Commands,
        off: Commands,
        #[serde(default)]
        reset: Option<Commands>,
        #[serde(default = "default_power_timeout")]
        timeout_secs: u64,
        #[serde(default = "default_power_retries")]
        retries: u32,
    },
    /// A port of a PDU behind pdudaemon's HTTP listener: `GET
    /// {url}/power/control/{on,off,reboot}?hostname=&port=&delay=`.
    Pdudaemon {
        /// pdudaemon's listener, e.g. `http://localhost:16421`.
        url: String,
        /// The PDU's name in pdudaemon's config.
        hostname: String,
        port: u32,
        /// Seconds pdudaemon waits between off and on in a reboot.
        #[serde(default)]
        delay: Option<u32>,
        #[serde(default = "default_power_timeout")]
        timeout_secs: u64,
        #[serde(default = "default_power_retries")]
        retries: u32,
    },
    /// The relay of a QEMU virtual board: power on starts QEMU from `argv`
    /// (the machine: emulator, `-M`, `-cpu`, firmware, network), paused,
    /// and releases it once its console is attached; power off is QMP
    /// `quit`, then SIGTERM and SIGKILL of its process group. labd adds
    /// `-S`, the QMP socket, `-display none -monitor none -no-reboot`, and,
    /// with a `unix` console, the serial chardev connecting to it.
    Qemu {
        argv: Vec<String>,
        /// QMP socket labd listens on; default `{state_dir}/qemu/{board}.qmp`.
        #[serde(default)]
        qmp: Option<PathBuf>,
        /// How long QEMU may take to start and to quit.
        #[serde(default = "default_qemu_timeout")]
        timeout_secs: u64,
    },
}

fn default_ssh_port() -> u16 {
    22
}
fn default_ssh_user() -> String {
    "root".into()
}
fn default_ssh_connect_timeout() -> u64 {
    10
}

fn default_qemu_timeout() -> u64 {
    20
}

fn default_console_ready_timeout() -> u64 {
    10
}
fn default_power_timeout() -> u64 {
    30
}
fn default_power_retries() -> u32 {
    3
}

impl BoardEntry {
    /// The board as the lab runs it: its LAVA device configuration read,
    /// the device type, console and power taken from it where the table
    /// gives none.
    fn resolve(&self, i: usize, file: &str, base: &Path) -> Result<BoardConfig, ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid {
            location: Location {
                file: Some(file.to_owned()),
                path: Some(format!("boards[{i}].{key}")),
                line: None,
                column: None,
            },
            message,
        };
        let rel = |p: &PathBuf| {
            if p.is_relative() {
                base.join(p)
            } else {
                p.clone()
            }
        };
        // The dictionary's own errors name its file, line and key path;
        // the board's name says where in the config it was asked for.
        let from_board = |key: &'static str| {
            let name = self.name.clone();
            move |e: ConfigError| match e {
                ConfigError::Invalid { location, message } => ConfigError::Invalid {
                    location,
                    message: format!("board {name} (boards[{i}].{key}): {message}"),
                },
                other => other,
            }
        };
        let lava = match (&self.lava_device, &self.lava_templates, &self.lava_device_yaml) {
            (Some(_), _, Some(_)) => {
                return Err(bad(
                    "lava_device_yaml",
                    "give `lava_device` (a dictionary) or `lava_device_yaml` (rendered), not both"
                        .into(),
                ))
            }
            (Some(d), Some(t), None) => Some(
                crate::lava_device::load_dictionary(&rel(d), &rel(t))
                    .map_err(from_board("lava_device"))?,
            ),
            (Some(_), None, None) => {
                return Err(bad(
                    "lava_templates",
                    "`lava_device` needs `lava_templates`, the directory of LAVA's device-type templates".into(),
                ))
            }
            (None, Some(_), _) => {
                return Err(bad(
                    "lava_templates",
                    "only used with `lava_device`".into(),
                ))
            }
            (None, None, Some(y)) => Some(
                crate::lava_device::load_rendered(&rel(y), self.device_type.as_deref())
                    .map_err(from_board("lava_device_yaml"))?,
            ),
            (None, None, None) => None,
        };
        let Some(mut lava) = lava else {
            let missing = |key: &str| bad(key, format!("missing required key `{key}`"));
            return Ok(BoardConfig {
                name: self.name.clone(),
                device_type: self
                    .device_type
                    .clone()
                    .ok_or_else(|| missing("device_type"))?,
                tags: self.tags.clone(),
                console: self.console.clone().ok_or_else(|| missing("console"))?,
                // No relay is the default of a board reached over ssh (an
                // always-on device); any other board is checked for one.
                power: self.power.clone().unwrap_or_default(),
                parameters: self.parameters.clone(),
                lava: None,
                lava_worker_device: self.lava_worker_device.clone(),
            });
        };
        if let Some(d) = self
            .device_type
            .as_ref()
            .filter(|d| **d != lava.device_type)
        {
            return Err(bad(
                "device_type",
                format!(
                    "`{d}`, but the LAVA device configuration {} is a `{}`",
                    lava.source, lava.device_type
                ),
            ));
        }
        // The table's console and power win over the dictionary's commands
        // (a sim board, a pdudaemon relay), which are then read past.
        let console = match (&self.console, &lava.connect) {
            (Some(c), connect) => {
                if connect.is_some() {
                    lava.ignored.push("commands.connect (the board's `console` is used)".into());
                }
                c.clone()
            }
            (None, Some(argv)) => ConsoleConfig::Command {
                command: argv.clone(),
                ready: None,
                ready_timeout_secs: default_console_ready_timeout(),
            },
            (None, None) => {
                return Err(bad(
                    "console",
                    format!(
                        "no console: {} has no `connection_command` (commands.connect) and the board no `console`",
                        lava.source
                    ),
                ))
            }
        };
        let has_power =
            !(lava.power_on.is_empty() && lava.power_off.is_empty() && lava.hard_reset.is_empty());
        let power = match &self.power {
            Some(p) => {
                if has_power {
                    lava.ignored.push(
                        "commands.power_on/power_off/hard_reset (the board's `power` is used)"
                            .into(),
                    );
                }
                p.clone()
            }
            None => {
                // LAVA switches a board with only a hard reset command by
                // that command; labd powers every board off after its job.
                if lava.power_off.is_empty() {
                    return Err(bad(
                        "power",
                        format!(
                            "no power off: {} has no `power_off_command` (commands.power_off) and the board no `power`; labd powers a board off after every job",
                            lava.source
                        ),
                    ));
                }
                let on = if lava.power_on.is_empty() {
                    lava.hard_reset.clone()
                } else {
                    lava.power_on.clone()
                };
                if on.is_empty() {
                    return Err(bad(
                        "power",
                        format!(
                            "no power on: {} has neither `power_on_command` nor `hard_reset_command`, and the board no `power`",
                            lava.source
                        ),
                    ));
                }
                PowerConfig::Command {
                    on: Commands::Several(on),
                    off: Commands::Several(lava.power_off.clone()),
                    reset: (!lava.hard_reset.is_empty())
                        .then(|| Commands::Several(lava.hard_reset.clone())),
                    timeout_secs: default_power_timeout(),
                    retries: default_power_retries(),
                }
            }
        };
        Ok(BoardConfig {
            name: self.name.clone(),
            device_type: lava.device_type.clone(),
            tags: self.tags.clone(),
            console,
            power,
            parameters: self.parameters.clone(),
            lava: Some(Box::new(lava)),
            lava_worker_device: self.lava_worker_device.clone(),
        })
    }
}

impl LabConfig {
    /// Parses a config; `file` names it in errors, and relative paths of
    /// LAVA device configurations are relative to its directory.
    pub fn parse(file: &str, text: &str) -> Result<LabConfig, ConfigError> {
        let mut cfg: LabConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|s| line_col(text, s.start))
                .map_or((None, None), |(l, c)| (Some(l), Some(c)));
            ConfigError::Invalid {
                location: Location {
                    file: Some(file.to_owned()),
                    path: None,
                    line,
                    column,
                },
                message: e.message().to_owned(),
            }
        })?;
        let base = Path::new(file).parent().unwrap_or(Path::new("."));
        cfg.boards = cfg
            .board_entries
            .iter()
            .enumerate()
            .map(|(i, e)| e.resolve(i, file, base))
            .collect::<Result<_, _>>()?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// Every key of the boards' LAVA device configurations that labd reads
    /// past, one line per board, for the one warning at start and reload.
    pub fn lava_ignored(&self) -> Vec<String> {
        self.boards
            .iter()
            .filter_map(|b| {
                let l = b.lava.as_ref()?;
                (!l.ignored.is_empty())
                    .then(|| format!("board {} ({}): {}", b.name, l.source, l.ignored.join(", ")))
            })
            .collect()
    }

    pub fn load(path: &Path) -> Result<LabConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        let mut cfg = LabConfig::parse(&path.display().to_string(), &text)?;
        // Relative paths in a config file are relative to the file, not to the
        // daemon's working directory, so that a config works from anywhere.
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(d) = &cfg.device_types_dir {
            if d.is_relative() {
                cfg.device_types_dir = Some(base.join(d));
            }
        }
        if cfg.state_dir.is_relative() {
            cfg.state_dir = base.join(&cfg.state_dir);
        }
        if let Some(d) = &cfg.git.cache_dir {
            if d.is_relative() {
                cfg.git.cache_dir = Some(base.join(d));
            }
        }
        if let Some(l) = &mut cfg.lava {
            if let Some(t) = l.token_file.as_ref().filter(|t| t.is_relative()) {
                l.token_file = Some(base.join(t));
            }
        }
        Ok(cfg)
    }

    /// `[lava]` and the boards' `lava_worker_device`: a server URL labd can
    /// reach, and each device named once, only with a server to name it.
    fn validate_lava(
        &self,
        bad: &dyn Fn(String, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        if let Some(l) = &self.lava {
            if !(l.url.starts_with("http://") || l.url.starts_with("https://")) {
                return Err(bad(
                    "lava.url".into(),
                    format!("`{}` is not an http:// or https:// URL", l.url),
                ));
            }
            let name_ok = |n: &str| {
                !n.is_empty()
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            };
            if !name_ok(&l.worker) {
                return Err(bad(
                    "lava.worker".into(),
                    format!(
                        "`{}` is not a worker name (letters, digits, `.`, `_`, `-`)",
                        l.worker
                    ),
                ));
            }
            if let Some(u) = &l.ws_url {
                let scheme_ok = ["ws://", "wss://", "http://", "https://"]
                    .iter()
                    .any(|s| u.starts_with(s));
                if !u.is_empty() && !scheme_ok {
                    return Err(bad(
                        "lava.ws_url".into(),
                        format!("`{u}` is not a ws://, wss://, http:// or https:// URL (\"\" turns the events off)"),
                    ));
                }
            }
            if l.ping_interval_secs == 0 {
                return Err(bad(
                    "lava.ping_interval_secs".into(),
                    "must be at least 1".into(),
                ));
            }
        }
        let mut seen = std::collections::BTreeMap::new();
        for (i, b) in self.boards.iter().enumerate() {
            let Some(d) = &b.lava_worker_device else {
                continue;
            };
            if self.lava.is_none() {
                return Err(bad(
                    format!("boards[{i}].lava_worker_device"),
                    format!(
                        "board {} names LAVA device `{d}`, but there is no [lava] server",
                        b.name
                    ),
                ));
            }
            if let Some(other) = seen.insert(d.clone(), b.name.clone()) {
                return Err(bad(
                    format!("boards[{i}].lava_worker_device"),
                    format!("LAVA device `{d}` is board {other} already"),
                ));
            }
        }
        Ok(())
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |path: String, message: String| ConfigError::Invalid {
            location: Location {
                file: Some(file.to_owned()),
                path: Some(path),
                line: None,
                column: None,
            },
            message,
        };
        self.validate_lava(&bad)?;
        for (i, o) in self.qemu.extra_allowed_options.iter().enumerate() {
            if !crate::qemu_args::allowable(o) {
                return Err(bad(
                    format!("qemu.extra_allowed_options[{i}]"),
                    format!("`{o}` cannot be allowed: it is not a QEMU option, or it reaches the host outside a job's files (labd refuses it whatever the configuration)"),
                ));
            }
        }
        if let Some(a) = self.limits.admin_connections {
            if a >= self.limits.max_connections {
                return Err(bad(
                    "limits.admin_connections".into(),
                    format!(
                        "{a} leaves no connection to anyone but admins; keep it below limits.max_connections ({})",
                        self.limits.max_connections
                    ),
                ));
            }
        }
        for (i, r) in self.deploy.file_roots.iter().enumerate() {
            if !r.is_absolute() {
                return Err(bad(
                    format!("deploy.file_roots[{i}]"),
                    format!("`{}` is not an absolute path", r.display()),
                ));
            }
        }
        if self.nfs.protocols.is_empty() || self.nfs.protocols.iter().any(|v| *v != 3 && *v != 4) {
            return Err(bad(
                "nfs.protocols".into(),
                format!("{:?}: NFS versions are 3 and 4", self.nfs.protocols),
            ));
        }
        if let Some(d) = self.nfs.dir.as_ref().filter(|d| !d.is_absolute()) {
            return Err(bad(
                "nfs.dir".into(),
                format!("`{}` is not an absolute path", d.display()),
            ));
        }
        for (i, c) in self.nfs.clients.iter().enumerate() {
            if c.is_empty()
                || !c
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ".:-/*_".contains(ch))
            {
                return Err(bad(
                    format!("nfs.clients[{i}]"),
                    format!("`{c}` is not an address, a network or a host name"),
                ));
            }
        }
        for (i, r) in self.git.file_roots.iter().enumerate() {
            if !r.is_absolute() {
                return Err(bad(
                    format!("git.file_roots[{i}]"),
                    format!("`{}` is not an absolute path", r.display()),
                ));
            }
        }
        if self.git.timeout_secs == 0 {
            return Err(bad("git.timeout_secs".into(), "must be at least 1".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, b) in self.boards.iter().enumerate() {
            if b.name.is_empty()
                || !b
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(bad(
                    format!("boards[{i}].name"),
                    format!(
                        "board name `{}` may only use letters, digits, `-` and `_`",
                        b.name
                    ),
                ));
            }
            if !seen.insert(b.name.clone()) {
                return Err(bad(
                    format!("boards[{i}].name"),
                    format!("board `{}` is defined twice", b.name),
                ));
            }
            let uses_sim = matches!(b.console, ConsoleConfig::Sim { .. })
                || matches!(b.power, PowerConfig::Sim { .. });
            if uses_sim && self.sim_control.is_none() {
                return Err(bad(
                    format!("boards[{i}]"),
                    "a `sim` console or power needs `sim_control` at the top level".into(),
                ));
            }
            if let ConsoleConfig::Command {
                command,
                ready,
                ready_timeout_secs,
            } = &b.console
            {
                if command.is_empty() {
                    return Err(bad(
                        format!("boards[{i}].console.command"),
                        "must be a non-empty argv list, such as [\"telnet\", \"host\", \"7001\"]"
                            .into(),
                    ));
                }
                if let Some(r) = ready {
                    if let Err(e) = regex::bytes::Regex::new(r) {
                        return Err(bad(format!("boards[{i}].console.ready"), e.to_string()));
                    }
                    if *ready_timeout_secs == 0 {
                        return Err(bad(
                            format!("boards[{i}].console.ready_timeout_secs"),
                            "must be at least 1".into(),
                        ));
                    }
                }
            }
            if let ConsoleConfig::Ssh { .. } = &b.console {
                check_ssh_console(&format!("boards[{i}].console"), &b.console)
                    .map_err(|(key, why)| bad(key, why))?;
            } else if b.power == PowerConfig::None {
                return Err(bad(
                    format!("boards[{i}].power"),
                    "missing: only a board reached over ssh (console `ssh`) may have no relay"
                        .into(),
                ));
            }
            if let PowerConfig::Command { on, off, reset, .. } = &b.power {
                if on.is_empty() || off.is_empty() || reset.as_ref().is_some_and(|r| r.is_empty()) {
                    return Err(bad(
                        format!("boards[{i}].power"),
                        "`on`, `off` and `reset` must each be a non-empty argv list (or a list of them)".into(),
                    ));
                }
            }
            if let PowerConfig::Qemu { argv, .. } = &b.power {
                if argv.is_empty() {
                    return Err(bad(
                        format!("boards[{i}].power.argv"),
                        "must be a non-empty argv list, such as [\"qemu-system-aarch64\", \"-M\", \"virt\"]".into(),
                    ));
                }
                // labd owns the options that make power and the console
                // work; an argv that sets them itself would fight it.
                if let Some((j, a)) = argv.iter().enumerate().find(|(_, a)| {
                    matches!(
                        a.as_str(),
                        "-S" | "-qmp" | "-monitor" | "-daemonize" | "-nographic"
                    )
                }) {
                    return Err(bad(
                        format!("boards[{i}].power.argv[{j}]"),
                        format!("`{a}` is set by labd's qemu relay; leave it out"),
                    ));
                }
                let wired = match b.console {
                    ConsoleConfig::Unix { .. } => Some("unix"),
                    ConsoleConfig::Pty { .. } => Some("pty"),
                    _ => None,
                };
                if let Some(kind) = wired.filter(|_| argv.iter().any(|a| a == "-serial")) {
                    return Err(bad(
                        format!("boards[{i}].power.argv"),
                        format!("with a `{kind}` console labd connects the first serial port itself; leave `-serial` out"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Where the git cache keeps its mirrors.
    pub fn git_cache_dir(&self) -> PathBuf {
        self.git
            .cache_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("git-cache"))
    }

    /// Where jobs' NFS roots and the NFS server's files are kept.
    pub fn nfs_dir(&self) -> PathBuf {
        self.nfs
            .dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("nfs"))
    }

    pub fn tftp_root(&self) -> PathBuf {
        self.tftp
            .root
            .clone()
            .unwrap_or_else(|| self.state_dir.join("tftp"))
    }
}

/// Checks an ssh console's settings: a host and user ssh cannot take for
/// an option, and a key and a `known_hosts` file that are there. On error,
/// the key path (under `at`) and why.
fn check_ssh_console(at: &str, console: &ConsoleConfig) -> Result<(), (String, String)> {
    let ConsoleConfig::Ssh {
        host,
        port,
        user,
        identity_file,
        known_hosts,
        connect_timeout_secs,
    } = console
    else {
        return Ok(());
    };
    let key = |k: &str| format!("{at}.{k}");
    // Only what a host name or address is made of: nothing ssh could
    // read as an option, a user or a second argument.
    let host_ok = !host.is_empty()
        && !host.starts_with('-')
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c));
    if !host_ok {
        return Err((
            key("host"),
            format!("`{host}` is not a host name or address"),
        ));
    }
    let user_ok = !user.is_empty()
        && !user.starts_with('-')
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !user_ok {
        return Err((key("user"), format!("`{user}` is not a user name")));
    }
    if *port == 0 {
        return Err((key("port"), "must be a port number, 1 to 65535".into()));
    }
    if *connect_timeout_secs == 0 {
        return Err((key("connect_timeout_secs"), "must be at least 1".into()));
    }
    let file = |name: &str, path: &Option<PathBuf>, what: &str| -> Result<(), (String, String)> {
        let Some(p) = path else {
            return Err((key(name), format!("missing: {what}")));
        };
        if !p.is_absolute() {
            return Err((
                key(name),
                format!("`{}` is not an absolute path", p.display()),
            ));
        }
        match std::fs::metadata(p) {
            Ok(m) if m.is_file() => Ok(()),
            Ok(_) => Err((key(name), format!("`{}` is not a file", p.display()))),
            Err(e) => Err((key(name), format!("`{}`: {e}", p.display()))),
        }
    };
    file(
        "identity_file",
        identity_file,
        "the private key labd logs in to the board with",
    )?;
    file(
        "known_hosts",
        known_hosts,
        "a known_hosts file with the board's host key: labd connects only to the host that key proves",
    )?;
    // ssh ignores a private key others may read, and would then fail as if
    // the board refused it: say so here instead.
    if let Some(p) = identity_file {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(p).map_or(0, |m| m.permissions().mode());
        if mode & 0o077 != 0 {
            return Err((
                key("identity_file"),
                format!(
                    "`{}` may be read by others (mode {:o}); ssh refuses such a key: chmod 600 it",
                    p.display(),
                    mode & 0o777
                ),
            ));
        }
    }
    Ok(())
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

/// The socket path to use: `--socket`/`$LABD_SOCKET` (already merged by clap),
/// then the config's, then the compiled-in default.
pub fn resolve_socket(cli: Option<&Path>, cfg: Option<&LabConfig>) -> PathBuf {
    cli.map(Path::to_path_buf)
        .or_else(|| cfg.and_then(|c| c.socket.clone()))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// The demo lab: four simulated boards, three of one tag set and one other.
pub fn demo(state_dir: &Path, sim_control: &Path, socket: &Path) -> LabConfig {
    let boards = (1..=4)
        .map(|i| BoardConfig {
            name: format!("sim-{i:02}"),
            device_type: "sim-uboot".into(),
            tags: if i == 4 {
                vec!["sim".into(), "slow-uart".into()]
            } else {
                vec!["sim".into()]
            },
            console: ConsoleConfig::Sim { board: None },
            power: PowerConfig::Sim { board: None },
            parameters: BTreeMap::new(),
            lava: None,
            lava_worker_device: None,
        })
        .collect();
    LabConfig {
        socket: Some(socket.to_path_buf()),
        state_dir: state_dir.to_path_buf(),
        device_types_dir: None,
        store: StoreConfig {
            cache_capacity: 16 * 1024 * 1024,
        },
        tftp: TftpConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            server_ip: Some("127.0.0.1".into()),
            root: None,
            window_size_limit: 16,
            threads: None,
        },
        artifact_cache: ArtifactCacheConfig::default(),
        git: GitConfig::default(),
        nfs: NfsConfig::default(),
        qemu: QemuConfig::default(),
        lava: None,
        // The demo runs as whoever started it: any file they may read.
        deploy: DeployConfig {
            file_roots: vec![PathBuf::from("/")],
            overlay_http: None,
        },
        limits: Limits::default(),
        health_checks: HealthChecks::default(),
        auth: Auth::default(),
        retention: RetentionConfig::default(),
        metrics_listen: None,
        slow: SlowConfig::default(),
        log: LogConfig::default(),
        statsd: None,
        lock_dir: default_lock_dir(),
        sim_control: Some(sim_control.to_path_buf()),
        board_entries: Vec::new(),
        boards,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The publisher's URL: `<url>/ws/` by default, http(s) taken as
    /// ws(s), "" for none, and any other scheme refused naming the key.
    #[test]
    fn the_lava_events_url() {
        let cfg = |extra: &str| {
            LabConfig::parse(
                "t.toml",
                &format!("socket = \"/tmp/s\"\nstate_dir = \"/tmp/d\"\n[lava]\nurl = \"https://lava.example.com/\"\nworker = \"w\"\n{extra}"),
            )
        };
        let events = |extra: &str| cfg(extra).unwrap().lava.unwrap().events_url();
        assert_eq!(events("").as_deref(), Some("wss://lava.example.com/ws/"));
        assert_eq!(
            events("ws_url = \"http://127.0.0.1:8001/ws/\"").as_deref(),
            Some("ws://127.0.0.1:8001/ws/")
        );
        assert_eq!(events("ws_url = \"\"").as_deref(), None);
        let e = cfg("ws_url = \"ftp://x/\"").unwrap_err().to_string();
        assert!(e.contains("lava.ws_url") && e.contains("ftp://x/"), "{e}");
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../config/labd.toml");
        let cfg = LabConfig::parse("config/labd.toml", text).unwrap();
        assert!(!cfg.boards.is_empty());
    }

    /// Every example lab loads, and every board's device type is one labd ships.
    #[test]
    fn example_labs_load_with_shipped_device_types() {
        let shipped: Vec<&str> = crate::device_type::EMBEDDED
            .iter()
            .map(|(n, _)| *n)
            .collect();
        for (file, text) in [
            ("config/labd.toml", include_str!("../config/labd.toml")),
            ("hil/lab.toml", include_str!("../hil/lab.toml")),
            (
                "hil/real-lab.example.toml",
                include_str!("../hil/real-lab.example.toml"),
            ),
        ] {
            let text = text
                .replace("@RUN@", "/tmp/run")
                .replace("@CACHE@", "/tmp/cache")
                .replace("@DEVICE_TYPES@", "/tmp/dt");
            let cfg = LabConfig::parse(file, &text).unwrap_or_else(|e| panic!("{e}"));
            assert!(!cfg.boards.is_empty(), "{file}");
            for b in &cfg.boards {
                assert!(
                    shipped.contains(&b.device_type.as_str()),
                    "{file}: {} uses {}",
                    b.name,
                    b.device_type
                );
            }
        }
        // The three kinds of board the README promises are in the main example.
        let cfg =
            LabConfig::parse("config/labd.toml", include_str!("../config/labd.toml")).unwrap();
        let kinds: Vec<_> = cfg.boards.iter().map(|b| &b.power).collect();
        assert!(kinds
            .iter()
            .any(|p| matches!(p, PowerConfig::Pdudaemon { .. })));
        assert!(kinds
            .iter()
            .any(|p| matches!(p, PowerConfig::Command { .. })));
        assert!(kinds.iter().any(|p| matches!(p, PowerConfig::Qemu { .. })));
    }

    #[test]
    fn a_lab_may_allow_more_qemu_options_but_never_those_that_reach_the_host() {
        let base = "state_dir = \"/tmp\"\n[qemu]\n";
        let c = LabConfig::parse(
            "x.toml",
            &format!("{base}extra_allowed_options = [\"-foo\", \"--bar\"]\n"),
        )
        .unwrap();
        assert!(c.qemu.allows("-foo") && c.qemu.allows("-bar") && c.qemu.allows("--foo"));
        assert!(!c.qemu.allows("-baz"));
        for denied in ["-chardev", "--monitor", "-plugin", "-virtfs", "foo"] {
            let err = LabConfig::parse(
                "x.toml",
                &format!("{base}extra_allowed_options = [\"-smp\", \"{denied}\"]\n"),
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("qemu.extra_allowed_options[1]") && err.contains(denied),
                "{err}"
            );
        }
    }

    #[test]
    fn a_qemu_relay_may_not_set_what_labd_owns() {
        let base = "state_dir = \"/tmp\"\n[[boards]]\nname = \"q\"\ndevice_type = \"qemu-aarch64\"\nconsole = { type = \"unix\", path = \"/tmp/q.sock\" }\n";
        let err = LabConfig::parse(
            "x.toml",
            &format!(
                "{base}power = {{ type = \"qemu\", argv = [\"qemu-system-aarch64\", \"-S\"] }}\n"
            ),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("boards[0].power.argv[1]") && err.contains("`-S`"),
            "{err}"
        );
        let err = LabConfig::parse("x.toml", &format!("{base}power = {{ type = \"qemu\", argv = [\"qemu-system-aarch64\", \"-serial\", \"stdio\"] }}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("-serial") && err.contains("`unix`"), "{err}");
        let pty = base.replace(
            "{ type = \"unix\", path = \"/tmp/q.sock\" }",
            "{ type = \"pty\", link = \"/tmp/q.console\" }",
        );
        let err = LabConfig::parse("x.toml", &format!("{pty}power = {{ type = \"qemu\", argv = [\"qemu-system-aarch64\", \"-serial\", \"stdio\"] }}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("boards[0].power.argv") && err.contains("`pty`"),
            "{err}"
        );
        let err = LabConfig::parse(
            "x.toml",
            &format!("{base}power = {{ type = \"qemu\", argv = [] }}\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("non-empty"), "{err}");
    }

    #[test]
    fn a_command_console_s_ready_pattern_is_checked() {
        let base = "state_dir = \"/tmp\"\n[[boards]]\nname = \"b\"\ndevice_type = \"bbb\"\npower = { type = \"command\", on = [\"r\", \"on\"], off = [\"r\", \"off\"] }\n";
        let with =
            |console: &str| LabConfig::parse("x.toml", &format!("{base}console = {console}\n"));
        let cfg = with("{ type = \"command\", command = [\"telnet\", \"h\", \"7001\"], ready = \"Escape character is\" }")
            .unwrap();
        assert!(matches!(
            &cfg.boards[0].console,
            ConsoleConfig::Command { ready: Some(r), ready_timeout_secs: 10, .. } if r == "Escape character is"
        ));
        let err = with("{ type = \"command\", command = [\"telnet\"], ready = \"Escape (\" }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("boards[0].console.ready"), "{err}");
        let err = with(
            "{ type = \"command\", command = [\"telnet\"], ready = \"x\", ready_timeout_secs = 0 }",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("boards[0].console.ready_timeout_secs"),
            "{err}"
        );
    }

    /// An ssh board needs its key and known_hosts, both there; the key
    /// readable by labd alone; a host and user ssh cannot take for
    /// options. It may leave out `power`; no other board may.
    #[test]
    fn an_ssh_console_is_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (key, kh) = (dir.path().join("key"), dir.path().join("known_hosts"));
        std::fs::write(&key, "k").unwrap();
        std::fs::write(&kh, "h").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let with = |console: &str| {
            LabConfig::parse(
                "x.toml",
                &format!("state_dir = \"/tmp\"\n[[boards]]\nname = \"s\"\ndevice_type = \"ssh\"\nconsole = {console}\n"),
            )
        };
        let good = format!(
            "{{ type = \"ssh\", host = \"10.0.0.5\", identity_file = {key:?}, known_hosts = {kh:?} }}"
        );
        let cfg = with(&good).unwrap();
        assert_eq!(cfg.boards[0].power, PowerConfig::None);
        assert!(matches!(
            &cfg.boards[0].console,
            ConsoleConfig::Ssh { port: 22, user, connect_timeout_secs: 10, .. } if user == "root"
        ));
        let refused = |console: String, path: &str, words: &str| {
            let err = with(&console).unwrap_err();
            let ConfigError::Invalid { location, message } = &err else {
                panic!("{err}");
            };
            assert_eq!(location.path.as_deref(), Some(path), "{err}");
            assert!(message.contains(words), "{err}");
        };
        refused(
            good.replace(&format!(", known_hosts = {kh:?}"), ""),
            "boards[0].console.known_hosts",
            "missing: a known_hosts file",
        );
        refused(
            good.replace(&format!("{key:?}"), "\"/nonexistent/key\""),
            "boards[0].console.identity_file",
            "/nonexistent/key",
        );
        refused(
            good.replace("10.0.0.5", "-oProxyCommand=x"),
            "boards[0].console.host",
            "not a host name",
        );
        refused(
            good.replace("host = ", "user = \"a@b\", host = "),
            "boards[0].console.user",
            "not a user name",
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        refused(good.clone(), "boards[0].console.identity_file", "chmod 600");
        let err = LabConfig::parse(
            "x.toml",
            "state_dir = \"/tmp\"\n[[boards]]\nname = \"b\"\ndevice_type = \"bbb\"\nconsole = { type = \"serial\", device = \"/dev/ttyUSB0\" }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("boards[0].power") && err.contains("only a board reached over ssh"),
            "{err}"
        );
    }

    #[test]
    fn git_section_has_defaults_and_is_checked() {
        let cfg = LabConfig::parse("x.toml", "state_dir = \"/s\"\n").unwrap();
        assert_eq!(cfg.git, GitConfig::default());
        assert_eq!(cfg.git.timeout_secs, 300);
        assert_eq!(cfg.git.max_repo_bytes, 1 << 30);
        assert_eq!(cfg.git_cache_dir(), PathBuf::from("/s/git-cache"));

        let cfg = LabConfig::parse(
            "x.toml",
            "state_dir = \"/s\"\n[git]\ncache_dir = \"/c\"\ntimeout_secs = 5\nmax_repo_bytes = 10\nfile_roots = [\"/srv/git\"]\n",
        )
        .unwrap();
        assert_eq!(cfg.git_cache_dir(), PathBuf::from("/c"));
        assert_eq!((cfg.git.timeout_secs, cfg.git.max_repo_bytes), (5, 10));

        for (text, path) in [
            ("[git]\nfile_roots = [\"srv\"]\n", Some("git.file_roots[0]")),
            ("[git]\ntimeout_secs = 0\n", Some("git.timeout_secs")),
            ("[git]\nbogus = 1\n", None),
        ] {
            let err =
                LabConfig::parse("x.toml", &format!("state_dir = \"/s\"\n{text}")).unwrap_err();
            let ConfigError::Invalid { location, .. } = &err else {
                panic!("{err}");
            };
            assert_eq!(location.path.as_deref(), path, "{err}");
        }
    }

    /// Without a LAVA device configuration a board names its device type,
    /// console and power; with one, its LAVA keys go together.
    #[test]
    fn a_board_s_keys_and_its_lava_keys_are_checked() {
        let board = |keys: &str| {
            LabConfig::parse(
                "/etc/labd/x.toml",
                &format!("state_dir = \"/s\"\nsim_control = \"/s/sim\"\n[[boards]]\nname = \"b\"\n{keys}"),
            )
        };
        let sim = "console = { type = \"sim\" }\npower = { type = \"sim\" }\n";
        let err = |keys: &str| board(keys).unwrap_err().to_string();
        assert!(err(sim).contains("(boards[0].device_type)"));
        assert!(err(
            "device_type = \"t\"\npower = { type = \"command\", on = [\"r\"], off = [\"r\"] }\n"
        )
        .contains("(boards[0].console)"));
        assert!(err("lava_device = \"d.jinja2\"\n").contains("(boards[0].lava_templates)"));
        assert!(err("lava_templates = \"t\"\n").contains("(boards[0].lava_templates)"));
        assert!(
            err("lava_device = \"d\"\nlava_templates = \"t\"\nlava_device_yaml = \"y\"\n")
                .contains("(boards[0].lava_device_yaml)")
        );
        // Relative to the config file's directory.
        let e = err("lava_device_yaml = \"no-such.yaml\"\n");
        assert!(e.contains("/etc/labd/no-such.yaml"), "{e}");

        // Power commands: one argv, or a list of them run in order.
        let cfg = board(
            "device_type = \"t\"\nconsole = { type = \"sim\" }\npower = { type = \"command\", on = [[\"hub\", \"on\"], [\"relay\", \"on\"]], off = [\"relay\", \"off\"] }\n"
        )
        .unwrap();
        let PowerConfig::Command { on, off, .. } = &cfg.boards[0].power else {
            panic!("{:?}", cfg.boards[0].power);
        };
        assert_eq!(on.list().len(), 2);
        assert_eq!(off.list(), [["relay", "off"]]);
        assert!(err("device_type = \"t\"\nconsole = { type = \"sim\" }\npower = { type = \"command\", on = [[\"hub\"], []], off = [\"r\"] }\n")
            .contains("(boards[0].power)"));
    }

    #[test]
    fn errors_have_line_and_column() {
        let err = LabConfig::parse("x.toml", "state_dir = \"/tmp\"\n[[boards]]\nname = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("x.toml:3:"), "{err}");
        let err = LabConfig::parse("x.toml", "state_dir = \"/tmp\"\nbogus = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.toml:2:1") && err.contains("bogus"), "{err}");
    }
}
