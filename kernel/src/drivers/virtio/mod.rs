//! virtio over PCI (the "modern" virtio 1.0 interface) with split virtqueues, for the
//! `virtio-blk` ([`blk`]) and `virtio-net` ([`net`]) drivers.
//!
//! ## Why our own driver, and why this interface
//!
//! The `virtio-drivers` crate was considered first. Its PCI transport never programs the
//! per-queue MSI-X vector (`queue_msix_vector` stays `NO_VECTOR`), so with MSI-X on a device
//! would raise no interrupts at all, and it leaves us with the shared, level-triggered INTx
//! line; its block and net devices also take `&mut self` for both submission and completion,
//! so many threads sleeping on their own requests while a handler (maybe in interrupt context,
//! maybe on another CPU) completes them would all serialize behind one lock around the whole
//! device. What is left — a split ring and the capability walk — is short, so it is written
//! here: the memory the device shares is [`arch::dma::DmaRegion`] (volatile, bounds-checked,
//! the only `unsafe` is in `arch`), the rest is safe code.
//!
//! The *modern* interface (virtio 1.0 PCI capabilities in a memory BAR) is used rather than
//! the legacy one because the legacy registers sit in an I/O BAR, which qboot leaves
//! unassigned and `arch::pci` does not assign; memory BARs it assigns. QEMU's virtio-pci
//! devices on the `pc` machine are transitional: they offer both, and both device ids are
//! accepted (0x1000/0x1001 transitional, 0x1041/0x1042 modern-only).
//!
//! **Interrupts: MSI-X**, one table entry per queue, each on its own vector (0x41 blk; 0x42
//! net receive), edge-triggered and aimed at one CPU. Not INTx: the line is shared and
//! level-triggered (the source would stay masked while its handler runs in every model, and
//! the ISR register must be read to deassert it), and a queue could not be told from
//! another. With MSI-X a completion needs no register read to acknowledge, and the
//! framework's missed-interrupt replay (an edge source masked while its handler is queued is
//! re-raised at unmask) keeps completions from being lost.
//!
//! ## Protocol
//!
//! * Bring-up ([`Transport::begin`], [`Transport::setup_queue`], [`Transport::driver_ok`]):
//!   reset, ACKNOWLEDGE, DRIVER, feature negotiation (always `VIRTIO_F_VERSION_1`),
//!   FEATURES_OK (checked), queues (size, ring addresses, MSI-X entry — read back: the device
//!   refuses an entry it does not have — enable), DRIVER_OK. Called from thread context.
//! * A [`Virtqueue`] is a split ring in one [`DmaRegion`]: the descriptor table (16 bytes
//!   each: address, length, flags NEXT=1/WRITE=2, next), the available ring (flags, idx,
//!   ring[size]) the driver fills and the used ring (flags, idx, ring[size] of (id, len)) the
//!   device fills. The driver owns a descriptor from [`Virtqueue::push`] (which publishes the
//!   chain and bumps `avail.idx`) until [`Virtqueue::pop_used`] returns its chain head. The
//!   caller serializes all calls on one queue (each driver holds its queue in a spin mutex at
//!   `IPL_VM`, because handlers may run in interrupt context under the `direct` model).
//! * Notification: [`Virtqueue::notify`] writes the queue index to its doorbell (the notify
//!   capability's offset times the queue's `notify_off`); no event-index feature.

pub mod blk;
pub mod net;

use crate::drivers::DriverError;
use alloc::vec;
use alloc::vec::Vec;

use arch::dma::DmaRegion;
use arch::pci::{self, Mmio, PciFunction};

/// PCI vendor id of virtio devices.
pub const VENDOR: u16 = 0x1AF4;

/// Feature bit: the device is a virtio 1.0 device.
pub const F_VERSION_1: u64 = 1 << 32;

/// "No MSI-X vector" in the common configuration.
pub const NO_VECTOR: u16 = 0xFFFF;

const STATUS_ACKNOWLEDGE: u8 = 1;
const STATUS_DRIVER: u8 = 2;
const STATUS_DRIVER_OK: u8 = 4;
const STATUS_FEATURES_OK: u8 = 8;
const STATUS_FAILED: u8 = 128;

