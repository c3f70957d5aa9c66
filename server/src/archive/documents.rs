//! Imaging documents: the request (referral), the visit/examination note and the report that
//! the national Patient Data Repository announces to the archive, and their JSON codec.
//!
//! # What they are for
//!
//! The archive links studies to documents first (`../shared/DOMAIN.md`, rule 1): the request,
//! the visit note and any report are stored in the Patient Data Repository first, and a DICOM
//! study is archived only once its request or visit note is there. The repository announces
//! each document to the archive; the archive keeps a [`Document`] per announcement (metadata,
//! and the content when sent) and links studies to documents by the **service event
//! identifier** (an OID shared by the documents and the study), or by the **Accession
//! Number** and the **Study Instance UID** on the DICOM side. The patient sees the documents
//! tied to their images in their own portal; the register and the author organisation decide
//! who may read them (rules 2–4).
//!
//! # The JSON shape
//!
//! An announcement is a FHIR R4 `DocumentReference` resource. [`parse_document`] reads it;
//! [`to_fhir_json`] writes a [`Document`] back in the same shape (content as a `url`, never
//! inline). Fields the archive does not use (FHIR resources carry many: `id`, `meta`,
//! `docStatus`, other codings, …) are ignored.
//!
//! ```json
//! {
//!   "resourceType": "DocumentReference",
//!   "masterIdentifier": { "system": "urn:ietf:rfc:3986",
//!                         "value": "urn:oid:1.2.246.10.8282.2024.17" },
//!   "status": "current",
//!   "type": { "coding": [ { "system": "urn:kuvasto:document-type", "code": "request" } ] },
//!   "subject": { "identifier": { "system": "urn:oid:1.2.246.21", "value": "131052-308T" } },
//!   "date": "2024-03-05T09:15:00.250+02:00",
//!   "author": [ { "identifier": { "value": "1.2.246.10.8282" } } ],
//!   "custodian": { "identifier": { "value": "1.2.246.10.8282.10.1" } },
//!   "description": "Thorax X-ray request",
//!   "content": [ { "attachment": { "contentType": "application/pdf",
//!                                  "data": "JVBERi0xLjQK" } } ],
//!   "context": { "related": [
//!     { "identifier": { "system": "urn:kuvasto:service-event",
//!                       "value": "urn:oid:1.2.246.10.8282.2024.5" } },
//!     { "identifier": { "system": "urn:kuvasto:accession-number", "value": "RTG240305001" } },
//!     { "identifier": { "system": "urn:dicom:uid",
//!                       "value": "urn:oid:1.2.246.10.8282.1.2024.5" } } ] }
//! }
//! ```
//!
//! | JSON | [`Document`] field | rule |
//! | --- | --- | --- |
//! | `resourceType` | — | must be `DocumentReference` |
//! | `masterIdentifier.value` | `id` | OID, `urn:oid:<oid>` or bare; stored bare |
//! | `type.coding[]` in system `urn:kuvasto:document-type` | `kind` | `request`, `visit-note`, `report` |
//! | `status` | `status` | `current`; `corrected`/`superseded`; `invalidated`/`entered-in-error` |
//! | `subject.identifier.{system,value}` | `patient_id_system`, `patient_id` | both required; value a DICOM LO (≤ 64 characters, no `\` or control characters); system kept as written (`urn:oid:1.2.246.21` is the personal identity code) |
//! | `custodian.identifier.value` | `register` | OID (bare or `urn:oid:`), stored bare |
//! | `author[0].identifier.value` | `author_organisation` | OID (bare or `urn:oid:`), stored bare |
//! | `date` | `time` | FHIR instant `YYYY-MM-DDThh:mm:ss[.f{1,9}](Z\|±hh:mm)`, a real calendar date; kept as written |
//! | `description` | `description` | optional |
//! | `content[0].attachment.contentType` | `content_type` | `application/pdf`, `text/xml`, `application/xml`, `application/hl7-v3+xml` (CDA); parameters ignored, stored as the lower-case type |
//! | `content[0].attachment.data` | [`ParsedDocument::content`] | standard base64, padding required, no whitespace, ≤ [`DOCUMENT_CONTENT_BYTES_MAX`] bytes decoded |
//!
//! Identifiers linking the document to the DICOM side may stand in `context.related[]` (as a
//! Reference's `identifier`) and/or in the top-level `identifier[]`; both places are read,
//! identifiers of other systems are ignored, and the same identifier given twice must agree:
//!
//! | `identifier.system` | `value` | [`Document`] field |
//! | --- | --- | --- |
//! | `urn:kuvasto:service-event` | `urn:oid:<oid>` or a bare OID | `service_event_id` (bare) |
//! | `urn:kuvasto:accession-number` | as is, a DICOM SH (≤ 16 characters) | `accession_number` |
//! | `urn:dicom:uid` | `urn:oid:<uid>` or a bare UID | `study_instance_uid` (bare) |
//!
//! A document names a service event, an accession number or both. Every refusal is a
//! [`DocumentError`] naming the JSON path and the bad value.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The most bytes a document's content may hold once decoded (64 MiB). Checked on the base64
/// length before decoding, and again on the decoded length.
pub const DOCUMENT_CONTENT_BYTES_MAX: usize = 64 << 20;
/// Code system of [`DocumentKind`] codes in `type.coding[]`.
pub const DOCUMENT_TYPE_SYSTEM: &str = "urn:kuvasto:document-type";
/// Identifier system of the service event identifier (an OID).
pub const SERVICE_EVENT_SYSTEM: &str = "urn:kuvasto:service-event";
/// Identifier system of the DICOM Accession Number.
pub const ACCESSION_NUMBER_SYSTEM: &str = "urn:kuvasto:accession-number";
/// Identifier system of the Study Instance UID.
pub const DICOM_UID_SYSTEM: &str = "urn:dicom:uid";
/// Identifier system of the Finnish personal identity code (issuer OID 1.2.246.21).
pub const PERSONAL_IDENTITY_CODE_SYSTEM: &str = "urn:oid:1.2.246.21";
/// Content types accepted: PDF and CDA (XML).
pub const DOCUMENT_CONTENT_TYPES: [&str; 4] = [
    "application/pdf",
    "text/xml",
    "application/xml",
    "application/hl7-v3+xml",
];
/// Longest accession number (DICOM SH).
pub const ACCESSION_NUMBER_CHARS_MAX: usize = 16;
/// Longest patient id (DICOM LO, the PatientID it is matched against).
pub const PATIENT_ID_CHARS_MAX: usize = 64;

/// Longest OID or UID.
const OID_CHARS_MAX: usize = 64;
const URN_OID: &str = "urn:oid:";
const RESOURCE_TYPE: &str = "DocumentReference";
/// Bad values quoted in errors are cut to this many characters.
const SHOWN_CHARS_MAX: usize = 128;

/// What a document is. FHIR `type.coding[].code` in system [`DOCUMENT_TYPE_SYSTEM`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DocumentKind {
    /// The request (referral) for the examination.
    Request,
    /// The visit / examination note.
    VisitNote,
    /// The report (statement) on the images.
    Report,
}

impl DocumentKind {
    pub const ALL: [DocumentKind; 3] = [
        DocumentKind::Request,
        DocumentKind::VisitNote,
        DocumentKind::Report,
    ];

