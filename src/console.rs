//! Consoles: how labd reaches a board's serial line.
//!
//! Every console kind implements [`Console`]; a board actor only sees the
//! trait. The serial driver (tokio-serial) is the real one; the simulated
//! board is reached through the very same serial driver, on a PTY whose path
//! the simulator hands out, so the demo and the tests exercise labd's real
//! console path.

use crate::config::ConsoleConfig;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_serial::SerialPortBuilderExt;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("console {device}: {source}")]
    Open {
        device: String,
        #[source]
        source: std::io::Error,
    },
    #[error("console: simulator: {0}")]
    Sim(String),
    #[error("console: {0}")]
    Locked(#[from] crate::uucp::LockError),
}

/// An open console: a byte stream each way.
pub struct ConsoleIo {
    pub reader: Box<dyn AsyncRead + Send + Unpin>,
    pub writer: Box<dyn AsyncWrite + Send + Unpin>,
}

pub trait Console: Send + Sync {
    /// Opens (or re-opens) the console.
    fn connect(&self) -> BoxFuture<'_, Result<ConsoleIo, ConsoleError>>;
    /// A short human description, for logs.
    fn describe(&self) -> String;
    /// True when the board itself connects only once powered (a QEMU
    /// process started by power-on): then power must not wait for the
    /// console.
    fn attaches_after_power_on(&self) -> bool {
        false
    }
}

/// A serial device: a USB adapter, a UART, or a PTY slave.
pub struct Serial {
    pub device: PathBuf,
    pub settings: SerialSettings,
    /// Where UUCP lock files live (`/run/lock`).
    pub lock_dir: PathBuf,
}

/// Line settings of a serial port.
#[derive(Debug, Clone, Copy)]
pub struct SerialSettings {
    pub baud: u32,
    pub parity: tokio_serial::Parity,
    pub flow: tokio_serial::FlowControl,
    pub data_bits: tokio_serial::DataBits,
    pub stop_bits: tokio_serial::StopBits,
}

impl SerialSettings {
    /// 8N1 without flow control, at `baud`.
    pub fn plain(baud: u32) -> Self {
        SerialSettings {
            baud,
            parity: tokio_serial::Parity::None,
            flow: tokio_serial::FlowControl::None,
            data_bits: tokio_serial::DataBits::Eight,
            stop_bits: tokio_serial::StopBits::One,
        }
    }
}

/// Keeps something (a UUCP lock, a child process) for as long as either
/// half of a console lives.
struct Held<T> {
    inner: T,
    _lock: std::sync::Arc<dyn std::any::Any + Send + Sync>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Held<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Held<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn open_serial(device: &str, baud: u32) -> Result<ConsoleIo, ConsoleError> {
    open_serial_with(device, SerialSettings::plain(baud))
}

fn open_serial_with(device: &str, st: SerialSettings) -> Result<ConsoleIo, ConsoleError> {
    let port = tokio_serial::new(device, st.baud)
        .parity(st.parity)
        .flow_control(st.flow)
        .data_bits(st.data_bits)
        .stop_bits(st.stop_bits)
        .open_native_async()
        .map_err(|e| ConsoleError::Open {
            device: device.to_owned(),
            source: std::io::Error::other(e),
        })?;
    let (reader, writer) = tokio::io::split(port);
    Ok(ConsoleIo {
        reader: Box::new(reader),
        writer: Box::new(writer),
    })
}

impl Console for Serial {
    fn connect(&self) -> BoxFuture<'_, Result<ConsoleIo, ConsoleError>> {
        Box::pin(async move {
            // The UUCP lock first: a port someone else holds is not opened at all.
            let lock: std::sync::Arc<dyn std::any::Any + Send + Sync> =
                std::sync::Arc::new(crate::uucp::lock(&self.lock_dir, &self.device)?);
            let io = open_serial_with(&self.device.display().to_string(), self.settings)?;
            Ok(ConsoleIo {
                reader: Box::new(Held {
                    inner: io.reader,
                    _lock: lock.clone(),
                }),
                writer: Box::new(Held {
                    inner: io.writer,
                    _lock: lock,
                }),
            })
        })
    }
    fn describe(&self) -> String {
        format!("serial {} at {}", self.device.display(), self.settings.baud)
    }
}

