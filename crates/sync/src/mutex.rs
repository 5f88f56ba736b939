//! The kernel mutex: adaptive or spin (see the crate doc for the owner-word protocol).

use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use ipl::{Ipl, IplCpu};
use machine::Machine;

use crate::witness::{LockKind, Violation};
use crate::Env;

/// Owner-word bit: threads are blocked on the turnstile.
pub const WAITERS: usize = 1;

const KIND_ADAPTIVE: u8 = 0;
const KIND_SPIN: u8 = 1;

/// The lock part of a mutex, without the data: also the `lock_api` raw mutex.
pub struct RawMutex<E: Env> {
    owner: AtomicUsize,
    kind: u8,
    ipl: u8,
    name: &'static str,
    class: AtomicU32,
    /// When the current hold began (statistics on only), for the max-hold figure.
    hold_start: AtomicU64,
    _e: PhantomData<E>,
}

/// A mutex protecting a `T`.
pub struct Mutex<T, E: Env> {
    raw: RawMutex<E>,
    value: UnsafeCell<T>,
}

// SAFETY: the mutex hands out `&mut T` to one holder at a time.
unsafe impl<T: Send, E: Env> Sync for Mutex<T, E> {}
// SAFETY: moving the mutex moves the `T`.
unsafe impl<T: Send, E: Env> Send for Mutex<T, E> {}

fn curthread<E: Env>() -> usize {
    E::M::curthread() as usize
}

impl<E: Env> RawMutex<E> {
    const fn new(name: &'static str, kind: u8, ipl: Ipl) -> Self {
        RawMutex {
            owner: AtomicUsize::new(0),
            kind,
            ipl: ipl as u8,
            name,
            class: AtomicU32::new(0),
            hold_start: AtomicU64::new(0),
            _e: PhantomData,
        }
    }

    fn lock_kind(&self) -> LockKind {
        if self.kind == KIND_SPIN {
            LockKind::Spin
        } else {
            LockKind::Adaptive
        }
    }

    fn addr(&self) -> usize {
        self as *const Self as usize
    }

    /// The mutex's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether a thread other than the caller owns it.
    pub fn owned_by_other(&self) -> bool {
        let o = self.owner.load(Ordering::Relaxed) & !WAITERS;
        o != 0 && o != curthread::<E>()
    }

    /// Whether threads are blocked on it.
    pub fn has_waiters(&self) -> bool {
        self.owner.load(Ordering::Relaxed) & WAITERS != 0
    }

    /// Whether the calling thread owns it.
    pub fn owned(&self) -> bool {
        self.owner.load(Ordering::Relaxed) & !WAITERS == curthread::<E>()
    }

