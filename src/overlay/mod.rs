//! The LAVA overlay: the `/lava-<job>/` tree a job's test definitions run
//! from on the board, built on the lab host, and its packings.
//!
//! LAVA does not type a test definition's steps on the board's shell: it
//! puts a tree in the board's file system and starts `lava-test-runner`
//! there. Users' definitions expect that tree (its helpers on `PATH`, their
//! repository's files in the current directory, `$LAVA_RESULT_DIR`,
//! `$TESTRUN_ID`), so labd builds the same one. This module owns the tree:
//! what is in it ([`Overlay::build`]), and its packings: a gzip'd newc cpio
//! ([`Overlay::cpio_gz`]), that archive appended to a user's ramdisk
//! ([`append_to_ramdisk`]), and a tar.gz for LAVA's `transfer_overlay`
//! ([`Overlay::tar_gz`]). It does no I/O but reading the directories it is
//! given; it is CPU work (gzip) a runner calls on a blocking thread.
//!
//! ## The tree
//!
//! ```text
//! lava-<job>/
//!   bin/                  labd's own POSIX-sh helpers: lava-test-runner,
//!                         lava-test-case, lava-test-set, lava-test-raise,
//!                         lava-test-reference, lava-test-event,
//!                         lava-background-process-start/-stop,
//!                         lava-test-case-attach (says "not supported")
//!   environment           `export`s sourced by the runner (LAVA_JOB_ID, ...)
//!   results/  tests/      empty, as LAVA makes them
//!   <stage>/              one per test action, in job order
//!     lava-test-runner.conf   the definitions' directories, in order
//!     tests/<n>_<name>/   the definition's files (its repository), uuid,
//!                         testdef.yaml, run.sh, and install.sh if any
//! ```
//!
//! `<n>` counts definitions across the whole job, as LAVA's does, so the
//! second action's first definition may be `2_smoke`; `<n>_<name>` is the
//! TESTRUN_ID of its STARTRUN and ENDRUN signals, and the uuid is
//! `<job>_<n>`. The board starts a stage as LAVA's test shell does:
//! `/lava-<job>/bin/lava-test-runner /lava-<job>/<stage>`
//! ([`Overlay::runner_command`]); the runner prints `<LAVA_TEST_RUNNER
//! EXIT>` when done.
//!
//! ## run.sh
//!
//! As LAVA's: the definition's `params` defaults, then the job's
//! `parameters` (later ones win), `set -e`, `TESTRUN_ID`, a `cd` into the
//! definition's directory, STARTRUN, the steps one a line (a multi-line
//! step stays whole, so it behaves as in any script), ENDRUN. Three
//! differences, all on purpose. A parameter is exported (LAVA only sets
//! it), and its value is single-quoted with every `'` escaped, so a value
//! holding quotes, `$(...)` or newlines is data, never code (LAVA pastes
//! it between quotes as is). The steps are not traced (`set -x`): the
//! trace of a step that echoes a signal would be a second copy of it.
//! Like LAVA, in a step that holds `--shell` or `--cmd`, `$1`..`$9`... are
//! escaped so that they reach the helper, not run.sh's own arguments. The
//! `cd` goes to the directory run.sh is in, so a tree unpacked anywhere
//! runs (the tests run it in a temporary directory).
//!
//! ## install
//!
//! labd never installs packages on a board: a definition's `install: deps`
//! (and `deps-<distro>`), `keys` and `sources` are left out, each with a
//! warning in [`Overlay::warnings`] for the runner to record. `install:
//! steps` are honoured, as LAVA does, in an install.sh the runner runs
//! before run.sh (a failure skips the definition with `<LAVA_TEST_RUNNER
//! INSTALL_FAIL>`). `install: git-repos` are copied in when the caller
//! fetched them ([`OverlayDefinition::repos`]); one not fetched is a
//! warning. The job's `skip_install` leaves out the parts it names.
//!
//! ## Invariants
//!
//! Never follows a symlink of a definition's directory (a link is copied as
//! a link, so no file of the lab host outside the directory reaches the
//! board); never puts a job's text in a script but as a quoted value or as
//! the user's own steps; names (definitions, parameters, variables) are
//! checked before they become paths or shell words; the archive holds
//! parents before children and nothing outside `lava-<job>/`.

