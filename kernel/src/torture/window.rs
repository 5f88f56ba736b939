//! Where a CPU's time went while its progress count stood still: the diagnostic printed with a
//! `heartbeat` violation (`@@ torture-diag window`).
//!
//! The monitor (and the watch over the monitor's own CPU) takes a [`CpuWindow`] of a CPU each
//! time it sees that CPU's progress move; when the CPU is reported, the report prints what
//! changed since: the CPU's scheduler counters (clock interrupts, switches, pinned switches,
//! preempted borrowers), COM1's receive counters (its line is aimed at CPU 0), and every
//! interrupt source that arrived or ran a handler on that CPU in the window, the busiest
//! first, with the handler time charged to it there. A stall snapshot is one instant; this is
//! the whole 100 ms.
//!
//! Sources are matched by identity (the source's address): one disestablished in the window
//! is missing from the report, one established in it shows its counts since establishment
//! (`new=1`). The buffer is reserved when the monitor starts, before the heap baseline, and
//! never grows past [`MAX_SOURCES`] (`truncated=1` says so).

use alloc::vec::Vec;
use core::sync::atomic::Ordering::Relaxed;

use arch::kprintln;
use intr::Model;

use crate::drivers::com;
use crate::intr::INTR;
use crate::SCHED;

use super::now;

/// Sources one window keeps (the torture's 57 and the kernel's own fit with room).
const MAX_SOURCES: usize = 128;
/// Sources printed per report.
const PRINTED: usize = 10;
/// Snapshots taken after the report.
const SAMPLES: usize = 6;

type SourceRef = alloc::sync::Arc<intr::Source<crate::locks::KernelEnv>>;

#[derive(Clone, Copy, Default)]
struct SourceCount {
    key: usize,
    arrivals: u64,
    handled: u64,
    handler_ns: u64,
}

/// One CPU's counters at one instant.
pub(super) struct CpuWindow {
    at: u64,
    sched: sched::CpuStats,
    com1: [u64; 4],
    console: arch::serial::ConsoleCounters,
    sources: Vec<SourceCount>,
    truncated: bool,
}

fn com1_counts() -> [u64; 4] {
    let s = &com::STATS;
    [
        s.interrupts.load(Relaxed),
        s.rx_bytes.load(Relaxed),
        s.lines.load(Relaxed),
        s.budget_stops.load(Relaxed),
    ]
}

impl CpuWindow {
    /// An empty window with its buffer reserved.
    pub(super) fn new() -> Self {
        CpuWindow {
            at: 0,
            sched: sched::CpuStats::default(),
            com1: [0; 4],
            console: arch::serial::ConsoleCounters::default(),
            sources: Vec::with_capacity(MAX_SOURCES),
            truncated: false,
        }
    }

    /// Takes CPU `c`'s counters now (in place: no allocation beyond the source list's copy).
    pub(super) fn take(&mut self, c: usize) {
        self.at = now();
        self.sched = SCHED.cpu_stats(c);
        self.com1 = com1_counts();
        self.console = arch::serial::counters();
        self.sources.clear();
        self.truncated = false;
        for s in INTR.sources() {
            if self.sources.len() == MAX_SOURCES {
                self.truncated = true;
                break;
            }
            let st = &s.stats;
            self.sources.push(SourceCount {
                key: alloc::sync::Arc::as_ptr(&s) as usize,
                arrivals: st.per_cpu[c].load(Relaxed),
                handled: st.handled_cpu[c].load(Relaxed),
                handler_ns: st.handler_ns_cpu[c].load(Relaxed),
            });
        }
    }

    /// Prints what CPU `c` did since this window was taken.
    pub(super) fn print_since(&self, model: Model, c: usize) {
        let s = SCHED.cpu_stats(c);
        let com1 = com1_counts();
        let (b, a) = (&self.console, arch::serial::counters());
        kprintln!(
            "@@ torture-diag window model={} cpu={c} console tx_irq_bytes={} tx_starts={} tx_polled_bytes={} \
             tx_ring_full={} tx_tick_kicks={}",
            model.name(),
            a.tx_irq_bytes - b.tx_irq_bytes,
            a.tx_starts - b.tx_starts,
            a.tx_polled_bytes - b.tx_polled_bytes,
            a.tx_ring_full - b.tx_ring_full,
            a.tx_tick_kicks - b.tx_tick_kicks,
        );
        kprintln!(
            "@@ torture-diag window model={} cpu={c} ms={} clock_interrupts={} switches={} pin_switches={} \
             borrow_preempts={} kick_preempts={} run_queue={} com1_interrupts={} com1_rx_bytes={} com1_lines={} \
             com1_budget_stops={} truncated={}",
            model.name(),
            (now() - self.at) / 1_000_000,
            s.ticks - self.sched.ticks,
            s.switches - self.sched.switches,
            s.pin_switches - self.sched.pin_switches,
            s.borrow_preempts - self.sched.borrow_preempts,
            s.kick_preempts - self.sched.kick_preempts,
            s.queued,
            com1[0] - self.com1[0],
            com1[1] - self.com1[1],
            com1[2] - self.com1[2],
            com1[3] - self.com1[3],
            u8::from(self.truncated),
        );
        // (handler ns, arrivals, handler runs, established in the window, the source)
        let mut moved: Vec<(u64, u64, u64, bool, SourceRef)> = Vec::new();
        for src in INTR.sources() {
            let st = &src.stats;
            let key = alloc::sync::Arc::as_ptr(&src) as usize;
            let old = self.sources.iter().find(|o| o.key == key);
            let base = old.copied().unwrap_or_default();
            let arrivals = st.per_cpu[c].load(Relaxed).saturating_sub(base.arrivals);
            let handled = st.handled_cpu[c].load(Relaxed).saturating_sub(base.handled);
            let ns = st.handler_ns_cpu[c].load(Relaxed).saturating_sub(base.handler_ns);
            if arrivals != 0 || handled != 0 || ns != 0 {
                moved.push((ns, arrivals, handled, old.is_none(), src));
            }
        }
        moved.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
        let shown = moved.len().min(PRINTED);
        for (ns, arrivals, handled, new, src) in &moved[..shown] {
            kprintln!(
                "@@ torture-diag window model={} cpu={c} source={} arrivals={arrivals} handled={handled} \
                 handler_us={} new={}",
                model.name(),
                src.name(),
                ns / 1000,
                u8::from(*new),
            );
        }
        if moved.len() > shown {
            kprintln!(
                "@@ torture-diag window model={} cpu={c} more_sources={}",
                model.name(),
                moved.len() - shown
            );
        }
        // And a few more snapshots, 2 ms apart: one instant says little of a 100 ms stall.
        for _ in 0..SAMPLES {
            SCHED.sleep_ns(2_000_000);
            super::monitor::print_stall(model, c, "sample");
        }
    }
}
