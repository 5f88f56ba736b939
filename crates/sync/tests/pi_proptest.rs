//! Property tests of the priority-inheritance bookkeeping ([`sync::pi::PiBook`]).
//!
//! Random sequences of acquire / block / release / time-out over a small universe of threads
//! and locks (mutex semantics: one owner per lock), checked after every step against an
//! independent model that knows only who owns what and who waits on what. The model computes
//! every thread's effective priority from scratch (the maximum of its base and the effective
//! priorities of every thread blocked, directly or through chains of owners, on the locks it
//! owns), and hands a released lock to the most urgent waiter, first come among equals, as the
//! real turnstile does.

use proptest::prelude::*;
use sync::pi::{Deadlock, LockKey, PiBook, ThreadKey};

const NTHREADS: usize = 6;
const NLOCKS: usize = 4;

/// Thread `i`'s key (an address-like number).
fn tk(i: usize) -> ThreadKey {
    0x1000 + 0x40 * i
}

/// Lock `l`'s key.
fn lk(l: usize) -> LockKey {
    0x10_0000 + 0x100 * l
}

/// The independent model: owners, waits and FIFO queues, nothing derived.
struct Model {
    base: [u8; NTHREADS],
    owner: [Option<usize>; NLOCKS],
    blocked_on: [Option<usize>; NTHREADS],
    /// Waiters of each lock in arrival order.
    queue: [Vec<usize>; NLOCKS],
}

impl Model {
    fn new(base: [u8; NTHREADS]) -> Self {
        Model { base, owner: [None; NLOCKS], blocked_on: [None; NTHREADS], queue: Default::default() }
    }

    /// Effective priority, computed from scratch: max(base, eff of every direct waiter on
    /// every lock `t` owns) — recursion carries it through chains. The model never holds a
    /// cycle (blocks that would close one are refused), so this terminates.
    fn eff(&self, t: usize) -> u8 {
        let mut p = self.base[t];
        for l in 0..NLOCKS {
            if self.owner[l] == Some(t) {
                for &w in &self.queue[l] {
                    p = p.max(self.eff(w));
                }
            }
        }
        p
    }

    /// Whether `t` has lenders: threads blocked on a lock it owns.
    fn has_lenders(&self, t: usize) -> bool {
        (0..NLOCKS).any(|l| self.owner[l] == Some(t) && !self.queue[l].is_empty())
    }

    /// The owner chain from `lock` as the book should report it on a deadlock: (lock, owner)
    /// pairs, following each owner to the owner of the lock it is blocked on; `Some` iff the
    /// chain reaches `waiter`.
    fn cycle(&self, waiter: usize, lock: usize) -> Option<Vec<(LockKey, ThreadKey)>> {
        let mut chain = Vec::new();
        let mut l = lock;
        for _ in 0..=NTHREADS {
            let o = self.owner[l]?;
            chain.push((lk(l), tk(o)));
            if o == waiter {
                return Some(chain);
            }
            l = self.blocked_on[o]?;
        }
        panic!("model holds a cycle of owners: {chain:?}");
    }

    /// The waiter a release hands `lock` to: the most urgent, first come among equals.
    fn most_urgent(&self, lock: usize) -> Option<usize> {
        let q = &self.queue[lock];
        let best = q.iter().map(|&w| self.eff(w)).max()?;
        q.iter().copied().find(|&w| self.eff(w) == best)
    }

    fn owned_by(&self, t: usize) -> Vec<usize> {
        (0..NLOCKS).filter(|&l| self.owner[l] == Some(t)).collect()
    }
}

/// One step, interpreted against the current state (steps that make no sense are skipped).
#[derive(Clone, Debug)]
enum Op {
    /// Thread takes a free lock, or blocks on a held one (its own included: a deadlock).
    Lock(usize, usize),
    /// Thread releases the `k`-th lock it owns (modulo how many it owns).
    Unlock(usize, usize),
    /// A blocked thread gives up waiting (timeout): its loan is withdrawn.
    Timeout(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..NTHREADS, 0..NLOCKS).prop_map(|(t, l)| Op::Lock(t, l)),
        4 => (0..NTHREADS, 0..NLOCKS).prop_map(|(t, k)| Op::Unlock(t, k)),
        1 => (0..NTHREADS).prop_map(Op::Timeout),
    ]
}

