//! The serial shell's commands (`crate::shell`), executed into a `String` and parsed as a
//! host would parse them (formats in docs/PROTOCOL.md, "Shell"): `intrstat` counts a source
//! raised N times, `sysctl` reads, sets (the pool really resizes), validates and takes
//! drivers' tunables, `ps` lists threads, `lockstat` sorts, errors name their culprit. Every
//! test leaves the tunables as it found them.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use intr::{IntrFlags, IntrHandle, Model, SourceSpec};
use ipl::Ipl;
use ktest::{kassert, kassert_eq, ktest, TestResult};

use super::{ncpus, until};
use crate::intr::INTR;
use crate::locks::KernelEnv;
use crate::shell::{self, Outcome, SysctlGet, SysctlSet};
use crate::{Event, SCHED};

/// Runs `line`; its output, or the error message prefixed with `error: `.
fn sh(line: &str) -> (Result<Outcome, String>, String) {
    let mut out = String::new();
    let r = shell::execute(line, &mut out).map_err(|e| e.msg);
    (r, out)
}

/// Runs `line`, which must succeed; its output.
fn ok(line: &str) -> Result<String, String> {
    match sh(line) {
        (Ok(_), out) => Ok(out),
        (Err(e), _) => Err(alloc::format!("`{line}` failed: {e}")),
    }
}

/// Runs `line`, which must fail; the error message.
fn err(line: &str) -> Result<String, String> {
    match sh(line) {
        (Ok(_), out) => Err(alloc::format!("`{line}` succeeded: {out}")),
        (Err(e), _) => Ok(e),
    }
}

/// Rows of a table: the lines after the header line that starts with `header`, split in words.
fn rows<'a>(out: &'a str, header: &str) -> Result<Vec<Vec<&'a str>>, String> {
    let mut lines = out.lines();
    lines.by_ref().find(|l| l.split_whitespace().next() == Some(header)).ok_or("no header line")?;
    Ok(lines.map(|l| l.split_whitespace().collect()).collect())
}

/// `name=value` from a `sysctl` output line.
fn sysctl_value(out: &str, name: &str) -> Result<String, String> {
    let line = out.lines().next().ok_or("no output")?;
    let word = line.split_whitespace().next().ok_or("empty line")?;
    match word.split_once('=') {
        Some((n, v)) if n == name => Ok(String::from(v)),
        _ => Err(alloc::format!("unexpected sysctl line {line:?}")),
    }
}

fn raise(cpu: usize, vector: u8) {
    arch::apic::send_ipi(arch::cpu::lapic_id_of(cpu), vector);
}

type Handle = IntrHandle<KernelEnv>;

fn counting(
    name: impl Into<intr::SourceName>,
    vector: u8,
    model: Model,
) -> Result<(Handle, Arc<AtomicU64>), String> {
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let h = INTR
        .establish(
            SourceSpec {
                name: name.into(),
                vector,
                ipl: Ipl::Vm,
                flags: IntrFlags::MPSAFE,
                model: Some(model),
                thread_priority: None,
            },
            None,
            Some(alloc::boxed::Box::new(move |_| {
                c.fetch_add(1, Ordering::SeqCst);
            })),
        )
        .map_err(|e| alloc::format!("{e}"))?;
    Ok((h, count))
}

