//! Interrupt dispatch benchmarks: the four models (`intr::Model`) side by side, in one boot,
//! on self-IPIs raised and handled on CPU 0 (the runner binds the bench thread there; the
//! other CPUs idle). Each benchmark establishes one source per model on its own vector
//! (0x90..0xA5), all at `IPL_VM` with a short handler ([`Body`]), and disestablishes them afterwards;
//! it prints one figure per model ([`super::figure`], `model=` on the line).
//!
//! ## What is counted
//! Under TCG `-icount shift=0` the TSC counts instructions and interrupt delivery costs none:
//! a self-IPI's handler is entered as soon as the raising code re-enables interrupts. Every
//! interval below is therefore exactly the software path named, in instructions.
//!
//! * **raise**: `t0 = now()` immediately before `apic::send_ipi(self, vector)` — which
//!   disables interrupts, waits for the ICR to be idle, writes ICR high and low and restores
//!   interrupts (the interrupt is taken there). Those instructions are in every figure.
//! * `intr.latency` (one figure per model): from the raise to the handler's first statement,
//!   `t1 = now()`: interrupt entry, SPL arrival, EOI, `INTR.dispatch` (vector table, stats,
//!   storm accounting) and then, per model, nothing more (`direct`); the short pinned switch to
//!   the CPU's interrupt thread — `intr_pin_call`'s level (and spin count) and busy tests,
//!   stack and curthread swap, the ithread body's prologue (`pinned`); the event wake-up, interrupt exit,
//!   preemption and context switch to the source's thread (`dedicated`) or to a pool ithread
//!   (`pool`); and the framework's `run_handler` prologue (latency accounting). One sample per
//!   interrupt; the next is raised only after the handler, and the thread that ran it, are
//!   done (the bench thread resumes only then: everything runs on CPU 0 and the ithreads
//!   outrank it).
//! * `intr.switch_added` (model `pinned`): `pinned` and `direct` latencies taken in
//!   alternation, one pair per sample, recording pinned − direct (0 if negative — only when a
//!   clock interrupt lands in the direct half): the instructions the pinned model adds to the
//!   direct path. The median of the pairwise differences equals the difference of the medians
//!   whenever both are steady (icount: they are; the runner also prints both medians).
//! * `intr.block_switch` (`dedicated`, `pool`, `pinned`; a `direct` handler may not block):
//!   the bench thread holds an adaptive mutex and raises; the handler notes its start and
//!   takes the mutex, so it blocks (the owner is not running: it is preempted, or pinned
//!   underneath). From the raise to the bench thread's next instruction after `send_ipi`:
//!   the latency path above, the failed mutex enter, the turnstile block (priority lent to the
//!   bench thread), the pool's divorce (pool), and the real switch back to the bench thread,
//!   which then finishes its interrupt return. The release and the handler's completion
//!   are not counted (the next sample waits for them). Every sample checks the handler had
//!   started and not finished when the bench thread got the CPU back.
//! * The parts of `intr.block_switch` (one figure each per blocking model), from a second
//!   pass with the probe points armed (`super::probe`: each adds a TSC read and a `cmpxchg`):
//!   `intr.block_switch.dispatch` — the raise to the handler's first statement (the latency
//!   path); `.enter_fail` — from there to the failed mutex enter giving up on the owner (the
//!   handler's two counter updates, the fast path's failed `cmpxchg`, the slow path's owner
//!   test); `.turnstile` — from there to the sleep check before the switch: the current
//!   thread's reference, the turnstile lock, the owner word's waiters bit, `Turnstiles::block`
//!   (the waiter's record, priority lent along the chain of owners) and `sleep_prepare`;
//!   `.switch` — from the sleep check (itself, the pool's divorce or the pinned block path
//!   included) to the bench thread's next instruction. A sample counts only if the four
//!   readings come in path order (another thread's sleep can come first); the four medians
//!   add up to about the whole (medians of parts are not parts of a median).
//! * `intr.rate` (one figure per model): [`RATE_BATCH`] interrupts back to back, each raised
//!   as soon as the previous one is handled (same loop as the latency benchmark, no gaps);
//!   one sample per batch = the batch's instructions / [`RATE_BATCH`] = instructions per
//!   interrupt, whole round trip (raise, dispatch, handler, switch back, the loop). The
//!   sustained rate is its inverse; the rate relative to `direct` is direct's figure divided
//!   by the model's. Samples: `bench.samples / RATE_BATCH` (at least 1).
//! * `intr.rate.body1000` (one figure per model): `intr.rate` with a handler body of exactly
//!   1,000 instructions (`arch::bench_prims::body_1000`; the benchmark first measures the body
//!   alone and, under icount, fails unless it is 1,000). Its rate relative to `direct` is what
//!   a model costs a handler that does some work.
//! * `intr.pinned_round_trip` (model `pinned`): `intr.rate` batches of `direct` and `pinned`
//!   in alternation, one sample per pair, pinned − direct (0 if negative): the whole way into
//!   the pinned handler and back, per interrupt.
//!
//! Preemption stays enabled while measuring (no `Bencher::quiet`), for every model alike: the
//! `dedicated` and `pool` handlers run in threads that must preempt the bench thread on its
//! own CPU. The clock interrupt and the storm thread land in a few samples; medians ignore
//! them.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::hint::spin_loop;
use core::sync::atomic::{AtomicU64, Ordering};

