//! The torture run's monitor (`mod.rs` describes the run): a thread on CPU 0 above every load
//! thread that runs the warm-up load and the main load ([`Monitor::load`]: sources established,
//! load threads started, checked every 10 ms, then quiesced and torn down), prints the
//! progress lines and the violations, checks the heartbeat, and at the end the per-source
//! accounting, the heap against its baseline, and the summary. With two CPUs or more, the
//! monitor's own CPU is checked from CPU 1 by [`watch`] (a thread at the monitor's priority):
//! its heartbeat, with the same rule as the other CPUs', and the monitor itself — a monitor
//! that has not run for 100 ms is reported (`@@ torture-stall why=monitor-cpu`, not a
//! violation: its CPU may be busy with interrupt work) with an NMI snapshot of its CPU, every
//! 100 ms while it lasts, at most [`WATCH_REPORTS`] times per load; the summary counts these
//! (`monitor_idle=`). A heartbeat report (a violation) prints NMI snapshots of the CPU and its
//! peers, then what the CPU did since its progress last moved (`window.rs`).

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use arch::{kprintln, X86_64};
use intr::{IntrHandle, Model};
use machine::Machine;
use sched::Priority;

use crate::cmdline::Options;
use crate::drivers::com::Com2Fault;
use crate::drivers::edu::Edu;
use crate::intr::INTR;
use crate::locks::{KernelEnv, SYNC};
use crate::SCHED;

use super::window::CpuWindow;
use super::*;

/// Prints where CPU `c` is now (`@@ torture-stall`, from an NMI snapshot, `arch::nmi`): the
/// interrupted instruction, whether interrupts were enabled, its IPL and spin mutexes, and
/// the return addresses the host tool symbolizes. `why` says what made the caller look.
pub(super) fn print_stall(model: Model, c: usize, why: &str) {
    let running = running_on(c);
    let asked = now();
    let snap = arch::nmi::snapshot(c);
    // Guest time from the NMI to the answer: how soon the CPU ran an instruction (under TCG
    // round-robin, a vCPU runs only in its turn).
    let answer_us = (now() - asked) / 1000;
    match snap {
        Some(s) => {
            let mut frames = String::new();
            for (i, f) in s.frames[..s.nframes].iter().enumerate() {
                if i > 0 {
                    frames.push(',');
                }
                frames.push_str(&alloc::format!("{f:#x}"));
            }
            kprintln!(
                "@@ torture-stall model={} cpu={c} why={why} running={running} answer_us={answer_us} rip={:#x} if={} \
                 ipl={} pending={:#x} spin_mutexes={} frames={frames}",
                model.name(),
                s.rip,
                u8::from(s.interrupts_enabled()),
                s.ipl,
                s.pending,
                s.spin_mutexes,
            );
        }
        None => kprintln!(
            "@@ torture-stall model={} cpu={c} why={why} running={running} snapshot=none",
            model.name()
        ),
    }
}

pub(super) fn running_on(c: usize) -> String {
    let mut name = String::from("?");
    SCHED.for_each_thread(|t| {
        if t.is_on_cpu() && t.last_cpu() == c {
            name = String::from(t.name());
        }
    });
    name
}

/// When the monitor last checked (guest ns), for [`watch`].
static MONITOR_SEEN: AtomicU64 = AtomicU64::new(0);
/// `why=monitor-cpu` reports over the boot (the summary's `monitor_idle=`): a monitor kept
/// from its CPU for 100 ms is not a violation, but it says the CPU is saturated.
static MONITOR_IDLE_REPORTS: AtomicU64 = AtomicU64::new(0);
/// At most this many `why=monitor-cpu` reports per load.
const WATCH_REPORTS: usize = 16;

