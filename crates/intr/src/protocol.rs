//! # The framework's lock-free protocols, as small types
//!
//! Each protocol of the interrupt framework that several CPUs run against each other lives
//! here, in a type the framework uses and the model checkers run as it is:
//!
//! * [`MaskCount`] — a source's mask references and its *missed* flag in one word: an arrival
//!   while masked is remembered atomically with respect to the unmask that must re-raise it.
//! * [`RunGate`] — a source's (or soft interrupt's) *dead* flag and its count of running
//!   handlers in one word: once [`RunGate::close`] returned, no handler enters; the
//!   disestablisher waits for [`RunGate::is_idle`].
//! * [`PoolCore`] — the pooled model's coordination (Baldwin's 2010 proposal): per-CPU queues of pending
//!   handlers, each CPU's *owner* word (the ithread serving it), the idle list, and the *need*
//!   flags; assignment, draining, giving up a CPU, divorce, migration to a CPU in need,
//!   `hwi_sched` requeues and retirement. `pool.rs` adds only the threads around it.
//!
//! Under `--cfg loom` the atomics, cells and spin hints here are loom's, and under
//! `--cfg shuttle` shuttle's, so that `tests/loom_protocols.rs` and `tests/shuttle_pool.rs`
//! check this very code (commands in the README). Everything else in the crate keeps the
//! core atomics.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

#[cfg(not(any(loom, shuttle)))]
pub(crate) use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
#[cfg(all(shuttle, not(loom)))]
pub(crate) use shuttle::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

/// The busy-wait hint of every spin loop here (`pause` on x86; a yield to the model checker).
#[inline(always)]
fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(all(shuttle, not(loom)))]
    shuttle::thread::yield_now();
    #[cfg(not(any(loom, shuttle)))]
    core::hint::spin_loop();
}

/// A cell whose accesses the model checker sees (loom's `UnsafeCell` under loom).
struct Cell<T> {
    #[cfg(loom)]
    v: loom::cell::UnsafeCell<T>,
    #[cfg(not(loom))]
    v: core::cell::UnsafeCell<T>,
}

impl<T> Cell<T> {
    #[cfg(not(loom))]
    const fn new(v: T) -> Self {
        Cell { v: core::cell::UnsafeCell::new(v) }
    }
    #[cfg(loom)]
    fn new(v: T) -> Self {
        Cell { v: loom::cell::UnsafeCell::new(v) }
    }

    /// # Safety
    /// The caller has exclusive access (holds the lock that guards the cell).
    unsafe fn with_mut<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        #[cfg(loom)]
        {
            // SAFETY: exclusive per the contract.
            self.v.with_mut(|p| f(unsafe { &mut *p }))
        }
        #[cfg(not(loom))]
        {
            // SAFETY: exclusive per the contract.
            f(unsafe { &mut *self.v.get() })
        }
    }
}

/// Test hook: the lock as a type of its own, for the models.
#[doc(hidden)]
pub struct TestLock<T>(Lock<T>);

impl<T> TestLock<T> {
    /// A lock around `v`.
    #[cfg(loom)]
    pub fn new(v: T) -> Self {
        TestLock(Lock::new(v))
    }
    /// Runs `f` under the lock.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        self.0.with(f)
    }
}

/// A test-and-set spin lock over the protocol atomics. In the kernel it is taken with
/// interrupts disabled (the pool's callers hold an `IntrOff`), so it is a leaf: nothing else
/// is acquired while it is held.
pub(crate) struct Lock<T> {
    held: AtomicBool,
    cell: Cell<T>,
}

// SAFETY: the cell is reached only under `held` (acquire/release), which serializes access.
unsafe impl<T: Send> Sync for Lock<T> {}
// SAFETY: as above; owning the lock owns the value.
unsafe impl<T: Send> Send for Lock<T> {}

impl<T> Lock<T> {
    #[cfg(not(loom))]
    pub(crate) const fn new(v: T) -> Self {
        Lock { held: AtomicBool::new(false), cell: Cell::new(v) }
    }
    #[cfg(loom)]
    pub(crate) fn new(v: T) -> Self {
        Lock { held: AtomicBool::new(false), cell: Cell::new(v) }
    }

