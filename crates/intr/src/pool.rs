//! The pooled model (John Baldwin's 2010 FreeBSD proposal, seed 003).
//!
//! Each CPU has a queue of pending handlers. A pool of hardware ithreads serves all CPUs:
//! when an interrupt queues handlers on a CPU that has no *active* ithread, the CPU takes an
//! idle one from the pool, binds it to itself and wakes it; the ithread drains the queue
//! (handlers that call `hwi_sched` go to the back) and then gives the CPU up and returns to
//! the pool. If a handler blocks, the ithread is *divorced* from the CPU (the kernel's
//! sleep hook calls [`Pool::on_block`]) and, if work remains, a fresh ithread takes over the
//! queue. If the pool has no idle ithread, the CPU raises a *need* flag; every ithread
//! checks the flags before going idle and moves to the first CPU in need.
//!
//! **Balancing** (the seed's first downside: two busy sources on one CPU compete for it while
//! other CPUs idle): when a handler is queued on a CPU whose ithread is busy running another
//! one, an idle pool ithread is sent — unbound, so the scheduler places it on an idle CPU — to
//! *help*: it takes queued instances of sources not `BOUND` to their arrival CPU and runs them
//! where it is. [`Pool::set_balancing`] turns this off.
//!
//! The pool's size stays between 2 × NCPU and the number of pool-model handlers
//! ([`Pool::set_size`] clamps); threads are spawned as it grows and retire as it shrinks.
//!
//! Locks: each CPU's queue is a `SpinLock` (interrupts disabled); the idle list is a
//! `SpinLock`. `active` is an atomic owner word (the serving ithread's address or 0), claimed
//! and released with compare-and-swap so that exactly one ithread serves a CPU.

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use machine::{IntrOff, Machine};
use sched::{Event, Priority, SpinLock, Thread};

use crate::{IntrEnv, Pending, PendingQueue, Source};

struct PoolCpu<E: IntrEnv> {
    queue: PendingQueue<E>,
    /// Address of the `PoolThread` serving this CPU, or 0.
    active: AtomicUsize,
    /// Address of that ithread's kernel `Thread` (for the block hook), or 0.
    active_thread: AtomicUsize,
    /// This CPU has work and found the pool empty.
    need: AtomicBool,
    /// Helpers sent to take work from this CPU and not yet back.
    helpers: AtomicUsize,
}

/// One pooled ithread.
pub struct PoolThread<E: IntrEnv> {
    event: Event<E>,
    cpu: AtomicUsize,
    /// Sent to help this CPU (`usize::MAX`: a normal assignment).
    help: AtomicUsize,
    retire: AtomicBool,
    thread: SpinLock<Option<Arc<Thread<E>>>>,
}

/// Counters of the pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Threads in the pool.
    pub size: usize,
    /// Idle threads now.
    pub idle: usize,
    /// Times a CPU took an ithread from the pool.
    pub assigned: u64,
    /// Times an ithread moved to a CPU in need.
    pub migrations: u64,
    /// Times a blocking handler divorced its ithread from the CPU.
    pub divorces: u64,
    /// Times a CPU found the pool empty.
    pub empty: u64,
    /// Instances run by a helper on another CPU than their arrival CPU.
    pub stolen: u64,
}

/// The pool.
pub struct Pool<E: IntrEnv> {
    cpus: [PoolCpu<E>; sched::MAX_CPUS],
    idle: SpinLock<Vec<Arc<PoolThread<E>>>>,
    size: AtomicUsize,
    target: AtomicUsize,
    handlers: AtomicUsize,
    need: AtomicBool,
    assigned: AtomicU64,
    migrations: AtomicU64,
    divorces: AtomicU64,
    empty: AtomicU64,
    stolen: AtomicU64,
    balancing: AtomicBool,
}

impl<E: IntrEnv> Default for Pool<E> {
    fn default() -> Self {
        Self::new()
    }
}

fn pool_priority() -> Priority {
    Priority::of_ipl(ipl::Ipl::Vm).unwrap_or(Priority::INTR_BASE)
}

impl<E: IntrEnv> Pool<E> {
    /// Empty; threads are spawned when the first pool-model handler is established.
    pub const fn new() -> Self {
        Pool {
            cpus: [const {
                PoolCpu {
                    queue: SpinLock::new(VecDeque::new()),
                    active: AtomicUsize::new(0),
                    active_thread: AtomicUsize::new(0),
                    need: AtomicBool::new(false),
                    helpers: AtomicUsize::new(0),
                }
            }; sched::MAX_CPUS],
            idle: SpinLock::new(Vec::new()),
            size: AtomicUsize::new(0),
            target: AtomicUsize::new(0),
            handlers: AtomicUsize::new(0),
            need: AtomicBool::new(false),
            assigned: AtomicU64::new(0),
            migrations: AtomicU64::new(0),
            divorces: AtomicU64::new(0),
            empty: AtomicU64::new(0),
            stolen: AtomicU64::new(0),
            balancing: AtomicBool::new(true),
        }
    }

