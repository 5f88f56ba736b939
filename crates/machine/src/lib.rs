//! # The machine-dependence boundary
//!
//! The portable ithreads crates (`sched`, and later `ipl`, `sync`, `intr`) see the CPU only
//! through the [`Machine`] trait. The x86_64 kernel implements it in `arch/x86_64`; the host
//! test implementation (OS threads standing in for CPUs) is `crates/host-machine`.
//!
//! ## Protocol
//!
//! * Every method may be called on any CPU, in any context, unless its doc says otherwise.
//! * "This CPU" means the CPU the caller runs on *at the moment of the call*. A thread that can
//!   be preempted may migrate right after reading [`Machine::cpu_index`]; callers that need the
//!   answer to stay true disable interrupts first and keep the [`IntrOff`] token while they use
//!   it (the token is the compile-time proof — the Tock idea — that interrupts are off).
//! * [`Machine::curthread`] is one load from per-CPU memory (on x86_64 a `%gs`-relative `mov`),
//!   so it is correct even if preempted around it: a thread that migrates takes its identity
//!   with it.
//! * Context switching is the only operation that changes stacks. [`Machine::switch`] is called
//!   with interrupts disabled and returns (much later, possibly on another CPU) with interrupts
//!   still disabled.
#![no_std]

use core::marker::PhantomData;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Upper bound on CPUs: the size of every per-CPU array in the portable crates, defined here
/// once. A power of two, so that `cpu & (MAX_CPUS - 1)` lets the compiler drop a bounds check
/// on hot paths; that mask aliases nothing because a machine never numbers a CPU at or above
/// this bound (the x86_64 start-up code refuses the CPUs beyond it and names them, and the
/// arch crate checks its own tables against this constant at compile time).
pub const MAX_CPUS: usize = 64;

const _: () = assert!(MAX_CPUS.is_power_of_two());

/// Proof that interrupts are disabled on this CPU for as long as the token lives.
///
/// Only [`Machine::intr_disable`] makes one (through [`IntrOff::new_unchecked`]); it restores
/// the previous interrupt state on drop. The token is neither `Send` nor `Sync`: it proves
/// something about *this* CPU only.
pub struct IntrOff {
    was_enabled: bool,
    restore: fn(bool),
    _not_send: PhantomData<*const ()>,
}

impl IntrOff {
    /// Wraps the state saved by a machine's interrupt-disable operation.
    ///
    /// # Safety
    /// Interrupts must be disabled on this CPU when this is called, and `restore(was_enabled)`
    /// must put back the state that was saved.
    pub unsafe fn new_unchecked(was_enabled: bool, restore: fn(bool)) -> Self {
        IntrOff { was_enabled, restore, _not_send: PhantomData }
    }

    /// Whether interrupts were enabled before this token was made.
    pub fn was_enabled(&self) -> bool {
        self.was_enabled
    }
}

impl Drop for IntrOff {
    #[inline(always)]
    fn drop(&mut self) {
        (self.restore)(self.was_enabled);
    }
}

/// An interrupt thread as [`PinSwitch::pin_call`] lends it a CPU: its state word, the thread,
/// the top of its stack, the function it runs there and the level the CPU must be at. One per
/// interrupt thread, at a stable address for the thread's life (assembly reads it through a
/// pointer: `#[repr(C)]`, offsets 0, 8, 16, 24, 32).
#[repr(C)]
#[derive(Debug)]
pub struct PinCall {
    /// Even: parked (a pinned call may start); odd: a call is under way — the thread borrows
    /// a CPU, or it blocked (or was preempted) in its call and goes on as an ordinary thread
    /// until it parks. Counted up by one at each change: `pin_call` makes it odd as the call
    /// starts and even again when the body ends, and a thread that blocked makes it even when
    /// it parks. So it is also the thread's count of calls ([`PinCall::calls`]), with no
    /// counter of its own on the pinned path.
    pub state: AtomicUsize,
    /// The thread (what [`Machine::curthread`] returns while it runs).
    pub thread: *const (),
    /// Its stack's top, 16-byte aligned.
    pub stack_top: usize,
    /// Run as `body(a0, a1)` on that stack.
    pub body: extern "C" fn(usize, usize),
    /// The interrupt priority level (the `ipl::IplCpu` word's value) a CPU must be at to
    /// be lent to this thread: the level its work runs at.
    pub level: usize,
}