    /// Runs `f` with the value, the lock held.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // The first attempt is outside the wait loop, which is marked cold: the uncontended
        // acquisition falls straight through (no jump over the loop, no alignment padding).
        if self.held.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            core::hint::cold_path();
            loop {
                while self.held.load(Ordering::Relaxed) {
                    spin_hint();
                }
                if self.held.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    break;
                }
            }
        }
        // SAFETY: we hold the lock.
        let r = unsafe { self.cell.with_mut(f) };
        self.held.store(false, Ordering::Release);
        r
    }
}

// ---------------------------------------------------------------------------------------
// Mask count
// ---------------------------------------------------------------------------------------

const MISSED: u32 = 1 << 31;
const REFS: u32 = !MISSED;

/// What [`MaskCount::unmask`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unmask {
    /// This was the last reference: the caller unmasks the hardware.
    pub last: bool,
    /// An arrival was absorbed while masked (and the flag is now clear): the caller re-raises
    /// it, once.
    pub missed: bool,
}

/// A source's mask references and *missed* flag in one word (bit 31 missed, bits 0..31 the
/// count). Every handler instance that needs the source masked holds a reference (Baldwin:
/// "a simple reference count with atomic ops"); the source is masked while the count is
/// non-zero. An arrival while masked sets *missed* in the same compare-and-swap that checks
/// the count, and the last unmask clears the count and takes *missed* in one step, so an
/// arrival is either absorbed and re-raised exactly once, or sees the source unmasked and is
/// delivered — never lost between the two.
pub struct MaskCount {
    word: AtomicU32,
}

impl Default for MaskCount {
    fn default() -> Self {
        Self::new()
    }
}

impl MaskCount {
    /// Unmasked, nothing missed.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        MaskCount { word: AtomicU32::new(0) }
    }
    /// Unmasked, nothing missed.
    #[cfg(loom)]
    pub fn new() -> Self {
        MaskCount { word: AtomicU32::new(0) }
    }

    /// Takes a reference; true if it is the first (the caller masks the hardware).
    #[inline]
    pub fn mask(&self) -> bool {
        let old = self.word.fetch_add(1, Ordering::AcqRel);
        assert!(old & REFS != REFS, "mask count overflow");
        old & REFS == 0
    }

    /// Drops a reference (see [`Unmask`]). Panics if none is held.
    #[inline]
    pub fn unmask(&self) -> Unmask {
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            let refs = w & REFS;
            assert!(refs > 0, "unmask of an unmasked source");
            let new = if refs == 1 { 0 } else { w - 1 };
            match self.word.compare_exchange_weak(w, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Unmask { last: refs == 1, missed: refs == 1 && w & MISSED != 0 },
                Err(x) => w = x,
            }
        }
    }

    /// An interrupt arrived: if the source is masked, remembers it for the last unmask and
    /// answers true (absorbed); otherwise false (deliver it).
    #[inline]
    pub fn absorb(&self) -> bool {
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            if w & REFS == 0 {
                return false;
            }
            if w & MISSED != 0 {
                return true;
            }
            match self.word.compare_exchange_weak(w, w | MISSED, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(x) => w = x,
            }
        }
    }

    /// References held now.
    #[inline]
    pub fn refs(&self) -> u32 {
        self.word.load(Ordering::Acquire) & REFS
    }

    /// Whether an absorbed arrival waits for the unmask.
    pub fn missed(&self) -> bool {
        self.word.load(Ordering::Acquire) & MISSED != 0
    }
}

// ---------------------------------------------------------------------------------------
// Run gate
// ---------------------------------------------------------------------------------------

const CLOSED: u32 = 1 << 31;

/// A handler's *dead* flag and running count in one word: [`RunGate::enter`] fails once
/// [`RunGate::close`] has run, so after `close` returns and [`RunGate::is_idle`] has been seen
/// true, the handler never runs again (the disestablish protocol). Checking *dead* and
/// counting oneself in are one compare-and-swap: no handler can slip in between.
pub struct RunGate {
    word: AtomicU32,
}

