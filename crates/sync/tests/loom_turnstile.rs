//! Loom model of the turnstile hand-off (`src/turnstile.rs`, used by `mutex.rs` and
//! `rwlock.rs`) together with the scheduler's sleep protocol (`crates/sched`, see
//! `loom_sched`).
//!
//! The waiter, under the turnstile lock, queues itself with a grant flag and calls
//! `sleep_prepare`; it drops the lock and loops `while !granted { sleep_commit; sleep_prepare }`,
//! then `sleep_cancel`. The releaser, under the turnstile lock, takes the waiter; it drops the
//! lock, sets the waiter's flag (Release) and calls `wakeup` (`Granted::wake`).
//!
//! `pi_core_hand_off_under_loom` (at the end) runs the turnstile core itself, `sync::pi`,
//! from several loom threads: waiters lending and donating turnstiles, hand-offs, loans.
//!
//! Asserted: the waiter always gets through (a watchdog on the model's main thread fails the
//! model if, once every wakeup has been delivered, the granted waiter is still `BLOCKED`),
//! and what the releaser wrote before the grant is visible to the waiter after it.
//!
//! A *stray wakeup* — `wakeup` of a thread that is no longer waiting for what the waker
//! meant, e.g. a releaser's wakeup arriving after the thread saw its flag, went on and
//! blocked on another lock — makes the waiter `RUNNING` while it is queued; it then runs
//! `sleep_prepare` (store `SLEEPING`) and reads its flag, while the releaser stores the flag
//! and reads the state in `wakeup`. That is the store-buffering pattern: with the flag
//! accessed Release/Acquire, both reads may miss the other's store (allowed by the C11 model
//! and by x86-TSO, whose store buffer delays the flag store past the state load; no locked
//! instruction lies between them on the releaser's side), and the waiter commits to
//! `BLOCKED` with its flag set and nobody left to wake it. `stray_wakeup_loses_the_hand_off`
//! shows loom finding it; `stray_wakeup_with_seqcst_fences` shows the `fence(SeqCst)` pair
//! (after `sleep_prepare`'s store, before `wakeup`'s load) closing it.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p ithreads-sync --test loom_turnstile --release`.
#![cfg(loom)]

mod loom_sched;

use std::collections::VecDeque;

use loom::cell::UnsafeCell;
use loom::sync::atomic::AtomicBool;
use loom::sync::{Arc, Mutex};
use loom::thread;
use loom_sched::{KThread, Waiter, BLOCKED};
use std::sync::atomic::Ordering::{Acquire, Release, SeqCst};

struct Turnstile {
    queue: Mutex<VecDeque<Arc<Waiter>>>,
    /// Written by the releaser before the grant, read by the waiter after it.
    payload: UnsafeCell<usize>,
}

/// One waiter, one releaser; with `stray`, the main thread also wakes the waiter once at an
/// arbitrary moment. `fenced`: the scheduler with the `fence(SeqCst)` pair.
///
/// The waiter's queueing and `sleep_prepare` (done under the turnstile lock before anyone can
/// see it) are done for it before it starts, so that nobody has to spin waiting for it.
fn scenario(stray: bool, fenced: bool) {
    let ts = Arc::new(Turnstile { queue: Mutex::new(VecDeque::new()), payload: UnsafeCell::new(0) });
    let done = Arc::new(AtomicBool::new(false));
    let t = KThread::unstarted(8, fenced);
    let w = Waiter::new(&t, true);
    {
        let mut q = ts.queue.lock().unwrap();
        q.push_back(w.clone());
        t.sleep_prepare();
    }

    let waiter = {
        let (ts, done, t) = (ts.clone(), done.clone(), t.clone());
        thread::spawn(move || {
            t.attach();
            w.wait();
            let got = ts.payload.with(|p| {
                // SAFETY: the releaser wrote it before the grant we saw; loom checks the order.
                unsafe { *p }
            });
            assert_eq!(got, 42, "granted waiter does not see the releaser's writes");
            done.store(true, Release);
        })
    };

    let releaser = {
        let ts = ts.clone();
        thread::spawn(move || {
            let mut q = ts.queue.lock().unwrap();
            let w = q.pop_front().expect("the waiter is queued");
            ts.payload.with_mut(|p| {
                // SAFETY: the waiter reads it only after the grant; loom checks the order.
                unsafe { *p = 42 };
            });
            drop(q);
            // As `Granted::wake`: the grant and the wakeup after the turnstile lock is dropped.
            w.grant();
            w.thread.wakeup();
        })
    };

    if stray {
        t.wakeup();
    }
    releaser.join().unwrap();

    // Watchdog: every wakeup has been delivered; a waiter still blocked now never wakes.
    loop {
        if done.load(Acquire) {
            break;
        }
        if t.state.load(SeqCst) == BLOCKED {
            t.wakeup(); // let the model finish, then report
            waiter.join().unwrap();
            panic!("lost hand-off: the waiter was granted but sleeps with nobody left to wake it");
        }
        thread::yield_now();
    }
    waiter.join().unwrap();
}

