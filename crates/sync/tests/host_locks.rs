//! The lock layer on the host machine (`host_machine`): kernel threads are OS threads, each
//! simulated CPU runs one at a time, and the clock preempts at interrupt points. Every test
//! runs on 1, 2 and 4 simulated CPUs, with more threads than CPUs where blocking matters.
//!
//! Critical sections call [`HostMachine::poll_interrupts`] (an interrupt point), so the clock
//! preempts lock holders there: the other threads then find the owner off its CPU and block on
//! the turnstile instead of spinning, which is the path these tests are after.
//!
//! Every wait is bounded: kernel-side waits by deadlines ([`spin_until`], `wait_deadline`),
//! the whole test body by [`HostSystem::run_timeout`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use host_machine::{
    checked, spin_until, CondVar, Event, HostMachine, HostSystem, Mutex, RwLock, TICK_NS, TICK_VECTOR,
};
use ipl::Ipl;
use machine::Machine;
use sched::Priority;
use sched::SchedEnv;
use sync::witness::ClassStats;
use sync::{Env, Policy, Violation};

/// CPU counts every test runs on.
const CPUS: [usize; 3] = [1, 2, 4];

/// Limit on one test body (a hang fails the test with the CPUs' counters). Under Miri the
/// host machine's own limit ([`host_machine::RUN_TIMEOUT`]): Miri's clock advances per basic
/// block interpreted, and every simulated CPU is interpreted on one host thread.
const BODY_TIMEOUT: Duration = if cfg!(miri) { host_machine::RUN_TIMEOUT } else { Duration::from_secs(30) };

/// Limit on one kernel-side wait (an hour of Miri's clock under Miri, as above).
const WAIT_NS: u64 = if cfg!(miri) { 3_600_000_000_000 } else { 10_000_000_000 };

/// How long contention loops run (enough clock ticks for time slices to expire inside
/// critical sections). Under Miri a tick is 50 ms of Miri's clock and 4 of them are still
/// more than a time slice.
const CONTENTION_NS: u64 = if cfg!(miri) { 4 } else { 40 } * TICK_NS;

/// The fewest passes each contending thread makes, whatever the clock says (shrunk under Miri).
const MIN_PASSES: u64 = if cfg!(miri) { 10 } else { 50 };

fn pri(p: u8) -> Priority {
    Priority::new(p).unwrap()
}

fn deadline() -> u64 {
    HostMachine::now_ns() + WAIT_NS
}

/// Statistics of lock class `name` in `sys`.
fn lockstat(sys: &HostSystem, name: &str) -> ClassStats {
    sys.locks
        .witness
        .lockstat()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, s)| s)
        .unwrap_or_else(|| panic!("no lock class {name:?}"))
}

/// `2 * ncpus + 1` threads add 1 to a counter under an adaptive mutex, each for at least
/// [`CONTENTION_NS`], with an interrupt point inside the critical section. Returns the final
/// counter and the sum of the threads' own counts.
///
/// The threads are bound round-robin, so every CPU has threads waiting for it and the clock
/// preempts whoever runs when its slice ends — a holder too, at the interrupt point inside
/// its critical section. (Unbound, the waiting threads may all queue behind spinners: a
/// spinner reaches no interrupt point on this machine, so it keeps its CPU until it gets
/// the mutex, and one holder on an uncontended CPU may keep the mutex for its whole run.)
fn adaptive_counter(sys: &HostSystem) -> (u64, u64) {
    let ncpus = sys.ncpus();
    let nthreads = 2 * ncpus + 1;
    sys.run_timeout(BODY_TIMEOUT, move |sched| {
        let m: Arc<Mutex<u64>> = Arc::new(Mutex::new_adaptive("host counter", 0));
        let done = Arc::new(AtomicU64::new(0));
        let hs: Vec<_> = (0..nthreads)
            .map(|i| {
                let (m, done) = (m.clone(), done.clone());
                sched.spawn(
                    &format!("adder{i}"),
                    Priority::KTHREAD,
                    Some(i % ncpus),
                    checked(move || {
                        let end = HostMachine::now_ns() + CONTENTION_NS;
                        let mut n = 0u64;
                        while n < 2 * MIN_PASSES || HostMachine::now_ns() < end {
                            let mut g = m.lock();
                            let v = *g;
                            // The clock may preempt the holder here (read-modify-write split).
                            HostMachine::poll_interrupts();
                            *g = v + 1;
                            drop(g);
                            n += 1;
                        }
                        done.fetch_add(n, Ordering::Relaxed);
                    }),
                )
            })
            .collect();
        for h in hs {
            h.join();
        }
        let v = *m.lock();
        (v, done.load(Ordering::Relaxed))
    })
}

