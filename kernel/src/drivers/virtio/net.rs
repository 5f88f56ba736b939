//! virtio-net (`-device virtio-net-pci`, PCI 1af4:1000 transitional or 1af4:1041): a receive
//! ring kept full, a receive handler with a **budget** that requeues itself with `hwi_sched`,
//! verification of every test frame, and echoes.
//!
//! ## Frame format (identical in the host tool's `src/traffic.rs`)
//!
//! All integers big-endian. Offsets are from the start of the Ethernet frame.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 6 | destination MAC: [`GUEST_MAC`] host→guest, [`HOST_MAC`](::parse::frame::HOST_MAC) guest→host |
//! | 6 | 6 | source MAC: the other one |
//! | 12 | 2 | EtherType [`ETHERTYPE`](::parse::frame::ETHERTYPE) = 0x88B5 (IEEE local experimental 1) |
//! | 14 | 4 | magic [`MAGIC`](::parse::frame::MAGIC) = `b"ITHR"` |
//! | 18 | 8 | sequence number (an end marker: the total number of data frames sent) |
//! | 26 | 2 | flags: [`FLAG_ECHO`](::parse::frame::FLAG_ECHO) (1) the guest echoes it back, [`FLAG_END`](::parse::frame::FLAG_END) (2) end marker, [`FLAG_REPLY`](::parse::frame::FLAG_REPLY) (4) sent by the guest |
//! | 28 | 2 | payload length `n` ([`payload_len`](::parse::frame::payload_len) of the sequence number; 8 in an end marker) |
//! | 30 | n | payload: byte `i` is [`payload_byte`](::parse::frame::payload_byte)`(seq, i)`; in an end marker the first sequence number of the run it ends (8 bytes), so a late copy of one run's end marker never ends the next run |
//!
//! A frame may be longer than `30 + n` (padding), never shorter. An echo is the received
//! frame with the MACs swapped and the flags `(flags & !ECHO) | REPLY`. The host sends the
//! end marker several times (UDP may drop one); the first one counts.
//!
//! ## Protocol
//!
//! * [`start`] (thread context, once) negotiates `VIRTIO_F_VERSION_1` and `VIRTIO_NET_F_MAC`
//!   (so every buffer starts with the 12-byte `virtio_net_hdr`), sets up receive queue 0
//!   with MSI-X entry 0 on [`VECTOR_RX`] (0x42, aimed at the last CPU) and transmit queue 1
//!   with **no** interrupt: transmitted buffers are reclaimed lazily when an echo needs one
//!   (so vector 0x43 is not used). It fills the receive ring (every buffer 2048 bytes, one
//!   device-writable descriptor) and establishes [`NAME_RX`] (`virtio-net0.rx`, `IPL_VM`,
//!   a handler without a filter, `MASK_WHILE_QUEUED`: one instance at a time) on MSI-X
//!   entry 0 as its line ([`crate::intr::MsixLine`]): masking the source masks that entry in
//!   the device, which then holds its message in the pending bit array.
//! * The receive handler ([`NetDev::receive`]) takes the receive lock (a spin mutex at
//!   `IPL_VM`; the transmit lock nests inside it, never the other way round), processes at
//!   most [`BUDGET`] frames — verify, count, echo if asked, give the buffer straight back to
//!   the device — rings the doorbell once, and if frames are still waiting calls
//!   `ctx.hwi_sched()`: the framework runs it again **after** everything queued behind it on
//!   that CPU (pool, pinned), after a yield (dedicated) or from a self-IPI (direct), so a
//!   flood cannot keep other handlers from running.
//! * Counting (`parse::frame::classify` says what a frame is): a frame not addressed to us
//!   from the host with our EtherType is *foreign*; one that carries our header but fails
//!   verification (short, no magic, wrong flags, length or payload) is *bad*. A verified data
//!   frame outside the phase's range `first..first + count` is *out of range* (a forged or
//!   replayed sequence number, or an earlier run's frame). An end marker naming another run's
//!   first frame is *stale* (the host sends each end marker several times, so late copies of
//!   the last run's reach the next one): counted apart, not judged. In range,
//!   a bitmap of the sequence numbers seen tells a *unique* frame from a *duplicate*; a
//!   unique one is *in order* if it is the expected one, else *reordered* (below it) or it
//!   skips some (above it). *Lost* is what the phase is still missing, never more than its
//!   count: after the end marker, the frames it announced (at most `count`) minus the unique
//!   ones; before, the gaps below the highest unique frame. *Received* counts every frame
//!   with our header (data frames, bad ones included), so received > unique means junk.
//! * Stalls: the longest time without any frame while the phase waits for its end marker
//!   (from [`NetDev::expect`] on; the gap still open counts), and how many unique frames had
//!   come when it began ([`NetStats::stall_ms`], [`NetStats::stall_at`]).
//! * A test phase: [`NetDev::expect`] resets the counters, the bitmap and the expected
//!   sequence number;
//!   [`NetDev::announce`] prints `@@ net-ready first=.. count=.. echo=.. rate=..`
//!   (docs/PROTOCOL.md), which the host answers with the frames and the end marker;
//!   [`NetDev::wait_end`] sleeps until the end marker arrives.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arch::dma::DmaRegion;
use intr::{HandlerCtx, IntrFlags, IntrHandle, Model, SourceSpec};
use ipl::Ipl;
use machine::Machine;
use sched::Event;

