//! A hostile user at the host tool and the serial shell (issue 11): the real binary
//! (`ithreads shell` over pipes, `ithreads test`) and the real kernel.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStringExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ithreads::protocol::Event;
use ithreads::qemu::{self, BootConfig};

/// Runs the tool with `args`, `input` on its stdin (then closed).
fn tool(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ithreads"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn text(o: &Output) -> String {
    format!("{}\n--- stderr:\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `printf 'help\nps\n' | ithreads shell --smp 2`: the first byte is not lost (the tool types
/// after `@@ shell-ready`), and the end of input ends the run (`halt`), long before --timeout.
#[test]
fn piped_shell_answers_help_and_halts_at_end_of_input() {
    let t = std::time::Instant::now();
    let o = tool(&["shell", "--smp", "2", "--timeout", "300"], b"help\nps\n");
    let s = text(&o);
    assert!(o.status.success(), "{s}");
    assert!(s.contains("@@ shell-done cmd=help status=ok"), "{s}");
    assert!(!s.contains("cmd=elp"), "the first byte was lost:\n{s}");
    assert!(s.contains("@@ shell-done cmd=ps status=ok"), "{s}");
    assert!(s.contains("@@ shell-done cmd=halt status=ok"), "{s}");
    assert!(s.contains("shell: the kernel halted"), "{s}");
    assert!(t.elapsed() < Duration::from_secs(250), "waited for the timeout");
}

/// Overlong lines, control and non-UTF-8 bytes, `bench` matching nothing, `sysctl
/// intr.pool.size`.
#[test]
fn piped_shell_survives_hostile_lines() {
    let mut input = b"y".repeat(512);
    input.extend_from_slice(b"halt\n");
    input.extend_from_slice(&b"x".repeat(512));
    input.extend_from_slice(b"ps\n");
    input.extend_from_slice(b"\x1b[31mzz\xff\x00q\n");
    input.extend_from_slice(b"bench zzz 1\n");
    input.extend_from_slice(b"sysctl intr.pool.size\n");
    input.extend_from_slice(b"sysctl intr.pool.bounds\n");
    let o = tool(&["shell", "--smp", "2", "--timeout", "300"], &input);
    let s = text(&o);
    assert!(o.status.success(), "{s}");
    // The 516-byte line is one error naming its length; its tail `halt` did not run (the
    // shell went on to the next commands), nor did the other one's `ps`.
    assert!(s.contains("error: line too long (516 bytes; the limit is 512)"), "{s}");
    assert!(s.contains("error: line too long (514 bytes; the limit is 512)"), "{s}");
    assert_eq!(s.matches("halting").count(), 1, "only the final halt runs:\n{s}");
    assert!(!s.contains("ps: threads="), "part of an overlong line ran:\n{s}");
    assert_eq!(s.matches("@@ shell-done cmd=- status=error").count(), 2, "{s}");
    // No raw ESC or NUL comes back: escaped in the error and in the protocol line.
    let after_ready = o.stdout.split(|&b| b == b'\n').skip_while(|l| l != b"@@ shell-ready");
    for l in after_ready {
        assert!(
            !l.contains(&0x1b) && !l.contains(&0),
            "raw control byte in {:?}",
            String::from_utf8_lossy(l)
        );
    }
    assert!(s.contains(r"@@ shell-done cmd=\x1b[31mzz\xff\x00q status=error"), "{s}");
    // A bench filter matching nothing is an error naming it.
    assert!(s.contains("error: bench: no benchmark name contains 'zzz'"), "{s}");
    assert!(s.contains("@@ shell-done cmd=bench status=error"), "{s}");
    // The pool's target and live sizes, each labelled; the target is within the bounds.
    let size = s.lines().find_map(|l| l.split("intr.pool.size=").nth(1)).unwrap_or_else(|| panic!("{s}"));
    let target: usize = size.split_whitespace().next().unwrap().parse().unwrap();
    assert!(size.contains("(target; live "), "{size}");
    let bounds = s.lines().find_map(|l| l.split("intr.pool.bounds=").nth(1)).unwrap();
    let (lo, hi) = bounds.trim().split_once("..=").unwrap();
    assert!((lo.parse::<usize>().unwrap()..=hi.parse().unwrap()).contains(&target), "{size} vs {bounds}");
}

/// `ithreads test --filter no_such_test` fails, naming the filter.
#[test]
fn test_filter_matching_nothing_fails() {
    let o = tool(&["test", "--smp", "1", "--filter", "no_such_test"], b"");
    let s = text(&o);
    assert!(!o.status.success(), "{s}");
    assert!(s.contains("no test name contains 'no_such_test'"), "{s}");
}

/// `--smp` beyond the kernel's 64 CPUs is refused before anything boots.
#[test]
fn smp_beyond_the_kernel_limit_is_refused() {
    for cmd in ["test", "run", "shell", "boot", "bench"] {
        let o = tool(&[cmd, "--smp", "65"], b"");
        let s = text(&o);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {s}");
        assert!(s.contains("the kernel supports at most 64"), "{cmd}: {s}");
    }
}

/// A kernel option given twice is refused by the kernel, naming it.
#[test]
fn duplicate_kernel_option_is_refused() {
    let r = qemu::boot(&BootConfig::new(1, "run=tests hz=100 run=scenario")).unwrap();
    assert!(
        r.events.contains(&Event::CmdlineError { option: "run".into(), msg: "duplicate option".into() }),
        "{:?}",
        r.serial_log
    );
    assert_eq!(r.exit_code(), Some(qemu::EXIT_FAILURE));
}

/// A command line that is not UTF-8 is a boot error, not silently dropped.
#[test]
fn non_utf8_command_line_is_a_boot_error() {
    let kernel = ithreads::kbuild::kernel().unwrap();
    let cfg = BootConfig::new(1, "PLACEHOLDER").with_timeout(Duration::from_secs(120));
    let args = qemu::qemu_args(&cfg, qemu::Accel::Tcg, &kernel);
    let mut cmd = Command::new(qemu::QEMU);
    for a in args {
        if a == "PLACEHOLDER" {
            cmd.arg(OsString::from_vec(b"run=tests test.filter=\xff\xfe".to_vec()));
        } else {
            cmd.arg(a);
        }
    }
    let run = qemu::supervise(cmd, cfg.timeout, |_, _, _| {}).unwrap();
    let err = run.events.iter().find_map(|e| match e {
        Event::CmdlineError { msg, .. } => Some(msg.clone()),
        _ => None,
    });
    let err = err.unwrap_or_else(|| panic!("no cmdline error: {:?}", run.serial_log));
    assert!(err.contains("not UTF-8"), "{err}");
    assert_eq!(run.outcome, qemu::Outcome::Exited { code: qemu::EXIT_FAILURE });
}
