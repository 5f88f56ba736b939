//! Setting up the host: the Rust target, QEMU, and the accelerator choice.
//!
//! The host tool's modules depend one way: `setup` (a leaf: it owns [`Accel`] and the QEMU
//! binary's name) ← `kbuild` (builds the kernel) ← `qemu` (boots it) ← the rest.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Mutex, OnceLock};

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// The QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// Hardware virtualization (`-accel kvm -cpu host`).
    Kvm,
    /// Emulation (`-accel tcg`).
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// The most CPUs the kernel runs on (`sched::MAX_CPUS`; it would ignore the others).
pub const MAX_SMP: u32 = 64;

/// A refused `--smp` value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SmpError {
    /// The value is not a number.
    NotANumber { value: String },
    /// Zero CPUs.
    Zero,
    /// More CPUs than [`MAX_SMP`].
    TooMany { n: u32 },
}

impl std::fmt::Display for SmpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SmpError::NotANumber { value } => write!(f, "'{value}' is not a number of CPUs"),
            SmpError::Zero => f.write_str("at least 1 CPU"),
            SmpError::TooMany { n } => {
                write!(f, "{n} CPUs: the kernel supports at most {MAX_SMP} (sched::MAX_CPUS)")
            }
        }
    }
}

impl std::error::Error for SmpError {}

/// Parses an `--smp` value: 1 ..= [`MAX_SMP`], refused beyond with a message naming the limit.
pub fn parse_smp(s: &str) -> Result<u32, SmpError> {
    let n: u32 = s.trim().parse().map_err(|_| SmpError::NotANumber { value: s.to_string() })?;
    match n {
        0 => Err(SmpError::Zero),
        n if n > MAX_SMP => Err(SmpError::TooMany { n }),
        n => Ok(n),
    }
}

/// Why the host could not be set up. Cloneable: [`ensure_tools`] caches it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SetupError {
    /// `rustup target list --installed` failed; its stderr.
    TargetListFailed { stderr: String },
    /// rustup could not be run.
    NoRustup { source: Arc<std::io::Error> },
    /// QEMU is missing and this user cannot install it; the message gives the install command.
    QemuMissingNotRoot,
    /// A setup command (shown as `command`) exited with `status`.
    CommandFailed { command: String, status: ExitStatus },
    /// A setup command could not be run.
    CannotRun { command: String, source: Arc<std::io::Error> },
    /// QEMU was installed but is still not on `PATH`.
    QemuStillMissing,
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetupError::TargetListFailed { stderr } => {
                write!(f, "setup: `rustup target list --installed` failed: {}", stderr.trim())
            }
            SetupError::NoRustup { source } => write!(
                f,
                "setup: cannot run rustup ({source}); install rustup, then run \
                 `rustup target add {KERNEL_TARGET}`"
            ),
            SetupError::QemuMissingNotRoot => write!(
                f,
                "setup: {QEMU} is not on PATH and this user is not root; install it with:\n    \
                 sudo apt-get update && sudo apt-get install -y qemu-system-x86"
            ),
            SetupError::CommandFailed { command, status } => write!(f, "setup: {command} failed ({status})"),
            SetupError::CannotRun { command, source } => write!(f, "setup: cannot run {command}: {source}"),
            SetupError::QemuStillMissing => write!(f, "setup: {QEMU} still not on PATH after installing"),
        }
    }
}

