//! Consoles: how labd reaches a board's serial line.
//!
//! Every console kind implements [`Console`]; a board actor only sees the
//! trait. The serial driver (tokio-serial) is the real one; the simulated
//! board is reached through the very same serial driver, on a PTY whose path
//! the simulator hands out, so the demo and the tests exercise labd's real
//! console path.
//!
//! The parts: [`fdio`] reads and writes a console's fd, [`pacing`] decides
//! how often reads reach the board actor, and one file per driver (serial
//! devices and simulated boards, TCP with its telnet filter, QEMU's Unix
//! socket, labd's own pty, a connection command, an ssh session). A driver
//! only opens its console; what happens to the bytes is the board's. No
//! driver imports another, and none knows about boards, jobs or the store.
//! An ssh console is the one a board does not hold open: a job's boot
//! opens it and the job's end closes it ([`Console::ssh`]).

use crate::config::ConsoleConfig;
use std::path::PathBuf;
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::driver::BoxFuture;

mod command;
pub mod fdio;
pub mod pacing;
mod pty;
mod serial;
mod ssh;
mod tcp;
pub mod telnet;
mod unix;
pub mod uucp;

pub use command::CommandConsole;
pub use fdio::{ConsoleReader, FdKind, FdReader};
pub use pacing::{
    ReadPacer, ReadPacing, Replies, BATCH_READ_BYTES, FLOOD_BATCH_BYTES, PTY_PACING, SOCKET_PACING,
};
pub use pty::PtyConsole;
pub use serial::{Serial, SerialSettings, SimConsole};
pub use ssh::{SshConsole, SshError};
pub use tcp::Tcp;
pub use unix::UnixConsole;

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
    Locked(#[from] uucp::LockError),
    #[error("console: {0}")]
    Ssh(#[from] ssh::SshError),
}

/// An open console: a byte stream each way.
pub struct ConsoleIo {
    pub reader: ConsoleReader,
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
    /// The ssh session this console is, if it is one. Such a console is
    /// never held open by the board: a job's `boot: method: ssh` opens it
    /// and the job's end closes it.
    fn ssh(&self) -> Option<&SshConsole> {
        None
    }
}

/// A console on a child process's output and input (a command console,
/// an ssh session): the child, killed when dropped, lives as long as
/// either half.
fn child_io(
    child: tokio::process::Child,
    output: impl AsyncRead + Send + Unpin + 'static,
    input: impl AsyncWrite + Send + Unpin + 'static,
) -> ConsoleIo {
    let keep: std::sync::Arc<dyn std::any::Any + Send + Sync> =
        std::sync::Arc::new(std::sync::Mutex::new(child));
    ConsoleIo {
        reader: fdio::ConsoleReader::stream(Held {
            inner: output,
            _lock: keep.clone(),
        }),
        writer: Box::new(Held {
            inner: input,
            _lock: keep,
        }),
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
        ConsoleConfig::Pty { link } => Box::new(PtyConsole { link: link.clone() }),
        ConsoleConfig::Command {
            command,
            ready,
            ready_timeout_secs,
        } => Box::new(CommandConsole {
            argv: command.clone(),
            // Invariant: config validation compiled this pattern already.
            ready: ready
                .as_deref()
                .and_then(|r| regex::bytes::Regex::new(r).ok()),
            ready_timeout: std::time::Duration::from_secs(*ready_timeout_secs),
        }),
        ConsoleConfig::Ssh {
            host,
            port,
            user,
            identity_file,
            known_hosts,
            connect_timeout_secs,
        } => Box::new(SshConsole {
            host: host.clone(),
            port: *port,
            user: user.clone(),
            // Invariant: config validation refuses an ssh console without both.
            identity_file: identity_file.clone().unwrap_or_default(),
            known_hosts: known_hosts.clone().unwrap_or_default(),
            connect_timeout: std::time::Duration::from_secs(*connect_timeout_secs),
        }),
        ConsoleConfig::Sim { board: b } => Box::new(SimConsole {
            // Invariant: config validation refuses a sim console without sim_control.
            control: sim_control.cloned().unwrap_or_default(),
            board: b.clone().unwrap_or_else(|| board.to_owned()),
            baud: default_baud,
        }),
    }
}
