//! Deploying artifacts over HTTP: a gz kernel checked against its sha256sum,
//! a plain ramdisk, an xz kernel, the artifact cache (a hit by content
//! without asking the server, a hit by a 304 to a conditional GET), and the
//! errors a lab sees (a wrong checksum, a 404).

mod common;

use common::*;
use sha2::Digest;
use std::io::Write;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

type Requests = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Serves the files of `dir` over HTTP/1.1 on loopback, 404 for the rest,
/// with an ETag (the content's sha256) honoured in `If-None-Match`. Each
/// request is noted as `GET /path` or `GET /path (304)`.
async fn http_server(dir: std::path::PathBuf) -> (u16, Requests) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let requests = Requests::default();
    let seen = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let (dir, seen) = (dir.clone(), seen.clone());
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = tokio::io::BufReader::new(r);
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                let mut if_none_match = None;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).await.unwrap() == 0 || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        if k.eq_ignore_ascii_case("if-none-match") {
                            if_none_match = Some(v.trim().to_owned());
                        }
                    }
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                match std::fs::read(dir.join(path.trim_start_matches('/'))) {
                    Ok(body) => {
                        let etag = format!("\"{}\"", sha256_hex(&body));
                        if if_none_match.as_deref() == Some(etag.as_str()) {
                            seen.lock().unwrap().push(format!("GET {path} (304)"));
                            let _ = w
                                .write_all(format!("HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nConnection: close\r\n\r\n").as_bytes())
                                .await;
                            return;
                        }
                        seen.lock().unwrap().push(format!("GET {path}"));
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: {etag}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = w.write_all(head.as_bytes()).await;
                        let _ = w.write_all(&body).await;
                    }
                    Err(_) => {
                        seen.lock().unwrap().push(format!("GET {path}"));
                        let _ = w
                            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                            .await;
                    }
                }
            });
        }
    });
    (port, requests)
}

fn sha256_hex(b: &[u8]) -> String {
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[test]
fn http_artifacts_are_fetched_checked_and_decompressed() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let www = lab.dir.path().join("www");
        std::fs::create_dir_all(&www).unwrap();
        let kernel = vec![0x41u8; 300_000];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&kernel).unwrap();
        let gz = gz.finish().unwrap();
        std::fs::write(www.join("Image.gz"), &gz).unwrap();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut std::io::Cursor::new(&kernel), &mut xz).unwrap();
        std::fs::write(www.join("Image.xz"), &xz).unwrap();
        std::fs::write(www.join("rootfs.cpio.gz"), vec![0x1fu8; 100_000]).unwrap();
        let (port, requests) = http_server(www).await;
        let base = format!("http://127.0.0.1:{port}");
        let job_text_as = |kernel_url: &str, sum: &str, compression: &str| {
            lab.job("http", "medium", &["lava-test-case t --shell true"])
                .replacen(
                    &format!("      url: file://{}/Image\n", lab.artifacts().display()),
                    &format!(
                        "      url: {kernel_url}\n      compression: {compression}\n      sha256sum: {sum}\n"
                    ),
                    1,
                )
                .replacen(
                    &format!(
                        "      url: file://{}/rootfs.cpio.gz\n",
                        lab.artifacts().display()
                    ),
                    &format!("      url: {base}/rootfs.cpio.gz\n"),
                    1,
                )
        };
        let job_text = |kernel_url: &str, sum: &str| job_text_as(kernel_url, sum, "gz");
        let mut c = lab.client().await;

        let good = job_text(&format!("{base}/Image.gz"), &sha256_hex(&gz));
        assert!(good.contains("compression: gz"), "{good}");
        let id = submit(&mut c, &good).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete", "{log}");
        // The board got the kernel decompressed.
        assert!(log.contains("Bytes transferred = 300000"), "{log}");
        // Progress of each download is in the job's events.
        let j = job(&mut c, id).await;
        let progress: Vec<&str> = j["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "deploy-progress")
            .map(|e| e["message"].as_str().unwrap())
            .collect();
        assert!(
            progress.iter().any(|m| m.starts_with("kernel:") && m.ends_with("(100%)")),
            "{progress:?}"
        );

        assert_eq!(
            *requests.lock().unwrap(),
            ["GET /Image.gz", "GET /rootfs.cpio.gz"]
        );
        let from_cache = |j: &serde_json::Value| -> Vec<String> {
            j["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["kind"] == "deploy")
                .filter_map(|e| e["message"].as_str())
                .filter(|m| m.contains("from the artifact cache"))
                .map(|m| m.split(':').next().unwrap().to_owned())
                .collect()
        };
        assert!(from_cache(&j).is_empty());

        // The same job again: the kernel's sha256sum names a cached blob, so
        // the server is not asked; the ramdisk has none, so the server is
        // asked whether it changed (304) and the cached copy is used.
        requests.lock().unwrap().clear();
        let id = submit(&mut c, &good).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete", "{log}");
        assert!(log.contains("Bytes transferred = 300000"), "{log}");
        assert_eq!(*requests.lock().unwrap(), ["GET /rootfs.cpio.gz (304)"]);
        assert_eq!(from_cache(&job(&mut c, id).await), ["kernel", "ramdisk"]);
        requests.lock().unwrap().clear();

        // The same kernel xz-compressed.
        let xz_job = job_text_as(&format!("{base}/Image.xz"), &sha256_hex(&xz), "xz");
        let id = submit(&mut c, &xz_job).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete", "{log}");
        assert!(log.contains("Bytes transferred = 300000"), "{log}");

        let wrong = job_text(&format!("{base}/Image.gz"), &"0".repeat(64));
        let id = submit(&mut c, &wrong).await;
        let (end, _) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Incomplete");
        let j = job(&mut c, id).await;
        assert_eq!(j["error_class"], "Job");
        let e = j["error"].as_str().unwrap();
        assert!(
            e.starts_with("deploy kernel:") && e.contains("sha256 mismatch"),
            "{e}"
        );

        // (With the cached kernel's sha256sum this job would be served from
        // the cache whatever its URL: the checksum names the bytes.)
        let missing = job_text(&format!("{base}/nope.gz"), &sha256_hex(b"not cached"));
        let id = submit(&mut c, &missing).await;
        let (end, _) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Incomplete");
        let j = job(&mut c, id).await;
        assert_eq!(j["error_class"], "Job");
        let e = j["error"].as_str().unwrap();
        assert!(e.contains("nope.gz") && e.contains("404"), "{e}");
    });
}

