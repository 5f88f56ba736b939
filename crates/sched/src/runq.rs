//! A per-CPU run queue: one FIFO per priority and a bitmap of the non-empty ones, so both
//! "enqueue" and "take the most urgent" are O(1) (a find-first-set over two words).
//! The FIFOs are linked through the threads themselves (no allocation, no atomic link):
//! a push is five stores, a pop of the head five loads and stores, and a yield to an equal
//! thread one rotation of its FIFO.

use alloc::sync::Arc;
use core::ptr;

use crate::SchedEnv;

use crate::pri::{Priority, NPRI};
use crate::thread::{Thread, RQ_UNLINKED};

const WORDS: usize = NPRI.div_ceil(64);

/// The queue assertions' panics, out of line: their arguments go in registers, so the
/// callers (the switch among them) need no stack for the message.
#[cold]
#[inline(never)]
fn queued_twice(name: &str) -> ! {
    panic!("thread {name} queued twice")
}

#[cold]
#[inline(never)]
fn no_queued_thread(p: usize) -> ! {
    panic!("priority {p} has no queued thread")
}

/// Threads by priority: per priority a FIFO singly linked through each thread's `rq_next`
/// (the queue owns one `Arc` reference per queued thread, kept as its raw pointer), and a
/// bitmap of the non-empty FIFOs. Touched only under the owning CPU's run-queue lock.
pub struct RunQueue<E: SchedEnv> {
    heads: [*const Thread<E>; NPRI],
    tails: [*const Thread<E>; NPRI],
    bitmap: [u64; WORDS],
    len: usize,
}

// SAFETY: the raw pointers are `Arc` references the queue owns (`Thread` is `Send + Sync`);
// the queue is used behind its CPU's `SpinLock`.
unsafe impl<E: SchedEnv> Send for RunQueue<E> {}

impl<E: SchedEnv> Default for RunQueue<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: SchedEnv> Drop for RunQueue<E> {
    fn drop(&mut self) {
        while self.pop_highest().is_some() {}
    }
}

impl<E: SchedEnv> RunQueue<E> {
    /// An empty queue.
    pub const fn new() -> Self {
        RunQueue { heads: [ptr::null(); NPRI], tails: [ptr::null(); NPRI], bitmap: [0; WORDS], len: 0 }
    }

    /// Threads queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no thread is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `t` at the back of its priority's FIFO. Panics if it is already on a queue.
    #[inline(always)]
    pub fn push_back(&mut self, t: Arc<Thread<E>>) {
        let p = t.rq_index();
        let raw = Arc::into_raw(t);
        // SAFETY: `raw` is a live thread (we own a reference); its link is ours to write
        // while it is on no queue, and the assert checks that it is on none.
        unsafe {
            if (*(*raw).rq_next.get()).cast::<()>() != RQ_UNLINKED {
                queued_twice(&(*raw).name);
            }
            *(*raw).rq_next.get() = ptr::null();
            match self.tails[p].is_null() {
                true => self.heads[p] = raw,
                false => *(*self.tails[p]).rq_next.get() = raw,
            }
        }
        self.tails[p] = raw;
        self.bitmap[p / 64] |= 1 << (p % 64);
        self.len += 1;
    }

    /// The most urgent priority with a queued thread.
    #[inline(always)]
    pub fn highest(&self) -> Option<Priority> {
        for w in (0..WORDS).rev() {
            let bits = self.bitmap[w];
            if bits != 0 {
                let p = w * 64 + 63 - bits.leading_zeros() as usize;
                return Priority::new(p as u8);
            }
        }
        None
    }

    /// Takes the first thread of the most urgent non-empty FIFO.
    #[inline(always)]
    pub fn pop_highest(&mut self) -> Option<Arc<Thread<E>>> {
        let p = self.highest()?.index();
        // SAFETY: a set bit means a non-empty FIFO: its head is a queued thread.
        Some(unsafe { self.unlink(p, ptr::null(), self.heads[p]) })
    }

    /// Takes the first thread of FIFO `p`, which [`RunQueue::highest`] just named (so it is
    /// not empty).
    #[inline(always)]
    pub fn pop_at(&mut self, p: Priority) -> Arc<Thread<E>> {
        let p = p.index();
        if self.heads[p].is_null() {
            no_queued_thread(p);
        }
        // SAFETY: non-empty (checked): its head is a queued thread.
        unsafe { self.unlink(p, ptr::null(), self.heads[p]) }
    }

