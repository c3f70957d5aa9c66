//! DIMSE (PS3.7) over `dicom-ul` associations — issue 5, in progress.
//!
//! - [`command`]: command sets (group 0000, always Implicit VR Little Endian): encoding,
//!   bounded decoding, the command fields and status codes the services use.
//!
//! The association handling and the services (C-ECHO, C-STORE, Storage Commitment, C-FIND,
//! C-MOVE, C-GET) come next; they will call the same [`crate::archive`] rules as DICOMweb.

pub mod command;
