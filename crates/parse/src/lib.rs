//! Parsers of untrusted input, portable (`no_std` + `alloc`) so that the kernel uses them and
//! the host fuzzes them (`cargo test -p ithreads-parse`; proptest, `tests/fuzz.rs`):
//!
//! - [`cmdline`]: the kernel command line (`key=value ...`, docs/PROTOCOL.md);
//! - [`line`]: the serial line discipline (bytes → lines, overlong lines discarded), the
//!   shell's command-line splitting, and the escaping of what the kernel prints back;
//! - [`frame`]: the NIC workload's test frames, as the kernel's receive path classifies them.

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod cmdline;
pub mod frame;
pub mod line;
