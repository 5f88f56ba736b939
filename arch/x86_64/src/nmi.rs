//! Where another CPU is now: an NMI snapshot of its registers and stack, for stall reports.
//!
//! ## Protocol
//! A CPU that suspects another of being stuck (torture's heartbeat, a stuck-line window that
//! saw nothing) calls [`snapshot`]`(cpu)`. It claims the target's request flag (one requester
//! per target at a time; a second one gets `None`), sends the target a non-maskable
//! interrupt through the LAPIC's ICR (delivery mode NMI), and spins, with a bound, until the
//! target's done count moves. The target's NMI (vector 2, taken whatever its `RFLAGS.IF`, its
//! IPL or its spin mutexes: what a stall with interrupts blocked needs) finds its request
//! flag set and records, without a lock or an allocation, the interrupted `RIP` and `RFLAGS`,
//! its IPL and pending word, its spin-mutex count, and up to [`FRAMES`] return addresses
//! from the interrupted frame-pointer chain; then it bumps its done count (release) and
//! returns with `iretq`, which unblocks further NMIs. An NMI nobody asked for is a fault, as
//! before (the fault path reports it).
//!
//! This is what Linux's `trigger_all_cpu_backtrace` and FreeBSD's `stack_save_td` on a hung
//! CPU are for: a stall report names the code that holds the CPU, not only the thread.
//! The requester must not be the target, and must not itself hold something the target's
//! NMI path needs (it needs nothing: per-CPU atomics only).

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};

use machine::MAX_CPUS;

use crate::trap::TrapFrame;

/// Return addresses kept per snapshot.
pub const FRAMES: usize = 16;

/// One CPU's state when its NMI came.
#[derive(Clone, Copy, Debug)]
pub struct CpuSnapshot {
    /// The interrupted instruction.
    pub rip: u64,
    /// The interrupted `RFLAGS` (bit 9: interrupts enabled).
    pub rflags: u64,
    /// Its interrupt priority level.
    pub ipl: u8,
    /// Its SPL pending-levels word.
    pub pending: u32,
    /// Spin mutexes it held.
    pub spin_mutexes: u32,
    /// Return addresses from the interrupted frame-pointer chain, innermost first.
    pub frames: [u64; FRAMES],
    /// How many of `frames` are valid.
    pub nframes: usize,
}

impl CpuSnapshot {
    /// Whether the CPU had interrupts enabled.
    pub fn interrupts_enabled(&self) -> bool {
        self.rflags & (1 << 9) != 0
    }
}

struct Slot {
    requested: AtomicBool,
    done: AtomicU64,
    rip: AtomicU64,
    rflags: AtomicU64,
    ipl: AtomicU8,
    pending: AtomicU32,
    spin_mutexes: AtomicU32,
    frames: [AtomicU64; FRAMES],
    nframes: AtomicU8,
}

static SLOTS: [Slot; MAX_CPUS] = [const {
    Slot {
        requested: AtomicBool::new(false),
        done: AtomicU64::new(0),
        rip: AtomicU64::new(0),
        rflags: AtomicU64::new(0),
        ipl: AtomicU8::new(0),
        pending: AtomicU32::new(0),
        spin_mutexes: AtomicU32::new(0),
        frames: [const { AtomicU64::new(0) }; FRAMES],
        nframes: AtomicU8::new(0),
    }
}; MAX_CPUS];

/// Bound on the requester's wait, in polls of the done count (an NMI is taken at the
/// target's next instruction boundary; under TCG, when its vCPU next runs).
const WAIT_POLLS: u64 = 50_000_000;

/// Stops `cpu` with an NMI and returns what it was doing; `None` if `cpu` is this CPU, is not
/// online, already has a request outstanding, or did not answer within the bound.
pub fn snapshot(cpu: usize) -> Option<CpuSnapshot> {
    if cpu >= crate::cpu::ncpus() || !crate::cpu::is_online(cpu) || cpu == crate::cpu::index() {
        return None;
    }
    let slot = &SLOTS[cpu];
    let before = slot.done.load(Ordering::Acquire);
    if slot.requested.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_err() {
        return None;
    }
    crate::apic::send_nmi(crate::cpu::lapic_id_of(cpu));
    let mut polls = 0;
    while slot.done.load(Ordering::Acquire) == before {
        polls += 1;
        if polls > WAIT_POLLS {
            // Withdraw the request, unless the NMI took it meanwhile (then the answer is in).
            if slot.requested.swap(false, Ordering::AcqRel) {
                return None;
            }
            while slot.done.load(Ordering::Acquire) == before {
                core::hint::spin_loop();
            }
            break;
        }
        core::hint::spin_loop();
    }
    let mut frames = [0u64; FRAMES];
    for (f, s) in frames.iter_mut().zip(&slot.frames) {
        *f = s.load(Ordering::Relaxed);
    }
    Some(CpuSnapshot {
        rip: slot.rip.load(Ordering::Relaxed),
        rflags: slot.rflags.load(Ordering::Relaxed),
        ipl: slot.ipl.load(Ordering::Relaxed),
        pending: slot.pending.load(Ordering::Relaxed),
        spin_mutexes: slot.spin_mutexes.load(Ordering::Relaxed),
        frames,
        nframes: slot.nframes.load(Ordering::Relaxed) as usize,
    })
}

/// The NMI (vector 2), interrupts disabled and further NMIs blocked until `iretq`: records
/// this CPU's state if a snapshot was requested; returns false for an NMI nobody asked for.
pub(crate) fn on_nmi(frame: &TrapFrame) -> bool {
    let slot = &SLOTS[crate::cpu::index()];
    if !slot.requested.swap(false, Ordering::AcqRel) {
        return false;
    }
    let mut frames = [0u64; FRAMES];
    frames[0] = frame.rip;
    let n = 1 + crate::trap::backtrace_from(frame.rbp, &mut frames[1..]);
    for (s, f) in slot.frames.iter().zip(frames) {
        s.store(f, Ordering::Relaxed);
    }
    slot.nframes.store(n as u8, Ordering::Relaxed);
    slot.rip.store(frame.rip, Ordering::Relaxed);
    slot.rflags.store(frame.rflags, Ordering::Relaxed);
    slot.ipl.store(crate::cpu::ipl(), Ordering::Relaxed);
    slot.pending.store(crate::cpu::ipl_pending(), Ordering::Relaxed);
    slot.spin_mutexes.store(crate::cpu::mtx_state().0, Ordering::Relaxed);
    slot.done.fetch_add(1, Ordering::Release);
    true
}
