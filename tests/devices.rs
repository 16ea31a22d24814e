//! LAVA device configuration as labd boards (`lava_device`,
//! `lava_device_yaml`): LAVA's own device dictionary rendered as lava-server
//! renders it, a simulated board configured by nothing but a dictionary
//! running a job end to end, and the refusals.

mod common;

use common::*;
use labd::config::{ConsoleConfig, LabConfig, PowerConfig};
use labd::protocol::RequestBody;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// LAVA's reference material, beside the repository.
fn lava() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/lava")
}

/// A YAML document as PyYAML (lava-dispatcher's loader) reads it: plain
/// scalars resolved to null, booleans and numbers, quoted ones strings.
fn yaml_value(text: &str) -> Value {
    // PyYAML reads LAVA's margin-continued quoted scalars; so does labd.
    let node = marked_yaml::parse_yaml(0, labd::lava_device::pyyaml_compatible(text)).unwrap();
    fn conv(n: &marked_yaml::Node) -> Value {
        match n {
            marked_yaml::Node::Mapping(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (k.as_str().to_owned(), conv(v)))
                    .collect(),
            ),
            marked_yaml::Node::Sequence(s) => Value::Array(s.iter().map(conv).collect()),
            marked_yaml::Node::Scalar(s) => {
                let t = s.as_str();
                if !s.may_coerce() {
                    return Value::String(t.to_owned());
                }
                match t {
                    "" | "~" | "null" | "Null" | "NULL" => Value::Null,
                    _ if ["true", "yes", "on"].contains(&t.to_ascii_lowercase().as_str()) => {
                        Value::Bool(true)
                    }
                    _ if ["false", "no", "off"].contains(&t.to_ascii_lowercase().as_str()) => {
                        Value::Bool(false)
                    }
                    _ => match t.parse::<i64>() {
                        Ok(i) => Value::from(i),
                        Err(_) => match t.parse::<f64>() {
                            Ok(f) if t.contains('.') => Value::from(f),
                            _ => Value::String(t.to_owned()),
                        },
                    },
                }
            }
        }
    }
    conv(&node)
}

/// Every key path where two values differ, for a readable failure.
fn differences(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(v), Some(w)) => differences(&p, v, w, out),
                    (v, w) => out.push(format!("{p}: {v:?} != {w:?}")),
                }
            }
        }
        _ if a != b => out.push(format!("{path}: {a} != {b}")),
        _ => {}
    }
}

