//! `run=torture`: random concurrent interrupt and lock load for `torture.ms` guest
//! milliseconds under the boot's dispatch model (`intr.model=`), with invariants checked all
//! along and again at the end — this kernel's locktorture.
//!
//! ## Load
//! * **Sources**: 56 interrupt sources on IPI vectors `0xA0..=0xD7`, established without a
//!   model (the boot's default): eight copies (`.0` to `.7`) of seven kinds, each kind with its
//!   own behaviour:
//!   `torture.plain` (handler only), `torture.mwq` (handler only, `MASK_WHILE_QUEUED`; blocks
//!   on an adaptive mutex), `torture.spinf` (its filter takes a spin mutex; the handler takes
//!   an rwlock as reader or writer), `torture.hwi` (filter, and a handler that calls
//!   `hwi_sched` at random), `torture.cv` (handler waits on a condition variable with a
//!   timeout and raises and lowers the SPL), `torture.filter` (filter only, takes the spin
//!   mutex), `torture.churn` (one copy at a time disestablished and established again all the time).
//!   And `torture.edu`: QEMU's `edu` device raised by every raiser through its MMIO
//!   register, its filter reading and acknowledging the status — by MSI in one of the run's
//!   two loads and by its INTx line (level-triggered, IOAPIC) in the other (by the seed),
//!   targeted at a random CPU.
//!   Handlers block only outside the `direct` model (a direct handler runs in interrupt
//!   context), and call `hwi_sched` only outside it (there it re-raises the vector, which
//!   this accounting cannot tell from a raise).
//!   Each CPU's LAPIC timer (the scheduler's clock) is counted, and COM2's level line is
//!   held stuck from time to time for the storm rule (`clock.rs`). With the host's devices
//!   there (`ithreads torture --sources all`), the NIC, the disk and COM1 input run too
//!   (`host.rs`).
//! * **Raisers**: one thread per CPU, at a random priority (real-time ones included), sends
//!   bursts of IPIs of random sources to its own CPU or another one, and between bursts
//!   sleeps, yields, spins, takes the adaptive mutex, signals the condition variable, or
//!   raises the SPL to `IPL_VM` while raising (the interrupt is deferred and replayed).
//! * **Control**: one thread makes the changes an operator makes: disestablishes and
//!   establishes `torture.churn`, masks and unmasks sources through their handles, resizes
//!   the pool (`intr.pool.size`), turns balancing on and off (`intr.balance`) and changes the
//!   pinned threads' bound (`intr.pinned.threads`), through the sysctl interface.
//! * **Priority inheritance**: a low-priority thread holds a mutex an RT thread wants.
//!
//! ## Accounting and invariants
//! A source has at most one IPI in flight: a raise while the previous one has not yet
//! reached the source's first stage (its filter, else its handler) is counted as **merged**
//! and not sent, so `delivered + merged == raised` is exact, and each first stage checks
//! that it consumes a raise (a delivery with none in flight is a duplicate). Violations:
//! `duplicate` (a delivery without a raise), `stray` (an `edu` interrupt with no status
//! bit set), `lost` (a raise still in flight after the
//! quiesce at the end), `count` (`handled != scheduled + reruns` for a source with a
//! handler, at the end), `after-disestablish` (a `torture.churn` handler of an earlier
//! establishment ran after its disestablish returned), `two-instances` (a second instance of
//! a `MASK_WHILE_QUEUED` source, or of any source under `dedicated`, ran while one ran),
//! `heartbeat` (a CPU with neither a heartbeat nor a handler for 100 ms of guest time; the
//! thread on it is named), the clock's and COM2's (`clock.rs`), the host sources' (`host.rs`), `pi` (sampled: the owner of a mutex whose RT waiter is asleep on
//! it does not run at the waiter's priority; `pi_samples=` counts the samples), `heap` (heap in use after teardown above the baseline, beyond one stack
//! per thread created meanwhile and still alive, one thread record per thread spawned
//! meanwhile (the scheduler's registry keeps them until pruned) and 16 KiB of high-water
//! capacity of queues and caches: the run is a warm-up load — a tenth of
//! `torture.ms`, at least 100 ms, at most half — torn down, the baseline, then the main load,
//! torn down the same way). A raise is reported lost if it is still in flight 1 guest second
//! after the load stopped or a `torture.churn` disestablish began. The lock checker
//! is on with its default policy: a violation panics, which the host reports.
//!
//! ## Output
//! `@@ torture-progress` every guest second, one `@@ torture-violation` per violation (the
//! first 64), `@@ torture-source` per source, `@@ torture-timer`, `@@ torture-com2`,
//! `@@ torture-host-source` per host source, `@@ torture-heartbeat` / `@@ torture-stall` /
//! `@@ torture-diag window` with a stalled CPU (`monitor.rs`, `window.rs`), and
//! `@@ torture-summary` at the end with the totals (`monitor_idle=` among them) and a hash of the delivery sequence (each CPU folds the source and the running
//! count of every delivery it takes, in order; the CPUs' hashes are folded in CPU order).
//! Under TCG `-icount` with no host input (no NIC or disk) the run is deterministic from
//! the seed, on any number of CPUs.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};

