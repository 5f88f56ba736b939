//! The pinned switch on the real machine, nested (`intr_pin_call` in entry.s): a thread lends
//! its CPU to interrupt thread A, whose body lends the same CPU to interrupt thread B — as a
//! soft interrupt's thread would be interrupted by a hardware interrupt whose thread borrows
//! the CPU in turn. Returns unwind innermost first; a block of the inner thread resumes the
//! outer one, still borrowing.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use arch::X86_64;
use ktest::{kassert, kassert_eq, ktest, TestResult};
use machine::{Machine, PinOutcome};
use sched::{PinThread, Priority};

use super::until;
use crate::locks::{KernelEnv, Mutex};
use crate::{Event, SCHED};

static B: Mutex<Option<Arc<PinThread<KernelEnv>>>> = Mutex::new_adaptive("test.pinned.b", None);
static LOG: Mutex<Vec<String>> = Mutex::new_adaptive("test.pinned.log", Vec::new());
static GATE: Event = Event::new(&SCHED);
static BLOCK: AtomicBool = AtomicBool::new(false);
static B_DONE: AtomicBool = AtomicBool::new(false);

fn log(s: String) {
    LOG.lock().push(s);
}

fn me() -> usize {
    X86_64::curthread() as usize
}

extern "C" fn body_a(_: usize, _: usize) {
    let a = me();
    log(format!("a in: borrowing={}", SCHED.borrowing()));
    let b = B.lock().clone().expect("B");
    let r = {
        let io = X86_64::intr_disable();
        SCHED.pin_call(&b, 0, 0, &io).0
    };
    log(format!(
        "a after b: {r:?} borrowing={} me_again={} b_parked={}",
        SCHED.borrowing(),
        me() == a,
        b.is_parked()
    ));
}

extern "C" fn body_b(_: usize, _: usize) {
    log(format!("b in: borrowing={}", SCHED.borrowing()));
    if BLOCK.load(Ordering::SeqCst) {
        GATE.wait(); // blocks: A, under B, goes on at once
        log(format!("b woken: borrowing={}", SCHED.borrowing()));
    }
    B_DONE.store(true, Ordering::SeqCst);
    if !SCHED.borrowing() {
        // It blocked: an ordinary thread now, it parks for good.
        let b = B.lock().clone().expect("B");
        let io = X86_64::intr_disable();
        SCHED.pin_park(b.call(), &io);
    }
}

fn nested(block: bool) -> Result<Vec<String>, String> {
    SCHED.bind_current(Some(0));
    BLOCK.store(block, Ordering::SeqCst);
    B_DONE.store(false, Ordering::SeqCst);
    LOG.lock().clear();
    let a = SCHED.new_ithread("ithread/test-a", Priority::INTR_BASE, 0, 0, body_a);
    let b = Arc::new(SCHED.new_ithread("ithread/test-b", Priority::INTR_BASE, 0, 0, body_b));
    *B.lock() = Some(b.clone());
    let main = me();
    let pins = SCHED.cpu_stats(0).pin_switches;
    let r = {
        let io = X86_64::intr_disable();
        SCHED.pin_call(&a, 0, 0, &io).0
    };
    kassert_eq!(r, PinOutcome::Returned, "A's body returned");
    kassert_eq!(me(), main, "the pinned thread is current again");
    kassert!(!SCHED.borrowing() && !SCHED.cpu_borrowed(0), "the CPU is still lent");
    kassert!(a.is_parked());
    if block {
        kassert!(!B_DONE.load(Ordering::SeqCst), "B finished while blocked");
        GATE.set();
        kassert!(until(2000, || b.is_parked() && B_DONE.load(Ordering::SeqCst)), "B did not finish and park");
    } else {
        kassert!(b.is_parked());
    }
    kassert!(SCHED.cpu_stats(0).pin_switches >= pins + 2, "two pinned calls counted");
    *B.lock() = None;
    SCHED.bind_current(None);
    // The two threads stay parked (an interrupt thread is never freed: its descriptor must
    // outlive every pinned call); they are small and this test runs once per boot.
    core::mem::forget(a);
    core::mem::forget(b);
    let out = LOG.lock().clone();
    Ok(out)
}

fn nested_borrows_return_innermost_first() -> TestResult {
    let log = nested(false)?;
    kassert_eq!(
        log,
        [
            "a in: borrowing=true",
            "b in: borrowing=true",
            "a after b: Returned borrowing=true me_again=true b_parked=true",
        ]
    );
    Ok(())
}
ktest!(T_NESTED, "pinned::nested::return_innermost_first", nested_borrows_return_innermost_first);

fn inner_block_resumes_outer_borrower() -> TestResult {
    let log = nested(true)?;
    kassert_eq!(
        log,
        [
            "a in: borrowing=true",
            "b in: borrowing=true",
            "a after b: Blocked borrowing=true me_again=true b_parked=false",
            "b woken: borrowing=false",
        ]
    );
    Ok(())
}
ktest!(T_NESTED_BLOCK, "pinned::nested::inner_block_resumes_outer", inner_block_resumes_outer_borrower);
