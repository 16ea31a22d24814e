//! LAVA device configuration as a labd board: a device dictionary
//! (`{% extends 'beaglebone-black.jinja2' %}` and `{% set ... %}` lines)
//! rendered through LAVA's device-type templates, or a device YAML already
//! rendered, read into a [`DeviceType`] and the board's console and power
//! commands.
//!
//! A lab moving from LAVA keeps its dictionaries and its lava-server's
//! `dispatcher-config/device-types` directory as they are; labd renders
//! them the way lava-server does (Jinja2 with `trim_blocks`, no
//! `lstrip_blocks`, the trailing newline dropped, the dictionary's own
//! directory and the templates directory searched for `extends`), so the
//! rendered YAML is the one lava-dispatcher would get.
//!
//! Every key of the rendered YAML is either honoured (mapped onto labd's
//! device type or board), ignored (it only matters to features labd does
//! not have, and a job asking for those is refused at submit; the keys are
//! listed in [`LavaDevice::ignored`] for one warning), or refused here,
//! naming its key path, line and column: a key whose value would change
//! what labd does to the board in a way labd cannot follow.
//!
//! This module owns rendering and mapping only; it reads the files it was
//! given and nothing else, and starts nothing.

use crate::device_type::{invalid, Bootloader, DeviceType, Kernel, LoadAddresses, PhaseTimeouts};
use crate::error::ConfigError;
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::Node;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A board's LAVA device configuration, as labd runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct LavaDevice {
    /// The file it came from (the dictionary, or the rendered YAML).
    pub source: String,
    /// The device type: the template the dictionary extends, without
    /// `.jinja2`, or the rendered YAML's `devicetype`.
    pub device_type: String,
    /// What the board's jobs run with.
    pub dt: DeviceType,
    /// `commands.connect` (or the primary of `commands.connections`), as argv.
    pub connect: Option<Vec<String>>,
    /// `commands.power_on`, each command as argv, run in order.
    pub power_on: Vec<Vec<String>>,
    /// `commands.power_off`.
    pub power_off: Vec<Vec<String>>,
    /// `commands.hard_reset`.
    pub hard_reset: Vec<Vec<String>>,
    /// Key paths labd reads past: what only features labd lacks would use.
    pub ignored: Vec<String>,
}

/// Renders a device dictionary with the device-type templates in
/// `templates`, as lava-server does; errors name the template file and line.
pub fn render(dictionary: &Path, templates: &Path) -> Result<String, ConfigError> {
    let shown = dictionary.display().to_string();
    let name = dictionary
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| invalid(&shown, None, None, "not a file name".into()))?
        .to_owned();
    let dict_dir = dictionary
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    if !templates.is_dir() {
        return Err(ConfigError::Io {
            path: templates.display().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the device-type templates directory (lava_templates) is not a directory",
            ),
        });
    }
    // The dictionary itself must be there: a missing one is an I/O error
    // about that file, not a template not found.
    std::fs::metadata(dictionary).map_err(|e| ConfigError::Io {
        path: shown.clone(),
        source: e,
    })?;
    let mut env = minijinja::Environment::new();
    // lava-server's environment: `trim_blocks=True`, `autoescape=False`,
    // everything else Jinja2's defaults (no lstrip_blocks, the trailing
    // newline dropped, undefined variables rendering as nothing).
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(false);
    env.set_keep_trailing_newline(false);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    // lava-server's loader searches the dictionaries' directory and then the
    // device types'; a dictionary extends a device type by its file name.
    let by_dict = minijinja::path_loader(&dict_dir);
    let by_type = minijinja::path_loader(templates);
    env.set_loader(move |n| match by_dict(n)? {
        Some(t) => Ok(Some(t)),
        None => by_type(n),
    });
    env.set_formatter(python_format);
    env.set_unknown_method_callback(python_methods);
    let dirs = [dict_dir.clone(), templates.to_path_buf()];
    let where_ = |e: &minijinja::Error| {
        let file = e.name().map(|n| {
            dirs.iter()
                .map(|d| d.join(n))
                .find(|p| p.is_file())
                .map_or_else(|| n.to_owned(), |p| p.display().to_string())
        });
        (file.unwrap_or_else(|| shown.clone()), e.line())
    };
    let describe = |e: &minijinja::Error| {
        let mut msg = match e.kind() {
            minijinja::ErrorKind::TemplateNotFound => format!(
                "template not found: {} (looked in {} and {})",
                e.detail().unwrap_or_default(),
                dict_dir.display(),
                templates.display()
            ),
            _ => match e.detail() {
                Some(d) => format!("{}: {d}", e.kind()),
                None => e.kind().to_string(),
            },
        };
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            msg.push_str(&format!("; {s}"));
            src = s.source();
        }
        msg
    };
    let fail = |e: minijinja::Error| {
        let (file, line) = where_(&e);
        invalid(&file, None, line.map(|l| (l, 0)), describe(&e))
    };
    let tmpl = env.get_template(&name).map_err(fail)?;
    tmpl.render(minijinja::context! {}).map_err(fail)
}

/// The device type a dictionary extends: `beaglebone-black` for
/// `{% extends 'beaglebone-black.jinja2' %}`.
pub fn extends(file: &str, text: &str) -> Result<String, ConfigError> {
    // Comments (`{# ... #}`) may show an example; blanked, not removed, so
    // that line numbers stay.
    let mut plain = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{#") {
        plain.push_str(&rest[..start]);
        let end = rest[start..]
            .find("#}")
            .map_or(rest.len(), |e| start + e + 2);
        plain.extend(rest[start..end].chars().filter(|c| *c == '\n'));
        rest = &rest[end..];
    }
    plain.push_str(rest);
    for (i, line) in plain.lines().enumerate() {
        let t = line.trim();
        let Some(rest) = t.strip_prefix("{%") else {
            continue;
        };
        let rest = rest.trim_start_matches('-').trim_start();
        let Some(arg) = rest.strip_prefix("extends") else {
            continue;
        };
        let arg = arg
            .trim()
            .trim_end_matches("%}")
            .trim_end_matches('-')
            .trim();
        let name = arg.trim_matches(|c| c == '\'' || c == '"');
        let stem = name.strip_suffix(".jinja2").unwrap_or(name);
        if stem.is_empty() || stem.contains('/') {
            return Err(invalid(
                file,
                Some("extends".into()),
                Some((i + 1, 1)),
                format!("cannot tell the device type from `{t}`"),
            ));
        }
        return Ok(stem.to_owned());
    }
    Err(invalid(
        file,
        Some("extends".into()),
        None,
        "a device dictionary extends its device type's template (`{% extends 'beaglebone-black.jinja2' %}`); this one does not".into(),
    ))
}

