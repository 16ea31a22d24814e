//! Job definitions: LAVA-compatible job YAML parsed into labd's [`JobDefinition`].
//!
//! This module owns the line between what labd accepts, accepts with a
//! warning, and rejects. Every diagnostic names the key path and the YAML
//! line and column, so a user can fix a job without guessing. Parsing is
//! pure: nothing is stored until a definition comes back without errors.
//! The accepted/warned/rejected table is written down in `JOBS.md`.

use crate::error::{ErrorCode, Location};
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{Node, Span};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The kernel image format, which picks the boot command (`bootz`, `booti`, `bootm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelType {
    Image,
    Zimage,
    Uimage,
}

impl KernelType {
    pub fn as_str(self) -> &'static str {
        match self {
            KernelType::Image => "image",
            KernelType::Zimage => "zimage",
            KernelType::Uimage => "uimage",
        }
    }
}

/// One artifact to fetch and serve over TFTP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    pub url: String,
    /// LAVA's `sha256sum` of the file as downloaded (before decompression).
    #[serde(default)]
    pub sha256: Option<String>,
    /// LAVA's `compression`: undone before the board sees the file.
    #[serde(default)]
    pub compression: Compression,
}

/// How an artifact is compressed (LAVA's `compression`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gz,
    Xz,
    Zstd,
}

impl Compression {
    /// The file-name suffix such files carry, dropped from the served name.
    pub fn suffix(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Gz => Some(".gz"),
            Compression::Xz => Some(".xz"),
            Compression::Zstd => Some(".zst"),
        }
    }

    /// The name LAVA's `compression` gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gz => "gz",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deploy {
    pub timeout: Option<Duration>,
    /// LAVA's `failure_retry`: attempts in all, sharing the block's timeout.
    #[serde(default)]
    pub failure_retry: Option<u32>,
    /// Required for `to: tftp`; a `to: tmpfs` deploy names its files in `images`.
    pub kernel: Option<Artifact>,
    /// LAVA's `kernel: type`, which picks the load addresses and the boot
    /// command (`{BOOTX}`); optional, as in LAVA, for boots that use neither.
    #[serde(default)]
    pub kernel_type: Option<KernelType>,
    pub ramdisk: Option<Artifact>,
    /// How the ramdisk is shaped and what labd may add to it.
    #[serde(default)]
    pub ramdisk_options: RamdiskOptions,
    pub dtb: Option<Artifact>,
    /// LAVA's `modules`: a tar of `lib/modules`, added to the ramdisk.
    #[serde(default)]
    pub modules: Option<Artifact>,
    /// LAVA's `to: tmpfs` images for a qemu boot, in the job's order.
    #[serde(default)]
    pub images: Vec<Image>,
    /// LAVA's `to: ssh`: nothing is fetched; the device is already
    /// running, and the overlay reaches it over ssh after the ssh boot.
    #[serde(default)]
    pub to_ssh: bool,
    /// LAVA's `nfsrootfs`: a root filesystem the lab's NFS server exports
    /// for the job (`{NFSROOTFS}` on `{NFS_SERVER_IP}`).
    #[serde(default)]
    pub nfsrootfs: Option<NfsRootfs>,
    /// LAVA's `to: downloads`: the images are fetched into the job's
    /// downloads directory and nothing else; later deploys use them with
    /// `downloads://<file>` URLs.
    #[serde(default)]
    pub downloads: Vec<Download>,
}

/// LAVA's keys on a deploy's `ramdisk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RamdiskOptions {
    /// `header: u-boot`: the file is a U-Boot legacy image (`mkimage -T
    /// ramdisk`), checked at the deploy and passed to U-Boot by its header.
    pub uboot_header: bool,
    /// `install_modules: false` keeps the deploy's `modules` out of it.
    pub install_modules: bool,
    /// `install_overlay: false` keeps the test overlay out of it.
    pub install_overlay: bool,
}

impl Default for RamdiskOptions {
    fn default() -> Self {
        RamdiskOptions {
            uboot_header: false,
            install_modules: true,
            install_overlay: true,
        }
    }
}

/// One of a `to: downloads` deploy's images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Download {
    pub name: String,
    pub artifact: Artifact,
}

/// One of a `to: tmpfs` deploy's `images`: a file and the QEMU arguments
/// that give it to the board (`image_arg`, with `{name}` for its path).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    pub artifact: Artifact,
    pub args: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BootCommands {
    /// A command set of the device type, e.g. `ramdisk`.
    Named(String),
    /// Commands given in the job itself.
    Inline(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoLogin {
    pub login_prompt: String,
    pub username: String,
    pub password_prompt: Option<String>,
    pub password: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Boot {
    /// `u-boot`, or `minimal`: power on and wait for the login and prompts.
    pub method: BootMethod,
    pub timeout: Option<Duration>,
    /// LAVA's `failure_retry`: attempts in all, sharing the block's timeout.
    #[serde(default)]
    pub failure_retry: Option<u32>,
    pub commands: BootCommands,
    pub prompts: Vec<String>,
    pub auto_login: Option<AutoLogin>,
    /// LAVA's `reset` of a `minimal` boot: false connects to a board that
    /// is already running (after an interactive test booted it by hand)
    /// instead of power-cycling it.
    #[serde(default = "yes")]
    pub reset: bool,
    /// LAVA's `transfer_overlay`: after the login, the board downloads the
    /// job's overlay over HTTP and unpacks it.
    #[serde(default)]
    pub transfer_overlay: Option<TransferOverlay>,
}

/// How a booted board fetches and unpacks its overlay (LAVA's http method):
/// `<download_command> <url>`, then `<unpack_command> overlay.tar.gz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferOverlay {
    pub download_command: String,
    pub unpack_command: String,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BootMethod {
    UBoot,
    Minimal,
    /// The relay boots the deployed kernel itself (QEMU `-kernel`).
    Qemu,
    /// LAVA's `bootloader`: power on, interrupt the bootloader, send the
    /// commands, and stay at its prompt (for `interactive` tests of the
    /// bootloader itself).
    Bootloader,
    /// LAVA's `ssh`: the device is running; the boot opens the board's ssh
    /// connection and waits for the prompt.
    Ssh,
}

impl BootMethod {
    /// The method's name in a job, as LAVA spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            BootMethod::UBoot => "u-boot",
            BootMethod::Minimal => "minimal",
            BootMethod::Qemu => "qemu",
            BootMethod::Bootloader => "bootloader",
            BootMethod::Ssh => "ssh",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestDefinition {
    pub name: String,
    /// An inline definition's steps; a git definition's come from its
    /// repository when the job runs.
    pub steps: Vec<String>,
    /// The job's parameters, over the definition's own `params`.
    pub parameters: BTreeMap<String, String>,
    #[serde(default)]
    pub source: DefinitionSource,
    /// LAVA's `expected`: test case names that must be reported; a
    /// missing one is recorded as a fail.
    #[serde(default)]
    pub expected: Option<Vec<String>>,
    /// LAVA's `lava-signal: kmsg`: the definition's signals go to the
    /// kernel's log (`/dev/kmsg`, which the kernel prints on the console)
    /// rather than the shell's output, for boards whose console the shell
    /// does not own.
    #[serde(default)]
    pub signal_kmsg: bool,
}

/// Where a test definition comes from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum DefinitionSource {
    /// `from: inline`: the job holds it.
    #[default]
    Inline,
    /// `from: git`: a YAML file in a repository the lab host clones.
    Git(GitDefinition),
    /// `from: url`: a tarball of definitions the lab host downloads and
    /// unpacks, the definition file at `path` inside it.
    Url(UrlDefinition),
}

/// LAVA's `from: url` definitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UrlDefinition {
    /// The tarball, as any artifact: http(s) or `file://` under the lab's
    /// file roots, with LAVA's `compression`.
    pub artifact: Artifact,
    /// The definition's YAML file inside the unpacked tree.
    pub path: String,
    /// LAVA's `strip-components`: leading directories dropped from each
    /// path in the tarball.
    #[serde(default)]
    pub strip_components: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GitDefinition {
    /// Any URL git fetches: https, http, git, ssh (also `user@host:path`)
    /// or file.
    pub repository: String,
    /// The definition's YAML file, relative to the repository's top.
    pub path: String,
    /// A commit, tag or branch; the default branch's head without it.
    pub revision: Option<String>,
    pub branch: Option<String>,
    /// False: the board gets the files without the repository's history.
    pub history: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Test {
    pub timeout: Option<Duration>,
    /// LAVA's `failure_retry`: attempts in all, sharing the block's timeout.
    #[serde(default)]
    pub failure_retry: Option<u32>,
    /// Shell test definitions; empty for an interactive or monitors test.
    pub definitions: Vec<TestDefinition>,
    /// LAVA's `interactive` scripts: commands sent to a prompt (a
    /// bootloader's or a shell's) and their answers matched.
    #[serde(default)]
    pub interactive: Vec<InteractiveScript>,
    /// LAVA's `monitors`: results read from the console with no shell.
    #[serde(default)]
    pub monitors: Vec<Monitor>,
    /// `timeout: {skip: true}`: when the action runs out of time, the job
    /// goes on with the next action instead of ending.
    #[serde(default)]
    pub skip_on_timeout: bool,
}

/// One script of an `interactive` test: its commands all wait for its prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InteractiveScript {
    pub name: String,
    /// Regexes, as LAVA's (pexpect's) patterns.
    pub prompts: Vec<String>,
    /// `echo: discard`: the line after each command (its echo) is skipped.
    #[serde(default)]
    pub discard_echo: bool,
    pub steps: Vec<InteractiveStep>,
    /// Test case names that must be reported; a missing one is a fail.
    #[serde(default)]
    pub expected: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InteractiveStep {
    /// Waits this long before the next step.
    Delay(Duration),
    Command(InteractiveCommand),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InteractiveCommand {
    /// What is sent, with LAVA's placeholders; `None` sends nothing and
    /// only waits.
    pub command: Option<String>,
    /// The test case this command reports; an unnamed command that fails
    /// ends the job.
    pub name: Option<String>,
    pub successes: Vec<String>,
    pub failures: Vec<InteractiveFailure>,
    pub wait_for_prompt: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InteractiveFailure {
    pub message: String,
    /// LAVA's `exception`: the class of the error that ends the job when
    /// this failure is seen; without it, the test case fails and the job
    /// goes on.
    pub exception: Option<crate::model::ErrorClass>,
    /// The error's message (`error`), else the text that matched.
    pub error: Option<String>,
}

/// One `monitors` entry: between `start` and `end`, each match of
/// `pattern` is a test case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Monitor {
    pub name: String,
    pub start: String,
    pub end: String,
    /// A regex with the named groups `test_case_id` and `result` (or
    /// `measurement`), and optionally `units`.
    pub pattern: String,
    pub fixupdict: BTreeMap<String, String>,
    #[serde(default)]
    pub expected: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    Deploy(Deploy),
    Boot(Boot),
    Test(Test),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeouts {
    pub job: Option<Duration>,
    pub action: Option<Duration>,
    pub connection: Option<Duration>,
    /// LAVA's queue timeout: the job is canceled if no board takes it in time.
    #[serde(default)]
    pub queue: Option<Duration>,
    /// Per named action, using LAVA's action names (`bootloader-commands`, ...).
    pub actions: BTreeMap<String, Duration>,
    /// LAVA's `connections`: the connection timeout per named action.
    #[serde(default)]
    pub connections: BTreeMap<String, Duration>,
}

/// The longest timeouts a lab allows (see the config's `[limits]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeoutMaxima {
    pub job: Duration,
    pub action: Duration,
    pub connection: Duration,
}

/// A validated job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobDefinition {
    pub device_type: String,
    pub job_name: String,
    pub priority: u8,
    pub tags: Vec<String>,
    pub timeouts: Timeouts,
    pub actions: Vec<Action>,
    /// labd's job-level `failure_retry`: attempts in all when the job ends
    /// with an Infrastructure error (a dead board, a restarted dispatcher).
    #[serde(default)]
    pub failure_retry: Option<u32>,
    /// LAVA's `secrets`, by name. In the stored job's text each value is
    /// [`SECRET_MASK`]; the lab fills them in from their sealed copy.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// LAVA's `context`: the keys labd honours.
    #[serde(default)]
    pub context: JobContext,
}

/// The keys of LAVA's job `context` that labd honours: for a QEMU board
/// booted with `method: qemu`, the QEMU options LAVA's qemu device type
/// builds from them; for any boot, the kernel arguments LAVA's templates
/// add. Every other key is warned.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobContext {
    /// LAVA's architecture name (`arm64`, `amd64`, ...): the board's QEMU
    /// must be the binary LAVA would run for it.
    pub arch: Option<String>,
    pub cpu: Option<String>,
    pub machine: Option<String>,
    pub memory: Option<String>,
    /// `extra_options`, split into words and checked as `image_arg`s are.
    pub extra_options: Vec<String>,
    pub extra_kernel_args: Option<String>,
    pub console_device: Option<String>,
}

impl JobContext {
    /// The QEMU options the context adds, after the board's own, as LAVA's
    /// qemu device type writes them: `-cpu`, `-machine`, `-m`, then the
    /// extra options.
    pub fn qemu_options(&self) -> Vec<String> {
        let mut a = Vec::new();
        for (opt, v) in [
            ("-cpu", &self.cpu),
            ("-machine", &self.machine),
            ("-m", &self.memory),
        ] {
            if let Some(v) = v {
                a.extend([opt.to_owned(), v.clone()]);
            }
        }
        a.extend(self.extra_options.iter().cloned());
        a
    }

    /// The kernel arguments the context adds (as LAVA's base-uboot template
    /// does): `console=<console_device>,<baud>n8`, then `extra_kernel_args`.
    pub fn kernel_args(&self, baud: Option<u32>) -> String {
        let mut parts = Vec::new();
        if let Some(c) = &self.console_device {
            parts.push(match baud {
                Some(b) if !c.contains(',') => format!("console={c},{b}n8"),
                _ => format!("console={c}"),
            });
        }
        if let Some(e) = &self.extra_kernel_args {
            parts.push(e.clone());
        }
        parts.join(" ")
    }
}

/// Adds kernel arguments to a bootloader command that sets the kernel's
/// command line (`setenv bootargs '...'` or `setenv bootargs "..."` or
/// unquoted), inside its quotes; any other command is left as it is.
pub fn with_bootargs(cmd: &str, args: &str) -> String {
    let t = cmd.trim_end();
    if args.is_empty() || !t.trim_start().starts_with("setenv bootargs") {
        return cmd.to_owned();
    }
    match t.chars().last() {
        Some(q @ ('\'' | '"')) => format!("{} {args}{q}", &t[..t.len() - 1]),
        _ => format!("{t} {args}"),
    }
}

/// What a secret's value is replaced by wherever the job can be read.
pub const SECRET_MASK: &str = "[MASKED]";

/// One problem (or warning) in a job, with where it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Diagnostic {
    pub code: ErrorCode,
    pub location: Location,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Why a job was rejected: every error found, first one first.
#[derive(Debug, Clone, thiserror::Error)]
pub struct JobError {
    pub errors: Vec<Diagnostic>,
}

/// A refused job on the socket: its code, every error, and where the
/// first one is.
impl From<JobError> for crate::error::ApiError {
    fn from(e: JobError) -> Self {
        crate::error::ApiError {
            code: e.code(),
            message: e.to_string(),
            location: Some(e.first().location.clone()),
        }
    }
}

impl JobError {
    pub fn first(&self) -> &Diagnostic {
        // Invariant: a JobError is only built with at least one diagnostic.
        &self.errors[0]
    }

    pub fn code(&self) -> ErrorCode {
        if self.errors.iter().all(|e| e.code == ErrorCode::Unsupported) {
            ErrorCode::Unsupported
        } else {
            ErrorCode::InvalidJob
        }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A parsed job with the warnings it raised (keys accepted but ignored).
#[derive(Debug, Clone)]
pub struct Parsed {
    pub definition: JobDefinition,
    pub warnings: Vec<Diagnostic>,
    /// Every `file://` artifact's path and where the job names it, so the
    /// lab can check them at submit (see [`crate::local_file`]).
    pub files: Vec<(Location, String)>,
    /// Where each `secrets` value starts (a character index) and its key
    /// path, for [`mask_secrets`].
    pub secret_values: Vec<(usize, String)>,
    /// QEMU options outside labd's default allow-list, and where the job
    /// gives each: the lab must allow them (`[qemu] extra_allowed_options`).
    pub qemu_options: Vec<(Location, String)>,
}

/// Top-level keys that change nothing for a single lab: accepted with a warning.
pub const WARNED_TOP: &[&str] = &[
    "visibility",
    "metadata",
    "notify",
    "description",
    // lava-server adds it to the definition it gives a worker.
    "compatibility",
];

struct Ctx<'a> {
    file: &'a str,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    files: Vec<(Location, String)>,
    /// Where each `secrets` value starts in the text (a character index),
    /// with its key path: for [`mask_secrets`].
    secret_values: Vec<(usize, String)>,
    qemu_options: Vec<(Location, String)>,
}

impl Ctx<'_> {
    fn loc(&self, path: &str, span: &Span) -> Location {
        Location {
            file: Some(self.file.to_owned()),
            path: if path.is_empty() {
                None
            } else {
                Some(path.to_owned())
            },
            line: span.start().map(|m| m.line()),
            column: span.start().map(|m| m.column()),
        }
    }
    fn err(&mut self, path: &str, span: &Span, msg: impl Into<String>) {
        let location = self.loc(path, span);
        self.errors.push(Diagnostic {
            code: ErrorCode::InvalidJob,
            location,
            message: msg.into(),
        });
    }
    fn unsupported(&mut self, path: &str, span: &Span, msg: impl Into<String>) {
        let location = self.loc(path, span);
        self.errors.push(Diagnostic {
            code: ErrorCode::Unsupported,
            location,
            message: msg.into(),
        });
    }
    fn warn(&mut self, path: &str, span: &Span, msg: impl Into<String>) {
        let location = self.loc(path, span);
        self.warnings.push(Diagnostic {
            code: ErrorCode::Unsupported,
            location,
            message: msg.into(),
        });
    }

    fn mapping<'n>(&mut self, path: &str, node: &'n Node) -> Option<&'n MarkedMappingNode> {
        match node {
            Node::Mapping(m) => Some(m),
            _ => {
                self.err(path, node.span(), "expected a mapping");
                None
            }
        }
    }

    fn string(&mut self, path: &str, node: &Node) -> Option<String> {
        match node {
            Node::Scalar(s) => Some(s.as_str().to_owned()),
            _ => {
                self.err(path, node.span(), "expected a string");
                None
            }
        }
    }

    /// A `compression` key: what labd undoes, or None (said) when it is
    /// not a string or not one labd undoes.
    fn compression(&mut self, path: &str, node: &Node) -> Option<Compression> {
        match self.string(path, node)?.as_str() {
            "gz" => Some(Compression::Gz),
            "xz" => Some(Compression::Xz),
            "zstd" => Some(Compression::Zstd),
            "none" => Some(Compression::None),
            other => {
                self.unsupported(
                    path,
                    node.span(),
                    format!(
                        "compression `{other}` is not supported; labd undoes `gz`, `xz` and `zstd`"
                    ),
                );
                None
            }
        }
    }

    fn string_list(&mut self, path: &str, node: &Node) -> Option<Vec<String>> {
        match node {
            Node::Scalar(s) => Some(vec![s.as_str().to_owned()]),
            Node::Sequence(seq) => {
                let mut out = Vec::new();
                for (i, n) in seq.iter().enumerate() {
                    out.push(self.string(&format!("{path}[{i}]"), n)?);
                }
                Some(out)
            }
            Node::Mapping(_) => {
                self.err(path, node.span(), "expected a string or a list of strings");
                None
            }
        }
    }

    /// LAVA's timeout: a mapping of `days`, `hours`, `minutes` and/or `seconds`.
    /// A `failure_retry` count: attempts in all, 1 to 10.
    fn attempts(&mut self, path: &str, node: &Node) -> Option<u32> {
        match node
            .as_scalar()
            .and_then(|s| s.as_str().trim().parse::<u32>().ok())
        {
            Some(n @ 1..=10) => Some(n),
            _ => {
                self.err(
                    path,
                    node.span(),
                    "failure_retry must be a number of attempts from 1 to 10",
                );
                None
            }
        }
    }

    /// An action's timeout, which may also say `skip: true`: its running
    /// out then ends only the action, and the job goes on (LAVA's rule).
    fn action_timeout(&mut self, path: &str, node: &Node) -> (Option<Duration>, bool) {
        let skip = match node {
            Node::Mapping(m) => match m.get_node("skip") {
                None => false,
                Some(v) => match v.as_scalar().map(|s| s.as_str()) {
                    Some("true" | "True" | "yes") => true,
                    Some("false" | "False" | "no") => false,
                    _ => {
                        self.err(&format!("{path}.skip"), v.span(), "expected true or false");
                        false
                    }
                },
            },
            _ => false,
        };
        (self.timeout_of(path, node, true), skip)
    }

    fn timeout(&mut self, path: &str, node: &Node) -> Option<Duration> {
        self.timeout_of(path, node, false)
    }

    fn timeout_of(&mut self, path: &str, node: &Node, allow_skip: bool) -> Option<Duration> {
        let m = self.mapping(path, node)?;
        let mut secs: u64 = 0;
        if m.is_empty() {
            self.err(
                path,
                node.span(),
                "a timeout needs days, hours, minutes or seconds",
            );
            return None;
        }
        for (k, v) in m.iter() {
            if allow_skip && k.as_str() == "skip" {
                continue;
            }
            let unit = match k.as_str() {
                "days" => 86400,
                "hours" => 3600,
                "minutes" => 60,
                "seconds" => 1,
                other => {
                    self.err(
                        &format!("{path}.{other}"),
                        k.span(),
                        format!(
                            "unknown timeout unit `{other}`; use days, hours, minutes or seconds"
                        ),
                    );
                    return None;
                }
            };
            let n = match v
                .as_scalar()
                .and_then(|s| s.as_str().trim().parse::<u64>().ok())
            {
                Some(n) => n,
                None => {
                    self.err(
                        &format!("{path}.{}", k.as_str()),
                        v.span(),
                        "expected a whole non-negative number",
                    );
                    return None;
                }
            };
            secs = secs.saturating_add(n.saturating_mul(unit));
        }
        if secs == 0 {
            self.err(path, node.span(), "a timeout must be longer than zero");
            return None;
        }
        Some(Duration::from_secs(secs))
    }
}

fn key_span(k: &MarkedScalarNode) -> Span {
    *k.span()
}

/// Parses and validates a job. `file` names the source in diagnostics.
pub fn parse(file: &str, text: &str) -> Result<Parsed, JobError> {
    let mut ctx = Ctx {
        file,
        errors: Vec::new(),
        warnings: Vec::new(),
        files: Vec::new(),
        secret_values: Vec::new(),
        qemu_options: Vec::new(),
    };
    let (root, duplicate) = load_yaml(file, text)?;
    let repeated = duplicate.is_some();
    ctx.warnings.extend(duplicate);
    let def = parse_root(&mut ctx, &root);
    // The value a repeated key loses is still in the job's text, where
    // masking would not find it: a job with secrets repeats no key.
    if repeated && def.as_ref().is_some_and(|d| !d.secrets.is_empty()) {
        ctx.err(
            "secrets",
            root.span(),
            "a job with `secrets` may not give a key twice: the value not used would be kept in clear",
        );
    }
    match def {
        Some(definition) if ctx.errors.is_empty() => Ok(Parsed {
            definition,
            warnings: ctx.warnings,
            files: ctx.files,
            secret_values: ctx.secret_values,
            qemu_options: ctx.qemu_options,
        }),
        _ => {
            if ctx.errors.is_empty() {
                ctx.err("", root.span(), "invalid job");
            }
            Err(JobError { errors: ctx.errors })
        }
    }
}

/// A parameter's value as LAVA writes it into a test's environment:
/// LAVA loads the YAML (PyYAML, YAML 1.1) and formats the value with
/// Python's `str()`, so `true` and `yes` become `True`, `0x10` becomes
/// `16`, `1e3` becomes `1000.0`, a null becomes empty, and a list or a
/// mapping its Python form (`['a', 1]`). A quoted scalar stays as written.
pub fn lava_text(v: &Node) -> String {
    match v {
        Node::Scalar(s) if !s.may_coerce() => s.as_str().to_owned(),
        Node::Scalar(s) => plain_scalar(s.as_str()),
        _ => python_repr(v),
    }
}

/// What PyYAML makes of a plain scalar, formatted by `str()`.
fn plain_scalar(t: &str) -> String {
    match t {
        "" | "~" | "null" | "Null" | "NULL" => return String::new(),
        "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => {
            return "True".into()
        }
        "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => {
            return "False".into()
        }
        _ => {}
    }
    let digits = t.replace('_', "");
    let (sign, body) = match digits.strip_prefix('-') {
        Some(b) => ("-", b.to_owned()),
        None => ("", digits.strip_prefix('+').unwrap_or(&digits).to_owned()),
    };
    let int = if let Some(h) = body.strip_prefix("0x") {
        i128::from_str_radix(h, 16).ok()
    } else if let Some(b) = body.strip_prefix("0b") {
        i128::from_str_radix(b, 2).ok()
    } else if body.len() > 1 && body.starts_with('0') && body.bytes().all(|c| c.is_ascii_digit()) {
        // YAML 1.1 reads a leading zero as octal.
        i128::from_str_radix(&body[1..], 8).ok()
    } else if !body.is_empty() && body.bytes().all(|c| c.is_ascii_digit()) {
        body.parse::<i128>().ok()
    } else {
        None
    };
    if let Some(n) = int {
        return format!("{sign}{n}");
    }
    let is_float = body.contains('.')
        && body
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '.')
        && body
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'));
    if is_float {
        if let Ok(f) = format!("{sign}{body}").parse::<f64>() {
            return python_float(f);
        }
    }
    match body.as_str() {
        ".inf" | ".Inf" | ".INF" => format!("{sign}inf"),
        ".nan" | ".NaN" | ".NAN" => "nan".into(),
        _ => t.to_owned(),
    }
}

