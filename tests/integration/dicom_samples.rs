//! Differential test: the fast path's extraction equals dicom-object's reading of the same
//! attributes, on every sample file pydicom ships (`test_files` and `charset_files`).
//!
//! Text values are compared decoded per Specific Character Set on both sides (ours with
//! `Extracted::text`), ASCII or not. dicom-object does not apply ISO 2022 code extensions (a
//! multi-valued (0008,0005)): it leaves the escape sequences in the text. Where its text
//! differs from ours, pydicom decides: if pydicom decodes as we do, the value is listed as
//! dicom-object's misreading; otherwise it is a disagreement.
//!
//! The test command (`scripts/test.sh`) installs pydicom into `.venv` and sets
//! `KUVASTO_REQUIRE_SAMPLES=1`, so there a missing sample folder is a failure; a plain
//! `cargo test` without the folder says so and checks nothing else.

use dicom_core::Tag as DTag;
use dicom_object::{InMemDicomObject, OpenFileOptions};
use kuvasto_engine::dicom::explicit_le::{Progress, ScanLimits};
use kuvasto_engine::dicom::extract::{ExtractPath, Extractor, INDEXED};
use kuvasto_engine::dicom::meta::MetaLimits;
use kuvasto_engine::dicom::Tag;
use std::path::{Path, PathBuf};

/// pydicom's sample folder in `.venv` (`test_files`; shared with `instances`).
pub(crate) fn samples_dir() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let lib = root.join(".venv/lib");
    let python = std::fs::read_dir(&lib).ok()?.flatten().next()?.path();
    let dir = python.join("site-packages/pydicom/data/test_files");
    dir.is_dir().then_some(dir)
}

/// Every file of pydicom's samples: `test_files` and the character set samples next to it
/// in `charset_files` (shared with `dicom_general`). `None` when pydicom is not installed.
pub(crate) fn sample_files() -> Option<Vec<PathBuf>> {
    let dir = samples_dir()?;
    let mut files = Vec::new();
    files_under(&dir, &mut files);
    files_under(&dir.with_file_name("charset_files"), &mut files);
    files.sort();
    Some(files)
}

pub(crate) fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn trimmed(s: &str) -> &str {
    s.trim_matches(|c: char| c == ' ' || c == '\0')
}

/// VRs whose values are text (decoded per Specific Character Set where it applies).
fn is_text_vr(vr: &str) -> bool {
    matches!(
        vr,
        "AE" | "AS"
            | "CS"
            | "DA"
            | "DS"
            | "DT"
            | "IS"
            | "LO"
            | "LT"
            | "PN"
            | "SH"
            | "ST"
            | "TM"
            | "UC"
            | "UI"
            | "UR"
            | "UT"
    )
}

/// One indexed value as one of our paths found it: the raw bytes, and the value decoded per
/// the data set's Specific Character Set.
pub(crate) struct OurValue<'a> {
    pub raw: &'a [u8],
    pub text: String,
}

/// A text value that dicom-object decodes differently from us; pydicom settles it.
struct TextDifference {
    path: PathBuf,
    tag: Tag,
    ours: String,
    dicom_object: String,
}

/// What `compare_indexed` compared.
#[derive(Default)]
pub(crate) struct Compared {
    pub values: usize,
    /// Text values that are not ASCII once decoded (or whose bytes are not: ISO 2022 text is
    /// 7-bit), compared decoded like every text value.
    pub non_ascii: usize,
    /// Text values dicom-object decodes differently, until `settle_with_pydicom`.
    differences: Vec<TextDifference>,
    /// Text values dicom-object decodes differently from both us and pydicom.
    pub dicom_object_misreads: Vec<String>,
}

