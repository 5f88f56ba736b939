//! The pinned model (Andrew Doran's interrupts as LWPs, tech-kern 2006–2007;
//! what illumos does for hardware interrupts).
//!
//! The switch itself — lending the CPU, the return, the lazy block path — is the scheduler's
//! and the machine's: its protocol is written once, in `crates/sched/src/pinned.rs`. This
//! module is the framework's half.
//!
//! * **Threads.** Each CPU has a bounded free list of interrupt threads for `IPL_VM` sources
//!   (above `IPL_VM` handlers run directly), as illumos gives each CPU a set of interrupt
//!   threads: at most `limit` of them ([`Pinned::set_limit`], sysctl `intr.pinned.threads`,
//!   1 ..= [`MAX_THREADS_PER_CPU`], default [`DEFAULT_THREADS_PER_CPU`]). They are made in
//!   thread context — every CPU's first `limit`, when the first pinned source is established,
//!   and the missing ones when the bound is raised — never in the interrupt path, and never
//!   freed: a thread's descriptor must outlive every pinned call. Lowering the bound leaves
//!   the threads past it parked and unused.
//! * **Dispatch.** An arriving instance is handed with [`sched::Scheduler::pin_call`] to the
//!   CPU's first thread when it is parked (the fast path: one load, no scan). When that thread
//!   is busy — its handler blocked, or it finishes as an ordinary thread — the next parked
//!   thread within the bound is lent instead: one blocked handler does not hold up the CPU's
//!   other pinned sources. Only when every thread within the bound is busy is the instance
//!   queued, in a per-CPU queue touched only by that CPU with interrupts disabled (no lock).
//! * **Draining.** After a pinned call that blocked, or that returned having queued work (the
//!   body's `hwi_sched` requeue ends the call answering `ReturnedMore`), the dispatcher lends
//!   a parked thread again for each queued instance, until the queue is empty or every thread
//!   is busy; a thread whose handler blocked drains the queue as an ordinary thread before it
//!   parks. After a plain `Returned` nothing can be queued (pinned sources were deferred
//!   while the thread borrowed the CPU at IPL_VM, and a thread parks only with the queue
//!   empty), so the fast path does not look (debug builds assert it).
//! * **`hwi_sched` shares the CPU** with same-level sources: a requeued instance goes to the
//!   back of the CPU's pinned queue, and the drain replays the interrupts the SPL layer
//!   deferred at `IPL_VM` meanwhile before each queued instance (`SplState::replay_level`);
//!   a pinned dispatch among them leaves its queued work to the running drain. Without the
//!   replay a source that always asked to run again held its CPU's pinned dispatch until it
//!   stopped (docs/logs/pinned-hwi-sched-starves-same-level-2026-12-07.txt).
//! * **The source's reference** is the dispatcher's for the call: the body gets the source's
//!   address and neither takes nor drops a reference on its fast path; if the handler blocks
//!   or is preempted (the call answers `Blocked`), the dispatcher hands its reference over to
//!   the body, which goes on as an ordinary thread.
//! * **Order and concurrency.** Instances of one source may run concurrently on one CPU when
//!   the first blocked (as they may on two CPUs in every model): handlers are MP-safe. A
//!   level-triggered or `MASK_WHILE_QUEUED` source stays masked while an instance is queued or
//!   running, so it has at most one.
//!
//! Cost: `cargo run --release -- bench --filter intr` reports the instructions this path adds
//! over `direct` (`intr.switch_added`); see docs/ARCHITECTURE.md for the list.

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use machine::{IntrOff, Machine, PinCall};
use sched::{PinOutcome, PinThread, Priority};

use crate::{HandlerCtx, IntrEnv, Source};

/// The most interrupt threads one CPU may have for the pinned model (the upper end of
/// [`Pinned::set_limit`]).
pub const MAX_THREADS_PER_CPU: usize = 16;

/// The bound a boot starts with: the first thread, and three spares for handlers that block.
pub const DEFAULT_THREADS_PER_CPU: usize = 4;

struct PinnedCpu<E: IntrEnv> {
    /// The CPU's ithreads, slot 0 first. A slot is null until its thread is made (in thread
    /// context, under `Pinned::grow`), then written once and never freed: its descriptor must
    /// outlive every pinned call. Slots are filled in order.
    threads: [AtomicPtr<PinThread<E>>; MAX_THREADS_PER_CPU],
    /// Instances that arrived while every ithread within the bound was busy (borrowing the
    /// CPU or blocked, the state word of its [`machine::PinCall`]), and `hwi_sched` requeues:
    /// touched only by this CPU with interrupts disabled (the dispatcher, and the ithreads,
    /// which are bound to this CPU).
    queue: UnsafeCell<VecDeque<(Arc<Source<E>>, u64)>>,
}

