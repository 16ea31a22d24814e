//! The LAVA overlay as a board gets it: packed by labd, unpacked by the
//! real `cpio`, and run by busybox's and the system's `sh`, its output read
//! by labd's own signal parser.

mod common;

use common::*;
use labd::overlay::{self, Definition};
use labd::signals::{Signal, SignalParser};
use std::path::Path;
use std::process::{Command, Stdio};

fn tools() -> bool {
    require_tool("cpio", "install the Debian package cpio; .ci/run does")
        && require_tool("gzip", "install the Debian package gzip")
        && require_tool(
            "busybox",
            "install the Debian package busybox; .ci/run does",
        )
}

/// Unpacks a gzip'd cpio archive into `dir` with the real tools.
fn unpack(gz: &[u8], dir: &Path) {
    let mut gzip = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = gzip.stdin.take().unwrap();
    let data = gz.to_vec();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(&data).unwrap();
    });
    let st = Command::new("cpio")
        .args(["-idm", "--quiet"])
        .current_dir(dir)
        .stdin(gzip.stdout.take().unwrap())
        .status()
        .unwrap();
    feeder.join().unwrap();
    assert!(st.success());
    assert!(gzip.wait().unwrap().success());
}

/// A repository's checkout, as the git cache leaves it.
fn checkout(dir: &Path) {
    std::fs::create_dir_all(dir.join("automated/linux/smoke")).unwrap();
    std::fs::create_dir_all(dir.join("automated/utils")).unwrap();
    std::fs::write(
        dir.join("automated/linux/smoke/smoke.sh"),
        "#!/bin/sh\nfor t in $TESTS; do lava-test-case \"$t\" --shell true; done\necho \"skip=$SKIP_INSTALL\"\n",
    )
    .unwrap();
    let mut p = std::fs::metadata(dir.join("automated/linux/smoke/smoke.sh"))
        .unwrap()
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o755);
    std::fs::set_permissions(dir.join("automated/linux/smoke/smoke.sh"), p).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", dir.join("automated/utils/elsewhere")).unwrap();
}

fn cases(out: &[u8]) -> Vec<String> {
    let mut p = SignalParser::new();
    p.feed(out)
        .into_iter()
        .filter_map(|s| match s {
            Signal::TestCase { id, result, .. } => Some(format!("{id} {result}")),
            Signal::StartRun { name } => Some(format!("start {name}")),
            Signal::EndRun { name } => Some(format!("end {name}")),
            _ => None,
        })
        .collect()
}

#[test]
fn an_overlay_runs_its_definitions_from_their_files_with_busybox_and_sh() {
    if !tools() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let repo = d.path().join("checkout");
    checkout(&repo);
    let defs = vec![
        Definition {
            suite: "0_smoke-tests".into(),
            files: Some(repo.clone()),
            steps: vec!["cd ./automated/linux/smoke/".into(), "./smoke.sh".into()],
            params: vec![
                ("TESTS".into(), "pwd uname".into()),
                ("SKIP_INSTALL".into(), "True".into()),
            ],
            uuid: "7_0".into(),
        },
        Definition {
            suite: "1_stdin".into(),
            files: None,
            // A step that reads stdin cannot eat the step after it, and a
            // hostile parameter value is only a value.
            steps: vec![
                "read line || true".into(),
                "lava-test-case after-read --shell true".into(),
                "lava-test-case quoted --shell test \"$EVIL\" = \"it's \\$(touch x)\"".into(),
            ],
            params: vec![("EVIL".into(), "it's $(touch x)".into())],
            uuid: "7_1".into(),
        },
    ];
    let tree = overlay::build(7, &[defs]).unwrap();
    // The symlink is packed as a link: its target is never read.
    let link = tree
        .iter()
        .find(|e| e.path.ends_with("automated/utils/elsewhere"))
        .unwrap();
    assert_eq!(link.data, b"/etc/shadow");
    let gz = overlay::cpio_gz(&tree).unwrap();
    for shell in ["busybox", "sh"] {
        let root = tempfile::tempdir().unwrap();
        unpack(&gz, root.path());
        let mut cmd = if shell == "busybox" {
            let mut c = Command::new("busybox");
            c.arg("sh");
            c
        } else {
            Command::new("sh")
        };
        let out = cmd
            .args(["lava-7/bin/lava-test-runner", "lava-7/0"])
            .current_dir(root.path())
            .env(
                "PATH",
                format!("/usr/bin:/bin:{}", root.path().join("bin").display()),
            )
            .stdin(Stdio::piped())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            cases(&out.stdout),
            [
                "start 0_smoke-tests",
                "pwd pass",
                "uname pass",
                "end 0_smoke-tests",
                "start 1_stdin",
                "after-read pass",
                "quoted pass",
                "end 1_stdin",
            ],
            "{shell}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("skip=True"), "{text}");
        assert!(!root.path().join("lava-7/0/tests/1_stdin/x").exists());
    }
}

#[test]
fn an_overlay_goes_after_the_ramdisk_which_stays_as_it_was() {
    if !tools() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    // A user's gzip'd cpio ramdisk of an odd length.
    let user = overlay::cpio_gz(&[overlay::Entry {
        path: "init".into(),
        mode: 0o100755,
        data: b"#!/bin/sh\n".to_vec(),
    }])
    .unwrap();
    let rd = d.path().join("rootfs.cpio.gz");
    std::fs::write(&rd, &user).unwrap();
    // A hard link stands for the artifact cache's blob behind the deploy.
    let blob = d.path().join("blob");
    std::fs::hard_link(&rd, &blob).unwrap();
    let tree = overlay::build(9, &[vec![]]).unwrap();
    let gz = overlay::cpio_gz(&tree).unwrap();
    overlay::append_to_ramdisk(&rd, &gz, &rd).unwrap();
    let both = std::fs::read(&rd).unwrap();
    assert_eq!(&both[..user.len()], &user[..]);
    let at = user.len().div_ceil(4) * 4;
    assert!(both[user.len()..at].iter().all(|b| *b == 0));
    assert_eq!(&both[at..], &gz[..]);
    assert_eq!(
        std::fs::read(&blob).unwrap(),
        user,
        "the cache's blob changed"
    );
    let root = tempfile::tempdir().unwrap();
    unpack(&both[at..], root.path());
    assert!(root.path().join("lava-9/bin/lava-test-runner").exists());
    unpack(&both[..user.len()], root.path());
    assert!(root.path().join("init").exists());
}
