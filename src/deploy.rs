//! Fetching a job's artifacts into its TFTP directory.
//!
//! `file://` paths are read, `http(s)://` URLs downloaded (ureq, with a
//! timeout and a size limit); a `sha256sum` is checked on the bytes as they
//! arrive (LAVA checks the file as downloaded, before decompression), and
//! `gz`, `xz` or `zstd` is undone on the way to disk, with the same limit on
//! what it expands to. Progress is reported at each quarter of a file of
//! known size (else every 64 MiB). Everything here blocks: callers run it
//! on the blocking pool.

use crate::cache::{hex, ArtifactCache, UrlEntry};
use crate::job::Compression;
use sha2::Digest;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// How much of a download is written to its file at once. `std::io::copy`
/// alone writes 8 KiB at a time: about 4 000 writes for the rig's 33 MB
/// kernel, where this takes about 130.
const WRITE_BUFFER: usize = 256 << 10;

/// Why an artifact could not be deployed, in words for the job's error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DeployError(pub String);

/// What was fetched: bytes read, bytes written for the board, and whether
/// they came from the artifact cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    pub read: u64,
    pub written: u64,
    pub cached: bool,
}

/// Progress without a known size is reported this often.
const PROGRESS_EVERY: u64 = 64 << 20;

/// Whose rights and which directories a `file://` artifact is read with
/// (see [`crate::local_file`]).
#[derive(Debug, Clone, Default)]
pub struct LocalRights {
    /// The submitter; None for labd's own jobs (health checks).
    pub who: Option<crate::model::Identity>,
    pub roots: crate::local_file::FileRoots,
}

/// Reads through, hashing what passes and reporting progress, and gives up
/// once `deadline` passed: the runner stops waiting at its deploy timeout,
/// and the blocking-pool thread doing the reading must end too, not go on
/// with a slow source for as long as it likes.
struct Hashing<'a, R> {
    inner: R,
    deadline: std::time::Instant,
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
        if std::time::Instant::now() > self.deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the deploy's timeout passed",
            ));
        }
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

/// An artifact's bytes as they arrive, with what the server said of them.
struct Body {
    reader: Box<dyn Read>,
    total: Option<u64>,
    etag: Option<String>,
    last_modified: Option<String>,
}

