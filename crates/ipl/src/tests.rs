//! Host tests of the SPL protocol on a one-CPU host machine (each test thread is its own CPU:
//! the level and the interrupt flag are thread-local).

extern crate std;

use std::cell::{Cell, RefCell};
use std::vec::Vec;

use super::*;

std::thread_local! {
    static LEVEL: Cell<u8> = const { Cell::new(0) };
    static PENDING: Cell<u32> = const { Cell::new(0) };
    static MTX: Cell<(u32, u8)> = const { Cell::new((0, 0)) };
    static INTR_ON: Cell<bool> = const { Cell::new(true) };
    static LOG: RefCell<Vec<(u8, u8)>> = const { RefCell::new(Vec::new()) };
    static PREEMPTS: Cell<u32> = const { Cell::new(0) };
}

struct OneCpu;

fn restore(on: bool) {
    INTR_ON.with(|f| f.set(on));
}

impl Machine for OneCpu {
    type Context = ();
    fn cpu_index() -> usize {
        0
    }
    fn ncpus() -> usize {
        1
    }
    fn curthread() -> *const () {
        core::ptr::null()
    }
    fn set_curthread(_t: *const (), _io: &IntrOff) {}
    fn sched_word() -> usize {
        0
    }
    fn set_sched_word(_v: usize, _io: &IntrOff) {}
    fn intr_depth() -> usize {
        0
    }
    fn intr_depth_enter() {}
    fn intr_depth_exit() -> usize {
        0
    }
    fn intr_disable() -> IntrOff {
        let was = INTR_ON.with(|f| f.replace(false));
        // SAFETY: the thread-local flag is this host CPU's interrupt flag, now cleared;
        // `restore` puts `was` back.
        unsafe { IntrOff::new_unchecked(was, restore) }
    }
    unsafe fn intr_enable() {
        restore(true);
    }
    fn intr_enabled() -> bool {
        INTR_ON.with(|f| f.get())
    }
    fn wait_for_interrupt(_io: &IntrOff) {}
    fn send_resched(_cpu: usize) {}
    fn now_ns() -> u64 {
        0
    }
    fn arm_timer(_deadline_ns: u64, _io: &IntrOff) {}
    fn new_context(_s: usize, _e: extern "C" fn(*const ()) -> !, _a: *const ()) {}
    fn empty_context() {}
    unsafe fn switch(_from: *mut (), _to: *const ()) {
        panic!("the SPL tests never switch threads");
    }
}

impl IplCpu for OneCpu {
    fn ipl_get() -> u8 {
        LEVEL.with(|l| l.get())
    }
    fn ipl_set(level: u8) {
        LEVEL.with(|l| l.set(level));
    }
    fn pending_get() -> u32 {
        PENDING.with(|p| p.get())
    }
    fn pending_or(bits: u32) {
        PENDING.with(|p| p.set(p.get() | bits));
    }
    fn pending_and(mask: u32) {
        PENDING.with(|p| p.set(p.get() & mask));
    }
    fn mtx_enter(old: u8) {
        MTX.with(|m| {
            let (n, o) = m.get();
            m.set((n + 1, if n == 0 { old } else { o }));
        });
    }
    fn mtx_exit() -> Option<u8> {
        MTX.with(|m| {
            let (n, o) = m.get();
            assert!(n > 0, "spin_exit without spin_enter");
            m.set((n - 1, o));
            (n == 1).then_some(o)
        })
    }
    fn mtx_state() -> (u32, u8) {
        MTX.with(|m| m.get())
    }
    fn set_mtx_state(count: u32, oldspl: u8) {
        MTX.with(|m| m.set((count, oldspl)));
    }
}

/// The environment of these tests: the replay and the deferred preemption are logged.
struct OneEnv;

impl SplEnv for OneEnv {
    type M = OneCpu;
    fn replay(vector: u8, _io: &IntrOff) {
        assert!(!OneCpu::intr_enabled(), "replay must run with interrupts disabled");
        LOG.with(|l| l.borrow_mut().push((vector, OneCpu::ipl_get())));
    }
    fn preempt() {
        assert_eq!(OneCpu::ipl_get(), 0);
        PREEMPTS.with(|p| p.set(p.get() + 1));
    }
}

