//! The report of `ithreads --compare --out DIR`, organised by the argument it answers: the
//! claims of the seed posts (Doran's 29 instructions and cheaper locking, Thorpe's adaptive
//! mutexes and turnstiles, Baldwin's pool with its two downsides and storm detection,
//! Eykholt et al.'s Solaris figures), each with the figure that answers it.
//!
//! Where the figures come from (all from the same build):
//! - **cost** (`src/cost.rs`): one vCPU, TCG `-icount shift=0`, the devices saturated, idle
//!   left out — instructions per frame and per disk operation, repeated for the spread;
//! - **the main job** (`src/report.rs`'s table): the configured vCPUs (4 by default), icount,
//!   the devices saturated — throughput and latency in guest time;
//! - **rt** (`src/rt.rs`): the real-time threads' wake-up latency, idle and under the device
//!   flood;
//! - **bench** (`src/bench.rs`): the benchmark boot's figures (the dispatch paths, the locks,
//!   the storm rule);
//! - **traces** (`src/timeline.rs`): one short traced main job per model, beside the report;
//!   only what the trace shows (events by kind) is taken from them.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::bench::Record;
use crate::cost::{pct, spread, CostRun};
use crate::report::{self, ModelRun, ReportMeta};
use crate::rt::RtRun;

/// Everything `--compare` measured.
#[derive(Debug, Clone, Default)]
pub struct Compare {
    /// The main job per model (saturated, icount).
    pub runs: Vec<ModelRun>,
    /// Per model, its cost boots.
    pub cost: Vec<Vec<CostRun>>,
    /// Per model, its rt boot.
    pub rt: Vec<RtRun>,
    /// The rt boots' vCPUs.
    pub rt_smp: u32,
    /// The benchmark boot's records.
    pub bench: Vec<Record>,
    /// Per model: its trace file (beside the report) and its events by kind.
    pub traces: Vec<TraceSummary>,
}

/// A traced run, as the report shows it.
#[derive(Debug, Clone, Default)]
pub struct TraceSummary {
    pub model: String,
    /// The file name, in the report folder.
    pub file: String,
    /// Events by kind name (`pin.borrow`, `divorce`, `migrate`, ...).
    pub kinds: Vec<(String, u64)>,
}

impl TraceSummary {
    pub fn count(&self, kind: &str) -> u64 {
        self.kinds.iter().find(|k| k.0 == kind).map_or(0, |k| k.1)
    }
}

/// The models, in the order of the runs (cost, main job or rt, whichever has them).
fn models(c: &Compare) -> Vec<String> {
    if !c.runs.is_empty() {
        return c.runs.iter().map(|r| r.model.clone()).collect();
    }
    c.cost.iter().filter_map(|r| r.first().map(|r| r.model.clone())).collect()
}

/// The bench record `bench` for `model` (`-` for none), median.
fn bench(c: &Compare, bench: &str, model: &str) -> Option<u64> {
    c.bench.iter().find(|r| r.bench == bench && r.model == model).map(|r| r.median)
}

fn cell(x: Option<u64>) -> String {
    x.map_or("-".into(), |x| x.to_string())
}

/// A Markdown table: the heading, then rows.
fn table(head: &[String], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n", head.join(" | "));
    let _ = writeln!(s, "|---|{}", "---:|".repeat(head.len().saturating_sub(1)));
    for r in rows {
        let _ = writeln!(s, "| {} |", r.join(" | "));
    }
    s
}

/// The cost of `model`: (instructions per frame: median, spread; per disk op: median, spread).
fn cost_of<'a>(c: &'a Compare, model: &str) -> Option<&'a Vec<CostRun>> {
    c.cost.iter().find(|r| r.first().is_some_and(|r| r.model == model))
}

fn per_frame(c: &Compare, model: &str) -> Option<(u64, f64)> {
    let v: Vec<u64> = cost_of(c, model)?.iter().filter_map(CostRun::per_frame).collect();
    spread(&v)
}

fn per_disk_op(c: &Compare, model: &str) -> Option<(u64, f64)> {
    let v: Vec<u64> = cost_of(c, model)?.iter().filter_map(CostRun::per_disk_op).collect();
    spread(&v)
}

