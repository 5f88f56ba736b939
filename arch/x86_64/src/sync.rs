//! The arch crate's own interrupt-safe spin lock, for the few machine resources that are
//! shared before the scheduler exists or below it: the serial port and the heap.
//!
//! Taking it disables interrupts on this CPU (saving the previous state), so an interrupt
//! handler on the same CPU can never spin on a lock its interrupted code holds.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

use machine::{IntrOff, Machine};

use crate::X86_64;

/// A spin lock that keeps interrupts disabled while held.
pub struct IrqSpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: one holder at a time gets `&mut T`.
unsafe impl<T: Send> Sync for IrqSpinLock<T> {}

impl<T> IrqSpinLock<T> {
    /// A new unlocked lock.
    pub const fn new(value: T) -> Self {
        IrqSpinLock { locked: AtomicBool::new(false), value: UnsafeCell::new(value) }
    }

    /// Disables interrupts, then spins until the lock is ours.
    pub fn lock(&self) -> IrqSpinGuard<'_, T> {
        let io = X86_64::intr_disable();
        while self.locked.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            while self.locked.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
        IrqSpinGuard { lock: self, _io: io }
    }

    /// Takes the lock if it is free (interrupts disabled while held); `None` otherwise.
    pub fn try_lock(&self) -> Option<IrqSpinGuard<'_, T>> {
        let io = X86_64::intr_disable();
        // Build the guard only on success: a guard dropped on the failure path would release
        // the lock its holder still holds.
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
            .then(|| IrqSpinGuard { lock: self, _io: io })
    }

    /// Like `lock`, but gives up after `spins` attempts (the panic path uses it so that a
    /// CPU that died holding the lock cannot silence the panic message).
    pub fn lock_or_steal(&self, spins: u64) -> IrqSpinGuard<'_, T> {
        let io = X86_64::intr_disable();
        let mut n = 0;
        while self.locked.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            n += 1;
            if n > spins {
                break;
            }
            core::hint::spin_loop();
        }
        IrqSpinGuard { lock: self, _io: io }
    }
}

/// Holds an [`IrqSpinLock`]; releases it, then restores interrupts, on drop.
pub struct IrqSpinGuard<'a, T> {
    lock: &'a IrqSpinLock<T>,
    _io: IntrOff,
}

impl<T> Deref for IrqSpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while we hold the lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for IrqSpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard exists only while we hold the lock; `&mut self` is unique.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for IrqSpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
        // `_io` drops after this and restores the interrupt state.
    }
}
