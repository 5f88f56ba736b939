//! The kernel's event trace (`--trace FILE`) as a Chrome / Perfetto trace-event JSON file.
//!
//! A traced kernel (the `trace` feature, [`crate::kbuild::Flavour::Traced`]) dumps its
//! per-CPU rings over the serial line when the run ends (docs/PROTOCOL.md, "Trace").
//! [`Collector`] gathers those lines; [`Collector::to_chrome`] converts them:
//!
//! - process 1 "CPUs" has one track per CPU: interrupts (`interrupt 0x41 virtio-net`, a
//!   slice from entry to the end of the path, before the preemption point), pinned borrows
//!   (a slice inside it), deferrals, filters, switches and storm throttles (instants);
//! - process 2 "threads" has one track per thread: handlers and soft interrupts (slices,
//!   on the thread that ran them: the interrupted thread for a direct handler, the ithread
//!   otherwise), blocking, wake-ups (on the woken thread), divorces, migrations and lock
//!   contention (instants).
//!
//! Times are the guest's nanoseconds (guest instructions under `-icount shift=0`), written
//! in microseconds as the format wants. Each CPU's ring keeps its last records only; the
//! conversion starts at the latest first-kept record of any ring that wrapped, so every
//! track covers the same span, and reports what it had to cut: ends whose begin was before
//! that point (`truncated`), slices still open at the end (`unfinished`, closed there), and
//! ends that close nothing or the wrong slice (`unmatched`, a bug in the instrumentation;
//! they are left out so the file stays well nested).

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};
use trace::{Kind, Phase, Record, Track};

/// What a CPU's ring held at the dump.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingInfo {
    /// Records kept and dumped.
    pub kept: u64,
    /// Records overwritten before the dump (the ring wrapped).
    pub overwritten: u64,
    /// Slots skipped because they were being written during the dump.
    pub torn: u64,
}

/// The trace lines of one boot.
#[derive(Debug, Default)]
pub struct Collector {
    begun: bool,
    ended: bool,
    threads: HashMap<u64, String>,
    sources: BTreeMap<u64, Vec<String>>,
    rings: BTreeMap<u32, RingInfo>,
    records: Vec<Record>,
    /// Lines of the dump that could not be read, with why.
    pub bad_lines: Vec<String>,
}

/// What the conversion had to leave out or close (see the module documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Conversion {
    /// Events written.
    pub events: usize,
    /// CPU tracks.
    pub cpus: usize,
    /// Thread tracks.
    pub threads: usize,
    /// Records before the common start of every ring, left out.
    pub before_start: usize,
    /// Ends whose begin fell before the common start.
    pub truncated: usize,
    /// Slices still open at the end of the trace, closed there.
    pub unfinished: usize,
    /// Ends that matched no open slice (an instrumentation bug).
    pub unmatched: usize,
}

/// A track: (pid, tid).
type TrackId = (u64, u64);

/// A slice open on a track: its kind's slice name and its event name.
type OpenSlice = (&'static str, String);

fn value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_ascii_whitespace().find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

/// The rest of the line after `name=` (names may hold spaces).
fn rest_after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.find(key).map(|i| &line[i + key.len()..])
}

impl Collector {
    /// A collector with nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one serial line; returns whether it was a trace line.
    pub fn feed(&mut self, line: &str) -> bool {
        let line = line.trim_end();
        let Some(body) = line.strip_prefix("@@ trace") else { return false };
        let (kind, args) = body.split_once(' ').unwrap_or((body, ""));
        let ok = match kind {
            "-begin" => {
                self.begun = true;
                true
            }
            "-end" => {
                self.ended = true;
                true
            }
            "-thread" => match (value(args, "id").and_then(hex), rest_after(args, "name=")) {
                (Some(id), Some(name)) => {
                    self.threads.insert(id, name.to_string());
                    true
                }
                _ => false,
            },
            "-source" => match (value(args, "vector").and_then(hex), rest_after(args, "name=")) {
                (Some(v), Some(name)) => {
                    self.sources.entry(v).or_default().push(name.to_string());
                    true
                }
                _ => false,
            },
            "-cpu" => {
                let n = |k| value(args, k).and_then(|v| v.parse::<u64>().ok());
                match (n("cpu"), n("kept"), n("overwritten"), n("torn")) {
                    (Some(cpu), Some(kept), Some(overwritten), Some(torn)) => {
                        self.rings.insert(cpu as u32, RingInfo { kept, overwritten, torn });
                        true
                    }
                    _ => false,
                }
            }
            "" => match Record::parse(args) {
                Ok(r) => {
                    self.records.push(r);
                    true
                }
                Err(e) => {
                    self.bad_lines.push(format!("{line}: {e}"));
                    return true;
                }
            },
            _ => return false,
        };
        if !ok {
            self.bad_lines.push(format!("{line}: malformed"));
        }
        true
    }

