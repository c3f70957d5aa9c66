//! Media errors under memory-mapped reads: an error for the one read, not a crash.
//!
//! Sealed segments and index runs are read through `mmap`. When the device cannot deliver a
//! page (EIO: a bad sector, a vanished disk, a file cut short under the mapping), the kernel
//! answers the page fault with `SIGBUS`, whose default action kills the whole server. This
//! module turns that into an error of the read that touched the page:
//!
//! - every mapping the engine reads is **registered** (its address range, in a fixed table of
//!   atomics the signal handler can read without locks);
//! - reads of mapped bytes run **guarded** ([`guarded`]): a per-thread depth counter;
//! - the `SIGBUS` handler, when the faulting thread is guarded and the address lies in a
//!   registered mapping, maps an anonymous zero page over the faulting page (`MAP_FIXED`) and
//!   notes the fault; the faulting instruction then reads zeros and the guarded read finishes,
//!   and [`guarded`] reports the fault, which the caller turns into an error. Any other
//!   `SIGBUS` gets the default action, as before.
//!
//! The zero page stays in that mapping: later reads of the page fail their checksums, so the
//! damage is reported again (and by `kuvasto verify`) and never served. Limits: bytes handed
//! out of a mapping without a copy (a WADO-RS response body) are read later, outside any
//! guard, by the network stack: a plain socket write gets `EFAULT` (an error for that
//! response), but code that reads them in user space (TLS encryption) still meets the default
//! action; and if a page goes bad after such bytes were verified and another guarded read then
//! zeroes it, that response carries zeros. `mmap` is not on POSIX's list of async-signal-safe
//! functions; on Linux it is a plain system call without locks in user space, which is what
//! the handler relies on.

use std::cell::Cell;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::Once;

/// Mappings that can be registered at once; more are read unguarded (as before this module)
/// and counted in [`unregistered_mappings`].
const SLOTS: usize = 1 << 14;
const PAGE_BYTES: usize = 4096;

/// `(start, end)` address pairs; a free slot has `start == 0`.
static RANGES: [AtomicUsize; 2 * SLOTS] = [const { AtomicUsize::new(0) }; 2 * SLOTS];
static UNREGISTERED: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: Once = Once::new();
static HANDLER_ACTIVE: AtomicBool = AtomicBool::new(false);

thread_local! {
    static GUARD_DEPTH: Cell<u32> = const { Cell::new(0) };
    /// The address of the last media fault of a guarded read on this thread (0: none).
    static FAULT_AT: Cell<usize> = const { Cell::new(0) };
}

/// A registered mapping; unregisters when dropped (before the mapping is unmapped).
#[derive(Debug)]
pub struct Registration {
    slot: Option<usize>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            RANGES[2 * slot + 1].store(0, Ordering::SeqCst);
            RANGES[2 * slot].store(0, Ordering::SeqCst);
        }
    }
}

/// Registers the mapping `bytes` so that a media fault in it during a guarded read becomes an
/// error. Installs the handler on first use.
pub fn register(bytes: &[u8]) -> Registration {
    install();
    let start = bytes.as_ptr() as usize;
    let end = start + bytes.len();
    if bytes.is_empty() {
        return Registration { slot: None };
    }
    for slot in 0..SLOTS {
        if RANGES[2 * slot]
            .compare_exchange(0, start, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            RANGES[2 * slot + 1].store(end, Ordering::SeqCst);
            return Registration { slot: Some(slot) };
        }
    }
    UNREGISTERED.fetch_add(1, Ordering::Relaxed);
    Registration { slot: None }
}

/// Mappings that found no free slot (their media faults keep the default action).
pub fn unregistered_mappings() -> usize {
    UNREGISTERED.load(Ordering::Relaxed)
}

/// Runs `read` guarded; `Err(address)` if a media fault happened in a registered mapping
/// meanwhile (then `read`'s own result is not to be trusted: it read zeros there).
pub fn guarded<R>(read: impl FnOnce() -> R) -> Result<R, usize> {
    match guarded_keeping(read) {
        (result, None) => Ok(result),
        (_, Some(address)) => Err(address),
    }
}