/// Common configuration registers.
const COMMON_DFSELECT: usize = 0x00;
const COMMON_DF: usize = 0x04;
const COMMON_GFSELECT: usize = 0x08;
const COMMON_GF: usize = 0x0C;
const COMMON_MSIX_CONFIG: usize = 0x10;
const COMMON_NUM_QUEUES: usize = 0x12;
const COMMON_STATUS: usize = 0x14;
const COMMON_Q_SELECT: usize = 0x16;
const COMMON_Q_SIZE: usize = 0x18;
const COMMON_Q_MSIX: usize = 0x1A;
const COMMON_Q_ENABLE: usize = 0x1C;
const COMMON_Q_NOTIFY_OFF: usize = 0x1E;
const COMMON_Q_DESC: usize = 0x20;
const COMMON_Q_AVAIL: usize = 0x28;
const COMMON_Q_USED: usize = 0x30;

/// Descriptor flags.
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

/// A virtio PCI function with its configuration structures mapped.
pub struct Transport {
    /// The PCI function.
    pub func: PciFunction,
    common: Mmio,
    notify: Mmio,
    notify_mult: u32,
    device: Mmio,
}

impl Transport {
    /// The first virtio function whose device id is one of `ids`, with the modern
    /// capabilities (common, notify, device configuration) mapped. `Err` names what is
    /// missing.
    pub fn probe(what: &'static str, ids: &'static [u16]) -> Result<Transport, DriverError> {
        let func = pci::scan()
            .into_iter()
            .find(|f| f.vendor == VENDOR && ids.contains(&f.device))
            .ok_or(DriverError::NotFound { device: what, vendor: VENDOR, ids })?;
        let (mut common, mut notify, mut device) = (None, None, None);
        let mut notify_mult = 0;
        for (id, cap) in func.capabilities() {
            if id != 0x09 {
                continue; // not vendor-specific
            }
            let cfg_type = func.bdf.read8(cap + 3);
            let bar = func.bdf.read8(cap + 4);
            let offset = func.bdf.read32(cap + 8) as usize;
            let length = func.bdf.read32(cap + 12) as usize;
            let window = || func.bar_mmio(bar).and_then(|m| m.sub(offset, length));
            match cfg_type {
                1 if common.is_none() => common = window(),
                2 if notify.is_none() => {
                    notify = window();
                    notify_mult = func.bdf.read32(cap + 16);
                }
                4 if device.is_none() => device = window(),
                _ => {}
            }
        }
        let bdf = func.bdf;
        let missing = |what_cap: &'static str| DriverError::Device { device: what, bdf, what: what_cap };
        Ok(Transport {
            common: common.ok_or_else(|| missing("no usable common configuration capability"))?,
            notify: notify.ok_or_else(|| missing("no usable notification capability"))?,
            device: device.ok_or_else(|| missing("no usable device configuration capability"))?,
            notify_mult,
            func,
        })
    }

    /// Resets the device (it forgets queues and features; DMA stops).
    pub fn reset(&self) {
        self.common.write8(COMMON_STATUS, 0);
        // The reset completes when the status reads back 0.
        for _ in 0..1_000_000 {
            if self.common.read8(COMMON_STATUS) == 0 {
                return;
            }
            core::hint::spin_loop();
        }
    }

    fn add_status(&self, bits: u8) {
        let s = self.common.read8(COMMON_STATUS);
        self.common.write8(COMMON_STATUS, s | bits);
    }

