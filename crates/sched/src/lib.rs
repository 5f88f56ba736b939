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
//! * **Preemption control** is per thread (`preempt_disable` / `preempt_enable`), so the count
//!   migrates with the thread; the scheduler never preempts a thread whose count is non-zero.
//! * **Pinned interrupt threads** ([`Scheduler::pin_call`]): an interrupt may lend its CPU to
//!   an interrupt thread for one handler run. The scheduler records only that the CPU is
//!   borrowed (a per-CPU word, the machine's [`machine::PinSlots`]); the thread underneath stays its current thread. Everything
//!   else happens only if the interrupt thread blocks (`schedule_borrowed`).
//! * The global allocator must be callable with interrupts disabled (spawning and some wait
//!   lists allocate).
#![no_std]

extern crate alloc;

pub mod event;
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

use intrusive_collections::LinkedListAtomicLink;
use machine::{IntrOff, Machine, PinCall};

pub use event::Event;
pub use machine::PinOutcome;
pub use pri::{Priority, NPRI};
pub use runq::RunQueue;
pub use spin::{SpinGuard, SpinLock};
pub use thread::{HeldLocks, JoinHandle, Thread, ThreadState, MAX_HELD_LOCKS};
use thread::{JoinState, BLOCKED, DEAD, PARKED, RUNNING, SLEEPING, UNBOUND};

/// Clock ticks a thread may run before an equal-priority thread gets the CPU.
pub const TIMESLICE_TICKS: u32 = 2;

/// Upper bound on CPUs any machine may ask for (array size).
pub const MAX_CPUS: usize = 64;

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
pub struct CpuSched<M: Machine> {
    rq: SpinLock<RunQueue<M>>,
    /// Mirror of the run queue's length, read without the lock for placement decisions.
    nqueued: AtomicUsize,
    /// The priority of the thread on this CPU, read by other CPUs for placement.
    cur_pri: AtomicU8,
    cur_idle: AtomicBool,
    /// Address of the thread on this CPU (for `is_running`: never dereferenced).
    running: AtomicUsize,
    need_resched: AtomicBool,
    slice_expired: AtomicBool,
    slice_left: AtomicU32,
    intr_depth: AtomicU32,
    online: AtomicBool,
    ticks: AtomicU64,
    switches: AtomicU64,
    resched_ipis: AtomicU64,
    /// Set by `kick` (a more urgent thread was queued here), cleared by `schedule`.
    kicked: AtomicBool,
    /// Preemptions that a kick asked for (as opposed to a time slice running out).
    kick_preempts: AtomicU64,
    /// Pinned calls: this CPU lent to an interrupt thread ([`Scheduler::pin_call`]).
    pin_switches: AtomicU64,
    /// Touched only by this CPU with interrupts disabled.
    local: UnsafeCell<CpuLocal<M>>,
}

struct CpuLocal<M: Machine> {
    /// The running thread (the reference the CPU holds).
    current: Option<Arc<Thread<M>>>,
    idle: Option<Arc<Thread<M>>>,
    /// Thread switched away from, for `finish_switch` to release.
    prev: Option<Arc<Thread<M>>>,
    /// `prev` must be queued on this other CPU once off ours (binding).
    prev_migrate_to: Option<usize>,
}

// SAFETY: `local` is accessed only by its own CPU with interrupts disabled; everything else
// is atomic or lock-protected.
unsafe impl<M: Machine> Sync for CpuSched<M> {}

impl<M: Machine> CpuSched<M> {
    const fn new() -> Self {
        CpuSched {
            rq: SpinLock::new(RunQueue::new()),
            nqueued: AtomicUsize::new(0),
            cur_pri: AtomicU8::new(0),
            cur_idle: AtomicBool::new(true),
            running: AtomicUsize::new(0),
            need_resched: AtomicBool::new(false),
            slice_expired: AtomicBool::new(false),
            slice_left: AtomicU32::new(TIMESLICE_TICKS),
            intr_depth: AtomicU32::new(0),
            online: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
            switches: AtomicU64::new(0),
            resched_ipis: AtomicU64::new(0),
            kicked: AtomicBool::new(false),
            kick_preempts: AtomicU64::new(0),
            pin_switches: AtomicU64::new(0),
            local: UnsafeCell::new(CpuLocal { current: None, idle: None, prev: None, prev_migrate_to: None }),
        }
    }

    /// # Safety
    /// Caller runs on this CPU with interrupts disabled and holds no other `&mut` to it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn local(&self) -> &mut CpuLocal<M> {
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
    /// Pinned switches to interrupt threads.
    pub pin_switches: u64,
    /// Threads waiting in its run queue.
    pub queued: usize,
}

/// An interrupt thread that borrows CPUs through [`Scheduler::pin_call`] (made by
/// [`Scheduler::new_ithread`]): the thread, its address and the top of its stack, which every
/// pinned call starts from.
pub struct PinThread<M: Machine> {
    thread: Arc<Thread<M>>,
    call: PinCall,
}

impl<M: Machine> PinThread<M> {
    /// The thread.
    pub fn thread(&self) -> &Arc<Thread<M>> {
        &self.thread
    }
}

