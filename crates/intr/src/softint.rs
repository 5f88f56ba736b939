//! Soft interrupts (NetBSD's `softint_establish` / `softint_schedule`) and workqueues.
//!
//! ## Soft interrupts
//! Four levels, `IPL_SOFTCLOCK` … `IPL_SOFTSERIAL`. Each CPU has one soft-interrupt thread per
//! level (bound to the CPU, at the level's scheduling priority) with a queue of the handlers
//! scheduled on that CPU. [`SoftIntr::schedule`] — callable from filters, handlers and threads —
//! queues the handler on the current CPU (once: scheduling it again before it runs is a no-op)
//! and *posts* the level's software vector through the SPL layer, so the dispatch is cheap and
//! exactly as deferred as the IPL says: if the CPU is below the level, the vector runs at
//! once; otherwise when `splx` or the end of the hardware interrupt lowers the level below it.
//! Running the vector only wakes the level's thread; the handler runs in that thread, in
//! thread context, and may block.
//!
//! ## Workqueues
//! The "continuation" alternative from the posts: kernel threads (one per CPU, or one shared)
//! that run queued work items in order. Items may sleep for long.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ipl::Ipl;
use machine::Machine;
use sched::{Event, Priority, SpinLock};

use crate::IntrEnv;

/// The soft levels, lowest first.
pub const SOFT_LEVELS: [Ipl; 4] = [Ipl::SoftClock, Ipl::SoftBio, Ipl::SoftNet, Ipl::SoftSerial];

/// First of the four software vectors (one per soft level, never raised by hardware).
pub const SOFT_VECTOR_BASE: u8 = 0xE0;

/// The software vector of a soft level.
pub fn soft_vector(level: Ipl) -> Option<u8> {
    SOFT_LEVELS.iter().position(|&l| l == level).map(|i| SOFT_VECTOR_BASE + i as u8)
}

/// The soft level of a software vector.
pub fn soft_level(vector: u8) -> Option<usize> {
    let i = vector.wrapping_sub(SOFT_VECTOR_BASE) as usize;
    (i < SOFT_LEVELS.len()).then_some(i)
}

/// An established soft interrupt.
pub struct SoftIntr<E: IntrEnv> {
    name: &'static str,
    level: usize,
    handler: Box<dyn Fn() + Send + Sync>,
    /// Bit per CPU: queued there and not yet run.
    queued: AtomicU64,
    /// Times it ran.
    pub runs: AtomicU64,
    /// Closed by the handle's drop, which then waits for a running handler.
    gate: crate::protocol::RunGate,
    _e: core::marker::PhantomData<E>,
}

impl<E: IntrEnv> SoftIntr<E> {
    /// The name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The level.
    pub fn level(&self) -> Ipl {
        SOFT_LEVELS[self.level]
    }

    /// Schedules the handler on the current CPU (no-op if already scheduled there).
    pub fn schedule(self: &Arc<Self>) {
        let soft = &E::intr().soft;
        let vector = SOFT_VECTOR_BASE + self.level as u8;
        {
            let io = E::M::intr_disable();
            let cpu = E::M::cpu_index();
            if self.queued.fetch_or(1 << cpu, Ordering::AcqRel) & (1 << cpu) != 0 {
                return;
            }
            soft.cpus[cpu][self.level].queue.lock(&io).push_back(self.clone());
        }
        E::spl().post(vector);
    }
}

struct SoftCpu<E: IntrEnv> {
    queue: SpinLock<VecDeque<Arc<SoftIntr<E>>>>,
    event: Event<E>,
}

/// Per-CPU soft-interrupt threads and queues.
pub struct Soft<E: IntrEnv> {
    cpus: [[SoftCpu<E>; 4]; sched::MAX_CPUS],
    pub(crate) started: [AtomicBool; 4],
    start_lock: SpinLock<()>,
}

impl<E: IntrEnv> Default for Soft<E> {
    fn default() -> Self {
        Self::new()
    }
}

/// Keeps a soft interrupt established.
pub struct SoftHandle<E: IntrEnv> {
    si: Arc<SoftIntr<E>>,
}

impl<E: IntrEnv> SoftHandle<E> {
    /// The soft interrupt (schedule it through this).
    pub fn softint(&self) -> &Arc<SoftIntr<E>> {
        &self.si
    }
}

impl<E: IntrEnv> Drop for SoftHandle<E> {
    fn drop(&mut self) {
        // No handler starts after this, and the drop returns only once none runs.
        self.si.gate.close();
        while !self.si.gate.is_idle() {
            E::sched().yield_now();
        }
    }
}

