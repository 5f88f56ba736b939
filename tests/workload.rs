//! Host-only tests of the main job's host side with canned serial lines (no QEMU): the serial
//! input, the typed `@@ live` / `@@ result` / `@@ hist` records, the verdict, the live view's
//! state, the comparison table and the report folder.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use ithreads::live::{self, LiveState, LiveView};
use ithreads::protocol::{parse_line, Event};
use ithreads::report::{self, ModelRun, ReportMeta};
use ithreads::workload::{self, *};

fn events(lines: &[String]) -> Vec<Event> {
    lines.iter().filter_map(|l| parse_line(l)).collect()
}

/// The lines of a clean run of the main job under `model`; `scale` stretches its latencies.
fn canned_run(model: &str, scale: u64) -> Vec<String> {
    let mut lines =
        vec![format!("@@ boot cpus=4 hz=100 model={model} cmdline=run=scenario intr.model={model}")];
    lines.push("@@ net-ready first=0 count=2000 echo=1 rate=1000".into());
    lines.push("@@ serial-ready".into());
    for step in 0..=8u64 {
        let t = step * 250;
        let f = |total: u64| (total * step / 6).min(total);
        lines.push(format!(
            "@@ live kind=progress t_ms={t} net_rx={} net_lost=0 net_bad=0 net_echoed={} blk_ops={} blk_bad=0 \
             serial_bytes={} serial_lines={} serial_bad=0",
            f(2000),
            f(2000),
            f(300),
            f(65536),
            f(1024)
        ));
        for (name, per_step) in [("virtio-net", 400), ("virtio-blk", 50), ("com1", 1100), ("edu", 200)] {
            lines.push(format!(
                "@@ live kind=source t_ms={t} name={name} model={model} count={} handled={} cpu_ns={} p50={} \
                 p99={} storm=off masked=0 cpu=all",
                per_step * step,
                per_step * step,
                per_step * step * 900,
                1500 * scale,
                9000 * scale
            ));
        }
    }
    for (name, count) in [("virtio-net", 3200), ("virtio-blk", 400), ("com1", 8800), ("edu", 1600)] {
        lines.push(format!(
            "@@ result scope=source name={name} model={model} count={count} handled={count} cpu_ns={} p50={} \
             p99={} storms=0 off_ns=0 spl_n=2 spl_ns=3000 masked_n=0 masked_ns=0 masked_arrivals=0",
            count * 900,
            1500 * scale,
            9000 * scale
        ));
        lines.push(format!(
            "@@ hist name={name} model={model} unit=ns buckets={}:{},{}:{},{}:{}",
            1024 * scale,
            count / 4,
            1536 * scale,
            count / 2,
            8192 * scale,
            count / 4
        ));
    }
    lines.push(
        "@@ result scope=workload net_rx=2000 net_lost=0 net_bad=0 net_echoed=2000 blk_ops=300 blk_bad=0 \
         serial_bytes=65536 serial_lines=1024 serial_bad=0 serial_lost=0 verified=1"
            .into(),
    );
    lines.push(format!(
        "@@ result scope=footprint rest_threads={} peak_threads={} thread_bytes=33000 rest_thread_kib={} \
         peak_thread_kib={} pool={scale} dedicated=0 pinned=0 soft=8 storm=1 sources=5 source_bytes=40000",
        9 + scale,
        10 + scale,
        (9 + scale) * 33000 / 1024,
        (10 + scale) * 33000 / 1024
    ));
    lines.push("@@ scenario-done".into());
    lines
}

fn clean_host() -> HostTraffic {
    HostTraffic {
        plan: Plan::default(),
        net_wired: true,
        frames_requested: 2000,
        frames_sent: 2000,
        still_sending: false,
        echoes: Some(EchoStats { received: 2000, bad: 0 }),
        serial_lines_sent: 1024,
        serial_bytes_sent: 65536,
        errors: Vec::new(),
    }
}

fn model_run(model: &str, scale: u64) -> ModelRun {
    let results = JobResults::from_events(&events(&canned_run(model, scale)));
    let host = clean_host();
    let problems = workload::problems(&results, &host);
    ModelRun {
        model: model.into(),
        cmdline: format!("run=scenario intr.model={model}"),
        results,
        host,
        problems,
        elapsed_s: 3.5,
    }
}

