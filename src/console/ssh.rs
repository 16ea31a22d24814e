//! LAVA's ssh device: the board's shell over OpenSSH's `ssh` client.
//!
//! An ssh board has no serial line. A job's `boot: method: ssh` opens the
//! connection (the board is already running) and the job's end closes it;
//! between jobs nothing is connected, so each job gets a fresh login shell
//! as in LAVA. The connection is a `command` console whose argv labd builds
//! itself from the board's config, never from a job: `ssh -tt` (a remote
//! pty, so the shell prints its prompt and echoes as a serial console
//! does), `BatchMode=yes` (never a prompt for a password or a passphrase),
//! `StrictHostKeyChecking=yes` against the board's own `known_hosts`
//! (labd talks only to the host that key proves), this identity only
//! (`IdentitiesOnly`, no agent), no forwarding of any kind, no escape
//! character (a test's output typed back can never be `~.`), and `-F
//! /dev/null` so that no ssh_config of the lab host changes any of it.
//!
//! The connection counts as open once ssh says it has authenticated
//! (`LogLevel=VERBOSE`'s "Authenticated to"), so a refused connection, a
//! host key that does not match and a refused key are failed opens that
//! name their cause ([`SshError`]) with what ssh said, never a shell that
//! stays silent. ssh's stderr is read for the whole session (bounded), and
//! when the session ends its last lines are the reason the console gives.
//! Nothing here logs the key's content or any secret: the argv holds only
//! file paths.
//!
//! [`SshConsole::unpack`] runs one fixed command on the board over a second
//! connection with the same options (`tar -C / -xzf -`, the overlay on its
//! stdin): LAVA copies its overlay with scp and unpacks it the same way.

use super::{Console, ConsoleError, ConsoleIo};
use crate::driver::BoxFuture;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, ReadBuf};

/// How an ssh connection failed, with what ssh said.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("ssh {target}: the host key does not match the board's known_hosts ({known_hosts}); ssh said: {said}")]
    HostKey {
        target: String,
        known_hosts: String,
        said: String,
    },
    #[error("ssh {target}: the board refused labd's key ({identity}); ssh said: {said}")]
    Auth {
        target: String,
        identity: String,
        said: String,
    },
    #[error("ssh {target}: connection refused; ssh said: {said}")]
    Refused { target: String, said: String },
    #[error("ssh {target}: {said}")]
    Failed { target: String, said: String },
    #[error("ssh {target}: no answer within {secs} s; ssh said: {said}")]
    Timeout {
        target: String,
        secs: u64,
        said: String,
    },
    #[error("ssh {target}: cannot run ssh: {source}")]
    Spawn {
        target: String,
        #[source]
        source: std::io::Error,
    },
}

/// One board's ssh settings (from `[[boards]] console = { type = "ssh" ... }`).
#[derive(Debug, Clone, PartialEq)]
pub struct SshConsole {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub identity_file: PathBuf,
    pub known_hosts: PathBuf,
    pub connect_timeout: Duration,
}

/// The most of ssh's stderr kept: its last lines say why a session ended.
const STDERR_KEEP: usize = 4096;

/// What ssh prints (at `LogLevel=VERBOSE`) once the board accepted the key.
const AUTHENTICATED: &str = "Authenticated to ";

impl SshConsole {
    /// `user@host:port`, for messages.
    pub fn target(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }

