//! LAVA's `secrets`: written where a test shell can source them, and kept
//! nowhere in clear: not in the stored job, the log, the events, the
//! results, nor any file of the state directory; sealed, they survive a
//! restart of labd with the job still queued.

mod common;

use common::*;

const VALUE: &str = "s3cr3t-v4lue-9";

/// `lab.job` with `secrets` and steps that source LAVA's secrets file.
fn secret_job(lab: &Lab, name: &str) -> String {
    let source = "d=$(find /lava-* -maxdepth 0 -type d | sort -t- -k2 -n | tail -1); . $d/secrets";
    lab.job(
        name,
        "medium",
        &[
            // The value is never in the job's text but in `secrets`.
            &format!("lava-test-case sourced --shell sh -c '{source}; test \"$API_KEY\" = \"$(printf s3cr3t-%s v4lue-9)\" && test \"$OTHER\" = \"two words\"'"),
            &format!("lava-test-case printed --shell sh -c '{source}; echo the key is $API_KEY'"),
            "lava-test-case private --shell sh -c 'test \"$(stat -c %a $(find /lava-* -maxdepth 0 -type d | sort -t- -k2 -n | tail -1)/secrets)\" = 600'",
        ],
    )
    .replacen(
        "timeouts:",
        &format!("secrets:\n  API_KEY: {VALUE}\n  OTHER: \"two words\"\ntimeouts:"),
        1,
    )
}

/// Every file under `dir` that holds `needle`.
fn files_holding(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(p);
            } else if t.is_file() {
                let b = std::fs::read(&p).unwrap_or_default();
                if b.windows(needle.len()).any(|w| w == needle) {
                    out.push(p.display().to_string());
                }
            }
        }
    }
    out
}

#[test]
fn secrets_reach_the_test_shell_and_are_kept_nowhere_in_clear() {
    if !require_root("the simulated board's shell writes /lava-<job>/secrets") {
        return;
    }
    rt().block_on(async {
        let mut lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        // A job that holds the board, so that the one with secrets waits
        // in the queue across a SIGKILL of labd.
        let holder = submit(&mut c, &lab.job("holder", "high", &["sleep 600"])).await;
        until_log_contains(&lab, holder, "sleep 600").await;
        let id = submit(&mut c, &secret_job(&lab, "secret")).await;
        let stored = common::job(&mut c, id).await;
        let text = stored["definition"].as_str().unwrap();
        assert!(!text.contains(VALUE), "{text}");
        assert!(text.contains("API_KEY: '[MASKED]'"), "{text}");
        lab.kill_labd();
        lab.start_labd();
        let mut c = lab.client().await;
        let (end, log) = wait_job(&mut c, id).await;
        let _ = std::fs::remove_dir_all(format!("/lava-{id}"));
        assert_eq!(end["health"], "Complete", "{log}");
        let r = results(&mut c, id).await;
        for case in ["sourced", "printed", "private"] {
            assert!(
                r.contains(&(case.to_owned(), "pass".to_owned())),
                "{case}: {r:?}\n{log}"
            );
        }
        assert!(!log.contains(VALUE), "{log}");
        assert!(log.contains("the key is [MASKED]"), "{log}");
        let j = common::job(&mut c, id).await;
        assert!(!j.to_string().contains(VALUE), "{j}");
        let lab_dir = lab.dir.path().to_path_buf();
        let key = lab_dir.join("state/secrets.key");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        lab.terminate_labd();
        assert!(lab.wait_labd());
        let leaks = files_holding(&lab_dir.join("state"), VALUE.as_bytes());
        assert!(leaks.is_empty(), "the value in clear in {leaks:?}");
    });
}

/// A value the stored text cannot be masked in exactly (a multi-line
/// block scalar) is refused rather than stored in clear; so is a name no
/// shell could export.
#[test]
fn secrets_that_cannot_be_kept_safely_are_refused() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let job = lab.job("j", "medium", &["true"]);
        for (secrets, why) in [
            ("secrets:\n  KEY: |\n    line one\n", "one line"),
            ("secrets:\n  2KEY: x\n", "shell variable"),
            ("secrets:\n  KEY: [a, b]\n", "a string"),
        ] {
            let e = c
                .submit(
                    &job.replacen("timeouts:", &format!("{secrets}timeouts:"), 1),
                    "j.yaml",
                )
                .await
                .unwrap_err();
            assert!(e.to_string().contains(why), "{secrets}: {e}");
            assert!(e.to_string().contains("secrets."), "{e}");
        }
        assert!(all_jobs(&mut c).await.is_empty());
    });
}
