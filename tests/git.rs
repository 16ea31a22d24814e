//! The git cache (`labd::git`) against the real `git` program: LAVA's
//! `from: git` test definitions, from a bare repository in a temp dir served
//! over `file://` (and over `git daemon`), into a cache of their own.
//!
//! What the cache promises and these tests check: checkouts at a commit, a
//! short sha, a tag, a branch and the default branch, with and without
//! history; a pinned revision already in the mirror fetches nothing (the
//! origin is moved away to prove it); a new commit is fetched when asked for
//! by its sha, also one no branch reaches; errors name the URL and say what
//! git said, never credentials; forbidden URLs never reach git; two
//! checkouts of one URL at once; the time and size limits.

mod common;

use labd::git::{GitCache, GitError, GitLimits};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn have_git() -> bool {
    common::require_tool("git", "install the Debian package git; .ci/run does")
}

/// Runs git in `dir` with a fixed identity and no user config; returns its
/// stdout, trimmed.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.com",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "advice.detachedHead=false",
        ])
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("running git");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

const SMOKE: &str = "automated/linux/smoke/smoke.yaml";

fn smoke(version: u32) -> String {
    format!(
        "metadata:\n  format: Lava-Test Test Definition 1.0\n  name: smoke-tests\n  description: version {version}\nrun:\n  steps:\n  - lava-test-case pwd --shell pwd\n"
    )
}

/// A test-definition repository: `main` has c1 (tagged `v1`, annotated) and
/// c2; `stable` branches from c1 with c3. Pushed to a bare `origin` under
/// `root`, the cache's only file root.
struct Repo {
    tmp: tempfile::TempDir,
    root: PathBuf,
    origin: PathBuf,
    work: PathBuf,
    url: String,
    c1: String,
    c2: String,
    c3: String,
}

impl Repo {
    fn new() -> Repo {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("repos");
        let origin = root.join("test-definitions.git");
        let work = tmp.path().join("work");
        std::fs::create_dir_all(&root).unwrap();
        git(&root, &["init", "-q", "--bare", "test-definitions.git"]);
        git(tmp.path(), &["init", "-q", "work"]);
        write(&work.join(SMOKE), &smoke(1));
        git(&work, &["add", "."]);
        git(&work, &["commit", "-q", "-m", "smoke v1"]);
        let c1 = git(&work, &["rev-parse", "HEAD"]);
        git(&work, &["tag", "-a", "-m", "release 1", "v1"]);
        write(&work.join(SMOKE), &smoke(2));
        git(&work, &["commit", "-q", "-am", "smoke v2"]);
        let c2 = git(&work, &["rev-parse", "HEAD"]);
        git(&work, &["checkout", "-q", "-b", "stable", &c1]);
        write(&work.join("stable.yaml"), "stable: true\n");
        git(&work, &["add", "."]);
        git(&work, &["commit", "-q", "-m", "stable"]);
        let c3 = git(&work, &["rev-parse", "HEAD"]);
        git(&work, &["checkout", "-q", "main"]);
        let o = origin.display().to_string();
        git(&work, &["push", "-q", &o, "main", "stable", "--tags"]);
        let url = format!("file://{o}");
        Repo {
            tmp,
            root,
            origin,
            work,
            url,
            c1,
            c2,
            c3,
        }
    }

    fn limits(&self) -> GitLimits {
        GitLimits {
            timeout: Duration::from_secs(60),
            max_repo_bytes: 1 << 30,
            file_roots: vec![self.root.clone()],
        }
    }

    fn cache(&self) -> GitCache {
        self.cache_with(self.limits())
    }

    fn cache_with(&self, limits: GitLimits) -> GitCache {
        GitCache::new(&self.tmp.path().join("cache"), limits).unwrap()
    }

    /// A fresh destination for a checkout.
    fn dest(&self, name: &str) -> PathBuf {
        self.tmp.path().join("dests").join(name)
    }

