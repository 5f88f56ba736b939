//! Soft interrupts and workqueues on the real machine.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use intr::softint::Workqueue;
use intr::{FilterResult, IntrFlags, Model, SourceSpec};
use ipl::Ipl;
use ktest::{kassert, kassert_eq, ktest, TestResult};
use sched::Priority;

use super::{ncpus, until};
use crate::intr::INTR;
use crate::locks::KernelEnv;
use crate::{SCHED, SPL};

/// A soft interrupt scheduled (twice) from a hardware filter runs once, in thread context, at
/// its level's priority, on the CPU that scheduled it.
fn softint_from_filter_runs_once_at_its_level() -> TestResult {
    let pri_seen = Arc::new(AtomicU64::new(0));
    let in_intr = Arc::new(AtomicBool::new(true));
    let cpu_seen = Arc::new(AtomicUsize::new(usize::MAX));
    let (p, ii, c) = (pri_seen.clone(), in_intr.clone(), cpu_seen.clone());
    let soft = INTR
        .softint_establish("test.soft.net", Ipl::SoftNet, move || {
            p.store(SCHED.current().priority().get() as u64, Ordering::SeqCst);
            ii.store(SCHED.in_interrupt(), Ordering::SeqCst);
            c.store(SCHED.cpu_index(), Ordering::SeqCst);
        })
        .ok_or("softint_establish refused a soft level")?;
    let si = soft.softint().clone();
    let target = ncpus() - 1;
    let hw = INTR
        .establish(
            SourceSpec {
                name: "test.soft.hw".into(),
                vector: 0x6A,
                ipl: Ipl::Vm,
                flags: IntrFlags::MPSAFE,
                model: Some(Model::Pool),
                thread_priority: None,
            },
            Some(alloc::boxed::Box::new(move |_| {
                si.schedule();
                si.schedule(); // coalesces: still one run
                FilterResult::Handled
            })),
            None,
        )
        .map_err(|e| alloc::format!("{e}"))?;
    arch::apic::send_ipi(arch::cpu::lapic_id_of(target), 0x6A);
    let runs = &soft.softint().runs;
    kassert!(until(2000, || runs.load(Ordering::SeqCst) >= 1), "soft interrupt never ran");
    SCHED.sleep_ns(20_000_000);
    kassert_eq!(runs.load(Ordering::SeqCst), 1, "soft interrupt ran more than once");
    kassert_eq!(
        pri_seen.load(Ordering::SeqCst),
        sched::Priority::of_ipl(Ipl::SoftNet).map_or(0, |p| p.get() as u64)
    );
    kassert!(!in_intr.load(Ordering::SeqCst), "soft interrupt handler ran in interrupt context");
    kassert_eq!(cpu_seen.load(Ordering::SeqCst), target, "ran on another CPU than the one that scheduled it");
    drop(hw);
    drop(soft);
    Ok(())
}
ktest!(
    T_SOFT_FILTER,
    "intr::softint::from_filter_runs_once_at_level",
    softint_from_filter_runs_once_at_its_level
);

/// Scheduled at or above its level, a soft interrupt waits for the `splx` below it.
fn softint_waits_for_splx() -> TestResult {
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let soft = INTR
        .softint_establish("test.soft.clock", Ipl::SoftClock, move || r.store(true, Ordering::SeqCst))
        .ok_or("softint_establish refused a soft level")?;
    let s = SPL.splraise(Ipl::SoftBio);
    soft.softint().schedule();
    for _ in 0..100_000 {
        core::hint::spin_loop();
    }
    let early = ran.load(Ordering::SeqCst);
    SPL.splx(s);
    kassert!(!early, "soft interrupt ran while the CPU was above its level");
    kassert!(until(2000, || ran.load(Ordering::SeqCst)), "soft interrupt did not run after splx");
    // At IPL_NONE it runs right away: its thread borrows our CPU.
    ran.store(false, Ordering::SeqCst);
    soft.softint().schedule();
    kassert!(ran.load(Ordering::SeqCst), "soft interrupt scheduled at IPL_NONE did not preempt us");
    Ok(())
}
ktest!(T_SOFT_SPLX, "intr::softint::waits_for_splx", softint_waits_for_splx);

