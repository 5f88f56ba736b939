//! Starting the application processors: the trapoline from entry.s is copied to
//! [`AP_TRAMPOLINE`], and each AP in turn gets a stack and INIT-SIPI-SIPI, then runs
//! `ap_entry` in long mode with the BSP's page tables, sets up its own GDT/TSS/GS/LAPIC and
//! calls the kernel's AP entry. APs start one at a time because the trampoline's data slots
//! are shared.

use core::sync::atomic::{AtomicUsize, Ordering};

use crate::{apic, cpu, kprintln, trap};

/// Physical address of the AP trampoline (SIPI vector 0x08).
pub const AP_TRAMPOLINE: usize = 0x8000;

/// Stack size of each AP's boot (later: idle) thread.
const AP_STACK: usize = 64 * 1024;

extern "C" {
    static ap_tramp_start: u8;
    static ap_tramp_end: u8;
    static ap_tramp_cr3: u8;
    static ap_tramp_stack: u8;
    static ap_tramp_entry: u8;
    static ap_tramp_arg: u8;
    static boot_pml4: u8;
}

static AP_MAIN: AtomicUsize = AtomicUsize::new(0);

/// Why an AP did not come up.
#[derive(Debug)]
pub struct ApStartError {
    /// CPU index.
    pub cpu: usize,
    /// Its LAPIC id.
    pub lapic_id: u32,
}

/// Starts every AP in `lapic_ids` (CPU index i+1 for entry i); each ends in `ap_main`.
/// Returns once all are online, or the first that did not answer within a second.
pub fn start_aps(lapic_ids: &[u32], ap_main: fn() -> !) -> Result<(), ApStartError> {
    AP_MAIN.store(ap_main as *const () as usize, Ordering::Release);
    // SAFETY: the trampoline symbols come from entry.s; the copy target is low RAM that the
    // firmware leaves free and nothing of ours uses; it is identity-mapped.
    let tramp = unsafe {
        let start = core::ptr::addr_of!(ap_tramp_start) as usize;
        let end = core::ptr::addr_of!(ap_tramp_end) as usize;
        core::ptr::copy_nonoverlapping(start as *const u8, AP_TRAMPOLINE as *mut u8, end - start);
        start
    };
    let slot = |sym: *const u8| (sym as usize - tramp + AP_TRAMPOLINE) as *mut u64;
    for (i, &lapic_id) in lapic_ids.iter().enumerate() {
        let index = i + 1;
        if index >= cpu::MAX_CPUS {
            kprintln!("smp: more than {} CPUs; ignoring LAPIC id {lapic_id}", cpu::MAX_CPUS);
            break;
        }
        let stack = alloc::boxed::Box::leak(alloc::vec![0u8; AP_STACK].into_boxed_slice());
        let top = (stack.as_ptr() as usize + AP_STACK) & !0xF;
        // SAFETY: the slots are inside the copy at AP_TRAMPOLINE, 8-aligned (entry.s aligns
        // them), and no AP runs the trampoline now (the previous one finished with it).
        unsafe {
            slot(core::ptr::addr_of!(ap_tramp_cr3)).write_volatile(core::ptr::addr_of!(boot_pml4) as u64);
            slot(core::ptr::addr_of!(ap_tramp_stack)).write_volatile(top as u64);
            slot(core::ptr::addr_of!(ap_tramp_entry)).write_volatile(ap_entry as *const () as u64);
            slot(core::ptr::addr_of!(ap_tramp_arg)).write_volatile(index as u64);
        }
        cpu::NCPUS.store(index + 1, Ordering::Release);
        apic::start_ap(lapic_id, (AP_TRAMPOLINE >> 12) as u8);
        let deadline = apic::rdtsc() + apic::tsc_hz();
        while !cpu::is_online(index) {
            if apic::rdtsc() > deadline {
                cpu::NCPUS.store(index, Ordering::Release);
                return Err(ApStartError { cpu: index, lapic_id });
            }
            core::hint::spin_loop();
        }
    }
    Ok(())
}

/// First Rust code on an AP (from the trampoline, interrupts disabled).
extern "C" fn ap_entry(index: usize) -> ! {
    cpu::init_this_cpu(index, apic::id());
    trap::load_idt();
    apic::init_local();
    cpu::ONLINE[index].store(true, Ordering::Release);
    let f = AP_MAIN.load(Ordering::Acquire);
    // SAFETY: `start_aps` stored a `fn() -> !` before starting any AP.
    let f = unsafe { core::mem::transmute::<usize, fn() -> !>(f) };
    f()
}
