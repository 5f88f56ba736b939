//! Parser for the kernel's serial line protocol (`docs/PROTOCOL.md`).
//!
//! Every line that starts with `@@ ` is a protocol line; [`parse_line`] turns
//! it into an [`Event`]. A protocol line that does not match its documented
//! shape becomes [`Event::Unknown`] so that nothing the kernel prints is lost.
//! Every other line is free text and [`parse_line`] returns `None` for it.

/// The prefix that marks a protocol line.
pub const PREFIX: &str = "@@ ";

/// One parsed `@@ ` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `@@ boot cpus=<n> hz=<hz> [model=<m>] cmdline=<rest of line>`: every CPU is online.
    Boot { cpus: u32, hz: u32, model: Option<String>, cmdline: String },
    /// `@@ test-begin <name>`: a test starts.
    TestBegin { name: String },
    /// `@@ test <name> pass ms=<n>` or `@@ test <name> fail ms=<n> msg=<text>`.
    Test {
        name: String,
        pass: bool,
        ms: u64,
        /// The failure message (`None` for a passed test).
        msg: Option<String>,
    },
    /// `@@ tests-done passed=<n> failed=<n>`: the suite ended.
    TestsDone { passed: u32, failed: u32 },
    /// `@@ panic cpu=<n> msg=<text>`: a kernel panic.
    Panic { cpu: u32, msg: String },
    /// `@@ backtrace <hex addr> ...`: return addresses, innermost first.
    Backtrace(Vec<u64>),
    /// `@@ cmdline-error option=<key> msg=<text>`: bad kernel command line.
    CmdlineError { option: String, msg: String },
    /// `@@ result <key>=<value> ...`: one record of the scenario's summary.
    Result(Vec<(String, String)>),
    /// `@@ scenario-done`: the scenario ended.
    ScenarioDone,
    /// `@@ bench name=<n> unit=<u> samples=<n> median=<n> p99=<n> min=<n> [model=<m>]`: one
    /// figure; `model` is the interrupt dispatch model it was taken under, if it has one.
    Bench { name: String, unit: String, samples: u64, median: u64, p99: u64, min: u64, model: Option<String> },
    /// `@@ bench-config <key>=<value> ...`: the configuration the figures that follow are taken
    /// in (`lockstat=on|off lockcheck=on|off`), keys in the kernel's order.
    BenchConfig(Vec<(String, String)>),
    /// `@@ bench-done`: every selected benchmark ran.
    BenchDone,
    /// `@@ storm source=<name> state=on|off rate=<n>`: an interrupt storm began (throttled) or
    /// ended on a source.
    Storm { source: String, on: bool, rate: u64 },
    /// `@@ live kind=<kind> <key>=<value> ...`: a periodic record of the main job (every
    /// ~250 ms): `kind=source` per interrupt source, `kind=progress` for the workload's
    /// counters. Keys after `kind` are kept in order (typed by [`crate::workload`]).
    Live { kind: String, fields: Vec<(String, String)> },
    /// `@@ hist name=<source> model=<m> unit=<u> buckets=<lower>:<count>,...`: one source's
    /// latency histogram (log-linear buckets, only the non-empty ones, `buckets=` may be
    /// empty). Keys in any order; unknown keys are ignored.
    Hist { name: String, model: String, unit: String, buckets: Vec<(u64, u64)> },
    /// A `@@ ` line of unknown kind or malformed shape (the whole line). `@@ serial-ready`
    /// and `@@ net-ready ...` stay here ([`crate::workload::is_serial_ready`],
    /// [`crate::workload::net_request`] read them).
    Unknown(String),
}

/// Parses one serial line (without its line terminator; trailing whitespace
/// and `\r` are ignored). Returns `None` for a free-text line.
pub fn parse_line(line: &str) -> Option<Event> {
    let body = line.strip_prefix(PREFIX)?.trim_end();
    Some(parse_body(body).unwrap_or_else(|| Event::Unknown(line.trim_end().to_string())))
}

