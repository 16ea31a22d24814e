//! Console log segments: the store's append-only files for console bytes.
//!
//! Console bytes are nearly all of what a lab stores: a streaming board
//! sends 11.5 KB a second. Kept in sled, every 5.5 KB chunk cost about a
//! quarter of a millisecond of tree maintenance: at 1000 streaming boards a
//! quarter of a core, and a job's Finished state waited behind it. So the
//! bytes are appended to segment files (`NNNNNNNNNN.seg` in the store's
//! `logs/` directory), and sled keeps one 16-byte index entry per chunk:
//! which segment, where in it, how long.
//!
//! Only the store's writer thread appends. It inserts a chunk's index entry
//! only after the chunk's bytes are on disk (`fdatasync`), so no entry ever
//! points at bytes a crash could lose. Bytes written but never indexed (the
//! daemon killed in between) are dead space, reclaimed with their segment,
//! which goes once no index entry points into it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A segment is closed once it holds this much, and the next one begun.
/// Large enough that a lab rolls over rarely, small enough that retention
/// gets space back soon after the jobs in a segment are pruned.
pub(super) const SEGMENT_BYTES: u64 = 64 << 20;

/// Where a chunk of console bytes lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Location {
    pub seg: u32,
    pub pos: u64,
    pub len: u32,
}

impl Location {
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&self.seg.to_be_bytes());
        b[4..12].copy_from_slice(&self.pos.to_be_bytes());
        b[12..].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Location> {
        let b: &[u8; 16] = b.try_into().ok()?;
        Some(Location {
            seg: u32::from_be_bytes(b[..4].try_into().ok()?),
            pos: u64::from_be_bytes(b[4..12].try_into().ok()?),
            len: u32::from_be_bytes(b[12..].try_into().ok()?),
        })
    }
}

pub(super) fn path(dir: &Path, seg: u32) -> PathBuf {
    dir.join(format!("{seg:010}.seg"))
}

/// `e`, naming the file or directory it happened on.
fn at(p: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", p.display()))
}

