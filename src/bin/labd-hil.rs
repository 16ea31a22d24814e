//! `labd-hil`: the hardware-in-the-loop rig's runner (`hil/run` calls it).
//!
//! It starts a real labd on the rig's lab (QEMU + U-Boot virtual boards, or
//! a lab of real boards), or uses a running one, submits the suite of jobs
//! in `hil/jobs/`, follows every job to its end, and prints one table:
//! each job's end, its test results and its time per phase. Each job file
//! says what must happen in comment lines, so a failure on purpose is a
//! pass of the rig:
//!
//! ```text
//! # expect-health: Complete | Incomplete
//! # expect-error-class: Job            (Infrastructure, Test, ...)
//! # expect-error: deploy kernel        (a piece of the error message)
//! # expect-result: suite/case=pass     (one line per test case)
//! # expect-log: Linux version          (text the console log must hold)
//! ```
//!
//! `@ARTIFACTS@` in a job is replaced by where `hil/setup` put the guest
//! artifacts (a `file://` URL, or `--artifacts URL`). The exit status is 0
//! only if every job ended as its file expects.

use anyhow::{bail, Context, Result};
use clap::Parser;
use labd::client::Client;
use labd::protocol::RequestBody;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "labd-hil",
    about = "Run the hardware-in-the-loop suite through labd"
)]
struct Args {
    /// The lab to start labd on; `@RUN@`, `@CACHE@` and `@DEVICE_TYPES@` are filled in.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/hil/lab.toml"))]
    lab: PathBuf,
    /// Use at most N boards of each device type.
    #[arg(long)]
    boards: Option<usize>,
    /// Job files to run (default: every hil/jobs/*.yaml).
    #[arg(long, num_args = 1..)]
    jobs: Vec<PathBuf>,
    /// Use a running labd at this socket instead of starting one.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Where hil/setup put the guest artifacts.
    #[arg(long, env = "HIL_CACHE")]
    cache: Option<PathBuf>,
    /// Base URL of the artifacts (default: file:// of the cache).
    #[arg(long)]
    artifacts: Option<String>,
    /// The run directory (sockets, labd's state, logs); default a new temp dir.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Device types for the started labd.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/device-types"))]
    device_types: PathBuf,
    /// The whole suite must end within this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_secs: u64,
    /// Submit the suite this many times.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
}

/// What a job file says must happen.
#[derive(Debug, Default)]
struct Expect {
    health: Option<String>,
    error_class: Option<String>,
    error: Option<String>,
    results: Vec<(String, String)>,
    log: Vec<String>,
}

fn expectations(text: &str) -> Expect {
    let mut e = Expect::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# expect-") else {
            continue;
        };
        let Some((key, value)) = rest.split_once(':') else {
            continue;
        };
        let value = value.trim().to_owned();
        match key {
            "health" => e.health = Some(value),
            "error-class" => e.error_class = Some(value),
            "error" => e.error = Some(value),
            "result" => {
                if let Some((case, r)) = value.rsplit_once('=') {
                    e.results.push((case.to_owned(), r.to_owned()));
                }
            }
            "log" => e.log.push(value),
            _ => {}
        }
    }
    e
}

struct Outcome {
    id: u64,
    file: String,
    job: Value,
    results: Vec<Value>,
    log: Vec<u8>,
    problems: Vec<String>,
}

fn check(expect: &Expect, job: &Value, results: &[Value], log: &[u8]) -> Vec<String> {
    let mut p = Vec::new();
    let s = |k: &str| job.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    if let Some(h) = &expect.health {
        if s("health") != *h {
            p.push(format!(
                "health {} (expected {h}): {}",
                s("health"),
                s("error")
            ));
        }
    }
    if let Some(c) = &expect.error_class {
        if s("error_class") != *c {
            p.push(format!("error class `{}` (expected {c})", s("error_class")));
        }
    }
    if let Some(e) = &expect.error {
        if !s("error").contains(e.as_str()) {
            p.push(format!("error `{}` does not mention `{e}`", s("error")));
        }
    }
    for (case, want) in &expect.results {
        let got = results.iter().find(|r| {
            let name = format!(
                "{}/{}",
                r.get("suite").and_then(Value::as_str).unwrap_or(""),
                r.get("name").and_then(Value::as_str).unwrap_or("")
            );
            name == *case
        });
        match got.and_then(|r| r.get("result")).and_then(Value::as_str) {
            Some(r) if r == want => {}
            Some(r) => p.push(format!("{case}: {r} (expected {want})")),
            None => p.push(format!("{case}: no result (expected {want})")),
        }
    }
    let text = String::from_utf8_lossy(log);
    for needle in &expect.log {
        if !text.contains(needle.as_str()) {
            p.push(format!("the console log lacks `{needle}`"));
        }
    }
    p
}