/// The watch over the monitor's CPU `mc`, from another CPU, every 10 ms until the load stops:
/// `mc`'s heartbeat (a violation, as [`Monitor::check`] does for the others), and the
/// monitor's own last check (a report with snapshots). Prints no snapshot of its own CPU.
fn watch(model: Model, mc: usize, ncpus: usize) {
    let me = cpu();
    let mut last = PROGRESS[mc].load(SeqCst);
    let mut moved = now();
    let mut reported = false;
    let mut next_report = 0;
    let mut reports = 0;
    let mut window = CpuWindow::new();
    window.take(mc);
    while !STOP.load(SeqCst) {
        SCHED.sleep_ns(10_000_000);
        let t = now();
        let p = PROGRESS[mc].load(SeqCst);
        if p != last {
            (last, moved, reported) = (p, t, false);
            window.take(mc);
        } else if t - moved > HEARTBEAT_NS && !reported {
            reported = true;
            kprintln!("@@ torture-heartbeat model={} cpu={} running={}", model.name(), mc, running_on(mc));
            print_stall(model, mc, "heartbeat");
            window.print_since(model, mc);
            for other in (0..ncpus).filter(|&o| o != mc && o != me) {
                print_stall(model, other, "heartbeat-peer");
            }
            violation("heartbeat", None, mc);
        }
        let seen = MONITOR_SEEN.load(SeqCst);
        if t.saturating_sub(seen) > HEARTBEAT_NS && t >= next_report && reports < WATCH_REPORTS {
            reports += 1;
            next_report = t + HEARTBEAT_NS;
            kprintln!(
                "@@ torture-heartbeat model={} cpu={} monitor_idle_ms={} running={}",
                model.name(),
                mc,
                (t - seen) / 1_000_000,
                running_on(mc)
            );
            print_stall(model, mc, "monitor-cpu");
            print_cpu_threads(model, mc);
            MONITOR_IDLE_REPORTS.fetch_add(1, SeqCst);
        }
    }
}

/// CPU `c`'s threads (`@@ torture-diag cpu-threads`: name, state, on CPU, priority, switches,
/// run time in ms each) and its pinned interrupt threads (made, parked, the bound; and every CPU's busy
/// ones), the IPI sources' raises in flight by target CPU and the handler runs owed, for a
/// stall report.
fn print_cpu_threads(model: Model, c: usize) {
    let mut list = String::new();
    SCHED.for_each_thread(|t| {
        if t.last_cpu() == c && t.state() != sched::ThreadState::Dead && !t.is_idle() {
            list.push_str(&alloc::format!(
                " {}:{:?}:{}:{}:{}:{}",
                t.name(),
                t.state(),
                u8::from(t.is_on_cpu()),
                t.priority().get(),
                t.switch_count(),
                t.run_time_ns() / 1_000_000
            ));
        }
    });
    let (made, parked) = INTR.pinned.threads_on(c);
    let mut busy = String::new();
    let mut inflight = String::new();
    for o in 0..X86_64::ncpus() {
        let (m, p) = INTR.pinned.threads_on(o);
        let sep = if o > 0 { "," } else { "" };
        busy.push_str(&alloc::format!("{sep}{}", m - p));
        let to =
            SRC[..NSRC].iter().filter(|st| st.inflight.load(SeqCst) && st.target.load(SeqCst) == o).count();
        inflight.push_str(&alloc::format!("{sep}{to}"));
    }
    // Handler runs owed (scheduled, not yet handled), all sources, all CPUs.
    let owed: u64 = SRC[..NSRC]
        .iter()
        .map(|st| {
            (st.scheduled.load(SeqCst) + st.reruns.load(SeqCst)).saturating_sub(st.handled.load(SeqCst))
        })
        .sum();
    kprintln!(
        "@@ torture-diag cpu-threads model={} cpu={c} pinned_made={made} pinned_parked={parked} pinned_limit={} \
         pinned_busy_per_cpu={busy} inflight_to_cpu={inflight} runs_owed={owed} threads={}",
        model.name(),
        INTR.pinned.limit(),
        list
    );
}

fn print_reports(model: Model, seed: u64) {
    let reports: Vec<Report> = core::mem::take(&mut *REPORTS.lock());
    for r in reports {
        kprintln!(
            "@@ torture-violation model={} what={} source={} cpu={} seed={}",
            model.name(),
            r.what,
            r.source.map_or(String::from("-"), name),
            r.cpu,
            seed
        );
    }
}

/// Every handler run owed has happened: `handled == scheduled + reruns` (a filter-only
/// source owes none).
fn settled(s: usize, st: &SrcState) -> bool {
    kind(s) == FILTER || st.handled.load(SeqCst) == st.scheduled.load(SeqCst) + st.reruns.load(SeqCst)
}

fn delivered_total() -> u64 {
    SRC.iter().map(|s| s.delivered.load(SeqCst)).sum()
}

/// The monitor's state across the warm-up and the main load.
struct Monitor {
    model: Model,
    edu: Option<Edu>,
    host: Option<host::Host>,
    com2: Option<&'static Com2Fault>,
    seed: u64,
    ncpus: usize,
    t0: u64,
    next_line: u64,
    last_total: u64,
    last_progress: [u64; MAX_CPUS],
    last_moved: [u64; MAX_CPUS],
    reported: [bool; MAX_CPUS],
    /// Each CPU's counters when its progress was last seen moving.
    windows: Vec<CpuWindow>,
}

