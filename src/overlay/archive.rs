//! The overlay's archive formats, written here: newc cpio (what the kernel
//! unpacks as an initramfs), ustar with pax records (what `tar` on a board
//! unpacks), and gzip over either (flate2).
//!
//! Both formats are small enough to write by hand, and no crate for them is
//! in the dependency tree. Every entry is owned by root (uid and gid 0), as
//! LAVA's overlay is; only permission bits are kept.
//!
//! newc: each entry is a 110-byte ASCII header (`070701` and thirteen
//! 8-digit hex fields), the name and its NUL padded to 4 bytes, then the
//! data padded to 4 bytes; `TRAILER!!!` ends the archive. The kernel reads
//! every header at a 4-byte boundary, and makes a file only if its
//! directory came before it: the entries arrive parents first.

use super::{Entry, EntryKind, OverlayError};
use std::io::Write;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

fn pad4(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

fn too_large(path: &str, what: &'static str) -> OverlayError {
    OverlayError::TooLargeForFormat {
        path: path.to_owned(),
        what,
    }
}

/// The entry's type bits and data.
fn type_and_data(e: &Entry) -> (u32, &[u8]) {
    match &e.kind {
        EntryKind::Dir => (S_IFDIR, &[]),
        EntryKind::File(d) => (S_IFREG, d),
        EntryKind::Symlink(t) => (S_IFLNK, t.as_bytes()),
    }
}

/// One newc header and name.
fn newc_header(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    name: &str,
) {
    let namesize = name.len() as u32 + 1;
    // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
    // rdevmajor, rdevminor, namesize, check.
    let fields = [ino, mode, 0, 0, nlink, mtime, size, 0, 0, 0, 0, namesize, 0];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

/// The entries as a newc cpio archive.
pub(super) fn newc<'a>(
    entries: impl Iterator<Item = (&'a str, &'a Entry)>,
) -> Result<Vec<u8>, OverlayError> {
    let mut out = Vec::new();
    for (i, (path, e)) in entries.enumerate() {
        let (kind, data) = type_and_data(e);
        let size = u32::try_from(data.len()).map_err(|_| too_large(path, "a file over 4 GiB"))?;
        let ino = u32::try_from(i + 1).map_err(|_| too_large(path, "over 4 billion entries"))?;
        let nlink = if kind == S_IFDIR { 2 } else { 1 };
        let mtime = u32::try_from(e.mtime).unwrap_or(u32::MAX);
        newc_header(
            &mut out,
            ino,
            kind | (e.mode & 0o7777),
            nlink,
            mtime,
            size,
            path,
        );
        out.extend_from_slice(data);
        pad4(&mut out);
    }
    newc_header(&mut out, 0, 0, 1, 0, 0, "TRAILER!!!");
    Ok(out)
}

/// A newc archive written entry by entry into `out`, for trees too large
/// to hold as [`Entry`]s first (a kernel's modules).
pub(super) struct NewcWriter<W: Write> {
    out: W,
    ino: u32,
    buf: Vec<u8>,
}

impl<W: Write> NewcWriter<W> {
    pub(super) fn new(out: W) -> Self {
        NewcWriter {
            out,
            ino: 0,
            buf: Vec::new(),
        }
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        mtime: u64,
        data: &[u8],
    ) -> std::io::Result<()> {
        self.ino = self.ino.wrapping_add(1);
        let size = u32::try_from(data.len())
            .map_err(|_| std::io::Error::other(format!("{path}: a file over 4 GiB")))?;
        let mtime = u32::try_from(mtime).unwrap_or(u32::MAX);
        self.buf.clear();
        newc_header(&mut self.buf, self.ino, mode, nlink, mtime, size, path);
        self.out.write_all(&self.buf)?;
        self.out.write_all(data)?;
        let pad = (4 - data.len() % 4) % 4;
        self.out.write_all(&[0u8; 3][..pad])
    }

    pub(super) fn dir(&mut self, path: &str, mode: u32, mtime: u64) -> std::io::Result<()> {
        self.entry(path, S_IFDIR | (mode & 0o7777), 2, mtime, &[])
    }

    pub(super) fn file(
        &mut self,
        path: &str,
        mode: u32,
        mtime: u64,
        data: &[u8],
    ) -> std::io::Result<()> {
        self.entry(path, S_IFREG | (mode & 0o7777), 1, mtime, data)
    }

    pub(super) fn symlink(&mut self, path: &str, mtime: u64, target: &str) -> std::io::Result<()> {
        self.entry(path, S_IFLNK | 0o777, 1, mtime, target.as_bytes())
    }

    /// Writes the trailer and gives the writer back.
    pub(super) fn finish(mut self) -> std::io::Result<W> {
        self.buf.clear();
        newc_header(&mut self.buf, 0, 0, 1, 0, 0, "TRAILER!!!");
        self.out.write_all(&self.buf)?;
        Ok(self.out)
    }
}

/// A ustar header block. `name` and `linkname` must fit (the caller puts
/// longer ones in a pax record first).
fn ustar_header(
    name: &str,
    prefix: &str,
    mode: u32,
    size: u64,
    mtime: u64,
    typeflag: u8,
    linkname: &str,
) -> [u8; 512] {
    let mut h = [0u8; 512];
    let put = |h: &mut [u8; 512], at: usize, len: usize, v: &[u8]| {
        h[at..at + v.len().min(len)].copy_from_slice(&v[..v.len().min(len)]);
    };
    // Octal numbers, zero-padded, with a NUL in the field's last byte.
    let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
        let s = format!("{v:0width$o}", width = len - 1);
        put(h, at, len - 1, s.as_bytes());
    };
    put(&mut h, 0, 100, name.as_bytes());
    octal(&mut h, 100, 8, u64::from(mode & 0o7777));
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, size);
    octal(&mut h, 136, 12, mtime);
    h[156] = typeflag;
    put(&mut h, 157, 100, linkname.as_bytes());
    put(&mut h, 257, 6, b"ustar\0");
    put(&mut h, 263, 2, b"00");
    put(&mut h, 265, 32, b"root");
    put(&mut h, 297, 32, b"root");
    octal(&mut h, 329, 8, 0);
    octal(&mut h, 337, 8, 0);
    put(&mut h, 345, 155, prefix.as_bytes());
    // The checksum counts its own field as spaces.
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// `name` as ustar's (prefix, name), if it fits.
fn split_name(name: &str) -> Option<(&str, &str)> {
    if name.len() <= 100 {
        return Some(("", name));
    }
    // The prefix ends at a `/`, which is dropped between the two fields.
    name.char_indices()
        .filter(|&(i, c)| c == '/' && i <= 155 && name.len() - i - 1 <= 100 && i > 0)
        .map(|(i, _)| (&name[..i], &name[i + 1..]))
        .next()
}

