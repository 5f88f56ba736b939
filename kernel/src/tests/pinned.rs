//! The pinned switch on the real machine, nested (`intr_pin_call` in entry.s): a thread lends
//! its CPU to interrupt thread A, whose body lends the same CPU to interrupt thread B — as a
//! soft interrupt's thread would be interrupted by a hardware interrupt whose thread borrows
//! the CPU in turn. Returns unwind innermost first; a block of the inner thread resumes the
//! outer one, still borrowing.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arch::X86_64;
use ktest::{kassert, kassert_eq, ktest, TestResult};
use machine::{Machine, PinOutcome};
use sched::{PinThread, Priority};

use super::until;
use crate::locks::{KernelEnv, Mutex};
use crate::{Event, SCHED};

static B: Mutex<Option<&'static PinThread<KernelEnv>>> = Mutex::new_adaptive("test.pinned.b", None);
static LOG: Mutex<Vec<String>> = Mutex::new_adaptive("test.pinned.log", Vec::new());
static GATE: Event = Event::new(&SCHED);
static BLOCK: AtomicBool = AtomicBool::new(false);
static B_DONE: AtomicBool = AtomicBool::new(false);

fn log(s: String) {
    LOG.lock().push(s);
}

fn me() -> usize {
    X86_64::curthread() as usize
}

extern "C" fn body_a(_: usize, _: usize) {
    let a = me();
    log(format!("a in: borrowing={}", SCHED.borrowing()));
    let b = (*B.lock()).expect("B");
    let r = {
        let io = X86_64::intr_disable();
        SCHED.pin_call(b, 0, 0, &io).0
    };
    log(format!(
        "a after b: {r:?} borrowing={} me_again={} b_parked={}",
        SCHED.borrowing(),
        me() == a,
        b.is_parked()
    ));
}

extern "C" fn body_b(_: usize, _: usize) {
    log(format!("b in: borrowing={}", SCHED.borrowing()));
    if BLOCK.load(Ordering::SeqCst) {
        GATE.wait(); // blocks: A, under B, goes on at once
        log(format!("b woken: borrowing={}", SCHED.borrowing()));
    }
    B_DONE.store(true, Ordering::SeqCst);
    let b = (*B.lock()).expect("B");
    if let Err(io) = SCHED.pin_return(X86_64::intr_disable()) {
        // It blocked: an ordinary thread now, it parks for good.
        SCHED.pin_park(b.call(), &io);
    }
}

fn nested(block: bool) -> Result<Vec<String>, String> {
    SCHED.bind_current(Some(0));
    BLOCK.store(block, Ordering::SeqCst);
    B_DONE.store(false, Ordering::SeqCst);
    LOG.lock().clear();
    let a = SCHED.new_ithread("ithread/test-a", Priority::INTR_BASE, 0, 0, body_a);
    let b = SCHED.new_ithread("ithread/test-b", Priority::INTR_BASE, 0, 0, body_b);
    *B.lock() = Some(b);
    let main = me();
    let pins = SCHED.cpu_stats(0).pin_switches;
    let r = {
        let io = X86_64::intr_disable();
        SCHED.pin_call(a, 0, 0, &io).0
    };
    kassert_eq!(r, PinOutcome::Returned, "A's body returned");
    kassert_eq!(me(), main, "the pinned thread is current again");
    kassert!(!SCHED.borrowing() && !SCHED.cpu_borrowed(0), "the CPU is still lent");
    kassert!(a.is_parked());
    if block {
        kassert!(!B_DONE.load(Ordering::SeqCst), "B finished while blocked");
        GATE.set();
        kassert!(until(2000, || b.is_parked() && B_DONE.load(Ordering::SeqCst)), "B did not finish and park");
    } else {
        kassert!(b.is_parked());
    }
    kassert!(SCHED.cpu_stats(0).pin_switches >= pins + 2, "two pinned calls counted");
    *B.lock() = None;
    SCHED.bind_current(None);
    // The two threads stay parked (an interrupt thread is never freed: `new_ithread` leaks
    // it, its descriptor must outlive every pinned call); they are small and this test runs
    // once per boot.
    let out = LOG.lock().clone();
    Ok(out)
}

