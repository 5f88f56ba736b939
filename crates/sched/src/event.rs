//! [`Event`]: the smallest sleep/wakeup object — an auto-reset flag that threads sleep on.
//!
//! It is what the scheduler's own tests and the kernel's start-up use to hand control
//! between threads; the `sync` crate's sleep queues and turnstiles are built the same way
//! on [`Scheduler::sleep_prepare`] / [`Scheduler::sleep_commit`] / [`Scheduler::wakeup`].
//!
//! Protocol: `set` publishes the flag, then wakes every registered waiter. A waiter prepares
//! to sleep, registers under the waiter lock, and re-checks the flag under that lock before
//! committing; so a `set` either happens before the re-check (the waiter sees the flag) or
//! finds the waiter registered (and wakes it). One waiter consumes each `set`.
//!
//! The usual event has one waiter (an interrupt thread, a driver's sleeper): it is kept in
//! a slot of its own, so neither `wait` nor `set` allocates or frees; further waiters go to
//! a list.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use machine::Machine;

use crate::SchedEnv;

use crate::spin::SpinLock;
use crate::thread::Thread;
use crate::Scheduler;

/// An auto-reset event.
pub struct Event<E: SchedEnv> {
    /// The scheduler (set at construction, or later by [`Event::bind`] for events built in
    /// `const` context before the scheduler can be named).
    sched: core::sync::atomic::AtomicPtr<Scheduler<E>>,
    flag: AtomicBool,
    waiters: SpinLock<Waiters<E>>,
}

/// The registered waiters: the first in its slot, the others in a list.
struct Waiters<E: SchedEnv> {
    first: Option<Arc<Thread<E>>>,
    more: Vec<Arc<Thread<E>>>,
}

impl<E: SchedEnv> Waiters<E> {
    const fn new() -> Self {
        Waiters { first: None, more: Vec::new() }
    }

    fn has(&self, t: &Thread<E>) -> bool {
        self.first.as_ref().is_some_and(|f| core::ptr::eq(&**f, t))
            || self.more.iter().any(|w| core::ptr::eq(&**w, t))
    }
}

impl<E: SchedEnv> Event<E> {
    /// A cleared event.
    pub const fn new(sched: &'static Scheduler<E>) -> Self {
        Event {
            sched: core::sync::atomic::AtomicPtr::new(sched as *const Scheduler<E> as *mut Scheduler<E>),
            flag: AtomicBool::new(false),
            waiters: SpinLock::new(Waiters::new()),
        }
    }

    /// A cleared event not yet tied to a scheduler; [`Event::bind`] it before use.
    pub const fn new_unbound() -> Self {
        Event {
            sched: core::sync::atomic::AtomicPtr::new(core::ptr::null_mut()),
            flag: AtomicBool::new(false),
            waiters: SpinLock::new(Waiters::new()),
        }
    }

    /// Ties an event made by [`Event::new_unbound`] to its scheduler.
    pub fn bind(&self, sched: &'static Scheduler<E>) {
        self.sched.store(sched as *const Scheduler<E> as *mut Scheduler<E>, Ordering::Release);
    }

    fn sched(&self) -> &'static Scheduler<E> {
        let p = self.sched.load(Ordering::Acquire);
        assert!(!p.is_null(), "event used before Event::bind");
        // SAFETY: only `new` and `bind` store here, from `&'static Scheduler<E>`.
        unsafe { &*p }
    }

    /// Sets the event and wakes the waiters (callable from interrupt handlers).
    pub fn set(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let (first, more) = {
            let io = E::M::intr_disable();
            let mut w = self.waiters.lock(&io);
            let more = if w.more.is_empty() { Vec::new() } else { core::mem::take(&mut w.more) };
            (w.first.take(), more)
        };
        if let Some(t) = first {
            self.sched().wakeup(&t);
        }
        for t in &more {
            self.sched().wakeup(t);
        }
    }

    /// Sleeps until the event is set, then clears it.
    pub fn wait(&self) {
        self.wait_deadline(u64::MAX);
    }

    /// Like [`Event::wait`] but gives up at `deadline_ns` ([`Machine::now_ns`] time).
    /// Returns whether the event was consumed.
    pub fn wait_deadline(&self, deadline_ns: u64) -> bool {
        let me = self.sched().current();
        loop {
            if self.flag.swap(false, Ordering::SeqCst) {
                return true;
            }
            if deadline_ns != u64::MAX && E::M::now_ns() >= deadline_ns {
                let io = E::M::intr_disable();
                let mut w = self.waiters.lock(&io);
                if w.first.as_ref().is_some_and(|f| core::ptr::eq(&**f, me)) {
                    w.first = None;
                }
                w.more.retain(|t| !core::ptr::eq(&**t, me));
                return false;
            }
            let io = E::M::intr_disable();
            self.sched().sleep_prepare(&io);
            {
                let mut w = self.waiters.lock(&io);
                if self.flag.load(Ordering::SeqCst) {
                    drop(w);
                    self.sched().sleep_cancel(&io);
                    continue;
                }
                if !w.has(me) {
                    match w.first {
                        None => w.first = Some(self.sched().current_arc()),
                        Some(_) => w.more.push(self.sched().current_arc()),
                    }
                }
            }
            self.sched().sleep_commit_deadline(deadline_ns, &io);
        }
    }
}