/// What each CPU's thread of `softint_borrows_and_may_block` found wrong (bits).
const B_NOT_AT_ONCE: u64 = 1;
const B_SAME_THREAD: u64 = 2;
const B_SWITCHED: u64 = 4;
const B_NOT_BORROWED: u64 = 8;
const B_BLOCK_HELD_US: u64 = 16;
const B_RAN_WHILE_BUSY: u64 = 32;
const B_NEVER_FINISHED: u64 = 64;
const B_NOT_AGAIN: u64 = 128;
const B_CONTEXT: u64 = 256;

/// A soft interrupt scheduled at `IPL_NONE` borrows the scheduling thread's CPU: its handler
/// runs before `schedule()` returns, in the level's thread, in thread context, and the
/// scheduling thread makes no scheduler switch. A handler that blocks gives the CPU back at
/// once; what is scheduled at that level meanwhile waits for the level's thread, which runs
/// it as an ordinary thread once woken and parks; the next `schedule()` borrows again. On
/// every CPU at once.
fn softint_borrows_and_may_block() -> TestResult {
    let n = ncpus();
    let per_cpu = || -> Arc<Vec<AtomicU64>> { Arc::new((0..n).map(|_| AtomicU64::new(0)).collect()) };
    let (plain_runs, ran_in, sleepy_done, release, fail) =
        (per_cpu(), per_cpu(), per_cpu(), per_cpu(), per_cpu());
    let (pr, ri, f1) = (plain_runs.clone(), ran_in.clone(), fail.clone());
    let plain = INTR
        .softint_establish("test.soft.borrow", Ipl::SoftNet, move || {
            let cpu = SCHED.cpu_index();
            if SCHED.in_interrupt() || Some(SCHED.current().priority()) != Priority::of_ipl(Ipl::SoftNet) {
                f1[cpu].fetch_or(B_CONTEXT, Ordering::SeqCst);
            }
            ri[cpu].store(SCHED.current() as *const _ as u64, Ordering::SeqCst);
            pr[cpu].fetch_add(1, Ordering::SeqCst);
        })
        .ok_or("softint_establish refused a soft level")?;
    let (sd, rl) = (sleepy_done.clone(), release.clone());
    let sleepy = INTR
        .softint_establish("test.soft.block", Ipl::SoftNet, move || {
            let cpu = SCHED.cpu_index();
            while rl[cpu].load(Ordering::SeqCst) == 0 {
                SCHED.sleep_ns(100_000); // blocks: the level's thread leaves the CPU
            }
            sd[cpu].fetch_add(1, Ordering::SeqCst);
        })
        .ok_or("softint_establish refused a soft level")?;
    let (plain_si, sleepy_si) = (plain.softint().clone(), sleepy.softint().clone());
    let hs: Vec<_> = (0..n)
        .map(|cpu| {
            let (plain_si, sleepy_si) = (plain_si.clone(), sleepy_si.clone());
            let (plain_runs, ran_in, sleepy_done, release, fail) =
                (plain_runs.clone(), ran_in.clone(), sleepy_done.clone(), release.clone(), fail.clone());
            SCHED.spawn("soft-borrower", Priority::KTHREAD, Some(cpu), move || {
                let bad = |b: u64| fail[cpu].fetch_or(b, Ordering::SeqCst);
                let me = SCHED.current_arc();
                // 1. Borrowed: at once, in another thread, no switch of ours.
                SCHED.preempt_disable();
                let (sw, pins) = (me.switch_count(), SCHED.cpu_stats(cpu).pin_switches);
                plain_si.schedule();
                if plain_runs[cpu].load(Ordering::SeqCst) != 1 {
                    bad(B_NOT_AT_ONCE);
                }
                if ran_in[cpu].load(Ordering::SeqCst) == Arc::as_ptr(&me) as u64 {
                    bad(B_SAME_THREAD);
                }
                if me.switch_count() != sw {
                    bad(B_SWITCHED);
                }
                if SCHED.cpu_stats(cpu).pin_switches <= pins {
                    bad(B_NOT_BORROWED);
                }
                SCHED.preempt_enable();
                // 2. A handler that blocks hands the CPU back at once.
                sleepy_si.schedule();
                if sleepy_done[cpu].load(Ordering::SeqCst) != 0 {
                    bad(B_BLOCK_HELD_US);
                }
                // Its thread is busy: this one waits in the queue behind it.
                plain_si.schedule();
                if plain_runs[cpu].load(Ordering::SeqCst) != 1 {
                    bad(B_RAN_WHILE_BUSY);
                }
                release[cpu].store(1, Ordering::SeqCst);
                if !until(5000, || {
                    sleepy_done[cpu].load(Ordering::SeqCst) == 1
                        && plain_runs[cpu].load(Ordering::SeqCst) == 2
                }) {
                    bad(B_NEVER_FINISHED);
                }
                // 3. Parked again (it parks before it lets the CPU go): borrowed again.
                SCHED.sleep_ns(1_000_000);
                plain_si.schedule();
                if plain_runs[cpu].load(Ordering::SeqCst) != 3 {
                    bad(B_NOT_AGAIN);
                }
            })
        })
        .collect();
    for h in hs {
        h.join();
    }
    drop(plain);
    drop(sleepy);
    for cpu in 0..n {
        kassert_eq!(fail[cpu].load(Ordering::SeqCst), 0, "CPU {cpu}: failed checks (bits of B_*)");
    }
    Ok(())
}
ktest!(T_SOFT_BORROW, "intr::softint::borrows_and_may_block", softint_borrows_and_may_block);