#[test]
fn serial_lines_are_64_bytes_of_the_documented_shape() {
    assert_eq!(serial_line(0), "S 00000000 ahov29gnu18fmt07elsz6dkry5cjqx4bipw3ahov29gnu18fmt07\n");
    for seq in [0, 1, 35, 36, 1023, 99_999_999] {
        let line = serial_line(seq);
        assert_eq!(line.len(), SERIAL_LINE_BYTES, "{line:?}");
        assert_eq!(&line[..2], "S ");
        assert_eq!(line[2..10].parse::<u64>().unwrap(), seq);
        assert_eq!(&line[10..11], " ");
        assert!(line.ends_with('\n') && !line.ends_with("\r\n"));
        let payload = &line.as_bytes()[11..63];
        for (i, &c) in payload.iter().enumerate() {
            assert_eq!(c, SERIAL_ALPHABET[((seq * 31 + i as u64 * 7) % 36) as usize], "seq {seq} char {i}");
        }
    }
    assert_eq!(serial_line(1)[11..16], *"5cjqx");
    assert_eq!(serial_end(1024), "E 1024\n");
}

#[test]
fn typed_serial_input_is_64_kib_then_the_end_line() {
    let counters = HostCounters::default();
    let mut out = Vec::new();
    type_serial_input(&mut out, SERIAL_LINES, &counters).unwrap();
    assert_eq!(out.len(), 65536 + "E 1024\n".len());
    assert!(out.ends_with(b"\nE 1024\n"));
    assert_eq!(&out[64 * 5..64 * 6], serial_line(5).as_bytes());
    assert_eq!(counters.serial_lines_sent.load(Ordering::Relaxed), 1024);
    assert_eq!(counters.serial_bytes_sent.load(Ordering::Relaxed), 65536);
}

/// A NIC peer that records what it was asked to send.
#[derive(Default)]
struct RecordingPeer {
    sent: Mutex<Vec<(Range<u64>, bool, u32)>>,
    end: Mutex<Option<u64>>,
}

impl TrafficSource for RecordingPeer {
    fn send(&self, seqs: Range<u64>, echo: bool, rate: u32) -> std::io::Result<()> {
        self.sent.lock().unwrap().push((seqs, echo, rate));
        Ok(())
    }
    fn send_end(&self, total: u64) -> std::io::Result<()> {
        *self.end.lock().unwrap() = Some(total);
        Ok(())
    }
    fn echoes(&self) -> EchoStats {
        EchoStats { received: 7, bad: 1 }
    }
}

#[test]
fn a_net_request_is_served_in_one_run_then_the_end_marker() {
    let e = parse_line("@@ net-ready first=100 count=250 echo=1 rate=500 more=x").unwrap();
    let request = net_request(&e).unwrap().unwrap();
    assert_eq!(request, NetRequest { first: 100, count: 250, echo: true, rate: 500 });
    let peer = RecordingPeer::default();
    let counters = HostCounters::default();
    serve(&peer, &request, &counters);
    assert_eq!(peer.sent.lock().unwrap().clone(), [(100..350, true, 500)]);
    assert_eq!(*peer.end.lock().unwrap(), Some(250));
    assert_eq!(counters.frames_sent.load(Ordering::Relaxed), 250);
    let host = counters.snapshot(&Plan::default(), Some(&peer));
    assert_eq!(host.echoes, Some(EchoStats { received: 7, bad: 1 }));

    let e = parse_line("@@ net-ready first=0 count=5 rate=0").unwrap();
    let err = net_request(&e).unwrap().unwrap_err();
    assert_eq!(err.problem, RecordProblem::Missing { key: "echo" });
    assert!(err.to_string().contains("`echo=`"), "{err}");
    assert!(net_request(&parse_line("@@ net-readyish").unwrap()).is_none());
    assert!(net_request(&Event::ScenarioDone).is_none());
    assert!(is_serial_ready(&parse_line("@@ serial-ready").unwrap()));
    assert!(!is_serial_ready(&parse_line("@@ serial-ready-not").unwrap()));
}

