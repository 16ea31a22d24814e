//! LAVA's test actions beyond shell definitions, run unchanged on the
//! simulated boards through a real labd: `interactive` tests at U-Boot's
//! prompt after `boot: method: bootloader`, and `monitors` reading results
//! from a boot log with no shell.

mod common;

use common::*;
use labd::protocol::RequestBody;
use serde_json::Value;

/// A job that stops in the simulated board's U-Boot and runs `test`
/// (YAML indented for the test action's list item).
fn at_uboot(name: &str, test: &str) -> String {
    format!(
        "device_type: sim-uboot\njob_name: {name}\npriority: medium\ntimeouts:\n  job:\n    minutes: 3\n  connection:\n    seconds: 30\nactions:\n- boot:\n    method: bootloader\n    bootloader: u-boot\n    commands: []\n    prompts: ['=>']\n- test:\n    timeout:\n      minutes: 2\n{test}"
    )
}

/// A sim job's start, through its TFTP deploy of kernel, ramdisk and DTB.
fn tftp_head(lab: &Lab, name: &str) -> String {
    let a = lab.artifacts();
    format!(
        "device_type: sim-uboot\njob_name: {name}\npriority: medium\ntimeouts:\n  job:\n    minutes: 3\nactions:\n- deploy:\n    to: tftp\n    kernel:\n      url: file://{a}/Image\n      type: image\n    ramdisk:\n      url: file://{a}/rootfs.cpio.gz\n    dtb:\n      url: file://{a}/board.dtb\n",
        a = a.display()
    )
}

/// Every result of a job as `suite/name result [measurement]`.
async fn all_results(c: &mut labd::client::Client, id: u64) -> Vec<String> {
    let r = c.call(RequestBody::Results { job: id }).await.unwrap();
    r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let m = t["measurement"]
                .as_str()
                .map(|m| format!(" {m}"))
                .unwrap_or_default();
            format!(
                "{}/{} {}{m}",
                t["suite"].as_str().unwrap_or(""),
                t["name"].as_str().unwrap_or(""),
                t["result"].as_str().unwrap_or("")
            )
        })
        .collect()
}

async fn ended(c: &mut labd::client::Client, id: u64) -> (Value, String) {
    let (end, log) = wait_job(c, id).await;
    let j = job(c, id).await;
    (
        serde_json::json!({"end": end, "error": j["error"], "error_class": j["error_class"]}),
        log,
    )
}

/// Submits a job whose simulated board unpacks its overlay at `/` (the
/// host's, under `HOST_ROOT`) and follows it to its end; the job's
/// `/lava-<id>` is removed after. Returns the id, the end and the log.
async fn ended_unpacked_at_root(c: &mut labd::client::Client, text: &str) -> (u64, Value, String) {
    let id = submit(c, text).await;
    let (end, log) = ended(c, id).await;
    let _ = std::fs::remove_dir_all(format!("/lava-{id}"));
    (id, end, log)
}

#[test]
fn an_interactive_test_talks_to_u_boot_as_lava_does() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let test = r#"    interactive:
    - name: uboot
      prompts: ["=> "]
      script:
      - command: version
        name: version
        successes:
        - message: "U-Boot 20[0-9]+"
      - command: dhcp
        name: dhcp
        successes:
        - message: "DHCP client bound to address (?P<ip>[0-9.]+)"
        failures:
        - message: "TIMEOUT"
          exception: InfrastructureError
          error: "dhcp failed"
      - command: "echo got {ip} in job {JOB_ID}"
        name: placeholders
        successes:
        - message: "got 10.0.2.15 in job [0-9]+"
      - delay: 0.1
      - command: "printenv bootdelay"
      - command: nosuchcommand
        name: unknown-command
        failures:
        - message: "Unknown command"
    - name: expectations
      prompts: ["=> "]
      expected: [first, second]
      script:
      - command: echo first
        name: first
      - command: echo extra
        name: extra
"#;
        let id = submit(&mut c, &at_uboot("interactive", test)).await;
        let (end, log) = ended(&mut c, id).await;
        assert_eq!(end["end"]["health"], "Complete", "{end}\n{log}");
        assert_eq!(
            all_results(&mut c, id).await,
            [
                "0_uboot/version pass",
                "0_uboot/dhcp pass",
                "0_uboot/placeholders pass",
                "0_uboot/unknown-command fail",
                "lava/0_uboot pass",
                "0_expectations/first pass",
                // Not in `expected`: forced to fail, as LAVA does.
                "0_expectations/extra fail",
                // Expected but never reported.
                "0_expectations/second fail",
                "lava/0_expectations pass",
            ]
        );
        // The command went out with its placeholders filled.
        assert!(
            log.contains(&format!("echo got 10.0.2.15 in job {id}")),
            "{log}"
        );
    });
}