mod archive;
mod modules;
mod ramdisk;
mod scripts;
mod testdef;

pub use modules::{modules_cpio_gz, ModulesArchive};
pub use ramdisk::{
    append_to_ramdisk, check_uimage_ramdisk, wrap_in_uimage, AppendedRamdisk, RamdiskFormat,
};
pub use scripts::secrets_file;
pub use testdef::{parse_testdef, GitRepo, Install, Testdef};

use crate::model::JobId;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The most file data an overlay may hold: the tree is built in memory and
/// shipped in a ramdisk, and a repository this big is a mistake.
pub const MAX_OVERLAY_BYTES: u64 = 1 << 30;

/// Why an overlay could not be built or packed.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("test definition: {message}{}", at_line(*.line))]
    Testdef {
        line: Option<usize>,
        message: String,
    },
    #[error("{what} `{value}` {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("reading {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the overlay would hold more than {MAX_OVERLAY_BYTES} bytes of files (at {path})")]
    TooLarge { path: String },
    #[error("{path}: {what} too large for the archive format")]
    TooLargeForFormat { path: String, what: &'static str },
    #[error("installing git repository `{destination}`: {why}")]
    Repo {
        destination: String,
        why: &'static str,
    },
    #[error("ramdisk: {0}")]
    Ramdisk(String),
    #[error("modules: {0}")]
    Modules(String),
    #[error("compressing the overlay: {0}")]
    Compress(#[source] std::io::Error),
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}

/// A directory on the lab host whose files go into the overlay (a git
/// checkout of a definition's repository).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceDir {
    pub path: PathBuf,
    /// Whether `.git` directories come too: LAVA's `history` (true by
    /// default in LAVA, where clones are shallow). A full history can be
    /// most of a repository's size, and it all goes into the board's RAM.
    pub include_git: bool,
}

/// One test definition of a job, as the overlay needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayDefinition {
    /// The job's `name` for it: the directory is `<n>_<name>`. Letters,
    /// digits, `-`, `_` and `.`; `lava` is reserved, as in LAVA.
    pub name: String,
    /// The files copied into the definition's directory (its repository's
    /// checkout), or `None` for an inline definition.
    pub source: Option<SourceDir>,
    /// The definition's YAML text, written as `testdef.yaml`; when `None`,
    /// `testdef` is written there as JSON (which is YAML).
    pub yaml: Option<String>,
    /// What the definition says: steps, `params` defaults, install.
    pub testdef: Testdef,
    /// The job's `parameters` for the definition, in job order; they
    /// override the definition's defaults.
    pub parameters: Vec<(String, String)>,
    /// LAVA's `skip_install`: install parts left out (`keys`, `sources`,
    /// `deps`, `steps`, `git-repos`, `all`).
    pub skip_install: Vec<String>,
    /// The `install: git-repos` the caller fetched, by destination (see
    /// [`GitRepo::destination`]); each is copied to `<dir>/<destination>`.
    pub repos: Vec<(String, SourceDir)>,
    /// LAVA's `lava-signal: kmsg`: its signals go to `/dev/kmsg`.
    pub signal_kmsg: bool,
}

impl OverlayDefinition {
    /// A definition from its YAML text (a repository's file or an inline
    /// definition), with the job's parameters.
    pub fn from_yaml(
        name: &str,
        source: Option<SourceDir>,
        yaml: &str,
        parameters: Vec<(String, String)>,
    ) -> Result<Self, OverlayError> {
        Ok(Self {
            name: name.to_owned(),
            source,
            yaml: Some(yaml.to_owned()),
            testdef: parse_testdef(yaml)?,
            parameters,
            skip_install: Vec::new(),
            repos: Vec::new(),
            signal_kmsg: false,
        })
    }
}

