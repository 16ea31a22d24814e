//! The LAVA overlay end to end with real tools: built by `labd::overlay`,
//! unpacked by `gzip` and `cpio` (and `tar`), its `lava-test-runner` run
//! by busybox sh (with busybox's applets first on PATH, as on a board) and
//! by the system's /bin/sh (dash on Debian) in a temporary directory, and
//! what it prints read by labd's own signal parser. The ramdisk tests join
//! a real `cpio`/`gzip` initramfs with the overlay and unpack both again;
//! the U-Boot one has `mkimage` check the rewritten header.

mod common;

use labd::overlay::{
    append_to_ramdisk, Overlay, OverlayDefinition, OverlayJob, RamdiskFormat, SourceDir,
};
use labd::signals::{Signal, SignalParser};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn shared_testdef(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/lava/test-definitions")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the LAVA reference data lives in ../shared)",
            p.display()
        )
    })
}

fn have_archivers() -> bool {
    common::require_tool("gzip", "install the Debian package gzip")
        && common::require_tool(
            "cpio",
            "install the Debian package cpio; .ci/run and hil/setup do",
        )
}

/// A shell to run the overlay with.
struct Shell {
    /// What goes on the helpers' `#!` line and runs each run.sh.
    sh: PathBuf,
    /// Put first on PATH: busybox's applets, for the busybox runs.
    path_first: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

fn dash() -> Shell {
    Shell {
        sh: "/bin/sh".into(),
        path_first: None,
        _dir: None,
    }
}

/// busybox sh, with every busybox applet in a directory of links put
/// first on PATH, so the scripts meet busybox's `mkdir`, `date`, `cat`,
/// `setsid` as on a board. `None` when busybox is missing (and not CI).
fn busybox() -> Option<Shell> {
    if !common::require_tool(
        "busybox",
        "install the Debian package busybox-static; .ci/run and hil/setup do",
    ) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new("busybox")
        .arg("--install")
        .arg("-s")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success(), "busybox --install -s failed");
    Some(Shell {
        sh: dir.path().join("sh"),
        path_first: Some(dir.path().to_owned()),
        _dir: Some(dir),
    })
}

/// Unpacks a gzip'd cpio archive into `dir` with the real tools.
fn unpack_cpio_gz(archive: &[u8], dir: &Path) {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("gzip -dc | cpio -idm --quiet")
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(archive).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "gzip -dc | cpio -idm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Run {
    stdout: String,
    stderr: String,
    signals: Vec<Signal>,
}

impl Run {
    fn case(&self, id: &str) -> Option<(String, Option<String>, Option<String>)> {
        self.signals.iter().find_map(|s| match s {
            Signal::TestCase {
                id: i,
                result,
                measurement,
                units,
            } if i == id => Some((result.clone(), measurement.clone(), units.clone())),
            _ => None,
        })
    }

    fn result(&self, id: &str) -> String {
        self.case(id)
            .unwrap_or_else(|| panic!("no test case {id}\n{}", self.dump()))
            .0
    }

    fn dump(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr)
    }

    fn runs(&self, kind: fn(&Signal) -> Option<&String>) -> Vec<String> {
        self.signals.iter().filter_map(kind).cloned().collect()
    }

    fn started(&self) -> Vec<String> {
        self.runs(|s| match s {
            Signal::StartRun { name } => Some(name),
            _ => None,
        })
    }

    fn ended(&self) -> Vec<String> {
        self.runs(|s| match s {
            Signal::EndRun { name } => Some(name),
            _ => None,
        })
    }
}

/// Runs `lava-test-runner` for `stage` of the tree unpacked in `root`,
/// as the board's shell would, with `stdin` fed to it and kept open until
/// it ends (what a console does): a step that read it would hang or eat
/// it. Fails after 60 s.
fn run_stage(shell: &Shell, root: &Path, job: u64, stage: usize, stdin: &[u8]) -> Run {
    let lava = root.join(format!("lava-{job}"));
    let mut cmd = Command::new(&shell.sh);
    cmd.arg(lava.join("bin/lava-test-runner"))
        .arg(lava.join(stage.to_string()))
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(first) = &shell.path_first {
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", first.display()));
    }
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("lava-test-runner did not end within 60 s");
        }
    };
    drop(input);
    let mut parser = SignalParser::new();
    let mut signals = parser.feed(&out.stdout);
    signals.extend(parser.end());
    let run = Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        signals,
    };
    assert!(out.status.success(), "runner failed: {}", run.dump());
    assert!(
        run.stdout.ends_with("<LAVA_TEST_RUNNER EXIT>\n"),
        "no EXIT marker at the end: {}",
        run.dump()
    );
    assert_eq!(run.stdout.matches("<LAVA_TEST_RUNNER EXIT>").count(), 1);
    run
}

