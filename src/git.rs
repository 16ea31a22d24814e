//! The lab host's git cache: LAVA's `from: git` test definitions, fetched
//! once per repository and revision and shared by every job.
//!
//! A LAVA job names a repository by URL and, optionally, a `revision` (a
//! commit, tag or branch) and a `branch`. Cloning the repository for every
//! job costs each job the network and the server a clone; a lab runs the
//! same few test-definition repositories all day. So the cache keeps one
//! bare mirror per URL, `<cache_dir>/mirrors/<sha256 of the URL>.git`, and a
//! job's working tree is made from the mirror ([`GitCache::checkout`]).
//!
//! ## When git asks the server
//!
//! A revision that is pinned (a tag, or a commit named by its sha, full or
//! abbreviated) and already in the mirror is served without asking the
//! server at all: a second job on the same repository and revision fetches
//! nothing. A moving name (a branch, or no revision: the server's default
//! branch) always asks, once per checkout, because a job asking for
//! `master` wants today's `master`; that fetch only transfers what is new.
//! A revision not in the mirror is fetched with every branch and tag
//! (`--prune`, so a deleted branch is gone here too), and a full sha that
//! no branch or tag reaches is then asked for by itself.
//!
//! ## Untrusted URLs
//!
//! A job's URL is its submitter's input and git runs with labd's rights, so
//! [`crate::git_url::check_url`] allows only what fetches data and nothing that runs
//! commands: `https://`, `http://`, `git://`, `ssh://` and `file:///` URLs
//! and the scp-like `user@host:path` (ssh); never a remote helper (`ext::`,
//! `fd::`, any `<transport>::`), never a URL starting with `-`, never a host
//! or user starting with `-` (ssh would take it for an option), never a
//! control character. A `file://` repository must lie under one of
//! `[git] file_roots` once symlinks are resolved, and git is given that
//! resolved path. git enforces the same transports itself
//! (`GIT_ALLOW_PROTOCOL`), and the URL reaches git only through its
//! environment (`GIT_CONFIG_*` setting `remote.origin.url`), never as an
//! argument: it cannot be taken for an option, and credentials in it are
//! not shown to every user of the host by `ps`, nor written to disk.
//!
//! The mirror is keyed by the exact URL, credentials included: a job is
//! never served from the cache what its own URL would not give it (a
//! private repository fetched by one job with a token is not handed to
//! another job without one).
//!
//! ## Invariants
//!
//! Owns its directory. One checkout at a time per URL (an async mutex per
//! URL, held from the first look at the mirror to the last file of the
//! working tree), so two jobs on one repository never run git on its
//! mirror at once; different URLs go in parallel. A mirror appears only by
//! renaming a complete first fetch into place. What a killed git leaves in
//! a mirror (lock files, temporary packs) is cleared before the next fetch
//! into it, under its lock, and at start-up. Every git run is bounded by
//! `[git] timeout_secs` and is killed with everything it started (its own
//! process group), also when the checkout is dropped. A mirror is never
//! larger than `[git] max_repo_bytes` for long: its size is measured while
//! git fetches (every [`SIZE_POLL`]) and after, and a fetch past the limit
//! is killed and the mirror removed. A size check, because a transfer limit
//! is not to be had: git has no setting that bounds what a fetch receives
//! (index-pack's `--max-input-size` serves only receive-pack), and what
//! lands on disk is what the limit protects.
//!
//! Never shows credentials: every URL in an error or a log line, and git's
//! own messages, go through [`redact`] first. Never prompts: no terminal,
//! no askpass, ssh in batch mode. Never reads the host's or labd's git
//! config (`GIT_CONFIG_NOSYSTEM`, an empty `HOME` of its own), never passes
//! on labd's `GIT_*` variables or systemd's. Never runs a hook
//! (`core.hooksPath=/dev/null`) and never fetches submodules. Never blocks
//! the thread it is called on: git runs as a child process, and the disk is
//! reached through tokio or its blocking pool.

use crate::git_url::{check_name, parse_url, Kind};
use crate::model::ErrorClass;
use sha2::Digest;
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

/// How often a fetch's mirror is measured against `max_repo_bytes`.
pub const SIZE_POLL: Duration = Duration::from_millis(500);

/// The transports a URL may use; the same list is given to git.
const ALLOWED_PROTOCOLS: &str = "file:git:http:https:ssh";

/// The most of git's stderr kept for an error: its last lines hold the
/// `fatal:` that explains it.
const MAX_MESSAGE_CHARS: usize = 600;

/// What git prints on stdout here is a sha or nothing; more is not read.
const MAX_STDOUT_BYTES: usize = 64 * 1024;

