//! The kernel's interrupt path for now (issue #4 replaces it with the dispatch framework):
//! SPL deferral, the registered handler, EOI, the scheduler's preemption point; and the hooks
//! that let `splx` replay what was deferred and the scheduler ask whether it may preempt.

use arch::apic;
use arch::trap::{self, TrapFrame};
use ipl::{Arrival, Ipl};
use machine::IntrOff;

use crate::{SCHED, SPL};

/// Every interrupt vector ≥ 32 arrives here (interrupts disabled).
pub fn interrupt(frame: &mut TrapFrame, io: &IntrOff) {
    let vector = frame.vector as u8;
    match SPL.intr_arrive(vector, io) {
        Arrival::Deferred => {
            // Recorded as pending; LAPIC vectors are edge-style, so acknowledging now is
            // right (a level-triggered IOAPIC line would be masked here first).
            apic::eoi();
        }
        Arrival::Run { old } => {
            SCHED.intr_enter(io);
            trap::run_handler(vector, frame, io);
            apic::eoi();
            SPL.intr_done(old, io);
            SCHED.intr_exit(io);
        }
    }
}

/// `splx` replays a deferred vector through here, at the vector's level, interrupts disabled.
fn replay(vector: u8, io: &IntrOff) {
    let mut frame = trap::replay_frame(vector);
    SCHED.intr_enter(io);
    trap::run_handler(vector, &mut frame, io);
    SCHED.intr_exit(io);
}

/// A preemption deferred because the CPU was above `IPL_NONE` is taken here.
fn preempt() {
    SCHED.preempt_check();
}

/// The scheduler may preempt only at `IPL_NONE`; otherwise the SPL layer remembers.
fn preempt_gate(io: &IntrOff) -> bool {
    SPL.may_preempt(io)
}

/// Sleeping while holding a spin mutex, or above `IPL_NONE`, is a bug: the lock checker
/// names the spin mutex; the SPL check names the level (and catches a bare `splraise`).
fn sleep_check() {
    let me = SCHED.current();
    if crate::locks::SYNC.witness.checking() {
        crate::locks::SYNC.witness.check_sleep::<arch::X86_64>(me.held_locks());
    }
    let l = SPL.current();
    if l != Ipl::None {
        panic!("thread '{}' tried to sleep at {l} (holding a spin mutex or raised SPL)", me.name());
    }
}

/// Installs the interrupt path and the SPL levels of the kernel's own vectors.
pub fn init() {
    SPL.set_hooks(replay, preempt);
    SCHED.set_hooks(preempt_gate, sleep_check);
    SPL.set_vector_ipl(apic::TIMER_VECTOR, Some(Ipl::Sched));
    SPL.set_vector_ipl(apic::RESCHED_VECTOR, Some(Ipl::Sched));
    SPL.set_vector_ipl(apic::CALL_VECTOR, Some(Ipl::High));
    SPL.set_vector_ipl(apic::STOP_VECTOR, None);
    trap::set_interrupt_hook(interrupt);
}
