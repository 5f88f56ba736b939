//! The in-kernel test suite: the tests registered with `ktest!` in this crate's modules,
//! run one after another on the `main` thread, each reported on serial (docs/PROTOCOL.md).

pub mod blk;
pub mod cmdline;
pub mod com;
pub mod edu;
pub mod flight;
pub mod intr;
pub mod lockcheck;
pub mod locks;
pub mod net;
pub mod pinned;
pub mod sched;
pub mod shell;
pub mod smp;
pub mod softint;
pub mod spl;
pub mod storm;

use arch::kprintln;
use ktest::{TestLine, TestResult};
use machine::Machine;

/// Tests whose names start with this need a device the default boot does not have (virtio
/// disk, NIC, host traffic): they fail without it, so they run only when the filter names
/// them (it starts with `dev::`), never in the default suite.
pub const DEVICE_PREFIX: &str = "dev::";

/// Whether test `name` runs under `filter` (see [`DEVICE_PREFIX`]).
pub fn selected(name: &str, filter: &str) -> bool {
    ktest::selected(name, filter) && (!name.starts_with(DEVICE_PREFIX) || filter.starts_with(DEVICE_PREFIX))
}

/// Runs every selected test; returns whether all passed.
pub fn run_all(filter: &str) -> bool {
    let (mut passed, mut failed) = (0, 0);
    for t in ktest::registry().iter().filter(|t| selected(t.name, filter)) {
        kprintln!("{}", TestLine::Begin(t.name));
        let t0 = arch::X86_64::now_ns();
        let result: TestResult = (t.run)();
        let ms = (arch::X86_64::now_ns() - t0) / 1_000_000;
        kprintln!("{}", TestLine::End { name: t.name, result: &result, ms });
        if result.is_ok() {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    kprintln!("{}", TestLine::Done { passed, failed });
    failed == 0
}

/// Nanoseconds now.
pub fn now_ns() -> u64 {
    arch::X86_64::now_ns()
}

/// Number of CPUs.
pub fn ncpus() -> usize {
    arch::X86_64::ncpus()
}

/// A timeout of `ms` milliseconds for one CPU, scaled with the CPU count: the tests' waits
/// are for events, and the timeout only bounds a hang; every vCPU beyond the second shares
/// the host's cores (QEMU's TCG threads), so each adds half of `ms`.
pub fn scaled_ms(ms: u64) -> u64 {
    ms + ms * (ncpus().saturating_sub(2) as u64) / 2
}

/// Waits (sleeping in short naps) until `cond` holds or the timeout passes; returns whether
/// it held. The timeout is `ms` milliseconds for up to two CPUs, scaled with the CPU count
/// beyond ([`scaled_ms`]): it only bounds a hang, and every vCPU shares the host's cores.
pub fn until(ms: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = now_ns() + scaled_ms(ms) * 1_000_000;
    while !cond() {
        if now_ns() > deadline {
            return false;
        }
        crate::SCHED.sleep_ns(200_000);
    }
    true
}