    /// Commits `file` on the work tree's branch and pushes it to `branch`;
    /// returns the commit.
    fn push_commit(&self, file: &str, branch: &str) -> String {
        write(&self.work.join(file), "new\n");
        git(&self.work, &["add", "."]);
        git(&self.work, &["commit", "-q", "-m", file]);
        git(
            &self.work,
            &[
                "push",
                "-q",
                &self.origin.display().to_string(),
                &format!("HEAD:{branch}"),
            ],
        );
        git(&self.work, &["rev-parse", "HEAD"])
    }

    fn mirrors(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.tmp.path().join("cache/mirrors"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }
}

fn read(dest: &Path, file: &str) -> String {
    std::fs::read_to_string(dest.join(file))
        .unwrap_or_else(|e| panic!("{}/{file}: {e}", dest.display()))
}

#[test]
fn checks_out_a_commit_a_short_sha_a_tag_a_branch_and_the_default_branch() {
    if !have_git() {
        return;
    }
    let repo = Repo::new();
    let cache = repo.cache();
    let c1 = repo.c1.as_str();
    let short = &repo.c2[..8];
    // (name, revision, branch, the commit, what smoke.yaml says)
    type Case<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a str, &'a str);
    let cases: [Case; 7] = [
        ("commit", Some(c1), None, &repo.c1, "version 1"),
        ("short", Some(short), None, &repo.c2, "version 2"),
        ("tag", Some("v1"), None, &repo.c1, "version 1"),
        ("branch", None, Some("stable"), &repo.c3, "version 1"),
        (
            "branch-as-revision",
            Some("stable"),
            None,
            &repo.c3,
            "version 1",
        ),
        ("default", None, None, &repo.c2, "version 2"),
        ("both", Some(c1), Some("stable"), &repo.c1, "version 1"),
    ];
    common::rt().block_on(async {
        for (name, revision, branch, commit, text) in cases {
            let dest = repo.dest(name);
            let got = cache
                .checkout(&repo.url, revision, branch, false, &dest)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got.commit, commit, "{name}");
            assert_eq!(got.url, repo.url, "{name}");
            assert!(read(&dest, SMOKE).contains(text), "{name}");
            assert_eq!(
                dest.join("stable.yaml").exists(),
                commit == repo.c3,
                "{name}"
            );
            assert!(
                !dest.join(".git").exists(),
                "{name}: history: false has no .git"
            );
        }
    });
}

#[test]
fn with_history_the_checkout_is_a_clone_at_the_revision() {
    if !have_git() {
        return;
    }
    let repo = Repo::new();
    let cache = repo.cache();
    common::rt().block_on(async {
        let dest = repo.dest("history");
        let got = cache
            .checkout(&repo.url, Some("v1"), None, true, &dest)
            .await
            .unwrap();
        assert_eq!(got.commit, repo.c1);
        assert!(dest.join(".git").is_dir());
        assert_eq!(git(&dest, &["rev-parse", "HEAD"]), repo.c1);
        assert_eq!(git(&dest, &["status", "--porcelain"]), "");
        // The board sees the repository the job named, not this host's mirror.
        assert_eq!(git(&dest, &["remote", "get-url", "origin"]), repo.url);
        assert_eq!(git(&dest, &["log", "--format=%s"]), "smoke v1");
        assert!(read(&dest, SMOKE).contains("version 1"));

        // A branch alone is checked out as that branch.
        let dest = repo.dest("history-branch");
        let got = cache
            .checkout(&repo.url, None, Some("stable"), true, &dest)
            .await
            .unwrap();
        assert_eq!(got.commit, repo.c3);
        assert_eq!(git(&dest, &["symbolic-ref", "--short", "HEAD"]), "stable");
        assert_eq!(git(&dest, &["rev-parse", "HEAD"]), repo.c3);
    });
}

