//! `HostMachine`: the [`machine::Machine`] of the host tests and benchmarks, with OS threads
//! as CPUs, and [`HostEnv`], the `sync::Env` of the system the calling thread belongs to.
//!
//! Used as a dev-dependency by the portable crates (`sched`'s and `sync`'s tests, `sync`'s
//! benchmarks). It is a std crate and never part of the kernel.
//!
//! ## How it works
//!
//! * **Kernel threads are OS threads.** A [`HostContext`] is a *baton*: a slot that holds the
//!   index of the simulated CPU handed to the thread, plus a condition variable. An OS thread
//!   runs kernel code only while it holds a CPU, and [`Machine::switch`]`(from, to)` is a
//!   hand-off: put this CPU's index into `to`'s baton, then block on `from`'s baton until some
//!   CPU (perhaps another one) is handed back, and adopt it. So exactly one kernel thread runs
//!   on each simulated CPU at a time, by construction. [`Machine::new_context`] spawns the OS
//!   thread at once; it waits on its baton and then calls `entry(arg)` (the scheduler's stack
//!   is allocated but unused: the OS thread has its own). [`Machine::empty_context`] is a
//!   fresh baton, which whatever thread later switches away from it will wait on.
//! * **CPU identity** is thread-local: which system and which CPU the calling OS thread holds
//!   (none while it waits on its baton). Per-CPU state — `curthread`, the interrupt-enable
//!   flag, posted interrupts, the next clock tick — lives in the system's table.
//! * **Interrupts** are a per-CPU "enabled" flag plus posted flags: a reschedule IPI
//!   ([`Machine::send_resched`], vector [`RESCHED_VECTOR`]), a "call" ([`CALL_VECTOR`], used
//!   to start the first kernel thread from the test), and the clock tick ([`TICK_VECTOR`], due
//!   every [`TICK_NS`]). They are *taken* one vector at a time, through the same path as
//!   `kernel/src/intr.rs`: [`ipl::SplState::intr_arrive`] first, then — unless deferred —
//!   `intr_enter`, the handler (`tick` for the clock), `intr_done`, `intr_exit`. They are
//!   taken only at interrupt points: while an idle CPU waits in [`Machine::wait_for_interrupt`] (it sleeps
//!   on its condition variable until something is posted or the next tick is due; see
//!   "Under Miri" for the tickless clock), whenever
//!   the running thread enables interrupts (`intr_enable`, or dropping an [`IntrOff`] that
//!   restores "enabled": on x86 a pending interrupt is taken right after `sti` too), and when
//!   a thread calls [`HostMachine::poll_interrupts`], which test threads do in their busy
//!   loops. A thread that never reaches such a point is never preempted; that is the one
//!   liberty this machine takes with the hardware, and it is explicit.
//! * **SPL** ([`ipl::IplCpu`]): each simulated CPU has a level word and a pending-levels word
//!   in its table, read and written only by the thread that holds the CPU — the
//!   `%gs`-relative words of x86_64. Each
//!   system has its own [`ipl::SplState`], wired as the kernel wires its own
//!   (`kernel/src/intr.rs`): the vectors' levels (tick and resched at `IPL_SCHED`, call at
//!   `IPL_HIGH`), the replay hook (a deferred vector runs its handler when `splx` drops below
//!   its level), the preempt hook, and the scheduler's preemption gate (no preemption above
//!   `IPL_NONE`) and sleep check (no sleeping above `IPL_NONE`; the lock checker's check).
//!   So an interrupt that arrives at or below the CPU's level is deferred, and a thread that
//!   holds a spin mutex keeps its CPU until the level drops, as on the real machine.
//! * **Locks** ([`HostEnv`]): each system also has its own `sync::SyncState` (checker,
//!   statistics, turnstiles, sleep queues). `sync::Env` has only associated functions, so
//!   `HostEnv` finds the system the calling thread belongs to through the same thread-local
//!   pointer; lock types on the host are `sync::Mutex<T, HostEnv>` ([`Mutex`]) and so on.
//! * **One system per test.** The `Machine` trait has no `self`, so the machine finds its
//!   state through the thread-local pointer to the [`HostSystem`] the OS thread belongs to
//!   (set on the CPU threads at boot and inherited by every kernel thread they create). Each
//!   test boots its own system, so the tests of one binary can run in parallel, with
//!   different numbers of CPUs, without sharing anything.
//! * **Hangs fail, they do not hang.** [`HostSystem::run`] starts the test body as a kernel
//!   thread and waits for it with a timeout; a lost wakeup or a deadlock makes the test fail
//!   with the CPUs' counters. Panics in test threads wrapped with [`checked`] are collected
//!   and reported by `run`. A panic inside the scheduler aborts the test process (it unwinds
//!   into `extern "C"` frames), which also fails the test, loudly.
//! * Exited kernel threads leave their OS thread blocked on a baton nobody will hand over
//!   (an `extern "C" fn(usize) -> !` entry cannot be unwound out of); these are reclaimed
//!   when the test process exits. So do the OS threads of pinned calls whose interrupt thread
//!   blocked and then parked (`PinSwitch::pin_parking`): parked, it never resumes there, and
//!   its next block must be the only waiter on its context's baton. After a test, dropping its `HostSystem` stops the clock of
//!   its idle CPUs so they sleep for good.
//!
//! ## Under Miri
//!
//! Miri's clock (with isolation) advances 5 µs per basic block interpreted, so one pass of
//! the interrupt path for a tick costs more than a 1 ms period: with the free-running clock a
//! CPU would take ticks back to back and never run anything else. Under `cfg(miri)` the
//! clock is *tickless* and slower, and everything else is the same mechanism:
//!
//! * [`TICK_NS`] is 50 ms, and a tick is re-armed when its handler is done rather than when
//!   it was taken.
//! * A tick is due only when it has work to do: a timed sleep is pending
//!   ([`sched::Scheduler::next_timeout_ns`]) or some CPU has threads in its run queue (time
//!   slices to count, work for idle CPUs to steal). Otherwise no CPU takes ticks.
//! * An idle CPU with no tick due blocks on its condition variable without a timeout until
//!   an interrupt is posted to it (a reschedule IPI, a raised vector); with a timed sleep
//!   pending it wakes at that deadline. A thread queued on a busy CPU while another CPU idles
//!   is stolen at the idle CPU's next tick, as without Miri.
use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{
    mpsc, Arc, Condvar as StdCondvar, Mutex as StdMutex, MutexGuard as StdMutexGuard, OnceLock, PoisonError,
};
use std::time::{Duration, Instant};

