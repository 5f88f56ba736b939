//! Binding: a thread spawned with `Some(cpu)` only ever runs on that CPU, through yields,
//! sleeps, event waits, preemption and other CPUs' work stealing; `bind_current` moves the
//! caller to the CPU it names.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use host_machine::{checked, spin_until, Event, HostMachine, HostSystem};
use machine::Machine;
use sched::Priority;

/// Fewer under Miri, which interprets every thread.
const ITERS: u64 = if cfg!(miri) { 50 } else { 300 };

fn bound_threads_stay(ncpus: usize) {
    let sys = HostSystem::boot(ncpus);
    let (checks, violations) = sys.run(move |sched| {
        let checks = Arc::new(AtomicU64::new(0));
        let violations: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        // Unbound busy threads on half as many CPUs: the load that makes CPUs preempt and
        // queue, while leaving CPUs idle now and then so that they steal (with a hog per
        // CPU, no CPU idles and a steal of a bound thread goes unnoticed).
        let hogs: Vec<_> = (0..ncpus / 2)
            .map(|_| {
                let stop = stop.clone();
                sched.spawn(
                    "hog",
                    Priority::KTHREAD,
                    None,
                    checked(move || {
                        while !stop.load(Ordering::SeqCst) {
                            spin_until(50_000, || false);
                            sched.yield_now();
                        }
                    }),
                )
            })
            .collect();
        let mut hs = Vec::new();
        for cpu in 0..ncpus {
            // Two bound threads per CPU that wake each other with events, plus sleeping,
            // yielding, spinning through ticks and preempt-disabled sections.
            let evs = Arc::new([Event::new(sched), Event::new(sched)]);
            for side in 0..2usize {
                let (checks, violations, evs) = (checks.clone(), violations.clone(), evs.clone());
                let p = if side == 0 { Priority::KTHREAD } else { Priority::new(40).unwrap() };
                hs.push(sched.spawn(
                    "bound",
                    p,
                    Some(cpu),
                    checked(move || {
                        let check = |what: &str, i: u64| {
                            checks.fetch_add(1, Ordering::Relaxed);
                            let seen = sched.cpu_index();
                            if seen != cpu {
                                violations.lock().unwrap().push(format!(
                                    "thread bound to CPU {cpu} ran on CPU {seen} (iteration {i}, after {what})"
                                ));
                            }
                        };
                        check("start", 0);
                        for i in 0..ITERS {
                            match i % 5 {
                                0 => sched.yield_now(),
                                1 => {
                                    spin_until(30_000, || false);
                                }
                                2 => {
                                    if i % 25 == 2 {
                                        sched.sleep_ns(200_000);
                                    }
                                }
                                3 => {
                                    evs[1 - side].set();
                                    evs[side].wait_deadline(HostMachine::now_ns() + 1_000_000);
                                }
                                _ => {
                                    sched.preempt_disable();
                                    check("preempt_disable", i);
                                    sched.preempt_enable();
                                }
                            }
                            check(["yield", "spin", "sleep", "event", "preempt_enable"][(i % 5) as usize], i);
                        }
                        evs[1 - side].set();
                    }),
                ));
            }
        }
        for h in hs {
            h.join();
        }
        stop.store(true, Ordering::SeqCst);
        for h in hogs {
            h.join();
        }
        let v = violations.lock().unwrap().clone();
        (checks.load(Ordering::Relaxed), v)
    });
    assert!(
        violations.is_empty(),
        "{} violations, first: {:?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
    // Per thread: one at the start, one per iteration, one more inside each preempt section.
    assert_eq!(checks, ncpus as u64 * 2 * (1 + ITERS + ITERS / 5), "checks missing");
}

#[test]
fn spawned_bound_threads_stay_on_1_cpu() {
    bound_threads_stay(1);
}

#[test]
fn spawned_bound_threads_stay_on_2_cpus() {
    bound_threads_stay(2);
}

#[test]
fn spawned_bound_threads_stay_on_4_cpus() {
    bound_threads_stay(4);
}

/// `bind_current(Some(c))` returns on CPU `c`, and the thread stays there through sleeps
/// and yields until it is unbound.
#[test]
fn bind_current_migrates_and_stays() {
    let sys = HostSystem::boot(4);
    let seen = sys.run(|sched| {
        let h = sched.spawn(
            "wanderer",
            Priority::KTHREAD,
            None,
            checked(move || {
                for (k, &c) in [3usize, 1, 0, 2, 2, 3, 0].iter().enumerate() {
                    sched.bind_current(Some(c));
                    assert_eq!(sched.cpu_index(), c, "step {k}: bind_current returned on the wrong CPU");
                    assert_eq!(sched.current().bound_cpu(), Some(c));
                    sched.yield_now();
                    sched.sleep_ns(100_000);
                    spin_until(50_000, || false);
                    assert_eq!(sched.cpu_index(), c, "step {k}: left CPU {c} while bound");
                }
                sched.bind_current(None);
                assert_eq!(sched.current().bound_cpu(), None);
            }),
        );
        let t = h.thread().clone();
        h.join();
        t.switch_count()
    });
    assert!(seen >= 7, "the wanderer was switched in only {seen} times");
}
