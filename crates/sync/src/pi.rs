//! Turnstile objects and priority inheritance, intrusive and allocation-free.
//!
//! This is the core of [`crate::turnstile`], kept apart from the scheduler so that it can be
//! property-tested with plain test threads (`tests/pi_proptest.rs`): it knows threads only
//! through [`PiThread`] (base and effective priority, and the [`TsLinks`] each thread carries).
//!
//! ## Objects (Solaris / FreeBSD)
//! * Every thread brings one [`Turnstile`], allocated with the thread ([`TsLinks::default`])
//!   and held in its hand (`TsLinks::ts`). The first thread to block on a lock lends its
//!   turnstile to the lock: it is hashed into the lock's chain and records the lock, its
//!   owner and the queue of waiters. Every later blocker puts its own turnstile on that
//!   turnstile's free list. A waiter that leaves the queue (granted the lock, or giving up)
//!   takes one back: from the free list, or the active turnstile itself when it was the last
//!   waiter (the turnstile is then unhashed). So a lock with `n` waiters holds `n` turnstiles,
//!   and every running thread holds exactly one: nothing is allocated or freed here.
//! * Priority inheritance is carried by intrusive lists, not a book: a thread's *contested*
//!   list holds the turnstiles of the locks it owns that have waiters (FreeBSD's
//!   `td_contested`); a blocked thread points at the turnstile it waits on (`td_blocked`); a
//!   turnstile points at its lock's owner (null while readers hold it). A thread's effective
//!   priority is the maximum of its base priority and the effective priorities of the waiters
//!   of every turnstile on its contested list ([`recompute`]). A change is carried to the
//!   owner of the lock the thread waits on, and so on along the chain, bounded by
//!   [`MAX_CHAIN`]; [`block`] refuses, with the cycle ([`Deadlock`]), a wait that would close
//!   a cycle of owners.
//! * A release withdraws exactly the loans that came through the released lock: the
//!   turnstile leaves the old owner's contested list and the old owner's priority is
//!   recomputed from what remains (no "saved priority per lock", the classic bug that restores
//!   a priority still owed through another lock). If the lock is handed to a waiter and other
//!   waiters remain, the turnstile joins the heir's contested list: they lend to the heir.
//!
//! ## Locking (the caller's, see `turnstile.rs`)
//! Every function here runs with the chain lock of the turnstile's lock *and* the PI lock
//! held (FreeBSD's `td_contested_lock`): queues, `blocked_on`, owners and contested lists
//! change only under both, so they may be read under either; hash-chain membership and the
//! free lists change under the chain lock. Effective priorities are set through
//! [`PiThread::set_eff_pri`] (the scheduler's `set_priority`, which takes run-queue locks:
//! chain lock → PI lock → run-queue lock).

use core::cell::Cell;
use core::ptr;
use core::sync::atomic::{AtomicBool, Ordering};

use alloc::boxed::Box;

/// Longest owner chain followed when lending, and when looking for a deadlock.
pub const MAX_CHAIN: usize = 32;

/// A thread as priority inheritance sees it.
pub trait PiThread: Sized + 'static {
    /// Its turnstile links.
    fn links(&self) -> &TsLinks<Self>;
    /// Its base priority.
    fn base_pri(&self) -> u8;
    /// Its effective priority.
    fn eff_pri(&self) -> u8;
    /// Sets its effective priority (requeues it, asks its CPU to reschedule: the scheduler's
    /// `set_priority`).
    fn set_eff_pri(&self, pri: u8);
}

/// One turnstile: while lent to a lock, the lock's waiters and its owner.
pub struct Turnstile<T> {
    /// The lock it serves; 0 while in a thread's hand or on a free list.
    lock: Cell<usize>,
    /// The owner (the writer), null while readers hold the lock.
    owner: Cell<*const T>,
    /// Waiters, first come first (linked through `TsLinks::next`).
    head: Cell<*const T>,
    tail: Cell<*const T>,
    waiters: Cell<u32>,
    writers: Cell<u32>,
    /// Next turnstile in the hash chain.
    chain_next: Cell<*mut Turnstile<T>>,
    /// Spare turnstiles brought by the second and later waiters.
    free: Cell<*mut Turnstile<T>>,
    /// Next turnstile in the owner's contested list.
    contested_next: Cell<*mut Turnstile<T>>,
}

