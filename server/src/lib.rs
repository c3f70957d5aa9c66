//! # Kuvasto server
//!
//! The network side of Kuvasto: protocol adapters (DICOMweb, DIMSE) over one set of archive
//! rules over the engine. Today it holds the configuration and the `serve` loop that opens the
//! engine; the protocol adapters arrive with their issues.

pub mod config;
pub mod serve;
