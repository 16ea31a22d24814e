//! Device types: what labd knows about a kind of board (its U-Boot, its kernel
//! messages, its prompts and its default timeouts), loaded from
//! `device-types/*.yaml` and validated at start.
//!
//! This module owns parsing and validation only; a board applies its device
//! dictionary (per-board overrides from the lab config) with [`DeviceType::with_overrides`].
//! The values mirror LAVA's jinja2 device-type templates so that LAVA users
//! recognise them, but labd's files are plain data, not templates.

use crate::error::{ConfigError, Location};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The placeholders LAVA device types use in boot commands, plus labd's `{TFTP_PORT}`.
pub const PLACEHOLDERS: &[&str] = &[
    "{SERVER_IP}",
    "{KERNEL}",
    "{KERNEL_ADDR}",
    "{RAMDISK}",
    "{RAMDISK_ADDR}",
    "{DTB}",
    "{DTB_ADDR}",
    "{BOOTX}",
    "{TFTP_PORT}",
    // A job's NFS root (`nfsrootfs`): the server boards reach, and the
    // exported directory on it.
    "{NFS_SERVER_IP}",
    "{NFSROOTFS}",
];

/// Placeholders of artifacts labd never deploys (a job asking for a `tee`,
/// `dtbo` or `preseed` is refused at submit): a boot command naming one is
/// left out, as lava-dispatcher leaves out a command whose artifact the job
/// did not deploy. LAVA's templates name them in their usual command sets.
pub const DROPPED: &[&str] = &[
    "{TEE}",
    "{TEE_ADDR}",
    "{DTBO}",
    "{DTBO_ADDR}",
    "{DTB_BASE_ADDR}",
    "{DTB_BASE_RESIZE}",
    "{APPLY_DTBO_COMMANDS}",
    "{PRESEED_CONFIG}",
    "{PRESEED_LOCAL}",
];

/// The first placeholder of a command set that labd can neither fill nor
/// leave out (LAVA's `{ROOT}`, `{NBDSERVERIP}`, ...), with its command's
/// index. A device type may keep such a set (LAVA's templates have them);
/// a job that boots with it is refused.
pub fn unfillable(commands: &[String]) -> Option<(usize, String)> {
    commands.iter().enumerate().find_map(|(i, c)| {
        if DROPPED.iter().any(|d| c.contains(d)) {
            return None;
        }
        placeholders_in(c)
            .into_iter()
            .find(|p| !PLACEHOLDERS.contains(&p.as_str()))
            .map(|p| (i, p))
    })
}

/// The byte pexpect's `sendcontrol` sends for a LAVA `interrupt_ctrl_list`
/// entry: `c` is Ctrl-C (0x03), `[` escape, `?` delete.
pub fn control_byte(c: &str) -> Option<u8> {
    let mut chars = c.chars();
    let (Some(ch), None) = (chars.next(), chars.next()) else {
        return None;
    };
    match ch.to_ascii_lowercase() {
        c @ 'a'..='z' => Some(c as u8 - b'a' + 1),
        '@' | '`' => Some(0),
        '[' => Some(27),
        '\\' => Some(28),
        ']' => Some(29),
        '^' => Some(30),
        '_' => Some(31),
        '?' => Some(127),
        _ => None,
    }
}