#[test]
fn a_serial_burst_request_names_its_lines_and_bursts_number_on() {
    let e = parse_line("@@ serial-ready lines=3").unwrap();
    assert_eq!(serial_request(&e).unwrap().unwrap(), 3);
    assert!(!is_serial_ready(&e), "a burst is not the whole paste");
    assert!(serial_request(&parse_line("@@ serial-ready").unwrap()).is_none());
    let err = serial_request(&parse_line("@@ serial-ready lines=x").unwrap()).unwrap().unwrap_err();
    assert!(err.to_string().contains("lines=x"), "{err}");
    assert!(serial_request(&parse_line("@@ serial-ready count=2").unwrap()).unwrap().is_err());

    // Two bursts typed one after the other are the paste's lines 0..5, with no end line.
    let counters = HostCounters::default();
    let mut out = Vec::new();
    type_serial_lines(&mut out, 0..2, &counters).unwrap();
    type_serial_lines(&mut out, 2..5, &counters).unwrap();
    let text = String::from_utf8(out).unwrap();
    let want: String = (0..5).map(serial_line).collect();
    assert_eq!(text, want);
    assert!(!text.contains("E "), "{text}");
    assert_eq!(counters.serial_lines_sent.load(Ordering::Relaxed), 5);
}

#[test]
fn live_lines_are_typed_tolerantly_and_name_a_missing_key() {
    let e = parse_line(
        "@@ live kind=source t_ms=500 name=com1 model=pool count=10 handled=9 cpu_ns=100 p50=5 p99=7 \
         storm=on masked=1 future=yes",
    )
    .unwrap();
    let Some(Ok(LiveRecord::Source(s))) = live_record(&e) else { panic!("{e:?}") };
    assert_eq!(
        (s.name.as_str(), s.count, s.handled, s.p99, s.storm, s.masked),
        ("com1", 10, 9, 7, true, true)
    );

    let e = parse_line("@@ live kind=progress t_ms=250 net_rx=1 net_lost=0 net_bad=0 net_echoed=0 blk_ops=2 blk_bad=0 serial_bytes=64 serial_lines=1").unwrap();
    let err = live_record(&e).unwrap().unwrap_err();
    assert_eq!(err.problem, RecordProblem::Missing { key: "serial_bad" });
    assert!(err.to_string().contains("`serial_bad=`"), "{err}");

    let e = parse_line("@@ live kind=source t_ms=1 name=x model=pool count=1 handled=1 cpu_ns=1 p50=1 p99=one storm=off masked=0").unwrap();
    let err = live_record(&e).unwrap().unwrap_err();
    assert!(err.to_string().contains("`p99=one` is not a number"), "{err}");

    let e = parse_line("@@ live kind=source t_ms=1 name=x model=pool count=1 handled=1 cpu_ns=1 p50=1 p99=1 storm=maybe masked=0").unwrap();
    assert!(live_record(&e).unwrap().unwrap_err().to_string().contains("storm=maybe"));
    assert!(live_record(&Event::ScenarioDone).is_none());

    // A part whose keys are all absent did not run; one key of a part missing is an error.
    let e =
        parse_line("@@ live kind=progress t_ms=5 serial_bytes=64 serial_lines=1 serial_bad=0 serial_lost=0")
            .unwrap();
    let Some(Ok(LiveRecord::Progress(p))) = live_record(&e) else { panic!("{e:?}") };
    assert_eq!(p.counters.parts, Parts { net: false, blk: false, serial: true });
    assert_eq!((p.counters.serial_bytes, p.counters.net_rx), (64, 0));
    let e = parse_line("@@ live kind=progress t_ms=5 net_rx=3 serial_bytes=64 serial_lines=1 serial_bad=0")
        .unwrap();
    assert!(live_record(&e).unwrap().unwrap_err().to_string().contains("no `net_lost=`"));
    let e = parse_line("@@ live kind=progress t_ms=5").unwrap();
    assert!(live_record(&e).unwrap().unwrap_err().to_string().contains("none of"));
}

