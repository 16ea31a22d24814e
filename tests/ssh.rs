//! LAVA's ssh devices against a real OpenSSH `sshd` on loopback: labd's
//! ssh console (`ssh -tt` with the board's key and known_hosts), `deploy:
//! to: ssh` and `boot: method: ssh`. The "device" is this host's own root
//! shell through that sshd, so a `from: git` job's overlay really lands in
//! `/lava-<id>` here (removed after) and runs with the host's shell.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;

const SSHD: &str = "/usr/sbin/sshd";

/// Whether this machine can run the tests: root (sshd's privilege
/// separation, and the device's shell is root's), sshd, ssh and ssh-keygen.
fn ready() -> bool {
    require_root("sshd and the device's root shell")
        && require(
            SSHD,
            Path::new(SSHD).exists(),
            "install the Debian package openssh-server; .ci/run does",
        )
        && require_tool(
            "ssh",
            "install the Debian package openssh-client; .ci/run does",
        )
        && require_tool(
            "ssh-keygen",
            "install the Debian package openssh-client; .ci/run does",
        )
}

/// Makes an ed25519 key pair at `path` (and `path.pub`), mode 600.
fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "labd-test", "-f"])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success(), "ssh-keygen {}", path.display());
}

/// A real sshd on 127.0.0.1 with a host key, one authorized client key
/// and its own pid file, all in a temp dir; killed when dropped.
struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
    log: Receiver<String>,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sshd {
    fn start() -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("client_key"));
        keygen(&d.join("other_key"));
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        let config = format!(
            "HostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\nListenAddress 127.0.0.1\nStrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPrintMotd no\nPrintLastLog no\nLogLevel VERBOSE\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        // sshd's privilege separation directory, as the package's unit
        // makes it.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let port = free_port();
        let mut child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .args(["-p", &port.to_string()])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = wait_line(child.stderr.take().unwrap(), "Server listening on");
        let host_key = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
        let other = std::fs::read_to_string(d.join("other_key.pub")).unwrap();
        let line = |key: &str| {
            let mut w = key.split_whitespace();
            format!(
                "[127.0.0.1]:{port} {} {}\n",
                w.next().unwrap(),
                w.next().unwrap()
            )
        };
        std::fs::write(d.join("known_hosts"), line(&host_key)).unwrap();
        // The right format and host, another key: a host key that changed.
        std::fs::write(d.join("wrong_known_hosts"), line(&other)).unwrap();
        Sshd {
            dir,
            port,
            child,
            log,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A lab whose ssh board is this sshd, logged in to with the key it
    /// accepts and its own host key known; `extra` is more config.
    fn lab(&self, extra: &str) -> Lab {
        ssh_lab(
            self.port,
            &self.path("client_key"),
            &self.path("known_hosts"),
            extra,
        )
    }

    /// Waits for a line of sshd's log containing `needle` (an event).
    fn wait_log(&self, needle: &str) -> String {
        self.wait_log_any(&[needle])
    }

    /// Waits for a line of sshd's log containing one of `needles`.
    fn wait_log_any(&self, needles: &[&str]) -> String {
        for line in self.log.iter() {
            if needles.iter().any(|n| line.contains(n)) {
                return line;
            }
        }
        panic!("sshd's log ended before any of {needles:?}");
    }
}

/// The lab config of one ssh board `ssh-01` (device type `ssh`), with
/// this key, known_hosts file and port; `extra` goes before it.
fn ssh_board(port: u16, key: &Path, known_hosts: &Path) -> String {
    format!(
        "[[boards]]\nname = \"ssh-01\"\ndevice_type = \"ssh\"\nconsole = {{ type = \"ssh\", host = \"127.0.0.1\", port = {port}, user = \"root\", identity_file = {key:?}, known_hosts = {known_hosts:?}, connect_timeout_secs = 5 }}\n"
    )
}

/// A lab with the simulator's one board and the ssh board.
fn ssh_lab(port: u16, key: &Path, known_hosts: &Path, extra: &str) -> Lab {
    Lab::start_with(
        1,
        &[],
        &[],
        &format!("{extra}\n{}", ssh_board(port, key, known_hosts)),
    )
}

/// An ssh job as LAVA's ssh-boot sample writes it; `boot_extra` goes in
/// the boot action, `definitions` is the test action's list.
fn ssh_job(boot_extra: &str, definitions: &str) -> String {
    format!(
        "device_type: ssh\njob_name: ssh\ntimeouts:\n  job:\n    minutes: 3\n  connection:\n    minutes: 1\nactions:\n- deploy:\n    to: ssh\n    os: debian\n- boot:\n    method: ssh\n    connection: ssh\n    prompts: ['# ']\n{boot_extra}- test:\n    definitions:\n{definitions}"
    )
}

const INLINE: &str = "    - from: inline\n      name: shell\n      path: inline/shell.yaml\n      repository:\n        metadata:\n          format: Lava-Test Test Definition 1.0\n          name: shell\n        run:\n          steps:\n          - lava-test-case root --shell test \"$(id -u)\" = 0\n          - lava-test-case ssh --shell test -n \"$SSH_CONNECTION\"\n          - lava-test-case no-agent --shell test -z \"$SSH_AUTH_SOCK\"\n          - lava-test-case fails --shell false\n";

/// The job's record, with its error and events.
async fn ended(c: &mut labd::client::Client, id: u64) -> (Value, String) {
    let (_, log) = wait_job(c, id).await;
    (job(c, id).await, log)
}

fn events(j: &Value, kind: &str) -> Vec<String> {
    j["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| e["message"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Inline definitions run on the device's shell through ssh with their
/// results, and the session ends with the job: the board holds no ssh
/// session while idle.
#[test]
fn inline_definitions_run_over_ssh_and_the_session_ends_with_the_job() {
    if !ready() {
        return;
    }
    let sshd = Sshd::start();
    rt().block_on(async {
        let lab = sshd.lab("");
        let mut c = lab.client().await;
        // Nothing connects before a job boots the board.
        let id = submit(&mut c, &ssh_job("", INLINE)).await;
        let (j, log) = ended(&mut c, id).await;
        assert_eq!(j["health"], "Complete", "{j}\n{log}");
        assert_eq!(
            results(&mut c, id).await,
            [
                ("root".to_owned(), "pass".to_owned()),
                ("ssh".into(), "pass".into()),
                ("no-agent".into(), "pass".into()),
                ("fails".into(), "fail".into()),
            ]
        );
        let ssh = events(&j, "ssh");
        assert!(
            ssh.iter()
                .any(|m| m == &format!("connected to root@127.0.0.1:{}", sshd.port)),
            "{ssh:?}"
        );
        let off = events(&j, "power-off");
        assert_eq!(off, ["no relay: the board stays on"]);
        // sshd saw labd's one session accepted, then closed at the job's
        // end: labd ends its ssh, so sshd says the session closed when it
        // saw the channel close first, else that the connection closed.
        sshd.wait_log("Accepted publickey for root");
        sshd.wait_log("Starting session: shell on");
        sshd.wait_log_any(&[
            "Close session: user root",
            "Connection closed by user root",
            "Disconnected from user root",
        ]);
        let b = board(&mut c, "ssh-01").await;
        assert_eq!(b["state"], "Idle", "{b}");
        assert_eq!(b["health"], "Good", "{b}");
    });
}

/// A `from: git` definition as in LAVA's ssh-boot sample: the overlay goes
/// to the device over ssh and is unpacked at `/`, and lava-test-runner
/// runs it there.
#[test]
fn a_git_definition_reaches_the_device_over_ssh_in_the_overlay() {
    if !ready() || !require_tool("git", "install the Debian package git; .ci/run does") {
        return;
    }
    let sshd = Sshd::start();
    rt().block_on(async {
        let lab = sshd.lab("[git]\nfile_roots = [\"@DIR@/repos\"]\n");
        let repos = lab.dir.path().join("repos");
        std::fs::create_dir_all(&repos).unwrap();
        let repo = definitions_repo(&repos);
        let mut c = lab.client().await;
        let defs = format!(
            "    - repository: file://{}\n      from: git\n      path: defs/smoke.yaml\n      name: smoke\n      revision: v1\n      history: false\n",
            repo.display()
        );
        let id = submit(&mut c, &ssh_job("    failure_retry: 2\n", &defs)).await;
        let (j, log) = ended(&mut c, id).await;
        let lava_dir = PathBuf::from(format!("/lava-{id}"));
        let unpacked = lava_dir.join("bin/lava-test-runner").is_file();
        let _ = std::fs::remove_dir_all(&lava_dir);
        assert_eq!(j["health"], "Complete", "{j}\n{log}");
        assert!(unpacked, "the overlay was unpacked at {}", lava_dir.display());
        assert_eq!(
            results(&mut c, id).await,
            [
                ("ok".to_owned(), "pass".to_owned()),
                ("device".into(), "pass".into())
            ]
        );
        let overlay = events(&j, "overlay");
        assert!(
            overlay.iter().any(|m| m.starts_with("unpacked at / on ")),
            "{overlay:?}"
        );
        assert!(log.contains("<LAVA_SIGNAL_STARTRUN 0_smoke "), "{log}");
    });
}

/// A bare repository with one test definition, tagged `v1`, in `dir`: its
/// second case passes only where the overlay's own files are.
fn definitions_repo(dir: &Path) -> PathBuf {
    let smoke = "metadata:\n  format: Lava-Test Test Definition 1.0\n  name: smoke\nrun:\n  steps:\n    - lava-test-case ok --shell true\n    - lava-test-case device --shell test -f defs/smoke.yaml\n";
    bare_definitions_repo(dir, &[("defs/smoke.yaml", smoke.into())])
}

/// Runs the inline job on an ssh board at `port` with `key` and
/// `known_hosts` (files of `sshd`), `boot` more keys of its boot, where
/// the login fails: the job must end Incomplete, the lab's failure
/// (Infrastructure), with no test results. Its record and log.
async fn a_failed_login(
    sshd: &Sshd,
    port: u16,
    key: &str,
    known_hosts: &str,
    boot: &str,
) -> (Value, String) {
    let lab = ssh_lab(port, &sshd.path(key), &sshd.path(known_hosts), "");
    let mut c = lab.client().await;
    let id = submit(&mut c, &ssh_job(boot, INLINE)).await;
    let (j, log) = ended(&mut c, id).await;
    assert_eq!(j["health"], "Incomplete", "{j}\n{log}");
    assert_eq!(j["error_class"], "Infrastructure", "{j}");
    assert!(results(&mut c, id).await.is_empty(), "{j}");
    (j, log)
}

/// A device whose host key is not the one in the board's known_hosts is
/// never logged in to: the job ends as the lab's failure, naming the host
/// and its host key, and is not retried into a different answer.
#[test]
fn a_host_key_that_does_not_match_ends_the_job_naming_it() {
    if !ready() {
        return;
    }
    let sshd = Sshd::start();
    rt().block_on(async {
        let (j, _) = a_failed_login(&sshd, sshd.port, "client_key", "wrong_known_hosts", "").await;
        let error = j["error"].as_str().unwrap();
        assert!(
            error.starts_with(&format!(
                "ssh root@127.0.0.1:{}: the host key does not match",
                sshd.port
            )),
            "{error}"
        );
        assert!(error.contains("Host key verification failed"), "{error}");
    });
}

/// A key the device does not accept is an authentication failure, with
/// ssh's words; nothing runs.
#[test]
fn a_key_the_device_refuses_is_an_authentication_failure() {
    if !ready() {
        return;
    }
    let sshd = Sshd::start();
    rt().block_on(async {
        let (j, log) = a_failed_login(&sshd, sshd.port, "other_key", "known_hosts", "").await;
        let error = j["error"].as_str().unwrap();
        assert!(error.contains("the board refused labd's key"), "{error}");
        assert!(error.contains("Permission denied (publickey)"), "{error}");
        // The key's path may be named, never its content.
        let key = std::fs::read_to_string(sshd.path("other_key")).unwrap();
        let secret = key.lines().nth(1).unwrap();
        assert!(!error.contains(secret) && !log.contains(secret));
    });
}

/// A device that refuses the connection is the lab's failure, tried again
/// as the boot's `failure_retry` says.
#[test]
fn a_refused_connection_is_retried_per_failure_retry() {
    if !ready() {
        return;
    }
    // Keys and files from an sshd that is not the one asked: nothing
    // listens on the board's port.
    let sshd = Sshd::start();
    let port = free_port();
    rt().block_on(async {
        let (j, _) = a_failed_login(
            &sshd,
            port,
            "client_key",
            "known_hosts",
            "    failure_retry: 2\n",
        )
        .await;
        let error = j["error"].as_str().unwrap();
        assert!(
            error.starts_with(&format!("ssh root@127.0.0.1:{port}: connection refused")),
            "{error}"
        );
        let retries = events(&j, "retry");
        assert_eq!(retries.len(), 1, "{retries:?}");
        assert!(
            retries[0].starts_with("boot attempt 2 of 2 after: ssh root@127.0.0.1"),
            "{retries:?}"
        );
    });
}

/// The lab refuses a job its boards cannot run: an ssh boot on a board
/// with a serial console, or a U-Boot boot on a board reached over ssh.
/// An ssh board has no relay: switching it by hand says so.
#[test]
fn ssh_jobs_and_ssh_boards_go_together() {
    rt().block_on(async {
        let keys = tempfile::tempdir().unwrap();
        for f in ["key", "known_hosts"] {
            std::fs::write(keys.path().join(f), "x\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                keys.path().join(f),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
        }
        let lab = ssh_lab(
            22,
            &keys.path().join("key"),
            &keys.path().join("known_hosts"),
            "",
        );
        let mut c = lab.client().await;
        let on_sim = ssh_job("", INLINE).replace("device_type: ssh", "device_type: sim-uboot");
        let e = c.submit(&on_sim, "j.yaml").await.unwrap_err();
        assert_eq!(
            e.code(),
            Some(labd::error::ErrorCode::InvalidJob),
            "{e}"
        );
        assert!(
            e.to_string().contains("need a board reached over ssh (console `ssh`); board `sim-01` (device type `sim-uboot`) has a `sim` console"),
            "{e}"
        );
        let minimal = "device_type: ssh\njob_name: m\ntimeouts:\n  job:\n    minutes: 1\nactions:\n- boot:\n    method: minimal\n    prompts: ['# ']\n";
        let e = c.submit(minimal, "j.yaml").await.unwrap_err();
        assert!(
            e.to_string().contains("board `ssh-01` (device type `ssh`) is reached over ssh: it boots with `method: ssh` only, not `minimal`"),
            "{e}"
        );
        // No relay to switch; nothing else changes.
        set_health(&mut c, "ssh-01", "maintenance", Some("t"))
            .await
            .unwrap();
        let e = c
            .call(labd::protocol::RequestBody::Power {
                board: "ssh-01".into(),
                action: "on".into(),
            })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("this board has no relay"), "{e}");
        assert!(all_jobs(&mut c).await.is_empty());
    });
}
