//! Test definitions that run from files on the board: a job's `from: git`
//! definitions, delivered in LAVA's overlay appended to its ramdisk, and
//! run there by `lava-test-runner`.
//!
//! It exists because such definitions call their repository's scripts:
//! typing their steps on the shell, as labd does for inline definitions,
//! would run them without their files. At the deploy, each repository is
//! checked out through the lab's git cache into the job's directory, the
//! definition file at `path` is read there (only a regular file inside the
//! checkout), its `params` defaults are taken, then the job's `parameters`
//! over them, and the overlay ([`crate::overlay`]) is appended to the
//! deployed ramdisk. At the test, one shell line runs the stage's
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
use std::collections::BTreeMap;
use std::path::Path;

/// Whether a test action runs from the overlay.
pub(super) fn uses_overlay(t: &Test) -> bool {
    t.definitions
        .iter()
        .any(|d| matches!(d.source, DefinitionSource::Git(_)))
}

impl Runner {
    /// After a deploy with a ramdisk: builds the overlay for every test
    /// action that needs it and appends it to the ramdisk.
    pub(super) async fn deliver_overlay(&mut self) -> Result<(), Stop> {
        let actions = self.ctx.def.actions.clone();
        let wanted: Vec<(usize, &Test)> = actions
            .iter()
            .enumerate()
            .filter_map(|(i, a)| match a {
                Action::Test(t) if uses_overlay(t) => Some((i, t)),
                _ => None,
            })
            .collect();
        if wanted.is_empty() || !self.overlay_stages.is_empty() {
            return Ok(());
        }
        let Some(ramdisk) = self.deployed.get("ramdisk").cloned() else {
            return Err(Stop(JobOutcome::incomplete(
                ErrorClass::Job,
                "`from: git` test definitions reach the board in an overlay appended to the ramdisk; this job's deploy has no ramdisk",
            )));
        };
        let started = std::time::Instant::now();
        let job = self.ctx.job_id;
        let job_dir = self.ctx.tftp.root.join(job.to_string());
        let mut stages = Vec::new();
        for (stage, (index, t)) in wanted.iter().enumerate() {
            let mut defs = Vec::new();
            for (i, d) in t.definitions.iter().enumerate() {
                let suite = format!("{i}_{}", d.name);
                let uuid = format!("{job}_{stage}.{i}");
                let mut params: Vec<(String, String)> = Vec::new();
                let (files, steps) = match &d.source {
                    DefinitionSource::Inline => (None, d.steps.clone()),
                    DefinitionSource::Git(g) => {
                        let dest = job_dir.join("defs").join(format!("{stage}_{i}"));
                        let (steps, defaults) = self.checkout(&suite, g, &dest).await?;
                        params.extend(defaults);
                        (Some(dest), steps)
                    }
                };
                // The job's parameters go after the definition's defaults,
                // so that they win, as LAVA's do.
                params.extend(d.parameters.iter().map(|(k, v)| (k.clone(), v.clone())));
                defs.push(crate::overlay::Definition {
                    suite,
                    files,
                    steps,
                    params,
                    uuid,
                });
            }
            self.overlay_stages.insert(*index, stage);
            stages.push(defs);
        }
        let rd = self.ctx.tftp.root.join(&ramdisk);
        let built = tokio::task::spawn_blocking(move || {
            let tree = crate::overlay::build(job, &stages)?;
            let files = tree.len();
            let gz = crate::overlay::cpio_gz(&tree)?;
            let size = gz.len();
            crate::overlay::append_to_ramdisk(&rd, &gz, &rd)?;
            Ok::<_, crate::overlay::OverlayError>((files, size))
        })
        .await
        .map_err(|e| infra(format!("overlay: {e}")))?;
        let (files, size) = built.map_err(|e| infra(e.to_string()))?;
        self.event(
            "overlay",
            &format!(
                "/lava-{job}: {files} entries, {size} bytes gzip'd, appended to the ramdisk in {} ms",
                started.elapsed().as_millis()
            ),
        );
        Ok(())
    }

