//! `ithreads rt`: the kernel's real-time latency test (`run=rt`, `kernel/src/rt.rs`), one boot
//! per interrupt dispatch model, under TCG with `-icount shift=0` (a guest nanosecond is one
//! instruction, so every figure is deterministic), and the table of what each model does to
//! a real-time thread's wake-up latency, idle and under an interrupt flood.
//!
//! The flood is `ipi` (guest-only: deterministic on one vCPU) or `devices` (the default of
//! `ithreads rt`: the IPI flood plus the NIC, with the host sending frames unpaced, the disk
//! with its queue kept full, and the `edu` device; the host's frames land on host time, so
//! such a run is not deterministic). See `kernel/src/rt.rs`.

use std::fmt::Write as _;
use std::time::Duration;

use crate::qemu::{BootConfig, BootReport};
use crate::setup::Accel;

/// One `@@ rt phase=… cpu=all …` record (all CPUs together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    pub samples: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
    /// Releases missed while the thread was held off past its next deadline.
    pub overruns: u64,
}

/// What one model's boot measured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RtRun {
    /// The model the kernel reports (`@@ rt-config model=`).
    pub model: String,
    /// The `@@ rt-config` line's fields.
    pub config: Vec<(String, String)>,
    pub idle: Option<Latency>,
    pub flood: Option<Latency>,
    /// The flood's interrupts raised and handled during the flood phase.
    pub flood_raised: u64,
    pub flood_handled: u64,
    /// The 0th..=100th percentiles of the idle and the flood phase (`@@ rt-cdf`).
    pub cdf_idle: Vec<u64>,
    pub cdf_flood: Vec<u64>,
    /// The device flood's work (`@@ rt-devices`): frames, disk operations, edu raised and
    /// handled.
    pub devices: Option<[u64; 4]>,
    /// The boot's serial flush before the measurement, guest ns: its start and end
    /// (`@@ rt-flush`). Its length is the host's (how fast QEMU's output is read); where it
    /// ends sets where the measurement starts against the clock tick
    /// (docs/logs/rt-one-cpu-rerun-differs-2026-12-07.txt).
    pub flush: Option<(u64, u64)>,
    /// Whether `@@ rt-done` came.
    pub done: bool,
    /// Lines that could not be read.
    pub errors: Vec<String>,
}

/// A serial line's `key=value` words, in order (shared by the `rt` and `cost` readers).
pub(crate) fn fields(line: &str) -> Vec<(String, String)> {
    line.split_ascii_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(crate) fn num(f: &[(String, String)], key: &str) -> Option<u64> {
    f.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.parse().ok())
}

pub(crate) fn text<'a>(f: &'a [(String, String)], key: &str) -> Option<&'a str> {
    f.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

