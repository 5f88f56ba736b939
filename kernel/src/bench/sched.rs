//! Scheduler and soft-interrupt benchmarks, on CPU 0 (the runner binds the bench thread there;
//! the other CPUs idle). Under TCG `-icount shift=0` every interval is the software path named,
//! in instructions; one sample per event, medians over `bench.samples`.
//!
//! * `sched.switch`: thread to thread on one CPU. The bench thread and a partner of the same
//!   priority (32 in `run=bench`), both bound to CPU 0, call `yield_now` in turn; one sample is half of the bench
//!   thread's `now(); yield_now(); now()` (net of the measurement loop): one `yield_now` and one
//!   context switch, with the partner's loop test in the other half. A sample counts only if the
//!   partner ran exactly once in it.
//! * `sched.wakeup_switch`: an interrupt wakes a higher-priority thread. A `direct` source's
//!   handler reads the TSC and calls `SCHED.wakeup` on a thread (16 above the bench thread's
//!   priority: 48 in `run=bench`; bound to CPU 0) asleep in `sleep_prepare`/`sleep_commit`; the sample ends at
//!   that thread's first statement after `sleep_commit` returns: the wake-up (state change,
//!   run-queue insertion, the reschedule request), the rest of the handler's return through the
//!   interrupt path, the preemption at interrupt exit and the context switch.
//! * `softint.latency`: from the `schedule()` call in a hardware interrupt's filter (as COM1's
//!   filter posts `com1.soft`) to the soft handler's first statement: the post, the filter's
//!   and the interrupt's return, the soft vector's replay when the level drops, and the way to
//!   the handler (today: the soft-interrupt thread's wake-up and a context switch). The
//!   filter's source is `direct`, at `IPL_VM`; the soft interrupt is at `IPL_SOFTSERIAL`.
//!
//! Preemption stays enabled (the threads must run on the bench thread's CPU). A clock interrupt
//! lands in a few samples; medians ignore them.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::hint::spin_loop;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arch::{apic, X86_64};
use intr::{FilterResult, IntrFlags, Model, SourceSpec};
use ipl::Ipl;
use kbench::{kbench, now, Bencher};
use ktest::{kassert, ktest, TestResult};
use machine::Machine;
use sched::Priority;

use crate::intr::INTR;
use crate::SCHED;

/// Spin iterations after which an event that has not come is a bug (~100 M instructions).
const STUCK: u64 = 20_000_000;
/// Vectors of this file's sources (the interrupt benchmarks use 0x90..=0xA5).
const WAKE_VECTOR: u8 = 0xA8;
const SOFT_VECTOR: u8 = 0xA9;

fn warm_up(n: usize) -> usize {
    (n / 16).clamp(1, 256)
}

fn start() {
    assert_eq!(SCHED.cpu_index(), 0, "scheduler benchmarks run on CPU 0");
}

/// Waits until `counter` reaches `target`.
#[inline(always)]
fn wait_for(counter: &AtomicU64, target: u64, what: &str) {
    let mut spins = 0u64;
    while counter.load(Ordering::Acquire) < target {
        spins += 1;
        assert!(spins < STUCK, "bench: {what}: the event did not come");
        spin_loop();
    }
}

/// Asks the partner of `sched.switch` (and the woken thread of `sched.wakeup_switch`) to end.
static STOP: AtomicBool = AtomicBool::new(false);
/// The partner's loop rounds / the woken thread's wake-ups.
static ROUNDS: AtomicU64 = AtomicU64::new(0);
/// The TSC read by the handler just before `wakeup` / by the filter just before `schedule()`.
static T_CAUSE: AtomicU64 = AtomicU64::new(0);
/// The TSC read first thing by the woken thread / the soft handler.
static T_EFFECT: AtomicU64 = AtomicU64::new(0);

/// `sched.switch`: half a `yield_now` round trip between two threads on CPU 0.
fn switch(b: &mut Bencher) {
    start();
    let n = b.samples();
    STOP.store(false, Ordering::SeqCst);
    ROUNDS.store(0, Ordering::SeqCst);
    let partner = SCHED.spawn("bench-switch", SCHED.current().priority(), Some(0), || {
        while !STOP.load(Ordering::Relaxed) {
            ROUNDS.fetch_add(1, Ordering::Relaxed);
            SCHED.yield_now();
        }
    });
    // Let the partner start and reach its loop.
    while ROUNDS.load(Ordering::Relaxed) == 0 {
        SCHED.yield_now();
    }
    let overhead = b.overhead();
    let (mut taken, mut skipped, mut i) = (0usize, 0usize, 0usize);
    // `n` samples, however many are dropped (a bug if every other one is).
    while taken < n {
        assert!(skipped <= n, "sched.switch: the partner did not run once per yield in {skipped} samples");
        let r = ROUNDS.load(Ordering::Relaxed);
        let t0 = now();
        SCHED.yield_now();
        let t = now().wrapping_sub(t0);
        i += 1;
        if i <= warm_up(n) {
            continue;
        }
        if ROUNDS.load(Ordering::Relaxed) == r + 1 {
            b.record(t.saturating_sub(overhead) / 2);
            taken += 1;
        } else {
            skipped += 1;
        }
    }
    STOP.store(true, Ordering::SeqCst);
    partner.join();
    if skipped > 0 {
        arch::kprintln!(
            "bench: sched.switch: {skipped} samples where the partner did not run exactly once, dropped"
        );
    }
}
kbench!(B_SCHED_SWITCH, "sched.switch", switch);

