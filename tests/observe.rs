//! Watching labd: metrics on the socket and over HTTP, slow-operation
//! reports.

mod common;

use common::*;
use labd::protocol::RequestBody;
use std::io::{Read, Write};

/// The value of the first sample line starting with `prefix`.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in\n{text}"))
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn metrics_after_a_job_on_the_socket_and_over_http() {
    rt().block_on(async {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut lab = Lab::prepare(1, &[], &[], "");
        let cfg = std::fs::read_to_string(&lab.config).unwrap();
        std::fs::write(
            &lab.config,
            format!("metrics_listen = \"127.0.0.1:{port}\"\n{cfg}"),
        )
        .unwrap();
        lab.start_labd();
        let mut c = lab.client().await;
        let id = submit(&mut c, &lab.job("measured", "medium", &["true"])).await;
        wait_job(&mut c, id).await;
        let v = c.call(RequestBody::Metrics).await.unwrap();
        let text = v["text"].as_str().unwrap();
        assert_eq!(sample(text, "labd_jobs_submitted_total "), 1.0);
        assert_eq!(
            sample(text, "labd_jobs_finished_total{health=\"Complete\"} "),
            1.0
        );
        assert_eq!(
            sample(
                text,
                "labd_phase_duration_seconds_count{device_type=\"sim-uboot\",phase=\"BootloaderCommands\"} "
            ),
            1.0
        );
        assert_eq!(sample(text, "labd_tftp_transfers_total "), 3.0);
        // The kernel, ramdisk and DTB of tests/common.
        assert!(sample(text, "labd_tftp_bytes_total ") >= 404_000.0, "{text}");
        assert!(sample(text, "labd_console_bytes_total{board=\"sim-01\"} ") > 1000.0);
        assert_eq!(
            sample(text, "labd_request_duration_seconds_count{method=\"submit\"} "),
            1.0
        );
        assert_eq!(sample(text, "labd_boards{state=\"Idle\",health=\"Good\"} "), 1.0);
        assert_eq!(sample(text, "labd_queue_wait_seconds_count "), 1.0);
        assert!(sample(text, "labd_store_disk_bytes ") > 0.0);
        assert!(sample(text, "labd_process_resident_memory_bytes ") > 0.0);

        // Where the job's time went, stored with the job, phase by phase.
        let j = job(&mut c, id).await;
        let phases: Vec<&str> = j["timing"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["phase"].as_str().unwrap())
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
        let total: u64 = j["timing"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["ms"].as_u64().unwrap())
            .sum();
        let ran = j["end_time"].as_u64().unwrap() - j["start_time"].as_u64().unwrap();
        assert!(total <= ran + 50, "phases {total} ms, job {ran} ms");
        let shown = lab.labctl(&["job", &id.to_string()]);
        assert!(shown.contains("time on the board, by phase:"), "{shown}");
        assert!(shown.contains("BootloaderCommands"), "{shown}");

        let http = http_get(port, "/metrics");
        assert!(http.starts_with("HTTP/1.1 200 OK\r\n"), "{http}");
        assert_eq!(
            sample(&http, "labd_jobs_finished_total{health=\"Complete\"} "),
            1.0
        );
        assert!(http_get(port, "/nope").starts_with("HTTP/1.1 404"));
    });
}

#[test]
fn operations_above_a_tiny_threshold_are_reported_slow() {
    rt().block_on(async {
        let lab = Lab::start_with(1, &[], &[], "[slow]\nstore_ms = 0\nrequest_ms = 0");
        let mut c = lab.client().await;
        submit(&mut c, &lab.job("slow", "medium", &["true"])).await;
        lab.wait_log("slow store write batch");
        lab.wait_log("slow socket request");
        let v = c.call(RequestBody::Metrics).await.unwrap();
        let text = v["text"].as_str().unwrap();
        assert!(sample(text, "labd_slow_operations_total{kind=\"store\"} ") >= 1.0);
        assert!(sample(text, "labd_slow_operations_total{kind=\"request\"} ") >= 1.0);
    });
}

