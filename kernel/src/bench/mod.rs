//! The benchmark runner (`run=bench`): every benchmark registered with `kbench!` (see the
//! `kbench` crate's documentation for how to add one) whose name contains `bench.filter=`,
//! run one after another on CPU 0, each figure printed as an `@@ bench` line, then
//! `@@ bench-done` (docs/PROTOCOL.md). Before the figures, `@@ bench-config` states the lock
//! configuration they are taken in ([`config_line`]); nothing is reconfigured for the
//! benchmarks, so a `run=bench` boot measures what a default boot runs (lock statistics and
//! checking off: the lock fast paths).
//!
//! How figures are taken: the `main` thread binds itself to CPU 0; the other CPUs have
//! nothing to run and halt in their idle loops (under TCG `-icount` every vCPU shares one
//! instruction count, so a busy CPU would inflate every sample). Preemption is disabled
//! while a benchmark measures (the `Bencher`'s hooks); interrupts stay enabled, so the clock
//! interrupt lands inside a few samples — the median ignores them, p99 may show them.
//! (`mutex.handoff` and `mutex.contended.throughput`, in `locks.rs`, are the exceptions: they
//! spawn threads bound to the other CPUs, and their figures count every CPU's instructions.)
//! `baseline.empty` (the measurement loop around nothing) is measured first in every boot,
//! whatever the filter, and its median is subtracted from every `Bencher::iter` figure.
//! A benchmark that reports one figure per interrupt dispatch model (`intr.rs`) prints its
//! own lines through [`figure`], which adds `model=` (the `Bencher` carries one unlabelled
//! figure per benchmark).

mod baseline;
mod intr;
mod locks;
pub mod probe;
mod sched;
mod spl;
mod storm;

use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

use arch::kprintln;
use kbench::{BenchLine, Bencher, KBench};
use ktest::{kassert, kassert_eq, ktest, TestResult};
use machine::Machine;

use crate::cmdline::Options;
use crate::SCHED;

fn quiet_begin() {
    SCHED.preempt_disable();
}

fn quiet_end() {
    SCHED.preempt_enable();
}

/// The `bench.unit=` values, as `run` stores them in [`UNIT`].
const UNITS: [&str; 3] = ["tsc", "instructions", "cycles"];
/// This run's unit: an index into [`UNITS`] (set by [`run`]).
static UNIT: AtomicUsize = AtomicUsize::new(0);
/// Figures printed by [`figure`] since the runner last looked.
static OWN_FIGURES: AtomicUsize = AtomicUsize::new(0);

/// This run's `bench.unit=`.
pub fn unit() -> &'static str {
    UNITS[UNIT.load(Ordering::Relaxed)]
}

/// Prints one figure over `samples` (sorted in place; reported raw) labelled with the
/// interrupt dispatch model: `@@ bench name=… unit=… samples=… median=… p99=… min=… model=…`.
/// For benchmarks with one figure per model; nothing is printed for no samples.
pub fn figure(name: &str, model: &str, samples: &mut [u64]) {
    let Some(summary) = kbench::summarize(samples) else { return };
    let unit = UNITS[UNIT.load(Ordering::Relaxed)];
    kprintln!("{} model={model}", BenchLine::Result { name, unit, summary });
    OWN_FIGURES.fetch_add(1, Ordering::Relaxed);
}

/// [`figure`] in a unit of its own (`ns` of guest time, a count, a rate), for figures that
/// are not instruction counts of a code path.
pub fn figure_in(name: &str, model: &str, unit: &str, samples: &mut [u64]) {
    let Some(summary) = kbench::summarize(samples) else { return };
    kprintln!("{} model={model}", BenchLine::Result { name, unit, summary });
    OWN_FIGURES.fetch_add(1, Ordering::Relaxed);
}

/// A bencher taking `samples` samples, with preemption disabled while it measures.
pub fn bencher(samples: usize) -> Bencher {
    Bencher::new(samples).with_hooks(quiet_begin, quiet_end)
}

/// Why the registry is unusable (a name the protocol cannot carry, or a duplicate).
fn check_names(reg: &[KBench]) -> Result<(), alloc::string::String> {
    let mut seen: Vec<&str> = Vec::new();
    for k in reg {
        if k.name.is_empty() || k.name.contains(char::is_whitespace) || k.name.contains('=') {
            return Err(alloc::format!("benchmark name {:?} is empty or has a space or '='", k.name));
        }
        if seen.contains(&k.name) {
            return Err(alloc::format!("benchmark name {} is registered twice", k.name));
        }
        seen.push(k.name);
    }
    Ok(())
}