/// `lab.job` with its kernel at `path` instead of the lab's own Image.
fn job_with_kernel(lab: &Lab, path: &str) -> String {
    let a = lab.artifacts();
    lab.job("k", "medium", &["true"]).replace(
        &format!("file://{}/Image", a.display()),
        &format!("file://{path}"),
    )
}

/// Submitting a FIFO nobody writes as a kernel left a thread blocked in
/// `open()` per job until the blocking pool was exhausted; `/dev/*` and
/// `/proc/self/environ` (labd's own environment) were staged for TFTP.
/// Each is refused at submit, naming the key path, and nothing is stored.
#[test]
fn fifos_devices_and_kernel_files_are_refused_at_submit() {
    rt().block_on(async {
        let lab = Lab::start_with(1, &[], &[], "[deploy]\nfile_roots = [\"/\"]");
        let mut c = lab.client().await;
        let fifo = lab.dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        for (path, what) in [
            (fifo.to_str().unwrap(), "a FIFO"),
            ("/dev/zero", "a character device"),
            ("/proc/self/environ", "procfs"),
            ("/sys/kernel/notes", "sysfs"),
        ] {
            let e = c
                .submit(&job_with_kernel(&lab, path), "j.yaml")
                .await
                .unwrap_err();
            let m = e.to_string();
            assert_eq!(e.code(), Some(labd::error::ErrorCode::InvalidJob), "{m}");
            assert!(m.contains(what), "{path}: {m}");
            assert!(m.contains("actions[0].deploy.kernel.url"), "{m}");
            assert!(m.contains("j.yaml:"), "{m}");
        }
        assert!(all_jobs(&mut c).await.is_empty());
        // The lab's own artifacts still deploy.
        let id = submit(&mut c, &lab.job("fine", "medium", &["true"])).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete", "{log}");
    });
}

