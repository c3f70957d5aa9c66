//! DIMSE (PS3.7) over `dicom-ul` associations — issue 5, in progress.
//!
//! - [`command`]: command sets (group 0000, always Implicit VR Little Endian): encoding,
//!   bounded decoding, the command fields and status codes the services use;
//! - [`scp`]: the listener: associations over `dicom-ul` (sync, one thread each, bounded),
//!   calling AE titles checked, C-ECHO answered.
//!
//! `dicom-ul` facts the services build on (0.10.1, read from its sources): `receive()` returns
//! whole PDUs bounded by our max PDU length (`ReadError::PduTooLarge`; no abort is sent for us),
//! each `PDataValue` with its context id, command/data flag and last flag, so a C-STORE data set
//! can go to the engine PDV by PDV; `receive_pdata()` does not enforce the max PDU length, so it
//! is not used. Commands go out with `send(Pdu::PData)` (`PDataWriter` only writes data PDVs).
//! Release and abort are ours to answer. Rejected presentation contexts stay in the list.
//!
//! The association handling and the services (C-ECHO, C-STORE, Storage Commitment, C-FIND,
//! C-MOVE, C-GET) come next; they will call the same [`crate::archive`] rules as DICOMweb.

pub mod command;
pub mod scp;
