//! virtio-blk (`-device virtio-blk-pci`, PCI 1af4:1001 transitional or 1af4:1042): reads and
//! writes from kernel threads that **sleep** until the completion interrupt wakes them.
//!
//! ## Protocol
//!
//! * [`start`] (thread context, once; later calls return the same device) finds the function,
//!   negotiates (`VIRTIO_F_VERSION_1` only), sets up request queue 0 with MSI-X table entry 0
//!   on [`VECTOR`] (0x41) aimed at the middle CPU ([`irq_cpu`]: device interrupts are spread
//!   — COM1 on CPU 0, the NIC's receive queue on the last CPU — as FreeBSD's `intr_next_cpu`
//!   spreads them, rather than all on CPU 0, which also runs the console), and establishes the source [`NAME`]
//!   (`virtio-blk0`, `IPL_VM`, a handler and no filter, `MASK_WHILE_QUEUED`; masked in
//!   hardware through the entry's vector control, [`crate::intr::MsixLine`]) under the model
//!   asked for (`None`: the framework's default, `intr.model=`). [`BlkDev::set_model`]
//!   re-establishes it under another model while no request is outstanding.
//! * A request ([`BlkDev::read`], [`BlkDev::write`]; thread context, `IPL_NONE`, may sleep)
//!   takes a free **slot** (sleeping on `slot_freed` while there is none): its own DMA buffer
//!   holding the 16-byte request header (type IN=0 / OUT=1, reserved, sector), up to
//!   [`MAX_BYTES`] of data and the status byte, and its own [`Event`]. Under the queue lock
//!   (a spin mutex at `IPL_VM`: the handler may run in interrupt context under `direct`) it
//!   pushes the three-descriptor chain header (device reads) → data (device reads for OUT,
//!   writes for IN) → status (device writes) and records head → slot; it rings the doorbell
//!   after dropping the lock (`Virtqueue::doorbell`); then it sleeps on the slot's event (a deadline of [`TIMEOUT_NS`]: a request the device
//!   never completes is reported, and its slot is retired, never reused).
//! * The completion handler ([`BlkDev::complete`]) runs per the source's model — in interrupt
//!   context (`direct`) or in an interrupt thread: under the queue lock it pops every used
//!   chain and marks the slot done, and after dropping the lock sets each slot's event. Many
//!   requests from threads on every CPU are outstanding at once (up to the number of slots,
//!   a third of the queue size).
//! * Statistics ([`stats`]): operations, bytes, device errors, data mismatches reported by
//!   callers ([`BlkDev::note_bad`]), and two latency histograms: **op** latency (submit →
//!   the sleeping thread runs again) and **completion** latency (submit → the completion
//!   handler saw it: what interrupt dispatch adds, independent of thread scheduling).

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arch::dma::DmaRegion;
use intr::{Histogram, IntrFlags, IntrHandle, Model, SourceSpec};
use ipl::Ipl;
use machine::Machine;
use sched::Event;

use super::{percentiles, Transport, Virtqueue};
use crate::drivers::DriverError;
use crate::intr::INTR;
use crate::locks::{KernelEnv, Mutex};
use crate::SCHED;

/// The interrupt source's name.
pub const NAME: &str = "virtio-blk0";
/// The CPU vector of request-queue completions (MSI-X entry 0).
pub const VECTOR: u8 = 0x41;
/// Sector size.
pub const SECTOR: usize = 512;
/// Largest request.
pub const MAX_BYTES: usize = 8 * SECTOR;
/// A request the device has not completed after this long is an error.
pub const TIMEOUT_NS: u64 = 10_000_000_000;

/// PCI device ids: transitional, modern.
const IDS: [u16; 2] = [0x1001, 0x1042];
/// Queue entries (three descriptors per request).
const QUEUE_SIZE: u16 = 128;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const S_OK: u8 = 0;

