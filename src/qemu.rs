//! Booting the kernel in QEMU: the argument list, streaming the serial port,
//! the timeout (a hang) and the exit status.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use crate::protocol::{self, Event};
pub use crate::setup::{Accel, QEMU};

/// The kernel shell's prompt (docs/PROTOCOL.md, "Shell").
pub const SHELL_PROMPT: &str = "ithreads> ";
/// The fast firmware used when it is installed (skips SeaBIOS's start-up).
pub const QBOOT: &str = "/usr/share/qemu/qboot.rom";
/// QEMU's exit status when the kernel reports success (`0x10 << 1 | 1`).
pub const EXIT_SUCCESS: i32 = 33;
/// QEMU's exit status when the kernel reports failure (`0x11 << 1 | 1`).
pub const EXIT_FAILURE: i32 = 35;
/// The default limit on one boot.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// What the guest's serial port receives (QEMU's stdin).
#[derive(Clone, Default)]
pub enum SerialInput {
    /// Nothing (stdin is `/dev/null`).
    #[default]
    Null,
    /// A feeder running on its own thread: it gets QEMU's stdin and every protocol event
    /// as it arrives (so it can wait for the guest to be ready before typing). QEMU's
    /// stdin closes when the feeder returns and drops it.
    Feeder(Arc<dyn Fn(ChildStdin, mpsc::Receiver<Event>) + Send + Sync>),
    /// The host tool's own stdin (an interactive session).
    Inherit,
}

impl SerialInput {
    /// A feeder (see [`SerialInput::Feeder`]).
    pub fn feeder(f: impl Fn(ChildStdin, mpsc::Receiver<Event>) + Send + Sync + 'static) -> Self {
        SerialInput::Feeder(Arc::new(f))
    }
}

impl std::fmt::Debug for SerialInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SerialInput::Null => "Null",
            SerialInput::Feeder(_) => "Feeder",
            SerialInput::Inherit => "Inherit",
        })
    }
}

/// How to boot the kernel once.
#[derive(Debug, Clone)]
pub struct BootConfig {
    /// Number of CPUs (`-smp`).
    pub smp: u32,
    /// The accelerator; `None` picks one with [`crate::setup::accel`].
    pub accel: Option<Accel>,
    /// The kernel command line (`-append`).
    pub append: String,
    /// More QEMU arguments, appended last (e.g. `-icount`, devices).
    pub extra_args: Vec<String>,
    /// Kill QEMU and report a hang after this long.
    pub timeout: Duration,
    /// What the guest's serial port receives.
    pub input: SerialInput,
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            smp: 4,
            accel: None,
            append: String::new(),
            extra_args: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            input: SerialInput::Null,
        }
    }
}

impl BootConfig {
    /// A configuration with `smp` CPUs and the command line `append`.
    pub fn new(smp: u32, append: impl Into<String>) -> Self {
        BootConfig { smp, append: append.into(), ..BootConfig::default() }
    }

    /// The same configuration with `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Adds `opts` (space-separated `key=value`) to the kernel command line.
    pub fn with_append(mut self, opts: &str) -> Self {
        self.append = join_cmdline(&self.append, opts);
        self
    }
}

/// Joins two kernel command-line fragments with one space.
pub fn join_cmdline(a: &str, b: &str) -> String {
    let (a, b) = (a.trim(), b.trim());
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a} {b}"),
    }
}

/// QEMU's arguments (without the program name) to boot `kernel` with `cfg`.
/// `-bios` qboot is used if it is installed.
pub fn qemu_args(cfg: &BootConfig, accel: Accel, kernel: &Path) -> Vec<String> {
    let qboot = Path::new(QBOOT);
    build_args(cfg, accel, kernel, qboot.exists().then_some(qboot))
}

