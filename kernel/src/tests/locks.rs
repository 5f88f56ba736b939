//! The lock layer on the real machine: exactness under contention, rwlock consistency,
//! priority inheritance (single and chained), condition variables, `lock_api` interop.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use ipl::Ipl;
use ktest::{kassert, kassert_eq, ktest, TestResult};
use sched::{Priority, ThreadState};

use super::{ncpus, now_ns, until};
use crate::locks::{CondVar, LockApiMutex, LockApiRwLock, Mutex, RwLock};
use crate::{Event, SCHED};

fn pri(p: u8) -> Priority {
    Priority::new(p).expect("priority in range")
}

struct Shared {
    count: u64,
}

fn hammer(m: &'static Mutex<Shared>, threads: usize, iters: u64) -> TestResult {
    let inside = Arc::new(AtomicBool::new(false));
    let overlaps = Arc::new(AtomicU64::new(0));
    let n = ncpus();
    let before = m.lock().count;
    let hs: Vec<_> = (0..threads)
        .map(|i| {
            let (inside, overlaps) = (inside.clone(), overlaps.clone());
            let bound = if i % 2 == 0 { Some(i % n) } else { None };
            SCHED.spawn("mutex-hammer", Priority::KTHREAD, bound, move || {
                for _ in 0..iters {
                    let mut g = m.lock();
                    if inside.swap(true, Ordering::SeqCst) {
                        overlaps.fetch_add(1, Ordering::Relaxed);
                    }
                    let c = g.count;
                    for _ in 0..8 {
                        core::hint::spin_loop();
                    }
                    g.count = c + 1;
                    inside.store(false, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for h in hs {
        h.join();
    }
    kassert_eq!(overlaps.load(Ordering::Relaxed), 0, "two holders inside \"{}\" at once", m.name());
    kassert_eq!(m.lock().count - before, threads as u64 * iters, "lost updates under \"{}\"", m.name());
    Ok(())
}

static ADAPTIVE: Mutex<Shared> = Mutex::new_adaptive("test.hammer.adaptive", Shared { count: 0 });
static SPIN: Mutex<Shared> = Mutex::new_spin("test.hammer.spin", Ipl::Vm, Shared { count: 0 });

fn adaptive_counter_exact() -> TestResult {
    hammer(&ADAPTIVE, 2 * ncpus() + 2, 3000)
}
ktest!(T_ADAPTIVE, "locks::mutex::adaptive_counter_exact", adaptive_counter_exact);

fn spin_counter_exact() -> TestResult {
    hammer(&SPIN, 2 * ncpus() + 2, 3000)?;
    kassert_eq!(crate::SPL.current(), Ipl::None, "spin mutexes left the SPL raised");
    Ok(())
}
ktest!(T_SPIN, "locks::mutex::spin_counter_exact", spin_counter_exact);

static PAIR: RwLock<(u64, u64)> = RwLock::new("test.rwlock.pair", (0, 0));

/// Writers update both halves in two steps; readers must never see them differ.
fn rwlock_readers_see_whole_updates() -> TestResult {
    let n = ncpus();
    let torn = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for i in 0..2 * n {
        let (torn, reads, stop) = (torn.clone(), reads.clone(), stop.clone());
        readers.push(SCHED.spawn("rw-reader", Priority::KTHREAD, Some(i % n), move || {
            while !stop.load(Ordering::Relaxed) {
                let g = PAIR.read();
                let a = g.0;
                for _ in 0..4 {
                    core::hint::spin_loop();
                }
                if g.1 != a {
                    torn.fetch_add(1, Ordering::Relaxed);
                }
                drop(g);
                reads.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let writers: Vec<_> = (0..2)
        .map(|i| {
            SCHED.spawn("rw-writer", Priority::KTHREAD, Some((i + 1) % n), move || {
                for _ in 0..2000 {
                    let mut g = PAIR.write();
                    g.0 += 1;
                    for _ in 0..16 {
                        core::hint::spin_loop();
                    }
                    g.1 += 1;
                }
            })
        })
        .collect();
    for w in writers {
        w.join(); // returns: writers were not starved by the readers
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join();
    }
    kassert_eq!(torn.load(Ordering::Relaxed), 0, "readers saw a half-done update");
    kassert!(reads.load(Ordering::Relaxed) > 0, "no reader got in");
    let g = PAIR.read();
    kassert_eq!(g.0, g.1);
    kassert!(g.0 >= 4000);
    Ok(())
}
ktest!(T_RW, "locks::rwlock::no_torn_reads", rwlock_readers_see_whole_updates);

static PI_LOCK: Mutex<u64> = Mutex::new_adaptive("test.pi.lock", 0);

/// Low (10) holds the mutex; a medium hog (30) and high (50) are on the same CPU. High blocks
/// on the mutex and lends 50 to low, which then outranks the hog, finishes its critical
/// section and hands the mutex to high — the hog runs in neither gap.
fn priority_inheritance_beats_the_hog() -> TestResult {
    let n = ncpus();
    let target = n - 1;
    if target != 0 {
        SCHED.bind_current(Some(0));
    }
    let locked = Arc::new(AtomicBool::new(false));
    let boosted_seen = Arc::new(AtomicU64::new(0));
    let hog_at_boost = Arc::new(AtomicU64::new(u64::MAX));
    let hog_at_grant = Arc::new(AtomicU64::new(u64::MAX));
    let hog_count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let low = {
        let (locked, boosted_seen, hog_at_boost, hog_count) =
            (locked.clone(), boosted_seen.clone(), hog_at_boost.clone(), hog_count.clone());
        SCHED.spawn("pi-low", pri(10), Some(target), move || {
            let mut g = PI_LOCK.lock();
            locked.store(true, Ordering::SeqCst);
            let deadline = now_ns() + 5_000_000_000;
            loop {
                let p = SCHED.current().priority().get() as u64;
                if p > boosted_seen.load(Ordering::Relaxed) {
                    boosted_seen.store(p, Ordering::SeqCst);
                }
                if p >= 50 || now_ns() > deadline {
                    hog_at_boost.store(hog_count.load(Ordering::SeqCst), Ordering::SeqCst);
                    break;
                }
                core::hint::spin_loop();
            }
            for _ in 0..50_000 {
                core::hint::spin_loop();
            }
            *g += 1;
        })
    };
    if !until(2000, || locked.load(Ordering::SeqCst)) {
        return Err("low-priority thread never took the mutex".into());
    }
    let hog = {
        let (stop, hog_count) = (stop.clone(), hog_count.clone());
        SCHED.spawn("pi-hog", pri(30), Some(target), move || {
            while !stop.load(Ordering::Relaxed) {
                hog_count.fetch_add(1, Ordering::SeqCst);
                core::hint::spin_loop();
            }
        })
    };
    // Let the hog take the target CPU from low.
    let h0 = hog_count.load(Ordering::SeqCst);
    until(1000, || hog_count.load(Ordering::SeqCst) > h0);
    let high = {
        let (hog_at_grant, hog_count) = (hog_at_grant.clone(), hog_count.clone());
        SCHED.spawn("pi-high", pri(50), Some(target), move || {
            let mut g = PI_LOCK.lock();
            hog_at_grant.store(hog_count.load(Ordering::SeqCst), Ordering::SeqCst);
            *g += 1;
        })
    };
    high.join();
    // The hog outranks low once the loan is withdrawn: stop it before waiting for low.
    stop.store(true, Ordering::Relaxed);
    hog.join();
    let low_thread = low.thread().clone();
    low.join();
    SCHED.bind_current(None);
    kassert_eq!(boosted_seen.load(Ordering::SeqCst), 50, "low never ran at high's priority");
    let (b, g) = (hog_at_boost.load(Ordering::SeqCst), hog_at_grant.load(Ordering::SeqCst));
    kassert!(b != u64::MAX && g != u64::MAX, "a stage never happened (boost {b}, grant {g})");
    kassert_eq!(g, b, "the hog ran between low's boosted critical section and high getting the mutex");
    kassert_eq!(low_thread.priority(), pri(10), "low kept a loan after releasing");
    Ok(())
}
ktest!(T_PI, "locks::pi::high_gets_mutex_within_holder_section", priority_inheritance_beats_the_hog);

static CHAIN_X: Mutex<()> = Mutex::new_adaptive("test.chain.x", ());
static CHAIN_Y: Mutex<()> = Mutex::new_adaptive("test.chain.y", ());

/// A (60) waits on X held by B (20); B waits on Y held by C (10): C runs at 60 until it
/// releases Y, B keeps 60 until it releases X, and everyone ends at its base priority.
fn three_lock_chain() -> TestResult {
    let go = Arc::new(Event::new(&SCHED));
    let c_has_y = Arc::new(AtomicBool::new(false));
    let b_has_x = Arc::new(AtomicBool::new(false));
    let c_pri_in_cs = Arc::new(AtomicU64::new(0));
    let order = Arc::new(AtomicUsize::new(0));
    let (a_done, b_done, c_done) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let c = {
        let (go, c_has_y, c_pri_in_cs, order, c_done) =
            (go.clone(), c_has_y.clone(), c_pri_in_cs.clone(), order.clone(), c_done.clone());
        SCHED.spawn("chain-c", pri(10), None, move || {
            let _y = CHAIN_Y.lock();
            c_has_y.store(true, Ordering::SeqCst);
            go.wait(); // sleep holding Y (allowed: an adaptive mutex)
            c_pri_in_cs.store(SCHED.current().priority().get() as u64, Ordering::SeqCst);
            c_done.store(order.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
        })
    };
    if !until(2000, || c_has_y.load(Ordering::SeqCst)) {
        return Err("C never took Y".into());
    }
    let b = {
        let (b_has_x, order, b_done) = (b_has_x.clone(), order.clone(), b_done.clone());
        SCHED.spawn("chain-b", pri(20), None, move || {
            let _x = CHAIN_X.lock();
            b_has_x.store(true, Ordering::SeqCst);
            let _y = CHAIN_Y.lock();
            b_done.store(order.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
        })
    };
    if !until(2000, || b_has_x.load(Ordering::SeqCst) && b.thread().state() == ThreadState::Sleeping) {
        return Err("B never blocked on Y".into());
    }
    kassert_eq!(c.thread().priority(), pri(20), "C did not inherit B's priority");
    let a = {
        let (order, a_done) = (order.clone(), a_done.clone());
        SCHED.spawn("chain-a", pri(60), None, move || {
            let _x = CHAIN_X.lock();
            a_done.store(order.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
        })
    };
    if !until(2000, || a.thread().state() == ThreadState::Sleeping) {
        return Err("A never blocked on X".into());
    }
    kassert_eq!(b.thread().priority(), pri(60), "B did not inherit A's priority");
    kassert_eq!(c.thread().priority(), pri(60), "A's priority did not reach C through B");
    let threads = [a.thread().clone(), b.thread().clone(), c.thread().clone()];
    go.set();
    a.join();
    b.join();
    c.join();
    kassert_eq!(c_pri_in_cs.load(Ordering::SeqCst), 60, "C did not run at 60 in its critical section");
    kassert_eq!(
        (c_done.load(Ordering::SeqCst), b_done.load(Ordering::SeqCst), a_done.load(Ordering::SeqCst)),
        (1, 2, 3),
        "the chain did not unwind C, B, A"
    );
    for (t, base) in threads.iter().zip([60u8, 20, 10]) {
        kassert_eq!(t.priority(), pri(base), "thread {} kept a loan", t.name());
    }
    Ok(())
}
ktest!(T_CHAIN, "locks::pi::three_lock_chain", three_lock_chain);

static CV_LOCK: Mutex<u64> = Mutex::new_adaptive("test.cv.lock", 0);
static CV: CondVar = CondVar::new("test.cv");

/// Signal wakes one waiter, broadcast wakes all, a timed wait times out on time.
fn condvar_signal_broadcast_timeout() -> TestResult {
    let n = 3;
    let woke = Arc::new(AtomicUsize::new(0));
    let hs: Vec<_> = (0..n)
        .map(|_| {
            let woke = woke.clone();
            SCHED.spawn("cv-waiter", Priority::KTHREAD, None, move || {
                let mut g = CV_LOCK.lock();
                let seen = *g;
                while *g == seen {
                    CV.wait(&mut g);
                }
                woke.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    if !until(2000, || crate::locks::SYNC.sleepq.waiters(&CV as *const CondVar as usize) == n) {
        return Err("waiters never slept on the condvar".into());
    }
    *CV_LOCK.lock() += 1;
    kassert!(CV.signal(), "signal found no waiter");
    if !until(2000, || woke.load(Ordering::SeqCst) == 1) {
        return Err("signal did not wake exactly one waiter".into());
    }
    // Synchronising: the broadcast finds exactly the waiters the signal left asleep.
    kassert_eq!(CV.broadcast(), n - 1, "signal woke more than one waiter");
    for h in hs {
        h.join();
    }
    kassert_eq!(woke.load(Ordering::SeqCst), n);
    let t0 = now_ns();
    let mut g = CV_LOCK.lock();
    let signalled = CV.wait_deadline(&mut g, t0 + 30_000_000);
    let took = now_ns() - t0;
    kassert!(!signalled, "timed wait reported a signal");
    kassert!(took >= 30_000_000, "timed wait returned early ({took} ns)");
    kassert!(g.is_held(), "timed wait did not reacquire the mutex");
    Ok(())
}
ktest!(T_CV, "locks::condvar::signal_broadcast_timeout", condvar_signal_broadcast_timeout);

static LA_MUTEX: LockApiMutex<u64> = LockApiMutex::new(0);
static LA_RW: LockApiRwLock<u64> = LockApiRwLock::new(0);

/// Code written against `lock_api` guards runs on the kernel locks unchanged.
fn lock_api_interop() -> TestResult {
    let hs: Vec<_> = (0..4)
        .map(|_| {
            SCHED.spawn("lock-api", Priority::KTHREAD, None, || {
                for _ in 0..1000 {
                    *LA_MUTEX.lock() += 1;
                    *LA_RW.write() += 1;
                    let _r = LA_RW.read();
                }
            })
        })
        .collect();
    for h in hs {
        h.join();
    }
    kassert_eq!(*LA_MUTEX.lock(), 4000);
    kassert_eq!(*LA_RW.read(), 4000);
    kassert!(LA_MUTEX.try_lock().is_some());
    Ok(())
}
ktest!(T_LOCKAPI, "locks::interop::lock_api", lock_api_interop);

static SPIN_FAST: Mutex<Shared> = Mutex::new_spin("test.hammer.spin_lock", Ipl::Vm, Shared { count: 0 });
static SPIN_HIGH: Mutex<()> = Mutex::new_spin("test.spin_lock.high", Ipl::High, ());

/// `spin_lock()` (NetBSD's `mutex_spin_enter` path) from every CPU: the counter is exact, the
/// levels nest (the outermost's saved level comes back at the last release, in any release
/// order) and the per-CPU nesting count returns to zero.
fn spin_lock_path() -> TestResult {
    let n = ncpus();
    let before = SPIN_FAST.spin_lock().count;
    let per = 3000u64;
    let threads = 2 * n + 2;
    let hs: Vec<_> = (0..threads)
        .map(|i| {
            SCHED.spawn("spin-lock", Priority::KTHREAD, Some(i % n), move || {
                for k in 0..per {
                    let mut g = SPIN_FAST.spin_lock();
                    let c = g.count;
                    if k % 64 == 0 {
                        // Nested, released out of order: the level stays at IPL_HIGH
                        // until the outermost goes.
                        let h = SPIN_HIGH.spin_lock();
                        g.count = c + 1;
                        drop(g);
                        drop(h);
                        continue;
                    }
                    g.count = c + 1;
                }
            })
        })
        .collect();
    for h in hs {
        h.join();
    }
    kassert_eq!(SPIN_FAST.spin_lock().count - before, threads as u64 * per, "lost updates under spin_lock");
    kassert_eq!(crate::SPL.current(), Ipl::None, "spin_lock left the SPL raised");
    kassert_eq!(crate::SPL.spin_count(), 0, "spin_lock left the nesting count");
    let x = crate::SPL.splraise(Ipl::SoftNet);
    {
        let _a = SPIN_FAST.spin_lock();
        kassert_eq!(crate::SPL.current(), Ipl::Vm);
        {
            let _b = SPIN_HIGH.spin_lock();
            kassert_eq!(crate::SPL.current(), Ipl::High);
            kassert_eq!(crate::SPL.spin_count(), 2);
        }
        kassert_eq!(crate::SPL.current(), Ipl::High, "the level dropped before the outermost release");
    }
    kassert_eq!(crate::SPL.current(), Ipl::SoftNet, "the outermost release did not restore the saved level");
    crate::SPL.splx(x);
    Ok(())
}
ktest!(T_SPIN_LOCK, "locks::mutex::spin_lock_path", spin_lock_path);

static TOGGLE_SPIN: Mutex<()> = Mutex::new_spin("test.toggle.spin", Ipl::Vm, ());
static TOGGLE_ADAPTIVE: Mutex<()> = Mutex::new_adaptive("test.toggle.adaptive", ());
static TOGGLE_RW: RwLock<()> = RwLock::new("test.toggle.rw", ());

/// Locks the checker recorded for the current thread.
fn recorded_holds() -> usize {
    let io = <arch::X86_64 as machine::Machine>::intr_disable();
    let n = SCHED.current().held_locks().lock(&io).len();
    n
}

/// `kern.lockcheck` switched at run time while locks are held: a hold taken unchecked is
/// released without the checker (no "release of a lock not held", no stale record), a hold the
/// checker recorded is forgotten at its release even with checking off by then — so a later
/// acquisition is not taken for a recursion. For every fast path: `spin_lock`, `lock` on both
/// kinds, rwlock read and write guards.
fn checker_switched_under_holds() -> TestResult {
    use sync::Policy;
    let w = &crate::locks::SYNC.witness;
    let was = w.checking();
    w.set_policy(Policy::Record);
    let _ = w.take_violation::<arch::X86_64>();
    let base = recorded_holds();
    let mut out = Ok(());
    for round in 0..2 {
        let on_at_enter = round == 1;
        w.set_checking(on_at_enter);
        // Sleeping locks first: none may be taken under a spin mutex.
        let a = TOGGLE_ADAPTIVE.lock();
        let r = TOGGLE_RW.read();
        let s = TOGGLE_SPIN.spin_lock();
        let l = TOGGLE_SPIN.raw().is_locked();
        drop(s);
        let s2 = TOGGLE_SPIN.lock();
        let held_now = recorded_holds() - base;
        w.set_checking(!on_at_enter);
        drop(s2);
        drop(r);
        drop(a);
        {
            let _wg = TOGGLE_RW.write();
        }
        w.set_checking(on_at_enter);
        let again_rw = TOGGLE_RW.write();
        let again = TOGGLE_SPIN.spin_lock();
        drop(again);
        drop(again_rw);
        let v = w.take_violation::<arch::X86_64>();
        let left = recorded_holds() - base;
        let check = (|| -> TestResult {
            kassert!(l, "spin_lock did not take the mutex");
            kassert_eq!(
                held_now,
                if on_at_enter { 3 } else { 0 },
                "holds recorded (checker on at enter: {on_at_enter})"
            );
            kassert_eq!(v, None, "a report after switching the checker (on at enter: {on_at_enter})");
            kassert_eq!(left, 0, "records left behind (on at enter: {on_at_enter})");
            kassert!(!TOGGLE_SPIN.raw().is_locked() && TOGGLE_RW.raw().readers() == 0, "a lock left held");
            kassert_eq!(crate::SPL.current(), Ipl::None);
            Ok(())
        })();
        if check.is_err() {
            out = check;
            break;
        }
    }
    w.set_policy(Policy::Panic);
    w.set_checking(was);
    out
}
ktest!(T_TOGGLE, "locks::checker::switched_under_holds", checker_switched_under_holds);
