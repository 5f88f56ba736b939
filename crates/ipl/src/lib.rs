//! # Interrupt priority levels (SPL), the deferred model
//!
//! Levels, lowest first: `NONE < SOFTCLOCK < SOFTBIO < SOFTNET < SOFTSERIAL < VM < SCHED <
//! HIGH` (clock-class hardware sits at `SCHED`, serial/IPI-class at `HIGH`). Each level maps
//! onto a scheduling priority at the top of the scheduler's range (`sched::Priority::of_ipl`),
//! where the interrupt threads run.
//!
//! ## Protocol
//!
//! * **Raising is a write.** [`SplState::splraise`] reads this CPU's level and, if the new one is
//!   higher, stores it — one `%gs`-relative load and store on x86_64 ([`IplCpu`]); no `cli`,
//!   no APIC access. Interrupts stay enabled in hardware.
//! * **Deferral.** Every interrupt's entry code calls [`SplState::intr_arrive`] with its vector
//!   (interrupts disabled). If the vector's level is at or below the CPU's level, the vector is
//!   recorded in this CPU's [`PendingQueue`] and the entry code acknowledges the hardware (EOI;
//!   a level-triggered source must also be masked by the arch hook) and returns without running
//!   the handler. Otherwise the handler runs at the vector's level and [`SplState::intr_done`]
//!   puts the old level back.
//! * **Replay.** [`SplState::splx`] stores the lower level, then checks one per-CPU word of
//!   pending levels against a table entry; only if something is pending above the new level
//!   does it take the slow path, which disables interrupts and replays the pending vectors
//!   highest level first, each at its own level, through [`SplEnv::replay`] (the same
//!   interrupt path as a live interrupt: `intr::path`).
//! * **Preemption.** A thread is never preempted while its CPU is above `NONE` (the kernel's
//!   interrupt-exit hook asks [`SplState::may_preempt`]). A reschedule request that arrives
//!   then is recorded as the pseudo-pending bit `PREEMPT`, which only a drop to `NONE`
//!   replays, through [`SplEnv::preempt`]. So a thread keeps its CPU — and this CPU's level stays
//!   its own — from `splraise` to `splx`, and a per-CPU level is the thread's level.
//! * **Spin mutex nesting** (NetBSD's `ci_mtx_count` / `ci_mtx_oldspl`, per-CPU words of the
//!   machine's, [`IplCpu::mtx_enter`]): [`SplState::spin_enter`] raises the level and
//!   remembers the level from before the *outermost* spin mutex; [`SplState::spin_exit`]
//!   restores it when the last one is released.
//!   Spin mutexes may be released in any order; the level only drops at the end.
//! * Per-CPU state is touched only by its own CPU: the level through [`IplCpu`], the pending
//!   queue with interrupts disabled (entry code, replay) or by atomic loads (the `splx` check).
#![no_std]

use core::fmt;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use machine::{IntrOff, Machine, MAX_CPUS};

/// An interrupt priority level.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
#[repr(u8)]
pub enum Ipl {
    /// Nothing blocked; threads may be preempted.
    None = 0,
    /// Soft clock interrupts (callouts).
    SoftClock = 1,
    /// Soft block-I/O completion.
    SoftBio = 2,
    /// Soft network processing.
    SoftNet = 3,
    /// Soft serial line processing.
    SoftSerial = 4,
    /// Virtual memory and most hardware devices: the highest level with interrupt threads.
    Vm = 5,
    /// The clock and the scheduler.
    Sched = 6,
    /// Everything (serial-class hardware, IPIs).
    High = 7,
}

/// Number of levels.
pub const NIPL: usize = 8;

/// All levels, lowest first.
pub const ALL: [Ipl; NIPL] =
    [Ipl::None, Ipl::SoftClock, Ipl::SoftBio, Ipl::SoftNet, Ipl::SoftSerial, Ipl::Vm, Ipl::Sched, Ipl::High];

impl Ipl {
    /// The level from its number.
    pub const fn from_u8(v: u8) -> Option<Ipl> {
        if (v as usize) < NIPL {
            Some(ALL[v as usize])
        } else {
            None
        }
    }

    /// The level's name as NetBSD spells it (`IPL_VM`).
    pub const fn name(self) -> &'static str {
        match self {
            Ipl::None => "IPL_NONE",
            Ipl::SoftClock => "IPL_SOFTCLOCK",
            Ipl::SoftBio => "IPL_SOFTBIO",
            Ipl::SoftNet => "IPL_SOFTNET",
            Ipl::SoftSerial => "IPL_SOFTSERIAL",
            Ipl::Vm => "IPL_VM",
            Ipl::Sched => "IPL_SCHED",
            Ipl::High => "IPL_HIGH",
        }
    }
}

