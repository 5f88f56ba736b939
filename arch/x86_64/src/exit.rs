//! Leaving QEMU through `isa-debug-exit` (iobase 0xf4): QEMU exits with `(value << 1) | 1`.

use x86_64::instructions::port::Port;

/// Value written for success: QEMU exits with status 33.
pub const EXIT_SUCCESS: u32 = 0x10;
/// Value written for failure: QEMU exits with status 35.
pub const EXIT_FAILURE: u32 = 0x11;

/// Ends the run. If the exit device is missing, halts this CPU forever.
pub fn exit_qemu(success: bool) -> ! {
    // What the console still has queued goes out first.
    crate::serial::flush();
    // SAFETY: port 0xf4 is the isa-debug-exit device the host tool always attaches; on a
    // machine without it the write is ignored and we halt below.
    unsafe { Port::<u32>::new(0xf4).write(if success { EXIT_SUCCESS } else { EXIT_FAILURE }) };
    halt_forever()
}

/// Disables interrupts and halts this CPU for good.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