fn unknown_commands_and_bad_arguments() -> TestResult {
    let e = err("frobnicate now")?;
    kassert!(e.contains("frobnicate"), "error does not name the command: {e}");
    for (line, culprit) in
        [("ps -x", "-x"), ("lockstat many", "many"), ("lockstat 0", "0"), ("intrstat now", "now")]
    {
        let e = err(line)?;
        kassert!(e.contains(culprit), "`{line}`: error does not name {culprit}: {e}");
    }
    for (line, culprit) in [("test a b", "b"), ("bench a 0", "0"), ("bench a 10 x", "x"), ("halt now", "now")]
    {
        let e = err(line)?;
        kassert!(e.contains(culprit), "`{line}`: error does not name {culprit}: {e}");
    }
    kassert_eq!(sh("   "), (Ok(Outcome::Continue), String::new()), "empty line");
    kassert_eq!(sh("halt").0, Ok(Outcome::Halt));
    let help = ok("help")?;
    for cmd in ["help", "intrstat", "lockstat", "ps", "sysctl", "test", "bench", "halt"] {
        kassert!(help.lines().any(|l| l.starts_with(cmd)), "help does not list {cmd}");
    }
    kassert_eq!(shell::command_name("  sysctl intr.balance=on"), "sysctl");
    Ok(())
}
ktest!(T_ERRORS, "shell::cmd::unknown_and_bad_arguments", unknown_commands_and_bad_arguments);

/// `intrstat` lists a source raised N times with count N, its per-CPU rows adding up.
fn intrstat_counts_a_raised_source() -> TestResult {
    let n = ncpus();
    let (h, count) = counting("test.shell.intrstat", 0x56, Model::Pool)?;
    let (_quiet, _) = counting("test.shell.quiet", 0x55, Model::Direct)?;
    const N: u64 = 40;
    for k in 0..N {
        raise(k as usize % n, 0x56);
        kassert!(until(1000, || count.load(Ordering::SeqCst) == k + 1), "interrupt {k} not handled");
    }
    // The handler's accounting is done right after it returns: give it a moment.
    kassert!(until(1000, || h.source().stats.handled.load(Ordering::SeqCst) == N), "handled count");
    let _ = ok("intrstat")?; // so the next one reports since the last
    let out = ok("intrstat")?;
    let header = out.lines().next().unwrap_or("");
    kassert!(header.starts_with("intrstat: since=last interval_ms="), "header {header:?}");
    let table = rows(&out, "source")?;
    let mine: Vec<&Vec<&str>> = table.iter().filter(|r| r.first() == Some(&"test.shell.intrstat")).collect();
    let total = mine.iter().find(|r| r.get(4) == Some(&"total")).ok_or("no total row")?;
    kassert_eq!(total.len(), 19, "total row {total:?}");
    kassert_eq!(total[1], "0x56");
    kassert_eq!(total[2], "IPL_VM");
    kassert_eq!(total[3], "pool");
    kassert_eq!(total[5], alloc::format!("{N}"), "count");
    kassert_eq!(total[6], "0", "rate since the last intrstat (nothing raised since)");
    kassert_eq!(total[7], alloc::format!("{N}"), "handled");
    kassert!(total[9].parse::<u64>().is_ok() && total[10].parse::<u64>().is_ok(), "latency {total:?}");
    kassert_eq!((total[13], total[14]), ("0", "software"), "masked_in, mask");
    kassert_eq!(total[15], "-", "state");
    kassert!(total[16].parse::<u64>().is_ok(), "blocked_us {total:?}");
    kassert_eq!((total[17], total[18]), ("0/0", "0/0"), "nothing deferred by the SPL or held by a mask");
    let per_cpu: u64 =
        mine.iter().filter(|r| r[4] != "total").map(|r| r[5].parse::<u64>().unwrap_or(0)).sum();
    kassert_eq!(per_cpu, N, "per-CPU counts add up");
    // A CPU row that ran handlers shows that CPU's latency percentiles; one that ran none, `-`.
    for r in mine.iter().filter(|r| r[4] != "total") {
        let ran = r[7].parse::<u64>().unwrap_or(0) > 0;
        kassert_eq!(
            ran,
            r[9].parse::<u64>().is_ok() && r[10].parse::<u64>().is_ok(),
            "per-CPU latency {r:?}"
        );
    }
    kassert!(mine.len() <= n + 1, "more rows than CPUs + total: {mine:?}");
    // The quiet source: only its total row, count 0.
    let quiet: Vec<&Vec<&str>> = table.iter().filter(|r| r.first() == Some(&"test.shell.quiet")).collect();
    kassert_eq!(quiet.len(), 1, "quiet source rows {quiet:?}");
    kassert_eq!((quiet[0][3], quiet[0][4], quiet[0][5]), ("direct", "total", "0"));
    Ok(())
}
ktest!(T_INTRSTAT, "shell::intrstat::counts_a_raised_source", intrstat_counts_a_raised_source);

