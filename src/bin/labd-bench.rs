//! `labd-bench`: labd's console pipeline as a stand-alone program, for the
//! peer harness in `../shared/bench` (`console_bench.py`).
//!
//! `labd-bench console` reads a console stream from stdin (a pipe or the
//! slave of a pty) until EOF (or EIO, a pty whose master closed) and runs
//! what a board's runner runs on it: the LAVA signal parser and the matcher
//! waiting for the login prompt and the test runner's end. It prints the
//! counts the harness checks as one JSON line:
//! `{"signals": N, "testcases": N, "logins": N, "exit": N}`.
//! `--fds 3,4,5` watches several consoles in one process (the harness's
//! `--one-process` mode) and prints `{"consoles": [...]}`.
//! `--store DIR` also appends every byte to a sled store through labd's
//! store writer, as the daemon keeps each job's console log.
//!
//! `labd-bench socket [--jobs N] [--clients C] [--seconds S]` starts a real
//! labd on a temp dir with one board held in maintenance (so jobs stay
//! queued), fills its store with N durable submits, then runs C clients for
//! S seconds, half submitting and half querying (`jobs`, `job`, `boards`),
//! and prints submits per second and the latency percentiles per method.

use anyhow::{bail, Context, Result};
use labd::matcher::Matcher;
use labd::signals::{Signal, SignalParser};
use std::io::Read;
use std::os::fd::{FromRawFd, RawFd};

#[derive(Default, Debug, Clone, Copy)]
struct Counts {
    signals: u64,
    testcases: u64,
    logins: u64,
    exit: u64,
    bytes: u64,
}

/// One console's pipeline: the signal parser and the runner's matcher.
struct Pipeline {
    signals: SignalParser,
    matcher: Matcher,
    counts: Counts,
}

impl Pipeline {
    fn new() -> Result<Self> {
        Ok(Pipeline {
            signals: SignalParser::new(),
            matcher: Matcher::new(&["login:", "<LAVA_TEST_RUNNER EXIT>"])?,
            counts: Counts::default(),
        })
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.counts.bytes += bytes.len() as u64;
        for s in self.signals.feed(bytes) {
            self.counts.signals += 1;
            if matches!(s, Signal::TestCase { .. })
                || matches!(&s, Signal::Other { kind, .. } if kind == "TESTCASE")
            {
                self.counts.testcases += 1;
            }
        }
        // The runner's waits: each match ends one wait, and what follows the
        // match is searched by the next one.
        let mut pending = self.matcher.feed(bytes);
        while let Some(m) = pending {
            match m.index {
                0 => self.counts.logins += 1,
                _ => self.counts.exit += 1,
            }
            let rest = self.matcher.take_rest();
            pending = self.matcher.feed(&rest);
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "signals": self.counts.signals,
            "testcases": self.counts.testcases,
            "logins": self.counts.logins,
            "exit": self.counts.exit,
            "bytes": self.counts.bytes,
        })
    }
}

/// Reads `fd` to its end; EIO (a pty whose other side closed) is the end too.
fn read_chunk(f: &mut std::fs::File, buf: &mut [u8]) -> Result<usize> {
    loop {
        match f.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    }
}

fn one(fd: RawFd, store: Option<&Sink>) -> Result<()> {
    // SAFETY: the harness hands this process the fd; nothing else owns it.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut p = Pipeline::new()?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = read_chunk(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        p.feed(&buf[..n]);
        if let Some(s) = store {
            s.append(0, &buf[..n]);
        }
    }
    if let Some(s) = store {
        s.finish()?;
    }
    println!("{}", p.json());
    Ok(())
}

/// Many consoles in one thread, with poll(2), as one daemon watches many boards.
fn many(fds: &[RawFd], store: Option<&Sink>) -> Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::BorrowedFd;
    let mut files: Vec<Option<std::fs::File>> = fds
        .iter()
        // SAFETY: as in `one`, each fd is this process's own.
        .map(|&fd| Some(unsafe { std::fs::File::from_raw_fd(fd) }))
        .collect();
    let mut pipes: Vec<Pipeline> = fds.iter().map(|_| Pipeline::new()).collect::<Result<_>>()?;
    let mut buf = vec![0u8; 64 * 1024];
    while files.iter().any(Option::is_some) {
        let open: Vec<usize> = (0..files.len()).filter(|&i| files[i].is_some()).collect();
        let mut pfds: Vec<PollFd> = open
            .iter()
            // SAFETY: the fd stays open while `files[i]` holds it.
            .map(|&i| PollFd::new(unsafe { BorrowedFd::borrow_raw(fds[i]) }, PollFlags::POLLIN))
            .collect();
        poll(&mut pfds, PollTimeout::NONE)?;
        let ready: Vec<usize> = open
            .iter()
            .zip(&pfds)
            .filter(|(_, p)| p.revents().is_some_and(|r| !r.is_empty()))
            .map(|(&i, _)| i)
            .collect();
        for i in ready {
            let Some(f) = files[i].as_mut() else { continue };
            let n = read_chunk(f, &mut buf)?;
            if n == 0 {
                files[i] = None;
                continue;
            }
            pipes[i].feed(&buf[..n]);
            if let Some(s) = store {
                s.append(i as u64, &buf[..n]);
            }
        }
    }
    if let Some(s) = store {
        s.finish()?;
    }
    let consoles: Vec<_> = pipes.iter().map(Pipeline::json).collect();
    println!("{}", serde_json::json!({ "consoles": consoles }));
    Ok(())
}