impl<T> Turnstile<T> {
    const fn new() -> Self {
        Turnstile {
            lock: Cell::new(0),
            owner: Cell::new(ptr::null()),
            head: Cell::new(ptr::null()),
            tail: Cell::new(ptr::null()),
            waiters: Cell::new(0),
            writers: Cell::new(0),
            chain_next: Cell::new(ptr::null_mut()),
            free: Cell::new(ptr::null_mut()),
            contested_next: Cell::new(ptr::null_mut()),
        }
    }

    /// The lock it serves.
    pub fn lock(&self) -> usize {
        self.lock.get()
    }

    /// The owner, if a writer owns the lock.
    pub fn owner(&self) -> Option<&T> {
        // SAFETY: an owner recorded in an active turnstile cannot exit before it releases the
        // lock, which removes it from here under the locks the caller holds (module doc).
        unsafe { self.owner.get().as_ref() }
    }

    /// Number of waiters.
    pub fn waiters(&self) -> usize {
        self.waiters.get() as usize
    }

    /// Whether a writer (or a mutex waiter) waits.
    pub fn writer_waiting(&self) -> bool {
        self.writers.get() != 0
    }

    /// The waiters, first come first.
    pub fn for_each_waiter(&self, mut f: impl FnMut(&T))
    where
        T: PiThread,
    {
        let mut w = self.head.get();
        // SAFETY: queued threads are alive (blocked) and linked under the caller's locks.
        while let Some(t) = unsafe { w.as_ref() } {
            f(t);
            w = t.links().next.get();
        }
    }

    /// The highest effective priority among the waiters (0 if none).
    fn top_pri(&self) -> u8
    where
        T: PiThread,
    {
        let mut p = 0;
        self.for_each_waiter(|t| p = p.max(t.eff_pri()));
        p
    }
}

/// What every thread carries for the turnstiles ([`sched::SchedEnv::ThreadExt`]).
pub struct TsLinks<T> {
    /// The turnstile in this thread's hand (owned; null while it waits: lent or donated).
    ts: Cell<*mut Turnstile<T>>,
    /// The turnstile it waits on.
    blocked_on: Cell<*mut Turnstile<T>>,
    /// Next waiter in the queue (or in a releaser's list of threads to wake).
    next: Cell<*const T>,
    /// Waits as a writer (or on a mutex) rather than as a reader.
    writer: Cell<bool>,
    /// Head of the contested list: turnstiles of the locks it owns that have waiters.
    contested: Cell<*mut Turnstile<T>>,
    /// Set by the releaser that grants the lock, before it wakes the thread.
    granted: AtomicBool,
}

// SAFETY: every `Cell` above is written only under the locks the module doc names (the chain
// lock and the PI lock), or by the thread itself while no other thread can reach it (its
// turnstile in hand), with `granted` (Release/Acquire) ordering a releaser's writes before the
// woken thread's reads.
unsafe impl<T> Sync for TsLinks<T> {}
// SAFETY: as above; the turnstile in hand is owned and freed with the links.
unsafe impl<T> Send for TsLinks<T> {}

impl<T> Default for TsLinks<T> {
    /// A thread's links, with its own turnstile (the one allocation, at thread creation).
    fn default() -> Self {
        TsLinks {
            ts: Cell::new(Box::into_raw(Box::new(Turnstile::new()))),
            blocked_on: Cell::new(ptr::null_mut()),
            next: Cell::new(ptr::null()),
            writer: Cell::new(false),
            contested: Cell::new(ptr::null_mut()),
            granted: AtomicBool::new(false),
        }
    }
}

