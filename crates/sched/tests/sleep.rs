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

/// Timed sleeps are kept per CPU (FreeBSD's per-CPU callouts): a CPU's clock is armed only
/// for the deadlines of threads that went to sleep on it, so with one sleeper per CPU each
/// CPU sees its own deadline and no other (a global list made every CPU take a clock
/// interrupt for every deadline in the system: the 8-CPU torture stalls of
/// docs/logs/torture-stalls-smp8-2026-12-06.txt). A sleeper woken early from another CPU
/// takes its entry out of its CPU's list, and that CPU's next deadline goes with it (no
/// clock interrupt left armed for a sleep that is over).
/// What a CPU's clock is armed for, per CPU (read on that CPU).
type Seen = Arc<std::sync::Mutex<Vec<(usize, Option<u64>)>>>;
/// Per woken sleeper: its CPU, whether it was woken (not timed out), its CPU's deadline after.
type After = Arc<std::sync::Mutex<Vec<(usize, bool, Option<u64>)>>>;

fn timed_sleeps_are_per_cpu(ncpus: usize) {
    let sys = HostSystem::boot(ncpus);
    let report = sys.run(move |sched| {
        sched.bind_current(Some(0));
        let base = HostMachine::now_ns() + 2_000_000_000;
        let deadline = move |cpu: usize| base + cpu as u64 * 1_000_000;
        let evs: Arc<Vec<Event>> = Arc::new((0..ncpus).map(|_| Event::new(sched)).collect());
        let after: After = Arc::default();
        let sleepers: Vec<_> = (1..ncpus)
            .map(|cpu| {
                let (evs, after) = (evs.clone(), after.clone());
                sched.spawn(
                    "sleeper",
                    sched::Priority::KTHREAD,
                    Some(cpu),
                    host_machine::checked(move || {
                        let woken = evs[cpu].wait_deadline(deadline(cpu));
                        // Back on its CPU: that CPU's list must have no deadline left.
                        after.lock().unwrap().push((cpu, woken, sched.next_timeout_here_ns()));
                    }),
                )
            })
            .collect();
        // Every sleeper committed: the earliest deadline in the system is CPU 1's.
        let all_asleep =
            host_machine::spin_until(5_000_000_000, || sched.next_timeout_ns() == Some(deadline(1)));
        assert!(
            all_asleep,
            "the sleepers did not go to sleep: next_timeout_ns {:?}",
            sched.next_timeout_ns()
        );
        // What each CPU's clock is armed for, read on that CPU.
        let seen: Seen = Arc::default();
        let probes: Vec<_> = (0..ncpus)
            .map(|cpu| {
                let seen = seen.clone();
                sched.spawn(
                    "probe",
                    sched::Priority::KTHREAD,
                    Some(cpu),
                    host_machine::checked(move || {
                        seen.lock().unwrap().push((cpu, sched.next_timeout_here_ns()))
                    }),
                )
            })
            .collect();
        for p in probes {
            p.join();
        }
        // Woken early, from CPU 0, all at once.
        for ev in evs.iter().skip(1) {
            ev.set();
        }
        for s in sleepers {
            s.join();
        }
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        let mut after = after.lock().unwrap().clone();
        after.sort();
        (seen, after, sched.next_timeout_ns(), deadline(1))
    });
    let (seen, after, left, _) = report;
    let base = report.3 - 1_000_000;
    for (cpu, next) in seen {
        let want = (cpu > 0).then(|| base + cpu as u64 * 1_000_000);
        assert_eq!(next, want, "CPU {cpu} armed for {next:?}, its own sleeper's deadline is {want:?}");
    }
    assert_eq!(after.len(), ncpus - 1);
    for (cpu, woken, next) in after {
        assert!(woken, "CPU {cpu}'s sleeper timed out instead of being woken");
        assert_eq!(next, None, "CPU {cpu} still armed for a sleep that was woken early");
    }
    assert_eq!(left, None, "a deadline left in some CPU's list after every sleeper woke");
}

#[test]
fn timed_sleeps_are_per_cpu_2() {
    timed_sleeps_are_per_cpu(2);
}

#[test]
fn timed_sleeps_are_per_cpu_4() {
    timed_sleeps_are_per_cpu(4);
}
