//! Validation of what an instance says about its patient and its examination, before the
//! archive stores it (`../shared/DOMAIN.md`, rules 5 and 6).
//!
//! Three checks, each a plain function the store path calls with the instance's attributes:
//!
//! - [`validate_patient_id`]: PatientID (0010,0020) is a Finnish personal identity code (see
//!   [`super::identity`]) or a temporary id matching one of the operator's patterns
//!   ([`PatientIdPolicy`]). A temporary *identity code* (individual number 900–999) is accepted
//!   only if the policy says so.
//! - [`examination_of`]: the first 5 characters of StudyDescription (0008,1030) are an
//!   examination code of the national nomenclature ([`Nomenclature`], read from a TSV file; a
//!   sample ships as [`Nomenclature::builtin`]). The code's [`Examination`] tells the study's
//!   [`ContentType`]: radiology, dental, ECG or ophthalmology.
//! - [`check_sop_class`]: the instance's SOP class is one the archive accepts for that content
//!   type (a resting ECG waveform is not a radiology image). The accepted classes are listed in
//!   [`allowed_sop_classes`]; their UIDs are the constants of [`uids`].
//!
//! A refusal is a [`ValidationError`]: one English sentence naming the offending value and the
//! rule, and, through [`ValidationError::code`], the DICOM failure status the archive reports.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::identity::{IdentityCodeError, PersonalIdentityCode};

// ---------------------------------------------------------------------------------------------
// Examination nomenclature
// ---------------------------------------------------------------------------------------------

/// The kind of material a study holds, decided by its examination code; it selects the SOP
/// classes the archive accepts for the study.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentType {
    /// Radiology: plain radiography, CT, MR, ultrasound, angiography, fluoroscopy, nuclear
    /// medicine, mammography.
    Radiology,
    /// Dental imaging: intraoral, panoramic, cephalometric, cone-beam CT.
    Dental,
    /// Electrocardiography: resting ECG waveforms, stress ECG reports.
    Ecg,
    /// Ophthalmology and optometry: fundus and other eye photographs, OCT.
    Ophthalmology,
}

impl ContentType {
    /// Every content type, in declaration order.
    pub const ALL: [ContentType; 4] = [
        ContentType::Radiology,
        ContentType::Dental,
        ContentType::Ecg,
        ContentType::Ophthalmology,
    ];

    /// The name used in the nomenclature file, configuration and serde: `radiology`,
    /// `dental`, `ecg` or `ophthalmology`.
    pub fn name(self) -> &'static str {
        match self {
            ContentType::Radiology => "radiology",
            ContentType::Dental => "dental",
            ContentType::Ecg => "ecg",
            ContentType::Ophthalmology => "ophthalmology",
        }
    }

    /// The content type named `text` (see [`ContentType::name`]; ASCII case and surrounding
    /// spaces ignored), `None` for any other text.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        ContentType::ALL
            .into_iter()
            .find(|content_type| content_type.name().eq_ignore_ascii_case(text))
    }
}

impl fmt::Display for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One examination of the nomenclature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Examination {
    /// The 5-character code (uppercase ASCII letters and digits), e.g. `AA1AA`.
    pub code: String,
    /// The examination's name, e.g. `Kallon röntgentutkimus`.
    pub name: String,
    /// The OID of the code system the code belongs to, e.g. `1.2.246.537.6.4`.
    pub code_system: String,
    pub content_type: ContentType,
}

/// Why a nomenclature file was refused. Errors about the content name the line (counted
/// from 1, comments and blank lines included).
#[derive(Debug, thiserror::Error)]
pub enum NomenclatureError {
    /// The file could not be read.
    #[error("cannot read the examination nomenclature {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line does not have the four tab-separated fields.
    #[error(
        "line {line}: expected 4 tab-separated fields (code, name, code system OID, content \
         type), found {found}"
    )]
    Columns { line: usize, found: usize },
    /// The code is not 5 uppercase ASCII letters and digits.
    #[error(
        "line {line}: examination code {code:?} is not 5 characters of uppercase letters A-Z \
         and digits 0-9"
    )]
    Code { line: usize, code: String },
    /// The name field is empty.
    #[error("line {line}: examination {code} has an empty name")]
    EmptyName { line: usize, code: String },
    /// The code system is not an OID.
    #[error(
        "line {line}: code system {code_system:?} is not an OID (numbers separated by dots, \
         e.g. 1.2.246.537.6.4)"
    )]
    CodeSystem { line: usize, code_system: String },
    /// The content type is not one of the four names.
    #[error(
        "line {line}: content type {value:?} is not one of radiology, dental, ecg, \
         ophthalmology"
    )]
    ContentType { line: usize, value: String },
    /// A code appears twice.
    #[error("line {line}: examination code {code} is already defined on line {first_line}")]
    DuplicateCode {
        line: usize,
        code: String,
        first_line: usize,
    },
    /// The file has no examination at all (only comments and blank lines, or nothing).
    #[error("the examination nomenclature has no examinations")]
    Empty,
}

/// The examination codes the archive knows, read from a TSV file (format documented at the
/// top of `server/data/examination-codes.tsv`, the shipped sample).
#[derive(Debug, Clone)]
pub struct Nomenclature {
    examinations: BTreeMap<String, Examination>,
}

/// The shipped sample nomenclature (not the official national one).
const BUILTIN_NOMENCLATURE: &str = include_str!("../../data/examination-codes.tsv");

impl Nomenclature {
    /// The sample nomenclature shipped with Kuvasto, for trials and tests; production
    /// deployments load the official release with [`Nomenclature::load`].
    ///
    /// # Panics
    ///
    /// Only if the shipped file is broken, which a unit test rules out.
    pub fn builtin() -> Nomenclature {
        match Nomenclature::parse(BUILTIN_NOMENCLATURE) {
            Ok(nomenclature) => nomenclature,
            Err(error) => panic!("the shipped data/examination-codes.tsv is broken: {error}"),
        }
    }

