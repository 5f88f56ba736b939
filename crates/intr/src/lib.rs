//! # Interrupt dispatch: sources, filters, handlers, and the models that run them
//!
//! One driver-facing API ([`Intr::establish`]) over several dispatch models, chosen per source
//! (default from the kernel command line), so that the alternatives argued over by NetBSD,
//! FreeBSD and Solaris engineers run side by side on the same sources.
//!
//! ## Protocol
//!
//! * A **source** is a vector on the CPUs (an IPI, a LAPIC vector, an IOAPIC line, an MSI or
//!   MSI-X vector) with an IPL, an optional **filter** and an optional **handler**, flags and a
//!   name. Any number of sources may share a vector unless one is `EXCLUSIVE`.
//! * The **filter** runs in primary interrupt context: interrupts disabled, CPU at the
//!   source's IPL, on the interrupted thread's stack. It must not block (sleeping there is
//!   diagnosed naming the source) and returns [`FilterResult`]: `Handled` (done), `Schedule`
//!   (run the handler) or `Stray` (not ours). A source without a filter always schedules.
//!   A `MANUAL` handler is never scheduled by `Schedule`; only its filter can, through
//!   [`FilterCtx::schedule_manual`].
//! * The **handler** runs in thread context under the source's model (below) and may block.
//!   At most one ithread is scheduled per interrupt (pool model). While a handler instance is
//!   queued or running, its source stays masked if it asked to be (`MASK_WHILE_QUEUED`, or
//!   always in the dedicated model): an atomic count of instances that need the mask; the
//!   source is unmasked when it drops to zero. An interrupt that arrives while its source is
//!   masked is remembered, in the same atomic word, and re-raised once at the last unmask
//!   ([`protocol::MaskCount`]). A driver may hold mask references too ([`IntrHandle::mask`]).
//! * A handler can call [`HandlerCtx::hwi_sched`] to run again after everything queued behind
//!   it (a NIC handler that processed its budget).
//! * **Models** ([`Model`]): `Direct` runs the handler in interrupt context (the baseline);
//!   `Dedicated` wakes one thread per source, the line masked until the thread is done
//!   (classic FreeBSD ithreads / Linux threaded IRQs); `Pool` queues handlers on the CPU and
//!   hands the CPU an ithread from a shared pool (the 2010 FreeBSD proposal, [`pool`], its
//!   coordination in [`protocol::PoolCore`]); `Pinned` lends the interrupted CPU to a per-CPU
//!   interrupt thread without a scheduler switch (NetBSD's and Solaris' interrupt threads,
//!   [`pinned`]; the switch's protocol is `crates/sched/src/pinned.rs`). Above `IPL_VM` a
//!   pinned source runs directly.
//! * **The path** of one interrupt, from arrival to the preemption point, is [`path`]: the
//!   same code in the kernel and on the host machine.
//! * **Disestablish** (drop the [`IntrHandle`]): the source is unlinked and its gate closed
//!   ([`protocol::RunGate`]: "dead" and the running count in one word), and the drop waits
//!   until no instance runs; a queued instance of a dead source is discarded, so a
//!   disestablished handler never runs again.
//! * **Hardware lines** ([`Intr::establish_line`]): a source may control a line (an IOAPIC
//!   pin) through [`LineControl`]. The mask count's 0→1 transition masks the line and 1→0
//!   unmasks it; a missed interrupt of a line is not re-raised (a level line stays asserted
//!   and the unmask re-delivers it). Every scheduled instance of a **level** source holds a
//!   mask reference, in every model.
//! * **EOI rule**: [`Intr::dispatch`] sends the EOI ([`IntrEnv::eoi`]) itself. Edge-only
//!   vectors (LAPIC, MSI, edge lines) are acknowledged at once, before any filter (a pinned
//!   ithread may run, and block, inside `dispatch`). A vector with a level source is
//!   acknowledged only after the filters ran and every scheduled level source is masked:
//!   **edge: EOI first; level: mask, then EOI** (an EOI with the line still asserted and
//!   unmasked re-delivers at once). A direct-model level (or `MASK_WHILE_QUEUED`) source:
//!   mask, EOI, handler, unmask.
//!   A vector deferred by the SPL layer is acknowledged by the kernel after
//!   [`Intr::defer`] masked its level sources; its replay sends no EOI.
//! * Locks: the vector table is one `SpinLock` per vector, taken with interrupts disabled
//!   (filters run under it: they must not establish or disestablish). Queues are spin locks
//!   taken with interrupts disabled; handlers run with no framework lock held.
//! * **Model checking**: the protocols several CPUs run against each other are in
//!   [`protocol`], which `tests/loom_protocols.rs` (loom) and `tests/shuttle_pool.rs` (shuttle)
//!   run as it is; `tests/host_path.rs` and `tests/proptest_sequences.rs` run the whole path on
//!   the host machine.
#![no_std]

extern crate alloc;

