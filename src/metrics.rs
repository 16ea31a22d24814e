//! labd's metrics, in Prometheus text format.
//!
//! One [`Metrics`] is made at start and handed (cheap clones) to the parts
//! that count: the store (write batches), the TFTP server, the board actors
//! (console bytes, phase durations), the lab (jobs, queue wait) and the
//! server (request durations). Values that are state rather than events
//! (boards by state and health, jobs by state, queue depth, the store's size,
//! the process's memory and CPU) are set at scrape time by whoever owns that
//! state, then everything is encoded at once. The slow-operation thresholds
//! live here too: whatever times an operation asks [`Metrics::observe_slow`].
//!
//! The LAVA worker's link to its lava-server (`[lava]`) counts on a
//! [`LavaLinkMetrics`], every series labelled by the server's URL and the
//! worker's name: pings by outcome and their latency, whether the last ping
//! was answered, publisher events, log lines queued and sent, log batches
//! that failed, jobs started and finished.
//!
//! ## Invariants
//!
//! Recording never blocks or fails; state gauges are set only at scrape time
//! by the owner of that state, but for those whose one owner sets them as
//! they change: the store writer's suspension, and the LAVA worker's link
//! (connected, log lines queued), which lives outside the lab actor.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
    pub health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthLabel {
    pub health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobStateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub device_type: String,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BoardLabel {
    pub board: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// A lava-server link: the server's URL and this worker's name on it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LavaLinkLabels {
    pub server: String,
    pub worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LavaPingLabels {
    pub server: String,
    pub worker: String,
    /// `ok`, `failed` or `version_mismatch`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LavaFinishLabels {
    pub server: String,
    pub worker: String,
    /// LAVA's `pass` or `fail`.
    pub result: String,
    /// LAVA's error type, empty for a pass.
    pub error_type: String,
}

/// The thresholds above which an operation is reported as slow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowThresholds {
    pub store: Duration,
    pub request: Duration,
    pub power: Duration,
}

impl SlowThresholds {
    /// The thresholds the lab config's `[slow]` asks for.
    pub fn from_config(cfg: &crate::config::SlowConfig) -> Self {
        SlowThresholds {
            store: Duration::from_millis(cfg.store_ms),
            request: Duration::from_millis(cfg.request_ms),
            power: Duration::from_millis(cfg.power_ms),
        }
    }
}

impl Default for SlowThresholds {
    fn default() -> Self {
        SlowThresholds {
            store: Duration::from_millis(500),
            request: Duration::from_secs(2),
            power: Duration::from_secs(10),
        }
    }
}

fn seconds_histogram() -> Histogram {
    // 1 ms to about 9 hours.
    Histogram::new(exponential_buckets(0.001, 3.0, 16))
}

fn ping_histogram() -> Histogram {
    // 1 ms to about a minute, the HTTP calls' timeout: a ping's latency is
    // told apart at a factor of two.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

struct Inner {
    registry: Registry,
    slow: SlowThresholds,
    pub jobs_submitted: Counter,
    pub jobs_finished: Family<HealthLabel, Counter>,
    pub jobs: Family<JobStateLabel, Gauge>,
    pub queue_depth: Gauge,
    pub queue_wait: Histogram,
    pub boards: Family<StateLabels, Gauge>,
    pub phase_duration: HistogramFamily<PhaseLabels>,
    pub tftp_transfers: Counter,
    pub tftp_bytes: Counter,
    pub tftp_errors: Counter,
    pub console_bytes: Family<BoardLabel, Counter>,
    pub store_batch: Histogram,
    pub store_writes: Counter,
    pub store_disk: Gauge,
    pub store_suspended: Gauge,
    pub store_resumes: Counter,
    pub store_logs_stopped: Counter,
    pub requests: HistogramFamily<MethodLabel>,
    pub slow_ops: Family<KindLabel, Counter>,
    pub resident: Gauge,
    pub cpu_millis: Gauge,
    pub lava_pings: Family<LavaPingLabels, Counter>,
    pub lava_ping_seconds: HistogramFamily<LavaLinkLabels>,
    pub lava_connected: Family<LavaLinkLabels, Gauge>,
    pub lava_events: Family<LavaLinkLabels, Counter>,
    pub lava_lines_queued: Family<LavaLinkLabels, Gauge>,
    pub lava_lines_sent: Family<LavaLinkLabels, Counter>,
    pub lava_batches_failed: Family<LavaLinkLabels, Counter>,
    pub lava_jobs_started: Family<LavaLinkLabels, Counter>,
    pub lava_jobs_finished: Family<LavaFinishLabels, Counter>,
}

/// A handle on labd's metrics; clones share them.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(SlowThresholds::default())
    }
}