use arch::{apic, kprintln, X86_64};
use intr::{FilterResult, IntrFlags, IntrHandle, Model, SourceSpec};
use ipl::Ipl;
use machine::Machine;
use sched::Priority;

use crate::cmdline::Options;
use crate::drivers::edu::Edu;
use crate::intr::INTR;
use crate::locks::{CondVar, KernelEnv, Mutex, RwLock};
use crate::{SCHED, SPL};

mod clock;
mod host;
mod monitor;
mod window;

use monitor::monitor;

/// Source kinds, and copies of each: source `s` is kind `s % KINDS`, copy `s / KINDS`, on
/// vector `VEC_BASE + s`. Each source has at most one raise in flight, so the copies are what
/// lets many interrupts be in flight at once.
const KINDS: usize = 7;
const COPIES: usize = 8;
const NSRC: usize = KINDS * COPIES;
const VEC_BASE: u8 = 0xA0;
const MAX_CPUS: usize = sched::MAX_CPUS;

const PLAIN: usize = 0;
const MWQ: usize = 1;
const SPINF: usize = 2;
const HWI: usize = 3;
const CV: usize = 4;
const FILTER: usize = 5;
const CHURN: usize = 6;

const NAMES: [&str; KINDS] = [
    "torture.plain",
    "torture.mwq",
    "torture.spinf",
    "torture.hwi",
    "torture.cv",
    "torture.filter",
    "torture.churn",
];

/// The `edu` device's source, after the IPI sources: its MSI, or its INTx line
/// (level-triggered, through the IOAPIC), one or the other per load (see [`edu_msi`]).
const EDU: usize = NSRC;
const EDU_KIND: usize = KINDS;
const EDU_VECTOR: u8 = VEC_BASE + NSRC as u8;
/// Every source: the IPI ones and `edu`.
const NALL: usize = NSRC + 1;
/// Sources named in violations beyond [`SRC`]'s: the host-driven ones (`host.rs`).
const HOST_NIC: usize = NALL;
const HOST_BLK: usize = NALL + 1;
const HOST_COM1: usize = NALL + 2;
/// And the guest-generated ones outside the framework's IPI vectors (`clock.rs`).
const TIMER: usize = NALL + 3;
const COM2: usize = NALL + 4;
const EXTRA_NAMES: [&str; 5] = ["virtio-net0.rx", "virtio-blk0", "com1", "lapic-timer", "com2"];

fn kind(s: usize) -> usize {
    if s == EDU {
        EDU_KIND
    } else {
        s % KINDS
    }
}

/// `torture.<kind>.<copy>`, or `torture.edu`, or a host-driven source's name.
fn name(s: usize) -> String {
    if s == EDU {
        String::from("torture.edu")
    } else if s >= NALL {
        String::from(EXTRA_NAMES[s - NALL])
    } else {
        format!("{}.{}", NAMES[kind(s)], s / KINDS)
    }
}

/// Whether load `phase` of a run from `seed` drives `edu` by MSI (else by INTx): a run's
/// warm-up and main load use one each.
fn edu_msi(seed: u64, phase: u64) -> bool {
    seed.wrapping_add(phase).is_multiple_of(2)
}