/// [`qemu_args`] with an explicit firmware choice.
pub fn build_args(cfg: &BootConfig, accel: Accel, kernel: &Path, bios: Option<&Path>) -> Vec<String> {
    let mut args: Vec<String> = vec!["-M".into(), "pc".into()];
    if let Some(bios) = bios {
        args.extend(["-bios".into(), bios.display().to_string()]);
    }
    args.extend(
        [
            "-m",
            "256M",
            "-smp",
            &cfg.smp.to_string(),
            "-kernel",
            &kernel.display().to_string(),
            "-append",
            &cfg.append,
            "-display",
            "none",
            "-serial",
            "stdio",
            "-serial",
            "null",
            "-monitor",
            "none",
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-device",
            "edu",
        ]
        .map(String::from),
    );
    match accel {
        Accel::Tcg => args.extend(["-accel".into(), "tcg".into()]),
        Accel::Kvm => args.extend(["-accel", "kvm", "-cpu", "host"].map(String::from)),
    }
    args.extend(cfg.extra_args.iter().cloned());
    args
}

/// The least guest memory the kernel is known to run with: its in-kernel suite on 4 CPUs
/// passes with 64 MiB and runs out of heap at 32 MiB (below 4 MiB QEMU cannot even load it and
/// exits with status 0 before the kernel prints anything). Every boot gets 256 MiB unless
/// `extra_args` sets `-m`.
pub const MIN_GUEST_MEMORY_MIB: u64 = 64;

/// The guest memory in MiB that QEMU's arguments ask for: the last `-m` (`-m 256M`,
/// `-m 2G`, `-m 512`, `-m size=1G,...`; no suffix means MiB). `None` if there is no `-m` or
/// it cannot be read.
pub fn guest_memory_mib(args: &[String]) -> Option<u64> {
    let v = args.windows(2).rev().find(|w| w[0] == "-m")?[1].as_str();
    let v = v.split(',').next()?.trim_start_matches("size=");
    let (num, mul) = match v.char_indices().last()? {
        (i, 'K' | 'k') => (&v[..i], 1.0 / 1024.0),
        (i, 'M' | 'm') => (&v[..i], 1.0),
        (i, 'G' | 'g') => (&v[..i], 1024.0),
        (i, 'T' | 't') => (&v[..i], 1024.0 * 1024.0),
        _ => (v, 1.0),
    };
    let n: f64 = num.parse().ok()?;
    Some((n * mul) as u64)
}

/// Why a boot could not be run (as opposed to how a run ended: [`Outcome`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum QemuError {
    /// Setting up the host or building the kernel failed.
    Build(crate::kbuild::BuildError),
    /// The guest memory (`-m`) is `mib` MiB, below [`MIN_GUEST_MEMORY_MIB`].
    TooLittleMemory { mib: u64 },
    /// The QEMU binary `binary` could not be run (spawned or supervised).
    Run { binary: &'static str, source: std::io::Error },
}

impl std::fmt::Display for QemuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QemuError::Build(e) => e.fmt(f),
            QemuError::TooLittleMemory { mib } => write!(
                f,
                "guest memory {mib} MiB is below the kernel's minimum of {MIN_GUEST_MEMORY_MIB} MiB \
                 (-m {MIN_GUEST_MEMORY_MIB}M or more)"
            ),
            QemuError::Run { binary, source } => write!(f, "cannot run {binary}: {source}"),
        }
    }
}

impl std::error::Error for QemuError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            QemuError::Build(e) => Some(e),
            QemuError::Run { source, .. } => Some(source),
            QemuError::TooLittleMemory { .. } => None,
        }
    }
}

impl From<crate::kbuild::BuildError> for QemuError {
    fn from(e: crate::kbuild::BuildError) -> Self {
        QemuError::Build(e)
    }
}

/// Refuses QEMU arguments whose guest memory is below [`MIN_GUEST_MEMORY_MIB`], naming it.
pub fn check_memory(args: &[String]) -> Result<(), QemuError> {
    match guest_memory_mib(args) {
        Some(mib) if mib < MIN_GUEST_MEMORY_MIB => Err(QemuError::TooLittleMemory { mib }),
        _ => Ok(()),
    }
}

/// Quotes `args` for display as a shell command.
pub fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_.,=/:+@%".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How a boot ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// QEMU exited with this status (33 = kernel success, 35 = kernel failure).
    Exited { code: i32 },
    /// QEMU was killed by a signal it did not get from us.
    Signaled { signal: i32 },
    /// No exit within the timeout; QEMU was killed. `last_test` is the name in
    /// the last `@@ test-begin` line, if any.
    Hang { last_test: Option<String> },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Exited { code } => write!(f, "qemu exited with status {code}"),
            Outcome::Signaled { signal } => write!(f, "qemu was killed by signal {signal}"),
            Outcome::Hang { last_test: None } => write!(f, "hang (no test had begun)"),
            Outcome::Hang { last_test: Some(name) } => write!(f, "hang (last test begun: {name})"),
        }
    }
}