/// As [`guarded`], but keeps `read`'s result also after a fault (for reads that check
/// what they read and so report the zeroed page themselves), with the fault's address.
pub fn guarded_keeping<R>(read: impl FnOnce() -> R) -> (R, Option<usize>) {
    let outer_fault = FAULT_AT.with(|f| f.replace(0));
    GUARD_DEPTH.with(|d| d.set(d.get() + 1));
    // The compiler must not move reads of the mapping out of the guarded stretch (a load
    // through a reference may otherwise be hoisted or sunk past the depth's update).
    compiler_fence(Ordering::SeqCst);
    let result = read();
    compiler_fence(Ordering::SeqCst);
    GUARD_DEPTH.with(|d| d.set(d.get() - 1));
    let fault = FAULT_AT.with(|f| f.replace(outer_fault));
    if fault != 0 {
        // An enclosing guard learns of it too.
        if GUARD_DEPTH.with(Cell::get) > 0 {
            FAULT_AT.with(|f| f.set(fault));
        }
        return (result, Some(fault));
    }
    (result, None)
}

fn registered(addr: usize) -> bool {
    (0..SLOTS).any(|slot| {
        let start = RANGES[2 * slot].load(Ordering::SeqCst);
        start != 0 && addr >= start && addr < RANGES[2 * slot + 1].load(Ordering::SeqCst)
    })
}

extern "C" fn on_sigbus(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo_t for an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let guarded = GUARD_DEPTH.with(Cell::get) > 0;
    if guarded && registered(addr) {
        let page = addr & !(PAGE_BYTES - 1);
        // SAFETY: `page` lies inside a mapping the engine owns and registered (so it is not
        // unmapped while registered); replacing one of its pages with an anonymous read-only
        // zero page changes what later reads of that page return, nothing else.
        let mapped = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                PAGE_BYTES,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if mapped != libc::MAP_FAILED {
            FAULT_AT.with(|f| f.set(addr));
            return;
        }
    }
    // Not ours: the default action, as if this handler did not exist (the faulting access is
    // repeated on return and the signal delivered again).
    // SAFETY: signal(2) with SIG_DFL is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
    }
}

fn install() {
    INSTALLED.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid starting point; the handler has the
        // SA_SIGINFO signature.
        let installed = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut())
        };
        HANDLER_ACTIVE.store(installed == 0, Ordering::SeqCst);
    });
}

/// Whether the handler is installed (it is, once any mapping was registered).
pub fn handler_active() -> bool {
    HANDLER_ACTIVE.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A mapped file cut short under its mapping: reading past the new end faults. Guarded and
    /// registered, the read reports the fault and the process lives on.
    #[test]
    fn a_fault_in_a_registered_mapping_becomes_an_error() {
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(&vec![7u8; 4 * PAGE_BYTES]).expect("write");
        // SAFETY: the test owns the file; the cut below is the point of the test.
        let map = unsafe { memmap2::Mmap::map(&file) }.expect("map");
        let registration = register(&map);
        file.set_len(PAGE_BYTES as u64).expect("cut the file short");
        // Volatile reads: the test is about the access itself, which the optimizer must not
        // merge or move.
        // SAFETY: every offset read lies within the mapping's length.
        let at = |offset: usize| unsafe { std::ptr::read_volatile(map.as_ptr().add(offset)) };
        let first = guarded(|| at(10)).expect("the first page is still there");
        assert_eq!(first, 7);
        let fault = guarded(|| at(3 * PAGE_BYTES + 5)).expect_err("a media fault");
        assert_eq!(fault, map.as_ptr() as usize + 3 * PAGE_BYTES + 5);
        // The page reads as zeros from now on (its checksums fail), and no longer faults.
        assert_eq!(guarded(|| at(3 * PAGE_BYTES)), Ok(0));
        drop(registration);
    }
}
