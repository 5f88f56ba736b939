//! Shuttle (randomized schedules) over the pool protocol (`intr::protocol::PoolCore`, compiled
//! with shuttle's atomics under `--cfg shuttle`) at a size loom cannot explore: four CPUs
//! raising interrupts concurrently, three workers that drain, block (divorce), requeue
//! (`hwi_sched`), migrate to CPUs in need and go idle, and a resize that retires idle
//! workers and adds them back. Checked: every item runs exactly once; at the end no CPU holds
//! work, an owner or a need.
//!
//! Run: `RUSTFLAGS="--cfg shuttle" cargo test -p ithreads-intr --test shuttle_pool --release`
//! (`SHUTTLE_ITERATIONS=N`, default 2000).
#![cfg(shuttle)]

use std::collections::HashSet;

use intr::protocol::{Next, PoolCore, Worker, NO_OWNER};
use shuttle::sync::atomic::{AtomicUsize, Ordering};
use shuttle::sync::{Arc, Mutex};
use shuttle::thread;

const CPUS: usize = 4;
const PER_CPU: u32 = 3;

#[derive(Clone)]
struct W(usize);

impl Worker for W {
    fn id(&self) -> usize {
        self.0
    }
}

type Core = PoolCore<u32, W, CPUS>;

struct World {
    core: Core,
    /// Workers handed a CPU and not yet running (the kernel's `Event::set` + run queue).
    woken: Mutex<Vec<(usize, W)>>,
    ran: Mutex<Vec<u32>>,
    /// Items still to run (for the workers to know when to stop looking).
    left: AtomicUsize,
}

impl World {
    fn wake(&self, cw: Option<(usize, W)>) {
        if let Some(cw) = cw {
            self.woken.lock().unwrap().push(cw);
        }
    }

    /// One worker's service of `cpu` until it owns nothing (drain, block now and then,
    /// requeue now and then).
    fn serve(&self, me: &W, mut next: Next) {
        loop {
            let cpu = match next {
                Next::Again(c) | Next::Migrate(c) => c,
                Next::Idle => return,
            };
            while let Some(item) = self.core.next(cpu, me) {
                if item % 7 == 3 && item < 1000 {
                    // hwi_sched: run again later, as item + 1000.
                    self.wake(self.core.requeue(cpu, item + 1000));
                    continue;
                }
                self.ran.lock().unwrap().push(item);
                self.left.fetch_sub(1, Ordering::SeqCst);
                if item % 5 == 0 {
                    // The handler blocks: divorce; it goes on later as an ordinary thread.
                    let (divorced, fresh) = self.core.divorce(cpu, me.id());
                    assert!(divorced);
                    self.wake(fresh);
                    thread::yield_now();
                }
            }
            next = match self.core.release(cpu, me) {
                Some(n) => n,
                None => self.core.go_idle(me),
            };
        }
    }
}

fn pool_under_random_schedules() {
    let world = Arc::new(World {
        core: PoolCore::new(),
        woken: Mutex::new(Vec::new()),
        ran: Mutex::new(Vec::new()),
        left: AtomicUsize::new((CPUS as u32 * PER_CPU) as usize),
    });
    for id in 1..=3 {
        assert_eq!(world.core.go_idle(&W(id)), Next::Idle);
    }
    let mut threads = Vec::new();
    // Interrupts on every CPU.
    for cpu in 0..CPUS {
        let w = world.clone();
        threads.push(thread::spawn(move || {
            for k in 0..PER_CPU {
                let item = cpu as u32 * 10 + k;
                w.wake(w.core.enqueue(cpu, item));
            }
        }));
    }
    // Workers: whoever was handed a CPU runs; retire one idle worker and add it back.
    for _ in 0..3 {
        let w = world.clone();
        threads.push(thread::spawn(move || loop {
            let job = w.woken.lock().unwrap().pop();
            match job {
                Some((cpu, me)) => {
                    assert_eq!(w.core.owner(cpu), me.id(), "woken without owning its CPU");
                    w.serve(&me, Next::Again(cpu));
                }
                None if w.left.load(Ordering::SeqCst) == 0 => return,
                None => {
                    if let Some(idle) = w.core.take_idle() {
                        // Resize: this one retires, a fresh one (same identity) joins.
                        let n = w.core.go_idle(&idle);
                        if let Next::Migrate(c) = n {
                            w.woken.lock().unwrap().push((c, idle));
                        }
                    }
                    thread::yield_now();
                }
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    let ran = world.ran.lock().unwrap().clone();
    let set: HashSet<u32> = ran.iter().copied().collect();
    assert_eq!(set.len(), ran.len(), "an item ran twice: {ran:?}");
    assert_eq!(set.len(), CPUS * PER_CPU as usize, "not everything ran: {ran:?}");
    for cpu in 0..CPUS {
        assert_eq!(world.core.queued(cpu), 0);
        assert_eq!(world.core.owner(cpu), NO_OWNER);
        assert!(!world.core.needs(cpu));
    }
}

#[test]
fn pool_protocol_random_schedules() {
    let n = std::env::var("SHUTTLE_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    shuttle::check_random(pool_under_random_schedules, n);
}
