//! `run=rt`: a cyclictest of our own — what an interrupt flood does to a real-time thread's
//! wake-up latency under each dispatch model.
//!
//! On every CPU a thread in the real-time band ([`RT_PRIORITY`], bound to its CPU) wakes
//! every `rt.period_us` at an absolute deadline (`Scheduler::sleep_until`: the deadline arms
//! the CPU's one-shot timer) and records its latency: the time from the deadline (the timer's
//! expiry) to its first instruction after the sleep. Two phases of `rt.ms` each:
//!
//! - `idle`: nothing else runs;
//! - `flood`: on every CPU a low-priority flooder sends an IPI to the next CPU every
//!   [`FLOOD_SEND_NS`] while it has the CPU, on the source `rt.flood` (the default model's),
//!   whose handler spins for [`FLOOD_BODY_NS`]: about half of each CPU goes to the flood. Where the model gives the handler a thread (dedicated, pool), that
//!   thread runs at [`FLOOD_THREAD_PRIORITY`], below the real-time band, as `chrt` would set
//!   a Linux irq thread: the real-time thread can preempt it. Under `direct` the handler
//!   runs in interrupt context, under `pinned` on the borrowed CPU: neither can be preempted.
//!
//!
//! With `rt.flood=devices` the flood phase also drives the devices as fast as the guest takes
//! them (`flood.rs`): the host sends NIC frames unpaced, [`crate::flood::DISK_THREADS_PER_CPU`]
//! disk threads per CPU keep the disk's queue full, and the `edu` device raises one interrupt
//! after another. The NIC's, the disk's and the edu source's handler threads (dedicated,
//! pool) are set to [`FLOOD_THREAD_PRIORITY`] too, and the disk and edu threads run at [`DEVICE_PRIORITY`]:
//! the real-time threads sit above all of it. The devices are brought up before the idle
//! phase; what they did in the flood is printed as
//! `@@ rt-devices phase=flood frames=<n> disk_ops=<n> edu_raised=<n> edu_handled=<n>`.
//! The host's NIC traffic runs on host time: such a run is not deterministic.
//!
//! Under TCG with `-icount shift=0` (the host's `rt` command) a guest nanosecond is one
//! instruction, so each latency is also a count of instructions.
//!
//! Output (docs/PROTOCOL.md), all of it after both phases (the serial line's transmit
//! interrupts, timed by how fast the host reads, stay out of the measurement): `@@ rt-config …`,
//! then per phase one
//! `@@ rt phase=<p> cpu=<n|all> samples=<n> p50=<ns> p99=<ns> max=<ns> overruns=<n>` per CPU
//! and for all CPUs together, then `@@ rt-cdf phase=<p> q=<v0>,<v1>,…,<v100>` (the 0th to
//! 100th percentile of all CPUs' latencies, for the host's CDF chart), `@@ rt-flood phase=<p> raised=<n> handled=<n>`, and
//! `@@ rt-done`.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arch::{kprintln, X86_64};
use intr::{IntrFlags, SourceSpec};
use ipl::Ipl;
use machine::Machine;
use sched::Priority;

use crate::cmdline::Options;
use crate::intr::INTR;
use crate::locks::Mutex;
use crate::SCHED;

/// The measuring threads' priority: in the real-time band (64..=95).
pub const RT_PRIORITY: u8 = 80;
/// The flood source's handler thread (dedicated, pool): below the real-time band.
pub const FLOOD_THREAD_PRIORITY: u8 = 60;
/// The flooders: below everything else that runs here.
const FLOODER_PRIORITY: u8 = 8;
/// What the flood's handler spends per interrupt.
pub const FLOOD_BODY_NS: u64 = 20_000;
/// A flooder's time between two sends.
pub const FLOOD_SEND_NS: u64 = 2 * FLOOD_BODY_NS;
/// The disk and edu flood threads (`rt.flood=devices`): below the real-time band and the
/// flood's handler threads.
pub const DEVICE_PRIORITY: u8 = 40;
/// NIC frames asked for in a device flood (more than a phase of 60 guest s takes in).
const DEVICE_FRAMES: u64 = 4_000_000;
/// The flood's vector.
const FLOOD_VECTOR: u8 = 0x5C;

fn now() -> u64 {
    X86_64::now_ns()
}

/// The latencies of one phase on one CPU.
struct Samples {
    latencies: Vec<u64>,
    overruns: u64,
}

fn percentile(sorted: &[u64], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) * p) / 100]
}

