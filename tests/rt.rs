//! `ithreads rt`: the real-time latency test boots once per model under icount and prints a
//! row per model. On one vCPU the figures are deterministic (two runs print the same row); on
//! several, QEMU's round-robin between vCPUs is kicked by a host-time timer, and two runs on
//! a loaded host can differ (a fresh-clone CI run: flood p99 3066 against 5848 on 2 vCPUs).

use std::process::Command;

fn rt(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ithreads")).arg("rt").args(args).output().unwrap();
    let text = format!(
        "{}\n--- stderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "rt failed:\n{text}");
    text
}

/// The numbers of `model`'s row: idle p50 p99 max, flood p50 p99 max, overruns, flood n.
fn row(text: &str, model: &str) -> Vec<u64> {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(model))
        .unwrap_or_else(|| panic!("no row for {model}:\n{text}"));
    line.split_whitespace().skip(1).map(|w| w.parse().unwrap_or_else(|_| panic!("{line}"))).collect()
}

#[test]
fn every_model_measures_idle_and_flood_and_a_one_cpu_rerun_agrees() {
    let text = rt(&["--model", "all", "--smp", "2", "--seconds", "0.05", "--flood", "ipi"]);
    for model in ["direct", "dedicated", "pool", "pinned"] {
        let r = row(&text, model);
        assert_eq!(r.len(), 8, "{text}");
        let (idle, flood) = (&r[0..3], &r[3..6]);
        for (phase, l) in [("idle", idle), ("flood", flood)] {
            assert!(l[0] > 0 && l[0] <= l[1] && l[1] <= l[2], "{model} {phase}: p50 <= p99 <= max\n{text}");
        }
        assert!(r[7] > 100, "{model}: the flood handled {} interrupts\n{text}", r[7]);
    }
    let one = rt(&["--model", "pool", "--smp", "1", "--seconds", "0.05", "--flood", "ipi"]);
    let again = rt(&["--model", "pool", "--smp", "1", "--seconds", "0.05", "--flood", "ipi"]);
    assert_eq!(
        row(&again, "pool"),
        row(&one, "pool"),
        "on one vCPU under icount a rerun gives the same figures (each run's \"serial flush\" line says \
         where its measurement started: docs/logs/rt-one-cpu-rerun-differs-2026-12-07.txt)\nfirst:\n{one}\nsecond:\n{again}"
    );
    assert!(one.contains("serial flush before measuring"), "{one}");
    assert!(text.contains("guest ns = instructions"), "{text}");
}
