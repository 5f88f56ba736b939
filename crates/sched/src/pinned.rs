//! # The pinned interrupt-thread switch: the protocol
//!
//! This is the one description of the pinned path (Andrew Doran's
//! interrupts as LWPs, tech-kern 2006–2007; illumos' interrupt threads). The machine's half is
//! [`PinSwitch`] (`intr_pin_call` in `arch/x86_64/src/entry.s`, and the host machine's in
//! `crates/host-machine`); the interrupt framework's half is `intr::pinned`. Both link here.
//!
//! * **Who.** Each CPU has one installed interrupt thread ([`Scheduler::new_ithread`],
//!   [`Scheduler::pin_install`]), bound to it. Its state is the CPU's [`PinSlots::busy`] word:
//!   0 parked (free), [`PinSlots::BLOCKED`] blocked (an ordinary thread until it parks), or
//!   the thread's address while it **borrows** the CPU.
//! * **Lend** ([`Scheduler::pin_call`], interrupt context, interrupts disabled, the CPU at
//!   `IPL_VM`): the machine saves the interrupted thread's callee-saved registers in a frame
//!   that [`Machine::switch`] can resume, keeps its address in the CPU's pinned-context slot,
//!   makes the interrupt thread the current thread and `busy`, switches to the top of its
//!   stack, enables interrupts and calls its body. No run queue, no thread state, no
//!   `current` changes: the interrupted thread stays pinned underneath, the scheduler's
//!   current thread. Interrupts at or below `IPL_VM` that arrive meanwhile are deferred by the
//!   SPL layer (the CPU stays at `IPL_VM`) and replayed when the pinned context's level comes
//!   back.
//! * **Return** (the fast path): the body returns; the machine disables interrupts, restores
//!   the stack and the current-thread pointer, clears `busy`; `pin_call` answers
//!   [`PinOutcome::Returned`] and counts the switch.
//! * **Block** (lazy, as NetBSD's `mi_switch` for a soft-interrupt LWP): only when the body
//!   blocks does the scheduler do the bookkeeping the fast path skipped
//!   (`schedule_borrowed`): the interrupt thread becomes the CPU's current thread, `on_cpu`
//!   and BLOCKED; `busy` becomes `BLOCKED`; the pinned thread is resumed at once through the
//!   saved frame (`pin_call` answers [`PinOutcome::Blocked`] and finishes the switch). The
//!   interrupt thread is woken and scheduled like any thread, finishes its work at its
//!   waker's level, clears `busy` and parks for good ([`Scheduler::pin_park`]); the next
//!   interrupt starts it afresh at its stack top.
//! * **What the scheduler must know** is only the per-CPU `busy` word:
//!   [`Scheduler::is_running`] reports the borrowing thread, not the pinned one (an interrupt
//!   thread must block on, not spin for, a lock its pinned thread holds); `schedule` on a
//!   borrowed CPU never preempts; [`Scheduler::in_interrupt`] is false for the borrowing
//!   thread (it runs in thread context), and the sleep check allows it to block at `IPL_VM`
//!   with no spin mutex of its own.
//! * **Busy / Level**: if the CPU's thread is not parked, or the CPU is not at `IPL_VM`,
//!   `pin_call` does nothing and hands its two arguments back; the caller queues the work
//!   (intr::pinned) or takes its cold path.
//!
//! One borrow at a time per CPU: the busy word is per CPU and the saved context is one slot.
//! A second interrupt thread cannot borrow on top of the first (it is deferred at `IPL_VM`).

use alloc::string::String;
use alloc::sync::Arc;
use core::sync::atomic::Ordering;

use machine::{IntrOff, Machine, PinCall, PinOutcome, PinSlots, PinSwitch};

use crate::thread::{BLOCKED, PARKED, SLEEPING};
use crate::{Priority, Reason, SchedEnv, Scheduler, Thread, STACK_SIZE};

/// An interrupt thread that borrows CPUs through [`Scheduler::pin_call`] (made by
/// [`Scheduler::new_ithread`]): the thread, its address and the top of its stack, which every
/// pinned call starts from.
pub struct PinThread<E: SchedEnv> {
    thread: Arc<Thread<E>>,
    call: PinCall,
}

impl<E: SchedEnv> PinThread<E> {
    /// The thread.
    pub fn thread(&self) -> &Arc<Thread<E>> {
        &self.thread
    }
}

