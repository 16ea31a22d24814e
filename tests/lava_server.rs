//! labd as a worker of a real lava-server 2023.01 (`[lava]`): the server
//! Debian bookworm ships, on this machine (`hil/lava-server setup` and
//! `start`), with labd's simulated boards as its devices. Each test makes
//! its own worker, devices and device tag on the server, so jobs of one
//! test never reach another's boards, and checks the outcome in the
//! server's own records (its REST API).
//!
//! Needs root (`lava-server manage`, the device dictionaries under /etc)
//! and python3 (it serves the jobs' artifacts over HTTP: a lava-server's
//! job reads no local file).

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const API: &str = "http://127.0.0.1:8000/api/v0.2";
/// lava-publisher's websocket, as `hil/lava-server start` runs it.
const WS: &str = "ws://127.0.0.1:8001/ws/";
/// Where an admin puts device types (labd's simulator's, from
/// `hil/lava-server setup`); lava-server's own are in [`SHIPPED`], which it
/// searches after this one.
const TYPES: &str = "/etc/lava-server/dispatcher-config/device-types";
const SHIPPED: &str = "/usr/share/lava-server/device-types";
const DEVICES: &str = "/etc/lava-server/dispatcher-config/devices";

/// Whether lava-server 2023.01 answers on 127.0.0.1:8000.
fn server_answers() -> bool {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    agent
        .get(format!("{API}/system/version/"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .is_some_and(|b| b.contains("2023.01"))
}

/// The gate: root, python3, a running lava-server 2023.01 with labd's
/// device type installed.
fn have_server() -> bool {
    require_root("lava-server manage and its device dictionaries")
        && have_python3()
        && require(
            "lava-server 2023.01 on 127.0.0.1:8000",
            server_answers() && Path::new(TYPES).join("labd-sim.jinja2").is_file(),
            "run `hil/lava-server setup && hil/lava-server start` as root; .ci/run does",
        )
}

/// `lava-server manage ARGS`, which must succeed; what it printed.
fn manage(args: &[&str]) -> String {
    let o = Command::new("lava-server")
        .arg("manage")
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "lava-server manage {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A token of the server's admin user for its REST API (the user is made
/// once; each test gets a token of its own).
fn admin_token() -> String {
    static USER: std::sync::Once = std::sync::Once::new();
    USER.call_once(|| {
        if !manage(&["users", "list"]).contains("labd-test") {
            manage(&[
                "users",
                "add",
                "labd-test",
                "--superuser",
                "--staff",
                "--passwd",
                "labd-test-not-a-secret",
            ]);
        }
        // The server's own device type for labd's simulator.
        if !manage(&["device-types", "list"]).contains("labd-sim") {
            manage(&["device-types", "add", "labd-sim"]);
        }
    });
    manage(&[
        "tokens",
        "add",
        "--user",
        "labd-test",
        "--description",
        "labd tests",
    ])
    .trim()
    .to_owned()
}

/// A call to the server's REST API as its admin; the answer as JSON.
fn rest(token: &str, method: &str, path: &str, body: Option<Value>) -> Value {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{API}{path}");
    let auth = format!("Token {token}");
    let r = match (method, body) {
        ("POST", Some(b)) => agent
            .post(&url)
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(b.to_string()),
        _ => agent.get(&url).header("Authorization", &auth).call(),
    };
    let mut r = r.unwrap();
    let status = r.status();
    let text = r.body_mut().read_to_string().unwrap();
    assert!(status.is_success(), "{method} {path}: {status}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

/// Polls the server's record of job `id` until `done` holds of it, for at
/// most `limit`; the record.
fn wait_server_job(token: &str, id: u64, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let j = rest(token, "GET", &format!("/jobs/{id}/"), None);
        if done(&j) {
            return j;
        }
        assert!(Instant::now() < deadline, "server job {id} stayed {j}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The server's test cases of job `id`, as (suite name, case, result).
fn server_results(token: &str, id: u64) -> Vec<(String, String, String)> {
    let suites = rest(token, "GET", &format!("/jobs/{id}/suites/"), None);
    let suite_name = |sid: &Value| {
        suites["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == *sid)
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let tests = rest(token, "GET", &format!("/jobs/{id}/tests/"), None);
    tests["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                suite_name(&t["suite"]),
                t["name"].as_str().unwrap().to_owned(),
                t["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The test cases of a job's definitions (LAVA's own `lava` suite left
/// out) as labd lists them: (case, result).
fn user_cases(theirs: &[(String, String, String)]) -> Vec<(String, String)> {
    theirs
        .iter()
        .filter(|(s, _, _)| s != "lava")
        .map(|(_, n, r)| (n.clone(), r.clone()))
        .collect()
}

/// A lab whose simulated boards are the server's devices, and the HTTP
/// server of its artifacts.
struct LavaLab {
    lab: Lab,
    /// This test's worker, device tag and device name prefix.
    name: String,
    token: String,
    http: Child,
    port: u16,
    /// The LAVA device type of its boards (a template extending
    /// `labd-sim.jinja2`, or that one).
    device_type: String,
}

impl Drop for LavaLab {
    fn drop(&mut self) {
        let _ = self.http.kill();
        let _ = self.http.wait();
        for b in 1..=2 {
            let device = format!("{}-sim-{b:02}", self.name);
            // Retired, the server's scheduler passes the device over
            // instead of failing to read its removed dictionary each time.
            let _ = Command::new("lava-server")
                .args([
                    "manage", "devices", "update", &device, "--health", "RETIRED",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_file(Path::new(DEVICES).join(format!("{device}.jinja2")));
        }
    }
}

/// The simulated board `board`'s LAVA dictionary: its console and relay
/// are `labd-sim`'s client commands, the same on the server and in labd.
fn dictionary(sim_control: &Path, board: &str, device_type: &str) -> String {
    let sim = format!(
        "{} --control {}",
        env!("CARGO_BIN_EXE_labd-sim"),
        sim_control.display()
    );
    format!(
        "{{% extends '{device_type}.jinja2' %}}\n\
         {{% set connection_command = \"{sim} console {board}\" %}}\n\
         {{% set power_on_command = \"{sim} power {board} on\" %}}\n\
         {{% set power_off_command = \"{sim} power {board} off\" %}}\n\
         {{% set hard_reset_command = \"{sim} power {board} reset\" %}}\n"
    )
}

impl LavaLab {
    /// `boards` simulated boards, each the server's device
    /// `<name>-sim-NN` on worker `<name>`, tagged `<name>`. With
    /// `register`, labd registers the worker itself; else the test adds it
    /// and gives labd the token in a file.
    fn start(test: &str, boards: usize, register: bool) -> LavaLab {
        Self::start_with(test, boards, register, "ping_interval_secs = 2\n")
    }

    /// `start`, with `lava` the `[lava]` keys but `url`, `worker` and
    /// `ws_url` (lava-publisher's on 127.0.0.1:8001).
    fn start_with(test: &str, boards: usize, register: bool, lava: &str) -> LavaLab {
        Self::start_at(
            test,
            "http://127.0.0.1:8000/",
            "labd-sim",
            boards,
            register,
            lava,
        )
    }

    /// `start_with`, labd working for the server at `url`, its boards LAVA
    /// devices of `device_type` (labd-sim or a template in [`TYPES`] that
    /// extends it).
    fn start_at(
        test: &str,
        url: &str,
        device_type: &str,
        boards: usize,
        register: bool,
        lava: &str,
    ) -> LavaLab {
        let token = admin_token();
        let name = format!("labd-{}-{test}", std::process::id());
        let lava = if lava.contains("ws_url") {
            lava.to_owned()
        } else {
            format!("ws_url = \"{WS}\"\n{lava}")
        };
        let mut lab = Lab::prepare(
            boards,
            &[],
            &[],
            &format!("[lava]\nurl = {url:?}\nworker = {name:?}\n{lava}[deploy]\nfile_roots = []\n"),
        );
        let cfg = std::fs::read_to_string(&lab.config).unwrap();
        let mut cfg = cfg[..cfg.find("[[boards]]").unwrap()].to_owned();
        let devices = lab.dir.path().join("devices");
        std::fs::create_dir_all(&devices).unwrap();
        // The templates the server renders the dictionaries with, in one
        // directory as labd reads them.
        let templates = lab.dir.path().join("device-types");
        std::fs::create_dir_all(&templates).unwrap();
        for (dir, f) in [
            (SHIPPED, "base.jinja2"),
            (SHIPPED, "base-uboot.jinja2"),
            (TYPES, "labd-sim.jinja2"),
        ] {
            std::os::unix::fs::symlink(Path::new(dir).join(f), templates.join(f)).unwrap();
        }
        if device_type != "labd-sim" {
            let f = format!("{device_type}.jinja2");
            std::os::unix::fs::symlink(Path::new(TYPES).join(&f), templates.join(&f)).unwrap();
        }
        if !register {
            let out = manage(&["workers", "add", &name, "--description", "labd test"]);
            let t = out
                .lines()
                .find_map(|l| l.strip_prefix("Token: "))
                .expect("the worker's token");
            std::fs::write(lab.dir.path().join("state-token"), t).unwrap();
            cfg = cfg.replace(
                "[lava]\n",
                &format!(
                    "[lava]\ntoken_file = {:?}\n",
                    lab.dir.path().join("state-token")
                ),
            );
        }
        for b in 1..=boards {
            let board = format!("sim-{b:02}");
            let device = format!("{name}-{board}");
            let dict = dictionary(&lab.sim_control, &board, device_type);
            std::fs::write(devices.join(format!("{board}.jinja2")), &dict).unwrap();
            std::fs::write(Path::new(DEVICES).join(format!("{device}.jinja2")), &dict).unwrap();
            cfg.push_str(&format!(
                "[[boards]]\nname = {board:?}\nlava_device = \"devices/{board}.jinja2\"\nlava_templates = \"device-types\"\nlava_worker_device = {device:?}\ntags = [{name:?}]\n[boards.parameters]\nuses_deployed_root = false\n"
            ));
        }
        std::fs::write(&lab.config, cfg).unwrap();
        lab.start_labd();
        if register {
            lab.wait_log("registered with lava-server");
        }
        for b in 1..=boards {
            manage(&[
                "devices",
                "add",
                "--device-type",
                device_type,
                "--worker",
                &name,
                // Before `--tags`, which takes every argument after it.
                &format!("{name}-sim-{b:02}"),
                "--tags",
                &name,
            ]);
        }
        // The jobs' artifacts, over HTTP: python's server, on a port it
        // picks and prints.
        let mut http = Command::new("python3")
            .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "0"])
            .current_dir(lab.artifacts())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut first = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(http.stdout.take().unwrap()),
            &mut first,
        )
        .unwrap();
        let port = first
            .split(" port ")
            .nth(1)
            .and_then(|p| p.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("python's http.server said {first:?}"));
        LavaLab {
            lab,
            name,
            token,
            http,
            port,
            device_type: device_type.to_owned(),
        }
    }

    /// A LAVA job for this test's boards with test steps `steps`.
    fn job(&self, job_name: &str, steps: &[&str]) -> String {
        let text = self.lab.job(job_name, "medium", steps).replace(
            &format!("file://{}", self.lab.artifacts().display()),
            &format!("http://127.0.0.1:{}", self.port),
        );
        let text = text.replace(
            "device_type: sim-uboot",
            &format!("device_type: {}", self.device_type),
        );
        format!("visibility: public\n{}", tagged(text, &self.name))
    }

    /// Submits a job to the server; its id there.
    fn submit(&self, definition: &str) -> u64 {
        let r = rest(
            &self.token,
            "POST",
            "/jobs/",
            Some(serde_json::json!({ "definition": definition })),
        );
        r["job_ids"][0].as_u64().unwrap_or_else(|| panic!("{r}"))
    }

    fn server_job(&self, id: u64, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
        wait_server_job(&self.token, id, limit, done)
    }

    /// Submits a job that runs until it is ended, and waits until it runs
    /// on the board; (its id on the server, labd's).
    async fn a_running_job(&self, name: &str) -> (u64, u64) {
        let id =
            self.submit(&self.job(name, &["lava-test-case started --shell true", "sleep 600"]));
        self.server_job(id, Duration::from_secs(60), |j| j["state"] == "Running");
        let lid = labd_job(&self.lab).await["id"].as_u64().unwrap();
        until_log_contains(&self.lab, lid, "started").await;
        (id, lid)
    }

    fn server_log(&self, id: u64) -> String {
        match rest(&self.token, "GET", &format!("/jobs/{id}/logs/"), None) {
            Value::String(s) => s,
            v => v.to_string(),
        }
    }
}

/// labd's only job: the one it runs for the server.
async fn labd_job(lab: &Lab) -> Value {
    let mut c = lab.client().await;
    let jobs = all_jobs(&mut c).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    jobs[0].clone()
}

/// A job submitted to lava-server runs on the simulated board through
/// labd (a worker that registered itself), and the server's own records
/// say what labd's do: Complete, the same test cases with the same
/// results, LAVA's `lava`/`job` pass, the console in the server's log.
/// The server hears of the end at once, not at the next ping. A local
/// submit to the board the server owns is refused, naming the server.
#[test]
fn a_lava_job_runs_on_a_labd_board_and_the_server_records_its_results() {
    if !have_server() {
        return;
    }
    // A long ping interval: the end must reach the server well before the
    // next ping.
    let ll = LavaLab::start_with("complete", 1, true, "ping_interval_secs = 10\n");
    rt().block_on(async {
        let mut c = ll.lab.client().await;
        // Local jobs do not get the server's board.
        let local = ll
            .job("local", &["lava-test-case t --shell true"])
            .replace("visibility: public\n", "");
        let e = c.submit(&local, "j.yaml").await.unwrap_err().to_string();
        assert!(
            e.contains("owned by the LAVA server http://127.0.0.1:8000/") && e.contains("sim-01"),
            "{e}"
        );

        let id = ll.submit(&ll.job(
            "through-lava",
            &[
                "lava-test-case ok --shell true",
                "lava-test-case bad --shell false",
                "lava-test-case speed --result pass --measurement 12.5 --units MB/s",
            ],
        ));
        // labd stores the server's job like any other, and runs it.
        let labd = loop {
            let jobs = all_jobs(&mut c).await;
            if let Some(j) = jobs.first() {
                break j.clone();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let lid = labd["id"].as_u64().unwrap();
        assert_eq!(labd["lava_job"], id, "{labd}");
        let table = ll.lab.labctl(&["jobs"]);
        assert!(
            table.contains(&format!("through-lava (LAVA {id})")),
            "{table}"
        );
        let (end, log) = wait_job(&mut c, lid).await;
        assert_eq!(end["health"], "Complete", "{end}\n{log}");
        let ended = Instant::now();
        let ours = results(&mut c, lid).await;
        assert_eq!(
            ours,
            [
                ("ok".into(), "pass".into()),
                ("bad".into(), "fail".into()),
                ("speed".into(), "pass".into())
            ]
        );

        let j = ll.server_job(id, Duration::from_secs(30), |j| j["state"] == "Finished");
        // FINISHED went out as the job ended, well within a ping interval.
        assert!(
            ended.elapsed() < Duration::from_secs(2),
            "{:?}",
            ended.elapsed()
        );
        assert_eq!(j["health"], "Complete", "{j}");
        assert_eq!(j["actual_device"], format!("{}-sim-01", ll.name), "{j}");
        let theirs = server_results(&ll.token, id);
        assert_eq!(user_cases(&theirs), ours, "{theirs:?}");
        assert!(
            theirs.iter().all(|(s, _, _)| s == "lava" || s == "0_t"),
            "{theirs:?}"
        );
        assert!(
            theirs.contains(&("lava".into(), "job".into(), "pass".into())),
            "{theirs:?}"
        );
        // The console, line by line, in the server's log of the job.
        let their_log = ll.server_log(id);
        for needle in [
            "Hit any key to stop autoboot",
            "Linux version",
            "\"lvl\":\"target\"",
            "\"lvl\":\"results\"",
        ] {
            assert!(their_log.contains(needle), "{needle}: {their_log}");
        }
    });
}

/// A cancel on the server ends the job labd runs for it within a ping:
/// the board is powered off, labd's job is Canceled, the server's too.
#[test]
fn a_cancel_from_the_server_ends_the_job() {
    if !have_server() {
        return;
    }
    let ll = LavaLab::start("cancel", 1, false);
    rt().block_on(async {
        let (id, lid) = ll.a_running_job("to-cancel").await;
        rest(&ll.token, "GET", &format!("/jobs/{id}/cancel/"), None);
        let mut c = ll.lab.client().await;
        let (end, log) = wait_job(&mut c, lid).await;
        assert_eq!(end["health"], "Canceled", "{end}\n{log}");
        let j = ll.server_job(id, Duration::from_secs(30), |j| j["state"] == "Finished");
        assert_eq!(j["health"], "Canceled", "{j}");
        assert!(powered(&ll.lab).await.is_empty());
    });
}

/// labd SIGKILLed during a server's job: the restarted labd ends its job
/// (Incomplete, Infrastructure) and reports that to the server, which
/// shows the job Incomplete.
#[test]
fn a_job_cut_short_by_a_labd_kill_ends_incomplete_on_the_server() {
    if !have_server() {
        return;
    }
    let mut ll = LavaLab::start("kill", 1, false);
    let (id, labd_id) = rt().block_on(ll.a_running_job("to-kill"));
    ll.lab.kill_labd();
    ll.lab.start_labd();
    let j = ll.server_job(id, Duration::from_secs(30), |j| j["state"] == "Finished");
    assert_eq!(j["health"], "Incomplete", "{j}");
    let comment = j["failure_comment"].as_str().unwrap_or_default();
    assert!(comment.contains("restarted"), "{j}");
    rt().block_on(async {
        let mut c = ll.lab.client().await;
        let ours = job(&mut c, labd_id).await;
        assert_eq!(ours["health"], "Incomplete", "{ours}");
        assert_eq!(ours["error_class"], "Infrastructure", "{ours}");
    });
}

/// A worker of another version than the server's: the server answers 409
/// and shows the worker Offline, and labd's log says so as an error.
#[test]
fn a_version_mismatch_is_reported_and_the_server_shows_the_worker_offline() {
    if !have_server() {
        return;
    }
    let ll = LavaLab::start_with(
        "version",
        1,
        false,
        "version = \"2022.11\"\nping_interval_secs = 1\n",
    );
    let line = ll.lab.wait_log("LAVA worker is Offline on the server");
    assert!(
        line.contains("ERROR") && line.contains("2022.11") && line.contains("[lava] version"),
        "{line}"
    );
    let w = rest(&ll.token, "GET", &format!("/workers/{}/", ll.name), None);
    assert_eq!(w["state"], "Offline", "{w}");
}

/// The server's events start a job at once: with an hour between pings,
/// only lava-publisher's event (the job Scheduled on this worker) can have
/// labd ask for it.
#[test]
fn a_job_starts_on_the_publisher_s_event_not_at_the_next_ping() {
    if !have_server() {
        return;
    }
    let ll = LavaLab::start_with("events", 1, false, "ping_interval_secs = 3600\n");
    // The first ping, at start, has passed once the events are heard.
    ll.lab.wait_log("listening to the server's events");
    let id = ll.submit(&ll.job("by-event", &["lava-test-case ok --shell true"]));
    let j = ll.server_job(id, Duration::from_secs(120), |j| j["state"] == "Finished");
    assert_eq!(j["health"], "Complete", "{j}");
    assert!(
        server_results(&ll.token, id).contains(&("0_t".into(), "ok".into(), "pass".into())),
        "{id}"
    );
}

/// A second gunicorn of the same lava-server (the same database) on a
/// port of its own, which a test stops and starts: labd works for it,
/// while the test watches the jobs through the shared one on port 8000.
struct Gunicorn {
    port: u16,
    child: Option<Child>,
}

impl Gunicorn {
    fn start() -> Gunicorn {
        let mut g = Gunicorn {
            port: free_port(),
            child: None,
        };
        g.up();
        g
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Starts it (as `hil/lava-server start` starts the shared one) and
    /// waits until its API answers.
    fn up(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new("gunicorn3")
            .args([
                "lava_server.wsgi",
                "--worker-class",
                "eventlet",
                "--workers",
                "1",
            ])
            .args([
                "-u",
                "lavaserver",
                "-g",
                "lavaserver",
                "--graceful-timeout",
                "1",
            ])
            .args(["--bind", &format!("127.0.0.1:{}", self.port)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let deadline = Instant::now() + Duration::from_secs(60);
        let version = format!("{}api/v0.2/system/version/", self.url());
        while agent.get(&version).call().is_err() {
            if let Some(c) = self.child.as_mut() {
                assert!(
                    c.try_wait().unwrap().is_none(),
                    "gunicorn on {} exited",
                    self.port
                );
            }
            assert!(
                Instant::now() < deadline,
                "gunicorn on {} did not answer",
                self.port
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops it and waits for its end: its port refuses connections.
    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap();
            c.wait().unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "gunicorn's workers outlived it");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Gunicorn {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A job of a lab working for a [`Gunicorn`] of its own that runs a test
/// case (`before`), waits until the server has it, and then, the server
/// stopped, goes on with `steps`.
struct AwayJob {
    server: Gunicorn,
    ll: LavaLab,
    /// The job's id on the server.
    id: u64,
}

impl AwayJob {
    fn start(test: &str, steps: &[&str]) -> AwayJob {
        let server = Gunicorn::start();
        let ll = LavaLab::start_at(
            test,
            &server.url(),
            "labd-sim",
            1,
            false,
            "ping_interval_secs = 1\n",
        );
        let gate = ll.lab.dir.path().join("gate");
        let wait_gate = format!("while [ ! -e {} ]; do sleep 0.1; done", gate.display());
        let mut all = vec!["lava-test-case before --shell true", &wait_gate];
        all.extend_from_slice(steps);
        let id = ll.submit(&ll.job(test, &all));
        ll.server_job(id, Duration::from_secs(60), |j| j["state"] == "Running");
        // The log reaches the server while it is there.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !server_results(&ll.token, id)
            .iter()
            .any(|r| r.1 == "before")
        {
            assert!(
                Instant::now() < deadline,
                "`before` never reached the server"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        let mut away = AwayJob { server, ll, id };
        away.server.down();
        std::fs::write(&gate, "").unwrap();
        away
    }
}

/// The server stopped in the middle of a job and started again once the
/// job has ended: the job ran on to its end on the board (a server away
/// stops nothing), and the server, back, gets the whole log, each test
/// case once, and the end.
#[test]
fn a_server_away_during_a_job_gets_its_whole_log_and_end_when_back() {
    if !have_server() {
        return;
    }
    let AwayJob { mut server, ll, id } = AwayJob::start(
        "away",
        &[
            "lava-test-case after --shell true",
            "echo the-last-line-$((6 * 7))",
        ],
    );
    let (lid, ours) = rt().block_on(async {
        let labd = labd_job(&ll.lab).await;
        let lid = labd["id"].as_u64().unwrap();
        let mut c = ll.lab.client().await;
        let (end, log) = wait_job(&mut c, lid).await;
        assert_eq!(end["health"], "Complete", "{end}\n{log}");
        (lid, results(&mut c, lid).await)
    });
    // labd tried to send the rest to the server that is away.
    ll.lab.wait_log("sending log lines failed");
    let j = rest(&ll.token, "GET", &format!("/jobs/{id}/"), None);
    assert_eq!(j["state"], "Running", "{j}");
    server.up();
    let j = ll.server_job(id, Duration::from_secs(120), |j| j["state"] == "Finished");
    assert_eq!(j["health"], "Complete", "{j}");
    let theirs = server_results(&ll.token, id);
    assert_eq!(user_cases(&theirs), ours, "labd job {lid}: {theirs:?}");
    assert_eq!(
        ours,
        [
            ("before".into(), "pass".into()),
            ("after".into(), "pass".into())
        ]
    );
    assert!(
        theirs.contains(&("lava".into(), "job".into(), "pass".into())),
        "{theirs:?}"
    );
    assert!(
        ll.server_log(id).contains("the-last-line-42"),
        "{}",
        ll.server_log(id)
    );
}

/// A job the server cancels while labd cannot reach it goes on until
/// labd reaches the server again, and then ends Canceled on both sides.
#[test]
fn a_cancel_while_labd_cannot_reach_the_server_ends_the_job_on_reconnect() {
    if !have_server() {
        return;
    }
    let mut server = Gunicorn::start();
    let ll = LavaLab::start_at(
        "cancel-away",
        &server.url(),
        "labd-sim",
        1,
        false,
        "ping_interval_secs = 1\n",
    );
    let (id, lid) = rt().block_on(ll.a_running_job("cancel-away"));
    server.down();
    rest(&ll.token, "GET", &format!("/jobs/{id}/cancel/"), None);
    ll.server_job(id, Duration::from_secs(30), |j| j["state"] == "Canceling");
    // labd cannot know yet: its job runs on.
    ll.lab.wait_log("ping failed");
    rt().block_on(async {
        let mut c = ll.lab.client().await;
        let j = job(&mut c, lid).await;
        assert_eq!(j["state"], "Running", "{j}");
    });
    server.up();
    rt().block_on(async {
        let mut c = ll.lab.client().await;
        let (end, log) = wait_job(&mut c, lid).await;
        assert_eq!(end["health"], "Canceled", "{end}\n{log}");
    });
    let j = ll.server_job(id, Duration::from_secs(60), |j| j["state"] == "Finished");
    assert_eq!(j["health"], "Canceled", "{j}");
}

/// LAVA's health checks reach labd as jobs like any other, and their ends
/// set the device's health on the server: Good after a health check that
/// completes, Bad after one that does not. The device type is one of this
/// test's own (`labd-sim-hc`, extending labd-sim), so that no other test's
/// devices get its health check.
#[test]
fn lava_health_checks_run_as_jobs_and_set_the_device_s_health() {
    if !have_server() {
        return;
    }
    const HC_TYPE: &str = "labd-sim-hc";
    let template = Path::new(TYPES).join(format!("{HC_TYPE}.jinja2"));
    std::fs::write(&template, "{% extends 'labd-sim.jinja2' %}\n").unwrap();
    admin_token();
    if !manage(&["device-types", "list"]).contains(HC_TYPE) {
        manage(&["device-types", "add", HC_TYPE]);
    }
    let ll = LavaLab::start_at(
        "hc",
        "http://127.0.0.1:8000/",
        HC_TYPE,
        1,
        false,
        &format!("ws_url = \"{WS}\"\nping_interval_secs = 1\n"),
    );
    let device = format!("{}-sim-01", ll.name);
    let checks = Path::new("/etc/lava-server/dispatcher-config/health-checks");
    std::fs::create_dir_all(checks).unwrap();
    /// The health check file, removed whatever the test's end.
    struct Check(std::path::PathBuf);
    impl Drop for Check {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let check = Check(checks.join(format!("{HC_TYPE}.yaml")));
    let health = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let d = rest(&ll.token, "GET", &format!("/devices/{device}/"), None);
            if d["health"] == want {
                return d;
            }
            assert!(Instant::now() < deadline, "device {device} stayed {d}");
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    let health_checks = || -> Vec<Value> {
        let r = rest(
            &ll.token,
            "GET",
            &format!("/jobs/?health_check=true&actual_device={device}&ordering=id"),
            None,
        );
        r["results"].as_array().unwrap().clone()
    };
    for (round, (steps, url, want)) in [
        (&["lava-test-case hc --shell true"][..], None, "Good"),
        (&[][..], Some("/no-such-kernel"), "Bad"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut def = ll.job(&format!("health-check-{round}"), steps);
        if let Some(u) = url {
            def = def.replacen("/Image", u, 1);
        }
        std::fs::write(&check.0, def).unwrap();
        manage(&["devices", "update", &device, "--health", "UNKNOWN"]);
        let d = health(want);
        let hcs = health_checks();
        assert_eq!(hcs.len(), round + 1, "{d}\n{hcs:?}");
        let hc = &hcs[round];
        assert_eq!(hc["state"], "Finished", "{hc}");
        assert_eq!(
            hc["health"],
            if want == "Good" {
                "Complete"
            } else {
                "Incomplete"
            },
            "{hc}"
        );
    }
    // labd ran both, as the server's jobs.
    rt().block_on(async {
        let mut c = ll.lab.client().await;
        let jobs = all_jobs(&mut c).await;
        assert_eq!(jobs.len(), 2, "{jobs:?}");
    });
}

/// While a server's job runs, `labctl boards` and `labctl top` show its
/// board as the server's device on this worker, and its job as labd's id
/// with the server's beside it; `--json boards` carries both ids and the
/// owner. The link's metrics count the answered pings (`connected` 1) and
/// the job started, and once the job ends, its finish by LAVA result and
/// error type, the log lines the server took, none left queued.
#[test]
fn boards_and_top_show_a_running_lava_job_and_the_link_metrics_count_it() {
    if !have_server() {
        return;
    }
    let ll = LavaLab::start("watch", 1, false);
    rt().block_on(async {
        let (id, lid) = ll.a_running_job("watched").await;

        let device = format!("{}-sim-01", ll.name);
        let owner = format!("lava:{device}@{}", ll.name);
        let running = format!("{lid} (LAVA {id})");
        let row = |text: &str| -> String {
            text.lines()
                .find(|l| l.starts_with("sim-01"))
                .unwrap_or_else(|| panic!("no sim-01 in\n{text}"))
                .to_owned()
        };
        let table = ll.lab.labctl(&["boards"]);
        assert!(
            row(&table).contains(&owner) && row(&table).contains(&running),
            "{table}"
        );
        let frame = ll.lab.labctl(&["top", "--once"]);
        assert!(
            row(&frame).contains(&owner) && row(&frame).contains(&running),
            "{frame}"
        );
        let v: Value = serde_json::from_str(&ll.lab.labctl(&["--json", "boards"])).unwrap();
        let b = &v["boards"][0];
        assert_eq!(b["job"], lid, "{v}");
        assert_eq!(b["lava_job"], id, "{v}");
        assert_eq!(
            b["lava"],
            serde_json::json!({"device": device, "url": "http://127.0.0.1:8000/", "worker": ll.name}),
            "{v}"
        );

        // The link, on the socket's metrics: the value of the series
        // `name{server,worker,extra}`.
        let link = format!("server=\"http://127.0.0.1:8000/\",worker=\"{}\"", ll.name);
        let metric = |text: &str, name: &str, extra: &str| -> f64 {
            let series = format!("{name}{{{link}{extra}}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        };
        let mut c = ll.lab.client().await;
        let scrape = |v: Value| v["text"].as_str().unwrap().to_owned();
        let text = scrape(c.call(labd::protocol::RequestBody::Metrics).await.unwrap());
        assert_eq!(metric(&text, "labd_lava_connected", ""), 1.0, "{text}");
        assert!(metric(&text, "labd_lava_pings_total", ",outcome=\"ok\"") >= 1.0);
        assert!(metric(&text, "labd_lava_ping_seconds_count", "") >= 1.0);
        assert_eq!(metric(&text, "labd_lava_jobs_started_total", ""), 1.0);
        // The publisher's event of the job, at least, was heard.
        assert!(metric(&text, "labd_lava_events_total", "") >= 1.0, "{text}");

        // Canceled on the server: the board is free, the link counts the end.
        rest(&ll.token, "GET", &format!("/jobs/{id}/cancel/"), None);
        let (end, log) = wait_job(&mut c, lid).await;
        assert_eq!(end["health"], "Canceled", "{end}\n{log}");
        ll.server_job(id, Duration::from_secs(30), |j| j["state"] == "Finished");
        let table = ll.lab.labctl(&["boards"]);
        assert!(row(&table).contains(&owner), "{table}");
        assert!(!row(&table).contains("LAVA"), "{table}");
        let v: Value = serde_json::from_str(&ll.lab.labctl(&["--json", "boards"])).unwrap();
        assert!(v["boards"][0].get("lava_job").is_none(), "{v}");
        let text = scrape(c.call(labd::protocol::RequestBody::Metrics).await.unwrap());
        assert_eq!(
            metric(
                &text,
                "labd_lava_jobs_finished_total",
                ",result=\"fail\",error_type=\"Canceled\""
            ),
            1.0,
            "{text}"
        );
        assert!(metric(&text, "labd_lava_log_lines_sent_total", "") > 0.0, "{text}");
        assert_eq!(metric(&text, "labd_lava_log_lines_queued", ""), 0.0, "{text}");
    });
}

/// labd SIGKILLed while the server is away, with lines of the job the
/// server has not taken yet: the restarted labd sends them (from where the
/// server's log stopped, which it kept in its store), each test case once,
/// then the job's end, Incomplete.
#[test]
fn a_labd_killed_while_the_server_is_away_sends_the_rest_after_its_restart() {
    if !have_server() {
        return;
    }
    let AwayJob {
        mut server,
        mut ll,
        id,
    } = AwayJob::start(
        "kill-away",
        &[
            "lava-test-case during --shell true",
            "echo the-line-after-$((6 * 7))",
            "sleep 600",
        ],
    );
    rt().block_on(async {
        let lid = labd_job(&ll.lab).await["id"].as_u64().unwrap();
        until_log_contains(&ll.lab, lid, "the-line-after-42").await;
        let mut c = ll.lab.client().await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !results(&mut c, lid).await.iter().any(|r| r.0 == "during") {
            assert!(Instant::now() < deadline, "labd never recorded `during`");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // The lines wait in labd for the server.
    ll.lab.wait_log("sending log lines failed");
    ll.lab.kill_labd();
    server.up();
    ll.lab.start_labd();
    let j = ll.server_job(id, Duration::from_secs(120), |j| j["state"] == "Finished");
    assert_eq!(j["health"], "Incomplete", "{j}");
    let theirs = server_results(&ll.token, id);
    assert_eq!(
        user_cases(&theirs),
        [
            ("before".to_owned(), "pass".to_owned()),
            ("during".into(), "pass".into())
        ],
        "{theirs:?}"
    );
    assert!(
        theirs.contains(&("lava".into(), "job".into(), "fail".into())),
        "{theirs:?}"
    );
    let log = ll.server_log(id);
    assert!(log.contains("the-line-after-42"), "{log}");
}