/// `sysctl intr.pool.size=K` resizes the pool for real; out-of-range sizes are refused.
fn sysctl_resizes_the_pool() -> TestResult {
    let n = ncpus();
    let old_target = INTR.pool.target();
    let mut handles = Vec::new();
    while INTR.pool.handlers() < 2 * n + 2 {
        // A name per handler, for any CPU count (an owned string).
        handles.push(counting(alloc::format!("test.shell.pool{}", handles.len()), 0x57, Model::Pool)?.0);
    }
    let (lo, hi) = INTR.pool.size_bounds();
    kassert_eq!(lo, 2 * n);
    kassert!(hi >= 2 * n + 2, "bounds {lo}..={hi}");
    let k = 2 * n + 1;
    let r = (|| -> TestResult {
        let out = ok(&alloc::format!("sysctl intr.pool.size={k}"))?;
        kassert_eq!(sysctl_value(&out, "intr.pool.size")?, alloc::format!("{k}"), "{out}");
        kassert!(out.contains("(was "), "{out}");
        kassert_eq!(sysctl_value(&ok("sysctl intr.pool.size")?, "intr.pool.size")?, alloc::format!("{k}"));
        kassert!(until(500, || INTR.pool.stats().size == k), "pool size {}", INTR.pool.stats().size);
        kassert_eq!(
            sysctl_value(&ok("sysctl intr.pool.bounds")?, "intr.pool.bounds")?,
            alloc::format!("{lo}..={hi}")
        );
        for bad in [lo - 1, hi + 1] {
            let e = err(&alloc::format!("sysctl intr.pool.size={bad}"))?;
            kassert!(e.contains("intr.pool.size") && e.contains(&alloc::format!("'{bad}'")), "{e}");
        }
        let e = err("sysctl intr.pool.size=lots")?;
        kassert!(e.contains("intr.pool.size") && e.contains("lots"), "{e}");
        kassert_eq!(INTR.pool.stats().size, k, "a refused value changed the size");
        Ok(())
    })();
    INTR.pool.set_size(old_target);
    drop(handles);
    r
}
ktest!(T_POOL, "shell::sysctl::pool_size", sysctl_resizes_the_pool);

/// Sets `name=value`, checks it reads back, restores the old value.
fn set_and_restore(name: &str, value: &str) -> TestResult {
    let old = sysctl_value(&ok(&alloc::format!("sysctl {name}"))?, name)?;
    let out = ok(&alloc::format!("sysctl {name}={value}"))?;
    let r = sysctl_value(&out, name).and_then(|now| {
        let read = sysctl_value(&ok(&alloc::format!("sysctl {name}"))?, name)?;
        if now == value && read == value && out.contains(&alloc::format!("(was {old})")) {
            Ok(())
        } else {
            Err(alloc::format!("{name}={value}: printed {out:?}, reads {read}"))
        }
    });
    ok(&alloc::format!("sysctl {name}={old}"))?;
    r
}

