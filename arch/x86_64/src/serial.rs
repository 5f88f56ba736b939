//! The PC's 16550 UARTs: COM1 (I/O port 0x3F8, ISA IRQ 4) is the console every serial line
//! goes through; COM2 (0x2F8, IRQ 3) is a second port the kernel uses as a device (the storm
//! test's stuck transmit-empty interrupt). The `uart_16550` crate drives the registers.
//!
//! ## Console transmit: polled until interrupts are up, then interrupt-driven
//! Writers take [`CONSOLE`] (an interrupt-safe spin lock) and write whole lines under one
//! hold, so lines from different CPUs never interleave. Until the kernel's COM1 driver calls
//! [`enable_tx_interrupts`] every byte is sent by polling (boot messages, early panics).
//! After it:
//! - a writer appends to a 64 KiB transmit ring and *starts* the transmitter — it loads at
//!   most one FIFO (16 bytes) from the ring, and only if the transmitter is idle: it never
//!   waits for the UART (com(4)'s `comstart`);
//! - the UART's transmit-holding-register-empty interrupt (`IER.THRI`, enabled only while the
//!   ring holds bytes) lands in the kernel's COM1 filter, which calls [`service`]: it loads
//!   the next FIFO, and clears `IER.THRI` once the ring is empty;
//! - a writer that finds the ring full drains it by polling (back-pressure, nothing lost);
//! - the clock tick calls [`tick_kick`]: if the ring holds bytes but the transmitter has been
//!   idle a whole tick (the CPU that takes COM1 interrupts is stuck with interrupts off), it
//!   restarts it, so a hang report still shows the last lines;
//! - [`flush`] (before QEMU exits) and [`print_forced`] (panics) drain the ring by polling.
//!
//! ## Console receive
//! [`enable_rx_interrupts`] turns on the received-data and line-status interrupts; the
//! kernel's filter calls [`service`], which hands every received byte to its callback *under
//! the console lock* (the callback must not print). [`set_rx_interrupts`] lets the driver
//! stop the receive interrupt while its buffer is full: the UART's FIFO then fills and QEMU
//! stops feeding it (flow control, no byte lost), until the driver turns it back on.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

use uart_16550::backend::{Backend, PioBackend};
use uart_16550::spec::registers::{IER, LSR};
use uart_16550::{Config, Uart16550};

use crate::sync::IrqSpinLock;

/// Size of the console transmit ring.
pub const TX_RING: usize = 64 * 1024;
/// The 16550's FIFO depth.
const FIFO: usize = 16;
/// I/O base of COM1.
pub const COM1_PORT: u16 = 0x3F8;
/// ISA IRQ of COM1.
pub const COM1_IRQ: u8 = 4;
/// I/O base of COM2.
pub const COM2_PORT: u16 = 0x2F8;
/// ISA IRQ of COM2.
pub const COM2_IRQ: u8 = 3;

struct TxRing {
    buf: [u8; TX_RING],
    head: usize, // next byte to send
    len: usize,
}

impl TxRing {
    fn push(&mut self, b: u8) -> bool {
        if self.len == TX_RING {
            return false;
        }
        self.buf[(self.head + self.len) % TX_RING] = b;
        self.len += 1;
        true
    }

    fn pop(&mut self) -> Option<u8> {
        if self.len == 0 {
            return None;
        }
        let b = self.buf[self.head];
        self.head = (self.head + 1) % TX_RING;
        self.len -= 1;
        Some(b)
    }
}

struct Console {
    uart: Option<Uart16550<PioBackend>>,
    tx: TxRing,
    /// Interrupt-driven transmit is on.
    irq_tx: bool,
    /// A FIFO load is in flight: the THRE interrupt will come.
    tx_busy: bool,
    /// Ticks seen with bytes queued and no progress (for `tick_kick`).
    stalled_ticks: u32,
    /// Bytes sent since the last tick.
    sent_since_tick: u64,
    counters: ConsoleCounters,
}

