//! Random sequences of establish / raise (from and to any CPU) / mask / unmask / `hwi_sched`
//! budgets / disestablish / pool resize on the host machine, checked after every step
//! against a reference model of delivery:
//!
//! * a raise of an established, unmasked source runs its handler once, plus once more per
//!   `hwi_sched` it asks for;
//! * a raise while the source is masked (by its handle) is absorbed; any number of them are
//!   delivered once, at the last unmask;
//! * a raise of a vector with no source runs nothing (the host counts it stray);
//! * nothing runs after a disestablish returned;
//! * the pool's size is clamped to [2 × NCPU, pool-model handlers].
//!
//! Each step waits until the system is quiet, so the model can be exact; interrupts kept in
//! flight concurrently are `host_path.rs`'s `many_in_flight_*` and the loom models'.
//! `PROPTEST_CASES=N` runs more cases (the default here is 16).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use host_machine::{spin_until, HostMachine, HostSystem, Intr, IntrHandle};
use intr::{IntrFlags, Model, SourceSpec};
use ipl::Ipl;
use machine::Machine;
use proptest::prelude::*;

const SLOTS: usize = 4;
const NCPUS: usize = 2;
const BASE_VECTOR: u8 = 0xA0;

#[derive(Clone, Debug)]
enum Op {
    Establish { slot: usize, model: Model, budget: u64 },
    Raise { slot: usize, from: usize, to: usize },
    Mask { slot: usize },
    Unmask { slot: usize },
    Disestablish { slot: usize },
    Resize { n: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS;
    let cpu = 0..NCPUS;
    let model =
        prop_oneof![Just(Model::Direct), Just(Model::Dedicated), Just(Model::Pool), Just(Model::Pinned)];
    prop_oneof![
        (slot.clone(), model, 0..3u64).prop_map(|(slot, model, budget)| Op::Establish {
            slot,
            model,
            budget
        }),
        (slot.clone(), cpu.clone(), cpu).prop_map(|(slot, from, to)| Op::Raise { slot, from, to }),
        (slot.clone(), slot.clone(), slot.clone()).prop_map(|(a, b, _)| Op::Raise {
            slot: a,
            from: b % NCPUS,
            to: a % NCPUS
        }),
        slot.clone().prop_map(|slot| Op::Mask { slot }),
        slot.clone().prop_map(|slot| Op::Unmask { slot }),
        slot.prop_map(|slot| Op::Disestablish { slot }),
        (0..12usize).prop_map(|n| Op::Resize { n }),
    ]
}

/// The reference model's view of one slot.
#[derive(Default)]
struct Slot {
    handle: Option<IntrHandle>,
    model: Option<Model>,
    budget: u64,
    masks: u32,
    missed: bool,
}

fn run_sequence(ops: Vec<Op>) {
    let sys = HostSystem::boot(NCPUS);
    let intr: &'static Intr = sys.intr;
    let stray0 = sys.stray();
    let (ran, expected, strays) = sys.run(move |sched| {
        // Per slot: handler runs, and the `hwi_sched` calls still to make for this delivery.
        let runs: Arc<Vec<AtomicU64>> = Arc::new((0..SLOTS).map(|_| AtomicU64::new(0)).collect());
        let again: Arc<Vec<AtomicU64>> = Arc::new((0..SLOTS).map(|_| AtomicU64::new(0)).collect());
        let mut slots: Vec<Slot> = (0..SLOTS).map(|_| Slot::default()).collect();
        let mut expected = 0u64;
        let mut strays = 0u64;
        let names: [&'static str; SLOTS] = ["p.0", "p.1", "p.2", "p.3"];
        let total = |runs: &Vec<AtomicU64>| runs.iter().map(|r| r.load(Ordering::SeqCst)).sum::<u64>();
        for (step, op) in ops.iter().enumerate() {
            match *op {
                Op::Establish { slot, model, budget } => {
                    let s = &mut slots[slot];
                    if s.handle.is_some() {
                        continue;
                    }
                    let (r, a) = (runs.clone(), again.clone());
                    let h = intr
                        .establish(
                            SourceSpec {
                                name: names[slot].into(),
                                vector: BASE_VECTOR + slot as u8,
                                ipl: Ipl::Vm,
                                flags: IntrFlags::MPSAFE,
                                model: Some(model),
                                thread_priority: None,
                            },
                            None,
                            Some(Box::new(move |ctx| {
                                r[slot].fetch_add(1, Ordering::SeqCst);
                                if a[slot]
                                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                                    .is_ok()
                                {
                                    ctx.hwi_sched();
                                }
                            })),
                        )
                        .expect("establish");
                    *s = Slot { handle: Some(h), model: Some(model), budget, masks: 0, missed: false };
                }
                Op::Raise { slot, from, to } => {
                    let s = &mut slots[slot];
                    sched.bind_current(Some(from));
                    if s.handle.is_none() {
                        strays += 1;
                    } else if s.masks > 0 {
                        s.missed = true;
                    } else {
                        again[slot].store(s.budget, Ordering::SeqCst);
                        expected += 1 + s.budget;
                    }
                    let v = BASE_VECTOR + slot as u8;
                    assert!(HostMachine::raise(to, v), "step {step}: raise merged while quiet");
                    // Taken (delivered, absorbed or stray) before the next step.
                    assert!(
                        spin_until(5_000_000_000, || !HostMachine::is_posted(to, v)),
                        "step {step}: never taken"
                    );
                }
                Op::Mask { slot } => {
                    let s = &mut slots[slot];
                    if let Some(h) = &s.handle {
                        h.mask();
                        s.masks += 1;
                    }
                }
                Op::Unmask { slot } => {
                    let s = &mut slots[slot];
                    let Some(h) = &s.handle else { continue };
                    if s.masks == 0 {
                        assert!(h.unmask().is_err(), "step {step}: unmask without mask accepted");
                        continue;
                    }
                    s.masks -= 1;
                    if s.masks == 0 && s.missed {
                        s.missed = false;
                        again[slot].store(s.budget, Ordering::SeqCst);
                        expected += 1 + s.budget;
                    }
                    h.unmask().expect("unmask");
                }
                Op::Disestablish { slot } => {
                    slots[slot] = Slot::default();
                }
                Op::Resize { n } => {
                    let pool_handlers = slots.iter().filter(|s| s.model == Some(Model::Pool)).count();
                    let lo = 2 * NCPUS;
                    let hi = pool_handlers.max(lo);
                    assert_eq!(intr.pool.set_size(n), n.clamp(lo, hi), "step {step}: pool size clamp");
                }
            }
            // Quiet: everything the model expects has run, and nothing more comes.
            let done = spin_until(5_000_000_000, || total(&runs) >= expected);
            assert!(done, "step {step} ({op:?}): {} handler runs, {expected} expected", total(&runs));
            let settle = HostMachine::now_ns() + 2_000_000;
            while HostMachine::now_ns() < settle {
                HostMachine::poll_interrupts();
            }
            assert_eq!(total(&runs), expected, "step {step} ({op:?}): extra handler runs");
        }
        drop(slots);
        (total(&runs), expected, strays)
    });
    assert_eq!(ran, expected);
    assert_eq!(sys.stray() - stray0, strays, "raises of vectors without a source");
}

/// The regression file, except under Miri, whose isolation has no file system (proptest would
/// stop at `getcwd`); a failure there still prints its minimal case.
fn persistence() -> Option<Box<dyn proptest::test_runner::FailurePersistence>> {
    if cfg!(miri) {
        None
    } else {
        ProptestConfig::default().failure_persistence
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(if cfg!(miri) { 2 } else { 16 }),
        failure_persistence: persistence(),
        ..ProptestConfig::default()
    })]

    #[test]
    fn sequences_match_the_reference_model(ops in proptest::collection::vec(op(), 1..30)) {
        run_sequence(ops);
    }
}
