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
    /// the thread `thread` for one call of `body(a0, a1)` on that thread's stack, without a
    /// scheduler switch. Saves the running (pinned) thread's callee-saved registers in a frame
    /// that [`Machine::switch`] can resume, stores its context in `*save`, makes `thread` the
    /// current thread ([`Machine::curthread`]), switches to `stack_top`, enables interrupts and
    /// calls `body`. When `body` returns (it must return with interrupts disabled), the
    /// pinned thread's stack and current-thread pointer come back and this call returns.
    /// If instead `thread` blocks inside `body`, the scheduler resumes the pinned thread by
    /// `switch(.., save)`: this call then returns too (interrupts disabled), and `thread`
    /// goes on later as an ordinary thread.
    ///
    /// The default panics: a machine without a cheap stack switch has no pinned model.
    ///
    /// # Safety
    /// Interrupts are disabled. `save` stays valid until this call returns; `stack_top` is the
    /// 16-byte-aligned top of a stack that nothing else uses (the thread is not on any CPU);
    /// `body` returns with interrupts disabled or never returns to this frame (it blocked).
    unsafe fn pin_call(
        save: *mut Self::Context,
        thread: *const (),
        stack_top: usize,
        body: extern "C" fn(usize, usize),
        a0: usize,
        a1: usize,
    ) {
        let _ = (save, thread, stack_top, body, a0, a1);
        panic!("this machine has no pinned interrupt-thread switch (Machine::pin_call)");
    }

    /// Spin-loop hint (x86 `pause`). Every busy-wait in the portable crates calls it.
    #[inline]
    fn relax() {
        core::hint::spin_loop();
    }
}
