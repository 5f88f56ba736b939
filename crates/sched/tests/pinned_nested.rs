//! The pinned switch on the host machine, nested: a thread lends its CPU to interrupt thread A,
//! whose body lends the same CPU to interrupt thread B (as a soft interrupt's thread would be
//! interrupted by a hardware interrupt whose thread borrows the CPU in turn). Returns unwind
//! innermost first; a block of the inner thread resumes the outer one, still borrowing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use host_machine::{spin_until, Event, HostEnv, HostMachine, HostSystem, Sched};
use machine::{Machine, PinOutcome};
use sched::{PinThread, Priority};

/// What the bodies see and do; passed to them as `a0`.
struct Ctx {
    sched: &'static Sched,
    /// B's thread, for A's body to lend the CPU to.
    b: Mutex<Option<&'static PinThread<HostEnv>>>,
    /// B blocks on this when set.
    gate: Option<Event>,
    log: Mutex<Vec<String>>,
    b_done: AtomicBool,
}

fn me() -> usize {
    HostMachine::curthread() as usize
}

extern "C" fn body_a(ctx: usize, _: usize) {
    // SAFETY: `ctx` is the test's `Ctx`, alive until the test has seen both bodies finish.
    let ctx = unsafe { &*(ctx as *const Ctx) };
    let s = ctx.sched;
    let a = me();
    ctx.log.lock().unwrap().push(format!("a in: borrowing={}", s.borrowing()));
    let b = (*ctx.b.lock().unwrap()).expect("B");
    let r = {
        let io = HostMachine::intr_disable();
        s.pin_call(b, ctx as *const Ctx as usize, 0, &io).0
    };
    ctx.log.lock().unwrap().push(format!(
        "a after b: {r:?} borrowing={} me_again={} b_state_parked={}",
        s.borrowing(),
        me() == a,
        b.is_parked()
    ));
}

extern "C" fn body_b(ctx: usize, _: usize) {
    // SAFETY: as in `body_a`.
    let ctx = unsafe { &*(ctx as *const Ctx) };
    let s = ctx.sched;
    ctx.log.lock().unwrap().push(format!("b in: borrowing={}", s.borrowing()));
    if let Some(g) = &ctx.gate {
        g.wait(); // blocks: A, under B, goes on at once
        ctx.log.lock().unwrap().push(format!("b woken: borrowing={}", s.borrowing()));
    }
    ctx.b_done.store(true, Ordering::SeqCst);
    let b = (*ctx.b.lock().unwrap()).expect("B");
    if let Err(io) = s.pin_return(HostMachine::intr_disable()) {
        // It blocked: an ordinary thread now, it parks for good.
        s.pin_park(b.call(), &io);
    }
}

fn nested(block: bool) -> Vec<String> {
    let sys = HostSystem::boot(2);
    sys.run(move |sched| {
        sched.bind_current(Some(0));
        let a = sched.new_ithread("ithread/a", Priority::INTR_BASE, 0, 0, body_a);
        let b = sched.new_ithread("ithread/b", Priority::INTR_BASE, 0, 0, body_b);
        let ctx: &'static Ctx = Box::leak(Box::new(Ctx {
            sched,
            b: Mutex::new(Some(b)),
            gate: block.then(|| Event::new(sched)),
            log: Mutex::new(Vec::new()),
            b_done: AtomicBool::new(false),
        }));
        let main = me();
        let r = {
            let io = HostMachine::intr_disable();
            sched.pin_call(a, ctx as *const Ctx as usize, 0, &io).0
        };
        assert_eq!(r, PinOutcome::Returned, "A's body returned");
        assert_eq!(me(), main, "the pinned thread is current again");
        assert!(!sched.borrowing() && !sched.cpu_borrowed(0), "the CPU is still lent");
        assert!(a.is_parked());
        if let Some(g) = &ctx.gate {
            assert!(!ctx.b_done.load(Ordering::SeqCst), "B finished while blocked");
            g.set();
            assert!(spin_until(10_000_000_000, || b.is_parked() && ctx.b_done.load(Ordering::SeqCst)));
        } else {
            assert!(b.is_parked());
        }
        assert!(sched.cpu_stats(0).pin_switches >= 2, "two pinned calls counted");
        ctx.log.lock().unwrap().clone()
    })
}

#[test]
fn nested_borrows_return_innermost_first() {
    let log = nested(false);
    assert_eq!(
        log,
        [
            "a in: borrowing=true",
            "b in: borrowing=true",
            "a after b: Returned borrowing=true me_again=true b_state_parked=true",
        ]
    );
}

#[test]
fn an_inner_borrower_that_blocks_resumes_the_outer_one_still_borrowing() {
    let log = nested(true);
    assert_eq!(
        log,
        [
            "a in: borrowing=true",
            "b in: borrowing=true",
            "a after b: Blocked borrowing=true me_again=true b_state_parked=false",
            "b woken: borrowing=false",
        ]
    );
}
