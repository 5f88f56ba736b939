//! Two threads hand a token back and forth by sleeping on `Event`s, 10,000 rounds (50 under Miri). A lost
//! wakeup leaves a waiter asleep with the token its own: every wait has a deadline, and a
//! timeout with the token not handed over fails the test naming the round.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use host_machine::{checked, Event, HostMachine, HostSystem};
use machine::Machine;
use sched::Priority;

/// Fewer under Miri, which interprets every thread.
const ROUNDS: u64 = if cfg!(miri) { 50 } else { 10_000 };
/// Generous: a round takes microseconds.
const WAIT_NS: u64 = 2_000_000_000;
const NONE: u64 = u64::MAX;

/// Side 0 is bound to `cpus.0`, side 1 to `cpus.1`.
fn pingpong(ncpus: usize, cpus: (usize, usize)) {
    let sys = HostSystem::boot(ncpus);
    let (lost, wrong_cpu, turn, switches) = sys.run(move |sched| {
        let s0 = sched.cpu_stats(cpus.0).switches + sched.cpu_stats(cpus.1).switches;
        let turn = Arc::new(AtomicU64::new(0));
        let evs: Arc<[Event; 2]> = Arc::new([Event::new(sched), Event::new(sched)]);
        let lost = Arc::new(AtomicU64::new(NONE));
        let wrong_cpu = Arc::new(AtomicU64::new(NONE));
        let mut hs = Vec::new();
        for side in 0..2u64 {
            let (turn, evs, lost, wrong_cpu) = (turn.clone(), evs.clone(), lost.clone(), wrong_cpu.clone());
            let cpu = if side == 0 { cpus.0 } else { cpus.1 };
            hs.push(sched.spawn(
                "pingpong",
                Priority::KTHREAD,
                Some(cpu),
                checked(move || {
                    let me = side as usize;
                    for r in 0..ROUNDS {
                        let mine = 2 * r + side;
                        while turn.load(Ordering::SeqCst) != mine {
                            if lost.load(Ordering::SeqCst) != NONE {
                                return; // the other side failed; stop
                            }
                            let deadline = HostMachine::now_ns() + WAIT_NS;
                            if !evs[me].wait_deadline(deadline) && turn.load(Ordering::SeqCst) != mine {
                                // Timed out and the token was never handed to us.
                                lost.store(mine, Ordering::SeqCst);
                                evs[1 - me].set();
                                return;
                            }
                        }
                        if sched.cpu_index() != cpu {
                            wrong_cpu.store(mine, Ordering::SeqCst);
                        }
                        turn.store(mine + 1, Ordering::SeqCst);
                        evs[1 - me].set();
                    }
                }),
            ));
        }
        for h in hs {
            h.join();
        }
        let s1 = sched.cpu_stats(cpus.0).switches + sched.cpu_stats(cpus.1).switches;
        (lost.load(Ordering::SeqCst), wrong_cpu.load(Ordering::SeqCst), turn.load(Ordering::SeqCst), s1 - s0)
    });
    assert_eq!(lost, NONE, "lost wakeup: the waiter of turn {lost} (round {}) timed out", lost / 2);
    assert_eq!(wrong_cpu, NONE, "a bound pingpong thread ran on another CPU at turn {wrong_cpu}");
    assert_eq!(turn, 2 * ROUNDS, "not every round was played");
    // On one CPU the waits really sleep: a side that handed the token over waits for the next
    // one, and the other side can only run once it has switched away — at least one switch
    // per round. On several CPUs how often the flag is already set when a side comes to wait
    // depends on the host's own scheduling (a fresh-clone run saw 181 switches in 10,000
    // rounds on 2 CPUs, against 1,000 expected by an earlier bound), so nothing is asserted
    // there about the mix of slow and fast paths.
    if cpus.0 == cpus.1 {
        assert!(switches >= ROUNDS, "only {switches} context switches in {ROUNDS} rounds on one CPU");
    }
}

#[test]
fn pingpong_1_cpu() {
    pingpong(1, (0, 0));
}

#[test]
fn pingpong_2_cpus() {
    pingpong(2, (0, 1));
}

#[test]
fn pingpong_4_cpus() {
    pingpong(4, (1, 3));
}
