//! Local APIC (xAPIC, memory-mapped at 0xFEE00000; QEMU's TCG has no x2APIC), its timer,
//! IPIs, the legacy PIC (masked), and time: the TSC and LAPIC timer are calibrated once
//! against PIT channel 2 on the BSP.
//!
//! Vectors owned here: [`TIMER_VECTOR`] (each CPU's clock), [`RESCHED_VECTOR`] (the
//! scheduler's reschedule IPI), [`CALL_VECTOR`] (a general cross-CPU IPI the kernel
//! registers), [`STOP_VECTOR`] (panic: stop every other CPU), [`SPURIOUS_VECTOR`].

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::cpu::MAX_CPUS;

use x86_64::instructions::port::Port;

/// Clock interrupt vector.
pub const TIMER_VECTOR: u8 = 0x30;
/// Reschedule IPI.
pub const RESCHED_VECTOR: u8 = 0xF0;
/// General-purpose IPI ("call function").
pub const CALL_VECTOR: u8 = 0xF1;
/// Stop-this-CPU IPI sent by a panicking CPU.
pub const STOP_VECTOR: u8 = 0xF2;
/// Spurious-interrupt vector (no EOI).
pub const SPURIOUS_VECTOR: u8 = 0xFF;

const LAPIC_BASE: usize = 0xFEE0_0000;
const REG_ID: usize = 0x20;
const REG_TPR: usize = 0x80;
const REG_EOI: usize = 0xB0;
const REG_SVR: usize = 0xF0;
const REG_ESR: usize = 0x280;
const REG_ICR_LOW: usize = 0x300;
const REG_ICR_HIGH: usize = 0x310;
const REG_LVT_TIMER: usize = 0x320;
const REG_LVT_LINT0: usize = 0x350;
const REG_LVT_LINT1: usize = 0x360;
const REG_LVT_ERROR: usize = 0x370;
const REG_TIMER_INIT: usize = 0x380;
const REG_TIMER_CUR: usize = 0x390;
const REG_TIMER_DIV: usize = 0x3E0;

static TSC_HZ: AtomicU64 = AtomicU64::new(1_000_000_000);
/// Nanoseconds per TSC tick as a 32.32 fixed-point factor (`now_ns` = TSC × it >> 32), set
/// with `TSC_HZ`: a multiply and a shift, where a division by the rate would take a call to
/// the 128-bit division routine (tens of instructions on every interrupt and every switch).
static NS_PER_TSC_32: AtomicU64 = AtomicU64::new(1 << 32);
/// LAPIC timer counts per second at divide-by-16.
static LAPIC_HZ: AtomicU64 = AtomicU64::new(0);
static TIMER_HZ: AtomicU32 = AtomicU32::new(100);

fn read(reg: usize) -> u32 {
    // SAFETY: the LAPIC page is identity-mapped uncached (boot page tables map 3..4 GiB with
    // PCD|PWT) and `reg` is a valid register offset.
    unsafe { core::ptr::read_volatile((LAPIC_BASE + reg) as *const u32) }
}

fn write(reg: usize, v: u32) {
    // SAFETY: as in `read`.
    unsafe { core::ptr::write_volatile((LAPIC_BASE + reg) as *mut u32, v) }
}

/// The running CPU's LAPIC id.
pub fn id() -> u32 {
    read(REG_ID) >> 24
}

/// Signals end of interrupt.
#[inline]
pub fn eoi() {
    write(REG_EOI, 0);
}

/// Remaps the 8259 PICs away from the exception vectors and masks every line: all
/// interrupts come through the APICs.
pub fn disable_pic() {
    // SAFETY: the standard 8259 initialization sequence on its fixed ports.
    unsafe {
        let mut m_cmd: Port<u8> = Port::new(0x20);
        let mut m_data: Port<u8> = Port::new(0x21);
        let mut s_cmd: Port<u8> = Port::new(0xA0);
        let mut s_data: Port<u8> = Port::new(0xA1);
        m_cmd.write(0x11);
        s_cmd.write(0x11);
        m_data.write(0x20);
        s_data.write(0x28);
        m_data.write(4);
        s_data.write(2);
        m_data.write(1);
        s_data.write(1);
        m_data.write(0xFF);
        s_data.write(0xFF);
    }
}

/// Enables this CPU's LAPIC: spurious vector, LINT0/1 and the error LVT masked, TPR 0.
pub fn init_local() {
    write(REG_SVR, 0x100 | SPURIOUS_VECTOR as u32);
    write(REG_LVT_LINT0, 1 << 16);
    write(REG_LVT_LINT1, 1 << 16);
    write(REG_LVT_ERROR, 1 << 16);
    write(REG_ESR, 0);
    write(REG_TPR, 0);
    eoi();
}

