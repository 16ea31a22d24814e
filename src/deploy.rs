//! Fetching a job's artifacts into its TFTP directory.
//!
//! `file://` paths are read, `http(s)://` URLs downloaded (ureq, with a
//! timeout and a size limit); a `sha256sum` is checked on the bytes as they
//! arrive (LAVA checks the file as downloaded, before decompression), and
//! `gz`, `xz` or `zstd` is undone on the way to disk, with the same limit on
//! what it expands to. Progress is reported at each quarter of a file of
//! known size (else every 64 MiB). Everything here blocks: callers run it
//! on the blocking pool.

use crate::job::Compression;
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

/// Progress without a known size is reported this often.
const PROGRESS_EVERY: u64 = 64 << 20;

/// Reads through, hashing what passes and reporting progress.
struct Hashing<'a, R> {
    inner: R,
    hash: sha2::Sha256,
    read: u64,
    total: Option<u64>,
    next_report: u64,
    progress: &'a mut dyn FnMut(u64, Option<u64>),
}

impl<R: Read> Hashing<'_, R> {
    fn step(&self) -> u64 {
        match self.total {
            Some(t) if t > 0 => t.div_ceil(4),
            _ => PROGRESS_EVERY,
        }
    }
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.read += n as u64;
        if n > 0 && self.read >= self.next_report {
            (self.progress)(self.read, self.total);
            while self.next_report <= self.read {
                self.next_report += self.step();
            }
        }
        Ok(n)
    }
}

/// Writes through, failing once more than `max` bytes were written, so a
/// decompressor that writes (xz) is bounded like one that is read.
struct Bounded<W> {
    inner: W,
    written: u64,
    max: u64,
    /// Whether a write was refused: the error a decompressor reports may
    /// not say why.
    refused: bool,
}

