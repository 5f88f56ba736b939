//! Lock benchmarks: the uncontended fast paths of the kernel's mutexes and rwlock (lock
//! statistics and checking are off in a default boot, and a bench boot is one, so these are
//! the paths a default kernel takes; `@@ bench-config` says so), the
//! hand-off latency of an adaptive mutex between two CPUs, and the throughput of one adaptive
//! mutex hammered by every CPU of the boot.
//!
//! A note on the unit of the contended figures: under TCG `-icount shift=0` every vCPU
//! shares one instruction count (the TSC), and QEMU runs the vCPUs one at a time, round
//! robin (a `pause` hands over to the next vCPU). So an interval measured on one CPU counts
//! the instructions *all* CPUs executed in it — the waiter's spinning included. The
//! contended figures are total instructions across CPUs, not a latency on one CPU.

use alloc::vec::Vec;
use core::hint::spin_loop;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use ipl::Ipl;
use kbench::{kbench, now, Bencher};
use machine::Machine;
use sched::Priority;

use crate::locks::{Mutex, RwLock};
use crate::SCHED;

static ADAPTIVE: Mutex<u64> = Mutex::new_adaptive("bench.adaptive", 0);
static SPIN: Mutex<u64> = Mutex::new_spin("bench.spin", Ipl::Vm, 0);
static RW: RwLock<u64> = RwLock::new("bench.rwlock", 0);

/// Uncontended `lock()` + guard drop of a static adaptive `Mutex<u64>`: the owner-word
/// `cmpxchg` 0 → curthread and back.
fn adaptive_enter_exit(b: &mut Bencher) {
    b.iter(|| drop(ADAPTIVE.lock()));
    assert!(!ADAPTIVE.raw().owned_by_other() && !ADAPTIVE.owned(), "adaptive mutex left held");
}
kbench!(B_MUTEX_ADAPTIVE, "mutex.adaptive.enter_exit", adaptive_enter_exit);

/// Uncontended `spin_lock()` + guard drop of a static spin `Mutex<u64>` at `IPL_VM`, from
/// `IPL_NONE` — NetBSD's `mutex_spin_enter` + `mutex_spin_exit`: the SPL raise and the
/// per-CPU nesting count, the owner-word `cmpxchg`, the release store, then the count and
/// `splx` back to `IPL_NONE`.
fn spin_enter_exit(b: &mut Bencher) {
    b.iter(|| drop(SPIN.spin_lock()));
    assert!(!SPIN.owned(), "spin mutex left held");
    assert_eq!(crate::SPL.current(), Ipl::None, "spin mutex left the level raised");
}
kbench!(B_MUTEX_SPIN, "mutex.spin.enter_exit", spin_enter_exit);

/// The same through the kind-blind `lock()` (NetBSD's `mutex_enter` on a spin mutex): the
/// adaptive `cmpxchg` fails on the spin bit each way before the spin path runs, inline.
fn spin_enter_exit_generic(b: &mut Bencher) {
    b.iter(|| drop(SPIN.lock()));
    assert!(!SPIN.owned(), "spin mutex left held");
    assert_eq!(crate::SPL.current(), Ipl::None, "spin mutex left the level raised");
}
kbench!(B_MUTEX_SPIN_GENERIC, "mutex.spin.enter_exit.generic", spin_enter_exit_generic);

/// Uncontended `read()` + guard drop of a static `RwLock<u64>`: load, `cmpxchg` adding a
/// reader, load, `cmpxchg` removing it.
fn rwlock_read_enter_exit(b: &mut Bencher) {
    b.iter(|| drop(RW.read()));
    assert_eq!(RW.raw().readers(), 0, "rwlock left read-held");
}
kbench!(B_RWLOCK_READ, "rwlock.read.enter_exit", rwlock_read_enter_exit);

/// Uncontended `write()` + guard drop of a static `RwLock<u64>`: `cmpxchg` 0 → curthread |
/// `WRITE_LOCKED` and back.
fn rwlock_write_enter_exit(b: &mut Bencher) {
    b.iter(|| drop(RW.write()));
    assert!(RW.raw().readers() == 0 && RW.raw().try_write(), "rwlock left write-held");
    RW.raw().write_exit();
}
kbench!(B_RWLOCK_WRITE, "rwlock.write.enter_exit", rwlock_write_enter_exit);

/// Hand-offs at most, both ways together (the samples count, capped: a hand-off costs
/// thousands of instructions under TCG).
const HANDOFF_MAX_ROUNDS: usize = 20_000;

/// What the two sides of `mutex.handoff` share, inside the mutex.
struct Handoff {
    /// Whose turn it is: 0 (the bench thread, CPU 0) or 1 (the partner, CPU 1).
    turn: usize,
    /// Hand-offs left.
    left: usize,
    /// `now()` taken by the previous owner just before it passed the turn and unlocked.
    stamp: u64,
    /// One sample per hand-off.
    samples: Vec<u64>,
}

static HANDOFF: Mutex<Handoff> =
    Mutex::new_adaptive("bench.handoff", Handoff { turn: 0, left: 0, stamp: 0, samples: Vec::new() });

