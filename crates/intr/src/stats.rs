//! Per-source accounting that survives pooling: the numbers live with the source, not with
//! a thread, so it does not matter which ithread ran the handler.
//!
//! Per CPU: interrupts taken (arrival CPU), handler runs and handler time (the CPU that ran
//! the handler — not always the arrival CPU under pooling). Per source: handler runs, CPU time
//! in handlers, and a latency
//! histogram (raise → handler start) with log-linear buckets (4 sub-buckets per power of two,
//! so a percentile is within 19 % of the true value), from which p50/p99 are read.
//!
//! Per source *and* CPU (the CPU that ran the handler): a latency histogram too
//! ([`CpuHistograms`]), with the same buckets so per-CPU and per-source percentiles agree, but
//! compact: a CPU's histogram is allocated the first time a handler of the source runs there
//! (most sources are handled on one or two CPUs: interrupt affinity), it stops at 2^36 ns
//! (~69 s; slower values count in its last bucket) — 140 buckets, 1120 bytes instead of
//! 248 × 8 = 1984 — and it keeps no separate count (the sum of its buckets is). A source pays
//! 64 pointers (512 bytes) plus 1120 bytes per CPU that ran its handler, against 124 KiB for
//! 64 full histograms. The hot path adds one pointer load, a test and one atomic add to the
//! per-source record; the bucket index is computed once for both.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

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

/// The `p`-th percentile (0..=100) of `n` values counted in `buckets` (bucket `b` holds the
/// values in `[bucket_floor(b), bucket_floor(b + 1))`), as its bucket's lower bound; 0 if
/// `n` is 0.
fn percentile_of(buckets: &[AtomicU64], n: u64, p: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let rank = (n * p.min(100)).div_ceil(100).max(1);
    let mut seen = 0;
    for (b, c) in buckets.iter().enumerate() {
        seen += c.load(Ordering::Relaxed);
        if seen >= rank {
            return bucket_floor(b);
        }
    }
    bucket_floor(buckets.len() - 1)
}

/// The non-empty buckets of `buckets` as `(lower_bound, count)`, lowest first.
fn nonzero_buckets(buckets: &[AtomicU64]) -> impl Iterator<Item = (u64, u64)> + '_ {
    buckets.iter().enumerate().filter_map(|(b, c)| {
        let n = c.load(Ordering::Relaxed);
        (n > 0).then(|| (bucket_floor(b), n))
    })
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
        self.record_bucket(bucket_of(v));
    }

    /// Adds one value whose bucket ([`bucket_of`]) is `b`.
    #[inline]
    pub fn record_bucket(&self, b: usize) {
        self.buckets[b.min(NBUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The non-empty buckets as `(lower_bound, count)` pairs, lowest first: the distribution
    /// (a value `v` is counted in the last pair whose lower bound is `<= v`).
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        nonzero_buckets(&self.buckets)
    }

    /// Number of values.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The `p`-th percentile (0..=100) as the lower bound of its bucket; 0 when empty.
    pub fn percentile(&self, p: u64) -> u64 {
        percentile_of(&self.buckets, self.count(), p)
    }
}

/// Buckets of a per-CPU histogram: [`bucket_of`]'s up to 2^36 ns; larger values count in the
/// last one.
pub const CPU_NBUCKETS: usize = 4 * 35;

/// One CPU's latency histogram of one source (see the module doc).
pub struct CpuHistogram {
    buckets: [AtomicU64; CPU_NBUCKETS],
}

impl CpuHistogram {
    fn new() -> Self {
        CpuHistogram { buckets: [const { AtomicU64::new(0) }; CPU_NBUCKETS] }
    }

    /// Number of values (the sum of the buckets).
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The `p`-th percentile (0..=100) as the lower bound of its bucket; 0 when empty.
    pub fn percentile(&self, p: u64) -> u64 {
        percentile_of(&self.buckets, self.count(), p)
    }

    /// The non-empty buckets as `(lower_bound, count)` pairs, lowest first.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        nonzero_buckets(&self.buckets)
    }
}

