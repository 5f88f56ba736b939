//! The pooled model (John Baldwin's 2010 FreeBSD ithreads proposal, freebsd-arch).
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
//! **Balancing** (the proposal's first stated downside: two busy sources on one CPU compete for it while
//! other CPUs idle): when a handler is queued on a CPU whose ithread is busy running another
//! one, an idle pool ithread is sent — unbound, so the scheduler places it on an idle CPU — to
//! *help*: it takes queued instances of sources not `BOUND` to their arrival CPU and runs them
//! where it is. [`Pool::set_balancing`] turns this off.
//!
//! The pool's size stays between 2 × NCPU and the number of pool-model handlers
//! ([`Pool::set_size`] clamps); threads are spawned as it grows; as it shrinks, idle ones
//! retire at once and busy ones when they next give their CPU up.
//!
//! The coordination — queues, owner words, the idle list, the need flags, divorce and
//! migration — is [`crate::protocol::PoolCore`], model-checked on the host; this module adds
//! the threads: waking, binding, running handlers, helping, resizing, counting. Its locks are
//! taken with interrupts disabled.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use machine::{IntrOff, Machine};
use sched::{Need, Priority, Thread};

use crate::protocol::{Next, PoolCore, Worker};
use crate::{IntrEnv, Pending};

/// One pooled ithread.
pub struct PoolThread<E: IntrEnv> {
    /// Its wake-up word, holding its thread's reference for as long as the pool thread
    /// object lives (registered by `spawn_one`): set and the thread made runnable straight
    /// from the interrupt (`sched::Need`).
    need: Need<E>,
    /// Its kernel thread's address: its identity in the owner words (set by the thread
    /// itself before it is first seen by the pool).
    tid: AtomicUsize,
    /// The CPU it was assigned to (written before its event is set).
    cpu: AtomicUsize,
    /// Sent to help this CPU (`usize::MAX`: not helping).
    help: AtomicUsize,
    retire: AtomicBool,
}

/// A pool ithread as the protocol sees it.
struct Ithread<E: IntrEnv>(Arc<PoolThread<E>>);

impl<E: IntrEnv> Clone for Ithread<E> {
    fn clone(&self) -> Self {
        Ithread(self.0.clone())
    }
}

impl<E: IntrEnv> Worker for Ithread<E> {
    fn id(&self) -> usize {
        self.0.tid.load(Ordering::Relaxed)
    }
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
    core: PoolCore<Pending<E>, Ithread<E>, { sched::MAX_CPUS }>,
    /// Per CPU: helpers sent to take work from it and not yet back.
    helpers: [AtomicUsize; sched::MAX_CPUS],
    size: AtomicUsize,
    target: AtomicUsize,
    handlers: AtomicUsize,
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

pub(crate) fn pool_priority() -> Priority {
    Priority::of_ipl(ipl::Ipl::Vm).unwrap_or(Priority::INTR_BASE)
}

impl<E: IntrEnv> Pool<E> {
    /// The priority pool ithreads run at between handlers (and for sources without their
    /// own thread priority).
    pub fn default_priority() -> Priority {
        pool_priority()
    }