    /// Whether a whole dump was seen (`@@ trace-begin` … `@@ trace-end`).
    pub fn is_complete(&self) -> bool {
        self.begun && self.ended
    }

    /// The records read so far.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// What each CPU's ring held.
    pub fn rings(&self) -> &BTreeMap<u32, RingInfo> {
        &self.rings
    }

    fn source_name(&self, vector: u64) -> String {
        match self.sources.get(&vector) {
            Some(names) => format!("{vector:#x} {}", names.join("+")),
            None => format!("{vector:#x}"),
        }
    }

    fn thread_name(&self, id: u64) -> String {
        match self.threads.get(&id) {
            Some(n) => n.clone(),
            None => format!("thread {id:#x}"),
        }
    }

    /// The slice or instant name of a record.
    fn event_name(&self, r: &Record) -> String {
        match r.kind {
            Kind::IntrEnter | Kind::IntrExit => format!("interrupt {}", self.source_name(r.arg)),
            Kind::IntrDefer => format!("deferred {}", self.source_name(r.arg)),
            Kind::Filter => format!("filter {}", self.source_name(r.arg)),
            Kind::HandlerBegin | Kind::HandlerEnd => format!("handler {}", self.source_name(r.arg)),
            Kind::PinBorrow => format!("pinned borrow {}", self.source_name(r.arg)),
            Kind::PinReturn => "pinned borrow".to_string(),
            Kind::Block => "block".to_string(),
            Kind::Wakeup => "wakeup".to_string(),
            Kind::Switch => format!("switch to {}", self.thread_name(r.arg)),
            Kind::Divorce => format!("divorce from CPU {}", r.arg),
            Kind::Migrate => format!("migrate to CPU {}", r.arg),
            Kind::SoftBegin | Kind::SoftEnd => format!("softint level {}", r.arg),
            Kind::LockContend => format!("lock {:#x} contended", r.arg),
            Kind::StormThrottle => format!("storm: {} throttled", self.source_name(r.arg)),
        }
    }

