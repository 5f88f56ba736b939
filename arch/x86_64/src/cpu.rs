//! Per-CPU data, reached through the GS base in O(1), and each CPU's GDT and TSS.
//!
//! `PerCpu` starts with words that assembly-like accessors read with one `%gs`-relative
//! load: `self_ptr` (offset 0), `index` (8), `curthread` (16), `ipl` (24, 32 bits) and the
//! spin-mutex nesting count (28, NetBSD's `ci_mtx_count`) — one 64-bit word that is zero-
//! extended level exactly when no spin mutex is held —, `pending` (32) and `pin_ctx` (40),
//! used by entry.s's `intr_pin_call`; a free word (48); the level saved by the outermost spin
//! mutex (56, `ci_mtx_oldspl`), the scheduler's word (64) and the interrupt depth (72,
//! `intr_pin_call`'s too).
//! A CPU's `PerCpu` is written by that CPU only, except `lapic_id`/`online`, which the BSP
//! reads during start-up; other CPUs read `curthread` and `pin_ctx` for statistics
//! and `Scheduler::is_running` (snapshots).

use alloc::boxed::Box;
use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::registers::model_specific::GsBase;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// Most CPUs the kernel will bring up: the portable crates' bound (`machine::MAX_CPUS`, the
/// one definition), which sizes this crate's per-CPU tables too.
pub use machine::MAX_CPUS;

// xAPIC addresses at most 255 CPUs by 8-bit LAPIC id, and the start-up code (`smp.rs`) stops
// at MAX_CPUS, naming the CPUs it leaves out: no CPU index ever reaches the bound.
const _: () = assert!(MAX_CPUS <= 255 && MAX_CPUS.is_power_of_two());

/// IST slot used by the double-fault handler (a known-good stack).
pub const DOUBLE_FAULT_IST: u16 = 0;

/// Data owned by one CPU.
#[repr(C)]
pub struct PerCpu {
    self_ptr: usize,
    index: usize,
    curthread: AtomicUsize,
    /// The CPU's interrupt priority level (offset 24; read and written with one `%gs` op,
    /// 32 bits wide).
    ipl: u32,
    /// Spin mutexes held on this CPU, counted *down* from 0 (offset 28; NetBSD's
    /// `ci_mtx_count`): the enter's `sub` borrows exactly when it is the outermost, the exit's
    /// `add` reaches zero exactly when it is. It is the upper half of the 64-bit word at 24,
    /// so `intr_pin_call`'s one compare of that word with a level (zero-extended) tests both
    /// "at this level" and "no spin mutex held".
    mtx_count: u32,
    /// The SPL pending-levels word (offset 32; one `%gs` op to read, set or clear bits).
    pending: u64,
    /// The context of the thread pinned under an interrupt thread (offset 40; written by
    /// `intr_pin_call` in entry.s, read by the scheduler's switch back when that thread
    /// blocks): the innermost active pinned call's frame, 0 when none is active — so the
    /// running thread borrows the CPU exactly when it is not 0 (`PinSwitch::is_borrower`;
    /// other CPUs read it for `PinSwitch::borrower_of`).
    pin_ctx: AtomicUsize,
    /// Free (offset 48).
    _free: usize,
    /// The level from before the outermost spin mutex (offset 56; `ci_mtx_oldspl`).
    mtx_oldspl: u32,
    _unused: u32,
    /// The scheduler's word (offset 64; `Machine::sched_word`: the address of its per-CPU
    /// state, 0 until its `init_cpu` on this CPU).
    sched_word: usize,
    /// The interrupt depth (offset 72; `Machine::intr_depth`): one `%gs` op to count an
    /// interrupt in or out, and the pinned call's `asm!` pushes it, zeroes it and pops it back
    /// around `intr_pin_call`.
    intr_depth: usize,
    /// This CPU's local APIC id.
    pub lapic_id: AtomicU32,
}

// The offsets entry.s and the accessors below use.
const _: () = {
    assert!(core::mem::offset_of!(PerCpu, curthread) == 16);
    assert!(core::mem::offset_of!(PerCpu, ipl) == 24);
    assert!(core::mem::offset_of!(PerCpu, pending) == 32);
    assert!(core::mem::offset_of!(PerCpu, pin_ctx) == 40);
    assert!(core::mem::offset_of!(PerCpu, _free) == 48);
    assert!(core::mem::offset_of!(PerCpu, mtx_count) == 28);
    assert!(core::mem::offset_of!(PerCpu, mtx_oldspl) == 56);
    assert!(core::mem::offset_of!(PerCpu, sched_word) == 64);
    assert!(core::mem::offset_of!(PerCpu, intr_depth) == 72);
};

