//! Priorities: a more urgent thread made runnable runs at once (on this CPU, or on another
//! through the reschedule IPI); a less urgent one waits; equal ones share by time slice.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use host_machine::{checked, spin_until, Event, HostMachine, HostSystem};
use machine::Machine;
use sched::{Priority, ThreadState};

fn pri(p: u8) -> Priority {
    Priority::new(p).unwrap()
}

type Log = Arc<Mutex<Vec<&'static str>>>;

fn log(l: &Log, s: &'static str) {
    l.lock().unwrap().push(s);
}

/// One CPU: a low-priority thread sets the event a high-priority thread sleeps on. The high
/// thread must run inside `set` (the wakeup's preemption check), before the low thread's
/// next statement.
#[test]
fn wakeup_of_higher_priority_runs_before_waker_continues() {
    let sys = HostSystem::boot(1);
    let (order, consumed) = sys.run(|sched| {
        let l: Log = Arc::new(Mutex::new(Vec::new()));
        let ev = Arc::new(Event::new(sched));
        let consumed = Arc::new(AtomicBool::new(false));
        let high = {
            let (l, ev, consumed) = (l.clone(), ev.clone(), consumed.clone());
            // More urgent than "main": runs at once, and is asleep when spawn returns.
            sched.spawn(
                "high",
                pri(50),
                None,
                checked(move || {
                    log(&l, "high waits");
                    let ok = ev.wait_deadline(HostMachine::now_ns() + 5_000_000_000);
                    consumed.store(ok, Ordering::SeqCst);
                    log(&l, "high runs");
                }),
            )
        };
        let low = {
            let (l, ev) = (l.clone(), ev.clone());
            // Less urgent than "main": runs once main blocks in join.
            sched.spawn(
                "low",
                pri(10),
                None,
                checked(move || {
                    log(&l, "low sets");
                    ev.set();
                    log(&l, "low continues");
                }),
            )
        };
        high.join();
        low.join();
        let order = l.lock().unwrap().clone();
        (order, consumed.load(Ordering::SeqCst))
    });
    assert!(consumed, "the high thread's wait timed out");
    assert_eq!(order, ["high waits", "low sets", "high runs", "low continues"]);
}

/// One CPU: a more urgent busy thread keeps the CPU through its clock ticks; the less urgent
/// threads (main and "low") run only after it is done.
#[test]
fn higher_priority_busy_thread_is_not_preempted_by_lower() {
    let sys = HostSystem::boot(1);
    let order = sys.run(|sched| {
        let l: Log = Arc::new(Mutex::new(Vec::new()));
        let low = {
            let l = l.clone();
            sched.spawn("low", pri(20), None, checked(move || log(&l, "low")))
        };
        let hog = {
            let l = l.clone();
            sched.spawn(
                "hog",
                pri(40),
                None,
                checked(move || {
                    log(&l, "hog starts");
                    // Ten clock ticks' worth, with interrupt points all along.
                    spin_until(10 * host_machine::TICK_NS, || false);
                    log(&l, "hog ends");
                }),
            )
        };
        log(&l, "main");
        hog.join();
        low.join();
        let v = l.lock().unwrap().clone();
        v
    });
    assert_eq!(order, ["hog starts", "hog ends", "main", "low"]);
}

