//! The TFTP server: serves each running job's artifacts from its own
//! directory, `<root>/<job id>/<file>`, and nothing else.
//!
//! It owns the request-path policy. async-tftp's stock directory handler
//! follows symlinks out of its root, so labd has its own handler: the path
//! must be `<digits>/<name>` made of plain components, no component may be a
//! symlink, the file is opened with `O_NOFOLLOW`, and writes are refused.
//! The server runs on threads of its own, each driving async-tftp's reactor
//! itself, and reads the served files in place on them (see [`Counted`]).
//!
//! ## Invariants
//!
//! Serves only regular files at `<root>/<digits>/<name>`, never a symlink,
//! never writes.

use async_tftp::packet;
use async_tftp::server::{Handler, TftpServerBuilder};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error("TFTP: cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TFTP: {0}")]
    Server(String),
}

/// labd's request-path policy as an async-tftp handler (see the module docs).
#[derive(Clone)]
pub struct JobFiles {
    root: PathBuf,
    metrics: crate::metrics::Metrics,
}

impl JobFiles {
    pub fn new(root: &Path, metrics: crate::metrics::Metrics) -> Self {
        JobFiles {
            root: root.to_path_buf(),
            metrics,
        }
    }
}

/// A file being served, counting its bytes into the metrics.
///
/// It is read synchronously on the TFTP thread, in 64 KiB reads: a job's
/// artifacts were written by its deploy moments before and are in the page
/// cache, and a hop to a blocking thread for every 1468-byte block cost
/// the server 2.7 times tftpd-hpa's CPU per packet in lockstep
/// (BENCHMARKS-history.md, target 7).
pub struct Counted {
    inner: futures_lite::io::BufReader<SyncFile>,
    metrics: crate::metrics::Metrics,
}

/// A file read in place: see [`Counted`].
pub struct SyncFile(std::fs::File);

impl futures_lite::AsyncRead for SyncFile {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(std::io::Read::read(&mut self.0, buf))
    }
}

impl futures_lite::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            self.metrics.tftp_bytes(*n as u64);
        }
        r
    }
}

/// Checks a requested path and returns the file to open, or why not.
pub fn resolve(root: &Path, requested: &Path) -> Result<PathBuf, packet::Error> {
    let rel = requested.strip_prefix("/").unwrap_or(requested);
    let comps: Vec<&str> = rel
        .components()
        .map(|c| match c {
            Component::Normal(s) => s.to_str().ok_or(packet::Error::PermissionDenied),
            _ => Err(packet::Error::PermissionDenied),
        })
        .collect::<Result<_, _>>()?;
    if comps.len() != 2 || !comps[0].chars().all(|c| c.is_ascii_digit()) {
        return Err(packet::Error::FileNotFound);
    }
    let mut path = root.to_path_buf();
    for c in &comps {
        path.push(c);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => return Err(packet::Error::PermissionDenied),
            Ok(_) => {}
            Err(_) => return Err(packet::Error::FileNotFound),
        }
    }
    Ok(path)
}

impl Handler for JobFiles {
    type Reader = Counted;
    type Writer = futures_lite::io::Sink;

    async fn read_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
    ) -> Result<(Self::Reader, Option<u64>), packet::Error> {
        let resolved = resolve(&self.root, path);
        let file = resolved.and_then(|p| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&p)
                .map_err(|_| packet::Error::FileNotFound)
        });
        match file {
            Ok(f) => {
                let len = f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
                if len.is_none() {
                    return Err(packet::Error::FileNotFound);
                }
                tracing::debug!(%client, path = %path.display(), "tftp read");
                self.metrics.tftp_transfer();
                let reader = Counted {
                    inner: futures_lite::io::BufReader::with_capacity(64 * 1024, SyncFile(f)),
                    metrics: self.metrics.clone(),
                };
                Ok((reader, len))
            }
            Err(e) => {
                tracing::info!(%client, path = %path.display(), error = ?e, "tftp request refused");
                self.metrics.tftp_error();
                Err(e)
            }
        }
    }

    async fn write_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
        _size: Option<u64>,
    ) -> Result<Self::Writer, packet::Error> {
        tracing::info!(%client, path = %path.display(), "tftp write refused");
        self.metrics.tftp_error();
        Err(packet::Error::IllegalOperation)
    }
}

/// Binds the server and starts it on its own thread; returns the bound address.
pub fn start(
    bind: SocketAddr,
    root: &Path,
    window_size_limit: u16,
    threads: usize,
    metrics: crate::metrics::Metrics,
) -> Result<SocketAddr, TftpError> {
    std::fs::create_dir_all(root)
        .map_err(|e| TftpError::Server(format!("{}: {e}", root.display())))?;
    serve(
        bind,
        JobFiles::new(root, metrics),
        window_size_limit,
        threads,
    )
}