#[test]
fn top_shows_each_board_its_job_phase_and_times() {
    rt().block_on(async {
        let lab = Lab::start(2, &[]);
        let mut c = lab.client().await;
        let release = lab.dir.path().join("release");
        let step = format!(
            "echo waiting; while [ ! -e {} ]; do sleep 0.1; done",
            release.display()
        );
        let id = submit(&mut c, &lab.job("watched", "medium", &[&step])).await;
        until_log_contains(&lab, id, "waiting\r\n").await;
        let frame = lab.labctl(&["top", "--once"]);
        assert!(
            frame.contains("boards: 2 (1 busy)   queued jobs: 0"),
            "{frame}"
        );
        let line = frame
            .lines()
            .find(|l| l.contains(&format!(" {id} ")))
            .unwrap_or_else(|| panic!("no line for job {id} in\n{frame}"));
        assert!(
            line.contains("Running") && line.contains("Testing"),
            "{line}"
        );
        assert!(
            line.trim_end().ends_with(|c: char| c.is_ascii_digit()),
            "{line}"
        );
        // Jobs with no free board are counted, from the boards answer.
        set_health(&mut c, "sim-02", "maintenance", None)
            .await
            .unwrap();
        let waiting = [
            submit(&mut c, &lab.job("waits-1", "medium", &["true"])).await,
            submit(&mut c, &lab.job("waits-2", "medium", &["true"])).await,
        ];
        let b = c.call(labd::protocol::RequestBody::Boards).await.unwrap();
        assert_eq!(b["queued"], 2, "{b}");
        let frame = lab.labctl(&["top", "--once"]);
        assert!(frame.contains("queued jobs: 2"), "{frame}");
        std::fs::write(&release, b"").unwrap();
        wait_job(&mut c, id).await;
        for w in waiting {
            wait_job(&mut c, w).await;
        }
    });
}

/// Two distinct ports on loopback that nothing listens on (both are held
/// while the second is picked): connections to them are refused.
fn closed_ports() -> (u16, u16) {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (a, b) = (bind(), bind());
    let port = |l: &std::net::TcpListener| l.local_addr().unwrap().port();
    (port(&a), port(&b))
}

