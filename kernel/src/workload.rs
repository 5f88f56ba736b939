//! The device workload of the main job (`run=scenario`): the serial line, the NIC and the disk
//! busy at once while the scenario's threads load every CPU. The host drives the traffic
//! (docs/PROTOCOL.md: "Serial input", the NIC frames); the kernel verifies every byte,
//! prints `@@ live` lines while it runs and `@@ result` / `@@ hist` lines at the end.
//!
//! Each part is started only if it is there: the serial consumer with `workload.serial=on`
//! (the host will paste), the NIC and the disk when their devices probe. The workload is
//! complete when every started part is: the serial end line seen, the NIC's end marker seen,
//! the disk threads done.
//!
//! - **NIC:** asks the host (`@@ net-ready`) for [`NET_FRAMES`] frames at [`NET_RATE`]
//!   frames/s, each to be echoed; the driver's receive handler verifies every frame and
//!   yields after its budget (`hwi_sched`). The part is complete at the end marker, or when
//!   no frame has come for [`NET_GIVE_UP_MS`] (a dead link: the missing frames are lost).
//! - **edu:** a raiser thread makes QEMU's `edu` device raise an MSI every millisecond
//!   (the next only once the last was handled), a source under the boot's default model
//!   whose filter acknowledges the device and whose handler counts; it stops with the
//!   others, and every raised interrupt must have been handled exactly once. The raiser runs
//!   on the CPU the MSI goes to and raises holding the adaptive mutex `workload.edu`, which
//!   the handler takes too (not under `direct`, whose handler must not block): the
//!   interrupt comes in at once, the handler's thread preempts the raiser and blocks on the
//!   mutex's turnstile (a pool ithread is divorced from its CPU, a pinned one gives the CPU
//!   back), lending the raiser its priority until it lets go — the interrupt handler that
//!   blocks on a turnstile that Baldwin's and Doran's designs are about, in every boot.
//! - **Saturated** (`workload.saturate=on`, as `--compare` boots it): the NIC's frames are
//!   asked for unpaced (`rate=0`: the host sends one as soon as the guest returns a buffer)
//!   and [`SATURATED_DISK_THREADS`] disk threads per CPU keep the disk's queue full.
//! - **Disk:** one thread per CPU writes a pattern over its own [`BLK_SECTORS`] sectors and
//!   reads it back, [`BLK_ROUNDS`] times, each request sleeping until its completion
//!   interrupt.

use alloc::string::String;
use alloc::vec::Vec;
use core::cell::Cell;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arch::kprintln;
use intr::footprint::Footprint;
use sched::Priority;

use crate::drivers::com;
use crate::drivers::virtio::{blk, net};
use crate::intr::INTR;
use crate::SCHED;

/// Serial-line counters of the workload.
#[derive(Default)]
pub struct SerialProgress {
    /// Lines verified (good or bad).
    pub lines: AtomicU64,
    /// Bytes in those lines, with their line ends.
    pub bytes: AtomicU64,
    /// Lines that did not match.
    pub bad: AtomicU64,
    /// The end line (`E <count>`) arrived.
    pub done: AtomicBool,
    /// The count the end line announced.
    pub announced: AtomicU64,
}

/// The serial part's counters.
pub static SERIAL: SerialProgress = SerialProgress {
    lines: AtomicU64::new(0),
    bytes: AtomicU64::new(0),
    bad: AtomicU64::new(0),
    done: AtomicBool::new(false),
    announced: AtomicU64::new(0),
};

/// Frames the NIC part asks for.
pub const NET_FRAMES: u64 = 8000;
/// Their rate, frames per second (well below what the guest takes under TCG on 4 vCPUs).
pub const NET_RATE: u32 = 2000;
/// A NIC part without any frame for this long (and no end marker) is given up.
pub const NET_GIVE_UP_MS: u64 = 15_000;
/// Disk threads per CPU when saturated (each keeps one request in the queue).
pub const SATURATED_DISK_THREADS: usize = 4;
/// Sectors each disk thread owns.
pub const BLK_SECTORS: u64 = 64;
/// Write-and-verify rounds per disk thread.
pub const BLK_ROUNDS: u64 = 4;

