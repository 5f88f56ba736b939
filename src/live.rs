//! The live view of the main job: a refreshing table of interrupt sources (count, rate,
//! p50/p99, storm) and progress bars for frames, disk operations and serial bytes, drawn with
//! `indicatif` when stdout is a terminal; plain periodic lines otherwise (logs, CI).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::protocol::Event;
use crate::workload::{self, HostCounters, LiveRecord, Plan, Progress, SourceSample};

/// How often the plain view prints (guest milliseconds).
pub const PLAIN_PERIOD_MS: u64 = 1000;

/// One source's row: its latest sample and its rate over the last interval.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRow {
    pub sample: SourceSample,
    /// Interrupts per second between the last two samples (`None` after the first).
    pub rate: Option<f64>,
}

impl SourceRow {
    /// The row as the table shows it (aligned with [`table_header`]).
    pub fn line(&self) -> String {
        let s = &self.sample;
        let rate = self.rate.map(|r| format!("{r:.0}/s")).unwrap_or_else(|| "-".into());
        let state = match (s.storm, s.masked) {
            (true, _) => "STORM",
            (false, true) => "masked",
            _ => "",
        };
        format!(
            "{:<16} {:<10} {:>10} {:>10} {:>10} {:>10} {}",
            s.name,
            s.model,
            s.count,
            rate,
            workload::latency(s.handled, s.p50),
            workload::latency(s.handled, s.p99),
            state
        )
    }
}

/// The table's column headings.
pub fn table_header() -> String {
    format!(
        "{:<16} {:<10} {:>10} {:>10} {:>10} {:>10} {}",
        "source", "model", "count", "rate", "p50", "p99", "state"
    )
}

/// What the live view knows: the sources (by name) and the latest progress.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveState {
    pub sources: BTreeMap<String, SourceRow>,
    pub progress: Option<Progress>,
    /// Lines that could not be typed.
    pub errors: Vec<String>,
}

/// What a record changed, for the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A source's row (new if `added`).
    Source {
        name: String,
        added: bool,
    },
    Progress,
    None,
}

impl LiveState {
    /// Takes one protocol event into account.
    pub fn update(&mut self, event: &Event) -> Change {
        match workload::live_record(event) {
            None => Change::None,
            Some(Err(e)) => {
                self.errors.push(e.to_string());
                Change::None
            }
            Some(Ok(LiveRecord::Progress(p))) => {
                self.progress = Some(p);
                Change::Progress
            }
            Some(Ok(LiveRecord::Source(sample))) => {
                let name = sample.name.clone();
                let previous = self.sources.get(&name);
                let added = previous.is_none();
                let rate = previous.and_then(|prev| {
                    let dt = sample.t_ms.checked_sub(prev.sample.t_ms).filter(|&dt| dt > 0)?;
                    Some(sample.count.saturating_sub(prev.sample.count) as f64 * 1000.0 / dt as f64)
                });
                self.sources.insert(name.clone(), SourceRow { sample, rate });
                Change::Source { name, added }
            }
        }
    }
}

/// The plain view's lines for the latest progress: one for the traffic, one for the sources.
pub fn plain_lines(state: &LiveState, plan: &Plan, counters: &HostCounters) -> Vec<String> {
    let Some(p) = state.progress else { return Vec::new() };
    let c = p.counters;
    let mut lines = vec![format!(
        "live {:>6.2}s: frames {}/{} (sent {}, lost {}, bad {}), disk {} ops (bad {}), serial {}/{} bytes (bad lines {})",
        p.t_ms as f64 / 1000.0,
        c.net_rx,
        counters.frames_requested.load(Ordering::Relaxed),
        counters.frames_sent.load(Ordering::Relaxed),
        c.net_lost,
        c.net_bad,
        c.blk_ops,
        c.blk_bad,
        c.serial_bytes,
        plan.serial_lines * workload::SERIAL_LINE_BYTES as u64,
        c.serial_bad
    )];
    if !state.sources.is_empty() {
        let parts: Vec<String> = state
            .sources
            .values()
            .map(|r| {
                let rate = r.rate.map(|x| format!(" {x:.0}/s")).unwrap_or_default();
                let storm = if r.sample.storm { " STORM" } else { "" };
                format!(
                    "{} {}{rate} p50 {} p99 {}{storm}",
                    r.sample.name,
                    r.sample.count,
                    workload::latency(r.sample.handled, r.sample.p50),
                    workload::latency(r.sample.handled, r.sample.p99)
                )
            })
            .collect();
        lines.push(format!("      sources: {}", parts.join("; ")));
    }
    lines
}