#[test]
fn an_interactive_failure_with_an_exception_ends_the_job_with_its_class() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let test = r#"    interactive:
    - name: net
      prompts: ["=> "]
      script:
      - command: nosuchcommand
        name: broken
        failures:
        - message: "Unknown command '(?P<what>[a-z]+)'"
          exception: InfrastructureError
          error: "the board has no such command"
      - command: version
        name: never-sent
"#;
        let id = submit(&mut c, &at_uboot("interactive-raise", test)).await;
        let (end, log) = ended(&mut c, id).await;
        assert_eq!(end["end"]["health"], "Incomplete", "{end}\n{log}");
        assert_eq!(end["error_class"], "Infrastructure", "{end}");
        assert_eq!(end["error"], "the board has no such command", "{end}");
        assert_eq!(
            all_results(&mut c, id).await,
            ["0_net/broken fail", "lava/0_net fail"]
        );
        assert!(!log.contains("\nversion"), "{log}");
    });
}

#[test]
fn an_unnamed_command_that_fails_is_the_tests_failure() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let test = r#"    interactive:
    - name: s
      prompts: ["=> "]
      script:
      - command: version
        successes:
        - message: "no such banner"
"#;
        let id = submit(&mut c, &at_uboot("interactive-unnamed", test)).await;
        let (end, log) = ended(&mut c, id).await;
        assert_eq!(end["end"]["health"], "Incomplete", "{end}\n{log}");
        assert_eq!(end["error_class"], "Test", "{end}");
        assert_eq!(end["error"], "failed to run command 'version'", "{end}");
    });
}

/// A boot with no prompts before a monitors test ends as the kernel
/// starts; the monitor then reads its results from the boot log.
#[test]
fn a_monitors_test_reads_results_from_the_boot_log() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let text = format!(
            r#"{head}- boot:
    method: u-boot
    commands: ramdisk
- test:
    timeout:
      minutes: 1
    monitors:
    - name: Kernel Boot
      start: "Machine model:"
      end: "Run /init as init process"
      pattern: '(?P<test_case_id>smp|devtmpfs|Serial): (?P<result>Brought up|initialized|8250/16550)'
      fixupdict:
        Brought up: pass
        initialized: pass
        8250/16550: fail
      expected: [smp, devtmpfs, serial, rtc]
"#,
            head = tftp_head(&lab, "monitors")
        );
        let id = submit(&mut c, &text).await;
        let (end, log) = ended(&mut c, id).await;
        assert_eq!(end["end"]["health"], "Complete", "{end}\n{log}");
        assert_eq!(
            all_results(&mut c, id).await,
            [
                "kernel-boot/smp pass",
                "kernel-boot/devtmpfs pass",
                "kernel-boot/serial fail",
                "kernel-boot/rtc fail",
            ]
        );
    });
}

/// A monitor whose end never comes runs out of its action's timeout,
/// which is the test's failure, not the lab's.
#[test]
fn a_monitor_that_never_ends_is_the_tests_timeout() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let text = format!(
            r#"{head}- boot:
    method: u-boot
    commands: ramdisk
- test:
    timeout:
      seconds: 3
    monitors:
    - name: silent
      start: "Machine model:"
      end: "never printed"
      pattern: '(?P<test_case_id>x{{20}})(?P<result>y)'
"#,
            head = tftp_head(&lab, "monitor-timeout")
        );
        let id = submit(&mut c, &text).await;
        let (end, log) = ended(&mut c, id).await;
        assert_eq!(end["end"]["health"], "Incomplete", "{end}\n{log}");
        assert_eq!(end["error_class"], "Test", "{end}");
    });
}

