//! # Threads and scheduling
//!
//! Kernel threads with priorities ([`Priority`]: larger is more urgent; the top of the range
//! is reserved for interrupt and soft-interrupt threads), one run queue per CPU, preemption
//! on the clock tick and when a more urgent thread becomes runnable (on another CPU: by a
//! reschedule IPI), round-robin within a priority, sleep/wakeup, exit and join, binding to a
//! CPU, and idle threads that halt.
//!
//! ## Protocol
//!
//! * The kernel owns one `static SCHED: Scheduler<TheMachine>`. Each CPU calls
//!   [`Scheduler::init_cpu`] once, on its boot stack, which turns the boot context into that
//!   CPU's idle thread; then it calls [`Scheduler::idle_loop`] and never comes back.
//! * The arch code calls [`Scheduler::intr_enter`] / [`Scheduler::intr_exit`] around every
//!   interrupt handler (interrupts disabled), and [`Scheduler::tick`] from the clock
//!   interrupt. `intr_exit` is the preemption point for interrupts: it switches away if the
//!   CPU was asked to reschedule and the interrupted thread allows preemption. Interrupts do
//!   not nest in this model (their gates keep interrupts disabled).
//! * **Locks.** Each CPU's run queue is a [`SpinLock`] taken with interrupts disabled. A CPU
//!   holds its own run-queue lock from picking the next thread until the next thread runs
//!   `finish_switch` — the lock is carried across the switch, as in Linux and NetBSD's
//!   `spc_mutex`. No code holds two run-queue locks at once (migration and stealing release
//!   one before taking the other), so they have no order to get wrong. `JoinState` and the
//!   sleeper list are leaf locks.
//! * **Sleeping** (see [`thread`] for the state word): a thread calls
//!   [`Scheduler::sleep_prepare`], publishes itself wherever a waker will find it, re-checks
//!   its condition, and calls [`Scheduler::sleep_commit`] (or [`Scheduler::sleep_cancel`]).
//!   A waker calls [`Scheduler::wakeup`]. A wakeup between prepare and commit is never lost.
//!   Wakeups may be spurious: sleepers loop on their condition.
//! * **Interrupt wake-ups.** A thread an interrupt handler wakes (`wakeup`, or an interrupt
//!   thread's [`Need`] word) that is placed on the interrupted CPU and outranks the interrupted
//!   thread is *handed off*: it waits in the CPU's hand-off slot, not the run queue, and
//!   `intr_exit` switches to it directly; an exit that cannot preempt queues it (`hand_off`).
//! * **Preemption control** is per thread (`preempt_disable` / `preempt_enable`), so the count
//!   migrates with the thread; the scheduler never preempts a thread whose count is non-zero.
//! * **Pinned interrupt threads** ([`Scheduler::pin_call`]): an interrupt may lend its CPU to
//!   an interrupt thread for one handler run. The scheduler records only that the CPU is
//!   borrowed (the machine's per-CPU pinned context, not null while a pinned call is active); the thread underneath stays its current thread. Everything
//!   else happens only if the interrupt thread blocks (`schedule_borrowed`).
//! * The global allocator must be callable with interrupts disabled (spawning and some wait
//!   lists allocate).
#![no_std]

extern crate alloc;

pub mod event;
pub mod pinned;
pub mod pri;
pub mod runq;
pub mod spin;
pub mod thread;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use machine::{IntrOff, Machine, PinSwitch};

pub use event::{Event, Need};
pub use machine::PinOutcome;
pub use pinned::PinThread;
pub use pri::{Priority, NPRI};
pub use runq::RunQueue;
pub use spin::{SpinGuard, SpinLock};
pub use thread::{HeldLocks, JoinHandle, Thread, ThreadState, MAX_HELD_LOCKS};
use thread::{JoinState, BLOCKED, DEAD, RUNNING, SLEEPING, UNBOUND};

/// Clock ticks a thread may run before an equal-priority thread gets the CPU.
pub const TIMESLICE_TICKS: u32 = 2;

pub use machine::MAX_CPUS;

/// The environment the scheduler runs in: the SPL layer's ([`ipl::SplEnv`]) plus the
/// scheduler instance and the check made before every sleep. Its machine provides the pinned
/// switch ([`PinSwitch`]) as well.
///
/// The scheduler asks the SPL layer directly whether the running thread may be preempted
/// ([`ipl::SplState::may_preempt`]: only at `IPL_NONE`; otherwise the SPL layer remembers and
/// replays the preemption at the drop to `IPL_NONE`).
pub trait SchedEnv: ipl::SplEnv<M: PinSwitch> {
    /// The scheduler instance.
    fn sched() -> &'static Scheduler<Self>;
    /// The SPL state instance.
    fn spl() -> &'static ipl::SplState<Self>;
    /// Runs before the current thread blocks (interrupts disabled): panics, naming the
    /// culprit, if it must not sleep here (a filter, interrupt context, a spin mutex held, a
    /// raised level; `intr::path::sleep_check` is the portable implementation), and lets the
    /// interrupt models react to a blocking handler (pool divorce).
    fn sleep_check();
    /// Per-thread state a layer above keeps in every thread, allocated with the thread and
    /// dropped with it; the scheduler never looks inside. The `sync` crate's turnstile links
    /// (`sync::turnstile::TsLinks`: the turnstile each thread brings, as Solaris' `t_ts` and
    /// FreeBSD's `td_turnstile`, and the thread's place in the priority-inheritance graph).
    type ThreadExt: Default + Send + Sync + 'static;
}

/// Stack size of a kernel thread.
pub const STACK_SIZE: usize = 32 * 1024;

/// Why `schedule` was called.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Reason {
    /// Interrupt exit or preempt_enable with `need_resched`: switch only to a more urgent
    /// thread, or to an equal one when the time slice ran out.
    Preempt,
    /// Voluntary: an equal-priority thread may run.
    Yield,
    /// `sleep_commit`: leave the CPU unless a wakeup already came.
    Block,
    /// Thread exit.
    Exit,
    /// An interrupt thread that blocked during a pinned call is done: off the CPU for good.
    Park,
}

