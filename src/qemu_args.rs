//! The QEMU options a job may add to a lab's QEMU: LAVA's `image_arg`s and
//! the `extra_options` of its `context`.
//!
//! This module owns the line between what a job may ask of the QEMU that
//! labd starts and what stays the lab's. LAVA joins a job's option strings
//! into one command line for `pexpect`; labd splits each string with
//! shell-word rules ([`split`], as Python's `shlex.split`) and checks every
//! option against a policy: a default allow-list covering what real jobs
//! write (`-kernel {kernel} -append "..."`, `-drive` with sub-options,
//! `-device loader,file={x}`, `-bios`, `-cdrom`, `-smp`, ...), which a lab
//! may extend (`[qemu] extra_allowed_options`), and a deny-list that no
//! configuration can lift: options that reach the host outside the job's
//! own files (chardevs, monitors, serial ports to files, plugins, objects,
//! shared directories, network scripts, log and pid files, `-L`, gdb
//! stubs). A value that names a host path is refused unless it is the
//! placeholder of one of the deploy's images (`{rootfs}`), which labd fills
//! in with the file it downloaded; only `-append`, the kernel's command
//! line, is free text.
//!
//! Nothing here does I/O except [`image_header_refers_outside`], which
//! reads the bytes it is given: a disk image's own header can name other
//! host files (a qcow2 backing file), so a downloaded image is checked
//! before QEMU opens it.
//!
//! The `shlex` crate was considered for the split: it treats `#` at the
//! start of a word as a comment and unescapes `\$` and `` \` `` inside
//! double quotes, where Python's `shlex.split` (what LAVA users test their
//! strings with) does neither, so the few lines below keep Python's rules.

/// Why an option string cannot be split into words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("no closing quotation ({0} opened and never closed)")]
    Unclosed(char),
    #[error("a `\\` at the end escapes nothing")]
    TrailingEscape,
}