/// Slot buffer layout: header, status, data.
const OFF_HDR: usize = 0;
const OFF_STATUS: usize = 16;
const OFF_DATA: usize = 512;

/// What a request can fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlkError {
    /// Length not a positive multiple of the sector size, or above [`MAX_BYTES`].
    BadLength(usize),
    /// Past the end of the disk.
    OutOfRange {
        /// First sector asked for.
        sector: u64,
        /// Disk size in sectors.
        capacity: u64,
    },
    /// The device answered with this status (1: I/O error, 2: unsupported).
    Device(u8),
    /// No completion within [`TIMEOUT_NS`].
    Timeout,
}

impl core::fmt::Display for BlkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BlkError::BadLength(n) => write!(f, "{NAME}: bad request length {n}"),
            BlkError::OutOfRange { sector, capacity } => {
                write!(f, "{NAME}: sector {sector} beyond the disk's {capacity}")
            }
            BlkError::Device(s) => write!(f, "{NAME}: device status {s}"),
            BlkError::Timeout => {
                write!(f, "{NAME}: request not completed in {} s", TIMEOUT_NS / 1_000_000_000)
            }
        }
    }
}

/// Counters of the block device (zero before [`start`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkStats {
    /// Completed requests.
    pub ops: u64,
    /// Of which reads.
    pub reads: u64,
    /// Of which writes.
    pub writes: u64,
    /// Bytes transferred.
    pub bytes: u64,
    /// Requests that failed (device status or timeout).
    pub errors: u64,
    /// Data mismatches callers found ([`BlkDev::note_bad`]).
    pub bad: u64,
    /// Op latency (submit → the requester runs again), median, ns.
    pub lat_p50_ns: u64,
    /// Op latency, 99th percentile, ns.
    pub lat_p99_ns: u64,
    /// Completion latency (submit → completion handler), median, ns.
    pub done_p50_ns: u64,
    /// Completion latency, 99th percentile, ns.
    pub done_p99_ns: u64,
    /// Most requests outstanding at once.
    pub max_outstanding: u64,
    /// Completion handler runs.
    pub handler_runs: u64,
}

struct Slot {
    buf: DmaRegion,
    done: Event<crate::locks::KernelEnv>,
    /// Submit time (ns).
    submitted: AtomicU64,
    /// Set by the handler before `done`.
    completed: AtomicBool,
}

struct Queue {
    vq: Virtqueue,
    /// Chain head → slot.
    head_slot: Vec<Option<u16>>,
}

struct Latency {
    op: Histogram,
    done: Histogram,
}

/// The block device.
pub struct BlkDev {
    t: Transport,
    capacity: u64,
    queue: Mutex<Queue>,
    slots: Vec<Slot>,
    free_slots: Mutex<Vec<u16>>,
    slot_freed: Event<crate::locks::KernelEnv>,
    handle: Mutex<Option<IntrHandle<KernelEnv>>>,
    /// MSI-X table entry 0 (the queue's), the completion source's hardware mask.
    line: &'static crate::intr::MsixLine,
    /// A spin mutex: the handler records into it, maybe in interrupt context.
    lat: Mutex<Arc<Latency>>,
    ops: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    bad: AtomicU64,
    outstanding: AtomicU64,
    max_outstanding: AtomicU64,
    handler_runs: AtomicU64,
}

static DEVICE: Mutex<Option<&'static BlkDev>> = Mutex::new_adaptive("virtio-blk.device", None);

/// The device, if [`start`] brought it up.
pub fn device() -> Option<&'static BlkDev> {
    *DEVICE.lock()
}

/// The device's counters (zero if it was not started).
pub fn stats() -> BlkStats {
    device().map(|d| d.stats()).unwrap_or_default()
}

