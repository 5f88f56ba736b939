//! # One interrupt's path, the same on every machine
//!
//! The machine's entry code (on x86_64 `trap_common` in `arch/x86_64/src/entry.s`, on the
//! host `crates/host-machine`'s interrupt points) saves the interrupted state and calls
//! [`interrupt`] with interrupts disabled. Everything after that is here, once, and runs in the
//! kernel and in the host tests alike:
//!
//! 1. **Arrive or defer** ([`ipl::SplState::intr_arrive`]). At or below the CPU's level the
//!    vector is recorded as pending; its level-triggered sources are masked
//!    ([`crate::Intr::defer`]) and the interrupt controller gets its EOI; nothing else runs.
//!    `splx` replays it later through [`replay`] (the [`ipl::SplEnv::replay`] of every
//!    environment).
//! 2. **Enter** ([`sched::Scheduler::intr_enter`]): the CPU is in interrupt context.
//! 3. **Dispatch** ([`crate::Intr::dispatch`]): the vector's sources, by their models. It sends
//!    the EOI itself (**edge: EOI first; level: mask, then EOI**; a replay sends none: it was
//!    acknowledged when deferred). A vector with no source is one of the kernel's own (clock,
//!    reschedule and call IPIs): EOI, then [`IntrEnv::kernel_vector`].
//! 4. **Done** ([`ipl::SplState::intr_done`]): the level comes back; soft interrupts posted
//!    above it run now.
//! 5. **Exit** ([`sched::Scheduler::intr_exit`]): the preemption point.
//!
//! [`sleep_check`] is the rule every environment's [`sched::SchedEnv::sleep_check`] applies
//! before a thread blocks: not in a filter, not in interrupt context, not above `IPL_NONE`
//! (the exception: a thread borrowing its CPU, at its pinned call's level — `IPL_VM` for an
//! interrupt thread, the soft level for a soft interrupt's — with no spin mutex), no
//! spin mutex held (the lock checker names it); and a pool ithread that blocks is divorced
//! from its CPU here.

use ipl::{Arrival, Ipl};
use machine::{IntrOff, Machine};

use crate::IntrEnv;

/// An interrupt on vector `vector` arrived on this CPU (interrupts disabled): the whole path,
/// steps 1 to 5 of the module documentation. `frame` is the interrupted state as the machine
/// saved it (the kernel's own handlers read it through [`IntrEnv::kernel_vector`]).
#[inline]
pub fn interrupt<E: IntrEnv>(vector: u8, frame: &mut E::Frame, io: &IntrOff) {
    match E::spl().intr_arrive(vector, io) {
        Arrival::Deferred => {
            trace::emit::<E::M>(trace::Kind::IntrDefer, vector as u64);
            // Level-triggered lines are masked first (the replay unmasks them); then
            // acknowledging now is right.
            E::intr().defer(vector, io);
            E::eoi();
        }
        Arrival::Run { old } => {
            E::sched().intr_enter(io);
            trace::emit::<E::M>(trace::Kind::IntrEnter, vector as u64);
            // The EOI is sent inside (by `dispatch`, or before the kernel's own handler),
            // before a pinned interrupt thread may run, and even block, there.
            run_vector::<E>(vector, frame, false, io);
            E::spl().intr_done(old, io);
            trace::emit::<E::M>(trace::Kind::IntrExit, vector as u64);
            E::sched().intr_exit(io);
        }
    }
}

/// `splx` replays a deferred vector through here, at the vector's level, interrupts disabled
/// (no EOI: it was acknowledged when deferred). Every environment's [`ipl::SplEnv::replay`].
pub fn replay<E: IntrEnv>(vector: u8, io: &IntrOff) {
    let mut frame = E::replay_frame(vector);
    E::sched().intr_enter(io);
    trace::emit::<E::M>(trace::Kind::IntrEnter, vector as u64);
    run_vector::<E>(vector, &mut frame, true, io);
    trace::emit::<E::M>(trace::Kind::IntrExit, vector as u64);
    E::sched().intr_exit(io);
}

/// Step 3: the vector's sources, else the kernel's own handler.
#[inline(always)]
fn run_vector<E: IntrEnv>(vector: u8, frame: &mut E::Frame, replay: bool, io: &IntrOff) {
    if !E::intr().dispatch(vector, replay, io) {
        if !replay {
            E::eoi();
        }
        E::kernel_vector(vector, frame, io);
    }
}

/// The check before the current thread blocks (see the module documentation). Panics with
/// a message naming the culprit: the filter's source, the thread, the level, the spin count
/// or (through the lock checker) the spin mutex held.
pub fn sleep_check<E: IntrEnv>() {
    let me = E::sched().current();
    if let Some(src) = E::intr().filter_running(E::M::cpu_index()) {
        panic!("interrupt filter of source \"{src}\" tried to sleep (filters run in interrupt context)");
    }
    if E::sched().in_interrupt() {
        panic!("thread '{}' tried to sleep in interrupt context", me.name());
    }
    E::intr().pool.on_block();
    E::intr().pinned.on_block();
    let sync = E::sync();
    if sync.witness.checking() {
        sync.witness.check_sleep::<E::M>(me.held_locks());
    }
    let spl = E::spl();
    let l = spl.current();
    // A thread borrowing its CPU (a pinned interrupt thread at IPL_VM, a soft interrupt's
    // thread at its soft level) may block at its call's level (the block path releases the
    // thread pinned under it, at that level); a spin mutex held, or a level raised above the
    // call's (any interrupt nested in it runs above), is still caught.
    let lent = spl.spin_count() == 0 && E::sched().borrow_level() == Some(l as usize);
    if l != Ipl::None && !lent {
        panic!(
            "thread '{}' tried to sleep at {l} (holding a spin mutex or raised SPL; spin mutexes held on \
             this CPU: {})",
            me.name(),
            spl.spin_count()
        );
    }
}
