//! `RunQueue` on its own: FIFO within a priority, most urgent first, `pop_highest_where`
//! skipping ineligible threads, and the priority bitmap staying right as threads leave.
//!
//! The threads are real ones made by `spawn` on a one-CPU host system and joined (so they
//! are dead and on no run queue); the queue under test is a private one, not a CPU's.

use std::sync::Arc;

use host_machine::{HostSystem, RunQueue, Sched, Thread};
use sched::Priority;

/// Spawns and joins one thread per `(priority, bound)`; returns them in that order.
fn threads(sched: &'static Sched, spec: &[(u8, Option<usize>)]) -> Vec<Arc<Thread>> {
    spec.iter()
        .map(|&(p, bound)| {
            let h = sched.spawn("rq-item", Priority::new(p).unwrap(), bound, || {});
            let t = h.thread().clone();
            h.join();
            t
        })
        .collect()
}

fn ids(v: &[Arc<Thread>]) -> Vec<u64> {
    v.iter().map(|t| t.id()).collect()
}

fn drain(rq: &mut RunQueue) -> Vec<u64> {
    let mut out = Vec::new();
    while let Some(t) = rq.pop_highest() {
        out.push(t.id());
    }
    out
}

fn on_system<T: Send + 'static>(f: impl FnOnce(&'static Sched) -> T + Send + 'static) -> T {
    HostSystem::boot(1).run(f)
}

#[test]
fn fifo_within_a_priority() {
    on_system(|sched| {
        let ts = threads(sched, &[(32, None); 5]);
        let mut rq = RunQueue::new();
        assert!(rq.is_empty());
        assert_eq!(rq.highest(), None);
        for t in &ts {
            rq.push_back(t.clone());
        }
        assert_eq!(rq.len(), 5);
        assert_eq!(rq.highest(), Priority::new(32));
        assert_eq!(drain(&mut rq), ids(&ts), "not first-in first-out");
        assert!(rq.is_empty());
        assert_eq!(rq.highest(), None);
        // Round-robin: a popped thread pushed back goes behind the others.
        for t in &ts[..3] {
            rq.push_back(t.clone());
        }
        let first = rq.pop_highest().unwrap();
        rq.push_back(first);
        assert_eq!(drain(&mut rq), vec![ts[1].id(), ts[2].id(), ts[0].id()]);
    });
}

#[test]
fn highest_priority_first() {
    on_system(|sched| {
        // Across both bitmap words (0..64 and 64..128), in scrambled order.
        let ts = threads(
            sched,
            &[(10, None), (100, None), (63, None), (64, None), (1, None), (127, None), (63, None)],
        );
        let mut rq = RunQueue::new();
        for t in &ts {
            rq.push_back(t.clone());
        }
        assert_eq!(rq.len(), 7);
        assert_eq!(rq.highest(), Priority::new(127));
        let mut got = Vec::new();
        while let Some(p) = rq.highest() {
            let t = rq.pop_highest().unwrap();
            assert_eq!(t.priority(), p, "pop_highest did not take from highest()");
            got.push(t.id());
            assert_eq!(rq.len(), 7 - got.len());
        }
        let want: Vec<u64> = [5, 1, 3, 2, 6, 0, 4].iter().map(|&i| ts[i].id()).collect();
        assert_eq!(got, want, "not most urgent first (FIFO among equals)");
        assert!(rq.is_empty());
        assert!(rq.pop_highest().is_none());
    });
}

#[test]
fn pop_highest_where_skips_ineligible() {
    on_system(|sched| {
        // 0: bound 90; 1: unbound 50; 2: bound 50; 3: unbound 50; 4: bound 20; 5: unbound 5.
        let ts =
            threads(sched, &[(90, Some(0)), (50, None), (50, Some(0)), (50, None), (20, Some(0)), (5, None)]);
        let mut rq = RunQueue::new();
        for t in &ts {
            rq.push_back(t.clone());
        }
        let unbound = |t: &Thread| t.bound_cpu().is_none();
        let mut got = Vec::new();
        while let Some(t) = rq.pop_highest_where(unbound) {
            assert!(t.bound_cpu().is_none(), "took an ineligible thread");
            got.push(t.id());
        }
        assert_eq!(got, vec![ts[1].id(), ts[3].id(), ts[5].id()]);
        // The skipped threads are all still there, in order, and the bitmap knows their levels.
        assert_eq!(rq.len(), 3);
        assert_eq!(rq.highest(), Priority::new(90));
        assert!(rq.pop_highest_where(|_| false).is_none());
        assert_eq!(rq.len(), 3);
        // Skipping within one level: take the second of two eligible-by-id threads at 50.
        rq.push_back(ts[1].clone());
        let want = ts[1].id();
        let t = rq.pop_highest_where(|t| t.id() == want).unwrap();
        assert_eq!(t.id(), want);
        assert_eq!(drain(&mut rq), vec![ts[0].id(), ts[2].id(), ts[4].id()]);
    });
}