/// LAVA's usual test-definitions repository, in small: Linaro's smoke
/// definition (from `../shared`, LAVA reference data) with labd's own
/// stand-ins for the scripts it calls, as a bare repository at
/// `<run>/repos/test-definitions.git` with a tag `v1`. The rig's `from: git`
/// jobs name it as `file://@REPOS@/test-definitions.git`.
fn make_repos(run: &Path) -> Result<PathBuf> {
    let repos = run.join("repos");
    let bare = repos.join("test-definitions.git");
    if bare.exists() {
        return Ok(repos);
    }
    let work = tempfile::tempdir()?;
    let w = work.path();
    let smoke = w.join("automated/linux/smoke");
    let utils = w.join("automated/utils");
    std::fs::create_dir_all(&smoke)?;
    std::fs::create_dir_all(&utils)?;
    let linaro = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/lava/test-definitions/linaro-smoke.yaml");
    let yaml = std::fs::read_to_string(&linaro).unwrap_or_else(|_| {
        "metadata:\n  format: Lava-Test Test Definition 1.0\n  name: smoke-tests-basic\nparams:\n  SKIP_INSTALL: \"False\"\n  TESTS: \"pwd, uname -a\"\nrun:\n  steps:\n    - cd ./automated/linux/smoke/\n    - ./smoke.sh -s \"${SKIP_INSTALL}\" -t \"${TESTS}\"\n    - ../../utils/send-to-lava.sh ./output/result.txt\n".into()
    });
    std::fs::write(smoke.join("smoke.yaml"), yaml)?;
    let exec = |path: &Path, text: &str| -> Result<()> {
        std::fs::write(path, text)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
        Ok(())
    };
    exec(
        &smoke.join("smoke.sh"),
        "#!/bin/sh\n# labd's stand-in for Linaro's smoke.sh: the same options, the same output file.\nSKIP_INSTALL=false\nTESTS=pwd\nwhile getopts s:t: o; do\n    case \"$o\" in\n        s) SKIP_INSTALL=\"$OPTARG\" ;;\n        t) TESTS=\"$OPTARG\" ;;\n    esac\ndone\nmkdir -p output\n: > output/result.txt\necho \"$TESTS\" | tr ',' '\\n' | while read -r t; do\n    [ -n \"$t\" ] || continue\n    name=${t%% *}\n    if sh -c \"$t\"; then r=pass; else r=fail; fi\n    echo \"$name $r\" >> output/result.txt\ndone\necho \"tests-run pass $(wc -l < output/result.txt) tests\" >> output/result.txt\necho \"skip install: $SKIP_INSTALL\"\n",
    )?;
    exec(
        &utils.join("send-to-lava.sh"),
        "#!/bin/sh\n# labd's stand-in for Linaro's send-to-lava.sh: each result line as a test case.\nwhile read -r name result measurement units; do\n    [ -n \"$name\" ] || continue\n    if [ -n \"$measurement\" ]; then\n        lava-test-case \"$name\" --result \"$result\" --measurement \"$measurement\" --units \"$units\"\n    else\n        lava-test-case \"$name\" --result \"$result\"\n    fi\ndone < \"$1\"\n",
    )?;
    std::fs::create_dir_all(&repos)?;
    let git = |dir: &Path, args: &[&str]| -> Result<()> {
        let st = std::process::Command::new("git")
            .args([
                "-c",
                "user.name=labd-hil",
                "-c",
                "user.email=labd-hil@localhost",
            ])
            .args(args)
            .current_dir(dir)
            .status()
            .context("running git (install the Debian package git)")?;
        if !st.success() {
            bail!("git {args:?} failed in {}", dir.display());
        }
        Ok(())
    };
    git(&repos, &["init", "-q", "--bare", "test-definitions.git"])?;
    git(w, &["init", "-q", "-b", "main"])?;
    git(w, &["add", "."])?;
    git(w, &["commit", "-q", "-m", "smoke"])?;
    git(w, &["tag", "v1"])?;
    let dest = bare.display().to_string();
    git(w, &["push", "-q", &dest, "main", "v1"])?;
    Ok(repos)
}

