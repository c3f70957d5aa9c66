//! Differential test: the general path (`dicom::general`, over dicom-parser) extracts the same
//! indexed attributes as dicom-object reads, on every pydicom sample file.
//!
//! Per file: the file meta group gives the transfer syntax and where the data set starts (for
//! files without one, `looks_like_part10_without_meta` guesses the syntax, and dicom-object
//! reads the same bytes behind a file meta group made for them). The general path then runs as
//! its caller will: on the first 4 KiB of the data set, doubling until it answers. Compared
//! with dicom-object: each indexed value (the helpers of `dicom_samples`), its VR, and that the
//! reported Pixel Data offset holds the Pixel Data tag. Wherever the extractor takes the fast
//! path, the general path must also give exactly the fast path's result, but for one designed
//! difference: a UN element of a known tag gets the dictionary's VR. Files dicom-object refuses
//! but the general path reads are compared with pydicom (from `.venv`) instead. Any file
//! dicom-object reads but the general path refuses fails the test. Sample discovery (with the
//! character set samples), text decoding (per the file's (0008,0005), with `CharacterSets`,
//! as `Extracted::text` does) and `KUVASTO_REQUIRE_SAMPLES` work as in `dicom_samples`.

use super::dicom_samples::{
    compare_indexed, sample_files, settle_with_pydicom, Compared, OurValue,
};
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::Tag as DTag;
use dicom_object::file::ReadPreamble;
use dicom_object::{InMemDicomObject, OpenFileOptions, StandardDataDictionary};
use kuvasto_engine::dicom::charset::CharacterSets;
use kuvasto_engine::dicom::explicit_le::{Element, ScanError, ScanLimits, Scanned};
use kuvasto_engine::dicom::extract::{ExtractPath, Extractor, INDEXED};
use kuvasto_engine::dicom::general::{
    extract_general, looks_like_part10_without_meta, GeneralScanned,
};
use kuvasto_engine::dicom::meta::{encode_file_meta, read_file_meta, ts, MetaLimits};
use kuvasto_engine::dicom::Tag;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

fn is_indexed(tag: Tag) -> bool {
    INDEXED.binary_search(&tag).is_ok()
}

/// Runs the general path the way its caller does: the first 4 KiB of the data set, then twice
/// as much each time it asks for more.
fn extract_like_the_caller(
    transfer_syntax: &str,
    data_set: &[u8],
    start: u64,
) -> Result<GeneralScanned, ScanError> {
    let limits = ScanLimits::default();
    let mut len = 4096usize;
    loop {
        let at_end = len >= data_set.len();
        let part = &data_set[..len.min(data_set.len())];
        match extract_general(transfer_syntax, part, start, at_end, &is_indexed, &limits)? {
            Some(found) => return Ok(found),
            None => {
                assert!(!at_end, "Ok(None) although the stream had ended");
                len *= 2;
            }
        }
    }
}

/// A Part-10 stream for a data set that has no file meta group, so dicom-object can read it.
fn with_file_meta(transfer_syntax: &str, data_set: &[u8]) -> Vec<u8> {
    let meta = encode_file_meta("1.2.840.10008.5.1.4.1.1.7", "1.2.3.4", transfer_syntax);
    [meta, data_set.to_vec()].concat()
}

/// A short name for a transfer syntax, for the summary.
fn kind(transfer_syntax: &str, without_meta: bool) -> String {
    let name = match transfer_syntax {
        ts::IMPLICIT_VR_LE => "implicit VR LE",
        ts::EXPLICIT_VR_LE => "explicit VR LE",
        ts::EXPLICIT_VR_BE => "explicit VR BE",
        ts::DEFLATED_EXPLICIT_VR_LE => "deflated",
        _ => "encapsulated",
    };
    if without_meta {
        format!("{name} without meta")
    } else {
        name.to_string()
    }
}

/// The standard dictionary's VR for `tag` (what the general path reports for a UN element of
/// a known tag).
fn dictionary_vr(tag: Tag) -> Option<[u8; 2]> {
    StandardDataDictionary
        .by_tag(DTag(tag.group(), tag.element()))
        .map(|entry| entry.vr().relaxed().to_bytes())
}

/// Whether the general path's result equals the fast path's, but for the VR of UN elements of
/// known tags, which the general path reports as the dictionary's.
fn same_but_un_reread(fast: &Scanned, general: &Scanned) -> bool {
    fast.arena == general.arena
        && fast.pixel_data == general.pixel_data
        && fast.elements.len() == general.elements.len()
        && fast.elements.iter().zip(&general.elements).all(|(f, g)| {
            let vr_agrees = f.vr == g.vr || (&f.vr == b"UN" && Some(g.vr) == dictionary_vr(g.tag));
            vr_agrees && Element { vr: g.vr, ..*f } == *g
        })
}

