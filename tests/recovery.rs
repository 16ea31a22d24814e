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
        let lab = Lab::start_env(
            3,
            &[("sim-01", &["a"]), ("sim-02", &["b"]), ("sim-03", &["c"])],
            &[(labd::faults::ENV, "board-handler:sim-01,board-boot:sim-02")],
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
