//! The 16550 serial ports as interrupt-driven devices: COM1 (the console) receives and
//! transmits through its interrupt, split like NetBSD's com(4) — the hardware part in a
//! filter, line processing in a soft interrupt — and COM2 is a fault-injection device whose
//! transmit-empty interrupt can be left enabled with nothing to send (the storm test).
//!
//! ## COM1
//! - **Routing:** ISA IRQ 4 → its GSI (ACPI overrides applied; active-high), programmed
//!   level-triggered (see [`start`]), vector [`COM1_VECTOR`], to CPU 0, established through the framework as `com1` at
//!   `IPL_HIGH` (serial hardware sits above `IPL_VM`, as NetBSD's `IPL_SERIAL`), so it runs
//!   its filter directly in every model and has no thread handler.
//! - **Filter (primary context, interrupts off):** `arch::serial::service` empties the UART's
//!   receive FIFO into the receive ring (at most the ring's free space, and at most
//!   [`RX_BUDGET`] bytes or [`RX_TIME_BUDGET_NS`] of guest time a call, after which it stops
//!   receiving as for a full ring) and refills the
//!   transmit FIFO from the console's transmit ring. If it received anything it schedules the
//!   `com1.soft` soft interrupt (`IPL_SOFTSERIAL`). If the ring is full it turns the UART's
//!   received-data interrupt off: the UART's own FIFO then fills and QEMU stops feeding it,
//!   so no byte is ever dropped (flow control); the soft interrupt turns it back on once it
//!   has drained the ring.
//! - **Soft interrupt (thread context, may block):** drains the ring through the line
//!   discipline (`parse::line::LineDiscipline`, portable and fuzzed on the host): `\r` or
//!   `\n` ends a line (a `\n` right after `\r` is one end), backspace and DEL erase, other
//!   control characters are kept, bytes that are not UTF-8 become `\xNN`; a line longer
//!   than [`MAX_LINE`] is discarded up to its end and delivered as its length only (counted). Complete lines go to a bounded queue read by [`read_line`]
//!   (blocking). With echo on (the shell) typed characters are echoed.
//! - Transmit is interrupt-driven once [`start`] has run (see `arch::serial`).
//!
//! ## COM2 (storm fault)
//! [`Com2Fault`] programs ISA IRQ 3's IOAPIC input **level-triggered**, active-high — the
//! way a PCI INTx line is wired — and establishes `com2` with a filter that, while the fault
//! is on, claims the interrupt without reading the UART's interrupt identification: the
//! transmit-empty condition is never acknowledged, the line stays asserted, and the IOAPIC
//! re-delivers it after every EOI — a real interrupt storm from a real device. Turning the
//! fault off disables the transmit-empty interrupt (the cause is removed) and the line
//! drops.

use alloc::collections::VecDeque;
use alloc::string::String;

use crate::drivers::DriverError;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ::parse::line::{Echo, Input, LineDiscipline};
use intr::{FilterResult, IntrFlags, IntrHandle, Model, SourceSpec};
use ipl::Ipl;

use crate::intr::{IoApicLine, INTR};
use crate::locks::{CondVar, KernelEnv, Mutex};