/// One side of the ping-pong: until no hand-off is left, wait for `me`'s turn (lock, check,
/// unlock, `spin_loop()` between tries), then record the hand-off and pass the turn.
fn handoff_side(me: usize) {
    loop {
        let mut g = HANDOFF.lock();
        if g.left == 0 {
            return;
        }
        if g.turn == me {
            let t = now();
            let h = &mut *g;
            if h.stamp != 0 {
                h.samples.push(t.wrapping_sub(h.stamp));
                h.left -= 1;
            }
            h.turn = 1 - me;
            h.stamp = now();
            drop(g);
        } else {
            drop(g);
            spin_loop();
        }
    }
}

/// `mutex.handoff`: the bench thread (CPU 0) and a partner thread bound to CPU 1 pass the
/// ownership of an adaptive mutex back and forth through a turn variable inside it. One
/// sample per hand-off, either way: from the previous owner's `now()` just before it unlocks
/// (after passing the turn) to the new owner's `now()` right after its successful `lock()`
/// found its turn — the unlock, the waiter's failed lock/check/unlock tries and `pause`s,
/// and its winning lock. Under TCG `-icount` that is the instructions *both* CPUs executed in
/// the interval (one shared count; the vCPUs run round robin). Needs two CPUs: with one, no
/// sample (the runner prints a skipped line).
fn mutex_handoff(b: &mut Bencher) {
    if arch::X86_64::ncpus() < 2 {
        return;
    }
    let rounds = b.samples().min(HANDOFF_MAX_ROUNDS);
    {
        let mut g = HANDOFF.lock();
        g.turn = 0;
        g.stamp = 0;
        g.left = rounds;
        g.samples.clear();
        g.samples.reserve(rounds);
    }
    let partner = SCHED.spawn("bench-handoff", Priority::KTHREAD, Some(1), || {
        SCHED.preempt_disable();
        handoff_side(1);
        SCHED.preempt_enable();
    });
    b.quiet(|_| handoff_side(0));
    partner.join();
    let samples = core::mem::take(&mut HANDOFF.lock().samples);
    assert_eq!(samples.len(), rounds, "mutex.handoff: hand-offs lost");
    for s in samples {
        b.record(s);
    }
}
kbench!(B_MUTEX_HANDOFF, "mutex.handoff", mutex_handoff);

/// Acquisitions per repetition of `mutex.contended.throughput`, over all threads (each of
/// the k threads makes an equal share: the total is rounded down to a multiple of k).
pub const THROUGHPUT_ACQUISITIONS: u64 = 12_000;
/// Repetitions of `mutex.contended.throughput` (its samples).
pub const THROUGHPUT_REPS: usize = 9;

/// Acquisitions made in the current repetition (counted inside the mutex, as a check).
static CONTENDED: Mutex<u64> = Mutex::new_adaptive("bench.contended", 0);
static READY: AtomicUsize = AtomicUsize::new(0);
static GO: AtomicBool = AtomicBool::new(false);
static DONE: AtomicUsize = AtomicUsize::new(0);

/// One thread's share: `n` times acquire, bump the counter, release.
fn hammer(n: u64) {
    for _ in 0..n {
        *CONTENDED.lock() += 1;
    }
}

/// `mutex.contended.throughput`: every CPU of the boot (k = smp) runs one thread bound to it
/// — the bench thread on CPU 0, k−1 spawned ones — and all of them hammer one adaptive
/// mutex (lock, bump a counter, unlock), [`THROUGHPUT_ACQUISITIONS`]` / k` times each. One
/// sample per repetition ([`THROUGHPUT_REPS`]): the instructions from the start signal to
/// the last thread done, divided by the acquisitions made. Under TCG `-icount` that is the
/// total over all k CPUs (one shared count) — waiters' spinning, the counter and the loop
/// included — per acquisition. The host's `bench --smp N` boots 1..=N CPUs for this one, so
/// there is one record per CPU count, its `smp` the k it ran with.
fn contended_throughput(b: &mut Bencher) {
    let k = arch::X86_64::ncpus();
    let share = THROUGHPUT_ACQUISITIONS / k as u64;
    let acquisitions = share * k as u64;
    for _ in 0..THROUGHPUT_REPS {
        *CONTENDED.lock() = 0;
        READY.store(0, Ordering::Relaxed);
        DONE.store(0, Ordering::Relaxed);
        GO.store(false, Ordering::Relaxed);
        let workers: Vec<_> = (1..k)
            .map(|cpu| {
                SCHED.spawn("bench-contended", Priority::KTHREAD, Some(cpu), move || {
                    READY.fetch_add(1, Ordering::AcqRel);
                    while !GO.load(Ordering::Acquire) {
                        spin_loop();
                    }
                    hammer(share);
                    DONE.fetch_add(1, Ordering::AcqRel);
                })
            })
            .collect();
        let total = b.quiet(|_| {
            while READY.load(Ordering::Acquire) < k - 1 {
                spin_loop();
            }
            let t0 = now();
            GO.store(true, Ordering::Release);
            hammer(share);
            while DONE.load(Ordering::Acquire) < k - 1 {
                spin_loop();
            }
            now().wrapping_sub(t0)
        });
        for w in workers {
            w.join();
        }
        assert_eq!(*CONTENDED.lock(), acquisitions, "mutex.contended.throughput: acquisitions lost");
        b.record(total / acquisitions);
    }
}
kbench!(B_MUTEX_CONTENDED, "mutex.contended.throughput", contended_throughput);
