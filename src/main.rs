//! `ithreads`: set up the host, build the kernel, boot it in QEMU, run the
//! in-kernel tests or the scenario. See `ithreads --help`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};

use ithreads::harness::{self, Goal};
use ithreads::live::LiveView;
use ithreads::protocol::Event;
use ithreads::qemu::{self, Accel, BootConfig, BootReport, SerialInput, Source};
use ithreads::report::{self, ModelRun, ReportMeta};
use ithreads::workload::{self, HostCounters, JobResults, Model, Plan};
use ithreads::{cleanup, kbuild, setup};

#[derive(Parser)]
#[command(
    name = "ithreads",
    version,
    about = "Sets up the host, builds the ithreads kernel and boots it in QEMU \
             (no subcommand = `run`)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Boot with `run=scenario`: the main job (NIC, disk, serial and edu interrupts at once,
    /// the host sending the traffic) with a live view and a summary (the default).
    Run(RunArgs),
    /// Boot with `run=shell` and attach the terminal to the kernel's serial shell.
    Shell(ShellArgs),
    /// Run the in-kernel test suite (on 1, 2 and 4 CPUs unless --smp is given).
    Test(TestArgs),
    /// Boot with the given kernel command line and echo every serial line.
    Boot(BootArgs),
    /// Run the in-kernel benchmarks (TCG with -icount: figures are guest instructions).
    Bench(BenchArgs),
    /// Real-time wake-up latency per interrupt model, idle and under an interrupt flood
    /// (a cyclictest of our own; TCG with -icount: figures are guest instructions).
    Rt(RtArgs),
    /// Guest instructions per NIC frame and per disk operation with the devices saturated,
    /// idle time left out, and each source's CPU share: one vCPU, TCG with -icount.
    Cost(CostArgs),
    /// Boot with `run=torture` once per model: random concurrent interrupt and lock load
    /// under TCG -icount, invariants checked; ends with `torture: N interrupts, V violations`.
    Torture(TortureArgs),
}

/// Which models `rt` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ModelChoice {
    All,
    Direct,
    Dedicated,
    Pool,
    Pinned,
}

/// What floods the CPUs in `rt`'s flood phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum RtFloodChoice {
    Devices,
    Ipi,
}

#[derive(Args)]
struct RtArgs {
    /// The interrupt dispatch model, or all of them (one boot each).
    #[arg(long, value_enum, default_value = "all")]
    model: ModelChoice,
    /// Number of CPUs (a real-time thread on each).
    #[arg(long, default_value_t = 2, value_parser = setup::parse_smp)]
    smp: u32,
    /// Guest seconds of each phase (idle, then flood), 0.01..=60.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// The real-time threads' period in microseconds (50..=100000).
    #[arg(long, default_value_t = 1000)]
    period_us: u64,
    /// The flood: `devices` (NIC frames sent unpaced, the disk's queue kept full, edu
    /// interrupts, and the IPI flood) or `ipi` (guest-only, deterministic on one vCPU).
    #[arg(long, value_enum, default_value = "devices")]
    flood: RtFloodChoice,
    /// Boot a kernel built with the event trace and write each model's trace to FILE
    /// (with --model all: FILE with the model's name before its extension).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Accelerator: tcg counts instructions (-icount), kvm counts TSC cycles
    /// (default: kvm only with real hardware virtualization).
    #[arg(long, value_enum)]
    accel: Option<Accel>,
    /// Seconds before QEMU is killed, per boot.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

#[derive(Args)]
struct CostArgs {
    /// The interrupt dispatch model, or all of them.
    #[arg(long, value_enum, default_value = "all")]
    model: ModelChoice,
    /// NIC frames of the net phase (the disk phase makes a quarter as many operations).
    #[arg(long, default_value_t = ithreads::cost::FRAMES, value_parser = clap::value_parser!(u64).range(100..=10_000_000))]
    frames: u64,
    /// Also show the kernel's `@@ cost` records.
    #[arg(long, short)]
    verbose: bool,
    /// Boots per model (the spread is over them).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=20))]
    runs: u64,
    /// Seconds before QEMU is killed, per boot.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

/// Which interrupt sources torture drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum TortureSources {
    /// Only guest-generated sources (IPIs from every CPU, edu, the LAPIC timer, COM2):
    /// deterministic from the seed.
    Guest,
    /// The guest's, and the host-driven ones: NIC frames, disk I/O, COM1 input (arrival times
    /// depend on the host; the seed fixes the guest's own choices only).
    All,
}

/// A model, or every model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum TortureModel {
    Direct,
    Dedicated,
    Pool,
    Pinned,
    All,
}

#[derive(Args)]
struct TortureArgs {
    /// Number of CPUs.
    #[arg(long, default_value_t = 4, value_parser = setup::parse_smp)]
    smp: u32,
    /// Interrupt dispatch model, or `all` (one boot per model, each for --seconds).
    #[arg(long, value_enum, default_value = "all")]
    model: TortureModel,
    /// Guest seconds of load per model (10^9 guest instructions each, shared by every vCPU).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// Seed of the guest's random choices (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Interrupt sources.
    #[arg(long, value_enum, default_value = "all")]
    sources: TortureSources,
    /// Seconds of wall time per model before QEMU is killed (default: 300 + 300 per guest
    /// second).
    #[arg(long)]
    timeout: Option<u64>,
    /// Also show the kernel's other lines and QEMU's stderr.
    #[arg(long, short)]
    verbose: bool,
    /// Boot a kernel built with the event trace and write each model's trace to FILE
    /// (with --model all: FILE with the model's name before its extension).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Number of CPUs.
    #[arg(long, default_value_t = 4, value_parser = setup::parse_smp)]
    smp: u32,
    /// Accelerator (default: kvm only with real hardware virtualization).
    #[arg(long, value_enum)]
    accel: Option<Accel>,
    /// Seconds before QEMU is killed and the boot reported as a hang.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Also show the kernel's free-text lines and QEMU's stderr.
    #[arg(long, short)]
    verbose: bool,
    /// More kernel command-line options (`key=value ...`).
    #[arg(long, default_value = "")]
    append: String,
    /// Interrupt dispatch model (the kernel's `intr.model=`; default: the kernel's).
    #[arg(long, value_enum, conflicts_with = "compare")]
    model: Option<Model>,
    /// Run the main job once per model, print them side by side and write a report folder.
    #[arg(long)]
    compare: bool,
    /// --compare: cost boots per model (1 vCPU; the spread of instructions per frame is over
    /// them).
    #[arg(long, default_value_t = 3, requires = "compare", value_parser = clap::value_parser!(u64).range(1..=20))]
    cost_runs: u64,
    /// --compare: NIC frames per cost boot.
    #[arg(long, default_value_t = ithreads::cost::FRAMES, requires = "compare", value_parser = clap::value_parser!(u64).range(100..=10_000_000))]
    cost_frames: u64,
    /// --compare: guest seconds of each rt phase.
    #[arg(long, default_value_t = 0.5, requires = "compare")]
    rt_seconds: f64,
    /// --compare: vCPUs of the rt boots (1: under shared icount another vCPU's time slice
    /// would count in a wake-up's latency).
    #[arg(long, default_value_t = 1, requires = "compare", value_parser = setup::parse_smp)]
    rt_smp: u32,
    /// --compare: only the benchmarks whose name contains this (default: all).
    #[arg(long, requires = "compare")]
    bench_filter: Option<String>,
    /// Saturate the devices (the host sends frames unpaced, the disk's queue stays full)
    /// under TCG -icount, so rates are per guest second (always so with --compare).
    #[arg(long)]
    saturate: bool,
    /// The report folder of --compare (default: target/report/<UTC time>).
    #[arg(long, value_name = "DIR", requires = "compare")]
    out: Option<PathBuf>,
    /// Boot a kernel built with the event trace and write it to FILE as Chrome / Perfetto
    /// trace-event JSON (one track per CPU and one per thread).
    #[arg(long, value_name = "FILE", conflicts_with = "compare")]
    trace: Option<PathBuf>,
}

