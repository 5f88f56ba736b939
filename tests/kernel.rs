//! Boots the real kernel in QEMU (building it first, once per test binary).

use std::time::Duration;

use ithreads::harness::{self, judge_suite_boot};
use ithreads::protocol::Event;
use ithreads::qemu::{self, BootConfig, BootReport, Outcome};

const TIMEOUT: Duration = Duration::from_secs(120);

fn cfg(smp: u32, append: &str) -> BootConfig {
    BootConfig::new(smp, append).with_timeout(TIMEOUT)
}

/// Boots one at a time: the in-kernel tests check scheduling behaviour (preemption within a
/// time slice, fair shares), and several QEMUs fighting for two host cores would starve
/// their vCPUs. The hang test (an idle guest) does not take the lock.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn boot(cfg: &BootConfig) -> BootReport {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    boot_unserialized(cfg)
}

fn boot_unserialized(cfg: &BootConfig) -> BootReport {
    qemu::boot(cfg).unwrap_or_else(|e| panic!("could not boot: {e}"))
}

fn tail(r: &BootReport) -> String {
    harness::report_tail(r, harness::TAIL_LINES)
}

fn suite(smp: u32) {
    let r = boot(&cfg(smp, "run=tests"));
    let v = judge_suite_boot(&r);
    let why = format!("{}\n{}", v.failure_text(), tail(&r));
    assert_eq!(r.exit_code(), Some(qemu::EXIT_SUCCESS), "{why}");
    assert!(r.tests_done().is_some(), "no `@@ tests-done`\n{why}");
    assert_eq!(v.failed(), 0, "{why}");
    assert!(v.passed() >= 1, "no test passed\n{why}");
}

#[test]
fn suite_smp1() {
    suite(1);
}

#[test]
fn suite_smp2() {
    suite(2);
}

#[test]
fn suite_smp4() {
    suite(4);
}

#[test]
fn harness_reports_panic() {
    let r = boot(&cfg(2, "test.harness=panic"));
    let why = tail(&r);
    assert_eq!(r.outcome, Outcome::Exited { code: 35 }, "{why}");
    let (_, msg) = r.panic().unwrap_or_else(|| panic!("no `@@ panic`\n{why}"));
    assert!(msg.contains("deliberate panic"), "{msg}\n{why}");
    let v = judge_suite_boot(&r);
    assert!(v.is_failure(), "{why}");
    let text = v.failure_text();
    assert!(text.contains("deliberate panic"), "{text}");
    // The backtrace is symbolized from the kernel ELF (the addr2line crate): a kernel
    // function with its file and line.
    assert!(text.contains("ithreads_kernel::main_thread"), "{text}");
    assert!(text.contains("kernel/src/main.rs:"), "{text}");
}

#[test]
fn harness_reports_hang() {
    let r = boot_unserialized(&cfg(2, "test.harness=hang").with_timeout(Duration::from_secs(20)));
    let why = tail(&r);
    assert!(matches!(r.outcome, Outcome::Hang { .. }), "expected a hang\n{why}");
    let v = judge_suite_boot(&r);
    assert!(v.is_failure(), "{why}");
    assert!(v.failure_text().contains("hang"), "{}", v.failure_text());
}

#[test]
fn unknown_cmdline_option_is_rejected() {
    let r = boot(&cfg(1, "bogus.option=1"));
    let why = tail(&r);
    assert_eq!(r.exit_code(), Some(qemu::EXIT_FAILURE), "{why}");
    assert!(
        r.events.iter().any(|e| matches!(e, Event::CmdlineError { option, .. } if option == "bogus.option")),
        "no `@@ cmdline-error option=bogus.option`\n{why}"
    );
}

#[test]
fn scenario_runs() {
    let r = boot(&cfg(4, "run=scenario scenario.ms=500"));
    let why = tail(&r);
    assert_eq!(r.exit_code(), Some(qemu::EXIT_SUCCESS), "{why}");
    assert!(r.scenario_done(), "no `@@ scenario-done`\n{why}");
}

#[test]
fn sleeping_filter_is_diagnosed_by_name() {
    let r = boot(&cfg(1, "test.harness=filter-sleep"));
    let why = tail(&r);
    assert_eq!(r.outcome, Outcome::Exited { code: 35 }, "{why}");
    let (_, msg) = r.panic().unwrap_or_else(|| panic!("no `@@ panic`\n{why}"));
    assert!(msg.contains("harness.sleepy-filter") && msg.contains("filter"), "{msg}\n{why}");
}