/// The scheduler: all CPUs' run queues and the timed-sleep list.
pub struct Scheduler<M: Machine> {
    cpus: [CpuSched<M>; MAX_CPUS],
    next_id: AtomicU64,
    /// Threads in a timed sleep, with their deadline (ns). Unsorted: few sleep with a timeout.
    sleepers: SpinLock<Vec<(u64, Arc<Thread<M>>)>>,
    /// Earliest deadline in `sleepers` (u64::MAX when empty), read without the lock by `tick`.
    next_deadline: AtomicU64,
    live_threads: AtomicUsize,
    /// Every thread not yet freed, for `ps` (weak: the list keeps nobody alive).
    all: SpinLock<Vec<Weak<Thread<M>>>>,
    /// `fn(&IntrOff) -> bool`: may the current thread be preempted now (0: always)?
    preempt_gate: AtomicUsize,
    /// `fn()`: called before a thread blocks (the lock checker's sleep check; 0: none).
    sleep_check: AtomicUsize,
}

impl<M: Machine> Default for Scheduler<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Machine> Scheduler<M> {
    /// A scheduler with no CPU online yet.
    pub const fn new() -> Self {
        Scheduler {
            cpus: [const { CpuSched::new() }; MAX_CPUS],
            next_id: AtomicU64::new(1),
            sleepers: SpinLock::new(Vec::new()),
            next_deadline: AtomicU64::new(u64::MAX),
            live_threads: AtomicUsize::new(0),
            all: SpinLock::new(Vec::new()),
            preempt_gate: AtomicUsize::new(0),
            sleep_check: AtomicUsize::new(0),
        }
    }

    fn this_cpu(&self) -> &CpuSched<M> {
        &self.cpus[M::cpu_index()]
    }

    fn new_thread(
        &'static self,
        name: String,
        pri: Priority,
        bound: Option<usize>,
        is_idle: bool,
        stack: Option<Box<[u64]>>,
        ctx: M::Context,
    ) -> Thread<M> {
        Thread {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            name,
            sched: self,
            base_pri: AtomicU8::new(pri.get()),
            pri: AtomicU8::new(pri.get()),
            state: AtomicU8::new(RUNNING),
            on_cpu: AtomicBool::new(false),
            cpu: AtomicUsize::new(bound.unwrap_or_else(M::cpu_index)),
            bound: AtomicUsize::new(bound.unwrap_or(UNBOUND)),
            is_idle,
            preempt_count: AtomicU32::new(0),
            ctx: UnsafeCell::new(ctx),
            _stack: stack,
            start: UnsafeCell::new(None),
            rq_link: LinkedListAtomicLink::new(),
            join: SpinLock::new(JoinState { exited: false, joiner: None }),
            held: SpinLock::new(thread::HeldLocks::new()),
            switches: AtomicU64::new(0),
            run_ns: AtomicU64::new(0),
            last_on_ns: AtomicU64::new(M::now_ns()),
        }
    }

    /// Makes the calling context (a CPU's boot stack) this CPU's idle thread.
    ///
    /// Called once per CPU, with interrupts disabled, before the CPU takes interrupts that
    /// reach the scheduler.
    pub fn init_cpu(&'static self, proof: &IntrOff) {
        let cpu = M::cpu_index();
        let mut name = String::from("idle/");
        push_decimal(&mut name, cpu as u64);
        let idle = Arc::new(self.new_thread(name, Priority::IDLE, Some(cpu), true, None, M::empty_context()));
        idle.on_cpu.store(true, Ordering::Relaxed);
        let c = &self.cpus[cpu];
        M::set_curthread(Arc::as_ptr(&idle) as *const (), proof);
        // SAFETY: we are on `cpu` with interrupts disabled.
        let local = unsafe { c.local() };
        self.register(&idle, proof);
        local.idle = Some(idle.clone());
        local.current = Some(idle);
        c.cur_pri.store(Priority::IDLE.get(), Ordering::Relaxed);
        c.cur_idle.store(true, Ordering::Relaxed);
        c.running.store(M::curthread() as usize, Ordering::Relaxed);
        c.online.store(true, Ordering::Release);
    }

    /// Whether `cpu` has called [`Scheduler::init_cpu`].
    pub fn cpu_online(&self, cpu: usize) -> bool {
        cpu < MAX_CPUS && self.cpus[cpu].online.load(Ordering::Acquire)
    }

    /// The idle loop: run whatever is runnable, steal from busy CPUs, halt otherwise.
    pub fn idle_loop(&'static self) -> ! {
        loop {
            let io = M::intr_disable();
            let c = self.this_cpu();
            if c.nqueued.load(Ordering::Relaxed) == 0 {
                self.steal(&io);
            }
            if c.nqueued.load(Ordering::Relaxed) > 0 || c.need_resched.load(Ordering::Relaxed) {
                self.schedule(Reason::Yield, &io);
            } else {
                M::wait_for_interrupt(&io);
            }
            drop(io);
        }
    }

