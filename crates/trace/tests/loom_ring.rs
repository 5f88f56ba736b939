//! Loom model of the ring protocol as `crates/trace` writes it (its atomics are loom's under
//! `--cfg loom`): a reader racing a writer that wraps the ring never accepts a record whose
//! fields come from two different writes, and sees every record that was complete before it
//! looked and not yet overwritten.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p ithreads-trace --test loom_ring --release --target-dir target/loom`
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use trace::{Kind, Trace};

#[test]
fn a_reader_racing_a_wrapping_writer_accepts_only_whole_records() {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(|| {
        // Two slots, three records: the third overwrites the first while the reader reads.
        let t = Arc::new(Trace::new(1, 2));
        let w = t.clone();
        let writer = thread::spawn(move || {
            for i in 1..=3u64 {
                w.record(0, i, Kind::Switch, i * 10, i * 100);
            }
        });
        let rs = t.records(0);
        for r in &rs.records {
            // Fields of one write only: ts i, thread 10 i, arg 100 i, sequence number i - 1.
            assert_eq!((r.thread, r.arg, r.seq), (r.ts * 10, r.ts * 100, r.ts - 1), "a torn record: {r}");
        }
        writer.join().unwrap();
        // At rest: the last two, whole.
        let rs = t.records(0);
        assert_eq!(rs.torn, 0);
        assert_eq!(rs.records.iter().map(|r| r.ts).collect::<Vec<_>>(), [2, 3]);
    });
}
