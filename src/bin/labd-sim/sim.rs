//! `labd-sim`: simulated boards on real PTYs.
//!
//! Each simulated board holds the master side of a PTY (nix `openpty`) and
//! behaves like a board on a serial line: on power-on it prints a U-Boot
//! banner and an autoboot countdown, obeys U-Boot commands (really fetching
//! files from a TFTP server), prints a kernel log, a login prompt, and then
//! runs a real POSIX shell (`sh -i`) in a scratch directory. labd opens the
//! slave side through the same serial code real boards use. Power commands
//! and fault knobs arrive on the simulator's own control socket, so labd can
//! be killed and restarted while the boards carry on.

use labd::sim_control::{ControlRequest, ControlResponse, Fault};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Power {
    On,
    Off,
    Reset,
}

struct BoardHandle {
    pty_path: String,
    power: mpsc::Sender<(Power, oneshot::Sender<()>)>,
    fault: Arc<Mutex<Fault>>,
    /// Whether the last power command that reached the board left it on.
    powered: AtomicBool,
}

/// Runs the simulator until the process is killed: creates the boards, binds
/// the control socket, prints `READY` on stdout, and serves requests.
pub async fn run(
    control_path: &Path,
    boards: &[String],
    scratch: &Path,
    baud: Option<u32>,
) -> std::io::Result<()> {
    let mut handles = HashMap::new();
    for name in boards {
        let h = spawn_board(name.clone(), scratch.join(name), baud)?;
        handles.insert(name.clone(), h);
    }
    let _ = std::fs::remove_file(control_path);
    let listener = UnixListener::bind(control_path)?;
    println!("READY");
    let handles = Arc::new(handles);
    loop {
        let (stream, _) = listener.accept().await?;
        let handles = handles.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let resp = serve(&handles, &line).await;
                let mut out = serde_json::to_string(&resp).unwrap_or_default();
                out.push('\n');
                if w.write_all(out.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

fn failed(e: String) -> ControlResponse {
    ControlResponse {
        ok: false,
        error: Some(e),
        ..Default::default()
    }
}

fn done() -> ControlResponse {
    ControlResponse {
        ok: true,
        ..Default::default()
    }
}

async fn serve(handles: &HashMap<String, BoardHandle>, line: &str) -> ControlResponse {
    let req: ControlRequest = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return failed(format!("bad request: {e}")),
    };
    let (name, power) = match req {
        ControlRequest::List => {
            let mut names: Vec<String> = handles.keys().cloned().collect();
            names.sort();
            let powered = names
                .iter()
                .filter(|n| handles[*n].powered.load(Ordering::SeqCst))
                .cloned()
                .collect();
            return ControlResponse {
                boards: Some(names),
                powered: Some(powered),
                ..done()
            };
        }
        ControlRequest::Pty { board } => (board, None),
        ControlRequest::Fault { board, fault } => match handles.get(&board) {
            Some(h) => {
                if let Ok(mut f) = h.fault.lock() {
                    *f = fault;
                }
                return done();
            }
            None => (board, None),
        },
        ControlRequest::On { board } => (board, Some(Power::On)),
        ControlRequest::Off { board } => (board, Some(Power::Off)),
        ControlRequest::Reset { board } => (board, Some(Power::Reset)),
    };
    let Some(h) = handles.get(&name) else {
        return failed(format!("no such board `{name}`"));
    };
    let Some(power) = power else {
        return ControlResponse {
            path: Some(h.pty_path.clone()),
            ..done()
        };
    };
    if h.fault
        .lock()
        .map(|f| *f == Fault::RelayFails)
        .unwrap_or(false)
    {
        return failed("relay did not respond".into());
    }
    let (tx, rx) = oneshot::channel();
    if h.power.send((power, tx)).await.is_err() || rx.await.is_err() {
        return failed("board task is gone".into());
    }
    h.powered.store(power != Power::Off, Ordering::SeqCst);
    done()
}

fn spawn_board(name: String, scratch: PathBuf, baud: Option<u32>) -> std::io::Result<BoardHandle> {
    let pty = labd::pty::openpty_cloexec().map_err(std::io::Error::from)?;
    // Raw from the start: a cooked PTY would echo our own output back to us
    // as input until labd opens the slave and sets it raw.
    labd::pty::set_raw(&pty.slave).map_err(std::io::Error::from)?;
    let pty_path = nix::unistd::ttyname(&pty.slave)
        .map_err(std::io::Error::from)?
        .display()
        .to_string();
    let flags = nix::fcntl::fcntl(pty.master.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)
        .map_err(std::io::Error::from)?;
    nix::fcntl::fcntl(
        pty.master.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(
            nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK,
        ),
    )
    .map_err(std::io::Error::from)?;
    // SAFETY: an OwnedFd's raw fd is valid, open and unchanged for as long as
    // the OwnedFd lives, and the AsyncFd owns it for its whole life.
    let master = Arc::new(unsafe { AsyncFd::register(pty.master) }.map_err(std::io::Error::from)?);
    let (power_tx, power_rx) = mpsc::channel(8);
    let fault = Arc::new(Mutex::new(Fault::None));
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    tokio::spawn(read_master(master.clone(), in_tx));
    let board = Board {
        name,
        out: Out {
            fd: master,
            uart: baud.map(Uart::new),
        },
        input: in_rx,
        fault: fault.clone(),
        scratch,
        // The simulator keeps a slave fd open so that the master never sees
        // a hang-up while labd is not attached (a killed labd must not hurt the board).
        _slave: pty.slave,
    };
    tokio::spawn(board_task(board, power_rx));
    Ok(BoardHandle {
        pty_path,
        power: power_tx,
        powered: AtomicBool::new(false),
        fault,
    })
}

async fn read_master(fd: Arc<AsyncFd<OwnedFd>>, tx: mpsc::UnboundedSender<Vec<u8>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok(mut guard) = fd.readable().await else {
            return;
        };
        match guard.try_io(|inner| {
            nix::unistd::read(inner.get_ref().as_raw_fd(), &mut buf).map_err(std::io::Error::from)
        }) {
            Ok(Ok(0)) => return,
            Ok(Ok(n)) => {
                if tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
            Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::EIO) => {
                // No slave open; cannot happen while we hold one, but never spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Err(_)) => return,
            Err(_would_block) => continue,
        }
    }
}

struct Out {
    fd: Arc<AsyncFd<OwnedFd>>,
    /// With `--baud`: output is paced like a real serial line.
    uart: Option<Uart>,
}

/// The pace of a serial line: 10 bits per byte (8N1). Bytes leave in chunks
/// of one USB-serial latency period (16 ms, an FTDI adapter's default), the
/// way a USB adapter hands them to the host's tty layer.
struct Uart {
    per_byte: Duration,
    chunk: usize,
    /// When the line will have sent everything written so far.
    busy_until: Mutex<tokio::time::Instant>,
}

const UART_PERIOD: Duration = Duration::from_millis(16);

impl Uart {
    fn new(baud: u32) -> Uart {
        let bytes_per_sec = (baud / 10).max(1);
        Uart {
            per_byte: Duration::from_secs(1) / bytes_per_sec,
            chunk: ((bytes_per_sec as u128 * UART_PERIOD.as_millis()) / 1000).max(1) as usize,
            busy_until: Mutex::new(tokio::time::Instant::now()),
        }
    }

    fn busy_until(&self) -> tokio::time::Instant {
        *self.busy_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts `n` bytes as on the wire.
    fn sent(&self, n: usize) {
        let mut b = self.busy_until.lock().unwrap_or_else(|p| p.into_inner());
        *b = (*b).max(tokio::time::Instant::now()) + self.per_byte * n as u32;
    }
}

impl Out {
    async fn write(&self, bytes: &[u8]) {
        let Some(uart) = &self.uart else {
            return self.write_now(bytes).await;
        };
        for chunk in bytes.chunks(uart.chunk) {
            // At most one period of bytes is ahead of the line at any time.
            let ready = uart.busy_until().checked_sub(UART_PERIOD);
            if let Some(at) = ready.filter(|&at| at > tokio::time::Instant::now()) {
                tokio::time::sleep_until(at).await;
            }
            self.write_now(chunk).await;
            uart.sent(chunk.len());
        }
    }

    /// Writes like a UART: when nobody reads for a second, the rest is lost.
    async fn write_now(&self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let ready = tokio::time::timeout(Duration::from_secs(1), self.fd.writable()).await;
            let Ok(Ok(mut guard)) = ready else {
                return;
            };
            match guard.try_io(|inner| {
                nix::unistd::write(inner.get_ref(), bytes).map_err(std::io::Error::from)
            }) {
                Ok(Ok(n)) => bytes = &bytes[n..],
                Ok(Err(_)) => return,
                Err(_would_block) => continue,
            }
        }
    }

    async fn line(&self, s: &str) {
        self.write(s.as_bytes()).await;
        self.write(b"\r\n").await;
    }
}

struct Board {
    name: String,
    out: Out,
    input: mpsc::UnboundedReceiver<Vec<u8>>,
    fault: Arc<Mutex<Fault>>,
    scratch: PathBuf,
    _slave: OwnedFd,
}

async fn board_task(mut b: Board, mut power: mpsc::Receiver<(Power, oneshot::Sender<()>)>) {
    let mut on = false;
    loop {
        if !on {
            tokio::select! {
                cmd = power.recv() => match cmd {
                    Some((Power::On | Power::Reset, ack)) => { on = true; let _ = ack.send(()); }
                    Some((Power::Off, ack)) => { let _ = ack.send(()); }
                    None => return,
                },
                // A board without power reads nothing: input is lost.
                Some(_) = b.input.recv() => {}
            }
            continue;
        }
        let fault = match b.fault.lock() {
            Ok(mut f) if *f == Fault::NoPromptOnce => {
                *f = Fault::None;
                Fault::NoPrompt
            }
            Ok(f) => *f,
            Err(_) => Fault::None,
        };
        let next = {
            let mut s = Session {
                out: &b.out,
                input: &mut b.input,
                env: BTreeMap::new(),
                mem: BTreeMap::new(),
                fault,
                name: &b.name,
                scratch: &b.scratch,
                pending: Vec::new(),
            };
            tokio::select! {
                _ = s.run() => None,
                cmd = power.recv() => Some(cmd),
            }
        };
        match next {
            None => {
                // The session ended by itself (a U-Boot `reset`): boot again.
            }
            Some(Some((Power::Off, ack))) => {
                on = false;
                let _ = ack.send(());
            }
            Some(Some((Power::On, ack))) => {
                // Already on; a real relay would do nothing either. The session was
                // dropped by select, so restart it, as a glitch on the rail would.
                let _ = ack.send(());
            }
            Some(Some((Power::Reset, ack))) => {
                let _ = ack.send(());
            }
            Some(None) => return,
        }
    }
}

struct Session<'a> {
    out: &'a Out,
    input: &'a mut mpsc::UnboundedReceiver<Vec<u8>>,
    env: BTreeMap<String, String>,
    /// What `tftp` loaded, by load address.
    mem: BTreeMap<String, Vec<u8>>,
    fault: Fault,
    name: &'a str,
    scratch: &'a Path,
    pending: Vec<u8>,
}

const KERNEL_LOG: &[&str] = &[
    "[    0.000000] Booting Linux on physical CPU 0x0000000000 [0x411fd070]",
    "[    0.000000] Linux version 6.1.0-sim-arm64 (labd-sim@localhost) (gcc (Debian 12.2.0-14) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP Debian 6.1.0",
    "[    0.000000] Machine model: labd-sim virtual board",
    "[    0.000000] efi: UEFI not found.",
    "[    0.000000] Zone ranges:",
    "[    0.000000]   DMA      [mem 0x0000000040000000-0x000000007fffffff]",
    "[    0.000000] Kernel command line: console=ttyS0,115200n8 root=/dev/ram0",
    "[    0.000000] Memory: 1001344K/1048576K available",
    "[    0.004000] Calibrating delay loop (skipped), value calculated using timer frequency.. 125.00 BogoMIPS",
    "[    0.012000] smp: Brought up 1 node, 2 CPUs",
    "[    0.020000] devtmpfs: initialized",
    "[    0.040000] Serial: 8250/16550 driver, 4 ports, IRQ sharing enabled",
    "[    0.041000] printk: console [ttyS0] enabled",
    "[    0.100000] Trying to unpack rootfs image as initramfs...",
    "[    0.150000] Freeing unused kernel memory: 2048K",
    "[    0.151000] Run /init as init process",
];

impl Session<'_> {
    async fn line(&self, s: &str) {
        self.out.line(s).await;
    }

    async fn garbage(&self) {
        if self.fault == Fault::Garbage {
            self.out
                .write(b"\xff\xfe\x00\x1b[?\x80\xc3(\xa0\xa1 garbage \xe2\x28\xa1\r\n")
                .await;
        }
    }

    /// Next input byte, or None if none came within `wait`.
    async fn byte_within(&mut self, wait: Duration) -> Option<u8> {
        if self.pending.is_empty() {
            match tokio::time::timeout(wait, self.input.recv()).await {
                Ok(Some(bytes)) => self.pending = bytes,
                _ => return None,
            }
        }
        if self.pending.is_empty() {
            return None;
        }
        Some(self.pending.remove(0))
    }

    async fn byte(&mut self) -> u8 {
        loop {
            if let Some(b) = self.byte_within(Duration::from_secs(3600)).await {
                return b;
            }
        }
    }

    /// Reads a line with echo, as U-Boot's and the tty's line editors do.
    async fn read_line(&mut self) -> String {
        let mut line = Vec::new();
        loop {
            let b = self.byte().await;
            match b {
                b'\r' | b'\n' => {
                    self.out.write(b"\r\n").await;
                    return String::from_utf8_lossy(&line).into_owned();
                }
                0x7f | 0x08 => {
                    if line.pop().is_some() {
                        self.out.write(b"\x08 \x08").await;
                    }
                }
                0x03 => {
                    self.out.write(b"<INTERRUPT>\r\n").await;
                    return String::new();
                }
                _ => {
                    line.push(b);
                    self.out.write(&[b]).await;
                }
            }
        }
    }

    async fn run(&mut self) {
        self.line("").await;
        self.line("").await;
        self.line("U-Boot 2023.01+dfsg-2 (labd-sim)").await;
        self.line("").await;
        self.line("DRAM:  1 GiB").await;
        self.line("Core:  51 devices, 14 uclasses, devicetree: board")
            .await;
        self.line("Net:   eth0: virtio-net#32").await;
        self.garbage().await;
        if self.fault == Fault::NoPrompt {
            std::future::pending::<()>().await;
        }
        self.env.insert("bootdelay".into(), "2".into());
        self.env.insert("tftpdstp".into(), "69".into());
        self.env
            .insert("fdtcontroladdr".into(), "0x43000000".into());
        self.out.write(b"Hit any key to stop autoboot:  2 ").await;
        let mut interrupted = false;
        // U-Boot counts `bootdelay` in seconds. Unpaced (the tests) the
        // count is shortened to keep boots that are not interrupted quick; a
        // board paced like a real serial line (`--baud`, the benchmarks)
        // counts real seconds, so a lab of 1000 such boards booting at once
        // has the window for its interrupt that real boards give.
        let step = if self.out.uart.is_some() {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(300)
        };
        for i in (0..2).rev() {
            if self.fault == Fault::IgnoresInterrupt {
                tokio::time::sleep(step).await;
            } else if self.byte_within(step).await.is_some() {
                interrupted = true;
                break;
            }
            self.out
                .write(format!("\x08\x08\x08 {i} ").as_bytes())
                .await;
        }
        self.line("").await;
        if !interrupted {
            // Not stopped: the board's own bootcmd boots what is on its
            // eMMC, as a real board does (LAVA's `minimal` boots rely on it).
            self.line("switch to partitions #0, OK").await;
            self.line("mmc0 is current device").await;
            self.line("8388608 bytes read in 371 ms (21.6 MiB/s)").await;
            self.line("Starting kernel ...").await;
            self.line("").await;
            self.kernel().await;
            return;
        }
        loop {
            self.out.write(b"=> ").await;
            let line = self.read_line().await;
            let line = self.expand(&line);
            for cmd in split_commands(&line) {
                match self.uboot(&cmd).await {
                    Flow::Continue => {}
                    Flow::Stop => break,
                    Flow::Boot => {
                        self.kernel().await;
                        return;
                    }
                    Flow::Reset => return,
                }
            }
        }
    }

    fn expand(&self, line: &str) -> String {
        let mut out = String::new();
        let mut rest = line;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            match rest[i..].find('}') {
                Some(j) => {
                    let name = &rest[i + 2..i + j];
                    out.push_str(self.env.get(name).map(String::as_str).unwrap_or(""));
                    rest = &rest[i + j + 1..];
                }
                None => {
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        }
        out.push_str(rest);
        out
    }

    async fn uboot(&mut self, cmd: &str) -> Flow {
        let args = split_args(cmd);
        let Some(name) = args.first() else {
            return Flow::Continue;
        };
        match name.as_str() {
            "setenv" | "env" if args.len() >= 2 => {
                let (key, val) = if name == "env" {
                    if args.get(1).map(String::as_str) != Some("set") || args.len() < 3 {
                        self.line("Usage: env set NAME VALUE").await;
                        return Flow::Stop;
                    }
                    (args[2].clone(), args[3..].join(" "))
                } else {
                    (args[1].clone(), args[2..].join(" "))
                };
                if val.is_empty() {
                    self.env.remove(&key);
                } else {
                    self.env.insert(key, val);
                }
            }
            "printenv" => {
                if args.len() > 1 {
                    for k in &args[1..] {
                        match self.env.get(k) {
                            Some(v) => self.line(&format!("{k}={v}")).await,
                            None => {
                                self.line(&format!("## Error: \"{k}\" not defined")).await;
                            }
                        }
                    }
                } else {
                    let all: Vec<String> =
                        self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    for l in all {
                        self.line(&l).await;
                    }
                }
            }
            "echo" => self.line(&args[1..].join(" ")).await,
            "version" => self.line("U-Boot 2023.01+dfsg-2 (labd-sim)").await,
            "help" => {
                self.line("booti bootm bootz dhcp echo printenv reset setenv tftp tftpboot version")
                    .await
            }
            "dhcp" => {
                self.env.insert("ipaddr".into(), "10.0.2.15".into());
                self.line("DHCP client bound to address 10.0.2.15 (2 ms)")
                    .await;
            }
            "tftp" | "tftpboot" => return self.tftp(&args).await,
            "booti" | "bootz" | "bootm" => return self.boot(&args).await,
            "reset" => {
                self.line("resetting ...").await;
                return Flow::Reset;
            }
            other => {
                self.line(&format!("Unknown command '{other}' - try 'help'"))
                    .await;
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    async fn tftp(&mut self, args: &[String]) -> Flow {
        let (addr, file) = match args.len() {
            3 => (args[1].clone(), args[2].clone()),
            2 => (
                self.env
                    .get("loadaddr")
                    .cloned()
                    .unwrap_or("0x40200000".into()),
                args[1].clone(),
            ),
            _ => {
                self.line("Usage: tftpboot [loadAddress] [[hostIPaddr:]bootfilename]")
                    .await;
                return Flow::Stop;
            }
        };
        let server_ip = self.env.get("serverip").cloned().unwrap_or_default();
        let port: u16 = self
            .env
            .get("tftpdstp")
            .and_then(|p| p.parse().ok())
            .unwrap_or(69);
        let Ok(ip) = server_ip.parse::<std::net::IpAddr>() else {
            self.line("*** ERROR: `serverip' not set").await;
            return Flow::Stop;
        };
        self.line("Using virtio-net#32 device").await;
        self.line(&format!(
            "TFTP from server {server_ip}; our IP address is 10.0.2.15"
        ))
        .await;
        self.line(&format!("Filename '{file}'.")).await;
        self.line(&format!("Load address: {addr}")).await;
        self.out.write(b"Loading: ").await;
        let mut marks = 0usize;
        let mut progress_bytes = 0usize;
        let r = crate::tftp_client::fetch(SocketAddr::new(ip, port), &file, 1468, |n| {
            progress_bytes = n;
        })
        .await;
        // U-Boot prints one '#' per 10 blocks; a few marks are enough here.
        while marks < (progress_bytes / 65536).clamp(1, 50) {
            self.out.write(b"#").await;
            marks += 1;
        }
        self.line("").await;
        match r {
            Ok(data) => {
                self.line("done").await;
                self.line(&format!(
                    "Bytes transferred = {} ({:x} hex)",
                    data.len(),
                    data.len()
                ))
                .await;
                self.env
                    .insert("filesize".into(), format!("{:x}", data.len()));
                self.mem.insert(addr, data);
                Flow::Continue
            }
            Err(crate::tftp_client::TftpError::Remote { code, message }) => {
                self.line(&format!("TFTP error: '{message}' ({code})"))
                    .await;
                self.line("Not retrying...").await;
                Flow::Stop
            }
            Err(e) => {
                self.line(&format!("{e}; starting again")).await;
                Flow::Stop
            }
        }
    }

    async fn boot(&mut self, args: &[String]) -> Flow {
        let Some(addr) = args.get(1) else {
            self.line("Usage: booti [addr [initrd[:size]] [fdt]]").await;
            return Flow::Stop;
        };
        if !self.mem.contains_key(addr) {
            let msg = match args[0].as_str() {
                "booti" => "Bad Linux ARM64 Image magic!",
                "bootz" => "zimage: Bad magic!",
                _ => "Wrong Image Format for boot",
            };
            self.line(msg).await;
            return Flow::Stop;
        }
        if let Some(rd) = args.get(2) {
            // As U-Boot: `addr:size` is a bare ramdisk; an address alone
            // must hold a legacy image (`mkimage -T ramdisk`), whose
            // header gives the size.
            let (addr, sized) = match rd.split_once(':') {
                Some((a, _)) => (a, true),
                None => (rd.as_str(), false),
            };
            let legacy = self.mem.get(addr).and_then(|d| legacy_ramdisk(d));
            let ok = addr == "-" || (self.mem.contains_key(addr) && (sized || legacy.is_some()));
            if !ok {
                self.line("Wrong Ramdisk Image Format").await;
                self.line("Ramdisk image is corrupt or invalid").await;
                return Flow::Stop;
            }
            if let (false, Some((name, size))) = (sized, legacy) {
                self.line(&format!(
                    "## Loading init Ramdisk from Legacy Image at {addr} ..."
                ))
                .await;
                self.line(&format!("   Image Name:   {name}")).await;
                self.line("   Image Type:   AArch64 Linux RAMDisk Image (uncompressed)")
                    .await;
                self.line(&format!("   Data Size:    {size} Bytes")).await;
                self.line("   Verifying Checksum ... OK").await;
            }
        }
        self.line(&format!(
            "## Flattened Device Tree blob at {}",
            args.get(3).map(String::as_str).unwrap_or("43000000")
        ))
        .await;
        self.line("   Loading Device Tree to 000000007e5f1000, end 000000007e5f9fff ... OK")
            .await;
        self.line("").await;
        self.line("Starting kernel ...").await;
        self.line("").await;
        Flow::Boot
    }

    async fn kernel(&mut self) {
        if self.fault == Fault::HangAfterKernel {
            std::future::pending::<()>().await;
        }
        // The early log leaves in one burst, as a real kernel's does when the
        // console starts: the matcher must find `Linux version` inside it.
        let burst: String = KERNEL_LOG.iter().map(|l| format!("{l}\r\n")).collect();
        self.out.write(burst.as_bytes()).await;
        self.garbage().await;
        self.line("").await;
        loop {
            self.out
                .write(
                    format!(
                        "Debian GNU/Linux 12 {} ttyS0\r\n\r\n{} login: ",
                        self.name, "sim"
                    )
                    .as_bytes(),
                )
                .await;
            let user = self.read_line().await;
            if user.trim() == "root" {
                self.line("Linux sim 6.1.0-sim-arm64 #1 SMP Debian 6.1.0 aarch64")
                    .await;
                self.shell().await;
            } else {
                self.line("").await;
                self.line("Login incorrect").await;
            }
        }
    }

    async fn shell(&mut self) {
        let _ = std::fs::remove_dir_all(self.scratch);
        if std::fs::create_dir_all(self.scratch).is_err() {
            self.line("-sh: cannot create home directory").await;
            return;
        }
        // Close-on-exec, or every later board's shell would hold this
        // pipe's ends too, and none would see its input end.
        let Ok((rd, wr)) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) else {
            self.line("-sh: pipe failed").await;
            return;
        };
        let Ok(wr2) = wr.try_clone() else {
            return;
        };
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-i")
            .current_dir(self.scratch)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", self.scratch)
            .env("PS1", "root@sim:$PWD# ")
            .env("TERM", "dumb")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::from(wr))
            .stderr(std::process::Stdio::from(wr2))
            .process_group(0)
            .kill_on_drop(true);
        let Ok(mut child) = cmd.spawn() else {
            self.line("-sh: cannot start a shell").await;
            return;
        };
        drop(cmd);
        let pgid = child.id();
        let Some(mut stdin) = child.stdin.take() else {
            return;
        };
        // A non-blocking pipe on the reactor: a blocking read on tokio's
        // file thread pool would hold one of its threads per idle shell.
        let Ok(mut output) = tokio::net::unix::pipe::Receiver::from_owned_fd(rd) else {
            self.line("-sh: pipe failed").await;
            return;
        };
        let mut line = Vec::new();
        let mut buf = vec![0u8; 4096];
        let mut pending = std::mem::take(&mut self.pending);
        loop {
            if !pending.is_empty() {
                for b in std::mem::take(&mut pending) {
                    self.shell_input(b, &mut line, &mut stdin, pgid).await;
                }
                continue;
            }
            tokio::select! {
                n = output.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut o = Vec::with_capacity(n + 16);
                        for &b in &buf[..n] {
                            if b == b'\n' { o.push(b'\r'); }
                            o.push(b);
                        }
                        self.out.write(&o).await;
                    }
                },
                Some(bytes) = self.input.recv() => pending = bytes,
            }
        }
        let _ = child.kill().await;
        self.line("logout").await;
    }

    async fn shell_input(
        &mut self,
        b: u8,
        line: &mut Vec<u8>,
        stdin: &mut tokio::process::ChildStdin,
        pgid: Option<u32>,
    ) {
        match b {
            b'\r' | b'\n' => {
                self.out.write(b"\r\n").await;
                line.push(b'\n');
                let _ = stdin.write_all(line).await;
                line.clear();
            }
            0x7f | 0x08 => {
                if line.pop().is_some() {
                    self.out.write(b"\x08 \x08").await;
                }
            }
            0x03 => {
                self.out.write(b"^C\r\n").await;
                line.clear();
                if let Some(pid) = pgid {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGINT,
                    );
                }
            }
            _ => {
                line.push(b);
                self.out.write(&[b]).await;
            }
        }
    }
}

