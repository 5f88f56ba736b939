//! Loom models of the interrupt framework's protocols, running the crate's own code
//! (`intr::protocol`, compiled with loom's atomics and cells under `--cfg loom`):
//!
//! * [`MaskCount`]: an arrival racing the last unmask is delivered or re-raised exactly once
//!   (the lost re-raise of a check-then-set `missed` flag cannot happen);
//! * [`RunGate`]: no handler starts after `close` returned and the gate was seen idle;
//! * [`PoolCore`]: queue, divorce, need and migration — every queued item runs exactly once,
//!   a divorced worker never clears its successor's claim, and no CPU is left with work and
//!   nobody to do it.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p ithreads-intr --test loom_protocols --release`
//! (`LOOM_MAX_PREEMPTIONS=3` is the default bound here; raise it for a longer search).
#![cfg(loom)]

use std::collections::HashSet;

use intr::protocol::{MaskCount, Next, PoolCore, RunGate, Worker, NO_OWNER};
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(f);
}

/// One queued instance holds the mask; an arrival races its unmask. Whatever the order, the
/// arrival is either delivered (it saw the source unmasked) or absorbed and re-raised by the
/// unmask — exactly one of the two.
#[test]
fn an_arrival_racing_the_last_unmask_is_never_lost() {
    model(|| {
        let m = Arc::new(MaskCount::new());
        assert!(m.mask());
        let m2 = m.clone();
        let arrival = thread::spawn(move || !m2.absorb());
        let u = m.unmask();
        let delivered = arrival.join().unwrap();
        assert!(u.last);
        assert_eq!(delivered as u32 + u.missed as u32, 1, "delivered {delivered}, re-raised {}", u.missed);
        assert_eq!(m.refs(), 0);
        assert!(!m.missed());
    });
}

/// Two instances hold the mask on two CPUs and unmask concurrently while an arrival comes:
/// only the last unmask re-raises, and only once.
#[test]
fn only_the_last_of_concurrent_unmasks_reraises() {
    model(|| {
        let m = Arc::new(MaskCount::new());
        assert!(m.mask());
        assert!(!m.mask());
        let (m2, m3) = (m.clone(), m.clone());
        let a = thread::spawn(move || m2.unmask());
        let arrival = thread::spawn(move || !m3.absorb());
        let b = m.unmask();
        let a = a.join().unwrap();
        let delivered = arrival.join().unwrap();
        assert_eq!(a.last as u32 + b.last as u32, 1, "exactly one last unmask");
        let reraised = a.missed as u32 + b.missed as u32;
        assert_eq!(delivered as u32 + reraised, 1);
    });
}

/// Disestablish: a handler instance tries to start while the gate is closed and waited for.
/// Once the closer has seen the gate idle, the handler is not running and never starts.
#[test]
fn no_handler_runs_after_the_gate_closed_and_drained() {
    model(|| {
        let g = Arc::new(RunGate::new());
        let running = Arc::new(AtomicBool::new(false));
        let after = Arc::new(AtomicBool::new(false));
        let (g2, r2, a2) = (g.clone(), running.clone(), after.clone());
        let handler = thread::spawn(move || {
            if g2.enter() {
                r2.store(true, Ordering::SeqCst);
                if a2.load(Ordering::SeqCst) {
                    panic!("a handler started after disestablish returned");
                }
                r2.store(false, Ordering::SeqCst);
                g2.exit();
            }
        });
        g.close();
        while !g.is_idle() {
            thread::yield_now();
        }
        assert!(!running.load(Ordering::SeqCst), "disestablish returned with the handler running");
        after.store(true, Ordering::SeqCst);
        handler.join().unwrap();
        assert!(!g.enter());
    });
}

/// A worker of the model pool.
#[derive(Clone)]
struct W(usize);

impl Worker for W {
    fn id(&self) -> usize {
        self.0
    }
}

type Core = PoolCore<u32, W, 2>;

/// What the model's workers ran.
struct Log {
    ran: Mutex<Vec<u32>>,
}

