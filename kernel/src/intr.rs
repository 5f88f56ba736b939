//! The kernel's interrupt wiring: the framework instance, the machine-specific steps the
//! portable interrupt path (`intr::path`) asks of the environment (EOI, re-raise, the storm
//! report, the kernel's own vectors), IOAPIC lines as source lines, and the
//! levels of the kernel's own vectors. The path itself — arrive or defer, enter, dispatch,
//! done, exit, replay, the sleep check — is `intr::path`, the same code the host tests run.

use arch::apic;
use arch::trap::{self, TrapFrame};
use ipl::Ipl;
use machine::IntrOff;

use crate::locks::KernelEnv;
use crate::SPL;

/// The interrupt dispatch framework of this kernel.
pub static INTR: intr::Intr<KernelEnv> = intr::Intr::new();

impl intr::IntrEnv for KernelEnv {
    type Frame = TrapFrame;
    fn intr() -> &'static intr::Intr<KernelEnv> {
        &INTR
    }
    fn replay_frame(vector: u8) -> TrapFrame {
        trap::replay_frame(vector)
    }
    fn kernel_vector(vector: u8, frame: &mut TrapFrame, io: &IntrOff) {
        trap::run_handler(vector, frame, io);
    }
    fn retrigger(vector: u8) {
        apic::send_ipi(arch::cpu::lapic_id_of(arch::cpu::index()), vector);
    }
    fn eoi() {
        apic::eoi();
    }
    fn storm_report(source: &str, on: bool, rate: u64) {
        arch::kprintln!("@@ storm source={} state={} rate={}", source, if on { "on" } else { "off" }, rate);
    }
}

/// An IOAPIC input (GSI) as the hardware line of an interrupt source: the framework masks
/// and unmasks it through the mask count (`intr::Intr::establish_line`). Made only by
/// [`IoApicLine::new`], which checks that an IOAPIC serves the GSI: masking and unmasking,
/// which run in the interrupt path, cannot fail afterwards.
pub struct IoApicLine {
    gsi: u32,
    level: bool,
}

/// [`IoApicLine::new`] for a GSI that no IOAPIC serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoSuchGsi {
    /// The GSI.
    pub gsi: u32,
    /// What the IOAPIC layer said.
    pub why: &'static str,
}

impl core::fmt::Display for NoSuchGsi {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "IOAPIC GSI {}: {}", self.gsi, self.why)
    }
}

impl IoApicLine {
    /// The line of `gsi` (programmed `level`-triggered or edge), for the life of the kernel.
    pub fn new(gsi: u32, level: bool) -> Result<&'static IoApicLine, NoSuchGsi> {
        arch::ioapic::entry(gsi).map_err(|why| NoSuchGsi { gsi, why })?;
        Ok(alloc::boxed::Box::leak(alloc::boxed::Box::new(IoApicLine { gsi, level })))
    }
}

impl intr::LineControl for IoApicLine {
    fn mask(&self) {
        // Checked by `new`: an IOAPIC serves the GSI.
        let r = arch::ioapic::set_masked(self.gsi, true);
        debug_assert!(r.is_ok(), "IOAPIC GSI {}: {r:?}", self.gsi);
    }
    fn unmask(&self) {
        let r = arch::ioapic::set_masked(self.gsi, false);
        debug_assert!(r.is_ok(), "IOAPIC GSI {}: {r:?}", self.gsi);
    }
    fn is_level(&self) -> bool {
        self.level
    }
    fn mask_method(&self) -> &'static str {
        "ioapic pin"
    }
}

/// An MSI-X table entry as a source's hardware mask (vector control bit 0): while masked the
/// device keeps its message pending and sends it at the unmask.
pub struct MsixLine(arch::pci::MsixVector);

impl MsixLine {
    /// Entry `entry` of `func`'s MSI-X table, for [`intr::Intr::establish_line`] (leaked: a
    /// line outlives its sources). The entry is masked until a source is established on it.
    pub fn new(func: &arch::pci::PciFunction, entry: u16) -> Result<&'static MsixLine, &'static str> {
        let v = func.msix_vector(entry)?;
        v.set_masked(true);
        Ok(alloc::boxed::Box::leak(alloc::boxed::Box::new(MsixLine(v))))
    }

    /// Whether the entry's mask bit is set in the device now.
    pub fn is_masked(&self) -> bool {
        self.0.is_masked()
    }

    /// Whether the device holds a message for the entry (its pending bit).
    pub fn is_pending(&self) -> bool {
        self.0.is_pending()
    }
}

impl intr::LineControl for MsixLine {
    fn mask(&self) {
        self.0.set_masked(true);
    }
    fn unmask(&self) {
        self.0.set_masked(false);
    }
    fn is_level(&self) -> bool {
        false
    }
    fn mask_method(&self) -> &'static str {
        "msi-x vector control"
    }
}

/// MSI's per-vector mask bit as a source's hardware mask, for a function whose MSI capability
/// has one (QEMU's `edu` has none: its MSI sources are masked in software, see
/// [`intr::SOFTWARE_MASK`]).
pub struct MsiLine(arch::pci::MsiVectorMask);

impl MsiLine {
    /// `func`'s MSI per-vector mask, or `None` if its capability has no per-vector masking.
    pub fn new(func: &arch::pci::PciFunction) -> Option<&'static MsiLine> {
        let m = func.msi_vector_mask()?;
        Some(alloc::boxed::Box::leak(alloc::boxed::Box::new(MsiLine(m))))
    }
}

impl intr::LineControl for MsiLine {
    fn mask(&self) {
        self.0.set_masked(true);
    }
    fn unmask(&self) {
        self.0.set_masked(false);
    }
    fn is_level(&self) -> bool {
        false
    }
    fn mask_method(&self) -> &'static str {
        "msi per-vector mask"
    }
}

/// Every interrupt vector ≥ 32 arrives here (interrupts disabled): the portable path.
fn interrupt(frame: &mut TrapFrame, io: &IntrOff) {
    intr::path::interrupt::<KernelEnv>(frame.vector as u8, frame, io);
}

/// Installs the interrupt path and the SPL levels of the kernel's own vectors.
pub fn init() {
    SPL.set_vector_ipl(apic::TIMER_VECTOR, Some(Ipl::Sched));
    SPL.set_vector_ipl(apic::RESCHED_VECTOR, Some(Ipl::Sched));
    SPL.set_vector_ipl(apic::CALL_VECTOR, Some(Ipl::High));
    SPL.set_vector_ipl(apic::STOP_VECTOR, None);
    for v in [
        apic::TIMER_VECTOR,
        apic::RESCHED_VECTOR,
        apic::CALL_VECTOR,
        apic::STOP_VECTOR,
        apic::SPURIOUS_VECTOR,
    ] {
        INTR.reserve(v);
    }
    INTR.reserve_soft_vectors();
    trap::set_interrupt_hook(interrupt);
}
