//! # The operator's shell
//!
//! A command engine independent of where lines come from: [`execute`] runs one command line
//! and writes its output to any `fmt::Write`; [`run`] is the interactive loop over a line
//! reader (the COM1 driver's, fed by the interrupt-driven receive path). Every command's
//! output format is documented in docs/PROTOCOL.md ("Shell"); the loop ends each command
//! with a terminator line a host can wait for:
//!
//! ```text
//! ithreads> <command line>          (the prompt; the line reader echoes the input)
//! <command output>
//! ok | error: <message>
//! @@ shell-done cmd=<name> status=ok|error
//! ```
//!
//! Commands: `help`, `intrstat`, `lockstat [N]`, `ps`, `sysctl [-d] [name[=value]]`,
//! `test [filter]`, `bench [filter] [samples]`, `halt`. Tunables are in [`sysctl`];
//! drivers add their own with [`register_sysctl`].

mod intrstat;
mod ps;
mod suite;
mod sysctl;

use alloc::string::String;
use core::fmt::{self, Write};

pub use intrstat::intrstat;
pub use suite::configure;
pub use sysctl::{register_sysctl, sysctl_get, sysctl_set, unregister_sysctl, SysctlGet, SysctlSet};

/// What the interactive loop prints before reading a line.
pub const PROMPT: &str = "ithreads> ";

/// What to do after a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Read the next line.
    Continue,
    /// `halt`: leave the shell (the caller exits QEMU with success).
    Halt,
}

/// Why a command failed: a message that names the culprit (the command, the tunable, the
/// argument or the value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShellError {
    /// The message (one line).
    pub msg: String,
}

impl ShellError {
    /// An error with this message.
    pub fn new(msg: impl Into<String>) -> Self {
        ShellError { msg: msg.into() }
    }
}

impl fmt::Display for ShellError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl From<fmt::Error> for ShellError {
    fn from(_: fmt::Error) -> Self {
        ShellError::new("output failed")
    }
}

/// Shorthand for an `Err(ShellError)` built with `format!`.
macro_rules! bail {
    ($($arg:tt)+) => {
        return Err($crate::shell::ShellError::new(alloc::format!($($arg)+)))
    };
}
pub(crate) use bail;

/// The commands: name, usage, what it does.
const COMMANDS: [(&str, &str, &str); 8] = [
    ("help", "help", "this list"),
    ("intrstat", "intrstat", "interrupts per source and CPU: count, rate, handler time, latency, state"),
    ("lockstat", "lockstat [N]", "the N (default 20) most contended lock classes"),
    ("ps", "ps", "every thread: priorities, state, CPU, binding, pinned/borrowing"),
    ("sysctl", "sysctl [-d] [name | name=value]", "list, read or set tunables (-d: descriptions)"),
    ("test", "test [filter]", "run the in-kernel tests whose name contains filter"),
    ("bench", "bench [filter] [samples]", "run the benchmarks whose name contains filter"),
    ("halt", "halt", "leave the shell; QEMU exits with success"),
];

/// The name a line's command goes by in the terminator (`-` for an empty line):
/// `parse::line::command_name`.
pub fn command_name(line: &str) -> &str {
    ::parse::line::command_name(line)
}

/// Runs one command line, writing its output to `out`. Returns an error naming the culprit
/// for an unknown command or bad arguments. An empty line does nothing.
pub fn execute(line: &str, out: &mut dyn Write) -> Result<Outcome, ShellError> {
    let mut words = ::parse::line::words(line);
    let Some(cmd) = words.next() else { return Ok(Outcome::Continue) };
    let args: alloc::vec::Vec<&str> = words.collect();
    match cmd {
        "help" => {
            no_args(cmd, &args)?;
            for (_, usage, what) in COMMANDS {
                writeln!(out, "{usage:<34} {what}")?;
            }
        }
        "halt" => {
            no_args(cmd, &args)?;
            writeln!(out, "halting")?;
            return Ok(Outcome::Halt);
        }
        "intrstat" => {
            no_args(cmd, &args)?;
            intrstat(out)?;
        }
        "lockstat" => {
            let n = match args.as_slice() {
                [] => 20,
                [n] => match n.parse::<usize>() {
                    Ok(n) if n > 0 => n,
                    _ => bail!("lockstat: bad count '{n}' (expected a positive integer)"),
                },
                [_, extra, ..] => bail!("lockstat: unexpected argument '{extra}'"),
            };
            ps::lockstat(n, out)?;
        }
        "ps" => {
            no_args(cmd, &args)?;
            ps::ps(out)?;
        }
        "sysctl" => sysctl::command(&args, out)?,
        "test" => suite::test(&args, out)?,
        "bench" => suite::bench(&args, out)?,
        other => bail!("unknown command '{other}' (try help)"),
    }
    Ok(Outcome::Continue)
}