/// Splits `s` into words as Python's `shlex.split(s)` does (POSIX mode,
/// no comments): whitespace separates words; `'...'` keeps everything;
/// inside `"..."` a backslash escapes only `"` and `\`; outside quotes a
/// backslash keeps the next character; `""` is an empty word.
pub fn split(s: &str) -> Result<Vec<String>, SplitError> {
    let mut words = Vec::new();
    let mut word = String::new();
    // Whether a word is under way (an empty quoted word counts).
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\r' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\\' => {
                word.push(chars.next().ok_or(SplitError::TrailingEscape)?);
                in_word = true;
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => word.push(x),
                        None => return Err(SplitError::Unclosed('\'')),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(x @ ('"' | '\\')) => word.push(x),
                            Some(x) => {
                                word.push('\\');
                                word.push(x);
                            }
                            None => return Err(SplitError::Unclosed('"')),
                        },
                        Some(x) => word.push(x),
                        None => return Err(SplitError::Unclosed('"')),
                    }
                }
            }
            x => {
                word.push(x);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Options no job may give, whatever the lab's configuration: each reaches
/// the host outside the job's files, or takes what labd owns (the console,
/// QMP, the network the board's TFTP goes over).
pub const DENIED: &[&str] = &[
    "-chardev",
    "-monitor",
    "-qmp",
    "-qmp-pretty",
    "-mon",
    "-serial",
    "-parallel",
    "-debugcon",
    "-plugin",
    "-object",
    "-virtfs",
    "-fsdev",
    "-netdev",
    "-nic",
    "-add-fd",
    "-readconfig",
    "-writeconfig",
    "-loadvm",
    "-incoming",
    "-D",
    "-d",
    "-trace",
    "-pidfile",
    "-daemonize",
    "-runas",
    "-run-with",
    "-chroot",
    "-sandbox",
    "-L",
    "-gdb",
    "-s",
    "-S",
    "-qtest",
    "-qtest-log",
    "-option-rom",
    "-spice",
    "-vnc",
    "-display",
    "-blockdev",
    "-mem-path",
    "-semihosting",
    "-semihosting-config",
    "-usbdevice",
    "-tpmdev",
    "-iscsi",
    "-audiodev",
    "-acpitable",
    "-smbios",
    "-fw_cfg",
    "-set",
    "-preconfig",
];

/// Options whose value is a file: it must be a deploy's image placeholder.
const FILE_OPTIONS: &[&str] = &[
    "-kernel", "-initrd", "-dtb", "-bios", "-cdrom", "-hda", "-hdb", "-hdc", "-hdd", "-fda",
    "-fdb", "-pflash",
];

/// Options with a value that is not a file (checked for host paths all the
/// same, but for `-append`, the kernel's command line).
const VALUE_OPTIONS: &[&str] = &[
    "-append",
    "-drive",
    "-device",
    "-net",
    "-smp",
    "-m",
    "-cpu",
    "-machine",
    "-M",
    "-global",
    "-boot",
    "-rtc",
    "-vga",
    "-name",
    "-uuid",
    "-k",
    "-accel",
    "-icount",
    "-watchdog-action",
    "-overcommit",
];

/// Options without a value.
const FLAG_OPTIONS: &[&str] = &[
    "-no-reboot",
    "-no-shutdown",
    "-nographic",
    "-enable-kvm",
    "-no-acpi",
    "-no-hpet",
    "-snapshot",
    "-usb",
    "-nodefaults",
    "-no-user-config",
];

/// `-drive` sub-options: the image, its format and how the board sees it.
/// `file` must be a placeholder; anything else (`driver`, `file.*`,
/// secrets, throttling groups) could name more than the image.
const DRIVE_KEYS: &[&str] = &[
    "file",
    "format",
    "if",
    "media",
    "index",
    "bus",
    "unit",
    "snapshot",
    "readonly",
    "read-only",
    "cache",
    "aio",
    "discard",
    "detect-zeroes",
    "id",
    "werror",
    "rerror",
    "copy-on-read",
    "cyls",
    "heads",
    "secs",
    "trans",
    "serial",
    "addr",
];

/// `-device` drivers that reach host devices or host-side back ends.
const DENIED_DEVICE_PREFIXES: &[&str] = &[
    "usb-host",
    "vfio",
    "vhost",
    "pci-assign",
    "ivshmem",
    "virtio-9p",
    "vhost-user",
    "u2f-passthru",
    "usb-redir",
    "spapr-vty",
    "tpm-",
];

/// `-device` and `-machine` properties that name a host file or a back end
/// of the host (a chardev, an fsdev, a host device).
const DENIED_PROPERTIES: &[&str] = &[
    "romfile",
    "chardev",
    "fsdev",
    "host",
    "sysfsdev",
    "fd",
    "vhostfd",
    "vhostfds",
    "fds",
    "dumpdtb",
    "memory-backend",
    "x-igd-opregion",
];

/// Why a job's QEMU option is refused. The job parser puts it under the key
/// path of the string it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QemuArgError {
    #[error("{0}")]
    Split(#[from] SplitError),
    #[error("expected a QEMU option starting with `-`, found `{0}`")]
    NotAnOption(String),
    #[error("`{0}` may not be set by a job: it reaches the host outside the job's files or what labd owns (console, monitor, network)")]
    Denied(String),
    #[error("`{0}` needs a value")]
    NoValue(String),
    #[error("the value of `{opt}` must be the placeholder of one of the deploy's images ({placeholders}), not `{value}`")]
    NotPlaceholder {
        opt: String,
        value: String,
        placeholders: String,
    },
    #[error("`{opt} {value}`: `{key}` may not be set by a job; -drive allows {keys}", keys = DRIVE_KEYS.join(", "))]
    DriveKey {
        opt: String,
        value: String,
        key: String,
    },
    #[error("-drive `{0}` has no `file=` naming an image")]
    DriveWithoutFile(String),
    #[error("-device `{0}` reaches a host device or back end; a job may not add it")]
    DeniedDevice(String),
    #[error("`{opt} {value}`: `{key}` reaches the host; a job may not set it")]
    DeniedProperty {
        opt: String,
        value: String,
        key: String,
    },
    #[error("`{opt} {value}`: `{part}` looks like a host path; only a deploy's image placeholder may name a file")]
    HostPath {
        opt: String,
        value: String,
        part: String,
    },
    #[error("-net `{0}`: only `nic` (with its model and MAC address) and `none`; the board's network is the lab's")]
    Net(String),
    #[error("must name its own image as `{0}`")]
    OwnImage(String),
}

/// A checked option string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checked {
    /// The words, as QEMU gets them (placeholders still in).
    pub args: Vec<String>,
    /// Options outside the default allow-list (and not denied): the lab
    /// must allow each one (`[qemu] extra_allowed_options`).
    pub unlisted: Vec<String>,
}

