//! PCI on bus 0: configuration space through ports 0xCF8/0xCFC (configuration mechanism #1;
//! the only place that touches them), enumeration, BAR sizing and assignment, the command
//! register, and MSI.
//!
//! The first [`scan`] enumerates bus 0 once, sizes every BAR of every header-type-0 function
//! (memory decoding is turned off in the function's command register while its BARs are
//! sized) and gives each 32-bit-reachable memory BAR that firmware left at 0 an address in
//! [`BAR_WINDOW`], naturally aligned and clear of every BAR firmware already assigned. qboot
//! assigns nothing; SeaBIOS assigns everything, in which case nothing moves. Later scans
//! return the same list. Memory decoding and bus mastering stay off until a driver calls
//! [`PciFunction::enable`] (or [`PciFunction::bar_mmio`], which does).

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU8, Ordering};

use x86_64::instructions::port::Port;

use crate::sync::IrqSpinLock;

/// Where unassigned memory BARs are placed: inside the identity-mapped, uncached 3–4 GiB
/// range, below the IOAPIC (0xFEC00000).
pub const BAR_WINDOW: (u64, u64) = (0xE000_0000, 0xFEC0_0000);

const CONFIG_ADDRESS: u16 = 0xCF8;
const CONFIG_DATA: u16 = 0xCFC;

/// Command register bits.
const CMD_IO: u16 = 1 << 0;
const CMD_MEMORY: u16 = 1 << 1;
const CMD_BUS_MASTER: u16 = 1 << 2;
const CMD_INTX_DISABLE: u16 = 1 << 10;
/// Status register: the function has a capability list.
const STATUS_CAP_LIST: u16 = 1 << 4;
/// Vendor and device id of QEMU's PIIX3 ISA bridge (`pc` machine).
const PIIX3_ID: u32 = 0x7000_8086;
/// Capability id of MSI.
const CAP_MSI: u8 = 0x05;
/// Capability id of MSI-X.
const CAP_MSIX: u8 = 0x11;

/// Serializes the two-step address/data access of configuration mechanism #1.
static CONFIG: IrqSpinLock<()> = IrqSpinLock::new(());

/// A function's location on the bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bdf {
    /// Bus.
    pub bus: u8,
    /// Device (0..32).
    pub dev: u8,
    /// Function (0..8).
    pub func: u8,
}

impl core::fmt::Display for Bdf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.dev, self.func)
    }
}

impl Bdf {
    fn address(self, offset: u8) -> u32 {
        0x8000_0000
            | (self.bus as u32) << 16
            | (self.dev as u32 & 0x1F) << 11
            | (self.func as u32 & 0x7) << 8
            | (offset as u32 & 0xFC)
    }

    /// Reads the configuration dword at `offset` (rounded down to a multiple of 4).
    pub fn read32(self, offset: u8) -> u32 {
        let _g = CONFIG.lock();
        let mut addr: Port<u32> = Port::new(CONFIG_ADDRESS);
        let mut data: Port<u32> = Port::new(CONFIG_DATA);
        // SAFETY: 0xCF8/0xCFC are the PCI configuration ports of the PC platform and nothing
        // else in the kernel uses them; the lock keeps the address/data pair together.
        unsafe {
            addr.write(self.address(offset));
            data.read()
        }
    }

    /// Writes the configuration dword at `offset` (rounded down to a multiple of 4). Crate-only:
    /// a BAR or command write elsewhere could make a device decode over RAM or DMA at will.
    pub(crate) fn write32(self, offset: u8, value: u32) {
        let _g = CONFIG.lock();
        let mut addr: Port<u32> = Port::new(CONFIG_ADDRESS);
        let mut data: Port<u32> = Port::new(CONFIG_DATA);
        // SAFETY: as in `read32`. Only this module writes configuration space (BARs inside
        // `BAR_WINDOW`, the command register, MSI aimed at the LAPIC).
        unsafe {
            addr.write(self.address(offset));
            data.write(value);
        }
    }

    /// Reads the configuration word at `offset` (even).
    pub fn read16(self, offset: u8) -> u16 {
        (self.read32(offset) >> ((offset & 2) * 8)) as u16
    }

    /// Reads the configuration byte at `offset`.
    pub fn read8(self, offset: u8) -> u8 {
        (self.read32(offset) >> ((offset & 3) * 8)) as u8
    }