/// Builds, packs, unpacks with cpio, runs stage 0.
fn build_and_run(shell: &Shell, mut job: OverlayJob, stdin: &[u8]) -> (Run, tempfile::TempDir) {
    job.shell = shell.sh.to_str().unwrap().to_owned();
    let overlay = Overlay::build(&job).unwrap();
    let root = tempfile::tempdir().unwrap();
    unpack_cpio_gz(&overlay.cpio_gz().unwrap(), root.path());
    let run = run_stage(shell, root.path(), job.job_id, 0, stdin);
    (run, root)
}

fn inline(name: &str, yaml: &str, params: &[(&str, &str)]) -> OverlayDefinition {
    OverlayDefinition::from_yaml(
        name,
        None,
        yaml,
        params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
    .unwrap()
}

/// The helpers' every form, parameters, a multi-line step.
const CHECKS: &str = r#"
metadata:
  name: checks
params:
  GREETING: hello
  OVERRIDDEN: from-the-definition
run:
  steps:
    - lava-test-case result-pass --result pass
    - lava-test-case result-skip --result SKIP
    - lava-test-case boot-time --result pass --measurement 3.25 --units seconds
    - lava-test-case shell-false --shell false
    - lava-test-case shell-args --shell test "$GREETING" = hello
    - lava-test-case shell-line --shell 'cd / && test "$(pwd)" = /'
    - lava-test-case param-overridden --shell test "$OVERRIDDEN" = from-the-job
    - lava-test-case exported --shell sh -c 'test "$GREETING" = hello'
    - lava-test-case testrun-id --shell test "$TESTRUN_ID" = 1_checks
    - lava-test-case job-id --shell test "$LAVA_JOB_ID" = 7
    - lava-test-case in-its-directory --shell test -f testdef.yaml -a -f uuid
    - lava-test-case positional --shell "set -- a b; test $2 = b"
    - lava-test-set start first-set
    - lava-test-case in-set --result pass
    - lava-test-set stop
    - lava-test-reference a-reference --result pass --reference https://example.org/r
    - lava-test-event something-happened
    - lava-test-case attach-fails --shell '! lava-test-case-attach x /etc/hostname < /dev/null'
    - lava-background-process-start bg --cmd "sleep 300; true"
    - lava-test-case bg-pid --shell test -s "$LAVA_RESULT_DIR/results/bg/pid"
    - lava-background-process-stop bg
    - |
      for n in 1 2; do
        lava-test-case "loop-$n" --result pass
      done
    - lava-test-case result-file --shell test "$(cat "$LAVA_RESULT_DIR/results/result-pass/result")" = pass
"#;

fn the_smoke_and_checks(shell: &Shell) {
    let job = OverlayJob::new(
        7,
        vec![vec![
            inline(
                "smoke-tests",
                &shared_testdef("smoke-tests-basic.yaml"),
                &[],
            ),
            inline("checks", CHECKS, &[("OVERRIDDEN", "from-the-job")]),
        ]],
    );
    let (run, _root) = build_and_run(shell, job, b"");
    // The smoke definition: every case reported (pwd and uname exist
    // here; ifconfig, lscpu or lsb_release may not).
    assert_eq!(run.result("linux-posix-pwd"), "pass", "{}", run.dump());
    assert_eq!(run.result("linux-posix-uname"), "pass");
    for id in [
        "linux-posix-vmstat",
        "linux-posix-ifconfig",
        "linux-posix-lscpu",
        "linux-posix-lsb_release",
    ] {
        assert!(["pass", "fail"].contains(&run.result(id).as_str()));
    }
    assert_eq!(run.started(), vec!["0_smoke-tests", "1_checks"]);
    assert_eq!(
        run.ended(),
        vec!["0_smoke-tests", "1_checks"],
        "{}",
        run.dump()
    );
    // STARTRUN's second word is the uuid, as in LAVA.
    assert!(run.stdout.contains("<LAVA_SIGNAL_STARTRUN 1_checks 7_1>\n"));

    for (id, want) in [
        ("result-pass", "pass"),
        ("result-skip", "skip"),
        ("shell-false", "fail"),
        ("shell-args", "pass"),
        ("shell-line", "pass"),
        ("param-overridden", "pass"),
        ("exported", "pass"),
        ("testrun-id", "pass"),
        ("job-id", "pass"),
        ("in-its-directory", "pass"),
        ("positional", "pass"),
        ("in-set", "pass"),
        ("attach-fails", "pass"),
        ("bg-pid", "pass"),
        ("loop-1", "pass"),
        ("loop-2", "pass"),
        ("result-file", "pass"),
    ] {
        assert_eq!(run.result(id), want, "{id}\n{}", run.dump());
    }
    assert_eq!(
        run.case("boot-time"),
        Some(("pass".into(), Some("3.25".into()), Some("seconds".into())))
    );
    // LAVA's exact lines, field order included.
    assert!(run.stdout.contains(
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=boot-time RESULT=pass UNITS=seconds MEASUREMENT=3.25>\n"
    ));
    assert!(run.stdout.contains("<LAVA_SIGNAL_STARTTC shell-args>\n"));
    assert!(run.stdout.contains("<LAVA_SIGNAL_ENDTC shell-args>\n"));
    let set_at = run
        .signals
        .iter()
        .position(|s| {
            *s == Signal::TestSetStart {
                name: "first-set".into(),
            }
        })
        .expect("TESTSET START");
    assert!(matches!(&run.signals[set_at + 1], Signal::TestCase { id, .. } if id == "in-set"));
    assert_eq!(run.signals[set_at + 2], Signal::TestSetStop);
    assert!(run.signals.contains(&Signal::TestReference {
        id: "a-reference".into(),
        result: "pass".into(),
        reference: "https://example.org/r".into()
    }));
    assert!(run.signals.contains(&Signal::Other {
        kind: "TESTEVENT".into(),
        body: "something-happened".into()
    }));
    assert!(run
        .stderr
        .contains("lava-test-case-attach: not supported by labd"));
    // The parser found nothing it could not read.
    assert!(
        !run.signals
            .iter()
            .any(|s| matches!(s, Signal::Malformed { .. })),
        "{:?}",
        run.signals
    );
}

#[test]
fn smoke_and_helpers_under_dash() {
    if !have_archivers() {
        return;
    }
    the_smoke_and_checks(&dash());
}

#[test]
fn smoke_and_helpers_under_busybox_sh() {
    if !have_archivers() {
        return;
    }
    let Some(bb) = busybox() else { return };
    the_smoke_and_checks(&bb);
}

/// Values no shell may run, in a definition's defaults and the job's
/// parameters; a step writes each to a file, which must hold it exactly.
fn hostile(shell: &Shell) {
    let canary = tempfile::tempdir().unwrap();
    let flag = canary.path().join("ran");
    let f = flag.display();
    let values = [
        format!("$(touch {f})"),
        format!("`touch {f}`"),
        format!("'; touch {f}; echo '"),
        format!("a\nb'\n$(touch {f})\n'"),
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=forged RESULT=pass>".to_owned(),
        "\\'\"${HOME}*?~#;&|<>\t".to_owned(),
        String::new(),
    ];
    let mut yaml = String::from("metadata:\n  name: hostile\nparams:\n");
    // The definition's own default, hostile too, single-quoted in YAML.
    yaml.push_str(&format!(
        "  DEFAULT_ONLY: '$(touch {f}) it''s'\nrun:\n  steps:\n"
    ));
    yaml.push_str("    - printf %s \"$DEFAULT_ONLY\" > default.out\n");
    let mut params = Vec::new();
    for (i, v) in values.iter().enumerate() {
        params.push((format!("V{i}"), v.clone()));
        yaml.push_str(&format!("    - printf %s \"$V{i}\" > v{i}.out\n"));
    }
    yaml.push_str("    - lava-test-case hostile-done --result pass\n");
    let def = OverlayDefinition::from_yaml("hostile", None, &yaml, params).unwrap();
    let (run, root) = build_and_run(shell, OverlayJob::new(9, vec![vec![def]]), b"");
    assert_eq!(run.result("hostile-done"), "pass", "{}", run.dump());
    assert!(!flag.exists(), "a parameter's value ran: {}", run.dump());
    let dir = root.path().join("lava-9/0/tests/0_hostile");
    for (i, v) in values.iter().enumerate() {
        let got = std::fs::read_to_string(dir.join(format!("v{i}.out"))).unwrap();
        assert_eq!(&got, v, "V{i}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("default.out")).unwrap(),
        format!("$(touch {f}) it's")
    );
    // Only what a step printed could forge a case, and none did.
    assert!(run.case("forged").is_none());
}

#[test]
fn hostile_parameters_stay_data_under_dash() {
    if !have_archivers() {
        return;
    }
    hostile(&dash());
}

#[test]
fn hostile_parameters_stay_data_under_busybox_sh() {
    if !have_archivers() {
        return;
    }
    let Some(bb) = busybox() else { return };
    hostile(&bb);
}

/// A step that reads stdin gets end-of-file, never the runner's list nor
/// what is typed on the console after the runner; a failing step ends its
/// own definition only (`sh -e`, as in LAVA); a failed install skips one.
fn isolation(shell: &Shell) {
    let reader = inline(
        "reader",
        r#"
run:
  steps:
    - read -r line || true
    - lava-test-case read-got-nothing --shell test -z "$line"
    - cat > /dev/null
    - lava-test-case after-cat --result pass
"#,
        &[],
    );
    let failing = inline(
        "failing",
        "run:\n  steps:\n    - lava-test-case before-false --result pass\n    - false\n    - lava-test-case after-false --result pass\n",
        &[],
    );
    let exiting = inline("exiting", "run:\n  steps:\n    - exit 3\n", &[]);
    let broken_install = inline(
        "broken-install",
        "install:\n  steps:\n    - echo installing\n    - false\nrun:\n  steps:\n    - lava-test-case never --result pass\n",
        &[],
    );
    let last = inline(
        "last",
        "install:\n  steps:\n    - touch installed\nrun:\n  steps:\n    - lava-test-case install-ran --shell test -f installed\n",
        &[],
    );
    let job = OverlayJob::new(
        11,
        vec![vec![reader, failing, exiting, broken_install, last]],
    );
    // What a console would hold after the runner's line: a step that read
    // stdin would take it and run it, or hang waiting for more.
    let typed = b"lava-test-case stolen --result fail\nexit 0\n";
    let (run, _root) = build_and_run(shell, job, typed);
    assert_eq!(run.result("read-got-nothing"), "pass", "{}", run.dump());
    assert_eq!(run.result("after-cat"), "pass");
    assert!(run.case("stolen").is_none());
    assert_eq!(run.result("before-false"), "pass");
    assert!(run.case("after-false").is_none());
    assert!(run.case("never").is_none());
    assert_eq!(run.result("install-ran"), "pass", "{}", run.dump());
    assert_eq!(
        run.started(),
        vec!["0_reader", "1_failing", "2_exiting", "4_last"]
    );
    assert_eq!(run.ended(), vec!["0_reader", "4_last"]);
    assert!(run.stdout.contains("<LAVA_TEST_RUNNER INSTALL_FAIL>\n"));
    assert!(run
        .stdout
        .contains("lava-test-runner: 2_exiting ended with status 3"));
}

#[test]
fn steps_are_isolated_under_dash() {
    if !have_archivers() {
        return;
    }
    isolation(&dash());
}

#[test]
fn steps_are_isolated_under_busybox_sh() {
    if !have_archivers() {
        return;
    }
    let Some(bb) = busybox() else { return };
    isolation(&bb);
}

/// A definition from a repository: its files, a deep path, a link; the
/// tar.gz for `transfer_overlay` unpacked by GNU tar and busybox tar holds
/// the same tree as the cpio; a second stage runs from its own directory.
#[test]
fn repository_files_and_the_tar_for_transfer_overlay() {
    if !have_archivers() || !common::require_tool("tar", "install the Debian package tar") {
        return;
    }
    let repo = tempfile::tempdir().unwrap();
    let deep = repo.path().join(format!(
        "automated/linux/{}/{}",
        "d".repeat(120),
        "e".repeat(120)
    ));
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("data.txt"), "deep\n").unwrap();
    std::fs::create_dir_all(repo.path().join("automated/utils")).unwrap();
    std::fs::write(
        repo.path().join("automated/utils/report.sh"),
        "#!/bin/sh\nlava-test-case \"$1\" --result pass\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        repo.path().join("automated/utils/report.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("utils/report.sh", repo.path().join("automated/report")).unwrap();
    let yaml = format!(
        "metadata:\n  name: repo\nrun:\n  steps:\n    - cd ./automated\n    - ./report repo-script\n    - lava-test-case deep-file --shell grep -q deep linux/{}/{}/data.txt\n",
        "d".repeat(120),
        "e".repeat(120)
    );
    std::fs::write(repo.path().join("repo.yaml"), &yaml).unwrap();
    let def = |name: &str| {
        OverlayDefinition::from_yaml(
            name,
            Some(SourceDir {
                path: repo.path().to_owned(),
                include_git: false,
            }),
            &yaml,
            vec![],
        )
        .unwrap()
    };
    let shell = dash();
    let job = OverlayJob::new(5, vec![vec![def("first")], vec![def("second")]]);
    let overlay = Overlay::build(&job).unwrap();

    let from_cpio = tempfile::tempdir().unwrap();
    unpack_cpio_gz(&overlay.cpio_gz().unwrap(), from_cpio.path());
    let tgz = overlay.tar_gz().unwrap();
    let mut tars = vec![vec!["tar"]];
    // A board's tar is busybox's: pax records and all.
    if common::require_tool(
        "busybox",
        "install the Debian package busybox-static; .ci/run and hil/setup do",
    ) {
        tars.push(vec!["busybox", "tar"]);
    }
    for tar in tars {
        let into = tempfile::tempdir().unwrap();
        let mut child = Command::new(tar[0])
            .args(&tar[1..])
            .args(["-xzf", "-", "-C"])
            .arg(into.path())
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&tgz).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{tar:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            listing(into.path()),
            listing(from_cpio.path()),
            "{tar:?} unpacked another tree than cpio"
        );
    }
    let link = from_cpio
        .path()
        .join("lava-5/0/tests/0_first/automated/report");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        PathBuf::from("utils/report.sh")
    );
    for stage in [0, 1] {
        let run = run_stage(&shell, from_cpio.path(), 5, stage, b"");
        let name = ["0_first", "1_second"][stage];
        assert_eq!(run.started(), vec![name]);
        assert_eq!(run.ended(), vec![name], "{}", run.dump());
        assert_eq!(run.result("repo-script"), "pass");
        assert_eq!(run.result("deep-file"), "pass");
    }
}