/// Guest time without progress on a CPU that is reported.
const HEARTBEAT_NS: u64 = 100_000_000;
/// Guest time a raise may stay in flight before it is reported lost (at a disestablish,
/// and at the end).
const LOST_NS: u64 = 1_000_000_000;
/// Heap growth allowed beyond the thread records: queues and caches keep their high-water
/// capacity. Measured under `pinned` on 2 CPUs, seed 4242: the heap after teardown rises with
/// the run's length and then stays (560240 bytes after 4, 8 and 16 guest seconds), up to
/// 2.3 KB over a baseline taken after a short warm-up; a leaked thread (a 32 KiB stack) or
/// a leak per interrupt exceeds this.
const HEAP_SLACK: usize = 16 * 1024;
/// More slack with the host-driven sources: what is in flight in the drivers at the end (the
/// COM1 line queue between its soft interrupt and the sink, a disk thread's buffer).
const HOST_HEAP_SLACK: usize = 64 * 1024;
/// Violations printed (all are counted).
const MAX_REPORTS: usize = 64;

struct SrcState {
    raised: AtomicU64,
    merged: AtomicU64,
    delivered: AtomicU64,
    scheduled: AtomicU64,
    handled: AtomicU64,
    reruns: AtomicU64,
    inflight: AtomicBool,
    /// The CPU the raise in flight was sent to (IPI sources; for the stall diagnostics).
    target: AtomicUsize,
    closing: AtomicBool,
    running: AtomicU64,
    /// The establishment whose handler may run (`torture.churn`).
    generation: AtomicU64,
}

impl SrcState {
    const fn new() -> Self {
        SrcState {
            raised: AtomicU64::new(0),
            merged: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            scheduled: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            reruns: AtomicU64::new(0),
            inflight: AtomicBool::new(false),
            target: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            running: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }
}

static SRC: [SrcState; NALL] = [const { SrcState::new() }; NALL];
/// Per CPU: the delivery hash, and progress (deliveries, handler runs, heartbeats) with the
/// time it was last seen moving.
static HASH: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0xcbf2_9ce4_8422_2325) }; MAX_CPUS];
static PROGRESS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static STOP: AtomicBool = AtomicBool::new(false);
static MODEL_BLOCKS: AtomicBool = AtomicBool::new(false);
static DEDICATED: AtomicBool = AtomicBool::new(false);
static SEED: AtomicU64 = AtomicU64::new(0);

/// A violation kept for printing by the monitor (interrupt context does not print).
#[derive(Clone, Copy)]
struct Report {
    what: &'static str,
    /// The source's index, or `None`.
    source: Option<usize>,
    cpu: usize,
}
static VIOLATIONS: AtomicUsize = AtomicUsize::new(0);
static REPORTS: Mutex<Vec<Report>> = Mutex::new_spin("torture.reports", Ipl::High, Vec::new());

static SPIN: Mutex<u64> = Mutex::new_spin("torture.spin", Ipl::Vm, 0);
static BLOCK: Mutex<u64> = Mutex::new_adaptive("torture.block", 0);
static RW: RwLock<u64> = RwLock::new("torture.rw", 0);
static CV_M: Mutex<u64> = Mutex::new_adaptive("torture.cv", 0);
static CVAR: CondVar = CondVar::new("torture.cv");
static PI_M: Mutex<u64> = Mutex::new_adaptive("torture.pi", 0);
/// The RT thread that blocks on `PI_M`, and the loans seen.
static PI_WAITER: Mutex<Option<alloc::sync::Arc<sched::Thread<KernelEnv>>>> =
    Mutex::new_spin("torture.pi.waiter", Ipl::High, None);
static PI_SAMPLES: AtomicU64 = AtomicU64::new(0);
/// Raises held back by [`BACKLOG`] (counted as merged), and the longest per-CPU pool queue the
/// monitor saw (sampled every 10 ms): what the missing backpressure would otherwise build.
static HELD_BACK: AtomicU64 = AtomicU64::new(0);
static POOL_QUEUE_MAX: AtomicUsize = AtomicUsize::new(0);
static HANDLES: Mutex<Vec<Option<IntrHandle<KernelEnv>>>> =
    Mutex::new_adaptive("torture.handles", Vec::new());

fn violation(what: &'static str, source: Option<usize>, cpu: usize) {
    if VIOLATIONS.fetch_add(1, SeqCst) < MAX_REPORTS {
        REPORTS.lock().push(Report { what, source, cpu });
    }
}

/// xorshift64*: the run's random choices, one generator per thread, from the seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Self {
        let mut r = Rng(seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x2545_f491_4f6c_dd1d);
        if r.0 == 0 {
            r.0 = 1;
        }
        r.next();
        r
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn now() -> u64 {
    X86_64::now_ns()
}