enum Flow {
    Continue,
    Stop,
    Boot,
    Reset,
}

/// Splits a U-Boot command line on `;` outside quotes.
fn split_commands(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    for c in line.chars() {
        match (c, quote) {
            ('\'' | '"', None) => {
                quote = Some(c);
                cur.push(c);
            }
            (q, Some(open)) if q == open => {
                quote = None;
                cur.push(c);
            }
            (';', None) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Splits a command into words, honouring single and double quotes.
fn split_args(cmd: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    let mut has = false;
    for c in cmd.chars() {
        match (c, quote) {
            ('\'' | '"', None) => {
                quote = Some(c);
                has = true;
            }
            (q, Some(open)) if q == open => quote = None,
            (c, None) if c.is_whitespace() => {
                if has {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            _ => {
                cur.push(c);
                has = true;
            }
        }
    }
    if has {
        out.push(cur);
    }
    out
}

/// A U-Boot legacy ramdisk image's name and data size, if `data` is one:
/// the magic, the ramdisk type (3) and a data part as long as the header
/// says. (The CRCs are labd's to get right; U-Boot checks them, and so do
/// labd's own tests of the header it writes.)
fn legacy_ramdisk(data: &[u8]) -> Option<(String, u32)> {
    let be32 = |at: usize| {
        data.get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    if be32(0)? != 0x2705_1956 || *data.get(30)? != 3 {
        return None;
    }
    let size = be32(12)?;
    if data.len() < 64 + size as usize {
        return None;
    }
    let name = data.get(32..64)?;
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Some((String::from_utf8_lossy(&name[..end]).into_owned(), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_splitting() {
        assert_eq!(
            split_commands("setenv tftpwindowsize 16; dhcp"),
            vec!["setenv tftpwindowsize 16", "dhcp"]
        );
        assert_eq!(
            split_args("setenv bootargs 'console=ttyS0 root=/dev/ram0'"),
            vec!["setenv", "bootargs", "console=ttyS0 root=/dev/ram0"]
        );
    }
}