/// Every path under `root` with its type, permission bits and content
/// (a link's target), links not followed.
fn listing(root: &Path) -> std::collections::BTreeMap<String, (char, u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let mode = meta.permissions().mode() & 0o777;
            let entry = if meta.is_dir() {
                todo.push(path);
                ('d', mode, Vec::new())
            } else if meta.file_type().is_symlink() {
                let t = std::fs::read_link(&path).unwrap();
                ('l', 0, t.into_os_string().into_encoded_bytes())
            } else {
                ('f', mode, std::fs::read(&path).unwrap())
            };
            out.insert(rel, entry);
        }
    }
    out
}

/// Splits a stream of newc archives as the kernel reads it: each ends
/// after its TRAILER!!! entry, zeros between them are skipped.
fn split_archives(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let at = data
            .windows(11)
            .position(|w| w == b"TRAILER!!!\0")
            .expect("an archive without its trailer");
        let end = (at + 11).div_ceil(4) * 4;
        out.push(&data[..end.min(data.len())]);
        data = &data[end.min(data.len())..];
        let zeros = data.iter().take_while(|&&b| b == 0).count();
        data = &data[zeros..];
    }
    out
}

/// A user's ramdisk made with the real tools: `cpio -o -H newc` of a small
/// tree, gzip'd if asked.
fn user_ramdisk(gzip: bool) -> Vec<u8> {
    let tree = tempfile::tempdir().unwrap();
    std::fs::create_dir(tree.path().join("etc")).unwrap();
    std::fs::write(tree.path().join("etc/hello"), "from the user\n").unwrap();
    std::fs::write(tree.path().join("init"), "#!/bin/sh\n").unwrap();
    let cmd = if gzip {
        "find . | cpio -o -H newc --quiet | gzip -9"
    } else {
        "find . | cpio -o -H newc --quiet"
    };
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(tree.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{cmd}: {out:?}");
    out.stdout
}

/// Decompresses a (possibly gzip'd) joined ramdisk with `gzip -dc`, which
/// reads concatenated members, and unpacks each archive with `cpio -idm`.
fn unpack_joined(data: &[u8], gzipped: bool, into: &Path) {
    let plain = if gzipped {
        let mut child = Command::new("gzip")
            .arg("-dc")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let data = data.to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&data));
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        assert!(out.status.success(), "gzip -dc failed");
        out.stdout
    } else {
        // The user's plain cpio, then the gzip'd overlay: split at the
        // first trailer, as the kernel would.
        let at = data.windows(11).position(|w| w == b"TRAILER!!!\0").unwrap();
        let first = (at + 11).div_ceil(4) * 4;
        let rest = &data[first..];
        let rest = &rest[rest.iter().take_while(|&&b| b == 0).count()..];
        assert_eq!(&rest[..2], &[0x1f, 0x8b], "the overlay follows the ramdisk");
        assert_eq!(first % 4, 0);
        let mut plain = data[..first].to_vec();
        let mut d = flate2::read::GzDecoder::new(rest);
        std::io::Read::read_to_end(&mut d, &mut plain).unwrap();
        plain
    };
    let archives = split_archives(&plain);
    assert_eq!(archives.len(), 2, "the user's archive and the overlay");
    for a in archives {
        let mut child = Command::new("cpio")
            .args(["-idm", "--quiet"])
            .current_dir(into)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(a).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "cpio -idm: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn small_overlay(job: u64) -> Overlay {
    Overlay::build(&OverlayJob::new(
        job,
        vec![vec![inline(
            "smoke",
            &shared_testdef("smoke-tests-basic.yaml"),
            &[],
        )]],
    ))
    .unwrap()
}

