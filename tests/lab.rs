//! The lab end to end: real labd and labd-sim processes, the socket
//! protocol, the board state machine, the scheduler and the store.

mod common;

use common::*;
use labd::error::ErrorCode;
use labd::protocol::RequestBody;
use labd::sim_control::{ControlRequest, Fault};

#[test]
fn job_runs_to_complete_with_results_and_logs() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let id = submit(
            &mut c,
            &lab.job(
                "e2e",
                "medium",
                &[
                    "lava-test-case ok --shell true",
                    "lava-test-case bad --shell false",
                    "lava-test-case m --result pass --measurement 12 --units ms",
                ],
            ),
        )
        .await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete", "{log}");
        let r = c.call(RequestBody::Results { job: id }).await.unwrap();
        assert_eq!(
            case_results(&r),
            vec![
                ("ok".into(), "pass".into()),
                ("bad".into(), "fail".into()),
                ("m".into(), "pass".into())
            ]
        );
        assert_eq!(r["results"][2]["measurement"], "12");
        // The stored log has the whole boot, and a second read returns the same.
        for needle in [
            "U-Boot 2023.01",
            "Bytes transferred = 300000",
            "Linux version",
            "login:",
            "<LAVA_SIGNAL_ENDRUN",
        ] {
            assert!(log.contains(needle), "missing {needle}");
        }
        let mut again = Vec::new();
        c.logs(id, false, |d| again.extend_from_slice(d))
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&again), log);
        // Every phase was recorded, in order.
        let j = job(&mut c, id).await;
        let phases: Vec<String> = j["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "phase")
            .map(|e| e["message"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            phases,
            [
                "Deploying",
                "PoweringOn",
                "Bootloader",
                "BootloaderCommands",
                "Kernel",
                "Login",
                "Shell",
                "Testing",
                "PoweringOff"
            ]
        );
        // The TFTP directory of the job is gone.
        assert!(!lab
            .dir
            .path()
            .join("state/tftp")
            .join(id.to_string())
            .exists());
        let b = boards(&mut c).await;
        assert_eq!(
            (b[0]["state"].as_str(), b[0]["health"].as_str()),
            (Some("Idle"), Some("Good"))
        );
        assert_eq!(b[0]["power"], "Off");
    });
}

#[test]
fn board_without_bootloader_prompt_ends_incomplete_at_its_timeout() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        lab.sim(ControlRequest::Fault {
            board: "sim-01".into(),
            fault: Fault::NoPrompt,
        })
        .await;
        let mut c = lab.client().await;
        let id = submit(&mut c, &lab.job("noprompt", "medium", &["true"])).await;
        let (end, _) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Incomplete");
        let j = job(&mut c, id).await;
        assert_eq!(j["error_class"], "Infrastructure");
        assert!(
            j["error"]
                .as_str()
                .unwrap()
                .contains("bootloader-interrupt timed out after 3 s"),
            "{j}"
        );
        let ev = j["events"].as_array().unwrap();
        let t = |pred: &dyn Fn(&serde_json::Value) -> bool| {
            ev.iter()
                .find(|e| pred(e))
                .map(|e| e["time"].as_u64().unwrap())
                .unwrap()
        };
        let start = t(&|e| e["kind"] == "phase" && e["message"] == "Bootloader");
        let timeout = t(&|e| e["kind"] == "timeout");
        let elapsed = timeout - start;
        // Ended at its configured 3 s: not before, and not much after.
        assert!(
            (3000..3000 + 2000).contains(&elapsed),
            "ended after {elapsed} ms"
        );
        assert!(
            ev.iter()
                .any(|e| e["kind"] == "power-off" && e["message"] == "board powered off"),
            "{ev:?}"
        );
    });
}

#[test]
fn cancel_running_job_powers_off_and_frees_the_board() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let id = submit(&mut c, &lab.job("long", "medium", &["sleep 600"])).await;
        // Cancel once the board's shell has taken the step: its echo is in the log.
        until_log_contains(&lab, id, "eval 'sleep 600'").await;
        c.call(RequestBody::Cancel { job: id }).await.unwrap();
        let (end, _) = wait_job(&mut c, id).await;
        assert_eq!(
            (end["state"].as_str(), end["health"].as_str()),
            (Some("Finished"), Some("Canceled"))
        );
        let j = job(&mut c, id).await;
        assert!(j["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "power-off"));
        let b = boards(&mut c).await;
        assert_eq!(b[0]["state"], "Idle");
        assert!(b[0]["job"].is_null());
        // Canceling a finished job is an error with a stable code.
        let e = c.call(RequestBody::Cancel { job: id }).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::InvalidState));
    });
}