/// `const fn` in the kernel, a plain `fn` under `--cfg loom`, whose atomics cannot be built in
/// constant context (the types that hold `protocol`'s atomics).
macro_rules! const_unless_loom {
    ($(#[$m:meta])* $vis:vis fn $name:ident() -> $ret:ty $body:block) => {
        #[cfg(not(loom))]
        $(#[$m])*
        $vis const fn $name() -> $ret $body
        #[cfg(loom)]
        $(#[$m])*
        $vis fn $name() -> $ret $body
    };
}

pub mod footprint;
pub mod path;
pub mod pinned;
pub mod pool;
pub mod protocol;
pub mod softint;
pub mod stats;
pub mod storm;

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use ipl::Ipl;
use machine::{IntrOff, Machine};
use sched::{Event, Priority, SpinGuard, SpinLock};
use sync::Env;

pub use stats::{Histogram, SourceStats};

/// How a source's handlers are run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Model {
    /// In interrupt context (handlers may not block).
    Direct = 0,
    /// One thread per source, line masked until it finishes.
    Dedicated = 1,
    /// Per-CPU queues drained by ithreads from a shared pool.
    Pool = 2,
    /// Per-CPU interrupt threads that borrow the interrupted thread's CPU (pinned switch).
    Pinned = 3,
}

impl Model {
    /// All models.
    pub const ALL: [Model; 4] = [Model::Direct, Model::Dedicated, Model::Pool, Model::Pinned];

    /// The name used on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Model::Direct => "direct",
            Model::Dedicated => "dedicated",
            Model::Pool => "pool",
            Model::Pinned => "pinned",
        }
    }

    /// Parses a name.
    pub fn from_name(s: &str) -> Option<Model> {
        Model::ALL.into_iter().find(|m| m.name() == s)
    }

    fn from_u8(v: u8) -> Model {
        match v {
            1 => Model::Dedicated,
            2 => Model::Pool,
            3 => Model::Pinned,
            _ => Model::Direct,
        }
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a filter says about an interrupt.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FilterResult {
    /// Fully handled in the filter.
    Handled,
    /// Run the (non-manual) handler.
    Schedule,
    /// Not this source's interrupt.
    Stray,
}

/// Source flags.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct IntrFlags(pub u32);

impl IntrFlags {
    /// The handler needs no big lock (all ours are; kept for the driver's intent).
    pub const MPSAFE: IntrFlags = IntrFlags(1);
    /// No other source may share the vector.
    pub const EXCLUSIVE: IntrFlags = IntrFlags(2);
    /// The handler is run only when the filter schedules it.
    pub const MANUAL: IntrFlags = IntrFlags(4);
    /// Keep the source masked while a handler instance is queued or running.
    pub const MASK_WHILE_QUEUED: IntrFlags = IntrFlags(8);
    /// The handler runs on the CPU the interrupt arrived on (its affinity); without it, the
    /// pool may hand a queued instance to an idle CPU's ithread when the arrival CPU is busy.
    pub const BOUND: IntrFlags = IntrFlags(16);

    /// Whether all of `other`'s bits are set.
    pub fn contains(self, other: IntrFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for IntrFlags {
    type Output = IntrFlags;
    fn bitor(self, o: IntrFlags) -> IntrFlags {
        IntrFlags(self.0 | o.0)
    }
}

/// A source's name: a literal (`"com1"`), or made at run time, as Linux's `eth0-rx-3` are
/// (`format!(..).into()`).
pub type SourceName = alloc::borrow::Cow<'static, str>;

/// Why a source was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EstablishError {
    /// The vector is a CPU exception or owned by the kernel.
    InvalidVector {
        /// The source.
        name: SourceName,
        /// The vector.
        vector: u8,
    },
    /// An exclusive source is there, or this one is exclusive and the vector is shared.
    VectorTaken {
        /// The source.
        name: SourceName,
        /// The vector.
        vector: u8,
        /// The source already there.
        holder: SourceName,
    },
    /// A filter needs a hardware IPL (`IPL_VM` or above) to run in interrupt context.
    FilterAtSoftIpl {
        /// The source.
        name: SourceName,
        /// Its IPL.
        ipl: Ipl,
    },
    /// `MANUAL` handlers are scheduled by a filter, and there is none.
    ManualWithoutFilter {
        /// The source.
        name: SourceName,
    },
    /// Neither a filter nor a handler.
    Empty {
        /// The source.
        name: SourceName,
    },
}

impl fmt::Display for EstablishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EstablishError::InvalidVector { name, vector } => {
                write!(f, "interrupt source \"{name}\": vector {vector:#x} is reserved or an exception")
            }
            EstablishError::VectorTaken { name, vector, holder } => write!(
                f,
                "interrupt source \"{name}\": vector {vector:#x} is held by \"{holder}\" and one of them is exclusive"
            ),
            EstablishError::FilterAtSoftIpl { name, ipl } => {
                write!(f, "interrupt source \"{name}\": a filter cannot run at {ipl}")
            }
            EstablishError::ManualWithoutFilter { name } => {
                write!(f, "interrupt source \"{name}\": a MANUAL handler needs a filter to schedule it")
            }
            EstablishError::Empty { name } => write!(f, "interrupt source \"{name}\": no filter and no handler"),
        }
    }
}

/// A filter.
pub type Filter = Box<dyn Fn(&FilterCtx<'_>) -> FilterResult + Send + Sync>;
/// A handler.
pub type Handler = Box<dyn Fn(&HandlerCtx<'_>) + Send + Sync>;

/// Masks and unmasks, in hardware, the interrupt a source controls: an IOAPIC pin, an MSI-X
/// table entry's vector control, or MSI's per-vector mask bit.
///
/// `mask` must have taken effect when it returns: no new message or edge is sent for the
/// source after it (one already on its way may still arrive; the framework absorbs it and
/// re-raises it at the unmask). `unmask` lets the hardware deliver what it kept pending (an
/// asserted level line, an MSI-X pending bit).
pub trait LineControl: Send + Sync {
    /// Masks the interrupt in hardware.
    fn mask(&self);
    /// Unmasks it.
    fn unmask(&self);
    /// Whether the line is level-triggered (fixed for the line's life: a source reads it once,
    /// when established, for its mask-while-queued rule).
    fn is_level(&self) -> bool;
    /// How the mask takes effect, for `intrstat` and diagnostics (e.g. "ioapic pin",
    /// "msi-x vector control").
    fn mask_method(&self) -> &'static str;
}

/// [`Source::mask_method`] of a source without a [`LineControl`]: the mask is the framework's
/// count alone; the device still interrupts, and each arrival while masked is counted
/// ([`stats::SourceStats::masked_arrivals`]) and absorbed, and one is re-raised at the unmask.
pub const SOFTWARE_MASK: &str = "software (the device still interrupts while masked)";

/// What a source is established with.
pub struct SourceSpec {
    /// Name (for `intrstat` and every diagnostic): `"com1".into()`, or an owned string.
    pub name: SourceName,
    /// CPU vector.
    pub vector: u8,
    /// Interrupt priority level.
    pub ipl: Ipl,
    /// Flags.
    pub flags: IntrFlags,
    /// Model, or `None` for the framework's default.
    pub model: Option<Model>,
    /// The priority of the thread that runs the handler, set at establish time as a driver
    /// would (`None`: its IPL's, or the pool's); the same as [`Source::set_thread_priority`]
    /// and `sysctl intr.thread_priority` afterwards, which can change it. A driver does not
    /// choose the boot's model: under `direct` and `pinned`, which give the handler no thread
    /// of its own, it is ignored ([`Source::thread_priority`] stays `None`).
    pub thread_priority: Option<Priority>,
}

/// An established source.
pub struct Source<E: IntrEnv> {
    name: SourceName,
    vector: u8,
    ipl: Ipl,
    flags: IntrFlags,
    model: Model,
    filter: Option<Filter>,
    handler: Option<Handler>,
    /// The hardware line this source masks and unmasks, if any.
    line: Option<&'static dyn LineControl>,
    /// A queued or running handler instance holds a mask reference (`needs_mask`, computed
    /// once at establish: the model, the flags and the line's trigger mode are fixed).
    mask_queued: bool,
    /// Serializes the mask count's transitions with the line's mask state.
    line_lock: SpinLock<()>,
    /// Mask references taken by [`Intr::defer`] (dropped at replay).
    deferred: AtomicU32,
    /// Instances that need the source masked, and an arrival missed meanwhile (re-raised at
    /// the unmask) — one word ([`protocol::MaskCount`]).
    mask_count: protocol::MaskCount,
    /// Disestablished, and the handler runs in progress ([`protocol::RunGate`]).
    gate: protocol::RunGate,
    /// Stats.
    pub stats: SourceStats,
    /// Storm detector state.
    pub storm: storm::StormState,
    dedicated: Option<Dedicated<E>>,
    /// The priority of the thread that runs the handler (dedicated and pool models), as
    /// `chrt` sets a Linux irq thread's: 0 for the default, the IPL's band.
    thread_pri: core::sync::atomic::AtomicU8,
    /// When the SPL first deferred this source's vector (0: not deferred), for the latency
    /// from arrival; taken by the replay.
    deferred_at: AtomicU64,
    /// When an arrival was first absorbed while masked (0: none), for the latency from
    /// arrival; taken by the dispatch of the re-raise.
    masked_since: AtomicU64,
}

struct Dedicated<E: IntrEnv> {
    /// The thread's wake-up word, which holds the thread's reference (from its start until
    /// the source is freed, so no `post` can outlive it): the interrupt sets it and wakes
    /// the thread directly (`sched::Need`: no waiter list, no lock).
    need: sched::Need<E>,
    /// The raise time (ns) of the interrupt the thread has not handled yet (0: none; taken
    /// by the thread).
    raised_at: core::sync::atomic::AtomicU64,
}

/// [`Source::set_thread_priority`] on a source whose handler has no thread of its own: under
/// `direct` it runs in interrupt context, under `pinned` on the interrupted thread's CPU
/// before that thread resumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoHandlerThread {
    /// The source.
    pub name: SourceName,
    /// Its model.
    pub model: Model,
}

impl fmt::Display for NoHandlerThread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "interrupt source \"{}\": its handler has no thread whose priority could be set (model {})",
            self.name, self.model
        )
    }
}