/// Reads a device dictionary: renders it and maps the result.
pub fn load_dictionary(dictionary: &Path, templates: &Path) -> Result<LavaDevice, ConfigError> {
    let shown = dictionary.display().to_string();
    let text = std::fs::read_to_string(dictionary).map_err(|e| ConfigError::Io {
        path: shown.clone(),
        source: e,
    })?;
    let device_type = extends(&shown, &text)?;
    let rendered = render(dictionary, templates)?;
    // Errors in the rendered text name the dictionary and say it was rendered.
    from_yaml(
        &format!("{shown} (rendered)"),
        &rendered,
        Some(&device_type),
    )
    .map(|d| LavaDevice { source: shown, ..d })
}

/// Reads an already rendered device YAML; `device_type` is the board's when
/// the file's `devicetype` is empty (lava-server fills it only for a job).
pub fn load_rendered(path: &Path, device_type: Option<&str>) -> Result<LavaDevice, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
        path: shown.clone(),
        source: e,
    })?;
    from_yaml(&shown, &text, device_type)
}

/// Maps a rendered device configuration onto labd's device type and board.
pub fn from_yaml(
    file: &str,
    text: &str,
    device_type: Option<&str>,
) -> Result<LavaDevice, ConfigError> {
    let node = marked_yaml::parse_yaml(0, pyyaml_compatible(text)).map_err(|e| {
        let at = crate::device_type::load_error_location(&e);
        invalid(file, None, at, e.to_string())
    })?;
    let Some(root) = node.as_mapping() else {
        return Err(invalid(
            file,
            None,
            None,
            "a device configuration is a mapping".into(),
        ));
    };
    let mut m = Mapper {
        file,
        ignored: Vec::new(),
        s: Settings::default(),
    };
    m.root(root)?;
    let s = m.s;
    let named = device_type.filter(|d| !d.is_empty());
    let from_file = s.devicetype.clone().filter(|d| !d.is_empty());
    let name = match (named, from_file) {
        (Some(a), Some(b)) if a != b => {
            return Err(invalid(
                file,
                Some("devicetype".into()),
                None,
                format!("the device type is `{b}` here but `{a}` for the board"),
            ))
        }
        (Some(a), _) => a.to_owned(),
        (None, Some(b)) => b,
        (None, None) => {
            return Err(invalid(
                file,
                Some("devicetype".into()),
                None,
                "no device type: `devicetype` is empty; give the board's `device_type`".into(),
            ))
        }
    };
    let delay = s.boot_delay.max(s.test_delay);
    let bootloader = match s.uboot {
        None => None,
        Some(u) => {
            let (bootx, load_addresses) = (s.bootx, s.load_addresses);
            Some(Bootloader {
                prompt: u.prompt.unwrap_or_else(|| "=>".into()),
                interrupt_prompt: u
                    .interrupt_prompt
                    .or(s.uboot_constants.interrupt_prompt)
                    .unwrap_or_else(|| "Hit any key to stop autoboot".into()),
                interrupt_char: u
                    .interrupt_char
                    .or(s.uboot_constants.interrupt_char)
                    .unwrap_or_else(|| " ".into()),
                interrupt_ctrl_list: u
                    .interrupt_ctrl_list
                    .or(s.uboot_constants.interrupt_ctrl_list)
                    .unwrap_or_default(),
                interrupt_newline: s.uboot_constants.interrupt_newline.unwrap_or(true),
                needs_interrupt: u.needs_interrupt.unwrap_or(true),
                error_messages: s.uboot_constants.error_messages.unwrap_or_default(),
                boot_character_delay_ms: delay,
                load_addresses,
                bootx,
                commands: u.commands,
                add_header: s.add_header.then_some(crate::device_type::AddHeader::UBoot),
                mkimage_arch: s.mkimage_arch,
            })
        }
    };
    let start_message = s
        .boot_message
        .or(s.kernel_start_message)
        .unwrap_or_else(|| "Linux version [0-9]".into());
    let dt = DeviceType {
        name: name.clone(),
        description: Some(format!("LAVA device configuration {file}")),
        console_baud: 115200,
        bootloader,
        direct_boot: None,
        kernel: Kernel {
            start_message,
            // lava-dispatcher's own list, not the device's: a kernel that
            // panics ends the boot.
            error_messages: vec!["Kernel panic - not syncing".into()],
        },
        login: None,
        // LAVA's prompt is text (`lava-test: # `), labd's a regex.
        shell_prompt: regex::escape(s.default_shell_prompt.as_deref().unwrap_or("lava-test: # ")),
        timeouts: s.timeouts,
        health_check: None,
        // A LAVA device is a real board, whose kernel runs on what labd
        // deploys; a simulated one says otherwise in its board's
        // `parameters` (see tests/devices.rs).
        uses_deployed_root: true,
    };
    dt.validate(file)?;
    Ok(LavaDevice {
        source: file.to_owned(),
        device_type: name,
        dt,
        connect: s.connect,
        power_on: s.power_on,
        power_off: s.power_off,
        hard_reset: s.hard_reset,
        ignored: m.ignored,
    })
}

/// What the walk over the rendered YAML collected.
#[derive(Default)]
struct Settings {
    devicetype: Option<String>,
    boot_delay: u64,
    test_delay: u64,
    uboot_constants: UbootConstants,
    kernel_start_message: Option<String>,
    boot_message: Option<String>,
    default_shell_prompt: Option<String>,
    connect: Option<Vec<String>>,
    power_on: Vec<Vec<String>>,
    power_off: Vec<Vec<String>>,
    hard_reset: Vec<Vec<String>>,
    load_addresses: BTreeMap<String, LoadAddresses>,
    bootx: BTreeMap<String, String>,
    uboot: Option<Uboot>,
    timeouts: PhaseTimeouts,
    add_header: bool,
    mkimage_arch: Option<String>,
}

