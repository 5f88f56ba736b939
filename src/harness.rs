//! Judging boots: the in-kernel test suite, the scenario, failure reports
//! (panic message, symbolized backtrace, serial tail) and the results table.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::protocol::Event;
use crate::qemu::{self, BootConfig, BootReport, Outcome, Source, EXIT_FAILURE, EXIT_SUCCESS};

/// How many serial lines a failure report shows.
pub const TAIL_LINES: usize = 40;

/// A boot's outcome, its last `lines` serial lines and QEMU's stderr: what a failing test
/// shows.
pub fn report_tail(r: &crate::qemu::BootReport, lines: usize) -> String {
    let mut s = format!("outcome: {}\nlast serial lines:\n", r.outcome);
    for l in r.serial_tail(lines) {
        s.push_str(&format!("  | {l}\n"));
    }
    for l in &r.stderr {
        s.push_str(&format!("  qemu: {l}\n"));
    }
    s
}

/// One test's result as the kernel reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    pub smp: u32,
    pub name: String,
    pub pass: bool,
    pub ms: u64,
    pub msg: Option<String>,
}

impl std::fmt::Display for TestResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.pass { "pass" } else { "FAIL" };
        write!(f, "[smp {}] {verdict} {} ({} ms)", self.smp, self.name, self.ms)?;
        if let Some(msg) = &self.msg {
            write!(f, "\n        {msg}")?;
        }
        Ok(())
    }
}

/// The verdict on one boot of the suite.
#[derive(Debug, Clone)]
pub struct BootVerdict {
    pub smp: u32,
    /// The `@@ test` results, in order.
    pub tests: Vec<TestResult>,
    /// The `@@ tests-done` counts, if seen.
    pub tests_done: Option<(u32, u32)>,
    /// Why the boot itself failed (panic, hang, wrong exit, ...): a full
    /// report with the panic message, symbolized backtrace and serial tail.
    /// Counts as one failure on top of the failed tests.
    pub failure: Option<String>,
    /// The exit status or hang.
    pub outcome: Option<Outcome>,
}

impl BootVerdict {
    /// Tests that passed.
    pub fn passed(&self) -> usize {
        self.tests.iter().filter(|t| t.pass).count()
    }

    /// Tests that failed, plus one if the boot itself failed.
    pub fn failed(&self) -> usize {
        self.tests.iter().filter(|t| !t.pass).count() + usize::from(self.failure.is_some())
    }

    /// The failed tests.
    pub fn failed_tests(&self) -> impl Iterator<Item = &TestResult> {
        self.tests.iter().filter(|t| !t.pass)
    }

    /// Whether anything failed.
    pub fn is_failure(&self) -> bool {
        self.failed() > 0
    }

    /// Every failure as text: each failed test's message, then the boot's
    /// failure report.
    pub fn failure_text(&self) -> String {
        let mut s = String::new();
        for t in self.failed_tests() {
            let _ = writeln!(s, "{t}");
        }
        if let Some(f) = &self.failure {
            s.push_str(f);
        }
        s
    }
}

/// The verdict on one or more boots of the suite.
#[derive(Debug, Clone, Default)]
pub struct SuiteReport {
    pub boots: Vec<BootVerdict>,
}

impl SuiteReport {
    pub fn passed(&self) -> usize {
        self.boots.iter().map(BootVerdict::passed).sum()
    }

    pub fn failed(&self) -> usize {
        self.boots.iter().map(BootVerdict::failed).sum()
    }

    pub fn success(&self) -> bool {
        self.failed() == 0
    }

    /// The line `N passed, M failed`.
    pub fn totals_line(&self) -> String {
        format!("{} passed, {} failed", self.passed(), self.failed())
    }

    /// Every failure of every boot as text.
    pub fn failure_text(&self) -> String {
        self.boots.iter().map(BootVerdict::failure_text).collect()
    }
}