    fn bounds(&self) -> (usize, usize) {
        let min = 2 * E::M::ncpus();
        (min, self.handlers.load(Ordering::Relaxed).max(min))
    }

    /// The sizes [`Pool::set_size`] accepts now without clamping: (2 × NCPU, the larger of
    /// that and the number of pool-model handlers).
    pub fn size_bounds(&self) -> (usize, usize) {
        self.bounds()
    }

    /// The size last asked for with [`Pool::set_size`] (0: never asked — the pool follows
    /// its lower bound).
    pub fn target(&self) -> usize {
        self.target.load(Ordering::Relaxed)
    }

    /// Pool-model handlers established now.
    pub fn handlers(&self) -> usize {
        self.handlers.load(Ordering::Relaxed)
    }

    /// Asks for `n` ithreads; clamped to [2 × NCPU, number of handlers]. Returns the size set.
    pub fn set_size(&'static self, n: usize) -> usize {
        let (lo, hi) = self.bounds();
        let n = n.clamp(lo, hi);
        self.target.store(n, Ordering::Relaxed);
        self.resize();
        n
    }

    pub(crate) fn handler_added(&'static self) {
        self.handlers.fetch_add(1, Ordering::Relaxed);
        self.resize();
    }

    pub(crate) fn handler_removed(&'static self) {
        self.handlers.fetch_sub(1, Ordering::Relaxed);
        self.resize();
    }

    fn resize(&'static self) {
        let (lo, hi) = self.bounds();
        let want = match self.target.load(Ordering::Relaxed) {
            0 => lo,
            t => t.clamp(lo, hi),
        };
        while self.size.load(Ordering::Relaxed) < want {
            self.spawn_one();
        }
        // Shrink: retire idle threads (busy ones retire when they next go idle).
        while self.size.load(Ordering::Relaxed) > want {
            let t = {
                let io = E::M::intr_disable();
                let mut idle = self.idle.lock(&io);
                idle.pop()
            };
            match t {
                Some(t) => {
                    t.retire.store(true, Ordering::Release);
                    self.size.fetch_sub(1, Ordering::Relaxed);
                    t.event.set();
                }
                None => break,
            }
        }
    }

    fn spawn_one(&'static self) {
        let pt = Arc::new(PoolThread {
            event: Event::new(E::sched()),
            cpu: AtomicUsize::new(0),
            help: AtomicUsize::new(usize::MAX),
            retire: AtomicBool::new(false),
            thread: SpinLock::new(None),
        });
        self.size.fetch_add(1, Ordering::Relaxed);
        let p2 = pt.clone();
        let h = E::sched().spawn("ithread/pool", pool_priority(), None, move || E::intr().pool.serve(&p2));
        let io = E::M::intr_disable();
        *pt.thread.lock(&io) = Some(h.thread().clone());
        self.idle.lock(&io).push(pt);
    }

    /// Queues a handler instance on `cpu` and makes sure an ithread serves it (interrupt
    /// context).
    pub(crate) fn enqueue(&'static self, cpu: usize, src: Arc<Source<E>>, raised: u64, io: &IntrOff) {
        let stealable = src.stealable();
        let queued = {
            let mut q = self.cpus[cpu].queue.lock(io);
            q.push_back(Pending { src, raised });
            q.len()
        };
        if self.cpus[cpu].active.load(Ordering::Acquire) == 0 {
            self.assign(cpu, io);
        } else if stealable
            && self.balancing.load(Ordering::Relaxed)
            && E::M::ncpus() > 1
            && queued > self.cpus[cpu].helpers.load(Ordering::Relaxed)
        {
            self.send_helper(cpu, io);
        }
    }

    /// Turns balancing on or off.
    pub fn set_balancing(&self, on: bool) {
        self.balancing.store(on, Ordering::Relaxed);
    }

    /// Whether balancing is on.
    pub fn balancing(&self) -> bool {
        self.balancing.load(Ordering::Relaxed)
    }

    /// Sends an idle ithread, unbound, to take stealable work queued on the busy `cpu`.
    fn send_helper(&'static self, cpu: usize, io: &IntrOff) {
        let t = self.idle.lock(io).pop();
        let Some(t) = t else { return };
        self.cpus[cpu].helpers.fetch_add(1, Ordering::AcqRel);
        t.help.store(cpu, Ordering::Release);
        if let Some(th) = t.thread.lock(io).as_ref() {
            E::sched().bind_thread(th, None);
        }
        t.event.set();
    }

    /// A helper's work: run `from`'s stealable queued instances here, then go back.
    fn help(&'static self, from: usize) {
        let c = &self.cpus[from];
        let here = E::M::cpu_index();
        loop {
            let item = {
                let io = E::M::intr_disable();
                let mut q = c.queue.lock(&io);
                let i = q.iter().position(|p| p.src.stealable());
                i.and_then(|i| q.remove(i))
            };
            let Some(p) = item else { break };
            if here != from {
                self.stolen.fetch_add(1, Ordering::Relaxed);
            }
            p.run(from, &c.queue);
        }
        c.helpers.fetch_sub(1, Ordering::AcqRel);
    }

