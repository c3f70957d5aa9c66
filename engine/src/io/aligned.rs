//! A heap buffer aligned for `O_DIRECT`.

use std::alloc::{self, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Alignment of every [`AlignedBuf`]: enough for `O_DIRECT` on every device we know of.
pub const BUFFER_ALIGNMENT_BYTES: usize = 4096;

/// A zero-initialised byte buffer of fixed capacity whose start is 4096-byte aligned. Its
/// length can change within the capacity; it never reallocates, which keeps memory per writer
/// bounded and the pointer stable while io_uring owns it.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    capacity: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively (like Vec<u8>); no shared interior state.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only give out `&[u8]`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `capacity` bytes (rounded up to the alignment), all zero, with length 0.
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity
            .max(BUFFER_ALIGNMENT_BYTES)
            .next_multiple_of(BUFFER_ALIGNMENT_BYTES);
        let layout = Self::layout(capacity);
        // SAFETY: layout has a non-zero size (at least BUFFER_ALIGNMENT_BYTES).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        AlignedBuf {
            ptr,
            len: 0,
            capacity,
        }
    }

    fn layout(capacity: usize) -> Layout {
        match Layout::from_size_align(capacity, BUFFER_ALIGNMENT_BYTES) {
            Ok(layout) => layout,
            Err(_) => panic!("buffer capacity {capacity} overflows a layout"),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sets the length. Bytes past the old length keep whatever they held before (zero in a
    /// new buffer; stale data in a reused one), so writers must fill every byte they expose.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.capacity,
            "length {len} over capacity {}",
            self.capacity
        );
        self.len = len;
    }

    /// Appends bytes; panics past the capacity (callers check their limits first).
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        let start = self.len;
        self.set_len(start + bytes.len());
        self[start..].copy_from_slice(bytes);
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for `capacity` initialised (zeroed at allocation) bytes, and
        // len <= capacity.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in with_capacity with exactly this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.capacity)) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({}/{} bytes)", self.len, self.capacity)
    }
}
