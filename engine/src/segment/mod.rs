pub mod format;
pub mod scan;