    /// Reset, acknowledge, negotiate: the device's features ∩ (`wanted` | VERSION_1).
    /// Returns the negotiated set.
    pub fn begin(&self, wanted: u64) -> Result<u64, &'static str> {
        self.reset();
        self.add_status(STATUS_ACKNOWLEDGE);
        self.add_status(STATUS_DRIVER);
        let mut offered = 0u64;
        for sel in 0..2u32 {
            self.common.write32(COMMON_DFSELECT, sel);
            offered |= (self.common.read32(COMMON_DF) as u64) << (32 * sel);
        }
        if offered & F_VERSION_1 == 0 {
            self.add_status(STATUS_FAILED);
            return Err("the device does not offer VIRTIO_F_VERSION_1");
        }
        let features = offered & (wanted | F_VERSION_1);
        for sel in 0..2u32 {
            self.common.write32(COMMON_GFSELECT, sel);
            self.common.write32(COMMON_GF, (features >> (32 * sel)) as u32);
        }
        self.add_status(STATUS_FEATURES_OK);
        if self.common.read8(COMMON_STATUS) & STATUS_FEATURES_OK == 0 {
            self.add_status(STATUS_FAILED);
            return Err("the device refused the features (FEATURES_OK did not stick)");
        }
        self.common.write16(COMMON_MSIX_CONFIG, NO_VECTOR);
        Ok(features)
    }

    /// Number of queues the device has.
    pub fn num_queues(&self) -> u16 {
        self.common.read16(COMMON_NUM_QUEUES)
    }

    /// Sets up queue `index` with at most `max_size` entries (a power of two) and MSI-X table
    /// entry `msix` ([`NO_VECTOR`]: no interrupt), and enables it.
    pub fn setup_queue(&self, index: u16, max_size: u16, msix: u16) -> Result<Virtqueue, &'static str> {
        if index >= self.num_queues() {
            return Err("no such queue");
        }
        self.common.write16(COMMON_Q_SELECT, index);
        let dev_max = self.common.read16(COMMON_Q_SIZE);
        if dev_max == 0 {
            return Err("queue not available");
        }
        // The largest power of two within both limits.
        let want = dev_max.min(max_size);
        let size = 1u16 << (15 - want.leading_zeros().min(15));
        self.common.write16(COMMON_Q_SIZE, size);
        let q = Virtqueue::new(index, size, self.queue_doorbell(index)?);
        self.common.write32(COMMON_Q_DESC, q.mem.phys() as u32);
        self.common.write32(COMMON_Q_DESC + 4, (q.mem.phys() >> 32) as u32);
        let avail = q.mem.phys() + q.avail_off as u64;
        self.common.write32(COMMON_Q_AVAIL, avail as u32);
        self.common.write32(COMMON_Q_AVAIL + 4, (avail >> 32) as u32);
        let used = q.mem.phys() + q.used_off as u64;
        self.common.write32(COMMON_Q_USED, used as u32);
        self.common.write32(COMMON_Q_USED + 4, (used >> 32) as u32);
        self.common.write16(COMMON_Q_MSIX, msix);
        if self.common.read16(COMMON_Q_MSIX) != msix {
            return Err("the device refused the queue's MSI-X entry");
        }
        self.common.write16(COMMON_Q_ENABLE, 1);
        Ok(q)
    }

    fn queue_doorbell(&self, index: u16) -> Result<Mmio, &'static str> {
        self.common.write16(COMMON_Q_SELECT, index);
        let off = self.common.read16(COMMON_Q_NOTIFY_OFF) as usize * self.notify_mult as usize;
        self.notify.sub(off, 2).ok_or("queue doorbell outside the notification window")
    }

    /// The device is ready (DRIVER_OK): it may start using the queues.
    pub fn driver_ok(&self) {
        self.add_status(STATUS_DRIVER_OK);
    }

    /// The device-specific configuration window.
    pub fn device_config(&self) -> &Mmio {
        &self.device
    }
}

/// A queue's doorbell apart from the queue ([`Virtqueue::doorbell`]): rung without the
/// queue's lock. Ringing it when the device has already seen the chains is harmless (the
/// device finds nothing new).
pub struct Doorbell {
    mmio: Mmio,
    index: u16,
}

impl Doorbell {
    /// Tells the device that buffers are available: the chains published before (under the
    /// queue's lock, whose release orders them before this) are visible to it.
    pub fn ring(&self) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        self.mmio.write16(0, self.index);
    }
}

/// One split virtqueue (see the module doc for the layout and ownership rules).
pub struct Virtqueue {
    index: u16,
    size: u16,
    mem: DmaRegion,
    avail_off: usize,
    used_off: usize,
    doorbell: Mmio,
    /// Free descriptors (a stack).
    free: Vec<u16>,
    /// Per descriptor: the next one in its chain (our copy; the device may not write it).
    next: Vec<u16>,
    /// Per descriptor: whether the chain continues.
    chained: Vec<bool>,
    /// Our copy of `avail.idx`.
    avail_idx: u16,
    /// The `used.idx` we have consumed up to.
    last_used: u16,
}

