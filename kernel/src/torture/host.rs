//! Host-driven sources of a torture run (`ithreads torture --sources all`): the NIC's receive
//! interrupt fed by frames the host sends, the disk's completion interrupt, and COM1's
//! receive interrupt fed by lines the host types. They run when their devices are there:
//! the host tool adds the NIC and the disk (and types into COM1) only with `--sources all`,
//! so a `--sources guest` boot probes neither and starts none of this.
//!
//! The drivers and the host's traffic are the main job's (kernel/src/workload.rs,
//! src/workload.rs, src/traffic.rs, docs/PROTOCOL.md); torture drives them under its own load
//! and counts them under the same delivery rule, in their own units:
//! - **NIC** (`virtio-net0.rx`, MSI-X, the boot's model): one thread asks the host for
//!   batches of [`NET_BATCH`] frames (`@@ net-ready`, unpaced: the host sends as fast as the
//!   guest posts receive buffers) and waits for each batch's end marker. Raised: the frames
//!   the end marker says were sent; delivered: the frames received and verified, each
//!   sequence number once. Violations: `nic-lost` (a batch short of its total, or no end
//!   marker within [`NET_WAIT_MS`]), `nic-duplicate`, `nic-bad` (a frame that failed
//!   verification, or a sequence number outside the batch).
//! - **Disk** (`virtio-blk0`, MSI-X): one thread per CPU writes a pattern over its own
//!   [`BLK_SECTORS`] sectors and reads it back, round after round; each request sleeps until
//!   its completion interrupt. Raised: requests submitted; delivered: requests completed.
//!   Violations: `blk` (a request that failed or timed out, or data that did not verify).
//! - **COM1** (`com1`, level IOAPIC line, filter in primary context, lines in a soft
//!   interrupt): the host types the paste format (`S <seq> <payload>`, then `E <count>`) after
//!   `@@ serial-ready`; a sink thread checks every line against its sequence number. Raised:
//!   what the end line announces; delivered: the lines verified. Violations: `com1-bad` (a
//!   line that does not match the next sequence number: lost, duplicated or corrupted) and,
//!   once the end line came, `com1-lost` (fewer lines than it announced).
//!
//! Each source's interrupts (the framework's arrival count) are reported too, and are part
//! of the run's interrupt total. Arrival times depend on the host: with these sources the
//! seed fixes the guest's own choices only.

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

use arch::kprintln;
use intr::Model;
use sched::Priority;

use crate::drivers::com;
use crate::drivers::virtio::{blk, net};
use crate::intr::INTR;
use crate::locks::KernelEnv;
use crate::SCHED;

use super::{violation, HOST_BLK, HOST_COM1, HOST_NIC, STOP};

/// Frames per NIC batch.
const NET_BATCH: u64 = 256;
/// Guest milliseconds a batch may take before it is reported lost.
const NET_WAIT_MS: u64 = 5_000;
/// Sectors each disk thread owns.
const BLK_SECTORS: u64 = 32;

/// Counters of the host-driven sources, over the whole boot.
struct Counts {
    nic_raised: AtomicU64,
    nic_delivered: AtomicU64,
    nic_batches: AtomicU64,
    next_seq: AtomicU64,
    blk_raised: AtomicU64,
    blk_delivered: AtomicU64,
    com1_lines: AtomicU64,
    com1_announced: AtomicU64,
    com1_done: AtomicBool,
}

static COUNTS: Counts = Counts {
    nic_raised: AtomicU64::new(0),
    nic_delivered: AtomicU64::new(0),
    nic_batches: AtomicU64::new(0),
    next_seq: AtomicU64::new(0),
    blk_raised: AtomicU64::new(0),
    blk_delivered: AtomicU64::new(0),
    com1_lines: AtomicU64::new(0),
    com1_announced: AtomicU64::new(0),
    com1_done: AtomicBool::new(false),
};

/// The host-driven devices that are there.
pub struct Host {
    net: Option<&'static net::NetDev>,
    blk: Option<&'static blk::BlkDev>,
}

/// Brings up the NIC and the disk if they are there (before the heap baseline: the drivers
/// keep their rings for good), and the COM1 sink if either is (the host then types).
/// `None` when neither is: a guest-only run.
pub fn start(model: Model) -> Option<Host> {
    let net = net::start(None).ok();
    let blk = blk::start(None).ok();
    if net.is_none() && blk.is_none() {
        return None;
    }
    kprintln!(
        "@@ torture-host model={} nic={} disk={}",
        model.name(),
        u8::from(net.is_some()),
        u8::from(blk.is_some())
    );
    if com::start().is_ok() {
        // Reads every line the host types, across both loads; it ends at the end line, and is
        // not joined (detached: a run may end before the host has typed everything).
        drop(SCHED.spawn("torture.com1", pri(30), None, serial_sink));
        kprintln!("@@ serial-ready");
    }
    Some(Host { net, blk })
}

fn pri(plus: u8) -> Priority {
    Priority::new(Priority::RT_BASE.get() + plus).unwrap_or(Priority::MAX)
}