impl Metrics {
    pub fn new(slow: SlowThresholds) -> Metrics {
        let mut r = Registry::with_prefix("labd");
        let h: fn() -> Histogram = seconds_histogram;
        let i = Inner {
            slow,
            jobs_submitted: Counter::default(),
            jobs_finished: Family::default(),
            jobs: Family::default(),
            queue_depth: Gauge::default(),
            queue_wait: seconds_histogram(),
            boards: Family::default(),
            phase_duration: Family::new_with_constructor(h),
            tftp_transfers: Counter::default(),
            tftp_bytes: Counter::default(),
            tftp_errors: Counter::default(),
            console_bytes: Family::default(),
            store_batch: seconds_histogram(),
            store_writes: Counter::default(),
            store_disk: Gauge::default(),
            store_suspended: Gauge::default(),
            store_resumes: Counter::default(),
            store_logs_stopped: Counter::default(),
            requests: Family::new_with_constructor(h),
            slow_ops: Family::default(),
            resident: Gauge::default(),
            cpu_millis: Gauge::default(),
            lava_pings: Family::default(),
            lava_ping_seconds: Family::new_with_constructor(ping_histogram),
            lava_connected: Family::default(),
            lava_events: Family::default(),
            lava_lines_queued: Family::default(),
            lava_lines_sent: Family::default(),
            lava_batches_failed: Family::default(),
            lava_jobs_started: Family::default(),
            lava_jobs_finished: Family::default(),
            registry: Registry::default(),
        };
        r.register("jobs_submitted", "Jobs submitted", i.jobs_submitted.clone());
        r.register(
            "jobs_finished",
            "Jobs finished, by health",
            i.jobs_finished.clone(),
        );
        r.register("jobs", "Jobs not finished, by state", i.jobs.clone());
        r.register(
            "queue_depth",
            "Jobs waiting for a board",
            i.queue_depth.clone(),
        );
        r.register(
            "queue_wait_seconds",
            "Time from submit to start",
            i.queue_wait.clone(),
        );
        r.register("boards", "Boards by state and health", i.boards.clone());
        r.register(
            "phase_duration_seconds",
            "Boot and test phase durations, by device type",
            i.phase_duration.clone(),
        );
        r.register(
            "tftp_transfers",
            "TFTP transfers started",
            i.tftp_transfers.clone(),
        );
        r.register("tftp_bytes", "TFTP bytes served", i.tftp_bytes.clone());
        r.register(
            "tftp_errors",
            "TFTP requests refused or failed",
            i.tftp_errors.clone(),
        );
        r.register(
            "console_bytes",
            "Console bytes read, by board",
            i.console_bytes.clone(),
        );
        r.register(
            "store_batch_seconds",
            "Store write batches: apply and flush",
            i.store_batch.clone(),
        );
        r.register(
            "store_writes",
            "Store writes applied",
            i.store_writes.clone(),
        );
        r.register(
            "store_disk_bytes",
            "The store's size on disk",
            i.store_disk.clone(),
        );
        r.register(
            "store_writes_suspended",
            "1 while the store's disk is full or failing: submits refused, console logs stopped",
            i.store_suspended.clone(),
        );
        r.register(
            "store_resumes",
            "Times the store resumed by itself once space came back",
            i.store_resumes.clone(),
        );
        r.register(
            "store_logs_stopped",
            "Job console logs stopped with a truncation mark (the disk full or failing)",
            i.store_logs_stopped.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Socket requests, by method",
            i.requests.clone(),
        );
        r.register(
            "slow_operations",
            "Operations above their slow threshold, by kind",
            i.slow_ops.clone(),
        );
        r.register(
            "process_resident_memory_bytes",
            "labd's resident memory",
            i.resident.clone(),
        );
        r.register(
            "process_cpu_milliseconds",
            "labd's CPU time, user and system",
            i.cpu_millis.clone(),
        );
        r.register(
            "lava_pings",
            "Pings of the lava-server, by outcome: ok, failed (no answer, an error), version_mismatch (HTTP 409)",
            i.lava_pings.clone(),
        );
        r.register(
            "lava_ping_seconds",
            "Time the lava-server took to answer a ping",
            i.lava_ping_seconds.clone(),
        );
        r.register(
            "lava_connected",
            "1 while the lava-server answered the last ping, else 0",
            i.lava_connected.clone(),
        );
        r.register(
            "lava_events",
            "Events received from the lava-server's publisher",
            i.lava_events.clone(),
        );
        r.register(
            "lava_log_lines_queued",
            "Log lines of the lava-server's jobs not yet taken by the server",
            i.lava_lines_queued.clone(),
        );
        r.register(
            "lava_log_lines_sent",
            "Log lines the lava-server took",
            i.lava_lines_sent.clone(),
        );
        r.register(
            "lava_log_batches_failed",
            "Batches of log lines the lava-server did not take (each is sent again)",
            i.lava_batches_failed.clone(),
        );
        r.register(
            "lava_jobs_started",
            "lava-server jobs this worker started",
            i.lava_jobs_started.clone(),
        );
        r.register(
            "lava_jobs_finished",
            "lava-server jobs this worker reported finished, by LAVA result and error type",
            i.lava_jobs_finished.clone(),
        );
        Metrics(Arc::new(Inner { registry: r, ..i }))
    }

