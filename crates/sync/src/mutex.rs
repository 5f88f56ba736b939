//! The kernel mutex: adaptive or spin (see the crate doc for the owner-word protocol).

use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use ipl::{Ipl, IplCpu};
use machine::Machine;

use crate::witness::{LockKind, Violation};
use crate::Env;

/// Owner-word bit: threads are blocked on the turnstile (adaptive).
pub const WAITERS: usize = 1;
/// Owner-word bit: acquired through the checked path (checker or statistics on), so the
/// release must take the checked path too.
pub const CHECKED: usize = 2;
/// Owner-word bit: a spin mutex (set for its whole life, so the adaptive fast path's
/// `cmpxchg 0 → self` always fails on it and the slow path handles the spin kind — NetBSD's
/// `MUTEX_BIT_SPIN` trick: the kind costs the adaptive fast path nothing).
pub const SPIN: usize = 4;
const FLAGS: usize = WAITERS | CHECKED | SPIN;

/// The lock part of a mutex, without the data: also the `lock_api` raw mutex.
///
/// Owner word: the owning thread's address (8-aligned) | `WAITERS` | `CHECKED` | `SPIN`.
/// Free: 0 (adaptive) or `SPIN` (spin).
pub struct RawMutex<E: Env> {
    owner: AtomicUsize,
    ipl: Ipl,
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

#[inline(always)]
fn curthread<E: Env>() -> usize {
    E::M::curthread() as usize
}

impl<E: Env> RawMutex<E> {
    const fn new(name: &'static str, spin: bool, ipl: Ipl) -> Self {
        RawMutex {
            owner: AtomicUsize::new(if spin { SPIN } else { 0 }),
            ipl,
            name,
            class: AtomicU32::new(0),
            hold_start: AtomicU64::new(0),
            _e: PhantomData,
        }
    }

    fn is_spin(&self) -> bool {
        self.owner.load(Ordering::Relaxed) & SPIN != 0
    }