fn parse_body(body: &str) -> Option<Event> {
    let (kind, args) = body.split_once(' ').unwrap_or((body, ""));
    match kind {
        "boot" => {
            let (cpus, rest) = field(args, "cpus")?;
            let (hz, rest) = field(rest, "hz")?;
            let (model, rest) = match field(rest, "model") {
                Some((m, r)) => (Some(m.to_string()), r),
                None => (None, rest),
            };
            let cmdline = rest.strip_prefix("cmdline=")?;
            Some(Event::Boot {
                cpus: cpus.parse().ok()?,
                hz: hz.parse().ok()?,
                model,
                cmdline: cmdline.trim().to_string(),
            })
        }
        "test-begin" => Some(Event::TestBegin { name: single_word(args)?.to_string() }),
        "test" => {
            let (name, rest) = args.split_once(' ')?;
            if name.is_empty() {
                return None;
            }
            let (verdict, rest) = rest.split_once(' ')?;
            let (ms, rest) = field(rest, "ms")?;
            let ms = ms.parse().ok()?;
            let (pass, msg) = match verdict {
                "pass" if rest.is_empty() => (true, None),
                "fail" => (false, Some(rest.strip_prefix("msg=")?.to_string())),
                _ => return None,
            };
            Some(Event::Test { name: name.to_string(), pass, ms, msg })
        }
        "tests-done" => {
            let (passed, rest) = field(args, "passed")?;
            let (failed, rest) = field(rest, "failed")?;
            if !rest.is_empty() {
                return None;
            }
            Some(Event::TestsDone { passed: passed.parse().ok()?, failed: failed.parse().ok()? })
        }
        "panic" => {
            let (cpu, rest) = field(args, "cpu")?;
            Some(Event::Panic { cpu: cpu.parse().ok()?, msg: rest.strip_prefix("msg=")?.to_string() })
        }
        "backtrace" => {
            args.split_whitespace().map(parse_hex).collect::<Option<Vec<u64>>>().map(Event::Backtrace)
        }
        "cmdline-error" => {
            let (option, rest) = field(args, "option")?;
            if option.is_empty() {
                return None;
            }
            Some(Event::CmdlineError {
                option: option.to_string(),
                msg: rest.strip_prefix("msg=")?.to_string(),
            })
        }
        "result" => {
            let pairs = key_values(args)?;
            (!pairs.is_empty()).then_some(Event::Result(pairs))
        }
        "live" => {
            let mut fields = key_values(args)?;
            let at = fields.iter().position(|(k, _)| k == "kind")?;
            let (_, kind) = fields.remove(at);
            (!kind.is_empty()).then_some(Event::Live { kind, fields })
        }
        "hist" => {
            let fields = key_values(args)?;
            let get = |key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
            let (name, model, unit) = (get("name")?, get("model")?, get("unit")?);
            if name.is_empty() || model.is_empty() || unit.is_empty() {
                return None;
            }
            let buckets = get("buckets")?
                .split(',')
                .filter(|b| !b.is_empty())
                .map(|b| {
                    let (lower, count) = b.split_once(':')?;
                    Some((lower.parse().ok()?, count.parse().ok()?))
                })
                .collect::<Option<Vec<(u64, u64)>>>()?;
            Some(Event::Hist { name: name.into(), model: model.into(), unit: unit.into(), buckets })
        }

        "scenario-done" if args.trim().is_empty() => Some(Event::ScenarioDone),
        "storm" => {
            let (source, rest) = field(args, "source")?;
            let (state, rest) = field(rest, "state")?;
            let (rate, rest) = field(rest, "rate")?;
            if !rest.trim().is_empty() || source.is_empty() {
                return None;
            }
            let on = match state {
                "on" => true,
                "off" => false,
                _ => return None,
            };
            Some(Event::Storm { source: source.to_string(), on, rate: rate.parse().ok()? })
        }
        "bench" => {
            let (name, rest) = field(args, "name")?;
            let (unit, rest) = field(rest, "unit")?;
            let (samples, rest) = field(rest, "samples")?;
            let (median, rest) = field(rest, "median")?;
            let (p99, rest) = field(rest, "p99")?;
            let (min, rest) = field(rest, "min")?;
            let (model, rest) = match field(rest, "model") {
                Some((m, r)) if !m.is_empty() => (Some(m.to_string()), r),
                Some(_) => return None,
                None => (None, rest),
            };
            if name.is_empty() || unit.is_empty() || !rest.is_empty() {
                return None;
            }
            Some(Event::Bench {
                name: name.to_string(),
                unit: unit.to_string(),
                samples: samples.parse().ok()?,
                median: median.parse().ok()?,
                p99: p99.parse().ok()?,
                min: min.parse().ok()?,
                model,
            })
        }
        "bench-config" => {
            let pairs = key_values(args)?;
            (!pairs.is_empty() && pairs.iter().all(|(_, v)| !v.is_empty()))
                .then_some(Event::BenchConfig(pairs))
        }
        "bench-done" if args.trim().is_empty() => Some(Event::BenchDone),
        _ => None,
    }
}