/// A `labd-sim` board: its PTY path comes from the simulator, then it is a serial device.
pub struct SimConsole {
    pub control: PathBuf,
    pub board: String,
    pub baud: u32,
}

impl Console for SimConsole {
    fn connect(&self) -> BoxFuture<'_, Result<ConsoleIo, ConsoleError>> {
        Box::pin(async move {
            let req = crate::sim::ControlRequest::Pty {
                board: self.board.clone(),
            };
            let resp = crate::sim::control(&self.control, &req)
                .await
                .map_err(|e| ConsoleError::Sim(format!("{}: {e}", self.control.display())))?;
            let path = match (resp.ok, resp.path) {
                (true, Some(p)) => p,
                _ => return Err(ConsoleError::Sim(resp.error.unwrap_or_default())),
            };
            open_serial(&path, self.baud)
        })
    }
    fn describe(&self) -> String {
        format!("sim board {} via {}", self.board, self.control.display())
    }
}

/// A console served over TCP, such as ser2net: raw bytes, or telnet.
pub struct Tcp {
    pub host: String,
    pub port: u16,
    pub telnet: bool,
}

impl Console for Tcp {
    fn connect(&self) -> BoxFuture<'_, Result<ConsoleIo, ConsoleError>> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|source| ConsoleError::Open {
                    device: format!("{}:{}", self.host, self.port),
                    source,
                })?;
            let _ = stream.set_nodelay(true);
            if !self.telnet {
                let (reader, writer) = stream.into_split();
                return Ok(ConsoleIo {
                    reader: Box::new(reader),
                    writer: Box::new(writer),
                });
            }
            // Telnet: a task between the socket and a pipe takes the
            // negotiation out of what is read, answers it, and escapes what
            // is written. It ends when either side closes.
            let (user, inner) = tokio::io::duplex(64 * 1024);
            tokio::spawn(telnet_pump(stream, inner));
            let (reader, writer) = tokio::io::split(user);
            Ok(ConsoleIo {
                reader: Box::new(reader),
                writer: Box::new(writer),
            })
        })
    }
    fn describe(&self) -> String {
        let kind = if self.telnet { "telnet" } else { "tcp" };
        format!("{kind} {}:{}", self.host, self.port)
    }
}