/// Two CPUs: a low-priority thread spins on CPU 1 (with interrupt points); a high-priority
/// thread bound to CPU 1 sleeps on an event. CPU 0 sets the event: the high thread must run
/// on CPU 1 while the low one is still spinning, woken there by a reschedule IPI.
#[test]
fn wakeup_on_other_cpu_preempts_through_ipi() {
    let sys = HostSystem::boot(2);
    let r = sys.run(|sched| {
        sched.bind_current(Some(0));
        let stop = Arc::new(AtomicBool::new(false));
        let spins = Arc::new(AtomicU64::new(0));
        let low = {
            let (stop, spins) = (stop.clone(), spins.clone());
            sched.spawn(
                "hog-low",
                pri(10),
                Some(1),
                checked(move || {
                    while !stop.load(Ordering::SeqCst) {
                        spins.fetch_add(1, Ordering::SeqCst);
                        HostMachine::poll_interrupts();
                    }
                }),
            )
        };
        let ev = Arc::new(Event::new(sched));
        let ran_cpu = Arc::new(AtomicUsize::new(usize::MAX));
        let spins_when_ran = Arc::new(AtomicU64::new(0));
        let hog_stopped = Arc::new(AtomicBool::new(false));
        let high = {
            let (ev, ran_cpu, spins, spins_when_ran, stop, hog_stopped) = (
                ev.clone(),
                ran_cpu.clone(),
                spins.clone(),
                spins_when_ran.clone(),
                stop.clone(),
                hog_stopped.clone(),
            );
            sched.spawn(
                "high",
                pri(60),
                Some(1),
                checked(move || {
                    if ev.wait_deadline(HostMachine::now_ns() + 5_000_000_000) {
                        // Read `stop` before publishing `ran_cpu`: main sets `stop` only after
                        // it has seen `ran_cpu`, so this load shows whether the hog was still
                        // running (preempted, not finished) when the high thread ran. Reading
                        // it after the store raced main whenever the host descheduled this
                        // OS thread between the two (seen in CI on 2 loaded cores).
                        hog_stopped.store(stop.load(Ordering::SeqCst), Ordering::SeqCst);
                        spins_when_ran.store(spins.load(Ordering::SeqCst), Ordering::SeqCst);
                        ran_cpu.store(sched.cpu_index(), Ordering::SeqCst);
                    }
                }),
            )
        };
        // Wait until high sleeps and the hog spins.
        let asleep = spin_until(5_000_000_000, || high.thread().state() == ThreadState::Sleeping);
        let s0 = spins.load(Ordering::SeqCst);
        let spinning = spin_until(5_000_000_000, || spins.load(Ordering::SeqCst) > s0 + 100);
        let ipis0 = HostMachine::ipis_taken(1);
        let s1 = spins.load(Ordering::SeqCst);
        ev.set();
        let ran = spin_until(5_000_000_000, || ran_cpu.load(Ordering::SeqCst) != usize::MAX);
        // The IPI is normally what preempted the hog; if a clock tick on CPU 1 won the race,
        // the IPI still arrives right after.
        spin_until(1_000_000_000, || HostMachine::ipis_taken(1) > ipis0);
        let ipis = HostMachine::ipis_taken(1) - ipis0;
        stop.store(true, Ordering::SeqCst);
        high.join();
        low.join();
        (
            asleep,
            spinning,
            ran,
            ran_cpu.load(Ordering::SeqCst),
            ipis,
            s1,
            spins_when_ran.load(Ordering::SeqCst),
            hog_stopped.load(Ordering::SeqCst),
        )
    });
    let (asleep, spinning, ran, ran_cpu, ipis, s1, spins_when_ran, hog_stopped) = r;
    assert!(asleep, "the high thread never went to sleep");
    assert!(spinning, "the hog never ran");
    assert!(ran, "the high thread did not run within 5 s of the wakeup");
    assert_eq!(ran_cpu, 1, "the high thread ran on the wrong CPU");
    // The hog had not been told to stop: it was preempted, not finished.
    assert!(!hog_stopped, "the hog had stopped before the high thread ran");
    assert!(ipis >= 1, "no reschedule IPI reached CPU 1");
    assert!(spins_when_ran >= s1, "spin counter went backwards?");
}

/// One CPU: three equal-priority busy threads all get the CPU again and again (time slices
/// of `TIMESLICE_TICKS` clock ticks); each spins until every one of them has been switched
/// in `TURNS` times. Without round-robin the first one spins alone until the deadline.
#[test]
fn equal_priority_threads_share_by_time_slice() {
    const K: usize = 3;
    const TURNS: u64 = 4;
    let sys = HostSystem::boot(1);
    let (counts, turns, slice_ticks) = sys.run(|sched| {
        let counters: Arc<[AtomicU64; K]> = Arc::new([const { AtomicU64::new(0) }; K]);
        let turns: Arc<[AtomicU64; K]> = Arc::new([const { AtomicU64::new(0) }; K]);
        let deadline = HostMachine::now_ns() + 5_000_000_000;
        let t0 = sched.cpu_stats(0).ticks;
        let hs: Vec<_> = (0..K)
            .map(|i| {
                let (c, turns) = (counters.clone(), turns.clone());
                sched.spawn(
                    "rr-hog",
                    pri(20),
                    None,
                    checked(move || {
                        while turns.iter().any(|t| t.load(Ordering::SeqCst) < TURNS)
                            && HostMachine::now_ns() < deadline
                        {
                            turns[i].store(sched.current().switch_count(), Ordering::SeqCst);
                            c[i].fetch_add(1, Ordering::Relaxed);
                            HostMachine::poll_interrupts();
                        }
                    }),
                )
            })
            .collect();
        for h in hs {
            h.join();
        }
        let ticks = sched.cpu_stats(0).ticks - t0;
        let counts: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let turns: Vec<u64> = turns.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        (counts, turns, ticks)
    });
    assert!(
        turns.iter().all(|&t| t >= TURNS),
        "no round-robin: turns {turns:?}, iterations {counts:?}, {slice_ticks} ticks"
    );
    assert!(counts.iter().all(|&c| c > 0), "a hog starved: {counts:?}");
}