impl<E: IntrEnv> Source<E> {
    /// The priority of the thread that runs the handler, if the model gives it one: the one
    /// set by [`Source::set_thread_priority`], else its IPL's (`Priority::of_ipl`).
    pub fn thread_priority(&self) -> Option<Priority> {
        match self.model {
            Model::Direct | Model::Pinned => None,
            Model::Dedicated | Model::Pool => Some(match self.thread_pri.load(Ordering::Relaxed) {
                0 => self.default_thread_priority(),
                p => Priority::new(p).unwrap_or(Priority::MAX),
            }),
        }
    }

    fn default_thread_priority(&self) -> Priority {
        match self.model {
            Model::Pool => pool::pool_priority(),
            _ => Priority::of_ipl(self.ipl).unwrap_or(Priority::INTR_BASE),
        }
    }

    /// Sets the priority of the thread that runs the handler (`None`: back to the default),
    /// as `chrt -p` does for a Linux irq thread: a real-time thread can then outrank a
    /// device's interrupt thread. The thread takes it on before its next handler run (a
    /// pool ithread for this source's runs only). Refused under `direct` and `pinned`.
    pub fn set_thread_priority(&self, pri: Option<Priority>) -> Result<(), NoHandlerThread> {
        if self.thread_priority().is_none() {
            return Err(NoHandlerThread { name: self.name.clone(), model: self.model });
        }
        self.thread_pri.store(pri.map_or(0, |p| p.get()), Ordering::Relaxed);
        if let Some(d) = &self.dedicated {
            // Wake it to take the priority on now (it runs no handler for a spurious wakeup).
            d.need.post_any(E::sched());
        }
        Ok(())
    }

    /// Whether [`Source::set_thread_priority`] set a priority (not the default).
    pub fn thread_priority_is_set(&self) -> bool {
        self.thread_pri.load(Ordering::Relaxed) != 0
    }

    /// The explicitly set thread priority, if any (one load: the pool's hot path).
    #[inline(always)]
    fn set_priority_word(&self) -> u8 {
        self.thread_pri.load(Ordering::Relaxed)
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The vector.
    pub fn vector(&self) -> u8 {
        self.vector
    }
    /// The IPL.
    pub fn ipl(&self) -> Ipl {
        self.ipl
    }
    /// The model.
    pub fn model(&self) -> Model {
        self.model
    }
    /// Whether it is masked now.
    pub fn is_masked(&self) -> bool {
        self.mask_count.refs() > 0
    }
    /// Instances needing the mask now.
    pub fn mask_refs(&self) -> u32 {
        self.mask_count.refs()
    }
    /// Whether it has been disestablished.
    pub fn is_dead(&self) -> bool {
        self.gate.is_closed()
    }

    /// The hardware line, if any.
    pub fn line(&self) -> Option<&'static dyn LineControl> {
        self.line
    }

    /// How masking this source takes effect: its line's method, or [`SOFTWARE_MASK`].
    pub fn mask_method(&self) -> &'static str {
        self.line.map_or(SOFTWARE_MASK, |l| l.mask_method())
    }

    /// Whether the source controls a level-triggered line.
    pub fn is_level(&self) -> bool {
        self.line.is_some_and(|l| l.is_level())
    }

    /// Takes one mask reference; the first masks the line.
    fn mask(&self) {
        match self.line {
            None => {
                self.mask_count.mask();
            }
            Some(line) => {
                let io = E::M::intr_disable();
                let _g = self.line_lock.lock(&io);
                if self.mask_count.mask() {
                    line.mask();
                }
            }
        }
    }

    /// Drops one mask reference; the last one unmasks: the line, or, for a source without
    /// one, re-raises an interrupt absorbed while masked ([`protocol::MaskCount`]).
    fn unmask(&self) {
        match self.line {
            None => {
                let u = self.mask_count.unmask();
                if u.last && u.missed && !self.gate.is_closed() {
                    E::retrigger(self.vector);
                }
            }
            Some(line) => {
                let io = E::M::intr_disable();
                let _g = self.line_lock.lock(&io);
                // A level line stays asserted while the device wants service, and an MSI-X
                // vector keeps its pending bit: unmasking re-delivers those. An edge or
                // message that was already on its way when the mask took effect arrived
                // meanwhile and was absorbed: nothing in the hardware remembers it, so it is
                // re-raised. A dead source's line stays masked.
                let u = self.mask_count.unmask();
                if u.last && !self.gate.is_closed() {
                    line.unmask();
                    if u.missed && !line.is_level() {
                        E::retrigger(self.vector);
                    }
                }
            }
        }
    }

    /// Whether another CPU's ithread may run a queued instance.
    fn stealable(&self) -> bool {
        !self.flags.contains(IntrFlags::BOUND)
    }

    #[inline(always)]
    fn needs_mask(&self) -> bool {
        self.mask_queued
    }

    /// Runs the handler once (thread or interrupt context), with accounting. Inlined into
    /// each model's path: it is the part of every interrupt that the benchmarks compare.
    #[inline(always)]
    fn run_handler(&self, raised_ns: u64, cpu: usize) -> bool {
        self.run_handler_in::<RUN_THREAD>(raised_ns, cpu)
    }

    /// [`Source::run_handler`] in one of two contexts, which differ in how the time the
    /// running thread spends switched away during the handler (blocked, preempted) is taken
    /// out of the handler's CPU time: [`RUN_INTERRUPT`], where it cannot switch away (the
    /// direct model: no off-CPU accounting); [`RUN_THREAD`], an ordinary thread (the mark
    /// taken before, compared after). A pinned call's body has its own copy of these steps
    /// (`pinned::ithread_body`): it switches away only by blocking or being preempted, which
    /// ends its borrowing and records the mark then (`sched::Thread::borrow_off_mark_ns`,
    /// [`Source::run_accounted_switched`]), so its fast path takes none.
    #[inline(always)]
    fn run_handler_in<const CTX: u8>(&self, raised_ns: u64, cpu: usize) -> bool {
        let Some(h) = self.handler.as_ref() else { return false };
        // Checking "dead" and counting this run in are one step: a handler never starts
        // after its disestablish returned.
        if !self.gate.enter() {
            return false;
        }
        let t0 = E::M::now_ns();
        // Per source and per CPU that runs the handler (`intrstat`'s per-CPU p50/p99).
        self.stats.record_latency(E::M::cpu_index(), t0.saturating_sub(raised_ns));
        let ctx = HandlerCtx {
            source_name: &self.name,
            cpu,
            requeue: AtomicBool::new(false),
            no_work: AtomicBool::new(false),
        };
        // The thread running the handler (the interrupted one in interrupt context): if it
        // switches away meanwhile (blocked, preempted), the run's time is not all CPU time.
        let me = E::sched().current();
        let (switches, off0) = if CTX == RUN_THREAD { (me.switch_count(), me.off_cpu_ns()) } else { (0, 0) };
        trace::emit::<E::M>(trace::Kind::HandlerBegin, self.vector as u64);
        h(&ctx);
        trace::emit::<E::M>(trace::Kind::HandlerEnd, self.vector as u64);
        let wall = E::M::now_ns().saturating_sub(t0);
        // Whether the thread switched away meanwhile.
        let switched = match CTX {
            RUN_THREAD => me.switch_count() != switches,
            _ => false,
        };
        // CPU time: the wall time less what the thread spent switched away meanwhile.
        let off = match CTX {
            RUN_THREAD => me.off_cpu_ns().saturating_sub(off0),
            _ => 0,
        };
        self.run_accounted(&ctx, wall, off, switched)
    }

    /// The accounting of a pinned call's handler whose thread switched away during the
    /// handler (it blocked, or was preempted): the off-CPU time since the lazy mark its block
    /// took (`sched::Thread::borrow_off_mark_ns`) is not CPU time.
    #[cold]
    #[inline(never)]
    fn run_accounted_switched(&self, ctx: &HandlerCtx<'_>, wall: u64) -> bool {
        let me = E::sched().current();
        let off = me.off_cpu_ns().saturating_sub(me.borrow_off_mark_ns());
        self.run_accounted(ctx, wall, off, true)
    }

    /// The end of [`Source::run_handler_in`]: the handler's run counted, `wall` less `off`
    /// (the time its thread spent switched away, `switched`) as its CPU time; the gate left;
    /// whether it asked to be requeued.
    #[inline(always)]
    fn run_accounted(&self, ctx: &HandlerCtx<'_>, wall: u64, off: u64, switched: bool) -> bool {
        let spent = wall.saturating_sub(off);
        if off != 0 {
            self.stats.handler_off_ns.fetch_add(off, Ordering::Relaxed);
        }
        if ctx.no_work.load(Ordering::Relaxed) {
            // Time spent for nothing (storm.rs), if it was all CPU time.
            self.storm.no_work();
            if !switched {
                self.storm.busy(spent);
            }
        }
        self.stats.handled.fetch_add(1, Ordering::Relaxed);
        self.stats.handler_ns.fetch_add(spent, Ordering::Relaxed);
        // Charged to the CPU that ran the handler (a pool helper may run it elsewhere than
        // the arrival CPU): per-CPU accounting survives pooling and balancing.
        let ran_on = E::M::cpu_index() & (sched::MAX_CPUS - 1);
        self.stats.handler_ns_cpu[ran_on].fetch_add(spent, Ordering::Relaxed);
        self.stats.handled_cpu[ran_on].fetch_add(1, Ordering::Relaxed);
        self.gate.exit();
        ctx.requeue.load(Ordering::Relaxed)
    }
}

