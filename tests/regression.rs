//! Bugs found, each kept as the test that showed it.

mod common;

use common::*;
use serde_json::Value;

/// Maintenance asked for on a busy board was only remembered in memory until
/// the job ended: a daemon killed before then came back with the board in
/// service. The acknowledged request must survive the kill.
#[test]
fn maintenance_requested_on_a_busy_board_survives_a_kill() {
    rt().block_on(async {
        let mut lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let id = submit(&mut c, &lab.job("long", "medium", &["sleep 600"])).await;
        until_log_contains(&lab, id, "eval 'sleep 600'").await;
        set_health(&mut c, "sim-01", "maintenance", Some("reflash"))
            .await
            .unwrap();
        // Still busy: the maintenance waits for the job.
        assert_eq!(board(&mut c, "sim-01").await["state"], "Running");
        drop(c);
        lab.kill_labd();
        lab.start_labd();
        let mut c = lab.client().await;
        let b = board(&mut c, "sim-01").await;
        assert_eq!(
            (b["health"].as_str(), b["health_reason"].as_str()),
            (Some("Maintenance"), Some("reflash"))
        );
        assert_eq!(job(&mut c, id).await["health"], "Incomplete");
    });
}

/// Reads of job records are answered by the socket thread from the store,
/// without the lab actor. The first build of that served them before the
/// actor had reconciled the store after a restart, so a job the kill had
/// cut short still read Running, and a pruned log still read whole
/// (`retention::oldest_logs_are_pruned_to_the_cap_and_records_stay` caught
/// it). The first answer after a restart already sees the reconcile.
#[test]
fn the_first_read_after_a_restart_sees_the_reconcile() {
    rt().block_on(async {
        let mut lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let id = submit(&mut c, &lab.job("cut", "medium", &["sleep 600"])).await;
        until_log_contains(&lab, id, "eval 'sleep 600'").await;
        assert_eq!(job(&mut c, id).await["state"], "Running");
        drop(c);
        lab.kill_labd();
        // A reconcile a second slower makes the race certain to show.
        lab.env
            .push((labd::faults::ENV.into(), "reconcile-slow:lab".into()));
        lab.start_labd();
        let mut c = lab.client().await;
        let j = job(&mut c, id).await;
        assert_eq!(
            (j["state"].as_str(), j["health"].as_str()),
            (Some("Finished"), Some("Incomplete")),
            "{j}"
        );
    });
}

/// A client that saw a job end could still find its board busy (or not yet
/// Good) because the lab freed the board only after the job's record was
/// written, or miss the job's Finished event. The board is free and the
/// history complete by the time anyone sees the job finished.
#[test]
fn a_finished_job_never_shows_its_board_busy() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        for i in 0..5 {
            let id = submit(&mut c, &lab.job(&format!("j{i}"), "medium", &["true"])).await;
            let (end, _) = wait_job(&mut c, id).await;
            assert_eq!(end["health"], "Complete");
            // The job's Finished event was written apart from its state,
            // so the history could lag the state (found by the torture test).
            let j = job(&mut c, id).await;
            let finished = j["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["kind"] == "state" && e["message"] == "Finished Complete")
                .count();
            assert_eq!(finished, 1, "{j}");
            let b = board(&mut c, "sim-01").await;
            assert_eq!(
                (b["state"].as_str(), b["health"].as_str()),
                (Some("Idle"), Some("Good")),
                "after job {id}"
            );
        }
    });
}

/// A config that labd refuses at start (here a board of an unknown device
/// type) must leave no socket behind: a client would wait on it for a lab
/// that never comes. Found in review: the socket was bound before the lab
/// checked the config.
#[test]
fn a_refused_start_leaves_no_socket() {
    let lab = Lab::prepare(1, &[], &[], "");
    let cfg = std::fs::read_to_string(&lab.config).unwrap();
    std::fs::write(
        &lab.config,
        cfg.replacen(
            "device_type = \"sim-uboot\"",
            "device_type = \"no-such-type\"",
            1,
        ),
    )
    .unwrap();
    let err = lab.labd_refuses();
    assert!(err.contains("no-such-type"), "{err}");
    assert!(!lab.socket.exists(), "a socket was left behind");
}

