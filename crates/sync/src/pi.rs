//! Priority-inheritance bookkeeping, kept apart from the locks so it can be property-tested.
//!
//! Every owner of a lock with blocked waiters has a list of *lenders*: one entry per blocked
//! waiter, naming the lock it waits on and the priority it lends (its own effective priority).
//! A thread's effective priority is the maximum of its base priority and its lenders'. When a
//! lender's own effective priority changes (it inherited something, or lost it), the change is
//! carried to the owner of the lock it waits on, and so on along the chain — bounded by
//! [`MAX_CHAIN`], and stopped with [`Deadlock`] when it comes back to where it started.
//!
//! A release removes exactly the entries of the released lock from the old owner (the loan is
//! withdrawn when the lock is released, whatever else the owner still holds — no "saved
//! priority per lock", the classic bug that restores a priority still owed to another lock).
//! If the lock is handed to one of its waiters, the remaining waiters become the new owner's
//! lenders.
//!
//! The book knows threads and locks only as numbers (addresses); the turnstile applies the
//! priority changes the operations return. All of it runs under the turnstile lock.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// A thread, by address.
pub type ThreadKey = usize;
/// A lock, by address.
pub type LockKey = usize;

/// Longest owner chain followed when lending.
pub const MAX_CHAIN: usize = 64;

/// A waiting thread's loan to the owner of the lock it waits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lender {
    /// The lock the lender waits on.
    pub lock: LockKey,
    /// The waiting thread.
    pub thread: ThreadKey,
    /// The priority lent (the lender's effective priority).
    pub pri: u8,
}

/// Blocking would close a cycle of owners: the locks and threads involved, starting with the
/// lock the new waiter wanted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deadlock {
    /// (lock, its owner) pairs along the chain; the last owner is the would-be waiter.
    pub chain: Vec<(LockKey, ThreadKey)>,
}

/// Priority changes to apply: (thread, new effective priority).
pub type Changes = Vec<(ThreadKey, u8)>;

#[derive(Default, Debug)]
struct Entry {
    base: u8,
    eff: u8,
    lenders: Vec<Lender>,
    blocked_on: Option<LockKey>,
}

/// The book.
#[derive(Default, Debug)]
pub struct PiBook {
    threads: BTreeMap<ThreadKey, Entry>,
    /// Owner of every lock that has blocked waiters (`None`: owned by readers, no loans).
    owners: BTreeMap<LockKey, Option<ThreadKey>>,
}

impl PiBook {
    /// An empty book.
    pub const fn new() -> Self {
        PiBook { threads: BTreeMap::new(), owners: BTreeMap::new() }
    }

    fn entry(&mut self, t: ThreadKey, base: u8) -> &mut Entry {
        self.threads.entry(t).or_insert_with(|| Entry { base, eff: base, ..Entry::default() })
    }

    /// Effective priority of `t`, if the book knows it.
    pub fn effective(&self, t: ThreadKey) -> Option<u8> {
        self.threads.get(&t).map(|e| e.eff)
    }

    /// The lenders of `t`.
    pub fn lenders(&self, t: ThreadKey) -> &[Lender] {
        self.threads.get(&t).map_or(&[], |e| &e.lenders)
    }

    /// The lock `t` is blocked on.
    pub fn blocked_on(&self, t: ThreadKey) -> Option<LockKey> {
        self.threads.get(&t).and_then(|e| e.blocked_on)
    }

    /// The owner recorded for `lock`.
    pub fn owner(&self, lock: LockKey) -> Option<ThreadKey> {
        self.owners.get(&lock).copied().flatten()
    }

    /// `waiter` (base priority `waiter_base`) blocks on `lock`, owned by `owner` (base
    /// `owner_base`), or by readers when `owner` is `None`. Returns the priority changes along
    /// the chain, or the cycle that blocking would close (then nothing is recorded).
    pub fn block(
        &mut self,
        waiter: ThreadKey,
        waiter_base: u8,
        lock: LockKey,
        owner: Option<(ThreadKey, u8)>,
    ) -> Result<Changes, Deadlock> {
        if let Some((o, _)) = owner {
            // Walk the chain of owners first: refuse to record a cycle.
            let mut chain = Vec::new();
            let (mut l, mut t) = (lock, o);
            for _ in 0..MAX_CHAIN {
                chain.push((l, t));
                if t == waiter {
                    return Err(Deadlock { chain });
                }
                match self.blocked_on(t) {
                    Some(next) => match self.owner(next) {
                        Some(n) => {
                            l = next;
                            t = n;
                        }
                        None => break,
                    },
                    None => break,
                }
            }
        }
        let pri = {
            let w = self.entry(waiter, waiter_base);
            w.blocked_on = Some(lock);
            w.eff
        };
        match owner {
            Some((o, base)) => {
                self.owners.insert(lock, Some(o));
                self.entry(o, base).lenders.push(Lender { lock, thread: waiter, pri });
                let mut changes = Vec::new();
                self.propagate(o, &mut changes);
                Ok(changes)
            }
            None => {
                self.owners.entry(lock).or_insert(None);
                Ok(Vec::new())
            }
        }
    }