impl RtRun {
    /// Reads a boot's serial lines.
    pub fn from_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> RtRun {
        let mut run = RtRun::default();
        for line in lines {
            let line = line.trim_end();
            if let Some(rest) = line.strip_prefix("@@ rt-config ") {
                run.config = fields(rest);
                run.model = text(&run.config, "model").unwrap_or("-").to_string();
            } else if let Some(rest) = line.strip_prefix("@@ rt ") {
                let f = fields(rest);
                if text(&f, "cpu") != Some("all") {
                    continue;
                }
                let l = (|| {
                    Some(Latency {
                        samples: num(&f, "samples")?,
                        p50: num(&f, "p50")?,
                        p99: num(&f, "p99")?,
                        max: num(&f, "max")?,
                        overruns: num(&f, "overruns")?,
                    })
                })();
                match (text(&f, "phase"), l) {
                    (Some("idle"), Some(l)) => run.idle = Some(l),
                    (Some("flood"), Some(l)) => run.flood = Some(l),
                    _ => run.errors.push(format!("unreadable: {line}")),
                }
            } else if let Some(rest) = line.strip_prefix("@@ rt-flood ") {
                let f = fields(rest);
                if text(&f, "phase") == Some("flood") {
                    match (num(&f, "raised"), num(&f, "handled")) {
                        (Some(r), Some(h)) => (run.flood_raised, run.flood_handled) = (r, h),
                        _ => run.errors.push(format!("unreadable: {line}")),
                    }
                }
            } else if let Some(rest) = line.strip_prefix("@@ rt-cdf ") {
                let f = fields(rest);
                let q: Option<Vec<u64>> =
                    text(&f, "q").map(|q| q.split(',').map(|x| x.parse().ok()).collect()).unwrap_or(None);
                match (text(&f, "phase"), q) {
                    (Some("idle"), Some(q)) => run.cdf_idle = q,
                    (Some("flood"), Some(q)) => run.cdf_flood = q,
                    _ => run.errors.push(format!("unreadable: {line}")),
                }
            } else if let Some(rest) = line.strip_prefix("@@ rt-devices ") {
                let f = fields(rest);
                run.devices = (|| {
                    Some([
                        num(&f, "frames")?,
                        num(&f, "disk_ops")?,
                        num(&f, "edu_raised")?,
                        num(&f, "edu_handled")?,
                    ])
                })();
                if run.devices.is_none() {
                    run.errors.push(format!("unreadable: {line}"));
                }
            } else if let Some(rest) = line.strip_prefix("@@ rt-flush ") {
                let f = fields(rest);
                run.flush = num(&f, "start_ns").zip(num(&f, "end_ns"));
            } else if line.starts_with("@@ rt-done") {
                run.done = true;
            }
        }
        run
    }

    /// What is missing or wrong, if anything.
    pub fn problems(&self) -> Vec<String> {
        let mut p = self.errors.clone();
        if !self.done {
            p.push("no @@ rt-done".into());
        }
        for (phase, l) in [("idle", self.idle), ("flood", self.flood)] {
            match l {
                None => p.push(format!("no {phase} record")),
                Some(l) if l.samples == 0 => p.push(format!("{phase}: no samples")),
                Some(_) => {}
            }
        }
        if self.flood.is_some() && self.flood_handled == 0 {
            p.push("the flood raised no interrupt that was handled".into());
        }
        p
    }
}

/// The kernel command line of one model's run: `seconds` of guest time per phase, the flood
/// (`ipi` or `devices`).
pub fn cmdline(model: &str, seconds: f64, period_us: u64, flood: &str) -> String {
    let ms = ((seconds * 1000.0).round() as u64).clamp(10, 60_000);
    format!("run=rt intr.model={model} rt.ms={ms} rt.period_us={period_us} rt.flood={flood}")
}

/// The boot of one model's run (TCG with icount, as the benchmarks; KVM only if forced).
/// With `devices` (the host's NIC peer and disk image) the host serves the guest's frame
/// requests.
pub fn config(
    smp: u32,
    accel: Accel,
    append: String,
    timeout: Duration,
    devices: Option<&crate::workload::Devices>,
) -> BootConfig {
    let mut extra_args = match accel {
        Accel::Tcg => vec!["-icount".to_string(), crate::bench::ICOUNT.to_string()],
        Accel::Kvm => Vec::new(),
    };
    let mut input = Default::default();
    if let Some(d) = devices {
        extra_args.extend(d.qemu_args.iter().cloned());
        let counters = std::sync::Arc::new(crate::workload::HostCounters::default());
        input = crate::workload::feeder(crate::workload::Plan { serial_lines: 0 }, d.net.clone(), counters);
    }
    BootConfig { smp, accel: Some(accel), append, extra_args, timeout, input }
}

/// The run of a finished boot.
pub fn from_report(report: &BootReport) -> RtRun {
    RtRun::from_lines(report.serial_log.iter().map(String::as_str))
}