/// LAVA's way to test booting by hand (its b2260 sample): stop in U-Boot,
/// load and boot the kernel with interactive commands that use the
/// deploy's placeholders, then a `minimal` boot with `reset: false` logs in
/// to the running board, and a shell test runs there.
#[test]
fn a_board_booted_by_hand_is_logged_in_without_a_power_cycle() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let text = format!(
            r#"{head}- boot:
    method: bootloader
    bootloader: u-boot
    commands: []
    prompts: ['=>']
- test:
    timeout:
      minutes: 1
    interactive:
    - name: boot-manually
      prompts: ["=> "]
      script:
      - command: "setenv serverip {{SERVER_IP}}"
      - command: "setenv tftpdstp {{TFTP_PORT}}"
      - command: "tftp {{KERNEL_ADDR}} {{KERNEL}}"
        name: kernel
        successes:
        - message: "Bytes transferred"
      - command: "tftp {{RAMDISK_ADDR}} {{RAMDISK}}"
      - command: "setenv initrd_size ${{filesize}}"
      - command: "tftp {{DTB_ADDR}} {{DTB}}"
      - command: "{{BOOTX}}"
        name: bootx
        wait_for_prompt: false
        successes:
        - message: "Starting kernel"
- boot:
    method: minimal
    reset: false
    auto_login:
      login_prompt: 'login:'
      username: root
    prompts: ['root@sim:[^#]*# ']
- test:
    definitions:
    - from: inline
      name: after
      path: inline/after.yaml
      repository:
        metadata:
          format: Lava-Test Test Definition 1.0
          name: after
        run:
          steps:
          - lava-test-case shell --shell true
"#,
            head = tftp_head(&lab, "boot-by-hand")
        );
        let id = submit(&mut c, &text).await;
        let (end, log) = ended(&mut c, id).await;
        assert_eq!(end["end"]["health"], "Complete", "{end}\n{log}");
        assert_eq!(
            all_results(&mut c, id).await,
            [
                "0_boot-manually/kernel pass",
                "0_boot-manually/bootx pass",
                "lava/0_boot-manually pass",
                "0_after/shell pass",
            ]
        );
        // One power-on only: the minimal boot did not cycle the board.
        let j = job(&mut c, id).await;
        let power_ons = j["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "phase" && e["message"] == "PoweringOn")
            .count();
        assert_eq!(power_ons, 1, "{j}");
    });
}

/// LAVA's `timeout: {skip: true}` (its qemu-reboot sample): a test action
/// that runs out of time ends, and the job goes on with the next action.
#[test]
fn a_test_whose_timeout_may_be_skipped_lets_the_job_go_on() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let base = lab.job("skip", "medium", &["lava-test-case after --shell true"]);
        // The job's own boot and test, preceded by a boot and a test that
        // never ends but may be skipped.
        let actions = base.find("- boot:").unwrap();
        let boot_and_test = &base[actions..];
        let skipped = boot_and_test
            .replace(
                "- test:\n",
                "- test:\n    timeout:\n      seconds: 3\n      skip: true\n",
            )
            .replace("lava-test-case after --shell true", "sleep 600")
            .replace("name: t\n", "name: stuck\n");
        let text = format!("{}{skipped}{boot_and_test}", &base[..actions]);
        let id = submit(&mut c, &text).await;
        let (end, log) = ended(&mut c, id).await;
        assert_eq!(end["end"]["health"], "Complete", "{end}\n{log}");
        // LAVA numbers definitions across the job: this is the second.
        assert_eq!(all_results(&mut c, id).await, ["1_t/after pass"]);
        let j = job(&mut c, id).await;
        assert!(
            j["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "timeout-skip"),
            "{j}"
        );
    });
}

/// `lava-test-reference` records a case with its URL, as LAVA does;
/// `lava-test-case-attach` says it is not supported and the test goes on.
#[test]
fn references_are_kept_and_attachments_are_refused_without_a_hang() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let text = lab.job(
            "reference",
            "medium",
            &[
                "lava-test-reference docs --result pass --reference https://docs.example.org/run/1",
                "lava-test-case-attach docs /etc/hostname",
                "lava-test-case after --shell true",
            ],
        );
        let id = submit(&mut c, &text).await;
        let (end, log) = ended(&mut c, id).await;
        assert_eq!(end["end"]["health"], "Complete", "{end}\n{log}");
        let r = c.call(RequestBody::Results { job: id }).await.unwrap();
        let cases = r["results"].as_array().unwrap();
        assert_eq!(cases.len(), 2, "{r}");
        assert_eq!(cases[0]["name"], "docs");
        assert_eq!(cases[0]["result"], "pass");
        assert_eq!(
            cases[0]["reference"], "https://docs.example.org/run/1",
            "{r}"
        );
        assert_eq!(cases[1]["name"], "after");
        assert!(
            log.contains("lava-test-case-attach: not supported by labd"),
            "{log}"
        );
    });
}