    /// Gives `cpu` an idle ithread, or raises its need flag.
    fn assign(&'static self, cpu: usize, io: &IntrOff) {
        let t = self.idle.lock(io).pop();
        let Some(t) = t else {
            self.empty.fetch_add(1, Ordering::Relaxed);
            self.cpus[cpu].need.store(true, Ordering::Release);
            self.need.store(true, Ordering::Release);
            return;
        };
        let me = Arc::as_ptr(&t) as usize;
        if self.cpus[cpu].active.compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire).is_err() {
            self.idle.lock(io).push(t); // someone else serves it already
            return;
        }
        self.assigned.fetch_add(1, Ordering::Relaxed);
        t.cpu.store(cpu, Ordering::Release);
        if let Some(th) = t.thread.lock(io).as_ref() {
            self.cpus[cpu].active_thread.store(Arc::as_ptr(th) as usize, Ordering::Release);
            E::sched().bind_thread(th, Some(cpu));
        }
        t.event.set();
    }

    /// Kernel sleep hook: a pool ithread serving this CPU is about to block in a handler, so
    /// it is divorced from the CPU and a fresh one continues the queue.
    pub fn on_block(&'static self) {
        let me = E::M::curthread() as usize;
        let io = E::M::intr_disable();
        let cpu = E::M::cpu_index();
        let c = &self.cpus[cpu];
        if c.active_thread.load(Ordering::Acquire) != me {
            return;
        }
        c.active_thread.store(0, Ordering::Release);
        c.active.store(0, Ordering::Release);
        self.divorces.fetch_add(1, Ordering::Relaxed);
        if !c.queue.lock(&io).is_empty() {
            self.assign(cpu, &io);
        }
    }

    /// The body of every pooled ithread.
    fn serve(&'static self, t: &Arc<PoolThread<E>>) {
        let me = Arc::as_ptr(t) as usize;
        let sched = E::sched();
        loop {
            t.event.wait();
            if t.retire.load(Ordering::Acquire) {
                return;
            }
            let from = t.help.swap(usize::MAX, Ordering::AcqRel);
            if from != usize::MAX {
                self.help(from);
                let io = E::M::intr_disable();
                self.idle.lock(&io).push(t.clone());
                continue;
            }
            let mut cpu = t.cpu.load(Ordering::Acquire);
            'serve: loop {
                sched.bind_current(Some(cpu));
                self.cpus[cpu]
                    .active_thread
                    .store(sched.current() as *const Thread<E> as usize, Ordering::Release);
                self.drain(cpu, me);
                // Give the CPU up, unless work raced in after the queue looked empty.
                let c = &self.cpus[cpu];
                c.active_thread.store(0, Ordering::Release);
                if c.active.compare_exchange(me, 0, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    let more = {
                        let io = E::M::intr_disable();
                        let q = c.queue.lock(&io);
                        !q.is_empty()
                    };
                    if more && c.active.compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                        continue 'serve;
                    }
                }
                // Before going idle: is a CPU in need?
                if self.need.swap(false, Ordering::AcqRel) {
                    for d in 0..E::M::ncpus() {
                        let dc = &self.cpus[d];
                        if dc.need.load(Ordering::Acquire)
                            && dc.active.compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire).is_ok()
                        {
                            dc.need.store(false, Ordering::Release);
                            if (0..E::M::ncpus()).any(|x| self.cpus[x].need.load(Ordering::Acquire)) {
                                self.need.store(true, Ordering::Release);
                            }
                            self.migrations.fetch_add(1, Ordering::Relaxed);
                            cpu = d;
                            t.cpu.store(d, Ordering::Release);
                            continue 'serve;
                        }
                    }
                }
                break;
            }
            sched.bind_current(None);
            if t.retire.load(Ordering::Acquire) {
                return;
            }
            let io = E::M::intr_disable();
            self.idle.lock(&io).push(t.clone());
        }
    }

    /// Runs the queue of `cpu` while this ithread is its active one.
    fn drain(&'static self, cpu: usize, me: usize) {
        let c = &self.cpus[cpu];
        while c.active.load(Ordering::Acquire) == me {
            let item = {
                let io = E::M::intr_disable();
                let mut q = c.queue.lock(&io);
                q.pop_front()
            };
            let Some(p) = item else { return };
            p.run(cpu, &c.queue);
        }
    }

    /// Counters.
    pub fn stats(&self) -> PoolStats {
        let io = E::M::intr_disable();
        let idle = self.idle.lock(&io).len();
        PoolStats {
            size: self.size.load(Ordering::Relaxed),
            idle,
            assigned: self.assigned.load(Ordering::Relaxed),
            migrations: self.migrations.load(Ordering::Relaxed),
            divorces: self.divorces.load(Ordering::Relaxed),
            empty: self.empty.load(Ordering::Relaxed),
            stolen: self.stolen.load(Ordering::Relaxed),
        }
    }

    /// Handler instances queued on `cpu`.
    pub fn queued(&self, cpu: usize) -> usize {
        let io = E::M::intr_disable();
        let q = self.cpus[cpu].queue.lock(&io);
        q.len()
    }
}
