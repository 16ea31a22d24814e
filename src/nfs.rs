//! NFS root filesystems: a job's `nfsrootfs` unpacked into a directory of
//! its own and exported through a real NFS server, for that job only, until
//! the job ends.
//!
//! The server is NFS-Ganesha (`ganesha.nfsd`, Debian's `nfs-ganesha` and
//! `nfs-ganesha-vfs`), a user-space server labd starts as its own child in
//! the foreground, with a configuration labd writes: labd needs no kernel
//! nfsd, no systemd and no D-Bus. NFSv4 needs no rpcbind (one TCP port);
//! NFSv3, which an unchanged LAVA `nfsroot=` argument usually mounts, needs
//! the host's rpcbind, where Ganesha registers its MOUNT and NFS programs,
//! and Ganesha refuses to start without it. Ganesha re-reads its exports on
//! SIGHUP, adding and removing them without a restart, and logs `Reread
//! exports complete` when done: an export is added or removed by rewriting
//! the configuration, signalling, and waiting for that line (its log is
//! labd's pipe), one change at a time.
//!
//! A root filesystem is unpacked by [`unpack`], which never leaves the
//! job's directory whatever the archive holds: every entry's path is
//! walked from the root one directory at a time with `O_NOFOLLOW`, so a
//! symlink the archive made earlier is never followed by a later entry;
//! absolute paths, `..` and hard links to outside the tree are refused, and
//! the unpacked size is bounded (`[nfs] max_unpacked_bytes`). Symlinks are
//! kept as they are: the board resolves them in its own root. The job's
//! overlay is unpacked into the tree the same way.
//!
//! Invariants: an export exists only while its job holds it and is gone
//! before its tree is removed; at start every tree and export a previous
//! labd left (a crash) is removed, and a Ganesha it left running is
//! stopped before a new one starts; nothing outside `[nfs] dir` is ever
//! written by an unpack.

use crate::config::NfsConfig;
use crate::model::JobId;
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{mkdirat, Mode, SFlag};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long Ganesha may take to start, or to re-read its exports.
const SERVER_TIMEOUT: Duration = Duration::from_secs(60);

/// How many of the server's last log lines an error quotes.
const TAIL_LINES: usize = 8;

/// Why a root filesystem could not be unpacked or exported.
#[derive(Debug, thiserror::Error)]
pub enum NfsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("starting the NFS server `{program}`: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("the NFS server exited ({status}); its last lines: {tail}")]
    Exited { status: String, tail: String },
    #[error("the NFS server did not {what} within {} s; its last lines: {tail}", SERVER_TIMEOUT.as_secs())]
    Timeout { what: &'static str, tail: String },
    #[error("the NFS server refused its exports: {0}")]
    Reload(String),
    #[error("the root filesystem's entry `{entry}` {why}; refused")]
    Hostile { entry: String, why: &'static str },
    #[error("the root filesystem unpacks to more than {max} bytes ([nfs] max_unpacked_bytes)")]
    TooBig { max: u64 },
    #[error("the root filesystem is not a tar archive that can be read: {0}")]
    Tar(std::io::Error),
    #[error("prefix `{0}` is not a directory of the root filesystem")]
    Prefix(String),
    #[error("[nfs] dir `{0}` cannot be named in the NFS server's configuration (a quote or a line break)")]
    BadDir(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NfsError + '_ {
    move |source| NfsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What an unpack did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    pub entries: u64,
    /// Bytes counted against the limit: file data, and 512 per entry.
    pub bytes: u64,
    /// Device nodes and FIFOs that could not be made (labd not root).
    pub skipped_nodes: u64,
}

/// The path of an archive entry as components below the root: `./` and
/// empty components dropped; absolute paths and `..` refused.
fn components<'a>(entry: &'a [u8], shown: &str) -> Result<Vec<&'a OsStr>, NfsError> {
    let hostile = |why| NfsError::Hostile {
        entry: shown.to_owned(),
        why,
    };
    if entry.first() == Some(&b'/') {
        return Err(hostile("has an absolute path"));
    }
    let mut out = Vec::new();
    for c in entry.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(hostile("leads out of the root with `..`")),
            c => out.push(OsStr::from_bytes(c)),
        }
    }
    Ok(out)
}

