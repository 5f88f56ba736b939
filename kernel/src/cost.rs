//! `run=cost`: what each interrupt source costs at saturation, in guest instructions (the
//! host boots it on one vCPU under TCG `-icount shift=0`, where a guest nanosecond is one
//! instruction and every instruction is this CPU's).
//!
//! Three phases, each with the devices driven as fast as the guest takes them (`flood.rs`):
//!
//! - `net`: `cost.frames` NIC frames, unpaced, not echoed;
//! - `disk`: `cost.frames / 4` one-sector reads from [`crate::flood::DISK_THREADS_PER_CPU`]
//!   threads per CPU;
//! - `all`: both at once and the `edu` flood, ending when the NIC and the disk are done: each
//!   source's share of the CPU.
//!
//! **Idle is not counted.** On every CPU a soaker thread at the lowest kernel priority spins
//! reading the clock whenever nothing else is runnable. A gap of more than [`GAP_NS`] between
//! two of its readings is time something else ran; the rest is the soaker's, i.e. idle. So the
//! CPU never halts (under icount a halted CPU's clock jumps, or follows the host's), and a
//! phase's `busy` time is its length less the soaker's share. `per_op` = busy / operations:
//! everything the guest did for each frame or disk operation (driver, interrupt delivery,
//! handler, wake-ups, the clock tick's share), not the soaker.
//!
//! Output (docs/PROTOCOL.md), after each phase:
//! `@@ cost phase=<p> model=<m> cpus=<n> ops=<n> elapsed_ns=<ns> idle_ns=<ns> busy_ns=<ns> per_op=<ns>`
//! (ops: frames for `net`, disk operations for `disk` and `all`),
//! one `@@ cost-source phase=<p> name=<s> count=<n> handled=<n> handler_ns=<ns>` per source
//! whose counters moved, and at the end `@@ cost-done ok=<0|1>`.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arch::{kprintln, X86_64};
use machine::Machine;
use sched::Priority;

use crate::cmdline::Options;
use crate::flood::{DiskFlood, EduFlood, NetFlood};
use crate::intr::INTR;
use crate::SCHED;

/// A gap between two of the soaker's clock readings longer than this (guest ns) is time
/// something else ran. Its own loop takes a few dozen instructions; no interrupt takes less.
pub const GAP_NS: u64 = 400;

/// The disk and edu threads' priority (kernel threads, above the soaker).
const WORKER_PRIORITY: u8 = 40;

/// A soaker per CPU; each adds up its own (idle) time.
struct Soakers {
    stop: Arc<AtomicBool>,
    idle: Arc<Vec<AtomicU64>>,
    threads: Vec<sched::JoinHandle<crate::locks::KernelEnv>>,
}

impl Soakers {
    fn start(n: usize) -> Soakers {
        let stop = Arc::new(AtomicBool::new(false));
        let idle: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let threads = (0..n)
            .map(|cpu| {
                let (stop, idle) = (stop.clone(), idle.clone());
                SCHED.spawn("cost-soak", Priority::MIN_KTHREAD, Some(cpu), move || {
                    let mut last = X86_64::now_ns();
                    let mut mine = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let t = X86_64::now_ns();
                        let d = t - last;
                        if d <= GAP_NS {
                            mine += d;
                            // Published at once: the phase reads it while this runs.
                            idle[cpu].store(mine, Ordering::Relaxed);
                        }
                        last = t;
                    }
                })
            })
            .collect();
        Soakers { stop, idle, threads }
    }

    /// Idle time of every CPU together so far.
    fn idle(&self) -> u64 {
        self.idle.iter().map(|i| i.load(Ordering::Relaxed)).sum()
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join();
        }
        self.idle.iter().map(|i| i.load(Ordering::Relaxed)).sum()
    }
}