/// A boot's phases are bounded by the boot's own timeout too, so a daemon
/// that wakes late (a loaded machine) found both the phase's timer and the
/// boot's expired, and the phase's, polled first, named the error:
/// "bootloader-commands timed out after 3 s" instead of the boot's. The
/// earlier deadline names it, however late the wake-up.
#[test]
fn a_late_wake_up_still_names_the_boot_timeout() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        lab.sim(labd::sim_control::ControlRequest::Fault {
            board: "sim-01".into(),
            fault: labd::sim_control::Fault::HangAfterKernel,
        })
        .await;
        let mut c = lab.client().await;
        let text = lab.job("late-wake-up", "medium", &["true"]).replacen(
            "- boot:\n",
            "- boot:\n    timeout:\n      seconds: 3\n",
            1,
        );
        let id = submit(&mut c, &text).await;
        until_log_contains(&lab, id, "Starting kernel").await;
        // The daemon stalls past both deadlines: stopped, not synchronised.
        let pid = nix::unistd::Pid::from_raw(lab.labd_pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(4)).await;
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Incomplete", "{log}");
        let j = job(&mut c, id).await;
        assert_eq!(j["error"], "boot timed out after 3 s", "{j}");
    });
}

/// `openpty` and `pipe` leave their descriptors open across `exec`, so the
/// simulator's shells each held every board's pty and every earlier
/// shell's pipe ends. A killed `labd-sim` then left its shells running
/// forever (none ever saw its input end), holding ptys until the host had
/// none left (found when `labd-bench boards` stopped starting). A board's
/// shell holds no pty and none of another board's shell's pipes.
#[test]
fn a_board_shell_holds_no_other_consoles_descriptors() {
    rt().block_on(async {
        let lab = Lab::start(2, &[]);
        let mut c = lab.client().await;
        let fds = "ls -l /proc/$$/fd";
        let first = submit(&mut c, &lab.job("first", "medium", &[fds, "sleep 600"])).await;
        until_log_contains(&lab, first, "eval 'sleep 600'").await;
        let mut log = Vec::new();
        c.logs(first, false, |d| log.extend_from_slice(d))
            .await
            .unwrap();
        let log = String::from_utf8_lossy(&log).into_owned();
        // The pipes on a shell's stdin and stdout: its own, the simulator
        // holding their other ends (anything else came from whoever ran
        // the tests).
        let pipes = |log: &str, fds: &[&str]| -> Vec<String> {
            log.lines()
                .filter_map(|l| l.split_once(" -> pipe:["))
                .filter(|(fd, _)| {
                    fds.is_empty() || fds.iter().any(|n| fd.ends_with(&format!(" {n}")))
                })
                .filter_map(|(_, p)| p.split(']').next().map(str::to_owned))
                .collect()
        };
        let held = pipes(&log, &["0", "1"]);
        assert_eq!(held.len(), 2, "{log}");
        let steps = [
            fds,
            "echo ptys=$(ls -l /proc/$$/fd | grep -c -e ptmx -e /dev/pts/)",
        ];
        let second = submit(&mut c, &lab.job("second", "medium", &steps)).await;
        let (end, log) = wait_job(&mut c, second).await;
        assert_eq!(end["health"], "Complete", "{log}");
        assert!(log.contains("ptys=0\r\n"), "{log}");
        for p in pipes(&log, &[]) {
            assert!(
                !held.contains(&p),
                "the second shell holds the first's pipe {p}: {log}"
            );
        }
    });
}

