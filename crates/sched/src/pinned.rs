//! # The pinned interrupt-thread switch: the protocol
//!
//! This is the one description of the pinned path (Andrew Doran's
//! interrupts as LWPs, tech-kern 2006–2007; illumos' interrupt threads). The machine's half is
//! [`PinSwitch`] (`intr_pin_call` in `arch/x86_64/src/entry.s`, and the host machine's in
//! `crates/host-machine`); the interrupt framework's half is `intr::pinned`. Both link here.
//!
//! * **Who.** An interrupt thread ([`Scheduler::new_ithread`]) is bound to a CPU and described
//!   by its [`PinCall`]: its state word (even parked, odd while a call is under way — it
//!   borrows a CPU, or blocked in its call and not parked yet; counted up at each change, so
//!   it counts the calls too), its stack top, its body and the level the CPU must be at. A CPU
//!   has one pinned-context slot (the frame of the innermost active pinned call, null when
//!   none is: the running thread borrows the CPU exactly when it is not null,
//!   [`PinSwitch::is_borrower`]).
//! * **Lend** ([`Scheduler::pin_call`], interrupts disabled, the CPU at the thread's level):
//!   the machine saves the running thread's callee-saved registers in a frame that
//!   [`Machine::switch`] can resume, together with the previous pinned context and the
//!   interrupt depth (the borrower runs at depth 0) and makes that frame the CPU's pinned
//!   context; the interrupt thread becomes the current thread and its own state; the machine switches to the
//!   top of its stack, enables interrupts and calls its body. No run queue, no thread state,
//!   no scheduler `current` changes: the interrupted thread stays pinned underneath. Interrupts
//!   at or below the level that arrive meanwhile are deferred by the SPL layer and replayed
//!   when the pinned context's level comes back.
//! * **Nesting.** The running thread may itself be a borrowing interrupt thread (a soft
//!   interrupt's thread interrupted by a hardware interrupt whose thread then borrows the
//!   CPU): the frame keeps the outer borrow's words, and every return or block puts them
//!   back, innermost first.
//! * **Return** (the fast path): the body disables interrupts and ends through
//!   [`Scheduler::pin_end`]: the machine finds that its thread still borrows the CPU, parks
//!   the state and restores the stack, the current thread, the borrower and the pinned
//!   context — on x86_64 in one assembly sequence that never comes back to the body (its
//!   stack is left as it is) — and `pin_call` answers [`PinOutcome::Returned`] (the state
//!   word counted the call, [`PinCall::calls`]). A body that has tested
//!   [`Scheduler::borrowing`] itself, with interrupts disabled and kept so, ends through
//!   [`Scheduler::pin_end_borrowing`], the same return without the second test (the
//!   framework's interrupt-thread body: one test decides both its handler accounting and the
//!   end), or through [`Scheduler::pin_end_borrowing_more`], the same answering
//!   [`PinOutcome::ReturnedMore`] (it queued work its caller is to look for). A body may instead decide with [`Scheduler::pin_return`] and return, interrupts
//!   still disabled; the machine then checks that again (a body that returns
//!   after it stopped borrowing is a panic naming the thread, not a jump through a frame that
//!   is gone) and does the same. The decision and the
//!   return must be one interrupt-disabled section because the borrower can be preempted
//!   ("Preempt" below) anywhere interrupts are enabled: decided with them enabled, a
//!   preemption in between resumed the thread underneath from the frame, and the body then
//!   returned into it a second time (the double fault of
//!   docs/logs/softint-borrow-preempt-double-fault-2026-12-06.txt; tests
//!   `intr::softint::borrower_preempted_anywhere`, `intr::pinned::borrower_preempted_anywhere`).
//! * **Block** (lazy, as NetBSD's `mi_switch` for a soft-interrupt LWP): only when the body
//!   blocks does the scheduler do the bookkeeping the fast path skipped
//!   (`schedule_borrowed`): the interrupt thread becomes an ordinary thread, `on_cpu` and
//!   BLOCKED, its state word left odd; the thread directly under it is resumed at once through
//!   the saved frame (`pin_call` answers [`PinOutcome::Blocked`], the machine puts the
//!   interrupt depth and pinned context back, and the scheduler finishes the switch). The
//!   interrupt thread is woken and scheduled like any thread, finishes its work at its
//!   waker's level and parks ([`Scheduler::pin_park`]: its state word even again); the next pinned call
//!   starts it afresh at its stack top.
//! * **Preempt** (the same lazy path): a borrower is not preempted by what it merely pinned
//!   or by its equals, but it does not keep the CPU from a more urgent thread either (a soft
//!   interrupt's thread draining a stream of input would otherwise hold its CPU for as long
//!   as the input lasts: docs/logs/torture-pinned-churn-lost-paths-2026-12-06.txt). It runs
//!   at interrupt depth 0 (the machine sets the lending interrupt's depth aside for the call,
//!   [`machine::Machine::intr_depth`]), so the exit
//!   of an interrupt nested in it and `preempt_check` are its preemption points, and the gate
//!   opens at its call's level with no spin mutex held. There, if a thread queued on the CPU
//!   — or the scheduler's current thread, pinned at the bottom — outranks it
//!   (`schedule_borrowed`), it becomes an ordinary *runnable* thread, queued, its state word
//!   left odd, and the thread under it resumes as for a block (`pin_call` answers
//!   [`PinOutcome::Blocked`]); the reschedule request stays set, so that context's own exit
//!   lets the scheduler choose. A tick sets the request when the pinned thread outranks the
//!   borrower. The borrower then finishes as after a block ([`crate::CpuStats::borrow_preempts`]
//!   counts these).
//! * **What the scheduler must know** is only whether a pinned call is active on the CPU (why
//!   that means the running thread borrows: a thread that stopped borrowing runs again only
//!   once every pinned call on its CPU has ended, since the borrower runs until it returns,
//!   blocks or is preempted, and each of those ends its call):
//!   [`Scheduler::is_running`] reports the borrower, not the threads under it (an interrupt
//!   thread must block on, not spin for, a lock a thread under it holds); `schedule` on a
//!   borrowed CPU takes the lazy path above or returns; [`Scheduler::in_interrupt`] is false
//!   for the borrower (it runs in thread context), and the sleep check allows it to block at
//!   its level with no spin mutex of its own.
//! * **Busy / Level**: if the thread is not parked, or the CPU is not at its level,
//!   `pin_call` does nothing and hands its two arguments back; the caller queues the work
//!   (`intr::pinned`), picks another thread, or takes its cold path.