fn cpu() -> usize {
    X86_64::cpu_index()
}

/// Busy work of `n` steps. Not `spin_loop` (PAUSE): under TCG `-icount` QEMU runs the vCPUs
/// round-robin in one thread, and a PAUSE ends a vCPU's turn, while a CPU that does not pause
/// keeps its turn until the next timer deadline — a CPU spinning with PAUSE then gets about
/// one iteration per timer period (seen as a 100 ms heartbeat stall on CPU 1 while CPU 0
/// waited for its handler in `disestablish`).
fn spin(n: u64) {
    let mut x = 0u64;
    for i in 0..n {
        x = core::hint::black_box(x.wrapping_add(i));
    }
    core::hint::black_box(x);
}

/// A cheap per-delivery random number for handlers (no shared generator in interrupt
/// context): a mix of the source's delivery count.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The first stage of a delivery (the filter if the source has one, else the handler):
/// consumes the raise in flight, counts and hashes the delivery. Returns the delivery's
/// number (1-based) for the handlers' random choices.
fn first_stage(s: usize) -> u64 {
    let c = cpu();
    if !SRC[s].inflight.swap(false, SeqCst) {
        violation("duplicate", Some(s), c);
    }
    let n = SRC[s].delivered.fetch_add(1, SeqCst) + 1;
    let h = HASH[c].load(SeqCst);
    HASH[c].store(mix(h ^ ((s as u64) << 56) ^ n), SeqCst);
    PROGRESS[c].fetch_add(1, SeqCst);
    n
}

/// Handler prologue: the one-instance check and the progress count; the epilogue is
/// [`leave`].
fn enter(s: usize) {
    let one = kind(s) == MWQ || DEDICATED.load(SeqCst);
    if SRC[s].running.fetch_add(1, SeqCst) > 0 && one {
        violation("two-instances", Some(s), cpu());
    }
    PROGRESS[cpu()].fetch_add(1, SeqCst);
}

fn leave(s: usize) {
    SRC[s].running.fetch_sub(1, SeqCst);
    SRC[s].handled.fetch_add(1, SeqCst);
}

fn filter_for(s: usize) -> Option<intr::Filter> {
    let k = kind(s);
    match k {
        SPINF | HWI | FILTER => Some(Box::new(move |_| {
            first_stage(s);
            if k != HWI {
                *SPIN.lock() += 1;
            }
            if k == FILTER {
                FilterResult::Handled
            } else {
                SRC[s].scheduled.fetch_add(1, SeqCst);
                FilterResult::Schedule
            }
        })),
        _ => None,
    }
}

fn handler_for(s: usize, generation: u64) -> Option<intr::Handler> {
    let k = kind(s);
    if k == FILTER {
        return None;
    }
    Some(Box::new(move |ctx| {
        let r = match k {
            // Handler-only sources: the handler is the first stage.
            PLAIN | MWQ | CV | CHURN => {
                SRC[s].scheduled.fetch_add(1, SeqCst);
                mix(first_stage(s))
            }
            _ => mix(SRC[s].handled.load(SeqCst) ^ ((s as u64) << 40)),
        };
        enter(s);
        let blocks = MODEL_BLOCKS.load(SeqCst);
        match k {
            MWQ if blocks && r % 4 == 0 => {
                *BLOCK.lock() += 1;
            }
            SPINF if blocks => {
                if r % 3 == 0 {
                    *RW.write() += 1;
                } else {
                    let _g = RW.read();
                }
            }
            SPINF => *SPIN.lock() += 1,
            HWI if blocks && r % 4 == 0 => {
                SRC[s].reruns.fetch_add(1, SeqCst);
                ctx.hwi_sched();
            }
            CV => {
                {
                    let _spl = SPL.raise(Ipl::High);
                    spin(r % 64);
                }
                if blocks && r % 2 == 0 {
                    let mut g = CV_M.lock();
                    CVAR.wait_deadline(&mut g, now() + (r >> 8) % 200_000);
                }
            }
            CHURN if SRC[s].generation.load(SeqCst) != generation => {
                violation("after-disestablish", Some(s), cpu());
            }
            _ => spin(r % 128),
        }
        leave(s);
    }))
}

fn flags_for(s: usize) -> IntrFlags {
    if kind(s) == MWQ {
        IntrFlags::MPSAFE | IntrFlags::MASK_WHILE_QUEUED
    } else {
        IntrFlags::MPSAFE
    }
}