fn owned(fd: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open and is owned
    // by nothing else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn open_dir(dir: &OwnedFd, name: &OsStr) -> nix::Result<OwnedFd> {
    openat(
        Some(dir.as_raw_fd()),
        name,
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(owned)
}

/// Walks from `root` down `dirs` without following any symlink; with
/// `create`, makes missing directories (an archive need not list them).
fn walk(root: &OwnedFd, dirs: &[&OsStr], create: bool, shown: &str) -> Result<OwnedFd, NfsError> {
    let mut cur = root.try_clone().map_err(io(Path::new(shown)))?;
    for d in dirs {
        cur = match open_dir(&cur, d) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if create => {
                match mkdirat(Some(cur.as_raw_fd()), *d, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io(Path::new(shown))(e.into())),
                }
                open_dir(&cur, d).map_err(|e| io(Path::new(shown))(e.into()))?
            }
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                return Err(NfsError::Hostile {
                    entry: shown.to_owned(),
                    why: "lies beyond a symlink or a file",
                })
            }
            Err(e) => return Err(io(Path::new(shown))(e.into())),
        };
    }
    Ok(cur)
}

/// What is at `name` in `dir`, without following a symlink.
fn kind_at(dir: &OwnedFd, name: &OsStr) -> Option<SFlag> {
    nix::sys::stat::fstatat(
        Some(dir.as_raw_fd()),
        name,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .ok()
    .map(|st| SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()))
}

/// Clears `name` for a new entry: a file or link is replaced (as tar
/// does), a directory is not.
fn clear(dir: &OwnedFd, name: &OsStr, shown: &str) -> Result<(), NfsError> {
    match kind_at(dir, name) {
        None => Ok(()),
        Some(SFlag::S_IFDIR) => Err(NfsError::Hostile {
            entry: shown.to_owned(),
            why: "replaces a directory",
        }),
        Some(_) => nix::unistd::unlinkat(
            Some(dir.as_raw_fd()),
            name,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        )
        .map_err(|e| io(Path::new(shown))(e.into())),
    }
}