use ipl::{Ipl, IplCpu, SplState};
use machine::{IntrOff, Machine, PinCall, PinOutcome, PinSwitch, MAX_CPUS};
use sched::{Priority, Scheduler};
use sync::SyncState;

/// The scheduler on the host machine.
pub type Sched = Scheduler<HostEnv>;
/// An event on the host machine.
pub type Event = sched::Event<HostEnv>;
/// A run queue on the host machine.
pub type RunQueue = sched::RunQueue<HostEnv>;
/// A thread on the host machine.
pub type Thread = sched::Thread<HostEnv>;
/// The SPL state of a host system.
pub type Spl = SplState<HostEnv>;
/// The lock layer's state of a host system.
pub type LockState = SyncState<HostEnv>;
/// The interrupt framework of a host system.
pub type Intr = intr::Intr<HostEnv>;
/// An established interrupt source on the host machine.
pub type IntrHandle = intr::IntrHandle<HostEnv>;
/// A kernel mutex on the host machine.
pub type Mutex<T> = sync::Mutex<T, HostEnv>;
/// A kernel reader–writer lock on the host machine.
pub type RwLock<T> = sync::RwLock<T, HostEnv>;
/// A kernel condition variable on the host machine.
pub type CondVar = sync::CondVar<HostEnv>;

/// Vector of the clock tick (level `IPL_SCHED`, as the kernel's timer).
pub const TICK_VECTOR: u8 = 0x20;
/// Vector of the reschedule IPI (level `IPL_SCHED`, as the kernel's).
pub const RESCHED_VECTOR: u8 = 0x21;
/// Vector of the "call" interrupt (level `IPL_HIGH`, as the kernel's call IPI).
pub const CALL_VECTOR: u8 = 0x22;

/// Simulated clock period: 1 ms; 50 ms under Miri (see "Under Miri" in the module doc).
pub const TICK_NS: u64 = if cfg!(miri) { 50_000_000 } else { 1_000_000 };

/// Whether the clock is tickless: under Miri (see the module doc), a CPU takes a clock tick
/// only when one has work to do, and an idle CPU with none sleeps until an interrupt is
/// posted to it.
const TICKLESS: bool = cfg!(miri);

/// How long [`HostSystem::run`] waits for the test body before declaring a hang.
/// (An hour under Miri, which interprets every thread.)
pub const RUN_TIMEOUT: Duration = Duration::from_secs(if cfg!(miri) { 3600 } else { 60 });

const NO_CPU: usize = usize::MAX;

fn lock<T>(m: &StdMutex<T>) -> StdMutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A broken machine invariant: no way to unwind out of kernel frames, so stop the process.
fn fatal(msg: &str) -> ! {
    eprintln!("host machine: fatal: {msg}");
    std::process::abort();
}

struct HostCpu {
    curthread: AtomicPtr<()>,
    /// `Machine::sched_word`.
    sched_word: AtomicUsize,
    intr_enabled: AtomicBool,
    /// Posted vectors, one bit each (the LAPIC's IRR): a raise of a vector already posted
    /// merges into it. Posted under `lock` (with a notify), consumed by clearing the bit.
    posted: [AtomicU64; 4],
    /// EOIs sent by the interrupt path on this CPU.
    eois: AtomicU64,
    /// The innermost active pinned call's frame (null: none; so not null exactly while the
    /// running thread borrows the CPU, `PinSwitch::is_borrower`).
    pin_frame: AtomicPtr<PinFrame>,
    /// `Machine::intr_depth`: read and written only by the CPU's holder.
    intr_depth: AtomicUsize,
    /// When the next clock tick is due (`now_ns` time). Touched only by the CPU's holder.
    next_tick_ns: AtomicU64,
    /// Interrupts taken, for diagnostics.
    interrupts: AtomicU64,
    /// Reschedule IPIs received (posted and then taken).
    ipis_taken: AtomicU64,
    /// The SPL level ([`IplCpu`]): read and written only by the CPU's holder.
    ipl: AtomicU8,
    /// The SPL pending-levels word ([`IplCpu`]): read and written only by the CPU's holder.
    ipl_pending: AtomicU32,
    /// Spin mutexes held on this CPU and the level saved by the outermost (`IplCpu::mtx_*`).
    mtx_count: AtomicU32,
    mtx_oldspl: AtomicU8,
    lock: StdMutex<()>,
    wake: StdCondvar,
}

struct System {
    ncpus: usize,
    cpus: Vec<HostCpu>,
    sched: &'static Sched,
    spl: &'static Spl,
    locks: &'static LockState,
    intr: &'static Intr,
    /// OS threads free to run a pinned call's body (the interrupt thread's "stack").
    runners: StdMutex<Vec<Arc<Runner>>>,
    calls: StdMutex<Vec<Box<dyn FnOnce() + Send>>>,
    failures: StdMutex<Vec<String>>,
    /// Storm reports: (source, on, rate).
    storms: StdMutex<Vec<(String, bool, u64)>>,
    /// Vectors taken with no source and no host handler.
    stray: AtomicU64,
    shutdown: AtomicBool,
}

thread_local! {
    /// The system and CPU the calling OS thread holds (`NO_CPU` while it waits on a baton).
    static HERE: Cell<(Option<&'static System>, usize)> = const { Cell::new((None, NO_CPU)) };
    /// This OS thread runs an interrupt thread that is parking ([`PinSwitch::pin_parking`]):
    /// its next switch away hands the CPU over and retires the OS thread.
    static PARKING: Cell<bool> = const { Cell::new(false) };
}

fn here() -> (&'static System, usize) {
    match HERE.get() {
        (Some(sys), cpu) if cpu != NO_CPU => (sys, cpu),
        _ => fatal("a machine operation was called by an OS thread that holds no simulated CPU"),
    }
}

/// The system the calling OS thread belongs to (whether or not it holds a CPU now).
fn this_system() -> &'static System {
    match HERE.get() {
        (Some(sys), _) => sys,
        _ => fatal("the host system was looked up by an OS thread that belongs to none"),
    }
}