/// The side-by-side table: per model, idle and flood p50 / p99 / max, and the flood's size.
/// `unit` is what a guest nanosecond is (instructions under icount).
pub fn table(runs: &[RtRun], unit: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  {:<10} {:>10} {:>10} {:>10}   {:>10} {:>10} {:>10} {:>9}  {:>8}",
        "model",
        "idle p50",
        "idle p99",
        "idle max",
        "flood p50",
        "flood p99",
        "flood max",
        "overruns",
        "flood n"
    );
    for r in runs {
        let cell = |l: Option<Latency>, f: fn(&Latency) -> u64| l.map_or("-".into(), |l| f(&l).to_string());
        let _ = writeln!(
            s,
            "  {:<10} {:>10} {:>10} {:>10}   {:>10} {:>10} {:>10} {:>9}  {:>8}",
            r.model,
            cell(r.idle, |l| l.p50),
            cell(r.idle, |l| l.p99),
            cell(r.idle, |l| l.max),
            cell(r.flood, |l| l.p50),
            cell(r.flood, |l| l.p99),
            cell(r.flood, |l| l.max),
            cell(r.flood, |l| l.overruns),
            r.flood_handled
        );
    }
    for r in runs {
        if let Some([frames, disk, raised, handled]) = r.devices {
            let _ = writeln!(
                s,
                "  {:<10} device flood: {frames} NIC frames, {disk} disk operations, edu {handled} of {raised} handled",
                r.model
            );
        }
    }
    for r in runs {
        if let Some((start, end)) = r.flush {
            let _ = writeln!(
                s,
                "  {:<10} serial flush before measuring: {} guest ns, ending at {end}",
                r.model,
                end.saturating_sub(start)
            );
        }
    }
    let _ = writeln!(
        s,
        "  (wake-up latency from the timer's deadline to the thread's first instruction, guest ns = {unit})"
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_read_and_judged() {
        let lines = [
            "@@ rt-config model=pool cpus=2 period_us=1000 ms=50 rt_priority=80 flood_body_ns=20000 flood_send_ns=40000 flood_thread_priority=60",
            "@@ rt phase=idle cpu=0 samples=50 p50=1979 p99=4255 max=4259 overruns=0",
            "@@ rt phase=idle cpu=all samples=100 p50=1979 p99=4255 max=4259 overruns=0",
            "@@ rt-flood phase=idle raised=0 handled=0",
            "@@ rt phase=flood cpu=all samples=100 p50=2690 p99=4067 max=4082 overruns=1",
            "@@ rt-flood phase=flood raised=2208 handled=2208",
            "@@ rt-cdf phase=flood q=1,2,3",
            "@@ rt-devices phase=flood frames=10 disk_ops=20 edu_raised=3 edu_handled=3",
            "@@ rt-done",
        ];
        let r = RtRun::from_lines(lines);
        assert_eq!(r.model, "pool");
        assert_eq!(r.idle, Some(Latency { samples: 100, p50: 1979, p99: 4255, max: 4259, overruns: 0 }));
        assert_eq!(r.flood.map(|l| (l.max, l.overruns)), Some((4082, 1)));
        assert_eq!((r.flood_raised, r.flood_handled), (2208, 2208));
        assert_eq!(r.cdf_flood, [1, 2, 3]);
        assert_eq!(r.devices, Some([10, 20, 3, 3]));
        assert!(r.problems().is_empty(), "{:?}", r.problems());
        let t = table(&[r], "instructions");
        assert!(t.contains("pool") && t.contains("4082"), "{t}");

        let cut = RtRun::from_lines(lines[..3].iter().copied());
        let p = cut.problems();
        assert!(
            p.iter().any(|m| m.contains("rt-done")) && p.iter().any(|m| m.contains("no flood record")),
            "{p:?}"
        );
    }

    #[test]
    fn the_command_line_clamps_the_phase() {
        assert_eq!(
            cmdline("direct", 0.001, 1000, "ipi"),
            "run=rt intr.model=direct rt.ms=10 rt.period_us=1000 rt.flood=ipi"
        );
        assert_eq!(
            cmdline("pinned", 2.5, 500, "devices"),
            "run=rt intr.model=pinned rt.ms=2500 rt.period_us=500 rt.flood=devices"
        );
    }
}