#[test]
fn a_second_checkout_of_a_pinned_revision_fetches_nothing() {
    if !have_git() {
        return;
    }
    let repo = Repo::new();
    let cache = repo.cache();
    common::rt().block_on(async {
        let first = cache
            .checkout(&repo.url, Some(&repo.c1), None, false, &repo.dest("1"))
            .await
            .unwrap();
        assert!(first.fetched);
        assert_eq!(cache.stats().fetches, 1);

        // The origin is gone (an empty directory in its place, so that the
        // file URL still passes its root check): whatever comes now comes
        // from the mirror.
        let away = repo.tmp.path().join("away.git");
        std::fs::rename(&repo.origin, &away).unwrap();
        std::fs::create_dir(&repo.origin).unwrap();
        for (name, revision) in [
            ("2", repo.c1.as_str()),
            ("3", &repo.c1[..10]),
            ("4", "v1"),
            ("5", repo.c2.as_str()),
            ("6", &repo.c3[..7]),
        ] {
            let got = cache
                .checkout(&repo.url, Some(revision), None, false, &repo.dest(name))
                .await
                .unwrap_or_else(|e| panic!("{revision}: {e}"));
            assert!(!got.fetched, "{revision}");
        }
        assert_eq!(cache.stats().fetches, 1, "nothing was fetched again");
        assert_eq!(cache.stats().hits, 5);
        assert!(read(&repo.dest("5"), SMOKE).contains("version 2"));

        // A branch moves: asking for one asks the server, which is gone.
        let err = cache
            .checkout(&repo.url, None, Some("main"), false, &repo.dest("7"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                GitError::Failed {
                    action: "fetch",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            !repo.dest("7").exists(),
            "a failed checkout leaves no destination"
        );
        assert_eq!(cache.stats().fetches, 2);
        assert_eq!(repo.mirrors().len(), 1, "a failed fetch keeps the mirror");
    });
    drop(cache);
    std::fs::remove_dir(&repo.origin).unwrap();
    std::fs::rename(repo.tmp.path().join("away.git"), &repo.origin).unwrap();

    // A restarted labd keeps its mirrors, and clears the lock files a git
    // killed with the old one left (they would fail every fetch).
    let [mirror] = repo.mirrors().try_into().unwrap();
    std::fs::write(mirror.join("refs/heads/main.lock"), "").unwrap();
    let cache = repo.cache();
    common::rt().block_on(async {
        let got = cache
            .checkout(&repo.url, Some("v1"), None, false, &repo.dest("8"))
            .await
            .unwrap();
        assert!(!got.fetched);
        let got = cache
            .checkout(&repo.url, None, Some("main"), false, &repo.dest("9"))
            .await
            .unwrap();
        assert!(got.fetched);
        assert_eq!(got.commit, repo.c2);

        // So does a fetch: a git killed mid-fetch (a cancelled job) leaves
        // its locks and temporary pack behind.
        std::fs::write(mirror.join("refs/heads/stable.lock"), "").unwrap();
        std::fs::write(mirror.join("objects/pack/tmp_pack_x"), "x").unwrap();
        git(&repo.work, &["checkout", "-q", "stable"]);
        let c5 = repo.push_commit("stable-2.yaml", "stable");
        let got = cache
            .checkout(&repo.url, None, Some("stable"), false, &repo.dest("10"))
            .await
            .unwrap();
        assert_eq!(got.commit, c5);
        assert!(!mirror.join("objects/pack/tmp_pack_x").exists());
    });
}

#[test]
fn a_new_commit_is_fetched_when_asked_for_by_its_sha() {
    if !have_git() {
        return;
    }
    let repo = Repo::new();
    let cache = repo.cache();
    common::rt().block_on(async {
        cache
            .checkout(&repo.url, Some(&repo.c1), None, false, &repo.dest("old"))
            .await
            .unwrap();
        let c4 = repo.push_commit("new-test.yaml", "main");
        let got = cache
            .checkout(&repo.url, Some(&c4), None, false, &repo.dest("new"))
            .await
            .unwrap();
        assert!(got.fetched);
        assert_eq!(got.commit, c4);
        assert_eq!(read(&repo.dest("new"), "new-test.yaml"), "new\n");

        // A commit no branch or tag reaches (a pull request's) is asked for
        // by its sha.
        git(&repo.work, &["checkout", "-q", "--detach"]);
        write(&repo.work.join("pr.yaml"), "pr\n");
        git(&repo.work, &["add", "."]);
        git(&repo.work, &["commit", "-q", "-m", "pr"]);
        let pr = git(&repo.work, &["rev-parse", "HEAD"]);
        git(
            &repo.work,
            &[
                "push",
                "-q",
                &repo.origin.display().to_string(),
                "HEAD:refs/pull/1/head",
            ],
        );
        let got = cache
            .checkout(&repo.url, Some(&pr), None, true, &repo.dest("pr"))
            .await
            .unwrap();
        assert_eq!(got.commit, pr);
        assert_eq!(read(&repo.dest("pr"), "pr.yaml"), "pr\n");
        assert_eq!(git(&repo.dest("pr"), &["rev-parse", "HEAD"]), pr);
        assert_eq!(cache.stats().fetches, 4, "everything, then the one commit");
    });
}

#[test]
fn errors_name_the_url_and_say_what_git_said() {
    if !have_git() {
        return;
    }
    let repo = Repo::new();
    let cache = repo.cache();
    common::rt().block_on(async {
        // Not a repository at all.
        let not_repo = repo.root.join("not-a-repo");
        std::fs::create_dir(&not_repo).unwrap();
        let url = format!("file://{}", not_repo.display());
        let err = cache
            .checkout(&url, Some("v1"), None, false, &repo.dest("a"))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(
                err,
                GitError::Failed {
                    action: "clone",
                    ..
                }
            ),
            "{text}"
        );
        assert!(text.contains(&url), "{text}");
        assert!(
            text.contains("does not appear to be a git repository"),
            "{text}"
        );
        assert_eq!(err.class(), labd::model::ErrorClass::Infrastructure);
        assert!(
            repo.mirrors().is_empty(),
            "a failed first fetch leaves no mirror"
        );

        // A revision, a branch and a commit the repository does not have.
        for (revision, branch, says) in [
            (
                Some("no-such-tag"),
                None,
                "revision `no-such-tag` not found",
            ),
            (
                None,
                Some("no-such-branch"),
                "branch `no-such-branch` not found",
            ),
            (
                Some("0123456789abcdef0123456789abcdef01234567"),
                None,
                "not our ref",
            ),
        ] {
            let err = cache
                .checkout(&repo.url, revision, branch, false, &repo.dest("b"))
                .await
                .unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, GitError::NotFound { .. }), "{text}");
            assert!(text.contains(&repo.url), "{text}");
            assert!(text.contains(says), "{text}");
            assert_eq!(err.class(), labd::model::ErrorClass::Job);
        }

        // The destination must be empty, and is left alone when it is not.
        let dest = repo.dest("full");
        write(&dest.join("x"), "x");
        let err = cache
            .checkout(&repo.url, Some("v1"), None, false, &dest)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
        assert_eq!(read(&dest, "x"), "x");
        // An empty one given is given back empty after a failure.
        let dest = repo.dest("empty");
        std::fs::create_dir_all(&dest).unwrap();
        cache
            .checkout(&repo.url, Some("no-such-tag"), None, true, &dest)
            .await
            .unwrap_err();
        assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
    });
}