impl<T> Drop for TsLinks<T> {
    fn drop(&mut self) {
        let ts = self.ts.get();
        assert!(!ts.is_null(), "a thread exits without a turnstile in hand (it still waits on a lock)");
        assert!(self.contested.get().is_null(), "a thread exits owning a lock with waiters");
        // SAFETY: a thread not waiting holds exactly one turnstile, which nobody else
        // references (it is not hashed: `lock` is 0), allocated by `Box` in `default`.
        drop(unsafe { Box::from_raw(ts) });
    }
}

impl<T> TsLinks<T> {
    /// The turnstile this thread waits on, if any.
    pub fn blocked_on(&self) -> Option<&Turnstile<T>> {
        // SAFETY: an active turnstile stays allocated while a thread waits on it (it holds at
        // least that thread's turnstile's worth: module doc).
        unsafe { self.blocked_on.get().as_ref() }
    }

    /// Whether the lock was granted (the waiter's loop; Acquire pairs with the grant).
    pub fn granted(&self) -> bool {
        self.granted.load(Ordering::Acquire)
    }

    /// Grants: the thread may run on (Release: the lock word and the links written before
    /// are visible to it).
    pub fn grant(&self) {
        self.granted.store(true, Ordering::Release);
    }

    /// Whether it waits as a writer (or on a mutex).
    pub fn writer_flag(&self) -> bool {
        self.writer.get()
    }

    /// The next thread of a releaser's wake list.
    pub fn wake_next(&self) -> *const T {
        self.next.get()
    }

    /// Whether the thread holds its turnstile (it does whenever it does not wait).
    pub fn has_turnstile(&self) -> bool {
        !self.ts.get().is_null()
    }

    /// The turnstiles of the locks it owns that have waiters.
    pub fn for_each_contested(&self, mut f: impl FnMut(&Turnstile<T>)) {
        let mut c = self.contested.get();
        // SAFETY: contested turnstiles are active (hashed) under the caller's locks.
        while let Some(ts) = unsafe { c.as_ref() } {
            f(ts);
            c = ts.contested_next.get();
        }
    }
}

/// A hash chain of active turnstiles (one per lock with waiters hashed here).
pub struct Chain<T> {
    head: *mut Turnstile<T>,
}

// SAFETY: the chain is reached only under its lock (the turnstile table's `SpinLock`).
unsafe impl<T> Send for Chain<T> {}

impl<T> Default for Chain<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Chain<T> {
    /// An empty chain.
    pub const fn new() -> Self {
        Chain { head: ptr::null_mut() }
    }

    /// The active turnstile of `lock`, if it has waiters.
    pub fn lookup(&self, lock: usize) -> Option<&Turnstile<T>> {
        let mut c = self.head;
        // SAFETY: hashed turnstiles are alive (owned by the lock's waiters) under the chain lock.
        while let Some(ts) = unsafe { c.as_ref() } {
            if ts.lock.get() == lock {
                return Some(ts);
            }
            c = ts.chain_next.get();
        }
        None
    }

    fn unhash(&mut self, ts: *mut Turnstile<T>) {
        let mut link: *const Cell<*mut Turnstile<T>> = ptr::null();
        let mut c = self.head;
        while !c.is_null() {
            if c == ts {
                // SAFETY: `ts` is in this chain (we just found it), alive under the chain lock.
                let next = unsafe { (*ts).chain_next.get() };
                // SAFETY: `link` is null or the `chain_next` of the live turnstile before `ts`.
                match unsafe { link.as_ref() } {
                    None => self.head = next,
                    Some(l) => l.set(next),
                }
                // SAFETY: as above.
                unsafe { (*ts).chain_next.set(ptr::null_mut()) };
                return;
            }
            // SAFETY: `c` is a hashed, live turnstile.
            link = unsafe { &(*c).chain_next };
            // SAFETY: as above.
            c = unsafe { (*c).chain_next.get() };
        }
        panic!("turnstile: unhash of a turnstile not in its chain");
    }
}

/// Blocking would close a cycle of owners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlock {
    len: usize,
    chain: [(usize, usize); MAX_CHAIN],
}