impl fmt::Display for Ipl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a CPU provides for SPL: its current level in per-CPU memory, reached without
/// migration windows (one `%gs`-relative instruction on x86_64).
pub trait IplCpu: Machine {
    /// This CPU's level.
    fn ipl_get() -> u8;
    /// Sets this CPU's level.
    fn ipl_set(level: u8);
    /// This CPU's level as the machine word it is kept in (below 256). Lets `splraise` hand
    /// the word to `splx` without narrowing and widening it again (x86: one `%gs` load).
    #[inline(always)]
    fn ipl_word() -> usize {
        Self::ipl_get() as usize
    }
    /// Sets this CPU's level from such a word (a level, below 256).
    #[inline(always)]
    fn ipl_set_word(level: usize) {
        Self::ipl_set(level as u8)
    }
    /// This CPU's pending-levels word (bit `l`: something is pending at level `l`; bit 0: a
    /// deferred preemption). Like the level, it lives in per-CPU memory reached without a
    /// migration window (`%gs`-relative on x86_64), so `splx` tests it with one load.
    fn pending_get() -> u32;
    /// Sets bits of this CPU's pending word. Must be one instruction with respect to
    /// interrupts on this CPU (x86: `or %gs:..`); only this CPU writes the word.
    fn pending_or(bits: u32);
    /// Clears the bits of this CPU's pending word that are not in `mask` (x86: `and %gs:..`).
    fn pending_and(mask: u32);
    /// Counts one more spin mutex held on this CPU; the outermost (count 0 before) saves
    /// `old`, the level from before it (NetBSD's `ci_mtx_count` / `ci_mtx_oldspl`, per-CPU
    /// words reached without a migration window: x86 `sub %gs:..` and a conditional store).
    /// Each update must be one instruction with respect to this CPU's interrupts.
    fn mtx_enter(old: u8);
    /// Counts one spin mutex less; returns the saved level when it was the outermost. The
    /// saved level is read before the count drops (an interrupt's spin mutex may save its own
    /// level in the slot once the count is 0).
    fn mtx_exit() -> Option<u8>;
    /// Spin mutexes held on this CPU, and the saved level.
    fn mtx_state() -> (u32, u8);
    /// Sets both (interrupts disabled: the pinned model's borrow).
    fn set_mtx_state(count: u32, oldspl: u8);
}

/// A saved level, returned by `splraise` and consumed by `splx`.
#[must_use = "a raised SPL must be lowered with splx"]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Spl(usize);

impl Spl {
    /// The saved level.
    pub fn ipl(self) -> Ipl {
        Ipl::from_u8(self.0 as u8).unwrap_or(Ipl::High)
    }
}

/// `levels` bit of the pseudo-pending preemption (replayed only at `IPL_NONE`).
const PREEMPT_BIT: u32 = 1 << 0;

/// `ABOVE[l]`: the `levels` bits that a drop to level `l` must replay. 256 entries (those
/// past `IPL_HIGH` are 0) so that indexing by the saved level byte needs no bounds check.
static ABOVE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut l = 0;
    while l < NIPL {
        // Bits l+1 ..= 7 are levels above l.
        t[l] = (0xFFu32 << (l + 1)) & 0xFF;
        l += 1;
    }
    t[0] |= PREEMPT_BIT;
    t
};

/// `ABOVE[l]` for a saved level word `l`.
#[inline(always)]
fn above(l: usize) -> u32 {
    debug_assert!(l < ABOVE.len());
    // SAFETY: `l` is a saved level: an `Spl` holds only values read from `IplCpu::ipl_word`,
    // or built here from a `u8`, and a CPU's level word only ever holds a level written from
    // a `u8` (`ipl_set`) or from such a word (`ipl_set_word`): below 256, the table's length.
    unsafe { *ABOVE.get_unchecked(l) }
}

/// This CPU's index, masked to the table size so the compiler drops the bounds check on the
/// `splx` fast path (`MAX_CPUS` is a power of two; CPU indices are below it).
#[inline(always)]
fn this_cpu<M: Machine>() -> usize {
    M::cpu_index() & (MAX_CPUS - 1)
}

/// Vector table value of a vector that is never deferred (e.g. the panic-stop IPI).
pub const NEVER_DEFER: u8 = 0xFF;