/// A board a lava-server owns says so, with its device name there and the
/// worker, in `labctl boards`, `labctl top` and `--json boards`; a lab's
/// own board says `local`. The worker's link to a server that never
/// answers shows on the metrics endpoint as failed pings, none ok, and
/// `connected` 0.
#[test]
fn a_lava_owned_board_shows_its_owner_and_a_dead_link_its_failed_pings() {
    let (dead, port) = closed_ports();
    let url = format!("http://127.0.0.1:{dead}/");
    let mut lab = Lab::prepare(
        2,
        &[],
        &[],
        &format!("[lava]\nurl = {url:?}\nworker = \"lab-1\"\nping_interval_secs = 1\n"),
    );
    let cfg = std::fs::read_to_string(&lab.config).unwrap();
    let cfg = cfg.replacen(
        "name = \"sim-01\"\n",
        "name = \"sim-01\"\nlava_worker_device = \"qemu-01\"\n",
        1,
    );
    std::fs::write(
        &lab.config,
        format!("metrics_listen = \"127.0.0.1:{port}\"\n{cfg}"),
    )
    .unwrap();
    lab.start_labd();

    let table = lab.labctl(&["boards"]);
    let row = |text: &str, board: &str| -> String {
        text.lines()
            .find(|l| l.starts_with(board))
            .unwrap_or_else(|| panic!("no {board} in\n{text}"))
            .to_owned()
    };
    assert!(table.lines().next().unwrap().contains("OWNER"), "{table}");
    assert!(
        row(&table, "sim-01").contains(" lava:qemu-01@lab-1 "),
        "{table}"
    );
    assert!(row(&table, "sim-02").contains(" local "), "{table}");
    let frame = lab.labctl(&["top", "--once"]);
    assert!(
        row(&frame, "sim-01").contains(" lava:qemu-01@lab-1 "),
        "{frame}"
    );
    assert!(row(&frame, "sim-02").contains(" local "), "{frame}");

    let v: serde_json::Value = serde_json::from_str(&lab.labctl(&["--json", "boards"])).unwrap();
    let boards = v["boards"].as_array().unwrap();
    assert_eq!(
        boards[0]["lava"],
        serde_json::json!({"device": "qemu-01", "url": url, "worker": "lab-1"}),
        "{v}"
    );
    // A lab's own board, and a board with no server's job, carry neither
    // field: what a client read before is what it reads now.
    assert!(boards[1].get("lava").is_none(), "{v}");
    assert!(boards.iter().all(|b| b.get("lava_job").is_none()), "{v}");

    // The first ping fails (no token: it registers, and nothing answers);
    // its count is recorded before the warning is logged.
    lab.wait_log("LAVA worker: ping failed");
    let http = http_get(port, "/metrics");
    assert!(http.starts_with("HTTP/1.1 200 OK\r\n"), "{http}");
    let link = format!("server=\"{url}\",worker=\"lab-1\"");
    assert!(
        sample(
            &http,
            &format!("labd_lava_pings_total{{{link},outcome=\"failed\"}} ")
        ) >= 1.0,
        "{http}"
    );
    assert_eq!(
        sample(
            &http,
            &format!("labd_lava_pings_total{{{link},outcome=\"ok\"}} ")
        ),
        0.0
    );
    assert_eq!(
        sample(&http, &format!("labd_lava_connected{{{link}}} ")),
        0.0
    );
    assert_eq!(
        sample(&http, &format!("labd_lava_jobs_started_total{{{link}}} ")),
        0.0
    );
    assert_eq!(
        sample(&http, &format!("labd_lava_log_lines_queued{{{link}}} ")),
        0.0
    );
    // `labctl metrics` prints the same text, one series a line (it printed
    // every line end as `\x0a`, all on one line, once labctl escaped
    // control characters).
    let text = lab.labctl(&["metrics"]);
    assert_eq!(
        sample(&text, &format!("labd_lava_connected{{{link}}} ")),
        0.0
    );
}

/// `[log] format = "json"`: one JSON object per line, and what the boot
/// sequence logs is inside its job's span, inside its board's span.
#[test]
fn json_logs_carry_the_job_span() {
    rt().block_on(async {
        let lab = Lab::start_with(
            1,
            &[],
            &[("RUST_LOG", "labd=debug")],
            "[log]\nformat = \"json\"",
        );
        let mut c = lab.client().await;
        let id = submit(&mut c, &lab.job("logged", "medium", &["true"])).await;
        let line = lab.wait_log("\"phase\":\"BootloaderCommands\"");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "DEBUG");
        assert_eq!(v["span"]["name"], "job");
        assert_eq!(v["span"]["id"], id);
        assert_eq!(v["span"]["board"], "sim-01");
        // Inside the board's own span.
        assert_eq!(v["spans"][0]["name"], "board", "{v}");
        assert_eq!(v["spans"][0]["board"], "sim-01");
        wait_job(&mut c, id).await;
    });
}

#[test]
fn metrics_are_pushed_to_statsd() {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // Only a broken push makes the test wait this long.
    udp.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let port = udp.local_addr().unwrap().port();
    let _lab = Lab::start_with(
        1,
        &[],
        &[],
        &format!("[statsd]\naddress = \"127.0.0.1:{port}\"\nprefix = \"lab1\"\ninterval_secs = 1"),
    );
    let mut got = String::new();
    let mut buf = [0u8; 2048];
    while !got.contains("lab1.queue_depth:") {
        let n = udp.recv(&mut buf).expect("a statsd datagram");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
        got.push('\n');
    }
    assert!(got.contains("lab1.jobs_submitted_total:0|g"), "{got}");
    assert!(got.contains("lab1.boards.Idle.Unknown:1|g"), "{got}");
}