/// What an overlay is built from: one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayJob {
    pub job_id: JobId,
    /// The board's shell, an absolute path: the helpers' `#!` line and what
    /// runs each run.sh (LAVA's `lava_test_sh_cmd`, `/bin/sh` by default).
    pub shell: String,
    /// Exported in `environment` after `LAVA_JOB_ID` (the job's
    /// `environment`, the device's `LAVA_DEVICE_TYPE`, ...).
    pub environment: Vec<(String, String)>,
    /// The definitions of each test action, in job order: stage `i` is the
    /// `i`-th test action.
    pub stages: Vec<Vec<OverlayDefinition>>,
    /// The job's `secrets`, written to `secrets` (mode 0600) as LAVA does.
    pub secrets: std::collections::BTreeMap<String, String>,
}

impl OverlayJob {
    /// A job's overlay with the default shell and no extra environment.
    pub fn new(job_id: JobId, stages: Vec<Vec<OverlayDefinition>>) -> Self {
        Self {
            job_id,
            shell: "/bin/sh".to_owned(),
            environment: Vec::new(),
            stages,
            secrets: Default::default(),
        }
    }
}

/// One file, directory or symbolic link of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Permission bits (`0o755`); the type is `kind`'s.
    pub mode: u32,
    /// Seconds since the epoch.
    pub mtime: u64,
    pub kind: EntryKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

/// Where one definition went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltDefinition {
    pub stage: usize,
    /// `<n>_<name>`, the name in its STARTRUN and ENDRUN signals.
    pub testrun_id: String,
    /// `<job>_<n>`, the second word of those signals.
    pub uuid: String,
    /// Its directory on the board (`/lava-<job>/<stage>/tests/<n>_<name>`).
    pub directory: String,
}

/// A built overlay: the tree, in memory, with what was left out of it.
#[derive(Debug, Clone)]
pub struct Overlay {
    job_id: JobId,
    stages: usize,
    /// By path inside the archive (`lava-<job>/...`); a path's parents sort
    /// before it, so the map's order is a valid archive order.
    entries: BTreeMap<String, Entry>,
    warnings: Vec<String>,
    definitions: Vec<BuiltDefinition>,
    bytes: u64,
}

impl Overlay {
    /// Builds the tree for `job`. Reads the definitions' directories; the
    /// rest is in memory.
    pub fn build(job: &OverlayJob) -> Result<Overlay, OverlayError> {
        check_shell(&job.shell)?;
        let mtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut o = Overlay {
            job_id: job.job_id,
            stages: job.stages.len(),
            entries: BTreeMap::new(),
            warnings: Vec::new(),
            definitions: Vec::new(),
            bytes: 0,
        };
        let root = o.root_name();
        let dir = |o: &mut Overlay, p: &str| o.put_dir(p, mtime);
        dir(&mut o, &root);
        for sub in ["bin", "results", "tests"] {
            dir(&mut o, &format!("{root}/{sub}"));
        }
        for (name, text) in scripts::helpers(&job.shell) {
            o.put_file(
                &format!("{root}/bin/{name}"),
                0o755,
                mtime,
                text.into_bytes(),
            )?;
        }
        if !job.secrets.is_empty() {
            let text = scripts::secrets_file(&job.secrets)?;
            o.put_file(&format!("{root}/secrets"), 0o600, mtime, text.into_bytes())?;
        }
        let env = scripts::environment(job.job_id, &job.environment)?;
        o.put_file(
            &format!("{root}/environment"),
            0o644,
            mtime,
            env.into_bytes(),
        )?;

        let mut n = 0usize;
        for (stage, defs) in job.stages.iter().enumerate() {
            let stage_dir = format!("{root}/{stage}");
            dir(&mut o, &format!("{stage_dir}/tests"));
            let mut conf = String::new();
            for def in defs {
                let built = o.definition(job, def, stage, n, mtime)?;
                conf.push_str(&format!("tests/{}\n", built.testrun_id));
                o.definitions.push(built);
                n += 1;
            }
            o.put_file(
                &format!("{stage_dir}/lava-test-runner.conf"),
                0o644,
                mtime,
                conf.into_bytes(),
            )?;
        }
        Ok(o)
    }