/// Load addresses for one kernel image type (LAVA's `parameters: bootz: kernel: ...`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoadAddresses {
    pub kernel: String,
    pub ramdisk: String,
    pub dtb: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Bootloader {
    /// The U-Boot command prompt, e.g. `=> `.
    pub prompt: String,
    /// What U-Boot prints while it counts down, e.g. `Hit any key to stop autoboot`.
    pub interrupt_prompt: String,
    /// What labd sends to stop the countdown.
    pub interrupt_char: String,
    /// Control characters sent instead of `interrupt_char` (LAVA's
    /// `interrupt_ctrl_list`: `[c]` is Ctrl-C), for vendor U-Boots.
    #[serde(default)]
    pub interrupt_ctrl_list: Vec<String>,
    /// Whether a newline follows `interrupt_char` (LAVA's `interrupt-newline`).
    #[serde(default = "default_true")]
    pub interrupt_newline: bool,
    #[serde(default = "default_true")]
    pub needs_interrupt: bool,
    /// Messages that mean a bootloader command failed (LAVA's error strings).
    #[serde(default)]
    pub error_messages: Vec<String>,
    /// Delay between characters sent to the bootloader, for slow UARTs.
    #[serde(default)]
    pub boot_character_delay_ms: u64,
    /// Load addresses keyed by kernel type: `zimage`, `uimage`, `image`.
    pub load_addresses: BTreeMap<String, LoadAddresses>,
    /// The boot command keyed by kernel type: `zimage: bootz`, `image: booti`.
    pub bootx: BTreeMap<String, String>,
    /// Named command sets (`ramdisk`, `nfs`), with LAVA's placeholders.
    pub commands: BTreeMap<String, Vec<String>>,
    /// LAVA's `add_header: u-boot`: this U-Boot takes a ramdisk only in a
    /// legacy image, so labd puts a bare one in a header (as `mkimage -T
    /// ramdisk` does), and `{BOOTX}` passes it without a size.
    #[serde(default)]
    pub add_header: Option<AddHeader>,
    /// LAVA's `mkimage_arch`: the architecture a header labd makes names
    /// (`arm`, `arm64`, `x86_64`, `riscv`...); U-Boot refuses another.
    #[serde(default)]
    pub mkimage_arch: Option<String>,
}

/// The code a U-Boot legacy header gives an architecture named as
/// `mkimage -A` names it (LAVA's `mkimage_arch`).
pub fn uimage_arch(name: &str) -> Option<u8> {
    Some(match name {
        "arm" => 2,
        "x86" | "i386" => 3,
        "mips" => 5,
        "mips64" => 6,
        "powerpc" | "ppc" => 7,
        "arm64" => 22,
        "x86_64" => 24,
        "riscv" => 26,
        _ => return None,
    })
}

/// The header a board's U-Boot wants on a ramdisk.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum AddHeader {
    #[serde(rename = "u-boot")]
    UBoot,
}

/// A kernel started by the board's relay (`method: qemu`): QEMU's
/// `-kernel`/`-initrd`/`-dtb` come from the deploy, `-append` from here.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DirectBootSpec {
    /// The kernel command line, e.g. `console=ttyAMA0 rdinit=/init panic=-1`.
    #[serde(default)]
    pub append: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// A regex that shows the kernel started, e.g. `Linux version [0-9]`.
    pub start_message: String,
    /// Regexes that mean the kernel failed (panics and the like).
    #[serde(default)]
    pub error_messages: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub prompt: String,
    pub username: String,
    #[serde(default)]
    pub password_prompt: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

/// Default timeouts per phase, in seconds, keyed by LAVA's action names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PhaseTimeouts {
    #[serde(rename = "tftp-deploy", default = "d60")]
    pub deploy: u64,
    #[serde(rename = "power-on", default = "d30")]
    pub power_on: u64,
    #[serde(rename = "bootloader-interrupt", default = "d30")]
    pub bootloader_interrupt: u64,
    #[serde(rename = "bootloader-commands", default = "d120")]
    pub bootloader_commands: u64,
    #[serde(rename = "auto-login-action", default = "d120")]
    pub auto_login: u64,
    #[serde(rename = "lava-test-shell", default = "d300")]
    pub test: u64,
    #[serde(rename = "power-off", default = "d30")]
    pub power_off: u64,
}

impl Default for PhaseTimeouts {
    fn default() -> Self {
        PhaseTimeouts {
            deploy: 60,
            power_on: 30,
            bootloader_interrupt: 30,
            bootloader_commands: 120,
            auto_login: 120,
            test: 300,
            power_off: 30,
        }
    }
}

fn default_true() -> bool {
    true
}
fn d30() -> u64 {
    30
}
fn d60() -> u64 {
    60
}
fn d120() -> u64 {
    120
}
fn d300() -> u64 {
    300
}
fn d115200() -> u32 {
    115200
}

