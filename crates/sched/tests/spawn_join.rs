//! Many short threads, placed by the scheduler across the CPUs, all run exactly once and are
//! joined; the live-thread count comes back to where it was.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use host_machine::{checked, spin_until, HostMachine, HostSystem};
use sched::{Priority, ThreadState};

/// Fewer under Miri, which runs every thread interpreted.
const N: usize = if cfg!(miri) { 10 } else { 200 };
/// Longer than a spawn takes, so that runnable threads pile up and every CPU gets some.
const WORK_NS: u64 = if cfg!(miri) { 10_000 } else { 1_000_000 };

fn spawn_join(ncpus: usize) {
    let sys = HostSystem::boot(ncpus);
    let (runs, per_cpu, live0, live_after) = sys.run(move |sched| {
        let live0 = sched.live_threads();
        let runs: Arc<Vec<AtomicUsize>> = Arc::new((0..N).map(|_| AtomicUsize::new(0)).collect());
        let per_cpu: Arc<Vec<AtomicUsize>> = Arc::new((0..ncpus).map(|_| AtomicUsize::new(0)).collect());
        let mut hs = Vec::with_capacity(N);
        for i in 0..N {
            let (runs, per_cpu) = (runs.clone(), per_cpu.clone());
            // Alternate priorities a little so the queues hold more than one level.
            let pri = Priority::new(30 + (i % 3) as u8).unwrap();
            hs.push(sched.spawn(
                "short",
                pri,
                None,
                checked(move || {
                    runs[i].fetch_add(1, Ordering::SeqCst);
                    per_cpu[sched.cpu_index()].fetch_add(1, Ordering::SeqCst);
                    // A little work, so that threads overlap and the other CPUs get some.
                    spin_until(WORK_NS, || false);
                    if i % 2 == 0 {
                        sched.yield_now();
                    }
                }),
            ));
        }
        assert!(sched.live_threads() <= live0 + N);
        for h in hs {
            h.join();
        }
        let live_after = sched.live_threads();
        let runs: Vec<usize> = runs.iter().map(|r| r.load(Ordering::SeqCst)).collect();
        let per_cpu: Vec<usize> = per_cpu.iter().map(|r| r.load(Ordering::SeqCst)).collect();
        (runs, per_cpu, live0, live_after)
    });
    for (i, &r) in runs.iter().enumerate() {
        assert_eq!(r, 1, "thread {i} ran {r} times (ncpus {ncpus})");
    }
    assert_eq!(per_cpu.iter().sum::<usize>(), N);
    assert_eq!(live_after, live0, "live_threads did not come back after joining all (ncpus {ncpus})");
    if ncpus > 1 {
        let used = per_cpu.iter().filter(|&&n| n > 0).count();
        assert!(used > 1, "all {N} threads ran on one CPU: {per_cpu:?}");
    }
}

#[test]
fn spawn_join_200_on_1_cpu() {
    spawn_join(1);
}

#[test]
fn spawn_join_200_on_2_cpus() {
    spawn_join(2);
}

#[test]
fn spawn_join_200_on_4_cpus() {
    spawn_join(4);
}

/// After `join` returns, the joined thread has exited as far as every observer can tell:
/// `live_threads` no longer counts it and its state is `Dead`. The child runs on another
/// CPU, so its exit path races with the joiner being woken; busy threads on two more CPUs
/// oversubscribe the host's cores so that the child's OS thread is sometimes descheduled in
/// the middle of `exit`, which widens the window.
#[test]
fn join_sees_exit_completed() {
    const ROUNDS: usize = if cfg!(miri) { 5 } else { 1000 };
    let sys = HostSystem::boot(if cfg!(miri) { 2 } else { 4 });
    sys.run(|sched| {
        sched.bind_current(Some(0));
        let stop = Arc::new(AtomicBool::new(false));
        // Not under Miri: it explores the interleavings itself, and interpreting two spinning
        // threads would only slow it down.
        let hog_cpus = if cfg!(miri) { 2..2 } else { 2..4 };
        let hogs: Vec<_> = hog_cpus
            .map(|cpu| {
                let stop = stop.clone();
                sched.spawn("hog", Priority::KTHREAD, Some(cpu), move || {
                    while !stop.load(Ordering::Relaxed) {
                        HostMachine::poll_interrupts();
                    }
                })
            })
            .collect();
        let live0 = sched.live_threads();
        let mut bad = Vec::new();
        for round in 0..ROUNDS {
            let h = sched.spawn("child", Priority::KTHREAD, Some(1), || {});
            let t = h.thread().clone();
            h.join();
            let (live, state) = (sched.live_threads(), t.state());
            if live != live0 || state != ThreadState::Dead {
                bad.push((round, live, state));
            }
        }
        stop.store(true, Ordering::Relaxed);
        for h in hogs {
            h.join();
        }
        assert!(
            bad.is_empty(),
            "joined thread not fully exited (round, live_threads, state), live0 {live0}: {bad:?}"
        );
    });
}
