//! LAVA's `connection_command`: a program whose stdin and stdout are the
//! console.

use super::{Console, ConsoleError, ConsoleIo};
use crate::driver::BoxFuture;
use tokio::io::AsyncRead;

/// LAVA's `connection_command`: a program (argv, no shell) whose stdin and
/// stdout are the console, such as `telnet consoles.lab 7001`. It is killed
/// when the console closes; its exit is the console's end.
///
/// Such a program is running long before it has reached the board's line
/// (telnet resolving and connecting, a bridge starting up). With `ready`,
/// the console is attached only once the program has printed that pattern,
/// so the board is not powered on while the program is still connecting: a
/// boot whose first second went by unseen misses U-Boot's autoboot
/// countdown. What the program printed up to and including the pattern is
/// its own chatter, not the board's, and is not part of the console.
pub struct CommandConsole {
    pub argv: Vec<String>,
    pub ready: Option<regex::bytes::Regex>,
    pub ready_timeout: std::time::Duration,
}

/// How much of a command's chatter is kept while waiting for its `ready`
/// pattern: enough for any banner, bounded whatever the program prints.
const READY_WINDOW: usize = 16 * 1024;

impl CommandConsole {
    /// Reads the program's output until `ready` matches; returns what
    /// followed the match in the same read (the board's first bytes).
    async fn until_ready(
        &self,
        ready: &regex::bytes::Regex,
        out: &mut (impl AsyncRead + Unpin),
    ) -> std::io::Result<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let mut seen = Vec::new();
        let wait = async {
            let mut buf = [0u8; 4096];
            loop {
                let n = out.read(&mut buf).await?;
                if n == 0 {
                    return Err(None);
                }
                seen.extend_from_slice(&buf[..n]);
                if let Some(m) = ready.find(&seen) {
                    return Ok(m.end());
                }
                if seen.len() > 2 * READY_WINDOW {
                    seen.drain(..seen.len() - READY_WINDOW);
                }
            }
        };
        let outcome = tokio::time::timeout(self.ready_timeout, wait).await;
        let said = || {
            let tail = &seen[seen.len().saturating_sub(200)..];
            format!("{:?}", String::from_utf8_lossy(tail))
        };
        match outcome {
            Ok(Ok(end)) => Ok(seen.split_off(end)),
            Ok(Err(Some(e))) => Err(e),
            Ok(Err(None)) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "the program ended before printing `ready` ({}); it printed {}",
                    ready.as_str(),
                    said()
                ),
            )),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the program did not print `ready` ({}) within {} s; it printed {}",
                    ready.as_str(),
                    self.ready_timeout.as_secs(),
                    said()
                ),
            )),
        }
    }
}

impl Console for CommandConsole {
    fn connect(&self) -> BoxFuture<'_, Result<ConsoleIo, ConsoleError>> {
        Box::pin(async move {
            let open_err = |source| ConsoleError::Open {
                device: self.argv.join(" "),
                source,
            };
            let (prog, args) = self
                .argv
                .split_first()
                .ok_or_else(|| open_err(std::io::Error::other("empty command")))?;
            let mut cmd = tokio::process::Command::new(prog);
            let mut child = crate::child::scrub(&mut cmd)
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(open_err)?;
            let (Some(stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(open_err(std::io::Error::other("no pipes to the command")));
            };
            // On an error the child is dropped here, which kills it.
            let first = match &self.ready {
                Some(ready) => self
                    .until_ready(ready, &mut stdout)
                    .await
                    .map_err(open_err)?,
                None => Vec::new(),
            };
            let stdout = tokio::io::AsyncReadExt::chain(std::io::Cursor::new(first), stdout);
            Ok(super::child_io(child, stdout, stdin))
        })
    }
    fn describe(&self) -> String {
        format!("command {:?}", self.argv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::ConsoleReader;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    fn command(script: &str, ready: &str, timeout_ms: u64) -> CommandConsole {
        CommandConsole {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            ready: Some(regex::bytes::Regex::new(ready).unwrap()),
            ready_timeout: Duration::from_millis(timeout_ms),
        }
    }

    /// The program's chatter up to `ready` is its own; what follows it,
    /// even in the same write, is the board's.
    #[tokio::test]
    async fn a_command_console_starts_after_its_ready_pattern() {
        use tokio::io::AsyncReadExt;
        let c = command(
            "printf 'Trying 10.0.0.1...\\r\\nEscape character is x.\\r\\nU-Boot'; read line; printf \"<$line>\"",
            "Escape character is",
            30_000,
        );
        let ConsoleIo { reader, mut writer } = c.connect().await.unwrap();
        let ConsoleReader::Stream(mut r) = reader else {
            panic!("a command's pipe is a stream")
        };
        writer.write_all(b"hello\n").await.unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out), " x.\r\nU-Boot<hello>");
    }

    /// A program that ends, or says nothing like `ready` in time, is a
    /// failed attempt that names what it printed.
    #[tokio::test]
    async fn a_command_console_that_never_gets_ready_is_a_failed_connect() {
        let refused =
            async |c: CommandConsole| c.connect().await.err().expect("no console").to_string();
        let ended = refused(command(
            "echo 'telnet: Unable to connect'",
            "Escape character",
            30_000,
        ))
        .await;
        assert!(ended.contains("ended before printing `ready`"), "{ended}");
        assert!(ended.contains("Unable to connect"), "{ended}");
        let silent = refused(command(
            "echo 'Trying...'; exec sleep 60",
            "Escape character",
            2_000,
        ))
        .await;
        assert!(silent.contains("did not print `ready`"), "{silent}");
        assert!(silent.contains("Trying..."), "{silent}");
    }
}