/// The option's name as QEMU reads it: `--append` is `-append`.
pub fn canonical(opt: &str) -> &str {
    opt.strip_prefix('-')
        .filter(|rest| rest.starts_with('-'))
        .unwrap_or(opt)
}

/// Whether a lab's configuration may allow `opt` for jobs: not a denied
/// option, and an option at all.
pub fn allowable(opt: &str) -> bool {
    opt.starts_with('-') && opt.len() > 1 && !DENIED.contains(&canonical(opt))
}

/// Checks one option string of a job. `placeholders` are the `{name}`s of
/// the deploy's images (none for a context's `extra_options`); `own`, for
/// an `image_arg`, is the image's own placeholder, which must appear.
pub fn check(
    words: &[String],
    placeholders: &[String],
    own: Option<&str>,
) -> Result<Checked, QemuArgError> {
    let mut out = Checked::default();
    let mut i = 0;
    while i < words.len() {
        let word = &words[i];
        if !word.starts_with('-') || word.len() < 2 {
            return Err(QemuArgError::NotAnOption(word.clone()));
        }
        let opt = canonical(word);
        if DENIED.contains(&opt) {
            return Err(QemuArgError::Denied(word.clone()));
        }
        let takes_value = FILE_OPTIONS.contains(&opt) || VALUE_OPTIONS.contains(&opt);
        let known = takes_value || FLAG_OPTIONS.contains(&opt);
        // An option labd does not know takes the next word as its value
        // when that word is not an option itself.
        let value =
            if takes_value || (!known && words.get(i + 1).is_some_and(|w| !w.starts_with('-'))) {
                i += 1;
                Some(
                    words
                        .get(i)
                        .ok_or_else(|| QemuArgError::NoValue(word.clone()))?
                        .as_str(),
                )
            } else {
                None
            };
        if !known {
            out.unlisted.push(opt.to_owned());
        }
        if let Some(v) = value {
            check_value(opt, v, placeholders)?;
        }
        i += 1;
    }
    if let Some(own) = own {
        if !words.iter().any(|w| w.contains(own)) {
            return Err(QemuArgError::OwnImage(own.to_owned()));
        }
    }
    out.args = words.to_vec();
    Ok(out)
}

/// Splits a QEMU `a=b,c=d` value into its parts; `,,` is a literal comma.
fn sub_options(v: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                if let Some(p) = parts.last_mut() {
                    p.push(',');
                }
            } else {
                parts.push(String::new());
            }
        } else if let Some(p) = parts.last_mut() {
            p.push(c);
        }
    }
    parts
}

