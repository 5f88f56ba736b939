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
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

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
    fn drop(&mut self) {
        (self.restore)(self.was_enabled);
    }
}

/// An interrupt thread for [`PinSwitch::pin_call`]: the thread, the top of its stack and the
/// function it runs there (installed in a CPU's [`PinSlots`]).
#[derive(Clone, Copy, Debug)]
pub struct PinCall {
    /// The thread (what [`Machine::curthread`] returns while it runs).
    pub thread: *const (),
    /// Its stack's top, 16-byte aligned.
    pub stack_top: usize,
    /// Run as `body(a0, a1)` on that stack.
    pub body: extern "C" fn(usize, usize),
}

// SAFETY: plain addresses; whoever makes a `PinCall` owns the thread and stack they name.
unsafe impl Send for PinCall {}
// SAFETY: as above (read-only after construction).
unsafe impl Sync for PinCall {}

/// One CPU's words of the pinned switch ([`PinSwitch::pin_call`]), kept where the machine's
/// entry code reaches them in one instruction (x86_64: `%gs:48..80`, entry.s). `#[repr(C)]`:
/// assembly reads and writes them (offsets 0, 8, 16, 24).
#[repr(C)]
#[derive(Debug)]
pub struct PinSlots {
    /// The state of the CPU's interrupt thread: 0 parked (a pinned call may start);
    /// [`PinSlots::BLOCKED`] blocked in a pinned call (an ordinary thread until it parks), or
    /// not installed yet; otherwise the thread's address: it borrows the CPU (a pinned call is
    /// active). Set by `pin_call` (to the thread, and to 0 when the body returns), by the
    /// scheduler's block path (to `BLOCKED`) and by the thread when it parks after blocking
    /// (to 0; its own CPU, interrupts disabled) — all on this CPU with interrupts disabled;
    /// the first clear, after the other words are written, is a release store by
    /// whoever installs the thread. Read by other CPUs (`is_running`).
    pub busy: AtomicUsize,
    /// [`PinCall::thread`] of the installed interrupt thread.
    pub thread: AtomicPtr<()>,
    /// [`PinCall::stack_top`].
    pub stack_top: AtomicUsize,
    /// [`PinCall::body`] (an `extern "C" fn(usize, usize)`, kept as a pointer so that a
    /// machine implemented in Rust gets it back with its provenance; null before
    /// installation).
    pub body: AtomicPtr<()>,
}

impl PinSlots {
    /// [`PinSlots::busy`]: the thread is blocked (or not installed).
    pub const BLOCKED: usize = 1;

    /// Empty, busy (nothing installed).
    pub const fn new() -> Self {
        PinSlots {
            busy: AtomicUsize::new(Self::BLOCKED),
            thread: AtomicPtr::new(core::ptr::null_mut()),
            stack_top: AtomicUsize::new(0),
            body: AtomicPtr::new(core::ptr::null_mut()),
        }
    }

    /// The thread the CPU is lent to (a pinned call is active), 0 if none.
    pub fn borrowed(&self) -> usize {
        let b = self.busy.load(Ordering::Relaxed);
        if b > Self::BLOCKED {
            b
        } else {
            0
        }
    }
}

impl Default for PinSlots {
    fn default() -> Self {
        Self::new()
    }
}

/// What [`PinSwitch::pin_call`] did. `#[repr(u32)]`: assembly returns it in `%eax`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinOutcome {
    /// The thread blocked in its body; the pinned thread was resumed by [`Machine::switch`]
    /// (which returns 0 into the pinned call's frame).
    Blocked = 0,
    /// The body returned.
    Returned = 1,
    /// The CPU's interrupt thread was busy ([`PinSlots::busy`]): nothing was done.
    Busy = 2,
    /// The CPU was not at the pinned level (`IPL_VM`): nothing was done.
    Level = 3,
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

    /// Disables interrupts on this CPU; the token restores the previous state on drop.
    fn intr_disable() -> IntrOff;

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
    /// **Pinned call**, the machine's contract (protocol: `crates/sched/src/pinned.rs`): if this CPU is at
    /// the pinned level, `IPL_VM` (its `ipl::IplCpu` word; else [`PinOutcome::Level`]), and its
    /// interrupt thread is free ([`PinSlots::busy`] zero; else [`PinOutcome::Busy`]), marks it
    /// borrowing (`busy` = the thread) and lends it this CPU for one call of `body(a0, a1)` on its
    /// stack, without a scheduler switch — all from this CPU's [`PinSlots`]. Saves the running
    /// (pinned) thread's callee-saved registers in a frame that [`Machine::switch`] can resume,
    /// keeps its context in this CPU's slot ([`PinSwitch::pinned_context`]), makes the interrupt
    /// thread the current thread ([`Machine::curthread`]), switches to its stack top, enables
    /// interrupts and calls `body`. When `body` returns, interrupts are disabled, `busy` is
    /// cleared, the pinned thread's stack and current-thread pointer come back and this
    /// answers [`PinOutcome::Returned`]. If instead the thread blocks inside `body`, the
    /// scheduler sets `busy` to [`PinSlots::BLOCKED`] and resumes the pinned thread by
    /// `switch(.., pinned_context())`: this call then answers [`PinOutcome::Blocked`]
    /// (interrupts disabled), and the thread goes on later as an ordinary thread (its `body`
    /// must then never return into this frame, and it clears `busy` when it parks).
    ///
    /// Answers `(outcome, a0, a1)`: for `Busy` and `Level` the arguments are handed back
    /// (the caller need not keep them across the call); otherwise those two are meaningless.
    ///
    /// # Safety
    /// Interrupts are disabled; if `busy` is clear, the installed thread is parked (its stack
    /// unused, on no CPU) and its `body` keeps the contract above.
    unsafe fn pin_call(a0: usize, a1: usize) -> (PinOutcome, usize, usize);

    /// CPU `cpu`'s [`PinSlots`] (`None`: the CPU is not set up).
    fn pin_slots(cpu: usize) -> Option<&'static PinSlots>;

    /// This CPU's [`PinSlots::borrowed`] (one per-CPU load).
    fn pin_borrowed() -> usize;

    /// The context [`PinSwitch::pin_call`] saved for the thread pinned on this CPU (valid
    /// while that call is active).
    fn pinned_context() -> *const Self::Context;
}
