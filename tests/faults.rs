//! Misbehaving boards, from the simulator's fault knobs: garbage on the
//! console, a kernel that hangs, a relay that does not answer.

mod common;

use common::*;
use labd::sim_control::{ControlRequest, Fault};

async fn faulty_lab(fault: Fault) -> Lab {
    let lab = Lab::start(1, &[]);
    lab.sim(ControlRequest::Fault {
        board: "sim-01".into(),
        fault,
    })
    .await;
    lab
}

/// Garbage bytes (invalid UTF-8, NUL, escapes) do not disturb the job, and
/// the stored log gives them back byte for byte.
#[test]
fn garbage_on_the_console_is_kept_byte_for_byte() {
    rt().block_on(async {
        let lab = faulty_lab(Fault::Garbage).await;
        let mut c = lab.client().await;
        let id = submit(
            &mut c,
            &lab.job("garbage", "medium", &["lava-test-case ok --shell true"]),
        )
        .await;
        let (end, log) = wait_job_bytes(&mut c, id).await;
        assert_eq!(end["health"], "Complete");
        let garbage = b"\xff\xfe\x00\x1b[?\x80\xc3(\xa0\xa1 garbage \xe2\x28\xa1\r\n";
        assert!(
            log.windows(garbage.len()).any(|w| w == garbage),
            "garbage not in the log byte for byte"
        );
        // The end offset is the log's exact length.
        assert_eq!(end["offset"].as_u64(), Some(log.len() as u64));
    });
}

/// A kernel that hangs after "Starting kernel" (never printing `Linux
/// version`): the job's connection timeout ends it, at that time (from the
/// recorded events), well before the bootloader-commands action timeout.
#[test]
fn hung_kernel_ends_at_the_connection_timeout() {
    rt().block_on(async {
        let lab = faulty_lab(Fault::HangAfterKernel).await;
        let mut c = lab.client().await;
        let job = lab.job("hang", "medium", &["true"]).replacen(
            "timeouts:\n",
            "timeouts:\n  connection:\n    seconds: 2\n",
            1,
        );
        let id = submit(&mut c, &job).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Incomplete", "{log}");
        let j = common::job(&mut c, id).await;
        assert_eq!(j["error_class"], "Infrastructure");
        let err = j["error"].as_str().unwrap();
        assert!(err.contains("connection timed out after 2 s"), "{err}");
        assert!(
            err.contains("Linux version"),
            "names what it waited for: {err}"
        );
        let ev = j["events"].as_array().unwrap();
        let at = |kind: &str, prefix: &str| {
            ev.iter()
                .find(|e| e["kind"] == kind && e["message"].as_str().unwrap().starts_with(prefix))
                .and_then(|e| e["time"].as_u64())
                .unwrap()
        };
        // From the boot command to the end of the wait for the kernel.
        let waited = at("timeout", "") - at("bootloader-command", "booti");
        assert!((2000..4000).contains(&waited), "waited {waited} ms");
        assert!(!powered(&lab).await.contains(&"sim-01".to_owned()));
    });
}

/// LAVA's `timeouts.connections`: a connection timeout for one action
/// (here the boot commands, which wait for the kernel) takes the place of
/// the job's `connection` there.
#[test]
fn a_per_action_connection_timeout_bounds_that_actions_waits() {
    rt().block_on(async {
        let lab = faulty_lab(Fault::HangAfterKernel).await;
        let mut c = lab.client().await;
        let job = lab.job("hang", "medium", &["true"]).replacen(
            "timeouts:\n",
            "timeouts:\n  connection:\n    minutes: 2\n  connections:\n    bootloader-commands:\n      seconds: 2\n",
            1,
        );
        let id = submit(&mut c, &job).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Incomplete", "{log}");
        let j = common::job(&mut c, id).await;
        let err = j["error"].as_str().unwrap();
        assert!(err.contains("connection timed out after 2 s"), "{err}");
        assert!(err.contains("Linux version"), "{err}");
    });
}