#[test]
fn invalid_jobs_are_refused_and_nothing_is_stored() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let cases = [
            ("device_type: [\n", ErrorCode::InvalidJob),
            (
                &lab.job("x", "medium", &["true"])
                    .replace("sim-uboot", "no-such-type") as &str,
                ErrorCode::NoSuchDeviceType,
            ),
            (
                &lab.job("x", "medium", &["true"])
                    .replace("to: tftp", "to: fastboot") as &str,
                ErrorCode::Unsupported,
            ),
        ];
        for (text, code) in cases {
            let e = c.submit(text, "bad.yaml").await.unwrap_err();
            assert_eq!(e.code(), Some(code), "{e}");
            if code != ErrorCode::NoSuchDeviceType {
                let labd::client::ClientError::Server(w) = e else {
                    panic!()
                };
                assert_eq!(w.file.as_deref(), Some("bad.yaml"));
                assert!(w.line.is_some(), "{w:?}");
            }
        }
        assert_eq!(all_jobs(&mut c).await.len(), 0);
        // Garbage on the socket gets an error and the connection still works.
        let e = c.call(RequestBody::Job { job: 999 }).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::NoSuchJob));
    });
}

#[test]
fn restart_keeps_finished_and_queued_jobs() {
    rt().block_on(async {
        let mut lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let done = submit(
            &mut c,
            &lab.job("first", "medium", &["lava-test-case a --shell true"]),
        )
        .await;
        wait_job(&mut c, done).await;
        // Hold the board so the next job stays queued across the restart.
        set_health(&mut c, "sim-01", "maintenance", None)
            .await
            .unwrap();
        let queued = submit(&mut c, &lab.job("second", "medium", &["true"])).await;
        drop(c);
        lab.kill_labd();
        lab.start_labd();
        let mut c = lab.client().await;
        let j = job(&mut c, done).await;
        assert_eq!(
            (j["state"].as_str(), j["health"].as_str()),
            (Some("Finished"), Some("Complete"))
        );
        let r = c.call(RequestBody::Results { job: done }).await.unwrap();
        assert_eq!(r["results"].as_array().unwrap().len(), 1);
        assert_eq!(job(&mut c, queued).await["state"], "Submitted");
        assert_eq!(boards(&mut c).await[0]["health"], "Maintenance");
        set_health(&mut c, "sim-01", "online", None).await.unwrap();
        let (end, _) = wait_job(&mut c, queued).await;
        assert_eq!(end["health"], "Complete");
    });
}

#[test]
fn twenty_jobs_on_four_boards_priority_first_never_two_at_once() {
    rt().block_on(async {
        let lab = Lab::start(4, &[]);
        let mut c = lab.client().await;
        for b in 1..=4 {
            set_health(&mut c, &format!("sim-{b:02}"), "maintenance", None)
                .await
                .unwrap();
        }
        let mut ids = Vec::new();
        for i in 0..20 {
            let prio = if i % 5 == 4 { "high" } else { "low" };
            let id = submit(
                &mut c,
                &lab.job(&format!("j{i}"), prio, &["lava-test-case x --shell true"]),
            )
            .await;
            ids.push((id, prio));
        }
        for b in 1..=4 {
            set_health(&mut c, &format!("sim-{b:02}"), "online", None)
                .await
                .unwrap();
        }
        let mut runs = Vec::new();
        for (id, prio) in &ids {
            let (end, _) = wait_job(&mut c, *id).await;
            assert_eq!(end["health"], "Complete", "job {id}");
            let j = job(&mut c, *id).await;
            runs.push((
                j["board"].as_str().unwrap().to_owned(),
                j["start_time"].as_u64().unwrap(),
                j["end_time"].as_u64().unwrap(),
                *prio,
            ));
        }
        // No board ran two jobs at once.
        for a in 0..runs.len() {
            for b in a + 1..runs.len() {
                if runs[a].0 == runs[b].0 {
                    assert!(
                        runs[a].2 <= runs[b].1 || runs[b].2 <= runs[a].1,
                        "overlap on {}: {:?} {:?}",
                        runs[a].0,
                        runs[a],
                        runs[b]
                    );
                }
            }
        }
        // The four high-priority jobs were the first four to start.
        let mut order: Vec<_> = runs.iter().collect();
        order.sort_by_key(|r| r.1);
        assert!(order[..4].iter().all(|r| r.3 == "high"), "{order:?}");
    });
}