#[derive(Args)]
struct ShellArgs {
    /// Number of CPUs.
    #[arg(long, default_value_t = 4, value_parser = setup::parse_smp)]
    smp: u32,
    /// Interrupt dispatch model (the kernel's `intr.model=`; default: the kernel's).
    #[arg(long, value_enum)]
    model: Option<Model>,
    /// Accelerator (default: kvm only with real hardware virtualization).
    #[arg(long, value_enum)]
    accel: Option<Accel>,
    /// More kernel command-line options (`key=value ...`).
    #[arg(long, default_value = "")]
    append: String,
    /// Seconds before QEMU is killed.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
}

#[derive(Args)]
struct TestArgs {
    /// Number of CPUs (default: boot the suite on 1, 2 and 4 CPUs in turn).
    #[arg(long, value_parser = setup::parse_smp)]
    smp: Option<u32>,
    /// Accelerator (default: kvm only with real hardware virtualization).
    #[arg(long, value_enum)]
    accel: Option<Accel>,
    /// Run only the tests whose name contains PATTERN.
    #[arg(long, value_name = "PATTERN")]
    filter: Option<String>,
    /// Seconds before QEMU is killed and the boot reported as a hang (default: 120 for up
    /// to 2 CPUs, 60 more per CPU beyond).
    #[arg(long)]
    timeout: Option<u64>,
    /// Also show the kernel's free-text lines and QEMU's stderr.
    #[arg(long, short)]
    verbose: bool,
}

#[derive(Args)]
struct BootArgs {
    /// Number of CPUs.
    #[arg(long, default_value_t = 4, value_parser = setup::parse_smp)]
    smp: u32,
    /// Accelerator (default: kvm only with real hardware virtualization).
    #[arg(long, value_enum)]
    accel: Option<Accel>,
    /// The kernel command line.
    #[arg(long, default_value = "")]
    append: String,
    /// Seconds before QEMU is killed and the boot reported as a hang.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Boot a kernel built with the event trace and write it to FILE as Chrome / Perfetto
    /// trace-event JSON (one track per CPU and one per thread).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
}

#[derive(Args)]
struct BenchArgs {
    /// Number of CPUs (the benchmarks run on CPU 0; the others idle, except in the two-CPU
    /// mutex.handoff and in mutex.contended.throughput, which uses every CPU and is booted
    /// again on 1..N-1 CPUs for one figure per CPU count).
    #[arg(long, default_value_t = 1, value_parser = setup::parse_smp)]
    smp: u32,
    /// Run only the benchmarks whose name contains PATTERN.
    #[arg(long, value_name = "PATTERN")]
    filter: Option<String>,
    /// Also write the figures to FILE as JSON Lines, one record per figure.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Accelerator: tcg counts instructions (-icount), kvm counts TSC cycles
    /// (default: kvm only with real hardware virtualization).
    #[arg(long, value_enum)]
    accel: Option<Accel>,
    /// Samples per figure (the kernel's default is 100000).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    samples: Option<u32>,
    /// Seconds before QEMU is killed and the boot reported as a hang.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Also show the kernel's free-text lines and QEMU's stderr.
    #[arg(long, short)]
    verbose: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // SIGINT, SIGTERM, SIGHUP: kill QEMU, remove the disk image, exit 128 + signal.
    if let Err(e) = cleanup::install_signal_handlers() {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    let result = match cli.command.unwrap_or(Command::Run(cli.run)) {
        Command::Run(a) => run(a),
        Command::Shell(a) => shell(a),
        Command::Test(a) => test(a),
        Command::Boot(a) => boot(a),
        Command::Bench(a) => bench(a),
        Command::Rt(a) => rt(a),
        Command::Cost(a) => cost(a),
        Command::Torture(a) => torture(a),
    };
    // A QEMU killed by the signal thread looks like a failed run here: let that thread exit.
    cleanup::wait_if_interrupted();
    result.unwrap_or_else(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })
}

/// Why a command could not run (as opposed to a run that failed: exit code 1). `main`
/// prints it and exits with 2.
#[derive(Debug)]
enum CliError {
    Setup(setup::SetupError),
    Build(kbuild::BuildError),
    Qemu(qemu::QemuError),
    Filter(harness::FilterError),
    /// The host end of the NIC or the disk image could not be set up.
    Devices(std::io::Error),
    /// `--model` and `--append intr.model=` both chose the model.
    Workload(workload::ModelChosenTwice),
    /// The comparison report could not be written to the directory `dir`.
    WriteReport {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// Waiting for the child `binary` failed.
    Wait {
        binary: &'static str,
        source: std::io::Error,
    },
    /// The file `path` could not be created.
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file `path` could not be written.
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `--trace path`: the kernel printed no trace.
    NoTrace {
        path: PathBuf,
    },
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Setup(e) => e.fmt(f),
            CliError::Build(e) => e.fmt(f),
            CliError::Qemu(e) => e.fmt(f),
            CliError::Filter(e) => e.fmt(f),
            CliError::Devices(e) => write!(f, "cannot set up the NIC and the disk: {e}"),
            CliError::Workload(e) => e.fmt(f),
            CliError::WriteReport { dir, source } => {
                write!(f, "cannot write the report to {}: {source}", dir.display())
            }
            CliError::Wait { binary, source } => write!(f, "waiting for {binary}: {source}"),
            CliError::Create { path, source } => write!(f, "cannot create {}: {source}", path.display()),
            CliError::Write { path, source } => write!(f, "cannot write {}: {source}", path.display()),
            CliError::NoTrace { path } => write!(
                f,
                "trace: the kernel printed no trace (not a kernel built with the trace feature?); {} not written",
                path.display()
            ),
        }
    }
}