impl Monitor {
    fn new(
        model: Model,
        seed: u64,
        ncpus: usize,
        edu: Option<Edu>,
        host: Option<host::Host>,
        com2: Option<&'static Com2Fault>,
    ) -> Self {
        let t0 = now();
        Monitor {
            model,
            edu,
            host,
            com2,
            seed,
            ncpus,
            t0,
            next_line: t0 + 1_000_000_000,
            last_total: 0,
            last_progress: [0; MAX_CPUS],
            last_moved: [t0; MAX_CPUS],
            reported: [false; MAX_CPUS],
            windows: (0..ncpus).map(|_| CpuWindow::new()).collect(),
        }
    }

    /// One load of `ns` guest nanoseconds (`phase` varies the random streams): sources
    /// established, the load threads started, checked every 10 ms; then stopped, every raise
    /// in flight awaited, the sources disestablished.
    fn load(&mut self, phase: u64, ns: u64) {
        let (model, seed, ncpus) =
            (self.model, self.seed ^ phase.wrapping_mul(0x5851_f42d_4c95_7f2d), self.ncpus);
        STOP.store(false, SeqCst);
        {
            let mut hs = HANDLES.lock();
            for s in 0..NSRC {
                hs.push(Some(establish(s)));
            }
        }
        let mut rng = Rng::new(seed, 1);
        let msi = edu_msi(self.seed, phase);
        if let Some(e) = &self.edu {
            let cpu = rng.below(ncpus as u64) as usize;
            kprintln!(
                "@@ torture-edu model={} mode={} cpu={}",
                model.name(),
                if msi { "msi" } else { "intx" },
                cpu
            );
            let h = establish_edu(e, msi, cpu);
            HANDLES.lock().push(Some(h));
        }
        let mut threads = Vec::new();
        for c in 0..ncpus {
            let p = random_priority(&mut rng);
            let edu = self.edu.clone();
            threads.push(SCHED.spawn("torture.raise", p, Some(c), move || raiser(seed, c, ncpus, edu)));
            threads
                .push(SCHED.spawn("torture.beat", pri(Priority::RT_BASE, 20), Some(c), move || heartbeat(c)));
        }
        threads.push(SCHED.spawn("torture.control", Priority::KTHREAD, None, move || control(seed, model)));
        let mc = cpu();
        MONITOR_SEEN.store(now(), SeqCst);
        if ncpus >= 2 {
            let other = if mc == 0 { 1 } else { 0 };
            threads.push(SCHED.spawn("torture.watch", pri(Priority::RT_BASE, 30), Some(other), move || {
                watch(model, mc, ncpus)
            }));
        }
        // The owner just below the real-time range (most raisers are below it, so it gets to
        // hold the mutex), the waiter well inside it.
        let rt = pri(Priority::RT_BASE, 12);
        let low = Priority::new(Priority::RT_BASE.get() - 1).unwrap_or(Priority::KTHREAD);
        threads.push(SCHED.spawn("torture.pi.owner", low, Some(ncpus - 1), move || pi_owner(rt)));
        if let Some(h) = &self.host {
            h.spawn(&mut threads, seed);
        }
        if let Some(f) = self.com2 {
            threads.push(
                SCHED.spawn("torture.com2", Priority::KTHREAD, None, move || clock::com2(model, seed, f)),
            );
        }
        let waiter = SCHED.spawn("torture.pi.waiter", rt, Some(0), pi_waiter);
        *PI_WAITER.lock() = Some(waiter.thread().clone());
        threads.push(waiter);
        let end = now() + ns;
        while now() < end {
            SCHED.sleep_ns(10_000_000);
            self.check();
        }
        // Quiesce: stop the load, let every raise in flight arrive.
        STOP.store(true, SeqCst);
        CVAR.broadcast();
        for t in threads {
            t.join();
        }
        *PI_WAITER.lock() = None;
        let until = now() + LOST_NS;
        while SRC.iter().any(|s| s.inflight.load(SeqCst)) && now() < until {
            SCHED.sleep_ns(1_000_000);
        }
        for (s, st) in SRC.iter().enumerate() {
            if st.inflight.load(SeqCst) {
                violation("lost", Some(s), 0);
                st.inflight.store(false, SeqCst);
            }
        }
        // And every handler run scheduled (by a filter, or by `hwi_sched`) has run: a
        // disestablish discards a queued instance, so the teardown waits for them.
        let until = now() + LOST_NS;
        while !SRC.iter().enumerate().all(|(s, st)| settled(s, st)) && now() < until {
            SCHED.sleep_ns(1_000_000);
        }
        // Teardown: every source disestablished (each drop waits for its running handler).
        let handles: Vec<Option<IntrHandle<KernelEnv>>> = core::mem::take(&mut *HANDLES.lock());
        drop(handles);
        if let Some(e) = &self.edu {
            if msi {
                e.disable_msi();
            }
            e.ack(!0);
        }
        SCHED.sleep_ns(20_000_000);
        print_reports(model, self.seed);
    }