/// What the console has done (for `intrstat`-style reports and tests).
#[derive(Clone, Copy, Debug, Default)]
pub struct ConsoleCounters {
    /// Bytes sent from the transmit ring by the interrupt path.
    pub tx_irq_bytes: u64,
    /// FIFO loads started by a writer (the transmitter was idle).
    pub tx_starts: u64,
    /// Bytes sent by polling (before interrupts, ring full, flush, panic).
    pub tx_polled_bytes: u64,
    /// Times a writer found the ring full and drained it by polling.
    pub tx_ring_full: u64,
    /// Restarts by the clock tick (the interrupt did not come).
    pub tx_tick_kicks: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Receiver overruns the UART reported (a byte lost in the UART itself).
    pub rx_overruns: u64,
}

impl Console {
    fn uart(&mut self) -> Option<&mut Uart16550<PioBackend>> {
        self.uart.as_mut()
    }

    /// Sends one byte by polling.
    fn poll_byte(&mut self, b: u8) {
        if let Some(u) = self.uart.as_mut() {
            u.send_bytes_exact(&[b]);
            self.counters.tx_polled_bytes += 1;
        }
    }

    /// Drains the ring by polling.
    fn drain_polled(&mut self) {
        while let Some(b) = self.tx.pop() {
            self.poll_byte(b);
        }
        self.tx_busy = false;
        self.set_thri(false);
    }

    fn set_thri(&mut self, on: bool) {
        if let Some(u) = self.uart() {
            if on {
                u.enable_interrupts(IER::THR_EMPTY);
            } else {
                u.disable_interrupts(IER::THR_EMPTY);
            }
        }
    }

    /// Loads one FIFO from the ring if the transmitter holding register is empty. Returns
    /// the bytes loaded.
    fn load_fifo(&mut self) -> usize {
        let Some(u) = self.uart.as_mut() else { return 0 };
        if !u.lsr().contains(LSR::THR_EMPTY) {
            return 0;
        }
        let mut chunk = [0u8; FIFO];
        let mut n = 0;
        while n < FIFO {
            match self.tx.pop() {
                Some(b) => {
                    chunk[n] = b;
                    n += 1;
                }
                None => break,
            }
        }
        let mut sent = 0;
        while sent < n {
            let k = u.send_bytes(&chunk[sent..n]);
            if k == 0 {
                // Cannot happen after THR_EMPTY with the FIFO on; do not lose the bytes.
                u.send_bytes_exact(&chunk[sent..n]);
                break;
            }
            sent += k;
        }
        self.sent_since_tick += n as u64;
        n
    }

    /// Starts the transmitter if it is idle (a writer's path: never waits).
    fn start(&mut self) {
        if self.tx_busy || self.tx.len == 0 {
            return;
        }
        if self.load_fifo() > 0 {
            self.tx_busy = true;
            self.counters.tx_starts += 1;
            // The interrupt comes when the FIFO has gone out.
            self.set_thri(true);
        }
    }

    fn put(&mut self, b: u8) {
        if !self.irq_tx {
            self.poll_byte(b);
            return;
        }
        if !self.tx.push(b) {
            self.counters.tx_ring_full += 1;
            self.drain_polled();
            self.tx.push(b);
        }
    }
}

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.uart.is_none() {
            return Ok(());
        }
        for b in s.bytes() {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
        if self.irq_tx {
            self.start();
        }
        Ok(())
    }
}

static CONSOLE: IrqSpinLock<Console> = IrqSpinLock::new(Console {
    uart: None,
    tx: TxRing { buf: [0; TX_RING], head: 0, len: 0 },
    irq_tx: false,
    tx_busy: false,
    stalled_ticks: 0,
    sent_since_tick: 0,
    counters: ConsoleCounters {
        tx_irq_bytes: 0,
        tx_starts: 0,
        tx_polled_bytes: 0,
        tx_ring_full: 0,
        tx_tick_kicks: 0,
        rx_bytes: 0,
        rx_overruns: 0,
    },
});

