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
//!
//! **The CPU is borrowed** (NetBSD's "fast" soft interrupts, `kern_softint.c`; the same switch
//! as the pinned model, whose protocol is `crates/sched/src/pinned.rs`): the level's thread is
//! an interrupt thread ([`sched::Scheduler::new_ithread`], parked between runs) and the vector,
//! which runs in interrupt context on this CPU at the soft level with interrupts disabled,
//! lends it the CPU with [`sched::Scheduler::pin_call`]: no wake-up, no run queue, no
//! scheduler switch. The thread runs the queued handlers on its own stack, in thread context
//! ([`sched::Scheduler::in_interrupt`] is false for it), at the soft level with interrupts
//! enabled, and returns; the interrupted thread, pinned underneath, goes on. A handler may
//! block, or the thread may be preempted by a more urgent thread woken on its CPU (the run is
//! unbounded: `com1.soft` drains its input for as long as it keeps coming, and a borrower that
//! nothing could preempt stalled its CPU — the torture failure of
//! docs/logs/torture-pinned-churn-lost-paths-2026-12-06.txt): then (and only then) the thread
//! becomes an ordinary thread (the scheduler's lazy path), the interrupted thread resumes at
//! once, and the soft thread, once woken or picked, runs the rest of the queue at `IPL_NONE`
//! as any thread and parks. While it is not parked, the
//! level's vector on this CPU lends nothing (`Busy`): the queue it drains before parking holds
//! what was scheduled meanwhile. The sleep check lets a borrowing soft thread block at its
//! level with no spin mutex of its own; a context underneath holding spin mutexes (below the
//! soft level) has that state set aside for the call, as the pinned model's `lend_slow` does.
//!
//! ## Workqueues
//! The "continuation" alternative from the posts: kernel threads (one per CPU, or one shared)
//! that run queued work items in order. Items may sleep for long.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use core::cell::UnsafeCell;
use core::sync::atomic::AtomicPtr;

use ipl::Ipl;
use machine::{IntrOff, Machine};
use sched::{Event, PinOutcome, PinThread, Priority, SpinLock};

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
            soft.cpus[cpu][self.level].queue(&io).push_back(self.clone());
        }
        E::spl().post(vector);
    }
}

struct SoftCpu<E: IntrEnv> {
    /// Handlers scheduled on this CPU at this level and not yet run. Touched by this CPU
    /// only (`schedule` queues on its own CPU; the thread is bound here), interrupts disabled.
    queue: UnsafeCell<VecDeque<Arc<SoftIntr<E>>>>,
    /// The level's interrupt thread on this CPU: null until the level's first establish, then
    /// written once and never freed (its descriptor must outlive every pinned call).
    thread: AtomicPtr<PinThread<E>>,
}

// SAFETY: `queue` is touched only through `SoftCpu::queue`, by the CPU it belongs to with
// interrupts disabled (see there); `thread` is atomic.
unsafe impl<E: IntrEnv> Sync for SoftCpu<E> {}

impl<E: IntrEnv> SoftCpu<E> {
    /// The queue, for its own CPU with interrupts disabled (the token): `schedule` queues on
    /// the CPU it runs on, and the level's thread, bound to this CPU, takes from it; an
    /// interrupt on this CPU cannot come in between. No lock is needed.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    fn queue(&self, _io: &IntrOff) -> &mut VecDeque<Arc<SoftIntr<E>>> {
        // SAFETY: per the doc: only this CPU, only with interrupts disabled, and no caller
        // keeps the reference past its interrupt-disabled section.
        unsafe { &mut *self.queue.get() }
    }
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
                [const {
                    SoftCpu {
                        queue: UnsafeCell::new(VecDeque::new()),
                        thread: AtomicPtr::new(core::ptr::null_mut()),
                    }
                }; 4]
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
            let t = E::sched().new_ithread(names[l], pri, cpu, level as u8, soft_body::<E>);
            self.cpus[cpu][l].thread.store(core::ptr::from_ref(t).cast_mut(), Ordering::Release);
        }
    }

    /// The software vector of level `l` ran on this CPU (interrupt context, at that level,
    /// interrupts disabled): lend the CPU to the level's thread, which runs the queue.
    #[inline]
    pub(crate) fn fire(&'static self, l: usize, io: &IntrOff) {
        let cpu = E::M::cpu_index();
        let t = self.cpus[cpu][l].thread.load(Ordering::Acquire);
        if t.is_null() {
            return; // not established yet at this level: nothing can be queued
        }
        // SAFETY: a non-null slot is a leaked `PinThread` (never freed).
        let it = unsafe { &*t };
        trace::emit::<E::M>(trace::Kind::PinBorrow, (SOFT_VECTOR_BASE as usize + l) as u64);
        match E::sched().pin_call(it, cpu, l, io).0 {
            PinOutcome::Returned | PinOutcome::ReturnedMore | PinOutcome::Blocked => {}
            // Not parked: its handler blocked and it finishes the queue (ours included)
            // as an ordinary thread before it parks.
            PinOutcome::Busy => {}
            // Another level, or spin mutexes held underneath (the machine's test).
            PinOutcome::Level => lend_slow(it, cpu, l, io),
        }
    }
}