    /// The `ssh` argv, without the remote command: every option fixed
    /// here, the values from the board's config only.
    fn argv(&self, tty: bool) -> Vec<String> {
        let mut a: Vec<String> = vec!["ssh".into(), if tty { "-tt" } else { "-T" }.into()];
        a.extend(["-F".into(), "/dev/null".into()]);
        let opts = [
            "BatchMode=yes".to_owned(),
            "StrictHostKeyChecking=yes".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "GlobalKnownHostsFile=/dev/null".into(),
            "UpdateHostKeys=no".into(),
            "CheckHostIP=no".into(),
            format!("IdentityFile={}", self.identity_file.display()),
            "IdentitiesOnly=yes".into(),
            "IdentityAgent=none".into(),
            "PasswordAuthentication=no".into(),
            "KbdInteractiveAuthentication=no".into(),
            "ForwardAgent=no".into(),
            "ForwardX11=no".into(),
            "ClearAllForwardings=yes".into(),
            "PermitLocalCommand=no".into(),
            "ControlMaster=no".into(),
            "ControlPath=none".into(),
            format!("ConnectTimeout={}", self.connect_timeout.as_secs().max(1)),
            // A board that vanishes is noticed within a minute or so.
            "ServerAliveInterval=15".into(),
            "ServerAliveCountMax=4".into(),
            "LogLevel=VERBOSE".into(),
        ];
        for o in opts {
            a.push("-o".into());
            a.push(o);
        }
        a.extend(["-e".into(), "none".into()]);
        a.extend(["-p".into(), self.port.to_string()]);
        a.extend(["-l".into(), self.user.clone()]);
        // Config validation keeps the host from looking like an option;
        // `--` says so to ssh too.
        a.extend(["--".into(), self.host.clone()]);
        a
    }

    fn spawn(&self, tty: bool, remote: Option<&str>) -> Result<tokio::process::Child, SshError> {
        let argv = self.argv(tty);
        let mut cmd = tokio::process::Command::new(&argv[0]);
        crate::child::scrub(&mut cmd)
            .args(&argv[1..])
            .args(remote)
            // ssh reads no config, agent or askpass from labd's environment.
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("SSH_ASKPASS")
            .env_remove("DISPLAY")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| SshError::Spawn {
                target: self.target(),
                source,
            })
    }

    /// What ssh's words mean: a host key, a key, a refusal, or else.
    fn failure(&self, said: &str) -> SshError {
        let said = said
            .lines()
            // The big warning's banner and advice say nothing more.
            .filter(|l| !l.starts_with("@@@") && !l.trim().is_empty())
            .filter(|l| !l.starts_with("Transferred:") && !l.starts_with("Bytes per second"))
            .collect::<Vec<_>>()
            .join(" ");
        let target = self.target();
        if said.contains("Host key verification failed")
            || said.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || said.contains("host key is known for")
        {
            SshError::HostKey {
                target,
                known_hosts: self.known_hosts.display().to_string(),
                said,
            }
        } else if said.contains("Permission denied") {
            SshError::Auth {
                target,
                identity: self.identity_file.display().to_string(),
                said,
            }
        } else if said.contains("Connection refused") {
            SshError::Refused { target, said }
        } else if said.is_empty() {
            SshError::Failed {
                target,
                said: "ssh ended without a word".into(),
            }
        } else {
            SshError::Failed { target, said }
        }
    }

    /// Opens the connection: ssh runs until it says it has authenticated,
    /// or fails naming why (within the connect timeout and a margin for
    /// the key exchange).
    pub async fn open(&self) -> Result<ConsoleIo, SshError> {
        let mut child = self.spawn(true, None)?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(SshError::Failed {
                target: self.target(),
                said: "no pipes to ssh".into(),
            });
        };
        let mut lines = tokio::io::BufReader::new(stderr);
        let mut said = String::new();
        let limit = self.connect_timeout + Duration::from_secs(20);
        let authenticated = tokio::time::timeout(limit, async {
            let mut line = String::new();
            loop {
                line.clear();
                match lines.read_line(&mut line).await {
                    Ok(0) | Err(_) => return false,
                    Ok(_) if line.starts_with(AUTHENTICATED) => return true,
                    Ok(_) => {
                        if said.len() < STDERR_KEEP {
                            said.push_str(&line);
                        }
                    }
                }
            }
        })
        .await;
        match authenticated {
            Ok(true) => {}
            // ssh ended: its stderr is whole, and says why. The child is
            // dropped here, which kills and reaps it.
            Ok(false) => return Err(self.failure(&said)),
            Err(_) => {
                return Err(SshError::Timeout {
                    target: self.target(),
                    secs: limit.as_secs(),
                    said: said.trim().replace('\n', " "),
                })
            }
        }
        // From here on ssh's stderr is drained (ssh must never block on
        // it) and its last words kept for the session's end.
        let tail = Arc::new(Mutex::new(String::new()));
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let keep = tail.clone();
        tokio::spawn(async move {
            let mut line = String::new();
            loop {
                line.clear();
                match lines.read_line(&mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        // A poisoned lock still holds whole text.
                        let mut t = keep.lock().unwrap_or_else(|p| p.into_inner());
                        t.push_str(&line);
                        if t.len() > STDERR_KEEP {
                            let cut = t.len() - STDERR_KEEP;
                            let cut = (cut..t.len()).find(|i| t.is_char_boundary(*i)).unwrap_or(0);
                            t.drain(..cut);
                        }
                    }
                }
            }
            let _ = done_tx.send(());
        });
        let reader = SessionReader {
            inner: stdout,
            stderr_done: Some(done_rx),
            tail,
            target: self.target(),
        };
        Ok(super::child_io(child, reader, stdin))
    }

    /// Unpacks a gzip'd tarball at the board's `/` over a connection of its
    /// own (`tar -C / -xzf -`, the tarball on its stdin), within `limit`.
    /// The remote command is fixed here; the job gives only the bytes.
    pub async fn unpack(&self, tar_gz: Vec<u8>, limit: Duration) -> Result<(), SshError> {
        let mut child = self.spawn(false, Some("tar -C / -xzf -"))?;
        let stdin = child.stdin.take();
        let run = async move {
            if let Some(mut stdin) = stdin {
                // A failed write shows in tar's status and ssh's stderr.
                let _ = stdin.write_all(&tar_gz).await;
                drop(stdin);
            }
            child.wait_with_output().await
        };
        let out = match tokio::time::timeout(limit, run).await {
            Err(_) => {
                return Err(SshError::Timeout {
                    target: self.target(),
                    secs: limit.as_secs(),
                    said: "unpacking the overlay (tar -C / -xzf -) did not end".into(),
                })
            }
            Ok(Err(source)) => {
                return Err(SshError::Spawn {
                    target: self.target(),
                    source,
                })
            }
            Ok(Ok(out)) => out,
        };
        if out.status.success() {
            return Ok(());
        }
        let said = String::from_utf8_lossy(&out.stderr);
        // ssh's own failures are 255; anything else is tar's.
        if out.status.code() == Some(255) {
            return Err(self.failure(&said));
        }
        let said: Vec<&str> = said
            .lines()
            .filter(|l| !l.starts_with(AUTHENTICATED) && !l.starts_with("Transferred:"))
            .filter(|l| !l.starts_with("Bytes per second") && !l.trim().is_empty())
            .collect();
        Err(SshError::Failed {
            target: self.target(),
            said: format!(
                "`tar -C / -xzf -` on the board exited with {}: {}",
                out.status,
                said.join(" ")
            ),
        })
    }
}

