//! The socket server: accepts connections on the Unix socket, reads request
//! lines, translates each into a [`LabRequest`] and writes the answer back.
//! Reads of job records it answers from the store ([`read_query`]); the rest
//! goes to the lab actor. It runs on a thread of its own (see [`serve`]) and
//! holds no state of its own beyond a connection.
//!
//! Each request runs in its own task so that a log follow does not hold up
//! the connection; answers are serialized through one writer task.
//!
//! ## Socket clients
//!
//! A semaphore bounds connections; whether the peer is an admin is decided
//! at accept from the kernel alone (`SO_PEERCRED`, `SO_PEERGROUPS`; no user
//! database, which may block), and a non-admin takes a share of `UserSlots`
//! (all non-admins below `max_connections` less `admin_connections`, each
//! uid below `max_connections_per_user`), so idle clients cannot lock admins
//! or other users out. The hello has a deadline from the connect, a request
//! line a deadline from its first byte. A connection answers at most
//! `max_requests_in_flight` requests at once: the reader takes a permit
//! before it reads the next line, so pipelined requests wait in the socket.
//! Each answer line takes its length from the connection's byte budget
//! (`max_queued_bytes_per_connection`) until the writer has written it, and
//! the writer has a write deadline, so a slow or stuck client only slows
//! itself. labd sets glibc's mmap threshold at start, so large buffers (log
//! chunks and their answers) go back to the system when freed instead of
//! staying in the heap after a client leaves.
//!
//! ## Authorization
//!
//! The server turns the peer's SO_PEERCRED uid and gid into a `Caller`
//! (name, admin) once per connection, off the actor thread (NSS lookups may
//! block), and passes it with every request that needs it; the lab actor
//! decides (cancel by submitter or admin; board health, power and console
//! for admins) and logs refusals. Policy lives in the lab, identity in the
//! server.
//!
//! ## Invariants
//!
//! Translates wire requests into `LabRequest`s and answers back; it keeps no
//! state beyond a connection and never writes the store. Reads of job
//! records it answers itself through `lab::read_query`, the same function
//! the lab actor uses for them: the store owns those records, and every
//! change to one is durable before it is acknowledged, so such a read needs
//! no actor. Anything about boards, the queue or a change goes to the lab
//! actor. The caller's identity comes only from the kernel (SO_PEERCRED). No
//! client can hold more than its connection slot, a partial line for
//! `request_timeout_secs`, and a bounded queue of answers. Answers are
//! serialized from typed views of the records (`WireJob` borrows a
//! `JobRecord`; the wire shape is the server's, not the store's): never
//! built as `serde_json::Value` trees first, which was a third of the daemon
//! thread under query load.

use crate::error::ErrorCode;
use crate::lab::{read_query, Caller, LabActor, LabReply, LabRequest};
use crate::model::{BoardHealth, JobId, JobState};
use crate::power::PowerAction;
use crate::protocol::*;
use crate::store::{Change, JobFilter, StoreReader};
use actix::Addr;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

/// Binds the socket (replacing a stale one) with the given mode and group:
/// only that group's members reach labd at all.
pub fn bind(path: &Path, mode: u32, group: Option<u32>) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let listener = bind_socket(path)?;
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

fn bind_socket(path: &Path) -> std::io::Result<UnixListener> {
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

/// The server's limits, from the lab config's `[limits]`.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub max_request: usize,
    pub max_connections: usize,
    /// Connections one non-admin uid may hold at once.
    pub max_connections_per_user: usize,
    /// Of `max_connections`, how many only admins may take.
    pub admin_connections: usize,
    /// A new connection must have said hello within this time.
    pub hello_timeout: Duration,
    pub request_timeout: Duration,
    pub write_timeout: Duration,
    /// Requests of one connection being answered at once (log follows
    /// included); the next is not read until one ends.
    pub max_in_flight: usize,
    /// Answer bytes queued for one connection's writer at most.
    pub max_queued_bytes: usize,
    /// Members of this group are admins (see `identify`).
    pub admin_gid: Option<u32>,
}

