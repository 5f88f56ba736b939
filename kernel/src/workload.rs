//! The device workload of the main job (`run=scenario`): the serial line, the NIC and the disk
//! busy at once while the scenario's threads load every CPU. The host drives the traffic
//! (docs/PROTOCOL.md: "Serial input", the NIC frames); the kernel verifies every byte,
//! prints `@@ live` lines while it runs and `@@ result` / `@@ hist` lines at the end.
//!
//! Each part is started only if it is there: the serial consumer with `workload.serial=on`
//! (the host will paste), the NIC and the disk when their devices probe. The workload is
//! complete when every started part is: the serial end line seen, the NIC's end marker seen,
//! the disk threads done.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arch::kprintln;
use sched::Priority;

use crate::drivers::com;
use crate::intr::INTR;
use crate::SCHED;

/// Serial-line counters of the workload.
#[derive(Default)]
pub struct SerialProgress {
    /// Lines verified (good or bad).
    pub lines: AtomicU64,
    /// Bytes in those lines, with their line ends.
    pub bytes: AtomicU64,
    /// Lines that did not match.
    pub bad: AtomicU64,
    /// The end line (`E <count>`) arrived.
    pub done: AtomicBool,
    /// The count the end line announced.
    pub announced: AtomicU64,
}

/// The serial part's counters.
pub static SERIAL: SerialProgress = SerialProgress {
    lines: AtomicU64::new(0),
    bytes: AtomicU64::new(0),
    bad: AtomicU64::new(0),
    done: AtomicBool::new(false),
    announced: AtomicU64::new(0),
};

/// What runs.
pub struct Workload {
    serial: bool,
    threads: Vec<sched::JoinHandle<arch::X86_64>>,
}

/// Starts the parts that are there.
pub fn start(serial: bool) -> Workload {
    let mut threads = Vec::new();
    if serial {
        let pri = Priority::new(30).expect("priority in range");
        threads.push(SCHED.spawn("serial-sink", pri, None, serial_sink));
        kprintln!("@@ serial-ready");
    }
    Workload { serial, threads }
}

/// Reads pasted lines until the end line, verifying each (com::paste_line).
fn serial_sink() {
    let mut seq = 0u64;
    loop {
        let line = com::read_line();
        if let Some(n) = line.strip_prefix("E ") {
            SERIAL.announced.store(n.trim().parse().unwrap_or(u64::MAX), Ordering::Relaxed);
            SERIAL.done.store(true, Ordering::Release);
            return;
        }
        if !com::check_paste_line(&line, seq) {
            SERIAL.bad.fetch_add(1, Ordering::Relaxed);
        }
        SERIAL.bytes.fetch_add(line.len() as u64 + 1, Ordering::Relaxed);
        SERIAL.lines.fetch_add(1, Ordering::Relaxed);
        seq += 1;
    }
}

impl Workload {
    /// Whether every started part is complete.
    pub fn complete(&self) -> bool {
        (!self.serial || SERIAL.done.load(Ordering::Acquire)) && self.started()
    }

    /// Whether anything was started (without parts, the scenario runs for its time).
    pub fn started(&self) -> bool {
        self.serial
    }

    /// The progress counters as `key=value` pairs (the `@@ live kind=progress` and
    /// `@@ result scope=workload` lines).
    pub fn progress(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "serial_bytes={} serial_lines={} serial_bad={} serial_lost={}",
            SERIAL.bytes.load(Ordering::Relaxed),
            SERIAL.lines.load(Ordering::Relaxed),
            SERIAL.bad.load(Ordering::Relaxed),
            self.serial_lost()
        );
        s
    }

    fn serial_lost(&self) -> u64 {
        if SERIAL.done.load(Ordering::Acquire) {
            SERIAL.announced.load(Ordering::Relaxed).saturating_sub(SERIAL.lines.load(Ordering::Relaxed))
        } else {
            0
        }
    }

    /// Whether everything received was intact and nothing announced is missing.
    pub fn verified(&self) -> bool {
        SERIAL.bad.load(Ordering::Relaxed) == 0 && self.serial_lost() == 0
    }

    /// Waits for the workload's threads (after `complete`, or at the deadline: a thread still
    /// waiting for input is left behind, QEMU exits anyway).
    pub fn finish(self) {
        for t in self.threads {
            if SERIAL.done.load(Ordering::Acquire) {
                t.join();
            }
        }
    }
}

/// One `@@ live kind=source` line per established source, and the progress line.
pub fn print_live(t_ms: u64, w: &Workload) {
    for src in INTR.sources() {
        let st = &src.stats;
        kprintln!(
            "@@ live kind=source t_ms={} name={} model={} count={} handled={} cpu_ns={} p50={} p99={} storm={} \
             masked={}",
            t_ms,
            src.name(),
            src.model(),
            st.total(),
            st.handled.load(Ordering::Relaxed),
            st.handler_ns.load(Ordering::Relaxed),
            st.latency.percentile(50),
            st.latency.percentile(99),
            if src.storm.storming.load(Ordering::Relaxed) { "on" } else { "off" },
            u8::from(src.is_masked())
        );
    }
    kprintln!("@@ live kind=progress t_ms={} {}", t_ms, w.progress());
}

/// The end-of-run records: one per source, and the workload's totals.
pub fn print_results(w: &Workload) {
    for src in INTR.sources() {
        let st = &src.stats;
        kprintln!(
            "@@ result scope=source name={} model={} count={} handled={} cpu_ns={} p50={} p99={} storms={}",
            src.name(),
            src.model(),
            st.total(),
            st.handled.load(Ordering::Relaxed),
            st.handler_ns.load(Ordering::Relaxed),
            st.latency.percentile(50),
            st.latency.percentile(99),
            src.storm.storms.load(Ordering::Relaxed)
        );
    }
    kprintln!("@@ result scope=workload {} verified={}", w.progress(), u8::from(w.verified()));
}
