//! Baseline primitives for the benchmarks (`kernel/src/bench/`): the exact instruction
//! sequences the kernel's locks are compared against, as inline assembly so the figures do
//! not move with the compiler's code generation.
//!
//! * [`cli_spin_enter`] / [`cli_spin_exit`]: the classic interrupt-disabling spinlock,
//!   `pushf; cli; lock cmpxchg` to enter, `mov; popf` to exit.
//! * [`lock_cmpxchg_acquire`] / [`lock_cmpxchg_release`]: one `lock cmpxchg` each on one
//!   word, 0 → 1 and 1 → 0 — the floor of any lock with an atomic enter and exit.
//! * [`body_1000`]: an interrupt handler body of exactly 1,000 instructions
//!   (`intr.rate.body1000`).
//!
//! They are baselines, not locks for real use: the enter loop spins with interrupts
//! disabled and no backoff.

use core::arch::asm;
use core::marker::PhantomData;
use core::sync::atomic::AtomicU32;

/// RFLAGS as [`cli_spin_enter`] found them; [`cli_spin_exit`] restores them.
///
/// Opaque (only `cli_spin_enter` makes one) and not `Send` (flags belong to one CPU).
#[must_use = "pass it to cli_spin_exit, which restores the interrupt flag"]
pub struct SavedFlags {
    rflags: u64,
    _one_cpu: PhantomData<*const ()>,
}

/// Disables interrupts (saving RFLAGS) and takes `lock` (0 = free, 1 = held):
/// `pushfq; pop; cli; lock cmpxchg`, spinning with `pause` while it is held.
///
/// Use the token with [`cli_spin_exit`] in LIFO order. Out of order, the exit restores an
/// interrupt flag from another time — it can enable interrupts early, the same power
/// `x86_64::instructions::interrupts::enable` already gives safe code; the other flags it
/// restores (DF, AC, TF clear, as the Rust ABI and the kernel keep them) are harmless.
#[inline(always)]
pub fn cli_spin_enter(lock: &AtomicU32) -> SavedFlags {
    let rflags: u64;
    // The asm pushes and pops one word of stack (not `nostack`; no red zone on this target);
    // eax is declared clobbered and the flags are not claimed preserved.
    // SAFETY: `cli` only disables interrupts; `lock cmpxchg` and the loads are atomic
    // accesses to `lock`, a live `AtomicU32`, as Rust's own atomics make.
    unsafe {
        asm!(
            "pushfq",
            "pop {flags}",
            "cli",
            "2:",
            "xor eax, eax",
            "lock cmpxchg dword ptr [{lock}], {one:e}",
            "je 4f",
            "3:",
            "pause",
            "cmp dword ptr [{lock}], 0",
            "jne 3b",
            "jmp 2b",
            "4:",
            lock = in(reg) lock.as_ptr(),
            one = in(reg) 1u32,
            flags = out(reg) rflags,
            out("eax") _,
        );
    }
    SavedFlags { rflags, _one_cpu: PhantomData }
}

/// Releases `lock` and restores the RFLAGS saved by [`cli_spin_enter`]: `mov; push; popfq`.
#[inline(always)]
pub fn cli_spin_exit(lock: &AtomicU32, saved: SavedFlags) {
    // The store is x86's release store (what `AtomicU32::store(0, Release)` emits);
    // `push`/`popfq` use one word of stack. Only IF may change, back to its value at enter.
    // SAFETY: aligned store to a live `AtomicU32`; RFLAGS are reloaded exactly as
    // `cli_spin_enter` saved them on this CPU (the token is opaque and not `Send`).
    unsafe {
        asm!(
            "mov dword ptr [{lock}], 0",
            "push {flags}",
            "popfq",
            lock = in(reg) lock.as_ptr(),
            flags = in(reg) saved.rflags,
        );
    }
}

/// `lock cmpxchg` of `word` from 0 to 1; whether it was 0.
#[inline(always)]
pub fn lock_cmpxchg_acquire(word: &AtomicU32) -> bool {
    let ok: u8;
    // SAFETY: one atomic read-modify-write on a live `AtomicU32`; eax is declared clobbered.
    unsafe {
        asm!(
            "xor eax, eax",
            "lock cmpxchg dword ptr [{w}], {one:e}",
            "sete {ok}",
            w = in(reg) word.as_ptr(),
            one = in(reg) 1u32,
            ok = out(reg_byte) ok,
            out("eax") _,
        );
    }
    ok != 0
}

/// `lock cmpxchg` of `word` from 1 to 0; whether it was 1.
#[inline(always)]
pub fn lock_cmpxchg_release(word: &AtomicU32) -> bool {
    let ok: u8;
    // SAFETY: one atomic read-modify-write on a live `AtomicU32`; eax is declared clobbered.
    unsafe {
        asm!(
            "mov eax, 1",
            "lock cmpxchg dword ptr [{w}], {zero:e}",
            "sete {ok}",
            w = in(reg) word.as_ptr(),
            zero = in(reg) 0u32,
            ok = out(reg_byte) ok,
            out("eax") _,
        );
    }
    ok != 0
}

/// The instructions [`body_1000`] executes.
pub const BODY_INSTRUCTIONS: u64 = 1000;

/// A handler body of exactly [`BODY_INSTRUCTIONS`] instructions: `mov ecx, 499`, then 499
/// times `dec ecx; jnz`, then `nop` (1 + 998 + 1). The `intr.rate.body1000` benchmark checks
/// the count under icount in the boot that uses it (the compiler could add moves around it).
#[inline(always)]
pub fn body_1000() {
    // SAFETY: the asm touches only ecx (declared clobbered) and the flags (not claimed
    // preserved); no memory, no stack.
    unsafe {
        asm!("mov ecx, 499", "2:", "dec ecx", "jnz 2b", "nop", out("ecx") _, options(nomem, nostack));
    }
}