/// The CPU the completion interrupt is aimed at: the middle one (`ncpus / 2`; CPU 0 alone on
/// one CPU). COM1's interrupt goes to CPU 0 and the NIC's to the last CPU, so with two CPUs
/// or more the disk's does not share CPU 0 with the console: under 8-CPU torture CPU 0 carried
/// COM1's paste, the disk's completions and the monitor at once
/// (docs/logs/torture-smp8-host-load-2026-12-06.txt).
pub fn irq_cpu() -> usize {
    arch::cpu::ncpus() / 2
}

/// Brings the device up (once) with its completion source under `model` (`None`: the
/// default). `Err` names the device and what is wrong (e.g. it is absent).
pub fn start(model: Option<Model>) -> Result<&'static BlkDev, DriverError> {
    let mut g = DEVICE.lock();
    if let Some(d) = *g {
        return Ok(d);
    }
    let t = Transport::probe(NAME, &IDS)?;
    let bdf = t.func.bdf;
    let err = |what: &'static str| DriverError::Device { device: NAME, bdf, what };
    t.func.enable_msix(&[arch::cpu::lapic_id_of(irq_cpu())], &[VECTOR]).map_err(err)?;
    let line = crate::intr::MsixLine::new(&t.func, 0).map_err(err)?;
    t.begin(0).map_err(err)?;
    let vq = t.setup_queue(0, QUEUE_SIZE, 0).map_err(err)?;
    let cfg = t.device_config();
    let capacity = cfg.read32(0) as u64 | (cfg.read32(4) as u64) << 32;
    let nslots = vq.size() / 3;
    let slots = (0..nslots)
        .map(|_| Slot {
            buf: DmaRegion::new(OFF_DATA + MAX_BYTES, 512),
            done: Event::new(&SCHED),
            submitted: AtomicU64::new(0),
            completed: AtomicBool::new(false),
        })
        .collect();
    let qsize = vq.size() as usize;
    let dev: &'static BlkDev = Box::leak(Box::new(BlkDev {
        capacity,
        queue: Mutex::new_spin(
            "virtio-blk0.queue",
            Ipl::Vm,
            Queue { vq, head_slot: alloc::vec![None; qsize] },
        ),
        slots,
        free_slots: Mutex::new_adaptive("virtio-blk0.slots", (0..nslots).rev().collect()),
        slot_freed: Event::new(&SCHED),
        handle: Mutex::new_adaptive("virtio-blk0.handle", None),
        line,
        lat: Mutex::new_spin(
            "virtio-blk0.lat",
            Ipl::Vm,
            Arc::new(Latency { op: Histogram::new(), done: Histogram::new() }),
        ),
        ops: AtomicU64::new(0),
        reads: AtomicU64::new(0),
        writes: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        bad: AtomicU64::new(0),
        outstanding: AtomicU64::new(0),
        max_outstanding: AtomicU64::new(0),
        handler_runs: AtomicU64::new(0),
        t,
    }));
    dev.establish(model)?;
    dev.t.driver_ok();
    arch::kprintln!(
        "{NAME}: {} at {} capacity={} sectors queue={} slots={} msix vector={VECTOR:#x} model={}",
        if dev.t.func.device == IDS[0] { "transitional" } else { "modern" },
        dev.t.func.bdf,
        capacity,
        qsize,
        nslots,
        dev.model()
    );
    *g = Some(dev);
    Ok(dev)
}

impl BlkDev {
    fn establish(&'static self, model: Option<Model>) -> Result<(), DriverError> {
        let h = INTR
            .establish_line(
                SourceSpec {
                    name: NAME.into(),
                    vector: VECTOR,
                    ipl: Ipl::Vm,
                    flags: IntrFlags::MPSAFE | IntrFlags::EXCLUSIVE | IntrFlags::MASK_WHILE_QUEUED,
                    model,
                    thread_priority: None,
                },
                self.line,
                None,
                Some(Box::new(move |_| {
                    self.handler_runs.fetch_add(1, Ordering::Relaxed);
                    self.complete();
                })),
            )
            .map_err(|error| DriverError::Establish { device: NAME, error })?;
        *self.handle.lock() = Some(h);
        Ok(())
    }

