//! Console backends against real endpoints: ser2net (raw and telnet) in
//! front of a real PTY, and a whole job through ser2net's telnet port.
//! ser2net comes from Debian (`.ci/run` installs it).

mod common;

use common::*;
use labd::console::{Console, Tcp};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Whether ser2net is here: see `require` for what happens when it is not.
fn have_ser2net() -> bool {
    require_tool(
        "ser2net",
        "install the Debian package ser2net; .ci/run does",
    )
}

struct Ser2net(Child);

impl Drop for Ser2net {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs ser2net in the foreground with one accepter per (spec, device).
fn ser2net(dir: &std::path::Path, links: &[(String, String)]) -> Ser2net {
    let mut yaml = String::new();
    for (i, (accepter, device)) in links.iter().enumerate() {
        yaml.push_str(&format!(
            "connection: &c{i}\n  accepter: {accepter}\n  connector: serialdev,{device},115200n81,local\n  options:\n    kickolduser: true\n"
        ));
    }
    let cfg = dir.join("ser2net.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let child = Command::new("ser2net")
        .args(["-n", "-d", "-c"])
        .arg(&cfg)
        .arg("-P")
        .arg(dir.join("ser2net.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Ser2net(child)
}

/// ser2net gives no other sign that it listens: try until it accepts.
async fn connect_when_up(c: &Tcp) -> labd::console::ConsoleIo {
    for _ in 0..200 {
        if let Ok(io) = c.connect().await {
            return io;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("ser2net never listened on {}", c.describe());
}

/// Puts the lab's board behind ser2net: its PTY served on a free port
/// (telnet or raw), ser2net up, and the config's console pointed at it.
/// Returns ser2net, the link to start it again, and the port.
async fn behind_ser2net(lab: &Lab, telnet: bool) -> (Ser2net, [(String, String); 1], u16) {
    let pty = lab.sim_pty("sim-01").await;
    let port = free_port();
    let kind = if telnet { "telnet,tcp" } else { "tcp" };
    let link = [(format!("{kind},127.0.0.1,{port}"), pty)];
    let server = ser2net(lab.dir.path(), &link);
    // Up before labd starts, so its first connect works. The probe is a
    // plain connection, closed at once: ser2net serves one client.
    let probe = Tcp {
        host: "127.0.0.1".into(),
        port,
        telnet: false,
    };
    drop(connect_when_up(&probe).await);
    let protocol = if telnet { "telnet" } else { "raw" };
    let cfg = std::fs::read_to_string(&lab.config).unwrap().replace(
        "console = { type = \"sim\" }",
        &format!("console = {{ type = \"tcp\", host = \"127.0.0.1\", port = {port}, protocol = \"{protocol}\" }}"),
    );
    std::fs::write(&lab.config, cfg).unwrap();
    (server, link, port)
}

fn pty() -> (OwnedFd, String) {
    let p = nix::pty::openpty(None, None).unwrap();
    let mut t = nix::sys::termios::tcgetattr(&p.slave).unwrap();
    nix::sys::termios::cfmakeraw(&mut t);
    nix::sys::termios::tcsetattr(&p.slave, nix::sys::termios::SetArg::TCSANOW, &t).unwrap();
    let path = nix::unistd::ttyname(&p.slave)
        .unwrap()
        .display()
        .to_string();
    // The slave stays open here too, so the master never sees a hang-up.
    std::mem::forget(p.slave);
    (p.master, path)
}

fn read_exact_fd(fd: &OwnedFd, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < n {
        let k = nix::unistd::read(fd.as_raw_fd(), &mut buf).unwrap();
        out.extend_from_slice(&buf[..k]);
    }
    out
}

#[test]
fn ser2net_raw_and_telnet_carry_every_byte_both_ways() {
    if !have_ser2net() {
        return;
    }
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (raw_pty, raw_dev) = pty();
        let (tel_pty, tel_dev) = pty();
        let (p_raw, p_tel) = (free_port(), free_port());
        let _s = ser2net(
            dir.path(),
            &[
                (format!("tcp,127.0.0.1,{p_raw}"), raw_dev),
                (format!("telnet,tcp,127.0.0.1,{p_tel}"), tel_dev),
            ],
        );
        // Every byte value, 0xFF (telnet's IAC) included, twice.
        let payload: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
        for (telnet, port, master) in [(false, p_raw, &raw_pty), (true, p_tel, &tel_pty)] {
            let console = Tcp {
                host: "127.0.0.1".into(),
                port,
                telnet,
            };
            let mut io = connect_when_up(&console).await;
            // Board to labd.
            nix::unistd::write(master, &payload).unwrap();
            let mut got = vec![0u8; payload.len()];
            io.reader.read_exact(&mut got).await.unwrap();
            assert_eq!(got, payload, "board to labd, telnet={telnet}");
            // labd to board.
            io.writer.write_all(&payload).await.unwrap();
            io.writer.flush().await.unwrap();
            let m = master.try_clone().unwrap();
            let n = payload.len();
            let back = tokio::task::spawn_blocking(move || read_exact_fd(&m, n))
                .await
                .unwrap();
            assert_eq!(back, payload, "labd to board, telnet={telnet}");
        }
    });
}

/// A whole job with the board's console behind ser2net in telnet mode: the
/// boot, the login and the tests all cross it, and no telnet byte is in
/// the log.
#[test]
fn a_job_runs_through_ser2net_telnet() {
    if !have_ser2net() {
        return;
    }
    rt().block_on(async {
        let mut lab = Lab::prepare(1, &[], &[], "");
        let (_server, _, _) = behind_ser2net(&lab, true).await;
        lab.start_labd();
        let mut c = lab.client().await;
        let log = a_passing_job(&lab, &mut c, "via-ser2net").await;
        assert!(!log.contains(&0xFF), "a telnet byte leaked into the log");
        let text = String::from_utf8_lossy(&log);
        assert!(text.contains("U-Boot") && text.contains("<LAVA_SIGNAL_ENDRUN"));
    });
}

/// A serial console on a real PTY at 115200 baud: labd takes the UUCP lock
/// (its PID in `LCK..pts_N`); a second labd wanting the same port is refused
/// with an error naming the holder's PID and program; the lock goes when
/// labd stops.
#[test]
fn a_serial_port_is_locked_and_a_second_labd_is_refused_naming_the_holder() {
    let (_master, dev) = pty();
    let mut lab = Lab::prepare(1, &[], &[], "");
    let locks = lab.dir.path().join("lock");
    std::fs::create_dir_all(&locks).unwrap();
    let serial = format!("console = {{ type = \"serial\", device = \"{dev}\", baud = 115200 }}");
    let cfg = std::fs::read_to_string(&lab.config)
        .unwrap()
        .replace("console = { type = \"sim\" }", &serial);
    let cfg = format!("lock_dir = {:?}\n{cfg}", locks);
    std::fs::write(&lab.config, &cfg).unwrap();
    lab.start_labd();
    lab.wait_log("console attached");
    let lock = locks.join(labd::console::uucp::lock_name(std::path::Path::new(&dev)));
    let holder: u32 = std::fs::read_to_string(&lock)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(holder, lab.labd_pid());

    // A second lab on another socket and state dir, same port.
    let other = lab.dir.path().join("other.toml");
    std::fs::write(
        &other,
        cfg.replace("labd.sock", "other.sock")
            .replace("/state\"", "/other-state\""),
    )
    .unwrap();
    let mut second = Command::new(env!("CARGO_BIN_EXE_labd"))
        .arg("--config")
        .arg(&other)
        .env("RUST_LOG", "labd=info")
        .env_remove("LABD_SOCKET")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let needle = format!("in use by PID {holder} (labd)");
    let lines = wait_line(second.stderr.take().unwrap(), "labd ready");
    let refused = lines.iter().find(|l| l.contains("console connect failed"));
    let refused = refused.expect("the second labd reports its refused console");
    assert!(refused.contains(&needle), "{refused}");
    let _ = second.kill();
    let _ = second.wait();

    lab.terminate_labd();
    assert!(lab.wait_labd());
    assert!(!lock.exists(), "the lock outlived labd");
}

/// The console server goes away during a job and comes back: the log shows
/// the gap and the job completes. It goes away for longer than the job's
/// connection timeout: the job ends Incomplete (Infrastructure), and after
/// `console_failures_before_bad` such jobs the board is Bad.
#[test]
fn a_lost_console_that_returns_is_a_gap_and_one_that_does_not_ends_the_job() {
    if !have_ser2net() {
        return;
    }
    rt().block_on(async {
        let mut lab = Lab::prepare(1, &[], &[], "[limits]\nconsole_failures_before_bad = 1");
        let (mut server, link, _) = behind_ser2net(&lab, false).await;
        lab.start_labd();
        lab.wait_log("console attached");
        let mut c = lab.client().await;

        let release = lab.dir.path().join("release");
        let step = format!(
            "echo first; while [ ! -e {} ]; do sleep 0.1; done; echo second",
            release.display()
        );
        let id = submit(&mut c, &lab.job("unplugged", "medium", &[&step])).await;
        until_log_contains(&lab, id, "first\r\n").await;
        drop(server); // unplugged
        lab.wait_log("console lost");
        server = ser2net(lab.dir.path(), &link); // plugged back
        lab.wait_log("console attached");
        std::fs::write(&release, b"").unwrap();
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete", "{log}");
        assert!(log.contains("[labd: console lost:"), "{log}");
        assert!(log.contains("[labd: console back after"), "{log}");

        let text = lab
            .job("gone", "medium", &["echo waiting; sleep 60"])
            .replacen(
                "timeouts:\n",
                "timeouts:\n  connection:\n    seconds: 2\n",
                1,
            );
        let id = submit(&mut c, &text).await;
        until_log_contains(&lab, id, "waiting\r\n").await;
        drop(server);
        let (end, _) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Incomplete");
        let j = job(&mut c, id).await;
        assert_eq!(j["error_class"], "Infrastructure");
        assert!(
            j["error"]
                .as_str()
                .unwrap()
                .starts_with("console lost for 2 s"),
            "{j}"
        );
        let b = board(&mut c, "sim-01").await;
        assert_eq!(
            (b["health"].as_str(), b["health_reason"].as_str()),
            (Some("Bad"), Some("console lost in 1 jobs in a row"))
        );
    });
}

/// LAVA's `connection_command`: the console is a program's stdin and
/// stdout. Here a small bridge to ser2net's raw port stands in for
/// `telnet host port`; a whole job runs through it. Like telnet's
/// `Escape character is`, the bridge says when it has connected: labd
/// powers the board on only then (`ready`), or a bridge slow to start
/// (Python on a loaded machine) lets U-Boot's autoboot countdown go by
/// unseen.
#[test]
fn a_job_runs_through_a_connection_command() {
    if !have_ser2net() || !have_python3() {
        return;
    }
    rt().block_on(async {
        let mut lab = Lab::prepare(1, &[], &[], "");
        let (_server, _, port) = behind_ser2net(&lab, false).await;
        let bridge = r#"
import socket, sys, threading
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
sys.stdout.buffer.write(b"bridge: connected\r\n")
sys.stdout.buffer.flush()
def up():
    while True:
        d = sys.stdin.buffer.read1(4096)
        if not d:
            break
        s.sendall(d)
threading.Thread(target=up, daemon=True).start()
while True:
    d = s.recv(4096)
    if not d:
        break
    sys.stdout.buffer.write(d)
    sys.stdout.buffer.flush()
"#;
        let argv = serde_json::to_string(&[
            "python3",
            "-u",
            "-c",
            bridge,
            "127.0.0.1",
            &port.to_string(),
        ])
        .unwrap();
        let cfg = std::fs::read_to_string(&lab.config).unwrap();
        let start = cfg.find("console = { type = \"tcp\"").unwrap();
        let end = start + cfg[start..].find('\n').unwrap();
        let cfg = format!(
            "{}console = {{ type = \"command\", command = {argv}, ready = \"connected\\r\\n\" }}{}",
            &cfg[..start],
            &cfg[end..]
        );
        std::fs::write(&lab.config, cfg).unwrap();
        lab.start_labd();
        let mut c = lab.client().await;
        let log = a_passing_job(&lab, &mut c, "via-command").await;
        // The bridge's own chatter is not the board's.
        let log = String::from_utf8_lossy(&log);
        assert!(!log.contains("bridge: connected"), "{log}");
    });
}

/// A unix console: labd listens, the board (QEMU's chardev, here a plain
/// client) connects; when the board goes (QEMU quits at power-off) the
/// next connect takes its next run, on the same socket.
#[test]
fn a_unix_console_outlives_each_board_connection() {
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qemu-01.sock");
        let console = std::sync::Arc::new(labd::console::UnixConsole::new(path.clone()));
        assert!(console.attaches_after_power_on());
        for run in 0..2u8 {
            let c = console.clone();
            let accepted =
                tokio::spawn(async move { c.connect().await.map_err(|e| e.to_string()) });
            // The socket exists once the first connect is waiting; later
            // runs find it already there.
            let mut board = loop {
                if let Ok(s) = tokio::net::UnixStream::connect(&path).await {
                    break s;
                }
                tokio::task::yield_now().await;
            };
            let mut io = accepted.await.unwrap().unwrap();
            let payload: Vec<u8> = (0..=255u8).map(|b| b ^ run).collect();
            board.write_all(&payload).await.unwrap();
            let mut got = vec![0u8; 256];
            io.reader.read_exact(&mut got).await.unwrap();
            assert_eq!(got, payload);
            io.writer.write_all(b"boot\n").await.unwrap();
            let mut cmd = [0u8; 5];
            board.read_exact(&mut cmd).await.unwrap();
            assert_eq!(&cmd, b"boot\n");
            // Power off: the board goes, labd sees the end.
            drop(board);
            let mut rest = Vec::new();
            io.reader.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        }
    });
}

/// `labctl console` on a board in maintenance: `~p` power-cycles it, typed
/// input reaches the board and its output comes back, the typing is kept in
/// the board's console log, and `~.` leaves.
#[test]
fn labctl_console_types_on_a_board_and_leaves_with_tilde_dot() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        set_health(&mut c, "sim-01", "maintenance", None)
            .await
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_labctl"))
            .args(["console", "sim-01"])
            .env("LABD_SOCKET", &lab.socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let _notes = wait_line(
            child.stderr.take().unwrap(),
            "attached to the console of sim-01",
        );
        // Collect what the console shows, chunk by chunk.
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let mut stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        let mut shown = Vec::new();
        let mut wait_for = |needle: &str| {
            while !String::from_utf8_lossy(&shown).contains(needle) {
                shown.extend(rx.recv().expect("the console ended early"));
            }
        };
        use std::io::Write as _;
        stdin.write_all(b"~p").unwrap();
        stdin.flush().unwrap();
        wait_for("login:");
        stdin.write_all(b"root\n").unwrap();
        stdin.flush().unwrap();
        wait_for("# ");
        stdin.write_all(b"echo con''sole-works\n").unwrap();
        stdin.flush().unwrap();
        wait_for("console-works");
        stdin.write_all(b"\n~.").unwrap();
        stdin.flush().unwrap();
        assert!(child.wait().unwrap().success());
        let log = c
            .call(labd::protocol::RequestBody::ConsoleLog {
                board: "sim-01".into(),
            })
            .await
            .unwrap();
        let log = labd::protocol::bytes_from_json(&log).unwrap();
        assert!(
            String::from_utf8_lossy(&log).contains("echo con''sole-works"),
            "the typing is kept"
        );
    });
}