/// Set while the ring may hold bytes (read by `tick_kick` without the lock).
static TX_PENDING: AtomicBool = AtomicBool::new(false);

/// Bytes COM1 had received before [`init`] enabled its FIFOs: on QEMU the operator's input
/// arrives from the moment the machine starts, and the first byte sits in the receive buffer
/// (no FIFO yet). The `uart_16550` crate's `init` resets the receive FIFO and discards such
/// "stale" data, as Linux does; [`init`] programs the UART itself instead and keeps them. The
/// kernel's COM1 driver takes them ([`take_early_rx`]) and runs them through its line
/// discipline before any later byte.
static EARLY_RX: IrqSpinLock<([u8; 2 * FIFO], usize)> = IrqSpinLock::new(([0; 2 * FIFO], 0));

// 16550 register offsets and bits used by `init`.
const REG_DATA: u8 = 0;
const REG_IER: u8 = 1;
const REG_FCR: u8 = 2;
const REG_LCR: u8 = 3;
const REG_MCR: u8 = 4;
const REG_LSR: u8 = 5;
const LCR_DLAB: u8 = 0x80;
const LCR_8N1: u8 = 0x03;
const MCR_DTR_RTS_OUT2: u8 = 0x0B;
const MCR_LOOP: u8 = 0x10;
/// FIFOs on, transmit FIFO reset, receive trigger level 14 — no receive FIFO reset.
const FCR_ON_KEEP_RX: u8 = 0xC5;
const LSR_DATA_READY: u8 = 0x01;
/// The divisor of `Config::default()` (9600 baud from the 1.8432 MHz clock; QEMU ignores it).
const DIVISOR: u16 = 12;

/// Programs COM1 as the `uart_16550` crate's `init` with `Config::default()` would (8N1,
/// FIFOs on with trigger level 14, DTR/RTS/OUT2, interrupts off; the `Uart16550` value
/// assumes that configuration), but keeps the bytes already received in [`EARLY_RX`]:
/// everything that does not touch the receiver is done while QEMU holds off (it delivers a
/// byte only when the receive buffer is empty), then the buffer is read and the FIFOs
/// enabled at once. Enabling the FIFOs flushes QEMU's receiver, so a byte delivered between
/// that read and that write would be lost; the read is done in loopback mode, where QEMU does
/// not go back to its input for the next byte when the buffer is read (`serial_ioport_read`:
/// "in loopback mode, don't receive any data"), which leaves only the rare main-loop wake-up
/// that falls into that one-access window.
fn init_keeping_input(u: &mut Uart16550<PioBackend>) -> bool {
    if !u.check_present() {
        return false;
    }
    let mut early = EARLY_RX.lock();
    let b = u.backend_mut();
    // SAFETY: `b` is COM1's port backend (0x3F8..0x3FF), driven only by this module; the
    // writes are the standard 16550 set-up sequence and the reads side-effect free except for
    // the receive buffer, whose bytes we keep.
    unsafe {
        b.write(REG_LCR, 0);
        b.write(REG_IER, 0);
        b.write(REG_LCR, LCR_DLAB);
        b.write(REG_DATA, (DIVISOR & 0xff) as u8);
        b.write(REG_IER, (DIVISOR >> 8) as u8);
        b.write(REG_LCR, LCR_8N1);
        b.write(REG_MCR, MCR_DTR_RTS_OUT2 | MCR_LOOP);
        while early.1 < early.0.len() && b.read(REG_LSR) & LSR_DATA_READY != 0 {
            let n = early.1;
            early.0[n] = b.read(REG_DATA);
            early.1 += 1;
        }
        b.write(REG_FCR, FCR_ON_KEEP_RX);
        b.write(REG_MCR, MCR_DTR_RTS_OUT2);
    }
    true
}

