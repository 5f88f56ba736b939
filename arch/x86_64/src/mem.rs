//! The kernel heap: a first-fit allocator (`linked_list_allocator`) over the largest RAM
//! region the PVH memory map reports above the kernel image, behind an interrupt-safe spin
//! lock, so it may be called with interrupts disabled and from interrupt handlers.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;

use linked_list_allocator::Heap;

use crate::sync::IrqSpinLock;

/// The global allocator.
pub struct KernelHeap(IrqSpinLock<Heap>);

impl KernelHeap {
    /// An empty heap; [`init`] gives it memory.
    pub const fn new() -> Self {
        KernelHeap(IrqSpinLock::new(Heap::empty()))
    }
}

impl Default for KernelHeap {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: allocation is delegated to `Heap`, serialized by the lock; `dealloc` receives only
// pointers this allocator returned, with their layouts.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.0.lock().allocate_first_fit(layout).map_or(core::ptr::null_mut(), |p| p.as_ptr())
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(p) = NonNull::new(ptr) {
            // SAFETY: the caller passes a pointer from `alloc` with the same layout.
            unsafe { self.0.lock().deallocate(p, layout) }
        }
    }
}

#[global_allocator]
static HEAP: KernelHeap = KernelHeap::new();

/// Hands `[start, start + size)` to the heap. BSP, once, before any allocation.
///
/// # Safety
/// The range is RAM, identity-mapped, unused by anything else, for the kernel's lifetime.
pub unsafe fn init(start: usize, size: usize) {
    // SAFETY: per the contract.
    unsafe { HEAP.0.lock().init(start as *mut u8, size) };
}

/// Bytes in use and total.
pub fn usage() -> (usize, usize) {
    let h = HEAP.0.lock();
    (h.used(), h.size())
}
