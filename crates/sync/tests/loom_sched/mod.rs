//! Shared by the loom models: the scheduler's sleep/wakeup protocol (`crates/sched/src/lib.rs`),
//! restated with loom atomics, and the turnstile-style waiting built on it.
//!
//! A thread's state word is `RUNNING`, `SLEEPING` (prepared to sleep) or `BLOCKED` (off the
//! CPU), all accesses `SeqCst` as in the scheduler:
//! * `sleep_prepare`: store `SLEEPING`;
//! * `sleep_commit`: `cmpxchg` `SLEEPING` → `BLOCKED`; if that succeeds, stay off the CPU until
//!   a wakeup makes the state `RUNNING` again (here: `loom::thread::park`; the scheduler's
//!   enqueue under a run-queue lock is the synchronization, modelled by loom's unpark);
//! * `sleep_cancel`: store `RUNNING`;
//! * `wakeup`: `SLEEPING` → `RUNNING` by `cmpxchg` (the thread will not block), or `BLOCKED` →
//!   `RUNNING` and put it back on a CPU (unpark); `RUNNING`: nothing.
//!
//! Parking only a thread that really left the CPU matters: loom's `unpark` synchronizes the
//! target with the unparker at once, which would hide races if every wakeup unparked.
//!
//! Loom treats `SeqCst` loads and stores as `AcqRel` (it has no single total order for them);
//! `fence(SeqCst)` it models exactly.
#![allow(dead_code)]

use loom::sync::atomic::{fence, AtomicBool, AtomicU8};
use loom::sync::{Arc, Mutex};
use loom::thread;
use std::sync::atomic::Ordering::{Acquire, Release, SeqCst};

pub const RUNNING: u8 = 0;
pub const SLEEPING: u8 = 1;
pub const BLOCKED: u8 = 2;

/// A kernel thread as the scheduler sees it.
pub struct KThread {
    /// Address-like id (8-aligned, non-zero).
    pub id: usize,
    pub state: AtomicU8,
    /// The loom thread, set when it starts (before it can block).
    handle: Mutex<Option<thread::Thread>>,
    /// Model option: a `fence(SeqCst)` after `sleep_prepare`'s store and before `wakeup`'s
    /// load (the fix for the store-buffering race; see `loom_turnstile.rs`).
    pub fenced: bool,
}

impl KThread {
    /// The calling loom thread, with id `id`.
    pub fn current(id: usize) -> Arc<KThread> {
        let t = Self::unstarted(id, false);
        t.attach();
        t
    }

    /// A thread whose loom thread is not running yet: it calls `attach` first thing.
    pub fn unstarted(id: usize, fenced: bool) -> Arc<KThread> {
        Arc::new(KThread { id, state: AtomicU8::new(RUNNING), handle: Mutex::new(None), fenced })
    }

    /// Binds the calling loom thread.
    pub fn attach(&self) {
        *self.handle.lock().unwrap() = Some(thread::current());
    }

    pub fn sleep_prepare(&self) {
        self.state.store(SLEEPING, SeqCst);
        if self.fenced {
            fence(SeqCst);
        }
    }

    pub fn sleep_commit(&self) {
        if self.state.compare_exchange(SLEEPING, BLOCKED, SeqCst, SeqCst).is_ok() {
            while self.state.load(SeqCst) == BLOCKED {
                thread::park();
            }
        }
    }

    pub fn sleep_cancel(&self) {
        self.state.store(RUNNING, SeqCst);
    }

    /// Makes the thread runnable if it sleeps; whether it did.
    pub fn wakeup(&self) -> bool {
        if self.fenced {
            fence(SeqCst);
        }
        loop {
            match self.state.load(SeqCst) {
                SLEEPING => {
                    if self.state.compare_exchange(SLEEPING, RUNNING, SeqCst, SeqCst).is_ok() {
                        return true;
                    }
                }
                BLOCKED => {
                    if self.state.compare_exchange(BLOCKED, RUNNING, SeqCst, SeqCst).is_ok() {
                        self.handle.lock().unwrap().as_ref().expect("blocked before attach").unpark();
                        return true;
                    }
                }
                _ => return false,
            }
        }
    }
}

/// A thread blocked on a turnstile: its grant flag (in the real code, on its stack).
pub struct Waiter {
    pub thread: Arc<KThread>,
    pub writer: bool,
    pub granted: AtomicBool,
}

impl Waiter {
    pub fn new(thread: &Arc<KThread>, writer: bool) -> Arc<Waiter> {
        Arc::new(Waiter { thread: thread.clone(), writer, granted: AtomicBool::new(false) })
    }

    /// `Waiter::grant` in `turnstile.rs`: Release store of the flag.
    pub fn grant(&self) {
        self.granted.store(true, Release);
    }

    /// The waiting loop of `mutex.rs` / `rwlock.rs`, entered with the thread already prepared
    /// (`sleep_prepare` under the turnstile lock) and the turnstile lock dropped.
    pub fn wait(&self) {
        while !self.granted.load(Acquire) {
            self.thread.sleep_commit();
            self.thread.sleep_prepare();
        }
        self.thread.sleep_cancel();
    }
}