/// The segments in `dir`, in order.
pub(super) fn list(dir: &Path) -> std::io::Result<Vec<u32>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        let Some(n) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        if let Ok(n) = n.parse() {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The bytes all segments in `dir` take.
pub(super) fn disk_bytes(dir: &Path) -> u64 {
    list(dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|s| std::fs::metadata(path(dir, s)).ok())
        .map(|m| m.len())
        .sum()
}

/// The writer thread's end: appends to the newest segment.
pub(super) struct Appender {
    dir: PathBuf,
    /// The segment appended to, its number and length.
    current: Option<(u32, File, u64)>,
    /// Earlier segments written since the last sync.
    rolled: Vec<(u32, File)>,
    /// The current segment was written since the last sync.
    dirty: bool,
}

impl Appender {
    /// Opens `dir` (made if missing) to append after its newest segment's
    /// end: whatever a killed daemon wrote there is never overwritten.
    pub fn open(dir: &Path) -> std::io::Result<Appender> {
        std::fs::create_dir_all(dir).map_err(|e| at(dir, e))?;
        let current = match list(dir).map_err(|e| at(dir, e))?.last() {
            Some(&seg) => {
                let p = path(dir, seg);
                let f = OpenOptions::new()
                    .append(true)
                    .open(&p)
                    .map_err(|e| at(&p, e))?;
                let len = f.metadata().map_err(|e| at(&p, e))?.len();
                Some((seg, f, len))
            }
            None => None,
        };
        Ok(Appender {
            dir: dir.to_owned(),
            current,
            rolled: Vec::new(),
            dirty: false,
        })
    }

    /// The segment being appended to, which is never reclaimed.
    pub fn current(&self) -> Option<u32> {
        self.current.as_ref().map(|(s, _, _)| *s)
    }

    /// Makes the current segment one `len` more bytes fit in, beginning the
    /// next segment when the current one is full (an empty one takes any).
    fn room_for(&mut self, len: usize) -> std::io::Result<()> {
        let full = self
            .current
            .as_ref()
            .is_none_or(|(_, _, n)| *n > 0 && n + len as u64 > SEGMENT_BYTES);
        if !full {
            return Ok(());
        }
        let next = self.current().map_or(1, |s| s + 1);
        let p = path(&self.dir, next);
        let f = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&p)
            .map_err(|e| at(&p, e))?;
        // The new file's name must survive a crash as much as its bytes.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| at(&self.dir, e))?;
        if let Some((old_seg, old, _)) = self.current.replace((next, f, 0)) {
            if self.dirty {
                self.rolled.push((old_seg, old));
            }
        }
        self.dirty = false;
        Ok(())
    }

    /// Appends `bytes`; they are durable after the next [`Appender::sync`].
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<Location> {
        self.append_all(&[bytes])
            .pop()
            .unwrap_or_else(|| Err(std::io::Error::other("nothing appended")))
    }

    /// Appends each of `chunks`, in order, those that fit in one segment
    /// with one `write`: a slice of console bytes at 1000 streaming boards
    /// is about 45 chunks, and a system call each was a quarter of the
    /// store writer's time. Returns each chunk's location or error.
    pub fn append_all(&mut self, chunks: &[&[u8]]) -> Vec<std::io::Result<Location>> {
        let mut out = Vec::with_capacity(chunks.len());
        let mut rest = chunks;
        while let Some(first) = rest.first() {
            let room = if first.len() > u32::MAX as usize {
                Err(std::io::Error::other("a console chunk over 4 GiB"))
            } else {
                self.room_for(first.len())
            };
            // Invariant: once `room_for` succeeded, a segment is open.
            let open = room.and_then(|()| {
                self.current
                    .as_mut()
                    .ok_or_else(|| std::io::Error::other("no segment open"))
            });
            let (seg, f, n) = match open {
                Ok(open) => open,
                Err(e) => {
                    out.push(Err(e));
                    rest = &rest[1..];
                    continue;
                }
            };
            // The run of chunks that fit after the first, up to the segment's end.
            let mut total = first.len() as u64;
            let mut run = 1;
            while let Some(c) = rest.get(run) {
                if *n + total + c.len() as u64 > SEGMENT_BYTES || c.len() > u32::MAX as usize {
                    break;
                }
                total += c.len() as u64;
                run += 1;
            }
            let bytes: std::borrow::Cow<[u8]> = match run {
                1 => (*first).into(),
                _ => rest[..run].concat().into(),
            };
            if let Err(e) = f.write_all(&bytes) {
                // A short write leaves dead bytes: the next chunk goes after
                // them, where the file now ends.
                *n = f.metadata().map_or(*n, |m| m.len());
                let e = at(&path(&self.dir, *seg), e);
                for _ in 0..run {
                    out.push(Err(std::io::Error::new(e.kind(), e.to_string())));
                }
                rest = &rest[run..];
                continue;
            }
            let mut pos = *n;
            for c in &rest[..run] {
                out.push(Ok(Location {
                    seg: *seg,
                    pos,
                    // Checked above: every chunk in the run fits in a u32.
                    len: c.len() as u32,
                }));
                pos += c.len() as u64;
            }
            *n = pos;
            self.dirty = true;
            rest = &rest[run..];
        }
        out
    }

    /// Makes everything appended so far durable. A segment whose sync
    /// failed stays to be synced again.
    pub fn sync(&mut self) -> std::io::Result<()> {
        while let Some((seg, f)) = self.rolled.first() {
            f.sync_data().map_err(|e| at(&path(&self.dir, *seg), e))?;
            self.rolled.remove(0);
        }
        if self.dirty {
            if let Some((seg, f, _)) = &self.current {
                f.sync_data().map_err(|e| at(&path(&self.dir, *seg), e))?;
            }
            self.dirty = false;
        }
        Ok(())
    }
}

