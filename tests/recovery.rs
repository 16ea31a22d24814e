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
        let steady = submit(
            &mut c,
            &tagged(lab.job("steady", "medium", &[&wait_step]), "c"),
        )
        .await;
        until_log_contains(&lab, steady, "waiting\r\n").await;

        let mut crashed = Vec::new();
        for tag in ["a", "b"] {
            let id = submit(
                &mut c,
                &tagged(lab.job(&format!("crash-{tag}"), "medium", &["true"]), tag),
            )
            .await;
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
            let id = submit(
                &mut c,
                &tagged(lab.job(&format!("after-{tag}"), "medium", &["true"]), tag),
            )
            .await;
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
        let short = submit(
            &mut c,
            &tagged(lab.job("short", "medium", &[&wait_step]), "a"),
        )
        .await;
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
        let queued = submit(&mut c, &tagged(lab.job("queued", "medium", &["true"]), "a")).await;
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
        // A clean exit leaves no socket file for clients to hang on.
        assert!(!lab.socket.exists(), "the socket file is removed at exit");
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

/// A small xorshift generator: the kill moments are random, and the seed
/// is printed (and can be set with TORTURE_SEED) so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn from_env() -> Rng {
        let seed = std::env::var("TORTURE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        println!("TORTURE_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn fsck(lab: &Lab) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_labd"))
        .arg("fsck")
        .arg("--state-dir")
        .arg(lab.dir.path().join("state"))
        .output()
        .unwrap()
}

/// 100 jobs on 4 boards while the daemon is SIGKILLed at random moments 12
/// times: the store is consistent at every kill (`labd fsck`), every
/// acknowledged job exists and ends exactly once, no board ever ran two
/// jobs at once, and every complete job's log is whole.
#[test]
fn torture_sigkill_at_random_moments_loses_nothing() {
    rt().block_on(async {
        let mut lab = Lab::start(4, &[]);
        let mut rng = Rng::from_env();
        let mut acked: Vec<u64> = Vec::new();
        let prios = ["high", "medium", "low"];
        for round in 0..12 {
            let texts: Vec<String> = (0..8)
                .map(|i| {
                    let p = prios[rng.below(3) as usize];
                    lab.job(
                        &format!("t{round}-{i}"),
                        p,
                        &["lava-test-case a --shell true"],
                    )
                })
                .collect();
            let sock = lab.socket.clone();
            let submitter = tokio::spawn(async move {
                let mut ok = Vec::new();
                let Ok(mut c) = labd::client::Client::connect(&sock).await else {
                    return ok;
                };
                for t in texts {
                    match c.submit(&t, "t.yaml").await {
                        Ok(id) => ok.push(id),
                        Err(_) => break,
                    }
                }
                ok
            });
            // The random moment of the kill; nothing waits on it.
            tokio::time::sleep(std::time::Duration::from_millis(rng.below(700))).await;
            lab.kill_labd();
            acked.extend(submitter.await.unwrap());
            let o = fsck(&lab);
            assert!(
                o.status.success(),
                "fsck after kill {round}: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            lab.start_labd();
        }
        let mut c = lab.client().await;
        while acked.len() < 100 {
            let text = lab.job(&format!("fill-{}", acked.len()), "medium", &["true"]);
            acked.push(submit(&mut c, &text).await);
        }
        let mut runs: std::collections::BTreeMap<String, Vec<(u64, u64, u64)>> = Default::default();
        for &id in &acked {
            let (end, log) = wait_job(&mut c, id).await;
            let j = job(&mut c, id).await;
            assert_eq!(j["state"], "Finished", "job {id}");
            let health = end["health"].as_str().unwrap();
            assert!(
                ["Complete", "Incomplete", "Canceled"].contains(&health),
                "job {id}: {health}"
            );
            let ends = j["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| {
                    e["kind"] == "state" && e["message"].as_str().unwrap().starts_with("Finished")
                })
                .count();
            assert_eq!(ends, 1, "job {id} ended {ends} times: {j}");
            if health == "Complete" {
                for needle in ["U-Boot", "Linux version", "<LAVA_SIGNAL_ENDRUN"] {
                    assert!(log.contains(needle), "job {id}'s log lacks {needle}");
                }
            }
            if let (Some(b), Some(s)) = (j["board"].as_str(), j["start_time"].as_u64()) {
                let e = j["end_time"].as_u64().unwrap();
                runs.entry(b.to_owned()).or_default().push((s, e, id));
            }
        }
        for (board, mut r) in runs {
            r.sort();
            for w in r.windows(2) {
                assert!(
                    w[1].0 >= w[0].1,
                    "{board} ran job {} ({}..{}) and job {} ({}..{}) at once",
                    w[0].2,
                    w[0].0,
                    w[0].1,
                    w[1].2,
                    w[1].0,
                    w[1].1
                );
            }
        }
        drop(c);
        lab.terminate_labd();
        assert!(lab.wait_labd());
        let o = fsck(&lab);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    });
}