/// Every built-in tunable is listed; they set, read back and validate; errors name the
/// tunable and the value.
fn sysctl_names_values_and_errors() -> TestResult {
    let all = ok("sysctl")?;
    let names: Vec<&str> = all.lines().filter_map(|l| l.split_once('=').map(|p| p.0)).collect();
    for want in [
        "intr.pool.size",
        "intr.balance",
        "intr.model.default",
        "intr.storm.window_ms",
        "intr.storm.hot_windows",
        "intr.storm.min_arrivals",
        "intr.storm.busy_percent",
        "intr.storm.idle_percent",
        "intr.storm.quiet_ms",
        "intr.storm.backoff_min_ms",
        "intr.storm.backoff_max_ms",
        "kern.lockstat",
        "kern.lockcheck",
    ] {
        kassert!(names.contains(&want), "sysctl does not list {want}");
    }
    let mut sorted = names.clone();
    sorted.sort_unstable();
    kassert_eq!(names, sorted, "sysctl list is sorted by name");
    kassert!(ok("sysctl -d")?.lines().all(|l| l.contains(" rw ") || l.contains(" ro ")), "sysctl -d");
    set_and_restore("intr.balance", if INTR.pool.balancing() { "off" } else { "on" })?;
    let other = if INTR.default_model() == Model::Dedicated { "pinned" } else { "dedicated" };
    set_and_restore("intr.model.default", other)?;
    set_and_restore("intr.storm.window_ms", "20")?;
    set_and_restore("intr.storm.hot_windows", "3")?;
    set_and_restore("intr.storm.min_arrivals", "500")?;
    set_and_restore("intr.storm.busy_percent", "75")?;
    set_and_restore("intr.storm.idle_percent", "75")?;
    set_and_restore("intr.storm.quiet_ms", "50")?;
    set_and_restore("intr.storm.backoff_max_ms", "2000")?;
    set_and_restore("intr.storm.backoff_min_ms", "40")?;
    set_and_restore("kern.lockstat", if crate::locks::SYNC.witness.stats_on() { "off" } else { "on" })?;
    kassert_eq!(intr::storm::PARAMS.window_ns(), intr::storm::WINDOW_NS, "window restored");
    for (line, culprits) in [
        ("sysctl intr.bogus", ["intr.bogus", "unknown"]),
        ("sysctl intr.bogus=1", ["intr.bogus", "unknown"]),
        ("sysctl intr.balance=maybe", ["intr.balance", "maybe"]),
        ("sysctl intr.model.default=fast", ["intr.model.default", "fast"]),
        ("sysctl intr.storm.window_ms=0", ["intr.storm.window_ms", "'0'"]),
        ("sysctl intr.storm.idle_percent=101", ["intr.storm.idle_percent", "101"]),
        ("sysctl intr.storm.busy_percent=0", ["intr.storm.busy_percent", "'0'"]),
        ("sysctl intr.storm.backoff_min_ms=999999", ["intr.storm.backoff_min_ms", "999999"]),
        ("sysctl intr.pool.bounds=1..=2", ["intr.pool.bounds", "read-only"]),
        ("sysctl intr.balance=", ["intr.balance", "empty"]),
        ("sysctl a b", ["'b'", "unexpected"]),
    ] {
        let e = err(line)?;
        for c in culprits {
            kassert!(e.contains(c), "`{line}`: error {e:?} does not name {c}");
        }
    }
    Ok(())
}
ktest!(T_SYSCTL, "shell::sysctl::names_values_and_errors", sysctl_names_values_and_errors);

static KNOB: AtomicU64 = AtomicU64::new(7);

