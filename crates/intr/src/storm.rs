//! Interrupt storm detection, in every model.
//!
//! ## The rule
//! FreeBSD's storm detector counted interrupts per second and fired at a fixed rate, which a
//! legitimate 40GbE NIC exceeds (350 k/s). A rate says nothing about harm; what hurts is a
//! source that leaves its CPU no time for anything else. Time is a poor witness of that (the
//! entry and exit path between two dispatches takes time too, and under emulation an APIC
//! access can cost more than the handler), so the rule looks at *progress*: an interrupt
//! *stalls* its CPU when it interrupts the same non-idle thread at the same instruction as the
//! previous interrupt on that CPU — the thread got nothing done in between. A source is
//! *storming* when, in each of [`HOT_WINDOWS`] consecutive windows of [`WINDOW_NS`]:
//! - it arrived at least [`MIN_ARRIVALS`] times (a slow source is never a storm), and
//! - at least [`STALL_PERCENT`] % of its arrivals stalled their CPU.
//!
//! A high but serviceable rate lets the interrupted thread advance between interrupts (and an
//! idle CPU has nothing to starve — a stuck line on an idle CPU is caught as soon as a thread
//! wants that CPU), so it never trips; a line stuck asserted —
//! level-triggered and never deasserted, or a device that re-raises as soon as it is
//! acknowledged — stalls every time, and trips within 50 ms.
//!
//! ## What happens then
//! The source is masked (one mask reference held by the storm), reported once by name
//! ([`IntrEnv::storm_report`]), and re-enabled after a backoff (20 ms, doubling to 1.28 s on
//! each relapse) by the storm thread. If it storms again it is masked again; if it stays
//! quiet for a window after re-enabling, the storm is over: reported once, backoff reset.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Window length.
pub const WINDOW_NS: u64 = 10_000_000;
/// Consecutive hot windows that make a storm.
pub const HOT_WINDOWS: u32 = 5;
/// Arrivals per window below which a source is never hot.
pub const MIN_ARRIVALS: u64 = 200;
/// Share of a window's arrivals that must have stalled their CPU for the window to be hot.
pub const STALL_PERCENT: u64 = 90;
/// First re-enable delay.
pub const BACKOFF_MIN_NS: u64 = 20_000_000;
/// Longest re-enable delay.
pub const BACKOFF_MAX_NS: u64 = 1_280_000_000;

/// Storm state of one source.
pub struct StormState {
    window_start: AtomicU64,
    arrivals: AtomicU64,
    stalled: AtomicU64,
    hot: AtomicU32,
    /// Masked by the storm detector now.
    pub throttled: AtomicBool,
    /// Storm reported and not yet reported over.
    pub storming: AtomicBool,
    /// When the storm thread should re-enable the source.
    pub unmask_at: AtomicU64,
    backoff: AtomicU64,
    /// Storms detected (relapses included).
    pub storms: AtomicU64,
    /// Arrivals in the last hot window (for the report).
    pub last_rate: AtomicU64,
}

impl Default for StormState {
    fn default() -> Self {
        Self::new()
    }
}

/// What the detector concluded about one arrival.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verdict {
    /// Nothing to do.
    Calm,
    /// The source is storming: mask it.
    Storm,
}

impl StormState {
    /// Calm.
    pub const fn new() -> Self {
        StormState {
            window_start: AtomicU64::new(0),
            arrivals: AtomicU64::new(0),
            stalled: AtomicU64::new(0),
            hot: AtomicU32::new(0),
            throttled: AtomicBool::new(false),
            storming: AtomicBool::new(false),
            unmask_at: AtomicU64::new(0),
            backoff: AtomicU64::new(BACKOFF_MIN_NS),
            storms: AtomicU64::new(0),
            last_rate: AtomicU64::new(0),
        }
    }