/// The hand-off as the code has it, no stray wakeup: exhaustive.
#[test]
fn hand_off() {
    loom::model(|| scenario(false, false));
}

/// The hand-off with the fix in place still works.
#[test]
fn hand_off_with_seqcst_fences() {
    loom::model(|| scenario(false, true));
}

/// A stray wakeup lets the grant's wakeup be lost (see the module doc).
#[test]
#[should_panic(expected = "lost hand-off")]
fn stray_wakeup_loses_the_hand_off() {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(|| scenario(true, false));
}

/// With `fence(SeqCst)` after `sleep_prepare`'s store and before `wakeup`'s load, no
/// interleaving loses the hand-off.
#[test]
fn stray_wakeup_with_seqcst_fences() {
    // Exhaustive takes minutes (about 190 s here); three preemptions cover the losing
    // interleaving of the test above, which loom finds with one.
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(|| scenario(true, true));
}

// ---------------------------------------------------------------------------------------------
// The turnstile core itself (`sync::pi`: the real `block`, `most_urgent`, `hand_to`) under loom.
//
// One lock `L` with a word (its owner, 0 when free) that, as the waiters bit in `mutex.rs`,
// is read and written under the turnstile lock (here one loom mutex standing for the chain
// lock and the PI lock, which every `pi` call holds both of). The owner (priority 10) holds
// `L` and releases it at an arbitrary moment; two waiters (30 and 20) on their own loom
// threads take `L` if it is free, else block on its turnstile — the first lending its own
// turnstile, the second donating its own to the free list — and sleep with the scheduler's
// protocol until granted; each releases in turn. The grant is set after the turnstile lock
// is dropped, as `Granted::wake` does. Asserted under every interleaving: the owner's
// priority carries the most urgent waiter's while it holds `L` with waiters and falls back to
// exactly its base at the release; a heir carries the remaining waiter's loan; at the end
// every thread holds exactly one turnstile, runs at its base priority and the chain is empty.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed};
use sync::pi::{self, Chain, PiThread, TsLinks};

/// A thread as the turnstile core sees it (its priorities are touched only under the lock).
struct PiTh {
    base: u8,
    eff: AtomicU8,
    links: TsLinks<PiTh>,
    k: Arc<KThread>,
    /// The grant flag (the loom-visible stand-in for `TsLinks::granted`).
    w: Arc<Waiter>,
}

impl PiThread for PiTh {
    fn links(&self) -> &TsLinks<Self> {
        &self.links
    }
    fn base_pri(&self) -> u8 {
        self.base
    }
    fn eff_pri(&self) -> u8 {
        self.eff.load(Relaxed)
    }
    fn set_eff_pri(&self, pri: u8) {
        self.eff.store(pri, Relaxed);
    }
}

fn pi_thread(id: usize, base: u8) -> Arc<PiTh> {
    let k = KThread::unstarted(id, true);
    let w = Waiter::new(&k, true);
    Arc::new(PiTh { base, eff: AtomicU8::new(base), links: TsLinks::default(), k, w })
}

const L: usize = 0x1000;

/// The turnstile lock and what it protects.
struct Ts {
    chain: Chain<PiTh>,
    /// `L`'s owner word (the thread's index + 1; 0 free).
    word: usize,
}

struct World {
    ts: Mutex<Ts>,
    th: Vec<Arc<PiTh>>,
    /// Entries into the critical section of `L`, by thread index, in order.
    order: Mutex<Vec<usize>>,
    inside: AtomicUsize,
}

