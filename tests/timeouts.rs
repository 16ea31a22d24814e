//! Timeouts and retries: queue timeouts, timeouts capped by the lab's
//! maxima, LAVA's `failure_retry` on an action block (sharing its timeout),
//! and the job-level `failure_retry` after a dispatcher restart.

mod common;

use common::*;
use labd::protocol::RequestBody;
use labd::sim_control::{ControlRequest, Fault};
use serde_json::Value;

fn events<'a>(j: &'a Value, kind: &str) -> Vec<&'a Value> {
    j["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

/// A lab of one board that will miss its bootloader prompt once.
async fn lab_whose_board_misses_its_prompt_once() -> Lab {
    let lab = Lab::start(1, &[]);
    lab.sim(ControlRequest::Fault {
        board: "sim-01".into(),
        fault: Fault::NoPromptOnce,
    })
    .await;
    lab
}

/// The one retry of job `first` (named by its `retry` event): waits until it
/// ends Complete and checks it is attempt 2 of `first`; no third is made.
async fn its_retry_completes(c: &mut labd::client::Client, first: u64) {
    let j = job(c, first).await;
    let retry = events(&j, "retry");
    assert_eq!(retry.len(), 1, "{j}");
    let next: u64 = retry[0]["message"]
        .as_str()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (end, log) = wait_job(c, next).await;
    assert_eq!(end["health"], "Complete", "{log}");
    let n = job(c, next).await;
    assert_eq!(
        (n["retry_of"].as_u64(), n["attempt"].as_u64()),
        (Some(first), Some(2))
    );
    assert_eq!(all_jobs(c).await.len(), 2);
}

#[test]
fn a_job_no_board_takes_in_time_is_canceled_at_its_queue_timeout() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        set_health(&mut c, "sim-01", "maintenance", None)
            .await
            .unwrap();
        let text = lab.job("waits", "medium", &["true"]).replacen(
            "timeouts:\n",
            "timeouts:\n  queue:\n    seconds: 1\n",
            1,
        );
        let id = submit(&mut c, &text).await;
        let (end, _) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Canceled");
        let j = job(&mut c, id).await;
        assert_eq!(
            j["error"],
            "queue timeout: no board took the job within 1 s"
        );
        let waited = j["end_time"].as_u64().unwrap() - j["submit_time"].as_u64().unwrap();
        assert!((1000..3000).contains(&waited), "canceled after {waited} ms");
    });
}

#[test]
fn timeouts_above_the_lab_maxima_are_capped_with_a_warning() {
    rt().block_on(async {
        let lab = Lab::start_with(1, &[], &[], "[limits]\nmax_job_timeout_secs = 60");
        let mut c = lab.client().await;
        let text = lab.job("long", "medium", &["true"]); // asks for 3 minutes
        let v = c
            .call(RequestBody::Submit {
                definition: text,
                file: Some("long.yaml".into()),
            })
            .await
            .unwrap();
        let warnings: Vec<&str> = v["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap())
            .collect();
        assert!(
            warnings.iter().any(|w| w.contains("timeouts.job")
                && w.contains("180 s is above this lab's maximum of 60 s; capped")),
            "{warnings:?}"
        );
        let (end, _) = wait_job(&mut c, v["job"].as_u64().unwrap()).await;
        assert_eq!(end["health"], "Complete");
    });
}

/// A board that misses its bootloader prompt once: with `failure_retry: 2`
/// and a 4 s boot timeout, the first attempt ends at its 2 s share (before
/// the board's 3 s bootloader-interrupt timeout), the second boots, and the
/// job completes.
#[test]
fn a_boot_block_with_failure_retry_tries_again_within_its_shared_timeout() {
    rt().block_on(async {
        let lab = lab_whose_board_misses_its_prompt_once().await;
        let mut c = lab.client().await;
        let text = lab.job("flaky", "medium", &["true"]).replacen(
            "    method: u-boot\n",
            "    method: u-boot\n    failure_retry: 2\n    timeout:\n      seconds: 4\n",
            1,
        );
        let id = submit(&mut c, &text).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete", "{log}");
        let j = job(&mut c, id).await;
        let timeouts = events(&j, "timeout");
        assert_eq!(timeouts.len(), 1, "{j}");
        assert_eq!(
            timeouts[0]["message"],
            "boot attempt 1 of 2 timed out after 2 s"
        );
        let retries = events(&j, "retry");
        assert_eq!(retries.len(), 1);
        assert!(retries[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("boot attempt 2 of 2 after: boot attempt 1 of 2 timed out"));
    });
}

/// A job with `failure_retry: 2` whose board misses its bootloader prompt
/// once: the first attempt ends Incomplete with an Infrastructure error, and
/// its retry (stored with that end, in one write) runs and completes.
#[test]
fn a_job_ended_by_an_infrastructure_error_is_retried_when_it_allows() {
    rt().block_on(async {
        let lab = lab_whose_board_misses_its_prompt_once().await;
        let mut c = lab.client().await;
        let text = format!(
            "failure_retry: 2\n{}",
            lab.job("flaky", "medium", &["true"]).replacen(
                "    method: u-boot\n",
                "    method: u-boot\n    timeout:\n      seconds: 2\n",
                1,
            )
        );
        let first = submit(&mut c, &text).await;
        let (end, log) = wait_job(&mut c, first).await;
        assert_eq!(end["health"], "Incomplete", "{log}");
        let j = job(&mut c, first).await;
        assert_eq!(j["error_class"], "Infrastructure", "{j}");
        its_retry_completes(&mut c, first).await;
    });
}

/// A job with `failure_retry: 2` cut short by a killed daemon: after the
/// restart it ends Incomplete (dispatcher restarted) and its second attempt
/// is queued, linked to it, and runs.
#[test]
fn a_job_cut_by_a_restart_is_retried_when_it_allows() {
    rt().block_on(async {
        let mut lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let second = lab.dir.path().join("second-attempt");
        let step = format!("echo started; [ -e {} ] || sleep 600", second.display());
        let text = format!(
            "failure_retry: 2\n{}",
            lab.job("retried", "medium", &[&step])
        );
        let first = submit(&mut c, &text).await;
        until_log_contains(&lab, first, "started\r\n").await;
        drop(c);
        lab.kill_labd();
        std::fs::write(&second, b"").unwrap();
        lab.start_labd();
        let mut c = lab.client().await;
        let j = job(&mut c, first).await;
        assert_eq!(j["error"], "dispatcher restarted");
        // Two attempts were allowed: a third is never made.
        its_retry_completes(&mut c, first).await;
    });
}

/// A boot block's timeout bounds the whole boot (power-on, bootloader,
/// kernel, login) as in LAVA, not each of its phases: a kernel that hangs
/// ends the job at the boot's timeout, named as the boot's.
#[test]
fn a_boot_timeout_bounds_the_whole_boot() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        lab.sim(ControlRequest::Fault {
            board: "sim-01".into(),
            fault: Fault::HangAfterKernel,
        })
        .await;
        let mut c = lab.client().await;
        let text = lab
            .job("boot-timeout", "medium", &["true"])
            .replacen(
                "timeouts:\n",
                "timeouts:\n  connection:\n    minutes: 2\n",
                1,
            )
            .replacen("- boot:\n", "- boot:\n    timeout:\n      seconds: 3\n", 1);
        let id = submit(&mut c, &text).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Incomplete", "{log}");
        let j = job(&mut c, id).await;
        assert_eq!(j["error_class"], "Infrastructure");
        assert_eq!(j["error"], "boot timed out after 3 s", "{j}");
    });
}