// SAFETY: plain addresses and an atomic; whoever makes a `PinCall` owns the thread and stack
// it names, and the state word is the only field written after construction.
unsafe impl Send for PinCall {}
// SAFETY: as above.
unsafe impl Sync for PinCall {}

impl PinCall {
    /// A parked interrupt thread.
    pub fn new(thread: *const (), stack_top: usize, body: extern "C" fn(usize, usize), level: usize) -> Self {
        PinCall { state: AtomicUsize::new(0), thread, stack_top, body, level }
    }

    /// Whether a pinned call may start on it now.
    pub fn is_parked(&self) -> bool {
        self.state.load(Ordering::Acquire) & 1 == 0
    }

    /// How many pinned calls it has been lent (the one under way included).
    pub fn calls(&self) -> u64 {
        (self.state.load(Ordering::Relaxed) as u64).div_ceil(2)
    }

    /// A descriptor no pinned call ever starts on: its state is never parked (a pinned call
    /// answers [`PinOutcome::Busy`], or [`PinOutcome::Level`] — its level is no CPU's). A
    /// placeholder where a thread's descriptor is looked up but the thread is not made yet,
    /// so that the lookup needs no null test.
    pub const fn never_parked() -> Self {
        PinCall {
            state: AtomicUsize::new(1),
            thread: core::ptr::null(),
            stack_top: 0,
            body: never_called,
            level: usize::MAX,
        }
    }
}

/// [`PinCall::never_parked`]'s body: no call starts on that descriptor.
extern "C" fn never_called(_: usize, _: usize) {
    unreachable!("a pinned call started on a never-parked descriptor");
}

/// What [`PinSwitch::pin_call`] did. `#[repr(u32)]`: assembly returns it in `%eax`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinOutcome {
    /// The thread blocked (or was preempted) in its body; the pinned thread was resumed by
    /// [`Machine::switch`] (which returns 0 into the pinned call's frame).
    Blocked = 0,
    /// The body returned.
    Returned = 1,
    /// The interrupt thread was not parked ([`PinCall::state`]): nothing was done.
    Busy = 2,
    /// The CPU was not at the call's level, or held spin mutexes: nothing was done.
    Level = 3,
    /// The body returned as for [`PinOutcome::Returned`], and asked its caller to look for
    /// more work ([`PinSwitch::pin_end_borrowing_more`]: it queued some, which the caller
    /// would otherwise have to test for after every call).
    ReturnedMore = 4,
}