#[test]
fn a_clean_run_is_parsed_and_passes() {
    let r = JobResults::from_events(&events(&canned_run("pool", 1)));
    assert_eq!(r.errors, Vec::<String>::new());
    assert_eq!(r.model.as_deref(), Some("pool"));
    assert_eq!(r.sources.len(), 4);
    assert_eq!(r.sources[0].name, "virtio-net");
    assert_eq!((r.sources[2].count, r.sources[2].p50, r.sources[2].p99), (8800, 1500, 9000));
    assert_eq!(r.hists.len(), 4);
    assert_eq!(r.hists[0].buckets, [(1024, 800), (1536, 1600), (8192, 800)]);
    let f = r.footprint.expect("the footprint record");
    assert_eq!(
        (f.rest_threads, f.peak_threads, f.pool, f.soft, f.sources, f.source_bytes),
        (10, 11, 1, 8, 5, 40000)
    );
    assert_eq!(r.hists[0].cumulative(), [(1024, 0.25), (1536, 0.75), (8192, 1.0)]);
    assert_eq!(r.progress.len(), 9);
    let w = r.workload.unwrap();
    assert_eq!((w.net_rx, w.blk_ops, w.serial_bytes, w.serial_lines), (2000, 300, 65536, 1024));
    // Counters move from t=0 (last zero sample) to t=1500 ms (first at the final value).
    let t = r.throughput();
    assert_eq!(t.frames_per_s.map(f64::round), Some(1333.0));
    assert_eq!(t.blk_ops_per_s.map(f64::round), Some(200.0));
    assert_eq!(t.serial_bytes_per_s.map(f64::round), Some(43691.0));

    let host = clean_host();
    assert_eq!(workload::problems(&r, &host), Vec::<String>::new());
    let s = summary(&r, &host);
    assert!(s.contains("interrupt model pool"), "{s}");
    assert!(s.contains("frames:  sent 2000, received 2000, verified 2000, lost 0"), "{s}");
    assert!(
        s.contains(
            "serial:  sent 65536 bytes (1024 lines), received 65536 bytes (1024 lines), 0 bad, 0 lost"
        ),
        "{s}"
    );
    assert!(s.contains("verdict: ok"), "{s}");
    assert!(s.contains("virtio-blk"), "{s}");
}

fn r_clean() -> JobResults {
    JobResults::from_events(&events(&canned_run("pool", 1)))
}

fn with_workload(edit: impl Fn(&mut Counters)) -> JobResults {
    let mut r = JobResults::from_events(&events(&canned_run("pool", 1)));
    edit(r.workload.as_mut().unwrap());
    r
}

#[test]
fn loss_and_bad_data_fail_the_run() {
    let host = clean_host();
    for (r, expect) in [
        (with_workload(|w| w.net_lost = 3), "3 frames lost"),
        (with_workload(|w| w.net_rx = 1990), "10 frames lost (sent 2000, verified 1990)"),
        // Duplicates cannot make up for lost frames; received > sent is flagged.
        (
            with_workload(|w| {
                (w.net_rx, w.net_unique, w.net_dup) = (2300, Some(1900), 300);
            }),
            "100 frames lost (sent 2000, verified 1900)",
        ),
        (
            with_workload(|w| {
                (w.net_rx, w.net_unique, w.net_dup) = (2300, Some(1900), 300);
            }),
            "received 2300 frames, more than the 2000 sent: 300 duplicates",
        ),
        (with_workload(|w| w.net_dup = 1), "1 duplicate frames"),
        (with_workload(|w| w.net_range = 2), "2 frames outside the run's sequence numbers"),
        (
            with_workload(|w| {
                (w.net_rx, w.net_unique, w.net_lost) = (0, Some(0), 2000);
                (w.net_end, w.net_stall_ms, w.net_stall_at) = (Some(false), 15_000, 0);
            }),
            "NIC receive stalled: no frame for 15000 ms after 0 frames, while the host was still sending; the end \
             marker never came",
        ),
        (with_workload(|w| w.net_bad = 2), "2 frames failed verification"),
        (with_workload(|w| w.blk_bad = 1), "1 disk operations failed verification"),
        (with_workload(|w| w.serial_bad = 4), "4 serial lines failed verification"),
        (with_workload(|w| w.serial_lines = 1000), "24 of 1024 serial lines never arrived"),
        (with_workload(|w| w.serial_lost = 2), "2 of 1024 serial lines never arrived"),
        (with_workload(|w| w.verified = Some(false)), "not verified"),
        (with_workload(|w| w.parts.net = false), "no NIC counters, though 2000 frames were sent"),
        (with_workload(|w| w.net_echoed = 2005), "5 of 2005 echoed frames never came back"),
    ] {
        let problems = workload::problems(&r, &host);
        assert!(problems.iter().any(|p| p.contains(expect)), "{expect}: {problems:?}");
        let s = summary(&r, &host);
        assert!(s.contains("verdict: FAILED") && s.contains(expect), "{s}");
    }
    let mut lines = canned_run("pool", 1);
    lines.retain(|l| !l.contains("scope=workload"));
    let r = JobResults::from_events(&events(&lines));
    assert!(workload::problems(&r, &host)[0].contains("no `@@ result scope=workload`"));

    let mut lines = canned_run("pool", 1);
    let last = lines.iter().rposition(|l| l.contains("scope=workload")).unwrap();
    lines[last] = lines[last].replace(" blk_bad=0", "");
    let r = JobResults::from_events(&events(&lines));
    let problems = workload::problems(&r, &host);
    assert!(
        problems.iter().any(|p| p.contains("`@@ result scope=workload` line has no `blk_bad=`")),
        "{problems:?}"
    );

    let mut host = clean_host();
    host.serial_lines_sent = 0;
    host.serial_bytes_sent = 0;
    assert!(workload::problems(&r_clean(), &host)
        .iter()
        .any(|p| p.contains("only 0 of 1024 serial lines were typed")));
    host.frames_sent = 1500;
    assert!(workload::problems(&r_clean(), &host).iter().any(|p| p.contains("only 1500 of the 2000 frames")));

    let mut host_err = clean_host();
    host_err.errors.push("sending frames 0..100: connection refused".into());
    let r = JobResults::from_events(&events(&canned_run("pool", 1)));
    assert!(workload::problems(&r, &host_err)[0].contains("connection refused"));
}

