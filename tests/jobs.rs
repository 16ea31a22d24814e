//! Job definitions and console matching, without a daemon: LAVA compatibility
//! of the parser, located errors, and the matcher on real console bursts.

use labd::error::ErrorCode;
use labd::job;
use labd::matcher::Matcher;
use std::path::PathBuf;

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

/// What labd must say about each real LAVA job: accepted, or rejected
/// naming the exact unsupported key paths.
const EXPECTED: &[(&str, &[&str])] = &[
    ("bbb-ramdisk-nfs.sample-job.yaml", &[]),
    // LAVA's interactive U-Boot test (boot method bootloader): accepted.
    ("bbb-uboot-interactive.yaml", &[]),
    // A qemu job (deploy to tmpfs with images, boot method qemu): accepted.
    ("inline-test-definition-example.yaml", &[]),
    // A qemu job (deploy to tmpfs with images, boot method qemu): accepted.
    ("qemu-amd64-standard-stretch.yaml", &[]),
    // A qemu job (deploy to tmpfs with images, boot method qemu): accepted.
    ("qemu-pipeline-first-job.yaml", &[]),
    // A qemu job (deploy to tmpfs with images, boot method qemu): accepted.
    ("qemu-simple-snippet.yaml", &[]),
    ("standard-armmp-nfs-bbb.yaml", &[]),
    (
        "standard-armmp-ramdisk-bbb.yaml",
        &["actions[0].deploy.dtbo"],
    ),
];

#[test]
fn every_lava_job_is_accepted_or_rejected_by_name() {
    let dir = shared().join("lava/job-definitions");
    let mut seen = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the LAVA reference jobs live in ../shared)",
                dir.display()
            )
        })
        .map(|e| e.unwrap().path())
        // The jobs of this table, not the collections in folders beside
        // them (LAVA's own samples in `lava-samples/`).
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let expected = EXPECTED
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no expectation for {name}"))
            .1;
        seen += 1;
        match job::parse(&name, &text) {
            Ok(_) => assert!(expected.is_empty(), "{name} was accepted"),
            Err(e) => {
                for d in &e.errors {
                    assert!(d.location.line.is_some(), "{name}: no line in {d}");
                    assert_eq!(d.location.file.as_deref(), Some(name.as_str()));
                }
                for path in expected.iter() {
                    let hit = e
                        .errors
                        .iter()
                        .find(|d| d.location.path.as_deref() == Some(path));
                    let d = hit.unwrap_or_else(|| {
                        panic!("{name}: expected an error at {path}, got:\n{e}")
                    });
                    assert_eq!(d.code, ErrorCode::Unsupported, "{name}: {d}");
                }
                // Only unsupported features, never "invalid": these are real, valid LAVA jobs.
                assert_eq!(e.code(), ErrorCode::Unsupported, "{name}:\n{e}");
            }
        }
    }
    assert_eq!(seen, EXPECTED.len());
}