/// The operations a CPU provides to the portable crates.
///
/// All methods are associated functions: a kernel has exactly one machine, chosen at compile
/// time as a type parameter (`Scheduler<X86_64>`), so calls are direct and inline.
pub trait Machine: Sized + Send + Sync + 'static {
    /// The saved state of a switched-out thread (on x86_64: its stack pointer; the callee-saved
    /// registers live on its stack).
    type Context: Send + Sync;

    /// The index (0..ncpus) of the CPU the caller runs on. See the module doc on migration.
    fn cpu_index() -> usize;

    /// Number of CPUs that are online (or being brought online).
    fn ncpus() -> usize;

    /// The current thread's pointer as last set by [`Machine::set_curthread`] on this CPU.
    fn curthread() -> *const ();

    /// Records the current thread of this CPU.
    fn set_curthread(thread: *const (), io: &IntrOff);

    /// A word this CPU keeps for the scheduler (the address of its per-CPU state, so that the
    /// switch finds it with one load instead of computing it from [`Machine::cpu_index`]);
    /// 0 until [`Machine::set_sched_word`] on this CPU.
    fn sched_word() -> usize;

    /// Sets this CPU's scheduler word.
    fn set_sched_word(v: usize, io: &IntrOff);

    /// This CPU's interrupt depth: the scheduler's count of interrupt handlers active on it,
    /// nested ([`Machine::intr_depth_enter`], [`Machine::intr_depth_exit`]). Kept by the
    /// machine, in its per-CPU area, because the pinned switch ([`PinSwitch::pin_call`]) sets
    /// it aside for the borrowing thread and puts it back in the same instructions as the rest
    /// of the switch's state (x86_64: `%gs:72`). Read and written only by its own CPU with
    /// interrupts disabled.
    fn intr_depth() -> usize;

    /// One more interrupt handler active on this CPU (interrupt entry, interrupts disabled).
    fn intr_depth_enter();

    /// One interrupt handler fewer on this CPU (interrupt exit, interrupts disabled): the depth
    /// after it.
    fn intr_depth_exit() -> usize;

    /// Disables interrupts on this CPU; the token restores the previous state on drop.
    fn intr_disable() -> IntrOff;

    /// [`Machine::intr_disable`] where interrupts are known to be enabled (the token
    /// enables them again on drop): a machine may skip reading the old state. The default
    /// reads it.
    ///
    /// # Safety
    /// Interrupts are enabled on this CPU.
    #[inline(always)]
    unsafe fn intr_disable_enabled() -> IntrOff {
        Self::intr_disable()
    }

    /// Enables interrupts on this CPU.
    ///
    /// # Safety
    /// The caller owns no [`IntrOff`] token on this CPU that is still relied upon (used by a new
    /// thread, which starts with interrupts disabled, once it has finished the switch).
    unsafe fn intr_enable();

    /// Whether interrupts are enabled on this CPU.
    fn intr_enabled() -> bool;

    /// Atomically enables interrupts and waits for one (x86: `sti; hlt`), then disables
    /// interrupts again. Used only by idle threads.
    fn wait_for_interrupt(io: &IntrOff);

    /// Asks `cpu` to reschedule: an inter-processor interrupt whose handler ends in the
    /// scheduler's interrupt-exit path.
    fn send_resched(cpu: usize);

    /// A monotonic clock in nanoseconds, the same on every CPU.
    fn now_ns() -> u64;

    /// Asks for a clock interrupt on this CPU at `deadline_ns` ([`Machine::now_ns`] time) or
    /// earlier, so that a timed sleep ends at its deadline rather than at the next periodic
    /// tick. Interrupts are disabled (`io`). A machine whose clock only ticks periodically
    /// does nothing here; its sleeps end at the first tick after their deadline.
    fn arm_timer(deadline_ns: u64, io: &IntrOff);

    /// Builds the context of a new thread that, when first switched to, calls `entry(arg)`
    /// on the stack whose highest address is `stack_top`. `entry` must never return.
    fn new_context(stack_top: usize, entry: extern "C" fn(*const ()) -> !, arg: *const ()) -> Self::Context;

    /// The context slot of a thread that is running now and has never been switched from
    /// (a CPU's boot thread). Its contents are written by the first [`Machine::switch`].
    fn empty_context() -> Self::Context;

    /// Saves the running thread's state into `*from` and resumes the thread saved in `*to`.
    ///
    /// # Safety
    /// Interrupts are disabled. `from` is the context of the running thread and stays valid
    /// until that thread is resumed; `to` was filled by [`Machine::new_context`] or by an
    /// earlier `switch`, and no other CPU runs or is switching to that thread.
    unsafe fn switch(from: *mut Self::Context, to: *const Self::Context);

    /// Spin-loop hint (x86 `pause`). Every busy-wait in the portable crates calls it.
    #[inline]
    fn relax() {
        core::hint::spin_loop();
    }
}

