//! `intrstat`: every established interrupt source, one row per CPU that took or ran some of
//! its interrupts and a `total` row, like `vmstat -i` / illumos `intrstat`. The format is in
//! docs/PROTOCOL.md ("Shell"):
//!
//! ```text
//! intrstat: since=last|boot interval_ms=<n> cpus=<n> sources=<n>
//! source vector ipl model cpu count rate handled handler_us p50_ns p99_ns stray storms masked_in mask state blocked_us spl_wait_n/us mask_wait_n/us
//! <one row per (source, CPU) with a non-zero count or handler run, then the source's total row>
//! ```
//!
//! `rate` is interrupts per second over the interval: since the previous `intrstat` (a
//! snapshot is kept) or, the first time, since boot. A per-CPU `count` is interrupts that
//! arrived on that CPU; `handled` and `handler_us` are handler runs and time on the CPU that
//! ran them (not always the arrival CPU under pooling); `handler_us` is CPU time, and the time
//! handler runs spent switched away (blocked, preempted) is `blocked_us`. Latency (arrival →
//! handler start, the time deferred by the SPL and the time waiting for an unmask included;
//! `spl_wait_n/us` and `mask_wait_n/us` count those waits and their total) is
//! kept per source and per CPU that ran the handler: a CPU row's `p50_ns`/`p99_ns` are of the
//! handlers that ran there (`-` if none did), the total row's of the source.

use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::Ordering;

use machine::Machine;

use super::{word, ShellError};
use crate::intr::INTR;
use crate::locks::{KernelEnv, Mutex};

type Source = intr::Source<KernelEnv>;

/// The counts at the previous `intrstat`: when, and per source its per-CPU arrivals.
struct Snapshot {
    at_ns: u64,
    counts: Vec<(Weak<Source>, Vec<u64>)>,
}

static LAST: Mutex<Option<Snapshot>> = Mutex::new_adaptive("shell.intrstat", None);

/// Per second, over `ns` nanoseconds.
fn per_second(n: u64, ns: u64) -> u64 {
    (n as u128 * 1_000_000_000 / ns.max(1) as u128) as u64
}

/// The `mask` cell: how masking the source takes effect, as one word: `software`, or the
/// hardware method with dashes for spaces (`ioapic-pin`, `msi-x-vector-control`).
fn mask_word(src: &Source) -> alloc::string::String {
    if src.line().is_none() {
        return alloc::string::String::from("software");
    }
    src.mask_method().replace(' ', "-")
}

/// The `state` cell: `-`, or the comma-separated flags `masked`, `throttled`, `storm`.
fn state(src: &Source) -> alloc::string::String {
    let flags = [
        (src.is_masked(), "masked"),
        (src.storm.throttled.load(Ordering::Relaxed), "throttled"),
        (src.storm.storming.load(Ordering::Relaxed), "storm"),
    ];
    let on: Vec<&str> = flags.iter().filter(|f| f.0).map(|f| f.1).collect();
    if on.is_empty() {
        alloc::string::String::from("-")
    } else {
        on.join(",")
    }
}

/// Prints the table (see the module documentation).
/// A CPU's latency percentile for a source (the handlers that ran there), `-` if none ran.
fn cpu_percentile(st: &intr::stats::SourceStats, cpu: usize, handled: u64, p: u64) -> alloc::string::String {
    if handled == 0 {
        return alloc::string::String::from("-");
    }
    alloc::format!("{}", st.latency_percentile_cpu(cpu, p))
}