use alloc::string::String;
use alloc::sync::Arc;
use core::sync::atomic::Ordering;

use machine::{IntrOff, Machine, PinCall, PinOutcome, PinSwitch};

use crate::thread::{BLOCKED, PARKED, RUNNING, SLEEPING};
use crate::{Priority, Reason, SchedEnv, Scheduler, Thread, STACK_SIZE};

/// An interrupt thread that borrows CPUs through [`Scheduler::pin_call`] (made by
/// [`Scheduler::new_ithread`]): the thread and its [`PinCall`] (state, stack top, body,
/// level). [`Scheduler::new_ithread`] leaks it: its address stays put for the machine, which
/// keeps the descriptor's address while a call is active, and its thread may outlive any
/// owner's borrow (it finishes a blocked call as an ordinary thread). The descriptor is its
/// first field (`#[repr(C)]`), so the thread's address is the descriptor's: the pinned
/// dispatch hands the machine the address it loaded, with no load of a field.
#[repr(C)]
pub struct PinThread<E: SchedEnv + 'static> {
    /// First: see above.
    call: PinCall,
    thread: Arc<Thread<E>>,
    /// The scheduler's state of the CPU it is bound to, the only CPU it is lent
    /// ([`Scheduler::pin_call`] checks that it is the running one, in debug builds).
    cpu: &'static crate::CpuSched<E>,
    /// The next interrupt thread bound to the same CPU (its list, `CpuSched::pin_threads`,
    /// which `cpu_stats` sums the calls of): set once, before the thread is published.
    next: *const PinThread<E>,
}