use arch::apic;
use arch::bench_prims::{body_1000, BODY_INSTRUCTIONS};
use arch::kprintln;
use intr::{IntrFlags, IntrHandle, Model, SourceSpec};
use ipl::Ipl;
use kbench::{kbench, now, Bencher};

use super::figure;
use crate::intr::INTR;
use crate::locks::{KernelEnv, Mutex};
use crate::SCHED;

/// Interrupts per `intr.rate` sample.
pub const RATE_BATCH: usize = 1000;

/// Spin iterations after which a handler that has not run is a bug (~100 M instructions).
const STUCK: u64 = 20_000_000;

/// Handler runs so far (bumped at each handler's start, after reading the TSC).
static STARTED: AtomicU64 = AtomicU64::new(0);
/// The TSC read first thing by the latest handler.
static T_START: AtomicU64 = AtomicU64::new(0);
/// Blocking handlers that got the mutex and finished.
static FINISHED: AtomicU64 = AtomicU64::new(0);
/// Held by the bench thread while it raises `intr.block_switch` interrupts.
static GATE: Mutex<()> = Mutex::new_adaptive("bench.intr.gate", ());

type Handle = IntrHandle<KernelEnv>;

/// One established benchmark source.
struct Src {
    model: Model,
    vector: u8,
    _h: Handle,
}

/// What a benchmark source's handler does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Reads the TSC, publishes it and counts itself.
    Empty,
    /// The same, then takes [`GATE`] (it blocks while the bench thread holds it).
    Blocking,
    /// The same as `Empty`, then [`body_1000`]: exactly 1,000 instructions more.
    Thousand,
}

fn source_name(model: Model, body: Body) -> &'static str {
    match (body, model) {
        (Body::Empty, Model::Direct) => "bench.intr.direct",
        (Body::Empty, Model::Dedicated) => "bench.intr.dedicated",
        (Body::Empty, Model::Pool) => "bench.intr.pool",
        (Body::Empty, Model::Pinned) => "bench.intr.pinned",
        (Body::Blocking, Model::Direct) => "bench.intr.block.direct",
        (Body::Blocking, Model::Dedicated) => "bench.intr.block.dedicated",
        (Body::Blocking, Model::Pool) => "bench.intr.block.pool",
        (Body::Blocking, Model::Pinned) => "bench.intr.block.pinned",
        (Body::Thousand, Model::Direct) => "bench.intr.body1000.direct",
        (Body::Thousand, Model::Dedicated) => "bench.intr.body1000.dedicated",
        (Body::Thousand, Model::Pool) => "bench.intr.body1000.pool",
        (Body::Thousand, Model::Pinned) => "bench.intr.body1000.pinned",
    }
}