/// A driver's tunable: registered, read, set through its validating setter, refused as a
/// duplicate, unregistered.
fn sysctl_driver_registry() -> TestResult {
    let name = "test.shell.knob";
    shell::register_sysctl(
        name,
        "a test's knob (0..=10)",
        alloc::boxed::Box::new(|| alloc::format!("{}", KNOB.load(Ordering::Relaxed))) as SysctlGet,
        Some(alloc::boxed::Box::new(|v: &str| match v.parse::<u64>() {
            Ok(x) if x <= 10 => {
                KNOB.store(x, Ordering::Relaxed);
                Ok(())
            }
            _ => Err(String::from("expected 0..=10")),
        }) as SysctlSet),
    )?;
    let r = (|| -> TestResult {
        kassert_eq!(sysctl_value(&ok("sysctl test.shell.knob")?, name)?, "7");
        kassert_eq!(sysctl_value(&ok("sysctl test.shell.knob=9")?, name)?, "9");
        kassert_eq!(KNOB.load(Ordering::Relaxed), 9);
        kassert_eq!(shell::sysctl_get(name).map_err(|e| e.msg)?, "9");
        kassert_eq!(shell::sysctl_set(name, "3").map_err(|e| e.msg)?, "9", "the old value");
        kassert_eq!(KNOB.load(Ordering::Relaxed), 3);
        kassert!(shell::sysctl_set(name, "x").is_err_and(|e| e.msg.contains(name)), "x accepted");
        shell::sysctl_set(name, "9").map_err(|e| e.msg)?;
        let e = err("sysctl test.shell.knob=11")?;
        kassert!(e.contains(name) && e.contains("11") && e.contains("0..=10"), "{e}");
        kassert!(ok("sysctl")?.lines().any(|l| l == "test.shell.knob=9"), "not listed");
        let dup = shell::register_sysctl(name, "again", alloc::boxed::Box::new(String::new), None);
        kassert!(dup.is_err_and(|e| e.contains(name)), "duplicate accepted");
        for bad in ["", "has space", "a=b"] {
            let r = shell::register_sysctl(bad, "bad", alloc::boxed::Box::new(String::new), None);
            kassert!(r.is_err(), "name {bad:?} accepted");
        }
        Ok(())
    })();
    kassert!(shell::unregister_sysctl(name), "not registered");
    KNOB.store(7, Ordering::Relaxed);
    r?;
    kassert!(err("sysctl test.shell.knob")?.contains("unknown"), "still there after unregister");
    Ok(())
}
ktest!(T_REGISTRY, "shell::sysctl::driver_registry", sysctl_driver_registry);

/// `ps` lists the running thread as on a CPU with its name and priorities, and a sleeping
/// thread as asleep.
fn ps_lists_threads() -> TestResult {
    let ev = Arc::new(Event::new(&SCHED));
    let started = Arc::new(AtomicBool::new(false));
    let (e2, s2) = (ev.clone(), started.clone());
    let pri = sched::Priority::new(20).ok_or("priority")?;
    let probe = SCHED.spawn("shell-ps-probe", pri, None, move || {
        s2.store(true, Ordering::SeqCst);
        e2.wait();
    });
    let probe_id = probe.thread().id();
    kassert!(until(1000, || started.load(Ordering::SeqCst)), "probe did not start");
    kassert!(
        until(1000, || probe.thread().state() == sched::ThreadState::Sleeping && !probe.thread().is_on_cpu()),
        "probe did not go to sleep"
    );
    let out = ok("ps");
    ev.set();
    probe.join();
    let out = out?;
    let header = out.lines().next().unwrap_or("");
    kassert!(header.starts_with("ps: threads="), "{header}");
    let table = rows(&out, "id")?;
    let me = SCHED.current();
    let mine = table
        .iter()
        .find(|r| r.first() == Some(&alloc::format!("{}", me.id()).as_str()))
        .ok_or("the current thread is not listed")?;
    kassert_eq!(mine.len(), 8, "{mine:?}");
    kassert_eq!(mine[1], me.name());
    kassert_eq!(mine[2], alloc::format!("{}", me.base_priority().get()));
    kassert_eq!(mine[4], "onproc");
    kassert!(mine[5].parse::<usize>().is_ok_and(|c| c < ncpus()), "cpu {}", mine[5]);
    let p = table
        .iter()
        .find(|r| r.first() == Some(&alloc::format!("{probe_id}").as_str()))
        .ok_or("the probe is not listed")?;
    kassert_eq!((p[1], p[2], p[3], p[4], p[7]), ("shell-ps-probe", "20", "20", "sleep", "-"));
    let idle = table.iter().filter(|r| r[1].starts_with("idle")).count();
    kassert!(idle == 0 || idle == ncpus(), "idle threads listed: {idle}");
    Ok(())
}
ktest!(T_PS, "shell::ps::lists_threads", ps_lists_threads);