/// Opens `url`. With `known` the request is conditional, and `None` means
/// the server answered 304: `known` is still what the URL gives.
fn open_source(
    url: &str,
    timeout: Duration,
    max_bytes: u64,
    known: Option<&UrlEntry>,
    local: &LocalRights,
) -> Result<Option<Body>, DeployError> {
    let fail = |m: String| DeployError(m);
    if let Some(path) = url.strip_prefix("file://") {
        let opened = crate::local_file::open(path, local.who.as_ref(), &local.roots)
            .map_err(|e| fail(e.to_string()))?;
        return Ok(Some(Body {
            reader: Box::new(opened.file),
            total: Some(opened.len),
            etag: None,
            last_modified: None,
        }));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent.get(url);
    if let Some(k) = known {
        if let Some(e) = &k.etag {
            req = req.header("If-None-Match", e);
        }
        if let Some(m) = &k.last_modified {
            req = req.header("If-Modified-Since", m);
        }
    }
    let resp = req.call().map_err(|e| fail(format!("{url}: {e}")))?;
    if resp.status() == 304 && known.is_some() {
        return Ok(None);
    }
    if !resp.status().is_success() {
        return Err(fail(format!(
            "{url}: the server answered {}",
            resp.status()
        )));
    }
    let header = |h: &str| {
        resp.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let total = header("content-length").and_then(|v| v.parse().ok());
    let (etag, last_modified) = (header("etag"), header("last-modified"));
    Ok(Some(Body {
        reader: Box::new(
            resp.into_body()
                .into_with_config()
                .limit(max_bytes)
                .reader(),
        ),
        total,
        etag,
        last_modified,
    }))
}

fn too_large(url: &str, max_bytes: u64) -> DeployError {
    DeployError(format!(
        "{url}: larger than the lab's limit of {max_bytes} bytes (limits.max_artifact_bytes)"
    ))
}

/// Undoes `compression` from `reader` into `dst`; returns the bytes written.
/// `read_so_far` tells whether the input went over the limit.
fn unpack(
    url: &str,
    reader: &mut dyn Read,
    compression: Compression,
    dst: &Path,
    max_bytes: u64,
    input_over: &dyn Fn() -> bool,
) -> Result<u64, DeployError> {
    let fail = |m: String| DeployError(m);
    let file = std::fs::File::create(dst)
        .map_err(|e| fail(format!("cannot write {}: {e}", dst.display())))?;
    let mut out = Bounded {
        inner: std::io::BufWriter::with_capacity(WRITE_BUFFER, file),
        written: 0,
        max: max_bytes,
        refused: false,
    };
    let undo = |e: String| fail(format!("{url}: {e}"));
    let undone: Result<(), DeployError> = (|| {
        match compression {
            Compression::None => {
                std::io::copy(reader, &mut out).map_err(|e| undo(e.to_string()))?;
            }
            Compression::Gz => {
                let mut r = flate2::read::GzDecoder::new(reader);
                std::io::copy(&mut r, &mut out).map_err(|e| undo(format!("gz: {e}")))?;
            }
            Compression::Xz => {
                let mut r = std::io::BufReader::new(reader);
                lzma_rs::xz_decompress(&mut r, &mut out).map_err(|e| undo(format!("xz: {e}")))?;
            }
            Compression::Zstd => {
                let mut r = ruzstd::decoding::StreamingDecoder::new(reader)
                    .map_err(|e| undo(format!("zstd: {e}")))?;
                std::io::copy(&mut r, &mut out).map_err(|e| undo(format!("zstd: {e}")))?;
            }
        }
        Ok(())
    })();
    // A decompressor's own error may hide that the limit stopped it.
    if out.refused || input_over() {
        return Err(too_large(url, max_bytes));
    }
    undone?;
    out.flush()
        .map_err(|e| fail(format!("{}: {e}", dst.display())))?;
    Ok(out.written)
}

fn check_sha(url: &str, want: Option<&str>, got: &str) -> Result<(), DeployError> {
    match want {
        Some(want) if !want.eq_ignore_ascii_case(got) => Err(DeployError(format!(
            "{url}: sha256 mismatch: expected {want}, got {got}"
        ))),
        _ => Ok(()),
    }
}

/// How a cached artifact becomes the job's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A copy of its own: the board may write to it (a QEMU `-drive`).
    Copy,
    /// A hard link to the cache's blob when it needs no unpacking: only
    /// ever read (served over TFTP). A 33 MB kernel then costs neither a
    /// copy nor, when the job's directory goes, freeing its pages.
    Link,
}

/// Fetches `url` into `dst`; `progress(read, total)` hears how far it got.
/// With a cache, http(s) downloads are kept and reused (see [`crate::cache`]),
/// and `placement` says whether the job's file may share the cache's blob.
#[allow(clippy::too_many_arguments)]
pub fn fetch(
    url: &str,
    sha256: Option<&str>,
    compression: Compression,
    dst: &Path,
    max_bytes: u64,
    timeout: Duration,
    progress: &mut dyn FnMut(u64, Option<u64>),
    cache: Option<&ArtifactCache>,
    placement: Placement,
    local: &LocalRights,
) -> Result<Fetched, DeployError> {
    let fail = |m: String| DeployError(m);
    let deadline = std::time::Instant::now() + timeout;
    let cache = cache.filter(|_| !url.starts_with("file://"));
    let from_blob = |blob: &Path| -> Result<Fetched, DeployError> {
        let mut f =
            std::fs::File::open(blob).map_err(|e| fail(format!("{}: {e}", blob.display())))?;
        let read = f.metadata().map(|m| m.len()).unwrap_or(0);
        let linked = |src: &Path| -> Option<Fetched> {
            let len = std::fs::metadata(src).ok()?.len();
            (len <= max_bytes && std::fs::hard_link(src, dst).is_ok()).then_some(Fetched {
                read,
                written: len,
                cached: true,
            })
        };
        // Only read (TFTP): a link to the cache's file where the filesystem
        // allows one, unpacked once into the cache if it must be unpacked.
        if placement == Placement::Link {
            if compression == Compression::None {
                if let Some(done) = linked(blob) {
                    return Ok(done);
                }
            } else if let (Some(c), Some(sha)) = (cache, blob.file_name().and_then(|n| n.to_str()))
            {
                let kind = compression.as_str();
                if let Some(done) = c.unpacked(sha, kind).and_then(|u| linked(&u)) {
                    return Ok(done);
                }
                let tmp = c
                    .temp_file()
                    .map_err(|e| fail(format!("artifact cache: {e}")))?;
                unpack(url, &mut f, compression, tmp.path(), max_bytes, &|| false)?;
                let unpacked = c
                    .insert_unpacked(tmp, sha, kind)
                    .map_err(|e| fail(format!("artifact cache: {e}")))?;
                if let Some(done) = linked(&unpacked) {
                    return Ok(done);
                }
                // No link possible: a copy of the unpacked file.
                let mut u = std::fs::File::open(&unpacked)
                    .map_err(|e| fail(format!("{}: {e}", unpacked.display())))?;
                let written = unpack(url, &mut u, Compression::None, dst, max_bytes, &|| false)?;
                return Ok(Fetched {
                    read,
                    written,
                    cached: true,
                });
            }
        }
        let written = unpack(url, &mut f, compression, dst, max_bytes, &|| false)?;
        Ok(Fetched {
            read,
            written,
            cached: true,
        })
    };
    // The job says what the bytes are: the cache has them or it does not.
    if let (Some(c), Some(want)) = (cache, sha256) {
        if let Some(blob) = c.blob(want) {
            return from_blob(&blob);
        }
    }
    let known = cache.and_then(|c| c.entry(url));
    let mut body = open_source(url, timeout, max_bytes, known.as_ref(), local)?;
    if let (None, Some(k)) = (&body, &known) {
        // 304: the cached blob is still what the URL gives.
        check_sha(url, sha256, &k.sha256)?;
        if let Some(blob) = cache.and_then(|c| c.blob(&k.sha256)) {
            return from_blob(&blob);
        }
        // Evicted in between: ask again, unconditionally.
        body = open_source(url, timeout, max_bytes, None, local)?;
    }
    // An unconditional request answers with a body or an error.
    let Body {
        reader,
        total,
        etag,
        last_modified,
    } = body.ok_or_else(|| fail(format!("{url}: the server answered 304 to a plain GET")))?;
    let mut hashing = Hashing {
        inner: reader.take(max_bytes + 1),
        deadline,
        hash: sha2::Sha256::new(),
        read: 0,
        total,
        next_report: 0,
        progress,
    };
    hashing.next_report = hashing.step();
    match cache {
        // Streamed straight through: hashed, decompressed and written at once.
        None => {
            let over = std::cell::Cell::new(false);
            let written = {
                let mut watch = Watch {
                    inner: &mut hashing,
                    max: max_bytes,
                    over: &over,
                };
                unpack(url, &mut watch, compression, dst, max_bytes, &|| over.get())?
            };
            if hashing.read > max_bytes {
                return Err(too_large(url, max_bytes));
            }
            let got = hex(&hashing.hash.clone().finalize());
            check_sha(url, sha256, &got)?;
            Ok(Fetched {
                read: hashing.read,
                written,
                cached: false,
            })
        }
        // Downloaded into the cache first, checked, then unpacked from there.
        Some(c) => {
            let mut tmp = c
                .temp_file()
                .map_err(|e| fail(format!("artifact cache: {e}")))?;
            let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER, tmp.as_file_mut());
            std::io::copy(&mut hashing, &mut out)
                .and_then(|_| out.flush())
                .map_err(|e| fail(format!("{url}: {e}")))?;
            drop(out);
            if hashing.read > max_bytes {
                return Err(too_large(url, max_bytes));
            }
            let got = hex(&hashing.hash.clone().finalize());
            check_sha(url, sha256, &got)?;
            let blob = c
                .insert(
                    tmp,
                    &UrlEntry {
                        url: url.to_owned(),
                        sha256: got,
                        etag,
                        last_modified,
                    },
                )
                .map_err(|e| fail(format!("artifact cache: {e}")))?;
            Ok(Fetched {
                cached: false,
                ..from_blob(&blob)?
            })
        }
    }
}