/// COM1's vector.
pub const COM1_VECTOR: u8 = 0x40;
/// COM2's vector (the storm fault).
pub const COM2_VECTOR: u8 = 0x44;
/// Longest line the discipline keeps; a longer one is discarded up to its end.
pub const MAX_LINE: usize = ::parse::line::MAX_LINE;
/// Receive ring size.
const RX_RING: usize = 4096;
/// Bytes one filter call takes from the UART at most (Linux's 8250 driver takes 256 per
/// interrupt). Past it the filter turns the receive interrupt off, as for a full ring, and the
/// soft interrupt turns it back on once it has drained the ring (NAPI's shape: the interrupt
/// hands a busy receiver to a lower level that threads above it can preempt). Without the
/// bound, a host typing as fast as the filter read (QEMU refills the FIFO at once) kept the
/// filter in its loop, interrupts off, until the ring was full — up to 278 ms of CPU 0 under
/// 8-CPU torture; with the bound alone, the level-triggered line brought the filter back at
/// once after every EOI and CPU 0 ran no thread for over 100 ms
/// (docs/logs/torture-pinned-churn-lost-paths-2026-12-06.txt).
pub const RX_BUDGET: usize = 256;
/// Guest time one filter call spends receiving at most (checked every [`RX_CHUNK`] bytes); past it, as past [`RX_BUDGET`], the receive interrupt goes off until the
/// soft interrupt has drained the ring. On real hardware 256 bytes take about half a
/// millisecond of port reads; under TCG each byte read costs the CPU a round of QEMU's vCPU
/// loop (about 150 µs of guest time with 8 vCPUs), and without a time bound one filter call
/// kept interrupts off for milliseconds (docs/logs/torture-com1-paste-cpu0-2026-12-06.txt).
pub const RX_TIME_BUDGET_NS: u64 = 200_000;
/// Bytes taken from the UART per `service` call, between two looks at the clock.
const RX_CHUNK: usize = 4;
/// Lines kept unread before the oldest is dropped (and counted).
const MAX_QUEUED_LINES: usize = 16 * 1024;

/// Receive ring between the filter and the soft interrupt.
struct RxRing {
    buf: [u8; RX_RING],
    head: usize,
    len: usize,
}

impl RxRing {
    fn free(&self) -> usize {
        RX_RING - self.len
    }
}

static RX: Mutex<RxRing> =
    Mutex::new_spin("com1.rx", Ipl::High, RxRing { buf: [0; RX_RING], head: 0, len: 0 });

/// The line discipline's state (soft interrupt side): `parse::line::LineDiscipline` and the
/// queue of delivered lines (`parse::line::Input::into_string`: an overlong line is queued as
/// its length, see [`read_line`]).
struct LineDisc {
    disc: LineDiscipline,
    lines: VecDeque<String>,
}

static LINES: Mutex<LineDisc> =
    Mutex::new_adaptive("com1.lines", LineDisc { disc: LineDiscipline::new(), lines: VecDeque::new() });
static LINE_READY: CondVar = CondVar::new("com1.line");

static RX_STOPPED: AtomicBool = AtomicBool::new(false);
static ECHO: AtomicBool = AtomicBool::new(false);
static STARTED: AtomicBool = AtomicBool::new(false);

/// COM1 receive counters.
pub struct ComStats {
    /// Filter runs.
    pub interrupts: AtomicU64,
    /// Bytes taken from the UART.
    pub rx_bytes: AtomicU64,
    /// Complete lines queued.
    pub lines: AtomicU64,
    /// Lines longer than [`MAX_LINE`], discarded.
    pub long_lines: AtomicU64,
    /// Lines dropped because nobody read them.
    pub lines_dropped: AtomicU64,
    /// Times the receive interrupt was turned off because the ring was full.
    pub flow_stops: AtomicU64,
    /// Times the receive interrupt was turned off after [`RX_BUDGET`] bytes or
    /// [`RX_TIME_BUDGET_NS`] in one filter call.
    pub budget_stops: AtomicU64,
    /// The most bytes one filter call took (never above [`RX_BUDGET`]).
    pub max_rx_per_call: AtomicU64,
    /// The longest time one filter call spent receiving, guest ns ([`RX_TIME_BUDGET_NS`]
    /// plus at most [`RX_CHUNK`] bytes' reads).
    pub max_rx_ns: AtomicU64,
}

/// COM1's counters.
pub static STATS: ComStats = ComStats {
    interrupts: AtomicU64::new(0),
    rx_bytes: AtomicU64::new(0),
    lines: AtomicU64::new(0),
    long_lines: AtomicU64::new(0),
    lines_dropped: AtomicU64::new(0),
    flow_stops: AtomicU64::new(0),
    budget_stops: AtomicU64::new(0),
    max_rx_per_call: AtomicU64::new(0),
    max_rx_ns: AtomicU64::new(0),
};

/// What is kept alive while COM1 runs interrupt-driven.
struct Com1 {
    _source: IntrHandle<KernelEnv>,
    soft: intr::softint::SoftHandle<KernelEnv>,
}