/// The adaptive mutex counts exactly under contention, with lock statistics on, and the
/// statistics show threads blocked on the turnstile.
#[test]
fn adaptive_mutex_counter_exact_and_blocks() {
    for ncpus in CPUS {
        let sys = HostSystem::boot(ncpus);
        sys.locks.witness.set_stats(true);
        let (v, n) = adaptive_counter(&sys);
        assert_eq!(v, n, "{ncpus} CPUs: lost updates");
        let st = lockstat(&sys, "host counter");
        assert_eq!(st.acquired, n + 1, "{ncpus} CPUs: {st:?}");
        assert!(st.contended > 0, "{ncpus} CPUs: no contention seen: {st:?}");
        assert!(st.block_ns > 0, "{ncpus} CPUs: nobody blocked on the turnstile: {st:?}");
    }
}

/// The same without the checker and statistics: the inline fast paths.
#[test]
fn adaptive_mutex_counter_exact_fast_path() {
    for ncpus in CPUS {
        let sys = HostSystem::boot(ncpus);
        let (v, n) = adaptive_counter(&sys);
        assert_eq!(v, n, "{ncpus} CPUs: lost updates");
    }
}

/// A spin mutex counts exactly; while it is held the level is its IPL (so the holder is not
/// preempted: the clock's preemption waits for the release), and afterwards every CPU is back
/// at `IPL_NONE` with no spin mutex counted.
#[test]
fn spin_mutex_counter_exact() {
    for ncpus in CPUS {
        let sys = HostSystem::boot(ncpus);
        let nthreads = 2 * ncpus + 1;
        let (v, n, bad_level) = sys.run_timeout(BODY_TIMEOUT, move |sched| {
            let m: Arc<Mutex<u64>> = Arc::new(Mutex::new_spin("host spin counter", Ipl::Vm, 0));
            let done = Arc::new(AtomicU64::new(0));
            let bad_level = Arc::new(AtomicUsize::new(0));
            let hs: Vec<_> = (0..nthreads)
                .map(|i| {
                    let (m, done, bad_level) = (m.clone(), done.clone(), bad_level.clone());
                    sched.spawn(
                        &format!("spinner{i}"),
                        Priority::KTHREAD,
                        None,
                        checked(move || {
                            let spl = host_machine::HostEnv::spl();
                            let end = HostMachine::now_ns() + CONTENTION_NS;
                            let mut n = 0u64;
                            while n < 2 * MIN_PASSES || HostMachine::now_ns() < end {
                                let mut g = m.lock();
                                let v = *g;
                                HostMachine::poll_interrupts();
                                if spl.current() != Ipl::Vm {
                                    bad_level.fetch_add(1, Ordering::Relaxed);
                                }
                                *g = v + 1;
                                drop(g);
                                if spl.current() != Ipl::None || spl.spin_count() != 0 {
                                    bad_level.fetch_add(1, Ordering::Relaxed);
                                }
                                n += 1;
                            }
                            done.fetch_add(n, Ordering::Relaxed);
                        }),
                    )
                })
                .collect();
            for h in hs {
                h.join();
            }
            let v = *m.lock();
            (v, done.load(Ordering::Relaxed), bad_level.load(Ordering::Relaxed))
        });
        assert_eq!(v, n, "{ncpus} CPUs: lost updates");
        assert_eq!(bad_level, 0, "{ncpus} CPUs: wrong SPL inside or after the critical section");
    }
}