/// With a filter, a suite in which no test ran (none failed either) is a failure: a typo in a
/// filter must not pass. The message names the filter.
pub fn no_test_matched(report: &SuiteReport, filter: Option<&str>) -> Option<String> {
    let f = filter?;
    (report.passed() == 0 && report.failed() == 0)
        .then(|| format!("test: FAILED: no test name contains '{f}' (--filter {f} matches nothing)"))
}

/// What a boot was meant to do, for [`boot_failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// `run=tests`: exit 33 (35 if tests failed) after `@@ tests-done`.
    Tests,
    /// `run=scenario`: exit 33 after `@@ scenario-done`.
    Scenario,
    /// Anything: exit 33.
    Exit,
}

/// Judges a boot of the suite (what `ithreads test` uses for every boot).
pub fn judge_suite_boot(report: &BootReport) -> BootVerdict {
    let smp = report.config.smp;
    let tests = report
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Test { name, pass, ms, msg } => {
                Some(TestResult { smp, name: name.clone(), pass: *pass, ms: *ms, msg: msg.clone() })
            }
            _ => None,
        })
        .collect();
    BootVerdict {
        smp,
        tests,
        tests_done: report.tests_done(),
        failure: boot_failure(report, Goal::Tests),
        outcome: Some(report.outcome.clone()),
    }
}

/// Why `report` is a failed boot for `goal`, as a full report (headline,
/// panic message, symbolized backtrace, QEMU's stderr and the last
/// [`TAIL_LINES`] serial lines); `None` if the boot did what it should.
pub fn boot_failure(report: &BootReport, goal: Goal) -> Option<String> {
    let problem = boot_problem(report, goal)?;
    let smp = report.config.smp;
    let mut s = format!("[smp {smp}] boot failed: {problem}\n");
    let _ = writeln!(s, "    cmdline: {:?}", report.config.append);
    if let Some((cpu, msg)) = report.panic() {
        let _ = writeln!(s, "    panic on cpu {cpu}: {msg}");
    }
    if let Some(addrs) = report.backtrace() {
        s.push_str("    backtrace:\n");
        for line in format_backtrace(&report.kernel, addrs) {
            let _ = writeln!(s, "      {line}");
        }
    }
    if !report.stderr.is_empty() {
        s.push_str("    qemu stderr:\n");
        for line in &report.stderr {
            let _ = writeln!(s, "      {line}");
        }
    }
    let tail = report.serial_tail(TAIL_LINES);
    let _ = writeln!(s, "    last {} serial lines:", tail.len());
    for line in tail {
        let _ = writeln!(s, "      | {line}");
    }
    if let Some(hint) = kvm_hint(report) {
        let _ = writeln!(s, "{hint}");
    }
    Some(s)
}

/// After a QEMU failure under KVM (QEMU itself failed: an exit status other than the
/// kernel's two, or killed by a signal), a one-line hint that TCG works.
pub fn kvm_hint(report: &BootReport) -> Option<String> {
    let qemu_failed = match report.outcome {
        Outcome::Exited { code } => code != EXIT_SUCCESS && code != EXIT_FAILURE,
        Outcome::Signaled { .. } => true,
        Outcome::Hang { .. } => false,
    };
    (report.accel == qemu::Accel::Kvm && qemu_failed).then(|| {
        "hint: QEMU failed under KVM (this host's KVM may refuse what the guest needs); \
         --accel tcg works everywhere"
            .to_string()
    })
}