    fn definition(
        &mut self,
        job: &OverlayJob,
        def: &OverlayDefinition,
        stage: usize,
        n: usize,
        mtime: u64,
    ) -> Result<BuiltDefinition, OverlayError> {
        check_definition_name(&def.name)?;
        let testrun_id = format!("{n}_{}", def.name);
        let uuid = format!("{}_{n}", job.job_id);
        let dir = format!("{}/{stage}/tests/{testrun_id}", self.root_name());
        self.put_dir(&dir, mtime);
        if let Some(src) = &def.source {
            self.copy_dir(src, &dir)?;
        }
        for note in &def.testdef.notes {
            self.warnings.push(format!("{testrun_id}: {note}"));
        }
        let install_steps = self.install(def, &testrun_id, &dir, mtime)?;

        // The generated files come last: they replace a repository's own
        // files of the same names (LAVA overwrites them too), with a word.
        let params = scripts::Params::new(&def.testdef.params, &def.parameters, |w| {
            self.warnings.push(format!("{testrun_id}: {w}"))
        })?;
        let testdef_yaml = match &def.yaml {
            Some(y) => y.clone().into_bytes(),
            None => def.testdef.to_json().into_bytes(),
        };
        let run_sh = scripts::run_sh(
            &job.shell,
            &testrun_id,
            &params,
            &def.testdef.steps,
            def.signal_kmsg,
        )?;
        let mut generated = vec![
            ("uuid", 0o644, uuid.clone().into_bytes()),
            ("testdef.yaml", 0o644, testdef_yaml),
            ("run.sh", 0o755, run_sh.into_bytes()),
        ];
        if let Some(steps) = install_steps {
            let text = scripts::install_sh(&job.shell, &testrun_id, &params, steps)?;
            generated.push(("install.sh", 0o755, text.into_bytes()));
        }
        for (name, mode, data) in generated {
            let path = format!("{dir}/{name}");
            if self.entries.contains_key(&path) {
                self.warnings.push(format!(
                    "{testrun_id}: the repository's own `{name}` is replaced by labd's"
                ));
            }
            self.put_file(&path, mode, mtime, data)?;
        }
        Ok(BuiltDefinition {
            stage,
            testrun_id,
            uuid,
            directory: format!("/{dir}"),
        })
    }