/// Python's `repr()` of a float: the shortest form that reads back, with
/// `.0` on whole numbers and an exponent from 1e16 (or under 1e-4).
fn python_float(f: f64) -> String {
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        // Rust writes `1e16`, `1.5e-5`; Python `1e+16`, `1.5e-05`.
        let e = format!("{f:e}");
        if let Some((m, x)) = e.split_once('e') {
            let (xs, xd) = match x.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', x),
            };
            return format!("{m}e{xs}{xd:0>2}");
        }
        return e;
    }
    if f.fract() == 0.0 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

/// Python's `repr()` of what PyYAML loads for a list or a mapping.
fn python_repr(v: &Node) -> String {
    match v {
        Node::Scalar(s) => {
            let text = if s.may_coerce() {
                plain_scalar(s.as_str())
            } else {
                s.as_str().to_owned()
            };
            let typed = s.may_coerce()
                && (s.as_str().is_empty() || text != s.as_str() || text.parse::<f64>().is_ok());
            if !typed {
                python_str_repr(&text)
            } else if text.is_empty() {
                "None".into()
            } else {
                text
            }
        }
        Node::Sequence(seq) => {
            let items: Vec<String> = seq.iter().map(python_repr).collect();
            format!("[{}]", items.join(", "))
        }
        Node::Mapping(m) => {
            let items: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{}: {}", python_str_repr(k.as_str()), python_repr(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}

/// Python's `repr()` of a string: single quotes unless it holds one and
/// no double quote.
pub(crate) fn python_str_repr(s: &str) -> String {
    let q = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::from(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(q);
    out
}

/// Loads YAML as labd reads jobs: every scalar kept as written with its
/// quoting (see [`lava_text`]), and an error naming the file, line and
/// column. A key given twice in a mapping keeps its last value, as LAVA's
/// PyYAML loader does (real jobs have them), with a warning naming the
/// first such key.
fn load_yaml(file: &str, text: &str) -> Result<(Node, Option<Diagnostic>), JobError> {
    let load = |dups: bool| {
        let opts = marked_yaml::LoaderOptions::default()
            .error_on_duplicate_keys(dups)
            .prevent_coercion(true);
        marked_yaml::parse_yaml_with_options(0, text, opts)
    };
    let at = |e: &marked_yaml::LoadError| {
        let (line, column) = load_error_position(e);
        Location {
            file: Some(file.to_owned()),
            path: None,
            line,
            column,
        }
    };
    let invalid = |e: marked_yaml::LoadError| JobError {
        errors: vec![Diagnostic {
            code: ErrorCode::InvalidJob,
            location: at(&e),
            message: format!("not valid YAML: {}", strip_position(&e.to_string())),
        }],
    };
    match load(true) {
        Ok(n) => Ok((n, None)),
        Err(e @ marked_yaml::LoadError::DuplicateKey(_)) => {
            let warning = Diagnostic {
                code: ErrorCode::InvalidJob,
                location: at(&e),
                message: format!(
                    "{}; the last value is used, as LAVA's YAML loader uses it",
                    strip_position(&e.to_string())
                ),
            };
            load(false).map(|n| (n, Some(warning))).map_err(invalid)
        }
        Err(e) => Err(invalid(e)),
    }
}

fn strip_position(msg: &str) -> String {
    // marked-yaml prefixes "line:col: "; the location is reported separately.
    let mut parts = msg.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), Some(rest))
            if a.trim().parse::<usize>().is_ok() && b.trim().parse::<usize>().is_ok() =>
        {
            rest.trim().to_owned()
        }
        _ => msg.to_owned(),
    }
}

fn load_error_position(e: &marked_yaml::LoadError) -> (Option<usize>, Option<usize>) {
    use marked_yaml::LoadError::*;
    let m = match e {
        TopLevelMustBeMapping(m)
        | TopLevelMustBeSequence(m)
        | UnexpectedAnchor(m)
        | MappingKeyMustBeScalar(m)
        | UnexpectedTag(m)
        | ScanError(m, _) => Some(*m),
        DuplicateKey(d) => d.key.span().start().copied(),
    };
    (m.map(|m| m.line()), m.map(|m| m.column()))
}

fn parse_root(ctx: &mut Ctx, root: &Node) -> Option<JobDefinition> {
    let m = ctx.mapping("", root)?;
    let mut device_type = None;
    let mut job_name = None;
    let mut priority = 50u8;
    let mut tags = Vec::new();
    let mut timeouts = Timeouts::default();
    let mut actions = None;
    let mut failure_retry = None;
    let mut secrets = BTreeMap::new();
    let mut context = JobContext::default();
    for (k, v) in m.iter() {
        let key = k.as_str();
        match key {
            "secrets" => secrets = parse_secrets(ctx, v),
            "context" => context = parse_context(ctx, v).unwrap_or_default(),
            "failure_retry" => failure_retry = ctx.attempts(key, v),
            "device_type" => device_type = ctx.string(key, v),
            "job_name" => job_name = ctx.string(key, v),
            "priority" => {
                if let Some(p) = parse_priority(ctx, v) {
                    priority = p;
                }
            }
            "tags" => tags = ctx.string_list(key, v).unwrap_or_default(),
            "timeouts" => timeouts = parse_timeouts(ctx, v).unwrap_or_default(),
            "actions" => actions = parse_actions(ctx, v),
            k2 if WARNED_TOP.contains(&k2) => ctx.warn(
                key,
                &key_span(k),
                format!("`{key}` changes nothing in a single lab; ignored"),
            ),
            "protocols" => ctx.unsupported(
                key,
                &key_span(k),
                "protocols (multinode, lava-lxc, ...) are not supported by labd",
            ),
            "reboot_to_fastboot" | "job_timeout" | "action_timeout" => ctx.unsupported(
                key,
                &key_span(k),
                format!("`{key}` is not supported by labd"),
            ),
            _ => ctx.err(key, &key_span(k), format!("unknown key `{key}`")),
        }
    }
    if device_type.is_none()
        && !ctx
            .errors
            .iter()
            .any(|e| e.location.path.as_deref() == Some("device_type"))
    {
        ctx.err(
            "device_type",
            root.span(),
            "missing required key `device_type`",
        );
    }
    if job_name.is_none()
        && !ctx
            .errors
            .iter()
            .any(|e| e.location.path.as_deref() == Some("job_name"))
    {
        ctx.err("job_name", root.span(), "missing required key `job_name`");
    }
    match m.get_node("timeouts") {
        None => ctx.err(
            "timeouts",
            root.span(),
            "missing required key `timeouts` (with `job`)",
        ),
        Some(t)
            if t.as_mapping()
                .is_some_and(|tm| tm.get_node("job").is_none()) =>
        {
            ctx.err(
                "timeouts.job",
                t.span(),
                "missing required key `timeouts.job`",
            )
        }
        Some(_) => {}
    }
    let actions = match (actions, m.get_node("actions")) {
        (Some(a), _) => a,
        (None, None) => {
            ctx.err("actions", root.span(), "missing required key `actions`");
            return None;
        }
        (None, Some(_)) => return None,
    };
    let qemu_context = context.arch.is_some() || !context.qemu_options().is_empty();
    if qemu_context
        && !actions
            .iter()
            .any(|a| matches!(a, Action::Boot(b) if b.method == BootMethod::Qemu))
    {
        if let Some(c) = m.get_node("context") {
            ctx.warn(
                "context",
                c.span(),
                "`arch`, `cpu`, `machine`, `memory` and `extra_options` shape the QEMU of a `method: qemu` boot; this job has none, so they change nothing",
            );
        }
    }
    Some(JobDefinition {
        device_type: device_type?,
        job_name: job_name?,
        priority,
        tags,
        timeouts,
        actions,
        failure_retry,
        secrets,
        context,
    })
}

/// LAVA's `secrets`: names a shell can export, each with a one-line value.
fn parse_secrets(ctx: &mut Ctx, v: &Node) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(m) = ctx.mapping("secrets", v) else {
        return out;
    };
    for (k, val) in m.iter() {
        let name = k.as_str();
        let p = format!("secrets.{name}");
        let shell_name = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !shell_name {
            ctx.err(
                &p,
                &key_span(k),
                "a secret's name is a shell variable's: letters, digits and `_`, not starting with a digit",
            );
            continue;
        }
        let Node::Scalar(s) = val else {
            ctx.err(&p, val.span(), "a secret's value is a string");
            continue;
        };
        if s.as_str().contains('\n') {
            ctx.err(&p, val.span(), "a secret's value is one line");
            continue;
        }
        if let Some(at) = val.span().start() {
            ctx.secret_values.push((at.character(), p));
        }
        out.insert(name.to_owned(), s.as_str().to_owned());
    }
    out
}

