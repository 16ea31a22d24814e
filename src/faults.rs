//! Injected faults, for the tests that prove supervision works.
//!
//! A real panic in a board actor is a bug we cannot schedule, so the tests
//! ask for one through `LABD_INJECT_PANIC`: a comma-separated list of
//! `POINT:BOARD`, where POINT is `board-handler` (the board actor's job-start
//! handler panics) or `board-boot` (the boot sequence panics when it reaches
//! the bootloader-commands phase). Each listed fault fires once per daemon
//! process, so the replacement actor runs the next job normally. An unset
//! variable costs one lookup at first use.
//!
//! One fault is a delay, not a panic: `reconcile-slow:lab` makes the lab's
//! start-up reconcile of the store take a second longer, so a test can show
//! that nothing is answered from the store before it has run.
//!
//! ## Invariants
//!
//! Inert unless `LABD_INJECT_PANIC` names a fault; each fires once.

use std::sync::{Mutex, OnceLock};

/// The environment variable holding the injected faults.
pub const ENV: &str = "LABD_INJECT_PANIC";

fn armed() -> &'static Mutex<Vec<String>> {
    static FAULTS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    FAULTS.get_or_init(|| {
        let list = std::env::var(ENV).unwrap_or_default();
        Mutex::new(
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    })
}

/// Panics if the fault `point` is armed for `board`, disarming it first.
pub fn maybe_panic(point: &str, board: &str) {
    if take(point, board) {
        panic!("injected fault {point}:{board} ({ENV})");
    }
}

/// Whether the fault `point` is armed for `target`, disarming it.
pub fn take(point: &str, target: &str) -> bool {
    let key = format!("{point}:{target}");
    match armed().lock() {
        Ok(mut list) => match list.iter().position(|f| *f == key) {
            Some(i) => {
                list.remove(i);
                true
            }
            None => false,
        },
        // A poisoned lock means a panic happened while it was held, which
        // `take` never does; treat it as no fault armed.
        Err(_) => false,
    }
}