    /// Writes the configuration word at `offset` (even) by read-modify-write of its dword.
    /// The other half of the dword must not hold write-1-to-clear bits (callers use this only
    /// for the command register, whose neighbour is the status register — see
    /// [`Bdf::write_command`] — and for MSI fields).
    fn write16_rmw(self, offset: u8, value: u16) {
        let shift = (offset & 2) * 8;
        let old = self.read32(offset);
        let new = (old & !(0xFFFF << shift)) | (value as u32) << shift;
        self.write32(offset, new);
    }

    /// The command register.
    pub fn command(self) -> u16 {
        self.read16(0x04)
    }

    /// Writes the command register; the status half (write-1-to-clear bits) is written as 0.
    pub fn write_command(self, value: u16) {
        self.write32(0x04, value as u32);
    }
}

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// Memory space, 32-bit address.
    Mem32,
    /// Memory space, 64-bit address (takes two BAR slots).
    Mem64,
    /// I/O space.
    Io,
}

/// One BAR, as found (and possibly assigned) by [`scan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// Index of the (first) BAR register, 0..6.
    pub index: u8,
    /// Kind.
    pub kind: BarKind,
    /// Base address (0: unassigned — an I/O BAR, or no room).
    pub base: u64,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// Prefetchable memory.
    pub prefetchable: bool,
    /// Whether this module assigned the address (firmware left it at 0).
    pub assigned_here: bool,
}

/// A function on bus 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciFunction {
    /// Location.
    pub bdf: Bdf,
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Class code, subclass, programming interface.
    pub class: (u8, u8, u8),
    /// Header type (without the multi-function bit).
    pub header_type: u8,
    /// The BARs of a header-type-0 function that decode something (empty for others).
    pub bars: Vec<Bar>,
}

/// A bounds-checked window of memory-mapped device registers.
#[derive(Clone, Debug)]
pub struct Mmio {
    base: usize,
    len: usize,
}

impl Mmio {
    /// The window's physical (= virtual) base address.
    pub fn base(&self) -> usize {
        self.base
    }

    /// The window's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, offset: usize) {
        assert!(
            offset.is_multiple_of(4) && offset.checked_add(4).is_some_and(|end| end <= self.len),
            "MMIO access at {offset:#x} outside the {:#x}-byte window at {:#x} (or unaligned)",
            self.len,
            self.base
        );
    }

    /// Volatile 32-bit read of the register at `offset` (panics outside the window).
    pub fn read32(&self, offset: usize) -> u32 {
        self.check(offset);
        // SAFETY: `Mmio`s are made only from a memory BAR of a PCI function that lies in the
        // identity-mapped, uncached low 4 GiB (`bar_mmio`); `offset` is inside it and aligned.
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u32) }
    }

    /// Volatile 32-bit write of the register at `offset` (panics outside the window).
    pub fn write32(&self, offset: usize, value: u32) {
        self.check(offset);
        // SAFETY: as in `read32`; device registers are not Rust memory.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u32, value) }
    }

    fn check_n(&self, offset: usize, n: usize) {
        assert!(
            offset.is_multiple_of(n) && offset.checked_add(n).is_some_and(|end| end <= self.len),
            "MMIO access of {n} bytes at {offset:#x} outside the {:#x}-byte window at {:#x} (or unaligned)",
            self.len,
            self.base
        );
    }

    /// Volatile 8-bit read of the register at `offset` (panics outside the window).
    pub fn read8(&self, offset: usize) -> u8 {
        self.check_n(offset, 1);
        // SAFETY: as in `read32`.
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u8) }
    }

    /// Volatile 16-bit read of the register at `offset` (even; panics outside the window).
    pub fn read16(&self, offset: usize) -> u16 {
        self.check_n(offset, 2);
        // SAFETY: as in `read32`; `offset` is 2-aligned.
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u16) }
    }

    /// Volatile 8-bit write of the register at `offset` (panics outside the window).
    pub fn write8(&self, offset: usize, value: u8) {
        self.check_n(offset, 1);
        // SAFETY: as in `write32`.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u8, value) }
    }

    /// Volatile 16-bit write of the register at `offset` (even; panics outside the window).
    pub fn write16(&self, offset: usize, value: u16) {
        self.check_n(offset, 2);
        // SAFETY: as in `write32`; `offset` is 2-aligned.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u16, value) }
    }

    /// The part of this window from `offset`, `len` bytes long (`None` if it does not fit).
    pub fn sub(&self, offset: usize, len: usize) -> Option<Mmio> {
        (offset.checked_add(len)? <= self.len).then(|| Mmio { base: self.base + offset, len })
    }
}