    /// Applies a definition's `install` section; returns the install steps
    /// to run, if any.
    fn install<'d>(
        &mut self,
        def: &'d OverlayDefinition,
        testrun_id: &str,
        dir: &str,
        mtime: u64,
    ) -> Result<Option<&'d [String]>, OverlayError> {
        let skip = |part: &str| def.skip_install.iter().any(|s| s == part || s == "all");
        for s in &def.skip_install {
            if !["keys", "sources", "deps", "steps", "git-repos", "all"].contains(&s.as_str()) {
                self.warnings.push(format!(
                    "{testrun_id}: skip_install `{s}` is not an install part; ignored"
                ));
            }
        }
        let install = &def.testdef.install;
        let mut skipped = |part: &str, items: &[String]| {
            if !items.is_empty() && !skip(part) {
                self.warnings.push(format!(
                    "{testrun_id}: install `{part}` skipped: labd does not install packages on the board ({})",
                    items.join(" ")
                ));
            }
        };
        skipped("keys", &install.keys);
        skipped("sources", &install.sources);
        skipped("deps", &install.deps);
        for (distro, deps) in &install.distro_deps {
            if !skip("deps") {
                skipped(&format!("deps-{distro}"), deps);
            }
        }
        for key in &install.other {
            self.warnings.push(format!(
                "{testrun_id}: install `{key}` is not known to labd; ignored"
            ));
        }
        if !skip("git-repos") {
            for repo in &install.git_repos {
                if !def.repos.iter().any(|(d, _)| *d == repo.destination) {
                    self.warnings.push(format!(
                        "{testrun_id}: install git-repos `{}` was not fetched; skipped",
                        repo.url
                    ));
                }
            }
            for (destination, src) in &def.repos {
                check_destination(destination)?;
                let to = format!("{dir}/{destination}");
                if self.entries.contains_key(&to) {
                    return Err(OverlayError::Repo {
                        destination: destination.clone(),
                        why: "the definition's directory already holds that name",
                    });
                }
                self.put_dir(&to, mtime);
                self.copy_dir(src, &to)?;
            }
        }
        Ok((!install.steps.is_empty() && !skip("steps")).then_some(&install.steps[..]))
    }

    /// Copies `src` into the tree at `to`, in name order. A symbolic link
    /// is copied as a link and never followed; what is neither a file, a
    /// directory nor a link (a FIFO, a socket, a device) is left out with
    /// a warning, as is a name that is not UTF-8.
    fn copy_dir(&mut self, src: &SourceDir, to: &str) -> Result<(), OverlayError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| OverlayError::Io { path, source }
        };
        let mut todo = vec![(src.path.clone(), to.to_owned())];
        while let Some((from, to)) = todo.pop() {
            let mut names: Vec<_> = std::fs::read_dir(&from)
                .map_err(io(&from))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(io(&from))?;
            names.sort();
            for name in names {
                let path = from.join(&name);
                let Some(name) = name.to_str() else {
                    self.warnings
                        .push(format!("{}: not a UTF-8 name; left out", path.display()));
                    continue;
                };
                if name == ".git" && !src.include_git {
                    continue;
                }
                let dest = format!("{to}/{name}");
                let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                use std::os::unix::fs::PermissionsExt;
                let mode = meta.permissions().mode() & 0o777;
                let ft = meta.file_type();
                if ft.is_dir() {
                    self.entries.insert(
                        dest.clone(),
                        Entry {
                            mode,
                            mtime,
                            kind: EntryKind::Dir,
                        },
                    );
                    todo.push((path, dest));
                } else if ft.is_file() {
                    self.add_bytes(meta.len(), &dest)?;
                    let data = std::fs::read(&path).map_err(io(&path))?;
                    self.entries.insert(
                        dest,
                        Entry {
                            mode,
                            mtime,
                            kind: EntryKind::File(data),
                        },
                    );
                } else if ft.is_symlink() {
                    let target = std::fs::read_link(&path).map_err(io(&path))?;
                    let Some(target) = target.to_str() else {
                        self.warnings.push(format!(
                            "{}: a link to a name that is not UTF-8; left out",
                            path.display()
                        ));
                        continue;
                    };
                    self.entries.insert(
                        dest,
                        Entry {
                            mode: 0o777,
                            mtime,
                            kind: EntryKind::Symlink(target.to_owned()),
                        },
                    );
                } else {
                    self.warnings.push(format!(
                        "{}: neither a file, a directory nor a link; left out",
                        path.display()
                    ));
                }
            }
        }
        Ok(())
    }

    fn add_bytes(&mut self, n: u64, path: &str) -> Result<(), OverlayError> {
        self.bytes += n;
        if self.bytes > MAX_OVERLAY_BYTES {
            return Err(OverlayError::TooLarge {
                path: path.to_owned(),
            });
        }
        Ok(())
    }

    /// Adds a directory and any missing parent; one already there stays.
    fn put_dir(&mut self, path: &str, mtime: u64) {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            self.entries
                .entry(path[..at + i].to_owned())
                .or_insert_with(|| dir_entry(mtime));
            at += i + 1;
        }
        self.entries
            .entry(path.to_owned())
            .or_insert_with(|| dir_entry(mtime));
    }

    fn put_file(
        &mut self,
        path: &str,
        mode: u32,
        mtime: u64,
        data: Vec<u8>,
    ) -> Result<(), OverlayError> {
        self.add_bytes(data.len() as u64, path)?;
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.put_dir(parent, mtime);
        }
        self.entries.insert(
            path.to_owned(),
            Entry {
                mode,
                mtime,
                kind: EntryKind::File(data),
            },
        );
        Ok(())
    }

    fn root_name(&self) -> String {
        format!("lava-{}", self.job_id)
    }

    /// The tree's place on the board: `/lava-<job>`.
    pub fn root(&self) -> String {
        format!("/{}", self.root_name())
    }

    /// The line that runs a test action's definitions on the board, as
    /// LAVA's test shell types it. `None` past the job's last stage.
    pub fn runner_command(&self, stage: usize) -> Option<String> {
        (stage < self.stages).then(|| {
            let root = self.root();
            format!("{root}/bin/lava-test-runner {root}/{stage}")
        })
    }

    /// What was left out or changed, one sentence each, for the job's events.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Every definition, in job order.
    pub fn definitions(&self) -> &[BuiltDefinition] {
        &self.definitions
    }

    /// The tree, parents before children, by path inside the archive.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(p, e)| (p.as_str(), e))
    }

    /// The bytes of file data in the tree.
    pub fn file_bytes(&self) -> u64 {
        self.bytes
    }

    /// The tree as a newc cpio archive, uncompressed.
    pub fn cpio(&self) -> Result<Vec<u8>, OverlayError> {
        archive::newc(self.entries())
    }

    /// The tree as a gzip'd newc cpio archive: what a kernel unpacks as an
    /// initramfs, on its own or after a ramdisk ([`append_to_ramdisk`]).
    pub fn cpio_gz(&self) -> Result<Vec<u8>, OverlayError> {
        archive::gzip(&self.cpio()?)
    }

    /// The tree as a gzip'd ustar archive (pax records for long names), for
    /// LAVA's `transfer_overlay`: the board downloads it and unpacks it
    /// with `tar -xzf - -C /`.
    pub fn tar_gz(&self) -> Result<Vec<u8>, OverlayError> {
        archive::gzip(&archive::ustar(self.entries())?)
    }
}