// SAFETY: `next` is written once before the descriptor is published (a release store of the
// list head) and only read after; the other fields are `Sync` themselves or the machine's.
unsafe impl<E: SchedEnv + 'static> Sync for PinThread<E> {}
// SAFETY: as above; a `PinThread` is leaked and never moved.
unsafe impl<E: SchedEnv + 'static> Send for PinThread<E> {}

impl<E: SchedEnv + 'static> PinThread<E> {
    /// The thread.
    pub fn thread(&self) -> &Arc<Thread<E>> {
        &self.thread
    }

    /// Its descriptor (state word included).
    pub fn call(&self) -> &PinCall {
        &self.call
    }

    /// Whether a pinned call may start on it now.
    pub fn is_parked(&self) -> bool {
        self.call.is_parked()
    }
}

impl<E: SchedEnv> Scheduler<E> {
    /// Creates an interrupt thread that [`Scheduler::pin_call`] lends CPUs to, bound to `cpu`
    /// and parked: never on a run queue unless a body blocks in it. Each pinned call runs
    /// `body(a0, a1)` on it, from the top of its stack, on a CPU at `level` (the `IplCpu`
    /// word's value of the level its work runs at). Leaked (never freed, never moved): a
    /// descriptor must outlive every pinned call, and its thread may go on after a call that
    /// blocked.
    pub fn new_ithread(
        &'static self,
        name: &str,
        pri: Priority,
        cpu: usize,
        level: u8,
        body: extern "C" fn(usize, usize),
    ) -> &'static PinThread<E> {
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
        let call = PinCall::new(Arc::as_ptr(&t) as *const (), stack_top, body, level as usize);
        let c = &self.cpus[cpu];
        let it = alloc::boxed::Box::leak(alloc::boxed::Box::new(PinThread {
            call,
            thread: t,
            cpu: c,
            next: core::ptr::null(),
        }));
        // Onto its CPU's list (push only: the descriptor is never freed).
        let it: *mut PinThread<E> = it;
        let mut head = c.pin_threads.load(Ordering::Acquire);
        loop {
            // SAFETY: `it` is the descriptor leaked above, not yet published: ours to write.
            unsafe { (*it).next = head };
            match c.pin_threads.compare_exchange(head, it, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(h) => head = h,
            }
        }
        // SAFETY: leaked: lives forever; shared from here on.
        unsafe { &*it }
    }

    /// **The pinned call** (NetBSD's fast soft interrupts, illumos' interrupt threads): if
    /// `it` is parked and this CPU at its level, lends it the CPU for one call of its body,
    /// `body(a0, a1)`, on its stack, with interrupts enabled, in thread context
    /// ([`Scheduler::in_interrupt`] is false for it). Only the stack, the current-thread
    /// pointer, the CPU's depth and pinned context and `it`'s state word change
    /// ([`PinSwitch::pin_call`]); the running thread — which may itself be a borrowing
    /// interrupt thread: borrows nest — stays underneath, not queued, not migratable, its run
    /// state untouched. The scheduler learns only that the CPU is borrowed
    /// (its pinned context, for [`Scheduler::is_running`] and the block path).
    ///
    /// [`PinOutcome::Returned`] when `body` returned: the fast path. [`PinOutcome::Busy`]:
    /// `it` was not parked; [`PinOutcome::Level`]: the CPU was not at its level — nothing
    /// done, `a0` and `a1` handed back (the second and third values). [`PinOutcome::Blocked`]:
    /// the thread blocked in `body`, or a more urgent thread preempted it (it is then queued,
    /// runnable, not asleep); the bookkeeping skipped here happened then, lazily
    /// (`schedule_borrowed`): the thread became an ordinary thread, the thread under it was
    /// resumed at once, and the thread finishes later and ends with [`Scheduler::pin_park`]
    /// (its body ends with [`Scheduler::pin_return`], which tells it whether it may return).
    ///
    /// Called with interrupts disabled on `it`'s CPU (the one [`Scheduler::new_ithread`]
    /// bound it to). The caller handles the SPL.
    #[inline(always)]
    pub fn pin_call(
        &'static self,
        it: &PinThread<E>,
        a0: usize,
        a1: usize,
        io: &IntrOff,
    ) -> (PinOutcome, usize, usize) {
        // `it` is lent only on its own CPU, this one.
        debug_assert!(core::ptr::eq(it.cpu, &self.cpus[E::M::cpu_index()]), "pin_call: another CPU's thread");
        self.pin_call_in::<false>(&it.call, a0, a1, io)
    }

    /// Whether this CPU is at `LEVEL` with no spin mutex held ([`PinSwitch::at_pin_level`]):
    /// the level test of [`Scheduler::pin_call`], for a caller whose threads' level is a
    /// constant. Interrupts disabled: the answer holds until they are enabled.
    #[inline(always)]
    pub fn at_pin_level<const LEVEL: usize>(&self, _io: &IntrOff) -> bool {
        E::M::at_pin_level::<LEVEL>()
    }

    /// [`Scheduler::pin_call`] after the caller's own level test
    /// ([`Scheduler::at_pin_level`] with the thread's level, under the same interrupt-disabled
    /// section as this call), given the thread's descriptor ([`PinThread::call`]): the machine
    /// does not test again, and the answer is never [`PinOutcome::Level`]. `call` may also be
    /// a [`PinCall::never_parked`] placeholder (the answer is then [`PinOutcome::Busy`]).
    ///
    /// # Safety
    /// This CPU is at the thread's level with no spin mutex held (tested, interrupts disabled
    /// since); `call` is the descriptor of a [`PinThread`] bound to this CPU, or a
    /// never-parked placeholder.
    #[inline(always)]
    pub unsafe fn pin_call_leveled(
        &'static self,
        call: &PinCall,
        a0: usize,
        a1: usize,
        io: &IntrOff,
    ) -> (PinOutcome, usize, usize) {
        self.pin_call_in::<true>(call, a0, a1, io)
    }

    /// [`Scheduler::pin_call`] (`LEVELED` false) and [`Scheduler::pin_call_leveled`], given
    /// the thread's descriptor.
    #[inline(always)]
    fn pin_call_in<const LEVELED: bool>(
        &'static self,
        call: &PinCall,
        a0: usize,
        a1: usize,
        _io: &IntrOff,
    ) -> (PinOutcome, usize, usize) {
        // The borrower runs in thread context: the machine sets the interrupt depth of the
        // context it pins aside for the call (0 for the borrower, so that the exit of an
        // interrupt nested in it and `preempt_check` are preemption points for it), puts it
        // back, and counts the call.
        // A thread whose state word is clear is PARKED: its stack is unused and no CPU runs it
        // (a thread that parks leaves its CPU before interrupts are enabled there again, and
        // it is bound to its CPU).
        // SAFETY: interrupts are disabled (the token); `call` is in a leaked `PinThread` (or
        // a never-parked placeholder), never moved or freed; its state is checked parked by
        // the machine; its body keeps the contract documented above.
        let r = if LEVELED {
            // SAFETY: as above, and the caller made the level test (`pin_call_leveled`).
            unsafe { E::M::pin_call_leveled(call, a0, a1) }
        } else {
            // SAFETY: as above.
            unsafe { E::M::pin_call(call, a0, a1) }
        };
        // This CPU still: the thread under the borrower never leaves it.
        if r.0 == PinOutcome::Blocked {
            self.finish_switch();
        }
        r
    }

    /// The pinned calls lent on CPU `c`: the sum of its interrupt threads' call counts (each
    /// thread's state word counts them, `PinCall::calls`; a snapshot).
    pub(crate) fn pin_calls_on(&self, c: &crate::CpuSched<E>) -> u64 {
        let mut n = 0;
        let mut p = c.pin_threads.load(Ordering::Acquire);
        while !p.is_null() {
            // SAFETY: the list holds leaked, never-freed descriptors, each linked before it
            // was published (the release half of `new_ithread`'s exchange).
            let it = unsafe { &*p };
            n += it.call.calls();
            p = it.next.cast_mut();
        }
        n
    }

    /// Whether the running thread runs on a CPU lent to it by [`Scheduler::pin_call`] (a
    /// thread is pinned under it). A running thread that does not borrow never starts to
    /// (only a parked one is lent a CPU), so `false` is stable; `true` is stable only while
    /// interrupts or preemption are disabled: a borrower stops borrowing when it blocks or
    /// is preempted (the module doc's "Preempt"). A body decides whether it may return with
    /// [`Scheduler::pin_return`], not with this.
    #[inline]
    pub fn borrowing(&self) -> bool {
        E::M::is_borrower()
    }

    /// The end of a pinned body: whether it may return into its pinned call. `Ok` if the
    /// running thread still borrows its CPU: the token is forgotten, so interrupts stay
    /// disabled and the body must return at once — the machine's return path resumes the
    /// frame underneath, and nothing may preempt the thread in between. `Err` with the token
    /// back if it blocked or was preempted during the call: it is an ordinary thread now,
    /// its frame consumed by the thread underneath; it finishes its work and parks
    /// ([`Scheduler::pin_park`]) and must never return.
    ///
    /// Why a token and not [`Scheduler::borrowing`]: with interrupts enabled, an interrupt
    /// between a `borrowing()` that answered `true` and the return could preempt the
    /// borrower, and the body would then return into a frame that is gone (a stack pointer
    /// of 0: a double fault, under torture, before this was the only way out;
    /// docs/logs/softint-borrow-preempt-double-fault-2026-12-06.txt). The machine checks the
    /// borrow on the way back and panics, naming the thread, if a body returns
    /// without it. [`Scheduler::pin_end`] is the same decision with the return done by the
    /// machine (the framework's bodies use it).
    #[inline(always)]
    pub fn pin_return(&self, io: IntrOff) -> Result<(), IntrOff> {
        if self.borrowing() {
            core::mem::forget(io);
            Ok(())
        } else {
            Err(io)
        }
    }

    /// [`Scheduler::pin_return`] with the return done by the machine ([`PinSwitch::pin_end`]):
    /// on x86_64 the borrower test and the switch back into the pinned call's frame are one
    /// interrupt-disabled assembly sequence, and `Ok` never comes back — the call ends there
    /// and the body's stack is left as it is (no epilogue, no second test). On the host `Ok`
    /// comes back and the body must return at once, as after `pin_return`. `Err` as there.
    ///
    /// # Safety
    /// This may not return: the caller's frames, up to the pinned body, are left without being
    /// unwound, and the stack is reused by the thread's next pinned call. Nothing in them may
    /// need dropping (no guard, no `Arc`, no pinned value, nothing registered elsewhere by
    /// address).
    #[inline(always)]
    pub unsafe fn pin_end(&self, io: IntrOff) -> Result<(), IntrOff> {
        // SAFETY: interrupts are disabled (the token); the caller holds nothing to drop (this
        // function's contract, above).
        if unsafe { E::M::pin_end() } {
            core::mem::forget(io);
            Ok(())
        } else {
            Err(io)
        }
    }

    /// [`Scheduler::pin_end`] for a body that has decided itself: `io` was taken before it
    /// found [`Scheduler::borrowing`] true, so the running thread still borrows the CPU and
    /// the call ends without a second test ([`PinSwitch::pin_end_borrowing`]): on x86_64
    /// this does not return; on the host the body must return at once, interrupts still
    /// disabled (the token is forgotten).
    ///
    /// # Safety
    /// As [`Scheduler::pin_end`]'s, and `borrowing()` answered `true` while `io` was held
    /// (interrupts have stayed disabled since the test).
    #[inline(always)]
    pub unsafe fn pin_end_borrowing(&self, io: IntrOff) {
        core::mem::forget(io);
        // SAFETY: interrupts are disabled (the token, forgotten: they stay so) and the thread
        // was found the borrower under it; the caller holds nothing to drop (the contract).
        unsafe { E::M::pin_end_borrowing() };
    }

    /// [`Scheduler::pin_end_borrowing`], and the call answers [`PinOutcome::ReturnedMore`]:
    /// the body has queued work its caller is to look for (the pinned model's `hwi_sched`
    /// requeue), so that a caller need not test for it after every [`PinOutcome::Returned`].
    ///
    /// # Safety
    /// As [`Scheduler::pin_end_borrowing`]'s.
    #[inline(always)]
    pub unsafe fn pin_end_borrowing_more(&self, io: IntrOff) {
        core::mem::forget(io);
        // SAFETY: as in `pin_end_borrowing` (this function's contract is the same).
        unsafe { E::M::pin_end_borrowing_more() };
    }

    /// The level ([`PinCall::level`]) of the pinned call the running thread borrows its CPU
    /// through, or `None` if it does not borrow it: the sleep check lets a borrowing thread
    /// block at that level only (an interrupt thread at `IPL_VM`, a soft interrupt's at its
    /// soft level).
    #[inline]
    pub fn borrow_level(&self) -> Option<usize> {
        if !self.borrowing() {
            return None;
        }
        // SAFETY: the running thread borrows the CPU, so a pinned call is active and the
        // innermost one is its own (borrows nest innermost first); its descriptor lives as
        // long as the thread.
        Some(unsafe { (*E::M::pinned_call()).level })
    }

    /// Whether `cpu` is lent to an interrupt thread right now (for `ps`).
    pub fn cpu_borrowed(&self, cpu: usize) -> bool {
        E::M::borrower_of(cpu) != 0
    }

    /// Ends the work of an interrupt thread that blocked during its pinned call (and so is an
    /// ordinary thread now, [`Scheduler::borrowing`] false): it leaves the CPU for good,
    /// PARKED, its state word parked, and the next [`Scheduler::pin_call`] starts it afresh at
    /// the top of its stack. `call` is its own descriptor. Interrupts disabled: nothing can
    /// lend it a CPU before it has left this one.
    pub fn pin_park(&'static self, call: &PinCall, io: &IntrOff) -> ! {
        assert!(core::ptr::eq(call.thread, E::M::curthread()), "pin_park with another thread's descriptor");
        self.current().state.store(PARKED, Ordering::SeqCst);
        // Odd (a call under way) since its call began: even again, parked.
        call.state.fetch_add(1, Ordering::Release);
        E::M::pin_parking();
        self.schedule(Reason::Park, io);
        unreachable!("a parked interrupt thread was switched back in");
    }

    /// `schedule` on a CPU lent to an interrupt thread (the running thread is that thread;
    /// the scheduler's current thread is the one at the bottom of the borrows). A yield
    /// returns. If it blocks, the bookkeeping `pin_call` skipped happens here, as NetBSD's
    /// `mi_switch` does for a blocking soft-interrupt LWP: it becomes an ordinary thread
    /// (`on_cpu`, BLOCKED, its state word left odd), the thread under it is resumed at once
    /// through the context `PinSwitch::pin_call` saved (it never left the CPU: no run queue),
    /// and the interrupt thread sleeps like any thread; a wakeup queues it on its CPU. A
    /// preemption takes the same path only if a queued thread, or the pinned thread at the
    /// bottom, outranks it, and leaves it runnable in this CPU's run queue instead of asleep
    /// (the module doc's "Preempt").
    #[cold]
    pub(crate) fn schedule_borrowed(&'static self, reason: Reason, io: &IntrOff) {
        match reason {
            Reason::Yield => return,
            Reason::Exit | Reason::Park => {
                panic!("thread {} left its CPU with a thread pinned under it", self.current().name)
            }
            Reason::Block | Reason::Preempt => {}
        }
        let cpu = E::M::cpu_index();
        let c = &self.cpus[cpu];
        let it = self.current_arc();
        // Carried across the switch; the pinned thread's `finish_switch` releases it.
        c.rq.raw_lock();
        if reason == Reason::Preempt {
            // Preempted only by something more urgent than itself: a thread queued here, or
            // the scheduler's current thread, pinned at the bottom (a soft interrupt lent the
            // CPU of an interrupt thread). The flag stays set for the context underneath.
            // SAFETY: we hold our run-queue lock (raw) and create no guard while using it.
            let top = unsafe { c.rq.get_locked() }.highest().map_or(0, |p| p.get());
            let mine = it.pri.load(Ordering::Relaxed);
            if top <= mine && c.cur_pri.load(Ordering::Relaxed) <= mine {
                c.rq.raw_unlock();
                return;
            }
        }
        it.on_cpu.store(true, Ordering::Relaxed);
        it.cpu.store(cpu, Ordering::Relaxed);
        if reason == Reason::Preempt {
            // Runnable, queued behind the more urgent one: the thread underneath resumes now
            // and its interrupt's exit (the flag is still set) lets the scheduler choose.
            it.state.store(RUNNING, Ordering::SeqCst);
            c.borrow_preempts.fetch_add(1, Ordering::Relaxed);
            // SAFETY: as above (our run-queue lock, no guard).
            let rq = unsafe { c.rq.get_locked() };
            rq.push_back(it.clone());
            c.nqueued.store(rq.len(), Ordering::Relaxed);
        } else if it.state.compare_exchange(SLEEPING, BLOCKED, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            // Woken before it slept: go on borrowing.
            it.on_cpu.store(false, Ordering::Relaxed);
            c.rq.raw_unlock();
            return;
        }
        // SAFETY: this CPU, interrupts disabled (the token).
        let local = unsafe { c.local() };
        // The call's state word stays odd (a call under way) until the thread parks.
        c.switches.fetch_add(1, Ordering::Relaxed);
        // The pinned call's off-CPU mark, taken lazily (`Thread::borrow_off_mark_ns`); then
        // its run time up to here (`off_cpu_ns` differences stay right across the block).
        it.borrow_off_ns.store(it.off_cpu_ns(), Ordering::Relaxed);
        let now = E::M::now_ns();
        let ran = now.saturating_sub(it.last_on_ns.load(Ordering::Relaxed));
        it.run_ns.store(it.run_ns.load(Ordering::Relaxed) + ran, Ordering::Relaxed);
        if reason == Reason::Block {
            trace::emit::<E::M>(trace::Kind::Block, 0);
        }
        trace::emit::<E::M>(trace::Kind::Switch, E::M::pinned_thread() as u64);
        let from = it.ctx.get();
        // The thread directly under us runs next: the scheduler's current thread, or — with
        // nested borrows — an interrupt thread that borrows the CPU itself (the machine puts
        // the outer call's pinned context back). The scheduler's current thread does not
        // change.
        E::M::set_curthread(E::M::pinned_thread(), io);
        local.prev = Arc::as_ptr(&it);
        local.prev_ref = Some(it);
        local.prev_migrate_to = None;
        // `from` stays alive in `local.prev_ref` until the pinned thread's `finish_switch`; we hold
        // our run-queue lock, so no CPU picks the interrupt thread before its registers are
        // saved (`on_cpu` guards that too).
        // SAFETY: interrupts are disabled; `from` is the running (interrupt) thread's context;
        // we borrow the CPU, and the thread under us — saved by `PinSwitch::pin_call` here,
        // never queued — is the current thread already.
        unsafe { E::M::pin_switch_under(from) };
        // Woken and picked by `schedule` on this CPU: an ordinary thread from here on.
        self.finish_switch();
    }
}
