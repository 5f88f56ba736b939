//! Building the kernel ELF (once per process).

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::setup::{self, workspace_root, KERNEL_TARGET};

/// The kernel's package name.
pub const KERNEL_PACKAGE: &str = "ithreads-kernel";

/// The target directory of the kernel build, relative to the workspace root
/// (separate from `target/` so that this can run inside an outer `cargo`).
pub const KERNEL_TARGET_DIR: &str = "target/kernel";

/// The target directory of the traced kernel (the `trace` feature), relative to the
/// workspace root: its own, so that a traced build never replaces the default one.
pub const TRACED_TARGET_DIR: &str = "target/kernel-trace";

/// Which kernel to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// The default build: what every figure and test runs.
    Default,
    /// With the `trace` feature: the event trace recorded and dumped at the end (`--trace`).
    Traced,
}

impl Flavour {
    fn target_dir(self) -> &'static str {
        match self {
            Flavour::Default => KERNEL_TARGET_DIR,
            Flavour::Traced => TRACED_TARGET_DIR,
        }
    }
}

/// The kernel ELF's path (whether or not it has been built).
pub fn kernel_path() -> PathBuf {
    kernel_path_of(Flavour::Default)
}

/// The ELF's path of a flavour (whether or not it has been built).
pub fn kernel_path_of(flavour: Flavour) -> PathBuf {
    workspace_root().join(flavour.target_dir()).join(KERNEL_TARGET).join("release").join(KERNEL_PACKAGE)
}

/// Why the kernel could not be built. Cloneable: [`kernel`] caches it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum BuildError {
    /// Setting up the host failed.
    Setup(setup::SetupError),
    /// cargo could not be run.
    CannotRunCargo { source: std::sync::Arc<std::io::Error> },
    /// cargo failed with `status`; its stdout and stderr.
    CargoFailed { status: std::process::ExitStatus, stdout: String, stderr: String },
    /// cargo succeeded but the ELF is not at `path`.
    ElfNotFound { path: PathBuf },
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::Setup(e) => e.fmt(f),
            BuildError::CannotRunCargo { source } => write!(f, "build: cannot run cargo: {source}"),
            BuildError::CargoFailed { status, stdout, stderr } => {
                write!(f, "build: the kernel build failed ({status}):\n{stdout}{stderr}")
            }
            BuildError::ElfNotFound { path } => {
                write!(f, "build: cargo succeeded but {} does not exist", path.display())
            }
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BuildError::Setup(e) => Some(e),
            BuildError::CannotRunCargo { source } => Some(&**source),
            _ => None,
        }
    }
}

impl From<setup::SetupError> for BuildError {
    fn from(e: setup::SetupError) -> Self {
        BuildError::Setup(e)
    }
}

/// Sets up the host ([`setup::ensure_tools`]) and builds the kernel, once per
/// process; later calls return the cached result. Returns the ELF's path.
pub fn kernel() -> Result<PathBuf, BuildError> {
    kernel_of(Flavour::Default)
}

/// [`kernel`] for a flavour (each built once per process).
pub fn kernel_of(flavour: Flavour) -> Result<PathBuf, BuildError> {
    static DEFAULT: OnceLock<Result<PathBuf, BuildError>> = OnceLock::new();
    static TRACED: OnceLock<Result<PathBuf, BuildError>> = OnceLock::new();
    static BUILDING: Mutex<()> = Mutex::new(());
    let cell = match flavour {
        Flavour::Default => &DEFAULT,
        Flavour::Traced => &TRACED,
    };
    if let Some(done) = cell.get() {
        return done.clone();
    }
    // One build at a time, even if tests ask from several threads.
    let _guard = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    cell.get_or_init(|| {
        setup::ensure_tools()?;
        build(flavour)
    })
    .clone()
}

/// Environment variables that would override the workspace's
/// `.cargo/config.toml` (or the build's target) in the child cargo.
pub fn is_overriding_env(key: &str) -> bool {
    matches!(
        key,
        "RUSTFLAGS"
            | "CARGO_ENCODED_RUSTFLAGS"
            | "CARGO_BUILD_TARGET"
            | "CARGO_BUILD_RUSTFLAGS"
            | "CARGO_BUILD_TARGET_DIR"
            | "CARGO_BUILD_RUSTC_WRAPPER"
            | "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER"
            | "RUSTC_WRAPPER"
            | "RUSTC_WORKSPACE_WRAPPER"
    ) || key.starts_with("CARGO_TARGET_")
        || key.starts_with("CARGO_PROFILE_")
}

/// The cargo command that builds the kernel (not yet run).
pub fn build_command() -> Command {
    build_command_of(Flavour::Default)
}

/// The cargo command that builds a flavour (not yet run).
pub fn build_command_of(flavour: Flavour) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root()).args([
        "build",
        "--release",
        "-p",
        KERNEL_PACKAGE,
        "--target",
        KERNEL_TARGET,
        "--target-dir",
        &workspace_root().join(flavour.target_dir()).display().to_string(),
    ]);
    if flavour == Flavour::Traced {
        cmd.args(["--features", "trace"]);
    }
    for (key, _) in std::env::vars_os() {
        if let Some(key) = key.to_str() {
            if is_overriding_env(key) {
                cmd.env_remove(key);
            }
        }
    }
    cmd
}

fn build(flavour: Flavour) -> Result<PathBuf, BuildError> {
    let features = if flavour == Flavour::Traced { " --features trace" } else { "" };
    println!("build: kernel (cargo build --release -p {KERNEL_PACKAGE} --target {KERNEL_TARGET}{features})");
    let out = build_command_of(flavour)
        .output()
        .map_err(|e| BuildError::CannotRunCargo { source: std::sync::Arc::new(e) })?;
    if !out.status.success() {
        return Err(BuildError::CargoFailed {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let elf = kernel_path_of(flavour);
    if !elf.is_file() {
        return Err(BuildError::ElfNotFound { path: elf });
    }
    Ok(elf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overriding_env() {
        for k in [
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_BUILD_TARGET",
            "CARGO_TARGET_DIR",
            "CARGO_TARGET_X86_64_UNKNOWN_NONE_RUSTFLAGS",
            "CARGO_PROFILE_RELEASE_LTO",
            "RUSTC_WRAPPER",
            "RUSTC_WORKSPACE_WRAPPER",
        ] {
            assert!(is_overriding_env(k), "{k}");
        }
        for k in ["PATH", "HOME", "CARGO_HOME", "RUSTUP_TOOLCHAIN", "CARGO"] {
            assert!(!is_overriding_env(k), "{k}");
        }
    }

    #[test]
    fn elf_path() {
        assert!(kernel_path().ends_with("target/kernel/x86_64-unknown-none/release/ithreads-kernel"));
        let cmd = build_command();
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            &args[..6],
            ["build", "--release", "-p", "ithreads-kernel", "--target", "x86_64-unknown-none"]
        );
    }
}