/// The one-line reason why `report` failed `goal`, or `None`.
pub fn boot_problem(report: &BootReport, goal: Goal) -> Option<String> {
    if let Some((cpu, msg)) = report.panic() {
        return Some(format!("kernel panic on cpu {cpu}: {msg} ({})", report.outcome));
    }
    if let Some((option, msg)) = report.cmdline_error() {
        return Some(format!("kernel rejected the command line option {option}: {msg} ({})", report.outcome));
    }
    let secs = report.config.timeout.as_secs_f64();
    let code = match &report.outcome {
        Outcome::Hang { last_test } => {
            let finished = |name: &str| {
                report.events.iter().any(|e| matches!(e, Event::Test { name: n, .. } if n == name))
            };
            let place = match last_test {
                None if goal == Goal::Tests => ", before any test began".to_string(),
                None => String::new(),
                Some(t) if finished(t) => format!(", after test {t} finished"),
                Some(t) => format!(", in test {t}"),
            };
            return Some(format!("hang: no exit within {secs:.0} s{place}; qemu was killed"));
        }
        Outcome::Signaled { signal } => {
            return Some(format!("qemu was killed by signal {signal}"));
        }
        Outcome::Exited { code } => *code,
    };
    match goal {
        Goal::Tests => {
            let Some((passed, failed)) = report.tests_done() else {
                return Some(format!("qemu exited with status {code} before `@@ tests-done`"));
            };
            let seen_pass = count_tests(report, true);
            let seen_fail = count_tests(report, false);
            if (passed as usize, failed as usize) != (seen_pass, seen_fail) {
                return Some(format!(
                    "`@@ tests-done passed={passed} failed={failed}` disagrees with the \
                     {seen_pass} passed / {seen_fail} failed `@@ test` lines"
                ));
            }
            let expected = if failed == 0 { EXIT_SUCCESS } else { EXIT_FAILURE };
            (code != expected).then(|| {
                format!("qemu exited with status {code}, expected {expected} after {failed} failed tests")
            })
        }
        Goal::Scenario => {
            if code != EXIT_SUCCESS {
                Some(format!("qemu exited with status {code}, expected {EXIT_SUCCESS}"))
            } else if !report.scenario_done() {
                Some(format!("qemu exited with status {code} without `@@ scenario-done`"))
            } else {
                None
            }
        }
        Goal::Exit => {
            (code != EXIT_SUCCESS).then(|| format!("qemu exited with status {code}, expected {EXIT_SUCCESS}"))
        }
    }
}

fn count_tests(report: &BootReport, pass: bool) -> usize {
    report.events.iter().filter(|e| matches!(e, Event::Test { pass: p, .. } if *p == pass)).count()
}

/// A refused test or benchmark filter: empty or with spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    /// What it filters: `"test"` or `"bench"`.
    pub what: &'static str,
    /// The filter as given.
    pub filter: String,
}

impl std::fmt::Display for FilterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} filter {:?} must be a non-empty word without spaces", self.what, self.filter)
    }
}

impl std::error::Error for FilterError {}

/// The kernel option selecting tests by `filter` (`test.filter=PATTERN`), or
/// an empty string without a filter.
pub fn filter_option(filter: Option<&str>) -> Result<String, FilterError> {
    match filter {
        None => Ok(String::new()),
        Some(f) if f.is_empty() || f.contains(char::is_whitespace) => {
            Err(FilterError { what: "test", filter: f.to_string() })
        }
        Some(f) => Ok(format!("test.filter={f}")),
    }
}

/// Boots the suite once with `cfg` (its `append` is added after `run=tests`),
/// printing each test result as it arrives.
pub fn run_suite(cfg: &BootConfig) -> SuiteReport {
    run_suite_with(cfg, false)
}