/// Compares the values one of our paths found for the indexed attributes (`ours`) with
/// dicom-object's reading of the same file: text decoded per Specific Character Set on both
/// sides (dicom-object's `to_str()` decodes too) and trimmed of padding, US numerically, the
/// rest byte for byte. Adds to `count`, and a line to `disagreements` for each difference but
/// those in decoded text, which `settle_with_pydicom` decides (shared with `dicom_general`).
pub(crate) fn compare_indexed<'a>(
    path: &Path,
    ours: impl Fn(Tag) -> Option<OurValue<'a>>,
    theirs: &InMemDicomObject,
    count: &mut Compared,
    disagreements: &mut Vec<String>,
) {
    for &tag in INDEXED {
        let dtag = DTag(tag.group(), tag.element());
        let their_element = theirs.element_opt(dtag).ok().flatten();
        match (ours(tag), their_element) {
            (None, None) => {}
            (Some(our), Some(element)) => {
                count.values += 1;
                let vr = element.vr().to_string();
                let agree = if vr == "UN" {
                    // dicom-object keeps UN (the general path reports the dictionary's VR for
                    // a known tag): the bytes must be the same.
                    element.to_bytes().is_ok_and(|theirs| *theirs == *our.raw)
                } else if vr == "US" {
                    let raw = our.raw;
                    let ours = (raw.len() >= 2).then(|| u16::from_le_bytes([raw[0], raw[1]]));
                    ours == element.to_int::<u16>().ok()
                } else if is_text_vr(vr) {
                    let non_ascii = !our.raw.is_ascii() || !our.text.is_ascii();
                    count.non_ascii += usize::from(non_ascii);
                    match element.to_str() {
                        Ok(theirs) if trimmed(&our.text) == trimmed(&theirs) => true,
                        Ok(theirs) => {
                            count.differences.push(TextDifference {
                                path: path.to_path_buf(),
                                tag,
                                ours: our.text.clone(),
                                dicom_object: theirs.into_owned(),
                            });
                            true
                        }
                        Err(_) => false,
                    }
                } else {
                    // Binary: dicom-object's bytes are in native (little endian) order, as
                    // ours are.
                    element.to_bytes().is_ok_and(|theirs| *theirs == *our.raw)
                };
                if !agree {
                    disagreements.push(format!(
                        "{}: {tag} {vr} ours {:?} (raw {:02X?}) theirs {:?}",
                        path.display(),
                        our.text,
                        our.raw,
                        element.to_str().map_err(|e| e.to_string())
                    ));
                }
            }
            (ours_side, theirs_side) => disagreements.push(format!(
                "{}: {tag} present in ours: {}, in dicom-object's: {}",
                path.display(),
                ours_side.is_some(),
                theirs_side.is_some()
            )),
        }
    }
}

/// Prints, per requested (file, tag), pydicom's decoded text of the element (its charset
/// handling: ISO 2022 code extensions included).
const PYDICOM_TEXT: &str = r#"
import sys
import pydicom
from pydicom.multival import MultiValue
wanted = {}
for arg in sys.argv[1:]:
    path, tag = arg.rsplit("|", 1)
    wanted.setdefault(path, []).append(int(tag, 16))
for path, tags in wanted.items():
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    for tag in tags:
        v = ds[tag].value
        if isinstance(v, MultiValue):
            v = "\\".join(str(x) for x in v)
        print(path, f"{tag:08X}", str(v).encode().hex(), sep="\t")
"#;

