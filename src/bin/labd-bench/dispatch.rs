//! `labd-bench dispatch`: from a submit acknowledged to the board's power-on
//! command, in a lab of many boards with many finished jobs in its store.
//!
//! Every board's relay is a pdudaemon port whose listener is this program
//! (a minimal HTTP server that answers 200 and notes when each command
//! arrived), and every console a TCP connection to this program that stays
//! quiet. Each sample submits a job (a `minimal` boot) and waits for the
//! power-on request it causes; the job is then canceled, and the next sample
//! goes to another idle board.
//!
//! Then the end of a job, in the same lab: one more board (tagged `end`,
//! with a console of its own) runs jobs to their end. Each waits for the
//! shell prompt, which this program types once the board is powered on;
//! the boot is the job's last action, then labd powers the board off and
//! records the job Finished. Measured: from the power-off request at the
//! relay, and from the prompt typed, to the Finished state visible on the
//! socket (a `logs --follow` on another connection returns).

use crate::lab::{percentile, Labd};
use anyhow::{bail, Result};
use std::io::{BufRead, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `labd-bench dispatch`: submit → power-on latency.
#[derive(clap::Args)]
pub struct Opts {
    /// Boards in the lab, all idle.
    #[arg(long, default_value_t = 1000)]
    boards: usize,
    /// Finished jobs in the store before labd starts.
    #[arg(long, default_value_t = 10_000)]
    finished: u64,
    /// Jobs submitted, one after another.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Jobs run to their end on the `end` board, one after another.
    #[arg(long, default_value_t = 50)]
    end_samples: usize,
}

const END_JOB: &str = "device_type: sim-uboot\njob_name: end\ntags: [end]\ntimeouts:\n  job:\n    minutes: 5\nactions:\n- boot:\n    method: minimal\n    prompts: ['# ']\n    timeout:\n      minutes: 2\n";

const JOB: &str = "device_type: sim-uboot\njob_name: dispatch\ntimeouts:\n  job:\n    minutes: 5\nactions:\n- boot:\n    method: minimal\n    prompts: ['# ']\n    timeout:\n      minutes: 2\n";

/// Answers every HTTP request with 200, sending its request line and
/// arrival time to `tx`.
fn relay_server(listener: std::net::TcpListener, tx: mpsc::Sender<(Instant, String)>) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let at = Instant::now();
        let mut line = String::new();
        let mut reader = std::io::BufReader::new(&conn);
        if reader.read_line(&mut line).is_err() {
            continue;
        }
        // The rest of the request head, up to its empty line.
        let mut header = String::new();
        while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
            header.clear();
        }
        let _ =
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        if tx.send((at, line.trim().to_owned())).is_err() {
            return;
        }
    }
}