/// Where a one-line scalar that starts at byte `start` ends: after its
/// closing quote, or (plain) before a comment or the line's end, or, in a
/// flow mapping, before a `,` or `}`.
fn scalar_end(text: &str, start: usize, flow: bool) -> Option<usize> {
    let rest = text.get(start..)?;
    let line = rest.split('\n').next()?;
    match line.chars().next()? {
        '\'' => {
            let mut i = 1;
            let b = line.as_bytes();
            while i < b.len() {
                if b[i] == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    return Some(start + i + 1);
                }
                i += 1;
            }
            None
        }
        '"' => {
            let b = line.as_bytes();
            let mut i = 1;
            while i < b.len() {
                match b[i] {
                    b'\\' => i += 2,
                    b'"' => return Some(start + i + 1),
                    _ => i += 1,
                }
            }
            None
        }
        _ => {
            let mut end = line.len();
            if let Some(c) = line.find(" #") {
                end = end.min(c);
            }
            if flow {
                if let Some(c) = line.find([',', '}']) {
                    end = end.min(c);
                }
            }
            Some(start + line[..end].trim_end().len())
        }
    }
}

/// The job's text with each `secrets` value replaced by `'[MASKED]'`, for
/// the store: the values themselves are kept only sealed (see
/// [`crate::secrets`]). The masked text is parsed again and must give the
/// same job but for the values, or the job is refused: a value this cannot
/// find exactly (a multi-line scalar) would otherwise be stored in clear.
pub fn mask_secrets(file: &str, text: &str, parsed: &Parsed) -> Result<String, JobError> {
    if parsed.secret_values.is_empty() {
        return Ok(text.to_owned());
    }
    let refuse = |path: &str| {
        JobError {
        errors: vec![Diagnostic {
            code: ErrorCode::InvalidJob,
            location: Location {
                file: Some(file.to_owned()),
                path: Some(path.to_owned()),
                line: None,
                column: None,
            },
            message: "labd could not mask this secret's value in the stored job; write it as a one-line scalar in block style (`NAME: value`)".into(),
        }],
    }
    };
    let want = {
        let mut d = parsed.definition.clone();
        for v in d.secrets.values_mut() {
            *v = SECRET_MASK.to_owned();
        }
        d
    };
    let mut last_path = String::new();
    'style: for flow in [false, true] {
        let mut ranges = Vec::new();
        for (ch, path) in &parsed.secret_values {
            last_path.clone_from(path);
            let Some(start) = text.char_indices().nth(*ch).map(|(b, _)| b) else {
                return Err(refuse(path));
            };
            let Some(end) = scalar_end(text, start, flow) else {
                return Err(refuse(path));
            };
            ranges.push((start, end));
        }
        ranges.sort();
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (start, end) in ranges {
            if start < at {
                // A plain value read to its line's end runs into the next
                // one: the values are in a flow mapping.
                continue 'style;
            }
            out.push_str(&text[at..start]);
            out.push('\'');
            out.push_str(SECRET_MASK);
            out.push('\'');
            at = end;
        }
        out.push_str(&text[at..]);
        if parse(file, &out).is_ok_and(|p| p.definition == want) {
            return Ok(out);
        }
    }
    Err(refuse(&last_path))
}

/// Splits and checks a job's QEMU option string (an `image_arg`, a
/// context's QEMU keys) under the lab's policy (see [`crate::qemu_args`]),
/// noting the options only the lab's configuration can allow. `None` after
/// an error at `path`.
fn qemu_options(
    ctx: &mut Ctx,
    path: &str,
    span: &Span,
    words: Result<Vec<String>, crate::qemu_args::SplitError>,
    placeholders: &[String],
    own: Option<&str>,
) -> Option<Vec<String>> {
    use crate::qemu_args::{check, QemuArgError};
    let checked = words
        .map_err(QemuArgError::from)
        .and_then(|words| check(&words, placeholders, own));
    match checked {
        Ok(c) => {
            for opt in c.unlisted {
                let location = ctx.loc(path, span);
                ctx.warn(
                    path,
                    span,
                    format!("`{opt}` is not among labd's default QEMU options: the lab must allow it (`[qemu] extra_allowed_options`)"),
                );
                ctx.qemu_options.push((location, opt));
            }
            Some(c.args)
        }
        // A feature of QEMU labd keeps from jobs.
        Err(
            e @ (QemuArgError::Denied(_)
            | QemuArgError::DeniedDevice(_)
            | QemuArgError::DeniedProperty { .. }
            | QemuArgError::Net(_)),
        ) => {
            ctx.unsupported(path, span, e.to_string());
            None
        }
        Err(e) => {
            ctx.err(path, span, e.to_string());
            None
        }
    }
}

/// LAVA's `context`: the keys labd honours, checked; guestfs refused;
/// every other key warned (LAVA's device templates read many labd has no
/// use for).
fn parse_context(ctx: &mut Ctx, v: &Node) -> Option<JobContext> {
    let m = ctx.mapping("context", v)?;
    let mut c = JobContext::default();
    for (k, val) in m.iter() {
        let key = k.as_str();
        let p = format!("context.{key}");
        let text = |ctx: &mut Ctx| match val {
            Node::Scalar(_) => Some(lava_text(val)),
            _ => {
                ctx.err(&p, val.span(), "expected a single value");
                None
            }
        };
        match key {
            "arch" => {
                c.arch = text(ctx).filter(|a| {
                    let ok = !a.is_empty()
                        && a.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
                    if !ok {
                        ctx.err(
                            &p,
                            val.span(),
                            format!("`{a}` is not an architecture name (such as arm64, amd64)"),
                        );
                    }
                    ok
                })
            }
            "cpu" | "machine" | "memory" => {
                let Some(t) = text(ctx) else { continue };
                let opt = match key {
                    "cpu" => "-cpu",
                    "machine" => "-machine",
                    _ => "-m",
                };
                // One word, checked as the option it becomes.
                if t.is_empty() || t.contains(char::is_whitespace) {
                    ctx.err(
                        &p,
                        val.span(),
                        format!("`{t}` must be one word, the value of QEMU's `{opt}`"),
                    );
                    continue;
                }
                let words = Ok(vec![opt.to_owned(), t.clone()]);
                if qemu_options(ctx, &p, val.span(), words, &[], None).is_none() {
                    continue;
                }
                let slot = match key {
                    "cpu" => &mut c.cpu,
                    "machine" => &mut c.machine,
                    _ => &mut c.memory,
                };
                *slot = Some(t);
            }
            "extra_options" => {
                let items: Vec<String> = match val {
                    Node::Sequence(items) => items.iter().map(lava_text).collect(),
                    Node::Scalar(_) => vec![lava_text(val)],
                    Node::Mapping(_) => {
                        ctx.err(&p, val.span(), "expected a list of QEMU options");
                        continue;
                    }
                };
                // LAVA joins the items into one command line: `-smp` and
                // `2` may be two items.
                let joined = items.join(" ");
                if let Some(args) = qemu_options(
                    ctx,
                    &p,
                    val.span(),
                    crate::qemu_args::split(&joined),
                    &[],
                    None,
                ) {
                    c.extra_options = args;
                }
            }
            "extra_kernel_args" | "console_device" => {
                let Some(t) = text(ctx) else { continue };
                // It goes inside a quoted `setenv bootargs '...'`.
                if t.contains(['\'', '"', '\n', '\r', ';']) {
                    ctx.err(
                        &p,
                        val.span(),
                        "kernel arguments may not hold quotes, `;` or line breaks",
                    );
                    continue;
                }
                if key == "console_device" {
                    c.console_device = Some(t);
                } else {
                    c.extra_kernel_args = Some(t);
                }
            }
            g if g.starts_with("guestfs_") => ctx.unsupported(
                &p,
                &key_span(k),
                format!("`{key}`: labd does not build a guestfs image for the test overlay"),
            ),
            "netdevice" => ctx.warn(
                &p,
                val.span(),
                "the board's network is the lab's (its QEMU argv); `netdevice` ignored",
            ),
            _ => ctx.warn(
                &p,
                val.span(),
                format!("`{key}` is read by LAVA's device templates, not by labd; ignored"),
            ),
        }
    }
    Some(c)
}

fn parse_priority(ctx: &mut Ctx, v: &Node) -> Option<u8> {
    let s = ctx.string("priority", v)?;
    match s.as_str() {
        "high" => Some(100),
        "medium" => Some(50),
        "low" => Some(0),
        n => match n.parse::<u8>() {
            Ok(p) if p <= 100 => Some(p),
            _ => {
                ctx.err(
                    "priority",
                    v.span(),
                    format!("priority `{n}` must be high, medium, low or 0 to 100"),
                );
                None
            }
        },
    }
}

fn parse_timeouts(ctx: &mut Ctx, v: &Node) -> Option<Timeouts> {
    let m = ctx.mapping("timeouts", v)?;
    let mut t = Timeouts::default();
    for (k, v) in m.iter() {
        let path = format!("timeouts.{}", k.as_str());
        match k.as_str() {
            "job" => t.job = ctx.timeout(&path, v),
            "action" => t.action = ctx.timeout(&path, v),
            "connection" => t.connection = ctx.timeout(&path, v),
            "queue" => t.queue = ctx.timeout(&path, v),
            "actions" | "connections" => {
                if let Some(am) = ctx.mapping(&path, v) {
                    for (name, tv) in am.iter() {
                        let p = format!("{path}.{}", name.as_str());
                        if let Some(d) = ctx.timeout(&p, tv) {
                            let map = if k.as_str() == "actions" {
                                &mut t.actions
                            } else {
                                &mut t.connections
                            };
                            map.insert(name.as_str().to_owned(), d);
                        }
                    }
                }
            }
            other => ctx.err(&path, &key_span(k), format!("unknown timeout `{other}`")),
        }
    }
    Some(t)
}

fn parse_actions(ctx: &mut Ctx, v: &Node) -> Option<Vec<Action>> {
    let seq = match v {
        Node::Sequence(s) => s,
        _ => {
            ctx.err(
                "actions",
                v.span(),
                "expected a list of deploy, boot and test actions",
            );
            return None;
        }
    };
    let mut out = Vec::new();
    for (i, item) in seq.iter().enumerate() {
        let path = format!("actions[{i}]");
        let Some(m) = ctx.mapping(&path, item) else {
            continue;
        };
        if m.len() != 1 {
            ctx.err(
                &path,
                item.span(),
                "each action is a mapping with exactly one key: deploy, boot or test",
            );
            continue;
        }
        let Some((k, body)) = m.iter().next() else {
            continue;
        };
        let path = format!("{path}.{}", k.as_str());
        let action = match k.as_str() {
            "deploy" => parse_deploy(ctx, &path, body).map(Action::Deploy),
            "boot" => parse_boot(ctx, &path, body).map(Action::Boot),
            "test" => parse_test(ctx, &path, body).map(Action::Test),
            "command" => {
                ctx.unsupported(
                    &path,
                    &key_span(k),
                    "the `command` action is not supported by labd",
                );
                None
            }
            other => {
                ctx.err(
                    &path,
                    &key_span(k),
                    format!("unknown action `{other}`; expected deploy, boot or test"),
                );
                None
            }
        };
        if let Some(a) = action {
            out.push(a);
        }
    }
    if out.is_empty() && ctx.errors.is_empty() {
        ctx.err("actions", v.span(), "a job needs at least one action");
    }
    Some(out)
}

/// What every action block may carry.
#[derive(Default)]
struct ActionCommon {
    timeout: Option<Duration>,
    failure_retry: Option<u32>,
    /// LAVA's `timeout: {skip: true}` on a test action.
    skip_on_timeout: bool,
}

/// Keys every action may carry. Returns true when the key was handled.
fn common_action_key(
    ctx: &mut Ctx,
    path: &str,
    k: &MarkedScalarNode,
    v: &Node,
    common: &mut ActionCommon,
) -> bool {
    let p = format!("{path}.{}", k.as_str());
    match k.as_str() {
        "timeout" => {
            let (t, skip) = ctx.action_timeout(&p, v);
            common.timeout = t;
            common.skip_on_timeout = skip;
            true
        }
        "failure_retry" => {
            common.failure_retry = ctx.attempts(&p, v);
            true
        }
        "namespace" | "role" => {
            ctx.warn(
                &p,
                &key_span(k),
                format!("`{}` has no meaning in labd; ignored", k.as_str()),
            );
            true
        }
        "repeat" | "failure_retry_interval" => {
            ctx.unsupported(
                &p,
                &key_span(k),
                format!("`{}` is not supported yet", k.as_str()),
            );
            true
        }
        _ => false,
    }
}

/// A `downloads://` path names a file an earlier `to: downloads` deploy
/// fetched: relative, and never out of the job's downloads directory.
fn check_downloads_path(rest: &str) -> Result<(), &'static str> {
    let rest = rest.trim_start_matches('/');
    if rest.is_empty() {
        return Err("a downloads:// URL names a file");
    }
    if rest
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("a downloads:// path may not use `.`, `..` or empty parts");
    }
    Ok(())
}

