//! The thread object.
//!
//! A [`Thread`] is shared through `Arc`: the CPU running it holds one reference, a run queue
//! holds one while it is queued, a sleeper list holds one while it sleeps, a [`JoinHandle`]
//! holds one. Its stack is freed when the last reference goes, which can only happen after it
//! has switched away for the last time (the CPU's reference is dropped in `finish_switch`,
//! on another thread's stack).
//!
//! ## State word
//!
//! `state` is changed only with atomic operations:
//!
//! ```text
//!            sleep_prepare()            schedule(Block)
//! RUNNING ───────────────────▶ SLEEPING ───────────────▶ BLOCKED
//!    ▲  ▲        wakeup(): CAS    │                          │
//!    │  └─────────────────────────┘   wakeup(): CAS + enqueue │
//!    └───────────────────────────────────────────────────────┘
//! RUNNING ── exit() ──▶ DEAD
//! PARKED (interrupt threads between pinned calls; a handler's sleep_prepare leaves it)
//! ```
//!
//! RUNNING means "on a CPU or on a run queue". SLEEPING means the thread announced it is
//! going to sleep but is still on its CPU: a waker that finds it there only flips it back to
//! RUNNING, and the thread's `schedule(Block)` then returns at once — the classic lost-wakeup
//! window is closed by the state word, not by a lock. Only the waker that moves a thread out
//! of BLOCKED enqueues it. `on_cpu` stays true until the thread's registers are saved; a CPU
//! that picks the thread from a run queue waits for it to clear before switching to it.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use machine::Machine;

use crate::SchedEnv;

use crate::pri::Priority;
use crate::spin::SpinLock;
use crate::Scheduler;

/// On a CPU or a run queue.
pub const RUNNING: u8 = 0;
/// Announced sleep; still on its CPU.
pub const SLEEPING: u8 = 1;
/// Off CPU, waiting for a wakeup.
pub const BLOCKED: u8 = 2;
/// Exited; will never run again.
pub const DEAD: u8 = 3;
/// An interrupt thread waiting for an interrupt to lend it a CPU ([`crate::Scheduler::pin_call`]):
/// off every CPU and run queue; no wakeup moves it (the next pinned call starts it afresh).
pub const PARKED: u8 = 4;

/// `rq_next` of a thread on no run queue (null ends a FIFO).
pub(crate) const RQ_UNLINKED: *const () = core::ptr::dangling::<()>();

/// `bound` value of a thread that may run on any CPU.
pub(crate) const UNBOUND: usize = usize::MAX;

/// Thread states as `ps` shows them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ThreadState {
    /// Running on a CPU (`on_cpu`) or waiting in a run queue.
    Running,
    /// About to sleep or asleep.
    Sleeping,
    /// Exited.
    Dead,
}

/// Most locks one thread can hold at once as far as the lock checker tracks them.
pub const MAX_HELD_LOCKS: usize = 32;

/// The locks a thread holds, as the lock layer's checker records them: pairs of (lock
/// address, checker data). Written by the thread itself (and by interrupt handlers running on
/// its CPU, which release what they take before returning); read by `ps`-like reporting.
pub struct HeldLocks {
    len: usize,
    slots: [(usize, usize); MAX_HELD_LOCKS],
}

impl HeldLocks {
    pub(crate) const fn new() -> Self {
        HeldLocks { len: 0, slots: [(0, 0); MAX_HELD_LOCKS] }
    }

    /// Records a lock; `false` if the table is full (the checker reports that).
    pub fn push(&mut self, lock: usize, data: usize) -> bool {
        if self.len == MAX_HELD_LOCKS {
            return false;
        }
        self.slots[self.len] = (lock, data);
        self.len += 1;
        true
    }

    /// Forgets the most recent record of `lock`; returns its data, or `None` if not held.
    pub fn remove(&mut self, lock: usize) -> Option<usize> {
        let i = self.slots[..self.len].iter().rposition(|&(l, _)| l == lock)?;
        let data = self.slots[i].1;
        self.slots.copy_within(i + 1..self.len, i);
        self.len -= 1;
        Some(data)
    }