/// [`Source::run_handler_in`] in interrupt context (the direct model).
pub(crate) const RUN_INTERRUPT: u8 = 0;
/// [`Source::run_handler_in`] in an ordinary thread (dedicated, pool, a pinned thread that
/// blocked).
pub(crate) const RUN_THREAD: u8 = 1;

/// A queued handler instance (pool and pinned models).
pub(crate) struct Pending<E: IntrEnv> {
    pub(crate) src: Arc<Source<E>>,
    pub(crate) raised: u64,
}

/// Passed to a filter.
pub struct FilterCtx<'a> {
    source_name: &'a str,
    manual: &'a AtomicBool,
    no_work: &'a AtomicBool,
}

impl FilterCtx<'_> {
    /// The filter claims the interrupt (`Handled` or `Schedule`) but found nothing to do for
    /// it: the storm rule's progress signal (storm.rs). `Stray` says it without this.
    pub fn no_work(&self) {
        self.no_work.store(true, Ordering::Relaxed);
    }
    /// Schedules this source's `MANUAL` handler.
    pub fn schedule_manual(&self) {
        self.manual.store(true, Ordering::Relaxed);
    }
    /// The source's name.
    pub fn name(&self) -> &str {
        self.source_name
    }
}

/// Passed to a handler.
pub struct HandlerCtx<'a> {
    source_name: &'a str,
    cpu: usize,
    requeue: AtomicBool,
    no_work: AtomicBool,
}

impl HandlerCtx<'_> {
    /// The handler found nothing to do for this interrupt (the device had no completion, no
    /// frame, no cause it knows): the storm rule's progress signal (storm.rs). A handler that
    /// returns without calling it made progress.
    pub fn no_work(&self) {
        self.no_work.store(true, Ordering::Relaxed);
    }
    /// Runs this handler again after everything queued behind it (`hwi_sched`).
    pub fn hwi_sched(&self) {
        self.requeue.store(true, Ordering::Relaxed);
    }
    /// The source's name.
    pub fn name(&self) -> &str {
        self.source_name
    }
    /// The CPU the interrupt arrived on.
    pub fn cpu(&self) -> usize {
        self.cpu
    }
}

/// What the framework needs from the kernel: the lock layer's environment ([`sync::Env`],
/// which brings the scheduler's, the SPL layer's and the machine) plus the framework instance
/// and the few machine-specific steps of the interrupt path ([`path`]).
pub trait IntrEnv: Env {
    /// The interrupted state as the machine's entry code saved it (x86_64: the trap frame).
    type Frame;
    /// The framework instance.
    fn intr() -> &'static Intr<Self>;
    /// The frame a replayed vector is run with (there is no interrupted state to save).
    fn replay_frame(vector: u8) -> Self::Frame;
    /// Runs the kernel's own handler of a vector that has no source (clock, reschedule IPI,
    /// call IPI, ...), in interrupt context after its EOI (interrupts disabled).
    fn kernel_vector(vector: u8, frame: &mut Self::Frame, io: &IntrOff);
    /// Raises `vector` again on this CPU (a missed interrupt of a source just unmasked).
    fn retrigger(vector: u8);
    /// Signals end of interrupt to this CPU's interrupt controller (the LAPIC).
    fn eoi();
    /// Reports a storm starting (`on`, with the rate seen) or ending, once each, by name.
    fn storm_report(source: &str, on: bool, rate: u64);
}

/// The framework: the vector table and the models' state.
pub struct Intr<E: IntrEnv> {
    vectors: [SpinLock<Vec<Arc<Source<E>>>>; 256],
    reserved: [AtomicBool; 256],
    default_model: AtomicU8,
    /// Per CPU: the source whose filter runs now (0: none), for the sleep diagnostic.
    in_filter: [AtomicUsize; sched::MAX_CPUS],
    /// The pool model's queues and ithreads.
    pub pool: pool::Pool<E>,
    /// Soft interrupts.
    pub soft: softint::Soft<E>,
    /// The pinned model's per-CPU interrupt threads.
    pub pinned: pinned::Pinned<E>,
    storm_thread: AtomicBool,
    /// Set when a storm begins: wakes the storm thread.
    storm_event: Event<E>,
}

impl<E: IntrEnv> Default for Intr<E> {
    fn default() -> Self {
        Self::new()
    }
}

/// Keeps a source established; dropping it disestablishes the source.
pub struct IntrHandle<E: IntrEnv> {
    source: Arc<Source<E>>,
    /// Mask references this handle holds ([`IntrHandle::mask`]).
    masks: AtomicU32,
}

impl<E: IntrEnv> IntrHandle<E> {
    /// The source.
    pub fn source(&self) -> &Arc<Source<E>> {
        &self.source
    }

    /// Masks the source (one more mask reference, held by this handle, like a queued
    /// instance's): interrupts that arrive meanwhile are absorbed and delivered once at the
    /// last unmask (a level line re-delivers by itself). Nests.
    pub fn mask(&self) {
        self.masks.fetch_add(1, Ordering::AcqRel);
        self.source.mask();
    }