fn nested_borrows_return_innermost_first() -> TestResult {
    let log = nested(false)?;
    kassert_eq!(
        log,
        [
            "a in: borrowing=true",
            "b in: borrowing=true",
            "a after b: Returned borrowing=true me_again=true b_parked=true",
        ]
    );
    Ok(())
}
ktest!(T_NESTED, "pinned::nested::return_innermost_first", nested_borrows_return_innermost_first);

fn inner_block_resumes_outer_borrower() -> TestResult {
    let log = nested(true)?;
    kassert_eq!(
        log,
        [
            "a in: borrowing=true",
            "b in: borrowing=true",
            "a after b: Blocked borrowing=true me_again=true b_parked=false",
            "b woken: borrowing=false",
        ]
    );
    Ok(())
}
ktest!(T_NESTED_BLOCK, "pinned::nested::inner_block_resumes_outer", inner_block_resumes_outer_borrower);

/// The pinned model's free list of interrupt threads, on every CPU at once: a handler blocked
/// on a mutex on each CPU does not hold up that CPU's other pinned sources — each CPU lends a
/// spare thread to the next interrupt — and the blocked handlers all finish once the mutex is
/// released.
fn blocked_handler_does_not_hold_up_the_cpu() -> TestResult {
    use core::sync::atomic::AtomicU64;
    use intr::{IntrFlags, Model, SourceSpec};
    use ipl::Ipl;

    static HELD: Mutex<()> = Mutex::new_adaptive("test.pinned.spare.held", ());
    let n = super::ncpus();
    let spec = |name: &'static str, vector| SourceSpec {
        name: name.into(),
        vector,
        ipl: Ipl::Vm,
        flags: IntrFlags::MPSAFE,
        model: Some(Model::Pinned),
        thread_priority: None,
    };
    let (started, done, counted) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (s, d, c) = (started.clone(), done.clone(), counted.clone());
    let g = HELD.lock();
    let blocker = crate::intr::INTR
        .establish(
            spec("test.pinned.spare.blocker", 0x58),
            None,
            Some(alloc::boxed::Box::new(move |_| {
                s.fetch_add(1, Ordering::SeqCst);
                drop(HELD.lock());
                d.fetch_add(1, Ordering::SeqCst);
            })),
        )
        .map_err(|e| format!("{e}"))?;
    let counter = crate::intr::INTR
        .establish(
            spec("test.pinned.spare.counter", 0x59),
            None,
            Some(alloc::boxed::Box::new(move |_| {
                c.fetch_add(1, Ordering::SeqCst);
            })),
        )
        .map_err(|e| format!("{e}"))?;
    kassert!(crate::intr::INTR.pinned.limit() >= 2, "the default bound leaves no spare thread");
    let spares0 = crate::intr::INTR.pinned.stats().spares;
    // One blocked handler per CPU, all in flight at once.
    for cpu in 0..n {
        arch::apic::send_ipi(arch::cpu::lapic_id_of(cpu), 0x58);
    }
    let t = 2000; // ms for up to 2 CPUs; `until` scales it
    kassert!(
        until(t, || started.load(Ordering::SeqCst) == n as u64),
        "{} of {n} blocking handlers started within {t} ms (scaled with the CPU count)",
        started.load(Ordering::SeqCst)
    );
    // Every CPU's other pinned source still runs, on a spare thread.
    for cpu in 0..n {
        arch::apic::send_ipi(arch::cpu::lapic_id_of(cpu), 0x59);
    }
    kassert!(
        until(t, || counted.load(Ordering::SeqCst) == n as u64),
        "{} of {n} CPUs ran their second pinned source while the first was blocked",
        counted.load(Ordering::SeqCst)
    );
    kassert_eq!(done.load(Ordering::SeqCst), 0, "a blocked handler finished while the mutex was held");
    kassert!(
        crate::intr::INTR.pinned.stats().spares >= spares0 + n as u64,
        "fewer than {n} calls went to spare threads"
    );
    drop(g);
    kassert!(
        until(t, || done.load(Ordering::SeqCst) == n as u64),
        "{} of {n} blocked handlers finished after the release",
        done.load(Ordering::SeqCst)
    );
    drop(counter);
    drop(blocker);
    Ok(())
}
ktest!(
    T_SPARE,
    "intr::pinned::blocked_handler_does_not_hold_up_the_cpu",
    blocked_handler_does_not_hold_up_the_cpu
);