fn dir_entry(mtime: u64) -> Entry {
    Entry {
        mode: 0o755,
        mtime,
        kind: EntryKind::Dir,
    }
}

/// A definition's name becomes a directory and a shell word.
fn check_definition_name(name: &str) -> Result<(), OverlayError> {
    let invalid = |why| {
        Err(OverlayError::Invalid {
            what: "test definition name",
            value: name.to_owned(),
            why,
        })
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return invalid("may only use letters, digits, `-`, `_` and `.`");
    }
    if name == "lava" {
        return invalid("is reserved (as in LAVA)");
    }
    Ok(())
}

/// A git-repos destination is one name inside the definition's directory.
fn check_destination(d: &str) -> Result<(), OverlayError> {
    if d.is_empty() || d == "." || d == ".." || d.contains('/') || d.contains('\0') {
        return Err(OverlayError::Repo {
            destination: d.to_owned(),
            why: "a destination is one name inside the definition's directory",
        });
    }
    Ok(())
}

/// The shell goes on the `#!` line and into scripts as a quoted word.
fn check_shell(shell: &str) -> Result<(), OverlayError> {
    if !shell.starts_with('/') || shell.contains(|c: char| c.is_whitespace() || c == '\0') {
        return Err(OverlayError::Invalid {
            what: "shell",
            value: shell.to_owned(),
            why: "must be an absolute path without spaces",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inline(name: &str, steps: &[&str]) -> OverlayDefinition {
        OverlayDefinition {
            name: name.into(),
            source: None,
            yaml: None,
            testdef: Testdef {
                steps: steps.iter().map(|s| s.to_string()).collect(),
                ..Testdef::default()
            },
            parameters: vec![],
            skip_install: vec![],
            repos: vec![],
            signal_kmsg: false,
        }
    }

    #[test]
    fn layout_matches_lavas() {
        let job = OverlayJob::new(
            42,
            vec![
                vec![inline("smoke", &["true"]), inline("net", &["true"])],
                vec![inline("smoke", &["true"])],
            ],
        );
        let o = Overlay::build(&job).unwrap();
        let paths: Vec<&str> = o.entries().map(|(p, _)| p).collect();
        for p in [
            "lava-42",
            "lava-42/bin/lava-test-runner",
            "lava-42/bin/lava-test-case",
            "lava-42/bin/lava-test-case-attach",
            "lava-42/environment",
            "lava-42/0/lava-test-runner.conf",
            "lava-42/0/tests/0_smoke/run.sh",
            "lava-42/0/tests/0_smoke/uuid",
            "lava-42/0/tests/0_smoke/testdef.yaml",
            "lava-42/0/tests/1_net/run.sh",
            // Counted across the job, as LAVA does.
            "lava-42/1/tests/2_smoke/run.sh",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
        // Parents before children: the order cpio and the kernel need.
        for (i, p) in paths.iter().enumerate() {
            if let Some((parent, _)) = p.rsplit_once('/') {
                assert!(paths[..i].contains(&parent), "{p} before {parent}");
            }
        }
        let conf = o
            .entries
            .get("lava-42/0/lava-test-runner.conf")
            .map(|e| e.kind.clone());
        assert_eq!(
            conf,
            Some(EntryKind::File(b"tests/0_smoke\ntests/1_net\n".to_vec()))
        );
        assert_eq!(
            o.runner_command(1).as_deref(),
            Some("/lava-42/bin/lava-test-runner /lava-42/1")
        );
        assert_eq!(o.runner_command(2), None);
        assert_eq!(o.definitions()[2].uuid, "42_2");
        assert_eq!(o.definitions()[2].directory, "/lava-42/1/tests/2_smoke");
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", "a/b", "a b", "$(x)", "lava"] {
            let job = OverlayJob::new(1, vec![vec![inline(bad, &[])]]);
            assert!(Overlay::build(&job).is_err(), "{bad:?} accepted");
        }
        let mut job = OverlayJob::new(1, vec![]);
        job.shell = "sh".into();
        assert!(Overlay::build(&job).is_err());
    }

    #[test]
    fn install_parts_are_skipped_with_warnings() {
        let mut d = inline("x", &["true"]);
        d.testdef.install = Install {
            deps: vec!["curl".into()],
            steps: vec!["echo hi".into()],
            git_repos: vec![GitRepo {
                url: "https://example.org/r.git".into(),
                branch: None,
                destination: "r".into(),
            }],
            ..Install::default()
        };
        let o = Overlay::build(&OverlayJob::new(1, vec![vec![d.clone()]])).unwrap();
        let w = o.warnings().join("\n");
        assert!(w.contains("install `deps` skipped"), "{w}");
        assert!(w.contains("git-repos `https://example.org/r.git` was not fetched"));
        assert!(o.entries.contains_key("lava-1/0/tests/0_x/install.sh"));

        d.skip_install = vec!["all".into()];
        let o = Overlay::build(&OverlayJob::new(1, vec![vec![d]])).unwrap();
        assert!(o.warnings().is_empty(), "{:?}", o.warnings());
        assert!(!o.entries.contains_key("lava-1/0/tests/0_x/install.sh"));
    }

    #[test]
    fn a_source_is_copied_without_following_links() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("automated/linux")).unwrap();
        std::fs::write(src.path().join("automated/linux/t.sh"), "echo t\n").unwrap();
        std::fs::create_dir(src.path().join(".git")).unwrap();
        std::fs::write(src.path().join(".git/HEAD"), "ref\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.path().join("passwd")).unwrap();
        std::fs::write(src.path().join("run.sh"), "theirs\n").unwrap();
        let mut d = inline("x", &["true"]);
        d.source = Some(SourceDir {
            path: src.path().into(),
            include_git: false,
        });
        let o = Overlay::build(&OverlayJob::new(7, vec![vec![d]])).unwrap();
        let get = |p: &str| o.entries.get(&format!("lava-7/0/tests/0_x/{p}"));
        assert!(matches!(
            get("automated/linux/t.sh").map(|e| &e.kind),
            Some(EntryKind::File(d)) if d == b"echo t\n"
        ));
        assert_eq!(
            get("passwd").map(|e| &e.kind),
            Some(&EntryKind::Symlink("/etc/passwd".into()))
        );
        assert!(get(".git/HEAD").is_none());
        assert!(o
            .warnings()
            .iter()
            .any(|w| w.contains("`run.sh` is replaced")));
    }
}
