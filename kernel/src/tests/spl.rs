//! SPL on the real machine: raising is a per-CPU write; interrupts at or below the level are
//! held pending and replayed, highest first, by the `splx` that lowers below them.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use arch::apic;
use arch::trap::{self, TrapFrame};
use ipl::Ipl;
use ktest::{kassert, kassert_eq, ktest, TestResult};
use machine::IntrOff;

use crate::{SCHED, SPL};

/// Test vectors: one at IPL_SOFTNET, one at IPL_VM.
const V_SOFTNET: u8 = 0x50;
const V_VM: u8 = 0x51;

/// Log of (vector, level it ran at), packed: vector << 8 | level, in arrival order.
static LOG: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
static LOG_LEN: AtomicU64 = AtomicU64::new(0);

fn record(f: &mut TrapFrame, _io: &IntrOff) {
    let i = LOG_LEN.fetch_add(1, Ordering::SeqCst) as usize;
    if i < LOG.len() {
        LOG[i].store((f.vector << 8) | SPL.current() as u64, Ordering::SeqCst);
    }
}

fn take_log() -> Vec<(u8, Ipl)> {
    let n = (LOG_LEN.swap(0, Ordering::SeqCst) as usize).min(LOG.len());
    (0..n)
        .map(|i| {
            let v = LOG[i].load(Ordering::SeqCst);
            ((v >> 8) as u8, Ipl::from_u8((v & 0xFF) as u8).unwrap_or(Ipl::High))
        })
        .collect()
}

/// Registers the test vectors once (idempotent across boots of the suite).
fn setup() {
    for (v, l) in [(V_SOFTNET, Ipl::SoftNet), (V_VM, Ipl::Vm)] {
        let _ = trap::register(v, record);
        SPL.set_vector_ipl(v, Some(l));
    }
}

fn self_ipi(v: u8) {
    apic::send_ipi(arch::cpu::lapic_id_of(arch::cpu::index()), v);
}

/// Waits (spinning, interrupts enabled) until `v` is pending on this CPU.
fn until_pending(v: u8) -> bool {
    for _ in 0..10_000_000 {
        if SPL.is_pending(v) {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

fn nested_splx_replays_at_the_right_level() -> TestResult {
    setup();
    let _ = take_log();
    let outer = SPL.splraise(Ipl::SoftNet);
    let inner = SPL.splraise(Ipl::Vm);
    kassert!(machine_intr_enabled(), "splraise disabled interrupts");
    self_ipi(V_VM);
    self_ipi(V_SOFTNET);
    kassert!(until_pending(V_VM) && until_pending(V_SOFTNET), "self-IPIs never arrived");
    kassert!(take_log().is_empty(), "a handler ran at or below the current level");
    SPL.splx(inner);
    kassert_eq!(take_log(), [(V_VM, Ipl::Vm)], "splx to IPL_SOFTNET must replay exactly the IPL_VM vector");
    kassert!(SPL.is_pending(V_SOFTNET));
    SPL.splx(outer);
    kassert_eq!(
        take_log(),
        [(V_SOFTNET, Ipl::SoftNet)],
        "splx to IPL_NONE must replay the IPL_SOFTNET vector"
    );
    kassert_eq!(SPL.current(), Ipl::None);
    // Above the level: runs at once, even while raised.
    let s = SPL.splraise(Ipl::SoftNet);
    self_ipi(V_VM);
    for _ in 0..10_000_000 {
        if LOG_LEN.load(Ordering::SeqCst) > 0 {
            break;
        }
        core::hint::spin_loop();
    }
    kassert_eq!(take_log(), [(V_VM, Ipl::Vm)], "an IPL_VM vector must run at IPL_SOFTNET");
    SPL.splx(s);
    Ok(())
}
ktest!(T_NESTED, "spl::replay::nested_splx", nested_splx_replays_at_the_right_level);

fn machine_intr_enabled() -> bool {
    <arch::X86_64 as machine::Machine>::intr_enabled()
}

/// At `IPL_SCHED` the clock is held off; the `splx` replays the tick (ticks coalesce: one).
fn clock_is_deferred_and_replayed() -> TestResult {
    let hz = apic::timer_hz() as u64;
    // Drop back to IPL_VM, not IPL_NONE, for the replay: the replayed tick may end this
    // thread's time slice, and a preemption before reading `t2` would let real ticks in.
    let s_vm = SPL.splraise(Ipl::Vm);
    let s = SPL.splraise(Ipl::Sched);
    let cpu = arch::cpu::index(); // stable: no preemption above IPL_NONE
    let t0 = SCHED.cpu_stats(cpu).ticks;
    let deferred0 = SPL.stats(cpu).deferred;
    // At least four periods, and on until a tick has been held off (at most a hundred
    // periods): the suite runs in host time, and a loaded host may hold QEMU's timer back for
    // more than four (a CI run saw none deferred in four).
    let start = super::now_ns();
    let (end, give_up) = (start + 4 * 1_000_000_000 / hz, start + 100 * 1_000_000_000 / hz);
    loop {
        let now = super::now_ns();
        if now >= give_up || (now >= end && SPL.stats(cpu).deferred != deferred0) {
            break;
        }
        core::hint::spin_loop();
    }
    let t1 = SCHED.cpu_stats(cpu).ticks;
    let deferred = SPL.stats(cpu).deferred - deferred0;
    let replayed0 = SPL.stats(cpu).replayed;
    SPL.splx(s);
    let t2 = SCHED.cpu_stats(cpu).ticks;
    let replayed = SPL.stats(cpu).replayed - replayed0;
    SPL.splx(s_vm);
    kassert_eq!(t1, t0, "the clock ran at IPL_SCHED");
    kassert!(deferred >= 1, "no clock interrupt was deferred in a hundred periods");
    // The held ticks coalesce into one replay. (A fresh tick may still land between the
    // splx and the read of `t2` when the host deschedules this vCPU for a period: it is
    // counted as a tick but not as a replay.)
    kassert_eq!(replayed, 1, "splx did not replay the held clock tick exactly once");
    kassert!(t2 > t1, "the replayed tick did not run the clock");
    Ok(())
}
ktest!(T_CLOCK, "spl::replay::clock_tick", clock_is_deferred_and_replayed);
