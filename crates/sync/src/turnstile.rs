//! Turnstiles: where threads block on mutexes and rwlocks, with priority inheritance.
//!
//! One turnstile table for the system, behind one spin lock (taken with interrupts
//! disabled). It holds, per lock address with blocked threads, the queue of waiters, and the
//! [`PiBook`] of loans. A single lock keeps the priority-inheritance walk along chains of
//! owners (A waits on B's lock while B waits on C's) simple and obviously race-free; NetBSD
//! hashes turnstile chains and locks two at a time for the walk, which we can adopt if
//! `lockstat` ever shows this lock contended. Lock order: turnstile lock → run-queue locks
//! (through `Scheduler::set_priority` and `wakeup`); the scheduler never takes it.
//!
//! ## Why dereferencing an owner is safe here
//! Locks do not hold references to their owners, only addresses. The turnstile dereferences
//! an owner only while holding the turnstile lock, after it saw (in the lock word) that the
//! owner still owns the lock *with the waiters bit set*: such an owner cannot release without
//! taking the turnstile lock, so it cannot have released and exited.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use machine::IntrOff;
use sched::{Priority, SchedEnv, Scheduler, SpinGuard, SpinLock, Thread};

use crate::pi::{Changes, Deadlock, PiBook};

/// A thread blocked on a lock.
pub struct Waiter<E: SchedEnv> {
    /// The thread.
    pub thread: Arc<Thread<E>>,
    /// Writer (or mutex) rather than reader.
    pub writer: bool,
    /// Set by the releaser that grants the lock, before it wakes the thread. Points into the
    /// waiter's stack frame, which lives until it sees the flag set.
    granted: *const AtomicBool,
}

// SAFETY: `granted` points at an `AtomicBool` that stays valid while the waiter is queued
// (see the field doc); everything else is `Send`.
unsafe impl<E: SchedEnv> Send for Waiter<E> {}

impl<E: SchedEnv> Waiter<E> {
    /// Grants the lock: sets the waiter's flag. Wake the thread afterwards.
    pub fn grant(&self) {
        // SAFETY: the flag outlives the waiter's presence in the queue (field doc), and the
        // waiter was just taken out of the queue by the caller, under the turnstile lock.
        unsafe { (*self.granted).store(true, Ordering::Release) };
    }
}

/// Turnstile state behind the lock.
pub struct TsState<E: SchedEnv> {
    book: PiBook,
    queues: BTreeMap<usize, VecDeque<Waiter<E>>>,
}

/// The turnstile table.
pub struct Turnstiles<E: SchedEnv> {
    state: SpinLock<TsState<E>>,
}

impl<E: SchedEnv> Default for Turnstiles<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: SchedEnv> Turnstiles<E> {
    /// Empty table.
    pub const fn new() -> Self {
        Turnstiles { state: SpinLock::new(TsState { book: PiBook::new(), queues: BTreeMap::new() }) }
    }

    /// Takes the turnstile lock.
    pub fn lock<'a>(&'a self, io: &'a IntrOff) -> TsGuard<'a, E> {
        TsGuard { st: self.state.lock(io) }
    }
}

/// The turnstile lock, held.
pub struct TsGuard<'a, E: SchedEnv> {
    st: SpinGuard<'a, TsState<E>>,
}

fn apply<E: SchedEnv>(sched: &'static Scheduler<E>, changes: &Changes) {
    for &(key, pri) in changes {
        // SAFETY: every thread in a change list is a queued waiter (kept alive by its `Arc`
        // in a queue), the releasing thread itself, or an owner of a lock with waiters, which
        // cannot exit before releasing through this lock (module doc).
        let t = unsafe { &*(key as *const Thread<E>) };
        sched.set_priority(t, Priority::new(pri).unwrap_or(Priority::MAX));
    }
}