fn establish(s: usize) -> IntrHandle<KernelEnv> {
    let spec = SourceSpec {
        name: name(s).into(),
        vector: VEC_BASE + s as u8,
        ipl: Ipl::Vm,
        flags: flags_for(s),
        model: None,
        thread_priority: None,
    };
    let generation = SRC[s].generation.load(SeqCst);
    INTR.establish(spec, filter_for(s), handler_for(s, generation))
        .unwrap_or_else(|e| panic!("torture: establish {}: {e}", name(s)))
}

/// Establishes the `edu` source on CPU `target`, by MSI or by its INTx line; its filter reads
/// and acknowledges the device's status (which deasserts the line).
fn establish_edu(edu: &Edu, msi: bool, target: usize) -> IntrHandle<KernelEnv> {
    edu.ack(!0);
    let spec = SourceSpec {
        name: name(EDU).into(),
        vector: EDU_VECTOR,
        ipl: Ipl::Vm,
        flags: IntrFlags::MPSAFE,
        model: None,
        thread_priority: None,
    };
    let dev = edu.clone();
    let filter: intr::Filter = Box::new(move |_| {
        if !dev.claim() {
            violation("stray", Some(EDU), cpu());
            return FilterResult::Stray;
        }
        first_stage(EDU);
        SRC[EDU].scheduled.fetch_add(1, SeqCst);
        FilterResult::Schedule
    });
    let handler: intr::Handler = Box::new(|_| {
        enter(EDU);
        spin(64);
        leave(EDU);
    });
    let h = if msi {
        let h = INTR.establish(spec, Some(filter), Some(handler));
        let h = h.unwrap_or_else(|e| panic!("torture: establish torture.edu: {e}"));
        if let Err(e) = edu.enable_msi(target, EDU_VECTOR) {
            panic!("torture: edu MSI: {e}");
        }
        h
    } else {
        let gsi = edu.program_intx(target, EDU_VECTOR).unwrap_or_else(|e| panic!("torture: edu INTx: {e}"));
        let line =
            crate::intr::IoApicLine::new(gsi, true).unwrap_or_else(|e| panic!("torture: edu INTx: {e}"));
        INTR.establish_line(spec, line, Some(filter), Some(handler))
            .unwrap_or_else(|e| panic!("torture: establish torture.edu: {e}"))
    };
    h
}

/// Handler runs a source may have scheduled and not yet run before its raises are held back
/// (counted as merged, as a raise in flight is). Torture loads the models, it does not bury
/// them: the pool and the pinned queue have no backpressure of their own for a source
/// without `MASK_WHILE_QUEUED`, and since timed sleeps end at their deadline (the one-shot
/// clock) the raisers deliver faster than a pool of blocking handlers runs them — the queues
/// then grow without bound and the oldest instances look lost (4 CPUs, 3 guest s: 70,000
/// queued per CPU).
const BACKLOG: u64 = 8;

/// Whether `s` has [`BACKLOG`] handler runs scheduled and not yet run (counted in
/// [`HELD_BACK`] when so).
fn backlogged(s: usize) -> bool {
    let held = SRC[s].scheduled.load(SeqCst).saturating_sub(SRC[s].handled.load(SeqCst)) >= BACKLOG;
    if held {
        HELD_BACK.fetch_add(1, SeqCst);
    }
    held
}

/// One raise of source `s` at CPU `target`: sent if none is in flight and its backlog is
/// short, else merged.
fn raise(s: usize, target: usize) {
    if SRC[s].closing.load(SeqCst) {
        return;
    }
    SRC[s].raised.fetch_add(1, SeqCst);
    if backlogged(s) || SRC[s].inflight.compare_exchange(false, true, SeqCst, SeqCst).is_err() {
        SRC[s].merged.fetch_add(1, SeqCst);
        return;
    }
    // Checked after taking the flight: the control thread sets `closing`, then waits for no
    // flight, so either it waits for this IPI or this raise sees `closing`.
    if SRC[s].closing.load(SeqCst) {
        SRC[s].inflight.store(false, SeqCst);
        SRC[s].raised.fetch_sub(1, SeqCst);
        return;
    }
    SRC[s].target.store(target, SeqCst);
    apic::send_ipi(arch::cpu::lapic_id_of(target), VEC_BASE + s as u8);
}

