//! The panic path: stop the other CPUs, print `@@ panic` and `@@ backtrace` (docs/PROTOCOL.md),
//! exit QEMU with the failure status. CPU exceptions arrive here too, through the fault hook.

use core::fmt::{self, Write};
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

use arch::trap::TrapFrame;
use arch::{apic, cpu, exit, serial, trap};

static PANICKING: AtomicBool = AtomicBool::new(false);

/// Writes to the console with newlines folded, so the message stays one protocol line.
struct OneLine;

impl Write for OneLine {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for (i, part) in s.split('\n').enumerate() {
            if i > 0 {
                serial::print_forced(format_args!(" | "));
            }
            serial::print_forced(format_args!("{part}"));
        }
        Ok(())
    }
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    x86_64_intr_off();
    if PANICKING.swap(true, Ordering::SeqCst) {
        // Another CPU is already reporting; it will exit QEMU.
        exit::halt_forever();
    }
    let me = cpu::index();
    for c in (0..cpu::ncpus()).filter(|&c| c != me && cpu::is_online(c)) {
        apic::send_ipi(cpu::lapic_id_of(c), apic::STOP_VECTOR);
    }
    serial::print_forced(format_args!("\n@@ panic cpu={me} msg="));
    let _ = write!(OneLine, "{}", info.message());
    if let Some(l) = info.location() {
        let _ = write!(OneLine, " at {}:{}", l.file(), l.line());
    }
    serial::print_forced(format_args!("\n"));
    let mut frames = [0u64; 32];
    let n = trap::backtrace_from(trap::current_rbp(), &mut frames);
    serial::print_forced(format_args!("@@ backtrace"));
    for f in &frames[..n] {
        serial::print_forced(format_args!(" {f:#x}"));
    }
    serial::print_forced(format_args!("\n"));
    exit::exit_qemu(false)
}

fn x86_64_intr_off() {
    core::mem::forget(<arch::X86_64 as machine::Machine>::intr_disable());
}

/// Fault hook: a CPU exception in the kernel is a panic that names it.
pub fn fault(frame: &TrapFrame) -> ! {
    let cr2 = if frame.vector == 14 { x86_64_cr2() } else { 0 };
    panic!(
        "CPU exception {} ({}) at rip={:#x} error={:#x} cr2={:#x} rsp={:#x}",
        frame.vector,
        trap::exception_name(frame.vector),
        frame.rip,
        frame.error,
        cr2,
        frame.rsp
    )
}

fn x86_64_cr2() -> u64 {
    arch::cpu::fault_address()
}

/// The STOP IPI: a panicking CPU wants everyone else quiet.
pub fn stop_handler(_f: &mut TrapFrame, _io: &machine::IntrOff) {
    exit::halt_forever();
}
