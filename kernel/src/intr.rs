//! The kernel's interrupt path: SPL deferral, the dispatch framework (`intr` crate: sources
//! established by drivers and tests) or the kernel's own vector handlers, EOI, the
//! scheduler's preemption point; and the hooks that let `splx` replay what was deferred, the
//! scheduler ask whether it may preempt, and a blocking handler divorce its pool ithread.

use arch::apic;
use arch::trap::{self, TrapFrame};
use ipl::{Arrival, Ipl};
use machine::IntrOff;

use crate::locks::KernelEnv;
use crate::{SCHED, SPL};

/// The interrupt dispatch framework of this kernel.
pub static INTR: intr::Intr<KernelEnv> = intr::Intr::new();

impl intr::IntrEnv for KernelEnv {
    fn intr() -> &'static intr::Intr<KernelEnv> {
        &INTR
    }
    fn retrigger(vector: u8) {
        apic::send_ipi(arch::cpu::lapic_id_of(arch::cpu::index()), vector);
    }
    fn eoi() {
        apic::eoi();
    }
    fn storm_report(source: &'static str, on: bool, rate: u64) {
        arch::kprintln!("@@ storm source={} state={} rate={}", source, if on { "on" } else { "off" }, rate);
    }
}

/// An IOAPIC input (GSI) as the hardware line of an interrupt source: the framework masks
/// and unmasks it through the mask count (`intr::Intr::establish_line`).
pub struct IoApicLine {
    /// The GSI.
    pub gsi: u32,
    /// Whether it is programmed level-triggered.
    pub level: bool,
}

impl intr::LineControl for IoApicLine {
    fn mask(&self) {
        if let Err(e) = arch::ioapic::set_masked(self.gsi, true) {
            panic!("IOAPIC GSI {}: {e}", self.gsi);
        }
    }
    fn unmask(&self) {
        if let Err(e) = arch::ioapic::set_masked(self.gsi, false) {
            panic!("IOAPIC GSI {}: {e}", self.gsi);
        }
    }
    fn is_level(&self) -> bool {
        self.level
    }
}

/// A fold of the interrupted registers: equal signatures at the same address mean the
/// interrupted thread executed nothing between two interrupts.
fn state_signature(f: &TrapFrame) -> u64 {
    let regs = [
        f.rax, f.rbx, f.rcx, f.rdx, f.rsi, f.rdi, f.rbp, f.r8, f.r9, f.r10, f.r11, f.r12, f.r13, f.r14,
        f.r15, f.rsp, f.rflags,
    ];
    regs.iter().enumerate().fold(f.rip | 1, |h, (i, &r)| h ^ r.rotate_left(i as u32 * 7 + 1))
}

/// Runs what is behind `vector`: established sources, else the kernel's own handler.
/// `dispatch` acknowledges (EOI) a vector with sources itself — edge at once, level after
/// masking its line (see the `intr` crate); the kernel acknowledges only its own vectors
/// here, and, for a replay (`replay`), nothing: it was acknowledged when deferred.
fn run_vector(vector: u8, frame: &mut TrapFrame, io: &IntrOff, replay: bool) {
    // For the storm rule: a signature of the interrupted state, computed only when the
    // instruction address repeats (cheap otherwise). `None` tells `dispatch` it is a replay.
    let interrupted = (!replay).then(|| {
        let idle = SCHED.current().is_idle();
        let sig = if INTR.same_rip(frame.rip) && !idle { state_signature(frame) } else { 0 };
        (sig, idle)
    });
    if INTR.dispatch(vector, interrupted, io).is_none() {
        if !replay {
            apic::eoi();
        }
        trap::run_handler(vector, frame, io);
    }
}

/// Every interrupt vector ≥ 32 arrives here (interrupts disabled).
pub fn interrupt(frame: &mut TrapFrame, io: &IntrOff) {
    let vector = frame.vector as u8;
    match SPL.intr_arrive(vector, io) {
        Arrival::Deferred => {
            // Recorded as pending. Level-triggered lines are masked first (the replay
            // unmasks them); then acknowledging now is right.
            INTR.defer(vector, io);
            apic::eoi();
        }
        Arrival::Run { old } => {
            SCHED.intr_enter(io);
            // The EOI is sent inside run_vector (by `dispatch`, or before the kernel's own
            // handler), before a pinned interrupt thread may run, and even block, there.
            run_vector(vector, frame, io, false);
            SPL.intr_done(old, io);
            SCHED.intr_exit(io);
        }
    }
}

/// `splx` replays a deferred vector through here, at the vector's level, interrupts disabled.
fn replay(vector: u8, io: &IntrOff) {
    let mut frame = trap::replay_frame(vector);
    SCHED.intr_enter(io);
    run_vector(vector, &mut frame, io, true);
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
/// names the spin mutex; the SPL check names the level (and catches a bare `splraise`). The
/// one exception: a pinned interrupt thread at its own level, `IPL_VM`, with no spin mutex.
fn sleep_check() {
    let me = SCHED.current();
    if let Some(src) = INTR.filter_running(arch::cpu::index()) {
        panic!("interrupt filter of source \"{src}\" tried to sleep (filters run in interrupt context)");
    }
    if SCHED.in_interrupt() {
        panic!("thread '{}' tried to sleep in interrupt context", me.name());
    }
    INTR.pool.on_block();
    INTR.pinned.on_block();
    if crate::locks::SYNC.witness.checking() {
        crate::locks::SYNC.witness.check_sleep::<arch::X86_64>(me.held_locks());
    }
    let l = SPL.current();
    // A pinned interrupt thread runs at IPL_VM and may block there (the block path releases
    // the thread pinned under it, at that level); a spin mutex held, or a level raised
    // above IPL_VM (any interrupt nested in it runs above), is still caught.
    let lent = l == Ipl::Vm && SPL.spin_count() == 0 && SCHED.borrowing();
    if l != Ipl::None && !lent {
        panic!(
            "thread '{}' tried to sleep at {l} (holding a spin mutex or raised SPL; spin mutexes held on \
             this CPU: {})",
            me.name(),
            SPL.spin_count()
        );
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
    for v in [
        apic::TIMER_VECTOR,
        apic::RESCHED_VECTOR,
        apic::CALL_VECTOR,
        apic::STOP_VECTOR,
        apic::SPURIOUS_VECTOR,
    ] {
        INTR.reserve(v);
    }
    INTR.reserve_soft_vectors();
    trap::set_interrupt_hook(interrupt);
}