/// VRs compared, and how many of those were UN re-read with the dictionary's VR.
#[derive(Default)]
struct VrCount {
    compared: usize,
    un_reread: usize,
}

/// Compares the VR of every indexed element found with dicom-object's.
fn compare_vrs(
    path: &Path,
    ours: &GeneralScanned,
    theirs: &InMemDicomObject,
    count: &mut VrCount,
    disagreements: &mut Vec<String>,
) {
    for element in &ours.scanned.elements {
        let dtag = DTag(element.tag.group(), element.tag.element());
        let Some(their_element) = theirs.element_opt(dtag).ok().flatten() else {
            continue; // reported by compare_indexed
        };
        count.compared += 1;
        let their_vr = their_element.vr().to_bytes();
        if &their_vr == b"UN" && Some(element.vr) == dictionary_vr(element.tag) {
            // An explicit UN of a known tag: dicom-object keeps UN, the general path reports
            // the dictionary's VR (compare_indexed checked the bytes are the same).
            count.un_reread += 1;
        } else if element.vr != their_vr {
            disagreements.push(format!(
                "{}: {} VR ours {} theirs {}",
                path.display(),
                element.tag,
                String::from_utf8_lossy(&element.vr),
                String::from_utf8_lossy(&their_vr)
            ));
        }
    }
}

/// Checks that the reported Pixel Data offsets point at the Pixel Data element in `stream`.
fn check_pixel_data(
    path: &Path,
    transfer_syntax: &str,
    ours: &GeneralScanned,
    stream: &[u8],
    disagreements: &mut Vec<String>,
) {
    let Some(pixel) = ours.scanned.pixel_data else {
        return;
    };
    if ours.inflated {
        return; // offsets are in the inflated data set
    }
    let tag_bytes: [u8; 4] = if transfer_syntax == ts::EXPLICIT_VR_BE {
        [0x7F, 0xE0, 0x00, 0x10]
    } else {
        [0xE0, 0x7F, 0x10, 0x00]
    };
    let at = pixel.element_offset as usize;
    // The value follows an 8-byte header (implicit VR) or a 12-byte one (explicit VR); the
    // value itself may be cut short (a truncated sample), so its end is not checked.
    let header_len = pixel.value_offset.checked_sub(pixel.element_offset);
    if stream.get(at..at + 4) != Some(&tag_bytes[..]) || !matches!(header_len, Some(8 | 12)) {
        disagreements.push(format!(
            "{}: Pixel Data reported at {pixel:?}, not there in the {}-byte file",
            path.display(),
            stream.len()
        ));
    }
}

/// What pydicom reads for one element: its VR if it was explicit, and its raw bytes (or, when
/// pydicom has already converted the element while reading, the text of its value).
struct PydicomValue {
    vr: Option<[u8; 2]>,
    raw: Option<Vec<u8>>,
    text: Option<String>,
}

const PYDICOM_DUMP: &str = r#"
import sys
import pydicom
from pydicom.dataelem import RawDataElement
tags = [int(t, 16) for t in sys.argv[1].split(",")]
for path in sys.argv[2:]:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:
        continue
    for tag in tags:
        if tag not in ds:
            continue
        e = ds.get_item(tag)
        if isinstance(e, RawDataElement):
            print(path, f"{tag:08X}", e.VR or "-", "raw", (e.value or b"").hex(), sep="\t")
        else:
            v = e.value
            if isinstance(v, (list, pydicom.multival.MultiValue)):
                v = "\\".join(str(x) for x in v)
            print(path, f"{tag:08X}", e.VR or "-", "text", str(v).encode().hex(), sep="\t")
"#;

fn from_hex(hex: &str) -> Option<Vec<u8>> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

type PydicomValues = HashMap<(PathBuf, Tag), PydicomValue>;

/// Reads the indexed elements of `paths` with pydicom from `.venv`: a second, independent
/// reader for the files dicom-object refuses. `None` when pydicom cannot be run.
fn pydicom_values(paths: &[PathBuf]) -> Option<PydicomValues> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let tags: Vec<String> = INDEXED.iter().map(|t| format!("{:08X}", t.0)).collect();
    let output = std::process::Command::new(python)
        .arg("-c")
        .arg(PYDICOM_DUMP)
        .arg(tags.join(","))
        .args(paths)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let mut values = HashMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [path, tag, vr, form, hex] = fields[..] else {
            continue;
        };
        let (Ok(tag), Some(bytes)) = (u32::from_str_radix(tag, 16), from_hex(hex)) else {
            continue;
        };
        let vr = (vr.len() == 2).then(|| [vr.as_bytes()[0], vr.as_bytes()[1]]);
        let (raw, text) = if form == "raw" {
            (Some(bytes), None)
        } else {
            (None, Some(String::from_utf8_lossy(&bytes).into_owned()))
        };
        values.insert(
            (PathBuf::from(path), Tag(tag)),
            PydicomValue { vr, raw, text },
        );
    }
    Some(values)
}