/// Console bytes made durable through labd's store writer, one job per console.
struct Sink {
    rt: tokio::runtime::Runtime,
    store: labd::store::Store,
    offsets: std::sync::Mutex<std::collections::HashMap<u64, u64>>,
    /// The last write queued: the store applies writes in order, so once it
    /// is durable every earlier one is.
    last: std::sync::Mutex<Option<LogWrite>>,
}

type LogWrite = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), labd::store::StoreError>> + Send>,
>;

impl Sink {
    fn open(dir: &std::path::Path) -> Result<Sink> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let store =
            rt.block_on(async { labd::store::Store::open(dir, 64 << 20, Default::default()) })?;
        Ok(Sink {
            rt,
            store,
            offsets: Default::default(),
            last: Default::default(),
        })
    }

    fn append(&self, job: u64, bytes: &[u8]) {
        let mut o = self.offsets.lock().unwrap_or_else(|p| p.into_inner());
        let off = o.entry(job).or_default();
        // Queued now; the writer thread batches and flushes it.
        let fut = self.store.append_log(job + 1, *off, bytes.to_vec());
        *off += bytes.len() as u64;
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::pin(fut));
    }

    /// Waits until every byte appended is durable.
    fn finish(&self) -> Result<()> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = last {
            self.rt.block_on(w)?;
        }
        Ok(())
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("socket") {
        return socket_bench(&args[1..]);
    }
    if args.first().map(String::as_str) != Some("console") {
        bail!("usage: labd-bench console [--fds A,B,...] [--store DIR] | labd-bench socket [--jobs N] [--clients C] [--seconds S]");
    }
    let mut fds = None;
    let mut store = None;
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--fds" => {
                let list = it.next().context("--fds needs a list")?;
                fds = Some(
                    list.split(',')
                        .map(|s| s.trim().parse::<RawFd>())
                        .collect::<Result<Vec<_>, _>>()
                        .context("--fds: numbers separated by commas")?,
                );
            }
            "--store" => {
                store = Some(Sink::open(
                    it.next().context("--store needs a dir")?.as_ref(),
                )?)
            }
            other => bail!("unknown argument {other}"),
        }
    }
    match fds {
        Some(fds) => many(&fds, store.as_ref()),
        None => one(0, store.as_ref()),
    }
}

const BENCH_JOB: &str = "device_type: sim-uboot\njob_name: bench\ntimeouts:\n  job:\n    minutes: 5\nactions:\n- deploy:\n    to: tftp\n    kernel:\n      url: file:///nonexistent/Image\n      type: image\n- boot:\n    method: u-boot\n    commands: ramdisk\n    prompts: ['# ']\n";

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn socket_bench(args: &[String]) -> Result<()> {
    let (mut jobs, mut clients, mut seconds) = (10_000usize, 32usize, 10u64);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().context("a value is missing");
        match a.as_str() {
            "--jobs" => jobs = val()?.parse()?,
            "--clients" => clients = val()?.parse()?,
            "--seconds" => seconds = val()?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("labd.sock");
    let cfg = format!(
        "socket = {:?}\nstate_dir = {:?}\n[tftp]\nbind = \"127.0.0.1:0\"\n[limits]\nmax_connections = 1024\n[[boards]]\nname = \"bench-01\"\ndevice_type = \"sim-uboot\"\nconsole = {{ type = \"command\", command = [\"cat\"] }}\npower = {{ type = \"command\", on = [\"true\"], off = [\"true\"] }}\n",
        socket,
        dir.path().join("state")
    );
    let config = dir.path().join("labd.toml");
    std::fs::write(&config, cfg)?;
    let exe = std::env::current_exe()?;
    let labd = exe.with_file_name("labd");
    let notify = dir.path().join("notify.sock");
    let ready = std::os::unix::net::UnixDatagram::bind(&notify)?;
    let mut child = std::process::Command::new(&labd)
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify)
        .env("RUST_LOG", "labd=warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", labd.display()))?;
    ready.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    let mut buf = [0u8; 256];
    loop {
        let n = ready.recv(&mut buf).context("labd did not say READY=1")?;
        if String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "READY=1")
        {
            break;
        }
    }
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
                while std::time::Instant::now() < until {
                    n += 1;
                    let t = std::time::Instant::now();
                    let method = if i % 2 == 0 {
                        c.submit(BENCH_JOB, "bench.yaml").await?;
                        "submit"
                    } else {
                        match n % 3 {
                            0 => {
                                c.call(R::Jobs {
                                    state: None,
                                    board: None,
                                    device_type: None,
                                    limit: Some(50),
                                    cursor: None,
                                })
                                .await?;
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
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    println!("{}", serde_json::to_string_pretty(&result?)?);
    Ok(())
}