/// A worker that was handed `next` serves until it owns nothing, running what it takes;
/// `block_on` makes it "block" (divorce) when it runs that item.
fn work(
    core: &Core,
    me: &W,
    mut next: Next,
    log: &Log,
    block_on: Option<u32>,
    woken: &Mutex<Vec<(usize, W)>>,
) {
    loop {
        let cpu = match next {
            Next::Again(c) | Next::Migrate(c) => c,
            Next::Idle => return,
        };
        while let Some(item) = core.next(cpu, me) {
            log.ran.lock().unwrap().push(item);
            if Some(item) == block_on {
                let (divorced, fresh) = core.divorce(cpu, me.id());
                assert!(divorced, "the owner was not divorced");
                if let Some(cw) = fresh {
                    woken.lock().unwrap().push(cw);
                }
                // The divorced worker wakes up later: it must leave its successor alone.
                assert_ne!(core.owner(cpu), me.id());
            }
        }
        next = match core.release(cpu, me) {
            Some(n) => n,
            None => core.go_idle(me),
        };
    }
}

/// Runs the workers the protocol handed work to, until none is left (the model's scheduler:
/// what `Event::set` + the ithread loop do in the kernel).
fn run_woken(core: &Core, log: &Log, woken: &Mutex<Vec<(usize, W)>>) {
    loop {
        let Some((cpu, w)) = woken.lock().unwrap().pop() else { return };
        assert_eq!(core.owner(cpu), w.id(), "a woken worker does not own its CPU");
        work(core, &w, Next::Again(cpu), log, None, woken);
    }
}

/// Interrupts on two CPUs queue items while a worker serves and blocks in one of them (a
/// divorce): every item runs exactly once, and at the end no CPU holds work or an owner.
#[test]
fn pool_queue_and_divorce_run_everything_once() {
    model(|| {
        let core: Arc<Core> = Arc::new(PoolCore::new());
        let log = Arc::new(Log { ran: Mutex::new(Vec::new()) });
        let woken = Arc::new(Mutex::new(Vec::new()));
        // Two idle workers.
        for id in [1, 2] {
            assert_eq!(core.go_idle(&W(id)), Next::Idle);
        }
        // CPU 0's interrupt: item 10 (its handler will block).
        if let Some(cw) = core.enqueue(0, 10) {
            woken.lock().unwrap().push(cw);
        }
        let (c2, l2, k2) = (core.clone(), log.clone(), woken.clone());
        // The worker CPU 0 got, serving (and blocking in item 10).
        let first: (usize, W) = woken.lock().unwrap().pop().expect("an idle worker was assigned");
        let server = thread::spawn(move || {
            work(&c2, &first.1, Next::Again(first.0), &l2, Some(10), &k2);
        });
        // Meanwhile CPU 0 and CPU 1 take more interrupts.
        let (c3, k3) = (core.clone(), woken.clone());
        let intr = thread::spawn(move || {
            for (cpu, item) in [(0, 11), (1, 20)] {
                if let Some(cw) = c3.enqueue(cpu, item) {
                    k3.lock().unwrap().push(cw);
                }
            }
        });
        server.join().unwrap();
        intr.join().unwrap();
        run_woken(&core, &log, &woken);
        let ran = log.ran.lock().unwrap().clone();
        let set: HashSet<u32> = ran.iter().copied().collect();
        assert_eq!(set.len(), ran.len(), "an item ran twice: {ran:?}");
        assert_eq!(set, HashSet::from([10, 11, 20]), "not everything ran: {ran:?}");
        for cpu in 0..2 {
            assert_eq!(core.queued(cpu), 0);
            assert_eq!(core.owner(cpu), NO_OWNER, "CPU {cpu} left owned");
        }
    });
}

/// No idle worker: the CPU raises its need flag; the busy worker, going idle on another CPU,
/// migrates to it. However the two race, the item is run.
#[test]
fn a_cpu_in_need_is_served_by_the_next_worker_that_goes_idle() {
    model(|| {
        let core: Arc<Core> = Arc::new(PoolCore::new());
        let log = Arc::new(Log { ran: Mutex::new(Vec::new()) });
        let woken = Arc::new(Mutex::new(Vec::new()));
        // The only worker serves CPU 1.
        assert_eq!(core.go_idle(&W(1)), Next::Idle);
        let (_, w) = core.enqueue(1, 1).expect("assigned");
        let (c2, l2, k2) = (core.clone(), log.clone(), woken.clone());
        let server = thread::spawn(move || work(&c2, &w, Next::Again(1), &l2, None, &k2));
        // CPU 0's interrupt finds the pool empty (or the worker just back).
        let got = core.enqueue(0, 2);
        if let Some(cw) = got.clone() {
            woken.lock().unwrap().push(cw);
        }
        let got = got.map(|(c, w)| (c, w.0));
        server.join().unwrap();
        run_woken(&core, &log, &woken);
        let mut ran = log.ran.lock().unwrap().clone();
        ran.sort();
        assert_eq!(
            ran,
            [1, 2],
            "the CPU in need was forgotten: got {got:?}, owners {:?} queued {:?} needs {:?} idle {}",
            [core.owner(0), core.owner(1)],
            [core.queued(0), core.queued(1)],
            [core.needs(0), core.needs(1)],
            core.idle_count()
        );
        assert!(!core.needs(0));
    });
}

