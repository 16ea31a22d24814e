//! A full disk under the store: a real tmpfs, filled by jobs' console logs
//! and freed again, with a real labd on it.
//!
//! Mounting the tmpfs needs root (CI runs as root): elsewhere the test says
//! it was skipped, and under `CI=true` it fails rather than pass unrun.

mod common;

use common::*;
use labd::client::ClientError;
use labd::protocol::RequestBody;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted for the test, unmounted (lazily: a labd killed by a
/// failing assertion may still hold it) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(o.status.success(), "mount: {o:?}");
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// Whether this process may mount a tmpfs; under CI it must.
fn may_mount() -> bool {
    require_root("mounting a tmpfs")
}

fn free_bytes(dir: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(dir).unwrap();
    s.blocks_available() as u64 * s.fragment_size() as u64
}

/// Follows job `id` to its end. A job ends by its own timeout (3 minutes)
/// at the latest, so one still going a minute after that is stuck (the
/// bug this file is about left a job Running for ever): the test fails
/// instead of hanging.
async fn ended(c: &mut labd::client::Client, id: u64) -> (serde_json::Value, Vec<u8>) {
    let bound = std::time::Duration::from_secs(240);
    match tokio::time::timeout(bound, wait_job_bytes(c, id)).await {
        Ok(r) => r,
        Err(_) => panic!("job {id} never ended (stuck Running?)"),
    }
}

const MARK: &str = "\r\n[labd: console log stopped at byte ";

/// Checks a job's log: either whole (its 3 MB of output in it, no mark)
/// or ending with one truncation mark that names the byte it stands at.
/// Returns whether it was whole.
fn whole_or_marked(id: u64, log: &[u8]) -> bool {
    let text = String::from_utf8_lossy(log);
    match text.find(MARK) {
        None => {
            let lines = text
                .matches("0123456789abcdefghijklmnopqrstuvwxyz\n")
                .count()
                + text
                    .matches("0123456789abcdefghijklmnopqrstuvwxyz\r\n")
                    .count();
            assert!(lines >= 80_000, "job {id}: {lines} lines of output");
            true
        }
        Some(at) => {
            let rest = &text[at + MARK.len()..];
            let byte: usize = rest[..rest.find(':').unwrap()].parse().unwrap();
            assert_eq!(byte, at, "job {id}: the mark names its own byte");
            assert!(rest.contains("no space left on device"), "{rest}");
            assert!(
                rest.ends_with("the rest of this job's console is not kept]\r\n"),
                "job {id}: nothing after the mark: {rest:?}"
            );
            false
        }
    }
}

/// The run: the store on a small tmpfs, jobs printing 3 MB each
/// until it is full, then space freed. While full: the logs that could not
/// be kept end with a truncation mark at their exact byte (never a gap that
/// makes them unreadable), those jobs are not Complete, submits get
/// `no_space` naming the path and the free space, reads go on; once space
/// is back labd resumes by itself (its log and metrics say so) and a new job
/// runs whole; after a restart `labd fsck` finds the store sound and every
/// job's state and log are as they were.
#[test]
fn a_full_disk_stops_logs_with_a_mark_refuses_submits_and_resumes_by_itself() {
    if !may_mount() {
        return;
    }
    rt().block_on(async {
        let mut lab = Lab::prepare(1, &[], &[], "");
        let store = lab.dir.path().join("state/store");
        let _tmpfs = Tmpfs::mount(&store, "16m");
        lab.start_labd();
        // Leave the logs about 5 MiB: the first job's 3 MB fit, the second's
        // do not.
        let ballast = store.join("ballast");
        let keep = 5 << 20;
        let fill = free_bytes(&store).saturating_sub(keep);
        std::fs::write(&ballast, vec![0x5a; fill as usize]).unwrap();

        let mut c = lab.client().await;
        let print = "yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 3000000; echo";
        let mut ids = Vec::new();
        for n in 1..=3 {
            let job = lab.job(&format!("big-{n}"), "medium", &[print]);
            ids.push(submit(&mut c, &job).await);
        }
        let mut logs = Vec::new();
        for &id in &ids {
            let (end, log) = ended(&mut c, id).await;
            logs.push((id, end, log));
        }
        let mut marked = 0;
        for (id, end, log) in &logs {
            let j = job(&mut c, *id).await;
            if whole_or_marked(*id, log) {
                assert_eq!(end["health"], "Complete", "job {id}: {j}");
            } else {
                marked += 1;
                assert_eq!(end["health"], "Incomplete", "job {id}: {j}");
                let err = j["error"].as_str().unwrap_or_default().to_owned();
                assert!(
                    err.contains("console log could not be stored"),
                    "job {id}: {j}"
                );
            }
        }
        assert!(logs[0].2.len() > 3_000_000, "the first job's log fit");
        assert!(marked >= 2, "the disk filled up: {marked} logs marked");

        // Full: submits are refused with their own code, naming the path
        // and the free space; reads go on.
        let job = lab.job("refused", "medium", &["true"]);
        match c.submit(&job, "j.yaml").await {
            Err(ClientError::Server(e)) => {
                assert_eq!(e.code.as_str(), "no_space", "{e:?}");
                assert!(e.message.contains(&store.display().to_string()), "{e:?}");
                assert!(e.message.contains("bytes free"), "{e:?}");
            }
            other => panic!("a submit on a full disk: {other:?}"),
        }
        assert_eq!(all_jobs(&mut c).await.len(), 3);
        let metrics = c.call(RequestBody::Metrics).await.unwrap();
        let text = metrics["text"].as_str().unwrap();
        assert!(text.contains("labd_store_writes_suspended 1"), "{text}");
        assert!(
            text.contains("labd_store_resumes_total 0"),
            "no flapping: {text}"
        );

        // Space comes back: labd resumes by itself and says so.
        std::fs::remove_file(&ballast).unwrap();
        lab.wait_log("store writes resumed");
        let metrics = c.call(RequestBody::Metrics).await.unwrap();
        let text = metrics["text"].as_str().unwrap();
        assert!(text.contains("labd_store_writes_suspended 0"), "{text}");
        assert!(text.contains("labd_store_resumes_total 1"), "{text}");
        let job = lab.job("after", "medium", &[print]);
        let after = submit(&mut c, &job).await;
        let (end, log) = ended(&mut c, after).await;
        assert!(whole_or_marked(after, &log), "the job after the resume");
        assert_eq!(end["health"], "Complete", "{end}");
        logs.push((after, end, log));

        // After a restart the store is sound and nothing changed.
        lab.terminate_labd();
        assert!(lab.wait_labd());
        let o = Command::new(env!("CARGO_BIN_EXE_labd"))
            .args(["fsck", "--state-dir"])
            .arg(lab.dir.path().join("state"))
            .output()
            .unwrap();
        assert!(o.status.success(), "labd fsck: {o:?}");
        lab.start_labd();
        let mut c = lab.client().await;
        for (id, end, log) in &logs {
            let (again, relog) = ended(&mut c, *id).await;
            assert_eq!(again["health"], end["health"], "job {id}");
            assert_eq!(again["state"], "Finished", "job {id}");
            assert!(relog == *log, "job {id}'s log changed over the restart");
        }
    });
}
