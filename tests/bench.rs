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
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = bench::config(1, Accel::Tcg, filter, Some(SAMPLES), TIMEOUT).unwrap();
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
        assert_eq!(r.samples, u64::from(SAMPLES), "{r:?}");
        assert_eq!(
            (r.unit.as_str(), r.accel.as_str(), r.smp, r.model.as_str()),
            ("instructions", "tcg-icount", 1, "-")
        );
        assert!(r.min <= r.median && r.median <= r.p99, "{r:?}");
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
