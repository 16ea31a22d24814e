//! LAVA's `modules` deploy: a tar of a kernel's `lib/modules` tree, turned
//! into one more gzip'd newc archive to append to the ramdisk, as the
//! overlay is (see [`super::ramdisk`]). The user's ramdisk is never
//! unpacked and repacked, and the tar is never unpacked on the lab host:
//! its entries are read and written straight into the archive.
//!
//! What is kept: directories, regular files and symbolic links, under
//! relative paths without `..`. A hard link becomes a symbolic link to its
//! target, which module loading follows. Device nodes and FIFOs have no
//! place in a modules tree and are left out, counted in the summary.
//!
//! A directory with one part (`lib`, `usr`) is not written: every root
//! filesystem has it already, and on a merged-/usr system `lib` is a
//! symbolic link to `usr/lib` that a directory entry would replace (the
//! kernel's unpacker removes what stands in the way of an entry of another
//! type). The files below it still land through the link.

use super::{archive, OverlayError};
use std::io::Read;

/// What [`modules_cpio_gz`] made.
#[derive(Debug)]
pub struct ModulesArchive {
    /// The gzip'd newc archive.
    pub cpio_gz: Vec<u8>,
    pub files: u64,
    pub bytes: u64,
    /// Entries left out (devices, FIFOs), by path.
    pub skipped: Vec<String>,
}

fn bad(msg: impl Into<String>) -> OverlayError {
    OverlayError::Modules(msg.into())
}

/// The path an entry lands at, relative to the root, or why it may not.
fn clean_path(raw: &[u8]) -> Result<Option<String>, OverlayError> {
    let s = std::str::from_utf8(raw).map_err(|_| {
        bad(format!(
            "`{}`: a path that is not UTF-8",
            raw.escape_ascii()
        ))
    })?;
    let mut parts = Vec::new();
    if s.starts_with('/') {
        return Err(bad(format!("`{s}`: an absolute path")));
    }
    for p in s.split('/') {
        match p {
            "" | "." => {}
            ".." => return Err(bad(format!("`{s}`: a path that climbs out with `..`"))),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    Ok(Some(parts.join("/")))
}

/// Reads the tar in `tar` (already decompressed) and writes its modules
/// tree as a gzip'd newc archive.
pub fn modules_cpio_gz(tar: impl Read) -> Result<ModulesArchive, OverlayError> {
    let mut archive = tar::Archive::new(tar);
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut w = archive::NewcWriter::new(gz);
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut skipped = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("reading the tar: {e}")))?;
        let raw = entry.path_bytes().into_owned();
        let Some(path) = clean_path(&raw)? else {
            continue;
        };
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let mtime = header.mtime().unwrap_or(0);
        let kind = header.entry_type();
        if kind.is_dir() {
            if path.contains('/') {
                w.dir(&path, mode, mtime).map_err(OverlayError::Compress)?;
            }
        } else if kind.is_file() || kind.is_contiguous() {
            let size = entry.size();
            if size > u64::from(u32::MAX) {
                return Err(OverlayError::TooLargeForFormat {
                    path,
                    what: "a file over 4 GiB",
                });
            }
            let mut data = Vec::with_capacity(size as usize);
            entry
                .read_to_end(&mut data)
                .map_err(|e| bad(format!("reading {path} from the tar: {e}")))?;
            w.file(&path, mode, mtime, &data)
                .map_err(OverlayError::Compress)?;
            files += 1;
            bytes += data.len() as u64;
        } else if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| bad(format!("{path}: a link without a target")))?
                .into_owned();
            let target = if kind.is_hard_link() {
                // A hard link names a path in the archive: made absolute,
                // a symbolic link reaches the same file.
                let t = clean_path(&target)?
                    .ok_or_else(|| bad(format!("{path}: a hard link to nothing")))?;
                format!("/{t}")
            } else {
                String::from_utf8(target)
                    .map_err(|_| bad(format!("{path}: a link target that is not UTF-8")))?
            };
            w.symlink(&path, mtime, &target)
                .map_err(OverlayError::Compress)?;
        } else if kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink()
        {
            // The tar crate folds these into the entries they describe.
        } else {
            skipped.push(path);
        }
    }
    let gz = w.finish().map_err(OverlayError::Compress)?;
    let cpio_gz = gz.finish().map_err(OverlayError::Compress)?;
    if files == 0 {
        return Err(bad("the tar holds no files"));
    }
    Ok(ModulesArchive {
        cpio_gz,
        files,
        bytes,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            // Written raw, so that hostile paths reach the reader as they are.
            let name = path.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn names(gz: &[u8]) -> Vec<String> {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut raw)
            .unwrap();
        let mut out = Vec::new();
        let mut at = 0;
        while at + 110 <= raw.len() {
            let field = |i: usize| {
                u32::from_str_radix(
                    std::str::from_utf8(&raw[at + 6 + i * 8..at + 14 + i * 8]).unwrap(),
                    16,
                )
                .unwrap() as usize
            };
            let (size, namesize) = (field(6), field(11));
            let name = String::from_utf8(raw[at + 110..at + 110 + namesize - 1].to_vec()).unwrap();
            let data_at = (at + 110 + namesize).next_multiple_of(4);
            at = (data_at + size).next_multiple_of(4);
            if name == "TRAILER!!!" {
                break;
            }
            out.push(name);
        }
        out
    }

    #[test]
    fn a_modules_tree_becomes_a_cpio_without_its_top_directory() {
        use tar::EntryType::*;
        let t = tar_of(&[
            ("./", Directory, b"", None),
            ("./lib/", Directory, b"", None),
            ("./lib/modules/", Directory, b"", None),
            ("./lib/modules/6.1/", Directory, b"", None),
            ("./lib/modules/6.1/a.ko", Regular, b"ko!", None),
            (
                "./lib/modules/6.1/b.ko",
                Link,
                b"",
                Some("lib/modules/6.1/a.ko"),
            ),
            ("./lib/modules/6.1/build", Symlink, b"", Some("/usr/src/x")),
            ("./lib/modules/6.1/fifo", Fifo, b"", None),
        ]);
        let m = modules_cpio_gz(&t[..]).unwrap();
        assert_eq!(
            names(&m.cpio_gz),
            [
                "lib/modules",
                "lib/modules/6.1",
                "lib/modules/6.1/a.ko",
                "lib/modules/6.1/b.ko",
                "lib/modules/6.1/build"
            ]
        );
        assert_eq!((m.files, m.bytes), (1, 3));
        assert_eq!(m.skipped, ["lib/modules/6.1/fifo"]);
    }

    #[test]
    fn hostile_paths_and_empty_tars_are_refused() {
        use tar::EntryType::*;
        for (path, link, why) in [
            ("/lib/modules/x.ko", None, "absolute"),
            ("lib/../../etc/passwd", None, "climbs out"),
            (
                "lib/modules/x.ko",
                Some("../../../etc/shadow"),
                "climbs out",
            ),
        ] {
            let kind = if link.is_some() { Link } else { Regular };
            let t = tar_of(&[(path, kind, b"x", link)]);
            let e = modules_cpio_gz(&t[..]).unwrap_err().to_string();
            assert!(e.contains(why), "{path}: {e}");
        }
        let t = tar_of(&[("lib/", Directory, b"", None)]);
        assert!(modules_cpio_gz(&t[..])
            .unwrap_err()
            .to_string()
            .contains("no files"));
        assert!(modules_cpio_gz(&b"not a tar at all, just some bytes"[..]).is_err());
    }
}