/// A `command` console was attached as soon as its program ran, and the
/// board powered on at once: a program slow to reach the line (in CI, a
/// Python bridge starting on a loaded machine) saw U-Boot's prompt only
/// after its autoboot countdown had gone by, and the job ended Incomplete
/// (`consoles::a_job_runs_through_a_connection_command` failed so). With
/// `ready` the board waits for the program. This bridge takes longer to
/// connect than the whole countdown.
#[test]
fn a_command_console_slow_to_connect_still_catches_the_countdown() {
    // The slow bridge is a Python program.
    if !have_python3() {
        return;
    }
    rt().block_on(async {
        let mut lab = Lab::prepare(1, &[], &[], "");
        let pty = lab.sim_pty("sim-01").await;
        let bridge = r#"
import os, sys, threading, time, tty
time.sleep(1.5)
fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)
tty.setraw(fd)
os.write(1, b"bridge: connected\r\n")
def up():
    while True:
        d = os.read(0, 4096)
        if not d:
            break
        os.write(fd, d)
threading.Thread(target=up, daemon=True).start()
while True:
    d = os.read(fd, 4096)
    if not d:
        break
    os.write(1, d)
"#;
        let argv = serde_json::to_string(&["python3", "-c", bridge, &pty]).unwrap();
        let cfg = std::fs::read_to_string(&lab.config).unwrap().replace(
            "console = { type = \"sim\" }",
            &format!(
                "console = {{ type = \"command\", command = {argv}, ready = \"connected\\r\\n\" }}"
            ),
        );
        std::fs::write(&lab.config, cfg).unwrap();
        lab.start_labd();
        let mut c = lab.client().await;
        let log = a_passing_job(&lab, &mut c, "slow-bridge").await;
        let log = String::from_utf8_lossy(&log);
        assert!(log.contains("Hit any key to stop autoboot"), "{log}");
        assert!(!log.contains("bridge: connected"), "{log}");
    });
}

/// Test steps, each as a YAML single-quoted scalar.
fn quoted(steps: &[&str]) -> Vec<String> {
    steps
        .iter()
        .map(|s| format!("'{}'", s.replace('\'', "''")))
        .collect()
}

/// `lab.job` whose shell prompt is LAVA's common `'# '`, with `test_secs`
/// as the test action's timeout.
fn hash_prompt_job(lab: &Lab, name: &str, steps: &[&str], test_secs: Option<u64>) -> String {
    let steps = quoted(steps);
    let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
    let mut text = lab
        .job(name, "medium", &steps)
        .replace("prompts: ['root@sim:[^#]*# ']", "prompts: ['# ']");
    if let Some(s) = test_secs {
        text = text.replace(
            "- test:\n",
            &format!("- test:\n    timeout:\n      seconds: {s}\n"),
        );
    }
    text
}

fn event_kinds(j: &Value, kind: &str) -> Vec<String> {
    j["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// With the prompt `'# '`, the echo of a typed line holding `# ` (the
/// helpers' `$# `) passed for the prompt, so every later line was typed
/// before the one before it had ended: a job whose last step was
/// `sleep 2; lava-test-case late --shell true` ended Complete at once,
/// without `late` and without its ENDRUN.
#[test]
fn a_step_ends_at_its_own_end_marker_not_at_a_prompt_in_its_echo() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let text = hash_prompt_job(
            &lab,
            "hash",
            &[
                "lava-test-case first --shell true # a comment",
                "echo '# not a prompt either'",
                "sleep 2; lava-test-case late --shell true",
            ],
            None,
        );
        let id = submit(&mut c, &text).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete", "{log}");
        assert_eq!(
            results(&mut c, id).await,
            [
                ("first".to_owned(), "pass".to_owned()),
                ("late".to_owned(), "pass".to_owned())
            ]
        );
        let j = job(&mut c, id).await;
        assert_eq!(event_kinds(&j, "endrun").len(), 1, "{j}");
    });
}

/// A step whose own text held a whole signal counted it twice (once from
/// the echo of what labd typed); a signal whose id holds a `<` was dropped
/// without a word. Signals come from the board's output only, and a
/// malformed one is an event (and stays in the log).
#[test]
fn signals_come_from_the_output_not_the_echo_and_malformed_ones_are_reported() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let text = hash_prompt_job(
            &lab,
            "echoed",
            &[
                "echo '<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=echoed RESULT=pass>'",
                "lava-test-case 'a<b' --result pass",
            ],
            None,
        );
        let id = submit(&mut c, &text).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete", "{log}");
        assert_eq!(
            results(&mut c, id).await,
            [("echoed".to_owned(), "pass".to_owned())]
        );
        let j = job(&mut c, id).await;
        let bad = event_kinds(&j, "signal-malformed");
        assert_eq!(bad.len(), 1, "{j}");
        assert!(bad[0].contains("TEST_CASE_ID=a"), "{bad:?}");
        assert!(log.contains("<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=a<b RESULT=pass>"));
    });
}

