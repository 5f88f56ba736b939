//! The serial line discipline (bytes from the UART → lines), the shell's command-line
//! splitting, and the escaping of untrusted text the kernel prints back.
//!
//! Line discipline ([`LineDiscipline`]): `\r` or `\n` ends a line (a `\n` right after `\r`
//! is part of the same end), backspace (0x08) and DEL (0x7f) erase the last byte, every
//! other byte is kept. A line longer than [`MAX_LINE`] bytes is never cut into pieces: the
//! discipline stops keeping it, discards everything up to its end and reports
//! [`Input::Overlong`] with its length, so no part of it can run as a command. Bytes that
//! are not UTF-8 reach the line as the text `\xNN` (see [`to_text`]).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

/// Longest line the discipline keeps (bytes, without its end).
pub const MAX_LINE: usize = 512;

/// What the discipline delivers when a line ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A complete line (without its end), non-UTF-8 bytes escaped as `\xNN`.
    Line(String),
    /// A line longer than [`MAX_LINE`] bytes, discarded; its length in bytes (without its end).
    Overlong(usize),
}

impl Input {
    /// The input as one string, for readers that pass strings (the COM1 driver's
    /// `read_line`): a line as it is; an overlong line as `\n` followed by its length in
    /// decimal — a line delivered by the discipline never contains `\n`.
    pub fn into_string(self) -> String {
        match self {
            Input::Line(s) => s,
            Input::Overlong(n) => alloc::format!("\n{n}"),
        }
    }

    /// The inverse of [`Input::into_string`].
    pub fn from_string(s: String) -> Input {
        match s.strip_prefix('\n').map(str::parse::<usize>) {
            Some(Ok(n)) => Input::Overlong(n),
            _ => Input::Line(s),
        }
    }
}

/// What to echo for one byte (the interactive shell echoes typed input).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Echo {
    /// Nothing.
    None,
    /// A printable ASCII character or a tab.
    Char(u8),
    /// The line ended: a newline.
    Newline,
    /// The last character was erased: `\x08 \x08`.
    Erase,
}

/// The discipline's state between bytes.
#[derive(Clone, Debug, Default)]
pub struct LineDiscipline {
    partial: Vec<u8>,
    last_cr: bool,
    /// While discarding an overlong line: its length so far.
    overlong: Option<usize>,
}

impl LineDiscipline {
    /// An empty discipline.
    pub const fn new() -> Self {
        LineDiscipline { partial: Vec::new(), last_cr: false, overlong: None }
    }

    /// Takes one byte; returns what to echo and, if a line ended, the line.
    pub fn feed(&mut self, b: u8) -> (Echo, Option<Input>) {
        let cr = self.last_cr;
        self.last_cr = b == b'\r';
        match b {
            b'\n' if cr => (Echo::None, None),
            b'\r' | b'\n' => {
                let input = match self.overlong.take() {
                    Some(len) => Input::Overlong(len),
                    None => Input::Line(to_text(&self.partial)),
                };
                self.partial.clear();
                (Echo::Newline, Some(input))
            }
            _ if self.overlong.is_some() => {
                if let Some(n) = self.overlong.as_mut() {
                    *n += 1;
                }
                (Echo::None, None)
            }
            0x08 | 0x7F => match self.partial.pop() {
                Some(_) => (Echo::Erase, None),
                None => (Echo::None, None),
            },
            _ if self.partial.len() >= MAX_LINE => {
                self.overlong = Some(self.partial.len() + 1);
                self.partial.clear();
                (Echo::None, None)
            }
            _ => {
                self.partial.push(b);
                if b == b'\t' || (0x20..0x7F).contains(&b) {
                    (Echo::Char(b), None)
                } else {
                    (Echo::None, None)
                }
            }
        }
    }

    /// Bytes of the line being typed (not yet ended; 0 while discarding an overlong one).
    pub fn pending(&self) -> usize {
        self.partial.len()
    }
}

/// The bytes as text: valid UTF-8 as is, every other byte as `\xNN`.
pub fn to_text(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        s.push_str(chunk.valid());
        for b in chunk.invalid() {
            let _ = write!(s, "\\x{b:02x}");
        }
    }
    s
}

/// Whether `c` must be escaped before it reaches a terminal: every control character
/// (C0, DEL, C1) except the newline.
pub fn needs_escape(c: char) -> bool {
    c != '\n' && c.is_control()
}

/// `s` with every control character except `\n` escaped: `\xNN` (ASCII) or `\u{NNNN}` (C1).
/// What the kernel prints back from its input goes through this, so an ESC sequence or a NUL
/// typed at the shell cannot reach the operator's terminal (or a protocol line) raw.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_escaped(&mut out, s);
    out
}

/// Appends `s` escaped as by [`escape`] to `out`.
pub fn push_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        if !needs_escape(c) {
            out.push(c);
        } else if c.is_ascii() {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:04x}}}", c as u32);
        }
    }
}

/// A shell command line's words (split on whitespace).
pub fn words(line: &str) -> impl Iterator<Item = &str> {
    line.split_whitespace()
}

/// The name a command line goes by in the shell's terminator: its first word, `-` for a
/// blank line.
pub fn command_name(line: &str) -> &str {
    words(line).next().unwrap_or("-")
}

/// Feeds every byte of `bytes` to a fresh discipline and returns the inputs it delivers
/// (tests and fuzzing).
pub fn lines_of(bytes: &[u8]) -> Vec<Input> {
    let mut ld = LineDiscipline::new();
    bytes.iter().filter_map(|&b| ld.feed(b).1).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn line(s: &str) -> Input {
        Input::Line(s.into())
    }

    #[test]
    fn long_line_tail_never_runs() {
        let mut bytes = vec![b'y'; 512];
        bytes.extend_from_slice(b"halt\nps\n");
        assert_eq!(lines_of(&bytes), [Input::Overlong(516), line("ps")]);
        let mut bytes = vec![b'x'; 513];
        bytes.push(b'\n');
        assert_eq!(lines_of(&bytes), [Input::Overlong(513)]);
        // Exactly the limit is a line.
        let mut bytes = vec![b'z'; 512];
        bytes.push(b'\r');
        assert_eq!(lines_of(&bytes), [Input::Line("z".repeat(512))]);
    }

    #[test]
    fn ends_erase_and_bytes() {
        assert_eq!(lines_of(b"a\r\nb\rc\n\n"), [line("a"), line("b"), line("c"), line("")]);
        assert_eq!(lines_of(b"ab\x08c\x7f\x7f\x7fd\n"), [line("d")]);
        assert_eq!(lines_of(b"\xff\x1bz\n"), [line("\\xff\x1bz")]);
    }

    #[test]
    fn escaping() {
        assert_eq!(escape("a\x1b[2Jb\0\tc\n"), "a\\x1b[2Jb\\x00\\x09c\n");
        assert_eq!(escape("\u{9b}é"), "\\u{009b}é");
        assert_eq!(command_name("  \t "), "-");
        assert_eq!(command_name(" ps x"), "ps");
    }
}