#[test]
fn the_supported_subset_of_a_lava_job_is_accepted_unchanged_in_form() {
    // standard-armmp-ramdisk-bbb.yaml with its http artifacts served from files
    // and its unsupported extras removed: what is left must parse as is.
    let text = std::fs::read_to_string(
        shared().join("lava/job-definitions/standard-armmp-ramdisk-bbb.yaml"),
    )
    .unwrap();
    let text = text.replace("http://example.com/", "file:///srv/images/");
    let text = text.replace("      compression: gz\n", "");
    let cut = |t: &str, from: &str, to: &str| {
        let a = t.find(from).unwrap();
        let b = t[a..].find(to).unwrap() + a;
        format!("{}{}", &t[..a], &t[b..])
    };
    let text = cut(&text, "    # modules", "    dtb:");
    let text = cut(&text, "    dtbo:", "# BOOT_BLOCK");
    let text = text[..text.find("# TEST_BLOCK").unwrap()].to_owned();
    let p = job::parse("bbb.yaml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(p.definition.device_type, "beaglebone-black");
    assert_eq!(p.definition.priority, 50);
    assert_eq!(p.definition.actions.len(), 2);
    assert!(p
        .warnings
        .iter()
        .any(|w| w.location.path.as_deref() == Some("visibility")));
}

#[test]
fn bad_yaml_has_line_and_column() {
    let e = job::parse(
        "bad.yaml",
        "device_type: x\njob_name: [unclosed\ntimeouts: {}\n",
    )
    .unwrap_err();
    let d = e.first();
    assert_eq!(d.code, ErrorCode::InvalidJob);
    assert!(
        d.location.line.is_some() && d.location.column.is_some(),
        "{d}"
    );
    // A key given twice keeps its last value, as LAVA's PyYAML loader
    // does, with a warning at the second.
    let p = job::parse(
        "dup.yaml",
        "device_type: a\ndevice_type: b\njob_name: j\ntimeouts:\n  job:\n    minutes: 1\nactions:\n- boot:\n    method: minimal\n",
    )
    .unwrap();
    assert_eq!(p.definition.device_type, "b");
    let w = &p.warnings[0];
    assert_eq!(w.location.line, Some(2), "{w}");
    assert!(w.message.contains("last value is used"), "{w}");
}

#[test]
fn unknown_and_unsupported_keys_name_their_path_and_position() {
    let text = "device_type: sim-uboot\njob_name: t\ntimeouts:\n  job:\n    minutes: 1\nactions:\n- deploy:\n    to: tftp\n    kernel:\n      url: file:///k\n      type: image\n    frobnicate: 1\n- boot:\n    method: u-boot\n    expect_shell: false\n";
    let e = job::parse("j.yaml", text).unwrap_err();
    let f = e
        .errors
        .iter()
        .find(|d| d.location.path.as_deref() == Some("actions[0].deploy.frobnicate"))
        .expect("frobnicate");
    assert_eq!(
        (f.location.line, f.location.column, f.code),
        (Some(12), Some(5), ErrorCode::InvalidJob)
    );
    let n = e
        .errors
        .iter()
        .find(|d| d.location.path.as_deref() == Some("actions[1].boot.expect_shell"))
        .expect("expect_shell");
    assert_eq!(
        (n.location.line, n.code),
        (Some(15), ErrorCode::Unsupported)
    );
    assert!(n.message.contains("not supported"), "{n}");
}

/// LAVA's ssh deploy and boot: `to: ssh` with `os`, `method: ssh` with
/// `connection: ssh`; what an ssh deploy or boot cannot do is refused
/// naming its key.
#[test]
fn ssh_deploys_and_boots_are_parsed_as_lava_writes_them() {
    let job = |deploy: &str, boot: &str| {
        format!("device_type: ssh\njob_name: t\ntimeouts:\n  job:\n    minutes: 1\nactions:\n- deploy:\n    to: ssh\n    os: debian\n{deploy}- boot:\n    method: ssh\n    failure_retry: 2\n    prompts: ['# ']\n{boot}")
    };
    let p = job::parse("j.yaml", &job("", "    connection: ssh\n")).unwrap();
    let (job::Action::Deploy(d), job::Action::Boot(b)) =
        (&p.definition.actions[0], &p.definition.actions[1])
    else {
        panic!("{:?}", p.definition.actions)
    };
    assert!(d.to_ssh && d.kernel.is_none());
    assert_eq!(
        (b.method, b.failure_retry, b.prompts.as_slice()),
        (job::BootMethod::Ssh, Some(2), ["# ".to_owned()].as_slice())
    );
    for (text, path, code) in [
        (
            job("    kernel:\n      url: file:///k\n      type: image\n", ""),
            "actions[0].deploy.kernel",
            ErrorCode::Unsupported,
        ),
        (
            job("", "    connection: serial\n"),
            "actions[1].boot.connection",
            ErrorCode::Unsupported,
        ),
        (
            job("", "    commands: ['boot']\n"),
            "actions[1].boot.commands",
            ErrorCode::InvalidJob,
        ),
        (
            job("", "").replace("method: ssh", "method: minimal\n    connection: ssh"),
            "actions[1].boot.connection",
            ErrorCode::Unsupported,
        ),
    ] {
        let e = job::parse("j.yaml", &text).unwrap_err();
        let d = e
            .errors
            .iter()
            .find(|d| d.location.path.as_deref() == Some(path))
            .unwrap_or_else(|| panic!("{path}: {e}"));
        assert_eq!(d.code, code, "{d}");
        assert!(d.location.line.is_some(), "{d}");
    }
}

#[test]
fn timeouts_and_priorities() {
    let text = "device_type: d\njob_name: t\npriority: 7\ntimeouts:\n  job:\n    hours: 1\n    minutes: 2\n  actions:\n    bootloader-commands:\n      seconds: 9\nactions:\n- boot:\n    method: u-boot\n    commands: [\"echo hi\"]\n";
    let p = job::parse("t.yaml", text).unwrap().definition;
    assert_eq!(p.priority, 7);
    assert_eq!(p.timeouts.job.unwrap().as_secs(), 3720);
    assert_eq!(
        p.timeout_for(
            "bootloader-commands",
            None,
            std::time::Duration::from_secs(1)
        )
        .as_secs(),
        9
    );
    let e = job::parse("t.yaml", &text.replace("priority: 7", "priority: 101")).unwrap_err();
    assert_eq!(e.first().location.path.as_deref(), Some("priority"));
}

#[test]
fn burst_with_linux_version_matches_in_one_read() {
    // The early-kernel burst that made LAVA's pexpect miss `Linux version`
    // (it searches only the last 4000 bytes of a large read).
    let burst =
        std::fs::read(shared().join("lava-peer/tests/burst.txt")).expect("burst.txt in ../shared");
    assert!(burst.len() > 7000);
    let mut m = Matcher::new(&["Linux version [0-9]", "login:"]).unwrap();
    let hit = m.feed(&burst).expect("Linux version must match");
    assert_eq!(hit.index, 0);
    // And split at every position around the line itself.
    let pos = burst
        .windows(13)
        .position(|w| w == b"Linux version")
        .unwrap();
    for cut in pos.saturating_sub(20)..pos + 30 {
        let mut m = Matcher::new(&["Linux version [0-9]"]).unwrap();
        let got = m.feed(&burst[..cut]).or_else(|| m.feed(&burst[cut..]));
        assert!(got.is_some(), "split at {cut}");
    }
}

#[test]
fn real_console_log_matches_every_phase() {
    // A real U-Boot + Linux console from the rig, fed in 1-byte and 4000-byte reads.
    let path = shared().join("lava-peer/examples/job-log-standalone-601.yaml");
    let text = std::fs::read_to_string(&path).expect("real job log in ../shared");
    // The log is LAVA's YAML of target lines; rebuild the console stream.
    let mut console = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line.trim_start_matches("- ")) else {
            continue;
        };
        if v["lvl"] == "target" {
            if let Some(msg) = v["msg"].as_str() {
                console.extend_from_slice(msg.as_bytes());
                console.extend_from_slice(b"\r\n");
            }
        }
    }
    assert!(
        console.len() > 1000,
        "no target lines in {}",
        path.display()
    );
    let pats = ["Hit any key to stop autoboot", "Linux version [0-9]"];
    for read in [1usize, 7, 4000] {
        let mut m = Matcher::new(&pats).unwrap();
        let mut found = Vec::new();
        for chunk in console.chunks(read) {
            let mut c = chunk.to_vec();
            while let Some(hit) = m.feed(&c) {
                found.push(hit.index);
                c = m.take_rest();
                m = Matcher::new(&pats).unwrap();
            }
        }
        assert!(
            found.contains(&0) && found.contains(&1),
            "reads of {read}: {found:?}"
        );
    }
}