    /// [`Source::set_thread_priority`].
    pub fn set_thread_priority(&self, pri: Option<Priority>) -> Result<(), NoHandlerThread> {
        self.source.set_thread_priority(pri)
    }

    /// Drops a mask reference taken by [`IntrHandle::mask`].
    pub fn unmask(&self) -> Result<(), NotMasked> {
        self.masks
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |m| m.checked_sub(1))
            .map_err(|_| NotMasked { name: self.source.name.clone() })?;
        self.source.unmask();
        Ok(())
    }
}

/// [`IntrHandle::unmask`] without a matching [`IntrHandle::mask`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotMasked {
    /// The source.
    pub name: SourceName,
}

impl fmt::Display for NotMasked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "interrupt source \"{}\": unmask without a mask through its handle", self.name)
    }
}

impl<E: IntrEnv> Drop for IntrHandle<E> {
    fn drop(&mut self) {
        E::intr().disestablish(&self.source);
        // The handle's own mask references go with it (the source is dead: nothing is
        // re-raised or unmasked in hardware).
        for _ in 0..self.masks.swap(0, Ordering::AcqRel) {
            self.source.unmask();
        }
    }
}

impl<E: IntrEnv> Intr<E> {
    const_unless_loom! {
    /// No sources; default model `Direct`.
    pub fn new() -> Self {
        Intr {
            vectors: [const { SpinLock::new(Vec::new()) }; 256],
            reserved: [const { AtomicBool::new(false) }; 256],
            default_model: AtomicU8::new(Model::Direct as u8),
            in_filter: [const { AtomicUsize::new(0) }; sched::MAX_CPUS],
            pool: pool::Pool::new(),
            soft: softint::Soft::new(),
            pinned: pinned::Pinned::new(),
            storm_thread: AtomicBool::new(false),
            storm_event: Event::new_unbound(),
        }
    }
    }

    /// Marks a vector as the kernel's own (establish refuses it).
    pub fn reserve(&self, vector: u8) {
        self.reserved[vector as usize].store(true, Ordering::Relaxed);
    }

    /// Reserves the software vectors of the soft levels (the kernel calls this at start-up).
    pub fn reserve_soft_vectors(&self) {
        for i in 0..softint::SOFT_LEVELS.len() {
            self.reserve(softint::SOFT_VECTOR_BASE + i as u8);
        }
    }

    /// Establishes a soft interrupt at a soft level (`None` if `level` is not one).
    pub fn softint_establish(
        &'static self,
        name: &'static str,
        level: Ipl,
        handler: impl Fn() + Send + Sync + 'static,
    ) -> Option<softint::SoftHandle<E>> {
        self.soft.establish(name, level, handler)
    }

    /// Sets the model for sources established without one.
    pub fn set_default_model(&self, m: Model) {
        self.default_model.store(m as u8, Ordering::Relaxed);
    }

    /// The default model.
    pub fn default_model(&self) -> Model {
        Model::from_u8(self.default_model.load(Ordering::Relaxed))
    }

    /// Establishes a source. Errors name it.
    pub fn establish(
        &'static self,
        spec: SourceSpec,
        filter: Option<Filter>,
        handler: Option<Handler>,
    ) -> Result<IntrHandle<E>, EstablishError> {
        self.establish_inner(spec, None, filter, handler)
    }

    /// Establishes a source that controls a hardware line (an IOAPIC pin, already programmed
    /// with the vector and masked): the mask count masks and unmasks `line`; the line is
    /// unmasked once the source is established and masked again when it is disestablished.
    pub fn establish_line(
        &'static self,
        spec: SourceSpec,
        line: &'static dyn LineControl,
        filter: Option<Filter>,
        handler: Option<Handler>,
    ) -> Result<IntrHandle<E>, EstablishError> {
        let h = self.establish_inner(spec, Some(line), filter, handler)?;
        {
            let io = E::M::intr_disable();
            let _g = h.source.line_lock.lock(&io);
            if h.source.mask_count.refs() == 0 {
                line.unmask();
            }
        }
        Ok(h)
    }

    fn establish_inner(
        &'static self,
        spec: SourceSpec,
        line: Option<&'static dyn LineControl>,
        filter: Option<Filter>,
        handler: Option<Handler>,
    ) -> Result<IntrHandle<E>, EstablishError> {
        let name = spec.name;
        if spec.vector < 32 || self.reserved[spec.vector as usize].load(Ordering::Relaxed) {
            return Err(EstablishError::InvalidVector { name, vector: spec.vector });
        }
        if filter.is_none() && handler.is_none() {
            return Err(EstablishError::Empty { name });
        }
        if filter.is_some() && spec.ipl < Ipl::Vm {
            return Err(EstablishError::FilterAtSoftIpl { name, ipl: spec.ipl });
        }
        if spec.flags.contains(IntrFlags::MANUAL) && filter.is_none() {
            return Err(EstablishError::ManualWithoutFilter { name });
        }
        let mut model = spec.model.unwrap_or_else(|| self.default_model());
        if model == Model::Pinned && spec.ipl > Ipl::Vm {
            // Above IPL_VM there are no interrupt threads: handlers run directly (part 2).
            model = Model::Direct;
        }
        let dedicated = (model == Model::Dedicated && handler.is_some()).then(|| Dedicated {
            need: sched::Need::new(),
            raised_at: core::sync::atomic::AtomicU64::new(0),
        });
        let src = Arc::new(Source {
            name: name.clone(),
            vector: spec.vector,
            ipl: spec.ipl,
            flags: spec.flags,
            model,
            filter,
            handler,
            line,
            mask_queued: model == Model::Dedicated
                || spec.flags.contains(IntrFlags::MASK_WHILE_QUEUED)
                || line.is_some_and(|l| l.is_level()),
            line_lock: SpinLock::new(()),
            deferred: AtomicU32::new(0),
            mask_count: protocol::MaskCount::new(),
            gate: protocol::RunGate::new(),
            stats: SourceStats::new(),
            storm: storm::StormState::new(),
            dedicated,
            thread_pri: core::sync::atomic::AtomicU8::new(match model {
                Model::Dedicated | Model::Pool => spec.thread_priority.map_or(0, Priority::get),
                Model::Direct | Model::Pinned => 0,
            }),
            deferred_at: AtomicU64::new(0),
            masked_since: AtomicU64::new(0),
        });
        if model == Model::Pinned && src.handler.is_some() {
            // Its CPUs' ithreads exist before the source can take an interrupt.
            self.pinned.start();
        }
        {
            let io = E::M::intr_disable();
            let mut list = self.vectors[spec.vector as usize].lock(&io);
            if let Some(other) = list.first() {
                if spec.flags.contains(IntrFlags::EXCLUSIVE)
                    || list.iter().any(|s| s.flags.contains(IntrFlags::EXCLUSIVE))
                {
                    return Err(EstablishError::VectorTaken {
                        name,
                        vector: spec.vector,
                        holder: other.name.clone(),
                    });
                }
            }
            list.push(src.clone());
        }
        E::spl().set_vector_ipl(spec.vector, Some(spec.ipl));
        if model == Model::Dedicated && src.handler.is_some() {
            self.start_dedicated(&src);
        }
        if model == Model::Pool && src.handler.is_some() {
            self.pool.handler_added();
        }
        self.start_storm_thread();
        Ok(IntrHandle { source: src, masks: AtomicU32::new(0) })
    }

