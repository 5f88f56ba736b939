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
pub const SERIAL_ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

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

/// What is wrong with a protocol line the host types (`@@ live`, `@@ result`, `@@ net-ready`):
/// the line's kind and the key at fault. `Display` gives the message the report prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    /// The line's kind, quoted for messages (e.g. "`@@ live kind=progress`").
    pub line: String,
    /// What is wrong.
    pub problem: RecordProblem,
}

/// The ways a protocol line can be malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordProblem {
    /// `key=` is absent.
    Missing { key: &'static str },
    /// `key=` has no value.
    Empty { key: &'static str },
    /// `key=value` is not a number.
    NotANumber { key: &'static str, value: String },
    /// `key=value` is neither of the two allowed values.
    NotAChoice { key: &'static str, value: String, yes: &'static str, no: &'static str },
    /// `key=value` is a number too large for the field.
    TooLarge { key: &'static str, value: u64 },
    /// A counters line with none of the parts' keys.
    NoParts,
    /// A `@@ live` line of a kind the host does not know.
    UnknownKind { kind: String },
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let line = &self.line;
        match &self.problem {
            RecordProblem::Missing { key } => write!(f, "{line} line has no `{key}=`"),
            RecordProblem::Empty { key } => write!(f, "{line} line: `{key}=` is empty"),
            RecordProblem::NotANumber { key, value } => {
                write!(f, "{line} line: `{key}={value}` is not a number")
            }
            RecordProblem::NotAChoice { key, value, yes, no } => {
                write!(f, "{line} line: `{key}={value}` is neither {yes} nor {no}")
            }
            RecordProblem::TooLarge { key, value } => write!(f, "{line} line: `{key}={value}` is too large"),
            RecordProblem::NoParts => {
                write!(f, "{line} line has none of `net_rx=`, `blk_ops=`, `serial_bytes=`")
            }
            RecordProblem::UnknownKind { kind } => write!(f, "`@@ live` line of unknown kind `{kind}`"),
        }
    }
}

impl std::error::Error for RecordError {}

/// `--model` and `--append intr.model=` both chose the interrupt model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelChosenTwice(pub Model);

impl std::fmt::Display for ModelChosenTwice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "--model {} and --append intr.model=... both choose the model: keep one", self.0)
    }
}

impl std::error::Error for ModelChosenTwice {}

/// The key=value fields of one protocol line, read by name with errors that name the key.
struct Fields<'a> {
    /// The line's kind, for messages (e.g. "`@@ live kind=progress`").
    line: &'a str,
    fields: &'a [(String, String)],
}

impl Fields<'_> {
    fn has(&self, key: &str) -> bool {
        self.fields.iter().any(|(k, _)| k == key)
    }

    fn error(&self, problem: RecordProblem) -> RecordError {
        RecordError { line: self.line.to_string(), problem }
    }

    fn text(&self, key: &'static str) -> Result<String, RecordError> {
        match self.fields.iter().find(|(k, _)| k == key) {
            Some((_, v)) if !v.is_empty() => Ok(v.clone()),
            Some(_) => Err(self.error(RecordProblem::Empty { key })),
            None => Err(self.error(RecordProblem::Missing { key })),
        }
    }

    fn num(&self, key: &'static str) -> Result<u64, RecordError> {
        let v = self.text(key)?;
        v.parse().map_err(|_| self.error(RecordProblem::NotANumber { key, value: v }))
    }

    fn choice(&self, key: &'static str, yes: &'static str, no: &'static str) -> Result<bool, RecordError> {
        match self.text(key)? {
            v if v == yes => Ok(true),
            v if v == no => Ok(false),
            value => Err(self.error(RecordProblem::NotAChoice { key, value, yes, no })),
        }
    }
}

/// Which parts of the workload the kernel reported (a part whose keys are all absent did not
/// run: its device is not there, or the kernel does not drive it yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Parts {
    pub net: bool,
    pub blk: bool,
    pub serial: bool,
}