impl Deadlock {
    /// (lock, its owner) pairs along the cycle, starting with the lock the waiter wanted;
    /// the last owner is the would-be waiter.
    pub fn chain(&self) -> &[(usize, usize)] {
        &self.chain[..self.len]
    }
}

fn addr<T>(t: &T) -> usize {
    t as *const T as usize
}

/// `me` blocks on `lock`, owned by `owner` (a writer; `None`: readers hold it): queues it on
/// the lock's turnstile (lending its own, or donating it to the free list) and lends its
/// priority along the chain of owners. Refused, with nothing changed, if that would close a
/// cycle. The caller holds the chain lock of `lock` (this `chain`) and the PI lock.
// The error carries the cycle in place: nothing may be allocated under the turnstile locks.
#[allow(clippy::result_large_err)]
pub fn block<T: PiThread>(
    chain: &mut Chain<T>,
    lock: usize,
    me: &T,
    writer: bool,
    owner: Option<&T>,
) -> Result<(), Deadlock> {
    if let Some(o) = owner {
        if let Some(d) = find_cycle(lock, o, me) {
            return Err(d);
        }
    }
    let links = me.links();
    let mine = links.ts.replace(ptr::null_mut());
    assert!(!mine.is_null(), "turnstile: a thread blocks without a turnstile in hand");
    let ts: &Turnstile<T> = match chain.lookup(lock) {
        Some(ts) => {
            debug_assert!(
                ptr::eq(ts.owner.get(), owner.map_or(ptr::null(), |o| o as *const T)),
                "turnstile: the lock word and the turnstile disagree on the owner"
            );
            // SAFETY: `mine` is this thread's own turnstile (not hashed, not shared).
            unsafe { (*mine).free.set(ts.free.get()) };
            ts.free.set(mine);
            ts
        }
        None => {
            // SAFETY: as above; it becomes the lock's turnstile, reachable under the locks.
            let ts = unsafe { &*mine };
            ts.lock.set(lock);
            ts.owner.set(owner.map_or(ptr::null(), |o| o as *const T));
            ts.free.set(ptr::null_mut());
            ts.chain_next.set(chain.head);
            chain.head = mine;
            if let Some(o) = owner {
                ts.contested_next.set(o.links().contested.get());
                o.links().contested.set(mine);
            }
            ts
        }
    };
    links.next.set(ptr::null());
    links.writer.set(writer);
    links.granted.store(false, Ordering::Relaxed);
    // SAFETY: a queued thread is alive (it waits); the tail is one.
    match unsafe { ts.tail.get().as_ref() } {
        None => ts.head.set(me),
        Some(t) => t.links().next.set(me),
    }
    ts.tail.set(me);
    ts.waiters.set(ts.waiters.get() + 1);
    ts.writers.set(ts.writers.get() + writer as u32);
    links.blocked_on.set(ts as *const Turnstile<T> as *mut Turnstile<T>);
    if let Some(o) = ts.owner() {
        if me.eff_pri() > o.eff_pri() {
            recompute(o);
        }
    }
    Ok(())
}

/// Walks the owners from `lock` (owned by `owner`): the cycle if it reaches `me`. The walk
/// records nothing; the cycle (a 512-byte [`Deadlock`], whose zeroing is a 64-step
/// `rep stosq`) is built only when there is one, not on every block.
fn find_cycle<T: PiThread>(lock: usize, owner: &T, me: &T) -> Option<Deadlock> {
    let mut o = owner;
    for len in 1..=MAX_CHAIN {
        if ptr::eq(o, me) {
            return Some(record_cycle(lock, owner, len));
        }
        o = o.links().blocked_on()?.owner()?;
    }
    None
}

/// The first `len` (lock, owner) pairs from `lock` (owned by `owner`): the cycle
/// [`find_cycle`] found (the caller's locks keep the chain as it was).
#[cold]
#[inline(never)]
fn record_cycle<T: PiThread>(lock: usize, owner: &T, len: usize) -> Deadlock {
    let mut d = Deadlock { len, chain: [(0, 0); MAX_CHAIN] };
    let (mut l, mut o) = (lock, owner);
    for (i, pair) in d.chain[..len].iter_mut().enumerate() {
        *pair = (l, addr(o));
        if i + 1 < len {
            let bt = o.links().blocked_on().expect("pi: the cycle changed under the locks");
            l = bt.lock.get();
            o = bt.owner().expect("pi: the cycle changed under the locks");
        }
    }
    d
}