    /// The code in system [`DOCUMENT_TYPE_SYSTEM`]: `request`, `visit-note` or `report`.
    pub fn code(self) -> &'static str {
        match self {
            DocumentKind::Request => "request",
            DocumentKind::VisitNote => "visit-note",
            DocumentKind::Report => "report",
        }
    }

    pub fn from_code(code: &str) -> Option<DocumentKind> {
        DocumentKind::ALL
            .into_iter()
            .find(|kind| kind.code() == code)
    }
}

/// Where a document stands. Read from FHIR `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DocumentStatus {
    /// In force (`current`).
    Current,
    /// Replaced by a corrected version (`corrected`, FHIR `superseded`).
    Corrected,
    /// Withdrawn as wrong (`invalidated`, FHIR `entered-in-error`).
    Invalidated,
}

impl DocumentStatus {
    /// The FHIR R4 `DocumentReference.status` code written for this status: `current`,
    /// `superseded` or `entered-in-error`.
    pub fn fhir_code(self) -> &'static str {
        match self {
            DocumentStatus::Current => "current",
            DocumentStatus::Corrected => "superseded",
            DocumentStatus::Invalidated => "entered-in-error",
        }
    }

    /// Reads a `status`: the FHIR codes and the archive's own names.
    pub fn from_fhir(code: &str) -> Option<DocumentStatus> {
        match code {
            "current" => Some(DocumentStatus::Current),
            "corrected" | "superseded" => Some(DocumentStatus::Corrected),
            "invalidated" | "entered-in-error" => Some(DocumentStatus::Invalidated),
            _ => None,
        }
    }
}

/// One imaging document as the archive keeps it (the content is stored apart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    /// Document OID (`masterIdentifier.value`, without `urn:oid:`).
    pub id: String,
    pub kind: DocumentKind,
    pub status: DocumentStatus,
    /// `subject.identifier.value`.
    pub patient_id: String,
    /// `subject.identifier.system`, as written ([`PERSONAL_IDENTITY_CODE_SYSTEM`] for the
    /// personal identity code).
    pub patient_id_system: String,
    /// Service event OID; empty only when `accession_number` is given.
    pub service_event_id: String,
    /// DICOM Accession Number (SH); may be empty.
    pub accession_number: String,
    /// Study Instance UID; may be empty.
    pub study_instance_uid: String,
    /// The register (an OID) the document is in: `custodian.identifier.value`.
    pub register: String,
    /// The author organisation (an OID): `author[0].identifier.value`.
    pub author_organisation: String,
    /// FHIR `date`, an instant kept as written.
    pub time: String,
    /// `content[0].attachment.contentType` as the lower-case type without parameters; empty
    /// when the document came without content.
    pub content_type: String,
    /// `description`; empty when absent.
    pub description: String,
}

/// A parsed announcement: the document and its decoded content, when it carried some.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedDocument {
    pub document: Document,
    /// The base64-decoded `content[0].attachment.data`.
    pub content: Option<Vec<u8>>,
}

/// Why an announcement was refused. Each message is one sentence naming the JSON path and the
/// bad value (cut to 128 characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("the document is not JSON: {message}")]
    NotJson { message: String },
    #[error("the document is {found}, not a JSON object")]
    NotAnObject { found: &'static str },
    #[error("resourceType is {found:?}, not \"DocumentReference\"")]
    ResourceType { found: String },
    #[error("{path} is missing")]
    Missing { path: String },
    #[error("{path} is {found}, not {expected}")]
    WrongType {
        path: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("masterIdentifier.value {value:?} is not an OID (the document id)")]
    DocumentIdNotOid { value: String },
    #[error("type.coding has no coding in system \"urn:kuvasto:document-type\"")]
    NoDocumentType,
    #[error("{path} {value:?} is not a document type (request, visit-note, report)")]
    UnknownTypeCode { path: String, value: String },
    #[error(
        "status {value:?} is not a document status \
         (current, superseded, corrected, entered-in-error, invalidated)"
    )]
    UnknownStatus { value: String },
    #[error("{path} is missing: the document names no patient")]
    MissingPatient { path: String },
    #[error(
        "{path} {value:?} is not a patient id \
         (at most 64 characters, no backslash or control characters)"
    )]
    PatientIdInvalid { path: String, value: String },
    #[error("custodian.identifier.value {value:?} is not an OID (the register)")]
    RegisterNotOid { value: String },
    #[error("author[0].identifier.value {value:?} is not an OID (the author organisation)")]
    AuthorNotOid { value: String },
    #[error(
        "context.related[] and identifier[] name neither a service event \
         (system \"urn:kuvasto:service-event\") nor an accession number \
         (system \"urn:kuvasto:accession-number\")"
    )]
    NoServiceEventOrAccession,
    #[error("{path} {value:?} is not an OID (the service event)")]
    ServiceEventNotOid { path: String, value: String },
    #[error("{path} {value:?} has {chars} characters, more than an accession number's 16")]
    AccessionNumberTooLong {
        path: String,
        value: String,
        chars: usize,
    },
    #[error("{path} {value:?} holds a backslash or a control character (accession number)")]
    AccessionNumberCharacters { path: String, value: String },
    #[error("{path} {value:?} is not a UID (the study)")]
    StudyUidInvalid { path: String, value: String },
    #[error("{second_path} {second:?} contradicts {first_path} {first:?} ({what})")]
    Conflicting {
        what: &'static str,
        first_path: String,
        first: String,
        second_path: String,
        second: String,
    },
    #[error("date {value:?} is not an instant (YYYY-MM-DDThh:mm:ss[.fff](Z|+hh:mm|-hh:mm))")]
    BadDate { value: String },
    #[error(
        "content[0].attachment.contentType {value:?} is not accepted \
         (application/pdf, text/xml, application/xml, application/hl7-v3+xml)"
    )]
    UnsupportedContentType { value: String },
    #[error("content[0].attachment.data is not padded standard base64: {message}")]
    BadBase64 { message: String },
    #[error(
        "content[0].attachment.data ({base64_len} base64 characters) holds more than \
         the {max_bytes} bytes a document may hold"
    )]
    ContentTooLarge { base64_len: usize, max_bytes: usize },
    #[error("content has {count} entries; a document has at most one")]
    TooManyContents { count: usize },
}

/// Reads one announcement (a FHIR R4 `DocumentReference` as JSON), validates it and decodes
/// its content.
pub fn parse_document(json: &[u8]) -> Result<ParsedDocument, DocumentError> {
    parse_document_limited(json, DOCUMENT_CONTENT_BYTES_MAX)
}