/// The bounds of the cache, from `[git]`.
#[derive(Debug, Clone, PartialEq)]
pub struct GitLimits {
    /// How long one git run may take.
    pub timeout: Duration,
    /// The largest a mirror may be on disk.
    pub max_repo_bytes: u64,
    /// Where `file://` repositories may lie; empty allows none.
    pub file_roots: Vec<PathBuf>,
}

impl GitLimits {
    pub fn from_config(cfg: &crate::config::GitConfig) -> GitLimits {
        GitLimits {
            timeout: Duration::from_secs(cfg.timeout_secs),
            max_repo_bytes: cfg.max_repo_bytes,
            file_roots: cfg.file_roots.clone(),
        }
    }
}

/// What a checkout gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    /// The commit the working tree is, as a full sha in hex.
    pub commit: String,
    /// Whether the server was asked (false: served from the mirror alone).
    pub fetched: bool,
    /// The URL as it may be shown: without credentials.
    pub url: String,
}

/// What the cache has done since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GitStats {
    /// git fetches run (a first clone of a mirror counts as one).
    pub fetches: u64,
    /// Checkouts served from a mirror without asking the server.
    pub hits: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The URL breaks the rule of [`crate::git_url::check_url`] or `[git] file_roots`; git
    /// was not run.
    #[error("git repository `{url}` refused: {reason}")]
    Refused { url: String, reason: String },
    /// A revision or branch that is not a plain git name; git was not run.
    #[error("git repository `{url}`: {key} {value:?} refused: {reason}")]
    BadName {
        url: String,
        key: &'static str,
        value: String,
        reason: String,
    },
    /// The repository was fetched but has no such revision or branch.
    #[error("git repository `{url}`: {what} not found{}", git_says(.message))]
    NotFound {
        url: String,
        what: String,
        message: String,
    },
    /// git failed; `message` is the end of what it said.
    #[error("git repository `{url}`: git {action} failed: {message}")]
    Failed {
        url: String,
        action: &'static str,
        message: String,
    },
    #[error("git repository `{url}`: git {action} took longer than git.timeout_secs ({secs} s) and was killed")]
    Timeout {
        url: String,
        action: &'static str,
        secs: u64,
    },
    #[error("git repository `{url}`: the mirror grew past git.max_repo_bytes ({limit} bytes); the fetch was killed and the mirror removed")]
    TooBig { url: String, limit: u64 },
    #[error("git repository `{url}`: {what}: {source}")]
    Io {
        url: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn git_says(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(" (git: {message})")
    }
}

impl GitError {
    /// LAVA's error class: what the job asked for is the job's fault (a
    /// refused URL or name, a missing revision, a repository over the
    /// limit); git failing or hanging, and the disk, are the lab's, as
    /// LAVA counts a clone that fails.
    pub fn class(&self) -> ErrorClass {
        match self {
            GitError::Refused { .. }
            | GitError::BadName { .. }
            | GitError::NotFound { .. }
            | GitError::TooBig { .. } => ErrorClass::Job,
            GitError::Failed { .. } | GitError::Timeout { .. } | GitError::Io { .. } => {
                ErrorClass::Infrastructure
            }
        }
    }
}