// SAFETY: `queue` is accessed only by its own CPU with interrupts disabled (see `PinnedCpu`);
// `threads` are atomic pointers to leaked, never-freed `PinThread`s.
unsafe impl<E: IntrEnv> Sync for PinnedCpu<E> {}

impl<E: IntrEnv> PinnedCpu<E> {
    /// Slot `i`'s thread, if made.
    #[inline(always)]
    fn thread(&self, i: usize) -> Option<&'static PinThread<E>> {
        // SAFETY: a non-null slot is a leaked `PinThread` (never freed).
        unsafe { self.threads[i].load(Ordering::Acquire).as_ref() }
    }

    /// The first parked thread within the bound (this CPU, interrupts disabled: a parked
    /// thread stays parked until this CPU lends it).
    fn parked(&self, limit: usize) -> Option<&'static PinThread<E>> {
        (0..limit.min(MAX_THREADS_PER_CPU)).map_while(|i| self.thread(i)).find(|t| t.is_parked())
    }
}

/// `Pinned::first`'s placeholder for a CPU whose first thread is not made yet.
static NO_THREAD: PinCall = PinCall::never_parked();

/// Counters of the pinned model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PinnedStats {
    /// Interrupts that borrowed a CPU (pinned calls), all CPUs.
    pub switches: u64,
    /// Handlers that blocked (real switches).
    pub blocked: u64,
    /// Pinned calls lent to a spare thread because the CPU's first one was busy.
    pub spares: u64,
    /// Instances queued because every thread within the bound was busy.
    pub queued: u64,
    /// Interrupt threads made, all CPUs.
    pub threads: usize,
    /// The per-CPU bound ([`Pinned::set_limit`]).
    pub limit: usize,
}

/// A bound outside 1 ..= [`MAX_THREADS_PER_CPU`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadLimit(pub usize);

impl core::fmt::Display for BadLimit {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} interrupt threads per CPU: out of range 1..={MAX_THREADS_PER_CPU}", self.0)
    }
}

/// Per-CPU pinned ithreads.
pub struct Pinned<E: IntrEnv> {
    cpus: [PinnedCpu<E>; sched::MAX_CPUS],
    /// Each CPU's first thread's descriptor (its slot 0, the dispatch fast path's), by CPU
    /// index: one scaled load, where the slot inside `cpus` needs the index multiplied by its
    /// size. Never null: [`NO_THREAD`] until the thread is made (a call on it answers Busy,
    /// and the instance is queued), then written once, with the slot, under `grow`.
    first: [AtomicPtr<PinCall>; sched::MAX_CPUS],
    /// By CPU index: a drain of that CPU's queue is running (`Pinned::drain_queue`), so a
    /// dispatch nested in it (the level's deferred arrivals, replayed between its instances)
    /// leaves the queue to it. Touched by its own CPU only, interrupts disabled. (Not in
    /// `PinnedCpu`, whose size sets the stride of the fast path's address arithmetic.)
    draining: [AtomicBool; sched::MAX_CPUS],
    started: AtomicBool,
    /// Threads per CPU that dispatch may lend (`set_limit`).
    limit: AtomicUsize,
    /// Serializes making threads (`start`, `set_limit`): thread context only.
    grow: sync::Mutex<(), E>,
    blocked: AtomicU64,
    spares: AtomicU64,
    queued: AtomicU64,
}

impl<E: IntrEnv> Default for Pinned<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: IntrEnv> Pinned<E> {
    /// No threads until the first pinned source is established.
    pub const fn new() -> Self {
        Pinned {
            cpus: [const {
                PinnedCpu {
                    threads: [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_THREADS_PER_CPU],
                    queue: UnsafeCell::new(VecDeque::new()),
                }
            }; sched::MAX_CPUS],
            first: [const { AtomicPtr::new(core::ptr::from_ref(&NO_THREAD).cast_mut()) }; sched::MAX_CPUS],
            draining: [const { AtomicBool::new(false) }; sched::MAX_CPUS],
            started: AtomicBool::new(false),
            limit: AtomicUsize::new(DEFAULT_THREADS_PER_CPU),
            grow: sync::Mutex::new_adaptive("intr.pinned.grow", ()),
            blocked: AtomicU64::new(0),
            spares: AtomicU64::new(0),
            queued: AtomicU64::new(0),
        }
    }

