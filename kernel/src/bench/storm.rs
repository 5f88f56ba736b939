//! Storm benchmarks: the runs of the storm tests (`tests::storm`), timed in guest time (under
//! TCG `-icount` the kernel's nanoseconds are the instruction count's virtual time), one
//! record per model:
//!
//! * `storm.detect_ns` (unit `ns`): first stuck arrival → source throttled; samples: [`TRIALS`]
//!   stuck `edu` INTx runs and as many stuck `edu` MSI runs.
//! * `storm.recover_ns` (unit `ns`): cause removed → a completion served again, same runs.
//!   It is bounded by the backoff in force when the cause goes (it doubles at each relapse).
//! * `storm.false_positives` (unit `storms`): storms declared on the source of a legitimate
//!   flood, summed over [`TRIALS`] floods of [`FLOOD_NS`]: one sample, the total (`median`).
//! * `storm.legit_rate` (unit `interrupts_per_s`): each flood's rate, per guest second.
//!
//! The stuck runs and the floods are made once per boot, by the first of these benchmarks
//! the filter selects, and shared by the others.

use alloc::vec::Vec;

use arch::kprintln;
use intr::Model;
use kbench::{kbench, Bencher};

use super::figure_in;
use crate::locks::Mutex;
use crate::tests::storm::{flood_run, stuck_run, Stuck};

/// Trials per model (stuck runs of each kind; floods).
const TRIALS: usize = 3;
/// One flood's length, guest ns.
const FLOOD_NS: u64 = 50_000_000;

/// Per model: detect and recover samples, flood rates, storms during floods.
struct Figures {
    detect: [Vec<u64>; 4],
    recover: [Vec<u64>; 4],
    rates: [Vec<u64>; 4],
    false_positives: [u64; 4],
}

/// Measured by the first storm benchmark that runs (the runner runs them one at a time, on
/// the bench thread); `Some(None)` if the runs failed (they said why). Held only to take or
/// put the figures back, never while measuring.
static FIGURES: Mutex<Option<Option<Figures>>> = Mutex::new_adaptive("bench.storm.figures", None);

fn measure() -> Option<Figures> {
    let mut f = Figures {
        detect: Default::default(),
        recover: Default::default(),
        rates: Default::default(),
        false_positives: [0; 4],
    };
    for model in Model::ALL {
        let m = model as usize;
        for _ in 0..TRIALS {
            for stuck in [Stuck::Intx, Stuck::Msi] {
                match stuck_run(stuck, model, false) {
                    Ok(s) => {
                        f.detect[m].push(s.detect_ns);
                        f.recover[m].push(s.recover_ns);
                    }
                    Err(e) => {
                        kprintln!("bench: storm: {e}");
                        return None;
                    }
                }
            }
            match flood_run(model, FLOOD_NS) {
                Ok(r) => {
                    f.rates[m].push(r.rate());
                    f.false_positives[m] += r.storms;
                }
                Err(e) => {
                    kprintln!("bench: storm: {e}");
                    return None;
                }
            }
        }
    }
    Some(f)
}

/// Runs `print` on the figures, measuring them first if no storm benchmark has yet.
fn with_figures(print: impl Fn(&Figures)) {
    let cached = FIGURES.lock().take();
    let f = cached.unwrap_or_else(measure);
    if let Some(f) = &f {
        print(f);
    }
    *FIGURES.lock() = Some(f);
}

fn detect(_b: &mut Bencher) {
    with_figures(|f| {
        for model in Model::ALL {
            figure_in("storm.detect_ns", model.name(), "ns", &mut f.detect[model as usize].clone());
        }
    });
}
kbench!(B_STORM_DETECT, "storm.detect_ns", detect);

fn recover(_b: &mut Bencher) {
    with_figures(|f| {
        for model in Model::ALL {
            figure_in("storm.recover_ns", model.name(), "ns", &mut f.recover[model as usize].clone());
        }
    });
}
kbench!(B_STORM_RECOVER, "storm.recover_ns", recover);

fn false_positives(_b: &mut Bencher) {
    with_figures(|f| {
        for model in Model::ALL {
            let total = f.false_positives[model as usize];
            figure_in("storm.false_positives", model.name(), "storms", &mut [total]);
        }
    });
}
kbench!(B_STORM_FALSE_POSITIVES, "storm.false_positives", false_positives);

fn legit_rate(_b: &mut Bencher) {
    with_figures(|f| {
        for model in Model::ALL {
            figure_in(
                "storm.legit_rate",
                model.name(),
                "interrupts_per_s",
                &mut f.rates[model as usize].clone(),
            );
        }
    });
}
kbench!(B_STORM_LEGIT_RATE, "storm.legit_rate", legit_rate);
