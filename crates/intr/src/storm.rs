//! Interrupt storm detection, in every model.
//!
//! ## The rule
//! A source is judged on what the framework sees of *it*, not of the CPU it interrupts:
//! whether its filter and handler did any work, and the CPU time they spent for nothing.
//! Over a window of [`PARAMS`]`.window_ns()` (default [`WINDOW_NS`], 2 ms) each source counts
//! - its **arrivals** (every interrupt of the source that reached its filter, on any CPU);
//! - its **no-work** arrivals: the filter returned [`crate::FilterResult::Stray`] while no
//!   other source on the vector claimed the interrupt ("nobody cared"), or the filter or the
//!   handler reported through [`crate::FilterCtx::no_work`] / [`crate::HandlerCtx::no_work`]
//!   that it claimed the interrupt and found nothing to do;
//! - its **busy time**, the CPU time spent for nothing: the time of each handler run that
//!   reported no work, on whichever CPU and ithread ran it, if the thread that ran it did not
//!   switch away meanwhile (a handler that blocks or is preempted gave its CPU away: that run
//!   is not charged), plus the time of filters that claimed with no work, measured on one
//!   arrival in [`FILTER_SAMPLE`] and charged [`FILTER_SAMPLE`] times (a clock read per
//!   arrival would cost more than the rest of the rule). Time spent doing work is never
//!   charged: a legitimate flood may take a whole CPU (under TCG a filter's two `edu`
//!   register accesses alone took half of one at 345 k/s), and that is load, not a storm.
//!
//! A window is **judged** when it saw at least `min_arrivals` arrivals (default
//! [`MIN_ARRIVALS`]), and **hot** when, in addition, either the busy time is at least
//! `busy_percent` % of the window's length (default [`BUSY_PERCENT`]: the source wasted half
//! a CPU — it found no work on fewer arrivals than the next threshold, but those took the
//! time) or at least `idle_percent` % of its arrivals were no-work (default [`IDLE_PERCENT`]).
//! `hot_windows` hot windows in a row among the judged ones (default [`HOT_WINDOWS`]) make a
//! **storm**: a judged window that is not hot starts the count over; a window too sparse to
//! judge leaves it as it is. A window closes at the first arrival after it ended (each arrival
//! compares the clock with the window's start: a load and a compare), so a source that stops
//! arriving stops being judged, and a window stretched by a pause is judged on what it holds
//! (the pause dilutes its busy share, not its no-work share).
//!
//! So a legitimate flood — a device with work at every interrupt, whose handlers leave the
//! CPUs most of their time — is never a storm, whatever its rate (FreeBSD's fixed rate
//! threshold is what misfired at 350 k/s), and a second source on the same CPU is judged on
//! its own arrivals (the rule keeps no per-CPU state). A line stuck asserted, or a device that
//! re-raises as soon as it is served, is caught at any rate above `min_arrivals` per window:
//! either the driver finds nothing to do (the line re-asserts for a cause it does not know,
//! like Linux's "nobody cared") or serving it takes the CPU. It is caught in the same way in
//! every model, since the arrivals, the reports and the time are the source's, wherever its
//! handler runs: with the defaults, within 3 windows of 2 ms after the first stuck arrival.
//!
//! ## What happens then
//! The source is throttled: masked (one mask reference held by the storm — the line in
//! hardware, or the framework's count for a source masked in software, whose device still
//! interrupts and is counted in [`crate::SourceStats::masked_arrivals`]), reported once by
//! name ([`crate::IntrEnv::storm_report`]), and re-enabled by the storm thread after a
//! backoff (`backoff_min_ns`, default [`BACKOFF_MIN_NS`], doubling on each relapse up to
//! `backoff_max_ns`, default [`BACKOFF_MAX_NS`]). If it storms again it is masked again; if it
//! stays out of storm for `quiet_ns` (default [`QUIET_NS`]) after being re-enabled, the storm
//! is over: reported once, backoff reset. The storm thread sleeps until a storm begins and
//! then only until the next re-enable or end is due.
//!
//! ## Tunables
//! The constants below are the defaults; [`PARAMS`] holds the values in force, settable at
//! run time (the shell's `sysctl intr.storm.*`) through [`StormParams`]' setters, which
//! validate. The arrival path reads one of them per arrival (the window length, a relaxed
//! load); the others are read when a window closes, and by the storm thread.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Window length.
pub const WINDOW_NS: u64 = 2_000_000;
/// Consecutive hot windows that make a storm.
pub const HOT_WINDOWS: u32 = 3;
/// Arrivals per window below which a source is never hot.
pub const MIN_ARRIVALS: u64 = 10;
/// Share of a window (of one CPU's time) the source's filter and handler must spend on
/// arrivals that found no work for the window to be hot, in percent.
pub const BUSY_PERCENT: u64 = 50;
/// Share of a window's arrivals that must be no-work for the window to be hot, in percent.
pub const IDLE_PERCENT: u64 = 90;
/// First re-enable delay.
pub const BACKOFF_MIN_NS: u64 = 10_000_000;
/// Longest re-enable delay.
pub const BACKOFF_MAX_NS: u64 = 640_000_000;
/// How long a re-enabled source must stay out of storm for the storm to be over.
pub const QUIET_NS: u64 = 50_000_000;
/// One arrival in this many has its filter timed (and is charged this many times).
pub const FILTER_SAMPLE: u64 = 8;

