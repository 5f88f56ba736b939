//! The event trace (`crates/trace`), in a kernel built with the `trace` feature (the host
//! tool builds one for `--trace`): rings installed at boot, dumped over the serial line when
//! the run ends. In a default build [`install`] and [`dump`] are empty and `trace::emit`
//! compiles to nothing: the default kernel holds none of the trace.
//!
//! The dump (docs/PROTOCOL.md): `@@ trace-begin cpus=N`, one
//! `@@ trace-thread id=0x… name=…` per live thread, one `@@ trace-source vector=0x… name=…`
//! per interrupt source, then per CPU `@@ trace-cpu cpu=C kept=K overwritten=O torn=T` and its
//! records oldest first (`@@ trace cpu=C seq=S ts=T kind=K thread=0x… arg=0x…`), and
//! `@@ trace-end`.

#[cfg(feature = "trace")]
use {
    crate::intr::INTR,
    crate::SCHED,
    alloc::boxed::Box,
    arch::{kprintln, X86_64},
    machine::Machine,
    trace::Trace,
};

/// Installs rings of `records` records (32 bytes each) for every CPU (call once all CPUs
/// are online). The command line's `trace.records=`.
pub fn install(records: usize) {
    #[cfg(not(feature = "trace"))]
    let _ = records;
    #[cfg(feature = "trace")]
    {
        let t: &'static Trace = Box::leak(Box::new(Trace::new(X86_64::ncpus(), records)));
        if !Trace::install(t) {
            kprintln!("trace: already installed");
        }
    }
}

/// Prints the trace (nothing if none is installed).
pub fn dump() {
    #[cfg(feature = "trace")]
    dump_rings();
}

#[cfg(feature = "trace")]
fn dump_rings() {
    let Some(t) = Trace::active() else { return };
    // The heads are read per CPU below; records made while dumping (the serial line's own
    // interrupts) come after them and are left out.
    kprintln!("@@ trace-begin cpus={}", t.ncpus());
    SCHED.for_each_thread(|th| {
        kprintln!(
            "@@ trace-thread id={:#x} name={}",
            th as *const _ as usize,
            parse::line::escape(th.name())
        );
    });
    for s in INTR.sources() {
        kprintln!("@@ trace-source vector={:#x} name={}", s.vector(), parse::line::escape(s.name()));
    }
    for cpu in 0..t.ncpus() {
        let rs = t.records(cpu);
        kprintln!(
            "@@ trace-cpu cpu={} kept={} overwritten={} torn={}",
            cpu,
            rs.records.len(),
            rs.overwritten,
            rs.torn
        );
        for r in &rs.records {
            kprintln!("@@ trace {r}");
        }
    }
    kprintln!("@@ trace-end");
}
