//! The kernel command line (`-append`): space-separated `key=value` options, parsed into
//! [`Options`]. An unknown key, a malformed value or a key given twice is an error naming
//! the option; the kernel reports it (`@@ cmdline-error`) and exits with the failure status.
//! The options are listed in docs/PROTOCOL.md.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// What to do after boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunMode {
    /// The default scenario.
    Scenario,
    /// The in-kernel test suite.
    Tests,
    /// The benchmarks (`kernel/src/bench/`).
    Bench,
    /// The serial shell on COM1 (`kernel/src/shell/`), until `halt`.
    Shell,
    /// The real-time latency test (`kernel/src/rt.rs`): a periodic real-time thread per CPU,
    /// idle and under an interrupt flood.
    Rt,
    /// The torture run (`kernel/src/torture/`): random concurrent interrupt and lock load
    /// for `torture.ms` guest milliseconds, invariants checked all along.
    Torture,
    /// The cost run (`kernel/src/cost.rs`): guest instructions per NIC frame and per disk
    /// operation with the devices saturated, idle time left out.
    Cost,
}

/// What floods the CPUs in `run=rt`'s flood phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RtFlood {
    /// IPIs between the CPUs to a source whose handler spins (guest-only: deterministic).
    Ipi,
    /// The NIC (the host sending unpaced), the disk and the `edu` device, as fast as the
    /// guest takes them, with the IPI flood.
    Devices,
}

/// What an idle CPU does (`idle=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleMode {
    /// `sti; hlt`: the CPU sleeps until an interrupt (the default).
    Halt,
    /// Interrupts on, `pause`, interrupts off, look for work again: the CPU never halts
    /// (Linux's `idle=poll`). Under QEMU's TCG with `-icount` no vCPU is then ever idle, so
    /// the virtual clock advances only by executed instructions, never by a warp to the next
    /// timer computed by QEMU's main loop — a warp that the main loop can compute while a
    /// vCPU has just halted and before its instructions are counted, which makes two runs of
    /// one seed differ (`torture --sources guest` uses it; docs/logs/torture-determinism-*).
    Poll,
}

/// A deliberate failure, to test the host harness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HarnessCheck {
    /// Panic after boot.
    Panic,
    /// Hang after boot.
    Hang,
    /// Establish an interrupt source whose filter sleeps, and raise it (the diagnostic must
    /// name the source).
    FilterSleep,
}

/// An interrupt dispatch model, by name (the kernel maps it to `intr::Model`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelName {
    /// `direct`
    Direct,
    /// `dedicated`
    Dedicated,
    /// `pool`
    Pool,
    /// `pinned`
    Pinned,
}

