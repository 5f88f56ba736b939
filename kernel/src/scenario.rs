//! The default scenario (`run=scenario`): on every CPU, three threads of different
//! priorities with different duty cycles (high: run 1 ms, sleep 3 ms; mid: run 2 ms, sleep
//! 2 ms; low: never sleeps and gets what is left), and a ping-pong pair handing a token
//! between the first and last CPU by sleep/wakeup (IPIs when they are different CPUs), for
//! `scenario.ms`, with the device workload (`workload.rs`) running meanwhile — it ends early
//! once the workload is complete. Prints `@@ live` lines every 250 ms and a summary as
//! `@@ result` records (docs/PROTOCOL.md).

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arch::kprintln;
use machine::Machine;
use sched::Priority;

use crate::cmdline::Options;
use crate::locks::{Mutex, RwLock, SYNC};
use crate::{Event, SCHED};

/// Work totals per class, merged by every thread after each run slice.
static TOTALS: Mutex<[u64; 3]> = Mutex::new_adaptive("scenario.totals", [0; 3]);
/// Slices run, per CPU, updated under a spin mutex (as an interrupt-shared counter would be).
static SLICES: Mutex<[u64; 64]> = Mutex::new_spin("scenario.slices", ipl::Ipl::Vm, [0; 64]);
/// Interrupts the scenario's source handled, counted under a spin mutex (the handler may run in
/// interrupt context under the direct model, where it must not block).
static INTR_SEEN: Mutex<u64> = Mutex::new_spin("scenario.intr", ipl::Ipl::Vm, 0);
/// A configuration every thread reads each slice and the main thread rewrites now and then.
static CONFIG: RwLock<u64> = RwLock::new("scenario.config", 0);

/// Name, priority, run ms, sleep ms (0: never sleeps).
const CLASSES: [(&str, u8, u64, u64); 3] = [("low", 8, 0, 0), ("mid", 24, 2, 2), ("high", 40, 1, 3)];

fn now() -> u64 {
    arch::X86_64::now_ns()
}

