//! Boots the benchmark suite (`run=bench`) under TCG with `-icount` and checks the figures
//! come back, parse, and are deterministic.

use std::time::Duration;

use ithreads::bench::{self, Record};
use ithreads::qemu::{self, Accel, BootReport};

const TIMEOUT: Duration = Duration::from_secs(120);
/// Few samples: the figures under icount do not depend on the count, and a boot takes ~1 s.
const SAMPLES: u32 = 2000;

/// One boot at a time: each is a single vCPU, but two at once on a two-core host would make
/// the test's wall time, not its figures, vary (icount figures do not depend on host load).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn boot(filter: Option<&str>) -> (BootReport, Vec<Record>) {
    boot_smp(1, filter)
}

fn boot_smp(smp: u32, filter: Option<&str>) -> (BootReport, Vec<Record>) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = bench::config(smp, Accel::Tcg, filter, Some(SAMPLES), TIMEOUT).unwrap();
    let r = qemu::boot(&cfg).unwrap_or_else(|e| panic!("could not boot: {e}"));
    if let Some(f) = bench::failure(&r) {
        panic!("bench boot failed:\n{f}");
    }
    assert!(r.exited_success(), "{}", r.outcome);
    let recs = bench::records(&r);
    (r, recs)
}

fn find<'a>(recs: &'a [Record], name: &str) -> &'a Record {
    recs.iter().find(|r| r.bench == name).unwrap_or_else(|| panic!("no figure for {name}: {recs:#?}"))
}

#[test]
fn baselines_are_reported_and_deterministic() {
    let (_, first) = boot(None);
    let empty = find(&first, "baseline.empty");
    assert!(empty.median > 0, "the loop itself costs something: {empty:?}");
    let pair = find(&first, "baseline.lock_cmpxchg_pair");
    assert!(pair.median > 0, "{pair:?}");
    let cli = find(&first, "baseline.cli_spinlock.enter_exit");
    assert!(cli.median > pair.median / 2, "{cli:?} vs {pair:?}");
    for r in &first {
        // The storm figures are the runs of the storm tests, in guest time, with their own
        // trial counts and units (kernel/src/bench/storm.rs).
        let storm = r.bench.starts_with("storm.");
        // `mutex.contended.throughput` takes one sample per repetition, whatever the count;
        // `intr.rate` and its kin one per batch of interrupts.
        if r.bench != bench::PER_SMP && !bench::PER_BATCH.contains(&r.bench.as_str()) && !storm {
            assert_eq!(r.samples, u64::from(SAMPLES), "{r:?}");
        }
        // Only the interrupt and storm benchmarks have a dispatch model.
        let model = if r.bench.starts_with("intr.") || storm { r.model.as_str() } else { "-" };
        let unit = if storm { r.unit.as_str() } else { "instructions" };
        assert_eq!(
            (r.unit.as_str(), r.accel.as_str(), r.smp, r.model.as_str()),
            (unit, "tcg-icount", 1, model)
        );
        if storm {
            assert!(["ns", "storms", "interrupts_per_s"].contains(&r.unit.as_str()), "{r:?}");
            assert!(r.samples > 0, "{r:?}");
        }
        assert!(r.min <= r.median && r.median <= r.p99, "{r:?}");
        // Taken in the configuration a default boot runs (lock statistics and checking off).
        assert_eq!(r.config, bench::DEFAULT_CONFIG, "{r:?}");
    }
    // `-icount shift=0,align=off,sleep=off` makes a run a function of its inputs: a second
    // boot gives the same figures — median, p99 and min — for every benchmark.
    let (_, second) = boot(None);
    let baselines =
        |v: &[Record]| v.iter().filter(|r| r.bench.starts_with("baseline.")).cloned().collect::<Vec<_>>();
    assert_eq!(baselines(&first), baselines(&second), "two icount boots disagree");
}

#[test]
fn filter_selects() {
    let (_, recs) = boot(Some("cmpxchg"));
    let names: Vec<&str> = recs.iter().map(|r| r.bench.as_str()).collect();
    assert_eq!(names, ["baseline.lock_cmpxchg_pair"]);
    // Net of the empty loop even though `baseline.empty` itself was filtered out.
    assert!(recs[0].median < 20, "{:?}", recs[0]);
}

#[test]
fn lock_and_spl_benchmarks_are_reported() {
    let (r, recs) = boot(Some("."));
    for name in [
        "spl.raise_lower",
        "mutex.adaptive.enter_exit",
        "mutex.spin.enter_exit",
        "rwlock.read.enter_exit",
        "rwlock.write.enter_exit",
        "mutex.contended.throughput",
    ] {
        let f = find(&recs, name);
        assert!(f.median > 0 && f.min <= f.median && f.median <= f.p99, "{f:?}");
    }
    // One CPU: no hand-off figure, a line saying why.
    assert!(recs.iter().all(|r| r.bench != "mutex.handoff"), "{recs:#?}");
    assert!(r.serial_log.iter().any(|l| l.contains("mutex.handoff took no samples here (skipped)")));
    let tput = find(&recs, bench::PER_SMP);
    assert_eq!((tput.smp, tput.samples), (1, 9), "{tput:?}");
}

