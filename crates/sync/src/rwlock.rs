//! Reader–writer lock with turnstile blocking.
//!
//! Lock word: bit 0 `WAITERS` (threads blocked on the turnstile), bit 1 `WRITE_LOCKED`,
//! bit 2 `WRITE_WANTED` (a writer waits: new readers must block). When write-locked, the
//! rest of the word is the owner's address (threads are 8-aligned); otherwise it is the
//! reader count in units of [`READER`].
//!
//! * Read enter: one `cmpxchg` adding a reader, if no writer holds or wants the lock.
//! * Write enter: one `cmpxchg` 0 → owner | `WRITE_LOCKED`.
//! * Exits are one `cmpxchg` unless `WAITERS` is set; then the turnstile decides: a writer's
//!   release hands the lock to the most urgent waiter — if that is a reader, to *every*
//!   waiting reader at once; the last reader out hands it to the first waiting writer.
//!   A waiting writer sets `WRITE_WANTED`, so readers cannot starve it; a writer's release
//!   admits all queued readers, so writers cannot starve them.

use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use ipl::Ipl;
use machine::Machine;

use crate::witness::{LockKind, Violation};
use crate::Env;

const WAITERS: usize = 1;
const WRITE_LOCKED: usize = 2;
const WRITE_WANTED: usize = 4;
const FLAGS: usize = 7;
/// One reader.
pub const READER: usize = 8;

/// The lock without data: also the `lock_api` raw rwlock.
pub struct RawRwLock<E: Env> {
    word: AtomicUsize,
    name: &'static str,
    class: AtomicU32,
    _e: PhantomData<E>,
}

fn me<E: Env>() -> usize {
    E::M::curthread() as usize
}

impl<E: Env> RawRwLock<E> {
    /// A free lock named `name`.
    pub const fn new(name: &'static str) -> Self {
        RawRwLock { word: AtomicUsize::new(0), name, class: AtomicU32::new(0), _e: PhantomData }
    }

    fn addr(&self) -> usize {
        self as *const Self as usize
    }

    /// Number of readers holding it now (0 if write-locked or free).
    pub fn readers(&self) -> usize {
        let w = self.word.load(Ordering::Relaxed);
        if w & WRITE_LOCKED != 0 {
            0
        } else {
            w / READER
        }
    }

    fn check_acquire(&self) -> bool {
        let w = &E::sync().witness;
        let class = w.class_of::<E::M>(&self.class, self.name, LockKind::RwLock);
        let cur = E::spl().current();
        w.acquire::<E::M>(
            E::sched().current().held_locks(),
            self.addr(),
            class,
            LockKind::RwLock,
            cur.name(),
            cur > Ipl::Vm,
        )
    }

    fn check_release(&self) -> bool {
        let w = &E::sync().witness;
        let class = w.class_of::<E::M>(&self.class, self.name, LockKind::RwLock);
        w.release::<E::M>(E::sched().current().held_locks(), self.addr(), class)
    }

    /// Drops the checker's record of a hold it recorded (a guard's `Checked` release),
    /// whether or not checking is still on.
    #[cold]
    #[inline(never)]
    fn forget(&self) {
        let w = &E::sync().witness;
        let class = w.class_of::<E::M>(&self.class, self.name, LockKind::RwLock);
        w.forget::<E::M>(E::sched().current().held_locks(), self.addr(), class);
    }

    fn note(&self, contended: bool) {
        let w = &E::sync().witness;
        if w.stats_on() {
            let class = w.class_of::<E::M>(&self.class, self.name, LockKind::RwLock);
            w.count(class, contended, 0, 0);
        }
    }

    /// Acquires for reading. `false` only if the checker refused (recursion, `Record`).
    #[inline(always)]
    pub fn read_enter(&self) -> bool {
        self.read_enter_mode() != Mode::Refused
    }