impl<E: SchedEnv> Scheduler<E> {
    /// Creates the interrupt thread for `cpu` that [`Scheduler::pin_call`] lends that CPU to
    /// (the pinned model). It is bound to `cpu`, PARKED, and never on a run queue unless a
    /// handler blocks in it. Each pinned call runs `body(a0, a1)` on it, once it is
    /// installed ([`Scheduler::pin_install`]; see [`Scheduler::pin_call`]).
    pub fn new_ithread(
        &'static self,
        name: &str,
        pri: Priority,
        cpu: usize,
        body: extern "C" fn(usize, usize),
    ) -> PinThread<E> {
        assert!(self.cpu_online(cpu), "new_ithread({name}): CPU {cpu} is not online");
        let words = STACK_SIZE / 8;
        let mut stack = alloc::vec![0u64; words].into_boxed_slice();
        let stack_top = (stack.as_mut_ptr() as usize + words * 8) & !0xF;
        let t = Arc::new(self.new_thread(
            String::from(name),
            pri,
            Some(cpu),
            false,
            Some(stack),
            E::M::empty_context(),
        ));
        t.state.store(PARKED, Ordering::Relaxed);
        self.live_threads.fetch_add(1, Ordering::Relaxed);
        let io = E::M::intr_disable();
        self.register(&t, &io);
        drop(io);
        PinThread { call: PinCall { thread: Arc::as_ptr(&t) as *const (), stack_top, body }, thread: t }
    }

    /// Installs `it` as CPU `cpu`'s interrupt thread for [`Scheduler::pin_call`] (its
    /// [`PinSlots`]) and marks it free: from then on an interrupt on `cpu` may lend
    /// it the CPU. Once per CPU; `it` must outlive every pinned call (it is never dropped).
    pub fn pin_install(&self, cpu: usize, it: &PinThread<E>) {
        let p = E::M::pin_slots(cpu).expect("pin_install: the CPU has no pinned-switch slots");
        p.thread.store(it.call.thread as *mut (), Ordering::Relaxed);
        p.stack_top.store(it.call.stack_top, Ordering::Relaxed);
        p.body.store(it.call.body as *mut (), Ordering::Relaxed);
        p.busy.store(0, Ordering::Release);
    }

    /// **The pinned call** (NetBSD's fast soft interrupts, illumos'
    /// interrupt threads): if this CPU's interrupt thread ([`Scheduler::pin_install`]) is
    /// parked and the CPU at `IPL_VM`, lends it the CPU for one call of its body,
    /// `body(a0, a1)`, on its stack,
    /// with interrupts enabled, in thread context ([`Scheduler::in_interrupt`] is false for
    /// it). Only the stack, the current-thread pointer and the CPU's pinned-switch words
    /// change ([`PinSwitch::pin_call`]); the running thread stays this CPU's current thread for
    /// the scheduler, pinned underneath — not queued, not migratable, its run state
    /// untouched. The scheduler learns only that the CPU is borrowed
    /// ([`machine::PinSlots::busy`], for [`Scheduler::is_running`] and the block path).
    ///
    /// [`PinOutcome::Returned`] when `body` returned: the fast path. [`PinOutcome::Busy`]:
    /// the thread was not parked; [`PinOutcome::Level`]: the CPU was not at `IPL_VM` — nothing
    /// done, `a0` and `a1` handed back (the second and third values; see [`PinSwitch::pin_call`]). [`PinOutcome::Blocked`]: the thread blocked
    /// in `body`; the bookkeeping skipped here happened then, lazily (`schedule_borrowed`):
    /// the thread became an ordinary thread, the pinned thread was resumed at once, and the
    /// thread finishes later, clears its `busy` word and ends with [`Scheduler::pin_park`]
    /// (its body must check [`Scheduler::borrowing`] before returning).
    ///
    /// Called from interrupt context on this CPU with interrupts disabled, no other pinned
    /// call active on it. The caller handles the SPL.
    #[inline(always)]
    pub fn pin_call(&'static self, a0: usize, a1: usize, _io: &IntrOff) -> (PinOutcome, usize, usize) {
        // The interrupt depth is left as it is: `in_interrupt` consults `busy` instead.
        // A thread whose `busy` word is clear is PARKED: its stack is unused and no CPU runs it
        // (a thread that parks leaves its CPU before interrupts are enabled there again, and
        // it is bound to this CPU).
        // SAFETY: interrupts are disabled (the proof), no other pinned call is active here
        // (the caller's promise), the installed thread is free when `busy` is clear (above),
        // its body keeps the contract documented above.
        let r = unsafe { E::M::pin_call(a0, a1) };
        if matches!(r.0, PinOutcome::Returned | PinOutcome::Blocked) {
            self.pin_done(r.0);
        }
        r
    }

