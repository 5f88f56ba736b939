//! The comparison of the interrupt dispatch models (`ithreads --compare`): the same main job
//! once per model, one side-by-side table, and a report folder — `README.md` (the table, the
//! commands, the machine) and SVG charts drawn with `plotters`: the latency distribution of
//! every interrupt source (one series per model) and the throughput of each model.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::workload::{fmt_ns, latency, HostTraffic, JobResults, Model};

/// One model's run of the main job.
#[derive(Debug, Clone)]
pub struct ModelRun {
    /// The model asked for (`intr.model=`).
    pub model: String,
    /// The kernel command line booted.
    pub cmdline: String,
    pub results: JobResults,
    pub host: HostTraffic,
    /// Why the run failed (boot and workload problems); empty if it did not.
    pub problems: Vec<String>,
    /// Wall time of the boot, in seconds.
    pub elapsed_s: f64,
}

impl ModelRun {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Where and how the comparison ran, for the report.
#[derive(Debug, Clone, Default)]
pub struct ReportMeta {
    /// The host command that made the report.
    pub command: String,
    /// The host machine (CPU model, core count, OS).
    pub machine: String,
    /// The accelerator (`tcg`, `kvm`).
    pub accel: String,
    pub smp: u32,
    /// When it ran (UTC).
    pub when: String,
}

/// Every interrupt source named in any run, in order of first appearance.
pub fn source_names(runs: &[ModelRun]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let all = runs.iter().flat_map(|r| {
        r.results.sources.iter().map(|s| &s.name).chain(r.results.hists.iter().map(|h| &h.name))
    });
    for name in all {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

fn opt_rate(r: Option<f64>) -> String {
    r.map(|x| format!("{x:.0}")).unwrap_or_else(|| "-".into())
}

/// The side-by-side table: a heading row (`metric`, then one column per model) and one row
/// per metric.
pub fn compare_rows(runs: &[ModelRun]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut head = vec!["metric".to_string()];
    head.extend(runs.iter().map(|r| r.model.clone()));
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut row = |label: &str, cell: &dyn Fn(&ModelRun) -> String| {
        let mut r = vec![label.to_string()];
        r.extend(runs.iter().map(cell));
        rows.push(r);
    };
    row("verdict", &|r| if r.ok() { "ok".into() } else { "FAILED".into() });
    row("frames received", &|r| r.results.workload.map_or("-".into(), |w| w.net_rx.to_string()));
    row("frames lost", &|r| {
        r.results.workload.map_or("-".into(), |w| crate::workload::frames_lost(&w, &r.host).to_string())
    });
    row("frames/s", &|r| opt_rate(r.results.throughput().frames_per_s));
    row("disk ops", &|r| r.results.workload.map_or("-".into(), |w| w.blk_ops.to_string()));
    row("disk ops/s", &|r| opt_rate(r.results.throughput().blk_ops_per_s));
    row("serial bytes", &|r| r.results.workload.map_or("-".into(), |w| w.serial_bytes.to_string()));
    row("serial bytes/s", &|r| opt_rate(r.results.throughput().serial_bytes_per_s));
    row("storms", &|r| r.results.sources.iter().map(|s| s.storms).sum::<u64>().to_string());
    let fp = |r: &ModelRun, f: &dyn Fn(&crate::workload::Footprint) -> String| {
        r.results.footprint.as_ref().map_or("-".into(), f)
    };
    row("intr threads at rest / peak", &|r| fp(r, &|f| format!("{} / {}", f.rest_threads, f.peak_threads)));
    row("intr thread KiB at rest / peak", &|r| {
        fp(r, &|f| format!("{} / {}", f.rest_thread_kib, f.peak_thread_kib))
    });
    row("bytes per source", &|r| fp(r, &|f| (f.source_bytes / f.sources.max(1)).to_string()));
    for name in source_names(runs) {
        let source = |r: &ModelRun| r.results.sources.iter().find(|s| s.name == name).cloned();
        row(&format!("{name} count"), &|r| source(r).map_or("-".into(), |s| s.count.to_string()));
        row(&format!("{name} p50"), &|r| source(r).map_or("-".into(), |s| latency(s.handled, s.p50)));
        row(&format!("{name} p99"), &|r| source(r).map_or("-".into(), |s| latency(s.handled, s.p99)));
        row(&format!("{name} cpu/intr"), &|r| {
            source(r).filter(|s| s.handled > 0).map_or("-".into(), |s| fmt_ns(s.cpu_ns / s.handled))
        });
        row(&format!("{name} blocked"), &|r| source(r).map_or("-".into(), |s| fmt_ns(s.off_ns)));
        row(&format!("{name} waits spl / mask"), &|r| {
            source(r).map_or("-".into(), |s| format!("{} / {}", s.spl_n, s.masked_n))
        });
    }
    row("wall time", &|r| format!("{:.1}s", r.elapsed_s));
    (head, rows)
}

/// The side-by-side table as aligned text (first column left, the others right).
pub fn compare_table(runs: &[ModelRun]) -> String {
    let (head, rows) = compare_rows(runs);
    let all: Vec<&Vec<String>> = std::iter::once(&head).chain(&rows).collect();
    let widths: Vec<usize> =
        (0..head.len()).map(|i| all.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut s = String::new();
    for (n, r) in all.iter().enumerate() {
        let cells: Vec<String> =
            r.iter()
                .enumerate()
                .map(|(i, c)| {
                    if i == 0 {
                        format!("{c:<w$}", w = widths[i])
                    } else {
                        format!("{c:>w$}", w = widths[i])
                    }
                })
                .collect();
        let _ = writeln!(s, "  {}", cells.join("  ").trim_end());
        if n == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            let _ = writeln!(s, "  {}", rule.join("  "));
        }
    }
    s
}

/// The side-by-side table in Markdown.
pub fn compare_markdown(runs: &[ModelRun]) -> String {
    let (head, rows) = compare_rows(runs);
    let mut s = format!("| {} |\n", head.join(" | "));
    let _ = writeln!(s, "|---|{}", "---:|".repeat(head.len() - 1));
    for r in rows {
        let _ = writeln!(s, "| {} |", r.join(" | "));
    }
    s
}

/// A model's colour, the same in every chart.
pub fn model_color(model: &str, fallback: usize) -> RGBColor {
    let i = Model::ALL.iter().position(|m| m.as_str() == model).unwrap_or(fallback);
    match i {
        0 => RGBColor(0x1f, 0x77, 0xb4),
        1 => RGBColor(0xd6, 0x27, 0x28),
        2 => RGBColor(0x2c, 0xa0, 0x2c),
        3 => RGBColor(0x94, 0x67, 0xbd),
        _ => {
            let c = Palette99::pick(i).to_rgba();
            RGBColor(c.0, c.1, c.2)
        }
    }
}

/// A file-name-safe form of a source name.
pub fn file_stem(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

fn chart_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("drawing a chart: {e}"))
}

/// Draws `source`'s latency distribution, one series per model with a histogram for it, to
/// `path`: the cumulative fraction of handled interrupts (y) by latency bucket (x, ns, log
/// scale). Returns the models drawn (none: no file written).
pub fn latency_chart(path: &Path, source: &str, runs: &[ModelRun]) -> io::Result<Vec<String>> {
    let series: Vec<(usize, &ModelRun, &crate::workload::Histogram)> = runs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            r.results.hists.iter().find(|h| h.name == source && h.total() > 0).map(|h| (i, r, h))
        })
        .collect();
    if series.is_empty() {
        return Ok(Vec::new());
    }
    let bounds = series.iter().flat_map(|(_, _, h)| h.buckets.iter().map(|b| b.0.max(1)));
    // Whole decades, so that the log axis has labels from end to end.
    let decade_below = |x: f64| 10f64.powf(x.log10().floor());
    let lo = decade_below(bounds.clone().min().unwrap_or(1) as f64);
    let hi = (decade_below(bounds.max().unwrap_or(1) as f64 * 2.0) * 10.0).max(lo * 10.0);
    let unit = &series[0].2.unit;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{source}: interrupt handling latency by model"), ("sans-serif", 22))
        .margin(16)
        .margin_right(40)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..1.0)
        .map_err(chart_error)?;
    chart
        .configure_mesh()
        .x_desc(format!("latency ({unit}, log scale)"))
        .y_desc("fraction of interrupts at or below")
        .x_label_formatter(&|x| fmt_ns(x.round() as u64))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(chart_error)?;
    let mut drawn = Vec::new();
    for (i, run, hist) in series {
        let color = model_color(&run.model, i);
        let mut points = Vec::new();
        let mut below = 0.0;
        for (lower, fraction) in hist.cumulative() {
            let x = lower.max(1) as f64;
            points.push((x, below));
            points.push((x, fraction));
            below = fraction;
        }
        points.push((hi, below));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(chart_error)?
            .label(run.model.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        drawn.push(run.model.clone());
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(chart_error)?;
    root.present().map_err(chart_error)?;
    Ok(drawn)
}

/// The throughput metrics charted: title and value of a run.
type Metric = (&'static str, fn(&ModelRun) -> Option<f64>);

const THROUGHPUT: [Metric; 3] = [
    ("frames/s", |r| r.results.throughput().frames_per_s),
    ("disk ops/s", |r| r.results.throughput().blk_ops_per_s),
    ("serial bytes/s", |r| r.results.throughput().serial_bytes_per_s),
];

/// Draws the throughput of each model (frames/s, disk ops/s, serial bytes/s; one bar per
/// model in each panel) to `path`.
pub fn throughput_chart(path: &Path, runs: &[ModelRun]) -> io::Result<()> {
    let root = SVGBackend::new(path, (1200, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_error)?;
    let root =
        root.titled("Throughput by interrupt dispatch model", ("sans-serif", 22)).map_err(chart_error)?;
    let n = runs.len().max(1) as i32;
    for (panel, (title, value)) in root.split_evenly((1, THROUGHPUT.len())).iter().zip(THROUGHPUT) {
        let max = runs.iter().filter_map(value).fold(0.0f64, f64::max);
        let top = if max > 0.0 { max * 1.15 } else { 1.0 };
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 18))
            .margin(14)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..top)
            .map_err(chart_error)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(runs.len().max(1))
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                    runs.get(*i as usize).map(|r| r.model.clone()).unwrap_or_default()
                }
                SegmentValue::Last => String::new(),
            })
            .y_label_formatter(&|y| format!("{y:.0}"))
            .y_labels(6)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(chart_error)?;
        let bars = runs.iter().enumerate().filter_map(|(i, r)| {
            let v = value(r)?;
            let color = model_color(&r.model, i);
            let i = i as i32;
            let mut bar = Rectangle::new(
                [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), v)],
                color.filled(),
            );
            bar.set_margin(0, 0, 10, 10);
            Some(bar)
        });
        chart.draw_series(bars).map_err(chart_error)?;
    }
    root.present().map_err(chart_error)?;
    Ok(())
}