fn no_args(cmd: &str, args: &[&str]) -> Result<(), ShellError> {
    match args.first() {
        None => Ok(()),
        Some(a) => bail!("{cmd}: unexpected argument '{a}'"),
    }
}

/// Writes to the console a line at a time (so a line is never interleaved with another
/// CPU's output).
struct Console {
    line: String,
}

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for piece in s.split_inclusive('\n') {
            self.line.push_str(piece);
            // A line is complete; so is the prompt (the reader waits after it).
            if self.line.ends_with('\n') || self.line == PROMPT {
                self.flush();
            }
        }
        Ok(())
    }
}

impl Console {
    fn flush(&mut self) {
        if !self.line.is_empty() {
            arch::kprint!("{}", self.line);
            self.line.clear();
        }
    }
}

/// The interactive loop on the console: prints `@@ shell-ready`, then repeatedly the prompt,
/// reads a line with `read_line`, executes it and prints `ok` or `error: <message>` and the
/// terminator `@@ shell-done cmd=<name> status=ok|error`. Returns `true` after `halt`,
/// `false` if the input ended (`read_line` returned `None`; `@@ shell-eof` is printed).
pub fn run(read_line: &mut dyn FnMut() -> Option<String>) -> bool {
    let mut con = Console { line: String::new() };
    let halted = run_with(read_line, &mut con);
    con.flush();
    halted
}

/// [`run`] writing to `out` (the console writes a line at a time). Everything written goes
/// through `parse::line::escape`: control characters (other than the newline) and, via the
/// line reader, bytes that are not UTF-8 that came from the input are printed escaped
/// (`\x1b`, `\xff`), never raw. A line longer than `parse::line::MAX_LINE` bytes (the line
/// reader delivers only its length) runs nothing: one error naming its length.
pub fn run_with(read_line: &mut dyn FnMut() -> Option<String>, out: &mut dyn Write) -> bool {
    let out = &mut Escaped { out };
    let _ = writeln!(out, "@@ shell-ready");
    loop {
        let _ = write!(out, "{PROMPT}");
        let Some(line) = read_line() else {
            let _ = writeln!(out, "\n@@ shell-eof");
            return false;
        };
        let line = match ::parse::line::Input::from_string(line) {
            ::parse::line::Input::Line(l) => l,
            ::parse::line::Input::Overlong(len) => {
                let _ = writeln!(
                    out,
                    "error: line too long ({len} bytes; the limit is {}): discarded, nothing ran\n\
                     @@ shell-done cmd=- status=error",
                    crate::drivers::com::MAX_LINE
                );
                continue;
            }
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let name = command_name(line);
        let outcome = execute(line, out);
        let _ = match &outcome {
            Ok(_) => writeln!(out, "ok\n@@ shell-done cmd={name} status=ok"),
            Err(e) => writeln!(out, "error: {e}\n@@ shell-done cmd={name} status=error"),
        };
        if outcome == Ok(Outcome::Halt) {
            return true;
        }
    }
}

/// A writer that escapes control characters except `\n` (`parse::line::escape`).
struct Escaped<'a> {
    out: &'a mut dyn Write,
}

impl Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if s.chars().any(::parse::line::needs_escape) {
            self.out.write_str(&::parse::line::escape(s))
        } else {
            self.out.write_str(s)
        }
    }
}

/// Replaces whitespace in a name with `_`, so that every table cell is one word.
pub(crate) fn word(s: &str) -> String {
    if s.is_empty() {
        return String::from("-");
    }
    s.chars().map(|c| if c.is_whitespace() { '_' } else { c }).collect()
}