fn serial_sink() {
    let mut seq = 0u64;
    loop {
        let line = com::read_line();
        if let Some(n) = line.strip_prefix("E ") {
            let announced = n.trim().parse().unwrap_or(u64::MAX);
            COUNTS.com1_announced.store(announced, SeqCst);
            COUNTS.com1_done.store(true, SeqCst);
            if announced != seq {
                violation("com1-lost", Some(HOST_COM1), arch::cpu::index());
            }
            return;
        }
        if !com::check_paste_line(&line, seq) {
            violation("com1-bad", Some(HOST_COM1), arch::cpu::index());
            // Resynchronise on the line's own number, so one bad line is one violation.
            if let Some(n) = line.get(2..10).and_then(|d| d.parse::<u64>().ok()) {
                seq = n;
            }
        }
        seq += 1;
        COUNTS.com1_lines.store(seq, SeqCst);
    }
}

impl Host {
    /// Starts this load's threads (they stop at `STOP`).
    pub fn spawn(&self, threads: &mut Vec<sched::JoinHandle<KernelEnv>>) {
        if let Some(dev) = self.net {
            threads.push(SCHED.spawn("torture.nic", pri(10), None, move || nic(dev)));
        }
        if let Some(dev) = self.blk {
            for c in 0..arch::cpu::ncpus() {
                let first = c as u64 * BLK_SECTORS;
                if first + BLK_SECTORS > dev.capacity() {
                    break;
                }
                threads.push(SCHED.spawn("torture.disk", pri(8), Some(c), move || disk(dev, first)));
            }
        }
    }

    /// The `@@ torture-host-source` lines, and the host sources' interrupts (the framework's
    /// arrivals of `virtio-net0.rx`, `virtio-blk0` and `com1`).
    pub fn report(&self, model: Model) -> u64 {
        let mut irqs = 0;
        let arrivals = |name: &str| {
            INTR.sources().iter().filter(|s| s.name() == name).map(|s| s.stats.total()).sum::<u64>()
        };
        let lines: [(&str, &str, u64, u64, u64); 3] = [
            (
                "nic",
                net::NAME_RX,
                COUNTS.nic_raised.load(SeqCst),
                COUNTS.nic_delivered.load(SeqCst),
                COUNTS.nic_batches.load(SeqCst),
            ),
            ("disk", blk::NAME, COUNTS.blk_raised.load(SeqCst), COUNTS.blk_delivered.load(SeqCst), 0),
            (
                "com1",
                "com1",
                COUNTS.com1_announced.load(SeqCst),
                COUNTS.com1_lines.load(SeqCst),
                u64::from(COUNTS.com1_done.load(SeqCst)),
            ),
        ];
        for (what, source, raised, delivered, extra) in lines {
            let n = arrivals(source);
            irqs += n;
            kprintln!(
                "@@ torture-host-source model={} name={} source={} raised={} delivered={} {}={} interrupts={}",
                model.name(),
                what,
                source,
                raised,
                delivered,
                if what == "com1" { "done" } else { "batches" },
                extra,
                n
            );
        }
        irqs
    }
}

/// The NIC thread: batches of frames from the host until the load stops.
fn nic(dev: &'static net::NetDev) {
    let c = || arch::cpu::index();
    while !STOP.load(SeqCst) {
        let first = COUNTS.next_seq.fetch_add(NET_BATCH, SeqCst);
        dev.expect(first, NET_BATCH);
        dev.announce(first, NET_BATCH, false, 0);
        let ended = dev.wait_end(NET_WAIT_MS);
        let st = dev.stats();
        COUNTS.nic_batches.fetch_add(1, SeqCst);
        COUNTS.nic_raised.fetch_add(if ended { st.end_total } else { NET_BATCH }, SeqCst);
        COUNTS.nic_delivered.fetch_add(st.unique, SeqCst);
        if !ended || st.unique != st.end_total {
            kprintln!(
                "@@ torture-diag nic first={first} ended={} unique={} end_total={} received={} stall_ms={}",
                u8::from(ended),
                st.unique,
                st.end_total,
                st.received,
                st.stall_ms
            );
            violation("nic-lost", Some(HOST_NIC), c());
        }
        if st.duplicate != 0 {
            violation("nic-duplicate", Some(HOST_NIC), c());
        }
        if st.bad != 0 || st.out_of_range != 0 {
            violation("nic-bad", Some(HOST_NIC), c());
        }
        if !ended {
            // The link is gone or the host stopped: asking again would only pile up.
            return;
        }
    }
}

/// A disk thread: write and verify its own sectors until the load stops.
fn disk(dev: &'static blk::BlkDev, first: u64) {
    let mut round = first;
    while !STOP.load(SeqCst) {
        let r = crate::tests::blk::write_verify(dev, first, BLK_SECTORS, round);
        // `write_verify` sends each request of a pass twice: once to write, once to read back.
        let ops = 2 * requests(first, BLK_SECTORS);
        COUNTS.blk_raised.fetch_add(ops, SeqCst);
        match r {
            Ok(()) => {
                COUNTS.blk_delivered.fetch_add(ops, SeqCst);
            }
            Err(e) => {
                kprintln!("@@ torture-diag disk first={first} round={round}: {}", escape(&e));
                violation("blk", Some(HOST_BLK), arch::cpu::index());
                return;
            }
        }
        round += 1;
    }
}

/// Requests `write_verify` sends for one pass over `[first, first + n)`.
fn requests(first: u64, n: u64) -> u64 {
    let mut s = first;
    let mut k = 0;
    while s < first + n {
        s += crate::tests::blk::sectors_at(s).min(first + n - s);
        k += 1;
    }
    k
}

fn escape(s: &str) -> String {
    s.replace(' ', "_")
}
