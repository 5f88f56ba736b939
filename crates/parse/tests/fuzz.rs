//! Fuzzing with proptest, part of `cargo test` (256 cases per target by default): the kernel
//! command line, the line discipline, shell words and escaping, the NIC frame classifier.
//! A long run:
//! `PROPTEST_CASES=1000000 cargo test --release -p ithreads-parse fuzz`. Every failure found
//! becomes a regression case in `regressions` below (proptest also keeps its seeds in
//! `tests/fuzz.proptest-regressions`).

use parse::cmdline::{self, KEYS};
use parse::frame::{self, Frame, FLAG_ECHO, FLAG_END, HEADER_LEN, HOST_MAC};
use parse::line::{self, Input, LineDiscipline, MAX_LINE};
use proptest::prelude::*;

/// A valid value for `key`.
fn value_for(key: &'static str) -> BoxedStrategy<String> {
    match key {
        "run" => prop::sample::select(vec!["scenario", "tests", "bench", "shell", "rt", "torture", "cost"])
            .prop_map(String::from)
            .boxed(),
        "test.harness" => {
            prop::sample::select(vec!["panic", "hang", "filter-sleep"]).prop_map(String::from).boxed()
        }
        "hz" => (10u32..=1000).prop_map(|n| n.to_string()).boxed(),
        "scenario.ms" => (10u64..=60_000).prop_map(|n| n.to_string()).boxed(),
        "intr.model" => {
            prop::sample::select(vec!["direct", "dedicated", "pool", "pinned"]).prop_map(String::from).boxed()
        }
        "rt.flood" => prop::sample::select(vec!["ipi", "devices"]).prop_map(String::from).boxed(),
        "idle" => prop::sample::select(vec!["halt", "poll"]).prop_map(String::from).boxed(),
        "cost.frames" => (100u64..=10_000_000).prop_map(|n| n.to_string()).boxed(),
        "lockcheck" | "lockstat" | "workload.serial" | "workload.saturate" => {
            prop::sample::select(vec!["on", "off"]).prop_map(String::from).boxed()
        }
        "bench.samples" => (1usize..=1_000_000).prop_map(|n| n.to_string()).boxed(),
        "trace.records" => (16usize..=1 << 20).prop_map(|n| n.to_string()).boxed(),
        "rt.period_us" => (50u64..=100_000).prop_map(|n| n.to_string()).boxed(),
        "rt.ms" => (10u64..=60_000).prop_map(|n| n.to_string()).boxed(),
        "torture.seed" => any::<u64>().prop_map(|n| n.to_string()).boxed(),
        "torture.ms" => (100u64..=3_600_000).prop_map(|n| n.to_string()).boxed(),
        "bench.unit" => {
            prop::sample::select(vec!["instructions", "cycles", "tsc"]).prop_map(String::from).boxed()
        }
        _ => "[a-z0-9:._=-]{0,12}".boxed(),
    }
}

/// Distinct keys with valid values.
fn valid_options(min: usize) -> impl Strategy<Value = Vec<(&'static str, String)>> {
    prop::sample::subsequence(KEYS.to_vec(), min..=KEYS.len()).prop_shuffle().prop_flat_map(|keys| {
        keys.into_iter().map(|k| value_for(k).prop_map(move |v| (k, v))).collect::<Vec<_>>()
    })
}

fn join(opts: &[(&str, String)]) -> String {
    opts.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

/// Bytes biased towards what matters to the discipline: ends, erases, controls, non-UTF-8.
fn serial_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            6 => prop::num::u8::ANY,
            3 => b'a'..=b'z',
            1 => prop::sample::select(vec![b'\r', b'\n', 0x08, 0x7f, 0x1b, 0, 0xff, 0xc3]),
        ],
        0..max,
    )
}

/// The lines the discipline should deliver, by a simple model: split on ends, apply erases,
/// lines over the limit (counted before erases stop applying) are overlong.
fn line_ends(bytes: &[u8]) -> usize {
    let mut n = 0;
    let mut cr = false;
    for &b in bytes {
        if b == b'\r' || (b == b'\n' && !cr) {
            n += 1;
        }
        cr = b == b'\r';
    }
    n
}