/// Number of CPUs brought up so far (the BSP counts from the start).
pub(crate) static NCPUS: AtomicUsize = AtomicUsize::new(0);
/// LAPIC id of CPU index i.
pub(crate) static LAPIC_IDS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(u32::MAX) }; MAX_CPUS];
/// Address of CPU index i's `PerCpu` (0 until that CPU set it up; never freed).
static PERCPU: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];
pub(crate) static ONLINE: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// Sets up this CPU's GDT (with its own TSS and double-fault stack) and GS base.
/// Called once on each CPU, with interrupts disabled, after the heap is up.
pub fn init_this_cpu(index: usize, lapic_id: u32) {
    let df_stack: &'static mut [u8] = Box::leak(alloc::vec![0u8; 16 * 1024].into_boxed_slice());
    let mut tss = TaskStateSegment::new();
    let top = df_stack.as_ptr() as u64 + df_stack.len() as u64;
    tss.interrupt_stack_table[DOUBLE_FAULT_IST as usize] = VirtAddr::new(top & !0xF);
    let tss: &'static TaskStateSegment = Box::leak(Box::new(tss));
    let gdt: &'static mut GlobalDescriptorTable = Box::leak(Box::new(GlobalDescriptorTable::new()));
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let tss_sel = gdt.append(Descriptor::tss_segment(tss));
    let gdt: &'static GlobalDescriptorTable = gdt;
    gdt.load();
    // SAFETY: the selectors index the GDT just loaded, whose descriptors are a 64-bit code
    // segment, a data segment and an available TSS that lives forever (leaked).
    unsafe {
        CS::set_reg(code);
        DS::set_reg(data);
        ES::set_reg(data);
        SS::set_reg(data);
        load_tss(tss_sel);
    }
    let pc: &'static mut PerCpu = Box::leak(Box::new(PerCpu {
        self_ptr: 0,
        index,
        curthread: AtomicUsize::new(0),
        ipl: 0,
        pending: 0,
        pin_ctx: AtomicUsize::new(0),
        _free: 0,
        mtx_count: 0,
        mtx_oldspl: 0,
        _unused: 0,
        sched_word: 0,
        intr_depth: 0,
        lapic_id: AtomicU32::new(lapic_id),
    }));
    pc.self_ptr = pc as *mut PerCpu as usize;
    GsBase::write(VirtAddr::new(pc.self_ptr as u64));
    LAPIC_IDS[index].store(lapic_id, Ordering::Relaxed);
    PERCPU[index].store(pc.self_ptr, Ordering::Release);
}

/// Index of the running CPU (one `%gs`-relative load).
#[inline]
pub fn index() -> usize {
    let v: usize;
    // SAFETY: GS base points at this CPU's `PerCpu` (set by `init_this_cpu` before any caller
    // runs); offset 8 is `index`. The load has no side effects.
    unsafe { asm!("mov {}, gs:[8]", out(reg) v, options(nostack, preserves_flags, readonly)) };
    v
}

/// The scheduler's word of the running CPU (`Machine::sched_word`).
#[inline]
pub fn sched_word() -> usize {
    let v: usize;
    // SAFETY: as in `index`; offset 64 is `sched_word`.
    unsafe { asm!("mov {}, gs:[64]", out(reg) v, options(nostack, preserves_flags, readonly)) };
    v
}