use super::{Transport, Virtqueue, NO_VECTOR};
use crate::drivers::DriverError;
use crate::intr::INTR;
use crate::locks::{KernelEnv, Mutex};
use crate::SCHED;

/// The receive interrupt source's name.
pub const NAME_RX: &str = "virtio-net0.rx";
/// The driver's name for the device (in errors).
const NAME: &str = "virtio-net0";
/// The CPU vector of receive-queue interrupts (MSI-X entry 0).
pub const VECTOR_RX: u8 = 0x42;
/// Frames the receive handler processes per run before it requeues itself.
pub const BUDGET: usize = 32;

/// The guest NIC's MAC address (the host sets it on QEMU's command line).
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x49, 0x54, 0x01];
// The test frames' format and their classification are portable (`parse::frame`, fuzzed on
// the host).
use ::parse::frame::{Frame, FLAG_ECHO, FLAG_REPLY};

const IDS: [u16; 2] = [0x1000, 0x1041];
const F_MAC: u64 = 1 << 5;
/// `struct virtio_net_hdr` with `num_buffers` (always there with VERSION_1).
const NET_HDR: usize = 12;
const BUF: usize = 2048;
const RX_QUEUE: u16 = 256;
const TX_QUEUE: u16 = 256;
/// The largest frame we accept (Ethernet without FCS).
const MAX_FRAME: usize = 1514;

/// Counters of the current phase (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames with our header (data frames, verified or not, and bad ones).
    pub received: u64,
    /// Verified data frames in the phase's range, each sequence number counted once.
    pub unique: u64,
    /// Verified data frames in range whose sequence number had come already.
    pub duplicate: u64,
    /// Verified data frames outside the phase's range.
    pub out_of_range: u64,
    /// End markers of another run (late copies).
    pub stale_end: u64,
    /// Unique frames with the expected sequence number.
    pub in_order: u64,
    /// Frames of the phase still missing (see the module doc; never above its count).
    pub lost: u64,
    /// Unique frames below the expected sequence number (they came after a later one).
    pub reordered: u64,
    /// Frames with our header that failed verification.
    pub bad: u64,
    /// Frames not ours (another EtherType, destination or source).
    pub foreign: u64,
    /// The longest time in milliseconds without a frame while waiting for the end marker.
    pub stall_ms: u64,
    /// Unique frames received when that longest gap began.
    pub stall_at: u64,
    /// Echoes sent.
    pub echoed: u64,
    /// Echoes not sent: no transmit buffer free.
    pub echo_dropped: u64,
    /// Whether an end marker arrived.
    pub end_seen: bool,
    /// The total it carried.
    pub end_total: u64,
    /// When the last frame came (or the phase started), guest ns.
    pub last_ns: u64,
    /// Receive handler runs.
    pub runs: u64,
    /// Runs that used their whole budget and requeued themselves (`hwi_sched`).
    pub yields: u64,
}

struct Rx {
    vq: Virtqueue,
    /// Chain head → receive buffer.
    head_buf: Vec<u16>,
    expected: u64,
    /// The first sequence number of this phase (an end marker must name it).
    first: u64,
    /// Data frames this phase asked for.
    count: u64,
    /// One bit per sequence number of the phase: seen.
    seen: Vec<u64>,
    /// The highest offset (sequence number − `first`) seen plus one.
    high: u64,
    /// When the last frame (or the phase's start) was, ns.
    last_ns: u64,
}

struct Tx {
    vq: Virtqueue,
    head_buf: Vec<u16>,
    free: Vec<u16>,
}