/// The fuzz configuration: proptest's default (256 cases, `PROPTEST_CASES` overrides), or 8
/// cases and no regression file under Miri (its isolation has no file system, and every case
/// is interpreted).
fn config() -> ProptestConfig {
    if cfg!(miri) {
        ProptestConfig { cases: 8, failure_persistence: None, ..ProptestConfig::default() }
    } else {
        ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]
    #[test]
    fn fuzz_cmdline_never_panics(s in "\\PC{0,200}") {
        if let Err(e) = cmdline::parse(&s) {
            // The error names a word or a key of the input.
            prop_assert!(s.contains(&e.option), "{:?} not in {:?}", e.option, s);
            prop_assert!(!e.msg.is_empty());
        }
    }

    #[test]
    fn fuzz_cmdline_words_never_panic(words in prop::collection::vec("[a-z.]{1,14}=?[a-z0-9=-]{0,8}", 0..12)) {
        let _ = cmdline::parse(&words.join(" "));
    }

    #[test]
    fn fuzz_cmdline_valid_options_parse(opts in valid_options(0), sep in "[ \t\n]{1,3}") {
        let line = opts.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(&sep);
        let o = cmdline::parse(&line);
        prop_assert!(o.is_ok(), "{line:?}: {o:?}");
        let o = o.unwrap();
        for (k, v) in &opts {
            match *k {
                "hz" => prop_assert_eq!(o.hz.to_string(), v.clone()),
                "test.filter" => prop_assert_eq!(&o.test_filter, v),
                "bench.filter" => prop_assert_eq!(&o.bench_filter, v),
                "bench.samples" => prop_assert_eq!(o.bench_samples.to_string(), v.clone()),
                "bench.unit" => prop_assert_eq!(o.bench_unit, v.as_str()),
                "trace.records" => prop_assert_eq!(o.trace_records.to_string(), v.clone()),
                "rt.period_us" => prop_assert_eq!(o.rt_period_us.to_string(), v.clone()),
                "rt.ms" => prop_assert_eq!(o.rt_ms.to_string(), v.clone()),
                "torture.seed" => prop_assert_eq!(o.torture_seed.to_string(), v.clone()),
                "torture.ms" => prop_assert_eq!(o.torture_ms.to_string(), v.clone()),
                "idle" => prop_assert_eq!(format!("{:?}", o.idle).to_lowercase(), v.clone()),
                _ => {}
            }
        }
    }

    #[test]
    fn fuzz_cmdline_duplicate_is_refused(opts in valid_options(1), pick in any::<prop::sample::Index>(), v2 in "[a-z0-9]{0,6}") {
        let (k, _) = opts[pick.index(opts.len())].clone();
        let mut twice = opts.clone();
        twice.push((k, v2));
        let e = cmdline::parse(&join(&twice)).unwrap_err();
        prop_assert_eq!(e.option, k);
        prop_assert_eq!(e.msg, "duplicate option");
    }

    #[test]
    fn fuzz_line_discipline(bytes in serial_bytes(2000)) {
        let inputs = line::lines_of(&bytes);
        prop_assert_eq!(inputs.len(), line_ends(&bytes));
        for i in &inputs {
            match i {
                Input::Line(l) => {
                    prop_assert!(!l.contains('\n') && !l.contains('\r'), "{l:?}");
                    // At most MAX_LINE bytes, each at most 4 characters once escaped.
                    prop_assert!(l.len() <= 4 * MAX_LINE);
                }
                Input::Overlong(n) => prop_assert!(*n > MAX_LINE),
            }
            // The string form the COM1 driver queues comes back the same.
            prop_assert_eq!(&Input::from_string(i.clone().into_string()), i);
        }
    }

    #[test]
    fn fuzz_overlong_line_never_runs(
        len in (MAX_LINE + 1)..(3 * MAX_LINE),
        fill in prop::sample::select(vec![b'y', b' ', 0x1b, 0xff, 0x08]),
        tail in "[a-z ]{0,20}",
        next in "[a-z]{1,10}",
    ) {
        // An overlong line, with or without erases in it: discarded whole.
        let mut bytes = vec![b'x'; MAX_LINE + 1];
        bytes.resize(len, fill);
        bytes.extend_from_slice(tail.as_bytes());
        bytes.push(b'\n');
        bytes.extend_from_slice(next.as_bytes());
        bytes.push(b'\n');
        let inputs = line::lines_of(&bytes);
        prop_assert_eq!(inputs, vec![Input::Overlong(len + tail.len()), Input::Line(next)]);
    }

    #[test]
    fn fuzz_printable_lines_pass_unchanged(l in "[ -~]{0,512}") {
        let mut bytes = l.clone().into_bytes();
        bytes.push(b'\n');
        prop_assert_eq!(line::lines_of(&bytes), vec![Input::Line(l)]);
    }

    #[test]
    fn fuzz_discipline_fed_in_pieces_is_the_same(bytes in serial_bytes(1500), cut in any::<prop::sample::Index>()) {
        let at = cut.index(bytes.len() + 1);
        let mut ld = LineDiscipline::new();
        let mut got = Vec::new();
        for part in [&bytes[..at], &bytes[at..]] {
            got.extend(part.iter().filter_map(|&b| ld.feed(b).1));
        }
        prop_assert_eq!(got, line::lines_of(&bytes));
    }

    #[test]
    fn fuzz_escape_leaves_no_control(bytes in serial_bytes(300)) {
        let text = line::to_text(&bytes);
        let e = line::escape(&text);
        prop_assert!(!e.chars().any(line::needs_escape), "{e:?}");
        prop_assert!(!e.contains('\x1b') && !e.contains('\0'), "{e:?}");
    }

    #[test]
    fn fuzz_shell_words(s in "\\PC{0,100}") {
        let words: Vec<&str> = line::words(&s).collect();
        for w in &words {
            prop_assert!(!w.is_empty() && !w.chars().any(char::is_whitespace));
        }
        prop_assert_eq!(line::command_name(&s), words.first().copied().unwrap_or("-"));
    }
}

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x49, 0x54, 0x01];