/// A borrowing soft interrupt's thread is preempted by a more urgent thread woken on its CPU
/// (torture's lost interrupts and stalled CPU, docs/logs/torture-pinned-churn-lost-paths-2026-12-06.txt):
/// the handler runs long (it spins until the urgent thread has run, a second at most) and a
/// thread above the soft level, bound to that CPU, wakes from a timed sleep meanwhile; it must
/// run before the handler ends (the handler turns into an ordinary thread, queued behind it),
/// and the level's thread borrows again afterwards. On the last CPU (CPU 0 alone: its own
/// tick wakes the thread).
fn softint_borrower_is_preempted() -> TestResult {
    let cpu = ncpus() - 1;
    let urgent_ran = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicUsize::new(0)); // 1: the handler saw it run; 2: it did not
    let runs = Arc::new(AtomicUsize::new(0));
    let (ur, sn, rn) = (urgent_ran.clone(), seen.clone(), runs.clone());
    let long = INTR
        .softint_establish("test.soft.long", Ipl::SoftNet, move || {
            rn.fetch_add(1, Ordering::SeqCst);
            if sn.load(Ordering::SeqCst) != 0 {
                return; // a later run (the borrow-again check)
            }
            let deadline = super::now_ns() + 1_000_000_000;
            while !ur.load(Ordering::SeqCst) && super::now_ns() < deadline {
                core::hint::spin_loop();
            }
            sn.store(if ur.load(Ordering::SeqCst) { 1 } else { 2 }, Ordering::SeqCst);
        })
        .ok_or("softint_establish refused a soft level")?;
    let above =
        Priority::new(Priority::of_ipl(Ipl::SoftNet).map_or(100, |p| p.get()) + 2).ok_or("priority")?;
    let asleep = Arc::new(AtomicBool::new(false));
    let (ur2, as2) = (urgent_ran.clone(), asleep.clone());
    let urgent = SCHED.spawn("soft-urgent", above, Some(cpu), move || {
        as2.store(true, Ordering::SeqCst);
        SCHED.sleep_ns(20_000_000);
        ur2.store(true, Ordering::SeqCst);
    });
    let si = long.softint().clone();
    let (sn2, rn2) = (seen.clone(), runs.clone());
    let lender = SCHED.spawn("soft-lender", Priority::KTHREAD, Some(cpu), move || {
        while !asleep.load(Ordering::SeqCst) {
            SCHED.sleep_ns(100_000);
        }
        si.schedule(); // borrowed at once; handed back when the urgent thread wakes
        until(5000, || sn2.load(Ordering::SeqCst) != 0);
        // Parked again: the next one borrows at once.
        SCHED.sleep_ns(1_000_000);
        let before = rn2.load(Ordering::SeqCst);
        si.schedule();
        if rn2.load(Ordering::SeqCst) != before + 1 {
            sn2.store(3, Ordering::SeqCst);
        }
    });
    urgent.join();
    lender.join();
    drop(long);
    kassert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "1: preempted by the urgent thread; 2: the handler kept the CPU until its end; 3: no borrow after"
    );
    Ok(())
}
ktest!(T_SOFT_PREEMPT, "intr::softint::borrower_is_preempted", softint_borrower_is_preempted);