/// An interrupt thread's wake-up word (FreeBSD's `it_need`): the interrupt sets it and wakes
/// the one thread that waits on it — no waiter list, no lock, no allocation — and the thread
/// clears it before each round of work. [`Need::post`] runs in interrupt context with
/// interrupts disabled and does not preempt: the interrupt's exit is the preemption point,
/// where the woken thread, if it outranks the interrupted one, is switched to.
///
/// Protocol: the waiter's owner registers it once ([`Need::register`]) and the waiter loops on
/// [`Need::wait`]; a `post` before the registration is not lost (the word stays set, and the
/// registration wakes the thread if it already sleeps). The
/// owner unregisters the thread ([`Need::unregister`]) only when no `post` can run any more.
pub struct Need<E: SchedEnv> {
    need: AtomicBool,
    /// The waiting thread, an `Arc::into_raw` owned here (null: none registered).
    thread: core::sync::atomic::AtomicPtr<Thread<E>>,
}

impl<E: SchedEnv> Default for Need<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: SchedEnv> Need<E> {
    /// Clear, no thread.
    pub const fn new() -> Self {
        Need {
            need: AtomicBool::new(false),
            thread: core::sync::atomic::AtomicPtr::new(core::ptr::null_mut()),
        }
    }

    /// Makes `t` the thread that [`Need::post`] wakes (once), and wakes it: a `post` that
    /// came before found no thread to wake, and `t` may already be asleep in [`Need::wait`].
    /// (Sequentially consistent on both sides: either that `post` saw the thread, or this
    /// wake-up comes after its word was set.)
    pub fn register(&self, t: Arc<Thread<E>>, sched: &'static Scheduler<E>) {
        let raw = Arc::into_raw(t);
        let old = self.thread.swap(raw as *mut Thread<E>, Ordering::SeqCst);
        assert!(old.is_null(), "Need::register: a thread is registered already");
        // SAFETY: `raw` is the reference just stored; it stays there until `unregister`.
        let t = core::mem::ManuallyDrop::new(unsafe { Arc::from_raw(raw) });
        sched.wakeup(&t);
    }

    /// Drops the registered thread's reference. The caller guarantees that no `post` runs
    /// now or later (the interrupt source is gone from its vector).
    pub fn unregister(&self) {
        let p = self.thread.swap(core::ptr::null_mut(), Ordering::AcqRel);
        if !p.is_null() {
            // SAFETY: `p` came from `Arc::into_raw` in `register`; swapped out, so ours.
            drop(unsafe { Arc::from_raw(p) });
        }
    }

    /// The registered thread, if any.
    pub fn thread(&self) -> Option<&Thread<E>> {
        // SAFETY: a registered thread's reference is held here until `unregister` (which
        // needs `&self` exclusively in spirit: see the protocol) or our drop.
        unsafe { self.thread.load(Ordering::Acquire).as_ref() }
    }

    /// Sets the word and wakes the thread if it sleeps (interrupts disabled: the token).
    #[inline]
    pub fn post(&self, sched: &'static Scheduler<E>, io: &machine::IntrOff) {
        self.need.store(true, Ordering::SeqCst);
        let p = self.thread.load(Ordering::SeqCst);
        if !p.is_null() {
            // SAFETY: a registered thread's reference is held here until `unregister`, which
            // no `post` overlaps (the protocol above).
            let t = core::mem::ManuallyDrop::new(unsafe { Arc::from_raw(p) });
            sched.wakeup_locked(&t, io);
        }
    }

    /// [`Need::post`] from any context (thread context preempts at once for a more urgent
    /// woken thread).
    pub fn post_any(&self, sched: &'static Scheduler<E>) {
        {
            let io = E::M::intr_disable();
            self.post(sched, &io);
        }
        sched.preempt_check();
    }

    /// Sleeps until the word is set, then clears it (the registered thread only).
    pub fn wait(&self, sched: &'static Scheduler<E>) {
        loop {
            if self.need.swap(false, Ordering::Acquire) {
                return;
            }
            let io = E::M::intr_disable();
            sched.sleep_prepare(&io);
            // `sleep_prepare`'s fence pairs with the one in `wakeup_locked`: either we see the
            // word set here or the poster sees us SLEEPING and wakes us.
            if self.need.load(Ordering::Relaxed) {
                sched.sleep_cancel(&io);
                continue;
            }
            sched.sleep_commit(&io);
        }
    }
}

impl<E: SchedEnv> Drop for Need<E> {
    fn drop(&mut self) {
        self.unregister();
    }
}