/// Recomputes `t`'s effective priority (max of its base and the waiters of its contested
/// turnstiles) and carries a change along the chain of owners.
pub fn recompute<T: PiThread>(t: &T) {
    let mut t = t;
    for _ in 0..MAX_CHAIN {
        let mut p = t.base_pri();
        t.links().for_each_contested(|ts| p = p.max(ts.top_pri()));
        if p == t.eff_pri() {
            return;
        }
        t.set_eff_pri(p);
        let Some(bt) = t.links().blocked_on() else { return };
        let Some(o) = bt.owner() else { return };
        t = o;
    }
}

/// The waiter a release hands the lock to: the most urgent, first come among equals.
pub fn most_urgent<T: PiThread>(ts: &Turnstile<T>) -> Option<&T> {
    let mut best: Option<&T> = None;
    ts.for_each_waiter(|t| {
        if best.is_none_or(|b| t.eff_pri() > b.eff_pri()) {
            // SAFETY: queued threads stay alive while queued; the borrow ends with the locks.
            best = Some(unsafe { &*(t as *const T) });
        }
    });
    best
}

/// Removes `t` from `ts`'s queue and gives it a turnstile back (from the free list, or `ts`
/// itself if `t` was the last waiter: then `ts` is unhashed and leaves its owner's contested
/// list). Its loan is *not* withdrawn here (the callers recompute).
fn dequeue<T: PiThread>(chain: &mut Chain<T>, ts: &Turnstile<T>, t: &T) {
    let links = t.links();
    // Unlink from the queue.
    let mut prev: Option<&T> = None;
    let mut w = ts.head.get();
    loop {
        // SAFETY: queued threads are alive under the caller's locks.
        let cur = unsafe { w.as_ref() }.expect("turnstile: dequeue of a thread not queued here");
        if ptr::eq(cur, t) {
            break;
        }
        prev = Some(cur);
        w = cur.links().next.get();
    }
    let next = links.next.get();
    match prev {
        None => ts.head.set(next),
        Some(p) => p.links().next.set(next),
    }
    if ptr::eq(ts.tail.get(), t) {
        ts.tail.set(prev.map_or(ptr::null(), |p| p as *const T));
    }
    links.next.set(ptr::null());
    ts.waiters.set(ts.waiters.get() - 1);
    ts.writers.set(ts.writers.get() - links.writer.get() as u32);
    links.blocked_on.set(ptr::null_mut());
    let tsp = ts as *const Turnstile<T> as *mut Turnstile<T>;
    if ts.waiters.get() == 0 {
        // The last waiter takes the lock's turnstile itself.
        debug_assert!(ts.free.get().is_null());
        chain.unhash(tsp);
        if let Some(o) = ts.owner() {
            remove_contested(o, tsp);
        }
        ts.owner.set(ptr::null());
        ts.lock.set(0);
        links.ts.set(tsp);
    } else {
        let spare = ts.free.get();
        assert!(!spare.is_null(), "turnstile: free list shorter than the queue");
        // SAFETY: spares on the free list are owned by this turnstile, not shared.
        ts.free.set(unsafe { (*spare).free.get() });
        // SAFETY: as above.
        unsafe { (*spare).free.set(ptr::null_mut()) };
        links.ts.set(spare);
    }
}

fn remove_contested<T: PiThread>(owner: &T, ts: *mut Turnstile<T>) {
    let head = &owner.links().contested;
    let mut link: &Cell<*mut Turnstile<T>> = head;
    loop {
        let c = link.get();
        assert!(!c.is_null(), "turnstile: not on its owner's contested list");
        // SAFETY: contested turnstiles are active, alive under the caller's locks.
        let cts = unsafe { &*c };
        if c == ts {
            link.set(cts.contested_next.get());
            cts.contested_next.set(ptr::null_mut());
            return;
        }
        link = &cts.contested_next;
    }
}

