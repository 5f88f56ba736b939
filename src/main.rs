//! `ithreads`: set up the host, build the kernel, boot it in QEMU, run the
//! in-kernel tests or the scenario. See `ithreads --help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use ithreads::harness::{self, Goal};
use ithreads::protocol::Event;
use ithreads::qemu::{self, Accel, BootConfig, Source};
use ithreads::{kbuild, setup};

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
    /// Boot with `run=scenario` and show the scenario's results (the default).
    Run(RunArgs),
    /// Run the in-kernel test suite (on 1, 2 and 4 CPUs unless --smp is given).
    Test(TestArgs),
    /// Boot with the given kernel command line and echo every serial line.
    Boot(BootArgs),
    /// Run the in-kernel benchmarks (TCG with -icount: figures are guest instructions).
    Bench(BenchArgs),
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Number of CPUs.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=255))]
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
}

#[derive(Args)]
struct TestArgs {
    /// Number of CPUs (default: boot the suite on 1, 2 and 4 CPUs in turn).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=255))]
    smp: Option<u32>,
    /// Accelerator (default: kvm only with real hardware virtualization).
    #[arg(long, value_enum)]
    accel: Option<Accel>,
    /// Run only the tests whose name contains PATTERN.
    #[arg(long, value_name = "PATTERN")]
    filter: Option<String>,
    /// Seconds before QEMU is killed and the boot reported as a hang.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Also show the kernel's free-text lines and QEMU's stderr.
    #[arg(long, short)]
    verbose: bool,
}

#[derive(Args)]
struct BootArgs {
    /// Number of CPUs.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=255))]
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
}

#[derive(Args)]
struct BenchArgs {
    /// Number of CPUs (the benchmarks run on CPU 0; the others idle, except in the two-CPU
    /// mutex.handoff and in mutex.contended.throughput, which uses every CPU and is booted
    /// again on 1..N-1 CPUs for one figure per CPU count).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=255))]
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
    let result = match cli.command.unwrap_or(Command::Run(cli.run)) {
        Command::Run(a) => run(a),
        Command::Test(a) => test(a),
        Command::Boot(a) => boot(a),
        Command::Bench(a) => bench(a),
    };
    result.unwrap_or_else(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })
}

/// Setup (tools, then accelerator), then the kernel build.
fn prepare(forced: Option<Accel>) -> Result<(Accel, PathBuf), String> {
    setup::ensure_tools()?;
    let accel = setup::accel(forced);
    let kernel = kbuild::kernel()?;
    Ok((accel, kernel))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn run(a: RunArgs) -> Result<ExitCode, String> {
    let (accel, kernel) = prepare(a.accel)?;
    let cfg = BootConfig {
        smp: a.smp,
        accel: Some(accel),
        append: qemu::join_cmdline("run=scenario", &a.append),
        extra_args: Vec::new(),
        timeout: Duration::from_secs(a.timeout),
        input: Default::default(),
    };
    println!("boot: {} CPUs, {accel}, cmdline {:?}, timeout {} s", cfg.smp, cfg.append, a.timeout);
    if a.verbose {
        let args = qemu::qemu_args(&cfg, accel, &kernel);
        println!("boot: {} {}", qemu::QEMU, qemu::shell_words(&args));
    }
    let start = Instant::now();
    let verbose = a.verbose;
    let report = qemu::boot_elf(&cfg, accel, &kernel, |source, line, event| {
        let t = secs(start.elapsed());
        match (source, event) {
            (Source::Serial, Some(Event::Boot { cpus, hz, model, .. })) => {
                let model = model.as_deref().unwrap_or("-");
                println!("boot: {cpus} CPUs online, hz {hz}, interrupt model {model} ({t:.2} s)");
            }
            (Source::Serial, Some(Event::ScenarioDone)) => {
                println!("scenario: done ({t:.2} s)");
            }
            (Source::Serial, Some(Event::Storm { source, on, rate })) => {
                if *on {
                    println!("storm: source {source} throttled at {rate} interrupts/s ({t:.2} s)");
                } else {
                    println!("storm: source {source} is calm again ({t:.2} s)");
                }
            }
            (Source::Serial, Some(Event::Panic { cpu, msg })) => {
                println!("PANIC on cpu {cpu}: {msg}");
            }
            (Source::Serial, Some(Event::CmdlineError { option, msg })) => {
                println!("cmdline error: option {option}: {msg}");
            }
            (Source::Serial, Some(Event::Test { .. } | Event::TestBegin { .. })) if verbose => {
                println!("{line}");
            }
            (Source::Serial, Some(Event::Unknown(l))) => {
                println!("unknown protocol line: {l}");
            }
            (Source::Serial, None) if verbose => println!("  | {line}"),
            (Source::Stderr, _) if verbose => println!("  qemu: {line}"),
            _ => {}
        }
    })?;
    let results = report.results();
    if !results.is_empty() {
        // One table per `scope` (cpu, total, lock, intr, ...), in order of first appearance.
        let scope_of = |r: &&[(String, String)]| {
            r.iter().find(|(k, _)| k == "scope").map(|(_, v)| v.clone()).unwrap_or_default()
        };
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
        println!();
    }
    match harness::boot_failure(&report, Goal::Scenario) {
        None => {
            println!("run: ok ({}, {:.2} s)", report.outcome, secs(report.elapsed));
            Ok(ExitCode::SUCCESS)
        }
        Some(f) => {
            print!("{f}");
            println!("run: FAILED");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn test(a: TestArgs) -> Result<ExitCode, String> {
    let filter = harness::filter_option(a.filter.as_deref())?;
    let (accel, _kernel) = prepare(a.accel)?;
    let base = BootConfig {
        smp: 1,
        accel: Some(accel),
        append: filter,
        extra_args: Vec::new(),
        timeout: Duration::from_secs(a.timeout),
        input: Default::default(),
    };
    let smps = match a.smp {
        Some(n) => vec![n],
        None => vec![1, 2, 4],
    };
    let report = harness::run_suites(&base, &smps, a.verbose);
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
    Ok(if report.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn boot(a: BootArgs) -> Result<ExitCode, String> {
    let (accel, kernel) = prepare(a.accel)?;
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
    let report = qemu::boot_elf(&cfg, accel, &kernel, |source, line, _| match source {
        Source::Serial => println!("{line}"),
        Source::Stderr => eprintln!("{line}"),
    })?;
    if let Some(addrs) = report.backtrace() {
        println!("backtrace:");
        for line in harness::format_backtrace(&report.kernel, addrs) {
            println!("  {line}");
        }
    }
    println!("boot: {} after {:.2} s", report.outcome, secs(report.elapsed));
    Ok(if report.exited_success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn bench(a: BenchArgs) -> Result<ExitCode, String> {
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
        let rates = ithreads::bench::rate_vs_direct(&records);
        if !rates.is_empty() {
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
                "(vs_direct is the median over direct's; {} as a rate relative to direct: {})",
                ithreads::bench::RATE,
                list.join(", ")
            );
        }
    }
    if let Some(path) = &a.json {
        let file =
            std::fs::File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        ithreads::bench::write_json_lines(std::io::BufWriter::new(file), &records)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
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