impl std::error::Error for CliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CliError::Setup(e) => Some(e),
            CliError::Build(e) => Some(e),
            CliError::Qemu(e) => Some(e),
            CliError::Filter(e) => Some(e),
            CliError::Workload(e) => Some(e),
            CliError::NoTrace { .. } => None,
            CliError::Devices(source)
            | CliError::WriteReport { source, .. }
            | CliError::Wait { source, .. }
            | CliError::Create { source, .. }
            | CliError::Write { source, .. } => Some(source),
        }
    }
}

impl From<setup::SetupError> for CliError {
    fn from(e: setup::SetupError) -> Self {
        CliError::Setup(e)
    }
}

impl From<kbuild::BuildError> for CliError {
    fn from(e: kbuild::BuildError) -> Self {
        CliError::Build(e)
    }
}

impl From<qemu::QemuError> for CliError {
    fn from(e: qemu::QemuError) -> Self {
        CliError::Qemu(e)
    }
}

impl From<harness::FilterError> for CliError {
    fn from(e: harness::FilterError) -> Self {
        CliError::Filter(e)
    }
}

/// Setup (tools, then accelerator), then the kernel build.
fn prepare(forced: Option<Accel>) -> Result<(Accel, PathBuf), CliError> {
    prepare_flavour(forced, kbuild::Flavour::Default)
}

fn prepare_flavour(forced: Option<Accel>, flavour: kbuild::Flavour) -> Result<(Accel, PathBuf), CliError> {
    setup::ensure_tools()?;
    let accel = setup::accel(forced);
    let kernel = kbuild::kernel_of(flavour)?;
    Ok((accel, kernel))
}

/// The kernel flavour for an optional `--trace FILE`.
fn flavour_for(trace: &Option<PathBuf>) -> kbuild::Flavour {
    if trace.is_some() {
        kbuild::Flavour::Traced
    } else {
        kbuild::Flavour::Default
    }
}

