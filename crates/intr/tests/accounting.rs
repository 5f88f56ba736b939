//! What the statistics charge, on the host machine: latency from the delivery's *arrival*
//! (with the time it was deferred by the SPL or held by a mask recorded apart), and handler
//! CPU time without the time the handler's thread spent blocked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use host_machine::{spin_until, HostEnv, HostMachine, HostSystem, Intr};
use intr::{IntrFlags, Model, SourceSpec};
use ipl::Ipl;
use machine::Machine;
use sched::SchedEnv;

const T: u64 = if cfg!(miri) { 3_600_000_000_000 } else { 20_000_000_000 };
/// How long each wait under test lasts (Miri's clock runs per basic block: a longer span).
const HOLD_NS: u64 = if cfg!(miri) { 200_000_000 } else { 20_000_000 };
/// Blocking runs of one source in `handler_cpu_time_leaves_out_the_time_blocked`.
const RUNS: u64 = 3;

fn spec(name: &'static str, vector: u8, model: Model) -> SourceSpec {
    SourceSpec {
        name: name.into(),
        vector,
        ipl: Ipl::Vm,
        flags: IntrFlags::MPSAFE,
        model: Some(model),
        thread_priority: None,
    }
}

fn counting(n: &Arc<AtomicU64>) -> intr::Handler {
    let n = n.clone();
    Box::new(move |_| {
        n.fetch_add(1, Ordering::SeqCst);
    })
}

fn wait(cond: impl FnMut() -> bool, what: &str) {
    assert!(spin_until(T, cond), "timed out waiting for {what}");
}

fn hold(ns: u64) {
    let until = HostMachine::now_ns() + ns;
    while HostMachine::now_ns() < until {
        HostMachine::poll_interrupts();
    }
}

/// An arrival at or below the CPU's level waits for `splx`: its latency counts from the
/// arrival, and the wait is recorded as SPL-deferred time, in every model.
#[test]
fn spl_deferred_time_is_part_of_the_latency_and_recorded_apart() {
    let sys = HostSystem::boot(1);
    let intr: &'static Intr = sys.intr;
    sys.run(move |_| {
        for (i, model) in
            [Model::Direct, Model::Dedicated, Model::Pool, Model::Pinned].into_iter().enumerate()
        {
            let v = 0x70 + i as u8;
            let n = Arc::new(AtomicU64::new(0));
            let h = intr.establish(spec("t.acct.spl", v, model), None, Some(counting(&n))).unwrap();
            let spl = HostEnv::spl();
            let s = spl.splraise(Ipl::Vm);
            HostMachine::raise(0, v);
            hold(HOLD_NS);
            assert_eq!(n.load(Ordering::SeqCst), 0, "{model}: ran at IPL_VM");
            spl.splx(s);
            wait(|| n.load(Ordering::SeqCst) == 1, "the replayed handler");
            let st = &h.source().stats;
            assert_eq!(st.spl_deferred.load(Ordering::SeqCst), 1, "{model}");
            let deferred = st.spl_deferred_ns.load(Ordering::SeqCst);
            assert!(deferred >= HOLD_NS * 9 / 10, "{model}: deferred {deferred} ns, held {HOLD_NS}");
            let p50 = st.latency.percentile(50);
            // The histogram's buckets are log-linear, four per power of two: a bucket's lower
            // bound is within a quarter of what it holds.
            assert!(p50 >= HOLD_NS * 3 / 4, "{model}: latency {p50} ns does not count from the arrival");
            assert_eq!(st.masked_waits.load(Ordering::SeqCst), 0, "{model}");
        }
    });
}

/// An arrival absorbed while the source is masked is re-raised at the unmask: its latency
/// counts from that arrival, and the wait is recorded as masked time.
#[test]
fn masked_time_is_part_of_the_latency_and_recorded_apart() {
    let sys = HostSystem::boot(2);
    let intr: &'static Intr = sys.intr;
    sys.run(move |_| {
        for (i, model) in
            [Model::Direct, Model::Dedicated, Model::Pool, Model::Pinned].into_iter().enumerate()
        {
            let v = 0x78 + i as u8;
            let n = Arc::new(AtomicU64::new(0));
            let h = intr.establish(spec("t.acct.mask", v, model), None, Some(counting(&n))).unwrap();
            h.mask();
            HostMachine::raise(1, v);
            wait(|| h.source().stats.masked_total() == 1, "the absorbed arrival");
            hold(HOLD_NS);
            h.unmask().unwrap();
            wait(|| n.load(Ordering::SeqCst) == 1, "the re-raised handler");
            let st = &h.source().stats;
            assert_eq!(st.masked_waits.load(Ordering::SeqCst), 1, "{model}");
            let masked = st.masked_ns.load(Ordering::SeqCst);
            assert!(masked >= HOLD_NS * 9 / 10, "{model}: masked {masked} ns, held {HOLD_NS}");
            assert!(st.latency.percentile(50) >= HOLD_NS * 3 / 4, "{model}: latency not from the arrival");
        }
    });
}

/// A handler that blocks: its CPU time leaves the blocked time out (which is recorded
/// apart), in every model whose handlers may block.
#[test]
fn handler_cpu_time_leaves_out_the_time_blocked() {
    let sys = HostSystem::boot(2);
    let intr: &'static Intr = sys.intr;
    sys.run(move |sched| {
        for (i, model) in [Model::Dedicated, Model::Pool, Model::Pinned].into_iter().enumerate() {
            let v = 0x7C + i as u8;
            let n = Arc::new(AtomicU64::new(0));
            let n2 = n.clone();
            let h = intr
                .establish(
                    spec("t.acct.block", v, model),
                    None,
                    Some(Box::new(move |_| {
                        sched.sleep_ns(HOLD_NS);
                        n2.fetch_add(1, Ordering::SeqCst);
                    })),
                )
                .unwrap();
            let t0 = HostMachine::now_ns();
            // Several runs, one after the other on one CPU: under `pinned` each blocks, which
            // makes its interrupt thread an ordinary thread until it parks, and the next run
            // borrows the CPU with the parked thread again (on the host machine a parked
            // thread's OS thread once took the next block's wakeup:
            // docs/logs/host-pinned-reblock-2026-12-06.txt).
            for run in 1..=RUNS {
                HostMachine::raise(0, v);
                wait(|| n.load(Ordering::SeqCst) == run, "the blocking handler");
                let st = &h.source().stats;
                wait(|| st.handled.load(Ordering::SeqCst) == run, "the run's accounting");
            }
            let st = &h.source().stats;
            let elapsed = HostMachine::now_ns() - t0;
            let (cpu, off) = (st.handler_ns.load(Ordering::SeqCst), st.handler_off_ns.load(Ordering::SeqCst));
            // The sleeps are recorded as time off the CPU, and the CPU time is what is left of
            // the runs' wall time. (Not "CPU time is small": the host may deschedule the OS
            // thread of a simulated CPU, which the kernel sees as time on the CPU.)
            // Half: the host may deschedule the simulated CPU between the deadline and the
            // switch away, which counts as time on the CPU.
            assert!(
                off >= RUNS * HOLD_NS / 2,
                "{model}: {off} ns off the CPU recorded, slept {RUNS} x {HOLD_NS}"
            );
            assert!(
                cpu + off <= elapsed,
                "{model}: CPU {cpu} + off {off} ns exceed the {elapsed} ns it all took"
            );
        }
    });
}