    fn lock_kind(&self) -> LockKind {
        if self.is_spin() {
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
        let o = self.owner.load(Ordering::Relaxed) & !FLAGS;
        o != 0 && o != curthread::<E>()
    }

    /// Whether threads are blocked on it.
    pub fn has_waiters(&self) -> bool {
        self.owner.load(Ordering::Relaxed) & WAITERS != 0
    }

    /// Whether the calling thread owns it.
    pub fn owned(&self) -> bool {
        self.owner.load(Ordering::Relaxed) & !FLAGS == curthread::<E>()
    }

    /// Whether anyone owns it.
    pub fn is_locked(&self) -> bool {
        self.owner.load(Ordering::Relaxed) & !FLAGS != 0
    }

    /// Acquires. Returns `false` only if the checker refused (recursion, `Policy::Record`).
    ///
    /// The fast path is one `cmpxchg` of the word from the checker's *expected free value*
    /// (0, or 1 while checking or statistics are on — a value a free adaptive mutex never
    /// has, so the `cmpxchg` fails into the slow path) to the current thread. A spin mutex
    /// fails it with its free word, `SPIN`, and goes on inline to [`RawMutex::spin_enter`].
    #[inline(always)]
    pub fn enter(&self) -> bool {
        self.enter_as(curthread::<E>())
    }

    #[inline(always)]
    fn enter_as(&self, me: usize) -> bool {
        let free = E::sync().witness.fast_expect();
        match self.owner.compare_exchange(free, me, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => true,
            Err(SPIN) => self.spin_enter_as(me),
            Err(_) => self.enter_slow(me),
        }
    }

    /// Releases. The fast path is one `cmpxchg` self → 0; a spin mutex fails it with
    /// `SPIN | self` and releases inline as [`RawMutex::spin_exit`] does; waiters and checked
    /// holds go to the slow path.
    #[inline(always)]
    pub fn exit(&self) {
        self.exit_as(curthread::<E>());
    }

    /// [`RawMutex::exit`] by the thread `me` (the caller; a guard keeps it from its enter, so
    /// the exit does not load it again).
    #[inline(always)]
    fn exit_as(&self, me: usize) {
        match self.owner.compare_exchange(me, 0, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => {}
            Err(v) if v == me | SPIN => {
                self.owner.store(SPIN, Ordering::Release);
                E::spl().spin_exit();
            }
            Err(_) => self.exit_slow(me),
        }
    }

    /// NetBSD's `mutex_spin_enter`, for callers that know the mutex is a spin mutex: raise
    /// the SPL to the mutex's level (a per-CPU load, compare and store; the outermost spin
    /// mutex saves the old level in per-CPU memory), then one `cmpxchg` of the word from
    /// the checker's expected free spin value (`SPIN`, or `SPIN | 1` while checking or
    /// statistics are on, which fails into the slow path) to `SPIN | curthread`. No `cli`,
    /// no call. Anything else (contention, the checker, an adaptive mutex) undoes the raise
    /// and takes the general path. `false` only if the checker refused.
    #[inline(always)]
    pub fn spin_enter(&self) -> bool {
        self.spin_enter_as(curthread::<E>())
    }

    #[inline(always)]
    fn spin_enter_as(&self, me: usize) -> bool {
        E::spl().spin_enter(self.ipl);
        let word = me | SPIN;
        let free = E::sync().witness.fast_spin_expect();
        if self.owner.compare_exchange(free, word, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            return true;
        }
        self.spin_enter_slow(word)
    }

    /// NetBSD's `mutex_spin_exit`: if the word says the caller holds it unchecked, release it
    /// with a store and drop the nesting count, lowering the SPL at the outermost (`splx`:
    /// store, and the pending word against the level's mask); anything else (a checked hold,
    /// not the owner, an adaptive mutex) takes the general path.
    #[inline(always)]
    pub fn spin_exit(&self) {
        self.spin_exit_as(curthread::<E>());
    }

    #[inline(always)]
    fn spin_exit_as(&self, me: usize) {
        let word = me | SPIN;
        if self.owner.load(Ordering::Relaxed) == word {
            self.owner.store(SPIN, Ordering::Release);
            E::spl().spin_exit();
            return;
        }
        self.spin_exit_slow(word);
    }

    #[cold]
    #[inline(never)]
    fn spin_exit_slow(&self, word: usize) {
        self.exit_slower(word & !SPIN);
    }

    #[cold]
    #[inline(never)]
    fn spin_enter_slow(&self, word: usize) -> bool {
        E::spl().spin_exit();
        self.enter_slower(word & !SPIN)
    }

    /// Tries to acquire without waiting.
    pub fn try_enter(&self) -> bool {
        let me = curthread::<E>();
        let w = &E::sync().witness;
        let tag = if w.active() { CHECKED } else { 0 };
        let ok = if self.is_spin() {
            E::spl().spin_enter(self.ipl);
            let ok = self
                .owner
                .compare_exchange(SPIN, SPIN | me | tag, Ordering::Acquire, Ordering::Relaxed)
                .is_ok();
            if !ok {
                E::spl().spin_exit();
            }
            ok
        } else {
            self.owner.compare_exchange(0, me | tag, Ordering::Acquire, Ordering::Relaxed).is_ok()
        };
        if ok && tag != 0 {
            if w.checking() {
                self.check_acquire();
            }
            self.note_acquired(false, 0, 0);
        }
        ok
    }

    /// Runs the lock checker for an acquisition of this mutex at the CPU's current IPL;
    /// `false` if it refused (recursion under `Policy::Record`).
    fn check_acquire(&self) -> bool {
        let cur = E::spl().current();
        E::sync().witness.acquire::<E::M>(
            E::sched().current().held_locks(),
            self.addr(),
            self.class(),
            self.lock_kind(),
            cur.name(),
            cur > Ipl::Vm,
        )
    }

    fn class(&self) -> u32 {
        E::sync().witness.class_of::<E::M>(&self.class, self.name, self.lock_kind())
    }

    /// Everything but the fast paths.
    #[inline(never)]
    fn enter_slow(&self, me: usize) -> bool {
        self.enter_slower(me)
    }

    /// Everything the fast paths do not do: checked acquisitions, contention.
    #[cold]
    #[inline(never)]
    fn enter_slower(&self, me: usize) -> bool {
        let w = &E::sync().witness;
        let spin = self.is_spin();
        let tag = if w.active() { CHECKED } else { 0 };
        // A spin mutex raises the SPL *before* the checker records the hold: an interrupt
        // taken between the two would run its filter on this thread, and a filter taking the
        // same mutex would look like a recursive acquisition (it found this in the COM1
        // driver). Above the mutex's IPL no such interrupt can come.
        if spin {
            E::spl().spin_enter(self.ipl);
        }
        if tag != 0 && w.checking() && !self.check_acquire() {
            if spin {
                E::spl().spin_exit();
            }
            return false; // recursion refused under Policy::Record
        }
        let t0 = if tag != 0 { E::M::now_ns() } else { 0 };
        if spin {
            let contended = self
                .owner
                .compare_exchange(SPIN, SPIN | me | tag, Ordering::Acquire, Ordering::Relaxed)
                .is_err();
            if contended {
                self.spin_contended(me, tag);
            }
            if tag != 0 {
                let spun = if contended { E::M::now_ns() - t0 } else { 0 };
                self.note_acquired(contended, spun, 0);
            }
            return true;
        }
        if self.owner.compare_exchange(0, me | tag, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            if tag != 0 {
                self.note_acquired(false, 0, 0);
            }
            return true;
        }
        self.adaptive_contended(me, tag)
    }

    fn note_acquired(&self, contended: bool, spin_ns: u64, block_ns: u64) {
        let w = &E::sync().witness;
        if w.stats_on() {
            w.count(self.class(), contended, spin_ns, block_ns);
            self.hold_start.store(E::M::now_ns(), Ordering::Relaxed);
        }
    }

    /// Everything but the fast paths.
    #[cold]
    #[inline(never)]
    fn exit_slow(&self, me: usize) {
        self.exit_slower(me);
    }

    #[cold]
    #[inline(never)]
    fn exit_slower(&self, me: usize) {
        let v = self.owner.load(Ordering::Relaxed);
        let w = &E::sync().witness;
        if v & !FLAGS != me {
            // Not ours: the checker names it; without the checker this is fatal.
            if w.checking() {
                let recorded =
                    w.release::<E::M>(E::sched().current().held_locks(), self.addr(), self.class());
                if recorded {
                    w.report::<E::M>(Violation::ReleaseNotHeld { lock: self.name });
                }
                return;
            }
            panic!("mutex \"{}\": released by a thread that does not own it", self.name);
        }
        if v & CHECKED != 0 {
            let class = self.class();
            if w.stats_on() {
                let t0 = self.hold_start.load(Ordering::Relaxed);
                w.note_hold(class, E::M::now_ns().saturating_sub(t0));
            }
            // Ours (the word says so): drop the record whether or not checking is on now —
            // another CPU may have turned it off since we took the lock, and a stale record
            // would later look like a recursive acquisition.
            w.forget::<E::M>(E::sched().current().held_locks(), self.addr(), class);
        }
        if v & SPIN != 0 {
            self.owner.store(SPIN, Ordering::Release);
            E::spl().spin_exit();
            return;
        }
        if v & WAITERS == 0 && self.owner.compare_exchange(v, 0, Ordering::Release, Ordering::Relaxed).is_ok()
        {
            return;
        }
        self.adaptive_exit_slow(me);
    }

    #[cold]
    fn spin_contended(&self, me: usize, tag: usize) {
        trace::emit::<E::M>(trace::Kind::LockContend, self as *const Self as u64);
        let mut backoff = 1u32;
        loop {
            let v = self.owner.load(Ordering::Relaxed);
            if v & !FLAGS == me {
                panic!("spin mutex \"{}\": recursive acquisition", self.name);
            }
            if v == SPIN
                && self
                    .owner
                    .compare_exchange(SPIN, SPIN | me | tag, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
            for _ in 0..backoff {
                E::M::relax();
            }
            backoff = (backoff * 2).min(1024);
        }
    }

    #[cold]
    fn adaptive_contended(&self, me: usize, tag: usize) -> bool {
        trace::emit::<E::M>(trace::Kind::LockContend, self as *const Self as u64);
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
                if self.owner.compare_exchange(0, me | tag, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    break;
                }
                continue;
            }
            let owner = v & !FLAGS;
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
            E::probe_turnstile();
            let tb = if stats { E::M::now_ns() } else { 0 };
            let io = E::M::intr_disable();
            let mut ts = sync.turnstiles.lock(self.addr(), &io);
            let v = self.owner.load(Ordering::Relaxed);
            if v == 0 {
                continue;
            }
            if v & WAITERS == 0
                && self.owner.compare_exchange(v, v | WAITERS, Ordering::Relaxed, Ordering::Relaxed).is_err()
            {
                continue;
            }
            let owner = v & !FLAGS;
            if owner == me {
                continue;
            }
            let me_t = sched.current();
            if ts.block(me_t, true, Some(owner as *const sched::Thread<E>)).is_err() {
                drop(ts);
                drop(io);
                sync.witness
                    .report::<E::M>(Violation::Deadlock { lock: self.name, thread: me_t.name().into() });
                return false;
            }
            sched.sleep_prepare(&io);
            drop(ts);
            while !me_t.ext().granted() {
                sched.sleep_commit(&io);
                sched.sleep_prepare(&io);
            }
            sched.sleep_cancel(&io);
            drop(io);
            if stats {
                block_ns += E::M::now_ns() - tb;
            }
            break; // handed to us: the owner word is ours (tagged by the releaser)
        }
        if stats {
            spin_ns = (E::M::now_ns() - t0).saturating_sub(block_ns);
        }
        if tag != 0 {
            self.note_acquired(true, spin_ns, block_ns);
        }
        true
    }

