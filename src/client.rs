//! A client of the socket protocol, used by `labctl`, `labd --demo` and the tests.

use crate::error::ErrorCode;
use crate::protocol::*;
use serde_json::Value;
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Server(WireError),
    #[error("protocol: {0}")]
    Protocol(String),
}

pub struct Client {
    lines: Lines<BufReader<OwnedReadHalf>>,
    w: OwnedWriteHalf,
    next_id: u64,
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        let s = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let (r, w) = s.into_split();
        let mut c = Client {
            lines: BufReader::new(r).lines(),
            w,
            next_id: 1,
        };
        c.call(RequestBody::Hello {
            version: PROTOCOL_VERSION,
            client: Some(format!("labctl {}", env!("CARGO_PKG_VERSION"))),
        })
        .await?;
        Ok(c)
    }

    async fn send(&mut self, body: RequestBody) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_vec(&Request { id, body })
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.w.write_all(&line).await?;
        Ok(id)
    }

    async fn recv(&mut self) -> Result<Response, ClientError> {
        let line = self
            .lines
            .next_line()
            .await?
            .ok_or_else(|| ClientError::Protocol("server closed the connection".into()))?;
        serde_json::from_str(&line).map_err(|e| ClientError::Protocol(format!("{e}: {line}")))
    }

    /// Sends a request and waits for its answer.
    pub async fn call(&mut self, body: RequestBody) -> Result<Value, ClientError> {
        let id = self.send(body).await?;
        loop {
            let r = self.recv().await?;
            if r.id != id && r.id != 0 {
                continue;
            }
            if let Some(e) = r.error {
                return Err(ClientError::Server(e));
            }
            return r
                .ok
                .ok_or_else(|| ClientError::Protocol("answer without ok".into()));
        }
    }

    /// Sends a streaming request; calls `on_event` per event; returns the `end` value.
    pub async fn stream(
        &mut self,
        body: RequestBody,
        mut on_event: impl FnMut(&Value),
    ) -> Result<Value, ClientError> {
        let id = self.send(body).await?;
        loop {
            let r = self.recv().await?;
            if r.id != id {
                continue;
            }
            if let Some(e) = r.error {
                return Err(ClientError::Server(e));
            }
            if let Some(ev) = &r.event {
                on_event(ev);
            }
            if let Some(end) = r.end {
                return Ok(end);
            }
        }
    }

    /// Reads a job's console log from its start, calling `on_data` per chunk;
    /// with `follow`, until the job has ended. Returns the `end` value.
    pub async fn logs(
        &mut self,
        job: u64,
        follow: bool,
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<Value, ClientError> {
        self.stream(
            RequestBody::Logs {
                job,
                offset: 0,
                follow,
            },
            |ev| {
                if let Some(d) = crate::protocol::bytes_from_json(ev) {
                    on_data(&d);
                }
            },
        )
        .await
    }

    /// Submits a job; returns its id.
    pub async fn submit(&mut self, definition: &str, file: &str) -> Result<u64, ClientError> {
        let v = self
            .call(RequestBody::Submit {
                definition: definition.to_owned(),
                file: Some(file.to_owned()),
            })
            .await?;
        v.get("job")
            .and_then(Value::as_u64)
            .ok_or_else(|| ClientError::Protocol("submit answer without job".into()))
    }
}

impl ClientError {
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(e) => Some(e.code),
            _ => None,
        }
    }
}