/// A text value without padding; pydicom's converted empty value prints as `None`.
fn trim_text(s: &str) -> &str {
    match s {
        "None" => "",
        s => s.trim_matches(|c: char| c == ' ' || c == '\0'),
    }
}

/// Compares what the general path found in `path` with pydicom's reading; returns the number
/// of values compared.
fn compare_with_pydicom(
    path: &Path,
    ours: &GeneralScanned,
    theirs: &PydicomValues,
    disagreements: &mut Vec<String>,
) -> usize {
    let mut compared = 0;
    let scanned = &ours.scanned;
    for &tag in INDEXED {
        let our_element = scanned.elements.iter().find(|e| e.tag == tag);
        let (element, value) = match (our_element, theirs.get(&(path.to_path_buf(), tag))) {
            (None, None) => continue,
            (Some(element), Some(value)) => (element, value),
            (ours_side, theirs_side) => {
                disagreements.push(format!(
                    "{}: {tag} present in ours: {}, in pydicom's: {}",
                    path.display(),
                    ours_side.is_some(),
                    theirs_side.is_some()
                ));
                continue;
            }
        };
        compared += 1;
        let raw = scanned.value(element);
        let value_agrees = match (&value.raw, &value.text) {
            (Some(their_raw), _) => their_raw[..] == *raw,
            (None, Some(text)) if &element.vr == b"US" => {
                raw.len() >= 2 && u16::from_le_bytes([raw[0], raw[1]]).to_string() == *text
            }
            (None, Some(text)) => trim_text(&String::from_utf8_lossy(raw)) == trim_text(text),
            (None, None) => false,
        };
        let vr_agrees = match value.vr {
            None => true, // implicit VR: pydicom decides later
            Some(vr) => {
                vr == element.vr || (&vr == b"UN" && Some(element.vr) == dictionary_vr(tag))
            }
        };
        if !value_agrees || !vr_agrees {
            disagreements.push(format!(
                "{}: {tag} ours {} {:?}, pydicom's VR {:?} raw {:?} text {:?}",
                path.display(),
                String::from_utf8_lossy(&element.vr),
                String::from_utf8_lossy(raw),
                value.vr.map(|vr| String::from_utf8_lossy(&vr).into_owned()),
                value
                    .raw
                    .as_ref()
                    .map(|r| String::from_utf8_lossy(r).into_owned()),
                value.text
            ));
        }
    }
    compared
}