impl<E: IntrEnv> Soft<E> {
    /// No threads yet: each level's threads start at its first establish.
    pub const fn new() -> Self {
        Soft {
            cpus: [const {
                [const { SoftCpu { queue: SpinLock::new(VecDeque::new()), event: Event::new_unbound() } }; 4]
            }; sched::MAX_CPUS],
            started: [const { AtomicBool::new(false) }; 4],
            start_lock: SpinLock::new(()),
        }
    }

    /// Establishes a soft interrupt at a soft `level`.
    pub fn establish(
        &'static self,
        name: &'static str,
        level: Ipl,
        handler: impl Fn() + Send + Sync + 'static,
    ) -> Option<SoftHandle<E>> {
        let l = SOFT_LEVELS.iter().position(|&x| x == level)?;
        self.start_level(l);
        Some(SoftHandle {
            si: Arc::new(SoftIntr {
                name,
                level: l,
                handler: Box::new(handler),
                queued: AtomicU64::new(0),
                runs: AtomicU64::new(0),
                gate: crate::protocol::RunGate::new(),
                _e: core::marker::PhantomData,
            }),
        })
    }

    fn start_level(&'static self, l: usize) {
        let first = {
            let io = E::M::intr_disable();
            let _g = self.start_lock.lock(&io);
            !self.started[l].swap(true, Ordering::AcqRel)
        };
        if !first {
            return;
        }
        let level = SOFT_LEVELS[l];
        E::spl().set_vector_ipl(SOFT_VECTOR_BASE + l as u8, Some(level));
        let pri = Priority::of_ipl(level).unwrap_or(Priority::SOFTINT_BASE);
        let names = ["softclk", "softbio", "softnet", "softser"];
        for cpu in 0..E::M::ncpus() {
            self.cpus[cpu][l].event.bind(E::sched());
            E::sched().spawn(names[l], pri, Some(cpu), move || E::intr().soft.serve(cpu, l));
        }
    }

    /// The software vector ran on this CPU (interrupt context): wake the level's thread.
    pub(crate) fn fire(&self, l: usize) {
        self.cpus[E::M::cpu_index()][l].event.set();
    }

    fn serve(&'static self, cpu: usize, l: usize) {
        let c = &self.cpus[cpu][l];
        loop {
            c.event.wait();
            loop {
                let next = {
                    let io = E::M::intr_disable();
                    let mut q = c.queue.lock(&io);
                    q.pop_front()
                };
                let Some(si) = next else { break };
                si.queued.fetch_and(!(1 << cpu), Ordering::AcqRel);
                if si.gate.enter() {
                    trace::emit::<E::M>(trace::Kind::SoftBegin, l as u64);
                    (si.handler)();
                    trace::emit::<E::M>(trace::Kind::SoftEnd, l as u64);
                    si.runs.fetch_add(1, Ordering::Relaxed);
                    si.gate.exit();
                }
            }
        }
    }
}

type Work = Box<dyn FnOnce() + Send>;

struct WqQueue<M: sched::SchedEnv> {
    items: SpinLock<VecDeque<Work>>,
    event: Event<M>,
}

/// A workqueue: threads that run queued work items in order, in thread context.
pub struct Workqueue<E: IntrEnv> {
    name: &'static str,
    queues: Vec<WqQueue<E>>,
    done: AtomicU64,
}

impl<E: IntrEnv> Workqueue<E> {
    /// Creates the queue and its threads: one per CPU (bound) if `per_cpu`, else one.
    pub fn new(name: &'static str, pri: Priority, per_cpu: bool) -> Arc<Self> {
        let n = if per_cpu { E::M::ncpus() } else { 1 };
        let wq = Arc::new(Workqueue {
            name,
            queues: (0..n)
                .map(|_| WqQueue { items: SpinLock::new(VecDeque::new()), event: Event::new(E::sched()) })
                .collect(),
            done: AtomicU64::new(0),
        });
        for i in 0..n {
            let w = wq.clone();
            E::sched().spawn(name, pri, per_cpu.then_some(i), move || w.serve(i));
        }
        wq
    }

    /// The name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Queues `work` (on this CPU's thread for a per-CPU queue). Callable from any context.
    pub fn enqueue(&self, work: impl FnOnce() + Send + 'static) {
        let i = if self.queues.len() > 1 { E::M::cpu_index() } else { 0 };
        {
            let io = E::M::intr_disable();
            self.queues[i].items.lock(&io).push_back(Box::new(work));
        }
        self.queues[i].event.set();
    }

    /// Items run so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    fn serve(&self, i: usize) {
        let q = &self.queues[i];
        loop {
            q.event.wait();
            loop {
                let item = {
                    let io = E::M::intr_disable();
                    let mut items = q.items.lock(&io);
                    items.pop_front()
                };
                let Some(work) = item else { break };
                work();
                self.done.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
