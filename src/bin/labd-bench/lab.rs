//! A real lab for the benchmarks: `labd-sim` and `labd` as processes on a
//! temp dir, and what the benchmarks read about them from `/proc`.

use anyhow::{bail, Context, Result};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running labd, stopped (SIGTERM, then waited for) when dropped.
pub struct Labd {
    child: Child,
    /// Kept open so that labd's later notifications (STOPPING=1) arrive.
    _notify: std::os::unix::net::UnixDatagram,
}

impl Labd {
    /// Writes `config` to `dir/labd.toml`, starts labd on it and returns
    /// once it said READY=1 (over a private NOTIFY_SOCKET).
    pub fn start(dir: &Path, config: &str) -> Result<Labd> {
        let path = dir.join("labd.toml");
        std::fs::write(&path, config)?;
        let labd = std::env::current_exe()?.with_file_name("labd");
        let notify = dir.join("notify.sock");
        let _ = std::fs::remove_file(&notify);
        let ready = std::os::unix::net::UnixDatagram::bind(&notify)?;
        let child = Command::new(&labd)
            .arg("--config")
            .arg(&path)
            .env("NOTIFY_SOCKET", &notify)
            .env("RUST_LOG", "labd=warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", labd.display()))?;
        wait_ready(&ready)?;
        Ok(Labd {
            child,
            _notify: ready,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Stops labd cleanly and waits for it to exit.
    pub fn stop(mut self) -> Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<()> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        );
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Labd {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.terminate();
        }
    }
}

/// Waits for READY=1 on a NOTIFY_SOCKET.
pub fn wait_ready(ready: &std::os::unix::net::UnixDatagram) -> Result<()> {
    ready.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut buf = [0u8; 256];
    loop {
        let n = ready.recv(&mut buf).context("labd did not say READY=1")?;
        if String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "READY=1")
        {
            return Ok(());
        }
    }
}

/// A running `labd-sim`, killed when dropped.
pub struct Sim {
    child: Child,
    pub control: PathBuf,
}

impl Sim {
    /// Starts `labd-sim` with `boards`, paced at `baud` when given, and
    /// returns once it printed READY.
    pub fn start(dir: &Path, boards: &[String], baud: Option<u32>) -> Result<Sim> {
        let control = dir.join("sim.sock");
        let exe = std::env::current_exe()?.with_file_name("labd-sim");
        let mut cmd = Command::new(&exe);
        cmd.arg("--control")
            .arg(&control)
            .arg("--boards")
            .arg(boards.join(","))
            .arg("--scratch")
            .arg(dir.join("scratch"))
            .stdout(Stdio::piped());
        if let Some(b) = baud {
            cmd.arg("--baud").arg(b.to_string());
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let out = child.stdout.take().context("labd-sim's stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(out).read_line(&mut line)?;
        let sim = Sim { child, control };
        if line.trim() != "READY" {
            bail!("labd-sim did not start: {line:?}");
        }
        Ok(sim)
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process's CPU time so far (user + system), in seconds.
pub fn cpu_seconds(pid: i32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path)?;
    let (_, cpu) = labd::metrics::stat_cpu(&stat).with_context(|| format!("{path}: {stat}"))?;
    Ok(cpu)
}

/// A process's resident memory now and at its peak, in bytes.
pub fn rss_bytes(pid: i32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// The sum of one Prometheus counter family over all its label sets.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Small stand-ins for a kernel, ramdisk and DTB: the simulated U-Boot only
/// checks that they arrived.
pub fn write_artifacts(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut kernel = b"ARMd".to_vec();
    kernel.resize(64 * 1024, 0x5a);
    std::fs::write(dir.join("Image"), kernel)?;
    std::fs::write(dir.join("initramfs.cpio.gz"), vec![0x1f; 16 * 1024])?;
    Ok(())
}

pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// A `jobs` request for the newest 50 jobs, the page `labctl jobs` shows.
pub fn newest_jobs() -> labd::protocol::RequestBody {
    labd::protocol::RequestBody::Jobs {
        state: None,
        board: None,
        device_type: None,
        limit: Some(50),
        cursor: None,
    }
}
