//! `Intr::footprint` on the host machine: the threads each model makes, and the memory of
//! the sources, counted as they come and go.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use host_machine::{HostSystem, Intr};
use intr::{IntrFlags, Model, SourceSpec};
use ipl::Ipl;

fn spec(name: String, vector: u8, model: Model) -> SourceSpec {
    SourceSpec {
        name: name.into(),
        vector,
        ipl: Ipl::Vm,
        flags: IntrFlags::MPSAFE,
        model: Some(model),
        thread_priority: None,
    }
}

fn handler() -> intr::Handler {
    let n = Arc::new(AtomicU64::new(0));
    Box::new(move |_| {
        n.fetch_add(1, Ordering::Relaxed);
    })
}

#[test]
fn each_model_holds_the_threads_it_should_and_sources_their_bytes() {
    let ncpus = 2;
    let sys = HostSystem::boot(ncpus);
    let intr: &'static Intr = sys.intr;
    sys.run(move |_| {
        let before = intr.footprint();
        assert_eq!(before.dedicated_threads, 0);
        assert!(before.thread_bytes >= sched::STACK_SIZE, "a thread counts at least its stack");

        // Three dedicated sources: three threads, one each; their bytes counted.
        let dedicated: Vec<_> = (0..3)
            .map(|i| {
                intr.establish(
                    spec(format!("t.fp.ded{i}"), 0x60 + i, Model::Dedicated),
                    None,
                    Some(handler()),
                )
            })
            .collect::<Result<_, _>>()
            .expect("establish");
        let f = intr.footprint();
        assert_eq!(f.dedicated_threads, 3);
        assert_eq!(f.sources, before.sources + 3);
        let per_source = (f.source_bytes - before.source_bytes) / 3;
        assert!(
            per_source > core::mem::size_of::<usize>() * 4,
            "a source is more than a few words: {per_source}"
        );

        // Pinned: the free list is made for every CPU at the first pinned source.
        let pinned = intr
            .establish(spec("t.fp.pin".into(), 0x68, Model::Pinned), None, Some(handler()))
            .expect("establish");
        let f = intr.footprint();
        assert_eq!(f.pinned_threads, intr.pinned.stats().limit * ncpus, "the bound's threads on every CPU");

        // Pool: within its bounds, however many sources share it.
        let pool: Vec<_> = (0..4)
            .map(|i| {
                intr.establish(spec(format!("t.fp.pool{i}"), 0x6A + i, Model::Pool), None, Some(handler()))
            })
            .collect::<Result<_, _>>()
            .expect("establish");
        let f = intr.footprint();
        let (lo, hi) = intr.pool.size_bounds();
        assert!(
            f.pool_threads >= lo && f.pool_threads <= hi,
            "{} pool threads, bounds {lo}..={hi}",
            f.pool_threads
        );
        assert_eq!(f.threads(), f.pool_threads + 3 + f.pinned_threads + f.soft_threads + f.storm_threads);
        assert_eq!(f.thread_memory(), f.threads() * f.thread_bytes);

        // Dedicated threads go with their sources; the source bytes too.
        drop(dedicated);
        let after = intr.footprint();
        assert_eq!(after.dedicated_threads, 0);
        assert_eq!(after.sources, f.sources - 3);
        assert_eq!(after.max(&f), f.max(&after));
        assert_eq!(after.max(&f).dedicated_threads, 3, "the peak keeps what was");
        drop((pinned, pool));
    });
}