static COM1: spin_once::Once<Com1> = spin_once::Once::new();

/// A small once-cell readable from a filter (the kernel has no `unsafe`; this is a spin
/// mutex at `IPL_HIGH` around a leaked reference).
mod spin_once {
    use crate::locks::Mutex;
    use alloc::boxed::Box;
    use ipl::Ipl;

    pub struct Once<T: 'static> {
        slot: Mutex<Option<&'static T>>,
    }

    impl<T: Send + Sync + 'static> Once<T> {
        pub const fn new() -> Self {
            Once { slot: Mutex::new_spin("com.once", Ipl::High, None) }
        }
        pub fn get(&self) -> Option<&'static T> {
            *self.slot.lock()
        }
        pub fn set(&self, v: T) -> &'static T {
            let mut g = self.slot.lock();
            if let Some(old) = *g {
                return old;
            }
            let r: &'static T = Box::leak(Box::new(v));
            *g = Some(r);
            r
        }
    }
}

/// Decodes an ACPI MADT interrupt-source-override flags word (MPS INTI flags) into
/// (level-triggered, active-low), with the ISA defaults (edge, active-high) for "conforms".
pub fn inti_flags(flags: Option<u16>) -> (bool, bool) {
    let f = flags.unwrap_or(0);
    let low = f & 3 == 3;
    let level = (f >> 2) & 3 == 3;
    (level, low)
}

/// Programs the IOAPIC input of ISA `irq` to `vector` on CPU `cpu`, masked, with the
/// override's trigger and polarity unless `force_level`. Returns the line.
fn route_isa(
    device: &'static str,
    irq: u8,
    vector: u8,
    cpu: usize,
    force_level: bool,
) -> Result<&'static IoApicLine, DriverError> {
    let route = |why: String| DriverError::Route { device, irq, why };
    let (gsi, flags) = arch::ioapic::gsi_of_irq(irq);
    let (level, low) = inti_flags(flags);
    let level = level || force_level;
    let dest = u8::try_from(arch::cpu::lapic_id_of(cpu))
        .map_err(|_| route(alloc::format!("CPU {cpu}'s LAPIC id is above 255")))?;
    arch::ioapic::program(
        gsi,
        arch::ioapic::Redirection {
            vector,
            dest_lapic: dest,
            trigger: if level { arch::ioapic::Trigger::Level } else { arch::ioapic::Trigger::Edge },
            polarity: if low { arch::ioapic::Polarity::Low } else { arch::ioapic::Polarity::High },
            masked: true,
        },
    )
    .map_err(|e| route(alloc::format!("GSI {gsi}: {e}")))?;
    IoApicLine::new(gsi, level).map_err(|e| route(alloc::format!("{e}")))
}

/// COM1's filter: receive into the ring, refill the transmitter.
fn com1_filter() -> FilterResult {
    STATS.interrupts.fetch_add(1, Ordering::Relaxed);
    let mut got = 0usize;
    let mut ours = false;
    let mut full = false;
    let mut over_time = false;
    let t0 = arch::apic::now_ns();
    {
        let mut ring = RX.lock();
        loop {
            let free = ring.free().min(RX_BUDGET - got);
            let mut chunk = [0u8; RX_CHUNK];
            let mut n = 0;
            let s = arch::serial::service(free.min(chunk.len()), &mut |b| {
                chunk[n] = b;
                n += 1;
            });
            ours |= s.ours;
            for &b in &chunk[..n] {
                let at = (ring.head + ring.len) % RX_RING;
                ring.buf[at] = b;
                ring.len += 1;
            }
            got += n;
            if ring.free() == 0 {
                full = true;
                break;
            }
            if n < chunk.len() || got >= RX_BUDGET {
                break;
            }
            if arch::apic::now_ns() - t0 >= RX_TIME_BUDGET_NS {
                over_time = true;
                break;
            }
        }
    }
    STATS.max_rx_ns.fetch_max(arch::apic::now_ns() - t0, Ordering::Relaxed);
    if (full || over_time || got >= RX_BUDGET) && !RX_STOPPED.swap(true, Ordering::AcqRel) {
        if full {
            STATS.flow_stops.fetch_add(1, Ordering::Relaxed);
        } else {
            STATS.budget_stops.fetch_add(1, Ordering::Relaxed);
        }
        arch::serial::set_rx_interrupts(false);
    }
    if got > 0 {
        STATS.rx_bytes.fetch_add(got as u64, Ordering::Relaxed);
        STATS.max_rx_per_call.fetch_max(got as u64, Ordering::Relaxed);
        if let Some(c) = COM1.get() {
            c.soft.softint().schedule();
        }
    }
    if ours {
        FilterResult::Handled
    } else {
        FilterResult::Stray
    }
}