/// A definition's `expected` cases, as LAVA treats them: one not listed
/// cannot pass, and one never reported is recorded as a fail.
#[test]
fn a_definitions_expected_cases_are_held_to() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let text = lab
            .job(
                "expected",
                "medium",
                &[
                    "lava-test-case a --shell true",
                    "lava-test-case c --shell true",
                ],
            )
            .replacen(
                "      name: t\n",
                "      name: t\n      expected: [a, b]\n",
                1,
            );
        let id = submit(&mut c, &text).await;
        let (end, log) = ended(&mut c, id).await;
        assert_eq!(end["end"]["health"], "Complete", "{end}\n{log}");
        assert_eq!(
            all_results(&mut c, id).await,
            ["0_t/a pass", "0_t/c fail", "0_t/b fail"]
        );
    });
}

/// A bare repository with test definitions, tagged `v1`, in `dir`:
/// `smoke.yaml`, and `with-repo.yaml`, whose `install: git-repos` is this
/// same repository.
fn definitions_repo(dir: &std::path::Path) -> std::path::PathBuf {
    let with_repo = format!(
        "metadata:\n  format: Lava-Test Test Definition 1.0\n  name: with-repo\ninstall:\n  git-repos:\n    - url: file://{}\n      destination: helpers\n      branch: main\nrun:\n  steps:\n    - lava-test-case repo-there --shell test -f helpers/defs/smoke.yaml\n",
        dir.join("defs.git").display()
    );
    let smoke = "metadata:\n  format: Lava-Test Test Definition 1.0\n  name: smoke\nrun:\n  steps:\n    - lava-test-case ok --shell true\n";
    bare_definitions_repo(
        dir,
        &[
            ("defs/with-repo.yaml", with_repo),
            ("defs/smoke.yaml", smoke.into()),
        ],
    )
}

/// A lab whose git cache may read `<lab dir>/repos`, where a definitions
/// repository is made; `extra` is more config.
fn git_lab(extra: &str) -> (Lab, std::path::PathBuf) {
    let lab = Lab::start_with(
        1,
        &[],
        &[],
        &format!("[git]\nfile_roots = [\"@DIR@/repos\"]\n{extra}"),
    );
    let repos = lab.dir.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let repo = definitions_repo(&repos);
    (lab, repo)
}

/// Held by the tests whose simulated board unpacks its overlay at `/`:
/// each lab numbers its jobs from 1, so two such tests at once would share
/// `/lava-1` on this host.
static HOST_ROOT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A git job whose boot fetches its overlay with these commands.
fn with_transfer(job: String, download: &str, unpack: &str) -> String {
    job.replace(
        "    prompts: ['root@sim:[^#]*# ']\n",
        &format!("    prompts: ['root@sim:[^#]*# ']\n    transfer_overlay:\n      download_command: {download}\n      unpack_command: {unpack}\n"),
    )
}

fn git_job(lab: &Lab, repo: &std::path::Path, revision: &str, ramdisk: bool) -> String {
    let a = lab.artifacts();
    let rd = if ramdisk {
        format!(
            "    ramdisk:\n      url: file://{}/rootfs.cpio.gz\n",
            a.display()
        )
    } else {
        String::new()
    };
    format!(
        "device_type: sim-uboot\njob_name: git\npriority: medium\ntimeouts:\n  job:\n    minutes: 3\nactions:\n- deploy:\n    to: tftp\n    kernel:\n      url: file://{a}/Image\n      type: image\n{rd}- boot:\n    method: u-boot\n    commands: ramdisk\n    auto_login:\n      login_prompt: 'login:'\n      username: root\n    prompts: ['root@sim:[^#]*# ']\n- test:\n    definitions:\n    - repository: file://{r}\n      from: git\n      path: defs/smoke.yaml\n      name: smoke\n      revision: {revision}\n      history: false\n",
        a = a.display(),
        r = repo.display()
    )
}

