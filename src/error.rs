//! Stable error codes and source locations shared by every module boundary.
//!
//! Each module has its own `thiserror` enum; each of those maps to one
//! [`ErrorCode`] so that clients on the socket can match on a code that never
//! changes, while the message stays free to improve.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where in an input a problem is: a file (or `<job>`), a key path, a line and a column.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut wrote = false;
        if let Some(file) = &self.file {
            write!(f, "{file}")?;
            wrote = true;
        }
        if let Some(line) = self.line {
            if wrote {
                write!(f, ":")?;
            }
            write!(f, "{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
            wrote = true;
        }
        if let Some(path) = &self.path {
            if wrote {
                write!(f, " ")?;
            }
            write!(f, "({path})")?;
        }
        Ok(())
    }
}

/// Stable error codes used on the socket. Never renumber or rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request line was not valid JSON or not a known request.
    BadRequest,
    /// The request line was longer than the server's limit.
    RequestTooLarge,
    /// The client did not say hello with a supported protocol version.
    ProtocolVersion,
    /// The job definition is not valid YAML or not a valid job.
    InvalidJob,
    /// The job uses a LAVA feature labd does not support.
    Unsupported,
    /// No such job.
    NoSuchJob,
    /// No such board.
    NoSuchBoard,
    /// No board of the job's device type exists in this lab.
    NoSuchDeviceType,
    /// The request is not allowed in the object's current state.
    InvalidState,
    /// The store failed; the request changed nothing.
    Store,
    /// The daemon is shutting down.
    ShuttingDown,
    /// Too many connections; try again later.
    Busy,
    /// The lab config or a device type is invalid (on a reload).
    InvalidConfig,
    /// The caller may not do this (see the lab config's `[auth]`).
    PermissionDenied,
    /// A power or console operation failed.
    Hardware,
    /// An invariant broke inside labd.
    Internal,
    /// The store's disk is full (or failing): submits are refused until
    /// space returns; reads go on. The message names the path and the free space.
    NoSpace,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::RequestTooLarge => "request_too_large",
            ErrorCode::ProtocolVersion => "protocol_version",
            ErrorCode::InvalidJob => "invalid_job",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::NoSuchJob => "no_such_job",
            ErrorCode::NoSuchBoard => "no_such_board",
            ErrorCode::NoSuchDeviceType => "no_such_device_type",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::Store => "store",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Busy => "busy",
            ErrorCode::InvalidConfig => "invalid_config",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::Hardware => "hardware",
            ErrorCode::Internal => "internal",
            ErrorCode::NoSpace => "no_space",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as the lab actor answers a request; the socket layer turns it
/// into its wire form without looking inside.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub location: Option<Location>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            location: None,
        }
    }
}

/// A lab config or device-type file is not valid: one type for both, since
/// both are files a lab administrator wrote, and both are reported the same
/// way (the message names the file, line and column, or the file and the
/// I/O error).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{location}: {message}")]
    Invalid { location: Location, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A config or device-type error on the wire: its message already names
/// the file, line and column; the location is kept for the fields too.
impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> Self {
        let location = match &e {
            ConfigError::Invalid { location, .. } => Some(location.clone()),
            ConfigError::Io { .. } => None,
        };
        ApiError {
            code: ErrorCode::InvalidConfig,
            message: e.to_string(),
            location,
        }
    }
}