    /// Acquires. Returns `false` only if the checker refused (recursion, `Policy::Record`).
    #[inline]
    pub fn enter(&self) -> bool {
        let w = &E::sync().witness;
        if w.active() {
            return self.enter_checked();
        }
        let me = curthread::<E>();
        if self.kind == KIND_SPIN {
            E::spl().spin_enter(Ipl::from_u8(self.ipl).unwrap_or(Ipl::High));
            if self.owner.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed).is_err() {
                self.spin_contended(me);
            }
            return true;
        }
        if self.owner.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed).is_err() {
            return self.adaptive_contended(me);
        }
        true
    }

    /// Releases.
    #[inline]
    pub fn exit(&self) {
        let w = &E::sync().witness;
        if w.active() {
            return self.exit_checked();
        }
        self.exit_unchecked();
    }

    #[inline]
    fn exit_unchecked(&self) {
        let me = curthread::<E>();
        if self.kind == KIND_SPIN {
            self.owner.store(0, Ordering::Release);
            E::spl().spin_exit();
            return;
        }
        if self.owner.compare_exchange(me, 0, Ordering::Release, Ordering::Relaxed).is_err() {
            self.adaptive_exit_slow(me);
        }
    }

    /// Tries to acquire without waiting.
    pub fn try_enter(&self) -> bool {
        let me = curthread::<E>();
        let ok = if self.kind == KIND_SPIN {
            E::spl().spin_enter(Ipl::from_u8(self.ipl).unwrap_or(Ipl::High));
            let ok = self.owner.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed).is_ok();
            if !ok {
                E::spl().spin_exit();
            }
            ok
        } else {
            self.owner.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed).is_ok()
        };
        if ok && E::sync().witness.checking() {
            let cur = E::spl().current();
            E::sync().witness.acquire::<E::M>(
                E::sched().current().held_locks(),
                self.addr(),
                self.class(),
                self.lock_kind(),
                cur.name(),
                cur > Ipl::Vm,
            );
            self.note_acquired(false, 0, 0);
        }
        ok
    }

    fn class(&self) -> u32 {
        E::sync().witness.class_of::<E::M>(&self.class, self.name, self.lock_kind())
    }

    #[cold]
    fn enter_checked(&self) -> bool {
        let w = &E::sync().witness;
        let class = self.class();
        let spl = E::spl();
        let cur = spl.current();
        let sched = E::sched();
        let ok = !w.checking()
            || w.acquire::<E::M>(
                sched.current().held_locks(),
                self.addr(),
                class,
                self.lock_kind(),
                cur.name(),
                cur > Ipl::Vm,
            );
        if !ok {
            return false; // recursion refused under Policy::Record
        }
        let me = curthread::<E>();
        let t0 = E::M::now_ns();
        if self.kind == KIND_SPIN {
            spl.spin_enter(Ipl::from_u8(self.ipl).unwrap_or(Ipl::High));
            let contended = self.owner.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed).is_err();
            if contended {
                self.spin_contended(me);
            }
            let spun = if contended { E::M::now_ns() - t0 } else { 0 };
            self.note_acquired(contended, spun, 0);
            return true;
        }
        if self.owner.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            self.note_acquired(false, 0, 0);
            return true;
        }
        self.adaptive_contended(me)
    }

    fn note_acquired(&self, contended: bool, spin_ns: u64, block_ns: u64) {
        let w = &E::sync().witness;
        if w.stats_on() {
            w.count(self.class(), contended, spin_ns, block_ns);
            self.hold_start.store(E::M::now_ns(), Ordering::Relaxed);
        }
    }

    #[cold]
    fn exit_checked(&self) {
        let w = &E::sync().witness;
        let class = self.class();
        let me = curthread::<E>();
        let held_by_me = self.owner.load(Ordering::Relaxed) & !WAITERS == me;
        if held_by_me && w.stats_on() {
            let t0 = self.hold_start.load(Ordering::Relaxed);
            w.note_hold(class, E::M::now_ns().saturating_sub(t0));
        }
        if !w.checking() {
            return self.exit_unchecked();
        }
        let recorded = w.release::<E::M>(E::sched().current().held_locks(), self.addr(), class);
        if !recorded || !held_by_me {
            if recorded {
                w.report::<E::M>(Violation::ReleaseNotHeld { lock: self.name });
            }
            return; // refused under Policy::Record
        }
        self.exit_unchecked();
    }

    #[cold]
    fn spin_contended(&self, me: usize) {
        let mut backoff = 1u32;
        loop {
            let v = self.owner.load(Ordering::Relaxed);
            if v == me {
                panic!("spin mutex \"{}\": recursive acquisition", self.name);
            }
            if v == 0 && self.owner.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                return;
            }
            for _ in 0..backoff {
                E::M::relax();
            }
            backoff = (backoff * 2).min(1024);
        }
    }

    #[cold]
    fn adaptive_contended(&self, me: usize) -> bool {
        let sched = E::sched();
        let sync = E::sync();
        let stats = sync.witness.stats_on();
        let t0 = if stats { E::M::now_ns() } else { 0 };
        let mut spin_ns = 0;
        let mut block_ns = 0;
        let mut backoff = 1u32;
        loop {
            let v = self.owner.load(Ordering::Relaxed);
            if v == 0 {
                if self.owner.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    break;
                }
                continue;
            }
            let owner = v & !WAITERS;
            if owner == me {
                if sync.witness.checking() {
                    // Already reported by the checker's acquire (it saw the lock held).
                    return false;
                }
                panic!("adaptive mutex \"{}\": recursive acquisition", self.name);
            }
            if sched.is_running(owner as *const ()) {
                // The owner is on a CPU: it will release soon. Spin.
                for _ in 0..backoff {
                    E::M::relax();
                }
                backoff = (backoff * 2).min(256);
                continue;
            }
            // Block on the turnstile.
            let tb = if stats { E::M::now_ns() } else { 0 };
            let granted = AtomicBool::new(false);
            let me_arc = sched.current_arc();
            let io = E::M::intr_disable();
            let mut ts = sync.turnstiles.lock(&io);
            let v = self.owner.load(Ordering::Relaxed);
            if v == 0 {
                continue;
            }
            if v & WAITERS == 0
                && self.owner.compare_exchange(v, v | WAITERS, Ordering::Relaxed, Ordering::Relaxed).is_err()
            {
                continue;
            }
            let owner = v & !WAITERS;
            if owner == me {
                continue;
            }
            let owner_ptr = owner as *const sched::Thread<E::M>;
            if let Err(d) = ts.block(sched, self.addr(), &me_arc, true, Some(owner_ptr), &granted) {
                drop(ts);
                drop(io);
                let _ = d;
                sync.witness
                    .report::<E::M>(Violation::Deadlock { lock: self.name, thread: me_arc.name().into() });
                return false;
            }
            sched.sleep_prepare(&io);
            drop(ts);
            while !granted.load(Ordering::Acquire) {
                sched.sleep_commit(&io);
                sched.sleep_prepare(&io);
            }
            sched.sleep_cancel(&io);
            drop(io);
            if stats {
                block_ns += E::M::now_ns() - tb;
            }
            break; // handed to us: the owner word is ours
        }
        if stats {
            spin_ns = (E::M::now_ns() - t0).saturating_sub(block_ns);
        }
        self.note_acquired(true, spin_ns, block_ns);
        true
    }

    #[cold]
    fn adaptive_exit_slow(&self, me: usize) {
        let v = self.owner.load(Ordering::Relaxed);
        if v & !WAITERS != me {
            panic!("adaptive mutex \"{}\": released by a thread that does not own it", self.name);
        }
        let sched = E::sched();
        let sync = E::sync();
        // Interrupts stay disabled until the new owner is awake: dropping our loan may make
        // us preemptible, and a preemption between the grant and the wakeup would leave the
        // new owner asleep behind whatever outranks us now.
        let io = E::M::intr_disable();
        let woken = {
            let mut ts = sync.turnstiles.lock(&io);
            let me_ptr = me as *const sched::Thread<E::M>;
            match ts.take_first(self.addr()) {
                None => {
                    ts.transfer(sched, self.addr(), Some(me_ptr), None);
                    self.owner.store(0, Ordering::Release);
                    None
                }
                Some(w) => {
                    ts.transfer(sched, self.addr(), Some(me_ptr), Some(&w.thread));
                    let more = if ts.waiters(self.addr()) > 0 { WAITERS } else { 0 };
                    self.owner.store(alloc::sync::Arc::as_ptr(&w.thread) as usize | more, Ordering::Release);
                    w.grant();
                    Some(w.thread.clone())
                }
            }
        };
        if let Some(t) = woken {
            sched.wakeup(&t);
        }
        drop(io);
        // Our lent priority may have been withdrawn: let a more urgent thread run.
        sched.preempt_check();
    }
}