/// One pax record: `<len> <key>=<value>\n`, the length counting itself.
fn pax_record(key: &str, value: &str) -> String {
    let rest = format!(" {key}={value}\n");
    let mut len = rest.len() + 1;
    while len.to_string().len() + rest.len() != len {
        len = len.to_string().len() + rest.len();
    }
    format!("{len}{rest}")
}

fn pad512(out: &mut Vec<u8>) {
    let n = out.len().div_ceil(512) * 512;
    out.resize(n, 0);
}

/// The entries as a ustar archive; a name or link target too long for
/// ustar goes in a pax extended header before its entry.
pub(super) fn ustar<'a>(
    entries: impl Iterator<Item = (&'a str, &'a Entry)>,
) -> Result<Vec<u8>, OverlayError> {
    let mut out = Vec::new();
    for (path, e) in entries {
        let (typeflag, size, data, link) = match &e.kind {
            // A trailing `/` says directory to old readers too.
            EntryKind::Dir => (b'5', 0, &[][..], ""),
            EntryKind::File(d) => (b'0', d.len() as u64, &d[..], ""),
            EntryKind::Symlink(t) => (b'2', 0, &[][..], t.as_str()),
        };
        let name = if typeflag == b'5' {
            format!("{path}/")
        } else {
            path.to_owned()
        };
        if size >= 1 << 33 {
            return Err(too_large(path, "a file of 8 GiB or more"));
        }
        let split = split_name(&name);
        let mut pax = String::new();
        if split.is_none() {
            pax.push_str(&pax_record("path", &name));
        }
        if link.len() > 100 {
            pax.push_str(&pax_record("linkpath", link));
        }
        if !pax.is_empty() {
            let h = ustar_header(
                "././@PaxHeader",
                "",
                0o644,
                pax.len() as u64,
                e.mtime,
                b'x',
                "",
            );
            out.extend_from_slice(&h);
            out.extend_from_slice(pax.as_bytes());
            pad512(&mut out);
        }
        // With a pax path, the ustar name is only a fallback: its tail.
        let (prefix, short) = split.unwrap_or_else(|| {
            let mut cut = name.len().saturating_sub(99);
            while !name.is_char_boundary(cut) {
                cut += 1;
            }
            ("", &name[cut..])
        });
        let short_link = if link.len() > 100 { "" } else { link };
        let h = ustar_header(short, prefix, e.mode, size, e.mtime, typeflag, short_link);
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        pad512(&mut out);
    }
    out.extend_from_slice(&[0u8; 1024]);
    Ok(out)
}

