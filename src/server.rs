//! The socket server: accepts connections on the Unix socket, reads request
//! lines, translates each into a [`LabRequest`] for the lab actor and writes
//! the answer back. It holds no state of its own beyond a connection.
//!
//! Each request runs in its own task so that a log follow does not hold up
//! the connection; answers are serialized through one writer task.

use crate::error::ErrorCode;
use crate::lab::{LabActor, LabReply, LabRequest};
use crate::model::{JobId, JobState};
use crate::power::PowerAction;
use crate::protocol::*;
use crate::store::{Change, JobFilter, Store};
use actix::Addr;
use serde_json::{json, Value};
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

/// Binds the socket (replacing a stale one) and serves until the process ends.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        // A live daemon on this socket must not be replaced by a second one.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{}: another labd is serving this socket", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path)
}

pub async fn serve(listener: UnixListener, lab: Addr<LabActor>, max_request: usize) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let lab = lab.clone();
                actix::spawn(async move { connection(stream, lab, max_request).await });
            }
            Err(e) => {
                tracing::error!(error = %e, "accept failed");
                tokio::task::yield_now().await;
            }
        }
    }
}

enum Line {
    Text(String),
    TooLong,
    /// Not UTF-8; the byte offset of the first bad byte.
    NotUtf8(usize),
    Eof,
}

fn text(buf: Vec<u8>) -> Line {
    match String::from_utf8(buf) {
        Ok(t) => Line::Text(t),
        Err(e) => Line::NotUtf8(e.utf8_error().valid_up_to()),
    }
}

async fn read_line(
    r: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    max: usize,
) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    let mut too_long = false;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(if buf.is_empty() && !too_long {
                Line::Eof
            } else if too_long {
                Line::TooLong
            } else {
                text(buf)
            });
        }
        let (chunk, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (&avail[..i], Some(i + 1)),
            None => (avail, None),
        };
        if !too_long {
            if buf.len() + chunk.len() > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        let used = done.unwrap_or(avail.len());
        r.consume(used);
        if done.is_some() {
            return Ok(if too_long { Line::TooLong } else { text(buf) });
        }
    }
}

async fn connection(stream: UnixStream, lab: Addr<LabActor>, max_request: usize) {
    // The submitter is who the kernel says is on the other end, not what the client claims.
    let user = stream
        .peer_cred()
        .ok()
        .map(|c| c.uid())
        .map(user_name)
        .unwrap_or_else(|| "unknown".into());
    let (r, mut w) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Response>();
    let writer = tokio::spawn(async move {
        while let Some(resp) = rx.recv().await {
            let mut line = serde_json::to_vec(&resp).unwrap_or_default();
            line.push(b'\n');
            if w.write_all(&line).await.is_err() {
                break;
            }
        }
    });
    let mut reader = BufReader::new(r);
    let mut hello = false;
    loop {
        let line = match read_line(&mut reader, max_request).await {
            Ok(Line::Text(t)) => t,
            Ok(Line::TooLong) => {
                let _ = tx.send(Response::error(
                    0,
                    WireError::new(
                        ErrorCode::RequestTooLarge,
                        format!("request line longer than {max_request} bytes"),
                    ),
                ));
                continue;
            }
            Ok(Line::NotUtf8(at)) => {
                let _ = tx.send(Response::error(
                    0,
                    WireError::new(
                        ErrorCode::BadRequest,
                        format!("request is not UTF-8 (bad byte at offset {at})"),
                    ),
                ));
                continue;
            }
            Ok(Line::Eof) | Err(_) => break,
        };
        if line.trim().is_empty() {
            continue;
        }
        let req: Request = match crate::protocol::parse_request(&line) {
            Ok(r) => r,
            Err(e) => {
                let id = serde_json::from_str::<Value>(&line)
                    .ok()
                    .and_then(|v| v.get("id").and_then(Value::as_u64))
                    .unwrap_or(0);
                let _ = tx.send(Response::error(
                    id,
                    WireError::new(
                        ErrorCode::BadRequest,
                        // Syntax errors carry a column; errors in the
                        // request's fields name the field instead.
                        match e.column() {
                            0 => format!("bad request: {e}"),
                            col => format!("bad request at column {col}: {e}"),
                        },
                    ),
                ));
                continue;
            }
        };
        if !hello {
            match req.body {
                RequestBody::Hello { version, .. } if version == PROTOCOL_VERSION => {
                    hello = true;
                    let _ = tx.send(Response::ok(req.id, json!({"version": PROTOCOL_VERSION, "server": format!("labd {}", env!("CARGO_PKG_VERSION"))})));
                }
                RequestBody::Hello { version, .. } => {
                    let _ = tx.send(Response::error(req.id, WireError::new(ErrorCode::ProtocolVersion, format!("protocol version {version} is not supported; this labd speaks {PROTOCOL_VERSION}"))));
                    break;
                }
                _ => {
                    let _ = tx.send(Response::error(
                        req.id,
                        WireError::new(
                            ErrorCode::ProtocolVersion,
                            "say hello with the protocol version first",
                        ),
                    ));
                    break;
                }
            }
            continue;
        }
        let lab = lab.clone();
        let tx = tx.clone();
        let user = user.clone();
        actix::spawn(async move { handle(req, lab, tx, user).await });
    }
    drop(tx);
    let _ = writer.await;
}

