//! Every misuse the lock checker knows is caught and named. The checker's policy is switched
//! to `Record` for the duration (the default panics), so each test can look at the report.

use alloc::string::ToString;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, Ordering};

use ipl::Ipl;
use ktest::{kassert, kassert_eq, ktest, TestResult};
use sched::Priority;
use sync::{Policy, Violation};

use crate::locks::{CondVar, Mutex, SYNC};
use crate::{SCHED, SPL};

/// Runs `f` with the checker on and recording; returns what it recorded.
fn recording(f: impl FnOnce()) -> Option<Violation> {
    let w = &SYNC.witness;
    let was_checking = w.checking();
    w.set_checking(true);
    w.set_policy(Policy::Record);
    let _ = w.take_violation::<arch::X86_64>();
    f();
    let v = w.take_violation::<arch::X86_64>();
    w.set_policy(Policy::Panic);
    w.set_checking(was_checking);
    v
}

static ORDER_A: Mutex<()> = Mutex::new_adaptive("check.order.a", ());
static ORDER_B: Mutex<()> = Mutex::new_adaptive("check.order.b", ());

fn order_reversal() -> TestResult {
    let v = recording(|| {
        {
            let _a = ORDER_A.lock();
            let _b = ORDER_B.lock();
        }
        let _b = ORDER_B.lock();
        let _a = ORDER_A.lock();
    });
    kassert_eq!(v, Some(Violation::OrderReversal { first: "check.order.b", second: "check.order.a" }));
    let text = v.map(|v| v.to_string()).unwrap_or_default();
    kassert!(text.contains("check.order.a") && text.contains("check.order.b"), "report names both: {text}");
    Ok(())
}
ktest!(T_ORDER, "lockcheck::order_reversal", order_reversal);

static SPIN_S: Mutex<()> = Mutex::new_spin("check.spin.s", Ipl::Vm, ());
static ADAPT_M: Mutex<()> = Mutex::new_adaptive("check.adaptive.m", ());

fn adaptive_under_spin() -> TestResult {
    let v = recording(|| {
        let _s = SPIN_S.lock();
        let _m = ADAPT_M.lock();
    });
    kassert_eq!(v, Some(Violation::SleepingLockUnderSpin { lock: "check.adaptive.m", spin: "check.spin.s" }));
    kassert_eq!(SPL.current(), Ipl::None);
    Ok(())
}
ktest!(T_UNDER_SPIN, "lockcheck::adaptive_under_spin_mutex", adaptive_under_spin);

static HIGH_M: Mutex<()> = Mutex::new_adaptive("check.adaptive.high", ());

fn adaptive_above_vm() -> TestResult {
    let v = recording(|| {
        let s = SPL.splraise(Ipl::Sched);
        drop(HIGH_M.lock());
        SPL.splx(s);
    });
    kassert_eq!(v, Some(Violation::AdaptiveAboveVm { lock: "check.adaptive.high", ipl: "IPL_SCHED" }));
    Ok(())
}
ktest!(T_ABOVE_VM, "lockcheck::adaptive_above_ipl_vm", adaptive_above_vm);

static CV_M: Mutex<()> = Mutex::new_adaptive("check.cv.m", ());
static CV_S: Mutex<()> = Mutex::new_spin("check.cv.spin", Ipl::SoftNet, ());
static CV: CondVar = CondVar::new("check.cv");

fn sleep_with_spin_held() -> TestResult {
    let mut slept = true;
    let v = recording(|| {
        let mut m = CV_M.lock();
        let s = CV_S.lock();
        slept = CV.wait_deadline(&mut m, u64::MAX);
        drop(s);
    });
    kassert_eq!(v, Some(Violation::SleepWithSpinHeld { spin: "check.cv.spin" }));
    kassert!(!slept, "the refused wait slept");
    kassert_eq!(SPL.current(), Ipl::None);
    Ok(())
}
ktest!(T_SLEEP_SPIN, "lockcheck::sleep_with_spin_mutex_held", sleep_with_spin_held);