/// A pinned handler that blocks: the time it spent switched away is recorded apart and left
/// out of its CPU time — twice on one CPU, so that the second run's thread has been off its
/// CPU before (the off-CPU mark of a pinned call is taken only when its handler blocks: a
/// stale mark would count the earlier sleeps again).
fn blocking_handler_time_is_accounted() -> TestResult {
    use core::sync::atomic::AtomicU64;
    use intr::{IntrFlags, Model, SourceSpec};
    use ipl::Ipl;

    const HOLD_NS: u64 = 2_000_000;
    let spec = SourceSpec {
        name: "test.pinned.acct".into(),
        vector: 0x5E,
        ipl: Ipl::Vm,
        flags: IntrFlags::MPSAFE,
        model: Some(Model::Pinned),
        thread_priority: None,
    };
    let n = Arc::new(AtomicU64::new(0));
    let n2 = n.clone();
    let h = crate::intr::INTR
        .establish(
            spec,
            None,
            Some(alloc::boxed::Box::new(move |_| {
                SCHED.sleep_ns(HOLD_NS);
                n2.fetch_add(1, Ordering::SeqCst);
            })),
        )
        .map_err(|e| format!("{e}"))?;
    let st = &h.source().stats;
    let (mut cpu0, mut off0) = (0, 0);
    for round in 1..=3 {
        let t0 = arch::apic::now_ns();
        arch::apic::send_ipi(arch::cpu::lapic_id_of(SCHED.cpu_index()), 0x5E);
        kassert!(
            until(2000, || st.handled.load(Ordering::SeqCst) == round),
            "run {round}: the blocking handler did not finish"
        );
        let elapsed = arch::apic::now_ns() - t0;
        let cpu = st.handler_ns.load(Ordering::SeqCst) - cpu0;
        let off = st.handler_off_ns.load(Ordering::SeqCst) - off0;
        (cpu0, off0) = (cpu0 + cpu, off0 + off);
        kassert!(off >= HOLD_NS / 2, "run {round}: {off} ns off the CPU recorded, slept {HOLD_NS}");
        kassert!(
            cpu + off <= elapsed,
            "run {round}: CPU {cpu} + off {off} ns exceed the {elapsed} ns it all took"
        );
    }
    kassert_eq!(n.load(Ordering::SeqCst), 3);
    drop(h);
    Ok(())
}
ktest!(T_PIN_ACCT, "intr::pinned::blocking_handler_time_is_accounted", blocking_handler_time_is_accounted);