impl<W: Write> Write for Bounded<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written + buf.len() as u64 > self.max {
            self.refused = true;
            return Err(std::io::Error::other(format!(
                "larger than the lab's limit of {} bytes (limits.max_artifact_bytes)",
                self.max
            )));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Fetches `url` into `dst`; `progress(read, total)` hears how far it got.
pub fn fetch(
    url: &str,
    sha256: Option<&str>,
    compression: Compression,
    dst: &Path,
    max_bytes: u64,
    timeout: Duration,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<Fetched, DeployError> {
    let fail = |m: String| DeployError(m);
    let (source, total): (Box<dyn Read>, Option<u64>) = if let Some(path) =
        url.strip_prefix("file://")
    {
        let f = std::fs::File::open(path).map_err(|e| fail(format!("cannot read {path}: {e}")))?;
        let total = f.metadata().ok().map(|m| m.len());
        (Box::new(f), total)
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
        let total = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        (
            Box::new(
                resp.into_body()
                    .into_with_config()
                    .limit(max_bytes)
                    .reader(),
            ),
            total,
        )
    };
    let mut hashing = Hashing {
        inner: source.take(max_bytes + 1),
        hash: sha2::Sha256::new(),
        read: 0,
        total,
        next_report: 0,
        progress,
    };
    hashing.next_report = hashing.step();
    let file = std::fs::File::create(dst)
        .map_err(|e| fail(format!("cannot write {}: {e}", dst.display())))?;
    let mut out = Bounded {
        inner: std::io::BufWriter::new(file),
        written: 0,
        max: max_bytes,
        refused: false,
    };
    let undo = |e: String| fail(format!("{url}: {e}"));
    let undone: Result<(), DeployError> = (|| {
        match compression {
            Compression::None => {
                std::io::copy(&mut hashing, &mut out).map_err(|e| undo(e.to_string()))?;
            }
            Compression::Gz => {
                let mut r = flate2::read::GzDecoder::new(&mut hashing);
                std::io::copy(&mut r, &mut out).map_err(|e| undo(format!("gz: {e}")))?;
            }
            Compression::Xz => {
                let mut r = std::io::BufReader::new(&mut hashing);
                lzma_rs::xz_decompress(&mut r, &mut out).map_err(|e| undo(format!("xz: {e}")))?;
            }
            Compression::Zstd => {
                let mut r = ruzstd::decoding::StreamingDecoder::new(&mut hashing)
                    .map_err(|e| undo(format!("zstd: {e}")))?;
                std::io::copy(&mut r, &mut out).map_err(|e| undo(format!("zstd: {e}")))?;
            }
        }
        Ok(())
    })();
    if out.refused || hashing.read > max_bytes {
        return Err(fail(format!(
            "{url}: larger than the lab's limit of {max_bytes} bytes (limits.max_artifact_bytes)"
        )));
    }
    undone?;
    out.flush()
        .map_err(|e| fail(format!("{}: {e}", dst.display())))?;
    let written = out.written;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn compressed(c: Compression, data: &[u8]) -> Vec<u8> {
        match c {
            Compression::None => data.to_vec(),
            Compression::Gz => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Xz => {
                let mut out = Vec::new();
                lzma_rs::xz_compress(&mut std::io::Cursor::new(data), &mut out).unwrap();
                out
            }
            Compression::Zstd => ruzstd::encoding::compress_to_vec(
                std::io::Cursor::new(data.to_vec()),
                ruzstd::encoding::CompressionLevel::Fastest,
            ),
        }
    }

    type Progress = Vec<(u64, Option<u64>)>;

    fn fetch_file(
        c: Compression,
        bytes: &[u8],
        max: u64,
    ) -> (Result<Fetched, DeployError>, Vec<u8>, Progress) {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("in");
        std::fs::write(&src, bytes).unwrap();
        let dst = dir.path().join("out");
        let mut seen = Vec::new();
        let r = fetch(
            &format!("file://{}", src.display()),
            None,
            c,
            &dst,
            max,
            Duration::from_secs(5),
            &mut |read, total| seen.push((read, total)),
        );
        let out = std::fs::read(&dst).unwrap_or_default();
        (r, out, seen)
    }

    #[test]
    fn gz_xz_and_zstd_are_undone() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for c in [
            Compression::None,
            Compression::Gz,
            Compression::Xz,
            Compression::Zstd,
        ] {
            let packed = compressed(c, &data);
            let (r, out, _) = fetch_file(c, &packed, 10 << 20);
            let f = r.unwrap_or_else(|e| panic!("{c:?}: {e}"));
            assert_eq!(out, data, "{c:?}");
            assert_eq!(f.read, packed.len() as u64);
            assert_eq!(f.written, data.len() as u64);
        }
    }

    #[test]
    fn what_a_file_expands_to_is_bounded_too() {
        // 8 MB of zeros against a 1 MB limit: a decompression bomb in small
        // (gz and zstd pack it into a few KB; the limit holds on the output).
        let zeros = vec![0u8; 8 << 20];
        for c in [Compression::Gz, Compression::Xz, Compression::Zstd] {
            let packed = compressed(c, &zeros);
            let (r, _, _) = fetch_file(c, &packed, 1 << 20);
            let e = r.unwrap_err().to_string();
            assert!(e.contains("limits.max_artifact_bytes"), "{c:?}: {e}");
        }
    }

    #[test]
    fn corrupt_compressed_data_is_an_error_naming_the_format() {
        for (c, name) in [
            (Compression::Gz, "gz"),
            (Compression::Xz, "xz"),
            (Compression::Zstd, "zstd"),
        ] {
            let (r, _, _) = fetch_file(c, b"this is not compressed at all", 1 << 20);
            let e = r.unwrap_err().to_string();
            assert!(e.contains(name), "{c:?}: {e}");
        }
    }

    #[test]
    fn progress_is_reported_by_quarters_of_a_known_size() {
        let data = vec![7u8; 4 << 20];
        let (r, _, seen) = fetch_file(Compression::None, &data, 10 << 20);
        r.unwrap();
        assert!((3..=5).contains(&seen.len()), "{seen:?}");
        assert!(seen.iter().all(|(_, t)| *t == Some(data.len() as u64)));
        assert_eq!(seen.last().unwrap().0, data.len() as u64);
    }
}