    /// The read fast path: one load, one test of the flags, one `cmpxchg` whose expected
    /// value carries the checker's bit (bit 63 while checking or statistics are on, never set
    /// in a word: the `cmpxchg` fails into the slow path) — NetBSD's `rw_enter`, with the
    /// run-time checker costing one `or`.
    #[inline(always)]
    fn read_enter_mode(&self) -> Mode {
        let v = self.word.load(Ordering::Relaxed);
        if v & (WAITERS | WRITE_LOCKED | WRITE_WANTED) == 0 {
            let expect = v | E::sync().witness.fast_rw_expect();
            if self.word.compare_exchange(expect, v + READER, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                return Mode::Unchecked;
            }
        }
        self.read_enter_slow()
    }

    #[cold]
    #[inline(never)]
    fn read_enter_slow(&self) -> Mode {
        let w = &E::sync().witness;
        let active = w.active();
        let checked = w.checking();
        if checked && !self.check_acquire() {
            return Mode::Refused;
        }
        let v = self.word.load(Ordering::Relaxed);
        let fast = v & (WAITERS | WRITE_LOCKED | WRITE_WANTED) == 0
            && self.word.compare_exchange(v, v + READER, Ordering::Acquire, Ordering::Relaxed).is_ok();
        if !fast {
            self.enter_slow(false);
        }
        if active {
            self.note(!fast);
        }
        if checked {
            Mode::Checked
        } else {
            Mode::Unchecked
        }
    }

    /// Acquires for writing. `false` only if the checker refused.
    #[inline(always)]
    pub fn write_enter(&self) -> bool {
        self.write_enter_mode(me::<E>()) != Mode::Refused
    }

    /// The write fast path: one `cmpxchg` from the free word (0, with the checker's bit
    /// while it is on) to `me | WRITE_LOCKED`.
    #[inline(always)]
    fn write_enter_mode(&self, me: usize) -> Mode {
        let expect = E::sync().witness.fast_rw_expect();
        if self.word.compare_exchange(expect, me | WRITE_LOCKED, Ordering::Acquire, Ordering::Relaxed).is_ok()
        {
            return Mode::Unchecked;
        }
        self.write_enter_slow(me)
    }

    #[cold]
    #[inline(never)]
    fn write_enter_slow(&self, me: usize) -> Mode {
        let w = &E::sync().witness;
        let active = w.active();
        let checked = w.checking();
        if checked && !self.check_acquire() {
            return Mode::Refused;
        }
        let fast =
            self.word.compare_exchange(0, me | WRITE_LOCKED, Ordering::Acquire, Ordering::Relaxed).is_ok();
        if !fast {
            self.enter_slow(true);
        }
        if active {
            self.note(!fast);
        }
        if checked {
            Mode::Checked
        } else {
            Mode::Unchecked
        }
    }

    /// Tries to acquire for reading without waiting.
    pub fn try_read(&self) -> bool {
        let v = self.word.load(Ordering::Relaxed);
        let ok = v & (WAITERS | WRITE_LOCKED | WRITE_WANTED) == 0
            && self.word.compare_exchange(v, v + READER, Ordering::Acquire, Ordering::Relaxed).is_ok();
        if ok && E::sync().witness.checking() {
            self.check_acquire();
        }
        ok
    }