/// Removes the user information (`user:password@`, a token) from every
/// `scheme://` URL in `text`, for errors and logs. An scp-like
/// `user@host:path` keeps its user, which cannot hold a password.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (before, after) = rest.split_at(i + 3);
        out.push_str(before);
        // The authority ends where the path starts, or where the text
        // around the URL resumes (git quotes URLs in its messages).
        let end = after
            .find(|c: char| matches!(c, '/' | '\'' | '"' | '`' | '<' | '>') || c.is_whitespace())
            .unwrap_or(after.len());
        let authority = &after[..end];
        out.push_str(
            authority
                .rfind('@')
                .map_or(authority, |at| &authority[at + 1..]),
        );
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Whether `s` is a (possibly abbreviated) object name: 4 to 64 hex digits.
fn is_hex(s: &str) -> bool {
    (4..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `s` is a whole object name (sha1 or sha256), which a server may
/// be asked for directly.
fn is_full_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && is_hex(s)
}

/// Makes sure `dest` is an empty directory; says whether it was one already.
async fn prepare_dest(remote: &Remote, dest: &Path) -> Result<bool, GitError> {
    let shown = || dest.display().to_string();
    match tokio::fs::read_dir(dest).await {
        Ok(mut entries) => {
            let first = entries
                .next_entry()
                .await
                .map_err(|e| remote.io(shown(), e))?;
            if first.is_some() {
                return Err(remote.io(
                    shown(),
                    std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "the destination is not empty",
                    ),
                ));
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tokio::fs::create_dir_all(dest)
                .await
                .map_err(|e| remote.io(shown(), e))?;
            Ok(false)
        }
        Err(e) => Err(remote.io(shown(), e)),
    }
}

/// A checked URL: what git is given, what may be shown, what must never be.
struct Remote {
    /// The URL git fetches (for a file URL, the path with symlinks resolved).
    fetch_url: String,
    /// The URL without credentials, for errors and logs.
    shown: String,
    /// Strings that must not appear in anything shown (a password, a token).
    secrets: Vec<String>,
    /// The mirror's name: the sha256 of `fetch_url`.
    key: String,
}

impl Remote {
    /// git's stderr, fit for an error: credentials removed, control
    /// characters (a server's escape sequences) replaced, lines joined, the
    /// end kept.
    fn message(&self, stderr: &[u8]) -> String {
        let mut text = redact(&String::from_utf8_lossy(stderr));
        for s in &self.secrets {
            text = text.replace(s.as_str(), "***");
        }
        let joined = text
            .lines()
            .map(|l| {
                l.trim()
                    .chars()
                    .map(|c| if c.is_control() { '?' } else { c })
                    .collect::<String>()
            })
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" / ");
        let chars = joined.chars().count();
        if chars <= MAX_MESSAGE_CHARS {
            joined
        } else {
            let tail: String = joined.chars().skip(chars - MAX_MESSAGE_CHARS).collect();
            format!("…{tail}")
        }
    }

    fn failed(&self, action: &'static str, stderr: &[u8]) -> GitError {
        GitError::Failed {
            url: self.shown.clone(),
            action,
            message: self.message(stderr),
        }
    }

    fn io(&self, what: impl Into<String>, source: std::io::Error) -> GitError {
        GitError::Io {
            url: self.shown.clone(),
            what: redact(&what.into()),
            source,
        }
    }
}

/// One git run, as it ended.
struct Output {
    success: bool,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// How one git run ends other than by exiting.
enum Stopped {
    Spawn(std::io::Error),
    Timeout,
    TooBig,
}

/// Kills a git run's whole process group unless it was seen to end: git
/// starts helpers (remote-https, index-pack, ssh, upload-pack for a file
/// URL) which must not outlive a run that was given up.
struct Group {
    pid: Option<i32>,
    ended: bool,
}

impl Drop for Group {
    fn drop(&mut self) {
        if let (Some(pid), false) = (self.pid, self.ended) {
            // The group's leader is not yet reaped (its `Child` is dropped
            // after this), so its pid still names this group and no other.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Reads a pipe to its end, keeping at most `max` bytes: the first ones or
/// the last ones.
async fn read_bounded(
    pipe: Option<impl tokio::io::AsyncRead + Unpin>,
    max: usize,
    keep_end: bool,
) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else {
        return kept;
    };
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > max {
                    if keep_end {
                        kept.drain(..kept.len() - max);
                    } else {
                        kept.truncate(max);
                    }
                }
            }
        }
    }
}

/// The bytes of the files under `dir`, not following symlinks; what
/// vanishes while it is measured (git's temporary files) counts as 0.
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// Removes what a git that was killed (a time limit, a cancelled job, labd
/// itself killed) may have left in a mirror: lock files (`*.lock`: refs,
/// packed-refs, config), which would fail every later fetch, and the
/// temporary files of an unfinished pack or object (`tmp_*`), which would
/// count against the size limit. Only while no git runs on the mirror:
/// under its lock, or at start-up.
fn clear_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        match e.file_type() {
            Ok(t) if t.is_dir() => clear_leftovers(&path),
            Ok(_) if name.ends_with(".lock") || name.starts_with("tmp_") => {
                let _ = std::fs::remove_file(&path);
            }
            _ => {}
        }
    }
}

/// The cache. Shared by every job of the lab (behind an `Arc`).
#[derive(Debug)]
pub struct GitCache {
    dir: PathBuf,
    limits: GitLimits,
    /// One lock per mirror key; an entry whose lock nobody holds or waits
    /// for is dropped the next time the map is used.
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
    fetches: AtomicU64,
    hits: AtomicU64,
    /// Names temporary files uniquely within this process.
    serial: AtomicU64,
}