/// Per-CPU scheduler state.
pub struct CpuSched<E: SchedEnv> {
    rq: SpinLock<RunQueue<E>>,
    /// Mirror of the run queue's length, read without the lock for placement decisions.
    nqueued: AtomicUsize,
    /// The priority of the thread on this CPU, read by other CPUs for placement.
    cur_pri: AtomicU8,
    /// Address of this CPU's idle thread (0 before `init_cpu`): the CPU is idle when it is
    /// `running` (`CpuSched::idle_now`), so the switch writes no idle flag.
    idle_addr: AtomicUsize,
    /// Address of the thread on this CPU (for `is_running`: never dereferenced).
    running: AtomicUsize,
    need_resched: AtomicBool,
    /// Clock ticks left in the running thread's time slice; 0: it ran out (an equal-priority
    /// thread may take the CPU at the next preemption point).
    slice_left: AtomicU32,
    online: AtomicBool,
    ticks: AtomicU64,
    switches: AtomicU64,
    resched_ipis: AtomicU64,
    /// Set by `kick` (a more urgent thread was queued here), cleared by `schedule`.
    kicked: AtomicBool,
    /// Preemptions that a kick asked for (as opposed to a time slice running out).
    kick_preempts: AtomicU64,
    /// Borrowers preempted (`schedule_borrowed(Preempt)`).
    borrow_preempts: AtomicU64,
    /// The interrupt threads bound to this CPU (`new_ithread`'s leaked descriptors, linked
    /// through `PinThread::next`; push only): `cpu_stats` sums their calls.
    pin_threads: core::sync::atomic::AtomicPtr<pinned::PinThread<E>>,
    /// Threads that went into a timed sleep on this CPU, with their deadline (ns). Unsorted:
    /// few sleep with a timeout. Per CPU, as FreeBSD's per-CPU callout wheels: this CPU's
    /// clock interrupt comes for these deadlines only, and takes only this lock.
    sleepers: SpinLock<Vec<(u64, Arc<Thread<E>>)>>,
    /// Earliest deadline in `sleepers` (u64::MAX when empty), read without the lock.
    next_deadline: AtomicU64,
    /// Touched only by this CPU with interrupts disabled.
    local: UnsafeCell<CpuLocal<E>>,
}

struct CpuLocal<E: SchedEnv> {
    /// The running thread (the reference the CPU holds).
    current: Option<Arc<Thread<E>>>,
    idle: Option<Arc<Thread<E>>>,
    /// Thread switched away from, for `finish_switch` to release (null: none).
    prev: *const Thread<E>,
    /// The CPU's reference to `prev` when no run queue took it (it left, migrates, or is
    /// the idle thread), dropped (or queued elsewhere) by `finish_switch`.
    prev_ref: Option<Arc<Thread<E>>>,
    /// `prev` must be queued on this other CPU once off ours (binding). Set only with
    /// `prev_ref`, and taken with it by `finish_switch` (`None` between switches).
    prev_migrate_to: Option<usize>,
    /// A thread an interrupt handler woke to run next here (`hand_off`).
    handoff: Option<Arc<Thread<E>>>,
}

// SAFETY: `local` is accessed only by its own CPU with interrupts disabled; everything else
// is atomic or lock-protected.
unsafe impl<E: SchedEnv> Sync for CpuSched<E> {}

impl<E: SchedEnv> CpuSched<E> {
    const fn new() -> Self {
        CpuSched {
            rq: SpinLock::new(RunQueue::new()),
            nqueued: AtomicUsize::new(0),
            cur_pri: AtomicU8::new(0),
            idle_addr: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            need_resched: AtomicBool::new(false),
            slice_left: AtomicU32::new(TIMESLICE_TICKS),
            online: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
            switches: AtomicU64::new(0),
            resched_ipis: AtomicU64::new(0),
            kicked: AtomicBool::new(false),
            kick_preempts: AtomicU64::new(0),
            borrow_preempts: AtomicU64::new(0),
            pin_threads: core::sync::atomic::AtomicPtr::new(core::ptr::null_mut()),
            sleepers: SpinLock::new(Vec::new()),
            next_deadline: AtomicU64::new(u64::MAX),
            local: UnsafeCell::new(CpuLocal {
                current: None,
                idle: None,
                prev: core::ptr::null(),
                prev_ref: None,
                prev_migrate_to: None,
                handoff: None,
            }),
        }
    }

    /// Whether this CPU runs its idle thread (true before `init_cpu`). Read by other CPUs
    /// for placement, as the flag it replaces was.
    #[inline]
    fn idle_now(&self) -> bool {
        self.running.load(Ordering::Relaxed) == self.idle_addr.load(Ordering::Relaxed)
    }

    /// # Safety
    /// Caller runs on this CPU with interrupts disabled and holds no other `&mut` to it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn local(&self) -> &mut CpuLocal<E> {
        // SAFETY: per the contract.
        unsafe { &mut *self.local.get() }
    }
}

/// Counters of one CPU, for tests and `ps`.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuStats {
    /// Clock ticks taken.
    pub ticks: u64,
    /// Context switches made.
    pub switches: u64,
    /// Reschedule IPIs sent to this CPU.
    pub resched_ipis: u64,
    /// Preemptions made because a more urgent thread became runnable here (not slice ends).
    pub kick_preempts: u64,
    /// Pinned switches to interrupt threads (calls that lent the CPU): the sum of the CPU's
    /// interrupt threads' call counts ([`machine::PinCall::calls`]).
    pub pin_switches: u64,
    /// Borrowing interrupt threads preempted by a more urgent thread (each then finished as
    /// an ordinary thread).
    pub borrow_preempts: u64,
    /// Threads waiting in its run queue.
    pub queued: usize,
}

/// The scheduler: all CPUs' run queues and timed-sleep lists.
pub struct Scheduler<E: SchedEnv> {
    cpus: [CpuSched<E>; MAX_CPUS],
    next_id: AtomicU64,
    live_threads: AtomicUsize,
    /// Every thread not yet freed, for `ps` (weak: the list keeps nobody alive).
    all: SpinLock<Vec<Weak<Thread<E>>>>,
}

impl<E: SchedEnv> Default for Scheduler<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: SchedEnv> Scheduler<E> {
    /// A scheduler with no CPU online yet.
    pub const fn new() -> Self {
        Scheduler {
            cpus: [const { CpuSched::new() }; MAX_CPUS],
            next_id: AtomicU64::new(1),
            live_threads: AtomicUsize::new(0),
            all: SpinLock::new(Vec::new()),
        }
    }

    fn this_cpu(&self) -> &CpuSched<E> {
        // A CPU index is below MAX_CPUS (a power of two): the mask is the bounds test.
        &self.cpus[E::M::cpu_index() & (MAX_CPUS - 1)]
    }

    /// This CPU's state through the machine's scheduler word (one load), for a CPU that has
    /// run `init_cpu` (`None` before).
    #[inline(always)]
    fn this_cpu_word(&self) -> Option<&CpuSched<E>> {
        let p = E::M::sched_word() as *const CpuSched<E>;
        debug_assert!(p.is_null() || core::ptr::eq(p, self.this_cpu()), "sched_word: another CPU's state");
        // SAFETY: non-null, it is what `init_cpu` stored on this CPU: the address of this
        // CPU's element of `self.cpus` (there is one scheduler: `E::sched()`, static).
        unsafe { p.as_ref() }
    }

    fn new_thread(
        &'static self,
        name: String,
        pri: Priority,
        bound: Option<usize>,
        is_idle: bool,
        stack: Option<Box<[u64]>>,
        ctx: <E::M as Machine>::Context,
    ) -> Thread<E> {
        let now = E::M::now_ns();
        Thread {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            name,
            sched: self,
            base_pri: AtomicU8::new(pri.get()),
            pri: AtomicU8::new(pri.get()),
            state: AtomicU8::new(RUNNING),
            on_cpu: AtomicBool::new(false),
            cpu: AtomicUsize::new(bound.unwrap_or_else(E::M::cpu_index)),
            bound: AtomicUsize::new(bound.unwrap_or(UNBOUND)),
            is_idle,
            preempt_count: AtomicU32::new(0),
            ctx: UnsafeCell::new(ctx),
            _stack: stack,
            start: UnsafeCell::new(None),
            rq_next: UnsafeCell::new(thread::RQ_UNLINKED.cast()),
            join: SpinLock::new(JoinState { exited: false, joiner: None }),
            held: SpinLock::new(thread::HeldLocks::new()),
            switches: AtomicU64::new(0),
            run_ns: AtomicU64::new(0),
            last_on_ns: AtomicU64::new(now),
            born_ns: now,
            borrow_off_ns: AtomicU64::new(0),
            ext: E::ThreadExt::default(),
        }
    }

