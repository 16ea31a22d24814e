//! A minimal TFTP client (RFC 1350 with the RFC 2348 blksize and RFC 2349
//! tsize options), as U-Boot's `tftp` command speaks it. The simulated board
//! uses it to really fetch its kernel, ramdisk and DTB from labd.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;

#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error("TFTP error: '{message}' ({code})")]
    Remote { code: u16, message: String },
    #[error("Retry count exceeded")]
    Timeout,
    #[error("TFTP io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("TFTP protocol error: {0}")]
    Protocol(String),
}

const RETRIES: u32 = 5;

/// Fetches `file` from `server`, calling `progress` with the bytes so far.
pub async fn fetch(
    server: SocketAddr,
    file: &str,
    blksize: u16,
    mut progress: impl FnMut(usize),
) -> Result<Vec<u8>, TftpError> {
    let sock = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).await?;
    let mut rrq = vec![0u8, 1];
    rrq.extend_from_slice(file.as_bytes());
    rrq.push(0);
    rrq.extend_from_slice(b"octet\0blksize\0");
    rrq.extend_from_slice(blksize.to_string().as_bytes());
    rrq.extend_from_slice(b"\0tsize\x000\0");
    let mut last_sent = rrq;
    let mut dest = server;
    let mut peer: Option<SocketAddr> = None;
    let mut block_size = 512usize;
    let mut expected: u16 = 1;
    let mut data = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut tries = 0;
    sock.send_to(&last_sent, dest).await?;
    loop {
        let (n, from) =
            match tokio::time::timeout(Duration::from_millis(1000), sock.recv_from(&mut buf)).await
            {
                Ok(r) => r?,
                Err(_) => {
                    tries += 1;
                    if tries > RETRIES {
                        return Err(TftpError::Timeout);
                    }
                    sock.send_to(&last_sent, dest).await?;
                    continue;
                }
            };
        if let Some(p) = peer {
            if p != from {
                continue;
            }
        } else {
            peer = Some(from);
            dest = from;
        }
        if n < 4 {
            return Err(TftpError::Protocol("short packet".into()));
        }
        let op = u16::from_be_bytes([buf[0], buf[1]]);
        match op {
            3 => {
                let block = u16::from_be_bytes([buf[2], buf[3]]);
                if block == expected {
                    data.extend_from_slice(&buf[4..n]);
                    progress(data.len());
                    tries = 0;
                    last_sent = vec![0, 4, buf[2], buf[3]];
                    sock.send_to(&last_sent, dest).await?;
                    if n - 4 < block_size {
                        return Ok(data);
                    }
                    expected = expected.wrapping_add(1);
                } else {
                    // A duplicate: acknowledge it again so the server moves on.
                    sock.send_to(&last_sent, dest).await?;
                }
            }
            5 => {
                let code = u16::from_be_bytes([buf[2], buf[3]]);
                let msg = String::from_utf8_lossy(&buf[4..n])
                    .trim_end_matches('\0')
                    .to_owned();
                return Err(TftpError::Remote { code, message: msg });
            }
            6 => {
                let opts: Vec<&[u8]> = buf[2..n].split(|&b| b == 0).collect();
                let mut i = 0;
                while i + 1 < opts.len() {
                    if opts[i].eq_ignore_ascii_case(b"blksize") {
                        block_size = String::from_utf8_lossy(opts[i + 1]).parse().unwrap_or(512);
                    }
                    i += 2;
                }
                last_sent = vec![0, 4, 0, 0];
                sock.send_to(&last_sent, dest).await?;
            }
            _ => return Err(TftpError::Protocol(format!("unexpected opcode {op}"))),
        }
    }
}
