//! Test definitions that run from files on the board: a job's `from: git`
//! definitions, delivered in LAVA's overlay (appended to its ramdisk, or
//! fetched by the booted board over HTTP with `transfer_overlay`, or
//! unpacked over ssh after a `to: ssh` deploy's ssh boot), and run there by
//! `lava-test-runner`.
//!
//! It exists because such definitions call their repository's scripts:
//! typing their steps on the shell, as labd does for inline definitions,
//! would run them without their files. At the deploy, each repository is
//! checked out through the lab's git cache into the job's directory, the
//! definition file at `path` is read there (only a regular file inside the
//! checkout), and the overlay ([`crate::overlay`]), which writes its
//! `params` defaults and then the job's `parameters` over them, is appended
//! to the deployed ramdisk; what it leaves out (an `install` section's
//! packages) is an `overlay-warning` event. At the test, one shell line runs the stage's
//! definitions; the results come from the signals their scripts print, each
//! case to the suite of the STARTRUN before it.
//!
//! Invariants: a test action with a `from: git` definition runs only from
//! the overlay (every definition of that action goes in it, inline ones
//! too); a definition that does not reach its ENDRUN fails the job (Test),
//! as on the typed path; a checkout never reads outside the job's
//! directory and the cache; the deployed ramdisk is replaced by a new
//! file, never written in place (it may be the artifact cache's blob).

use super::{infra, Runner, Stop};
use crate::job::{Action, DefinitionSource, Test};
use crate::model::{ErrorClass, JobOutcome};
use std::path::Path;

/// How many test definitions the job's test actions before `index` hold:
/// LAVA numbers definitions (`<n>_<name>`) across the whole job.
pub(super) fn definitions_before(actions: &[Action], index: usize) -> usize {
    actions[..index]
        .iter()
        .map(|a| match a {
            Action::Test(t) => t.definitions.len(),
            _ => 0,
        })
        .sum()
}

/// A definition's YAML file at `path` inside `dest` (a checkout or an
/// unpacked tarball, named `from` in an error): only a regular file
/// inside it, so that a symlink in the repository cannot make labd read
/// the lab host's files.
async fn read_definition(suite: &str, dest: &Path, path: &str, from: &str) -> Result<String, Stop> {
    let job_error = |msg: String| Stop(JobOutcome::incomplete(ErrorClass::Job, msg));
    let file = dest.join(path);
    let inside = std::fs::canonicalize(&file)
        .ok()
        .zip(std::fs::canonicalize(dest).ok())
        .is_some_and(|(f, d)| f.starts_with(d));
    let regular = std::fs::symlink_metadata(&file).is_ok_and(|m| m.file_type().is_file());
    if !inside || !regular {
        return Err(job_error(format!(
            "test definition {suite}: `{path}` is not a file in {from}"
        )));
    }
    tokio::fs::read_to_string(&file)
        .await
        .map_err(|e| job_error(format!("test definition {suite}: {path}: {e}")))
}

/// Whether a test action runs from the overlay.
pub(super) fn uses_overlay(t: &Test) -> bool {
    t.definitions.iter().any(|d| {
        matches!(
            d.source,
            DefinitionSource::Git(_) | DefinitionSource::Url(_)
        )
    })
}

impl Runner {
    /// Whether a test action runs from the overlay: one that needs its
    /// repository's files always, any other when the overlay reaches the
    /// board (see [`Runner::deliver_overlay`]).
    pub(super) fn runs_from_overlay(&self, t: &Test) -> bool {
        uses_overlay(t) || (self.inline_from_overlay && !t.definitions.is_empty())
    }