/// The lab for this run: placeholders filled in, at most `per_type` boards
/// of each device type.
fn prepare_lab(args: &Args, run: &Path, cache: &Path) -> Result<PathBuf> {
    let text = std::fs::read_to_string(&args.lab)
        .with_context(|| format!("reading {}", args.lab.display()))?;
    let text = text
        .replace("@RUN@", &run.display().to_string())
        .replace("@CACHE@", &cache.display().to_string())
        .replace("@DEVICE_TYPES@", &args.device_types.display().to_string());
    let text = match args.boards {
        None => text,
        Some(n) => {
            let mut v: toml::Table =
                toml::from_str(&text).with_context(|| format!("parsing {}", args.lab.display()))?;
            if let Some(toml::Value::Array(boards)) = v.get_mut("boards") {
                let mut per_type = std::collections::HashMap::<String, usize>::new();
                boards.retain(|b| {
                    let dt = b
                        .get("device_type")
                        .and_then(toml::Value::as_str)
                        .unwrap_or("")
                        .to_owned();
                    let c = per_type.entry(dt).or_default();
                    *c += 1;
                    *c <= n
                });
            }
            toml::to_string(&v)?
        }
    };
    let out = run.join("lab.toml");
    std::fs::write(&out, text)?;
    Ok(out)
}