fn this_cpu() -> &'static HostCpu {
    let (sys, cpu) = here();
    &sys.cpus[cpu]
}

static START: OnceLock<Instant> = OnceLock::new();

/// The host machine (see the module doc).
pub struct HostMachine;

/// The baton of one kernel thread: the CPU handed to it, if any.
struct Baton {
    cpu: StdMutex<Option<usize>>,
    cv: StdCondvar,
}

impl Baton {
    fn give(&self, cpu: usize) {
        let mut g = lock(&self.cpu);
        if let Some(other) = *g {
            fatal(&format!("CPU {cpu} resumed a context that CPU {other} already resumed"));
        }
        *g = Some(cpu);
        self.cv.notify_one();
    }

    fn take(&self) -> usize {
        let mut g = lock(&self.cpu);
        loop {
            if let Some(cpu) = g.take() {
                return cpu;
            }
            g = self.cv.wait(g).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// A switched-out kernel thread: the baton its OS thread waits on.
pub struct HostContext {
    baton: Arc<Baton>,
}

impl HostContext {
    fn new() -> Self {
        HostContext { baton: Arc::new(Baton { cpu: StdMutex::new(None), cv: StdCondvar::new() }) }
    }
}

/// Whether a clock tick would have work to do in the system: a timed sleep is pending (its
/// deadline is checked on the tick), or some CPU has threads waiting in its run queue (time
/// slices to count, idle CPUs to steal). Only the tickless clock asks.
fn tick_wanted(sys: &System) -> bool {
    sys.sched.next_timeout_ns().is_some() || (0..sys.ncpus).any(|c| sys.sched.cpu_stats(c).queued > 0)
}

/// Consumes one interrupt posted on `cpu`: the clock tick when due, else the highest posted
/// vector (the LAPIC's order); `None` if nothing is posted. A tickless clock's tick is due
/// only if [`tick_wanted`]; it is re-armed when its handler is done (`kernel_vector`), so a
/// tick handler that takes longer than [`TICK_NS`] (as under Miri) cannot starve the CPU.
fn take_pending(sys: &System, cpu: usize) -> Option<u8> {
    let c = &sys.cpus[cpu];
    let now = HostMachine::now_ns();
    if !sys.shutdown.load(Ordering::Relaxed)
        && now >= c.next_tick_ns.load(Ordering::Relaxed)
        && (!TICKLESS || tick_wanted(sys))
    {
        c.next_tick_ns.store(now + TICK_NS, Ordering::Relaxed);
        return Some(TICK_VECTOR);
    }
    for w in (0..4).rev() {
        let bits = c.posted[w].load(Ordering::Acquire);
        if bits != 0 {
            let b = 63 - bits.leading_zeros() as usize;
            c.posted[w].fetch_and(!(1u64 << b), Ordering::AcqRel);
            let v = (w * 64 + b) as u8;
            if v == RESCHED_VECTOR {
                c.ipis_taken.fetch_add(1, Ordering::Relaxed);
            }
            return Some(v);
        }
    }
    None
}

/// The interrupted state on the host: just the vector (there are no registers to save).
#[derive(Clone, Copy, Debug)]
pub struct HostFrame {
    /// The vector.
    pub vector: u8,
}

/// One interrupt, through the portable path (`intr::path::interrupt`), as the kernel takes
/// it. Interrupts are disabled.
fn take_interrupt(sys: &'static System, cpu: usize, vector: u8, io: &IntrOff) {
    sys.cpus[cpu].interrupts.fetch_add(1, Ordering::Relaxed);
    intr::path::interrupt::<HostEnv>(vector, &mut HostFrame { vector }, io);
}

/// Takes every pending interrupt while interrupts are enabled on the caller's CPU.
fn deliver_pending() {
    loop {
        let (sys, cpu) = here();
        let c = &sys.cpus[cpu];
        if !c.intr_enabled.load(Ordering::Relaxed) {
            return;
        }
        let Some(vector) = take_pending(sys, cpu) else { return };
        c.intr_enabled.store(false, Ordering::Relaxed);
        // SAFETY: interrupts are disabled on this CPU (just above); the token restores
        // nothing, because the "return from interrupt" below re-enables them, on whatever
        // CPU the thread is on by then, as `iretq` would.
        let io = unsafe { IntrOff::new_unchecked(false, |_| {}) };
        take_interrupt(sys, cpu, vector, &io);
        drop(io);
        this_cpu().intr_enabled.store(true, Ordering::Relaxed);
    }
}

fn restore_intr(was_enabled: bool) {
    if was_enabled {
        this_cpu().intr_enabled.store(true, Ordering::Relaxed);
        deliver_pending();
    }
}

/// Posts `vector` on `cpu` and wakes it if it waits for one. Returns false if the vector was
/// already posted there (the raise merges into that delivery, as in the LAPIC's IRR).
fn post(sys: &System, cpu: usize, vector: u8) -> bool {
    let c = &sys.cpus[cpu];
    let _g = lock(&c.lock);
    let bit = 1u64 << (vector % 64);
    let was = c.posted[vector as usize / 64].fetch_or(bit, Ordering::AcqRel);
    c.wake.notify_one();
    was & bit == 0
}

impl HostMachine {
    /// An interrupt point: takes whatever interrupt is pending on this CPU (clock tick,
    /// reschedule IPI) if interrupts are enabled. Busy loops in test threads call this.
    pub fn poll_interrupts() {
        deliver_pending();
    }

    /// Number of interrupts taken by `cpu` of the caller's system.
    pub fn interrupts_taken(cpu: usize) -> u64 {
        here().0.cpus[cpu].interrupts.load(Ordering::Relaxed)
    }

    /// Raises `vector` on `cpu` of the caller's system, as a device's MSI or another CPU's IPI
    /// would: taken at that CPU's next interrupt point. Returns false if the vector was
    /// already pending there (not yet taken): the raise merges into that delivery.
    pub fn raise(cpu: usize, vector: u8) -> bool {
        post(this_system(), cpu, vector)
    }

    /// Whether `vector` is posted on `cpu` of the caller's system and not yet taken.
    pub fn is_posted(cpu: usize, vector: u8) -> bool {
        let c = &this_system().cpus[cpu];
        c.posted[vector as usize / 64].load(Ordering::Acquire) & (1 << (vector % 64)) != 0
    }

    /// EOIs the interrupt path sent on `cpu` of the caller's system.
    pub fn eois(cpu: usize) -> u64 {
        this_system().cpus[cpu].eois.load(Ordering::Relaxed)
    }

    /// Number of reschedule IPIs that reached `cpu` of the caller's system (as opposed to
    /// the scheduler's own count of IPIs it asked for).
    pub fn ipis_taken(cpu: usize) -> u64 {
        here().0.cpus[cpu].ipis_taken.load(Ordering::Relaxed)
    }
}

impl Machine for HostMachine {
    type Context = HostContext;

    fn cpu_index() -> usize {
        here().1
    }

    fn ncpus() -> usize {
        here().0.ncpus
    }

    fn curthread() -> *const () {
        this_cpu().curthread.load(Ordering::Relaxed) as *const ()
    }

    fn set_curthread(thread: *const (), _io: &IntrOff) {
        this_cpu().curthread.store(thread as *mut (), Ordering::Relaxed);
    }

    fn sched_word() -> usize {
        this_cpu().sched_word.load(Ordering::Relaxed)
    }

    fn set_sched_word(v: usize, _io: &IntrOff) {
        this_cpu().sched_word.store(v, Ordering::Relaxed);
    }

    fn intr_depth() -> usize {
        this_cpu().intr_depth.load(Ordering::Relaxed)
    }

    fn intr_depth_enter() {
        this_cpu().intr_depth.fetch_add(1, Ordering::Relaxed);
    }

    fn intr_depth_exit() -> usize {
        this_cpu().intr_depth.fetch_sub(1, Ordering::Relaxed) - 1
    }

    fn intr_disable() -> IntrOff {
        let was = this_cpu().intr_enabled.swap(false, Ordering::Relaxed);
        // SAFETY: interrupts are now disabled on this CPU, and `restore_intr(was)` puts the
        // previous state back (on the CPU the token is dropped on, like `sti` would).
        unsafe { IntrOff::new_unchecked(was, restore_intr) }
    }

    unsafe fn intr_enable() {
        this_cpu().intr_enabled.store(true, Ordering::Relaxed);
        deliver_pending();
    }

    fn intr_enabled() -> bool {
        this_cpu().intr_enabled.load(Ordering::Relaxed)
    }

    fn wait_for_interrupt(_io: &IntrOff) {
        let (sys, cpu) = here();
        let c = &sys.cpus[cpu];
        if c.intr_enabled.load(Ordering::Relaxed) {
            fatal("wait_for_interrupt called with interrupts enabled");
        }
        let vector = {
            let mut g = lock(&c.lock);
            loop {
                if let Some(v) = take_pending(sys, cpu) {
                    break v;
                }
                // When the clock next needs this CPU: never after shutdown; with the
                // tickless clock, never unless a tick has work to do (then at the next
                // tick, or at the earliest timed sleep's deadline if that is later).
                let next_tick = c.next_tick_ns.load(Ordering::Relaxed);
                let wake_at = if sys.shutdown.load(Ordering::Relaxed) {
                    None
                } else if !TICKLESS || (0..sys.ncpus).any(|c| sys.sched.cpu_stats(c).queued > 0) {
                    Some(next_tick)
                } else {
                    sys.sched.next_timeout_ns().map(|d| d.max(next_tick))
                };
                g = match wake_at {
                    None => c.wake.wait(g).unwrap_or_else(PoisonError::into_inner),
                    Some(t) => {
                        let left = t.saturating_sub(HostMachine::now_ns());
                        c.wake
                            .wait_timeout(g, Duration::from_nanos(left))
                            .unwrap_or_else(PoisonError::into_inner)
                            .0
                    }
                };
            }
        };
        // "sti; hlt" woke up: the interrupt is taken with interrupts disabled again, and
        // we return with them disabled, as the token promises.
        // SAFETY: interrupts are disabled on this CPU (checked above; the idle thread's
        // token); this handler token restores nothing.
        let io = unsafe { IntrOff::new_unchecked(false, |_| {}) };
        take_interrupt(sys, cpu, vector, &io);
    }

    fn send_resched(cpu: usize) {
        let (sys, _) = here();
        post(sys, cpu, RESCHED_VECTOR);
    }

    fn now_ns() -> u64 {
        START.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }

    /// Nothing: the simulated clock ticks every millisecond (under Miri it ticks when the
    /// scheduler's earliest timed sleep is due, `next_timeout_ns`), which ends timed sleeps
    /// closely enough for the host tests.
    fn arm_timer(_deadline_ns: u64, _io: &IntrOff) {}

    fn new_context(_stack_top: usize, entry: extern "C" fn(*const ()) -> !, arg: *const ()) -> HostContext {
        let (sys, _) = here();
        let ctx = HostContext::new();
        let baton = ctx.baton.clone();
        /// The new thread's argument, moved to its OS thread.
        struct Arg(*const ());
        // SAFETY: the argument is the new kernel thread's own record, used only by that thread.
        unsafe impl Send for Arg {}
        let arg = Arg(arg);
        std::thread::Builder::new()
            .name("kthread".into())
            .stack_size(1 << 20)
            .spawn(move || {
                let arg = arg;
                let cpu = baton.take();
                drop(baton);
                HERE.set((Some(sys), cpu));
                entry(arg.0)
            })
            .expect("cannot spawn the OS thread of a kernel thread");
        ctx
    }

    fn empty_context() -> HostContext {
        HostContext::new()
    }

    unsafe fn switch(from: *mut HostContext, to: *const HostContext) {
        let (sys, cpu) = here();
        if sys.cpus[cpu].intr_enabled.load(Ordering::Relaxed) {
            fatal("switch called with interrupts enabled");
        }
        // Clone both batons before handing the CPU over: once `to` runs, `from` may be
        // freed (a dead thread's last reference goes in the next thread's finish_switch).
        // SAFETY: per the contract, both point to live contexts until the hand-off below.
        let (from, to) = unsafe { ((*from).baton.clone(), (*to).baton.clone()) };
        HERE.set((Some(sys), NO_CPU));
        to.give(cpu);
        if PARKING.get() {
            // A parked interrupt thread is never switched back in: its next pinned call runs
            // its body on another OS thread, whose blocks wait on `from`. Waiting there too
            // would let a wakeup meant for that block resume this one. Retired, as exited
            // threads' OS threads are (module doc).
            drop((from, to));
            loop {
                std::thread::park();
            }
        }
        let cpu = from.take();
        HERE.set((Some(sys), cpu));
    }

    fn relax() {
        // The thread we wait for needs a host CPU to finish its switch; there may be fewer
        // host CPUs than simulated ones.
        std::thread::yield_now();
    }
}

/// One active pinned call on a CPU: the pinned thread's baton (its saved "context"), what
/// the call saved for the outer borrow, and the call's descriptor. Lives on the pinned
/// thread's OS-thread stack for the length of the call (as x86_64's frame lives on the
/// pinned thread's stack).
struct PinFrame {
    ctx: HostContext,
    /// The thread under the borrower (the current thread before the call).
    under: *const (),
    call: *const PinCall,
    prev_frame: *mut PinFrame,
    /// The body returned (as opposed to its thread blocking).
    returned: AtomicBool,
    /// The body ended through `pin_end_borrowing_more`: the call answers
    /// [`PinOutcome::ReturnedMore`].
    more: AtomicBool,
}

/// A pinned call's work for a runner: the body, its arguments, the CPU lent and the frame.
struct PinJob {
    body: extern "C" fn(usize, usize),
    a0: usize,
    a1: usize,
    cpu: usize,
    frame: *mut PinFrame,
    /// The interrupt thread (`PinCall::thread`), for the check on the way back.
    thread: usize,
}

// SAFETY: `frame` lives on the pinned OS thread's stack until the runner hands the CPU back
// (that thread waits on the frame's baton meanwhile); the runner is its only user then.
unsafe impl Send for PinJob {}

/// An OS thread that runs pinned calls' bodies: the host's stand-in for the interrupt
/// thread's stack (a body runs on its own OS thread, so that a body that blocks leaves the
/// pinned thread's OS thread free to be resumed, as the stack switch does on x86_64).
struct Runner {
    job: StdMutex<Option<PinJob>>,
    cv: StdCondvar,
}

impl Runner {
    fn spawn(sys: &'static System) -> Arc<Runner> {
        let r = Arc::new(Runner { job: StdMutex::new(None), cv: StdCondvar::new() });
        let me = r.clone();
        std::thread::Builder::new()
            .name("pin-runner".into())
            .stack_size(1 << 20)
            .spawn(move || me.serve(sys))
            .expect("cannot spawn a pinned-call runner");
        r
    }

    fn give(&self, job: PinJob) {
        *lock(&self.job) = Some(job);
        self.cv.notify_one();
    }

    fn serve(self: Arc<Self>, sys: &'static System) {
        loop {
            let job = {
                let mut g = lock(&self.job);
                loop {
                    if let Some(j) = g.take() {
                        break j;
                    }
                    g = self.cv.wait(g).unwrap_or_else(PoisonError::into_inner);
                }
            };
            HERE.set((Some(sys), job.cpu));
            // `sti`: the body runs with interrupts enabled; pending ones are taken at once.
            // SAFETY: the interrupt thread owns no interrupt-disabled token (it starts here).
            unsafe { HostMachine::intr_enable() };
            (job.body)(job.a0, job.a1);
            // The body returned (one that blocked never returns here: it parks): `cli`, park
            // the state, give the thread under it back its CPU and identity, and the outer
            // borrow its words.
            let (sys, cpu) = here();
            let c = &sys.cpus[cpu];
            c.intr_enabled.store(false, Ordering::Relaxed);
            // A body returns only while its thread still borrows the CPU
            // (`Scheduler::pin_return`); one that blocked or was preempted has had its frame
            // resumed from by the thread underneath: the frame is gone (x86_64's
            // `intr_pin_bad_return` says the same).
            let frame = c.pin_frame.load(Ordering::Relaxed);
            let running = c.curthread.load(Ordering::Relaxed) as usize;
            assert!(
                core::ptr::eq(frame, job.frame) && running == job.thread,
                "pinned call: the body of interrupt thread {:#x} returned after the thread stopped \
                 borrowing CPU {cpu} (it blocked or was preempted: the frame it returns into is \
                 gone; pinned frame now {frame:p}, running {running:#x})",
                job.thread
            );
            // SAFETY: the frame lives until its pinned thread has its baton back (below); `f`
            // is not used after the `returned` store, and the baton is given through our own
            // `Arc`, not through the frame.
            let f = unsafe { &*job.frame };
            // SAFETY: the descriptor outlives its thread's calls (pin_call's contract).
            // (Odd since the call began: even again, parked.)
            unsafe { (*f.call).state.fetch_add(1, Ordering::Release) };
            c.curthread.store(f.under as *mut (), Ordering::Relaxed);
            c.pin_frame.store(f.prev_frame, Ordering::Relaxed);
            // Our own reference to the baton: once `give` wakes the pinned thread, `pin_call`
            // returns and drops the frame (and, with it, the frame's reference) while `give`
            // may still be unlocking the baton's mutex. Giving through the frame's reference
            // let the baton be freed under `give`'s `&self` (Miri: "strongly protected").
            let baton = f.ctx.baton.clone();
            f.returned.store(true, Ordering::Relaxed);
            HERE.set((Some(sys), NO_CPU));
            lock(&sys.runners).push(self.clone());
            baton.give(cpu);
        }
    }
}

/// The innermost active pinned call's frame on the caller's CPU.
fn top_frame() -> &'static PinFrame {
    let f = this_cpu().pin_frame.load(Ordering::Relaxed);
    assert!(!f.is_null(), "no pinned call is active on this CPU");
    // SAFETY: a non-null `pin_frame` is the frame of an active pinned call on this CPU,
    // alive until that call returns (and then unlinked before its baton is given back).
    unsafe { &*f }
}

/// The pinned switch on the host (protocol: `crates/sched/src/pinned.rs`). The body runs on a
/// runner OS thread while the pinned thread's OS thread waits on its frame's baton: the CPU is
/// handed over, not shared, exactly as [`Machine::switch`] hands it over. Frames link to the
/// outer borrow's, so borrows nest.
impl PinSwitch for HostMachine {
    unsafe fn pin_call(call: &PinCall, a0: usize, a1: usize) -> (PinOutcome, usize, usize) {
        let (sys, cpu) = here();
        let c = &sys.cpus[cpu];
        // As x86_64's one compare of the IPL and spin-count word: Level also when spin mutexes
        // are held.
        if c.ipl.load(Ordering::Relaxed) as usize != call.level || c.mtx_count.load(Ordering::Relaxed) != 0 {
            return (PinOutcome::Level, a0, a1);
        }
        if call.state.load(Ordering::Acquire) & 1 != 0 {
            return (PinOutcome::Busy, a0, a1);
        }
        let thread = call.thread;
        // As x86_64's `asm!` around `intr_pin_call`: the borrower runs at interrupt depth 0,
        // and the lending context's depth is back on every answer (below).
        let depth = c.intr_depth.swap(0, Ordering::Relaxed);
        let mut frame = PinFrame {
            ctx: HostContext::new(),
            under: c.curthread.load(Ordering::Relaxed),
            call,
            prev_frame: c.pin_frame.load(Ordering::Relaxed),
            returned: AtomicBool::new(false),
            more: AtomicBool::new(false),
        };
        let fp: *mut PinFrame = &mut frame;
        c.pin_frame.store(fp, Ordering::Relaxed);
        call.state.fetch_add(1, Ordering::Relaxed); // odd: a call under way (and counted)
        c.curthread.store(thread as *mut (), Ordering::Relaxed);
        let runner = lock(&sys.runners).pop().unwrap_or_else(|| Runner::spawn(sys));
        HERE.set((Some(sys), NO_CPU));
        runner.give(PinJob { body: call.body, a0, a1, cpu, frame: fp, thread: thread.addr() });
        // Until the body returns, or its thread blocks and the scheduler resumes us through
        // `pin_switch_under` (then `returned` is false).
        // SAFETY: `fp` is `frame`, on this stack; the runner and the scheduler use it only
        // while we wait here.
        let cpu = unsafe { (*fp).ctx.baton.take() };
        HERE.set((Some(sys), cpu));
        sys.cpus[cpu].intr_depth.store(depth, Ordering::Relaxed);
        // Blocked: `pin_switch_under` put the outer borrow's words back before it resumed us.
        if frame.returned.load(Ordering::Relaxed) {
            if frame.more.load(Ordering::Relaxed) {
                (PinOutcome::ReturnedMore, 0, 0)
            } else {
                (PinOutcome::Returned, 0, 0)
            }
        } else {
            (PinOutcome::Blocked, 0, 0)
        }
    }

    fn at_pin_level<const LEVEL: usize>() -> bool {
        let c = this_cpu();
        c.ipl.load(Ordering::Relaxed) as usize == LEVEL && c.mtx_count.load(Ordering::Relaxed) == 0
    }

    unsafe fn pin_call_leveled(call: &PinCall, a0: usize, a1: usize) -> (PinOutcome, usize, usize) {
        let c = this_cpu();
        assert!(
            c.ipl.load(Ordering::Relaxed) as usize == call.level && c.mtx_count.load(Ordering::Relaxed) == 0,
            "pin_call_leveled: the CPU is not at the call's level"
        );
        // SAFETY: per the trait contract.
        unsafe { Self::pin_call(call, a0, a1) }
    }

    unsafe fn pin_end() -> bool {
        // The runner ends the call when the body returns (`Runner::serve`, which checks
        // again that the thread borrows the CPU).
        Self::is_borrower()
    }

    unsafe fn pin_end_borrowing() {
        // The body returns at once, and the runner ends the call (`Runner::serve`, which
        // checks again that the thread borrows the CPU).
        debug_assert!(Self::is_borrower(), "pin_end_borrowing: the running thread does not borrow the CPU");
    }

    unsafe fn pin_end_borrowing_more() {
        // As `pin_end_borrowing`; the innermost frame (the running thread's own call) answers
        // `ReturnedMore` when the runner ends it.
        debug_assert!(
            Self::is_borrower(),
            "pin_end_borrowing_more: the running thread does not borrow the CPU"
        );
        top_frame().more.store(true, Ordering::Relaxed);
    }

    fn borrower_of(cpu: usize) -> usize {
        let sys = this_system();
        match sys.cpus.get(cpu) {
            Some(c) if cpu < sys.ncpus && !c.pin_frame.load(Ordering::Relaxed).is_null() => {
                c.curthread.load(Ordering::Relaxed) as usize
            }
            _ => 0,
        }
    }

    fn is_borrower() -> bool {
        !this_cpu().pin_frame.load(Ordering::Relaxed).is_null()
    }

    unsafe fn pin_switch_under(from: *mut HostContext) {
        let f = top_frame();
        let c = this_cpu();
        c.pin_frame.store(f.prev_frame, Ordering::Relaxed);
        // SAFETY: per the trait contract; the frame stays alive until its pinned thread has
        // its baton (it waits for it in `pin_call`).
        unsafe { Self::switch(from, &f.ctx) };
    }

    fn pinned_thread() -> *const () {
        top_frame().under
    }

    fn pinned_call() -> *const PinCall {
        top_frame().call
    }

    fn pin_parking() {
        PARKING.set(true);
    }
}

impl IplCpu for HostMachine {
    #[inline]
    fn ipl_get() -> u8 {
        this_cpu().ipl.load(Ordering::Relaxed)
    }

    #[inline]
    fn ipl_set(level: u8) {
        this_cpu().ipl.store(level, Ordering::Relaxed);
    }

    #[inline]
    fn pending_get() -> u32 {
        this_cpu().ipl_pending.load(Ordering::Relaxed)
    }

    #[inline]
    fn pending_or(bits: u32) {
        this_cpu().ipl_pending.fetch_or(bits, Ordering::Relaxed);
    }

    #[inline]
    fn pending_and(mask: u32) {
        this_cpu().ipl_pending.fetch_and(mask, Ordering::Relaxed);
    }

    fn mtx_enter(old: u8) {
        let c = this_cpu();
        if c.mtx_count.fetch_add(1, Ordering::Relaxed) == 0 {
            c.mtx_oldspl.store(old, Ordering::Relaxed);
        }
    }

    fn mtx_exit() -> Option<u8> {
        let c = this_cpu();
        let old = c.mtx_oldspl.load(Ordering::Relaxed);
        let n = c.mtx_count.fetch_sub(1, Ordering::Relaxed);
        assert!(n > 0, "spin_exit without spin_enter");
        (n == 1).then_some(old)
    }

    fn mtx_state() -> (u32, u8) {
        let c = this_cpu();
        (c.mtx_count.load(Ordering::Relaxed), c.mtx_oldspl.load(Ordering::Relaxed))
    }

    fn set_mtx_state(count: u32, oldspl: u8) {
        let c = this_cpu();
        c.mtx_count.store(count, Ordering::Relaxed);
        c.mtx_oldspl.store(oldspl, Ordering::Relaxed);
    }
}

/// The lock layer's environment on the host: the scheduler, SPL state and lock state of the
/// system the calling thread belongs to (see the module doc). Call its functions only from
/// kernel threads (or CPU threads) of a booted [`HostSystem`].
pub struct HostEnv;

impl ipl::SplEnv for HostEnv {
    type M = HostMachine;

    fn replay(vector: u8, io: &IntrOff) {
        intr::path::replay::<HostEnv>(vector, io);
    }

    fn preempt() {
        this_system().sched.preempt_check();
    }
}

impl sched::SchedEnv for HostEnv {
    #[inline]
    fn sched() -> &'static Sched {
        this_system().sched
    }

    #[inline]
    fn spl() -> &'static Spl {
        this_system().spl
    }