    /// Re-establishes the completion source under `model` (`None`: the default). Call with no
    /// request outstanding; the device's messages are held (MSI-X function mask) meanwhile,
    /// and anything completed in between is collected at the end.
    pub fn set_model(&'static self, model: Option<Model>) -> Result<(), DriverError> {
        self.t.func.set_msix_function_mask(true);
        drop(self.handle.lock().take());
        let r = self.establish(model);
        self.t.func.set_msix_function_mask(false);
        self.complete();
        r
    }

    /// The model the completion source runs under (`None` if not established).
    pub fn model(&self) -> Model {
        self.handle.lock().as_ref().map(|h| h.source().model()).unwrap_or(Model::Direct)
    }

    /// Takes a mask reference on the completion source (as a driver masks a source it must
    /// hold off): its MSI-X entry is masked in the device. `false` if not established.
    pub fn mask_source(&self) -> bool {
        self.handle.lock().as_ref().map(|h| h.mask()).is_some()
    }

    /// Drops the reference [`BlkDev::mask_source`] took; `false` if none was held.
    pub fn unmask_source(&self) -> bool {
        self.handle.lock().as_ref().is_some_and(|h| h.unmask().is_ok())
    }

    /// The completion source's arrivals while masked, all CPUs.
    pub fn masked_arrivals(&self) -> u64 {
        self.handle.lock().as_ref().map_or(0, |h| h.source().stats.masked_total())
    }