/// Disk-part counters.
static BLK_BAD: AtomicU64 = AtomicU64::new(0);
static BLK_DONE: AtomicU64 = AtomicU64::new(0);
/// When the last disk thread finished (guest ns).
static BLK_LAST_NS: AtomicU64 = AtomicU64::new(0);

/// The edu part's vector.
pub const EDU_VECTOR: u8 = 0x45;
static EDU_RAISED: AtomicU64 = AtomicU64::new(0);
static EDU_HANDLED: AtomicU64 = AtomicU64::new(0);
static EDU_STOP: AtomicBool = AtomicBool::new(false);
/// Whether the edu handler takes [`EDU_LOCK`] (not under `direct`).
static EDU_BLOCKS: AtomicBool = AtomicBool::new(false);
/// Held by the raiser while it raises; taken by the handler.
static EDU_LOCK: crate::locks::Mutex<u64> = crate::locks::Mutex::new_adaptive("workload.edu", 0);

/// The edu part's device and source.
type EduPart = (crate::drivers::edu::Edu, intr::IntrHandle<crate::locks::KernelEnv>);

/// What runs.
pub struct Workload {
    edu: Option<EduPart>,
    serial: bool,
    net: Option<&'static net::NetDev>,
    blk_threads: usize,
    threads: Vec<sched::JoinHandle<crate::locks::KernelEnv>>,
    /// When the parts started (guest ns): the spans of `net_span_ns=` and `blk_span_ns=`.
    started_ns: u64,
    /// The interrupt framework's threads and sources once every part is set up.
    rest: Footprint,
    /// The largest of each since (sampled at every live record and at the end).
    peak: Cell<Footprint>,
}

/// Starts the parts that are there.
pub fn start(serial: bool, saturate: bool) -> Workload {
    let started_ns = arch::apic::now_ns();
    let mut threads = Vec::new();
    let net = net::start(None).ok();
    if let Some(dev) = net {
        dev.expect(0, NET_FRAMES);
        dev.announce(0, NET_FRAMES, true, if saturate { 0 } else { NET_RATE });
    }
    let mut blk_threads = 0;
    if let Ok(dev) = blk::start(None) {
        let n = arch::cpu::ncpus();
        // Above the scenario's busy classes: the disk threads mostly sleep on I/O, and a
        // completion should get its thread going at once.
        let pri = Priority::new(44).expect("priority in range");
        let per_cpu = if saturate { SATURATED_DISK_THREADS } else { 1 };
        for k in 0..n * per_cpu {
            let cpu = k % n;
            let first = k as u64 * BLK_SECTORS;
            if first + BLK_SECTORS > dev.capacity() {
                break;
            }
            blk_threads += 1;
            threads.push(SCHED.spawn("disk-io", pri, Some(cpu), move || {
                for round in 0..BLK_ROUNDS {
                    if crate::tests::blk::write_verify(dev, first, BLK_SECTORS, round).is_err() {
                        BLK_BAD.fetch_add(1, Ordering::Relaxed);
                    }
                }
                BLK_LAST_NS.fetch_max(arch::apic::now_ns(), Ordering::Relaxed);
                BLK_DONE.fetch_add(1, Ordering::Release);
            }));
        }
    }
    if serial {
        let pri = Priority::new(30).expect("priority in range");
        threads.push(SCHED.spawn("serial-sink", pri, None, serial_sink));
        kprintln!("@@ serial-ready");
    }
    let edu = start_edu(&mut threads);
    let rest = INTR.footprint();
    Workload { edu, serial, net, blk_threads, threads, started_ns, rest, peak: Cell::new(rest) }
}

