//! The main job (`run=scenario`): the NIC, the disk, the serial line and the edu device busy
//! at once, with the host driving the traffic while the guest runs.
//!
//! This module defines what the host sends (the serial input lines, the frame plan), types the
//! guest's `@@ live`, `@@ result` and `@@ hist` lines (`docs/PROTOCOL.md`), and judges a run:
//! any loss or bad data is a failure.
//!
//! The NIC's traffic goes through [`TrafficSource`]: `crate::traffic::NetPeer` (the host end
//! of the guest's virtio-net) implements it, and [`host_devices`] creates the peer and the
//! disk image (`crate::traffic::DiskImage`) for a boot.

use std::io::{self, Write};
use std::ops::Range;
use std::process::ChildStdin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use crate::protocol::Event;
use crate::qemu::SerialInput;

/// The serial input's `S` lines per run.
pub const SERIAL_LINES: u64 = 1024;
/// Bytes of one `S` line, its `\n` included.
pub const SERIAL_LINE_BYTES: usize = 64;
/// Characters of an `S` line's payload: 64 − `S` − space − 8 digits − space − `\n`.
pub const SERIAL_PAYLOAD_CHARS: usize = SERIAL_LINE_BYTES - 12;
/// The payload's alphabet.
pub const SERIAL_ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// The `S` line number `seq` of the serial input: `S <seq as 8 digits> <52 payload chars>\n`,
/// payload character `i` being `SERIAL_ALPHABET[(seq * 31 + i * 7) % 36]` — exactly
/// [`SERIAL_LINE_BYTES`] bytes (`seq` below 10^8).
pub fn serial_line(seq: u64) -> String {
    let payload: String = (0..SERIAL_PAYLOAD_CHARS as u64)
        .map(|i| char::from(SERIAL_ALPHABET[((seq.wrapping_mul(31).wrapping_add(i * 7)) % 36) as usize]))
        .collect();
    format!("S {seq:08} {payload}\n")
}

/// The end line of the serial input after `count` `S` lines: `E <count>\n`.
pub fn serial_end(count: u64) -> String {
    format!("E {count}\n")
}

/// An interrupt dispatch model (the kernel's `intr.model=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Model {
    /// The handler runs in interrupt context (the baseline).
    Direct,
    /// One thread per source, the line masked until it finishes.
    Dedicated,
    /// Pooled per-CPU queues of handlers.
    Pool,
    /// Pinned per-IPL interrupt threads.
    Pinned,
}

impl Model {
    /// Every model, in the order the comparison runs them.
    pub const ALL: [Model; 4] = [Model::Direct, Model::Dedicated, Model::Pool, Model::Pinned];

    /// The kernel's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Model::Direct => "direct",
            Model::Dedicated => "dedicated",
            Model::Pool => "pool",
            Model::Pinned => "pinned",
        }
    }
}

impl std::fmt::Display for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The key=value fields of one protocol line, read by name with errors that name the key.
struct Fields<'a> {
    /// The line's kind, for messages (e.g. "`@@ live kind=progress`").
    line: &'a str,
    fields: &'a [(String, String)],
}

impl Fields<'_> {
    fn text(&self, key: &str) -> Result<String, String> {
        match self.fields.iter().find(|(k, _)| k == key) {
            Some((_, v)) if !v.is_empty() => Ok(v.clone()),
            Some(_) => Err(format!("{} line: `{key}=` is empty", self.line)),
            None => Err(format!("{} line has no `{key}=`", self.line)),
        }
    }

    fn num(&self, key: &str) -> Result<u64, String> {
        let v = self.text(key)?;
        v.parse().map_err(|_| format!("{} line: `{key}={v}` is not a number", self.line))
    }

    fn choice(&self, key: &str, yes: &str, no: &str) -> Result<bool, String> {
        match self.text(key)? {
            v if v == yes => Ok(true),
            v if v == no => Ok(false),
            v => Err(format!("{} line: `{key}={v}` is neither {yes} nor {no}", self.line)),
        }
    }
}

