//! The default scenario (`run=scenario`): CPU-bound threads of three priorities on every CPU,
//! a ping-pong pair across CPUs, the clock ticking everywhere, for `scenario.ms`. Prints a
//! summary as `@@ result` records (docs/PROTOCOL.md). Later issues grow this into the device
//! workload.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arch::kprintln;
use machine::Machine;
use sched::Priority;

use crate::cmdline::Options;
use crate::{Event, SCHED};

/// Runs the scenario; returns whether it went as expected.
pub fn run(opts: &Options) -> bool {
    let n = arch::X86_64::ncpus();
    let stop = Arc::new(AtomicBool::new(false));
    let classes = [("low", 8u8), ("mid", 24), ("high", 40)];
    let work: Arc<Vec<AtomicU64>> = Arc::new((0..classes.len() * n).map(|_| AtomicU64::new(0)).collect());
    let before: Vec<sched::CpuStats> = (0..n).map(|c| SCHED.cpu_stats(c)).collect();
    let mut hs = Vec::new();
    for cpu in 0..n {
        for (k, &(name, p)) in classes.iter().enumerate() {
            let (stop, work) = (stop.clone(), work.clone());
            let pri = Priority::new(p).expect("priority in range");
            hs.push(SCHED.spawn(name, pri, Some(cpu), move || {
                // Higher classes sleep now and then so lower ones get the CPU.
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    work[k * n + cpu].fetch_add(1, Ordering::Relaxed);
                    i += 1;
                    if k > 0 && i.is_multiple_of(20_000) {
                        SCHED.sleep_ns(2_000_000 * k as u64);
                    }
                    core::hint::spin_loop();
                }
            }));
        }
    }
    // Cross-CPU ping-pong: wakeups by IPI.
    let rounds = Arc::new(AtomicU64::new(0));
    let evs: Arc<[Event; 2]> = Arc::new([Event::new(&SCHED), Event::new(&SCHED)]);
    for side in 0..2usize {
        let (stop, rounds, evs) = (stop.clone(), rounds.clone(), evs.clone());
        let cpu = if side == 0 { 0 } else { n - 1 };
        hs.push(SCHED.spawn("pingpong", Priority::new(50).expect("in range"), Some(cpu), move || {
            if side == 0 {
                evs[1].set();
            }
            while !stop.load(Ordering::Relaxed) {
                evs[side].wait_deadline(arch::X86_64::now_ns() + 100_000_000);
                rounds.fetch_add(1, Ordering::Relaxed);
                evs[1 - side].set();
            }
            evs[1 - side].set();
        }));
    }
    SCHED.sleep_ns(opts.scenario_ms * 1_000_000);
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join();
    }
    let mut ok = rounds.load(Ordering::Relaxed) > 0;
    for cpu in 0..n {
        let s = SCHED.cpu_stats(cpu);
        let b = before[cpu];
        let w: Vec<u64> = (0..classes.len()).map(|k| work[k * n + cpu].load(Ordering::Relaxed)).collect();
        ok &= s.ticks > b.ticks && w.iter().all(|&x| x > 0);
        kprintln!(
            "@@ result cpu={} ticks={} switches={} resched_ipis={} work_low={} work_mid={} work_high={}",
            cpu,
            s.ticks - b.ticks,
            s.switches - b.switches,
            s.resched_ipis - b.resched_ipis,
            w[0],
            w[1],
            w[2]
        );
    }
    kprintln!(
        "@@ result total cpus={} ms={} pingpong_rounds={} threads={}",
        n,
        opts.scenario_ms,
        rounds.load(Ordering::Relaxed),
        classes.len() * n + 2
    );
    kprintln!("@@ scenario-done");
    ok
}