impl<T, E: Env> Mutex<T, E> {
    /// An adaptive mutex named `name` (the name is its lock class for the checker and
    /// `lockstat`).
    pub const fn new_adaptive(name: &'static str, value: T) -> Self {
        Mutex { raw: RawMutex::new(name, KIND_ADAPTIVE, Ipl::None), value: UnsafeCell::new(value) }
    }

    /// A spin mutex that raises the SPL to `ipl` (which must be above `IPL_NONE`).
    pub const fn new_spin(name: &'static str, ipl: Ipl, value: T) -> Self {
        assert!(ipl as u8 > Ipl::None as u8, "a spin mutex needs an IPL above IPL_NONE");
        Mutex { raw: RawMutex::new(name, KIND_SPIN, ipl), value: UnsafeCell::new(value) }
    }

    /// NetBSD's `mutex_init(m, MUTEX_DEFAULT, ipl)`: adaptive at `IPL_NONE`, spin above.
    pub const fn new(name: &'static str, ipl: Ipl, value: T) -> Self {
        if ipl as u8 == Ipl::None as u8 {
            Self::new_adaptive(name, value)
        } else {
            Self::new_spin(name, ipl, value)
        }
    }

    /// Acquires the mutex.
    #[inline]
    pub fn lock(&self) -> MutexGuard<'_, T, E> {
        let held = self.raw.enter();
        MutexGuard { m: self, held }
    }

    /// Acquires the mutex if it is free.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T, E>> {
        self.raw.try_enter().then_some(MutexGuard { m: self, held: true })
    }

    /// The raw lock (for condition variables and `lock_api`).
    pub fn raw(&self) -> &RawMutex<E> {
        &self.raw
    }

    /// Whether the caller owns it.
    pub fn owned(&self) -> bool {
        self.raw.owned()
    }

    /// Whether this is a spin mutex.
    pub fn is_spin(&self) -> bool {
        self.raw.kind == KIND_SPIN
    }

    /// The mutex's name.
    pub fn name(&self) -> &'static str {
        self.raw.name
    }
}

