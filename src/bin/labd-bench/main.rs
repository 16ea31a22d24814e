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

mod boards;
mod console;
mod lab;
mod socket;

use anyhow::{bail, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or_default();
    match args.first().map(String::as_str) {
        Some("console") => console::main(rest),
        Some("socket") => socket::main(rest),
        Some("boards") => boards::main(rest),
        _ => bail!("usage: labd-bench console [--fds A,B,...] [--store DIR] | labd-bench socket [--jobs N] [--clients C] [--seconds S] | labd-bench boards [--boards N] [--seconds S] [--window W] [--baud B]"),
    }
}
