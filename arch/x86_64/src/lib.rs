//! # ithreads on x86_64
//!
//! The only crate with assembly, port I/O, MSRs, descriptor tables and APIC access. It boots
//! (PVH entry from QEMU `-kernel`, long mode, identity-mapped low 4 GiB), brings up every CPU
//! the MADT lists, and implements [`machine::Machine`] for the portable crates as
//! [`X86_64`].
//!
//! ## Protocol
//!
//! * Boot: `entry.s` → [`boot`]`::arch_boot_bsp` (console, heap, GDT/IDT/GS, LAPIC, clock
//!   calibration, MADT) → the kernel's `entry_point!` function on the boot stack with
//!   interrupts disabled. The kernel then calls [`smp::start_aps`]; each AP arrives in the
//!   kernel's AP function, also with interrupts disabled.
//! * Interrupts: see [`trap`] for one interrupt's path. Handlers and the scheduler hooks are
//!   registered by the kernel; the LAPIC EOI is sent by [`trap`] after the handler.
//! * Per-CPU data hangs off the GS base ([`cpu`]); the current thread pointer is one
//!   `%gs`-relative word.
//! * Locks: [`sync::IrqSpinLock`] (interrupts disabled while held) protects the console and
//!   the heap, nothing else.
#![no_std]

extern crate alloc;

pub mod apic;
pub mod bench_prims;
pub mod boot;
pub mod cpu;
pub mod dma;
pub mod exit;
pub mod ioapic;
pub mod mem;
pub mod nmi;
pub mod pci;
pub mod serial;
pub mod smp;
pub mod sync;
pub mod trap;

use core::arch::{asm, global_asm};

use machine::{IntrOff, Machine};

global_asm!(include_str!("entry.s"), options(att_syntax));

// entry.s's `intr_pin_call` compares the 64-bit word at %gs:24 (the IPL, and above it the
// spin-mutex count: cpu.rs) with a `PinCall`'s level, the level's number (`intr::pinned` passes
// IPL_VM's): equal only at that level with no spin mutex held.
const _: () = assert!(ipl::Ipl::Vm as u8 == 5);
global_asm!(include_str!(concat!(env!("OUT_DIR"), "/trap_stubs.s")), options(att_syntax));

extern "C" {
    fn context_switch(from: *mut usize, to: *const usize);
    fn thread_trampoline();
}

/// The x86_64 machine.
pub struct X86_64;

