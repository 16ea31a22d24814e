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
    /// Every metric, in Prometheus text format.
    Metrics,
    /// Re-read the config file and device types.
    Reload,
    /// Stream a board's console: the idle ring, then every byte, until the
    /// client goes.
    ConsoleWatch {
        board: String,
    },
    /// Type on a board's console: `data` (text) or `base64` (bytes).
    ConsoleType {
        board: String,
        #[serde(default)]
        data: Option<String>,
        #[serde(default)]
        base64: Option<String>,
    },
}

impl RequestBody {
    /// The method's name on the wire.
    pub fn method(&self) -> &'static str {
        match self {
            RequestBody::Hello { .. } => "hello",
            RequestBody::Submit { .. } => "submit",
            RequestBody::Cancel { .. } => "cancel",
            RequestBody::Jobs { .. } => "jobs",
            RequestBody::Job { .. } => "job",
            RequestBody::Logs { .. } => "logs",
            RequestBody::Results { .. } => "results",
            RequestBody::Boards => "boards",
            RequestBody::BoardHealth { .. } => "board_health",
            RequestBody::Power { .. } => "power",
            RequestBody::ConsoleLog { .. } => "console_log",
            RequestBody::Metrics => "metrics",
            RequestBody::Reload => "reload",
            RequestBody::ConsoleWatch { .. } => "console_watch",
            RequestBody::ConsoleType { .. } => "console_type",
        }
    }
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

/// Reads one request line. `params` may be left out when every parameter
/// has its default (`{"id":2,"method":"jobs"}`), as a person typing into
/// `socat` would expect.
pub fn parse_request(line: &str) -> Result<Request, serde_json::Error> {
    let mut v: Value = serde_json::from_str(line)?;
    if let Some(obj) = v.as_object_mut() {
        let unit = matches!(
            obj.get("method").and_then(Value::as_str),
            Some("boards" | "metrics" | "reload")
        );
        if !unit && !obj.contains_key("params") {
            obj.insert("params".into(), Value::Object(Default::default()));
        }
    }
    serde_json::from_value(v)
}

/// Console bytes on the wire, exact: `{"data": text}` when they are UTF-8,
/// `{"base64": ...}` when they are not. `offset` is the position of the first
/// byte in the job's log (or 0 for the idle console).
pub fn bytes_json(offset: u64, data: &[u8]) -> Value {
    use base64::Engine;
    match std::str::from_utf8(data) {
        Ok(s) => serde_json::json!({"offset": offset, "data": s}),
        Err(_) => serde_json::json!({
            "offset": offset,
            "base64": base64::engine::general_purpose::STANDARD.encode(data),
        }),
    }
}

/// A `console_type` request for `bytes`, exact: text when UTF-8, else base64.
pub fn console_type(board: &str, bytes: &[u8]) -> RequestBody {
    use base64::Engine;
    let (data, base64) = match std::str::from_utf8(bytes) {
        Ok(s) => (Some(s.to_owned()), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    };
    RequestBody::ConsoleType {
        board: board.to_owned(),
        data,
        base64,
    }
}

/// The bytes of a [`bytes_json`] value; `None` if it holds neither form.
pub fn bytes_from_json(v: &Value) -> Option<Vec<u8>> {
    use base64::Engine;
    if let Some(s) = v.get("data").and_then(Value::as_str) {
        return Some(s.as_bytes().to_vec());
    }
    let b = v.get("base64").and_then(Value::as_str)?;
    base64::engine::general_purpose::STANDARD.decode(b).ok()
}

/// How much of `data` to send now as one chunk: all of it, unless it ends in
/// the middle of a UTF-8 character that more bytes may complete, in which
/// case the text before that character (so that a log of text goes out as
/// text however the store split it). 0 means: wait for more bytes.
pub fn utf8_chunk_len(data: &[u8], more_may_come: bool) -> usize {
    match std::str::from_utf8(data) {
        Err(e) if more_may_come && e.error_len().is_none() => e.valid_up_to(),
        _ => data.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_may_be_left_out_when_all_have_defaults() {
        let r = parse_request(r#"{"id":2,"method":"jobs"}"#).unwrap();
        assert!(matches!(r.body, RequestBody::Jobs { limit: None, .. }));
        let r = parse_request(r#"{"id":3,"method":"boards"}"#).unwrap();
        assert!(matches!(r.body, RequestBody::Boards));
        let e = parse_request(r#"{"id":4,"method":"job"}"#).unwrap_err();
        assert!(e.to_string().contains("missing field `job`"), "{e}");
        let e = parse_request(r#"{"id":5,"method":"jobs","params":{"sate":"x"}}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `sate`"), "{e}");
    }

    #[test]
    fn console_bytes_round_trip_exactly() {
        for data in [
            &b"plain text\r\n"[..],
            b"\xff\xfe\x00garbage",
            "é€".as_bytes(),
            b"",
        ] {
            let v = bytes_json(7, data);
            assert_eq!(bytes_from_json(&v).as_deref(), Some(data));
            assert_eq!(v["offset"], 7);
        }
        assert!(bytes_json(0, b"ok").get("data").is_some());
        assert!(bytes_json(0, b"\xff").get("base64").is_some());
    }

    #[test]
    fn a_split_character_waits_for_its_tail() {
        let euro = "a€".as_bytes(); // 'a' then 3 bytes
        assert_eq!(utf8_chunk_len(&euro[..2], true), 1);
        assert_eq!(utf8_chunk_len(&euro[1..3], true), 0);
        assert_eq!(utf8_chunk_len(&euro[..2], false), 2);
        assert_eq!(utf8_chunk_len(b"\xffabc", true), 4);
        assert_eq!(utf8_chunk_len(euro, true), 4);
    }
}