/// A configured lab reads no `file://` artifact unless `[deploy]
/// file_roots` allows its directory (symlinks resolved).
#[test]
fn file_artifacts_must_lie_under_the_labs_file_roots() {
    rt().block_on(async {
        let lab = Lab::start_with(1, &[], &[], "[deploy]\nfile_roots = [\"@DIR@/artifacts\"]");
        let mut c = lab.client().await;
        let outside = lab.dir.path().join("outside.img");
        std::fs::write(&outside, b"not for boards").unwrap();
        let link = lab.artifacts().join("link.img");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        for path in [
            outside.to_str().unwrap(),
            link.to_str().unwrap(),
            "/etc/passwd",
        ] {
            let e = c
                .submit(&job_with_kernel(&lab, path), "j.yaml")
                .await
                .unwrap_err();
            let m = e.to_string();
            assert_eq!(
                e.code(),
                Some(labd::error::ErrorCode::PermissionDenied),
                "{m}"
            );
            assert!(m.contains("file_roots"), "{m}");
            assert!(m.contains("actions[0].deploy.kernel.url"), "{m}");
        }
        let id = submit(&mut c, &lab.job("inside", "medium", &["true"])).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete", "{log}");
        drop(c);
        drop(lab);

        // No roots at all: no file:// artifact.
        let lab = Lab::start_with(1, &[], &[], "[deploy]\n");
        let mut c = lab.client().await;
        let e = c
            .submit(&lab.job("none", "medium", &["true"]), "j.yaml")
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(labd::error::ErrorCode::PermissionDenied));
        assert!(e.to_string().contains("allows no file://"), "{e}");
    });
}

/// A file that was regular at submit and is a FIFO nobody writes when the
/// job deploys used to hold a blocking-pool thread in `open()` until the
/// deploy timed out (and for ever after): the deploy looks before it opens
/// and ends the job at once, naming what it found.
#[test]
fn a_fifo_swapped_in_after_submit_fails_the_deploy_at_once() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let kernel = lab.artifacts().join("swapped.img");
        std::fs::write(&kernel, b"regular for now").unwrap();
        set_health(&mut c, "sim-01", "maintenance", None)
            .await
            .unwrap();
        let id = submit(&mut c, &job_with_kernel(&lab, kernel.to_str().unwrap())).await;
        std::fs::remove_file(&kernel).unwrap();
        nix::unistd::mkfifo(&kernel, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        set_health(&mut c, "sim-01", "online", None).await.unwrap();
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Incomplete", "{log}");
        let j = job(&mut c, id).await;
        let error = j["error"].as_str().unwrap_or_default();
        assert!(error.contains("a FIFO"), "{j}");
        assert!(!error.contains("timed out"), "{j}");
    });
}

/// Runs `cmd` with `args` in `dir`, which must succeed.
fn run_in(dir: &std::path::Path, cmd: &str, args: &[&str]) {
    let o = std::process::Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{cmd} {args:?}: {o:?}");
}