/// Runs the scenario; returns whether it went as expected.
pub fn run(opts: &Options) -> bool {
    let n = arch::X86_64::ncpus();
    let stop = Arc::new(AtomicBool::new(false));
    let work: Arc<Vec<AtomicU64>> = Arc::new((0..CLASSES.len() * n).map(|_| AtomicU64::new(0)).collect());
    let before: Vec<sched::CpuStats> = (0..n).map(|c| SCHED.cpu_stats(c)).collect();
    let mut hs = Vec::new();
    for cpu in 0..n {
        for (k, &(name, p, run_ms, sleep_ms)) in CLASSES.iter().enumerate() {
            let (stop, work) = (stop.clone(), work.clone());
            let pri = Priority::new(p).expect("priority in range");
            hs.push(SCHED.spawn(name, pri, Some(cpu), move || {
                while !stop.load(Ordering::Relaxed) {
                    // The low class "never sleeps": it runs in 1 ms slices between lock visits.
                    let slice = if sleep_ms == 0 { 1 } else { run_ms };
                    let until = now() + slice * 1_000_000;
                    let mut done = 0u64;
                    while now() < until && !stop.load(Ordering::Relaxed) {
                        work[k * n + cpu].fetch_add(1, Ordering::Relaxed);
                        done += 1;
                        core::hint::spin_loop();
                    }
                    let _config = *CONFIG.read();
                    TOTALS.lock()[k] += done;
                    SLICES.lock()[cpu % 64] += 1;
                    if sleep_ms != 0 {
                        SCHED.sleep_ns(sleep_ms * 1_000_000);
                    }
                }
            }));
        }
    }
    // Cross-CPU ping-pong in bursts of 200 rounds, 5 ms apart: at priority 50 it would
    // otherwise take its CPUs from everything else.
    // An interrupt source under the boot's default dispatch model (`intr.model=`): a raiser
    // thread sends it to every CPU in turn; its handler takes an adaptive mutex (it may block
    // in the thread models).
    let source = crate::intr::INTR
        .establish(
            intr::SourceSpec {
                name: "scenario.ipi".into(),
                vector: 0x58,
                ipl: ipl::Ipl::Vm,
                flags: intr::IntrFlags::MPSAFE,
                model: None,
                thread_priority: None,
            },
            None,
            Some(alloc::boxed::Box::new(|_| {
                *INTR_SEEN.lock() += 1;
            })),
        )
        .ok();
    if let Some(src) = source.as_ref().map(|h| h.source().clone()) {
        let stop = stop.clone();
        hs.push(SCHED.spawn("raiser", Priority::new(45).expect("in range"), Some(0), move || {
            let mut k = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let before = src.stats.handled.load(Ordering::Relaxed);
                arch::apic::send_ipi(arch::cpu::lapic_id_of(k % n), 0x58);
                k += 1;
                // Wait for it to be handled (bounded), then pace: a tick's nap every 64. The
                // wait spins 20 µs at most and then naps a millisecond at a time: at priority 45
                // a 5 ms spin took CPU 0 from the low and mid classes whenever the handling vCPU
                // lost its host core (docs/logs/scenario-runs-cpu0-starved-2026-12-06.txt).
                let sent = now();
                let until = sent + 5_000_000;
                while src.stats.handled.load(Ordering::Relaxed) == before && now() < until {
                    if now() < sent + 20_000 {
                        core::hint::spin_loop();
                    } else {
                        SCHED.sleep_ns(1_000_000);
                    }
                }
                if k.is_multiple_of(64) {
                    SCHED.sleep_ns(1_000_000);
                }
            }
        }));
    }
    let rounds = Arc::new(AtomicU64::new(0));
    let evs: Arc<[Event; 2]> = Arc::new([Event::new(&SCHED), Event::new(&SCHED)]);
    for side in 0..2usize {
        let (stop, rounds, evs) = (stop.clone(), rounds.clone(), evs.clone());
        let cpu = if side == 0 { 0 } else { n - 1 };
        let pri = Priority::new(50).expect("in range");
        hs.push(SCHED.spawn("pingpong", pri, Some(cpu), move || {
            let mut mine = 0u64;
            if side == 0 {
                evs[1].set();
            }
            while !stop.load(Ordering::Relaxed) {
                if !evs[side].wait_deadline(now() + 100_000_000) {
                    continue;
                }
                mine += 1;
                rounds.fetch_add(1, Ordering::Relaxed);
                if side == 0 && mine.is_multiple_of(200) {
                    SCHED.sleep_ns(5_000_000);
                }
                evs[1 - side].set();
            }
            evs[1 - side].set();
        }));
    }
    let workload = crate::workload::start(opts.workload_serial, opts.workload_saturate);
    let t0 = now();
    let end = t0 + opts.scenario_ms * 1_000_000;
    let mut next_live = t0;
    while now() < end && !(workload.started() && workload.complete()) {
        SCHED.sleep_ns(50_000_000.min(end.saturating_sub(now())).max(1));
        *CONFIG.write() += 1;
        if now() >= next_live {
            crate::workload::print_live((now() - t0) / 1_000_000, &workload);
            next_live += 250_000_000;
        }
    }
    crate::workload::print_live((now() - t0) / 1_000_000, &workload);
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join();
    }
    let mut ok = rounds.load(Ordering::Relaxed) > 0;
    for (cpu, b) in before.iter().enumerate() {
        let s = SCHED.cpu_stats(cpu);
        let w: Vec<u64> = (0..CLASSES.len()).map(|k| work[k * n + cpu].load(Ordering::Relaxed)).collect();
        ok &= s.ticks > b.ticks && w.iter().all(|&x| x > 0);
        kprintln!(
            "@@ result scope=cpu cpu={} ticks={} switches={} resched_ipis={} work_low={} work_mid={} work_high={}",
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
        "@@ result scope=total cpus={} ms={} pingpong_rounds={} threads={}",
        n,
        opts.scenario_ms,
        rounds.load(Ordering::Relaxed),
        CLASSES.len() * n + 2
    );
    // Lock figures only where they were counted (`lockstat=on`; off by default).
    let stats = SYNC.witness.stats_on();
    for (name, kind, st) in SYNC.witness.lockstat().filter(|(n, _, _)| stats && n.starts_with("scenario.")) {
        kprintln!(
            "@@ result scope=lock name={} kind={:?} acquired={} contended={} spin_us={} block_us={} max_hold_us={}",
            name,
            kind,
            st.acquired,
            st.contended,
            st.spin_ns / 1000,
            st.block_ns / 1000,
            st.max_hold_ns / 1000
        );
    }
    if let Some(h) = source.as_ref() {
        let src = h.source();
        let st = &src.stats;
        kprintln!(
            "@@ result scope=intr name={} model={} count={} handled={} p50_ns={} p99_ns={} handler_us={} storms={}",
            src.name(),
            src.model(),
            st.total(),
            st.handled.load(Ordering::Relaxed),
            st.latency.percentile(50),
            st.latency.percentile(99),
            st.handler_ns.load(Ordering::Relaxed) / 1000,
            src.storm.storms.load(Ordering::Relaxed)
        );
        ok &= st.handled.load(Ordering::Relaxed) > 0;
    }
    crate::workload::print_results(&workload);
    ok &= !workload.started() || (workload.complete() && workload.verified());
    workload.finish();
    drop(source);
    let totals = *TOTALS.lock();
    ok &= totals.iter().all(|&t| t > 0);
    kprintln!("@@ scenario-done");
    ok
}
