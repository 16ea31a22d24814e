//! The socket protocol and labctl against a real daemon: hostile requests,
//! listing with filters and a cursor, the submitter from peer credentials,
//! and the demo lab served for labctl.

mod common;

use common::*;
use labd::protocol::RequestBody;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

#[test]
fn hostile_requests_get_errors_and_the_connection_stays_usable() {
    let lab = Lab::start(1, &[]);
    let mut raw = Raw::connect(&lab.socket);
    // Over the 1 MiB default request limit.
    let mut big = br#"{"id":2,"method":"submit","params":{"definition":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', 2 << 20));
    big.extend_from_slice(br#""}}"#);
    let a = raw.ask(&big);
    assert_eq!(a["error"]["code"], "request_too_large", "{a}");
    let a = raw.ask(b"{\"id\":3,\"method\":\"jobs\",\"params\":{\"board\":\"\xff\xfe\"}}");
    assert_eq!(a["error"]["code"], "bad_request", "{a}");
    assert!(a["error"]["message"].as_str().unwrap().contains("UTF-8"));
    let a = raw.ask(br#"{"id":4,"method":"jobs","params":{"#);
    assert_eq!(
        (a["id"].as_u64(), a["error"]["code"].as_str()),
        (Some(0), Some("bad_request"))
    );
    let a = raw.ask(br#"{"id":5,"method":"launch_missiles"}"#);
    assert_eq!(
        (a["id"].as_u64(), a["error"]["code"].as_str()),
        (Some(5), Some("bad_request"))
    );
    let a = raw.ask(br#"{"id":6,"method":"job","params":{"job":999}}"#);
    assert_eq!(a["error"]["code"], "no_such_job", "{a}");
    // Still usable, and nothing was stored.
    let a = raw.ask(br#"{"id":7,"method":"jobs"}"#);
    assert_eq!(a["id"], 7);
    assert_eq!(a["ok"]["jobs"], serde_json::json!([]), "{a}");
}

#[test]
fn jobs_filter_by_state_board_and_device_type_and_page_with_a_cursor() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let done = submit(&mut c, &lab.job("first", "medium", &["true"])).await;
        wait_job(&mut c, done).await;
        set_health(&mut c, "sim-01", "maintenance", None)
            .await
            .unwrap();
        let mut queued = Vec::new();
        for i in 0..5 {
            queued.push(submit(&mut c, &lab.job(&format!("q{i}"), "low", &["true"])).await);
        }
        let list = |state: Option<&str>,
                    board: Option<&str>,
                    device_type: Option<&str>,
                    limit: Option<usize>,
                    cursor: Option<u64>| RequestBody::Jobs {
            state: state.map(Into::into),
            board: board.map(Into::into),
            device_type: device_type.map(Into::into),
            limit,
            cursor,
        };
        let ids = |v: Value| -> Vec<u64> {
            v["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_u64().unwrap())
                .collect()
        };
        // Newest first, in pages.
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = ids(c
                .call(list(None, None, None, Some(2), cursor))
                .await
                .unwrap());
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 2);
            cursor = page.last().copied();
            seen.extend(page);
        }
        let mut all: Vec<u64> = queued.iter().rev().copied().collect();
        all.push(done);
        assert_eq!(seen, all);
        let q = ids(c
            .call(list(Some("Submitted"), None, None, None, None))
            .await
            .unwrap());
        assert_eq!(q, queued.iter().rev().copied().collect::<Vec<_>>());
        let q = ids(c
            .call(list(
                Some("Submitted"),
                None,
                None,
                Some(2),
                Some(queued[3]),
            ))
            .await
            .unwrap());
        assert_eq!(q, vec![queued[2], queued[1]]);
        let f = ids(c
            .call(list(Some("Finished"), None, None, None, None))
            .await
            .unwrap());
        assert_eq!(f, vec![done]);
        let b = ids(c
            .call(list(None, Some("sim-01"), None, None, None))
            .await
            .unwrap());
        assert_eq!(b, vec![done]);
        let d = ids(c
            .call(list(None, None, Some("beaglebone-black"), None, None))
            .await
            .unwrap());
        assert!(d.is_empty());
        let bad = c.call(list(Some("Sleeping"), None, None, None, None)).await;
        assert_eq!(
            bad.unwrap_err().code(),
            Some(labd::error::ErrorCode::BadRequest)
        );
    });
}

/// The fields a job shows on the socket: every one in `jobs`, `job` and
/// `results`; the definition and events only in `job`.
#[test]
fn job_answers_carry_every_field() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let text = lab.job("shape", "high", &["true"]);
        let id = submit(&mut c, &text).await;
        wait_job(&mut c, id).await;
        let fields = [
            "id",
            "name",
            "device_type",
            "priority",
            "tags",
            "submitter",
            "state",
            "health",
            "error_class",
            "error",
            "board",
            "submit_time",
            "start_time",
            "end_time",
            "health_check",
            "log_pruned",
            "retry_of",
            "attempt",
            "timing",
        ];
        let has_all = |j: &Value| {
            for f in fields {
                assert!(j.get(f).is_some(), "no `{f}` in {j}");
            }
        };
        let list = all_jobs(&mut c).await;
        let listed = &list[0];
        has_all(listed);
        assert_eq!(listed["id"], id);
        assert_eq!(listed["name"], "shape");
        assert_eq!(listed["state"], "Finished");
        assert_eq!(listed["health"], "Complete");
        assert_eq!(listed["board"], "sim-01");
        assert!(listed["error"].is_null());
        assert!(listed.get("definition").is_none());
        assert!(listed.get("events").is_none());
        let one = job(&mut c, id).await;
        has_all(&one);
        assert_eq!(one["definition"], text.as_str());
        assert!(!one["events"].as_array().unwrap().is_empty());
        let results = c.call(RequestBody::Results { job: id }).await.unwrap();
        has_all(&results["job"]);
        assert!(results["results"].is_array());
    });
}

