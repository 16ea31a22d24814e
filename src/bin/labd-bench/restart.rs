//! `labd-bench restart`: how long labd takes from start to serving requests
//! with a large store.
//!
//! The store is filled through labd's own store module (N finished jobs,
//! each with its `state` event and a share of `--log-mb` of console log),
//! then labd is started on it `--runs` times. Each start is timed from the
//! spawn to READY=1 (systemd's notion of started) and to the first answered
//! `jobs` request. With `--cold` (root only) the page cache is dropped
//! before each start, so sled reads its files from disk.

use crate::lab::{percentile, Labd};
use anyhow::{bail, Context, Result};
use labd::model::{JobHealth, JobRecord, JobState};
use std::time::Instant;

/// `labd-bench restart`: start-up time on a large store.
#[derive(clap::Args)]
pub struct Opts {
    /// Finished jobs in the store.
    #[arg(long, default_value_t = 100_000)]
    jobs: u64,
    /// MiB of console logs, spread over the jobs.
    #[arg(long, default_value_t = 1024)]
    log_mb: u64,
    /// Starts to time.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Drop the page cache before each start (root only).
    #[arg(long)]
    cold: bool,
}

pub fn main(o: Opts) -> Result<()> {
    let Opts {
        jobs,
        log_mb,
        runs,
        cold,
    } = o;
    if cold && !nix::unistd::geteuid().is_root() {
        bail!("--cold drops the page cache, which needs root");
    }
    let dir = tempfile::Builder::new().prefix("labd-bench-").tempdir()?;
    let state = dir.path().join("state");
    let t = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(fill(&state, jobs, log_mb << 20))?;
    let fill_seconds = t.elapsed().as_secs_f64();
    let store_bytes = dir_bytes(&state)?;

    let socket = dir.path().join("labd.sock");
    let cfg = format!(
        "socket = {socket:?}\nstate_dir = {state:?}\n[tftp]\nbind = \"127.0.0.1:0\"\n[[boards]]\nname = \"bench-01\"\ndevice_type = \"sim-uboot\"\nconsole = {{ type = \"command\", command = [\"cat\"] }}\npower = {{ type = \"command\", on = [\"true\"], off = [\"true\"] }}\n",
    );
    let (mut ready_ms, mut serving_ms) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        if cold {
            nix::unistd::sync();
            std::fs::write("/proc/sys/vm/drop_caches", "3\n").context("dropping the page cache")?;
        }
        let t = Instant::now();
        let labd = Labd::start(dir.path(), &cfg)?;
        ready_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let listed = rt.block_on(async {
            let mut c = labd::client::Client::connect(&socket).await?;
            let v = c.call(crate::lab::newest_jobs()).await?;
            anyhow::Ok(v["jobs"].as_array().map_or(0, Vec::len))
        })?;
        serving_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if listed != 50 {
            bail!("the restarted labd listed {listed} jobs, not 50");
        }
        labd.stop()?;
    }
    let out = serde_json::json!({
        "jobs": jobs,
        "log_mb": log_mb,
        "store_mib": store_bytes as f64 / 1048576.0,
        "fill_seconds": fill_seconds,
        "page_cache": if cold { "cold (dropped before each start)" } else { "warm" },
        "runs": runs,
        "start_to_ready_ms": ready_ms,
        "start_to_first_answer_ms": serving_ms.clone(),
        "start_to_first_answer_ms_median": percentile(&mut serving_ms, 0.5),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// Writes `jobs` finished jobs with `log_bytes` of console logs between
/// them, through labd's store, and waits until all of it is durable.
pub(crate) async fn fill(state: &std::path::Path, jobs: u64, log_bytes: u64) -> Result<()> {
    let store = labd::store::Store::open(&state.join("store"), 64 << 20, Default::default())?;
    let per_job = (log_bytes / jobs.max(1)) as usize;
    // A console-like line, repeated to each job's share.
    let line =
        b"[   12.345678] usb 1-1: new high-speed USB device number 2 using ehci-platform\r\n";
    let log: Vec<u8> = line.iter().copied().cycle().take(per_job).collect();
    let mut pending = Vec::new();
    let mut queued = 0usize;
    for i in 0..jobs {
        let mut j = JobRecord::submitted(
            format!("restart bench {i}"),
            "sim-uboot".into(),
            50,
            Vec::new(),
            "bench".into(),
            "device_type: sim-uboot\njob_name: restart bench\n".into(),
        );
        j.state = JobState::Finished;
        j.health = JobHealth::Complete;
        j.board = Some("bench-01".into());
        j.start_time = Some(j.submit_time);
        j.end_time = Some(j.submit_time + 1);
        pending.push(store.insert_job(j));
        // Ids are given in order from 1: job i+1 is the one just queued.
        if per_job > 0 {
            store.queue_log(i + 1, 0, &log);
            queued += per_job;
        }
        // Keep the store's queues short: wait for the batch so far.
        if pending.len() >= 2000 || queued >= 64 << 20 {
            for p in pending.drain(..) {
                p.await?;
            }
            store.sync().await?;
            queued = 0;
        }
    }
    for p in pending {
        p.await?;
    }
    store.sync().await?;
    store.close();
    Ok(())
}

fn dir_bytes(dir: &std::path::Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() {
            dir_bytes(&e.path())?
        } else {
            m.len()
        };
    }
    Ok(total)
}