/// Initializes COM1 (FIFOs on, interrupts off), keeping what it had already received
/// ([`take_early_rx`]). Called once by the BSP before anything is printed.
pub fn init() {
    // SAFETY: 0x3F8 is COM1 on the PC platform QEMU emulates; only this module drives it.
    let uart = unsafe { Uart16550::new_port(COM1_PORT) };
    if let Ok(mut u) = uart {
        if init_keeping_input(&mut u) {
            CONSOLE.lock().uart = Some(u);
        }
    }
}

/// Moves the bytes COM1 held before [`init`] into `out` (once; later calls get none) and
/// returns how many.
pub fn take_early_rx(out: &mut [u8]) -> usize {
    let mut early = EARLY_RX.lock();
    let n = early.1.min(out.len());
    out[..n].copy_from_slice(&early.0[..n]);
    early.1 = 0;
    n
}

/// Writes formatted text (no newline added).
pub fn print(args: fmt::Arguments<'_>) {
    let mut c = CONSOLE.lock();
    let _ = c.write_fmt(args);
    TX_PENDING.store(c.tx.len != 0, Ordering::Relaxed);
}

/// Writes formatted text even if another CPU holds the console (panic path), by polling,
/// after draining what was queued.
pub fn print_forced(args: fmt::Arguments<'_>) {
    let mut c = CONSOLE.lock_or_steal(10_000_000);
    c.drain_polled();
    let irq = core::mem::replace(&mut c.irq_tx, false);
    let _ = c.write_fmt(args);
    c.irq_tx = irq;
    TX_PENDING.store(false, Ordering::Relaxed);
}

/// Sends everything queued, by polling (before QEMU exits).
pub fn flush() {
    let mut c = CONSOLE.lock_or_steal(10_000_000);
    c.drain_polled();
    TX_PENDING.store(false, Ordering::Relaxed);
}

/// Switches the console to interrupt-driven transmit (the kernel's COM1 filter must be
/// established first: it calls [`service`]).
pub fn enable_tx_interrupts() {
    CONSOLE.lock().irq_tx = true;
}

/// Turns the received-data and line-status interrupts on (COM1).
pub fn enable_rx_interrupts() {
    set_rx_interrupts(true);
    let mut c = CONSOLE.lock();
    if let Some(u) = c.uart() {
        u.enable_interrupts(IER::RECEIVER_LINE_STATUS);
    }
}

/// Turns the received-data interrupt on or off (flow control: while it is off the UART's
/// FIFO fills and QEMU stops feeding it).
pub fn set_rx_interrupts(on: bool) {
    let mut c = CONSOLE.lock();
    if let Some(u) = c.uart() {
        if on {
            u.enable_interrupts(IER::DATA_READY);
        } else {
            u.disable_interrupts(IER::DATA_READY);
        }
    }
}

/// What one [`service`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Serviced {
    /// Bytes received (handed to the callback).
    pub rx: usize,
    /// Bytes loaded into the transmit FIFO.
    pub tx: usize,
    /// The UART had an interrupt condition (false: the interrupt was not ours).
    pub ours: bool,
}