    /// Makes every CPU's first `limit` ithreads (first pinned source); each is parked until an
    /// interrupt lends it its CPU. Thread context.
    pub(crate) fn start(&'static self) {
        if self.started.load(Ordering::Acquire) {
            return;
        }
        let _g = self.grow.lock();
        self.started.store(true, Ordering::Release);
        self.make_threads();
    }

    /// Sets how many interrupt threads per CPU dispatch may lend (sysctl
    /// `intr.pinned.threads`): raising it makes the missing threads now (if the model has
    /// started), in thread context; lowering it leaves the threads past it parked and unused
    /// (never freed: see the module doc). Thread context.
    pub fn set_limit(&'static self, n: usize) -> Result<(), BadLimit> {
        if !(1..=MAX_THREADS_PER_CPU).contains(&n) {
            return Err(BadLimit(n));
        }
        let _g = self.grow.lock();
        self.limit.store(n, Ordering::Release);
        if self.started.load(Ordering::Acquire) {
            self.make_threads();
        }
        Ok(())
    }

    /// The per-CPU bound.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    /// Makes the threads missing below the bound on every CPU (`grow` held).
    fn make_threads(&'static self) {
        let pri = Priority::of_ipl(ipl::Ipl::Vm).unwrap_or(Priority::INTR_BASE);
        let limit = self.limit();
        for cpu in 0..E::M::ncpus() {
            for (i, slot) in self.cpus[cpu].threads[..limit].iter().enumerate() {
                if slot.load(Ordering::Acquire).is_null() {
                    let t =
                        E::sched().new_ithread("ithread/vm", pri, cpu, ipl::Ipl::Vm as u8, ithread_body::<E>);
                    let t = core::ptr::from_ref(t).cast_mut();
                    slot.store(t, Ordering::Release);
                    if i == 0 {
                        // SAFETY: `t` was just leaked above: never freed.
                        let call = unsafe { (*t).call() };
                        self.first[cpu].store(core::ptr::from_ref(call).cast_mut(), Ordering::Release);
                    }
                }
            }
        }
    }

    /// Interrupt context on `cpu` (interrupts disabled, vector table lock *not* held): if the
    /// CPU's ithread is parked, lend it the CPU now for `src`, then for whatever was queued
    /// meanwhile; otherwise queue behind it.
    #[inline(always)]
    pub(crate) fn dispatch(&'static self, src: Arc<Source<E>>, raised: u64, cpu: usize, io: &IntrOff) {
        // The ithread runs at IPL_VM, the level its sources are dispatched at (as NetBSD's
        // soft-interrupt LWPs run at their level): nothing to change in the usual case, and
        // interrupts at or below IPL_VM that arrive while it runs are deferred, replayed when
        // the interrupted context's level comes back. It may block there (the sleep check
        // allows a borrowing thread at IPL_VM with no spin mutex held).
        // The sleep check counts the spin mutexes held on the CPU as the ithread's own:
        // a context underneath holding one (below IPL_VM) takes the slow path, which sets
        // that state aside.
        // The level test (IPL_VM, and no spin mutex held: `PinOutcome::Level` otherwise), the
        // busy test, the switch and the call are the machine's (`pin_call`); it hands the
        // arguments back if it did nothing.
        // `first` holds a thread's descriptor, or `NO_THREAD` until that thread is made — on a
        // CPU that came online after `start`, which CPUs do not: the call then answers Busy,
        // `lend_spare` finds no parked thread and the instance waits in the CPU's queue.
        // SAFETY: either is never freed (a leaked `PinThread`'s field, or a static).
        let call = unsafe { &*self.first[cpu & (sched::MAX_CPUS - 1)].load(Ordering::Acquire) };
        trace::emit::<E::M>(trace::Kind::PinBorrow, src.vector as u64);
        // The level test here, against a constant (one compare with an immediate), not by the
        // machine through the descriptor.
        if !E::sched().at_pin_level::<{ ipl::Ipl::Vm as usize }>(io) {
            trace::emit::<E::M>(trace::Kind::PinReturn, outcome_code(PinOutcome::Level));
            return lend_slow(self, src, raised, cpu, io);
        }
        // The body gets the source by address: the reference stays ours unless the call
        // answers Blocked (see `ithread_body`).
        // SAFETY: this CPU is at IPL_VM, the thread's level, with no spin mutex held (tested
        // just above, interrupts disabled since: the token); `call` is as said above.
        let (r, _, raised) =
            unsafe { E::sched().pin_call_leveled(call, Arc::as_ptr(&src) as usize, raised as usize, io) };
        trace::emit::<E::M>(trace::Kind::PinReturn, outcome_code(r));
        if r == PinOutcome::Returned {
            // Nothing was queued: while the thread borrowed the CPU at IPL_VM, pinned sources
            // were deferred, not dispatched here, and a thread parks only with the queue
            // empty; the body's own requeue answers `ReturnedMore`. (A dispatch replayed
            // inside this CPU's drain finds that drain's queue, which the drain goes on with.)
            debug_assert!(
                // SAFETY: this CPU, interrupts disabled.
                unsafe { (*cpu_of::<E>(cpu).queue.get()).is_empty() }
                    || self.draining[cpu & (sched::MAX_CPUS - 1)].load(Ordering::Relaxed),
                "pinned dispatch on CPU {cpu}: instances queued during a call that answered Returned"
            );
            drop(src);
        } else if r == PinOutcome::Blocked {
            core::hint::cold_path();
            // The body, an ordinary thread now, took the reference over (`end_switched`).
            core::mem::forget(src);
            self.drain(cpu, io);
        } else {
            after_call(self, r, src, raised as u64, cpu, io);
        }
    }

