//! `labd-bench boards`: many boards whose consoles all stream at line rate.
//!
//! A real labd drives N simulated boards of `labd-sim --baud B` (each
//! board's output paced like a serial line). Every board runs a job whose
//! test prints lines for `--seconds`. Once every board is in its test, labd's
//! CPU and memory are read from `/proc` over `--window` seconds, and the
//! console bytes it took in over that window from its metrics. At the end
//! labd is stopped and its store is read back: every streamed line of every
//! job must be in the job's stored log, in order; and the time from each
//! job's last signal (its ENDRUN), from the runner's end (the board's
//! `PoweringOff` phase), and from the relay's answer (the `power-off` event)
//! to its Finished state are reported.

use crate::lab::{self, Labd, Sim};
use anyhow::{bail, Context, Result};
use labd::client::Client;
use labd::protocol::RequestBody as R;
use std::time::{Duration, Instant};

/// One streamed line: 8 digits, then this (and `\r\n` from the shell).
const LINE_TEXT: &str = " labd line-rate stream, the quick brown fox jumps over the lazy dog";

/// `labd-bench boards`: N boards streaming at line rate.
#[derive(clap::Args)]
pub struct Opts {
    /// Simulated boards, each running one streaming job.
    #[arg(long, default_value_t = 10)]
    boards: usize,
    /// How long each job's test streams.
    #[arg(long, default_value_t = 40)]
    seconds: u64,
    /// How long labd is measured once every board streams.
    #[arg(long, default_value_t = 10)]
    window: u64,
    /// The boards' serial line rate.
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
}