impl PciFunction {
    /// The BAR whose register index is `i`.
    pub fn bar(&self, i: u8) -> Option<&Bar> {
        self.bars.iter().find(|b| b.index == i)
    }

    /// Turns on memory decoding and bus mastering in the command register.
    pub fn enable(&self) {
        let cmd = self.bdf.command();
        if cmd & (CMD_MEMORY | CMD_BUS_MASTER) != CMD_MEMORY | CMD_BUS_MASTER {
            self.bdf.write_command(cmd | CMD_MEMORY | CMD_BUS_MASTER);
        }
    }

    /// The registers behind memory BAR `i`, if it is assigned and below 4 GiB (the identity
    /// map); enables memory decoding and bus mastering.
    pub fn bar_mmio(&self, i: u8) -> Option<Mmio> {
        let b = self.bar(i)?;
        if b.kind == BarKind::Io || b.base == 0 || b.base.checked_add(b.size)? > 1 << 32 {
            return None;
        }
        self.enable();
        Some(Mmio { base: b.base as usize, len: b.size as usize })
    }

    /// Offset of the capability `id` in configuration space.
    pub fn find_capability(&self, id: u8) -> Option<u8> {
        if self.bdf.read16(0x06) & STATUS_CAP_LIST == 0 {
            return None;
        }
        let mut ptr = self.bdf.read8(0x34) & 0xFC;
        // At most 48 capabilities fit in the 192 bytes after the header: a bound on a looping
        // list.
        for _ in 0..48 {
            if ptr < 0x40 {
                return None;
            }
            let head = self.bdf.read16(ptr);
            if head as u8 == id {
                return Some(ptr);
            }
            ptr = (head >> 8) as u8 & 0xFC;
        }
        None
    }

