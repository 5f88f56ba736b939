//! A short torture run (`run=torture`, kernel/src/torture/mod.rs) under TCG `-icount`: each
//! model for one guest second on 2 CPUs with guest-only sources must end with no violation
//! and exact counts. Nothing here depends on wall time: the boots' timeouts are generous,
//! for a loaded two-core machine.

use std::time::Duration;

use ithreads::qemu;
use ithreads::torture::{self, Summary};
use ithreads::workload::Model;

const TIMEOUT: Duration = Duration::from_secs(600);
const SEED: u64 = 4242;

fn run(model: Model) -> Summary {
    let cfg = torture::config(2, model, 1, SEED, TIMEOUT);
    let report = qemu::boot(&cfg).unwrap_or_else(|e| panic!("could not boot: {e}"));
    let r = torture::judge(model, &report);
    let tail: Vec<&String> = report.serial_log.iter().rev().take(30).collect();
    assert_eq!(r.violations, 0, "{}: {:?}; last lines: {tail:#?}", model.as_str(), r.boot_failure);
    let s = r.summary.expect("judged without a violation: a summary");
    assert!(s.delivered > 0 && s.delivered + s.merged == s.raised, "{}: {s:?}", model.as_str());
    s
}

/// Each model once: no violation, and the exact accounting (`run`). Two runs of one seed are
/// compared by hand (`cargo run --release -- torture --smp 2 --model all --seconds 2 --sources
/// guest --seed 4242`, twice: same totals and hashes on an idle host), not here: on a loaded
/// host one CI run gave two different `dedicated` runs of the same seed
/// (docs/logs/torture-two-runs-differ-2026-12-05.txt): with several vCPUs, QEMU's
/// round-robin between them is kicked by a host-time timer, so host load reaches the run
/// (`tests/rt.rs` saw the same with no serial output during its measurement).
#[test]
fn torture_short_run_has_no_violation() {
    for model in Model::ALL {
        run(model);
    }
}
