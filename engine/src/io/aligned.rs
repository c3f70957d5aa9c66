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
    /// Bytes mapped with `mmap` (huge-page backed), or 0 when allocated from the heap.
    mapped_bytes: usize,
}

/// Buffers at least this large are mapped directly and backed by transparent huge pages:
/// `O_DIRECT` pins the buffer's pages on every write, and a few 2 MiB pages are pinned (and
/// mapped by the hypervisor) far faster than thousands of 4 KiB ones.
const HUGE_BUFFER_BYTES_MIN: usize = 2 << 20;
const HUGE_PAGE_BYTES: usize = 2 << 20;

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
        if capacity >= HUGE_BUFFER_BYTES_MIN {
            if let Some(buf) = Self::map_huge(capacity) {
                return buf;
            }
        }
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
            mapped_bytes: 0,
        }
    }

    /// Maps `capacity` bytes 2 MiB-aligned and asks for huge pages before first touch.
    fn map_huge(capacity: usize) -> Option<Self> {
        let capacity = capacity.next_multiple_of(HUGE_PAGE_BYTES);
        let mapped_bytes = capacity + HUGE_PAGE_BYTES;
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return None;
        }
        let base = raw as usize;
        let aligned = base.next_multiple_of(HUGE_PAGE_BYTES);
        let head = aligned - base;
        let tail = mapped_bytes - head - capacity;
        // SAFETY: the ranges unmapped lie inside the mapping just made and outside the part
        // kept; madvise only advises on the kept part. Failures leave a usable mapping.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((aligned + capacity) as *mut libc::c_void, tail);
            }
            libc::madvise(aligned as *mut libc::c_void, capacity, libc::MADV_HUGEPAGE);
        }
        Some(AlignedBuf {
            ptr: NonNull::new(aligned as *mut u8)?,
            len: 0,
            capacity,
            mapped_bytes: capacity,
        })
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
        if self.mapped_bytes > 0 {
            // SAFETY: exactly the range map_huge kept mapped for this buffer.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.mapped_bytes) };
            return;
        }
        // SAFETY: allocated in with_capacity with exactly this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.capacity)) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({}/{} bytes)", self.len, self.capacity)
    }
}
