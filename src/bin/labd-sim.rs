//! `labd-sim`: simulated U-Boot boards on real PTYs, for the demo, the tests
//! and the benchmarks. See `labd::sim`.

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
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp;
    let scratch = match args.scratch {
        Some(s) => s,
        None => {
            tmp = tempfile::tempdir().context("creating a scratch directory")?;
            tmp.path().to_path_buf()
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(labd::sim::run(&args.control, &args.boards, &scratch))
        .context("labd-sim")?;
    Ok(())
}
