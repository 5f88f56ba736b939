//! Device floods: the NIC, the disk and QEMU's `edu` device driven as fast as the guest takes
//! them, for `run=cost` (`cost.rs`: what each costs at saturation) and the device flood of
//! `run=rt` (`rt.rs`).
//!
//! - **NIC** ([`NetFlood`]): the driver is told to expect `count` frames and the host is asked
//!   for them unpaced (`@@ net-ready … echo=0 rate=0`). The host writes them into the NIC's
//!   stream as fast as QEMU reads it, and QEMU reads only while the guest has receive buffers:
//!   the host sends a frame as soon as the guest returns a buffer. Done at the end marker.
//! - **Disk** ([`DiskFlood`]): [`DISK_THREADS_PER_CPU`] threads per CPU each read one sector of
//!   their own over and over, so the device's queue always holds a request from every thread
//!   not running its completion; they stop after a total of `ops` operations or at
//!   [`DiskFlood::stop`].
//! - **edu** ([`EduFlood`]): a source on the `edu` device's MSI (the boot's default model; the
//!   filter acknowledges, the handler counts) and a raiser thread that raises the next
//!   interrupt once the last was handled, checking every [`EDU_PERIOD_NS`].
//!
//! The threads run at the priority the caller gives; the sources use the boot's default model
//! (`intr.model=`). The caller reads the interrupt sources' own statistics (`INTR.sources()`).

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arch::X86_64;
use machine::Machine;
use sched::Priority;

use crate::drivers::virtio::{blk, net};
use crate::intr::INTR;
use crate::SCHED;

/// Disk threads per CPU (each keeps one request in the device's queue).
pub const DISK_THREADS_PER_CPU: usize = 4;
/// How often the edu raiser looks whether its last interrupt was handled.
pub const EDU_PERIOD_NS: u64 = 20_000;
/// The edu flood's vector (the main job's edu part uses 0x45; a boot runs one or the other).
pub const EDU_VECTOR: u8 = 0x46;
/// How long a NIC flood waits for its end marker at most (guest ms).
pub const NET_WAIT_MS: u64 = 120_000;

type Join = sched::JoinHandle<crate::locks::KernelEnv>;

/// A NIC flood of `count` frames.
pub struct NetFlood {
    dev: &'static net::NetDev,
}

impl NetFlood {
    /// Brings the NIC up (if it is not yet) and asks the host for `count` frames from `first`,
    /// unpaced and not echoed. `None` without a NIC.
    pub fn start(first: u64, count: u64) -> Option<NetFlood> {
        let dev = net::device().or_else(|| net::start(None).ok())?;
        dev.expect(first, count);
        dev.announce(first, count, false, 0);
        Some(NetFlood { dev })
    }

    /// Waits for the end marker ([`NET_WAIT_MS`] at most); returns whether it came.
    pub fn wait(&self) -> bool {
        self.dev.wait_end(NET_WAIT_MS)
    }

    /// Frames received and verified so far (each sequence number once).
    pub fn unique(&self) -> u64 {
        self.dev.stats().unique
    }
}

/// Disk threads reading sectors back to back.
pub struct DiskFlood {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    threads: Vec<Join>,
}

