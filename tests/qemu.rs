//! The qemu relay and the unix and pty consoles against a real QEMU running Debian's
//! U-Boot (`hil/setup` installs both; `.ci/run` runs it before the tests).
//! No kernel is needed: the jobs talk to U-Boot itself, with the board's
//! device dictionary making U-Boot's `echo` the "kernel start" and its
//! prompt the "shell".

mod common;

use common::*;
use std::path::Path;

const UBOOT: &str = "/usr/lib/u-boot/qemu_arm64/u-boot.bin";

/// Whether QEMU and U-Boot are here: see `require` for what happens when
/// they are not.
fn have_qemu() -> bool {
    require_tool(
        "qemu-system-aarch64",
        "run hil/setup as root (Debian package qemu-system-arm); .ci/run does",
    ) && require(
        UBOOT,
        Path::new(UBOOT).exists(),
        "run hil/setup as root (Debian package u-boot-qemu); .ci/run does",
    )
}

/// A lab with one QEMU arm64 board whose "kernel" is U-Boot's echo, its
/// serial port on a `unix` socket console.
fn qemu_lab(machine: &str) -> Lab {
    qemu_lab_on(
        machine,
        r#"{ type = "unix", path = "@DIR@/qemu-01.console" }"#,
    )
}

/// The same board on a `pty` console.
fn qemu_pty_lab() -> Lab {
    qemu_lab_on(
        "virt",
        r#"{ type = "pty", link = "@DIR@/qemu-01.console" }"#,
    )
}

/// The same board with the console given.
fn qemu_lab_on(machine: &str, console: &str) -> Lab {
    let board = format!(
        r#"
[[boards]]
name = "qemu-01"
device_type = "qemu-aarch64-uboot"
console = {console}
power = {{ type = "qemu", timeout_secs = 60, argv = ["qemu-system-aarch64", "-M", "{machine}", "-cpu", "cortex-a57", "-accel", "tcg", "-m", "256", "-bios", "{UBOOT}", "-nic", "none"] }}
[boards.parameters]
"kernel.start_message" = "labd-says-hello"
"shell_prompt" = "=> "
"#
    );
    Lab::start_with(1, &[], &[], &board)
}

fn uboot_job(commands: &[&str]) -> String {
    let c: String = commands.iter().map(|c| format!("    - {c:?}\n")).collect();
    format!(
        "device_type: qemu-aarch64-uboot\njob_name: talk to u-boot\ntimeouts:\n  job:\n    minutes: 4\nactions:\n- boot:\n    method: u-boot\n    commands:\n{c}    prompts: ['=> ']\n"
    )
}

#[test]
fn a_qemu_board_runs_only_once_its_console_is_attached_and_no_byte_is_lost() {
    if !have_qemu() {
        return;
    }
    two_jobs_from_the_first_byte(&qemu_lab("virt"));
}

/// On a pty console the console is attached before QEMU starts and stays
/// attached across power cycles; QEMU opens the pty through labd's link,
/// which goes when labd stops.
#[test]
fn a_qemu_board_on_a_pty_console_is_read_from_its_first_byte_across_power_cycles() {
    if !have_qemu() {
        return;
    }
    let mut lab = qemu_pty_lab();
    two_jobs_from_the_first_byte(&lab);
    let link = lab.dir.path().join("qemu-01.console");
    let target = std::fs::read_link(&link).expect("the console's link");
    assert!(target.starts_with("/dev/pts"), "{}", target.display());
    lab.terminate_labd();
    assert!(lab.wait_labd());
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "the link to a pty nobody reads any more is left behind"
    );
}

