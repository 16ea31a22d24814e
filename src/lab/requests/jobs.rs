//! Requests about jobs: `Submit`, `Cancel`, and the reads of job records.
//!
//! Invariants:
//! - A job is stored only once it is known to be runnable here: it parses,
//!   is within the size limit, a board that is not retired could run it, its
//!   boot methods suit its device type, and its submitter may read its
//!   `file://` artifacts. A refused job leaves nothing in the store.
//! - A submission is acknowledged only after the job is stored; it is
//!   queued in the same actor turn as the acknowledgement.
//! - Only an admin or the job's submitter may cancel it. A queued job is
//!   out of the queue while its cancel is written, and back in it if the
//!   write fails; a running job is marked Canceling before its board is
//!   told to stop it.

use super::{ready, Reply};
use crate::board::StopJob;
use crate::error::{ApiError, ErrorCode, Location};
use crate::job::{self, BootCommands, Diagnostic, JobDefinition};
use crate::lab::queue::Queued;
use crate::lab::schedule::JobView;
use crate::lab::{read_query, Caller, LabActor, LabReply, LabRequest};
use crate::local_file::{self, FileRefusal, FileRoots};
use crate::model::{BoardHealth, Identity, JobId, JobOutcome, JobRecord, JobState};
use actix::prelude::*;

impl LabActor {
    /// `Submit`: checks, stores and queues a job.
    pub(in crate::lab) fn submit(
        &mut self,
        definition: String,
        file: String,
        caller: Caller,
    ) -> Reply {
        self.submit_for(definition, file, caller, None)
    }

