//! Property tests of the rules' parsers of untrusted input: whatever bytes arrive, they answer
//! with a value or a specific error and never panic; instants round-trip.

use super::documents::parse_document;
use super::time::{format_ms, parse_ms};
use super::validation::{validate_patient_id, Nomenclature, PatientIdPolicy};
use proptest::prelude::*;

/// JSON-ish text: mostly the document's own vocabulary, so the parser gets deep.
fn jsonish() -> impl Strategy<Value = String> {
    let words = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "\"",
        "\"resourceType\"",
        "\"DocumentReference\"",
        "\"masterIdentifier\"",
        "\"value\"",
        "\"system\"",
        "\"urn:oid:1.2.3\"",
        "\"status\"",
        "\"current\"",
        "\"type\"",
        "\"coding\"",
        "\"code\"",
        "\"request\"",
        "\"subject\"",
        "\"identifier\"",
        "\"131052-308T\"",
        "\"date\"",
        "\"2026-11-26T10:00:00Z\"",
        "\"author\"",
        "\"custodian\"",
        "\"context\"",
        "\"related\"",
        "\"urn:kuvasto:service-event\"",
        "\"content\"",
        "\"attachment\"",
        "\"contentType\"",
        "\"application/pdf\"",
        "\"data\"",
        "\"QUJD\"",
        "null",
        "true",
        "1e999",
        "-0",
        "\"\\u0000\"",
    ]);
    prop::collection::vec(words, 0..80).prop_map(|w| w.concat())
}

proptest! {
    #[test]
    fn documents_never_panic(text in jsonish(), bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_document(text.as_bytes());
        let _ = parse_document(&bytes);
    }

    #[test]
    fn nomenclatures_never_panic(lines in prop::collection::vec("[A-Z0-9a-z\\t .#é]{0,40}", 0..20)) {
        let _ = Nomenclature::parse(&lines.join("\n"));
    }

    #[test]
    fn patient_ids_never_panic(id in "\\PC{0,16}") {
        let policy = PatientIdPolicy::new(&["TMP[0-9]{8}".to_string()], true).expect("policy");
        let _ = validate_patient_id(&policy, &id);
    }

    #[test]
    fn instants_round_trip(ms in -62_135_596_800_000i64..253_402_300_799_999i64, text in "\\PC{0,30}") {
        prop_assert_eq!(parse_ms(&format_ms(ms)), Ok(ms));
        let _ = parse_ms(&text);
    }
}
