//! Misbehaving boards, from the simulator's fault knobs: garbage on the
//! console, a kernel that hangs, a relay that does not answer.

mod common;

use common::*;
use labd::sim::{ControlRequest, Fault};

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