impl ServerLimits {
    pub fn from_config(l: &crate::config::Limits) -> Self {
        ServerLimits {
            max_request: l.max_request_bytes,
            max_connections: l.max_connections,
            max_connections_per_user: l.max_connections_per_user,
            admin_connections: l.admin_connections(),
            hello_timeout: Duration::from_secs(l.hello_timeout_secs),
            max_in_flight: l.max_requests_in_flight.max(1),
            max_queued_bytes: l.max_queued_bytes_per_connection.max(64 << 10),
            request_timeout: Duration::from_secs(l.request_timeout_secs),
            write_timeout: Duration::from_secs(l.client_write_timeout_secs),
            admin_gid: None,
        }
    }
}

/// A running server. Closing it stops accepting connections and reading
/// requests, ends log follows of jobs that have not finished with
/// `shutting_down`, and waits (bounded) for the answers in flight.
pub struct ServerHandle {
    closing: watch::Sender<bool>,
    /// Ends (every sender dropped) when every connection has ended.
    alive: mpsc::Receiver<()>,
}

impl ServerHandle {
    pub async fn close(mut self, limit: Duration) {
        let _ = self.closing.send(true);
        if tokio::time::timeout(limit, self.alive.recv())
            .await
            .is_err()
        {
            tracing::warn!(
                "clients still connected after {} s; closing anyway",
                limit.as_secs()
            );
        }
    }
}

/// Serves the socket on a thread of its own until the handle is closed.
///
/// The socket thread runs every connection: it reads and decodes requests,
/// answers reads of job records from the store itself ([`read_query`]),
/// sends everything else to the lab actor, and serializes and writes the
/// answers. So the actors' thread spends no time on the wire, and a `jobs`
/// query never waits in the lab actor's mailbox behind a burst of submits.
pub fn serve(
    listener: UnixListener,
    lab: Addr<LabActor>,
    store: StoreReader,
    limits: ServerLimits,
    metrics: crate::metrics::Metrics,
) -> std::io::Result<ServerHandle> {
    let (closing, closing_rx) = watch::channel(false);
    let (alive_tx, alive) = mpsc::channel(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("labd-socket-io")
        .build()?;
    // The listener moves to the socket thread's own reactor, here, so that
    // a failure is the caller's error rather than a server that never runs.
    let listener = {
        let _in_rt = rt.enter();
        UnixListener::from_std(listener.into_std()?)?
    };
    std::thread::Builder::new()
        .name("labd-socket".into())
        .spawn(move || {
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let slots = Arc::new(Semaphore::new(limits.max_connections));
                let all = limits.max_connections as u32;
                accept_loop(
                    listener,
                    Server {
                        lab,
                        users: Default::default(),
                        inline_store: store.reading_inline(),
                        store,
                        limits,
                        metrics,
                    },
                    slots.clone(),
                    closing_rx,
                    alive_tx,
                )
                .await;
                // The thread ends once every connection has: each holds a
                // slot until it ends.
                let _ = slots.acquire_many(all).await;
            });
        })?;
    Ok(ServerHandle { closing, alive })
}

/// What every connection shares.
#[derive(Clone)]
struct Server {
    lab: Addr<LabActor>,
    /// Connections held by non-admins, in all and by uid.
    users: std::rc::Rc<std::cell::RefCell<UserSlots>>,
    store: StoreReader,
    /// The same store, read on the socket thread (see [`small_read`]).
    inline_store: StoreReader,
    limits: ServerLimits,
    metrics: crate::metrics::Metrics,
}

