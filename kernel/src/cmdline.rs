//! The kernel command line (`-append`): space-separated `key=value` options, parsed by the
//! portable parser `parse::cmdline` (crates/parse, fuzzed on the host) into [`Options`]. An
//! unknown key, a malformed value or a key given twice is an error naming the option; the
//! kernel reports it (`@@ cmdline-error`) and exits with the failure status. The options are
//! listed in docs/PROTOCOL.md.

use alloc::string::String;

pub use ::parse::cmdline::{CmdlineError, HarnessCheck, IdleMode, RtFlood, RunMode};

/// Typed kernel options (`parse::cmdline::Options` with the interrupt model as
/// `intr::Model`).
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
    pub intr_model: intr::Model,
    /// `lockcheck=on|off`: the lock-order/IPL checker (default: on for `run=tests`, off
    /// otherwise; at run time `sysctl kern.lockcheck`).
    pub lockcheck: Option<bool>,
    /// `lockstat=on|off`: lock statistics (default off; at run time `sysctl kern.lockstat`).
    pub lockstat: bool,
    /// `workload.serial=on|off`: the host pastes serial lines during the scenario.
    pub workload_serial: bool,
    /// `bench.filter=`
    pub bench_filter: String,
    /// `bench.samples=`
    pub bench_samples: usize,
    /// `bench.unit=`: what the TSC counts (the host knows, the kernel cannot tell).
    pub bench_unit: &'static str,
    /// `trace.records=`: records kept per CPU by the event trace (a `trace` build only).
    pub trace_records: usize,
    /// `rt.period_us=`
    pub rt_period_us: u64,
    /// `rt.ms=`
    pub rt_ms: u64,
    /// `torture.seed=`
    pub torture_seed: u64,
    /// `torture.ms=`: guest milliseconds of torture load.
    pub torture_ms: u64,
    /// `rt.flood=`
    pub rt_flood: RtFlood,
    /// `cost.frames=`
    pub cost_frames: u64,
    /// `workload.saturate=`
    pub workload_saturate: bool,
    /// `idle=halt|poll`: what an idle CPU does.
    pub idle: IdleMode,
}

impl From<::parse::cmdline::Options> for Options {
    fn from(o: ::parse::cmdline::Options) -> Self {
        use ::parse::cmdline::ModelName;
        Options {
            run: o.run,
            test_filter: o.test_filter,
            harness: o.harness,
            hz: o.hz,
            scenario_ms: o.scenario_ms,
            intr_model: match o.intr_model {
                ModelName::Direct => intr::Model::Direct,
                ModelName::Dedicated => intr::Model::Dedicated,
                ModelName::Pool => intr::Model::Pool,
                ModelName::Pinned => intr::Model::Pinned,
            },
            lockcheck: o.lockcheck,
            lockstat: o.lockstat,
            workload_serial: o.workload_serial,
            bench_filter: o.bench_filter,
            bench_samples: o.bench_samples,
            bench_unit: o.bench_unit,
            trace_records: o.trace_records,
            rt_period_us: o.rt_period_us,
            rt_ms: o.rt_ms,
            torture_seed: o.torture_seed,
            torture_ms: o.torture_ms,
            rt_flood: o.rt_flood,
            cost_frames: o.cost_frames,
            workload_saturate: o.workload_saturate,
            idle: o.idle,
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        ::parse::cmdline::Options::default().into()
    }
}

/// Parses a command line (`parse::cmdline::parse`).
pub fn parse(line: &str) -> Result<Options, CmdlineError> {
    ::parse::cmdline::parse(line).map(Options::from)
}