/// The pinned interrupt-thread switch: what a machine provides so that an interrupt can lend
/// its CPU to an interrupt thread without a scheduler context switch. The protocol (who
/// calls what, what the scheduler does when the thread blocks) is documented once, in
/// `crates/sched/src/pinned.rs`; this trait is the machine's half of it, implemented by
/// `intr_pin_call` in `arch/x86_64/src/entry.s` and by `crates/host-machine`. Every machine
/// the portable scheduler runs on implements it: there are no defaults.
pub trait PinSwitch: Machine {
    /// **Pinned call**, the machine's contract (protocol: `crates/sched/src/pinned.rs`): if this
    /// CPU is at `call.level` (its `ipl::IplCpu` word) and holds no spin mutex (its
    /// `ipl::IplCpu::mtx_state` count; else [`PinOutcome::Level`]: the caller sets the level
    /// and the spin-mutex state aside and calls again, or queues) and `call`'s
    /// thread is parked ([`PinCall::state`] even; else [`PinOutcome::Busy`]), lends the CPU to
    /// that thread for one call of `body(a0, a1)` on its stack, without a scheduler switch.
    /// Saves the running thread's callee-saved registers in a frame that [`Machine::switch`]
    /// can resume, together with this CPU's previous pinned context and its interrupt depth
    /// (so borrows nest: the running thread may itself be a borrowing interrupt thread);
    /// makes that frame this CPU's pinned context ([`PinSwitch::pin_switch_under`]; not null
    /// exactly while a pinned call is active, which is what [`PinSwitch::is_borrower`]
    /// tests), makes the thread the current thread ([`Machine::curthread`]) and its state odd;
    /// switches to its stack top, enables interrupts and calls `body`. `body` ends with interrupts disabled and its thread still
    /// the borrower: through [`PinSwitch::pin_end`] (`Scheduler::pin_end`), or by returning
    /// (`Scheduler::pin_return`) — the machine then checks that again and panics, naming the
    /// thread, if not. When it ends: the state parked, the previous stack, current thread,
    /// depth and pinned context back, and this answers [`PinOutcome::Returned`].
    /// If instead the thread blocks inside `body`, its state stays odd (not parked) and the
    /// scheduler resumes the thread under it by
    /// [`PinSwitch::pin_switch_under`] (which puts the interrupt depth and pinned context
    /// back): this call then answers [`PinOutcome::Blocked`] (interrupts disabled) and the
    /// thread goes on later as an ordinary thread (its `body` must then never return into
    /// this frame; it parks its state when it is done).
    ///
    /// The borrower runs in thread context: for the call, this CPU's interrupt depth
    /// ([`Machine::intr_depth`]) is 0 — the exit of an interrupt nested in the borrower and
    /// `preempt_check` are its preemption points — and the lending context's depth is back
    /// when the call answers, whatever the answer. A call that lends the CPU (every answer
    /// but `Busy` and `Level`) is counted by the state word ([`PinCall::calls`]).
    ///
    /// Answers `(outcome, a0, a1)`: for `Busy` and `Level` the arguments are handed back
    /// (the caller need not keep them across the call); otherwise those two are meaningless.
    ///
    /// # Safety
    /// Interrupts are disabled; `call` stays valid and in place for the thread's life; if its
    /// state is parked, its stack is unused and the thread on no CPU; its `body` keeps the
    /// contract above.
    unsafe fn pin_call(call: &PinCall, a0: usize, a1: usize) -> (PinOutcome, usize, usize);

    /// Whether this CPU is at `LEVEL` and holds no spin mutex: [`PinSwitch::pin_call`]'s level
    /// test, for a caller whose threads' level is a constant (x86_64: one compare of the IPL
    /// and spin-count word with an immediate, a branch).
    fn at_pin_level<const LEVEL: usize>() -> bool;

    /// [`PinSwitch::pin_call`] without its level test, which the caller made
    /// ([`PinSwitch::at_pin_level`] with `call.level`, interrupts disabled since): never
    /// [`PinOutcome::Level`]; otherwise the same.
    ///
    /// # Safety
    /// As [`PinSwitch::pin_call`]'s, and this CPU is at `call.level` with no spin mutex held.
    unsafe fn pin_call_leveled(call: &PinCall, a0: usize, a1: usize) -> (PinOutcome, usize, usize);