async fn accept_loop(
    listener: UnixListener,
    server: Server,
    slots: Arc<Semaphore>,
    mut closing: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    let max = server.limits.max_connections;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = closing.wait_for(|c| *c) => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(max, "too many connections; refusing one");
                    let msg = format!("labd serves {max} connections at most; try again later");
                    tokio::task::spawn_local(refuse_busy(stream, msg));
                    continue;
                };
                let Ok(cred) = stream.peer_cred() else {
                    tracing::warn!("no peer credentials on a connection; closing it");
                    continue;
                };
                let (uid, gid) = (cred.uid(), cred.gid());
                let groups = peer_groups(&stream);
                let admin = admin_by_credentials(
                    uid,
                    gid,
                    groups.as_deref().unwrap_or(&[]),
                    server.limits.admin_gid,
                );
                let user_slot = if admin {
                    None
                } else {
                    match server.user_slot(uid) {
                        Ok(s) => Some(s),
                        Err(msg) => {
                            tracing::warn!(uid, "{msg}");
                            tokio::task::spawn_local(refuse_busy(stream, msg.to_string()));
                            continue;
                        }
                    }
                };
                let conn = Conn {
                    server: server.clone(),
                    closing: closing.clone(),
                    _alive: alive.clone(),
                    slot,
                    user_slot,
                    peer: (uid, gid, groups),
                };
                tokio::task::spawn_local(conn.run(stream));
            }
            Err(e) => {
                tracing::error!(error = %e, "accept failed");
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Connections held by users who are not admins: admins always keep
/// `admin_connections` of the slots, and no one uid takes more than
/// `max_connections_per_user`, so a few clients that connect and sit cannot
/// lock everyone out.
#[derive(Default)]
struct UserSlots {
    all: usize,
    by_uid: std::collections::HashMap<u32, usize>,
}

/// A non-admin's hold on [`UserSlots`], given back when dropped.
struct UserSlot {
    users: std::rc::Rc<std::cell::RefCell<UserSlots>>,
    uid: u32,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut u = self.users.borrow_mut();
        u.all = u.all.saturating_sub(1);
        if let Some(n) = u.by_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                u.by_uid.remove(&self.uid);
            }
        }
    }
}

/// Which connection limit a non-admin's new connection hit.
#[derive(Debug, thiserror::Error)]
enum SlotsFull {
    #[error("labd serves {0} connections at most to users other than admins (limits.max_connections less limits.admin_connections); try again later")]
    Users(usize),
    #[error("uid {uid} already has {open} connections open (limits.max_connections_per_user); close one first")]
    User { uid: u32, open: usize },
}

impl Server {
    /// Takes a non-admin's slot for `uid`, or says which limit is full.
    fn user_slot(&self, uid: u32) -> Result<UserSlot, SlotsFull> {
        let l = &self.limits;
        let mut u = self.users.borrow_mut();
        let room = l.max_connections.saturating_sub(l.admin_connections);
        if u.all >= room {
            return Err(SlotsFull::Users(room));
        }
        let mine = u.by_uid.get(&uid).copied().unwrap_or(0);
        if mine >= l.max_connections_per_user {
            return Err(SlotsFull::User { uid, open: mine });
        }
        u.all += 1;
        *u.by_uid.entry(uid).or_default() += 1;
        Ok(UserSlot {
            users: self.users.clone(),
            uid,
        })
    }
}

/// The most jobs a `jobs` page read on the socket thread may hold.
const INLINE_PAGE: usize = 500;

/// Whether a read of job records is small enough to run on the socket
/// thread itself, saving the two thread wake-ups of a blocking-pool read
/// (see `StoreReader::reading_inline`): one job with its events, a check that a
/// job exists, or a page of jobs found through the job or state index with
/// no filter that could make it scan the whole store. A job's results have
/// no bound on their number, nor has a filtered page: those run on the pool.
fn small_read(lr: &LabRequest) -> bool {
    match lr {
        LabRequest::Job { .. } | LabRequest::LogSource { .. } => true,
        LabRequest::Jobs(f) => {
            f.board.is_none()
                && f.device_type.is_none()
                && f.limit.unwrap_or(crate::store::DEFAULT_PAGE) <= INLINE_PAGE
        }
        _ => false,
    }
}

/// Tells a client over the connection limit why, and closes.
async fn refuse_busy(mut stream: UnixStream, msg: String) {
    let r = Response::error(0, WireError::new(ErrorCode::Busy, msg));
    let mut line = serde_json::to_vec(&r).unwrap_or_default();
    line.push(b'\n');
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&line)).await;
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

/// Reads one request line. A client may stay silent between requests for
/// as long as it likes (unless `first_by` says by when the line must have
/// arrived: the hello), but once it has started a line the whole line must
/// arrive within `timeout` of its first byte: a deadline for the line, not
/// for each read, so a byte now and then does not keep it open.
async fn read_line(
    r: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    max: usize,
    timeout: Duration,
    first_by: Option<tokio::time::Instant>,
) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    let mut too_long = false;
    let mut deadline = first_by;
    loop {
        let avail = match deadline {
            Some(at) => tokio::time::timeout_at(at, r.fill_buf())
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "request line unfinished")
                })??,
            None => r.fill_buf().await?,
        };
        let line_by = tokio::time::Instant::now() + timeout;
        deadline = Some(deadline.map_or(line_by, |d| d.min(line_by)));
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

