//! A real lab for tests: `labd-sim` and `labd` as real processes on a temp
//! dir, talking over a real socket, PTYs and UDP.

#![allow(dead_code)]

use labd::client::Client;
use labd::protocol::RequestBody;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;

/// Whether the tests run under CI: `CI=true`, as CI services set it and
/// `.ci/run` does for `cargo test`. CI installs every tool the tests use,
/// so there a missing tool is a broken set-up, never a reason to skip.
pub fn under_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Whether `tool` is an executable file in a directory of `PATH`: the
/// program `Command::new(tool)` would run. Looking is enough, because some
/// tools have no harmless flag to run them with.
pub fn installed(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(tool))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// The gate of every test that needs something a machine may lack (a tool,
/// a file, root): `what` names it, `available` says whether it is there and
/// `how` says how to get it. When it is there, true. When it is missing
/// under CI (`CI=true`) the test panics naming it, so that CI cannot be
/// green with the test unrun; elsewhere the test prints one line,
/// "skipped: <test>: <what> missing", and should return at once.
pub fn require(what: &str, available: bool, how: &str) -> bool {
    if available {
        return true;
    }
    // The test harness names each test's thread after the test.
    let current = std::thread::current();
    let test = current.name().filter(|n| *n != "main").unwrap_or("a test");
    assert!(!under_ci(), "{test}: {what} is missing (CI=true): {how}");
    // Straight to the process's stderr, in one write so that the line stays
    // whole beside the harness's output: the harness captures `eprintln!`
    // of a passing test, and a skip nobody sees is a test that looks run.
    use std::io::Write;
    let line = format!("skipped: {test}: {what} missing\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    false
}

/// `require` for a program on `PATH`.
pub fn require_tool(tool: &str, how: &str) -> bool {
    require(tool, installed(tool), how)
}

/// `require` for python3, which some tests' console bridges and checkers
/// are written in.
pub fn have_python3() -> bool {
    require_tool(
        "python3",
        "install the Debian package python3; .ci/run does (with python3-venv)",
    )
}

/// `require` for root, which switching users and mounting need.
pub fn require_root(why: &str) -> bool {
    require(
        "root",
        nix::unistd::Uid::effective().is_root(),
        &format!("{why} needs root; CI runs the tests as root"),
    )
}

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub sim_control: PathBuf,
    pub config: PathBuf,
    sim: Child,
    labd: Option<Child>,
    /// labd's log lines, but "labd ready".
    labd_log: Option<Receiver<String>>,
    /// Extra environment for every labd this lab starts (faults, for one).
    pub env: Vec<(String, String)>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(l) = &mut self.labd {
            let _ = l.kill();
            let _ = l.wait();
        }
        let _ = self.sim.kill();
        let _ = self.sim.wait();
    }
}

/// Waits for a line containing `what` on a child's pipe (an event, not a
/// sleep); every other line, before it and after it, goes to the returned
/// channel in order.
pub fn wait_line(r: impl std::io::Read + Send + 'static, what: &'static str) -> Receiver<String> {
    let mut lines = BufReader::new(r).lines();
    let mut before = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("reading child output");
        if line.contains(what) {
            // What came before the line is read first: labd's boards start
            // (and may attach their consoles) before it is ready to serve.
            let (tx, rx) = std::sync::mpsc::channel();
            for l in before {
                let _ = tx.send(l);
            }
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || {
                for l in lines.map_while(Result::ok) {
                    let _ = tx.send(l);
                }
            });
            return rx;
        }
        before.push(line);
    }
    panic!("child exited before printing {what:?}");
}

impl Lab {
    /// Starts a simulator with `boards` sim-uboot boards and a labd for them.
    pub fn start(boards: usize, tags: &[(&str, &[&str])]) -> Lab {
        Self::start_with(boards, tags, &[], "")
    }

    /// Like `start`, with extra environment variables for labd and extra
    /// config tables (TOML, such as `[limits]`) placed before the boards.
    pub fn start_with(
        boards: usize,
        tags: &[(&str, &[&str])],
        env: &[(&str, &str)],
        extra_config: &str,
    ) -> Lab {
        let mut lab = Self::prepare(boards, tags, env, extra_config);
        lab.start_labd();
        lab
    }