    /// Reads and parses the nomenclature file at `path`.
    pub fn load(path: &Path) -> Result<Nomenclature, NomenclatureError> {
        let text = std::fs::read_to_string(path).map_err(|source| NomenclatureError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Nomenclature::parse(&text)
    }

    /// Parses the TSV text of a nomenclature: `code<TAB>name<TAB>code_system_oid<TAB>
    /// content_type` per line; lines starting with `#` are comments, blank lines are ignored,
    /// spaces around fields are trimmed, CRLF line ends and a leading byte order mark are
    /// accepted. The first error found is returned.
    pub fn parse(text: &str) -> Result<Nomenclature, NomenclatureError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut examinations = BTreeMap::new();
        let mut first_lines: BTreeMap<String, usize> = BTreeMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = raw.split('\t').map(str::trim).collect();
            let [code, name, code_system, content_type] = fields[..] else {
                return Err(NomenclatureError::Columns {
                    line,
                    found: fields.len(),
                });
            };
            if !is_code(code) {
                return Err(NomenclatureError::Code {
                    line,
                    code: code.to_string(),
                });
            }
            if name.is_empty() {
                return Err(NomenclatureError::EmptyName {
                    line,
                    code: code.to_string(),
                });
            }
            if !is_oid(code_system) {
                return Err(NomenclatureError::CodeSystem {
                    line,
                    code_system: code_system.to_string(),
                });
            }
            let content_type =
                ContentType::parse(content_type).ok_or_else(|| NomenclatureError::ContentType {
                    line,
                    value: content_type.to_string(),
                })?;
            if let Some(&first_line) = first_lines.get(code) {
                return Err(NomenclatureError::DuplicateCode {
                    line,
                    code: code.to_string(),
                    first_line,
                });
            }
            first_lines.insert(code.to_string(), line);
            examinations.insert(
                code.to_string(),
                Examination {
                    code: code.to_string(),
                    name: name.to_string(),
                    code_system: code_system.to_string(),
                    content_type,
                },
            );
        }
        if examinations.is_empty() {
            return Err(NomenclatureError::Empty);
        }
        Ok(Nomenclature { examinations })
    }

    /// The examination with exactly this code (5 characters, uppercase; no trimming or case
    /// folding).
    pub fn lookup(&self, code: &str) -> Option<&Examination> {
        self.examinations.get(code)
    }

    /// All examinations, in code order.
    pub fn iter(&self) -> impl Iterator<Item = &Examination> + '_ {
        self.examinations.values()
    }

    /// The number of examinations.
    pub fn len(&self) -> usize {
        self.examinations.len()
    }

    /// Whether there are no examinations (never true of a parsed nomenclature).
    pub fn is_empty(&self) -> bool {
        self.examinations.is_empty()
    }
}

/// The length of an examination code.
const CODE_LEN: usize = 5;

/// A character of an examination code: an uppercase ASCII letter or a digit.
fn is_code_char(c: char) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit()
}

/// Exactly 5 uppercase ASCII letters and digits.
fn is_code(text: &str) -> bool {
    text.len() == CODE_LEN && text.chars().all(is_code_char)
}

/// Numbers separated by dots, at least two, without leading zeros (`0` itself is a number).
fn is_oid(text: &str) -> bool {
    let mut arcs = 0;
    for arc in text.split('.') {
        let digits_only = !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit());
        if !digits_only || (arc.len() > 1 && arc.starts_with('0')) {
            return false;
        }
        arcs += 1;
    }
    arcs >= 2
}

// ---------------------------------------------------------------------------------------------
// Validation errors
// ---------------------------------------------------------------------------------------------

/// Why an instance was refused by the identity and examination rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// PatientID is empty.
    #[error(
        "PatientID (0010,0020) is empty; the archive requires a personal identity code or a \
         temporary patient id"
    )]
    PatientIdMissing,
    /// PatientID is neither a valid personal identity code nor a configured temporary id;
    /// `error` is the identity code parser's reason.
    #[error("PatientID {id:?} is not a valid personal identity code: {error}")]
    PatientId {
        id: String,
        error: IdentityCodeError,
    },
    /// PatientID is a temporary personal identity code (individual number 900–999) and the
    /// policy does not accept those.
    #[error(
        "PatientID {id:?} is a temporary personal identity code (individual number 900-999), \
         which this archive is configured not to accept"
    )]
    TemporaryIdentityCodeNotAccepted { id: String },
    /// StudyDescription is empty.
    #[error(
        "StudyDescription (0008,1030) is empty; it must start with the 5-character examination \
         code"
    )]
    ExaminationCodeMissing,
    /// StudyDescription does not start with 5 uppercase letters and digits.
    #[error(
        "StudyDescription {description:?} does not start with a 5-character examination code \
         of uppercase letters and digits (e.g. \"AA1AA\")"
    )]
    ExaminationCodeMalformed { description: String },
    /// The examination code is not in the nomenclature.
    #[error(
        "examination code {code:?} (the first 5 characters of StudyDescription) is not in the \
         examination nomenclature"
    )]
    ExaminationCodeUnknown { code: String },
    /// The SOP class is not accepted for the examination's content type.
    #[error(
        "SOP class {sop_class}{} is not accepted for {content_type} examinations",
        sop_class_label(sop_class)
    )]
    SopClassNotAllowed {
        content_type: ContentType,
        sop_class: String,
    },
}

impl ValidationError {
    /// The DICOM failure status the archive reports for this refusal: `0xC011` for the
    /// patient id, `0xC012` for the examination code, `0xC013` for the SOP class.
    pub fn code(&self) -> u16 {
        match self {
            ValidationError::PatientIdMissing
            | ValidationError::PatientId { .. }
            | ValidationError::TemporaryIdentityCodeNotAccepted { .. } => 0xC011,
            ValidationError::ExaminationCodeMissing
            | ValidationError::ExaminationCodeMalformed { .. }
            | ValidationError::ExaminationCodeUnknown { .. } => 0xC012,
            ValidationError::SopClassNotAllowed { .. } => 0xC013,
        }
    }
}

/// ` (Name)` for a SOP class this module lists, nothing for another UID.
fn sop_class_label(uid: &str) -> String {
    sop_class_by_uid(uid)
        .map(|class| format!(" ({})", class.name))
        .unwrap_or_default()
}

/// Why the validation configuration was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ValidationConfigError {
    /// A temporary patient id pattern is not a valid regular expression.
    #[error(
        "temporary patient id pattern {pattern:?} is not a valid regular expression: {source}"
    )]
    Pattern {
        pattern: String,
        #[source]
        source: regex::Error,
    },
    /// A temporary patient id pattern is empty (it would match nothing, as ids are never
    /// empty).
    #[error("a temporary patient id pattern is empty")]
    EmptyPattern,
}

// ---------------------------------------------------------------------------------------------
// Patient identity
// ---------------------------------------------------------------------------------------------

/// How PatientID is checked.
#[derive(Debug, Clone)]
pub struct PatientIdPolicy {
    /// Temporary ids the archive accepts besides identity codes (e.g. a hospital's
    /// `TMP[0-9]{8}`); [`PatientIdPolicy::new`] anchors each to match the whole id.
    pub temporary_patterns: Vec<regex::Regex>,
    /// Whether a temporary personal identity code (individual number 900–999) is accepted.
    pub accept_temporary_identity_codes: bool,
}