fn random_priority(rng: &mut Rng) -> Priority {
    let lo = Priority::MIN_KTHREAD.get() as u64;
    let hi = Priority::RT_BASE.get() as u64 + 16;
    Priority::new((lo + rng.below(hi - lo)) as u8).unwrap_or(Priority::KTHREAD)
}

/// One raise of the `edu` source: a write to the device's raise register if none is in
/// flight, else merged.
fn raise_edu(edu: &Edu) {
    SRC[EDU].raised.fetch_add(1, SeqCst);
    if backlogged(EDU) || SRC[EDU].inflight.compare_exchange(false, true, SeqCst, SeqCst).is_err() {
        SRC[EDU].merged.fetch_add(1, SeqCst);
        return;
    }
    edu.raise(1);
}

fn raiser(seed: u64, me: usize, ncpus: usize, edu: Option<Edu>) {
    let mut rng = Rng::new(seed, 100 + me as u64);
    while !STOP.load(SeqCst) {
        let burst = 1 + rng.below(24);
        for _ in 0..burst {
            let s = rng.below(NSRC as u64) as usize;
            let target = if rng.below(2) == 0 { me } else { rng.below(ncpus as u64) as usize };
            raise(s, target);
        }
        if let Some(e) = &edu {
            raise_edu(e);
        }
        // Mostly busy: under `-icount sleep=off` time with every CPU idle is skipped, and a
        // raiser that sleeps often leaves the CPUs idle.
        match rng.below(40) {
            0 => SCHED.sleep_ns(rng.below(50_000)),
            1 => SCHED.yield_now(),
            2 => {
                let mut g = BLOCK.lock();
                *g += 1;
                spin(rng.below(500));
            }
            3 => {
                // Raised at IPL_VM: deferred, replayed at the splx.
                let _spl = SPL.raise(Ipl::Vm);
                let s = rng.below(NSRC as u64) as usize;
                raise(s, me);
                spin(rng.below(200));
            }
            4 => {
                CVAR.signal();
            }
            _ => spin(rng.below(300)),
        }
    }
}

fn churn(rng: &mut Rng) {
    let s = CHURN + KINDS * rng.below(COPIES as u64) as usize;
    SRC[s].closing.store(true, SeqCst);
    // Sleeping, not yielding in a loop: under TCG `-icount` a CPU that loops without PAUSE
    // keeps the emulator's turn until the next timer deadline, while a CPU that pauses (any
    // contended spin) loses it at once — the other CPU then crawls in guest time and its
    // queued handlers looked lost.
    let until = now() + LOST_NS;
    while SRC[s].inflight.load(SeqCst) && now() < until {
        SCHED.sleep_ns(50_000);
    }
    if SRC[s].inflight.load(SeqCst) {
        diagnose(s);
        violation("lost", Some(s), cpu());
        SRC[s].inflight.store(false, SeqCst);
    }
    let old = HANDLES.lock()[s].take();
    drop(old); // disestablish: returns once no instance runs
    SRC[s].generation.fetch_add(1, SeqCst);
    SCHED.sleep_ns(rng.below(500_000));
    let h = establish(s);
    HANDLES.lock()[s] = Some(h);
    SRC[s].closing.store(false, SeqCst);
}

/// What the framework knows of a source whose raise is missing: its arrivals (counted,
/// masked), its handler runs, whether the SPL layer holds its vector, and the pool's state.
fn diagnose(s: usize) {
    let v = VEC_BASE + s as u8;
    let hs = HANDLES.lock();
    let Some(h) = hs[s].as_ref() else { return };
    let st = &h.source().stats;
    let ncpus = X86_64::ncpus();
    let queued: Vec<usize> = (0..ncpus).map(|c| INTR.pool.queued(c)).collect();
    let p = INTR.pool.stats();
    kprintln!(
        "@@ torture-diag source={} delivered={} arrivals={} masked={} fw_handled={} mask_refs={} spl_pending={} pool_size={} pool_idle={} pool_queued={:?} balance={}",
        name(s),
        SRC[s].delivered.load(SeqCst),
        st.total(),
        st.masked_total(),
        st.handled.load(SeqCst),
        h.source().mask_refs(),
        SPL.is_pending(v),
        p.size,
        p.idle,
        queued,
        INTR.pool.balancing()
    );
    SCHED.for_each_thread(|t| {
        if t.state() != sched::ThreadState::Dead && !t.is_idle() {
            kprintln!(
                "@@ torture-diag thread={} state={:?} on_cpu={} last_cpu={} pri={} base={} switches={}",
                t.name(),
                t.state(),
                t.is_on_cpu(),
                t.last_cpu(),
                t.priority().get(),
                t.base_priority().get(),
                t.switch_count()
            );
        }
    });
}