#[test]
fn credentials_never_appear_in_errors() {
    if !have_git() {
        return;
    }
    let repo = Repo::new();
    let cache = repo.cache();
    common::rt().block_on(async {
        // Port 1 refuses at once: git fails, and says so with the URL.
        for (url, secret, shown) in [
            (
                "https://labuser:s3cretpass@127.0.0.1:1/defs.git",
                "s3cretpass",
                "https://127.0.0.1:1/defs.git",
            ),
            (
                "http://ghp_0123456789abcdefTOKEN@127.0.0.1:1/defs.git",
                "ghp_0123456789abcdefTOKEN",
                "http://127.0.0.1:1/defs.git",
            ),
        ] {
            let err = cache
                .checkout(url, Some("v1"), None, false, &repo.dest("c"))
                .await
                .unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(matches!(err, GitError::Failed { .. }), "{text}");
            assert!(!text.contains(secret), "{text}");
            assert!(!text.contains("labuser"), "{text}");
            assert!(text.contains(shown), "{text}");
            assert!(
                text.contains("Failed to connect") || text.contains("Could not connect"),
                "git's own message is kept: {text}"
            );
        }
        // Refusals and bad names do not show them either.
        for (url, revision) in [
            ("ftp://labuser:s3cretpass@example.com/defs.git", "v1"),
            (
                "https://labuser:s3cretpass@example.com/defs.git",
                "--upload-pack=x",
            ),
        ] {
            let err = cache
                .checkout(url, Some(revision), None, false, &repo.dest("d"))
                .await
                .unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(!text.contains("s3cretpass"), "{text}");
        }
    });
}

