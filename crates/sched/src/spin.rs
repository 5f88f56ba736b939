//! The scheduler's own spin lock.
//!
//! This is not the kernel mutex (that is the `sync` crate's job, built on top of the
//! scheduler). It exists because the scheduler's run queues and wait lists need mutual
//! exclusion below the level where threads can block. Every acquisition requires an
//! [`IntrOff`] proof: a run-queue lock taken with interrupts enabled could be re-entered by
//! the clock interrupt on the same CPU and deadlock.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

use machine::IntrOff;

/// A test-and-test-and-set lock whose holders have interrupts disabled.
pub struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&mut T` to one holder at a time, so `T: Send` suffices.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: moving the lock moves the `T`.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// A new unlocked lock.
    pub const fn new(value: T) -> Self {
        SpinLock { locked: AtomicBool::new(false), value: UnsafeCell::new(value) }
    }

    /// Spins (with `pause`) until the lock is ours.
    pub fn lock<'a>(&'a self, _io: &'a IntrOff) -> SpinGuard<'a, T> {
        self.raw_lock();
        SpinGuard { lock: self }
    }

    /// Acquires without a guard; pair with [`SpinLock::raw_unlock`]. The scheduler uses this
    /// for the one lock that is held across a context switch.
    pub(crate) fn raw_lock(&self) {
        // The first attempt is outside the wait loop, which is marked cold: the uncontended
        // acquisition falls straight through (no jump over the loop, no alignment padding
        // before it).
        if self.locked.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            core::hint::cold_path();
            loop {
                while self.locked.load(Ordering::Relaxed) {
                    core::hint::spin_loop();
                }
                if self
                    .locked
                    .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return;
                }
            }
        }
    }

    /// Releases a lock taken with [`SpinLock::raw_lock`].
    pub(crate) fn raw_unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }

    /// Access without locking, for a holder of `raw_lock`.
    ///
    /// # Safety
    /// The caller holds the lock (raw) and no guard or other `&mut` to the value exists.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn get_locked(&self) -> &mut T {
        // SAFETY: per the contract, the caller holds the lock exclusively.
        unsafe { &mut *self.value.get() }
    }

    /// Whether somebody holds the lock right now (diagnostics only).
    pub fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Relaxed)
    }
}

/// Holds a [`SpinLock`]; releases it on drop.
pub struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while the lock is held by us.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard exists only while the lock is held by us, and `&mut self` is unique.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.raw_unlock();
    }
}