/// One client connection and what it holds while it lives.
struct Conn {
    server: Server,
    closing: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
    slot: OwnedSemaphorePermit,
    /// A non-admin's share of the connections (see [`UserSlots`]).
    user_slot: Option<UserSlot>,
    /// The peer's uid, gid and groups, as the kernel names them.
    peer: (u32, u32, Option<Vec<u32>>),
}

/// Answers for one connection, bounded by the bytes they hold: each line
/// takes its length from the connection's budget until the writer has
/// written it, so a client that does not read slows its own requests down
/// (and is dropped at the write timeout) instead of growing labd's memory.
#[derive(Clone)]
struct Tx {
    lines: mpsc::Sender<(Vec<u8>, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
    cap: usize,
}

/// The connection's writer is gone.
struct Gone;

impl Tx {
    async fn send(&self, out: Outgoing) -> Result<(), Gone> {
        let line = out.line();
        // A line longer than the whole budget waits for all of it.
        let n = line.len().clamp(1, self.cap) as u32;
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| Gone)?;
        self.lines.send((line, permit)).await.map_err(|_| Gone)
    }

    fn is_closed(&self) -> bool {
        self.lines.is_closed()
    }

    async fn closed(&self) {
        self.lines.closed().await
    }
}

/// What a connection's writer sends: a response, or an answer whose body
/// is already JSON. The busiest answers (`jobs`, `job`, `boards`) are
/// written straight from typed views of the records, not built as
/// `serde_json::Value` trees first: a list of 50 jobs as `Value`s was a
/// third of the daemon thread's time under load.
enum Outgoing {
    Response(Response),
    Ok(u64, Vec<u8>),
}

impl From<Response> for Outgoing {
    fn from(r: Response) -> Self {
        Outgoing::Response(r)
    }
}

impl Outgoing {
    /// The line on the wire, newline included.
    fn line(self) -> Vec<u8> {
        let mut line = match self {
            Outgoing::Response(r) => serde_json::to_vec(&r).unwrap_or_default(),
            Outgoing::Ok(id, body) => {
                let mut l = format!("{{\"id\":{id},\"ok\":").into_bytes();
                l.extend_from_slice(&body);
                l.push(b'}');
                l
            }
        };
        line.push(b'\n');
        line
    }
}