pub fn main(o: Opts) -> Result<()> {
    if o.window >= o.seconds {
        bail!("--window must be shorter than --seconds (the stream must outlast the measurement)");
    }
    let out = run(&o)?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn job(artifacts: &std::path::Path, lines: u64, minutes: u64) -> String {
    format!(
        r#"device_type: sim-uboot
job_name: line-rate stream
timeouts:
  job:
    minutes: {minutes}
actions:
- deploy:
    to: tftp
    kernel:
      url: file://{a}/Image
      type: image
    ramdisk:
      url: file://{a}/initramfs.cpio.gz
- boot:
    method: u-boot
    commands: ramdisk
    auto_login:
      login_prompt: "login:"
      username: root
    prompts:
    - "root@sim:[^#]*# "
    timeout:
      minutes: {minutes}
- test:
    timeout:
      minutes: {minutes}
    definitions:
    - from: inline
      name: stream
      path: inline/stream.yaml
      repository:
        metadata:
          format: Lava-Test Test Definition 1.0
          name: stream
        run:
          steps:
          - "seq -f '%08.0f{LINE_TEXT}' 1 {lines}"
          - lava-test-case streamed --result pass
"#,
        a = artifacts.display()
    )
}

fn run(o: &Opts) -> Result<serde_json::Value> {
    let dir = tempfile::Builder::new().prefix("labd-bench-").tempdir()?;
    let artifacts = dir.path().join("artifacts");
    lab::write_artifacts(&artifacts)?;
    let names: Vec<String> = (1..=o.boards).map(|i| format!("b{i:04}")).collect();
    let sim = Sim::start(dir.path(), &names, Some(o.baud))?;
    let socket = dir.path().join("labd.sock");
    let mut cfg = format!(
        "socket = {socket:?}\nstate_dir = {:?}\nsim_control = {:?}\n[tftp]\nbind = \"127.0.0.1:0\"\nserver_ip = \"127.0.0.1\"\n[deploy]\nfile_roots = [\"/\"]\n[limits]\nmax_connections = 1024\n",
        dir.path().join("state"),
        sim.control,
    );
    for n in &names {
        cfg.push_str(&format!(
            "[[boards]]\nname = \"{n}\"\ndevice_type = \"sim-uboot\"\nconsole = {{ type = \"sim\" }}\npower = {{ type = \"sim\" }}\n"
        ));
    }
    let labd = Labd::start(dir.path(), &cfg)?;
    let pid = labd.pid();
    let started_cpu = lab::cpu_seconds(pid)?;
    let bytes_per_sec = f64::from(o.baud / 10);
    // Each line is 8 digits, the text, and CR LF.
    let line_len = (8 + LINE_TEXT.len() + 2) as f64;
    let lines = (bytes_per_sec * o.seconds as f64 / line_len).ceil() as u64;
    let minutes = 10 + o.seconds / 60 * 2 + o.boards as u64 / 100;
    let definition = job(&artifacts, lines, minutes);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (ids, window) = rt.block_on(async {
        let mut c = Client::connect(&socket).await?;
        let t_submit = Instant::now();
        let mut ids = Vec::new();
        for _ in 0..o.boards {
            ids.push(c.submit(&definition, "stream.yaml").await?);
        }
        // Every board in its test: the streams all run.
        let deadline = Instant::now() + Duration::from_secs(60 * minutes);
        loop {
            let b = c.call(R::Boards).await?;
            let testing = b["boards"]
                .as_array()
                .map(|a| a.iter().filter(|b| b["phase"] == "Testing").count())
                .unwrap_or(0);
            if testing == o.boards {
                break;
            }
            // Every board got its job at its submit; one without a job has
            // ended it, so the streams will never all run at once (a
            // machine too busy for the setup to fit in --seconds).
            let ended = b["boards"]
                .as_array()
                .map(|a| a.iter().filter(|b| b["job"].is_null()).count())
                .unwrap_or(0);
            if ended > 0 {
                // Say how they ended: a failed job is not a short --seconds.
                let mut how = Vec::new();
                for &id in &ids {
                    let j = c.call(R::Job { job: id }).await?;
                    if j["state"] == "Finished" {
                        let mut log = Vec::new();
                        c.logs(id, false, |d| log.extend_from_slice(d)).await?;
                        let tail = String::from_utf8_lossy(&log[log.len().saturating_sub(1500)..])
                            .into_owned();
                        how.push(format!(
                            "job {id}: {} {} {}; its log ends with:\n{tail}",
                            j["health"], j["error_class"], j["error"]
                        ));
                    }
                }
                bail!(
                    "{ended} boards ended their job before all {} reached their test (only {testing} in it): make --seconds longer; {}",
                    o.boards,
                    how.join("; ")
                );
            }
            if Instant::now() > deadline {
                bail!("only {testing} of {} boards reached their test", o.boards);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let all_streaming = t_submit.elapsed().as_secs_f64();
        // On stderr, so a profiler can be started on labd for the window.
        eprintln!(
            "labd-bench boards: all {} boards streaming after {all_streaming:.0} s; measuring {} s (labd pid {pid})",
            o.boards, o.window
        );
        let bytes0 = metric(&mut c).await?;
        let cpu0 = lab::cpu_seconds(pid)?;
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(o.window)).await;
        let cpu1 = lab::cpu_seconds(pid)?;
        let bytes1 = metric(&mut c).await?;
        let secs = t0.elapsed().as_secs_f64();
        let (rss, _) = lab::rss_bytes(pid)?;
        // Still all in their test: the window saw only streaming.
        let b = c.call(R::Boards).await?;
        let still = b["boards"]
            .as_array()
            .map(|a| a.iter().filter(|b| b["phase"] == "Testing").count())
            .unwrap_or(0);
        if still != o.boards {
            bail!(
                "{} boards left their test during the window: make --seconds longer",
                o.boards - still
            );
        }
        for &id in &ids {
            loop {
                let j = c.call(R::Job { job: id }).await?;
                if j["state"] == "Finished" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        let window = serde_json::json!({
            "seconds_to_all_streaming": all_streaming,
            "window_seconds": secs,
            "labd_cores": (cpu1 - cpu0) / secs,
            "labd_rss_mib": rss as f64 / 1048576.0,
            "labd_rss_kib_per_board": rss as f64 / 1024.0 / o.boards as f64,
            "console_bytes_per_second": (bytes1 - bytes0) / secs,
            "console_bytes_per_second_per_board": (bytes1 - bytes0) / secs / o.boards as f64,
            "line_rate_bytes_per_second_per_board": bytes_per_sec,
        });
        anyhow::Ok((ids, window))
    })?;
    let total_cpu = lab::cpu_seconds(pid)? - started_cpu;
    let (_, peak) = lab::rss_bytes(pid)?;
    labd.stop()?;
    drop(sim);
    let check = rt.block_on(check_store(&dir.path().join("state"), &ids, lines))?;
    let mut out = serde_json::json!({
        "boards": o.boards,
        "baud": o.baud,
        "stream_seconds": o.seconds,
        "lines_per_job": lines,
        "labd_cpu_seconds_whole_run": total_cpu,
        "labd_peak_rss_mib": peak as f64 / 1048576.0,
    });
    out["window"] = window;
    out["store"] = check;
    Ok(out)
}

async fn metric(c: &mut Client) -> Result<f64> {
    let m = c.call(R::Metrics).await?;
    let text = m["text"].as_str().context("metrics without text")?;
    Ok(lab::metric_sum(text, "labd_console_bytes_total"))
}

/// Reads the stopped labd's store: every job Complete, every streamed line
/// stored in order, and each job's ENDRUN → Finished time.
async fn check_store(
    state: &std::path::Path,
    ids: &[u64],
    lines: u64,
) -> Result<serde_json::Value> {
    let store = labd::store::Store::open(&state.join("store"), 64 << 20, Default::default())?;
    let mut finish_ms = Vec::new();
    let mut end_ms = Vec::new();
    let mut off_ms = Vec::new();
    let mut stored = 0u64;
    for &id in ids {
        let job = store.job(id).await?;
        if job.health != labd::model::JobHealth::Complete {
            bail!("job {id} ended {:?}: {:?}", job.health, job.error);
        }
        let (log, _) = store.log(id, 0, usize::MAX).await?;
        stored += log.len() as u64;
        let mut next = 1u64;
        for line in log.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.len() == 8 + LINE_TEXT.len() && line.ends_with(LINE_TEXT.as_bytes()) {
                let n: u64 = std::str::from_utf8(&line[..8])?.parse()?;
                if n != next {
                    bail!("job {id}: stored line {n} where line {next} was due");
                }
                next += 1;
            }
        }
        if next != lines + 1 {
            bail!("job {id}: {} of {lines} streamed lines stored", next - 1);
        }
        let events = store.events(id).await?;
        let endrun = events
            .iter()
            .rev()
            .find(|e| e.kind == "endrun")
            .with_context(|| format!("job {id} has no endrun event"))?;
        let end = job.end_time.context("a finished job without end_time")?;
        finish_ms.push(end.saturating_sub(endrun.time) as f64);
        // The runner's end: the board starts finishing the job.
        let off = events
            .iter()
            .rev()
            .find(|e| e.kind == "phase" && e.message == "PoweringOff")
            .with_context(|| format!("job {id} has no PoweringOff phase"))?;
        end_ms.push(end.saturating_sub(off.time) as f64);
        // The relay's answer: what is left is labd's own.
        let powered_off = events
            .iter()
            .rev()
            .find(|e| e.kind == "power-off")
            .with_context(|| format!("job {id} has no power-off event"))?;
        off_ms.push(end.saturating_sub(powered_off.time) as f64);
    }
    Ok(serde_json::json!({
        "jobs_complete": ids.len(),
        "every_line_stored": true,
        "log_bytes_stored": stored,
        "endrun_to_finished_ms_p50": lab::percentile(&mut finish_ms.clone(), 0.5),
        "endrun_to_finished_ms_max": finish_ms.iter().copied().fold(0.0, f64::max),
        "runner_end_to_finished_ms_p50": lab::percentile(&mut end_ms.clone(), 0.5),
        "runner_end_to_finished_ms_max": end_ms.iter().copied().fold(0.0, f64::max),
        "powered_off_to_finished_ms_p50": lab::percentile(&mut off_ms.clone(), 0.5),
        "powered_off_to_finished_ms_p90": lab::percentile(&mut off_ms.clone(), 0.9),
        "powered_off_to_finished_ms_max": off_ms.iter().copied().fold(0.0, f64::max),
    }))
}
