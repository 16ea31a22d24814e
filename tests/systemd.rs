//! labd under systemd: the notify protocol on a real datagram socket,
//! socket activation with an inherited listening fd, and the unit files.

mod common;

use common::*;
use labd::protocol::RequestBody;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

fn next_message(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = sock
        .recv(&mut buf)
        .expect("a notification before the timeout");
    String::from_utf8_lossy(&buf[..n]).trim_end().to_owned()
}

#[test]
fn notify_socket_gets_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    // A generous bound: only a broken labd makes the test wait this long.
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // A board whose relay command writes down the environment it got.
    let relay_board = "[[boards]]\nname = \"cmd-board\"\ndevice_type = \"sim-uboot\"\nconsole = { type = \"sim\", board = \"sim-01\" }\npower = { type = \"command\", on = [\"sh\", \"-c\", \"env > @DIR@/relay-env\"], off = [\"true\"] }\n";
    let mut lab = Lab::start_with(
        1,
        &[],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
        relay_board,
    );
    assert_eq!(next_message(&sock), "READY=1");
    assert_eq!(next_message(&sock), "WATCHDOG=1");
    assert_eq!(next_message(&sock), "WATCHDOG=1");
    // What systemd told labd is not passed on to the programs labd starts,
    // which could otherwise speak for it.
    lab.labctl(&["board", "cmd-board", "maintenance"]);
    lab.labctl(&["power", "cmd-board", "on"]);
    let env = std::fs::read_to_string(lab.dir.path().join("relay-env")).unwrap();
    assert!(env.contains("PATH="), "{env}");
    assert!(
        !env.contains("NOTIFY_SOCKET") && !env.contains("WATCHDOG_USEC"),
        "{env}"
    );
    lab.terminate_labd();
    loop {
        match next_message(&sock).as_str() {
            "WATCHDOG=1" => continue,
            m => {
                assert_eq!(m, "STOPPING=1");
                break;
            }
        }
    }
    assert!(lab.wait_labd());
}

/// Starts labd the way systemd does with labd.socket: the listening socket
/// as fd 3, LISTEN_FDS=1 and LISTEN_PID set to labd's own pid.
fn start_activated(lab: &Lab, listener: &UnixListener) -> std::process::Child {
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" --config "$1""#,
        env!("CARGO_BIN_EXE_labd"),
        lab.config.to_str().unwrap(),
    ])
    .env_remove("LABD_SOCKET")
    .env("RUST_LOG", "labd=info")
    .stderr(Stdio::piped());
    // SAFETY: between fork and exec only dup2 and fcntl run, both
    // async-signal-safe, on descriptors this process owns.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                let flags = nix::libc::fcntl(3, nix::libc::F_GETFD);
                nix::libc::fcntl(3, nix::libc::F_SETFD, flags & !nix::libc::FD_CLOEXEC);
            } else if nix::libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

#[test]
fn an_inherited_listening_socket_is_served() {
    rt().block_on(async {
        let lab = Lab::prepare(1, &[], &[], "");
        let listener = UnixListener::bind(&lab.socket).unwrap();
        std::fs::set_permissions(&lab.socket, std::fs::Permissions::from_mode(0o660)).unwrap();
        let mut labd = start_activated(&lab, &listener);
        let log = wait_line(
            labd.stderr.take().unwrap(),
            "serving the socket systemd passed",
        );
        drop(log);
        let mut c = lab.client().await;
        let b = c.call(RequestBody::Boards).await.unwrap();
        assert_eq!(b["boards"][0]["name"], "sim-01");
        let _ = labd.kill();
        let _ = labd.wait();
    });
}

#[test]
fn an_inherited_socket_with_the_wrong_mode_is_refused() {
    let lab = Lab::prepare(1, &[], &[], "");
    let listener = UnixListener::bind(&lab.socket).unwrap();
    std::fs::set_permissions(&lab.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = start_activated(&lab, &listener).wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("has mode 666") && err.contains("SocketMode"),
        "{err}"
    );
}

#[test]
fn unit_files_pass_systemd_analyze_verify() {
    if !require_tool(
        "systemd-analyze",
        "install the Debian package systemd; .ci/run does",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let units = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd");
    let service = std::fs::read_to_string(format!("{units}/labd.service"))
        .unwrap()
        .replace("/usr/bin/labd", env!("CARGO_BIN_EXE_labd"));
    std::fs::write(dir.path().join("labd.service"), service).unwrap();
    std::fs::copy(
        format!("{units}/labd.socket"),
        dir.path().join("labd.socket"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "./labd.service", "./labd.socket"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