/// Holds a [`Mutex`]; releases on drop.
pub struct MutexGuard<'a, T, E: Env> {
    m: &'a Mutex<T, E>,
    /// False only when the checker refused the acquisition (`Policy::Record`): the guard then
    /// releases nothing (and must not be dereferenced; it panics if it is).
    held: bool,
}

impl<'a, T, E: Env> MutexGuard<'a, T, E> {
    /// Whether the lock was really acquired (false only under the checker's `Record`
    /// policy, after a refused recursion).
    pub fn is_held(&self) -> bool {
        self.held
    }

    /// The mutex.
    pub fn mutex(&self) -> &'a Mutex<T, E> {
        self.m
    }

    pub(crate) fn raw_release(&mut self) {
        if self.held {
            self.m.raw.exit();
            self.held = false;
        }
    }

    pub(crate) fn raw_reacquire(&mut self) {
        self.held = self.m.raw.enter();
    }
}

impl<T, E: Env> Deref for MutexGuard<'_, T, E> {
    type Target = T;
    fn deref(&self) -> &T {
        assert!(self.held, "mutex \"{}\": guard of a refused acquisition dereferenced", self.m.name());
        // SAFETY: we hold the mutex.
        unsafe { &*self.m.value.get() }
    }
}

impl<T, E: Env> DerefMut for MutexGuard<'_, T, E> {
    fn deref_mut(&mut self) -> &mut T {
        assert!(self.held, "mutex \"{}\": guard of a refused acquisition dereferenced", self.m.name());
        // SAFETY: we hold the mutex; `&mut self` is unique.
        unsafe { &mut *self.m.value.get() }
    }
}

impl<T, E: Env> Drop for MutexGuard<'_, T, E> {
    fn drop(&mut self) {
        self.raw_release();
    }
}

/// `lock_api` adapter: an adaptive mutex named "lock_api::Mutex".
pub struct RawAdaptiveMutex<E: Env>(RawMutex<E>);

// SAFETY: `lock` acquires exclusively (adaptive mutex), `unlock` releases; the guard must stay
// on the acquiring thread (`GuardNoSend`) because ownership is by thread.
unsafe impl<E: Env> lock_api::RawMutex for RawAdaptiveMutex<E> {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = RawAdaptiveMutex(RawMutex::new("lock_api::Mutex", KIND_ADAPTIVE, Ipl::None));
    type GuardMarker = lock_api::GuardNoSend;

    fn lock(&self) {
        self.0.enter();
    }

    fn try_lock(&self) -> bool {
        self.0.try_enter()
    }

    unsafe fn unlock(&self) {
        self.0.exit();
    }

    fn is_locked(&self) -> bool {
        self.0.owner.load(Ordering::Relaxed) != 0
    }
}

/// A `lock_api` mutex backed by the kernel's adaptive mutex.
pub type LockApiMutex<T, E> = lock_api::Mutex<RawAdaptiveMutex<E>, T>;

#[allow(dead_code)]
fn _assert_ipl_cpu<M: IplCpu>() {}