/// [`run_suite`]; with `verbose` also prints the free-text serial lines.
pub fn run_suite_with(cfg: &BootConfig, verbose: bool) -> SuiteReport {
    let cfg = BootConfig { append: qemu::join_cmdline("run=tests", &cfg.append), ..cfg.clone() };
    let smp = cfg.smp;
    println!("[smp {smp}] boot: cmdline {:?}", cfg.append);
    let booted = qemu::boot_with(&cfg, |source, line, event| match (source, event) {
        (Source::Serial, Some(Event::Test { name, pass, ms, msg })) => {
            let t = TestResult { smp, name: name.clone(), pass: *pass, ms: *ms, msg: msg.clone() };
            println!("{t}");
        }
        (Source::Serial, Some(Event::Panic { cpu, msg })) => {
            println!("[smp {smp}] PANIC on cpu {cpu}: {msg}");
        }
        (Source::Serial, Some(Event::Unknown(l))) => {
            println!("[smp {smp}] unknown protocol line: {l}");
        }
        (Source::Serial, Some(Event::TestBegin { name })) if verbose => {
            println!("[smp {smp}] begin {name}");
        }
        (Source::Serial, None) if verbose => println!("[smp {smp}] | {line}"),
        (Source::Stderr, _) if verbose => println!("[smp {smp}] qemu: {line}"),
        _ => {}
    });
    let verdict = match booted {
        Ok(report) => {
            let v = judge_suite_boot(&report);
            println!(
                "[smp {smp}] {} passed, {} failed ({}, {:.1} s)",
                v.passed(),
                v.failed(),
                report.outcome,
                report.elapsed.as_secs_f64()
            );
            if let Some(f) = &v.failure {
                print!("{f}");
            }
            v
        }
        Err(e) => {
            println!("[smp {smp}] {e}");
            BootVerdict {
                smp,
                tests: Vec::new(),
                tests_done: None,
                failure: Some(format!("[smp {smp}] could not boot: {e}\n")),
                outcome: None,
            }
        }
    };
    SuiteReport { boots: vec![verdict] }
}

/// Runs the suite once per entry of `smps` and adds up the results.
///
/// `timeout`: per boot; `None` gives each boot [`suite_timeout`] for its CPU count.
/// The time a suite boot on `smp` CPUs may take before it counts as a hang: 120 s for up to
/// two CPUs, and 60 s more for each CPU beyond (every vCPU shares the host's cores under TCG,
/// and the in-kernel waits scale the same way: `kernel/src/tests/mod.rs`, `scaled_ms`).
pub fn suite_timeout(smp: u32) -> Duration {
    crate::qemu::DEFAULT_TIMEOUT + Duration::from_secs(60 * u64::from(smp.saturating_sub(2)))
}

/// Runs the suite once per CPU count in `smps`.
pub fn run_suites(base: &BootConfig, smps: &[u32], timeout: Option<Duration>, verbose: bool) -> SuiteReport {
    let mut all = SuiteReport::default();
    for &smp in smps {
        let cfg = BootConfig { smp, timeout: timeout.unwrap_or_else(|| suite_timeout(smp)), ..base.clone() };
        all.boots.extend(run_suite_with(&cfg, verbose).boots);
    }
    all
}

/// One frame of a symbolized backtrace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub addr: u64,
    /// `(function, file:line)`, innermost inlined function first; empty if
    /// unknown.
    pub locations: Vec<(String, String)>,
}

/// Symbolizes return addresses from the kernel ELF's debug information with the `addr2line`
/// crate (each looked up at `addr - 1`, inside the call instruction): function (demangled,
/// without its hash), file and line, innermost inlined function first. `None` if the ELF
/// cannot be read.
pub fn symbolize(elf: &Path, addrs: &[u64]) -> Option<Vec<Frame>> {
    let loader = addr2line::Loader::new(elf).ok()?;
    let frames = addrs
        .iter()
        .map(|&addr| {
            let probe = addr.saturating_sub(1);
            let mut locations = Vec::new();
            if let Ok(mut it) = loader.find_frames(probe) {
                while let Ok(Some(f)) = it.next() {
                    let func = f
                        .function
                        .as_ref()
                        .and_then(|n| n.demangle().ok().map(|d| d.into_owned()))
                        .unwrap_or_else(|| "??".into());
                    let file = match &f.location {
                        Some(l) => format!(
                            "{}:{}",
                            l.file.unwrap_or("??"),
                            l.line.map_or("?".into(), |n| n.to_string())
                        ),
                        None => "??:?".into(),
                    };
                    if !(func == "??" && file.starts_with("??")) {
                        locations.push((func, file));
                    }
                }
            }
            if locations.is_empty() {
                // No line information: the symbol table may still name the function.
                if let Some(sym) = loader.find_symbol(probe) {
                    locations.push((addr2line::demangle_auto(sym.into(), None).into_owned(), "??:?".into()));
                }
            }
            Frame { addr, locations }
        })
        .collect();
    Some(frames)
}