/// The keys of each part of `@@ live kind=progress` / `@@ result scope=workload`.
const NET_KEYS: [&str; 4] = ["net_rx", "net_lost", "net_bad", "net_echoed"];
const BLK_KEYS: [&str; 2] = ["blk_ops", "blk_bad"];
const SERIAL_KEYS: [&str; 3] = ["serial_bytes", "serial_lines", "serial_bad"];

/// The workload's counters (`@@ live kind=progress`, `@@ result scope=workload`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// The parts reported; the counters of the others are 0.
    pub parts: Parts,
    /// Frames with our header the guest received (bad ones included; duplicates too).
    pub net_rx: u64,
    /// Verified frames of the run, each sequence number once (`net_unique=`; absent from an
    /// older kernel's lines: `None`).
    pub net_unique: Option<u64>,
    /// Verified frames whose sequence number had come already (`net_dup=`).
    pub net_dup: u64,
    /// Verified frames outside the run's sequence numbers (`net_range=`).
    pub net_range: u64,
    /// Frames not ours: another address or EtherType (`net_foreign=`).
    pub net_foreign: u64,
    /// Frames the guest knows are missing (sequence gaps; after the end marker, what it
    /// announced that never came).
    pub net_lost: u64,
    /// Frames that carried our header and failed the guest's verification.
    pub net_bad: u64,
    /// Whether the end marker arrived (`net_end=`, optional).
    pub net_end: Option<bool>,
    /// The longest time without a frame while the guest waited for the end marker, ms
    /// (`net_stall_ms=`), and the unique frames received when it began (`net_stall_at=`).
    pub net_stall_ms: u64,
    pub net_stall_at: u64,
    /// Frames the guest echoed back.
    pub net_echoed: u64,
    /// Disk operations verified.
    pub blk_ops: u64,
    /// Disk operations that failed verification.
    pub blk_bad: u64,
    /// Bytes of `S` lines the guest's serial port received (their `\n` included).
    pub serial_bytes: u64,
    /// `S` lines received and checked.
    pub serial_lines: u64,
    /// `S` lines that failed verification.
    pub serial_bad: u64,
    /// Lines the end line announced that never arrived (`serial_lost=`, optional).
    pub serial_lost: u64,
    /// The kernel's own verdict on the workload (`verified=0|1`, optional).
    pub verified: Option<bool>,
    /// Guest ns from the job's start to the last frame, once all are in (`net_span_ns=`,
    /// optional; 0 before).
    pub net_span_ns: u64,
    /// Guest ns from the job's start to the last disk thread's end (`blk_span_ns=`).
    pub blk_span_ns: u64,
}