    /// Everything `start_with` does but start labd, so a test can put files
    /// in place first; `@DIR@` in `extra_config` is the lab's directory.
    pub fn prepare(
        boards: usize,
        tags: &[(&str, &[&str])],
        env: &[(&str, &str)],
        extra_config: &str,
    ) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let sim_control = dir.path().join("sim.sock");
        let socket = dir.path().join("labd.sock");
        let names: Vec<String> = (1..=boards).map(|i| format!("sim-{i:02}")).collect();
        let mut sim = Command::new(env!("CARGO_BIN_EXE_labd-sim"))
            .arg("--control")
            .arg(&sim_control)
            .arg("--boards")
            .arg(names.join(","))
            .arg("--scratch")
            .arg(dir.path().join("scratch"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        wait_line(sim.stdout.take().unwrap(), "READY");
        let mut cfg = format!(
            "socket = {:?}\nstate_dir = {:?}\nsim_control = {:?}\n[tftp]\nbind = \"127.0.0.1:0\"\nserver_ip = \"127.0.0.1\"\n",
            socket,
            dir.path().join("state"),
            sim_control
        );
        cfg.push_str(&extra_config.replace("@DIR@", &dir.path().display().to_string()));
        // The tests' jobs deploy the lab's own artifacts as file:// URLs.
        if !extra_config.contains("[deploy]") {
            cfg.push_str(&format!("\n[deploy]\nfile_roots = [{:?}]\n", dir.path()));
        }
        cfg.push('\n');
        for n in &names {
            let t: Vec<String> = tags
                .iter()
                .find(|(b, _)| b == n)
                .map(|(_, t)| t.iter().map(|s| format!("{s:?}")).collect())
                .unwrap_or_default();
            cfg.push_str(&format!(
                "[[boards]]\nname = {n:?}\ndevice_type = \"sim-uboot\"\ntags = [{}]\nconsole = {{ type = \"sim\" }}\npower = {{ type = \"sim\" }}\n[boards.parameters]\n\"timeouts.bootloader-interrupt\" = 3\n",
                t.join(",")
            ));
        }
        let config = dir.path().join("labd.toml");
        std::fs::write(&config, cfg).unwrap();
        let art = dir.path().join("artifacts");
        std::fs::create_dir_all(&art).unwrap();
        std::fs::write(art.join("Image"), vec![0x41u8; 300_000]).unwrap();
        std::fs::write(art.join("rootfs.cpio.gz"), vec![0x1fu8; 100_000]).unwrap();
        std::fs::write(art.join("board.dtb"), vec![0xd0u8; 4000]).unwrap();
        Lab {
            dir,
            socket,
            sim_control,
            config,
            sim,
            labd: None,
            labd_log: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Runs `labctl` against this lab, expecting it to succeed; returns
    /// what it printed.
    pub fn labctl(&self, args: &[&str]) -> String {
        let o = Command::new(env!("CARGO_BIN_EXE_labctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "labctl {args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs labd on this lab's config, expecting it to refuse to start;
    /// returns what it said.
    pub fn labd_refuses(&self) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_labd"))
            .arg("--config")
            .arg(&self.config)
            .env_remove("LABD_SOCKET")
            .output()
            .unwrap();
        assert!(!out.status.success(), "labd started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn start_labd(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_labd"))
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "labd=info")
            .env_remove("LABD_SOCKET")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.labd_log = Some(wait_line(child.stderr.take().unwrap(), "labd ready"));
        self.labd = Some(child);
    }

    /// The running labd's process id.
    pub fn labd_pid(&self) -> u32 {
        self.labd.as_ref().expect("labd is running").id()
    }

    /// Waits for a labd log line containing `needle`.
    pub fn wait_log(&self, needle: &str) -> String {
        let rx = self.labd_log.as_ref().expect("labd is running");
        for line in rx.iter() {
            if line.contains(needle) {
                return line;
            }
        }
        panic!("labd's log ended before {needle:?}");
    }

    /// Sends labd SIGTERM; the daemon goes on until it drains.
    pub fn terminate_labd(&self) {
        let pid = self.labd.as_ref().expect("labd is running").id();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }

    /// Waits for labd to exit on its own; returns whether it exited 0.
    pub fn wait_labd(&mut self) -> bool {
        let mut child = self.labd.take().expect("labd is running");
        self.labd_log = None;
        child.wait().unwrap().success()
    }

    pub fn kill_labd(&mut self) {
        if let Some(mut l) = self.labd.take() {
            l.kill().unwrap();
            l.wait().unwrap();
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.socket).await.unwrap()
    }

    pub fn artifacts(&self) -> PathBuf {
        self.dir.path().join("artifacts")
    }

    /// A job for the simulated boards; `steps` are its test steps.
    pub fn job(&self, name: &str, priority: &str, steps: &[&str]) -> String {
        let a = self.artifacts();
        let steps: String = steps.iter().map(|s| format!("          - {s}\n")).collect();
        format!(
            "device_type: sim-uboot\njob_name: {name}\npriority: {priority}\ntimeouts:\n  job:\n    minutes: 3\nactions:\n- deploy:\n    to: tftp\n    kernel:\n      url: file://{a}/Image\n      type: image\n    ramdisk:\n      url: file://{a}/rootfs.cpio.gz\n    dtb:\n      url: file://{a}/board.dtb\n- boot:\n    method: u-boot\n    commands: ramdisk\n    auto_login:\n      login_prompt: 'login:'\n      username: root\n    prompts: ['root@sim:[^#]*# ']\n- test:\n    definitions:\n    - from: inline\n      name: t\n      path: inline/t.yaml\n      repository:\n        metadata:\n          format: Lava-Test Test Definition 1.0\n          name: t\n        run:\n          steps:\n{steps}",
            a = a.display()
        )
    }

    /// The path of a simulated board's console pty, for a console in
    /// front of it (ser2net, a bridge program).
    pub async fn sim_pty(&self, board: &str) -> String {
        let req = labd::sim_control::ControlRequest::Pty {
            board: board.into(),
        };
        let r = labd::sim_control::control(&self.sim_control, &req)
            .await
            .unwrap();
        r.path.expect("the simulator names the pty")
    }

    pub async fn sim(&self, req: labd::sim_control::ControlRequest) {
        let r = labd::sim_control::control(&self.sim_control, &req)
            .await
            .unwrap();
        assert!(r.ok, "{r:?}");
    }
}

/// Submits a job the lab must accept; returns its id.
pub async fn submit(c: &mut Client, text: &str) -> u64 {
    c.submit(text, "j.yaml").await.unwrap()
}

/// Follows a job's log until it ends; returns the end value and the log's
/// exact bytes.
pub async fn wait_job_bytes(c: &mut Client, id: u64) -> (Value, Vec<u8>) {
    let mut log = Vec::new();
    let end = c
        .logs(id, true, |d| log.extend_from_slice(d))
        .await
        .unwrap();
    (end, log)
}

/// Follows a job's log until it ends; returns the end value and the log.
pub async fn wait_job(c: &mut Client, id: u64) -> (Value, String) {
    let (end, log) = wait_job_bytes(c, id).await;
    (end, String::from_utf8_lossy(&log).into_owned())
}

/// Follows a job's log on a connection of its own and returns once `needle`
/// is in it; panics if the job ends first. The follow goes on in the background.
pub async fn until_log_contains(lab: &Lab, id: u64, needle: &'static str) {
    let mut follower = lab.client().await;
    let (seen_tx, seen) = tokio::sync::oneshot::channel();
    let mut follow = tokio::spawn(async move {
        let mut log = Vec::new();
        let mut seen_tx = Some(seen_tx);
        follower
            .logs(id, true, |d| {
                log.extend_from_slice(d);
                if log.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    if let Some(t) = seen_tx.take() {
                        let _ = t.send(());
                    }
                }
            })
            .await
            .unwrap()
    });
    tokio::select! {
        end = &mut follow => panic!("job {id} ended before {needle:?} showed: {end:?}"),
        _ = seen => {}
    }
}

/// Runs a job with one test case that passes; asserts that it Completes
/// with the case passed (showing the job's record and log if not) and
/// returns the log's exact bytes.
pub async fn a_passing_job(lab: &Lab, c: &mut Client, name: &str) -> Vec<u8> {
    let id = submit(
        c,
        &lab.job(name, "medium", &["lava-test-case t --shell true"]),
    )
    .await;
    let (end, log) = wait_job_bytes(c, id).await;
    if end["health"] != "Complete" {
        let j = job(c, id).await;
        panic!("{name} ended {end}: {j}\n{}", String::from_utf8_lossy(&log));
    }
    let r = c.call(RequestBody::Results { job: id }).await.unwrap();
    assert_eq!(r["results"][0]["result"], "pass", "{r}");
    log
}

pub async fn job(c: &mut Client, id: u64) -> Value {
    c.call(RequestBody::Job { job: id }).await.unwrap()
}

pub async fn boards(c: &mut Client) -> Vec<Value> {
    c.call(RequestBody::Boards).await.unwrap()["boards"]
        .as_array()
        .unwrap()
        .clone()
}

/// Pins a job to the boards carrying `tag`.
pub fn tagged(job: String, tag: &str) -> String {
    job.replacen("priority:", &format!("tags: [{tag}]\npriority:"), 1)
}

/// The boards the simulator has powered on.
pub async fn powered(lab: &Lab) -> Vec<String> {
    let r = labd::sim_control::control(&lab.sim_control, &labd::sim_control::ControlRequest::List)
        .await
        .unwrap();
    r.powered.unwrap()
}

/// One board's entry from `boards`.
pub async fn board(c: &mut Client, name: &str) -> Value {
    boards(c)
        .await
        .into_iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no board {name}"))
}

/// The runtime each test runs on: one thread, like a busy client.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Sets a board's health: `maintenance` or `online`.
pub async fn set_health(
    c: &mut Client,
    board: &str,
    health: &str,
    reason: Option<&str>,
) -> Result<Value, labd::client::ClientError> {
    c.call(RequestBody::BoardHealth {
        board: board.into(),
        health: health.into(),
        reason: reason.map(Into::into),
    })
    .await
}

/// Every job, newest first.
pub async fn all_jobs(c: &mut Client) -> Vec<Value> {
    c.call(RequestBody::Jobs {
        state: None,
        board: None,
        device_type: None,
        limit: None,
        cursor: None,
    })
    .await
    .unwrap()["jobs"]
        .as_array()
        .unwrap()
        .clone()
}

/// A `results` answer's test cases as (name, result), in order.
pub fn case_results(r: &Value) -> Vec<(String, String)> {
    r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Job `id`'s test cases as (name, result), in order.
pub async fn results(c: &mut Client, id: u64) -> Vec<(String, String)> {
    case_results(&c.call(RequestBody::Results { job: id }).await.unwrap())
}

/// A raw protocol session on the socket: one request line out, one answer
/// line back.
pub struct Raw {
    pub w: std::os::unix::net::UnixStream,
    pub r: BufReader<std::os::unix::net::UnixStream>,
}

impl Raw {
    /// Connects and says hello.
    pub fn connect(path: &std::path::Path) -> Raw {
        let w = std::os::unix::net::UnixStream::connect(path).unwrap();
        let r = BufReader::new(w.try_clone().unwrap());
        let mut raw = Raw { w, r };
        let hello = raw.ask(br#"{"id":1,"method":"hello","params":{"version":1}}"#);
        assert_eq!(hello["ok"]["version"], 1, "{hello}");
        raw
    }

    pub fn ask(&mut self, line: &[u8]) -> Value {
        use std::io::Write;
        self.w.write_all(line).unwrap();
        self.w.write_all(b"\n").unwrap();
        let mut answer = String::new();
        self.r.read_line(&mut answer).unwrap();
        serde_json::from_str(&answer).unwrap()
    }
}

/// A bare repository `dir/defs.git` of `files` (path, text), committed on
/// `main` and tagged `v1` (built in `dir/work` with the real git).
pub fn bare_definitions_repo(dir: &std::path::Path, files: &[(&str, String)]) -> PathBuf {
    let work = dir.join("work");
    for (path, text) in files {
        let file = work.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, text).unwrap();
    }
    let git = |cwd: &std::path::Path, args: &[&str]| {
        let st = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@localhost"])
            .args(args)
            .current_dir(cwd)
            .status()
            .unwrap();
        assert!(st.success(), "git {args:?}");
    };
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "defs"]);
    git(&work, &["tag", "v1"]);
    git(dir, &["init", "-q", "--bare", "defs.git"]);
    let bare = dir.join("defs.git");
    git(&work, &["push", "-q", bare.to_str().unwrap(), "main", "v1"]);
    bare
}

/// A TCP port of 127.0.0.1 nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
