//! Sleep queues and condition variables.
//!
//! A thread waits on an address (a *wait channel*). Waiters are kept in a fixed table of
//! [`NBUCKETS`] queues hashed by address, as the BSD sleep tables are, each behind its own
//! spin lock taken with interrupts disabled. A condition variable is just an address with the
//! mutex protocol around it: `wait` queues the thread, *then* releases the mutex, then sleeps,
//! so a `signal` made under the mutex after the waiter released it always finds the waiter.
//! `signal` wakes the most urgent waiter (first come among equals); `broadcast` wakes all.
//! Timed waits use the scheduler's timed sleep; a waiter that times out removes itself.
//! Waiting with a spin mutex held is reported by the checker (and refused under `Record`).

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use machine::Machine;
use sched::{SchedEnv, SpinLock, Thread};

use crate::mutex::MutexGuard;
use crate::Env;

/// Number of sleep queues.
pub const NBUCKETS: usize = 64;

struct Sleeper<E: SchedEnv> {
    wchan: usize,
    thread: Arc<Thread<E>>,
    /// In the waiter's stack frame, valid while it is queued.
    woken: *const AtomicBool,
}

// SAFETY: `woken` points at an `AtomicBool` that lives while the sleeper is queued (the
// waiter removes itself before returning); the rest is `Send`.
unsafe impl<E: SchedEnv> Send for Sleeper<E> {}

/// The table of sleep queues.
pub struct SleepQueues<E: SchedEnv> {
    buckets: [SpinLock<Vec<Sleeper<E>>>; NBUCKETS],
}

impl<E: SchedEnv> Default for SleepQueues<E> {
    fn default() -> Self {
        Self::new()
    }
}

fn bucket_of(wchan: usize) -> usize {
    // Objects are at least 8-aligned; mix the bits above that.
    let x = wchan >> 3;
    (x ^ (x >> 6) ^ (x >> 12)) % NBUCKETS
}

impl<E: SchedEnv> SleepQueues<E> {
    /// Empty queues.
    pub const fn new() -> Self {
        SleepQueues { buckets: [const { SpinLock::new(Vec::new()) }; NBUCKETS] }
    }

    /// Wakes the most urgent thread waiting on `wchan`. Returns whether one was waiting.
    pub fn wake_one(&self, sched: &'static sched::Scheduler<E>, wchan: usize) -> bool {
        let t = {
            let io = E::M::intr_disable();
            let mut q = self.buckets[bucket_of(wchan)].lock(&io);
            let best = q.iter().filter(|s| s.wchan == wchan).map(|s| s.thread.priority()).max();
            let i = best.and_then(|b| q.iter().position(|s| s.wchan == wchan && s.thread.priority() == b));
            i.map(|i| {
                let s = q.remove(i);
                // SAFETY: the sleeper was queued until now, so its flag is alive.
                unsafe { (*s.woken).store(true, Ordering::Release) };
                s.thread
            })
        };
        match t {
            Some(t) => {
                sched.wakeup(&t);
                true
            }
            None => false,
        }
    }

    /// Wakes every thread waiting on `wchan`; returns how many.
    pub fn wake_all(&self, sched: &'static sched::Scheduler<E>, wchan: usize) -> usize {
        let ts: Vec<Arc<Thread<E>>> = {
            let io = E::M::intr_disable();
            let mut q = self.buckets[bucket_of(wchan)].lock(&io);
            let mut out = Vec::new();
            q.retain(|s| {
                if s.wchan == wchan {
                    // SAFETY: the sleeper is still queued, so its flag is alive.
                    unsafe { (*s.woken).store(true, Ordering::Release) };
                    out.push(s.thread.clone());
                    false
                } else {
                    true
                }
            });
            out
        };
        for t in &ts {
            sched.wakeup(t);
        }
        ts.len()
    }

    /// Number of threads waiting on `wchan`.
    pub fn waiters(&self, wchan: usize) -> usize {
        let io = E::M::intr_disable();
        let q = self.buckets[bucket_of(wchan)].lock(&io);
        q.iter().filter(|s| s.wchan == wchan).count()
    }
}

/// A condition variable.
pub struct CondVar<E: Env> {
    name: &'static str,
    _e: core::marker::PhantomData<E>,
}

impl<E: Env> CondVar<E> {
    /// A condition variable named `name`.
    pub const fn new(name: &'static str) -> Self {
        CondVar { name, _e: core::marker::PhantomData }
    }

    fn wchan(&self) -> usize {
        self as *const Self as usize
    }

    /// The name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Releases the mutex, sleeps until signalled, reacquires. May wake spuriously.
    pub fn wait<T, const SPIN_KIND: bool>(&self, guard: &mut MutexGuard<'_, T, E, SPIN_KIND>) {
        self.wait_deadline(guard, u64::MAX);
    }

    /// Like [`CondVar::wait`] with a deadline (`Machine::now_ns` time). Returns `false` if the
    /// deadline passed without a signal.
    pub fn wait_deadline<T, const SPIN_KIND: bool>(
        &self,
        guard: &mut MutexGuard<'_, T, E, SPIN_KIND>,
        deadline_ns: u64,
    ) -> bool {
        let sched = E::sched();
        let sync = E::sync();
        if sync.witness.active() && !sync.witness.check_sleep::<E::M>(sched.current().held_locks()) {
            return false; // refused under Policy::Record: a spurious wakeup
        }
        let woken = AtomicBool::new(false);
        let me = sched.current_arc();
        let wchan = self.wchan();
        let b = bucket_of(wchan);
        {
            let io = E::M::intr_disable();
            sync.sleepq.buckets[b].lock(&io).push(Sleeper { wchan, thread: me.clone(), woken: &woken });
            sched.sleep_prepare(&io);
            guard.raw_release();
            while !woken.load(Ordering::Acquire) && E::M::now_ns() < deadline_ns {
                sched.sleep_commit_deadline(deadline_ns, &io);
                sched.sleep_prepare(&io);
            }
            sched.sleep_cancel(&io);
            if !woken.load(Ordering::Acquire) {
                // Timed out: leave the queue (a waker may have taken us meanwhile).
                let mut q = sync.sleepq.buckets[b].lock(&io);
                q.retain(|s| !(s.wchan == wchan && Arc::ptr_eq(&s.thread, &me)));
            }
        }
        guard.raw_reacquire();
        woken.load(Ordering::Acquire)
    }

    /// Wakes one waiter.
    pub fn signal(&self) -> bool {
        E::sync().sleepq.wake_one(E::sched(), self.wchan())
    }

    /// Wakes every waiter.
    pub fn broadcast(&self) -> usize {
        E::sync().sleepq.wake_all(E::sched(), self.wchan())
    }
}