    /// The heartbeat, reports, and the progress line each guest second.
    fn check(&mut self) {
        let t = now();
        MONITOR_SEEN.store(t, SeqCst);
        // The monitor's own CPU is [`watch`]'s when there is another CPU.
        let mine = if self.ncpus >= 2 { Some(cpu()) } else { None };
        if self.model == Model::Pool {
            let q = (0..self.ncpus).map(|c| INTR.pool.queued(c)).max().unwrap_or(0);
            POOL_QUEUE_MAX.fetch_max(q, SeqCst);
        }
        for (c, progress) in PROGRESS.iter().enumerate().take(self.ncpus) {
            if Some(c) == mine {
                continue;
            }
            let p = progress.load(SeqCst);
            if p != self.last_progress[c] {
                self.last_progress[c] = p;
                self.last_moved[c] = t;
                self.reported[c] = false;
                self.windows[c].take(c);
            } else if t - self.last_moved[c] > HEARTBEAT_NS && !self.reported[c] {
                self.reported[c] = true;
                kprintln!(
                    "@@ torture-heartbeat model={} cpu={} running={}",
                    self.model.name(),
                    c,
                    running_on(c)
                );
                print_stall(self.model, c, "heartbeat");
                self.windows[c].print_since(self.model, c);
                // And every other CPU (but this one, the monitor's): a stall is usually
                // another CPU's doing (the lock's holder, the interrupt flood).
                for other in (0..self.ncpus).filter(|&o| o != c && o != arch::cpu::index()) {
                    print_stall(self.model, other, "heartbeat-peer");
                }
                violation("heartbeat", None, c);
            }
        }
        print_reports(self.model, self.seed);
        if t >= self.next_line {
            let total = delivered_total();
            kprintln!(
                "@@ torture-progress model={} ms={} interrupts={} rate={} violations={} heap={} threads={}",
                self.model.name(),
                (t - self.t0) / 1_000_000,
                total,
                total - self.last_total,
                VIOLATIONS.load(SeqCst),
                arch::mem::usage().0,
                SCHED.live_threads()
            );
            self.last_total = total;
            self.next_line += 1_000_000_000;
        }
    }
}

/// The id the next spawned thread gets (ids are never reused): spawns a thread that exits
/// at once and joins it.
fn next_thread_id() -> u64 {
    let t = SCHED.spawn("torture.probe", Priority::KTHREAD, None, || {});
    let id = t.thread().id();
    t.join();
    id + 1
}

