//! A short torture run (`run=torture`, kernel/src/torture/mod.rs) under TCG `-icount`: each
//! model for one guest second on 2 CPUs with guest-only sources must end with no violation
//! and exact counts, and one of them booted again must print the same totals and hash; one
//! model with the host-driven sources too (NIC, disk, COM1 input). Nothing here depends on
//! wall time: the boots' timeouts are generous, for a loaded two-core machine.

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
    // The LAPIC timer: one expiry outstanding per CPU at the end, and clock interrupts.
    let timer = line(&report.serial_log, "@@ torture-timer ");
    assert_eq!(num(timer, "outstanding"), 2, "{timer}");
    assert!(s.timer_delivered > 0 && s.timer_delivered == num(timer, "delivered"), "{timer}");
    // COM2's stuck line: injected, each storm caught and recovered, nothing run while throttled.
    let com2 = line(&report.serial_log, "@@ torture-com2 ");
    assert!(num(com2, "injections") > 0, "{com2}");
    assert!(num(com2, "storms") >= num(com2, "injections"), "{com2}");
    assert_eq!(num(com2, "recovered"), num(com2, "injections"), "{com2}");
    assert_eq!(num(com2, "runs_throttled"), 0, "{com2}");
    s
}

fn line<'a>(log: &'a [String], prefix: &str) -> &'a str {
    log.iter().find_map(|l| l.strip_prefix(prefix)).unwrap_or_else(|| panic!("no {prefix:?} line"))
}

fn num(line: &str, key: &str) -> u64 {
    torture::field(line, key).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no {key} in {line}"))
}

/// `direct` and `pool`: no violation, and the exact accounting (`run`). The models are split
/// over the tests so that the harness runs their boots side by side.
#[test]
fn torture_direct_and_pool_have_no_violation() {
    run(Model::Direct);
    run(Model::Pool);
}

/// `pinned`: as above.
#[test]
fn torture_pinned_has_no_violation() {
    run(Model::Pinned);
}

/// `dedicated` (the model whose two runs once differed in CI,
/// docs/logs/torture-two-runs-differ-2026-12-05.txt) twice on 2 vCPUs, while the other tests'
/// boots load the host: no violation, and the same totals and delivery hash. README
/// ("Torture", determinism) says what was tried to make two runs differ; if this fails, keep
/// the log.
#[test]
fn torture_dedicated_twice_gives_the_same_run() {
    let first = run(Model::Dedicated);
    let again = run(Model::Dedicated);
    assert_eq!(first, again, "dedicated: seed {SEED} on 2 vCPUs gave two different runs");
}

/// The host-driven sources (`--sources all`, kernel/src/torture/host.rs) under `pool` for one
/// guest second on 2 CPUs: no violation, every NIC frame the host sent in a finished batch
/// received once, disk requests completed and verified, COM1 lines verified in order, and
/// each source interrupted.
#[test]
fn torture_with_host_sources_has_no_violation() {
    let model = Model::Pool;
    let (cfg, host) = torture::config_with_host(2, model, 1, SEED, TIMEOUT).expect("host devices");
    let report = qemu::boot(&cfg).unwrap_or_else(|e| panic!("could not boot: {e}"));
    let r = torture::judge(model, &report);
    let tail: Vec<&String> = report.serial_log.iter().rev().take(30).collect();
    assert_eq!(r.violations, 0, "{:?}; last lines: {tail:#?}", r.boot_failure);
    let sent = host.sent();
    for name in ["nic", "disk", "com1"] {
        let line = report
            .serial_log
            .iter()
            .filter_map(|l| torture::host_source(l))
            .find(|l| torture::field(l, "name") == Some(name))
            .unwrap_or_else(|| panic!("no torture-host-source line for {name}: {tail:#?}"));
        let num = |k: &str| torture::field(line, k).and_then(|v| v.parse::<u64>().ok()).expect(k);
        assert!(num("delivered") > 0 && num("interrupts") > 0, "{name}: {line}");
        // Every NIC batch and COM1 burst asked for is read to its end before the run stops.
        assert_eq!(num("delivered"), num("raised"), "{name}: {line}");
        if name == "nic" {
            assert!(num("raised") <= sent.frames_sent, "{line}; host sent {}", sent.frames_sent);
        }
        if name == "com1" {
            // Bursts of 1 to 4 lines, each typed by the host on request.
            assert!(num("batches") > 0 && num("raised") <= 4 * num("batches"), "{line}");
            assert_eq!(num("raised"), sent.serial_lines_sent, "{line}: the host typed what was asked");
        }
    }
    assert!(r.summary.expect("a summary").host_interrupts > 0);
}

/// Eight CPUs with the host-driven sources under `pinned`, the configuration whose CPU 0
/// reported heartbeats (docs/logs/torture-com1-paste-cpu0-2026-12-06.txt): COM1's paste,
/// typed at the emulator's speed, kept CPU 0 in COM1's filter with interrupts off. The
/// regression test of its fix (COM1 in bursts, the filter's time budget): no violation, and
/// the monitor on CPU 0 never kept from its CPU for 100 ms (the tree before the fix gave 5
/// and 6 such reports in two 2-second runs of seeds 3 and 1).
#[test]
fn torture_eight_cpus_with_host_sources_keep_cpu0_free() {
    let model = Model::Pinned;
    let (cfg, _host) = torture::config_with_host(8, model, 2, 3, TIMEOUT).expect("host devices");
    let report = qemu::boot(&cfg).unwrap_or_else(|e| panic!("could not boot: {e}"));
    let r = torture::judge(model, &report);
    let tail: Vec<&String> = report.serial_log.iter().rev().take(40).collect();
    assert_eq!(r.violations, 0, "{:?}; last lines: {tail:#?}", r.boot_failure);
    // The reports themselves (a kernel of before the count printed them too), and the count.
    let idle: Vec<&String> = report
        .serial_log
        .iter()
        .filter(|l| l.starts_with("@@ torture-heartbeat") && l.contains("monitor_idle_ms="))
        .collect();
    assert!(idle.is_empty(), "the monitor's CPU was saturated: {idle:#?}");
    assert_eq!(r.summary.expect("a summary").monitor_idle, 0);
}