/// The edu part: a source and its raiser thread (see the module doc); `None` without the
/// device.
fn start_edu(threads: &mut Vec<sched::JoinHandle<crate::locks::KernelEnv>>) -> Option<EduPart> {
    let edu = crate::drivers::edu::Edu::probe()?;
    edu.ack(!0);
    let dev = edu.clone();
    let handle = INTR
        .establish(
            intr::SourceSpec {
                name: "edu0".into(),
                vector: EDU_VECTOR,
                ipl: ipl::Ipl::Vm,
                flags: intr::IntrFlags::MPSAFE,
                model: None,
                thread_priority: None,
            },
            Some(alloc::boxed::Box::new(move |_| {
                if !dev.claim() {
                    return intr::FilterResult::Stray;
                }
                intr::FilterResult::Schedule
            })),
            Some(alloc::boxed::Box::new(|_| {
                if EDU_BLOCKS.load(Ordering::Relaxed) {
                    *EDU_LOCK.lock() += 1;
                }
                EDU_HANDLED.fetch_add(1, Ordering::Relaxed);
            })),
        )
        .ok()?;
    EDU_BLOCKS.store(handle.source().model() != intr::Model::Direct, Ordering::Relaxed);
    let n = arch::cpu::ncpus();
    edu.enable_msi(n - 1, EDU_VECTOR).ok()?;
    let raiser = edu.clone();
    let pri = Priority::new(40).expect("priority in range");
    threads.insert(
        0,
        SCHED.spawn("edu-raiser", pri, Some(n - 1), move || {
            while !EDU_STOP.load(Ordering::Relaxed) {
                let k = EDU_RAISED.load(Ordering::Relaxed);
                if EDU_HANDLED.load(Ordering::Relaxed) == k {
                    EDU_RAISED.store(k + 1, Ordering::Relaxed);
                    let _held = EDU_LOCK.lock();
                    raiser.raise(1);
                    // The interrupt comes in here, on this CPU.
                    for _ in 0..64 {
                        core::hint::spin_loop();
                    }
                }
                SCHED.sleep_ns(1_000_000);
            }
        }),
    );
    Some((edu, handle))
}

/// Reads pasted lines until the end line, verifying each (com::paste_line).
fn serial_sink() {
    let mut seq = 0u64;
    loop {
        let line = com::read_line();
        if let Some(n) = line.strip_prefix("E ") {
            SERIAL.announced.store(n.trim().parse().unwrap_or(u64::MAX), Ordering::Relaxed);
            SERIAL.done.store(true, Ordering::Release);
            return;
        }
        if !com::check_paste_line(&line, seq) {
            SERIAL.bad.fetch_add(1, Ordering::Relaxed);
        }
        SERIAL.bytes.fetch_add(line.len() as u64 + 1, Ordering::Relaxed);
        SERIAL.lines.fetch_add(1, Ordering::Relaxed);
        seq += 1;
    }
}

impl Workload {
    /// Whether every started part is complete.
    pub fn complete(&self) -> bool {
        (!self.serial || SERIAL.done.load(Ordering::Acquire))
            && self.net.is_none_or(|d| {
                let st = d.stats();
                st.end_seen || st.stall_ms >= NET_GIVE_UP_MS
            })
            && BLK_DONE.load(Ordering::Acquire) as usize == self.blk_threads
            && self.started()
    }

    /// Whether anything was started (without parts, the scenario runs for its time).
    pub fn started(&self) -> bool {
        self.serial || self.net.is_some() || self.blk_threads > 0
    }

