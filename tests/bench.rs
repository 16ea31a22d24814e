//! The benchmarks still work: every `labd-bench` mode in a short smoke run.
//! CI runs the benchmarks only this way; their figures come from full runs
//! (BENCHMARKS.md). Nothing here is timed: the runs must finish and their
//! counts must be right.

use std::io::Write;

// The simulated board's TFTP client (U-Boot's side), from the `labd-sim`
// binary: the simulator is not part of labd's library.
#[path = "../src/bin/labd-sim/tftp_client.rs"]
mod tftp_client;
use std::process::{Command, Stdio};

fn bench(args: &[&str], stdin: Option<&[u8]>) -> serde_json::Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_labd-bench"))
        .args(args)
        .env("RUST_LOG", "labd=error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "labd-bench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "labd-bench {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Boards streaming at line rate through a real labd: every streamed line
/// of every job is in the store, in order, and the figures are there.
#[test]
fn boards_streaming_at_line_rate_are_stored_whole() {
    let v = bench(
        &["boards", "--boards", "2", "--seconds", "8", "--window", "1"],
        None,
    );
    assert_eq!(v["store"]["jobs_complete"], 2, "{v}");
    assert_eq!(v["store"]["every_line_stored"], true, "{v}");
    assert!(v["window"]["console_bytes_per_second"].as_f64().unwrap() > 0.0);
    assert!(v["window"]["labd_cores"].as_f64().is_some());
}

/// The console pipeline counts what the peer harness checks, with and
/// without the durable store.
#[test]
fn the_console_pipeline_counts_signals_prompts_and_the_end() {
    let mut log = String::new();
    for i in 0..200 {
        log.push_str(&format!(
            "[ {i:5}.000000] usb 1-1: new device\r\n<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=t{i} RESULT=pass>\r\n"
        ));
    }
    log.push_str("debian-bookworm login: \r\n<LAVA_TEST_RUNNER EXIT>\r\n");
    let store = tempfile::tempdir().unwrap();
    for args in [
        vec!["console"],
        vec!["console", "--store", store.path().to_str().unwrap()],
    ] {
        let v = bench(&args, Some(log.as_bytes()));
        assert_eq!(v["signals"], 200, "{args:?}: {v}");
        assert_eq!(v["testcases"], 200, "{args:?}: {v}");
        assert_eq!(v["logins"], 1, "{args:?}: {v}");
        assert_eq!(v["exit"], 1, "{args:?}: {v}");
        assert_eq!(v["bytes"], log.len(), "{args:?}: {v}");
    }
}

/// The socket benchmark fills the store with durable submits, then queries.
#[test]
fn the_socket_benchmark_fills_and_queries() {
    let v = bench(
        &["socket", "--jobs", "64", "--clients", "4", "--seconds", "1"],
        None,
    );
    assert_eq!(v["filled_jobs"], 64, "{v}");
    assert!(v["submit"]["count"].as_u64().unwrap() > 0, "{v}");
    assert!(v["jobs"]["count"].as_u64().unwrap() > 0, "{v}");
    // The open loop: queries on a schedule, beside flat-out submits.
    let v = bench(
        &[
            "socket",
            "--jobs",
            "16",
            "--clients",
            "4",
            "--seconds",
            "1",
            "--query-rate",
            "20",
        ],
        None,
    );
    // Two querying clients at 20 a second for 1 s ask at most about 21
    // times each (a closed loop asks hundreds of times), and do ask.
    let queries: u64 = ["jobs", "job", "boards"]
        .iter()
        .map(|m| v[m]["count"].as_u64().unwrap())
        .sum();
    assert!(queries > 0 && queries <= 2 * 22, "{v}");
}

/// The restart benchmark fills a store through labd's store module, and
/// the restarted labd serves the jobs it holds.
#[test]
fn the_restart_benchmark_restarts_on_a_filled_store() {
    let v = bench(
        &["restart", "--jobs", "300", "--log-mb", "2", "--runs", "2"],
        None,
    );
    assert_eq!(v["jobs"], 300, "{v}");
    assert_eq!(v["start_to_ready_ms"].as_array().unwrap().len(), 2, "{v}");
    assert!(v["store_mib"].as_f64().unwrap() > 2.0, "{v}");
}

/// The dispatch benchmark's relay (a pdudaemon listener) sees a power-on
/// for every job submitted.
#[test]
fn the_dispatch_benchmark_sees_every_power_on() {
    let v = bench(
        &[
            "dispatch",
            "--boards",
            "5",
            "--finished",
            "50",
            "--samples",
            "10",
        ],
        None,
    );
    assert_eq!(v["samples"], 10, "{v}");
    assert!(
        v["submit_ack_to_power_on_ms"]["p50"].as_f64().is_some(),
        "{v}"
    );
}

/// The TFTP server mode serves the harness's root through labd's handler:
/// a file at the root is fetched whole; a path out of it is refused.
#[test]
fn the_tftp_server_mode_serves_its_root() {
    use std::io::BufRead;
    let root = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.path().join("img.bin"), &data).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_labd-bench"))
        .args(["tftp", "--listen", "127.0.0.1:0", "--root"])
        .arg(root.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: std::net::SocketAddr = line.trim().rsplit(' ').next().unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let got = rt.block_on(tftp_client::fetch(addr, "img.bin", 1468, |_| {}));
    let refused = rt.block_on(tftp_client::fetch(addr, "../etc/passwd", 1468, |_| {}));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(got.unwrap(), data);
    assert!(refused.is_err());
}
