//! What labd does to a deployed ramdisk before the board loads it, and the
//! files of LAVA's `to: downloads`.
//!
//! In order, after the deploy has fetched its files: a ramdisk said to
//! have a U-Boot header (`header: u-boot`) is checked to have a sound one;
//! the deploy's `modules` (a tar of `lib/modules`) are appended to it as
//! one more gzip'd cpio archive, unless `install_modules: false`; the test
//! overlay is appended ([`super::overlay`], unless `install_overlay:
//! false`); last, a device type whose U-Boot takes ramdisks only in a
//! legacy image (`add_header: u-boot`) gets a bare one wrapped in a header.
//! Whether the result is in a legacy image decides how `{BOOTX}` passes it.
//!
//! Invariants: the deployed ramdisk is replaced by a new file renamed over
//! it, never written in place (it may be the artifact cache's blob); the
//! modules tar is never unpacked on the lab host, and is removed from the
//! job's directory once used, so the TFTP server never serves it; a
//! `downloads://` file is taken only from this job's downloads directory.

use super::{infra, Runner, Stop};
use crate::model::{ErrorClass, JobOutcome};
use std::path::{Path, PathBuf};

fn job_error(msg: String) -> Stop {
    Stop(JobOutcome::incomplete(ErrorClass::Job, msg))
}

