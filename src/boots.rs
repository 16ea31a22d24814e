//! Boot slots: how many boards may boot at once, in the whole lab and per
//! relay device (`limits.max_concurrent_boots`,
//! `limits.max_concurrent_boots_per_relay`).
//!
//! A boot holds its slot from power-on until the board's shell is reached
//! (or the job ends). Virtual boards need this because one booting QEMU
//! takes a whole core; real labs need it for the inrush current of boards
//! sharing a supply. The lab owns the limits (a reload changes them in
//! place); runners only acquire and drop permits.
//!
//! ## Design
//!
//! `limits.max_concurrent_boots` is a count in `BootSlots` (a mutex and a
//! `Notify`, not a semaphore, so that a reload can lower or raise the limit
//! in place). The runner takes a permit before power-on (the `WaitingToBoot`
//! phase, outside the power-on timeout, inside the job's) and drops it when
//! the shell is reached or the run ends. Boards on one pdudaemon PDU also
//! share its per-relay count.
//!
//! ## Invariants
//!
//! A permit is freed exactly once (on drop); counts never go below 0.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Count {
    limit: Option<usize>,
    in_use: usize,
}

#[derive(Default)]
struct Inner {
    lab: Count,
    per_relay_limit: Option<usize>,
    relays: HashMap<String, usize>,
}

/// The lab's boot slots; cheap to clone.
#[derive(Clone, Default)]
pub struct BootSlots {
    inner: Arc<Mutex<Inner>>,
    freed: Arc<tokio::sync::Notify>,
}

/// A held boot slot; dropping it frees the slot.
pub struct BootPermit {
    slots: BootSlots,
    relay: Option<String>,
}

impl BootSlots {
    pub fn new(lab: Option<usize>, per_relay: Option<usize>) -> Self {
        let s = BootSlots::default();
        s.set_limits(lab, per_relay);
        s
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while holding this lock; a poisoned one still
        // holds whole counts.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// New limits (a reload); boots beyond a lowered limit finish, and new
    /// ones wait until the count is below it.
    pub fn set_limits(&self, lab: Option<usize>, per_relay: Option<usize>) {
        {
            let mut i = self.lock();
            i.lab.limit = lab;
            i.per_relay_limit = per_relay;
        }
        self.freed.notify_waiters();
    }

    fn try_take(&self, relay: Option<&str>) -> bool {
        let mut i = self.lock();
        let lab_ok = i.lab.limit.is_none_or(|l| i.lab.in_use < l);
        let relay_ok = match (relay, i.per_relay_limit) {
            (Some(r), Some(l)) => i.relays.get(r).copied().unwrap_or(0) < l,
            _ => true,
        };
        if !(lab_ok && relay_ok) {
            return false;
        }
        i.lab.in_use += 1;
        if let Some(r) = relay {
            *i.relays.entry(r.to_owned()).or_default() += 1;
        }
        true
    }

    /// A slot now, if one is free.
    pub fn try_acquire(&self, relay: Option<&str>) -> Option<BootPermit> {
        self.try_take(relay).then(|| BootPermit {
            slots: self.clone(),
            relay: relay.map(str::to_owned),
        })
    }

    /// Waits for a slot.
    pub async fn acquire(&self, relay: Option<&str>) -> BootPermit {
        loop {
            // Registered before the check, so a slot freed in between
            // still wakes this waiter.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(p) = self.try_acquire(relay) {
                return p;
            }
            freed.await;
        }
    }

    /// Boots in progress, for metrics and `labctl top`.
    pub fn in_use(&self) -> usize {
        self.lock().lab.in_use
    }
}

impl Drop for BootPermit {
    fn drop(&mut self) {
        {
            let mut i = self.slots.lock();
            i.lab.in_use = i.lab.in_use.saturating_sub(1);
            if let Some(r) = &self.relay {
                if let Some(n) = i.relays.get_mut(r) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        i.relays.remove(r);
                    }
                }
            }
        }
        self.slots.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn boots_beyond_the_limit_wait_for_a_free_slot() {
        let s = BootSlots::new(Some(2), None);
        let a = s.try_acquire(None).unwrap();
        let _b = s.try_acquire(None).unwrap();
        assert!(s.try_acquire(None).is_none());
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.acquire(None).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(a);
        let _c = waiter.await.unwrap();
        assert_eq!(s.in_use(), 2);
    }

    #[tokio::test]
    async fn one_relay_device_has_its_own_limit() {
        let s = BootSlots::new(Some(10), Some(1));
        let p1 = s.try_acquire(Some("pdu1")).unwrap();
        assert!(s.try_acquire(Some("pdu1")).is_none());
        let _other = s.try_acquire(Some("pdu2")).unwrap();
        let _free = s.try_acquire(None).unwrap();
        drop(p1);
        assert!(s.try_acquire(Some("pdu1")).is_some());
    }

    #[tokio::test]
    async fn a_raised_limit_wakes_waiters() {
        let s = BootSlots::new(Some(1), None);
        let _a = s.try_acquire(None).unwrap();
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.acquire(None).await }
        });
        tokio::task::yield_now().await;
        s.set_limits(Some(2), None);
        let _b = waiter.await.unwrap();
        assert_eq!(s.in_use(), 2);
    }
}