fn assert_both_trees(root: &Path, job: u64) {
    assert_eq!(
        std::fs::read_to_string(root.join("etc/hello")).unwrap(),
        "from the user\n"
    );
    assert!(root.join("init").is_file());
    assert!(root
        .join(format!("lava-{job}/bin/lava-test-runner"))
        .is_file());
    assert!(root
        .join(format!("lava-{job}/0/tests/0_smoke/run.sh"))
        .is_file());
}

#[test]
fn overlay_appended_to_a_gzip_ramdisk() {
    if !have_archivers() {
        return;
    }
    let overlay = small_overlay(21);
    let rd = user_ramdisk(true);
    let joined = append_to_ramdisk(&rd, &overlay.cpio_gz().unwrap()).unwrap();
    assert_eq!(joined.format, RamdiskFormat::Gzip);
    assert!(!joined.uboot_header);
    // The user's bytes are untouched: appended to, never repacked.
    assert_eq!(&joined.bytes[..rd.len()], &rd[..]);
    let root = tempfile::tempdir().unwrap();
    unpack_joined(&joined.bytes, true, root.path());
    assert_both_trees(root.path(), 21);
}

#[test]
fn overlay_appended_to_a_plain_cpio_ramdisk() {
    if !have_archivers() {
        return;
    }
    let overlay = small_overlay(22);
    let rd = user_ramdisk(false);
    let joined = append_to_ramdisk(&rd, &overlay.cpio_gz().unwrap()).unwrap();
    assert_eq!(joined.format, RamdiskFormat::Cpio);
    let root = tempfile::tempdir().unwrap();
    unpack_joined(&joined.bytes, false, root.path());
    assert_both_trees(root.path(), 22);
}