/// Converts a traced boot's dump and writes it to `path`; prints what it holds.
fn write_trace(path: &Path, c: &ithreads::timeline::Collector) -> Result<(), CliError> {
    if c.records().is_empty() && !c.is_complete() {
        return Err(CliError::NoTrace { path: path.to_path_buf() });
    }
    let (doc, conv) = c.to_chrome();
    let text = serde_json::to_string(&doc).expect("a JSON value with string keys serializes");
    std::fs::write(path, text).map_err(|source| CliError::Write { path: path.to_path_buf(), source })?;
    let wrapped: Vec<String> = c
        .rings()
        .iter()
        .filter(|(_, i)| i.overwritten > 0)
        .map(|(cpu, i)| format!("cpu{cpu} -{}", i.overwritten))
        .collect();
    println!(
        "trace: {} events, {} CPU tracks, {} thread tracks -> {}{}{}",
        conv.events,
        conv.cpus,
        conv.threads,
        path.display(),
        if c.is_complete() { "" } else { " (the dump was cut short)" },
        if wrapped.is_empty() { String::new() } else { format!(" (rings wrapped: {})", wrapped.join(", ")) }
    );
    if conv.truncated + conv.unfinished + conv.unmatched + c.bad_lines.len() > 0 {
        println!(
            "trace: {} ends before the common start, {} slices open at the end, {} unmatched ends, {} bad lines",
            conv.truncated,
            conv.unfinished,
            conv.unmatched,
            c.bad_lines.len()
        );
    }
    Ok(())
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn run(a: RunArgs) -> Result<ExitCode, CliError> {
    let (accel, kernel) = prepare_flavour(a.accel, flavour_for(&a.trace))?;
    if a.compare {
        return compare(&a, accel, &kernel);
    }
    let (report, run) = run_main_job(&a, accel, &kernel, a.model, "main job")?;
    print_other_results(&report);
    print!("{}", workload::summary(&run.results, &run.host));
    if run.ok() {
        println!("run: ok ({}, {:.2} s)", report.outcome, secs(report.elapsed));
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(f) = harness::boot_failure(&report, Goal::Scenario) {
        print!("{f}");
    }
    println!("run: FAILED");
    Ok(ExitCode::FAILURE)
}

/// Boots the main job once with `model`, showing the live view, and judges it.
fn run_main_job(
    a: &RunArgs,
    accel: Accel,
    kernel: &Path,
    model: Option<Model>,
    title: &str,
) -> Result<(BootReport, ModelRun), CliError> {
    let saturate = a.saturate || a.compare;
    let devices = workload::host_devices().map_err(CliError::Devices)?;
    let counters = Arc::new(HostCounters::default());
    let plan = Plan::default();
    let mut extra_args = devices.qemu_args.clone();
    let mut append = a.append.clone();
    if saturate {
        // Guest time, deterministic guest work: every rate is per guest second.
        if accel == Accel::Tcg {
            extra_args.extend(["-icount".to_string(), ithreads::bench::ICOUNT.to_string()]);
        }
        append = qemu::join_cmdline("workload.saturate=on", &append);
    }
    let cfg = BootConfig {
        smp: a.smp,
        accel: Some(accel),
        append: workload::cmdline("scenario", model, &append).map_err(CliError::Workload)?,
        extra_args,
        timeout: Duration::from_secs(a.timeout),
        input: workload::feeder(plan, devices.net.clone(), Arc::clone(&counters)),
    };
    println!("boot: {} CPUs, {accel}, cmdline {:?}, timeout {} s", cfg.smp, cfg.append, a.timeout);
    if devices.net.is_none() {
        println!("boot: no NIC peer in this host tool: no frames will be sent");
    }
    if a.verbose {
        let args = qemu::qemu_args(&cfg, accel, kernel);
        println!("boot: {} {}", qemu::QEMU, qemu::shell_words(&args));
    }
    let start = Instant::now();
    let verbose = a.verbose;
    let mut view = LiveView::new(title, plan, Arc::clone(&counters));
    let mut trace = a.trace.as_ref().map(|_| ithreads::timeline::Collector::new());
    let report = qemu::boot_elf(&cfg, accel, kernel, |source, line, event| {
        if let (Source::Serial, Some(c)) = (source, trace.as_mut()) {
            if c.feed(line) {
                return;
            }
        }
        let t = secs(start.elapsed());
        if let Some(e) = event {
            view.on_event(e);
        }
        let message = match (source, event) {
            (Source::Serial, Some(Event::Boot { cpus, hz, model, .. })) => {
                let model = model.as_deref().unwrap_or("-");
                Some(format!("boot: {cpus} CPUs online, hz {hz}, interrupt model {model} ({t:.2} s)"))
            }
            (Source::Serial, Some(e)) if workload::net_request(e).is_some() => match workload::net_request(e)
            {
                Some(Ok(r)) => Some(format!(
                    "net: guest asks for {} frames from {} at {} frames/s{} ({t:.2} s)",
                    r.count,
                    r.first,
                    r.rate,
                    if r.echo { ", echoed" } else { "" }
                )),
                _ => Some(format!("net: cannot read the guest's request: {line}")),
            },
            (Source::Serial, Some(e)) if workload::is_serial_ready(e) => {
                Some(format!("serial: guest ready, typing {} lines ({t:.2} s)", plan.serial_lines))
            }
            (Source::Serial, Some(Event::ScenarioDone)) => Some(format!("main job: done ({t:.2} s)")),
            (Source::Serial, Some(Event::Storm { source, on: true, rate })) => {
                Some(format!("storm: source {source} throttled at {rate} interrupts/s ({t:.2} s)"))
            }
            (Source::Serial, Some(Event::Storm { source, on: false, .. })) => {
                Some(format!("storm: source {source} is calm again ({t:.2} s)"))
            }
            (Source::Serial, Some(Event::Panic { cpu, msg })) => Some(format!("PANIC on cpu {cpu}: {msg}")),
            (Source::Serial, Some(Event::CmdlineError { option, msg })) => {
                Some(format!("cmdline error: option {option}: {msg}"))
            }
            (Source::Serial, Some(Event::Unknown(l))) => Some(format!("unknown protocol line: {l}")),
            (Source::Serial, Some(Event::Live { .. } | Event::Hist { .. } | Event::Result(_))) => None,
            (Source::Serial, Some(_)) if verbose => Some(line.to_string()),
            (Source::Serial, None) if verbose => Some(format!("  | {line}")),
            (Source::Stderr, _) if verbose => Some(format!("  qemu: {line}")),
            _ => None,
        };
        if let Some(m) = message {
            view.message(&m);
        }
    })?;
    view.finish();
    if let (Some(path), Some(c)) = (&a.trace, &trace) {
        write_trace(path, c)?;
    }
    let results = JobResults::from_events(&report.events);
    let host = counters.snapshot(&plan, devices.net.as_deref());
    drop(devices);
    let mut problems: Vec<String> = harness::boot_problem(&report, Goal::Scenario).into_iter().collect();
    problems.extend(workload::problems(&results, &host));
    if let (Some(want), Some(seen)) = (model, results.model.as_deref()) {
        if seen != want.as_str() {
            problems.push(format!("asked for interrupt model {want}, the kernel reports {seen}"));
        }
    }
    let run = ModelRun {
        model: model.map(|m| m.to_string()).or_else(|| results.model.clone()).unwrap_or_else(|| "-".into()),
        cmdline: cfg.append.clone(),
        results,
        host,
        problems,
        elapsed_s: secs(report.elapsed),
    };
    Ok((report, run))
}

/// The `@@ result` tables of scopes the summary does not show (cpu, lock, ...), one per scope.
fn print_other_results(report: &BootReport) {
    let scope_of = |r: &&[(String, String)]| {
        r.iter().find(|(k, _)| k == "scope").map(|(_, v)| v.clone()).unwrap_or_default()
    };
    let results: Vec<&[(String, String)]> = report
        .results()
        .into_iter()
        .filter(|r| !matches!(scope_of(r).as_str(), "source" | "workload"))
        .collect();
    let mut scopes: Vec<String> = Vec::new();
    for r in &results {
        let s = scope_of(r);
        if !scopes.contains(&s) {
            scopes.push(s);
        }
    }
    for scope in scopes {
        let group: Vec<&[(String, String)]> =
            results.iter().copied().filter(|r| scope_of(r) == scope).collect();
        let label = if scope.is_empty() { "results".to_string() } else { format!("results: {scope}") };
        println!("\n{label} ({} records):", group.len());
        print!("{}", harness::results_table(&group));
    }
    if !results.is_empty() {
        println!();
    }
}

/// `--compare`: per model, the cost boots (1 vCPU), the saturated main job, the rt boot, a
/// traced main job; one benchmark boot; the side-by-side table and the report folder
/// organised by the seeds' claims (`src/compare.rs`).
fn compare(a: &RunArgs, accel: Accel, kernel: &Path) -> Result<ExitCode, CliError> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let out = a.out.clone().unwrap_or_else(|| report::default_report_dir(now));
    std::fs::create_dir_all(&out).map_err(|source| CliError::WriteReport { dir: out.clone(), source })?;
    let timeout = Duration::from_secs(a.timeout);
    let mut problems: Vec<String> = Vec::new();
    if accel != Accel::Tcg {
        println!("compare: the figures are guest instructions: every boot runs under TCG with -icount");
    }
    println!(
        "
== cost: 1 vCPU, TCG -icount {}, {} frames, {} boots per model",
        ithreads::bench::ICOUNT,
        a.cost_frames,
        a.cost_runs
    );
    let (cost, cost_problems) =
        cost_boots(kernel, &Model::ALL, a.cost_frames, a.cost_runs, timeout, a.verbose)?;
    print!("{}", ithreads::cost::table(&cost));
    problems.extend(cost_problems);
    let mut runs = Vec::new();
    for (i, model) in Model::ALL.into_iter().enumerate() {
        let title = format!("model {model} ({} of {})", i + 1, Model::ALL.len());
        println!("\n== main job, {title}, saturated, TCG -icount");
        let untraced = RunArgs { trace: None, ..a.clone() };
        let (report, run) = run_main_job(&untraced, Accel::Tcg, kernel, Some(model), &title)?;
        if run.ok() {
            println!("{model}: ok ({:.1} s)", run.elapsed_s);
        } else {
            // What the kernel judged (its per-CPU and total result lines) and the boot's
            // failure, so that a failed compare says why.
            print_other_results(&report);
            if let Some(f) = harness::boot_failure(&report, Goal::Scenario) {
                print!("{f}");
            }
            println!("{model}: FAILED");
            for p in &run.problems {
                println!("  - {p}");
                problems.push(format!("main job {model}: {p}"));
            }
        }
        runs.push(run);
    }
    println!("\nmodels compared ({} CPUs, TCG -icount, devices saturated):", a.smp);
    print!("{}", report::compare_table(&runs));
    println!("\n== rt: {} vCPUs, {} guest s per phase, device flood", a.rt_smp, a.rt_seconds);
    let plan = RtPlan {
        smp: a.rt_smp,
        seconds: a.rt_seconds,
        period_us: 1000,
        flood: RtFloodChoice::Devices,
        timeout,
    };
    let (rt, rt_failed) = rt_boots(Accel::Tcg, kernel, &Model::ALL, &plan, None)?;
    print!("{}", ithreads::rt::table(&rt, "instructions"));
    if rt_failed {
        problems.push("rt: a model failed (above)".into());
    }
    println!("\n== bench: 1 vCPU, TCG -icount");
    let bcfg = ithreads::bench::config(1, Accel::Tcg, a.bench_filter.as_deref(), None, timeout)?;
    let breport = qemu::boot_elf(&bcfg, Accel::Tcg, kernel, |_, _, _| {})?;
    problems.extend(ithreads::bench::failure(&breport).into_iter().map(|f| format!("bench: {f}")));
    let bench = ithreads::bench::records(&breport);
    println!("bench: {} figures", bench.len());
    println!("\n== traces: one traced main job per model");
    let traced_kernel = kbuild::kernel_of(kbuild::Flavour::Traced)?;
    let mut traces = Vec::new();
    for model in Model::ALL {
        let file = format!("trace-{model}.json");
        let traced = RunArgs { trace: Some(out.join(&file)), verbose: false, ..a.clone() };
        let title = format!("traced {model}");
        let (report, run) = run_main_job(&traced, Accel::Tcg, &traced_kernel, Some(model), &title)?;
        if !report.exited_success() {
            problems.push(format!("traced run {model}: {}", report.outcome));
        }
        drop(run);
        let mut c = ithreads::timeline::Collector::new();
        for line in &report.serial_log {
            c.feed(line);
        }
        let mut kinds: std::collections::BTreeMap<String, u64> = Default::default();
        for r in c.records() {
            *kinds.entry(r.kind.name().to_string()).or_default() += 1;
        }
        traces.push(ithreads::compare::TraceSummary {
            model: model.to_string(),
            file,
            kinds: kinds.into_iter().collect(),
        });
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let meta = ReportMeta {
        command: format!("cargo run --release -- {}", qemu::shell_words(&args)),
        machine: report::machine_description(),
        accel: format!("tcg, -icount {}", ithreads::bench::ICOUNT),
        smp: a.smp,
        when: report::utc_timestamp(now),
    };
    let all = ithreads::compare::Compare { runs, cost, rt, rt_smp: a.rt_smp, bench, traces };
    println!("\n{}", ithreads::compare::headline(&all));
    let files = ithreads::compare::write(&out, &all, &meta)
        .map_err(|source| CliError::WriteReport { dir: out.clone(), source })?;
    println!("\nreport: {} ({} files: {})", out.display(), files.len(), file_names(&files));
    if problems.is_empty() {
        println!("compare: ok");
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            println!("  - {p}");
        }
        println!("compare: FAILED");
        Ok(ExitCode::FAILURE)
    }
}

fn file_names(files: &[PathBuf]) -> String {
    files
        .iter()
        .filter_map(|f| f.file_name())
        .map(|f| f.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `shell`: boots `run=shell` with the terminal attached. QEMU gets our stdin and stdout
/// directly (not the line-by-line supervisor), so the prompt and the guest's echo of each
/// typed character show at once; QEMU puts a terminal in raw mode and restores it at exit.
fn shell(a: ShellArgs) -> Result<ExitCode, CliError> {
    if !std::io::stdin().is_terminal() {
        return piped_shell(a);
    }
    let (accel, kernel) = prepare(a.accel)?;
    let cfg = BootConfig {
        smp: a.smp,
        accel: Some(accel),
        append: workload::cmdline("shell", a.model, &a.append).map_err(CliError::Workload)?,
        extra_args: Vec::new(),
        timeout: Duration::from_secs(a.timeout),
        input: SerialInput::Inherit,
    };
    let args = qemu::qemu_args(&cfg, accel, &kernel);
    qemu::check_memory(&args)?;
    println!(
        "shell: {} CPUs, {accel}, cmdline {:?}; `help` lists the commands, `halt` ends (killed after {} s)",
        cfg.smp, cfg.append, a.timeout
    );
    let mut cmd = Process::new(qemu::QEMU);
    cmd.args(&args).stdin(Stdio::inherit()).stdout(Stdio::inherit()).stderr(Stdio::inherit());
    // It reads the terminal: not in a process group of its own (a background group may not).
    cleanup::prepare_child(&mut cmd, false);
    let mut child = cmd.spawn().map_err(|source| qemu::QemuError::Run { binary: qemu::QEMU, source })?;
    let listed = cleanup::register_child(child.id(), false);
    let deadline = Instant::now() + cfg.timeout;
    let status = loop {
        match child.try_wait().map_err(|source| CliError::Wait { binary: qemu::QEMU, source })? {
            Some(status) => break Some(status),
            None if Instant::now() >= deadline => break None,
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    drop(listed);
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        if std::io::stdin().is_terminal() {
            // QEMU was killed in raw mode: give the terminal back.
            let _ = Process::new("stty").arg("sane").stdin(Stdio::inherit()).status();
        }
        println!("\nshell: no exit within {} s; qemu was killed", a.timeout);
        return Ok(ExitCode::FAILURE);
    };
    println!();
    match status.code() {
        Some(qemu::EXIT_SUCCESS) => {
            println!("shell: the kernel halted");
            Ok(ExitCode::SUCCESS)
        }
        code => {
            println!(
                "shell: qemu exited with {}",
                code.map_or_else(|| status.to_string(), |c| format!("status {c}"))
            );
            if accel == Accel::Kvm && code != Some(qemu::EXIT_FAILURE) {
                println!("hint: QEMU failed under KVM (this host's KVM may refuse what the guest needs); --accel tcg works everywhere");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
/// `shell` with a pipe or a file as stdin: QEMU's serial input is fed from our stdin only
/// once the kernel prints `@@ shell-ready` (bytes sent earlier would reach a UART that is not
/// listening yet), and at the end of our input the host types `halt`. Serial output is
/// printed line by line.
fn piped_shell(a: ShellArgs) -> Result<ExitCode, CliError> {
    let (accel, kernel) = prepare(a.accel)?;
    let input = SerialInput::feeder(|mut qemu_in, events| {
        use std::io::{Read, Write};
        if !events.iter().any(|e| matches!(&e, Event::Unknown(l) if l == "@@ shell-ready")) {
            return;
        }
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        let mut last = b'\n';
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    last = buf[n - 1];
                    if qemu_in.write_all(&buf[..n]).and_then(|_| qemu_in.flush()).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let end: &[u8] = if last == b'\n' || last == b'\r' { b"halt\n" } else { b"\nhalt\n" };
        let _ = qemu_in.write_all(end).and_then(|_| qemu_in.flush());
    });
    let cfg = BootConfig {
        smp: a.smp,
        accel: Some(accel),
        append: workload::cmdline("shell", a.model, &a.append).map_err(CliError::Workload)?,
        extra_args: Vec::new(),
        timeout: Duration::from_secs(a.timeout),
        input,
    };
    println!(
        "shell: {} CPUs, {accel}, cmdline {:?}; input from a pipe: typed after @@ shell-ready, then `halt` \
         (killed after {} s)",
        cfg.smp, cfg.append, a.timeout
    );
    let report = qemu::boot_elf(&cfg, accel, &kernel, |source, line, _| match source {
        Source::Serial => println!("{line}"),
        Source::Stderr => eprintln!("qemu: {line}"),
    })?;
    if report.exited_success() {
        println!("shell: the kernel halted");
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(f) = harness::boot_failure(&report, Goal::Exit) {
        print!("{f}");
    }
    println!("shell: {}", report.outcome);
    Ok(ExitCode::FAILURE)
}

fn test(a: TestArgs) -> Result<ExitCode, CliError> {
    let filter = harness::filter_option(a.filter.as_deref())?;
    let (accel, _kernel) = prepare(a.accel)?;
    let base = BootConfig {
        smp: 1,
        accel: Some(accel),
        append: filter,
        extra_args: Vec::new(),
        timeout: qemu::DEFAULT_TIMEOUT,
        input: Default::default(),
    };
    let smps = match a.smp {
        Some(n) => vec![n],
        None => vec![1, 2, 4],
    };
    let report = harness::run_suites(&base, &smps, a.timeout.map(Duration::from_secs), a.verbose);
    if !report.success() {
        println!("\nfailures:");
        for b in &report.boots {
            for t in b.failed_tests() {
                println!("  [smp {}] {}", t.smp, t.name);
            }
            if let Some(f) = &b.failure {
                println!("  {}", f.lines().next().unwrap_or(""));
            }
        }
    }
    println!("{}", report.totals_line());
    if let Some(none) = harness::no_test_matched(&report, a.filter.as_deref()) {
        println!("{none}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(if report.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn boot(a: BootArgs) -> Result<ExitCode, CliError> {
    let (accel, kernel) = prepare_flavour(a.accel, flavour_for(&a.trace))?;
    let cfg = BootConfig {
        smp: a.smp,
        accel: Some(accel),
        append: a.append,
        extra_args: Vec::new(),
        timeout: Duration::from_secs(a.timeout),
        input: Default::default(),
    };
    let args = qemu::qemu_args(&cfg, accel, &kernel);
    println!("boot: {} {}", qemu::QEMU, qemu::shell_words(&args));
    let mut trace = a.trace.as_ref().map(|_| ithreads::timeline::Collector::new());
    let report = qemu::boot_elf(&cfg, accel, &kernel, |source, line, _| match source {
        Source::Serial => {
            if !trace.as_mut().is_some_and(|c| c.feed(line)) {
                println!("{line}");
            }
        }
        Source::Stderr => eprintln!("{line}"),
    })?;
    if let (Some(path), Some(c)) = (&a.trace, &trace) {
        write_trace(path, c)?;
    }
    if let Some(addrs) = report.backtrace() {
        println!("backtrace:");
        for line in harness::format_backtrace(&report.kernel, addrs) {
            println!("  {line}");
        }
    }
    println!("boot: {} after {:.2} s", report.outcome, secs(report.elapsed));
    if let Some(hint) = harness::kvm_hint(&report) {
        println!("{hint}");
    }
    Ok(if report.exited_success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn models_of(choice: ModelChoice) -> Vec<Model> {
    match choice {
        ModelChoice::All => Model::ALL.to_vec(),
        ModelChoice::Direct => vec![Model::Direct],
        ModelChoice::Dedicated => vec![Model::Dedicated],
        ModelChoice::Pool => vec![Model::Pool],
        ModelChoice::Pinned => vec![Model::Pinned],
    }
}

/// `runs` cost boots per model (one vCPU, TCG with icount); per model its runs, and every
/// problem seen (named by model and run).
fn cost_boots(
    kernel: &Path,
    models: &[Model],
    frames: u64,
    runs: u64,
    timeout: Duration,
    verbose: bool,
) -> Result<(Vec<Vec<ithreads::cost::CostRun>>, Vec<String>), CliError> {
    let mut all = Vec::new();
    let mut problems = Vec::new();
    for m in models {
        let mut mine = Vec::new();
        for k in 0..runs {
            let devices = workload::host_devices().map_err(CliError::Devices)?;
            let counters = Arc::new(HostCounters::default());
            let append = ithreads::cost::cmdline(m.as_str(), frames);
            let cfg = ithreads::cost::config(Accel::Tcg, append, &devices, Arc::clone(&counters), timeout);
            let report = qemu::boot_elf(&cfg, Accel::Tcg, kernel, |source, line, _| {
                // The kernel's own diagnostics, and with --verbose its records.
                if source == Source::Serial
                    && (line.starts_with("cost:") || (verbose && line.starts_with("@@ cost")))
                {
                    println!("  {line}");
                }
            })?;
            drop(devices);
            let run = ithreads::cost::from_report(&report);
            let mut p: Vec<String> = harness::boot_problem(&report, Goal::Exit).into_iter().collect();
            p.extend(run.problems());
            let errors = counters.errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
            p.extend(errors.into_iter().map(|e| format!("host: {e}")));
            println!(
                "cost: {m} run {}/{runs}: {} instructions per frame, {} per disk operation ({:.1} s){}",
                k + 1,
                run.per_frame().map_or("-".into(), |x| x.to_string()),
                run.per_disk_op().map_or("-".into(), |x| x.to_string()),
                secs(report.elapsed),
                if p.is_empty() { String::new() } else { format!(" FAILED: {}", p.join("; ")) }
            );
            problems.extend(p.into_iter().map(|p| format!("cost {m} run {}: {p}", k + 1)));
            mine.push(run);
        }
        all.push(mine);
    }
    Ok((all, problems))
}

fn cost(a: CostArgs) -> Result<ExitCode, CliError> {
    setup::ensure_tools()?;
    let kernel = kbuild::kernel()?;
    let models = models_of(a.model);
    println!(
        "cost: 1 vCPU, TCG -icount {}, {} frames and {} disk operations per boot, {} boot(s) per model",
        ithreads::bench::ICOUNT,
        a.frames,
        (a.frames / 4).max(1),
        a.runs
    );
    let (runs, problems) =
        cost_boots(&kernel, &models, a.frames, a.runs, Duration::from_secs(a.timeout), a.verbose)?;
    print!("{}", ithreads::cost::table(&runs));
    if problems.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        println!("cost: FAILED");
        Ok(ExitCode::FAILURE)
    }
}

/// `base` for one model's trace: as is for a single model, else with `-<model>` before the
/// extension (`t.json` -> `t-pool.json`).
fn trace_path_for(base: &Path, model: Model, several: bool) -> PathBuf {
    if !several {
        return base.to_path_buf();
    }
    let stem = base.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match base.extension() {
        Some(e) => format!("{stem}-{model}.{}", e.to_string_lossy()),
        None => format!("{stem}-{model}"),
    };
    base.with_file_name(name)
}

/// What `rt` boots: its options, whichever command asks.
struct RtPlan {
    smp: u32,
    seconds: f64,
    period_us: u64,
    flood: RtFloodChoice,
    timeout: Duration,
}

/// One `run=rt` boot per model; with `trace`, a traced kernel and each model's trace written
/// (`trace_path_for`). Returns the runs and whether any failed.
fn rt_boots(
    accel: Accel,
    kernel: &Path,
    models: &[Model],
    plan: &RtPlan,
    trace: Option<&Path>,
) -> Result<(Vec<ithreads::rt::RtRun>, bool), CliError> {
    let mut runs = Vec::new();
    let mut failed = false;
    let flood = match plan.flood {
        RtFloodChoice::Devices => "devices",
        RtFloodChoice::Ipi => "ipi",
    };
    for &m in models {
        let devices = match plan.flood {
            RtFloodChoice::Devices => Some(workload::host_devices().map_err(CliError::Devices)?),
            RtFloodChoice::Ipi => None,
        };
        let append = ithreads::rt::cmdline(m.as_str(), plan.seconds, plan.period_us, flood);
        let cfg = ithreads::rt::config(plan.smp, accel, append, plan.timeout, devices.as_ref());
        println!("rt: {} CPUs, {}, cmdline {:?}", cfg.smp, ithreads::bench::accel_label(accel), cfg.append);
        let mut collector = trace.map(|_| ithreads::timeline::Collector::new());
        let report = qemu::boot_elf(&cfg, accel, kernel, |source, line, _| {
            if let (Source::Serial, Some(c)) = (source, collector.as_mut()) {
                if c.feed(line) {
                    return;
                }
            }
            if source == Source::Serial && line.starts_with("@@ rt-config") {
                println!("  {line}");
            }
        })?;
        drop(devices);
        if let (Some(base), Some(c)) = (trace, &collector) {
            write_trace(&trace_path_for(base, m, models.len() > 1), c)?;
        }
        let run = ithreads::rt::from_report(&report);
        if let Some(f) = harness::boot_failure(&report, Goal::Exit) {
            failed = true;
            println!("rt: {} FAILED\n{f}", m.as_str());
        } else if !run.problems().is_empty() {
            failed = true;
            println!("rt: {} FAILED: {}", m.as_str(), run.problems().join("; "));
            print!("{}", harness::report_tail(&report, 20));
        }
        runs.push(run);
    }
    Ok((runs, failed))
}

fn rt(a: RtArgs) -> Result<ExitCode, CliError> {
    let (accel, kernel) = prepare_flavour(a.accel, flavour_for(&a.trace))?;
    let models = models_of(a.model);
    let unit = ithreads::bench::unit(accel);
    let plan = RtPlan {
        smp: a.smp,
        seconds: a.seconds,
        period_us: a.period_us,
        flood: a.flood,
        timeout: Duration::from_secs(a.timeout),
    };
    let (runs, failed) = rt_boots(accel, &kernel, &models, &plan, a.trace.as_deref())?;
    print!("{}", ithreads::rt::table(&runs, unit));
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn bench(a: BenchArgs) -> Result<ExitCode, CliError> {
    let (accel, kernel) = prepare(a.accel)?;
    let timeout = Duration::from_secs(a.timeout);
    let cfg = ithreads::bench::config(a.smp, accel, a.filter.as_deref(), a.samples, timeout)?;
    println!(
        "bench: {} CPUs, accel {}, unit {}, cmdline {:?}",
        cfg.smp,
        ithreads::bench::accel_label(accel),
        ithreads::bench::unit(accel),
        cfg.append
    );
    let verbose = a.verbose;
    let boot = |cfg: &BootConfig| {
        if verbose {
            let args = qemu::qemu_args(cfg, accel, &kernel);
            println!("bench: {} {}", qemu::QEMU, qemu::shell_words(&args));
        }
        qemu::boot_elf(cfg, accel, &kernel, |source, line, event| match (source, event) {
            (Source::Serial, Some(Event::Bench { .. })) if verbose => println!("{line}"),
            (Source::Serial, Some(Event::Panic { cpu, msg })) => println!("PANIC on cpu {cpu}: {msg}"),
            (Source::Serial, Some(Event::CmdlineError { option, msg })) => {
                println!("cmdline error: option {option}: {msg}");
            }
            (Source::Serial, Some(Event::Unknown(l))) => println!("unknown protocol line: {l}"),
            (Source::Serial, None) if verbose => println!("  | {line}"),
            (Source::Stderr, _) if verbose => println!("  qemu: {line}"),
            _ => {}
        })
    };
    let report = boot(&cfg)?;
    let mut failures: Vec<String> = ithreads::bench::failure(&report).into_iter().collect();
    let mut elapsed = report.elapsed;
    // `mutex.contended.throughput` uses every CPU of its boot: one more boot per smaller CPU
    // count gives its figure for each of 1..=N CPUs.
    let mut sweep = Vec::new();
    for smp in ithreads::bench::sweep_smps(a.smp, a.filter.as_deref()) {
        let per_smp = Some(ithreads::bench::PER_SMP);
        let cfg = ithreads::bench::config(smp, accel, per_smp, a.samples, timeout)?;
        println!("bench: {} again on {smp} CPU{}", ithreads::bench::PER_SMP, if smp == 1 { "" } else { "s" });
        let r = boot(&cfg)?;
        failures.extend(ithreads::bench::failure(&r));
        elapsed += r.elapsed;
        sweep.extend(ithreads::bench::records(&r));
    }
    let records = ithreads::bench::merge(ithreads::bench::records(&report), sweep);
    if records.is_empty() {
        println!("\nno figures");
    } else {
        let unit = &records[0].unit;
        println!(
            "\n{} figures ({unit}; baseline.empty is the measurement loop, the others are net of it; \
             mutex.handoff and mutex.contended.throughput count every CPU's instructions):",
            records.len()
        );
        print!("{}", ithreads::bench::table(&records));
        for bench in ithreads::bench::RATES {
            let rates = ithreads::bench::rate_vs_direct(&records, bench);
            if rates.is_empty() {
                continue;
            }
            let list: Vec<String> = rates
                .iter()
                .map(|(m, smp, x)| {
                    format!(
                        "{m} {x:.2}{}",
                        if *smp == a.smp { String::new() } else { format!(" (smp {smp})") }
                    )
                })
                .collect();
            println!(
                "(vs_direct is the median over direct's; {bench} as a rate relative to direct: {})",
                list.join(", ")
            );
        }
    }
    if let Some(path) = &a.json {
        let file =
            std::fs::File::create(path).map_err(|source| CliError::Create { path: path.clone(), source })?;
        ithreads::bench::write_json_lines(std::io::BufWriter::new(file), &records)
            .map_err(|source| CliError::Write { path: path.clone(), source })?;
        println!("bench: {} records written to {}", records.len(), path.display());
    }
    if failures.is_empty() {
        println!("bench: ok ({}, {:.2} s)", report.outcome, secs(elapsed));
        Ok(ExitCode::SUCCESS)
    } else {
        for f in &failures {
            print!("{f}");
        }
        println!("bench: FAILED");
        Ok(ExitCode::FAILURE)
    }
}

fn torture(a: TortureArgs) -> Result<ExitCode, CliError> {
    use ithreads::torture;
    setup::ensure_tools()?;
    let kernel = kbuild::kernel_of(flavour_for(&a.trace))?;
    let seed = a.seed.unwrap_or_else(|| {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64 % 1_000_000_007)
    });
    let models: Vec<Model> = match a.model {
        TortureModel::Direct => vec![Model::Direct],
        TortureModel::Dedicated => vec![Model::Dedicated],
        TortureModel::Pool => vec![Model::Pool],
        TortureModel::Pinned => vec![Model::Pinned],
        TortureModel::All => Model::ALL.to_vec(),
    };
    let timeout = Duration::from_secs(a.timeout.unwrap_or(300 + 300 * a.seconds));
    let sources = match a.sources {
        TortureSources::Guest => "guest",
        TortureSources::All => "all",
    };
    println!(
        "torture: {} CPUs, models {}, {} guest s each, seed {seed}, sources {sources}, TCG -icount {}",
        a.smp,
        models.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(","),
        a.seconds,
        if a.sources == TortureSources::All { torture::ICOUNT_HOST } else { ithreads::bench::ICOUNT }
    );
    let tty = std::io::stdout().is_terminal();
    let total_ms = a.seconds * 1000;
    let mut results = Vec::new();
    let several = models.len() > 1;
    for model in models {
        let (cfg, host) = match a.sources {
            TortureSources::Guest => (torture::config(a.smp, model, a.seconds, seed, timeout), None),
            TortureSources::All => {
                let (cfg, host) = torture::config_with_host(a.smp, model, a.seconds, seed, timeout)
                    .map_err(CliError::Devices)?;
                (cfg, Some(host))
            }
        };
        let mut collector = a.trace.as_ref().map(|_| ithreads::timeline::Collector::new());
        if a.verbose {
            println!("torture: {}", torture::command(&cfg, &kernel));
        }
        let verbose = a.verbose;
        let name = model.as_str();
        let report = qemu::boot_elf(&cfg, Accel::Tcg, &kernel, |source, line, event| {
            if let (Source::Serial, Some(c)) = (source, collector.as_mut()) {
                if c.feed(line) {
                    return;
                }
            }
            match (source, event) {
                (Source::Serial, _) if torture::progress(line).is_some() => {
                    let p = torture::progress(line).expect("checked");
                    let text = format!(
                    "torture: {name:9} {} {:>5}/{total_ms} guest ms, {} interrupts ({}/guest s), {} violations",
                    torture::bar(p.ms, total_ms, 20),
                    p.ms.min(total_ms),
                    p.interrupts,
                    p.rate,
                    p.violations
                );
                    if tty {
                        print!("\r{text}");
                        let _ = std::io::Write::flush(&mut std::io::stdout());
                    } else {
                        println!("{text}");
                    }
                }
                (Source::Serial, _) if torture::violation(line).is_some() => {
                    if tty {
                        println!();
                    }
                    println!("VIOLATION {}", torture::violation(line).expect("checked"));
                }
                (Source::Serial, _) if line.starts_with("@@ torture-stall") => {
                    if tty {
                        println!();
                    }
                    println!("  {line}");
                    if let Some(addrs) = torture::stall_frames(line) {
                        for l in harness::format_backtrace(&kernel, &addrs) {
                            println!("    {l}");
                        }
                    }
                }
                (Source::Serial, _)
                    if line.starts_with("@@ torture-heartbeat")
                        || line.starts_with("@@ torture-diag")
                        || line.starts_with("@@ torture-heap")
                        || line.starts_with("@@ torture-edu")
                        || line.starts_with("@@ torture-host")
                        || line.starts_with("@@ torture-timer")
                        || line.starts_with("@@ torture-com2")
                        || line.starts_with("@@ torture-backlog")
                        || line.starts_with("@@ torture-summary") =>
                {
                    if tty {
                        println!();
                    }
                    println!("  {line}");
                }
                (Source::Serial, _) if line.starts_with("@@ torture-source") && verbose => {
                    println!("  {line}")
                }
                (Source::Serial, Some(Event::Panic { cpu, msg })) => println!("PANIC on cpu {cpu}: {msg}"),
                (Source::Serial, None) if verbose => println!("  | {line}"),
                (Source::Stderr, _) if verbose => println!("  qemu: {line}"),
                _ => {}
            }
        })?;
        if let (Some(base), Some(c)) = (&a.trace, &collector) {
            write_trace(&trace_path_for(base, model, several), c)?;
        }
        let r = torture::judge(model, &report);
        if let Some(h) = &host {
            let t = h.sent();
            println!(
                "torture: {name}: host sent {} frames ({} asked for), typed {} lines{}",
                t.frames_sent,
                t.frames_requested,
                t.serial_lines_sent,
                if t.errors.is_empty() {
                    String::new()
                } else {
                    format!(" (after QEMU ended: {})", t.errors.join("; "))
                }
            );
        }
        if let Some(why) = &r.boot_failure {
            println!("VIOLATION model={name} what=boot source=- cpu=- seed={seed}: {why}");
            if let Some(addrs) = report.backtrace() {
                for l in harness::format_backtrace(&report.kernel, addrs) {
                    println!("  {l}");
                }
            }
            for l in report.serial_log.iter().rev().take(20).collect::<Vec<_>>().into_iter().rev() {
                println!("  | {l}");
            }
        }
        match &r.summary {
            Some(s) => println!(
                "torture: {name}: {} interrupts delivered ({} raised, {} merged, {} handler runs), hash {}, heap {} -> {} bytes, {} violations, {:.1} s",
                s.delivered,
                s.raised,
                s.merged,
                s.handled,
                s.hash,
                s.heap_base,
                s.heap_end,
                r.violations,
                secs(r.elapsed)
            ),
            None => println!("torture: {name}: no summary, {} violations, {:.1} s", r.violations, secs(r.elapsed)),
        }
        results.push(r);
    }
    let line = torture::last_line(&results);
    let bad = results.iter().any(|r| r.violations > 0);
    if bad {
        println!("torture: FAILED; reproduce with: cargo run --release -- torture --smp {} --model {} --seconds {} --seed {seed} --sources {sources}",
            a.smp,
            match a.model { TortureModel::All => "all", _ => results[0].model.as_str() },
            a.seconds);
    }
    println!("{line}");
    Ok(if bad { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