    /// The handle the LAVA worker counts its link to lava-server `url`, as
    /// worker `worker`, on. Its series exist from now on, at zero, so that
    /// a link that never answered shows as such rather than as nothing.
    pub fn lava_link(&self, url: &str, worker: &str) -> LavaLinkMetrics {
        let i = &self.0;
        let link = LavaLinkLabels {
            server: url.to_owned(),
            worker: worker.to_owned(),
        };
        let ping = |outcome: &str| {
            i.lava_pings
                .get_or_create(&LavaPingLabels {
                    server: url.to_owned(),
                    worker: worker.to_owned(),
                    outcome: outcome.to_owned(),
                })
                .clone()
        };
        LavaLinkMetrics(Arc::new(LinkInner {
            ping_ok: ping("ok"),
            ping_failed: ping("failed"),
            ping_version_mismatch: ping("version_mismatch"),
            ping_seconds: i.lava_ping_seconds.get_or_create(&link).clone(),
            connected: i.lava_connected.get_or_create(&link).clone(),
            events: i.lava_events.get_or_create(&link).clone(),
            lines_queued: i.lava_lines_queued.get_or_create(&link).clone(),
            lines_sent: i.lava_lines_sent.get_or_create(&link).clone(),
            batches_failed: i.lava_batches_failed.get_or_create(&link).clone(),
            jobs_started: i.lava_jobs_started.get_or_create(&link).clone(),
            jobs_finished: i.lava_jobs_finished.clone(),
            queued_by_job: std::sync::Mutex::new(std::collections::HashMap::new()),
            link,
        }))
    }

    pub fn job_submitted(&self) {
        self.0.jobs_submitted.inc();
    }