fn check_value(opt: &str, v: &str, placeholders: &[String]) -> Result<(), QemuArgError> {
    let is_placeholder = |x: &str| placeholders.iter().any(|p| p == x);
    let not_placeholder = || QemuArgError::NotPlaceholder {
        opt: opt.to_owned(),
        value: v.to_owned(),
        placeholders: if placeholders.is_empty() {
            "none here".to_owned()
        } else {
            placeholders.join(", ")
        },
    };
    let host_path = |part: &str| QemuArgError::HostPath {
        opt: opt.to_owned(),
        value: v.to_owned(),
        part: part.to_owned(),
    };
    // A path, a placeholder or an escape from the value's own syntax.
    let pathlike =
        |s: &str| s.contains('/') || s.contains('{') || s.starts_with('.') || s.starts_with('~');
    match opt {
        o if FILE_OPTIONS.contains(&o) => {
            if !is_placeholder(v) {
                return Err(not_placeholder());
            }
        }
        "-append" => {}
        "-drive" => {
            let mut file = false;
            for part in sub_options(v) {
                let (k, val) = part.split_once('=').unwrap_or((&part, ""));
                if !DRIVE_KEYS.contains(&k) {
                    return Err(QemuArgError::DriveKey {
                        opt: opt.to_owned(),
                        value: v.to_owned(),
                        key: k.to_owned(),
                    });
                }
                if k == "file" {
                    if !is_placeholder(val) {
                        return Err(not_placeholder());
                    }
                    file = true;
                } else if pathlike(val) {
                    return Err(host_path(&part));
                }
            }
            if !file {
                return Err(QemuArgError::DriveWithoutFile(v.to_owned()));
            }
        }
        "-device" => {
            let parts = sub_options(v);
            let driver = parts.first().map(String::as_str).unwrap_or("");
            let driver = driver.strip_prefix("driver=").unwrap_or(driver);
            if DENIED_DEVICE_PREFIXES.iter().any(|p| driver.starts_with(p)) {
                return Err(QemuArgError::DeniedDevice(driver.to_owned()));
            }
            for part in parts.iter().skip(1) {
                let (k, val) = part.split_once('=').unwrap_or((part, ""));
                if DENIED_PROPERTIES.contains(&k) {
                    return Err(QemuArgError::DeniedProperty {
                        opt: opt.to_owned(),
                        value: v.to_owned(),
                        key: k.to_owned(),
                    });
                }
                // The generic loader's file is the one place a device
                // names a file: a deploy's image.
                if driver == "loader" && k == "file" {
                    if !is_placeholder(val) {
                        return Err(not_placeholder());
                    }
                } else if pathlike(val) {
                    return Err(host_path(part));
                }
            }
        }
        "-net" => {
            let parts = sub_options(v);
            let kind = parts.first().map(String::as_str).unwrap_or("");
            let ok_key = |p: &String| {
                let k = p.split_once('=').map_or(p.as_str(), |(k, _)| k);
                matches!(
                    k,
                    "model" | "macaddr" | "id" | "name" | "vlan" | "addr" | "vectors"
                )
            };
            let ok = match kind {
                "none" => parts.len() == 1,
                "nic" => parts.iter().skip(1).all(ok_key),
                _ => false,
            };
            if !ok || parts.iter().any(|p| pathlike(p)) {
                return Err(QemuArgError::Net(v.to_owned()));
            }
        }
        _ => {
            for part in sub_options(v) {
                let (k, val) = part.split_once('=').unwrap_or(("", &part));
                if DENIED_PROPERTIES.contains(&k) {
                    return Err(QemuArgError::DeniedProperty {
                        opt: opt.to_owned(),
                        value: v.to_owned(),
                        key: k.to_owned(),
                    });
                }
                if pathlike(val) {
                    return Err(host_path(&part));
                }
            }
        }
    }
    Ok(())
}

/// The QEMU binary LAVA's qemu device type runs for a job's `context.arch`
/// (`arm64` and `aarch64` are `qemu-system-aarch64`, `amd64` and `x86_64`
/// are `qemu-system-x86_64`, any other `qemu-system-<arch>`).
pub fn binary_for_arch(arch: &str) -> String {
    let a = match arch {
        "arm64" | "aarch64" => "aarch64",
        "amd64" | "x86_64" => "x86_64",
        other => other,
    };
    format!("qemu-system-{a}")
}

/// Whether the QEMU binary named `binary` runs guests of LAVA's `arch`:
/// LAVA's own binary for it, or the 64-bit one of its family
/// (`qemu-system-aarch64` runs `arm`, `qemu-system-x86_64` runs `i386`).
pub fn runs_arch(binary: &str, arch: &str) -> bool {
    binary == binary_for_arch(arch)
        || matches!(
            (binary, arch),
            ("qemu-system-aarch64", "arm" | "armhf") | ("qemu-system-x86_64", "i386")
        )
}

