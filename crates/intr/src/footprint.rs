//! What a dispatch model holds: the framework's threads (each with its stack) and the
//! memory of its sources — the pool's case is that it needs fewer threads than one per
//! source (dedicated) and fewer than one per CPU per blocked handler (pinned).
//!
//! [`Intr::footprint`] counts what exists now; the caller samples it (the main job does at
//! rest, after its devices are set up, and at each live record for the peak). Workqueue
//! threads are the drivers' own and are not counted.

use core::mem::size_of;
use core::sync::atomic::Ordering;

use machine::Machine;

use crate::{Intr, IntrEnv, Model, Source};

/// The framework's threads and source memory at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Pool ithreads (live, idle or busy).
    pub pool_threads: usize,
    /// One per dedicated source.
    pub dedicated_threads: usize,
    /// Pinned interrupt threads (every CPU's free list, parked or blocked).
    pub pinned_threads: usize,
    /// Soft-interrupt threads (one per CPU per level started).
    pub soft_threads: usize,
    /// The storm thread (0 or 1).
    pub storm_threads: usize,
    /// Established sources.
    pub sources: usize,
    /// Bytes those sources hold: the `Source` itself with its statistics, its `Arc`
    /// header and an owned name.
    pub source_bytes: usize,
    /// Bytes per thread: its stack and its `Thread`.
    pub thread_bytes: usize,
}

impl Footprint {
    /// Every framework thread.
    pub fn threads(&self) -> usize {
        self.pool_threads
            + self.dedicated_threads
            + self.pinned_threads
            + self.soft_threads
            + self.storm_threads
    }

    /// Bytes of those threads (stacks and thread structures).
    pub fn thread_memory(&self) -> usize {
        self.threads() * self.thread_bytes
    }

    /// The larger of each field (a running peak).
    pub fn max(&self, o: &Footprint) -> Footprint {
        Footprint {
            pool_threads: self.pool_threads.max(o.pool_threads),
            dedicated_threads: self.dedicated_threads.max(o.dedicated_threads),
            pinned_threads: self.pinned_threads.max(o.pinned_threads),
            soft_threads: self.soft_threads.max(o.soft_threads),
            storm_threads: self.storm_threads.max(o.storm_threads),
            sources: self.sources.max(o.sources),
            source_bytes: self.source_bytes.max(o.source_bytes),
            thread_bytes: self.thread_bytes.max(o.thread_bytes),
        }
    }
}

impl<E: IntrEnv> Intr<E> {
    /// What the framework holds now (see the module documentation).
    pub fn footprint(&'static self) -> Footprint {
        let sources = self.sources();
        let per_source = |s: &Source<E>| {
            let name = match &s.name {
                alloc::borrow::Cow::Owned(n) => n.capacity(),
                alloc::borrow::Cow::Borrowed(_) => 0,
            };
            size_of::<Source<E>>() + 2 * size_of::<usize>() + name
        };
        let levels = self.soft.started.iter().filter(|s| s.load(Ordering::Relaxed)).count();
        Footprint {
            pool_threads: self.pool.stats().size,
            dedicated_threads: sources.iter().filter(|s| s.model() == Model::Dedicated).count(),
            pinned_threads: self.pinned.stats().threads,
            soft_threads: levels * E::M::ncpus(),
            storm_threads: usize::from(self.storm_thread.load(Ordering::Relaxed)),
            sources: sources.len(),
            source_bytes: sources.iter().map(|s| per_source(s)).sum(),
            thread_bytes: sched::STACK_SIZE + size_of::<sched::Thread<E>>(),
        }
    }
}