    pub fn job_finished(&self, health: &str) {
        self.0
            .jobs_finished
            .get_or_create(&HealthLabel {
                health: health.to_owned(),
            })
            .inc();
    }

    pub fn queue_waited(&self, d: Duration) {
        self.0.queue_wait.observe(d.as_secs_f64());
    }

    pub fn phase(&self, device_type: &str, phase: &str, d: Duration) {
        self.0
            .phase_duration
            .get_or_create(&PhaseLabels {
                device_type: device_type.to_owned(),
                phase: phase.to_owned(),
            })
            .observe(d.as_secs_f64());
    }

    pub fn tftp_transfer(&self) {
        self.0.tftp_transfers.inc();
    }

    pub fn tftp_bytes(&self, n: u64) {
        self.0.tftp_bytes.inc_by(n);
    }

    pub fn tftp_error(&self) {
        self.0.tftp_errors.inc();
    }

    /// The counter of `board`'s console bytes. A board actor keeps it and
    /// counts each read on it directly: looking the label up on every read
    /// (a `String`, a hash and a lock) was a cost per read at 1000 boards.
    pub fn console_bytes(&self, board: &str) -> Counter {
        self.0
            .console_bytes
            .get_or_create(&BoardLabel {
                board: board.to_owned(),
            })
            .clone()
    }

    pub fn store_batch(&self, writes: usize, d: Duration) {
        self.0.store_writes.inc_by(writes as u64);
        self.0.store_batch.observe(d.as_secs_f64());
        if d > self.0.slow.store {
            self.slow("store");
            tracing::warn!(writes, ms = d.as_millis() as u64, "slow store write batch");
        }
    }

    /// The store's writer suspended (true) or resumed its writes. The
    /// writer owns this state and sets it as it changes.
    pub fn store_suspended(&self, on: bool) {
        self.0.store_suspended.set(i64::from(on));
    }

    /// The store resumed by itself once space came back.
    pub fn store_resumed(&self) {
        self.0.store_resumes.inc();
    }

    /// A job's console log stopped with a truncation mark.
    pub fn store_log_stopped(&self) {
        self.0.store_logs_stopped.inc();
    }

    pub fn request(&self, method: &str, d: Duration) {
        self.0
            .requests
            .get_or_create(&MethodLabel {
                method: method.to_owned(),
            })
            .observe(d.as_secs_f64());
        if d > self.0.slow.request {
            self.slow("request");
            tracing::warn!(method, ms = d.as_millis() as u64, "slow socket request");
        }
    }

    /// Reports a power command's duration; true if it was slow.
    pub fn power(&self, board: &str, action: &str, d: Duration) -> bool {
        if d > self.0.slow.power {
            self.slow("power");
            tracing::warn!(
                board,
                action,
                ms = d.as_millis() as u64,
                "slow power command"
            );
            return true;
        }
        false
    }