    /// Checks a git definition out and reads its definition file: its
    /// steps and its parameters' defaults.
    async fn checkout(
        &mut self,
        suite: &str,
        g: &crate::job::GitDefinition,
        dest: &Path,
    ) -> Result<(Vec<String>, Vec<(String, String)>), Stop> {
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
            .checkout(
                &g.repository,
                g.revision.as_deref(),
                g.branch.as_deref(),
                g.history,
                dest,
            )
            .await
            .map_err(|e| {
                let msg = format!("test definition {suite}: {e}");
                self.event("error", &msg);
                Stop(JobOutcome::incomplete(e.class(), msg))
            })?;
        self.event(
            "git",
            &format!(
                "{suite}: {} at {}{} in {} ms",
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
        let file = dest.join(&g.path);
        let job_error = |msg: String| Stop(JobOutcome::incomplete(ErrorClass::Job, msg));
        // Only a regular file inside the checkout: a symlink in the
        // repository must not make labd read the lab host's files.
        let inside = std::fs::canonicalize(&file)
            .ok()
            .zip(std::fs::canonicalize(dest).ok())
            .is_some_and(|(f, d)| f.starts_with(d));
        let regular = std::fs::symlink_metadata(&file).is_ok_and(|m| m.file_type().is_file());
        if !inside || !regular {
            return Err(job_error(format!(
                "test definition {suite}: `{}` is not a file in {} at {}",
                g.path, got.url, got.commit
            )));
        }
        let text = tokio::fs::read_to_string(&file)
            .await
            .map_err(|e| job_error(format!("test definition {suite}: {}: {e}", g.path)))?;
        let parsed = crate::job::parse_definition_file(&g.path, &text)
            .map_err(|e| job_error(format!("test definition {suite}: {}", e.first())))?;
        if !parsed.install.is_empty() {
            self.event(
                "install-skipped",
                &format!(
                    "{suite}: `install: {}` is not run: labd installs no packages on the board",
                    parsed.install.join(", ")
                ),
            );
        }
        Ok((parsed.steps, parsed.params.into_iter().collect()))
    }

    /// Runs a test action's definitions from the overlay: one line, whose
    /// signals give the results.
    pub(super) async fn test_from_overlay(&mut self, index: usize, t: &Test) -> Result<(), Stop> {
        let Some(stage) = self.overlay_stages.get(&index).copied() else {
            return Err(Stop(JobOutcome::incomplete(
                ErrorClass::Job,
                "`from: git` test definitions need a deploy with a ramdisk before them",
            )));
        };
        self.phase(super::Phase::Testing);
        let limit = self.timeout("lava-test-shell", t.timeout);
        let job = self.ctx.job_id;
        let defs = t.definitions.clone();
        self.bounded("lava-test-shell", limit, async |r: &mut Self| {
            r.collecting = true;
            r.overlay_run = true;
            r.run_suite = None;
            r.overlay_expected = defs
                .iter()
                .enumerate()
                .map(|(i, d)| (format!("{i}_{}", d.name), d.expected.clone()))
                .collect();
            let ran = r
                .shell_step(&format!(
                    "/lava-{job}/bin/lava-test-runner /lava-{job}/{stage}"
                ))
                .await;
            let taken = r.take_results("").await;
            r.overlay_run = false;
            ran?;
            taken?;
            let by_suite = std::mem::take(&mut r.overlay_expected);
            for (suite, expected) in &by_suite {
                if !r.ended_runs.contains(suite) {
                    let msg = format!("test definition {suite} did not reach its ENDRUN");
                    r.event("error", &msg);
                    return Err(Stop(JobOutcome::incomplete(ErrorClass::Test, msg)));
                }
                let reported: BTreeMap<String, &'static str> = r
                    .overlay_reported
                    .iter()
                    .filter(|((s, _), _)| s == suite)
                    .map(|((_, c), v)| (c.clone(), *v))
                    .collect();
                let missing =
                    super::interactive::missing_expected(suite, expected.as_deref(), &reported);
                r.record(missing).await?;
            }
            Ok(())
        })
        .await
    }
}