#[derive(Default)]
struct UbootConstants {
    interrupt_prompt: Option<String>,
    interrupt_char: Option<String>,
    interrupt_ctrl_list: Option<Vec<String>>,
    interrupt_newline: Option<bool>,
    error_messages: Option<Vec<String>>,
}

#[derive(Default)]
struct Uboot {
    prompt: Option<String>,
    interrupt_prompt: Option<String>,
    interrupt_char: Option<String>,
    interrupt_ctrl_list: Option<Vec<String>>,
    needs_interrupt: Option<bool>,
    commands: BTreeMap<String, Vec<String>>,
}

/// The boot commands' kernel types: LAVA keys load addresses by the boot
/// command, labd by the kernel type the job deploys.
const BOOT_COMMANDS: &[(&str, &str)] =
    &[("bootz", "zimage"), ("bootm", "uimage"), ("booti", "image")];

struct Mapper<'a> {
    file: &'a str,
    ignored: Vec<String>,
    s: Settings,
}

type R<T = ()> = Result<T, ConfigError>;

impl Mapper<'_> {
    fn refuse(&self, path: &str, node: &Node, message: impl Into<String>) -> ConfigError {
        invalid(self.file, Some(path.to_owned()), mark(node), message.into())
    }

    /// Notes a key labd reads past; an empty one is not worth a word.
    fn ignore(&mut self, path: &str, node: &Node) {
        if !is_null(node) {
            self.ignored.push(path.to_owned());
        }
    }

    fn map<'n>(&self, path: &str, node: &'n Node) -> R<&'n MarkedMappingNode> {
        node.as_mapping()
            .ok_or_else(|| self.refuse(path, node, "must be a mapping"))
    }

    fn string(&self, path: &str, node: &Node) -> R<String> {
        match node.as_scalar() {
            Some(s) => Ok(s.as_str().to_owned()),
            None => Err(self.refuse(path, node, "must be a string")),
        }
    }

    fn strings(&self, path: &str, node: &Node) -> R<Vec<String>> {
        if is_null(node) {
            return Ok(Vec::new());
        }
        let Some(seq) = node.as_sequence() else {
            return Err(self.refuse(path, node, "must be a list of strings"));
        };
        seq.iter()
            .enumerate()
            .map(|(i, n)| self.string(&format!("{path}[{i}]"), n))
            .collect()
    }

    fn boolean(&self, path: &str, node: &Node) -> R<bool> {
        node.as_scalar()
            .and_then(yaml_bool)
            .ok_or_else(|| self.refuse(path, node, "must be true or false"))
    }

    fn number(&self, path: &str, node: &Node) -> R<u64> {
        node.as_scalar()
            .filter(|s| s.may_coerce())
            .and_then(|s| s.as_str().parse().ok())
            .ok_or_else(|| self.refuse(path, node, "must be a whole number"))
    }

    /// A LAVA command: a string, or a list of strings run in order; each
    /// split into argv as lava-dispatcher splits it (no shell).
    fn commands(&self, path: &str, node: &Node) -> R<Vec<Vec<String>>> {
        let list = match node.as_sequence() {
            Some(_) => self.strings(path, node)?,
            None if is_null(node) => Vec::new(),
            None => vec![self.string(path, node)?],
        };
        list.iter()
            .enumerate()
            .map(|(i, c)| {
                let at = if node.as_sequence().is_some() {
                    format!("{path}[{i}]")
                } else {
                    path.to_owned()
                };
                match shlex::split(c) {
                    Some(argv) if !argv.is_empty() => Ok(argv),
                    _ => Err(self.refuse(&at, node, format!("cannot split `{c}` into a command"))),
                }
            })
            .collect()
    }

    fn root(&mut self, root: &MarkedMappingNode) -> R {
        for (k, v) in root.iter() {
            let key = k.as_str();
            match key {
                "character_delays" => self.character_delays(v)?,
                // The scheduler's: which host and type lava-server scheduled on.
                "hostname" => {}
                "devicetype" => {
                    let d = self.string(key, v)?;
                    self.s.devicetype = Some(d);
                }
                "constants" => self.constants(v)?,
                "commands" => self.lava_commands(v)?,
                "parameters" => self.parameters(v)?,
                "actions" => self.actions(v)?,
                "timeouts" => self.timeouts(v)?,
                // Only fastboot's deploy and boot use these; labd refuses
                // such jobs at submit.
                "adb_serial_number"
                | "fastboot_serial_number"
                | "fastboot_options"
                | "fastboot_via_uboot"
                | "flash_cmds_order" => self.ignore(key, v),
                "device_info" | "static_info" | "storage_info" => {
                    if !is_null(v) {
                        return Err(self.refuse(
                            key,
                            v,
                            "labd does not pass USB devices, probes or storage to a job's tests",
                        ));
                    }
                }
                "environment" => {
                    if !is_null(v) {
                        return Err(self.refuse(
                            key,
                            v,
                            "labd does not export a device's environment to its tests",
                        ));
                    }
                }
                other => {
                    return Err(self.refuse(
                        other,
                        v,
                        format!("`{other}` is not a device configuration key labd knows"),
                    ))
                }
            }
        }
        Ok(())
    }

    fn character_delays(&mut self, v: &Node) -> R {
        if is_null(v) {
            return Ok(());
        }
        for (k, d) in self.map("character_delays", v)?.iter() {
            let path = format!("character_delays.{}", k.as_str());
            match k.as_str() {
                "boot" => self.s.boot_delay = self.number(&path, d)?,
                // labd types into the test shell with the same delay: the
                // larger of the two keeps a slow UART safe for both.
                "test" => self.s.test_delay = self.number(&path, d)?,
                // labd types nothing while it deploys.
                "deploy" => self.ignore(&path, d),
                other => return Err(self.refuse(&path, d, format!("unknown delay `{other}`"))),
            }
        }
        Ok(())
    }

    fn constants(&mut self, v: &Node) -> R {
        for (k, c) in self.map("constants", v)?.iter() {
            let path = format!("constants.{}", k.as_str());
            match k.as_str() {
                "posix" => self.posix(c)?,
                "u-boot" => self.uboot_constants(c)?,
                "kernel-start-message" => {
                    self.s.kernel_start_message = Some(self.string(&path, c)?)
                }
                "default-shell-prompt" => {
                    self.s.default_shell_prompt = Some(self.string(&path, c)?)
                }
                // Other bootloaders' (labd boots U-Boot), the reboot
                // message (labd never reboots from a shell), pexpect's
                // buffer, and LAVA's retries (a job's own `failure_retry`
                // is honoured).
                "barebox" | "grub" | "grub-efi" | "ipxe" | "depthcharge" | "shutdown-message"
                | "spawn_maxread" | "failure_retry" | "boot_retry" => self.ignore(&path, c),
                other => return Err(self.refuse(&path, c, format!("unknown constant `{other}`"))),
            }
        }
        Ok(())
    }

    /// LAVA's test shell settings; labd's overlay follows LAVA's defaults
    /// and cannot follow others.
    fn posix(&mut self, v: &Node) -> R {
        for (k, c) in self.map("constants.posix", v)?.iter() {
            let path = format!("constants.posix.{}", k.as_str());
            let wanted = match k.as_str() {
                "lava_test_sh_cmd" => "/bin/sh",
                "lava_test_results_dir" => "/lava-%s",
                // Read by LAVA's own login shells only.
                "lava_test_shell_file" => {
                    self.ignore(&path, c);
                    continue;
                }
                other => return Err(self.refuse(&path, c, format!("unknown constant `{other}`"))),
            };
            let got = self.string(&path, c)?;
            if got != wanted {
                return Err(self.refuse(
                    &path,
                    c,
                    format!("labd's test shell uses `{wanted}`, not `{got}`"),
                ));
            }
        }
        Ok(())
    }

    fn uboot_constants(&mut self, v: &Node) -> R {
        for (k, c) in self.map("constants.u-boot", v)?.iter() {
            let path = format!("constants.u-boot.{}", k.as_str());
            match k.as_str() {
                "interrupt-prompt" => {
                    let s = self.string(&path, c)?;
                    self.s.uboot_constants.interrupt_prompt = Some(s);
                }
                "interrupt-character" => {
                    let s = self.string(&path, c)?;
                    self.s.uboot_constants.interrupt_char = Some(s);
                }
                "interrupt_ctrl_list" => {
                    let l = self.strings(&path, c)?;
                    self.s.uboot_constants.interrupt_ctrl_list = Some(l);
                }
                "interrupt-newline" => {
                    let b = self.boolean(&path, c)?;
                    self.s.uboot_constants.interrupt_newline = Some(b);
                }
                "error-messages" => {
                    let l = self.strings(&path, c)?;
                    self.s.uboot_constants.error_messages = Some(l);
                }
                // labd waits for the kernel's own start message instead;
                // DFU is a boot method labd does not have.
                "final-message" | "dfu-download" => self.ignore(&path, c),
                other => return Err(self.refuse(&path, c, format!("unknown constant `{other}`"))),
            }
        }
        Ok(())
    }

    fn lava_commands(&mut self, v: &Node) -> R {
        for (k, c) in self.map("commands", v)?.iter() {
            let path = format!("commands.{}", k.as_str());
            match k.as_str() {
                "connect" => {
                    let mut argv = self.commands(&path, c)?;
                    if argv.len() > 1 {
                        return Err(self.refuse(&path, c, "one connection command, not a list"));
                    }
                    self.s.connect = argv.pop();
                }
                "connections" => self.connections(c)?,
                "power_on" => self.s.power_on = self.commands(&path, c)?,
                "power_off" => self.s.power_off = self.commands(&path, c)?,
                "hard_reset" => self.s.hard_reset = self.commands(&path, c)?,
                // labd never reboots from the shell, has no recovery mode
                // and no user commands (a job's `command:` action is refused).
                "soft_reboot"
                | "recovery_mode"
                | "recovery_exit"
                | "users"
                | "must_use_connection" => self.ignore(&path, c),
                "pre_power_command" | "pre_os_command" => {
                    if !is_null(c) {
                        return Err(self.refuse(
                            &path,
                            c,
                            "labd runs no command before powering a board on or booting its OS",
                        ));
                    }
                }
                other => return Err(self.refuse(&path, c, format!("unknown command `{other}`"))),
            }
        }
        Ok(())
    }

    /// `connection_list`: labd has one console per board, the only
    /// connection or the one tagged `primary`.
    fn connections(&mut self, v: &Node) -> R {
        let conns = self.map("commands.connections", v)?;
        let mut chosen = Vec::new();
        for (name, c) in conns.iter() {
            let path = format!("commands.connections.{}", name.as_str());
            let m = self.map(&path, c)?;
            let primary = match m.get_node("tags") {
                Some(t) => self
                    .strings(&format!("{path}.tags"), t)?
                    .iter()
                    .any(|t| t == "primary"),
                None => false,
            };
            let Some(cmd) = m.get_node("connect") else {
                return Err(self.refuse(&path, c, "no `connect` command"));
            };
            let argv = self.commands(&format!("{path}.connect"), cmd)?;
            chosen.push((primary, path, argv));
        }
        let primary: Vec<_> = chosen.iter().filter(|c| c.0).collect();
        let pick = match (chosen.len(), primary.len()) {
            (1, _) => &chosen[0],
            (_, 1) => primary[0],
            _ => {
                return Err(self.refuse(
                    "commands.connections",
                    v,
                    "labd has one console per board: give one connection, or tag one `primary`",
                ))
            }
        };
        for c in &chosen {
            if c.1 != pick.1 {
                self.ignored.push(c.1.clone());
            }
        }
        self.s.connect = pick.2.first().cloned();
        Ok(())
    }

    fn parameters(&mut self, v: &Node) -> R {
        if is_null(v) {
            return Ok(());
        }
        for (k, p) in self.map("parameters", v)?.iter() {
            let key = k.as_str();
            let path = format!("parameters.{key}");
            if let Some((_, kt)) = BOOT_COMMANDS.iter().find(|(c, _)| *c == key) {
                let m = self.map(&path, p)?;
                let get = |a: &str| -> R<String> {
                    match m.get_node(a) {
                        Some(n) => self.string(&format!("{path}.{a}"), n),
                        None => Err(self.refuse(&path, p, format!("no `{a}` address"))),
                    }
                };
                let addrs = LoadAddresses {
                    kernel: get("kernel")?,
                    ramdisk: get("ramdisk")?,
                    dtb: get("dtb")?,
                };
                self.s.load_addresses.insert((*kt).to_owned(), addrs);
                self.s.bootx.insert((*kt).to_owned(), key.to_owned());
                continue;
            }
            match key {
                // The same addresses by kernel type; lava-dispatcher reads
                // them by boot command, as labd does.
                "zimage" | "uimage" | "image" => {}
                // Media, interfaces, DTB overlays and the like belong to
                // deploys and boots labd does not have; a job asking for
                // them is refused at submit.
                _ => self.ignore(&path, p),
            }
        }
        Ok(())
    }

    fn actions(&mut self, v: &Node) -> R {
        for (k, a) in self.map("actions", v)?.iter() {
            let path = format!("actions.{}", k.as_str());
            match k.as_str() {
                "deploy" => self.deploy(a)?,
                "boot" => self.boot(a)?,
                "test" => self.ignore(&path, a),
                other => return Err(self.refuse(&path, a, format!("unknown action `{other}`"))),
            }
        }
        Ok(())
    }

    fn deploy(&mut self, v: &Node) -> R {
        for (k, d) in self.map("actions.deploy", v)?.iter() {
            let path = format!("actions.deploy.{}", k.as_str());
            match k.as_str() {
                "parameters" => {
                    if is_null(d) {
                        continue;
                    }
                    for (pk, pv) in self.map(&path, d)?.iter() {
                        let pp = format!("{path}.{}", pk.as_str());
                        match pk.as_str() {
                            // labd never appends a DTB to a kernel nor
                            // boots one in place.
                            "append_dtb" | "use_xip" => {
                                if !is_null(pv) && self.boolean(&pp, pv)? {
                                    return Err(self.refuse(
                                        &pp,
                                        pv,
                                        format!("labd cannot deploy with `{}: true`", pk.as_str()),
                                    ));
                                }
                            }
                            // U-Boot wants ramdisks in a legacy image:
                            // labd wraps a bare one, as LAVA's deploy does.
                            "add_header" => match self.string(&pp, pv)?.as_str() {
                                "u-boot" => self.s.add_header = true,
                                "raw" | "" => {}
                                other => {
                                    return Err(self.refuse(
                                        &pp,
                                        pv,
                                        format!(
                                            "labd adds a `u-boot` header or none, not `{other}`"
                                        ),
                                    ))
                                }
                            },
                            "mkimage_arch" => {
                                let arch = self.string(&pp, pv)?;
                                if crate::device_type::uimage_arch(&arch).is_none() {
                                    return Err(self.refuse(
                                        &pp,
                                        pv,
                                        format!("labd knows no U-Boot architecture `{arch}`"),
                                    ));
                                }
                                self.s.mkimage_arch = Some(arch);
                            }
                            _ => self.ignore(&pp, pv),
                        }
                    }
                    if self.s.add_header && self.s.mkimage_arch.is_none() {
                        return Err(self.refuse(
                            &format!("{path}.add_header"),
                            d,
                            "`add_header: u-boot` needs `mkimage_arch`, the architecture the header names",
                        ));
                    }
                }
                // Which deploys the device allows: a job's deploy is
                // checked against what labd can do at submit.
                "methods" | "connections" => self.ignore(&path, d),
                other => return Err(self.refuse(&path, d, format!("unknown key `{other}`"))),
            }
        }
        Ok(())
    }

    fn boot(&mut self, v: &Node) -> R {
        for (k, b) in self.map("actions.boot", v)?.iter() {
            let path = format!("actions.boot.{}", k.as_str());
            match k.as_str() {
                "connections" => self.ignore(&path, b),
                "methods" => {
                    for (mk, mv) in self.map(&path, b)?.iter() {
                        let mp = format!("{path}.{}", mk.as_str());
                        match mk.as_str() {
                            "u-boot" => self.uboot(&mp, mv)?,
                            // labd boots U-Boot, `minimal` and `qemu` its
                            // own way; a job asking for another boot method
                            // is refused at submit.
                            _ => self.ignore(&mp, mv),
                        }
                    }
                }
                other => return Err(self.refuse(&path, b, format!("unknown key `{other}`"))),
            }
        }
        Ok(())
    }

    fn uboot(&mut self, path: &str, v: &Node) -> R {
        let mut u = Uboot::default();
        for (k, c) in self.map(path, v)?.iter() {
            let p = format!("{path}.{}", k.as_str());
            if k.as_str() == "parameters" {
                self.uboot_parameters(&p, c, &mut u)?;
                continue;
            }
            // Every other key is a command set, as the job's `commands:` names it.
            let m = self.map(&p, c)?;
            let Some(cmds) = m.get_node("commands") else {
                return Err(self.refuse(&p, c, "a command set has `commands`"));
            };
            for (ck, _) in m.iter() {
                if ck.as_str() != "commands" {
                    let cp = format!("{p}.{}", ck.as_str());
                    return Err(self.refuse(&cp, c, format!("unknown key `{}`", ck.as_str())));
                }
            }
            let list = self.strings(&format!("{p}.commands"), cmds)?;
            u.commands.insert(k.as_str().to_owned(), list);
        }
        self.s.uboot = Some(u);
        Ok(())
    }

    fn uboot_parameters(&mut self, path: &str, v: &Node, u: &mut Uboot) -> R {
        for (k, c) in self.map(path, v)?.iter() {
            let p = format!("{path}.{}", k.as_str());
            match k.as_str() {
                "bootloader_prompt" => u.prompt = Some(self.string(&p, c)?),
                "interrupt_prompt" => u.interrupt_prompt = Some(self.string(&p, c)?),
                "interrupt_char" => u.interrupt_char = Some(self.string(&p, c)?),
                "interrupt_ctrl_list" => u.interrupt_ctrl_list = Some(self.strings(&p, c)?),
                "needs_interrupt" => u.needs_interrupt = Some(self.boolean(&p, c)?),
                "boot_message" => self.s.boot_message = Some(self.string(&p, c)?),
                // DTB overlays, USB mass storage and fastboot are deploys
                // labd does not have; {LAVA_MAC} is refused where a boot
                // command uses it.
                "apply_dtbo_commands"
                | "uboot_ums_flash"
                | "uboot_mass_storage_device"
                | "lava_mac"
                | "fastboot" => self.ignore(&p, c),
                "uboot_altbank" | "uboot_altbank_cmd" => {
                    if !is_null(c) {
                        return Err(self.refuse(
                            &p,
                            c,
                            "labd cannot switch U-Boot to its other bank",
                        ));
                    }
                }
                other => {
                    return Err(self.refuse(&p, c, format!("unknown U-Boot parameter `{other}`")))
                }
            }
        }
        Ok(())
    }

    fn timeouts(&mut self, v: &Node) -> R {
        for (k, t) in self.map("timeouts", v)?.iter() {
            let path = format!("timeouts.{}", k.as_str());
            match k.as_str() {
                "actions" => {
                    for (ak, av) in self.map(&path, t)?.iter() {
                        let ap = format!("{path}.{}", ak.as_str());
                        let secs = self.duration(&ap, av)?;
                        let t = &mut self.s.timeouts;
                        match ak.as_str() {
                            "tftp-deploy" => t.deploy = secs,
                            // lava-dispatcher's power-on is `reset-device`
                            // (or `power-on`); labd's power-on phase is
                            // the same power cycle.
                            "power-on" | "reset-device" => t.power_on = secs,
                            "power-off" => t.power_off = secs,
                            "bootloader-interrupt" => t.bootloader_interrupt = secs,
                            "bootloader-commands" => t.bootloader_commands = secs,
                            "auto-login-action" => t.auto_login = secs,
                            "lava-test-shell" => t.test = secs,
                            // Actions labd does not have.
                            _ => self.ignore(&ap, av),
                        }
                    }
                }
                // labd bounds each wait by a job's own connection timeout;
                // it has none per action.
                "connections" => self.ignore(&path, t),
                other => return Err(self.refuse(&path, t, format!("unknown key `{other}`"))),
            }
        }
        Ok(())
    }

    /// LAVA's `{minutes: 3}` (days, hours, minutes, seconds), in seconds.
    fn duration(&self, path: &str, v: &Node) -> R<u64> {
        let mut secs = 0u64;
        for (k, n) in self.map(path, v)?.iter() {
            let p = format!("{path}.{}", k.as_str());
            let unit = match k.as_str() {
                "days" => 86400,
                "hours" => 3600,
                "minutes" => 60,
                "seconds" => 1,
                other => return Err(self.refuse(&p, n, format!("unknown unit `{other}`"))),
            };
            secs = secs.saturating_add(self.number(&p, n)?.saturating_mul(unit));
        }
        Ok(secs)
    }
}

