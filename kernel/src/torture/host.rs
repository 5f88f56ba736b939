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
//!   interrupt): one thread asks the host for bursts of 1 to [`COM1_BURST`] lines of the paste
//!   format (`@@ serial-ready lines=<k>`: `S <seq> <payload>`, numbered on from the last
//!   burst) at random guest times ([`COM1_GAP_NS`] apart), and checks every line against its
//!   sequence number. Raised: the lines asked for; delivered: the lines verified. Violations:
//!   `com1-bad` (a line that does not match the next sequence number: lost, duplicated or
//!   corrupted) and `com1-lost` (a burst short of its lines after [`COM1_WAIT_NS`]).
//!   Bursts, not one paste at the host's speed: QEMU's UART takes input as fast as the guest
//!   reads it, and under TCG every byte read costs the reading CPU a round of the emulator's
//!   vCPU loop (the read lets QEMU's main loop feed the next byte, whose interrupt ends the
//!   vCPU's turn) — about 150 µs of guest time per byte on 8 CPUs, so a paste kept CPU 0 in
//!   COM1's filter, interrupts off, for whole seconds
//!   (docs/logs/torture-com1-paste-cpu0-2026-12-06.txt). No serial line runs that fast: a
//!   burst is what a line at a realistic rate brings.
//!
//! Each source's interrupts (the framework's arrival count) are reported too, and are part
//! of the run's interrupt total. Arrival times depend on the host: with these sources the
//! seed fixes the guest's own choices only.

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use arch::kprintln;
use intr::Model;
use sched::Priority;

use crate::drivers::com;
use crate::drivers::virtio::{blk, net};
use crate::intr::INTR;
use crate::locks::KernelEnv;
use crate::SCHED;

use super::{violation, Rng, HOST_BLK, HOST_COM1, HOST_NIC, STOP};

/// Frames per NIC batch.
const NET_BATCH: u64 = 256;
/// Guest milliseconds a batch may take before it is reported lost.
const NET_WAIT_MS: u64 = 5_000;
/// Sectors each disk thread owns.
const BLK_SECTORS: u64 = 32;
/// Lines of one COM1 burst: 1 to this many (64 bytes each).
const COM1_BURST: u64 = 4;
/// Guest time between COM1 bursts: from the first to the second (uniform).
const COM1_GAP_NS: (u64, u64) = (20_000_000, 120_000_000);
/// Guest time a COM1 burst may take before its missing lines are reported lost.
const COM1_WAIT_NS: u64 = 5_000_000_000;

/// Counters of the host-driven sources, over the whole boot.
struct Counts {
    nic_raised: AtomicU64,
    nic_delivered: AtomicU64,
    nic_batches: AtomicU64,
    next_seq: AtomicU64,
    blk_raised: AtomicU64,
    blk_delivered: AtomicU64,
    com1_raised: AtomicU64,
    com1_delivered: AtomicU64,
    com1_bursts: AtomicU64,
    /// The sequence number of the next line the host types.
    com1_next: AtomicU64,
}

static COUNTS: Counts = Counts {
    nic_raised: AtomicU64::new(0),
    nic_delivered: AtomicU64::new(0),
    nic_batches: AtomicU64::new(0),
    next_seq: AtomicU64::new(0),
    blk_raised: AtomicU64::new(0),
    blk_delivered: AtomicU64::new(0),
    com1_raised: AtomicU64::new(0),
    com1_delivered: AtomicU64::new(0),
    com1_bursts: AtomicU64::new(0),
    com1_next: AtomicU64::new(0),
};

/// The host-driven devices that are there.
pub struct Host {
    net: Option<&'static net::NetDev>,
    blk: Option<&'static blk::BlkDev>,
    /// COM1 is interrupt-driven (the host types what the COM1 thread asks for).
    com1: bool,
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
    let com1 = com::start().is_ok();
    Some(Host { net, blk, com1 })
}

fn pri(plus: u8) -> Priority {
    Priority::new(Priority::RT_BASE.get() + plus).unwrap_or(Priority::MAX)
}

/// The COM1 thread: bursts of lines from the host until the load stops (a burst asked for is
/// read to its end).
fn com1(seed: u64) {
    let mut rng = Rng::new(seed, 300);
    while !STOP.load(SeqCst) {
        let k = 1 + rng.below(COM1_BURST);
        let first = COUNTS.com1_next.load(SeqCst);
        COUNTS.com1_raised.fetch_add(k, SeqCst);
        COUNTS.com1_bursts.fetch_add(1, SeqCst);
        kprintln!("@@ serial-ready lines={k}");
        let mut seq = first;
        while seq < first + k {
            let Some(line) = com::read_line_timeout(COM1_WAIT_NS) else {
                kprintln!("@@ torture-diag com1 first={first} lines={k} missing_from={seq}");
                violation("com1-lost", Some(HOST_COM1), arch::cpu::index());
                // The host stopped typing: asking again would only pile up.
                COUNTS.com1_next.store(first + k, SeqCst);
                return;
            };
            if !com::check_paste_line(&line, seq) {
                violation("com1-bad", Some(HOST_COM1), arch::cpu::index());
                // Resynchronise on the line's own number, so one bad line is one violation.
                if let Some(n) = line.get(2..10).and_then(|d| d.parse::<u64>().ok()) {
                    seq = n;
                }
            } else {
                COUNTS.com1_delivered.fetch_add(1, SeqCst);
            }
            seq += 1;
        }
        COUNTS.com1_next.store(seq.max(first + k), SeqCst);
        SCHED.sleep_ns(COM1_GAP_NS.0 + rng.below(COM1_GAP_NS.1 - COM1_GAP_NS.0));
    }
}

impl Host {
    /// Starts this load's threads (they stop at `STOP`); `seed` is the load's.
    pub fn spawn(&self, threads: &mut Vec<sched::JoinHandle<KernelEnv>>, seed: u64) {
        if self.com1 {
            threads.push(SCHED.spawn("torture.com1", pri(30), None, move || com1(seed)));
        }
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
                COUNTS.com1_raised.load(SeqCst),
                COUNTS.com1_delivered.load(SeqCst),
                COUNTS.com1_bursts.load(SeqCst),
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
                "batches",
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