/// U-Boot that boots by itself although labd sent the interrupt (the key
/// missed the countdown): the job ends at once, Incomplete (Infrastructure),
/// saying so, instead of waiting out the bootloader-interrupt timeout.
#[test]
fn a_missed_autoboot_countdown_ends_the_job_at_once() {
    rt().block_on(async {
        let lab = faulty_lab(Fault::IgnoresInterrupt).await;
        let mut c = lab.client().await;
        let id = submit(&mut c, &lab.job("autoboot", "medium", &["true"])).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Incomplete", "{log}");
        let j = common::job(&mut c, id).await;
        assert_eq!(j["error_class"], "Infrastructure");
        let err = j["error"].as_str().unwrap();
        assert!(err.contains("U-Boot booted by itself"), "{err}");
        // It ended on the kernel's start, not on a timeout.
        let ev = j["events"].as_array().unwrap();
        assert!(!ev.iter().any(|e| e["kind"] == "timeout"), "{ev:?}");
        assert!(log.contains("Starting kernel"), "{log}");
        assert!(!powered(&lab).await.contains(&"sim-01".to_owned()));
    });
}

/// A relay that does not answer: the job ends Incomplete (Infrastructure)
/// naming the power failure, and the board must prove itself again.
#[test]
fn failing_relay_ends_the_job_as_infrastructure() {
    rt().block_on(async {
        let lab = faulty_lab(Fault::RelayFails).await;
        let mut c = lab.client().await;
        let id = submit(&mut c, &lab.job("relay", "medium", &["true"])).await;
        let (end, _) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Incomplete");
        let j = common::job(&mut c, id).await;
        assert_eq!(j["error_class"], "Infrastructure");
        let err = j["error"].as_str().unwrap();
        assert!(err.contains("relay did not respond"), "{err}");
        let b = board(&mut c, "sim-01").await;
        assert_eq!(
            (b["state"].as_str(), b["health"].as_str()),
            (Some("Idle"), Some("Unknown"))
        );
        // After failed commands nobody knows the relay's state.
        assert_eq!(b["power"], "Unknown");
    });
}

/// A test step that floods the console with 30 MB of random bytes: the job
/// still completes, its stored log stops at the configured cap with a note
/// saying so, and labd's memory stays bounded.
#[test]
fn console_flood_is_capped_and_memory_stays_bounded() {
    rt().block_on(async {
        let lab = Lab::start_with(1, &[], &[], "[limits]\nmax_job_log_bytes = 1048576");
        let mut c = lab.client().await;
        let id = c
            .submit(
                &lab.job(
                    "flood",
                    "medium",
                    &[
                        "head -c 30000000 /dev/urandom; echo",
                        "lava-test-case after-flood --shell true",
                    ],
                ),
                "j.yaml",
            )
            .await
            .unwrap();
        let (end, log) = wait_job_bytes(&mut c, id).await;
        assert_eq!(end["health"], "Complete");
        let r = c
            .call(labd::protocol::RequestBody::Results { job: id })
            .await
            .unwrap();
        assert_eq!(r["results"][0]["name"], "after-flood", "{r}");
        let note = b"console log truncated at 1048576 bytes";
        assert!(log.windows(note.len()).any(|w| w == note));
        assert!(log.len() < 1_048_576 + 4096, "log is {} bytes", log.len());
        let status = std::fs::read_to_string(format!("/proc/{}/status", lab.labd_pid())).unwrap();
        let peak_kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        println!("labd peak RSS {peak_kb} kB after a 30 MB flood");
        assert!(peak_kb < 150 * 1024, "labd peaked at {peak_kb} kB");
    });
}

