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
//! ([`crate::IntrEnv::storm_report`]), and re-enabled after a backoff (20 ms, doubling to 1.28 s on
//! each relapse) by the storm thread. If it storms again it is masked again; if it stays
//! quiet for a window after re-enabling, the storm is over: reported once, backoff reset.
//!
//! ## Tunables
//! The constants below are the defaults; [`PARAMS`] holds the values in force, settable at
//! run time (the shell's `sysctl intr.storm.*`) through [`StormParams`]' setters, which
//! validate. The arrival path reads one of them per arrival (the window length, a relaxed
//! load); the others only when a window closes.

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

/// The storm rule's parameters in force (every source's detector reads these).
pub static PARAMS: StormParams = StormParams::new();

/// The storm rule's tunable parameters. Each setter validates its value (a rejected value
/// leaves the parameter as it was) and says why it refused.
pub struct StormParams {
    window_ns: AtomicU64,
    hot_windows: AtomicU32,
    min_arrivals: AtomicU64,
    stall_percent: AtomicU64,
    backoff_min_ns: AtomicU64,
    backoff_max_ns: AtomicU64,
}

impl Default for StormParams {
    fn default() -> Self {
        Self::new()
    }
}

/// Longest window accepted (1 s).
pub const WINDOW_NS_MAX: u64 = 1_000_000_000;
/// Most consecutive hot windows accepted.
pub const HOT_WINDOWS_MAX: u32 = 1_000;
/// Longest backoff accepted (60 s).
pub const BACKOFF_NS_LIMIT: u64 = 60_000_000_000;

impl StormParams {
    /// The defaults (the constants of this module).
    pub const fn new() -> Self {
        StormParams {
            window_ns: AtomicU64::new(WINDOW_NS),
            hot_windows: AtomicU32::new(HOT_WINDOWS),
            min_arrivals: AtomicU64::new(MIN_ARRIVALS),
            stall_percent: AtomicU64::new(STALL_PERCENT),
            backoff_min_ns: AtomicU64::new(BACKOFF_MIN_NS),
            backoff_max_ns: AtomicU64::new(BACKOFF_MAX_NS),
        }
    }

    /// Window length, ns.
    #[inline]
    pub fn window_ns(&self) -> u64 {
        self.window_ns.load(Ordering::Relaxed)
    }
    /// Consecutive hot windows that make a storm.
    pub fn hot_windows(&self) -> u32 {
        self.hot_windows.load(Ordering::Relaxed)
    }
    /// Arrivals per window below which a source is never hot.
    pub fn min_arrivals(&self) -> u64 {
        self.min_arrivals.load(Ordering::Relaxed)
    }
    /// Percentage of a window's arrivals that must stall their CPU.
    pub fn stall_percent(&self) -> u64 {
        self.stall_percent.load(Ordering::Relaxed)
    }
    /// First re-enable delay, ns.
    pub fn backoff_min_ns(&self) -> u64 {
        self.backoff_min_ns.load(Ordering::Relaxed)
    }
    /// Longest re-enable delay, ns.
    pub fn backoff_max_ns(&self) -> u64 {
        self.backoff_max_ns.load(Ordering::Relaxed)
    }
    /// How long a re-enabled source must stay quiet for its storm to be over:
    /// `(hot_windows + 2) × window`.
    pub fn quiet_ns(&self) -> u64 {
        (self.hot_windows() as u64 + 2).saturating_mul(self.window_ns())
    }