impl DiskFlood {
    /// Starts [`DISK_THREADS_PER_CPU`] threads on each of `cpus` at `pri`; together they make
    /// `limit` operations (`u64::MAX`: until [`DiskFlood::stop`]). `None` without a disk.
    pub fn start(cpus: usize, pri: Priority, limit: u64) -> Option<DiskFlood> {
        let dev = blk::device().or_else(|| blk::start(None).ok())?;
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for k in 0..cpus * DISK_THREADS_PER_CPU {
            let sector = (k as u64) % dev.capacity().max(1);
            let (stop, ops, errors) = (stop.clone(), ops.clone(), errors.clone());
            threads.push(SCHED.spawn("disk-flood", pri, Some(k % cpus), move || {
                let mut buf = vec![0u8; blk::SECTOR];
                while !stop.load(Ordering::Relaxed) {
                    // Claim an operation first, so that the total is exactly `limit`.
                    if ops.fetch_add(1, Ordering::Relaxed) >= limit {
                        ops.fetch_sub(1, Ordering::Relaxed);
                        return;
                    }
                    if dev.read(sector, &mut buf).is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        Some(DiskFlood { stop, ops, errors, threads })
    }

    /// Stops the threads (if they have not made their total yet) and waits for them.
    pub fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    /// Waits until the threads made their total.
    pub fn join(self) -> (u64, u64) {
        let (ops, errors) = (self.ops.clone(), self.errors.clone());
        for t in self.threads {
            t.join();
        }
        (ops.load(Ordering::Relaxed), errors.load(Ordering::Relaxed))
    }
}

/// The edu device raising one interrupt after another.
pub struct EduFlood {
    edu: crate::drivers::edu::Edu,
    _handle: intr::IntrHandle<crate::locks::KernelEnv>,
    stop: Arc<AtomicBool>,
    raised: Arc<AtomicU64>,
    handled: Arc<AtomicU64>,
    raiser: Join,
}

impl EduFlood {
    /// Establishes `name` on the edu device's MSI (to the last CPU), its handler thread (if
    /// the model gives it one) at `thread_pri` (`None`: the default), and starts the raiser on
    /// CPU 0 at `pri`. `None` without the device (or if the source cannot be established).
    pub fn start(name: &'static str, pri: Priority, thread_pri: Option<Priority>) -> Option<EduFlood> {
        let edu = crate::drivers::edu::Edu::probe()?;
        edu.ack(!0);
        let dev = edu.clone();
        let handled = Arc::new(AtomicU64::new(0));
        let h = handled.clone();
        let handle = INTR
            .establish(
                intr::SourceSpec {
                    name: name.into(),
                    vector: EDU_VECTOR,
                    ipl: ipl::Ipl::Vm,
                    flags: intr::IntrFlags::MPSAFE,
                    model: None,
                    thread_priority: thread_pri,
                },
                Some(alloc::boxed::Box::new(move |_| {
                    if !dev.claim() {
                        return intr::FilterResult::Stray;
                    }
                    intr::FilterResult::Schedule
                })),
                Some(alloc::boxed::Box::new(move |_| {
                    h.fetch_add(1, Ordering::Relaxed);
                })),
            )
            .ok()?;
        edu.enable_msi(X86_64::ncpus() - 1, EDU_VECTOR).ok()?;
        let stop = Arc::new(AtomicBool::new(false));
        let raised = Arc::new(AtomicU64::new(0));
        let (s, r, h, dev) = (stop.clone(), raised.clone(), handled.clone(), edu.clone());
        let raiser = SCHED.spawn("edu-flood", pri, Some(0), move || {
            while !s.load(Ordering::Relaxed) {
                let k = r.load(Ordering::Relaxed);
                if h.load(Ordering::Relaxed) == k {
                    r.store(k + 1, Ordering::Relaxed);
                    dev.raise(1);
                }
                SCHED.sleep_ns(EDU_PERIOD_NS);
            }
        });
        Some(EduFlood { edu, _handle: handle, stop, raised, handled, raiser })
    }

    /// Stops the raiser, lets the last interrupt in (200 guest ms at most), disables the MSI
    /// and returns (raised, handled).
    pub fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.raiser.join();
        let deadline = X86_64::now_ns() + 200_000_000;
        while self.handled.load(Ordering::Relaxed) != self.raised.load(Ordering::Relaxed)
            && X86_64::now_ns() < deadline
        {
            SCHED.sleep_ns(1_000_000);
        }
        self.edu.disable_msi();
        (self.raised.load(Ordering::Relaxed), self.handled.load(Ordering::Relaxed))
    }
}