    /// [`Pinned::dispatch`] out of line: for the second and later pinned sources of a shared
    /// vector (the first one's call is inlined into `Intr::dispatch`).
    #[inline(never)]
    pub(crate) fn dispatch_outlined(
        &'static self,
        src: Arc<Source<E>>,
        raised: u64,
        cpu: usize,
        io: &IntrOff,
    ) {
        self.dispatch(src, raised, cpu, io);
    }

    /// After a pinned call blocked or answered `ReturnedMore`: lend a parked thread again for
    /// each instance queued meanwhile (`hwi_sched` requeues, arrivals while every thread was
    /// busy), until
    /// the queue is empty or every thread within the bound is busy (then the first one to
    /// finish drains the rest: a returning call here, a blocked thread as an ordinary one).
    #[inline(always)]
    fn drain(&'static self, cpu: usize, io: &IntrOff) {
        let c = cpu_of::<E>(cpu);
        // SAFETY: this CPU, interrupts disabled.
        if unsafe { (*c.queue.get()).is_empty() } {
            return;
        }
        self.drain_queue(c, io);
    }

    /// The drain proper. Before each instance, the interrupts the SPL layer deferred at this
    /// level meanwhile are replayed (`SplState::replay_level`): they were raised before the
    /// instances a handler requeued for `hwi_sched` during this drain, and would otherwise wait
    /// until the queue is empty — for as long as a handler asks to run again
    /// (docs/logs/pinned-hwi-sched-starves-same-level-2026-12-07.txt). A pinned dispatch among
    /// them lends a parked thread directly, and leaves what its call queued to this drain.
    #[cold]
    #[inline(never)]
    fn drain_queue(&'static self, c: &'static PinnedCpu<E>, io: &IntrOff) {
        let draining = &self.draining[E::M::cpu_index() & (sched::MAX_CPUS - 1)];
        if draining.swap(true, Ordering::Relaxed) {
            return; // nested in this CPU's running drain, which goes on with the queue
        }
        loop {
            {
                // A token of its own for the replay (interrupts are already disabled): passing
                // `io` down made the dispatcher's token a live argument of `Intr::dispatch`
                // (its pointer reaches the replayed handlers), which cost every model's
                // dispatch 3 instructions (`intr.rate`); this path is cold.
                let io = E::M::intr_disable();
                E::spl().replay_level(&io);
            }
            let Some(it) = c.parked(self.limit()) else { break };
            // SAFETY: this CPU, interrupts disabled.
            let Some((src, raised)) = (unsafe { (*c.queue.get()).pop_front() }) else {
                // SAFETY: as above.
                unsafe { trim_queue(&mut *c.queue.get()) };
                break;
            };
            trace::emit::<E::M>(trace::Kind::PinBorrow, src.vector as u64);
            if let Err((src, raised)) = lend_one(it, src, raised, io) {
                // Not at IPL_VM (a drain under `lend_slow` is at IPL_VM, and the others
                // follow a call at it): put it back first in line.
                // SAFETY: this CPU, interrupts disabled.
                unsafe { (*c.queue.get()).push_front((src, raised)) };
                break;
            }
        }
        draining.store(false, Ordering::Relaxed);
    }