    #[cold]
    fn adaptive_exit_slow(&self, me: usize) {
        let sched = E::sched();
        let sync = E::sync();
        // Interrupts stay disabled until the new owner is awake: dropping our loan may make
        // us preemptible, and a preemption between the grant and the wakeup would leave the
        // new owner asleep behind whatever outranks us now.
        let io = E::M::intr_disable();
        let granted = {
            let mut ts = sync.turnstiles.lock(self.addr(), &io);
            let g = ts.release(Some(me as *const sched::Thread<E>));
            if g.count == 0 {
                self.owner.store(0, Ordering::Release);
            } else {
                let more = if g.waiters_left { WAITERS } else { 0 };
                let tag = if sync.witness.active() { CHECKED } else { 0 };
                self.owner.store(g.heir as usize | more | tag, Ordering::Release);
            }
            g
        };
        granted.wake();
        drop(io);
        // Our lent priority may have been withdrawn: let a more urgent thread run.
        sched.preempt_check();
    }
}

impl<T, E: Env> Mutex<T, E> {
    /// An adaptive mutex named `name` (the name is its lock class for the checker and
    /// `lockstat`).
    pub const fn new_adaptive(name: &'static str, value: T) -> Self {
        Mutex { raw: RawMutex::new(name, false, Ipl::None), value: UnsafeCell::new(value) }
    }