impl std::error::Error for SetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SetupError::NoRustup { source } | SetupError::CannotRun { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

/// The Rust target the kernel is built for.
pub const KERNEL_TARGET: &str = "x86_64-unknown-none";

/// Makes sure the Rust target and QEMU are installed, installing them when
/// possible; prints what it does. Runs once per process (the result is cached).
pub fn ensure_tools() -> Result<(), SetupError> {
    static DONE: OnceLock<Result<(), SetupError>> = OnceLock::new();
    DONE.get_or_init(|| {
        ensure_target()?;
        let qemu = ensure_qemu()?;
        println!("setup: Rust target {KERNEL_TARGET} installed; QEMU at {}", qemu.display());
        Ok(())
    })
    .clone()
}

fn ensure_target() -> Result<(), SetupError> {
    let listed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    match listed {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            if text.lines().any(|l| l.trim() == KERNEL_TARGET) {
                return Ok(());
            }
        }
        Ok(out) => {
            return Err(SetupError::TargetListFailed {
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
        Err(e) => return Err(SetupError::NoRustup { source: Arc::new(e) }),
    }
    println!("setup: installing Rust target {KERNEL_TARGET} (rustup target add {KERNEL_TARGET})");
    run_visible(Command::new("rustup").args(["target", "add", KERNEL_TARGET]))
}

fn ensure_qemu() -> Result<PathBuf, SetupError> {
    if let Some(path) = find_in_path(QEMU) {
        return Ok(path);
    }
    const INSTALL: &str = "apt-get update && apt-get install -y qemu-system-x86";
    if !is_root() {
        return Err(SetupError::QemuMissingNotRoot);
    }
    println!("setup: installing QEMU ({INSTALL})");
    run_visible(Command::new("apt-get").arg("update"))?;
    run_visible(
        Command::new("apt-get")
            .args(["install", "-y", "qemu-system-x86"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    find_in_path(QEMU).ok_or(SetupError::QemuStillMissing)
}

/// Runs `cmd` with its output going to the terminal.
fn run_visible(cmd: &mut Command) -> Result<(), SetupError> {
    let command = format!("{cmd:?}");
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(status) => Err(SetupError::CommandFailed { command, status }),
        Err(e) => Err(SetupError::CannotRun { command, source: Arc::new(e) }),
    }
}

/// Whether this process runs as root (asks `id -u`).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The first executable file called `name` in `$PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false))
}

/// The accelerator and why it was chosen.
pub fn choose_accel(forced: Option<Accel>) -> (Accel, String) {
    if let Some(a) = forced {
        return (a, "forced by --accel".into());
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").map(drop);
    decide_accel(&cpuinfo, kvm)
}

/// The decision of [`choose_accel`] from the text of `/proc/cpuinfo` and the
/// result of opening `/dev/kvm` read-write.
pub fn decide_accel(cpuinfo: &str, kvm_open: std::io::Result<()>) -> (Accel, String) {
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_once(':').map(|(_, f)| f).unwrap_or("").split_whitespace())
        .any(|f| f == "vmx" || f == "svm");
    match (hw, kvm_open) {
        (true, Ok(())) => (Accel::Kvm, "vmx/svm present and /dev/kvm opens".into()),
        (true, Err(e)) => (Accel::Tcg, format!("/dev/kvm does not open read-write: {e}")),
        (false, Ok(())) => {
            (Accel::Tcg, "no vmx/svm in /proc/cpuinfo; /dev/kvm here is not hardware virtualization".into())
        }
        (false, Err(_)) => (Accel::Tcg, "no vmx/svm in /proc/cpuinfo; no /dev/kvm".into()),
    }
}

/// Chooses the accelerator (`forced` wins) and prints the choice, once per
/// process for each distinct choice.
pub fn accel(forced: Option<Accel>) -> Accel {
    static PRINTED: Mutex<Vec<Accel>> = Mutex::new(Vec::new());
    let (accel, why) = choose_accel(forced);
    let mut printed = PRINTED.lock().unwrap_or_else(|e| e.into_inner());
    if !printed.contains(&accel) {
        printed.push(accel);
        if accel == Accel::Kvm && forced.is_none() {
            println!("accel: kvm");
        } else {
            println!("accel: {accel} ({why})");
        }
    }
    accel
}

/// The workspace root (the root package's directory).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_HW: &str = "processor\t: 0\nflags\t\t: fpu vme sse2 hypervisor\n";
    const VMX: &str = "processor\t: 0\nflags\t\t: fpu vmx sse2\nvmx flags\t: ept\n";

    #[test]
    fn kvm_only_with_hardware_and_device() {
        assert_eq!(decide_accel(VMX, Ok(())).0, Accel::Kvm);
        assert_eq!(decide_accel("flags : svm\n", Ok(())).0, Accel::Kvm);
        let (a, why) = decide_accel(NO_HW, Ok(()));
        assert_eq!(a, Accel::Tcg);
        assert_eq!(why, "no vmx/svm in /proc/cpuinfo; /dev/kvm here is not hardware virtualization");
        assert_eq!(
            decide_accel(VMX, Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied"))).0,
            Accel::Tcg
        );
        assert_eq!(decide_accel(NO_HW, Err(std::io::ErrorKind::NotFound.into())).0, Accel::Tcg);
        // "vmx flags" is a line name, not a flag.
        assert_eq!(decide_accel("flags : fpu\nvmx flags : ept\n", Ok(())).0, Accel::Tcg);
    }

    #[test]
    fn forced_accel_wins() {
        assert_eq!(choose_accel(Some(Accel::Kvm)).0, Accel::Kvm);
        assert_eq!(choose_accel(Some(Accel::Tcg)).0, Accel::Tcg);
    }

    #[test]
    fn smp_limit_is_the_kernels() {
        assert_eq!(MAX_SMP as usize, sched::MAX_CPUS);
        assert_eq!(parse_smp("64"), Ok(64));
        assert_eq!(parse_smp("1"), Ok(1));
        let e = parse_smp("255").unwrap_err();
        assert_eq!(e, SmpError::TooMany { n: 255 });
        assert!(e.to_string().contains("at most 64"), "{e}");
        assert_eq!(parse_smp("0"), Err(SmpError::Zero));
        assert_eq!(parse_smp("x"), Err(SmpError::NotANumber { value: "x".into() }));
        assert_eq!(parse_smp("x").unwrap_err().to_string(), "'x' is not a number of CPUs");
    }

    #[test]
    fn path_lookup() {
        assert!(find_in_path("sh").is_some());
        assert!(find_in_path("no-such-program-ithreads").is_none());
    }
}
