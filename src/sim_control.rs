//! The simulator's control protocol: how labd's simulated-board drivers (a
//! `sim` console and relay) and the tests talk to `labd-sim`.
//!
//! It exists apart from the simulator so that the daemon links only this
//! wire format, never the simulated boards themselves (they live in the
//! `labd-sim` binary). One JSON object per line each way on a Unix socket.

use serde::{Deserialize, Serialize};
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Faults a test can switch on per board.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    #[default]
    None,
    /// Prints the banner, then never shows the autoboot or bootloader prompt.
    NoPrompt,
    /// Like `NoPrompt` for the next power-on only, then boots normally (a
    /// flaky board, for retries).
    NoPromptOnce,
    /// Hangs after printing "Starting kernel ...".
    HangAfterKernel,
    /// Mixes garbage bytes into the console output.
    Garbage,
    /// Every power command fails.
    RelayFails,
    /// U-Boot's countdown takes no key (as if the key came too late, or
    /// the board's receive line were broken): it boots on its own.
    IgnoresInterrupt,
}

/// A request on the control socket (one JSON object per line).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ControlRequest {
    On { board: String },
    Off { board: String },
    Reset { board: String },
    Pty { board: String },
    Fault { board: String, fault: Fault },
    List,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ControlResponse {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boards: Option<Vec<String>>,
    /// With `List`: the boards that are powered on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub powered: Option<Vec<String>>,
}

/// Sends one control request and waits for its answer.
pub async fn control(socket: &Path, req: &ControlRequest) -> std::io::Result<ControlResponse> {
    let stream = UnixStream::connect(socket).await?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_string(req).map_err(std::io::Error::other)?;
    line.push('\n');
    w.write_all(line.as_bytes()).await?;
    let mut reader = BufReader::new(r);
    let mut resp = String::new();
    reader.read_line(&mut resp).await?;
    serde_json::from_str(&resp).map_err(std::io::Error::other)
}