    /// Sets the window length: 1 ms ..= 1 s.
    pub fn set_window_ns(&self, ns: u64) -> Result<(), &'static str> {
        if !(1_000_000..=WINDOW_NS_MAX).contains(&ns) {
            return Err("window must be 1 ms ..= 1000 ms");
        }
        self.window_ns.store(ns, Ordering::Relaxed);
        Ok(())
    }
    /// Sets the number of consecutive hot windows: 1 ..= 1000.
    pub fn set_hot_windows(&self, n: u32) -> Result<(), &'static str> {
        if !(1..=HOT_WINDOWS_MAX).contains(&n) {
            return Err("hot windows must be 1 ..= 1000");
        }
        self.hot_windows.store(n, Ordering::Relaxed);
        Ok(())
    }
    /// Sets the minimum arrivals per hot window: 1 ..= 10^9.
    pub fn set_min_arrivals(&self, n: u64) -> Result<(), &'static str> {
        if !(1..=1_000_000_000).contains(&n) {
            return Err("minimum arrivals must be 1 ..= 1000000000");
        }
        self.min_arrivals.store(n, Ordering::Relaxed);
        Ok(())
    }
    /// Sets the stalled share that makes a window hot: 1 ..= 100 %.
    pub fn set_stall_percent(&self, p: u64) -> Result<(), &'static str> {
        if !(1..=100).contains(&p) {
            return Err("stall percentage must be 1 ..= 100");
        }
        self.stall_percent.store(p, Ordering::Relaxed);
        Ok(())
    }
    /// Sets the first re-enable delay: 1 ms ..= the longest delay.
    pub fn set_backoff_min_ns(&self, ns: u64) -> Result<(), &'static str> {
        if ns < 1_000_000 || ns > self.backoff_max_ns() {
            return Err("first backoff must be 1 ms ..= the longest backoff");
        }
        self.backoff_min_ns.store(ns, Ordering::Relaxed);
        Ok(())
    }
    /// Sets the longest re-enable delay: the first delay ..= 60 s.
    pub fn set_backoff_max_ns(&self, ns: u64) -> Result<(), &'static str> {
        if ns < self.backoff_min_ns() || ns > BACKOFF_NS_LIMIT {
            return Err("longest backoff must be the first backoff ..= 60000 ms");
        }
        self.backoff_max_ns.store(ns, Ordering::Relaxed);
        Ok(())
    }
}

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
            backoff: AtomicU64::new(0), // never backed off: the first storm uses the minimum
            storms: AtomicU64::new(0),
            last_rate: AtomicU64::new(0),
        }
    }

    /// Accounts one arrival at `now`; `stalled`: it interrupted a non-idle thread at the same
    /// instruction as the previous interrupt on this CPU. Interrupt context.
    pub fn arrive(&self, now: u64, stalled: bool) -> Verdict {
        self.arrive_with(&PARAMS, now, stalled)
    }

    /// [`StormState::arrive`] under the parameters `p`.
    pub fn arrive_with(&self, p: &StormParams, now: u64, stalled: bool) -> Verdict {
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
        if elapsed < p.window_ns() {
            return Verdict::Calm;
        }
        let n = self.arrivals.swap(0, Ordering::Relaxed);
        let stalled = self.stalled.swap(0, Ordering::Relaxed);
        self.window_start.store(now, Ordering::Relaxed);
        let hot = n >= p.min_arrivals() && stalled * 100 >= n * p.stall_percent();
        if !hot {
            self.hot.store(0, Ordering::Relaxed);
            return Verdict::Calm;
        }
        if self.hot.fetch_add(1, Ordering::Relaxed) + 1 < p.hot_windows()
            || self.throttled.load(Ordering::Relaxed)
        {
            return Verdict::Calm;
        }
        self.hot.store(0, Ordering::Relaxed);
        self.last_rate.store(n * 1_000_000_000 / elapsed.max(1), Ordering::Relaxed);
        self.storms.fetch_add(1, Ordering::Relaxed);
        let (lo, hi) = (p.backoff_min_ns(), p.backoff_max_ns());
        let b = self.backoff.load(Ordering::Relaxed).clamp(lo, hi.max(lo));
        self.unmask_at.store(now + b, Ordering::Relaxed);
        self.backoff.store((b * 2).min(hi), Ordering::Relaxed);
        self.throttled.store(true, Ordering::Release);
        Verdict::Storm
    }

    /// The source has been quiet since it was re-enabled: the storm is over.
    pub fn calm_down(&self) {
        self.backoff.store(PARAMS.backoff_min_ns(), Ordering::Relaxed);
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

    /// `feed` under the parameters `p`.
    fn feed_with(s: &StormState, p: &StormParams, per_window: u64, stall_pct: u64, windows: u64) -> u32 {
        let mut now = 1_000;
        s.arrive_with(p, now, false);
        let gap = p.window_ns() / per_window;
        let mut storms = 0;
        for i in 0..windows * per_window {
            now += gap;
            if s.arrive_with(p, now, (i % 100) < stall_pct) == Verdict::Storm {
                storms += 1;
            }
        }
        storms
    }

    #[test]
    fn tunables_validate_and_keep_the_old_value_on_error() {
        let p = StormParams::new();
        assert_eq!(p.window_ns(), WINDOW_NS);
        assert!(p.set_window_ns(0).is_err());
        assert!(p.set_window_ns(WINDOW_NS_MAX + 1).is_err());
        assert_eq!(p.window_ns(), WINDOW_NS);
        p.set_window_ns(5_000_000).unwrap();
        assert_eq!(p.window_ns(), 5_000_000);
        assert!(p.set_hot_windows(0).is_err());
        p.set_hot_windows(3).unwrap();
        assert_eq!(p.quiet_ns(), 5 * 5_000_000);
        assert!(p.set_min_arrivals(0).is_err());
        assert!(p.set_stall_percent(101).is_err());
        assert!(p.set_stall_percent(0).is_err());
        assert_eq!(p.stall_percent(), STALL_PERCENT);
        assert!(p.set_backoff_min_ns(BACKOFF_MAX_NS + 1).is_err(), "min above max");
        assert!(p.set_backoff_max_ns(BACKOFF_MIN_NS - 1).is_err(), "max below min");
        assert!(p.set_backoff_max_ns(BACKOFF_NS_LIMIT + 1).is_err());
        p.set_backoff_min_ns(1_000_000).unwrap();
        p.set_backoff_max_ns(BACKOFF_NS_LIMIT).unwrap();
        assert_eq!((p.backoff_min_ns(), p.backoff_max_ns()), (1_000_000, BACKOFF_NS_LIMIT));
        // The global parameters are untouched by all this.
        assert_eq!(PARAMS.window_ns(), WINDOW_NS);
    }

    #[test]
    fn the_detector_follows_the_tunables() {
        // 150 arrivals per window, all stalling: below the default minimum, never a storm...
        let s = StormState::new();
        assert_eq!(feed_with(&s, &StormParams::new(), 150, 100, 20), 0);
        // ...but a storm after 2 windows once the minimum is 100 and 2 windows suffice.
        let p = StormParams::new();
        p.set_min_arrivals(100).unwrap();
        p.set_hot_windows(2).unwrap();
        let s = StormState::new();
        assert_eq!(feed_with(&s, &p, 150, 100, 3), 1);
        // Half the arrivals stalling is a storm only when the threshold is at most 50 %.
        let s = StormState::new();
        assert_eq!(feed_with(&s, &p, 1_000, 50, 10), 0);
        p.set_stall_percent(50).unwrap();
        let s = StormState::new();
        assert_eq!(feed_with(&s, &p, 1_000, 50, 10), 1);
        // A shorter window: the same storm trips in less time, with the tuned backoff.
        p.set_window_ns(2_000_000).unwrap();
        p.set_backoff_min_ns(5_000_000).unwrap();
        let s = StormState::new();
        assert_eq!(feed_with(&s, &p, 1_000, 100, 3), 1);
        assert_eq!(s.backoff.load(Ordering::Relaxed), 10_000_000, "doubled from the tuned minimum");
    }
}