/// A fresh SPL state (owned by the test: nothing leaks, so Miri's leak check stays on).
fn state() -> std::boxed::Box<SplState<OneEnv>> {
    let s = std::boxed::Box::new(SplState::new());
    s.set_vector_ipl(0x40, Some(Ipl::SoftNet));
    s.set_vector_ipl(0x41, Some(Ipl::SoftNet));
    s.set_vector_ipl(0x50, Some(Ipl::Vm));
    s.set_vector_ipl(0x60, Some(Ipl::Sched));
    s.set_vector_ipl(0xF2, None);
    s
}

fn log() -> Vec<(u8, u8)> {
    LOG.with(|l| l.take())
}

/// Simulates a hardware interrupt arriving now: returns whether the handler ran.
fn interrupt(s: &SplState<OneEnv>, vector: u8) -> bool {
    let io = OneCpu::intr_disable();
    match s.intr_arrive(vector, &io) {
        Arrival::Run { old } => {
            LOG.with(|l| l.borrow_mut().push((vector, OneCpu::ipl_get())));
            s.intr_done(old, &io);
            true
        }
        Arrival::Deferred => false,
    }
}

#[test]
fn levels_are_ordered_and_named() {
    for w in ALL.windows(2) {
        assert!(w[0] < w[1]);
    }
    assert_eq!(Ipl::from_u8(8), None);
    assert_eq!(Ipl::Vm.name(), "IPL_VM");
}

#[test]
fn nesting_restores_each_level() {
    let s = &*state();
    let a = s.splraise(Ipl::SoftNet);
    assert_eq!(s.current(), Ipl::SoftNet);
    let b = s.splraise(Ipl::Vm);
    let c = s.splraise(Ipl::SoftBio); // lower: no change
    assert_eq!(s.current(), Ipl::Vm);
    assert_eq!(c.ipl(), Ipl::Vm);
    s.splx(c);
    assert_eq!(s.current(), Ipl::Vm);
    s.splx(b);
    assert_eq!(s.current(), Ipl::SoftNet);
    s.splx(a);
    assert_eq!(s.current(), Ipl::None);
    {
        let _g = s.raise(Ipl::High);
        assert_eq!(s.current(), Ipl::High);
        let _h = s.raise(Ipl::Vm);
        assert_eq!(s.current(), Ipl::High);
    }
    assert_eq!(s.current(), Ipl::None);
}

#[test]
fn interrupts_at_or_below_the_level_are_deferred_and_replayed_highest_first() {
    let s = &*state();
    let outer = s.splraise(Ipl::SoftNet);
    let inner = s.splraise(Ipl::Vm);
    assert!(!interrupt(s, 0x40), "SOFTNET vector ran at IPL_VM");
    assert!(!interrupt(s, 0x50), "VM vector ran at IPL_VM");
    assert!(interrupt(s, 0x60), "SCHED vector deferred at IPL_VM");
    assert!(interrupt(s, 0xF2), "never-deferred vector deferred");
    assert_eq!(log(), [(0x60, Ipl::Sched as u8), (0xF2, Ipl::Vm as u8)]);
    assert!(s.is_pending(0x40) && s.is_pending(0x50));
    // Dropping to SOFTNET replays the VM vector only, at IPL_VM.
    s.splx(inner);
    assert_eq!(log(), [(0x50, Ipl::Vm as u8)]);
    assert!(s.is_pending(0x40) && !s.is_pending(0x50));
    assert!(!interrupt(s, 0x41));
    // Dropping to NONE replays both SOFTNET vectors, at IPL_SOFTNET.
    s.splx(outer);
    let mut l = log();
    l.sort();
    assert_eq!(l, [(0x40, Ipl::SoftNet as u8), (0x41, Ipl::SoftNet as u8)]);
    assert_eq!(s.current(), Ipl::None);
    assert!(OneCpu::intr_enabled(), "replay left interrupts disabled");
    assert_eq!(s.stats(0), SplStats { deferred: 3, replayed: 3, merged: 0 });
}

#[test]
fn a_deferred_vector_deferred_again_merges_into_one_replay() {
    let s = &*state();
    let saved = s.splraise(Ipl::Vm);
    assert!(!interrupt(s, 0x50));
    assert!(!interrupt(s, 0x50), "second arrival ran at IPL_VM");
    s.splx(saved);
    assert_eq!(log(), [(0x50, Ipl::Vm as u8)], "a merged arrival replayed twice");
    assert_eq!(s.stats(0), SplStats { deferred: 2, replayed: 1, merged: 1 });
}