/// Typed kernel options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// `run=`
    pub run: RunMode,
    /// `test.filter=`
    pub test_filter: String,
    /// `test.harness=`
    pub harness: Option<HarnessCheck>,
    /// `hz=`
    pub hz: u32,
    /// `scenario.ms=`
    pub scenario_ms: u64,
    /// `intr.model=direct|dedicated|pool|pinned`: the model for sources established without one.
    pub intr_model: ModelName,
    /// `lockcheck=on|off`: the lock-order/IPL checker (default: on for `run=tests`, off
    /// otherwise; at run time `sysctl kern.lockcheck`).
    pub lockcheck: Option<bool>,
    /// `lockstat=on|off`: lock statistics (default off, so the lock fast paths are taken; at
    /// run time `sysctl kern.lockstat=1`, as NetBSD's lockstat(8) enables its probes).
    pub lockstat: bool,
    /// `workload.serial=on|off`: the host pastes serial lines during the scenario.
    pub workload_serial: bool,
    /// `bench.filter=`
    pub bench_filter: String,
    /// `bench.samples=`
    pub bench_samples: usize,
    /// `bench.unit=`: what the TSC counts (the host knows, the kernel cannot tell).
    pub bench_unit: &'static str,
    /// `trace.records=16..1048576`: records kept per CPU by the event trace of a kernel
    /// built with it (ignored otherwise).
    pub trace_records: usize,
    /// `rt.period_us=50..100000`: the real-time threads' period.
    pub rt_period_us: u64,
    /// `rt.ms=10..60000`: how long each phase of `run=rt` lasts (guest milliseconds).
    pub rt_ms: u64,
    /// `torture.seed=`: the seed of the torture run's random choices.
    pub torture_seed: u64,
    /// `torture.ms=`: guest milliseconds of torture load (100..=3600000).
    pub torture_ms: u64,
    /// `rt.flood=ipi|devices`: what floods the CPUs in `run=rt`'s flood phase.
    pub rt_flood: RtFlood,
    /// `cost.frames=100..10000000`: NIC frames of `run=cost`'s `net` phase (the disk phase
    /// makes a quarter as many operations).
    pub cost_frames: u64,
    /// `workload.saturate=on|off`: the main job's NIC is sent unpaced and its disk threads
    /// keep the queue full.
    pub workload_saturate: bool,
    /// `idle=halt|poll`: what an idle CPU does.
    pub idle: IdleMode,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            run: RunMode::Scenario,
            test_filter: String::new(),
            harness: None,
            hz: 100,
            scenario_ms: 2000,
            intr_model: ModelName::Pool,
            lockcheck: None,
            lockstat: false,
            workload_serial: false,
            bench_filter: String::new(),
            bench_samples: 100_000,
            bench_unit: "tsc",
            trace_records: 16 * 1024,
            rt_period_us: 1000,
            rt_ms: 1000,
            torture_seed: 1,
            torture_ms: 2000,
            rt_flood: RtFlood::Ipi,
            cost_frames: 20_000,
            workload_saturate: false,
            idle: IdleMode::Halt,
        }
    }
}

/// A rejected option.
#[derive(Debug, PartialEq, Eq)]
pub struct CmdlineError {
    /// The key as written (the whole word if it has no `=`).
    pub option: String,
    /// Why it was rejected.
    pub msg: String,
}

fn err(option: &str, msg: &str) -> CmdlineError {
    CmdlineError { option: option.to_string(), msg: msg.to_string() }
}

fn number<T: core::str::FromStr + PartialOrd + Copy>(
    key: &str,
    v: &str,
    lo: T,
    hi: T,
) -> Result<T, CmdlineError> {
    match v.parse::<T>() {
        Ok(n) if n >= lo && n <= hi => Ok(n),
        _ => Err(err(key, "expected a number in range")),
    }
}

fn on_off(key: &str, v: &str) -> Result<bool, CmdlineError> {
    match v {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(err(key, "expected on or off")),
    }
}

/// The keys [`parse`] knows.
pub const KEYS: [&str; 21] = [
    "run",
    "test.filter",
    "test.harness",
    "hz",
    "scenario.ms",
    "intr.model",
    "lockcheck",
    "lockstat",
    "workload.serial",
    "bench.filter",
    "bench.samples",
    "bench.unit",
    "trace.records",
    "rt.period_us",
    "rt.ms",
    "torture.seed",
    "torture.ms",
    "rt.flood",
    "cost.frames",
    "workload.saturate",
    "idle",
];