    /// The records, oldest first.
    pub fn as_slice(&self) -> &[(usize, usize)] {
        &self.slots[..self.len]
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no lock is recorded.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

pub(crate) struct JoinState<E: SchedEnv> {
    pub(crate) exited: bool,
    pub(crate) joiner: Option<Arc<Thread<E>>>,
}

/// A kernel thread.
pub struct Thread<E: SchedEnv> {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) sched: &'static Scheduler<E>,
    pub(crate) base_pri: AtomicU8,
    pub(crate) pri: AtomicU8,
    pub(crate) state: AtomicU8,
    pub(crate) on_cpu: AtomicBool,
    /// The CPU it runs on, or last ran on, or is queued on.
    pub(crate) cpu: AtomicUsize,
    pub(crate) bound: AtomicUsize,
    pub(crate) is_idle: bool,
    /// Nesting count of `preempt_disable`; touched only by the thread itself.
    pub(crate) preempt_count: AtomicU32,
    pub(crate) ctx: UnsafeCell<<E::M as Machine>::Context>,
    pub(crate) _stack: Option<Box<[u64]>>,
    #[allow(clippy::type_complexity)]
    pub(crate) start: UnsafeCell<Option<Box<dyn FnOnce() + Send>>>,
    /// The next thread on its run-queue FIFO ([`crate::RunQueue`], under that queue's lock):
    /// [`RQ_UNLINKED`] while on no queue.
    pub(crate) rq_next: UnsafeCell<*const Thread<E>>,
    pub(crate) join: SpinLock<JoinState<E>>,
    /// Locks held, for the lock checker.
    pub(crate) held: SpinLock<HeldLocks>,
    /// Context switches onto this thread.
    pub(crate) switches: AtomicU64,
    /// Nanoseconds spent on a CPU, summed at each switch away.
    pub(crate) run_ns: AtomicU64,
    pub(crate) last_on_ns: AtomicU64,
    /// When it was made: the time since, less `run_ns` up to `last_on_ns`, is the time it
    /// spent switched away ([`Thread::off_cpu_ns`]), so a switch writes no off-CPU sum.
    pub(crate) born_ns: u64,
    /// [`Thread::off_cpu_ns`] when it last blocked while borrowing a CPU (written by the
    /// block path, `schedule_borrowed`): the pinned call's off-CPU mark, taken only if the
    /// borrowed handler blocks ([`Thread::borrow_off_mark_ns`]).
    pub(crate) borrow_off_ns: AtomicU64,
    /// The layer above's per-thread state ([`crate::SchedEnv::ThreadExt`]).
    pub(crate) ext: E::ThreadExt,
}

// SAFETY: `ctx` and `start` are touched only by the CPU that switches the thread in or out,
// with the run-queue lock held and `on_cpu` as the hand-off (see the module doc); every other
// field is atomic or behind a `SpinLock`.
unsafe impl<E: SchedEnv> Sync for Thread<E> {}
// SAFETY: as above; a thread object may be dropped on any CPU.
unsafe impl<E: SchedEnv> Send for Thread<E> {}

impl<E: SchedEnv> Thread<E> {
    /// Unique id (never reused).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The name given at creation.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Effective priority (base, or higher while lent by waiters).
    pub fn priority(&self) -> Priority {
        Priority::new(self.pri.load(Ordering::Relaxed)).unwrap_or(Priority::MAX)
    }

    /// The run-queue index of its effective priority: the word is only ever written from a
    /// [`Priority`] (below `NPRI`, a power of two), so the mask changes nothing and stands
    /// for the range test.
    #[inline(always)]
    pub(crate) fn rq_index(&self) -> usize {
        self.pri.load(Ordering::Relaxed) as usize & (crate::pri::NPRI - 1)
    }

    /// Base priority.
    pub fn base_priority(&self) -> Priority {
        Priority::new(self.base_pri.load(Ordering::Relaxed)).unwrap_or(Priority::MAX)
    }

    /// State for display.
    pub fn state(&self) -> ThreadState {
        match self.state.load(Ordering::Relaxed) {
            RUNNING => ThreadState::Running,
            DEAD => ThreadState::Dead,
            _ => ThreadState::Sleeping,
        }
    }

    /// Whether the thread is on a CPU right now.
    pub fn is_on_cpu(&self) -> bool {
        self.on_cpu.load(Ordering::Relaxed)
    }

    /// The CPU it runs on or last ran on.
    pub fn last_cpu(&self) -> usize {
        self.cpu.load(Ordering::Relaxed)
    }

    /// The CPU it is bound to, if any.
    pub fn bound_cpu(&self) -> Option<usize> {
        match self.bound.load(Ordering::Relaxed) {
            UNBOUND => None,
            c => Some(c),
        }
    }

    /// Whether this is a CPU's idle thread.
    pub fn is_idle(&self) -> bool {
        self.is_idle
    }

    /// Number of times a CPU switched to this thread.
    pub fn switch_count(&self) -> u64 {
        self.switches.load(Ordering::Relaxed)
    }

    /// The lock checker's record of the locks this thread holds (take with interrupts off).
    pub fn held_locks(&self) -> &SpinLock<HeldLocks> {
        &self.held
    }

    /// The layer above's per-thread state ([`crate::SchedEnv::ThreadExt`]: the turnstile
    /// links).
    #[inline(always)]
    pub fn ext(&self) -> &E::ThreadExt {
        &self.ext
    }

    /// Time spent on a CPU up to its last switch away, in nanoseconds.
    pub fn run_time_ns(&self) -> u64 {
        self.run_ns.load(Ordering::Relaxed)
    }

    /// Time spent switched away — blocked, preempted or waiting in a run queue — up to its
    /// last switch back, in nanoseconds. Read by the running thread itself, the difference
    /// across a stretch of its code is the part of that stretch it did not run (an interrupt
    /// handler's CPU time is its wall time less this).
    pub fn off_cpu_ns(&self) -> u64 {
        let on = self.last_on_ns.load(Ordering::Relaxed);
        on.saturating_sub(self.born_ns).saturating_sub(self.run_ns.load(Ordering::Relaxed))
    }

    /// [`Thread::off_cpu_ns`] as it was when this thread last blocked while borrowing a CPU
    /// ([`crate::Scheduler::pin_call`]). A borrowing thread's off-CPU time does not change
    /// while it borrows (only a switch back in adds to it), so for a pinned call whose body
    /// blocked this is the value at the call's start: the off-CPU mark the fast path does
    /// not take (`off_cpu_ns()` afterwards, less this, is the time it spent switched away).
    pub fn borrow_off_mark_ns(&self) -> u64 {
        self.borrow_off_ns.load(Ordering::Relaxed)
    }
}

/// Owner's handle to a spawned thread; [`JoinHandle::join`] waits for it to exit.
pub struct JoinHandle<E: SchedEnv> {
    pub(crate) thread: Arc<Thread<E>>,
}

impl<E: SchedEnv> JoinHandle<E> {
    /// The thread.
    pub fn thread(&self) -> &Arc<Thread<E>> {
        &self.thread
    }

    /// Sleeps until the thread has exited.
    pub fn join(self) {
        let t = self.thread;
        t.sched.join_thread(&t);
    }
}