    /// Sleep hook: the CPU's ithread is about to block in a handler (a real switch follows).
    pub fn on_block(&self) {
        // A soft interrupt's thread borrows its CPU too, below IPL_VM (`softint`).
        if E::sched().borrow_level() == Some(ipl::Ipl::Vm as usize) {
            self.blocked.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counters.
    pub fn stats(&self) -> PinnedStats {
        let switches = (0..E::M::ncpus()).map(|c| E::sched().cpu_stats(c).pin_switches).sum();
        let threads = (0..E::M::ncpus())
            .map(|c| (0..MAX_THREADS_PER_CPU).map_while(|i| self.cpus[c].thread(i)).count())
            .sum();
        PinnedStats {
            switches,
            blocked: self.blocked.load(Ordering::Relaxed),
            spares: self.spares.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            threads,
            limit: self.limit(),
        }
    }

    /// Interrupt threads made on `cpu`, and how many of them are parked now (for `ps` and
    /// the tests; a snapshot).
    pub fn threads_on(&self, cpu: usize) -> (usize, usize) {
        let c = &self.cpus[cpu];
        let made: alloc::vec::Vec<_> = (0..MAX_THREADS_PER_CPU).map_while(|i| c.thread(i)).collect();
        (made.len(), made.iter().filter(|t| t.is_parked()).count())
    }
}

/// A reference to the source at `a` (the address `Arc::as_ptr` gave), taken over.
///
/// # Safety
/// `a` is the data address of an `Arc<Source<E>>` whose reference is the caller's to take
/// (one that was forgotten for it, or counted for it with `Arc::increment_strong_count`).
#[inline(always)]
unsafe fn arc_back<E: IntrEnv>(a: usize) -> Arc<Source<E>> {
    // SAFETY: per the contract.
    unsafe { Arc::from_raw(a as *const Source<E>) }
}

/// [`Pinned::dispatch`] after a call that did not answer `Returned` (out of line: the fast
/// path tests for `Returned` alone): `ReturnedMore` and `Blocked` drain the queue, `Busy` lends
/// a spare thread, `Level` (not answered after `dispatch`'s level test) takes the slow path.
#[cold]
#[inline(never)]
fn after_call<E: IntrEnv>(
    p: &'static Pinned<E>,
    r: PinOutcome,
    src: Arc<Source<E>>,
    raised: u64,
    cpu: usize,
    io: &IntrOff,
) {
    match r {
        PinOutcome::Returned | PinOutcome::ReturnedMore => {
            drop(src);
            p.drain(cpu, io)
        }
        PinOutcome::Blocked => {
            // The body, an ordinary thread now, took the reference over (`end_switched`).
            core::mem::forget(src);
            p.drain(cpu, io)
        }
        PinOutcome::Busy => lend_spare(p, src, raised, cpu, io),
        PinOutcome::Level => lend_slow(p, src, raised, cpu, io),
    }
}

/// One pinned call of `it` for an instance of `src` (the slow paths'; `Pinned::dispatch`
/// makes its own). The body gets the source by address and the reference stays ours — dropped
/// here after the call, or handed back with `raised` if nothing was done (Busy, Level) —
/// except when the call answers Blocked: the handler blocked or was preempted, and the body,
/// an ordinary thread from then on, took the reference over (`ithread_body`).
#[inline(always)]
fn lend_one<E: IntrEnv>(
    it: &PinThread<E>,
    src: Arc<Source<E>>,
    raised: u64,
    io: &IntrOff,
) -> Result<PinOutcome, (Arc<Source<E>>, u64)> {
    let (r, _, _) = E::sched().pin_call(it, Arc::as_ptr(&src) as usize, raised as usize, io);
    trace::emit::<E::M>(trace::Kind::PinReturn, outcome_code(r));
    match r {
        PinOutcome::Returned | PinOutcome::ReturnedMore => {
            drop(src);
            Ok(r)
        }
        PinOutcome::Blocked => {
            core::mem::forget(src);
            Ok(r)
        }
        PinOutcome::Busy | PinOutcome::Level => Err((src, raised)),
    }
}
/// Queues an instance behind the CPU's busy ithreads (interrupt context on that CPU,
/// interrupts disabled).
#[cold]
#[inline(never)]
fn queue_busy<E: IntrEnv>(c: &PinnedCpu<E>, src: Arc<Source<E>>, raised: u64) {
    E::intr().pinned.queued.fetch_add(1, Ordering::Relaxed);
    // SAFETY: this CPU, interrupts disabled (see `PinnedCpu`).
    unsafe { (*c.queue.get()).push_back((src, raised)) };
}

/// [`Pinned::dispatch`] when the CPU's first thread is busy (its handler blocked, or it
/// finishes as an ordinary thread): lend the next parked thread within the bound; queue only
/// if there is none. Interrupt context on `cpu`, at IPL_VM, no spin mutex counted.
#[cold]
#[inline(never)]
fn lend_spare<E: IntrEnv>(p: &'static Pinned<E>, src: Arc<Source<E>>, raised: u64, cpu: usize, io: &IntrOff) {
    let c = cpu_of::<E>(cpu);
    let Some(it) = c.parked(p.limit()) else {
        queue_busy(c, src, raised);
        return;
    };
    p.spares.fetch_add(1, Ordering::Relaxed);
    match lend_one(it, src, raised, io) {
        Ok(_) => p.drain(cpu, io),
        // Parked and at IPL_VM were checked: not reached; queue rather than lose it.
        Err((src, raised)) => queue_busy(c, src, raised),
    }
}

/// [`Pinned::dispatch`] at another level than IPL_VM (a pinned source established below it),
/// or on top of a context holding spin mutexes: the ithread still runs at IPL_VM with no
/// spin mutex counted, and the dispatch level and spin-mutex state come back afterwards (the
/// ithread returned or blocked: with its own spin mutexes released either way). A busy
/// ithread: queue behind it, nothing set aside.
#[cold]
#[inline(never)]
fn lend_slow<E: IntrEnv>(p: &'static Pinned<E>, src: Arc<Source<E>>, raised: u64, cpu: usize, io: &IntrOff) {
    let Some(it) = cpu_of::<E>(cpu).parked(p.limit()) else {
        queue_busy(cpu_of::<E>(cpu), src, raised);
        return;
    };
    let spl = E::spl();
    let old = <E::M as ipl::IplCpu>::ipl_get();
    let spin = spl.spin_state_take();
    <E::M as ipl::IplCpu>::ipl_set(ipl::Ipl::Vm as u8);
    match lend_one(it, src, raised, io) {
        Ok(_) => p.drain(cpu, io),
        // At IPL_VM now, so not `Level`; `Busy` was ruled out above.
        Err((src, raised)) => queue_busy(cpu_of::<E>(cpu), src, raised),
    }
    spl.spin_state_restore(spin);
    <E::M as ipl::IplCpu>::ipl_set(old);
}

/// Runs one instance in the ithread (interrupts enabled); see [`finish_one`].
#[inline(always)]
fn run_one<E: IntrEnv>(src: Arc<Source<E>>, raised: u64, cpu: usize) {
    let again = src.run_handler(raised, cpu);
    finish_one(src, again);
}

/// After an instance's handler (interrupts enabled): a handler that asked for `hwi_sched`
/// (`again`) goes to the back of the CPU's queue (keeping its mask reference), otherwise the
/// instance's mask reference, if any, is dropped. The running CPU's (an ithread is bound to
/// its CPU): no CPU index is kept across the handler for it.
#[inline(always)]
fn finish_one<E: IntrEnv>(src: Arc<Source<E>>, again: bool) {
    if again && !src.gate.is_closed() {
        requeue(src);
    } else if src.needs_mask() {
        src.unmask();
    }
}

/// [`finish_one`] for a handler that asked for `hwi_sched`: to the back of the CPU's queue.
/// Out of line: the ithread's body keeps fewer registers across its handler without it.
#[cold]
#[inline(never)]
fn requeue<E: IntrEnv>(src: Arc<Source<E>>) {
    let c = cpu_of::<E>(E::M::cpu_index());
    let io = E::M::intr_disable();
    let now = E::M::now_ns();
    // SAFETY: this CPU (the ithread is bound to it), interrupts disabled.
    unsafe { (*c.queue.get()).push_back((src, now)) };
    drop(io);
}

/// The ithread's body for one pinned call, on its own stack from the top, interrupts
/// enabled, CPU at `IPL_VM`: runs one instance (`src`: the source's address, `raised`: its
/// raise time) and ends the call — while it still borrows the CPU. If the handler blocked or
/// was preempted, the pinned thread went on without us: we finish the instance, drain the
/// queue as an ordinary thread and park for good.
///
/// The reference to the source is the dispatcher's, held across the call and dropped after
/// it, so the body's fast path neither takes nor drops one; a `hwi_sched` requeue takes a
/// reference of its own. If the handler blocked or was preempted, the call answered Blocked
/// and the dispatcher forgot its reference: the body, an ordinary thread now, owns it
/// (`end_switched`, `end_unrun`).
///
/// After the handler, interrupts are disabled *before* the one borrower test, and stay so
/// until the switch back: the test decides both the accounting (the handler's time was all
/// CPU time) and the end of the call ([`sched::Scheduler::pin_end_borrowing`], which does not
/// test again), and a preemption between a test and the switch back would leave us returning
/// into a frame the thread underneath has already resumed from (the double fault of
/// docs/logs/softint-borrow-preempt-double-fault-2026-12-06.txt). The fast path's
/// accounting, the `hwi_sched` requeue and the unmask run with interrupts disabled, as the
/// direct model runs them.
extern "C" fn ithread_body<E: IntrEnv>(src: usize, raised: usize) {
    // SAFETY: `dispatch` passed the address of a source whose reference it holds for the call
    // (or hands over to us if we stop borrowing the CPU): it lives at least as long as we run.
    let source = unsafe { &*(src as *const Source<E>) };
    // Checking "dead" and counting this run in are one step: a handler never starts after
    // its disestablish returned.
    let h = match source.handler.as_ref() {
        Some(h) if source.gate.enter() => h,
        _ => return end_unrun::<E>(src),
    };
    let t0 = E::M::now_ns();
    // Per source and per CPU that runs the handler (`intrstat`'s per-CPU p50/p99).
    source.stats.record_latency(E::M::cpu_index(), t0.saturating_sub(raised as u64));
    // The CPU index is read again where needed after the handler (rare paths), rather than
    // kept in a callee-saved register across it.
    let ctx = HandlerCtx {
        source_name: &source.name,
        cpu: E::M::cpu_index(),
        requeue: AtomicBool::new(false),
        no_work: AtomicBool::new(false),
    };
    trace::emit::<E::M>(trace::Kind::HandlerBegin, source.vector as u64);
    h(&ctx);
    trace::emit::<E::M>(trace::Kind::HandlerEnd, source.vector as u64);
    // SAFETY: the body runs with interrupts enabled (`pin_call` enables them before the
    // call; a handler gives back the state it was called with).
    let io = unsafe { E::M::intr_disable_enabled() };
    let wall = E::M::now_ns().saturating_sub(t0);
    if !E::sched().borrowing() {
        drop(io);
        end_switched::<E>(src, &ctx, wall);
    }
    // Still the borrower, interrupts disabled until the switch back: the direct model's
    // accounting (nothing switched away during the handler).
    let again = source.run_accounted(&ctx, wall, 0, false);
    // `finish_one`, with the source borrowed: the requeue takes a reference of its own.
    let more = again && !source.gate.is_closed();
    if more {
        // SAFETY: `src` is the address of a live `Arc<Source<E>>`'s data (above): one more
        // reference, for the queue.
        requeue(unsafe {
            Arc::increment_strong_count(src as *const Source<E>);
            arc_back::<E>(src)
        });
    } else if source.needs_mask() {
        source.unmask();
    }
    // `io` was taken before `borrowing()` answered true and is handed over (interrupts stay
    // disabled); nothing on this stack needs dropping: the source's reference is the
    // dispatcher's, and `ctx` has no destructor.
    if more {
        // The call answers `ReturnedMore`: the dispatcher drains the queue (it does not test
        // it after a plain `Returned`).
        // SAFETY: as said above.
        unsafe { E::sched().pin_end_borrowing_more(io) };
    } else {
        // SAFETY: as said above.
        unsafe { E::sched().pin_end_borrowing(io) };
    }
}

/// [`ithread_body`] when its handler did not run (no handler, or the source is being
/// disestablished): the instance's mask reference dropped, and the call ended through
/// `Scheduler::pin_end` (on x86_64 that does not return; where it answers `Ok`, the host
/// machine, the body returns at once after this).
#[cold]
#[inline(never)]
fn end_unrun<E: IntrEnv>(src: usize) {
    let cpu = E::M::cpu_index();
    // SAFETY: as in `ithread_body`: the source lives while we run.
    let source = unsafe { &*(src as *const Source<E>) };
    if source.needs_mask() {
        source.unmask();
    }
    // SAFETY: the body runs with interrupts enabled.
    let io = unsafe { E::M::intr_disable_enabled() };
    // SAFETY: nothing on this stack or the body's needs dropping (the reference is the
    // dispatcher's while we borrow the CPU).
    if let Err(io) = unsafe { E::sched().pin_end(io) } {
        drop(io);
        // Preempted before the end: the call answered Blocked and the dispatcher handed the
        // reference over to us.
        // SAFETY: that reference, ours now.
        drop(unsafe { arc_back::<E>(src) });
        finish_blocked(cpu_of::<E>(cpu), cpu);
    }
}

/// [`ithread_body`] when its handler blocked or was preempted (the thread is an ordinary
/// thread now, interrupts enabled): the off-CPU time since the lazy mark its block took is
/// not CPU time (`Source::run_accounted_switched`); then the instance's end, the queue drained
/// and the thread parked.
#[cold]
#[inline(never)]
fn end_switched<E: IntrEnv>(src: usize, ctx: &HandlerCtx<'_>, wall: u64) -> ! {
    let cpu = E::M::cpu_index();
    // SAFETY: the call answered Blocked, and the dispatcher handed its reference over to us
    // (`after_call`, `lend_one`): ours to take.
    let src = unsafe { arc_back::<E>(src) };
    let again = src.run_accounted_switched(ctx, wall);
    finish_one(src, again);
    finish_blocked(cpu_of::<E>(cpu), cpu)
}

/// A drained queue that a burst grew gives its memory back (as the pool's do), keeping room
/// for [`crate::protocol::QUEUE_KEPT`] instances; the interrupt side allocates again, with
/// interrupts disabled, if a burst comes back.
#[cold]
fn trim_queue<T>(q: &mut alloc::collections::VecDeque<T>) {
    if q.is_empty() && q.capacity() > crate::protocol::QUEUE_KEPT {
        q.shrink_to(crate::protocol::QUEUE_KEPT);
    }
}

/// CPU `cpu`'s state in the framework's (static) pinned model: the address is a constant plus
/// the index, computed where needed rather than passed along.
#[inline(always)]
fn cpu_of<E: IntrEnv>(cpu: usize) -> &'static PinnedCpu<E> {
    &E::intr().pinned.cpus[cpu & (sched::MAX_CPUS - 1)]
}

/// The rest of a pinned call whose handler blocked (we are an ordinary thread now): drain the
/// queue, then leave the CPU for good; the next interrupt starts us afresh.
#[cold]
fn finish_blocked<E: IntrEnv>(c: &PinnedCpu<E>, cpu: usize) -> ! {
    // An ordinary thread now: it runs (and parks) at IPL_NONE like one. It was switched back
    // in at its waker's level, IPL_NONE; this also undoes a level a handler left behind.
    <E::M as ipl::IplCpu>::ipl_set(ipl::Ipl::None as u8);
    loop {
        let io = E::M::intr_disable();
        // SAFETY: this CPU (the ithread is bound to it), interrupts disabled.
        match unsafe { (*c.queue.get()).pop_front() } {
            Some((src, raised)) => {
                drop(io); // handlers run with interrupts enabled
                run_one(src, raised, cpu);
            }
            None => {
                // SAFETY: as above.
                unsafe { trim_queue(&mut *c.queue.get()) };
                // Interrupts stay disabled until the switch away, so nothing can be queued
                // behind our back and no pinned call can start on our stack before we left.
                let me = E::M::curthread();
                let it = (0..MAX_THREADS_PER_CPU)
                    .map_while(|i| c.thread(i))
                    .find(|t| core::ptr::eq(t.call().thread, me))
                    .expect("a blocked pinned ithread is one of its CPU's threads");
                E::sched().pin_park(it.call(), &io);
            }
        }
    }
}

/// A pinned call's outcome as the trace's `pin.return` argument.
#[inline(always)]
fn outcome_code(r: PinOutcome) -> u64 {
    match r {
        PinOutcome::Returned => 0,
        PinOutcome::Blocked => 1,
        PinOutcome::Busy => 2,
        PinOutcome::Level => 3,
        PinOutcome::ReturnedMore => 4,
    }
}