/// `sched.wakeup_switch`: a handler's `wakeup` → the woken, higher-priority thread's first
/// statement.
fn wakeup_switch(b: &mut Bencher) {
    start();
    let n = b.samples();
    STOP.store(false, Ordering::SeqCst);
    ROUNDS.store(0, Ordering::SeqCst);
    let pri =
        Priority::new(SCHED.current().priority().get() + 16).expect("a priority 16 above the bench thread's");
    let sleeper = SCHED.spawn("bench-wakeup", pri, Some(0), || loop {
        let io = X86_64::intr_disable();
        SCHED.sleep_prepare(&io);
        if STOP.load(Ordering::SeqCst) {
            SCHED.sleep_cancel(&io);
            return;
        }
        SCHED.sleep_commit(&io);
        T_EFFECT.store(now(), Ordering::Relaxed);
        drop(io);
        ROUNDS.fetch_add(1, Ordering::Release);
    });
    let target = sleeper.thread().clone();
    let spec = SourceSpec {
        name: "bench.sched.wakeup".into(),
        vector: WAKE_VECTOR,
        ipl: Ipl::Vm,
        flags: IntrFlags::MPSAFE,
        model: Some(Model::Direct),
        thread_priority: None,
    };
    let h = INTR
        .establish(
            spec,
            None,
            Some(Box::new(move |_| {
                T_CAUSE.store(now(), Ordering::Relaxed);
                SCHED.wakeup(&target);
            })),
        )
        .unwrap_or_else(|e| panic!("bench: cannot establish bench.sched.wakeup: {e}"));
    // The sleeper outranks the bench thread on its CPU: once this thread runs, it sleeps.
    SCHED.sleep_ns(20_000_000);
    for i in 0..warm_up(n) + n {
        let r = ROUNDS.load(Ordering::Relaxed);
        apic::send_ipi(arch::cpu::lapic_id_of(0), WAKE_VECTOR);
        wait_for(&ROUNDS, r + 1, "sched.wakeup_switch");
        if i >= warm_up(n) {
            b.record(T_EFFECT.load(Ordering::Relaxed).wrapping_sub(T_CAUSE.load(Ordering::Relaxed)));
        }
    }
    drop(h);
    STOP.store(true, Ordering::SeqCst);
    SCHED.wakeup(sleeper.thread());
    sleeper.join();
}
kbench!(B_SCHED_WAKEUP_SWITCH, "sched.wakeup_switch", wakeup_switch);

/// `softint.latency`: `schedule()` in a filter → the soft handler's first statement.
fn softint_latency(b: &mut Bencher) {
    start();
    let n = b.samples();
    ROUNDS.store(0, Ordering::SeqCst);
    let soft = INTR
        .softint_establish("bench.soft", Ipl::SoftSerial, || {
            T_EFFECT.store(now(), Ordering::Relaxed);
            ROUNDS.fetch_add(1, Ordering::Release);
        })
        .expect("bench: cannot establish the soft interrupt bench.soft");
    let si = soft.softint().clone();
    let spec = SourceSpec {
        name: "bench.softint.hw".into(),
        vector: SOFT_VECTOR,
        ipl: Ipl::Vm,
        flags: IntrFlags::MPSAFE,
        model: Some(Model::Direct),
        thread_priority: None,
    };
    let filter: intr::Filter = Box::new(move |_| {
        T_CAUSE.store(now(), Ordering::Relaxed);
        si.schedule();
        FilterResult::Handled
    });
    let h = INTR
        .establish(spec, Some(filter), None)
        .unwrap_or_else(|e| panic!("bench: cannot establish bench.softint.hw: {e}"));
    let mut v = Vec::with_capacity(n);
    for i in 0..warm_up(n) + n {
        let r = ROUNDS.load(Ordering::Relaxed);
        apic::send_ipi(arch::cpu::lapic_id_of(0), SOFT_VECTOR);
        wait_for(&ROUNDS, r + 1, "softint.latency");
        if i >= warm_up(n) {
            v.push(T_EFFECT.load(Ordering::Relaxed).wrapping_sub(T_CAUSE.load(Ordering::Relaxed)));
        }
    }
    drop(h);
    drop(soft);
    for x in v {
        b.record(x);
    }
}
kbench!(B_SOFTINT_LATENCY, "softint.latency", softint_latency);

/// The three benchmarks above run (few samples) on CPU 0 from the test suite, on any number of
/// CPUs: every sample's event comes (no hang, no lost wake-up) and each gives a figure.
fn sched_benchmarks_take_samples() -> TestResult {
    let bound = SCHED.current().bound_cpu();
    SCHED.bind_current(Some(0));
    let mut medians = Vec::new();
    let r = (|| {
        for name in ["sched.switch", "sched.wakeup_switch", "softint.latency"] {
            let k =
                kbench::registry().iter().find(|k| k.name == name).ok_or(alloc::format!("{name} missing"))?;
            let mut b = super::bencher(64);
            (k.run)(&mut b);
            let s = b.summary().ok_or(alloc::format!("{name} took no samples"))?;
            kassert!(s.samples >= 32 && s.min <= s.median && s.median <= s.p99, "{name}: {s:?}");
            medians.push(s.median);
        }
        Ok(())
    })();
    SCHED.bind_current(bound);
    r?;
    // The TSC runs in real time here (no icount): only that each path took time.
    kassert!(medians.iter().all(|&m| m > 0), "a zero median: {medians:?}");
    Ok(())
}
ktest!(T_SCHED_BENCH, "bench::sched::take_samples", sched_benchmarks_take_samples);
