//! From the PVH entry (entry.s) to the kernel's main: console, heap, descriptor tables,
//! LAPIC and clock calibration, and the CPU list from ACPI's MADT.

use alloc::vec::Vec;
use core::ptr::NonNull;

use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};

use crate::{apic, cpu, ioapic, kprintln, mem, trap};

const HVM_START_MAGIC: u32 = 0x336e_c578;

/// Everything the kernel learns from the boot protocol and the firmware.
#[derive(Debug)]
pub struct BootInfo {
    /// The kernel command line (`-append`), empty if none.
    pub cmdline: &'static str,
    /// LAPIC ids of the application processors, in MADT order (CPU index = position + 1).
    pub ap_lapic_ids: Vec<u32>,
    /// LAPIC id of the boot processor (CPU 0).
    pub bsp_lapic_id: u32,
    /// Heap range handed to the allocator.
    pub heap: (usize, usize),
    /// Calibrated TSC rate.
    pub tsc_hz: u64,
    /// Physical address of the ACPI RSDP.
    pub rsdp: usize,
    /// The IOAPICs (id, MMIO address, GSI base) from the MADT.
    pub ioapics: Vec<ioapic::IoApicInfo>,
    /// The MADT's interrupt source overrides.
    pub source_overrides: Vec<ioapic::SourceOverride>,
}

#[repr(C)]
struct HvmStartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct HvmMemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

extern "C" {
    static __kernel_end: u8;
}

