//! A console served over TCP, such as ser2net: raw bytes, or telnet with
//! its commands filtered out.

use super::fdio::{fd_console, ConsoleReader, FdKind};
use super::{Console, ConsoleError, ConsoleIo};
use crate::driver::BoxFuture;

/// A console served over TCP, such as ser2net: raw bytes, or telnet.
pub struct Tcp {
    pub host: String,
    pub port: u16,
    pub telnet: bool,
}

impl Console for Tcp {
    fn connect(&self) -> BoxFuture<'_, Result<ConsoleIo, ConsoleError>> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|source| ConsoleError::Open {
                    device: format!("{}:{}", self.host, self.port),
                    source,
                })?;
            let _ = stream.set_nodelay(true);
            if !self.telnet {
                return stream
                    .into_std()
                    .and_then(|s| fd_console(s.into(), FdKind::Socket))
                    .map_err(|source| ConsoleError::Open {
                        device: format!("{}:{}", self.host, self.port),
                        source,
                    });
            }
            // Telnet: a task between the socket and a pipe takes the
            // negotiation out of what is read, answers it, and escapes what
            // is written. It ends when either side closes.
            let (user, inner) = tokio::io::duplex(64 * 1024);
            tokio::spawn(telnet_pump(stream, inner));
            let (reader, writer) = tokio::io::split(user);
            Ok(ConsoleIo {
                reader: ConsoleReader::stream(reader),
                writer: Box::new(writer),
            })
        })
    }
    fn describe(&self) -> String {
        let kind = if self.telnet { "telnet" } else { "tcp" };
        format!("{kind} {}:{}", self.host, self.port)
    }
}

async fn telnet_pump(stream: tokio::net::TcpStream, inner: tokio::io::DuplexStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut net_r, mut net_w) = stream.into_split();
    let (mut pipe_r, mut pipe_w) = tokio::io::split(inner);
    let mut filter = super::telnet::Filter::default();
    let mut from_net = vec![0u8; 16 * 1024];
    let mut from_labd = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            r = net_r.read(&mut from_net) => {
                let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                let (data, reply) = filter.feed(&from_net[..n]);
                if !reply.is_empty() && net_w.write_all(&reply).await.is_err() {
                    return;
                }
                if !data.is_empty() && pipe_w.write_all(&data).await.is_err() {
                    return;
                }
            }
            r = pipe_r.read(&mut from_labd) => {
                let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                if net_w.write_all(&super::telnet::escape(&from_labd[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}