    /// `waiter` stops waiting on its lock without getting it (timeout, or granted together
    /// with other readers): its loan is withdrawn.
    pub fn unblock(&mut self, waiter: ThreadKey) -> Changes {
        let mut changes = Vec::new();
        let Some(lock) = self.threads.get_mut(&waiter).and_then(|e| e.blocked_on.take()) else {
            return changes;
        };
        if let Some(o) = self.owner(lock) {
            if let Some(e) = self.threads.get_mut(&o) {
                e.lenders.retain(|l| !(l.lock == lock && l.thread == waiter));
            }
            self.propagate(o, &mut changes);
        }
        if !self.threads.values().any(|e| e.blocked_on == Some(lock)) {
            self.owners.remove(&lock);
        }
        self.forget_if_idle(waiter);
        changes
    }

    /// `old_owner` releases `lock`. If `new_owner` is given (a waiter the lock is handed to),
    /// it stops waiting and the remaining waiters of `lock` lend to it instead.
    pub fn release(&mut self, lock: LockKey, old_owner: ThreadKey, new_owner: Option<ThreadKey>) -> Changes {
        let mut changes = Vec::new();
        let mut moved = Vec::new();
        if let Some(e) = self.threads.get_mut(&old_owner) {
            e.lenders.retain(|l| {
                if l.lock == lock {
                    moved.push(*l);
                    false
                } else {
                    true
                }
            });
        }
        self.propagate(old_owner, &mut changes);
        self.forget_if_idle(old_owner);
        match new_owner {
            Some(n) => {
                if let Some(e) = self.threads.get_mut(&n) {
                    e.blocked_on = None;
                }
                let heirs: Vec<Lender> = moved.into_iter().filter(|l| l.thread != n).collect();
                if heirs.is_empty() {
                    self.owners.remove(&lock);
                } else {
                    self.owners.insert(lock, Some(n));
                    if let Some(e) = self.threads.get_mut(&n) {
                        e.lenders.extend(heirs);
                    }
                }
                self.propagate(n, &mut changes);
                self.forget_if_idle(n);
            }
            None => {
                // Nobody handed the lock: waiters (if any) compete again; their loans lapse
                // until they block anew.
                if !self.threads.values().any(|e| e.blocked_on == Some(lock)) {
                    self.owners.remove(&lock);
                } else {
                    self.owners.insert(lock, None);
                }
            }
        }
        changes
    }

    /// Recomputes `t`'s effective priority and carries a change along the chain.
    fn propagate(&mut self, mut t: ThreadKey, changes: &mut Changes) {
        for _ in 0..MAX_CHAIN {
            let Some(e) = self.threads.get_mut(&t) else { return };
            let new = e.lenders.iter().map(|l| l.pri).fold(e.base, u8::max);
            if new == e.eff {
                return;
            }
            e.eff = new;
            changes.retain(|&(x, _)| x != t);
            changes.push((t, new));
            let Some(lock) = e.blocked_on else { return };
            let Some(o) = self.owner(lock) else { return };
            if let Some(oe) = self.threads.get_mut(&o) {
                for l in oe.lenders.iter_mut().filter(|l| l.thread == t && l.lock == lock) {
                    l.pri = new;
                }
            }
            t = o;
        }
    }

    fn forget_if_idle(&mut self, t: ThreadKey) {
        if let Some(e) = self.threads.get(&t) {
            if e.lenders.is_empty() && e.blocked_on.is_none() && e.eff == e.base {
                self.threads.remove(&t);
            }
        }
    }

    /// Checks the book's invariant (tests): every known thread's effective priority is the
    /// maximum of its base and its lenders' priorities, and every lender's priority is the
    /// lender's current effective priority.
    pub fn check(&self) -> Result<(), PiViolation> {
        for (&t, e) in &self.threads {
            let want = e.lenders.iter().map(|l| l.pri).fold(e.base, u8::max);
            if e.eff != want {
                return Err(PiViolation::Effective { thread: t, eff: e.eff, want });
            }
            for l in &e.lenders {
                let lender_eff = self.threads.get(&l.thread).map(|x| x.eff);
                if lender_eff != Some(l.pri) {
                    return Err(PiViolation::StaleLoan {
                        thread: t,
                        lender: l.thread,
                        lends: l.pri,
                        lender_eff,
                    });
                }
            }
        }
        Ok(())
    }
}

/// A broken invariant of the [`PiBook`] ([`PiBook::check`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PiViolation {
    /// A thread's effective priority is not the maximum of its base and its lenders'.
    Effective {
        /// The thread.
        thread: ThreadKey,
        /// Its effective priority.
        eff: u8,
        /// max(base, lenders).
        want: u8,
    },
    /// A lender's recorded loan differs from the lender's effective priority now.
    StaleLoan {
        /// The borrower.
        thread: ThreadKey,
        /// The lender.
        lender: ThreadKey,
        /// The priority recorded as lent.
        lends: u8,
        /// The lender's effective priority (None: not in the book).
        lender_eff: Option<u8>,
    },
}

impl core::fmt::Display for PiViolation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            PiViolation::Effective { thread, eff, want } => {
                write!(f, "thread {thread:#x}: eff {eff} != max(base, lenders) {want}")
            }
            PiViolation::StaleLoan { thread, lender, lends, lender_eff } => {
                write!(f, "thread {thread:#x}: lender {lender:#x} lends {lends} but has eff {lender_eff:?}")
            }
        }
    }
}
