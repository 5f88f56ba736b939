//! # Kernel synchronization: mutexes, rwlocks, turnstiles, sleep queues
//!
//! The primitives the interrupt-thread work stands on (adaptive and spin mutexes, rwlocks, turnstiles, lock checking; Thorpe's and Doran's NetBSD design).
//!
//! ## Protocol
//!
//! * **One mutex type, two kinds**, chosen at initialization as in NetBSD's
//!   `mutex_init(m, type, ipl)`: [`Mutex::new_adaptive`] and [`Mutex::new_spin`].
//!   - The *owner word* of an adaptive mutex is 0 (free) or the owning thread's address, with
//!     bit 0 ([`mutex::WAITERS`]) set when threads are blocked on its turnstile. Enter is one
//!     `cmpxchg` 0 → self; exit is one `cmpxchg` self → 0. Only when that fails does the slow
//!     path run: spin while the owner is on a CPU, otherwise set the waiters bit under the
//!     turnstile lock and block, lending priority to the owner. An exit that finds the bit
//!     hands the mutex directly to the most urgent waiter.
//!   - A spin mutex raises the CPU's SPL to the mutex's IPL (a per-CPU store), then spins on
//!     its word with exponential backoff (`pause`). The held-spin-mutex count and the SPL from
//!     before the outermost spin mutex nest per CPU (`ipl::SplState::spin_enter`).
//!   - Adaptive mutexes may be taken only at or below `IPL_VM` and never with a spin mutex
//!     held; a thread holding a spin mutex must not sleep. The checker says so, naming the
//!     locks ([`witness`]).
//! * **Reader–writer locks** ([`RwLock`]) block readers and writers on the same turnstiles;
//!   a waiting writer stops new readers (no writer starvation) and a writer's release admits
//!   every waiting reader at once (no reader starvation). Priority is lent to a writer owner,
//!   not to readers (a reader-held lock has no single owner to boost).
//! * **Turnstiles** ([`turnstile`]): hashed chains with a lock each; every thread brings its
//!   own turnstile, and priority inheritance runs through intrusive per-thread and
//!   per-turnstile links ([`pi`]) along chains of owners, with no allocation.
//! * **Sleep queues and condition variables** ([`condvar`]): waits on an address, hashed into
//!   a fixed table of queues; timed waits use the scheduler's clock.
//! * Everything is generic over an [`Env`] — the kernel's scheduler, SPL state and this
//!   crate's global state — so the lock flavour and the kernel are type parameters, and the
//!   same code runs on the host with a host machine.
#![no_std]

extern crate alloc;

pub mod condvar;
pub mod mutex;
pub mod pi;
pub mod rwlock;
pub mod turnstile;
pub mod witness;

pub use condvar::{CondVar, SleepQueues};
pub use mutex::{Mutex, MutexGuard, RawAdaptiveMutex};
pub use rwlock::{RawRwLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
pub use witness::{LockKind, Policy, Violation, Witness};

use sched::SchedEnv;

/// The global state of this crate for one kernel.
pub struct SyncState<E: SchedEnv> {
    /// The lock checker and statistics.
    pub witness: Witness,
    /// Where threads block on locks.
    pub turnstiles: turnstile::Turnstiles<E>,
    /// Where threads wait on condition variables.
    pub sleepq: SleepQueues<E>,
}

impl<E: SchedEnv> Default for SyncState<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: SchedEnv> SyncState<E> {
    /// Checking and statistics off.
    pub const fn new() -> Self {
        SyncState {
            witness: Witness::new(),
            turnstiles: turnstile::Turnstiles::new(),
            sleepq: SleepQueues::new(),
        }
    }
}

/// What the locks need from the kernel they run in: the scheduler's environment (which
/// brings the machine, the SPL state and the scheduler) and this crate's state.
pub trait Env: SchedEnv<ThreadExt = pi::TsLinks<sched::Thread<Self>>> {
    /// This crate's state.
    fn sync() -> &'static SyncState<Self>;

    /// A probe point: a contended adaptive mutex enter has given up on the owner (not
    /// running) and is about to take the turnstile lock and block. Nothing by default; the
    /// kernel's benchmarks time it (`intr.block_switch.enter_fail` ends, `.turnstile`
    /// begins). Called on that slow path only.
    #[inline(always)]
    fn probe_turnstile() {}
}