/// Serves `handler` on `bind` from `threads` threads of its own; returns the
/// bound address once every server runs.
///
/// async-tftp runs a server and all its transfers on the one thread that
/// drives it. With more than one thread, each runs a server of its own on a
/// socket bound to the same address with `SO_REUSEPORT`: the kernel hands a
/// request to one of them by a hash of the client's address and port, so a
/// client's retried request reaches the same server, and concurrent
/// transfers spread over the threads. Only processes of labd's own user can
/// join such a group of sockets, and a port anything else holds is refused
/// as with one thread.
pub fn serve<H: Handler + Clone + 'static>(
    bind: SocketAddr,
    handler: H,
    window_size_limit: u16,
    threads: usize,
) -> Result<SocketAddr, TftpError> {
    let threads = threads.max(1);
    // A plain bind first: it fails if anything else holds the port, even
    // another labd whose servers share it, so two daemons never split one
    // port's requests between them (a board would then get "file not
    // found" from the one that does not have its job). A port 0 becomes a
    // real one here.
    let probe = listener(bind, false)?;
    let addr = probe
        .local_addr()
        .map_err(|e| TftpError::Server(e.to_string()))?;
    let sockets = if threads == 1 {
        vec![probe]
    } else {
        drop(probe);
        (0..threads)
            .map(|_| listener(addr, true))
            .collect::<Result<Vec<_>, _>>()?
    };
    let (tx, rx) = std::sync::mpsc::channel();
    for (i, sock) in sockets.into_iter().enumerate() {
        let handler = handler.clone();
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(format!("labd-tftp-{i}"))
            .spawn(move || {
                // async-io's own `block_on` drives its reactor on this
                // thread while the server waits. Under a plain `block_on`,
                // async-io's reactor thread saw every packet first and woke
                // this one for it: a third more CPU per transfer, and 55
                // instead of 70 MB/s for 32 transfers (BENCHMARKS-history.md).
                async_io::block_on(async move {
                    let server = match TftpServerBuilder::with_handler(handler)
                        .std_socket(sock)
                        .map(|b| b.window_size_limit(window_size_limit))
                    {
                        Ok(b) => b.build().await,
                        Err(e) => Err(e),
                    };
                    match server {
                        Ok(s) => {
                            let _ = tx.send(Ok(()));
                            if let Err(e) = s.serve().await {
                                tracing::error!(error = %e, "TFTP server stopped");
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                        }
                    }
                })
            })
            .map_err(|e| TftpError::Server(e.to_string()))?;
    }
    drop(tx);
    for _ in 0..threads {
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(TftpError::Server(e)),
            Err(_) => return Err(TftpError::Server("server thread died".into())),
        }
    }
    Ok(addr)
}

/// A UDP socket bound to `addr`, sharing it with labd's other TFTP threads
/// when `shared`.
fn listener(addr: SocketAddr, shared: bool) -> Result<UdpSocket, TftpError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind_err = |source| TftpError::Bind { addr, source };
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(bind_err)?;
    if shared {
        sock.set_reuse_port(true).map_err(bind_err)?;
    }
    sock.bind(&addr.into()).map_err(bind_err)?;
    Ok(sock.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_job_dirs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("7")).unwrap();
        std::fs::write(root.join("7/kernel"), b"k").unwrap();
        std::fs::write(dir.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("7/link")).unwrap();
        std::os::unix::fs::symlink(root, root.join("8")).unwrap();
        assert!(resolve(root, Path::new("7/kernel")).is_ok());
        assert!(resolve(root, Path::new("/7/kernel")).is_ok());
        for bad in [
            "7/../secret",
            "../secret",
            "secret",
            "7/link",
            "8/7",
            "7",
            "x/kernel",
            "7/kernel/x",
        ] {
            assert!(resolve(root, Path::new(bad)).is_err(), "{bad}");
        }
    }

    /// Servers that share a port (`SO_REUSEPORT`) still refuse a port that
    /// another daemon's sharing servers hold: two labds never split one
    /// port's requests.
    #[test]
    fn a_port_another_server_group_holds_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = || JobFiles::new(dir.path(), Default::default());
        let addr = serve("127.0.0.1:0".parse().unwrap(), files(), 16, 2).unwrap();
        assert_ne!(addr.port(), 0);
        for threads in [1, 2] {
            match serve(addr, files(), 16, threads) {
                Err(TftpError::Bind { addr: a, .. }) => assert_eq!(a, addr),
                other => panic!("{threads} threads on a held port: {other:?}"),
            }
        }
    }
}
