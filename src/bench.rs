//! Benchmark boots (`ithreads bench`): the QEMU configuration (TCG with `-icount` so the
//! guest TSC counts instructions, or KVM and cycles), the figures the kernel reports as
//! `@@ bench` lines, the table, and the JSON Lines records — an interface scripts use, so
//! the record's fields, their order and their spelling stay as they are:
//!
//! ```text
//! {"bench": "mutex.adaptive.enter_exit", "model": "-", "smp": 1, "accel": "tcg-icount", "unit": "instructions", "samples": 100000, "median": 9, "p99": 11, "min": 9, "config": "lockstat=off lockcheck=off"}
//! ```
//!
//! `config` (added last) is the kernel's `@@ bench-config` line: the configuration the boot
//! took its figures in ([`DEFAULT_CONFIG`] in a default boot).

use std::io::{self, Write};
use std::time::Duration;

use serde::Serialize;

use crate::harness::{self, Goal};
use crate::protocol::Event;
use crate::qemu::{self, Accel, BootConfig, BootReport};

/// QEMU's `-icount` setting for benchmarks under TCG: the guest TSC advances by exactly one
/// per executed guest instruction, virtual time does not follow the host clock, and idle
/// time is skipped — runs are deterministic.
pub const ICOUNT: &str = "shift=0,align=off,sleep=off";

/// The `config` of figures taken in a default boot's configuration (the kernel's
/// `@@ bench-config` words): lock statistics and checking off.
pub const DEFAULT_CONFIG: &str = "lockstat=off lockcheck=off";

/// The kernel's default number of samples per figure (`bench.samples=`).
pub const DEFAULT_SAMPLES: u32 = 100_000;

/// The benchmark that reports one figure per CPU count: it uses every CPU of its boot, so
/// `bench --smp N` boots it again alone on 1..N−1 CPUs ([`sweep_smps`]) and each record's
/// `smp` is the CPU count the figure was taken with.
pub const PER_SMP: &str = "mutex.contended.throughput";

/// The extra boots (their CPU counts, ascending) `bench --smp smp --filter filter` makes for
/// [`PER_SMP`]: 1..smp if the filter selects it (a substring of its name, or no filter).
pub fn sweep_smps(smp: u32, filter: Option<&str>) -> Vec<u32> {
    if filter.is_some_and(|f| !PER_SMP.contains(f)) {
        return Vec::new();
    }
    (1..smp).collect()
}

/// The records of the main boot with the sweep boots' [`PER_SMP`] records put in front of
/// its own (so that benchmark's rows come together, by CPU count); appended if the main boot
/// has none.
pub fn merge(main: Vec<Record>, sweep: Vec<Record>) -> Vec<Record> {
    let sweep: Vec<Record> = sweep.into_iter().filter(|r| r.bench == PER_SMP).collect();
    let at = main.iter().position(|r| r.bench == PER_SMP).unwrap_or(main.len());
    let mut out = main;
    out.splice(at..at, sweep);
    out
}

/// The `accel` label of the records: `tcg-icount` or `kvm`.
pub fn accel_label(accel: Accel) -> &'static str {
    match accel {
        Accel::Tcg => "tcg-icount",
        Accel::Kvm => "kvm",
    }
}

/// What the guest TSC counts under `accel` (the kernel's `bench.unit=`).
pub fn unit(accel: Accel) -> &'static str {
    match accel {
        Accel::Tcg => "instructions",
        Accel::Kvm => "cycles",
    }
}

/// A benchmark boot: `run=bench` on `smp` CPUs with `accel` (TCG gets `-icount`), only the
/// benchmarks whose name contains `filter`, `samples` per figure (the kernel's default if
/// `None`). An empty or spaced filter is an error.
pub fn config(
    smp: u32,
    accel: Accel,
    filter: Option<&str>,
    samples: Option<u32>,
    timeout: Duration,
) -> Result<BootConfig, harness::FilterError> {
    let mut append = format!("run=bench bench.unit={}", unit(accel));
    if let Some(f) = filter {
        if f.is_empty() || f.contains(char::is_whitespace) {
            return Err(harness::FilterError { what: "bench", filter: f.to_string() });
        }
        append = qemu::join_cmdline(&append, &format!("bench.filter={f}"));
    }
    if let Some(n) = samples {
        append = qemu::join_cmdline(&append, &format!("bench.samples={n}"));
    }
    let extra_args = match accel {
        Accel::Tcg => vec!["-icount".to_string(), ICOUNT.to_string()],
        Accel::Kvm => Vec::new(),
    };
    Ok(BootConfig { smp, accel: Some(accel), append, extra_args, timeout, input: Default::default() })
}