async fn telnet_pump(stream: tokio::net::TcpStream, inner: tokio::io::DuplexStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut net_r, mut net_w) = stream.into_split();
    let (mut pipe_r, mut pipe_w) = tokio::io::split(inner);
    let mut filter = crate::telnet::Filter::default();
    let mut from_net = vec![0u8; 16 * 1024];
    let mut from_labd = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            r = net_r.read(&mut from_net) => {
                let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                let (data, reply) = filter.feed(&from_net[..n]);
                if !reply.is_empty() && net_w.write_all(&reply).await.is_err() {
                    return;
                }
                if !data.is_empty() && pipe_w.write_all(&data).await.is_err() {
                    return;
                }
            }
            r = pipe_r.read(&mut from_labd) => {
                let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                if net_w.write_all(&crate::telnet::escape(&from_labd[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A Unix socket that labd listens on and the board connects to: QEMU's
/// `-chardev socket,path=...,server=off`. The listener lives as long as the
/// board's console, so the console outlives every power cycle (each QEMU
/// run connects anew); each `connect` takes the next connection.
pub struct UnixConsole {
    pub path: PathBuf,
    listener: tokio::sync::Mutex<Option<tokio::net::UnixListener>>,
}

impl UnixConsole {
    pub fn new(path: PathBuf) -> Self {
        UnixConsole {
            path,
            listener: tokio::sync::Mutex::new(None),
        }
    }
}

impl Console for UnixConsole {
    fn connect(&self) -> BoxFuture<'_, Result<ConsoleIo, ConsoleError>> {
        Box::pin(async move {
            let open_err = |source| ConsoleError::Open {
                device: self.path.display().to_string(),
                source,
            };
            let mut guard = self.listener.lock().await;
            if guard.is_none() {
                if let Some(dir) = self.path.parent() {
                    std::fs::create_dir_all(dir).map_err(open_err)?;
                }
                // A socket file left by an earlier run is stale: nobody can
                // listen on it but this board's console.
                let _ = std::fs::remove_file(&self.path);
                *guard = Some(tokio::net::UnixListener::bind(&self.path).map_err(open_err)?);
            }
            let Some(listener) = guard.as_ref() else {
                return Err(open_err(std::io::Error::other("no listener")));
            };
            let (stream, _) = listener.accept().await.map_err(open_err)?;
            let (reader, writer) = stream.into_split();
            Ok(ConsoleIo {
                reader: Box::new(reader),
                writer: Box::new(writer),
            })
        })
    }
    fn describe(&self) -> String {
        format!("unix socket {} (labd listens)", self.path.display())
    }
    fn attaches_after_power_on(&self) -> bool {
        true
    }
}

/// LAVA's `connection_command`: a program (argv, no shell) whose stdin and
/// stdout are the console, such as `telnet consoles.lab 7001`. It is killed
/// when the console closes; its exit is the console's end.
pub struct CommandConsole {
    pub argv: Vec<String>,
}

impl Console for CommandConsole {
    fn connect(&self) -> BoxFuture<'_, Result<ConsoleIo, ConsoleError>> {
        Box::pin(async move {
            let open_err = |source| ConsoleError::Open {
                device: self.argv.join(" "),
                source,
            };
            let (prog, args) = self
                .argv
                .split_first()
                .ok_or_else(|| open_err(std::io::Error::other("empty command")))?;
            let mut cmd = tokio::process::Command::new(prog);
            let mut child = crate::systemd::scrub(&mut cmd)
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(open_err)?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(open_err(std::io::Error::other("no pipes to the command")));
            };
            let keep: std::sync::Arc<dyn std::any::Any + Send + Sync> =
                std::sync::Arc::new(std::sync::Mutex::new(child));
            Ok(ConsoleIo {
                reader: Box::new(Held {
                    inner: stdout,
                    _lock: keep.clone(),
                }),
                writer: Box::new(Held {
                    inner: stdin,
                    _lock: keep,
                }),
            })
        })
    }
    fn describe(&self) -> String {
        format!("command {:?}", self.argv)
    }
}

/// Builds the console driver a board's config asks for.
pub fn from_config(
    board: &str,
    cfg: &ConsoleConfig,
    default_baud: u32,
    sim_control: Option<&PathBuf>,
    lock_dir: &std::path::Path,
) -> Box<dyn Console> {
    match cfg {
        ConsoleConfig::Serial {
            device,
            baud,
            parity,
            flow_control,
            data_bits,
            stop_bits,
        } => Box::new(Serial {
            device: device.clone(),
            settings: SerialSettings {
                baud: baud.unwrap_or(default_baud),
                parity: match parity {
                    crate::config::Parity::None => tokio_serial::Parity::None,
                    crate::config::Parity::Even => tokio_serial::Parity::Even,
                    crate::config::Parity::Odd => tokio_serial::Parity::Odd,
                },
                flow: match flow_control {
                    crate::config::FlowControl::None => tokio_serial::FlowControl::None,
                    crate::config::FlowControl::Software => tokio_serial::FlowControl::Software,
                    crate::config::FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
                },
                data_bits: match data_bits {
                    5 => tokio_serial::DataBits::Five,
                    6 => tokio_serial::DataBits::Six,
                    7 => tokio_serial::DataBits::Seven,
                    _ => tokio_serial::DataBits::Eight,
                },
                stop_bits: if *stop_bits == 2 {
                    tokio_serial::StopBits::Two
                } else {
                    tokio_serial::StopBits::One
                },
            },
            lock_dir: lock_dir.to_path_buf(),
        }),
        ConsoleConfig::Tcp {
            host,
            port,
            protocol,
        } => Box::new(Tcp {
            host: host.clone(),
            port: *port,
            telnet: *protocol == crate::config::TcpProtocol::Telnet,
        }),
        ConsoleConfig::Unix { path } => Box::new(UnixConsole::new(path.clone())),
        ConsoleConfig::Command { command } => Box::new(CommandConsole {
            argv: command.clone(),
        }),
        ConsoleConfig::Sim { board: b } => Box::new(SimConsole {
            // Invariant: config validation refuses a sim console without sim_control.
            control: sim_control.cloned().unwrap_or_default(),
            board: b.clone().unwrap_or_else(|| board.to_owned()),
            baud: default_baud,
        }),
    }
}