fn to_lab(body: RequestBody, user: String) -> Result<LabRequest, WireError> {
    let bad = |m: String| WireError::new(ErrorCode::BadRequest, m);
    Ok(match body {
        RequestBody::Hello { .. } => return Err(bad("hello was already said".into())),
        RequestBody::Submit { definition, file } => LabRequest::Submit {
            definition,
            file: file.unwrap_or_else(|| "<job>".into()),
            submitter: user,
        },
        RequestBody::Cancel { job } => LabRequest::Cancel { job },
        RequestBody::Jobs {
            state,
            board,
            device_type,
            limit,
            cursor,
        } => {
            let state = match state {
                Some(s) => Some(
                    JobState::parse(&s)
                        .ok_or_else(|| bad(format!("params.state: unknown job state `{s}`")))?,
                ),
                None => None,
            };
            LabRequest::Jobs(JobFilter {
                state,
                board,
                device_type,
                limit,
                cursor,
            })
        }
        RequestBody::Job { job } => LabRequest::Job { job },
        RequestBody::Results { job } => LabRequest::Results { job },
        RequestBody::Logs { job, .. } => LabRequest::LogSource { job },
        RequestBody::Boards => LabRequest::Boards,
        RequestBody::BoardHealth {
            board,
            health,
            reason,
        } => {
            let online = match health.as_str() {
                "online" => true,
                "maintenance" => false,
                other => {
                    return Err(bad(format!(
                        "params.health: `{other}` must be maintenance or online"
                    )))
                }
            };
            LabRequest::SetHealth {
                board,
                online,
                reason,
            }
        }
        RequestBody::Power { board, action } => {
            let action = match action.as_str() {
                "on" => PowerAction::On,
                "off" => PowerAction::Off,
                "reset" => PowerAction::Reset,
                other => {
                    return Err(bad(format!(
                        "params.action: `{other}` must be on, off or reset"
                    )))
                }
            };
            LabRequest::Power { board, action }
        }
        RequestBody::ConsoleLog { board } => LabRequest::IdleConsole { board },
    })
}

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid {uid}"))
}

async fn handle(
    req: Request,
    lab: Addr<LabActor>,
    tx: mpsc::UnboundedSender<Response>,
    user: String,
) {
    let id = req.id;
    let logs = match &req.body {
        RequestBody::Logs {
            job,
            offset,
            follow,
        } => Some((*job, *offset, *follow)),
        _ => None,
    };
    let lr = match to_lab(req.body, user) {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.send(Response::error(id, e));
            return;
        }
    };
    let reply = match lab.send(lr).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let _ = tx.send(Response::error(id, e.into()));
            return;
        }
        Err(e) => {
            let _ = tx.send(Response::error(
                id,
                WireError::new(ErrorCode::ShuttingDown, e.to_string()),
            ));
            return;
        }
    };
    let v = match reply {
        LabReply::Submitted { id: job, warnings } => {
            json!({"job": job, "warnings": warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>()})
        }
        LabReply::Done => json!({}),
        LabReply::Jobs(jobs) => json!({"jobs": jobs.iter().map(job_json).collect::<Vec<_>>()}),
        LabReply::Job(j, events) => {
            let mut v = job_json(&j);
            v["definition"] = json!(j.definition);
            v["events"] = json!(events);
            v
        }
        LabReply::Results(j, results) => json!({"job": job_json(&j), "results": results}),
        LabReply::Boards(b) => json!({"boards": b}),
        LabReply::Bytes(b) => crate::protocol::bytes_json(0, &b),
        LabReply::LogSource(store) => {
            let Some((job, offset, follow)) = logs else {
                return;
            };
            stream_logs(id, store, job, offset, follow, tx).await;
            return;
        }
    };
    let _ = tx.send(Response::ok(id, v));
}

fn job_json(j: &crate::model::JobRecord) -> Value {
    json!({
        "id": j.id, "name": j.name, "device_type": j.device_type, "priority": j.priority,
        "tags": j.tags, "submitter": j.submitter, "state": j.state, "health": j.health,
        "error_class": j.error_class, "error": j.error, "board": j.board,
        "submit_time": j.submit_time, "start_time": j.start_time, "end_time": j.end_time,
    })
}

/// Sends the log from `offset`; in follow mode keeps sending until the job
/// has finished and every byte is out, then sends `end`.
async fn stream_logs(
    id: u64,
    store: Store,
    job: JobId,
    mut offset: u64,
    follow: bool,
    tx: mpsc::UnboundedSender<Response>,
) {
    let fail = |e: crate::store::StoreError| {
        let _ = tx.send(Response::error(id, crate::error::ApiError::from(e).into()));
    };
    let mut changes = store.subscribe();
    loop {
        // The state is read before the log: every byte stored before the job
        // finished is then drained below, so the end never cuts the log short.
        let j = match store.job(job).await {
            Ok(j) => j,
            Err(e) => return fail(e),
        };
        let more_may_come = follow && j.state != JobState::Finished;
        loop {
            const MAX: usize = 256 * 1024;
            match store.log(job, offset, MAX).await {
                Ok((data, _)) if !data.is_empty() => {
                    let n = crate::protocol::utf8_chunk_len(&data, more_may_come);
                    if n == 0 {
                        // Only part of a character so far: wait for the rest.
                        break;
                    }
                    let ev = crate::protocol::bytes_json(offset, &data[..n]);
                    offset += n as u64;
                    if tx.send(Response::event(id, ev)).is_err() {
                        return;
                    }
                    if n < data.len() && data.len() < MAX {
                        // The held-back tail is the end of the stored log.
                        break;
                    }
                }
                Ok(_) => break,
                Err(e) => return fail(e),
            }
        }
        if !follow || j.state == JobState::Finished {
            let end = json!({"offset": offset, "state": j.state, "health": j.health});
            let _ = tx.send(Response::end(id, end));
            return;
        }
        loop {
            match changes.recv().await {
                Ok(Change::Log { id: jid, .. }) | Ok(Change::Job { id: jid, .. }) if jid == job => {
                    break
                }
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                Err(_) => return,
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}