/// Writes `bytes` as a new file and renames it over `path`: a deployed
/// ramdisk linked to the artifact cache's blob keeps the blob whole.
pub(super) fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("labd-tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

impl Runner {
    /// The deployed ramdisk's path on the lab host, if the job has one.
    fn ramdisk_path(&self) -> Option<PathBuf> {
        self.deployed
            .get("ramdisk")
            .map(|r| self.ctx.tftp.root.join(r))
    }

    /// A `downloads://` file of an earlier `to: downloads` deploy, linked
    /// (or copied, for a QEMU image the board may write) to `dst`; returns
    /// its size.
    pub(super) async fn take_download(
        &mut self,
        job_dir: &Path,
        file: &str,
        dst: &Path,
        placement: crate::deploy::Placement,
    ) -> Result<u64, Stop> {
        let top = job_dir.join("downloads");
        let file = file.trim_start_matches('/');
        let src = top.join(file);
        // The job's parser refused `..` and empty parts; a symbolic link
        // cannot be there either, as labd wrote every file in it.
        let meta = match tokio::fs::symlink_metadata(&src).await {
            Ok(m) if m.is_file() => m,
            _ => {
                let mut have = Vec::new();
                if let Ok(mut rd) = tokio::fs::read_dir(&top).await {
                    while let Ok(Some(e)) = rd.next_entry().await {
                        have.push(e.file_name().to_string_lossy().into_owned());
                    }
                }
                have.sort();
                let available = if have.is_empty() {
                    "no earlier `to: downloads` deploy fetched anything".to_owned()
                } else {
                    format!("available: {}", have.join(", "))
                };
                return Err(job_error(format!(
                    "downloads://{file}: no such download ({available})"
                )));
            }
        };
        let _ = tokio::fs::remove_file(dst).await;
        let linked = match placement {
            crate::deploy::Placement::Link => tokio::fs::hard_link(&src, dst).await,
            crate::deploy::Placement::Copy => tokio::fs::copy(&src, dst).await.map(|_| ()),
        };
        linked.map_err(|e| infra(format!("downloads://{file} to {}: {e}", dst.display())))?;
        Ok(meta.len())
    }

    /// Checks a `header: u-boot` ramdisk and appends the deploy's modules.
    pub(super) async fn prepare_ramdisk(&mut self, d: &crate::job::Deploy) -> Result<(), Stop> {
        let modules = self
            .deployed
            .remove("modules")
            .map(|m| self.ctx.tftp.root.join(m));
        let rd = self.ramdisk_path();
        let header = d.ramdisk_options.uboot_header;
        let install = d.ramdisk_options.install_modules;
        let Some(rd) = rd else {
            // The parser lets `modules` through without a ramdisk only for
            // an NFS root, which has taken them already.
            if let Some(m) = &modules {
                let _ = tokio::fs::remove_file(m).await;
            }
            return Ok(());
        };
        if header {
            let path = rd.clone();
            let checked = tokio::task::spawn_blocking(move || {
                let bytes = std::fs::read(&path)?;
                Ok::<_, std::io::Error>(crate::overlay::check_uimage_ramdisk(&bytes))
            })
            .await
            .map_err(|e| infra(format!("ramdisk: {e}")))?
            .map_err(|e| infra(format!("reading the ramdisk {}: {e}", rd.display())))?;
            match checked {
                Ok(true) => {}
                Ok(false) => {
                    return Err(job_error(
                        "deploy ramdisk: the job says `header: u-boot`, but the file is not a U-Boot legacy image (mkimage -T ramdisk)".into(),
                    ))
                }
                Err(e) => return Err(job_error(format!("deploy ramdisk: {e}"))),
            }
        }
        let Some(modules) = modules else {
            return Ok(());
        };
        if !install {
            let _ = tokio::fs::remove_file(&modules).await;
            self.event(
                "deploy",
                "modules: not added to the ramdisk (`install_modules: false`)",
            );
            return Ok(());
        }
        let started = std::time::Instant::now();
        let (m, r) = (modules.clone(), rd.clone());
        let done = tokio::task::spawn_blocking(move || {
            let io = |p: &Path| {
                let p = p.to_path_buf();
                move |source| crate::overlay::OverlayError::Io { path: p, source }
            };
            let tar = std::fs::File::open(&m).map_err(io(&m))?;
            let archive = crate::overlay::modules_cpio_gz(std::io::BufReader::new(tar))?;
            let user = std::fs::read(&r).map_err(io(&r))?;
            let both = crate::overlay::append_to_ramdisk(&user, &archive.cpio_gz)?;
            replace(&r, &both.bytes).map_err(io(&r))?;
            Ok::<_, crate::overlay::OverlayError>(archive)
        })
        .await
        .map_err(|e| infra(format!("modules: {e}")))?;
        let _ = tokio::fs::remove_file(&modules).await;
        let archive = done.map_err(|e| job_error(format!("deploy modules: {e}")))?;
        if !archive.skipped.is_empty() {
            self.event(
                "deploy-warning",
                &format!(
                    "modules: {} entries that are neither files, directories nor links left out: {}",
                    archive.skipped.len(),
                    archive.skipped.join(", ")
                ),
            );
        }
        self.event(
            "deploy",
            &format!(
                "modules: {} files ({} bytes) appended to the ramdisk as {} bytes gzip'd in {} ms",
                archive.files,
                archive.bytes,
                archive.cpio_gz.len(),
                started.elapsed().as_millis()
            ),
        );
        Ok(())
    }

    /// After the overlay: a bare ramdisk goes into a U-Boot legacy image
    /// when the device type says its U-Boot wants one, and whether the
    /// ramdisk is in one is noted for `{BOOTX}`.
    pub(super) async fn finish_ramdisk(&mut self) -> Result<(), Stop> {
        let Some(rd) = self.ramdisk_path() else {
            self.ramdisk_in_uimage = false;
            return Ok(());
        };
        let wrap = self
            .ctx
            .dt
            .bootloader
            .as_ref()
            .filter(|b| b.add_header.is_some())
            .and_then(|b| b.mkimage_arch.as_deref())
            .and_then(crate::device_type::uimage_arch);
        let path = rd.clone();
        let (in_uimage, wrapped) = tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&path)?;
            // A damaged header is found by U-Boot's own check; here it is
            // only whether there is one.
            let has = crate::overlay::check_uimage_ramdisk(&bytes).unwrap_or(true);
            match wrap {
                Some(arch) if !has => {
                    let image = crate::overlay::wrap_in_uimage(&bytes, arch, "labd ramdisk")
                        .map_err(std::io::Error::other)?;
                    replace(&path, &image)?;
                    Ok::<_, std::io::Error>((true, true))
                }
                _ => Ok((has, false)),
            }
        })
        .await
        .map_err(|e| infra(format!("ramdisk: {e}")))?
        .map_err(|e| infra(format!("ramdisk {}: {e}", rd.display())))?;
        if wrapped {
            self.event(
                "deploy",
                "ramdisk: put in a U-Boot legacy image, as the device type asks (`add_header: u-boot`)",
            );
        }
        self.ramdisk_in_uimage = in_uimage;
        Ok(())
    }
}
