//! Power drivers against real relays: the pdudaemon driver against a real
//! pdudaemon (from PyPI, in a venv that `.ci/run` builds with what its HTTP
//! listener and `localcmdline` driver need) whose `localcmdline` PDU writes
//! each command it is asked for into a FIFO the test reads; and through a
//! running labd, `labctl power` on a board behind that PDU.

mod common;

use common::*;
use labd::power::{Pdudaemon, Power, PowerAction};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

/// The pdudaemon to test against: `$LABD_PDUDAEMON` (`.ci/run` sets it to
/// the venv it builds), else that venv's place, `pdudaemon-venv` in cargo's
/// target directory (wherever `CARGO_TARGET_DIR` put it: the directory
/// above `CARGO_TARGET_TMPDIR`), so that a plain `cargo test` after
/// `.ci/run` finds it too. None (after `require`) when it is missing.
fn pdudaemon_bin() -> Option<PathBuf> {
    let p = std::env::var_os("LABD_PDUDAEMON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_TARGET_TMPDIR"))
                .parent()
                .expect("CARGO_TARGET_TMPDIR is inside the target directory")
                .join("pdudaemon-venv/bin/pdudaemon")
        });
    let what = format!("pdudaemon ({})", p.display());
    require(
        &what,
        p.exists(),
        "run .ci/run, which builds its venv there, or set LABD_PDUDAEMON to a pdudaemon 1.1.1",
    )
    .then_some(p)
}

struct RealPdu {
    child: std::process::Child,
    url: String,
    /// Each command the PDU was asked for, as `<port> on|off`.
    commands: Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Drop for RealPdu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RealPdu {
    fn next(&self) -> String {
        self.commands
            .recv_timeout(Duration::from_secs(60))
            .expect("the PDU was asked for nothing")
    }
}

fn start_pdudaemon(bin: &Path) -> RealPdu {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pdu.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let f = fifo.display();
    let conf = serde_json::json!({
        "daemon": {"hostname": "127.0.0.1", "port": port, "logging_level": "DEBUG", "listener": "http"},
        "pdus": {"pdu-rack1": {
            "driver": "localcmdline",
            "cmd_on": format!("echo '%s on' > {f}"),
            "cmd_off": format!("echo '%s off' > {f}"),
        }}
    });
    let conf_path = dir.path().join("pdudaemon.conf");
    std::fs::write(&conf_path, conf.to_string()).unwrap();
    // Every `echo` opens and closes the FIFO: read it again after each end.
    let (tx, commands) = std::sync::mpsc::channel();
    let reader_fifo = fifo.clone();
    std::thread::spawn(move || loop {
        let Ok(f) = std::fs::File::open(&reader_fifo) else {
            return;
        };
        for l in std::io::BufReader::new(f).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let mut child = Command::new(bin)
        .arg("--conf")
        .arg(&conf_path)
        .args(["--loglevel", "DEBUG"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // pdudaemon logs on stdout; it listens once it says so.
    wait_line(child.stdout.take().unwrap(), "Listening on");
    RealPdu {
        child,
        url: format!("http://127.0.0.1:{port}"),
        commands,
        _dir: dir,
    }
}

#[test]
fn the_pdudaemon_driver_drives_a_real_pdudaemon() {
    let Some(bin) = pdudaemon_bin() else { return };
    let pdu = start_pdudaemon(&bin);
    let relay = |port: u32, hostname: &str| Pdudaemon {
        url: pdu.url.clone(),
        hostname: hostname.into(),
        port,
        delay: Some(0),
        timeout: Duration::from_secs(10),
        retries: 1,
    };
    rt().block_on(async {
        relay(3, "pdu-rack1").switch(PowerAction::On).await.unwrap();
        assert_eq!(pdu.next(), "3 on");
        relay(3, "pdu-rack1")
            .switch(PowerAction::Off)
            .await
            .unwrap();
        assert_eq!(pdu.next(), "3 off");
        // A reboot is pdudaemon's own off, delay, on.
        relay(5, "pdu-rack1")
            .switch(PowerAction::Reset)
            .await
            .unwrap();
        assert_eq!(pdu.next(), "5 off");
        assert_eq!(pdu.next(), "5 on");
        // A PDU pdudaemon does not know: its refusal is the error.
        let e = relay(1, "no-such-pdu")
            .switch(PowerAction::On)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pdudaemon answered 500") && e.contains("no-such-pdu"),
            "{e}"
        );
    });
}

#[test]
fn labctl_power_goes_through_labd_to_a_real_pdudaemon() {
    let Some(bin) = pdudaemon_bin() else { return };
    let pdu = start_pdudaemon(&bin);
    // The sim board's console, with its relay on the real PDU's port 7.
    let extra = format!(
        "[[boards]]\nname = \"pdu-board\"\ndevice_type = \"sim-uboot\"\nconsole = {{ type = \"sim\", board = \"sim-01\" }}\npower = {{ type = \"pdudaemon\", url = \"{}\", hostname = \"pdu-rack1\", port = 7, delay = 0, timeout_secs = 10, retries = 1 }}\n",
        pdu.url
    );
    let lab = Lab::start_with(1, &[], &[], &extra);
    lab.labctl(&["board", "pdu-board", "maintenance"]);
    lab.labctl(&["power", "pdu-board", "on"]);
    assert_eq!(pdu.next(), "7 on");
    lab.labctl(&["power", "pdu-board", "off"]);
    assert_eq!(pdu.next(), "7 off");
    rt().block_on(async {
        let mut c = lab.client().await;
        let b = board(&mut c, "pdu-board").await;
        assert_eq!(b["power"], "Off", "{b}");
    });
}