/// The storm rule's parameters in force (every source's detector reads these).
pub static PARAMS: StormParams = StormParams::new();

/// The storm rule's tunable parameters. Each setter validates its value (a rejected value
/// leaves the parameter as it was) and says why it refused.
pub struct StormParams {
    window_ns: AtomicU64,
    hot_windows: AtomicU32,
    min_arrivals: AtomicU64,
    busy_percent: AtomicU64,
    idle_percent: AtomicU64,
    backoff_min_ns: AtomicU64,
    backoff_max_ns: AtomicU64,
    quiet_ns: AtomicU64,
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
            busy_percent: AtomicU64::new(BUSY_PERCENT),
            idle_percent: AtomicU64::new(IDLE_PERCENT),
            backoff_min_ns: AtomicU64::new(BACKOFF_MIN_NS),
            backoff_max_ns: AtomicU64::new(BACKOFF_MAX_NS),
            quiet_ns: AtomicU64::new(QUIET_NS),
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
    /// Share of a window the source's filter and handler must spend for no work, percent.
    pub fn busy_percent(&self) -> u64 {
        self.busy_percent.load(Ordering::Relaxed)
    }
    /// Share of a window's arrivals that must be no-work, percent.
    pub fn idle_percent(&self) -> u64 {
        self.idle_percent.load(Ordering::Relaxed)
    }
    /// First re-enable delay, ns.
    pub fn backoff_min_ns(&self) -> u64 {
        self.backoff_min_ns.load(Ordering::Relaxed)
    }
    /// Longest re-enable delay, ns.
    pub fn backoff_max_ns(&self) -> u64 {
        self.backoff_max_ns.load(Ordering::Relaxed)
    }
    /// How long a re-enabled source must stay out of storm for its storm to be over, ns.
    pub fn quiet_ns(&self) -> u64 {
        self.quiet_ns.load(Ordering::Relaxed)
    }