impl Virtqueue {
    fn new(index: u16, size: u16, doorbell: Mmio) -> Virtqueue {
        let n = size as usize;
        let avail_off = 16 * n;
        let used_off = (avail_off + 6 + 2 * n).next_multiple_of(4096);
        let len = used_off + 6 + 8 * n;
        Virtqueue {
            index,
            size,
            mem: DmaRegion::new(len, 4096),
            avail_off,
            used_off,
            doorbell,
            free: (0..size).rev().collect(),
            next: vec![0; n],
            chained: vec![false; n],
            avail_idx: 0,
            last_used: 0,
        }
    }

    /// The number of entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Makes the chain of buffers `bufs` — (physical address, length, the device writes it) —
    /// available to the device. Returns the chain's head, or `None` if there are not enough
    /// free descriptors. The device is not told: call [`Virtqueue::notify`].
    pub fn push(&mut self, bufs: &[(u64, u32, bool)]) -> Option<u16> {
        if bufs.is_empty() || bufs.len() > self.free.len() {
            return None;
        }
        let ids: Vec<u16> = (0..bufs.len()).map(|_| self.free.pop().expect("counted")).collect();
        for (k, &(addr, len, write)) in bufs.iter().enumerate() {
            let d = ids[k] as usize * 16;
            let last = k + 1 == bufs.len();
            let mut flags = if write { DESC_F_WRITE } else { 0 };
            if !last {
                flags |= DESC_F_NEXT;
                self.next[ids[k] as usize] = ids[k + 1];
            }
            self.chained[ids[k] as usize] = !last;
            self.mem.write64(d, addr);
            self.mem.write32(d + 8, len);
            self.mem.write16(d + 12, flags);
            self.mem.write16(d + 14, if last { 0 } else { ids[k + 1] });
        }
        let slot = self.avail_off + 4 + 2 * (self.avail_idx % self.size) as usize;
        self.mem.write16(slot, ids[0]);
        // The descriptors and the ring entry before the index that publishes them.
        self.mem.publish();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem.write16(self.avail_off + 2, self.avail_idx);
        Some(ids[0])
    }

    /// Tells the device that buffers are available.
    pub fn notify(&self) {
        self.mem.publish();
        self.doorbell.write16(0, self.index);
    }

    /// This queue's doorbell, to ring once the lock that guards the queue is dropped (Linux:
    /// `virtqueue_kick_prepare` under the lock, `virtqueue_notify` after it). The doorbell
    /// write traps to the device's emulation, where the hypervisor may run other vCPUs or
    /// deschedule this one; holding the queue's spin mutex across it makes every CPU that
    /// wants the queue spin until this vCPU comes back (seen as 100 ms heartbeat stalls of
    /// disk threads under torture on 8 vCPUs: docs/logs/torture-stalls-smp8-2026-12-06.txt).
    pub fn doorbell(&self) -> Doorbell {
        Doorbell { mmio: self.doorbell.clone(), index: self.index }
    }

    /// Whether the device has returned chains not yet popped.
    pub fn has_used(&self) -> bool {
        self.mem.read16(self.used_off + 2) != self.last_used
    }

    /// The next chain the device is done with: (head, bytes it wrote). Its descriptors are
    /// free again.
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        let idx = self.mem.read16(self.used_off + 2);
        if idx == self.last_used {
            return None;
        }
        self.mem.acquire();
        let e = self.used_off + 4 + 8 * (self.last_used % self.size) as usize;
        let head = self.mem.read32(e) as u16;
        let len = self.mem.read32(e + 4);
        self.last_used = self.last_used.wrapping_add(1);
        assert!(head < self.size, "virtqueue {}: used id {head} out of range", self.index);
        let mut d = head;
        loop {
            self.free.push(d);
            if !self.chained[d as usize] {
                break;
            }
            d = self.next[d as usize];
        }
        Some((head, len))
    }
}

/// Percentiles of a latency histogram, in nanoseconds.
pub fn percentiles(h: &intr::Histogram) -> (u64, u64) {
    if h.count() == 0 {
        return (0, 0);
    }
    (h.percentile(50), h.percentile(99))
}
