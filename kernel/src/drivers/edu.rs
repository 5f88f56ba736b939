//! QEMU's `edu` teaching device (`-device edu`, PCI 1234:11e8): its identification and
//! interrupt registers, and MSI — a real, device-raised interrupt source for tests.
//!
//! Registers (BAR0, 1 MiB, 32-bit accesses; QEMU `docs/specs/edu.rst`): 0x00 identification
//! `0xRRrr00ed` (major, minor, 0xed); 0x04 liveness (reads back the complement of what was
//! written); 0x24 interrupt status; 0x60 interrupt raise (ORs the value into the status and
//! raises the interrupt — with MSI enabled, one message per write); 0x64 interrupt
//! acknowledge (clears the written bits).

use arch::pci::{self, Mmio, PciFunction};

/// PCI vendor id.
pub const VENDOR: u16 = 0x1234;
/// PCI device id.
pub const DEVICE: u16 = 0x11e8;

const REG_ID: usize = 0x00;
const REG_LIVENESS: usize = 0x04;
const REG_INTR_STATUS: usize = 0x24;
const REG_INTR_RAISE: usize = 0x60;
const REG_INTR_ACK: usize = 0x64;

/// One `edu` device (cheap to clone: every clone drives the same registers).
#[derive(Clone)]
pub struct Edu {
    func: PciFunction,
    regs: Mmio,
}

impl Edu {
    /// The first `edu` device on bus 0 with its BAR0 mapped and memory decoding on, or `None`
    /// if there is none (or BAR0 could not be assigned).
    pub fn probe() -> Option<Edu> {
        let func = pci::find(VENDOR, DEVICE)?;
        let regs = func.bar_mmio(0)?;
        Some(Edu { func, regs })
    }

    /// The PCI function.
    pub fn function(&self) -> &PciFunction {
        &self.func
    }

    /// The register window (BAR0).
    pub fn regs(&self) -> &Mmio {
        &self.regs
    }

    /// The identification register: `0xRRrr00ed`.
    pub fn id(&self) -> u32 {
        self.regs.read32(REG_ID)
    }

    /// (major, minor) version from the identification register.
    pub fn version(&self) -> (u8, u8) {
        let id = self.id();
        ((id >> 24) as u8, (id >> 16) as u8)
    }

    /// Writes `v` to the liveness register and returns what it reads back (`!v` if alive).
    pub fn liveness(&self, v: u32) -> u32 {
        self.regs.write32(REG_LIVENESS, v);
        self.regs.read32(REG_LIVENESS)
    }

    /// Raises an interrupt with `bits` ORed into the status.
    pub fn raise(&self, bits: u32) {
        self.regs.write32(REG_INTR_RAISE, bits);
    }

    /// The interrupt status register.
    pub fn status(&self) -> u32 {
        self.regs.read32(REG_INTR_STATUS)
    }

    /// Acknowledges (clears) `bits` of the interrupt status.
    pub fn ack(&self, bits: u32) {
        self.regs.write32(REG_INTR_ACK, bits);
    }

    /// A filter's claim: reads the interrupt status and acknowledges what is set (which also
    /// deasserts the INTx line). False when nothing was set: the interrupt was not this device's.
    pub fn claim(&self) -> bool {
        let st = self.status();
        if st != 0 {
            self.ack(st);
        }
        st != 0
    }

    /// Sends the device's interrupts as MSI to CPU `cpu` (an index), on `vector`.
    pub fn enable_msi(&self, cpu: usize, vector: u8) -> Result<(), &'static str> {
        if cpu >= arch::cpu::ncpus() {
            return Err("edu: no such CPU");
        }
        self.func.enable_msi(arch::cpu::lapic_id_of(cpu), vector)
    }

    /// Turns MSI off again.
    pub fn disable_msi(&self) {
        self.func.disable_msi();
    }

    /// The GSI (IOAPIC input) of the device's INTx line: its legacy IRQ
    /// ([`PciFunction::intx_irq`]: the chipset's PIRQ routing, or the PCI interrupt-line
    /// register) after the ACPI interrupt source overrides. `None` if no line is routed.
    pub fn intx_line(&self) -> Option<u32> {
        self.func.intx_irq().map(|irq| arch::ioapic::gsi_of_irq(irq).0)
    }

    /// Routes the INTx line to CPU `cpu` (an index) on `vector`: level-triggered,
    /// active-high (the PCI INTx wiring of QEMU's `pc` machine), **masked** (establishing the
    /// source with [`crate::intr::IoApicLine`] unmasks it). Turns MSI off and INTx on.
    /// Returns the GSI.
    pub fn program_intx(&self, cpu: usize, vector: u8) -> Result<u32, &'static str> {
        if cpu >= arch::cpu::ncpus() {
            return Err("edu: no such CPU");
        }
        let gsi = self.intx_line().ok_or("edu: no INTx line routed")?;
        let dest = u8::try_from(arch::cpu::lapic_id_of(cpu)).map_err(|_| "edu: LAPIC id above 255")?;
        self.func.disable_msi();
        arch::ioapic::program(
            gsi,
            arch::ioapic::Redirection {
                vector,
                dest_lapic: dest,
                trigger: arch::ioapic::Trigger::Level,
                polarity: arch::ioapic::Polarity::High,
                masked: true,
            },
        )?;
        self.func.set_intx_enabled(true);
        Ok(gsi)
    }

    /// Turns INTx off in the command register (the GSI stays as programmed).
    pub fn disable_intx(&self) {
        self.func.set_intx_enabled(false);
    }

    /// The MSI (address, data, enabled) now programmed.
    pub fn msi_state(&self) -> Option<(u64, u16, bool)> {
        self.func.msi_state()
    }
}
