//! `labd`: the per-lab dispatcher daemon. `labd --demo` runs a demo lab of
//! simulated boards, submits a sample job and prints its results.

use anyhow::{bail, Context};
use clap::Parser;
use labd::client::Client;
use labd::config::{self, LabConfig};
use labd::protocol::RequestBody;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

#[derive(Parser)]
#[command(
    version,
    about = "labd: a per-lab hardware dispatcher for LAVA-style jobs"
)]
struct Args {
    /// The lab config (TOML).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The socket to serve; wins over the config's.
    #[arg(long, env = "LABD_SOCKET")]
    socket: Option<PathBuf>,
    /// Run a demo lab of four simulated boards with its state in a temporary directory.
    #[arg(long)]
    demo: bool,
    /// With --demo: keep the demo lab running for labctl instead of running the sample job.
    #[arg(long, requires = "demo")]
    serve: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Check a lab's store offline (labd stopped) and say what is wrong; exits 1 if anything is.
    Fsck {
        /// The lab's state directory (the config's `state_dir`).
        #[arg(long)]
        state_dir: PathBuf,
        /// First turn every gap in a console log (left by an older labd
        /// when its disk was full) into a truncation mark, moving the bytes
        /// after it to follow the mark.
        #[arg(long)]
        repair: bool,
    },
    /// Write every job with its events and results as JSON lines on stdout
    /// (labd stopped), for backup or migration.
    Export {
        /// The lab's state directory (the config's `state_dir`).
        #[arg(long)]
        state_dir: PathBuf,
    },
}

/// Opens the store of a stopped lab, refusing to create one.
fn open_offline(state_dir: &Path) -> anyhow::Result<labd::store::Store> {
    let dir = state_dir.join("store");
    if !dir.join("db").exists() {
        bail!("{}: no labd store here", dir.display());
    }
    labd::store::Store::open(&dir, 64 << 20, Default::default()).with_context(|| {
        format!(
            "opening {} (is a labd running on it? stop it first)",
            dir.display()
        )
    })
}

/// Large buffers (a log chunk a client asked for, its JSON answer) go back
/// to the system when freed. glibc otherwise raises its mmap threshold to
/// the largest block freed so far, after which such buffers come from the
/// heap, whose freed space a long-lived daemon seldom returns: a client
/// that had a thousand log chunks in flight left ~500 MB resident after it
/// left.
fn return_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any
    // other thread exists.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 128 << 10);
        nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, 1 << 20);
    }
}

fn main() -> std::process::ExitCode {
    return_large_buffers();
    let args = Args::parse();
    // The config says how to log, so it is read first; its errors go to
    // stderr as they are.
    let cfg = match (&args.config, args.demo, &args.command) {
        (Some(path), false, None) => match LabConfig::load(path) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("labd: {e}");
                return std::process::ExitCode::from(2);
            }
        },
        _ => None,
    };
    if let Err(e) = init_logging(cfg.as_ref().map(|c| &c.log)) {
        eprintln!("labd: {e}");
        return std::process::ExitCode::from(2);
    }
    // A panic in an actor is caught and supervised, but it is always a bug:
    // log it where the daemon's other logs go, with its location.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        tracing::error!(panic = %msg, location = %at, "panic");
    }));
    let sys = actix::System::new();
    match sys.block_on(run(args, cfg)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("labd: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Human lines on stderr, JSON lines on stderr, or the journal.
fn init_logging(cfg: Option<&config::LogConfig>) -> anyhow::Result<()> {
    use config::LogFormat;
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::EnvFilter;
    let filter = match EnvFilter::try_from_default_env() {
        Ok(f) => f,
        Err(_) => {
            let text = cfg
                .and_then(|c| c.filter.as_deref())
                .unwrap_or("labd=info,warn");
            EnvFilter::try_new(text).with_context(|| format!("log.filter `{text}`"))?
        }
    };
    let format =
        cfg.and_then(|c| c.format)
            .unwrap_or(if std::env::var_os("JOURNAL_STREAM").is_some() {
                LogFormat::Journald
            } else {
                LogFormat::Human
            });
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Human => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(j) => registry.with(j).init(),
            Err(e) => {
                registry
                    .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
                    .init();
                tracing::warn!(error = %e, "journald is not reachable; logging to stderr");
            }
        },
    }
    Ok(())
}