#[test]
fn overlay_appended_inside_a_uboot_ramdisk_image() {
    if !have_archivers()
        || !common::require_tool(
            "mkimage",
            "install the Debian package u-boot-tools; .ci/run does",
        )
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rd = dir.path().join("rd.cpio.gz");
    std::fs::write(&rd, user_ramdisk(true)).unwrap();
    let uimg = dir.path().join("rd.uimg");
    let out = Command::new("mkimage")
        .args([
            "-A",
            "arm64",
            "-O",
            "linux",
            "-T",
            "ramdisk",
            "-C",
            "none",
            "-n",
            "user initrd",
            "-d",
        ])
        .arg(&rd)
        .arg(&uimg)
        .output()
        .unwrap();
    assert!(out.status.success(), "mkimage: {out:?}");
    let overlay = small_overlay(23);
    let joined =
        append_to_ramdisk(&std::fs::read(&uimg).unwrap(), &overlay.cpio_gz().unwrap()).unwrap();
    assert!(joined.uboot_header);
    assert_eq!(joined.format, RamdiskFormat::Gzip);
    let out_img = dir.path().join("joined.uimg");
    std::fs::write(&out_img, &joined.bytes).unwrap();
    // mkimage -l lists an image only when its magic, header CRC and data
    // CRC are right; otherwise it falls back to a "GP Header" dump (and
    // still exits 0), so its words are the check.
    let list = |img: &[u8]| {
        std::fs::write(&out_img, img).unwrap();
        let out = Command::new("mkimage")
            .arg("-l")
            .arg(&out_img)
            .output()
            .unwrap();
        assert!(out.status.success(), "mkimage -l: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = list(&joined.bytes);
    let data_len = joined.bytes.len() - 64;
    assert!(
        text.contains("Image Type:   AArch64 Linux RAMDisk Image")
            && text.contains("Image Name:   user initrd")
            && text.contains(&format!("Data Size:    {data_len} Bytes")),
        "{text}"
    );
    // It would say so if a CRC were wrong: one flipped data byte.
    let mut broken = joined.bytes.clone();
    *broken.last_mut().unwrap() ^= 0x55;
    assert!(
        !list(&broken).contains("Image Type:"),
        "mkimage -l took a bad data CRC"
    );
    // The data CRC once more, from another program: gzip's trailer holds
    // the CRC32 of what it compressed (little-endian).
    let mut child = Command::new("gzip")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = joined.bytes[64..].to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data));
    let gz = child.wait_with_output().unwrap().stdout;
    feeder.join().unwrap().unwrap();
    let n = gz.len();
    let gzip_crc = u32::from_le_bytes([gz[n - 8], gz[n - 7], gz[n - 6], gz[n - 5]]);
    let header_crc = u32::from_be_bytes([
        joined.bytes[24],
        joined.bytes[25],
        joined.bytes[26],
        joined.bytes[27],
    ]);
    assert_eq!(header_crc, gzip_crc);

    let root = tempfile::tempdir().unwrap();
    unpack_joined(&joined.bytes[64..], true, root.path());
    assert_both_trees(root.path(), 23);
}