#[test]
fn the_kernel_command_line_carries_the_model() {
    assert_eq!(
        workload::cmdline("scenario", Some(Model::Pinned), "").unwrap(),
        "run=scenario workload.serial=on scenario.ms=60000 intr.model=pinned"
    );
    assert_eq!(workload::cmdline("shell", None, "hz=1000").unwrap(), "run=shell hz=1000");
    assert!(workload::cmdline("scenario", Some(Model::Pool), "intr.model=direct").is_err());
    assert_eq!(Model::ALL.map(Model::as_str), ["direct", "dedicated", "pool", "pinned"]);
}

#[test]
fn live_state_computes_rates_and_plain_lines() {
    let mut state = LiveState::default();
    let lines = canned_run("direct", 1);
    for e in events(&lines[..13]) {
        state.update(&e);
    }
    // Two samples per source (t=0 and t=250): 400 interrupts in 250 ms.
    let net = &state.sources["virtio-net"];
    assert_eq!(net.rate, Some(1600.0));
    assert!(net.line().starts_with("virtio-net       direct"), "{}", net.line());
    assert!(net.line().contains("1600/s"), "{}", net.line());
    assert_eq!(state.progress.unwrap().t_ms, 250);
    let counters = HostCounters::default();
    counters.frames_requested.store(2000, Ordering::Relaxed);
    counters.frames_sent.store(500, Ordering::Relaxed);
    let plain = live::plain_lines(&state, &Plan::default(), &counters);
    assert_eq!(plain.len(), 2, "{plain:?}");
    assert!(plain[0].contains("frames 333/2000 (sent 500"), "{plain:?}");
    assert!(plain[0].contains("serial 10922/65536 bytes"), "{plain:?}");
    assert!(plain[1].contains("virtio-net 400 1600/s p50 1500ns p99 9000ns"), "{plain:?}");
    assert!(live::table_header().starts_with("source"));

    // The hidden view takes every event without a terminal.
    let mut view = LiveView::with_drawing("test", Plan::default(), Default::default(), false);
    for e in events(&lines) {
        view.on_event(&e);
    }
    assert_eq!(view.state().sources.len(), 4);
    assert_eq!(view.state().progress.unwrap().t_ms, 2000);
    view.finish();
}

