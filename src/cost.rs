//! `ithreads cost` and the cost part of `--compare`: the kernel's `run=cost`
//! (`kernel/src/cost.rs`) on one vCPU under TCG `-icount shift=0`, with the NIC and the disk
//! saturated, and what it prints: guest instructions per NIC frame and per disk operation
//! counting only the time the guest was not idle, and each interrupt source's share of the
//! CPU. On one vCPU every instruction the TSC counts is that CPU's, so the figures are exact;
//! on more, icount's one counter is shared by every vCPU and a per-CPU share cannot be read.
//!
//! What is deterministic: the guest's own work. What is not: when the host's frames land
//! between the guest's instructions (the host writes them into QEMU's stream on host time),
//! which changes how many frames one interrupt finds. Hence [`spread`] over repeated boots.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::bench::ICOUNT;
use crate::qemu::{Accel, BootConfig, BootReport};
use crate::rt::{fields, num, text};
use crate::workload::{self, HostCounters, Plan};

/// The NIC frames of a cost boot's `net` phase by default (the disk phase makes a quarter as
/// many operations).
pub const FRAMES: u64 = 20_000;

/// One `@@ cost phase=…` record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Phase {
    pub phase: String,
    pub ops: u64,
    pub elapsed_ns: u64,
    pub idle_ns: u64,
    pub busy_ns: u64,
    /// Busy guest ns (= instructions under icount shift=0) per operation.
    pub per_op: u64,
    /// Per source: (name, interrupts, handler runs, handler ns).
    pub sources: Vec<(String, u64, u64, u64)>,
}

impl Phase {
    /// `source`'s handler time as a share of the phase (all CPUs), 0..=1.
    pub fn share(&self, source: &str) -> Option<f64> {
        let s = self.sources.iter().find(|s| s.0 == source)?;
        (self.elapsed_ns > 0).then(|| s.3 as f64 / self.elapsed_ns as f64)
    }

    /// The busy share of the phase, 0..=1.
    pub fn busy_share(&self) -> f64 {
        if self.elapsed_ns == 0 {
            0.0
        } else {
            self.busy_ns as f64 / (self.busy_ns + self.idle_ns).max(1) as f64
        }
    }
}

/// One cost boot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CostRun {
    /// The model the kernel reports.
    pub model: String,
    pub phases: Vec<Phase>,
    /// `@@ cost-done ok=1` came.
    pub ok: bool,
    pub done: bool,
    pub errors: Vec<String>,
}

impl CostRun {
    /// Reads a boot's serial lines.
    pub fn from_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> CostRun {
        let mut run = CostRun::default();
        for line in lines {
            let line = line.trim_end();
            if let Some(rest) = line.strip_prefix("@@ cost ") {
                let f = fields(rest);
                let p = (|| {
                    Some(Phase {
                        phase: text(&f, "phase")?.to_string(),
                        ops: num(&f, "ops")?,
                        elapsed_ns: num(&f, "elapsed_ns")?,
                        idle_ns: num(&f, "idle_ns")?,
                        busy_ns: num(&f, "busy_ns")?,
                        per_op: num(&f, "per_op")?,
                        sources: Vec::new(),
                    })
                })();
                match p {
                    Some(p) => {
                        run.model = text(&f, "model").unwrap_or("-").to_string();
                        run.phases.push(p);
                    }
                    None => run.errors.push(format!("unreadable: {line}")),
                }
            } else if let Some(rest) = line.strip_prefix("@@ cost-source ") {
                let f = fields(rest);
                let s = (|| {
                    Some((
                        text(&f, "phase")?.to_string(),
                        text(&f, "name")?.to_string(),
                        num(&f, "count")?,
                        num(&f, "handled")?,
                        num(&f, "handler_ns")?,
                    ))
                })();
                match s {
                    Some((phase, name, count, handled, ns)) => {
                        if let Some(p) = run.phases.iter_mut().rev().find(|p| p.phase == phase) {
                            p.sources.push((name, count, handled, ns));
                        }
                    }
                    None => run.errors.push(format!("unreadable: {line}")),
                }
            } else if let Some(rest) = line.strip_prefix("@@ cost-done ") {
                run.done = true;
                run.ok = text(&fields(rest), "ok") == Some("1");
            }
        }
        run
    }

    /// A phase by name.
    pub fn phase(&self, name: &str) -> Option<&Phase> {
        self.phases.iter().find(|p| p.phase == name)
    }

    /// Instructions per NIC frame (the `net` phase).
    pub fn per_frame(&self) -> Option<u64> {
        self.phase("net").map(|p| p.per_op).filter(|&x| x > 0)
    }

    /// Instructions per disk operation (the `disk` phase).
    pub fn per_disk_op(&self) -> Option<u64> {
        self.phase("disk").map(|p| p.per_op).filter(|&x| x > 0)
    }

    /// What is missing or wrong.
    pub fn problems(&self) -> Vec<String> {
        let mut p = self.errors.clone();
        if !self.done {
            p.push("no @@ cost-done".into());
        } else if !self.ok {
            p.push("the kernel reports the cost run as failed (cost-done ok=0)".into());
        }
        for phase in ["net", "disk", "all"] {
            if self.phase(phase).is_none() {
                p.push(format!("no {phase} phase record"));
            }
        }
        p
    }
}