    /// [`Scheduler::pin_call`]'s return side: count the switch (this CPU, interrupts disabled:
    /// no locked add; counted here, not on the way in, where it would add to the latency) and,
    /// if the thread blocked, finish that switch.
    #[inline(always)]
    pub(crate) fn pin_done(&'static self, r: PinOutcome) {
        let c = self.this_cpu();
        c.pin_switches.store(c.pin_switches.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        if r == PinOutcome::Blocked {
            self.finish_switch();
        }
    }

    /// Whether the running thread runs on a CPU lent to it by [`Scheduler::pin_call`] (a
    /// thread is pinned under it). Needs no interrupt-disabled section: a borrowing thread
    /// is neither preempted nor migrated, and a running thread that does not borrow never
    /// starts to (only a parked one is lent a CPU).
    #[inline]
    pub fn borrowing(&self) -> bool {
        E::M::pin_borrowed() == E::M::curthread() as usize
    }

    /// Whether `cpu` is lent to an interrupt thread right now (for `ps`).
    pub fn cpu_borrowed(&self, cpu: usize) -> bool {
        E::M::pin_slots(cpu).is_some_and(|p| p.borrowed() != 0)
    }

    /// Ends the work of an interrupt thread that blocked during its pinned call (and so is an
    /// ordinary thread now, [`Scheduler::borrowing`] false): it leaves the CPU for good,
    /// PARKED, and the next [`Scheduler::pin_call`] starts it afresh at the top of its stack.
    /// Interrupts disabled.
    pub fn pin_park(&'static self, io: &IntrOff) -> ! {
        self.current().state.store(PARKED, Ordering::SeqCst);
        self.schedule(Reason::Park, io);
        unreachable!("a parked interrupt thread was switched back in");
    }

    /// `schedule` on a CPU lent to an interrupt thread (the running thread is that thread;
    /// the scheduler's current thread is the one pinned under it). The interrupt thread is not
    /// preempted: it gives the CPU back soon. If it blocks, the bookkeeping `pin_call`
    /// skipped happens here, as NetBSD's `mi_switch` does for a blocking soft-interrupt LWP:
    /// it becomes this CPU's current thread, the pinned thread is released and resumed at
    /// once through the context `E::M::pin_call` saved (it never left the CPU: no run queue),
    /// and the interrupt thread sleeps like any thread; a wakeup queues it on its CPU.
    #[cold]
    pub(crate) fn schedule_borrowed(&'static self, reason: Reason, io: &IntrOff) {
        match reason {
            Reason::Preempt | Reason::Yield => return,
            Reason::Exit | Reason::Park => {
                panic!("thread {} left its CPU with a thread pinned under it", self.current().name)
            }
            Reason::Block => {}
        }
        let cpu = E::M::cpu_index();
        let c = &self.cpus[cpu];
        let it = self.current_arc();
        // Carried across the switch; the pinned thread's `finish_switch` releases it.
        c.rq.raw_lock();
        it.on_cpu.store(true, Ordering::Relaxed);
        it.cpu.store(cpu, Ordering::Relaxed);
        if it.state.compare_exchange(SLEEPING, BLOCKED, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            // Woken before it slept: go on borrowing.
            it.on_cpu.store(false, Ordering::Relaxed);
            c.rq.raw_unlock();
            return;
        }
        // SAFETY: this CPU, interrupts disabled (the proof).
        let local = unsafe { c.local() };
        let pinned = local.current.take().expect("schedule before init_cpu");
        let slots = E::M::pin_slots(cpu).expect("borrowed CPU without pinned-switch slots");
        slots.busy.store(PinSlots::BLOCKED, Ordering::Relaxed);
        c.switches.fetch_add(1, Ordering::Relaxed);
        it.last_on_ns.store(E::M::now_ns(), Ordering::Relaxed);
        let from = it.ctx.get();
        let to = E::M::pinned_context();
        E::M::set_curthread(Arc::as_ptr(&pinned) as *const (), io);
        local.current = Some(pinned);
        local.prev = Some(it);
        local.prev_migrate_to = None;
        // `from` stays alive in `local.prev` until the pinned thread's `finish_switch`; we hold
        // our run-queue lock, so no CPU picks the interrupt thread before its registers are
        // saved (`on_cpu` guards that too).
        // SAFETY: interrupts are disabled; `from` is the running (interrupt) thread's context;
        // `to` is the pinned thread's, saved by `E::M::pin_call` here and never queued.
        unsafe { E::M::switch(from, to) };
        // Woken and picked by `schedule` on this CPU: an ordinary thread from here on.
        self.finish_switch();
    }
}