    /// Moves one unbound runnable thread from the busiest other CPU to this one.
    fn steal(&'static self, io: &IntrOff) {
        let me = M::cpu_index();
        let n = M::ncpus();
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
    ) -> JoinHandle<M> {
        assert!(bound.is_none_or(|c| self.cpu_online(c)), "spawn({name}): CPU {bound:?} is not online");
        let words = STACK_SIZE / 8;
        let mut stack = alloc::vec![0u64; words].into_boxed_slice();
        let top = stack.as_mut_ptr() as usize + words * 8;
        let t =
            Arc::new(self.new_thread(String::from(name), pri, bound, false, Some(stack), M::empty_context()));
        let ctx = M::new_context(top, thread_start::<M>, Arc::as_ptr(&t) as usize);
        // SAFETY: the thread is not visible to any other CPU yet; we are its only user.
        unsafe {
            *t.ctx.get() = ctx;
            *t.start.get() = Some(Box::new(f));
        }
        self.live_threads.fetch_add(1, Ordering::Relaxed);
        let io = M::intr_disable();
        self.register(&t, &io);
        let target = self.select_cpu(&t);
        self.enqueue(t.clone(), target, &io);
        drop(io);
        self.preempt_check();
        JoinHandle { thread: t }
    }

    fn register(&self, t: &Arc<Thread<M>>, io: &IntrOff) {
        let mut all = self.all.lock(io);
        if all.len() >= 64 && all.len().is_power_of_two() {
            all.retain(|w| w.strong_count() > 0);
        }
        all.push(Arc::downgrade(t));
    }

