//! The pinned model (Andrew Doran's interrupts as LWPs, tech-kern 2006–2007;
//! what illumos does for hardware interrupts).
//!
//! The switch itself — lending the CPU, the return, the lazy block path — is the scheduler's
//! and the machine's: its protocol is written once, in `crates/sched/src/pinned.rs`. This
//! module is the framework's half: each CPU has one interrupt thread for `IPL_VM` sources
//! (above `IPL_VM` handlers run directly); an arriving instance is handed to it with
//! [`sched::Scheduler::pin_call`] when it is parked, or queued behind it when it is busy
//! (borrowing or blocked) in a per-CPU queue touched only by that CPU with interrupts
//! disabled (no lock); after a return the queue is drained by lending the CPU again; a thread
//! whose handler blocked drains the queue as an ordinary thread and parks.
//!
//! Cost: `cargo run --release -- bench --filter intr` reports the instructions this path adds
//! over `direct` (`intr.switch_added`); see docs/ARCHITECTURE.md for the list.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use machine::{IntrOff, Machine};
use sched::{PinOutcome, PinThread, Priority};

use crate::{IntrEnv, Source};

struct PinnedCpu<E: IntrEnv> {
    /// The CPU's ithread (null until the first pinned source is established; then written
    /// once and never freed: its descriptor must outlive every pinned call).
    thread: AtomicPtr<PinThread<E>>,
    /// Instances that arrived while the ithread was busy (borrowing the CPU or blocked, the
    /// state word of its [`machine::PinCall`]), and `hwi_sched` requeues: touched only by this
    /// CPU with interrupts disabled (the dispatcher, and the ithread, which is bound to this
    /// CPU).
    queue: UnsafeCell<VecDeque<(Arc<Source<E>>, u64)>>,
}

// SAFETY: `queue` is accessed only by its own CPU with interrupts disabled (see `PinnedCpu`);
// `thread` is an atomic pointer to a leaked, never-freed `PinThread`.
unsafe impl<E: IntrEnv> Sync for PinnedCpu<E> {}

/// Counters of the pinned model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PinnedStats {
    /// Interrupts that borrowed a CPU (pinned calls), all CPUs.
    pub switches: u64,
    /// Handlers that blocked (real switches).
    pub blocked: u64,
}