    /// The progress counters as `key=value` pairs (the `@@ live kind=progress` and
    /// `@@ result scope=workload` lines).
    pub fn progress(&self) -> String {
        let mut s = String::new();
        if self.edu.is_some() {
            let _ = write!(
                s,
                "edu_raised={} edu_handled={} ",
                EDU_RAISED.load(Ordering::Relaxed),
                EDU_HANDLED.load(Ordering::Relaxed)
            );
        }
        if let Some(d) = self.net {
            let st = d.stats();
            let _ = write!(
                s,
                "net_rx={} net_unique={} net_dup={} net_range={} net_bad={} net_foreign={} net_lost={} \
                 net_echoed={} net_yields={} net_end={} net_stall_ms={} net_stall_at={} net_span_ns={} ",
                st.received,
                st.unique,
                st.duplicate,
                st.out_of_range,
                st.bad,
                st.foreign,
                self.net_lost(),
                st.echoed,
                st.yields,
                u8::from(st.end_seen),
                st.stall_ms,
                st.stall_at,
                // From the start to the last frame, once every frame is in.
                if st.end_seen { st.last_ns.saturating_sub(self.started_ns) } else { 0 }
            );
        }
        if self.blk_threads > 0 {
            let st = blk::stats();
            let _ = write!(
                s,
                "blk_ops={} blk_bad={} blk_bytes={} blk_p99={} blk_span_ns={} ",
                st.ops,
                st.bad + BLK_BAD.load(Ordering::Relaxed),
                st.bytes,
                st.lat_p99_ns,
                // From the start to the last disk thread's end, once all are done.
                if BLK_DONE.load(Ordering::Acquire) as usize == self.blk_threads {
                    BLK_LAST_NS.load(Ordering::Relaxed).saturating_sub(self.started_ns)
                } else {
                    0
                }
            );
        }
        let _ = write!(
            s,
            "serial_bytes={} serial_lines={} serial_bad={} serial_lost={}",
            SERIAL.bytes.load(Ordering::Relaxed),
            SERIAL.lines.load(Ordering::Relaxed),
            SERIAL.bad.load(Ordering::Relaxed),
            self.serial_lost()
        );
        s
    }

    /// Frames missing (the driver's count: gaps, and once the end marker is in, what it
    /// announced that never came); once the part is given up, every frame not received.
    fn net_lost(&self) -> u64 {
        let Some(d) = self.net else { return 0 };
        let st = d.stats();
        if !st.end_seen && st.stall_ms >= NET_GIVE_UP_MS {
            NET_FRAMES.saturating_sub(st.unique)
        } else {
            st.lost
        }
    }

    fn serial_lost(&self) -> u64 {
        if SERIAL.done.load(Ordering::Acquire) {
            SERIAL.announced.load(Ordering::Relaxed).saturating_sub(SERIAL.lines.load(Ordering::Relaxed))
        } else {
            0
        }
    }

    /// Whether everything received was intact and nothing announced is missing.
    pub fn verified(&self) -> bool {
        let edu_ok =
            self.edu.is_none() || EDU_RAISED.load(Ordering::Relaxed) == EDU_HANDLED.load(Ordering::Relaxed);
        // Foreign frames are not ours to judge; anything else unexpected fails the run.
        let net_ok = self.net.is_none_or(|d| {
            let st = d.stats();
            st.bad == 0 && st.duplicate == 0 && st.out_of_range == 0 && self.net_lost() == 0
        });
        let blk_ok = self.blk_threads == 0 || (blk::stats().bad == 0 && BLK_BAD.load(Ordering::Relaxed) == 0);
        SERIAL.bad.load(Ordering::Relaxed) == 0
            && self.serial_lost() == 0
            && net_ok
            && blk_ok
            && edu_ok
            && self.complete()
    }

    /// Waits for the workload's threads (after `complete`, or at the deadline: a thread still
    /// waiting for input is left behind, QEMU exits anyway).
    pub fn finish(self) {
        if let Some((edu, _)) = &self.edu {
            edu.disable_msi();
        }
        let n = self.threads.len();
        for (i, t) in self.threads.into_iter().enumerate() {
            // The serial sink is the last thread; it may wait for input that never comes.
            if i + 1 < n || !self.serial || SERIAL.done.load(Ordering::Acquire) {
                t.join();
            }
        }
    }
}

/// One `@@ live kind=source` line per established source, and the progress line.
pub fn print_live(t_ms: u64, w: &Workload) {
    w.peak.set(w.peak.get().max(&INTR.footprint()));
    for src in INTR.sources() {
        let st = &src.stats;
        kprintln!(
            "@@ live kind=source t_ms={} name={} model={} count={} handled={} cpu_ns={} p50={} p99={} storm={} \
             masked={}",
            t_ms,
            src.name(),
            src.model(),
            st.total(),
            st.handled.load(Ordering::Relaxed),
            st.handler_ns.load(Ordering::Relaxed),
            st.latency.percentile(50),
            st.latency.percentile(99),
            if src.storm.storming.load(Ordering::Relaxed) { "on" } else { "off" },
            u8::from(src.is_masked())
        );
    }
    kprintln!("@@ live kind=progress t_ms={} {}", t_ms, w.progress());
}