/// A lock only `shell::lockstat::sorted` takes.
static LOCKSTAT_PROBE: crate::locks::Mutex<()> = crate::locks::Mutex::new_adaptive("test.shell.lockstat", ());

/// `lockstat N` shows at most N classes, most contended first; with statistics turned on at
/// run time (`sysctl kern.lockstat=1`: they are off by default) acquisitions are counted.
fn lockstat_sorted() -> TestResult {
    let was = sysctl_value(&ok("sysctl kern.lockstat")?, "kern.lockstat")?;
    ok("sysctl kern.lockstat=1")?;
    let r = lockstat_sorted_with_stats_on();
    ok(&alloc::format!("sysctl kern.lockstat={was}"))?;
    r
}

fn lockstat_sorted_with_stats_on() -> TestResult {
    kassert!(crate::locks::SYNC.witness.stats_on(), "sysctl kern.lockstat=1 left statistics off");
    for _ in 0..5 {
        drop(LOCKSTAT_PROBE.lock());
    }
    let out = ok("lockstat 3")?;
    let header = out.lines().next().unwrap_or("");
    kassert!(header.starts_with("lockstat: stats="), "{header}");
    let table = rows(&out, "class")?;
    kassert!(table.len() <= 3, "{} rows", table.len());
    let everything = ok("lockstat 100000")?;
    let all = rows(&everything, "class")?;
    let contended: Vec<u64> = all.iter().map(|r| r[3].parse::<u64>().unwrap_or(u64::MAX)).collect();
    kassert!(contended.windows(2).all(|w| w[0] >= w[1]), "not sorted by contention: {contended:?}");
    kassert!(all.iter().all(|r| r.len() == 7), "a row is not 7 words");
    kassert!(everything.lines().next().unwrap_or("").starts_with("lockstat: stats=on"), "{everything}");
    let probe = all
        .iter()
        .find(|r| r[0] == "test.shell.lockstat")
        .ok_or(alloc::format!("no test.shell.lockstat row: {everything}"))?;
    kassert!(probe[2].parse::<u64>().is_ok_and(|n| n >= 5), "5 acquisitions, counted {}", probe[2]);
    Ok(())
}
ktest!(T_LOCKSTAT, "shell::lockstat::sorted", lockstat_sorted);

/// `test` runs selected tests, reports counts, and fails when none match.
fn test_command_runs_tests() -> TestResult {
    let out = ok("test bench::registry::baselines")?;
    kassert!(out.lines().any(|l| l == "@@ test-begin bench::registry::baselines"), "{out}");
    kassert!(out.lines().any(|l| l == "test: passed=1 failed=0"), "{out}");
    let e = err("test no.such.test")?;
    kassert!(e.contains("no.such.test"), "{e}");
    Ok(())
}
ktest!(T_TEST, "shell::test::runs_selected", test_command_runs_tests);

/// The interactive loop over scripted lines: prompt, output, `ok`/`error:` and the
/// terminator per command; blank lines skipped; ends at `halt` (true) or end of input (false).
fn interactive_loop() -> TestResult {
    let mut script: Vec<&str> = alloc::vec!["help", "", "nonsense", "sysctl intr.balance", "halt", "help"];
    script.reverse();
    let mut read = || script.pop().map(String::from);
    let mut out = String::new();
    kassert!(shell::run_with(&mut read, &mut out), "halt did not end the loop with true");
    kassert_eq!(script, alloc::vec!["help"], "lines read after halt");
    let lines: Vec<&str> = out.lines().collect();
    kassert_eq!(lines.first().copied(), Some("@@ shell-ready"));
    let done: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("@@ shell-done ")).collect();
    kassert_eq!(
        done,
        alloc::vec![
            "cmd=help status=ok",
            "cmd=nonsense status=error",
            "cmd=sysctl status=ok",
            "cmd=halt status=ok"
        ]
    );
    kassert!(lines.iter().any(|l| l.ends_with("error: unknown command 'nonsense' (try help)")), "{out}");
    kassert!(
        lines.iter().any(|l| *l == "ithreads> intr.balance=on" || *l == "ithreads> intr.balance=off"),
        "{out}"
    );
    kassert_eq!(out.matches(shell::PROMPT).count(), 5, "prompts (blank line included)");
    let mut empty = || None;
    let mut out = String::new();
    kassert!(!shell::run_with(&mut empty, &mut out), "end of input is not a halt");
    kassert!(out.ends_with("@@ shell-eof\n"), "{out:?}");
    Ok(())
}
ktest!(T_LOOP, "shell::run::interactive_loop", interactive_loop);