    fn slow(&self, kind: &str) {
        self.0
            .slow_ops
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Sets the state gauges, then encodes every metric as Prometheus text.
    pub fn render(&self, scrape: Scrape) -> String {
        let i = &self.0;
        i.jobs.clear();
        for (state, n) in scrape.jobs_by_state {
            i.jobs
                .get_or_create(&JobStateLabel {
                    state: state.to_owned(),
                })
                .set(n as i64);
        }
        i.queue_depth.set(scrape.queue_depth as i64);
        i.boards.clear();
        for ((state, health), n) in scrape.boards {
            i.boards
                .get_or_create(&StateLabels { state, health })
                .set(n as i64);
        }
        i.store_disk.set(scrape.store_disk_bytes as i64);
        if let Some((rss, cpu)) = process_usage() {
            i.resident.set(rss as i64);
            i.cpu_millis.set(cpu as i64);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &i.registry);
        out
    }
}

struct LinkInner {
    link: LavaLinkLabels,
    ping_ok: Counter,
    ping_failed: Counter,
    ping_version_mismatch: Counter,
    ping_seconds: Histogram,
    connected: Gauge,
    events: Counter,
    lines_queued: Gauge,
    lines_sent: Counter,
    batches_failed: Counter,
    jobs_started: Counter,
    jobs_finished: Family<LavaFinishLabels, Counter>,
    /// Each job's lines not yet taken, by the server's job id: the gauge is
    /// their sum. A job's count is set, not moved by deltas, so the lines
    /// of a job that ends with some never taken leave the gauge when it
    /// finishes instead of staying in it for good.
    queued_by_job: std::sync::Mutex<std::collections::HashMap<u64, u64>>,
}

/// The LAVA worker's link to its lava-server, as metrics (see
/// [`Metrics::lava_link`]); clones count on the same series. Every method
/// only records: none blocks (the one lock is held for a map update) or
/// fails.
#[derive(Clone)]
pub struct LavaLinkMetrics(Arc<LinkInner>);

impl LavaLinkMetrics {
    /// The server answered a ping in `latency`.
    pub fn ping_ok(&self, latency: Duration) {
        self.0.ping_ok.inc();
        self.0.ping_seconds.observe(latency.as_secs_f64());
        self.0.connected.set(1);
    }

    /// A ping got no answer, or an error for one.
    pub fn ping_failed(&self) {
        self.0.ping_failed.inc();
        self.0.connected.set(0);
    }

    /// The server refused the worker's version (HTTP 409): it shows the
    /// worker Offline, so the link is not up either.
    pub fn version_mismatch(&self) {
        self.0.ping_version_mismatch.inc();
        self.0.connected.set(0);
    }

    /// An event arrived from the server's publisher.
    pub fn event(&self) {
        self.0.events.inc();
    }

    /// The worker started a server's job (the lab took it).
    pub fn job_started(&self) {
        self.0.jobs_started.inc();
    }

    /// The worker reports server job `lava_job` finished with LAVA's
    /// `result` and `error_type`. Its log lines still queued will never be
    /// sent: they leave the queued count.
    pub fn job_finished(&self, lava_job: u64, result: &str, error_type: &str) {
        self.0
            .jobs_finished
            .get_or_create(&LavaFinishLabels {
                server: self.0.link.server.clone(),
                worker: self.0.link.worker.clone(),
                result: result.to_owned(),
                error_type: error_type.to_owned(),
            })
            .inc();
        self.lines_queued(lava_job, 0);
    }

    /// Server job `lava_job` now has `pending` log lines the server has not
    /// taken.
    pub fn lines_queued(&self, lava_job: u64, pending: usize) {
        // A poisoned lock only means a panic elsewhere mid-update: the map
        // is still a map, and a count is better than none.
        let mut by_job = self
            .0
            .queued_by_job
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if pending == 0 {
            by_job.remove(&lava_job);
        } else {
            by_job.insert(lava_job, pending as u64);
        }
        let total: u64 = by_job.values().sum();
        self.0.lines_queued.set(total as i64);
    }

    /// The server took `n` log lines.
    pub fn lines_sent(&self, n: usize) {
        self.0.lines_sent.inc_by(n as u64);
    }

    /// A batch of log lines failed; it is sent again.
    pub fn batch_failed(&self) {
        self.0.batches_failed.inc();
    }
}

/// Prometheus text as statsd gauge lines: `prefix.name.label_values:value|g`.
/// Comments are dropped; label values join the name, made safe for graphite.
pub fn statsd_lines(prefix: &str, text: &str) -> Vec<String> {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if value.parse::<f64>().is_err() {
            continue;
        }
        let mut name = prefix.to_owned();
        let (base, labels) = series.split_once('{').unwrap_or((series, ""));
        name.push('.');
        name.push_str(&clean(base.strip_prefix("labd_").unwrap_or(base)));
        for pair in labels
            .trim_end_matches('}')
            .split(',')
            .filter(|p| !p.is_empty())
        {
            if let Some((_, v)) = pair.split_once('=') {
                name.push('.');
                name.push_str(&clean(v.trim_matches('"')));
            }
        }
        out.push(format!("{name}:{value}|g"));
    }
    out
}