async fn run(args: Args, cfg: Option<LabConfig>) -> anyhow::Result<u8> {
    if let Some(Cmd::Fsck { state_dir, repair }) = &args.command {
        let store = open_offline(state_dir)?;
        if *repair {
            for r in store.repair()? {
                println!("repaired: {r}");
            }
        }
        let problems = store.check()?;
        for p in &problems {
            println!("{p}");
        }
        if problems.is_empty() {
            println!("{}: store is consistent", state_dir.display());
            return Ok(0);
        }
        eprintln!("{} problem(s)", problems.len());
        return Ok(1);
    }
    if let Some(Cmd::Export { state_dir }) = &args.command {
        let store = open_offline(state_dir)?;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let n = store.for_each_job(|job, events, results| {
            serde_json::to_writer(
                &mut out,
                &serde_json::json!({"job": job, "events": events, "results": results}),
            )?;
            out.write_all(b"\n")
        })?;
        out.flush()?;
        eprintln!("exported {n} jobs");
        return Ok(0);
    }
    if args.demo {
        return demo(args).await;
    }
    let (Some(path), Some(cfg)) = (&args.config, cfg) else {
        bail!("give --config FILE, or --demo for a demo lab");
    };
    let socket = config::resolve_socket(args.socket.as_deref(), Some(&cfg));
    let grace = Duration::from_secs(cfg.limits.shutdown_grace_secs);
    let daemon = labd::daemon::start(cfg, &socket, Some(path.clone())).await?;
    daemon.reload_on_sighup();
    wait_for_signal().await;
    daemon.shutdown(grace, wait_for_signal()).await?;
    Ok(0)
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match &mut term { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

fn sim_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name("labd-sim");
    if !p.exists() {
        bail!(
            "{} not found; build it with `cargo build --bins`",
            p.display()
        );
    }
    Ok(p)
}

async fn demo(args: Args) -> anyhow::Result<u8> {
    let tmp = tempfile::Builder::new().prefix("labd-demo-").tempdir()?;
    let dir = tmp.path().to_path_buf();
    let sim_sock = dir.join("sim.sock");
    let socket = args.socket.clone().unwrap_or_else(|| dir.join("labd.sock"));
    let boards: Vec<String> = (1..=4).map(|i| format!("sim-{i:02}")).collect();
    let mut sim = tokio::process::Command::new(sim_binary()?)
        .arg("--control")
        .arg(&sim_sock)
        .arg("--boards")
        .arg(boards.join(","))
        .arg("--scratch")
        .arg(dir.join("scratch"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting labd-sim")?;
    let out = sim.stdout.take().context("labd-sim stdout")?;
    let mut lines = tokio::io::BufReader::new(out).lines();
    match lines.next_line().await? {
        Some(l) if l.trim() == "READY" => {}
        other => bail!("labd-sim did not start: {other:?}"),
    }
    let cfg = config::demo(&dir.join("state"), &sim_sock, &socket);
    let daemon = labd::daemon::start(cfg, &socket, None).await?;
    if args.serve {
        println!("LABD_SOCKET={}", socket.display());
        println!(
            "demo lab of {} simulated boards is running; Ctrl-C stops it",
            boards.len()
        );
        let _ = std::io::stdout().flush();
        wait_for_signal().await;
        // A demo lab stops at once: running jobs end and boards go off.
        daemon.shutdown(Duration::ZERO, wait_for_signal()).await?;
        return Ok(0);
    }
    let artifacts = dir.join("artifacts");
    write_artifacts(&artifacts)?;
    let job = include_str!("../../config/demo-job.yaml")
        .replace("@ARTIFACTS@", &artifacts.display().to_string());
    let mut client = Client::connect(&socket).await?;
    let id = client.submit(&job, "config/demo-job.yaml").await?;
    println!("labd demo: submitted job {id}; console follows\n");
    let mut stdout = std::io::stdout();
    let end = client
        .logs(id, true, |d| {
            let text: Vec<u8> = d.iter().copied().filter(|&b| b != b'\r').collect();
            let _ = stdout.write_all(&text);
            let _ = stdout.flush();
        })
        .await?;
    let res = client.call(RequestBody::Results { job: id }).await?;
    let job = &res["job"];
    println!(
        "\n\njob {id} ({}) on {}: {} {}",
        job["name"].as_str().unwrap_or(""),
        job["board"].as_str().unwrap_or("-"),
        end["state"].as_str().unwrap_or("?"),
        end["health"].as_str().unwrap_or("?")
    );
    if let Some(e) = job["error"].as_str() {
        println!(
            "error ({}): {e}",
            job["error_class"].as_str().unwrap_or("?")
        );
    }
    println!(
        "\n{:<20} {:<28} {:<8} MEASUREMENT",
        "SUITE", "TEST CASE", "RESULT"
    );
    for r in res["results"].as_array().into_iter().flatten() {
        let m = match (r["measurement"].as_str(), r["units"].as_str()) {
            (Some(m), Some(u)) => format!("{m} {u}"),
            (Some(m), None) => m.to_owned(),
            _ => String::new(),
        };
        println!(
            "{:<20} {:<28} {:<8} {m}",
            r["suite"].as_str().unwrap_or(""),
            r["name"].as_str().unwrap_or(""),
            r["result"].as_str().unwrap_or("")
        );
    }
    drop(sim);
    Ok(if job["health"] == "Complete" { 0 } else { 1 })
}

fn write_artifacts(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    // Stand-ins with the sizes of small real artifacts; the simulated U-Boot
    // only checks that they arrived.
    let mut kernel = b"ARMd".to_vec();
    kernel.resize(2 * 1024 * 1024, 0x5a);
    std::fs::write(dir.join("Image"), kernel)?;
    std::fs::write(dir.join("initramfs.cpio.gz"), vec![0x1f; 512 * 1024])?;
    std::fs::write(dir.join("board.dtb"), vec![0xd0; 16 * 1024])?;
    Ok(())
}