    /// Tries to acquire for writing without waiting.
    pub fn try_write(&self) -> bool {
        let ok = self
            .word
            .compare_exchange(0, me::<E>() | WRITE_LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_ok();
        if ok && E::sync().witness.checking() {
            self.check_acquire();
        }
        ok
    }

    #[cold]
    fn enter_slow(&self, writer: bool) {
        trace::emit::<E::M>(trace::Kind::LockContend, self as *const Self as u64);
        let sched = E::sched();
        let sync = E::sync();
        let me = me::<E>();
        loop {
            let v = self.word.load(Ordering::Relaxed);
            // Take it if we can.
            if writer {
                if v == 0 {
                    if self
                        .word
                        .compare_exchange(0, me | WRITE_LOCKED, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                    {
                        return;
                    }
                    continue;
                }
                if v & WRITE_LOCKED != 0 && v & !FLAGS == me {
                    panic!("rwlock \"{}\": recursive write acquisition", self.name);
                }
            } else if v & (WAITERS | WRITE_LOCKED | WRITE_WANTED) == 0 {
                if self.word.compare_exchange(v, v + READER, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    return;
                }
                continue;
            }
            // A running writer will be done soon: spin rather than block.
            if v & WRITE_LOCKED != 0 && sched.is_running((v & !FLAGS) as *const ()) {
                E::M::relax();
                continue;
            }
            let io = E::M::intr_disable();
            let mut ts = sync.turnstiles.lock(self.addr(), &io);
            let v = self.word.load(Ordering::Relaxed);
            let free_for_us = if writer { v == 0 } else { v & (WAITERS | WRITE_LOCKED | WRITE_WANTED) == 0 };
            if free_for_us {
                continue;
            }
            let want = v | WAITERS | if writer { WRITE_WANTED } else { 0 };
            if want != v && self.word.compare_exchange(v, want, Ordering::Relaxed, Ordering::Relaxed).is_err()
            {
                continue;
            }
            let owner = (v & WRITE_LOCKED != 0).then_some((v & !FLAGS) as *const sched::Thread<E>);
            let me_t = sched.current();
            if ts.block(me_t, writer, owner).is_err() {
                drop(ts);
                drop(io);
                sync.witness
                    .report::<E::M>(Violation::Deadlock { lock: self.name, thread: me_t.name().into() });
                panic!("rwlock \"{}\": deadlock", self.name);
            }
            sched.sleep_prepare(&io);
            drop(ts);
            while !me_t.ext().granted() {
                sched.sleep_commit(&io);
                sched.sleep_prepare(&io);
            }
            sched.sleep_cancel(&io);
            return; // granted: the word was set for us by the releaser
        }
    }

    /// Releases a read hold taken by [`RawRwLock::read_enter`] (the checker forgets it first
    /// while checking is on).
    #[inline(always)]
    pub fn read_exit(&self) {
        if E::sync().witness.checking() && !self.check_release() {
            return;
        }
        let v = self.word.load(Ordering::Relaxed);
        assert!(
            v & WRITE_LOCKED == 0 && v >= READER,
            "rwlock \"{}\": read_exit without a read hold",
            self.name
        );
        self.read_release();
    }

    /// The read release of a read hold (the caller holds one: a guard, or `read_exit`,
    /// which checked), without the checker: one load, one test (waiters), one `cmpxchg`;
    /// the last reader out with waiters hands the lock over.
    #[inline(always)]
    fn read_release(&self) {
        let v = self.word.load(Ordering::Relaxed);
        if v & (WAITERS | WRITE_LOCKED) == 0
            && self.word.compare_exchange(v, v - READER, Ordering::Release, Ordering::Relaxed).is_ok()
        {
            return;
        }
        self.read_release_slow();
    }

    #[cold]
    #[inline(never)]
    fn read_release_slow(&self) {
        let mut v = self.word.load(Ordering::Relaxed);
        loop {
            assert!(
                v & WRITE_LOCKED == 0 && v >= READER,
                "rwlock \"{}\": read_exit without a read hold",
                self.name
            );
            if v & WAITERS != 0 && v / READER == 1 {
                return self.last_reader_exit();
            }
            match self.word.compare_exchange_weak(v, v - READER, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(x) => v = x,
            }
        }
    }

    /// Releases the write hold (the checker forgets it first while checking is on).
    #[inline]
    pub fn write_exit(&self) {
        if E::sync().witness.checking() && !self.check_release() {
            return;
        }
        self.write_release(me::<E>());
    }

    /// The write release, without the checker: one `cmpxchg` `me | WRITE_LOCKED` → 0.
    #[inline(always)]
    fn write_release(&self, me: usize) {
        if self.word.compare_exchange(me | WRITE_LOCKED, 0, Ordering::Release, Ordering::Relaxed).is_err() {
            self.write_exit_slow(me);
        }
    }

    #[cold]
    fn last_reader_exit(&self) {
        // Interrupts stay disabled until the granted threads are awake (see the mutex).
        let io = E::M::intr_disable();
        let granted = {
            let mut ts = E::sync().turnstiles.lock(self.addr(), &io);
            // Acquire: the other readers' releases (their decrements) must be ordered before
            // the writer we hand the lock to (found by the loom model).
            let v = self.word.load(Ordering::Acquire);
            if v / READER != 1 || v & WAITERS == 0 {
                // Someone changed it meanwhile (another reader left or joined): plain exit.
                drop(ts);
                drop(io);
                return self.read_exit_retry();
            }
            // Waiters behind readers are writers (readers only block when a writer is
            // waiting or holding): hand to the most urgent.
            let g = ts.release(None);
            self.set_word_for(&g);
            g
        };
        granted.wake();
        drop(io);
    }

    fn read_exit_retry(&self) {
        let mut v = self.word.load(Ordering::Relaxed);
        loop {
            if v & WAITERS != 0 && v / READER == 1 {
                return self.last_reader_exit();
            }
            match self.word.compare_exchange_weak(v, v - READER, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(x) => v = x,
            }
        }
    }

    #[cold]
    fn write_exit_slow(&self, me: usize) {
        let v = self.word.load(Ordering::Relaxed);
        assert!(
            v & WRITE_LOCKED != 0 && v & !FLAGS == me,
            "rwlock \"{}\": write_exit by a thread that does not hold it for writing",
            self.name
        );
        let sched = E::sched();
        let io = E::M::intr_disable();
        let granted = {
            let mut ts = E::sync().turnstiles.lock(self.addr(), &io);
            let g = ts.release(Some(me as *const sched::Thread<E>));
            self.set_word_for(&g);
            g
        };
        granted.wake();
        drop(io);
        sched.preempt_check();
    }

    /// Writes the lock word for what a release granted (under the turnstile locks): free, the
    /// heir writer, or the readers; with the waiters and writer-wanted bits for who is left.
    fn set_word_for(&self, g: &crate::turnstile::Granted<E>) {
        let flags =
            if g.waiters_left { WAITERS } else { 0 } | if g.writer_waiting { WRITE_WANTED } else { 0 };
        let word = if g.count == 0 {
            0
        } else if g.writer {
            g.heir as usize | WRITE_LOCKED | flags
        } else {
            (g.count * READER) | flags
        };
        self.word.store(word, Ordering::Release);
    }
}

/// A reader–writer lock protecting a `T`.
pub struct RwLock<T, E: Env> {
    raw: RawRwLock<E>,
    value: UnsafeCell<T>,
}

// SAFETY: readers share `&T` (needs `Sync`), a writer gets `&mut T` alone (needs `Send`).
unsafe impl<T: Send + Sync, E: Env> Sync for RwLock<T, E> {}
// SAFETY: moving the lock moves the `T`.
unsafe impl<T: Send, E: Env> Send for RwLock<T, E> {}

impl<T, E: Env> RwLock<T, E> {
    /// A free lock named `name`.
    pub const fn new(name: &'static str, value: T) -> Self {
        RwLock { raw: RawRwLock::new(name), value: UnsafeCell::new(value) }
    }

    /// Shared access.
    #[inline(always)]
    pub fn read(&self) -> RwLockReadGuard<'_, T, E> {
        let mode = self.raw.read_enter_mode();
        RwLockReadGuard { l: self, mode, _not_send: PhantomData }
    }

    /// Exclusive access.
    #[inline(always)]
    pub fn write(&self) -> RwLockWriteGuard<'_, T, E> {
        let me = me::<E>();
        let mode = self.raw.write_enter_mode(me);
        RwLockWriteGuard { l: self, mode, me, _not_send: PhantomData }
    }