/// Parses a command line. The first bad word is the error: no `=` (`expected key=value`),
/// an unknown key, a bad value, or a key seen before (`duplicate option`).
pub fn parse(line: &str) -> Result<Options, CmdlineError> {
    let mut o = Options::default();
    let mut seen: Vec<&str> = Vec::new();
    for word in line.split_ascii_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            return Err(err(word, "expected key=value"));
        };
        if seen.contains(&key) {
            return Err(err(key, "duplicate option"));
        }
        match key {
            "run" => {
                o.run = match value {
                    "scenario" => RunMode::Scenario,
                    "tests" => RunMode::Tests,
                    "bench" => RunMode::Bench,
                    "shell" => RunMode::Shell,
                    "rt" => RunMode::Rt,
                    "torture" => RunMode::Torture,
                    "cost" => RunMode::Cost,
                    _ => return Err(err(key, "expected scenario, tests, bench, shell, rt, torture or cost")),
                }
            }
            "test.filter" => o.test_filter = value.to_string(),
            "test.harness" => {
                o.harness = Some(match value {
                    "panic" => HarnessCheck::Panic,
                    "hang" => HarnessCheck::Hang,
                    "filter-sleep" => HarnessCheck::FilterSleep,
                    _ => return Err(err(key, "expected panic, hang or filter-sleep")),
                })
            }
            "hz" => o.hz = number(key, value, 10u32, 1000)?,
            "scenario.ms" => o.scenario_ms = number(key, value, 10u64, 60_000)?,
            "intr.model" => {
                o.intr_model = match value {
                    "direct" => ModelName::Direct,
                    "dedicated" => ModelName::Dedicated,
                    "pool" => ModelName::Pool,
                    "pinned" => ModelName::Pinned,
                    _ => return Err(err(key, "expected direct, dedicated, pool or pinned")),
                }
            }
            "lockcheck" => o.lockcheck = Some(on_off(key, value)?),
            "lockstat" => o.lockstat = on_off(key, value)?,
            "workload.serial" => o.workload_serial = on_off(key, value)?,
            "bench.filter" => o.bench_filter = value.to_string(),
            "bench.samples" => o.bench_samples = number(key, value, 1usize, 1_000_000)?,
            "bench.unit" => {
                o.bench_unit = match value {
                    "instructions" => "instructions",
                    "cycles" => "cycles",
                    "tsc" => "tsc",
                    _ => return Err(err(key, "expected instructions, cycles or tsc")),
                }
            }
            "trace.records" => o.trace_records = number(key, value, 16usize, 1 << 20)?,
            "rt.period_us" => o.rt_period_us = number(key, value, 50u64, 100_000)?,
            "rt.ms" => o.rt_ms = number(key, value, 10u64, 60_000)?,
            "torture.seed" => o.torture_seed = number(key, value, 0u64, u64::MAX)?,
            "torture.ms" => o.torture_ms = number(key, value, 100u64, 3_600_000)?,
            "rt.flood" => {
                o.rt_flood = match value {
                    "ipi" => RtFlood::Ipi,
                    "devices" => RtFlood::Devices,
                    _ => return Err(err(key, "expected ipi or devices")),
                }
            }
            "cost.frames" => o.cost_frames = number(key, value, 100u64, 10_000_000)?,
            "workload.saturate" => o.workload_saturate = on_off(key, value)?,
            "idle" => {
                o.idle = match value {
                    "halt" => IdleMode::Halt,
                    "poll" => IdleMode::Poll,
                    _ => return Err(err(key, "expected halt or poll")),
                }
            }
            _ => return Err(err(key, "unknown option")),
        }
        seen.push(key);
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_refused_naming_the_key() {
        let e = parse("run=scenario hz=100 run=tests").unwrap_err();
        assert_eq!(e, err("run", "duplicate option"));
        // Even with the same value.
        assert_eq!(parse("hz=100 hz=100").unwrap_err().option, "hz");
        assert!(parse("run=tests test.filter=a").is_ok());
    }

    #[test]
    fn errors_name_the_option() {
        assert_eq!(parse("nokey").unwrap_err(), err("nokey", "expected key=value"));
        assert_eq!(parse("x=1").unwrap_err(), err("x", "unknown option"));
        assert_eq!(parse("hz=5").unwrap_err().option, "hz");
        assert_eq!(parse("intr.model=fast").unwrap_err().option, "intr.model");
        assert_eq!(parse("torture.ms=5").unwrap_err().option, "torture.ms");
        assert_eq!(parse("torture.seed=x").unwrap_err().option, "torture.seed");
    }

    #[test]
    fn idle_mode() {
        assert_eq!(parse("").unwrap().idle, IdleMode::Halt);
        assert_eq!(parse("idle=poll").unwrap().idle, IdleMode::Poll);
        assert_eq!(parse("idle=halt").unwrap().idle, IdleMode::Halt);
        assert_eq!(parse("idle=mwait").unwrap_err(), err("idle", "expected halt or poll"));
    }

    #[test]
    fn torture_options() {
        let o = parse("run=torture torture.seed=4242 torture.ms=2000").unwrap();
        assert_eq!((o.run, o.torture_seed, o.torture_ms), (RunMode::Torture, 4242, 2000));
    }
}
