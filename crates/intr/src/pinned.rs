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
//! ithread is busy (running or blocked), new interrupts for its CPU are queued behind it.

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use machine::{IntrOff, Machine};
use sched::{Priority, SpinLock, Thread};

use crate::{IntrEnv, Pending, PendingQueue, Source};

struct PinnedCpu<E: IntrEnv> {
    thread: SpinLock<Option<Arc<Thread<E::M>>>>,
    /// The ithread is running or blocked (not parked): interrupts only queue.
    busy: AtomicBool,
    queue: PendingQueue<E>,
}

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
                    thread: SpinLock::new(None),
                    busy: AtomicBool::new(true),
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
            let h = E::sched().spawn("ithread/vm", pri, Some(cpu), move || E::intr().pinned.serve(cpu));
            let io = E::M::intr_disable();
            *self.cpus[cpu].thread.lock(&io) = Some(h.thread().clone());
        }
    }

    /// Interrupt context (interrupts disabled, vector table lock *not* held): queue the
    /// instance and, if the CPU's ithread is parked, borrow the CPU for it now.
    pub(crate) fn dispatch(&'static self, src: Arc<Source<E>>, raised: u64, io: &IntrOff) {
        let cpu = E::M::cpu_index();
        let c = &self.cpus[cpu];
        c.queue.lock(io).push_back(Pending { src, raised });
        if c.busy.swap(true, Ordering::AcqRel) {
            return; // running or blocked: it will drain the queue
        }
        let t = c.thread.lock(io).clone();
        let Some(t) = t else { return };
        self.switches.fetch_add(1, Ordering::Relaxed);
        // The ithread runs at IPL_NONE and interrupt depth 0; the interrupted context gets its
        // own back when the ithread returns or blocks.
        let spl = E::spl();
        let old_ipl = spl.current();
        let depth = E::sched().swap_intr_depth(0, io);
        <E::M as ipl::IplCpu>::ipl_set(ipl::Ipl::None as u8);
        E::sched().pin_switch(&t, io);
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
        loop {
            // Drain this CPU's queue.
            loop {
                let item = {
                    let io = E::M::intr_disable();
                    let mut q = c.queue.lock(&io);
                    q.pop_front()
                };
                let Some(p) = item else { break };
                p.run(cpu, &c.queue);
            }
            // Idle: give the CPU back (or park), unless work raced in.
            let io = E::M::intr_disable();
            if !c.queue.lock(&io).is_empty() {
                continue;
            }
            c.busy.store(false, Ordering::Release);
            if sched.has_pinned() {
                sched.pin_return(&io);
            } else {
                sched.park(&io);
            }
            // Resumed by a pinned switch (busy was set by the dispatcher).
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