/// The soft interrupt: ring → line discipline → line queue.
fn com1_soft() {
    loop {
        let mut chunk = [0u8; 256];
        let n = {
            let mut ring = RX.lock();
            let n = ring.len.min(chunk.len());
            for slot in chunk.iter_mut().take(n) {
                *slot = ring.buf[ring.head];
                ring.head = (ring.head + 1) % RX_RING;
                ring.len -= 1;
            }
            n
        };
        if n == 0 {
            break;
        }
        discipline(&chunk[..n]);
    }
    if RX_STOPPED.swap(false, Ordering::AcqRel) {
        arch::serial::set_rx_interrupts(true);
    }
}

fn discipline(bytes: &[u8]) {
    let echo = ECHO.load(Ordering::Relaxed);
    let mut woke = false;
    let mut ld = LINES.lock();
    for &b in bytes {
        let (shown, input) = ld.disc.feed(b);
        if echo {
            match shown {
                Echo::None => {}
                Echo::Char(c) => arch::kprint!("{}", c as char),
                Echo::Newline => arch::kprint!("\n"),
                Echo::Erase => arch::kprint!("\x08 \x08"),
            }
        }
        let Some(input) = input else { continue };
        if matches!(input, Input::Overlong(_)) {
            STATS.long_lines.fetch_add(1, Ordering::Relaxed);
        }
        if ld.lines.len() >= MAX_QUEUED_LINES {
            ld.lines.pop_front();
            STATS.lines_dropped.fetch_add(1, Ordering::Relaxed);
        }
        ld.lines.push_back(input.into_string());
        STATS.lines.fetch_add(1, Ordering::Relaxed);
        woke = true;
    }
    drop(ld);
    if woke {
        LINE_READY.broadcast();
    }
}

/// Makes COM1 interrupt-driven (receive and transmit). Idempotent. Call from a thread.
pub fn start() -> Result<(), DriverError> {
    if STARTED.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    // Level-triggered, although ISA IRQ 4 is an edge line on a real PC: the UART holds its
    // interrupt output high while any condition is pending, and a condition that arises while
    // the filter runs (a byte arriving after the receive loop, the transmitter emptying)
    // would then never make a new edge — the receive path stalls for good. A real driver
    // loops on the interrupt identification until nothing is pending (com(4)); with the
    // IOAPIC input level-triggered the line simply fires again after the EOI.
    let line = route_isa("com1", arch::serial::COM1_IRQ, COM1_VECTOR, 0, true)?;
    let soft = INTR
        .softint_establish("com1.soft", Ipl::SoftSerial, com1_soft)
        .ok_or(DriverError::NotSoftLevel { device: "com1", ipl: Ipl::SoftSerial })?;
    let source = INTR
        .establish_line(
            SourceSpec {
                name: "com1".into(),
                vector: COM1_VECTOR,
                ipl: Ipl::High,
                flags: IntrFlags::MPSAFE | IntrFlags::EXCLUSIVE,
                model: Some(Model::Direct),
                thread_priority: None,
            },
            line,
            Some(alloc::boxed::Box::new(|_| com1_filter())),
            None,
        )
        .map_err(|error| DriverError::Establish { device: "com1", error })?;
    let com1 = COM1.set(Com1 { _source: source, soft });
    // What the UART held before `arch::serial::init` (the first bytes typed, delivered by
    // QEMU as the machine started) goes first, ahead of anything the filter reads.
    let mut early = [0u8; 64];
    let n = arch::serial::take_early_rx(&mut early);
    if n > 0 {
        let mut ring = RX.lock();
        for &b in &early[..n] {
            let at = (ring.head + ring.len) % RX_RING;
            ring.buf[at] = b;
            ring.len += 1;
        }
        drop(ring);
        STATS.rx_bytes.fetch_add(n as u64, Ordering::Relaxed);
        com1.soft.softint().schedule();
    }
    arch::serial::enable_tx_interrupts();
    arch::serial::enable_rx_interrupts();
    Ok(())
}

