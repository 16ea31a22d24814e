//! `labd-bench socket`: the socket API under load (durable submits per
//! second, query latency) against a real labd.

use crate::lab::{percentile, Labd};
use anyhow::Result;

const BENCH_JOB: &str = "device_type: sim-uboot\njob_name: bench\ntimeouts:\n  job:\n    minutes: 5\nactions:\n- deploy:\n    to: tftp\n    kernel:\n      url: file:///nonexistent/Image\n      type: image\n- boot:\n    method: u-boot\n    commands: ramdisk\n    prompts: ['# ']\n";

/// `labd-bench socket`: the socket API under load.
#[derive(clap::Args)]
pub struct Opts {
    /// Durable submits that fill the store first.
    #[arg(long, default_value_t = 10_000)]
    jobs: usize,
    /// Clients at once: half submit, half query.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// How long the mixed load runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Queries per second from each querying client, on a fixed schedule
    /// (an open loop: the latency of a late answer counts from when its
    /// query was due, not from when it could be sent). 0: each client asks
    /// again as soon as it has its answer (a closed loop, which measures the
    /// most queries labd can answer; its latency is then the number of
    /// clients over that throughput, by construction).
    #[arg(long, default_value_t = 0.0)]
    query_rate: f64,
}

pub fn main(o: Opts) -> Result<()> {
    let Opts {
        jobs,
        clients,
        seconds,
        query_rate,
    } = o;
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("labd.sock");
    let cfg = format!(
        "socket = {:?}\nstate_dir = {:?}\n[tftp]\nbind = \"127.0.0.1:0\"\n[deploy]\nfile_roots = [\"/\"]\n[limits]\nmax_connections = 1024\n[[boards]]\nname = \"bench-01\"\ndevice_type = \"sim-uboot\"\nconsole = {{ type = \"command\", command = [\"cat\"] }}\npower = {{ type = \"command\", on = [\"true\"], off = [\"true\"] }}\n",
        socket,
        dir.path().join("state")
    );
    let labd = Labd::start(dir.path(), &cfg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        use labd::client::Client;
        use labd::protocol::RequestBody as R;
        let mut c = Client::connect(&socket).await?;
        c.call(R::BoardHealth {
            board: "bench-01".into(),
            health: "maintenance".into(),
            reason: Some("benchmark: jobs stay queued".into()),
        })
        .await?;
        // Fill: durable submits from `clients` connections at once.
        let t0 = std::time::Instant::now();
        let per = jobs.div_ceil(clients);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let socket = socket.clone();
            set.spawn(async move {
                let mut c = Client::connect(&socket).await?;
                for _ in 0..per {
                    c.submit(BENCH_JOB, "bench.yaml").await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        let fill = t0.elapsed().as_secs_f64();
        let filled = per * clients;
        // Load: half the clients submit, half query, for `seconds`.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        let mut set = tokio::task::JoinSet::new();
        for i in 0..clients {
            let socket = socket.clone();
            set.spawn(async move {
                let mut c = Client::connect(&socket).await?;
                let mut lat: Vec<(&'static str, f64)> = Vec::new();
                let mut n = 0u64;
                let period = (query_rate > 0.0 && i % 2 == 1)
                    .then(|| std::time::Duration::from_secs_f64(1.0 / query_rate));
                // Querying clients start spread over one period.
                let mut due = std::time::Instant::now()
                    + period.map_or(std::time::Duration::ZERO, |p| {
                        p.mul_f64((i as f64 / clients as f64).fract())
                    });
                while std::time::Instant::now() < until {
                    n += 1;
                    if let Some(p) = period {
                        tokio::time::sleep_until(due.into()).await;
                        due += p;
                    }
                    // An open loop's latency counts from when the query was due.
                    let t = match period {
                        Some(p) => due - p,
                        None => std::time::Instant::now(),
                    };
                    let method = if i % 2 == 0 {
                        c.submit(BENCH_JOB, "bench.yaml").await?;
                        "submit"
                    } else {
                        match n % 3 {
                            0 => {
                                c.call(crate::lab::newest_jobs()).await?;
                                "jobs"
                            }
                            1 => {
                                c.call(R::Job {
                                    job: 1 + (n * 7919) % filled as u64,
                                })
                                .await?;
                                "job"
                            }
                            _ => {
                                c.call(R::Boards).await?;
                                "boards"
                            }
                        }
                    };
                    lat.push((method, t.elapsed().as_secs_f64() * 1000.0));
                }
                anyhow::Ok(lat)
            });
        }
        let mut all: Vec<(&'static str, f64)> = Vec::new();
        while let Some(r) = set.join_next().await {
            all.extend(r??);
        }
        let mut out = serde_json::json!({
            "filled_jobs": filled,
            "fill_seconds": fill,
            "fill_submits_per_second": filled as f64 / fill,
            "clients": clients,
            "load_seconds": seconds,
            "query_rate_per_client": query_rate,
        });
        for m in ["submit", "jobs", "job", "boards"] {
            let mut v: Vec<f64> = all
                .iter()
                .filter(|(k, _)| *k == m)
                .map(|(_, ms)| *ms)
                .collect();
            let n = v.len();
            out[m] = serde_json::json!({
                "count": n,
                "per_second": n as f64 / seconds as f64,
                "p50_ms": percentile(&mut v, 0.5),
                "p99_ms": percentile(&mut v, 0.99),
            });
        }
        anyhow::Ok(out)
    });
    labd.stop()?;
    println!("{}", serde_json::to_string_pretty(&result?)?);
    Ok(())
}
