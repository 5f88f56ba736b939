//! A source's interrupt-thread priority (`Source::set_thread_priority`, as `chrt` sets a
//! Linux irq thread's): the dedicated thread and the pool ithreads run the handler at it;
//! the pool goes back to its own priority between runs; direct and pinned sources refuse.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use host_machine::{checked, spin_until, HostEnv, HostMachine, HostSystem, Intr};
use intr::{IntrFlags, Model, NoHandlerThread, SourceSpec};
use ipl::Ipl;
use sched::{Priority, SchedEnv};

const T: u64 = if cfg!(miri) { 3_600_000_000_000 } else { 20_000_000_000 };

fn spec(name: &'static str, vector: u8, model: Model) -> SourceSpec {
    SourceSpec {
        name: name.into(),
        vector,
        ipl: Ipl::Vm,
        flags: IntrFlags::MPSAFE,
        model: Some(model),
        thread_priority: None,
    }
}

fn pri(p: u8) -> Priority {
    Priority::new(p).unwrap()
}

/// A handler that records the priority it ran at (last) and counts runs and mismatches.
struct Seen {
    runs: AtomicU64,
    last: AtomicU64,
    wrong: AtomicU64,
}

fn recording(want: Option<u8>) -> (Arc<Seen>, intr::Handler) {
    let seen = Arc::new(Seen { runs: AtomicU64::new(0), last: AtomicU64::new(0), wrong: AtomicU64::new(0) });
    let s = seen.clone();
    let h: intr::Handler = Box::new(move |_| {
        let p = HostEnv::sched().current().priority().get() as u64;
        s.last.store(p, Ordering::SeqCst);
        if want.is_some_and(|w| w as u64 != p) {
            s.wrong.fetch_add(1, Ordering::SeqCst);
        }
        s.runs.fetch_add(1, Ordering::SeqCst);
    });
    (seen, h)
}

fn wait(cond: impl FnMut() -> bool, what: &str) {
    assert!(spin_until(T, cond), "timed out waiting for {what}");
}

#[test]
fn direct_and_pinned_sources_have_no_thread_to_set() {
    let sys = HostSystem::boot(1);
    let intr: &'static Intr = sys.intr;
    sys.run(move |_| {
        for (name, v, m) in [("t.tp.direct", 0x50, Model::Direct), ("t.tp.pinned", 0x51, Model::Pinned)] {
            let (_, h) = recording(None);
            let handle = intr.establish(spec(name, v, m), None, Some(h)).expect("establish");
            assert_eq!(handle.source().thread_priority(), None);
            assert_eq!(
                handle.set_thread_priority(Some(pri(60))),
                Err(NoHandlerThread { name: name.into(), model: m })
            );
        }
    });
}

#[test]
fn the_dedicated_thread_runs_at_the_priority_set() {
    let sys = HostSystem::boot(2);
    let intr: &'static Intr = sys.intr;
    sys.run(move |_| {
        let (seen, h) = recording(None);
        let handle =
            intr.establish(spec("t.tp.ded", 0x52, Model::Dedicated), None, Some(h)).expect("establish");
        let default = handle.source().thread_priority().expect("a thread");
        HostMachine::raise(1, 0x52);
        wait(|| seen.runs.load(Ordering::SeqCst) == 1, "the first run");
        assert_eq!(seen.last.load(Ordering::SeqCst), default.get() as u64, "the IPL's band by default");
        handle.set_thread_priority(Some(pri(60))).expect("a dedicated source has a thread");
        assert_eq!(handle.source().thread_priority(), Some(pri(60)));
        HostMachine::raise(0, 0x52);
        wait(|| seen.runs.load(Ordering::SeqCst) == 2, "the second run");
        assert_eq!(seen.last.load(Ordering::SeqCst), 60);
        handle.set_thread_priority(None).unwrap();
        HostMachine::raise(1, 0x52);
        wait(|| seen.runs.load(Ordering::SeqCst) == 3, "the third run");
        assert_eq!(seen.last.load(Ordering::SeqCst), default.get() as u64, "back to the default");
        assert_eq!(seen.runs.load(Ordering::SeqCst), 3, "a priority change ran no handler");
    });
}