/// The workload's counters (`@@ live kind=progress`, `@@ result scope=workload`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames the guest received.
    pub net_rx: u64,
    /// Frames the guest knows were lost (sequence gaps).
    pub net_lost: u64,
    /// Frames that failed the guest's verification.
    pub net_bad: u64,
    /// Frames the guest echoed back.
    pub net_echoed: u64,
    /// Disk operations verified.
    pub blk_ops: u64,
    /// Disk operations that failed verification.
    pub blk_bad: u64,
    /// Bytes of `S` lines the guest's serial port received.
    pub serial_bytes: u64,
    /// `S` lines that verified.
    pub serial_lines: u64,
    /// `S` lines that failed verification.
    pub serial_bad: u64,
}

impl Counters {
    fn parse(f: &Fields) -> Result<Counters, String> {
        Ok(Counters {
            net_rx: f.num("net_rx")?,
            net_lost: f.num("net_lost")?,
            net_bad: f.num("net_bad")?,
            net_echoed: f.num("net_echoed")?,
            blk_ops: f.num("blk_ops")?,
            blk_bad: f.num("blk_bad")?,
            serial_bytes: f.num("serial_bytes")?,
            serial_lines: f.num("serial_lines")?,
            serial_bad: f.num("serial_bad")?,
        })
    }
}

/// One `@@ live kind=progress` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Milliseconds since the job started.
    pub t_ms: u64,
    pub counters: Counters,
}

/// One `@@ live kind=source` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSample {
    pub t_ms: u64,
    pub name: String,
    pub model: String,
    pub count: u64,
    pub handled: u64,
    pub cpu_ns: u64,
    pub p50: u64,
    pub p99: u64,
    /// Whether the source is throttled as a storm now.
    pub storm: bool,
    /// Whether the source is masked now.
    pub masked: bool,
}

/// A periodic record of the main job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveRecord {
    Source(SourceSample),
    Progress(Progress),
}

/// The typed record of a `@@ live` line: `None` for another event, an error naming the key
/// for a record that lacks one (unknown keys are ignored).
pub fn live_record(event: &Event) -> Option<Result<LiveRecord, String>> {
    let Event::Live { kind, fields } = event else { return None };
    let line = format!("`@@ live kind={kind}`");
    let f = Fields { line: &line, fields };
    Some(match kind.as_str() {
        "progress" => {
            (|| Ok(LiveRecord::Progress(Progress { t_ms: f.num("t_ms")?, counters: Counters::parse(&f)? })))()
        }
        "source" => (|| {
            Ok(LiveRecord::Source(SourceSample {
                t_ms: f.num("t_ms")?,
                name: f.text("name")?,
                model: f.text("model")?,
                count: f.num("count")?,
                handled: f.num("handled")?,
                cpu_ns: f.num("cpu_ns")?,
                p50: f.num("p50")?,
                p99: f.num("p99")?,
                storm: f.choice("storm", "on", "off")?,
                masked: f.choice("masked", "1", "0")?,
            }))
        })(),
        other => Err(format!("`@@ live` line of unknown kind `{other}`")),
    })
}

/// One `@@ result scope=source` record: a source's totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceResult {
    pub name: String,
    pub model: String,
    pub count: u64,
    pub handled: u64,
    pub cpu_ns: u64,
    pub p50: u64,
    pub p99: u64,
    /// Storms that began on the source.
    pub storms: u64,
}

/// One `@@ hist` line: a source's latency histogram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    pub name: String,
    pub model: String,
    pub unit: String,
    /// `(lower bound, count)`, ascending, non-empty buckets only.
    pub buckets: Vec<(u64, u64)>,
}

impl Histogram {
    /// Samples in all buckets.
    pub fn total(&self) -> u64 {
        self.buckets.iter().map(|(_, c)| c).sum()
    }

    /// `(lower bound, fraction of samples in this bucket or below)` per bucket.
    pub fn cumulative(&self) -> Vec<(u64, f64)> {
        let total = self.total().max(1) as f64;
        let mut sum = 0;
        self.buckets
            .iter()
            .map(|&(lower, count)| {
                sum += count;
                (lower, sum as f64 / total)
            })
            .collect()
    }
}