/// A revision the repository does not have ends the job at its deploy,
/// before the board is powered, naming the repository and git's words.
#[test]
fn a_git_definition_that_cannot_be_fetched_ends_the_job_naming_its_repository() {
    if !require_tool("git", "install the Debian package git; .ci/run does") {
        return;
    }
    rt().block_on(async {
        let (lab, repo) = git_lab("");
        let mut c = lab.client().await;
        let id = submit(&mut c, &git_job(&lab, &repo, "no-such-tag", true)).await;
        let (end, log) = ended(&mut c, id).await;
        assert_eq!(end["end"]["health"], "Incomplete", "{end}\n{log}");
        assert_eq!(end["error_class"], "Job", "{end}");
        let error = end["error"].as_str().unwrap();
        assert!(
            error.contains(&format!("file://{}", repo.display())),
            "{error}"
        );
        assert!(error.contains("no-such-tag"), "{error}");
        assert!(powered(&lab).await.is_empty());
    });
}

/// Without a ramdisk there is nothing to carry the overlay: the job is
/// refused at submit, saying why.
#[test]
fn a_git_definition_without_a_ramdisk_is_refused_at_submit() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let e = c
            .submit(
                &git_job(&lab, std::path::Path::new("/srv/defs.git"), "v1", false),
                "j.yaml",
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(labd::error::ErrorCode::Unsupported), "{e}");
        assert!(e.to_string().contains("appended to a ramdisk"), "{e}");
    });
}

/// LAVA's `transfer_overlay` (its b2260 sample's way): after the login the
/// board fetches the overlay from labd's HTTP listener and unpacks it at
/// `/`, then the `from: git` definition runs from it. The simulated board's
/// shell runs on this host, so the overlay really lands in `/lava-<id>`
/// (removed after) and runs with the host's `sh`.
#[test]
fn a_git_definition_runs_from_an_overlay_the_board_fetched_over_http() {
    let Some((results, _, log)) = a_transferred_git_job(|job| job) else {
        return;
    };
    assert_eq!(results, ["0_smoke/ok pass"]);
    assert!(log.contains("overlay.tar.gz"), "{log}");
}

/// Runs the `from: git` job (`git_job`, changed by `edit`) on a lab that
/// serves overlays, its board fetching the overlay with curl and unpacking
/// it at `/`; the job must end Complete. Its results, record and log, or
/// None when git, curl or root is missing (the test then has nothing to
/// run).
fn a_transferred_git_job(
    edit: impl FnOnce(String) -> String,
) -> Option<(Vec<String>, Value, String)> {
    if !require_tool("git", "install the Debian package git; .ci/run does")
        || !require_tool("curl", "install the Debian package curl; .ci/run does")
        || !require_root("the board unpacks its overlay at / (tar -C /)")
    {
        return None;
    }
    let _root = HOST_ROOT.lock().unwrap_or_else(|e| e.into_inner());
    Some(rt().block_on(async {
        let (lab, repo) =
            git_lab("[deploy]\nfile_roots = [\"@DIR@\"]\noverlay_http = \"127.0.0.1:0\"\n");
        let mut c = lab.client().await;
        let text = with_transfer(
            edit(git_job(&lab, &repo, "v1", true)),
            "curl -sSfO",
            "tar -C / -xzf",
        );
        let (id, end, log) = ended_unpacked_at_root(&mut c, &text).await;
        assert_eq!(end["end"]["health"], "Complete", "{end}\n{log}");
        let record = common::job(&mut c, id).await;
        (all_results(&mut c, id).await, record, log)
    }))
}

/// LAVA's `install: git-repos`: the lab clones the repository a
/// definition names (through its git cache) into the definition's
/// directory in the overlay, where the definition's steps find it.
#[test]
fn a_definitions_install_git_repos_are_cloned_into_the_overlay() {
    let Some((results, record, _)) = a_transferred_git_job(|job| {
        job.replace("path: defs/smoke.yaml", "path: defs/with-repo.yaml")
            .replace("name: smoke", "name: with-repo")
    }) else {
        return;
    };
    assert_eq!(results, ["0_with-repo/repo-there pass"]);
    let events = record["events"].to_string();
    assert!(events.contains("install git-repos"), "{events}");
}

