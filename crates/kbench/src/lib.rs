//! # In-kernel benchmarks
//!
//! A benchmark is a `fn(&mut Bencher)` registered with [`kbench!`] anywhere in the kernel's
//! crates. Registration places a [`KBench`] record in the `.kbench` link section; the
//! kernel's linker script brackets that section with `__kbench_start` / `__kbench_end`, and
//! [`registry`] returns the records as a slice — the same scheme as `ktest`'s `.ktests`.
//! The kernel's runner (`kernel/src/bench/`, `run=bench` on the kernel command line) runs the
//! selected benchmarks one after another on CPU 0, with preemption disabled while measuring
//! and every other CPU idle, and prints one [`BenchLine`] per figure (docs/PROTOCOL.md).
//!
//! ## Adding a benchmark (the whole affair)
//!
//! ```text
//! use kbench::{kbench, Bencher};
//!
//! fn adaptive_enter_exit(b: &mut Bencher) {
//!     let m = sync::Mutex::new_adaptive("bench");   // set-up: not measured
//!     b.iter(|| drop(m.lock()));                    // measured once per sample
//! }
//! kbench!(B_MUTEX_ADAPTIVE, "mutex.adaptive.enter_exit", adaptive_enter_exit);
//! ```
//!
//! Names are `area.topic.case` (dots, no spaces); `--filter` / `bench.filter=` select by
//! substring. Call [`Bencher::iter`] once per benchmark: it runs the closure
//! [`Bencher::samples`] times (after a short warm-up), each time between two reads of the
//! cycle counter ([`now`]), and the reported figures are net of the measurement loop's own
//! cost — the median of `baseline.empty` ([`empty`], `b.iter(|| {})`), which the runner
//! measures first in every boot. A benchmark that must time something `iter` cannot (a
//! hand-off between two CPUs, throughput over a period) reads [`now`] itself and calls
//! [`Bencher::record`] per sample (figures are then reported raw, not net), wrapping its
//! measuring part in [`Bencher::quiet`] to get the same no-preemption treatment. A benchmark
//! that records nothing (e.g. it needs two CPUs and the boot has one) prints no figure.
//!
//! ## Figures
//!
//! Over the samples: the median (the lower one for an even count), the 99th percentile
//! (nearest rank) and the minimum ([`summarize`]). The median is the headline: the clock
//! interrupt lands inside a few samples, and the median ignores them.
//!
//! ## The unit
//!
//! [`now`] reads the TSC. Under QEMU TCG with `-icount shift=0` the guest TSC advances by
//! exactly one per executed guest instruction, so figures are instruction counts, and a run
//! is deterministic; on hardware KVM they are TSC cycles. The kernel cannot tell which it is
//! running under; the host passes `bench.unit=` and the lines carry it.
#![no_std]

extern crate alloc;

use alloc::vec::Vec;
use core::fmt;
use core::hint::black_box;

/// One registered benchmark.
#[repr(C)]
pub struct KBench {
    /// `area.topic.case`, no spaces.
    pub name: &'static str,
    /// The benchmark body: set-up, then one [`Bencher::iter`] (or [`Bencher::record`]s).
    pub run: fn(&mut Bencher),
}

/// Registers a benchmark: `kbench!(NAME_STATIC, "mutex.adaptive.enter_exit", body_fn);`
#[macro_export]
macro_rules! kbench {
    ($id:ident, $name:expr, $f:path) => {
        #[allow(unsafe_code)] // `link_section`: the registry is a linker-built array
        #[used]
        #[link_section = ".kbench"]
        static $id: $crate::KBench = $crate::KBench { name: $name, run: $f };
    };
}

/// Every registered benchmark, in link order.
#[cfg(target_os = "none")]
pub fn registry() -> &'static [KBench] {
    extern "C" {
        static __kbench_start: u8;
        static __kbench_end: u8;
    }
    // SAFETY: the linker script places only `KBench` records (each `#[repr(C)]`, 8-aligned,
    // emitted by `kbench!`) between the two symbols.
    unsafe {
        let start = core::ptr::addr_of!(__kbench_start) as *const KBench;
        let end = core::ptr::addr_of!(__kbench_end) as *const KBench;
        let n = (end as usize - start as usize) / core::mem::size_of::<KBench>();
        core::slice::from_raw_parts(start, n)
    }
}

/// Whether a benchmark is selected by a `bench.filter` substring (empty selects all).
pub fn selected(name: &str, filter: &str) -> bool {
    filter.is_empty() || name.contains(filter)
}

/// The name of the measurement loop's own cost, subtracted from every [`Bencher::iter`]
/// figure.
pub const EMPTY: &str = "baseline.empty";

/// The `baseline.empty` benchmark: the measurement loop around nothing.
pub fn empty(b: &mut Bencher) {
    b.iter(|| {});
}

/// Reads the cycle counter: the TSC (instructions under TCG `-icount shift=0`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: `rdtsc` only reads the time-stamp counter; it is available on every x86_64
    // CPU and in every ring (the kernel does not set CR4.TSD).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Reads the cycle counter. No counter is wired up for this architecture: it reads 0.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub fn now() -> u64 {
    0
}