impl GitCache {
    /// Opens (creating) the cache at `dir`. It removes what an earlier
    /// labd left unfinished: first fetches never renamed into place,
    /// temporary files, and what a git killed with it left in a mirror
    /// ([`clear_leftovers`]). Blocks: it is called at start-up, before any
    /// checkout.
    pub fn new(dir: &Path, limits: GitLimits) -> std::io::Result<GitCache> {
        let mirrors = dir.join("mirrors");
        for d in [&mirrors, &dir.join("tmp"), &dir.join("home")] {
            std::fs::create_dir_all(d)?;
        }
        for e in std::fs::read_dir(dir.join("tmp"))?.flatten() {
            let p = e.path();
            let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
        }
        for e in std::fs::read_dir(&mirrors)?.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "git") {
                clear_leftovers(&p);
            } else {
                let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
            }
        }
        Ok(GitCache {
            dir: dir.to_path_buf(),
            limits,
            locks: Mutex::default(),
            fetches: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            serial: AtomicU64::new(0),
        })
    }

    pub fn stats(&self) -> GitStats {
        GitStats {
            fetches: self.fetches.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
        }
    }

    /// Makes the working tree of a repository's revision at `dest`, which
    /// must not exist or be an empty directory; on an error, `dest` is as
    /// it was (absent, or empty).
    ///
    /// `revision` is a commit (full or abbreviated sha), a tag or a branch;
    /// without it, `branch`'s tip; without either, the server's default
    /// branch. With `history`, `dest` is a clone with its `.git` (its
    /// `origin` the URL without credentials), on a local branch `branch` if
    /// only a branch was asked for, else on a detached HEAD; without,
    /// `dest` holds the files alone.
    pub async fn checkout(
        &self,
        url: &str,
        revision: Option<&str>,
        branch: Option<&str>,
        history: bool,
        dest: &Path,
    ) -> Result<Checkout, GitError> {
        let remote = self.remote(url).await?;
        for (key, value) in [("revision", revision), ("branch", branch)] {
            if let Some(v) = value {
                check_name(v).map_err(|reason| GitError::BadName {
                    url: remote.shown.clone(),
                    key,
                    value: redact(v),
                    reason: reason.into(),
                })?;
            }
        }
        let existed = prepare_dest(&remote, dest).await?;
        let lock = self.lock_for(&remote.key);
        let held = lock.lock().await;
        let on_branch = branch.filter(|_| revision.is_none());
        let made = match self.resolve_or_fetch(&remote, revision, branch).await {
            Ok((commit, fetched)) => self
                .materialise(&remote, &commit, on_branch, history, dest)
                .await
                .map(|()| (commit, fetched)),
            Err(e) => Err(e),
        };
        drop(held);
        let (commit, fetched) = match made {
            Ok(made) => made,
            Err(e) => {
                // Whatever a failed checkout wrote goes; what the caller
                // gave back as it was.
                let _ = tokio::fs::remove_dir_all(dest).await;
                if existed {
                    let _ = tokio::fs::create_dir(dest).await;
                }
                return Err(e);
            }
        };
        tracing::info!(url = %remote.shown, commit = %commit, fetched, history, dest = %dest.display(), "git checkout");
        Ok(Checkout {
            commit,
            fetched,
            url: remote.shown,
        })
    }

    /// Checks `url` and, for a file URL, resolves it under the roots.
    async fn remote(&self, url: &str) -> Result<Remote, GitError> {
        let shown = redact(url);
        let refused = |reason: String| GitError::Refused {
            url: shown.clone(),
            reason,
        };
        let (fetch_url, secrets) = match parse_url(url).map_err(&refused)? {
            Kind::File(path) => {
                // Checked as written first (against the roots as written
                // and as resolved), so that a path outside them is refused
                // without a look at the disk, which would tell a submitter
                // what exists there; then as resolved, symlinks and all.
                let path = PathBuf::from(path);
                if path
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(refused("a file URL may not hold `..`".into()));
                }
                let roots = self.limits.file_roots.clone();
                let resolved = tokio::task::spawn_blocking(move || {
                    let outside = "the path is not under a directory of git.file_roots";
                    let real_roots: Vec<PathBuf> = roots
                        .iter()
                        .filter_map(|r| std::fs::canonicalize(r).ok())
                        .collect();
                    if !roots.iter().chain(&real_roots).any(|r| path.starts_with(r)) {
                        return Err(outside.to_owned());
                    }
                    let real = std::fs::canonicalize(&path)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    if real_roots.iter().any(|r| real.starts_with(r)) {
                        Ok(real)
                    } else {
                        Err(format!("{outside} (symlinks resolved)"))
                    }
                })
                .await
                .map_err(|e| refused(e.to_string()))?
                .map_err(&refused)?;
                let real = resolved
                    .to_str()
                    .ok_or_else(|| refused(format!("{} is not UTF-8", resolved.display())))?;
                (format!("file://{real}"), Vec::new())
            }
            Kind::Net { userinfo } => {
                // What git might print outside a URL, which `redact`
                // already cleans: a password, or a user name alone, which
                // is a token (`https://<token>@host`). A short one is
                // left to `redact`: replacing `git` everywhere would
                // garble every message.
                let secret = userinfo.and_then(|u| match u.split_once(':') {
                    Some((_, pass)) => Some(pass.to_owned()).filter(|p| p.len() >= 4),
                    None => Some(u).filter(|t| t.len() >= 8),
                });
                (url.to_owned(), secret.into_iter().collect())
            }
        };
        let key = crate::cache::hex(&sha2::Sha256::digest(fetch_url.as_bytes()));
        Ok(Remote {
            fetch_url,
            shown,
            secrets,
            key,
        })
    }

    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(l) = map.get(key).and_then(Weak::upgrade) {
            return l;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let l = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(key.to_owned(), Arc::downgrade(&l));
        l
    }

    fn mirror(&self, remote: &Remote) -> PathBuf {
        self.dir.join("mirrors").join(format!("{}.git", remote.key))
    }

    /// The commit to check out, and whether the server was asked for it.
    async fn resolve_or_fetch(
        &self,
        remote: &Remote,
        revision: Option<&str>,
        branch: Option<&str>,
    ) -> Result<(String, bool), GitError> {
        let mirror = self.mirror(remote);
        let exists = tokio::fs::metadata(&mirror).await.is_ok();
        if exists {
            if let Some(r) = revision {
                if let Some(c) = self.pinned(remote, &mirror, r).await? {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok((c, false));
                }
            }
        }
        let default_branch = revision.is_none() && branch.is_none();
        self.fetch(remote, &mirror, exists, default_branch).await?;
        if let Some(c) = self.resolve(remote, &mirror, revision, branch).await? {
            return Ok((c, true));
        }
        let (what, name) = match (revision, branch) {
            (Some(r), _) => ("revision", r),
            (None, Some(b)) => ("branch", b),
            (None, None) => ("the default branch", ""),
        };
        let mut message = String::new();
        // A commit no branch or tag reaches (a pull request's, say) may
        // still be had by asking for it by name, where the server allows.
        if let Some(r) = revision.filter(|r| is_full_sha(r)) {
            match self.fetch_commit(remote, &mirror, r).await? {
                Ok(()) => {
                    if let Some(c) = self.resolve(remote, &mirror, revision, None).await? {
                        return Ok((c, true));
                    }
                }
                Err(said) => message = said,
            }
        }
        Err(GitError::NotFound {
            url: remote.shown.clone(),
            what: if name.is_empty() {
                what.into()
            } else {
                format!("{what} `{name}`")
            },
            message,
        })
    }

    /// `revision` if it is pinned (a tag, or a commit by its sha) and in
    /// the mirror.
    async fn pinned(
        &self,
        remote: &Remote,
        mirror: &Path,
        revision: &str,
    ) -> Result<Option<String>, GitError> {
        if let Some(c) = self
            .rev_parse(remote, mirror, &format!("refs/tags/{revision}"))
            .await?
        {
            return Ok(Some(c));
        }
        if is_hex(revision) {
            // A branch may have a hex name too; only a commit whose name
            // starts with the revision is the revision.
            if let Some(c) = self.rev_parse(remote, mirror, revision).await? {
                if c.starts_with(&revision.to_ascii_lowercase()) {
                    return Ok(Some(c));
                }
            }
        }
        Ok(None)
    }

    /// The commit after a fetch: `revision` as a tag, a branch or a commit;
    /// else `branch`'s tip; else the server's default branch.
    async fn resolve(
        &self,
        remote: &Remote,
        mirror: &Path,
        revision: Option<&str>,
        branch: Option<&str>,
    ) -> Result<Option<String>, GitError> {
        match (revision, branch) {
            (Some(r), _) => {
                for name in [format!("refs/tags/{r}"), format!("refs/heads/{r}")] {
                    if let Some(c) = self.rev_parse(remote, mirror, &name).await? {
                        return Ok(Some(c));
                    }
                }
                if is_hex(r) {
                    if let Some(c) = self.rev_parse(remote, mirror, r).await? {
                        if c.starts_with(&r.to_ascii_lowercase()) {
                            return Ok(Some(c));
                        }
                    }
                }
                Ok(None)
            }
            (None, Some(b)) => {
                self.rev_parse(remote, mirror, &format!("refs/heads/{b}"))
                    .await
            }
            (None, None) => self.rev_parse(remote, mirror, "refs/labd/default").await,
        }
    }

    /// The commit `name` is in the mirror, if it is one.
    async fn rev_parse(
        &self,
        remote: &Remote,
        mirror: &Path,
        name: &str,
    ) -> Result<Option<String>, GitError> {
        let out = self
            .git(
                remote,
                "rev-parse",
                [
                    OsString::from("--git-dir"),
                    mirror.into(),
                    "rev-parse".into(),
                    "--verify".into(),
                    "--quiet".into(),
                    "--end-of-options".into(),
                    format!("{name}^{{commit}}").into(),
                ],
                Env::default(),
            )
            .await?;
        let sha = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Ok((out.success && is_full_sha(&sha)).then_some(sha))
    }

    /// Fetches every branch and tag (and the default branch, when asked)
    /// into the mirror, creating it if it does not exist.
    async fn fetch(
        &self,
        remote: &Remote,
        mirror: &Path,
        exists: bool,
        default_branch: bool,
    ) -> Result<(), GitError> {
        // A first fetch goes to a directory of its own, renamed into place
        // once complete: a mirror that exists is one git finished.
        let target = if exists {
            let m = mirror.to_path_buf();
            let _ = tokio::task::spawn_blocking(move || clear_leftovers(&m)).await;
            mirror.to_path_buf()
        } else {
            let new = mirror.with_extension("new");
            let _ = tokio::fs::remove_dir_all(&new).await;
            let out = self
                .git(
                    remote,
                    "init",
                    [
                        OsString::from("init"),
                        "--quiet".into(),
                        "--bare".into(),
                        // No sample hooks: nothing in a mirror ever runs.
                        "--template=".into(),
                        "--".into(),
                        new.clone().into(),
                    ],
                    Env::default(),
                )
                .await?;
            if !out.success {
                return Err(remote.failed("init", &out.stderr));
            }
            new
        };
        let action = if exists { "fetch" } else { "clone" };
        let mut args: Vec<OsString> = vec![
            "--git-dir".into(),
            target.clone().into(),
            "fetch".into(),
            "--quiet".into(),
            "--prune".into(),
            "--no-tags".into(),
            "--no-write-fetch-head".into(),
            "origin".into(),
            "+refs/heads/*:refs/heads/*".into(),
            "+refs/tags/*:refs/tags/*".into(),
        ];
        if default_branch {
            args.push("+HEAD:refs/labd/default".into());
        }
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let ran = self
            .run(
                remote,
                action,
                args,
                Env {
                    remote: true,
                    watch: Some(&target),
                    index: None,
                },
            )
            .await;
        let out = match ran {
            Ok(out) => out,
            Err(e) => {
                // A first fetch that did not finish is no mirror; a mirror
                // past the limit goes. One a fetch timed out on stays, for
                // what it had (its leftovers are cleared next time).
                if !exists || matches!(e, GitError::TooBig { .. }) {
                    let _ = tokio::fs::remove_dir_all(&target).await;
                }
                return Err(e);
            }
        };
        if !out.success {
            if !exists {
                let _ = tokio::fs::remove_dir_all(&target).await;
            }
            return Err(remote.failed(action, &out.stderr));
        }
        self.check_size(remote, &target).await?;
        if !exists {
            tokio::fs::rename(&target, mirror)
                .await
                .map_err(|e| remote.io(format!("placing the mirror {}", mirror.display()), e))?;
        }
        tracing::info!(url = %remote.shown, action, ms = started.elapsed().as_millis() as u64, "git fetch");
        Ok(())
    }

    /// Asks the server for one commit by its full sha. The outer error is
    /// the lab's (a timeout, the size); the inner one is what git said when
    /// the server would not give it.
    async fn fetch_commit(
        &self,
        remote: &Remote,
        mirror: &Path,
        sha: &str,
    ) -> Result<Result<(), String>, GitError> {
        let sha = sha.to_ascii_lowercase();
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let ran = self
            .run(
                remote,
                "fetch",
                vec![
                    "--git-dir".into(),
                    mirror.into(),
                    "fetch".into(),
                    "--quiet".into(),
                    "--no-tags".into(),
                    "--no-write-fetch-head".into(),
                    "origin".into(),
                    // A ref of its own keeps the commit from being
                    // collected as unreachable.
                    format!("+{sha}:refs/labd/commits/{sha}").into(),
                ],
                Env {
                    remote: true,
                    watch: Some(mirror),
                    index: None,
                },
            )
            .await;
        let out = match ran {
            Ok(out) => out,
            Err(e) => {
                if matches!(e, GitError::TooBig { .. }) {
                    let _ = tokio::fs::remove_dir_all(mirror).await;
                }
                return Err(e);
            }
        };
        if !out.success {
            return Ok(Err(remote.message(&out.stderr)));
        }
        self.check_size(remote, mirror).await?;
        Ok(Ok(()))
    }

    /// Removes a mirror over the limit (measured last, after git ended).
    async fn check_size(&self, remote: &Remote, dir: &Path) -> Result<(), GitError> {
        let d = dir.to_path_buf();
        let size = tokio::task::spawn_blocking(move || dir_size(&d))
            .await
            .unwrap_or(0);
        if size > self.limits.max_repo_bytes {
            let _ = tokio::fs::remove_dir_all(dir).await;
            return Err(GitError::TooBig {
                url: remote.shown.clone(),
                limit: self.limits.max_repo_bytes,
            });
        }
        Ok(())
    }

    /// Writes `commit`'s tree at `dest`: the files alone, or a clone.
    async fn materialise(
        &self,
        remote: &Remote,
        commit: &str,
        branch: Option<&str>,
        history: bool,
        dest: &Path,
    ) -> Result<(), GitError> {
        let mirror = self.mirror(remote);
        if !history {
            // The mirror is bare and shared: the tree is read into an index
            // of this checkout's own and written to `dest` from there, so
            // nothing of the mirror changes.
            let n = self.serial.fetch_add(1, Ordering::Relaxed);
            let index = self
                .dir
                .join("tmp")
                .join(format!("index-{}-{n}", std::process::id()));
            let out = self
                .git(
                    remote,
                    "checkout",
                    [
                        OsString::from("--git-dir"),
                        mirror.into(),
                        "--work-tree".into(),
                        dest.into(),
                        "read-tree".into(),
                        "-u".into(),
                        "--reset".into(),
                        commit.into(),
                    ],
                    Env {
                        index: Some(&index),
                        ..Env::default()
                    },
                )
                .await;
            let _ = tokio::fs::remove_file(&index).await;
            let out = out?;
            if !out.success {
                return Err(remote.failed("checkout", &out.stderr));
            }
            return Ok(());
        }
        // A local clone hard-links the mirror's objects, which git never
        // writes again once written: cheap, and safe to share.
        let out = self
            .git(
                remote,
                "clone",
                [
                    OsString::from("clone"),
                    "--quiet".into(),
                    "--no-checkout".into(),
                    "--".into(),
                    mirror.into(),
                    dest.into(),
                ],
                Env::default(),
            )
            .await?;
        if !out.success {
            return Err(remote.failed("clone", &out.stderr));
        }
        let mut checkout: Vec<OsString> = vec![
            "-C".into(),
            dest.into(),
            "checkout".into(),
            "--quiet".into(),
        ];
        match branch {
            Some(b) => checkout.extend(["-B".into(), b.into(), commit.into()]),
            None => checkout.extend(["--detach".into(), commit.into()]),
        }
        let out = self
            .git(remote, "checkout", checkout, Env::default())
            .await?;
        if !out.success {
            return Err(remote.failed("checkout", &out.stderr));
        }
        // The clone's origin is the repository the job named (without its
        // credentials), not this host's mirror, which the board cannot see.
        let out = self
            .git(
                remote,
                "config",
                [
                    OsString::from("-C"),
                    dest.into(),
                    "config".into(),
                    "remote.origin.url".into(),
                    remote.shown.clone().into(),
                ],
                Env::default(),
            )
            .await?;
        if !out.success {
            return Err(remote.failed("config", &out.stderr));
        }
        Ok(())
    }

    /// Runs git on local data only (no URL), bounded like any run.
    async fn git(
        &self,
        remote: &Remote,
        action: &'static str,
        args: impl IntoIterator<Item = OsString>,
        env: Env<'_>,
    ) -> Result<Output, GitError> {
        self.run(remote, action, args.into_iter().collect(), env)
            .await
    }

    /// Runs git with the cache's environment; bounded by the time limit
    /// and, with `env.watch`, by the size limit on that directory.
    async fn run(
        &self,
        remote: &Remote,
        action: &'static str,
        args: Vec<OsString>,
        env: Env<'_>,
    ) -> Result<Output, GitError> {
        let mut cmd = self.command(remote, &env);
        cmd.args(&args);
        match self.spawn_and_wait(cmd, env.watch).await {
            Ok(out) => Ok(out),
            Err(Stopped::Spawn(e)) => Err(GitError::Failed {
                url: remote.shown.clone(),
                action,
                message: format!("cannot run git: {e}"),
            }),
            Err(Stopped::Timeout) => Err(GitError::Timeout {
                url: remote.shown.clone(),
                action,
                secs: self.limits.timeout.as_secs(),
            }),
            Err(Stopped::TooBig) => Err(GitError::TooBig {
                url: remote.shown.clone(),
                limit: self.limits.max_repo_bytes,
            }),
        }
    }

    /// `git` with an environment that asks nobody anything, reads no
    /// configuration but the repository's, and allows only the transports
    /// of the URL rule.
    fn command(&self, remote: &Remote, env: &Env<'_>) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("git");
        crate::child::scrub(&mut cmd);
        // labd's own GIT_* variables (GIT_DIR, GIT_SSH_COMMAND, a
        // GIT_CONFIG_COUNT, ...) would change what git does here.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("GIT_") {
                cmd.env_remove(&k);
            }
        }
        let home = self.dir.join("home");
        cmd.env_remove("SSH_ASKPASS")
            .env("GIT_ALLOW_PROTOCOL", ALLOWED_PROTOCOLS)
            .env("GIT_TERMINAL_PROMPT", "0")
            // An askpass that answers nothing: a server asking for a
            // password gets an empty one and git fails at once.
            .env("GIT_ASKPASS", "true")
            .env("SSH_ASKPASS_REQUIRE", "never")
            .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", &home)
            .env("LC_ALL", "C")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            // Its own process group, so that a kill reaches git's helpers.
            .process_group(0)
            .kill_on_drop(true);
        cmd.args([
            // No hook runs, whatever a template or clone holds.
            "-c",
            "core.hooksPath=/dev/null",
            // A gc that a fetch starts runs inside this run's time limit
            // and under the mirror's lock, not detached where nothing
            // bounds it.
            "-c",
            "gc.autoDetach=false",
            "-c",
            "maintenance.autoDetach=false",
        ]);
        if env.remote {
            cmd.env("GIT_CONFIG_COUNT", "1")
                .env("GIT_CONFIG_KEY_0", "remote.origin.url")
                .env("GIT_CONFIG_VALUE_0", &remote.fetch_url);
        }
        if let Some(index) = env.index {
            cmd.env("GIT_INDEX_FILE", index);
        }
        cmd
    }

    async fn spawn_and_wait(
        &self,
        mut cmd: tokio::process::Command,
        watch: Option<&Path>,
    ) -> Result<Output, Stopped> {
        let mut child = cmd.spawn().map_err(Stopped::Spawn)?;
        let mut group = Group {
            pid: child.id().map(|p| p as i32),
            ended: false,
        };
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let work = async {
            let (out, err, status) = tokio::join!(
                read_bounded(stdout, MAX_STDOUT_BYTES, false),
                read_bounded(stderr, 16 * 1024, true),
                child.wait()
            );
            (out, err, status)
        };
        tokio::pin!(work);
        let deadline = tokio::time::sleep(self.limits.timeout);
        tokio::pin!(deadline);
        let mut poll = tokio::time::interval(SIZE_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (stdout, stderr, status) = loop {
            tokio::select! {
                done = &mut work => break done,
                _ = &mut deadline => return Err(Stopped::Timeout),
                _ = poll.tick(), if watch.is_some() => {
                    let Some(dir) = watch.map(Path::to_path_buf) else { continue };
                    let size = tokio::task::spawn_blocking(move || dir_size(&dir))
                        .await
                        .unwrap_or(0);
                    if size > self.limits.max_repo_bytes {
                        return Err(Stopped::TooBig);
                    }
                }
            }
        };
        group.ended = true;
        Ok(Output {
            success: status.is_ok_and(|s| s.success()),
            stdout,
            stderr,
        })
    }
}