/// Per-CPU pinned ithreads.
pub struct Pinned<E: IntrEnv> {
    cpus: [PinnedCpu<E>; sched::MAX_CPUS],
    started: AtomicBool,
    blocked: AtomicU64,
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
                    thread: AtomicPtr::new(core::ptr::null_mut()),
                    queue: UnsafeCell::new(VecDeque::new()),
                }
            }; sched::MAX_CPUS],
            started: AtomicBool::new(false),
            blocked: AtomicU64::new(0),
        }
    }

    /// Makes one ithread per CPU (first pinned source); each is parked until an interrupt
    /// lends it its CPU.
    pub(crate) fn start(&'static self) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let pri = Priority::of_ipl(ipl::Ipl::Vm).unwrap_or(Priority::INTR_BASE);
        for cpu in 0..E::M::ncpus() {
            let t = E::sched().new_ithread("ithread/vm", pri, cpu, ipl::Ipl::Vm as u8, ithread_body::<E>);
            self.cpus[cpu].thread.store(Box::into_raw(Box::new(t)), Ordering::Release);
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
        // The level test (IPL_VM), the busy test, the switch and the call are the machine's
        // (`pin_call`); it hands the arguments back if it did nothing.
        let t = cpu_of::<E>(cpu).thread.load(Ordering::Acquire);
        if t.is_null() {
            // No ithread on this CPU: `start` makes one for every CPU online before the first
            // pinned source is published, so only a CPU started after that gets here; its
            // instances wait in its queue (CPUs do not come online after start-up).
            queue_busy(cpu_of::<E>(cpu), src, raised);
        } else if E::spl().spin_count_of(cpu) == 0 {
            // SAFETY: a non-null `thread` is a leaked `PinThread` (never freed).
            let it = unsafe { &*t };
            let (r, a, raised) = E::sched().pin_call(it, Arc::into_raw(src) as usize, raised as usize, io);
            match r {
                PinOutcome::Returned => self.drain(cpu, io),
                PinOutcome::Blocked => {}
                // SAFETY: `a` is the `Arc::into_raw` above, handed back, not taken over.
                PinOutcome::Busy => queue_busy(cpu_of::<E>(cpu), unsafe { arc_back(a) }, raised as u64),
                // SAFETY: as above.
                PinOutcome::Level => lend_slow(self, unsafe { arc_back(a) }, raised as u64, cpu, io),
            }
        } else {
            lend_slow(self, src, raised, cpu, io);
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

    /// After a pinned call returned (the ithread parked again): lend the CPU again for the
    /// instances queued meanwhile (`hwi_sched` requeues), until the queue is empty or the
    /// ithread blocks (then it drains the queue itself, as an ordinary thread).
    #[inline(always)]
    fn drain(&'static self, cpu: usize, io: &IntrOff) {
        let c = cpu_of::<E>(cpu);
        // SAFETY: `drain` runs after a pinned call on this CPU: `thread` is a leaked
        // `PinThread` (never freed).
        let it = unsafe { &*c.thread.load(Ordering::Acquire) };
        // SAFETY: this CPU, interrupts disabled.
        while let Some((src, raised)) = unsafe { (*c.queue.get()).pop_front() } {
            match E::sched().pin_call(it, Arc::into_raw(src) as usize, raised as usize, io) {
                (PinOutcome::Returned, _, _) => {}
                (PinOutcome::Blocked, _, _) => break,
                (PinOutcome::Busy | PinOutcome::Level, a, raised) => {
                    // SAFETY: `a` is the `Arc::into_raw` above, handed back, not taken over.
                    queue_busy(c, unsafe { arc_back(a) }, raised as u64);
                    break;
                }
            }
        }
    }

    /// Sleep hook: the CPU's ithread is about to block in a handler (a real switch follows).
    pub fn on_block(&self) {
        if E::sched().borrowing() {
            self.blocked.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counters.
    pub fn stats(&self) -> PinnedStats {
        let switches = (0..E::M::ncpus()).map(|c| E::sched().cpu_stats(c).pin_switches).sum();
        PinnedStats { switches, blocked: self.blocked.load(Ordering::Relaxed) }
    }
}

/// The source an `Arc::into_raw` handed to `pin_call` and handed back by it.
///
/// # Safety
/// `a` is an `Arc::into_raw` of a `Source<E>` whose reference nobody has taken over.
#[inline(always)]
unsafe fn arc_back<E: IntrEnv>(a: usize) -> Arc<Source<E>> {
    // SAFETY: per the contract.
    unsafe { Arc::from_raw(a as *const Source<E>) }
}

/// Queues an instance behind the CPU's busy ithread (interrupt context on that CPU,
/// interrupts disabled).
#[cold]
#[inline(never)]
fn queue_busy<E: IntrEnv>(c: &PinnedCpu<E>, src: Arc<Source<E>>, raised: u64) {
    // SAFETY: this CPU, interrupts disabled (see `PinnedCpu`).
    unsafe { (*c.queue.get()).push_back((src, raised)) };
}

/// [`Pinned::dispatch`] at another level than IPL_VM (a pinned source established below it),
/// or on top of a context holding spin mutexes: the ithread still runs at IPL_VM with no
/// spin mutex counted, and the dispatch level and spin-mutex state come back afterwards (the
/// ithread returned or blocked: with its own spin mutexes released either way). A busy
/// ithread: queue behind it, nothing set aside.
#[cold]
#[inline(never)]
fn lend_slow<E: IntrEnv>(p: &'static Pinned<E>, src: Arc<Source<E>>, raised: u64, cpu: usize, io: &IntrOff) {
    let t = cpu_of::<E>(cpu).thread.load(Ordering::Acquire);
    // SAFETY: a non-null `thread` is a leaked `PinThread` (never freed).
    let Some(it) = (unsafe { t.as_ref() }).filter(|it| it.is_parked()) else {
        queue_busy(cpu_of::<E>(cpu), src, raised);
        return;
    };
    let spl = E::spl();
    let old = <E::M as ipl::IplCpu>::ipl_get();
    let spin = spl.spin_state_take();
    <E::M as ipl::IplCpu>::ipl_set(ipl::Ipl::Vm as u8);
    match E::sched().pin_call(it, Arc::into_raw(src) as usize, raised as usize, io) {
        (PinOutcome::Returned, _, _) => p.drain(cpu, io),
        (PinOutcome::Blocked, _, _) => {}
        // At IPL_VM now, so not `Level`; `Busy` was ruled out above.
        (PinOutcome::Busy | PinOutcome::Level, a, raised) => {
            // SAFETY: `a` is the `Arc::into_raw` above, handed back, not taken over.
            queue_busy(cpu_of::<E>(cpu), unsafe { arc_back(a) }, raised as u64)
        }
    }
    spl.spin_state_restore(spin);
    <E::M as ipl::IplCpu>::ipl_set(old);
}

/// Runs one instance in the ithread (interrupts enabled); see [`finish_one`].
#[inline(always)]
fn run_one<E: IntrEnv>(src: Arc<Source<E>>, raised: u64, cpu: usize) {
    let again = src.run_handler(raised, cpu);
    finish_one(src, again, cpu);
}

/// After an instance's handler (interrupts enabled): a handler that asked for `hwi_sched`
/// (`again`) goes to the back of the CPU's queue (keeping its mask reference), otherwise the
/// instance's mask reference, if any, is dropped.
#[inline(always)]
fn finish_one<E: IntrEnv>(src: Arc<Source<E>>, again: bool, cpu: usize) {
    if again && !src.gate.is_closed() {
        let c = cpu_of::<E>(cpu);
        let io = E::M::intr_disable();
        let now = E::M::now_ns();
        // SAFETY: this CPU (the ithread is bound to it), interrupts disabled.
        unsafe { (*c.queue.get()).push_back((src, now)) };
        drop(io);
    } else if src.needs_mask() {
        src.unmask();
    }
}

/// The ithread's body for one pinned call, on its own stack from the top, interrupts
/// enabled, CPU at `IPL_VM`: runs one instance (`src`: an `Arc::into_raw`, `raised`: its raise
/// time) and returns — while it still borrows the CPU. If the handler blocked, the pinned
/// thread went on without us: we drain the queue as an ordinary thread and park for good.
extern "C" fn ithread_body<E: IntrEnv>(src: usize, raised: usize) {
    let cpu = E::M::cpu_index();
    // SAFETY: `dispatch` passed an `Arc::into_raw` of a source: the reference is ours (taken
    // over below), so the source lives at least until then.
    let again = unsafe { &*(src as *const Source<E>) }.run_handler(raised as u64, cpu);
    // SAFETY: as above; we take that reference over.
    finish_one(unsafe { arc_back::<E>(src) }, again, cpu);
    if !E::sched().borrowing() {
        finish_blocked(cpu_of::<E>(cpu), cpu);
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
                // Interrupts stay disabled until the switch away, so nothing can be queued
                // behind our back and no pinned call can start on our stack before we left.
                // SAFETY: we are this CPU's ithread, so `thread` is our leaked `PinThread`.
                let it = unsafe { &*c.thread.load(Ordering::Acquire) };
                E::sched().pin_park(it.call(), &io);
            }
        }
    }
}