    /// After a deploy with a ramdisk: builds the overlay for every test
    /// action that needs it and appends it to the ramdisk.
    pub(super) async fn deliver_overlay(&mut self) -> Result<(), Stop> {
        use crate::overlay::{OverlayDefinition, OverlayJob, SourceDir, Testdef};
        let actions = self.ctx.def.actions.clone();
        // Every test action with definitions is a stage, as in LAVA, so
        // that stages and definitions are numbered as LAVA numbers them.
        let wanted: Vec<(usize, &Test)> = actions
            .iter()
            .enumerate()
            .filter_map(|(i, a)| match a {
                Action::Test(t) if !t.definitions.is_empty() => Some((i, t)),
                _ => None,
            })
            .collect();
        // A boot with `transfer_overlay` fetches the overlay itself;
        // otherwise it rides on the ramdisk, or in the NFS root.
        let transfer = actions
            .iter()
            .any(|a| matches!(a, Action::Boot(b) if b.transfer_overlay.is_some()));
        // A `to: ssh` deploy's overlay is unpacked over ssh after the boot.
        let ssh = actions
            .iter()
            .any(|a| matches!(a, Action::Deploy(d) if d.to_ssh));
        let transfer = transfer || ssh;
        // As LAVA: whenever the overlay reaches a board that runs on what
        // labd deployed, every test action runs from it, inline ones too;
        // otherwise only those that need their repository's files.
        let reaches = transfer
            || (self.ctx.dt.uses_deployed_root
                && ((self.deployed.contains_key("ramdisk")
                    && self.ramdisk_options.install_overlay)
                    || self.nfs_root.is_some()));
        self.inline_from_overlay = reaches;
        if !wanted.iter().any(|(_, t)| self.runs_from_overlay(t)) || !self.overlay_runs.is_empty() {
            return Ok(());
        }
        let ramdisk = self
            .deployed
            .get("ramdisk")
            .cloned()
            .filter(|_| self.ramdisk_options.install_overlay);
        // An NFS root takes the overlay into its tree, as LAVA's does.
        let nfsroot = self.nfs_root.is_some() && !transfer;
        if ramdisk.is_none() && !transfer && !nfsroot {
            let why = if self.deployed.contains_key("ramdisk") {
                "its ramdisk says `install_overlay: false`"
            } else {
                "this job has none of them"
            };
            return Err(Stop(JobOutcome::incomplete(
                ErrorClass::Job,
                format!("`from: git` test definitions reach the board in an overlay appended to the ramdisk, in its NFS root, or with `transfer_overlay`; {why}"),
            )));
        }
        let started = std::time::Instant::now();
        let job = self.ctx.job_id;
        let job_dir = self.ctx.tftp.root.join(job.to_string());
        let job_error = |msg: String| Stop(JobOutcome::incomplete(ErrorClass::Job, msg));
        let mut stages = Vec::new();
        for (stage, (_, t)) in wanted.iter().enumerate() {
            let mut defs = Vec::new();
            for (i, d) in t.definitions.iter().enumerate() {
                let parameters: Vec<(String, String)> = d
                    .parameters
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let def = match &d.source {
                    DefinitionSource::Inline => OverlayDefinition {
                        name: d.name.clone(),
                        source: None,
                        yaml: None,
                        testdef: Testdef {
                            name: Some(d.name.clone()),
                            steps: d.steps.clone(),
                            ..Testdef::default()
                        },
                        parameters,
                        skip_install: Vec::new(),
                        repos: Vec::new(),
                        signal_kmsg: d.signal_kmsg,
                    },
                    DefinitionSource::Url(u) => {
                        let dest = job_dir.join("defs").join(format!("{stage}_{i}"));
                        let yaml = self.fetch_url_definitions(&d.name, u, &dest).await?;
                        let source = SourceDir {
                            path: dest,
                            include_git: false,
                        };
                        let mut def =
                            OverlayDefinition::from_yaml(&d.name, Some(source), &yaml, parameters)
                                .map_err(|e| {
                                    job_error(format!(
                                        "test definition {} ({}): {e}",
                                        d.name, u.path
                                    ))
                                })?;
                        def.signal_kmsg = d.signal_kmsg;
                        def
                    }
                    DefinitionSource::Git(g) => {
                        let dest = job_dir.join("defs").join(format!("{stage}_{i}"));
                        let yaml = self.checkout(&d.name, g, &dest).await?;
                        let source = SourceDir {
                            path: dest,
                            include_git: g.history,
                        };
                        let mut def =
                            OverlayDefinition::from_yaml(&d.name, Some(source), &yaml, parameters)
                                .map_err(|e| {
                                    job_error(format!(
                                        "test definition {} ({}): {e}",
                                        d.name, g.path
                                    ))
                                })?;
                        def.signal_kmsg = d.signal_kmsg;
                        // LAVA clones a definition's `install: git-repos`
                        // on the dispatcher, into the overlay: through the
                        // lab's git cache here, as the definition's own.
                        let repos_dir = job_dir.join("defs").join(format!("{stage}_{i}_repos"));
                        for repo in def.testdef.install.git_repos.clone() {
                            let dest = repos_dir.join(&repo.destination);
                            self.fetch_install_repo(&d.name, &repo, &dest).await?;
                            def.repos.push((
                                repo.destination.clone(),
                                SourceDir {
                                    path: dest,
                                    include_git: true,
                                },
                            ));
                        }
                        def
                    }
                };
                defs.push(def);
            }
            stages.push(defs);
        }
        let rd = ramdisk
            .filter(|_| !transfer && !nfsroot)
            .map(|r| self.ctx.tftp.root.join(r));
        let mut overlay_job = OverlayJob::new(job, stages);
        overlay_job.secrets = self.ctx.def.secrets.clone();
        let built = tokio::task::spawn_blocking(move || {
            let overlay = crate::overlay::Overlay::build(&overlay_job)?;
            let Some(rd) = rd else {
                let tar = overlay.tar_gz()?;
                return Ok::<_, crate::overlay::OverlayError>((overlay, tar, None, false));
            };
            let gz = overlay.cpio_gz()?;
            let io = |path: &std::path::Path| {
                let path = path.to_path_buf();
                move |source| crate::overlay::OverlayError::Io { path, source }
            };
            let user = std::fs::read(&rd).map_err(io(&rd))?;
            let both = crate::overlay::append_to_ramdisk(&user, &gz)?;
            super::ramdisk::replace(&rd, &both.bytes).map_err(io(&rd))?;
            Ok((overlay, gz, Some(both.format), both.uboot_header))
        })
        .await
        .map_err(|e| infra(format!("overlay: {e}")))?;
        let (overlay, packed, format, uboot) = built.map_err(|e| infra(e.to_string()))?;
        let size = packed.len();
        for w in overlay.warnings() {
            self.event("overlay-warning", w);
        }
        for (stage, (index, t)) in wanted.iter().enumerate() {
            if !self.runs_from_overlay(t) {
                continue;
            }
            let Some(command) = overlay.runner_command(stage) else {
                continue;
            };
            let runs: Vec<String> = overlay
                .definitions()
                .iter()
                .filter(|b| b.stage == stage)
                .map(|b| b.testrun_id.clone())
                .collect();
            self.overlay_runs.insert(*index, (command, runs));
        }
        let whereto = match format {
            Some(f) => format!(
                "appended to the {f:?} ramdisk{}",
                if uboot {
                    " inside its U-Boot header"
                } else {
                    ""
                }
            ),
            None if nfsroot => {
                self.overlay_into_nfsroot(packed).await?;
                "unpacked into the NFS root".into()
            }
            None => {
                self.overlay_tar = Some(packed);
                if ssh {
                    "kept as a tarball to unpack over ssh".into()
                } else {
                    "kept as a tarball for transfer_overlay".into()
                }
            }
        };
        self.event(
            "overlay",
            &format!(
                "{}: {size} bytes gzip'd, {whereto} in {} ms",
                overlay.root(),
                started.elapsed().as_millis()
            ),
        );
        Ok(())
    }