#[test]
fn forbidden_urls_are_refused_without_running_git() {
    if !have_git() {
        return;
    }
    let repo = Repo::new();
    let cache = repo.cache();
    let marker = repo.tmp.path().join("pwned");
    let m = marker.display().to_string();
    let outside = tempfile::tempdir().unwrap();
    git(outside.path(), &["init", "-q", "--bare", "secret.git"]);
    // A symlink under the root to a repository outside it.
    std::os::unix::fs::symlink(
        outside.path().join("secret.git"),
        repo.root.join("link.git"),
    )
    .unwrap();
    let urls = [
        format!("ext::sh -c touch% {m}"),
        format!("ext::sh -c \"touch {m}\""),
        format!("--upload-pack=touch {m}"),
        format!("-u touch {m}"),
        format!("ssh://-oProxyCommand=touch%20{m}/x.git"),
        format!("-oProxyCommand=touch {m}@host:x.git"),
        "fd::3".to_owned(),
        "ftp://example.com/x.git".to_owned(),
        format!("file://{}/secret.git", outside.path().display()),
        format!("file://{}/../../secret.git", repo.root.display()),
        format!("file://{}/link.git", repo.root.display()),
        repo.origin.display().to_string(),
    ];
    common::rt().block_on(async {
        for url in &urls {
            let err = cache
                .checkout(url, None, None, false, &repo.dest("e"))
                .await
                .unwrap_err();
            assert!(matches!(err, GitError::Refused { .. }), "{url}: {err}");
            assert_eq!(err.class(), labd::model::ErrorClass::Job);
        }
        // Nor a revision or branch git would take for an option.
        for (revision, branch) in [
            (Some("--upload-pack=touch"), None),
            (None, Some("-b")),
            (Some("HEAD~1"), None),
        ] {
            let err = cache
                .checkout(&repo.url, revision, branch, false, &repo.dest("f"))
                .await
                .unwrap_err();
            assert!(matches!(err, GitError::BadName { .. }), "{err}");
        }
    });
    assert!(!marker.exists(), "a refused URL ran a command");
    assert_eq!(cache.stats().fetches, 0);
    assert!(repo.mirrors().is_empty());
    assert!(!repo.dest("e").exists());
}

#[test]
fn two_checkouts_of_one_url_at_once_both_succeed() {
    if !have_git() {
        return;
    }
    let repo = Arc::new(Repo::new());
    let cache = Arc::new(repo.cache());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // One pinned revision: the second waits for the first's fetch and
        // is then served from the mirror.
        let jobs: Vec<_> = (0..4)
            .map(|i| {
                let (repo, cache) = (repo.clone(), cache.clone());
                tokio::spawn(async move {
                    let dest = repo.dest(&format!("pinned-{i}"));
                    let history = i % 2 == 0;
                    let got = cache
                        .checkout(&repo.url, Some(&repo.c2), None, history, &dest)
                        .await
                        .unwrap();
                    assert_eq!(got.commit, repo.c2);
                    assert!(read(&dest, SMOKE).contains("version 2"));
                })
            })
            .collect();
        for j in jobs {
            j.await.unwrap();
        }
        assert_eq!(cache.stats().fetches, 1);
        assert_eq!(cache.stats().hits, 3);

        // A branch: each asks the server, one after the other.
        let jobs: Vec<_> = (0..3)
            .map(|i| {
                let (repo, cache) = (repo.clone(), cache.clone());
                tokio::spawn(async move {
                    let dest = repo.dest(&format!("branch-{i}"));
                    let got = cache
                        .checkout(&repo.url, None, Some("stable"), false, &dest)
                        .await
                        .unwrap();
                    assert_eq!(got.commit, repo.c3);
                })
            })
            .collect();
        for j in jobs {
            j.await.unwrap();
        }
        assert_eq!(cache.stats().fetches, 4);
        assert_eq!(repo.mirrors().len(), 1);
    });
}