/// A borrowing soft interrupt's thread may be preempted at any instruction where interrupts
/// are enabled, its last ones included: between the handlers' end and its return into the
/// pinned call. On every CPU at once, a lender schedules a short handler over and over
/// (each a borrow) while a thread above the soft level, bound to the same CPU, wakes from
/// timed sleeps of varied length, so that clock interrupts preempt the borrower at varied
/// points. A borrower preempted after it decided to return, and returning all the same, would
/// resume a frame the lender had already left (the double fault torture found,
/// docs/logs/softint-borrow-preempt-double-fault-2026-12-06.txt); `Scheduler::pin_return`
/// makes that decision with interrupts disabled. Checked: no schedule is lost (the last
/// one's work ran), and each CPU's borrower was preempted at least once (the test reached
/// the path it is about).
fn softint_borrower_preempted_anywhere() -> TestResult {
    let n = ncpus();
    let per_cpu = || -> Arc<Vec<AtomicU64>> { Arc::new((0..n).map(|_| AtomicU64::new(0)).collect()) };
    let (wanted, seen, runs) = (per_cpu(), per_cpu(), per_cpu());
    let (w, sn, rn) = (wanted.clone(), seen.clone(), runs.clone());
    let h = INTR
        .softint_establish("test.soft.anywhere", Ipl::SoftNet, move || {
            let cpu = SCHED.cpu_index();
            let want = w[cpu].load(Ordering::SeqCst);
            // A body of varied length: preemptions land at varied points of the borrow.
            for _ in 0..(want % 7) * 8 {
                core::hint::spin_loop();
            }
            sn[cpu].store(want, Ordering::SeqCst);
            rn[cpu].fetch_add(1, Ordering::SeqCst);
        })
        .ok_or("softint_establish refused a soft level")?;
    let si = h.softint().clone();
    let above =
        Priority::new(Priority::of_ipl(Ipl::SoftNet).map_or(100, |p| p.get()) + 2).ok_or("priority")?;
    let preempts0: Vec<u64> = (0..n).map(|c| SCHED.cpu_stats(c).borrow_preempts).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let wakes = per_cpu();
    let mut threads = Vec::new();
    for cpu in 0..n {
        let (stop, wakes) = (stop.clone(), wakes.clone());
        threads.push(SCHED.spawn("soft-preempter", above, Some(cpu), move || {
            let mut x = 0x9E37_79B9u64 ^ cpu as u64;
            while !stop.load(Ordering::SeqCst) {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                SCHED.sleep_ns(5_000 + (x >> 33) % 35_000);
                wakes[cpu].fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let lenders: Vec<_> = (0..n)
        .map(|cpu| {
            let (si, wanted) = (si.clone(), wanted.clone());
            SCHED.spawn("soft-lender", Priority::KTHREAD, Some(cpu), move || {
                let end = super::now_ns() + 600_000_000;
                let mut i = 0;
                while super::now_ns() < end {
                    i += 1;
                    wanted[cpu].store(i, Ordering::SeqCst);
                    si.schedule();
                }
            })
        })
        .collect();
    for l in lenders {
        l.join();
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join();
    }
    // The last schedule's work has run (at once if it borrowed; else its thread, preempted or
    // blocked, finishes the queue as an ordinary thread).
    let done =
        until(5000, || (0..n).all(|c| seen[c].load(Ordering::SeqCst) == wanted[c].load(Ordering::SeqCst)));
    drop(h);
    for cpu in 0..n {
        let (want, got) = (wanted[cpu].load(Ordering::SeqCst), seen[cpu].load(Ordering::SeqCst));
        let preempts = SCHED.cpu_stats(cpu).borrow_preempts - preempts0[cpu];
        arch::kprintln!(
            "softint-preempt: cpu={cpu} schedules={want} runs={} wakes={} borrow_preempts={preempts}",
            runs[cpu].load(Ordering::SeqCst),
            wakes[cpu].load(Ordering::SeqCst)
        );
        kassert!(done || got == want, "CPU {cpu}: the last schedule ({want}) never ran (last run: {got})");
        kassert!(
            preempts > 0,
            "CPU {cpu}: no borrower was preempted ({want} schedules): the test missed its path"
        );
    }
    Ok(())
}
ktest!(
    T_SOFT_PREEMPT_ANYWHERE,
    "intr::softint::borrower_preempted_anywhere",
    softint_borrower_preempted_anywhere
);

/// A per-CPU workqueue runs each CPU's items on that CPU, in order; items may sleep.
fn workqueue_runs_items_in_order_and_may_sleep() -> TestResult {
    let n = ncpus();
    let wq = Workqueue::<KernelEnv>::new("test.wq", Priority::KTHREAD, true);
    const PER: usize = 20;
    let log: Arc<Vec<AtomicUsize>> = Arc::new((0..n * PER).map(|_| AtomicUsize::new(usize::MAX)).collect());
    let next: Arc<Vec<AtomicUsize>> = Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect());
    let wrong = Arc::new(AtomicUsize::new(0));
    let hs: Vec<_> = (0..n)
        .map(|cpu| {
            let (wq, log, next, wrong) = (wq.clone(), log.clone(), next.clone(), wrong.clone());
            SCHED.spawn("wq-producer", Priority::KTHREAD, Some(cpu), move || {
                for i in 0..PER {
                    let (log, next, wrong) = (log.clone(), next.clone(), wrong.clone());
                    wq.enqueue(move || {
                        if SCHED.cpu_index() != cpu {
                            wrong.fetch_add(1, Ordering::SeqCst);
                        }
                        let k = next[cpu].fetch_add(1, Ordering::SeqCst);
                        log[cpu * PER + k].store(i, Ordering::SeqCst);
                        if i % 5 == 0 {
                            SCHED.sleep_ns(1_000_000); // items may sleep
                        }
                    });
                }
            })
        })
        .collect();
    for h in hs {
        h.join();
    }
    kassert!(until(5000, || wq.done() == (n * PER) as u64), "only {} of {} items ran", wq.done(), n * PER);
    kassert_eq!(wrong.load(Ordering::SeqCst), 0, "an item ran off its CPU");
    for cpu in 0..n {
        for i in 0..PER {
            kassert_eq!(log[cpu * PER + i].load(Ordering::SeqCst), i, "CPU {cpu}'s items out of order");
        }
    }
    Ok(())
}
ktest!(T_WQ, "intr::workqueue::per_cpu_in_order", workqueue_runs_items_in_order_and_may_sleep);
