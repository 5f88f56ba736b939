//! Turnstiles: where threads block on mutexes and rwlocks, with priority inheritance.
//!
//! ## Protocol (NetBSD's `turnstile_lookup` / `turnstile_block` / `turnstile_wakeup`)
//! * **Hashed chains.** Active turnstiles (one per lock with blocked threads) hang off
//!   [`NCHAINS`] hash chains keyed by the lock's address, each behind its own spin lock
//!   (taken with interrupts disabled). A blocker or a releaser takes the chain lock of *its*
//!   lock ([`Turnstiles::lock`]), re-reads the lock word under it (the word's waiters bit is
//!   set and cleared only under that chain lock), and queues itself or grants.
//! * **Each thread brings its own turnstile** ([`crate::pi`]: Solaris, FreeBSD): the first
//!   blocker lends its turnstile to the lock, later ones donate theirs to its free list, a
//!   thread leaving the queue takes one back. Nothing is allocated under these locks.
//! * **Priority inheritance** crosses chains (A waits on B's lock while B waits on C's), so
//!   the lending graph — queues, owners, the threads' blocked-on and contested lists — also
//!   changes under one PI lock, taken after the chain lock (FreeBSD's `td_contested_lock`);
//!   the walk along a chain of owners reads it under the PI lock alone. Lock order: chain
//!   lock → PI lock → run-queue locks (through `Scheduler::set_priority`); the scheduler takes
//!   neither of the first two.
//! * **Hand-off.** The releaser, under the locks, chooses the heir (the most urgent waiter,
//!   first come among equals; a reader heir brings every waiting reader), writes the lock
//!   word for it, and links the granted threads into a wake list. After dropping the locks,
//!   still with interrupts disabled, it sets each one's `granted` flag (Release) and wakes it.
//!   A waiter queued itself and called `sleep_prepare` under the locks, and sleeps until it
//!   sees its flag (Acquire); the `fence(SeqCst)` pair in the scheduler keeps a stray wakeup
//!   from losing the grant (`tests/loom_turnstile.rs`).
//!
//! ## Why dereferencing an owner or a waiter is safe here
//! Locks hold owners' addresses, not references. The turnstile dereferences an owner only
//! under the locks, after it saw (in the lock word) that the owner still owns the lock *with
//! the waiters bit set*: such an owner cannot release without taking these locks, so it cannot
//! have released and exited. A queued waiter holds a strong count on itself, taken when it
//! blocks and given up by the releaser's wakeup.

use alloc::sync::Arc;
use core::ptr;

use machine::IntrOff;
use sched::{Priority, SchedEnv, SpinGuard, SpinLock, Thread};

use crate::pi::{self, Chain, Deadlock, PiThread, TsLinks};
use crate::Env;

/// Number of hash chains (NetBSD has 128 for many more CPUs; a power of two).
pub const NCHAINS: usize = 64;

impl<E: Env> PiThread for Thread<E> {
    #[inline(always)]
    fn links(&self) -> &TsLinks<Self> {
        self.ext()
    }

    fn base_pri(&self) -> u8 {
        self.base_priority().get()
    }

    fn eff_pri(&self) -> u8 {
        self.priority().get()
    }

    fn set_eff_pri(&self, pri: u8) {
        E::sched().set_priority(self, Priority::new(pri).unwrap_or(Priority::MAX));
    }
}

/// The turnstile table.
pub struct Turnstiles<E: SchedEnv> {
    chains: [SpinLock<Chain<Thread<E>>>; NCHAINS],
    pi: SpinLock<()>,
}

impl<E: SchedEnv> Default for Turnstiles<E> {
    fn default() -> Self {
        Self::new()
    }
}

/// The chain a lock hashes to (NetBSD's `TS_HASH`: drop the alignment bits, fold).
#[inline]
fn chain_of(lock: usize) -> usize {
    ((lock >> 3) ^ (lock >> 9)) & (NCHAINS - 1)
}

impl<E: SchedEnv> Turnstiles<E> {
    /// Empty table.
    pub const fn new() -> Self {
        Turnstiles { chains: [const { SpinLock::new(Chain::new()) }; NCHAINS], pi: SpinLock::new(()) }
    }
}

impl<E: Env> Turnstiles<E> {
    /// Takes the chain lock of `lock` and the PI lock.
    pub fn lock<'a>(&'a self, lock: usize, io: &'a IntrOff) -> TsGuard<'a, E> {
        let chain = self.chains[chain_of(lock)].lock(io);
        let pi = self.pi.lock(io);
        TsGuard { chain, _pi: pi, lock }
    }
}

