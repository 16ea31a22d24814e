//! LAVA's ssh boot (`boot: method: ssh`) on a board whose console is an
//! ssh session: the device is already running, so the boot opens the
//! connection and waits for the shell's prompt, and a `to: ssh` deploy's
//! overlay is unpacked on the device over ssh before the tests.
//!
//! It exists because an ssh board has no serial line to hold open: the
//! runner opens the session itself ([`crate::console::SshConsole::open`],
//! which fails naming a host key that does not match, a refused key or a
//! refused connection with ssh's own words) and hands it to the board actor,
//! which reads and writes it as any console and closes it at the job's
//! end. A failed open is the lab's failure (Infrastructure), so the boot's
//! `failure_retry` tries again. A board with a relay is powered on first
//! and given until the `ssh-connection` timeout for its sshd to answer.
//!
//! Invariants: nothing of the job reaches ssh's command line (the board's
//! config builds it); the overlay is unpacked only after the prompt, over a
//! connection of its own with the same options; the shell is used as any
//! other board's (the typed steps with their markers, `lava-test-runner`).

use super::{infra, Phase, Runner, Stop};
use crate::console::SshError;
use crate::job::Boot;
use crate::model::{ErrorClass, JobOutcome};
use crate::power::PowerAction;
use std::time::Duration;

/// How long a board just powered on is left before the next connection
/// attempt, while its sshd is not up yet.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

impl Runner {
    pub(super) async fn ssh_boot(&mut self, b: &Boot) -> Result<(), Stop> {
        let Some(ssh) = self.ctx.ssh.clone() else {
            return Err(Stop(JobOutcome::incomplete(
                ErrorClass::Configuration,
                "boot method ssh needs a board whose console is `ssh`; this board's is not",
            )));
        };
        let relay = self.ctx.power.has_relay();
        if relay {
            self.phase(Phase::PoweringOn);
            let limit = self.timeout("power-on", None);
            let power = self.ctx.power.clone();
            self.bounded("power-on", limit, async move |_r: &mut Self| {
                power
                    .switch(PowerAction::Reset)
                    .await
                    .map_err(|e| infra(e.to_string()))
            })
            .await?;
        }
        self.phase(Phase::Connecting);
        self.event("ssh", &format!("connecting to {}", ssh.target()));
        let limit = self.timeout("ssh-connection", None);
        let io = self
            .bounded("ssh-connection", limit, async |r: &mut Self| loop {
                match ssh.open().await {
                    Ok(io) => return Ok(io),
                    // A board just powered on may not answer yet; a wrong
                    // host key or a refused key will not change by waiting.
                    Err(SshError::Refused { .. } | SshError::Timeout { .. }) if relay => {
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        r.event("error", &msg);
                        return Err(infra(msg));
                    }
                }
            })
            .await?;
        (self.ctx.attach)(io);
        self.event("ssh", &format!("connected to {}", ssh.target()));
        self.phase(Phase::Login);
        let limit = self.timeout("auto-login-action", b.timeout);
        let prompts = if b.prompts.is_empty() {
            vec![self.ctx.dt.shell_prompt.clone()]
        } else {
            b.prompts.clone()
        };
        self.shell_prompt = prompts.clone();
        let login = b.auto_login.clone();
        self.bounded("auto-login-action", limit, async |r: &mut Self| {
            if let Some(l) = &login {
                r.expect(std::slice::from_ref(&l.login_prompt), &[]).await?;
                r.send(&l.username).await;
                r.send("\n").await;
                if let (Some(pp), Some(pw)) = (&l.password_prompt, &l.password) {
                    r.expect(std::slice::from_ref(pp), &[]).await?;
                    r.send(pw).await;
                    r.send("\n").await;
                }
            }
            r.expect(&prompts, &[]).await?;
            Ok(())
        })
        .await?;
        self.booted = true;
        self.phase(Phase::Shell);
        if let Some(t) = &b.transfer_overlay {
            return self.transfer_overlay(t).await;
        }
        self.ssh_overlay(&ssh).await
    }

    /// A `to: ssh` deploy's overlay: unpacked at the device's `/` over a
    /// connection of its own, as LAVA's scp and `tar -C / -xzf` do.
    async fn ssh_overlay(&mut self, ssh: &crate::console::SshConsole) -> Result<(), Stop> {
        let Some(tar) = self.overlay_tar.clone() else {
            return Ok(());
        };
        let size = tar.len();
        let limit = self.timeout("scp-deploy", None);
        let started = std::time::Instant::now();
        self.event(
            "overlay",
            &format!("copying the overlay ({size} bytes) to {}", ssh.target()),
        );
        if let Err(e) = ssh.unpack(tar, limit).await {
            let msg = format!("overlay: {e}");
            self.event("error", &msg);
            return Err(infra(msg));
        }
        self.event(
            "overlay",
            &format!(
                "unpacked at / on {} in {} ms",
                ssh.target(),
                started.elapsed().as_millis()
            ),
        );
        Ok(())
    }
}