/// Per-CPU latency histograms of one source, each allocated when its CPU first records.
pub struct CpuHistograms {
    cpus: [AtomicPtr<CpuHistogram>; sched::MAX_CPUS],
}

impl Default for CpuHistograms {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuHistograms {
    /// None allocated.
    pub const fn new() -> Self {
        CpuHistograms { cpus: [const { AtomicPtr::new(core::ptr::null_mut()) }; sched::MAX_CPUS] }
    }

    /// Adds one value for `cpu` (the CPU that ran the handler).
    pub fn record(&self, cpu: usize, v: u64) {
        self.record_bucket(cpu, bucket_of(v));
    }

    /// Adds one value whose bucket ([`bucket_of`]) is `b` for `cpu`. The first value of a CPU
    /// allocates its histogram (callable with interrupts disabled: the kernel heap allows it).
    #[inline]
    pub fn record_bucket(&self, cpu: usize, b: usize) {
        let slot = &self.cpus[cpu & (sched::MAX_CPUS - 1)];
        let h = slot.load(Ordering::Acquire);
        if h.is_null() {
            // Out of line with its record: nothing is kept across the call (the callers
            // inline this ahead of a handler call, and would keep `b` in a saved register).
            Self::install_and_record(slot, b);
            return;
        }
        // SAFETY: a non-null slot holds a leaked `Box<CpuHistogram>`, freed only by `drop`,
        // which has `&mut self`.
        unsafe { (*h).buckets[b.min(CPU_NBUCKETS - 1)].fetch_add(1, Ordering::Relaxed) };
    }

    /// [`CpuHistograms::record_bucket`] for a CPU's first value: its histogram made, then
    /// the value counted.
    #[cold]
    #[inline(never)]
    fn install_and_record(slot: &AtomicPtr<CpuHistogram>, b: usize) {
        let h = Self::install(slot);
        // SAFETY: as in `record_bucket` (`install` answers the slot's histogram).
        unsafe { (*h).buckets[b.min(CPU_NBUCKETS - 1)].fetch_add(1, Ordering::Relaxed) };
    }

    fn install(slot: &AtomicPtr<CpuHistogram>) -> *mut CpuHistogram {
        let new = Box::into_raw(Box::new(CpuHistogram::new()));
        match slot.compare_exchange(core::ptr::null_mut(), new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => new,
            Err(other) => {
                // A nested interrupt on this CPU installed one first.
                // SAFETY: `new` came from `Box::into_raw` above and was never shared.
                drop(unsafe { Box::from_raw(new) });
                other
            }
        }
    }

    /// `cpu`'s histogram, if a handler of the source ever ran there.
    pub fn get(&self, cpu: usize) -> Option<&CpuHistogram> {
        let h = self.cpus.get(cpu)?.load(Ordering::Acquire);
        // SAFETY: as in `record_bucket`; the borrow of `self` keeps it alive.
        (!h.is_null()).then(|| unsafe { &*h })
    }

    /// The CPUs with a histogram, with it, lowest CPU first.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &CpuHistogram)> + '_ {
        (0..sched::MAX_CPUS).filter_map(|c| self.get(c).map(|h| (c, h)))
    }

    /// Values recorded for `cpu`.
    pub fn count(&self, cpu: usize) -> u64 {
        self.get(cpu).map_or(0, CpuHistogram::count)
    }

    /// The `p`-th percentile of `cpu`'s values (bucket lower bound); 0 if none.
    pub fn percentile(&self, cpu: usize, p: u64) -> u64 {
        self.get(cpu).map_or(0, |h| h.percentile(p))
    }

    /// `cpu`'s non-empty buckets as `(lower_bound, count)` pairs, lowest first (none if the
    /// CPU never ran a handler of the source).
    pub fn buckets(&self, cpu: usize) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.get(cpu).into_iter().flat_map(CpuHistogram::buckets)
    }
}

