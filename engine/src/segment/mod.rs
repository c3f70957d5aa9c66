//! Segments: append-only files of checksummed records (format, writer, reader, recovery,
//! compaction, space use).

pub mod compaction;
pub mod format;
pub mod lifecycle;
pub mod reader;
pub mod recovery;
pub mod scan;
pub mod space;
pub mod store_file;
pub(crate) mod writer;