impl<E: SchedEnv> TsGuard<'_, E> {
    /// Queues `me` on `lock` (owned by `owner`, or by readers if `None`) and lends its
    /// priority along the chain. The caller then prepares to sleep, drops the guard, and
    /// sleeps until `granted` is set.
    pub fn block(
        &mut self,
        sched: &'static Scheduler<E>,
        lock: usize,
        me: &Arc<Thread<E>>,
        writer: bool,
        owner: Option<*const Thread<E>>,
        granted: &AtomicBool,
    ) -> Result<(), Deadlock> {
        let owner = owner.map(|o| {
            // SAFETY: the caller saw `o` owning `lock` with the waiters bit set (module doc).
            let base = unsafe { (*o).base_priority().get() };
            (o as usize, base)
        });
        let changes = self.st.book.block(Arc::as_ptr(me) as usize, me.base_priority().get(), lock, owner)?;
        apply(sched, &changes);
        self.st.queues.entry(lock).or_default().push_back(Waiter {
            thread: me.clone(),
            writer,
            granted: granted as *const AtomicBool,
        });
        Ok(())
    }

    /// Number of threads blocked on `lock`.
    pub fn waiters(&self, lock: usize) -> usize {
        self.st.queues.get(&lock).map_or(0, |q| q.len())
    }

    /// Whether a writer waits on `lock`.
    pub fn writer_waiting(&self, lock: usize) -> bool {
        self.st.queues.get(&lock).is_some_and(|q| q.iter().any(|w| w.writer))
    }

    /// Takes the waiter to grant `lock` to: the most urgent, first come among equals.
    pub fn take_first(&mut self, lock: usize) -> Option<Waiter<E>> {
        let q = self.st.queues.get_mut(&lock)?;
        let best = q.iter().map(|w| w.thread.priority()).max()?;
        let i = q.iter().position(|w| w.thread.priority() == best)?;
        let w = q.remove(i);
        if q.is_empty() {
            self.st.queues.remove(&lock);
        }
        w
    }

    /// Takes every waiting reader of `lock`.
    pub fn take_readers(&mut self, lock: usize) -> Vec<Waiter<E>> {
        let Some(q) = self.st.queues.get_mut(&lock) else { return Vec::new() };
        let mut readers = Vec::new();
        let mut i = 0;
        while i < q.len() {
            if !q[i].writer {
                readers.extend(q.remove(i));
            } else {
                i += 1;
            }
        }
        if q.is_empty() {
            self.st.queues.remove(&lock);
        }
        readers
    }

    /// `old_owner` releases `lock`, handing it to `new_owner` (a waiter just taken) or to
    /// nobody; loans on `lock` are withdrawn from the old owner and the remaining waiters lend
    /// to the new one.
    pub fn transfer(
        &mut self,
        sched: &'static Scheduler<E>,
        lock: usize,
        old_owner: Option<*const Thread<E>>,
        new_owner: Option<&Arc<Thread<E>>>,
    ) {
        let new_key = new_owner.map(|t| Arc::as_ptr(t) as usize);
        let changes = match old_owner {
            Some(o) => self.st.book.release(lock, o as usize, new_key),
            None => match new_key {
                // Granted by readers leaving: the new owner stops waiting; the others lend to it.
                Some(n) => {
                    let mut c = self.st.book.unblock(n);
                    let rest: Vec<Arc<Thread<E>>> = self
                        .st
                        .queues
                        .get(&lock)
                        .map(|q| q.iter().map(|w| w.thread.clone()).collect())
                        .unwrap_or_default();
                    let nb = new_owner.map_or(0, |t| t.base_priority().get());
                    for w in rest {
                        let key = Arc::as_ptr(&w) as usize;
                        c.extend(self.st.book.unblock(key));
                        if let Ok(more) =
                            self.st.book.block(key, w.base_priority().get(), lock, Some((n, nb)))
                        {
                            c.extend(more);
                        }
                    }
                    c
                }
                None => Changes::new(),
            },
        };
        apply(sched, &changes);
    }

    /// A reader granted the lock stops waiting (its loan, if any, is withdrawn).
    pub fn unblock(&mut self, sched: &'static Scheduler<E>, t: &Arc<Thread<E>>) {
        let changes = self.st.book.unblock(Arc::as_ptr(t) as usize);
        apply(sched, &changes);
    }

    /// The effective priority the book gives `t` (tests and `ps`).
    pub fn lent_priority(&self, t: &Thread<E>) -> Option<u8> {
        self.st.book.effective(t as *const Thread<E> as usize)
    }
}