/// The spread of `xs`: (median, (max − min) / median), `None` if empty.
pub fn spread(xs: &[u64]) -> Option<(u64, f64)> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_unstable();
    let med = v[v.len() / 2];
    let range = (v[v.len() - 1] - v[0]) as f64 / med.max(1) as f64;
    Some((med, range))
}

/// The kernel command line of a cost boot.
pub fn cmdline(model: &str, frames: u64) -> String {
    format!("run=cost intr.model={model} cost.frames={frames}")
}

/// A cost boot: one vCPU, TCG with icount, the host's NIC peer and disk image (`devices`),
/// the host serving the guest's frame requests.
pub fn config(
    accel: Accel,
    append: String,
    devices: &workload::Devices,
    counters: Arc<HostCounters>,
    timeout: Duration,
) -> BootConfig {
    let mut extra_args = match accel {
        Accel::Tcg => vec!["-icount".to_string(), ICOUNT.to_string()],
        Accel::Kvm => Vec::new(),
    };
    extra_args.extend(devices.qemu_args.iter().cloned());
    BootConfig {
        smp: 1,
        accel: Some(accel),
        append,
        extra_args,
        timeout,
        input: workload::feeder(Plan { serial_lines: 0 }, devices.net.clone(), counters),
    }
}

/// The run of a finished boot.
pub fn from_report(report: &BootReport) -> CostRun {
    CostRun::from_lines(report.serial_log.iter().map(String::as_str))
}

/// The table of a model's repeated cost boots: per model, instructions per frame and per disk
/// operation (median and spread), and the sources' CPU shares in the `all` phase.
pub fn table(runs: &[Vec<CostRun>]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  {:<10} {:>14} {:>8} {:>14} {:>8} {:>6}  shares in `all` (handler time / phase)",
        "model", "instr/frame", "spread", "instr/disk op", "spread", "runs"
    );
    for model_runs in runs {
        let Some(first) = model_runs.first() else { continue };
        let frames: Vec<u64> = model_runs.iter().filter_map(CostRun::per_frame).collect();
        let disk: Vec<u64> = model_runs.iter().filter_map(CostRun::per_disk_op).collect();
        let cell =
            |x: Option<(u64, f64)>| x.map_or(("-".into(), "-".into()), |(m, r)| (m.to_string(), pct(r)));
        let (f, fs) = cell(spread(&frames));
        let (d, ds) = cell(spread(&disk));
        let shares = first
            .phase("all")
            .map(|p| {
                let mut v: Vec<String> = p
                    .sources
                    .iter()
                    .filter(|src| src.3 > 0)
                    .map(|src| format!("{} {}", src.0, pct(src.3 as f64 / p.elapsed_ns.max(1) as f64)))
                    .collect();
                v.push(format!("busy {}", pct(p.busy_share())));
                v.join(", ")
            })
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  {:<10} {:>14} {:>8} {:>14} {:>8} {:>6}  {shares}",
            first.model,
            f,
            fs,
            d,
            ds,
            model_runs.len()
        );
    }
    let _ = writeln!(
        s,
        "  (1 vCPU, TCG -icount shift=0: guest instructions while the guest was not idle, per operation; \
         spread = (max - min) / median over the runs)"
    );
    s
}

/// A fraction as a percentage with one decimal.
pub fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINES: [&str; 8] = [
        "@@ cost phase=net model=pool cpus=1 ops=2000 elapsed_ns=90000000 idle_ns=10000000 busy_ns=80000000 per_op=40000",
        "@@ cost-source phase=net name=virtio-net0.rx count=300 handled=310 handler_ns=50000000",
        "@@ cost phase=disk model=pool cpus=1 ops=500 elapsed_ns=50000000 idle_ns=30000000 busy_ns=20000000 per_op=40000",
        "@@ cost-source phase=disk name=virtio-blk0 count=480 handled=480 handler_ns=5000000",
        "@@ cost phase=all model=pool cpus=1 ops=500 elapsed_ns=100000000 idle_ns=0 busy_ns=100000000 per_op=200000",
        "@@ cost-source phase=all name=virtio-net0.rx count=300 handled=300 handler_ns=40000000",
        "@@ cost-source phase=all name=edu.flood count=3000 handled=3000 handler_ns=1000000",
        "@@ cost-done ok=1",
    ];

    #[test]
    fn a_cost_run_is_read() {
        let r = CostRun::from_lines(LINES);
        assert_eq!(r.model, "pool");
        assert_eq!((r.per_frame(), r.per_disk_op()), (Some(40000), Some(40000)));
        assert!(r.problems().is_empty(), "{:?}", r.problems());
        let all = r.phase("all").unwrap();
        assert_eq!(all.sources.len(), 2);
        assert!((all.share("virtio-net0.rx").unwrap() - 0.4).abs() < 1e-9);
        let t = table(&[vec![r.clone(), r]]);
        assert!(t.contains("40000") && t.contains("0.0%") && t.contains("virtio-net0.rx 40.0%"), "{t}");
        let cut = CostRun::from_lines(LINES[..3].iter().copied());
        assert!(cut.problems().iter().any(|p| p.contains("cost-done")), "{:?}", cut.problems());
    }

    #[test]
    fn spread_is_range_over_median() {
        assert_eq!(spread(&[]), None);
        let (m, r) = spread(&[100, 104, 98]).unwrap();
        assert_eq!(m, 100);
        assert!((r - 0.06).abs() < 1e-9);
    }
}