fn set(name: &str, value: &str) {
    if let Err(e) = crate::shell::sysctl_set(name, value) {
        panic!("torture: {}", e.msg);
    }
}

fn control(seed: u64, model: Model) {
    let mut rng = Rng::new(seed, 7);
    let mut masked = [false; NSRC];
    while !STOP.load(SeqCst) {
        SCHED.sleep_ns(500_000 + rng.below(3_000_000));
        match rng.below(6) {
            0 | 1 => churn(&mut rng),
            2 => {
                let s =
                    [PLAIN, SPINF, HWI][rng.below(3) as usize] + KINDS * rng.below(COPIES as u64) as usize;
                let hs = HANDLES.lock();
                if let Some(h) = &hs[s] {
                    if masked[s] {
                        let _ = h.unmask();
                    } else {
                        h.mask();
                    }
                    masked[s] = !masked[s];
                }
            }
            3 if model == Model::Pool => {
                let (lo, hi) = INTR.pool.size_bounds();
                let n = lo + rng.below((hi - lo + 1) as u64) as usize;
                set("intr.pool.size", &format!("{n}"));
            }
            4 if model == Model::Pool => set("intr.balance", if rng.below(2) == 0 { "on" } else { "off" }),
            5 if model == Model::Pinned => set("intr.pinned.threads", &format!("{}", 1 + rng.below(3))),
            _ => {}
        }
    }
    let hs = HANDLES.lock();
    for (s, m) in masked.iter().enumerate() {
        if *m {
            if let Some(h) = &hs[s] {
                let _ = h.unmask();
            }
        }
    }
}

/// A low-priority owner of `PI_M` with a real-time waiter: while the waiter is blocked the
/// owner's effective priority must reach the waiter's.
fn pi_owner(rt: Priority) {
    while !STOP.load(SeqCst) {
        {
            let mut g = PI_M.lock();
            *g += 1;
            // The owner sleeps while it holds the mutex (an adaptive mutex may be held across a
            // sleep; only spin mutexes may not): a waiter would spin, not block, on an owner
            // that is running.
            // The waiter sets the mutex's WAITERS bit, lends its priority along the turnstile
            // and only then goes to sleep (`sync::mutex`): once it sleeps with the bit set, the
            // loan must be there. (No guest-time bound on the loan itself: under TCG `-icount`
            // the waiter's CPU may not get the emulator's turn for a while.)
            let until = now() + 2_000_000;
            loop {
                if PI_M.raw().has_waiters() && waiter_asleep() {
                    PI_SAMPLES.fetch_add(1, SeqCst);
                    if SCHED.current().priority() < rt {
                        violation("pi", None, cpu());
                    }
                    break;
                }
                if now() >= until {
                    break;
                }
                SCHED.sleep_ns(200_000);
            }
        }
        SCHED.sleep_ns(1_000_000);
    }
}

fn waiter_asleep() -> bool {
    PI_WAITER.lock().as_ref().is_some_and(|t| t.state() == sched::ThreadState::Sleeping)
}

fn pi_waiter() {
    while !STOP.load(SeqCst) {
        SCHED.sleep_ns(1_500_000);
        *PI_M.lock() += 1;
    }
}

fn heartbeat(me: usize) {
    while !STOP.load(SeqCst) {
        PROGRESS[me].fetch_add(1, SeqCst);
        clock::check_timer();
        SCHED.sleep_ns(5_000_000);
    }
}

fn pri(p: Priority, plus: u8) -> Priority {
    Priority::new(p.get() + plus).unwrap_or(Priority::MAX)
}

/// Runs the torture load; true if no invariant was violated. The monitor (progress lines,
/// heartbeat, the end) is a thread on CPU 0 above every load thread.
pub fn run(opts: &'static Options) -> bool {
    static OK: AtomicBool = AtomicBool::new(false);
    SCHED
        .spawn("torture.monitor", pri(Priority::RT_BASE, 30), Some(0), move || {
            OK.store(monitor(opts), SeqCst)
        })
        .join();
    OK.load(SeqCst)
}