    /// The raw lock.
    pub fn raw(&self) -> &RawRwLock<E> {
        &self.raw
    }
}

/// How a guard's lock was taken: its release mirrors it (the checker forgets exactly the
/// holds it recorded, whatever `kern.lockcheck` says at the release).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// The checker refused (recursion under `Policy::Record`): nothing is held.
    Refused,
    /// Held, not recorded by the checker.
    Unchecked,
    /// Held and recorded by the checker.
    Checked,
}

/// Shared hold; releases on drop.
pub struct RwLockReadGuard<'a, T, E: Env> {
    l: &'a RwLock<T, E>,
    mode: Mode,
    /// A hold belongs to the thread that took it.
    _not_send: PhantomData<*const ()>,
}

/// Exclusive hold; releases on drop.
pub struct RwLockWriteGuard<'a, T, E: Env> {
    l: &'a RwLock<T, E>,
    mode: Mode,
    /// The holder (loaded once, at the enter).
    me: usize,
    /// A hold belongs to the thread that took it.
    _not_send: PhantomData<*const ()>,
}

impl<T, E: Env> Deref for RwLockReadGuard<'_, T, E> {
    type Target = T;
    fn deref(&self) -> &T {
        assert!(
            self.mode != Mode::Refused,
            "rwlock \"{}\": refused acquisition dereferenced",
            self.l.raw.name
        );
        // SAFETY: we hold a read lock: no writer exists.
        unsafe { &*self.l.value.get() }
    }
}