#[test]
fn missing_keys_point_at_their_parent() {
    let text = "device_type: d\njob_name: t\ntimeouts:\n  action:\n    minutes: 1\nactions:\n- test:\n    definitions:\n    - from: inline\n      name: t\n      repository:\n        metadata:\n          format: Lava-Test Test Definition 1.0\n";
    let e = job::parse("m.yaml", text).unwrap_err();
    let at = |path: &str| {
        let d = e
            .errors
            .iter()
            .find(|d| d.location.path.as_deref() == Some(path))
            .unwrap_or_else(|| panic!("no error at {path}:\n{e}"));
        (d.location.line, d.location.column)
    };
    assert_eq!(at("timeouts.job").0, Some(4));
    assert_eq!(
        at("actions[0].test.definitions[0].repository.run.steps").0,
        Some(12)
    );
}

/// The rig's jobs (virtual and real lab) are valid jobs, and each says what
/// must happen to it.
#[test]
fn the_rig_jobs_parse_and_carry_expectations() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hil");
    let mut n = 0;
    for dir in ["jobs", "real-jobs"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = e.unwrap().path();
            let text = std::fs::read_to_string(&path)
                .unwrap()
                .replace("@ARTIFACTS@", "http://files.lab/hil")
                .replace("@REPOS@", "/srv/hil/repos");
            let name = path.display().to_string();
            let parsed = job::parse(&name, &text).unwrap_or_else(|e| panic!("{e}"));
            assert!(parsed.warnings.is_empty(), "{name}: {:?}", parsed.warnings);
            assert!(
                text.contains("# expect-health: "),
                "{name} says nothing of how it ends"
            );
            n += 1;
        }
    }
    assert!(n >= 9, "{n} rig jobs");
}

