//! The I/O APICs: redirection entries for global system interrupts (GSIs).
//!
//! Each IOAPIC (from the MADT) has an index register (IOREGSEL, at its MMIO base) and a data
//! window (IOWIN, base + 0x10); register 1 holds the number of redirection entries, and entry
//! `n` is the 64-bit pair of registers `0x10 + 2n` (low) and `0x11 + 2n` (high). The MMIO
//! bases lie in the identity-mapped, uncached 3–4 GiB range. [`init`] records the IOAPICs and
//! interrupt source overrides and masks every pin; drivers then program a GSI with
//! [`program`] and mask or unmask it with [`set_masked`].

use alloc::vec::Vec;

use crate::sync::IrqSpinLock;

const IOREGSEL: usize = 0x00;
const IOWIN: usize = 0x10;
const REG_VERSION: u32 = 0x01;
const REG_REDTBL: u32 = 0x10;

const RTE_MASKED: u32 = 1 << 16;
const RTE_LEVEL: u32 = 1 << 15;
const RTE_ACTIVE_LOW: u32 = 1 << 13;

/// One IOAPIC from the MADT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApicInfo {
    /// IOAPIC id.
    pub id: u8,
    /// MMIO base (physical = virtual).
    pub address: u32,
    /// First GSI it serves.
    pub gsi_base: u32,
}

/// An ACPI interrupt source override: ISA `irq` is GSI `gsi` with MPS `flags`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceOverride {
    /// Bus (0: ISA).
    pub bus: u8,
    /// Bus-relative IRQ.
    pub irq: u8,
    /// The GSI it is wired to.
    pub gsi: u32,
    /// MPS INTI flags (polarity bits 0–1, trigger mode bits 2–3).
    pub flags: u16,
}

/// Trigger mode of a redirection entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Edge-triggered.
    Edge,
    /// Level-triggered.
    Level,
}

/// Polarity of a redirection entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Polarity {
    /// Active high.
    High,
    /// Active low.
    Low,
}

/// A redirection entry (fixed delivery, physical destination).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Redirection {
    /// CPU vector.
    pub vector: u8,
    /// Destination LAPIC id.
    pub dest_lapic: u8,
    /// Trigger mode.
    pub trigger: Trigger,
    /// Polarity.
    pub polarity: Polarity,
    /// Masked.
    pub masked: bool,
}

struct Chip {
    info: IoApicInfo,
    pins: u32,
}

impl Chip {
    fn read(&self, reg: u32) -> u32 {
        let base = self.info.address as usize;
        // SAFETY: `base` is an IOAPIC's MMIO window from the MADT, in the identity-mapped,
        // uncached low 4 GiB; callers hold `CHIPS`, which serializes the IOREGSEL/IOWIN pair.
        unsafe {
            core::ptr::write_volatile((base + IOREGSEL) as *mut u32, reg);
            core::ptr::read_volatile((base + IOWIN) as *const u32)
        }
    }

    fn write(&self, reg: u32, value: u32) {
        let base = self.info.address as usize;
        // SAFETY: as in `read`; device registers are not Rust memory.
        unsafe {
            core::ptr::write_volatile((base + IOREGSEL) as *mut u32, reg);
            core::ptr::write_volatile((base + IOWIN) as *mut u32, value);
        }
    }
}

struct State {
    chips: Vec<Chip>,
    overrides: Vec<SourceOverride>,
}

static CHIPS: IrqSpinLock<State> = IrqSpinLock::new(State { chips: Vec::new(), overrides: Vec::new() });

/// Records the IOAPICs and overrides and masks every pin of every IOAPIC.
pub fn init(ioapics: &[IoApicInfo], overrides: &[SourceOverride]) {
    let mut st = CHIPS.lock();
    st.chips.clear();
    for &info in ioapics {
        let mut chip = Chip { info, pins: 0 };
        chip.pins = ((chip.read(REG_VERSION) >> 16) & 0xFF) + 1;
        for pin in 0..chip.pins {
            chip.write(REG_REDTBL + 2 * pin, RTE_MASKED);
            chip.write(REG_REDTBL + 2 * pin + 1, 0);
        }
        st.chips.push(chip);
    }
    st.overrides = overrides.to_vec();
}

/// The number of IOAPIC pins known (all IOAPICs).
pub fn pin_count() -> u32 {
    CHIPS.lock().chips.iter().map(|c| c.pins).sum()
}

/// The GSI of ISA/legacy `irq` after the interrupt source overrides (identity if none), and
/// the override's flags if one applies.
pub fn gsi_of_irq(irq: u8) -> (u32, Option<u16>) {
    let st = CHIPS.lock();
    match st.overrides.iter().find(|o| o.bus == 0 && o.irq == irq) {
        Some(o) => (o.gsi, Some(o.flags)),
        None => (irq as u32, None),
    }
}

fn with_pin<R>(gsi: u32, f: impl FnOnce(&Chip, u32) -> R) -> Result<R, &'static str> {
    let st = CHIPS.lock();
    let chip = st
        .chips
        .iter()
        .find(|c| gsi >= c.info.gsi_base && gsi < c.info.gsi_base + c.pins)
        .ok_or("ioapic: no IOAPIC serves this GSI")?;
    Ok(f(chip, gsi - chip.info.gsi_base))
}

/// Programs the redirection entry of `gsi`.
pub fn program(gsi: u32, r: Redirection) -> Result<(), &'static str> {
    if r.vector < 32 {
        return Err("ioapic: vector is an exception");
    }
    let mut low = r.vector as u32;
    if r.trigger == Trigger::Level {
        low |= RTE_LEVEL;
    }
    if r.polarity == Polarity::Low {
        low |= RTE_ACTIVE_LOW;
    }
    if r.masked {
        low |= RTE_MASKED;
    }
    with_pin(gsi, |c, pin| {
        // Mask first so no half-written entry ever delivers.
        c.write(REG_REDTBL + 2 * pin, RTE_MASKED);
        c.write(REG_REDTBL + 2 * pin + 1, (r.dest_lapic as u32) << 24);
        c.write(REG_REDTBL + 2 * pin, low);
    })
}

/// Masks (`true`) or unmasks `gsi`.
pub fn set_masked(gsi: u32, masked: bool) -> Result<(), &'static str> {
    with_pin(gsi, |c, pin| {
        let low = c.read(REG_REDTBL + 2 * pin);
        let new = if masked { low | RTE_MASKED } else { low & !RTE_MASKED };
        if new != low {
            c.write(REG_REDTBL + 2 * pin, new);
        }
    })
}

/// The redirection entry of `gsi` now (low, high registers).
pub fn entry(gsi: u32) -> Result<(u32, u32), &'static str> {
    with_pin(gsi, |c, pin| (c.read(REG_REDTBL + 2 * pin), c.read(REG_REDTBL + 2 * pin + 1)))
}

/// Whether `gsi` is masked now.
pub fn is_masked(gsi: u32) -> Result<bool, &'static str> {
    entry(gsi).map(|(low, _)| low & RTE_MASKED != 0)
}
