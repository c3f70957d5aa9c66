//! # Kuvasto engine
//!
//! An append-only, checksummed segment store for a national medical imaging archive: objects
//! (DICOM instances, their metadata, documents, audit entries) go in as streams and come back
//! by key, byte for byte, for decades.
//!
//! - [`store::Store`] is the one facade: `put`/`put_stream`, `get` (with verified range reads),
//!   `delete`, `compact`.
//! - [`segment`] holds the on-disk format (`docs/format.md`), the group-commit writer, the
//!   reader, crash recovery and compaction.
//! - [`io`] is the storage seam: io_uring on real files, an in-memory disk that can crash, and
//!   deterministic fault injection.
//! - [`index`] maps keys to records (the locator) and holds the catalog: memory-mapped index
//!   runs of the patient/study/series/instance hierarchy with PS3.4 matching.
//! - [`dicom`] reads DICOM streams (fast path, dicom-parser path, character sets, frame maps,
//!   metadata records); [`instances`] stores instances through the store with their metadata
//!   and keeps the catalog in step with the segments.
//!
//! Invariants: the engine never touches the network; a put is acknowledged only after its
//! bytes and the record that makes them findable are durable (`fdatasync`); no byte is served
//! without passing its checksum; after a failed write or sync the store refuses writes.

pub mod dicom;
pub mod error;
pub mod histogram;
pub mod index;
pub mod instances;
pub mod io;
pub mod segment;
pub mod store;
pub mod verify;

pub use error::{Error, Result};
pub use segment::compaction::{CompactOptions, CompactProgress, CompactionReport};
pub use segment::format::Namespace;
pub use segment::reader::Object;
pub use segment::recovery::{CorruptionFound, RecoveryReport};
pub use store::{Committed, PendingPut, PutStream, Store, StoreConfig, StoreStats};
pub use verify::{RepairReport, VerifyProgress, VerifyReport};
