//! This kernel's instance of the `sync` crate: the environment the locks run in, and the
//! lock types every kernel module uses.

use arch::X86_64;
use ipl::SplState;
use sched::Scheduler;
use sync::SyncState;

use crate::{SCHED, SPL};

/// Global state of the lock layer (checker, statistics, turnstiles, sleep queues).
pub static SYNC: SyncState<X86_64> = SyncState::new();

/// The kernel as the locks see it.
pub struct KernelEnv;

impl sync::Env for KernelEnv {
    type M = X86_64;
    fn sched() -> &'static Scheduler<X86_64> {
        &SCHED
    }
    fn spl() -> &'static SplState<X86_64> {
        &SPL
    }
    fn sync() -> &'static SyncState<X86_64> {
        &SYNC
    }
}

/// Kernel mutex (adaptive or spin).
pub type Mutex<T> = sync::Mutex<T, KernelEnv>;
/// Reader–writer lock.
pub type RwLock<T> = sync::RwLock<T, KernelEnv>;
/// Condition variable.
pub type CondVar = sync::CondVar<KernelEnv>;
/// `lock_api` mutex over the adaptive mutex.
pub type LockApiMutex<T> = sync::mutex::LockApiMutex<T, KernelEnv>;
/// `lock_api` rwlock over the kernel rwlock.
pub type LockApiRwLock<T> = sync::rwlock::LockApiRwLock<T, KernelEnv>;
