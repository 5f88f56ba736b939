//! Memory a device reads and writes by DMA: [`DmaRegion`], a zeroed, aligned block of the
//! kernel heap whose physical address is its virtual one (RAM is identity-mapped).
//!
//! ## Protocol
//!
//! * A driver allocates a region ([`DmaRegion::new`]), gives the device its physical address
//!   ([`DmaRegion::phys`]) and accesses it only through this type's **volatile**,
//!   bounds-checked accessors: the device writes the memory behind the compiler's back, so no
//!   Rust reference into it ever exists.
//! * Ordering: x86 keeps stores in order and a device sees them in program order (DMA is
//!   cache-coherent here), but the compiler must not move plain accesses across the point
//!   where ownership passes to or from the device: call [`DmaRegion::publish`] before the
//!   store that hands buffers to the device (a ring index, a doorbell) and
//!   [`DmaRegion::acquire`] after reading the index that hands them back.
//! * Lifetime: the driver keeps a region alive while the device may access it (drivers hold
//!   their rings and buffers for the device's whole life, and reset the device before
//!   dropping them). Dropping a region the device still writes would let it write freed heap
//!   memory: the one rule this type cannot check.

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{fence, Ordering};

/// A zeroed, aligned block of identity-mapped memory shared with a device.
pub struct DmaRegion {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the region is plain memory owned by this value; every access is a volatile access
// through `&self` of an in-bounds address (no references handed out), so sharing or moving it
// between CPUs cannot create aliasing references. Races between CPUs on the same bytes are the
// driver's to order (its locks), like with a device.
unsafe impl Send for DmaRegion {}
// SAFETY: as above.
unsafe impl Sync for DmaRegion {}

impl DmaRegion {
    /// `len` zeroed bytes aligned to `align` (a power of two, at least 8). Panics if the heap
    /// is exhausted or the arguments are invalid.
    pub fn new(len: usize, align: usize) -> DmaRegion {
        let layout =
            Layout::from_size_align(len.max(8), align.max(8)).expect("DMA region: bad size or alignment");
        // SAFETY: `layout` has a non-zero size.
        let p = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(p).unwrap_or_else(|| panic!("DMA region: out of memory ({len} bytes)"));
        DmaRegion { ptr, layout }
    }

    /// The device-visible (physical) address: RAM is identity-mapped, so it is the address.
    pub fn phys(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Whether the region is empty (never: the minimum is 8 bytes).
    pub fn is_empty(&self) -> bool {
        false
    }

    fn at(&self, offset: usize, size: usize) -> *mut u8 {
        assert!(
            offset.is_multiple_of(size) && offset.checked_add(size).is_some_and(|e| e <= self.len()),
            "DMA access of {size} bytes at {offset:#x} outside the {:#x}-byte region (or unaligned)",
            self.len()
        );
        self.ptr.as_ptr().wrapping_add(offset)
    }

    /// Volatile read of the byte at `offset`.
    pub fn read8(&self, offset: usize) -> u8 {
        let p = self.at(offset, 1);
        // SAFETY: `at` checked that `p` lies in the live allocation; volatile, no reference.
        unsafe { core::ptr::read_volatile(p) }
    }

    /// Volatile read of the little-endian `u16` at `offset` (aligned).
    pub fn read16(&self, offset: usize) -> u16 {
        let p = self.at(offset, 2) as *const u16;
        // SAFETY: in bounds and aligned (`at`); volatile, no reference.
        unsafe { core::ptr::read_volatile(p) }
    }

    /// Volatile read of the little-endian `u32` at `offset` (aligned).
    pub fn read32(&self, offset: usize) -> u32 {
        let p = self.at(offset, 4) as *const u32;
        // SAFETY: in bounds and aligned (`at`); volatile, no reference.
        unsafe { core::ptr::read_volatile(p) }
    }

    /// Volatile read of the little-endian `u64` at `offset` (aligned).
    pub fn read64(&self, offset: usize) -> u64 {
        let p = self.at(offset, 8) as *const u64;
        // SAFETY: in bounds and aligned (`at`); volatile, no reference.
        unsafe { core::ptr::read_volatile(p) }
    }

    /// Volatile write of the byte at `offset`.
    pub fn write8(&self, offset: usize, v: u8) {
        let p = self.at(offset, 1);
        // SAFETY: in bounds (`at`); volatile, no reference; the memory is ours, not Rust's.
        unsafe { core::ptr::write_volatile(p, v) }
    }

    /// Volatile write of the `u16` at `offset` (aligned).
    pub fn write16(&self, offset: usize, v: u16) {
        let p = self.at(offset, 2) as *mut u16;
        // SAFETY: in bounds and aligned (`at`); volatile, no reference.
        unsafe { core::ptr::write_volatile(p, v) }
    }

    /// Volatile write of the `u32` at `offset` (aligned).
    pub fn write32(&self, offset: usize, v: u32) {
        let p = self.at(offset, 4) as *mut u32;
        // SAFETY: in bounds and aligned (`at`); volatile, no reference.
        unsafe { core::ptr::write_volatile(p, v) }
    }

    /// Volatile write of the `u64` at `offset` (aligned).
    pub fn write64(&self, offset: usize, v: u64) {
        let p = self.at(offset, 8) as *mut u64;
        // SAFETY: in bounds and aligned (`at`); volatile, no reference.
        unsafe { core::ptr::write_volatile(p, v) }
    }

    /// Copies `out.len()` bytes from `offset` into `out` (volatile reads).
    pub fn read_bytes(&self, offset: usize, out: &mut [u8]) {
        if out.is_empty() {
            return;
        }
        let base = self.at(offset, 1);
        self.at(offset + out.len() - 1, 1);
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: `offset .. offset + out.len()` was checked to lie in the region above.
            *b = unsafe { core::ptr::read_volatile(base.add(i)) };
        }
    }

    /// Copies `data` to `offset` (volatile writes).
    pub fn write_bytes(&self, offset: usize, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let base = self.at(offset, 1);
        self.at(offset + data.len() - 1, 1);
        for (i, &b) in data.iter().enumerate() {
            // SAFETY: `offset .. offset + data.len()` was checked to lie in the region above.
            unsafe { core::ptr::write_volatile(base.add(i), b) };
        }
    }

    /// Orders every access before it before every store after it: call before handing memory
    /// to the device.
    pub fn publish(&self) {
        fence(Ordering::SeqCst);
    }

    /// Orders the load that saw the device's hand-back before the accesses after it.
    pub fn acquire(&self) {
        fence(Ordering::SeqCst);
    }
}

impl Drop for DmaRegion {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once (see the lifetime rule in
        // the module doc for the device's side).
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}
