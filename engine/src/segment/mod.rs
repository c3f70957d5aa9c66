//! Segments: append-only files of checksummed records (format, writer, reader, recovery,
//! compaction).

pub mod compaction;
pub mod format;
pub mod lifecycle;
pub mod reader;
pub mod recovery;
pub mod scan;
pub(crate) mod writer;