/// Reads chunks, keeping the last segment it read open.
pub(super) struct Reader<'a> {
    dir: &'a Path,
    open: Option<(u32, File)>,
}

impl<'a> Reader<'a> {
    pub fn new(dir: &'a Path) -> Self {
        Reader { dir, open: None }
    }

    /// Appends `take` bytes of the chunk at `loc`, from `skip` into it, to `out`.
    pub fn read(
        &mut self,
        loc: &Location,
        skip: usize,
        take: usize,
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let named = |e| at(&path(self.dir, loc.seg), e);
        let (_, f) = match self.open.take() {
            Some(open) if open.0 == loc.seg => self.open.insert(open),
            _ => {
                let f = File::open(path(self.dir, loc.seg)).map_err(named)?;
                self.open.insert((loc.seg, f))
            }
        };
        let from = out.len();
        out.resize(from + take, 0);
        f.read_exact_at(&mut out[from..], loc.pos + skip as u64)
            .map_err(|e| {
                out.truncate(from);
                named(e)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends land where their locations say, across a roll-over and a
    /// reopen; a reopened appender never writes over what is there.
    #[test]
    fn chunks_read_back_across_segments_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![7u8; (SEGMENT_BYTES / 2 + 1) as usize];
        let mut a = Appender::open(dir.path()).unwrap();
        let l1 = a.append(b"first").unwrap();
        let l2 = a.append(&big).unwrap();
        let l3 = a.append(&big).unwrap();
        a.sync().unwrap();
        assert_eq!((l1.seg, l1.pos), (1, 0));
        assert_eq!((l2.seg, l2.pos), (1, 5));
        assert_eq!((l3.seg, l3.pos), (2, 0), "a full segment rolls over");
        drop(a);
        let mut a = Appender::open(dir.path()).unwrap();
        let l4 = a.append(b"after a restart").unwrap();
        a.sync().unwrap();
        assert_eq!((l4.seg, l4.pos), (2, big.len() as u64));
        assert_eq!(list(dir.path()).unwrap(), vec![1, 2]);
        let mut r = Reader::new(dir.path());
        let mut out = Vec::new();
        r.read(&l1, 1, 3, &mut out).unwrap();
        r.read(&l4, 0, l4.len as usize, &mut out).unwrap();
        r.read(&l3, 0, 2, &mut out).unwrap();
        assert_eq!(out, b"irsafter a restart\x07\x07");
        assert_eq!(Location::decode(&l4.encode()), Some(l4));
        assert_eq!(Location::decode(b"short"), None);
        // A chunk past a segment's end is an error, not zeros.
        let past = Location { pos: 1 << 40, ..l1 };
        let e = r.read(&past, 0, 1, &mut out).unwrap_err();
        assert!(
            e.to_string()
                .contains(&path(dir.path(), 1).display().to_string()),
            "{e}"
        );
        assert_eq!(out.len(), 20);
    }

    /// Chunks appended together land one after another, each where its
    /// location says, and a run that reaches a segment's end rolls over.
    #[test]
    fn chunks_appended_together_read_back_each_in_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Appender::open(dir.path()).unwrap();
        let big = vec![9u8; (SEGMENT_BYTES / 2) as usize];
        let chunks: Vec<&[u8]> = vec![b"one", b"two!", &big, &big, b"last"];
        let locs: Vec<Location> = a
            .append_all(&chunks)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        a.sync().unwrap();
        let at: Vec<_> = locs.iter().map(|l| (l.seg, l.pos, l.len)).collect();
        let half = big.len() as u64;
        assert_eq!(
            at,
            vec![
                (1, 0, 3),
                (1, 3, 4),
                (1, 7, half as u32),
                (2, 0, half as u32),
                (2, half, 4)
            ]
        );
        let mut r = Reader::new(dir.path());
        for (c, l) in chunks.iter().zip(&locs) {
            let mut out = Vec::new();
            r.read(l, 0, l.len as usize, &mut out).unwrap();
            assert_eq!(&out[..], *c);
        }
    }
}
