//! This kernel's instance of the `sync` crate: the environment the locks run in, and the
//! lock types every kernel module uses.

use arch::X86_64;
use ipl::SplState;
use machine::IntrOff;
use sched::Scheduler;
use sync::SyncState;

use crate::{SCHED, SPL};

/// Global state of the lock layer (checker, statistics, turnstiles, sleep queues).
pub static SYNC: SyncState<KernelEnv> = SyncState::new();

/// This kernel as the portable crates see it: one type that is the environment of every
/// layer — the SPL layer's (`ipl::SplEnv`), the scheduler's (`sched::SchedEnv`), the locks'
/// (`sync::Env`) and the interrupt framework's (`intr::IntrEnv`, in `crate::intr`).
pub struct KernelEnv;

impl ipl::SplEnv for KernelEnv {
    type M = X86_64;
    fn replay(vector: u8, io: &IntrOff) {
        intr::path::replay::<KernelEnv>(vector, io);
    }
    fn preempt() {
        SCHED.preempt_check();
    }
}

impl sched::SchedEnv for KernelEnv {
    fn sched() -> &'static Scheduler<KernelEnv> {
        &SCHED
    }
    fn spl() -> &'static SplState<KernelEnv> {
        &SPL
    }
    fn sleep_check() {
        crate::bench::probe::sleep();
        intr::path::sleep_check::<KernelEnv>();
    }

    type ThreadExt = sync::pi::TsLinks<sched::Thread<KernelEnv>>;
}

impl sync::Env for KernelEnv {
    fn sync() -> &'static SyncState<KernelEnv> {
        &SYNC
    }

    fn probe_turnstile() {
        crate::bench::probe::turnstile();
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
