//! Kuvasto's DIMSE codec (PS3.7): the bytes of DIMSE messages, without any network code, so
//! that the server and the fuzzers share one decoder.
//!
//! - [`command`]: command sets (group 0000, always Implicit VR Little Endian): encoding,
//!   bounded decoding, the command fields and status codes the services use;
//! - [`dataset`]: small data sets that travel with commands (C-FIND identifiers, C-MOVE/C-GET
//!   keys, Storage Commitment action and event information) in Implicit VR LE, Explicit VR LE
//!   or Explicit VR BE: bounded decoding into a tree, and encoding.
//!
//! Instances sent with C-STORE never pass through here: the server streams them into the
//! engine PDV by PDV.

pub mod command;
pub mod dataset;