/// What the lab knows at scrape time.
#[derive(Debug, Default)]
pub struct Scrape {
    pub jobs_by_state: Vec<(&'static str, usize)>,
    pub queue_depth: usize,
    pub boards: std::collections::BTreeMap<(String, String), usize>,
    pub store_disk_bytes: u64,
}

/// Resident bytes and CPU milliseconds of this process, from /proc.
fn process_usage() -> Option<(u64, u64)> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    let (_, cpu) = stat_cpu(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    Some((pages * page, (cpu * 1000.0) as u64))
}

/// A process's or thread's command name and CPU seconds (user + system),
/// from its `/proc/.../stat` line. The benchmarks read labd's this way too.
pub fn stat_cpu(stat: &str) -> Option<(&str, f64)> {
    // The command name is in parentheses and may hold spaces and `)`: the
    // fields after it start at the last `)`.
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as f64;
    Some((comm, (utime + stime) as f64 / tick))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command name may hold spaces and parentheses; the CPU fields are
    /// counted from the last `)`.
    #[test]
    fn a_stat_line_gives_its_name_and_cpu_seconds() {
        let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .unwrap()
            .unwrap() as f64;
        let line = "42 (labd (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1 2 3";
        let (comm, cpu) = stat_cpu(line).unwrap();
        assert_eq!(comm, "labd (x) y");
        assert_eq!(cpu, 300.0 / tick);
        assert_eq!(stat_cpu("42 labd S 1"), None);
    }

    #[test]
    fn statsd_lines_name_series_by_their_labels() {
        let text = "# HELP x\nlabd_jobs_finished_total{health=\"Complete\"} 3\nlabd_queue_depth 0\nlabd_phase_duration_seconds_bucket{device_type=\"sim-uboot\",phase=\"Kernel\",le=\"0.5\"} 1\n";
        assert_eq!(
            statsd_lines("lab1", text),
            [
                "lab1.jobs_finished_total.Complete:3|g",
                "lab1.queue_depth:0|g",
                "lab1.phase_duration_seconds_bucket.sim-uboot.Kernel.0_5:1|g"
            ]
        );
    }

    /// The value of the sample `series` (name and labels) in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    }

    /// A link's series exist, at zero, as soon as the worker has its handle;
    /// each call counts on its own series, labelled by server and worker.
    #[test]
    fn a_lava_link_counts_pings_lines_and_jobs_by_server() {
        let m = Metrics::default();
        let link = m.lava_link("http://lava.example/", "lab-1");
        let l = r#"server="http://lava.example/",worker="lab-1""#;
        let text = m.render(Scrape::default());
        for series in [
            format!("labd_lava_pings_total{{{l},outcome=\"ok\"}}"),
            format!("labd_lava_pings_total{{{l},outcome=\"failed\"}}"),
            format!("labd_lava_pings_total{{{l},outcome=\"version_mismatch\"}}"),
            format!("labd_lava_connected{{{l}}}"),
            format!("labd_lava_log_lines_queued{{{l}}}"),
            format!("labd_lava_jobs_started_total{{{l}}}"),
        ] {
            assert_eq!(sample(&text, &series), Some(0.0), "{series} in\n{text}");
        }

        link.ping_failed();
        link.ping_failed();
        let text = m.render(Scrape::default());
        let failed = format!("labd_lava_pings_total{{{l},outcome=\"failed\"}}");
        assert_eq!(sample(&text, &failed), Some(2.0), "{text}");
        assert_eq!(
            sample(&text, &format!("labd_lava_connected{{{l}}}")),
            Some(0.0)
        );

        // A clone counts on the same series.
        let other = link.clone();
        other.ping_ok(Duration::from_millis(3));
        other.event();
        let text = m.render(Scrape::default());
        assert_eq!(
            sample(&text, &format!("labd_lava_connected{{{l}}}")),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, &format!("labd_lava_ping_seconds_count{{{l}}}")),
            Some(1.0)
        );
        // 3 ms is above the 2 ms bucket and within the 4 ms one.
        assert_eq!(
            sample(
                &text,
                &format!("labd_lava_ping_seconds_bucket{{{l},le=\"0.002\"}}")
            ),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                &format!("labd_lava_ping_seconds_bucket{{{l},le=\"0.004\"}}")
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, &format!("labd_lava_events_total{{{l}}}")),
            Some(1.0)
        );
        link.version_mismatch();
        let text = m.render(Scrape::default());
        assert_eq!(
            sample(&text, &format!("labd_lava_connected{{{l}}}")),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                &format!("labd_lava_pings_total{{{l},outcome=\"version_mismatch\"}}")
            ),
            Some(1.0)
        );

        // Queued lines are summed over jobs; a finished job's leave the sum.
        link.job_started();
        link.job_started();
        link.lines_queued(7, 120);
        link.lines_queued(8, 30);
        link.lines_queued(7, 20);
        link.lines_sent(100);
        link.batch_failed();
        let text = m.render(Scrape::default());
        let queued = format!("labd_lava_log_lines_queued{{{l}}}");
        assert_eq!(sample(&text, &queued), Some(50.0), "{text}");
        assert_eq!(
            sample(&text, &format!("labd_lava_log_lines_sent_total{{{l}}}")),
            Some(100.0)
        );
        assert_eq!(
            sample(&text, &format!("labd_lava_log_batches_failed_total{{{l}}}")),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, &format!("labd_lava_jobs_started_total{{{l}}}")),
            Some(2.0)
        );
        link.job_finished(7, "pass", "");
        link.job_finished(8, "fail", "Infrastructure");
        let text = m.render(Scrape::default());
        assert_eq!(sample(&text, &queued), Some(0.0), "{text}");
        for (result, error_type) in [("pass", ""), ("fail", "Infrastructure")] {
            let series = format!(
                "labd_lava_jobs_finished_total{{{l},result=\"{result}\",error_type=\"{error_type}\"}}"
            );
            assert_eq!(sample(&text, &series), Some(1.0), "{series} in\n{text}");
        }

        // Another server's link has series of its own.
        m.lava_link("http://other.example/", "lab-1")
            .ping_ok(Duration::ZERO);
        let text = m.render(Scrape::default());
        assert_eq!(
            sample(
                &text,
                r#"labd_lava_connected{server="http://other.example/",worker="lab-1"}"#
            ),
            Some(1.0)
        );
        assert_eq!(sample(&text, &failed), Some(2.0));
    }

    #[test]
    fn renders_counters_histograms_and_scraped_gauges() {
        let m = Metrics::default();
        m.job_submitted();
        m.job_finished("Complete");
        m.phase("sim-uboot", "Kernel", Duration::from_millis(40));
        m.console_bytes("sim-01").inc_by(1000);
        let mut boards = std::collections::BTreeMap::new();
        boards.insert(("Idle".to_owned(), "Good".to_owned()), 2);
        let text = m.render(Scrape {
            jobs_by_state: vec![("Submitted", 3)],
            queue_depth: 3,
            boards,
            store_disk_bytes: 4096,
        });
        for line in [
            "labd_jobs_submitted_total 1",
            "labd_jobs_finished_total{health=\"Complete\"} 1",
            "labd_jobs{state=\"Submitted\"} 3",
            "labd_boards{state=\"Idle\",health=\"Good\"} 2",
            "labd_phase_duration_seconds_count{device_type=\"sim-uboot\",phase=\"Kernel\"} 1",
            "labd_console_bytes_total{board=\"sim-01\"} 1000",
            "labd_store_disk_bytes 4096",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(text.contains("labd_process_resident_memory_bytes "));
    }
}
