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

/// What [`Machine::pin_call`] switches to: an interrupt thread, the top of its stack and the
/// function it runs there. `#[repr(C)]`: assembly reads it (offsets 0, 8, 16).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PinCall {
    /// The thread (what [`Machine::curthread`] returns while it runs).
    pub thread: *const (),
    /// Its stack's top, 16-byte aligned.
    pub stack_top: usize,
    /// Run as `body(a0, a1, a2)` on that stack.
    pub body: extern "C" fn(usize, usize, usize),
}

// SAFETY: plain addresses; whoever makes a `PinCall` owns the thread and stack they name.
unsafe impl Send for PinCall {}
// SAFETY: as above (read-only after construction).
unsafe impl Sync for PinCall {}

/// The operations a CPU provides to the portable crates.
///
/// All methods are associated functions: a kernel has exactly one machine, chosen at compile
/// time as a type parameter (`Scheduler<X86_64>`), so calls are direct and inline.
pub trait Machine: Sized + Send + Sync + 'static {
    /// The saved state of a switched-out thread (on x86_64: its stack pointer; the callee-saved
    /// registers live on its stack).
    type Context: Send + Sync;

    /// Upper bound on CPUs this machine supports (array sizes in the portable crates).
    const MAX_CPUS: usize;

    /// The index (0..ncpus) of the CPU the caller runs on. See the module doc on migration.
    fn cpu_index() -> usize;

    /// Number of CPUs that are online (or being brought online).
    fn ncpus() -> usize;

    /// The current thread's pointer as last set by [`Machine::set_curthread`] on this CPU.
    fn curthread() -> *const ();

    /// Records the current thread of this CPU.
    fn set_curthread(thread: *const (), proof: &IntrOff);

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
    fn wait_for_interrupt(proof: &IntrOff);

    /// Asks `cpu` to reschedule: an inter-processor interrupt whose handler ends in the
    /// scheduler's interrupt-exit path.
    fn send_resched(cpu: usize);

    /// A monotonic clock in nanoseconds, the same on every CPU.
    fn now_ns() -> u64;

    /// Builds the context of a new thread that, when first switched to, calls `entry(arg)`
    /// on the stack whose highest address is `stack_top`. `entry` must never return.
    fn new_context(stack_top: usize, entry: extern "C" fn(usize) -> !, arg: usize) -> Self::Context;

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

    /// **Pinned call** (the short interrupt-thread switch, DESIGN.md part 2): lends this CPU to
    /// the thread `call.thread` for one call of `(call.body)(a0, a1, a2)` on that thread's
    /// stack, without a scheduler switch. Saves the running (pinned) thread's callee-saved
    /// registers in a frame that [`Machine::switch`] can resume, keeps its context in this
    /// CPU's slot ([`Machine::pinned_context`]), makes `call.thread` the current thread
    /// ([`Machine::curthread`]), switches to `call.stack_top`, enables interrupts and calls
    /// `body`. When `body` returns, interrupts are disabled, the pinned thread's stack and
    /// current-thread pointer come back and this call returns. If instead the thread blocks
    /// inside `body`, the scheduler resumes the pinned thread by `switch(.., pinned_context())`:
    /// this call then returns too (interrupts disabled), and the thread goes on later as an
    /// ordinary thread (its `body` must then never return into this frame).
    ///
    /// The default panics: a machine without a cheap stack switch has no pinned model.
    ///
    /// # Safety
    /// Interrupts are disabled; no other pinned call is active on this CPU (one slot);
    /// `call.stack_top` is the 16-byte-aligned top of a stack that nothing else uses (the
    /// thread is not on any CPU); `body` keeps the contract above.
    unsafe fn pin_call(call: &PinCall, a0: usize, a1: usize, a2: usize) {
        let _ = (call, a0, a1, a2);
        panic!("this machine has no pinned interrupt-thread switch (Machine::pin_call)");
    }

    /// The context [`Machine::pin_call`] saved for the thread pinned on this CPU (valid while
    /// that call is active). The default panics, as `pin_call`'s does.
    fn pinned_context() -> *const Self::Context {
        panic!("this machine has no pinned interrupt-thread switch (Machine::pinned_context)");
    }

    /// Spin-loop hint (x86 `pause`). Every busy-wait in the portable crates calls it.
    #[inline]
    fn relax() {
        core::hint::spin_loop();
    }
}