/// The 0th..=100th percentiles of `sorted`, comma-separated.
fn cdf(sorted: &[u64]) -> String {
    let q: Vec<String> = (0..=100).map(|p| alloc::format!("{}", percentile(sorted, p))).collect();
    q.join(",")
}

/// The NIC's and the disk's handler threads go to [`FLOOD_THREAD_PRIORITY`] (a model without
/// handler threads refuses: nothing to set).
fn devices_below_rt() {
    let pri = Priority::new(FLOOD_THREAD_PRIORITY).expect("priority in range");
    for src in INTR.sources() {
        if src.name() == crate::drivers::virtio::net::NAME_RX
            || src.name() == crate::drivers::virtio::blk::NAME
        {
            let _ = src.set_thread_priority(Some(pri));
        }
    }
}

fn report(phase: &str, cpu: &str, s: &mut [u64], overruns: u64) -> String {
    s.sort_unstable();
    alloc::format!(
        "@@ rt phase={phase} cpu={cpu} samples={} p50={} p99={} max={} overruns={overruns}",
        s.len(),
        percentile(s, 50),
        percentile(s, 99),
        s.last().copied().unwrap_or(0)
    )
}

/// Runs both phases; returns whether every CPU took samples in each.
pub fn run(opts: &Options) -> bool {
    // The boot's lines go out first, by polling: no transmit interrupt, timed by the host's
    // reading, falls into the measurement. How long that took, in guest time, is reported
    // (`@@ rt-flush`): the polling's length is the host's, and it sets where the measurement
    // starts against the clock tick (docs/logs/rt-one-cpu-rerun-differs-2026-12-07.txt).
    let flush_start = now();
    arch::serial::flush();
    let flush_end = now();
    let n = X86_64::ncpus();
    let handled = Arc::new(AtomicU64::new(0));
    let h2 = handled.clone();
    let flood = match INTR.establish(
        SourceSpec {
            name: "rt.flood".into(),
            vector: FLOOD_VECTOR,
            ipl: Ipl::Vm,
            flags: IntrFlags::MPSAFE,
            model: None,
            // Below the real-time band from the start, as a driver sets it when it
            // establishes (ignored under direct and pinned: no thread).
            thread_priority: Priority::new(FLOOD_THREAD_PRIORITY),
        },
        None,
        Some(alloc::boxed::Box::new(move |_| {
            let until = now() + FLOOD_BODY_NS;
            while now() < until {
                core::hint::spin_loop();
            }
            h2.fetch_add(1, Ordering::Relaxed);
        })),
    ) {
        Ok(h) => h,
        Err(e) => {
            kprintln!("rt: cannot establish the flood source: {e}");
            return false;
        }
    };
    let flood_thread = flood.source().thread_priority().is_some();
    // Every line is printed after both phases: the serial line's transmit interrupts, whose
    // timing depends on how fast the host reads, stay out of the measurement.
    let mut out: Vec<String> = Vec::new();
    out.push(alloc::format!(
        "@@ rt-config model={} cpus={} period_us={} ms={} rt_priority={} flood_body_ns={} flood_send_ns={} \
         flood_thread_priority={}",
        flood.source().model(),
        n,
        opts.rt_period_us,
        opts.rt_ms,
        RT_PRIORITY,
        FLOOD_BODY_NS,
        FLOOD_SEND_NS,
        if flood_thread {
            alloc::format!("{FLOOD_THREAD_PRIORITY}")
        } else {
            alloc::string::String::from("-")
        }
    ));
    out.push(alloc::format!("@@ rt-flush start_ns={flush_start} end_ns={flush_end}"));
    let devices = opts.rt_flood == crate::cmdline::RtFlood::Devices;
    if devices {
        let net = crate::drivers::virtio::net::start(None).is_ok();
        let blk = crate::drivers::virtio::blk::start(None).is_ok();
        devices_below_rt();
        out.push(alloc::format!("@@ rt-devices-config net={} blk={}", u8::from(net), u8::from(blk)));
    }
    let mut ok = true;
    for phase in ["idle", "flood"] {
        let stop = Arc::new(AtomicBool::new(false));
        let raised = Arc::new(AtomicU64::new(0));
        let handled_before = handled.load(Ordering::Relaxed);
        let flooders: Vec<_> = if phase == "flood" {
            (0..n)
                .map(|cpu| {
                    let (stop, raised) = (stop.clone(), raised.clone());
                    let to = arch::cpu::lapic_id_of((cpu + 1) % n);
                    SCHED.spawn(
                        "rt-flooder",
                        Priority::new(FLOODER_PRIORITY).expect("priority"),
                        Some(cpu),
                        move || {
                            while !stop.load(Ordering::Relaxed) {
                                arch::apic::send_ipi(to, FLOOD_VECTOR);
                                raised.fetch_add(1, Ordering::Relaxed);
                                // Two handlers' time between sends: the target CPU spends about
                                // half its time in the flood's handler. (Back to back, a direct
                                // handler would hold it in interrupt context for good, and the
                                // real-time thread there would never run again: a livelock,
                                // not a latency.)
                                let until = now() + FLOOD_SEND_NS;
                                while now() < until && !stop.load(Ordering::Relaxed) {
                                    core::hint::spin_loop();
                                }
                            }
                        },
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        let dev_pri = Priority::new(DEVICE_PRIORITY).expect("priority in range");
        let flood_devices = devices && phase == "flood";
        let net = if flood_devices { crate::flood::NetFlood::start(0, DEVICE_FRAMES) } else { None };
        let disk = if flood_devices { crate::flood::DiskFlood::start(n, dev_pri, u64::MAX) } else { None };
        let edu = if flood_devices {
            crate::flood::EduFlood::start("rt.edu", dev_pri, Priority::new(FLOOD_THREAD_PRIORITY))
        } else {
            None
        };
        let results: Arc<Vec<Mutex<Samples>>> = Arc::new(
            (0..n)
                .map(|_| Mutex::new_adaptive("rt.samples", Samples { latencies: Vec::new(), overruns: 0 }))
                .collect(),
        );
        let period = opts.rt_period_us * 1_000;
        let start = now() + period;
        let end = start + opts.rt_ms * 1_000_000;
        let rts: Vec<_> = (0..n)
            .map(|cpu| {
                let results = results.clone();
                SCHED.spawn("rt", Priority::new(RT_PRIORITY).expect("priority"), Some(cpu), move || {
                    let mut lat = Vec::with_capacity(((end - start) / period) as usize + 1);
                    let mut overruns = 0;
                    let mut deadline = start;
                    while deadline < end {
                        SCHED.sleep_until(deadline);
                        let t = now();
                        lat.push(t - deadline);
                        deadline += period;
                        // Releases missed while it was held off are counted, not taken late.
                        while deadline <= t {
                            deadline += period;
                            overruns += 1;
                        }
                    }
                    *results[cpu].lock() = Samples { latencies: lat, overruns };
                })
            })
            .collect();
        for h in rts {
            h.join();
        }
        stop.store(true, Ordering::Relaxed);
        for f in flooders {
            f.join();
        }
        if flood_devices {
            let frames = net.as_ref().map_or(0, crate::flood::NetFlood::unique);
            let (disk_ops, _) = disk.map_or((0, 0), crate::flood::DiskFlood::stop);
            let (edu_raised, edu_handled) = edu.map_or((0, 0), crate::flood::EduFlood::stop);
            out.push(alloc::format!(
                "@@ rt-devices phase={phase} frames={frames} disk_ops={disk_ops} edu_raised={edu_raised} \
                 edu_handled={edu_handled}"
            ));
        }
        let mut all = Vec::new();
        let mut all_overruns = 0;
        for (cpu, r) in results.iter().enumerate() {
            let mut s = core::mem::replace(&mut *r.lock(), Samples { latencies: Vec::new(), overruns: 0 });
            ok &= !s.latencies.is_empty();
            all.extend_from_slice(&s.latencies);
            all_overruns += s.overruns;
            out.push(report(phase, &alloc::format!("{cpu}"), &mut s.latencies, s.overruns));
        }
        out.push(report(phase, "all", &mut all, all_overruns));
        out.push(alloc::format!("@@ rt-cdf phase={phase} q={}", cdf(&all)));
        // The flood's interrupts still in flight are let in before counting.
        let until = now() + 50_000_000;
        while now() < until
            && handled.load(Ordering::Relaxed) - handled_before < raised.load(Ordering::Relaxed)
        {
            SCHED.sleep_ns(1_000_000);
        }
        out.push(alloc::format!(
            "@@ rt-flood phase={phase} raised={} handled={}",
            raised.load(Ordering::Relaxed),
            handled.load(Ordering::Relaxed) - handled_before
        ));
    }
    drop(flood);
    for line in &out {
        kprintln!("{line}");
    }
    kprintln!("@@ rt-done");
    ok
}