impl Default for RunGate {
    fn default() -> Self {
        Self::new()
    }
}

impl RunGate {
    /// Open, nothing running.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        RunGate { word: AtomicU32::new(0) }
    }
    /// Open, nothing running.
    #[cfg(loom)]
    pub fn new() -> Self {
        RunGate { word: AtomicU32::new(0) }
    }

    /// Counts one run in, unless the gate is closed (then false: do not run).
    #[inline]
    pub fn enter(&self) -> bool {
        let mut w = self.word.load(Ordering::Acquire);
        // The first attempt is outside the retry loop, which is marked cold: an open gate's
        // entry falls straight through (no alignment padding before the loop).
        if w & CLOSED == 0 {
            match self.word.compare_exchange_weak(w, w + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(x) => w = x,
            }
        }
        core::hint::cold_path();
        loop {
            if w & CLOSED != 0 {
                return false;
            }
            match self.word.compare_exchange_weak(w, w + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(x) => w = x,
            }
        }
    }

    /// Counts a run out (after a successful [`RunGate::enter`]).
    #[inline]
    pub fn exit(&self) {
        let old = self.word.fetch_sub(1, Ordering::Release);
        debug_assert!(old & !CLOSED > 0, "RunGate::exit without enter");
    }

    /// Closes the gate: no [`RunGate::enter`] succeeds from now on.
    pub fn close(&self) {
        self.word.fetch_or(CLOSED, Ordering::AcqRel);
    }

    /// Whether the gate is closed.
    #[inline]
    pub fn is_closed(&self) -> bool {
        self.word.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Whether no run is in progress (what the closer waits for).
    pub fn is_idle(&self) -> bool {
        self.word.load(Ordering::Acquire) & !CLOSED == 0
    }
}

// ---------------------------------------------------------------------------------------
// The pool
// ---------------------------------------------------------------------------------------

/// The no-owner value of a CPU's owner word.
pub const NO_OWNER: usize = 0;

/// Entries a drained pool queue keeps allocated (more is given back when it drains).
pub const QUEUE_KEPT: usize = 64;

struct PoolCpu<T> {
    queue: Lock<VecDeque<T>>,
    /// The worker serving this CPU ([`NO_OWNER`]: none). Claimed and given up by
    /// compare-and-swap, so at most one worker serves a CPU, and a worker that lost it (a
    /// divorce) never clears its successor's claim.
    owner: AtomicUsize,
}

impl<T> PoolCpu<T> {
    #[cfg(not(loom))]
    const fn new() -> Self {
        PoolCpu { queue: Lock::new(VecDeque::new()), owner: AtomicUsize::new(NO_OWNER) }
    }
    #[cfg(loom)]
    fn new() -> Self {
        PoolCpu { queue: Lock::new(VecDeque::new()), owner: AtomicUsize::new(NO_OWNER) }
    }
}

/// The idle list and the CPUs in need, under one lock: a CPU that finds no idle worker
/// records its need in the same critical section in which it found the list empty, and a
/// worker going idle looks for a CPU in need in the same critical section in which it would
/// join the list — so "no worker idle" and "a CPU in need" are never both missed.
struct Idle<W> {
    workers: Vec<W>,
    /// Bit per CPU (the first 128): it has queued work and found no idle worker.
    need: u128,
}

/// A worker of the pool, as the core sees it: a non-zero identity (its owner-word value).
pub trait Worker: Clone {
    /// The identity (never [`NO_OWNER`]).
    fn id(&self) -> usize;
}

/// What a worker does next ([`PoolCore::release`], [`PoolCore::go_idle`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Serve this CPU again: work raced in after the queue looked empty (it owns it again).
    Again(usize),
    /// Serve this CPU, which was in need (it owns it now): a migration.
    Migrate(usize),
    /// Nothing to do: the worker is on the idle list now; it waits to be woken.
    Idle,
}