fn set_owner<T: PiThread>(ts: &Turnstile<T>, owner: Option<&T>) {
    let tsp = ts as *const Turnstile<T> as *mut Turnstile<T>;
    if let Some(o) = ts.owner() {
        remove_contested(o, tsp);
    }
    ts.owner.set(owner.map_or(ptr::null(), |o| o as *const T));
    if let Some(o) = owner {
        ts.contested_next.set(o.links().contested.get());
        o.links().contested.set(tsp);
    }
}

/// The lock's owner (`old`, or readers when `None`) hands it to `heir`, a waiter (the most
/// urgent, [`most_urgent`]): `heir` leaves the queue with a turnstile back; the remaining
/// waiters, if any, lend to it; the loans through this lock are withdrawn from `old`.
pub fn hand_to<T: PiThread>(chain: &mut Chain<T>, ts: &Turnstile<T>, old: Option<&T>, heir: &T) {
    dequeue(chain, ts, heir);
    if ts.lock.get() != 0 {
        set_owner(ts, Some(heir));
    }
    if let Some(o) = old {
        recompute(o);
    }
    recompute(heir);
}

/// The lock's writer `old` releases it to every waiting reader: they leave the queue, each
/// with a turnstile back, linked into a list for the caller to wake ([`TsLinks::wake_next`]);
/// the remaining waiters (writers) lend to nobody while readers hold it. Returns the list's
/// head and its length.
pub fn hand_to_readers<T: PiThread>(
    chain: &mut Chain<T>,
    ts: &Turnstile<T>,
    old: Option<&T>,
) -> (*const T, usize) {
    let (mut head, mut n): (*const T, usize) = (ptr::null(), 0);
    if ts.owner.get().is_null() {
        // Already reader-owned: nothing to move.
    } else {
        set_owner(ts, None);
    }
    let mut w = ts.head.get();
    // SAFETY: queued threads are alive under the caller's locks; `next` is read before the
    // thread leaves the queue.
    while let Some(t) = unsafe { w.as_ref() } {
        w = t.links().next.get();
        if !t.links().writer.get() {
            dequeue(chain, ts, t);
            t.links().next.set(head);
            head = t;
            n += 1;
        }
    }
    if let Some(o) = old {
        recompute(o);
    }
    // The readers' loans to `old` are gone with it; readers may still be lent to (they may
    // own other locks): their own priority is theirs to keep.
    (head, n)
}

/// `t` stops waiting without the lock (a timeout): it leaves the queue with a turnstile back
/// and its loan is withdrawn along the chain.
pub fn unblock<T: PiThread>(chain: &mut Chain<T>, t: &T) {
    let Some(ts) = t.links().blocked_on() else { return };
    let owner = ts.owner.get();
    dequeue(chain, ts, t);
    // SAFETY: the owner of a lock with waiters is alive (module doc); `dequeue` did not
    // release it.
    if let Some(o) = unsafe { owner.as_ref() } {
        recompute(o);
    }
}

/// A broken invariant of priority inheritance ([`check`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PiViolation {
    /// The thread.
    pub thread: usize,
    /// Its effective priority.
    pub eff: u8,
    /// max(base, lenders).
    pub want: u8,
}

impl core::fmt::Display for PiViolation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "thread {:#x}: eff {} != max(base, lenders) {}", self.thread, self.eff, self.want)
    }
}

/// Checks `t`'s invariant (tests): its effective priority is the maximum of its base and its
/// lenders' effective priorities.
pub fn check<T: PiThread>(t: &T) -> Result<(), PiViolation> {
    let mut want = t.base_pri();
    t.links().for_each_contested(|ts| want = want.max(ts.top_pri()));
    if t.eff_pri() != want {
        return Err(PiViolation { thread: addr(t), eff: t.eff_pri(), want });
    }
    Ok(())
}
