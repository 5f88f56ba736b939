//! Fuzzing the host's serial-protocol parser (`ithreads::protocol::parse_line`, docs/
//! PROTOCOL.md) with proptest, part of `cargo test`. A long run:
//! `PROPTEST_CASES=1000000 cargo test --release --test fuzz_protocol`.

use ithreads::protocol::{parse_line, Event};
use proptest::prelude::*;

/// Protocol-looking lines: `@@ `, a known kind, then words that look like fields.
fn protocol_like() -> impl Strategy<Value = String> {
    let kind = prop::sample::select(vec![
        "boot",
        "test-begin",
        "test",
        "tests-done",
        "panic",
        "backtrace",
        "cmdline-error",
        "result",
        "scenario-done",
        "bench",
        "bench-done",
        "storm",
        "live",
        "hist",
        "net-ready",
        "shell-done",
        "",
    ]);
    let word = prop_oneof![
        "[a-z_.]{1,8}=[0-9a-z:,.x-]{0,10}",
        "[0-9]{1,25}",
        "0x[0-9a-fA-F]{0,20}",
        "\\PC{0,6}",
        prop::sample::select(vec!["pass", "fail", "ms=", "=", "on", "off", "buckets=1:2,x:", "cmdline="])
            .prop_map(String::from),
    ];
    (kind, prop::collection::vec(word, 0..10), "[ \t\r]{0,2}")
        .prop_map(|(k, w, end)| format!("@@ {k} {}{end}", w.join(" ")))
}

proptest! {
    #[test]
    fn fuzz_protocol_any_text(s in "\\PC{0,200}") {
        let e = parse_line(&s);
        prop_assert_eq!(e.is_some(), s.starts_with("@@ "));
    }

    #[test]
    fn fuzz_protocol_like_lines(s in protocol_like()) {
        // Never panics; a line it cannot type is kept whole as Unknown.
        match parse_line(&s) {
            Some(Event::Unknown(l)) => prop_assert_eq!(l, s.trim_end()),
            Some(_) => {}
            None => prop_assert!(false, "an @@ line gave no event: {s:?}"),
        }
    }

    #[test]
    fn fuzz_protocol_round_trips(
        name in "[a-z]{1,8}(::[a-z_]{1,8}){0,3}",
        ms in any::<u64>(),
        passed in any::<u32>(),
        failed in any::<u32>(),
        addrs in prop::collection::vec(any::<u64>(), 0..8),
        option in "[a-z.]{1,12}",
        msg in "[ -~]{1,40}",
    ) {
        prop_assert_eq!(parse_line(&format!("@@ test-begin {name}")), Some(Event::TestBegin { name: name.clone() }));
        let t = parse_line(&format!("@@ test {name} pass ms={ms}"));
        prop_assert!(matches!(&t, Some(Event::Test { name: n, pass: true, .. }) if *n == name), "{t:?}");
        prop_assert_eq!(
            parse_line(&format!("@@ tests-done passed={passed} failed={failed}")),
            Some(Event::TestsDone { passed, failed })
        );
        let bt: Vec<String> = addrs.iter().map(|a| format!("{a:#x}")).collect();
        prop_assert_eq!(parse_line(&format!("@@ backtrace {}", bt.join(" "))), Some(Event::Backtrace(addrs)));
        let e = parse_line(&format!("@@ cmdline-error option={option} msg={msg}"));
        prop_assert_eq!(e, Some(Event::CmdlineError { option, msg: msg.trim_end().to_string() }));
    }
}
