//! The overlay over HTTP, for LAVA's `transfer_overlay`: a board that boots
//! a root filesystem of its own downloads its job's overlay tarball from
//! labd and unpacks it.
//!
//! It exists because such a board has no ramdisk to carry the overlay. The
//! listener is the lab's (`[deploy] overlay_http`, off by default, so a lab
//! opens no port it did not ask for); each job's tarball is served at a
//! path holding 128 random bits, only while the job holds its
//! [`Served`] (dropped when the job's runner ends).
//!
//! Invariants: it answers only `GET` of a registered path, with the bytes
//! registered, and nothing else of the lab host; a client is bounded in
//! time (its request head within [`HEAD_TIMEOUT`], the answer within
//! [`WRITE_TIMEOUT`]) and in size (a head over [`MAX_HEAD`] is refused),
//! and at most [`MAX_CLIENTS`] are served at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The longest request head read.
pub const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to read the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(300);
/// Clients served at once; more wait in the listen queue.
pub const MAX_CLIENTS: usize = 32;

type Files = Arc<Mutex<HashMap<String, Arc<Vec<u8>>>>>;

/// The lab's overlay listener.
pub struct OverlayHttp {
    files: Files,
    addr: SocketAddr,
}

impl std::fmt::Debug for OverlayHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlayHttp")
            .field("addr", &self.addr)
            .finish()
    }
}

/// A job's tarball, served at [`Served::path`] until this is dropped.
pub struct Served {
    files: Files,
    pub path: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        // A poisoned lock still holds whole entries: each is one insert.
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.path);
    }
}

impl OverlayHttp {
    /// Binds the listener and serves it on the current tokio runtime.
    pub async fn start(bind: SocketAddr) -> std::io::Result<Arc<OverlayHttp>> {
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let files: Files = Arc::default();
        let served = files.clone();
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let files = served.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    answer(stream, files).await;
                });
            }
        });
        Ok(Arc::new(OverlayHttp { files, addr }))
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Serves `bytes` at a new unguessable path until the result is dropped.
    pub fn serve(&self, bytes: Vec<u8>) -> Served {
        let path = format!("/overlay/{}/overlay.tar.gz", token());
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.clone(), Arc::new(bytes));
        Served {
            files: self.files.clone(),
            path,
        }
    }
}

/// 128 random bits, in hex, from the kernel.
fn token() -> String {
    let mut b = [0u8; 16];
    // Invariant: /dev/urandom exists on every Linux host labd runs on; if it
    // could not be read, the hasher's random keys still make the token
    // unguessable from outside.
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        use std::hash::{BuildHasher, Hasher};
        for (i, chunk) in b.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(i);
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn answer(mut stream: tokio::net::TcpStream, files: Files) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(HEAD_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 || head.len() + n > MAX_HEAD {
                return None;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Some(())
    })
    .await;
    let status = match read {
        Ok(Some(())) => None,
        Ok(None) => Some("400 Bad Request"),
        Err(_) => Some("408 Request Timeout"),
    };
    let reply = match status {
        Some(s) => Err(s),
        None => {
            let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
            let line = String::from_utf8_lossy(line);
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("GET"), Some(path)) => files
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(path)
                    .cloned()
                    .ok_or("404 Not Found"),
                (Some(_), Some(_)) => Err("405 Method Not Allowed"),
                _ => Err("400 Bad Request"),
            }
        }
    };
    let write = async {
        match reply {
            Ok(bytes) => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    bytes.len()
                );
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(&bytes).await?;
            }
            Err(status) => {
                let head =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                stream.write_all(head.as_bytes()).await?;
            }
        }
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, write).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(port: u16, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        // The server may answer and close before a refused request is all
        // written: what it said is read whatever became of the rest.
        let _ = s.write_all(request.as_bytes()).await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn only_a_registered_path_is_served_and_only_while_it_is_held() {
        let http = OverlayHttp::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let served = http.serve(b"tarball".to_vec());
        let ok = get(
            http.port(),
            &format!("GET {} HTTP/1.0\r\n\r\n", served.path),
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.ends_with("\r\n\r\ntarball"), "{ok}");
        let other = get(
            http.port(),
            "GET /overlay/guess/overlay.tar.gz HTTP/1.0\r\n\r\n",
        )
        .await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        let put = get(
            http.port(),
            &format!("PUT {} HTTP/1.0\r\n\r\n", served.path),
        )
        .await;
        assert!(put.starts_with("HTTP/1.1 405"), "{put}");
        let path = served.path.clone();
        drop(served);
        let gone = get(http.port(), &format!("GET {path} HTTP/1.0\r\n\r\n")).await;
        assert!(gone.starts_with("HTTP/1.1 404"), "{gone}");
        let huge = format!("GET /{} HTTP/1.0\r\n\r\n", "x".repeat(MAX_HEAD));
        let refused = get(http.port(), &huge).await;
        assert!(
            refused.is_empty() || refused.starts_with("HTTP/1.1 400"),
            "{refused}"
        );
    }
}
