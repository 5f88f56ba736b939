//! Lock classes, the lock checker (WITNESS / lockdep style) and lock statistics.
//!
//! **Classes.** Every lock has a name (`Mutex::new_adaptive("vm_map", ..)`); locks with the
//! same name form one class. A lock looks its class up once and caches the id. Classes carry
//! the statistics (`lockstat`) and are the nodes of the order graph.
//!
//! **Checks** (only while checking is on — the kernel turns it on for tests and debug runs):
//! - lock-order reversal: acquiring B while holding A adds the edge A→B; if B→…→A is already
//!   known, the acquisition is reported naming both classes;
//! - taking an adaptive mutex (or any sleeping lock) while holding a spin mutex;
//! - taking an adaptive mutex at an IPL above `IPL_VM`;
//! - sleeping while holding a spin mutex;
//! - releasing a lock the thread does not hold; recursion on a non-recursive lock.
//!
//! A violation goes to the report policy: [`Policy::Panic`] (the default: the message names
//! the culprit(s) and the kernel stops) or [`Policy::Record`] (tests that expect a diagnostic:
//! the first violation is kept for [`Witness::take_violation`] and the operation is made
//! harmless — the lock layer skips the acquisition or release it refused).
//!
//! **Statistics** are kept per class with relaxed atomic adds, off the uncontended fast path
//! unless statistics are on: acquisitions, contended acquisitions, spin time, block time, max
//! hold time.

use alloc::collections::BTreeSet;
use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use machine::{IntrOff, Machine};
use sched::SpinLock;

const FLAG_CHECK: u8 = 1;
const FLAG_STATS: u8 = 2;

/// Most lock classes.
pub const MAX_CLASSES: usize = 256;

/// What kind of lock a class is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum LockKind {
    /// Adaptive mutex (may sleep).
    Adaptive = 1,
    /// Spin mutex (raises IPL).
    Spin = 2,
    /// Reader–writer lock (may sleep).
    RwLock = 3,
}

impl LockKind {
    fn from_u8(v: u8) -> LockKind {
        match v {
            2 => LockKind::Spin,
            3 => LockKind::RwLock,
            _ => LockKind::Adaptive,
        }
    }

    /// Whether acquiring may sleep.
    pub fn sleeps(self) -> bool {
        self != LockKind::Spin
    }
}

/// A misuse the checker found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// `second` acquired while holding `first`, against the known order `second` → `first`.
    OrderReversal {
        /// Held lock.
        first: &'static str,
        /// Lock being acquired.
        second: &'static str,
    },
    /// A sleeping lock acquired while a spin mutex is held.
    SleepingLockUnderSpin {
        /// The sleeping lock.
        lock: &'static str,
        /// The spin mutex held.
        spin: &'static str,
    },
    /// An adaptive mutex acquired above `IPL_VM`.
    AdaptiveAboveVm {
        /// The mutex.
        lock: &'static str,
        /// The IPL it was taken at.
        ipl: &'static str,
    },
    /// The thread tried to sleep holding a spin mutex.
    SleepWithSpinHeld {
        /// The spin mutex.
        spin: &'static str,
    },
    /// A release of a lock the thread does not hold.
    ReleaseNotHeld {
        /// The lock.
        lock: &'static str,
    },
    /// A non-recursive lock acquired again by its holder.
    Recursion {
        /// The lock.
        lock: &'static str,
    },
    /// A turnstile chain came back to the waiter.
    Deadlock {
        /// The lock the waiter wanted.
        lock: &'static str,
        /// The thread that would wait forever.
        thread: alloc::string::String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::OrderReversal { first, second } => write!(
                f,
                "lock order reversal: \"{second}\" acquired while holding \"{first}\", \
                 but \"{second}\" was established before \"{first}\""
            ),
            Violation::SleepingLockUnderSpin { lock, spin } => {
                write!(f, "sleeping lock \"{lock}\" acquired while holding spin mutex \"{spin}\"")
            }
            Violation::AdaptiveAboveVm { lock, ipl } => {
                write!(f, "adaptive mutex \"{lock}\" acquired at {ipl}, above IPL_VM")
            }
            Violation::SleepWithSpinHeld { spin } => {
                write!(f, "sleeping while holding spin mutex \"{spin}\"")
            }
            Violation::ReleaseNotHeld { lock } => {
                write!(f, "release of \"{lock}\", which this thread does not hold")
            }
            Violation::Recursion { lock } => {
                write!(f, "recursive acquisition of non-recursive lock \"{lock}\"")
            }
            Violation::Deadlock { lock, thread } => {
                write!(f, "deadlock: thread \"{thread}\" would wait on \"{lock}\" in a cycle of owners")
            }
        }
    }
}