    /// Calls `f` for every thread that still exists (running, runnable, sleeping, or exited
    /// but not yet freed), oldest first. `f` runs without scheduler locks held.
    pub fn for_each_thread(&self, mut f: impl FnMut(&Thread<M>)) {
        let snapshot: Vec<Arc<Thread<M>>> = {
            let io = M::intr_disable();
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
    fn select_cpu(&self, t: &Thread<M>) -> usize {
        if let Some(b) = t.bound_cpu() {
            return b;
        }
        let n = M::ncpus();
        let last = t.cpu.load(Ordering::Relaxed).min(n - 1);
        let pri = t.pri.load(Ordering::Relaxed);
        let idle = |c: usize| {
            let cs = &self.cpus[c];
            cs.online.load(Ordering::Relaxed)
                && cs.cur_idle.load(Ordering::Relaxed)
                && cs.nqueued.load(Ordering::Relaxed) == 0
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
    fn enqueue(&self, t: Arc<Thread<M>>, cpu: usize, io: &IntrOff) {
        let pri = t.pri.load(Ordering::Relaxed);
        t.cpu.store(cpu, Ordering::Relaxed);
        let c = &self.cpus[cpu];
        {
            let mut rq = c.rq.lock(io);
            rq.push_back(t);
            c.nqueued.store(rq.len(), Ordering::Relaxed);
        }
        if pri > c.cur_pri.load(Ordering::Relaxed) || c.cur_idle.load(Ordering::Relaxed) {
            self.kick(cpu);
        }
    }

    /// Asks `cpu` to reschedule: a flag for ourselves, a flag and an IPI for another CPU.
    fn kick(&self, cpu: usize) {
        let c = &self.cpus[cpu];
        c.kicked.store(true, Ordering::Release);
        let was = c.need_resched.swap(true, Ordering::AcqRel);
        if cpu != M::cpu_index() && !was {
            c.resched_ipis.fetch_add(1, Ordering::Relaxed);
            M::send_resched(cpu);
        } else if cpu != M::cpu_index() && c.cur_idle.load(Ordering::Relaxed) {
            // An idle CPU may be halted with the flag already set by an earlier kick whose
            // IPI it consumed before halting; IPIs are cheap compared to a lost wakeup.
            M::send_resched(cpu);
        }
    }

    /// The running thread.
    pub fn current(&self) -> &Thread<M> {
        let p = M::curthread() as *const Thread<M>;
        // SAFETY: `curthread` is set by `init_cpu` and `schedule` to a thread that the CPU
        // holds a reference to for as long as it runs; the caller *is* that thread, so the
        // object outlives this borrow (a thread cannot drop itself while running).
        unsafe { &*p }
    }

    /// A counted reference to the running thread.
    pub fn current_arc(&self) -> Arc<Thread<M>> {
        let p = M::curthread() as *const Thread<M>;
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

    /// Sets the hooks the layers above use: `preempt_gate` answers whether the current thread
    /// may be preempted now (the SPL layer says no above `IPL_NONE` and remembers to come
    /// back); `sleep_check` runs before a thread blocks (the lock checker).
    pub fn set_hooks(&self, preempt_gate: fn(&IntrOff) -> bool, sleep_check: fn()) {
        self.preempt_gate.store(preempt_gate as *const () as usize, Ordering::Release);
        self.sleep_check.store(sleep_check as *const () as usize, Ordering::Release);
    }

    fn gate_open(&self, io: &IntrOff) -> bool {
        let g = self.preempt_gate.load(Ordering::Acquire);
        if g == 0 {
            return true;
        }
        // SAFETY: only `set_hooks` stores here, from a `fn(&IntrOff) -> bool`.
        let g = unsafe { core::mem::transmute::<usize, fn(&IntrOff) -> bool>(g) };
        g(io)
    }

    /// Switches away now if this CPU was asked to reschedule and we may be preempted.
    pub fn preempt_check(&'static self) {
        if !M::intr_enabled() {
            return; // the caller's interrupt-disabled section ends in an interrupt or schedule
        }
        let io = M::intr_disable();
        let c = self.this_cpu();
        if c.need_resched.load(Ordering::Relaxed)
            && c.intr_depth.load(Ordering::Relaxed) == 0
            && self.current().preempt_count.load(Ordering::Relaxed) == 0
            && self.gate_open(&io)
        {
            self.schedule(Reason::Preempt, &io);
        }
    }

    /// Gives the CPU to another runnable thread of equal or higher priority, if any.
    pub fn yield_now(&'static self) {
        let io = M::intr_disable();
        self.schedule(Reason::Yield, &io);
    }

    /// Binds the calling thread to `cpu` (or unbinds with `None`) and moves it there.
    pub fn bind_current(&'static self, cpu: Option<usize>) {
        if let Some(c) = cpu {
            assert!(self.cpu_online(c), "bind_current: CPU {c} is not online");
        }
        self.current().bound.store(cpu.unwrap_or(UNBOUND), Ordering::Relaxed);
        if cpu.is_some_and(|c| c != M::cpu_index()) {
            self.yield_now();
        }
    }

    /// Binds (or unbinds) another thread: takes effect when it is next placed (a sleeping
    /// thread: at its wakeup). The interrupt pool uses it to send an idle ithread to a CPU.
    pub fn bind_thread(&self, t: &Thread<M>, cpu: Option<usize>) {
        if let Some(c) = cpu {
            assert!(self.cpu_online(c), "bind_thread: CPU {c} is not online");
        }
        t.bound.store(cpu.unwrap_or(UNBOUND), Ordering::Relaxed);
    }

    /// The CPU the caller runs on (may change right after unless preemption is disabled).
    pub fn cpu_index(&self) -> usize {
        M::cpu_index()
    }

    /// First half of going to sleep: mark the current thread SLEEPING. Interrupts must be
    /// disabled from here to `sleep_commit`/`sleep_cancel` (the proof says so).
    pub fn sleep_prepare(&self, _proof: &IntrOff) {
        self.current().state.store(SLEEPING, Ordering::SeqCst);
        // Pairs with the fence in `wakeup_locked`: the sleeper's later load of its condition
        // (a grant flag, a woken flag, written with Release by a waker) and the waker's load
        // of this state cannot both miss the other's store (store buffering; the loom model
        // of the turnstile hand-off found the lost wakeup without these fences).
        core::sync::atomic::fence(Ordering::SeqCst);
    }

    /// Second half: leave the CPU until a wakeup (returns at once if one already came).
    pub fn sleep_commit(&'static self, proof: &IntrOff) {
        self.run_sleep_check();
        self.schedule(Reason::Block, proof);
    }

    /// Like [`Scheduler::sleep_commit`], but a timeout wakes the thread at `deadline_ns`
    /// (`u64::MAX`: no timeout). Returns early on any wakeup; callers re-check.
    pub fn sleep_commit_deadline(&'static self, deadline_ns: u64, proof: &IntrOff) {
        self.run_sleep_check();
        if deadline_ns != u64::MAX {
            let mut s = self.sleepers.lock(proof);
            s.push((deadline_ns, self.current_arc()));
            self.next_deadline.fetch_min(deadline_ns, Ordering::Relaxed);
        }
        self.schedule(Reason::Block, proof);
        if deadline_ns != u64::MAX {
            // Woken (or timed out): drop our timeout entry so the list stays short.
            let me = M::curthread() as *const Thread<M>;
            self.sleepers.lock(proof).retain(|(_, t)| !core::ptr::eq(Arc::as_ptr(t), me));
        }
    }

    fn run_sleep_check(&self) {
        let f = self.sleep_check.load(Ordering::Acquire);
        if f != 0 {
            // SAFETY: only `set_hooks` stores here, from a `fn()`.
            let f = unsafe { core::mem::transmute::<usize, fn()>(f) };
            f();
        }
    }

    /// Whether the thread at address `t` is on some CPU right now. The address is only
    /// compared, never dereferenced, so it is safe to ask about a thread that may have
    /// exited (the adaptive mutex asks about a lock owner it holds no reference to).
    pub fn is_running(&self, t: *const ()) -> bool {
        let t = t as usize;
        (0..M::ncpus()).any(|c| {
            let cs = &self.cpus[c];
            // A CPU lent to an interrupt thread runs that thread, not the one pinned under it
            // (an ithread must block on, not spin for, a lock its pinned thread holds).
            match M::pin_slots(c).map_or(0, |p| p.borrowed()) {
                0 => cs.running.load(Ordering::Relaxed) == t,
                b => b == t,
            }
        })
    }

    /// Changes a thread's effective priority (priority inheritance lends and withdraws
    /// through here): requeues it if it waits in a run queue, and asks its CPU to reschedule
    /// if the change makes something else more urgent there.
    pub fn set_priority(&'static self, t: &Thread<M>, pri: Priority) {
        let io = M::intr_disable();
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
            if c.running.load(Ordering::Relaxed) == t as *const Thread<M> as usize {
                c.cur_pri.store(pri.get(), Ordering::Relaxed);
                if pri.get() < old && rq.highest().is_some_and(|h| h > pri) {
                    drop(rq);
                    self.kick(cpu);
                }
            }
            return;
        }
    }

    /// Abandons a prepared sleep (the condition turned out to hold).
    pub fn sleep_cancel(&self, _proof: &IntrOff) {
        self.current().state.store(RUNNING, Ordering::SeqCst);
    }

    /// Makes `t` runnable if it sleeps. Returns whether it was asleep (or about to sleep).
    /// Callable from any context, including interrupt handlers.
    pub fn wakeup(&'static self, t: &Arc<Thread<M>>) -> bool {
        let woke = {
            let io = M::intr_disable();
            self.wakeup_locked(t, &io)
        };
        if woke {
            self.preempt_check();
        }
        woke
    }

    fn wakeup_locked(&'static self, t: &Arc<Thread<M>>, io: &IntrOff) -> bool {
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
                        let target = self.select_cpu(t);
                        self.enqueue(t.clone(), target, io);
                        return true;
                    }
                }
                _ => return false,
            }
        }
    }