impl<T, E: Env> Drop for RwLockReadGuard<'_, T, E> {
    #[inline(always)]
    fn drop(&mut self) {
        match self.mode {
            Mode::Refused => {}
            Mode::Unchecked => self.l.raw.read_release(),
            Mode::Checked => {
                self.l.raw.forget();
                self.l.raw.read_release();
            }
        }
    }
}

impl<T, E: Env> Deref for RwLockWriteGuard<'_, T, E> {
    type Target = T;
    fn deref(&self) -> &T {
        assert!(
            self.mode != Mode::Refused,
            "rwlock \"{}\": refused acquisition dereferenced",
            self.l.raw.name
        );
        // SAFETY: we hold the write lock.
        unsafe { &*self.l.value.get() }
    }
}

impl<T, E: Env> DerefMut for RwLockWriteGuard<'_, T, E> {
    fn deref_mut(&mut self) -> &mut T {
        assert!(
            self.mode != Mode::Refused,
            "rwlock \"{}\": refused acquisition dereferenced",
            self.l.raw.name
        );
        // SAFETY: we hold the write lock; `&mut self` is unique.
        unsafe { &mut *self.l.value.get() }
    }
}

impl<T, E: Env> Drop for RwLockWriteGuard<'_, T, E> {
    #[inline(always)]
    fn drop(&mut self) {
        match self.mode {
            Mode::Refused => {}
            Mode::Unchecked => self.l.raw.write_release(self.me),
            Mode::Checked => {
                self.l.raw.forget();
                self.l.raw.write_release(self.me);
            }
        }
    }
}

/// `lock_api` adapter.
pub struct LockApiRawRwLock<E: Env>(RawRwLock<E>);

// SAFETY: shared holds exclude exclusive ones and vice versa (the lock word protocol above);
// guards stay on their thread (`GuardNoSend`) because write ownership is by thread.
unsafe impl<E: Env> lock_api::RawRwLock for LockApiRawRwLock<E> {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = LockApiRawRwLock(RawRwLock::new("lock_api::RwLock"));
    type GuardMarker = lock_api::GuardNoSend;

    fn lock_shared(&self) {
        self.0.read_enter();
    }

    fn try_lock_shared(&self) -> bool {
        self.0.try_read()
    }

    unsafe fn unlock_shared(&self) {
        self.0.read_exit();
    }

    fn lock_exclusive(&self) {
        self.0.write_enter();
    }

    fn try_lock_exclusive(&self) -> bool {
        self.0.try_write()
    }

    unsafe fn unlock_exclusive(&self) {
        self.0.write_exit();
    }
}

/// A `lock_api` rwlock backed by the kernel's rwlock.
pub type LockApiRwLock<T, E> = lock_api::RwLock<LockApiRawRwLock<E>, T>;