/// A device type as loaded from its YAML file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeviceType {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default = "d115200")]
    pub console_baud: u32,
    /// The board's U-Boot, for `method: u-boot`; a board booted directly
    /// by its relay (QEMU `-kernel`) has none.
    #[serde(default)]
    pub bootloader: Option<Bootloader>,
    /// How the relay boots a kernel itself, for `method: qemu`.
    #[serde(default)]
    pub direct_boot: Option<DirectBootSpec>,
    pub kernel: Kernel,
    #[serde(default)]
    pub login: Option<Login>,
    /// The shell prompt regex after login (LAVA's `prompts`), used when a job gives none.
    pub shell_prompt: String,
    #[serde(default)]
    pub timeouts: PhaseTimeouts,
    /// A job file (relative to the device-types dir) run as this type's health check.
    #[serde(default)]
    pub health_check: Option<String>,
    /// Whether the board's kernel runs on the ramdisk or NFS root labd
    /// deploys (every real board's does). Then, as in LAVA, every test
    /// definition runs from the overlay labd puts there; a board that
    /// does not (the simulator, whose shell is the lab host's) has its
    /// inline definitions typed on its shell instead.
    #[serde(default = "default_true")]
    pub uses_deployed_root: bool,
}

impl PhaseTimeouts {
    pub fn get(&self, name: &str) -> Option<Duration> {
        let s = match name {
            "tftp-deploy" => self.deploy,
            "power-on" => self.power_on,
            "bootloader-interrupt" => self.bootloader_interrupt,
            "bootloader-commands" => self.bootloader_commands,
            "auto-login-action" => self.auto_login,
            "lava-test-shell" => self.test,
            "power-off" => self.power_off,
            _ => return None,
        };
        Some(Duration::from_secs(s))
    }
}