#[test]
fn bitmap_consistent_after_removals() {
    on_system(|sched| {
        let ts = threads(sched, &[(127, None), (64, None), (63, None), (63, None), (1, None), (64, None)]);
        let mut rq = RunQueue::new();
        for t in &ts {
            rq.push_back(t.clone());
        }
        let remove = |rq: &mut RunQueue, i: usize| {
            let t = rq.remove(&ts[i]).unwrap_or_else(|| panic!("thread {i} not found"));
            assert!(Arc::ptr_eq(&t, &ts[i]));
        };
        remove(&mut rq, 0);
        assert_eq!(rq.highest(), Priority::new(64), "level 127 still marked after its only thread left");
        remove(&mut rq, 5);
        assert_eq!(rq.highest(), Priority::new(64), "level 64 lost while a thread is still queued there");
        remove(&mut rq, 1);
        assert_eq!(rq.highest(), Priority::new(63), "level 64 still marked (word boundary)");
        assert!(rq.remove(&ts[1]).is_none(), "removed a thread twice");
        assert!(rq.remove(&ts[0]).is_none());
        assert_eq!(rq.len(), 3);
        remove(&mut rq, 2);
        assert_eq!(rq.highest(), Priority::new(63));
        let t = rq.pop_highest().unwrap();
        assert_eq!(t.id(), ts[3].id());
        assert_eq!(rq.highest(), Priority::new(1), "level 63 still marked after pop");
        remove(&mut rq, 4);
        assert_eq!(rq.highest(), None);
        assert!(rq.is_empty());
        assert!(rq.pop_highest().is_none());
        assert!(rq.pop_highest_where(|_| true).is_none());
        // Reusable after emptying: a removed thread can be queued again.
        rq.push_back(ts[0].clone());
        rq.push_back(ts[4].clone());
        assert_eq!(rq.highest(), Priority::new(127));
        assert_eq!(drain(&mut rq), vec![ts[0].id(), ts[4].id()]);
    });
}

#[test]
fn rotate_is_pop_then_push() {
    on_system(|sched| {
        let ts = threads(sched, &[(32, None), (32, None), (32, None), (40, None), (32, None)]);
        let p32 = Priority::new(32).unwrap();
        // A FIFO of one: the yielding thread takes the taken one's place.
        let mut rq = RunQueue::new();
        rq.push_back(ts[0].clone());
        let got = rq.rotate(p32, ts[1].clone());
        assert_eq!(got.id(), ts[0].id());
        assert_eq!(rq.len(), 1);
        assert_eq!(rq.highest(), Some(p32));
        // The taken thread is unlinked: it can be queued again.
        rq.push_back(got);
        assert_eq!(drain(&mut rq), vec![ts[1].id(), ts[0].id()]);
        // A longer FIFO beside another priority: head out, the thread behind the last.
        for t in &ts[..3] {
            rq.push_back(t.clone());
        }
        rq.push_back(ts[3].clone());
        let got = rq.rotate(p32, ts[4].clone());
        assert_eq!(got.id(), ts[0].id());
        assert_eq!(rq.len(), 4);
        assert_eq!(drain(&mut rq), vec![ts[3].id(), ts[1].id(), ts[2].id(), ts[4].id()]);
    });
}

#[test]
#[should_panic(expected = "queued twice")]
fn rotate_refuses_a_queued_thread() {
    on_system(|sched| {
        let ts = threads(sched, &[(32, None), (32, None)]);
        let mut rq = RunQueue::new();
        rq.push_back(ts[0].clone());
        rq.push_back(ts[1].clone());
        let _ = rq.rotate(Priority::new(32).unwrap(), ts[1].clone());
    });
}