/// The host machine defers interrupts at or below the CPU's level: the clock (`IPL_SCHED`)
/// is recorded while a spin mutex at `IPL_SCHED` is held, and replayed by its release.
#[test]
fn spl_defers_and_replays_the_clock() {
    for ncpus in CPUS {
        let sys = HostSystem::boot(ncpus);
        let (deferred, replayed, pending_held, pending_after, ticks_held, ticks_after) =
            sys.run_timeout(BODY_TIMEOUT, |sched| {
                let spl = host_machine::HostEnv::spl();
                // A timed sleep is pending throughout, so a tick is due even on a tickless
                // clock (the host machine under Miri ticks only when there is work for it).
                let wake = Arc::new(Event::new(sched));
                let sleeper = {
                    let wake = wake.clone();
                    sched.spawn(
                        "timed sleeper",
                        Priority::KTHREAD,
                        None,
                        checked(move || {
                            wake.wait_deadline(deadline());
                        }),
                    )
                };
                assert!(spin_until(WAIT_NS, || sched.next_timeout_ns().is_some()), "the sleeper never slept");
                let m: Mutex<()> = Mutex::new_spin("host sched-level spin", Ipl::Sched, ());
                let g = m.lock();
                // At IPL_SCHED we cannot migrate: the CPU index is stable until the release.
                let cpu = sched.cpu_index();
                let s0 = spl.stats(cpu);
                let t0 = sched.cpu_stats(cpu).ticks;
                // Interrupt points until a tick arrives (one is due every TICK_NS).
                let pending_held = spin_until(WAIT_NS, || spl.is_pending(TICK_VECTOR));
                let ticks_held = sched.cpu_stats(cpu).ticks - t0;
                drop(g);
                let s1 = spl.stats(cpu);
                let pending_after = spl.is_pending(TICK_VECTOR);
                let ticks_after = sched.cpu_stats(cpu).ticks - t0;
                wake.set();
                sleeper.join();
                (
                    s1.deferred - s0.deferred,
                    s1.replayed - s0.replayed,
                    pending_held,
                    pending_after,
                    ticks_held,
                    ticks_after,
                )
            });
        assert!(deferred > 0, "{ncpus} CPUs: no clock tick deferred at IPL_SCHED");
        assert!(pending_held, "{ncpus} CPUs: the deferred tick is not pending");
        assert_eq!(ticks_held, 0, "{ncpus} CPUs: the clock handler ran at IPL_SCHED");
        assert!(replayed > 0, "{ncpus} CPUs: splx replayed nothing");
        assert!(!pending_after, "{ncpus} CPUs: the tick is still pending after splx");
        assert!(ticks_after > 0, "{ncpus} CPUs: the replayed tick did not reach the scheduler");
    }
}

