//! A job's NFS root: its `nfsrootfs` fetched (checked and decompressed as
//! any artifact), unpacked into the job's own tree under `[nfs] dir`, given
//! the job's overlay (by [`Runner::deliver_overlay`]), then exported for
//! the job alone; `{NFS_SERVER_IP}` and `{NFSROOTFS}` name it in the boot
//! commands.
//!
//! It exists because LAVA's NFS jobs boot a board whose root is served by
//! the dispatcher. The export and the tree are removed by the board actor
//! after the power-off ([`crate::nfs::NfsServer::remove`]), whatever ended
//! the job.
//!
//! Invariants: nothing is exported before the whole tree (and its overlay)
//! is in place; a tarball that would write outside its tree is refused as
//! the job's error, naming the entry; a command naming `{NFSROOTFS}` is
//! never sent without an export.

use super::{infra, Runner, Stop};
use crate::model::{ErrorClass, JobOutcome};
use std::time::Duration;

fn job_error(msg: String) -> Stop {
    Stop(JobOutcome::incomplete(ErrorClass::Job, msg))
}

impl Runner {
    /// Fetches and unpacks the deploy's `nfsrootfs` into the job's tree.
    pub(super) async fn unpack_nfsroot(
        &mut self,
        n: &crate::job::NfsRootfs,
        limit: Duration,
    ) -> Result<(), Stop> {
        let Some(nfs) = self.ctx.tftp.nfs.clone() else {
            return Err(Stop(JobOutcome::incomplete(
                ErrorClass::Configuration,
                "nfsrootfs: this lab runs no NFS server ([nfs] server)",
            )));
        };
        let job = self.ctx.job_id;
        // A second deploy with a root replaces the first: its export goes
        // before its tree is emptied.
        self.nfs_root = None;
        self.nfs_kernel_arg = None;
        if self.nfs_export.take().is_some() {
            nfs.remove(job)
                .await
                .map_err(|e| infra(format!("nfsrootfs: {e}")))?;
        }
        let started = std::time::Instant::now();
        let url = n.artifact.url.clone();
        self.event("deploy", &format!("nfsrootfs: fetching {url}"));
        let (sha, comp) = (n.artifact.sha256.clone(), n.artifact.compression);
        let cache = self.ctx.tftp.cache.clone();
        let local = crate::deploy::LocalRights {
            who: self.ctx.reader.clone(),
            roots: self.ctx.tftp.file_roots.clone(),
        };
        let store = self.ctx.store.clone();
        let prefix = n.prefix.clone();
        let max = nfs.max_unpacked_bytes();
        // LAVA unpacks a deploy's `modules` into the NFS root too.
        let modules = self
            .deployed
            .get("modules")
            .map(|m| self.ctx.tftp.root.join(m));
        let work = tokio::task::spawn_blocking(move || {
            let root = nfs
                .prepare(job)
                .map_err(|e| infra(format!("nfsrootfs: {e}")))?;
            let tarball = nfs.tarball(job);
            let mut progress = |read: u64, _total: Option<u64>| {
                let msg = format!("nfsrootfs: {:.1} MB", read as f64 / 1e6);
                store.record_event(job, crate::model::JobEvent::now("deploy-progress", &msg));
            };
            let fetched = crate::deploy::fetch(
                &url,
                sha.as_deref(),
                comp,
                &tarball,
                max,
                limit,
                &mut progress,
                cache.as_deref(),
                crate::deploy::Placement::Link,
                &local,
            )
            .map_err(|e| job_error(format!("deploy nfsrootfs: {e}")))?;
            let file = std::fs::File::open(&tarball)
                .map_err(|e| infra(format!("nfsrootfs: {}: {e}", tarball.display())))?;
            let mut used = 0;
            let unpacked = crate::nfs::unpack(std::io::BufReader::new(file), &root, max, &mut used)
                .map_err(|e| job_error(format!("deploy nfsrootfs: {e}")));
            // The tarball is not needed once unpacked (it may be the
            // artifact cache's blob, linked: only the link goes).
            let _ = std::fs::remove_file(&tarball);
            let unpacked = unpacked?;
            let served = crate::nfs::prefixed(&root, prefix.as_deref())
                .map_err(|e| job_error(format!("deploy nfsrootfs: {e}")))?;
            let modules = match modules {
                Some(m) => {
                    let file = std::fs::File::open(&m)
                        .map_err(|e| infra(format!("modules: {}: {e}", m.display())))?;
                    let u =
                        crate::nfs::unpack(std::io::BufReader::new(file), &served, max, &mut used)
                            .map_err(|e| job_error(format!("deploy modules: {e}")))?;
                    Some(u)
                }
                None => None,
            };
            Ok::<_, Stop>((fetched, unpacked, served, used, modules))
        });
        let (fetched, unpacked, served, used, modules) = work
            .await
            .map_err(|e| infra(format!("deploy nfsrootfs: {e}")))??;
        self.event(
            "deploy",
            &format!(
                "nfsrootfs: {} ({} bytes{}) unpacked: {} entries, {} bytes{} in {} ms",
                n.artifact.url,
                fetched.read,
                if fetched.cached {
                    ", from the artifact cache"
                } else {
                    ""
                },
                unpacked.entries,
                unpacked.bytes,
                if unpacked.skipped_nodes > 0 {
                    format!(
                        " ({} device nodes left out: labd is not root)",
                        unpacked.skipped_nodes
                    )
                } else {
                    String::new()
                },
                started.elapsed().as_millis()
            ),
        );
        if let Some(m) = modules {
            self.event(
                "deploy",
                &format!(
                    "modules: {} entries, {} bytes unpacked into the NFS root",
                    m.entries, m.bytes
                ),
            );
        }
        self.nfs_root = Some((served, used));
        self.nfs_kernel_arg = n.kernel_arg.clone();
        Ok(())
    }

