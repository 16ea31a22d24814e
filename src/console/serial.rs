//! Serial devices (tokio-serial): a USB adapter, a UART, a PTY slave, and
//! a `labd-sim` board, whose PTY path the simulator hands out.

use super::fdio::{fd_console, FdKind};
use super::{Console, ConsoleError, ConsoleIo, Held};
use crate::driver::BoxFuture;
use std::os::fd::FromRawFd;
use std::path::PathBuf;

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

fn open_serial(device: &str, baud: u32) -> Result<ConsoleIo, ConsoleError> {
    open_serial_with(device, SerialSettings::plain(baud))
}

fn open_serial_with(device: &str, st: SerialSettings) -> Result<ConsoleIo, ConsoleError> {
    let open_err = |source: std::io::Error| ConsoleError::Open {
        device: device.to_owned(),
        source,
    };
    let port = tokio_serial::new(device, st.baud)
        .parity(st.parity)
        .flow_control(st.flow)
        .data_bits(st.data_bits)
        .stop_bits(st.stop_bits)
        .open_native()
        .map_err(|e| open_err(std::io::Error::other(e)))?;
    // SAFETY: into_raw_fd hands over the port's open fd, owned from here on.
    let fd =
        unsafe { std::os::fd::OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(port)) };
    fd_console(fd, FdKind::Line).map_err(open_err)
}

impl Console for Serial {
    fn connect(&self) -> BoxFuture<'_, Result<ConsoleIo, ConsoleError>> {
        Box::pin(async move {
            // The UUCP lock first: a port someone else holds is not opened at all.
            let lock: std::sync::Arc<dyn std::any::Any + Send + Sync> =
                std::sync::Arc::new(super::uucp::lock(&self.lock_dir, &self.device)?);
            let io = open_serial_with(&self.device.display().to_string(), self.settings)?;
            Ok(ConsoleIo {
                reader: io.reader.holding(lock.clone()),
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
            let req = crate::sim_control::ControlRequest::Pty {
                board: self.board.clone(),
            };
            let resp = crate::sim_control::control(&self.control, &req)
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