/// A board that floods its console while the job is busy elsewhere (here
/// in a power-on that takes as long as the test wants): past the runner's
/// feed limit (`runner::FEED_LIMIT`) the bytes still go to the log, whole,
/// but not to the runner, and once it has caught up the log says how many
/// it never saw.
#[test]
fn a_flood_while_the_job_is_busy_is_logged_and_noted() {
    use std::io::{Read, Write};
    rt().block_on(async {
        let mut lab = Lab::prepare(1, &[], &[], "");
        let dir = lab.dir.path().to_path_buf();
        let link = dir.join("board.console");
        // The relay says when it is switching on, and finishes only when
        // told: two FIFOs, so each side waits for the other's event.
        let (powering, go) = (dir.join("powering"), dir.join("go"));
        for f in [&powering, &go] {
            nix::unistd::mkfifo(f, nix::sys::stat::Mode::S_IRWXU).unwrap();
        }
        let on = format!(
            "echo on > '{}'; read _ < '{}'",
            powering.display(),
            go.display()
        );
        let cfg = std::fs::read_to_string(&lab.config)
            .unwrap()
            .replace(
                "console = { type = \"sim\" }",
                &format!("console = {{ type = \"pty\", link = {:?} }}", link),
            )
            .replace(
                "power = { type = \"sim\" }",
                &format!(
                    "power = {{ type = \"command\", on = [\"sh\", \"-c\", {on:?}], off = [\"true\"], timeout_secs = 300 }}"
                ),
            )
            .replace("\"timeouts.bootloader-interrupt\" = 3", "\"timeouts.bootloader-interrupt\" = 300");
        std::fs::write(&lab.config, cfg).unwrap();
        lab.start_labd();
        let mut c = lab.client().await;
        let id = submit(&mut c, &lab.job("busy", "medium", &["true"])).await;
        let mut follower = lab.client().await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            follower
                .logs(id, true, |d| {
                    let _ = tx.send(d.to_vec());
                })
                .await
        });
        let mut log = Vec::new();
        let mut log_until = async |log: &mut Vec<u8>, done: &dyn Fn(&[u8]) -> bool| {
            while !done(log) {
                let chunk = rx.recv().await.expect("the job ended first");
                log.extend_from_slice(&chunk);
            }
        };
        // The runner is in the power-on: the board floods.
        tokio::task::spawn_blocking(move || {
            std::fs::File::open(powering).unwrap().read_to_end(&mut Vec::new())
        })
        .await
        .unwrap()
        .unwrap();
        const FLOOD: usize = 9_000_000;
        const { assert!(FLOOD > labd::runner::FEED_LIMIT) };
        const LINE: usize = 100;
        let slave = link.clone();
        tokio::task::spawn_blocking(move || {
            let mut tty = std::fs::OpenOptions::new().write(true).open(slave).unwrap();
            let line = [b"x".repeat(LINE - 2), b"\r\n".to_vec()].concat();
            for _ in 0..FLOOD / LINE {
                tty.write_all(&line).unwrap();
            }
        })
        .await
        .unwrap();
        log_until(&mut log, &|l| l.len() >= FLOOD).await;
        // The relay is done; the runner catches up. What comes next finds
        // room, and the note goes first.
        tokio::task::spawn_blocking(move || std::fs::write(go, "go\n"))
            .await
            .unwrap()
            .unwrap();
        let note = b"console bytes came faster than the job could read them and were not matched]";
        let mut tty = std::fs::OpenOptions::new().write(true).open(&link).unwrap();
        let mut k = 0;
        while !log.windows(note.len()).any(|w| w == note) {
            k += 1;
            assert!(k < 50, "no note after {k} lines");
            let probe = format!("probe {k}\r\n");
            tty.write_all(probe.as_bytes()).unwrap();
            let p = probe.trim_end().to_owned();
            log_until(&mut log, &|l| {
                l.windows(p.len()).any(|w| w == p.as_bytes())
            })
            .await;
        }
        let text = String::from_utf8_lossy(&log);
        let at = text.find("[labd: ").expect("the note");
        let unfed: u64 = text[at + 7..]
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .expect("a count in the note");
        assert!(unfed > 0 && unfed as usize <= FLOOD, "{unfed}");
        // Nothing was lost from the log itself: every byte of the flood
        // is there (nothing else in it has an `x`).
        let xs = log.iter().filter(|&&b| b == b'x').count();
        assert_eq!(xs, FLOOD / LINE * (LINE - 2));
        c.call(labd::protocol::RequestBody::Cancel { job: id })
            .await
            .unwrap();
        let (end, _) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Canceled");
    });
}