/// Settles the text values dicom-object decodes differently from us with pydicom (from
/// `.venv`): where pydicom decodes as we do, dicom-object's reading goes to
/// `dicom_object_misreads`; elsewhere (or without pydicom) it is a disagreement.
pub(crate) fn settle_with_pydicom(count: &mut Compared, disagreements: &mut Vec<String>) {
    let differences = std::mem::take(&mut count.differences);
    if differences.is_empty() {
        return;
    }
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let args = differences
        .iter()
        .map(|d| format!("{}|{:08X}", d.path.display(), d.tag.0));
    let output = std::process::Command::new(python)
        .arg("-c")
        .arg(PYDICOM_TEXT)
        .args(args)
        .output();
    let mut pydicom = std::collections::HashMap::new();
    match output {
        Ok(output) if output.status.success() => {
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                let fields: Vec<&str> = line.split('\t').collect();
                let [path, tag, hex] = fields[..] else {
                    continue;
                };
                let bytes: Option<Vec<u8>> = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                    .collect();
                if let (Ok(tag), Some(bytes)) = (u32::from_str_radix(tag, 16), bytes) {
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    pydicom.insert((PathBuf::from(path), Tag(tag)), text);
                }
            }
        }
        Ok(output) => disagreements.push(format!(
            "pydicom could not settle {} text differences: {}",
            differences.len(),
            String::from_utf8_lossy(&output.stderr)
        )),
        Err(error) => disagreements.push(format!("pydicom cannot be run: {error}")),
    }
    for d in differences {
        let theirs = pydicom.get(&(d.path.clone(), d.tag));
        let line = format!(
            "{}: {} ours {:?}, dicom-object {:?}, pydicom {theirs:?}",
            d.path.display(),
            d.tag,
            d.ours,
            d.dicom_object
        );
        match theirs {
            Some(theirs) if trimmed(theirs) == trimmed(&d.ours) => {
                count.dicom_object_misreads.push(line)
            }
            _ => disagreements.push(line),
        }
    }
}

#[test]
fn fast_path_agrees_with_dicom_object_on_pydicom_samples() {
    let Some(files) = sample_files() else {
        assert!(
            std::env::var_os("KUVASTO_REQUIRE_SAMPLES").is_none(),
            "pydicom's sample files are missing: scripts/test.sh installs them into .venv"
        );
        eprintln!("pydicom samples not installed (run scripts/test.sh); differential test skipped");
        return;
    };
    let (mut compared, mut general_path, mut not_part10) = (0, 0, 0);
    let mut values = Compared::default();
    let mut disagreements = Vec::new();
    let mut rejected_only_by_us = Vec::new();
    for path in &files {
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        let mut extractor = Extractor::new(MetaLimits::default(), ScanLimits::default());
        let mut fed = Ok(Progress::NeedMore);
        for piece in bytes.chunks(4096) {
            fed = extractor.feed(piece);
            if !matches!(fed, Ok(Progress::NeedMore)) {
                break;
            }
        }
        let ours = fed.and_then(|_| extractor.finish());
        let ours = match ours {
            Ok(found) if found.path != ExtractPath::Fast => {
                general_path += 1; // compared by `dicom_general`
                continue;
            }
            Ok(found) => found,
            Err(error) => {
                not_part10 += 1;
                // Both readers must refuse it (or dicom-object must read it only by guessing:
                // files without a file meta group, which the archive does not accept).
                if OpenFileOptions::new()
                    .read_until(DTag(0x7FE0, 0x0010))
                    .open_file(path)
                    .is_ok()
                {
                    rejected_only_by_us.push(format!("{}: {error}", path.display()));
                }
                continue;
            }
        };
        // Only where dicom-object reads the file too (it rejects some broken samples).
        let Ok(theirs) = OpenFileOptions::new()
            .read_until(DTag(0x7FE0, 0x0010))
            .open_file(path)
        else {
            continue;
        };
        compared += 1;
        let our_value = |tag| {
            Some(OurValue {
                raw: ours.raw(tag)?,
                text: ours.text(tag)?,
            })
        };
        compare_indexed(path, our_value, &theirs, &mut values, &mut disagreements);
    }
    settle_with_pydicom(&mut values, &mut disagreements);
    for misread in &values.dicom_object_misreads {
        eprintln!("  dicom-object decodes differently (pydicom agrees with us): {misread}");
    }
    eprintln!(
        "pydicom samples: {} files, {compared} compared ({} values, {} of them non-ASCII text, {} decoded differently by dicom-object), {general_path} for the general path, {not_part10} not Part-10 or broken",
        files.len(),
        values.values,
        values.non_ascii,
        values.dicom_object_misreads.len(),
    );
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
    assert!(
        rejected_only_by_us.is_empty(),
        "dicom-object reads these, the fast path refuses them:\n{}",
        rejected_only_by_us.join("\n")
    );
    assert!(compared >= 20, "only {compared} sample files were compared");
}
