//! Property tests of priority inheritance over the turnstile core ([`sync::pi`]): the same
//! intrusive code the kernel's turnstiles run (`block`, `hand_to`, `unblock`, `recompute`),
//! driven with plain test threads.
//!
//! Random sequences of acquire / block / release / time-out over a small universe of threads
//! and locks (mutex semantics: one owner per lock), checked after every step against an
//! independent model that knows only who owns what and who waits on what. The model computes
//! every thread's effective priority from scratch (the maximum of its base and the effective
//! priorities of every thread blocked, directly or through chains of owners, on the locks it
//! owns), and hands a released lock to the most urgent waiter, first come among equals, as the
//! real turnstile does. The turnstiles themselves are checked too: every thread not waiting
//! holds one, a lock with `n` waiters has one active turnstile with `n` waiters.

use std::cell::Cell;
use std::mem::ManuallyDrop;

use proptest::prelude::*;
use sync::pi::{self, Chain, PiThread, TsLinks};

const NTHREADS: usize = 6;
const NLOCKS: usize = 4;

type LockKey = usize;
type ThreadKey = usize;

/// A test thread: priorities and the links every kernel thread carries.
struct Th {
    base: u8,
    eff: Cell<u8>,
    links: TsLinks<Th>,
}

impl PiThread for Th {
    fn links(&self) -> &TsLinks<Self> {
        &self.links
    }
    fn base_pri(&self) -> u8 {
        self.base
    }
    fn eff_pri(&self) -> u8 {
        self.eff.get()
    }
    fn set_eff_pri(&self, pri: u8) {
        self.eff.set(pri);
    }
}

/// The threads and two hash chains (locks alternate between them, so a chain holds several
/// turnstiles and an owner chain crosses chains).
struct World {
    th: ManuallyDrop<Vec<Th>>,
    chains: [Chain<Th>; 2],
}

impl World {
    fn new(base: &[u8]) -> Self {
        let th = base.iter().map(|&b| Th { base: b, eff: Cell::new(b), links: TsLinks::default() }).collect();
        World { th: ManuallyDrop::new(th), chains: [Chain::new(), Chain::new()] }
    }
    fn t(&self, i: usize) -> &Th {
        &self.th[i]
    }
    fn idx(&self, key: usize) -> usize {
        (0..self.th.len()).find(|&i| tk(self, i) == key).expect("a thread of this world")
    }
    fn chain(&mut self, l: usize) -> &mut Chain<Th> {
        &mut self.chains[l % 2]
    }
    /// `t` blocks on lock `l` owned by `o`.
    #[allow(clippy::result_large_err)]
    fn block(&mut self, t: usize, l: usize, o: usize) -> Result<(), pi::Deadlock> {
        let (me, owner): (*const Th, *const Th) = (self.t(t), self.t(o));
        // SAFETY: the threads live as long as the world (the vector never grows); the chain
        // is a separate field.
        pi::block(self.chain(l), lk(l), unsafe { &*me }, true, Some(unsafe { &*owner }))
    }
    /// The owner `o` of lock `l` releases it: to the turnstile's heir, which is returned.
    fn release(&mut self, l: usize, o: usize) -> Option<usize> {
        let old: *const Th = self.t(o);
        let chain: *mut Chain<Th> = self.chain(l);
        // SAFETY: as in `block`.
        let chain = unsafe { &mut *chain };
        let ts = chain.lookup(lk(l))?;
        let ts: *const pi::Turnstile<Th> = ts;
        // SAFETY: active turnstiles live while their waiters wait.
        let ts = unsafe { &*ts };
        let heir: *const Th = pi::most_urgent(ts).expect("an active turnstile has waiters");
        // SAFETY: as in `block`.
        pi::hand_to(chain, ts, Some(unsafe { &*old }), unsafe { &*heir });
        Some(self.idx(heir as usize))
    }
    fn timeout(&mut self, t: usize, l: usize) {
        let me: *const Th = self.t(t);
        // SAFETY: as in `block`.
        pi::unblock(self.chain(l), unsafe { &*me });
    }
    fn eff(&self, t: usize) -> u8 {
        self.t(t).eff.get()
    }
    fn blocked_on(&self, t: usize) -> Option<LockKey> {
        self.t(t).links.blocked_on().map(|ts| ts.lock())
    }
    fn lenders(&self, t: usize) -> Vec<(LockKey, ThreadKey, u8)> {
        let mut v = Vec::new();
        self.t(t).links.for_each_contested(|ts| {
            ts.for_each_waiter(|w| v.push((ts.lock(), w as *const Th as usize, w.eff.get())))
        });
        v
    }
    /// Drops the threads (only when every one holds its turnstile and owns no contested lock).
    fn finish(mut self) {
        // SAFETY: taken once, here.
        drop(unsafe { ManuallyDrop::take(&mut self.th) });
    }
}

