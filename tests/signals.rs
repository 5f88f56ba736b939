//! Interrupting the host tool: SIGINT, SIGTERM and SIGHUP to `ithreads run` / `ithreads
//! shell` kill QEMU and remove the disk image; SIGKILL to the tool still takes QEMU down
//! (`PR_SET_PDEATHSIG`). Real signals to the real binary, then a look at `/proc` and at the
//! temporary folder.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The pids of the live (not zombie) QEMU processes whose parent is `parent`.
fn qemu_children(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // pid (comm) state ppid ...
        let Some((head, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if head.contains("qemu-system")
            && fields.get(1) == Some(&parent.to_string().as_str())
            && fields[0] != "Z"
        {
            out.push(pid);
        }
    }
    out
}

/// Whether `pid` still runs (a zombie does not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, r)| !r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn disk_images(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ithreads-disk-"))
        .collect()
}

/// Starts the tool with `args` (stdin a pipe we keep open, TMPDIR `tmp`) and waits until it
/// has a QEMU child and has printed a line containing `ready`. Returns the child, its QEMU's
/// pid and the stdout lines channel.
fn start(args: &[&str], tmp: &Path, ready: &str) -> (Child, u32, mpsc::Receiver<String>) {
    let mut tool = Command::new(env!("CARGO_BIN_EXE_ithreads"))
        .args(args)
        .env("TMPDIR", tmp)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = tool.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut seen = false;
    let mut log = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "the tool never got ready; output:\n{}", log.join("\n"));
        while let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            seen |= l.contains(ready);
            log.push(l);
        }
        if let Some(status) = tool.try_wait().unwrap() {
            panic!("the tool exited early ({status}); output:\n{}", log.join("\n"));
        }
        let qemus = qemu_children(tool.id());
        if seen && qemus.len() == 1 {
            return (tool, qemus[0], rx);
        }
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own child, not reaped.
    let r = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig})");
}

/// Waits for the tool to exit; returns its exit status.
fn wait_exit(tool: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = tool.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "the tool did not exit after the signal");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_gone(qemu: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(qemu) {
        assert!(Instant::now() < deadline, "QEMU (pid {qemu}) still runs after the tool exited");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `run` (the main job with its disk image) interrupted by `sig`.
fn run_interrupted(sig: i32) {
    let tmp = tempfile::tempdir().unwrap();
    let (mut tool, qemu, _out) = start(&["run", "--smp", "1"], tmp.path(), "boot:");
    assert_eq!(disk_images(tmp.path()).len(), 1, "the disk image exists while QEMU runs");
    signal(tool.id(), sig);
    let status = wait_exit(&mut tool);
    assert_eq!(status.code(), Some(128 + sig), "{status}");
    assert_gone(qemu);
    assert_eq!(disk_images(tmp.path()), Vec::<String>::new(), "disk image left behind");
}

#[test]
fn sigterm_to_run_kills_qemu_and_removes_the_disk_image() {
    run_interrupted(libc::SIGTERM);
}

#[test]
fn sigint_to_run_kills_qemu_and_removes_the_disk_image() {
    run_interrupted(libc::SIGINT);
}

#[test]
fn sighup_to_piped_shell_kills_qemu() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut tool, qemu, _out) = start(&["shell", "--smp", "1"], tmp.path(), "@@ shell-ready");
    signal(tool.id(), libc::SIGHUP);
    let status = wait_exit(&mut tool);
    assert_eq!(status.code(), Some(128 + libc::SIGHUP), "{status}");
    assert_gone(qemu);
}

#[test]
fn sigkill_to_the_tool_still_takes_qemu_down() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut tool, qemu, _out) = start(&["shell", "--smp", "1"], tmp.path(), "@@ shell-ready");
    signal(tool.id(), libc::SIGKILL);
    wait_exit(&mut tool);
    assert_gone(qemu);
}