/// Reads the TSC.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` has no side effects beyond reading the counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// TSC ticks per second (calibrated).
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Nanoseconds since the TSC started counting: the TSC scaled by the calibrated factor (one
/// `mul`, one shift; the factor's rounding is below one part in 2^32 at any rate of at least
/// 1 MHz).
#[inline]
pub fn now_ns() -> u64 {
    ((rdtsc() as u128 * NS_PER_TSC_32.load(Ordering::Relaxed) as u128) >> 32) as u64
}

/// Sets the TSC rate and the factor [`now_ns`] scales by.
fn set_tsc_hz(hz: u64) {
    let hz = hz.max(1);
    TSC_HZ.store(hz, Ordering::Relaxed);
    NS_PER_TSC_32
        .store(((1_000_000_000u128 << 32) / hz as u128).min(u64::MAX as u128) as u64, Ordering::Relaxed);
}

/// Busy-waits for at least `us` microseconds.
pub fn delay_us(us: u64) {
    let end = rdtsc() + tsc_hz() / 1_000_000 * us;
    while rdtsc() < end {
        core::hint::spin_loop();
    }
}

/// Measures the TSC and the LAPIC timer against 10 ms of PIT channel 2. BSP, interrupts
/// disabled, after `init_local`.
pub fn calibrate() {
    const PIT_HZ: u64 = 1_193_182;
    const MS: u64 = 10;
    let count = (PIT_HZ * MS / 1000) as u16;
    write(REG_TIMER_DIV, 0x3); // divide by 16
    write(REG_LVT_TIMER, 1 << 16); // masked, one-shot
                                   // SAFETY: PIT channel 2 and port 0x61 (its gate and output) are fixed PC ports that no
                                   // one else uses after boot.
    unsafe {
        let mut p61: Port<u8> = Port::new(0x61);
        let mut cmd: Port<u8> = Port::new(0x43);
        let mut ch2: Port<u8> = Port::new(0x42);
        let v = p61.read();
        p61.write((v & !0x02) | 0x01); // gate on, speaker off
        cmd.write(0b1011_0000); // channel 2, lobyte/hibyte, mode 0
        ch2.write(count as u8);
        ch2.write((count >> 8) as u8);
        // Restart the count by toggling the gate.
        let v = p61.read();
        p61.write(v & !0x01);
        p61.write(v | 0x01);
        write(REG_TIMER_INIT, u32::MAX);
        let t0 = rdtsc();
        while p61.read() & 0x20 == 0 {
            core::hint::spin_loop();
        }
        let t1 = rdtsc();
        let lapic_elapsed = u32::MAX - read(REG_TIMER_CUR);
        write(REG_TIMER_INIT, 0);
        set_tsc_hz((t1 - t0) * 1000 / MS);
        LAPIC_HZ.store(lapic_elapsed as u64 * 1000 / MS, Ordering::Relaxed);
    }
}

// ## The clock: a one-shot LAPIC timer
//
// Each CPU's LAPIC timer runs in one-shot mode and is programmed for the earlier of two
// times (TSC values, per CPU): the next periodic tick (`hz` per second, what time slices and
// the tick count use) and the earliest deadline of a timed sleep, so that a sleep ends at its
// deadline, not at the next tick. The clock interrupt calls [`timer_fired`] (is a periodic
// tick due? the next one is set), then [`arm_at_ns`] with the scheduler's earliest deadline,
// which reprograms the timer: every clock interrupt re-arms it, so it never stops. A timed
// sleep committed on a CPU calls `arm_at_ns` too (`Machine::arm_timer`), which reprograms
// only if the deadline comes before what is armed. An expiry that comes a little early (the
// LAPIC and TSC rates are calibrated, not exact) finds nothing due and arms again for the
// rest. All of it runs on the CPU it concerns, with interrupts disabled.

/// Per CPU: the TSC value of the next periodic tick (0: the clock is not started).
static NEXT_TICK: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Per CPU: the TSC value the one-shot timer is programmed to expire at (`u64::MAX`: none).
static ARMED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(u64::MAX) }; MAX_CPUS];

fn tick_tsc() -> u64 {
    (tsc_hz() / TIMER_HZ.load(Ordering::Relaxed).max(1) as u64).max(1)
}

/// The TSC value at which [`now_ns`] reaches `ns` (rounded up, so a timer armed for a
/// deadline never fires before `now_ns` says it is due).
fn ns_to_tsc(ns: u64) -> u64 {
    let f = NS_PER_TSC_32.load(Ordering::Relaxed).max(1) as u128;
    (((ns as u128) << 32).div_ceil(f)).min(u64::MAX as u128) as u64
}