/// The live view of one run.
pub struct LiveView {
    state: LiveState,
    plan: Plan,
    counters: Arc<HostCounters>,
    /// Whether it draws with indicatif (stdout is a terminal) or prints plain lines.
    drawn: bool,
    multi: MultiProgress,
    header: ProgressBar,
    rows: BTreeMap<String, ProgressBar>,
    frames: ProgressBar,
    disk: ProgressBar,
    serial: ProgressBar,
    last_plain_ms: Option<u64>,
}

impl LiveView {
    /// A view that draws if stdout is a terminal and prints plain lines otherwise.
    pub fn new(title: &str, plan: Plan, counters: Arc<HostCounters>) -> LiveView {
        LiveView::with_drawing(title, plan, counters, std::io::stdout().is_terminal())
    }

    /// A view that draws (`drawn`) or prints plain lines.
    pub fn with_drawing(title: &str, plan: Plan, counters: Arc<HostCounters>, drawn: bool) -> LiveView {
        let target = if drawn { ProgressDrawTarget::stdout_with_hz(8) } else { ProgressDrawTarget::hidden() };
        let multi = MultiProgress::with_draw_target(target);
        let text = ProgressStyle::with_template("{msg}").expect("a valid template");
        let header = multi.add(ProgressBar::new(0).with_style(text.clone()));
        header.set_message(format!("{title}\n{}", table_header()));
        let bar = |prefix: &str, len: u64, template: &str| {
            let style =
                ProgressStyle::with_template(template).expect("a valid template").progress_chars("=> ");
            multi.add(ProgressBar::new(len).with_style(style).with_prefix(prefix.to_string()))
        };
        let frames = if counters.net_wired.load(Ordering::Relaxed) {
            bar("frames", 0, "{prefix:>7} [{bar:32}] {pos}/{len} {msg}")
        } else {
            bar("frames", 0, "{prefix:>7} {msg}")
        };
        let disk = bar("disk", 0, "{prefix:>7} {pos} operations verified {msg}");
        let serial_bytes = plan.serial_lines * workload::SERIAL_LINE_BYTES as u64;
        let serial = bar("serial", serial_bytes, "{prefix:>7} [{bar:32}] {pos}/{len} bytes {msg}");
        LiveView {
            state: LiveState::default(),
            plan,
            counters,
            drawn,
            multi,
            header,
            rows: BTreeMap::new(),
            frames,
            disk,
            serial,
            last_plain_ms: None,
        }
    }

    /// What the view knows so far.
    pub fn state(&self) -> &LiveState {
        &self.state
    }

    /// Shows a line of text above the view (or prints it, in the plain view).
    pub fn message(&self, line: &str) {
        if self.drawn {
            let _ = self.multi.println(line);
        } else {
            println!("{line}");
        }
    }

    /// Takes one protocol event into account and redraws what it changed.
    pub fn on_event(&mut self, event: &Event) {
        let errors_before = self.state.errors.len();
        let change = self.state.update(event);
        for e in &self.state.errors[errors_before..] {
            self.message(&format!("live: {e}"));
        }
        match change {
            Change::None => {}
            Change::Source { name, added } => {
                let Some(row) = self.state.sources.get(&name) else { return };
                if added {
                    let style = ProgressStyle::with_template("{msg}").expect("a valid template");
                    let bar = self.multi.insert_before(&self.frames, ProgressBar::new(0).with_style(style));
                    self.rows.insert(name.clone(), bar);
                }
                if let Some(bar) = self.rows.get(&name) {
                    bar.set_message(row.line());
                }
            }
            Change::Progress => self.show_progress(),
        }
    }

    fn show_progress(&mut self) {
        let Some(p) = self.state.progress else { return };
        let c = p.counters;
        let sent = self.counters.frames_sent.load(Ordering::Relaxed);
        self.frames.set_position(c.net_rx);
        self.frames.set_length(self.counters.frames_requested.load(Ordering::Relaxed));
        if !self.counters.net_wired.load(Ordering::Relaxed) {
            self.frames.set_message(format!("(no NIC peer: none sent, {} received)", c.net_rx));
        } else {
            self.frames
                .set_message(format!("received (sent {sent}, lost {}, bad {})", c.net_lost, c.net_bad));
        }
        self.disk.set_position(c.blk_ops);
        self.disk.set_message(format!("(bad {})", c.blk_bad));
        self.serial.set_position(c.serial_bytes);
        self.serial.set_message(format!("({} lines verified, bad {})", c.serial_lines, c.serial_bad));
        if !self.drawn && self.last_plain_ms.is_none_or(|last| p.t_ms >= last + PLAIN_PERIOD_MS) {
            self.last_plain_ms = Some(p.t_ms);
            for line in plain_lines(&self.state, &self.plan, &self.counters) {
                println!("{line}");
            }
        }
    }

    /// Removes the view from the terminal (the summary follows).
    pub fn finish(&self) {
        for bar in
            [&self.header, &self.frames, &self.disk, &self.serial].into_iter().chain(self.rows.values())
        {
            bar.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}