fn artifact(
    ctx: &mut Ctx,
    path: &str,
    v: &Node,
    allowed_extra: &[&str],
) -> Option<(Artifact, BTreeMap<String, String>)> {
    let m = ctx.mapping(path, v)?;
    let mut url = None;
    let mut extra = BTreeMap::new();
    let mut sha256 = None;
    let mut compression = Compression::None;
    for (k, val) in m.iter() {
        let p = format!("{path}.{}", k.as_str());
        match k.as_str() {
            "sha256sum" => {
                if let Some(h) = ctx.string(&p, val) {
                    if h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()) {
                        sha256 = Some(h.to_ascii_lowercase());
                    } else {
                        ctx.err(&p, val.span(), "a sha256sum is 64 hexadecimal digits");
                    }
                }
            }
            "compression" => {
                if let Some(c) = ctx.compression(&p, val) {
                    compression = c;
                }
            }
            "url" => {
                let Some(u) = ctx.string(&p, val) else {
                    continue;
                };
                if let Some(rest) = u.strip_prefix("file://") {
                    if !rest.starts_with('/') {
                        ctx.err(
                            &p,
                            val.span(),
                            format!("`{u}`: a file:// URL needs an absolute path"),
                        );
                        continue;
                    }
                    let at = ctx.loc(&p, val.span());
                    ctx.files.push((at, rest.to_owned()));
                    url = Some(u);
                } else if u.starts_with("http://") || u.starts_with("https://") {
                    url = Some(u);
                } else if let Some(rest) = u.strip_prefix("downloads://") {
                    if let Err(e) = check_downloads_path(rest) {
                        ctx.err(&p, val.span(), format!("`{u}`: {e}"));
                        continue;
                    }
                    url = Some(u);
                } else {
                    ctx.err(
                        &p,
                        val.span(),
                        format!("`{u}`: not a supported URL; use http(s)://, file:///path or downloads://<file>"),
                    );
                }
            }
            key if allowed_extra.contains(&key) => {
                if let Some(s) = ctx.string(&p, val) {
                    extra.insert(key.to_owned(), s);
                }
            }
            "header" | "install_modules" | "install_overlay" | "md5sum" | "sha512sum"
            | "archive" => {
                ctx.unsupported(
                    &p,
                    &key_span(k),
                    format!("`{}` is not supported yet", k.as_str()),
                );
            }
            other => ctx.err(&p, &key_span(k), format!("unknown key `{other}`")),
        }
    }
    if url.is_none()
        && !ctx.errors.iter().any(|e| {
            e.location
                .path
                .as_deref()
                .is_some_and(|p| p.starts_with(path))
        })
    {
        ctx.err(
            &format!("{path}.url"),
            v.span(),
            "missing required key `url`",
        );
    }
    Some((
        Artifact {
            url: url?,
            sha256,
            compression,
        },
        extra,
    ))
}

fn parse_deploy(ctx: &mut Ctx, path: &str, v: &Node) -> Option<Deploy> {
    let m = ctx.mapping(path, v)?;
    let mut common = ActionCommon::default();
    let mut to = None;
    let mut kernel = None;
    let mut kernel_type = None;
    let mut ramdisk = None;
    let mut ramdisk_options = RamdiskOptions::default();
    let mut dtb = None;
    let mut modules = None;
    let mut images = Vec::new();
    let mut downloads = Vec::new();
    // Known before the keys are read, in whatever order they come: the
    // images of a `to: downloads` deploy carry no `image_arg`.
    let to_downloads = m
        .get_node("to")
        .and_then(|n| n.as_scalar())
        .is_some_and(|t| t.as_str() == "downloads");
    let mut nfsrootfs = None;
    for (k, val) in m.iter() {
        if common_action_key(ctx, path, k, val, &mut common) {
            continue;
        }
        let p = format!("{path}.{}", k.as_str());
        match k.as_str() {
            "to" => {
                let Some(t) = ctx.string(&p, val) else {
                    continue;
                };
                if t == "tftp" || t == "tmpfs" || t == "downloads" || t == "nfs" || t == "ssh" {
                    to = Some(t);
                } else {
                    ctx.unsupported(
                        &p,
                        val.span(),
                        format!("deploy to `{t}` is not supported; labd deploys `to: tftp`, `downloads` (and `tmpfs` or `nfs` for qemu boots, `ssh` for ssh devices)"),
                    );
                }
            }
            "images" => {
                let Some(im) = ctx.mapping(&p, val) else {
                    continue;
                };
                for (name, iv) in im.iter() {
                    let ip = format!("{p}.{}", name.as_str());
                    // The name becomes part of a file name and a placeholder.
                    if name.as_str().is_empty()
                        || !name
                            .as_str()
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    {
                        ctx.err(
                            &ip,
                            &key_span(name),
                            "an image name may only use letters, digits, `_` and `-`",
                        );
                        continue;
                    }
                    if to_downloads {
                        if let Some((a, _)) = artifact(ctx, &ip, iv, &[]) {
                            downloads.push(Download {
                                name: name.as_str().to_owned(),
                                artifact: a,
                            });
                        }
                        continue;
                    }
                    if name.as_str() == "nfsrootfs" && deploys_to_nfs(m) {
                        nfsrootfs = parse_nfsroot_image(ctx, &ip, iv);
                        continue;
                    }
                    let Some((a, extra)) = artifact(ctx, &ip, iv, &["image_arg"]) else {
                        continue;
                    };
                    let args = match extra.get("image_arg") {
                        // LAVA passes nothing to QEMU for such an image: it
                        // is only downloaded.
                        None => {
                            ctx.warn(
                                &ip,
                                &key_span(name),
                                "no `image_arg`: the image is downloaded but QEMU is not given it",
                            );
                            Vec::new()
                        }
                        Some(arg) => {
                            let placeholders: Vec<String> = im
                                .iter()
                                .map(|(n, _)| format!("{{{}}}", n.as_str()))
                                .collect();
                            let own = format!("{{{}}}", name.as_str());
                            let span = iv
                                .as_mapping()
                                .and_then(|m| m.get_node("image_arg"))
                                .map_or(*iv.span(), |n| *n.span());
                            let at = format!("{ip}.image_arg");
                            let words = crate::qemu_args::split(arg);
                            match qemu_options(ctx, &at, &span, words, &placeholders, Some(&own)) {
                                Some(args) => args,
                                None => continue,
                            }
                        }
                    };
                    images.push(Image {
                        name: name.as_str().to_owned(),
                        artifact: a,
                        args,
                    });
                }
            }
            "kernel" => {
                if let Some((a, extra)) = artifact(ctx, &p, val, &["type"]) {
                    kernel_type = match extra.get("type").map(String::as_str) {
                        None => None,
                        Some("image") => Some(KernelType::Image),
                        Some("zimage") => Some(KernelType::Zimage),
                        Some("uimage") => Some(KernelType::Uimage),
                        Some(other) => {
                            ctx.err(
                                &format!("{p}.type"),
                                val.span(),
                                format!("kernel type `{other}` must be image, zimage or uimage"),
                            );
                            None
                        }
                    };
                    kernel = Some(a);
                }
            }
            "ramdisk" => {
                let extras = &["header", "install_modules", "install_overlay"];
                if let Some((a, extra)) = artifact(ctx, &p, val, extras) {
                    ramdisk_options = ramdisk_options_of(ctx, &p, val, &extra);
                    ramdisk = Some(a);
                }
            }
            "dtb" => dtb = artifact(ctx, &p, val, &[]).map(|a| a.0),
            "modules" => modules = artifact(ctx, &p, val, &[]).map(|a| a.0),
            "os" => ctx.warn(&p, &key_span(k), "`os` is not used by labd; ignored"),
            "postprocess" => ctx.unsupported(
                &p,
                &key_span(k),
                "`postprocess` runs its steps in a docker container, which labd does not run",
            ),
            "dtbo" => ctx.unsupported(
                &p,
                &key_span(k),
                "`dtbo`: labd does not apply device-tree overlays; merge them into the `dtb` (`fdtoverlay -i base.dtb -o merged.dtb overlay.dtbo`)",
            ),
            "nfsrootfs" => nfsrootfs = parse_nfsrootfs(ctx, &p, val),
            "rootfs" | "overlays" | "tee" | "preseed" | "persistent_nfs" | "uboot" => ctx.unsupported(
                &p,
                &key_span(k),
                format!("deploying `{}` is not supported yet", k.as_str()),
            ),
            other => ctx.err(&p, &key_span(k), format!("unknown key `{other}`")),
        }
    }
    if to.is_none() && m.get_node("to").is_none() {
        ctx.err(&format!("{path}.to"), v.span(), "missing required key `to`");
    }
    // LAVA's `to: nfs` (for a `qemu-nfs` boot) names its files as a
    // tmpfs deploy does, its root as the `nfsrootfs` image.
    let to_nfs = to.as_deref() == Some("nfs");
    let tmpfs = to.as_deref() == Some("tmpfs") || to_nfs;
    let to_ssh = to.as_deref() == Some("ssh");
    if to_ssh {
        check_ssh_deploy(ctx, path, m);
    }
    if to_nfs
        && nfsrootfs.is_none()
        && !ctx.errors.iter().any(|e| {
            e.location
                .path
                .as_deref()
                .is_some_and(|p| p.starts_with(path))
        })
    {
        ctx.err(
            &format!("{path}.images.nfsrootfs"),
            v.span(),
            "a `to: nfs` deploy needs its root filesystem, `nfsrootfs`",
        );
    }
    if to_downloads {
        for key in ["kernel", "ramdisk", "dtb", "modules"] {
            if let Some(n) = m.get_node(key) {
                ctx.err(
                    &format!("{path}.{key}"),
                    n.span(),
                    "a `to: downloads` deploy names its files under `images`",
                );
            }
        }
        if m.get_node("images").is_none() {
            ctx.err(
                &format!("{path}.images"),
                v.span(),
                "missing required key `images`",
            );
        }
        let mut seen = BTreeMap::new();
        for d in &downloads {
            let file = download_file_name(&d.artifact);
            if let Some(other) = seen.insert(file.clone(), d.name.clone()) {
                ctx.err(
                    &format!("{path}.images.{}", d.name),
                    v.span(),
                    format!(
                        "images `{other}` and `{}` would both be downloads://{file}",
                        d.name
                    ),
                );
            }
        }
    }
    if let Some(n) = m.get_node("modules") {
        if ramdisk.is_none() && m.get_node("ramdisk").is_none() && m.get_node("nfsrootfs").is_none()
        {
            ctx.err(
                &format!("{path}.modules"),
                n.span(),
                "`modules` are added to the ramdisk (or an NFS root filesystem); this deploy has neither",
            );
        } else if !ramdisk_options.install_modules && m.get_node("nfsrootfs").is_none() {
            ctx.warn(
                &format!("{path}.modules"),
                n.span(),
                "`install_modules: false` keeps these modules out of the ramdisk, and there is nowhere else to put them",
            );
        }
    }
    if to.is_some()
        && !tmpfs
        && !to_downloads
        && !to_ssh
        && kernel.is_none()
        && m.get_node("kernel").is_none()
    {
        ctx.err(
            &format!("{path}.kernel"),
            v.span(),
            "missing required key `kernel`",
        );
    }
    if tmpfs {
        for key in ["kernel", "ramdisk", "dtb"] {
            if let Some(n) = m.get_node(key) {
                ctx.err(
                    &format!("{path}.{key}"),
                    n.span(),
                    "a `to: tmpfs` deploy names its files under `images`",
                );
            }
        }
        if m.get_node("images").is_none() && !(to_nfs && m.get_node("nfsrootfs").is_some()) {
            ctx.err(
                &format!("{path}.images"),
                v.span(),
                "missing required key `images`",
            );
        }
    } else if let Some(n) = m.get_node("images").filter(|_| !to_downloads) {
        ctx.err(
            &format!("{path}.images"),
            n.span(),
            "`images` belong to a `to: tmpfs` deploy (for a qemu boot)",
        );
    }
    to?;
    if !tmpfs && !to_downloads && !to_ssh {
        kernel.as_ref()?;
    }
    Some(Deploy {
        timeout: common.timeout,
        failure_retry: common.failure_retry,
        kernel,
        kernel_type,
        ramdisk,
        ramdisk_options,
        dtb,
        modules,
        images,
        downloads,
        nfsrootfs,
        to_ssh,
    })
}

/// A deploy's `nfsrootfs`: a tarball, and LAVA's `prefix`, the directory
/// inside it that is the root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NfsRootfs {
    pub artifact: Artifact,
    #[serde(default)]
    pub prefix: Option<String>,
    /// A `to: nfs` deploy's `image_arg`, a kernel argument for a
    /// `qemu-nfs` boot (`nfsroot={NFS_SERVER_IP}:{NFSROOTFS},tcp,hard`).
    #[serde(default)]
    pub kernel_arg: Option<String>,
}

/// Whether a deploy mapping says `to: nfs`.
fn deploys_to_nfs(m: &MarkedMappingNode) -> bool {
    m.get_node("to")
        .and_then(|n| n.as_scalar())
        .is_some_and(|s| s.as_str() == "nfs")
}

/// Reads the `nfsrootfs` image of a `to: nfs` deploy: an artifact whose
/// `image_arg` is a kernel argument, not QEMU options.
fn parse_nfsroot_image(ctx: &mut Ctx, path: &str, v: &Node) -> Option<NfsRootfs> {
    let (artifact, extra) = artifact(ctx, path, v, &["image_arg", "prefix"])?;
    let mut root = NfsRootfs {
        artifact,
        prefix: extra.get("prefix").cloned(),
        kernel_arg: None,
    };
    let Some(arg) = extra.get("image_arg") else {
        ctx.err(
            &format!("{path}.image_arg"),
            v.span(),
            "missing required key `image_arg` (the kernel's `nfsroot={NFS_SERVER_IP}:{nfsrootfs},tcp,hard`)",
        );
        return None;
    };
    match nfsroot_image_arg(arg) {
        Ok(a) => root.kernel_arg = Some(a),
        Err(e) => {
            ctx.err(&format!("{path}.image_arg"), v.span(), e);
            return None;
        }
    }
    if root
        .prefix
        .as_deref()
        .is_some_and(|p| p.starts_with('/') || p.split('/').any(|c| c == ".."))
    {
        ctx.err(
            &format!("{path}.prefix"),
            v.span(),
            "a prefix is a directory inside the tarball: relative, without `..`",
        );
        return None;
    }
    Some(root)
}

/// Checks the kernel argument a `to: nfs` deploy gives its root: one
/// `nfsroot={NFS_SERVER_IP}:{nfsrootfs}` with plain NFS options after it
/// (it goes on the kernel's command line, nowhere else); returns it with
/// `{NFSROOTFS}` for the root.
fn nfsroot_image_arg(arg: &str) -> Result<String, String> {
    const HEAD: &str = "nfsroot={NFS_SERVER_IP}:{nfsrootfs}";
    let rest = arg.trim().strip_prefix(HEAD).ok_or_else(|| {
        format!("`{arg}`: the root's image_arg is the kernel argument `{HEAD}`, with NFS options after a comma")
    })?;
    if !rest.is_empty()
        && (!rest.starts_with(',')
            || !rest
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ",=._-".contains(c)))
    {
        return Err(format!(
            "`{arg}`: after `{HEAD}` only NFS options (`,tcp,hard`, `,vers=4`) may follow"
        ));
    }
    Ok(format!("nfsroot={{NFS_SERVER_IP}}:{{NFSROOTFS}}{rest}"))
}

/// Reads a deploy's `nfsrootfs` (`url`, `compression`, `sha256sum`,
/// `prefix`); a prefix is a relative directory without `..`, as in LAVA.
fn parse_nfsrootfs(ctx: &mut Ctx, path: &str, v: &Node) -> Option<NfsRootfs> {
    let (artifact, extra) = artifact(ctx, path, v, &["prefix"])?;
    let prefix = extra.get("prefix").cloned();
    if let Some(p) = &prefix {
        if p.starts_with('/') || p.split('/').any(|c| c == "..") {
            let span = ctx
                .mapping(path, v)
                .and_then(|m| m.get_node("prefix").map(|n| *n.span()))
                .unwrap_or(*v.span());
            ctx.err(
                &format!("{path}.prefix"),
                &span,
                "a prefix is a directory inside the tarball: relative, without `..`",
            );
            return None;
        }
    }
    Some(NfsRootfs {
        artifact,
        prefix,
        kernel_arg: None,
    })
}