    /// The kernel command line of a `qemu-nfs` boot: the device type's,
    /// then the root on NFS as LAVA's QEMU device types give it.
    pub(super) fn nfs_append(&self, base: &str) -> Result<String, Stop> {
        let Some(arg) = &self.nfs_kernel_arg else {
            return Ok(base.to_owned());
        };
        Ok(format!(
            "{base} root=/dev/nfs rw {} ip=dhcp",
            self.substitute_nfs(arg)?
        ))
    }

    /// Unpacks the job's overlay (a tar.gz) into its NFS root, confined to
    /// it as the root filesystem itself was.
    pub(super) async fn overlay_into_nfsroot(&mut self, tar_gz: Vec<u8>) -> Result<(), Stop> {
        let Some((root, used)) = self.nfs_root.clone() else {
            return Err(infra("overlay: no NFS root to put it in"));
        };
        let Some(nfs) = self.ctx.tftp.nfs.clone() else {
            return Err(infra("overlay: this lab runs no NFS server"));
        };
        let max = nfs.max_unpacked_bytes();
        let r = tokio::task::spawn_blocking(move || {
            let mut used = used;
            crate::nfs::unpack(
                flate2::read::GzDecoder::new(&tar_gz[..]),
                &root,
                max,
                &mut used,
            )
            .map(|_| used)
        })
        .await
        .map_err(|e| infra(format!("overlay: {e}")))?;
        let used = r.map_err(|e| job_error(format!("overlay into the NFS root: {e}")))?;
        if let Some(r) = self.nfs_root.as_mut() {
            r.1 = used;
        }
        Ok(())
    }

    /// Exports the job's NFS root; `{NFSROOTFS}` is its path from then on.
    pub(super) async fn export_nfsroot(&mut self) -> Result<(), Stop> {
        let (Some((root, _)), Some(nfs)) = (self.nfs_root.clone(), self.ctx.tftp.nfs.clone())
        else {
            return Ok(());
        };
        let path = nfs
            .export(self.ctx.job_id, &root)
            .await
            .map_err(|e| infra(format!("nfsrootfs: {e}")))?;
        self.event(
            "nfs",
            &format!("exported {}:{path} for this job", nfs.server_ip()),
        );
        self.nfs_export = Some(path);
        Ok(())
    }

    /// Fills in `{NFS_SERVER_IP}` and `{NFSROOTFS}`; a command naming the
    /// root of a job that has none is the job's error.
    pub(super) fn substitute_nfs(&self, cmd: &str) -> Result<String, Stop> {
        if !cmd.contains("{NFSROOTFS}") && !cmd.contains("{NFS_SERVER_IP}") {
            return Ok(cmd.to_owned());
        }
        let (Some(path), Some(nfs)) = (&self.nfs_export, &self.ctx.tftp.nfs) else {
            return Err(job_error(format!(
                "`{cmd}` names the NFS root, but no deploy before it has an `nfsrootfs`"
            )));
        };
        Ok(cmd
            .replace("{NFS_SERVER_IP}", nfs.server_ip())
            .replace("{NFSROOTFS}", path))
    }
}