/// Not a check: the time to build and pack an overlay for the Linaro smoke
/// definition, printed (`cargo test --test overlay build_time --
/// --nocapture`). `LABD_OVERLAY_REPO` names a checkout of Linaro's
/// test-definitions to measure with the real repository; without it, a
/// small stand-in is used.
#[test]
fn build_time_of_the_linaro_smoke_overlay() {
    let stand_in = tempfile::tempdir().unwrap();
    let repo = match std::env::var_os("LABD_OVERLAY_REPO") {
        Some(p) => PathBuf::from(p),
        None => {
            let smoke = stand_in.path().join("automated/linux/smoke");
            std::fs::create_dir_all(&smoke).unwrap();
            std::fs::write(smoke.join("smoke.sh"), "#!/bin/sh\n").unwrap();
            stand_in.path().to_owned()
        }
    };
    let yaml = shared_testdef("linaro-smoke.yaml");
    let start = Instant::now();
    let def = OverlayDefinition::from_yaml(
        "smoke-tests",
        Some(SourceDir {
            path: repo.clone(),
            include_git: false,
        }),
        &yaml,
        vec![("SKIP_INSTALL".into(), "True".into())],
    )
    .unwrap();
    let overlay = Overlay::build(&OverlayJob::new(1, vec![vec![def]])).unwrap();
    let built = start.elapsed();
    let gz = overlay.cpio_gz().unwrap();
    let total = start.elapsed();
    let t = Instant::now();
    let cpio = overlay.cpio().unwrap();
    let newc = t.elapsed();
    println!(
        "overlay of {}: {} entries, {} bytes of files, newc {} bytes, gzip'd {} bytes; \
         build {built:?}, newc {newc:?}, newc+gzip {:?}, in all {total:?}",
        repo.display(),
        overlay.entries().count(),
        overlay.file_bytes(),
        cpio.len(),
        gz.len(),
        total - built,
    );
}
