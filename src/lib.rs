//! The ithreads host tool as a library: set up the host, build the kernel,
//! boot it in QEMU, parse the serial protocol (`docs/PROTOCOL.md`) and judge
//! the results. `src/main.rs` is the command-line front end; `tests/` boot the
//! real kernel through the same functions.

pub mod bench;
pub mod cleanup;
pub mod compare;
pub mod cost;
pub mod harness;
pub mod kbuild;
pub mod live;
pub mod protocol;
pub mod qemu;
pub mod report;
pub mod rt;
pub mod setup;
pub mod timeline;
pub mod torture;
pub mod traffic;
pub mod workload;

pub use harness::{run_suite, SuiteReport};
pub use protocol::Event;
pub use qemu::{boot, Accel, BootConfig, BootReport, Outcome};
