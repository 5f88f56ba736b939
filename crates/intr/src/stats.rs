//! Per-source accounting that survives pooling: the numbers live with the source, not with
//! a thread, so it does not matter which ithread ran the handler.
//!
//! Per CPU: interrupts taken (arrival CPU), handler runs and handler time (the CPU that ran
//! the handler — not always the arrival CPU under pooling). Per source: handler runs, CPU time
//! in handlers, and a latency
//! histogram (raise → handler start) with log-linear buckets (4 sub-buckets per power of two,
//! so a percentile is within 19 % of the true value), from which p50/p99 are read.

use core::sync::atomic::{AtomicU64, Ordering};

/// Number of histogram buckets: values up to 2^62 ns.
pub const NBUCKETS: usize = 4 * 62;

/// Bucket of a value: 4 sub-buckets per power of two above 4.
pub fn bucket_of(v: u64) -> usize {
    if v < 4 {
        return v as usize;
    }
    let log = 63 - v.leading_zeros() as usize; // >= 2
    let sub = ((v >> (log - 2)) & 3) as usize;
    (4 * (log - 1) + sub).min(NBUCKETS - 1)
}

/// Smallest value that falls in bucket `b` (its lower bound).
pub fn bucket_floor(b: usize) -> u64 {
    if b < 4 {
        return b as u64;
    }
    let log = b / 4 + 1;
    let sub = (b % 4) as u64;
    (4 + sub) << (log - 2)
}

/// A latency histogram.
pub struct Histogram {
    buckets: [AtomicU64; NBUCKETS],
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// Empty.
    pub const fn new() -> Self {
        Histogram { buckets: [const { AtomicU64::new(0) }; NBUCKETS], count: AtomicU64::new(0) }
    }

    /// Adds one value.
    pub fn record(&self, v: u64) {
        self.buckets[bucket_of(v)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Number of values.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The `p`-th percentile (0..=100) as the lower bound of its bucket; 0 when empty.
    pub fn percentile(&self, p: u64) -> u64 {
        let n = self.count();
        if n == 0 {
            return 0;
        }
        let rank = (n * p).div_ceil(100).max(1);
        let mut seen = 0;
        for (b, c) in self.buckets.iter().enumerate() {
            seen += c.load(Ordering::Relaxed);
            if seen >= rank {
                return bucket_floor(b);
            }
        }
        bucket_floor(NBUCKETS - 1)
    }
}

/// Counters of one source.
pub struct SourceStats {
    /// Interrupts taken, per CPU.
    pub per_cpu: [AtomicU64; sched::MAX_CPUS],
    /// Interrupts the filter called stray.
    pub stray: AtomicU64,
    /// Handler runs.
    pub handled: AtomicU64,
    /// Nanoseconds spent in the handler.
    pub handler_ns: AtomicU64,
    /// Handler runs, per CPU that ran them.
    pub handled_cpu: [AtomicU64; sched::MAX_CPUS],
    /// Handler time, per CPU that ran it.
    pub handler_ns_cpu: [AtomicU64; sched::MAX_CPUS],
    /// Raise → handler start, nanoseconds.
    pub latency: Histogram,
}

impl Default for SourceStats {
    fn default() -> Self {
        Self::new()
    }
}

impl SourceStats {
    /// All zero.
    pub const fn new() -> Self {
        SourceStats {
            per_cpu: [const { AtomicU64::new(0) }; sched::MAX_CPUS],
            stray: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            handler_ns: AtomicU64::new(0),
            handled_cpu: [const { AtomicU64::new(0) }; sched::MAX_CPUS],
            handler_ns_cpu: [const { AtomicU64::new(0) }; sched::MAX_CPUS],
            latency: Histogram::new(),
        }
    }

    /// Interrupts taken on all CPUs.
    pub fn total(&self) -> u64 {
        self.per_cpu.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in [0u64, 1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 100, 1000, 1 << 20, u64::MAX / 4] {
            let b = bucket_of(v);
            assert!(b >= last, "bucket of {v} went down");
            last = b;
            let lo = bucket_floor(b);
            assert!(lo <= v, "floor {lo} above {v}");
            if v >= 4 {
                assert!(v - lo <= v / 4, "bucket of {v} too wide (floor {lo})");
            }
        }
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let h = Histogram::new();
        for v in 1..=100u64 {
            h.record(v * 1000);
        }
        let p50 = h.percentile(50);
        let p99 = h.percentile(99);
        assert!((40_000..=50_000).contains(&p50), "p50 {p50}");
        assert!((80_000..=99_000).contains(&p99), "p99 {p99}");
        assert_eq!(Histogram::new().percentile(50), 0);
    }
}