/// The NIC.
pub struct NetDev {
    t: Transport,
    mac: [u8; 6],
    rx_mem: DmaRegion,
    tx_mem: DmaRegion,
    rx: Mutex<Rx>,
    tx: Mutex<Tx>,
    handle: Mutex<Option<IntrHandle<KernelEnv>>>,
    /// MSI-X table entry 0 (the receive queue's), the receive source's hardware mask.
    line: &'static crate::intr::MsixLine,
    end_event: Event<crate::locks::KernelEnv>,
    received: AtomicU64,
    unique: AtomicU64,
    duplicate: AtomicU64,
    out_of_range: AtomicU64,
    stale_end: AtomicU64,
    in_order: AtomicU64,
    reordered: AtomicU64,
    bad: AtomicU64,
    foreign: AtomicU64,
    /// `high` of [`Rx`], readable without the receive lock.
    high: AtomicU64,
    count: AtomicU64,
    last_ns: AtomicU64,
    stall_ns: AtomicU64,
    stall_at: AtomicU64,
    echoed: AtomicU64,
    echo_dropped: AtomicU64,
    end_seen: AtomicBool,
    end_total: AtomicU64,
    runs: AtomicU64,
    yields: AtomicU64,
}

static DEVICE: Mutex<Option<&'static NetDev>> = Mutex::new_adaptive("virtio-net.device", None);

/// The NIC, if [`start`] brought it up.
pub fn device() -> Option<&'static NetDev> {
    *DEVICE.lock()
}

/// The NIC's counters (zero if it was not started).
pub fn stats() -> NetStats {
    device().map(|d| d.stats()).unwrap_or_default()
}

/// Brings the NIC up (once) with its receive source under `model` (`None`: the default).
/// `Err` names the device and what is wrong (e.g. it is absent).
pub fn start(model: Option<Model>) -> Result<&'static NetDev, DriverError> {
    let mut g = DEVICE.lock();
    if let Some(d) = *g {
        return Ok(d);
    }
    let t = Transport::probe(NAME, &IDS)?;
    let bdf = t.func.bdf;
    let err = |what: &'static str| DriverError::Device { device: NAME, bdf, what };
    let cpu = arch::cpu::ncpus() - 1;
    t.func.enable_msix(&[arch::cpu::lapic_id_of(cpu)], &[VECTOR_RX]).map_err(err)?;
    let line = crate::intr::MsixLine::new(&t.func, 0).map_err(err)?;
    let features = t.begin(F_MAC).map_err(err)?;
    let rxq = t.setup_queue(0, RX_QUEUE, 0).map_err(err)?;
    let txq = t.setup_queue(1, TX_QUEUE, NO_VECTOR).map_err(err)?;
    let mut mac = [0u8; 6];
    if features & F_MAC != 0 {
        for (i, m) in mac.iter_mut().enumerate() {
            *m = t.device_config().read8(i);
        }
    }
    let (nrx, ntx) = (rxq.size() as usize, txq.size() as usize);
    let dev: &'static NetDev = Box::leak(Box::new(NetDev {
        mac,
        rx_mem: DmaRegion::new(nrx * BUF, 4096),
        tx_mem: DmaRegion::new(ntx * BUF, 4096),
        rx: Mutex::new_spin(
            "virtio-net0.rx",
            Ipl::Vm,
            Rx {
                vq: rxq,
                head_buf: alloc::vec![0; nrx],
                expected: 0,
                first: 0,
                count: 0,
                seen: Vec::new(),
                high: 0,
                last_ns: 0,
            },
        ),
        tx: Mutex::new_spin(
            "virtio-net0.tx",
            Ipl::Vm,
            Tx { vq: txq, head_buf: alloc::vec![0; ntx], free: (0..ntx as u16).rev().collect() },
        ),
        handle: Mutex::new_adaptive("virtio-net0.handle", None),
        line,
        end_event: Event::new(&SCHED),
        received: AtomicU64::new(0),
        unique: AtomicU64::new(0),
        duplicate: AtomicU64::new(0),
        out_of_range: AtomicU64::new(0),
        stale_end: AtomicU64::new(0),
        in_order: AtomicU64::new(0),
        reordered: AtomicU64::new(0),
        bad: AtomicU64::new(0),
        foreign: AtomicU64::new(0),
        high: AtomicU64::new(0),
        count: AtomicU64::new(0),
        last_ns: AtomicU64::new(0),
        stall_ns: AtomicU64::new(0),
        stall_at: AtomicU64::new(0),
        echoed: AtomicU64::new(0),
        echo_dropped: AtomicU64::new(0),
        end_seen: AtomicBool::new(false),
        end_total: AtomicU64::new(0),
        runs: AtomicU64::new(0),
        yields: AtomicU64::new(0),
        t,
    }));
    {
        let mut rx = dev.rx.lock();
        for b in 0..nrx as u16 {
            dev.post_rx(&mut rx, b);
        }
    }
    dev.establish(model)?;
    dev.t.driver_ok();
    dev.rx.lock().vq.notify();
    arch::kprintln!(
        "virtio-net0: {} at {} mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} rx={} tx={} msix vector={VECTOR_RX:#x} \
         cpu={cpu} budget={BUDGET} model={}",
        if dev.t.func.device == IDS[0] { "transitional" } else { "modern" },
        dev.t.func.bdf,
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5],
        nrx,
        ntx,
        dev.model()
    );
    *g = Some(dev);
    Ok(dev)
}

