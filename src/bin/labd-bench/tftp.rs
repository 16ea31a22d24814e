//! `labd-bench tftp`: labd's TFTP server as a stand-alone server for the
//! peer harness in `../shared/bench` (`tftp_bench.py --server-cmd`).
//!
//! The harness asks for a file at its root, while labd serves only
//! `<job>/<file>`: this server puts the harness's root in the place of one
//! job's directory (a symlink `<tmp>/1` → `--root`, which labd's handler
//! would refuse to follow, so the root's files are hard-linked instead) and
//! prefixes every requested path with `1/`. Everything else (the path
//! checks, `O_NOFOLLOW`, the windowsize limit, the server loop) is labd's
//! own `tftp` module, as the daemon runs it.

use anyhow::{Context, Result};
use async_tftp::packet;
use async_tftp::server::Handler;
use labd::tftp::JobFiles;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// `labd-bench tftp`: serve a directory through labd's TFTP server.
#[derive(clap::Args)]
pub struct Opts {
    /// Where to listen, e.g. 127.0.0.1:6972.
    #[arg(long)]
    listen: SocketAddr,
    /// The directory whose files are served.
    #[arg(long)]
    root: PathBuf,
    /// The largest RFC 7440 windowsize granted (labd's `tftp.window_size_limit`).
    #[arg(long, default_value_t = 16)]
    window_size_limit: u16,
    /// Server threads (labd's `tftp.threads`); default: as labd, the CPUs up to 4.
    #[arg(long)]
    threads: Option<usize>,
}

/// labd's handler, with every request put under job 1's directory.
#[derive(Clone)]
struct AsJobOne(JobFiles);

impl Handler for AsJobOne {
    type Reader = <JobFiles as Handler>::Reader;
    type Writer = <JobFiles as Handler>::Writer;

    async fn read_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
    ) -> Result<(Self::Reader, Option<u64>), packet::Error> {
        let rel = path.strip_prefix("/").unwrap_or(path);
        self.0
            .read_req_open(client, &Path::new("1").join(rel))
            .await
    }

    async fn write_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
        size: Option<u64>,
    ) -> Result<Self::Writer, packet::Error> {
        self.0.write_req_open(client, path, size).await
    }
}

pub fn main(o: Opts) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("labd-bench-tftp-")
        .tempdir()?;
    let job = dir.path().join("1");
    std::fs::create_dir(&job)?;
    for e in std::fs::read_dir(&o.root).with_context(|| format!("{}", o.root.display()))? {
        let e = e?;
        if e.file_type()?.is_file() {
            // A hard link needs the same filesystem; a copy does otherwise.
            let dst = job.join(e.file_name());
            if std::fs::hard_link(e.path(), &dst).is_err() {
                std::fs::copy(e.path(), &dst)?;
            }
        }
    }
    let handler = AsJobOne(JobFiles::new(dir.path(), Default::default()));
    let threads = o.threads.unwrap_or_else(labd::config::default_tftp_threads);
    let addr = labd::tftp::serve(o.listen, handler, o.window_size_limit, threads)?;
    eprintln!("labd-bench tftp: serving {} on {addr}", o.root.display());
    // The server runs on its own thread until this process is stopped.
    loop {
        std::thread::park();
    }
}