/// The end-of-run records: one per source, and the workload's totals.
pub fn print_results(w: &Workload) {
    // The raiser stops; the last interrupt it raised is let in.
    EDU_STOP.store(true, Ordering::Relaxed);
    if w.edu.is_some() {
        let deadline = arch::apic::now_ns() + 200_000_000;
        while EDU_RAISED.load(Ordering::Relaxed) != EDU_HANDLED.load(Ordering::Relaxed)
            && arch::apic::now_ns() < deadline
        {
            SCHED.sleep_ns(1_000_000);
        }
    }
    if let Some(d) = w.net {
        // The last echoes go out before the host counts them.
        d.tx_flush(2000);
    }
    for src in INTR.sources() {
        let st = &src.stats;
        kprintln!(
            "@@ result scope=source name={} model={} count={} handled={} cpu_ns={} p50={} p99={} storms={} \
             off_ns={} spl_n={} spl_ns={} masked_n={} masked_ns={} masked_arrivals={}",
            src.name(),
            src.model(),
            st.total(),
            st.handled.load(Ordering::Relaxed),
            st.handler_ns.load(Ordering::Relaxed),
            st.latency.percentile(50),
            st.latency.percentile(99),
            src.storm.storms.load(Ordering::Relaxed),
            st.handler_off_ns.load(Ordering::Relaxed),
            st.spl_deferred.load(Ordering::Relaxed),
            st.spl_deferred_ns.load(Ordering::Relaxed),
            st.masked_waits.load(Ordering::Relaxed),
            st.masked_ns.load(Ordering::Relaxed),
            st.masked_total()
        );
    }
    // Per CPU that ran a source's handlers: runs, handler time and latency percentiles.
    for src in INTR.sources() {
        let st = &src.stats;
        for cpu in 0..arch::cpu::ncpus() {
            let handled = st.handled_cpu[cpu].load(Ordering::Relaxed);
            if handled == 0 {
                continue;
            }
            kprintln!(
                "@@ result scope=source_cpu name={} cpu={} handled={} cpu_ns={} p50={} p99={}",
                src.name(),
                cpu,
                handled,
                st.handler_ns_cpu[cpu].load(Ordering::Relaxed),
                st.latency_percentile_cpu(cpu, 50),
                st.latency_percentile_cpu(cpu, 99)
            );
        }
    }
    let p = INTR.pool.stats();
    kprintln!(
        "@@ result scope=pool size={} assigned={} migrations={} divorces={} empty={} stolen={}",
        p.size,
        p.assigned,
        p.migrations,
        p.divorces,
        p.empty,
        p.stolen
    );
    kprintln!("@@ result scope=workload {} verified={}", w.progress(), u8::from(w.verified()));
    let (rest, peak) = (w.rest, w.peak.get().max(&INTR.footprint()));
    kprintln!(
        "@@ result scope=footprint rest_threads={} peak_threads={} thread_bytes={} rest_thread_kib={} \
         peak_thread_kib={} pool={} dedicated={} pinned={} soft={} storm={} sources={} source_bytes={}",
        rest.threads(),
        peak.threads(),
        peak.thread_bytes,
        rest.thread_memory() / 1024,
        peak.thread_memory() / 1024,
        peak.pool_threads,
        peak.dedicated_threads,
        peak.pinned_threads,
        peak.soft_threads,
        peak.storm_threads,
        peak.sources,
        peak.source_bytes
    );
    for src in INTR.sources() {
        let mut buckets = String::new();
        for (lo, n) in src.stats.latency.buckets() {
            let _ = write!(buckets, "{}{lo}:{n}", if buckets.is_empty() { "" } else { "," });
        }
        if !buckets.is_empty() {
            kprintln!("@@ hist name={} model={} unit=ns buckets={}", src.name(), src.model(), buckets);
        }
    }
}