pub fn intrstat(out: &mut dyn Write) -> Result<(), ShellError> {
    let n = arch::X86_64::ncpus();
    let mut sources: Vec<Arc<Source>> = INTR.sources();
    sources.sort_by(|a, b| (a.vector(), a.name()).cmp(&(b.vector(), b.name())));
    let now = arch::X86_64::now_ns();
    let mut last = LAST.lock();
    let (since, from_ns) = match last.as_ref() {
        Some(s) => ("last", s.at_ns),
        None => ("boot", 0),
    };
    let interval = now.saturating_sub(from_ns).max(1);
    writeln!(
        out,
        "intrstat: since={since} interval_ms={} cpus={n} sources={}",
        interval / 1_000_000,
        sources.len()
    )?;
    writeln!(
        out,
        "{:<24} {:<6} {:<10} {:<9} {:>5} {:>10} {:>9} {:>10} {:>11} {:>9} {:>9} {:>6} {:>6} {:>9} {:<20} {:<22} {:>10} {:>14} {:>14}",
        "source",
        "vector",
        "ipl",
        "model",
        "cpu",
        "count",
        "rate",
        "handled",
        "handler_us",
        "p50_ns",
        "p99_ns",
        "stray",
        "storms",
        "masked_in",
        "mask",
        "state",
        "blocked_us",
        "spl_wait_n/us",
        "mask_wait_n/us"
    )?;
    let mut snap = Vec::with_capacity(sources.len());
    for src in &sources {
        let st = &src.stats;
        let counts: Vec<u64> = (0..n).map(|c| st.per_cpu[c].load(Ordering::Relaxed)).collect();
        let before: Vec<u64> = last
            .as_ref()
            .and_then(|s| s.counts.iter().find(|(w, _)| core::ptr::eq(w.as_ptr(), Arc::as_ptr(src))))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| alloc::vec![0; n]);
        let delta = |c: usize| counts[c].saturating_sub(before.get(c).copied().unwrap_or(0));
        let (name, vector, ipl, model) =
            (word(src.name()), alloc::format!("{:#04x}", src.vector()), src.ipl(), src.model());
        for (c, &count) in counts.iter().enumerate() {
            let handled = st.handled_cpu[c].load(Ordering::Relaxed);
            let masked_in = st.masked_arrivals[c].load(Ordering::Relaxed);
            if count == 0 && handled == 0 && masked_in == 0 {
                continue;
            }
            writeln!(
                out,
                "{name:<24} {vector:<6} {:<10} {:<9} {c:>5} {:>10} {:>9} {handled:>10} {:>11} {:>9} {:>9} {:>6} {:>6} {masked_in:>9} {:<20} {:<22} {:>10} {:>14} {:>14}",
                ipl.name(),
                model.name(),
                count,
                per_second(delta(c), interval),
                st.handler_ns_cpu[c].load(Ordering::Relaxed) / 1000,
                cpu_percentile(st, c, handled, 50),
                cpu_percentile(st, c, handled, 99),
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
            )?;
        }
        let total: u64 = counts.iter().sum();
        let total_delta: u64 = (0..n).map(delta).sum();
        writeln!(
            out,
            "{name:<24} {vector:<6} {:<10} {:<9} {:>5} {total:>10} {:>9} {:>10} {:>11} {:>9} {:>9} {:>6} {:>6} {:>9} {:<20} {:<22} {:>10} {:>14} {:>14}",
            ipl.name(),
            model.name(),
            "total",
            per_second(total_delta, interval),
            st.handled.load(Ordering::Relaxed),
            st.handler_ns.load(Ordering::Relaxed) / 1000,
            st.latency.percentile(50),
            st.latency.percentile(99),
            st.stray.load(Ordering::Relaxed),
            src.storm.storms.load(Ordering::Relaxed),
            st.masked_total(),
            mask_word(src),
            state(src),
            st.handler_off_ns.load(Ordering::Relaxed) / 1000,
            alloc::format!(
                "{}/{}",
                st.spl_deferred.load(Ordering::Relaxed),
                st.spl_deferred_ns.load(Ordering::Relaxed) / 1000
            ),
            alloc::format!("{}/{}", st.masked_waits.load(Ordering::Relaxed), st.masked_ns.load(Ordering::Relaxed) / 1000),
        )?;
        snap.push((Arc::downgrade(src), counts));
    }
    *last = Some(Snapshot { at_ns: now, counts: snap });
    Ok(())
}