/// Two pool sources, one at priority 50 and one at the pool's own, raised from every CPU at
/// once, many in flight: every run of each is at its source's priority (the ithreads switch
/// between them), none is lost.
#[test]
fn pool_ithreads_take_each_sources_priority_for_its_runs() {
    let ncpus = 3;
    let sys = HostSystem::boot(ncpus);
    let intr: &'static Intr = sys.intr;
    sys.run(move |sched| {
        let pool_pri = intr::pool::Pool::<HostEnv>::default_priority();
        let (low, hl) = recording(Some(50));
        let (plain, hp) = recording(Some(pool_pri.get()));
        let a = intr.establish(spec("t.tp.pool50", 0x53, Model::Pool), None, Some(hl)).expect("establish");
        let b = intr.establish(spec("t.tp.pool", 0x54, Model::Pool), None, Some(hp)).expect("establish");
        a.set_thread_priority(Some(pri(50))).unwrap();
        const N: u64 = if cfg!(miri) { 10 } else { 300 };
        let merged = Arc::new(AtomicU64::new(0));
        let raisers: Vec<_> = (0..ncpus)
            .map(|cpu| {
                let merged = merged.clone();
                sched.spawn(
                    "raiser",
                    Priority::KTHREAD,
                    Some(cpu),
                    checked(move || {
                        for i in 0..N {
                            for v in [0x53, 0x54] {
                                if !HostMachine::raise((cpu + i as usize) % ncpus, v) {
                                    merged.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            HostMachine::poll_interrupts();
                        }
                    }),
                )
            })
            .collect();
        for r in raisers {
            r.join();
        }
        let spl_merged = || (0..ncpus).map(|c| HostEnv::spl().stats(c).merged).sum::<u64>();
        let delivered = || 2 * N * ncpus as u64 - merged.load(Ordering::SeqCst) - spl_merged();
        wait(
            || low.runs.load(Ordering::SeqCst) + plain.runs.load(Ordering::SeqCst) == delivered(),
            "every delivered interrupt handled",
        );
        assert_eq!(
            low.wrong.load(Ordering::SeqCst),
            0,
            "a run of the priority-50 source at another priority"
        );
        assert_eq!(plain.wrong.load(Ordering::SeqCst), 0, "a run of the plain source at another priority");
        assert!(low.runs.load(Ordering::SeqCst) > 0 && plain.runs.load(Ordering::SeqCst) > 0);
        drop((a, b));
    });
}

/// The priority given at establish time (`SourceSpec::thread_priority`, as a driver sets it):
/// the dedicated thread and the pool ithreads run the first handler at it, the sysctl's
/// setter changes it afterwards, and under direct and pinned, which give the handler no
/// thread of its own, it is ignored rather than refused (a driver does not pick the model).
#[test]
fn a_priority_given_at_establish_is_the_threads_from_the_first_run() {
    let sys = HostSystem::boot(2);
    let intr: &'static Intr = sys.intr;
    sys.run(move |_| {
        for (name, v, m) in [("t.tp.est.ded", 0x55, Model::Dedicated), ("t.tp.est.pool", 0x56, Model::Pool)] {
            let (seen, h) = recording(Some(55));
            let spec = SourceSpec { thread_priority: Some(pri(55)), ..spec(name, v, m) };
            let handle = intr.establish(spec, None, Some(h)).expect("establish");
            assert_eq!(handle.source().thread_priority(), Some(pri(55)), "{name}");
            assert!(handle.source().thread_priority_is_set(), "{name}");
            for (k, cpu) in [0usize, 1, 0].into_iter().enumerate() {
                HostMachine::raise(cpu, v);
                wait(|| seen.runs.load(Ordering::SeqCst) == k as u64 + 1, "a run");
            }
            assert_eq!(seen.wrong.load(Ordering::SeqCst), 0, "{name}: a run at another priority than 55");
            handle.set_thread_priority(Some(pri(61))).unwrap();
            assert_eq!(handle.source().thread_priority(), Some(pri(61)), "{name}: changed afterwards");
        }
        for (name, v, m) in
            [("t.tp.est.direct", 0x57, Model::Direct), ("t.tp.est.pinned", 0x58, Model::Pinned)]
        {
            let (seen, h) = recording(None);
            let spec = SourceSpec { thread_priority: Some(pri(55)), ..spec(name, v, m) };
            let handle = intr.establish(spec, None, Some(h)).expect("establish: the priority is ignored");
            assert_eq!(handle.source().thread_priority(), None, "{name}");
            assert!(!handle.source().thread_priority_is_set(), "{name}");
            HostMachine::raise(0, v);
            wait(|| seen.runs.load(Ordering::SeqCst) == 1, "the handler runs");
        }
    });
}