pub(super) fn monitor(opts: &Options) -> bool {
    let seed = opts.torture_seed;
    SEED.store(seed, SeqCst);
    let model = INTR.default_model();
    let ncpus = X86_64::ncpus();
    MODEL_BLOCKS.store(model != Model::Direct, SeqCst);
    DEDICATED.store(model == Model::Dedicated, SeqCst);
    SYNC.witness.set_checking(true);
    REPORTS.lock().reserve(MAX_REPORTS);
    kprintln!(
        "@@ torture-start model={} cpus={} seed={} ms={} sources={}",
        model.name(),
        ncpus,
        seed,
        opts.torture_ms,
        NSRC
    );
    // A warm-up load first (pool, pinned and soft-interrupt threads are created lazily),
    // torn down; the heap baseline is taken then, with nothing of the load alive; the main
    // load follows and is torn down the same way.
    let total_ns = opts.torture_ms * 1_000_000;
    let warm_ns = (total_ns / 10).max(total_ns.min(100_000_000)).min(total_ns / 2);
    let edu = Edu::probe();
    if edu.is_none() {
        kprintln!("@@ torture-edu model={} mode=none (no edu device)", model.name());
    }
    // The host-driven sources' devices come up before the baseline (their drivers keep
    // their rings for good).
    let host = host::start(model);
    // COM2's stuck line, on the last CPU (its source is established for good).
    let com2 = match Com2Fault::establish(ncpus - 1) {
        Ok(f) => Some(f),
        Err(e) => {
            kprintln!("@@ torture-com2 model={} none ({e})", model.name());
            None
        }
    };
    let mut mon = Monitor::new(model, seed, ncpus, edu, host, com2);
    mon.load(1, warm_ns);
    let (heap_base, live_base) = (arch::mem::usage().0, SCHED.live_threads());
    let id_base = next_thread_id();
    mon.load(2, total_ns - warm_ns);
    // Measured before the per-source lines are printed: the serial transmit queue holds
    // what is being printed (a 16 KiB buffer was seen in use there).
    let (heap_end, live_end) = (arch::mem::usage().0, SCHED.live_threads());
    let spawned = (next_thread_id() - id_base) as usize;
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for h in HASH.iter().take(ncpus) {
        hash = mix(hash ^ h.load(SeqCst));
    }
    let (mut raised, mut merged, mut delivered, mut handled) = (0, 0, 0, 0);
    for (s, st) in SRC.iter().enumerate() {
        let r = st.raised.load(SeqCst);
        let m = st.merged.load(SeqCst);
        let d = st.delivered.load(SeqCst);
        let sc = st.scheduled.load(SeqCst);
        let h = st.handled.load(SeqCst);
        let re = st.reruns.load(SeqCst);
        if d + m != r {
            violation("count", Some(s), 0);
        }
        if !settled(s, st) {
            violation("count", Some(s), 0);
        }
        kprintln!(
            "@@ torture-source model={} name={} raised={} merged={} delivered={} scheduled={} handled={} reruns={}",
            model.name(),
            name(s),
            r,
            m,
            d,
            sc,
            h,
            re
        );
        raised += r;
        merged += m;
        delivered += d;
        handled += h;
    }
    // Heap: back at the baseline, but for the stacks of threads created lazily during the
    // main load (pool threads of a resize, pinned threads of a raised bound) that still exist.
    // The scheduler's registry of threads holds a weak reference to every thread until it is
    // pruned (`Scheduler::register`: at 64, 128, ... entries), which keeps an exited thread's
    // record allocated (not its stack): one record (and one registry slot, doubled) per
    // thread spawned since the baseline may remain.
    let record = core::mem::size_of::<sched::Thread<KernelEnv>>() + 16 + 2 * 8;
    let allowed = heap_base
        + live_end.saturating_sub(live_base) * (sched::STACK_SIZE + 8192)
        + spawned * record
        + HEAP_SLACK
        + if mon.host.is_some() { HOST_HEAP_SLACK } else { 0 };
    kprintln!(
        "@@ torture-heap model={} base={} end={} threads_spawned={} thread_record={} allowed={}",
        model.name(),
        heap_base,
        heap_end,
        spawned,
        record,
        allowed
    );
    if heap_end > allowed {
        violation("heap", None, 0);
    }
    let host_interrupts = mon.host.as_ref().map_or(0, |h| h.report(model));
    let (t_raised, t_merged, t_delivered) = clock::timer_totals(ncpus);
    kprintln!(
        "@@ torture-timer model={} raised={} merged={} delivered={} outstanding={}",
        model.name(),
        t_raised,
        t_merged,
        t_delivered,
        t_raised - t_merged - t_delivered
    );
    kprintln!(
        "@@ torture-backlog model={} held_back={} pool_queue_max={}",
        model.name(),
        HELD_BACK.load(SeqCst),
        POOL_QUEUE_MAX.load(SeqCst)
    );
    let c2 = clock::com2_counts(mon.com2);
    kprintln!(
        "@@ torture-com2 model={} injections={} storms={} recovered={} filter_runs={} runs_throttled={}",
        model.name(),
        c2.injections,
        c2.storms,
        c2.recovered,
        crate::drivers::com::COM2_INTERRUPTS.load(SeqCst),
        crate::drivers::com::COM2_RUNS_THROTTLED.load(SeqCst)
    );
    print_reports(model, seed);
    let v = VIOLATIONS.load(SeqCst);
    kprintln!(
        "@@ torture-summary model={} cpus={} seed={} ms={} raised={} merged={} delivered={} handled={} hash={:016x} heap_base={} heap_end={} threads_base={} threads_end={} pi_samples={} timer_delivered={} host_interrupts={} monitor_idle={} violations={}",
        model.name(),
        ncpus,
        seed,
        opts.torture_ms,
        raised,
        merged,
        delivered,
        handled,
        hash,
        heap_base,
        heap_end,
        live_base,
        live_end,
        PI_SAMPLES.load(SeqCst),
        t_delivered,
        host_interrupts,
        MONITOR_IDLE_REPORTS.load(SeqCst),
        v
    );
    v == 0
}