    /// A spin mutex that raises the SPL to `ipl` (which must be above `IPL_NONE`).
    pub const fn new_spin(name: &'static str, ipl: Ipl, value: T) -> Self {
        assert!(ipl as u8 > Ipl::None as u8, "a spin mutex needs an IPL above IPL_NONE");
        Mutex { raw: RawMutex::new(name, true, ipl), value: UnsafeCell::new(value) }
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
    #[inline(always)]
    pub fn lock(&self) -> MutexGuard<'_, T, E> {
        let me = curthread::<E>();
        let held = self.raw.enter_as(me);
        MutexGuard { m: self, held, fast: false, me, _not_send: PhantomData }
    }

    /// Acquires a mutex the caller knows to be a spin mutex, by NetBSD's `mutex_spin_enter`
    /// path ([`RawMutex::spin_enter`]); the guard releases by `mutex_spin_exit`'s. On an
    /// adaptive mutex it still works, by the general path.
    #[inline(always)]
    pub fn spin_lock(&self) -> MutexGuard<'_, T, E, true> {
        let me = curthread::<E>();
        let r = &self.raw;
        E::spl().spin_enter(r.ipl);
        let free = E::sync().witness.fast_spin_expect();
        if r.owner.compare_exchange(free, me | SPIN, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            // Taken unchecked by this thread: the guard's release needs no test of the word.
            return MutexGuard { m: self, held: true, fast: true, me, _not_send: PhantomData };
        }
        let held = r.spin_enter_slow(me | SPIN);
        MutexGuard { m: self, held, fast: false, me, _not_send: PhantomData }
    }