    /// Makes the calling context (a CPU's boot stack) this CPU's idle thread.
    ///
    /// Called once per CPU, with interrupts disabled, before the CPU takes interrupts that
    /// reach the scheduler.
    pub fn init_cpu(&'static self, io: &IntrOff) {
        let cpu = E::M::cpu_index();
        let mut name = String::from("idle/");
        push_decimal(&mut name, cpu as u64);
        let idle =
            Arc::new(self.new_thread(name, Priority::IDLE, Some(cpu), true, None, E::M::empty_context()));
        idle.on_cpu.store(true, Ordering::Relaxed);
        let c = &self.cpus[cpu];
        E::M::set_curthread(Arc::as_ptr(&idle) as *const (), io);
        E::M::set_sched_word(c as *const CpuSched<E> as usize, io);
        // SAFETY: we are on `cpu` with interrupts disabled.
        let local = unsafe { c.local() };
        self.register(&idle, io);
        local.idle = Some(idle.clone());
        local.current = Some(idle);
        c.cur_pri.store(Priority::IDLE.get(), Ordering::Relaxed);
        c.idle_addr.store(E::M::curthread() as usize, Ordering::Relaxed);
        c.running.store(E::M::curthread() as usize, Ordering::Relaxed);
        c.online.store(true, Ordering::Release);
    }

    /// Whether `cpu` has called [`Scheduler::init_cpu`].
    pub fn cpu_online(&self, cpu: usize) -> bool {
        cpu < MAX_CPUS && self.cpus[cpu].online.load(Ordering::Acquire)
    }

    /// The idle loop: run whatever is runnable, steal from busy CPUs, halt otherwise.
    pub fn idle_loop(&'static self) -> ! {
        loop {
            let io = E::M::intr_disable();
            let c = self.this_cpu();
            if c.nqueued.load(Ordering::Relaxed) == 0 {
                self.steal(&io);
            }
            if c.nqueued.load(Ordering::Relaxed) > 0 || c.need_resched.load(Ordering::Relaxed) {
                self.schedule(Reason::Yield, &io);
            } else {
                E::M::wait_for_interrupt(&io);
            }
            drop(io);
        }
    }

    /// Moves one unbound runnable thread from the busiest other CPU to this one.
    fn steal(&'static self, io: &IntrOff) {
        let me = E::M::cpu_index();
        let n = E::M::ncpus();
        let mut victim = None;
        let mut most = 0;
        for cpu in (0..n).filter(|&c| c != me) {
            let q = self.cpus[cpu].nqueued.load(Ordering::Relaxed);
            if q > most {
                most = q;
                victim = Some(cpu);
            }
        }
        let Some(v) = victim else { return };
        let stolen = {
            let mut rq = self.cpus[v].rq.lock(io);
            let t = rq.pop_highest_where(|t| t.bound.load(Ordering::Relaxed) == UNBOUND);
            self.cpus[v].nqueued.store(rq.len(), Ordering::Relaxed);
            t
        };
        if let Some(t) = stolen {
            self.enqueue(t, me, io);
        }
    }

    /// Creates a thread that runs `f` and exits, and makes it runnable.
    ///
    /// `bound`: the CPU it must always run on, or `None` to let the scheduler place it.
    pub fn spawn(
        &'static self,
        name: &str,
        pri: Priority,
        bound: Option<usize>,
        f: impl FnOnce() + Send + 'static,
    ) -> JoinHandle<E> {
        assert!(bound.is_none_or(|c| self.cpu_online(c)), "spawn({name}): CPU {bound:?} is not online");
        let words = STACK_SIZE / 8;
        let mut stack = alloc::vec![0u64; words].into_boxed_slice();
        let top = stack.as_mut_ptr() as usize + words * 8;
        let t = Arc::new(self.new_thread(
            String::from(name),
            pri,
            bound,
            false,
            Some(stack),
            E::M::empty_context(),
        ));
        let ctx = E::M::new_context(top, thread_start::<E>, Arc::as_ptr(&t) as *const ());
        // SAFETY: the thread is not visible to any other CPU yet; we are its only user.
        unsafe {
            *t.ctx.get() = ctx;
            *t.start.get() = Some(Box::new(f));
        }
        self.live_threads.fetch_add(1, Ordering::Relaxed);
        let io = E::M::intr_disable();
        self.register(&t, &io);
        let target = self.select_cpu(&t);
        self.enqueue(t.clone(), target, &io);
        drop(io);
        self.preempt_check();
        JoinHandle { thread: t }
    }

    fn register(&self, t: &Arc<Thread<E>>, io: &IntrOff) {
        let mut all = self.all.lock(io);
        if all.len() >= 64 && all.len().is_power_of_two() {
            all.retain(|w| w.strong_count() > 0);
        }
        all.push(Arc::downgrade(t));
    }

    /// Calls `f` for every thread that still exists (running, runnable, sleeping, or exited
    /// but not yet freed), oldest first. `f` runs without scheduler locks held.
    pub fn for_each_thread(&self, mut f: impl FnMut(&Thread<E>)) {
        let snapshot: Vec<Arc<Thread<E>>> = {
            let io = E::M::intr_disable();
            let all = self.all.lock(&io);
            all.iter().filter_map(Weak::upgrade).collect()
        };
        for t in &snapshot {
            f(t);
        }
    }

    /// Number of spawned threads that have not exited.
    pub fn live_threads(&self) -> usize {
        self.live_threads.load(Ordering::Relaxed)
    }

    /// Picks the CPU a thread that becomes runnable should be queued on.
    fn select_cpu(&self, t: &Thread<E>) -> usize {
        if let Some(b) = t.bound_cpu() {
            return b;
        }
        let n = E::M::ncpus();
        let last = t.cpu.load(Ordering::Relaxed).min(n - 1);
        let pri = t.pri.load(Ordering::Relaxed);
        let idle = |c: usize| {
            let cs = &self.cpus[c];
            cs.online.load(Ordering::Relaxed) && cs.idle_now() && cs.nqueued.load(Ordering::Relaxed) == 0
        };
        if idle(last) {
            return last;
        }
        // An idle CPU, scanning from the one after `last` so load spreads.
        for i in 1..n {
            let c = (last + i) % n;
            if idle(c) {
                return c;
            }
        }
        // A CPU running something less urgent, which we will preempt.
        for i in 0..n {
            let c = (last + i) % n;
            let cs = &self.cpus[c];
            if cs.online.load(Ordering::Relaxed) && cs.cur_pri.load(Ordering::Relaxed) < pri {
                return c;
            }
        }
        // The shortest queue.
        (0..n)
            .filter(|&c| self.cpus[c].online.load(Ordering::Relaxed))
            .min_by_key(|&c| self.cpus[c].nqueued.load(Ordering::Relaxed))
            .unwrap_or(last)
    }