/// Writes `document` as a FHIR R4 `DocumentReference`, the shape [`parse_document`] reads.
/// When the document has content (`content_type` not empty), `content[0].attachment` carries
/// the `contentType` and, when given, `content_url` as `url` (never inline `data`).
pub fn to_fhir_json(document: &Document, content_url: Option<&str>) -> Value {
    let mut root = Map::new();
    root.insert("resourceType".into(), json!(RESOURCE_TYPE));
    root.insert(
        "masterIdentifier".into(),
        json!({ "system": "urn:ietf:rfc:3986", "value": format!("{URN_OID}{}", document.id) }),
    );
    root.insert("status".into(), json!(document.status.fhir_code()));
    root.insert(
        "type".into(),
        json!({ "coding": [{ "system": DOCUMENT_TYPE_SYSTEM, "code": document.kind.code() }] }),
    );
    root.insert(
        "subject".into(),
        json!({ "identifier": {
            "system": document.patient_id_system,
            "value": document.patient_id,
        } }),
    );
    root.insert("date".into(), json!(document.time));
    root.insert(
        "author".into(),
        json!([{ "identifier": { "value": document.author_organisation } }]),
    );
    root.insert(
        "custodian".into(),
        json!({ "identifier": { "value": document.register } }),
    );
    if !document.description.is_empty() {
        root.insert("description".into(), json!(document.description));
    }
    if !document.content_type.is_empty() {
        let mut attachment = Map::new();
        attachment.insert("contentType".into(), json!(document.content_type));
        if let Some(url) = content_url {
            attachment.insert("url".into(), json!(url));
        }
        root.insert("content".into(), json!([{ "attachment": attachment }]));
    }
    let mut related = Vec::new();
    let mut relate = |system: &str, value: String| {
        related.push(json!({ "identifier": { "system": system, "value": value } }));
    };
    if !document.service_event_id.is_empty() {
        relate(
            SERVICE_EVENT_SYSTEM,
            format!("{URN_OID}{}", document.service_event_id),
        );
    }
    if !document.accession_number.is_empty() {
        relate(ACCESSION_NUMBER_SYSTEM, document.accession_number.clone());
    }
    if !document.study_instance_uid.is_empty() {
        relate(
            DICOM_UID_SYSTEM,
            format!("{URN_OID}{}", document.study_instance_uid),
        );
    }
    if !related.is_empty() {
        root.insert("context".into(), json!({ "related": related }));
    }
    Value::Object(root)
}

/// Whether `text` is an OID as the archive takes them: dotted decimal, at most 64 characters,
/// at least two components, the first 0, 1 or 2, no component with a leading zero (except
/// `0` itself).
pub fn is_oid(text: &str) -> bool {
    is_uid(text) && text.contains('.') && matches!(text.split('.').next(), Some("0" | "1" | "2"))
}

/// Whether `text` is a DICOM UID: at most 64 characters, digits and dots, no empty component
/// and no component with a leading zero (except `0` itself).
pub fn is_uid(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= OID_CHARS_MAX
        && text.split('.').all(|component| {
            !component.is_empty()
                && component.bytes().all(|b| b.is_ascii_digit())
                && (component == "0" || !component.starts_with('0'))
        })
}

/// [`parse_document`] with the content limit as a parameter (tests use a small one).
fn parse_document_limited(
    json: &[u8],
    content_bytes_max: usize,
) -> Result<ParsedDocument, DocumentError> {
    // serde_json refuses nesting deeper than 128 levels ("recursion limit exceeded").
    let value: Value = serde_json::from_slice(json).map_err(|error| DocumentError::NotJson {
        message: error.to_string(),
    })?;
    let Value::Object(root) = &value else {
        return Err(DocumentError::NotAnObject {
            found: kind_of(&value),
        });
    };

    let resource_type = required_string(root, "", "resourceType")?;
    if resource_type != RESOURCE_TYPE {
        return Err(DocumentError::ResourceType {
            found: shown(resource_type),
        });
    }

    let master = required_object(root, "", "masterIdentifier")?;
    let id_text = required_string(master, "masterIdentifier", "value")?;
    let id = strip_urn_oid(id_text);
    if !is_oid(id) {
        return Err(DocumentError::DocumentIdNotOid {
            value: shown(id_text),
        });
    }

    let kind = parse_kind(root)?;

    let status_text = required_string(root, "", "status")?;
    let status =
        DocumentStatus::from_fhir(status_text).ok_or_else(|| DocumentError::UnknownStatus {
            value: shown(status_text),
        })?;

    let (patient_id, patient_id_system) = parse_patient(root)?;

    let custodian = required_object(root, "", "custodian")?;
    let custodian_identifier = required_object(custodian, "custodian", "identifier")?;
    let register_text = required_string(custodian_identifier, "custodian.identifier", "value")?;
    let register = strip_urn_oid(register_text);
    if !is_oid(register) {
        return Err(DocumentError::RegisterNotOid {
            value: shown(register_text),
        });
    }

    let authors = required_array(root, "", "author")?;
    let author = match authors.first() {
        Some(author) => as_object(author, "author[0]")?,
        None => {
            return Err(DocumentError::Missing {
                path: "author[0]".into(),
            })
        }
    };
    let author_identifier = required_object(author, "author[0]", "identifier")?;
    let author_text = required_string(author_identifier, "author[0].identifier", "value")?;
    let author_organisation = strip_urn_oid(author_text);
    if !is_oid(author_organisation) {
        return Err(DocumentError::AuthorNotOid {
            value: shown(author_text),
        });
    }

    let links = parse_links(root)?;

    let time = required_string(root, "", "date")?;
    if !is_instant(time) {
        return Err(DocumentError::BadDate { value: shown(time) });
    }

    let description = optional_string(root, "", "description")?.unwrap_or("");

    let (content_type, content) = parse_content(root, content_bytes_max)?;

    Ok(ParsedDocument {
        document: Document {
            id: id.to_owned(),
            kind,
            status,
            patient_id,
            patient_id_system,
            service_event_id: links.service_event.map(|l| l.value).unwrap_or_default(),
            accession_number: links.accession_number.map(|l| l.value).unwrap_or_default(),
            study_instance_uid: links.study.map(|l| l.value).unwrap_or_default(),
            register: register.to_owned(),
            author_organisation: author_organisation.to_owned(),
            time: time.to_owned(),
            content_type,
            description: description.to_owned(),
        },
        content,
    })
}

/// The [`DocumentKind`] from the coding in [`DOCUMENT_TYPE_SYSTEM`] (other codings ignored).
fn parse_kind(root: &Map<String, Value>) -> Result<DocumentKind, DocumentError> {
    let type_ = required_object(root, "", "type")?;
    let codings = required_array(type_, "type", "coding")?;
    let mut found: Option<(String, DocumentKind, &str)> = None;
    for (index, coding) in codings.iter().enumerate() {
        let path = format!("type.coding[{index}]");
        let coding = as_object(coding, &path)?;
        if optional_string(coding, &path, "system")? != Some(DOCUMENT_TYPE_SYSTEM) {
            continue;
        }
        let code = required_string(coding, &path, "code")?;
        let code_path = join(&path, "code");
        let kind = DocumentKind::from_code(code).ok_or_else(|| DocumentError::UnknownTypeCode {
            path: code_path.clone(),
            value: shown(code),
        })?;
        match &found {
            Some((first_path, first, first_code)) if *first != kind => {
                return Err(DocumentError::Conflicting {
                    what: "document type",
                    first_path: first_path.clone(),
                    first: shown(first_code),
                    second_path: code_path,
                    second: shown(code),
                })
            }
            Some(_) => {}
            None => found = Some((code_path, kind, code)),
        }
    }
    found
        .map(|(_, kind, _)| kind)
        .ok_or(DocumentError::NoDocumentType)
}

