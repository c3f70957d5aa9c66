//! DIMSE (PS3.7) over `dicom-ul` associations: the services a modality, PACS or ECG system
//! uses, adapted onto the same [`crate::archive`] rules as DICOMweb.
//!
//! - [`scp`]: the listener (bounded associations, calling AE titles, ARTIM and idle timeouts,
//!   role negotiation, stop with a grace period);
//! - [`session`]: one association: commands read one at a time and dispatched;
//! - [`link`]: DIMSE messages over either side of an association (PDV queue, fragmenting to
//!   the peer's maximum PDU, C-CANCEL detection);
//! - services: [`store`] (C-STORE, streamed into the engine), [`find`] (C-FIND),
//!   [`retrieve`] (C-GET, C-MOVE), [`commitment`] (Storage Commitment Push Model); C-ECHO is
//!   answered in [`session`].
//!
//! The codec (command sets, identifiers) is the `kuvasto-dimse` crate.
//!
//! `dicom-ul` facts the services build on (0.10.1, read from its sources): `receive()` returns
//! whole PDUs bounded by our max PDU length (`ReadError::PduTooLarge`; no abort is sent for us),
//! each `PDataValue` with its context id, command/data flag and last flag, so a C-STORE data set
//! goes to the engine PDV by PDV; `receive_pdata()` does not enforce the max PDU length, so it
//! is not used. Commands go out with `send(Pdu::PData)` (`PDataWriter` only writes data PDVs).
//! Release and abort are ours to answer. Rejected presentation contexts stay in the list.
//! Without a `Negotiation` that answers role selection, a C-GET requester is left an SCU only.

pub mod client;
pub mod commitment;
pub mod find;
pub mod link;
pub mod notify;
pub mod retrieve;
pub mod scp;
pub mod session;
pub mod store;
