//! The `kuvasto` binary as operators and clients meet it, one test binary: the CLI
//! (`serve`, `check`), and DICOMweb driven by real clients (curl, Python's dicomweb-client).

mod cli;
mod dicomweb;