/// LAVA's bbb-01 device dictionary, rendered through LAVA's own
/// beaglebone-black, base-uboot and base templates, is key for key the
/// device configuration lava-server renders (with Python's Jinja2); and
/// labd reads it as that board.
#[test]
fn lava_s_bbb_01_dictionary_renders_as_lava_server_renders_it() {
    let l = lava();
    let dict = l.join("device-dictionaries/bbb-01.jinja2");
    let templates = l.join("device-types");
    let ours = labd::lava_device::render(&dict, &templates).unwrap();
    let theirs =
        std::fs::read_to_string(l.join("device-dictionaries/bbb-01.rendered-device-config.yaml"))
            .unwrap();
    let (a, b) = (yaml_value(&ours), yaml_value(&theirs));
    let mut diff = Vec::new();
    differences("", &a, &b, &mut diff);
    assert!(diff.is_empty(), "{}", diff.join("\n"));
    assert!(
        a["actions"]["boot"]["methods"]["u-boot"]["ramdisk"]["commands"]
            .as_array()
            .is_some_and(|c| c.len() == 12)
    );
    // Values print as Python prints them (`True`, not `true`): the text too
    // is lava-server's.
    assert_eq!(ours, theirs);

    let d = labd::lava_device::load_dictionary(&dict, &templates).unwrap();
    assert_eq!(d.device_type, "beaglebone-black");
    assert_eq!(
        d.connect.as_deref().unwrap(),
        ["telnet", "localhost", "6000"]
    );
    let pdu = |cmd: &str| {
        vec![[
            "/usr/bin/pduclient",
            "--daemon",
            "localhost",
            "--hostname",
            "pdu",
            "--command",
            cmd,
            "--port",
            "08",
        ]
        .map(String::from)
        .to_vec()]
    };
    assert_eq!(d.power_on, pdu("on"));
    assert_eq!(d.power_off, pdu("off"));
    assert_eq!(d.hard_reset, pdu("reboot"));
    let bl = d.dt.bootloader.as_ref().unwrap();
    assert_eq!(bl.prompt, "=>");
    assert_eq!(bl.interrupt_prompt, "Hit any key to stop autoboot");
    // LAVA's default: an empty interrupt character, then a newline.
    assert_eq!(
        (bl.interrupt_char.as_str(), bl.interrupt_newline),
        ("", true)
    );
    assert_eq!(bl.boot_character_delay_ms, 10);
    // Its U-Boot takes ramdisks in a legacy image for 32-bit ARM.
    assert_eq!(bl.add_header, Some(labd::device_type::AddHeader::UBoot));
    assert_eq!(bl.mkimage_arch.as_deref(), Some("arm"));
    assert_eq!(bl.bootx["zimage"], "bootz");
    assert_eq!(bl.bootx["uimage"], "bootm");
    assert_eq!(bl.load_addresses["zimage"].dtb, "0x88000000");
    for set in ["ramdisk", "nfs", "nbd", "usb", "sata", "ums"] {
        assert!(bl.commands.contains_key(set), "{set}");
    }
    assert!(bl
        .error_messages
        .iter()
        .any(|m| m == "Retry count exceeded"));
    assert_eq!(d.dt.kernel.start_message, "Linux version [0-9]");
    assert_eq!(d.dt.timeouts.bootloader_commands, 180);
    assert_eq!(d.dt.timeouts.power_off, 10);
    assert_eq!(d.dt.timeouts.test, 180);
    for k in [
        "constants.shutdown-message",
        "constants.grub",
        "parameters.media",
        "actions.deploy.methods",
        "actions.boot.methods.dfu",
        "timeouts.connections",
    ] {
        assert!(d.ignored.iter().any(|i| i == k), "{k}: {:?}", d.ignored);
    }
    // The usb set keeps its {ROOT_PART}; only a job that boots with a set
    // labd cannot fill is refused.
    assert!(labd::device_type::unfillable(&bl.commands["usb"]).is_some());
    assert!(labd::device_type::unfillable(&bl.commands["ramdisk"]).is_none());

    // The same configuration already rendered (`lava_device_yaml`) is the
    // same board.
    let y = labd::lava_device::load_rendered(
        &l.join("device-dictionaries/bbb-01.rendered-device-config.yaml"),
        Some("beaglebone-black"),
    )
    .unwrap();
    assert_eq!(
        (y.dt.clone(), y.connect.clone()),
        (
            labd::device_type::DeviceType {
                description: y.dt.description.clone(),
                ..d.dt.clone()
            },
            d.connect.clone()
        )
    );
}

/// A lab directory with LAVA's base templates and labd's simulator
/// template side by side, as a lava-server's device-types directory.
fn templates_dir(dir: &Path) -> PathBuf {
    let t = dir.join("device-types");
    std::fs::create_dir_all(&t).unwrap();
    for f in ["base.jinja2", "base-uboot.jinja2"] {
        std::os::unix::fs::symlink(lava().join("device-types").join(f), t.join(f)).unwrap();
    }
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("device-types/lava/labd-sim.jinja2"),
        t.join("labd-sim.jinja2"),
    )
    .unwrap();
    t
}

