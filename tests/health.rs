//! Health checks as LAVA runs them, on real labd and labd-sim processes.

mod common;

use common::*;
use labd::sim_control::{ControlRequest, Fault};
use serde_json::Value;

/// The jobs labd submitted as health checks, oldest first.
async fn health_checks(c: &mut labd::client::Client) -> Vec<Value> {
    let mut hc: Vec<Value> = all_jobs(c)
        .await
        .into_iter()
        .filter(|j| j["health_check"] == true)
        .collect();
    hc.reverse();
    hc
}

/// New boards (health Unknown) run the device type's health check before
/// any user job: a pass makes a board Good, a failure Bad; a Bad board takes
/// no jobs until an admin sets it online, which runs the check again.
#[test]
fn health_checks_gate_boards_good_bad_and_back() {
    rt().block_on(async {
        let mut lab = Lab::prepare(
            2,
            &[("sim-01", &["a"]), ("sim-02", &["b"])],
            &[],
            "[health_checks]\ndir = \"@DIR@/hc\"",
        );
        let hc_dir = lab.dir.path().join("hc");
        std::fs::create_dir_all(&hc_dir).unwrap();
        std::fs::write(
            hc_dir.join("sim-uboot.yaml"),
            lab.job("health-check", "high", &["lava-test-case hc --shell true"]),
        )
        .unwrap();
        // sim-02 will fail its first check.
        lab.sim(ControlRequest::Fault {
            board: "sim-02".into(),
            fault: Fault::NoPrompt,
        })
        .await;
        lab.start_labd();
        let mut c = lab.client().await;
        // A user job for sim-01 at once: it must wait for the health check.
        let user = submit(&mut c, &tagged(lab.job("user", "high", &["true"]), "a")).await;
        let (end, log) = wait_job(&mut c, user).await;
        assert_eq!(end["health"], "Complete", "{log}");
        let hc = health_checks(&mut c).await;
        let first = hc.iter().find(|j| j["board"] == "sim-01").unwrap();
        assert_eq!(first["health"], "Complete");
        let u = job(&mut c, user).await;
        assert!(
            u["start_time"].as_u64() >= first["end_time"].as_u64(),
            "user job started before the health check ended: {u}\n{first}"
        );
        assert_eq!(board(&mut c, "sim-01").await["health"], "Good");

        // sim-02's check fails: Bad, and a job for it waits.
        let failed = hc.iter().find(|j| j["board"] == "sim-02").unwrap()["id"]
            .as_u64()
            .unwrap();
        let (end, _) = wait_job(&mut c, failed).await;
        assert_eq!(end["health"], "Incomplete");
        let b = board(&mut c, "sim-02").await;
        assert_eq!(b["health"], "Bad", "{b}");
        assert!(
            b["health_reason"]
                .as_str()
                .unwrap()
                .contains(&format!("health check {failed} failed")),
            "{b}"
        );
        let waiting = submit(&mut c, &tagged(lab.job("for-b", "medium", &["true"]), "b")).await;
        assert_eq!(job(&mut c, waiting).await["state"], "Submitted");
        assert_eq!(board(&mut c, "sim-02").await["state"], "Idle");

        // Repaired and set online: the check runs again, passes, and the
        // waiting job runs after it.
        lab.sim(ControlRequest::Fault {
            board: "sim-02".into(),
            fault: Fault::None,
        })
        .await;
        set_health(&mut c, "sim-02", "online", Some("relay replaced"))
            .await
            .unwrap();
        let (end, log) = wait_job(&mut c, waiting).await;
        assert_eq!(end["health"], "Complete", "{log}");
        let hc = health_checks(&mut c).await;
        let again = hc
            .iter()
            .filter(|j| j["board"] == "sim-02")
            .nth(1)
            .expect("a second health check on sim-02");
        assert_eq!(again["health"], "Complete");
        assert!(job(&mut c, waiting).await["start_time"].as_u64() >= again["end_time"].as_u64());
        assert_eq!(board(&mut c, "sim-02").await["health"], "Good");

        // After a restart the boards are checked again only if they must be:
        // Good boards within the frequency take jobs at once.
        drop(c);
        lab.kill_labd();
        lab.start_labd();
        let mut c = lab.client().await;
        let before = health_checks(&mut c).await.len();
        let id = submit(&mut c, &tagged(lab.job("after", "medium", &["true"]), "a")).await;
        let (end, _) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete");
        assert_eq!(health_checks(&mut c).await.len(), before);
    });
}

/// A health-check file with an error stops labd at start, naming the file
/// and line; nothing runs.
#[test]
fn a_bad_health_check_file_is_refused_at_start() {
    let lab = Lab::prepare(1, &[], &[], "[health_checks]\ndir = \"@DIR@/hc\"");
    let hc_dir = lab.dir.path().join("hc");
    std::fs::create_dir_all(&hc_dir).unwrap();
    std::fs::write(
        hc_dir.join("sim-uboot.yaml"),
        "device_type: sim-uboot\njob_name: hc\ntimeouts:\n  job: {minutes: 1}\nactions:\n- deploy:\n    to: nfs\n",
    )
    .unwrap();
    let err = lab.labd_refuses();
    assert!(err.contains("hc/sim-uboot.yaml:7"), "{err}");
}

/// Maintenance and retirement asked for on a busy board take effect when
/// its job ends; a retired board is never scheduled, and a job only
/// retired boards could run is refused.
#[test]
fn retiring_a_busy_board_waits_for_its_job_and_then_takes_no_work() {
    rt().block_on(async {
        let lab = Lab::start(2, &[("sim-01", &["a"]), ("sim-02", &["b"])]);
        let mut c = lab.client().await;
        // The job runs until the test lets it end (a `sleep 1` here was a
        // race a loaded machine lost: the job ended before the check).
        let go = lab.dir.path().join("go-sim-01");
        let step = format!(
            "echo busy; while [ ! -e {} ]; do sleep 0.1; done",
            go.display()
        );
        let id = c
            .submit(&tagged(lab.job("last", "medium", &[&step]), "a"), "j.yaml")
            .await
            .unwrap();
        until_log_contains(&lab, id, "busy\r\n").await;
        set_health(&mut c, "sim-01", "retired", Some("end of life"))
            .await
            .unwrap();
        assert_eq!(board(&mut c, "sim-01").await["health"], "Unknown");
        std::fs::write(&go, "").unwrap();
        let (end, _) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete");
        let b = board(&mut c, "sim-01").await;
        assert_eq!(
            (b["health"].as_str(), b["state"].as_str()),
            (Some("Retired"), Some("Idle"))
        );
        let e = c
            .submit(
                &tagged(lab.job("for-a", "medium", &["true"]), "a"),
                "j.yaml",
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(labd::error::ErrorCode::NoSuchDeviceType));
        // The other board works on.
        let other = submit(&mut c, &tagged(lab.job("for-b", "medium", &["true"]), "b")).await;
        assert_eq!(wait_job(&mut c, other).await.0["health"], "Complete");
    });
}