/// A pinned interrupt thread is preempted by a more urgent thread (one above interrupt
/// priority, as a watchdog's) at any instruction where interrupts are enabled in it, its
/// last ones included: between the handler's end and its return into the pinned call. On
/// every CPU at once, a lender raises a pinned source on its own CPU over and over, one at a
/// time, while a thread at `Priority::MAX` bound to that CPU wakes from timed sleeps of varied
/// length. A thread preempted after deciding to return, and returning all the same, would
/// resume a frame the lender had already left (the soft-interrupt twin of this test,
/// `intr::softint::borrower_preempted_anywhere`, has the history). Checked: every raise is
/// handled exactly once, and each CPU's ithread was preempted at least once (the test reached
/// its path).
fn pinned_borrower_preempted_anywhere() -> TestResult {
    const VEC: u8 = 0x5E;
    let n = super::ncpus();
    let per_cpu = || -> Arc<Vec<AtomicU64>> { Arc::new((0..n).map(|_| AtomicU64::new(0)).collect()) };
    let (raised, handled, wakes) = (per_cpu(), per_cpu(), per_cpu());
    let hd = handled.clone();
    let h = crate::intr::INTR
        .establish(
            intr::SourceSpec {
                name: "test.pinned.anywhere".into(),
                vector: VEC,
                ipl: ipl::Ipl::Vm,
                flags: intr::IntrFlags::MPSAFE,
                model: Some(intr::Model::Pinned),
                thread_priority: None,
            },
            None,
            Some(alloc::boxed::Box::new(move |_| {
                let k = hd[SCHED.cpu_index()].fetch_add(1, Ordering::SeqCst);
                // A body of varied length: preemptions land at varied points of the borrow.
                for _ in 0..(k % 7) * 8 {
                    core::hint::spin_loop();
                }
            })),
        )
        .map_err(|e| format!("{e}"))?;
    let preempts0: Vec<u64> = (0..n).map(|c| SCHED.cpu_stats(c).borrow_preempts).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let preempters: Vec<_> = (0..n)
        .map(|cpu| {
            let (stop, wakes) = (stop.clone(), wakes.clone());
            SCHED.spawn("pin-preempter", Priority::MAX, Some(cpu), move || {
                let mut x = 0x9E37_79B9u64 ^ cpu as u64;
                while !stop.load(Ordering::SeqCst) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    SCHED.sleep_ns(5_000 + (x >> 33) % 35_000);
                    wakes[cpu].fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let stuck = Arc::new(AtomicU64::new(u64::MAX));
    let lenders: Vec<_> = (0..n)
        .map(|cpu| {
            let (raised, handled, stuck) = (raised.clone(), handled.clone(), stuck.clone());
            SCHED.spawn("pin-lender", Priority::KTHREAD, Some(cpu), move || {
                let end = arch::apic::now_ns() + 600_000_000;
                while arch::apic::now_ns() < end {
                    let want = raised[cpu].fetch_add(1, Ordering::SeqCst) + 1;
                    arch::apic::send_ipi(arch::cpu::lapic_id_of(cpu), VEC);
                    // One at a time (no merge in the LAPIC): the ithread, above us, has run
                    // by the time we run again, unless it was preempted and is queued.
                    if !until(2000, || handled[cpu].load(Ordering::SeqCst) >= want) {
                        stuck.store(cpu as u64, Ordering::SeqCst);
                        return;
                    }
                }
            })
        })
        .collect();
    for l in lenders {
        l.join();
    }
    stop.store(true, Ordering::SeqCst);
    for p in preempters {
        p.join();
    }
    drop(h);
    kassert_eq!(stuck.load(Ordering::SeqCst), u64::MAX, "a raise on this CPU was never handled");
    for cpu in 0..n {
        let (r, d) = (raised[cpu].load(Ordering::SeqCst), handled[cpu].load(Ordering::SeqCst));
        let preempts = SCHED.cpu_stats(cpu).borrow_preempts - preempts0[cpu];
        arch::kprintln!(
            "pinned-preempt: cpu={cpu} raised={r} handled={d} wakes={} borrow_preempts={preempts}",
            wakes[cpu].load(Ordering::SeqCst)
        );
        kassert_eq!(d, r, "CPU {cpu}: raises handled");
        kassert!(preempts > 0, "CPU {cpu}: no ithread was preempted ({r} raises): the test missed its path");
    }
    Ok(())
}
ktest!(
    T_PIN_PREEMPT_ANYWHERE,
    "intr::pinned::borrower_preempted_anywhere",
    pinned_borrower_preempted_anywhere
);