/// The rendered text with what PyYAML reads but marked-yaml's scanner
/// refuses made plain: a quoted scalar whose next line starts left of its
/// key, as base.jinja2 renders barebox's `interrupt-character: '\n'`.
/// Such a line's leading blanks are dropped when the scalar is read
/// anyway (YAML folds a quoted scalar's lines), so indenting it changes no
/// value; lines are kept, so every error's line number stays right.
pub fn pyyaml_compatible(text: &str) -> std::borrow::Cow<'_, str> {
    // (quote, indentation of the line the scalar opened on)
    let mut open: Option<(char, usize)> = None;
    let mut changed = false;
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.split_inclusive('\n') {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let mut from = 0;
        if let Some((_, at)) = open {
            let body = line.trim_start_matches([' ', '\t']);
            if indent <= at && !body.trim().is_empty() {
                out.push_str(&" ".repeat(at + 1));
                out.push_str(body);
                changed = true;
                from = line.len() - body.len();
            } else {
                out.push_str(line);
            }
        } else {
            out.push_str(line);
        }
        let chars: Vec<char> = line[from..].chars().collect();
        let mut i = 0;
        let mut prev = None::<char>;
        let mut start_of_line = from == 0;
        while i < chars.len() {
            let c = chars[i];
            match open {
                Some((q, _)) => {
                    if q == '\'' && c == '\'' {
                        if chars.get(i + 1) == Some(&'\'') {
                            i += 1;
                        } else {
                            open = None;
                        }
                    } else if q == '"' && c == '\\' {
                        i += 1;
                    } else if q == '"' && c == '"' {
                        open = None;
                    }
                }
                None => {
                    if c == '#' && (start_of_line || prev.is_some_and(|p| p == ' ')) {
                        break;
                    }
                    let starts = start_of_line
                        || prev.is_some_and(|p| matches!(p, ':' | '-' | ',' | '[' | '{' | '?'));
                    if (c == '\'' || c == '"') && starts {
                        open = Some((c, indent));
                    }
                }
            }
            if c != ' ' && c != '\t' {
                prev = Some(c);
                start_of_line = false;
            }
            i += 1;
        }
    }
    if changed {
        std::borrow::Cow::Owned(out)
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// YAML 1.1's booleans, as PyYAML (lava-dispatcher's) reads them.
fn yaml_bool(s: &MarkedScalarNode) -> Option<bool> {
    if !s.may_coerce() {
        return None;
    }
    match s.as_str().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" => Some(true),
        "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// An empty value (`key:` with nothing after it, `~`, `null`).
fn is_null(n: &Node) -> bool {
    match n {
        Node::Scalar(s) => {
            s.may_coerce() && matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL")
        }
        Node::Mapping(m) => m.is_empty(),
        Node::Sequence(q) => q.is_empty(),
    }
}

fn mark(n: &Node) -> Option<(usize, usize)> {
    n.span().start().map(|m| (m.line(), m.column()))
}

/// Prints a value as Python's `str()` does, as Jinja2 prints it: `True`,
/// `None`, `['a', 'b']`, so that what LAVA's templates print reads the
/// same in the YAML as under lava-server.
fn python_format(
    out: &mut minijinja::Output<'_>,
    state: &minijinja::State<'_, '_>,
    value: &minijinja::Value,
) -> Result<(), minijinja::Error> {
    use minijinja::value::ValueKind;
    match value.kind() {
        ValueKind::String | ValueKind::Number | ValueKind::Undefined => {
            minijinja::escape_formatter(out, state, value)
        }
        _ => out
            .write_str(&python_repr(value, true))
            .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::WriteFailure, e.to_string())),
    }
}