/// ssh's stdout: at its end, the session's end is an error naming what ssh
/// last said (a closed connection, a board gone), not a bare end of file.
struct SessionReader {
    inner: tokio::process::ChildStdout,
    stderr_done: Option<tokio::sync::oneshot::Receiver<()>>,
    tail: Arc<Mutex<String>>,
    target: String,
}

impl AsyncRead for SessionReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.stderr_done.is_none() {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {}
            other => return other,
        }
        // End of file: wait for ssh's stderr to end too, so that its last
        // words are all there.
        if let Some(done) = &mut self.stderr_done {
            if Pin::new(done).poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        self.stderr_done = None;
        let said = self.tail.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let said: Vec<&str> = said
            .lines()
            .filter(|l| !l.starts_with("Transferred:") && !l.starts_with("Bytes per second"))
            .filter(|l| !l.trim().is_empty())
            .collect();
        let said = if said.is_empty() {
            "ssh ended".to_owned()
        } else {
            said.join(" ")
        };
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            format!("ssh session to {} ended: {said}", self.target),
        )))
    }
}

impl Console for SshConsole {
    fn connect(&self) -> BoxFuture<'_, Result<ConsoleIo, ConsoleError>> {
        Box::pin(async move { Ok(self.open().await?) })
    }
    fn describe(&self) -> String {
        format!("ssh {}", self.target())
    }
    fn ssh(&self) -> Option<&SshConsole> {
        Some(self)
    }
}