/// Thread `i`'s key: its address.
fn tk(w: &World, i: usize) -> ThreadKey {
    w.t(i) as *const Th as usize
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

    /// The owner chain from `lock` as the book should report it on a deadlock: (lock, owner)
    /// pairs, following each owner to the owner of the lock it is blocked on; `Some` iff the
    /// chain reaches `waiter`.
    fn cycle(&self, w: &World, waiter: usize, lock: usize) -> Option<Vec<(LockKey, ThreadKey)>> {
        let mut chain = Vec::new();
        let mut l = lock;
        for _ in 0..=NTHREADS {
            let o = self.owner[l]?;
            chain.push((lk(l), tk(w, o)));
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

/// Everything the turnstiles must agree with the model on, after every step.
fn check_against_model(w: &World, m: &Model, step: usize) -> Result<(), TestCaseError> {
    for t in 0..NTHREADS {
        if let Err(e) = pi::check(w.t(t)) {
            return Err(TestCaseError::fail(format!("step {step}: pi::check: {e}")));
        }
        prop_assert_eq!(w.eff(t), m.eff(t), "step {}: effective priority of thread {}", step, t);
        prop_assert_eq!(
            w.blocked_on(t),
            m.blocked_on[t].map(lk),
            "step {}: lock thread {} is blocked on",
            step,
            t
        );
        prop_assert_eq!(
            w.t(t).links.has_turnstile(),
            m.blocked_on[t].is_none(),
            "step {}: thread {} holds a turnstile iff it does not wait",
            step,
            t
        );
        // The lender list is exactly the direct waiters on the locks `t` owns, each lending
        // its current effective priority.
        let mut got = w.lenders(t);
        got.sort_unstable();
        let mut want: Vec<(LockKey, ThreadKey, u8)> = m
            .owned_by(t)
            .into_iter()
            .flat_map(|l| m.queue[l].iter().map(move |&x| (l, x)))
            .map(|(l, x)| (lk(l), tk(w, x), m.eff(x)))
            .collect();
        want.sort_unstable();
        prop_assert_eq!(got, want, "step {}: lenders of thread {}", step, t);
    }
    for l in 0..NLOCKS {
        let ts = w.chains[l % 2].lookup(lk(l));
        prop_assert_eq!(
            ts.map_or(0, |ts| ts.waiters()),
            m.queue[l].len(),
            "step {}: waiters of lock {}",
            step,
            l
        );
        if let Some(ts) = ts {
            let mut q = Vec::new();
            ts.for_each_waiter(|t| q.push(t as *const Th as usize));
            let want: Vec<_> = m.queue[l].iter().map(|&x| tk(w, x)).collect();
            prop_assert_eq!(q, want, "step {}: queue of lock {}", step, l);
            prop_assert_eq!(
                ts.owner().map(|o| o as *const Th as usize),
                m.owner[l].map(|o| tk(w, o)),
                "step {}: owner of lock {}",
                step,
                l
            );
        }
    }
    Ok(())
}

fn run(base: [u8; NTHREADS], ops: &[Op]) -> Result<(), TestCaseError> {
    let mut w = World::new(&base);
    let mut m = Model::new(base);
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Lock(t, l) => {
                if m.blocked_on[t].is_some() {
                    continue;
                }
                match m.owner[l] {
                    None => m.owner[l] = Some(t), // uncontended: the turnstiles are not told
                    Some(o) => {
                        let expect = m.cycle(&w, t, l);
                        match (w.block(t, l, o), expect) {
                            (Ok(()), None) => {
                                m.blocked_on[t] = Some(l);
                                m.queue[l].push(t);
                            }
                            (Err(d), Some(want)) => {
                                prop_assert_eq!(d.chain().to_vec(), want, "step {}: deadlock chain", step);
                            }
                            (got, want) => {
                                return Err(TestCaseError::fail(format!(
                                    "step {step}: thread {t} blocks on lock {l} (owner {o}): turnstile says \
                                     {:?}, model's cycle {want:?}",
                                    got.map_err(|d| d.chain().to_vec())
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
                let got = w.release(l, t);
                prop_assert_eq!(got, heir, "step {}: heir of lock {}", step, l);
                m.owner[l] = heir;
                if let Some(h) = heir {
                    m.queue[l].retain(|&x| x != h);
                    m.blocked_on[h] = None;
                }
            }
            Op::Timeout(t) => {
                let Some(l) = m.blocked_on[t] else { continue };
                w.timeout(t, l);
                m.blocked_on[t] = None;
                m.queue[l].retain(|&x| x != t);
            }
        }
        check_against_model(&w, &m, step)?;
    }
    // Drain: time out the blocked, release everything; then no loan is left.
    for t in 0..NTHREADS {
        if let Some(l) = m.blocked_on[t] {
            w.timeout(t, l);
            m.blocked_on[t] = None;
            m.queue[l].retain(|&x| x != t);
        }
    }
    for l in 0..NLOCKS {
        if let Some(o) = m.owner[l] {
            prop_assert_eq!(w.release(l, o), None);
            m.owner[l] = None;
        }
    }
    check_against_model(&w, &m, ops.len())?;
    for (t, &b) in base.iter().enumerate() {
        prop_assert!(w.lenders(t).is_empty());
        prop_assert_eq!(w.eff(t), b);
    }
    w.finish();
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
    let (a, b, c, d) = (0, 1, 2, 3);
    let (la, lb, lc) = (0, 1, 2);
    let mut w = World::new(&[10, 20, 5, 100]);
    // A owns la, B owns lb, C owns lc. A (10) blocks on lb, B (20) blocks on lc.
    w.block(a, lb, b).unwrap();
    w.block(b, lc, c).unwrap();
    assert_eq!(w.eff(c), 20);
    // D (100) blocks on la: lends to A, through A to B, through B to C.
    w.block(d, la, a).unwrap();
    for t in 0..4 {
        pi::check(w.t(t)).unwrap();
    }
    assert_eq!((w.eff(a), w.eff(b), w.eff(c)), (100, 100, 100));
    // C releases lc, handing it to B: C drops to exactly its base, B keeps D's loan via A.
    assert_eq!(w.release(lc, c), Some(b));
    assert_eq!(w.eff(c), 5);
    assert_eq!(w.eff(b), 100);
    assert_eq!(w.blocked_on(b), None);
    // B releases lb to A: B back to 20, A keeps D's loan (D waits on la, which A owns).
    assert_eq!(w.release(lb, b), Some(a));
    assert_eq!(w.eff(b), 20);
    assert_eq!(w.eff(a), 100);
    // A releases la to D: everyone at base.
    assert_eq!(w.release(la, a), Some(d));
    assert_eq!((w.eff(a), w.eff(b), w.eff(c), w.eff(d)), (10, 20, 5, 100));
    for t in 0..4 {
        assert!(w.lenders(t).is_empty());
        assert!(w.t(t).links.has_turnstile());
    }
    w.finish();
}

/// The top of the chain giving up (timeout) withdraws the loan all the way down.
#[test]
fn three_lock_chain_timeout_withdraws_along_the_chain() {
    let (a, b, c, d) = (0, 1, 2, 3);
    let (la, lb, lc) = (0, 1, 2);
    let mut w = World::new(&[10, 20, 5, 100]);
    w.block(a, lb, b).unwrap();
    w.block(b, lc, c).unwrap();
    w.block(d, la, a).unwrap();
    assert_eq!(w.eff(c), 100);
    w.timeout(d, la);
    assert_eq!((w.eff(a), w.eff(b), w.eff(c)), (10, 20, 20));
    w.timeout(a, lb);
    w.timeout(b, lc);
    w.finish();
}

/// The classic saved-priority bug: T owns two locks with waiters; releasing one must keep the
/// loan owed through the other (not restore a priority saved when the first was taken).
#[test]
fn release_one_of_two_locks_keeps_the_other_loan() {
    let (t, h1, h2) = (0, 1, 2);
    let (l1, l2) = (0, 1);
    let mut w = World::new(&[10, 80, 50]);
    w.block(h2, l2, t).unwrap();
    w.block(h1, l1, t).unwrap();
    assert_eq!(w.eff(t), 80);
    // Releasing the lock that carries the higher loan: T falls to the other loan, not base.
    assert_eq!(w.release(l1, t), Some(h1));
    assert_eq!(w.eff(t), 50);
    assert_eq!(w.release(l2, t), Some(h2));
    assert_eq!(w.eff(t), 10);
    w.finish();

    // The other order: releasing the lock with the lower loan keeps the higher one.
    let mut w = World::new(&[10, 80, 50]);
    w.block(h1, l1, t).unwrap();
    w.block(h2, l2, t).unwrap();
    assert_eq!(w.release(l2, t), Some(h2));
    assert_eq!(w.eff(t), 80);
    assert_eq!(w.release(l1, t), Some(h1));
    assert_eq!(w.eff(t), 10);
    w.finish();
}

/// Handing a lock to its most urgent waiter moves the remaining waiters' loans to the heir,
/// and the turnstiles go round: the heir takes a spare, the last waiter the lock's own.
#[test]
fn hand_off_moves_remaining_loans_to_the_heir() {
    let (o, w1, w2, w3) = (0, 1, 2, 3);
    let l = 0;
    let mut w = World::new(&[1, 30, 90, 60]);
    w.block(w1, l, o).unwrap();
    w.block(w2, l, o).unwrap();
    w.block(w3, l, o).unwrap();
    assert_eq!(w.eff(o), 90);
    assert_eq!(w.release(l, o), Some(w2));
    assert_eq!(w.eff(o), 1);
    assert_eq!(w.chains[0].lookup(lk(l)).unwrap().owner().map(|t| t as *const Th as usize), Some(tk(&w, w2)));
    assert_eq!(w.eff(w2), 90);
    let mut lenders: Vec<_> = w.lenders(w2).iter().map(|x| (x.1, x.2)).collect();
    lenders.sort_unstable();
    let mut want = vec![(tk(&w, w1), 30), (tk(&w, w3), 60)];
    want.sort_unstable();
    assert_eq!(lenders, want);
    assert!(w.t(w2).links.has_turnstile());
    assert_eq!(w.release(l, w2), Some(w3));
    assert_eq!(w.eff(w3), 60);
    assert_eq!(w.lenders(w3).len(), 1);
    assert_eq!(w.release(l, w3), Some(w1));
    assert!(w.chains[0].lookup(lk(l)).is_none());
    w.finish();
}

/// A waits for B's lock while B waits for A's: refused, the cycle named, nothing recorded.
#[test]
fn deadlock_is_reported_with_its_chain_and_not_recorded() {
    let (a, b) = (0, 1);
    let (la, lb) = (0, 1);
    let mut w = World::new(&[10, 20]);
    w.block(a, lb, b).unwrap();
    let err = w.block(b, la, a).unwrap_err();
    assert_eq!(err.chain(), &[(lk(la), tk(&w, a)), (lk(lb), tk(&w, b))]);
    assert_eq!(w.blocked_on(b), None);
    assert!(w.lenders(a).is_empty());
    assert_eq!(w.eff(b), 20);
    assert!(w.t(b).links.has_turnstile());
    // Blocking on a lock one owns is the one-step cycle.
    let err = w.block(b, lb, b).unwrap_err();
    assert_eq!(err.chain(), &[(lk(lb), tk(&w, b))]);
    w.timeout(a, lb);
    w.finish();
}