    /// LAVA's `transfer_overlay` after a boot's login: the board fetches
    /// the overlay tarball from the lab's HTTP listener and unpacks it.
    pub(super) async fn transfer_overlay(
        &mut self,
        t: &crate::job::TransferOverlay,
    ) -> Result<(), Stop> {
        let Some(tar) = self.overlay_tar.clone() else {
            self.event(
                "overlay",
                "transfer_overlay: this job has no overlay to transfer",
            );
            return Ok(());
        };
        let Some(http) = self.ctx.tftp.overlay_http.clone() else {
            return Err(Stop(JobOutcome::incomplete(
                ErrorClass::Configuration,
                "transfer_overlay: this lab serves no overlays over HTTP ([deploy] overlay_http)",
            )));
        };
        let served = http.serve(tar);
        let url = format!(
            "http://{}:{}{}",
            self.ctx.tftp.server_ip,
            http.port(),
            served.path
        );
        self.overlay_served = Some(served);
        self.event(
            "overlay",
            &format!("transfer_overlay: the board fetches {url}"),
        );
        let limit = self.timeout("overlay-unpack", None);
        let (download, unpack) = (t.download_command.clone(), t.unpack_command.clone());
        self.bounded("overlay-unpack", limit, async move |r: &mut Self| {
            r.collecting = false;
            r.shell_step("rm -f overlay.tar.gz").await?;
            // A board that could not fetch or unpack its overlay is the
            // lab's failure (its network, its HTTP listener), not the test's.
            for line in [
                format!("{download} {url}"),
                format!("{unpack} overlay.tar.gz"),
            ] {
                let status = r.shell_step_status(&line).await?;
                if status != 0 {
                    let msg = format!("transfer_overlay: `{line}` exited with status {status}");
                    r.event("error", &msg);
                    return Err(infra(msg));
                }
            }
            Ok(())
        })
        .await
    }

