//! Loom model of the adaptive mutex's owner-word protocol (`src/mutex.rs`).
//!
//! The real mutex needs a scheduler, so the protocol is restated here step for step, with the
//! same atomic operations and orderings:
//!
//! * enter: fast `cmpxchg` 0 → me (Acquire); slow path: reload, retry the `cmpxchg` if free,
//!   else, under the turnstile lock (a `loom::sync::Mutex` holding the FIFO of waiters),
//!   reload, give up if free, set `WAITERS` by `cmpxchg` (Relaxed) if not set, enqueue,
//!   `sleep_prepare`, drop the turnstile lock, and wait for the grant flag (Acquire) with the
//!   scheduler's `sleep_commit` / `sleep_prepare` loop (see `loom_sched`);
//! * exit: fast `cmpxchg` me → 0 (Release); slow path (`WAITERS` set): under the turnstile
//!   lock, take the first waiter, store its id (| `WAITERS` if more wait) with Release and set
//!   its grant flag (Release), or store 0 if none; then, the turnstile lock dropped, wake it.
//!
//! Left out: the adaptive spinning (spinning while the owner runs only delays the same steps),
//! and priorities (all waiters equal: first come, first served).
//!
//! Asserted: mutual exclusion (a `loom::cell::UnsafeCell` counter incremented in the critical
//! section — loom fails on any access not ordered by happens-before — and the owner word names
//! the holder); no lost hand-off (loom fails on a thread blocked forever); "waiters queued ⇒
//! `WAITERS` set" whenever the turnstile lock is taken; a free word and empty queue at the end.
//! A deliberately broken variant (Relaxed grant) must fail, to show the model has teeth.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p ithreads-sync --test loom_mutex --release`.
#![cfg(loom)]

mod loom_sched;

use std::collections::VecDeque;

use loom::cell::UnsafeCell;
use loom::sync::atomic::AtomicUsize;
use loom::sync::{Arc, Mutex as TsLock, MutexGuard as TsGuard};
use loom::thread;
use loom_sched::{KThread, Waiter};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

/// Owner-word bit: threads are blocked on the turnstile (the real constant).
const WAITERS: usize = sync::mutex::WAITERS;

/// A deliberately broken variant, to show the model catches what it should.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bug {
    /// The faithful protocol.
    None,
    /// The grant flag is stored Relaxed: the new owner's critical section is not ordered after
    /// the old owner's.
    RelaxedGrant,
}

struct ModelMutex {
    bug: Bug,
    owner: AtomicUsize,
    /// The turnstile lock and this mutex's queue of waiters.
    ts: TsLock<VecDeque<Arc<Waiter>>>,
    counter: UnsafeCell<usize>,
}

/// Thread `i`'s id: a non-zero, 8-aligned "address", so bit 0 is free for `WAITERS`.
fn id(i: usize) -> usize {
    (i + 1) * 8
}

impl ModelMutex {
    fn new(bug: Bug) -> Self {
        ModelMutex {
            bug,
            owner: AtomicUsize::new(0),
            ts: TsLock::new(VecDeque::new()),
            counter: UnsafeCell::new(0),
        }
    }

