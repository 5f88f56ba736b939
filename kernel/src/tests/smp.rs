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