#[test]
fn two_cpu_benchmarks_run_on_two_cpus() {
    let (_, recs) = boot_smp(2, Some("mutex."));
    let handoff = find(&recs, "mutex.handoff");
    assert_eq!((handoff.smp, handoff.samples), (2, u64::from(SAMPLES)), "{handoff:?}");
    assert!(handoff.median > 0, "{handoff:?}");
    let tput = find(&recs, bench::PER_SMP);
    assert_eq!((tput.smp, tput.samples), (2, 9), "{tput:?}");
    assert!(tput.median > 0, "{tput:?}");
}

#[test]
fn interrupt_benchmarks_report_every_model() {
    let (_, recs) = boot(Some("intr."));
    let fig = |name: &str, model: &str| {
        recs.iter()
            .find(|r| r.bench == name && r.model == model)
            .unwrap_or_else(|| panic!("no {name} figure for {model}: {recs:#?}"))
            .clone()
    };
    let models = ["direct", "dedicated", "pool", "pinned"];
    for m in models {
        let lat = fig("intr.latency", m);
        assert_eq!(lat.samples, u64::from(SAMPLES), "{lat:?}");
        let rate = fig(bench::RATE, m);
        assert_eq!(rate.samples, 2, "{SAMPLES} samples are 2 batches of 1000 interrupts: {rate:?}");
        // A round trip costs more than the way in.
        assert!(lat.median > 0 && rate.median > lat.median, "{lat:?} {rate:?}");
        if m != "direct" {
            let direct = fig("intr.latency", "direct");
            assert!(lat.median > direct.median, "{m} is not dearer than direct: {lat:?} {direct:?}");
            assert!(fig("intr.block_switch", m).median > lat.median, "{m}: blocking costs nothing?");
        }
    }
    assert!(
        recs.iter().all(|r| !r.bench.starts_with("intr.block_switch") || r.model != "direct"),
        "{recs:#?}"
    );
    // Under icount both latencies are steady: the paired difference is the difference.
    let added = fig("intr.switch_added", "pinned");
    assert_eq!(added.median, fig("intr.latency", "pinned").median - fig("intr.latency", "direct").median);
    // The same for whole round trips.
    let round_trip = fig("intr.pinned_round_trip", "pinned");
    let rate_diff = fig(bench::RATE, "pinned").median as i64 - fig(bench::RATE, "direct").median as i64;
    assert!((round_trip.median as i64 - rate_diff).abs() <= 5, "{round_trip:?} vs {rate_diff}");
    for m in models {
        // A handler body of 1,000 instructions adds 1,000 instructions per interrupt.
        let extra = fig("intr.rate.body1000", m).median as i64 - fig(bench::RATE, m).median as i64;
        assert!((950..=1050).contains(&extra), "{m}: body1000 adds {extra}");
        if m == "direct" {
            continue;
        }
        // The parts of a blocking interrupt add up to the whole (medians of one probed pass
        // against the unprobed pass: within a tenth).
        let whole = fig("intr.block_switch", m).median;
        let parts: u64 = ["dispatch", "enter_fail", "turnstile", "switch"]
            .iter()
            .map(|p| fig(&format!("intr.block_switch.{p}"), m).median)
            .inspect(|&x| assert!(x > 0, "{m}: a part of intr.block_switch is 0"))
            .sum();
        assert!(parts.abs_diff(whole) <= whole / 10, "{m}: parts {parts} vs whole {whole}");
    }
    // Each (name, model) once: latency, rate, rate.body1000 per model; block_switch and its
    // four parts per blocking model; switch_added and pinned_round_trip.
    let mut pairs: Vec<(&str, &str)> = recs.iter().map(|r| (r.bench.as_str(), r.model.as_str())).collect();
    pairs.sort_unstable();
    pairs.dedup();
    assert_eq!(pairs.len(), recs.len(), "a (name, model) pair twice: {recs:#?}");
    assert_eq!(recs.len(), 4 + 4 + 4 + 3 * 5 + 1 + 1, "{recs:#?}");
}

#[test]
fn scheduler_and_soft_interrupt_benchmarks_are_reported() {
    let (_, sched) = boot(Some("sched."));
    let (_, soft) = boot(Some("softint."));
    let mut names: Vec<&str> = sched.iter().chain(&soft).map(|r| r.bench.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["sched.switch", "sched.wakeup_switch", "softint.latency"], "{names:?}");
    for r in sched.iter().chain(&soft) {
        assert_eq!((r.model.as_str(), r.samples), ("-", u64::from(SAMPLES)), "{r:?}");
        assert!(r.median > 0 && r.min <= r.median && r.median <= r.p99, "{r:?}");
    }
    // A wake-up from an interrupt and the switch to the woken thread cost more than the
    // switch alone (half a yield round trip).
    let (switch, wakeup) = (find(&sched, "sched.switch"), find(&sched, "sched.wakeup_switch"));
    assert!(wakeup.median > switch.median, "{wakeup:?} vs {switch:?}");
}