/// Every whitespace-separated token of `s` as `key=value` (a value may contain `=`); `None` if
/// a token has no `=` or an empty key.
fn key_values(s: &str) -> Option<Vec<(String, String)>> {
    s.split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (!k.is_empty()).then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// Takes a leading `key=value` token from `s`; returns the value and the rest
/// after the single separating space (empty if the token ends the line).
fn field<'a>(s: &'a str, key: &str) -> Option<(&'a str, &'a str)> {
    let s = s.strip_prefix(key)?.strip_prefix('=')?;
    Some(s.split_once(' ').unwrap_or((s, "")))
}

fn single_word(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty() && !s.contains(char::is_whitespace)).then_some(s)
}

fn parse_hex(s: &str) -> Option<u64> {
    let digits = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
    u64::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: &str) -> Event {
        parse_line(line).expect("a protocol line")
    }

    fn unknown(line: &str) {
        assert_eq!(p(line), Event::Unknown(line.trim_end().to_string()), "{line:?}");
    }

    #[test]
    fn free_text_is_not_an_event() {
        assert_eq!(parse_line("hello"), None);
        assert_eq!(parse_line(""), None);
        assert_eq!(parse_line("@@"), None);
        assert_eq!(parse_line(" @@ boot cpus=1 hz=100 cmdline="), None);
        assert_eq!(parse_line("@@boot"), None);
    }

    #[test]
    fn boot() {
        assert_eq!(
            p("@@ boot cpus=4 hz=100 cmdline=run=tests test.filter=sched"),
            Event::Boot { cpus: 4, hz: 100, model: None, cmdline: "run=tests test.filter=sched".into() }
        );
        assert_eq!(
            p("@@ boot cpus=1 hz=1000 cmdline=\r"),
            Event::Boot { cpus: 1, hz: 1000, model: None, cmdline: String::new() }
        );
        unknown("@@ boot cpus=x hz=100 cmdline=");
        unknown("@@ boot cpus=4 cmdline=");
        unknown("@@ boot hz=100 cpus=4 cmdline=");
        unknown("@@ boot cpus=4 hz=100");
        unknown("@@ boot");
    }

    #[test]
    fn test_begin() {
        assert_eq!(
            p("@@ test-begin sched::rr::equal_share"),
            Event::TestBegin { name: "sched::rr::equal_share".into() }
        );
        unknown("@@ test-begin");
        unknown("@@ test-begin a b");
    }

    #[test]
    fn test_pass_and_fail() {
        assert_eq!(
            p("@@ test sched::rr::equal_share pass ms=12"),
            Event::Test { name: "sched::rr::equal_share".into(), pass: true, ms: 12, msg: None }
        );
        assert_eq!(
            p("@@ test a::b fail ms=0 msg=assertion failed: x == 1 (left: 2)"),
            Event::Test {
                name: "a::b".into(),
                pass: false,
                ms: 0,
                msg: Some("assertion failed: x == 1 (left: 2)".into())
            }
        );
        assert_eq!(
            p("@@ test a::b fail ms=3 msg="),
            Event::Test { name: "a::b".into(), pass: false, ms: 3, msg: Some(String::new()) }
        );
        unknown("@@ test a::b pass");
        unknown("@@ test a::b pass ms=");
        unknown("@@ test a::b pass ms=-1");
        unknown("@@ test a::b pass ms=5 extra");
        unknown("@@ test a::b fail ms=5");
        unknown("@@ test a::b maybe ms=5");
        unknown("@@ test a::b");
        unknown("@@ test");
    }

    #[test]
    fn tests_done() {
        assert_eq!(p("@@ tests-done passed=10 failed=2"), Event::TestsDone { passed: 10, failed: 2 });
        unknown("@@ tests-done passed=10");
        unknown("@@ tests-done failed=2 passed=10");
        unknown("@@ tests-done passed=10 failed=2 more=1");
    }

    #[test]
    fn panic() {
        assert_eq!(
            p("@@ panic cpu=3 msg=deliberate panic (test.harness=panic) at kernel/src/main.rs:10:5"),
            Event::Panic {
                cpu: 3,
                msg: "deliberate panic (test.harness=panic) at kernel/src/main.rs:10:5".into()
            }
        );
        unknown("@@ panic cpu=3");
        unknown("@@ panic msg=x");
        unknown("@@ panic cpu=three msg=x");
    }

    #[test]
    fn backtrace() {
        assert_eq!(
            p("@@ backtrace ffffffff80001234 0x200abc 0XDEAD"),
            Event::Backtrace(vec![0xffff_ffff_8000_1234, 0x20_0abc, 0xdead])
        );
        assert_eq!(p("@@ backtrace"), Event::Backtrace(vec![]));
        unknown("@@ backtrace 12g4");
        unknown("@@ backtrace 0x");
        unknown("@@ backtrace 1ffffffffffffffff");
    }

    #[test]
    fn cmdline_error() {
        assert_eq!(
            p("@@ cmdline-error option=bogus.option msg=unknown option"),
            Event::CmdlineError { option: "bogus.option".into(), msg: "unknown option".into() }
        );
        unknown("@@ cmdline-error option=hz");
        unknown("@@ cmdline-error option= msg=x");
        unknown("@@ cmdline-error msg=x");
    }

    #[test]
    fn result() {
        assert_eq!(
            p("@@ result cpu=0 switches=1234 name=a=b"),
            Event::Result(vec![
                ("cpu".into(), "0".into()),
                ("switches".into(), "1234".into()),
                ("name".into(), "a=b".into()),
            ])
        );
        assert_eq!(p("@@ result empty="), Event::Result(vec![("empty".into(), String::new())]));
        unknown("@@ result");
        unknown("@@ result novalue");
        unknown("@@ result =3");
    }

    #[test]
    fn scenario_done() {
        assert_eq!(p("@@ scenario-done"), Event::ScenarioDone);
        assert_eq!(
            p("@@ storm source=uart0.tx state=on rate=812345"),
            Event::Storm { source: "uart0.tx".into(), on: true, rate: 812345 }
        );
        assert_eq!(
            p("@@ storm source=x state=off rate=0"),
            Event::Storm { source: "x".into(), on: false, rate: 0 }
        );
        unknown("@@ storm source=x state=maybe rate=1");
        unknown("@@ storm source=x state=on");
        assert_eq!(p("@@ scenario-done  \r"), Event::ScenarioDone);
        unknown("@@ scenario-done now");
    }

    #[test]
    fn bench() {
        assert_eq!(
            p("@@ bench name=mutex.adaptive.enter_exit unit=instructions samples=100000 median=9 p99=11 min=9"),
            Event::Bench {
                name: "mutex.adaptive.enter_exit".into(),
                unit: "instructions".into(),
                samples: 100_000,
                median: 9,
                p99: 11,
                min: 9,
                model: None
            }
        );
        assert_eq!(
            p("@@ bench name=baseline.empty unit=cycles samples=1 median=0 p99=0 min=0\r"),
            Event::Bench {
                name: "baseline.empty".into(),
                unit: "cycles".into(),
                samples: 1,
                median: 0,
                p99: 0,
                min: 0,
                model: None
            }
        );
        // One figure per interrupt dispatch model: `model=` after `min=`.
        assert_eq!(
            p("@@ bench name=intr.latency unit=instructions samples=100000 median=612 p99=640 min=610 model=pinned"),
            Event::Bench {
                name: "intr.latency".into(),
                unit: "instructions".into(),
                samples: 100_000,
                median: 612,
                p99: 640,
                min: 610,
                model: Some("pinned".into())
            }
        );
        unknown("@@ bench name=x unit=i samples=1 median=2 p99=3 min=1 model=");
        unknown("@@ bench name=x unit=i samples=1 median=2 p99=3 min=1 model=a extra=1");
        unknown("@@ bench name=x unit=i samples=1 model=a median=2 p99=3 min=1");
        unknown("@@ bench name=x unit=instructions samples=1 median=2 p99=3");
        unknown("@@ bench name=x unit=instructions samples=1 median=2 p99=3 min=1 extra=1");
        unknown("@@ bench name= unit=instructions samples=1 median=2 p99=3 min=1");
        unknown("@@ bench name=x unit= samples=1 median=2 p99=3 min=1");
        unknown("@@ bench name=x unit=i samples=1 median=-2 p99=3 min=1");
        unknown("@@ bench unit=i name=x samples=1 median=2 p99=3 min=1");
        unknown("@@ bench");
        assert_eq!(p("@@ bench-done"), Event::BenchDone);
        assert_eq!(
            p("@@ bench-config lockstat=off lockcheck=on"),
            Event::BenchConfig(vec![("lockstat".into(), "off".into()), ("lockcheck".into(), "on".into())])
        );
        unknown("@@ bench-config");
        unknown("@@ bench-config lockstat");
        unknown("@@ bench-config lockstat=");
        unknown("@@ bench-config =off");
        unknown("@@ bench-done now");
    }

    #[test]
    fn live() {
        assert_eq!(
            p("@@ live kind=progress t_ms=250 net_rx=10 future=x"),
            Event::Live {
                kind: "progress".into(),
                fields: vec![
                    ("t_ms".into(), "250".into()),
                    ("net_rx".into(), "10".into()),
                    ("future".into(), "x".into())
                ]
            }
        );
        // `kind` may come anywhere.
        assert_eq!(
            p("@@ live t_ms=1 kind=source"),
            Event::Live { kind: "source".into(), fields: vec![("t_ms".into(), "1".into())] }
        );
        unknown("@@ live t_ms=1");
        unknown("@@ live kind= t_ms=1");
        unknown("@@ live kind=source oops");
    }

    #[test]
    fn hist() {
        assert_eq!(
            p("@@ hist name=virtio-net model=pool unit=ns buckets=1024:3,1152:10 extra=1"),
            Event::Hist {
                name: "virtio-net".into(),
                model: "pool".into(),
                unit: "ns".into(),
                buckets: vec![(1024, 3), (1152, 10)]
            }
        );
        assert_eq!(
            p("@@ hist unit=ns buckets= model=direct name=edu"),
            Event::Hist { name: "edu".into(), model: "direct".into(), unit: "ns".into(), buckets: vec![] }
        );
        unknown("@@ hist name=x model=pool unit=ns");
        unknown("@@ hist name=x model=pool unit=ns buckets=1:2,3");
        unknown("@@ hist name=x model=pool unit=ns buckets=1:-2");
        unknown("@@ hist name= model=pool unit=ns buckets=");
    }

    #[test]
    fn ready_lines_stay_unknown() {
        // `tests/serial.rs` and `tests/devices.rs` wait for these as `Event::Unknown`;
        // `crate::workload` reads them from there.
        unknown("@@ serial-ready");
        unknown("@@ net-ready first=0 count=10 echo=1 rate=0");
    }

    #[test]
    fn unknown_kinds() {
        unknown("@@ ");
        unknown("@@ hello world");
        unknown("@@ BOOT cpus=1 hz=100 cmdline=");
        unknown("@@ scenario-done-ish");
    }
}