static NOT_HELD: Mutex<()> = Mutex::new_adaptive("check.not_held", ());

fn release_not_held() -> TestResult {
    let v = recording(|| NOT_HELD.raw().exit());
    kassert_eq!(v, Some(Violation::ReleaseNotHeld { lock: "check.not_held" }));
    // And by a thread other than the owner.
    let held = Arc::new(AtomicBool::new(false));
    let release = Arc::new(AtomicBool::new(false));
    let (h2, r2) = (held.clone(), release.clone());
    let owner = SCHED.spawn("check-owner", Priority::KTHREAD, None, move || {
        let _g = NOT_HELD.lock();
        h2.store(true, Ordering::SeqCst);
        while !r2.load(Ordering::SeqCst) {
            SCHED.sleep_ns(1_000_000);
        }
    });
    while !held.load(Ordering::SeqCst) {
        SCHED.sleep_ns(1_000_000);
    }
    let w = &SYNC.witness;
    w.set_checking(true);
    let v = recording(|| NOT_HELD.raw().exit());
    release.store(true, Ordering::SeqCst);
    owner.join();
    kassert_eq!(v, Some(Violation::ReleaseNotHeld { lock: "check.not_held" }));
    Ok(())
}
ktest!(T_NOT_HELD, "lockcheck::release_not_held", release_not_held);

static RECURSE: Mutex<()> = Mutex::new_adaptive("check.recursive", ());

fn recursion() -> TestResult {
    let mut second_held = true;
    let v = recording(|| {
        let _a = RECURSE.lock();
        let b = RECURSE.lock();
        second_held = b.is_held();
    });
    kassert_eq!(v, Some(Violation::Recursion { lock: "check.recursive" }));
    kassert!(!second_held, "the recursive acquisition was granted");
    kassert!(RECURSE.try_lock().is_some(), "the mutex was left held");
    Ok(())
}
ktest!(T_RECURSE, "lockcheck::recursion", recursion);

static DL_A: Mutex<()> = Mutex::new_adaptive("check.deadlock.a", ());
static DL_B: Mutex<()> = Mutex::new_adaptive("check.deadlock.b", ());

/// Two threads take two mutexes in opposite orders: the turnstile's chain walk finds the
/// cycle and reports it (the order checker is off here, so the deadlock report is the one).
fn deadlock_cycle_is_reported() -> TestResult {
    let w = &SYNC.witness;
    let was = w.checking();
    w.set_checking(false);
    w.set_policy(Policy::Record);
    let _ = w.take_violation::<arch::X86_64>();
    let a_held = Arc::new(AtomicBool::new(false));
    let a2 = a_held.clone();
    let t1 = SCHED.spawn("deadlock-1", Priority::KTHREAD, None, move || {
        let _a = DL_A.lock();
        a2.store(true, Ordering::SeqCst);
        // Wait until thread 2 holds B and is blocked on A, then take B: the cycle.
        while !(DL_B.raw().owned_by_other() && DL_A.raw().has_waiters()) {
            SCHED.sleep_ns(1_000_000);
        }
        let b = DL_B.lock();
        drop(b);
    });
    while !a_held.load(Ordering::SeqCst) {
        SCHED.sleep_ns(1_000_000);
    }
    let t2 = SCHED.spawn("deadlock-2", Priority::KTHREAD, None, || {
        let _b = DL_B.lock();
        let _a = DL_A.lock();
    });
    t1.join();
    t2.join();
    let v = w.take_violation::<arch::X86_64>();
    w.set_policy(Policy::Panic);
    w.set_checking(was);
    match v {
        Some(Violation::Deadlock { lock, thread }) => {
            kassert_eq!(lock, "check.deadlock.b");
            kassert_eq!(thread.as_str(), "deadlock-1");
            Ok(())
        }
        other => Err(alloc::format!("expected a deadlock report, got {other:?}")),
    }
}
ktest!(T_DEADLOCK, "lockcheck::deadlock_cycle", deadlock_cycle_is_reported);
