//! SMP bring-up: every CPU online and taking clock interrupts; IPIs between every pair.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use arch::apic;
use arch::trap::TrapFrame;
use ktest::{kassert, kassert_eq, ktest, TestResult};
use machine::IntrOff;
use sched::Priority;

use super::{ncpus, now_ns};
use crate::SCHED;

const MAX: usize = arch::cpu::MAX_CPUS;

/// Per target CPU: bit s set = CPU s has sent us a call IPI not yet counted.
static MAILBOX: [AtomicU64; MAX] = [const { AtomicU64::new(0) }; MAX];
/// RECEIVED[dst * MAX + src]: call IPIs CPU dst received from CPU src.
static RECEIVED: [AtomicU64; MAX * MAX] = [const { AtomicU64::new(0) }; MAX * MAX];

/// Handler of `CALL_VECTOR`: counts who called us.
pub fn call_ipi(_f: &mut TrapFrame, _io: &IntrOff) {
    let me = arch::cpu::index();
    let mut bits = MAILBOX[me].swap(0, Ordering::AcqRel);
    while bits != 0 {
        let src = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        RECEIVED[me * MAX + src].fetch_add(1, Ordering::Relaxed);
    }
}

fn all_cpus_online_and_ticking() -> TestResult {
    let n = ncpus();
    kassert!(n >= 1);
    for c in 0..n {
        kassert!(SCHED.cpu_online(c), "CPU {c} of {n} is not online");
        kassert!(arch::cpu::is_online(c), "CPU {c} did not finish arch start-up");
    }
    let before: Vec<u64> = (0..n).map(|c| SCHED.cpu_stats(c).ticks).collect();
    let hz = apic::timer_hz() as u64;
    // Wait ten clock periods; every CPU, busy or idle (halted), must have taken ticks.
    SCHED.sleep_ns(10 * 1_000_000_000 / hz);
    for (c, b) in before.iter().enumerate() {
        let after = SCHED.cpu_stats(c).ticks;
        kassert!(after > b + 2, "CPU {c} took {} clock interrupts in 10 periods", after - b);
    }
    Ok(())
}
ktest!(T_ONLINE, "smp::cpus::online_and_ticking", all_cpus_online_and_ticking);

fn ipi_every_pair() -> TestResult {
    let n = ncpus();
    let before: Vec<u64> = (0..MAX * MAX).map(|i| RECEIVED[i].load(Ordering::Relaxed)).collect();
    const ROUNDS: u64 = 20;
    let mut senders = Vec::new();
    for src in 0..n {
        senders.push(SCHED.spawn("ipi-sender", Priority::KTHREAD, Some(src), move || {
            for _ in 0..ROUNDS {
                for (dst, mailbox) in MAILBOX.iter().enumerate().take(n) {
                    // Wait until dst has counted our previous call, so each send is one IPI.
                    while mailbox.load(Ordering::Acquire) & (1 << src) != 0 {
                        core::hint::spin_loop();
                    }
                    mailbox.fetch_or(1 << src, Ordering::AcqRel);
                    apic::send_ipi(arch::cpu::lapic_id_of(dst), apic::CALL_VECTOR);
                }
            }
        }));
    }
    for s in senders {
        s.join();
    }
    let deadline = now_ns() + 2_000_000_000;
    for dst in 0..n {
        for src in 0..n {
            let i = dst * MAX + src;
            while RECEIVED[i].load(Ordering::Relaxed) - before[i] < ROUNDS && now_ns() < deadline {
                SCHED.yield_now();
            }
            kassert_eq!(
                RECEIVED[i].load(Ordering::Relaxed) - before[i],
                ROUNDS,
                "IPIs CPU {src} -> CPU {dst}"
            );
        }
    }
    Ok(())
}
ktest!(T_IPI, "smp::ipi::every_pair", ipi_every_pair);

/// Per CPU: arrived at the NMI ring's barrier / finished its snapshot.
static NMI_ARRIVED: AtomicU64 = AtomicU64::new(0);
static NMI_DONE: AtomicU64 = AtomicU64::new(0);
/// What each ring member returned, by CPU.
#[allow(clippy::type_complexity)]
static NMI_RESULTS: crate::locks::Mutex<Vec<(usize, Result<arch::nmi::CpuSnapshot, alloc::string::String>)>> =
    crate::locks::Mutex::new_spin("test.nmi.results", ipl::Ipl::High, Vec::new());