#[test]
fn replay_order_is_by_level_not_arrival() {
    let s = &*state();
    let x = s.splraise(Ipl::High);
    for v in [0x40, 0x60, 0x50] {
        assert!(!interrupt(s, v));
    }
    s.splx(x);
    assert_eq!(log(), [(0x60, Ipl::Sched as u8), (0x50, Ipl::Vm as u8), (0x40, Ipl::SoftNet as u8)]);
}

#[test]
fn replay_level_runs_only_the_current_levels_vectors_and_keeps_the_level() {
    let s = &*state();
    s.set_vector_ipl(0x51, Some(Ipl::Vm));
    let x = s.splraise(Ipl::Vm);
    for v in [0x40, 0x50, 0x51] {
        assert!(!interrupt(s, v));
    }
    let io = OneCpu::intr_disable();
    assert_eq!(s.replay_level(&io), 2);
    assert_eq!(OneCpu::ipl_get(), Ipl::Vm as u8, "the level is kept");
    assert_eq!(log(), [(0x51, Ipl::Vm as u8), (0x50, Ipl::Vm as u8)], "highest first, at their level");
    assert_eq!(s.replay_level(&io), 0, "nothing left at this level");
    drop(io);
    s.splx(x);
    assert_eq!(log(), [(0x40, Ipl::SoftNet as u8)], "the lower level waits for the splx");
}

#[test]
fn a_vector_pending_twice_is_replayed_once() {
    let s = &*state();
    let x = s.splraise(Ipl::Vm);
    assert!(!interrupt(s, 0x40));
    assert!(!interrupt(s, 0x40));
    s.splx(x);
    assert_eq!(log(), [(0x40, Ipl::SoftNet as u8)]);
}

#[test]
fn preemption_waits_for_ipl_none() {
    let s = &*state();
    let a = s.splraise(Ipl::SoftClock);
    {
        let io = OneCpu::intr_disable();
        assert!(!s.may_preempt(&io));
    }
    let b = s.splraise(Ipl::Vm);
    s.splx(b);
    assert_eq!(PREEMPTS.with(|p| p.get()), 0, "preempted above IPL_NONE");
    s.splx(a);
    assert_eq!(PREEMPTS.with(|p| p.get()), 1);
    let io = OneCpu::intr_disable();
    assert!(s.may_preempt(&io));
}

#[test]
fn spin_mutex_levels_nest_and_restore_at_the_outermost_exit() {
    let s = &*state();
    s.spin_enter(Ipl::Vm);
    s.spin_enter(Ipl::Sched);
    assert_eq!(s.current(), Ipl::Sched);
    assert_eq!(s.spin_count(), 2);
    assert!(!interrupt(s, 0x50));
    // Release in acquisition order: the level stays up until the last one goes.
    s.spin_exit();
    assert_eq!(s.current(), Ipl::Sched);
    assert!(log().is_empty());
    s.spin_exit();
    assert_eq!(s.current(), Ipl::None);
    assert_eq!(log(), [(0x50, Ipl::Vm as u8)]);
    // Inside an outer splraise the saved level is the raised one.
    let x = s.splraise(Ipl::SoftNet);
    s.spin_enter(Ipl::Vm);
    s.spin_exit();
    assert_eq!(s.current(), Ipl::SoftNet);
    s.splx(x);
}

#[test]
fn posted_soft_interrupts_run_when_the_level_allows() {
    let s = &*state();
    s.set_vector_ipl(0xE2, Some(Ipl::SoftNet));
    // At IPL_NONE: runs at once, at its level.
    s.post(0xE2);
    assert_eq!(log(), [(0xE2, Ipl::SoftNet as u8)]);
    // Above it: waits for the splx.
    let x = s.splraise(Ipl::Vm);
    s.post(0xE2);
    assert!(log().is_empty());
    s.splx(x);
    assert_eq!(log(), [(0xE2, Ipl::SoftNet as u8)]);
    // Posted by an interrupt handler: runs at the interrupt's exit, still with interrupts off.
    let io = OneCpu::intr_disable();
    match s.intr_arrive(0x50, &io) {
        Arrival::Run { old } => {
            s.post(0xE2);
            assert!(log().is_empty(), "soft interrupt ran inside the hardware handler");
            s.intr_done(old, &io);
        }
        Arrival::Deferred => panic!("VM vector deferred at IPL_NONE"),
    }
    drop(io);
    assert_eq!(log(), [(0xE2, Ipl::SoftNet as u8)]);
}
