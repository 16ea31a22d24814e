//! `labd-sim`: simulated U-Boot boards on real PTYs, for the demo, the tests
//! and the benchmarks. The simulated boards are hardware to labd: they live
//! in this binary alone, and labd reaches them only through their PTYs and
//! the control protocol in `labd::sim_control`.
//!
//! `labd-sim --control SOCK power BOARD on|off|reset` and `labd-sim
//! --control SOCK console BOARD` are a running simulator's relay and
//! console as commands, like a lab's `pduclient` and `telnet`: what a LAVA
//! device dictionary's `power_on_command` and `connection_command` name.

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
    /// Board names, comma separated (to run a simulator).
    #[arg(long, value_delimiter = ',')]
    boards: Vec<String>,
    /// Where each board's shell gets its scratch directory.
    #[arg(long)]
    scratch: Option<PathBuf>,
    /// Pace every board's output like a serial line at this baud rate
    /// (8N1, in 16 ms chunks like a USB adapter), and count U-Boot's
    /// autoboot delay in real seconds; unpaced and shortened without it.
    #[arg(long)]
    baud: Option<u32>,
    /// Instead of running a simulator, talk to the one at `--control`.
    #[command(subcommand)]
    client: Option<Client>,
}

#[derive(clap::Subcommand)]
enum Client {
    /// Switches a board's relay: on, off or reset.
    Power { board: String, action: String },
    /// Bridges stdin and stdout to a board's console until stdin closes.
    Console { board: String },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(c) = args.client {
        return client(&args.control, c);
    }
    if args.boards.is_empty() {
        anyhow::bail!("--boards is needed to run a simulator");
    }
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

/// A command against a running simulator.
fn client(control: &std::path::Path, c: Client) -> anyhow::Result<()> {
    use labd::sim_control::ControlRequest as R;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ask = |req: R| -> anyhow::Result<labd::sim_control::ControlResponse> {
        let r = rt
            .block_on(labd::sim_control::control(control, &req))
            .with_context(|| format!("{}", control.display()))?;
        if !r.ok {
            anyhow::bail!("{}", r.error.unwrap_or_default());
        }
        Ok(r)
    };
    match c {
        Client::Power { board, action } => {
            let req = match action.as_str() {
                "on" => R::On { board },
                "off" => R::Off { board },
                "reset" => R::Reset { board },
                other => anyhow::bail!("power {other}: on, off or reset"),
            };
            ask(req)?;
            Ok(())
        }
        Client::Console { board } => {
            let path = ask(R::Pty { board })?
                .path
                .context("the simulator named no pty")?;
            bridge(&path)
        }
    }
}

/// Copies stdin to the pty and the pty to stdout, each read as it comes,
/// until stdin closes (the console's user went away).
fn bridge(path: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY)
        .open(path)
        .with_context(|| path.to_owned())?;
    let fd = std::os::fd::OwnedFd::from(tty);
    labd::pty::set_raw(&fd).context("raw mode")?;
    let tty = std::fs::File::from(fd);
    let mut from_board = tty.try_clone()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut out = std::io::stdout().lock();
        while let Ok(n) = from_board.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                break;
            }
        }
        // The board's side is gone, or labd's: nothing more to bridge.
        std::process::exit(0);
    });
    let mut to_board = tty;
    let mut buf = [0u8; 4096];
    let mut input = std::io::stdin().lock();
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to_board.write_all(&buf[..n])?;
    }
}