/// What happens on a violation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Policy {
    /// Panic with the report (default).
    Panic,
    /// Keep the first violation for a test to take; carry on harmlessly.
    Record,
}

/// Statistics of one class, as read by `lockstat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Acquisitions.
    pub acquired: u64,
    /// Acquisitions that found the lock taken.
    pub contended: u64,
    /// Nanoseconds spent spinning for it.
    pub spin_ns: u64,
    /// Nanoseconds spent blocked for it.
    pub block_ns: u64,
    /// Longest hold, nanoseconds.
    pub max_hold_ns: u64,
}

struct Class {
    name_ptr: AtomicUsize,
    name_len: AtomicUsize,
    kind: AtomicU8,
    acquired: AtomicU64,
    contended: AtomicU64,
    spin_ns: AtomicU64,
    block_ns: AtomicU64,
    max_hold_ns: AtomicU64,
}

impl Class {
    const fn new() -> Self {
        Class {
            name_ptr: AtomicUsize::new(0),
            name_len: AtomicUsize::new(0),
            kind: AtomicU8::new(0),
            acquired: AtomicU64::new(0),
            contended: AtomicU64::new(0),
            spin_ns: AtomicU64::new(0),
            block_ns: AtomicU64::new(0),
            max_hold_ns: AtomicU64::new(0),
        }
    }

    fn name(&self) -> &'static str {
        let p = self.name_ptr.load(Ordering::Acquire);
        let n = self.name_len.load(Ordering::Relaxed);
        if p == 0 {
            return "?";
        }
        // SAFETY: `name_ptr`/`name_len` are written once, from a `&'static str`, before the
        // class id is published (release store in `class_of`).
        unsafe { core::str::from_utf8_unchecked(core::slice::from_raw_parts(p as *const u8, n)) }
    }
}

/// Per-thread record data (`HeldLocks` entry data): class id, kind, and the acquisition time
/// in microseconds (40 bits) for hold statistics.
fn pack(class: u32, kind: LockKind, t_us: u64) -> usize {
    ((t_us as usize) << 24) | ((kind as usize) << 16) | class as usize
}

fn unpack(d: usize) -> (u32, LockKind, u64) {
    ((d & 0xFFFF) as u32, LockKind::from_u8(((d >> 16) & 0xFF) as u8), (d >> 24) as u64)
}

/// The checker and the class table.
pub struct Witness {
    classes: [Class; MAX_CLASSES],
    nclasses: AtomicU32,
    register: SpinLock<()>,
    order: SpinLock<BTreeSet<(u16, u16)>>,
    /// Bit 0: checking; bit 1: statistics. One byte, so the fast paths test one load.
    flags: AtomicU8,
    /// What a free adaptive mutex word must equal for the fast path to take it: 0 when the
    /// checker and statistics are off, 1 (never a free word) when either is on.
    expect: AtomicUsize,
    /// The same for a free spin mutex word: `SPIN` when off, `SPIN | 1` (never a free word)
    /// when on.
    spin_expect: AtomicUsize,
    /// What the rwlock fast paths OR into the expected word: 0 when off, bit 63 (never set
    /// in a lock word: reader counts and thread addresses stay below it) when on.
    rw_expect: AtomicUsize,
    policy: AtomicU8,
    recorded: SpinLock<Option<Violation>>,
}