/// Sets the scheduler's word of the running CPU.
#[inline]
pub fn set_sched_word(v: usize) {
    // SAFETY: as in `index`; offset 64 is `sched_word`, written only by its own CPU.
    unsafe { asm!("mov gs:[64], {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// The current thread pointer of the running CPU.
#[inline]
pub fn curthread() -> usize {
    let v: usize;
    // SAFETY: as in `index`; offset 16 is `curthread`.
    unsafe { asm!("mov {}, gs:[16]", out(reg) v, options(nostack, preserves_flags, readonly)) };
    v
}

/// Sets the current thread pointer of the running CPU.
#[inline]
pub fn set_curthread(v: usize) {
    // SAFETY: as in `index`; offset 16 is `curthread`, written only by its own CPU.
    unsafe { asm!("mov gs:[16], {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// The running CPU's interrupt priority level.
#[inline]
pub fn ipl() -> u8 {
    let v: u32;
    // SAFETY: as in `index`; offset 24 is `ipl`.
    unsafe { asm!("mov {:e}, dword ptr gs:[24]", out(reg) v, options(nostack, preserves_flags, readonly)) };
    v as u8
}

/// Sets the running CPU's interrupt priority level.
#[inline]
pub fn set_ipl(level: u8) {
    // SAFETY: as in `index`; offset 24 is `ipl`, written only by its own CPU.
    unsafe { asm!("mov dword ptr gs:[24], {:e}", in(reg) level as u32, options(nostack, preserves_flags)) };
}

/// The running CPU's IPL word (the level, zero-extended: `set_ipl` writes all 32 bits).
#[inline(always)]
pub fn ipl_word() -> usize {
    let v: usize;
    // A 32-bit load into the register's low half zero-extends it: the whole register is
    // the word, with no extension of our own.
    // SAFETY: as in `index`; offset 24 is `ipl`.
    unsafe { asm!("mov {:e}, dword ptr gs:[24]", out(reg) v, options(nostack, preserves_flags, readonly)) };
    v
}

/// Sets the running CPU's IPL word (a level below 256, as `ipl_word` returns).
#[inline(always)]
pub fn set_ipl_word(level: usize) {
    // SAFETY: as in `index`; offset 24 is `ipl`, written only by its own CPU.
    unsafe { asm!("mov dword ptr gs:[24], {:e}", in(reg) level as u32, options(nostack, preserves_flags)) };
}

/// The running CPU's SPL pending-levels word.
#[inline]
pub fn ipl_pending() -> u32 {
    let v: u32;
    // SAFETY: as in `index`; offset 32 is `pending`.
    unsafe { asm!("mov {:e}, dword ptr gs:[32]", out(reg) v, options(nostack, preserves_flags, readonly)) };
    v
}

/// Sets bits of the running CPU's pending word (one instruction: atomic with respect to this
/// CPU's interrupts; no other CPU writes it).
#[inline]
pub fn ipl_pending_or(bits: u32) {
    // SAFETY: as in `index`; offset 32 is `pending`, written only by its own CPU.
    unsafe { asm!("or dword ptr gs:[32], {:e}", in(reg) bits, options(nostack)) };
}

/// Clears the bits of the running CPU's pending word that are not in `mask`.
#[inline]
pub fn ipl_pending_and(mask: u32) {
    // SAFETY: as in `ipl_pending_or`.
    unsafe { asm!("and dword ptr gs:[32], {:e}", in(reg) mask, options(nostack)) };
}

/// One more spin mutex held on the running CPU; the outermost saves `old` (offsets 28, 56).
/// One instruction each with respect to this CPU's interrupts (an interrupt that takes and
/// releases spin mutexes in between leaves both as it found them).
#[inline(always)]
pub fn mtx_enter(old: u8) {
    // SAFETY: as in `index`; offsets 28 and 56 are `mtx_count` and `mtx_oldspl`, written only
    // by their own CPU. The store is skipped unless the `sub` borrowed (the count was 0).
    unsafe {
        asm!(
            "sub dword ptr gs:[28], 1",
            "jnc 2f",
            "mov byte ptr gs:[56], {old}",
            "2:",
            old = in(reg_byte) old,
            options(nostack)
        )
    };
}

/// One spin mutex less on the running CPU: the saved level if it was the outermost. The
/// saved level is read *before* the count goes back to 0 (NetBSD's `mutex_spin_exit`): after
/// that, an interrupt's own spin mutex may save its level in the same slot.
#[inline(always)]
pub fn mtx_exit() -> Option<u8> {
    let old: u8;
    // SAFETY: as in `mtx_enter`.
    unsafe {
        asm!("mov {}, byte ptr gs:[56]", out(reg_byte) old, options(nostack, preserves_flags, readonly))
    };
    // SAFETY: as in `mtx_enter`; the label block runs when the count reached 0.
    unsafe {
        asm!("add dword ptr gs:[28], 1", "jz {outer}", outer = label { return Some(old) }, options(nostack))
    };
    None
}

/// The running CPU's spin-mutex count (held) and saved level.
#[inline]
pub fn mtx_state() -> (u32, u8) {
    let (c, o): (u32, u32);
    // Two reads, each `pure`: a caller that wants only the count does not pay for the
    // level's load.
    // SAFETY: as in `mtx_enter`.
    unsafe {
        asm!("mov {:e}, dword ptr gs:[28]", out(reg) c, options(nostack, preserves_flags, pure, readonly));
        asm!("mov {:e}, dword ptr gs:[56]", out(reg) o, options(nostack, preserves_flags, pure, readonly));
    };
    (c.wrapping_neg(), o as u8)
}

/// Sets the running CPU's spin-mutex count (held) and saved level (interrupts disabled).
#[inline]
pub fn set_mtx_state(count: u32, oldspl: u8) {
    // SAFETY: as in `mtx_enter`.
    unsafe {
        asm!("mov dword ptr gs:[28], {:e}", "mov dword ptr gs:[56], {:e}", in(reg) count.wrapping_neg(),
             in(reg) oldspl as u32, options(nostack, preserves_flags))
    };
}

/// The running CPU's pinned-context slot (offset 40 of its `PerCpu`): the innermost active
/// pinned call's frame, or what the slot held before the first.
#[inline]
pub fn pin_ctx() -> usize {
    let v: usize;
    // SAFETY: as in `index`; offset 40 is `pin_ctx`.
    unsafe { asm!("mov {}, gs:[40]", out(reg) v, options(nostack, preserves_flags, readonly)) };
    v
}

/// Sets the running CPU's pinned-context slot (offset 40): the pinned switch's Blocked path
/// puts back the value its frame saved. Interrupts disabled.
#[inline]
pub fn set_pin_ctx(v: usize) {
    // SAFETY: as in `index`; offset 40 is `pin_ctx`, written only by its own CPU with
    // interrupts disabled.
    unsafe { asm!("mov gs:[40], {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// Sets the running CPU's interrupt depth (offset 72): the block path puts the depth the
/// pinned call set aside back.
#[inline]
pub fn set_intr_depth(v: usize) {
    // SAFETY: as in `index`; offset 72 is `intr_depth`, written only by its own CPU.
    unsafe { asm!("mov gs:[72], {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// Word `i` of the running CPU's innermost pinned frame (`intr_pin_call`'s: 0 the call,
/// 1 the interrupt depth set aside, 2 the previous pinned context, 3 the thread under it).
#[inline]
pub fn pinned_frame_word(i: usize) -> usize {
    let frame: usize;
    // SAFETY: as in `index`; offset 40 is `pin_ctx`.
    unsafe { asm!("mov {}, gs:[40]", out(reg) frame, options(nostack, preserves_flags, readonly)) };
    assert!(frame != 0 && i < 6, "no pinned call is active on this CPU, or no frame word {i}");
    // SAFETY: a non-zero `pin_ctx` is the frame `intr_pin_call` built on the pinned thread's
    // stack, live while that call is active (the caller's premise), six words long.
    unsafe { *((frame + 8 * i) as *const usize) }
}

/// CPU `index`'s `PerCpu` (`None` until it is set up).
#[inline]
fn percpu_of(index: usize) -> Option<&'static PerCpu> {
    let p = PERCPU.get(index)?.load(Ordering::Acquire);
    // SAFETY: a non-zero entry is the address of a `PerCpu` leaked by `init_this_cpu` (it
    // lives forever), published by the release store there.
    (p != 0).then(|| unsafe { &*(p as *const PerCpu) })
}

/// The thread CPU `index` is lent to (its running thread while its borrows are not 0), or 0:
/// a snapshot of another CPU's two words.
#[inline]
pub fn borrower_of(index: usize) -> usize {
    match percpu_of(index) {
        Some(c) if c.pin_ctx.load(Ordering::Relaxed) != 0 => c.curthread.load(Ordering::Relaxed),
        _ => 0,
    }
}

/// The running CPU's interrupt depth (offset 72).
#[inline(always)]
pub fn intr_depth() -> usize {
    let v: usize;
    // SAFETY: as in `index`; offset 72 is `intr_depth`.
    unsafe { asm!("mov {}, gs:[72]", out(reg) v, options(nostack, preserves_flags, readonly)) };
    v
}

/// One more interrupt handler on the running CPU (its own word; interrupts disabled).
#[inline(always)]
pub fn intr_depth_enter() {
    // SAFETY: as in `index`; offset 72 is `intr_depth`, written only by its own CPU.
    unsafe { asm!("inc qword ptr gs:[72]", options(nostack)) };
}

/// One interrupt handler fewer on the running CPU: the depth after it.
#[inline(always)]
pub fn intr_depth_exit() -> usize {
    let v: usize;
    // SAFETY: as in `intr_depth_enter`.
    unsafe { asm!("dec qword ptr gs:[72]", "mov {}, gs:[72]", out(reg) v, options(nostack)) };
    v
}

/// Number of CPUs online (or starting).
pub fn ncpus() -> usize {
    NCPUS.load(Ordering::Acquire)
}

/// LAPIC id of CPU `index`.
pub fn lapic_id_of(index: usize) -> u32 {
    LAPIC_IDS[index].load(Ordering::Relaxed)
}

/// Whether CPU `index` finished its start-up.
pub fn is_online(index: usize) -> bool {
    index < MAX_CPUS && ONLINE[index].load(Ordering::Acquire)
}

/// The faulting address of the last page fault (CR2).
pub fn fault_address() -> u64 {
    x86_64::registers::control::Cr2::read_raw()
}