/// LAVA's `from: url`: a tarball of definitions (here a `file://` one
/// under the lab's roots, made by GNU tar) is unpacked on the lab host and
/// the definition at `path` runs from the overlay; `strip-components`
/// drops a leading directory, as LAVA's untar does.
#[test]
fn url_definitions_are_unpacked_from_their_tarball() {
    if !require_tool("tar", "install the Debian package tar; .ci/run does")
        || !require_tool("curl", "install the Debian package curl; .ci/run does")
        || !require_root("the board unpacks its overlay at / (tar -C /)")
    {
        return;
    }
    let _root = HOST_ROOT.lock().unwrap_or_else(|e| e.into_inner());
    rt().block_on(async {
        let lab = Lab::start_with(
            1,
            &[],
            &[],
            "[deploy]\nfile_roots = [\"@DIR@\"]\noverlay_http = \"127.0.0.1:0\"\n",
        );
        let mut c = lab.client().await;
        let a = lab.artifacts();
        // `defs.tar.gz` of `a/tree`, as GNU tar packs it.
        let pack = |a: &std::path::Path| {
            let st = std::process::Command::new("tar")
                .args(["-czf", "defs.tar.gz", "-C", "tree", "."])
                .current_dir(a)
                .status()
                .unwrap();
            assert!(st.success());
        };
        let tree = a.join("tree/test-definitions-1.0/automated");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(
            tree.join("smoke.yaml"),
            "metadata:\n  format: Lava-Test Test Definition 1.0\n  name: smoke\nrun:\n  steps:\n    - lava-test-case from-url --shell test -f automated/smoke.yaml\n",
        )
        .unwrap();
        pack(&a);
        let job = with_transfer(
            lab.job("url", "medium", &["true"]),
            "curl -sSfO",
            "tar -C / -xzf",
        );
        let i = job.find("    definitions:\n").unwrap();
        let job = format!(
            "{}    definitions:\n    - repository: file://{}/defs.tar.gz\n      from: url\n      compression: gz\n      strip-components: 1\n      path: automated/smoke.yaml\n      name: smoke\n",
            &job[..i],
            a.display()
        );
        let (id, end, log) = ended_unpacked_at_root(&mut c, &job).await;
        assert_eq!(end["end"]["health"], "Complete", "{end}\n{log}");
        assert_eq!(all_results(&mut c, id).await, ["0_smoke/from-url pass"]);
        // Two directories at the top cannot be stripped as one.
        std::fs::create_dir_all(a.join("tree/second")).unwrap();
        pack(&a);
        let id = submit(&mut c, &job).await;
        let (end, log) = ended(&mut c, id).await;
        assert_eq!(end["end"]["health"], "Incomplete", "{end}\n{log}");
        assert_eq!(end["error_class"], "Job", "{end}");
        assert!(
            end["error"].as_str().unwrap().contains("strip-components 1"),
            "{end}"
        );
    });
}

/// A board that cannot fetch its overlay ends the job as the lab's
/// failure, naming the command and its status.
#[test]
fn an_overlay_the_board_cannot_fetch_is_an_infrastructure_error() {
    if !require_tool("git", "install the Debian package git; .ci/run does") {
        return;
    }
    rt().block_on(async {
        let (lab, repo) =
            git_lab("[deploy]\nfile_roots = [\"@DIR@\"]\noverlay_http = \"127.0.0.1:0\"\n");
        let mut c = lab.client().await;
        let text = with_transfer(git_job(&lab, &repo, "v1", true), "false", "tar -xzf");
        let id = submit(&mut c, &text).await;
        let (end, log) = ended(&mut c, id).await;
        assert_eq!(end["end"]["health"], "Incomplete", "{end}\n{log}");
        assert_eq!(end["error_class"], "Infrastructure", "{end}");
        let error = end["error"].as_str().unwrap();
        assert!(
            error.starts_with("transfer_overlay: `false http://"),
            "{error}"
        );
        assert!(error.ends_with("exited with status 1"), "{error}");
    });
}

/// LAVA's `context.extra_kernel_args` and `console_device` reach the
/// kernel's command line of a device type's boot commands, as LAVA's
/// base-uboot template puts them into `setenv bootargs`.
#[test]
fn context_kernel_arguments_reach_a_command_sets_bootargs() {
    let lab = Lab::start(1, &[]);
    let job = lab.job("ctx", "medium", &["true"]).replace(
        "actions:\n",
        "context:\n  extra_kernel_args: labd.extra=1 quiet\n  console_device: ttyS1\nactions:\n",
    );
    rt().block_on(async {
        let mut c = lab.client().await;
        let id = submit(&mut c, &job).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete", "{end}\n{log}");
        assert!(
            log.contains(
                "setenv bootargs 'console=ttyS0,115200n8 root=/dev/ram0 console=ttyS1,115200n8 labd.extra=1 quiet'"
            ),
            "{log}"
        );
    });
}