/// The configuration the figures are taken in, as printed before them:
/// `@@ bench-config lockstat=on|off lockcheck=on|off` (docs/PROTOCOL.md). The runner changes
/// nothing: a `run=bench` boot has a default boot's configuration unless its command line
/// says otherwise, and the shell's `bench` runs in whatever `kern.lockstat` and
/// `kern.lockcheck` are at the time.
pub fn config_line() -> alloc::string::String {
    let w = &crate::locks::SYNC.witness;
    let on_off = |b: bool| if b { "on" } else { "off" };
    alloc::format!("@@ bench-config lockstat={} lockcheck={}", on_off(w.stats_on()), on_off(w.checking()))
}

/// Runs every selected benchmark on CPU 0; returns whether the run was valid.
pub fn run(opts: &Options) -> bool {
    let reg = kbench::registry();
    if let Err(e) = check_names(reg) {
        kprintln!("bench: {e}");
        return false;
    }
    SCHED.bind_current(Some(0));
    let (filter, unit) = (opts.bench_filter.as_str(), opts.bench_unit);
    UNIT.store(UNITS.iter().position(|u| *u == unit).unwrap_or(0), Ordering::Relaxed);
    kprintln!(
        "bench: {} samples per figure, unit {unit}, on CPU {} of {}, filter {:?}",
        opts.bench_samples,
        SCHED.cpu_index(),
        arch::X86_64::ncpus(),
        filter
    );
    kprintln!("{}", config_line());
    let mut b = bencher(opts.bench_samples);
    kbench::empty(&mut b);
    let Some(empty) = b.summary() else { return false };
    b.set_overhead(empty.median);
    if kbench::selected(kbench::EMPTY, filter) {
        kprintln!("{}", BenchLine::Result { name: kbench::EMPTY, unit, summary: empty });
    }
    for k in reg.iter().filter(|k| k.name != kbench::EMPTY && kbench::selected(k.name, filter)) {
        b.reset();
        OWN_FIGURES.store(0, Ordering::Relaxed);
        (k.run)(&mut b);
        match b.summary() {
            Some(summary) => kprintln!("{}", BenchLine::Result { name: k.name, unit, summary }),
            None if OWN_FIGURES.load(Ordering::Relaxed) > 0 => {}
            None => kprintln!("bench: {} took no samples here (skipped)", k.name),
        }
    }
    kprintln!("{}", BenchLine::Done);
    true
}

fn registry_has_the_baselines() -> TestResult {
    let reg = kbench::registry();
    check_names(reg)?;
    for name in [kbench::EMPTY, "baseline.cli_spinlock.enter_exit", "baseline.lock_cmpxchg_pair"] {
        kassert!(reg.iter().any(|k| k.name == name), "{name} is not registered");
    }
    Ok(())
}
ktest!(T_REGISTRY, "bench::registry::baselines", registry_has_the_baselines);

fn baselines_take_samples() -> TestResult {
    let mut b = bencher(200);
    for k in kbench::registry().iter().filter(|k| k.name.starts_with("baseline.")) {
        b.reset();
        (k.run)(&mut b);
        let s = b.summary().ok_or(alloc::format!("{} took no samples", k.name))?;
        kassert_eq!(s.samples, 200, "{}", k.name);
        kassert!(s.min <= s.median && s.median <= s.p99, "{}: {s:?}", k.name);
    }
    Ok(())
}
ktest!(T_SAMPLES, "bench::baseline::take_samples", baselines_take_samples);

fn bench_options() -> TestResult {
    let o = crate::cmdline::parse("run=bench bench.filter=baseline. bench.samples=2000 bench.unit=cycles")
        .map_err(|e| e.option)?;
    kassert_eq!(o.run, crate::cmdline::RunMode::Bench);
    kassert_eq!(o.bench_filter.as_str(), "baseline.");
    kassert_eq!(o.bench_samples, 2000);
    kassert_eq!(o.bench_unit, "cycles");
    kassert_eq!(crate::cmdline::Options::default().bench_samples, 100_000);
    for bad in ["bench.samples=0", "bench.samples=x", "bench.unit=ns"] {
        let e = crate::cmdline::parse(bad).err().ok_or(alloc::format!("{bad} accepted"))?;
        kassert!(bad.starts_with(e.option.as_str()), "{bad} blamed {}", e.option);
    }
    Ok(())
}
ktest!(T_OPTIONS, "bench::cmdline::options", bench_options);
