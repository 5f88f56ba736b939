//! The rings' protocol under concurrent writers and a reader that reads while they write.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use trace::{Kind, Record, Trace};

/// Fields a writer derives from the time, so a reader can tell a torn record it accepted.
fn consistent(r: &Record) -> bool {
    r.arg == (r.ts.wrapping_mul(3) & trace::ARG_MASK)
        && r.thread == r.ts.wrapping_add(7)
        && r.kind == kind_of(r.ts)
}

fn kind_of(ts: u64) -> Kind {
    Kind::ALL[(ts % Kind::ALL.len() as u64) as usize]
}

#[test]
fn a_reader_racing_the_writers_never_accepts_a_torn_record() {
    let ncpus = 4;
    let per = if cfg!(miri) { 200 } else { 200_000 };
    let t: Arc<Trace> = Arc::new(Trace::new(ncpus, 64));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..ncpus)
        .map(|cpu| {
            let t = t.clone();
            std::thread::spawn(move || {
                for i in 0..per {
                    let ts = (cpu as u64) << 40 | i;
                    t.record(cpu, ts, kind_of(ts), ts.wrapping_add(7), ts.wrapping_mul(3));
                }
            })
        })
        .collect();
    let reader = {
        let (t, stop) = (t.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut seen, mut torn) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                for cpu in 0..ncpus {
                    let rs = t.records(cpu);
                    torn += rs.torn;
                    let mut last = None;
                    for r in &rs.records {
                        assert!(consistent(r), "accepted a torn record: {r}");
                        assert_eq!(r.cpu as usize, cpu);
                        assert_eq!(r.ts & ((1 << 40) - 1), r.seq, "the record is not its sequence number's");
                        assert!(last.is_none_or(|l| l < r.seq), "records out of order");
                        last = Some(r.seq);
                        seen += 1;
                    }
                }
            }
            (seen, torn)
        })
    };
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let (seen, _torn) = reader.join().unwrap();
    assert!(seen > 0, "the reader saw nothing");
    // At rest: exactly the last 64 of each CPU, all complete.
    for cpu in 0..ncpus {
        let rs = t.records(cpu);
        assert_eq!(rs.torn, 0);
        assert_eq!(rs.overwritten, per - 64);
        let seqs: Vec<u64> = rs.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (per - 64..per).collect::<Vec<_>>());
        assert!(rs.records.iter().all(consistent));
    }
}

#[test]
fn nested_writers_on_one_cpu_take_their_own_slots() {
    // An interrupt on the same CPU records between a writer's fetch_add and its publish:
    // modelled by two records taken in order; neither is lost or mixed.
    let t = Trace::new(1, 8);
    t.record(0, 10, Kind::HandlerBegin, 1, 0x41);
    t.record(0, 11, Kind::IntrEnter, 1, 0x30);
    t.record(0, 12, Kind::IntrExit, 1, 0x30);
    t.record(0, 13, Kind::HandlerEnd, 1, 0x41);
    let kinds: Vec<Kind> = t.records(0).records.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [Kind::HandlerBegin, Kind::IntrEnter, Kind::IntrExit, Kind::HandlerEnd]);
}

#[test]
fn text_form_round_trips_and_names_a_bad_field() {
    for (i, &k) in Kind::ALL.iter().enumerate() {
        let r = Record {
            seq: i as u64,
            ts: 1_000 + i as u64,
            cpu: 3,
            kind: k,
            thread: 0xffff_8000_1234,
            arg: 0x41,
        };
        assert_eq!(Record::parse(&r.to_string()), Ok(r));
        assert_eq!(Kind::from_name(k.name()), Some(k));
    }
    let bad = "cpu=1 seq=2 ts=3 kind=nonsense thread=0x1 arg=0x2";
    assert_eq!(Record::parse(bad).unwrap_err().field, "kind");
    assert_eq!(Record::parse("cpu=1 seq=2 kind=switch thread=0x1 arg=0x2").unwrap_err().field, "ts");
}

#[test]
fn a_second_install_is_refused() {
    let a: &'static Trace = Box::leak(Box::new(Trace::new(1, 4)));
    let b: &'static Trace = Box::leak(Box::new(Trace::new(1, 4)));
    assert!(Trace::install(a));
    assert!(!Trace::install(b));
    assert!(std::ptr::eq(Trace::active().unwrap(), a));
}
