//! The SPL fast path: `splraise` then `splx` with nothing pending.

use ipl::Ipl;
use kbench::{kbench, Bencher};

use crate::SPL;

/// `SPL.splx(SPL.splraise(Ipl::Vm))` from `IPL_NONE` with nothing pending: the raise is a
/// `%gs`-relative load (and store, the level being higher), the lower a store plus the check of
/// this CPU's pending word against `ABOVE[IPL_NONE]`. (A clock interrupt landing inside a
/// sample that asks for a reschedule leaves a pending preemption for that sample's `splx` to
/// replay — a p99 affair.)
fn raise_lower(b: &mut Bencher) {
    assert_eq!(SPL.current(), Ipl::None, "spl.raise_lower must start at IPL_NONE");
    b.iter(|| SPL.splx(SPL.splraise(Ipl::Vm)));
    assert_eq!(SPL.current(), Ipl::None, "spl.raise_lower left the level raised");
}
kbench!(B_SPL_RAISE_LOWER, "spl.raise_lower", raise_lower);