/// Notes when the input went over the limit, for [`unpack`].
struct Watch<'a, R> {
    inner: R,
    max: u64,
    over: &'a std::cell::Cell<bool>,
}

impl<R: Read> Read for Watch<'_, &mut Hashing<'_, R>> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.inner.read > self.max {
            self.over.set(true);
        }
        Ok(n)
    }
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
            None,
            Placement::Copy,
            &LocalRights {
                who: None,
                roots: crate::local_file::FileRoots::new(&[dir.path().to_path_buf()]),
            },
        );
        let out = std::fs::read(&dst).unwrap_or_default();
        (r, out, seen)
    }

    /// A cache at `dir/cache` holding `bytes` as what `url` gave, and their sha256.
    fn cache_holding(
        dir: &Path,
        url: &str,
        bytes: &[u8],
    ) -> (ArtifactCache, String, std::path::PathBuf) {
        let cache = ArtifactCache::open(&dir.join("cache"), 1 << 30).unwrap();
        let sha = hex(&sha2::Sha256::digest(bytes));
        let mut t = cache.temp_file().unwrap();
        t.write_all(bytes).unwrap();
        let entry = UrlEntry {
            url: url.into(),
            sha256: sha.clone(),
            etag: None,
            last_modified: None,
        };
        let blob = cache.insert(t, &entry).unwrap();
        (cache, sha, blob)
    }

    /// Fetches `url` by its sha256 (the cache answers, no server is asked)
    /// into `dst`.
    fn from_cache(
        cache: &ArtifactCache,
        url: &str,
        sha: &str,
        compression: Compression,
        dst: &Path,
        placement: Placement,
        max: u64,
    ) -> Result<Fetched, DeployError> {
        fetch(
            url,
            Some(sha),
            compression,
            dst,
            max,
            Duration::from_secs(5),
            &mut |_, _| {},
            Some(cache),
            placement,
            &LocalRights::default(),
        )
    }

    /// What TFTP serves shares the cache's blob; a QEMU image the board may
    /// write to, or an artifact that is unpacked, is a file of its own.
    #[test]
    fn a_cached_artifact_is_linked_only_where_it_is_only_read() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let kernel = b"kernel bytes".repeat(1000);
        let url = "http://127.0.0.1:9/Image";
        let (cache, sha, blob) = cache_holding(dir.path(), url, &kernel);
        let inode = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let get = |name: &str, placement: Placement, max: u64| {
            let dst = dir.path().join(name);
            let r = from_cache(&cache, url, &sha, Compression::None, &dst, placement, max);
            (r, dst)
        };
        let (r, linked) = get("tftp", Placement::Link, 1 << 20);
        assert!(r.unwrap().cached);
        assert_eq!(inode(&linked), inode(&blob));
        assert_eq!(std::fs::read(&linked).unwrap(), kernel);
        let (r, copied) = get("image", Placement::Copy, 1 << 20);
        assert_eq!(r.unwrap().written, kernel.len() as u64);
        assert_ne!(inode(&copied), inode(&blob));
        assert_eq!(std::fs::read(&copied).unwrap(), kernel);
        // The size limit holds for a link too.
        let (r, _) = get("small", Placement::Link, 100);
        assert!(r.unwrap_err().to_string().contains("100"));
    }

    /// A ramdisk every job boots is decompressed once: later jobs link the
    /// cache's unpacked copy; the size limit still holds for it.
    #[test]
    fn a_compressed_artifact_is_unpacked_once_into_the_cache() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let ramdisk = b"cpio archive bytes ".repeat(5000);
        let packed = compressed(Compression::Gz, &ramdisk);
        let url = "http://127.0.0.1:9/initramfs.cpio.gz";
        let (cache, sha, _) = cache_holding(dir.path(), url, &packed);
        let inode = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let get = |name: &str, placement: Placement, max: u64| {
            let dst = dir.path().join(name);
            let r = from_cache(&cache, url, &sha, Compression::Gz, &dst, placement, max);
            (r, dst)
        };
        let (r, first) = get("job1", Placement::Link, 1 << 20);
        let r = r.unwrap();
        assert_eq!(
            (r.read, r.written),
            (packed.len() as u64, ramdisk.len() as u64)
        );
        assert_eq!(std::fs::read(&first).unwrap(), ramdisk);
        let unpacked = cache.unpacked(&sha, "gz").expect("kept unpacked");
        assert_eq!(inode(&first), inode(&unpacked));
        // The next job links the same unpacked file.
        let (r, second) = get("job2", Placement::Link, 1 << 20);
        assert_eq!(r.unwrap().written, ramdisk.len() as u64);
        assert_eq!(inode(&second), inode(&unpacked));
        // A file the board may write to is still one of its own.
        let (r, image) = get("image", Placement::Copy, 1 << 20);
        assert_eq!(r.unwrap().written, ramdisk.len() as u64);
        assert_ne!(inode(&image), inode(&unpacked));
        assert_eq!(std::fs::read(&image).unwrap(), ramdisk);
        // A lower limit refuses the cached unpacked file too.
        let (r, _) = get("small", Placement::Link, 1000);
        assert!(r.unwrap_err().to_string().contains("1000"));
        // Both forms count in the cache's usage.
        assert_eq!(cache.usage().0, 2);
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