/// The pooled model's coordination (see the module documentation). `T` is a queued handler
/// instance, `W` a worker (an ithread); `N` CPUs (the kernel: `MAX_CPUS`; the models: 2).
///
/// **Invariants** (what the models check): every queued item is run once; a CPU with queued
/// work has an owner, or a worker was just made its owner and is being woken, or its need bit
/// is set and no worker is idle; an owner word changes only by compare-and-swap from the
/// value its writer expects.
///
/// **Why no work is stranded.** An item is pushed, then the CPU's owner word is read; an owner
/// giving the CPU up clears the word, then looks at the queue. Each side writes, then reads
/// what the other writes (under the queue lock on one side), so one of them sees the other:
/// the owner takes the CPU back, or the enqueuer assigns a worker.
pub struct PoolCore<T, W, const N: usize> {
    cpus: [PoolCpu<T>; N],
    idle: Lock<Idle<W>>,
}

impl<T, W, const N: usize> Default for PoolCore<T, W, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, W, const N: usize> PoolCore<T, W, N> {
    const FITS: () = assert!(N <= 128, "the need set holds 128 CPUs");

    /// Empty queues, no owner, no worker.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        let () = Self::FITS;
        PoolCore {
            cpus: [const { PoolCpu::new() }; N],
            idle: Lock::new(Idle { workers: Vec::new(), need: 0 }),
        }
    }
    /// Empty queues, no owner, no worker.
    #[cfg(loom)]
    pub fn new() -> Self {
        let () = Self::FITS;
        PoolCore {
            cpus: core::array::from_fn(|_| PoolCpu::new()),
            idle: Lock::new(Idle { workers: Vec::new(), need: 0 }),
        }
    }
}

impl<T, W: Worker, const N: usize> PoolCore<T, W, N> {
    /// Interrupt side: queues `item` on `cpu` and makes sure the CPU has an owner
    /// ([`PoolCore::assign`]).
    #[inline(always)]
    pub fn enqueue(&self, cpu: usize, item: T) -> Option<(usize, W)> {
        self.cpus[cpu].queue.with(|q| q.push_back(item));
        self.assign(cpu)
    }

    /// `hwi_sched` from a worker that may have been divorced meanwhile: back of `cpu`'s queue,
    /// and an owner for it if it has none (the caller wakes the returned worker).
    pub fn requeue(&self, cpu: usize, item: T) -> Option<(usize, W)> {
        self.enqueue(cpu, item)
    }

    /// Makes sure `cpu`, which has queued work, has an owner: `Some((cpu, w))` if idle worker
    /// `w` was just made its owner (the caller wakes it, bound to that CPU); `None` if it has
    /// an owner, or no worker is idle (its need bit is set: the next worker to go idle serves
    /// it). Rarely the worker taken ends up owning another CPU, one in need: the answer names
    /// that CPU.
    #[inline(always)]
    pub fn assign(&self, cpu: usize) -> Option<(usize, W)> {
        let c = &self.cpus[cpu];
        if c.owner.load(Ordering::SeqCst) != NO_OWNER {
            return None;
        }
        let w = self.idle.with(|s| match s.workers.pop() {
            Some(w) => Some(w),
            None => {
                s.need |= 1 << cpu;
                None
            }
        })?;
        if c.owner.compare_exchange(NO_OWNER, w.id(), Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            return Some((cpu, w));
        }
        // Someone else claimed it meanwhile; the worker goes back, or serves a CPU in need.
        match self.go_idle(&w) {
            Next::Migrate(d) | Next::Again(d) => Some((d, w)),
            Next::Idle => None,
        }
    }

    /// Worker side: the next item of `cpu` while `me` owns it (`None`: the queue is empty or
    /// `me` was divorced).
    pub fn next(&self, cpu: usize, me: &W) -> Option<T> {
        let c = &self.cpus[cpu];
        if c.owner.load(Ordering::SeqCst) != me.id() {
            return None;
        }
        c.queue.with(|q| q.pop_front())
    }

