//! Kuvasto's integration tests, one binary (see `tests/README.md` for what each module proves).

mod basic;
mod crash;
mod dicom_bad_input;
mod dicom_general;
mod dicom_roundtrip;
mod dicom_samples;
mod faults;
mod instances;
mod loss_paths;
mod model;
mod verify;