/// Python's `repr()` of a value (its `str()` at the top level for
/// strings and numbers).
fn python_repr(value: &minijinja::Value, top: bool) -> String {
    use minijinja::value::ValueKind;
    match value.kind() {
        ValueKind::None | ValueKind::Undefined => "None".into(),
        ValueKind::Bool => if value.is_true() { "True" } else { "False" }.into(),
        ValueKind::String => {
            let s = value.as_str().unwrap_or_default();
            if top {
                return s.to_owned();
            }
            crate::job::python_str_repr(s)
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<String> = value
                .try_iter()
                .map(|it| it.map(|v| python_repr(&v, false)).collect())
                .unwrap_or_default();
            format!("[{}]", items.join(", "))
        }
        ValueKind::Map => {
            let items: Vec<String> = value
                .try_iter()
                .map(|it| {
                    it.map(|k| {
                        let v = value.get_item(&k).unwrap_or_default();
                        format!("{}: {}", python_repr(&k, false), python_repr(&v, false))
                    })
                    .collect()
                })
                .unwrap_or_default();
            format!("{{{}}}", items.join(", "))
        }
        _ => value.to_string(),
    }
}

/// The few Python methods LAVA's templates call on dictionaries
/// (`connection_commands.get(hardware)`, `user_commands.items()`).
fn python_methods(
    _state: &minijinja::State,
    value: &minijinja::Value,
    method: &str,
    args: &[minijinja::Value],
) -> Result<minijinja::Value, minijinja::Error> {
    use minijinja::value::{Value, ValueKind};
    use minijinja::{Error, ErrorKind};
    if value.kind() != ValueKind::Map {
        return Err(Error::from(ErrorKind::UnknownMethod));
    }
    let keys = || -> Vec<Value> { value.try_iter().map(|i| i.collect()).unwrap_or_default() };
    match (method, args) {
        ("get", [k]) | ("get", [k, _]) => {
            let v = value.get_item(k)?;
            Ok(if v.is_undefined() {
                args.get(1).cloned().unwrap_or(Value::from(()))
            } else {
                v
            })
        }
        ("keys", []) => Ok(Value::from(keys())),
        ("values", []) => Ok(Value::from(
            keys()
                .iter()
                .map(|k| value.get_item(k).unwrap_or_default())
                .collect::<Vec<_>>(),
        )),
        ("items", []) => Ok(Value::from(
            keys()
                .into_iter()
                .map(|k| {
                    let v = value.get_item(&k).unwrap_or_default();
                    Value::from(vec![k, v])
                })
                .collect::<Vec<_>>(),
        )),
        _ => Err(Error::from(ErrorKind::UnknownMethod)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UBOOT: &str = "
character_delays:
  boot: 5
  test: 20
constants:
  u-boot:
    interrupt-prompt: 'Autoboot in'
    interrupt-character: 'x'
    interrupt_ctrl_list: ['c']
    interrupt-newline: False
    final-message: 'Starting kernel'
    error-messages:
      - 'Resetting CPU'
  shutdown-message: 'going down'
  kernel-start-message: 'Booting Linux'
  default-shell-prompt: 'lava-test: # '
commands:
  connect: telnet localhost 7001
  power_on: ['relay 1 on', \"relay 'port 2' on\"]
  power_off: relay 1 off
  hard_reset: relay 1 cycle
parameters:
  bootz: {kernel: '0x82000000', ramdisk: '0x83000000', dtb: '0x88000000', tee: '0x83000000'}
  zimage: {kernel: '0x82000000', ramdisk: '0x83000000', dtb: '0x88000000'}
  media: {usb: {}}
actions:
  deploy:
    parameters:
      add_header: u-boot
      mkimage_arch: arm
      append_dtb: False
  boot:
    methods:
      minimal:
      u-boot:
        parameters:
          bootloader_prompt: '=>'
          interrupt_char: ''
          needs_interrupt: True
        ramdisk:
          commands: ['tftp {KERNEL_ADDR} {KERNEL}', 'tftp {TEE_ADDR} {TEE}', '{BOOTX}']
        nfs:
          commands: ['setenv bootargs root=/dev/nfs nfsroot={NFS_SERVER_IP}:{NFSROOTFS}', '{BOOTX}']
timeouts:
  actions:
    bootloader-commands: {minutes: 4}
    power-off: {seconds: 12}
    reset-device: {seconds: 40}
    dd-image: {minutes: 10}
  connections:
    bootloader-commands: {seconds: 30}
";

    #[test]
    fn a_rendered_configuration_maps_onto_the_device_type_and_board() {
        let d = from_yaml("d.yaml", UBOOT, Some("bbb")).unwrap();
        assert_eq!(d.device_type, "bbb");
        let bl = d.dt.bootloader.as_ref().unwrap();
        assert_eq!(bl.prompt, "=>");
        // The method's own interrupt_char wins over the constant, as in
        // lava-dispatcher; the newline setting is the constant's.
        assert_eq!(bl.interrupt_char, "");
        assert!(!bl.interrupt_newline);
        assert_eq!(bl.interrupt_ctrl_list, ["c"]);
        assert_eq!(bl.interrupt_prompt, "Autoboot in");
        assert_eq!(bl.error_messages, vec!["Resetting CPU".to_string()]);
        assert_eq!(bl.boot_character_delay_ms, 20);
        assert_eq!(bl.load_addresses["zimage"].kernel, "0x82000000");
        assert_eq!(bl.bootx["zimage"], "bootz");
        assert!(!bl.load_addresses.contains_key("image"));
        assert_eq!(bl.commands["ramdisk"].len(), 3);
        assert_eq!(bl.add_header, Some(crate::device_type::AddHeader::UBoot));
        assert_eq!(bl.mkimage_arch.as_deref(), Some("arm"));
        assert!(bl.commands.contains_key("nfs"));
        assert_eq!(d.dt.kernel.start_message, "Booting Linux");
        assert_eq!(d.dt.shell_prompt, "lava\\-test: \\# ");
        assert_eq!(d.dt.timeouts.bootloader_commands, 240);
        assert_eq!(d.dt.timeouts.power_off, 12);
        assert_eq!(d.dt.timeouts.power_on, 40);
        assert_eq!(
            d.connect.as_deref().unwrap(),
            ["telnet", "localhost", "7001"]
        );
        assert_eq!(
            d.power_on,
            vec![
                vec!["relay".to_string(), "1".into(), "on".into()],
                vec!["relay".to_string(), "port 2".into(), "on".into()]
            ]
        );
        assert_eq!(d.power_off.len(), 1);
        assert_eq!(d.hard_reset[0], ["relay", "1", "cycle"]);
        for k in [
            "constants.shutdown-message",
            "constants.u-boot.final-message",
            "parameters.media",
            "timeouts.actions.dd-image",
            "timeouts.connections",
        ] {
            assert!(d.ignored.iter().any(|i| i == k), "{k}: {:?}", d.ignored);
        }
        // An empty method is nothing to ignore.
        assert!(!d.ignored.iter().any(|i| i.contains("minimal")));
    }

    #[test]
    fn the_device_type_comes_from_the_board_or_the_file() {
        let text = format!("devicetype: 'bbb'\n{UBOOT}");
        assert_eq!(from_yaml("d", &text, None).unwrap().device_type, "bbb");
        let err = from_yaml("d", &text, Some("rpi")).unwrap_err().to_string();
        assert!(
            err.contains("(devicetype)") && err.contains("`rpi`"),
            "{err}"
        );
        let err = from_yaml("d", UBOOT, None).unwrap_err().to_string();
        assert!(err.contains("give the board's `device_type`"), "{err}");
    }

    #[test]
    fn keys_labd_cannot_honour_are_refused_with_their_place() {
        for (extra, path) in [
            ("environment: {FOO: bar}\n", "environment"),
            ("unknown_top: 1\n", "unknown_top"),
            (
                "commands:\n  pre_power_command: /usr/bin/hub on\n",
                "commands.pre_power_command",
            ),
            (
                "actions:\n  deploy:\n    parameters:\n      append_dtb: True\n",
                "actions.deploy.parameters.append_dtb",
            ),
            (
                "actions:\n  boot:\n    methods:\n      u-boot:\n        parameters:\n          uboot_altbank: true\n        ramdisk:\n          commands: ['{BOOTX}']\n",
                "actions.boot.methods.u-boot.parameters.uboot_altbank",
            ),
            (
                "actions:\n  deploy:\n    parameters:\n      add_header: u-boot\n      mkimage_arch: vax\n",
                "actions.deploy.parameters.mkimage_arch",
            ),
            (
                "constants:\n  posix:\n    lava_test_results_dir: /results-%s\n",
                "constants.posix.lava_test_results_dir",
            ),
        ] {
            let err = from_yaml("d.yaml", &format!("hostname: x\n{extra}"), Some("t"))
                .unwrap_err()
                .to_string();
            // The line is the value's, past the first.
            let line: usize = err["d.yaml:".len()..].split(':').next().unwrap().parse().unwrap();
            assert!(line >= 2, "{path}: {err}");
            assert!(err.contains(&format!("({path})")), "{path}: {err}");
        }
    }

    #[test]
    fn one_console_of_several_connections_is_the_primary_one() {
        let two = "commands:\n  connections:\n    uart0:\n      connect: telnet h 1\n      tags: [primary, telnet]\n    uart1:\n      connect: telnet h 2\n";
        let d = from_yaml("d", two, Some("t")).unwrap();
        assert_eq!(d.connect.unwrap(), ["telnet", "h", "1"]);
        assert!(d
            .ignored
            .contains(&"commands.connections.uart1".to_string()));
        let none = two.replace("tags: [primary, telnet]", "tags: [telnet]");
        let err = from_yaml("d", &none, Some("t")).unwrap_err().to_string();
        assert!(err.contains("(commands.connections)"), "{err}");
    }

    #[test]
    fn a_quoted_scalar_continued_at_the_margin_reads_as_pyyaml_reads_it() {
        let text = "a:\n  b: '\n'\n  c: 'it''s\nx'\n  d: \"q\\\"\n\"\n  e: don't\n";
        let fixed = pyyaml_compatible(text);
        assert_eq!(
            fixed,
            "a:\n  b: '\n   '\n  c: 'it''s\n   x'\n  d: \"q\\\"\n   \"\n  e: don't\n"
        );
        let node = marked_yaml::parse_yaml(0, &fixed).unwrap();
        let a = node.as_mapping().unwrap().get_mapping("a").unwrap();
        assert_eq!(a.get_scalar("b").unwrap().as_str(), " ");
        assert_eq!(a.get_scalar("c").unwrap().as_str(), "it's x");
        assert_eq!(a.get_scalar("e").unwrap().as_str(), "don't");
        // Nothing to change, nothing copied.
        assert!(matches!(
            pyyaml_compatible("a: 'b'\n"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn extends_names_the_device_type() {
        assert_eq!(
            extends("d", "{# x #}\n{% extends 'beaglebone-black.jinja2' %}\n").unwrap(),
            "beaglebone-black"
        );
        assert_eq!(
            extends("d", "{%- extends \"qemu.jinja2\" -%}").unwrap(),
            "qemu"
        );
        assert!(extends("d", "{% set a = 1 %}\n").is_err());
        let commented = "{# like\n{% extends 'other.jinja2' %}\n#}\n{% extends 'mine.jinja2' %}\n";
        assert_eq!(extends("d", commented).unwrap(), "mine");
    }

    #[test]
    fn values_print_as_python_prints_them() {
        let mut env = minijinja::Environment::new();
        env.set_formatter(python_format);
        env.set_unknown_method_callback(python_methods);
        let out = env
            .render_str(
                "{{ a }} {{ b }} {{ c }} {{ d }} {{ e.get('k') }} {{ e.get('z', 'dflt') }}{% for k, v in e.items() %} {{ k }}={{ v }}{% endfor %}",
                minijinja::context! { a => true, b => (), c => vec!["x", "it's"], d => 3, e => minijinja::context!{ k => "v" } },
            )
            .unwrap();
        assert_eq!(out, "True None ['x', \"it's\"] 3 v dflt k=v");
    }
}