#[test]
fn the_compare_table_puts_models_side_by_side() {
    let runs: Vec<ModelRun> =
        Model::ALL.iter().enumerate().map(|(i, m)| model_run(m.as_str(), i as u64 + 1)).collect();
    let (head, rows) = report::compare_rows(&runs);
    assert_eq!(head, ["metric", "direct", "dedicated", "pool", "pinned"]);
    let row =
        |label: &str| rows.iter().find(|r| r[0] == label).unwrap_or_else(|| panic!("no {label}: {rows:?}"));
    assert_eq!(row("verdict")[1..], ["ok", "ok", "ok", "ok"]);
    assert_eq!(row("frames/s")[1..], ["1333", "1333", "1333", "1333"]);
    assert_eq!(row("com1 p99")[1..], ["9000ns", "18.0us", "27.0us", "36.0us"]);
    assert_eq!(row("virtio-net cpu/intr")[1], "900ns");
    assert_eq!(row("intr threads at rest / peak")[1..], ["10 / 11", "11 / 12", "12 / 13", "13 / 14"]);
    assert_eq!(row("bytes per source")[1], "8000");
    let table = report::compare_table(&runs);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].trim_start().starts_with("metric") && lines[0].ends_with("pinned"), "{table}");
    assert!(lines[1].trim_start().starts_with("---"), "{table}");
    assert!(table.contains("edu p50"), "{table}");
    let md = report::compare_markdown(&runs);
    assert!(
        md.starts_with("| metric | direct | dedicated | pool | pinned |\n|---|---:|---:|---:|---:|\n"),
        "{md}"
    );

    // A failed model shows as such.
    let mut failed = runs.clone();
    failed[2].problems.push("3 frames lost".into());
    let (_, rows) = report::compare_rows(&failed);
    assert_eq!(rows[0][1..], ["ok", "ok", "FAILED", "ok"]);
}

#[test]
fn the_report_folder_has_a_readme_and_charts_with_one_series_per_model() {
    let runs: Vec<ModelRun> =
        Model::ALL.iter().enumerate().map(|(i, m)| model_run(m.as_str(), i as u64 + 1)).collect();
    let dir = tempfile::tempdir().unwrap();
    let out = std::env::var_os("KEEP_REPORT").map(Into::into).unwrap_or_else(|| dir.path().join("report"));
    let meta = ReportMeta {
        command: "cargo run --release -- --compare".into(),
        machine: report::machine_description(),
        accel: "tcg".into(),
        smp: 4,
        when: report::utc_timestamp(1_700_000_000),
    };
    let files = report::write_report(&out, &runs, &meta).unwrap();
    let names: Vec<String> =
        files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(
        names,
        [
            "README.md",
            "throughput.svg",
            "latency-virtio-net.svg",
            "latency-virtio-blk.svg",
            "latency-com1.svg",
            "latency-edu.svg"
        ]
    );
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(readme.contains("| metric | direct | dedicated | pool | pinned |"), "{readme}");
    assert!(readme.contains("cargo run --release -- --compare"), "{readme}");
    assert!(readme.contains("2023-11-14T22:13:20Z"), "{readme}");
    assert!(readme.contains("![throughput](throughput.svg)"), "{readme}");
    assert!(readme.contains("latency-com1.svg"), "{readme}");
    assert!(readme.contains("run=scenario intr.model=pinned"), "{readme}");
    for name in &names[1..] {
        let svg = std::fs::read_to_string(out.join(name)).unwrap();
        assert!(svg.starts_with("<svg"), "{name}: {}", &svg[..svg.len().min(80)]);
        assert!(svg.trim_end().ends_with("</svg>"), "{name}");
        for m in Model::ALL {
            assert!(svg.contains(&format!("\n{m}\n</text>")), "{name} has no label {m}");
        }
    }
    // One line per model in each latency chart (plus the legend's samples).
    let svg = std::fs::read_to_string(out.join("latency-com1.svg")).unwrap();
    assert!(svg.matches("<polyline").count() >= Model::ALL.len(), "{svg}");
}

#[test]
fn timestamps_and_report_dirs() {
    assert_eq!(report::utc_timestamp(0), "1970-01-01T00:00:00Z");
    assert_eq!(report::utc_timestamp(1_700_000_000), "2023-11-14T22:13:20Z");
    assert_eq!(report::utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(
        report::default_report_dir(1_700_000_000),
        std::path::PathBuf::from("target/report/2023-11-14T22-13-20Z")
    );
    assert_eq!(report::file_stem("virtio net/0"), "virtio_net_0");
    assert_eq!(
        [8192, 12_040, 7_340_032].map(fmt_ns),
        ["8192ns".to_string(), "12.0us".into(), "7.34ms".into()]
    );
}