impl Conn {
    async fn run(self, stream: UnixStream) {
        // The caller is who the kernel says is on the other end, not what
        // the client claims. Looking names and groups up may block (NSS),
        // so it runs off the actors' thread.
        let (uid, gid, groups) = self.peer.clone();
        let admin_gid = self.server.limits.admin_gid;
        let hello_by = tokio::time::Instant::now() + self.server.limits.hello_timeout;
        let caller = tokio::task::spawn_blocking(move || identify(uid, gid, groups, admin_gid))
            .await
            .unwrap_or_else(|_| Caller {
                uid,
                gid,
                groups: Vec::new(),
                name: format!("uid {uid}"),
                admin: false,
            });
        let (r, mut w) = stream.into_split();
        let (lines, mut rx) = mpsc::channel::<(Vec<u8>, OwnedSemaphorePermit)>(64);
        let cap = self.server.limits.max_queued_bytes;
        let tx = Tx {
            lines,
            budget: Arc::new(Semaphore::new(cap)),
            cap,
        };
        let in_flight = Arc::new(Semaphore::new(self.server.limits.max_in_flight));
        let write_timeout = self.server.limits.write_timeout;
        let slot = self.slot;
        let user_slot = self.user_slot;
        let writer = tokio::task::spawn_local(async move {
            while let Some((line, _budget)) = rx.recv().await {
                match tokio::time::timeout(write_timeout, w.write_all(&line)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        tracing::warn!("client left its answers unread; dropping it");
                        break;
                    }
                }
            }
            // The connection's slot is free before the socket closes, so a
            // client that sees the close may connect again at once.
            drop(slot);
            drop(user_slot);
            drop(w);
        });
        let mut reader = BufReader::new(r);
        let mut hello = false;
        let mut closing = self.closing.clone();
        let max = self.server.limits.max_request;
        loop {
            let first_by = (!hello).then_some(hello_by);
            let read = tokio::select! {
                l = read_line(&mut reader, max, self.server.limits.request_timeout, first_by) => l,
                _ = closing.wait_for(|c| *c) => break,
            };
            let line = match read {
                Ok(Line::Text(t)) => t,
                Ok(Line::TooLong) => {
                    let e = WireError::new(
                        ErrorCode::RequestTooLarge,
                        format!("request line longer than {max} bytes"),
                    );
                    if tx.send(Response::error(0, e).into()).await.is_err() {
                        break;
                    }
                    continue;
                }
                Ok(Line::NotUtf8(at)) => {
                    let e = WireError::new(
                        ErrorCode::BadRequest,
                        format!("request is not UTF-8 (bad byte at offset {at})"),
                    );
                    if tx.send(Response::error(0, e).into()).await.is_err() {
                        break;
                    }
                    continue;
                }
                Ok(Line::Eof) => break,
                Err(e) => {
                    if !hello && e.kind() == std::io::ErrorKind::TimedOut {
                        tracing::info!(uid, "client did not say hello in time; closing it");
                    }
                    tracing::debug!(error = %e, "client connection ends");
                    break;
                }
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
                    let e = WireError::new(
                        ErrorCode::BadRequest,
                        // Syntax errors carry a column; errors in the
                        // request's fields name the field instead.
                        match e.column() {
                            0 => format!("bad request: {e}"),
                            col => format!("bad request at column {col}: {e}"),
                        },
                    );
                    if tx.send(Response::error(id, e).into()).await.is_err() {
                        break;
                    }
                    continue;
                }
            };
            if !hello {
                let (answer, ok) = match req.body {
                    RequestBody::Hello { version, .. } if version == PROTOCOL_VERSION => (
                        Response::ok(
                            req.id,
                            json!({"version": PROTOCOL_VERSION, "server": format!("labd {}", env!("CARGO_PKG_VERSION"))}),
                        ),
                        true,
                    ),
                    RequestBody::Hello { version, .. } => (
                        Response::error(
                            req.id,
                            WireError::new(
                                ErrorCode::ProtocolVersion,
                                format!("protocol version {version} is not supported; this labd speaks {PROTOCOL_VERSION}"),
                            ),
                        ),
                        false,
                    ),
                    _ => (
                        Response::error(
                            req.id,
                            WireError::new(
                                ErrorCode::ProtocolVersion,
                                "say hello with the protocol version first",
                            ),
                        ),
                        false,
                    ),
                };
                let _ = tx.send(answer.into()).await;
                if !ok {
                    break;
                }
                hello = true;
                continue;
            }
            // At most `max_in_flight` requests of this connection are
            // answered at once: the next line is not read before one ends,
            // so a client pipelining a thousand requests holds a few
            // answers' memory, not a thousand.
            let permit = tokio::select! {
                p = in_flight.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = closing.wait_for(|c| *c) => break,
                _ = tx.closed() => break,
            };
            let server = self.server.clone();
            let tx = tx.clone();
            let caller = caller.clone();
            let closing = self.closing.clone();
            tokio::task::spawn_local(async move {
                let _permit = permit;
                let method = req.body.method();
                let follows = matches!(
                    req.body,
                    RequestBody::Logs { follow: true, .. } | RequestBody::ConsoleWatch { .. }
                );
                let started = std::time::Instant::now();
                handle(req, &server, tx, caller, closing).await;
                // A log follow lasts as long as its job: not a slow request.
                if !follows {
                    server.metrics.request(method, started.elapsed());
                }
            });
        }
        drop(tx);
        drop(reader);
        let _ = writer.await;
    }
}

