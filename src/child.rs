//! The programs labd starts (power commands, console commands, QEMU): what
//! they must not inherit from labd.
//!
//! Every driver that starts a program goes through [`scrub`]; it lives here,
//! below the drivers, so that no driver depends on the systemd integration
//! (which sits above the lab actor).

/// What systemd tells labd alone; a program labd starts (a power command,
/// a console command, QEMU) must not inherit it and speak for labd.
const SYSTEMD_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

/// Removes systemd's variables from a child's environment.
pub fn scrub(cmd: &mut tokio::process::Command) -> &mut tokio::process::Command {
    for v in SYSTEMD_ENV {
        cmd.env_remove(v);
    }
    cmd
}
