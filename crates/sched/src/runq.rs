//! A per-CPU run queue: one FIFO per priority and a bitmap of the non-empty ones, so both
//! "enqueue" and "take the most urgent" are O(1) (a find-first-set over two words).

use alloc::sync::Arc;

use intrusive_collections::LinkedList;

use crate::SchedEnv;

use crate::pri::{Priority, NPRI};
use crate::thread::{RqAdapter, Thread};

const WORDS: usize = NPRI.div_ceil(64);

/// Runnable threads of one CPU, not counting the one on the CPU.
pub struct RunQueue<E: SchedEnv> {
    lists: [LinkedList<RqAdapter<E>>; NPRI],
    bitmap: [u64; WORDS],
    len: usize,
}

impl<E: SchedEnv> Default for RunQueue<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: SchedEnv> RunQueue<E> {
    /// An empty queue.
    pub const fn new() -> Self {
        RunQueue { lists: [const { LinkedList::new(RqAdapter::NEW) }; NPRI], bitmap: [0; WORDS], len: 0 }
    }

    /// Number of queued threads.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no thread is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `t` at the tail of its priority's list (round-robin order).
    pub fn push_back(&mut self, t: Arc<Thread<E>>) {
        let p = t.priority().index();
        self.lists[p].push_back(t);
        self.bitmap[p / 64] |= 1 << (p % 64);
        self.len += 1;
    }

    /// The highest priority with a queued thread.
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

    /// Removes and returns the first thread of the highest priority.
    pub fn pop_highest(&mut self) -> Option<Arc<Thread<E>>> {
        let p = self.highest()?.index();
        self.take_from(p, |_| true)
    }

    /// Removes the most urgent thread that `eligible` accepts (work stealing: unbound threads
    /// only). Scans from the highest priority down.
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
        let mut cursor = self.lists[p].front_mut();
        while let Some(t) = cursor.get() {
            if eligible(t) {
                let t = cursor.remove();
                if self.lists[p].is_empty() {
                    self.bitmap[p / 64] &= !(1 << (p % 64));
                }
                self.len -= 1;
                return t;
            }
            cursor.move_next();
        }
        None
    }

    /// Removes `t` if it is queued here (priority change); returns whether it was.
    pub fn remove(&mut self, t: &Thread<E>) -> Option<Arc<Thread<E>>> {
        let p = t.priority().index();
        self.take_from(p, |x| core::ptr::eq(x, t))
    }
}
