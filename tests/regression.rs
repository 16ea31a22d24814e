//! Bugs found, each kept as the test that showed it.

mod common;

use common::*;

/// Maintenance asked for on a busy board was only remembered in memory until
/// the job ended: a daemon killed before then came back with the board in
/// service. The acknowledged request must survive the kill.
#[test]
fn maintenance_requested_on_a_busy_board_survives_a_kill() {
    rt().block_on(async {
        let mut lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let id = submit(&mut c, &lab.job("long", "medium", &["sleep 600"])).await;
        until_log_contains(&lab, id, "sleep 600\r\n").await;
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
        until_log_contains(&lab, id, "sleep 600\r\n").await;
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
        lab.sim(labd::sim::ControlRequest::Fault {
            board: "sim-01".into(),
            fault: labd::sim::Fault::HangAfterKernel,
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
        until_log_contains(&lab, first, "sleep 600\r\n").await;
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