/// Why a downloaded disk image may not reach QEMU: its header names other
/// files of the host (a qcow2 backing file or external data file, a vmdk's
/// extents, a QED or VHDX parent). Given the file's first bytes (512 are
/// enough). QEMU reads such a header whenever the format is not forced to
/// `raw`, so the runner checks every image a job gives QEMU.
pub fn image_header_refers_outside(head: &[u8]) -> Option<&'static str> {
    let be64 = |at: usize| {
        head.get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
    };
    let be32 = |at: usize| {
        head.get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
    };
    if head.starts_with(b"QFI\xfb") {
        if be64(8).is_some_and(|o| o != 0) {
            return Some("a qcow image with a backing file");
        }
        // qcow2 version 3: incompatible feature bit 2 is an external data file.
        if be32(4).is_some_and(|v| v >= 3) && be64(72).is_some_and(|f| f & 4 != 0) {
            return Some("a qcow2 image with an external data file");
        }
        return None;
    }
    if head.starts_with(b"QED\0") {
        return Some("a QED image (it may name a backing file)");
    }
    if head.starts_with(b"KDMV")
        || head.starts_with(b"COWD")
        || head.starts_with(b"# Disk DescriptorFile")
    {
        return Some("a vmdk image (its extents are other files)");
    }
    if head.starts_with(b"vhdxfile") {
        return Some("a VHDX image (it may name a parent)");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<String> {
        split(s).unwrap()
    }

    /// Each expectation is what Python 3's `shlex.split` returns.
    #[test]
    fn words_are_split_as_pythons_shlex_splits_them() {
        assert_eq!(
            w(r#"-kernel {kernel} -append "console=ttyAMA0,115200 root=/dev/vda debug""#),
            [
                "-kernel",
                "{kernel}",
                "-append",
                "console=ttyAMA0,115200 root=/dev/vda debug"
            ]
        );
        assert_eq!(w("a'b c'd"), ["ab cd"]);
        assert_eq!(w(r#"a "" b"#), ["a", "", "b"]);
        assert_eq!(w(r#""a\"b\\c\$d""#), [r#"a"b\c\$d"#]);
        assert_eq!(w(r"a\ b \#c #d"), ["a b", "#c", "#d"]);
        assert_eq!(w("  \t\n "), Vec::<String>::new());
        assert_eq!(w(r"'\'"), [r"\"]);
        assert_eq!(split("-append \"x"), Err(SplitError::Unclosed('"')));
        assert_eq!(split("-append 'x"), Err(SplitError::Unclosed('\'')));
        assert_eq!(split("x\\"), Err(SplitError::TrailingEscape));
    }

    fn ph(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| format!("{{{n}}}")).collect()
    }

    fn ok(s: &str) -> Checked {
        check(&w(s), &ph(&["kernel", "rootfs", "zephyr"]), None)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn refused(s: &str) -> QemuArgError {
        match check(&w(s), &ph(&["kernel", "rootfs", "zephyr"]), None) {
            Ok(c) => panic!("{s} accepted: {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn the_forms_of_real_jobs_are_allowed() {
        for s in [
            r#"-kernel {kernel} -append "console=ttyAMA0,115200 root=/dev/vda debug verbose console_msg_format=syslog""#,
            "-drive file={rootfs},if=none,format=raw,id=hd0 -device virtio-blk-device,drive=hd0",
            "-device loader,file={zephyr}",
            "-kernel {zephyr}",
            "-bios {kernel}",
            "-drive format=qcow2,file={rootfs}",
            "-drive file={rootfs},index=2,media=cdrom,readonly",
            "-cdrom {rootfs}",
            "-smp 2 --smp 2 -m 4G -cpu max -machine virt -M virt,gic-version=3",
            "-global virtio-blk-device.scsi=off -device virtio-scsi-device,id=scsi",
            r#"--append "console=ttyAMA0 root=/dev/vda rw""#,
            "-net nic,model=virtio,macaddr=52:54:00:12:34:58 -no-reboot -nographic",
            "-device loader,file={zephyr},addr=0x1000,cpu-num=0",
        ] {
            assert!(ok(s).unlisted.is_empty(), "{s}");
        }
    }

    #[test]
    fn what_reaches_the_host_is_refused() {
        for s in [
            "-chardev file,id=x,path=/tmp/x",
            "-monitor unix:/tmp/m,server",
            "--monitor stdio",
            "-qmp tcp::4444",
            "-serial file:/tmp/out",
            "-serial stdio",
            "-parallel file:/tmp/p",
            "-plugin /tmp/evil.so",
            "-object memory-backend-file,id=m,mem-path=/dev/shm/x",
            "-virtfs local,path=/,mount_tag=h",
            "-fsdev local,id=f,path=/",
            "-netdev user,id=n,smb=/",
            "-netdev tap,id=n,script=/tmp/x",
            "-nic user,guestfwd=tcp:1.2.3.4:1-cmd:sh",
            "-add-fd fd=3,set=1",
            "-readconfig /etc/qemu.conf",
            "-loadvm snap",
            "-incoming tcp:0:4444",
            "-D /tmp/log",
            "-d in_asm",
            "-pidfile /tmp/pid",
            "-daemonize",
            "-runas nobody",
            "-chroot /",
            "-sandbox off",
            "-L /usr/share",
            "-gdb tcp::1234",
            "-s",
            "-S",
            "-display gtk",
            "-blockdev driver=file,filename=/etc/shadow,node-name=x",
            "-set drive.x.file=/etc/shadow",
            "-semihosting",
        ] {
            assert!(
                matches!(refused(s), QemuArgError::Denied(_)),
                "{s}: {}",
                refused(s)
            );
        }
        for s in [
            "-kernel /boot/vmlinuz",
            "-bios /usr/share/qemu/efi.fd",
            "-initrd {unknown}",
            "-drive file=/etc/shadow,format=raw",
            "-drive file={rootfs},file.filename=/etc/shadow",
            "-drive driver=file,file={rootfs}",
            "-drive format=raw,if=virtio",
            "-device loader,file=/etc/shadow",
            "-device virtio-net-pci,romfile=/tmp/rom",
            "-device virtserialport,chardev=labd-console",
            "-device vfio-pci,host=01:00.0",
            "-device usb-host,hostbus=1",
            "-device virtio-blk-device,drive=hd0,serial=/x",
            "-machine virt,dumpdtb=/tmp/x",
            "-boot splash=/tmp/x.bmp",
            "-global loader.file=/etc/shadow",
            "-net user,smb=/",
            "-net tap,script=/tmp/x",
            "-net nic,model=virtio -net user",
            "{rootfs}",
            "-kernel",
        ] {
            let e = refused(s);
            assert!(!matches!(e, QemuArgError::Denied(_)), "{s}: {e}");
        }
    }

    #[test]
    fn an_option_labd_does_not_know_needs_the_labs_allowance() {
        let c = ok("-foo bar -baz -qux");
        assert_eq!(c.unlisted, ["-foo", "-baz", "-qux"]);
        assert!(matches!(
            refused("-foo /etc/shadow"),
            QemuArgError::HostPath { .. }
        ));
        assert!(allowable("-foo"));
        assert!(!allowable("-chardev"));
        assert!(!allowable("--monitor"));
        assert!(!allowable("foo"));
    }

    #[test]
    fn an_image_arg_names_its_own_image() {
        let p = ph(&["kernel", "rootfs"]);
        assert!(check(&w("-kernel {kernel}"), &p, Some("{kernel}")).is_ok());
        assert_eq!(
            check(&w("-kernel {kernel}"), &p, Some("{rootfs}")),
            Err(QemuArgError::OwnImage("{rootfs}".into()))
        );
        // A context's options name no image.
        assert!(matches!(
            check(&w("-kernel {kernel}"), &[], None),
            Err(QemuArgError::NotPlaceholder { .. })
        ));
    }

    #[test]
    fn an_image_naming_other_host_files_is_found_by_its_header() {
        let mut q = b"QFI\xfb\0\0\0\x03".to_vec();
        q.resize(104, 0);
        assert_eq!(image_header_refers_outside(&q), None);
        let mut backed = q.clone();
        backed[15] = 0x70;
        assert!(image_header_refers_outside(&backed).is_some());
        let mut data_file = q.clone();
        data_file[79] = 4;
        assert!(image_header_refers_outside(&data_file).is_some());
        assert!(
            image_header_refers_outside(b"# Disk DescriptorFile\nRW 1 FLAT \"/etc/shadow\" 0")
                .is_some()
        );
        assert!(image_header_refers_outside(b"KDMV\x01").is_some());
        assert_eq!(image_header_refers_outside(b"\x7fELF"), None);
        assert_eq!(image_header_refers_outside(b""), None);
    }
}
