//! # The ithreads kernel
//!
//! Wires the portable crates to the x86_64 machine: one scheduler, the clock and IPI
//! vectors, CPU start-up, then either the default scenario or the in-kernel test suite
//! (kernel command line, see `cmdline`). This crate has no `unsafe`: everything that needs
//! it lives in `arch` (the machine) or the portable crates.
//!
//! ## Start-up order (BSP)
//! 1. `arch` boots, sets up the heap, descriptor tables, LAPIC, and calls [`kmain`] with
//!    interrupts disabled.
//! 2. The command line is parsed; a bad option ends the run (`@@ cmdline-error`).
//! 3. Interrupt hooks and vectors are registered, the BSP becomes a scheduler CPU, its clock
//!    starts, the APs are started (each becomes a scheduler CPU and starts its clock).
//! 4. `@@ boot` is printed and the `main` thread is spawned; the BSP enters its idle loop.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

extern crate alloc;

mod bench;
mod cmdline;
mod cost;
mod drivers;
mod flood;
mod intr;
mod locks;
mod panic;
mod rt;
mod scenario;
mod shell;
mod tests;
mod torture;
mod tracedump;
mod workload;

use arch::apic;
use arch::boot::BootInfo;
use arch::trap::{self, TrapFrame};
use arch::{kprintln, X86_64};
use machine::{IntrOff, Machine};
use sched::{Priority, Scheduler};

use ::intr as intr_api;
use cmdline::{HarnessCheck, Options, RunMode};
use locks::KernelEnv;

/// The scheduler of this kernel.
pub static SCHED: Scheduler<KernelEnv> = Scheduler::new();

/// The interrupt priority levels of every CPU.
pub static SPL: ipl::SplState<KernelEnv> = ipl::SplState::new();

/// A sleep/wakeup event on this kernel's scheduler.
pub type Event = sched::Event<KernelEnv>;

arch::entry_point!(kmain);

/// The clock interrupt: a periodic tick (time slices, the tick count, the serial line's
/// kick) when one is due, else a timed sleep's deadline (`Machine::arm_timer`); then the
/// one-shot timer is armed again for whichever comes next (`arch::apic`, "The clock").
fn clock_interrupt(_f: &mut TrapFrame, io: &IntrOff) {
    if apic::timer_fired() {
        arch::serial::tick_kick();
        SCHED.tick(io);
    } else {
        SCHED.expire_timeouts(io);
    }
    apic::arm_at_ns(SCHED.next_timeout_here_ns());
}

fn resched_ipi(_f: &mut TrapFrame, _io: &IntrOff) {
    // Nothing to do here: the CPU's need_resched flag is set, and intr_exit acts on it.
}

fn kmain(info: &'static BootInfo) -> ! {
    let opts: &'static Options = match cmdline::parse(info.cmdline) {
        Ok(o) => alloc::boxed::Box::leak(alloc::boxed::Box::new(o)),
        Err(e) => {
            kprintln!("@@ cmdline-error option={} msg={}", e.option, e.msg);
            arch::exit::exit_qemu(false);
        }
    };
    arch::set_idle_poll(opts.idle == cmdline::IdleMode::Poll);
    intr::init();
    trap::set_fault_hook(panic::fault);
    let vectors: [(u8, trap::Handler); 4] = [
        (apic::TIMER_VECTOR, clock_interrupt),
        (apic::RESCHED_VECTOR, resched_ipi),
        (apic::CALL_VECTOR, tests::smp::call_ipi),
        (apic::STOP_VECTOR, panic::stop_handler),
    ];
    for (v, h) in vectors {
        if let Err(e) = trap::register(v, h) {
            panic!("cannot register vector {v:#x}: {e:?}");
        }
    }
    let io = X86_64::intr_disable();
    SCHED.init_cpu(&io);
    apic::start_timer(opts.hz);
    if let Err(e) = arch::smp::start_aps(&info.ap_lapic_ids, ap_main) {
        panic!("CPU {} (LAPIC id {}) did not come online", e.cpu, e.lapic_id);
    }
    let ncpus = X86_64::ncpus();
    while !(0..ncpus).all(|c| SCHED.cpu_online(c)) {
        core::hint::spin_loop();
    }
    kprintln!(
        "ithreads: {} CPUs, TSC {} MHz, heap {} MiB at {:#x}",
        ncpus,
        info.tsc_hz / 1_000_000,
        info.heap.1 >> 20,
        info.heap.0
    );
    intr::INTR.set_default_model(opts.intr_model);
    tracedump::install(opts.trace_records);
    kprintln!("@@ boot cpus={} hz={} model={} cmdline={}", ncpus, opts.hz, opts.intr_model, info.cmdline);
    SCHED.spawn("main", Priority::KTHREAD, None, move || main_thread(opts));
    drop(io);
    SCHED.idle_loop()
}

fn ap_main() -> ! {
    let io = X86_64::intr_disable();
    SCHED.init_cpu(&io);
    apic::start_timer(apic::timer_hz());
    drop(io);
    SCHED.idle_loop()
}

fn main_thread(opts: &'static Options) {
    match opts.harness {
        Some(HarnessCheck::Panic) => panic!("deliberate panic (test.harness=panic)"),
        Some(HarnessCheck::FilterSleep) => {
            let h = intr::INTR.establish(
                intr_api::SourceSpec {
                    name: "harness.sleepy-filter".into(),
                    vector: 0x5F,
                    ipl: ipl::Ipl::Vm,
                    flags: intr_api::IntrFlags::MPSAFE,
                    model: None,
                    thread_priority: None,
                },
                Some(alloc::boxed::Box::new(|_| {
                    SCHED.sleep_ns(1_000_000); // not allowed in a filter: diagnosed, naming us
                    intr_api::FilterResult::Handled
                })),
                None,
            );
            let _h = h.unwrap_or_else(|e| panic!("{e}"));
            arch::apic::send_ipi(arch::cpu::lapic_id_of(arch::cpu::index()), 0x5F);
            loop {
                SCHED.sleep_ns(1_000_000_000);
            }
        }
        Some(HarnessCheck::Hang) => {
            kprintln!("@@ test-begin harness::deliberate_hang");
            loop {
                SCHED.sleep_ns(1_000_000_000);
            }
        }
        None => {}
    }
    // The console becomes interrupt-driven (receive and transmit) from here on.
    if let Err(e) = drivers::com::start() {
        panic!("com1: {e}");
    }
    drivers::com::register_sysctls();
    // Lock statistics and checking as the command line says (both off by default outside
    // `run=tests`: the lock fast paths are taken). Benchmarks run in this same configuration
    // and say which it is (`@@ bench-config`); `sysctl kern.lockstat`/`kern.lockcheck` change
    // it at run time.
    locks::SYNC.witness.set_checking(opts.lockcheck.unwrap_or(opts.run == RunMode::Tests));
    locks::SYNC.witness.set_stats(opts.lockstat);
    let ok = match opts.run {
        RunMode::Tests => tests::run_all(&opts.test_filter),
        RunMode::Scenario => scenario::run(opts),
        RunMode::Bench => bench::run(opts),
        RunMode::Rt => rt::run(opts),
        RunMode::Torture => torture::run(opts),
        RunMode::Cost => cost::run(opts),
        RunMode::Shell => {
            shell::configure(opts);
            drivers::com::set_echo(true);
            shell::run(&mut || Some(drivers::com::read_line()))
        }
    };
    tracedump::dump();
    arch::exit::exit_qemu(ok);
}