/// What one git run gets beyond the cache's environment.
#[derive(Default)]
struct Env<'a> {
    /// Give git the URL, as `remote.origin.url`.
    remote: bool,
    /// Kill the run when this directory grows past `max_repo_bytes`.
    watch: Option<&'a Path>,
    /// `GIT_INDEX_FILE`.
    index: Option<&'a Path>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_never_shown() {
        assert_eq!(
            redact("https://user:s3cret@example.com/r.git"),
            "https://example.com/r.git"
        );
        assert_eq!(
            redact("fatal: unable to access 'https://tok3n@example.com/r.git/': nope"),
            "fatal: unable to access 'https://example.com/r.git/': nope"
        );
        assert_eq!(
            redact("a http://u:p@h:1/x and ssh://git@h/y, git@h:z"),
            "a http://h:1/x and ssh://h/y, git@h:z"
        );
        assert_eq!(redact("no url here"), "no url here");
        assert_eq!(redact("https://u:p@@h/"), "https://h/");

        let remote = Remote {
            fetch_url: "https://user:s3cret-pw@example.com/r.git".into(),
            shown: "https://example.com/r.git".into(),
            secrets: vec!["s3cret-pw".into()],
            key: String::new(),
        };
        let said = remote.message(
            b"remote: your password s3cret-pw is wrong\n\x1b[31mfatal: 'https://user:s3cret-pw@example.com/r.git' refused\n",
        );
        assert!(!said.contains("s3cret"), "{said}");
        assert!(!said.contains('\x1b'), "{said}");
        assert!(
            said.ends_with("?[31mfatal: 'https://example.com/r.git' refused"),
            "{said}"
        );
        let long = remote.message("x".repeat(5000).as_bytes());
        assert_eq!(long.chars().count(), MAX_MESSAGE_CHARS + 1);
    }
}