    fn disestablish(&'static self, src: &Arc<Source<E>>) {
        {
            let io = E::M::intr_disable();
            self.vectors[src.vector as usize].lock(&io).retain(|s| !Arc::ptr_eq(s, src));
        }
        src.gate.close();
        if let Some(line) = src.line {
            // After the close: no unmask re-enables it from now on.
            let io = E::M::intr_disable();
            let _g = src.line_lock.lock(&io);
            line.mask();
        }
        if let Some(d) = &src.dedicated {
            // The thread sees the gate closed and exits; `need` keeps its reference until the
            // source is freed (a `post` from a dispatch that still held the source must not
            // find it gone).
            d.need.post_any(E::sched());
        }
        if src.model == Model::Pool && src.handler.is_some() {
            self.pool.handler_removed();
        }
        while !src.gate.is_idle() {
            E::sched().yield_now();
        }
    }

    /// Whether any source is established on `vector`.
    pub fn has_sources(&self, vector: u8) -> bool {
        let io = E::M::intr_disable();
        let list = self.vectors[vector as usize].lock(&io);
        !list.is_empty()
    }

    /// The source whose filter runs on `cpu` now, if any (for the sleep diagnostic).
    /// Called on `cpu` itself (from inside the filter, e.g. by the sleep check).
    pub fn filter_running(&self, cpu: usize) -> Option<alloc::string::String> {
        let p = self.in_filter[cpu].load(Ordering::Relaxed);
        if p == 0 {
            return None;
        }
        // SAFETY: `in_filter[cpu]` holds the running filter's source name only while that
        // filter runs on `cpu` (table lock and a source reference held); called on `cpu` from
        // inside the filter, the source and its name are alive.
        let name: &SourceName = unsafe { &*(p as *const SourceName) };
        Some(alloc::string::String::from(&**name))
    }

    /// Every established source (for `intrstat`).
    pub fn sources(&self) -> Vec<Arc<Source<E>>> {
        let io = E::M::intr_disable();
        let mut out = Vec::new();
        for v in &self.vectors {
            out.extend(v.lock(&io).iter().cloned());
        }
        out
    }

    /// Primary dispatch of `vector` on this CPU (interrupts disabled, CPU at the vector's IPL).
    /// Returns `false` if no source is established on the vector (the caller falls back to
    /// the kernel's own handler), `true` if the vector was dispatched here (its sources, or a
    /// software vector's thread; whether a source claimed it is for the storm rule, counted
    /// here, not returned: nothing has to be kept across the handlers). `replay`: run by
    /// `splx` for a vector the SPL layer deferred.
    ///
    /// Sends the EOI when there are sources (see the EOI rule in the crate documentation),
    /// except for a replay (acknowledged when it was deferred); with `false` returned, the
    /// caller acknowledges.
    pub fn dispatch(&'static self, vector: u8, replay: bool, io: &IntrOff) -> bool {
        let list = self.vectors[vector as usize].lock(io);
        if list.is_empty() {
            drop(list);
            // A software vector (no source is ever established on one): its soft level's
            // thread borrows the CPU. Tested here, off the sources' path.
            if let Some(l) = softint::soft_level(vector) {
                if !replay {
                    E::eoi();
                }
                self.soft.fire(l, io);
                return true;
            }
            return false;
        }
        let cpu = E::M::cpu_index();
        let now = E::M::now_ns();
        {
            if let [src] = &list[..] {
                // At most one handler to run after the lock: a slot, not a `Later`.
                let mut one = LaterOne::None;
                // One source on the vector (the usual case): the same steps as the loop below
                // for a list of one, without its bookkeeping (the level scan, the stray set).
                let level = src.is_level();
                if !level && !replay {
                    E::eoi();
                }
                match self.arrive(src, replay, cpu, now) {
                    Arrived::Absorbed => {}
                    Arrived::Filter { timed } => {
                        let arrival = arrival_of(src, replay, now);
                        let (claims, schedule) = self.filter(src, cpu, timed.then_some(now));
                        if !claims {
                            // Nobody cared: the one source that said "not mine" had no work.
                            src.storm.no_work();
                        }
                        if schedule && src.handler.is_some() {
                            self.route(src, cpu, arrival, now, io, &mut one);
                        }
                    }
                }
                if level && !replay {
                    // Level: the scheduled source is masked now.
                    E::eoi();
                }
                drop(list);
                match one {
                    LaterOne::None => {}
                    LaterOne::Direct(src, arrival) => run_direct(&src, arrival, cpu),
                    // The static framework itself (`self` is it), so the per-CPU state's
                    // address is a constant plus the index.
                    LaterOne::Pinned(src, arrival) => E::intr().pinned.dispatch(src, arrival, cpu, io),
                }
                return true;
            }
            self.dispatch_shared(list, replay, cpu, now, io);
            true
        }
    }

    /// [`Intr::dispatch`] of a vector with more than one source (table lock held, released
    /// here before the handlers run).
    #[inline(never)]
    fn dispatch_shared(
        &'static self,
        list: SpinGuard<'_, Vec<Arc<Source<E>>>>,
        replay: bool,
        cpu: usize,
        now: u64,
        io: &IntrOff,
    ) {
        let mut claimed = false;
        // Sources (by their index, the first 64) whose filter said "not mine": if nobody
        // claims the interrupt, each of them is charged a no-work arrival (storm.rs).
        let mut strays = 0u64;
        let mut later = Later::new();
        {
            let level = list.iter().any(|s| s.is_level());
            if !level && !replay {
                E::eoi();
            }
            for (i, src) in list.iter().enumerate() {
                let timed = match self.arrive(src, replay, cpu, now) {
                    Arrived::Absorbed => {
                        claimed = true;
                        continue;
                    }
                    Arrived::Filter { timed } => timed,
                };
                let arrival = arrival_of(src, replay, now);
                let (claims, schedule) = self.filter(src, cpu, timed.then_some(now));
                if !claims {
                    strays |= 1u64.checked_shl(i as u32).unwrap_or(0);
                }
                claimed |= claims;
                if schedule && src.handler.is_some() {
                    self.route(src, cpu, arrival, now, io, &mut later);
                }
            }
            if !claimed && strays != 0 {
                // Nobody cared: every source that said "not mine" had no work.
                for (i, src) in list.iter().enumerate().take(64) {
                    if strays & (1 << i) != 0 {
                        src.storm.no_work();
                    }
                }
            }
            if level && !replay {
                // Level: every scheduled level source is masked now.
                E::eoi();
            }
        }
        // The table lock is released before any handler runs, as in the one-source case:
        // direct handlers take spin mutexes, and a pinned ithread runs with interrupts enabled
        // and may block, while this vector's arrivals on other CPUs and establish /
        // disestablish spin on the lock.
        drop(list);
        self.run_later(&mut later, now, cpu, io);
        // Emptied by `run_later` (its Vec moved out): nothing to drop, and no drop glue on
        // the path.
        core::mem::forget(later);
    }