    /// The completion source's MSI-X entry (its hardware mask).
    pub fn line(&self) -> &'static crate::intr::MsixLine {
        self.line
    }

    /// The interrupt source's accounting, if established.
    pub fn source_handled(&self) -> u64 {
        self.handle.lock().as_ref().map(|h| h.source().stats.total()).unwrap_or(0)
    }

    /// Disk size in sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Reads `buf.len()` bytes (a multiple of [`SECTOR`], at most [`MAX_BYTES`]) from `sector`.
    /// Sleeps until the device completes it.
    pub fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        self.request(T_IN, sector, buf.len(), |_| {}, |b| b.read_bytes(OFF_DATA, buf))
    }

    /// Writes `buf` (a multiple of [`SECTOR`], at most [`MAX_BYTES`]) at `sector`. Sleeps until
    /// the device completes it.
    pub fn write(&self, sector: u64, buf: &[u8]) -> Result<(), BlkError> {
        self.request(T_OUT, sector, buf.len(), |b| b.write_bytes(OFF_DATA, buf), |_| {})
    }

    /// Records a data mismatch a caller found (counted in [`BlkStats::bad`]).
    pub fn note_bad(&self) {
        self.bad.fetch_add(1, Ordering::Relaxed);
    }

    /// Clears the latency histograms (the counters keep counting).
    pub fn reset_latency(&self) {
        *self.lat.lock() = Arc::new(Latency { op: Histogram::new(), done: Histogram::new() });
    }

    fn take_slot(&self) -> Result<u16, BlkError> {
        let deadline = arch::X86_64::now_ns() + TIMEOUT_NS;
        loop {
            if let Some(s) = self.free_slots.lock().pop() {
                return Ok(s);
            }
            if !self.slot_freed.wait_deadline(deadline) {
                return Err(BlkError::Timeout);
            }
        }
    }

    fn request(
        &self,
        kind: u32,
        sector: u64,
        len: usize,
        fill: impl FnOnce(&DmaRegion),
        drain: impl FnOnce(&DmaRegion),
    ) -> Result<(), BlkError> {
        if len == 0 || !len.is_multiple_of(SECTOR) || len > MAX_BYTES {
            return Err(BlkError::BadLength(len));
        }
        let n = (len / SECTOR) as u64;
        if sector.checked_add(n).is_none_or(|end| end > self.capacity) {
            return Err(BlkError::OutOfRange { sector, capacity: self.capacity });
        }
        let s = self.take_slot()?;
        let slot = &self.slots[s as usize];
        let b = &slot.buf;
        b.write32(OFF_HDR, kind);
        b.write32(OFF_HDR + 4, 0);
        b.write64(OFF_HDR + 8, sector);
        b.write8(OFF_STATUS, 0xFF);
        fill(b);
        slot.completed.store(false, Ordering::Relaxed);
        let lat = self.lat.lock().clone();
        let out = self.outstanding.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_outstanding.fetch_max(out, Ordering::Relaxed);
        let t0 = arch::X86_64::now_ns();
        slot.submitted.store(t0, Ordering::Relaxed);
        let doorbell = {
            let mut q = self.queue.lock();
            let chain = [
                (b.phys() + OFF_HDR as u64, 16, false),
                (b.phys() + OFF_DATA as u64, len as u32, kind == T_IN),
                (b.phys() + OFF_STATUS as u64, 1, true),
            ];
            // A slot is a third of the queue: there is always room for its chain.
            let head = q.vq.push(&chain).expect("virtio-blk: no descriptors for a free slot");
            q.head_slot[head as usize] = Some(s);
            q.vq.doorbell()
        };
        // Rung after the queue lock is dropped (see `Virtqueue::doorbell`).
        doorbell.ring();
        let finished = slot.done.wait_deadline(t0 + TIMEOUT_NS);
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
        if !finished && !slot.completed.load(Ordering::Acquire) {
            // The device still owns the slot's buffer: retire the slot for good.
            self.errors.fetch_add(1, Ordering::Relaxed);
            return Err(BlkError::Timeout);
        }
        let now = arch::X86_64::now_ns();
        lat.op.record(now.saturating_sub(t0));
        let status = b.read8(OFF_STATUS);
        let r = if status == S_OK {
            drain(b);
            self.ops.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(len as u64, Ordering::Relaxed);
            if kind == T_IN {
                self.reads.fetch_add(1, Ordering::Relaxed);
            } else {
                self.writes.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
            Err(BlkError::Device(status))
        };
        self.free_slots.lock().push(s);
        self.slot_freed.set();
        r
    }

    /// Collects every completed request and wakes its thread (the completion handler; also
    /// safe to call from thread context). Returns how many completed.
    pub fn complete(&self) -> usize {
        let lat = self.lat.lock().clone();
        let mut total = 0;
        loop {
            let mut woken = [0u16; 32];
            let mut n = 0;
            {
                let mut q = self.queue.lock();
                while n < woken.len() {
                    let Some((head, _)) = q.vq.pop_used() else { break };
                    let s = q.head_slot[head as usize]
                        .take()
                        .expect("virtio-blk: completion of an unknown chain");
                    woken[n] = s;
                    n += 1;
                }
            }
            if n == 0 {
                return total;
            }
            let now = arch::X86_64::now_ns();
            for &s in &woken[..n] {
                let slot = &self.slots[s as usize];
                lat.done.record(now.saturating_sub(slot.submitted.load(Ordering::Relaxed)));
                slot.completed.store(true, Ordering::Release);
                slot.done.set();
            }
            total += n;
        }
    }

    /// The counters.
    pub fn stats(&self) -> BlkStats {
        let lat = self.lat.lock().clone();
        let (lat_p50_ns, lat_p99_ns) = percentiles(&lat.op);
        let (done_p50_ns, done_p99_ns) = percentiles(&lat.done);
        BlkStats {
            ops: self.ops.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            bad: self.bad.load(Ordering::Relaxed),
            lat_p50_ns,
            lat_p99_ns,
            done_p50_ns,
            done_p99_ns,
            max_outstanding: self.max_outstanding.load(Ordering::Relaxed),
            handler_runs: self.handler_runs.load(Ordering::Relaxed),
        }
    }
}