/// Everything the book must agree with the model on, after every step.
fn check_against_model(book: &PiBook, m: &Model, step: usize) -> Result<(), TestCaseError> {
    if let Err(e) = book.check() {
        return Err(TestCaseError::fail(format!("step {step}: book.check(): {e}")));
    }
    for t in 0..NTHREADS {
        let want = m.eff(t);
        let got = book.effective(tk(t));
        if m.has_lenders(t) || m.blocked_on[t].is_some() {
            prop_assert_eq!(got, Some(want), "step {}: effective priority of thread {}", step, t);
        } else {
            prop_assert_eq!(want, m.base[t], "model: thread {} without lenders above its base", t);
            prop_assert!(
                got.is_none() || got == Some(m.base[t]),
                "step {}: idle thread {} (base {}) reports {:?}",
                step,
                t,
                m.base[t],
                got
            );
        }
        prop_assert_eq!(
            book.blocked_on(tk(t)),
            m.blocked_on[t].map(lk),
            "step {}: lock thread {} is blocked on",
            step,
            t
        );
        // The lender list is exactly the direct waiters on the locks `t` owns, each lending
        // its current effective priority.
        let mut got_lenders: Vec<(LockKey, ThreadKey, u8)> =
            book.lenders(tk(t)).iter().map(|l| (l.lock, l.thread, l.pri)).collect();
        got_lenders.sort_unstable();
        let mut want_lenders: Vec<(LockKey, ThreadKey, u8)> = m
            .owned_by(t)
            .into_iter()
            .flat_map(|l| m.queue[l].iter().map(move |&w| (l, w)))
            .map(|(l, w)| (lk(l), tk(w), m.eff(w)))
            .collect();
        want_lenders.sort_unstable();
        prop_assert_eq!(got_lenders, want_lenders, "step {}: lenders of thread {}", step, t);
    }
    for l in 0..NLOCKS {
        if !m.queue[l].is_empty() {
            prop_assert_eq!(book.owner(lk(l)), m.owner[l].map(tk), "step {}: owner of lock {}", step, l);
        }
    }
    Ok(())
}

fn run(base: [u8; NTHREADS], ops: &[Op]) -> Result<(), TestCaseError> {
    let mut book = PiBook::new();
    let mut m = Model::new(base);
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Lock(t, l) => {
                if m.blocked_on[t].is_some() {
                    continue;
                }
                match m.owner[l] {
                    None => m.owner[l] = Some(t), // uncontended: the book is not told
                    Some(o) => {
                        let expect = m.cycle(t, l);
                        let got = book.block(tk(t), base[t], lk(l), Some((tk(o), base[o])));
                        match (got, expect) {
                            (Ok(_), None) => {
                                m.blocked_on[t] = Some(l);
                                m.queue[l].push(t);
                            }
                            (Err(Deadlock { chain }), Some(want)) => {
                                prop_assert_eq!(chain, want, "step {}: deadlock chain", step);
                            }
                            (got, want) => {
                                return Err(TestCaseError::fail(format!(
                                    "step {step}: thread {t} blocks on lock {l} (owner {o}): book says \
                                     {got:?}, model's cycle {want:?}"
                                )));
                            }
                        }
                    }
                }
            }
            Op::Unlock(t, k) => {
                if m.blocked_on[t].is_some() {
                    continue;
                }
                let owned = m.owned_by(t);
                if owned.is_empty() {
                    continue;
                }
                let l = owned[k % owned.len()];
                let heir = m.most_urgent(l);
                book.release(lk(l), tk(t), heir.map(tk));
                m.owner[l] = heir;
                if let Some(h) = heir {
                    m.queue[l].retain(|&w| w != h);
                    m.blocked_on[h] = None;
                }
            }
            Op::Timeout(t) => {
                let Some(l) = m.blocked_on[t] else { continue };
                book.unblock(tk(t));
                m.blocked_on[t] = None;
                m.queue[l].retain(|&w| w != t);
            }
        }
        check_against_model(&book, &m, step)?;
    }
    // Drain: release everything (timeouts for the blocked), then the book must be empty of
    // loans.
    for t in 0..NTHREADS {
        if let Some(l) = m.blocked_on[t] {
            book.unblock(tk(t));
            m.blocked_on[t] = None;
            m.queue[l].retain(|&w| w != t);
        }
    }
    for l in 0..NLOCKS {
        if let Some(o) = m.owner[l] {
            book.release(lk(l), tk(o), None);
            m.owner[l] = None;
        }
    }
    check_against_model(&book, &m, ops.len())?;
    for (t, &b) in base.iter().enumerate() {
        prop_assert!(book.lenders(tk(t)).is_empty());
        prop_assert!(book.effective(tk(t)).is_none_or(|p| p == b));
    }
    Ok(())
}