/// The simulated board's dictionary: its console and relay are
/// `labd-sim`'s client commands, as a lab's are telnet and pduclient.
fn sim_dictionary(sim_control: &Path, extra: &str) -> String {
    let sim = format!(
        "{} --control {}",
        env!("CARGO_BIN_EXE_labd-sim"),
        sim_control.display()
    );
    format!(
        "{{% extends 'labd-sim.jinja2' %}}\n\
         {{% set connection_command = \"{sim} console sim-01\" %}}\n\
         {{% set power_on_command = \"{sim} power sim-01 on\" %}}\n\
         {{% set power_off_command = \"{sim} power sim-01 off\" %}}\n\
         {{% set hard_reset_command = \"{sim} power sim-01 reset\" %}}\n{extra}"
    )
}

/// The lab's config with its one board replaced by `board`.
fn with_board(lab: &Lab, board: &str) {
    let cfg = std::fs::read_to_string(&lab.config).unwrap();
    let start = cfg.find("[[boards]]").unwrap();
    std::fs::write(&lab.config, format!("{}{board}", &cfg[..start])).unwrap();
}

/// The simulated board by its dictionary alone, but for what no LAVA
/// device says: that its "kernel" does not run on the ramdisk labd
/// deploys (so inline definitions are typed on its shell).
const LAVA_BOARD: &str = "[[boards]]\nname = \"sim-01\"\nlava_device = \"devices/sim-01.jinja2\"\nlava_templates = \"device-types\"\n[boards.parameters]\nuses_deployed_root = false\n";

/// A board whose config is a name and a LAVA device dictionary: its device
/// type (`labd-sim`, the template it extends), console
/// (`connection_command`), relay (`power_*_command`) and U-Boot commands
/// (base-uboot's `ramdisk` set) all come from the rendered dictionary, and a
/// LAVA job for it runs to the end; a reload renders it again.
#[test]
fn a_board_configured_only_by_a_lava_dictionary_runs_a_job() {
    rt().block_on(async {
        let mut lab = Lab::prepare(1, &[], &[], "");
        templates_dir(lab.dir.path());
        let devices = lab.dir.path().join("devices");
        std::fs::create_dir_all(&devices).unwrap();
        let dict = devices.join("sim-01.jinja2");
        std::fs::write(&dict, sim_dictionary(&lab.sim_control, "")).unwrap();
        with_board(&lab, LAVA_BOARD);
        lab.start_labd();
        // What the dictionary says that labd reads past, in one warning.
        let warning = lab.wait_log("keys labd ignores");
        assert!(
            warning.contains("board sim-01") && warning.contains("constants.shutdown-message"),
            "{warning}"
        );
        let mut c = lab.client().await;
        let b = board(&mut c, "sim-01").await;
        assert_eq!(b["device_type"], "labd-sim", "{b}");

        let text = lab
            .job("lava-dict", "medium", &["lava-test-case t --shell true"])
            .replace("device_type: sim-uboot", "device_type: labd-sim");
        let id = submit(&mut c, &text).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete", "{end}\n{log}");
        assert_eq!(results(&mut c, id).await, [("t".into(), "pass".into())]);
        // base-uboot's commands, not the YAML sim type's: limits, dhcp,
        // and the port from the template's own first command.
        for cmd in [
            "setenv tftpdstp ",
            "setenv initrd_high 0xffffffff",
            "dhcp",
            "booti 0x40400000 0x44000000:${initrd_size} 0x43000000",
        ] {
            assert!(log.contains(cmd), "{cmd}:\n{log}");
        }
        // The tee line of LAVA's set is left out: labd deploys no tee.
        assert!(!log.contains("{TEE"), "{log}");
        // The relay was the dictionary's commands: the board is off again.
        assert!(powered(&lab).await.is_empty());

        // A command set labd cannot fill is refused at submit, naming it.
        let usb = text.replace("commands: ramdisk", "commands: usb");
        let e = c.submit(&usb, "j.yaml").await.unwrap_err().to_string();
        assert!(
            e.contains("`usb`") && e.contains("{ROOT_PART}") && e.contains("cannot fill"),
            "{e}"
        );

        // A reload renders the dictionary again: a changed one restarts
        // the board, a broken one is refused naming its line.
        std::fs::write(
            &dict,
            sim_dictionary(&lab.sim_control, "{% set boot_character_delay = 1 %}\n"),
        )
        .unwrap();
        let v = c.call(RequestBody::Reload).await.unwrap();
        assert_eq!(
            v["changes"][0], "board sim-01 restarted with its new config",
            "{v}"
        );
        let id = submit(&mut c, &text).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete", "{end}\n{log}");
        std::fs::write(&dict, sim_dictionary(&lab.sim_control, "{% set x = %}\n")).unwrap();
        let e = c.call(RequestBody::Reload).await.unwrap_err().to_string();
        assert!(e.contains("sim-01.jinja2:6"), "{e}");
    });
}