/// Writes the report folder `dir` (created if needed): `README.md`, `throughput.svg` and one
/// `latency-<source>.svg` per source with histograms. Returns the files written.
pub fn write_report(dir: &Path, runs: &[ModelRun], meta: &ReportMeta) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut files = Vec::new();
    let throughput = dir.join("throughput.svg");
    throughput_chart(&throughput, runs)?;
    let mut latency_charts = Vec::new();
    for source in source_names(runs) {
        let path = dir.join(format!("latency-{}.svg", file_stem(&source)));
        let models = latency_chart(&path, &source, runs)?;
        if !models.is_empty() {
            latency_charts.push((source, path.clone(), models));
            files.push(path);
        }
    }
    let readme = dir.join("README.md");
    std::fs::write(&readme, readme_text(runs, meta, &latency_charts))?;
    files.insert(0, throughput);
    files.insert(0, readme);
    Ok(files)
}

fn readme_text(
    runs: &[ModelRun],
    meta: &ReportMeta,
    latency_charts: &[(String, PathBuf, Vec<String>)],
) -> String {
    let mut s = String::from("# ithreads: interrupt dispatch models compared\n\n");
    let models: Vec<&str> = runs.iter().map(|r| r.model.as_str()).collect();
    let _ = writeln!(
        s,
        "The same main job (NIC frames from the host, disk operations, 64 KiB of serial input and the \
         edu device, all at once) booted once per interrupt dispatch model ({}) on {} vCPUs under {}.\n",
        models.join(", "),
        meta.smp,
        meta.accel
    );
    let _ = writeln!(s, "- when: {}", meta.when);
    let _ = writeln!(s, "- machine: {}", meta.machine);
    let _ = writeln!(s, "- accelerator: {}", meta.accel);
    let _ = writeln!(s, "- command: `{}`\n", meta.command);
    s.push_str("## Results\n\n");
    s.push_str(&compare_markdown(runs));
    s.push_str(
        "\nRates are per second of guest time, each over the span in which its counter moved. \
         `p50`/`p99` are the handling latency percentiles per source as the kernel measures them (see \
         docs/PROTOCOL.md); `cpu/intr` is handler CPU time per handled interrupt.\n",
    );
    let failed: Vec<&ModelRun> = runs.iter().filter(|r| !r.ok()).collect();
    if !failed.is_empty() {
        s.push_str("\n## Failures\n\n");
        for r in failed {
            for p in &r.problems {
                let _ = writeln!(s, "- {}: {p}", r.model);
            }
        }
    }
    s.push_str("\n## Charts\n\n");
    s.push_str(
        "- `throughput.svg`: frames/s received by the guest, disk operations/s and serial bytes/s, \
         one bar per model.\n\n![throughput](throughput.svg)\n\n",
    );
    for (source, path, drawn) in latency_charts {
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let _ = writeln!(
            s,
            "- `{file}`: latency distribution of `{source}` — for each model ({}), the fraction of its \
             handled interrupts (y) whose latency falls in a bucket at or below x (ns, log scale), from \
             the kernel's `@@ hist` lines.\n\n![{source}]({file})\n",
            drawn.join(", ")
        );
    }
    s.push_str("\n## Commands\n\nEach model's kernel command line:\n\n");
    for r in runs {
        let _ = writeln!(s, "- {}: `{}`", r.model, r.cmdline);
    }
    let _ = writeln!(
        s,
        "\nTo run one model with the live view: `cargo run --release -- --model {}`.",
        models.first().unwrap_or(&"pool")
    );
    s
}

/// The host machine in one line: CPU model, logical CPUs, kernel release.
pub fn machine_description() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} logical CPUs, {} {}", std::env::consts::OS, release.trim())
}

/// `secs` since the Unix epoch as a UTC date and time (`2026-11-05T12:30:00Z`).
pub fn utc_timestamp(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// The default report folder: `target/report/<UTC time>` (colons replaced for file systems).
pub fn default_report_dir(secs: u64) -> PathBuf {
    PathBuf::from("target/report").join(utc_timestamp(secs).replace(':', "-"))
}