/// Unpacks a tar archive into `root` (an existing directory), confined to
/// it; ownership is kept when labd runs as root. `used` is what earlier
/// unpacks into the same tree counted, and grows with this one.
pub fn unpack(
    reader: impl Read,
    root: &Path,
    max: u64,
    used: &mut u64,
) -> Result<Unpacked, NfsError> {
    use nix::unistd::{fchownat, Gid, Uid};
    let rootfd = nix::fcntl::open(
        root,
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(owned)
    .map_err(|e| io(root)(e.into()))?;
    let as_root = Uid::effective().is_root();
    let mut done = Unpacked::default();
    let mut ar = tar::Archive::new(reader);
    for entry in ar.entries().map_err(NfsError::Tar)? {
        let mut e = entry.map_err(NfsError::Tar)?;
        let raw = e.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let size = e.header().entry_size().map_err(NfsError::Tar)?;
        *used = used.saturating_add(size).saturating_add(512);
        if *used > max {
            return Err(NfsError::TooBig { max });
        }
        done.entries += 1;
        done.bytes = done.bytes.saturating_add(size).saturating_add(512);
        let comps = components(&raw, &shown)?;
        let Some((name, parents)) = comps.split_last() else {
            continue;
        };
        let dir = walk(&rootfd, parents, true, &shown)?;
        let h = e.header();
        let mode = Mode::from_bits_truncate(h.mode().map_err(NfsError::Tar)? & 0o7777);
        let owner = if as_root {
            (
                Some(Uid::from_raw(h.uid().map_err(NfsError::Tar)? as u32)),
                Some(Gid::from_raw(h.gid().map_err(NfsError::Tar)? as u32)),
            )
        } else {
            (None, None)
        };
        let fail = |err: Errno| io(Path::new(&shown))(err.into());
        let kind = h.entry_type();
        let mtime = h.mtime().unwrap_or(0);
        match kind {
            tar::EntryType::Directory => {
                match kind_at(&dir, name) {
                    Some(SFlag::S_IFDIR) => {}
                    Some(_) => {
                        clear(&dir, name, &shown)?;
                        mkdirat(Some(dir.as_raw_fd()), *name, mode).map_err(fail)?;
                    }
                    None => mkdirat(Some(dir.as_raw_fd()), *name, mode).map_err(fail)?,
                }
                // Opened without following: a directory, or refused.
                let d = walk(&dir, &[name], false, &shown)?;
                nix::unistd::fchown(d.as_raw_fd(), owner.0, owner.1).map_err(fail)?;
                nix::sys::stat::fchmod(d.as_raw_fd(), mode).map_err(fail)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                clear(&dir, name, &shown)?;
                let fd = openat(
                    Some(dir.as_raw_fd()),
                    *name,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(fail)?;
                let mut f = std::fs::File::from(owned(fd));
                std::io::copy(&mut e, &mut f).map_err(io(Path::new(&shown)))?;
                // chown first: it clears set-user-ID bits that chmod sets.
                nix::unistd::fchown(f.as_raw_fd(), owner.0, owner.1).map_err(fail)?;
                nix::sys::stat::fchmod(f.as_raw_fd(), mode).map_err(fail)?;
                let t = nix::sys::time::TimeSpec::new(mtime as i64, 0);
                let _ = nix::sys::stat::futimens(f.as_raw_fd(), &t, &t);
            }
            tar::EntryType::Symlink => {
                let target = e
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                clear(&dir, name, &shown)?;
                nix::unistd::symlinkat(OsStr::from_bytes(&target), Some(dir.as_raw_fd()), *name)
                    .map_err(fail)?;
                fchownat(
                    Some(dir.as_raw_fd()),
                    *name,
                    owner.0,
                    owner.1,
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(fail)?;
            }
            tar::EntryType::Link => {
                let target = e
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let tcomps = components(&target, &shown)?;
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(NfsError::Hostile {
                        entry: shown,
                        why: "is a hard link to the root itself",
                    });
                };
                let tdir = walk(&rootfd, tparents, false, &shown)?;
                match kind_at(&tdir, tname) {
                    None => {
                        return Err(NfsError::Hostile {
                            entry: shown,
                            why: "is a hard link to nothing the archive made",
                        })
                    }
                    Some(SFlag::S_IFDIR) => {
                        return Err(NfsError::Hostile {
                            entry: shown,
                            why: "is a hard link to a directory",
                        })
                    }
                    Some(_) => {}
                }
                clear(&dir, name, &shown)?;
                // Without AT_SYMLINK_FOLLOW a link to a symlink links the
                // symlink itself, never what it points to.
                nix::unistd::linkat(
                    Some(tdir.as_raw_fd()),
                    *tname,
                    Some(dir.as_raw_fd()),
                    *name,
                    nix::fcntl::AtFlags::empty(),
                )
                .map_err(fail)?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                clear(&dir, name, &shown)?;
                let sflag = match kind {
                    tar::EntryType::Char => SFlag::S_IFCHR,
                    tar::EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let dev = nix::sys::stat::makedev(
                    h.device_major().ok().flatten().unwrap_or(0).into(),
                    h.device_minor().ok().flatten().unwrap_or(0).into(),
                );
                match nix::sys::stat::mknodat(Some(dir.as_raw_fd()), *name, sflag, mode, dev) {
                    Ok(()) => {
                        fchownat(
                            Some(dir.as_raw_fd()),
                            *name,
                            owner.0,
                            owner.1,
                            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                        )
                        .map_err(fail)?;
                    }
                    // Only root makes device nodes; the board's devtmpfs
                    // has them anyway.
                    Err(Errno::EPERM) => done.skipped_nodes += 1,
                    Err(e) => return Err(fail(e)),
                }
            }
            // PAX and GNU headers are read by the tar crate; anything else
            // (sparse files, volume labels) has no place in a root.
            _ => {}
        }
    }
    Ok(done)
}

/// The directory an export serves, below the job's unpacked tree: LAVA's
/// `prefix` (relative, no `..`), checked to be a directory reached without
/// following a symlink.
pub fn prefixed(root: &Path, prefix: Option<&str>) -> Result<PathBuf, NfsError> {
    let Some(prefix) = prefix.filter(|p| !p.trim_matches('/').is_empty()) else {
        return Ok(root.to_path_buf());
    };
    let comps =
        components(prefix.as_bytes(), prefix).map_err(|_| NfsError::Prefix(prefix.into()))?;
    let rootfd = nix::fcntl::open(
        root,
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(owned)
    .map_err(|e| io(root)(e.into()))?;
    walk(&rootfd, &comps, false, prefix).map_err(|_| NfsError::Prefix(prefix.into()))?;
    Ok(comps.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

/// What the server's log said so far.
#[derive(Debug, Default, Clone)]
struct LogState {
    initialized: bool,
    /// `Reread exports complete` lines seen.
    reloads: u64,
    /// Failed re-reads seen, and the last one's line.
    failures: u64,
    failure: Option<String>,
    /// The exit status, once the server has exited.
    exited: Option<String>,
    tail: std::collections::VecDeque<String>,
}

impl LogState {
    fn tail(&self) -> String {
        self.tail.iter().cloned().collect::<Vec<_>>().join(" | ")
    }
}

/// The lab's NFS server and the exports it holds.
pub struct NfsServer {
    cfg: NfsConfig,
    dir: PathBuf,
    server_ip: String,
    pid: u32,
    log: tokio::sync::watch::Receiver<LogState>,
    /// Each job's export id and directory; one change at a time.
    exports: tokio::sync::Mutex<BTreeMap<JobId, (u16, PathBuf)>>,
    /// Tells the task that owns the server's process to kill it.
    stop: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

/// A job's place under `[nfs] dir`.
pub fn job_dir(dir: &Path, job: JobId) -> PathBuf {
    dir.join("jobs").join(job.to_string())
}

impl NfsServer {
    /// Removes what an earlier labd left (its server, its trees), writes a
    /// configuration without exports and starts the server; returns once
    /// it serves.
    pub async fn start(
        cfg: &NfsConfig,
        dir: &Path,
        server_ip: String,
    ) -> Result<Arc<NfsServer>, NfsError> {
        let program = cfg.server.clone().unwrap_or_else(|| "ganesha.nfsd".into());
        let text = dir.display().to_string();
        if text.contains(['"', '\n', '\r']) {
            return Err(NfsError::BadDir(text));
        }
        for d in [dir.to_path_buf(), dir.join("jobs"), dir.join("recovery")] {
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        let pid_file = dir.join("ganesha.pid");
        stop_leftover(&pid_file).await;
        let jobs = dir.join("jobs");
        let rd = std::fs::read_dir(&jobs).map_err(io(&jobs))?;
        for e in rd.flatten() {
            let p = e.path();
            tracing::info!(path = %p.display(), "removing a root filesystem an earlier labd left");
            let _ = tokio::task::spawn_blocking(move || remove_tree(&p)).await;
        }
        let conf = dir.join("ganesha.conf");
        write_config(cfg, dir, &BTreeMap::new())?;
        let mut cmd = tokio::process::Command::new(&program);
        crate::child::scrub(&mut cmd);
        cmd.arg("-F")
            .arg("-f")
            .arg(&conf)
            .arg("-L")
            .arg("/dev/stdout")
            .arg("-p")
            .arg(&pid_file)
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: only prctl(2), async-signal-safe, runs between fork and
        // exec. The server dies with the thread that started it (labd's
        // main thread, which lives as long as labd): exports never outlive
        // labd, even after a crash. The pid file is for what this misses.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().map_err(|source| NfsError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
        let pid = child.id().unwrap_or(0);
        let (tx, rx) = tokio::sync::watch::channel(LogState::default());
        let tx = Arc::new(tx);
        for out in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(target: "labd::nfs::ganesha", "{line}");
                    tx.send_modify(|s| observe(s, &line));
                }
            });
        }
        // The exit is watched by a task that owns the child until it ends.
        let watch_tx = tx.clone();
        let pid_file_left = pid_file.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = Arc::new(NfsServer {
            cfg: cfg.clone(),
            dir: dir.to_path_buf(),
            server_ip,
            pid,
            log: rx,
            exports: tokio::sync::Mutex::new(BTreeMap::new()),
            stop: std::sync::Mutex::new(Some(stop_tx)),
        });
        tokio::spawn(async move {
            let status = tokio::select! {
                s = child.wait() => s.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                _ = stop_rx => {
                    let _ = child.start_kill();
                    child.wait().await.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())
                }
            };
            tracing::warn!(%status, "the NFS server exited");
            // Killed, it leaves its pid file: a later labd must not signal
            // whatever process gets that pid next.
            let _ = std::fs::remove_file(&pid_file_left);
            watch_tx.send_modify(|s| s.exited = Some(status));
        });
        let mut log = server.log.clone();
        let ready = tokio::time::timeout(
            SERVER_TIMEOUT,
            log.wait_for(|s| s.initialized || s.exited.is_some()),
        )
        .await;
        let s = server.log.borrow().clone();
        match ready {
            Err(_) => Err(NfsError::Timeout {
                what: "start",
                tail: s.tail(),
            }),
            Ok(_) if s.exited.is_some() => Err(NfsError::Exited {
                status: s.exited.clone().unwrap_or_default(),
                tail: s.tail(),
            }),
            Ok(_) => {
                tracing::info!(listen = %cfg.listen, pid, "NFS server (nfs-ganesha) serving");
                Ok(server)
            }
        }
    }

    /// Stops the server (labd's shutdown); its exports go with it.
    pub fn stop(&self) {
        if let Some(tx) = self.stop.lock().ok().and_then(|mut s| s.take()) {
            let _ = tx.send(());
        }
    }

    /// Stops the server and waits until it has exited.
    pub async fn stop_and_wait(&self) {
        self.stop();
        let mut log = self.log.clone();
        let _ = tokio::time::timeout(SERVER_TIMEOUT, log.wait_for(|s| s.exited.is_some())).await;
    }

    /// The address boards reach the server at (`{NFS_SERVER_IP}`).
    pub fn server_ip(&self) -> &str {
        &self.server_ip
    }

    /// Where a job's tarball is fetched to before it is unpacked.
    pub fn tarball(&self, job: JobId) -> PathBuf {
        job_dir(&self.dir, job).join("rootfs.tar")
    }

    /// Where a job's tree is unpacked; made empty.
    pub fn prepare(&self, job: JobId) -> Result<PathBuf, NfsError> {
        let d = job_dir(&self.dir, job);
        if d.exists() {
            remove_tree(&d);
        }
        let root = d.join("root");
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        Ok(root)
    }

    /// The most a job's tree may hold (`[nfs] max_unpacked_bytes`).
    pub fn max_unpacked_bytes(&self) -> u64 {
        self.cfg.max_unpacked_bytes
    }

    /// Exports `path` (inside the job's tree) for `job`; returns once the
    /// server serves it. The export's path on the server is `path` itself.
    pub async fn export(&self, job: JobId, path: &Path) -> Result<String, NfsError> {
        let mut exports = self.exports.lock().await;
        let used: std::collections::BTreeSet<u16> = exports.values().map(|(id, _)| *id).collect();
        // Export 0 is the server's pseudo root; ids are reused once free.
        let id = (1..=u16::MAX)
            .map(|i| ((job % u64::from(u16::MAX - 1)) as u16).wrapping_add(i) % (u16::MAX - 1) + 1)
            .find(|i| !used.contains(i))
            .unwrap_or(1);
        exports.insert(job, (id, path.to_path_buf()));
        if let Err(e) = self.reload(&exports).await {
            exports.remove(&job);
            let _ = write_config(&self.cfg, &self.dir, &exports);
            return Err(e);
        }
        Ok(path.display().to_string())
    }

    /// Ends `job`'s export, then removes its tree. Quiet when there is
    /// nothing to remove.
    pub async fn remove(&self, job: JobId) -> Result<(), NfsError> {
        let mut exports = self.exports.lock().await;
        let result = if exports.remove(&job).is_some() {
            self.reload(&exports).await
        } else {
            Ok(())
        };
        drop(exports);
        let d = job_dir(&self.dir, job);
        let _ = tokio::task::spawn_blocking(move || remove_tree(&d)).await;
        result
    }

    /// The job ids exported now.
    pub async fn exported(&self) -> Vec<JobId> {
        self.exports.lock().await.keys().copied().collect()
    }

    /// Writes the configuration with `exports` and has the server re-read
    /// it; waits for its `Reread exports complete`.
    async fn reload(&self, exports: &BTreeMap<JobId, (u16, PathBuf)>) -> Result<(), NfsError> {
        let before = self.log.borrow().clone();
        if let Some(status) = before.exited.clone() {
            return Err(NfsError::Exited {
                status,
                tail: before.tail(),
            });
        }
        write_config(&self.cfg, &self.dir, exports)?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .map_err(|e| io(&self.dir)(e.into()))?;
        let mut log = self.log.clone();
        let done = tokio::time::timeout(
            SERVER_TIMEOUT,
            log.wait_for(|s| {
                s.reloads > before.reloads || s.failures > before.failures || s.exited.is_some()
            }),
        )
        .await;
        let s = self.log.borrow().clone();
        match done {
            Err(_) => Err(NfsError::Timeout {
                what: "re-read its exports",
                tail: s.tail(),
            }),
            Ok(_) if s.reloads > before.reloads => Ok(()),
            Ok(_) if s.exited.is_some() => Err(NfsError::Exited {
                status: s.exited.clone().unwrap_or_default(),
                tail: s.tail(),
            }),
            Ok(_) => Err(NfsError::Reload(s.failure.unwrap_or_default())),
        }
    }
}

impl std::fmt::Debug for NfsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NfsServer")
            .field("dir", &self.dir)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl Drop for NfsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads one line of the server's log into what labd waits on.
fn observe(s: &mut LogState, line: &str) {
    if s.tail.len() == TAIL_LINES {
        s.tail.pop_front();
    }
    s.tail.push_back(line.trim().to_owned());
    if line.contains("NFS SERVER INITIALIZED") {
        s.initialized = true;
    } else if line.contains("Reread exports complete") {
        s.reloads += 1;
    } else if line.contains("reread_exports")
        && (line.contains(":CRIT :") || line.contains(":MAJ :"))
    {
        s.failures += 1;
        s.failure = Some(line.trim().to_owned());
    }
}

/// Removes a job's tree; a tree a board made unremovable is logged.
fn remove_tree(p: &Path) {
    if let Err(e) = std::fs::remove_dir_all(p) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %p.display(), error = %e, "removing a job's root filesystem");
        }
    }
}

