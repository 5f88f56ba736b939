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
    // At IPL_NONE it runs right away: its thread outranks ours.
    ran.store(false, Ordering::SeqCst);
    soft.softint().schedule();
    kassert!(ran.load(Ordering::SeqCst), "soft interrupt scheduled at IPL_NONE did not preempt us");
    Ok(())
}
ktest!(T_SOFT_SPLX, "intr::softint::waits_for_splx", softint_waits_for_splx);

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
