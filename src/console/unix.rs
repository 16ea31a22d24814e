//! A Unix socket that labd listens on and a QEMU board connects to.

use super::fdio::{fd_console, FdKind};
use super::{Console, ConsoleError, ConsoleIo};
use crate::driver::BoxFuture;
use std::path::PathBuf;

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
            stream
                .into_std()
                .and_then(|s| fd_console(s.into(), FdKind::Socket))
                .map_err(open_err)
        })
    }
    fn describe(&self) -> String {
        format!("unix socket {} (labd listens)", self.path.display())
    }
    fn attaches_after_power_on(&self) -> bool {
        true
    }
}