impl NetDev {
    fn establish(&'static self, model: Option<Model>) -> Result<(), DriverError> {
        let h = INTR
            .establish_line(
                SourceSpec {
                    name: NAME_RX.into(),
                    vector: VECTOR_RX,
                    ipl: Ipl::Vm,
                    flags: IntrFlags::MPSAFE | IntrFlags::EXCLUSIVE | IntrFlags::MASK_WHILE_QUEUED,
                    model,
                    thread_priority: None,
                },
                self.line,
                None,
                Some(Box::new(move |ctx: &HandlerCtx<'_>| {
                    if self.receive(BUDGET) {
                        self.yields.fetch_add(1, Ordering::Relaxed);
                        ctx.hwi_sched();
                    }
                })),
            )
            .map_err(|error| DriverError::Establish { device: NAME, error })?;
        *self.handle.lock() = Some(h);
        Ok(())
    }

    /// Re-establishes the receive source under `model` (`None`: the default); the device's
    /// messages are held (MSI-X function mask) meanwhile, and frames that arrived in between
    /// are processed at the end.
    pub fn set_model(&'static self, model: Option<Model>) -> Result<(), DriverError> {
        self.t.func.set_msix_function_mask(true);
        drop(self.handle.lock().take());
        let r = self.establish(model);
        self.t.func.set_msix_function_mask(false);
        while self.receive(BUDGET) {}
        r
    }

    /// The model the receive source runs under.
    pub fn model(&self) -> Model {
        self.handle.lock().as_ref().map(|h| h.source().model()).unwrap_or(Model::Direct)
    }

    /// The receive source's interrupt count.
    pub fn source_handled(&self) -> u64 {
        self.handle.lock().as_ref().map(|h| h.source().stats.total()).unwrap_or(0)
    }

    /// The MAC address the device reports.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn post_rx(&self, rx: &mut Rx, b: u16) {
        let addr = self.rx_mem.phys() + (b as usize * BUF) as u64;
        let head = rx.vq.push(&[(addr, BUF as u32, true)]).expect("virtio-net: receive ring overfull");
        rx.head_buf[head as usize] = b;
    }

    /// Starts a phase of `count` data frames from `first`: the counters and the bitmap of
    /// sequence numbers seen are cleared, and the next data frame expected is `first`.
    pub fn expect(&self, first: u64, count: u64) {
        let now = arch::X86_64::now_ns();
        let mut rx = self.rx.lock();
        rx.expected = first;
        rx.first = first;
        rx.count = count;
        rx.seen.clear();
        rx.seen.resize(count.div_ceil(64) as usize, 0);
        rx.high = 0;
        rx.last_ns = now;
        self.last_ns.store(now, Ordering::Relaxed);
        self.count.store(count, Ordering::Relaxed);
        for c in [
            &self.received,
            &self.unique,
            &self.duplicate,
            &self.out_of_range,
            &self.stale_end,
            &self.in_order,
            &self.reordered,
            &self.bad,
            &self.foreign,
            &self.high,
            &self.stall_ns,
            &self.stall_at,
            &self.echoed,
            &self.echo_dropped,
            &self.end_total,
            &self.runs,
            &self.yields,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        self.end_seen.store(false, Ordering::Release);
    }

    /// Asks the host for `count` data frames from `first` (`docs/PROTOCOL.md`, `@@ net-ready`).
    pub fn announce(&self, first: u64, count: u64, echo: bool, rate: u32) {
        arch::kprintln!("@@ net-ready first={first} count={count} echo={} rate={rate}", echo as u8);
    }

    /// Sleeps until the end marker of this phase arrived, at most `ms` milliseconds.
    pub fn wait_end(&self, ms: u64) -> bool {
        let deadline = arch::X86_64::now_ns() + ms * 1_000_000;
        while !self.end_seen.load(Ordering::Acquire) {
            if !self.end_event.wait_deadline(deadline) {
                return self.end_seen.load(Ordering::Acquire);
            }
        }
        true
    }

    /// The receive handler's work: at most `budget` frames. Returns whether frames are still
    /// waiting (the caller requeues itself).
    pub fn receive(&self, budget: usize) -> bool {
        self.runs.fetch_add(1, Ordering::Relaxed);
        let mut frame = [0u8; MAX_FRAME];
        let mut rx = self.rx.lock();
        let mut done = 0;
        while done < budget {
            let Some((head, len)) = rx.vq.pop_used() else { break };
            let b = rx.head_buf[head as usize];
            let n = (len as usize).saturating_sub(NET_HDR).min(MAX_FRAME);
            self.note_arrival(&mut rx);
            if len as usize >= NET_HDR {
                self.rx_mem.read_bytes(b as usize * BUF + NET_HDR, &mut frame[..n]);
                self.frame(&mut rx, &mut frame[..n]);
            } else {
                // Shorter than the virtio-net header: not a frame at all.
                self.foreign.fetch_add(1, Ordering::Relaxed);
            }
            self.post_rx(&mut rx, b);
            done += 1;
        }
        let doorbell = (done > 0).then(|| rx.vq.doorbell());
        let more = rx.vq.has_used();
        drop(rx);
        // The refilled buffers are announced after the receive lock is dropped
        // (`Virtqueue::doorbell`).
        if let Some(d) = doorbell {
            d.ring();
        }
        more
    }

    /// A frame arrived (the receive lock held): the gap since the last one, while the phase
    /// waits for its end marker, may be the longest stall.
    fn note_arrival(&self, rx: &mut Rx) {
        let now = arch::X86_64::now_ns();
        if !self.end_seen.load(Ordering::Acquire) {
            let gap = now.saturating_sub(rx.last_ns);
            if gap > self.stall_ns.load(Ordering::Relaxed) {
                self.stall_ns.store(gap, Ordering::Relaxed);
                self.stall_at.store(self.unique.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
        rx.last_ns = now;
        self.last_ns.store(now, Ordering::Relaxed);
    }

    /// One received frame (the receive lock held), classified by `parse::frame::classify`.
    fn frame(&self, rx: &mut Rx, f: &mut [u8]) {
        let (seq, flags, len) = match ::parse::frame::classify(f, self.mac) {
            Frame::Other => {
                self.foreign.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Frame::Bad => {
                self.received.fetch_add(1, Ordering::Relaxed);
                self.bad.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Frame::End { total, first } => {
                if first != Some(rx.first) {
                    // A late copy of an earlier run's end marker.
                    self.stale_end.fetch_add(1, Ordering::Relaxed);
                } else if !self.end_seen.load(Ordering::Acquire) {
                    self.end_total.store(total, Ordering::Relaxed);
                    self.end_seen.store(true, Ordering::Release);
                    self.end_event.set();
                }
                return;
            }
            Frame::Data { seq, flags, ok, len } => {
                self.received.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    self.bad.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                (seq, flags, len)
            }
        };
        // The offset in the phase, without wrap-around: a sequence number below `first` or at
        // or beyond `first + count` (up to 2^64 − 1) is out of range.
        let off = match seq.checked_sub(rx.first) {
            Some(off) if off < rx.count => off,
            _ => {
                self.out_of_range.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let (word, bit) = ((off / 64) as usize, 1u64 << (off % 64));
        if rx.seen[word] & bit != 0 {
            self.duplicate.fetch_add(1, Ordering::Relaxed);
            return;
        }
        rx.seen[word] |= bit;
        self.unique.fetch_add(1, Ordering::Relaxed);
        if off + 1 > rx.high {
            rx.high = off + 1;
            self.high.store(rx.high, Ordering::Relaxed);
        }
        match seq.cmp(&rx.expected) {
            core::cmp::Ordering::Equal => {
                self.in_order.fetch_add(1, Ordering::Relaxed);
                rx.expected = seq + 1; // in range: below first + count, no overflow
            }
            core::cmp::Ordering::Greater => rx.expected = seq + 1,
            core::cmp::Ordering::Less => {
                self.reordered.fetch_add(1, Ordering::Relaxed);
            }
        }
        if flags & FLAG_ECHO != 0 {
            let (dst, src) = ([f[0], f[1], f[2], f[3], f[4], f[5]], [f[6], f[7], f[8], f[9], f[10], f[11]]);
            f[0..6].copy_from_slice(&src);
            f[6..12].copy_from_slice(&dst);
            f[26..28].copy_from_slice(&((flags & !FLAG_ECHO) | FLAG_REPLY).to_be_bytes());
            if self.transmit(&f[..len]) {
                self.echoed.fetch_add(1, Ordering::Relaxed);
            } else {
                self.echo_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Sends one frame (reclaiming transmitted buffers first). Returns `false` if no
    /// transmit buffer is free.
    pub fn transmit(&self, frame: &[u8]) -> bool {
        assert!(frame.len() <= BUF - NET_HDR, "virtio-net: frame of {} bytes", frame.len());
        let mut tx = self.tx.lock();
        while let Some((head, _)) = tx.vq.pop_used() {
            let b = tx.head_buf[head as usize];
            tx.free.push(b);
        }
        let Some(b) = tx.free.pop() else { return false };
        let off = b as usize * BUF;
        self.tx_mem.write_bytes(off, &[0u8; NET_HDR]);
        self.tx_mem.write_bytes(off + NET_HDR, frame);
        let addr = self.tx_mem.phys() + off as u64;
        let Some(head) = tx.vq.push(&[(addr, (NET_HDR + frame.len()) as u32, false)]) else {
            tx.free.push(b);
            return false;
        };
        tx.head_buf[head as usize] = b;
        let doorbell = tx.vq.doorbell();
        drop(tx);
        doorbell.ring(); // after the transmit lock (`Virtqueue::doorbell`)
        true
    }

    /// Waits until the device has taken every frame handed to it (all transmit buffers are
    /// back), at most `ms` milliseconds; whether it did. Before the guest exits: QEMU sends a
    /// queued frame only when its device model gets to it, which may be after the exit.
    pub fn tx_flush(&self, ms: u64) -> bool {
        let deadline = arch::X86_64::now_ns() + ms * 1_000_000;
        loop {
            {
                let mut tx = self.tx.lock();
                while let Some((head, _)) = tx.vq.pop_used() {
                    let b = tx.head_buf[head as usize];
                    tx.free.push(b);
                }
                if tx.free.len() == tx.head_buf.len() {
                    return true;
                }
            }
            if arch::X86_64::now_ns() >= deadline {
                return false;
            }
            crate::SCHED.sleep_ns(1_000_000);
        }
    }

    /// The counters of the current phase.
    pub fn stats(&self) -> NetStats {
        let end_seen = self.end_seen.load(Ordering::Acquire);
        let unique = self.unique.load(Ordering::Relaxed);
        let count = self.count.load(Ordering::Relaxed);
        let lost = if end_seen {
            // What the end marker announced, at most what the phase asked for.
            self.end_total.load(Ordering::Relaxed).min(count).saturating_sub(unique)
        } else {
            self.high.load(Ordering::Relaxed).saturating_sub(unique)
        };
        let (mut stall_ns, mut stall_at) =
            (self.stall_ns.load(Ordering::Relaxed), self.stall_at.load(Ordering::Relaxed));
        if !end_seen {
            // The gap still open.
            let open = arch::X86_64::now_ns().saturating_sub(self.last_ns.load(Ordering::Relaxed));
            if open > stall_ns {
                (stall_ns, stall_at) = (open, unique);
            }
        }
        NetStats {
            last_ns: self.last_ns.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            unique,
            duplicate: self.duplicate.load(Ordering::Relaxed),
            out_of_range: self.out_of_range.load(Ordering::Relaxed),
            stale_end: self.stale_end.load(Ordering::Relaxed),
            in_order: self.in_order.load(Ordering::Relaxed),
            lost,
            reordered: self.reordered.load(Ordering::Relaxed),
            bad: self.bad.load(Ordering::Relaxed),
            foreign: self.foreign.load(Ordering::Relaxed),
            stall_ms: stall_ns / 1_000_000,
            stall_at,
            echoed: self.echoed.load(Ordering::Relaxed),
            echo_dropped: self.echo_dropped.load(Ordering::Relaxed),
            end_seen: self.end_seen.load(Ordering::Acquire),
            end_total: self.end_total.load(Ordering::Relaxed),
            runs: self.runs.load(Ordering::Relaxed),
            yields: self.yields.load(Ordering::Relaxed),
        }
    }
}