    /// The end of a pinned body, decided and done with interrupts disabled: if the running
    /// thread still borrows this CPU ([`PinSwitch::is_borrower`]), its
    /// pinned call ends — the state parked, the words of [`PinSwitch::pin_call`]'s frame
    /// back, and that call answers [`PinOutcome::Returned`] — either here, without returning
    /// (x86_64: the test and the switch back are one assembly sequence, and the body's stack
    /// is left as it is), or by answering `true`, after which the body must return at once,
    /// interrupts still disabled (the host machine: its runner then ends the call). `false`:
    /// the thread no longer borrows the CPU (it blocked or was preempted during the call, or
    /// never borrowed it); nothing changed.
    ///
    /// # Safety
    /// Interrupts are disabled. The caller is prepared for this not to return: nothing on
    /// its stack, in the pinned body's frames, needs dropping (it is left, not unwound).
    unsafe fn pin_end() -> bool;

    /// [`PinSwitch::pin_end`] for a caller that has found the running thread still this
    /// CPU's borrower ([`PinSwitch::is_borrower`]) with interrupts disabled, and kept them
    /// disabled since: the call ends without a second test — on x86_64 here, never returning
    /// (the body's stack is left as it is); on the host by the body's return, which must
    /// follow at once, interrupts still disabled.
    ///
    /// # Safety
    /// As [`PinSwitch::pin_end`]'s, and the running thread is this CPU's borrower: tested
    /// with interrupts disabled, and they have not been enabled since.
    unsafe fn pin_end_borrowing();

    /// [`PinSwitch::pin_end_borrowing`], and the call answers [`PinOutcome::ReturnedMore`]
    /// instead of [`PinOutcome::Returned`]: the body tells its caller that there is more to
    /// do (on x86_64 one more entry point into the same return sequence).
    ///
    /// # Safety
    /// As [`PinSwitch::pin_end_borrowing`]'s.
    unsafe fn pin_end_borrowing_more();

    /// The thread CPU `cpu` is lent to now — its running thread, if a pinned call is active
    /// there — or 0 (not lent, or not set up). A snapshot, for other CPUs
    /// (`Scheduler::is_running`, `ps`).
    fn borrower_of(cpu: usize) -> usize;

    /// Whether the running thread borrows this CPU: a pinned call is active on it (x86_64:
    /// the pinned context word, `%gs:40`, compared with 0, a branch). From thread context, or
    /// from an interrupt nested in the borrower (whose CPU it still is). Why an active call
    /// means the running thread is its borrower: a thread that stopped borrowing (it blocked
    /// or was preempted, which ends its call) runs again only once every pinned call on its
    /// CPU has ended, and no other thread runs while one is active.
    fn is_borrower() -> bool;

    /// The borrower leaves the CPU (it blocks or is preempted; the scheduler's block path):
    /// puts back this CPU's interrupt depth and pinned context from the innermost active
    /// pinned call's frame, then saves the running thread into `*from` and resumes the
    /// thread
    /// directly under it from that frame, as [`Machine::switch`] does — its
    /// [`PinSwitch::pin_call`] answers [`PinOutcome::Blocked`].
    ///
    /// # Safety
    /// As [`Machine::switch`]'s; the running thread is this CPU's borrower (a pinned call is
    /// active), and the caller has made the thread under it the current thread.
    unsafe fn pin_switch_under(from: *mut Self::Context);

    /// The thread directly under this CPU's borrower (the current thread before the
    /// innermost active pinned call).
    fn pinned_thread() -> *const ();

    /// The [`PinCall`] of the innermost active pinned call on this CPU.
    fn pinned_call() -> *const PinCall;

    /// The running interrupt thread, which blocked in a pinned call and has finished as an
    /// ordinary thread, is about to park (`Scheduler::pin_park`): the next
    /// [`Machine::switch`] away from it never returns, and its next pinned call starts it
    /// afresh. x86_64: nothing (the next call starts at the stack top and nothing waits on
    /// the saved context). The host machine, where the body ran on an OS thread of its own
    /// that would otherwise wait on the thread's context, retires that OS thread instead, so
    /// that the next block of the same thread is the only waiter there.
    fn pin_parking();
}
