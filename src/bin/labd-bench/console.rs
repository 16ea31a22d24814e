//! `labd-bench console`: a board's console pipeline (the LAVA signal parser
//! and the runner's matcher, optionally the store's log writer) on a stream,
//! for the peer harness in `../shared/bench`.

use anyhow::Result;
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
}

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
        })
    }

    fn append(&self, job: u64, bytes: &[u8]) {
        let mut o = self.offsets.lock().unwrap_or_else(|p| p.into_inner());
        let off = o.entry(job).or_default();
        // Queued now; the writer thread batches and flushes it.
        self.store.queue_log(job + 1, *off, bytes);
        *off += bytes.len() as u64;
    }

    /// Waits until every byte appended is durable.
    fn finish(&self) -> Result<()> {
        self.rt.block_on(self.store.sync())?;
        Ok(())
    }
}

/// `labd-bench console`: one console on stdin, or several on fds.
#[derive(clap::Args)]
pub struct Opts {
    /// Watch these fds (the harness's one-process mode) instead of stdin.
    #[arg(long, value_delimiter = ',')]
    fds: Option<Vec<RawFd>>,
    /// Also append every byte to a sled store in this directory.
    #[arg(long)]
    store: Option<std::path::PathBuf>,
}

pub fn main(o: Opts) -> Result<()> {
    let store = o.store.as_deref().map(Sink::open).transpose()?;
    let fds = o.fds;
    match fds {
        Some(fds) => many(&fds, store.as_ref()),
        None => one(0, store.as_ref()),
    }
}