    fn sleep_check() {
        intr::path::sleep_check::<HostEnv>();
    }

    type ThreadExt = sync::pi::TsLinks<sched::Thread<HostEnv>>;
}

impl sync::Env for HostEnv {
    #[inline]
    fn sync() -> &'static LockState {
        this_system().locks
    }
}

impl intr::IntrEnv for HostEnv {
    type Frame = HostFrame;

    #[inline]
    fn intr() -> &'static Intr {
        this_system().intr
    }

    fn retrigger(vector: u8) {
        let (sys, cpu) = here();
        post(sys, cpu, vector);
    }

    fn eoi() {
        this_cpu().eois.fetch_add(1, Ordering::Relaxed);
    }

    fn storm_report(source: &str, on: bool, rate: u64) {
        lock(&this_system().storms).push((source.to_string(), on, rate));
    }

    fn replay_frame(vector: u8) -> HostFrame {
        HostFrame { vector }
    }

    /// The host's own vectors: the call (runs `System::calls`), the clock tick, the
    /// reschedule IPI (nothing to do: `intr_exit` acts on `need_resched`). Any other vector
    /// without a source is counted as stray.
    fn kernel_vector(vector: u8, _frame: &mut HostFrame, io: &IntrOff) {
        let sys = this_system();
        match vector {
            CALL_VECTOR => {
                let calls = std::mem::take(&mut *lock(&sys.calls));
                for f in calls {
                    f();
                }
            }
            TICK_VECTOR => {
                sys.sched.tick(io);
                if TICKLESS {
                    // Re-armed from the handler's end (see `take_pending`).
                    this_cpu().next_tick_ns.store(HostMachine::now_ns() + TICK_NS, Ordering::Relaxed);
                }
            }
            RESCHED_VECTOR => {}
            _ => {
                sys.stray.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Panic payload as text.
pub fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

/// Wraps a kernel thread's body so that a panic (a failed assertion) is recorded for
/// [`HostSystem::run`] to report, and the thread exits normally instead of aborting the process.
pub fn checked(f: impl FnOnce() + Send + 'static) -> impl FnOnce() + Send + 'static {
    move || {
        if let Err(p) = catch_unwind(AssertUnwindSafe(f)) {
            let (sys, _) = here();
            let name = sys.sched.current().name().to_string();
            lock(&sys.failures).push(format!("kernel thread {name:?} panicked: {}", panic_message(&*p)));
        }
    }
}

/// Busy-waits (with interrupt points) until `cond` holds; false after `timeout_ns`.
pub fn spin_until(timeout_ns: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = HostMachine::now_ns() + timeout_ns;
    while !cond() {
        if HostMachine::now_ns() >= deadline {
            return false;
        }
        HostMachine::poll_interrupts();
        std::hint::spin_loop();
    }
    true
}

/// A booted simulated machine: `ncpus` CPU threads in their idle loops, and its scheduler.
pub struct HostSystem {
    sys: &'static System,
    /// The scheduler (leaked: threads hold `&'static` to it).
    pub sched: &'static Sched,
    /// The SPL state (leaked, like the scheduler).
    pub spl: &'static Spl,
    /// The lock layer's state: checker, statistics, turnstiles, sleep queues (leaked).
    pub locks: &'static LockState,
    /// The interrupt framework (leaked).
    pub intr: &'static Intr,
}

impl HostSystem {
    /// Boots `ncpus` simulated CPUs: each is an OS thread that becomes the CPU's idle thread
    /// (`init_cpu`) and runs the idle loop.
    pub fn boot(ncpus: usize) -> HostSystem {
        assert!((1..=MAX_CPUS).contains(&ncpus), "bad CPU count {ncpus} (1..={MAX_CPUS})");
        let sched: &'static Sched = Box::leak(Box::new(Scheduler::new()));
        let now = HostMachine::now_ns();
        let cpus = (0..ncpus)
            .map(|_| HostCpu {
                curthread: AtomicPtr::new(std::ptr::null_mut()),
                sched_word: AtomicUsize::new(0),
                intr_enabled: AtomicBool::new(false),
                posted: [const { AtomicU64::new(0) }; 4],
                eois: AtomicU64::new(0),
                pin_frame: AtomicPtr::new(std::ptr::null_mut()),
                intr_depth: AtomicUsize::new(0),
                next_tick_ns: AtomicU64::new(now + TICK_NS),
                interrupts: AtomicU64::new(0),
                ipis_taken: AtomicU64::new(0),
                ipl: AtomicU8::new(Ipl::None as u8),
                ipl_pending: AtomicU32::new(0),
                mtx_count: AtomicU32::new(0),
                mtx_oldspl: AtomicU8::new(0),
                lock: StdMutex::new(()),
                wake: StdCondvar::new(),
            })
            .collect();
        let spl: &'static Spl = Box::leak(Box::new(SplState::new()));
        let locks: &'static LockState = Box::leak(Box::new(SyncState::new()));
        let intr: &'static Intr = Box::leak(Box::new(intr::Intr::new()));
        // Wired as `kernel/src/intr.rs` wires the kernel's; `HostEnv` finds this system
        // through the calling thread's `HERE`.
        for v in [TICK_VECTOR, RESCHED_VECTOR, CALL_VECTOR] {
            intr.reserve(v);
        }
        intr.reserve_soft_vectors();
        spl.set_vector_ipl(TICK_VECTOR, Some(Ipl::Sched));
        spl.set_vector_ipl(RESCHED_VECTOR, Some(Ipl::Sched));
        spl.set_vector_ipl(CALL_VECTOR, Some(Ipl::High));
        let sys: &'static System = Box::leak(Box::new(System {
            ncpus,
            cpus,
            sched,
            spl,
            locks,
            intr,
            runners: StdMutex::new(Vec::new()),
            calls: StdMutex::new(Vec::new()),
            failures: StdMutex::new(Vec::new()),
            storms: StdMutex::new(Vec::new()),
            stray: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
        }));
        for cpu in 0..ncpus {
            std::thread::Builder::new()
                .name(format!("cpu{cpu}"))
                .spawn(move || {
                    HERE.set((Some(sys), cpu));
                    let r = catch_unwind(AssertUnwindSafe(|| {
                        let io = HostMachine::intr_disable();
                        sched.init_cpu(&io);
                        drop(io);
                        sched.idle_loop();
                    }));
                    if let Err(p) = r {
                        fatal(&format!("simulated CPU {cpu} panicked: {}", panic_message(&*p)));
                    }
                })
                .expect("cannot spawn a CPU thread");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(0..ncpus).all(|c| sched.cpu_online(c)) {
            assert!(Instant::now() < deadline, "simulated CPUs did not come online");
            std::thread::sleep(Duration::from_millis(1));
        }
        HostSystem { sys, sched, spl, locks, intr }
    }

    /// Number of simulated CPUs.
    pub fn ncpus(&self) -> usize {
        self.sys.ncpus
    }

    /// The storm reports so far: (source, started, rate).
    pub fn storm_reports(&self) -> Vec<(String, bool, u64)> {
        lock(&self.sys.storms).clone()
    }

    /// Vectors taken with neither a source nor a host handler.
    pub fn stray(&self) -> u64 {
        self.sys.stray.load(Ordering::Relaxed)
    }

    /// Runs `f` as a kernel thread ("main", [`Priority::KTHREAD`], unbound) and returns its
    /// result. Panics (fails the test) if `f` or a [`checked`] thread panicked, or if `f` does
    /// not finish within [`RUN_TIMEOUT`] — a hang becomes a failure with diagnostics.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce(&'static Sched) -> T + Send + 'static) -> T {
        self.run_timeout(RUN_TIMEOUT, f)
    }

    /// [`HostSystem::run`] with another limit than [`RUN_TIMEOUT`].
    pub fn run_timeout<T: Send + 'static>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&'static Sched) -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = mpsc::channel();
        let sched = self.sched;
        lock(&self.sys.calls).push(Box::new(move || {
            sched.spawn("main", Priority::KTHREAD, None, move || {
                let r = catch_unwind(AssertUnwindSafe(|| f(sched)));
                let _ = tx.send(r);
            });
        }));
        post(self.sys, 0, CALL_VECTOR);
        let r = rx.recv_timeout(timeout);
        let failures = lock(&self.sys.failures).clone();
        match r {
            Ok(Ok(v)) => {
                assert!(failures.is_empty(), "kernel threads failed:\n{}", failures.join("\n"));
                v
            }
            Ok(Err(p)) => {
                panic!("{}\nother failures: {failures:?}", panic_message(&*p));
            }
            Err(_) => panic!(
                "the kernel side did not finish within {timeout:?} (hang: lost wakeup or deadlock?)\n{}\n\
                 failures: {failures:?}",
                self.diagnostics()
            ),
        }
    }

    /// The CPUs' counters, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut s = format!("live threads: {}\n", self.sched.live_threads());
        for cpu in 0..self.sys.ncpus {
            let c = &self.sys.cpus[cpu];
            s += &format!(
                "cpu{cpu}: {:?} interrupts={} ipis_taken={} intr_enabled={} posted={:x?} ipl={:?} {:?}\n",
                self.sched.cpu_stats(cpu),
                c.interrupts.load(Ordering::Relaxed),
                c.ipis_taken.load(Ordering::Relaxed),
                c.intr_enabled.load(Ordering::Relaxed),
                c.posted.iter().map(|w| w.load(Ordering::Relaxed)).collect::<Vec<_>>(),
                Ipl::from_u8(c.ipl.load(Ordering::Relaxed)),
                self.spl.stats(cpu),
            );
        }
        s
    }
}

impl Drop for HostSystem {
    /// Stops the clock: idle CPUs then sleep until the process exits.
    fn drop(&mut self) {
        self.sys.shutdown.store(true, Ordering::Relaxed);
        for c in &self.sys.cpus {
            let _g = lock(&c.lock);
            c.wake.notify_one();
        }
    }
}