/// Per CPU, the one-shot timer's accounting (torture's delivery rule for the clock,
/// kernel/src/torture/clock.rs): expiries armed; arms made while the previous one had not
/// interrupted yet (`ARMED` set), which supersede it — its countdown restarts, or, if it ran
/// out already, its pending interrupt is the one delivery of both (an edge merge); and clock
/// interrupts ([`timer_fired`]). Every clock interrupt re-arms, so with interrupts disabled
/// on the CPU, outside the clock interrupt, `armed == replaced + fired + 1` exactly; a clock
/// interrupt with nothing armed (a duplicate) breaks it.
pub static TIMER_ARMED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// See [`TIMER_ARMED`].
pub static TIMER_REPLACED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// See [`TIMER_ARMED`].
pub static TIMER_FIRED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Programs this CPU's one-shot timer to expire at TSC value `at`.
fn program(cpu: usize, at: u64) {
    let delta = at.saturating_sub(rdtsc()) as u128;
    let count = (delta * LAPIC_HZ.load(Ordering::Relaxed) as u128 / tsc_hz().max(1) as u128)
        .clamp(1, u32::MAX as u128);
    if ARMED[cpu].swap(at, Ordering::Relaxed) != u64::MAX {
        TIMER_REPLACED[cpu].fetch_add(1, Ordering::Relaxed);
    }
    TIMER_ARMED[cpu].fetch_add(1, Ordering::Relaxed);
    write(REG_TIMER_INIT, count as u32);
}

/// Starts this CPU's clock: the periodic tick at `hz`, on the one-shot timer (above).
pub fn start_timer(hz: u32) {
    TIMER_HZ.store(hz, Ordering::Relaxed);
    let cpu = crate::cpu::index();
    write(REG_TIMER_DIV, 0x3);
    write(REG_LVT_TIMER, TIMER_VECTOR as u32); // one-shot, unmasked
    let first = rdtsc() + tick_tsc();
    NEXT_TICK[cpu].store(first, Ordering::Relaxed);
    program(cpu, first);
}

/// In the clock interrupt: the armed expiry is spent; returns whether a periodic tick is due
/// (and sets the next one). Interrupts disabled.
pub fn timer_fired() -> bool {
    let cpu = crate::cpu::index();
    TIMER_FIRED[cpu].fetch_add(1, Ordering::Relaxed);
    if ARMED[cpu].swap(u64::MAX, Ordering::Relaxed) == u64::MAX {
        // Nothing was armed (a duplicate): counted twice, so that
        // `armed == replaced + fired + 1` breaks.
        TIMER_FIRED[cpu].fetch_add(1, Ordering::Relaxed);
    }
    let now = rdtsc();
    let next = NEXT_TICK[cpu].load(Ordering::Relaxed);
    if now < next {
        return false;
    }
    let mut following = next + tick_tsc();
    if following <= now {
        // Ticks were missed (a long stretch with interrupts off): go on from now.
        following = now + tick_tsc();
    }
    NEXT_TICK[cpu].store(following, Ordering::Relaxed);
    true
}

/// Arms this CPU's timer for the next periodic tick or `deadline_ns` (`now_ns` time),
/// whichever comes first, unless something earlier is armed already. Interrupts disabled.
pub fn arm_at_ns(deadline_ns: Option<u64>) {
    let cpu = crate::cpu::index();
    let tick = NEXT_TICK[cpu].load(Ordering::Relaxed);
    if tick == 0 {
        return; // this CPU's clock has not started: it arms its first tick when it does
    }
    let at = deadline_ns.map_or(tick, |d| ns_to_tsc(d).min(tick));
    if at < ARMED[cpu].load(Ordering::Relaxed) {
        program(cpu, at);
    }
}

/// The clock rate set by `start_timer`.
pub fn timer_hz() -> u32 {
    TIMER_HZ.load(Ordering::Relaxed)
}

fn wait_icr_idle() {
    while read(REG_ICR_LOW) & (1 << 12) != 0 {
        core::hint::spin_loop();
    }
}

/// Sends a non-maskable interrupt to the CPU whose LAPIC id is `apic_id` (`nmi::snapshot`).
pub fn send_nmi(apic_id: u32) {
    // As in `send_ipi`: the ICR pair is written with interrupts disabled.
    let _io = <crate::X86_64 as machine::Machine>::intr_disable();
    wait_icr_idle();
    write(REG_ICR_HIGH, apic_id << 24);
    write(REG_ICR_LOW, 0x0000_0400); // NMI delivery mode, physical, edge, assert
}

/// Sends a fixed IPI with `vector` to the CPU whose LAPIC id is `apic_id`.
pub fn send_ipi(apic_id: u32, vector: u8) {
    // The ICR is two registers: keep the pair atomic with respect to interrupts on this CPU
    // (an interrupt handler sending its own IPI between the writes would redirect ours).
    let _io = <crate::X86_64 as machine::Machine>::intr_disable();
    wait_icr_idle();
    write(REG_ICR_HIGH, apic_id << 24);
    write(REG_ICR_LOW, vector as u32); // fixed, physical, edge, assert
}

/// INIT-SIPI-SIPI to start an application processor at `page * 4096` in real mode.
pub fn start_ap(apic_id: u32, page: u8) {
    wait_icr_idle();
    write(REG_ICR_HIGH, apic_id << 24);
    write(REG_ICR_LOW, 0x0000_4500); // INIT, assert, edge
    wait_icr_idle();
    delay_us(10_000);
    for _ in 0..2 {
        write(REG_ICR_HIGH, apic_id << 24);
        write(REG_ICR_LOW, 0x0000_4600 | page as u32); // STARTUP
        wait_icr_idle();
        delay_us(200);
    }
}