/// Whether an idle CPU polls instead of halting (`idle=poll`; [`set_idle_poll`]).
static IDLE_POLL: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Makes [`Machine::wait_for_interrupt`] poll (`true`: interrupts on for one `pause`, then
/// off again, never `hlt`) or halt (`false`, the default). Set once at boot from the command
/// line (`idle=`), before the CPUs reach their idle loops; read by every CPU after.
///
/// Why polling exists: under QEMU's TCG with `-icount`, when every vCPU has halted, QEMU's
/// main-loop thread warps the virtual clock to the next timer deadline. It can do that in the
/// moment after one vCPU's `hlt` and before that vCPU's executed instructions are added to the
/// clock (the vCPU thread adds them only after leaving the guest, without holding the lock
/// the main loop holds), so the warp overshoots by those instructions, by a host-timing
/// accident. A vCPU that never halts is never idle, so the clock never warps and advances
/// only by executed instructions: a guest-only run on several vCPUs is then a function of its
/// input. `pause` ends a vCPU's turn in QEMU's round robin, so a polling CPU gives its turn to
/// the others at once.
pub fn set_idle_poll(poll: bool) {
    IDLE_POLL.store(poll, core::sync::atomic::Ordering::Relaxed);
}

#[inline]
fn restore_intr(was_enabled: bool) {
    if was_enabled {
        x86_64::instructions::interrupts::enable();
    }
}

impl Machine for X86_64 {
    /// The saved stack pointer; callee-saved registers are on the stack (entry.s).
    type Context = usize;

    #[inline]
    fn cpu_index() -> usize {
        cpu::index()
    }

    fn ncpus() -> usize {
        cpu::ncpus()
    }

    #[inline]
    fn curthread() -> *const () {
        cpu::curthread() as *const ()
    }

    #[inline]
    fn set_curthread(thread: *const (), _io: &IntrOff) {
        cpu::set_curthread(thread as usize);
    }

    #[inline]
    fn sched_word() -> usize {
        cpu::sched_word()
    }

    fn set_sched_word(v: usize, _io: &IntrOff) {
        cpu::set_sched_word(v);
    }

    #[inline(always)]
    fn intr_depth() -> usize {
        cpu::intr_depth()
    }

    #[inline(always)]
    fn intr_depth_enter() {
        cpu::intr_depth_enter();
    }

    #[inline(always)]
    fn intr_depth_exit() -> usize {
        cpu::intr_depth_exit()
    }

    #[inline]
    fn intr_disable() -> IntrOff {
        let was = x86_64::instructions::interrupts::are_enabled();
        x86_64::instructions::interrupts::disable();
        // SAFETY: interrupts are now disabled and `restore_intr(was)` restores the old state.
        unsafe { IntrOff::new_unchecked(was, restore_intr) }
    }

    #[inline(always)]
    unsafe fn intr_disable_enabled() -> IntrOff {
        debug_assert!(x86_64::instructions::interrupts::are_enabled());
        x86_64::instructions::interrupts::disable();
        // SAFETY: interrupts are now disabled; they were enabled (the caller's contract),
        // which `restore_intr(true)` puts back.
        unsafe { IntrOff::new_unchecked(true, restore_intr) }
    }

    unsafe fn intr_enable() {
        x86_64::instructions::interrupts::enable();
    }

    fn intr_enabled() -> bool {
        x86_64::instructions::interrupts::are_enabled()
    }

    fn wait_for_interrupt(_io: &IntrOff) {
        if IDLE_POLL.load(core::sync::atomic::Ordering::Relaxed) {
            // SAFETY: interrupts are enabled for the `nop` after `sti`'s shadow and the `pause`
            // (an interrupt pending then is taken there and returns here), then disabled
            // again before returning, as the token promises; the caller looks for work again.
            unsafe { asm!("sti", "nop", "pause", "cli", options(nomem, nostack)) };
            return;
        }
        // SAFETY: `sti; hlt` is atomic with respect to interrupts (the STI shadow), so a
        // wakeup IPI cannot slip in between and be missed; we disable them again before
        // returning, as the token promises.
        unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    }

    fn send_resched(cpu: usize) {
        apic::send_ipi(cpu::lapic_id_of(cpu), apic::RESCHED_VECTOR);
    }

    #[inline]
    fn now_ns() -> u64 {
        apic::now_ns()
    }

    fn arm_timer(deadline_ns: u64, _io: &IntrOff) {
        apic::arm_at_ns(Some(deadline_ns));
    }

    fn new_context(stack_top: usize, entry: extern "C" fn(*const ()) -> !, arg: *const ()) -> usize {
        // Frame popped by `context_switch`: r15, r14, r13, r12, rbx, rbp, then `ret` into
        // thread_trampoline, which calls r13(r12). After the `ret` RSP is 16-aligned, so the
        // `call` gives the entry the ABI's alignment.
        let a = (stack_top - 16) & !0xF;
        let frame = a - 7 * 8;
        let words =
            [0u64, 0, entry as *const () as u64, arg as u64, 0, 0, thread_trampoline as *const () as u64];
        // SAFETY: `frame..a` lies inside the new thread's stack (the caller allocated
        // `stack_top` as its top, with far more than 80 bytes), unused until the first switch.
        unsafe { core::ptr::copy_nonoverlapping(words.as_ptr(), frame as *mut u64, 7) };
        frame
    }

    fn empty_context() -> usize {
        0
    }

    #[inline]
    unsafe fn switch(from: *mut usize, to: *const usize) {
        // SAFETY: per the trait contract (interrupts off, valid contexts, exclusive).
        unsafe { context_switch(from, to) }
    }
}

/// `intr_pin_call`'s diagnostic (entry.s): a pinned body returned although its thread no longer
/// borrows the CPU — it blocked or was preempted during the call, so the thread underneath has
/// resumed from the frame the return would pop. Continuing would load a stale stack pointer;
/// the body should have ended through `Scheduler::pin_end` (`intr_pin_end`, which tests and
/// switches back in one interrupt-disabled sequence) or decided with `Scheduler::pin_return`
/// (interrupts kept disabled from the test to the return), and parked. Interrupts disabled, on
/// the thread's own stack; `thread` is the running thread (`curthread`).
#[no_mangle]
extern "C" fn intr_pin_bad_return(thread: usize) -> ! {
    panic!(
        "pinned call: the body of interrupt thread {:#x} returned after the thread stopped borrowing \
         CPU {} (it blocked or was preempted: the frame it returns into is gone; pinned context now {:#x})",
        thread,
        cpu::index(),
        cpu::pin_ctx(),
    )
}

/// The call of `intr_pin_call` or `intr_pin_call_leveled` (entry.s, section 5) with their own
/// convention: they keep %rbx, %rbp and %rsp (as the C ABI) but not r12..r15 (a body that
/// blocks resumes us through a frame holding the saved words there), hence the clobbers;
/// %rdi and %rsi come back unchanged on the Busy and Level answers. The outer borrow's words
/// and the interrupt depth are back on every answer (Blocked: put back by `pin_switch_under`
/// before the switch). To be used in an `unsafe` block whose caller keeps
/// `PinSwitch::pin_call`'s contract (it covers the asm and the transmute of the answer); the
/// stack is aligned for a call there (asm! without `nostack`).
macro_rules! pin_call_asm {
    ($entry:literal, $call:expr, $a0:expr, $a1:expr) => {{
        let (r, b0, b1): (u32, usize, usize);
        asm!(
            concat!("call ", $entry),
            inlateout("rdi") $a0 => b0,
            inlateout("rsi") $a1 => b1,
            in("rdx") $call as *const machine::PinCall,
            lateout("eax") r,
            out("r12") _,
            out("r13") _,
            out("r14") _,
            out("r15") _,
            clobber_abi("C"),
        );
        // The entries answer 0 (through `context_switch`), 1, 2 or 3: the values of
        // `PinOutcome` (`#[repr(u32)]`); the caller's `unsafe` block covers the transmute.
        (core::mem::transmute::<u32, machine::PinOutcome>(r), b0, b1)
    }};
}

/// The pinned switch: `intr_pin_call` in entry.s (protocol: `machine::PinSwitch::pin_call`).
impl machine::PinSwitch for X86_64 {
    #[inline(always)]
    unsafe fn pin_call(call: &machine::PinCall, a0: usize, a1: usize) -> (machine::PinOutcome, usize, usize) {
        // SAFETY: per the trait contract; `intr_pin_call` (entry.s, section 5) implements it
        // and answers one of `PinOutcome`'s values (see `pin_call_asm!`).
        unsafe { pin_call_asm!("intr_pin_call", call, a0, a1) }
    }

    #[inline(always)]
    unsafe fn pin_call_leveled(
        call: &machine::PinCall,
        a0: usize,
        a1: usize,
    ) -> (machine::PinOutcome, usize, usize) {
        // SAFETY: per the trait contract (the caller made the level test);
        // `intr_pin_call_leveled` is `intr_pin_call` after that test (the same answers).
        unsafe { pin_call_asm!("intr_pin_call_leveled", call, a0, a1) }
    }

    #[inline(always)]
    fn at_pin_level<const LEVEL: usize>() -> bool {
        // SAFETY: %gs:24 is this CPU's IPL word with the spin-mutex count above it (cpu.rs):
        // one read of the running CPU's own word, the compare `intr_pin_call` makes.
        unsafe {
            asm!(
                "cmp qword ptr gs:[24], {l}",
                "jne {no}",
                l = const LEVEL,
                no = label { return false },
                options(nostack, readonly),
            )
        };
        true
    }

    #[inline(always)]
    unsafe fn pin_end() -> bool {
        // `intr_pin_end` (entry.s, section 5): if the running thread is this CPU's borrower, it
        // parks the call's state, restores the words of the frame at %gs:40 and returns from
        // that frame's `intr_pin_call` (Returned), leaving this stack for good; otherwise it
        // returns here, having changed only %rax and the flags.
        // SAFETY: per the trait contract (interrupts disabled; the caller keeps nothing on this
        // stack that must be dropped); the stack is aligned for a call here.
        unsafe { asm!("call intr_pin_end", out("rax") _) };
        false
    }

    #[inline(always)]
    unsafe fn pin_end_borrowing() {
        // `intr_pin_end_borrowing` (entry.s, section 5) is `intr_pin_end` after its test: it
        // parks the call's state, restores the words of the frame at %gs:40 and returns from
        // that frame's `intr_pin_call` (Returned), leaving this stack for good.
        // The sequence is inlined here rather than jumped to (one instruction less on every
        // pinned interrupt): keep it the same as entry.s's `intr_pin_end_borrowing` after its
        // `movl $1, %eax`, which `intr_pin_end` and a returning body use.
        // SAFETY: per the trait contract (interrupts disabled since the caller found the
        // running thread the borrower; nothing on this stack needs dropping).
        unsafe {
            asm!(
                "mov eax, 1",                 // PinOutcome::Returned
                "mov rsp, qword ptr gs:[40]", // back on the pinned stack: this one is left
                "pop rcx",                    // r15's slot: the call
                "inc qword ptr [rcx]",        // state even: parked
                "pop qword ptr gs:[72]",      // r14's slot: the interrupt depth
                "pop qword ptr gs:[40]",      // r13's slot: the previous pinned context
                "pop qword ptr gs:[16]",      // r12's slot: curthread = the pinned thread
                "pop rbx",
                "pop rbp",
                "ret", // from intr_pin_call
                options(noreturn)
            )
        }
    }

    #[inline(always)]
    unsafe fn pin_end_borrowing_more() {
        // `intr_pin_end_borrowing_more` (entry.s, section 5): `intr_pin_end_borrowing` with
        // `PinOutcome::ReturnedMore` as the answer.
        // SAFETY: as `pin_end_borrowing`'s (the same trait contract).
        unsafe { asm!("jmp intr_pin_end_borrowing_more", options(noreturn)) }
    }

    #[inline]
    fn borrower_of(cpu: usize) -> usize {
        cpu::borrower_of(cpu)
    }

    #[inline(always)]
    fn is_borrower() -> bool {
        // SAFETY: %gs:40 is this CPU's pinned context word, 0 exactly when no pinned call is
        // active (cpu.rs); one read of the running CPU's own word.
        unsafe {
            asm!(
                "cmp qword ptr gs:[40], 0",
                "je {no}",
                no = label { return false },
                options(nostack, readonly),
            )
        };
        true
    }

    #[inline]
    unsafe fn pin_switch_under(from: *mut usize) {
        let frame = cpu::pin_ctx();
        let w = frame as *const usize;
        // SAFETY: we borrow the CPU (the trait contract), so %gs:40 is the innermost active
        // pinned call's frame (entry.s), live on the thread under us: words 1 and 2 are the
        // interrupt depth it set aside and the previous pinned context.
        let (depth, prev_ctx) = unsafe { (*w.add(1), *w.add(2)) };
        cpu::set_intr_depth(depth);
        cpu::set_pin_ctx(prev_ctx);
        // SAFETY: per the trait contract; `frame` is the context `intr_pin_call` saved for the
        // thread under us (a switch frame of section 4), read before the slot was changed;
        // `context_switch` reads it from this stack before it leaves it.
        unsafe { context_switch(from, &frame) }
    }

    fn pinned_thread() -> *const () {
        cpu::pinned_frame_word(3) as *const ()
    }

    fn pinned_call() -> *const machine::PinCall {
        cpu::pinned_frame_word(0) as *const machine::PinCall
    }

    #[inline(always)]
    fn pin_parking() {}
}

// The `PinCall` offsets entry.s uses.
const _: () = {
    assert!(core::mem::offset_of!(machine::PinCall, state) == 0);
    assert!(core::mem::offset_of!(machine::PinCall, thread) == 8);
    assert!(core::mem::offset_of!(machine::PinCall, stack_top) == 16);
    assert!(core::mem::offset_of!(machine::PinCall, body) == 24);
    assert!(core::mem::offset_of!(machine::PinCall, level) == 32);
};

impl ipl::IplCpu for X86_64 {
    #[inline]
    fn ipl_get() -> u8 {
        cpu::ipl()
    }

    #[inline]
    fn ipl_set(level: u8) {
        cpu::set_ipl(level);
    }

    #[inline(always)]
    fn ipl_word() -> usize {
        cpu::ipl_word()
    }

    #[inline(always)]
    fn ipl_set_word(level: usize) {
        cpu::set_ipl_word(level);
    }

    #[inline]
    fn pending_get() -> u32 {
        cpu::ipl_pending()
    }

    #[inline]
    fn pending_or(bits: u32) {
        cpu::ipl_pending_or(bits);
    }

    #[inline]
    fn pending_and(mask: u32) {
        cpu::ipl_pending_and(mask);
    }

    #[inline(always)]
    fn mtx_enter(old: u8) {
        cpu::mtx_enter(old);
    }

    #[inline(always)]
    fn mtx_exit() -> Option<u8> {
        cpu::mtx_exit()
    }

    #[inline]
    fn mtx_state() -> (u32, u8) {
        cpu::mtx_state()
    }

    #[inline]
    fn set_mtx_state(count: u32, oldspl: u8) {
        cpu::set_mtx_state(count, oldspl);
    }
}