impl PatientIdPolicy {
    /// A policy from configured patterns (regular expressions, `regex` crate syntax) that
    /// must match the whole PatientID: each is wrapped in `^(?:...)$`.
    pub fn new(
        patterns: &[String],
        accept_temporary_identity_codes: bool,
    ) -> Result<Self, ValidationConfigError> {
        let temporary_patterns = patterns
            .iter()
            .map(|pattern| {
                if pattern.is_empty() {
                    return Err(ValidationConfigError::EmptyPattern);
                }
                regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|source| {
                    ValidationConfigError::Pattern {
                        pattern: pattern.clone(),
                        source,
                    }
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(PatientIdPolicy {
            temporary_patterns,
            accept_temporary_identity_codes,
        })
    }
}

/// What kind of patient id an accepted PatientID is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatientIdKind {
    /// A personal identity code (individual number 002–899).
    IdentityCode,
    /// A valid personal identity code with individual number 900–999.
    TemporaryIdentityCode,
    /// Not an identity code, but matches a configured temporary id pattern.
    Temporary,
}

/// Checks PatientID (surrounding spaces ignored) against `policy`.
///
/// An id that parses as a personal identity code is one (temporary if its individual number
/// is 900–999, refused then unless the policy accepts those). An id that does not parse is
/// accepted if a temporary pattern matches it; otherwise the parser's reason is reported.
pub fn validate_patient_id(
    policy: &PatientIdPolicy,
    patient_id: &str,
) -> Result<PatientIdKind, ValidationError> {
    let id = patient_id.trim();
    if id.is_empty() {
        return Err(ValidationError::PatientIdMissing);
    }
    match PersonalIdentityCode::parse(id) {
        Ok(code) if !code.is_temporary() => Ok(PatientIdKind::IdentityCode),
        Ok(_) if policy.accept_temporary_identity_codes => Ok(PatientIdKind::TemporaryIdentityCode),
        Ok(_) => Err(ValidationError::TemporaryIdentityCodeNotAccepted { id: id.to_string() }),
        Err(_) if policy.temporary_patterns.iter().any(|p| p.is_match(id)) => {
            Ok(PatientIdKind::Temporary)
        }
        Err(error) => Err(ValidationError::PatientId {
            id: id.to_string(),
            error,
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Examination code
// ---------------------------------------------------------------------------------------------

/// The examination named by StudyDescription (0008,1030), whose first 5 characters (after
/// leading spaces) must be a code of `nomenclature`; the rest (usually a space and the name)
/// is ignored.
pub fn examination_of<'a>(
    nomenclature: &'a Nomenclature,
    study_description: &str,
) -> Result<&'a Examination, ValidationError> {
    let description = study_description.trim_start();
    if description.trim_end().is_empty() {
        return Err(ValidationError::ExaminationCodeMissing);
    }
    let code = match description.char_indices().nth(CODE_LEN - 1) {
        Some((at, last)) => &description[..at + last.len_utf8()],
        None => "",
    };
    if !is_code(code) {
        return Err(ValidationError::ExaminationCodeMalformed {
            description: study_description.to_string(),
        });
    }
    nomenclature
        .lookup(code)
        .ok_or_else(|| ValidationError::ExaminationCodeUnknown {
            code: code.to_string(),
        })
}

// ---------------------------------------------------------------------------------------------
// SOP classes
// ---------------------------------------------------------------------------------------------

/// A storage SOP class: its UID and its PS3.6 name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SopClass {
    pub uid: &'static str,
    pub name: &'static str,
}

/// Declares the [`uids`] constants and the table of [`SopClass`]es from one list, so a UID
/// and its name are written once.
macro_rules! sop_classes {
    ($($constant:ident = $uid:literal, $name:literal;)*) => {
        /// The storage SOP class UIDs the archive accepts for some content type (values and
        /// names as in PS3.6 and `dicom_dictionary_std::uids`).
        pub mod uids {
            $(
                #[doc = $name]
                pub const $constant: &str = $uid;
            )*
        }

        /// Every SOP class named in [`uids`].
        const SOP_CLASSES: &[SopClass] = &[$(SopClass { uid: uids::$constant, name: $name }),*];
    };
}

sop_classes! {
    // Reports, key images, presentation states and captures.
    BASIC_TEXT_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.11", "Basic Text SR Storage";
    ENHANCED_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.22", "Enhanced SR Storage";
    COMPREHENSIVE_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33", "Comprehensive SR Storage";
    KEY_OBJECT_SELECTION_DOCUMENT_STORAGE = "1.2.840.10008.5.1.4.1.1.88.59",
        "Key Object Selection Document Storage";
    ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1", "Encapsulated PDF Storage";
    GRAYSCALE_SOFTCOPY_PRESENTATION_STATE_STORAGE = "1.2.840.10008.5.1.4.1.1.11.1",
        "Grayscale Softcopy Presentation State Storage";
    COLOR_SOFTCOPY_PRESENTATION_STATE_STORAGE = "1.2.840.10008.5.1.4.1.1.11.2",
        "Color Softcopy Presentation State Storage";
    SECONDARY_CAPTURE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7",
        "Secondary Capture Image Storage";
    MULTI_FRAME_SINGLE_BIT_SECONDARY_CAPTURE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7.1",
        "Multi-frame Single Bit Secondary Capture Image Storage";
    MULTI_FRAME_GRAYSCALE_BYTE_SECONDARY_CAPTURE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7.2",
        "Multi-frame Grayscale Byte Secondary Capture Image Storage";
    MULTI_FRAME_GRAYSCALE_WORD_SECONDARY_CAPTURE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7.3",
        "Multi-frame Grayscale Word Secondary Capture Image Storage";
    MULTI_FRAME_TRUE_COLOR_SECONDARY_CAPTURE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7.4",
        "Multi-frame True Color Secondary Capture Image Storage";

    // Projection radiography.
    COMPUTED_RADIOGRAPHY_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1",
        "Computed Radiography Image Storage";
    DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1",
        "Digital X-Ray Image Storage - For Presentation";
    DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1",
        "Digital X-Ray Image Storage - For Processing";
    DIGITAL_MAMMOGRAPHY_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2",
        "Digital Mammography X-Ray Image Storage - For Presentation";
    DIGITAL_MAMMOGRAPHY_X_RAY_IMAGE_STORAGE_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1",
        "Digital Mammography X-Ray Image Storage - For Processing";
    DIGITAL_INTRA_ORAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.3",
        "Digital Intra-Oral X-Ray Image Storage - For Presentation";
    DIGITAL_INTRA_ORAL_X_RAY_IMAGE_STORAGE_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.3.1",
        "Digital Intra-Oral X-Ray Image Storage - For Processing";
    BREAST_TOMOSYNTHESIS_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.13.1.3",
        "Breast Tomosynthesis Image Storage";
    BREAST_PROJECTION_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.13.1.4",
        "Breast Projection X-Ray Image Storage - For Presentation";
    BREAST_PROJECTION_X_RAY_IMAGE_STORAGE_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.13.1.5",
        "Breast Projection X-Ray Image Storage - For Processing";

    // Cross-sectional imaging.
    CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2", "CT Image Storage";
    ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1", "Enhanced CT Image Storage";
    X_RAY_3D_CRANIOFACIAL_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.13.1.2",
        "X-Ray 3D Craniofacial Image Storage";
    MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4", "MR Image Storage";
    ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1", "Enhanced MR Image Storage";
    ULTRASOUND_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1", "Ultrasound Image Storage";
    ULTRASOUND_MULTI_FRAME_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1",
        "Ultrasound Multi-frame Image Storage";
    ENHANCED_US_VOLUME_STORAGE = "1.2.840.10008.5.1.4.1.1.6.2", "Enhanced US Volume Storage";

    // Angiography and fluoroscopy.
    X_RAY_ANGIOGRAPHIC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.12.1",
        "X-Ray Angiographic Image Storage";
    ENHANCED_XA_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.12.1.1", "Enhanced XA Image Storage";
    X_RAY_RADIOFLUOROSCOPIC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.12.2",
        "X-Ray Radiofluoroscopic Image Storage";
    ENHANCED_XRF_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.12.2.1", "Enhanced XRF Image Storage";
    X_RAY_3D_ANGIOGRAPHIC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.13.1.1",
        "X-Ray 3D Angiographic Image Storage";

    // Nuclear medicine.
    NUCLEAR_MEDICINE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20", "Nuclear Medicine Image Storage";
    POSITRON_EMISSION_TOMOGRAPHY_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128",
        "Positron Emission Tomography Image Storage";
    ENHANCED_PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.130", "Enhanced PET Image Storage";

    // Structured reports of the modalities.
    X_RAY_RADIATION_DOSE_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.67",
        "X-Ray Radiation Dose SR Storage";
    RADIOPHARMACEUTICAL_RADIATION_DOSE_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.68",
        "Radiopharmaceutical Radiation Dose SR Storage";
    ENHANCED_X_RAY_RADIATION_DOSE_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.76",
        "Enhanced X-Ray Radiation Dose SR Storage";
    MAMMOGRAPHY_CAD_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.50", "Mammography CAD SR Storage";

    // Visible light.
    VL_PHOTOGRAPHIC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.4",
        "VL Photographic Image Storage";

    // ECG.
    TWELVE_LEAD_ECG_WAVEFORM_STORAGE = "1.2.840.10008.5.1.4.1.1.9.1.1",
        "12-lead ECG Waveform Storage";
    GENERAL_ECG_WAVEFORM_STORAGE = "1.2.840.10008.5.1.4.1.1.9.1.2", "General ECG Waveform Storage";
    AMBULATORY_ECG_WAVEFORM_STORAGE = "1.2.840.10008.5.1.4.1.1.9.1.3",
        "Ambulatory ECG Waveform Storage";
    GENERAL_32BIT_ECG_WAVEFORM_STORAGE = "1.2.840.10008.5.1.4.1.1.9.1.4",
        "General 32-bit ECG Waveform Storage";

    // Ophthalmology.
    OPHTHALMIC_PHOTOGRAPHY_8_BIT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.5.1",
        "Ophthalmic Photography 8 Bit Image Storage";
    OPHTHALMIC_PHOTOGRAPHY_16_BIT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.5.2",
        "Ophthalmic Photography 16 Bit Image Storage";
    OPHTHALMIC_TOMOGRAPHY_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.5.4",
        "Ophthalmic Tomography Image Storage";
    WIDE_FIELD_OPHTHALMIC_PHOTOGRAPHY_STEREOGRAPHIC_PROJECTION_IMAGE_STORAGE =
        "1.2.840.10008.5.1.4.1.1.77.1.5.5",
        "Wide Field Ophthalmic Photography Stereographic Projection Image Storage";
    WIDE_FIELD_OPHTHALMIC_PHOTOGRAPHY_3D_COORDINATES_IMAGE_STORAGE =
        "1.2.840.10008.5.1.4.1.1.77.1.5.6",
        "Wide Field Ophthalmic Photography 3D Coordinates Image Storage";
    OPHTHALMIC_OCT_EN_FACE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.5.7",
        "Ophthalmic Optical Coherence Tomography En Face Image Storage";
    OPHTHALMIC_OCT_B_SCAN_VOLUME_ANALYSIS_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.5.8",
        "Ophthalmic Optical Coherence Tomography B-scan Volume Analysis Storage";
    OPHTHALMIC_VISUAL_FIELD_STATIC_PERIMETRY_MEASUREMENTS_STORAGE = "1.2.840.10008.5.1.4.1.1.80.1",
        "Ophthalmic Visual Field Static Perimetry Measurements Storage";
}

/// Accepted for every content type: reports, key images, presentation states, captures.
const COMMON_SOP_CLASSES: &[&str] = &[
    uids::BASIC_TEXT_SR_STORAGE,
    uids::ENHANCED_SR_STORAGE,
    uids::COMPREHENSIVE_SR_STORAGE,
    uids::KEY_OBJECT_SELECTION_DOCUMENT_STORAGE,
    uids::ENCAPSULATED_PDF_STORAGE,
    uids::GRAYSCALE_SOFTCOPY_PRESENTATION_STATE_STORAGE,
    uids::COLOR_SOFTCOPY_PRESENTATION_STATE_STORAGE,
    uids::SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::MULTI_FRAME_SINGLE_BIT_SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::MULTI_FRAME_GRAYSCALE_BYTE_SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::MULTI_FRAME_GRAYSCALE_WORD_SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::MULTI_FRAME_TRUE_COLOR_SECONDARY_CAPTURE_IMAGE_STORAGE,
];

/// Radiology adds the radiological modalities and their dose and CAD reports.
const RADIOLOGY_SOP_CLASSES: &[&str] = &[
    uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE,
    uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
    uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PROCESSING,
    uids::DIGITAL_MAMMOGRAPHY_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
    uids::DIGITAL_MAMMOGRAPHY_X_RAY_IMAGE_STORAGE_FOR_PROCESSING,
    uids::BREAST_TOMOSYNTHESIS_IMAGE_STORAGE,
    uids::BREAST_PROJECTION_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
    uids::BREAST_PROJECTION_X_RAY_IMAGE_STORAGE_FOR_PROCESSING,
    uids::CT_IMAGE_STORAGE,
    uids::ENHANCED_CT_IMAGE_STORAGE,
    uids::MR_IMAGE_STORAGE,
    uids::ENHANCED_MR_IMAGE_STORAGE,
    uids::ULTRASOUND_IMAGE_STORAGE,
    uids::ULTRASOUND_MULTI_FRAME_IMAGE_STORAGE,
    uids::ENHANCED_US_VOLUME_STORAGE,
    uids::X_RAY_ANGIOGRAPHIC_IMAGE_STORAGE,
    uids::ENHANCED_XA_IMAGE_STORAGE,
    uids::X_RAY_RADIOFLUOROSCOPIC_IMAGE_STORAGE,
    uids::ENHANCED_XRF_IMAGE_STORAGE,
    uids::X_RAY_3D_ANGIOGRAPHIC_IMAGE_STORAGE,
    uids::NUCLEAR_MEDICINE_IMAGE_STORAGE,
    uids::POSITRON_EMISSION_TOMOGRAPHY_IMAGE_STORAGE,
    uids::ENHANCED_PET_IMAGE_STORAGE,
    uids::X_RAY_RADIATION_DOSE_SR_STORAGE,
    uids::RADIOPHARMACEUTICAL_RADIATION_DOSE_SR_STORAGE,
    uids::ENHANCED_X_RAY_RADIATION_DOSE_SR_STORAGE,
    uids::MAMMOGRAPHY_CAD_SR_STORAGE,
];

/// Dental adds intraoral, panoramic and cephalometric radiography (DX, IO and, from
/// phosphor-plate readers, CR), cone-beam CT (as CT, Enhanced CT or X-Ray 3D Craniofacial),
/// clinical photographs and dose reports.
const DENTAL_SOP_CLASSES: &[&str] = &[
    uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE,
    uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
    uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PROCESSING,
    uids::DIGITAL_INTRA_ORAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
    uids::DIGITAL_INTRA_ORAL_X_RAY_IMAGE_STORAGE_FOR_PROCESSING,
    uids::CT_IMAGE_STORAGE,
    uids::ENHANCED_CT_IMAGE_STORAGE,
    uids::X_RAY_3D_CRANIOFACIAL_IMAGE_STORAGE,
    uids::VL_PHOTOGRAPHIC_IMAGE_STORAGE,
    uids::X_RAY_RADIATION_DOSE_SR_STORAGE,
];

/// ECG adds the ECG waveforms (a stress ECG arrives as Encapsulated PDF, which is common).
const ECG_SOP_CLASSES: &[&str] = &[
    uids::TWELVE_LEAD_ECG_WAVEFORM_STORAGE,
    uids::GENERAL_ECG_WAVEFORM_STORAGE,
    uids::AMBULATORY_ECG_WAVEFORM_STORAGE,
    uids::GENERAL_32BIT_ECG_WAVEFORM_STORAGE,
];

/// Ophthalmology adds eye photographs, OCT and static perimetry.
const OPHTHALMOLOGY_SOP_CLASSES: &[&str] = &[
    uids::OPHTHALMIC_PHOTOGRAPHY_8_BIT_IMAGE_STORAGE,
    uids::OPHTHALMIC_PHOTOGRAPHY_16_BIT_IMAGE_STORAGE,
    uids::WIDE_FIELD_OPHTHALMIC_PHOTOGRAPHY_STEREOGRAPHIC_PROJECTION_IMAGE_STORAGE,
    uids::WIDE_FIELD_OPHTHALMIC_PHOTOGRAPHY_3D_COORDINATES_IMAGE_STORAGE,
    uids::OPHTHALMIC_TOMOGRAPHY_IMAGE_STORAGE,
    uids::OPHTHALMIC_OCT_EN_FACE_IMAGE_STORAGE,
    uids::OPHTHALMIC_OCT_B_SCAN_VOLUME_ANALYSIS_STORAGE,
    uids::OPHTHALMIC_VISUAL_FIELD_STATIC_PERIMETRY_MEASUREMENTS_STORAGE,
    uids::VL_PHOTOGRAPHIC_IMAGE_STORAGE,
];

/// The SOP class UIDs only `content_type` adds to the common ones.
fn specific_sop_classes(content_type: ContentType) -> &'static [&'static str] {
    match content_type {
        ContentType::Radiology => RADIOLOGY_SOP_CLASSES,
        ContentType::Dental => DENTAL_SOP_CLASSES,
        ContentType::Ecg => ECG_SOP_CLASSES,
        ContentType::Ophthalmology => OPHTHALMOLOGY_SOP_CLASSES,
    }
}

/// The UIDs of the SOP classes accepted for `content_type`: the common ones, then its own.
fn allowed_uids(content_type: ContentType) -> impl Iterator<Item = &'static str> {
    COMMON_SOP_CLASSES
        .iter()
        .chain(specific_sop_classes(content_type))
        .copied()
}

/// Every storage SOP class accepted for `content_type`: the common ones, then its own.
pub fn allowed_sop_classes(content_type: ContentType) -> impl Iterator<Item = &'static SopClass> {
    allowed_uids(content_type).filter_map(sop_class_by_uid)
}

