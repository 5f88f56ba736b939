//! `test [filter]` and `bench [filter] [samples]`: the in-kernel tests and the benchmarks,
//! run from the shell. Formats in docs/PROTOCOL.md ("Shell"):
//!
//! ```text
//! test:  the usual @@ test-begin / @@ test / @@ tests-done lines (written to the shell's
//!        output), then: test: passed=<n> failed=<n>
//! bench: the usual @@ bench / @@ bench-done lines (printed on the console by the runner),
//!        then: bench: filter=<f> samples=<n> unit=<u>
//! ```
//!
//! `test` fails (status error) if a test failed or none matched; it runs with the lock checker
//! on, as `run=tests` does (when lock records are kept, i.e. `kern.lockstat` or
//! `kern.lockcheck` is on), and restores it. `bench` runs on CPU 0, as `run=bench` does, in
//! the lock configuration the shell has now (`kern.lockstat`, `kern.lockcheck`: the runner
//! states it on its `@@ bench-config` line), and restores the shell thread's binding
//! afterwards.

use alloc::string::String;
use core::fmt::Write;

use ktest::{TestLine, TestResult};
use machine::Machine;

use super::{bail, ShellError};
use crate::cmdline::{Options, RunMode};
use crate::locks::{Mutex, SYNC};
use crate::SCHED;

/// The boot's options (for the benchmark unit and sample count), when the caller of the shell
/// gave them ([`configure`]).
static BOOT: Mutex<Option<Options>> = Mutex::new_adaptive("shell.options", None);

/// Gives the shell the boot's options: `bench` takes its unit and default sample count from
/// them (without, `tsc` and 100000).
pub fn configure(opts: &Options) {
    *BOOT.lock() = Some(opts.clone());
}

fn one_filter<'a>(cmd: &str, args: &[&'a str]) -> Result<&'a str, ShellError> {
    match args {
        [] => Ok(""),
        [f] => Ok(f),
        [_, extra, ..] => bail!("{cmd}: unexpected argument '{extra}'"),
    }
}

/// The `test` command.
pub fn test(args: &[&str], out: &mut dyn Write) -> Result<(), ShellError> {
    let filter = one_filter("test", args)?;
    let selected: alloc::vec::Vec<&ktest::KTest> =
        ktest::registry().iter().filter(|t| ktest::selected(t.name, filter)).collect();
    if selected.is_empty() {
        bail!("test: no test name contains '{filter}'");
    }
    let w = &SYNC.witness;
    let was_checking = w.checking();
    if w.active() {
        w.set_checking(true);
    }
    let (mut passed, mut failed) = (0usize, 0usize);
    for t in selected {
        writeln!(out, "{}", TestLine::Begin(t.name))?;
        let t0 = arch::X86_64::now_ns();
        let result: TestResult = (t.run)();
        let ms = (arch::X86_64::now_ns() - t0) / 1_000_000;
        writeln!(out, "{}", TestLine::End { name: t.name, result: &result, ms })?;
        if result.is_ok() {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    w.set_checking(was_checking);
    writeln!(out, "{}", TestLine::Done { passed, failed })?;
    writeln!(out, "test: passed={passed} failed={failed}")?;
    if failed > 0 {
        bail!("test: {failed} of {} failed", passed + failed);
    }
    Ok(())
}

/// The `bench` command.
pub fn bench(args: &[&str], out: &mut dyn Write) -> Result<(), ShellError> {
    let mut opts = BOOT.lock().clone().unwrap_or_default();
    opts.run = RunMode::Bench;
    let (filter, samples) = match args {
        [] => ("", None),
        [f] => (*f, None),
        [f, n] => (*f, Some(*n)),
        [_, _, extra, ..] => bail!("bench: unexpected argument '{extra}'"),
    };
    if let Some(n) = samples {
        match n.parse::<usize>() {
            Ok(k) if (1..=1_000_000).contains(&k) => opts.bench_samples = k,
            _ => bail!("bench: bad sample count '{n}' (1..=1000000)"),
        }
    }
    opts.bench_filter = String::from(if filter == "-" { "" } else { filter });
    if !kbench::registry().iter().any(|k| kbench::selected(k.name, &opts.bench_filter)) {
        bail!("bench: no benchmark name contains '{}'", opts.bench_filter);
    }
    let bound = SCHED.current().bound_cpu();
    let ok = crate::bench::run(&opts);
    SCHED.bind_current(bound);
    writeln!(
        out,
        "bench: filter={} samples={} unit={}",
        if opts.bench_filter.is_empty() { "-" } else { &opts.bench_filter },
        opts.bench_samples,
        opts.bench_unit
    )?;
    if !ok {
        bail!("bench: the benchmark registry is unusable (see the console)");
    }
    Ok(())
}