    const_unless_loom! {
    /// Empty; threads are spawned when the first pool-model handler is established.
    pub fn new() -> Self {
        Pool {
            core: PoolCore::new(),
            helpers: [const { AtomicUsize::new(0) }; sched::MAX_CPUS],
            size: AtomicUsize::new(0),
            target: AtomicUsize::new(0),
            handlers: AtomicUsize::new(0),
            assigned: AtomicU64::new(0),
            migrations: AtomicU64::new(0),
            divorces: AtomicU64::new(0),
            empty: AtomicU64::new(0),
            stolen: AtomicU64::new(0),
            balancing: AtomicBool::new(true),
        }
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

    /// The size asked for by [`Pool::set_size`] (0: none, the bounds decide).
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

    /// The size the pool should have now.
    fn want(&self) -> usize {
        let (lo, hi) = self.bounds();
        match self.target.load(Ordering::Relaxed) {
            0 => lo,
            t => t.clamp(lo, hi),
        }
    }

    fn resize(&'static self) {
        let want = self.want();
        while self.size.load(Ordering::Relaxed) < want {
            self.spawn_one();
        }
        // Shrink: idle threads retire now; busy ones when they next give their CPU up
        // (`retire_one`).
        while self.size.load(Ordering::Relaxed) > want {
            let t = {
                let _io = E::M::intr_disable();
                self.core.take_idle()
            };
            match t {
                Some(t) => {
                    t.0.retire.store(true, Ordering::Release);
                    self.size.fetch_sub(1, Ordering::Relaxed);
                    t.0.need.post_any(E::sched());
                }
                None => break,
            }
        }
    }

    /// A busy ithread giving its CPU up: retire instead of going idle if the pool is larger
    /// than it should be.
    fn retire_one(&self) -> bool {
        let want = self.want();
        let mut s = self.size.load(Ordering::Relaxed);
        while s > want {
            match self.size.compare_exchange(s, s - 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(x) => s = x,
            }
        }
        false
    }

    fn spawn_one(&'static self) {
        let pt = Arc::new(PoolThread {
            need: Need::new(),
            tid: AtomicUsize::new(0),
            cpu: AtomicUsize::new(0),
            help: AtomicUsize::new(usize::MAX),
            retire: AtomicBool::new(false),
        });
        self.size.fetch_add(1, Ordering::Relaxed);
        let p2 = pt.clone();
        let h = E::sched().spawn("ithread/pool", pool_priority(), None, move || E::intr().pool.serve(p2));
        pt.need.register(h.thread().clone(), E::sched());
    }

    /// Wakes `t`, made the owner of `cpu` by the protocol, bound to that CPU.
    fn wake(&self, cpu: usize, t: Ithread<E>, io: &IntrOff) {
        self.assigned.fetch_add(1, Ordering::Relaxed);
        t.0.cpu.store(cpu, Ordering::Release);
        if let Some(th) = t.0.need.thread() {
            E::sched().bind_thread(th, Some(cpu));
        }
        // Straight to the thread: the interrupt's exit switches to it if it outranks the
        // interrupted thread.
        t.0.need.post(E::sched(), io);
    }

    /// Queues a handler instance on `cpu` and makes sure an ithread serves it (interrupt
    /// context).
    pub(crate) fn enqueue(&'static self, cpu: usize, src: Arc<crate::Source<E>>, raised: u64, io: &IntrOff) {
        let stealable = src.stealable();
        match self.core.enqueue(cpu, Pending { src, raised }) {
            Some((c, t)) => self.wake(c, t, io),
            None if self.core.owner(cpu) == crate::protocol::NO_OWNER => self.note_empty(cpu),
            None => {
                if stealable
                    && self.balancing.load(Ordering::Relaxed)
                    && E::M::ncpus() > 1
                    && self.core.queued(cpu) > self.helpers[cpu].load(Ordering::Relaxed)
                {
                    self.send_helper(cpu, io);
                }
            }
        }
    }

    /// Counts a CPU that found the pool empty (its need bit is up).
    fn note_empty(&self, cpu: usize) {
        if self.core.owner(cpu) == crate::protocol::NO_OWNER && self.core.needs(cpu) {
            self.empty.fetch_add(1, Ordering::Relaxed);
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
        let Some(t) = self.core.take_idle() else { return };
        self.helpers[cpu].fetch_add(1, Ordering::AcqRel);
        t.0.help.store(cpu, Ordering::Release);
        if let Some(th) = t.0.need.thread() {
            E::sched().bind_thread(th, None);
        }
        t.0.need.post(E::sched(), io);
    }

    /// A helper's work: run `from`'s stealable queued instances here, then go back.
    fn help(&'static self, from: usize) {
        let here = E::M::cpu_index();
        loop {
            let item = {
                let _io = E::M::intr_disable();
                self.core.steal(from, |p| p.src.stealable())
            };
            let Some(p) = item else { break };
            if here != from {
                self.stolen.fetch_add(1, Ordering::Relaxed);
            }
            self.run(p, from);
        }
        self.helpers[from].fetch_sub(1, Ordering::AcqRel);
    }

    /// Runs one instance on behalf of `cpu`; a handler that asked for `hwi_sched` goes to the
    /// back of `cpu`'s queue (keeping its mask reference) — with an ithread for it if the
    /// queue has none now (the handler blocked and its ithread was divorced) — otherwise the
    /// instance's mask reference, if any, is dropped. Inlined into `serve` (and `help`): out
    /// of line, its call and frame were on every pool interrupt's path to its handler.
    #[inline(always)]
    fn run(&'static self, p: Pending<E>, cpu: usize) {
        // A source with its own thread priority: this ithread takes it on for the run, holding
        // no lock, and goes back to the pool's afterwards.
        let own = p.src.set_priority_word();
        if own != 0 {
            E::sched().set_own_priority(Priority::new(own).unwrap_or(Priority::MAX));
        }
        let again = p.src.run_handler(p.raised, cpu);
        if own != 0 {
            E::sched().set_own_priority(pool_priority());
        }
        if again && !p.src.gate.is_closed() {
            let io = E::M::intr_disable();
            match self.core.requeue(cpu, Pending { src: p.src, raised: E::M::now_ns() }) {
                Some((c, t)) => self.wake(c, t, &io),
                None => self.note_empty(cpu),
            }
        } else if p.src.needs_mask() {
            p.src.unmask();
        }
    }

    /// Kernel sleep hook: a pool ithread serving this CPU is about to block in a handler, so
    /// it is divorced from the CPU and a fresh one continues the queue.
    pub fn on_block(&'static self) {
        let me = E::M::curthread() as usize;
        let io = E::M::intr_disable();
        let cpu = E::M::cpu_index();
        let (divorced, fresh) = self.core.divorce(cpu, me);
        if divorced {
            self.divorces.fetch_add(1, Ordering::Relaxed);
            trace::emit::<E::M>(trace::Kind::Divorce, cpu as u64);
        }
        match fresh {
            Some((c, t)) => self.wake(c, t, &io),
            None if divorced => self.note_empty(cpu),
            None => {}
        }
    }

    /// The body of every pooled ithread.
    fn serve(&'static self, t: Arc<PoolThread<E>>) {
        let sched = E::sched();
        t.tid.store(sched.current() as *const Thread<E> as usize, Ordering::Relaxed);
        let me = Ithread(t.clone());
        let mut next = {
            let _io = E::M::intr_disable();
            self.core.go_idle(&me)
        };
        loop {
            let cpu = match next {
                Next::Again(cpu) => cpu,
                Next::Migrate(cpu) => {
                    self.migrations.fetch_add(1, Ordering::Relaxed);
                    trace::emit::<E::M>(trace::Kind::Migrate, cpu as u64);
                    cpu
                }
                Next::Idle => {
                    t.need.wait(sched);
                    if t.retire.load(Ordering::Acquire) {
                        return;
                    }
                    let from = t.help.swap(usize::MAX, Ordering::AcqRel);
                    if from != usize::MAX {
                        self.help(from);
                        sched.bind_current(None);
                        let _io = E::M::intr_disable();
                        next = self.core.go_idle(&me);
                        continue;
                    }
                    t.cpu.load(Ordering::Acquire)
                }
            };
            sched.bind_current(Some(cpu));
            loop {
                let item = {
                    let _io = E::M::intr_disable();
                    self.core.next(cpu, &me)
                };
                let Some(p) = item else { break };
                self.run(p, cpu);
            }
            let _io = E::M::intr_disable();
            next = match self.core.release(cpu, &me) {
                Some(n) => n,
                None if self.retire_one() => return,
                None => self.core.go_idle(&me),
            };
        }
    }

    /// Counters.
    pub fn stats(&self) -> PoolStats {
        let _io = E::M::intr_disable();
        PoolStats {
            size: self.size.load(Ordering::Relaxed),
            idle: self.core.idle_count(),
            assigned: self.assigned.load(Ordering::Relaxed),
            migrations: self.migrations.load(Ordering::Relaxed),
            divorces: self.divorces.load(Ordering::Relaxed),
            empty: self.empty.load(Ordering::Relaxed),
            stolen: self.stolen.load(Ordering::Relaxed),
        }
    }

    /// Handler instances queued on `cpu`.
    pub fn queued(&self, cpu: usize) -> usize {
        let _io = E::M::intr_disable();
        self.core.queued(cpu)
    }
}