fn nothing() {}

/// What a benchmark body measures with: the sample count, the samples, the hooks that keep
/// the CPU quiet while measuring.
pub struct Bencher {
    samples: usize,
    buf: Vec<u64>,
    overhead: u64,
    net: bool,
    quiet_begin: fn(),
    quiet_end: fn(),
}

impl Bencher {
    /// A bencher taking `samples` samples per benchmark (at least 1), with no hooks and no
    /// overhead to subtract.
    pub fn new(samples: usize) -> Self {
        let samples = samples.max(1);
        Bencher {
            samples,
            buf: Vec::with_capacity(samples),
            overhead: 0,
            net: false,
            quiet_begin: nothing,
            quiet_end: nothing,
        }
    }

    /// Functions called around every measuring section (e.g. disable / enable preemption).
    pub fn with_hooks(mut self, begin: fn(), end: fn()) -> Self {
        self.quiet_begin = begin;
        self.quiet_end = end;
        self
    }

    /// Sets the cost of the measurement loop itself, subtracted from `iter` figures.
    pub fn set_overhead(&mut self, overhead: u64) {
        self.overhead = overhead;
    }

    /// The cost of the measurement loop itself.
    pub fn overhead(&self) -> u64 {
        self.overhead
    }

    /// How many samples a benchmark should take.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Forgets the samples of the previous benchmark.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.net = false;
    }

    /// Runs `f` with the CPU kept quiet (the hooks of [`Bencher::with_hooks`]).
    #[inline(always)]
    pub fn quiet<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        (self.quiet_begin)();
        let r = f(self);
        (self.quiet_end)();
        r
    }

    /// Measures `op`: a short warm-up, then [`Bencher::samples`] times
    /// `t0 = now(); op(); t1 = now()`, recording `t1 - t0`. Replaces earlier samples; the
    /// figures are reported net of [`Bencher::overhead`].
    #[inline(always)]
    pub fn iter<R>(&mut self, mut op: impl FnMut() -> R) {
        self.buf.clear();
        self.net = true;
        let n = self.samples;
        self.buf.reserve(n);
        let warm = (n / 16).clamp(1, 256);
        self.quiet(|b| {
            // One loop, so `op` has a single call site: the compiler inlines it (a closure
            // called from two loops may be left out of line, adding its call, frame and return
            // to every sample — instructions `baseline.empty` does not have).
            for i in 0..warm + n {
                let t0 = now();
                black_box(op());
                let t1 = now();
                if i >= warm {
                    b.buf.push(t1.wrapping_sub(t0));
                }
            }
        });
    }

    /// Records one sample measured by the benchmark itself (reported raw, not net).
    pub fn record(&mut self, sample: u64) {
        self.net = false;
        self.buf.push(sample);
    }

    /// The figures over the samples taken since the last [`Bencher::reset`] (net of the
    /// overhead if they came from [`Bencher::iter`]); `None` if there are none. Sorts them.
    pub fn summary(&mut self) -> Option<Summary> {
        let s = summarize(&mut self.buf)?;
        Some(if self.net { s.net_of(self.overhead) } else { s })
    }
}

/// The figures of one benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Number of samples.
    pub samples: usize,
    /// The median (the lower of the two middle samples for an even count).
    pub median: u64,
    /// The 99th percentile (nearest rank: the smallest sample ≥ 99 % of all).
    pub p99: u64,
    /// The smallest sample.
    pub min: u64,
}

impl Summary {
    /// The same figures less `overhead` (never below 0).
    pub fn net_of(self, overhead: u64) -> Summary {
        Summary {
            samples: self.samples,
            median: self.median.saturating_sub(overhead),
            p99: self.p99.saturating_sub(overhead),
            min: self.min.saturating_sub(overhead),
        }
    }
}

/// Median, p99 and minimum of `samples` (sorted in place); `None` if empty.
pub fn summarize(samples: &mut [u64]) -> Option<Summary> {
    let n = samples.len();
    if n == 0 {
        return None;
    }
    samples.sort_unstable();
    // Nearest rank: the ceil(0.99 n)-th smallest, 1-based.
    let rank99 = (n * 99).div_ceil(100);
    Some(Summary { samples: n, median: samples[(n - 1) / 2], p99: samples[rank99 - 1], min: samples[0] })
}

/// One protocol line about benchmarks.
pub enum BenchLine<'a> {
    /// One figure: `@@ bench name=N unit=U samples=N median=N p99=N min=N`.
    Result {
        /// Benchmark name.
        name: &'a str,
        /// `instructions`, `cycles` or `tsc` (the kernel's `bench.unit=`).
        unit: &'a str,
        /// The figures.
        summary: Summary,
    },
    /// `@@ bench-done`: every selected benchmark ran.
    Done,
}

