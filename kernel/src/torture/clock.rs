//! Two more guest-generated sources of a torture run: each CPU's LAPIC timer, counted, and
//! COM2's stuck line, injected from time to time.
//!
//! ## The LAPIC timer
//! Each CPU's one-shot timer is the scheduler's clock (`arch::apic`, "The clock"): armed for
//! the next tick or the earliest timed sleep, re-armed by every clock interrupt and by a
//! sleep due before what is armed. `arch::apic` counts per CPU the expiries armed (raised),
//! the arms made before the previous one interrupted, which supersede it (merged: its
//! countdown restarts, or its pending interrupt is the one delivery of both), and the clock
//! interrupts (delivered). Since every clock interrupt re-arms, a CPU with interrupts
//! disabled, outside its clock interrupt, has exactly one expiry outstanding. Each CPU's
//! heartbeat thread checks `raised - merged - delivered == 1` on its own CPU with interrupts
//! disabled ([`check_timer`]): less is a clock interrupt with nothing armed
//! (`timer-duplicate`), more an arm the clock interrupt did not take (`timer-lost`). A CPU
//! whose timer stopped interrupting stops its own heartbeat thread's sleeps too: the
//! heartbeat check reports it. The end prints the totals (`@@ torture-timer`), and the
//! deliveries count in the run's interrupts.
//!
//! ## COM2's stuck line
//! A thread ([`com2`]) turns COM2's fault on (`drivers::com::Com2Fault`: the transmit-empty
//! interrupt enabled and never acknowledged, the level-triggered line held asserted) for 10
//! to 40 guest ms at random times, then off, and checks the storm rule (crates/intr/src/
//! storm.rs) on it: the storm is detected while the line is stuck (`storm-undetected`: the
//! source's storm count did not grow), the source is re-enabled and the storm declared over
//! within [`RECOVER_NS`] of the release (`storm-stuck`), the line is then quiet
//! (`storm-line`: its filter still runs), and no filter runs for the throttled source before
//! the storm thread lifts the throttle (`storm-throttled`: `drivers::com::COM2_RUNS_THROTTLED`,
//! counted by COM2's filter, beyond the arrival that throttled it). Guest-generated: the
//! injection is deterministic from the seed.

use core::sync::atomic::Ordering::SeqCst;

use arch::{apic, kprintln, X86_64};
use machine::Machine;

use crate::drivers::com::{self, Com2Fault};
use crate::SCHED;

use super::{now, violation, Rng, COM2, STOP, TIMER};

/// Guest time after COM2's release by which the storm must be over: the longest backoff,
/// the quiet time, and a margin.
const RECOVER_NS: u64 = 2_000_000_000;

/// This CPU's timer accounting: a violation unless exactly one expiry is outstanding. Call
/// on the CPU (a thread pinned there).
pub fn check_timer() {
    let c = X86_64::cpu_index();
    let (armed, replaced, fired) = {
        let _io = X86_64::intr_disable();
        (
            apic::TIMER_ARMED[c].load(SeqCst),
            apic::TIMER_REPLACED[c].load(SeqCst),
            apic::TIMER_FIRED[c].load(SeqCst),
        )
    };
    let outstanding = armed as i128 - replaced as i128 - fired as i128;
    if outstanding < 1 {
        violation("timer-duplicate", Some(TIMER), c);
    } else if outstanding > 1 {
        violation("timer-lost", Some(TIMER), c);
    }
}

/// The timer totals over every CPU: (raised, merged, delivered).
pub fn timer_totals(ncpus: usize) -> (u64, u64, u64) {
    let sum = |a: &[core::sync::atomic::AtomicU64]| a.iter().take(ncpus).map(|x| x.load(SeqCst)).sum::<u64>();
    (sum(&apic::TIMER_ARMED), sum(&apic::TIMER_REPLACED), sum(&apic::TIMER_FIRED))
}

/// Stuck-line injections, storms seen and releases recovered, over the boot.
pub struct Com2Counts {
    pub injections: u64,
    pub storms: u64,
    pub recovered: u64,
}