/// [`Soft::fire`] on top of a context holding spin mutexes (below the soft level), or — not
/// expected: software vectors run only through the SPL's replay, at their level — at another
/// level: the thread runs at its level with no spin mutex counted, and both come back after.
#[cold]
#[inline(never)]
fn lend_slow<E: IntrEnv>(it: &PinThread<E>, cpu: usize, l: usize, io: &IntrOff) {
    let spl = E::spl();
    let old = <E::M as ipl::IplCpu>::ipl_get();
    let spin = spl.spin_state_take();
    <E::M as ipl::IplCpu>::ipl_set(SOFT_LEVELS[l] as u8);
    let _ = E::sched().pin_call(it, cpu, l, io);
    spl.spin_state_restore(spin);
    <E::M as ipl::IplCpu>::ipl_set(old);
}

/// The soft thread's body for one pinned call (its stack from the top, interrupts enabled,
/// the CPU at the soft level): runs the queue. If a handler blocked, we are an ordinary thread
/// from then on: finish the queue and park.
extern "C" fn soft_body<E: IntrEnv>(cpu: usize, l: usize) {
    let c = &E::intr().soft.cpus[cpu][l];
    run_queue(c, cpu, l);
    // The queue was found empty with interrupts disabled, but they were enabled again
    // since: look once more, and decide whether we still borrow, with them disabled.
    loop {
        let io = E::M::intr_disable();
        if let Some(si) = c.queue(&io).pop_front() {
            drop(io);
            run_one(si, cpu, l);
            continue;
        }
        // SAFETY: nothing on this stack needs dropping (`io` is handed over; `c` is a
        // reference to a static).
        match unsafe { E::sched().pin_end(io) } {
            Ok(()) => return, // interrupts disabled: straight back into the pinned call
            Err(io) => {
                drop(io);
                finish_blocked(c, cpu, l);
            }
        }
    }
}

/// Runs the handlers queued on this CPU at level `l` until the queue is empty.
#[inline(always)]
fn run_queue<E: IntrEnv>(c: &SoftCpu<E>, cpu: usize, l: usize) {
    loop {
        let next = {
            let io = E::M::intr_disable();
            c.queue(&io).pop_front()
        };
        let Some(si) = next else { break };
        run_one(si, cpu, l);
    }
}

/// Runs one scheduled handler (interrupts enabled), unless it was disestablished.
#[inline(always)]
fn run_one<E: IntrEnv>(si: Arc<SoftIntr<E>>, cpu: usize, l: usize) {
    si.queued.fetch_and(!(1 << cpu), Ordering::AcqRel);
    if si.gate.enter() {
        trace::emit::<E::M>(trace::Kind::SoftBegin, l as u64);
        (si.handler)();
        trace::emit::<E::M>(trace::Kind::SoftEnd, l as u64);
        si.runs.fetch_add(1, Ordering::Relaxed);
        si.gate.exit();
    }
}

/// The rest of a run whose handler blocked: an ordinary thread now, at `IPL_NONE` like one
/// (switched back in at its waker's level; this also undoes a level a handler left behind),
/// it runs what is queued, then leaves the CPU for good, parked; the next vector starts it
/// afresh.
#[cold]
fn finish_blocked<E: IntrEnv>(c: &SoftCpu<E>, cpu: usize, l: usize) -> ! {
    <E::M as ipl::IplCpu>::ipl_set(Ipl::None as u8);
    loop {
        run_queue(c, cpu, l);
        let io = E::M::intr_disable();
        // Interrupts stay disabled until the switch away: nothing is queued behind our back
        // (the queue is this CPU's) and no pinned call starts on our stack before we left.
        if c.queue(&io).is_empty() {
            // SAFETY: the slot was filled before any vector could lend us the CPU.
            let it = unsafe { &*c.thread.load(Ordering::Acquire) };
            E::sched().pin_park(it.call(), &io);
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