    /// Accounts one arrival at `now`; `stalled`: it interrupted a non-idle thread at the same
    /// instruction as the previous interrupt on this CPU. Interrupt context.
    pub fn arrive(&self, now: u64, stalled: bool) -> Verdict {
        let start = self.window_start.load(Ordering::Relaxed);
        if start == 0 {
            self.window_start.store(now, Ordering::Relaxed);
            return Verdict::Calm;
        }
        self.arrivals.fetch_add(1, Ordering::Relaxed);
        if stalled {
            self.stalled.fetch_add(1, Ordering::Relaxed);
        }
        let elapsed = now.saturating_sub(start);
        if elapsed < WINDOW_NS {
            return Verdict::Calm;
        }
        let n = self.arrivals.swap(0, Ordering::Relaxed);
        let stalled = self.stalled.swap(0, Ordering::Relaxed);
        self.window_start.store(now, Ordering::Relaxed);
        let hot = n >= MIN_ARRIVALS && stalled * 100 >= n * STALL_PERCENT;
        if !hot {
            self.hot.store(0, Ordering::Relaxed);
            return Verdict::Calm;
        }
        if self.hot.fetch_add(1, Ordering::Relaxed) + 1 < HOT_WINDOWS
            || self.throttled.load(Ordering::Relaxed)
        {
            return Verdict::Calm;
        }
        self.hot.store(0, Ordering::Relaxed);
        self.last_rate.store(n * 1_000_000_000 / elapsed.max(1), Ordering::Relaxed);
        self.storms.fetch_add(1, Ordering::Relaxed);
        let b = self.backoff.load(Ordering::Relaxed);
        self.unmask_at.store(now + b, Ordering::Relaxed);
        self.backoff.store((b * 2).min(BACKOFF_MAX_NS), Ordering::Relaxed);
        self.throttled.store(true, Ordering::Release);
        Verdict::Storm
    }

    /// The source has been quiet since it was re-enabled: the storm is over.
    pub fn calm_down(&self) {
        self.backoff.store(BACKOFF_MIN_NS, Ordering::Relaxed);
        self.storming.store(false, Ordering::Release);
    }

    /// Restarts the window (after re-enabling).
    pub fn reset_window(&self, now: u64) {
        self.window_start.store(now, Ordering::Relaxed);
        self.arrivals.store(0, Ordering::Relaxed);
        self.stalled.store(0, Ordering::Relaxed);
        self.hot.store(0, Ordering::Relaxed);
    }

    /// Arrivals so far in the current window.
    pub fn arrivals_in_window(&self) -> u64 {
        self.arrivals.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `per_window` arrivals per window for `windows` windows, `stall_pct` % of them
    /// stalling their CPU; returns the storm verdicts seen.
    fn feed(s: &StormState, per_window: u64, stall_pct: u64, windows: u64) -> u32 {
        let mut now = 1_000;
        s.arrive(now, false);
        let gap = WINDOW_NS / per_window;
        let mut storms = 0;
        for i in 0..windows * per_window {
            now += gap;
            let stalled = (i % 100) < stall_pct;
            if s.arrive(now, stalled) == Verdict::Storm {
                storms += 1;
            }
        }
        storms
    }

    #[test]
    fn a_stuck_line_is_a_storm_within_five_windows() {
        let s = StormState::new();
        assert_eq!(feed(&s, 5_000, 100, 6), 1);
        assert!(s.throttled.load(Ordering::Relaxed));
        assert!(s.last_rate.load(Ordering::Relaxed) >= 400_000);
    }

    #[test]
    fn a_high_serviceable_rate_is_not() {
        // 350 k/s (the 40GbE case) with the thread advancing between interrupts: never.
        let s = StormState::new();
        assert_eq!(feed(&s, 3_500, 0, 50), 0);
        // Even 5 M/s is not, as long as the interrupted thread mostly progresses.
        let s = StormState::new();
        assert_eq!(feed(&s, 50_000, 50, 20), 0);
    }

    #[test]
    fn a_slow_source_is_never_hot() {
        let s = StormState::new();
        assert_eq!(feed(&s, 100, 100, 50), 0);
    }

    #[test]
    fn backoff_doubles_on_relapse_and_resets_when_calm() {
        let s = StormState::new();
        feed(&s, 5_000, 100, 6);
        let first = s.unmask_at.load(Ordering::Relaxed);
        s.throttled.store(false, Ordering::Relaxed);
        s.reset_window(first);
        let mut now = first;
        let mut storms = 0;
        for _ in 0..6 * 5_000 {
            now += WINDOW_NS / 5_000;
            if s.arrive(now, true) == Verdict::Storm {
                storms += 1;
            }
        }
        assert_eq!(storms, 1);
        assert_eq!(s.backoff.load(Ordering::Relaxed), 4 * BACKOFF_MIN_NS);
        s.calm_down();
        assert_eq!(s.backoff.load(Ordering::Relaxed), BACKOFF_MIN_NS);
    }
}