/// `data` gzip'd, one member.
pub(super) fn gzip(data: &[u8]) -> Result<Vec<u8>, OverlayError> {
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 3),
        flate2::Compression::default(),
    );
    gz.write_all(data).map_err(OverlayError::Compress)?;
    gz.finish().map_err(OverlayError::Compress)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(data: &[u8]) -> Entry {
        Entry {
            mode: 0o644,
            mtime: 1_700_000_000,
            kind: EntryKind::File(data.to_vec()),
        }
    }

    fn hex(b: &[u8]) -> u32 {
        u32::from_str_radix(std::str::from_utf8(b).unwrap(), 16).unwrap()
    }

    #[test]
    fn newc_layout() {
        let dir = Entry {
            mode: 0o755,
            mtime: 5,
            kind: EntryKind::Dir,
        };
        let entries = [("a", dir), ("a/bc", file(b"hello"))];
        let out = newc(entries.iter().map(|(p, e)| (*p, e))).unwrap();
        // The directory: 110 + "a\0" = 112, already aligned; no data.
        assert_eq!(&out[..6], b"070701");
        assert_eq!(hex(&out[6..14]), 1, "ino");
        assert_eq!(hex(&out[14..22]), 0o040755, "mode");
        assert_eq!(hex(&out[38..46]), 2, "nlink");
        assert_eq!(hex(&out[46..54]), 5, "mtime");
        assert_eq!(hex(&out[54..62]), 0, "size");
        assert_eq!(hex(&out[94..102]), 2, "namesize");
        assert_eq!(&out[110..112], b"a\0");
        // The file: 110 + "a/bc\0" = 115, padded to 116; 5 bytes padded to 8.
        let f = &out[112..];
        assert_eq!(hex(&f[14..22]), 0o100644);
        assert_eq!(hex(&f[54..62]), 5);
        assert_eq!(&f[110..116], b"a/bc\0\0");
        assert_eq!(&f[116..124], b"hello\0\0\0");
        // The trailer, 4-aligned like everything else.
        let t = &f[124..];
        assert_eq!(&t[..6], b"070701");
        assert_eq!(&t[110..121], b"TRAILER!!!\0");
        assert_eq!(out.len() % 4, 0);
        assert_eq!(t.len(), 124);
    }

    #[test]
    fn ustar_checksums_and_long_names() {
        let long = format!("lava-1/{}/{}", "d".repeat(120), "f".repeat(120));
        let entries = [("short", file(b"x")), (long.as_str(), file(b"y"))];
        let out = ustar(entries.iter().map(|(p, e)| (*p, e))).unwrap();
        assert_eq!(out.len() % 512, 0);
        let h = &out[..512];
        let stored = u32::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        let mut copy = h.to_vec();
        copy[148..156].fill(b' ');
        assert_eq!(stored, copy.iter().map(|&b| u32::from(b)).sum::<u32>());
        // The long name needs a pax record, which names it whole.
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains(&format!(" path={long}\n")));
    }

    #[test]
    fn pax_record_length_counts_itself() {
        for n in [0, 1, 5, 90, 95, 96, 97, 990, 995, 996] {
            let r = pax_record("path", &"x".repeat(n));
            let (len, _) = r.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), r.len(), "{r}");
        }
    }
}