/// One CPU's deferred interrupts: a bit per vector and a summary bit per level.
pub struct PendingQueue {
    vectors: [AtomicU64; 4],
    /// Deferred interrupts recorded (statistics).
    deferred: AtomicU64,
    /// Deferred interrupts replayed (statistics).
    replayed: AtomicU64,
    /// Deferred interrupts that found their vector already pending and merged into that
    /// replay (statistics).
    merged: AtomicU64,
}

impl PendingQueue {
    const fn new() -> Self {
        PendingQueue {
            vectors: [const { AtomicU64::new(0) }; 4],
            deferred: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            merged: AtomicU64::new(0),
        }
    }
}

/// Counters of one CPU's SPL activity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SplStats {
    /// Interrupts that arrived at or below the CPU's level and were recorded.
    pub deferred: u64,
    /// Recorded interrupts later run by `splx`.
    pub replayed: u64,
    /// Recorded interrupts whose vector was already pending: they merged into that one
    /// replay, as a second edge merges into a vector already pending in the LAPIC's IRR.
    pub merged: u64,
}

/// What the entry code does with an interrupt that arrived.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Arrival {
    /// Run the handler now; call `intr_done(old)` afterwards.
    Run {
        /// The level to restore.
        old: u8,
    },
    /// Recorded as pending: acknowledge the hardware and return.
    Deferred,
}

/// The environment the SPL layer runs in: the machine's per-CPU words, and the two calls up
/// into the layers above that the deferred model needs. The lowest of the portable crates'
/// environment traits; the scheduler's (`sched::SchedEnv`), the locks' (`sync::Env`) and the
/// interrupt framework's (`intr::IntrEnv`) extend it, and a kernel implements them all on one
/// type (`KernelEnv`; `HostEnv` on the host).
pub trait SplEnv: Sized + Send + Sync + 'static {
    /// The machine.
    type M: IplCpu;
    /// Runs one deferred vector through the interrupt path (interrupts disabled, the level
    /// already set to the vector's). `intr::path::replay` is the portable implementation.
    fn replay(vector: u8, io: &IntrOff);
    /// A deferred preemption is due (interrupts enabled, level `IPL_NONE`): the scheduler's
    /// `preempt_check`.
    fn preempt();
}

/// The SPL state of every CPU, and the level of every vector.
pub struct SplState<E: SplEnv> {
    cpus: [PendingQueue; MAX_CPUS],
    vector_ipl: [AtomicU8; 256],
    _e: core::marker::PhantomData<E>,
}

impl<E: SplEnv> Default for SplState<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: SplEnv> SplState<E> {
    /// No vector has a level yet (all run at `IPL_HIGH`).
    pub const fn new() -> Self {
        SplState {
            cpus: [const { PendingQueue::new() }; MAX_CPUS],
            vector_ipl: [const { AtomicU8::new(Ipl::High as u8) }; 256],
            _e: core::marker::PhantomData,
        }
    }

    /// Declares the level of a vector (`None`: never deferred).
    pub fn set_vector_ipl(&self, vector: u8, ipl: Option<Ipl>) {
        self.vector_ipl[vector as usize].store(ipl.map_or(NEVER_DEFER, |l| l as u8), Ordering::Release);
    }

    /// The level of a vector (`None`: never deferred).
    pub fn vector_ipl(&self, vector: u8) -> Option<Ipl> {
        Ipl::from_u8(self.vector_ipl[vector as usize].load(Ordering::Relaxed))
    }

    /// This CPU's level.
    #[inline]
    pub fn current(&self) -> Ipl {
        Ipl::from_u8(E::M::ipl_get()).unwrap_or(Ipl::High)
    }

    /// Raises this CPU's level to at least `ipl`; returns the previous level.
    #[inline(always)]
    pub fn splraise(&self, ipl: Ipl) -> Spl {
        let old = E::M::ipl_word();
        if (ipl as usize) > old {
            E::M::ipl_set_word(ipl as usize);
        }
        Spl(old)
    }