/// Everything the guest reported about one run of the main job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobResults {
    /// The model of the `@@ boot` line.
    pub model: Option<String>,
    /// The `@@ result scope=source` records.
    pub sources: Vec<SourceResult>,
    /// The `@@ result scope=workload` record.
    pub workload: Option<Counters>,
    /// The `@@ hist` lines.
    pub hists: Vec<Histogram>,
    /// The `@@ live kind=progress` records, in order.
    pub progress: Vec<Progress>,
    /// `(source, rate)` of every `@@ storm ... state=on`.
    pub storms: Vec<(String, u64)>,
    /// Lines that could not be typed (a missing key, a non-number).
    pub errors: Vec<String>,
}

impl JobResults {
    /// Types the main job's lines among `events` (the boot's events in order).
    pub fn from_events(events: &[Event]) -> JobResults {
        let mut out = JobResults::default();
        for e in events {
            match e {
                Event::Boot { model, .. } => out.model = model.clone(),
                Event::Storm { source, on: true, rate } => out.storms.push((source.clone(), *rate)),
                Event::Hist { name, model, unit, buckets } => out.hists.push(Histogram {
                    name: name.clone(),
                    model: model.clone(),
                    unit: unit.clone(),
                    buckets: buckets.clone(),
                }),
                Event::Live { .. } => match live_record(e) {
                    Some(Ok(LiveRecord::Progress(p))) => out.progress.push(p),
                    Some(Ok(LiveRecord::Source(_))) | None => {}
                    Some(Err(msg)) => out.errors.push(msg),
                },
                Event::Result(fields) => {
                    let scope = fields.iter().find(|(k, _)| k == "scope").map(|(_, v)| v.as_str());
                    let line = format!("`@@ result scope={}`", scope.unwrap_or(""));
                    let f = Fields { line: &line, fields };
                    let typed = match scope {
                        Some("workload") => Counters::parse(&f).map(|c| out.workload = Some(c)),
                        Some("source") => source_result(&f).map(|s| out.sources.push(s)),
                        _ => Ok(()),
                    };
                    out.errors.extend(typed.err());
                }
                _ => {}
            }
        }
        out
    }

    /// The final counters' throughput, each over the span in which its counter moved.
    pub fn throughput(&self) -> Throughput {
        let Some(last) = self.workload else { return Throughput::default() };
        Throughput {
            frames_per_s: rate(&self.progress, |c| c.net_rx, last.net_rx),
            blk_ops_per_s: rate(&self.progress, |c| c.blk_ops, last.blk_ops),
            serial_bytes_per_s: rate(&self.progress, |c| c.serial_bytes, last.serial_bytes),
        }
    }
}

fn source_result(f: &Fields) -> Result<SourceResult, String> {
    Ok(SourceResult {
        name: f.text("name")?,
        model: f.text("model")?,
        count: f.num("count")?,
        handled: f.num("handled")?,
        cpu_ns: f.num("cpu_ns")?,
        p50: f.num("p50")?,
        p99: f.num("p99")?,
        storms: f.num("storms")?,
    })
}

/// Rates of the workload (per second of guest time); `None` where there was nothing to time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Throughput {
    pub frames_per_s: Option<f64>,
    pub blk_ops_per_s: Option<f64>,
    pub serial_bytes_per_s: Option<f64>,
}

/// `last` over the time the counter took to go from its last zero sample (or the job's
/// start) to its first sample at `last`; `None` if it never moved or was never sampled.
pub fn rate(progress: &[Progress], counter: impl Fn(&Counters) -> u64, last: u64) -> Option<f64> {
    if last == 0 {
        return None;
    }
    let start = progress.iter().take_while(|p| counter(&p.counters) == 0).last().map_or(0, |p| p.t_ms);
    let end = progress.iter().find(|p| counter(&p.counters) >= last)?.t_ms;
    (end > start).then(|| last as f64 * 1000.0 / (end - start) as f64)
}

/// What the host sends in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Frames to send after `@@ net-ready`.
    pub frames: u64,
    /// Frames per second (0: unpaced).
    pub frame_rate: u32,
    /// Whether the guest echoes the frames back.
    pub echo: bool,
    /// `S` lines to type after `@@ serial-ready`.
    pub serial_lines: u64,
}

