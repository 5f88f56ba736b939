//! What an interrupted host tool must undo: the QEMU processes it started and the temporary
//! files it made (disk images).
//!
//! - Every QEMU is spawned through [`prepare_child`]: it gets `PR_SET_PDEATHSIG` = `SIGKILL`,
//!   so it dies if the thread that spawned it (in this tool: the thread that also waits for
//!   it, for the whole boot) or the tool itself dies — even by `SIGKILL`; and, unless it reads
//!   the operator's terminal, it runs in its own process group, so a Ctrl-C at the terminal
//!   reaches only this tool, which then kills it.
//! - [`Registered`] guards list the live children and the temporary files; the signal
//!   thread of [`install_signal_handlers`] (the binary installs it at start-up) kills every
//!   listed child (its whole process group), removes every listed file and exits with
//!   `128 + signal` on `SIGINT`, `SIGTERM` or `SIGHUP`.
//! - The signal thread owns that exit. It marks the tool interrupted *before* it kills
//!   anything, so the main thread, which sees its QEMU die only after that, calls
//!   [`wait_if_interrupted`] before it returns and leaves the exit (and its code) to the
//!   signal thread instead of racing it with "QEMU was killed" and exit code 1.
//!
//! A leaf module: it uses no other module of the crate.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// A child process this tool must kill when interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChildEntry {
    pid: i32,
    /// Whether it leads its own process group (kill the group).
    group: bool,
}

static CHILDREN: Mutex<Vec<ChildEntry>> = Mutex::new(Vec::new());
static FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Set by the signal thread before it kills the children.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// If a signal interrupted the tool, never returns: the signal thread is cleaning up and
/// will exit with `128 + signal`. The main thread calls it before it prints a failure or
/// returns its exit code, since a failure it sees may be the signal thread's own kill.
pub fn wait_if_interrupted() {
    while INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::park();
    }
}

/// Sets up `cmd` for a child this tool supervises: `PR_SET_PDEATHSIG` (it dies with the
/// spawning thread) and, with `own_group`, a process group of its own (not for a child that
/// reads the terminal: a background group may not).
pub fn prepare_child(cmd: &mut Command, own_group: bool) {
    if own_group {
        cmd.process_group(0);
    }
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe functions (prctl, getppid, _exit); it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl: then nobody will signal us.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Something listed for clean-up while this guard lives.
#[must_use = "the entry is unlisted when the guard drops"]
pub struct Registered {
    what: Entry,
}

enum Entry {
    Child(ChildEntry),
    File(PathBuf),
}

/// Lists child `pid` (spawned with [`prepare_child`]; `own_group` as given there) to be
/// killed if the tool is interrupted.
pub fn register_child(pid: u32, own_group: bool) -> Registered {
    let e = ChildEntry { pid: pid as i32, group: own_group };
    CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).push(e);
    Registered { what: Entry::Child(e) }
}

/// Lists a temporary file to be removed if the tool is interrupted.
pub fn register_file(path: PathBuf) -> Registered {
    FILES.lock().unwrap_or_else(|e| e.into_inner()).push(path.clone());
    Registered { what: Entry::File(path) }
}

impl Drop for Registered {
    fn drop(&mut self) {
        match &self.what {
            Entry::Child(c) => CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).retain(|x| x != c),
            Entry::File(p) => FILES.lock().unwrap_or_else(|e| e.into_inner()).retain(|x| x != p),
        }
    }
}

/// Kills every listed child and removes every listed file. Returns (children, files).
pub fn clean_up_now() -> (usize, usize) {
    let children: Vec<ChildEntry> = std::mem::take(&mut *CHILDREN.lock().unwrap_or_else(|e| e.into_inner()));
    children.iter().for_each(|c| kill(*c));
    let files: Vec<PathBuf> = std::mem::take(&mut *FILES.lock().unwrap_or_else(|e| e.into_inner()));
    let removed = files.iter().filter(|f| std::fs::remove_file(f).is_ok()).count();
    (children.len(), removed)
}

/// `SIGKILL` to a listed child (its process group if it leads one).
fn kill(c: ChildEntry) {
    let target = if c.group { -c.pid } else { c.pid };
    // SAFETY: kill(2) has no memory-safety preconditions. The pid is a child this tool
    // spawned; its guard unlists it as soon as it is reaped, so only a signal racing that
    // very moment could reach a reused pid.
    unsafe {
        libc::kill(target, libc::SIGKILL);
    }
}

#[cfg(test)]
fn listed_files() -> Vec<PathBuf> {
    FILES.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Why the signal handlers could not be installed.
#[derive(Debug)]
#[non_exhaustive]
pub enum SignalError {
    /// Registering the signals failed.
    Register(std::io::Error),
    /// The thread that waits for them could not be started.
    Thread(std::io::Error),
}

impl std::fmt::Display for SignalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignalError::Register(e) => write!(f, "cannot install signal handlers: {e}"),
            SignalError::Thread(e) => write!(f, "cannot start the signal thread: {e}"),
        }
    }
}

impl std::error::Error for SignalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SignalError::Register(e) | SignalError::Thread(e) => Some(e),
        }
    }
}

/// Installs the handler of `SIGINT`, `SIGTERM` and `SIGHUP`: a thread that, on the first of
/// them, kills the listed children, removes the listed files, gives a terminal back its sane
/// mode and exits with `128 + signal`.
pub fn install_signal_handlers() -> Result<(), SignalError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(SignalError::Register)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                INTERRUPTED.store(true, Ordering::SeqCst);
                let (children, files) = clean_up_now();
                let name = match sig {
                    SIGINT => "SIGINT",
                    SIGTERM => "SIGTERM",
                    _ => "SIGHUP",
                };
                use std::io::IsTerminal;
                if std::io::stdin().is_terminal() {
                    let _ = Command::new("stty").arg("sane").status();
                }
                eprintln!("\nithreads: {name}: killed {children} qemu process(es), removed {files} temporary file(s)");
                std::process::exit(128 + sig);
            }
        })
        .map_err(SignalError::Thread)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_listed_while_their_guard_lives() {
        let p = PathBuf::from("/nonexistent/ithreads-cleanup-test");
        let guard = register_file(p.clone());
        assert!(listed_files().contains(&p));
        drop(guard);
        assert!(!listed_files().contains(&p));
    }

    #[test]
    fn child_group_is_killed() {
        let mut cmd = Command::new("sh");
        // A grandchild in the same group dies too.
        cmd.args(["-c", "sleep 30 & wait"]);
        prepare_child(&mut cmd, true);
        let mut child = cmd.spawn().unwrap();
        let e = ChildEntry { pid: child.id() as i32, group: true };
        let guard = register_child(child.id(), true);
        std::thread::sleep(std::time::Duration::from_millis(100));
        kill(e);
        let status = child.wait().unwrap();
        drop(guard);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        // The grandchild dies asynchronously and may linger as a zombie until its new parent
        // reaps it (PID 1 in a container may never do so): wait for every member of the group
        // to be dead or a zombie.
        let live_members = || {
            std::fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|d| std::fs::read_to_string(d.path().join("stat")).ok())
                .filter(|stat| {
                    // pid (comm) state ppid pgrp ...: split after the last ')'.
                    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
                    let f: Vec<&str> = rest.split_whitespace().collect();
                    f.len() > 2 && f[2] == e.pid.to_string() && f[0] != "Z"
                })
                .count()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while live_members() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(live_members(), 0, "the process group is gone");
    }
}