// SAFETY: `Chain` holds raw pointers to the threads' turnstiles, reached only under `ts`.
unsafe impl Send for Ts {}

impl World {
    /// Thread `i` releases `L`: hands it to the most urgent waiter (granted and woken after
    /// the lock is dropped), or frees it.
    fn release(&self, i: usize) {
        let heir = {
            let mut g = self.ts.lock().unwrap();
            assert_eq!(g.word, i + 1, "released by a thread that does not own it");
            let me = &*self.th[i];
            let Ts { chain, word } = &mut *g;
            let heir = match chain.lookup(L) {
                None => {
                    *word = 0;
                    None
                }
                Some(ts) => {
                    let ts: *const pi::Turnstile<PiTh> = ts;
                    // SAFETY: an active turnstile lives while its waiters wait.
                    let ts = unsafe { &*ts };
                    // Before the release: the owner carries its most urgent waiter's priority.
                    let top = {
                        let mut p = 0;
                        ts.for_each_waiter(|t| p = p.max(t.eff_pri()));
                        p
                    };
                    assert!(me.eff_pri() >= top, "owner at {} below its waiter's {}", me.eff_pri(), top);
                    let h: *const PiTh = pi::most_urgent(ts).expect("waiters");
                    // SAFETY: queued, hence alive (the world holds every thread).
                    let h = unsafe { &*h };
                    pi::hand_to(chain, ts, Some(me), h);
                    let hi = self.th.iter().position(|t| std::ptr::eq(&**t, h)).unwrap();
                    *word = hi + 1;
                    Some(hi)
                }
            };
            assert_eq!(me.eff_pri(), me.base, "the loan outlived the release");
            if let Some(h) = heir {
                let h = &*self.th[h];
                let mut want = h.base;
                h.links.for_each_contested(|t| t.for_each_waiter(|w| want = want.max(w.eff_pri())));
                assert_eq!(h.eff_pri(), want, "heir's priority is not max(base, remaining waiters)");
            }
            heir
        };
        if let Some(h) = heir {
            let h = &*self.th[h];
            h.w.grant();
            h.k.wakeup();
        }
    }

    /// Thread `i` takes `L`: at once if free, else blocked on its turnstile until granted.
    fn acquire(&self, i: usize) {
        let me = &*self.th[i];
        let mut g = self.ts.lock().unwrap();
        if g.word == 0 {
            g.word = i + 1;
            return;
        }
        let owner: *const PiTh = &*self.th[g.word - 1];
        let Ts { chain, .. } = &mut *g;
        // SAFETY: the owner is alive (the world holds every thread).
        pi::block(chain, L, me, true, Some(unsafe { &*owner })).expect("no cycle here");
        me.k.sleep_prepare();
        drop(g);
        me.w.wait();
        assert_eq!(self.ts.lock().unwrap().word, i + 1, "granted without the lock word");
    }

    fn critical(&self, i: usize) {
        assert_eq!(self.inside.fetch_add(1, SeqCst), 0, "two threads inside L");
        self.order.lock().unwrap().push(i);
        self.inside.fetch_sub(1, SeqCst);
    }
}

#[test]
fn pi_core_hand_off_under_loom() {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(|| {
        let th = vec![pi_thread(8, 10), pi_thread(16, 30), pi_thread(24, 20)];
        th[0].k.attach();
        let world = Arc::new(World {
            ts: Mutex::new(Ts { chain: Chain::new(), word: 1 }),
            th,
            order: Mutex::new(Vec::new()),
            inside: AtomicUsize::new(0),
        });
        let waiters: Vec<_> = (1..3)
            .map(|i| {
                let world = world.clone();
                thread::spawn(move || {
                    world.th[i].k.attach();
                    world.acquire(i);
                    world.critical(i);
                    world.release(i);
                })
            })
            .collect();
        world.critical(0);
        world.release(0);
        for w in waiters {
            w.join().unwrap();
        }
        assert_eq!(world.order.lock().unwrap().len(), 3);
        let g = world.ts.lock().unwrap();
        assert_eq!(g.word, 0, "L left held");
        assert!(g.chain.lookup(L).is_none(), "a turnstile left hashed");
        for t in &world.th {
            assert!(t.links.has_turnstile(), "a thread left without a turnstile");
            assert_eq!(t.eff_pri(), t.base, "a loan left behind");
        }
    });
}