    /// Programs and enables MSI: one message, to the LAPIC `lapic_id` (physical destination),
    /// fixed delivery, edge-triggered, `vector`. Also disables INTx and enables memory
    /// decoding and bus mastering (MSI is a memory write by the device).
    pub fn enable_msi(&self, lapic_id: u32, vector: u8) -> Result<(), &'static str> {
        if lapic_id > 0xFF {
            return Err("MSI: destination LAPIC id does not fit xAPIC's 8 bits");
        }
        if vector < 32 {
            return Err("MSI: vector below 32");
        }
        let cap = self.find_capability(CAP_MSI).ok_or("MSI: the function has no MSI capability")?;
        let ctrl_off = cap + 2;
        let ctrl = self.bdf.read16(ctrl_off);
        let is64 = ctrl & (1 << 7) != 0;
        // Off while reprogramming; MME = 0 (one message).
        let off = ctrl & !(1 | 0x70);
        self.bdf.write16_rmw(ctrl_off, off);
        let address = 0xFEE0_0000u32 | lapic_id << 12;
        let data = vector as u16; // fixed delivery (000), edge (bit 15 = 0)
        self.bdf.write32(cap + 4, address);
        if is64 {
            self.bdf.write32(cap + 8, 0);
            self.bdf.write16_rmw(cap + 12, data);
        } else {
            self.bdf.write16_rmw(cap + 8, data);
        }
        self.enable();
        let cmd = self.bdf.command();
        self.bdf.write_command(cmd | CMD_INTX_DISABLE);
        self.bdf.write16_rmw(ctrl_off, off | 1);
        if self.bdf.read16(ctrl_off) & 1 == 0 {
            return Err("MSI: the enable bit did not stick");
        }
        Ok(())
    }

    /// Every capability in the list: (id, offset in configuration space).
    pub fn capabilities(&self) -> Vec<(u8, u8)> {
        let mut out = Vec::new();
        if self.bdf.read16(0x06) & STATUS_CAP_LIST == 0 {
            return out;
        }
        let mut ptr = self.bdf.read8(0x34) & 0xFC;
        for _ in 0..48 {
            if ptr < 0x40 {
                break;
            }
            let head = self.bdf.read16(ptr);
            out.push((head as u8, ptr));
            ptr = (head >> 8) as u8 & 0xFC;
        }
        out
    }

    /// Number of MSI-X table entries, if the function has MSI-X.
    pub fn msix_table_size(&self) -> Option<u16> {
        let cap = self.find_capability(CAP_MSIX)?;
        Some((self.bdf.read16(cap + 2) & 0x7FF) + 1)
    }

    /// Programs and enables MSI-X: table entry `i` sends `vectors[i]` to the LAPIC
    /// `lapic_ids[i]` (fixed delivery, edge, physical destination) and is unmasked; entries
    /// past `vectors.len()` are masked. Disables MSI and INTx; enables memory decoding and bus
    /// mastering.
    pub fn enable_msix(&self, lapic_ids: &[u32], vectors: &[u8]) -> Result<(), &'static str> {
        if lapic_ids.len() != vectors.len() {
            return Err("MSI-X: one destination per vector");
        }
        if lapic_ids.iter().any(|&l| l > 0xFF) {
            return Err("MSI-X: destination LAPIC id does not fit xAPIC's 8 bits");
        }
        if vectors.iter().any(|&v| v < 32) {
            return Err("MSI-X: vector below 32");
        }
        let cap = self.find_capability(CAP_MSIX).ok_or("MSI-X: the function has no MSI-X capability")?;
        let ctrl = self.bdf.read16(cap + 2);
        let n = (ctrl & 0x7FF) as usize + 1;
        if vectors.len() > n {
            return Err("MSI-X: more vectors than table entries");
        }
        let table = self.bdf.read32(cap + 4);
        let (bir, off) = ((table & 7) as u8, (table & !7) as usize);
        let bar = self.bar_mmio(bir).ok_or("MSI-X: the table's BAR is not mapped")?;
        let tab = bar.sub(off, n * 16).ok_or("MSI-X: the table does not fit its BAR")?;
        self.disable_msi();
        // Enabled with the function masked while the table is written.
        self.bdf.write16_rmw(cap + 2, (ctrl & !(1 << 14)) | 1 << 15 | 1 << 14);
        for e in 0..n {
            tab.write32(e * 16 + 12, 1); // masked
        }
        for (e, (&lapic, &vector)) in lapic_ids.iter().zip(vectors).enumerate() {
            tab.write32(e * 16, 0xFEE0_0000 | lapic << 12);
            tab.write32(e * 16 + 4, 0);
            tab.write32(e * 16 + 8, vector as u32); // fixed delivery, edge
            tab.write32(e * 16 + 12, 0); // unmasked
        }
        let cmd = self.bdf.command();
        self.bdf.write_command(cmd | CMD_INTX_DISABLE | CMD_MEMORY | CMD_BUS_MASTER);
        self.bdf.write16_rmw(cap + 2, (ctrl & !(1 << 14)) | 1 << 15);
        if self.bdf.read16(cap + 2) & (1 << 15) == 0 {
            return Err("MSI-X: the enable bit did not stick");
        }
        Ok(())
    }

    /// Sets (`true`) or clears MSI-X's function mask: while set, the function sends no
    /// message and keeps what it would send pending; clearing it sends the pending ones.
    pub fn set_msix_function_mask(&self, masked: bool) {
        if let Some(cap) = self.find_capability(CAP_MSIX) {
            let ctrl = self.bdf.read16(cap + 2);
            let new = if masked { ctrl | 1 << 14 } else { ctrl & !(1 << 14) };
            self.bdf.write16_rmw(cap + 2, new);
        }
    }

    /// MSI-X table entry `entry`'s vector control, to mask that one vector in the device
    /// (PCI 3.0 §6.8.2.9: while masked the function sends no message for it and sets its
    /// pending bit; unmasking sends the pending message).
    pub fn msix_vector(&self, entry: u16) -> Result<MsixVector, &'static str> {
        let cap = self.find_capability(CAP_MSIX).ok_or("MSI-X: the function has no MSI-X capability")?;
        let n = (self.bdf.read16(cap + 2) & 0x7FF) as usize + 1;
        if entry as usize >= n {
            return Err("MSI-X: no such table entry");
        }
        let table = self.bdf.read32(cap + 4);
        let (bir, off) = ((table & 7) as u8, (table & !7) as usize);
        let bar = self.bar_mmio(bir).ok_or("MSI-X: the table's BAR is not mapped")?;
        let regs = bar.sub(off + entry as usize * 16, 16).ok_or("MSI-X: the table does not fit its BAR")?;
        // The pending-bit array: one bit per entry, in 64-bit words.
        let pba = self.bdf.read32(cap + 8);
        let (pbir, poff) = ((pba & 7) as u8, (pba & !7) as usize);
        let pbar = self.bar_mmio(pbir).ok_or("MSI-X: the pending-bit array's BAR is not mapped")?;
        let word = poff + (entry as usize / 32) * 4;
        let pending = pbar.sub(word, 4).ok_or("MSI-X: the pending-bit array does not fit its BAR")?;
        Ok(MsixVector { regs, pending, entry })
    }

    /// MSI's per-vector mask bit for the function's one message, if its MSI capability has
    /// per-vector masking (Message Control bit 8; QEMU's `edu` has none).
    pub fn msi_vector_mask(&self) -> Option<MsiVectorMask> {
        let cap = self.find_capability(CAP_MSI)?;
        let ctrl = self.bdf.read16(cap + 2);
        if ctrl & (1 << 8) == 0 {
            return None;
        }
        // The mask bits follow the data register: 0x0C (32-bit address), 0x10 (64-bit).
        let mask_off = if ctrl & (1 << 7) != 0 { cap + 0x10 } else { cap + 0x0C };
        Some(MsiVectorMask { bdf: self.bdf, mask_off })
    }

    /// Turns MSI-X off.
    pub fn disable_msix(&self) {
        if let Some(cap) = self.find_capability(CAP_MSIX) {
            let ctrl = self.bdf.read16(cap + 2);
            self.bdf.write16_rmw(cap + 2, ctrl & !(1 << 15));
        }
    }

    /// The interrupt-line register (0x3C): the legacy IRQ firmware routed INTx to (0xFF:
    /// none), and the interrupt-pin register (0x3D: 0 none, 1..=4 INTA..INTD).
    pub fn interrupt_line_pin(&self) -> (u8, u8) {
        (self.bdf.read8(0x3C), self.bdf.read8(0x3D))
    }

    /// The legacy (ISA) IRQ the function's INTx pin is wired to, or `None` if it has no pin
    /// or no route. On QEMU's `pc` machine (PIIX3 at 00:01.0) this comes from the chipset's
    /// PIRQ route control registers (0x60..0x63) with the board's swizzle (PIRQ = (pin - 1 +
    /// slot - 1) mod 4), because qboot writes an interrupt-line register that disagrees with
    /// the routing (10 where the line is wired to IRQ 11); elsewhere it is the interrupt-line
    /// register.
    pub fn intx_irq(&self) -> Option<u8> {
        let (line, pin) = self.interrupt_line_pin();
        if pin == 0 || pin > 4 {
            return None;
        }
        let isa = Bdf { bus: 0, dev: 1, func: 0 };
        if self.bdf.bus == 0 && self.bdf.dev > 0 && isa.read32(0x00) == PIIX3_ID {
            let pirq = (pin as u32 - 1 + self.bdf.dev as u32 - 1) & 3;
            let route = isa.read8(0x60 + pirq as u8);
            return (route & 0x80 == 0 && route < 16).then_some(route & 0x0F);
        }
        (line != 0xFF && line < 16).then_some(line)
    }

    /// Enables (`true`) or disables INTx in the command register.
    pub fn set_intx_enabled(&self, enabled: bool) {
        let cmd = self.bdf.command();
        let new = if enabled { cmd & !CMD_INTX_DISABLE } else { cmd | CMD_INTX_DISABLE };
        if new != cmd {
            self.bdf.write_command(new);
        }
    }

    /// Turns MSI off (the device falls back to INTx, which stays disabled if MSI enabled it).
    pub fn disable_msi(&self) {
        if let Some(cap) = self.find_capability(CAP_MSI) {
            let ctrl = self.bdf.read16(cap + 2);
            self.bdf.write16_rmw(cap + 2, ctrl & !1);
        }
    }

    /// The MSI (address, data) currently programmed, and whether MSI is enabled.
    pub fn msi_state(&self) -> Option<(u64, u16, bool)> {
        let cap = self.find_capability(CAP_MSI)?;
        let ctrl = self.bdf.read16(cap + 2);
        let lo = self.bdf.read32(cap + 4) as u64;
        let (addr, data) = if ctrl & (1 << 7) != 0 {
            (lo | (self.bdf.read32(cap + 8) as u64) << 32, self.bdf.read16(cap + 12))
        } else {
            (lo, self.bdf.read16(cap + 8))
        };
        Some((addr, data, ctrl & 1 != 0))
    }
}

