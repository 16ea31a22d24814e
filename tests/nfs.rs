//! NFS root filesystems through a real NFS server: a job's `nfsrootfs` is
//! unpacked, exported by the nfs-ganesha labd starts, read back through a
//! real NFS client (libnfs's `nfs-cat` and `nfs-ls`, speaking NFSv4 over
//! TCP) while the job runs on a simulated board, and gone after it; a
//! hostile tarball is refused without writing outside its tree; a labd
//! restarted after a crash removes what the old one left, its server too.

mod common;

use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether this machine can run the tests: Ganesha with its VFS backend
/// (which needs root), and libnfs's client tools.
fn have_nfs() -> bool {
    require_tool(
        "ganesha.nfsd",
        "apt-get install nfs-ganesha nfs-ganesha-vfs",
    ) && require(
        "nfs-ganesha-vfs",
        std::fs::read_dir("/usr/lib")
            .into_iter()
            .flatten()
            .flatten()
            .any(|d| d.path().join("ganesha/libfsalvfs.so").exists()),
        "apt-get install nfs-ganesha-vfs",
    ) && require_tool("nfs-cat", "apt-get install libnfs-utils")
        && require_root("Ganesha's VFS backend (open_by_handle_at)")
}

fn nfs_lab(port: u16) -> Lab {
    Lab::start_with(
        1,
        &[],
        &[],
        &format!(
            "[nfs]\nserver = \"ganesha.nfsd\"\nlisten = \"127.0.0.1:{port}\"\nprotocols = [4]\n"
        ),
    )
}

/// A gzip'd tar of `entries`: (path, contents) files, or (path, "->target")
/// symlinks.
fn rootfs(path: &Path, entries: &[(&str, &str)]) {
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::fast(),
    );
    let mut b = tar::Builder::new(gz);
    for (name, body) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        if let Some(target) = body.strip_prefix("->") {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, name, target).unwrap();
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(body.len() as u64);
            b.append_data(&mut h, name, body.as_bytes()).unwrap();
        }
    }
    b.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

/// A job booting the simulated board with LAVA's `commands: nfs` and the
/// root at `root`, whose test runs `steps`.
fn nfs_job(lab: &Lab, root: &Path, steps: &[&str]) -> String {
    let a = lab.artifacts();
    let steps: String = steps.iter().map(|s| format!("          - {s}\n")).collect();
    format!(
        "device_type: sim-uboot\njob_name: nfs\npriority: medium\ntimeouts:\n  job:\n    minutes: 3\nactions:\n- deploy:\n    to: tftp\n    kernel:\n      url: file://{a}/Image\n      type: image\n    ramdisk:\n      url: file://{a}/rootfs.cpio.gz\n    dtb:\n      url: file://{a}/board.dtb\n    nfsrootfs:\n      url: file://{root}\n      compression: gz\n      prefix: rootfs/\n- boot:\n    method: u-boot\n    commands: nfs\n    auto_login:\n      login_prompt: 'login:'\n      username: root\n    prompts: ['root@sim:[^#]*# ']\n- test:\n    definitions:\n    - from: inline\n      name: t\n      path: inline/t.yaml\n      repository:\n        metadata:\n          format: Lava-Test Test Definition 1.0\n          name: t\n        run:\n          steps:\n{steps}",
        a = a.display(),
        root = root.display(),
    )
}

/// The directory labd exports for job `id` (its tree, after the prefix).
fn export_of(lab: &Lab, id: u64) -> PathBuf {
    lab.dir
        .path()
        .join("state/nfs/jobs")
        .join(id.to_string())
        .join("root/rootfs")
}