extern "Rust" {
    fn __ithreads_kernel_main(info: &'static BootInfo) -> !;
}

/// Defines the kernel's entry point: `entry_point!(main)` with `fn main(&'static BootInfo) -> !`.
#[macro_export]
macro_rules! entry_point {
    ($main:path) => {
        #[allow(unsafe_code)] // `no_mangle`: the arch crate calls this symbol after boot
        #[no_mangle]
        fn __ithreads_kernel_main(info: &'static $crate::boot::BootInfo) -> ! {
            let f: fn(&'static $crate::boot::BootInfo) -> ! = $main;
            f(info)
        }
    };
}

/// Largest heap we take, whatever the machine has.
const HEAP_MAX: usize = 192 << 20;

/// First Rust code on the BSP (called from entry.s in long mode, interrupts disabled).
#[no_mangle]
extern "C" fn arch_boot_bsp(start_info: usize) -> ! {
    crate::serial::init();
    // SAFETY: QEMU's PVH loader passes the physical address of an `hvm_start_info` in
    // identity-mapped low memory; we check its magic before trusting the rest.
    let si = unsafe { &*(start_info as *const HvmStartInfo) };
    if si.magic != HVM_START_MAGIC {
        kprintln!("boot: bad hvm_start_info magic {:#x}", si.magic);
        crate::exit::exit_qemu(false);
    }
    let cmdline = if si.cmdline_paddr != 0 {
        // SAFETY: the PVH loader placed a NUL-terminated command line there.
        let c = unsafe { core::ffi::CStr::from_ptr(si.cmdline_paddr as *const core::ffi::c_char) };
        match c.to_str() {
            Ok(s) => s,
            Err(e) => {
                // A boot error in the protocol's form (docs/PROTOCOL.md), not a silent drop.
                kprintln!(
                    "@@ cmdline-error option=- msg=the command line is not UTF-8 (invalid byte at offset {})",
                    e.valid_up_to()
                );
                crate::exit::exit_qemu(false);
            }
        }
    } else {
        ""
    };
    // `__kernel_end` is defined by the linker script after .bss; only its address is used.
    let kernel_end = core::ptr::addr_of!(__kernel_end) as usize;
    let entries: &[HvmMemmapEntry] = if si.version >= 1 && si.memmap_paddr != 0 {
        // SAFETY: version >= 1 loaders provide `memmap_entries` entries at `memmap_paddr`.
        unsafe {
            core::slice::from_raw_parts(si.memmap_paddr as *const HvmMemmapEntry, si.memmap_entries as usize)
        }
    } else {
        &[]
    };
    let heap = pick_heap(entries, kernel_end).unwrap_or_else(|| {
        kprintln!("boot: no usable RAM above the kernel image (end {kernel_end:#x}) in the PVH memory map");
        crate::exit::exit_qemu(false)
    });
    // SAFETY: `pick_heap` returns RAM (type 1) above the kernel image and below 4 GiB (so
    // identity-mapped), which nothing else uses.
    unsafe { mem::init(heap.0, heap.1) };

    trap::init_idt();
    let bsp_lapic = apic::id();
    cpu::init_this_cpu(0, bsp_lapic);
    trap::load_idt();
    cpu::NCPUS.store(1, core::sync::atomic::Ordering::Release);
    cpu::ONLINE[0].store(true, core::sync::atomic::Ordering::Release);
    apic::disable_pic();
    apic::init_local();
    apic::calibrate();

    let rsdp = si.rsdp_paddr as usize;
    let Madt { ap_lapic_ids, ioapics, source_overrides } = match madt_cpus(rsdp, bsp_lapic) {
        Ok(m) => m,
        Err(e) => {
            kprintln!("boot: cannot read the CPU list from ACPI (RSDP {rsdp:#x}): {e}");
            crate::exit::exit_qemu(false)
        }
    };
    // Every IOAPIC pin masked until a driver programs it.
    ioapic::init(&ioapics, &source_overrides);
    let info = alloc::boxed::Box::leak(alloc::boxed::Box::new(BootInfo {
        cmdline,
        ap_lapic_ids,
        bsp_lapic_id: bsp_lapic,
        heap,
        tsc_hz: apic::tsc_hz(),
        rsdp,
        ioapics,
        source_overrides,
    }));
    // SAFETY: the kernel crate defines this symbol with `entry_point!`.
    unsafe { __ithreads_kernel_main(info) }
}

fn pick_heap(entries: &[HvmMemmapEntry], kernel_end: usize) -> Option<(usize, usize)> {
    let floor = (kernel_end + 0xFFF) & !0xFFF;
    entries
        .iter()
        .filter(|e| e.kind == 1)
        .filter_map(|e| {
            let start = (e.addr as usize).max(floor);
            let end = ((e.addr + e.size) as usize).min(0xC000_0000);
            (end > start + (1 << 20)).then(|| (start, (end - start).min(HEAP_MAX)))
        })
        .max_by_key(|&(_, size)| size)
}

/// Maps ACPI tables by identity (everything the firmware puts them in is below 4 GiB).
#[derive(Clone, Copy)]
struct IdentityMap;

impl AcpiHandler for IdentityMap {
    unsafe fn map_physical_region<T>(
        &self,
        physical_address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        // SAFETY: the low 4 GiB are identity-mapped, so the physical address is the virtual
        // one; the caller guarantees a valid `T` lives there.
        unsafe {
            PhysicalMapping::new(
                physical_address,
                NonNull::new(physical_address as *mut T).expect("ACPI table at address 0"),
                size,
                size,
                *self,
            )
        }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// What the MADT says about CPUs and interrupt routing.
struct Madt {
    ap_lapic_ids: Vec<u32>,
    ioapics: Vec<ioapic::IoApicInfo>,
    source_overrides: Vec<ioapic::SourceOverride>,
}

fn madt_cpus(rsdp: usize, bsp_lapic: u32) -> Result<Madt, &'static str> {
    let tables = if rsdp != 0 {
        // SAFETY: the PVH loader reports the RSDP's physical address; identity-mapped.
        unsafe { AcpiTables::from_rsdp(IdentityMap, rsdp) }
    } else {
        // SAFETY: scans the BIOS areas (EBDA, 0xE0000..0xFFFFF), identity-mapped.
        unsafe { AcpiTables::search_for_rsdp_bios(IdentityMap) }
    }
    .map_err(|_| "no valid RSDP/RSDT")?;
    let madt = tables.find_table::<acpi::madt::Madt>().map_err(|_| "no MADT")?;
    let mut ids = Vec::new();
    let mut ioapics = Vec::new();
    let mut source_overrides = Vec::new();
    for entry in madt.get().entries() {
        match entry {
            acpi::madt::MadtEntry::LocalApic(e) => {
                let (id, flags) = (e.apic_id as u32, e.flags);
                // Bit 0: enabled; bit 1: can be enabled (online capable).
                if flags & 0b11 != 0 && id != bsp_lapic {
                    ids.push(id);
                }
            }
            acpi::madt::MadtEntry::LocalX2Apic(e) => {
                let (id, flags) = (e.x2apic_id, e.flags);
                if flags & 0b11 != 0 && id != bsp_lapic && id < 255 {
                    ids.push(id);
                }
            }
            acpi::madt::MadtEntry::IoApic(e) => ioapics.push(ioapic::IoApicInfo {
                id: e.io_apic_id,
                address: e.io_apic_address,
                gsi_base: e.global_system_interrupt_base,
            }),
            acpi::madt::MadtEntry::InterruptSourceOverride(e) => {
                source_overrides.push(ioapic::SourceOverride {
                    bus: e.bus,
                    irq: e.irq,
                    gsi: e.global_system_interrupt,
                    flags: e.flags,
                })
            }
            _ => {}
        }
    }
    Ok(Madt { ap_lapic_ids: ids, ioapics, source_overrides })
}
