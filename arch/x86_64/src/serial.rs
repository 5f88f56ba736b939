//! COM1 console (16550 UART at I/O port 0x3F8), polled transmit.
//!
//! Every line the host harness reads goes through here. Writers take [`CONSOLE`] (an
//! interrupt-safe spin lock), so lines from different CPUs never interleave mid-line as long
//! as each line is written under one lock hold (`print_line`).

use core::fmt::{self, Write};

use uart_16550::backend::PioBackend;
use uart_16550::{Config, Uart16550};

use crate::sync::IrqSpinLock;

struct Console {
    uart: Option<Uart16550<PioBackend>>,
}

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(u) = self.uart.as_mut() {
            for b in s.bytes() {
                if b == b'\n' {
                    u.send_bytes_exact(b"\r");
                }
                u.send_bytes_exact(&[b]);
            }
        }
        Ok(())
    }
}

static CONSOLE: IrqSpinLock<Console> = IrqSpinLock::new(Console { uart: None });

/// Initializes COM1 (115200 8N1). Called once by the BSP before anything is printed.
pub fn init() {
    // SAFETY: 0x3F8 is COM1 on the PC platform QEMU emulates; nothing else drives it.
    let uart = unsafe { Uart16550::new_port(0x3F8) };
    if let Ok(mut u) = uart {
        if u.init(Config::default()).is_ok() {
            CONSOLE.lock().uart = Some(u);
        }
    }
}

/// Writes formatted text (no newline added).
pub fn print(args: fmt::Arguments<'_>) {
    let _ = CONSOLE.lock().write_fmt(args);
}

/// Writes formatted text even if another CPU holds the console (panic path).
pub fn print_forced(args: fmt::Arguments<'_>) {
    let _ = CONSOLE.lock_or_steal(10_000_000).write_fmt(args);
}

/// `print!` to COM1.
#[macro_export]
macro_rules! kprint {
    ($($arg:tt)*) => { $crate::serial::print(format_args!($($arg)*)) };
}

/// `println!` to COM1; the line is written under one lock hold.
#[macro_export]
macro_rules! kprintln {
    () => { $crate::serial::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::serial::print(format_args!("{}\n", format_args!($($arg)*))) };
}