/// `rw_expect` while checking or statistics are on.
const RW_ACTIVE: usize = 1 << (usize::BITS - 1);

impl Default for Witness {
    fn default() -> Self {
        Self::new()
    }
}

impl Witness {
    /// Checking and statistics off; policy panic.
    pub const fn new() -> Self {
        Witness {
            classes: [const { Class::new() }; MAX_CLASSES],
            nclasses: AtomicU32::new(1), // id 0 means "not looked up yet"
            register: SpinLock::new(()),
            order: SpinLock::new(BTreeSet::new()),
            flags: AtomicU8::new(0),
            expect: AtomicUsize::new(0),
            spin_expect: AtomicUsize::new(crate::mutex::SPIN),
            rw_expect: AtomicUsize::new(0),
            policy: AtomicU8::new(0),
            recorded: SpinLock::new(None),
        }
    }

    /// Turns the checker on or off.
    pub fn set_checking(&self, on: bool) {
        if on {
            self.flags.fetch_or(FLAG_CHECK, Ordering::Relaxed);
        } else {
            self.flags.fetch_and(!FLAG_CHECK, Ordering::Relaxed);
        }
        self.update_expect();
    }

    fn update_expect(&self) {
        let active = self.flags.load(Ordering::Relaxed) != 0;
        self.expect.store(usize::from(active), Ordering::Relaxed);
        self.spin_expect.store(crate::mutex::SPIN | usize::from(active), Ordering::Relaxed);
        self.rw_expect.store(if active { RW_ACTIVE } else { 0 }, Ordering::Relaxed);
    }

    /// What the rwlock fast paths OR into the expected word (see `rw_expect`).
    #[inline(always)]
    pub fn fast_rw_expect(&self) -> usize {
        self.rw_expect.load(Ordering::Relaxed)
    }

    /// The free value the spin mutex fast path compares against (see `spin_expect`).
    #[inline(always)]
    pub fn fast_spin_expect(&self) -> usize {
        self.spin_expect.load(Ordering::Relaxed)
    }

    /// The free value the lock fast paths compare against (see `expect`).
    #[inline(always)]
    pub fn fast_expect(&self) -> usize {
        self.expect.load(Ordering::Relaxed)
    }

    /// Whether the checker is on.
    #[inline]
    pub fn checking(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & FLAG_CHECK != 0
    }

    /// Turns statistics on or off.
    pub fn set_stats(&self, on: bool) {
        if on {
            self.flags.fetch_or(FLAG_STATS, Ordering::Relaxed);
        } else {
            self.flags.fetch_and(!FLAG_STATS, Ordering::Relaxed);
        }
        self.update_expect();
    }

    /// Whether statistics are on.
    #[inline]
    pub fn stats_on(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & FLAG_STATS != 0
    }

    /// Whether the slow bookkeeping (checks or statistics) is on: the one test on fast paths.
    #[inline]
    pub fn active(&self) -> bool {
        self.flags.load(Ordering::Relaxed) != 0
    }

    /// Sets the report policy.
    pub fn set_policy(&self, p: Policy) {
        self.policy.store(p as u8, Ordering::Relaxed);
    }

    /// The current policy.
    pub fn policy(&self) -> Policy {
        if self.policy.load(Ordering::Relaxed) == Policy::Record as u8 {
            Policy::Record
        } else {
            Policy::Panic
        }
    }

    /// Takes the violation kept under [`Policy::Record`].
    pub fn take_violation<M: Machine>(&self) -> Option<Violation> {
        let io = M::intr_disable();
        let mut r = self.recorded.lock(&io);
        r.take()
    }

    /// Reports a violation according to the policy. Returns (under `Record`) so the caller
    /// can make the operation harmless.
    pub fn report<M: Machine>(&self, v: Violation) {
        match self.policy() {
            Policy::Panic => panic!("lock checker: {v}"),
            Policy::Record => {
                let io = M::intr_disable();
                let mut r = self.recorded.lock(&io);
                if r.is_none() {
                    *r = Some(v);
                }
            }
        }
    }