fn two_jobs_from_the_first_byte(lab: &Lab) {
    rt().block_on(async {
        let mut c = lab.client().await;
        let id = submit(
            &mut c,
            &uboot_job(&["setenv labd 1", "echo labd-says-hello"]),
        )
        .await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete", "{end}\n{log}");
        // The very first thing U-Boot prints is in the log: QEMU was held
        // (-S) until the console had its connection.
        let first = log.trim_start();
        assert!(
            first.starts_with("U-Boot 20"),
            "log starts with {:?}",
            &first[..first.len().min(80)]
        );
        assert!(log.contains("Hit any key to stop autoboot"), "{log}");
        // Powered off at the end: QMP quit, the process gone.
        let b = board(&mut c, "qemu-01").await;
        assert_eq!(b["power"], "Off", "{b}");

        // A second job on the same board: a fresh QEMU, attached again.
        let id = submit(&mut c, &uboot_job(&["echo labd-says-hello"])).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete", "{end}\n{log}");
        assert!(log.trim_start().starts_with("U-Boot 20"));
    });
}

#[test]
fn a_qemu_that_dies_during_a_job_is_a_board_that_lost_power() {
    if !have_qemu() {
        return;
    }
    killed_mid_job(&qemu_lab("virt"));
}

/// A pty console outlives the QEMU that had it open: the board's next job
/// boots on the same console.
#[test]
fn a_qemu_that_dies_on_a_pty_console_leaves_the_console_to_the_next_job() {
    if !have_qemu() {
        return;
    }
    let lab = qemu_pty_lab();
    killed_mid_job(&lab);
    rt().block_on(async {
        let mut c = lab.client().await;
        let id = submit(&mut c, &uboot_job(&["echo labd-says-hello"])).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete", "{end}\n{log}");
        assert!(log.trim_start().starts_with("U-Boot 20"), "{log}");
    });
}

fn killed_mid_job(lab: &Lab) {
    rt().block_on(async {
        let mut c = lab.client().await;
        let id = submit(
            &mut c,
            &uboot_job(&["echo waiting-here", "sleep 120", "echo labd-says-hello"]),
        )
        .await;
        until_log_contains(lab, id, "sleep 120").await;
        // The QEMU of this board is the one whose QMP socket is in its lab.
        let qmp = lab.dir.path().join("state/qemu/qemu-01.qmp");
        let pid = qemu_pid(&qmp.display().to_string()).expect("qemu is running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Incomplete", "{end}");
        let job = job(&mut c, id).await;
        assert_eq!(job["error_class"], "Infrastructure", "{job}");
        let err = job["error"].as_str().unwrap();
        assert!(
            err.contains("board lost power") && err.contains("qemu exited on its own"),
            "{err}"
        );
        assert!(log.contains("[labd: board lost power"), "{log}");
        let b = board(&mut c, "qemu-01").await;
        assert_eq!(b["power"], "Off", "{b}");
    });
}

#[test]
fn a_qemu_that_cannot_start_fails_the_job_with_its_own_words() {
    if !have_qemu() {
        return;
    }
    let lab = qemu_lab("no-such-machine");
    rt().block_on(async {
        let mut c = lab.client().await;
        let id = submit(&mut c, &uboot_job(&["echo labd-says-hello"])).await;
        let (end, _) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Incomplete", "{end}");
        let job = job(&mut c, id).await;
        assert_eq!(job["error_class"], "Infrastructure", "{job}");
        let err = job["error"].as_str().unwrap();
        assert!(
            err.contains("qemu exited while starting") && err.contains("no-such-machine"),
            "{err}"
        );
    });
}

/// hil/setup's artifacts: a Debian arm64 kernel and a busybox initramfs.
fn hil_cache() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("HIL_CACHE")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/labd-hil")))?;
    let ok = dir.join("Image-arm64").exists() && dir.join("initramfs-arm64.cpio.gz").exists();
    require(
        "hil/setup's Image-arm64 and initramfs-arm64.cpio.gz",
        ok,
        "run hil/setup (it builds them in $HIL_CACHE, default ~/.cache/labd-hil); .ci/run does",
    )
    .then_some(dir)
}