/// Whether COM1 runs interrupt-driven.
pub fn started() -> bool {
    COM1.get().is_some()
}

/// Echo typed characters (the interactive shell) or not.
pub fn set_echo(on: bool) {
    ECHO.store(on, Ordering::Relaxed);
}

/// Blocks until a complete line has been received, and returns it (without its end;
/// bytes that are not UTF-8 as `\xNN`). A line longer than [`MAX_LINE`] comes back as `\n`
/// and its length (`parse::line::Input::from_string` tells them apart).
pub fn read_line() -> String {
    let mut g = LINES.lock();
    loop {
        if let Some(l) = g.lines.pop_front() {
            return l;
        }
        LINE_READY.wait(&mut g);
    }
}

/// Like [`read_line`], giving up after `timeout_ns`.
pub fn read_line_timeout(timeout_ns: u64) -> Option<String> {
    let deadline = arch::apic::now_ns().saturating_add(timeout_ns);
    let mut g = LINES.lock();
    loop {
        if let Some(l) = g.lines.pop_front() {
            return Some(l);
        }
        if arch::apic::now_ns() >= deadline {
            return None;
        }
        LINE_READY.wait_deadline(&mut g, deadline);
    }
}

/// The line of the serial paste format with sequence number `seq` (docs/PROTOCOL.md,
/// "Serial input"): `S <seq, 8 digits> <52 payload characters>`, 64 bytes with its `\n`;
/// payload character `i` is `"abcdefghijklmnopqrstuvwxyz0123456789"[(seq·31 + i·7) mod 36]`.
pub fn paste_line(seq: u64) -> String {
    const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut s = alloc::format!("S {:08} ", seq % 100_000_000);
    for i in 0..52u64 {
        s.push(ALPHABET[((seq.wrapping_mul(31) + i * 7) % 36) as usize] as char);
    }
    s
}

/// Checks one received paste line against the expected sequence number.
pub fn check_paste_line(line: &str, seq: u64) -> bool {
    line == paste_line(seq)
}

/// COM2's storm fault (see the module doc).
pub struct Com2Fault {
    _source: IntrHandle<KernelEnv>,
    cpu: usize,
}

static COM2_STUCK: AtomicBool = AtomicBool::new(false);
/// Interrupts COM2's filter saw.
pub static COM2_INTERRUPTS: AtomicU64 = AtomicU64::new(0);
/// COM2 filter runs while the storm rule held the source throttled, beyond the arrival that
/// throttled it (whose filter still runs, `intr::Intr::arrive`): must stay 0 — nothing runs
/// for a throttled source before the storm thread lifts the throttle (torture checks it).
pub static COM2_RUNS_THROTTLED: AtomicU64 = AtomicU64::new(0);
/// The throttle (its `throttled_at`) whose first filter run has been seen.
static COM2_THROTTLE_SEEN: AtomicU64 = AtomicU64::new(0);
static COM2: spin_once::Once<Com2Fault> = spin_once::Once::new();