    /// The class id of a lock named `name`, looked up once and cached in `cache`.
    pub fn class_of<M: Machine>(&self, cache: &AtomicU32, name: &'static str, kind: LockKind) -> u32 {
        let c = cache.load(Ordering::Acquire);
        if c != 0 {
            return c;
        }
        let io = M::intr_disable();
        let _g = self.register.lock(&io);
        let n = self.nclasses.load(Ordering::Relaxed);
        let found = (1..n).find(|&i| self.classes[i as usize].name() == name);
        let id = match found {
            Some(i) => i,
            None if (n as usize) < MAX_CLASSES => {
                let cl = &self.classes[n as usize];
                cl.name_len.store(name.len(), Ordering::Relaxed);
                cl.kind.store(kind as u8, Ordering::Relaxed);
                cl.name_ptr.store(name.as_ptr() as usize, Ordering::Release);
                self.nclasses.store(n + 1, Ordering::Release);
                n
            }
            // Table full: share the last class rather than fail (reported in lockstat).
            None => (MAX_CLASSES - 1) as u32,
        };
        cache.store(id, Ordering::Release);
        id
    }

    /// The name of class `id`.
    pub fn class_name(&self, id: u32) -> &'static str {
        self.classes.get(id as usize).map_or("?", |c| c.name())
    }

    /// Checks an acquisition about to happen and records it as held (`lock` = address).
    /// `ipl` is the CPU's level as a name, and `above_vm` whether it is above `IPL_VM`.
    /// Returns `false` if the acquisition must be skipped (recursion under `Record`).
    pub fn acquire<M: Machine>(
        &self,
        held: &SpinLock<sched::HeldLocks>,
        lock: usize,
        class: u32,
        kind: LockKind,
        ipl_name: &'static str,
        above_vm: bool,
    ) -> bool {
        let now_us = M::now_ns() / 1_000;
        let io = M::intr_disable();
        let mut violation = None;
        let mut ok = true;
        if self.checking() {
            let h = held.lock(&io);
            let name = self.class_name(class);
            if h.as_slice().iter().any(|&(l, _)| l == lock) {
                violation = Some(Violation::Recursion { lock: name });
                ok = false;
            } else if kind == LockKind::Adaptive && above_vm {
                violation = Some(Violation::AdaptiveAboveVm { lock: name, ipl: ipl_name });
            } else if let Some(&(_, d)) =
                h.as_slice().iter().find(|&&(_, d)| kind.sleeps() && unpack(d).1 == LockKind::Spin)
            {
                violation =
                    Some(Violation::SleepingLockUnderSpin { lock: name, spin: self.class_name(unpack(d).0) });
            } else {
                let mut order = self.order.lock(&io);
                for &(_, d) in h.as_slice() {
                    let a = unpack(d).0 as u16;
                    let b = class as u16;
                    if a == b {
                        continue;
                    }
                    if reachable(&order, b, a) {
                        violation = Some(Violation::OrderReversal {
                            first: self.class_name(a as u32),
                            second: self.class_name(b as u32),
                        });
                        break;
                    }
                    order.insert((a, b));
                }
            }
        }
        if ok {
            let _ = held.lock(&io).push(lock, pack(class, kind, now_us));
        }
        drop(io);
        if let Some(v) = violation {
            self.report::<M>(v);
        }
        ok
    }

    /// Forgets a lock the caller knows it owns (its owner word says so): removes its record if
    /// there is one. There may be none — checking may have been turned on or off between the
    /// acquisition and now, by another CPU — and that is not a violation.
    pub fn forget<M: Machine>(&self, held: &SpinLock<sched::HeldLocks>, lock: usize, class: u32) {
        let _ = self.remove_record::<M>(held, lock, class);
    }

    fn remove_record<M: Machine>(&self, held: &SpinLock<sched::HeldLocks>, lock: usize, class: u32) -> bool {
        let io = M::intr_disable();
        let rec = held.lock(&io).remove(lock);
        drop(io);
        match rec {
            Some(d) => {
                if self.stats_on() {
                    let (_, _, t0) = unpack(d);
                    let hold = (M::now_ns() / 1_000).saturating_sub(t0) * 1_000;
                    self.classes[class as usize].max_hold_ns.fetch_max(hold, Ordering::Relaxed);
                }
                true
            }
            None => false,
        }
    }

    /// Checks a release and forgets the lock. Returns `false` if the thread did not hold it
    /// (reported; the caller skips the release under `Record`).
    pub fn release<M: Machine>(&self, held: &SpinLock<sched::HeldLocks>, lock: usize, class: u32) -> bool {
        match self.remove_record::<M>(held, lock, class) {
            true => true,
            false if self.checking() => {
                self.report::<M>(Violation::ReleaseNotHeld { lock: self.class_name(class) });
                false
            }
            false => true,
        }
    }

    /// Checks that the thread holds no spin mutex before it sleeps. Returns `false` if it does
    /// (reported; under `Record` the caller should not sleep).
    pub fn check_sleep<M: Machine>(&self, held: &SpinLock<sched::HeldLocks>) -> bool {
        if !self.checking() {
            return true;
        }
        let io = M::intr_disable();
        let spin = held
            .lock(&io)
            .as_slice()
            .iter()
            .find(|&&(_, d)| unpack(d).1 == LockKind::Spin)
            .map(|&(_, d)| unpack(d).0);
        drop(io);
        match spin {
            Some(c) => {
                self.report::<M>(Violation::SleepWithSpinHeld { spin: self.class_name(c) });
                false
            }
            None => true,
        }
    }

    /// Counts an acquisition (statistics on).
    pub fn count(&self, class: u32, contended: bool, spin_ns: u64, block_ns: u64) {
        let c = &self.classes[class as usize];
        c.acquired.fetch_add(1, Ordering::Relaxed);
        if contended {
            c.contended.fetch_add(1, Ordering::Relaxed);
            c.spin_ns.fetch_add(spin_ns, Ordering::Relaxed);
            c.block_ns.fetch_add(block_ns, Ordering::Relaxed);
        }
    }

    /// Records one hold of a lock of `class` that lasted `ns`.
    pub fn note_hold(&self, class: u32, ns: u64) {
        self.classes[class as usize].max_hold_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// Statistics of every class: (name, kind, stats).
    pub fn lockstat(&self) -> impl Iterator<Item = (&'static str, LockKind, ClassStats)> + '_ {
        let n = self.nclasses.load(Ordering::Acquire) as usize;
        self.classes[1..n].iter().map(|c| {
            (
                c.name(),
                LockKind::from_u8(c.kind.load(Ordering::Relaxed)),
                ClassStats {
                    acquired: c.acquired.load(Ordering::Relaxed),
                    contended: c.contended.load(Ordering::Relaxed),
                    spin_ns: c.spin_ns.load(Ordering::Relaxed),
                    block_ns: c.block_ns.load(Ordering::Relaxed),
                    max_hold_ns: c.max_hold_ns.load(Ordering::Relaxed),
                },
            )
        })
    }

    /// Forgets the learned lock order (tests that provoke reversals start clean).
    pub fn reset_order<M: Machine>(&self) {
        let io = M::intr_disable();
        self.order.lock(&io).clear();
    }

    /// `IntrOff`-taking variant used inside the turnstile (already interrupts-off).
    pub fn class_name_locked(&self, id: u32, _io: &IntrOff) -> &'static str {
        self.class_name(id)
    }
}

/// Whether `to` is reachable from `from` in the order graph.
fn reachable(edges: &BTreeSet<(u16, u16)>, from: u16, to: u16) -> bool {
    let mut stack = alloc::vec![from];
    let mut seen = BTreeSet::new();
    while let Some(x) = stack.pop() {
        if x == to {
            return true;
        }
        if !seen.insert(x) {
            continue;
        }
        for &(_, b) in edges.range((x, 0)..=(x, u16::MAX)) {
            stack.push(b);
        }
    }
    false
}