/// The file name a `to: downloads` image is kept under (and named by in
/// `downloads://` URLs): its URL's last part, without its compression's
/// suffix, as the deploy writes it.
pub fn download_file_name(a: &Artifact) -> String {
    let path = a.url.split(['?', '#']).next().unwrap_or(&a.url);
    let base = path.rsplit('/').next().unwrap_or(path);
    a.compression
        .suffix()
        .and_then(|x| base.strip_suffix(x))
        .unwrap_or(base)
        .to_owned()
}

/// A ramdisk's `header`, `install_modules` and `install_overlay`.
fn ramdisk_options_of(
    ctx: &mut Ctx,
    path: &str,
    v: &Node,
    extra: &BTreeMap<String, String>,
) -> RamdiskOptions {
    let mut o = RamdiskOptions::default();
    match extra.get("header").map(String::as_str) {
        None => {}
        Some("u-boot") => o.uboot_header = true,
        Some(other) => ctx.err(
            &format!("{path}.header"),
            v.span(),
            format!("ramdisk header `{other}`: the one header LAVA knows is `u-boot`"),
        ),
    }
    for (key, slot) in [
        ("install_modules", &mut o.install_modules),
        ("install_overlay", &mut o.install_overlay),
    ] {
        match extra.get(key).map(String::as_str) {
            None => {}
            Some("true" | "True" | "yes") => *slot = true,
            Some("false" | "False" | "no") => *slot = false,
            Some(other) => ctx.err(
                &format!("{path}.{key}"),
                v.span(),
                format!("`{other}`: expected true or false"),
            ),
        }
    }
    o
}

/// A `to: ssh` deploy fetches nothing: the device runs its own system,
/// and labd copies only the overlay to it (LAVA's scp of kernels, rootfs
/// and modules to the device is not supported).
fn check_ssh_deploy(ctx: &mut Ctx, path: &str, m: &MarkedMappingNode) {
    for key in ["kernel", "ramdisk", "dtb"] {
        if let Some(n) = m.get_node(key) {
            ctx.unsupported(
                &format!("{path}.{key}"),
                n.span(),
                "copying files to a device over ssh is not supported; a `to: ssh` deploy delivers only the overlay",
            );
        }
    }
}

fn parse_boot(ctx: &mut Ctx, path: &str, v: &Node) -> Option<Boot> {
    let m = ctx.mapping(path, v)?;
    let mut common = ActionCommon::default();
    let mut method = None;
    let mut commands = None;
    let mut prompts = Vec::new();
    let mut auto_login = None;
    let mut reset = true;
    let mut transfer_overlay = None;
    for (k, val) in m.iter() {
        if common_action_key(ctx, path, k, val, &mut common) {
            continue;
        }
        let p = format!("{path}.{}", k.as_str());
        match k.as_str() {
            "method" => {
                let Some(s) = ctx.string(&p, val) else {
                    continue;
                };
                match s.as_str() {
                    "u-boot" => method = Some(BootMethod::UBoot),
                    // LAVA's QEMU boot with the deploy's NFS root: the relay
                    // boots the kernel with `nfsroot=` on its command line.
                    "qemu-nfs" => method = Some(BootMethod::Qemu),
                    "minimal" => method = Some(BootMethod::Minimal),
                    "qemu" => method = Some(BootMethod::Qemu),
                    "bootloader" => method = Some(BootMethod::Bootloader),
                    "ssh" => method = Some(BootMethod::Ssh),
                    _ => ctx.unsupported(
                        &p,
                        val.span(),
                        format!(
                            "boot method `{s}` is not supported; labd boots with `method: u-boot`, `minimal`, `qemu`, `bootloader` or `ssh`"
                        ),
                    ),
                }
            }
            "commands" => match val {
                Node::Scalar(s) => {
                    commands = Some(BootCommands::Named(s.as_str().to_owned()));
                }
                Node::Sequence(_) => {
                    commands = ctx.string_list(&p, val).map(BootCommands::Inline);
                }
                Node::Mapping(_) => ctx.err(
                    &p,
                    val.span(),
                    "expected a command set name or a list of commands",
                ),
            },
            "prompts" => {
                if let Some(list) = ctx.string_list(&p, val) {
                    for (i, re) in list.iter().enumerate() {
                        if let Err(e) = regex::bytes::Regex::new(re) {
                            ctx.err(
                                &format!("{p}[{i}]"),
                                val.span(),
                                format!("not a valid regex: {e}"),
                            );
                        }
                    }
                    prompts = list;
                }
            }
            "auto_login" => auto_login = parse_auto_login(ctx, &p, val),
            "reset"
                if m.get_node("method")
                    .and_then(|n| n.as_scalar())
                    .is_some_and(|s| s.as_str() == "minimal") =>
            {
                match val.as_scalar().map(|s| s.as_str()) {
                    Some("true" | "True" | "yes") => reset = true,
                    Some("false" | "False" | "no") => reset = false,
                    _ => ctx.err(&p, val.span(), "expected true or false"),
                }
            }
            // LAVA's qemu boots name where the rootfs lives; labd's relay
            // boots the deploy's files, which is `tmpfs` in LAVA's terms.
            "media"
                if method == Some(BootMethod::Qemu)
                    || m.get_node("method")
                        .and_then(|n| n.as_scalar())
                        .is_some_and(|s| s.as_str() == "qemu") =>
            {
                if ctx.string(&p, val).is_some_and(|s| s != "tmpfs") {
                    ctx.unsupported(&p, val.span(), "a qemu boot supports `media: tmpfs` only");
                }
            }
            // LAVA's `bootloader` method names which bootloader it stops
            // in; labd's device types describe a U-Boot.
            "bootloader"
                if m.get_node("method")
                    .and_then(|n| n.as_scalar())
                    .is_some_and(|s| s.as_str() == "bootloader") =>
            {
                if let Some(b) = ctx.string(&p, val) {
                    if b != "u-boot" {
                        ctx.unsupported(
                            &p,
                            val.span(),
                            format!("bootloader `{b}` is not supported; labd stops in `u-boot`"),
                        );
                    }
                }
            }
            "transfer_overlay" => transfer_overlay = parse_transfer_overlay(ctx, &p, val),
            "connection" => parse_boot_connection(ctx, &p, val, m.get_node("method")),
            // LAVA reboots a board already running Linux with these
            // instead of its relay; labd always power-cycles a board with
            // a relay (and one without has nothing to reboot into).
            "soft_reboot" => ctx.warn(
                &p,
                &key_span(k),
                "labd power-cycles the board for each boot; `soft_reboot` is not used",
            ),
            "parameters" => {
                if let Some(pm) = ctx.mapping(&p, val) {
                    for (pk, _) in pm.iter() {
                        let pp = format!("{p}.{}", pk.as_str());
                        match pk.as_str() {
                            "shutdown-message" => ctx.warn(
                                &pp,
                                &key_span(pk),
                                "labd power-cycles the board for each boot and waits for no shutdown; ignored",
                            ),
                            other => ctx.unsupported(
                                &pp,
                                &key_span(pk),
                                format!("boot parameter `{other}` is not supported"),
                            ),
                        }
                    }
                }
            }
            "type" | "media" | "bootloader" | "expect_shell" | "ignore_kernel_messages" => ctx
                .unsupported(
                    &p,
                    &key_span(k),
                    format!("`{}` is not supported in boot actions yet", k.as_str()),
                ),
            other => ctx.err(&p, &key_span(k), format!("unknown key `{other}`")),
        }
    }
    if method.is_none() && m.get_node("method").is_none() {
        ctx.err(
            &format!("{path}.method"),
            v.span(),
            "missing required key `method`",
        );
    }
    if method == Some(BootMethod::UBoot) && commands.is_none() && m.get_node("commands").is_none() {
        ctx.err(
            &format!("{path}.commands"),
            v.span(),
            "missing required key `commands`",
        );
    }
    if method == Some(BootMethod::Bootloader) {
        if m.get_node("bootloader").is_none() {
            ctx.err(
                &format!("{path}.bootloader"),
                v.span(),
                "missing required key `bootloader` (`u-boot`)",
            );
        }
        if commands.is_none() && m.get_node("commands").is_none() {
            commands = Some(BootCommands::Inline(Vec::new()));
        }
    }
    let no_commands = match method {
        Some(BootMethod::Minimal | BootMethod::Qemu) => {
            Some("a `minimal` or `qemu` boot sends no bootloader commands; the board boots itself")
        }
        Some(BootMethod::Ssh) => {
            Some("an `ssh` boot sends no bootloader commands; the device is already running")
        }
        _ => None,
    };
    if let Some(why) = no_commands {
        if let Some(c) = m.get_node("commands") {
            ctx.err(&format!("{path}.commands"), c.span(), why);
            return None;
        }
        commands = Some(BootCommands::Inline(Vec::new()));
    }
    let method = method?;
    Some(Boot {
        method,
        timeout: common.timeout,
        failure_retry: common.failure_retry,
        commands: commands?,
        prompts,
        auto_login,
        reset,
        transfer_overlay,
    })
}

/// LAVA's boot `connection`: how labd reaches the booted board's shell.
/// `ssh` is an ssh boot's own (and the only one it takes); `serial` is
/// every other boot's.
fn parse_boot_connection(ctx: &mut Ctx, path: &str, v: &Node, method: Option<&Node>) {
    let Some(c) = ctx.string(path, v) else {
        return;
    };
    let ssh_boot = method
        .and_then(|n| n.as_scalar())
        .is_some_and(|s| s.as_str() == "ssh");
    match (c.as_str(), ssh_boot) {
        ("ssh", true) | ("serial", false) => {}
        ("ssh", false) => ctx.unsupported(
            path,
            v.span(),
            "`connection: ssh` goes with `method: ssh` (a board reached over ssh); this boot uses the board's serial console",
        ),
        (other, _) => ctx.unsupported(
            path,
            v.span(),
            format!(
                "connection `{other}` is not supported; {}",
                if ssh_boot {
                    "an ssh boot's connection is `ssh`"
                } else {
                    "labd reaches this boot's shell on the `serial` console"
                }
            ),
        ),
    }
}

fn parse_transfer_overlay(ctx: &mut Ctx, path: &str, v: &Node) -> Option<TransferOverlay> {
    let m = ctx.mapping(path, v)?;
    let mut download = None;
    let mut unpack = None;
    for (k, val) in m.iter() {
        let p = format!("{path}.{}", k.as_str());
        match k.as_str() {
            "download_command" => download = ctx.string(&p, val),
            "unpack_command" => unpack = ctx.string(&p, val),
            "transfer_method" => match ctx.string(&p, val).as_deref() {
                Some("http") | None => {}
                Some(other) => ctx.unsupported(
                    &p,
                    val.span(),
                    format!("transfer method `{other}` is not supported; labd serves overlays over http"),
                ),
            },
            other => ctx.err(&p, &key_span(k), format!("unknown key `{other}`")),
        }
    }
    for (key, missing) in [
        ("download_command", download.is_none()),
        ("unpack_command", unpack.is_none()),
    ] {
        if missing && m.get_node(key).is_none() {
            ctx.err(
                &format!("{path}.{key}"),
                v.span(),
                format!("missing required key `{key}`"),
            );
        }
    }
    Some(TransferOverlay {
        download_command: download?,
        unpack_command: unpack?,
    })
}

fn parse_auto_login(ctx: &mut Ctx, path: &str, v: &Node) -> Option<AutoLogin> {
    let m = ctx.mapping(path, v)?;
    let mut login_prompt = None;
    let mut username = None;
    let mut password_prompt = None;
    let mut password = None;
    for (k, val) in m.iter() {
        let p = format!("{path}.{}", k.as_str());
        match k.as_str() {
            "login_prompt" => login_prompt = ctx.string(&p, val),
            "username" => username = ctx.string(&p, val),
            "password_prompt" => password_prompt = ctx.string(&p, val),
            "password" => password = ctx.string(&p, val),
            "login_commands" => {
                ctx.unsupported(&p, &key_span(k), "`login_commands` is not supported yet")
            }
            other => ctx.err(&p, &key_span(k), format!("unknown key `{other}`")),
        }
    }
    if login_prompt.is_none() {
        ctx.err(
            &format!("{path}.login_prompt"),
            v.span(),
            "missing required key `login_prompt`",
        );
    }
    if username.is_none() {
        ctx.err(
            &format!("{path}.username"),
            v.span(),
            "missing required key `username`",
        );
    }
    Some(AutoLogin {
        login_prompt: login_prompt?,
        username: username?,
        password_prompt,
        password,
    })
}

fn parse_test(ctx: &mut Ctx, path: &str, v: &Node) -> Option<Test> {
    let m = ctx.mapping(path, v)?;
    let mut common = ActionCommon::default();
    let mut definitions = None;
    let mut interactive = None;
    let mut monitors = None;
    let mut kinds = 0;
    for (k, val) in m.iter() {
        if common_action_key(ctx, path, k, val, &mut common) {
            continue;
        }
        let p = format!("{path}.{}", k.as_str());
        match k.as_str() {
            "definitions" => {
                kinds += 1;
                let Node::Sequence(seq) = val else {
                    ctx.err(&p, val.span(), "expected a list of test definitions");
                    continue;
                };
                let mut defs = Vec::new();
                for (i, d) in seq.iter().enumerate() {
                    if let Some(def) = parse_definition(ctx, &format!("{p}[{i}]"), d) {
                        defs.push(def);
                    }
                }
                definitions = Some(defs);
            }
            "interactive" => {
                kinds += 1;
                interactive = parse_list(ctx, &p, val, parse_interactive);
            }
            "monitors" => {
                kinds += 1;
                monitors = parse_list(ctx, &p, val, parse_monitor);
            }
            "docker" => ctx.unsupported(
                &p,
                &key_span(k),
                "`docker` tests are not supported; labd runs no containers",
            ),
            other => ctx.err(&p, &key_span(k), format!("unknown key `{other}`")),
        }
    }
    if kinds > 1 {
        ctx.err(
            path,
            v.span(),
            "a test action has one of `definitions`, `interactive` or `monitors`, not several",
        );
        return None;
    }
    if kinds == 0 && m.get_node("docker").is_none() {
        ctx.err(
            &format!("{path}.definitions"),
            v.span(),
            "missing required key `definitions` (or `interactive`, or `monitors`)",
        );
    }
    let (definitions, interactive, monitors) = match (definitions, interactive, monitors) {
        (Some(d), None, None) => (d, Vec::new(), Vec::new()),
        (None, Some(i), None) => (Vec::new(), i, Vec::new()),
        (None, None, Some(mo)) => (Vec::new(), Vec::new(), mo),
        _ => return None,
    };
    Some(Test {
        timeout: common.timeout,
        failure_retry: common.failure_retry,
        definitions,
        interactive,
        monitors,
        skip_on_timeout: common.skip_on_timeout,
    })
}