/// LAVA's own sample jobs that labd accepts as they are (JOBS.md keeps the
/// same list). Every other sample needs something a small lab does not
/// have, or labd does not do yet, and must be refused saying so.
const ACCEPTED_SAMPLES: &[&str] = &[
    "b2260-interactive.yaml",
    "bbb-uboot-interactive.yaml",
    "inline-test-definition-example.yaml",
    "kvm-inline.yaml",
    "kvm-params.yaml",
    "namespace-connections-example1.yaml",
    "panda-ramdisk.yaml",
    "primary-ssh.yaml",
    "qemu-aarch64.yaml",
    "qemu-foo-nonexisting.yaml",
    "qemu-monitor.yaml",
    "qemu-nfs.yaml",
    "qemu-pipeline-first-job.yaml",
    "qemu-reboot.yaml",
    "qemu.yaml",
    "rk3399-puma-haikou.yaml",
    "ssh-boot.yaml",
    "uboot-multiple.yaml",
    "uboot-nfs.yaml",
    "uboot-ramdisk-inline-commands.yaml",
    "uboot-ramdisk.yaml",
    "zcu102-ramdisk.yaml",
    "zephyr-qemu-test-task.yaml",
];

#[test]
fn lavas_samples_are_accepted_or_refused_naming_what_they_need() {
    let dir = shared().join("lava/job-definitions/lava-samples");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (LAVA's samples live in ../shared)", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    entries.sort();
    assert!(entries.len() >= 44, "{} samples", entries.len());
    let mut accepted = Vec::new();
    for path in entries {
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        match job::parse(&name, &text) {
            Ok(_) => accepted.push(name),
            Err(e) => {
                // Refused naming a feature: at least one error says what
                // labd does not support, with its key path and position.
                let d = e
                    .errors
                    .iter()
                    .find(|d| d.code == ErrorCode::Unsupported)
                    .unwrap_or_else(|| panic!("{name} is refused without naming a feature:\n{e}"));
                assert!(
                    d.location.path.is_some() && d.location.line.is_some(),
                    "{name}: {d}"
                );
            }
        }
    }
    assert_eq!(accepted, ACCEPTED_SAMPLES);
}

/// LAVA's two NFS shapes parse into the deploy's root: `nfsrootfs` beside
/// a tftp deploy's kernel (with `prefix`), and a `to: nfs` deploy's
/// `nfsrootfs` image, whose `image_arg` is a kernel argument; what would
/// put anything else on the kernel's command line, or lead out of the
/// tarball, is refused naming the key.
#[test]
fn nfs_roots_parse_and_their_hostile_forms_are_refused() {
    let tftp = |root: &str| {
        format!("device_type: sim-uboot\njob_name: t\ntimeouts:\n  job:\n    minutes: 1\nactions:\n- deploy:\n    to: tftp\n    kernel:\n      url: file:///k\n      type: image\n    nfsrootfs:\n{root}- boot:\n    method: u-boot\n    commands: nfs\n")
    };
    let p = job::parse(
        "t.yaml",
        &tftp("      url: http://x/root.tar.xz\n      compression: xz\n      prefix: rootfs/\n"),
    )
    .unwrap();
    let job::Action::Deploy(d) = &p.definition.actions[0] else {
        panic!("a deploy")
    };
    let root = d.nfsrootfs.as_ref().expect("the root");
    assert_eq!(root.prefix.as_deref(), Some("rootfs/"));
    assert_eq!(root.artifact.compression, job::Compression::Xz);
    assert!(
        matches!(&p.definition.actions[1], job::Action::Boot(b) if b.commands == job::BootCommands::Named("nfs".into())),
        "commands: nfs is accepted"
    );
    for bad in ["../up/", "/abs/"] {
        let e = job::parse(
            "t.yaml",
            &tftp(&format!(
                "      url: http://x/root.tar\n      prefix: {bad}\n"
            )),
        )
        .unwrap_err();
        assert_eq!(
            e.first().location.path.as_deref(),
            Some("actions[0].deploy.nfsrootfs.prefix"),
            "{e}"
        );
    }
    let qemu = |arg: &str| {
        format!("device_type: qemu-aarch64\njob_name: t\ntimeouts:\n  job:\n    minutes: 1\nactions:\n- deploy:\n    to: nfs\n    images:\n      nfsrootfs:\n        url: http://x/root.tar.gz\n        compression: gz\n        image_arg: '{arg}'\n      kernel:\n        url: http://x/Image\n        image_arg: -kernel {{kernel}}\n- boot:\n    method: qemu-nfs\n")
    };
    let p = job::parse(
        "q.yaml",
        &qemu("nfsroot={NFS_SERVER_IP}:{nfsrootfs},tcp,hard"),
    )
    .unwrap();
    let job::Action::Deploy(d) = &p.definition.actions[0] else {
        panic!("a deploy")
    };
    assert_eq!(
        d.nfsrootfs.as_ref().and_then(|r| r.kernel_arg.as_deref()),
        Some("nfsroot={NFS_SERVER_IP}:{NFSROOTFS},tcp,hard")
    );
    assert_eq!(d.images.len(), 1, "the kernel alone is a QEMU image");
    for bad in [
        "nfsroot={NFS_SERVER_IP}:{nfsrootfs} init=/bin/sh",
        "-append nfsroot={NFS_SERVER_IP}:{nfsrootfs}",
        "nfsroot=10.0.0.1:/srv/other",
    ] {
        let e = job::parse("q.yaml", &qemu(bad)).unwrap_err();
        assert_eq!(
            e.first().location.path.as_deref(),
            Some("actions[0].deploy.images.nfsrootfs.image_arg"),
            "{bad}: {e}"
        );
    }
    let without = qemu("x").replace(
        "      nfsrootfs:\n        url: http://x/root.tar.gz\n        compression: gz\n        image_arg: 'x'\n",
        "",
    );
    let e = job::parse("q.yaml", &without).unwrap_err();
    assert!(
        e.errors
            .iter()
            .any(|d| d.location.path.as_deref() == Some("actions[0].deploy.images.nfsrootfs")),
        "{e}"
    );
}

/// The QEMU samples' `context` and `image_arg`s are read as LAVA's qemu
/// device type reads them: the options they add reach the job's
/// definition, split as the shell would, and none needs the lab's
/// allowance; an image without `image_arg` is only downloaded.
#[test]
fn lavas_qemu_samples_keep_their_context_and_image_args() {
    let dir = shared().join("lava/job-definitions/lava-samples");
    let read = |name: &str| {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        job::parse(name, &text).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let p = read("qemu-aarch64.yaml");
    let c = &p.definition.context;
    assert_eq!(c.arch.as_deref(), Some("aarch64"));
    assert_eq!(
        c.qemu_options(),
        [
            "-cpu",
            "cortex-a57",
            "-machine",
            "virt",
            "-smp",
            "1",
            "-global",
            "virtio-blk-device.scsi=off",
            "-device",
            "virtio-scsi-device,id=scsi",
            "--append",
            "console=ttyAMA0 root=/dev/vda rw",
        ]
    );
    assert!(p.qemu_options.is_empty(), "{:?}", p.qemu_options);
    // `netdevice: tap` is the lab's business: warned, not refused.
    assert!(p
        .warnings
        .iter()
        .any(|w| w.location.path.as_deref() == Some("context.netdevice")));

    let p = read("zephyr-qemu-test-task.yaml");
    let job::Action::Deploy(d) = &p.definition.actions[0] else {
        panic!("zephyr: no deploy first")
    };
    assert_eq!(d.images[0].args, ["-kernel", "{zephyr}"]);

    // compression_bad.yaml stays refused for bz2 and md5sum, but no longer
    // for its images without image_arg (LAVA downloads them only).
    let text = std::fs::read_to_string(dir.join("compression_bad.yaml")).unwrap();
    let e = job::parse("compression_bad.yaml", &text).unwrap_err();
    assert!(
        !e.errors.iter().any(|d| d
            .location
            .path
            .as_deref()
            .is_some_and(|p| p.ends_with("image_arg"))),
        "{e}"
    );
    assert!(
        e.to_string().contains("bz2") && e.to_string().contains("md5sum"),
        "{e}"
    );
}