/// The regression file, except under Miri, whose isolation has no file system (proptest would
/// stop at `getcwd`); a failure there still prints its minimal case.
fn persistence() -> Option<Box<dyn proptest::test_runner::FailurePersistence>> {
    if cfg!(miri) {
        None
    } else {
        ProptestConfig::default().failure_persistence
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 20 } else { 2000 }, failure_persistence: persistence(), ..ProptestConfig::default() })]

    #[test]
    fn effective_priority_is_max_of_base_and_lenders_at_every_step(
        base in proptest::array::uniform6(1u8..120),
        ops in proptest::collection::vec(op(), 1..160),
    ) {
        run(base, &ops)?;
    }

    /// Few distinct priorities: many ties, so the FIFO-among-equals hand-off and the "no
    /// change" early exits of the propagation are exercised.
    #[test]
    fn with_ties(
        base in proptest::array::uniform6(prop_oneof![Just(10u8), Just(50u8), Just(90u8)]),
        ops in proptest::collection::vec(op(), 1..160),
    ) {
        run(base, &ops)?;
    }
}

// Targeted cases.

/// D waits on A's lock, A on B's, B on C's: C runs at D's priority, and each release withdraws
/// exactly the loan that went through the released lock.
#[test]
fn three_lock_chain() {
    let (a, b, c, d) = (tk(0), tk(1), tk(2), tk(3));
    let (la, lb, lc) = (lk(0), lk(1), lk(2));
    let mut book = PiBook::new();
    // A owns la, B owns lb, C owns lc. A (10) blocks on lb, B (20) blocks on lc.
    book.block(a, 10, lb, Some((b, 20))).unwrap();
    book.block(b, 20, lc, Some((c, 5))).unwrap();
    assert_eq!(book.effective(c), Some(20));
    // D (100) blocks on la: lends to A, through A to B, through B to C.
    let changes = book.block(d, 100, la, Some((a, 10))).unwrap();
    book.check().unwrap();
    assert_eq!(book.effective(a), Some(100));
    assert_eq!(book.effective(b), Some(100));
    assert_eq!(book.effective(c), Some(100));
    let mut changed: Vec<_> = changes.iter().map(|&(t, _)| t).collect();
    changed.sort_unstable();
    assert_eq!(changed, vec![a, b, c]);
    assert!(changes.iter().all(|&(_, p)| p == 100));

    // C releases lc, handing it to B: C drops to exactly its base, B keeps D's loan via A.
    book.release(lc, c, Some(b));
    book.check().unwrap();
    assert!(book.effective(c).is_none_or(|p| p == 5));
    assert_eq!(book.effective(b), Some(100));
    assert_eq!(book.blocked_on(b), None);
    // B releases lb to A: B back to 20, A keeps D's loan (D waits on la, which A owns).
    book.release(lb, b, Some(a));
    book.check().unwrap();
    assert!(book.effective(b).is_none_or(|p| p == 20));
    assert_eq!(book.effective(a), Some(100));
    // A releases la to D: everyone at base.
    book.release(la, a, Some(d));
    book.check().unwrap();
    assert!(book.effective(a).is_none_or(|p| p == 10));
    assert!(book.effective(d).is_none_or(|p| p == 100));
    for t in [a, b, c, d] {
        assert!(book.lenders(t).is_empty());
    }
}