/// One MSI-X table entry's vector control word ([`PciFunction::msix_vector`]).
#[derive(Clone, Debug)]
pub struct MsixVector {
    regs: Mmio,
    /// The 32-bit word of the pending-bit array that holds this entry's bit.
    pending: Mmio,
    entry: u16,
}

impl MsixVector {
    /// Sets or clears the entry's mask bit (vector control bit 0), and reads it back so that
    /// the write has reached the device before this returns (a posted MMIO write could
    /// otherwise still be on its way when the caller relies on the mask).
    pub fn set_masked(&self, masked: bool) {
        let v = self.regs.read32(12);
        self.regs.write32(12, if masked { v | 1 } else { v & !1 });
        let _ = self.regs.read32(12);
    }

    /// Whether the entry's mask bit is set.
    pub fn is_masked(&self) -> bool {
        self.regs.read32(12) & 1 != 0
    }

    /// Whether the device holds a message for this entry (its pending bit: set while the
    /// entry is masked and the device has something to send).
    pub fn is_pending(&self) -> bool {
        self.pending.read32(0) & (1 << (self.entry % 32)) != 0
    }

    /// The table entry's index.
    pub fn entry(&self) -> u16 {
        self.entry
    }
}

/// MSI's per-vector mask bit of a function's single message ([`PciFunction::msi_vector_mask`]).
#[derive(Clone, Copy, Debug)]
pub struct MsiVectorMask {
    bdf: Bdf,
    mask_off: u8,
}