/// `subject.identifier`: (value, system), both required.
fn parse_patient(root: &Map<String, Value>) -> Result<(String, String), DocumentError> {
    let missing = |path: &str| DocumentError::MissingPatient { path: path.into() };
    let subject = optional_object(root, "", "subject")?.ok_or_else(|| missing("subject"))?;
    let identifier = optional_object(subject, "subject", "identifier")?
        .ok_or_else(|| missing("subject.identifier"))?;
    let value = optional_string(identifier, "subject.identifier", "value")?
        .filter(|value| !value.is_empty())
        .ok_or_else(|| missing("subject.identifier.value"))?;
    let system = optional_string(identifier, "subject.identifier", "system")?
        .filter(|system| !system.is_empty())
        .ok_or_else(|| missing("subject.identifier.system"))?;
    if value.chars().count() > PATIENT_ID_CHARS_MAX
        || value.chars().any(|c| c == '\\' || c.is_control())
    {
        return Err(DocumentError::PatientIdInvalid {
            path: "subject.identifier.value".into(),
            value: shown(value),
        });
    }
    Ok((value.to_owned(), system.to_owned()))
}

/// One linking identifier found: where, and its value (OIDs and UIDs without `urn:oid:`).
struct Link {
    path: String,
    /// As written, for messages.
    written: String,
    value: String,
}

#[derive(Default)]
struct Links {
    service_event: Option<Link>,
    accession_number: Option<Link>,
    study: Option<Link>,
}

/// The service event, accession number and study identifiers in `context.related[]` and
/// `identifier[]`.
fn parse_links(root: &Map<String, Value>) -> Result<Links, DocumentError> {
    let mut identifiers: Vec<(String, &Map<String, Value>)> = Vec::new();
    if let Some(context) = optional_object(root, "", "context")? {
        if let Some(related) = optional_array(context, "context", "related")? {
            for (index, reference) in related.iter().enumerate() {
                let path = format!("context.related[{index}]");
                let reference = as_object(reference, &path)?;
                if let Some(identifier) = optional_object(reference, &path, "identifier")? {
                    identifiers.push((join(&path, "identifier"), identifier));
                }
            }
        }
    }
    if let Some(list) = optional_array(root, "", "identifier")? {
        for (index, identifier) in list.iter().enumerate() {
            let path = format!("identifier[{index}]");
            let identifier = as_object(identifier, &path)?;
            identifiers.push((path, identifier));
        }
    }

    let mut links = Links::default();
    for (path, identifier) in identifiers {
        let system = optional_string(identifier, &path, "system")?;
        if !matches!(
            system,
            Some(SERVICE_EVENT_SYSTEM | ACCESSION_NUMBER_SYSTEM | DICOM_UID_SYSTEM)
        ) {
            continue;
        }
        let value_path = join(&path, "value");
        let written = optional_string(identifier, &path, "value")?
            .filter(|value| !value.is_empty())
            .ok_or_else(|| DocumentError::Missing {
                path: value_path.clone(),
            })?;
        let (slot, what, value) = match system {
            Some(SERVICE_EVENT_SYSTEM) => {
                let oid = strip_urn_oid(written);
                if !is_oid(oid) {
                    return Err(DocumentError::ServiceEventNotOid {
                        path: value_path,
                        value: shown(written),
                    });
                }
                (&mut links.service_event, "service event", oid)
            }
            Some(ACCESSION_NUMBER_SYSTEM) => {
                let chars = written.chars().count();
                if chars > ACCESSION_NUMBER_CHARS_MAX {
                    return Err(DocumentError::AccessionNumberTooLong {
                        path: value_path,
                        value: shown(written),
                        chars,
                    });
                }
                if written.chars().any(|c| c == '\\' || c.is_control()) {
                    return Err(DocumentError::AccessionNumberCharacters {
                        path: value_path,
                        value: shown(written),
                    });
                }
                (&mut links.accession_number, "accession number", written)
            }
            _ => {
                let uid = strip_urn_oid(written);
                if !is_uid(uid) {
                    return Err(DocumentError::StudyUidInvalid {
                        path: value_path,
                        value: shown(written),
                    });
                }
                (&mut links.study, "study instance UID", uid)
            }
        };
        match slot {
            Some(first) if first.value != value => {
                return Err(DocumentError::Conflicting {
                    what,
                    first_path: first.path.clone(),
                    first: shown(&first.written),
                    second_path: value_path,
                    second: shown(written),
                });
            }
            Some(_) => {}
            None => {
                *slot = Some(Link {
                    path: value_path,
                    written: written.to_owned(),
                    value: value.to_owned(),
                })
            }
        }
    }
    if links.service_event.is_none() && links.accession_number.is_none() {
        return Err(DocumentError::NoServiceEventOrAccession);
    }
    Ok(links)
}

/// `content[0].attachment`: (content type, decoded data). No `content` (or an empty list) is
/// no content; an attachment without `data` has a content type but no bytes.
fn parse_content(
    root: &Map<String, Value>,
    content_bytes_max: usize,
) -> Result<(String, Option<Vec<u8>>), DocumentError> {
    let Some(contents) = optional_array(root, "", "content")? else {
        return Ok((String::new(), None));
    };
    let entry = match contents.as_slice() {
        [] => return Ok((String::new(), None)),
        [entry] => as_object(entry, "content[0]")?,
        _ => {
            return Err(DocumentError::TooManyContents {
                count: contents.len(),
            })
        }
    };
    let attachment = required_object(entry, "content[0]", "attachment")?;
    let path = "content[0].attachment";
    let content_type_text = required_string(attachment, path, "contentType")?;
    let content_type = content_type_essence(content_type_text).ok_or_else(|| {
        DocumentError::UnsupportedContentType {
            value: shown(content_type_text),
        }
    })?;
    let content = match optional_string(attachment, path, "data")? {
        Some(data) => Some(decode_content(data, content_bytes_max)?),
        None => None,
    };
    Ok((content_type.to_owned(), content))
}

/// The accepted content type `text` names (case-insensitive, parameters ignored).
fn content_type_essence(text: &str) -> Option<&'static str> {
    let essence = text.split(';').next().unwrap_or_default().trim();
    DOCUMENT_CONTENT_TYPES
        .into_iter()
        .find(|accepted| accepted.eq_ignore_ascii_case(essence))
}

/// Decodes padded standard base64, refusing before decoding when the text is longer than
/// `bytes_max` bytes can encode to.
fn decode_content(data: &str, bytes_max: usize) -> Result<Vec<u8>, DocumentError> {
    let too_large = || DocumentError::ContentTooLarge {
        base64_len: data.len(),
        max_bytes: bytes_max,
    };
    if data.len() > bytes_max.div_ceil(3).saturating_mul(4) {
        return Err(too_large());
    }
    if data.is_empty() {
        return Err(DocumentError::BadBase64 {
            message: "it is empty".into(),
        });
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|error| DocumentError::BadBase64 {
            message: error.to_string(),
        })?;
    if bytes.len() > bytes_max {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Whether `text` is a FHIR instant: `YYYY-MM-DDThh:mm:ss`, optionally `.` and 1–9 digits, then
/// `Z` or `±hh:mm` (offset at most 14:00); a real calendar date (year 0001–9999), hour 00–23,
/// minute 00–59, second 00–60 (leap second).
fn is_instant(text: &str) -> bool {
    let b = text.as_bytes();
    let number = |from: usize, len: usize| -> Option<u32> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0u32, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
        })
    };
    let byte_is = |at: usize, expected: u8| b.get(at) == Some(&expected);
    let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) = (
        number(0, 4),
        number(5, 2),
        number(8, 2),
        number(11, 2),
        number(14, 2),
        number(17, 2),
    ) else {
        return false;
    };
    if !(byte_is(4, b'-')
        && byte_is(7, b'-')
        && byte_is(10, b'T')
        && byte_is(13, b':')
        && byte_is(16, b':'))
    {
        return false;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    if year == 0 || day == 0 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return false;
    }
    let mut at = 19;
    if byte_is(at, b'.') {
        let digits = b
            .get(at + 1..)
            .unwrap_or_default()
            .iter()
            .take_while(|d| d.is_ascii_digit())
            .count();
        if !(1..=9).contains(&digits) {
            return false;
        }
        at += 1 + digits;
    }
    match b.get(at..) {
        Some(b"Z") => true,
        Some([sign, ..]) if (*sign == b'+' || *sign == b'-') && b.len() == at + 6 => {
            match (number(at + 1, 2), byte_is(at + 3, b':'), number(at + 4, 2)) {
                (Some(hours), true, Some(minutes)) => {
                    minutes <= 59 && (hours < 14 || (hours == 14 && minutes == 0))
                }
                _ => false,
            }
        }
        _ => false,
    }
}