fn to_lab(body: RequestBody, caller: Caller) -> Result<LabRequest, WireError> {
    let bad = |m: String| WireError::new(ErrorCode::BadRequest, m);
    Ok(match body {
        RequestBody::Hello { .. } => return Err(bad("hello was already said".into())),
        RequestBody::Submit { definition, file } => LabRequest::Submit {
            definition,
            file: file.unwrap_or_else(|| "<job>".into()),
            caller,
        },
        RequestBody::Cancel { job } => LabRequest::Cancel { job, caller },
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
            let health = match health.as_str() {
                "online" => BoardHealth::Unknown,
                "maintenance" => BoardHealth::Maintenance,
                "retired" => BoardHealth::Retired,
                other => {
                    return Err(bad(format!(
                        "params.health: `{other}` must be maintenance, retired or online"
                    )))
                }
            };
            LabRequest::SetHealth {
                board,
                health,
                reason,
                caller,
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
            LabRequest::Power {
                board,
                action,
                caller,
            }
        }
        RequestBody::ConsoleLog { board } => LabRequest::IdleConsole { board },
        RequestBody::Metrics => LabRequest::Metrics,
        RequestBody::Reload => LabRequest::Reload { caller },
        RequestBody::ConsoleWatch { board } => LabRequest::WatchConsole { board },
        RequestBody::ConsoleType {
            board,
            data,
            base64,
        } => {
            let params = json!({ "data": data, "base64": base64 });
            let data = crate::protocol::bytes_from_json(&params)
                .ok_or_else(|| bad("params: give `data` (text) or `base64` (bytes)".into()))?;
            LabRequest::TypeConsole {
                board,
                data,
                caller,
            }
        }
    })
}

/// Serves `GET /metrics` over HTTP for Prometheus: one request per
/// connection, HTTP/1.0 style, so no HTTP crate is needed for it.
pub async fn serve_metrics_http(listener: tokio::net::TcpListener, lab: Addr<LabActor>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::task::yield_now().await;
            continue;
        };
        let lab = lab.clone();
        actix::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), metrics_http(stream, lab)).await;
        });
    }
}

async fn metrics_http(stream: tokio::net::TcpStream, lab: Addr<LabActor>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r).take(16 * 1024);
    let mut request_line = String::new();
    r.read_line(&mut request_line).await?;
    // Read the headers to their end; none of them matters here.
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).await? == 0 || h.trim().is_empty() {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = if method != "GET" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_owned(),
        )
    } else if path != "/metrics" && path != "/" {
        ("404 Not Found", "text/plain", "try /metrics\n".to_owned())
    } else {
        match lab.send(LabRequest::Metrics).await {
            Ok(Ok(LabReply::Text(t))) => ("200 OK", "text/plain; version=0.0.4", t),
            _ => (
                "503 Service Unavailable",
                "text/plain",
                "labd is stopping\n".to_owned(),
            ),
        }
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    w.write_all(head.as_bytes()).await?;
    w.write_all(body.as_bytes()).await?;
    w.shutdown().await
}

/// The peer's supplementary groups as the kernel has them
/// (`SO_PEERGROUPS`, Linux 4.13): None where the kernel cannot say.
fn peer_groups(stream: &UnixStream) -> Option<Vec<u32>> {
    use nix::libc;
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    for _ in 0..2 {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer and its length describe `groups`, which
        // outlives the call; the kernel writes at most `len` bytes.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if r == 0 {
            groups.truncate(n);
            return Some(groups);
        }
        // ERANGE: the kernel said how much room it needs.
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) || n <= groups.len()
        {
            return None;
        }
        groups.resize(n, 0);
    }
    None
}

/// Whether the peer's credentials make it an admin: root, labd's own user,
/// or the admin group as its group or among its groups. Decided from the
/// kernel's word alone at accept (no user database, which may block).
fn admin_by_credentials(uid: u32, gid: u32, groups: &[u32], admin_gid: Option<u32>) -> bool {
    uid == 0
        || uid == nix::unistd::geteuid().as_raw()
        || admin_gid.is_some_and(|a| gid == a || groups.contains(&a))
}

/// Names the caller and decides whether it is an admin: by its credentials
/// (see [`admin_by_credentials`]), or as a member of the admin group in the
/// group database (joined since the peer logged in). Groups come from the
/// kernel, or where it cannot say, the user database.
fn identify(uid: u32, gid: u32, groups: Option<Vec<u32>>, admin_gid: Option<u32>) -> Caller {
    use nix::unistd::{Uid, User};
    let user = User::from_uid(Uid::from_raw(uid)).ok().flatten();
    let name = user
        .as_ref()
        .map(|u| u.name.clone())
        .unwrap_or_else(|| format!("uid {uid}"));
    // The user database is asked only when its answer matters.
    let listed = (groups.is_none() || admin_gid.is_some())
        .then(|| {
            user.as_ref()
                .and_then(|u| crate::local_file::listed_groups(&u.name, gid))
        })
        .flatten();
    let admin = admin_by_credentials(uid, gid, groups.as_deref().unwrap_or(&[]), admin_gid)
        || admin_gid.is_some_and(|a| listed.as_ref().is_some_and(|l| l.contains(&a)));
    Caller {
        uid,
        gid,
        groups: groups.or(listed).unwrap_or_default(),
        name,
        admin,
    }
}

