//! The pinned model (DESIGN.md part 2; Andrew Doran's interrupts-as-LWPs, seeds 000/001;
//! what illumos does for hardware interrupts).
//!
//! Each CPU has one interrupt thread for `IPL_VM` sources (the only hardware level at or below
//! `IPL_VM`; above it handlers run directly, as the posts propose). When such an interrupt
//! arrives and the CPU's ithread is idle, the entry path *borrows* the CPU: it switches stack
//! and current thread to the ithread ([`sched::Scheduler::pin_switch`]) — no run queue, no
//! scheduler decision — and the interrupted thread stays pinned underneath. The ithread runs
//! the handlers queued on the CPU (with interrupts enabled, at `IPL_NONE`, not preemptible
//! while it borrows) and then switches straight back ([`sched::Scheduler::pin_return`]).
//! Only if a handler blocks does a real context switch happen: the scheduler resumes the
//! pinned thread at once, and the ithread later finishes like any thread and parks. While the
//! ithread is busy (running or blocked), new interrupts for its CPU are queued behind it; the
//! interrupt that wakes a parked ithread hands its instance over in a per-CPU slot (no queue,
//! no lock, no reference counting on the switch itself).
//!
//! Cost: `cargo run --release -- bench --filter intr` reports the instructions this path adds
//! over `direct` (`intr.switch_added`); today well above NetBSD's 29, because the switch goes
//! through the portable scheduler's bookkeeping (current thread, run state, SPL and interrupt
//! depth save/restore) rather than a hand-written stack swap.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use machine::{IntrOff, Machine};
use sched::{Priority, SpinLock, Thread};

use crate::{IntrEnv, Pending, PendingQueue, Source};

struct PinnedCpu<E: IntrEnv> {
    /// The CPU's ithread: a leaked `Arc`, set once before `busy` first drops to false.
    thread: AtomicPtr<Arc<Thread<E::M>>>,
    /// The ithread is running or blocked (not parked): interrupts only queue.
    busy: AtomicBool,
    /// The fast path: the instance handed to a parked ithread by the interrupt that wakes
    /// it (no queue, no lock). Touched only on this CPU with interrupts disabled.
    slot: UnsafeCell<Option<Pending<E>>>,
    /// Instances that arrived while the ithread was busy.
    queue: PendingQueue<E>,
}

// SAFETY: `slot` is accessed only by its own CPU with interrupts disabled (the interrupt path
// that fills it, the ithread bound to that CPU that empties it); the rest is atomic or locked.
unsafe impl<E: IntrEnv> Sync for PinnedCpu<E> {}

/// Counters of the pinned model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PinnedStats {
    /// Interrupts that borrowed a CPU (pinned switches).
    pub switches: u64,
    /// Handlers that blocked (real switches).
    pub blocked: u64,
}

/// Per-CPU pinned ithreads.
pub struct Pinned<E: IntrEnv> {
    cpus: [PinnedCpu<E>; sched::MAX_CPUS],
    started: AtomicBool,
    switches: AtomicU64,
    blocked: AtomicU64,
}

impl<E: IntrEnv> Default for Pinned<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: IntrEnv> Pinned<E> {
    /// No threads until the first pinned source is established.
    pub const fn new() -> Self {
        Pinned {
            cpus: [const {
                PinnedCpu {
                    thread: AtomicPtr::new(core::ptr::null_mut()),
                    busy: AtomicBool::new(true),
                    slot: UnsafeCell::new(None),
                    queue: SpinLock::new(VecDeque::new()),
                }
            }; sched::MAX_CPUS],
            started: AtomicBool::new(false),
            switches: AtomicU64::new(0),
            blocked: AtomicU64::new(0),
        }
    }

    /// Starts one ithread per CPU (first pinned source). Each runs once to park itself.
    pub(crate) fn start(&'static self) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let pri = ipl::Ipl::Vm.priority().unwrap_or(Priority::INTR_BASE);
        for cpu in 0..E::M::ncpus() {
            E::sched().spawn("ithread/vm", pri, Some(cpu), move || E::intr().pinned.serve(cpu));
        }
    }

    /// Interrupt context (interrupts disabled, vector table lock *not* held): queue the
    /// instance and, if the CPU's ithread is parked, borrow the CPU for it now.
    pub(crate) fn dispatch(&'static self, src: Arc<Source<E>>, raised: u64, io: &IntrOff) {
        let cpu = E::M::cpu_index();
        let c = &self.cpus[cpu];
        if c.busy.load(Ordering::Relaxed) {
            // Running or blocked: it drains the queue before it parks.
            c.queue.lock(io).push_back(Pending { src, raised });
            return;
        }
        c.busy.store(true, Ordering::Relaxed);
        // SAFETY: this CPU, interrupts disabled (see `PinnedCpu`); the parked ithread left
        // the slot empty.
        unsafe { *c.slot.get() = Some(Pending { src, raised }) };
        // SAFETY: `thread` was stored (a leaked, never freed `Arc`) before the ithread first
        // parked, which happened before `busy` was first false.
        let t = unsafe { &*c.thread.load(Ordering::Acquire) };
        self.switches.store(self.switches.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        // The ithread runs at IPL_NONE and interrupt depth 0; the interrupted context gets its
        // own back when the ithread returns or blocks.
        let spl = E::spl();
        let old_ipl = spl.current();
        let depth = E::sched().swap_intr_depth(0, io);
        <E::M as ipl::IplCpu>::ipl_set(ipl::Ipl::None as u8);
        E::sched().pin_switch(t, io);
        <E::M as ipl::IplCpu>::ipl_set(old_ipl as u8);
        E::sched().swap_intr_depth(depth, io);
    }

    /// Sleep hook: the CPU's ithread is about to block in a handler (a real switch follows).
    pub fn on_block(&self) {
        if E::sched().has_pinned() {
            self.blocked.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn serve(&'static self, cpu: usize) {
        let c = &self.cpus[cpu];
        let sched = E::sched();
        // Publish ourselves before the first park lets interrupts borrow the CPU for us.
        let me: &'static mut Arc<Thread<E::M>> = Box::leak(Box::new(sched.current_arc()));
        c.thread.store(me, Ordering::Release);
        loop {
            let io = E::M::intr_disable();
            // SAFETY: this CPU (the ithread is bound to it), interrupts disabled.
            let item = unsafe { (*c.slot.get()).take() }.or_else(|| c.queue.lock(&io).pop_front());
            match item {
                Some(p) => {
                    drop(io); // handlers run with interrupts enabled
                    p.run(cpu, &c.queue);
                }
                None => {
                    // Idle: give the CPU back (or park). Interrupts stay disabled until the
                    // switch, so nothing can be queued behind our back.
                    c.busy.store(false, Ordering::Release);
                    if sched.has_pinned_locked(&io) {
                        sched.pin_return(&io);
                    } else {
                        sched.park(&io);
                    }
                    // Resumed by a pinned switch (busy was set by the dispatcher); dropping
                    // `io` enables interrupts for the handlers.
                }
            }
        }
    }

    /// Counters.
    pub fn stats(&self) -> PinnedStats {
        PinnedStats {
            switches: self.switches.load(Ordering::Relaxed),
            blocked: self.blocked.load(Ordering::Relaxed),
        }
    }
}