static INJECTIONS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static RECOVERED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// The COM2 thread of one load (see the module doc); returns when the load stops, with the
/// line released and recovered.
pub fn com2(model: intr::Model, seed: u64, fault: &'static Com2Fault) {
    let mut rng = Rng::new(seed, 11);
    while !STOP.load(SeqCst) {
        SCHED.sleep_ns(20_000_000 + rng.below(200_000_000));
        if STOP.load(SeqCst) {
            break;
        }
        let st = fault.storm();
        let storms = st.storms.load(SeqCst);
        let before = WindowCounts::now(fault);
        INJECTIONS.fetch_add(1, SeqCst);
        fault.set_stuck(true);
        SCHED.sleep_ns(10_000_000 + rng.below(30_000_000));
        // What each CPU runs at the end of the window, for the diagnostic below.
        let late = WindowCounts::now(fault);
        let stalled: alloc::vec::Vec<usize> =
            (0..arch::cpu::ncpus()).filter(|&c| late.ticks[c] == before.ticks[c]).collect();
        if st.storms.load(SeqCst) == storms {
            // About to be reported: where are the CPUs that took no clock interrupt?
            for &c in &stalled {
                super::monitor::print_stall(model, c, "com2-window");
            }
        }
        fault.set_stuck(false);
        let cpu = X86_64::cpu_index();
        if st.storms.load(SeqCst) == storms {
            violation("storm-undetected", Some(COM2), cpu);
            let after = WindowCounts::now(fault);
            after.print_since(&before, fault, "undetected");
            for c in 0..arch::cpu::ncpus() {
                kprintln!(
                    "@@ torture-diag com2 undetected cpu={c} clock_interrupts={}",
                    after.ticks[c] - before.ticks[c]
                );
            }
            let (b, a) = (before.console, arch::serial::counters());
            kprintln!(
                "@@ torture-diag com2 undetected console tx_ring_full={} tx_polled_bytes={} tx_irq_bytes={} tx_tick_kicks={}",
                a.tx_ring_full - b.tx_ring_full,
                a.tx_polled_bytes - b.tx_polled_bytes,
                a.tx_irq_bytes - b.tx_irq_bytes,
                a.tx_tick_kicks - b.tx_tick_kicks,
            );
        }
        let until = now() + RECOVER_NS;
        while (st.throttled.load(SeqCst) || st.storming.load(SeqCst)) && now() < until {
            SCHED.sleep_ns(5_000_000);
        }
        if st.throttled.load(SeqCst) || st.storming.load(SeqCst) {
            violation("storm-stuck", Some(COM2), cpu);
            continue;
        }
        let quiet = WindowCounts::now(fault);
        SCHED.sleep_ns(10_000_000);
        if com::COM2_INTERRUPTS.load(SeqCst) != quiet.interrupts {
            violation("storm-line", Some(COM2), cpu);
            // What ran on the quiet line: the filter's runs, the rule's arrivals and no-work
            // verdicts, and whether the line is throttled or storming again.
            WindowCounts::now(fault).print_since(&quiet, fault, "storm-line");
        }
        RECOVERED.fetch_add(1, SeqCst);
    }
    if com::COM2_RUNS_THROTTLED.load(SeqCst) != 0 {
        kprintln!("@@ torture-diag com2 runs_throttled={}", com::COM2_RUNS_THROTTLED.load(SeqCst));
        violation("storm-throttled", Some(COM2), X86_64::cpu_index());
        com::COM2_RUNS_THROTTLED.store(0, SeqCst);
    }
}

/// What one injection is judged on, read before and after it (for the diagnostic of an
/// undetected storm: did the line interrupt at all, did the rule see it, did the line's CPU
/// take its clock interrupts meanwhile).
struct WindowCounts {
    at: u64,
    interrupts: u64,
    arrivals: u64,
    no_work: u64,
    judged: u64,
    line_cpu_ticks: u64,
    ticks: [u64; machine::MAX_CPUS],
    console: arch::serial::ConsoleCounters,
}

impl WindowCounts {
    fn now(fault: &Com2Fault) -> Self {
        let st = fault.storm();
        WindowCounts {
            at: now(),
            interrupts: com::COM2_INTERRUPTS.load(SeqCst),
            arrivals: st.arrivals_total.load(SeqCst),
            no_work: st.no_work_total.load(SeqCst),
            judged: st.windows_judged.load(SeqCst),
            line_cpu_ticks: apic::TIMER_FIRED[fault.cpu()].load(SeqCst),
            ticks: core::array::from_fn(|c| apic::TIMER_FIRED[c].load(SeqCst)),
            console: arch::serial::counters(),
        }
    }
}

impl WindowCounts {
    /// `@@ torture-diag com2 <what>`: what changed on COM2's line since `before` — the
    /// window's length, the filter's runs, the storm rule's arrivals, no-work verdicts and
    /// judged windows, the line CPU's clock interrupts — and the line's state now.
    fn print_since(&self, before: &WindowCounts, fault: &Com2Fault, what: &str) {
        let st = fault.storm();
        kprintln!(
            "@@ torture-diag com2 {what} window_ns={} interrupts={} arrivals={} no_work={} windows_judged={} \
             line_cpu={} line_cpu_clock_interrupts={} throttled={} storming={} stuck={}",
            self.at - before.at,
            self.interrupts - before.interrupts,
            self.arrivals - before.arrivals,
            self.no_work - before.no_work,
            self.judged - before.judged,
            fault.cpu(),
            self.line_cpu_ticks - before.line_cpu_ticks,
            u8::from(st.throttled.load(SeqCst)),
            u8::from(st.storming.load(SeqCst)),
            u8::from(fault.stuck()),
        );
    }
}

/// What [`com2`] did over the boot.
pub fn com2_counts(fault: Option<&'static Com2Fault>) -> Com2Counts {
    Com2Counts {
        injections: INJECTIONS.load(SeqCst),
        storms: fault.map_or(0, |f| f.storm().storms.load(SeqCst)),
        recovered: RECOVERED.load(SeqCst),
    }
}