/// A real initramfs (gzip'd newc, made by `cpio` and `gzip`) at
/// `<artifacts>/rd.cpio.gz`, holding `init`.
fn real_ramdisk(lab: &Lab) -> std::path::PathBuf {
    let a = lab.artifacts();
    let root = a.join("rd-root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("init"), "#!/bin/sh\n").unwrap();
    run_in(
        &root,
        "sh",
        &[
            "-c",
            "find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9 > ../rd.cpio.gz",
        ],
    );
    a.join("rd.cpio.gz")
}

fn have_ramdisk_tools() -> bool {
    ["cpio", "gzip", "tar", "mkimage"]
        .iter()
        .all(|t| require_tool(t, "apt-get install cpio gzip tar u-boot-tools"))
}

/// LAVA's `header: u-boot` ramdisk and `modules`: the modules tar (made by
/// GNU tar) is appended to the legacy image's data as one more gzip'd cpio,
/// the header's size and CRCs rewritten (read back by `mkimage -l` and the
/// CRC checked here), and `{BOOTX}` passes the ramdisk by its address
/// alone, so U-Boot loads it by its header. A bare ramdisk said to have a
/// header fails the deploy as the job's error.
#[test]
fn a_uboot_ramdisk_gets_the_modules_and_is_booted_by_its_header() {
    if !have_ramdisk_tools() {
        return;
    }
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let a = lab.artifacts();
        let rd = real_ramdisk(&lab);
        run_in(
            &a,
            "mkimage",
            &["-A", "arm64", "-O", "linux", "-T", "ramdisk", "-C", "none", "-n", "test-initrd", "-d", rd.to_str().unwrap(), "uInitrd"],
        );
        let m = a.join("m/lib/modules/6.1.0-sim/kernel/drivers");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(m.join("a.ko"), "MODULE-A").unwrap();
        run_in(&a, "tar", &["-czf", "modules.tar.gz", "-C", "m", "lib"]);
        let seen = lab.dir.path().join("seen");
        let tftp = lab.dir.path().join("state/tftp");
        let job = lab
            .job(
                "uinitrd",
                "medium",
                &[&format!(
                    "lava-test-case seen --shell cp {}/*/0-ramdisk-uInitrd {}",
                    tftp.display(),
                    seen.display()
                )],
            )
            .replace(
                &format!("      url: file://{}/rootfs.cpio.gz\n", a.display()),
                &format!(
                    "      url: file://{}/uInitrd\n      header: u-boot\n    modules:\n      url: file://{}/modules.tar.gz\n      compression: gz\n",
                    a.display(),
                    a.display()
                ),
            );
        let id = submit(&mut c, &job).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete", "{log}");
        assert!(
            log.contains("## Loading init Ramdisk from Legacy Image at 0x44000000"),
            "{log}"
        );
        assert!(log.contains("Image Name:   test-initrd"), "{log}");
        assert!(log.contains("booti 0x40400000 0x44000000 0x43000000"), "{log}");
        let j = common::job(&mut c, id).await;
        let ev = j["events"].to_string();
        assert!(ev.contains("modules: 1 files (8 bytes) appended to the ramdisk"), "{ev}");
        // What the board loaded: a sound legacy image, by mkimage and by
        // its data CRC, with the user's archive and then the modules.
        let o = std::process::Command::new("mkimage")
            .arg("-l")
            .arg(&seen)
            .output()
            .unwrap();
        let listed = String::from_utf8_lossy(&o.stdout);
        assert!(listed.contains("RAMDisk Image"), "{listed}");
        assert!(listed.contains("test-initrd"), "{listed}");
        let image = std::fs::read(&seen).unwrap();
        let size = u32::from_be_bytes(image[12..16].try_into().unwrap()) as usize;
        let data = &image[64..];
        assert_eq!(data.len(), size);
        let mut crc = flate2::Crc::new();
        crc.update(data);
        assert_eq!(crc.sum(), u32::from_be_bytes(image[24..28].try_into().unwrap()));
        let mut all = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(data), &mut all).unwrap();
        let text = String::from_utf8_lossy(&all);
        let init = text.find("init").unwrap();
        let module = text.find("lib/modules/6.1.0-sim/kernel/drivers/a.ko").unwrap();
        assert!(init < module, "the user's archive comes first");
        assert!(text.contains("MODULE-A"));
        // `header: u-boot` on a bare ramdisk is the job's mistake.
        let bare = lab.job("bare", "medium", &["true"]).replace(
            &format!("      url: file://{}/rootfs.cpio.gz\n", a.display()),
            &format!("      url: file://{}\n      header: u-boot\n", rd.display()),
        );
        let id = submit(&mut c, &bare).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Incomplete", "{log}");
        let j = common::job(&mut c, id).await;
        assert_eq!(j["error_class"], "Job", "{j}");
        let err = j["error"].as_str().unwrap();
        assert!(err.contains("not a U-Boot legacy image"), "{err}");
    });
}

/// A device type that says `add_header: u-boot` (LAVA's device
/// parameter): a bare ramdisk is put in a legacy image for the arch it
/// names, and U-Boot loads it by its header.
#[test]
fn a_board_that_wants_a_header_gets_its_ramdisk_in_one() {
    if !have_ramdisk_tools() {
        return;
    }
    rt().block_on(async {
        let mut lab = Lab::prepare(1, &[], &[], "");
        let cfg = std::fs::read_to_string(&lab.config).unwrap().replace(
            "\"timeouts.bootloader-interrupt\" = 3\n",
            "\"timeouts.bootloader-interrupt\" = 3\n\"bootloader.add_header\" = \"u-boot\"\n\"bootloader.mkimage_arch\" = \"arm64\"\n",
        );
        std::fs::write(&lab.config, cfg).unwrap();
        lab.start_labd();
        let mut c = lab.client().await;
        let rd = real_ramdisk(&lab);
        let a = lab.artifacts();
        let job = lab.job("wrapped", "medium", &["true"]).replace(
            &format!("file://{}/rootfs.cpio.gz", a.display()),
            &format!("file://{}", rd.display()),
        );
        let id = submit(&mut c, &job).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete", "{log}");
        assert!(log.contains("Loading init Ramdisk from Legacy Image"), "{log}");
        assert!(log.contains("Image Name:   labd ramdisk"), "{log}");
        let ev = common::job(&mut c, id).await["events"].to_string();
        assert!(ev.contains("put in a U-Boot legacy image"), "{ev}");
        // A header needs its architecture: refused at start, naming the key.
        lab.terminate_labd();
        assert!(lab.wait_labd());
        let cfg = std::fs::read_to_string(&lab.config)
            .unwrap()
            .replace("\"bootloader.mkimage_arch\" = \"arm64\"\n", "");
        std::fs::write(&lab.config, cfg).unwrap();
        let said = lab.labd_refuses();
        assert!(said.contains("bootloader.add_header"), "{said}");
        assert!(said.contains("mkimage_arch"), "{said}");
    });
}

