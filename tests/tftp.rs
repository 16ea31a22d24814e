//! labd's TFTP server against real clients: curl (blksize 1468 and tsize)
//! and atftp (RFC 7440 windowsize 16), and the confinement of its paths.
//! atftp comes from Debian (`.ci/run` installs it).

mod common;

use common::require_tool;
use std::path::Path;
use std::process::Command;

/// Whether `tool` (a Debian package of that name) is here: see `require`
/// for what happens when it is not.
fn have(tool: &str) -> bool {
    require_tool(
        tool,
        &format!("install the Debian package {tool}; .ci/run does"),
    )
}

/// A TFTP root with job 7's kernel, a symlink out of the root, and a
/// secret next to the root.
fn serve() -> (tempfile::TempDir, u16, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("7")).unwrap();
    let kernel: Vec<u8> = (0..3_000_000u32)
        .map(|i| i.wrapping_mul(2_654_435_761) as u8 ^ (i >> 13) as u8)
        .collect();
    std::fs::write(root.join("7/Image"), &kernel).unwrap();
    std::fs::write(dir.path().join("secret"), b"not for boards").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret"), root.join("7/escape")).unwrap();
    let addr = labd::tftp::start(
        "127.0.0.1:0".parse().unwrap(),
        &root,
        16,
        // Two servers sharing the port (SO_REUSEPORT), as on a 2-core host.
        2,
        labd::metrics::Metrics::default(),
    )
    .unwrap();
    (dir, addr.port(), kernel)
}

fn atftp_get(port: u16, remote: &str, local: &Path, options: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("atftp");
    // The trace shows the server's OACK and every ACK the client sends.
    cmd.arg("--trace");
    for o in options {
        cmd.args(["--option", o]);
    }
    cmd.args(["-g", "-r", remote, "-l"])
        .arg(local)
        .args(["127.0.0.1", &port.to_string()])
        .output()
        .unwrap()
}

#[test]
fn curl_gets_a_kernel_with_blksize_1468_and_tsize() {
    if !have("curl") {
        return;
    }
    let (dir, port, kernel) = serve();
    let out = dir.path().join("curl.out");
    let o = Command::new("curl")
        .args(["-sS", "--tftp-blksize", "1468"])
        .arg(format!("tftp://127.0.0.1:{port}/7/Image"))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    assert_eq!(std::fs::read(&out).unwrap(), kernel);
}

/// Transfers at once from many clients (each its own source port, so the
/// kernel spreads their requests over both servers) all arrive whole.
#[test]
fn concurrent_transfers_over_two_server_threads_all_arrive_whole() {
    if !have("curl") {
        return;
    }
    let (dir, port, kernel) = serve();
    let clients: Vec<_> = (0..12)
        .map(|i| {
            let out = dir.path().join(format!("curl-{i}.out"));
            let child = Command::new("curl")
                .args(["-sS", "--tftp-blksize", "1468"])
                .arg(format!("tftp://127.0.0.1:{port}/7/Image"))
                .arg("-o")
                .arg(&out)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (child, out)
        })
        .collect();
    for (child, out) in clients {
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{o:?}");
        assert_eq!(std::fs::read(&out).unwrap(), kernel);
    }
}

#[test]
fn atftp_gets_a_kernel_with_windowsize_16() {
    if !have("atftp") {
        return;
    }
    let (dir, port, kernel) = serve();
    let out = dir.path().join("atftp.out");
    let o = atftp_get(
        port,
        "7/Image",
        &out,
        &["windowsize 16", "blksize 1468", "tsize 0"],
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(std::fs::read(&out).unwrap(), kernel);
    // The server agreed to all three options (RFC 2347/2348/2349/7440)...
    let trace =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    let oack = trace
        .lines()
        .find(|l| l.starts_with("received OACK"))
        .unwrap_or_else(|| panic!("no OACK in the trace:\n{trace}"));
    for opt in [
        "windowsize: 16",
        "blksize: 1468",
        &format!("tsize: {}", kernel.len()),
    ] {
        assert!(oack.contains(opt), "{oack}");
    }
    // ...and really sent 16 blocks per window: one ACK per 16 DATA, not per block.
    let data = trace.lines().filter(|l| l.contains("DATA <block")).count();
    let acks = trace.lines().filter(|l| l.starts_with("sent ACK")).count();
    assert!(data >= 16 * 10, "{data} blocks");
    assert!(acks <= data / 16 + 3, "{acks} ACKs for {data} blocks");
}

#[test]
fn paths_out_of_the_job_dirs_and_symlinks_are_refused() {
    if !have("atftp") {
        return;
    }
    let (dir, port, _) = serve();
    for remote in [
        "../secret",
        "7/../../secret",
        "/etc/passwd",
        "7/escape",
        "secret",
        "7",
    ] {
        let out = dir.path().join("refused.out");
        let o = atftp_get(port, remote, &out, &[]);
        let got = std::fs::read(&out).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&got).contains("not for boards") && !got.starts_with(b"root:"),
            "{remote} was served"
        );
        assert!(!o.status.success() || got.is_empty(), "{remote}: {o:?}");
        let _ = std::fs::remove_file(&out);
    }
}