/// A fraction as a percentage with two decimals (the spread of instructions per frame).
fn pct2(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

/// The headline table: a column per model.
pub fn headline(c: &Compare) -> String {
    let ms = models(c);
    let mut head = vec!["figure".to_string()];
    head.extend(ms.iter().cloned());
    let mut rows = Vec::new();
    let mut row = |label: &str, f: &dyn Fn(&str) -> String| {
        let mut r = vec![label.to_string()];
        r.extend(ms.iter().map(|m| f(m)));
        rows.push(r);
    };
    row("instructions per frame", &|m| per_frame(c, m).map_or("-".into(), |x| x.0.to_string()));
    row("spread of instructions per frame", &|m| per_frame(c, m).map_or("-".into(), |x| pct2(x.1)));
    row("instructions per disk operation", &|m| per_disk_op(c, m).map_or("-".into(), |x| x.0.to_string()));
    row("spread of instructions per disk operation", &|m| per_disk_op(c, m).map_or("-".into(), |x| pct(x.1)));
    row("NIC interrupts per 1000 frames (cost run)", &|m| {
        cost_of(c, m)
            .and_then(|r| r.first())
            .and_then(|r| r.phase("net"))
            .and_then(|p| {
                let s = p.sources.iter().find(|s| s.0.starts_with("virtio-net"))?;
                Some(format!("{:.1}", s.1 as f64 * 1000.0 / p.ops.max(1) as f64))
            })
            .unwrap_or_else(|| "-".into())
    });
    row("dispatch latency, instructions (bench intr.latency)", &|m| cell(bench(c, "intr.latency", m)));
    row("per interrupt, round trip (bench intr.rate)", &|m| cell(bench(c, "intr.rate", m)));
    let rt = |m: &str| c.rt.iter().find(|r| r.model == m);
    row("RT wake-up p99 idle / flood (guest ns)", &|m| {
        rt(m).map_or("-".into(), |r| {
            format!("{} / {}", cell(r.idle.map(|l| l.p99)), cell(r.flood.map(|l| l.p99)))
        })
    });
    row("RT wake-up max under flood (guest ns)", &|m| cell(rt(m).and_then(|r| r.flood.map(|l| l.max))));
    let run = |m: &str| c.runs.iter().find(|r| r.model == m);
    row("intr threads at rest / peak", &|m| {
        run(m)
            .and_then(|r| r.results.footprint.as_ref())
            .map_or("-".into(), |f| format!("{} / {}", f.rest_threads, f.peak_threads))
    });
    row("frames per guest s (main job, shared icount)", &|m| {
        run(m).and_then(|r| r.results.throughput().frames_per_s).map_or("-".into(), |x| format!("{x:.0}"))
    });
    row("disk ops per guest s (main job, shared icount)", &|m| {
        run(m).and_then(|r| r.results.throughput().blk_ops_per_s).map_or("-".into(), |x| format!("{x:.0}"))
    });
    table(&head, &rows)
}

/// The cost table of every cost boot: per model, each run's per-frame and per-op figures.
fn cost_runs_table(c: &Compare) -> String {
    let n = c.cost.iter().map(Vec::len).max().unwrap_or(0);
    let mut head = vec!["model".to_string()];
    for k in 1..=n {
        head.push(format!("run {k}: per frame"));
        head.push(format!("run {k}: per disk op"));
    }
    let rows: Vec<Vec<String>> = c
        .cost
        .iter()
        .filter_map(|runs| {
            let mut r = vec![runs.first()?.model.clone()];
            for run in runs {
                r.push(cell(run.per_frame()));
                r.push(cell(run.per_disk_op()));
            }
            Some(r)
        })
        .collect();
    table(&head, &rows)
}

/// Each source's share of the CPU in the `all` phase of the first cost boot per model.
fn shares_table(c: &Compare) -> String {
    let ms = models(c);
    let mut names: Vec<String> = Vec::new();
    for runs in &c.cost {
        for p in runs.first().and_then(|r| r.phase("all")).into_iter() {
            for s in &p.sources {
                if s.3 > 0 && !names.contains(&s.0) {
                    names.push(s.0.clone());
                }
            }
        }
    }
    let mut head = vec!["share of the CPU (all phase)".to_string()];
    head.extend(ms.iter().cloned());
    let all = |m: &str| cost_of(c, m).and_then(|r| r.first()).and_then(|r| r.phase("all")).cloned();
    let mut rows = Vec::new();
    for name in &names {
        let mut r = vec![format!("`{name}` handler")];
        r.extend(ms.iter().map(|m| all(m).and_then(|p| p.share(name)).map_or("-".into(), pct)));
        rows.push(r);
    }
    let mut r = vec!["busy (not idle)".to_string()];
    r.extend(ms.iter().map(|m| all(m).map_or("-".into(), |p| pct(p.busy_share()))));
    rows.push(r);
    table(&head, &rows)
}

/// Bench figures for `names`, one row each, a column per model (and `-` for model-free ones).
fn bench_table(c: &Compare, names: &[&str]) -> String {
    let ms = models(c);
    let mut head = vec!["bench (median, instructions)".to_string(), "-".to_string()];
    head.extend(ms.iter().cloned());
    let rows: Vec<Vec<String>> = names
        .iter()
        .filter(|n| c.bench.iter().any(|r| r.bench == **n))
        .map(|n| {
            let mut r = vec![format!("`{n}`"), cell(bench(c, n, "-"))];
            r.extend(ms.iter().map(|m| cell(bench(c, n, m))));
            r
        })
        .collect();
    if rows.is_empty() {
        return "(no benchmark figures in this report)\n".into();
    }
    table(&head, &rows)
}

/// The trace events that show the pool's and the pinned model's mechanics.
fn traces_table(c: &Compare) -> String {
    let kinds = ["pin.borrow", "divorce", "migrate", "block", "lock.contend", "storm.throttle"];
    let mut head = vec!["model".to_string(), "trace".to_string()];
    head.extend(kinds.iter().map(|k| format!("`{k}`")));
    let rows: Vec<Vec<String>> = c
        .traces
        .iter()
        .map(|t| {
            let mut r = vec![t.model.clone(), format!("[{}]({})", t.file, t.file)];
            r.extend(kinds.iter().map(|k| t.count(k).to_string()));
            r
        })
        .collect();
    table(&head, &rows)
}

/// Per source, the CPUs its handlers ran on in the main job (from the `source_cpu` records is
/// not kept here; the per-source count and latency by model instead).
fn rt_table(c: &Compare) -> String {
    let head: Vec<String> =
        ["model", "idle p50", "idle p99", "idle max", "flood p50", "flood p99", "flood max", "overruns"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let rows: Vec<Vec<String>> =
        c.rt.iter()
            .map(|r| {
                vec![
                    r.model.clone(),
                    cell(r.idle.map(|l| l.p50)),
                    cell(r.idle.map(|l| l.p99)),
                    cell(r.idle.map(|l| l.max)),
                    cell(r.flood.map(|l| l.p50)),
                    cell(r.flood.map(|l| l.p99)),
                    cell(r.flood.map(|l| l.max)),
                    cell(r.flood.map(|l| l.overruns)),
                ]
            })
            .collect();
    table(&head, &rows)
}

/// Draws the RT latency CDF per model, idle (dashed) and under flood (solid), to `path`.
pub fn rt_chart(path: &Path, rts: &[RtRun]) -> io::Result<()> {
    let err = |e: &dyn std::fmt::Display| io::Error::other(format!("drawing a chart: {e}"));
    let values = rts.iter().flat_map(|r| r.cdf_idle.iter().chain(&r.cdf_flood)).copied();
    let lo = values.clone().filter(|&v| v > 0).min().unwrap_or(1).max(1) as f64;
    let hi = values.max().unwrap_or(10).max(10) as f64;
    let (lo, hi) = (10f64.powf(lo.log10().floor()), 10f64.powf(hi.log10().ceil()).max(lo * 10.0));
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("RT thread wake-up latency: idle (dashed) and under flood (solid)", ("sans-serif", 20))
        .margin(16)
        .margin_right(40)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..1.0)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("wake-up latency (guest ns = instructions, log scale)")
        .y_desc("fraction of wake-ups at or below")
        .x_label_formatter(&|x| crate::workload::fmt_ns(x.round() as u64))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, r) in rts.iter().enumerate() {
        let color = report::model_color(&r.model, i);
        for (cdf, flood) in [(&r.cdf_idle, false), (&r.cdf_flood, true)] {
            if cdf.is_empty() {
                continue;
            }
            let n = (cdf.len() - 1).max(1) as f64;
            let points: Vec<(f64, f64)> =
                cdf.iter().enumerate().map(|(k, &v)| ((v.max(1) as f64).max(lo), k as f64 / n)).collect();
            let label = format!("{} {}", r.model, if flood { "flood" } else { "idle" });
            if flood {
                chart
                    .draw_series(LineSeries::new(points, color.stroke_width(2)))
                    .map_err(|e| err(&e))?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            } else {
                chart
                    .draw_series(DashedLineSeries::new(points, 6, 4, color.stroke_width(1)))
                    .map_err(|e| err(&e))?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(1)));
            }
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

/// Draws instructions per frame per model (bars, the runs' spread as a whisker) to `path`.
pub fn per_frame_chart(path: &Path, c: &Compare) -> io::Result<()> {
    let err = |e: &dyn std::fmt::Display| io::Error::other(format!("drawing a chart: {e}"));
    let ms = models(c);
    let bars: Vec<(String, u64, u64, u64)> = ms
        .iter()
        .filter_map(|m| {
            let v: Vec<u64> = cost_of(c, m)?.iter().filter_map(CostRun::per_frame).collect();
            let (med, _) = spread(&v)?;
            Some((m.clone(), med, *v.iter().min()?, *v.iter().max()?))
        })
        .collect();
    let top = bars.iter().map(|b| b.3).max().unwrap_or(1) as f64 * 1.15;
    let n = bars.len().max(1) as i32;
    let root = SVGBackend::new(path, (700, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Instructions per NIC frame at saturation (1 vCPU, idle left out)", ("sans-serif", 18))
        .margin(14)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..top)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len().max(1))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                bars.get(*i as usize).map(|b| b.0.clone()).unwrap_or_default()
            }
            SegmentValue::Last => String::new(),
        })
        .y_desc("guest instructions per frame")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            let color = report::model_color(&b.0, i);
            let i = i as i32;
            let mut bar = Rectangle::new(
                [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), b.1 as f64)],
                color.filled(),
            );
            bar.set_margin(0, 0, 12, 12);
            bar
        }))
        .map_err(|e| err(&e))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            PathElement::new(
                vec![
                    (SegmentValue::CenterOf(i as i32), b.2 as f64),
                    (SegmentValue::CenterOf(i as i32), b.3 as f64),
                ],
                BLACK.stroke_width(2),
            )
        }))
        .map_err(|e| err(&e))?;
    // The figures themselves: the bars differ by well under 1 %.
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            Text::new(
                b.1.to_string(),
                (SegmentValue::CenterOf(i as i32), b.3 as f64 + top * 0.02),
                ("sans-serif", 15).into_font().color(&BLACK),
            )
        }))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