async fn handle(
    req: Request,
    server: &Server,
    tx: Tx,
    caller: Caller,
    closing: watch::Receiver<bool>,
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
    let answer: Outgoing = match to_lab(req.body, caller) {
        Err(e) => Response::error(id, e).into(),
        Ok(lr) => match if lr.reads_records() {
            let store = if small_read(&lr) {
                &server.inline_store
            } else {
                &server.store
            };
            Ok(read_query(store, lr).await)
        } else {
            server.lab.send(lr).await
        } {
            Ok(Ok(LabReply::ConsoleStream(ring, rx))) => {
                stream_console(id, ring, rx, tx, closing).await;
                return;
            }
            Ok(Ok(LabReply::LogSource(store))) => {
                if let Some((job, offset, follow)) = logs {
                    stream_logs(id, store, job, offset, follow, tx, closing).await;
                }
                return;
            }
            Ok(Ok(reply)) => Outgoing::Ok(id, reply_body(reply)),
            Ok(Err(e)) => Response::error(id, e.into()).into(),
            Err(e) => {
                Response::error(id, WireError::new(ErrorCode::ShuttingDown, e.to_string())).into()
            }
        },
    };
    let _ = tx.send(answer).await;
}

/// A job as the socket shows it: the record without its definition and
/// submitter uid.
#[derive(serde::Serialize)]
struct WireJob<'a> {
    id: crate::model::JobId,
    name: &'a str,
    device_type: &'a str,
    priority: u8,
    tags: &'a [String],
    submitter: &'a str,
    state: crate::model::JobState,
    health: crate::model::JobHealth,
    error_class: Option<crate::model::ErrorClass>,
    error: Option<&'a str>,
    board: Option<&'a str>,
    submit_time: u64,
    start_time: Option<u64>,
    end_time: Option<u64>,
    health_check: bool,
    log_pruned: bool,
    retry_of: Option<crate::model::JobId>,
    attempt: u32,
    timing: &'a [crate::model::PhaseTime],
    /// The lava-server's id of the job, for a job labd runs as its worker.
    #[serde(skip_serializing_if = "Option::is_none")]
    lava_job: Option<u64>,
    /// Only in a `job` answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    definition: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<&'a [crate::model::JobEvent]>,
}

impl<'a> WireJob<'a> {
    fn of(j: &'a crate::model::JobRecord) -> Self {
        WireJob {
            id: j.id,
            name: &j.name,
            device_type: &j.device_type,
            priority: j.priority,
            tags: &j.tags,
            submitter: &j.submitter,
            state: j.state,
            health: j.health,
            error_class: j.error_class,
            error: j.error.as_deref(),
            board: j.board.as_deref(),
            submit_time: j.submit_time,
            start_time: j.start_time,
            end_time: j.end_time,
            health_check: j.health_check,
            log_pruned: j.log_pruned,
            retry_of: j.retry_of,
            attempt: j.attempt,
            timing: &j.timing,
            lava_job: j.lava.as_ref().map(|l| l.id),
            definition: None,
            events: None,
        }
    }
}