    /// Acquires the mutex if it is free.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T, E>> {
        self.raw.try_enter().then_some(MutexGuard {
            m: self,
            held: true,
            fast: false,
            me: curthread::<E>(),
            _not_send: PhantomData,
        })
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
        self.raw.is_spin()
    }

    /// The mutex's name.
    pub fn name(&self) -> &'static str {
        self.raw.name
    }
}

/// Holds a [`Mutex`]; releases on drop.
///
/// `SPIN_KIND`: taken by [`Mutex::spin_lock`], released by [`RawMutex::spin_exit`] (a type
/// parameter, so the guard's drop has no run-time test).
pub struct MutexGuard<'a, T, E: Env, const SPIN_KIND: bool = false> {
    m: &'a Mutex<T, E>,
    /// False only when the checker refused the acquisition (`Policy::Record`): the guard then
    /// releases nothing (and must not be dereferenced; it panics if it is).
    held: bool,
    /// Taken by `spin_lock`'s fast path (unchecked, by this thread): released by a store of
    /// the free word and the SPL's nesting count alone — NetBSD's `mutex_spin_exit`, which
    /// does not test the word either. The guard is the proof of ownership (it is not `Send`).
    fast: bool,
    /// The holder (the current thread, loaded once at the enter).
    me: usize,
    /// A guard stays on the thread (and, for a spin mutex, the CPU) that took the lock.
    _not_send: PhantomData<*const ()>,
}

impl<'a, T, E: Env, const SPIN_KIND: bool> MutexGuard<'a, T, E, SPIN_KIND> {
    /// Whether the lock was really acquired (false only under the checker's `Record`
    /// policy, after a refused recursion).
    pub fn is_held(&self) -> bool {
        self.held
    }

    /// The mutex.
    pub fn mutex(&self) -> &'a Mutex<T, E> {
        self.m
    }

    #[inline(always)]
    pub(crate) fn raw_release(&mut self) {
        if self.held {
            if SPIN_KIND && self.fast {
                self.m.raw.owner.store(SPIN, Ordering::Release);
                E::spl().spin_exit();
            } else if SPIN_KIND {
                self.m.raw.spin_exit_as(self.me);
            } else {
                self.m.raw.exit_as(self.me);
            }
            self.held = false;
            self.fast = false;
        }
    }

    pub(crate) fn raw_reacquire(&mut self) {
        self.held = if SPIN_KIND { self.m.raw.spin_enter_as(self.me) } else { self.m.raw.enter_as(self.me) };
    }
}

impl<T, E: Env, const SPIN_KIND: bool> Deref for MutexGuard<'_, T, E, SPIN_KIND> {
    type Target = T;
    fn deref(&self) -> &T {
        assert!(self.held, "mutex \"{}\": guard of a refused acquisition dereferenced", self.m.name());
        // SAFETY: we hold the mutex.
        unsafe { &*self.m.value.get() }
    }
}

impl<T, E: Env, const SPIN_KIND: bool> DerefMut for MutexGuard<'_, T, E, SPIN_KIND> {
    fn deref_mut(&mut self) -> &mut T {
        assert!(self.held, "mutex \"{}\": guard of a refused acquisition dereferenced", self.m.name());
        // SAFETY: we hold the mutex; `&mut self` is unique.
        unsafe { &mut *self.m.value.get() }
    }
}

impl<T, E: Env, const SPIN_KIND: bool> Drop for MutexGuard<'_, T, E, SPIN_KIND> {
    #[inline(always)]
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
    const INIT: Self = RawAdaptiveMutex(RawMutex::new("lock_api::Mutex", false, Ipl::None));
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
        self.0.is_locked()
    }
}

/// A `lock_api` mutex backed by the kernel's adaptive mutex.
pub type LockApiMutex<T, E> = lock_api::Mutex<RawAdaptiveMutex<E>, T>;

#[allow(dead_code)]
fn _assert_ipl_cpu<M: IplCpu>() {}