    /// A worker (identity `me`) whose handler is about to block: if it owns `cpu`, it is
    /// divorced (the owner word cleared by compare-and-swap) and, if work is queued, an idle
    /// worker takes the queue (the caller wakes it). Returns (divorced, worker to wake and its
    /// CPU).
    pub fn divorce(&self, cpu: usize, me: usize) -> (bool, Option<(usize, W)>) {
        let c = &self.cpus[cpu];
        // Every thread that sleeps asks: one load answers the ones that serve nothing.
        if me == NO_OWNER
            || c.owner.load(Ordering::SeqCst) != me
            || c.owner.compare_exchange(me, NO_OWNER, Ordering::SeqCst, Ordering::SeqCst).is_err()
        {
            return (false, None);
        }
        let more = c.queue.with(|q| !q.is_empty());
        (true, if more { self.assign(cpu) } else { None })
    }

    /// Whether `me` owns `cpu` now.
    pub fn owns(&self, cpu: usize, me: &W) -> bool {
        self.cpus[cpu].owner.load(Ordering::SeqCst) == me.id()
    }

    /// The worker's queue looked empty: give `cpu` up — only if it is still its owner (a
    /// divorced worker leaves its successor's claim alone) — and take it back at once if work
    /// raced in (`Some(Next::Again(cpu))`). `None`: the worker owns nothing now; it goes on with
    /// [`PoolCore::go_idle`] (or retires).
    pub fn release(&self, cpu: usize, me: &W) -> Option<Next> {
        let c = &self.cpus[cpu];
        if c.owner.compare_exchange(me.id(), NO_OWNER, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            let more = c.queue.with(|q| {
                // A burst grew the queue: give its memory back once it is drained (the
                // interrupt side may allocate again, with interrupts disabled, as it grew).
                if q.is_empty() && q.capacity() > QUEUE_KEPT {
                    q.shrink_to(QUEUE_KEPT);
                }
                !q.is_empty()
            });
            if more && c.owner.compare_exchange(NO_OWNER, me.id(), Ordering::SeqCst, Ordering::SeqCst).is_ok()
            {
                return Some(Next::Again(cpu));
            }
        }
        None
    }

    /// A worker that owns no CPU (its CPU given up, a helper back, a new worker): serves a CPU
    /// in need if one is recorded (`Migrate(d)`: it owns `d` now), else joins the idle list
    /// (`Idle`) — both decided in one critical section with [`PoolCore::assign`]'s.
    pub fn go_idle(&self, me: &W) -> Next {
        loop {
            let d = self.idle.with(|s| {
                if s.need == 0 {
                    s.workers.push(me.clone());
                    return None;
                }
                let d = s.need.trailing_zeros() as usize;
                s.need &= !(1 << d);
                Some(d)
            });
            let Some(d) = d else { return Next::Idle };
            // A CPU in need that has an owner by now is served already: look again.
            if self.cpus[d]
                .owner
                .compare_exchange(NO_OWNER, me.id(), Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return Next::Migrate(d);
            }
        }
    }

    /// Takes an idle worker off the list (to retire it, or to send it to help).
    pub fn take_idle(&self) -> Option<W> {
        self.idle.with(|s| s.workers.pop())
    }

    /// Idle workers now.
    pub fn idle_count(&self) -> usize {
        self.idle.with(|s| s.workers.len())
    }

    /// Items queued on `cpu`.
    pub fn queued(&self, cpu: usize) -> usize {
        self.cpus[cpu].queue.with(|q| q.len())
    }

    /// The owner word of `cpu` ([`NO_OWNER`]: none).
    pub fn owner(&self, cpu: usize) -> usize {
        self.cpus[cpu].owner.load(Ordering::SeqCst)
    }

    /// Whether `cpu` is recorded as in need.
    pub fn needs(&self, cpu: usize) -> bool {
        self.idle.with(|s| s.need & (1 << cpu) != 0)
    }

    /// Removes and returns the first item of `cpu`'s queue that `pred` accepts (a helper
    /// taking stealable work; the owner is not involved).
    pub fn steal(&self, cpu: usize, pred: impl Fn(&T) -> bool) -> Option<T> {
        self.cpus[cpu].queue.with(|q| {
            let i = q.iter().position(pred);
            i.and_then(|i| q.remove(i))
        })
    }
}