/// Establishes a source on `vector` under `model` at `IPL_VM` whose handler does `body`.
fn establish(model: Model, vector: u8, body: Body) -> Src {
    let name = source_name(model, body);
    let spec = SourceSpec {
        name: name.into(),
        vector,
        ipl: Ipl::Vm,
        flags: IntrFlags::MPSAFE,
        model: Some(model),
        thread_priority: None,
    };
    let handler: intr::Handler = match body {
        Body::Blocking => Box::new(|_| {
            T_START.store(now(), Ordering::Relaxed);
            STARTED.fetch_add(1, Ordering::Release);
            drop(GATE.lock());
            FINISHED.fetch_add(1, Ordering::Release);
        }),
        Body::Empty => Box::new(|_| {
            T_START.store(now(), Ordering::Relaxed);
            STARTED.fetch_add(1, Ordering::Release);
        }),
        Body::Thousand => Box::new(|_| {
            T_START.store(now(), Ordering::Relaxed);
            STARTED.fetch_add(1, Ordering::Release);
            body_1000();
        }),
    };
    let h = INTR
        .establish(spec, None, Some(handler))
        .unwrap_or_else(|e| panic!("bench: cannot establish {name}: {e}"));
    assert_eq!(h.source().model(), model, "bench: {name} runs under another model");
    if model == Model::Dedicated {
        // The source's thread is unbound: keep it on CPU 0 with the bench thread (with more
        // CPUs it could be woken elsewhere, and the figure would be a cross-CPU one).
        SCHED.for_each_thread(|t| {
            if t.name() == name {
                SCHED.bind_thread(t, Some(0));
            }
        });
    }
    Src { model, vector, _h: h }
}

/// Establishes one source per model in `models` on consecutive vectors from `base`, and lets
/// their threads start and park.
fn establish_all(models: &[Model], base: u8, body: Body) -> Vec<Src> {
    let v = models.iter().enumerate().map(|(i, &m)| establish(m, base + i as u8, body)).collect();
    SCHED.sleep_ns(20_000_000);
    v
}

#[inline(always)]
fn raise(vector: u8) {
    apic::send_ipi(arch::cpu::lapic_id_of(0), vector);
}

/// Waits until `counter` reaches `target` (normally at once: the handler ran before the bench
/// thread got the CPU back).
#[inline(always)]
fn wait_for(counter: &AtomicU64, target: u64, what: &str) {
    let mut spins = 0u64;
    while counter.load(Ordering::Acquire) < target {
        spins += 1;
        assert!(spins < STUCK, "bench: {what}: the handler did not run");
        spin_loop();
    }
}

fn warm_up(n: usize) -> usize {
    (n / 16).clamp(1, 256)
}

/// One latency sample on `s`: raise → handler start.
#[inline(always)]
fn latency_once(s: &Src) -> u64 {
    let k = STARTED.load(Ordering::Relaxed);
    let t0 = now();
    raise(s.vector);
    wait_for(&STARTED, k + 1, s.model.name());
    T_START.load(Ordering::Relaxed).wrapping_sub(t0)
}

fn start() {
    assert_eq!(SCHED.cpu_index(), 0, "interrupt benchmarks run on CPU 0");
}

/// `intr.latency`: raise → handler start, per model.
fn latency(b: &mut Bencher) {
    start();
    let n = b.samples();
    let srcs = establish_all(&Model::ALL, 0x90, Body::Empty);
    for s in &srcs {
        let mut v = Vec::with_capacity(n);
        for i in 0..warm_up(n) + n {
            let x = latency_once(s);
            if i >= warm_up(n) {
                v.push(x);
            }
        }
        figure("intr.latency", s.model.name(), &mut v);
    }
}
kbench!(B_INTR_LATENCY, "intr.latency", latency);

/// `intr.switch_added`: pinned − direct latency, paired samples.
fn switch_added(b: &mut Bencher) {
    start();
    let n = b.samples();
    let srcs = establish_all(&[Model::Direct, Model::Pinned], 0x98, Body::Empty);
    let (direct, pinned) = (&srcs[0], &srcs[1]);
    let (mut d, mut p, mut diff) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..warm_up(n) + n {
        let x = latency_once(direct);
        let y = latency_once(pinned);
        if i >= warm_up(n) {
            d.push(x);
            p.push(y);
            diff.push(y.saturating_sub(x));
        }
    }
    if let (Some(sd), Some(sp)) = (kbench::summarize(&mut d), kbench::summarize(&mut p)) {
        kprintln!(
            "bench: intr.switch_added: median latency pinned {} - direct {} = {}",
            sp.median,
            sd.median,
            sp.median as i64 - sd.median as i64
        );
    }
    figure("intr.switch_added", "pinned", &mut diff);
}
kbench!(B_INTR_SWITCH_ADDED, "intr.switch_added", switch_added);

