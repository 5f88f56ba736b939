//! `ps` (every thread) and `lockstat` (the most contended lock classes). Formats in
//! docs/PROTOCOL.md ("Shell"):
//!
//! ```text
//! ps: threads=<n> cpus=<n>
//! id name base pri state cpu bound pin
//! <one row per thread, oldest first>
//!
//! lockstat: stats=on|off classes=<n> shown=<k>
//! class kind acquired contended spin_us block_us max_hold_us
//! <one row per class, most contended first>
//! ```
//!
//! `state`: `onproc` (on a CPU), `ready` (runnable, waiting for a CPU), `idle` (a CPU's idle
//! thread while another thread runs there), `sleep`, `dead`.
//! `pin`: `-`; `pinned:<id>` — the thread is pinned on its CPU under interrupt thread `<id>`,
//! which borrowed the CPU (the pinned switch); `borrow:<id>` — an interrupt thread running on
//! the CPU it borrowed from the pinned thread `<id>`. The scheduler only says which threads
//! are on a CPU and which one *runs* each CPU: a thread that is on a CPU without running it is
//! pinned under the one that does. (A thread caught in the middle of a context switch can look
//! pinned for that instant.)

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use machine::Machine;
use sched::ThreadState;
use sync::witness::LockKind;

use super::{word, ShellError};
use crate::locks::SYNC;
use crate::SCHED;

/// What `ps` shows of one thread, read once.
struct Row {
    id: u64,
    name: String,
    base: u8,
    pri: u8,
    state: ThreadState,
    on_cpu: bool,
    running: bool,
    idle: bool,
    cpu: usize,
    bound: Option<usize>,
}

/// Prints the thread table.
pub fn ps(out: &mut dyn Write) -> Result<(), ShellError> {
    let mut rows = Vec::new();
    SCHED.for_each_thread(|t| {
        let addr = t as *const sched::Thread<crate::locks::KernelEnv> as usize;
        rows.push(Row {
            id: t.id(),
            name: word(t.name()),
            base: t.base_priority().get(),
            pri: t.priority().get(),
            state: t.state(),
            on_cpu: t.is_on_cpu(),
            running: SCHED.is_running(addr as *const ()),
            idle: t.is_idle(),
            cpu: t.last_cpu(),
            bound: t.bound_cpu(),
        });
    });
    // Per CPU: the thread running it and the one pinned under it, if any.
    let n = arch::X86_64::ncpus();
    let pinned_on = |c: usize| rows.iter().find(|r| r.on_cpu && !r.running && r.cpu == c).map(|r| r.id);
    let running_on = |c: usize| rows.iter().find(|r| r.running && r.cpu == c).map(|r| r.id);
    let pins: Vec<(Option<u64>, Option<u64>)> = (0..n).map(|c| (pinned_on(c), running_on(c))).collect();
    writeln!(out, "ps: threads={} cpus={n}", rows.len())?;
    writeln!(
        out,
        "{:>5} {:<20} {:>4} {:>4} {:<6} {:>3} {:>5} pin",
        "id", "name", "base", "pri", "state", "cpu", "bound"
    )?;
    for r in &rows {
        let state = match r.state {
            // An interrupt thread that borrowed a CPU runs it without going through the
            // scheduler's state (the lazy pinned switch): it is on the processor all the same.
            _ if r.running => "onproc",
            ThreadState::Running if r.on_cpu => "onproc",
            ThreadState::Running if r.idle => "idle",
            ThreadState::Running => "ready",
            ThreadState::Sleeping => "sleep",
            ThreadState::Dead => "dead",
        };
        let (under, over) = pins.get(r.cpu).copied().unwrap_or((None, None));
        let pin = match (under, over) {
            (Some(p), Some(b)) if r.on_cpu && !r.running && p == r.id => alloc::format!("pinned:{b}"),
            (Some(p), Some(b)) if r.running && b == r.id => alloc::format!("borrow:{p}"),
            _ => String::from("-"),
        };
        let bound = r.bound.map_or(String::from("-"), |c| alloc::format!("{c}"));
        writeln!(
            out,
            "{:>5} {:<20} {:>4} {:>4} {:<6} {:>3} {:>5} {pin}",
            r.id, r.name, r.base, r.pri, state, r.cpu, bound
        )?;
    }
    Ok(())
}

fn kind_name(k: LockKind) -> &'static str {
    match k {
        LockKind::Adaptive => "adaptive",
        LockKind::Spin => "spin",
        LockKind::RwLock => "rwlock",
    }
}

/// Prints the `n` most contended lock classes.
pub fn lockstat(n: usize, out: &mut dyn Write) -> Result<(), ShellError> {
    let w = &SYNC.witness;
    let mut classes: Vec<_> = w.lockstat().collect();
    // Most contended first; then most time lost waiting; then most used.
    classes.sort_by(|a, b| {
        let key = |s: &sync::witness::ClassStats| (s.contended, s.spin_ns + s.block_ns, s.acquired);
        key(&b.2).cmp(&key(&a.2)).then(a.0.cmp(b.0))
    });
    let shown = n.min(classes.len());
    writeln!(
        out,
        "lockstat: stats={} classes={} shown={shown}",
        if w.stats_on() { "on" } else { "off" },
        classes.len()
    )?;
    writeln!(
        out,
        "{:<28} {:<8} {:>10} {:>10} {:>10} {:>10} {:>11}",
        "class", "kind", "acquired", "contended", "spin_us", "block_us", "max_hold_us"
    )?;
    for (name, kind, s) in classes.iter().take(shown) {
        writeln!(
            out,
            "{:<28} {:<8} {:>10} {:>10} {:>10} {:>10} {:>11}",
            word(name),
            kind_name(*kind),
            s.acquired,
            s.contended,
            s.spin_ns / 1000,
            s.block_ns / 1000,
            s.max_hold_ns / 1000
        )?;
    }
    Ok(())
}
