//! The artifact cache: downloads shared by jobs, on disk, by content.
//!
//! A downloaded artifact is kept as `blobs/<sha256 of its bytes>` (as
//! downloaded, before decompression), and `urls/<sha256 of the URL>.json`
//! remembers which blob a URL gave last and the server's validators (ETag,
//! Last-Modified). A job that names the artifact's `sha256sum` is served
//! from the blob without asking the server at all; one that does not asks
//! the server whether the URL changed (a conditional GET) and reuses the
//! blob on `304 Not Modified`. The blobs' total size is kept under a cap by
//! dropping the least recently used (a hit refreshes a blob's mtime).
//!
//! This module owns the cache directory and nothing else. A blob is only
//! ever created by renaming a complete, checked download into place, so a
//! crash leaves whole blobs or a stray file in `tmp/` (removed at open).
//! An artifact the job asks to be decompressed is kept unpacked as well,
//! as `blobs/<sha256 of the packed bytes>.unpacked-<gz|xz|zstd>`, so a
//! ramdisk every job boots is decompressed once, not once per job. Both
//! kinds share the cap and the eviction order.
//! Everything here blocks: callers run it on the blocking pool.
//!
//! ## Invariants
//!
//! Owns its directory; a blob appears only by renaming a complete,
//! checksum-checked download into place, and its name is its content's
//! sha256; an entry whose blob is gone is no entry. A job's own `sha256sum`
//! is authoritative: a blob with that digest is used whatever the URL. A
//! blob is never written after it is in place, so what only TFTP reads (a
//! kernel, ramdisk or DTB needing no unpacking) is hard-linked into the
//! job's directory (`deploy::Placement::Link`). One that must be unpacked is
//! unpacked once into `<sha256>.unpacked-<format>` (complete, then renamed)
//! and linked the same way; both kinds share the cap and the LRU order. A
//! QEMU image, which the board may write, is always a copy. An evicted
//! blob's disk space comes back when the last job linking it ends.

use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// What a URL gave the last time it was downloaded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UrlEntry {
    pub url: String,
    pub sha256: String,
    #[serde(default)]
    pub etag: Option<String>,
    #[serde(default)]
    pub last_modified: Option<String>,
}

#[derive(Debug)]
pub struct ArtifactCache {
    dir: PathBuf,
    max_bytes: u64,
    /// Serializes eviction passes (insertions are atomic renames).
    evicting: Mutex<()>,
}