/// Reads a file through NFSv4 with libnfs; None if the server refuses.
fn nfs_cat(port: u16, path: &Path) -> Option<String> {
    let url = format!("nfs://127.0.0.1{}?version=4&nfsport={port}", path.display());
    let o = Command::new("nfs-cat").arg(&url).output().unwrap();
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Lists a directory through NFSv4 with libnfs; None if the server refuses.
fn nfs_ls(port: u16, path: &Path) -> Option<String> {
    let url = format!("nfs://127.0.0.1{}?version=4&nfsport={port}", path.display());
    let o = Command::new("nfs-ls").arg(&url).output().unwrap();
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// A FIFO the job's test step blocks on until the test writes to it: the
/// job holds its export while the test reads through NFS.
fn gate(lab: &Lab) -> PathBuf {
    let p = lab.dir.path().join("gate");
    nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    p
}

fn open_gate(p: &Path) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap()
        .write_all(b"go\n")
        .unwrap();
}

#[test]
fn a_jobs_root_is_exported_for_the_job_and_gone_after_it() {
    if !have_nfs() {
        return;
    }
    rt().block_on(async {
        let port = free_port();
        let lab = nfs_lab(port);
        let tarball = lab.dir.path().join("rootfs.tar.gz");
        rootfs(
            &tarball,
            &[
                ("rootfs/etc/hostname", "nfsboard\n"),
                ("rootfs/etc/localtime", "->/usr/share/zoneinfo/UTC"),
                ("rootfs/bin/.keep", ""),
            ],
        );
        let gate = gate(&lab);
        let mut c = lab.client().await;
        let id = submit(
            &mut c,
            &nfs_job(
                &lab,
                &tarball,
                &[
                    "echo NFS-CHECK-$((40+2))",
                    &format!("read x < {}", gate.display()),
                    "lava-test-case held --shell true",
                ],
            ),
        )
        .await;
        // The step's output (not its echo, which holds `$((40+2))`): the
        // board booted and the test runs.
        until_log_contains(&lab, id, "NFS-CHECK-42").await;
        let export = export_of(&lab, id);
        assert_eq!(
            nfs_cat(port, &export.join("etc/hostname")).as_deref(),
            Some("nfsboard\n"),
            "the job's root through NFS"
        );
        let etc = nfs_ls(port, &export.join("etc")).expect("listing etc through NFS");
        assert!(etc.contains("localtime"), "{etc}");
        open_gate(&gate);
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete", "{end}\n{log}");
        // U-Boot was given the export, as LAVA's `nfs` commands give it.
        let bootargs = format!("nfsroot=127.0.0.1:{},tcp,hard", export.display());
        assert!(log.contains(&bootargs), "{bootargs} not in\n{log}");
        let r = results(&mut c, id).await;
        assert!(r.iter().any(|(n, x)| n == "held" && x == "pass"), "{r:?}");
        // After the job: no export, no tree.
        assert_eq!(nfs_cat(port, &export.join("etc/hostname")), None);
        assert!(!export.exists(), "{} is left", export.display());
        assert!(!lab
            .dir
            .path()
            .join("state/nfs/jobs")
            .join(id.to_string())
            .exists());
    });
}

#[test]
fn a_hostile_rootfs_is_refused_and_writes_nothing_outside_its_tree() {
    if !have_nfs() {
        return;
    }
    rt().block_on(async {
        let port = free_port();
        let lab = nfs_lab(port);
        let outside = lab.dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let tarball = lab.dir.path().join("evil.tar.gz");
        let link = format!("->{}", outside.display());
        rootfs(
            &tarball,
            &[
                ("rootfs/etc/hostname", "evil\n"),
                ("rootfs/escape", &link),
                ("rootfs/escape/pwned", "gotcha\n"),
            ],
        );
        let mut c = lab.client().await;
        let id = submit(&mut c, &nfs_job(&lab, &tarball, &["true"])).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Incomplete", "{end}\n{log}");
        let j = job(&mut c, id).await;
        let error = j.to_string();
        assert!(
            error.contains("rootfs/escape/pwned") && error.contains("refused"),
            "{error}"
        );
        assert!(
            !outside.join("pwned").exists(),
            "written through the symlink"
        );
        assert!(
            !lab.dir
                .path()
                .join("state/nfs/jobs")
                .join(id.to_string())
                .exists(),
            "the refused tree is left"
        );
    });
}

/// The pid in the lab's Ganesha pid file.
fn ganesha_pid(lab: &Lab) -> i32 {
    std::fs::read_to_string(lab.dir.path().join("state/nfs/ganesha.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_restarted_labd_removes_the_exports_and_server_a_crashed_one_left() {
    if !have_nfs() {
        return;
    }
    rt().block_on(async {
        let port = free_port();
        let mut lab = nfs_lab(port);
        let tarball = lab.dir.path().join("rootfs.tar.gz");
        rootfs(&tarball, &[("rootfs/etc/hostname", "nfsboard\n")]);
        let gate = gate(&lab);
        let mut c = lab.client().await;
        let id = submit(
            &mut c,
            &nfs_job(
                &lab,
                &tarball,
                &[
                    "echo NFS-CHECK-$((40+2))",
                    &format!("read x < {}", gate.display()),
                ],
            ),
        )
        .await;
        until_log_contains(&lab, id, "NFS-CHECK-42").await;
        let export = export_of(&lab, id);
        assert!(nfs_cat(port, &export.join("etc/hostname")).is_some());
        let first = ganesha_pid(&lab);
        drop(c);
        // A crash: labd gets no chance to unexport or remove the tree. Its
        // server dies with it (it was started to), so the export goes.
        lab.kill_labd();
        assert!(export.exists(), "the crash left no tree to clean up");
        assert_eq!(nfs_cat(port, &export.join("etc/hostname")), None);
        // A server that outlived its labd all the same (started some other
        // way): the last configuration labd wrote, with the job's export,
        // and its pid file.
        let state = lab.dir.path().join("state/nfs");
        let pid_file = state.join("ganesha.pid");
        let mut leftover = Command::new("ganesha.nfsd")
            .arg("-F")
            .arg("-f")
            .arg(state.join("ganesha.conf"))
            .arg("-L")
            .arg("/dev/stdout")
            .arg("-p")
            .arg(&pid_file)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let old = leftover.id() as i32;
        assert_ne!(old, first);
        wait_line(leftover.stdout.take().unwrap(), "NFS SERVER INITIALIZED");
        std::fs::write(&pid_file, format!("{old}\n")).unwrap();
        assert_eq!(
            nfs_cat(port, &export.join("etc/hostname")).as_deref(),
            Some("nfsboard\n"),
            "the leftover server serves the old export"
        );
        lab.start_labd();
        // The leftover was stopped (labd's start waited for it) and the
        // tree removed, before labd said it was ready.
        assert!(
            leftover.try_wait().unwrap().is_some(),
            "the old server still runs"
        );
        assert!(!export.exists(), "{} is left", export.display());
        let new = ganesha_pid(&lab);
        assert_ne!(old, new);
        // The new server serves, without the old export.
        assert_eq!(nfs_cat(port, &export.join("etc/hostname")), None);
        assert!(nfs_ls(port, Path::new("/")).is_some(), "the new server");
        let mut c = lab.client().await;
        let (end, _) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Incomplete", "{end}");
        open_gate(&gate);
    });
}

#[test]
fn nfs_jobs_are_refused_on_a_lab_without_an_nfs_server() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let tarball = lab.dir.path().join("rootfs.tar.gz");
        rootfs(&tarball, &[("rootfs/etc/hostname", "x\n")]);
        let mut c = lab.client().await;
        let e = c
            .submit(&nfs_job(&lab, &tarball, &["true"]), "nfs.yaml")
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(labd::error::ErrorCode::Unsupported), "{e}");
        assert!(e.to_string().contains("[nfs] server"), "{e}");
        let just_commands = lab
            .job("x", "medium", &["true"])
            .replace("commands: ramdisk", "commands: nfs");
        let e = c.submit(&just_commands, "nfs.yaml").await.unwrap_err();
        assert!(e.to_string().contains("`commands: nfs`"), "{e}");
        assert!(e.to_string().contains("[nfs] server"), "{e}");
    });
}
