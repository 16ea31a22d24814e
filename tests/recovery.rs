//! Recovery: supervision of crashed board actors, graceful shutdown and a
//! daemon killed at random moments, all on real labd and labd-sim processes.

mod common;

use common::*;

/// A panic in a board actor's handler and another in its boot sequence:
/// each crashed board's job ends Incomplete (Bug), the board is powered off
/// and goes Unknown, its replacement runs the next job, and a job running on
/// a third board all along is untouched.
#[test]
fn crashed_board_actors_are_replaced_and_other_boards_untouched() {
    rt().block_on(async {
        let lab = Lab::start_with(
            3,
            &[("sim-01", &["a"]), ("sim-02", &["b"]), ("sim-03", &["c"])],
            &[(labd::faults::ENV, "board-handler:sim-01,board-boot:sim-02")],
            "",
        );
        let release = lab.dir.path().join("release");
        let mut c = lab.client().await;
        let wait_step = format!(
            "echo waiting; while [ ! -e {} ]; do sleep 0.1; done",
            release.display()
        );
        let steady = c
            .submit(
                &tagged(lab.job("steady", "medium", &[&wait_step]), "c"),
                "c.yaml",
            )
            .await
            .unwrap();
        until_log_contains(&lab, steady, "waiting\r\n").await;

        let mut crashed = Vec::new();
        for tag in ["a", "b"] {
            let id = c
                .submit(
                    &tagged(lab.job(&format!("crash-{tag}"), "medium", &["true"]), tag),
                    "j.yaml",
                )
                .await
                .unwrap();
            crashed.push(id);
        }
        for (id, name) in crashed.iter().zip(["sim-01", "sim-02"]) {
            let (end, log) = wait_job(&mut c, *id).await;
            assert_eq!(end["health"], "Incomplete", "{log}");
            let j = job(&mut c, *id).await;
            assert_eq!(j["error_class"], "Bug", "{j}");
            assert_eq!(j["board"], name);
            let b = board(&mut c, name).await;
            assert_eq!(
                (b["state"].as_str(), b["health"].as_str()),
                (Some("Idle"), Some("Unknown")),
                "{b}"
            );
        }
        // The boot panic struck after power-on; the replacement powered the
        // board off again.
        let on = powered(&lab).await;
        assert!(!on.contains(&"sim-02".to_owned()), "{on:?}");
        assert!(on.contains(&"sim-03".to_owned()), "{on:?}");

        // The steady job never noticed.
        let s = job(&mut c, steady).await;
        assert_eq!(s["state"], "Running", "{s}");
        std::fs::write(&release, b"").unwrap();
        let (end, log) = wait_job(&mut c, steady).await;
        assert_eq!(end["health"], "Complete", "{log}");

        // The replacement actors run jobs normally.
        for (tag, name) in [("a", "sim-01"), ("b", "sim-02")] {
            let id = c
                .submit(
                    &tagged(lab.job(&format!("after-{tag}"), "medium", &["true"]), tag),
                    "j.yaml",
                )
                .await
                .unwrap();
            let (end, log) = wait_job(&mut c, id).await;
            assert_eq!(
                end["health"],
                "Complete",
                "{log}\n{}",
                job(&mut c, id).await
            );
            assert_eq!(board(&mut c, name).await["health"], "Good");
        }
    });
}

/// SIGTERM: no new job starts, a submit is still answered and stored, a job
/// that ends within the grace ends normally, one that does not is ended
/// Incomplete ("dispatcher shutdown") with its board powered off; the daemon
/// exits 0, and the queued job runs after the restart.
#[test]
fn sigterm_drains_within_the_grace_and_keeps_the_queue() {
    rt().block_on(async {
        let mut lab = Lab::start_with(
            2,
            &[("sim-01", &["a"]), ("sim-02", &["b"])],
            &[],
            "[limits]\nshutdown_grace_secs = 2",
        );
        let release = lab.dir.path().join("release");
        let mut c = lab.client().await;
        let wait_step = format!(
            "echo waiting; while [ ! -e {} ]; do sleep 0.1; done",
            release.display()
        );
        let short = c
            .submit(
                &tagged(lab.job("short", "medium", &[&wait_step]), "a"),
                "a.yaml",
            )
            .await
            .unwrap();
        let long = c
            .submit(
                &tagged(
                    lab.job("long", "medium", &["echo sleeping; sleep 600"]),
                    "b",
                ),
                "b.yaml",
            )
            .await
            .unwrap();
        until_log_contains(&lab, short, "waiting\r\n").await;
        until_log_contains(&lab, long, "sleeping\r\n").await;

        lab.terminate_labd();
        lab.wait_log("draining");
        let queued = c
            .submit(
                &tagged(lab.job("queued", "medium", &["true"]), "a"),
                "q.yaml",
            )
            .await
            .unwrap();
        std::fs::write(&release, b"").unwrap();
        let (end, log) = wait_job(&mut c, short).await;
        assert_eq!(end["health"], "Complete", "{log}");
        // Its board is free, but nothing starts while draining.
        assert_eq!(job(&mut c, queued).await["state"], "Submitted");
        // The follow sees the end before the daemon closes the socket.
        let (end, _) = wait_job(&mut c, long).await;
        assert_eq!(end["health"], "Incomplete");
        drop(c);
        assert!(lab.wait_labd(), "labd exits 0 after draining");
        assert!(powered(&lab).await.is_empty());

        lab.start_labd();
        let mut c = lab.client().await;
        let j = job(&mut c, long).await;
        assert_eq!(
            (j["error_class"].as_str(), j["error"].as_str()),
            (Some("Infrastructure"), Some("dispatcher shutdown"))
        );
        let (end, log) = wait_job(&mut c, queued).await;
        assert_eq!(end["health"], "Complete", "{log}");
        // It stayed queued through the drain: it started after the restart.
        let q = job(&mut c, queued).await;
        assert!(
            q["start_time"].as_u64() > j["end_time"].as_u64(),
            "{q}\n{j}"
        );
    });
}