/// A step that never returns was an Infrastructure failure, which cost the
/// board its health; it is the test's doing (Test), the error names the
/// step, and the board stays as it was.
#[test]
fn a_step_that_never_returns_is_the_tests_fault_not_the_boards() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let ok = submit(&mut c, &lab.job("fine", "medium", &["true"])).await;
        assert_eq!(wait_job(&mut c, ok).await.0["health"], "Complete");
        assert_eq!(board(&mut c, "sim-01").await["health"], "Good");
        let id = submit(
            &mut c,
            &hash_prompt_job(&lab, "hang", &["sleep 600"], Some(3)),
        )
        .await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Incomplete", "{log}");
        let j = job(&mut c, id).await;
        assert_eq!(j["error_class"], "Test", "{j}");
        let error = j["error"].as_str().unwrap_or_default();
        assert!(error.contains("`sleep 600` did not return"), "{error}");
        assert_eq!(board(&mut c, "sim-01").await["health"], "Good");
    });
}

/// A definition whose ENDRUN never showed (here a step makes `printf`
/// swallow it) ended Complete: LAVA's test shell fails it.
#[test]
fn a_definition_that_does_not_reach_its_endrun_is_not_complete() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let text = hash_prompt_job(
            &lab,
            "no-endrun",
            &[
                r#"printf() { case "$2" in ENDRUN) ;; *) command printf "$@";; esac; }"#,
                "lava-test-case before --shell true",
            ],
            Some(30),
        );
        let id = submit(&mut c, &text).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Incomplete", "{log}");
        let j = job(&mut c, id).await;
        assert_eq!(j["error_class"], "Test", "{j}");
        assert!(
            j["error"]
                .as_str()
                .unwrap_or_default()
                .contains("did not reach its ENDRUN"),
            "{j}"
        );
        assert_eq!(
            results(&mut c, id).await,
            [("before".to_owned(), "pass".to_owned())]
        );
    });
}

/// `labctl jobs` and `labctl job` printed a job name's ESC, CR, LF, BEL and
/// NUL raw to the terminal, `labctl results` a test case id the board chose,
/// and `--format junit` wrote XML that expat refused. Human output shows
/// control characters as escapes; `--json` keeps them exact; JUnit is well
/// formed for any input (checked by Python's expat).
#[test]
fn untrusted_text_is_shown_escaped_and_junit_is_well_formed() {
    // Python's expat checks the JUnit output.
    if !have_python3() {
        return;
    }
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let text = lab
            .job(
                "placeholder",
                "medium",
                &[r#"'lava-test-case "$(printf ''x\033[2J&"\047y\007\001'')" --result fail'"#],
            )
            .replace(
                "job_name: placeholder",
                r#"job_name: "evil\e[2J\r\n\a\0name""#,
            );
        let id = submit(&mut c, &text).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete", "{log}");
        let id = id.to_string();
        let controls = |out: &str| {
            out.chars()
                .filter(|c| c.is_control() && *c != '\n')
                .collect::<Vec<_>>()
        };
        for args in [
            vec!["jobs"],
            vec!["job", &id],
            vec!["results", &id],
        ] {
            let out = lab.labctl(&args);
            assert!(controls(&out).is_empty(), "{args:?}: {out:?}");
        }
        let jobs = lab.labctl(&["jobs"]);
        assert!(jobs.contains(r"evil\x1b[2J\x0d\x0a\x07\x00name"), "{jobs}");
        let results = lab.labctl(&["results", &id]);
        assert!(results.contains(r#"x\x1b[2J&"'y\x07\x01"#), "{results}");
        // --json is exact.
        let json: serde_json::Value =
            serde_json::from_str(&lab.labctl(&["--json", "job", &id])).unwrap();
        assert_eq!(json["name"], "evil\x1b[2J\r\n\x07\0name");

        let junit = lab.labctl(&["results", &id, "--format", "junit"]);
        let check = std::process::Command::new("python3")
            .args([
                "-c",
                "import sys, xml.parsers.expat as e; p = e.ParserCreate(); p.StartElementHandler = lambda n, a: n == 'testcase' and print(a['name']); p.Parse(sys.stdin.buffer.read(), True)",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        check.stdin.as_ref().unwrap().write_all(junit.as_bytes()).unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(out.status.success(), "expat: {out:?}\n{junit}");
        // The id as parsed back: what XML can hold kept, the rest replaced.
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim_end(),
            "x\u{fffd}[2J&\"'y\u{fffd}\u{fffd}"
        );
    });
}
