//! `labd-sim`: simulated U-Boot boards on real PTYs, for the demo, the tests
//! and the benchmarks. The simulated boards are hardware to labd: they live
//! in this binary alone, and labd reaches them only through their PTYs and
//! the control protocol in `labd::sim_control`.

mod sim;
mod tftp_client;

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(version, about = "Simulated U-Boot + Linux boards on real PTYs")]
struct Args {
    /// The control socket to create (power commands, PTY paths, fault knobs).
    #[arg(long)]
    control: PathBuf,
    /// Board names, comma separated.
    #[arg(long, value_delimiter = ',', required = true)]
    boards: Vec<String>,
    /// Where each board's shell gets its scratch directory.
    #[arg(long)]
    scratch: Option<PathBuf>,
    /// Pace every board's output like a serial line at this baud rate
    /// (8N1, in 16 ms chunks like a USB adapter), and count U-Boot's
    /// autoboot delay in real seconds; unpaced and shortened without it.
    #[arg(long)]
    baud: Option<u32>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Each board holds a pty pair and its shell's pipes.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
    let tmp;
    let scratch = match args.scratch {
        Some(s) => s,
        None => {
            tmp = tempfile::tempdir().context("creating a scratch directory")?;
            tmp.path().to_path_buf()
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(sim::run(&args.control, &args.boards, &scratch, args.baud))
        .context("labd-sim")?;
    Ok(())
}