    /// Rotates FIFO `p`, which [`RunQueue::highest`] just named (so it is not empty): takes
    /// its first thread and queues `t`, whose priority is `p`, at its back — a yield to an
    /// equal-priority thread. The pop and the push without their bitmap and length updates
    /// (the FIFO stays non-empty, the count the same). Panics if `t` is already on a queue.
    #[inline(always)]
    pub fn rotate(&mut self, p: Priority, t: Arc<Thread<E>>) -> Arc<Thread<E>> {
        let p = p.index();
        debug_assert_eq!(t.rq_index(), p, "rotate: the thread's priority is not the FIFO's");
        let head = self.heads[p];
        if head.is_null() {
            no_queued_thread(p);
        }
        let raw = Arc::into_raw(t);
        // SAFETY: `head` is queued on FIFO `p` (non-empty, checked) and `raw` is a live thread
        // (we own a reference) on no queue (checked), so both links are ours to write.
        unsafe {
            if (*(*raw).rq_next.get()).cast::<()>() != RQ_UNLINKED {
                queued_twice(&(*raw).name);
            }
            *(*raw).rq_next.get() = ptr::null();
            let after = *(*head).rq_next.get();
            match after.is_null() {
                // `head` was alone: `t` is alone now.
                true => self.heads[p] = raw,
                false => {
                    self.heads[p] = after;
                    *(*self.tails[p]).rq_next.get() = raw;
                }
            }
            self.tails[p] = raw;
            *(*head).rq_next.get() = RQ_UNLINKED.cast();
            Arc::from_raw(head)
        }
    }

    /// Takes the first thread, most urgent first, that `eligible` accepts.
    pub fn pop_highest_where(
        &mut self,
        mut eligible: impl FnMut(&Thread<E>) -> bool,
    ) -> Option<Arc<Thread<E>>> {
        for p in (0..NPRI).rev() {
            if self.bitmap[p / 64] & (1 << (p % 64)) == 0 {
                continue;
            }
            if let Some(t) = self.take_from(p, &mut eligible) {
                return Some(t);
            }
        }
        None
    }

    fn take_from(
        &mut self,
        p: usize,
        mut eligible: impl FnMut(&Thread<E>) -> bool,
    ) -> Option<Arc<Thread<E>>> {
        let mut before: *const Thread<E> = ptr::null();
        let mut t = self.heads[p];
        while !t.is_null() {
            // SAFETY: every thread on the FIFO is live (the queue owns a reference).
            if eligible(unsafe { &*t }) {
                // SAFETY: `t` is on FIFO `p`, right after `before` (null: the head).
                return Some(unsafe { self.unlink(p, before, t) });
            }
            before = t;
            // SAFETY: as above; its link is the queue's.
            t = unsafe { *(*t).rq_next.get() };
        }
        None
    }

    /// Unlinks `t`, which follows `before` (null: `t` is the head) on FIFO `p`, and hands
    /// back the queue's reference.
    ///
    /// # Safety
    /// `t` is on FIFO `p`, directly after `before`.
    #[inline]
    unsafe fn unlink(&mut self, p: usize, before: *const Thread<E>, t: *const Thread<E>) -> Arc<Thread<E>> {
        // SAFETY: per the contract, `t` and `before` are queued here and their links ours.
        unsafe {
            let next = *(*t).rq_next.get();
            match before.is_null() {
                true => self.heads[p] = next,
                false => *(*before).rq_next.get() = next,
            }
            if next.is_null() {
                self.tails[p] = before;
                if before.is_null() {
                    self.bitmap[p / 64] &= !(1 << (p % 64));
                }
            }
            *(*t).rq_next.get() = RQ_UNLINKED.cast();
            self.len -= 1;
            Arc::from_raw(t)
        }
    }

    /// Takes `t` off the queue if it is on it (under its current priority).
    pub fn remove(&mut self, t: &Thread<E>) -> Option<Arc<Thread<E>>> {
        let p = t.rq_index();
        self.take_from(p, |x| core::ptr::eq(x, t))
    }
}