impl Default for Plan {
    fn default() -> Self {
        Plan { frames: 2000, frame_rate: 1000, echo: true, serial_lines: SERIAL_LINES }
    }
}

/// Frames the feeder hands to [`TrafficSource::send`] at a time (the live count of frames sent
/// moves by this much).
pub const FRAME_BATCH: u64 = 100;

/// Echoed frames the host got back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EchoStats {
    /// Echoes received that verified.
    pub received: u64,
    /// Echoes received that did not.
    pub bad: u64,
}

/// The host end of the guest's NIC (`crate::traffic::NetPeer` implements it).
pub trait TrafficSource: Send + Sync {
    /// Sends the frames numbered `seqs`, asking the guest to echo them if `echo`, at `rate`
    /// frames per second (0: unpaced).
    fn send(&self, seqs: Range<u64>, echo: bool, rate: u32) -> io::Result<()>;
    /// Sends the end frame: `total` frames were sent.
    fn send_end(&self, total: u64) -> io::Result<()>;
    /// The echoes received so far.
    fn echoes(&self) -> EchoStats;
}

/// The host's devices for one boot of the main job.
#[derive(Default)]
pub struct Devices {
    /// The NIC's host end (`None`: no NIC traffic).
    pub net: Option<Arc<dyn TrafficSource>>,
    /// QEMU arguments for the NIC and the disk.
    pub qemu_args: Vec<String>,
    /// What must live as long as the boot (the disk image's file, ...).
    pub keep_alive: Vec<Box<dyn Send>>,
}

/// Creates the NIC's host end and the disk image for one boot. The integration of
/// `crate::traffic` fills this in:
///
/// ```ignore
/// let net = crate::traffic::NetPeer::new()?;
/// let disk = crate::traffic::DiskImage::create(16)?;
/// let mut qemu_args = net.qemu_args();
/// qemu_args.extend(disk.qemu_args());
/// Ok(Devices { net: Some(Arc::new(net)), qemu_args, keep_alive: vec![Box::new(disk)] })
/// ```
pub fn host_devices() -> io::Result<Devices> {
    Ok(Devices::default())
}

/// What the host has sent so far, shared between the feeder's threads and the live view.
#[derive(Debug, Default)]
pub struct HostCounters {
    pub frames_sent: AtomicU64,
    pub serial_lines_sent: AtomicU64,
    pub serial_bytes_sent: AtomicU64,
    /// Whether the NIC had a host end (frames were meant to be sent).
    pub net_wired: AtomicBool,
    /// Errors sending traffic.
    pub errors: Mutex<Vec<String>>,
}

impl HostCounters {
    fn error(&self, msg: String) {
        self.errors.lock().unwrap_or_else(|e| e.into_inner()).push(msg);
    }