#[test]
fn general_path_agrees_with_dicom_object_on_pydicom_samples() {
    let Some(files) = sample_files() else {
        assert!(
            std::env::var_os("KUVASTO_REQUIRE_SAMPLES").is_none(),
            "pydicom's sample files are missing: scripts/test.sh installs them into .venv"
        );
        eprintln!("pydicom samples not installed (run scripts/test.sh); differential test skipped");
        return;
    };
    let mut compared_by_kind: BTreeMap<String, usize> = BTreeMap::new();
    let (mut values, mut vrs, mut same_as_fast_path) = (Compared::default(), VrCount::default(), 0);
    let mut values_compared_with_pydicom = 0;
    let (mut mismatches, mut not_dicom, mut both_refuse) = (0, 0, 0);
    // Read by the general path, refused by dicom-object: (path, kind, ours, dicom-object's error).
    let mut only_ours = Vec::new();
    let mut disagreements = Vec::new();
    let mut rejected_only_by_us = Vec::new();
    for path in &files {
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        let (transfer_syntax, start, without_meta) =
            match read_file_meta(&bytes, MetaLimits::default()) {
                Ok(Some(meta)) => (meta.transfer_syntax_uid, meta.data_set_offset, false),
                _ => match looks_like_part10_without_meta(&bytes) {
                    Some(guess) => (guess.to_string(), 0, true),
                    None => {
                        not_dicom += 1;
                        continue;
                    }
                },
            };
        let ours = extract_like_the_caller(&transfer_syntax, &bytes[start as usize..], start);
        let options = OpenFileOptions::new().read_until(DTag(0x7FE0, 0x0010));
        let theirs = if without_meta {
            options
                .read_preamble(ReadPreamble::Always)
                .from_reader(&with_file_meta(&transfer_syntax, &bytes)[..])
        } else {
            options.open_file(path)
        };
        if !without_meta {
            // Wherever the extractor took the fast path (Explicit VR LE data sets), the
            // general path must give exactly its result.
            let mut extractor = Extractor::new(MetaLimits::default(), ScanLimits::default());
            let fast = extractor.feed(&bytes).map_err(|e| e.to_string());
            let fast = fast.and_then(|_| extractor.finish().map_err(|e| e.to_string()));
            let fast = fast.map(|found| (found.path == ExtractPath::Fast).then_some(found));
            if let (Ok(Some(fast)), Ok(ours)) = (&fast, &ours) {
                if same_but_un_reread(&fast.data_set, &ours.scanned) {
                    same_as_fast_path += 1;
                } else {
                    disagreements.push(format!(
                        "{}: the general path's result differs from the fast path's",
                        path.display()
                    ));
                }
            }
        }
        if let Ok(found) = &ours {
            mismatches += usize::from(found.encoding_mismatch);
            check_pixel_data(path, &transfer_syntax, found, &bytes, &mut disagreements);
        }
        match (ours, theirs) {
            (Ok(ours), Ok(theirs)) => {
                *compared_by_kind
                    .entry(kind(&transfer_syntax, without_meta))
                    .or_default() += 1;
                let scanned = &ours.scanned;
                let element = |tag| scanned.elements.iter().find(|e| e.tag == tag);
                // Decoded as `Extracted::text` does: per (0008,0005), the default repertoire
                // when it is absent or not understood.
                let charsets = element(Tag::new(0x0008, 0x0005))
                    .and_then(|e| CharacterSets::parse(scanned.value(e)).ok())
                    .unwrap_or_default();
                let our_value = |tag| {
                    let e = element(tag)?;
                    let raw = scanned.value(e);
                    Some(OurValue {
                        raw,
                        text: charsets.decode(e.vr, raw),
                    })
                };
                compare_indexed(path, our_value, &theirs, &mut values, &mut disagreements);
                compare_vrs(path, &ours, &theirs, &mut vrs, &mut disagreements);
            }
            (Err(error), Ok(_)) => {
                rejected_only_by_us.push(format!("{}: {error}", path.display()));
            }
            (Ok(ours), Err(error)) => {
                let kind = kind(&transfer_syntax, without_meta);
                only_ours.push((path.clone(), kind, ours, error.to_string()));
            }
            (Err(ours), Err(theirs)) => {
                eprintln!("  both refuse {}: {ours}; {theirs}", path.display());
                both_refuse += 1;
            }
        }
    }
    settle_with_pydicom(&mut values, &mut disagreements);
    for misread in &values.dicom_object_misreads {
        eprintln!("  dicom-object decodes differently (pydicom agrees with us): {misread}");
    }
    // Files dicom-object refuses (no deflate support built in, file meta groups it cannot
    // parse, UN sequences, implicit VR under an explicit syntax): pydicom checks them instead.
    let paths: Vec<PathBuf> = only_ours.iter().map(|o| o.0.clone()).collect();
    let mut pydicom_compared = 0;
    match pydicom_values(&paths) {
        Some(theirs) => {
            for (path, kind, ours, error) in &only_ours {
                eprintln!(
                    "  dicom-object refuses {} ({error}): compared with pydicom",
                    path.display()
                );
                pydicom_compared += 1;
                values_compared_with_pydicom +=
                    compare_with_pydicom(path, ours, &theirs, &mut disagreements);
                *compared_by_kind.entry(kind.clone()).or_default() += 1;
            }
        }
        None => {
            assert!(
                std::env::var_os("KUVASTO_REQUIRE_SAMPLES").is_none(),
                "pydicom in .venv cannot be run"
            );
            eprintln!(
                "  pydicom could not be run: {} files that only the general path reads are unchecked",
                only_ours.len()
            );
        }
    }
    let compared: usize = compared_by_kind.values().sum();
    eprintln!(
        "pydicom samples, general path: {} files, {compared} compared ({compared_by_kind:?}); {} values with dicom-object ({} of them non-ASCII text, {} decoded differently by dicom-object), {values_compared_with_pydicom} with pydicom, {} VRs ({} UN read with the dictionary's VR); {pydicom_compared} files compared with pydicom as dicom-object refuses them; {same_as_fast_path} identical to the fast path; {mismatches} implicit VR under an explicit syntax; {both_refuse} refused by both; {not_dicom} not DICOM",
        files.len(),
        values.values,
        values.non_ascii,
        values.dicom_object_misreads.len(),
        vrs.compared,
        vrs.un_reread,
    );
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
    assert!(
        rejected_only_by_us.is_empty(),
        "dicom-object reads these, the general path refuses them:\n{}",
        rejected_only_by_us.join("\n")
    );
    let of_kind = |name: &str| compared_by_kind.get(name).copied().unwrap_or(0);
    assert!(
        of_kind("implicit VR LE") >= 8
            && of_kind("explicit VR BE") >= 6
            && of_kind("encapsulated") >= 20
            && (pydicom_compared == 0 || of_kind("deflated") >= 1),
        "too few files of a kind were compared: {compared_by_kind:?}"
    );
    assert!(
        same_as_fast_path >= 100,
        "only {same_as_fast_path} files matched the fast path"
    );
}