/// One CPU's part of the NMI ring (see `nmi_snapshot_ring`): interrupts disabled and the
/// level at `IPL_HIGH`, waits for every CPU, snapshots the next one (itself stopped the same
/// way), and waits until every CPU has done so. Returns the snapshot or what went wrong.
#[inline(never)]
fn nmi_ring_member(me: usize, n: usize) -> Result<arch::nmi::CpuSnapshot, alloc::string::String> {
    let all = (1u64 << n) - 1;
    let _io = <arch::X86_64 as machine::Machine>::intr_disable();
    let _spl = crate::SPL.raise(ipl::Ipl::High);
    let deadline = now_ns() + 2_000_000_000;
    NMI_ARRIVED.fetch_or(1 << me, Ordering::AcqRel);
    while NMI_ARRIVED.load(Ordering::Acquire) != all {
        if now_ns() > deadline {
            return Err(alloc::format!("CPU {me}: not every CPU reached the barrier"));
        }
        core::hint::spin_loop();
    }
    let next = (me + 1) % n;
    let snap = arch::nmi::snapshot(next).ok_or_else(|| alloc::format!("CPU {me}: no answer from CPU {next}"));
    NMI_DONE.fetch_or(1 << me, Ordering::AcqRel);
    while NMI_DONE.load(Ordering::Acquire) != all {
        if now_ns() > deadline {
            return Err(alloc::format!("CPU {me}: not every CPU finished its snapshot"));
        }
        core::hint::spin_loop();
    }
    snap
}

/// Every CPU at once, interrupts disabled and at `IPL_HIGH`, stops the next one with an NMI:
/// each snapshot shows interrupts off, `IPL_HIGH`, and a frame in `nmi_ring_member` (where
/// the stopped CPU spun). With one CPU there is no other to stop: the snapshot of itself and
/// of a CPU that is not online are refused.
fn nmi_snapshot_ring() -> TestResult {
    let n = ncpus();
    kassert!(n <= 64, "the ring's masks hold 64 CPUs, not {n}");
    kassert!(arch::nmi::snapshot(arch::cpu::index()).is_none(), "a CPU snapshot of itself was not refused");
    kassert!(arch::nmi::snapshot(n).is_none(), "a snapshot of CPU {n} (not online) was not refused");
    if n < 2 {
        return Ok(());
    }
    NMI_ARRIVED.store(0, Ordering::Release);
    NMI_DONE.store(0, Ordering::Release);
    NMI_RESULTS.lock().clear();
    let threads: Vec<_> = (0..n)
        .map(|c| {
            SCHED.spawn("nmi-ring", Priority::KTHREAD, Some(c), move || {
                let r = nmi_ring_member(c, n);
                NMI_RESULTS.lock().push((c, r));
            })
        })
        .collect();
    for t in threads {
        t.join();
    }
    let mut results = core::mem::take(&mut *NMI_RESULTS.lock());
    results.sort_by_key(|r| r.0);
    kassert_eq!(results.len(), n, "ring members that reported");
    let body = nmi_ring_member as *const () as usize as u64;
    // The stopped CPU may also be inside the ring member's own call to `arch::nmi::snapshot`
    // (waiting for its neighbour), and an NMI at that function's first instruction, before
    // its prologue has pushed the frame pointer, walks past the ring member's frame: the
    // interrupted instruction is then the callee's entry (seen once on 8 CPUs, rip =
    // `arch::nmi::snapshot`, its return address skipped).
    let callee = arch::nmi::snapshot as *const () as usize as u64;
    for (c, r) in results {
        let next = (c + 1) % n;
        let s = r?;
        kassert!(!s.interrupts_enabled(), "CPU {next} had interrupts enabled: rflags {:#x}", s.rflags);
        kassert_eq!(s.ipl, ipl::Ipl::High as u8, "CPU {next}'s IPL");
        kassert!(s.nframes >= 1, "CPU {next}: no frames");
        kassert!(
            s.frames[..s.nframes].iter().any(|&f| f >= body && f < body + 0x1000) || s.frames[0] == callee,
            "CPU {next}: no frame in nmi_ring_member ({body:#x}), nor stopped at arch::nmi::snapshot's entry: {:x?}",
            &s.frames[..s.nframes]
        );
    }
    Ok(())
}
ktest!(T_NMI, "smp::nmi::snapshot_ring", nmi_snapshot_ring);