pub fn main(o: Opts) -> Result<()> {
    let dir = tempfile::Builder::new().prefix("labd-bench-").tempdir()?;
    let state = dir.path().join("state");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(crate::restart::fill(&state, o.finished, 0))?;

    let relay = std::net::TcpListener::bind("127.0.0.1:0")?;
    let relay_port = relay.local_addr()?.port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || relay_server(relay, tx));
    // Consoles: connections that are accepted and kept, and stay quiet.
    let consoles = std::net::TcpListener::bind("127.0.0.1:0")?;
    let console_port = consoles.local_addr()?.port();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        for c in consoles.incoming().flatten() {
            kept.push(c);
        }
    });

    // The `end` board's console: every connection labd makes, kept to type
    // into (it connects again after a console it lost).
    let end_console = std::net::TcpListener::bind("127.0.0.1:0")?;
    let end_port = end_console.local_addr()?.port();
    let end_conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let accepted = end_conns.clone();
    std::thread::spawn(move || {
        for c in end_console.incoming().flatten() {
            if let Ok(mut a) = accepted.lock() {
                a.push(c);
            }
        }
    });

    let socket = dir.path().join("labd.sock");
    let mut cfg =
        format!("socket = {socket:?}\nstate_dir = {state:?}\n[tftp]\nbind = \"127.0.0.1:0\"\n");
    for i in 1..=o.boards {
        cfg.push_str(&format!(
            "[[boards]]\nname = \"b{i:04}\"\ndevice_type = \"sim-uboot\"\nconsole = {{ type = \"tcp\", host = \"127.0.0.1\", port = {console_port} }}\npower = {{ type = \"pdudaemon\", url = \"http://127.0.0.1:{relay_port}\", hostname = \"pdu-{i}\", port = 1 }}\n"
        ));
    }
    cfg.push_str(&format!(
        "[[boards]]\nname = \"end\"\ndevice_type = \"sim-uboot\"\ntags = [\"end\"]\nconsole = {{ type = \"tcp\", host = \"127.0.0.1\", port = {end_port} }}\npower = {{ type = \"pdudaemon\", url = \"http://127.0.0.1:{relay_port}\", hostname = \"pdu-end\", port = 1 }}\n"
    ));
    let labd = Labd::start(dir.path(), &cfg)?;
    let mut ms = Vec::new();
    let mut off_ms = Vec::new();
    let mut prompt_ms = Vec::new();
    rt.block_on(async {
        let mut c = labd::client::Client::connect(&socket).await?;
        for _ in 0..o.samples {
            // Anything that came before this submit (power-offs of canceled
            // jobs) is not its answer.
            while rx.try_recv().is_ok() {}
            let id = c.submit(JOB, "dispatch.yaml").await?;
            let acked = Instant::now();
            let deadline = acked + Duration::from_secs(30);
            let on = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let Ok((at, line)) = rx.recv_timeout(left) else {
                    let j = c.call(labd::protocol::RequestBody::Job { job: id }).await?;
                    bail!("job {id}: no power-on within 30 s: {}", j["events"]);
                };
                if line.contains("/power/control/on?") || line.contains("/power/control/reboot?") {
                    break at;
                }
            };
            ms.push(on.saturating_duration_since(acked).as_secs_f64() * 1000.0);
            c.call(labd::protocol::RequestBody::Cancel { job: id })
                .await?;
        }
        let mut follower = labd::client::Client::connect(&socket).await?;
        for _ in 0..o.end_samples {
            let id = c.submit(END_JOB, "end.yaml").await?;
            // The relay notes each request's arrival, so its time is right
            // whenever it is read. Requests for other boards, and the `end`
            // board's own power-off after a canceled dispatch sample (which
            // comes before this job can be powered on), are passed over.
            let wait = |what: &[&str]| -> Result<Instant> {
                loop {
                    let Ok((at, line)) = rx.recv_timeout(Duration::from_secs(30)) else {
                        bail!("job {id}: no {what:?} within 30 s");
                    };
                    if line.contains("hostname=pdu-end") && what.iter().any(|w| line.contains(w)) {
                        return Ok(at);
                    }
                }
            };
            wait(&["/power/control/on?", "/power/control/reboot?"])?;
            let typed = Instant::now();
            for mut conn in end_conns
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .iter()
            {
                let _ =
                    conn.write_all(b"\r\nLinux version 6.1.0\r\nend login: root\r\nroot@end:~# ");
            }
            // Finished is visible on the socket when a follow of the job's
            // log ends: labd ends it once the Finished state is durable.
            follower.logs(id, true, |_| {}).await?;
            let finished = Instant::now();
            let off = wait(&["/power/control/off?"])?;
            off_ms.push(finished.saturating_duration_since(off).as_secs_f64() * 1000.0);
            prompt_ms.push(finished.saturating_duration_since(typed).as_secs_f64() * 1000.0);
            let j = c.call(labd::protocol::RequestBody::Job { job: id }).await?;
            if j["health"] != "Complete" {
                bail!(
                    "job {id} ended {}: {}",
                    j["job"]["health"],
                    j["job"]["error"]
                );
            }
        }
        anyhow::Ok(())
    })?;
    labd.stop()?;
    if ms.len() != o.samples || off_ms.len() != o.end_samples {
        bail!("{} of {} samples", ms.len(), o.samples);
    }
    let max = ms.iter().copied().fold(0.0, f64::max);
    let spread = |v: &mut Vec<f64>| {
        let max = v.iter().copied().fold(0.0, f64::max);
        serde_json::json!({
            "p50": percentile(v, 0.5),
            "p99": percentile(v, 0.99),
            "max": max,
        })
    };
    let out = serde_json::json!({
        "boards": o.boards,
        "finished_jobs_in_store": o.finished,
        "samples": o.samples,
        "submit_ack_to_power_on_ms": {
            "p50": percentile(&mut ms, 0.5),
            "p99": percentile(&mut ms, 0.99),
            "max": max,
        },
        "end_samples": o.end_samples,
        "power_off_at_relay_to_finished_on_socket_ms": spread(&mut off_ms),
        "prompt_typed_to_finished_on_socket_ms": spread(&mut prompt_ms),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