    /// Sleeps for at least `ns` nanoseconds (resolution: one clock tick).
    pub fn sleep_ns(&'static self, ns: u64) {
        let deadline = M::now_ns().saturating_add(ns);
        while M::now_ns() < deadline {
            let io = M::intr_disable();
            self.sleep_prepare(&io);
            self.sleep_commit_deadline(deadline, &io);
        }
    }

    fn join_thread(&'static self, t: &Arc<Thread<M>>) {
        let me = self.current_arc();
        assert!(!Arc::ptr_eq(&me, t), "thread {} tried to join itself", t.name);
        loop {
            let io = M::intr_disable();
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
        let io = M::intr_disable();
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
    pub fn intr_enter(&self, _proof: &IntrOff) {
        self.this_cpu().intr_depth.fetch_add(1, Ordering::Relaxed);
    }

    /// Called by the arch code when an interrupt handler is done, before the return to the
    /// interrupted code (interrupts disabled): the interrupt preemption point.
    pub fn intr_exit(&'static self, proof: &IntrOff) {
        let c = self.this_cpu();
        let depth = c.intr_depth.fetch_sub(1, Ordering::Relaxed) - 1;
        if depth == 0
            && c.need_resched.load(Ordering::Relaxed)
            && self.current().preempt_count.load(Ordering::Relaxed) == 0
            && self.gate_open(proof)
        {
            self.schedule(Reason::Preempt, proof);
        }
    }

    /// Whether this CPU is running an interrupt handler in interrupt context. An interrupt
    /// thread borrowing the CPU ([`Scheduler::pin_call`]) runs in thread context although the
    /// interrupt that lent it the CPU is still underneath (its depth is not saved and zeroed:
    /// the CPU's pinned-switch `busy` word, [`machine::PinSlots`], says it): this answers `false` for it. It answers `false` as well
    /// for an interrupt nested inside a borrowing thread; such an interrupt runs above the
    /// thread's level (`IPL_VM` in the pinned model), which the SPL's sleep check catches.
    #[inline]
    pub fn in_interrupt(&self) -> bool {
        self.this_cpu().intr_depth.load(Ordering::Relaxed) > 0 && !self.borrowing()
    }

    /// The clock interrupt's share: time slices and timed sleeps. Interrupts disabled.
    pub fn tick(&'static self, proof: &IntrOff) {
        let c = self.this_cpu();
        c.ticks.fetch_add(1, Ordering::Relaxed);
        if !c.cur_idle.load(Ordering::Relaxed) {
            let left = c.slice_left.load(Ordering::Relaxed);
            if left <= 1 {
                c.slice_expired.store(true, Ordering::Relaxed);
                if c.nqueued.load(Ordering::Relaxed) > 0 {
                    c.need_resched.store(true, Ordering::Relaxed);
                }
            } else {
                c.slice_left.store(left - 1, Ordering::Relaxed);
            }
        }
        let now = M::now_ns();
        if now >= self.next_deadline.load(Ordering::Relaxed) {
            let mut due: Vec<Arc<Thread<M>>> = Vec::new();
            {
                let mut s = self.sleepers.lock(proof);
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
                self.next_deadline.store(next, Ordering::Relaxed);
            }
            for t in &due {
                self.wakeup_locked(t, proof);
            }
        }
    }

    /// Creates the interrupt thread for `cpu` that [`Scheduler::pin_call`] lends that CPU to
    /// (DESIGN.md part 2). It is bound to `cpu`, PARKED, and never on a run queue unless a
    /// handler blocks in it. Each pinned call runs `body(a0, a1)` on it, once it is
    /// installed ([`Scheduler::pin_install`]; see [`Scheduler::pin_call`]).
    pub fn new_ithread(
        &'static self,
        name: &str,
        pri: Priority,
        cpu: usize,
        body: extern "C" fn(usize, usize),
    ) -> PinThread<M> {
        assert!(self.cpu_online(cpu), "new_ithread({name}): CPU {cpu} is not online");
        let words = STACK_SIZE / 8;
        let mut stack = alloc::vec![0u64; words].into_boxed_slice();
        let stack_top = (stack.as_mut_ptr() as usize + words * 8) & !0xF;
        let t = Arc::new(self.new_thread(
            String::from(name),
            pri,
            Some(cpu),
            false,
            Some(stack),
            M::empty_context(),
        ));
        t.state.store(PARKED, Ordering::Relaxed);
        self.live_threads.fetch_add(1, Ordering::Relaxed);
        let io = M::intr_disable();
        self.register(&t, &io);
        drop(io);
        PinThread { call: PinCall { thread: Arc::as_ptr(&t) as *const (), stack_top, body }, thread: t }
    }

    /// Installs `it` as CPU `cpu`'s interrupt thread for [`Scheduler::pin_call`] (its
    /// [`machine::PinSlots`]) and marks it free: from then on an interrupt on `cpu` may lend
    /// it the CPU. Once per CPU; `it` must outlive every pinned call (it is never dropped).
    pub fn pin_install(&self, cpu: usize, it: &PinThread<M>) {
        let p = M::pin_slots(cpu).expect("pin_install: the CPU has no pinned-switch slots");
        p.thread.store(it.call.thread as usize, Ordering::Relaxed);
        p.stack_top.store(it.call.stack_top, Ordering::Relaxed);
        p.body.store(it.call.body as usize, Ordering::Relaxed);
        p.busy.store(0, Ordering::Release);
    }

    /// **The pinned call** (DESIGN.md part 2; NetBSD's fast soft interrupts, illumos'
    /// interrupt threads): if this CPU's interrupt thread ([`Scheduler::pin_install`]) is
    /// parked and the CPU at `IPL_VM`, lends it the CPU for one call of its body,
    /// `body(a0, a1)`, on its stack,
    /// with interrupts enabled, in thread context ([`Scheduler::in_interrupt`] is false for
    /// it). Only the stack, the current-thread pointer and the CPU's pinned-switch words
    /// change ([`Machine::pin_call`]); the running thread stays this CPU's current thread for
    /// the scheduler, pinned underneath — not queued, not migratable, its run state
    /// untouched. The scheduler learns only that the CPU is borrowed
    /// ([`machine::PinSlots::busy`], for [`Scheduler::is_running`] and the block path).
    ///
    /// [`PinOutcome::Returned`] when `body` returned: the fast path. [`PinOutcome::Busy`]:
    /// the thread was not parked; [`PinOutcome::Level`]: the CPU was not at `IPL_VM` — nothing
    /// done, `a0` and `a1` handed back (the second and third values; see [`Machine::pin_call`]). [`PinOutcome::Blocked`]: the thread blocked
    /// in `body`; the bookkeeping skipped here happened then, lazily (`schedule_borrowed`):
    /// the thread became an ordinary thread, the pinned thread was resumed at once, and the
    /// thread finishes later, clears its `busy` word and ends with [`Scheduler::pin_park`]
    /// (its body must check [`Scheduler::borrowing`] before returning).
    ///
    /// Called from interrupt context on this CPU with interrupts disabled, no other pinned
    /// call active on it. The caller handles the SPL.
    #[inline(always)]
    pub fn pin_call(&'static self, a0: usize, a1: usize, _proof: &IntrOff) -> (PinOutcome, usize, usize) {
        // The interrupt depth is left as it is: `in_interrupt` consults `busy` instead.
        // A thread whose `busy` word is clear is PARKED: its stack is unused and no CPU runs it
        // (a thread that parks leaves its CPU before interrupts are enabled there again, and
        // it is bound to this CPU).
        // SAFETY: interrupts are disabled (the proof), no other pinned call is active here
        // (the caller's promise), the installed thread is free when `busy` is clear (above),
        // its body keeps the contract documented above.
        let r = unsafe { M::pin_call(a0, a1) };
        if matches!(r.0, PinOutcome::Returned | PinOutcome::Blocked) {
            self.pin_done(r.0);
        }
        r
    }

    /// [`Scheduler::pin_call`]'s return side: count the switch (this CPU, interrupts disabled:
    /// no locked add; counted here, not on the way in, where it would add to the latency) and,
    /// if the thread blocked, finish that switch.
    #[inline(always)]
    fn pin_done(&'static self, r: PinOutcome) {
        let c = self.this_cpu();
        c.pin_switches.store(c.pin_switches.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        if r == PinOutcome::Blocked {
            self.finish_switch();
        }
    }

    /// Whether the running thread runs on a CPU lent to it by [`Scheduler::pin_call`] (a
    /// thread is pinned under it). Needs no interrupt-disabled section: a borrowing thread
    /// is neither preempted nor migrated, and a running thread that does not borrow never
    /// starts to (only a parked one is lent a CPU).
    #[inline]
    pub fn borrowing(&self) -> bool {
        M::pin_borrowed() == M::curthread() as usize
    }

    /// Whether `cpu` is lent to an interrupt thread right now (for `ps`).
    pub fn cpu_borrowed(&self, cpu: usize) -> bool {
        M::pin_slots(cpu).is_some_and(|p| p.borrowed() != 0)
    }

    /// Ends the work of an interrupt thread that blocked during its pinned call (and so is an
    /// ordinary thread now, [`Scheduler::borrowing`] false): it leaves the CPU for good,
    /// PARKED, and the next [`Scheduler::pin_call`] starts it afresh at the top of its stack.
    /// Interrupts disabled.
    pub fn pin_park(&'static self, proof: &IntrOff) -> ! {
        self.current().state.store(PARKED, Ordering::SeqCst);
        self.schedule(Reason::Park, proof);
        unreachable!("a parked interrupt thread was switched back in");
    }

    /// `schedule` on a CPU lent to an interrupt thread (the running thread is that thread;
    /// the scheduler's current thread is the one pinned under it). The interrupt thread is not
    /// preempted: it gives the CPU back soon. If it blocks, the bookkeeping `pin_call`
    /// skipped happens here, as NetBSD's `mi_switch` does for a blocking soft-interrupt LWP:
    /// it becomes this CPU's current thread, the pinned thread is released and resumed at
    /// once through the context `M::pin_call` saved (it never left the CPU: no run queue),
    /// and the interrupt thread sleeps like any thread; a wakeup queues it on its CPU.
    #[cold]
    fn schedule_borrowed(&'static self, reason: Reason, proof: &IntrOff) {
        match reason {
            Reason::Preempt | Reason::Yield => return,
            Reason::Exit | Reason::Park => {
                panic!("thread {} left its CPU with a thread pinned under it", self.current().name)
            }
            Reason::Block => {}
        }
        let cpu = M::cpu_index();
        let c = &self.cpus[cpu];
        let it = self.current_arc();
        // Carried across the switch; the pinned thread's `finish_switch` releases it.
        c.rq.raw_lock();
        it.on_cpu.store(true, Ordering::Relaxed);
        it.cpu.store(cpu, Ordering::Relaxed);
        if it.state.compare_exchange(SLEEPING, BLOCKED, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            // Woken before it slept: go on borrowing.
            it.on_cpu.store(false, Ordering::Relaxed);
            c.rq.raw_unlock();
            return;
        }
        // SAFETY: this CPU, interrupts disabled (the proof).
        let local = unsafe { c.local() };
        let pinned = local.current.take().expect("schedule before init_cpu");
        let slots = M::pin_slots(cpu).expect("borrowed CPU without pinned-switch slots");
        slots.busy.store(machine::PinSlots::BLOCKED, Ordering::Relaxed);
        c.switches.fetch_add(1, Ordering::Relaxed);
        it.last_on_ns.store(M::now_ns(), Ordering::Relaxed);
        let from = it.ctx.get();
        let to = M::pinned_context();
        M::set_curthread(Arc::as_ptr(&pinned) as *const (), proof);
        local.current = Some(pinned);
        local.prev = Some(it);
        local.prev_migrate_to = None;
        // `from` stays alive in `local.prev` until the pinned thread's `finish_switch`; we hold
        // our run-queue lock, so no CPU picks the interrupt thread before its registers are
        // saved (`on_cpu` guards that too).
        // SAFETY: interrupts are disabled; `from` is the running (interrupt) thread's context;
        // `to` is the pinned thread's, saved by `M::pin_call` here and never queued.
        unsafe { M::switch(from, to) };
        // Woken and picked by `schedule` on this CPU: an ordinary thread from here on.
        self.finish_switch();
    }

    /// Counters of `cpu`.
    pub fn cpu_stats(&self, cpu: usize) -> CpuStats {
        let c = &self.cpus[cpu];
        CpuStats {
            ticks: c.ticks.load(Ordering::Relaxed),
            switches: c.switches.load(Ordering::Relaxed),
            resched_ipis: c.resched_ipis.load(Ordering::Relaxed),
            kick_preempts: c.kick_preempts.load(Ordering::Relaxed),
            pin_switches: c.pin_switches.load(Ordering::Relaxed),
            queued: c.nqueued.load(Ordering::Relaxed),
        }
    }

    /// The core: pick the next thread for this CPU and switch to it.
    fn schedule(&'static self, reason: Reason, _proof: &IntrOff) {
        let cpu = M::cpu_index();
        let c = &self.cpus[cpu];
        if M::pin_borrowed() != 0 {
            self.schedule_borrowed(reason, _proof);
            return;
        }
        c.rq.raw_lock();
        // SAFETY: we hold our run-queue lock (raw) and create no guard while using it.
        let rq = unsafe { c.rq.get_locked() };
        // SAFETY: this CPU, interrupts disabled.
        let local = unsafe { c.local() };
        let prev = local.current.as_ref().expect("schedule before init_cpu").clone();
        c.need_resched.store(false, Ordering::Relaxed);
        let kicked = c.kicked.swap(false, Ordering::AcqRel);

        let leaving = match reason {
            Reason::Exit | Reason::Park => true,
            Reason::Block => {
                prev.state.compare_exchange(SLEEPING, BLOCKED, Ordering::SeqCst, Ordering::SeqCst).is_ok()
            }
            Reason::Preempt | Reason::Yield => false,
        };
        let mut migrate_to = None;
        if !leaving && !prev.is_idle {
            let bound = prev.bound.load(Ordering::Relaxed);
            if bound != UNBOUND && bound != cpu {
                migrate_to = Some(bound);
            } else {
                let mine = prev.pri.load(Ordering::Relaxed);
                let equal_may_run = reason == Reason::Yield || c.slice_expired.load(Ordering::Relaxed);
                let switch = match rq.highest() {
                    None => false,
                    Some(p) => p.get() > mine || (p.get() == mine && equal_may_run),
                };
                if !switch {
                    c.rq.raw_unlock();
                    return;
                }
                rq.push_back(prev.clone());
            }
        }
        let next = match rq.pop_highest() {
            Some(t) => t,
            None => local.idle.as_ref().expect("no idle thread").clone(),
        };
        c.nqueued.store(rq.len(), Ordering::Relaxed);
        if Arc::ptr_eq(&next, &prev) {
            c.rq.raw_unlock();
            return;
        }
        // The next thread may still be saving its registers on the CPU it left.
        while next.on_cpu.load(Ordering::Acquire) {
            M::relax();
        }
        let now = M::now_ns();
        prev.run_ns.fetch_add(now.saturating_sub(prev.last_on_ns.load(Ordering::Relaxed)), Ordering::Relaxed);
        next.last_on_ns.store(now, Ordering::Relaxed);
        next.on_cpu.store(true, Ordering::Relaxed);
        next.cpu.store(cpu, Ordering::Relaxed);
        next.switches.fetch_add(1, Ordering::Relaxed);
        c.cur_pri.store(next.pri.load(Ordering::Relaxed), Ordering::Relaxed);
        c.cur_idle.store(next.is_idle, Ordering::Relaxed);
        c.slice_left.store(TIMESLICE_TICKS, Ordering::Relaxed);
        c.slice_expired.store(false, Ordering::Relaxed);
        c.switches.fetch_add(1, Ordering::Relaxed);
        if reason == Reason::Preempt && kicked {
            c.kick_preempts.fetch_add(1, Ordering::Relaxed);
        }

        let from = prev.ctx.get();
        let to = next.ctx.get() as *const M::Context;
        M::set_curthread(Arc::as_ptr(&next) as *const (), _proof);
        c.running.store(Arc::as_ptr(&next) as usize, Ordering::Relaxed);
        local.current = Some(next);
        local.prev = Some(prev);
        local.prev_migrate_to = migrate_to;
        // `from` lives on in `local.prev` until `finish_switch`; `to` had `on_cpu` false.
        // SAFETY: interrupts are disabled; no other CPU runs `to` (on_cpu was false) or can
        // pick it (we hold our run-queue lock); `from` is the running thread's context.
        unsafe { M::switch(from, to) };
        // Resumed, possibly on another CPU.
        self.finish_switch();
    }

    /// Runs on the newly switched-to thread: releases the run-queue lock carried over the
    /// switch and lets go of the previous thread.
    fn finish_switch(&'static self) {
        let c = self.this_cpu();
        // SAFETY: this CPU, interrupts disabled (we are right after a switch).
        let local = unsafe { c.local() };
        let Some(prev) = local.prev.take() else {
            return;
        };
        let migrate_to = local.prev_migrate_to.take();
        c.rq.raw_unlock();
        prev.on_cpu.store(false, Ordering::Release);
        if let Some(target) = migrate_to {
            // SAFETY: interrupts are disabled here (right after a switch) and stay so until
            // our caller returns; this token is dropped before then without enabling them.
            let io = unsafe { IntrOff::new_unchecked(false, |_| {}) };
            self.enqueue(prev, target, &io);
        }
        // A dead `prev` is freed here when this was its last reference.
    }
}

/// First code of every new thread (its context was built by `M::new_context`).
extern "C" fn thread_start<M: Machine>(arg: usize) -> ! {
    // SAFETY: `arg` is the `Arc::as_ptr` of the thread being started; the CPU holds a
    // reference to it (`local.current`) for as long as it runs.
    let t = unsafe { &*(arg as *const Thread<M>) };
    t.sched.finish_switch();
    // SAFETY: `start` is written once before the thread is queued and read once here, by
    // the thread itself.
    let f = unsafe { (*t.start.get()).take() }.expect("thread started twice");
    // SAFETY: a new thread starts with interrupts disabled (inside schedule) and owns no
    // token; this is where its life with interrupts enabled begins.
    unsafe { M::intr_enable() };
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