    /// Sets the window length: 100 µs ..= 1 s.
    pub fn set_window_ns(&self, ns: u64) -> Result<(), &'static str> {
        if !(100_000..=WINDOW_NS_MAX).contains(&ns) {
            return Err("window must be 0.1 ms ..= 1000 ms");
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
    /// Sets the busy share that makes a window hot: 1 ..= 1000 % (above 100: more than one
    /// CPU's worth, possible when several CPUs run the source's handlers).
    pub fn set_busy_percent(&self, p: u64) -> Result<(), &'static str> {
        if !(1..=1000).contains(&p) {
            return Err("busy percentage must be 1 ..= 1000");
        }
        self.busy_percent.store(p, Ordering::Relaxed);
        Ok(())
    }
    /// Sets the no-work share that makes a window hot: 1 ..= 100 %.
    pub fn set_idle_percent(&self, p: u64) -> Result<(), &'static str> {
        if !(1..=100).contains(&p) {
            return Err("idle percentage must be 1 ..= 100");
        }
        self.idle_percent.store(p, Ordering::Relaxed);
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
    /// Sets the quiet time that ends a storm: 1 ms ..= 60 s.
    pub fn set_quiet_ns(&self, ns: u64) -> Result<(), &'static str> {
        if !(1_000_000..=BACKOFF_NS_LIMIT).contains(&ns) {
            return Err("quiet time must be 1 ms ..= 60000 ms");
        }
        self.quiet_ns.store(ns, Ordering::Relaxed);
        Ok(())
    }
}