/// Which output of QEMU a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The guest's serial port (QEMU's stdout).
    Serial,
    /// QEMU's own diagnostics (stderr).
    Stderr,
}

/// Everything one boot produced.
#[derive(Debug, Clone)]
pub struct BootReport {
    /// How it ended.
    pub outcome: Outcome,
    /// The parsed `@@ ` lines, in order.
    pub events: Vec<Event>,
    /// Every serial line, in order (protocol lines included).
    pub serial_log: Vec<String>,
    /// QEMU's stderr lines.
    pub stderr: Vec<String>,
    /// Wall time from spawning QEMU to its end.
    pub elapsed: Duration,
    /// The configuration booted.
    pub config: BootConfig,
    /// The accelerator used.
    pub accel: Accel,
    /// The kernel ELF booted (for symbolizing backtraces).
    pub kernel: PathBuf,
}

impl BootReport {
    /// The exit status, if QEMU exited by itself.
    pub fn exit_code(&self) -> Option<i32> {
        match self.outcome {
            Outcome::Exited { code } => Some(code),
            _ => None,
        }
    }

    /// Whether QEMU exited with the kernel's success status.
    pub fn exited_success(&self) -> bool {
        self.exit_code() == Some(EXIT_SUCCESS)
    }

    /// Whether the boot hung.
    pub fn is_hang(&self) -> bool {
        matches!(self.outcome, Outcome::Hang { .. })
    }

    /// The first panic: `(cpu, msg)`.
    pub fn panic(&self) -> Option<(u32, &str)> {
        self.events.iter().find_map(|e| match e {
            Event::Panic { cpu, msg } => Some((*cpu, msg.as_str())),
            _ => None,
        })
    }

    /// The first backtrace.
    pub fn backtrace(&self) -> Option<&[u64]> {
        self.events.iter().find_map(|e| match e {
            Event::Backtrace(addrs) => Some(addrs.as_slice()),
            _ => None,
        })
    }

    /// The `@@ tests-done` counts: `(passed, failed)`.
    pub fn tests_done(&self) -> Option<(u32, u32)> {
        self.events.iter().find_map(|e| match e {
            Event::TestsDone { passed, failed } => Some((*passed, *failed)),
            _ => None,
        })
    }

    /// Whether `@@ scenario-done` was seen.
    pub fn scenario_done(&self) -> bool {
        self.events.contains(&Event::ScenarioDone)
    }

    /// The first `@@ cmdline-error`: `(option, msg)`.
    pub fn cmdline_error(&self) -> Option<(&str, &str)> {
        self.events.iter().find_map(|e| match e {
            Event::CmdlineError { option, msg } => Some((option.as_str(), msg.as_str())),
            _ => None,
        })
    }

    /// The `@@ result` records.
    pub fn results(&self) -> Vec<&[(String, String)]> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Result(kv) => Some(kv.as_slice()),
                _ => None,
            })
            .collect()
    }

    /// The last `n` serial lines.
    pub fn serial_tail(&self, n: usize) -> &[String] {
        &self.serial_log[self.serial_log.len().saturating_sub(n)..]
    }
}

/// Builds the kernel (once per process), picks the accelerator and boots.
pub fn boot(cfg: &BootConfig) -> Result<BootReport, QemuError> {
    boot_with(cfg, |_, _, _| {})
}

/// [`boot`], calling `on_line` for every line as it arrives (with its parsed
/// event for a serial protocol line).
pub fn boot_with(
    cfg: &BootConfig,
    on_line: impl FnMut(Source, &str, Option<&Event>),
) -> Result<BootReport, QemuError> {
    let kernel = crate::kbuild::kernel()?;
    let accel = match cfg.accel {
        Some(a) => a,
        None => crate::setup::accel(None),
    };
    boot_elf(cfg, accel, &kernel, on_line)
}