impl DeviceType {
    /// Parses and validates one device-type YAML document; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<DeviceType, ConfigError> {
        let opts = marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true);
        let node = marked_yaml::parse_yaml_with_options(0, text, opts)
            .map_err(|e| invalid(file, None, load_error_location(&e), e.to_string()))?;
        let dt: DeviceType = marked_yaml::from_node(&node).map_err(|e| {
            let mark = e.start_mark().map(|m| (m.line(), m.column()));
            let path = e.path().map(str::to_owned);
            invalid(file, path, mark, e.into_inner().to_string())
        })?;
        dt.validate(file)?;
        dt.check_placeholders(file, "")?;
        Ok(dt)
    }

    /// Refuses a placeholder labd does not know in the command set `only`
    /// (every set for ""): a typo in labd's own
    /// device types. LAVA's device configurations keep theirs, refused only
    /// for a job that boots with them ([`unfillable`]).
    fn check_placeholders(&self, file: &str, only: &str) -> Result<(), ConfigError> {
        let Some(bl) = &self.bootloader else {
            return Ok(());
        };
        for (set, cmds) in &bl.commands {
            if !only.is_empty() && set != only {
                continue;
            }
            for (i, cmd) in cmds.iter().enumerate() {
                for ph in placeholders_in(cmd) {
                    if !PLACEHOLDERS.contains(&ph.as_str()) {
                        return Err(invalid(
                            file,
                            Some(format!("bootloader.commands.{set}[{i}]")),
                            None,
                            format!(
                                "unknown placeholder {ph}; known: {}",
                                PLACEHOLDERS.join(", ")
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks what parsing cannot: regexes compile, a bootloader can be
    /// interrupted and has a `ramdisk` command set, every boot command has
    /// load addresses.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |path: &str, msg: String| invalid(file, Some(path.to_owned()), None, msg);
        if self.name.is_empty() {
            return Err(bad("name", "must not be empty".into()));
        }
        let mut regexes = vec![
            ("kernel.start_message", &self.kernel.start_message),
            ("shell_prompt", &self.shell_prompt),
        ];
        if let Some(bl) = &self.bootloader {
            regexes.push(("bootloader.prompt", &bl.prompt));
            regexes.push(("bootloader.interrupt_prompt", &bl.interrupt_prompt));
        }
        for (path, re) in regexes {
            if re.is_empty() {
                return Err(bad(path, "must not be empty".into()));
            }
            regex::bytes::Regex::new(re)
                .map_err(|e| bad(path, format!("not a valid regex: {e}")))?;
        }
        for (i, re) in self.kernel.error_messages.iter().enumerate() {
            regex::bytes::Regex::new(re).map_err(|e| {
                bad(
                    &format!("kernel.error_messages[{i}]"),
                    format!("not a valid regex: {e}"),
                )
            })?;
        }
        if let Some(bl) = &self.bootloader {
            if let Some(arch) = &bl.mkimage_arch {
                if uimage_arch(arch).is_none() {
                    return Err(bad(
                        "bootloader.mkimage_arch",
                        format!("`{arch}`: labd knows arm, arm64, x86, x86_64, mips, mips64, powerpc and riscv"),
                    ));
                }
            }
            if bl.add_header.is_some() && bl.mkimage_arch.is_none() {
                return Err(bad(
                    "bootloader.add_header",
                    "a header names its architecture: set `bootloader.mkimage_arch` too".into(),
                ));
            }
            // An empty interrupt_char with a newline sends the newline
            // alone, as LAVA does (its templates' default).
            if bl.needs_interrupt
                && bl.interrupt_char.is_empty()
                && !bl.interrupt_newline
                && bl.interrupt_ctrl_list.is_empty()
            {
                return Err(bad(
                    "bootloader.interrupt_char",
                    "must not be empty when needs_interrupt is true and interrupt_newline false"
                        .into(),
                ));
            }
            for (i, c) in bl.interrupt_ctrl_list.iter().enumerate() {
                if control_byte(c).is_none() {
                    return Err(bad(
                        &format!("bootloader.interrupt_ctrl_list[{i}]"),
                        format!(
                            "`{c}` is not a control character's letter (such as `c` for Ctrl-C)"
                        ),
                    ));
                }
            }
            if !bl.commands.contains_key("ramdisk") {
                return Err(bad(
                    "bootloader.commands",
                    "must define the `ramdisk` command set".into(),
                ));
            }
            for kt in bl.bootx.keys() {
                if !bl.load_addresses.contains_key(kt) {
                    return Err(bad(
                        &format!("bootloader.bootx.{kt}"),
                        format!("no load addresses for kernel type `{kt}`"),
                    ));
                }
            }
        }
        if let Some(login) = &self.login {
            regex::bytes::Regex::new(&login.prompt)
                .map_err(|e| bad("login.prompt", format!("not a valid regex: {e}")))?;
        }
        Ok(())
    }

    /// Applies a board's device dictionary: dotted keys (`bootloader.prompt`,
    /// `timeouts.power-on`, `console_baud`) replace the device type's values.
    pub fn with_overrides(
        &self,
        board: &str,
        overrides: &BTreeMap<String, toml::Value>,
    ) -> Result<DeviceType, ConfigError> {
        if overrides.is_empty() {
            return Ok(self.clone());
        }
        let mut value = serde_json::to_value(self)
            .map_err(|e| invalid(board, None, None, format!("cannot apply overrides: {e}")))?;
        for (key, v) in overrides {
            let json = serde_json::to_value(v).map_err(|e| {
                invalid(
                    board,
                    Some(format!("parameters.{key}")),
                    None,
                    e.to_string(),
                )
            })?;
            let mut cur = &mut value;
            let parts: Vec<&str> = key.split('.').collect();
            for (i, part) in parts.iter().enumerate() {
                let obj = cur.as_object_mut().ok_or_else(|| {
                    invalid(
                        board,
                        Some(format!("parameters.{key}")),
                        None,
                        format!("`{part}` is not inside a table of the device type"),
                    )
                })?;
                if i + 1 == parts.len() {
                    obj.insert((*part).to_owned(), json.clone());
                    break;
                }
                cur = obj
                    .entry((*part).to_owned())
                    .or_insert(serde_json::json!({}));
            }
        }
        let dt: DeviceType = serde_json::from_value(value).map_err(|e| {
            invalid(
                board,
                Some("parameters".into()),
                None,
                format!(
                    "device dictionary does not fit device type `{}`: {e}",
                    self.name
                ),
            )
        })?;
        dt.validate(board)?;
        // Only the command sets the board itself sets: a LAVA device
        // type keeps sets with placeholders labd cannot fill.
        for key in overrides.keys() {
            if let Some(set) = key.strip_prefix("bootloader.commands") {
                dt.check_placeholders(board, set.trim_start_matches('.'))?;
            }
        }
        Ok(dt)
    }
}

/// A config error at `file`'s `path`, at a YAML position when there is one
/// (a column 0 is a line-only position, such as a template's).
pub(crate) fn invalid(
    file: &str,
    path: Option<String>,
    mark: Option<(usize, usize)>,
    message: String,
) -> ConfigError {
    ConfigError::Invalid {
        location: Location {
            file: Some(file.to_owned()),
            path,
            line: mark.map(|m| m.0),
            column: mark.map(|m| m.1).filter(|c| *c > 0),
        },
        message,
    }
}

/// Where a YAML load error is, as (line, column).
pub(crate) fn load_error_location(e: &marked_yaml::LoadError) -> Option<(usize, usize)> {
    use marked_yaml::LoadError::*;
    let m = match e {
        TopLevelMustBeMapping(m)
        | TopLevelMustBeSequence(m)
        | UnexpectedAnchor(m)
        | MappingKeyMustBeScalar(m)
        | UnexpectedTag(m) => *m,
        DuplicateKey(d) => *d.key.span().start()?,
        ScanError(m, _) => *m,
    };
    Some((m.line(), m.column()))
}

/// Every `{NAME}` placeholder in a command, in order; a U-Boot variable
/// (`${NAME}`) is not one.
pub fn placeholders_in(cmd: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = cmd;
    while let Some(start) = rest.find('{') {
        let variable = rest[..start].ends_with('$');
        let after = &rest[start..];
        match after.find('}') {
            Some(end) => {
                let ph = &after[..=end];
                if !variable
                    && ph[1..ph.len() - 1]
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c == '_')
                    && ph.len() > 2
                {
                    out.push(ph.to_owned());
                }
                rest = &after[end + 1..];
            }
            None => break,
        }
    }
    out
}

/// All device types in a directory, keyed by name. Files are `*.yaml`; the
/// file stem must equal the `name` inside, so that a rename cannot go unnoticed.
pub fn load_dir(dir: &Path) -> Result<BTreeMap<String, DeviceType>, ConfigError> {
    let rd = std::fs::read_dir(dir).map_err(|e| ConfigError::Io {
        path: dir.display().to_string(),
        source: e,
    })?;
    let mut files: Vec<_> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut out = BTreeMap::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        let file = path.display().to_string();
        let dt = DeviceType::parse(&file, &text)?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if stem != dt.name {
            return Err(invalid(
                &file,
                Some("name".into()),
                None,
                format!("name `{}` does not match the file name `{stem}`", dt.name),
            ));
        }
        out.insert(dt.name.clone(), dt);
    }
    Ok(out)
}

/// The device types shipped with labd, compiled in so `labd --demo` needs no files.
pub const EMBEDDED: &[(&str, &str)] = &[
    ("sim-uboot", include_str!("../device-types/sim-uboot.yaml")),
    (
        "beaglebone-black",
        include_str!("../device-types/beaglebone-black.yaml"),
    ),
    (
        "raspberrypi-4-b",
        include_str!("../device-types/raspberrypi-4-b.yaml"),
    ),
    (
        "qemu-aarch64-uboot",
        include_str!("../device-types/qemu-aarch64-uboot.yaml"),
    ),
    (
        "qemu-x86-uboot",
        include_str!("../device-types/qemu-x86-uboot.yaml"),
    ),
    (
        "qemu-aarch64",
        include_str!("../device-types/qemu-aarch64.yaml"),
    ),
    ("ssh", include_str!("../device-types/ssh.yaml")),
];

/// The lab's device types: those in `dir` (the config's
/// `device_types_dir`), else the embedded ones. The daemon loads them at
/// start and the lab again at a reload, through this one function, so that
/// both read the same source.
pub fn load(dir: Option<&Path>) -> Result<BTreeMap<String, DeviceType>, ConfigError> {
    match dir {
        Some(dir) => load_dir(dir),
        None => embedded(),
    }
}

/// Parses the embedded device types.
pub fn embedded() -> Result<BTreeMap<String, DeviceType>, ConfigError> {
    let mut out = BTreeMap::new();
    for (name, text) in EMBEDDED {
        let dt = DeviceType::parse(&format!("device-types/{name}.yaml"), text)?;
        out.insert(dt.name.clone(), dt);
    }
    Ok(out)
}
