//! Arbitrary bytes through the DIMSE decoders of `kuvasto-dimse` and the PDU reader the server
//! takes from `dicom-ul`. The first byte chooses what the rest is (its value modulo 3): a
//! command set (`Command::decode`), a data set (`DataSet::decode` in Implicit VR Little
//! Endian, Explicit VR Little Endian and Explicit VR Big Endian in turn), or a stream of PDUs
//! (`dicom_ul::pdu::read_pdu` with the server's default maximum, every P-DATA-TF's PDVs then
//! decoded as commands and data sets, as the server would). Checked:
//!
//! - no panic, whatever the bytes;
//! - what is read is written back faithfully: a command set that decodes encodes to bytes
//!   that decode to an equal `Command`; a data set that decodes encodes, in the same encoding,
//!   to bytes that decode to an equal `DataSet`, and encoding that again gives the same bytes.
//!   The one accepted difference: the re-encoded data set may be refused as too long, since
//!   encoding can lengthen it (a UN value of undefined length, Implicit VR inside, becomes an
//!   Explicit VR sequence with 4 more bytes per long-length element) and the input may
//!   already have been near `DATA_SET_BYTES_MAX`.
#![no_main]

use kuvasto_dimse::command::Command;
use kuvasto_dimse::dataset::{DataSet, DataSetError};
use kuvasto_engine::dicom::json::Encoding;
use libfuzzer_sys::fuzz_target;

const ENCODINGS: [Encoding; 3] = [
    Encoding::ImplicitLittle,
    Encoding::ExplicitLittle,
    Encoding::ExplicitBig,
];

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    match mode % 3 {
        0 => command(data),
        1 => {
            for encoding in ENCODINGS {
                data_set(data, encoding);
            }
        }
        _ => pdus(data),
    }
});

/// The server's default `dimse.max_pdu_bytes`.
const MAX_PDU_BYTES: u32 = 65_536;

fn pdus(mut data: &[u8]) {
    // At most a few PDUs: each read either consumes bytes or stops.
    for _ in 0..16 {
        let mut cursor = std::io::Cursor::new(data);
        match dicom_ul::pdu::read_pdu(&mut cursor, MAX_PDU_BYTES, true) {
            Ok(Some(pdu)) => {
                let used = cursor.position() as usize;
                assert!(used > 0 && used <= data.len(), "a PDU consumed no bytes");
                if let dicom_ul::pdu::Pdu::PData { data: values } = pdu {
                    for value in values {
                        command(&value.data);
                        data_set(&value.data, Encoding::ImplicitLittle);
                    }
                }
                data = &data[used..];
            }
            Ok(None) | Err(_) => return,
        }
    }
}

fn command(data: &[u8]) {
    let Ok(command) = Command::decode(data) else {
        return;
    };
    let bytes = command.encode();
    match Command::decode(&bytes) {
        Ok(again) => assert_eq!(again, command, "command changed by encode and decode"),
        Err(error) => panic!("encoded command {command:?} does not decode: {error}"),
    }
}

fn data_set(data: &[u8], encoding: Encoding) {
    let Ok(data_set) = DataSet::decode(data, encoding) else {
        return;
    };
    let bytes = data_set.encode(encoding);
    match DataSet::decode(&bytes, encoding) {
        Ok(again) => {
            assert_eq!(
                again, data_set,
                "{encoding:?}: changed by encode and decode"
            );
            assert_eq!(
                again.encode(encoding),
                bytes,
                "{encoding:?}: encoding unstable"
            );
        }
        Err(DataSetError::TooLong { .. }) => {}
        Err(error) => panic!("{encoding:?}: encoded data set does not decode: {error}"),
    }
}