    /// The Chrome trace-event JSON (`{"traceEvents": [...]}`) and what the conversion cut.
    pub fn to_chrome(&self) -> (Value, Conversion) {
        let mut conv = Conversion::default();
        // The common start: every ring that wrapped lost what came before its first record.
        let start = self
            .rings
            .iter()
            .filter(|(_, i)| i.overwritten > 0)
            .filter_map(|(cpu, _)| self.records.iter().filter(|r| r.cpu == *cpu).map(|r| r.ts).min())
            .max()
            .unwrap_or(0);
        let cut = start > 0;
        let mut recs: Vec<&Record> = self.records.iter().filter(|r| r.ts >= start).collect();
        conv.before_start = self.records.len() - recs.len();
        recs.sort_by_key(|r| (r.ts, r.cpu, r.seq));

        let mut events = Vec::new();
        let mut thread_tid: HashMap<u64, u64> = HashMap::new();
        let mut cpus: BTreeMap<u32, ()> = BTreeMap::new();
        let mut open: HashMap<TrackId, Vec<OpenSlice>> = HashMap::new();
        let us = |ns: u64| ns as f64 / 1000.0;
        let mut last_ts = start;
        for r in recs {
            last_ts = last_ts.max(r.ts);
            cpus.insert(r.cpu, ());
            let (pid, tid) = match r.kind.track() {
                Track::Cpu => (1, r.cpu as u64),
                Track::Thread | Track::ArgThread => {
                    let id = if r.kind.track() == Track::ArgThread { r.arg } else { r.thread };
                    let n = thread_tid.len() as u64;
                    (2, *thread_tid.entry(id).or_insert(n))
                }
            };
            let name = self.event_name(r);
            let args = json!({ "cpu": r.cpu, "thread": self.thread_name(r.thread), "arg": r.arg });
            match r.kind.phase() {
                Phase::Begin => {
                    open.entry((pid, tid)).or_default().push((r.kind.slice(), name.clone()));
                    events.push(json!({"name": name, "ph": "B", "ts": us(r.ts), "pid": pid, "tid": tid, "args": args}));
                }
                Phase::End => {
                    let stack = open.entry((pid, tid)).or_default();
                    match stack.last() {
                        Some((slice, _)) if *slice == r.kind.slice() => {
                            let (_, name) = stack.pop().expect("top");
                            events.push(json!({"name": name, "ph": "E", "ts": us(r.ts), "pid": pid, "tid": tid, "args": args}));
                        }
                        None if cut => conv.truncated += 1,
                        _ => conv.unmatched += 1,
                    }
                }
                Phase::Instant => {
                    events.push(json!({"name": name, "ph": "i", "s": "t", "ts": us(r.ts), "pid": pid, "tid": tid, "args": args}));
                }
            }
        }
        // Close what is still open, innermost first, at the trace's last time.
        let mut still: Vec<(TrackId, Vec<OpenSlice>)> = open.into_iter().collect();
        still.sort_by_key(|(k, _)| *k);
        for ((pid, tid), stack) in still {
            for (_, name) in stack.into_iter().rev() {
                conv.unfinished += 1;
                events.push(json!({"name": name, "ph": "E", "ts": us(last_ts), "pid": pid, "tid": tid,
                                   "args": {"unfinished": true}}));
            }
        }
        conv.events = events.len();
        conv.cpus = cpus.len();
        conv.threads = thread_tid.len();
        let mut meta = vec![
            json!({"name": "process_name", "ph": "M", "pid": 1, "args": {"name": "CPUs"}}),
            json!({"name": "process_name", "ph": "M", "pid": 2, "args": {"name": "threads"}}),
        ];
        for cpu in cpus.keys() {
            meta.push(json!({"name": "thread_name", "ph": "M", "pid": 1, "tid": cpu, "args": {"name": format!("CPU {cpu}")}}));
        }
        let mut by_tid: Vec<(&u64, &u64)> = thread_tid.iter().collect();
        by_tid.sort_by_key(|(_, t)| **t);
        for (id, tid) in by_tid {
            meta.push(json!({"name": "thread_name", "ph": "M", "pid": 2, "tid": tid, "args": {"name": self.thread_name(*id)}}));
        }
        meta.extend(events);
        let doc = json!({
            "traceEvents": meta,
            "displayTimeUnit": "ns",
            "otherData": {
                "source": "ithreads kernel event trace",
                "rings": self.rings.iter().map(|(c, i)| json!({"cpu": c, "kept": i.kept, "overwritten": i.overwritten, "torn": i.torn})).collect::<Vec<_>>(),
                "conversion": conv,
            }
        });
        (doc, conv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(cpu: u32, seq: u64, ts: u64, kind: Kind, thread: u64, arg: u64) -> String {
        format!("@@ trace {}", Record { seq, ts, cpu, kind, thread, arg })
    }

    fn collector(lines: &[String]) -> Collector {
        let mut c = Collector::new();
        for l in lines {
            assert!(c.feed(l), "{l}");
        }
        c
    }

    #[test]
    fn nesting_survives_a_handler_that_blocks_and_resumes_on_another_cpu() {
        let lines = vec![
            "@@ trace-begin cpus=2 records=16".to_string(),
            "@@ trace-thread id=0x10 name=main".to_string(),
            "@@ trace-thread id=0x20 name=pool.0".to_string(),
            "@@ trace-source vector=0x41 name=virtio-net rx".to_string(),
            "@@ trace-cpu cpu=0 kept=4 overwritten=0 torn=0".to_string(),
            rec(0, 0, 100, Kind::IntrEnter, 0x10, 0x41),
            rec(0, 1, 110, Kind::IntrExit, 0x10, 0x41),
            rec(0, 2, 120, Kind::HandlerBegin, 0x20, 0x41),
            rec(0, 3, 130, Kind::Block, 0x20, 0),
            "@@ trace-cpu cpu=1 kept=2 overwritten=0 torn=0".to_string(),
            rec(1, 0, 140, Kind::Wakeup, 0x10, 0x20),
            rec(1, 1, 150, Kind::HandlerEnd, 0x20, 0x41),
            "@@ trace-end".to_string(),
        ];
        let c = collector(&lines);
        assert!(c.is_complete());
        let (doc, conv) = c.to_chrome();
        assert_eq!((conv.unmatched, conv.truncated, conv.unfinished), (0, 0, 0));
        assert_eq!((conv.cpus, conv.threads), (2, 1));
        let ev = doc["traceEvents"].as_array().unwrap();
        let b = ev.iter().find(|e| e["ph"] == "B" && e["name"] == "handler 0x41 virtio-net rx").unwrap();
        let e = ev.iter().find(|e| e["ph"] == "E" && e["name"] == "handler 0x41 virtio-net rx").unwrap();
        assert_eq!(
            (&b["pid"], &b["tid"]),
            (&e["pid"], &e["tid"]),
            "the handler's slice is on its thread's track"
        );
        assert!(ev.iter().any(|e| e["ph"] == "M" && e["args"]["name"] == "pool.0"));
    }

    #[test]
    fn a_wrapped_ring_starts_the_trace_and_its_orphan_ends_are_counted() {
        let lines = vec![
            "@@ trace-begin cpus=2 records=2".to_string(),
            "@@ trace-cpu cpu=0 kept=2 overwritten=5 torn=0".to_string(),
            rec(0, 5, 500, Kind::IntrExit, 1, 0x30),
            rec(0, 6, 510, Kind::IntrEnter, 1, 0x30),
            "@@ trace-cpu cpu=1 kept=2 overwritten=0 torn=0".to_string(),
            rec(1, 0, 100, Kind::Switch, 1, 2),
            rec(1, 1, 600, Kind::Switch, 2, 1),
            "@@ trace-end".to_string(),
        ];
        let (_, conv) = collector(&lines).to_chrome();
        assert_eq!(conv.before_start, 1, "CPU 1's record before CPU 0's first is left out");
        assert_eq!(conv.truncated, 1);
        assert_eq!(conv.unfinished, 1);
        assert_eq!(conv.unmatched, 0);
    }

    #[test]
    fn an_end_that_closes_the_wrong_slice_is_unmatched() {
        let lines = vec![
            "@@ trace-begin cpus=1 records=8".to_string(),
            "@@ trace-cpu cpu=0 kept=2 overwritten=0 torn=0".to_string(),
            rec(0, 0, 100, Kind::IntrEnter, 1, 0x30),
            rec(0, 1, 110, Kind::PinReturn, 1, 0),
            "@@ trace-end".to_string(),
        ];
        let (_, conv) = collector(&lines).to_chrome();
        assert_eq!(conv.unmatched, 1);
        assert_eq!(conv.unfinished, 1);
    }

    #[test]
    fn a_malformed_record_is_kept_as_a_bad_line() {
        let mut c = Collector::new();
        assert!(c.feed("@@ trace cpu=0 seq=1 ts=2 kind=nope thread=0x1 arg=0x2"));
        assert!(!c.feed("@@ tests-done passed=1 failed=0"));
        assert_eq!(c.bad_lines.len(), 1);
        assert!(c.bad_lines[0].contains("'kind'"), "{}", c.bad_lines[0]);
    }
}
