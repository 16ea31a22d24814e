//! Power relays: how labd switches a board on and off.
//!
//! Every relay kind implements [`Power`]; a board actor only sees the trait.
//! `command` runs LAVA-style power commands as argv (never through a shell,
//! never with job-supplied text) with a timeout and retries; `sim` switches
//! a `labd-sim` board through the simulator's control socket.

use crate::config::PowerConfig;
use crate::console::BoxFuture;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    #[error("power {action}: {message}")]
    Failed {
        action: &'static str,
        message: String,
    },
    #[error("power {action}: timed out after {secs} s")]
    Timeout { action: &'static str, secs: u64 },
    #[error("power {0}: not supported by this relay")]
    Unsupported(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    On,
    Off,
    Reset,
}

impl PowerAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::On => "on",
            PowerAction::Off => "off",
            PowerAction::Reset => "reset",
        }
    }
}

pub trait Power: Send + Sync {
    fn switch(&self, action: PowerAction) -> BoxFuture<'_, Result<(), PowerError>>;
    fn describe(&self) -> String;
}

pub struct SimPower {
    pub control: PathBuf,
    pub board: String,
}

impl Power for SimPower {
    fn switch(&self, action: PowerAction) -> BoxFuture<'_, Result<(), PowerError>> {
        Box::pin(async move {
            use crate::sim::ControlRequest as R;
            let board = self.board.clone();
            let req = match action {
                PowerAction::On => R::On { board },
                PowerAction::Off => R::Off { board },
                PowerAction::Reset => R::Reset { board },
            };
            let failed = |message: String| PowerError::Failed {
                action: action.as_str(),
                message,
            };
            let resp = crate::sim::control(&self.control, &req)
                .await
                .map_err(|e| failed(format!("{}: {e}", self.control.display())))?;
            if resp.ok {
                Ok(())
            } else {
                Err(failed(resp.error.unwrap_or_default()))
            }
        })
    }
    fn describe(&self) -> String {
        format!("sim relay {} via {}", self.board, self.control.display())
    }
}

pub struct CommandPower {
    pub on: Vec<String>,
    pub off: Vec<String>,
    pub reset: Option<Vec<String>>,
    pub timeout: Duration,
    pub retries: u32,
}

impl CommandPower {
    async fn run_once(&self, action: PowerAction, argv: &[String]) -> Result<(), PowerError> {
        let Some((prog, args)) = argv.split_first() else {
            return Err(PowerError::Unsupported(action.as_str()));
        };
        let mut cmd = tokio::process::Command::new(prog);
        cmd.args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        match tokio::time::timeout(self.timeout, cmd.output()).await {
            Err(_) => Err(PowerError::Timeout {
                action: action.as_str(),
                secs: self.timeout.as_secs(),
            }),
            Ok(Err(e)) => Err(PowerError::Failed {
                action: action.as_str(),
                message: format!("{prog}: {e}"),
            }),
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => Err(PowerError::Failed {
                action: action.as_str(),
                message: format!(
                    "{prog} exited with {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            }),
        }
    }
}

impl Power for CommandPower {
    fn switch(&self, action: PowerAction) -> BoxFuture<'_, Result<(), PowerError>> {
        Box::pin(async move {
            let argv = match action {
                PowerAction::On => self.on.clone(),
                PowerAction::Off => self.off.clone(),
                PowerAction::Reset => match &self.reset {
                    Some(r) => r.clone(),
                    None => {
                        self.run_once(PowerAction::Off, &self.off).await?;
                        return self.run_once(PowerAction::On, &self.on).await;
                    }
                },
            };
            let mut last = None;
            for _ in 0..=self.retries {
                match self.run_once(action, &argv).await {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        tracing::warn!(error = %e, "power command failed");
                        last = Some(e);
                    }
                }
            }
            Err(last.unwrap_or(PowerError::Unsupported(action.as_str())))
        })
    }
    fn describe(&self) -> String {
        format!("command relay {:?}", self.on)
    }
}

pub fn from_config(
    board: &str,
    cfg: &PowerConfig,
    sim_control: Option<&PathBuf>,
) -> Box<dyn Power> {
    match cfg {
        PowerConfig::Sim { board: b } => Box::new(SimPower {
            // Invariant: config validation refuses sim power without sim_control.
            control: sim_control.cloned().unwrap_or_default(),
            board: b.clone().unwrap_or_else(|| board.to_owned()),
        }),
        PowerConfig::Command {
            on,
            off,
            reset,
            timeout_secs,
            retries,
        } => Box::new(CommandPower {
            on: on.clone(),
            off: off.clone(),
            reset: reset.clone(),
            timeout: Duration::from_secs(*timeout_secs),
            retries: *retries,
        }),
    }
}

/// Any relay, timed: a command above the slow threshold is logged and counted.
pub struct Timed {
    pub inner: Box<dyn Power>,
    pub board: String,
    pub metrics: crate::metrics::Metrics,
}

impl Power for Timed {
    fn switch(&self, action: PowerAction) -> BoxFuture<'_, Result<(), PowerError>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let r = self.inner.switch(action).await;
            self.metrics
                .power(&self.board, action.as_str(), started.elapsed());
            r
        })
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(on: Vec<String>, timeout_ms: u64, retries: u32) -> CommandPower {
        CommandPower {
            on: on.clone(),
            off: on,
            reset: None,
            timeout: Duration::from_millis(timeout_ms),
            retries,
        }
    }

    #[tokio::test]
    async fn a_failing_relay_command_is_retried_then_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        // Fails twice, then succeeds: a flaky PDU.
        let script = format!(
            "echo x >> {c}; [ $(wc -l < {c}) -ge 3 ]",
            c = count.display()
        );
        let p = relay(vec!["sh".into(), "-c".into(), script], 5000, 2);
        p.switch(PowerAction::On).await.unwrap();
        let runs = std::fs::read_to_string(&count).unwrap().lines().count();
        assert_eq!(runs, 3);
    }

    #[tokio::test]
    async fn a_hung_relay_command_times_out_on_every_attempt() {
        let p = relay(vec!["sleep".into(), "30".into()], 100, 1);
        let e = p.switch(PowerAction::Off).await.unwrap_err();
        assert!(
            matches!(e, PowerError::Timeout { action: "off", .. }),
            "{e}"
        );
    }

    #[tokio::test]
    async fn arguments_are_never_seen_by_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let witness = dir.path().join("pwned");
        let arg = format!("$(touch {w}); touch {w}", w = witness.display());
        let p = relay(vec!["echo".into(), arg], 5000, 0);
        p.switch(PowerAction::On).await.unwrap();
        assert!(!witness.exists());
    }
}