/// Writes the report folder: `README.md` (by claim), `rt-latency.svg`,
/// `instructions-per-frame.svg`, and the main job's charts (`report::write_report`'s, whose
/// README this one replaces). The trace files are already there. Returns the files written.
pub fn write(dir: &Path, c: &Compare, meta: &ReportMeta) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut files = report::write_report(dir, &c.runs, meta)?;
    let main_readme = dir.join("main-job.md");
    std::fs::rename(dir.join("README.md"), &main_readme)?;
    files.retain(|f| !f.ends_with("README.md"));
    files.push(main_readme);
    let rt = dir.join("rt-latency.svg");
    rt_chart(&rt, &c.rt)?;
    files.push(rt);
    let pf = dir.join("instructions-per-frame.svg");
    per_frame_chart(&pf, c)?;
    files.push(pf);
    let charts: Vec<String> = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("latency-"))
        .collect();
    let readme = dir.join("README.md");
    std::fs::write(&readme, readme_text(c, meta, &charts))?;
    files.insert(0, readme);
    Ok(files)
}

fn readme_text(c: &Compare, meta: &ReportMeta, latency_charts: &[String]) -> String {
    let ms = models(c);
    let mut s = String::from("# ithreads: the interrupt dispatch models against the seeds' claims\n\n");
    let _ = writeln!(
        s,
        "Each section below names a claim from the posts that started this project and gives the figure \
         from this build that answers it. Models: {}.\n",
        ms.join(", ")
    );
    let _ = writeln!(s, "- when: {}", meta.when);
    let _ = writeln!(s, "- machine: {}", meta.machine);
    let _ = writeln!(s, "- command: `{}`", meta.command);
    let _ = writeln!(
        s,
        "- cost figures: `run=cost` on **1 vCPU** under TCG `-icount {}` with the NIC and the disk saturated (the \
         host sends frames as fast as the guest returns buffers; {} disk threads keep the queue full), {} boots \
         per model; a soaker thread at the lowest priority keeps the CPU from halting and its time is left out, \
         so only intervals in which the guest is not idle count.",
        crate::bench::ICOUNT,
        4,
        c.cost.first().map_or(0, Vec::len)
    );
    let _ = writeln!(
        s,
        "- throughput and latency: the main job on **{} vCPUs** under the same icount, devices saturated. \
         **Limit of shared icount:** QEMU runs the vCPUs one at a time and one instruction counter drives the \
         guest clock, so a guest second is 10^9 instructions of *all* vCPUs together: rates are per guest \
         second of the whole machine, not per CPU, and a per-CPU share cannot be read (hence the 1-vCPU cost \
         runs).",
        meta.smp
    );
    let _ = writeln!(
        s,
        "- real-time: `run=rt` on {} vCPU(s), idle and under a NIC + disk + edu + IPI flood (on one vCPU by \
         default: under shared icount, QEMU's round robin would put another vCPU's time slice inside a \
         wake-up's latency).\n",
        c.rt_smp
    );
    s.push_str("## Headline\n\n");
    s.push_str(&headline(c));
    s.push_str(
        "\n`instructions per frame`: guest instructions while not idle, per NIC frame received and verified \
         (the driver checks every payload byte: most of the figure is that work, the same in every model; the \
         differences between columns are the dispatch model's). Spread = (max − min) / median over the cost \
         boots.\n\n![instructions per frame](instructions-per-frame.svg)\n\n",
    );
    s.push_str("Every cost boot:\n\n");
    s.push_str(&cost_runs_table(c));

    // Doran.
    s.push_str(
        "\n## Doran: \"29 instructions\" and cheaper locking (seed 001, tech-kern, 21 Feb 2007)\n\n\
         **Claim.** Handling interrupts with LWPs \"add[s] 29 instructions to a typical interrupt chain on x86, \
         to swap stack and curlwp\", and the reason to do it is \"significantly cheaper locking primitives on MP \
         systems\".\n\n**Figures.** What the pinned model (Doran's design: borrow the CPU, swap stack and \
         curthread) adds to the direct path, per interrupt (`intr.switch_added`), the dispatch latency of each \
         model, and at saturation the whole cost per frame:\n\n",
    );
    s.push_str(&bench_table(
        c,
        &["intr.switch_added", "intr.latency", "intr.rate", "intr.pinned_round_trip"],
    ));
    let _ = writeln!(
        s,
        "\n**Answer.** Doran: 29 instructions added per interrupt. Here the pinned model adds {} \
         (`intr.switch_added`); the thread models that switch for real (dedicated, pool) add {} and {} to the \
         dispatch latency over direct (`intr.latency`).",
        cell(bench(c, "intr.switch_added", "pinned")),
        bench(c, "intr.latency", "dedicated")
            .zip(bench(c, "intr.latency", "direct"))
            .map_or("-".into(), |(a, b)| format!("{}", a as i64 - b as i64)),
        bench(c, "intr.latency", "pool")
            .zip(bench(c, "intr.latency", "direct"))
            .map_or("-".into(), |(a, b)| format!("{}", a as i64 - b as i64)),
    );
    let direct = per_frame(c, "direct").map(|x| x.0);
    let _ = writeln!(
        s,
        "\nPer frame at saturation, relative to direct ({}): {}.",
        cell(direct),
        ms.iter()
            .filter(|m| m.as_str() != "direct")
            .map(|m| {
                let d = per_frame(c, m).zip(direct).map(|((x, _), d)| x as i64 - d as i64);
                format!("{m} {}", d.map_or("-".into(), |d| format!("{d:+}")))
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    s.push_str(
        "At saturation the NIC handler takes many frames per interrupt (it reschedules itself with \
         `hwi_sched` after its budget), so what a model adds per interrupt is spread over those frames: see \
         `NIC interrupts per 1000 frames` in the headline.\n\n**Locking.** The locks a thread context can use \
         (adaptive mutex) against the interrupt-safe ones (spin mutex, which raises the SPL) and a classic \
         `pushf; cli` spinlock:\n\n",
    );
    s.push_str(&bench_table(
        c,
        &[
            "mutex.adaptive.enter_exit",
            "mutex.spin.enter_exit",
            "spl.raise_lower",
            "baseline.cli_spinlock.enter_exit",
            "baseline.lock_cmpxchg_pair",
        ],
    ));

    // Thorpe.
    s.push_str(
        "\n## Thorpe: adaptive mutexes and turnstiles (seed 004, tech-kern, 17 Dec 2003)\n\n\
         **Claim.** An adaptive mutex spins while the owner runs on another CPU, \"thus saving at least 2 \
         context switches\", and sleeps on a turnstile otherwise; interrupt-safe mutexes always spin; \
         rwlocks and turnstiles are lighter than `lockmgr`.\n\n**Figures.** The uncontended paths, the \
         hand-off between two CPUs, and what blocking an interrupt handler on a turnstile costs (the parts of \
         `intr.block_switch`, per blocking model):\n\n",
    );
    s.push_str(&bench_table(
        c,
        &[
            "mutex.adaptive.enter_exit",
            "rwlock.read.enter_exit",
            "rwlock.write.enter_exit",
            "mutex.handoff",
            "intr.block_switch",
            "intr.block_switch.turnstile",
            "intr.block_switch.switch",
            "sched.switch",
        ],
    ));
    s.push_str(
        "\n(`mutex.handoff` counts every CPU's instructions under shared icount: the spinning waiter's \
         included.)\n",
    );

    // Baldwin.
    s.push_str(
        "\n## Baldwin: the ithread pool (seed 003, freebsd-arch, 17 Sep 2010)\n\n\
         **Pool size.** \"can't be smaller than NCPU * 2 or larger than the total number of handlers\". \
         Threads and stack memory each model holds in the main job:\n\n",
    );
    s.push_str(&footprint_table(c));
    s.push_str(
        "\n**Divorce and migration.** \"If an interrupt handler blocks on a turnstile ... the current ithread \
         is divorced from the current CPU\"; an idle ithread moves to a CPU that needs one. The traced runs \
         show them as events (counts within each CPU ring's kept window; open the files in Perfetto):\n\n",
    );
    s.push_str(&traces_table(c));
    s.push_str(
        "\nThe main job's `edu` handler blocks on an adaptive mutex its raiser holds (not under direct), so \
         every model but direct has blocking handlers. The pool's own counters in the main job (pool model: \
         times a CPU took an ithread, ithreads that moved to a CPU in need, divorces):\n\n",
    );
    let pool_row: Vec<String> = c
        .runs
        .iter()
        .map(|r| {
            r.results.pool.map_or(format!("{}: -", r.model), |(a, m, d)| {
                format!("{}: assigned {a}, migrations {m}, divorces {d}", r.model)
            })
        })
        .collect();
    let _ = writeln!(s, "{}\n", pool_row.join("; "));
    s.push_str(
        "What a divorce costs: the pool's `intr.block_switch` (a handler blocking on a turnstile, its ithread \
         divorced, the switch back) against dedicated's, which has no pool to leave:\n\n",
    );
    s.push_str(&bench_table(c, &["intr.block_switch", "intr.block_switch.switch"]));
    s.push_str(
        "\n**Downside 1: interrupts must be spread evenly.** \"two busy devices whose interrupts both go to the \
         same CPU ... compete for CPU time on that CPU\". In the main job, each source's handlers by CPU \
         (handler runs; the devices' vectors are routed to one CPU each):\n\n",
    );
    s.push_str(&per_cpu_table(c));
    s.push_str(
        "\n**Downside 2: per-IRQ CPU time can no longer be seen.** Here it can: the framework accounts each \
         source's handler time in every model (pool included), as `top` showed per-IRQ threads. Each source's \
         share of the CPU in the cost runs' `all` phase (NIC, disk and edu saturated together, 1 vCPU):\n\n",
    );
    s.push_str(&shares_table(c));
    s.push_str(
        "\n**Storm detection** \"is currently broken\" in his pool. Here the storm rule counts arrivals per \
         source before any model's dispatch, so it works in every model: the storm benchmarks (a stuck `edu` \
         line: guest ns from the first stuck arrival to the throttle, and back; false positives on a \
         legitimate flood), and storms declared in the saturated main job:\n\n",
    );
    s.push_str(&bench_table(
        c,
        &["storm.detect_ns", "storm.recover_ns", "storm.false_positives", "storm.legit_rate"],
    ));
    let storms: Vec<String> = c
        .runs
        .iter()
        .map(|r| format!("{} {}", r.model, r.results.sources.iter().map(|s| s.storms).sum::<u64>()))
        .collect();
    let _ = writeln!(
        s,
        "\nStorms in the main job (none expected: a saturated device is not a storm): {}.",
        storms.join(", ")
    );

    // Eykholt.
    s.push_str(
        "\n## Eykholt et al. 1992: Solaris (\"Beyond Multiprocessing: Multithreading the SunOS Kernel\")\n\n\
         **Claim.** Interrupts as threads add about 40 instructions per interrupt, and save about 12 \
         instructions per mutex enter/exit because locks need not block interrupts.\n\n**Figures.** Added per \
         interrupt: `intr.switch_added` (pinned over direct; Solaris's scheme is the pinned one) above. Saved per \
         mutex enter/exit: the adaptive mutex (no SPL change) against the spin mutex (raises and restores the \
         SPL) and the `cli` spinlock:\n\n",
    );
    let adaptive = bench(c, "mutex.adaptive.enter_exit", "-");
    let spin = bench(c, "mutex.spin.enter_exit", "-");
    let cli = bench(c, "baseline.cli_spinlock.enter_exit", "-");
    let added = bench(c, "intr.switch_added", "pinned");
    let _ = writeln!(
        s,
        "| figure | instructions |\n|---|---:|\n| added per interrupt (`intr.switch_added`, pinned) | {} |\n\
         | mutex enter/exit, adaptive | {} |\n| mutex enter/exit, spin (SPL raised) | {} |\n\
         | saved per enter/exit vs spin | {} |\n| saved per enter/exit vs `pushf; cli` spinlock | {} |",
        cell(added),
        cell(adaptive),
        cell(spin),
        spin.zip(adaptive).map_or("-".into(), |(s, a)| format!("{}", s as i64 - a as i64)),
        cli.zip(adaptive).map_or("-".into(), |(s, a)| format!("{}", s as i64 - a as i64)),
    );

    // RT.
    s.push_str(
        "\n## Real-time latency under an interrupt flood (why run interrupts as threads at all)\n\n\
         A thread in the real-time band on every CPU wakes every period at an absolute deadline (the one-shot \
         LAPIC timer) and records timer expiry → its first instruction, in guest ns (= instructions). The NIC's \
         and the disk's interrupt threads are set below it (as `chrt` sets Linux's irq threads). Idle, then \
         under the flood:\n\n",
    );
    s.push_str(&rt_table(c));
    s.push_str("\n![RT latency CDF](rt-latency.svg)\n");
    s.push_str(&rt_findings(c));

    // Throughput.
    let _ = writeln!(
        s,
        "\n## Throughput and handling latency on {} vCPUs (guest time)\n\nThe main job (NIC frames echoed, disk \
         write-and-verify, serial input, edu), devices saturated, icount: the full table is in \
         [main-job.md](main-job.md). Latency is from arrival (the interrupt's entry) to the handler's start.\n",
        meta.smp
    );
    s.push_str("![throughput](throughput.svg)\n\n");
    for f in latency_charts {
        let _ = writeln!(s, "![{f}]({f})\n");
    }
    s.push_str(
        "\n## Traces\n\nOne short traced main job per model (a kernel built with the `trace` feature); the \
         figures above come from the untraced runs. Open a file in <https://ui.perfetto.dev> or \
         `chrome://tracing`: one track per CPU, one per thread.\n\n",
    );
    for t in &c.traces {
        let _ = writeln!(s, "- {}: [{}]({})", t.model, t.file, t.file);
    }
    let failed: Vec<&ModelRun> = c.runs.iter().filter(|r| !r.ok()).collect();
    if !failed.is_empty() {
        s.push_str("\n## Failures\n\n");
        for r in failed {
            for p in &r.problems {
                let _ = writeln!(s, "- {}: {p}", r.model);
            }
        }
    }
    s
}

/// A footprint row: its label and its cell.
type FootprintRow = (&'static str, fn(&crate::workload::Footprint) -> String);

fn footprint_table(c: &Compare) -> String {
    let ms = models(c);
    let mut head = vec!["footprint (main job)".to_string()];
    head.extend(ms.iter().cloned());
    let fp = |m: &str| c.runs.iter().find(|r| r.model == m).and_then(|r| r.results.footprint);
    let mut rows = Vec::new();
    let fields: [FootprintRow; 5] = [
        ("intr threads at rest / peak", |f| format!("{} / {}", f.rest_threads, f.peak_threads)),
        ("of which pool / dedicated / pinned", |f| format!("{} / {} / {}", f.pool, f.dedicated, f.pinned)),
        ("thread KiB at rest / peak", |f| format!("{} / {}", f.rest_thread_kib, f.peak_thread_kib)),
        ("bytes per thread", |f| f.thread_bytes.to_string()),
        ("bytes per source", |f| (f.source_bytes / f.sources.max(1)).to_string()),
    ];
    for (label, f) in fields {
        let mut r = vec![label.to_string()];
        r.extend(ms.iter().map(|m| fp(m).map_or("-".into(), |x| f(&x))));
        rows.push(r);
    }
    table(&head, &rows)
}

fn per_cpu_table(c: &Compare) -> String {
    let ms = models(c);
    let mut head = vec!["source: handler runs by CPU".to_string()];
    head.extend(ms.iter().cloned());
    let mut names: Vec<String> = Vec::new();
    for r in &c.runs {
        for pc in &r.results.per_cpu {
            if !names.contains(&pc.0) {
                names.push(pc.0.clone());
            }
        }
    }
    let rows: Vec<Vec<String>> = names
        .iter()
        .map(|name| {
            let mut row = vec![format!("`{name}`")];
            row.extend(ms.iter().map(|m| {
                let Some(run) = c.runs.iter().find(|r| &r.model == m) else { return "-".into() };
                let cpus: Vec<String> = run
                    .results
                    .per_cpu
                    .iter()
                    .filter(|pc| &pc.0 == name && pc.2 > 0)
                    .map(|pc| format!("cpu{} {}", pc.1, pc.2))
                    .collect();
                if cpus.is_empty() {
                    "-".into()
                } else {
                    cpus.join(", ")
                }
            }));
            row
        })
        .collect();
    table(&head, &rows)
}

/// What the RT figures show, in words computed from them.
fn rt_findings(c: &Compare) -> String {
    let mut s = String::new();
    let flood = |m: &str| c.rt.iter().find(|r| r.model == m).and_then(|r| r.flood);
    let by_max: Vec<(String, u64)> = {
        let mut v: Vec<(String, u64)> =
            c.rt.iter().filter_map(|r| r.flood.map(|l| (r.model.clone(), l.max))).collect();
        v.sort_by_key(|x| x.1);
        v
    };
    if by_max.is_empty() {
        return s;
    }
    let _ = writeln!(
        s,
        "\nWhat they show: under the flood the worst case ranks {} (max, guest ns).",
        by_max.iter().map(|(m, x)| format!("{m} {x}")).collect::<Vec<_>>().join(" < ")
    );
    if let (Some(d), Some(p)) = (flood("direct"), flood("pool")) {
        let _ = writeln!(
            s,
            "Direct against pool: p99 {} vs {}, max {} vs {}: {}.",
            d.p99,
            p.p99,
            d.max,
            p.max,
            if d.p99 > p.p99 {
                "handlers in interrupt context inflate the RT thread's latency; the pool's threads, below its priority, bound it"
            } else {
                "here direct handling does not inflate the RT thread's p99 beyond the pool's"
            }
        );
    }
    s.push_str(
        "What bounds the thread models' figure is not the dispatch but the NIC driver: its receive handler \
         holds the receive spin mutex (SPL raised, so no preemption) over a whole batch of up to `BUDGET` = 32 \
         frames, each verified byte by byte (about 10,000 instructions a frame; \
         `kernel/src/drivers/virtio/net.rs`, `NetDev::receive`), so a real-time thread whose timer fires \
         inside a batch waits for its end. Under direct and pinned the handler itself cannot be preempted \
         (interrupt context; a borrowed CPU), and the flood keeps it busy.\n",
    );
    s
}
