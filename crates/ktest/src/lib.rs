//! # In-kernel tests
//!
//! A test is a `fn() -> TestResult` registered with [`ktest!`] anywhere in the kernel's
//! crates. Registration places a [`KTest`] record in the `.ktests` link section; the kernel's
//! linker script brackets that section with `__ktests_start` / `__ktests_end`, and
//! [`registry`] returns the records as a slice — no central list to forget to update.
//!
//! Results are reported as the lines of `docs/PROTOCOL.md` ([`TestLine`] formats them):
//! `@@ test-begin NAME`, then `@@ test NAME pass ms=N` or `@@ test NAME fail ms=N msg=TEXT`.
//! A test fails by returning `Err(message)`; [`kassert!`] and [`kassert_eq!`] build such
//! messages with the file and line. A test that panics takes the kernel down, and the host
//! harness reports the panic against the last `test-begin`.
#![no_std]

extern crate alloc;

use alloc::string::String;
use core::fmt;

/// What a test returns: `Err` carries the failure message.
pub type TestResult = Result<(), String>;

/// One registered test.
#[repr(C)]
pub struct KTest {
    /// `crate::topic::case`, no spaces.
    pub name: &'static str,
    /// The test body.
    pub run: fn() -> TestResult,
}

/// Registers a test: `ktest!(NAME_STATIC, "sched::rr::equal_share", body_fn);`
#[macro_export]
macro_rules! ktest {
    ($id:ident, $name:expr, $f:path) => {
        #[allow(unsafe_code)] // `link_section`: the registry is a linker-built array
        #[used]
        #[link_section = ".ktests"]
        static $id: $crate::KTest = $crate::KTest { name: $name, run: $f };
    };
}

/// Fails the test with a message naming the condition, file and line.
#[macro_export]
macro_rules! kassert {
    ($cond:expr) => {
        if !$cond {
            return Err(alloc::format!("assertion failed: {} at {}:{}", stringify!($cond), file!(), line!()));
        }
    };
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(alloc::format!("{} ({}:{})", format_args!($($arg)+), file!(), line!()));
        }
    };
}

/// Fails the test unless the two values are equal, showing both.
#[macro_export]
macro_rules! kassert_eq {
    ($a:expr, $b:expr) => {{
        let (a, b) = (&$a, &$b);
        if a != b {
            return Err(alloc::format!(
                "{} == {} failed: {:?} != {:?} at {}:{}",
                stringify!($a), stringify!($b), a, b, file!(), line!()
            ));
        }
    }};
    ($a:expr, $b:expr, $($arg:tt)+) => {{
        let (a, b) = (&$a, &$b);
        if a != b {
            return Err(alloc::format!(
                "{}: {:?} != {:?} ({}:{})", format_args!($($arg)+), a, b, file!(), line!()
            ));
        }
    }};
}

/// Every registered test, in link order.
#[cfg(target_os = "none")]
pub fn registry() -> &'static [KTest] {
    extern "C" {
        static __ktests_start: u8;
        static __ktests_end: u8;
    }
    // SAFETY: the linker script places only `KTest` records (each `#[repr(C)]`, 8-aligned,
    // emitted by `ktest!`) between the two symbols.
    unsafe {
        let start = core::ptr::addr_of!(__ktests_start) as *const KTest;
        let end = core::ptr::addr_of!(__ktests_end) as *const KTest;
        let n = (end as usize - start as usize) / core::mem::size_of::<KTest>();
        core::slice::from_raw_parts(start, n)
    }
}

/// Whether a test is selected by a `test.filter` substring (empty selects all).
///
/// Tests named `dev::…` need a device or traffic the host must attach (a disk image, a NIC
/// peer, typed input): they run only when the filter itself names `dev::`, never in the
/// default suite.
pub fn selected(name: &str, filter: &str) -> bool {
    if name.starts_with("dev::") && !filter.contains("dev::") {
        return false;
    }
    filter.is_empty() || name.contains(filter)
}

/// One protocol line about a test.
pub enum TestLine<'a> {
    /// The test starts.
    Begin(&'a str),
    /// The test ended.
    End {
        /// Test name.
        name: &'a str,
        /// Its result.
        result: &'a TestResult,
        /// Duration.
        ms: u64,
    },
    /// The suite ended.
    Done {
        /// Tests passed.
        passed: usize,
        /// Tests failed.
        failed: usize,
    },
}

impl fmt::Display for TestLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TestLine::Begin(n) => write!(f, "@@ test-begin {n}"),
            TestLine::End { name, result: Ok(()), ms } => write!(f, "@@ test {name} pass ms={ms}"),
            TestLine::End { name, result: Err(m), ms } => {
                write!(f, "@@ test {name} fail ms={ms} msg=")?;
                // One line: the host reads to end of line.
                for c in m.chars() {
                    f.write_str(match c {
                        '\n' => " | ",
                        '\r' => "",
                        _ => {
                            write!(f, "{c}")?;
                            continue;
                        }
                    })?;
                }
                Ok(())
            }
            TestLine::Done { passed, failed } => write!(f, "@@ tests-done passed={passed} failed={failed}"),
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn lines_match_the_protocol() {
        assert_eq!(TestLine::Begin("a::b").to_string(), "@@ test-begin a::b");
        assert_eq!(
            TestLine::End { name: "a::b", result: &Ok(()), ms: 3 }.to_string(),
            "@@ test a::b pass ms=3"
        );
        let e: TestResult = Err("x\ny".into());
        assert_eq!(
            TestLine::End { name: "a", result: &e, ms: 0 }.to_string(),
            "@@ test a fail ms=0 msg=x | y"
        );
        assert_eq!(TestLine::Done { passed: 2, failed: 1 }.to_string(), "@@ tests-done passed=2 failed=1");
    }

    #[test]
    fn filter_is_a_substring() {
        assert!(selected("sched::rr", ""));
        assert!(selected("sched::rr", "rr"));
        assert!(!selected("sched::rr", "ipi"));
        assert!(!selected("dev::com::paste", ""));
        assert!(!selected("dev::com::paste", "paste"));
        assert!(selected("dev::com::paste", "dev::com"));
    }

    fn failing() -> TestResult {
        kassert_eq!(1 + 1, 3, "arithmetic");
        Ok(())
    }

    #[test]
    fn kassert_reports_values_and_location() {
        let m = failing().unwrap_err();
        assert!(m.contains("arithmetic: 2 != 3"), "{m}");
        assert!(m.contains("lib.rs"), "{m}");
    }
}