/// LAVA's `to: downloads`: the images are fetched into the job's
/// downloads directory, and a later deploy takes them by `downloads://`
/// URLs; a name that was not downloaded fails that deploy, listing what was.
#[test]
fn downloads_are_fetched_and_taken_by_a_later_deploy() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let a = lab.artifacts().display().to_string();
        let downloads = format!(
            "- deploy:\n    to: downloads\n    images:\n      kernel:\n        url: file://{a}/Image\n      rootfs:\n        url: file://{a}/rootfs.cpio.gz\n"
        );
        let job = lab
            .job("dl", "medium", &["true"])
            .replace("actions:\n", &format!("actions:\n{downloads}"))
            .replace(&format!("file://{a}/Image"), "downloads://Image")
            .replace(
                &format!("file://{a}/rootfs.cpio.gz"),
                "downloads://rootfs.cpio.gz",
            );
        // The downloads deploy keeps its own file:// URLs.
        let job = job.replacen(
            "        url: downloads://Image\n      rootfs:\n        url: downloads://rootfs.cpio.gz\n",
            &format!("        url: file://{a}/Image\n      rootfs:\n        url: file://{a}/rootfs.cpio.gz\n"),
            1,
        );
        let id = submit(&mut c, &job).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete", "{log}\n{job}");
        let ev = common::job(&mut c, id).await["events"].to_string();
        assert!(ev.contains("as ") && ev.contains("/downloads/Image"), "{ev}");
        assert!(ev.contains("downloads://Image (300000 bytes, an earlier download)"), "{ev}");
        let missing = job.replace("downloads://rootfs.cpio.gz", "downloads://nope.img");
        let id = submit(&mut c, &missing).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Incomplete", "{log}");
        let j = common::job(&mut c, id).await;
        assert_eq!(j["error_class"], "Job", "{j}");
        let err = j["error"].as_str().unwrap();
        assert!(err.contains("downloads://nope.img: no such download"), "{err}");
        assert!(err.contains("available: Image, rootfs.cpio.gz"), "{err}");
        // A path out of the downloads directory is refused at submit.
        let e = c
            .submit(&job.replace("downloads://Image", "downloads://../Image"), "j.yaml")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("may not use `.`, `..`"), "{e}");
    });
}

/// A kernel without `type` is LAVA's, where nothing needs it; a u-boot
/// boot whose commands use `{BOOTX}` is refused at submit, saying why.
#[test]
fn a_kernel_type_is_needed_only_by_commands_that_use_it() {
    rt().block_on(async {
        let lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let untyped = lab
            .job("untyped", "medium", &["true"])
            .replace("      type: image\n", "");
        let e = c.submit(&untyped, "j.yaml").await.unwrap_err();
        let m = e.to_string();
        assert!(m.contains("{BOOTX}") && m.contains("`kernel: type`"), "{m}");
        // Commands of the job's own that name no address need no type.
        let inline = untyped.replace(
            "    commands: ramdisk\n",
            "    commands:\n    - setenv tftpdstp {TFTP_PORT}\n    - setenv serverip {SERVER_IP}\n    - tftp 0x40400000 {KERNEL}\n    - tftp 0x44000000 {RAMDISK}\n    - setenv initrd_size ${filesize}\n    - tftp 0x43000000 {DTB}\n    - booti 0x40400000 0x44000000:${initrd_size} 0x43000000\n",
        );
        let id = submit(&mut c, &inline).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete", "{log}");
    });
}
