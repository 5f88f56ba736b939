//! Probe points for the benchmarks that split a path into parts (`intr.block_switch.*`): the
//! kernel's environment calls [`turnstile`] where a contended adaptive mutex enter is about
//! to block on its turnstile (`sync::Env::probe_turnstile`) and [`sleep`] where a thread is
//! about to switch away to sleep (`sched::SchedEnv::sleep_check`). Disarmed, each is one
//! relaxed load and a branch on those slow paths (never on a lock fast path); armed, each
//! keeps the first TSC reading after the benchmark cleared its slot.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kbench::now;

/// Whether the probes record.
static ARMED: AtomicBool = AtomicBool::new(false);
/// The TSC at the first [`turnstile`] since the slot was cleared (0: none yet).
pub static T_TURNSTILE: AtomicU64 = AtomicU64::new(0);
/// The TSC at the first [`sleep`] since the slot was cleared (0: none yet).
pub static T_SLEEP: AtomicU64 = AtomicU64::new(0);

/// Arms or disarms the probes.
pub fn arm(on: bool) {
    ARMED.store(on, Ordering::SeqCst);
}

/// Clears both slots (before each sample).
pub fn clear() {
    T_TURNSTILE.store(0, Ordering::Relaxed);
    T_SLEEP.store(0, Ordering::Relaxed);
}

#[inline(always)]
fn record(slot: &AtomicU64) {
    if ARMED.load(Ordering::Relaxed) {
        let _ = slot.compare_exchange(0, now(), Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// A contended adaptive mutex enter is about to block on its turnstile.
#[inline(always)]
pub fn turnstile() {
    record(&T_TURNSTILE);
}

/// The current thread is about to switch away to sleep.
#[inline(always)]
pub fn sleep() {
    record(&T_SLEEP);
}