/// The backtrace as display lines: symbolized if possible, raw otherwise.
pub fn format_backtrace(elf: &Path, addrs: &[u64]) -> Vec<String> {
    let Some(frames) = symbolize(elf, addrs) else {
        return addrs.iter().enumerate().map(|(i, a)| format!("#{i:<2} {a:#018x}")).collect();
    };
    let mut out = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        if f.locations.is_empty() {
            out.push(format!("#{i:<2} {:#018x} ??", f.addr));
        }
        for (j, (func, file)) in f.locations.iter().enumerate() {
            if j == 0 {
                out.push(format!("#{i:<2} {:#018x} {func}", f.addr));
            } else {
                out.push(format!("    {:18} (inlined into) {func}", ""));
            }
            out.push(format!("    {:18}   at {file}", ""));
        }
    }
    out
}

/// The `@@ result` records as an aligned table (columns in order of first
/// appearance; numbers right-aligned). Empty if there are no records.
pub fn results_table(records: &[&[(String, String)]]) -> String {
    let mut cols: Vec<&str> = Vec::new();
    for r in records {
        for (k, _) in r.iter() {
            if !cols.contains(&k.as_str()) {
                cols.push(k);
            }
        }
    }
    let rows: Vec<Vec<&str>> = records
        .iter()
        .map(|r| {
            cols.iter()
                .map(|c| r.iter().find(|(k, _)| k == c).map(|(_, v)| v.as_str()).unwrap_or("-"))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| rows.iter().map(|r| r[i].len()).chain([c.len()]).max().unwrap_or(0))
        .collect();
    let numeric: Vec<bool> =
        (0..cols.len()).map(|i| rows.iter().all(|r| r[i] == "-" || r[i].parse::<f64>().is_ok())).collect();
    let fmt_row = |cells: &[&str]| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if numeric[i] {
                    format!("{c:>w$}", w = widths[i])
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        format!("  {}\n", parts.join("  ").trim_end())
    };
    if records.is_empty() {
        return String::new();
    }
    let mut s = fmt_row(&cols);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
    s.push_str(&fmt_row(&rule));
    for r in &rows {
        s.push_str(&fmt_row(r));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::parse_line;
    use crate::qemu::Accel;
    use std::path::PathBuf;
    use std::time::Duration;

    fn report(lines: &[&str], outcome: Outcome) -> BootReport {
        BootReport {
            outcome,
            events: lines.iter().filter_map(|l| parse_line(l)).collect(),
            serial_log: lines.iter().map(|l| l.to_string()).collect(),
            stderr: Vec::new(),
            elapsed: Duration::from_secs(1),
            config: BootConfig::new(2, "run=tests").with_timeout(Duration::from_secs(20)),
            accel: Accel::Tcg,
            kernel: PathBuf::from("/nonexistent/kernel"),
        }
    }

    #[test]
    fn clean_suite() {
        let r = report(
            &[
                "@@ boot cpus=2 hz=100 cmdline=run=tests",
                "@@ test-begin a::b",
                "@@ test a::b pass ms=3",
                "@@ tests-done passed=1 failed=0",
            ],
            Outcome::Exited { code: 33 },
        );
        let v = judge_suite_boot(&r);
        assert_eq!((v.passed(), v.failed()), (1, 0));
        assert!(v.failure.is_none());
        assert_eq!(v.tests[0].to_string(), "[smp 2] pass a::b (3 ms)");
    }

    #[test]
    fn failed_test_counts_once() {
        let r = report(
            &[
                "@@ test a::b pass ms=3",
                "@@ test a::c fail ms=4 msg=expected 1, got 2",
                "@@ tests-done passed=1 failed=1",
            ],
            Outcome::Exited { code: 35 },
        );
        let v = judge_suite_boot(&r);
        assert_eq!((v.passed(), v.failed()), (1, 1));
        assert!(v.failure.is_none());
        assert!(v.failure_text().contains("expected 1, got 2"));
    }

    #[test]
    fn panic_is_an_extra_failure_with_message_and_tail() {
        let mut lines = vec!["free text".to_string(); 50];
        lines.push("@@ test a::b pass ms=3".into());
        lines.push("@@ panic cpu=1 msg=deliberate panic".into());
        lines.push("@@ backtrace ffffffff80001000 ffffffff80002000".into());
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let r = report(&lines, Outcome::Exited { code: 35 });
        let v = judge_suite_boot(&r);
        assert_eq!((v.passed(), v.failed()), (1, 1));
        let f = v.failure.unwrap();
        assert!(f.contains("kernel panic on cpu 1: deliberate panic"), "{f}");
        assert!(f.contains("0xffffffff80001000"), "{f}");
        assert!(f.contains("last 40 serial lines"), "{f}");
        assert_eq!(f.matches("      | ").count(), 40);
    }

    #[test]
    fn hang_is_a_failure() {
        let r = report(&["@@ test-begin a::b"], Outcome::Hang { last_test: Some("a::b".into()) });
        let v = judge_suite_boot(&r);
        assert_eq!(v.failed(), 1);
        let f = v.failure.unwrap();
        assert!(f.contains("hang: no exit within 20 s, in test a::b"), "{f}");
    }

    #[test]
    fn wrong_exits_are_failures() {
        let done = ["@@ tests-done passed=0 failed=0"];
        for (lines, code, what) in [
            (&done[..], 1, "status 1"),
            (&done[..], 35, "expected 33"),
            (&[][..], 33, "before `@@ tests-done`"),
            (&["@@ tests-done passed=3 failed=0"][..], 33, "disagrees"),
            (&["@@ cmdline-error option=x msg=unknown"][..], 35, "option x"),
        ] {
            let v = judge_suite_boot(&report(lines, Outcome::Exited { code }));
            let f = v.failure.expect(what);
            assert!(f.contains(what), "{what}: {f}");
        }
        let v = judge_suite_boot(&report(&[], Outcome::Signaled { signal: 9 }));
        assert!(v.failure.unwrap().contains("signal 9"));
    }

    #[test]
    fn scenario_goal() {
        let ok = report(&["@@ scenario-done"], Outcome::Exited { code: 33 });
        assert_eq!(boot_problem(&ok, Goal::Scenario), None);
        let missing = report(&[], Outcome::Exited { code: 33 });
        assert!(boot_problem(&missing, Goal::Scenario).is_some());
        assert_eq!(boot_problem(&missing, Goal::Exit), None);
    }

    #[test]
    fn totals() {
        let mut s = SuiteReport::default();
        let r =
            report(&["@@ test a pass ms=1", "@@ tests-done passed=1 failed=0"], Outcome::Exited { code: 33 });
        s.boots.push(judge_suite_boot(&r));
        s.boots.push(judge_suite_boot(&report(&[], Outcome::Hang { last_test: None })));
        assert_eq!(s.totals_line(), "1 passed, 1 failed");
    }

    #[test]
    fn filter_options() {
        assert_eq!(filter_option(None).unwrap(), "");
        assert_eq!(filter_option(Some("sched::rr")).unwrap(), "test.filter=sched::rr");
        let e = filter_option(Some("a b")).unwrap_err();
        assert_eq!(e.to_string(), r#"test filter "a b" must be a non-empty word without spaces"#);
        assert!(filter_option(Some("")).is_err());
    }

    #[test]
    fn raw_backtrace_without_symbols() {
        let lines = format_backtrace(Path::new("/nonexistent/kernel"), &[0x1234]);
        assert!(lines[0].contains("0x0000000000001234"), "{lines:?}");
    }

    #[test]
    fn table() {
        let a = vec![("cpu".to_string(), "0".to_string()), ("name".into(), "idle".into())];
        let b = vec![("cpu".to_string(), "1".to_string()), ("switches".into(), "12345".into())];
        let t = results_table(&[&a, &b]);
        assert_eq!(
            t,
            "  cpu  name  switches\n  ---  ----  --------\n    0  idle         -\n    1  -        12345\n"
        );
        assert_eq!(results_table(&[]), "");
    }
}