/// The SOP class of [`uids`] with this UID (NUL or space padding ignored).
pub fn sop_class_by_uid(uid: &str) -> Option<&'static SopClass> {
    let uid = trim_uid(uid);
    SOP_CLASSES.iter().find(|class| class.uid == uid)
}

/// A UID as it may come from a DICOM value: NUL or space padding removed.
fn trim_uid(uid: &str) -> &str {
    uid.trim_matches(|c: char| c == '\0' || c == ' ')
}

/// Whether instances of `sop_class_uid` are accepted in a study of `content_type` (NUL or
/// space padding of the UID ignored).
pub fn sop_class_allowed(content_type: ContentType, sop_class_uid: &str) -> bool {
    let uid = trim_uid(sop_class_uid);
    allowed_uids(content_type).any(|allowed| allowed == uid)
}

/// [`sop_class_allowed`], as a [`ValidationError::SopClassNotAllowed`] when not.
pub fn check_sop_class(
    content_type: ContentType,
    sop_class_uid: &str,
) -> Result<(), ValidationError> {
    if sop_class_allowed(content_type, sop_class_uid) {
        Ok(())
    } else {
        Err(ValidationError::SopClassNotAllowed {
            content_type,
            sop_class: trim_uid(sop_class_uid).to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    // --- Nomenclature ------------------------------------------------------------------------

    #[test]
    fn the_shipped_nomenclature_parses_and_holds_the_known_codes() {
        let nomenclature = Nomenclature::builtin();
        assert!(
            (60..=120).contains(&nomenclature.len()),
            "{} rows",
            nomenclature.len()
        );
        assert!(!nomenclature.is_empty());
        for (code, content_type, code_system) in [
            ("AA1AA", ContentType::Radiology, "1.2.246.537.6.4"),
            ("NA1AA", ContentType::Radiology, "1.2.246.537.6.4"),
            ("EB1AA", ContentType::Dental, "1.2.246.537.6.33"),
            ("EB1HA", ContentType::Dental, "1.2.246.537.6.33"),
            ("EB1MA", ContentType::Dental, "1.2.246.537.6.33"),
        ] {
            let examination = nomenclature
                .lookup(code)
                .unwrap_or_else(|| panic!("{code} missing"));
            assert_eq!(examination.code, code);
            assert_eq!(examination.content_type, content_type, "{code}");
            assert_eq!(examination.code_system, code_system, "{code}");
            assert!(!examination.name.is_empty());
        }
        assert!(nomenclature.lookup("aa1aa").is_none(), "lookup is exact");
        assert!(nomenclature.lookup("AA1AA ").is_none(), "lookup is exact");
    }

    #[test]
    fn the_shipped_nomenclature_is_consistent() {
        let nomenclature = Nomenclature::builtin();
        let mut seen = HashSet::new();
        for examination in nomenclature.iter() {
            seen.insert(examination.content_type);
            let expected_system = match examination.content_type {
                ContentType::Radiology => "1.2.246.537.6.4",
                ContentType::Dental => "1.2.246.537.6.33",
                ContentType::Ecg | ContentType::Ophthalmology => "1.2.246.537.6.2",
            };
            assert_eq!(examination.code_system, expected_system, "{examination:?}");
            if matches!(
                examination.content_type,
                ContentType::Radiology | ContentType::Dental
            ) {
                let shape: Vec<bool> = examination
                    .code
                    .chars()
                    .map(|c| c.is_ascii_digit())
                    .collect();
                assert_eq!(
                    shape,
                    [false, false, true, false, false],
                    "{} is not letter-letter-digit-letter-letter",
                    examination.code
                );
            }
        }
        assert_eq!(seen.len(), ContentType::ALL.len(), "every content type");
        // The file's documentation is there, and says it is a sample.
        assert!(BUILTIN_NOMENCLATURE.contains("SAMPLE"));
        assert!(BUILTIN_NOMENCLATURE.contains("archive.examination_codes_file"));
    }

    #[test]
    fn parse_skips_comments_blank_lines_and_accepts_crlf_bom_and_other_shapes() {
        let text = concat!(
            "\u{feff}# comment\r\n",
            "\r\n",
            "   \r\n",
            "  # indented comment\r\n",
            "AA1AA\tKallo\t1.2.246.537.6.4\tradiology\r\n",
            "ABC12 \t Lepo-EKG \t1.2.246.537.6.2\tECG\r\n",
        );
        let nomenclature = Nomenclature::parse(text).unwrap();
        assert_eq!(nomenclature.len(), 2);
        let ecg = nomenclature.lookup("ABC12").unwrap();
        assert_eq!(ecg.name, "Lepo-EKG");
        assert_eq!(ecg.code_system, "1.2.246.537.6.2");
        assert_eq!(ecg.content_type, ContentType::Ecg);
        assert_eq!(
            nomenclature.lookup("AA1AA").unwrap().content_type,
            ContentType::Radiology
        );
    }

    const GOOD: &str = "# header\nAA1AA\tKallo\t1.2.246.537.6.4\tradiology\n";

    fn parse_error(bad_line: &str) -> NomenclatureError {
        Nomenclature::parse(&format!("{GOOD}\n{bad_line}\n")).unwrap_err()
    }

    #[test]
    fn each_malformed_line_is_reported_with_its_line_number() {
        // The bad line is line 4: comment, AA1AA, blank line.
        assert!(matches!(
            parse_error("NA1AA\tKaularanka\t1.2.246.537.6.4"),
            NomenclatureError::Columns { line: 4, found: 3 }
        ));
        assert!(matches!(
            parse_error("NA1AA Kaularanka 1.2.246.537.6.4 radiology"),
            NomenclatureError::Columns { line: 4, found: 1 }
        ));
        assert!(matches!(
            parse_error("NA1AA\tKaularanka\t1.2.246.537.6.4\tradiology\textra"),
            NomenclatureError::Columns { line: 4, found: 5 }
        ));
        for code in ["NA1A", "NA1AAA", "na1aa", "NA-AA", "ÄA1AA", ""] {
            match parse_error(&format!("{code}\tKaularanka\t1.2.246.537.6.4\tradiology")) {
                NomenclatureError::Code {
                    line: 4,
                    code: found,
                } => assert_eq!(found, code),
                other => panic!("{code:?}: {other:?}"),
            }
        }
        assert!(matches!(
            parse_error("NA1AA\t \t1.2.246.537.6.4\tradiology"),
            NomenclatureError::EmptyName { line: 4, .. }
        ));
        for oid in ["", "1", "1..2", "1.2.x", "1.02.3", "1.2."] {
            assert!(
                matches!(
                    parse_error(&format!("NA1AA\tKaularanka\t{oid}\tradiology")),
                    NomenclatureError::CodeSystem { line: 4, .. }
                ),
                "{oid:?}"
            );
        }
        match parse_error("NA1AA\tKaularanka\t1.2.246.537.6.4\tcardiology") {
            NomenclatureError::ContentType { line: 4, value } => assert_eq!(value, "cardiology"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_error("AA1AA\tKallo uudestaan\t1.2.246.537.6.4\tradiology"),
            NomenclatureError::DuplicateCode { line: 4, first_line: 2, ref code } if code == "AA1AA"
        ));
        for empty in ["", "\n\n", "# only a comment\n\n# another\n"] {
            assert!(
                matches!(Nomenclature::parse(empty), Err(NomenclatureError::Empty)),
                "{empty:?}"
            );
        }
    }

    #[test]
    fn parse_errors_read_as_sentences_naming_line_and_value() {
        let message = parse_error("na1aa\tKaularanka\t1.2.246.537.6.4\tradiology").to_string();
        assert!(message.starts_with("line 4: "), "{message}");
        assert!(message.contains("\"na1aa\""), "{message}");
        let message = parse_error("NA1AA\tKaularanka\t1.2.246.537.6.4\tcardiology").to_string();
        assert!(message.contains("\"cardiology\""), "{message}");
        let message = parse_error("AA1AA\tKallo uudestaan\t1.2.246.537.6.4\tradiology").to_string();
        assert!(message.contains("line 2"), "{message}");
    }

    #[test]
    fn load_reads_a_file_and_names_the_path_it_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("codes.tsv");
        std::fs::write(&path, GOOD).unwrap();
        let nomenclature = Nomenclature::load(&path).unwrap();
        assert_eq!(nomenclature.len(), 1);

        let missing = dir.path().join("missing.tsv");
        let error = Nomenclature::load(&missing).unwrap_err();
        assert!(matches!(error, NomenclatureError::Io { .. }), "{error:?}");
        assert!(
            error.to_string().contains(&missing.display().to_string()),
            "{error}"
        );
    }

    #[test]
    fn content_type_names_round_trip() {
        for content_type in ContentType::ALL {
            assert_eq!(ContentType::parse(content_type.name()), Some(content_type));
            assert_eq!(content_type.to_string(), content_type.name());
            let json = serde_json::to_string(&content_type).unwrap();
            assert_eq!(json, format!("\"{}\"", content_type.name()));
            assert_eq!(
                serde_json::from_str::<ContentType>(&json).unwrap(),
                content_type
            );
        }
        assert_eq!(
            ContentType::parse(" Ophthalmology "),
            Some(ContentType::Ophthalmology)
        );
        assert_eq!(ContentType::parse("ekg"), None);
        assert_eq!(ContentType::parse(""), None);
    }

    // --- Patient identity --------------------------------------------------------------------

    /// Valid codes with an individual number below 900.
    const PERMANENT_CODES: &[&str] = &[
        "131052-308T",
        "311299U450R",
        "291224B123J",
        "150601F899S",
        "290200A002C",
        "010101+123N",
    ];

    /// Valid codes with an individual number 900–999 (temporary codes).
    const TEMPORARY_CODES: &[&str] = &[
        "010594Y9032",
        "010594Y9021",
        "020594X903P",
        "020594X902N",
        "030594W903B",
        "030694W9024",
        "040594V9030",
        "040594V902Y",
        "050594U903M",
        "050594U902L",
        "010516B903X",
        "010516B902W",
        "020516C903K",
        "020516C902J",
        "030516D9037",
        "030516D9026",
        "010501E9032",
        "020502E902X",
        "020503F9037",
        "020504A902E",
        "020504B904H",
    ];

    fn policy(patterns: &[&str], accept_temporary: bool) -> PatientIdPolicy {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        PatientIdPolicy::new(&patterns, accept_temporary).unwrap()
    }

    #[test]
    fn valid_identity_codes_are_accepted() {
        for accept_temporary in [false, true] {
            let policy = policy(&[], accept_temporary);
            for code in PERMANENT_CODES {
                assert_eq!(
                    validate_patient_id(&policy, code),
                    Ok(PatientIdKind::IdentityCode),
                    "{code}"
                );
            }
        }
        let policy = policy(&[], false);
        assert_eq!(
            validate_patient_id(&policy, " 131052-308t "),
            Ok(PatientIdKind::IdentityCode),
            "spaces and case as the parser allows"
        );
    }

    #[test]
    fn temporary_identity_codes_follow_the_policy() {
        let accepting = policy(&[], true);
        let refusing = policy(&[], false);
        for code in TEMPORARY_CODES {
            assert_eq!(
                validate_patient_id(&accepting, code),
                Ok(PatientIdKind::TemporaryIdentityCode),
                "{code}"
            );
            assert_eq!(
                validate_patient_id(&refusing, code),
                Err(ValidationError::TemporaryIdentityCodeNotAccepted {
                    id: code.to_string()
                }),
                "{code}"
            );
        }
    }

    #[test]
    fn broken_identity_codes_report_the_parser_reason() {
        let policy = policy(&["TMP[0-9]{8}"], true);
        let reason = |id: &str| match validate_patient_id(&policy, id) {
            Err(ValidationError::PatientId {
                id: reported,
                error,
            }) => {
                assert_eq!(reported, id);
                error
            }
            other => panic!("{id}: {other:?}"),
        };
        assert_eq!(
            reason("131052-308X"),
            IdentityCodeError::CheckCharacter {
                expected: 'T',
                found: 'X'
            }
        );
        assert!(matches!(
            reason("310299-123X"),
            IdentityCodeError::BirthDate { .. }
        ));
        assert_eq!(
            reason("131052G308T"),
            IdentityCodeError::CenturySign { sign: 'G' }
        );
        assert_eq!(reason("TMP123"), IdentityCodeError::Length { len: 6 });
        for empty in ["", "   "] {
            assert_eq!(
                validate_patient_id(&policy, empty),
                Err(ValidationError::PatientIdMissing)
            );
        }
    }

    #[test]
    fn temporary_patterns_must_match_the_whole_id() {
        let policy = policy(&["TMP[0-9]{8}", "X|Y[0-9]+"], false);
        assert_eq!(
            validate_patient_id(&policy, "TMP12345678"),
            Ok(PatientIdKind::Temporary)
        );
        assert_eq!(
            validate_patient_id(&policy, "Y42"),
            Ok(PatientIdKind::Temporary)
        );
        assert_eq!(
            validate_patient_id(&policy, "X"),
            Ok(PatientIdKind::Temporary)
        );
        for refused in ["TMP123", "xTMP12345678", "TMP12345678x", "XY42", "Xa"] {
            assert!(
                matches!(
                    validate_patient_id(&policy, refused),
                    Err(ValidationError::PatientId { .. })
                ),
                "{refused}"
            );
        }
        // Patterns are consulted only when the id is not an identity code: a temporary
        // identity code stays refused even if a pattern would match it...
        let broad = self::policy(&[".*"], false);
        assert_eq!(
            validate_patient_id(&broad, "010594Y9021"),
            Err(ValidationError::TemporaryIdentityCodeNotAccepted {
                id: "010594Y9021".into()
            })
        );
        // ...while a broken one is accepted as the temporary id the pattern allows.
        assert_eq!(
            validate_patient_id(&broad, "131052-308X"),
            Ok(PatientIdKind::Temporary)
        );
    }

    #[test]
    fn bad_patterns_are_refused_naming_the_pattern() {
        let error = PatientIdPolicy::new(&["TMP[0-9]{8}".into(), "TMP[".into()], true).unwrap_err();
        match &error {
            ValidationConfigError::Pattern { pattern, .. } => assert_eq!(pattern, "TMP["),
            other => panic!("{other:?}"),
        }
        assert!(error.to_string().contains("\"TMP[\""), "{error}");
        assert!(matches!(
            PatientIdPolicy::new(&[String::new()], true),
            Err(ValidationConfigError::EmptyPattern)
        ));
        let policy = PatientIdPolicy::new(&[], false).unwrap();
        assert!(policy.temporary_patterns.is_empty());
        assert!(!policy.accept_temporary_identity_codes);
    }

    // --- Examination code --------------------------------------------------------------------

    #[test]
    fn the_examination_is_read_from_the_first_five_characters() {
        let nomenclature = Nomenclature::builtin();
        let examination = examination_of(&nomenclature, "AA1AA Kallon röntgen").unwrap();
        assert_eq!(examination.code, "AA1AA");
        assert_eq!(examination.content_type, ContentType::Radiology);
        assert_eq!(
            examination_of(&nomenclature, "  NA1AA").unwrap().code,
            "NA1AA"
        );
        assert_eq!(
            examination_of(&nomenclature, "EB1HA").unwrap().code,
            "EB1HA"
        );
        assert_eq!(
            examination_of(&nomenclature, "EB1MAKefalo").unwrap().code,
            "EB1MA",
            "only the first 5 characters count"
        );
        for missing in ["", "   "] {
            assert_eq!(
                examination_of(&nomenclature, missing),
                Err(ValidationError::ExaminationCodeMissing)
            );
        }
        for malformed in ["AA1", "aa1aa x", "AA1 AA", "AA1Aä", "ÄA1AA Kallo", "AA-AA"] {
            assert_eq!(
                examination_of(&nomenclature, malformed),
                Err(ValidationError::ExaminationCodeMalformed {
                    description: malformed.to_string()
                }),
                "{malformed}"
            );
        }
        assert_eq!(
            examination_of(&nomenclature, "ZZ9ZZ test"),
            Err(ValidationError::ExaminationCodeUnknown {
                code: "ZZ9ZZ".into()
            })
        );
    }

    // --- SOP classes -------------------------------------------------------------------------

    #[test]
    fn sop_classes_follow_the_content_type() {
        use ContentType::*;
        assert!(sop_class_allowed(Radiology, uids::CT_IMAGE_STORAGE));
        assert!(sop_class_allowed(Dental, uids::CT_IMAGE_STORAGE));
        assert!(!sop_class_allowed(
            Radiology,
            uids::TWELVE_LEAD_ECG_WAVEFORM_STORAGE
        ));
        assert!(sop_class_allowed(
            Ecg,
            uids::TWELVE_LEAD_ECG_WAVEFORM_STORAGE
        ));
        assert!(sop_class_allowed(
            Ophthalmology,
            uids::OPHTHALMIC_PHOTOGRAPHY_8_BIT_IMAGE_STORAGE
        ));
        assert!(!sop_class_allowed(
            Dental,
            uids::OPHTHALMIC_PHOTOGRAPHY_8_BIT_IMAGE_STORAGE
        ));
        assert!(!sop_class_allowed(Ecg, uids::CT_IMAGE_STORAGE));
        assert!(!sop_class_allowed(Ophthalmology, uids::MR_IMAGE_STORAGE));
        assert!(sop_class_allowed(
            Dental,
            uids::DIGITAL_INTRA_ORAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION
        ));
        assert!(!sop_class_allowed(
            Radiology,
            uids::DIGITAL_INTRA_ORAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION
        ));
        for content_type in ContentType::ALL {
            assert!(sop_class_allowed(
                content_type,
                uids::ENCAPSULATED_PDF_STORAGE
            ));
            assert!(sop_class_allowed(
                content_type,
                uids::KEY_OBJECT_SELECTION_DOCUMENT_STORAGE
            ));
            assert!(!sop_class_allowed(content_type, "1.2.3.4"));
            assert!(!sop_class_allowed(content_type, ""));
            // A prefix or extension of an accepted UID is another UID.
            assert!(!sop_class_allowed(
                content_type,
                "1.2.840.10008.5.1.4.1.1.104"
            ));
            assert!(!sop_class_allowed(
                content_type,
                "1.2.840.10008.5.1.4.1.1.104.11"
            ));
        }
        assert!(
            sop_class_allowed(Radiology, "1.2.840.10008.5.1.4.1.1.2\0"),
            "DICOM UID padding is ignored"
        );
        assert_eq!(
            check_sop_class(Ecg, uids::TWELVE_LEAD_ECG_WAVEFORM_STORAGE),
            Ok(())
        );
        assert_eq!(
            check_sop_class(Radiology, uids::TWELVE_LEAD_ECG_WAVEFORM_STORAGE),
            Err(ValidationError::SopClassNotAllowed {
                content_type: Radiology,
                sop_class: uids::TWELVE_LEAD_ECG_WAVEFORM_STORAGE.into()
            })
        );
    }

    #[test]
    fn every_listed_sop_class_is_the_standard_storage_class_of_that_name() {
        use dicom_core::dictionary::UidDictionary;
        for content_type in ContentType::ALL {
            let uids: Vec<&str> = allowed_uids(content_type).collect();
            let classes: Vec<&SopClass> = allowed_sop_classes(content_type).collect();
            assert_eq!(classes.len(), uids.len(), "every listed UID is named");
            let mut seen = HashSet::new();
            for class in classes {
                assert!(seen.insert(class.uid), "{} listed twice", class.uid);
                let entry = dicom_dictionary_std::StandardSopClassDictionary
                    .by_uid(class.uid)
                    .unwrap_or_else(|| panic!("{} is not a standard SOP class", class.uid));
                assert_eq!(entry.name, class.name, "{}", class.uid);
                assert!(entry.name.contains("Storage"), "{}", entry.name);
                assert!(!entry.retired, "{}", entry.name);
            }
        }
        assert_eq!(
            sop_class_by_uid(uids::OPHTHALMIC_TOMOGRAPHY_IMAGE_STORAGE).map(|c| c.name),
            Some("Ophthalmic Tomography Image Storage")
        );
        assert_eq!(sop_class_by_uid("1.2.3"), None);
    }

    // --- Errors ------------------------------------------------------------------------------

    #[test]
    fn each_error_names_the_offending_value_and_its_status() {
        let check = |error: ValidationError, value: &str, status: u16| {
            let message = error.to_string();
            assert!(message.contains(value), "{message:?} lacks {value:?}");
            assert!(!message.contains('\n'), "{message:?}");
            assert_eq!(error.code(), status, "{error:?}");
        };
        check(
            ValidationError::PatientIdMissing,
            "PatientID (0010,0020)",
            0xC011,
        );
        check(
            ValidationError::PatientId {
                id: "131052-308X".into(),
                error: IdentityCodeError::CheckCharacter {
                    expected: 'T',
                    found: 'X',
                },
            },
            "\"131052-308X\"",
            0xC011,
        );
        check(
            ValidationError::TemporaryIdentityCodeNotAccepted {
                id: "010594Y9021".into(),
            },
            "\"010594Y9021\"",
            0xC011,
        );
        check(
            ValidationError::ExaminationCodeMissing,
            "StudyDescription (0008,1030)",
            0xC012,
        );
        check(
            ValidationError::ExaminationCodeMalformed {
                description: "aa1aa x".into(),
            },
            "\"aa1aa x\"",
            0xC012,
        );
        check(
            ValidationError::ExaminationCodeUnknown {
                code: "ZZ9ZZ".into(),
            },
            "\"ZZ9ZZ\"",
            0xC012,
        );
        check(
            ValidationError::SopClassNotAllowed {
                content_type: ContentType::Radiology,
                sop_class: uids::TWELVE_LEAD_ECG_WAVEFORM_STORAGE.into(),
            },
            "1.2.840.10008.5.1.4.1.1.9.1.1 (12-lead ECG Waveform Storage) is not accepted for \
             radiology examinations",
            0xC013,
        );
        check(
            ValidationError::SopClassNotAllowed {
                content_type: ContentType::Dental,
                sop_class: "1.2.3.4".into(),
            },
            "SOP class 1.2.3.4 is not accepted for dental",
            0xC013,
        );
    }

    #[test]
    fn the_patient_id_message_reads_as_specified() {
        let policy = policy(&[], false);
        let error = validate_patient_id(&policy, "131052-308X").unwrap_err();
        assert_eq!(
            error.to_string(),
            "PatientID \"131052-308X\" is not a valid personal identity code: check character \
             'X' does not match the code (expected 'T')"
        );
    }
}