/// One `intr.block_switch` sample on `s`: the bench thread holds [`GATE`] and raises; the
/// handler blocks on it. Returns (raise, bench thread back after the raise); the handler
/// has finished when it returns.
fn block_once(s: &Src) -> (u64, u64) {
    let k = STARTED.load(Ordering::Relaxed);
    let f = FINISHED.load(Ordering::Relaxed);
    let g = GATE.lock();
    let t0 = now();
    raise(s.vector);
    let t1 = now();
    let (started, finished) = (STARTED.load(Ordering::Acquire), FINISHED.load(Ordering::Acquire));
    drop(g);
    assert!(
        started == k + 1 && finished == f,
        "bench: intr.block_switch {}: the handler did not block (started {}, finished {})",
        s.model,
        started - k,
        finished - f
    );
    wait_for(&FINISHED, f + 1, s.model.name());
    (t0, t1)
}

/// The names of the parts of `intr.block_switch`, in path order.
const BLOCK_PARTS: [&str; 4] = [
    "intr.block_switch.dispatch",
    "intr.block_switch.enter_fail",
    "intr.block_switch.turnstile",
    "intr.block_switch.switch",
];

/// `intr.block_switch`: raise → bench thread back on the CPU with the handler blocked on the
/// mutex it holds, per model that may block; then the same path in its four parts (second
/// pass, probes armed), per model.
fn block_switch(b: &mut Bencher) {
    start();
    let n = b.samples();
    let srcs = establish_all(&[Model::Dedicated, Model::Pool, Model::Pinned], 0x9A, Body::Blocking);
    for s in &srcs {
        let mut v = Vec::with_capacity(n);
        for i in 0..warm_up(n) + n {
            let (t0, t1) = block_once(s);
            if i >= warm_up(n) {
                v.push(t1.wrapping_sub(t0));
            }
        }
        figure("intr.block_switch", s.model.name(), &mut v);
    }
    // The parts: the probe points split each sample at the handler's first statement, the
    // turnstile (`sync::Env::probe_turnstile`) and the sleep check before the switch away.
    super::probe::arm(true);
    for s in &srcs {
        let mut parts: [Vec<u64>; 4] = core::array::from_fn(|_| Vec::with_capacity(n));
        let mut whole = Vec::with_capacity(n);
        let (mut out_of_order, mut i) = (0usize, 0usize);
        // `n` samples, however many are dropped (a bug if every other one is).
        while whole.len() < n {
            assert!(out_of_order <= n, "bench: intr.block_switch {}: the probes fired out of order", s.model);
            super::probe::clear();
            let (t0, t1) = block_once(s);
            let handler = T_START.load(Ordering::Relaxed);
            let ts = super::probe::T_TURNSTILE.load(Ordering::Relaxed);
            let sleep = super::probe::T_SLEEP.load(Ordering::Relaxed);
            i += 1;
            if i <= warm_up(n) {
                continue;
            }
            // Another thread's sleep (a clock tick's work) may come first: not this path.
            if !(t0 <= handler && handler <= ts && ts <= sleep && sleep <= t1) {
                out_of_order += 1;
                continue;
            }
            for (p, x) in parts.iter_mut().zip([handler - t0, ts - handler, sleep - ts, t1 - sleep]) {
                p.push(x);
            }
            whole.push(t1 - t0);
        }
        let medians: Vec<u64> =
            parts.iter().map(|p| kbench::summarize(&mut p.clone()).map_or(0, |x| x.median)).collect();
        let total = kbench::summarize(&mut whole).map_or(0, |x| x.median);
        kprintln!(
            "bench: intr.block_switch {}: parts {} + {} + {} + {} = {} (probed pass, median of the whole {}; {} samples out of order, dropped)",
            s.model,
            medians[0],
            medians[1],
            medians[2],
            medians[3],
            medians.iter().sum::<u64>(),
            total,
            out_of_order
        );
        for (name, p) in BLOCK_PARTS.iter().zip(parts.iter_mut()) {
            figure(name, s.model.name(), p);
        }
    }
    super::probe::arm(false);
}
kbench!(B_INTR_BLOCK_SWITCH, "intr.block_switch", block_switch);