    /// Queues a runnable thread on `cpu` and asks that CPU to reschedule if it now has
    /// something more urgent than what it runs.
    fn enqueue(&self, t: Arc<Thread<E>>, cpu: usize, io: &IntrOff) {
        let pri = t.pri.load(Ordering::Relaxed);
        t.cpu.store(cpu, Ordering::Relaxed);
        let c = &self.cpus[cpu];
        {
            let mut rq = c.rq.lock(io);
            rq.push_back(t);
            c.nqueued.store(rq.len(), Ordering::Relaxed);
        }
        if pri > c.cur_pri.load(Ordering::Relaxed) || c.idle_now() {
            self.kick(cpu);
        }
    }

    /// **The direct hand-off** (FreeBSD's `sched_add` with preemption from `ithread_schedule`;
    /// NetBSD's interrupt-to-LWP switch): an interrupt handler on this CPU wakes a thread
    /// that is to run here and outranks the interrupted one — an interrupt thread, usually.
    /// It goes into this CPU's hand-off slot, not the run queue, and the interrupt's exit
    /// (`intr_exit`, the preemption point) switches to it straight from the slot: no queue
    /// insertion and removal, no other CPU told. If the exit cannot preempt (the interrupted
    /// thread holds preemption off or a raised level), or a borrowed CPU's pinned thread is
    /// underneath, the exit moves it to the run queue like any woken thread (so the slot
    /// never outlives the interrupt); `schedule` for any other reason queues it first.
    /// Interrupts disabled (the caller's token); false if the rule does not apply.
    #[inline]
    fn hand_off(&self, t: &Arc<Thread<E>>, target: usize) -> bool {
        let cpu = E::M::cpu_index();
        let c = self.this_cpu();
        // SAFETY: this CPU, interrupts disabled (the caller holds the token).
        let local = unsafe { c.local() };
        if target != cpu
            || E::M::intr_depth() == 0
            || E::M::is_borrower()
            || local.handoff.is_some()
            || t.pri.load(Ordering::Relaxed) <= c.cur_pri.load(Ordering::Relaxed)
        {
            return false;
        }
        t.cpu.store(cpu, Ordering::Relaxed);
        // Empty: tested above.
        put_empty(&mut local.handoff, Some(t.clone()));
        c.kicked.store(true, Ordering::Relaxed);
        c.need_resched.store(true, Ordering::Relaxed);
        true
    }

    /// Moves a thread left in this CPU's hand-off slot to its run queue (run-queue lock not
    /// held; interrupts disabled).
    #[cold]
    fn spill_handoff(&self, c: &CpuSched<E>, io: &IntrOff) {
        // SAFETY: this CPU, interrupts disabled.
        if let Some(t) = unsafe { c.local() }.handoff.take() {
            let mut rq = c.rq.lock(io);
            rq.push_back(t);
            c.nqueued.store(rq.len(), Ordering::Relaxed);
        }
    }

    /// Asks `cpu` to reschedule: a flag for ourselves, a flag and an IPI for another CPU.
    fn kick(&self, cpu: usize) {
        let c = &self.cpus[cpu];
        c.kicked.store(true, Ordering::Release);
        let was = c.need_resched.swap(true, Ordering::AcqRel);
        if cpu != E::M::cpu_index() && !was {
            c.resched_ipis.fetch_add(1, Ordering::Relaxed);
            E::M::send_resched(cpu);
        } else if cpu != E::M::cpu_index() && c.idle_now() {
            // An idle CPU may be halted with the flag already set by an earlier kick whose
            // IPI it consumed before halting; IPIs are cheap compared to a lost wakeup.
            E::M::send_resched(cpu);
        }
    }

    /// The running thread.
    pub fn current(&self) -> &Thread<E> {
        let p = E::M::curthread() as *const Thread<E>;
        // SAFETY: `curthread` is set by `init_cpu` and `schedule` to a thread that the CPU
        // holds a reference to for as long as it runs; the caller *is* that thread, so the
        // object outlives this borrow (a thread cannot drop itself while running).
        unsafe { &*p }
    }

    /// A counted reference to the running thread.
    pub fn current_arc(&self) -> Arc<Thread<E>> {
        let p = E::M::curthread() as *const Thread<E>;
        // SAFETY: as in `current`; the CPU holds one strong count for the running thread, so
        // incrementing it from a borrowed pointer is sound.
        unsafe {
            Arc::increment_strong_count(p);
            Arc::from_raw(p)
        }
    }

