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
}

/// A serial device: a USB adapter, a UART, or a PTY slave.
pub struct Serial {
    pub device: PathBuf,
    pub baud: u32,
}

fn open_serial(device: &str, baud: u32) -> Result<ConsoleIo, ConsoleError> {
    let port = tokio_serial::new(device, baud)
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
        Box::pin(async move { open_serial(&self.device.display().to_string(), self.baud) })
    }
    fn describe(&self) -> String {
        format!("serial {} at {}", self.device.display(), self.baud)
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

/// Builds the console driver a board's config asks for.
pub fn from_config(
    board: &str,
    cfg: &ConsoleConfig,
    default_baud: u32,
    sim_control: Option<&PathBuf>,
) -> Box<dyn Console> {
    match cfg {
        ConsoleConfig::Serial { device, baud } => Box::new(Serial {
            device: device.clone(),
            baud: baud.unwrap_or(default_baud),
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
        ConsoleConfig::Sim { board: b } => Box::new(SimConsole {
            // Invariant: config validation refuses a sim console without sim_control.
            control: sim_control.cloned().unwrap_or_default(),
            board: b.clone().unwrap_or_else(|| board.to_owned()),
            baud: default_baud,
        }),
    }
}