    /// Takes the turnstile lock and checks the queue/bit invariant under it.
    fn ts_lock(&self) -> TsGuard<'_, VecDeque<Arc<Waiter>>> {
        let q = self.ts.lock().unwrap();
        if !q.is_empty() {
            assert_ne!(self.owner.load(Relaxed) & WAITERS, 0, "waiters queued but WAITERS clear");
        }
        q
    }

    fn enter(&self, me: &Arc<KThread>) {
        if self.owner.compare_exchange(0, me.id, Acquire, Relaxed).is_ok() {
            return;
        }
        loop {
            let v = self.owner.load(Relaxed);
            if v == 0 {
                if self.owner.compare_exchange(0, me.id, Acquire, Relaxed).is_ok() {
                    return;
                }
                continue;
            }
            assert_ne!(v & !WAITERS, me.id, "recursive acquisition");
            let mut q = self.ts_lock();
            let v = self.owner.load(Relaxed);
            if v == 0 {
                continue;
            }
            if v & WAITERS == 0 && self.owner.compare_exchange(v, v | WAITERS, Relaxed, Relaxed).is_err() {
                continue;
            }
            assert_ne!(v & !WAITERS, me.id);
            let w = Waiter::new(me, true);
            q.push_back(w.clone());
            me.sleep_prepare();
            drop(q);
            w.wait();
            return; // handed to us: the owner word is ours
        }
    }

    fn exit(&self, me: &Arc<KThread>) {
        if self.owner.compare_exchange(me.id, 0, Release, Relaxed).is_ok() {
            return;
        }
        let v = self.owner.load(Relaxed);
        assert_eq!(v & !WAITERS, me.id, "released by a thread that does not own it");
        let mut q = self.ts_lock();
        let woken = match q.pop_front() {
            None => {
                self.owner.store(0, Release);
                None
            }
            Some(w) => {
                let more = if q.is_empty() { 0 } else { WAITERS };
                self.owner.store(w.thread.id | more, Release);
                if self.bug == Bug::RelaxedGrant {
                    w.granted.store(true, Relaxed);
                } else {
                    w.grant();
                }
                Some(w)
            }
        };
        drop(q);
        if let Some(w) = woken {
            w.thread.wakeup();
        }
    }

    fn critical_section(&self, me: &KThread) {
        assert_eq!(self.owner.load(Relaxed) & !WAITERS, me.id, "owner word does not name the holder");
        self.counter.with_mut(|p| {
            // SAFETY: we hold the modelled mutex; loom checks that no other access races.
            unsafe { *p += 1 };
        });
    }

    fn rounds(&self, me: &Arc<KThread>, rounds: usize) {
        for _ in 0..rounds {
            self.enter(me);
            self.critical_section(me);
            self.exit(me);
        }
    }
}

/// `threads` threads each enter and exit `rounds` times.
fn run(threads: usize, rounds: usize, bug: Bug) {
    let m = Arc::new(ModelMutex::new(bug));
    let handles: Vec<_> = (1..threads)
        .map(|i| {
            let m = m.clone();
            thread::spawn(move || m.rounds(&KThread::current(id(i)), rounds))
        })
        .collect();
    m.rounds(&KThread::current(id(0)), rounds);
    for h in handles {
        h.join().unwrap();
    }
    let total = m.counter.with(|p| {
        // SAFETY: every other thread has been joined.
        unsafe { *p }
    });
    assert_eq!(total, threads * rounds);
    assert_eq!(m.owner.load(Relaxed), 0, "owner word not free at the end");
    assert!(m.ts.lock().unwrap().is_empty(), "waiters left behind");
}

fn builder(preemptions: Option<usize>) -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = preemptions;
    }
    b
}

/// Exhaustive (no preemption bound).
#[test]
fn two_threads_one_round() {
    builder(None).check(|| run(2, 1, Bug::None));
}

/// Repeated contention: re-blocking after a hand-off, fast paths after slow ones.
#[test]
fn two_threads_two_rounds() {
    builder(Some(3)).check(|| run(2, 2, Bug::None));
}

/// Two waiters queue behind one owner: the hand-off must keep `WAITERS` for the second.
#[test]
fn three_threads_one_round() {
    builder(Some(3)).check(|| run(3, 1, Bug::None));
}

/// Long queues, re-blocking, every hand-off path.
#[test]
fn three_threads_two_rounds() {
    builder(Some(2)).check(|| run(3, 2, Bug::None));
}

/// The model has teeth: with a Relaxed grant the new owner is not ordered after the old one;
/// loom shows it (a stale owner word in the critical section, or a causality violation on
/// the counter).
#[test]
#[should_panic]
fn broken_relaxed_grant_is_caught() {
    builder(None).check(|| run(2, 1, Bug::RelaxedGrant));
}
