//! The serial line under real input: the host pastes 64 KiB into COM1 (QEMU's stdin) and the
//! kernel's interrupt-driven receive path must deliver every line, in order, intact.

use std::io::Write;
use std::time::Duration;

use ithreads::harness;
use ithreads::protocol::Event;
use ithreads::qemu::{self, BootConfig, BootReport, SerialInput};

/// Lines pasted: 1024 × 64 bytes = 64 KiB.
const LINES: u64 = 1024;

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn tail(r: &BootReport) -> String {
    // The whole log, for a failure's post-mortem.
    let path = std::env::temp_dir().join(format!("ithreads-serial-smp{}.log", r.config.smp));
    let _ = std::fs::write(&path, r.serial_log.join("\n"));
    format!("whole log: {}\n{}", path.display(), harness::report_tail(r, harness::TAIL_LINES))
}

/// Waits for the `@@ <what>` line among the events; false if the guest ended first.
fn wait_for(events: &std::sync::mpsc::Receiver<Event>, what: &str) -> bool {
    events.iter().any(|e| matches!(&e, Event::Unknown(l) if l == what))
}

/// Types the 64 KiB paste once the guest says `@@ serial-ready`.
fn paste_input() -> SerialInput {
    SerialInput::feeder(|mut stdin, events| {
        if !wait_for(&events, "@@ serial-ready") {
            return;
        }
        let mut text = String::new();
        for seq in 0..LINES {
            text.push_str(&ithreads::workload::serial_line(seq));
        }
        text.push_str(&ithreads::workload::serial_end(LINES));
        assert_eq!(text.len() as u64, LINES * 64 + 7);
        let _ = stdin.write_all(text.as_bytes());
        let _ = stdin.flush();
        // Keep QEMU's stdin open until the guest is done.
        for _ in events.iter() {}
    })
}

fn record<'a>(r: &'a BootReport, scope: &str) -> Option<&'a [(String, String)]> {
    r.results().into_iter().find(|rec| rec.iter().any(|(k, v)| k == "scope" && v == scope))
}

fn paste(smp: u32) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut cfg = BootConfig::new(smp, "run=tests test.filter=dev::com::paste_64k")
        .with_timeout(Duration::from_secs(120));
    cfg.input = paste_input();
    let r = qemu::boot(&cfg).unwrap_or_else(|e| panic!("could not boot: {e}"));
    let why = tail(&r);
    assert_eq!(r.exit_code(), Some(qemu::EXIT_SUCCESS), "{why}");
    let rec = record(&r, "serial").unwrap_or_else(|| panic!("no serial result\n{why}"));
    let get = |key: &str| rec.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).unwrap_or("");
    assert_eq!(get("lines"), LINES.to_string(), "{why}");
    assert_eq!(get("bytes"), (LINES * 64).to_string(), "{why}");
    assert_eq!(get("bad"), "0", "{why}");
    assert_eq!(get("overruns"), "0", "{why}");
    // COM1's filter takes at most 256 bytes a call (kernel/src/drivers/com.rs `RX_BUDGET`; the
    // kernel test asserts it too).
    let most: u64 = get("max_rx_per_call").parse().unwrap_or_else(|_| panic!("no max_rx_per_call\n{why}"));
    assert!(most <= 256, "a filter call took {most} bytes\n{why}");
    let ns: u64 = get("max_rx_ns").parse().unwrap_or_else(|_| panic!("no max_rx_ns\n{why}"));
    eprintln!(
        "paste smp {smp}: max_rx_per_call {most}, max_rx_ns {ns}, budget_stops {}",
        get("budget_stops")
    );
}

#[test]
fn paste_64k_smp1() {
    paste(1);
}

#[test]
fn paste_64k_smp4() {
    paste(4);
}

/// The main job's serial part: the scenario (every CPU loaded by its threads) with the paste
/// going on; it ends early once the end line is in, every line verified.
#[test]
fn scenario_with_serial_workload() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut cfg = BootConfig::new(2, "run=scenario workload.serial=on scenario.ms=30000")
        .with_timeout(Duration::from_secs(120));
    cfg.input = paste_input();
    let r = qemu::boot(&cfg).unwrap_or_else(|e| panic!("could not boot: {e}"));
    let why = tail(&r);
    assert_eq!(r.exit_code(), Some(qemu::EXIT_SUCCESS), "{why}");
    let rec = record(&r, "workload").unwrap_or_else(|| panic!("no workload result\n{why}"));
    let get = |key: &str| rec.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).unwrap_or("");
    assert_eq!(get("serial_lines"), LINES.to_string(), "{why}");
    assert_eq!(get("serial_bad"), "0", "{why}");
    assert_eq!(get("verified"), "1", "{why}");
    let live =
        r.serial_log.iter().filter(|l| l.starts_with("@@ live kind=source") && l.contains("name=com1"));
    assert!(live.count() >= 1, "no live line for com1\n{why}");
}