/// Stops the server an earlier labd started (a crash leaves it running,
/// still holding the port and the old exports). Only a process whose
/// program is named like Ganesha is signalled.
async fn stop_leftover(pid_file: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
        .filter(|p| *p > 1)
    else {
        return;
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if !comm.trim().starts_with("ganesha") {
        return;
    }
    tracing::info!(pid, "stopping the NFS server an earlier labd left running");
    let p = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM);
    // Not labd's child: its end is seen in /proc. A stuck one is killed.
    let gone = || {
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
    };
    for i in 0..200 {
        if gone() {
            break;
        }
        if i == 100 {
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_file(pid_file);
}

/// Ganesha's configuration: the listener, then one export per job, each
/// readable and writable (as root: the board is root on its own root) by
/// `[nfs] clients`.
fn config_text(cfg: &NfsConfig, dir: &Path, exports: &BTreeMap<JobId, (u16, PathBuf)>) -> String {
    let protocols = cfg
        .protocols
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let mut t = format!(
        "# Written by labd: each change is re-read on SIGHUP. Do not edit.\n\
         NFS_CORE_PARAM {{\n  NFS_Port = {port};\n  Bind_addr = {ip};\n  Protocols = {protocols};\n  \
         Enable_NLM = false;\n  Enable_RQUOTA = false;\n  Enable_UDP = false;\n  Mount_Path_Pseudo = true;\n}}\n\
         NFSV4 {{\n  Graceless = true;\n  RecoveryBackend = fs;\n  RecoveryRoot = \"{recovery}\";\n  Only_Numeric_Owners = true;\n}}\n\
         NFS_KRB5 {{ Active_krb5 = false; }}\n",
        port = cfg.listen.port(),
        ip = cfg.listen.ip(),
        recovery = dir.join("recovery").display(),
    );
    for (job, (id, path)) in exports {
        let access = if cfg.clients.is_empty() {
            "  Access_Type = RW;\n".to_owned()
        } else {
            format!(
                "  Access_Type = None;\n  CLIENT {{ Clients = {}; Access_Type = RW; }}\n",
                cfg.clients.join(", ")
            )
        };
        t.push_str(&format!(
            "# job {job}\nEXPORT {{\n  Export_Id = {id};\n  Path = \"{p}\";\n  Pseudo = \"{p}\";\n{access}  \
             Squash = No_Root_Squash;\n  SecType = sys;\n  Protocols = {protocols};\n  Transports = TCP;\n  \
             FSAL {{ Name = VFS; }}\n}}\n",
            p = path.display(),
        ));
    }
    t
}

/// Writes the configuration by renaming a complete file into place: the
/// server never reads half of one.
fn write_config(
    cfg: &NfsConfig,
    dir: &Path,
    exports: &BTreeMap<JobId, (u16, PathBuf)>,
) -> Result<(), NfsError> {
    let conf = dir.join("ganesha.conf");
    let tmp = dir.join("ganesha.conf.tmp");
    std::fs::write(&tmp, config_text(cfg, dir, exports)).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &conf).map_err(io(&conf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    /// Writes a raw name into a header, past the checks `set_path` makes.
    fn raw_name(h: &mut tar::Header, name: &str) {
        let n = &mut h.as_old_mut().name;
        n.fill(0);
        n[..name.len()].copy_from_slice(name.as_bytes());
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
        let mut h = header(tar::EntryType::Regular, data.len() as u64);
        raw_name(&mut h, name);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &str, target: &str) {
        let mut h = header(kind, 0);
        raw_name(&mut h, name);
        let t = &mut h.as_old_mut().linkname;
        t[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
    }

    fn unpack_into(t: &[u8]) -> (tempfile::TempDir, Result<Unpacked, NfsError>) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("root")).unwrap();
        let mut used = 0;
        let r = unpack(t, &d.path().join("root"), 1 << 20, &mut used);
        (d, r)
    }

    #[test]
    fn a_plain_tree_is_unpacked_with_its_links() {
        let t = tar_of(|b| {
            file(b, "./etc/hostname", b"board\n");
            link(
                b,
                tar::EntryType::Symlink,
                "./etc/localtime",
                "/usr/share/zoneinfo/UTC",
            );
            link(b, tar::EntryType::Link, "./etc/hostname2", "./etc/hostname");
        });
        let (d, r) = unpack_into(&t);
        let r = r.unwrap();
        assert_eq!(r.entries, 3);
        let root = d.path().join("root");
        assert_eq!(
            std::fs::read(root.join("etc/hostname")).unwrap(),
            b"board\n"
        );
        assert_eq!(
            std::fs::read_link(root.join("etc/localtime")).unwrap(),
            Path::new("/usr/share/zoneinfo/UTC")
        );
        assert_eq!(
            std::fs::read(root.join("etc/hostname2")).unwrap(),
            b"board\n"
        );
    }

    #[test]
    fn hostile_archives_are_refused_and_write_nothing_outside() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("absolute", tar_of(|b| file(b, "/tmp/x", b"x"))),
            ("dotdot", tar_of(|b| file(b, "a/../../x", b"x"))),
            (
                "through a symlink",
                tar_of(|b| {
                    link(b, tar::EntryType::Symlink, "escape", "../outside");
                    file(b, "escape/x", b"x");
                }),
            ),
            (
                "through an absolute symlink",
                tar_of(|b| {
                    link(b, tar::EntryType::Symlink, "escape", "/");
                    file(b, "escape/x", b"x");
                }),
            ),
            (
                "hard link out",
                tar_of(|b| link(b, tar::EntryType::Link, "h", "../outside/secret")),
            ),
            (
                "hard link through a symlink",
                tar_of(|b| {
                    link(b, tar::EntryType::Symlink, "escape", "../outside");
                    link(b, tar::EntryType::Link, "h", "escape/secret");
                }),
            ),
        ];
        for (what, t) in cases {
            let (d, r) = unpack_into(&t);
            std::fs::create_dir_all(d.path().join("outside")).unwrap();
            let err = r.expect_err(what);
            assert!(matches!(err, NfsError::Hostile { .. }), "{what}: {err}");
            assert!(err.to_string().contains("refused"), "{what}: {err}");
            assert!(!d.path().join("x").exists(), "{what}");
            assert!(!d.path().join("outside/x").exists(), "{what}");
            assert!(!Path::new("/x").exists(), "{what}");
        }
    }

    #[test]
    fn the_size_limit_holds() {
        let t = tar_of(|b| file(b, "big", &vec![0u8; 4096]));
        let d = tempfile::tempdir().unwrap();
        let mut used = 0;
        let err = unpack(&t[..], d.path(), 2048, &mut used).unwrap_err();
        assert!(err.to_string().contains("max_unpacked_bytes"), "{err}");
    }

    #[test]
    fn a_prefix_must_be_a_directory_inside() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("sub/root")).unwrap();
        std::os::unix::fs::symlink("/", d.path().join("out")).unwrap();
        assert_eq!(
            prefixed(d.path(), Some("sub/root/")).unwrap(),
            d.path().join("sub/root")
        );
        assert_eq!(prefixed(d.path(), None).unwrap(), d.path());
        for bad in ["out/", "../", "/sub", "missing/"] {
            assert!(prefixed(d.path(), Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_configuration_names_each_export() {
        let cfg = NfsConfig::default();
        let mut ex = BTreeMap::new();
        ex.insert(7, (8u16, PathBuf::from("/srv/nfs/jobs/7/root")));
        let t = config_text(&cfg, Path::new("/srv/nfs"), &ex);
        assert!(t.contains("Export_Id = 8;"), "{t}");
        assert!(t.contains("Path = \"/srv/nfs/jobs/7/root\";"), "{t}");
        assert!(t.contains("NFS_Port = 2049;"), "{t}");
    }
}