    /// Arrival of the vector at one of its sources (table lock held): a replayed level source
    /// unmasks its deferred line (which re-delivers if still asserted); a masked source
    /// remembers the arrival for its unmask (and counts it per CPU); otherwise it is counted,
    /// the storm rule sees it (and may throttle the source: the filter still runs for this
    /// arrival), and its filter runs next.
    #[inline(always)]
    fn arrive(&self, src: &Source<E>, replay: bool, cpu: usize, now: u64) -> Arrived {
        if replay && src.line.is_some() {
            // Deferred: `defer` masked the line; unmasking re-delivers it if the device
            // still asserts it.
            let n = src.deferred.swap(0, Ordering::AcqRel);
            for _ in 0..n {
                src.unmask();
            }
            if n > 0 {
                return Arrived::Absorbed;
            }
        }
        if src.mask_count.absorb() {
            src.stats.masked_arrivals[cpu].fetch_add(1, Ordering::Relaxed);
            let _ = src.masked_since.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
            return Arrived::Absorbed;
        }
        src.stats.per_cpu[cpu].fetch_add(1, Ordering::Relaxed);
        let (verdict, timed) = src.storm.arrive(now);
        if verdict == storm::Verdict::Storm {
            self.throttle(src);
        }
        Arrived::Filter { timed }
    }

    /// The storm rule's verdict on `src`: the storm holds one mask reference until the storm
    /// thread re-enables the source; reported when the storm begins (a relapse before the
    /// storm thread declared it over is not reported again, only counted).
    #[cold]
    #[inline(never)]
    fn throttle(&self, src: &Source<E>) {
        trace::emit::<E::M>(trace::Kind::StormThrottle, src.vector as u64);
        src.mask();
        if !src.storm.storming.swap(true, Ordering::AcqRel) {
            E::storm_report(&src.name, true, src.storm.last_rate.load(Ordering::Relaxed));
        }
        self.storm_event.set();
    }

    /// Runs a source's filter (primary interrupt context, table lock held): whether the
    /// source claims the interrupt, and whether its handler is to be scheduled.
    #[inline(always)]
    /// `timed`: the arrival's time when its filter is one the storm rule times (storm.rs).
    fn filter(&self, src: &Source<E>, cpu: usize, timed: Option<u64>) -> (bool, bool) {
        let manual = AtomicBool::new(false);
        let r = match &src.filter {
            Some(f) => {
                trace::emit::<E::M>(trace::Kind::Filter, src.vector as u64);
                self.in_filter[cpu].store(&src.name as *const SourceName as usize, Ordering::Relaxed);
                let no_work = AtomicBool::new(false);
                let r = f(&FilterCtx { source_name: &src.name, manual: &manual, no_work: &no_work });
                self.in_filter[cpu].store(0, Ordering::Relaxed);
                if no_work.load(Ordering::Relaxed) && r != FilterResult::Stray {
                    src.storm.no_work();
                    if let Some(t0) = timed {
                        src.storm.busy(E::M::now_ns().saturating_sub(t0) * storm::FILTER_SAMPLE);
                    }
                }
                r
            }
            None => FilterResult::Schedule,
        };
        match r {
            FilterResult::Stray => {
                src.stats.stray.fetch_add(1, Ordering::Relaxed);
                (false, false)
            }
            FilterResult::Handled => (true, manual.load(Ordering::Relaxed)),
            FilterResult::Schedule => {
                (true, !src.flags.contains(IntrFlags::MANUAL) || manual.load(Ordering::Relaxed))
            }
        }
    }

    /// Routes a scheduled handler by its source's model (table lock held): `dedicated` and
    /// `pool` hand it over now; `direct` and `pinned` run it after the table lock
    /// ([`Later`]). Each instance that needs the source masked takes its mask reference here.
    #[inline(always)]
    fn route(
        &'static self,
        src: &Arc<Source<E>>,
        cpu: usize,
        arrival: u64,
        now: u64,
        io: &IntrOff,
        later: &mut impl RunAfter<E>,
    ) {
        match src.model {
            Model::Direct => {
                // A level line, or a `MASK_WHILE_QUEUED` source: masked while the handler
                // runs, so another CPU's arrival waits for the unmask instead of running a
                // second instance alongside.
                if src.needs_mask() {
                    src.mask();
                }
                later.push_direct(src.clone(), arrival, now);
            }
            Model::Dedicated => {
                let d = src.dedicated.as_ref().expect("dedicated source without its thread");
                src.mask();
                d.raised_at.store(arrival, Ordering::Relaxed);
                // Straight to the thread: set its word and make it runnable here; the
                // interrupt's exit switches to it if it outranks the interrupted thread.
                d.need.post(E::sched(), io);
            }
            Model::Pool => {
                if src.needs_mask() {
                    src.mask();
                }
                self.pool.enqueue(cpu, src.clone(), arrival, io);
            }
            Model::Pinned => {
                if src.needs_mask() {
                    src.mask();
                }
                later.push_pinned(src.clone(), arrival, now);
            }
        }
    }

    /// After the table lock: direct handlers run here (they may take spin mutexes); pinned
    /// ones borrow the CPU (the ithread runs with interrupts enabled and may take this vector
    /// again).
    #[inline(always)]
    fn run_later(&'static self, later: &mut Later<E>, now: u64, cpu: usize, io: &IntrOff) {
        for src in later.direct.iter_mut().take(later.ndirect) {
            let src = src.take().expect("counted");
            run_direct(&src, now, cpu);
        }
        if let Some(src) = later.pin_first.take() {
            // The static framework itself (`self` is it), so the per-CPU state's address is a
            // constant plus the index.
            E::intr().pinned.dispatch(src, now, cpu, io);
        }
        if !later.more.is_empty() {
            self.run_more(core::mem::take(&mut later.more), cpu, io);
        }
    }

    /// The SPL layer defers `vector` (the caller acknowledges it next): masks the line of
    /// each of its level sources, so the asserted line does not re-deliver at once; the
    /// replay unmasks them, and the line re-delivers if still asserted.
    pub fn defer(&self, vector: u8, io: &IntrOff) {
        let now = E::M::now_ns();
        let list = self.vectors[vector as usize].lock(io);
        for src in list.iter() {
            // The first deferral's time is kept (another CPU may defer the vector too; its
            // replay then counts from its own dispatch).
            let _ = src.deferred_at.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
            if src.is_level() {
                src.deferred.fetch_add(1, Ordering::AcqRel);
                src.mask();
            }
        }
    }

    fn start_storm_thread(&'static self) {
        if self.storm_thread.swap(true, Ordering::AcqRel) {
            return;
        }
        self.storm_event.bind(E::sched());
        let pri = Priority::of_ipl(Ipl::Vm).unwrap_or(Priority::INTR_BASE);
        E::sched().spawn("intr/storm", pri, None, move || self.storm_loop());
    }

    /// Re-enables throttled sources after their backoff; declares storms over once a
    /// re-enabled source stayed out of storm for the quiet time. Sleeps until a storm begins
    /// (the arrival path sets the event), then until the next of these is due.
    fn storm_loop(&'static self) {
        let mut next = u64::MAX;
        loop {
            self.storm_event.wait_deadline(next);
            let p = &storm::PARAMS;
            let now = E::M::now_ns();
            next = u64::MAX;
            for src in self.sources() {
                let st = &src.storm;
                if st.throttled.load(Ordering::Acquire) {
                    let at = st.unmask_at.load(Ordering::Relaxed);
                    if now >= at {
                        st.reset_window(now);
                        st.unmask_at.store(now, Ordering::Relaxed);
                        st.throttled.store(false, Ordering::Release);
                        src.unmask();
                        next = next.min(now.saturating_add(p.quiet_ns()));
                    } else {
                        next = next.min(at);
                    }
                } else if st.storming.load(Ordering::Acquire) {
                    let over = st.unmask_at.load(Ordering::Relaxed).saturating_add(p.quiet_ns());
                    if now >= over {
                        st.calm_down();
                        E::storm_report(&src.name, false, 0);
                    } else {
                        next = next.min(over);
                    }
                }
            }
        }
    }