/// One figure, as written to the JSON Lines file (field order is the format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    pub bench: String,
    /// The interrupt dispatch model the figure was taken under (the `@@ bench` line's
    /// `model=`), `-` where it does not apply.
    pub model: String,
    pub smp: u32,
    pub accel: String,
    pub unit: String,
    pub samples: u64,
    pub median: u64,
    pub p99: u64,
    pub min: u64,
    /// The configuration the boot took the figure in: its `@@ bench-config` words joined by
    /// spaces (e.g. [`DEFAULT_CONFIG`]), `-` if the boot printed none.
    pub config: String,
}

/// The `config` of figures printed after a `@@ bench-config` line with `pairs`.
pub fn config_words(pairs: &[(String, String)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

/// The figures of a benchmark boot, in the order the kernel printed them, each with the
/// configuration of the latest `@@ bench-config` line before it.
pub fn records(report: &BootReport) -> Vec<Record> {
    let mut config = String::from("-");
    report
        .events
        .iter()
        .filter_map(|e| match e {
            Event::BenchConfig(pairs) => {
                config = config_words(pairs);
                None
            }
            Event::Bench { name, unit, samples, median, p99, min, model } => Some(Record {
                bench: name.clone(),
                model: model.clone().unwrap_or_else(|| "-".into()),
                smp: report.config.smp,
                accel: accel_label(report.accel).into(),
                unit: unit.clone(),
                samples: *samples,
                median: *median,
                p99: *p99,
                min: *min,
                config: config.clone(),
            }),
            _ => None,
        })
        .collect()
}

/// Why a benchmark boot failed (panic, hang, bad exit, no `@@ bench-done`), or `None`.
pub fn problem(report: &BootReport) -> Option<String> {
    if let Some(p) = harness::boot_problem(report, Goal::Exit) {
        return Some(p);
    }
    (!report.events.contains(&Event::BenchDone))
        .then(|| format!("qemu exited with status {} without `@@ bench-done`", qemu::EXIT_SUCCESS))
}

/// [`problem`] as a full report (panic, backtrace, serial tail), or `None`.
pub fn failure(report: &BootReport) -> Option<String> {
    let p = problem(report)?;
    Some(harness::boot_failure(report, Goal::Exit).unwrap_or_else(|| {
        let mut s = format!("[smp {}] bench boot failed: {p}\n", report.config.smp);
        for line in report.serial_tail(harness::TAIL_LINES) {
            s.push_str(&format!("      | {line}\n"));
        }
        s
    }))
}

/// The benchmark whose figure is a cost per interrupt (instructions per interrupt, one
/// figure per model): its rate relative to `direct` is the inverse of [`vs_direct`].
pub const RATE: &str = "intr.rate";

/// [`RATE`] with a handler body of exactly 1,000 instructions.
pub const RATE_BODY1000: &str = "intr.rate.body1000";

/// The figures whose rate relative to `direct` the host reports ([`rate_vs_direct`]).
pub const RATES: [&str; 2] = [RATE, RATE_BODY1000];

/// The figures with one sample per batch of interrupts (`bench.samples / 1000` samples),
/// not one per event.
pub const PER_BATCH: [&str; 3] = [RATE, RATE_BODY1000, "intr.pinned_round_trip"];

/// `r`'s median over the median of the `direct` figure of the same benchmark and CPU count
/// (a cost ratio: 1.0 is as costly as `direct`); `None` without a `direct` figure, or for
/// figures that have no model.
pub fn vs_direct(records: &[Record], r: &Record) -> Option<f64> {
    if r.model == "-" {
        return None;
    }
    let d = records.iter().find(|d| d.bench == r.bench && d.smp == r.smp && d.model == "direct")?;
    (d.median > 0).then(|| r.median as f64 / d.median as f64)
}

/// The sustained interrupt rate of each model relative to `direct` (the figures of `bench`,
/// one of [`RATES`]: direct's instructions per interrupt over the model's), as
/// `(model, smp, ratio)`.
pub fn rate_vs_direct(records: &[Record], bench: &str) -> Vec<(String, u32, f64)> {
    records
        .iter()
        .filter(|r| r.bench == bench && r.model != "-" && r.median > 0)
        .filter_map(|r| {
            let d = records.iter().find(|d| d.bench == bench && d.smp == r.smp && d.model == "direct")?;
            Some((r.model.clone(), r.smp, d.median as f64 / r.median as f64))
        })
        .collect()
}

/// The figures as an aligned table: name, model, smp, median, p99, min, samples, the median
/// relative to the `direct` model's ([`vs_direct`], `-` where there is none), and the
/// configuration (`config`, its words joined by commas so the column is one word).
pub fn table(records: &[Record]) -> String {
    let rows: Vec<Vec<(String, String)>> = records
        .iter()
        .map(|r| {
            vec![
                ("name".into(), r.bench.clone()),
                ("model".into(), r.model.clone()),
                ("smp".into(), r.smp.to_string()),
                ("median".into(), r.median.to_string()),
                ("p99".into(), r.p99.to_string()),
                ("min".into(), r.min.to_string()),
                ("samples".into(), r.samples.to_string()),
                ("vs_direct".into(), vs_direct(records, r).map_or("-".into(), |x| format!("{x:.2}"))),
                ("config".into(), r.config.replace(' ', ",")),
            ]
        })
        .collect();
    let refs: Vec<&[(String, String)]> = rows.iter().map(Vec::as_slice).collect();
    harness::results_table(&refs)
}

/// serde_json's compact output with a space after `,` and `:` — the documented look.
struct Spaced;

impl serde_json::ser::Formatter for Spaced {
    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
}

/// One record as one JSON line (without the newline).
pub fn json_line(r: &Record) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Spaced);
    r.serialize(&mut ser).expect("a record serializes");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// Writes `records` as JSON Lines to `w`.
pub fn write_json_lines(mut w: impl Write, records: &[Record]) -> io::Result<()> {
    for r in records {
        writeln!(w, "{}", json_line(r))?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> Record {
        Record {
            bench: "mutex.adaptive.enter_exit".into(),
            model: "-".into(),
            smp: 1,
            accel: "tcg-icount".into(),
            unit: "instructions".into(),
            samples: 100000,
            median: 9,
            p99: 11,
            min: 9,
            config: DEFAULT_CONFIG.into(),
        }
    }

    #[test]
    fn json_line_is_the_documented_format() {
        assert_eq!(
            json_line(&rec()),
            r#"{"bench": "mutex.adaptive.enter_exit", "model": "-", "smp": 1, "accel": "tcg-icount", "unit": "instructions", "samples": 100000, "median": 9, "p99": 11, "min": 9, "config": "lockstat=off lockcheck=off"}"#
        );
        let back: serde_json::Value = serde_json::from_str(&json_line(&rec())).unwrap();
        assert_eq!(back["p99"], 11);
        assert_eq!(back["accel"], "tcg-icount");
    }

    #[test]
    fn json_lines_one_per_record() {
        let mut out = Vec::new();
        let mut r2 = rec();
        r2.bench = "a \"quoted\" name".into();
        write_json_lines(&mut out, &[rec(), r2]).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(text.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(v["bench"], "a \"quoted\" name");
    }

    #[test]
    fn tcg_counts_instructions_with_icount() {
        let c = config(1, Accel::Tcg, Some("baseline."), Some(2000), Duration::from_secs(9)).unwrap();
        assert_eq!(c.append, "run=bench bench.unit=instructions bench.filter=baseline. bench.samples=2000");
        assert_eq!(c.extra_args, ["-icount", ICOUNT]);
        assert_eq!((c.smp, c.accel, c.timeout), (1, Some(Accel::Tcg), Duration::from_secs(9)));
        let c = config(2, Accel::Kvm, None, None, Duration::from_secs(9)).unwrap();
        assert_eq!(c.append, "run=bench bench.unit=cycles");
        assert!(c.extra_args.is_empty());
        assert_eq!((accel_label(Accel::Tcg), accel_label(Accel::Kvm)), ("tcg-icount", "kvm"));
        assert!(config(1, Accel::Tcg, Some("a b"), None, Duration::ZERO).is_err());
        assert!(config(1, Accel::Tcg, Some(""), None, Duration::ZERO).is_err());
    }

    #[test]
    fn table_has_the_columns() {
        let t = table(&[rec()]);
        let mut lines = t.lines();
        let head: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(head, ["name", "model", "smp", "median", "p99", "min", "samples", "vs_direct", "config"]);
        let row: Vec<&str> = lines.nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            [
                "mutex.adaptive.enter_exit",
                "-",
                "1",
                "9",
                "11",
                "9",
                "100000",
                "-",
                "lockstat=off,lockcheck=off"
            ]
        );
        assert_eq!(table(&[]), "");
    }

    #[test]
    fn per_model_figures_compare_with_direct() {
        let r = |bench: &str, model: &str, smp: u32, median: u64| Record {
            bench: bench.into(),
            model: model.into(),
            smp,
            median,
            ..rec()
        };
        let recs = vec![
            r("intr.latency", "direct", 1, 200),
            r("intr.latency", "pinned", 1, 300),
            r(RATE, "direct", 1, 900),
            r(RATE, "pinned", 1, 1000),
            r(RATE, "pool", 2, 1000), // no direct figure on 2 CPUs
            rec(),
        ];
        assert_eq!(vs_direct(&recs, &recs[0]), Some(1.0));
        assert_eq!(vs_direct(&recs, &recs[1]), Some(1.5));
        assert_eq!(vs_direct(&recs, &recs[4]), None);
        assert_eq!(vs_direct(&recs, &recs[5]), None);
        assert_eq!(
            rate_vs_direct(&recs, RATE),
            [("direct".to_string(), 1, 1.0), ("pinned".to_string(), 1, 0.9)]
        );
        assert!(rate_vs_direct(&recs, RATE_BODY1000).is_empty());
        let t = table(&recs);
        let pinned: Vec<&str> = t.lines().nth(3).unwrap().split_whitespace().collect();
        assert_eq!((pinned[0], pinned[1], pinned[7]), ("intr.latency", "pinned", "1.50"));
    }

    #[test]
    fn sweep_covers_the_smaller_cpu_counts_when_selected() {
        assert_eq!(sweep_smps(4, None), [1, 2, 3]);
        assert_eq!(sweep_smps(2, Some("contended")), [1]);
        assert_eq!(sweep_smps(4, Some("mutex.")), [1, 2, 3]);
        assert!(sweep_smps(1, None).is_empty());
        assert!(sweep_smps(4, Some("baseline.")).is_empty());
        assert!(sweep_smps(4, Some("mutex.adaptive")).is_empty());
    }

    #[test]
    fn merge_puts_the_sweep_before_the_main_boots_figure() {
        let r = |bench: &str, smp: u32| Record { bench: bench.into(), smp, ..rec() };
        let main = vec![r("baseline.empty", 4), r(PER_SMP, 4), r("spl.raise_lower", 4)];
        let sweep = vec![r("baseline.empty", 1), r(PER_SMP, 1), r("baseline.empty", 2), r(PER_SMP, 2)];
        let got: Vec<(String, u32)> = merge(main, sweep).into_iter().map(|r| (r.bench, r.smp)).collect();
        let want = [("baseline.empty", 4), (PER_SMP, 1), (PER_SMP, 2), (PER_SMP, 4), ("spl.raise_lower", 4)];
        assert_eq!(got, want.map(|(b, s)| (b.to_string(), s)));
        // The main boot lost it (failed): the sweep's figures are appended.
        let got = merge(vec![r("baseline.empty", 2)], vec![r(PER_SMP, 1)]);
        assert_eq!(got.iter().map(|r| r.smp).collect::<Vec<_>>(), [2, 1]);
    }
}