/// LAVA's qemu job as tuxlava writes it: `-kernel {kernel} -append "..."`
/// in the kernel's `image_arg`, the board's QEMU shaped by the job's
/// `context`. The kernel boots with the job's command line (not the
/// device type's), the context's memory, and an option the lab allows
/// beyond labd's defaults; an option it does not allow is refused at
/// submit, and a job for another architecture is refused by the board.
#[test]
fn a_tuxlava_style_job_boots_with_its_kernel_command_line_and_context() {
    if !have_qemu() {
        return;
    }
    let Some(cache) = hil_cache() else {
        return;
    };
    let board = format!(
        r#"
[deploy]
file_roots = ["{cache}"]
[qemu]
extra_allowed_options = ["-msg"]

[[boards]]
name = "qemu-01"
device_type = "qemu-aarch64"
console = {{ type = "pty", link = "@DIR@/qemu-01.console" }}
power = {{ type = "qemu", timeout_secs = 60, argv = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57", "-accel", "tcg", "-m", "256", "-nic", "none"] }}
"#,
        cache = cache.display()
    );
    let lab = Lab::start_with(1, &[], &[], &board);
    let job = |context: &str| {
        format!(
            r#"device_type: qemu-aarch64
job_name: tuxlava style
timeouts:
  job: {{ minutes: 10 }}
context:
{context}
actions:
- deploy:
    to: tmpfs
    images:
      kernel:
        image_arg: '-kernel {{kernel}} -append "console=ttyAMA0 rdinit=/init panic=-1 labd.tux=1"'
        url: file://{cache}/Image-arm64
      initrd:
        image_arg: -initrd {{initrd}}
        url: file://{cache}/initramfs-arm64.cpio.gz
- boot:
    method: qemu
    media: tmpfs
    prompts: ["virtboard:[^#]*# "]
    timeout: {{ minutes: 8 }}
- test:
    timeout: {{ minutes: 2 }}
    definitions:
    - from: inline
      name: tux
      path: inline/tux.yaml
      repository:
        metadata: {{ format: Lava-Test Test Definition 1.0, name: tux }}
        run:
          steps:
          - lava-test-case cmdline --shell grep -q labd.tux=1 /proc/cmdline
          - lava-test-case job-append-only --shell test -z "$(grep -o labd.extra /proc/cmdline)"
          - lava-test-case memory --shell test "$(awk '/MemTotal/{{print int($2/1024)}}' /proc/meminfo)" -gt 400
"#,
            cache = cache.display()
        )
    };
    rt().block_on(async {
        let mut c = lab.client().await;
        // Not among labd's defaults, and not allowed by this lab.
        let refused = c
            .submit(&job("  arch: arm64\n  extra_options: ['-no-fd-bootchk']"), "j.yaml")
            .await
            .expect_err("an option the lab does not allow");
        let msg = refused.to_string();
        assert!(
            msg.contains("context.extra_options") && msg.contains("-no-fd-bootchk"),
            "{msg}"
        );

        // Another architecture than the board's QEMU.
        let id = submit(&mut c, &job("  arch: amd64")).await;
        let (end, _) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Incomplete", "{end}");
        let j = common::job(&mut c, id).await;
        let err = j["error"].as_str().unwrap_or_default();
        assert!(
            err.contains("context.arch `amd64` needs qemu-system-x86_64"),
            "{j}"
        );

        let id = submit(
            &mut c,
            &job("  arch: arm64\n  memory: 600\n  extra_options: ['-msg timestamp=on', '-smp', 1]\n  extra_kernel_args: labd.extra=1"),
        )
        .await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete", "{end}\n{log}");
        let r = results(&mut c, id).await;
        for case in ["cmdline", "job-append-only", "memory"] {
            assert!(
                r.contains(&(case.to_owned(), "pass".to_owned())),
                "{case}: {r:?}\n{log}"
            );
        }
    });
}

/// The pid of the process whose command line mentions `needle`.
fn qemu_pid(needle: &str) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()? {
        let e = e.ok()?;
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.starts_with("qemu-system") && cmd.contains(needle) {
            return Some(pid);
        }
    }
    None
}