/// Whether `s` is a sha256 in hex, as blobs are named.
fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `p` if it exists, made recent for eviction.
fn touched(p: PathBuf) -> Option<PathBuf> {
    let f = std::fs::File::options().append(true).open(&p).ok()?;
    let _ = f.set_modified(SystemTime::now());
    Some(p)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ArtifactCache {
    /// Opens (creating) the cache at `dir`, dropping unfinished downloads.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<ArtifactCache> {
        for sub in ["blobs", "urls", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        for e in std::fs::read_dir(dir.join("tmp"))?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        Ok(ArtifactCache {
            dir: dir.to_path_buf(),
            max_bytes,
            evicting: Mutex::new(()),
        })
    }

    fn blob_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("blobs").join(sha256)
    }

    fn entry_path(&self, url: &str) -> PathBuf {
        let key = hex(&sha2::Sha256::digest(url.as_bytes()));
        self.dir.join("urls").join(format!("{key}.json"))
    }

    /// The blob with these bytes, if cached; using it makes it recent.
    pub fn blob(&self, sha256: &str) -> Option<PathBuf> {
        // Only a well-formed digest names a file here.
        if !is_digest(sha256) {
            return None;
        }
        touched(self.blob_path(&sha256.to_ascii_lowercase()))
    }

    /// The unpacked form of the blob `sha256` (undone `compression`, such
    /// as `gz`), if cached; using it makes it recent.
    pub fn unpacked(&self, sha256: &str, compression: &str) -> Option<PathBuf> {
        touched(self.unpacked_path(sha256, compression)?)
    }

    fn unpacked_path(&self, sha256: &str, compression: &str) -> Option<PathBuf> {
        // Only a well-formed digest and a plain word name a file here.
        let word = !compression.is_empty() && compression.bytes().all(|b| b.is_ascii_lowercase());
        (is_digest(sha256) && word).then(|| {
            self.dir.join("blobs").join(format!(
                "{}.unpacked-{compression}",
                sha256.to_ascii_lowercase()
            ))
        })
    }

    /// Moves a complete unpacking of blob `sha256` into place, and evicts
    /// what no longer fits.
    pub fn insert_unpacked(
        &self,
        unpacked: tempfile::NamedTempFile,
        sha256: &str,
        compression: &str,
    ) -> std::io::Result<PathBuf> {
        let path = self
            .unpacked_path(sha256, compression)
            .ok_or_else(|| std::io::Error::other(format!("not a blob name: {sha256}")))?;
        unpacked.persist(&path).map_err(|e| e.error)?;
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            self.evict(name);
        }
        Ok(path)
    }

    /// What `url` gave last, if its blob is still here.
    pub fn entry(&self, url: &str) -> Option<UrlEntry> {
        let text = std::fs::read(self.entry_path(url)).ok()?;
        let e: UrlEntry = serde_json::from_slice(&text).ok()?;
        (e.url == url && self.blob_path(&e.sha256).exists()).then_some(e)
    }

    /// A new file for a download in progress.
    pub fn temp_file(&self) -> std::io::Result<tempfile::NamedTempFile> {
        tempfile::NamedTempFile::new_in(self.dir.join("tmp"))
    }

    /// Moves a complete download into place as the blob of `entry.sha256`,
    /// records the URL's entry, and evicts what no longer fits.
    pub fn insert(
        &self,
        download: tempfile::NamedTempFile,
        entry: &UrlEntry,
    ) -> std::io::Result<PathBuf> {
        let blob = self.blob_path(&entry.sha256);
        download.persist(&blob).map_err(|e| e.error)?;
        let tmp = self.temp_file()?;
        std::fs::write(tmp.path(), serde_json::to_vec(entry)?)?;
        tmp.persist(self.entry_path(&entry.url))
            .map_err(|e| e.error)?;
        self.evict(&entry.sha256);
        Ok(blob)
    }

    /// Drops the least recently used blobs (packed or unpacked) until the
    /// rest fit the cap; the file just added (`keep`, a name in `blobs/`)
    /// stays even if it alone is over.
    fn evict(&self, keep: &str) {
        let _one_at_a_time = self.evicting.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(rd) = std::fs::read_dir(self.dir.join("blobs")) else {
            return;
        };
        let mut blobs: Vec<(SystemTime, u64, PathBuf)> = rd
            .flatten()
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = blobs.iter().map(|b| b.1).sum();
        blobs.sort();
        for (_, size, path) in blobs {
            if total <= self.max_bytes {
                break;
            }
            if path.file_name().is_some_and(|n| n == keep) {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                tracing::info!(blob = %path.display(), size, "artifact cache: evicted");
                total = total.saturating_sub(size);
            }
        }
    }

    /// Blobs and their bytes, for metrics.
    pub fn usage(&self) -> (usize, u64) {
        let Ok(rd) = std::fs::read_dir(self.dir.join("blobs")) else {
            return (0, 0);
        };
        rd.flatten()
            .filter_map(|e| e.metadata().ok())
            .fold((0, 0), |(n, b), m| (n + 1, b + m.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn put(c: &ArtifactCache, url: &str, bytes: &[u8]) -> String {
        let sha = hex(&sha2::Sha256::digest(bytes));
        let mut t = c.temp_file().unwrap();
        t.write_all(bytes).unwrap();
        c.insert(
            t,
            &UrlEntry {
                url: url.into(),
                sha256: sha.clone(),
                etag: Some("\"v1\"".into()),
                last_modified: None,
            },
        )
        .unwrap();
        sha
    }

    #[test]
    fn blobs_are_found_by_content_and_urls_by_their_entry() {
        let d = tempfile::tempdir().unwrap();
        let c = ArtifactCache::open(d.path(), 1 << 20).unwrap();
        let sha = put(&c, "http://x/Image", b"kernel");
        assert_eq!(std::fs::read(c.blob(&sha).unwrap()).unwrap(), b"kernel");
        let e = c.entry("http://x/Image").unwrap();
        assert_eq!(
            (e.sha256.as_str(), e.etag.as_deref()),
            (sha.as_str(), Some("\"v1\""))
        );
        assert!(c.entry("http://x/other").is_none());
        assert!(c.blob(&"0".repeat(64)).is_none());
        assert!(c.blob("../../etc/passwd").is_none());
    }

    #[test]
    fn the_least_recently_used_blobs_go_first() {
        let d = tempfile::tempdir().unwrap();
        let c = ArtifactCache::open(d.path(), 250).unwrap();
        let a = put(&c, "http://x/a", &[1u8; 100]);
        let b = put(&c, "http://x/b", &[2u8; 100]);
        // `a` is used again, so `b` is now the least recent.
        let old = SystemTime::now() - std::time::Duration::from_secs(60);
        std::fs::File::options()
            .append(true)
            .open(c.blob_path(&b))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(c.blob(&a).is_some());
        let n = put(&c, "http://x/c", &[3u8; 100]);
        assert!(c.blob(&b).is_none(), "the least recent blob stays");
        assert!(c.blob(&a).is_some() && c.blob(&n).is_some());
        assert_eq!(c.usage(), (2, 200));
        // An entry whose blob went is no entry.
        assert!(c.entry("http://x/b").is_none());
    }

    #[test]
    fn unfinished_downloads_are_dropped_at_open() {
        let d = tempfile::tempdir().unwrap();
        let c = ArtifactCache::open(d.path(), 1 << 20).unwrap();
        let t = c.temp_file().unwrap();
        let (_, path) = t.keep().unwrap();
        drop(c);
        ArtifactCache::open(d.path(), 1 << 20).unwrap();
        assert!(!path.exists());
    }
}