/// `ps` shows the pinned switch: a thread interrupted by a pinned-model handler is
/// `pinned:<ithread>` and the interrupt thread `borrow:<thread>` while the handler runs.
/// (Needs two CPUs: passes trivially on one.)
fn ps_shows_pinned_and_borrowing() -> TestResult {
    if ncpus() < 2 {
        return Ok(());
    }
    let was_bound = SCHED.current().bound_cpu();
    SCHED.bind_current(Some(0));
    let r = pinned_probe();
    SCHED.bind_current(was_bound);
    r
}

fn pinned_probe() -> TestResult {
    static ENTERED: AtomicBool = AtomicBool::new(false);
    static RELEASE: AtomicBool = AtomicBool::new(false);
    ENTERED.store(false, Ordering::SeqCst);
    RELEASE.store(false, Ordering::SeqCst);
    let h = INTR
        .establish(
            SourceSpec {
                name: "test.shell.pinned".into(),
                vector: 0x55,
                ipl: Ipl::Vm,
                flags: IntrFlags::MPSAFE,
                model: Some(Model::Pinned),
                thread_priority: None,
            },
            None,
            Some(alloc::boxed::Box::new(|_| {
                ENTERED.store(true, Ordering::SeqCst);
                let deadline = super::now_ns() + 2_000_000_000;
                while !RELEASE.load(Ordering::SeqCst) && super::now_ns() < deadline {
                    core::hint::spin_loop();
                }
            })),
        )
        .map_err(|e| alloc::format!("{e}"));
    // The first pinned source made the per-CPU ithreads, parked, before the victim runs.
    kassert!(super::intr::pinned_parked(), "the pinned ithreads are not all parked");
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let pri = sched::Priority::new(20).ok_or("priority")?;
    let victim = SCHED.spawn("shell-pin-victim", pri, Some(1), move || {
        while !s2.load(Ordering::Relaxed) {
            core::hint::spin_loop();
        }
    });
    let vid = victim.thread().id();
    let r = (|| -> TestResult {
        let h = h?;
        // Another thread may take CPU 1 from the victim at the wrong moment: a few tries.
        let mut last = String::new();
        for attempt in 1..=5u64 {
            ENTERED.store(false, Ordering::SeqCst);
            RELEASE.store(false, Ordering::SeqCst);
            kassert!(
                until(1000, || victim.thread().is_on_cpu() && victim.thread().last_cpu() == 1),
                "the victim does not run on CPU 1"
            );
            raise(1, 0x55);
            kassert!(until(1000, || ENTERED.load(Ordering::SeqCst)), "the pinned handler did not start");
            let out = ok("ps");
            RELEASE.store(true, Ordering::SeqCst);
            kassert!(
                until(1000, || h.source().stats.handled.load(Ordering::SeqCst) == attempt),
                "handler did not end"
            );
            let out = out?;
            let table = rows(&out, "id")?;
            let v = table.iter().find(|r| r[0] == alloc::format!("{vid}")).ok_or("victim not listed")?;
            let Some(it) = v[7].strip_prefix("pinned:") else {
                last = alloc::format!("victim row {v:?}");
                continue;
            };
            let b = table.iter().find(|r| r[0] == it).ok_or("the borrowing thread is not listed")?;
            kassert!(b[1].starts_with("ithread/"), "borrower {b:?}");
            kassert_eq!(b[7], alloc::format!("borrow:{vid}"), "borrower {b:?}");
            kassert_eq!((b[4], b[5]), ("onproc", "1"), "borrower {b:?}");
            return Ok(());
        }
        Err(last)
    })();
    RELEASE.store(true, Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    victim.join();
    r
}
ktest!(T_PINNED, "shell::ps::pinned_and_borrowing", ps_shows_pinned_and_borrowing);

/// `sysctl intr.thread_priority`: an operator sets a pool source's handler priority below the
/// real-time band (as `chrt` does for a Linux irq thread); its handler runs at it on every CPU
/// it is raised on; a direct source and an unknown one are refused, naming them.
fn sysctl_thread_priority() -> TestResult {
    let seen = Arc::new(AtomicU64::new(0));
    let runs = Arc::new(AtomicU64::new(0));
    let (s2, r2) = (seen.clone(), runs.clone());
    let vector = 0x5A;
    let pool = INTR
        .establish(
            SourceSpec {
                name: "t.shell.prio".into(),
                vector,
                ipl: Ipl::Vm,
                flags: IntrFlags::MPSAFE,
                model: Some(Model::Pool),
                thread_priority: None,
            },
            None,
            Some(alloc::boxed::Box::new(move |_| {
                s2.store(u64::from(crate::SCHED.current().priority().get()), Ordering::SeqCst);
                r2.fetch_add(1, Ordering::SeqCst);
            })),
        )
        .map_err(|e| alloc::format!("{e}"))?;
    let direct = INTR
        .establish(
            SourceSpec {
                name: "t.shell.prio.direct".into(),
                vector: 0x5B,
                ipl: Ipl::Vm,
                flags: IntrFlags::MPSAFE,
                model: Some(Model::Direct),
                thread_priority: None,
            },
            None,
            Some(alloc::boxed::Box::new(|_| {})),
        )
        .map_err(|e| alloc::format!("{e}"))?;
    let name = "intr.thread_priority";
    kassert!(
        shell::sysctl_get(name).map_err(|e| e.msg)?.contains("t.shell.prio:"),
        "the pool source not listed"
    );
    ok("sysctl intr.thread_priority=t.shell.prio:60")?;
    kassert!(shell::sysctl_get(name).map_err(|e| e.msg)?.contains("t.shell.prio:60*"), "not shown as set");
    for cpu in 0..ncpus() {
        let before = runs.load(Ordering::SeqCst);
        arch::apic::send_ipi(arch::cpu::lapic_id_of(cpu), vector);
        kassert!(until(2000, || runs.load(Ordering::SeqCst) > before), "CPU {cpu}: the handler did not run");
        kassert_eq!(seen.load(Ordering::SeqCst), 60, "CPU {cpu}: the handler's priority");
    }
    let e = err("sysctl intr.thread_priority=t.shell.prio.direct:60")?;
    kassert!(e.contains("t.shell.prio.direct") && e.contains("direct"), "{e}");
    let e = err("sysctl intr.thread_priority=no.such.source:60")?;
    kassert!(e.contains("no.such.source"), "{e}");
    let e = err("sysctl intr.thread_priority=t.shell.prio:200")?;
    kassert!(e.contains("0..=127"), "{e}");
    ok("sysctl intr.thread_priority=t.shell.prio:default")?;
    kassert!(!shell::sysctl_get(name).map_err(|e| e.msg)?.contains("t.shell.prio:60"), "not reset");
    drop((pool, direct));
    Ok(())
}
ktest!(T_THREAD_PRI, "shell::sysctl::thread_priority", sysctl_thread_priority);