/// Per source: (name, count, handled, handler_ns).
fn snapshot() -> Vec<(String, u64, u64, u64)> {
    INTR.sources()
        .iter()
        .map(|s| {
            (
                String::from(s.name()),
                s.stats.total(),
                s.stats.handled.load(Ordering::Relaxed),
                s.stats.handler_ns.load(Ordering::Relaxed),
            )
        })
        .collect()
}

/// Prints a phase's records; returns whether it did any work.
fn report(
    phase: &str,
    ops: u64,
    elapsed: u64,
    idle: u64,
    before: &[(String, u64, u64, u64)],
    after: Vec<(String, u64, u64, u64)>,
) -> bool {
    let n = X86_64::ncpus() as u64;
    let total = elapsed * n;
    let busy = total.saturating_sub(idle);
    let model = crate::intr::INTR.default_model();
    let mut out = Vec::new();
    out.push(alloc::format!(
        "@@ cost phase={phase} model={model} cpus={n} ops={ops} elapsed_ns={elapsed} idle_ns={idle} busy_ns={busy} \
         per_op={}",
        busy.checked_div(ops).unwrap_or(0)
    ));
    for (name, count, handled, ns) in after {
        let (c0, h0, n0) = before.iter().find(|b| b.0 == name).map_or((0, 0, 0), |b| (b.1, b.2, b.3));
        if count > c0 || handled > h0 {
            out.push(alloc::format!(
                "@@ cost-source phase={phase} name={name} count={} handled={} handler_ns={}",
                count - c0,
                handled - h0,
                ns - n0
            ));
        }
    }
    for l in out {
        kprintln!("{l}");
    }
    // The lines go out before the next phase starts, by polling.
    arch::serial::flush();
    ops > 0
}

/// Runs the three phases; returns whether each did its work.
pub fn run(opts: &Options) -> bool {
    arch::serial::flush();
    let n = X86_64::ncpus();
    let frames = opts.cost_frames;
    let disk_ops = (frames / 4).max(1);
    let pri = Priority::new(WORKER_PRIORITY).expect("priority in range");
    let mut ok = true;
    let mut first = 0;
    for phase in ["net", "disk", "all"] {
        let (want_net, want_disk, want_edu) = match phase {
            "net" => (true, false, false),
            "disk" => (false, true, false),
            _ => (true, true, true),
        };
        let soak = Soakers::start(n);
        // The soakers are running before the phase's clock starts.
        SCHED.sleep_ns(1_000_000);
        let before = snapshot();
        let t0 = X86_64::now_ns();
        let i0 = soak.idle();
        let net = if want_net { NetFlood::start(first, frames) } else { None };
        let disk = if want_disk { DiskFlood::start(n, pri, disk_ops) } else { None };
        let edu = if want_edu { EduFlood::start("edu.flood", pri, None) } else { None };
        let net_ok = net.as_ref().is_none_or(NetFlood::wait);
        let (ops, errors) = disk.map_or((0, 0), DiskFlood::join);
        let frames_in = net.as_ref().map_or(0, NetFlood::unique);
        let t1 = X86_64::now_ns();
        let i1 = soak.idle();
        // Before the edu source goes.
        let after = snapshot();
        let edu_counts = edu.map(EduFlood::stop);
        soak.stop();
        first += frames;
        let ops_counted = match phase {
            "net" => frames_in,
            _ => ops,
        };
        let did = report(phase, ops_counted, t1 - t0, i1 - i0, &before, after);
        if let Some((raised, handled)) = edu_counts {
            kprintln!("@@ cost-edu phase={phase} raised={raised} handled={handled}");
        }
        if want_net && (net.is_none() || !net_ok || frames_in != frames) {
            kprintln!("cost: phase {phase}: NIC got {frames_in} of {frames} frames (end marker {net_ok})");
            ok = false;
        }
        if want_disk && errors > 0 {
            kprintln!("cost: phase {phase}: {errors} disk operations failed");
            ok = false;
        }
        ok &= did;
    }
    kprintln!("@@ cost-done ok={}", u8::from(ok));
    ok
}
