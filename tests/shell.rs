//! The serial shell, driven the way an operator would: commands typed into COM1 (QEMU's
//! stdin), answers parsed from the serial output (docs/PROTOCOL.md, "Shell"). Includes the
//! storm an operator would meet: COM2's transmit-empty interrupt left asserted on a level
//! line, while the shell must keep answering.

use std::io::Write;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use ithreads::harness;
use ithreads::protocol::Event;
use ithreads::qemu::{self, BootConfig, BootReport, SerialInput};

fn tail(r: &BootReport) -> String {
    harness::report_tail(r, harness::TAIL_LINES * 3)
}

/// The text of a `@@` line the protocol parser does not type (shell lines).
fn raw(e: &Event) -> Option<&str> {
    match e {
        Event::Unknown(l) => Some(l.as_str()),
        _ => None,
    }
}

/// Waits for an event; false if the guest ended first.
fn wait(events: &Receiver<Event>, mut pred: impl FnMut(&Event) -> bool) -> bool {
    events.iter().any(|e| pred(&e))
}

/// Types `cmd` and waits for its `@@ shell-done`.
fn command(stdin: &mut impl Write, events: &Receiver<Event>, cmd: &str) -> bool {
    if stdin.write_all(format!("{cmd}\n").as_bytes()).and_then(|_| stdin.flush()).is_err() {
        return false;
    }
    wait(events, |e| raw(e).is_some_and(|l| l.starts_with("@@ shell-done")))
}

/// The answers, in order: the lines between one `@@ shell-done` (or `@@ shell-ready`) and the
/// next, without the prompt and the echoed command. (The host may type before the prompt is
/// printed, so the echo can come before the prompt: both are dropped wherever they are.)
fn answers(log: &[String], cmds: &[&str]) -> Vec<Vec<String>> {
    let from = log.iter().position(|l| l == "@@ shell-ready").expect("no @@ shell-ready") + 1;
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for l in &log[from..] {
        let l = l.strip_prefix(qemu::SHELL_PROMPT).unwrap_or(l).trim_end();
        if l.starts_with("@@ shell-done") {
            out.push(std::mem::take(&mut cur));
            continue;
        }
        let cmd = cmds.get(out.len()).copied().unwrap_or("");
        if l == cmd || l.is_empty() {
            continue;
        }
        // An echo directly followed by the prompt and the first output line.
        let l = l.strip_prefix(cmd).map(|r| r.trim_start()).filter(|_| cmd == "help").unwrap_or(l);
        cur.push(l.to_string());
    }
    out
}

/// One row of a whitespace-separated table: the cells of the first line whose first cells
/// match `key`.
fn row<'a>(lines: &[&'a str], key: &[&str]) -> Option<Vec<&'a str>> {
    lines.iter().map(|l| l.split_whitespace().collect::<Vec<_>>()).find(|cells| cells.starts_with(key))
}

/// What the operator types, in order (`halt` follows).
const COMMANDS: [&str; 10] = [
    "help",
    "intrstat",
    "ps",
    "lockstat 5",
    "sysctl intr.pool.size",
    "sysctl no.such.knob",
    "sysctl dev.com2.thre_stuck=on",
    "intrstat",
    "sysctl dev.com2.thre_stuck=off",
    "intrstat",
];

