//! Fetching a job's artifacts into its TFTP directory.
//!
//! `file://` paths are read, `http(s)://` URLs downloaded (ureq, with a
//! timeout and a size limit); a `sha256sum` is checked on the bytes as they
//! arrive (LAVA checks the file as downloaded, before decompression), and
//! `gz` is undone on the way to disk, with the same limit on what it expands
//! to. Everything here blocks: callers run it on the blocking pool.

use sha2::Digest;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// Why an artifact could not be deployed, in words for the job's error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DeployError(pub String);

/// What was fetched: bytes read, and bytes written for the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    pub read: u64,
    pub written: u64,
}

/// Reads through, hashing what passes.
struct Hashing<R> {
    inner: R,
    hash: sha2::Sha256,
    read: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// Fetches `url` into `dst`.
pub fn fetch(
    url: &str,
    sha256: Option<&str>,
    gzip: bool,
    dst: &Path,
    max_bytes: u64,
    timeout: Duration,
) -> Result<Fetched, DeployError> {
    let fail = |m: String| DeployError(m);
    let source: Box<dyn Read> = if let Some(path) = url.strip_prefix("file://") {
        Box::new(std::fs::File::open(path).map_err(|e| fail(format!("cannot read {path}: {e}")))?)
    } else {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let resp = agent
            .get(url)
            .call()
            .map_err(|e| fail(format!("{url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(fail(format!(
                "{url}: the server answered {}",
                resp.status()
            )));
        }
        Box::new(
            resp.into_body()
                .into_with_config()
                .limit(max_bytes)
                .reader(),
        )
    };
    let mut hashing = Hashing {
        inner: source.take(max_bytes + 1),
        hash: sha2::Sha256::new(),
        read: 0,
    };
    let mut out = std::fs::File::create(dst)
        .map_err(|e| fail(format!("cannot write {}: {e}", dst.display())))?;
    let written = {
        let mut reader: Box<dyn Read + '_> = if gzip {
            Box::new(flate2::read::GzDecoder::new(&mut hashing).take(max_bytes + 1))
        } else {
            Box::new(&mut hashing)
        };
        std::io::copy(&mut reader, &mut out).map_err(|e| fail(format!("{url}: {e}")))?
    };
    out.flush()
        .map_err(|e| fail(format!("{}: {e}", dst.display())))?;
    if hashing.read > max_bytes || written > max_bytes {
        return Err(fail(format!(
            "{url}: larger than the lab's limit of {max_bytes} bytes (limits.max_artifact_bytes)"
        )));
    }
    if let Some(want) = sha256 {
        let got: String = hashing
            .hash
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if got != want {
            return Err(fail(format!(
                "{url}: sha256 mismatch: expected {want}, got {got}"
            )));
        }
    }
    Ok(Fetched {
        read: hashing.read,
        written,
    })
}
