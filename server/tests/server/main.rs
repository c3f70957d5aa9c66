//! The `kuvasto` binary as operators and clients meet it, one test binary: the CLI
//! (`serve`, `check`), DICOMweb driven by real clients (curl, Python's dicomweb-client), and
//! DIMSE driven by dcmtk and pynetdicom.

mod cli;
mod compaction;
mod dicomweb;
mod dimse;
mod dimse_python;
mod import;
mod metrics;
mod ops;
mod rules;
mod tls;
