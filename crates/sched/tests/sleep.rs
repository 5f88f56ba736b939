//! Timed sleep: `sleep_ns` and `Event::wait_deadline` timeouts, woken by the clock tick.

use std::sync::Arc;

use host_machine::{Event, HostMachine, HostSystem};
use machine::Machine;

#[test]
fn sleep_ns_sleeps_at_least_that_long() {
    let sys = HostSystem::boot(2);
    let slept = sys.run(|sched| {
        [0u64, 100_000, 3_000_000, 10_000_000]
            .iter()
            .map(|&ns| {
                let t0 = HostMachine::now_ns();
                sched.sleep_ns(ns);
                (ns, HostMachine::now_ns() - t0)
            })
            .collect::<Vec<_>>()
    });
    for (ns, took) in slept {
        assert!(took >= ns, "sleep_ns({ns}) returned after {took} ns");
        assert!(took < ns + 1_000_000_000, "sleep_ns({ns}) took {took} ns");
    }
}

#[test]
fn event_wait_deadline_times_out_unless_set() {
    let sys = HostSystem::boot(2);
    let (timed_out, took, set_seen) = sys.run(|sched| {
        let ev = Arc::new(Event::new(sched));
        let t0 = HostMachine::now_ns();
        let got = ev.wait_deadline(t0 + 5_000_000);
        let took = HostMachine::now_ns() - t0;
        // Set before the wait: consumed at once, and only once.
        ev.set();
        let first = ev.wait_deadline(HostMachine::now_ns() + 5_000_000_000);
        let second = ev.wait_deadline(HostMachine::now_ns() + 2_000_000);
        (!got, took, (first, second))
    });
    assert!(timed_out, "wait_deadline on an unset event returned true");
    assert!(took >= 5_000_000, "timed out early, after {took} ns");
    assert!(took < 1_000_000_000, "timed out late, after {took} ns");
    assert_eq!(set_seen, (true, false), "an auto-reset event must be consumed exactly once");
}
