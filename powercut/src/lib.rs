//! # Kuvasto power-cut harness
//!
//! `kill -9` keeps the page cache, so the crash test proves ordering, not durability. This
//! crate proves durability the way LazyFS does for Jepsen: a FUSE file system of its own that
//! keeps everything in memory, knows what was made durable, and on command cuts power —
//! forgetting, tearing or reordering whatever was not. The real engine
//! (`kuvasto_engine::Store::open`, io_uring, with `direct_io` on and off) runs on it.
//!
//! - [`model`]: the file system and its durability model, with no FUSE in it (unit-tested).
//! - [`fs`]: the FUSE adapter (`fuser`, pure-Rust mount: no libfuse, no `fusermount`; the
//!   mount system call needs root).
//! - [`server`]: mounting, and a cut: unmount, [`model::Model::cut`], mount again, so the
//!   kernel keeps no page or attribute from before the cut.
//! - [`control`]: the control channel, a Unix socket outside the mount (`cut SEED`, `stats`,
//!   `quit`). The `powercut` binary mounts and serves it.
//! - [`workload`]: what `powercut_child` runs on the engine, the ack log, and the check of
//!   a reopened store after a cut. `tests/powercut.rs` is the harness loop.
//!
//! ## The model
//!
//! Regular files: writes and size changes (truncate, `fallocate` mode 0) are pending until
//! an `fsync` or `fdatasync` of the file (FUSE_FSYNC, either kind), which makes all of the
//! file's completed writes and its size durable. Directories: creations, renames and
//! removals are pending until an `fsync` of that directory (FUSE_FSYNCDIR), which makes all
//! of its names durable. At a cut, each pending write independently survives whole,
//! vanishes, or survives torn (a prefix cut at a random byte, or a random subset of its
//! 512-byte sectors); each size change survives or not; each directory keeps all, none or a
//! prefix of its unsynced changes (a rename within a directory is atomic); what the durable
//! tree no longer reaches is gone. A cut replays from its seed, given the same pending state.
//!
//! ## Limits
//!
//! - **Range syncs are whole-file syncs.** FUSE cannot tell an `RWF_DSYNC` write (or
//!   `sync_file_range`) from a whole-file `fdatasync`: the kernel sends FUSE_FSYNC without a
//!   range, and this file system then makes every completed write of the file durable. That
//!   over-approximates durability in the engine's favour wherever it relies on `RWF_DSYNC`
//!   covering only its own write. The in-process `kuvasto_engine::io::sim::SimStorage` models
//!   `RWF_DSYNC` precisely (that write alone becomes durable); use both.
//! - Only writes that reach the file system can be lost: with the writeback cache off (as
//!   here) every `write(2)` reaches it before returning; a writable shared mapping's dirty
//!   pages reach it only when the kernel writes them back.
//! - A rename across directories is a removal in one and a creation in the other, each
//!   pending in its own directory; a cut may keep one and not the other (the engine renames
//!   only within a directory).
//! - Metadata other than names and sizes (modes, owners, times) is not modelled for
//!   durability; hard links, symbolic links, extended attributes and special files are not
//!   supported.
//! - Everything lives in memory: capacity is bounded by `ServerOptions::capacity_bytes`,
//!   and a file being written keeps an undo record per pending write (the bytes it replaced)
//!   until its next sync.
//! - The engine's threads and the kernel's scheduling are not deterministic, so a seed
//!   replays a cut of a given pending state, not the whole run.

pub mod control;
pub mod error;
pub mod fs;
pub mod model;
pub mod server;
pub mod workload;

pub use control::Client;
pub use error::{Error, Result};
pub use model::{CutPolicy, CutReport, Stats};
pub use server::{Server, ServerOptions};