fn frame_header(seq: u64, flags: u16, n: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&frame::ETHERTYPE.to_be_bytes());
    f.extend_from_slice(&frame::MAGIC);
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&flags.to_be_bytes());
    f.extend_from_slice(&(n as u16).to_be_bytes());
    f
}

fn data_frame(seq: u64, flags: u16) -> Vec<u8> {
    let n = frame::payload_len(seq);
    let mut f = frame_header(seq, flags, n);
    f.extend((0..n).map(|i| frame::payload_byte(seq, i)));
    f
}

proptest! {
    #![proptest_config(config())]
    #[test]
    fn fuzz_frame_any_bytes(mut f in prop::collection::vec(any::<u8>(), 0..1600), ours in any::<bool>()) {
        if ours && f.len() >= 18 {
            // Ours by the Ethernet header and the magic: the rest is junk.
            f[..18].copy_from_slice(&frame_header(0, 0, 0)[..18]);
        }
        match frame::classify(&f, MAC) {
            Frame::Data { ok: true, len, .. } => prop_assert!(len <= f.len()),
            Frame::Other => prop_assert!(!ours || f.len() < 18),
            _ => {}
        }
    }

    #[test]
    fn fuzz_frame_valid_data_verifies(seq in any::<u64>(), echo in any::<bool>(), pad in 0usize..64) {
        let flags = if echo { FLAG_ECHO } else { 0 };
        let mut f = data_frame(seq, flags);
        let len = f.len();
        f.resize(len + pad, 0);
        prop_assert_eq!(frame::classify(&f, MAC), Frame::Data { seq, flags, ok: true, len });
    }

    #[test]
    fn fuzz_frame_damage_is_caught(seq in any::<u64>(), at in any::<prop::sample::Index>(), x in 1u8..=255, cut in any::<bool>()) {
        let mut f = data_frame(seq, 0);
        if cut {
            // Truncated anywhere in the payload.
            f.truncate(HEADER_LEN + at.index(frame::payload_len(seq)));
        } else {
            let i = HEADER_LEN + at.index(frame::payload_len(seq));
            f[i] ^= x;
        }
        let c = frame::classify(&f, MAC);
        prop_assert!(matches!(c, Frame::Data { ok: false, .. }), "{c:?}");
    }

    #[test]
    fn fuzz_frame_end_marker(total in any::<u64>(), first in any::<u64>(), short in any::<bool>()) {
        let mut f = frame_header(total, FLAG_END, 8);
        f.extend_from_slice(&first.to_be_bytes());
        if short {
            f.pop();
        }
        let want = Frame::End { total, first: (!short).then_some(first) };
        prop_assert_eq!(frame::classify(&f, MAC), want);
    }
}

mod regressions {
    use super::*;

    /// `"y" * 512 + "halt\n"` once ran `halt` (the tail of a cut line ran as a command).
    #[test]
    fn cut_line_tail_does_not_run() {
        let mut bytes = vec![b'y'; 512];
        bytes.extend_from_slice(b"halt\n");
        assert_eq!(line::lines_of(&bytes), [Input::Overlong(516)]);
    }

    /// Duplicate options were accepted, the last one winning.
    #[test]
    fn duplicate_run_is_refused() {
        assert_eq!(cmdline::parse("run=tests run=scenario").unwrap_err().option, "run");
    }
}