impl fmt::Display for BenchLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchLine::Result { name, unit, summary: s } => write!(
                f,
                "@@ bench name={name} unit={unit} samples={} median={} p99={} min={}",
                s.samples, s.median, s.p99, s.min
            ),
            BenchLine::Done => f.write_str("@@ bench-done"),
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    fn s(v: &[u64]) -> Summary {
        summarize(&mut v.to_vec()).unwrap()
    }

    #[test]
    fn empty_has_no_summary() {
        assert_eq!(summarize(&mut []), None);
    }

    #[test]
    fn one_sample() {
        assert_eq!(s(&[7]), Summary { samples: 1, median: 7, p99: 7, min: 7 });
    }

    #[test]
    fn median_is_the_lower_middle() {
        assert_eq!(s(&[5, 1, 3]).median, 3);
        assert_eq!(s(&[4, 1, 3, 2]).median, 2);
        assert_eq!(s(&[9, 9]).median, 9);
    }

    #[test]
    fn min_and_unsorted_input() {
        let x = s(&[30, 10, 20, 10, 40]);
        assert_eq!((x.min, x.median, x.p99, x.samples), (10, 20, 40, 5));
    }

    #[test]
    fn p99_is_nearest_rank() {
        // 1..=100: the 99th smallest is 99.
        let v: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(s(&v).p99, 99);
        // 1..=1000: rank 990.
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(s(&v).p99, 990);
        // 101 samples: rank ceil(99.99) = 100.
        let v: Vec<u64> = (1..=101).collect();
        assert_eq!(s(&v).p99, 100);
        // Ten samples: rank ceil(9.9) = 10, the maximum.
        let v: Vec<u64> = (1..=10).collect();
        assert_eq!(s(&v).p99, 10);
    }

    #[test]
    fn outliers_move_p99_not_the_median() {
        // 100 000 samples of 9 with 500 clock-interrupt outliers of 5000.
        let mut v = vec![9u64; 100_000];
        for x in v.iter_mut().step_by(200) {
            *x = 5000;
        }
        let x = s(&v);
        assert_eq!((x.median, x.p99, x.min), (9, 9, 9));
        for x in v.iter_mut().step_by(50) {
            *x = 5000; // now 2 % outliers
        }
        let x = s(&v);
        assert_eq!((x.median, x.p99, x.min), (9, 5000, 9));
    }

    #[test]
    fn net_saturates() {
        let x = Summary { samples: 3, median: 10, p99: 12, min: 1 }.net_of(2);
        assert_eq!(x, Summary { samples: 3, median: 8, p99: 10, min: 0 });
    }

    #[test]
    fn lines_match_the_protocol() {
        let summary = Summary { samples: 100000, median: 9, p99: 11, min: 9 };
        assert_eq!(
            BenchLine::Result { name: "mutex.adaptive.enter_exit", unit: "instructions", summary }
                .to_string(),
            "@@ bench name=mutex.adaptive.enter_exit unit=instructions samples=100000 median=9 p99=11 min=9"
        );
        assert_eq!(BenchLine::Done.to_string(), "@@ bench-done");
    }

    #[test]
    fn filter_is_a_substring() {
        assert!(selected("baseline.empty", ""));
        assert!(selected("mutex.spin.enter_exit", "mutex"));
        assert!(!selected("mutex.spin.enter_exit", "rwlock"));
    }

    #[test]
    fn record_is_raw_and_reset_forgets() {
        let mut b = Bencher::new(4);
        b.set_overhead(5);
        for x in [10, 20, 30] {
            b.record(x);
        }
        assert_eq!(b.summary(), Some(Summary { samples: 3, median: 20, p99: 30, min: 10 }));
        b.reset();
        assert_eq!(b.summary(), None);
    }

    static HOOKS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    fn begin() {
        HOOKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    fn end() {
        HOOKS.fetch_add(100, std::sync::atomic::Ordering::Relaxed);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn iter_takes_samples_net_of_the_overhead() {
        let mut b = Bencher::new(1000).with_hooks(begin, end);
        let mut calls = 0u32;
        b.iter(|| calls += 1);
        assert_eq!(HOOKS.load(std::sync::atomic::Ordering::Relaxed), 101);
        assert!(calls > 1000, "the warm-up runs too: {calls}");
        let raw = b.summary().unwrap();
        assert_eq!(raw.samples, 1000);
        assert!(raw.min > 0, "the TSC moves between two reads");
        // Replaced, not appended; the overhead is subtracted.
        b.set_overhead(raw.min);
        b.iter(|| ());
        let net = b.summary().unwrap();
        assert_eq!(net.samples, 1000);
        assert!(net.min == 0 || net.min < raw.median, "{net:?} vs {raw:?}");
    }

    fn body(b: &mut Bencher) {
        b.record(1);
    }
    kbench!(B_BODY, "kbench.self.body", body);

    #[test]
    fn registration_builds_a_record() {
        assert_eq!(B_BODY.name, "kbench.self.body");
        let mut b = Bencher::new(1);
        (B_BODY.run)(&mut b);
        assert_eq!(b.summary().map(|s| s.median), Some(1));
    }
}