#[test]
fn the_submitter_is_the_peer_not_what_the_client_claims() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let id = submit(&mut c, &lab.job("who", "medium", &["true"])).await;
        let me = nix::unistd::User::from_uid(nix::unistd::getuid())
            .unwrap()
            .unwrap()
            .name;
        assert_eq!(job(&mut c, id).await["submitter"], me);
    });
}

#[test]
fn demo_serve_runs_a_lab_for_labctl_until_sigterm() {
    let mut labd = Command::new(env!("CARGO_BIN_EXE_labd"))
        .args(["--demo", "--serve"])
        .env_remove("LABD_SOCKET")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(labd.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let socket = line
        .trim()
        .strip_prefix("LABD_SOCKET=")
        .unwrap_or_else(|| panic!("first line: {line:?}"))
        .to_owned();
    let labctl = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_labctl"))
            .args(args)
            .env("LABD_SOCKET", &socket)
            .output()
            .unwrap()
    };
    let o = labctl(&["--json", "boards"]);
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = v["boards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sim-01", "sim-02", "sim-03", "sim-04"]);
    // Errors exit non-zero and say what is wrong.
    let o = labctl(&["job", "4242"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("4242"), "{o:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(labd.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(labd.wait().unwrap().success());
    // The demo's temporary state went with it.
    assert!(!std::path::Path::new(&socket).exists());
}

/// A client that starts a request and stalls is dropped after the request
/// timeout; connections over the limit are refused with `busy`, and a freed
/// slot is usable at once.
#[test]
fn stalled_clients_are_dropped_and_connections_are_bounded() {
    let lab = Lab::start_with(
        1,
        &[],
        &[],
        "[limits]\nmax_connections = 2\nrequest_timeout_secs = 1",
    );
    let _idle = Raw::connect(&lab.socket);
    let mut stalled = Raw::connect(&lab.socket);
    stalled.w.write_all(br#"{"id":2,"method":"#).unwrap();
    // The third is over the limit.
    let mut third = BufReader::new(UnixStream::connect(&lab.socket).unwrap());
    let mut line = String::new();
    third.read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["error"]["code"], "busy", "{v}");
    // The stalled one is closed by the server (EOF, no answer)...
    let mut rest = String::new();
    assert_eq!(stalled.r.read_line(&mut rest).unwrap(), 0, "{rest}");
    // ...and its slot serves a new client. An idle client that never
    // started a request was left alone all along.
    let mut again = Raw::connect(&lab.socket);
    let a = again.ask(br#"{"id":2,"method":"boards"}"#);
    assert_eq!(a["ok"]["boards"][0]["name"], "sim-01");
}

/// A connection that never said hello held its slot for as long as it
/// stayed open, and a request line sent a byte at a time was never cut (the
/// timeout restarted on each byte). Now the hello has a deadline, and a
/// line must arrive whole within the request timeout of its first byte.
#[test]
fn silent_clients_and_slow_lines_are_closed_at_their_deadlines() {
    let lab = Lab::start_with(
        1,
        &[],
        &[],
        "[limits]\nhello_timeout_secs = 1\nrequest_timeout_secs = 2",
    );
    // Never says hello: closed by labd (EOF), well before the bound here.
    let silent = UnixStream::connect(&lab.socket).unwrap();
    silent
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut line = String::new();
    let n = BufReader::new(&silent).read_line(&mut line);
    assert!(matches!(n, Ok(0)), "{n:?} {line:?}");

    // Said hello, then sends a request a byte every 300 ms: the whole line
    // would take 8 s; labd closes it at 2 s, without answering it.
    let slow = Raw::connect(&lab.socket);
    slow.r
        .get_ref()
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut w = slow.w.try_clone().unwrap();
    let dribble = std::thread::spawn(move || {
        for b in br#"{"id":2,"method":"boards"}"#.iter().chain(b"\n") {
            if w.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    });
    let mut r = slow.r;
    let mut answer = String::new();
    let n = r.read_line(&mut answer);
    assert!(
        matches!(n, Ok(0)),
        "answered a line that took 8 s: {n:?} {answer:?}"
    );
    dribble.join().unwrap();
}

/// Pipelined requests were each read and started at once: 1000 `logs`
/// requests for a large log on one connection that read nothing grew
/// labd by about 500 MB, which stayed after the client left. Requests in
/// flight and answer bytes queued are bounded per connection, and the
/// memory goes back when the client goes.
#[test]
fn pipelined_log_requests_are_bounded_and_their_memory_returns() {
    let lab = Lab::start_with(1, &[], &[], "[limits]\nmax_job_log_bytes = 16000000");
    let id = rt().block_on(async {
        let mut c = lab.client().await;
        let id = submit(
            &mut c,
            &lab.job(
                "big",
                "medium",
                &["head -c 8000000 /dev/zero | tr '\\\\0' x; echo"],
            ),
        )
        .await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete");
        assert!(log.len() > 8_000_000, "{}", log.len());
        id
    });
    let rss = || -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", lab.labd_pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    let before = rss();
    let raw = Raw::connect(&lab.socket);
    let mut w = raw.w.try_clone().unwrap();
    // Written from a thread: labd stops reading once its bound is reached,
    // and the socket's buffer then holds the rest of our writes.
    let writer = std::thread::spawn(move || {
        for i in 0..1000 {
            let line = format!(
                "{{\"id\":{},\"method\":\"logs\",\"params\":{{\"job\":{id}}}}}\n",
                i + 2
            );
            if w.write_all(line.as_bytes()).is_err() {
                return;
            }
        }
    });
    // labd's resident size while the answers are wanted and nothing is
    // read, sampled over a few seconds (a measurement window, not a wait).
    let mut peak = 0;
    for _ in 0..30 {
        peak = peak.max(rss());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let grew = peak.saturating_sub(before);
    eprintln!(
        "labd: {} MB before, {} MB at most",
        before >> 20,
        peak >> 20
    );
    assert!(grew < 150 << 20, "labd grew {} MB", grew >> 20);
    // Gone, for the writer's copy of the socket too.
    let _ = raw.w.shutdown(std::net::Shutdown::Both);
    drop(raw);
    writer.join().unwrap();
    // Once the client is gone its memory goes back (bounded wait).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = rss();
        if now < before + (40 << 20) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "labd still {} MB above its size before the client",
            (now - before) >> 20
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // And it still answers.
    let mut again = Raw::connect(&lab.socket);
    assert_eq!(
        again.ask(br#"{"id":2,"method":"boards"}"#)["ok"]["boards"][0]["name"],
        "sim-01"
    );
}