    /// Checks a git definition out and reads its definition file's text.
    /// A checkout through the lab's git cache into `dest`, recorded as a
    /// `git` event; `what` names it in the event and in an error (`<suite>`
    /// or `<suite>: install git-repos`).
    async fn git_checkout(
        &mut self,
        what: &str,
        url: &str,
        revision: Option<&str>,
        branch: Option<&str>,
        history: bool,
        dest: &Path,
    ) -> Result<crate::git::Checkout, Stop> {
        let Some(cache) = self.ctx.tftp.git.clone() else {
            return Err(Stop(JobOutcome::incomplete(
                ErrorClass::Configuration,
                "this lab has no git cache for `from: git` definitions",
            )));
        };
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| infra(format!("creating {}: {e}", parent.display())))?;
        }
        let started = std::time::Instant::now();
        let got = cache
            .checkout(url, revision, branch, history, dest)
            .await
            .map_err(|e| {
                let msg = format!("test definition {what}: {e}");
                self.event("error", &msg);
                Stop(JobOutcome::incomplete(e.class(), msg))
            })?;
        self.event(
            "git",
            &format!(
                "{what}: {} at {}{} in {} ms",
                got.url,
                got.commit,
                if got.fetched {
                    ""
                } else {
                    " (from the git cache)"
                },
                started.elapsed().as_millis()
            ),
        );
        Ok(got)
    }

    /// One of a definition's `install: git-repos`, checked out (with its
    /// history, as LAVA clones it) into `dest`.
    async fn fetch_install_repo(
        &mut self,
        suite: &str,
        repo: &crate::overlay::GitRepo,
        dest: &Path,
    ) -> Result<(), Stop> {
        crate::git_url::check_url(&repo.url).map_err(|why| {
            Stop(JobOutcome::incomplete(
                ErrorClass::Job,
                format!(
                    "test definition {suite}: install git-repos `{}`: {why}",
                    repo.url
                ),
            ))
        })?;
        let what = format!("{suite}: install git-repos `{}`", repo.destination);
        self.git_checkout(&what, &repo.url, None, repo.branch.as_deref(), true, dest)
            .await?;
        Ok(())
    }

    async fn checkout(
        &mut self,
        suite: &str,
        g: &crate::job::GitDefinition,
        dest: &Path,
    ) -> Result<String, Stop> {
        let got = self
            .git_checkout(
                suite,
                &g.repository,
                g.revision.as_deref(),
                g.branch.as_deref(),
                g.history,
                dest,
            )
            .await?;
        read_definition(
            suite,
            dest,
            &g.path,
            &format!("{} at {}", got.url, got.commit),
        )
        .await
    }

    /// LAVA's `from: url`: the tarball fetched as any artifact (checked
    /// against the lab's file roots, bounded in size and time), unpacked
    /// confined into `dest` (nothing lands outside it; see
    /// [`crate::nfs::unpack`]) with `strip-components` leading directories
    /// dropped, and the definition file read there.
    async fn fetch_url_definitions(
        &mut self,
        suite: &str,
        u: &crate::job::UrlDefinition,
        dest: &Path,
    ) -> Result<String, Stop> {
        let job_error = |msg: String| Stop(JobOutcome::incomplete(ErrorClass::Job, msg));
        let started = std::time::Instant::now();
        let url = u.artifact.url.clone();
        let tarball = dest.with_extension("tar");
        let unpacked = dest.with_extension("unpacked");
        let (dst, tmp, target) = (tarball.clone(), unpacked.clone(), dest.to_path_buf());
        let compression = u.artifact.compression;
        let strip = u.strip_components;
        let max = self.ctx.tftp.max_artifact_bytes;
        let limit = self.timeout("tftp-deploy", None);
        let cache = self.ctx.tftp.cache.clone();
        let local = crate::deploy::LocalRights {
            who: self.ctx.reader.clone(),
            roots: self.ctx.tftp.file_roots.clone(),
        };
        let u2 = url.clone();
        let done = tokio::task::spawn_blocking(move || {
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            let mut progress = |_: u64, _: Option<u64>| {};
            crate::deploy::fetch(
                &u2,
                None,
                compression,
                &dst,
                max,
                limit,
                &mut progress,
                cache.as_deref(),
                crate::deploy::Placement::Link,
                &local,
            )
            .map_err(|e| e.to_string())?;
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
            let file = std::fs::File::open(&dst).map_err(|e| e.to_string())?;
            let mut used = 0;
            let r = crate::nfs::unpack(std::io::BufReader::new(file), &tmp, max, &mut used)
                .map_err(|e| e.to_string());
            let _ = std::fs::remove_file(&dst);
            r?;
            // LAVA's strip-components: each level must be one directory.
            let mut top = tmp.clone();
            for _ in 0..strip {
                let mut entries: Vec<_> = std::fs::read_dir(&top)
                    .map_err(|e| e.to_string())?
                    .filter_map(Result::ok)
                    .collect();
                match (entries.pop(), entries.is_empty()) {
                    (Some(only), true)
                        if only.file_type().is_ok_and(|t| t.is_dir()) =>
                    {
                        top = only.path()
                    }
                    _ => {
                        return Err(format!(
                            "strip-components {strip}: the tarball does not hold one directory at each level it strips"
                        ))
                    }
                }
            }
            std::fs::rename(&top, &target).map_err(|e| e.to_string())?;
            let _ = std::fs::remove_dir_all(&tmp);
            Ok::<_, String>(())
        })
        .await
        .map_err(|e| infra(format!("test definition {suite}: {e}")))?;
        done.map_err(|e| job_error(format!("test definition {suite}: {url}: {e}")))?;
        self.event(
            "deploy",
            &format!(
                "{suite}: definitions from {url} unpacked in {} ms",
                started.elapsed().as_millis()
            ),
        );
        read_definition(suite, dest, &u.path, &url).await
    }

    /// Runs a test action's definitions from the overlay: one line, whose
    /// signals give the results.
    pub(super) async fn test_from_overlay(&mut self, index: usize, t: &Test) -> Result<(), Stop> {
        let Some((command, runs)) = self.overlay_runs.get(&index).cloned() else {
            return Err(Stop(JobOutcome::incomplete(
                ErrorClass::Job,
                "`from: git` test definitions need a deploy with a ramdisk before them",
            )));
        };
        self.phase(super::Phase::Testing);
        let limit = self.timeout("lava-test-shell", t.timeout);
        let defs = t.definitions.clone();
        self.bounded("lava-test-shell", limit, async |r: &mut Self| {
            r.collecting = true;
            r.overlay_run = true;
            r.run_suite = None;
            // The overlay's names for the definitions, in order.
            r.expected.extend(
                runs.iter()
                    .zip(&defs)
                    .map(|(run, d)| (run.clone(), d.expected.clone())),
            );
            let ran = r.shell_step(&command).await;
            let taken = r.take_results("").await;
            r.overlay_run = false;
            ran?;
            taken?;
            for suite in &runs {
                if !r.ended_runs.contains(suite) {
                    let msg = format!("test definition {suite} did not reach its ENDRUN");
                    r.event("error", &msg);
                    return Err(Stop(JobOutcome::incomplete(ErrorClass::Test, msg)));
                }
                let missing = r.missing_expected(suite);
                r.record(missing).await?;
            }
            Ok(())
        })
        .await
    }
}