    fn start_dedicated(&'static self, src: &Arc<Source<E>>) {
        let s = src.clone();
        let pri = Priority::of_ipl(src.ipl).unwrap_or(Priority::INTR_BASE);
        let h = E::sched().spawn(&src.name, pri, None, move || dedicated_loop(&s));
        let d = src.dedicated.as_ref().expect("dedicated");
        d.need.register(h.thread().clone(), E::sched());
    }
}

/// What [`Intr::dispatch`]'s arrival step decided for one source.
enum Arrived {
    /// The arrival was absorbed (a masked source remembers it; a replayed level line was
    /// unmasked): claimed, no filter.
    Absorbed,
    /// Run the source's filter; `timed`: charge its time to the storm rule (one in
    /// [`storm::FILTER_SAMPLE`]).
    Filter { timed: bool },
}

/// The handlers [`Intr::dispatch`] runs after releasing the vector table: the first pinned
/// source in its own slot (the usual case: one source per vector, a test and a call), up to
/// four direct ones inline, and any number more in vectors allocated only when a vector is
/// shared that widely (the heap may be used with interrupts disabled).
struct Later<E: IntrEnv> {
    pin_first: Option<Arc<Source<E>>>,
    direct: [Option<Arc<Source<E>>>; 4],
    ndirect: usize,
    /// Direct sources past the fourth and pinned ones past the first, and any whose
    /// delivery arrived before this dispatch (deferred by the SPL, or held by a mask), with
    /// its arrival time (rare: allocated only then).
    more: Vec<(Arc<Source<E>>, u64)>,
}

/// Where [`Intr::route`] puts the direct and pinned handlers it schedules, to run after the
/// vector table's lock: a [`Later`] for a shared vector, a [`LaterOne`] for a vector with one
/// source.
trait RunAfter<E: IntrEnv> {
    fn push_direct(&mut self, src: Arc<Source<E>>, arrival: u64, now: u64);
    fn push_pinned(&mut self, src: Arc<Source<E>>, arrival: u64, now: u64);
}

/// The handler to run after the lock for a vector with one source (none, or its one
/// source's), with the delivery's arrival time.
enum LaterOne<E: IntrEnv> {
    None,
    Direct(Arc<Source<E>>, u64),
    Pinned(Arc<Source<E>>, u64),
}

impl<E: IntrEnv> RunAfter<E> for LaterOne<E> {
    #[inline(always)]
    fn push_direct(&mut self, src: Arc<Source<E>>, arrival: u64, _now: u64) {
        debug_assert!(matches!(self, LaterOne::None), "one source scheduled twice");
        *self = LaterOne::Direct(src, arrival);
    }

    #[inline(always)]
    fn push_pinned(&mut self, src: Arc<Source<E>>, arrival: u64, _now: u64) {
        debug_assert!(matches!(self, LaterOne::None), "one source scheduled twice");
        *self = LaterOne::Pinned(src, arrival);
    }
}

impl<E: IntrEnv> Later<E> {
    #[inline(always)]
    fn new() -> Self {
        Later { pin_first: None, direct: [const { None }; 4], ndirect: 0, more: Vec::new() }
    }
}

impl<E: IntrEnv> RunAfter<E> for Later<E> {
    #[inline(always)]
    fn push_direct(&mut self, src: Arc<Source<E>>, arrival: u64, now: u64) {
        if self.ndirect < self.direct.len() && arrival == now {
            self.direct[self.ndirect] = Some(src);
            self.ndirect += 1;
        } else {
            self.more.push((src, arrival));
        }
    }

    #[inline(always)]
    fn push_pinned(&mut self, src: Arc<Source<E>>, arrival: u64, now: u64) {
        if self.pin_first.is_none() && arrival == now {
            self.pin_first = Some(src);
        } else {
            self.more.push((src, arrival));
        }
    }
}

impl<E: IntrEnv> Intr<E> {
    /// [`Later`]'s overflow: the fifth and later direct sources and the second and later
    /// pinned ones of a widely shared vector.
    #[cold]
    #[inline(never)]
    fn run_more(&'static self, more: Vec<(Arc<Source<E>>, u64)>, cpu: usize, io: &IntrOff) {
        for (src, arrival) in more {
            if src.model == Model::Pinned {
                self.pinned.dispatch_outlined(src, arrival, cpu, io);
            } else {
                run_direct(&src, arrival, cpu);
            }
        }
    }
}

/// When the delivery `now` dispatches for `src` arrived: earlier than `now` if the SPL
/// deferred it (a replay) or it waited for the source's unmask (an arrival absorbed while
/// masked, re-raised at the unmask); each wait is counted in the source's statistics. One
/// load on the usual path.
#[inline(always)]
fn arrival_of<E: IntrEnv>(src: &Source<E>, replay: bool, now: u64) -> u64 {
    let mut arrival = now;
    if replay {
        let d = src.deferred_at.swap(0, Ordering::Relaxed);
        if d != 0 && d < now {
            src.stats.spl_deferred.fetch_add(1, Ordering::Relaxed);
            src.stats.spl_deferred_ns.fetch_add(now - d, Ordering::Relaxed);
            arrival = d;
        }
    }
    if src.masked_since.load(Ordering::Relaxed) != 0 {
        let m = src.masked_since.swap(0, Ordering::Relaxed);
        if m != 0 && m < now {
            src.stats.masked_waits.fetch_add(1, Ordering::Relaxed);
            src.stats.masked_ns.fetch_add(now - m, Ordering::Relaxed);
            arrival = arrival.min(m);
        }
    }
    arrival
}

/// A direct-model handler in interrupt context: a level or `MASK_WHILE_QUEUED` source was
/// masked by `route` and is unmasked after its handler (an arrival absorbed meanwhile is
/// re-raised then); `hwi_sched` re-raises the vector.
#[inline(always)]
fn run_direct<E: IntrEnv>(src: &Arc<Source<E>>, now: u64, cpu: usize) {
    // Interrupt context: the interrupted thread cannot switch away under the handler.
    let again = src.run_handler_in::<RUN_INTERRUPT>(now, cpu);
    if src.needs_mask() {
        src.unmask();
    }
    if again {
        E::retrigger(src.vector);
    }
}

/// The life of a dedicated ithread: wait, run the handler, unmask, repeat.
fn dedicated_loop<E: IntrEnv>(src: &Arc<Source<E>>) {
    let d = src.dedicated.as_ref().expect("dedicated");
    loop {
        d.need.wait(E::sched());
        if src.gate.is_closed() {
            return;
        }
        // Holding no lock: take on the priority the source asks for, if it changed.
        if let Some(p) = src.thread_priority() {
            if E::sched().current().base_priority() != p {
                E::sched().set_own_priority(p);
            }
        }
        // Taken, not read: the source stays masked from the dispatch that stored it to the
        // unmask below, so no other raise time can land meanwhile; 0 is a wakeup that only
        // brought a new priority.
        let raised = d.raised_at.swap(0, Ordering::Relaxed);
        if raised == 0 {
            continue;
        }
        loop {
            let again = src.run_handler(raised, E::sched().cpu_index());
            if !again {
                break;
            }
            E::sched().yield_now(); // hwi_sched: let others run, then go again
        }
        src.unmask();
    }
}