impl Drop for CpuHistograms {
    fn drop(&mut self) {
        for slot in &mut self.cpus {
            let h = core::mem::replace(slot.get_mut(), core::ptr::null_mut());
            if !h.is_null() {
                // SAFETY: non-null slots hold leaked boxes (see `install`); we own them now.
                drop(unsafe { Box::from_raw(h) });
            }
        }
    }
}

/// Counters of one source.
pub struct SourceStats {
    /// Interrupts taken, per CPU.
    pub per_cpu: [AtomicU64; sched::MAX_CPUS],
    /// Interrupts the filter called stray.
    pub stray: AtomicU64,
    /// Arrivals while the source was masked, per CPU they arrived on (absorbed: neither
    /// filtered nor counted in `per_cpu`; one is re-raised at the unmask). Only a source
    /// masked in software takes them as a rule; a hardware mask leaves only messages that
    /// were already on their way.
    pub masked_arrivals: [AtomicU64; sched::MAX_CPUS],
    /// Handler runs.
    pub handled: AtomicU64,
    /// CPU time of the handler runs, nanoseconds: their wall time less the time the thread
    /// running them was switched away (blocked on a lock, preempted).
    pub handler_ns: AtomicU64,
    /// The time handler runs spent switched away (what `handler_ns` leaves out).
    pub handler_off_ns: AtomicU64,
    /// Deliveries deferred by the SPL (arrived at or below the CPU's level, replayed by
    /// `splx`), and the time from their arrival to the replay.
    pub spl_deferred: AtomicU64,
    pub spl_deferred_ns: AtomicU64,
    /// Deliveries that waited for the source's unmask (an arrival absorbed while masked,
    /// re-raised at the unmask), and the time from that arrival to the re-raise's dispatch.
    pub masked_waits: AtomicU64,
    pub masked_ns: AtomicU64,
    /// Handler runs, per CPU that ran them.
    pub handled_cpu: [AtomicU64; sched::MAX_CPUS],
    /// Handler time, per CPU that ran it.
    pub handler_ns_cpu: [AtomicU64; sched::MAX_CPUS],
    /// Arrival → handler start, nanoseconds: from the first arrival of the delivery,
    /// including the time it was deferred by the SPL or waited for an unmask.
    pub latency: Histogram,
    /// Arrival → handler start, nanoseconds, per CPU that ran the handler (compact, allocated
    /// per CPU on first use; see the module doc).
    pub latency_cpu: CpuHistograms,
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
            masked_arrivals: [const { AtomicU64::new(0) }; sched::MAX_CPUS],
            handled: AtomicU64::new(0),
            handler_ns: AtomicU64::new(0),
            handler_off_ns: AtomicU64::new(0),
            spl_deferred: AtomicU64::new(0),
            spl_deferred_ns: AtomicU64::new(0),
            masked_waits: AtomicU64::new(0),
            masked_ns: AtomicU64::new(0),
            handled_cpu: [const { AtomicU64::new(0) }; sched::MAX_CPUS],
            handler_ns_cpu: [const { AtomicU64::new(0) }; sched::MAX_CPUS],
            latency: Histogram::new(),
            latency_cpu: CpuHistograms::new(),
        }
    }

    /// Interrupts taken on all CPUs.
    pub fn total(&self) -> u64 {
        self.per_cpu.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Arrivals while masked, all CPUs.
    pub fn masked_total(&self) -> u64 {
        self.masked_arrivals.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Records one handler start: `latency` (raise → start, ns) on the CPU `cpu` that runs it,
    /// in the per-source and the per-CPU histogram (one bucket computation).
    #[inline]
    pub fn record_latency(&self, cpu: usize, latency: u64) {
        let b = bucket_of(latency);
        self.latency.record_bucket(b);
        self.latency_cpu.record_bucket(cpu, b);
    }

    /// Latency percentile `p` of the handler runs on `cpu` (0 if none ran there).
    pub fn latency_percentile_cpu(&self, cpu: usize, p: u64) -> u64 {
        self.latency_cpu.percentile(cpu, p)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

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

    #[test]
    fn buckets_iterate_the_distribution() {
        let h = Histogram::new();
        for v in [0u64, 5, 5, 6, 1000, 1001] {
            h.record(v);
        }
        let pairs: alloc::vec::Vec<(u64, u64)> = h.buckets().collect();
        assert_eq!(pairs, [(0, 1), (5, 2), (6, 1), (896, 2)]);
        assert_eq!(pairs.iter().map(|p| p.1).sum::<u64>(), h.count());
        for (lo, _) in &pairs {
            assert_eq!(bucket_floor(bucket_of(*lo)), *lo, "a lower bound is its bucket's floor");
        }
    }

    #[test]
    fn per_cpu_histograms_are_lazy_and_separate() {
        let s = SourceStats::new();
        assert!(s.latency_cpu.get(0).is_none() && s.latency_cpu.iter().next().is_none());
        for v in 1..=100u64 {
            s.record_latency(1, v * 100); // 100 .. 10_000
            s.record_latency(3, 1_000_000 + v);
        }
        s.record_latency(3, 5);
        // Only the CPUs that recorded have a histogram.
        let cpus: alloc::vec::Vec<usize> = s.latency_cpu.iter().map(|(c, _)| c).collect();
        assert_eq!(cpus, [1, 3]);
        assert_eq!(s.latency_cpu.count(1), 100);
        assert_eq!(s.latency_cpu.count(3), 101);
        assert_eq!(s.latency_cpu.count(0), 0);
        assert_eq!(s.latency_percentile_cpu(0, 50), 0);
        // Per CPU percentiles come from that CPU's values only.
        let p50 = s.latency_percentile_cpu(1, 50);
        assert!((4_000..=5_000).contains(&p50), "cpu 1 p50 {p50}");
        let p99 = s.latency_percentile_cpu(1, 99);
        assert!((8_000..=9_900).contains(&p99), "cpu 1 p99 {p99}");
        assert!((786_432..=1_000_001).contains(&s.latency_percentile_cpu(3, 50)));
        assert_eq!(s.latency_percentile_cpu(3, 0), 5, "p0 is the smallest value's bucket");
        // The per-source histogram saw both CPUs' values, in the same buckets.
        assert_eq!(s.latency.count(), 201);
        let mut merged = [0u64; NBUCKETS];
        for (_, h) in s.latency_cpu.iter() {
            for (lo, n) in h.buckets() {
                merged[bucket_of(lo)] += n;
            }
        }
        let whole: alloc::vec::Vec<(u64, u64)> = s.latency.buckets().collect();
        let from_cpus: alloc::vec::Vec<(u64, u64)> =
            merged.iter().enumerate().filter(|(_, &n)| n > 0).map(|(b, &n)| (bucket_floor(b), n)).collect();
        assert_eq!(whole, from_cpus);
    }

    #[test]
    fn per_cpu_histogram_clamps_huge_values() {
        let h = CpuHistograms::new();
        h.record(2, u64::MAX);
        h.record(2, 1 << 40);
        assert_eq!(h.count(2), 2);
        let pairs: alloc::vec::Vec<(u64, u64)> = h.buckets(2).collect();
        assert_eq!(pairs, [(bucket_floor(CPU_NBUCKETS - 1), 2)]);
        assert!(bucket_floor(CPU_NBUCKETS - 1) >= 1 << 35);
        assert_eq!(h.buckets(7).count(), 0);
    }

    #[test]
    fn per_cpu_recording_from_many_threads() {
        let s = std::sync::Arc::new(SourceStats::new());
        let threads: alloc::vec::Vec<_> = (0..4)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        // Two threads share CPU 0 (lazy install race), the others their own.
                        s.record_latency(if t < 2 { 0 } else { t }, i % 1000);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.latency_cpu.count(0), 20_000);
        assert_eq!(s.latency_cpu.count(2), 10_000);
        assert_eq!(s.latency_cpu.count(3), 10_000);
        assert_eq!(s.latency.count(), 40_000);
    }
}