fn strip_urn_oid(text: &str) -> &str {
    text.strip_prefix(URN_OID).unwrap_or(text)
}

/// `value` cut to [`SHOWN_CHARS_MAX`] characters for an error message.
fn shown(value: &str) -> String {
    match value.char_indices().nth(SHOWN_CHARS_MAX) {
        Some((cut, _)) => format!("{}…", &value[..cut]),
        None => value.to_owned(),
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(path: String, expected: &'static str, value: &Value) -> DocumentError {
    DocumentError::WrongType {
        path,
        expected,
        found: kind_of(value),
    }
}

fn as_object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, DocumentError> {
    value
        .as_object()
        .ok_or_else(|| wrong_type(path.to_owned(), "an object", value))
}

/// `object[key]`: `None` when absent or null.
fn present<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    object.get(key).filter(|value| !value.is_null())
}

fn optional_object<'a>(
    object: &'a Map<String, Value>,
    parent: &str,
    key: &str,
) -> Result<Option<&'a Map<String, Value>>, DocumentError> {
    present(object, key)
        .map(|value| as_object(value, &join(parent, key)))
        .transpose()
}

fn optional_array<'a>(
    object: &'a Map<String, Value>,
    parent: &str,
    key: &str,
) -> Result<Option<&'a Vec<Value>>, DocumentError> {
    present(object, key)
        .map(|value| {
            value
                .as_array()
                .ok_or_else(|| wrong_type(join(parent, key), "an array", value))
        })
        .transpose()
}

fn optional_string<'a>(
    object: &'a Map<String, Value>,
    parent: &str,
    key: &str,
) -> Result<Option<&'a str>, DocumentError> {
    present(object, key)
        .map(|value| {
            value
                .as_str()
                .ok_or_else(|| wrong_type(join(parent, key), "a string", value))
        })
        .transpose()
}

fn missing(parent: &str, key: &str) -> DocumentError {
    DocumentError::Missing {
        path: join(parent, key),
    }
}

fn required_object<'a>(
    object: &'a Map<String, Value>,
    parent: &str,
    key: &str,
) -> Result<&'a Map<String, Value>, DocumentError> {
    optional_object(object, parent, key)?.ok_or_else(|| missing(parent, key))
}

fn required_array<'a>(
    object: &'a Map<String, Value>,
    parent: &str,
    key: &str,
) -> Result<&'a Vec<Value>, DocumentError> {
    optional_array(object, parent, key)?.ok_or_else(|| missing(parent, key))
}

