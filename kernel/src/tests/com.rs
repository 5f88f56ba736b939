//! The 16550 drivers (`drivers::com`): interrupt-driven transmit, the line discipline, the
//! COM2 transmit-empty storm, and (a device test the host drives) the 64 KiB paste.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ktest::{kassert, kassert_eq, ktest, TestResult};
use sched::Priority;

use super::{ncpus, until};
use crate::drivers::com::{self, Com2Fault};
use crate::SCHED;

/// Once the COM1 driver runs, a burst of output goes out through the transmit interrupt: no
/// byte is polled, the ring never fills, and the bytes counted by the interrupt path cover
/// the burst.
fn transmit_is_interrupt_driven() -> TestResult {
    kassert!(com::started(), "COM1 is not interrupt-driven");
    let c0 = arch::serial::counters();
    const LINES: usize = 200;
    let mut bytes = 0;
    for i in 0..LINES {
        let line = alloc::format!("com tx burst line {i:04} ................................");
        bytes += line.len() + 2; // "\r\n"
        arch::kprintln!("{line}");
    }
    kassert!(until(2000, || arch::serial::tx_queued() == 0), "the transmit ring never drained");
    let c1 = arch::serial::counters();
    kassert_eq!(c1.tx_polled_bytes, c0.tx_polled_bytes, "bytes were sent by polling");
    kassert_eq!(c1.tx_ring_full, c0.tx_ring_full, "the transmit ring filled");
    let irq = c1.tx_irq_bytes - c0.tx_irq_bytes;
    let started = (c1.tx_starts - c0.tx_starts) * 16;
    kassert!(
        irq + started >= bytes as u64,
        "interrupt path sent {irq} bytes (+ at most {started} by writers) of {bytes}"
    );
    kassert!(irq > 0, "no byte went out through the transmit interrupt");
    Ok(())
}
ktest!(T_TX, "com::tx::interrupt_driven", transmit_is_interrupt_driven);

/// COM2's transmit-empty interrupt left enabled and never acknowledged on a level-triggered
/// line: the storm rule catches it, masks the line, reports it by name, the CPU keeps running
/// threads, and once the cause is removed the storm is declared over and the line unmasked.
fn com2_thre_storm_caught_and_recovered() -> TestResult {
    let target = ncpus() - 1;
    let fault = Com2Fault::establish(target)?;
    let src = crate::intr::INTR
        .sources()
        .into_iter()
        .find(|s| s.name() == "com2")
        .ok_or("com2 is not an established source")?;
    let storms0 = src.storm.storms.load(Ordering::SeqCst);
    let stop = Arc::new(AtomicBool::new(false));
    struct Cleanup(&'static Com2Fault, Arc<AtomicBool>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            self.0.set_stuck(false);
            self.1.store(true, Ordering::SeqCst);
        }
    }
    let _cleanup = Cleanup(fault, stop.clone());
    // Work on the target CPU (an idle CPU loses nothing to a stuck line: storm.rs).
    let progress = Arc::new(AtomicU64::new(0));
    let (sp, pg) = (stop.clone(), progress.clone());
    let pri = Priority::new(5).ok_or("priority")?;
    let worker = SCHED.spawn("com2-victim", pri, Some(target), move || {
        while !sp.load(Ordering::Relaxed) {
            pg.fetch_add(1, Ordering::Relaxed);
            core::hint::spin_loop();
        }
    });
    kassert!(until(1000, || progress.load(Ordering::Relaxed) > 0), "the victim thread never ran");
    let irq0 = com::COM2_INTERRUPTS.load(Ordering::SeqCst);
    fault.set_stuck(true);
    kassert!(
        until(3000, || src.storm.storms.load(Ordering::SeqCst) > storms0),
        "the storm was never detected ({} interrupts)",
        com::COM2_INTERRUPTS.load(Ordering::SeqCst) - irq0
    );
    // The rule counts the storm before the dispatcher marks it in effect: wait for both.
    kassert!(until(1000, || src.storm.storming.load(Ordering::SeqCst)), "storm not in effect");
    let p0 = progress.load(Ordering::Relaxed);
    kassert!(
        until(1000, || progress.load(Ordering::Relaxed) > p0),
        "the victim made no progress while the storm was throttled"
    );
    // Remove the cause.
    fault.set_stuck(false);
    kassert!(until(5000, || !src.storm.storming.load(Ordering::SeqCst)), "the storm was never declared over");
    kassert!(until(1000, || !src.is_masked()), "com2 left masked after the storm");
    stop.store(true, Ordering::SeqCst);
    worker.join();
    // Quiet now: no more interrupts arrive.
    let quiet0 = com::COM2_INTERRUPTS.load(Ordering::SeqCst);
    SCHED.sleep_ns(50_000_000);
    kassert_eq!(com::COM2_INTERRUPTS.load(Ordering::SeqCst), quiet0, "com2 still interrupting");
    Ok(())
}
ktest!(T_STORM, "intr::storm::com2_thre_level", com2_thre_storm_caught_and_recovered);