#[test]
fn every_acknowledged_submission_survives_sigkill() {
    rt().block_on(async {
        let mut lab = Lab::start(1, &[]);
        let mut acked = Vec::new();
        for round in 0..5 {
            let mut c = lab.client().await;
            // Hold the board so jobs only accumulate; the daemon is killed while
            // submissions are still in flight on a second connection.
            let _ = set_health(&mut c, "sim-01", "maintenance", None).await;
            for i in 0..10 {
                acked.push(
                    submit(&mut c, &lab.job(&format!("r{round}-{i}"), "low", &["true"])).await,
                );
            }
            let text = lab.job("inflight", "low", &["true"]);
            let sock = lab.socket.clone();
            let inflight = tokio::spawn(async move {
                let mut c2 = labd::client::Client::connect(&sock).await.ok()?;
                let mut ok = Vec::new();
                for _ in 0..50 {
                    match c2.submit(&text, "j.yaml").await {
                        Ok(id) => ok.push(id),
                        Err(_) => break,
                    }
                }
                Some(ok)
            });
            lab.kill_labd();
            if let Ok(Some(ids)) = inflight.await {
                acked.extend(ids);
            }
            lab.start_labd();
            let mut c = lab.client().await;
            for id in &acked {
                let j = c
                    .call(RequestBody::Job { job: *id })
                    .await
                    .unwrap_or_else(|e| panic!("acknowledged job {id} lost in round {round}: {e}"));
                assert_eq!(j["state"], "Submitted", "job {id}");
            }
        }
        assert!(acked.len() >= 50);
    });
}

#[test]
fn job_cut_by_a_killed_daemon_ends_incomplete_and_its_board_is_unknown() {
    rt().block_on(async {
        let mut lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let first = submit(&mut c, &lab.job("ok", "medium", &["true"])).await;
        wait_job(&mut c, first).await;
        assert_eq!(boards(&mut c).await[0]["health"], "Good");
        let id = submit(&mut c, &lab.job("long", "medium", &["sleep 600"])).await;
        until_log_contains(&lab, id, "eval 'sleep 600'").await;
        drop(c);
        lab.kill_labd();
        lab.start_labd();
        let mut c = lab.client().await;
        let j = job(&mut c, id).await;
        assert_eq!(
            (
                j["state"].as_str(),
                j["health"].as_str(),
                j["error_class"].as_str()
            ),
            (Some("Finished"), Some("Incomplete"), Some("Infrastructure"))
        );
        assert_eq!(j["error"], "dispatcher restarted");
        let b = boards(&mut c).await;
        assert_eq!(
            (b[0]["state"].as_str(), b[0]["health"].as_str()),
            (Some("Idle"), Some("Unknown"))
        );
    });
}

/// LAVA's `minimal` boot: labd powers the board on and waits for the login
/// and the prompt; the board's own bootloader boots what it has.
#[test]
fn a_minimal_boot_powers_on_and_waits_for_the_shell() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let text = lab
            .job("minimal", "medium", &["lava-test-case up --shell true"])
            .replacen(
                "    method: u-boot\n    commands: ramdisk\n",
                "    method: minimal\n",
                1,
            );
        assert!(text.contains("method: minimal"));
        let id = submit(&mut c, &text).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete", "{log}");
        assert!(log.contains("mmc0 is current device"), "{log}");
        let j = job(&mut c, id).await;
        let phases: Vec<&str> = j["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "phase")
            .map(|e| e["message"].as_str().unwrap())
            .collect();
        assert!(!phases.contains(&"BootloaderCommands"), "{phases:?}");
        assert!(
            phases.contains(&"Login") && phases.contains(&"Testing"),
            "{phases:?}"
        );
    });
}