/// Storm state of one source.
pub struct StormState {
    window_start: AtomicU64,
    arrivals: AtomicU64,
    no_work: AtomicU64,
    busy_ns: AtomicU64,
    hot: AtomicU32,
    /// Masked by the storm detector now.
    pub throttled: AtomicBool,
    /// Storm reported and not yet reported over.
    pub storming: AtomicBool,
    /// When the storm thread should re-enable the source (while throttled), or when it did.
    pub unmask_at: AtomicU64,
    /// When the source was last throttled (ns; 0: never).
    pub throttled_at: AtomicU64,
    backoff: AtomicU64,
    /// Storms detected (relapses included).
    pub storms: AtomicU64,
    /// Arrivals per second in the last window of the last storm (for the report).
    pub last_rate: AtomicU64,
    /// Arrivals ever counted by the rule (the filter ran).
    pub arrivals_total: AtomicU64,
    /// No-work arrivals ever counted.
    pub no_work_total: AtomicU64,
    /// Windows that closed with at least the minimum arrivals: judged by the rule, hot or not.
    pub windows_judged: AtomicU64,
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
            no_work: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            hot: AtomicU32::new(0),
            throttled: AtomicBool::new(false),
            storming: AtomicBool::new(false),
            unmask_at: AtomicU64::new(0),
            throttled_at: AtomicU64::new(0),
            backoff: AtomicU64::new(0), // never backed off: the first storm uses the minimum
            storms: AtomicU64::new(0),
            last_rate: AtomicU64::new(0),
            arrivals_total: AtomicU64::new(0),
            no_work_total: AtomicU64::new(0),
            windows_judged: AtomicU64::new(0),
        }
    }

    /// Accounts one arrival at `now` (interrupt context, before the source's filter runs);
    /// returns the verdict and whether this arrival's filter is to be timed (one in
    /// [`FILTER_SAMPLE`]).
    #[inline]
    pub fn arrive(&self, now: u64) -> (Verdict, bool) {
        self.arrive_with(&PARAMS, now)
    }

    /// [`StormState::arrive`] under the parameters `p`.
    #[inline]
    pub fn arrive_with(&self, p: &StormParams, now: u64) -> (Verdict, bool) {
        let n = self.arrivals_total.fetch_add(1, Ordering::Relaxed);
        let sample = n.is_multiple_of(FILTER_SAMPLE);
        self.arrivals.fetch_add(1, Ordering::Relaxed);
        let start = self.window_start.load(Ordering::Relaxed);
        if now.wrapping_sub(start) < p.window_ns() {
            return (Verdict::Calm, sample);
        }
        (self.close_window(p, start, now), sample)
    }

    /// The window that began at `start` is over at `now`: judge it and open the next.
    #[cold]
    #[inline(never)]
    fn close_window(&self, p: &StormParams, start: u64, now: u64) -> Verdict {
        self.window_start.store(now, Ordering::Relaxed);
        let n = self.arrivals.swap(0, Ordering::Relaxed);
        let idle = self.no_work.swap(0, Ordering::Relaxed).min(n);
        let busy = self.busy_ns.swap(0, Ordering::Relaxed);
        if start == 0 {
            return Verdict::Calm; // the first arrival ever opens the first window
        }
        let elapsed = now.saturating_sub(start).max(1);
        if n < p.min_arrivals() {
            // Too few to judge: neither hot nor calm (a source that stops arriving is not
            // judged at all; a host that takes its vCPU away for a while breaks no run).
            return Verdict::Calm;
        }
        self.windows_judged.fetch_add(1, Ordering::Relaxed);
        // A window stretched by a pause (it closes only at an arrival) is judged on what it
        // holds: its busy share is diluted by the pause, its no-work share is not.
        let hot = busy.saturating_mul(100) >= elapsed.saturating_mul(p.busy_percent())
            || idle * 100 >= n * p.idle_percent();
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
        self.last_rate.store(n.saturating_mul(1_000_000_000) / elapsed, Ordering::Relaxed);
        self.storms.fetch_add(1, Ordering::Relaxed);
        let (lo, hi) = (p.backoff_min_ns(), p.backoff_max_ns());
        let b = self.backoff.load(Ordering::Relaxed).clamp(lo, hi.max(lo));
        self.unmask_at.store(now + b, Ordering::Relaxed);
        self.throttled_at.store(now, Ordering::Relaxed);
        self.backoff.store((b * 2).min(hi), Ordering::Relaxed);
        self.throttled.store(true, Ordering::Release);
        Verdict::Storm
    }

    /// The filter or the handler found nothing to do for one arrival (or nobody claimed it).
    #[inline]
    pub fn no_work(&self) {
        self.no_work.fetch_add(1, Ordering::Relaxed);
        self.no_work_total.fetch_add(1, Ordering::Relaxed);
    }

    /// `ns` of filter or handler time spent for no work, on any CPU.
    #[inline]
    pub fn busy(&self, ns: u64) {
        self.busy_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The source has been quiet since it was re-enabled: the storm is over.
    pub fn calm_down(&self) {
        self.backoff.store(PARAMS.backoff_min_ns(), Ordering::Relaxed);
        self.storming.store(false, Ordering::Release);
    }

    /// Restarts the window (when re-enabling): what was counted while throttled is dropped.
    pub fn reset_window(&self, now: u64) {
        self.window_start.store(now, Ordering::Relaxed);
        self.arrivals.store(0, Ordering::Relaxed);
        self.no_work.store(0, Ordering::Relaxed);
        self.busy_ns.store(0, Ordering::Relaxed);
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

    /// A source's arrivals on a clock of their own.
    struct Feeder<'a> {
        s: &'a StormState,
        p: &'a StormParams,
        now: u64,
    }

    impl<'a> Feeder<'a> {
        fn new(s: &'a StormState, p: &'a StormParams) -> Self {
            Feeder { s, p, now: 1_000_000_000 }
        }

        /// `per_window` arrivals per window for `windows` windows; `idle_pct` % of them
        /// report no work, and each of those is charged `busy_ns` (as the framework does:
        /// time is charged only for no work). Returns the storm verdicts seen.
        fn feed(&mut self, per_window: u64, idle_pct: u64, busy_ns: u64, windows: u64) -> u32 {
            let gap = self.p.window_ns() / per_window;
            let mut storms = 0;
            for i in 0..windows * per_window {
                self.now += gap;
                if self.s.arrive_with(self.p, self.now).0 == Verdict::Storm {
                    storms += 1;
                }
                if (i % 100) < idle_pct {
                    self.s.no_work();
                    self.s.busy(busy_ns);
                }
            }
            storms
        }
    }

    /// A fresh source fed under the default parameters; the first arrival opens its first
    /// window, so one more arrival closes the last one.
    fn feed(s: &StormState, per_window: u64, idle_pct: u64, busy_ns: u64, windows: u64) -> u32 {
        let p = StormParams::new();
        let mut f = Feeder::new(s, &p);
        let storms = f.feed(per_window, idle_pct, busy_ns, windows);
        storms + u32::from(s.arrive_with(&p, f.now + p.window_ns() / per_window).0 == Verdict::Storm)
    }

    #[test]
    fn a_line_nobody_serves_is_a_storm_within_the_hot_windows() {
        let s = StormState::new();
        assert_eq!(feed(&s, 100, 100, 0, HOT_WINDOWS as u64), 1);
        assert!(s.throttled.load(Ordering::Relaxed));
        assert!(s.last_rate.load(Ordering::Relaxed) >= 45_000);
        // Not one window earlier.
        let s = StormState::new();
        assert_eq!(feed(&s, 100, 100, 0, HOT_WINDOWS as u64 - 1), 0);
        assert!(!s.throttled.load(Ordering::Relaxed));
    }

    #[test]
    fn a_source_that_wastes_half_a_cpu_is_a_storm_below_the_idle_share() {
        // 100 per 2 ms, half of them for nothing, 30 µs each: 75 % of a CPU wasted.
        let s = StormState::new();
        assert_eq!(feed(&s, 100, 50, 30_000, HOT_WINDOWS as u64), 1);
        // 10 µs each (25 %): not.
        let s = StormState::new();
        assert_eq!(feed(&s, 100, 50, 10_000, 50), 0);
    }

    #[test]
    fn a_source_that_takes_the_cpu_with_work_is_not() {
        // Every arrival with work: whatever the time taken (the feeder charges none, as the
        // framework does not), never a storm.
        let s = StormState::new();
        assert_eq!(feed(&s, 1_000, 0, 2_000, 50), 0);
    }

    #[test]
    fn a_high_rate_with_work_is_not() {
        // 350 k/s (700 per window), work at every arrival, 1 µs each (35 %): never.
        let s = StormState::new();
        assert_eq!(feed(&s, 700, 0, 1_000, 50), 0);
        // 5 M/s with half the arrivals finding work: never either.
        let s = StormState::new();
        assert_eq!(feed(&s, 10_000, 50, 50, 20), 0);
    }

    #[test]
    fn a_slow_source_is_never_hot() {
        // Half the minimum per window, none with work, each taking a whole window's share.
        let s = StormState::new();
        assert_eq!(feed(&s, MIN_ARRIVALS / 2, 100, WINDOW_NS, 50), 0);
    }

    #[test]
    fn an_interrupted_run_of_hot_windows_starts_over() {
        let p = StormParams::new();
        let s = StormState::new();
        let mut f = Feeder::new(&s, &p);
        let hw = HOT_WINDOWS as u64;
        // The first arrival opens the first window; each window closes at the first arrival
        // of the next.
        assert_eq!(f.feed(100, 100, 0, hw - 1), 0);
        assert_eq!(f.feed(100, 0, 0, 1), 0, "the last hot window closes, a calm one begins");
        assert_eq!(f.feed(100, 100, 0, hw), 0, "the calm window restarted the count");
        assert_eq!(f.feed(100, 100, 0, 1), 1);
    }

    #[test]
    fn a_window_too_sparse_to_judge_neither_breaks_nor_extends_a_run() {
        let p = StormParams::new();
        let s = StormState::new();
        let mut f = Feeder::new(&s, &p);
        let hw = HOT_WINDOWS as u64;
        assert_eq!(f.feed(100, 100, 0, hw - 1), 0);
        // A pause (the vCPU lost its host core): one arrival closes the pending hot window,
        // the next, a pause later, closes a window that holds only that one.
        for _ in 0..2 {
            f.now += 10 * WINDOW_NS;
            assert_eq!(s.arrive_with(&p, f.now).0, Verdict::Calm);
            s.no_work();
        }
        assert_eq!(s.hot.load(Ordering::Relaxed), hw as u32 - 1, "the sparse window changed the run");
        assert_eq!(f.feed(100, 100, 0, 1), 1, "the run went on");
    }

    #[test]
    fn one_filter_in_eight_is_timed() {
        let s = StormState::new();
        let timed = (0..64).filter(|&i| s.arrive(1_000_000_000 + i).1).count();
        assert_eq!(timed as u64, 64 / FILTER_SAMPLE);
    }

    #[test]
    fn backoff_doubles_on_relapse_and_resets_when_calm() {
        let s = StormState::new();
        assert_eq!(feed(&s, 100, 100, 0, HOT_WINDOWS as u64), 1);
        assert_eq!(s.backoff.load(Ordering::Relaxed), 2 * BACKOFF_MIN_NS);
        let first = s.unmask_at.load(Ordering::Relaxed);
        s.throttled.store(false, Ordering::Relaxed);
        s.reset_window(first);
        let p = StormParams::new();
        let mut f = Feeder::new(&s, &p);
        f.now = first;
        assert_eq!(f.feed(100, 100, 0, HOT_WINDOWS as u64 + 1), 1);
        assert_eq!(s.backoff.load(Ordering::Relaxed), 4 * BACKOFF_MIN_NS);
        s.calm_down();
        assert_eq!(s.backoff.load(Ordering::Relaxed), BACKOFF_MIN_NS);
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
        p.set_hot_windows(4).unwrap();
        assert_eq!(p.hot_windows(), 4);
        assert!(p.set_min_arrivals(0).is_err());
        assert!(p.set_idle_percent(101).is_err());
        assert!(p.set_idle_percent(0).is_err());
        assert_eq!(p.idle_percent(), IDLE_PERCENT);
        assert!(p.set_busy_percent(0).is_err());
        assert!(p.set_busy_percent(1001).is_err());
        assert_eq!(p.busy_percent(), BUSY_PERCENT);
        assert!(p.set_quiet_ns(0).is_err());
        p.set_quiet_ns(7_000_000).unwrap();
        assert_eq!(p.quiet_ns(), 7_000_000);
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
        let run = |p: &StormParams, per_window: u64, idle: u64, busy: u64, windows: u64| {
            let s = StormState::new();
            let mut f = Feeder::new(&s, p);
            f.feed(per_window, idle, busy, windows + 1)
        };
        // 5 arrivals per window, none with work: below the default minimum, never a storm...
        assert_eq!(run(&StormParams::new(), 5, 100, 0, 20), 0);
        // ...but a storm after 2 windows once the minimum is 4 and 2 windows suffice.
        let p = StormParams::new();
        p.set_min_arrivals(4).unwrap();
        p.set_hot_windows(2).unwrap();
        assert_eq!(run(&p, 5, 100, 0, 2), 1);
        // Half the arrivals without work is a storm only when the threshold is at most 50 %.
        assert_eq!(run(&p, 100, 50, 0, 10), 0);
        p.set_idle_percent(50).unwrap();
        assert_eq!(run(&p, 100, 50, 0, 10), 1);
        // 30 % wasted (10 % of the arrivals, 60 µs each) is a storm only when the busy
        // threshold is at most 30 %.
        assert_eq!(run(&p, 100, 10, 60_000, 10), 0);
        p.set_busy_percent(30).unwrap();
        assert_eq!(run(&p, 100, 10, 60_000, 10), 1);
        // A longer window: the same storm still takes 2 windows, now of 10 ms each.
        p.set_window_ns(10_000_000).unwrap();
        p.set_backoff_min_ns(5_000_000).unwrap();
        let s = StormState::new();
        let mut f = Feeder::new(&s, &p);
        assert_eq!(f.feed(100, 100, 0, 2), 0);
        assert_eq!(f.feed(100, 100, 0, 1), 1);
        assert_eq!(s.backoff.load(Ordering::Relaxed), 10_000_000, "doubled from the tuned minimum");
    }
}