impl Counters {
    fn parse(f: &Fields) -> Result<Counters, RecordError> {
        // A part is there if any of its keys is; then every one of its keys must be.
        let part = |keys: &[&'static str]| -> Result<bool, RecordError> {
            if !keys.iter().any(|k| f.has(k)) {
                return Ok(false);
            }
            keys.iter().try_for_each(|k| f.num(k).map(drop))?;
            Ok(true)
        };
        let parts = Parts { net: part(&NET_KEYS)?, blk: part(&BLK_KEYS)?, serial: part(&SERIAL_KEYS)? };
        if !(parts.net || parts.blk || parts.serial) {
            return Err(f.error(RecordProblem::NoParts));
        }
        let num = |k: &'static str| if f.has(k) { f.num(k) } else { Ok(0) };
        Ok(Counters {
            parts,
            net_rx: num("net_rx")?,
            net_unique: if f.has("net_unique") { Some(f.num("net_unique")?) } else { None },
            net_dup: num("net_dup")?,
            net_range: num("net_range")?,
            net_foreign: num("net_foreign")?,
            net_lost: num("net_lost")?,
            net_bad: num("net_bad")?,
            net_end: if f.has("net_end") { Some(f.choice("net_end", "1", "0")?) } else { None },
            net_stall_ms: num("net_stall_ms")?,
            net_stall_at: num("net_stall_at")?,
            net_echoed: num("net_echoed")?,
            blk_ops: num("blk_ops")?,
            blk_bad: num("blk_bad")?,
            serial_bytes: num("serial_bytes")?,
            serial_lines: num("serial_lines")?,
            serial_bad: num("serial_bad")?,
            serial_lost: num("serial_lost")?,
            verified: if f.has("verified") { Some(f.choice("verified", "1", "0")?) } else { None },
            net_span_ns: num("net_span_ns")?,
            blk_span_ns: num("blk_span_ns")?,
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
pub fn live_record(event: &Event) -> Option<Result<LiveRecord, RecordError>> {
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
        other => Err(f.error(RecordProblem::UnknownKind { kind: other.to_string() })),
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
    /// Time its handler runs spent switched away (left out of `cpu_ns`).
    pub off_ns: u64,
    /// Deliveries deferred by the SPL, and their time deferred (part of the latency).
    pub spl_n: u64,
    pub spl_ns: u64,
    /// Deliveries that waited for an unmask, and their time masked (part of the latency).
    pub masked_n: u64,
    pub masked_ns: u64,
    /// Arrivals while masked (absorbed).
    pub masked_arrivals: u64,
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
    /// The `@@ result scope=footprint` record.
    pub footprint: Option<Footprint>,
    /// The `@@ result scope=pool` record: (assigned, migrations, divorces).
    pub pool: Option<(u64, u64, u64)>,
    /// The `@@ result scope=source_cpu` records: (source, CPU, handler runs, handler ns).
    pub per_cpu: Vec<(String, u64, u64, u64)>,
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
                    Some(Err(e)) => out.errors.push(e.to_string()),
                },
                Event::Result(fields) => {
                    let scope = fields.iter().find(|(k, _)| k == "scope").map(|(_, v)| v.as_str());
                    let line = format!("`@@ result scope={}`", scope.unwrap_or(""));
                    let f = Fields { line: &line, fields };
                    let typed = match scope {
                        Some("workload") => Counters::parse(&f).map(|c| out.workload = Some(c)),
                        Some("source") => source_result(&f).map(|s| out.sources.push(s)),
                        Some("footprint") => footprint(&f).map(|x| out.footprint = Some(x)),
                        Some("pool") => (|| {
                            out.pool = Some((f.num("assigned")?, f.num("migrations")?, f.num("divorces")?));
                            Ok(())
                        })(),
                        Some("source_cpu") => (|| {
                            let name = f.text("name")?;
                            out.per_cpu.push((name, f.num("cpu")?, f.num("handled")?, f.num("cpu_ns")?));
                            Ok(())
                        })(),
                        _ => Ok(()),
                    };
                    out.errors.extend(typed.err().map(|e| e.to_string()));
                }
                _ => {}
            }
        }
        out
    }

    /// The final counters' throughput, each over the span in which its counter moved.
    pub fn throughput(&self) -> Throughput {
        let Some(last) = self.workload else { return Throughput::default() };
        // The kernel's own span where it gave one (exact), else the live records' (their
        // period's resolution).
        let over = |n: u64, ns: u64| (n > 0 && ns > 0).then(|| n as f64 * 1e9 / ns as f64);
        Throughput {
            frames_per_s: over(last.net_rx, last.net_span_ns)
                .or_else(|| rate(&self.progress, |c| c.net_rx, last.net_rx)),
            blk_ops_per_s: over(last.blk_ops, last.blk_span_ns)
                .or_else(|| rate(&self.progress, |c| c.blk_ops, last.blk_ops)),
            serial_bytes_per_s: rate(&self.progress, |c| c.serial_bytes, last.serial_bytes),
        }
    }
}

/// What the interrupt framework held during the main job (`@@ result scope=footprint`):
/// its threads at rest (every part set up) and at the peak, and its sources.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    pub rest_threads: u64,
    pub peak_threads: u64,
    /// Stack and thread structure, per thread.
    pub thread_bytes: u64,
    pub rest_thread_kib: u64,
    pub peak_thread_kib: u64,
    /// At the peak, by kind.
    pub pool: u64,
    pub dedicated: u64,
    pub pinned: u64,
    pub soft: u64,
    pub storm: u64,
    pub sources: u64,
    /// Bytes of those sources (the source with its statistics, its `Arc`, an owned name).
    pub source_bytes: u64,
}