/// The locks of one lock's turnstile, held.
pub struct TsGuard<'a, E: Env> {
    chain: SpinGuard<'a, Chain<Thread<E>>>,
    _pi: SpinGuard<'a, ()>,
    lock: usize,
}

/// The threads a release granted the lock to (a writer, or every waiting reader), to wake
/// with [`Granted::wake`] once the turnstile locks are dropped.
#[must_use = "granted threads must be woken"]
pub struct Granted<E: Env> {
    head: *const Thread<E>,
    /// How many.
    pub count: usize,
    /// The heir is a writer (or a mutex waiter); otherwise they are readers.
    pub writer: bool,
    /// The heir, if a writer.
    pub heir: *const Thread<E>,
    /// Threads still wait after the grant.
    pub waiters_left: bool,
    /// A writer still waits after the grant.
    pub writer_waiting: bool,
}

impl<E: Env> Granted<E> {
    /// Sets each granted thread's flag and wakes it, giving up the strong count it took when
    /// it blocked. Call with the turnstile locks dropped (interrupts may still be disabled).
    pub fn wake(self) {
        let mut t = self.head;
        while !t.is_null() {
            // SAFETY: `t` was queued, so it holds a strong count on itself, taken in
            // `TsGuard::block` with `Arc::increment_strong_count`; we consume it here.
            let arc = unsafe { Arc::from_raw(t) };
            // Read the link before the grant: the thread may run and block again after it.
            t = arc.links().wake_next();
            arc.links().grant();
            E::sched().wakeup(&arc);
        }
    }
}

impl<E: Env> TsGuard<'_, E> {
    /// Queues `me` (the running thread) on this lock (owned by `owner`, or by readers if
    /// `None`) and lends its priority along the chain. The caller then calls `sleep_prepare`,
    /// drops the guard, and sleeps until [`TsLinks::granted`].
    // The error carries the cycle in place (`pi::block`).
    #[allow(clippy::result_large_err)]
    pub fn block(
        &mut self,
        me: &Thread<E>,
        writer: bool,
        owner: Option<*const Thread<E>>,
    ) -> Result<(), Deadlock> {
        // SAFETY: the caller saw `o` owning the lock with the waiters bit set (module doc).
        let owner = owner.map(|o| unsafe { &*o });
        pi::block(&mut self.chain, self.lock, me, writer, owner)?;
        // SAFETY: `me` is the running thread, which its CPU holds a strong count on; the
        // count taken here is the queue's, given up by `Granted::wake`.
        unsafe { Arc::increment_strong_count(me as *const Thread<E>) };
        Ok(())
    }

    /// Number of threads blocked on the lock.
    pub fn waiters(&self) -> usize {
        self.chain.lookup(self.lock).map_or(0, |ts| ts.waiters())
    }

    /// Whether a writer waits on the lock.
    pub fn writer_waiting(&self) -> bool {
        self.chain.lookup(self.lock).is_some_and(|ts| ts.writer_waiting())
    }

    /// The lock's owner `old` (`None`: its last reader) releases it: hands it to the most
    /// urgent waiter — a writer alone, a reader together with every waiting reader — moving
    /// the remaining waiters' loans to the heir and withdrawing `old`'s. The caller writes the
    /// lock word from the result, drops the guard, then calls [`Granted::wake`].
    pub fn release(&mut self, old: Option<*const Thread<E>>) -> Granted<E> {
        // SAFETY: `old` is the calling thread, or null.
        let old = old.map(|o| unsafe { &*o });
        let none = Granted {
            head: ptr::null(),
            count: 0,
            writer: false,
            heir: ptr::null(),
            waiters_left: false,
            writer_waiting: false,
        };
        let Some(ts) = self.chain.lookup(self.lock) else { return none };
        // SAFETY: the turnstile stays allocated: it is owned by the waiters, one of which at
        // least remains until `hand_to*` below gives it back to one of them.
        let ts: &pi::Turnstile<Thread<E>> = unsafe { &*(ts as *const pi::Turnstile<Thread<E>>) };
        let Some(heir) = pi::most_urgent(ts) else { return none };
        let heir: *const Thread<E> = heir;
        // SAFETY: queued, hence alive.
        let heir = unsafe { &*heir };
        let writer = heir.links().writer_flag();
        let (head, count) = if writer {
            pi::hand_to(&mut self.chain, ts, old, heir);
            (heir as *const Thread<E>, 1)
        } else {
            pi::hand_to_readers(&mut self.chain, ts, old)
        };
        let (waiters_left, writer_waiting) =
            self.chain.lookup(self.lock).map_or((false, false), |t| (t.waiters() > 0, t.writer_waiting()));
        Granted {
            head,
            count,
            writer,
            heir: if writer { heir } else { ptr::null() },
            waiters_left,
            writer_waiting,
        }
    }
}