/// A non-empty list whose items `item` parses; `None` if any item is invalid.
fn parse_list<T>(
    ctx: &mut Ctx,
    path: &str,
    v: &Node,
    item: fn(&mut Ctx, &str, &Node) -> Option<T>,
) -> Option<Vec<T>> {
    let Node::Sequence(seq) = v else {
        ctx.err(path, v.span(), "expected a list");
        return None;
    };
    if seq.is_empty() {
        ctx.err(path, v.span(), "expected at least one entry");
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (i, n) in seq.iter().enumerate() {
        match item(ctx, &format!("{path}[{i}]"), n) {
            Some(x) => out.push(x),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// A regex as LAVA's patterns are (pexpect's), checked at submit.
fn parse_regex(ctx: &mut Ctx, path: &str, v: &Node) -> Option<String> {
    let s = ctx.string(path, v)?;
    if let Err(e) = regex::Regex::new(&s) {
        ctx.err(path, v.span(), format!("not a valid regex: {e}"));
        return None;
    }
    Some(s)
}

/// A test name or test case name, as LAVA allows them.
fn parse_case_name(ctx: &mut Ctx, path: &str, v: &Node) -> Option<String> {
    let n = ctx.string(path, v)?;
    if n.is_empty() || n.chars().any(|c| c.is_control() || c == '/') {
        ctx.err(
            path,
            v.span(),
            "a name must be non-empty, with no `/` or control characters",
        );
        return None;
    }
    Some(n)
}

fn parse_expected(ctx: &mut Ctx, path: &str, v: &Node) -> Option<Vec<String>> {
    let list = ctx.string_list(path, v)?;
    Some(list)
}

fn parse_interactive(ctx: &mut Ctx, path: &str, v: &Node) -> Option<InteractiveScript> {
    let m = ctx.mapping(path, v)?;
    let mut name = None;
    let mut prompts = None;
    let mut steps = None;
    let mut discard_echo = false;
    let mut expected = None;
    for (k, val) in m.iter() {
        let p = format!("{path}.{}", k.as_str());
        match k.as_str() {
            "name" => name = parse_case_name(ctx, &p, val),
            "prompts" => {
                prompts = parse_list(ctx, &p, val, parse_regex);
            }
            "script" => steps = parse_list(ctx, &p, val, parse_interactive_step),
            "echo" => match ctx.string(&p, val).as_deref() {
                Some("discard") => discard_echo = true,
                Some(other) => ctx.err(
                    &p,
                    val.span(),
                    format!("`echo: {other}`: the only value is `discard`"),
                ),
                None => {}
            },
            "expected" => expected = parse_expected(ctx, &p, val),
            other => ctx.err(&p, &key_span(k), format!("unknown key `{other}`")),
        }
    }
    for (key, missing) in [
        ("name", m.get_node("name").is_none()),
        ("prompts", m.get_node("prompts").is_none()),
        ("script", m.get_node("script").is_none()),
    ] {
        if missing {
            ctx.err(
                &format!("{path}.{key}"),
                v.span(),
                format!("missing required key `{key}`"),
            );
        }
    }
    Some(InteractiveScript {
        name: name?,
        prompts: prompts?,
        discard_echo,
        steps: steps?,
        expected,
    })
}

/// A YAML null (`~`, `null` or nothing), which LAVA reads as None.
fn is_null(v: &Node) -> bool {
    v.as_scalar()
        .is_some_and(|s| matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL"))
}

fn parse_interactive_step(ctx: &mut Ctx, path: &str, v: &Node) -> Option<InteractiveStep> {
    let m = ctx.mapping(path, v)?;
    if let Some(d) = m.get_node("delay") {
        let p = format!("{path}.delay");
        let secs = d
            .as_scalar()
            .and_then(|s| s.as_str().trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 3600.0);
        if m.len() > 1 {
            ctx.err(path, v.span(), "a `delay` step has no other keys");
            return None;
        }
        let Some(secs) = secs else {
            ctx.err(&p, d.span(), "expected a number of seconds from 0 to 3600");
            return None;
        };
        return Some(InteractiveStep::Delay(Duration::from_secs_f64(secs)));
    }
    let mut command = None;
    let mut name = None;
    let mut successes = Vec::new();
    let mut failures = Vec::new();
    let mut wait_for_prompt = true;
    let mut ok = true;
    for (k, val) in m.iter() {
        let p = format!("{path}.{}", k.as_str());
        match k.as_str() {
            "command" => {
                if !is_null(val) {
                    command = ctx.string(&p, val);
                    ok &= command.is_some();
                }
            }
            "name" => {
                name = parse_case_name(ctx, &p, val);
                ok &= name.is_some();
            }
            "successes" => match parse_list(ctx, &p, val, parse_success) {
                Some(l) => successes = l,
                None => ok = false,
            },
            "failures" => match parse_list(ctx, &p, val, parse_failure) {
                Some(l) => failures = l,
                None => ok = false,
            },
            "wait_for_prompt" => match val.as_scalar().map(|s| s.as_str()) {
                Some("true" | "True" | "yes") => wait_for_prompt = true,
                Some("false" | "False" | "no") => wait_for_prompt = false,
                _ => {
                    ctx.err(&p, val.span(), "expected true or false");
                    ok = false;
                }
            },
            "lava-send" | "lava-wait" | "lava-wait-all" | "lava-sync" => {
                ctx.unsupported(
                    &p,
                    &key_span(k),
                    format!(
                        "`{}` needs LAVA's multinode protocol, which labd does not run",
                        k.as_str()
                    ),
                );
                ok = false;
            }
            other => {
                ctx.err(&p, &key_span(k), format!("unknown key `{other}`"));
                ok = false;
            }
        }
    }
    if m.get_node("command").is_none() {
        ctx.err(
            &format!("{path}.command"),
            v.span(),
            "missing required key `command` (`command:` with no value sends nothing and waits)",
        );
        return None;
    }
    ok.then_some(InteractiveStep::Command(InteractiveCommand {
        command,
        name,
        successes,
        failures,
        wait_for_prompt,
    }))
}

fn parse_success(ctx: &mut Ctx, path: &str, v: &Node) -> Option<String> {
    let m = ctx.mapping(path, v)?;
    let mut message = None;
    for (k, val) in m.iter() {
        let p = format!("{path}.{}", k.as_str());
        match k.as_str() {
            "message" => message = parse_regex(ctx, &p, val),
            other => ctx.err(&p, &key_span(k), format!("unknown key `{other}`")),
        }
    }
    if m.get_node("message").is_none() {
        ctx.err(
            &format!("{path}.message"),
            v.span(),
            "missing required key `message`",
        );
    }
    message
}

fn parse_failure(ctx: &mut Ctx, path: &str, v: &Node) -> Option<InteractiveFailure> {
    use crate::model::ErrorClass;
    let m = ctx.mapping(path, v)?;
    let mut message = None;
    let mut exception = None;
    let mut error = None;
    for (k, val) in m.iter() {
        let p = format!("{path}.{}", k.as_str());
        match k.as_str() {
            "message" => message = parse_regex(ctx, &p, val),
            "exception" => match ctx.string(&p, val).as_deref() {
                Some("InfrastructureError") => exception = Some(ErrorClass::Infrastructure),
                Some("JobError") => exception = Some(ErrorClass::Job),
                Some("TestError") => exception = Some(ErrorClass::Test),
                Some(other) => ctx.err(
                    &p,
                    val.span(),
                    format!("unknown exception `{other}`; LAVA's are InfrastructureError, JobError and TestError"),
                ),
                None => {}
            },
            "error" => error = ctx.string(&p, val),
            other => ctx.err(&p, &key_span(k), format!("unknown key `{other}`")),
        }
    }
    if m.get_node("message").is_none() {
        ctx.err(
            &format!("{path}.message"),
            v.span(),
            "missing required key `message`",
        );
    }
    Some(InteractiveFailure {
        message: message?,
        exception,
        error,
    })
}

fn parse_monitor(ctx: &mut Ctx, path: &str, v: &Node) -> Option<Monitor> {
    let m = ctx.mapping(path, v)?;
    let mut name = None;
    let mut start = None;
    let mut end = None;
    let mut pattern = None;
    let mut fixupdict = BTreeMap::new();
    let mut expected = None;
    for (k, val) in m.iter() {
        let p = format!("{path}.{}", k.as_str());
        match k.as_str() {
            "name" => name = parse_case_name(ctx, &p, val),
            "start" => start = parse_regex(ctx, &p, val),
            "end" => end = parse_regex(ctx, &p, val),
            "pattern" => {
                pattern = parse_regex(ctx, &p, val);
                if let Some(re) = pattern.as_deref().and_then(|r| regex::Regex::new(r).ok()) {
                    let groups: Vec<&str> = re.capture_names().flatten().collect();
                    let has = |g: &str| groups.contains(&g);
                    if !has("test_case_id") || !(has("result") || has("measurement")) {
                        ctx.err(
                            &p,
                            val.span(),
                            "the pattern needs the named groups `test_case_id` and `result` (or `measurement`), as `(?P<test_case_id>...)`",
                        );
                        pattern = None;
                    }
                }
            }
            "fixupdict" => {
                if let Some(fm) = ctx.mapping(&p, val) {
                    for (fk, fv) in fm.iter() {
                        if let Some(s) = ctx.string(&format!("{p}.{}", fk.as_str()), fv) {
                            fixupdict.insert(fk.as_str().to_owned(), s);
                        }
                    }
                }
            }
            "expected" => expected = parse_expected(ctx, &p, val),
            other => ctx.err(&p, &key_span(k), format!("unknown key `{other}`")),
        }
    }
    for key in ["name", "start", "end", "pattern"] {
        if m.get_node(key).is_none() {
            ctx.err(
                &format!("{path}.{key}"),
                v.span(),
                format!("missing required key `{key}`"),
            );
        }
    }
    Some(Monitor {
        name: name?,
        start: start?,
        end: end?,
        pattern: pattern?,
        fixupdict,
        expected,
    })
}

fn parse_definition(ctx: &mut Ctx, path: &str, v: &Node) -> Option<TestDefinition> {
    let m = ctx.mapping(path, v)?;
    let mut name = None;
    let mut from = None;
    let mut steps = None;
    let mut parameters = BTreeMap::new();
    let is_git = m
        .get_node("from")
        .and_then(|n| n.as_scalar())
        .is_some_and(|s| s.as_str() == "git");
    let is_url = m
        .get_node("from")
        .and_then(|n| n.as_scalar())
        .is_some_and(|s| s.as_str() == "url");
    let mut url_compression = Compression::None;
    let mut strip_components = 0u32;
    let mut repository = None;
    let mut def_path = None;
    let mut revision = None;
    let mut branch = None;
    let mut history = true;
    let mut expected = None;
    let mut signal_kmsg = false;
    for (k, val) in m.iter() {
        let p = format!("{path}.{}", k.as_str());
        match k.as_str() {
            "name" => {
                name = ctx.string(&p, val);
                if let Some(n) = &name {
                    if n.is_empty()
                        || !n
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                    {
                        ctx.err(
                            &p,
                            val.span(),
                            format!(
                                "test name `{n}` may only use letters, digits, `-`, `_` and `.`"
                            ),
                        );
                    }
                }
            }
            "from" => {
                let Some(f) = ctx.string(&p, val) else {
                    continue;
                };
                if f == "inline" || f == "git" || f == "url" {
                    from = Some(f);
                } else {
                    ctx.unsupported(&p, val.span(), format!("test definitions `from: {f}` are not supported; use `from: git`, `from: url` or `from: inline`"));
                }
            }
            "path" => def_path = ctx.string(&p, val),
            "repository" if is_url => {
                repository = ctx.string(&p, val);
                if let Some(u) = &repository {
                    if let Some(rest) = u.strip_prefix("file://") {
                        if rest.starts_with('/') {
                            let at = ctx.loc(&p, val.span());
                            ctx.files.push((at, rest.to_owned()));
                        } else {
                            ctx.err(
                                &p,
                                val.span(),
                                format!("`{u}`: a file:// URL needs an absolute path"),
                            );
                        }
                    } else if !(u.starts_with("http://") || u.starts_with("https://")) {
                        ctx.err(
                            &p,
                            val.span(),
                            format!(
                                "`{u}`: a `from: url` repository is an http(s):// or file:/// URL"
                            ),
                        );
                    }
                }
            }
            "compression" if is_url => {
                if let Some(c) = ctx.compression(&p, val) {
                    url_compression = c;
                }
            }
            "strip-components" if is_url => {
                match ctx.string(&p, val).and_then(|n| n.parse::<u32>().ok()) {
                    Some(n) if n <= 16 => strip_components = n,
                    _ => ctx.err(
                        &p,
                        val.span(),
                        "expected a number of leading directories (0 to 16)",
                    ),
                }
            }
            "repository" if is_git => {
                repository = ctx.string(&p, val);
                if let Some(url) = &repository {
                    if let Err(why) = check_git_url(url) {
                        ctx.err(&p, val.span(), why);
                    }
                }
            }
            "revision" | "branch" if is_git => {
                let v = ctx.string(&p, val);
                if let Some(r) = &v {
                    if let Err(why) = crate::git_url::check_name(r) {
                        ctx.err(
                            &p,
                            val.span(),
                            format!("`{r}` is not a git revision or branch: it {why}"),
                        );
                    }
                }
                if k.as_str() == "revision" {
                    revision = v;
                } else {
                    branch = v;
                }
            }
            "history" if is_git => match val.as_scalar().map(|s| s.as_str()) {
                Some("true" | "True" | "yes") => history = true,
                Some("false" | "False" | "no") => history = false,
                _ => ctx.err(&p, val.span(), "expected true or false"),
            },
            "expected" => expected = ctx.string_list(&p, val),
            "repository" => {
                if let Node::Mapping(rm) = val {
                    steps = parse_inline_repository(ctx, &p, rm, val.span());
                } else if m
                    .get_node("from")
                    .and_then(|n| n.as_scalar())
                    .is_some_and(|s| s.as_str() == "inline")
                {
                    ctx.err(
                        &p,
                        val.span(),
                        "an inline test definition needs `repository` to be a mapping",
                    );
                }
            }
            "parameters" | "params" => {
                if let Some(pm) = ctx.mapping(&p, val) {
                    for (pk, pv) in pm.iter() {
                        let pp = format!("{p}.{}", pk.as_str());
                        let valid_name = pk
                            .as_str()
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_')
                            && !pk.as_str().starts_with(|c: char| c.is_ascii_digit());
                        if !valid_name {
                            ctx.err(
                                &pp,
                                &key_span(pk),
                                "a parameter name must be a shell variable name",
                            );
                            continue;
                        }
                        parameters.insert(pk.as_str().to_owned(), lava_text(pv));
                    }
                }
            }
            "lava-signal" => match ctx.string(&p, val).as_deref() {
                Some("kmsg") => signal_kmsg = true,
                Some("stdout") | None => {}
                Some(other) => ctx.err(
                    &p,
                    val.span(),
                    format!("`lava-signal: {other}`: LAVA's are `stdout` and `kmsg`"),
                ),
            },
            "shallow" | "timeout" if is_git => ctx.warn(
                &p,
                &key_span(k),
                format!("`{}` changes nothing in labd; ignored", k.as_str()),
            ),
            "branch" | "revision" | "history" | "shallow" | "timeout" => ctx.warn(
                &p,
                &key_span(k),
                format!(
                    "`{}` does not apply to inline definitions; ignored",
                    k.as_str()
                ),
            ),
            other => ctx.err(&p, &key_span(k), format!("unknown key `{other}`")),
        }
    }
    if name.is_none() {
        ctx.err(
            &format!("{path}.name"),
            v.span(),
            "missing required key `name`",
        );
    }
    if m.get_node("from").is_none() {
        ctx.err(
            &format!("{path}.from"),
            v.span(),
            "missing required key `from`",
        );
    }
    from?;
    if is_git || is_url {
        for (key, missing) in [
            ("repository", m.get_node("repository").is_none()),
            ("path", m.get_node("path").is_none()),
        ] {
            if missing {
                ctx.err(
                    &format!("{path}.{key}"),
                    v.span(),
                    format!("missing required key `{key}`"),
                );
            }
        }
        if let Some(p) = &def_path {
            if p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c == "..") {
                ctx.err(
                    &format!("{path}.path"),
                    v.span(),
                    format!("`{p}` must be a path inside the repository"),
                );
                return None;
            }
        }
        let source = if is_url {
            DefinitionSource::Url(UrlDefinition {
                artifact: Artifact {
                    url: repository?,
                    sha256: None,
                    compression: url_compression,
                },
                path: def_path?,
                strip_components,
            })
        } else {
            DefinitionSource::Git(GitDefinition {
                repository: repository?,
                path: def_path?,
                revision,
                branch,
                history,
            })
        };
        return Some(TestDefinition {
            name: name?,
            steps: Vec::new(),
            parameters,
            source,
            expected,
            signal_kmsg,
        });
    }
    if steps.is_none() && m.get_node("repository").is_none() {
        ctx.err(
            &format!("{path}.repository"),
            v.span(),
            "missing required key `repository`",
        );
    }
    Some(TestDefinition {
        name: name?,
        steps: steps?,
        parameters,
        source: DefinitionSource::Inline,
        expected,
        signal_kmsg,
    })
}

/// Whether a job may name this repository (see [`crate::git_url`]).
pub fn check_git_url(url: &str) -> Result<(), String> {
    crate::git_url::check_url(url).map_err(|why| format!("`{url}`: {why}"))
}

fn parse_inline_repository(
    ctx: &mut Ctx,
    path: &str,
    m: &MarkedMappingNode,
    span: &Span,
) -> Option<Vec<String>> {
    let mut steps = None;
    for (k, val) in m.iter() {
        let p = format!("{path}.{}", k.as_str());
        match k.as_str() {
            "metadata" => {
                if let Some(md) = ctx.mapping(&p, val) {
                    if let Some(f) = md.get_scalar("format") {
                        let f = f.as_str();
                        if !f.eq_ignore_ascii_case("Lava-Test Test Definition 1.0") {
                            ctx.unsupported(&format!("{p}.format"), val.span(), format!("format `{f}` is not supported; labd runs `Lava-Test Test Definition 1.0`"));
                        }
                    }
                }
            }
            "run" => {
                let Some(rm) = ctx.mapping(&p, val) else {
                    continue;
                };
                for (rk, rv) in rm.iter() {
                    let rp = format!("{p}.{}", rk.as_str());
                    match rk.as_str() {
                        "steps" => steps = ctx.string_list(&rp, rv),
                        other => ctx.err(&rp, &key_span(rk), format!("unknown key `{other}`")),
                    }
                }
            }
            "install" => ctx.unsupported(
                &p,
                &key_span(k),
                "`install` is not supported yet; install packages in a run step",
            ),
            "params" | "parameters" => ctx.warn(
                &p,
                &key_span(k),
                "definition-level parameters are not supported; use the job's `parameters`",
            ),
            "parse" => ctx.unsupported(
                &p,
                &key_span(k),
                "`parse` patterns are not supported yet; use lava-test-case",
            ),
            other => ctx.err(&p, &key_span(k), format!("unknown key `{other}`")),
        }
    }
    if steps.is_none() {
        ctx.err(
            &format!("{path}.run.steps"),
            span,
            "missing required key `run.steps`",
        );
    }
    steps
}

impl JobDefinition {
    /// The effective timeout of a phase: the job's per-action override, the
    /// action block's own timeout, the job's `action` default, then the device type.
    /// Caps the job's timeouts at the lab's maxima; says what it capped.
    pub fn cap_timeouts(&mut self, max: &TimeoutMaxima) -> Vec<(String, String)> {
        fn cap(
            out: &mut Vec<(String, String)>,
            path: String,
            t: &mut Option<Duration>,
            max: Duration,
        ) {
            if let Some(d) = t.filter(|d| *d > max) {
                out.push((
                    path,
                    format!(
                        "timeout {} s is above this lab's maximum of {} s; capped",
                        d.as_secs(),
                        max.as_secs()
                    ),
                ));
                *t = Some(max);
            }
        }
        let mut out = Vec::new();
        let t = &mut self.timeouts;
        cap(&mut out, "timeouts.job".into(), &mut t.job, max.job);
        cap(
            &mut out,
            "timeouts.action".into(),
            &mut t.action,
            max.action,
        );
        cap(
            &mut out,
            "timeouts.connection".into(),
            &mut t.connection,
            max.connection,
        );
        for (name, d) in t.actions.iter_mut() {
            let mut o = Some(*d);
            cap(
                &mut out,
                format!("timeouts.actions.{name}"),
                &mut o,
                max.action,
            );
            *d = o.unwrap_or(*d);
        }
        for (name, d) in t.connections.iter_mut() {
            let mut o = Some(*d);
            cap(
                &mut out,
                format!("timeouts.connections.{name}"),
                &mut o,
                max.connection,
            );
            *d = o.unwrap_or(*d);
        }
        for (i, a) in self.actions.iter_mut().enumerate() {
            let (kind, timeout) = match a {
                Action::Deploy(d) => ("deploy", &mut d.timeout),
                Action::Boot(b) => ("boot", &mut b.timeout),
                Action::Test(t) => ("test", &mut t.timeout),
            };
            cap(
                &mut out,
                format!("actions[{i}].{kind}.timeout"),
                timeout,
                max.action,
            );
        }
        out
    }

    pub fn timeout_for(
        &self,
        action_name: &str,
        block: Option<Duration>,
        device_default: Duration,
    ) -> Duration {
        self.timeouts
            .actions
            .get(action_name)
            .copied()
            .or(block)
            .or(self.timeouts.action)
            .unwrap_or(device_default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_definitions_are_read_with_their_revision_history_and_expectations() {
        let text = "device_type: bbb\njob_name: g\ntimeouts:\n  job:\n    minutes: 5\nactions:\n- boot:\n    method: u-boot\n    commands: ramdisk\n    prompts: ['# ']\n- test:\n    definitions:\n    - repository: https://github.com/Linaro/test-definitions\n      from: git\n      path: automated/linux/smoke/smoke.yaml\n      name: smoke-tests\n      revision: 4212946b\n      history: false\n      parameters:\n        SKIP_INSTALL: true\n      expected: [pwd, uname]\n";
        let p = parse("g.yaml", text).unwrap();
        let Action::Test(t) = &p.definition.actions[1] else {
            panic!("no test")
        };
        let d = &t.definitions[0];
        // As LAVA writes it: PyYAML's True, through str().
        assert_eq!(d.parameters["SKIP_INSTALL"], "True");
        assert_eq!(
            d.expected.as_deref(),
            Some(&["pwd".to_owned(), "uname".to_owned()][..])
        );
        let DefinitionSource::Git(g) = &d.source else {
            panic!("{:?}", d.source)
        };
        assert_eq!(g.path, "automated/linux/smoke/smoke.yaml");
        assert_eq!(g.revision.as_deref(), Some("4212946b"));
        assert!(!g.history);
        let escaping =
            errors(&text.replace("automated/linux/smoke/smoke.yaml", "../../etc/passwd"));
        assert!(
            escaping
                .iter()
                .any(|e| e.contains("must be a path inside the repository")),
            "{escaping:?}"
        );
        let transport = errors(&text.replace(
            "https://github.com/Linaro/test-definitions",
            "'ext::sh -c touch% /tmp/x'",
        ));
        assert!(
            transport
                .iter()
                .any(|e| e.starts_with("actions[1].test.definitions[0].repository:")),
            "{transport:?}"
        );
    }

    #[test]
    fn only_lavas_kinds_of_repository_url_are_taken() {
        for ok in [
            "https://github.com/Linaro/test-definitions",
            "http://git.lab/x.git",
            "git://git.lab/x.git",
            "ssh://git@git.lab/x.git",
            "git@github.com:Linaro/test-definitions.git",
            "file:///srv/git/defs.git",
        ] {
            assert_eq!(check_git_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "ext::sh -c id",
            "fd::3",
            "--upload-pack=touch /tmp/x",
            "-oProxyCommand=x",
            "file://relative",
            "ftp://x/y",
            "/srv/git/defs.git",
            "defs",
        ] {
            assert!(check_git_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parameters_are_written_as_lava_writes_them() {
        let text = "a: true\nb: yes\nc: 0x10\nd: 1e3\ne: 1.5\nf: 'true'\ng: ~\nh: [x, 2, false]\ni: {k: v}\nj: 010\nk: plain text\nl: \"it's\"\nm: 12_000\nn: 3.0e-5\n";
        let opts = marked_yaml::LoaderOptions::default().prevent_coercion(true);
        let root = marked_yaml::parse_yaml_with_options(0, text, opts).unwrap();
        let m = root.as_mapping().unwrap();
        let got: Vec<(String, String)> = m
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), lava_text(v)))
            .collect();
        let want = [
            ("a", "True"),
            ("b", "True"),
            ("c", "16"),
            // YAML 1.1 floats have a dot: `1e3` is a string to PyYAML.
            ("d", "1e3"),
            ("e", "1.5"),
            ("f", "true"),
            ("g", ""),
            ("h", "['x', 2, False]"),
            ("i", "{'k': 'v'}"),
            ("j", "8"),
            ("k", "plain text"),
            ("l", "it's"),
            ("m", "12000"),
            ("n", "3e-05"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    fn uboot_job(test: &str) -> String {
        format!(
            "device_type: bbb\njob_name: i\ntimeouts:\n  job:\n    minutes: 5\nactions:\n- boot:\n    method: bootloader\n    bootloader: u-boot\n    commands: []\n    prompts: ['=>']\n- test:\n{test}"
        )
    }

    /// Each error as `key path: message`.
    fn errors(text: &str) -> Vec<String> {
        match parse("j.yaml", text) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .errors
                .iter()
                .map(|d| {
                    format!(
                        "{}: {}",
                        d.location.path.clone().unwrap_or_default(),
                        d.message
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn interactive_scripts_are_read_as_lava_writes_them() {
        let p = parse(
            "i.yaml",
            &uboot_job(
                "    interactive:\n    - name: net\n      prompts: ['=> ']\n      echo: discard\n      script:\n      - command:\n      - delay: 2\n      - command: dhcp\n        name: dhcp\n        wait_for_prompt: false\n        successes:\n        - message: 'bound to (?P<ip>[0-9.]+)'\n        failures:\n        - message: TIMEOUT\n          exception: InfrastructureError\n          error: dhcp failed\n",
            ),
        )
        .unwrap();
        let Action::Boot(b) = &p.definition.actions[0] else {
            panic!("no boot")
        };
        assert_eq!(b.method, BootMethod::Bootloader);
        let Action::Test(t) = &p.definition.actions[1] else {
            panic!("no test")
        };
        let s = &t.interactive[0];
        assert!(s.discard_echo);
        assert_eq!(s.steps.len(), 3);
        let InteractiveStep::Command(wait) = &s.steps[0] else {
            panic!("{:?}", s.steps[0])
        };
        assert_eq!(wait.command, None);
        assert_eq!(s.steps[1], InteractiveStep::Delay(Duration::from_secs(2)));
        let InteractiveStep::Command(dhcp) = &s.steps[2] else {
            panic!("{:?}", s.steps[2])
        };
        assert!(!dhcp.wait_for_prompt);
        assert_eq!(
            dhcp.failures[0].exception,
            Some(crate::model::ErrorClass::Infrastructure)
        );
    }

    #[test]
    fn bad_interactive_and_monitors_tests_are_refused_with_their_key_paths() {
        // (the test action, the start of the error it must give)
        let cases = [
            (
                "    interactive:\n    - name: n\n      prompts: ['=> ']\n      script:\n      - command: x\n        failures:\n        - message: y\n          exception: OopsError\n",
                "actions[1].test.interactive[0].script[0].failures[0].exception: unknown exception `OopsError`",
            ),
            (
                "    interactive:\n    - name: n\n      prompts: ['=> ']\n      script:\n      - command: x\n        lava-send: ready\n",
                "actions[1].test.interactive[0].script[0].lava-send:",
            ),
            (
                "    monitors:\n    - name: m\n      start: a\n      end: b\n      pattern: '(PASS|FAIL) (\\w+)'\n",
                "actions[1].test.monitors[0].pattern: the pattern needs the named groups",
            ),
            (
                "    monitors:\n    - name: m\n      start: '('\n      end: b\n      pattern: '(?P<test_case_id>x)(?P<result>y)'\n",
                "actions[1].test.monitors[0].start: not a valid regex",
            ),
            (
                "    monitors:\n    - name: m\n      start: a\n      end: b\n      pattern: '(?P<test_case_id>x)(?P<result>y)'\n    interactive:\n    - name: n\n      prompts: ['=> ']\n      script:\n      - command: x\n",
                "actions[1].test: a test action has one of `definitions`, `interactive` or `monitors`, not several",
            ),
        ];
        for (test, want) in cases {
            let got = errors(&uboot_job(test));
            assert!(got.iter().any(|e| e.starts_with(want)), "{want}: {got:?}");
        }
    }

    fn qemu_job(image_arg: &str) -> String {
        format!(
            "device_type: qemu-aarch64\njob_name: q\ntimeouts:\n  job:\n    minutes: 5\nactions:\n- deploy:\n    to: tmpfs\n    images:\n      rootfs:\n        image_arg: '{image_arg}'\n        url: http://files.lab/disk.img.xz\n        compression: xz\n- boot:\n    method: qemu\n    media: tmpfs\n    prompts: ['# ']\n"
        )
    }

    #[test]
    fn tmpfs_images_carry_their_qemu_arguments() {
        let p = parse(
            "q.yaml",
            &qemu_job("-drive format=raw,if=virtio,file={rootfs}"),
        )
        .unwrap();
        let Action::Deploy(d) = &p.definition.actions[0] else {
            panic!("no deploy")
        };
        assert!(d.kernel.is_none());
        assert_eq!(d.images.len(), 1);
        assert_eq!(d.images[0].name, "rootfs");
        assert_eq!(
            d.images[0].args,
            ["-drive", "format=raw,if=virtio,file={rootfs}"]
        );
        assert_eq!(d.images[0].artifact.compression, Compression::Xz);
    }

    #[test]
    fn an_image_arg_cannot_reach_beyond_its_image() {
        for (arg, why, code) in [
            (
                "-chardev file,id=x,path=/etc/passwd",
                "`-chardev` may not be set",
                ErrorCode::Unsupported,
            ),
            (
                "-drive file=/etc/shadow",
                "must be the placeholder",
                ErrorCode::InvalidJob,
            ),
            (
                "-drive format=raw,file={rootfs},file.filename=/etc/shadow",
                "`file.filename` may not be set",
                ErrorCode::InvalidJob,
            ),
            (
                "-kernel /boot/vmlinuz -drive file={rootfs}",
                "must be the placeholder",
                ErrorCode::InvalidJob,
            ),
            (
                "-drive file={rootfs} -monitor stdio",
                "`-monitor` may not be set",
                ErrorCode::Unsupported,
            ),
            (
                "-drive file={rootfs} -serial file:/tmp/x",
                "`-serial` may not be set",
                ErrorCode::Unsupported,
            ),
            (
                "-drive file={rootfs} -plugin /x.so",
                "`-plugin`",
                ErrorCode::Unsupported,
            ),
            (
                "-drive file={rootfs} -object memory-backend-file,mem-path=/x",
                "`-object`",
                ErrorCode::Unsupported,
            ),
            (
                "-drive file={rootfs} -virtfs local,path=/",
                "`-virtfs`",
                ErrorCode::Unsupported,
            ),
            (
                "-drive file={rootfs} -net user,smb=/",
                "-net `user,smb=/`",
                ErrorCode::Unsupported,
            ),
            (
                "-drive file={rootfs} -netdev tap,script=/x",
                "`-netdev`",
                ErrorCode::Unsupported,
            ),
            (
                "-drive file={rootfs} -device loader,file=/etc/shadow",
                "must be the placeholder",
                ErrorCode::InvalidJob,
            ),
            (
                "-drive file={rootfs} -L /usr/share",
                "`-L`",
                ErrorCode::Unsupported,
            ),
            (
                "-kernel {kernel}",
                "must be the placeholder",
                ErrorCode::InvalidJob,
            ),
            (
                "-smp 2",
                "must name its own image as `{rootfs}`",
                ErrorCode::InvalidJob,
            ),
            ("-drive", "`-drive` needs a value", ErrorCode::InvalidJob),
            (
                "-append \"console=ttyAMA0 -drive file={rootfs}",
                "no closing quotation",
                ErrorCode::InvalidJob,
            ),
        ] {
            let e = parse("q.yaml", &qemu_job(arg)).unwrap_err();
            let d = e.first();
            assert_eq!(
                d.location.path.as_deref(),
                Some("actions[0].deploy.images.rootfs.image_arg"),
                "{arg}: {e}"
            );
            assert!(d.message.contains(why), "{arg}: {}", d.message);
            assert_eq!(d.code, code, "{arg}: {}", d.message);
            // The image_arg's own line and column (line 11 of qemu_job).
            assert_eq!(d.location.line, Some(11), "{arg}");
            assert_eq!(d.location.column, Some(20), "{arg}");
        }
    }

    /// tuxlava's form: the kernel with its command line, a rootfs on a
    /// virtio disk naming the device the drive is for, and a context
    /// shaping the board's QEMU.
    #[test]
    fn tuxlava_jobs_are_accepted_with_their_context() {
        let text = "device_type: qemu-aarch64\njob_name: t\ntimeouts:\n  job:\n    minutes: 5\ncontext:\n  arch: arm64\n  cpu: max\n  machine: virt\n  memory: 4G\n  extra_options: ['--smp 2', '-smp 2']\n  guest_foo: 1\n  netdevice: tap\n  extra_kernel_args: 'debug'\n  console_device: ttyAMA0\nactions:\n- deploy:\n    to: tmpfs\n    images:\n      kernel:\n        image_arg: '-kernel {kernel} -append \"console=ttyAMA0,115200 root=/dev/vda debug verbose console_msg_format=syslog\"'\n        url: http://files.lab/Image\n      rootfs:\n        image_arg: '-drive file={rootfs},if=none,format=raw,id=hd0 -device virtio-blk-device,drive=hd0'\n        url: http://files.lab/rootfs.ext4.xz\n        compression: xz\n      modules:\n        url: http://files.lab/modules.tar.xz\n- boot:\n    method: qemu\n    media: tmpfs\n    prompts: ['# ']\n";
        let p = parse("t.yaml", text).unwrap_or_else(|e| panic!("{e}"));
        let Action::Deploy(d) = &p.definition.actions[0] else {
            panic!("no deploy")
        };
        assert_eq!(
            d.images[0].args,
            [
                "-kernel",
                "{kernel}",
                "-append",
                "console=ttyAMA0,115200 root=/dev/vda debug verbose console_msg_format=syslog"
            ]
        );
        assert_eq!(d.images[1].args.len(), 4);
        // An image without image_arg is only downloaded, as in LAVA.
        assert!(d.images[2].args.is_empty());
        let warned = |path: &str| {
            p.warnings
                .iter()
                .any(|w| w.location.path.as_deref() == Some(path))
        };
        assert!(
            warned("actions[0].deploy.images.modules"),
            "{:?}",
            p.warnings
        );
        assert!(warned("context.guest_foo") && warned("context.netdevice"));
        assert!(!warned("context") && !warned("context.cpu"));
        let c = &p.definition.context;
        assert_eq!(c.arch.as_deref(), Some("arm64"));
        assert_eq!(
            c.qemu_options(),
            ["-cpu", "max", "-machine", "virt", "-m", "4G", "--smp", "2", "-smp", "2"]
        );
        assert_eq!(
            c.kernel_args(Some(115200)),
            "console=ttyAMA0,115200n8 debug"
        );
        assert_eq!(c.kernel_args(None), "console=ttyAMA0 debug");
        assert!(p.qemu_options.is_empty());
    }

    fn context_job(context: &str) -> String {
        format!("device_type: qemu-aarch64\njob_name: c\ntimeouts:\n  job:\n    minutes: 5\ncontext:\n{context}actions:\n- deploy:\n    to: tmpfs\n    images:\n      kernel:\n        image_arg: -kernel {{kernel}}\n        url: http://files.lab/Image\n- boot:\n    method: qemu\n    prompts: ['# ']\n")
    }

    #[test]
    fn context_keys_that_reach_the_host_are_refused_with_their_key_path() {
        for (context, path, why, code) in [
            (
                "  guestfs_interface: virtio\n",
                "context.guestfs_interface",
                "guestfs",
                ErrorCode::Unsupported,
            ),
            (
                "  guestfs_size: 1024\n",
                "context.guestfs_size",
                "guestfs",
                ErrorCode::Unsupported,
            ),
            (
                "  extra_options: ['-monitor stdio']\n",
                "context.extra_options",
                "`-monitor`",
                ErrorCode::Unsupported,
            ),
            (
                "  extra_options:\n  - -chardev\n  - file,id=x,path=/tmp/x\n",
                "context.extra_options",
                "`-chardev`",
                ErrorCode::Unsupported,
            ),
            (
                "  extra_options: ['-kernel /boot/vmlinuz']\n",
                "context.extra_options",
                "placeholder",
                ErrorCode::InvalidJob,
            ),
            (
                "  extra_options: ['-append \"x']\n",
                "context.extra_options",
                "no closing quotation",
                ErrorCode::InvalidJob,
            ),
            (
                "  machine: virt,dumpdtb=/tmp/x\n",
                "context.machine",
                "`dumpdtb`",
                ErrorCode::Unsupported,
            ),
            (
                "  cpu: max -monitor stdio\n",
                "context.cpu",
                "one word",
                ErrorCode::InvalidJob,
            ),
            (
                "  memory: /dev/shm\n",
                "context.memory",
                "host path",
                ErrorCode::InvalidJob,
            ),
            (
                "  arch: ../x\n",
                "context.arch",
                "architecture",
                ErrorCode::InvalidJob,
            ),
            (
                "  extra_kernel_args: \"a' ; reset\"\n",
                "context.extra_kernel_args",
                "quotes",
                ErrorCode::InvalidJob,
            ),
        ] {
            let e = parse("c.yaml", &context_job(context)).unwrap_err();
            let d = e.first();
            assert_eq!(d.location.path.as_deref(), Some(path), "{context}: {e}");
            assert!(d.message.contains(why), "{context}: {}", d.message);
            assert_eq!(d.code, code, "{context}: {}", d.message);
            // The value's line: the key's, or the list's below it.
            assert!(matches!(d.location.line, Some(7 | 8)), "{context}: {e}");
        }
    }

    #[test]
    fn options_outside_the_default_list_are_left_to_the_lab() {
        let p = parse("c.yaml", &context_job("  extra_options: ['-foo', 'bar']\n")).unwrap();
        assert_eq!(p.definition.context.extra_options, ["-foo", "bar"]);
        assert_eq!(p.qemu_options.len(), 1);
        assert_eq!(p.qemu_options[0].1, "-foo");
        assert_eq!(
            p.qemu_options[0].0.path.as_deref(),
            Some("context.extra_options")
        );
        // A u-boot job's QEMU context changes nothing: said so.
        let text = context_job("  cpu: max\n").replace("method: qemu", "method: minimal");
        let p = parse("c.yaml", &text).unwrap();
        assert!(p
            .warnings
            .iter()
            .any(|w| w.location.path.as_deref() == Some("context")));
    }

    #[test]
    fn kernel_args_go_into_a_bootargs_command() {
        assert_eq!(
            with_bootargs(
                "setenv bootargs 'console=ttyAMA0 rdinit=/init'",
                "debug x=1"
            ),
            "setenv bootargs 'console=ttyAMA0 rdinit=/init debug x=1'"
        );
        assert_eq!(
            with_bootargs("setenv bootargs \"root=/dev/ram0\"", "quiet"),
            "setenv bootargs \"root=/dev/ram0 quiet\""
        );
        assert_eq!(
            with_bootargs("setenv bootargs root=/dev/ram0", "quiet"),
            "setenv bootargs root=/dev/ram0 quiet"
        );
        assert_eq!(
            with_bootargs("tftp {KERNEL_ADDR} {KERNEL}", "quiet"),
            "tftp {KERNEL_ADDR} {KERNEL}"
        );
        assert_eq!(
            with_bootargs("setenv bootargs 'a'", ""),
            "setenv bootargs 'a'"
        );
    }

    #[test]
    fn a_tmpfs_deploy_names_its_files_under_images() {
        let text = qemu_job("-drive file={rootfs}").replace(
            "    images:\n",
            "    kernel:\n      url: http://files.lab/Image\n      type: image\n    images:\n",
        );
        let e = parse("q.yaml", &text).unwrap_err();
        assert!(
            e.errors
                .iter()
                .any(|d| d.location.path.as_deref() == Some("actions[0].deploy.kernel")),
            "{e}"
        );
        let text = qemu_job("-drive file={rootfs}")
            .replace("      rootfs:\n", "      ../x:\n")
            .replace("{rootfs}", "{../x}");
        let e = parse("q.yaml", &text).unwrap_err();
        assert!(e.to_string().contains("an image name may only use"), "{e}");
    }

    fn tftp_job(deploy_extra: &str, ramdisk_extra: &str) -> String {
        format!(
            "device_type: bbb\njob_name: d\ntimeouts:\n  job:\n    minutes: 5\n  connections:\n    lava-test-shell:\n      seconds: 30\nactions:\n- deploy:\n    to: tftp\n    kernel:\n      url: http://f/zImage\n    ramdisk:\n      url: http://f/rd.gz\n{ramdisk_extra}{deploy_extra}- boot:\n    method: u-boot\n    commands: ramdisk\n    prompts: ['# ']\n"
        )
    }

    #[test]
    fn deploy_shapes_of_lava_jobs_are_read() {
        let p = parse(
            "d.yaml",
            &tftp_job(
                "    modules:\n      url: http://f/modules.tar.xz\n      compression: xz\n",
                "      header: u-boot\n      install_overlay: false\n",
            ),
        )
        .unwrap();
        let Action::Deploy(d) = &p.definition.actions[0] else {
            panic!("no deploy")
        };
        // LAVA does not require a kernel's type.
        assert_eq!(d.kernel_type, None);
        assert!(d.ramdisk_options.uboot_header);
        assert!(d.ramdisk_options.install_modules);
        assert!(!d.ramdisk_options.install_overlay);
        let m = d.modules.as_ref().unwrap();
        assert_eq!(m.compression, Compression::Xz);
        assert_eq!(
            p.definition.timeouts.connections["lava-test-shell"],
            Duration::from_secs(30)
        );
        // Capped like every other timeout.
        let mut def = p.definition.clone();
        let capped = def.cap_timeouts(&TimeoutMaxima {
            job: Duration::from_secs(600),
            action: Duration::from_secs(600),
            connection: Duration::from_secs(10),
        });
        assert!(capped
            .iter()
            .any(|(k, _)| k == "timeouts.connections.lava-test-shell"));
    }

    #[test]
    fn deploy_shapes_labd_cannot_run_are_refused_by_key() {
        for (deploy, ramdisk, path, why) in [
            (
                "",
                "      header: fit\n",
                "actions[0].deploy.ramdisk.header",
                "`u-boot`",
            ),
            (
                "",
                "      install_modules: maybe\n",
                "actions[0].deploy.ramdisk.install_modules",
                "true or false",
            ),
            (
                "    dtbo:\n    - url: http://f/x.dtbo\n",
                "",
                "actions[0].deploy.dtbo",
                "fdtoverlay",
            ),
            (
                "    postprocess:\n      docker:\n        image: debian\n",
                "",
                "actions[0].deploy.postprocess",
                "docker",
            ),
            (
                "    modules:\n      url: downloads://a/../b\n",
                "",
                "actions[0].deploy.modules.url",
                "`..`",
            ),
        ] {
            let e = parse("d.yaml", &tftp_job(deploy, ramdisk)).unwrap_err();
            let d = e
                .errors
                .iter()
                .find(|d| d.location.path.as_deref() == Some(path))
                .unwrap_or_else(|| panic!("{path}: {e}"));
            assert!(d.message.contains(why), "{path}: {}", d.message);
        }
        // Modules go into a ramdisk (or an NFS root): not into nothing.
        let no_ramdisk = tftp_job("    modules:\n      url: http://f/m.tgz\n", "")
            .replace("    ramdisk:\n      url: http://f/rd.gz\n", "");
        let e = parse("d.yaml", &no_ramdisk).unwrap_err();
        assert!(e.to_string().contains("this deploy has neither"), "{e}");
    }

    #[test]
    fn a_downloads_deploy_takes_images_without_qemu_arguments() {
        let text = "device_type: qemu\njob_name: d\ntimeouts:\n  job:\n    minutes: 5\nactions:\n- deploy:\n    to: downloads\n    images:\n      rootfs:\n        url: http://f/stretch.img.xz\n        compression: xz\n      other:\n        url: http://g/stretch.img\n";
        let e = parse("d.yaml", text).unwrap_err();
        assert!(
            e.to_string()
                .contains("would both be downloads://stretch.img"),
            "{e}"
        );
        let text = text.replace("http://g/stretch.img", "http://g/other.img");
        let p = parse("d.yaml", &text).unwrap();
        let Action::Deploy(d) = &p.definition.actions[0] else {
            panic!("no deploy")
        };
        assert_eq!(d.downloads.len(), 2);
        assert_eq!(download_file_name(&d.downloads[0].artifact), "stretch.img");
        assert!(d.images.is_empty() && d.kernel.is_none());
    }

    #[test]
    fn secrets_are_masked_in_the_stored_text_whatever_their_style() {
        let head = "device_type: bbb\njob_name: s\ntimeouts:\n  job:\n    minutes: 5\nactions:\n- boot:\n    method: minimal\n    prompts: ['# ']\n";
        for secrets in [
            "secrets:\n  A: plain-value # a comment\n  B: 'it''s quoted'\n  C: \"dq \\\" x\"\n",
            "secrets: {A: plain-value, B: 'it''s quoted', C: \"dq \\\" x\"}\n",
        ] {
            let text = format!("{head}{secrets}");
            let p = parse("s.yaml", &text).unwrap();
            assert_eq!(p.definition.secrets["A"], "plain-value");
            assert_eq!(p.definition.secrets["B"], "it's quoted");
            assert_eq!(p.definition.secrets["C"], "dq \" x");
            let masked = mask_secrets("s.yaml", &text, &p).unwrap();
            for v in ["plain-value", "it''s quoted", "dq"] {
                assert!(!masked.contains(v), "{masked}");
            }
            let again = parse("s.yaml", &masked).unwrap();
            assert!(again.definition.secrets.values().all(|v| v == SECRET_MASK));
        }
        // A job without secrets is stored as it came.
        let p = parse("s.yaml", head).unwrap();
        assert_eq!(mask_secrets("s.yaml", head, &p).unwrap(), head);
    }

    #[test]
    fn soft_reboot_and_the_shutdown_message_are_warned_other_boot_parameters_refused() {
        let job = |extra: &str| {
            format!("device_type: bbb\njob_name: s\ntimeouts:\n  job:\n    minutes: 5\nactions:\n- boot:\n    method: minimal\n    prompts: ['# ']\n{extra}")
        };
        let p = parse(
            "s.yaml",
            &job("    soft_reboot: reboot -nf\n    parameters:\n      shutdown-message: 'reboot: Restarting system'\n"),
        )
        .unwrap();
        let warned: Vec<_> = p
            .warnings
            .iter()
            .filter_map(|w| w.location.path.clone())
            .collect();
        assert!(
            warned.contains(&"actions[0].boot.soft_reboot".to_owned()),
            "{warned:?}"
        );
        assert!(
            warned.contains(&"actions[0].boot.parameters.shutdown-message".to_owned()),
            "{warned:?}"
        );
        let e = parse(
            "s.yaml",
            &job("    parameters:\n      kernel-start-message: x\n"),
        )
        .unwrap_err();
        assert_eq!(
            e.first().location.path.as_deref(),
            Some("actions[0].boot.parameters.kernel-start-message")
        );
        assert_eq!(e.code(), ErrorCode::Unsupported);
    }

    #[test]
    fn a_job_with_secrets_repeats_no_key() {
        let text = "device_type: bbb\njob_name: s\nsecrets:\n  K: first-value\nsecrets:\n  K: second\ntimeouts:\n  job:\n    minutes: 5\nactions:\n- boot:\n    method: minimal\n";
        let e = parse("s.yaml", text).unwrap_err();
        assert_eq!(e.first().location.path.as_deref(), Some("secrets"), "{e}");
        assert!(e.to_string().contains("kept in clear"), "{e}");
    }
}