/// `hwi_sched` after a divorce: the requeued item gets an owner for its queue.
#[test]
fn a_requeue_after_divorce_gets_an_ithread() {
    model(|| {
        let core: Arc<Core> = Arc::new(PoolCore::new());
        let log = Arc::new(Log { ran: Mutex::new(Vec::new()) });
        let woken = Arc::new(Mutex::new(Vec::new()));
        for id in [1, 2] {
            assert_eq!(core.go_idle(&W(id)), Next::Idle);
        }
        let (_, w) = core.enqueue(0, 1).expect("assigned");
        assert_eq!(core.next(0, &w), Some(1));
        // Its handler blocks: divorced, nothing else queued.
        assert_eq!(core.divorce(0, w.id()).0, true);
        let (c2, k2) = (core.clone(), woken.clone());
        // Woken later, it asks to run again (hwi_sched) while an interrupt queues more.
        let t = thread::spawn(move || {
            if let Some(cw) = c2.requeue(0, 2) {
                k2.lock().unwrap().push(cw);
            }
        });
        if let Some(cw) = core.enqueue(0, 3) {
            woken.lock().unwrap().push(cw);
        }
        t.join().unwrap();
        // The divorced worker goes idle.
        assert_eq!(core.release(0, &w), None);
        let n = core.go_idle(&w);
        if let Next::Migrate(c) = n {
            woken.lock().unwrap().push((c, w));
        }
        run_woken(&core, &log, &woken);
        let mut ran = log.ran.lock().unwrap().clone();
        ran.sort();
        assert_eq!(ran, [2, 3]);
    });
}

/// The owner word changes only by compare-and-swap from the expected value: two workers
/// racing to claim a CPU (a release-and-reclaim against an `assign`) never both own it.
#[test]
fn at_most_one_owner() {
    model(|| {
        let core: Arc<Core> = Arc::new(PoolCore::new());
        assert_eq!(core.go_idle(&W(1)), Next::Idle);
        assert_eq!(core.go_idle(&W(2)), Next::Idle);
        let (_, w) = core.enqueue(0, 1).expect("assigned");
        assert_eq!(core.next(0, &w), Some(1));
        let owners = Arc::new(AtomicUsize::new(0));
        let (c2, o2) = (core.clone(), owners.clone());
        let t = thread::spawn(move || {
            // An interrupt queues more while the owner gives the CPU up.
            if c2.enqueue(0, 2).is_some() {
                o2.fetch_add(1, Ordering::SeqCst);
            }
        });
        if let Some(Next::Again(0)) = core.release(0, &w) {
            owners.fetch_add(1, Ordering::SeqCst);
        }
        t.join().unwrap();
        assert!(owners.load(Ordering::SeqCst) <= 1, "two workers own CPU 0");
        if core.queued(0) > 0 {
            assert_ne!(core.owner(0), NO_OWNER, "work queued on CPU 0 with no owner");
        }
    });
}

/// The protocol lock orders what came before it: two threads each write a flag and then take
/// the lock to look at a shared list; one of them must see the other's flag or entry.
#[test]
fn lock_gives_happens_before() {
    model(|| {
        let l = Arc::new(intr::protocol::TestLock::new(Vec::<u32>::new()));
        let flag = Arc::new(AtomicBool::new(false));
        let (l2, f2) = (l.clone(), flag.clone());
        let _ = flag.swap(false, Ordering::SeqCst);
        let t = thread::spawn(move || {
            f2.store(true, Ordering::SeqCst);
            l2.with(|v| v.is_empty())
        });
        l.with(|v| v.push(1));
        let saw_flag = flag.load(Ordering::SeqCst);
        let saw_empty = t.join().unwrap();
        assert!(saw_flag || !saw_empty, "neither saw the other");
    });
}