impl MsiVectorMask {
    /// Sets or clears the mask bit of message 0 (while set, the function sends nothing and
    /// keeps the message pending).
    pub fn set_masked(&self, masked: bool) {
        let v = self.bdf.read32(self.mask_off);
        self.bdf.write32(self.mask_off, if masked { v | 1 } else { v & !1 });
    }

    /// Whether message 0 is masked.
    pub fn is_masked(&self) -> bool {
        self.bdf.read32(self.mask_off) & 1 != 0
    }
}

/// 0: not scanned; 1: a CPU is scanning; 2: [`FUNCTIONS`] is filled.
static STATE: AtomicU8 = AtomicU8::new(0);
static FUNCTIONS: IrqSpinLock<Vec<PciFunction>> = IrqSpinLock::new(Vec::new());

/// The functions on bus 0 (enumerated, and unassigned memory BARs assigned, on the first
/// call; see the module doc).
pub fn scan() -> Vec<PciFunction> {
    loop {
        match STATE.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                let found = enumerate_and_assign();
                *FUNCTIONS.lock() = found;
                STATE.store(2, Ordering::Release);
            }
            Err(2) => return FUNCTIONS.lock().clone(),
            Err(_) => core::hint::spin_loop(),
        }
    }
}

/// The first function with this vendor and device id.
pub fn find(vendor: u16, device: u16) -> Option<PciFunction> {
    scan().into_iter().find(|f| f.vendor == vendor && f.device == device)
}

fn probe_function(bdf: Bdf) -> Option<PciFunction> {
    let id = bdf.read32(0x00);
    let vendor = id as u16;
    if vendor == 0xFFFF {
        return None;
    }
    let class = bdf.read32(0x08);
    let header_type = bdf.read8(0x0E) & 0x7F;
    let bars = if header_type == 0 { size_bars(bdf) } else { Vec::new() };
    Some(PciFunction {
        bdf,
        vendor,
        device: (id >> 16) as u16,
        class: ((class >> 24) as u8, (class >> 16) as u8, (class >> 8) as u8),
        header_type,
        bars,
    })
}