#[test]
fn operator_session_with_a_storm() {
    let mut cfg = BootConfig::new(1, "run=shell").with_timeout(Duration::from_secs(120));
    cfg.input = SerialInput::feeder(|mut stdin, events| {
        if !wait(&events, |e| raw(e) == Some("@@ shell-ready")) {
            return;
        }
        // The last three: the fault — COM2 storms on this (only) CPU; its filter claims
        // every interrupt with nothing done, so the storm rule throttles COM2 and the shell
        // answers — then the cause removed.
        for cmd in &COMMANDS[..COMMANDS.len() - 1] {
            if !command(&mut stdin, &events, cmd) {
                return;
            }
        }
        if !wait(&events, |e| matches!(e, Event::Storm { source, on: false, .. } if source == "com2")) {
            return;
        }
        let _ = command(&mut stdin, &events, COMMANDS[COMMANDS.len() - 1]);
        let _ = stdin.write_all(b"halt\n");
        let _ = stdin.flush();
        for _ in events.iter() {}
    });
    let r = qemu::boot(&cfg).unwrap_or_else(|e| panic!("could not boot: {e}"));
    let why = tail(&r);
    assert_eq!(r.exit_code(), Some(qemu::EXIT_SUCCESS), "{why}");
    let ans = answers(&r.serial_log, &COMMANDS);
    assert!(ans.len() >= COMMANDS.len(), "{} answers for {} commands\n{why}", ans.len(), COMMANDS.len());
    let answer = |i: usize| -> Vec<&str> { ans[i].iter().map(|l| l.as_str()).collect() };

    // help names every command.
    let help = answer(0).join("\n");
    for c in ["intrstat", "lockstat", "ps", "sysctl", "test", "bench", "halt"] {
        assert!(help.contains(c), "help does not mention {c}\n{why}");
    }
    // intrstat: a header and com1's total row with interrupts counted.
    let st = answer(1);
    assert!(st[0].starts_with("intrstat: since="), "{st:?}");
    let com1 = row(&st, &["com1"]).filter(|c| c.contains(&"total"));
    let com1 = com1.unwrap_or_else(|| {
        // The total row's first cell is the source name; find it by both.
        st.iter()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|c| c.first() == Some(&"com1") && c.contains(&"total"))
            .unwrap_or_else(|| panic!("no com1 total row in {st:?}\n{why}"))
    });
    let header: Vec<&str> = st[1].split_whitespace().collect();
    let count_at = header.iter().position(|h| *h == "count").expect("count column");
    let count: u64 = com1[count_at].parse().unwrap_or_else(|_| panic!("count cell {:?}", com1[count_at]));
    assert!(count > 0, "com1 counted no interrupts: {com1:?}");
    // ps: the shell's own thread is listed, onproc.
    let ps = answer(2);
    assert!(ps[0].starts_with("ps: threads="), "{ps:?}");
    assert!(
        ps.iter().any(|l| l.contains(" main ") && l.contains("onproc")),
        "ps: no running main thread {ps:?}"
    );
    // lockstat: header and at most 5 rows.
    let ls = answer(3);
    assert!(ls[0].starts_with("lockstat: stats="), "{ls:?}");
    assert!(ls.len() <= 2 + 5 + 1, "lockstat 5 printed {} lines", ls.len());
    // sysctl read; a bad name is an error naming it.
    let sc = answer(4);
    assert!(sc.iter().any(|l| l.starts_with("intr.pool.size=")), "{sc:?}");
    let bad = answer(5).join("\n");
    assert!(bad.contains("error") && bad.contains("no.such.knob"), "bad sysctl: {bad}");
    // The storm: reported on by name, com2 shown storming by intrstat while the shell
    // answered, then over.
    assert!(
        r.events.iter().any(|e| matches!(e, Event::Storm { source, on: true, .. } if source == "com2")),
        "no storm reported for com2\n{why}"
    );
    let during = answer(7);
    let com2 = during
        .iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|c| c.first() == Some(&"com2") && c.contains(&"total"))
        .unwrap_or_else(|| panic!("no com2 total row during the storm {during:?}"));
    // The state is the 16th column (docs/PROTOCOL.md, `intrstat`).
    const STATE: usize = 15;
    assert!(
        com2.get(STATE).is_some_and(|s| s.contains("storm") || s.contains("throttled")),
        "com2: {com2:?}"
    );
    let after = answer(9);
    let com2 = after
        .iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|c| c.first() == Some(&"com2") && c.contains(&"total"))
        .unwrap_or_else(|| panic!("no com2 total row after the storm {after:?}"));
    assert_eq!(com2.get(STATE), Some(&"-"), "com2 still marked after the storm: {com2:?}");
}

/// Input typed before the kernel is up (issue 11): `help\nps\nhalt\n` written to QEMU's
/// serial input the moment QEMU starts, not after `@@ shell-ready`. QEMU hands the first byte
/// to the UART at once; the UART set-up must keep it, so `help` runs intact (it used to answer
/// `ithreads> elp` / `cmd=elp status=error`).
#[test]
fn input_typed_before_the_shell_is_ready_is_kept() {
    let mut cfg = BootConfig::new(2, "run=shell").with_timeout(Duration::from_secs(120));
    cfg.input = SerialInput::feeder(|mut stdin, events| {
        let _ = stdin.write_all(b"help\nps\nhalt\n");
        let _ = stdin.flush();
        for _ in events.iter() {}
    });
    let r = qemu::boot(&cfg).unwrap_or_else(|e| panic!("could not boot: {e}"));
    let why = tail(&r);
    let done: Vec<&str> =
        r.events.iter().filter_map(raw).filter(|l| l.starts_with("@@ shell-done")).collect();
    assert_eq!(
        done,
        [
            "@@ shell-done cmd=help status=ok",
            "@@ shell-done cmd=ps status=ok",
            "@@ shell-done cmd=halt status=ok"
        ],
        "the early input did not run intact\n{why}"
    );
    assert_eq!(r.exit_code(), Some(qemu::EXIT_SUCCESS), "{why}");
}