    /// Forbids preemption of the calling thread until the matching [`Scheduler::preempt_enable`].
    pub fn preempt_disable(&self) {
        self.current().preempt_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Re-allows preemption; reschedules now if a more urgent thread is waiting.
    pub fn preempt_enable(&'static self) {
        let old = self.current().preempt_count.fetch_sub(1, Ordering::Relaxed);
        assert!(old > 0, "preempt_enable without preempt_disable");
        if old == 1 {
            self.preempt_check();
        }
    }

    /// May the current thread be preempted now? Only at `IPL_NONE` (the SPL layer records
    /// a refused preemption and replays it at the drop to `IPL_NONE`) — or, for a thread
    /// borrowing its CPU ([`Scheduler::pin_call`]), at its call's level with no spin mutex
    /// held (the state in which it may block: `schedule_borrowed` then makes it an ordinary
    /// runnable thread if something more urgent waits). A borrower above that is asked again
    /// at the next interrupt's exit.
    #[inline]
    fn gate_open(&self, io: &IntrOff) -> bool {
        // A borrower is never at `IPL_NONE`: the usual case stays one test.
        E::spl().may_preempt(io) || self.borrower_preemptible()
    }

    /// [`Scheduler::gate_open`] above `IPL_NONE`: whether the running thread borrows its CPU
    /// and is at its call's level with no spin mutex.
    #[cold]
    #[inline(never)]
    fn borrower_preemptible(&self) -> bool {
        let spl = E::spl();
        E::M::is_borrower() && spl.spin_count() == 0 && self.borrow_level() == Some(spl.current() as usize)
    }

    /// Switches away now if this CPU was asked to reschedule and we may be preempted.
    pub fn preempt_check(&'static self) {
        if !E::M::intr_enabled() {
            return; // the caller's interrupt-disabled section ends in an interrupt or schedule
        }
        let io = E::M::intr_disable();
        let c = self.this_cpu();
        if c.need_resched.load(Ordering::Relaxed)
            && E::M::intr_depth() == 0
            && self.current().preempt_count.load(Ordering::Relaxed) == 0
            && self.gate_open(&io)
        {
            self.schedule(Reason::Preempt, &io);
        }
    }

    /// Gives the CPU to another runnable thread of equal or higher priority, if any.
    pub fn yield_now(&'static self) {
        let io = E::M::intr_disable();
        self.schedule(Reason::Yield, &io);
    }

    /// Binds the calling thread to `cpu` (or unbinds with `None`) and moves it there.
    pub fn bind_current(&'static self, cpu: Option<usize>) {
        // Bound so already (an interrupt thread serving the same CPU again): nothing changes,
        // and a CPU it was bound to passed the online test then.
        if self.current().bound.load(Ordering::Relaxed) == cpu.unwrap_or(UNBOUND)
            && cpu.is_none_or(|c| c == E::M::cpu_index())
        {
            return;
        }
        if let Some(c) = cpu {
            assert!(self.cpu_online(c), "bind_current: CPU {c} is not online");
        }
        self.current().bound.store(cpu.unwrap_or(UNBOUND), Ordering::Relaxed);
        if cpu.is_some_and(|c| c != E::M::cpu_index()) {
            self.yield_now();
        }
    }

    /// Binds (or unbinds) another thread: takes effect when it is next placed (a sleeping
    /// thread: at its wakeup). The interrupt pool uses it to send an idle ithread to a CPU.
    #[inline]
    pub fn bind_thread(&self, t: &Thread<E>, cpu: Option<usize>) {
        // Bound so already: nothing changes (the CPU passed the online test then).
        if t.bound.load(Ordering::Relaxed) == cpu.unwrap_or(UNBOUND) {
            return;
        }
        if let Some(c) = cpu {
            assert!(self.cpu_online(c), "bind_thread: CPU {c} is not online");
        }
        t.bound.store(cpu.unwrap_or(UNBOUND), Ordering::Relaxed);
    }

    /// The CPU the caller runs on (may change right after unless preemption is disabled).
    pub fn cpu_index(&self) -> usize {
        E::M::cpu_index()
    }

    /// First half of going to sleep: mark the current thread SLEEPING. Interrupts must be
    /// disabled from here to `sleep_commit`/`sleep_cancel` (the proof says so).
    pub fn sleep_prepare(&self, _io: &IntrOff) {
        self.current().state.store(SLEEPING, Ordering::SeqCst);
        // Pairs with the fence in `wakeup_locked`: the sleeper's later load of its condition
        // (a grant flag, a woken flag, written with Release by a waker) and the waker's load
        // of this state cannot both miss the other's store (store buffering; the loom model
        // of the turnstile hand-off found the lost wakeup without these fences).
        core::sync::atomic::fence(Ordering::SeqCst);
    }

    /// Second half: leave the CPU until a wakeup (returns at once if one already came).
    pub fn sleep_commit(&'static self, io: &IntrOff) {
        self.run_sleep_check();
        self.schedule(Reason::Block, io);
    }

    /// Like [`Scheduler::sleep_commit`], but a timeout wakes the thread at `deadline_ns`
    /// (`u64::MAX`: no timeout). Returns early on any wakeup; callers re-check.
    pub fn sleep_commit_deadline(&'static self, deadline_ns: u64, io: &IntrOff) {
        self.run_sleep_check();
        // The CPU whose list holds the timeout (the thread may wake up on another).
        let cpu = E::M::cpu_index() & (MAX_CPUS - 1);
        if deadline_ns != u64::MAX {
            let c = &self.cpus[cpu];
            let mut s = c.sleepers.lock(io);
            s.push((deadline_ns, self.current_arc()));
            c.next_deadline.fetch_min(deadline_ns, Ordering::Relaxed);
            drop(s);
            // This CPU's clock interrupt comes at the deadline (or earlier), not only at the
            // next periodic tick; it wakes every sleeper of this CPU that is due
            // (`expire_timeouts`).
            E::M::arm_timer(deadline_ns, io);
        }
        self.schedule(Reason::Block, io);
        if deadline_ns != u64::MAX {
            // Woken (or timed out): drop our timeout entry so the list stays short, and the
            // CPU's next deadline with it (woken early, from anywhere, the deadline would
            // otherwise still bring that CPU a clock interrupt for a sleep that is over).
            let me = E::M::curthread() as *const Thread<E>;
            let c = &self.cpus[cpu];
            let mut s = c.sleepers.lock(io);
            s.retain(|(_, t)| !core::ptr::eq(Arc::as_ptr(t), me));
            c.next_deadline.store(s.iter().map(|(d, _)| *d).min().unwrap_or(u64::MAX), Ordering::Relaxed);
        }
    }

    fn run_sleep_check(&self) {
        E::sleep_check();
    }

    /// Whether the thread at address `t` is on some CPU right now. The address is only
    /// compared, never dereferenced, so it is safe to ask about a thread that may have
    /// exited (the adaptive mutex asks about a lock owner it holds no reference to).
    pub fn is_running(&self, t: *const ()) -> bool {
        let t = t as usize;
        (0..E::M::ncpus()).any(|c| {
            let cs = &self.cpus[c];
            // A CPU lent to an interrupt thread runs that thread, not the one pinned under it
            // (an ithread must block on, not spin for, a lock its pinned thread holds).
            match E::M::borrower_of(c) {
                0 => cs.running.load(Ordering::Relaxed) == t,
                b => b == t,
            }
        })
    }

    /// Changes a thread's effective priority (priority inheritance lends and withdraws
    /// through here): requeues it if it waits in a run queue, and asks its CPU to reschedule
    /// if the change makes something else more urgent there.
    pub fn set_priority(&'static self, t: &Thread<E>, pri: Priority) {
        let io = E::M::intr_disable();
        loop {
            let cpu = t.cpu.load(Ordering::Acquire);
            let c = &self.cpus[cpu];
            let mut rq = c.rq.lock(&io);
            if t.cpu.load(Ordering::Acquire) != cpu {
                continue; // moved while we took the lock
            }
            if let Some(queued) = rq.remove(t) {
                t.pri.store(pri.get(), Ordering::Relaxed);
                rq.push_back(queued);
                drop(rq);
                if pri.get() > c.cur_pri.load(Ordering::Relaxed) {
                    self.kick(cpu);
                }
                return;
            }
            let old = t.pri.swap(pri.get(), Ordering::Relaxed);
            if c.running.load(Ordering::Relaxed) == t as *const Thread<E> as usize {
                c.cur_pri.store(pri.get(), Ordering::Relaxed);
                if pri.get() < old && rq.highest().is_some_and(|h| h > pri) {
                    drop(rq);
                    self.kick(cpu);
                }
            }
            return;
        }
    }

    /// Sets the running thread's base priority, and its effective one unless waiters lend it
    /// more. The caller holds no lock another thread could wait on: the priority-inheritance
    /// book records a waiter's view of its owner's base when it blocks, so an owner's base
    /// must not change under it. An interrupt thread calls this between handler runs, to
    /// take on the priority of the source it serves next. Lowering it lets a more urgent
    /// runnable thread preempt at once.
    pub fn set_own_priority(&'static self, pri: Priority) {
        let me = self.current();
        let old_base = me.base_pri.swap(pri.get(), Ordering::Relaxed);
        if me.pri.load(Ordering::Relaxed) == old_base {
            self.set_priority(me, pri);
        }
        self.preempt_check();
    }

    /// Abandons a prepared sleep (the condition turned out to hold).
    pub fn sleep_cancel(&self, _io: &IntrOff) {
        self.current().state.store(RUNNING, Ordering::SeqCst);
    }

    /// Makes `t` runnable if it sleeps. Returns whether it was asleep (or about to sleep).
    /// Callable from any context, including interrupt handlers.
    pub fn wakeup(&'static self, t: &Arc<Thread<E>>) -> bool {
        let woke = {
            let io = E::M::intr_disable();
            self.wakeup_locked(t, &io)
        };
        if woke {
            self.preempt_check();
        }
        woke
    }

    pub(crate) fn wakeup_locked(&'static self, t: &Arc<Thread<E>>, io: &IntrOff) -> bool {
        // See `sleep_prepare`: the waker's condition store is ordered before this state load.
        core::sync::atomic::fence(Ordering::SeqCst);
        loop {
            match t.state.load(Ordering::SeqCst) {
                SLEEPING => {
                    if t.state.compare_exchange(SLEEPING, RUNNING, Ordering::SeqCst, Ordering::SeqCst).is_ok()
                    {
                        return true;
                    }
                }
                BLOCKED => {
                    if t.state.compare_exchange(BLOCKED, RUNNING, Ordering::SeqCst, Ordering::SeqCst).is_ok()
                    {
                        trace::emit::<E::M>(trace::Kind::Wakeup, Arc::as_ptr(t) as u64);
                        // A bound thread (an interrupt thread, usually) goes to its CPU
                        // without the call into the placement search.
                        let target = match t.bound_cpu() {
                            Some(b) => b,
                            None => self.select_cpu(t),
                        };
                        if !self.hand_off(t, target) {
                            self.enqueue(t.clone(), target, io);
                        }
                        return true;
                    }
                }
                _ => return false,
            }
        }
    }

    /// Sleeps for at least `ns` nanoseconds: woken by the clock interrupt its deadline arms on
    /// this CPU ([`Machine::arm_timer`]; a machine with only a periodic clock ends it at the
    /// first tick after the deadline).
    pub fn sleep_ns(&'static self, ns: u64) {
        self.sleep_until(E::M::now_ns().saturating_add(ns));
    }

    /// Sleeps until [`Machine::now_ns`] reaches `deadline` (at once if it has): a periodic
    /// thread's next release, free of the drift that `sleep_ns` from "now" would add.
    pub fn sleep_until(&'static self, deadline: u64) {
        while E::M::now_ns() < deadline {
            let io = E::M::intr_disable();
            self.sleep_prepare(&io);
            self.sleep_commit_deadline(deadline, &io);
        }
    }

    fn join_thread(&'static self, t: &Arc<Thread<E>>) {
        let me = self.current_arc();
        assert!(!Arc::ptr_eq(&me, t), "thread {} tried to join itself", t.name);
        loop {
            let io = E::M::intr_disable();
            self.sleep_prepare(&io);
            {
                let mut j = t.join.lock(&io);
                if j.exited {
                    drop(j);
                    self.sleep_cancel(&io);
                    return;
                }
                j.joiner = Some(me.clone());
            }
            self.sleep_commit(&io);
        }
    }

    /// Ends the calling thread. Its joiner, if any, is woken.
    pub fn exit(&'static self) -> ! {
        let me = self.current_arc();
        assert!(!me.is_idle, "an idle thread cannot exit");
        let io = E::M::intr_disable();
        // Dead and uncounted before the joiner can run: whoever `join` returns to sees it so.
        self.live_threads.fetch_sub(1, Ordering::Relaxed);
        me.state.store(DEAD, Ordering::SeqCst);
        let joiner = {
            let mut j = me.join.lock(&io);
            j.exited = true;
            j.joiner.take()
        };
        if let Some(w) = joiner {
            self.wakeup_locked(&w, &io);
        }
        drop(me);
        self.schedule(Reason::Exit, &io);
        unreachable!("a dead thread was switched back in");
    }

    /// Called by the arch code on entry to every interrupt handler (interrupts disabled).
    pub fn intr_enter(&self, _io: &IntrOff) {
        E::M::intr_depth_enter();
    }

    /// Called by the arch code when an interrupt handler is done, before the return to the
    /// interrupted code (interrupts disabled): the interrupt preemption point.
    pub fn intr_exit(&'static self, io: &IntrOff) {
        let c = self.this_cpu();
        let depth = E::M::intr_depth_exit();
        if depth == 0
            && c.need_resched.load(Ordering::Relaxed)
            && self.current().preempt_count.load(Ordering::Relaxed) == 0
            && self.gate_open(io)
        {
            self.schedule(Reason::Preempt, io);
        }
        // SAFETY: this CPU, interrupts disabled.
        if depth == 0 && unsafe { c.local() }.handoff.is_some() {
            // Not switched to (the exit could not preempt, or the CPU is borrowed): queued.
            self.spill_handoff(c, io);
        }
    }

    /// Whether this CPU is running an interrupt handler in interrupt context. An interrupt
    /// thread borrowing the CPU ([`Scheduler::pin_call`]) runs in thread context although the
    /// interrupt that lent it the CPU is still underneath: the machine's pinned call sets that
    /// interrupt's depth ([`machine::Machine::intr_depth`]) aside for the call, so this answers
    /// `false` for the borrower and `true` for an interrupt nested inside it.
    #[inline]
    pub fn in_interrupt(&self) -> bool {
        E::M::intr_depth() > 0
    }

    /// The clock interrupt's share: time slices and timed sleeps. Interrupts disabled.
    pub fn tick(&'static self, io: &IntrOff) {
        let c = self.this_cpu();
        c.ticks.fetch_add(1, Ordering::Relaxed);
        if E::M::is_borrower()
            && self.current().pri.load(Ordering::Relaxed) < c.cur_pri.load(Ordering::Relaxed)
        {
            // A borrower less urgent than the thread it pinned (a soft interrupt on top of an
            // interrupt thread that runs as an ordinary thread): it gives the CPU back at this
            // tick's exit (`schedule_borrowed`), as it does for a more urgent queued thread.
            c.need_resched.store(true, Ordering::Relaxed);
        }
        if !c.idle_now() {
            let left = c.slice_left.load(Ordering::Relaxed);
            if left <= 1 {
                c.slice_left.store(0, Ordering::Relaxed);
                if c.nqueued.load(Ordering::Relaxed) > 0 {
                    c.need_resched.store(true, Ordering::Relaxed);
                }
            } else {
                c.slice_left.store(left - 1, Ordering::Relaxed);
            }
        }
        self.expire_timeouts(io);
    }

    /// Wakes every thread whose timed sleep on this CPU is due. Called by
    /// [`Scheduler::tick`], and by a clock interrupt that a sleep's deadline asked for
    /// ([`Machine::arm_timer`]) between ticks.
    pub fn expire_timeouts(&'static self, io: &IntrOff) {
        let now = E::M::now_ns();
        let c = self.this_cpu();
        if now >= c.next_deadline.load(Ordering::Relaxed) {
            let mut due: Vec<Arc<Thread<E>>> = Vec::new();
            {
                let mut s = c.sleepers.lock(io);
                let mut next = u64::MAX;
                s.retain(|(d, t)| {
                    if *d <= now {
                        due.push(t.clone());
                        false
                    } else {
                        next = next.min(*d);
                        true
                    }
                });
                c.next_deadline.store(next, Ordering::Relaxed);
            }
            for t in &due {
                self.wakeup_locked(t, io);
            }
        }
    }

    /// The earliest deadline of a timed sleep on any CPU (`now_ns` time), if any thread
    /// sleeps with a timeout. (Read without the locks: a sleep committed concurrently on
    /// another CPU may be missed, but that CPU is running and arms its own clock for it.)
    pub fn next_timeout_ns(&self) -> Option<u64> {
        match self.cpus.iter().map(|c| c.next_deadline.load(Ordering::Relaxed)).min() {
            Some(u64::MAX) | None => None,
            d => d,
        }
    }

    /// The earliest deadline of a timed sleep that went to sleep on this CPU, if any: what
    /// this CPU's clock must interrupt for besides its periodic tick (its clock interrupt
    /// wakes this CPU's sleepers only, [`Scheduler::expire_timeouts`]).
    pub fn next_timeout_here_ns(&self) -> Option<u64> {
        match self.this_cpu().next_deadline.load(Ordering::Relaxed) {
            u64::MAX => None,
            d => Some(d),
        }
    }

    /// Counters of `cpu`.
    pub fn cpu_stats(&self, cpu: usize) -> CpuStats {
        let c = &self.cpus[cpu];
        CpuStats {
            ticks: c.ticks.load(Ordering::Relaxed),
            switches: c.switches.load(Ordering::Relaxed),
            resched_ipis: c.resched_ipis.load(Ordering::Relaxed),
            kick_preempts: c.kick_preempts.load(Ordering::Relaxed),
            pin_switches: self.pin_calls_on(c),
            borrow_preempts: c.borrow_preempts.load(Ordering::Relaxed),
            queued: c.nqueued.load(Ordering::Relaxed),
        }
    }

    /// The core: pick the next thread for this CPU and switch to it. One copy of the body per
    /// frequent reason (a yield, a preemption, a block), so that none of them tests the
    /// reason at run time; exit and park share one.
    #[inline(always)]
    fn schedule(&'static self, reason: Reason, io: &IntrOff) {
        match reason {
            Reason::Yield => self.schedule_yield(io),
            Reason::Preempt => self.schedule_preempt(io),
            Reason::Block => self.schedule_block(io),
            Reason::Exit | Reason::Park => self.schedule_leave(reason, io),
        }
    }

    #[inline(never)]
    fn schedule_yield(&'static self, io: &IntrOff) {
        self.schedule_body(Reason::Yield, io);
    }

    #[inline(never)]
    fn schedule_preempt(&'static self, io: &IntrOff) {
        self.schedule_body(Reason::Preempt, io);
    }

    #[inline(never)]
    fn schedule_block(&'static self, io: &IntrOff) {
        self.schedule_body(Reason::Block, io);
    }

    #[inline(never)]
    fn schedule_leave(&'static self, reason: Reason, io: &IntrOff) {
        self.schedule_body(reason, io);
    }

    /// `schedule`'s body, inlined into each of its copies.
    #[inline(always)]
    fn schedule_body(&'static self, reason: Reason, io: &IntrOff) {
        let cpu = E::M::cpu_index();
        if E::M::is_borrower() {
            self.schedule_borrowed(reason, io);
            return;
        }
        let c = self.this_cpu_word().expect("schedule before init_cpu");
        c.rq.raw_lock();
        // SAFETY: we hold our run-queue lock (raw) and create no guard while using it.
        let rq = unsafe { c.rq.get_locked() };
        // SAFETY: this CPU, interrupts disabled.
        let local = unsafe { c.local() };
        // The CPU's reference to the running thread moves (no count changes): to the run
        // queue (preempted or yielding), to `local.prev` (leaving, migrating, or idle), or
        // back to `local.current` (no switch).
        let prev = local.current.take().expect("schedule before init_cpu");
        c.need_resched.store(false, Ordering::Relaxed);
        let kicked = c.kicked.swap(false, Ordering::AcqRel);
        // A thread handed off by an interrupt (`hand_off`) runs next if it is still the
        // most urgent and `prev` is preempted (or idle); otherwise it is queued first.
        let mut handoff = local.handoff.take();
        if let Some(h) = handoff.take_if(|h| {
            let p = h.pri.load(Ordering::Relaxed);
            !(reason == Reason::Preempt
                && (prev.is_idle
                    || (p > prev.pri.load(Ordering::Relaxed)
                        && matches!(prev.bound.load(Ordering::Relaxed), b if b == UNBOUND || b == cpu))))
                || rq.highest().is_some_and(|q| q.get() > p)
        }) {
            rq.push_back(h);
            c.nqueued.store(rq.len(), Ordering::Relaxed);
        }
        if let Some(next) = handoff {
            let p: *const Thread<E> = Arc::as_ptr(&prev);
            if prev.is_idle {
                self.switch_to(c, cpu, p, Some(prev), next, None, reason, false, kicked, io);
            } else {
                rq.push_back(prev);
                c.nqueued.store(rq.len(), Ordering::Relaxed);
                self.switch_to(c, cpu, p, None, next, None, reason, false, kicked, io);
            }
            return;
        }

        let leaving = match reason {
            Reason::Exit | Reason::Park => true,
            Reason::Block => {
                prev.state.compare_exchange(SLEEPING, BLOCKED, Ordering::SeqCst, Ordering::SeqCst).is_ok()
            }
            Reason::Preempt | Reason::Yield => false,
        };
        let mut migrate_to = None;
        let next = if !leaving && !prev.is_idle {
            let bound = prev.bound.load(Ordering::Relaxed);
            if bound != cpu && bound != UNBOUND {
                migrate_to = Some(bound);
                self.pick_next(rq, local)
            } else {
                let mine = prev.pri.load(Ordering::Relaxed);
                let equal_may_run = reason == Reason::Yield || c.slice_left.load(Ordering::Relaxed) == 0;
                let top = match rq.highest() {
                    Some(p) if p.get() > mine || (p.get() == mine && equal_may_run) => p,
                    _ => {
                        put_empty(&mut local.current, Some(prev));
                        c.rq.raw_unlock();
                        return;
                    }
                };
                // Taking the most urgent first, then queueing `prev` behind its equals, is
                // the order queueing first would give: `prev` is never the one taken. Among
                // equals (a yield, a slice's end) that is one rotation of their FIFO.
                let p: *const Thread<E> = Arc::as_ptr(&prev);
                let next = if top.get() == mine {
                    rq.rotate(top, prev)
                } else {
                    let next = rq.pop_at(top);
                    rq.push_back(prev);
                    next
                };
                self.switch_to(c, cpu, p, None, next, None, reason, false, kicked, io);
                return;
            }
        } else {
            self.pick_next(rq, local)
        };
        if Arc::ptr_eq(&next, &prev) {
            // The idle thread with nothing queued: it goes on running.
            drop(next);
            put_empty(&mut local.current, Some(prev));
            c.rq.raw_unlock();
            return;
        }
        c.nqueued.store(rq.len(), Ordering::Relaxed);
        let p: *const Thread<E> = Arc::as_ptr(&prev);
        self.switch_to(c, cpu, p, Some(prev), next, migrate_to, reason, leaving, kicked, io);
    }

    /// The most urgent queued thread, else this CPU's idle thread (run-queue lock held).
    #[inline(always)]
    fn pick_next(&self, rq: &mut RunQueue<E>, local: &CpuLocal<E>) -> Arc<Thread<E>> {
        match rq.pop_highest() {
            Some(t) => t,
            None => local.idle.as_ref().expect("no idle thread").clone(),
        }
    }

    /// The second half of `schedule`: switch from `prev` (the running thread; `keep` holds
    /// the CPU's reference to it unless the run queue took it) to `next`, carrying our
    /// run-queue lock to `finish_switch`. The caller has updated `nqueued` if the queue's
    /// length changed (a rotation, or a pop and a push, leave it as it was).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn switch_to(
        &'static self,
        c: &CpuSched<E>,
        cpu: usize,
        prev: *const Thread<E>,
        keep: Option<Arc<Thread<E>>>,
        next: Arc<Thread<E>>,
        migrate_to: Option<usize>,
        reason: Reason,
        leaving: bool,
        kicked: bool,
        io: &IntrOff,
    ) {
        // SAFETY: this CPU, interrupts disabled.
        let local = unsafe { c.local() };
        // SAFETY: `prev` is the running thread: alive at least until `finish_switch` clears
        // its `on_cpu` (a run queue or `keep` holds a reference, and no CPU takes it from a
        // queue before `on_cpu` is clear).
        let pv = unsafe { &*prev };
        // The next thread may still be saving its registers on the CPU it left.
        while next.on_cpu.load(Ordering::Acquire) {
            E::M::relax();
        }
        // Accounting: the run time of `prev`, the switch-on time of `next` (the off-CPU time
        // is derived from these, `Thread::off_cpu_ns`). Only this CPU writes them now.
        let now = E::M::now_ns();
        pv.run_ns.store(
            pv.run_ns.load(Ordering::Relaxed) + now.saturating_sub(pv.last_on_ns.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        next.last_on_ns.store(now, Ordering::Relaxed);
        next.on_cpu.store(true, Ordering::Relaxed);
        next.cpu.store(cpu, Ordering::Relaxed);
        next.switches.store(next.switches.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        c.cur_pri.store(next.pri.load(Ordering::Relaxed), Ordering::Relaxed);
        c.slice_left.store(TIMESLICE_TICKS, Ordering::Relaxed);
        c.switches.store(c.switches.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        if reason == Reason::Preempt && kicked {
            c.kick_preempts.fetch_add(1, Ordering::Relaxed);
        }

        if leaving && reason == Reason::Block {
            trace::emit::<E::M>(trace::Kind::Block, 0);
        }
        trace::emit::<E::M>(trace::Kind::Switch, Arc::as_ptr(&next) as u64);
        let from = pv.ctx.get();
        let to = next.ctx.get() as *const <E::M as Machine>::Context;
        E::M::set_curthread(Arc::as_ptr(&next) as *const (), io);
        c.running.store(Arc::as_ptr(&next) as usize, Ordering::Relaxed);
        // `current` was taken by `schedule` and `prev_ref` by the last `finish_switch`: both
        // are empty, so there is nothing to drop (no drop glue on the path).
        put_empty(&mut local.current, Some(next));
        local.prev = prev;
        // Both slots are empty (taken by the last `finish_switch`): written only when they
        // get something, so a yield or preemption (statically `None`) stores nothing.
        put_some(&mut local.prev_ref, keep);
        put_some(&mut local.prev_migrate_to, migrate_to);
        // `from` lives on (a queue or `prev_ref` holds it) until `finish_switch`; `to` had
        // `on_cpu` false.
        // SAFETY: interrupts are disabled; no other CPU runs `to` (on_cpu was false) or can
        // pick it (we hold our run-queue lock); `from` is the running thread's context.
        unsafe { E::M::switch(from, to) };
        // Resumed, possibly on another CPU.
        self.finish_switch();
    }

    /// Runs on the newly switched-to thread: releases the run-queue lock carried over the
    /// switch and lets go of the previous thread.
    #[inline(always)]
    fn finish_switch(&'static self) {
        let p = E::M::sched_word() as *const CpuSched<E>;
        debug_assert!(core::ptr::eq(p, self.this_cpu()), "finish_switch: sched_word not this CPU's state");
        // SAFETY: right after a switch on this CPU, which only a CPU past `init_cpu` makes
        // (`schedule` found the word set; a borrower's switch back runs on a CPU whose
        // scheduler lent it): the word is this CPU's element of `self.cpus`, static.
        let c = unsafe { &*p };
        // SAFETY: this CPU, interrupts disabled (we are right after a switch).
        let local = unsafe { c.local() };
        let prev = core::mem::replace(&mut local.prev, core::ptr::null());
        if prev.is_null() {
            return;
        }
        // Tested before it is taken: the usual switch (the run queue took `prev`) leaves the
        // slot empty, and then neither it nor the migration target is written.
        let held = local.prev_ref.is_some();
        c.rq.raw_unlock();
        // SAFETY: `prev` is alive until this store (see `switch_to`); not touched after it.
        unsafe { (*prev).on_cpu.store(false, Ordering::Release) };
        if held {
            // A thread that migrates is one the CPU kept a reference to (`keep`).
            let held = local.prev_ref.take();
            if let Some(target) = local.prev_migrate_to.take() {
                // SAFETY: interrupts are disabled here (right after a switch) and stay so
                // until our caller returns; this token is dropped before then without
                // enabling them.
                let io = unsafe { IntrOff::new_unchecked(false, |_| {}) };
                self.enqueue(held.expect("a migrating thread's reference"), target, &io);
            } else {
                // A dead `prev` is freed here when this was its last reference.
                drop(held);
            }
        }
    }
}

/// Stores `v` into `slot`, which is empty (checked in debug builds): no drop glue for the
/// old value. Were it not empty, its reference would be leaked, never freed early.
#[inline(always)]
fn put_empty<T>(slot: &mut Option<T>, v: Option<T>) {
    let old = core::mem::replace(slot, v);
    debug_assert!(old.is_none(), "put_empty: the slot was not empty");
    core::mem::forget(old);
}

/// Stores `v` into `slot`, which is empty, if it is `Some`; stores nothing for `None` (the
/// slot already says so). Inlined where `v` is a constant `None`, it is no code at all.
#[inline(always)]
fn put_some<T>(slot: &mut Option<T>, v: Option<T>) {
    if let Some(v) = v {
        put_empty(slot, Some(v));
    }
}

/// First code of every new thread (its context was built by `E::M::new_context`).
extern "C" fn thread_start<E: SchedEnv>(arg: *const ()) -> ! {
    // SAFETY: `arg` is the `Arc::as_ptr` of the thread being started; the CPU holds a
    // reference to it (`local.current`) for as long as it runs.
    let t = unsafe { &*(arg as *const Thread<E>) };
    t.sched.finish_switch();
    // SAFETY: `start` is written once before the thread is queued and read once here, by
    // the thread itself.
    let f = unsafe { (*t.start.get()).take() }.expect("thread started twice");
    // SAFETY: a new thread starts with interrupts disabled (inside schedule) and owns no
    // token; this is where its life with interrupts enabled begins.
    unsafe { E::M::intr_enable() };
    t.sched.preempt_check();
    f();
    t.sched.exit();
}

fn push_decimal(s: &mut String, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &b in &buf[i..] {
        s.push(b as char);
    }
}