/// One `intr.rate` batch on `s`: [`RATE_BATCH`] interrupts back to back; the instructions
/// per interrupt.
#[inline(always)]
fn batch(s: &Src) -> u64 {
    let k = STARTED.load(Ordering::Relaxed);
    let t0 = now();
    for j in 0..RATE_BATCH as u64 {
        raise(s.vector);
        wait_for(&STARTED, k + j + 1, s.model.name());
    }
    now().wrapping_sub(t0) / RATE_BATCH as u64
}

/// The `intr.rate` figures (`name`) of `srcs`, one per model, and the rates relative to
/// `direct` on the console.
fn rates(b: &Bencher, name: &str, srcs: &[Src]) {
    let reps = (b.samples() / RATE_BATCH).max(1);
    let mut per: Vec<(Model, u64)> = Vec::new();
    for s in srcs {
        let mut v = Vec::with_capacity(reps);
        for rep in 0..reps + 1 {
            let x = batch(s);
            if rep > 0 {
                v.push(x); // the first batch warms up
            }
        }
        figure(name, s.model.name(), &mut v);
        per.push((s.model, v[(v.len() - 1) / 2]));
    }
    if let Some(&(_, direct)) = per.iter().find(|(m, _)| *m == Model::Direct) {
        for (m, x) in &per {
            let pct = (direct * 100 + x / 2) / x; // rounded
            kprintln!(
                "bench: {name} {m}: {x} instructions per interrupt, rate {}.{:02} x direct",
                pct / 100,
                pct % 100
            );
        }
    }
}

/// `intr.rate`: instructions per interrupt, sustained, per model.
fn rate(b: &mut Bencher) {
    start();
    let srcs = establish_all(&Model::ALL, 0x94, Body::Empty);
    rates(b, "intr.rate", &srcs);
}
kbench!(B_INTR_RATE, "intr.rate", rate);

/// `intr.rate.body1000`: `intr.rate` with handlers whose body is [`body_1000`], per model.
/// First checks, in this boot, that the body is exactly [`BODY_INSTRUCTIONS`] instructions
/// (under icount; with another unit the body's figure is only printed).
fn rate_body1000(b: &mut Bencher) {
    start();
    let overhead = b.overhead();
    let mut probe = super::bencher(b.samples().min(10_000));
    probe.set_overhead(overhead);
    probe.iter(body_1000);
    let body = probe.summary().map_or(0, |s| s.median);
    kprintln!("bench: intr.rate.body1000: the body is {body} (net of the loop; {BODY_INSTRUCTIONS} wanted)");
    if super::unit() == "instructions" {
        assert_eq!(
            body, BODY_INSTRUCTIONS,
            "bench: the 1,000-instruction handler body is not 1,000 instructions"
        );
    }
    let srcs = establish_all(&Model::ALL, 0xA0, Body::Thousand);
    rates(b, "intr.rate.body1000", &srcs);
}
kbench!(B_INTR_RATE_BODY1000, "intr.rate.body1000", rate_body1000);

/// `intr.pinned_round_trip` (model `pinned`): `intr.rate` pinned minus `intr.rate` direct,
/// batches taken in alternation, one difference per pair (0 if negative): the instructions
/// the pinned model adds to a whole interrupt, in and back.
fn pinned_round_trip(b: &mut Bencher) {
    start();
    let reps = (b.samples() / RATE_BATCH).max(1);
    let srcs = establish_all(&[Model::Direct, Model::Pinned], 0xA4, Body::Empty);
    let mut diff = Vec::with_capacity(reps);
    for rep in 0..reps + 1 {
        let d = batch(&srcs[0]);
        let p = batch(&srcs[1]);
        if rep > 0 {
            diff.push(p.saturating_sub(d));
        }
    }
    figure("intr.pinned_round_trip", "pinned", &mut diff);
}
kbench!(B_INTR_PINNED_ROUND_TRIP, "intr.pinned_round_trip", pinned_round_trip);