/// Boots the already built `kernel` with `accel`.
pub fn boot_elf(
    cfg: &BootConfig,
    accel: Accel,
    kernel: &Path,
    on_line: impl FnMut(Source, &str, Option<&Event>),
) -> Result<BootReport, QemuError> {
    let args = qemu_args(cfg, accel, kernel);
    check_memory(&args)?;
    let mut cmd = Command::new(QEMU);
    cmd.args(args);
    let run = supervise_with_input(cmd, cfg.timeout, &cfg.input, on_line)
        .map_err(|source| QemuError::Run { binary: QEMU, source })?;
    Ok(BootReport {
        outcome: run.outcome,
        events: run.events,
        serial_log: run.serial_log,
        stderr: run.stderr,
        elapsed: run.elapsed,
        config: cfg.clone(),
        accel,
        kernel: kernel.to_path_buf(),
    })
}

/// What [`supervise`] collected from a process.
#[derive(Debug, Clone)]
pub struct Supervised {
    pub outcome: Outcome,
    pub events: Vec<Event>,
    pub serial_log: Vec<String>,
    pub stderr: Vec<String>,
    pub elapsed: Duration,
}

/// Runs `cmd` (stdin null, stdout = serial, stderr = diagnostics), streams its
/// lines to `on_line` and kills it after `timeout` (reported as a hang).
pub fn supervise(
    cmd: Command,
    timeout: Duration,
    on_line: impl FnMut(Source, &str, Option<&Event>),
) -> std::io::Result<Supervised> {
    supervise_with_input(cmd, timeout, &SerialInput::Null, on_line)
}

/// [`supervise`] with `input` on the child's stdin.
pub fn supervise_with_input(
    mut cmd: Command,
    timeout: Duration,
    input: &SerialInput,
    mut on_line: impl FnMut(Source, &str, Option<&Event>),
) -> std::io::Result<Supervised> {
    let start = Instant::now();
    let deadline = start + timeout;
    cmd.stdin(match input {
        SerialInput::Null => Stdio::null(),
        SerialInput::Feeder(_) => Stdio::piped(),
        SerialInput::Inherit => Stdio::inherit(),
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    // Dies with this thread (which waits for it); its own process group unless it reads the
    // terminal; killed by the signal handler if the tool is interrupted (crate::cleanup).
    let own_group = !matches!(input, SerialInput::Inherit);
    crate::cleanup::prepare_child(&mut cmd, own_group);
    let mut child = cmd.spawn()?;
    let mut listed = Some(crate::cleanup::register_child(child.id(), own_group));
    let mut to_feeder = None;
    if let SerialInput::Feeder(feed) = input {
        let stdin = child.stdin.take().expect("piped stdin");
        let (etx, erx) = mpsc::channel::<Event>();
        to_feeder = Some(etx);
        let feed = Arc::clone(feed);
        thread::spawn(move || feed(stdin, erx));
    }
    let (tx, rx) = mpsc::channel::<(Source, String)>();
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let readers =
        [spawn_reader(Source::Serial, stdout, tx.clone()), spawn_reader(Source::Stderr, stderr, tx)];

    let mut out = Supervised {
        outcome: Outcome::Hang { last_test: None },
        events: Vec::new(),
        serial_log: Vec::new(),
        stderr: Vec::new(),
        elapsed: Duration::ZERO,
    };
    let mut last_test = None;
    let mut handle = |out: &mut Supervised, source: Source, line: String| match source {
        Source::Serial => {
            // The shell's prompt has no newline: a protocol line printed while it waits for
            // input starts after it.
            let event = protocol::parse_line(line.strip_prefix(SHELL_PROMPT).unwrap_or(&line));
            on_line(source, &line, event.as_ref());
            if let (Some(tx), Some(e)) = (&to_feeder, &event) {
                // The feeder may have finished: then nobody listens, which is fine.
                let _ = tx.send(e.clone());
            }
            if let Some(Event::TestBegin { name }) = &event {
                last_test = Some(name.clone());
            }
            out.events.extend(event);
            out.serial_log.push(line);
        }
        Source::Stderr => {
            on_line(source, &line, None);
            out.stderr.push(line);
        }
    };

    // Stream until both pipes close or the deadline passes.
    let mut hung = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break true;
        }
        match rx.recv_timeout(left) {
            Ok((source, line)) => handle(&mut out, source, line),
            Err(mpsc::RecvTimeoutError::Timeout) => break true,
            Err(mpsc::RecvTimeoutError::Disconnected) => break false,
        }
    };
    // Both pipes closed: wait for the exit, still within the deadline.
    let mut status: Option<ExitStatus> = None;
    while !hung {
        if let Some(s) = child.try_wait()? {
            listed = None;
            status = Some(s);
            break;
        }
        if Instant::now() >= deadline {
            hung = true;
        } else {
            thread::sleep(Duration::from_millis(5));
        }
    }
    if hung {
        // It may have exited just now; otherwise kill it.
        status = child.try_wait()?;
        if status.is_none() {
            let _ = child.kill();
            child.wait()?;
        }
    }
    drop(listed);
    out.elapsed = start.elapsed();
    // Collect what was still in flight (the pipes close once QEMU is gone).
    let drain_deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left = drain_deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((source, line)) => handle(&mut out, source, line),
            Err(_) => break,
        }
    }
    for r in readers {
        if r.is_finished() {
            let _ = r.join();
        }
    }
    out.outcome = match status {
        Some(s) => exit_outcome(s),
        None => Outcome::Hang { last_test },
    };
    Ok(out)
}