/// The paste line format matches docs/PROTOCOL.md ("Serial input").
fn paste_line_format() -> TestResult {
    let l = com::paste_line(7);
    kassert_eq!(l.len(), 63, "line length without its newline");
    kassert!(l.starts_with("S 00000007 "), "prefix: {l}");
    kassert!(com::check_paste_line(&l, 7) && !com::check_paste_line(&l, 8), "check");
    Ok(())
}
ktest!(T_FORMAT, "com::paste::line_format", paste_line_format);

/// The host pastes 1024 lines (64 KiB) into COM1 after `@@ serial-ready`, then `E <count>`:
/// every line arrives, in order, intact, with no receiver overrun and no dropped line.
/// Needs the host to type (tests/serial.rs), hence a `dev::` test.
fn paste_64k_no_loss() -> TestResult {
    let c0 = arch::serial::counters();
    let dropped0 = com::STATS.lines_dropped.load(Ordering::SeqCst);
    arch::kprintln!("@@ serial-ready");
    let (mut seq, mut bad, mut bytes) = (0u64, 0u64, 0u64);
    let end = loop {
        let Some(line) = com::read_line_timeout(60_000_000_000) else {
            return Err(alloc::format!("no input for 60 s after {seq} lines"));
        };
        if let Some(n) = line.strip_prefix("E ") {
            break n.trim().parse::<u64>().map_err(|_| alloc::format!("bad end line {line:?}"))?;
        }
        bytes += line.len() as u64 + 1;
        if !com::check_paste_line(&line, seq) {
            if bad < 3 {
                arch::kprintln!("paste: line {seq} wrong: {line:?}");
            }
            bad += 1;
        }
        seq += 1;
    };
    let c1 = arch::serial::counters();
    arch::kprintln!(
        "@@ result scope=serial lines={seq} bytes={bytes} bad={bad} overruns={} flow_stops={} budget_stops={} max_rx_per_call={} \
         max_rx_ns={}",
        c1.rx_overruns - c0.rx_overruns,
        com::STATS.flow_stops.load(Ordering::SeqCst),
        com::STATS.budget_stops.load(Ordering::SeqCst),
        com::STATS.max_rx_per_call.load(Ordering::SeqCst),
        com::STATS.max_rx_ns.load(Ordering::SeqCst)
    );
    // The filter's receive budget (the 8-CPU torture's CPU 0 stall: a host typing as fast as the
    // filter read kept it in its loop, interrupts off, for up to 278 ms).
    let most = com::STATS.max_rx_per_call.load(Ordering::SeqCst);
    kassert!(
        most as usize <= com::RX_BUDGET,
        "a filter call took {most} bytes, over the budget of {}",
        com::RX_BUDGET
    );
    kassert_eq!(seq, end, "lines received vs lines the host sent");
    kassert_eq!(bad, 0, "corrupted lines");
    kassert_eq!(c1.rx_overruns - c0.rx_overruns, 0, "receiver overruns");
    kassert_eq!(com::STATS.lines_dropped.load(Ordering::SeqCst) - dropped0, 0, "dropped lines");
    Ok(())
}
ktest!(T_PASTE, "dev::com::paste_64k", paste_64k_no_loss);