/// Sizes the six BARs of a header-type-0 function. While one BAR holds all-ones, the
/// function's decoding of that BAR's space is off (only if it was on), so it never claims
/// addresses at the top of the space; nothing else of the command register changes.
fn size_bars(bdf: Bdf) -> Vec<Bar> {
    let cmd = bdf.command();
    let probe = |off: u8, io: bool| -> u32 {
        let bit = if io { CMD_IO } else { CMD_MEMORY };
        let orig = bdf.read32(off);
        if cmd & bit != 0 {
            bdf.write_command(cmd & !bit);
        }
        bdf.write32(off, 0xFFFF_FFFF);
        let mask = bdf.read32(off);
        bdf.write32(off, orig);
        if cmd & bit != 0 {
            bdf.write_command(cmd);
        }
        mask
    };
    let mut bars = Vec::new();
    let mut i = 0u8;
    while i < 6 {
        let off = 0x10 + 4 * i;
        let orig = bdf.read32(off);
        if orig & 1 == 1 {
            let m = probe(off, true) & !0x3;
            if m != 0 {
                bars.push(Bar {
                    index: i,
                    kind: BarKind::Io,
                    base: (orig & !0x3) as u64,
                    size: (!(m | 0xFFFF_0000) as u64) + 1,
                    prefetchable: false,
                    assigned_here: false,
                });
            }
            i += 1;
            continue;
        }
        let is64 = (orig >> 1) & 0x3 == 0x2 && i < 5;
        let mask = probe(off, false) & !0xF;
        let mut base = (orig & !0xF) as u64;
        let mut full_mask = mask as u64 | 0xFFFF_FFFF_0000_0000;
        if is64 {
            let orig_hi = bdf.read32(off + 4);
            let mask_hi = probe(off + 4, false);
            base |= (orig_hi as u64) << 32;
            full_mask = mask as u64 | (mask_hi as u64) << 32;
        }
        if mask != 0 {
            bars.push(Bar {
                index: i,
                kind: if is64 { BarKind::Mem64 } else { BarKind::Mem32 },
                base,
                size: (!full_mask).wrapping_add(1),
                prefetchable: orig & 0x8 != 0,
                assigned_here: false,
            });
        }
        i += if is64 { 2 } else { 1 };
    }
    bars
}

fn overlaps(a: u64, a_size: u64, b: u64, b_size: u64) -> bool {
    a < b.saturating_add(b_size) && b < a.saturating_add(a_size)
}

fn enumerate_and_assign() -> Vec<PciFunction> {
    let mut funcs = Vec::new();
    for dev in 0..32u8 {
        let Some(f0) = probe_function(Bdf { bus: 0, dev, func: 0 }) else { continue };
        let multi = Bdf { bus: 0, dev, func: 0 }.read8(0x0E) & 0x80 != 0;
        funcs.push(f0);
        if multi {
            for func in 1..8u8 {
                if let Some(f) = probe_function(Bdf { bus: 0, dev, func }) {
                    funcs.push(f);
                }
            }
        }
    }
    // Memory ranges already decoded by firmware-assigned BARs.
    let mut taken: Vec<(u64, u64)> = funcs
        .iter()
        .flat_map(|f| f.bars.iter())
        .filter(|b| b.kind != BarKind::Io && b.base != 0)
        .map(|b| (b.base, b.size))
        .collect();
    // Assign the unassigned memory BARs, largest first (less alignment waste).
    let mut todo: Vec<(usize, usize)> = Vec::new();
    for (fi, f) in funcs.iter().enumerate() {
        for (bi, b) in f.bars.iter().enumerate() {
            if b.kind != BarKind::Io && b.base == 0 && b.size != 0 && b.size <= 1 << 31 {
                todo.push((fi, bi));
            }
        }
    }
    todo.sort_by_key(|&(fi, bi)| core::cmp::Reverse(funcs[fi].bars[bi].size));
    for (fi, bi) in todo {
        let size = funcs[fi].bars[bi].size;
        let mut at = BAR_WINDOW.0.next_multiple_of(size);
        let place = loop {
            if at + size > BAR_WINDOW.1 {
                break None;
            }
            match taken.iter().find(|&&(b, s)| overlaps(at, size, b, s)) {
                Some(&(b, s)) => at = (b + s).next_multiple_of(size),
                None => break Some(at),
            }
        };
        let Some(at) = place else { continue };
        let f = &mut funcs[fi];
        let bar = &mut f.bars[bi];
        let off = 0x10 + 4 * bar.index;
        let low_flags = f.bdf.read32(off) & 0xF;
        f.bdf.write32(off, at as u32 | low_flags);
        if bar.kind == BarKind::Mem64 {
            f.bdf.write32(off + 4, 0);
        }
        bar.base = at;
        bar.assigned_here = true;
        taken.push((at, size));
    }
    funcs
}