fn required_string<'a>(
    object: &'a Map<String, Value>,
    parent: &str,
    key: &str,
) -> Result<&'a str, DocumentError> {
    optional_string(object, parent, key)?.ok_or_else(|| missing(parent, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `%PDF-1.4\n`.
    const PDF_BASE64: &str = "JVBERi0xLjQK";

    fn full_request() -> Value {
        json!({
            "resourceType": "DocumentReference",
            "id": "logical-id-ignored",
            "meta": { "profile": ["http://example.org/StructureDefinition/x"] },
            "masterIdentifier": {
                "system": "urn:ietf:rfc:3986",
                "value": "urn:oid:1.2.246.10.8282.2024.17"
            },
            "status": "current",
            "docStatus": "final",
            "type": { "coding": [
                { "system": "http://loinc.org", "code": "18748-4" },
                { "system": "urn:kuvasto:document-type", "code": "request", "display": "Lähete" }
            ] },
            "subject": { "identifier": { "system": "urn:oid:1.2.246.21", "value": "131052-308T" } },
            "date": "2024-03-05T09:15:00.250+02:00",
            "author": [{ "identifier": { "value": "1.2.246.10.8282" } }],
            "custodian": { "identifier": { "value": "1.2.246.10.8282.10.1" } },
            "description": "Thorax X-ray request",
            "content": [{ "attachment": {
                "contentType": "application/pdf",
                "data": PDF_BASE64,
                "title": "request.pdf"
            } }],
            "context": { "related": [
                { "identifier": {
                    "system": "urn:kuvasto:service-event",
                    "value": "urn:oid:1.2.246.10.8282.2024.5"
                } },
                { "reference": "Encounter/77" },
                { "identifier": { "system": "urn:kuvasto:accession-number", "value": "RTG240305001" } },
                { "identifier": {
                    "system": "urn:dicom:uid",
                    "value": "urn:oid:1.2.246.10.8282.1.2024.5"
                } }
            ] }
        })
    }

    fn full_request_document() -> Document {
        Document {
            id: "1.2.246.10.8282.2024.17".into(),
            kind: DocumentKind::Request,
            status: DocumentStatus::Current,
            patient_id: "131052-308T".into(),
            patient_id_system: "urn:oid:1.2.246.21".into(),
            service_event_id: "1.2.246.10.8282.2024.5".into(),
            accession_number: "RTG240305001".into(),
            study_instance_uid: "1.2.246.10.8282.1.2024.5".into(),
            register: "1.2.246.10.8282.10.1".into(),
            author_organisation: "1.2.246.10.8282".into(),
            time: "2024-03-05T09:15:00.250+02:00".into(),
            content_type: "application/pdf".into(),
            description: "Thorax X-ray request".into(),
        }
    }

    fn minimal_visit_note() -> Value {
        json!({
            "resourceType": "DocumentReference",
            "masterIdentifier": { "value": "1.2.246.10.8282.2024.18" },
            "status": "current",
            "type": { "coding": [{ "system": "urn:kuvasto:document-type", "code": "visit-note" }] },
            "subject": { "identifier": { "system": "urn:oid:1.2.246.21", "value": "131052-308T" } },
            "date": "2024-03-05T10:00:00Z",
            "author": [{ "identifier": { "value": "urn:oid:1.2.246.10.8282" } }],
            "custodian": { "identifier": { "value": "1.2.246.10.8282.10.1" } },
            "identifier": [
                { "system": "urn:kuvasto:service-event", "value": "1.2.246.10.8282.2024.5" }
            ]
        })
    }

    fn parse(value: &Value) -> Result<ParsedDocument, DocumentError> {
        parse_document(&serde_json::to_vec(value).unwrap())
    }

    #[test]
    fn full_request_with_pdf_parses_to_the_document_and_bytes() {
        let parsed = parse(&full_request()).unwrap();
        assert_eq!(parsed.document, full_request_document());
        assert_eq!(parsed.content.as_deref(), Some(&b"%PDF-1.4\n"[..]));
    }

    #[test]
    fn minimal_visit_note_without_content() {
        let parsed = parse(&minimal_visit_note()).unwrap();
        assert_eq!(
            parsed,
            ParsedDocument {
                document: Document {
                    id: "1.2.246.10.8282.2024.18".into(),
                    kind: DocumentKind::VisitNote,
                    status: DocumentStatus::Current,
                    patient_id: "131052-308T".into(),
                    patient_id_system: "urn:oid:1.2.246.21".into(),
                    service_event_id: "1.2.246.10.8282.2024.5".into(),
                    accession_number: String::new(),
                    study_instance_uid: String::new(),
                    register: "1.2.246.10.8282.10.1".into(),
                    author_organisation: "1.2.246.10.8282".into(),
                    time: "2024-03-05T10:00:00Z".into(),
                    content_type: String::new(),
                    description: String::new(),
                },
                content: None,
            }
        );
    }

    #[test]
    fn accession_number_alone_links() {
        let mut value = minimal_visit_note();
        value["identifier"] = json!([
            { "system": "http://example.org/other", "value": "x" },
            { "system": "urn:kuvasto:accession-number", "value": "RTG1" }
        ]);
        let document = parse(&value).unwrap().document;
        assert_eq!(document.accession_number, "RTG1");
        assert_eq!(document.service_event_id, "");
        assert_eq!(document.study_instance_uid, "");
    }

    #[test]
    fn identifiers_in_both_places_that_agree_are_accepted() {
        let mut value = full_request();
        value["identifier"] = json!([
            { "system": "urn:kuvasto:service-event", "value": "1.2.246.10.8282.2024.5" },
            { "system": "urn:dicom:uid", "value": "1.2.246.10.8282.1.2024.5" }
        ]);
        assert_eq!(parse(&value).unwrap().document, full_request_document());
    }

    #[test]
    fn fhir_status_codes_map() {
        for (code, status) in [
            ("current", DocumentStatus::Current),
            ("corrected", DocumentStatus::Corrected),
            ("superseded", DocumentStatus::Corrected),
            ("invalidated", DocumentStatus::Invalidated),
            ("entered-in-error", DocumentStatus::Invalidated),
        ] {
            let mut value = minimal_visit_note();
            value["status"] = json!(code);
            assert_eq!(parse(&value).unwrap().document.status, status, "{code}");
        }
    }

    #[test]
    fn kind_codes_and_serde_names_agree() {
        for kind in DocumentKind::ALL {
            assert_eq!(DocumentKind::from_code(kind.code()), Some(kind));
            assert_eq!(serde_json::to_value(kind).unwrap(), json!(kind.code()));
        }
        assert_eq!(
            serde_json::to_value(DocumentStatus::Invalidated).unwrap(),
            json!("invalidated")
        );
    }

    #[test]
    fn to_fhir_json_round_trips_without_content() {
        let full = full_request_document();
        let mut bare = minimal_visit_note_document();
        bare.status = DocumentStatus::Invalidated;
        let accession_only = Document {
            service_event_id: String::new(),
            accession_number: "A-1".into(),
            status: DocumentStatus::Corrected,
            kind: DocumentKind::Report,
            ..bare.clone()
        };
        for (document, url) in [
            (
                &full,
                Some("https://archive.example/documents/1.2.246.10.8282.2024.17/content"),
            ),
            (&full, None),
            (&bare, None),
            (&accession_only, Some("/x")),
        ] {
            let value = to_fhir_json(document, url);
            let parsed = parse(&value).unwrap();
            assert_eq!(&parsed.document, document);
            assert_eq!(parsed.content, None);
        }
    }

    fn minimal_visit_note_document() -> Document {
        parse(&minimal_visit_note()).unwrap().document
    }

    #[test]
    fn to_fhir_json_writes_the_content_as_a_url() {
        let value = to_fhir_json(&full_request_document(), Some("/content/17"));
        assert_eq!(
            value["content"],
            json!([{ "attachment": { "contentType": "application/pdf", "url": "/content/17" } }])
        );
        assert_eq!(
            value["masterIdentifier"]["value"],
            json!("urn:oid:1.2.246.10.8282.2024.17")
        );
        assert_eq!(value["status"], json!("current"));
        let bare = to_fhir_json(&minimal_visit_note_document(), None);
        assert!(bare.get("content").is_none());
        assert!(bare.get("description").is_none());
        assert_eq!(
            bare["context"]["related"],
            json!([{ "identifier": {
                "system": "urn:kuvasto:service-event",
                "value": "urn:oid:1.2.246.10.8282.2024.5"
            } }])
        );
    }

    #[test]
    fn content_type_parameters_and_case_are_normalised() {
        let mut value = full_request();
        value["content"][0]["attachment"]["contentType"] =
            json!("Application/HL7-v3+XML; charset=UTF-8");
        value["content"][0]["attachment"]["data"] = json!("PENsaW5pY2FsRG9jdW1lbnQvPg=="); // <ClinicalDocument/>
        let parsed = parse(&value).unwrap();
        assert_eq!(parsed.document.content_type, "application/hl7-v3+xml");
        assert_eq!(parsed.content.as_deref(), Some(&b"<ClinicalDocument/>"[..]));
    }

    #[test]
    fn content_without_data_keeps_the_type_and_empty_content_list_is_no_content() {
        let mut value = full_request();
        value["content"] = json!([{ "attachment": { "contentType": "text/xml", "url": "/x" } }]);
        let parsed = parse(&value).unwrap();
        assert_eq!(parsed.document.content_type, "text/xml");
        assert_eq!(parsed.content, None);
        value["content"] = json!([]);
        let parsed = parse(&value).unwrap();
        assert_eq!(parsed.document.content_type, "");
        assert_eq!(parsed.content, None);
    }

    /// Sets the value at `pointer`, adding the last key to its object when absent.
    fn set(pointer: &str, new: Value) -> impl Fn(&mut Value) + '_ {
        move |value: &mut Value| {
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            match value.pointer_mut(parent).unwrap() {
                Value::Object(map) => {
                    map.insert(key.to_owned(), new.clone());
                }
                Value::Array(list) => list[key.parse::<usize>().unwrap()] = new.clone(),
                _ => panic!("{pointer}"),
            }
        }
    }

    fn remove(pointer: &str) -> impl Fn(&mut Value) + '_ {
        move |value: &mut Value| {
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            let parent = value.pointer_mut(parent).unwrap();
            match parent {
                Value::Object(map) => {
                    map.remove(key).unwrap();
                }
                Value::Array(list) => {
                    list.remove(key.parse::<usize>().unwrap());
                }
                _ => panic!("{pointer}"),
            }
        }
    }

    fn s(text: &str) -> String {
        text.to_owned()
    }

    #[test]
    fn each_broken_input_gives_its_error_naming_path_and_value() {
        type Case = (
            &'static str,
            Box<dyn Fn(&mut Value)>,
            DocumentError,
            &'static [&'static str],
        );
        let cases: Vec<Case> = vec![
            (
                "resource type",
                Box::new(set("/resourceType", json!("Patient"))),
                DocumentError::ResourceType {
                    found: s("Patient"),
                },
                &["resourceType", "Patient"],
            ),
            (
                "no date",
                Box::new(remove("/date")),
                DocumentError::Missing { path: s("date") },
                &["date"],
            ),
            (
                "no master identifier value",
                Box::new(remove("/masterIdentifier/value")),
                DocumentError::Missing {
                    path: s("masterIdentifier.value"),
                },
                &["masterIdentifier.value"],
            ),
            (
                "no custodian identifier",
                Box::new(remove("/custodian/identifier")),
                DocumentError::Missing {
                    path: s("custodian.identifier"),
                },
                &["custodian.identifier"],
            ),
            (
                "no author",
                Box::new(set("/author", json!([]))),
                DocumentError::Missing {
                    path: s("author[0]"),
                },
                &["author[0]"],
            ),
            (
                "attachment without content type",
                Box::new(remove("/content/0/attachment/contentType")),
                DocumentError::Missing {
                    path: s("content[0].attachment.contentType"),
                },
                &["content[0].attachment.contentType"],
            ),
            (
                "linking identifier without value",
                Box::new(remove("/context/related/2/identifier/value")),
                DocumentError::Missing {
                    path: s("context.related[2].identifier.value"),
                },
                &["context.related[2].identifier.value"],
            ),
            (
                "status a number",
                Box::new(set("/status", json!(5))),
                DocumentError::WrongType {
                    path: s("status"),
                    expected: "a string",
                    found: "a number",
                },
                &["status", "a number"],
            ),
            (
                "related not a list",
                Box::new(set("/context/related", json!({}))),
                DocumentError::WrongType {
                    path: s("context.related"),
                    expected: "an array",
                    found: "an object",
                },
                &["context.related"],
            ),
            (
                "document id",
                Box::new(set("/masterIdentifier/value", json!("urn:oid:1.02.3"))),
                DocumentError::DocumentIdNotOid {
                    value: s("urn:oid:1.02.3"),
                },
                &["masterIdentifier.value", "1.02.3"],
            ),
            (
                "no document type coding",
                Box::new(remove("/type/coding/1")),
                DocumentError::NoDocumentType,
                &["type.coding", "urn:kuvasto:document-type"],
            ),
            (
                "unknown type code",
                Box::new(set("/type/coding/1/code", json!("referral"))),
                DocumentError::UnknownTypeCode {
                    path: s("type.coding[1].code"),
                    value: s("referral"),
                },
                &["type.coding[1].code", "referral"],
            ),
            (
                "unknown status",
                Box::new(set("/status", json!("preliminary"))),
                DocumentError::UnknownStatus {
                    value: s("preliminary"),
                },
                &["status", "preliminary"],
            ),
            (
                "no subject",
                Box::new(remove("/subject")),
                DocumentError::MissingPatient { path: s("subject") },
                &["subject"],
            ),
            (
                "no patient id",
                Box::new(remove("/subject/identifier/value")),
                DocumentError::MissingPatient {
                    path: s("subject.identifier.value"),
                },
                &["subject.identifier.value"],
            ),
            (
                "no patient id system",
                Box::new(remove("/subject/identifier/system")),
                DocumentError::MissingPatient {
                    path: s("subject.identifier.system"),
                },
                &["subject.identifier.system"],
            ),
            (
                "patient id with backslash",
                Box::new(set("/subject/identifier/value", json!("131052\\308T"))),
                DocumentError::PatientIdInvalid {
                    path: s("subject.identifier.value"),
                    value: s("131052\\308T"),
                },
                &["subject.identifier.value", "131052"],
            ),
            (
                "register",
                Box::new(set("/custodian/identifier/value", json!("register-1"))),
                DocumentError::RegisterNotOid {
                    value: s("register-1"),
                },
                &["custodian.identifier.value", "register-1"],
            ),
            (
                "author",
                Box::new(set("/author/0/identifier/value", json!("3.1"))),
                DocumentError::AuthorNotOid { value: s("3.1") },
                &["author[0].identifier.value", "3.1"],
            ),
            (
                "no service event nor accession number",
                Box::new(set(
                    "/context/related",
                    json!([{ "identifier": { "system": "urn:dicom:uid", "value": "1.2.3" } }]),
                )),
                DocumentError::NoServiceEventOrAccession,
                &["context.related[]", "identifier[]"],
            ),
            (
                "service event",
                Box::new(set(
                    "/context/related/0/identifier/value",
                    json!("urn:oid:1.2.x"),
                )),
                DocumentError::ServiceEventNotOid {
                    path: s("context.related[0].identifier.value"),
                    value: s("urn:oid:1.2.x"),
                },
                &["context.related[0].identifier.value", "1.2.x"],
            ),
            (
                "accession number too long",
                Box::new(set(
                    "/context/related/2/identifier/value",
                    json!("RTG24030500123456"),
                )),
                DocumentError::AccessionNumberTooLong {
                    path: s("context.related[2].identifier.value"),
                    value: s("RTG24030500123456"),
                    chars: 17,
                },
                &["context.related[2].identifier.value", "RTG24030500123456"],
            ),
            (
                "accession number characters",
                Box::new(set("/context/related/2/identifier/value", json!("A\\B"))),
                DocumentError::AccessionNumberCharacters {
                    path: s("context.related[2].identifier.value"),
                    value: s("A\\B"),
                },
                &["context.related[2].identifier.value"],
            ),
            (
                "study uid",
                Box::new(set(
                    "/context/related/3/identifier/value",
                    json!("urn:oid:1.2.03"),
                )),
                DocumentError::StudyUidInvalid {
                    path: s("context.related[3].identifier.value"),
                    value: s("urn:oid:1.2.03"),
                },
                &["context.related[3].identifier.value", "1.2.03"],
            ),
            (
                "conflicting service events",
                Box::new(set(
                    "/identifier",
                    json!([{ "system": "urn:kuvasto:service-event", "value": "1.2.246.9" }]),
                )),
                DocumentError::Conflicting {
                    what: "service event",
                    first_path: s("context.related[0].identifier.value"),
                    first: s("urn:oid:1.2.246.10.8282.2024.5"),
                    second_path: s("identifier[0].value"),
                    second: s("1.2.246.9"),
                },
                &[
                    "identifier[0].value",
                    "context.related[0].identifier.value",
                    "1.2.246.9",
                ],
            ),
            (
                "conflicting type codes",
                Box::new(set(
                    "/type/coding/0",
                    json!({ "system": "urn:kuvasto:document-type", "code": "report" }),
                )),
                DocumentError::Conflicting {
                    what: "document type",
                    first_path: s("type.coding[0].code"),
                    first: s("report"),
                    second_path: s("type.coding[1].code"),
                    second: s("request"),
                },
                &["type.coding[1].code", "request"],
            ),
            (
                "date without zone",
                Box::new(set("/date", json!("2024-03-05T09:15:00"))),
                DocumentError::BadDate {
                    value: s("2024-03-05T09:15:00"),
                },
                &["date", "2024-03-05T09:15:00"],
            ),
            (
                "unsupported content type",
                Box::new(set(
                    "/content/0/attachment/contentType",
                    json!("image/jpeg"),
                )),
                DocumentError::UnsupportedContentType {
                    value: s("image/jpeg"),
                },
                &["content[0].attachment.contentType", "image/jpeg"],
            ),
            (
                "base64 without padding",
                Box::new(set("/content/0/attachment/data", json!("JVBERi0xLjQ"))),
                DocumentError::BadBase64 {
                    message: base64::engine::general_purpose::STANDARD
                        .decode("JVBERi0xLjQ")
                        .unwrap_err()
                        .to_string(),
                },
                &["content[0].attachment.data"],
            ),
            (
                "two contents",
                Box::new(|value: &mut Value| {
                    let first = value["content"][0].clone();
                    value["content"].as_array_mut().unwrap().push(first);
                }),
                DocumentError::TooManyContents { count: 2 },
                &["content"],
            ),
        ];
        for (name, break_it, expected, mentions) in cases {
            let mut value = full_request();
            break_it(&mut value);
            let error = parse(&value).expect_err(name);
            assert_eq!(error, expected, "{name}");
            let message = error.to_string();
            for mention in mentions {
                assert!(
                    message.contains(mention),
                    "{name}: {message:?} lacks {mention:?}"
                );
            }
        }
    }

    #[test]
    fn not_json_not_an_object_and_too_deep() {
        let error = parse_document(b"{\"resourceType\": ").unwrap_err();
        assert!(matches!(error, DocumentError::NotJson { .. }), "{error:?}");
        assert!(
            error
                .to_string()
                .starts_with("the document is not JSON: EOF"),
            "{error}"
        );
        assert_eq!(
            parse_document(b"[1, 2]").unwrap_err(),
            DocumentError::NotAnObject { found: "an array" }
        );
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let error = parse_document(deep.as_bytes()).unwrap_err();
        assert!(error.to_string().contains("recursion limit"), "{error}");
    }

    #[test]
    fn content_limit_is_checked_before_and_after_decoding() {
        let with_data = |data: &str| {
            let mut value = full_request();
            value["content"][0]["attachment"]["data"] = json!(data);
            serde_json::to_vec(&value).unwrap()
        };
        // 4 bytes encode to 8 characters: accepted at a limit of 4.
        let parsed = parse_document_limited(&with_data("AAECAw=="), 4).unwrap();
        assert_eq!(parsed.content, Some(vec![0, 1, 2, 3]));
        // 5 bytes also take 8 characters: refused after decoding.
        assert_eq!(
            parse_document_limited(&with_data("AAECAwQ="), 4).unwrap_err(),
            DocumentError::ContentTooLarge {
                base64_len: 8,
                max_bytes: 4
            }
        );
        // 12 characters cannot fit in 4 bytes: refused before decoding (even though invalid).
        let error = parse_document_limited(&with_data("!!!!!!!!!!!!"), 4).unwrap_err();
        assert_eq!(
            error,
            DocumentError::ContentTooLarge {
                base64_len: 12,
                max_bytes: 4
            }
        );
        assert!(error.to_string().contains("content[0].attachment.data"));
        // The real limit: one base64 quantum past it is refused without decoding.
        let over = "A".repeat(DOCUMENT_CONTENT_BYTES_MAX.div_ceil(3) * 4 + 4);
        assert_eq!(
            decode_content(&over, DOCUMENT_CONTENT_BYTES_MAX).unwrap_err(),
            DocumentError::ContentTooLarge {
                base64_len: over.len(),
                max_bytes: DOCUMENT_CONTENT_BYTES_MAX
            }
        );
    }

    #[test]
    fn base64_must_be_strict() {
        for data in [
            "",
            "JVBE Ri0x",
            "JVBERi0xLjQK\n",
            "JVBERi0xLjQ",
            "JVBERi-_LjQK",
            "JVBERi0xLjQK====",
        ] {
            let error = decode_content(data, 1000).unwrap_err();
            assert!(
                matches!(error, DocumentError::BadBase64 { .. }),
                "{data:?}: {error:?}"
            );
        }
        assert_eq!(decode_content(PDF_BASE64, 1000).unwrap(), b"%PDF-1.4\n");
    }

    #[test]
    fn instants() {
        for good in [
            "2024-03-05T09:15:00Z",
            "2024-03-05T09:15:00.2Z",
            "2024-03-05T09:15:00.123456789-05:30",
            "2024-02-29T23:59:60+14:00",
            "2000-02-29T00:00:00+00:00",
        ] {
            assert!(is_instant(good), "{good}");
        }
        for bad in [
            "",
            "2024-03-05",
            "2024-03-05T09:15:00",
            "2024-03-05 09:15:00Z",
            "2024-03-05T09:15Z",
            "2024-03-05T09:15:00.Z",
            "2024-03-05T09:15:00.1234567890Z",
            "2024-03-05T24:00:00Z",
            "2024-03-05T09:60:00Z",
            "2024-03-05T09:15:61Z",
            "2023-02-29T09:15:00Z",
            "1900-02-29T09:15:00Z",
            "2024-04-31T09:15:00Z",
            "2024-13-05T09:15:00Z",
            "0000-01-01T00:00:00Z",
            "2024-03-05T09:15:00+14:30",
            "2024-03-05T09:15:00+0200",
            "2024-03-05T09:15:00+02:00Z",
            "2024-03-05T09:15:00z",
            "+024-03-05T09:15:00Z",
            "2024-03-05T09:15:00ZZ",
        ] {
            assert!(!is_instant(bad), "{bad}");
        }
    }

    #[test]
    fn oids_and_uids() {
        for good in [
            "1.2.246.21",
            "0.0",
            "2.25.329800735698586629295641978511506172918",
            "1.2.0.3",
        ] {
            assert!(is_oid(good), "{good}");
        }
        let longest = format!("1.2.{}", "1".repeat(60));
        assert_eq!(longest.len(), 64);
        assert!(is_oid(&longest));
        let too_long = format!("1.2.{}", "1".repeat(61));
        assert_eq!(too_long.len(), 65);
        for bad in [
            "1.02.3",
            "3.1",
            "1",
            "",
            "01.2",
            "1..2",
            "1.2.",
            ".1.2",
            "1.2a",
            "1.-2",
            " 1.2",
            "urn:oid:1.2",
            &too_long,
        ] {
            assert!(!is_oid(bad), "{bad:?}");
        }
        assert!(is_uid("1"));
        assert!(is_uid("9.8.7"));
        assert!(!is_uid("1.2.03"));
        assert!(!is_uid(""));
        assert!(!is_uid(&too_long));
    }

    #[test]
    fn long_bad_values_are_cut_in_messages() {
        let long = "x".repeat(10_000);
        let mut value = full_request();
        value["custodian"]["identifier"]["value"] = json!(long);
        let error = parse(&value).unwrap_err();
        let DocumentError::RegisterNotOid { value } = &error else {
            panic!("{error:?}")
        };
        assert_eq!(value.chars().count(), SHOWN_CHARS_MAX + 1);
        assert!(error.to_string().len() < 300);
    }

    #[test]
    fn document_serde_is_stable() {
        let document = full_request_document();
        let stored = serde_json::to_value(&document).unwrap();
        assert_eq!(stored["kind"], json!("request"));
        assert_eq!(stored["status"], json!("current"));
        let back: Document = serde_json::from_value(stored).unwrap();
        assert_eq!(back, document);
    }
}