/// Starts labd and waits for its READY=1 (sd_notify), or its exit.
async fn start_labd(config: &Path, run: &Path) -> Result<tokio::process::Child> {
    let exe = std::env::current_exe()?;
    let labd = exe
        .parent()
        .map(|d| d.join("labd"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("labd"));
    let notify = run.join("notify.sock");
    let _ = std::fs::remove_file(&notify);
    let sock = tokio::net::UnixDatagram::bind(&notify)?;
    let log = std::fs::File::create(run.join("labd.log"))?;
    let mut child = tokio::process::Command::new(&labd)
        .arg("--config")
        .arg(config)
        .env("NOTIFY_SOCKET", &notify)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", labd.display()))?;
    let mut buf = [0u8; 512];
    let ready = async {
        loop {
            let n = sock.recv(&mut buf).await?;
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                return anyhow::Ok(());
            }
        }
    };
    tokio::select! {
        r = tokio::time::timeout(Duration::from_secs(60), ready) => {
            r.context("labd did not become ready within 60 s")??;
        }
        status = child.wait() => {
            let log = std::fs::read_to_string(run.join("labd.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            bail!(
                "labd exited ({}) before it was ready:\n{}",
                status?,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
    Ok(child)
}

fn phase_ms(job: &Value, phases: &[&str]) -> Option<u64> {
    let timing = job.get("timing")?.as_array()?;
    let ms: u64 = timing
        .iter()
        .filter(|t| {
            t.get("phase")
                .and_then(Value::as_str)
                .is_some_and(|p| phases.contains(&p))
        })
        .filter_map(|t| t.get("ms").and_then(Value::as_u64))
        .sum();
    Some(ms)
}

fn median(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// What labd used, read from /proc while it still runs.
struct Usage {
    /// CPU seconds (user + system) of the whole process.
    cpu: f64,
    /// CPU seconds of its TFTP server's threads (labd-tftp-N and async-tftp's
    /// async-io reactor): the part a LAVA worker spends in its separate
    /// TFTP daemon, outside lava-run.
    tftp_cpu: f64,
    /// Peak resident KiB.
    hwm: u64,
}

fn process_usage(pid: u32) -> Option<Usage> {
    use labd::metrics::stat_cpu;
    let (_, cpu) = stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    let tftp_cpu = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter_map(|stat| {
            let (comm, cpu) = stat_cpu(&stat)?;
            (comm.starts_with("labd-tftp") || comm == "async-io").then_some(cpu)
        })
        .sum();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Some(Usage { cpu, tftp_cpu, hwm })
}

fn secs(ms: Option<u64>) -> String {
    match ms {
        Some(0) | None => "-".into(),
        Some(ms) => format!("{:.2}", ms as f64 / 1000.0),
    }
}

fn print_table(outcomes: &[Outcome]) {
    println!(
        "{:>4}  {:<26} {:<16} {:<11} {:<15} {:>9}  {:>6} {:>6} {:>7} {:>7} {:>7} {:>6} {:>7}  VERDICT",
        "JOB",
        "FILE",
        "BOARD",
        "HEALTH",
        "ERROR CLASS",
        "RESULTS",
        "DEPLOY",
        "WAIT",
        "TO-BL",
        "BL+TFTP",
        "KERNEL",
        "TESTS",
        "TOTAL"
    );
    for o in outcomes {
        let s = |k: &str| {
            o.job
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("-")
                .to_owned()
        };
        let pass = o
            .results
            .iter()
            .filter(|r| r.get("result").and_then(Value::as_str) == Some("pass"))
            .count();
        // The whole time on the board: every phase it recorded.
        let total = o.job.get("timing").and_then(Value::as_array).map(|t| {
            t.iter()
                .filter_map(|p| p.get("ms").and_then(Value::as_u64))
                .sum::<u64>()
        });
        println!(
            "{:>4}  {:<26} {:<16} {:<11} {:<15} {:>9}  {:>6} {:>6} {:>7} {:>7} {:>7} {:>6} {:>7}  {}",
            o.id,
            o.file,
            s("board"),
            s("health"),
            s("error_class"),
            format!("{pass}/{} pass", o.results.len()),
            secs(phase_ms(&o.job, &["Deploying"])),
            secs(phase_ms(&o.job, &["WaitingToBoot"])),
            secs(phase_ms(&o.job, &["PoweringOn", "Bootloader"])),
            secs(phase_ms(&o.job, &["BootloaderCommands"])),
            secs(phase_ms(&o.job, &["Kernel", "Login"])),
            secs(phase_ms(&o.job, &["Testing"])),
            secs(total),
            if o.problems.is_empty() {
                "as expected"
            } else {
                "UNEXPECTED"
            }
        );
    }
    println!(
        "(seconds; WAIT: for a boot slot, TO-BL: power-on to the bootloader prompt, BL+TFTP: bootloader commands with the TFTP loads, KERNEL: kernel start to shell)"
    );
}

async fn run(args: Args) -> Result<bool> {
    let started = Instant::now();
    let cache = args.cache.clone().unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
            .join(".cache/labd-hil")
    });
    let artifacts = args
        .artifacts
        .clone()
        .unwrap_or_else(|| format!("file://{}", cache.display()));
    let mut jobs = args.jobs.clone();
    if jobs.is_empty() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("hil/jobs");
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "yaml") {
                jobs.push(p);
            }
        }
        jobs.sort();
    }
    if args.socket.is_none() && args.artifacts.is_none() {
        for f in [
            "Image-arm64",
            "bzImage-amd64",
            "initramfs-arm64.cpio.gz",
            "initramfs-amd64.cpio.gz",
            "initramfs-nfs-arm64.cpio.gz",
            "rootfs-nfs-arm64.tar.gz",
        ] {
            if !cache.join(f).exists() {
                bail!(
                    "{} is missing: run hil/setup first",
                    cache.join(f).display()
                );
            }
        }
    }

    let run_dir = match &args.run_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => tempfile::Builder::new()
            .prefix("labd-hil-")
            .tempdir()?
            .keep(),
    };
    let repos = make_repos(&run_dir)?;
    let (socket, mut labd) = match &args.socket {
        Some(s) => (s.clone(), None),
        None => {
            if !nix::unistd::geteuid().is_root() {
                eprintln!("labd-hil: note: U-Boot talks TFTP to port 69 only; without root labd may not bind it");
            }
            let config = prepare_lab(&args, &run_dir, &cache)?;
            println!(
                "labd-hil: starting labd on {} (run dir {})",
                config.display(),
                run_dir.display()
            );
            let child = start_labd(&config, &run_dir).await?;
            (run_dir.join("labd.sock"), Some(child))
        }
    };

    let mut client = Client::connect(&socket).await?;
    let mut submitted = Vec::new();
    for round in 0..args.repeat {
        for path in &jobs {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let definition = text
                .replace("@ARTIFACTS@", &artifacts)
                .replace("@REPOS@", &repos.display().to_string());
            let id = client
                .submit(&definition, &path.display().to_string())
                .await
                .with_context(|| format!("submitting {}", path.display()))?;
            println!("labd-hil: {name} (round {}) is job {id}", round + 1);
            submitted.push((id, name, expectations(&text)));
        }
    }

    // Every job followed on a connection of its own, so all run at once.
    let mut follows = tokio::task::JoinSet::new();
    for (id, _, _) in &submitted {
        let (id, socket) = (*id, socket.clone());
        follows.spawn(async move {
            let mut c = Client::connect(&socket).await?;
            let mut log = Vec::new();
            c.logs(id, true, |d| log.extend_from_slice(d)).await?;
            anyhow::Ok((id, log))
        });
    }
    let mut logs = std::collections::HashMap::new();
    // labd's usage once the first job has ended: what the jobs after it
    // cost on top is the steady per-job figure, without start-up and the
    // first downloads.
    let labd_pid = labd.as_ref().and_then(|c| c.id());
    let first_id = submitted.first().map(|s| s.0);
    let mut after_first = None;
    let all = async {
        while let Some(r) = follows.join_next().await {
            let (id, log) = r??;
            if Some(id) == first_id {
                after_first = labd_pid.and_then(process_usage);
            }
            logs.insert(id, log);
        }
        anyhow::Ok(())
    };
    let waited = tokio::time::timeout(Duration::from_secs(args.timeout_secs), all).await;

    let mut outcomes = Vec::new();
    for (id, file, expect) in &submitted {
        let job = client.call(RequestBody::Job { job: *id }).await?;
        let results = client
            .call(RequestBody::Results { job: *id })
            .await?
            .get("results")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let log = logs.remove(id).unwrap_or_default();
        let mut problems = check(expect, &job, &results, &log);
        if job.get("state").and_then(Value::as_str) != Some("Finished") {
            problems.insert(0, "did not finish in time".into());
        }
        outcomes.push(Outcome {
            id: *id,
            file: file.clone(),
            job,
            results,
            log,
            problems,
        });
    }
    print_table(&outcomes);
    // What labd did for a job's `from: git` definitions: the checkouts
    // (fetched, or from the git cache) and the overlay it built.
    for o in &outcomes {
        for e in o.job["events"].as_array().into_iter().flatten() {
            if matches!(e["kind"].as_str(), Some("git" | "overlay")) {
                println!(
                    "labd-hil: job {} {}: {}",
                    o.id,
                    e["kind"].as_str().unwrap_or(""),
                    e["message"].as_str().unwrap_or("")
                );
            }
        }
    }
    let mut ok = true;
    for o in &outcomes {
        if o.problems.is_empty() {
            continue;
        }
        ok = false;
        println!("\njob {} ({}) did not end as expected:", o.id, o.file);
        for p in &o.problems {
            println!("  - {p}");
        }
        let text = String::from_utf8_lossy(&o.log);
        let tail: Vec<&str> = text.lines().rev().take(25).collect();
        println!("  last lines of its console log:");
        for l in tail.into_iter().rev() {
            println!("  | {l}");
        }
    }
    let summary: Vec<Value> = outcomes
        .iter()
        .map(|o| {
            serde_json::json!({
                "id": o.id, "file": o.file, "job": o.job, "results": o.results,
                "problems": o.problems,
            })
        })
        .collect();
    std::fs::write(
        run_dir.join("results.json"),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    if waited.is_err() {
        ok = false;
        println!(
            "labd-hil: the suite did not end within {} s",
            args.timeout_secs
        );
    }
    let mut dispatcher = None;
    if let Some(child) = labd.as_mut() {
        if let Some(pid) = child.id() {
            dispatcher = process_usage(pid);
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
    if let Some(Usage { cpu, tftp_cpu, hwm }) = dispatcher {
        let n = outcomes.len().max(1) as f64;
        let own: Vec<u64> = outcomes
            .iter()
            .filter_map(|o| phase_ms(&o.job, &["Deploying", "PoweringOff"]))
            .collect();
        println!(
            "labd-hil: labd used {cpu:.2} CPU-s in all ({:.3} per job, start-up included; {:.3} per job without its TFTP server's {:.3}), peak RSS {:.1} MiB; its own time per job (deploy + power-off) median {}",
            cpu / n,
            (cpu - tftp_cpu) / n,
            tftp_cpu / n,
            hwm as f64 / 1024.0,
            secs(median(own)),
        );
        if let (Some(first), true) = (&after_first, outcomes.len() > 1) {
            let later = n - 1.0;
            println!(
                "labd-hil: after the first job, {:.3} CPU-s per job ({:.3} without its TFTP server's {:.3})",
                (cpu - first.cpu) / later,
                (cpu - tftp_cpu - first.cpu + first.tftp_cpu) / later,
                (tftp_cpu - first.tftp_cpu) / later,
            );
        }
        std::fs::write(
            run_dir.join("labd-usage.json"),
            serde_json::to_vec(
                &serde_json::json!({"cpu_s": cpu, "tftp_cpu_s": tftp_cpu, "jobs": outcomes.len(), "peak_rss_kib": hwm}),
            )?,
        )?;
    }
    println!(
        "labd-hil: {} jobs, {} as expected, in {:.1} s; details in {}",
        outcomes.len(),
        outcomes.iter().filter(|o| o.problems.is_empty()).count(),
        started.elapsed().as_secs_f64(),
        run_dir.join("results.json").display()
    );
    Ok(ok)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("labd-hil: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("labd-hil: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
