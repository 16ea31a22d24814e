//! Wire types of the socket protocol (see `PROTOCOL.md`): newline-delimited
//! JSON on a Unix stream socket. These are separate from the core types so
//! that the protocol stays stable while the internals change.

use crate::error::{ApiError, ErrorCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    #[serde(flatten)]
    pub body: RequestBody,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(
    tag = "method",
    content = "params",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum RequestBody {
    Hello {
        version: u32,
        #[serde(default)]
        client: Option<String>,
    },
    Submit {
        definition: String,
        #[serde(default)]
        file: Option<String>,
    },
    Cancel {
        job: u64,
    },
    Jobs {
        #[serde(default)]
        state: Option<String>,
        #[serde(default)]
        board: Option<String>,
        #[serde(default)]
        device_type: Option<String>,
        #[serde(default)]
        limit: Option<usize>,
        #[serde(default)]
        cursor: Option<u64>,
    },
    Job {
        job: u64,
    },
    Logs {
        job: u64,
        #[serde(default)]
        offset: u64,
        #[serde(default)]
        follow: bool,
    },
    Results {
        job: u64,
    },
    Boards,
    BoardHealth {
        board: String,
        /// `maintenance` or `online`.
        health: String,
        #[serde(default)]
        reason: Option<String>,
    },
    Power {
        board: String,
        /// `on`, `off` or `reset`.
        action: String,
    },
    ConsoleLog {
        board: String,
    },
}

/// An error on the wire: a stable code, a message, and where, when it applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
// The message of a located error already names its locations (a job error may
// carry several), so Display shows the message and the code only.
#[error("{message} [{code}]")]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
            file: None,
            path: None,
            line: None,
            column: None,
        }
    }
}

impl From<ApiError> for WireError {
    fn from(e: ApiError) -> Self {
        let loc = e.location.unwrap_or_default();
        WireError {
            code: e.code,
            message: e.message,
            file: loc.file,
            path: loc.path,
            line: loc.line,
            column: loc.column,
        }
    }
}

/// One response line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Value>,
}

impl Response {
    pub fn ok(id: u64, v: Value) -> Self {
        Response {
            id,
            ok: Some(v),
            error: None,
            event: None,
            end: None,
        }
    }
    pub fn error(id: u64, e: WireError) -> Self {
        Response {
            id,
            ok: None,
            error: Some(e),
            event: None,
            end: None,
        }
    }
    pub fn event(id: u64, v: Value) -> Self {
        Response {
            id,
            ok: None,
            error: None,
            event: Some(v),
            end: None,
        }
    }
    pub fn end(id: u64, v: Value) -> Self {
        Response {
            id,
            ok: None,
            error: None,
            event: None,
            end: Some(v),
        }
    }
}
