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