/// Refusals at config load: they name the config key, and for a template
/// the file and line, and change nothing (the daemon does not start).
#[test]
fn bad_dictionaries_are_refused_naming_where() {
    let dir = tempfile::tempdir().unwrap();
    let t = templates_dir(dir.path());
    let load = |dict: &str| {
        std::fs::write(dir.path().join("d.jinja2"), dict).unwrap();
        let cfg = format!(
            "state_dir = \"state\"\n[[boards]]\nname = \"b\"\nlava_device = \"d.jinja2\"\nlava_templates = \"{}\"\n",
            t.display()
        );
        std::fs::write(dir.path().join("lab.toml"), cfg).unwrap();
        LabConfig::load(&dir.path().join("lab.toml")).map(|c| c.boards.into_iter().next().unwrap())
    };
    let ctl = Path::new("/run/sim.sock");

    // It loads as it should, to start with.
    let b = load(&sim_dictionary(ctl, "")).unwrap();
    assert_eq!(b.device_type, "labd-sim");
    assert!(
        matches!(&b.console, ConsoleConfig::Command { command, .. } if command.last().map(String::as_str) == Some("sim-01"))
    );
    assert!(matches!(
        &b.power,
        PowerConfig::Command { reset: Some(_), .. }
    ));

    // An unknown template.
    let e = load("{% extends 'no-such-board.jinja2' %}\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("template not found") && e.contains("no-such-board.jinja2"),
        "{e}"
    );
    assert!(e.contains("boards[0].lava_device"), "{e}");

    // A syntax error in the dictionary, at its line.
    let e = load(&sim_dictionary(ctl, "{% set broken = [1, %}\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("d.jinja2:6"), "{e}");
    assert!(e.contains("syntax error"), "{e}");

    // A syntax error in a device-type template, at the template's line.
    std::fs::write(
        t.join("broken.jinja2"),
        "{% extends 'base-uboot.jinja2' %}\n{% set a = 1 %}\n{% if %}\n",
    )
    .unwrap();
    let e = load("{% extends 'broken.jinja2' %}\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("{}:3", t.join("broken.jinja2").display())),
        "{e}"
    );

    // A key labd cannot honour, at its place in the rendered YAML.
    let e = load(&sim_dictionary(
        ctl,
        "{% set pre_power_command = 'usb-hub on' %}\n",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("(commands.pre_power_command)") && e.contains("(rendered)"),
        "{e}"
    );
    let e = load(&sim_dictionary(
        ctl,
        "{% set environment = {'FOO': 'bar'} %}\n",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("(environment)"), "{e}");

    // A dictionary without power off, and a board without a console.
    let e = load("{% extends 'labd-sim.jinja2' %}\n{% set connection_command = 'telnet h 1' %}\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("boards[0].power") && e.contains("power_off"),
        "{e}"
    );
    let e = load("{% extends 'labd-sim.jinja2' %}\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("boards[0].console"), "{e}");

    // The daemon itself refuses such a config at start.
    std::fs::write(dir.path().join("d.jinja2"), "{% extends 'nope.jinja2' %}\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_labd"))
        .arg("--config")
        .arg(dir.path().join("lab.toml"))
        .env_remove("LABD_SOCKET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("template not found"), "{err}");
}