/// A reply's body as JSON, written straight from typed views of the records.
fn reply_body(reply: LabReply) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Jobs<'a> {
        jobs: Vec<WireJob<'a>>,
    }
    #[derive(serde::Serialize)]
    struct Boards<'a> {
        boards: &'a [crate::lab::BoardInfo],
        /// Jobs waiting for a board (what `labctl top` shows).
        queued: usize,
    }
    #[derive(serde::Serialize)]
    struct Results<'a> {
        job: WireJob<'a>,
        results: &'a [crate::model::TestCase],
    }
    let body = match &reply {
        LabReply::Submitted { id: job, warnings } => serde_json::to_vec(
            &json!({"job": job, "warnings": warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>()}),
        ),
        LabReply::Jobs(jobs) => serde_json::to_vec(&Jobs {
            jobs: jobs.iter().map(WireJob::of).collect(),
        }),
        LabReply::Job(j, events) => serde_json::to_vec(&WireJob {
            definition: Some(&j.definition),
            events: Some(events),
            ..WireJob::of(j)
        }),
        LabReply::Results(j, results) => serde_json::to_vec(&Results {
            job: WireJob::of(j),
            results,
        }),
        LabReply::Boards(boards, queued) => serde_json::to_vec(&Boards {
            boards,
            queued: *queued,
        }),
        LabReply::Bytes(b) => serde_json::to_vec(&crate::protocol::bytes_json(0, b)),
        LabReply::Text(t) => serde_json::to_vec(&json!({ "text": t })),
        LabReply::Reloaded(changes) => serde_json::to_vec(&json!({ "changes": changes })),
        // Streams are answered by `stream_console` and `stream_logs`, never
        // as one value.
        LabReply::Done | LabReply::ConsoleStream(..) | LabReply::LogSource(_) => Ok(b"{}".to_vec()),
    };
    // Serializing these types cannot fail: every map key is a string.
    body.unwrap_or_else(|_| b"{}".to_vec())
}

/// Sends the log from `offset`; in follow mode keeps sending until the job
/// has finished and every byte is out, then sends `end`. When the server
/// closes, a follow of a job that has not finished ends with `shutting_down`.
async fn stream_logs(
    id: u64,
    store: StoreReader,
    job: JobId,
    mut offset: u64,
    follow: bool,
    tx: Tx,
    mut closing: watch::Receiver<bool>,
) {
    let mut changes = store.subscribe();
    let mut closed = false;
    loop {
        // The state is read before the log: every byte stored before the job
        // finished is then drained below, so the end never cuts the log short.
        let j = match store.job(job).await {
            Ok(j) => j,
            Err(e) => {
                let _ = tx
                    .send(Response::error(id, crate::error::ApiError::from(e).into()).into())
                    .await;
                return;
            }
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
                    if tx.send(Response::event(id, ev).into()).await.is_err() {
                        return;
                    }
                    if n < data.len() && data.len() < MAX {
                        // The held-back tail is the end of the stored log.
                        break;
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    let _ = tx
                        .send(Response::error(id, crate::error::ApiError::from(e).into()).into())
                        .await;
                    return;
                }
            }
        }
        if !follow || j.state == JobState::Finished {
            let end = json!({"offset": offset, "state": j.state, "health": j.health});
            let _ = tx.send(Response::end(id, end).into()).await;
            return;
        }
        if closed {
            let e = WireError::new(
                ErrorCode::ShuttingDown,
                format!("labd is shutting down; job {job} is {}", j.state),
            );
            let _ = tx.send(Response::error(id, e).into()).await;
            return;
        }
        loop {
            let change = tokio::select! {
                c = changes.recv() => c,
                // One more round: what is stored goes out, then the end or
                // the shutdown error.
                _ = closing.wait_for(|c| *c), if !closed => {
                    closed = true;
                    break;
                }
            };
            match change {
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

/// Streams a board's console: the idle ring first, then every byte as the
/// board prints it, until the client goes, the board's actor goes, or the
/// server closes. A watcher too slow to keep up is told how much it missed.
async fn stream_console(
    id: u64,
    ring: Vec<u8>,
    mut rx: tokio::sync::broadcast::Receiver<Vec<u8>>,
    tx: Tx,
    mut closing: watch::Receiver<bool>,
) {
    // The first event goes out at once, even empty: it tells the watcher
    // it is attached.
    if tx
        .send(Response::event(id, bytes_json(0, &ring)).into())
        .await
        .is_err()
    {
        return;
    }
    loop {
        let next = tokio::select! {
            n = rx.recv() => n,
            _ = closing.wait_for(|c| *c) => break,
            _ = tx.closed() => return,
        };
        let ev = match next {
            Ok(bytes) => bytes_json(0, &bytes),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                json!({ "data": format!("\r\n[labd: {n} console chunks missed: this watcher was too slow]\r\n") })
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        };
        if tx.send(Response::event(id, ev).into()).await.is_err() {
            return;
        }
    }
    let _ = tx.send(Response::end(id, json!({})).into()).await;
}