    /// Raises to `ipl` and returns a guard that lowers on drop.
    #[inline]
    pub fn raise(&self, ipl: Ipl) -> SplGuard<'_, E> {
        SplGuard { state: self, saved: self.splraise(ipl) }
    }

    /// Sets this CPU's level back to `s`, replaying interrupts left pending above it.
    #[inline(always)]
    pub fn splx(&self, s: Spl) {
        E::M::ipl_set_word(s.0);
        if E::M::pending_get() & above(s.0) != 0 {
            self.replay_pending(s.0 as u8);
        }
    }

    #[cold]
    fn replay_pending(&self, to: u8) {
        let preempt = {
            let io = E::M::intr_disable();
            self.replay_locked(to, &io)
        };
        if preempt {
            E::preempt();
        }
    }

    /// Replays everything pending above `to` (interrupts disabled, own CPU). Returns whether a
    /// deferred preemption was found (the caller takes it once interrupts are enabled).
    fn replay_locked(&self, to: u8, io: &IntrOff) -> bool {
        let mut preempt = false;
        {
            let q = &self.cpus[this_cpu::<E::M>()];
            loop {
                let pending = E::M::pending_get() & ABOVE[to as usize];
                if pending == 0 {
                    break;
                }
                let top = 31 - pending.leading_zeros();
                if top == 0 {
                    E::M::pending_and(!PREEMPT_BIT);
                    preempt = true;
                    continue;
                }
                match self.take_vector(q, top as u8) {
                    Some(v) => {
                        q.replayed.fetch_add(1, Ordering::Relaxed);
                        E::M::ipl_set(top as u8);
                        E::replay(v, io);
                        E::M::ipl_set(to);
                    }
                    None => {
                        E::M::pending_and(!(1 << top));
                    }
                }
            }
        }
        preempt
    }

    /// Replays the vectors pending at this CPU's current level, keeping the level (interrupts
    /// disabled, own CPU, in interrupt context at that level): for a dispatcher that runs a
    /// queue of work at its level and lets the arrivals the SPL layer deferred meanwhile go
    /// first — the pinned model's drain, whose queue would otherwise run ahead of them for as
    /// long as its handlers ask to run again. Highest-numbered first, as [`SplState::splx`]
    /// replays a level; vectors deferred while these run are replayed too. Returns how many
    /// ran.
    pub fn replay_level(&self, io: &IntrOff) -> u32 {
        let level = E::M::ipl_get();
        if level == 0 || E::M::pending_get() & (1 << level) == 0 {
            return 0;
        }
        let q = &self.cpus[this_cpu::<E::M>()];
        let before = q.replayed.load(Ordering::Relaxed);
        // As if the level came down by one and back: only this level's vectors are above
        // `level - 1` and pending (nothing above it can be pending while the CPU is at it).
        E::M::ipl_set(level - 1);
        let preempt = self.replay_locked(level - 1, io);
        E::M::ipl_set(level);
        debug_assert!(!preempt, "no deferred preemption above level 0");
        (q.replayed.load(Ordering::Relaxed) - before) as u32
    }

    /// Posts a software-raised vector (a soft interrupt) on this CPU: it is recorded as
    /// pending at its level and runs when the CPU's level is below it — at once if it already
    /// is (thread context), else at the `splx` or interrupt exit that lowers the level.
    pub fn post(&self, vector: u8) {
        let level = self.vector_ipl[vector as usize].load(Ordering::Relaxed);
        assert!(level != NEVER_DEFER, "post of vector {vector:#x}, which has no IPL");
        {
            let _io = E::M::intr_disable();
            let q = &self.cpus[this_cpu::<E::M>()];
            q.vectors[vector as usize / 64].fetch_or(1 << (vector % 64), Ordering::Relaxed);
            E::M::pending_or(1 << level);
        }
        let cur = E::M::ipl_get();
        if level > cur {
            self.splx(Spl(cur as usize));
        }
    }

    /// Removes one pending vector of `level` (the highest-numbered first), clearing the level's
    /// summary bit when it was the last. Interrupts disabled, own CPU.
    fn take_vector(&self, q: &PendingQueue, level: u8) -> Option<u8> {
        let mut found = None;
        let mut more = false;
        for w in (0..4).rev() {
            let mut bits = q.vectors[w].load(Ordering::Relaxed);
            while bits != 0 {
                let b = 63 - bits.leading_zeros() as usize;
                bits &= !(1u64 << b);
                let v = (w * 64 + b) as u8;
                if self.vector_ipl[v as usize].load(Ordering::Relaxed) == level {
                    if found.is_none() {
                        q.vectors[w].fetch_and(!(1u64 << b), Ordering::Relaxed);
                        found = Some(v);
                    } else {
                        more = true;
                        break;
                    }
                }
            }
            if more {
                break;
            }
        }
        if !more {
            E::M::pending_and(!(1 << level));
        }
        found
    }

    /// Called by interrupt entry code, interrupts disabled: run now, or record as pending.
    #[inline]
    pub fn intr_arrive(&self, vector: u8, _io: &IntrOff) -> Arrival {
        let level = self.vector_ipl[vector as usize].load(Ordering::Relaxed);
        let cur = E::M::ipl_get();
        if level == NEVER_DEFER {
            return Arrival::Run { old: cur };
        }
        if level <= cur {
            let q = &self.cpus[this_cpu::<E::M>()];
            let bit = 1 << (vector % 64);
            if q.vectors[vector as usize / 64].fetch_or(bit, Ordering::Relaxed) & bit != 0 {
                q.merged.fetch_add(1, Ordering::Relaxed);
            }
            E::M::pending_or(1 << level);
            q.deferred.fetch_add(1, Ordering::Relaxed);
            return Arrival::Deferred;
        }
        E::M::ipl_set(level);
        Arrival::Run { old: cur }
    }

    /// After a handler run by `intr_arrive`: restores the level. Hardware cannot have left
    /// anything pending above it (interrupts were disabled), but the handler may have posted
    /// soft interrupts: those above the restored level run now, still in interrupt context
    /// (their handlers only wake their threads). A deferred preemption found here is put back
    /// for the scheduler's interrupt-exit check.
    #[inline]
    pub fn intr_done(&self, old: u8, io: &IntrOff) {
        E::M::ipl_set(old);
        if E::M::pending_get() & ABOVE[old as usize] & !PREEMPT_BIT != 0 && self.replay_locked(old, io) {
            E::M::pending_or(PREEMPT_BIT);
        }
    }

    /// Whether the interrupted thread may be preempted now (its CPU is at `IPL_NONE`). If not,
    /// records a pending preemption for the drop to `IPL_NONE`.
    pub fn may_preempt(&self, _io: &IntrOff) -> bool {
        if E::M::ipl_get() == Ipl::None as u8 {
            return true;
        }
        E::M::pending_or(PREEMPT_BIT);
        false
    }

    /// Raises to `ipl` for a spin mutex; remembers the level before the outermost one.
    #[inline(always)]
    pub fn spin_enter(&self, ipl: Ipl) {
        let s = self.splraise(ipl);
        E::M::mtx_enter(s.0 as u8);
    }

    /// Releases one spin mutex's hold on the level; the outermost restores it.
    #[inline(always)]
    pub fn spin_exit(&self) {
        if let Some(s) = E::M::mtx_exit() {
            self.splx(Spl(s as usize));
        }
    }

    /// Spin mutexes held on this CPU.
    pub fn spin_count(&self) -> u32 {
        E::M::mtx_state().0
    }

    /// Takes this CPU's spin-mutex state (count and the level saved by the outermost) and
    /// starts a fresh one: for a thread lent this CPU on top of a context that holds spin
    /// mutexes (the pinned model), so that what the lent thread holds is counted alone.
    /// Interrupts disabled; [`SplState::spin_state_restore`] puts it back.
    pub fn spin_state_take(&self) -> (u32, u8) {
        let s = E::M::mtx_state();
        E::M::set_mtx_state(0, s.1);
        s
    }

    /// Puts back what [`SplState::spin_state_take`] took (interrupts disabled).
    pub fn spin_state_restore(&self, (count, oldspl): (u32, u8)) {
        E::M::set_mtx_state(count, oldspl);
    }

    /// Counters of `cpu`.
    pub fn stats(&self, cpu: usize) -> SplStats {
        let q = &self.cpus[cpu];
        SplStats {
            deferred: q.deferred.load(Ordering::Relaxed),
            replayed: q.replayed.load(Ordering::Relaxed),
            merged: q.merged.load(Ordering::Relaxed),
        }
    }

    /// Whether `vector` is pending on this CPU.
    pub fn is_pending(&self, vector: u8) -> bool {
        let q = &self.cpus[this_cpu::<E::M>()];
        q.vectors[vector as usize / 64].load(Ordering::Relaxed) & (1 << (vector % 64)) != 0
    }
}

/// Lowers the level on drop (the guard form of `splraise`/`splx`).
pub struct SplGuard<'a, E: SplEnv> {
    state: &'a SplState<E>,
    saved: Spl,
}

impl<E: SplEnv> SplGuard<'_, E> {
    /// The level that will be restored.
    pub fn saved(&self) -> Ipl {
        self.saved.ipl()
    }
}

impl<E: SplEnv> Drop for SplGuard<'_, E> {
    fn drop(&mut self) {
        self.state.splx(self.saved);
    }
}

#[cfg(test)]
mod tests;