/// Writers keep every word of an array equal (writing them one by one, with interrupt points
/// between); readers never see two different words. The final value is the number of writes.
#[test]
fn rwlock_no_torn_reads() {
    const WORDS: usize = 8;
    for ncpus in CPUS {
        let sys = HostSystem::boot(ncpus);
        sys.locks.witness.set_stats(true);
        let nreaders = ncpus + 2;
        let (final_words, writes, reads, torn) = sys.run_timeout(BODY_TIMEOUT, move |sched| {
            let l: Arc<RwLock<[u64; WORDS]>> = Arc::new(RwLock::new("host rwlock", [0; WORDS]));
            let writes = Arc::new(AtomicU64::new(0));
            let reads = Arc::new(AtomicU64::new(0));
            let torn = Arc::new(AtomicU64::new(0));
            let mut hs = Vec::new();
            for i in 0..2 {
                let (l, writes) = (l.clone(), writes.clone());
                hs.push(sched.spawn(
                    &format!("writer{i}"),
                    Priority::KTHREAD,
                    None,
                    checked(move || {
                        let end = HostMachine::now_ns() + CONTENTION_NS;
                        let mut n = 0;
                        while n < MIN_PASSES || HostMachine::now_ns() < end {
                            let mut g = l.write();
                            let v = g[0] + 1;
                            for w in g.iter_mut() {
                                *w = v;
                                HostMachine::poll_interrupts();
                            }
                            drop(g);
                            n += 1;
                        }
                        writes.fetch_add(n, Ordering::Relaxed);
                    }),
                ));
            }
            for i in 0..nreaders {
                let (l, reads, torn) = (l.clone(), reads.clone(), torn.clone());
                hs.push(sched.spawn(
                    &format!("reader{i}"),
                    Priority::KTHREAD,
                    None,
                    checked(move || {
                        let end = HostMachine::now_ns() + CONTENTION_NS;
                        let mut n = 0;
                        while n < MIN_PASSES || HostMachine::now_ns() < end {
                            let g = l.read();
                            let first = g[0];
                            for &w in g.iter() {
                                HostMachine::poll_interrupts();
                                if w != first {
                                    torn.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            drop(g);
                            n += 1;
                        }
                        reads.fetch_add(n, Ordering::Relaxed);
                    }),
                ));
            }
            for h in hs {
                h.join();
            }
            let words = *l.read();
            (
                words,
                writes.load(Ordering::Relaxed),
                reads.load(Ordering::Relaxed),
                torn.load(Ordering::Relaxed),
            )
        });
        assert_eq!(torn, 0, "{ncpus} CPUs: torn reads");
        assert!(
            final_words.iter().all(|&w| w == writes),
            "{ncpus} CPUs: {final_words:?} after {writes} writes"
        );
        assert!(reads > 0);
        let st = lockstat(&sys, "host rwlock");
        assert!(st.contended > 0, "{ncpus} CPUs: no contention seen: {st:?}");
    }
}

/// `signal` wakes one waiter per call: K waiters each consume one token; K signals (each
/// finding a waiter) let all of them through, and one more finds nobody.
#[test]
fn condvar_signal_wakes_one_each() {
    const K: usize = 5;
    for ncpus in CPUS {
        let sys = HostSystem::boot(ncpus);
        let (signalled, extra) = sys.run_timeout(BODY_TIMEOUT, |sched| {
            // (waiting, tokens)
            let m: Arc<Mutex<(usize, usize)>> = Arc::new(Mutex::new_adaptive("host cv mutex", (0, 0)));
            let cv = Arc::new(CondVar::new("host cv"));
            let through = Arc::new(AtomicUsize::new(0));
            let hs: Vec<_> = (0..K)
                .map(|i| {
                    let (m, cv, through) = (m.clone(), cv.clone(), through.clone());
                    sched.spawn(
                        &format!("waiter{i}"),
                        Priority::KTHREAD,
                        None,
                        checked(move || {
                            let dl = deadline();
                            let mut g = m.lock();
                            g.0 += 1;
                            while g.1 == 0 {
                                assert!(cv.wait_deadline(&mut g, dl) || g.1 > 0, "no signal in time");
                            }
                            g.1 -= 1;
                            g.0 -= 1;
                            drop(g);
                            through.fetch_add(1, Ordering::Relaxed);
                        }),
                    )
                })
                .collect();
            // Every waiter counted itself under the mutex and only releases it by waiting, so
            // once we see K under the mutex, all K are queued on the condition variable.
            assert!(
                spin_until(WAIT_NS, || {
                    let g = m.lock();
                    g.0 == K
                }),
                "waiters did not all wait"
            );
            let mut signalled = 0;
            for _ in 0..K {
                let mut g = m.lock();
                g.1 += 1;
                if cv.signal() {
                    signalled += 1;
                }
            }
            for h in hs {
                h.join();
            }
            assert_eq!(through.load(Ordering::Relaxed), K);
            (signalled, cv.signal())
        });
        assert_eq!(signalled, K, "{ncpus} CPUs: a signal found no waiter");
        assert!(!extra, "{ncpus} CPUs: a signal found a waiter after all left");
    }
}

/// `broadcast` wakes every waiter at once.
#[test]
fn condvar_broadcast_wakes_all() {
    const K: usize = 6;
    for ncpus in CPUS {
        let sys = HostSystem::boot(ncpus);
        let woken = sys.run_timeout(BODY_TIMEOUT, |sched| {
            // (waiting, go)
            let m: Arc<Mutex<(usize, bool)>> = Arc::new(Mutex::new_adaptive("host bcast mutex", (0, false)));
            let cv = Arc::new(CondVar::new("host bcast"));
            let through = Arc::new(AtomicUsize::new(0));
            let hs: Vec<_> = (0..K)
                .map(|i| {
                    let (m, cv, through) = (m.clone(), cv.clone(), through.clone());
                    sched.spawn(
                        &format!("bwaiter{i}"),
                        Priority::KTHREAD,
                        None,
                        checked(move || {
                            let dl = deadline();
                            let mut g = m.lock();
                            g.0 += 1;
                            while !g.1 {
                                assert!(cv.wait_deadline(&mut g, dl) || g.1, "no broadcast in time");
                            }
                            drop(g);
                            through.fetch_add(1, Ordering::Relaxed);
                        }),
                    )
                })
                .collect();
            assert!(
                spin_until(WAIT_NS, || {
                    let g = m.lock();
                    g.0 == K
                }),
                "waiters did not all wait"
            );
            let woken = {
                let mut g = m.lock();
                g.1 = true;
                cv.broadcast()
            };
            for h in hs {
                h.join();
            }
            assert_eq!(through.load(Ordering::Relaxed), K);
            woken
        });
        assert_eq!(woken, K, "{ncpus} CPUs: broadcast woke {woken} of {K}");
    }
}

/// A producer hands items to a consumer through a mutex-protected queue and a condition
/// variable; nothing is lost or reordered.
#[test]
fn condvar_producer_consumer() {
    const N: u64 = if cfg!(miri) { 100 } else { 2000 };
    for ncpus in CPUS {
        let sys = HostSystem::boot(ncpus);
        let got = sys.run_timeout(BODY_TIMEOUT, |sched| {
            let q: Arc<Mutex<VecDeque<u64>>> = Arc::new(Mutex::new_adaptive("host queue", VecDeque::new()));
            let cv = Arc::new(CondVar::new("host queue nonempty"));
            let got = Arc::new(AtomicU64::new(0));
            let consumer = {
                let (q, cv, got) = (q.clone(), cv.clone(), got.clone());
                sched.spawn(
                    "consumer",
                    Priority::KTHREAD,
                    None,
                    checked(move || {
                        let dl = deadline();
                        for want in 0..N {
                            let mut g = q.lock();
                            while g.is_empty() {
                                assert!(cv.wait_deadline(&mut g, dl) || !g.is_empty(), "starved");
                            }
                            assert_eq!(g.pop_front(), Some(want));
                            got.fetch_add(1, Ordering::Relaxed);
                        }
                    }),
                )
            };
            for i in 0..N {
                q.lock().push_back(i);
                cv.signal();
                if i % 64 == 0 {
                    HostMachine::poll_interrupts();
                }
            }
            consumer.join();
            got.load(Ordering::Relaxed)
        });
        assert_eq!(got, N, "{ncpus} CPUs");
    }
}

/// Priority inheritance: a high-priority thread blocks on a mutex held by a low-priority one
/// (both bound to CPU 0, so the owner is off its CPU and the high thread blocks rather than
/// spins). While it holds the mutex the low thread runs at the high one's priority; after
/// the release it is back at its own.
#[test]
fn priority_inheritance_observed() {
    const LOW: u8 = 20;
    const HIGH: u8 = 60;
    for ncpus in CPUS {
        let sys = HostSystem::boot(ncpus);
        let (boosted, after, high_got_it, low_base) = sys.run_timeout(BODY_TIMEOUT, |sched| {
            let m: Arc<Mutex<u64>> = Arc::new(Mutex::new_adaptive("host pi", 0));
            let holding = Arc::new(Event::new(sched));
            let boosted = Arc::new(AtomicU8::new(0));
            let after = Arc::new(AtomicU8::new(0));
            let low = {
                let (m, holding, boosted, after) =
                    (m.clone(), holding.clone(), boosted.clone(), after.clone());
                sched.spawn(
                    "low",
                    pri(LOW),
                    Some(0),
                    checked(move || {
                        let mut g = m.lock();
                        holding.set();
                        // Busy (with interrupt points) until the high thread lends its priority.
                        spin_until(WAIT_NS, || sched.current().priority() == pri(HIGH));
                        boosted.store(sched.current().priority().get(), Ordering::SeqCst);
                        *g += 1;
                        drop(g);
                        after.store(sched.current().priority().get(), Ordering::SeqCst);
                    }),
                )
            };
            assert!(holding.wait_deadline(deadline()), "low never took the mutex");
            let high_got = Arc::new(AtomicBool::new(false));
            let high = {
                let (m, high_got) = (m.clone(), high_got.clone());
                sched.spawn(
                    "high",
                    pri(HIGH),
                    Some(0),
                    checked(move || {
                        let mut g = m.lock();
                        // Low incremented first: we waited for its release.
                        high_got.store(*g == 1, Ordering::SeqCst);
                        *g += 1;
                    }),
                )
            };
            let low_thread = low.thread().clone();
            high.join();
            low.join();
            (
                boosted.load(Ordering::SeqCst),
                after.load(Ordering::SeqCst),
                high_got.load(Ordering::SeqCst),
                low_thread.priority().get(),
            )
        });
        assert_eq!(boosted, HIGH, "{ncpus} CPUs: the owner was not boosted to the waiter's priority");
        assert_eq!(after, LOW, "{ncpus} CPUs: the loan was not withdrawn at the release");
        assert!(high_got_it, "{ncpus} CPUs: the high thread did not get the mutex after the low one");
        assert_eq!(low_base, LOW);
    }
}

/// Several waiters on several locks from several CPUs: `3 * ncpus + 2` threads at five
/// different priorities each take two of three adaptive mutexes in order (nested: an owner
/// blocked on its second lock is a lender's owner in a chain) or a write or read hold of an
/// rwlock, with interrupt points inside, so the clock preempts holders and the others queue
/// on the turnstiles — several turnstiles active at once, hashed into their chains, lending
/// along chains of owners. Checked: no lost update under any lock; a thread that holds
/// nothing runs at exactly its base priority (every loan was withdrawn) and holds a turnstile
/// (each waiter got one back); over the runs, the statistics show threads blocked.
#[test]
fn turnstiles_many_waiters_many_locks() {
    const NLOCKS: usize = 3;
    let mut waited = 0;
    for ncpus in CPUS {
        let sys = HostSystem::boot(ncpus);
        sys.locks.witness.set_stats(true);
        let nthreads = 3 * ncpus + 2;
        let (counts, done, rw, rw_done, bad) = sys.run_timeout(BODY_TIMEOUT, move |sched| {
            let locks: Arc<Vec<Mutex<u64>>> =
                Arc::new((0..NLOCKS).map(|_| Mutex::new_adaptive("host many", 0)).collect());
            let rwl: Arc<RwLock<u64>> = Arc::new(RwLock::new("host many rw", 0));
            let done: Arc<Vec<AtomicU64>> = Arc::new((0..NLOCKS).map(|_| AtomicU64::new(0)).collect());
            let rw_done = Arc::new(AtomicU64::new(0));
            let bad = Arc::new(AtomicUsize::new(0));
            let hs: Vec<_> = (0..nthreads)
                .map(|i| {
                    let (locks, rwl, done, rw_done, bad) =
                        (locks.clone(), rwl.clone(), done.clone(), rw_done.clone(), bad.clone());
                    let base = 20 + 10 * (i % 5) as u8;
                    sched.spawn(
                        &format!("many{i}"),
                        pri(base),
                        Some(i % ncpus),
                        checked(move || {
                            let end = HostMachine::now_ns() + CONTENTION_NS;
                            let mut n = 0u64;
                            let mut x = i as u64 * 7919 + 1;
                            while n < MIN_PASSES || HostMachine::now_ns() < end {
                                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                                let r = (x >> 33) as usize;
                                if r.is_multiple_of(5) {
                                    if r.is_multiple_of(2) {
                                        let mut g = rwl.write();
                                        let v = *g;
                                        HostMachine::poll_interrupts();
                                        *g = v + 1;
                                        drop(g);
                                        rw_done.fetch_add(1, Ordering::Relaxed);
                                    } else {
                                        let g = rwl.read();
                                        let v = *g;
                                        HostMachine::poll_interrupts();
                                        if *g != v {
                                            bad.fetch_add(1, Ordering::Relaxed);
                                        }
                                    }
                                } else {
                                    let a = r % NLOCKS;
                                    let b = (a + 1 + (r / NLOCKS) % (NLOCKS - 1)) % NLOCKS;
                                    let (a, b) = (a.min(b), a.max(b));
                                    let mut ga = locks[a].lock();
                                    let va = *ga;
                                    HostMachine::poll_interrupts();
                                    let mut gb = locks[b].lock();
                                    let vb = *gb;
                                    HostMachine::poll_interrupts();
                                    *gb = vb + 1;
                                    *ga = va + 1;
                                    drop(gb);
                                    drop(ga);
                                    done[a].fetch_add(1, Ordering::Relaxed);
                                    done[b].fetch_add(1, Ordering::Relaxed);
                                }
                                // Holding nothing: no lender, and a turnstile in hand.
                                let me = sched.current();
                                if me.priority().get() != base || !me.ext().has_turnstile() {
                                    bad.fetch_add(1, Ordering::Relaxed);
                                }
                                n += 1;
                            }
                        }),
                    )
                })
                .collect();
            for h in hs {
                h.join();
            }
            let counts: Vec<u64> = locks.iter().map(|m| *m.lock()).collect();
            let done: Vec<u64> = done.iter().map(|d| d.load(Ordering::Relaxed)).collect();
            let rw = *rwl.read();
            (counts, done, rw, rw_done.load(Ordering::Relaxed), bad.load(Ordering::Relaxed))
        });
        assert_eq!(counts, done, "{ncpus} CPUs: lost updates under the mutexes");
        assert_eq!(rw, rw_done, "{ncpus} CPUs: lost updates under the rwlock");
        assert_eq!(bad, 0, "{ncpus} CPUs: torn reads, or a thread left with a loan or without a turnstile");
        let (m, r) = (lockstat(&sys, "host many"), lockstat(&sys, "host many rw"));
        waited += m.block_ns + r.contended;
    }
    // Whether a given run blocks depends on where the clock preempts; over the runs it must.
    assert!(waited > 0, "no thread ever blocked on a mutex's turnstile or waited for the rwlock");
}

/// The checker (policy `Record`) reports a lock-order reversal naming both locks, and lets
/// the acquisition happen.
#[test]
fn lock_order_reversal_reported() {
    for ncpus in CPUS {
        let sys = HostSystem::boot(ncpus);
        sys.locks.witness.set_checking(true);
        sys.locks.witness.set_policy(Policy::Record);
        let (clean, v) = sys.run_timeout(BODY_TIMEOUT, |_| {
            let w = &host_machine::HostEnv::sync().witness;
            let a: Mutex<u32> = Mutex::new_adaptive("host order A", 0);
            let b: Mutex<u32> = Mutex::new_adaptive("host order B", 0);
            {
                let _ga = a.lock();
                let _gb = b.lock();
            }
            let clean = w.take_violation::<HostMachine>();
            {
                let gb = b.lock();
                let ga = a.lock();
                assert!(gb.is_held() && ga.is_held(), "Record refused an order reversal");
            }
            (clean, w.take_violation::<HostMachine>())
        });
        assert_eq!(clean, None, "{ncpus} CPUs: A then B reported");
        let v = v.unwrap_or_else(|| panic!("{ncpus} CPUs: B then A not reported"));
        assert_eq!(v, Violation::OrderReversal { first: "host order B", second: "host order A" });
        let msg = v.to_string();
        assert!(msg.contains("host order A") && msg.contains("host order B"), "{msg}");
    }
}
