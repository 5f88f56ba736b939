//! `ithreads --compare --out DIR`, shortened (two small cost boots per model, short rt
//! phases, one benchmark): it exits 0 and writes the report by claim — `README.md` with a
//! section per seed claim and the `instructions per frame` row, `rt-latency.svg`, and a
//! trace per model that parses as trace-event JSON with one track per CPU — and two cost
//! boots of the same model agree within 5 % on instructions per frame.

use std::collections::HashMap;
use std::process::Command;

use serde_json::Value;

#[test]
fn compare_writes_the_report_by_claim_and_two_runs_agree() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let run = Command::new(env!("CARGO_BIN_EXE_ithreads"))
        .args([
            "--compare",
            "--cost-runs",
            "2",
            "--cost-frames",
            "2000",
            "--rt-seconds",
            "0.05",
            "--bench-filter",
            "intr.switch_added",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let text = format!(
        "{}\n--- stderr:\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "compare failed:\n{text}");

    // Per model, its cost boots' instructions per frame: within 5 % of each other.
    let mut per_frame: HashMap<String, Vec<f64>> = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("cost: ") else { continue };
        let Some((model, after)) = rest.split_once(" run ") else { continue };
        let Some(n) = after.split_whitespace().nth(1).and_then(|w| w.parse::<f64>().ok()) else { continue };
        per_frame.entry(model.to_string()).or_default().push(n);
    }
    for model in ["direct", "dedicated", "pool", "pinned"] {
        let v = per_frame.get(model).unwrap_or_else(|| panic!("no cost runs for {model}:\n{text}"));
        assert_eq!(v.len(), 2, "{model}: {v:?}");
        let (lo, hi) = (v[0].min(v[1]), v[0].max(v[1]));
        assert!(
            lo > 1000.0 && (hi - lo) / lo <= 0.05,
            "{model}: instructions per frame {v:?} differ by more than 5 %"
        );
    }

    let readme = std::fs::read_to_string(out.join("README.md")).expect("README.md");
    for section in
        ["## Doran", "(seed 001", "## Thorpe", "(seed 004", "## Baldwin", "(seed 003", "## Eykholt"]
    {
        assert!(readme.contains(section), "README.md has no {section:?}:\n{readme}");
    }
    for claim in [
        "29 instructions",
        "Pool size",
        "Divorce and migration",
        "Downside 1",
        "Downside 2",
        "Storm detection",
        "about 40",
        "about 12",
    ] {
        assert!(readme.contains(claim), "README.md does not name {claim:?}");
    }
    let row = readme
        .lines()
        .find(|l| l.starts_with("| instructions per frame |"))
        .unwrap_or_else(|| panic!("no `instructions per frame` row:\n{readme}"));
    assert_eq!(row.matches('|').count(), 6, "one column per model: {row}");
    let head = readme.lines().find(|l| l.starts_with("| figure |")).expect("the headline's heading");
    assert_eq!(head, "| figure | direct | dedicated | pool | pinned |");

    let svg = std::fs::read_to_string(out.join("rt-latency.svg")).expect("rt-latency.svg");
    assert!(svg.contains("<svg") && svg.contains("pool flood"), "rt-latency.svg");
    assert!(out.join("instructions-per-frame.svg").exists());

    for model in ["direct", "dedicated", "pool", "pinned"] {
        let path = out.join(format!("trace-{model}.json"));
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("trace file"))
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
        let events = doc["traceEvents"].as_array().expect("traceEvents");
        let cpus =
            events.iter().filter(|e| e["ph"] == "M" && e["name"] == "thread_name" && e["pid"] == 1).count();
        assert_eq!(cpus, 4, "{model}: one track per CPU of the main job's 4");
        assert!(readme.contains(&format!("trace-{model}.json")), "the README links the trace");
    }
}