/// The top of the chain giving up (timeout) withdraws the loan all the way down.
#[test]
fn three_lock_chain_timeout_withdraws_along_the_chain() {
    let (a, b, c, d) = (tk(0), tk(1), tk(2), tk(3));
    let (la, lb, lc) = (lk(0), lk(1), lk(2));
    let mut book = PiBook::new();
    book.block(a, 10, lb, Some((b, 20))).unwrap();
    book.block(b, 20, lc, Some((c, 5))).unwrap();
    book.block(d, 100, la, Some((a, 10))).unwrap();
    assert_eq!(book.effective(c), Some(100));
    book.unblock(d);
    book.check().unwrap();
    assert_eq!(book.effective(a), Some(10));
    assert_eq!(book.effective(b), Some(20));
    assert_eq!(book.effective(c), Some(20));
}

/// The classic saved-priority bug: T owns two locks with waiters; releasing one must keep the
/// loan owed through the other (not restore a priority saved when the first was taken).
#[test]
fn release_one_of_two_locks_keeps_the_other_loan() {
    let t = tk(0);
    let (h1, h2) = (tk(1), tk(2));
    let (l1, l2) = (lk(0), lk(1));
    let mut book = PiBook::new();
    book.block(h2, 50, l2, Some((t, 10))).unwrap();
    book.block(h1, 80, l1, Some((t, 10))).unwrap();
    assert_eq!(book.effective(t), Some(80));
    // Releasing the lock that carries the higher loan: T falls to the other loan, not base.
    book.release(l1, t, Some(h1));
    book.check().unwrap();
    assert_eq!(book.effective(t), Some(50));
    book.release(l2, t, Some(h2));
    book.check().unwrap();
    assert!(book.effective(t).is_none_or(|p| p == 10));

    // The other order: releasing the lock with the lower loan keeps the higher one.
    let mut book = PiBook::new();
    book.block(h1, 80, l1, Some((t, 10))).unwrap();
    book.block(h2, 50, l2, Some((t, 10))).unwrap();
    book.release(l2, t, Some(h2));
    book.check().unwrap();
    assert_eq!(book.effective(t), Some(80));
    book.release(l1, t, None);
    book.check().unwrap();
    assert!(book.effective(t).is_none_or(|p| p == 10));
}

/// Handing a lock to its most urgent waiter moves the remaining waiters' loans to the heir.
#[test]
fn hand_off_moves_remaining_loans_to_the_heir() {
    let o = tk(0);
    let (w1, w2, w3) = (tk(1), tk(2), tk(3));
    let l = lk(0);
    let mut book = PiBook::new();
    book.block(w1, 30, l, Some((o, 1))).unwrap();
    book.block(w2, 90, l, Some((o, 1))).unwrap();
    book.block(w3, 60, l, Some((o, 1))).unwrap();
    assert_eq!(book.effective(o), Some(90));
    book.release(l, o, Some(w2));
    book.check().unwrap();
    assert!(book.effective(o).is_none_or(|p| p == 1));
    assert_eq!(book.owner(l), Some(w2));
    assert_eq!(book.effective(w2), Some(90));
    let mut lenders: Vec<_> = book.lenders(w2).iter().map(|x| (x.thread, x.pri)).collect();
    lenders.sort_unstable();
    assert_eq!(lenders, vec![(w1, 30), (w3, 60)]);
    book.release(l, w2, Some(w3));
    book.check().unwrap();
    assert_eq!(book.effective(w3), Some(60));
    assert_eq!(book.lenders(w3).len(), 1);
}

/// A waits for B's lock while B waits for A's: refused, the cycle named, nothing recorded.
#[test]
fn deadlock_is_reported_with_its_chain_and_not_recorded() {
    let (a, b) = (tk(0), tk(1));
    let (la, lb) = (lk(0), lk(1));
    let mut book = PiBook::new();
    book.block(a, 10, lb, Some((b, 20))).unwrap();
    let err = book.block(b, 20, la, Some((a, 10))).unwrap_err();
    assert_eq!(err.chain, vec![(la, a), (lb, b)]);
    book.check().unwrap();
    assert_eq!(book.blocked_on(b), None);
    assert!(book.lenders(a).is_empty());
    assert_eq!(book.effective(b), Some(20));
    // Blocking on a lock one owns is the one-step cycle.
    let err = book.block(b, 20, lb, Some((b, 20))).unwrap_err();
    assert_eq!(err.chain, vec![(lb, b)]);
}