fn exit_outcome(status: ExitStatus) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => Outcome::Exited { code },
        (None, Some(signal)) => Outcome::Signaled { signal },
        (None, None) => Outcome::Exited { code: -1 },
    }
}

fn spawn_reader(
    source: Source,
    pipe: impl Read + Send + 'static,
    tx: mpsc::Sender<(Source, String)>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    while matches!(buf.last(), Some(b'\n' | b'\r')) {
                        buf.pop();
                    }
                    let line = String::from_utf8_lossy(&buf).replace('\r', "");
                    if tx.send((source, line)).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BootConfig {
        BootConfig::new(2, "run=tests test.filter=sched")
    }

    #[test]
    fn args_tcg_with_qboot() {
        let args = build_args(&cfg(), Accel::Tcg, Path::new("/k/ithreads-kernel"), Some(Path::new(QBOOT)));
        let expected = "-M pc -bios /usr/share/qemu/qboot.rom -m 256M -smp 2 \
             -kernel /k/ithreads-kernel -append 'run=tests test.filter=sched' \
             -display none -serial stdio -serial null -monitor none -no-reboot \
             -device isa-debug-exit,iobase=0xf4,iosize=0x04 -device edu -accel tcg";
        assert_eq!(shell_words(&args), expected);
        // The command line is one argument.
        let i = args.iter().position(|a| a == "-append").unwrap();
        assert_eq!(args[i + 1], "run=tests test.filter=sched");
    }

    #[test]
    fn args_kvm_without_bios_and_extra_args_last() {
        let mut c = cfg();
        c.smp = 4;
        c.extra_args =
            ["-icount", "shift=0,align=off,sleep=off", "-d", "guest_errors"].map(String::from).to_vec();
        let args = build_args(&c, Accel::Kvm, Path::new("k"), None);
        assert!(!args.contains(&"-bios".to_string()));
        assert_eq!(&args[..2], ["-M", "pc"]);
        let tail: Vec<&str> = args[args.len() - 8..].iter().map(String::as_str).collect();
        assert_eq!(
            tail,
            ["-accel", "kvm", "-cpu", "host", "-icount", "shift=0,align=off,sleep=off", "-d", "guest_errors"]
        );
        // Every boot has the edu device (the PCI/MSI tests' interrupt source), once.
        assert_eq!(args.windows(2).filter(|w| w[0] == "-device" && w[1] == "edu").count(), 1);
        let i = args.iter().position(|a| a == "-smp").unwrap();
        assert_eq!(args[i + 1], "4");
    }

    #[test]
    fn args_empty_append_is_still_passed() {
        let c = BootConfig::new(1, "");
        let args = build_args(&c, Accel::Tcg, Path::new("k"), None);
        let i = args.iter().position(|a| a == "-append").unwrap();
        assert_eq!(args[i + 1], "");
    }

    #[test]
    fn too_little_memory_is_refused_naming_the_minimum() {
        let mut c = cfg();
        let args = build_args(&c, Accel::Tcg, Path::new("k"), None);
        assert_eq!(guest_memory_mib(&args), Some(256));
        assert!(check_memory(&args).is_ok());
        c.extra_args = ["-m", "2M"].map(String::from).to_vec();
        let args = build_args(&c, Accel::Tcg, Path::new("k"), None);
        assert_eq!(guest_memory_mib(&args), Some(2));
        let e = check_memory(&args).unwrap_err().to_string();
        assert!(e.contains("2 MiB") && e.contains("minimum of 64 MiB"), "{e}");
        for (v, mib) in
            [("1G", Some(1024)), ("512", Some(512)), ("size=128M,slots=2", Some(128)), ("x", None)]
        {
            assert_eq!(guest_memory_mib(&["-m".into(), v.into()]), mib, "{v}");
        }
        // The boot itself is refused before QEMU starts.
        let e = boot_elf(&c, Accel::Tcg, Path::new("k"), |_, _, _| {}).unwrap_err();
        assert!(matches!(e, QemuError::TooLittleMemory { mib: 2 }), "{e}");
        let e = e.to_string();
        assert!(e.contains("minimum of 64 MiB"), "{e}");
    }

    #[test]
    fn cmdline_join() {
        assert_eq!(join_cmdline("run=tests", " test.filter=x "), "run=tests test.filter=x");
        assert_eq!(join_cmdline("", "a=1"), "a=1");
        assert_eq!(join_cmdline("a=1", "  "), "a=1");
        assert_eq!(BootConfig::new(1, "run=tests").with_append("hz=1000").append, "run=tests hz=1000");
    }

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn supervise_exit_and_events() {
        let mut seen = Vec::new();
        let run = supervise(
            sh("printf 'hello\\r\\n@@ test-begin a::b\\r\\n@@ test a::b pass ms=1\\n'; \
                echo oops >&2; printf '@@ tests-done passed=1 failed=0'; exit 33"),
            Duration::from_secs(20),
            |src, line, ev| seen.push((src, line.to_string(), ev.is_some())),
        )
        .unwrap();
        assert_eq!(run.outcome, Outcome::Exited { code: 33 });
        assert_eq!(
            run.serial_log,
            ["hello", "@@ test-begin a::b", "@@ test a::b pass ms=1", "@@ tests-done passed=1 failed=0"]
        );
        assert_eq!(run.stderr, ["oops"]);
        assert_eq!(run.events.len(), 3);
        assert_eq!(run.events[2], Event::TestsDone { passed: 1, failed: 0 });
        assert_eq!(seen.len(), 5);
        assert!(seen.contains(&(Source::Stderr, "oops".into(), false)));
    }

    #[test]
    fn supervise_hang_names_last_test() {
        let t = Instant::now();
        let run = supervise(
            sh("echo '@@ test-begin x::one'; echo '@@ test x::one pass ms=0'; \
                echo '@@ test-begin x::two'; exec sleep 30"),
            Duration::from_millis(700),
            |_, _, _| {},
        )
        .unwrap();
        assert!(t.elapsed() < Duration::from_secs(10));
        assert_eq!(run.outcome, Outcome::Hang { last_test: Some("x::two".into()) });
        assert_eq!(run.events.len(), 3);
    }

    #[test]
    fn supervise_hang_with_closed_output() {
        let run =
            supervise(sh("exec >/dev/null 2>&1; exec sleep 30"), Duration::from_millis(500), |_, _, _| {})
                .unwrap();
        assert_eq!(run.outcome, Outcome::Hang { last_test: None });
    }

    #[test]
    fn supervise_signal() {
        let run = supervise(sh("kill -9 $$"), Duration::from_secs(20), |_, _, _| {}).unwrap();
        assert_eq!(run.outcome, Outcome::Signaled { signal: 9 });
    }

    #[test]
    fn supervise_missing_program_is_an_error() {
        assert!(supervise(Command::new("/nonexistent/qemu"), Duration::from_secs(1), |_, _, _| {}).is_err());
    }
}