    /// The counters now, with the echoes `net` received.
    pub fn snapshot(&self, plan: &Plan, net: Option<&dyn TrafficSource>) -> HostTraffic {
        HostTraffic {
            plan: *plan,
            net_wired: self.net_wired.load(Ordering::Relaxed),
            frames_sent: self.frames_sent.load(Ordering::Relaxed),
            echoes: net.map(|n| n.echoes()),
            serial_lines_sent: self.serial_lines_sent.load(Ordering::Relaxed),
            serial_bytes_sent: self.serial_bytes_sent.load(Ordering::Relaxed),
            errors: self.errors.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

/// What the host sent and got back in one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostTraffic {
    pub plan: Plan,
    pub net_wired: bool,
    pub frames_sent: u64,
    pub echoes: Option<EchoStats>,
    pub serial_lines_sent: u64,
    pub serial_bytes_sent: u64,
    pub errors: Vec<String>,
}

/// The serial input for a boot of the main job: after `@@ net-ready` it sends `plan.frames`
/// frames through `net` (on its own thread); after `@@ serial-ready` it types the serial
/// input. QEMU's stdin stays open until QEMU ends.
pub fn feeder(plan: Plan, net: Option<Arc<dyn TrafficSource>>, counters: Arc<HostCounters>) -> SerialInput {
    counters.net_wired.store(net.is_some(), Ordering::Relaxed);
    SerialInput::feeder(move |stdin: ChildStdin, events: mpsc::Receiver<Event>| {
        let mut stdin = Some(stdin);
        // Sent once, even if the guest said `@@ net-ready` twice.
        let mut net_once = net.clone();
        let mut workers = Vec::new();
        for event in events {
            match event {
                Event::NetReady => {
                    if let Some(net) = net_once.take() {
                        let counters = Arc::clone(&counters);
                        workers.push(thread::spawn(move || {
                            send_frames(&*net, &plan, &counters);
                            None
                        }));
                    }
                }
                Event::SerialReady => {
                    if let Some(mut input) = stdin.take() {
                        let counters = Arc::clone(&counters);
                        workers.push(thread::spawn(move || {
                            if let Err(e) = type_serial_input(&mut input, plan.serial_lines, &counters) {
                                counters.error(format!("writing the serial input: {e}"));
                            }
                            Some(input)
                        }));
                    }
                }
                _ => {}
            }
        }
        // QEMU has ended: now its stdin may close.
        for w in workers {
            drop(w.join());
        }
    })
}

/// Sends the frames of `plan` in batches of [`FRAME_BATCH`], then the end frame.
pub fn send_frames(net: &dyn TrafficSource, plan: &Plan, counters: &HostCounters) {
    let mut seq = 0;
    while seq < plan.frames {
        let end = (seq + FRAME_BATCH).min(plan.frames);
        if let Err(e) = net.send(seq..end, plan.echo, plan.frame_rate) {
            counters.error(format!("sending frames {seq}..{end}: {e}"));
            return;
        }
        counters.frames_sent.fetch_add(end - seq, Ordering::Relaxed);
        seq = end;
    }
    if let Err(e) = net.send_end(plan.frames) {
        counters.error(format!("sending the end frame: {e}"));
    }
}

/// Writes `lines` `S` lines and the end line to `out`, counting what was written.
pub fn type_serial_input(out: &mut impl Write, lines: u64, counters: &HostCounters) -> io::Result<()> {
    for seq in 0..lines {
        let line = serial_line(seq);
        out.write_all(line.as_bytes())?;
        out.flush()?;
        counters.serial_lines_sent.fetch_add(1, Ordering::Relaxed);
        counters.serial_bytes_sent.fetch_add(line.len() as u64, Ordering::Relaxed);
    }
    out.write_all(serial_end(lines).as_bytes())?;
    out.flush()
}

/// Why the run failed, from the guest's results and what the host sent: loss, bad data,
/// missing records, send errors. Empty if it did what it should.
pub fn problems(results: &JobResults, host: &HostTraffic) -> Vec<String> {
    let mut out: Vec<String> = results.errors.iter().map(|e| format!("malformed: {e}")).collect();
    out.extend(host.errors.iter().map(|e| format!("host: {e}")));
    let Some(w) = results.workload else {
        out.push("the kernel printed no `@@ result scope=workload` line".into());
        return out;
    };
    if results.sources.is_empty() {
        out.push("the kernel printed no `@@ result scope=source` line".into());
    }
    let lost = w.net_lost.max(host.frames_sent.saturating_sub(w.net_rx));
    if lost > 0 {
        out.push(format!("{lost} frames lost (sent {}, received {})", host.frames_sent, w.net_rx));
    }
    if host.net_wired && host.frames_sent < host.plan.frames {
        out.push(format!("only {} of {} frames were sent", host.frames_sent, host.plan.frames));
    }
    for (bad, what) in [(w.net_bad, "frames"), (w.blk_bad, "disk operations"), (w.serial_bad, "serial lines")]
    {
        if bad > 0 {
            out.push(format!("{bad} {what} failed verification"));
        }
    }
    if w.serial_lines < host.serial_lines_sent {
        out.push(format!(
            "{} of {} serial lines were not received intact",
            host.serial_lines_sent - w.serial_lines,
            host.serial_lines_sent
        ));
    }
    if host.serial_lines_sent < host.plan.serial_lines {
        out.push(format!(
            "only {} of {} serial lines were typed",
            host.serial_lines_sent, host.plan.serial_lines
        ));
    }
    if let Some(e) = host.echoes {
        if e.bad > 0 {
            out.push(format!("{} echoed frames failed verification on the host", e.bad));
        }
        if e.received + e.bad < w.net_echoed {
            out.push(format!(
                "{} of {} echoed frames never came back",
                w.net_echoed - e.received - e.bad,
                w.net_echoed
            ));
        }
    }
    out
}

/// Formats nanoseconds for tables (`850ns`, `12.3us`, `4.56ms`).
pub fn fmt_ns(ns: u64) -> String {
    match ns {
        0..=9_999 => format!("{ns}ns"),
        10_000..=9_999_999 => format!("{:.1}us", ns as f64 / 1e3),
        _ => format!("{:.2}ms", ns as f64 / 1e6),
    }
}

/// The run's summary: traffic, per-source latency, storms, the model and the verdict.
pub fn summary(results: &JobResults, host: &HostTraffic) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let model = results.model.as_deref().unwrap_or("-");
    let _ = writeln!(s, "main job summary (interrupt model {model}):");
    let w = results.workload.unwrap_or_default();
    let t = results.throughput();
    let per_s = |r: Option<f64>, unit: &str| r.map(|r| format!(", {r:.0} {unit}/s")).unwrap_or_default();
    if host.net_wired {
        let verified = w.net_rx.saturating_sub(w.net_bad);
        let lost = w.net_lost.max(host.frames_sent.saturating_sub(w.net_rx));
        let _ = writeln!(
            s,
            "  frames:  sent {}, received {}, verified {verified}, lost {lost}{}",
            host.frames_sent,
            w.net_rx,
            per_s(t.frames_per_s, "frames")
        );
        let back = host.echoes.map(|e| format!(", {} came back ({} bad)", e.received, e.bad));
        let _ = writeln!(s, "  echoes:  {} frames echoed{}", w.net_echoed, back.unwrap_or_default());
    } else {
        let _ = writeln!(s, "  frames:  none sent (no NIC peer on this host tool), received {}", w.net_rx);
    }
    let _ = writeln!(
        s,
        "  disk:    {} operations verified, {} bad{}",
        w.blk_ops,
        w.blk_bad,
        per_s(t.blk_ops_per_s, "ops")
    );
    let _ = writeln!(
        s,
        "  serial:  sent {} bytes ({} lines), received {} bytes, {} lines verified, {} bad{}",
        host.serial_bytes_sent,
        host.serial_lines_sent,
        w.serial_bytes,
        w.serial_lines,
        w.serial_bad,
        per_s(t.serial_bytes_per_s, "bytes")
    );
    if !results.sources.is_empty() {
        let _ = writeln!(s, "  interrupt sources:");
        let _ = writeln!(
            s,
            "    {:<16} {:<10} {:>10} {:>10} {:>10} {:>10} {:>6}",
            "source", "model", "count", "handled", "p50", "p99", "storms"
        );
        for r in &results.sources {
            let _ = writeln!(
                s,
                "    {:<16} {:<10} {:>10} {:>10} {:>10} {:>10} {:>6}",
                r.name,
                r.model,
                r.count,
                r.handled,
                fmt_ns(r.p50),
                fmt_ns(r.p99),
                r.storms
            );
        }
    }
    let storms: u64 = results.sources.iter().map(|r| r.storms).sum();
    let _ = writeln!(s, "  storms:  {storms} began ({} `@@ storm` lines)", results.storms.len());
    let problems = problems(results, host);
    if problems.is_empty() {
        let _ = writeln!(s, "  verdict: ok, no loss, no bad data");
    } else {
        let _ = writeln!(s, "  verdict: FAILED");
        for p in problems {
            let _ = writeln!(s, "    - {p}");
        }
    }
    s
}

/// The kernel command line for `run=<run>` with `model` (`intr.model=`) and the user's
/// `append`; an error if both name a model.
pub fn cmdline(run: &str, model: Option<Model>, append: &str) -> Result<String, String> {
    let mut line = format!("run={run}");
    if let Some(m) = model {
        if append.split_whitespace().any(|o| o.starts_with("intr.model=")) {
            return Err(format!("--model {m} and --append intr.model=... both choose the model: keep one"));
        }
        line = crate::qemu::join_cmdline(&line, &format!("intr.model={m}"));
    }
    Ok(crate::qemu::join_cmdline(&line, append))
}
