//! `labd-bench`: labd's benchmarks as one program (see BENCHMARKS.md).
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
//!
//! `labd-bench boards [--boards N] [--seconds S] [--window W] [--baud B]`
//! runs N simulated boards whose consoles all stream at line rate through
//! a real labd, and prints labd's CPU and memory while they stream (see
//! `boards.rs`).
//!
//! `labd-bench restart [--jobs N] [--log-mb M] [--runs R] [--cold]` fills
//! a store with N finished jobs and M MiB of console logs, then times labd
//! from start to serving requests (see `restart.rs`).
//!
//! `labd-bench dispatch [--boards N] [--finished F] [--samples S]` times a
//! submit's acknowledgement to the board's power-on command (see
//! `dispatch.rs`).
//!
//! `labd-bench tftp --listen ADDR --root DIR` serves DIR through labd's TFTP
//! server, for `../shared/bench/tftp_bench.py` (see `tftp.rs`).

mod boards;
mod console;
mod dispatch;
mod lab;
mod restart;
mod socket;
mod tftp;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "labd's benchmarks (see BENCHMARKS.md)")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// The console pipeline on stdin (or --fds), for ../shared/bench's harness.
    Console(console::Opts),
    /// The socket API under load.
    Socket(socket::Opts),
    /// N simulated boards streaming at line rate through a real labd.
    Boards(boards::Opts),
    /// Start-up time on a large store.
    Restart(restart::Opts),
    /// Submit → power-on latency with many boards and finished jobs.
    Dispatch(dispatch::Opts),
    /// labd's TFTP server on a directory, for ../shared/bench's harness.
    Tftp(tftp::Opts),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().mode {
        Mode::Console(o) => console::main(o),
        Mode::Socket(o) => socket::main(o),
        Mode::Boards(o) => boards::main(o),
        Mode::Restart(o) => restart::main(o),
        Mode::Dispatch(o) => dispatch::main(o),
        Mode::Tftp(o) => tftp::main(o),
    }
}