impl Com2Fault {
    /// Establishes `com2` (once) on CPU `cpu` with its line level-triggered.
    pub fn establish(cpu: usize) -> Result<&'static Com2Fault, DriverError> {
        if let Some(c) = COM2.get() {
            return Ok(c);
        }
        if !arch::serial::COM2.init() {
            return Err(DriverError::NoUart { device: "com2", port: 0x2f8 });
        }
        let line = route_isa("com2", arch::serial::COM2_IRQ, COM2_VECTOR, cpu, true)?;
        let source = INTR
            .establish_line(
                SourceSpec {
                    name: "com2".into(),
                    vector: COM2_VECTOR,
                    ipl: Ipl::High,
                    flags: IntrFlags::MPSAFE | IntrFlags::EXCLUSIVE,
                    model: Some(Model::Direct),
                    thread_priority: None,
                },
                line,
                Some(alloc::boxed::Box::new(|ctx| {
                    COM2_INTERRUPTS.fetch_add(1, Ordering::Relaxed);
                    if let Some(c) = COM2.get() {
                        let st = c.storm();
                        if st.throttled.load(Ordering::Acquire) {
                            let at = st.throttled_at.load(Ordering::Relaxed);
                            if COM2_THROTTLE_SEEN.swap(at, Ordering::Relaxed) == at {
                                COM2_RUNS_THROTTLED.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    if COM2_STUCK.load(Ordering::Relaxed) {
                        // The fault: claim the interrupt without reading the interrupt
                        // identification, so the THRE condition is never acknowledged; the
                        // driver has nothing to send, and says it did no work.
                        ctx.no_work();
                        return FilterResult::Handled;
                    }
                    if arch::serial::COM2.acknowledge() {
                        FilterResult::Handled
                    } else {
                        FilterResult::Stray
                    }
                })),
                None,
            )
            .map_err(|error| DriverError::Establish { device: "com2", error })?;
        Ok(COM2.set(Com2Fault { _source: source, cpu }))
    }

    /// The CPU the line is routed to.
    pub fn cpu(&self) -> usize {
        self.cpu
    }

    /// The source's storm state (throttled, storming, storms counted).
    pub fn storm(&self) -> &intr::storm::StormState {
        &self._source.source().storm
    }

    /// Whether the fault is on.
    pub fn stuck(&self) -> bool {
        COM2_STUCK.load(Ordering::SeqCst)
    }

    /// Turns the fault on (transmit-empty interrupt enabled, never acknowledged) or off
    /// (interrupt disabled: the cause is gone).
    pub fn set_stuck(&self, on: bool) {
        COM2_STUCK.store(on, Ordering::SeqCst);
        arch::serial::COM2.set_thr_empty_interrupt(on);
        if !on {
            arch::serial::COM2.acknowledge();
        }
    }
}

/// The drivers' tunables: `dev.com2.thre_stuck` (the storm fault, on the last CPU) and
/// `dev.com1.*` counters (read-only).
pub fn register_sysctls() {
    use alloc::boxed::Box;
    use alloc::string::ToString;
    let stuck = crate::shell::register_sysctl(
        "dev.com2.thre_stuck",
        "COM2's transmit-empty interrupt left enabled and never acknowledged (a storm)",
        Box::new(|| if COM2_STUCK.load(Ordering::SeqCst) { "on" } else { "off" }.to_string()),
        Some(Box::new(|v: &str| {
            let on = match v {
                "on" | "1" => true,
                "off" | "0" => false,
                _ => return Err("expected on or off".to_string()),
            };
            let fault = Com2Fault::establish(arch::cpu::ncpus() - 1)?;
            fault.set_stuck(on);
            Ok(())
        })),
    );
    let counters = [
        ("dev.com1.rx_bytes", "bytes COM1 received", &STATS.rx_bytes),
        ("dev.com1.lines", "lines COM1's discipline completed", &STATS.lines),
        ("dev.com1.flow_stops", "receive stops on a full ring", &STATS.flow_stops),
        ("dev.com1.budget_stops", "receive stops after a filter call's budget", &STATS.budget_stops),
        ("dev.com1.lines_dropped", "lines dropped unread", &STATS.lines_dropped),
        ("dev.com1.max_rx_ns", "longest receive in one filter call, ns", &STATS.max_rx_ns),
    ];
    for (name, desc, c) in counters {
        let r = crate::shell::register_sysctl(
            name,
            desc,
            Box::new(move || c.load(Ordering::Relaxed).to_string()),
            None,
        );
        if let Err(e) = r {
            panic!("sysctl {name}: {e}");
        }
    }
    if let Err(e) = stuck {
        panic!("sysctl dev.com2.thre_stuck: {e}");
    }
}