/// Services COM1's interrupt conditions: receives while data is ready (at most `rx_max`
/// bytes, each handed to `rx` under the console lock — `rx` must not print), and loads the
/// transmit FIFO from the ring when the transmitter is empty. Called by the kernel's COM1
/// filter, interrupts disabled.
pub fn service(rx_max: usize, rx: &mut dyn FnMut(u8)) -> Serviced {
    let mut c = CONSOLE.lock();
    let mut done = Serviced::default();
    // Receive. Reading the line status also clears a line-status interrupt.
    let mut overruns = 0;
    while let Some(u) = c.uart.as_mut() {
        let lsr = u.lsr();
        if lsr.contains(LSR::OVERRUN_ERROR) {
            overruns += 1;
            done.ours = true;
        }
        if !lsr.contains(LSR::DATA_READY) || done.rx >= rx_max {
            break;
        }
        match u.try_receive_byte() {
            Ok(b) => {
                rx(b);
                done.rx += 1;
                done.ours = true;
            }
            Err(_) => break,
        }
    }
    c.counters.rx_bytes += done.rx as u64;
    c.counters.rx_overruns += overruns;
    // Transmit: whenever the transmitter is empty, the next FIFO load, or, with the ring
    // empty, the transmit interrupt off.
    if c.irq_tx {
        let thr_empty = c.uart().map(|u| u.lsr().contains(LSR::THR_EMPTY)).unwrap_or(false);
        if thr_empty && (c.tx_busy || c.tx.len != 0) {
            done.ours = true;
            let n = c.load_fifo();
            c.counters.tx_irq_bytes += n as u64;
            done.tx = n;
            c.tx_busy = n > 0;
            c.set_thri(n > 0);
        }
    }
    // No read of the interrupt identification here: it would clear a transmit-empty
    // indication raised by the FIFO load above (QEMU's UART sends at once), and that
    // interrupt would be lost. Every condition is cleared by its own action instead: data by
    // reading it, line status by reading the LSR, transmit-empty by the next load or by
    // turning the interrupt off with the ring empty.
    TX_PENDING.store(c.tx.len != 0, Ordering::Relaxed);
    done
}

/// Called on every clock tick: restarts a transmitter whose interrupt has not come for a
/// whole tick while bytes are queued. One relaxed load when nothing is queued.
pub fn tick_kick() {
    if !TX_PENDING.load(Ordering::Relaxed) {
        return;
    }
    let Some(mut c) = CONSOLE.try_lock() else { return };
    if c.tx.len == 0 {
        c.stalled_ticks = 0;
        return;
    }
    if c.sent_since_tick == 0 {
        c.stalled_ticks += 1;
        if c.stalled_ticks >= 2 {
            c.counters.tx_tick_kicks += 1;
            c.tx_busy = false;
            c.start();
            c.stalled_ticks = 0;
        }
    } else {
        c.stalled_ticks = 0;
    }
    c.sent_since_tick = 0;
}

/// The console's counters.
pub fn counters() -> ConsoleCounters {
    CONSOLE.lock().counters
}

/// Bytes queued in the transmit ring.
pub fn tx_queued() -> usize {
    CONSOLE.lock().tx.len
}

/// A second 16550 (COM2) used as a device, not a console: only its interrupt enables and
/// its interrupt identification are reachable, which is what the kernel's COM2 driver needs
/// (the storm test: a transmit-empty interrupt left enabled with nothing to send).
pub struct Com2 {
    uart: IrqSpinLock<Option<Uart16550<PioBackend>>>,
}

/// COM2.
pub static COM2: Com2 = Com2 { uart: IrqSpinLock::new(None) };

impl Com2 {
    /// Initializes COM2 (interrupts off). Returns false if there is no UART at 0x2F8.
    pub fn init(&self) -> bool {
        let mut g = self.uart.lock();
        if g.is_some() {
            return true;
        }
        // SAFETY: 0x2F8 is COM2 on the PC platform; only this type drives it.
        let uart = unsafe { Uart16550::new_port(COM2_PORT) };
        match uart {
            Ok(mut u) => {
                if u.init(Config::default()).is_err() || !u.check_present() {
                    return false;
                }
                *g = Some(u);
                true
            }
            Err(_) => false,
        }
    }

    /// Turns the transmit-holding-register-empty interrupt on or off.
    pub fn set_thr_empty_interrupt(&self, on: bool) {
        if let Some(u) = self.uart.lock().as_mut() {
            if on {
                u.enable_interrupts(IER::THR_EMPTY);
            } else {
                u.disable_interrupts(IER::THR_EMPTY);
            }
        }
    }

    /// Reads the interrupt identification register (acknowledging a THRE condition); true
    /// if an interrupt was pending.
    pub fn acknowledge(&self) -> bool {
        match self.uart.lock().as_mut() {
            Some(u) => u.isr().bits() & 1 == 0,
            None => false,
        }
    }
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