#[test]
fn a_hung_server_is_killed_at_the_time_limit() {
    if !have_git() {
        return;
    }
    let repo = Repo::new();
    let cache = repo.cache_with(GitLimits {
        timeout: Duration::from_secs(2),
        ..repo.limits()
    });
    // git:// is spoken by git itself; http:// by the git-remote-http it
    // starts, which only a kill of the whole process group reaches.
    for scheme in ["git", "http"] {
        // A server that accepts and never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (closed_tx, closed) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut conn, &mut sink);
            let _ = closed_tx.send(());
        });
        let url = format!("{scheme}://127.0.0.1:{port}/defs.git");
        let started = Instant::now();
        let err = common::rt()
            .block_on(cache.checkout(&url, Some("v1"), None, false, &repo.dest("g")))
            .unwrap_err();
        let took = started.elapsed();
        let text = err.to_string();
        assert!(matches!(err, GitError::Timeout { secs: 2, .. }), "{text}");
        assert!(text.contains("git.timeout_secs"), "{text}");
        assert!(text.contains(&url), "{text}");
        assert!(took < Duration::from_secs(10), "{scheme}: took {took:?}");
        // git and its helpers were killed: the connection closes.
        closed
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| {
                panic!("{scheme}: the connection is still held: git was not killed")
            });
        assert!(
            repo.mirrors().is_empty(),
            "a killed first fetch leaves no mirror"
        );
    }
}

#[test]
fn a_repository_over_the_size_limit_is_refused_and_removed() {
    if !have_git() {
        return;
    }
    let repo = Repo::new();
    // 512 KiB that do not compress.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let noise: Vec<u8> = (0..512 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(repo.work.join("blob.bin"), noise).unwrap();
    git(&repo.work, &["add", "."]);
    git(&repo.work, &["commit", "-q", "-m", "big"]);
    git(
        &repo.work,
        &["push", "-q", &repo.origin.display().to_string(), "main"],
    );
    let cache = repo.cache_with(GitLimits {
        max_repo_bytes: 256 * 1024,
        ..repo.limits()
    });
    common::rt().block_on(async {
        let err = cache
            .checkout(&repo.url, Some("v1"), None, false, &repo.dest("h"))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, GitError::TooBig { limit: 262144, .. }),
            "{text}"
        );
        assert!(text.contains("git.max_repo_bytes"), "{text}");
        assert!(repo.mirrors().is_empty(), "{:?}", repo.mirrors());
        assert!(!repo.dest("h").exists());
    });
}

/// Kills a `git daemon` and the children it forked for connections.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.0.wait();
    }
}

#[test]
fn checks_out_over_git_daemon() {
    use std::os::unix::process::CommandExt;
    if !have_git() {
        return;
    }
    let repo = Repo::new();
    let cache = repo.cache();
    // git daemon takes a port, not a listening socket: a free one, found
    // by binding it and letting it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _daemon = Daemon(
        Command::new("git")
            .arg("daemon")
            .arg("--reuseaddr")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg("--export-all")
            .arg(format!("--base-path={}", repo.root.display()))
            .arg(&repo.root)
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "git daemon never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("git://127.0.0.1:{port}/test-definitions.git");
    common::rt().block_on(async {
        let got = cache
            .checkout(&url, Some("v1"), None, true, &repo.dest("daemon"))
            .await
            .unwrap();
        assert_eq!(got.commit, repo.c1);
        assert!(read(&repo.dest("daemon"), SMOKE).contains("version 1"));
        assert_eq!(
            git(&repo.dest("daemon"), &["remote", "get-url", "origin"]),
            url
        );
    });
}