fn footprint(f: &Fields) -> Result<Footprint, RecordError> {
    Ok(Footprint {
        rest_threads: f.num("rest_threads")?,
        peak_threads: f.num("peak_threads")?,
        thread_bytes: f.num("thread_bytes")?,
        rest_thread_kib: f.num("rest_thread_kib")?,
        peak_thread_kib: f.num("peak_thread_kib")?,
        pool: f.num("pool")?,
        dedicated: f.num("dedicated")?,
        pinned: f.num("pinned")?,
        soft: f.num("soft")?,
        storm: f.num("storm")?,
        sources: f.num("sources")?,
        source_bytes: f.num("source_bytes")?,
    })
}

fn source_result(f: &Fields) -> Result<SourceResult, RecordError> {
    Ok(SourceResult {
        name: f.text("name")?,
        model: f.text("model")?,
        count: f.num("count")?,
        handled: f.num("handled")?,
        cpu_ns: f.num("cpu_ns")?,
        p50: f.num("p50")?,
        p99: f.num("p99")?,
        storms: f.num("storms")?,
        off_ns: f.num("off_ns")?,
        spl_n: f.num("spl_n")?,
        spl_ns: f.num("spl_ns")?,
        masked_n: f.num("masked_n")?,
        masked_ns: f.num("masked_ns")?,
        masked_arrivals: f.num("masked_arrivals")?,
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

/// What the host types in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// `S` lines to type after `@@ serial-ready`.
    pub serial_lines: u64,
}

impl Default for Plan {
    fn default() -> Self {
        Plan { serial_lines: SERIAL_LINES }
    }
}

/// Whether `event` is the guest's `@@ serial-ready` (the protocol parser leaves it as
/// [`Event::Unknown`]: the tests' feeders wait for it there): type the whole [`Plan`].
pub fn is_serial_ready(event: &Event) -> bool {
    matches!(event, Event::Unknown(l) if l.trim() == "@@ serial-ready")
}

/// The lines a `@@ serial-ready lines=<k>` request asks for: the next `k` lines of the
/// paste, numbered on from the last line typed, and no end line (torture's COM1 source asks
/// in bursts, at times of its choosing). `None` for another event (the bare
/// `@@ serial-ready` included), an error for a malformed count.
pub fn serial_request(event: &Event) -> Option<Result<u64, RecordError>> {
    let Event::Unknown(line) = event else { return None };
    let args = line.trim_end().strip_prefix("@@ serial-ready ")?;
    let fields: Vec<(String, String)> = args
        .split_whitespace()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    let f = Fields { line: "`@@ serial-ready`", fields: &fields };
    Some(f.num("lines"))
}

/// The traffic a `@@ net-ready first=<seq> count=<n> echo=<0|1> rate=<frames/s>` line asks
/// for: `count` frames numbered from `first`, then the end marker with total `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetRequest {
    pub first: u64,
    pub count: u64,
    pub echo: bool,
    /// Frames per second (0: unpaced).
    pub rate: u32,
}

/// The guest's request in a `@@ net-ready` line (left as [`Event::Unknown`] by the protocol
/// parser): `None` for another event, an error naming a missing or malformed key.
pub fn net_request(event: &Event) -> Option<Result<NetRequest, RecordError>> {
    let Event::Unknown(line) = event else { return None };
    let args = line.trim_end().strip_prefix("@@ net-ready")?;
    if !(args.is_empty() || args.starts_with(' ')) {
        return None;
    }
    let fields: Vec<(String, String)> = args
        .split_whitespace()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    let f = Fields { line: "`@@ net-ready`", fields: &fields };
    Some((|| {
        let rate = f.num("rate")?;
        Ok(NetRequest {
            first: f.num("first")?,
            count: f.num("count")?,
            echo: f.choice("echo", "1", "0")?,
            rate: u32::try_from(rate)
                .map_err(|_| f.error(RecordProblem::TooLarge { key: "rate", value: rate }))?,
        })
    })())
}

/// Echoed frames the host got back.
pub use crate::traffic::EchoStats;

/// The host end of the guest's NIC (`crate::traffic::NetPeer` implements it).
pub trait TrafficSource: Send + Sync {
    /// Sends the frames numbered `seqs`, asking the guest to echo them if `echo`, at `rate`
    /// frames per second (0: unpaced). One call per run: the end marker names its first frame.
    fn send(&self, seqs: Range<u64>, echo: bool, rate: u32) -> io::Result<()>;
    /// Sends the end marker of the last run: `total` frames were sent.
    fn send_end(&self, total: u64) -> io::Result<()>;
    /// The echoes received so far.
    fn echoes(&self) -> EchoStats;
    /// Data frames of the current run handed to the link so far (`None`: not counted).
    fn sent_in_run(&self) -> Option<u64> {
        None
    }
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

impl TrafficSource for crate::traffic::NetPeer {
    fn send(&self, seqs: Range<u64>, echo: bool, rate: u32) -> io::Result<()> {
        crate::traffic::NetPeer::send(self, seqs, echo, rate)
    }
    fn send_end(&self, total: u64) -> io::Result<()> {
        crate::traffic::NetPeer::send_end(self, total)
    }
    fn echoes(&self) -> EchoStats {
        crate::traffic::NetPeer::echoes(self)
    }
    fn sent_in_run(&self) -> Option<u64> {
        Some(crate::traffic::NetPeer::sent_in_run(self))
    }
}

/// Creates the NIC's host end (a UDP socket QEMU's `-netdev socket` talks to) and a 16 MiB
/// disk image for one boot of the main job.
pub fn host_devices() -> io::Result<Devices> {
    let net = crate::traffic::NetPeer::new()?;
    let disk = crate::traffic::DiskImage::create(16)?;
    let mut qemu_args = net.qemu_args();
    qemu_args.extend(disk.qemu_args());
    Ok(Devices { net: Some(Arc::new(net)), qemu_args, keep_alive: vec![Box::new(disk)] })
}

/// What the host has sent so far, shared between the feeder's threads and the live view.
#[derive(Debug, Default)]
pub struct HostCounters {
    /// Frames the guest asked for (`@@ net-ready count=`, all runs).
    pub frames_requested: AtomicU64,
    pub frames_sent: AtomicU64,
    /// A run's frames are being sent now (`serve` has not returned).
    pub sending: AtomicBool,
    pub serial_lines_sent: AtomicU64,
    pub serial_bytes_sent: AtomicU64,
    /// Whether the NIC had a host end (frames could be sent).
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
        let sending = self.sending.load(Ordering::Acquire);
        // A run still being sent counts what has gone so far.
        let in_run = if sending { net.and_then(|n| n.sent_in_run()).unwrap_or(0) } else { 0 };
        HostTraffic {
            plan: *plan,
            net_wired: self.net_wired.load(Ordering::Relaxed),
            frames_requested: self.frames_requested.load(Ordering::Relaxed),
            frames_sent: self.frames_sent.load(Ordering::Relaxed) + in_run,
            still_sending: sending,
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
    pub frames_requested: u64,
    pub frames_sent: u64,
    /// The host was still sending a run when the guest ended (its writes blocked: the link
    /// stopped taking frames).
    pub still_sending: bool,
    pub echoes: Option<EchoStats>,
    pub serial_lines_sent: u64,
    pub serial_bytes_sent: u64,
    pub errors: Vec<String>,
}

/// The serial input for a boot of the main job: every `@@ net-ready` request is served
/// through `net` (in order, on a thread of its own); after `@@ serial-ready` it types the
/// serial input. QEMU's stdin stays open until QEMU ends.
pub fn feeder(plan: Plan, net: Option<Arc<dyn TrafficSource>>, counters: Arc<HostCounters>) -> SerialInput {
    counters.net_wired.store(net.is_some(), Ordering::Relaxed);
    SerialInput::feeder(move |stdin: ChildStdin, events: mpsc::Receiver<Event>| {
        let mut stdin = Some(stdin);
        let mut serial_writer = None;
        let mut serial_bursts: Option<mpsc::Sender<u64>> = None;
        let mut net_worker: Option<(mpsc::Sender<NetRequest>, thread::JoinHandle<()>)> = None;
        for event in events {
            if let Some(request) = net_request(&event) {
                let (Ok(request), Some(net)) = (request, &net) else {
                    if net.is_none() {
                        counters.error("the guest asked for NIC frames but there is no NIC peer".into());
                    }
                    continue;
                };
                let (tx, _) = net_worker.get_or_insert_with(|| {
                    let (tx, rx) = mpsc::channel::<NetRequest>();
                    let (net, counters) = (Arc::clone(net), Arc::clone(&counters));
                    (tx, thread::spawn(move || rx.iter().for_each(|r| serve(&*net, &r, &counters))))
                });
                counters.frames_requested.fetch_add(request.count, Ordering::Relaxed);
                let _ = tx.send(request);
            } else if is_serial_ready(&event) {
                if let Some(mut input) = stdin.take() {
                    let counters = Arc::clone(&counters);
                    serial_writer = Some(thread::spawn(move || {
                        if let Err(e) = type_serial_input(&mut input, plan.serial_lines, &counters) {
                            counters.error(format!("writing the serial input: {e}"));
                        }
                        input
                    }));
                }
            } else if let Some(request) = serial_request(&event) {
                let Ok(lines) = request else {
                    counters.error(format!("a malformed serial request: {event:?}"));
                    continue;
                };
                // Bursts: one writer thread owns the input and types each request in turn,
                // numbering on from the last line.
                if serial_bursts.is_none() {
                    if let Some(mut input) = stdin.take() {
                        let (tx, rx) = mpsc::channel::<u64>();
                        let counters = Arc::clone(&counters);
                        serial_writer = Some(thread::spawn(move || {
                            let mut next = 0;
                            for k in rx {
                                if let Err(e) = type_serial_lines(&mut input, next..next + k, &counters) {
                                    counters.error(format!("writing the serial input: {e}"));
                                    break;
                                }
                                next += k;
                            }
                            input
                        }));
                        serial_bursts = Some(tx);
                    }
                }
                match &serial_bursts {
                    Some(tx) => {
                        let _ = tx.send(lines);
                    }
                    None => counters.error("serial bursts asked for after the whole paste was typed".into()),
                }
            }
        }
        // QEMU has ended: now its stdin may close.
        if let Some((tx, worker)) = net_worker {
            drop(tx);
            let _ = worker.join();
        }
        drop(serial_bursts);
        if let Some(w) = serial_writer {
            drop(w.join());
        }
    })
}

/// Sends the frames `request` asks for (one run), then its end marker.
pub fn serve(net: &dyn TrafficSource, request: &NetRequest, counters: &HostCounters) {
    let seqs = request.first..request.first + request.count;
    counters.sending.store(true, Ordering::Release);
    let sent = net.send(seqs.clone(), request.echo, request.rate);
    counters.sending.store(false, Ordering::Release);
    if let Err(e) = sent {
        counters.error(format!("sending frames {seqs:?}: {e}"));
        return;
    }
    counters.frames_sent.fetch_add(request.count, Ordering::Relaxed);
    if let Err(e) = net.send_end(request.count) {
        counters.error(format!("sending the end marker: {e}"));
    }
}

/// Writes `lines` `S` lines and the end line to `out`, counting what was written.
pub fn type_serial_input(out: &mut impl Write, lines: u64, counters: &HostCounters) -> io::Result<()> {
    type_serial_lines(out, 0..lines, counters)?;
    out.write_all(serial_end(lines).as_bytes())?;
    out.flush()
}

/// Writes the `S` lines numbered `seqs` to `out`, counting what was written.
pub fn type_serial_lines(out: &mut impl Write, seqs: Range<u64>, counters: &HostCounters) -> io::Result<()> {
    for seq in seqs {
        let line = serial_line(seq);
        out.write_all(line.as_bytes())?;
        out.flush()?;
        counters.serial_lines_sent.fetch_add(1, Ordering::Relaxed);
        counters.serial_bytes_sent.fetch_add(line.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// Frames verified by the guest: the unique valid ones (an older kernel without
/// `net_unique=`: received less bad).
pub fn frames_verified(w: &Counters) -> u64 {
    w.net_unique.unwrap_or(w.net_rx.saturating_sub(w.net_bad))
}

/// Frames lost on the way to the guest: what the host sent less the unique frames that
/// verified (duplicates and junk cannot make up for a lost frame), or the guest's own count,
/// whichever is larger. Never wraps.
pub fn frames_lost(w: &Counters, host: &HostTraffic) -> u64 {
    w.net_lost.max(host.frames_sent.saturating_sub(frames_verified(w)))
}

/// A gap without frames this long (ms) while the host was still sending is a receive stall.
pub const NET_STALL_MS: u64 = 2000;

/// The NIC's unexpected traffic as a list (`300 duplicates, 1 out of range`).
fn net_junk(w: &Counters) -> String {
    let junk: Vec<String> = [(w.net_dup, "duplicates"), (w.net_range, "out of range"), (w.net_bad, "bad")]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
    if junk.is_empty() {
        "the kernel reports no duplicates, out-of-range or bad frames (a kernel without `net_dup=`?)".into()
    } else {
        junk.join(", ")
    }
}

/// The receive stall, if the guest saw one: no frame for `net_stall_ms` while it waited for
/// the end marker.
fn net_stall(w: &Counters) -> Option<String> {
    (w.net_stall_ms >= NET_STALL_MS).then(|| {
        let end = if w.net_end == Some(false) { "; the end marker never came" } else { "" };
        format!(
            "NIC receive stalled: no frame for {} ms after {} frames, while the host was still sending{end}",
            w.net_stall_ms, w.net_stall_at
        )
    })
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
    if w.verified == Some(false) {
        out.push("the kernel reports the workload as not verified (`verified=0`)".into());
    }
    if w.parts.net {
        let lost = frames_lost(&w, host);
        if lost > 0 {
            out.push(format!(
                "{lost} frames lost (sent {}, verified {})",
                host.frames_sent,
                frames_verified(&w)
            ));
            out.extend(net_stall(&w));
        }
        if w.net_rx > host.frames_sent {
            out.push(format!(
                "received {} frames, more than the {} sent: {}",
                w.net_rx,
                host.frames_sent,
                net_junk(&w)
            ));
        }
        if w.net_dup > 0 {
            out.push(format!("{} duplicate frames (a sequence number received again)", w.net_dup));
        }
        if w.net_range > 0 {
            out.push(format!("{} frames outside the run's sequence numbers", w.net_range));
        }
    } else if host.frames_sent > 0 {
        out.push(format!("the kernel reports no NIC counters, though {} frames were sent", host.frames_sent));
    }
    if host.still_sending {
        out.push(format!(
            "the host was still sending when the guest ended: {} of {} frames written, the rest blocked \
             (the NIC's link stopped taking frames)",
            host.frames_sent, host.frames_requested
        ));
    } else if host.frames_sent < host.frames_requested {
        out.push(format!(
            "only {} of the {} frames asked for were sent",
            host.frames_sent, host.frames_requested
        ));
    }
    for (bad, what) in [(w.net_bad, "frames"), (w.blk_bad, "disk operations"), (w.serial_bad, "serial lines")]
    {
        if bad > 0 {
            out.push(format!("{bad} {what} failed verification"));
        }
    }
    if w.parts.serial {
        let missing = host.serial_lines_sent.saturating_sub(w.serial_lines).max(w.serial_lost);
        if missing > 0 {
            out.push(format!("{missing} of {} serial lines never arrived", host.serial_lines_sent));
        }
    } else if host.serial_lines_sent > 0 {
        out.push(format!(
            "the kernel reports no serial counters, though {} lines were typed",
            host.serial_lines_sent
        ));
    }
    if host.serial_lines_sent < host.plan.serial_lines {
        out.push(format!(
            "only {} of {} serial lines were typed (no `@@ serial-ready`?)",
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

/// A latency percentile of a source, `-` when no handler ran (a filter-only source, such as
/// `com1`: latency is measured up to handler start).
pub fn latency(handled: u64, ns: u64) -> String {
    if handled == 0 {
        "-".into()
    } else {
        fmt_ns(ns)
    }
}

/// Formats nanoseconds for tables (`8192ns`, `12.3us`, `7.34ms`).
pub fn fmt_ns(ns: u64) -> String {
    match ns {
        0..=9_999 => format!("{ns}ns"),
        10_000..=999_999 => format!("{:.1}us", ns as f64 / 1e3),
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
    if w.parts.net {
        let _ = writeln!(
            s,
            "  frames:  sent {}, received {}, verified {}, lost {}; duplicates {}, out of range {}, bad {}, \
             foreign {}{}",
            host.frames_sent,
            w.net_rx,
            frames_verified(&w),
            frames_lost(&w, host),
            w.net_dup,
            w.net_range,
            w.net_bad,
            w.net_foreign,
            per_s(t.frames_per_s, "frames")
        );
        if w.net_rx > host.frames_sent {
            let _ = writeln!(s, "           received more than was sent ({})", net_junk(&w));
        }
        if let Some(stall) = net_stall(&w) {
            let _ = writeln!(s, "           {stall}");
        }
        let back = host.echoes.map(|e| format!(", {} came back ({} bad)", e.received, e.bad));
        let _ = writeln!(s, "  echoes:  {} frames echoed{}", w.net_echoed, back.unwrap_or_default());
    } else {
        let peer = if host.net_wired { "" } else { ", no NIC peer in this host tool" };
        let _ = writeln!(s, "  frames:  not run (sent {}{peer})", host.frames_sent);
    }
    if w.parts.blk {
        let _ = writeln!(
            s,
            "  disk:    {} operations verified, {} bad{}",
            w.blk_ops,
            w.blk_bad,
            per_s(t.blk_ops_per_s, "ops")
        );
    } else {
        let _ = writeln!(s, "  disk:    not run");
    }
    let _ = writeln!(
        s,
        "  serial:  sent {} bytes ({} lines), received {} bytes ({} lines), {} bad, {} lost{}",
        host.serial_bytes_sent,
        host.serial_lines_sent,
        w.serial_bytes,
        w.serial_lines,
        w.serial_bad,
        w.serial_lost,
        per_s(t.serial_bytes_per_s, "bytes")
    );
    if !results.sources.is_empty() {
        let _ = writeln!(s, "  interrupt sources:");
        let _ = writeln!(
            s,
            "    {:<16} {:<10} {:>10} {:>10} {:>10} {:>10} {:>6} {:>10} {:>10} {:>14} {:>14} {:>8}",
            "source",
            "model",
            "count",
            "handled",
            "p50",
            "p99",
            "storms",
            "cpu/intr",
            "blocked",
            "spl-deferred",
            "masked",
            "m.arrive"
        );
        let per =
            |n: u64, ns: u64| ns.checked_div(n).map_or("-".to_string(), |m| format!("{n} x {}", fmt_ns(m)));
        for r in &results.sources {
            let _ = writeln!(
                s,
                "    {:<16} {:<10} {:>10} {:>10} {:>10} {:>10} {:>6} {:>10} {:>10} {:>14} {:>14} {:>8}",
                r.name,
                r.model,
                r.count,
                r.handled,
                latency(r.handled, r.p50),
                latency(r.handled, r.p99),
                r.storms,
                r.cpu_ns.checked_div(r.handled).map_or("-".to_string(), fmt_ns),
                fmt_ns(r.off_ns),
                per(r.spl_n, r.spl_ns),
                per(r.masked_n, r.masked_ns),
                r.masked_arrivals
            );
        }
        let _ = writeln!(
            s,
            "    (latency from arrival; cpu/intr leaves out blocked time; spl-deferred and masked: deliveries that \
             waited, and the mean wait)"
        );
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
pub fn cmdline(run: &str, model: Option<Model>, append: &str) -> Result<String, ModelChosenTwice> {
    let mut line = format!("run={run}");
    if run == "scenario" {
        // The host types the serial input: the kernel's serial part runs.
        // It ends when every part is complete; `scenario.ms` is only the limit.
        line = crate::qemu::join_cmdline(&line, "workload.serial=on scenario.ms=60000");
    }
    if let Some(m) = model {
        if append.split_whitespace().any(|o| o.starts_with("intr.model=")) {
            return Err(ModelChosenTwice(m));
        }
        line = crate::qemu::join_cmdline(&line, &format!("intr.model={m}"));
    }
    Ok(crate::qemu::join_cmdline(&line, append))
}