    /// Checks, stores and queues a job: a local one, or with `lava` a
    /// lava-server's for the board of its device (`lab::lava` chose it).
    pub(in crate::lab) fn submit_for(
        &mut self,
        definition: String,
        file: String,
        caller: Caller,
        lava: Option<crate::model::LavaJob>,
    ) -> Reply {
        if definition.len() > self.cfg.limits.max_job_bytes {
            return ready(Err(ApiError::new(
                ErrorCode::InvalidJob,
                format!(
                    "{file}: job definition is {} bytes; the limit is {}",
                    definition.len(),
                    self.cfg.limits.max_job_bytes
                ),
            )));
        }
        let parsed = match job::parse(&file, &definition) {
            Ok(p) => p,
            Err(e) => return ready(Err(e.into())),
        };
        let runnable = match &lava {
            None => self.check_runnable(&parsed.definition),
            Some(l) => self.check_lava_runnable(&parsed, l),
        };
        if let Err(e) = runnable {
            return ready(Err(e));
        }
        if let Err(e) = check_qemu_options(&parsed.qemu_options, &self.cfg.qemu) {
            return ready(Err(e));
        }
        // The text to store: with the secrets' values masked (checked
        // against the job as parsed, before its timeouts are capped).
        let masked = if parsed.definition.secrets.is_empty() {
            None
        } else {
            match job::mask_secrets(&file, &definition, &parsed) {
                Ok(m) => Some(m),
                Err(e) => return ready(Err(e.into())),
            }
        };
        let mut def = parsed.definition;
        let mut warnings = parsed.warnings;
        for (path, message) in def.cap_timeouts(&self.cfg.limits.timeout_maxima()) {
            warnings.push(Diagnostic {
                code: ErrorCode::InvalidJob,
                location: Location {
                    file: Some(file.clone()),
                    path: Some(path),
                    line: None,
                    column: None,
                },
                message,
            });
        }
        // The stored text never holds a secret's value: they are masked
        // there and kept sealed beside it.
        let (definition, sealed_secrets) = match masked {
            None => (definition, None),
            Some(masked) => {
                let key = match &self.secrets_key {
                    Ok(k) => k,
                    Err(e) => {
                        return ready(Err(ApiError::new(
                            ErrorCode::Unsupported,
                            format!("this lab cannot keep a job's secrets: {e}"),
                        )))
                    }
                };
                match key.seal(&def.secrets) {
                    Ok(sealed) => (masked, Some(sealed)),
                    Err(e) => return ready(Err(ApiError::new(ErrorCode::Internal, e.to_string()))),
                }
            }
        };
        // A lava-server's job has no local submitter: nobody here may
        // cancel it but an admin, and it reads no local file.
        let local = lava.is_none();
        let rec = JobRecord {
            submitter_uid: local.then_some(caller.uid),
            submitter_gid: local.then_some(caller.gid),
            submitter_groups: local.then(|| caller.groups.clone()),
            sealed_secrets,
            lava,
            ..JobRecord::submitted(
                def.job_name.clone(),
                def.device_type.clone(),
                def.priority,
                def.tags.clone(),
                caller.name,
                definition,
            )
        };
        let files = parsed.files;
        let reader = rec.reader();
        let roots = FileRoots::new(&self.cfg.deploy.file_roots);
        let store = self.store.clone();
        Box::pin(
            async move {
                if !files.is_empty() {
                    // Opening files may block (and runs with the
                    // submitter's rights on a thread of its own).
                    tokio::task::spawn_blocking(move || {
                        check_local_files(&files, reader.as_ref(), &roots)
                    })
                    .await
                    .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))??;
                }
                Ok::<_, ApiError>(store.insert_job(rec).await?)
            }
            .into_actor(self)
            .map(move |res, act, ctx| {
                let r = res?;
                act.metrics.job_submitted();
                act.enqueue(Queued::of(&r, def), ctx);
                act.schedule(ctx);
                Ok(LabReply::Submitted { id: r.id, warnings })
            }),
        )
    }

    /// `Cancel`: cancels a job, if the caller may.
    pub(in crate::lab) fn cancel(&mut self, job: JobId, caller: Caller) -> Reply {
        let store = self.store.clone();
        Box::pin(async move { store.job(job).await }.into_actor(self).then(
            move |r, act, _ctx| -> Reply {
                match r {
                    Err(e) => ready(Err(e.into())),
                    Ok(j) if !caller.may_cancel(&j) => ready(Err(
                        caller.denied(&format!("cancel job {job} of {}", j.submitter))
                    )),
                    Ok(_) => act.cancel_permitted(job),
                }
            },
        ))
    }

    /// `Jobs`, `Job`, `Results` and `LogSource`, should they reach the
    /// actor: answered from the store, as the server answers them.
    pub(in crate::lab) fn read(&mut self, req: LabRequest) -> Reply {
        let store = self.store.clone();
        Box::pin(async move { read_query(&store.reader(), req).await }.into_actor(self))
    }

    /// Cancels a job the caller may cancel: a queued one ends Canceled now,
    /// a running one is stopped by its board (which powers it off).
    fn cancel_permitted(&mut self, job: JobId) -> Reply {
        let store = self.store.clone();
        if let Some(pos) = self.queue.iter().position(|q| q.id == job) {
            let q = self.queue.remove(pos);
            return Box::pin(
                async move {
                    store
                        .update_job(job, |j| {
                            j.finish(JobOutcome::canceled("canceled before it started"));
                            Ok(())
                        })
                        .await?;
                    Ok::<_, ApiError>(())
                }
                .into_actor(self)
                .map(move |r, act, ctx| {
                    match &r {
                        // Nothing changed on disk: the job stays queued.
                        Err(_) => act.enqueue(q, ctx),
                        Ok(()) => act.metrics.job_finished("Canceled"),
                    }
                    r.map(|_| LabReply::Done)
                }),
            );
        }
        let running = self
            .boards
            .values()
            .find(|s| s.job == Some(job))
            .map(|s| s.addr.clone());
        Box::pin(
            async move {
                let Some(addr) = running else {
                    let j = store.job(job).await?;
                    return Err(ApiError::new(
                        ErrorCode::InvalidState,
                        format!("job {job} is {} {}; nothing to cancel", j.state, j.health),
                    ));
                };
                store
                    .update_job(job, |j| {
                        if j.state == JobState::Finished {
                            return Err("job already finished".into());
                        }
                        j.state = JobState::Canceling;
                        Ok(())
                    })
                    .await?;
                addr.do_send(StopJob {
                    id: job,
                    outcome: JobOutcome::canceled("canceled by request"),
                });
                Ok(LabReply::Done)
            }
            .into_actor(self),
        )
    }

    /// Refuses a job that no board of this lab could ever run.
    fn check_runnable(&self, def: &JobDefinition) -> Result<(), ApiError> {
        // A board's LAVA device configuration makes a device type of its
        // own, which `device_types` does not hold.
        let known = self.device_types.contains_key(&def.device_type)
            || self
                .boards
                .values()
                .any(|s| s.cfg.device_type == def.device_type);
        if !known {
            return Err(ApiError::new(
                ErrorCode::NoSuchDeviceType,
                format!("unknown device type `{}`", def.device_type),
            ));
        }
        let wants = JobView::of(def);
        let fitting: Vec<&crate::device_type::DeviceType> = self
            .boards
            .values()
            .filter(|s| {
                wants.fits(&s.cfg.device_type, &s.cfg.tags)
                    && s.health != BoardHealth::Retired
                    && s.cfg.lava_worker_device.is_none()
            })
            .map(|s| &s.dt)
            .collect();
        if fitting.is_empty() {
            self.refuse_lava_owned(&wants)?;
            return Err(ApiError::new(
                ErrorCode::NoSuchDeviceType,
                format!(
                    "no board of device type `{}` with tags {:?} in this lab",
                    def.device_type, def.tags
                ),
            ));
        }
        self.check_ssh(def)?;
        // Boards of one type may differ (each LAVA dictionary is its own):
        // the job is runnable if one of them can run it.
        let mut refused = None;
        for dt in fitting {
            match self.check_runnable_on(def, dt) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    refused.get_or_insert(e);
                }
            }
        }
        Err(refused.unwrap_or_else(|| {
            ApiError::new(ErrorCode::Internal, "no board was checked for this job")
        }))
    }

    /// Whether a board of device type `dt` can run the job.
    pub(in crate::lab) fn check_runnable_on(
        &self,
        def: &JobDefinition,
        dt: &crate::device_type::DeviceType,
    ) -> Result<(), ApiError> {
        let mut ramdisk_deployed = false;
        let mut transferred = false;
        // The last deploy's kernel and whether it said its type: a u-boot
        // boot's `{BOOTX}` and load addresses come from that type.
        let mut untyped_kernel = false;
        for a in &def.actions {
            if let job::Action::Deploy(d) = a {
                untyped_kernel = d.kernel.is_some() && d.kernel_type.is_none();
            }
            // A git definition's files reach the board in the overlay:
            // appended to a ramdisk, or fetched by the booted board
            // (`transfer_overlay`). A job with neither cannot run it.
            if let job::Action::Deploy(d) = a {
                ramdisk_deployed |= (d.ramdisk.is_some() && d.ramdisk_options.install_overlay)
                    || d.nfsrootfs.is_some();
                // An ssh device gets its overlay over ssh after the boot.
                transferred |= d.to_ssh;
            }
            if let Some(why) = needs_nfs(a) {
                if self.cfg.nfs.server.is_none() {
                    return Err(ApiError::new(
                        ErrorCode::Unsupported,
                        format!("{why} needs the lab's NFS server, which this lab does not run ([nfs] server)"),
                    ));
                }
            }
            if let job::Action::Boot(b) = a {
                if b.transfer_overlay.is_some() {
                    if self.cfg.deploy.overlay_http.is_none() {
                        return Err(ApiError::new(
                            ErrorCode::Unsupported,
                            "`transfer_overlay` needs the lab to serve overlays over HTTP ([deploy] overlay_http)",
                        ));
                    }
                    transferred = true;
                }
            }
            if let job::Action::Test(t) = a {
                if !ramdisk_deployed
                    && !transferred
                    && t.definitions.iter().any(|d| {
                        matches!(
                            d.source,
                            job::DefinitionSource::Git(_) | job::DefinitionSource::Url(_)
                        )
                    })
                {
                    return Err(ApiError::new(
                        ErrorCode::Unsupported,
                        "`from: git` test definitions reach the board in the overlay: appended to a ramdisk, or fetched after a boot with `transfer_overlay`; this job has neither before them, nor a `to: ssh` deploy (rootfs overlays are not supported yet)",
                    ));
                }
            }
            if let job::Action::Boot(b) = a {
                let reject = |m: String| Err(ApiError::new(ErrorCode::InvalidJob, m));
                match b.method {
                    job::BootMethod::UBoot | job::BootMethod::Bootloader
                        if dt.bootloader.is_none() =>
                    {
                        return reject(format!(
                            "device type `{}` has no bootloader; boot it with `method: minimal` or `qemu`",
                            dt.name
                        ))
                    }
                    job::BootMethod::Qemu if dt.direct_boot.is_none() => {
                        return reject(format!(
                            "device type `{}` cannot boot a kernel directly (no `direct_boot`); use `method: u-boot`",
                            dt.name
                        ))
                    }
                    _ => {}
                }
                let (commands, what) = match &b.commands {
                    BootCommands::Named(n) => {
                        match dt.bootloader.as_ref().and_then(|bl| bl.commands.get(n)) {
                            Some(c) => (
                                c.as_slice(),
                                format!("device type `{}`'s boot commands `{n}`", dt.name),
                            ),
                            None => {
                                return Err(ApiError::new(
                                    ErrorCode::InvalidJob,
                                    format!(
                                        "device type `{}` has no boot commands named `{n}`",
                                        dt.name
                                    ),
                                ))
                            }
                        }
                    }
                    BootCommands::Inline(c) => (c.as_slice(), "the job's boot commands".to_owned()),
                };
                if untyped_kernel && b.method == job::BootMethod::UBoot {
                    let by_type = ["{BOOTX}", "{KERNEL_ADDR}", "{RAMDISK_ADDR}", "{DTB_ADDR}"];
                    if let Some(p) = by_type
                        .iter()
                        .find(|p| commands.iter().any(|c| c.contains(**p)))
                    {
                        return reject(format!(
                            "the boot commands use {p}, which comes from the deploy's `kernel: type` (image, zimage or uimage); the job gives none"
                        ));
                    }
                }
                // LAVA's templates keep command sets for deploys labd does
                // not have (`usb`'s {ROOT_PART}, `nbd`'s {NBDSERVERIP}).
                if let Some((i, ph)) = crate::device_type::unfillable(commands) {
                    return Err(ApiError::new(
                        ErrorCode::Unsupported,
                        format!(
                            "{what} use {ph} (command {}: `{}`), which labd cannot fill",
                            i + 1,
                            commands[i]
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Refuses a job whose boards and boots do not go together: an ssh
    /// deploy or boot needs a board reached over ssh, and such a board
    /// boots with `method: ssh` only. Every board the job could be given
    /// must suit it, so the scheduler cannot place it wrong; the error
    /// names the first that does not.
    fn check_ssh(&self, def: &JobDefinition) -> Result<(), ApiError> {
        let wants = JobView::of(def);
        let boots: Vec<&job::Boot> = def
            .actions
            .iter()
            .filter_map(|a| match a {
                job::Action::Boot(b) => Some(b),
                _ => None,
            })
            .collect();
        let ssh_job = boots.iter().any(|b| b.method == job::BootMethod::Ssh)
            || def
                .actions
                .iter()
                .any(|a| matches!(a, job::Action::Deploy(d) if d.to_ssh));
        let other_boot = boots
            .iter()
            .find(|b| b.method != job::BootMethod::Ssh)
            .map(|b| b.method);
        let refuse = |m: String| Err(ApiError::new(ErrorCode::InvalidJob, m));
        for s in self.boards.values() {
            if !wants.fits(&s.cfg.device_type, &s.cfg.tags) || s.health == BoardHealth::Retired {
                continue;
            }
            let over_ssh = matches!(s.cfg.console, crate::config::ConsoleConfig::Ssh { .. });
            if ssh_job && !over_ssh {
                return refuse(format!(
                    "`deploy: to: ssh` and `boot: method: ssh` need a board reached over ssh (console `ssh`); board `{}` (device type `{}`) has a `{}` console",
                    s.cfg.name,
                    s.cfg.device_type,
                    s.cfg.console.kind()
                ));
            }
            if let (Some(method), true) = (other_boot, over_ssh) {
                return refuse(format!(
                    "board `{}` (device type `{}`) is reached over ssh: it boots with `method: ssh` only, not `{}`",
                    s.cfg.name,
                    s.cfg.device_type,
                    method.as_str()
                ));
            }
        }
        Ok(())
    }
}

/// Refuses a job that gives QEMU an option outside labd's default
/// allow-list the lab has not allowed (`[qemu] extra_allowed_options`),
/// naming where the job gives it. The parser already refused every option
/// that reaches the host.
fn check_qemu_options(
    options: &[(Location, String)],
    policy: &crate::config::QemuConfig,
) -> Result<(), ApiError> {
    match options.iter().find(|(_, o)| !policy.allows(o)) {
        None => Ok(()),
        Some((at, o)) => Err(ApiError {
            code: ErrorCode::Unsupported,
            message: format!(
                "{at}: `{o}` is not a QEMU option this lab lets jobs use (labd's defaults, and `[qemu] extra_allowed_options`)"
            ),
            location: Some(at.clone()),
        }),
    }
}

/// Refuses a job whose `file://` artifacts its submitter may not have
/// deployed (see [`crate::local_file`]), naming the first one's key path.
fn check_local_files(
    files: &[(Location, String)],
    reader: Option<&Identity>,
    roots: &FileRoots,
) -> Result<(), ApiError> {
    for (at, path) in files {
        if let Err(e) = local_file::open(path, reader, roots) {
            // A file not there yet may be by the time the job runs (a build
            // still writing it): its deploy checks everything again.
            if matches!(&e, FileRefusal::Unreadable { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
            {
                continue;
            }
            let code = match e {
                FileRefusal::NoRoots { .. }
                | FileRefusal::OutsideRoots { .. }
                | FileRefusal::Unreadable { .. }
                | FileRefusal::NotPublic { .. } => ErrorCode::PermissionDenied,
                FileRefusal::NotRegular { .. }
                | FileRefusal::KernelFs { .. }
                | FileRefusal::Raced { .. } => ErrorCode::InvalidJob,
            };
            return Err(ApiError {
                code,
                message: format!("{at}: {e}"),
                location: Some(at.clone()),
            });
        }
    }
    Ok(())
}

/// What in an action needs the lab's NFS server, if anything.
fn needs_nfs(a: &job::Action) -> Option<&'static str> {
    match a {
        job::Action::Deploy(d) if d.nfsrootfs.is_some() => Some("`nfsrootfs`"),
        job::Action::Boot(b) if b.commands == job::BootCommands::Named("nfs".into()) => {
            Some("`commands: nfs`")
        }
        _ => None,
    }
}
