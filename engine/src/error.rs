//! The engine's one error type.

use std::io;
use std::sync::Arc;

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the engine can report. Variants carry the segment and offset wherever bytes on disk
/// are concerned, so an operator can find the exact place.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on a named file.
    #[error("i/o error during {op} on {file}: {source}")]
    Io {
        op: &'static str,
        file: String,
        #[source]
        source: io::Error,
    },
    /// The device is full; nothing was acknowledged by the failing call.
    #[error("no space left on device during {op} on {file}")]
    NoSpace { op: &'static str, file: String },
    /// A write or fsync failed earlier; the store accepts no more writes until it is reopened.
    /// fsync errors are never retried on the same pages (the kernel may have dropped them).
    #[error("store is read-only (poisoned) after an earlier failure: {cause}; reopen the store to recover")]
    Poisoned { cause: Arc<str> },
    /// Bytes on disk failed a check. Never served; always reported with their place.
    #[error("corrupt data in segment {segment_id} at offset {offset}: {reason}")]
    Corruption {
        segment_id: u64,
        offset: u64,
        reason: String,
    },
    /// An index file failed a check. Index files are derived data: the catalog rebuilds them
    /// from the segments.
    #[error("corrupt index file {file} at offset {offset}: {reason}")]
    IndexCorruption {
        file: String,
        offset: u64,
        reason: String,
    },
    /// A DICOM instance was refused (nothing of it was stored).
    #[error("instance refused: {0}")]
    Dicom(#[from] crate::instances::DicomError),
    /// The caller asked for something the engine does not allow.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An explicit limit was exceeded.
    #[error("limit exceeded: {what} would be {value}, the maximum is {max}")]
    Limit {
        what: &'static str,
        value: u64,
        max: u64,
    },
    /// The data directory is already opened by another process.
    #[error("data directory {0} is locked by another process")]
    Locked(String),
    /// The store was closed while the call was in flight.
    #[error("store is closed")]
    Closed,
}

impl Error {
    /// Wraps an `io::Error`, turning ENOSPC into [`Error::NoSpace`].
    pub fn io(op: &'static str, file: impl Into<String>, source: io::Error) -> Self {
        let file = file.into();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            Error::NoSpace { op, file }
        } else {
            Error::Io { op, file, source }
        }
    }

    pub(crate) fn corruption(segment_id: u64, offset: u64, reason: impl Into<String>) -> Self {
        Error::Corruption {
            segment_id,
            offset,
            reason: reason.into(),
        }
    }

    /// A short, cloneable rendering used to poison the store and answer queued callers.
    pub(crate) fn to_poison_cause(&self) -> Arc<str> {
        Arc::from(self.to_string())
    }
}
