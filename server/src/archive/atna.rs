//! DICOM audit messages: an [`AuditRecord`] rendered as one XML document of the DICOM Audit
//! Message schema, DICOM PS3.15 Annex A.5 "Audit Trail Message Format Profile" (the schema of
//! A.5.1, the conventions of A.5.2 and the event specialisations of A.5.3; RFC 3881 heritage),
//! which is the message IHE ATNA audit repositories receive.
//!
//! # Message layout
//!
//! Element and attribute names, their order and the coded-value form (`csd-code`,
//! `codeSystemName`, `originalText`) follow the A.5.1 RELAX NG schema. No namespace, UTF-8, one
//! line (line breaks in values are written as character references), no trailing newline.
//!
//! - `EventIdentification`: `EventID` from [`event_id`]; `EventActionCode` per the table below;
//!   `EventDateTime` is `time_unix_ms` as `xs:dateTime` in UTC with milliseconds and `Z`
//!   (A.5.2.5 asks for time zone information); `EventOutcomeIndicator` is 0 for
//!   [`Outcome::Success`], 4 (minor failure) for [`Outcome::Refused`], 8 (serious failure) for
//!   [`Outcome::Failed`]. `EventTypeCode` carries the archive's own action name as a local code
//!   (`codeSystemName="99KUVASTO"`; PS3.16 reserves designators starting with `99` for local
//!   coding schemes), preceded by the DCM type code where an event needs one. For a refused or
//!   failed record `EventOutcomeDescription` is `detail`.
//! - `ActiveParticipant`, the calling system: `UserID` = `system`; `UserName` = `organisation`
//!   (the OID it acts for); from `peer` (`"{calling_ae}@{addr}"` for DIMSE, `"{addr}"` for
//!   HTTP): `AlternativeUserID` = `AETITLES={calling_ae}` (the A.5.2.2 form for DICOM
//!   applications) and `NetworkAccessPointID` = the host with `NetworkAccessPointTypeCode` 2 for
//!   an IP address (1, machine name, otherwise); `RoleIDCode`: the DCM role of the table below,
//!   then `role` as a local code.
//! - `ActiveParticipant`, the patient-portal user, when `on_behalf_of` is set: `UserID` =
//!   `on_behalf_of`, `UserIsRequestor` true. A.5.2 allows only one requestor, so then the calling
//!   system (the portal) is not the requestor: A.5.3.7 and A.5.3.10 model this as "other
//!   participants, especially third parties that are the requestor". It has no `RoleIDCode`: that
//!   field is user-optional for such participants, and CID 402 has no role for a patient
//!   (the DCM roles describe processes and media).
//! - `ActiveParticipant`, the archive: `UserID` = the audit source id, `UserIsRequestor` false,
//!   the DCM role opposite the caller's.
//! - `AuditSourceIdentification`: `AuditSourceID` = the audit source id and
//!   `<AuditSourceTypeCode csd-code="4"/>` (application server process). The schema accepts the
//!   digits 1-9 alone ("an isolated single digit value is acceptable"); `codeSystemName` and
//!   `originalText` are only for codes of other terminologies, so none is written.
//! - `ParticipantObjectIdentification`, in this order:
//!   - the study, when `study` is set (A.5.3.6/A.5.3.7): type 2 (system object), role 3
//!     (report), ID type (110180, DCM, "Study Instance UID");
//!   - the patient, when `patient` is set: type 1 (person), role 1 (patient), ID type
//!     (2, RFC-3881, "Patient Number");
//!   - for `search`, the query (A.5.3.10): type 2, role 3 (A.5.3.10 fixes role 3, not 24
//!     "Query"). The record names no SOP class, so the ID type is not (110181, DCM, "SOP Class
//!     UID") but a local `query-service` code, as A.5.3.10 note 2 allows for non-DICOM queries,
//!     with the ID `{protocol}:search` (QIDO-RS or C-FIND); `ParticipantObjectQuery` is `detail`
//!     (the query as the archive recorded it), base64;
//!   - for an authorization change, the register as the alert subject (A.5.3.11): type 2, role
//!     13 (security resource), ID type local `register`, and the mandatory `ParticipantObjectDetail`
//!     "Alert Description" (action and detail);
//!   - always last, the audit record itself: ID = `seq`, type 4 (other), ID type local
//!     `audit-record`, name "Kuvasto audit record", with `ParticipantObjectDetail` pairs `protocol`, `peer` (the raw text,
//!     port included), `register` and `detail` (each when not empty; values base64 as the
//!     schema's `ValuePair` requires, so they come back byte for byte).
//!
//!   The A.5.1 schema makes the `ParticipantObjectName` | `ParticipantObjectQuery` choice
//!   mandatory. The record holds neither a patient name nor a study description, so
//!   `ParticipantObjectName` repeats the identifier for patients, studies and registers.
//!
//! Every record field is in the message: `seq` (the record object's ID), `time_unix_ms`
//! (`EventDateTime`), `organisation` (`UserName`), `system` (`UserID`), `role` (local
//! `RoleIDCode`), `on_behalf_of` (its participant), `protocol` and `peer` (details, and the peer
//! split into `AlternativeUserID` and the network access point), `action` (local
//! `EventTypeCode`), `outcome`, `patient`, `study`, `register` and `detail`.
//!
//! Text goes into attributes and text nodes escaped (`& < > " '`, tab, line feed, carriage
//! return as character references). Characters XML 1.0 cannot carry at all (other C0 controls,
//! U+FFFE, U+FFFF) become U+FFFD there; the base64 details keep the exact text.
//!
//! # Events (`record.action` → DCM event, CID 400)
//!
//! | action | EventID | EventActionCode | caller's / archive's `RoleIDCode` |
//! |---|---|---|---|
//! | `store`, `store-refused`, `quarantine`, `import-override` | 110104 DICOM Instances Transferred | C | 110153 Source / 110152 Destination |
//! | `retrieve`, `retrieve*`, `metadata`, `frames`, `bulkdata`, `rendered`, `commit-verify`, `patient-view` | 110103 DICOM Instances Accessed | R | 110152 Destination / 110153 Source |
//! | `search` | 110112 Query | E | 110153 Source / 110152 Destination |
//! | `delete`, `reject`, `invalidate`, `expire` | 110103 DICOM Instances Accessed | D | none |
//! | `release`, `restore`, `correct`, `move` | 110103 DICOM Instances Accessed | U | none |
//! | `authorization-create`, `authorization-revoke` | 110113 Security Alert, type 110136 Security Roles Changed | E | none |
//! | `prohibition-set`, `prohibition-clear` | 110110 Patient Record | U | none |
//! | `document-register` | 110110 Patient Record | C | none |
//! | anything else | 110100 Application Activity | E | none / 110150 Application |
//!
//! Why these (each also noted at its match arm in `event`):
//! - A store is the completion of a transfer into the archive (A.5.3.7), whose roles are
//!   mandatory: the sender is the source, the receiver the destination. A.5.3.7 gives C when the
//!   receiver did not hold the instances (R when it held identical ones, U when it replaced
//!   them); the record does not say which, so C. A refused store is still C, with outcome 4. A
//!   quarantined instance is one received and held until its documents arrive: also C. An
//!   instance an operator imports under the override (`kuvasto import --operator-override`)
//!   is a transfer into the archive like any store: C.
//! - Reads of stored data are "DICOM SOP Instances being viewed, utilized" (A.5.3.6) with R;
//!   data flows from the archive (source) to the caller (destination).
//! - A search is a Query (A.5.3.10, action E): the querying process is the source, the process
//!   answering it the destination (both mandatory there).
//! - Deleting, rejecting, invalidating and expiring instances are A.5.3.6 with D; releasing from
//!   quarantine, restoring, correcting and moving are A.5.3.6 with U. A.5.3.8 (110105 DICOM Study
//!   Deleted) is for deleting whole studies; the record does not say whether all of a study went,
//!   so the instance-level event is used. A.5.3.6 does not specialise `RoleIDCode`.
//! - An authorization lets a producer read the organiser's register and write into it: it gives
//!   the producer a role on that register, and revoking takes it away. The DCM events have no
//!   "authorization changed" event; Security Alert (A.5.3.11, action E, success = informative
//!   alert) with the CID 403 type "Security Roles Changed" is the event for changes of who may
//!   do what (110135 "Object Security Attributes Changed" and 110137 "User Security Attributes
//!   Changed" describe the attributes of one object or one user, not a grant between two
//!   organisations).
//! - A disclosure prohibition changes the patient's own record, not any instance: Patient Record
//!   (A.5.3.14, "access or manipulation of patient records where specific DICOM SOP Instances are
//!   not involved") with U. An announced document (request, visit note, report) adds to the
//!   patient's record: Patient Record with C. Order Record (110109) would fit the request only.
//! - Anything else is reported as Application Activity with E. A.5.3.1 has start and stop as its
//!   defined type codes; the local action code takes their place, and the archive carries the
//!   mandatory role (110150, DCM, "Application"). The caller gets no DCM role: 110151
//!   "Application Launcher" means the one who started or stopped the application.

use super::audit::{AuditRecord, Outcome};
use std::net::{IpAddr, SocketAddr};

/// The local coding scheme designator of the archive's own codes (PS3.16 8.2: designators
/// starting with `99` are private).
const LOCAL_SCHEME: &str = "99KUVASTO";
/// DICOM's coding scheme designator.
const DCM: &str = "DCM";

/// A coded value of the schema's `CodedValueType`.
#[derive(Debug, Clone, Copy)]
struct Code<'a> {
    code: &'a str,
    scheme: &'a str,
    meaning: &'a str,
}

const fn dcm(code: &'static str, meaning: &'static str) -> Code<'static> {
    Code {
        code,
        scheme: DCM,
        meaning,
    }
}

const fn local(code: &'static str, meaning: &'static str) -> Code<'static> {
    Code {
        code,
        scheme: LOCAL_SCHEME,
        meaning,
    }
}

// Event IDs (CID 400).
const APPLICATION_ACTIVITY: Code<'static> = dcm("110100", "Application Activity");
const INSTANCES_ACCESSED: Code<'static> = dcm("110103", "DICOM Instances Accessed");
const INSTANCES_TRANSFERRED: Code<'static> = dcm("110104", "DICOM Instances Transferred");
const PATIENT_RECORD: Code<'static> = dcm("110110", "Patient Record");
const QUERY: Code<'static> = dcm("110112", "Query");
const SECURITY_ALERT: Code<'static> = dcm("110113", "Security Alert");
// Security alert type (CID 403).
const SECURITY_ROLES_CHANGED: Code<'static> = dcm("110136", "Security Roles Changed");
// Participant roles (CID 402).
const ROLE_APPLICATION: Code<'static> = dcm("110150", "Application");
const ROLE_DESTINATION: Code<'static> = dcm("110152", "Destination Role ID");
const ROLE_SOURCE: Code<'static> = dcm("110153", "Source Role ID");
// Participant object ID types.
const STUDY_INSTANCE_UID: Code<'static> = dcm("110180", "Study Instance UID");
const PATIENT_NUMBER: Code<'static> = Code {
    code: "2",
    scheme: "RFC-3881",
    meaning: "Patient Number",
};
const QUERY_SERVICE: Code<'static> = local("query-service", "Query Service");
const REGISTER: Code<'static> = local("register", "Register");
const AUDIT_RECORD: Code<'static> = local("audit-record", "Audit Record Sequence Number");

/// What kind of message an action makes; decides roles and participant objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Instances sent to the archive (A.5.3.7).
    Transfer,
    /// Stored data read by the caller (A.5.3.6, R).
    Read,
    /// Stored instances deleted or updated (A.5.3.6, D or U).
    Change,
    /// A query (A.5.3.10).
    Query,
    /// The patient's record changed (A.5.3.14).
    PatientRecord,
    /// An access-rights change (A.5.3.11).
    SecurityAlert,
    /// Any other activity of the archive (A.5.3.1).
    Application,
}

/// The DCM event of an action, with its action code.
#[derive(Debug, Clone, Copy)]
struct Event {
    id: Code<'static>,
    /// `EventActionCode`: C, R, U, D or E.
    action: &'static str,
    kind: Kind,
}

const fn ev(id: Code<'static>, action: &'static str, kind: Kind) -> Event {
    Event { id, action, kind }
}

/// The event an archive action maps to (module doc: the table and the reasons).
fn event(action: &str) -> Event {
    match action {
        // Completion of a transfer into the archive (A.5.3.7); C as the archive did not hold
        // the instances (the record does not tell identical re-sends apart); a refusal is C
        // with outcome 4; a quarantined instance was received and is held; an operator's
        // override import is a store like any other.
        "store" | "store-refused" | "quarantine" | "import-override" => {
            ev(INSTANCES_TRANSFERRED, "C", Kind::Transfer)
        }
        // Stored instances viewed or used (A.5.3.6, R).
        "commit-verify" | "patient-view" => ev(INSTANCES_ACCESSED, "R", Kind::Read),
        retrieve if retrieve.starts_with("retrieve") => ev(INSTANCES_ACCESSED, "R", Kind::Read),
        // A query received (A.5.3.10, E).
        "search" => ev(QUERY, "E", Kind::Query),
        // Instances deleted (A.5.3.6, D; 110105 would need to know a whole study went).
        "delete" | "reject" | "invalidate" | "expire" => ev(INSTANCES_ACCESSED, "D", Kind::Change),
        // Instances updated (A.5.3.6, U).
        "release" | "restore" | "restore-instance" | "correct" => {
            ev(INSTANCES_ACCESSED, "U", Kind::Change)
        }
        // Who may do what changed (A.5.3.11, E, type 110136 Security Roles Changed).
        "authorization-create" | "authorization-revoke" => {
            ev(SECURITY_ALERT, "E", Kind::SecurityAlert)
        }
        // The patient's record changed without any instance involved (A.5.3.14).
        "prohibition-set" | "prohibition-clear" => ev(PATIENT_RECORD, "U", Kind::PatientRecord),
        "document-register" => ev(PATIENT_RECORD, "C", Kind::PatientRecord),
        // A document or a prohibition of the patient's record read (A.5.3.14, R).
        "document-read" | "prohibition-read" => ev(PATIENT_RECORD, "R", Kind::PatientRecord),
        // Anything else the archive did (A.5.3.1, E).
        _ => ev(APPLICATION_ACTIVITY, "E", Kind::Application),
    }
}

/// The DCM event id (code, meaning) a record's action maps to.
pub fn event_id(action: &str) -> (&'static str, &'static str) {
    let id = event(action).id;
    (id.code, id.meaning)
}

/// `EventOutcomeIndicator`: 0 success, 4 minor failure, 8 serious failure.
fn outcome_indicator(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Success => "0",
        Outcome::Refused => "4",
        Outcome::Failed => "8",
    }
}

/// Renders one record as a DICOM audit message (one XML document, no trailing newline).
pub fn dicom_audit_message(record: &AuditRecord, audit_source_id: &str) -> String {
    let event = event(&record.action);
    let mut out = String::with_capacity(2048);
    out.push_str(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    open(&mut out, "AuditMessage", &[]);

    let when = event_date_time(record.time_unix_ms);
    open(
        &mut out,
        "EventIdentification",
        &[
            ("EventActionCode", event.action),
            ("EventDateTime", &when),
            ("EventOutcomeIndicator", outcome_indicator(record.outcome)),
        ],
    );
    coded(&mut out, "EventID", event.id);
    if event.kind == Kind::SecurityAlert {
        coded(&mut out, "EventTypeCode", SECURITY_ROLES_CHANGED);
    }
    if !record.action.is_empty() {
        coded(&mut out, "EventTypeCode", local_code(&record.action));
    }
    if record.outcome != Outcome::Success && !record.detail.is_empty() {
        text_element(&mut out, "EventOutcomeDescription", &record.detail);
    }
    close(&mut out, "EventIdentification");

    participants(&mut out, record, event.kind, audit_source_id);

    open(
        &mut out,
        "AuditSourceIdentification",
        &[("AuditSourceID", audit_source_id)],
    );
    empty(&mut out, "AuditSourceTypeCode", &[("csd-code", "4")]);
    close(&mut out, "AuditSourceIdentification");

    objects(&mut out, record, event.kind);
    close(&mut out, "AuditMessage");
    out
}

/// A local code whose value and meaning are the archive's own word for it.
fn local_code(word: &str) -> Code<'_> {
    Code {
        code: word,
        scheme: LOCAL_SCHEME,
        meaning: word,
    }
}

/// The calling system, the portal user it acts for (if any) and the archive.
fn participants(out: &mut String, record: &AuditRecord, kind: Kind, audit_source_id: &str) {
    let (caller_role, archive_role) = match kind {
        Kind::Transfer | Kind::Query => (Some(ROLE_SOURCE), Some(ROLE_DESTINATION)),
        Kind::Read => (Some(ROLE_DESTINATION), Some(ROLE_SOURCE)),
        Kind::Application => (None, Some(ROLE_APPLICATION)),
        Kind::Change | Kind::PatientRecord | Kind::SecurityAlert => (None, None),
    };
    let portal_user = !record.on_behalf_of.is_empty();

    let (calling_ae, address) = split_peer(&record.peer);
    let alternative = calling_ae.map(|ae| format!("AETITLES={ae}"));
    let access_point = network_access_point(address);
    let mut attrs: Vec<(&str, &str)> = vec![("UserID", &record.system)];
    if let Some(alternative) = &alternative {
        attrs.push(("AlternativeUserID", alternative));
    }
    if !record.organisation.is_empty() {
        attrs.push(("UserName", &record.organisation));
    }
    attrs.push((
        "UserIsRequestor",
        if portal_user { "false" } else { "true" },
    ));
    if let Some((host, type_code)) = &access_point {
        attrs.push(("NetworkAccessPointID", host));
        attrs.push(("NetworkAccessPointTypeCode", type_code));
    }
    open(out, "ActiveParticipant", &attrs);
    if let Some(role) = caller_role {
        coded(out, "RoleIDCode", role);
    }
    if !record.role.is_empty() {
        coded(out, "RoleIDCode", local_code(&record.role));
    }
    close(out, "ActiveParticipant");

    if portal_user {
        empty(
            out,
            "ActiveParticipant",
            &[
                ("UserID", &record.on_behalf_of),
                ("UserIsRequestor", "true"),
            ],
        );
    }

    let archive = [("UserID", audit_source_id), ("UserIsRequestor", "false")];
    match archive_role {
        Some(role) => {
            open(out, "ActiveParticipant", &archive);
            coded(out, "RoleIDCode", role);
            close(out, "ActiveParticipant");
        }
        None => empty(out, "ActiveParticipant", &archive),
    }
}

/// The study, the patient, the query or register the event is about, and the record itself.
fn objects(out: &mut String, record: &AuditRecord, kind: Kind) {
    if !record.study.is_empty() {
        object_start(out, &record.study, "2", Some("3"), STUDY_INSTANCE_UID);
        text_element(out, "ParticipantObjectName", &record.study);
        close(out, "ParticipantObjectIdentification");
    }
    if !record.patient.is_empty() {
        object_start(out, &record.patient, "1", Some("1"), PATIENT_NUMBER);
        text_element(out, "ParticipantObjectName", &record.patient);
        close(out, "ParticipantObjectIdentification");
    }
    if kind == Kind::Query {
        let id = if record.protocol.is_empty() {
            record.action.clone()
        } else {
            format!("{}:{}", record.protocol, record.action)
        };
        object_start(out, &id, "2", Some("3"), QUERY_SERVICE);
        text_element(
            out,
            "ParticipantObjectQuery",
            &base64(record.detail.as_bytes()),
        );
        close(out, "ParticipantObjectIdentification");
    }
    if kind == Kind::SecurityAlert && !record.register.is_empty() {
        object_start(out, &record.register, "2", Some("13"), REGISTER);
        text_element(out, "ParticipantObjectName", &record.register);
        let description = if record.detail.is_empty() {
            record.action.clone()
        } else {
            format!("{}: {}", record.action, record.detail)
        };
        detail(out, "Alert Description", &description);
        close(out, "ParticipantObjectIdentification");
    }

    let seq = record.seq.to_string();
    object_start(out, &seq, "4", None, AUDIT_RECORD);
    text_element(out, "ParticipantObjectName", "Kuvasto audit record");
    for (key, value) in [
        ("protocol", &record.protocol),
        ("peer", &record.peer),
        ("register", &record.register),
        ("detail", &record.detail),
    ] {
        if !value.is_empty() {
            detail(out, key, value);
        }
    }
    close(out, "ParticipantObjectIdentification");
}

/// Opens a `ParticipantObjectIdentification` and writes its `ParticipantObjectIDTypeCode`.
fn object_start(out: &mut String, id: &str, type_code: &str, role: Option<&str>, id_type: Code) {
    let mut attrs = vec![
        ("ParticipantObjectID", id),
        ("ParticipantObjectTypeCode", type_code),
    ];
    if let Some(role) = role {
        attrs.push(("ParticipantObjectTypeCodeRole", role));
    }
    open(out, "ParticipantObjectIdentification", &attrs);
    coded(out, "ParticipantObjectIDTypeCode", id_type);
}

/// A `ParticipantObjectDetail` type/value pair (the value base64, as the schema's `ValuePair`).
fn detail(out: &mut String, key: &str, value: &str) {
    empty(
        out,
        "ParticipantObjectDetail",
        &[("type", key), ("value", &base64(value.as_bytes()))],
    );
}

/// The calling AE title (DIMSE peers, `"{calling_ae}@{addr}"`) and the address. The address
/// part of a DIMSE peer is a socket address, which has no `@`, so the last `@` splits.
fn split_peer(peer: &str) -> (Option<&str>, &str) {
    match peer.rsplit_once('@') {
        Some((ae, address)) => (Some(ae.trim()).filter(|ae| !ae.is_empty()), address),
        None => (None, peer),
    }
}

/// `NetworkAccessPointID` and `NetworkAccessPointTypeCode` of an address (`host[:port]`):
/// 2 for an IP address, 1 for a machine name; none for an empty address.
fn network_access_point(address: &str) -> Option<(String, &'static str)> {
    let address = address.trim();
    if address.is_empty() {
        return None;
    }
    if let Ok(socket) = address.parse::<SocketAddr>() {
        return Some((socket.ip().to_string(), "2"));
    }
    let unbracketed = address.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Some((ip.to_string(), "2"));
    }
    let host = match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => address,
    };
    Some((host.to_string(), "1"))
}

/// `xs:dateTime` in UTC with milliseconds: `2025-11-26T00:00:00.123Z`.
fn event_date_time(unix_ms: i64) -> String {
    super::time::format_ms(unix_ms)
}

/// Standard base64 with padding (RFC 4648 section 4), the lexical form of `xs:base64Binary`.
fn base64(bytes: &[u8]) -> String {
    use ::base64::Engine;
    ::base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Appends `text` escaped for an attribute value or a text node.
fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            // Not an XML 1.0 character, not even as a reference.
            c if u32::from(c) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

fn start_tag(out: &mut String, name: &str, attrs: &[(&str, &str)]) {
    out.push('<');
    out.push_str(name);
    for (key, value) in attrs {
        out.push(' ');
        out.push_str(key);
        out.push_str("=\"");
        escape_into(out, value);
        out.push('"');
    }
}

fn open(out: &mut String, name: &str, attrs: &[(&str, &str)]) {
    start_tag(out, name, attrs);
    out.push('>');
}

fn empty(out: &mut String, name: &str, attrs: &[(&str, &str)]) {
    start_tag(out, name, attrs);
    out.push_str("/>");
}

fn close(out: &mut String, name: &str) {
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

fn text_element(out: &mut String, name: &str, text: &str) {
    open(out, name, &[]);
    escape_into(out, text);
    close(out, name);
}

/// An element of the schema's `CodedValueType`.
fn coded(out: &mut String, name: &str, code: Code) {
    empty(
        out,
        name,
        &[
            ("csd-code", code.code),
            ("codeSystemName", code.scheme),
            ("originalText", code.meaning),
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(action: &str) -> AuditRecord {
        AuditRecord {
            seq: 42,
            time_unix_ms: 1_764_115_200_123,
            organisation: "1.2.246.10.1234567".into(),
            system: "pacs-north".into(),
            role: "system".into(),
            on_behalf_of: String::new(),
            protocol: "dimse".into(),
            peer: "MODALITY1@10.0.0.7:50412".into(),
            action: action.into(),
            outcome: Outcome::Success,
            patient: "010101-123N".into(),
            study: "1.2.3.4".into(),
            register: "1.2.246.10.1234567.10.1".into(),
            detail: "sop_instance 1.2.3.4.5.6".into(),
        }
    }

    fn render(record: &AuditRecord) -> (String, Element) {
        let xml = dicom_audit_message(record, "kuvasto-1");
        let root = parse(&xml).unwrap_or_else(|e| panic!("not well-formed ({e}): {xml}"));
        (xml, root)
    }

    // ---- a minimal XML 1.0 reader for the tests: checks well-formedness, builds a tree ----

    #[derive(Debug)]
    struct Element {
        name: String,
        attrs: Vec<(String, String)>,
        children: Vec<Node>,
    }

    #[derive(Debug)]
    enum Node {
        Element(Element),
        Text(String),
    }

    impl Element {
        fn attr(&self, name: &str) -> Option<&str> {
            self.attrs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }
        fn elements(&self) -> impl Iterator<Item = &Element> {
            self.children.iter().filter_map(|n| match n {
                Node::Element(e) => Some(e),
                Node::Text(_) => None,
            })
        }
        fn all(&self, name: &str) -> Vec<&Element> {
            self.elements().filter(|e| e.name == name).collect()
        }
        fn child(&self, name: &str) -> &Element {
            let found = self.all(name);
            assert_eq!(found.len(), 1, "{name} under {}", self.name);
            found[0]
        }
        fn text(&self) -> String {
            self.children
                .iter()
                .map(|n| match n {
                    Node::Text(t) => t.as_str(),
                    Node::Element(_) => "",
                })
                .collect()
        }
    }

    fn is_xml_char(c: char) -> bool {
        matches!(u32::from(c), 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..)
    }

    fn is_name_start(c: char) -> bool {
        c.is_ascii_alphabetic() || c == '_' || c == ':' || u32::from(c) > 0x7F
    }

    fn is_name_char(c: char) -> bool {
        is_name_start(c) || c.is_ascii_digit() || c == '-' || c == '.'
    }

    struct Reader<'a> {
        rest: &'a str,
    }

    impl<'a> Reader<'a> {
        fn eat(&mut self, s: &str) -> bool {
            match self.rest.strip_prefix(s) {
                Some(rest) => {
                    self.rest = rest;
                    true
                }
                None => false,
            }
        }
        fn expect(&mut self, s: &str) -> Result<(), String> {
            if self.eat(s) {
                Ok(())
            } else {
                Err(format!("expected {s:?} at {:?}", self.head()))
            }
        }
        fn head(&self) -> &str {
            let end = self
                .rest
                .char_indices()
                .nth(30)
                .map_or(self.rest.len(), |(i, _)| i);
            &self.rest[..end]
        }
        fn space(&mut self) -> bool {
            let trimmed = self.rest.trim_start_matches([' ', '\t', '\n', '\r']);
            let any = trimmed.len() != self.rest.len();
            self.rest = trimmed;
            any
        }
        fn name(&mut self) -> Result<String, String> {
            let mut chars = self.rest.char_indices();
            match chars.next() {
                Some((_, c)) if is_name_start(c) => {}
                _ => return Err(format!("expected a name at {:?}", self.head())),
            }
            let end = chars
                .find(|&(_, c)| !is_name_char(c))
                .map_or(self.rest.len(), |(i, _)| i);
            let (name, rest) = self.rest.split_at(end);
            self.rest = rest;
            Ok(name.to_string())
        }
        /// Text up to (not including) `stop`, references resolved; `<` is never allowed.
        fn chars_until(&mut self, stop: char) -> Result<String, String> {
            let mut out = String::new();
            loop {
                let c = self
                    .rest
                    .chars()
                    .next()
                    .ok_or_else(|| "unexpected end".to_string())?;
                if c == stop {
                    return Ok(out);
                }
                if c == '<' {
                    return Err(format!("'<' in text or value at {:?}", self.head()));
                }
                if !is_xml_char(c) {
                    return Err(format!("not an XML character: {c:?}"));
                }
                if c == '&' {
                    let end = self
                        .rest
                        .find(';')
                        .ok_or_else(|| "unterminated reference".to_string())?;
                    let reference = &self.rest[1..end];
                    let resolved = match reference {
                        "amp" => '&',
                        "lt" => '<',
                        "gt" => '>',
                        "quot" => '"',
                        "apos" => '\'',
                        r => {
                            let number = if let Some(hex) = r.strip_prefix("#x") {
                                u32::from_str_radix(hex, 16)
                            } else if let Some(dec) = r.strip_prefix('#') {
                                dec.parse()
                            } else {
                                return Err(format!("unknown entity &{r};"));
                            };
                            number
                                .ok()
                                .and_then(char::from_u32)
                                .filter(|&c| is_xml_char(c))
                                .ok_or_else(|| format!("bad character reference &{r};"))?
                        }
                    };
                    out.push(resolved);
                    self.rest = &self.rest[end + 1..];
                } else {
                    if c == '>' && out.ends_with("]]") {
                        return Err("']]>' in text".into());
                    }
                    out.push(c);
                    self.rest = &self.rest[c.len_utf8()..];
                }
            }
        }
        fn element(&mut self) -> Result<Element, String> {
            self.expect("<")?;
            let name = self.name()?;
            let mut attrs: Vec<(String, String)> = Vec::new();
            loop {
                let spaced = self.space();
                if self.eat("/>") {
                    return Ok(Element {
                        name,
                        attrs,
                        children: Vec::new(),
                    });
                }
                if self.eat(">") {
                    break;
                }
                if !spaced {
                    return Err(format!("no space before attribute at {:?}", self.head()));
                }
                let key = self.name()?;
                self.space();
                self.expect("=")?;
                self.space();
                let quote = if self.eat("\"") {
                    '"'
                } else if self.eat("'") {
                    '\''
                } else {
                    return Err(format!("unquoted value of {key}"));
                };
                let value = self.chars_until(quote)?;
                self.rest = &self.rest[1..];
                if attrs.iter().any(|(k, _)| *k == key) {
                    return Err(format!("attribute {key} twice"));
                }
                attrs.push((key, value));
            }
            let mut children = Vec::new();
            loop {
                if self.eat("</") {
                    let end = self.name()?;
                    self.space();
                    self.expect(">")?;
                    if end != name {
                        return Err(format!("<{name}> closed by </{end}>"));
                    }
                    return Ok(Element {
                        name,
                        attrs,
                        children,
                    });
                }
                if self.rest.starts_with('<') {
                    children.push(Node::Element(self.element()?));
                } else {
                    children.push(Node::Text(self.chars_until('<')?));
                }
            }
        }
    }

    /// Parses a whole document: the XML declaration, one root element, nothing after it.
    fn parse(doc: &str) -> Result<Element, String> {
        let mut reader = Reader { rest: doc };
        reader.expect(r#"<?xml version="1.0" encoding="UTF-8"?>"#)?;
        let root = reader.element()?;
        if !reader.rest.is_empty() {
            return Err(format!("after the root: {:?}", reader.rest));
        }
        Ok(root)
    }

    fn base64_decode(text: &str) -> Vec<u8> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        assert_eq!(text.len() % 4, 0, "base64 length of {text:?}");
        let mut out = Vec::new();
        for quad in text.as_bytes().chunks(4) {
            let mut n = 0u32;
            let mut pad = 0;
            for &b in quad {
                n <<= 6;
                if b == b'=' {
                    pad += 1;
                } else {
                    assert_eq!(pad, 0, "data after padding in {text:?}");
                    let v = ALPHABET.iter().position(|&a| a == b).expect("base64 digit");
                    n |= v as u32;
                }
            }
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&bytes[..3 - pad]);
        }
        out
    }

    /// The record object's details, decoded.
    fn record_details(root: &Element) -> Vec<(String, String)> {
        let record = root
            .all("ParticipantObjectIdentification")
            .into_iter()
            .find(|o| o.attr("ParticipantObjectTypeCode") == Some("4"))
            .expect("the record object");
        record
            .all("ParticipantObjectDetail")
            .into_iter()
            .map(|d| {
                let value = base64_decode(d.attr("value").unwrap_or_default());
                (
                    d.attr("type").unwrap_or_default().to_string(),
                    String::from_utf8(value).expect("UTF-8"),
                )
            })
            .collect()
    }

    fn object_with_id_type<'e>(root: &'e Element, code: &str) -> Option<&'e Element> {
        root.all("ParticipantObjectIdentification")
            .into_iter()
            .find(|o| o.child("ParticipantObjectIDTypeCode").attr("csd-code") == Some(code))
    }

    fn codes(element: &Element, name: &str) -> Vec<(String, String, String)> {
        element
            .all(name)
            .into_iter()
            .map(|c| {
                (
                    c.attr("csd-code").unwrap_or_default().to_string(),
                    c.attr("codeSystemName").unwrap_or_default().to_string(),
                    c.attr("originalText").unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    fn code(code: &str, scheme: &str, meaning: &str) -> (String, String, String) {
        (code.into(), scheme.into(), meaning.into())
    }

    fn requestors(root: &Element) -> Vec<&Element> {
        root.all("ActiveParticipant")
            .into_iter()
            .filter(|p| p.attr("UserIsRequestor") == Some("true"))
            .collect()
    }

    // ---- the tests ----

    #[test]
    fn a_store_is_an_instances_transferred_create_from_the_calling_ae() {
        let (xml, root) = render(&record("store"));
        assert!(xml.starts_with(r#"<?xml version="1.0" encoding="UTF-8"?><AuditMessage>"#));
        assert!(xml.ends_with("</AuditMessage>"), "no trailing newline");
        assert_eq!(root.name, "AuditMessage");
        let names: Vec<&str> = root.elements().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "EventIdentification",
                "ActiveParticipant",
                "ActiveParticipant",
                "AuditSourceIdentification",
                "ParticipantObjectIdentification",
                "ParticipantObjectIdentification",
                "ParticipantObjectIdentification",
            ]
        );

        let event = root.child("EventIdentification");
        assert_eq!(event.attr("EventActionCode"), Some("C"));
        assert_eq!(event.attr("EventOutcomeIndicator"), Some("0"));
        assert_eq!(
            event.attr("EventDateTime"),
            Some("2025-11-26T00:00:00.123Z")
        );
        assert_eq!(
            codes(event, "EventID"),
            [code("110104", "DCM", "DICOM Instances Transferred")]
        );
        assert_eq!(
            codes(event, "EventTypeCode"),
            [code("store", "99KUVASTO", "store")]
        );
        assert!(event.all("EventOutcomeDescription").is_empty());

        let participants = root.all("ActiveParticipant");
        let caller = participants[0];
        assert_eq!(caller.attr("UserID"), Some("pacs-north"));
        assert_eq!(caller.attr("AlternativeUserID"), Some("AETITLES=MODALITY1"));
        assert_eq!(caller.attr("UserName"), Some("1.2.246.10.1234567"));
        assert_eq!(caller.attr("UserIsRequestor"), Some("true"));
        assert_eq!(caller.attr("NetworkAccessPointID"), Some("10.0.0.7"));
        assert_eq!(caller.attr("NetworkAccessPointTypeCode"), Some("2"));
        assert_eq!(
            codes(caller, "RoleIDCode"),
            [
                code("110153", "DCM", "Source Role ID"),
                code("system", "99KUVASTO", "system")
            ]
        );
        let archive = participants[1];
        assert_eq!(archive.attr("UserID"), Some("kuvasto-1"));
        assert_eq!(archive.attr("UserIsRequestor"), Some("false"));
        assert_eq!(archive.attr("AlternativeUserID"), None);
        assert_eq!(
            codes(archive, "RoleIDCode"),
            [code("110152", "DCM", "Destination Role ID")]
        );

        let source = root.child("AuditSourceIdentification");
        assert_eq!(source.attr("AuditSourceID"), Some("kuvasto-1"));
        assert_eq!(
            source.child("AuditSourceTypeCode").attrs,
            [("csd-code".to_string(), "4".to_string())]
        );

        let study = object_with_id_type(&root, "110180").expect("study object");
        assert_eq!(study.attr("ParticipantObjectID"), Some("1.2.3.4"));
        assert_eq!(study.attr("ParticipantObjectTypeCode"), Some("2"));
        assert_eq!(study.attr("ParticipantObjectTypeCodeRole"), Some("3"));
        assert_eq!(
            codes(study, "ParticipantObjectIDTypeCode"),
            [code("110180", "DCM", "Study Instance UID")]
        );
        let patient = object_with_id_type(&root, "2").expect("patient object");
        assert_eq!(patient.attr("ParticipantObjectID"), Some("010101-123N"));
        assert_eq!(patient.attr("ParticipantObjectTypeCode"), Some("1"));
        assert_eq!(patient.attr("ParticipantObjectTypeCodeRole"), Some("1"));
        assert_eq!(
            codes(patient, "ParticipantObjectIDTypeCode"),
            [code("2", "RFC-3881", "Patient Number")]
        );
        assert_eq!(patient.child("ParticipantObjectName").text(), "010101-123N");

        let record_object = object_with_id_type(&root, "audit-record").expect("record object");
        assert_eq!(record_object.attr("ParticipantObjectID"), Some("42"));
        assert_eq!(
            record_details(&root),
            [
                ("protocol".to_string(), "dimse".to_string()),
                ("peer".to_string(), "MODALITY1@10.0.0.7:50412".to_string()),
                (
                    "register".to_string(),
                    "1.2.246.10.1234567.10.1".to_string()
                ),
                ("detail".to_string(), "sop_instance 1.2.3.4.5.6".to_string()),
            ]
        );
    }

    #[test]
    fn markup_characters_are_escaped_and_come_back() {
        let nasty = "<&>\"' x\ty\r\nz ]]> &amp;";
        let mut r = record("store-refused");
        r.outcome = Outcome::Refused;
        r.organisation = nasty.into();
        r.system = nasty.into();
        r.detail = nasty.into();
        r.study = nasty.into();
        let (xml, root) = render(&r);
        assert!(xml.contains("&lt;&amp;&gt;&quot;&apos;"), "{xml}");
        assert!(
            !xml.contains('\n') && !xml.contains('\r'),
            "one line: {xml}"
        );
        let caller = root.all("ActiveParticipant")[0];
        assert_eq!(caller.attr("UserName"), Some(nasty));
        assert_eq!(caller.attr("UserID"), Some(nasty));
        let event = root.child("EventIdentification");
        assert_eq!(event.child("EventOutcomeDescription").text(), nasty);
        let study = object_with_id_type(&root, "110180").expect("study object");
        assert_eq!(study.attr("ParticipantObjectID"), Some(nasty));
        assert_eq!(study.child("ParticipantObjectName").text(), nasty);
        let details = record_details(&root);
        assert!(details.contains(&("detail".to_string(), nasty.to_string())));
    }

    #[test]
    fn characters_xml_cannot_carry_are_replaced_but_kept_in_the_details() {
        let mut r = record("store");
        r.detail = "a\u{1}b\u{FFFF}c".into();
        r.outcome = Outcome::Failed;
        let (_, root) = render(&r);
        let event = root.child("EventIdentification");
        assert_eq!(
            event.child("EventOutcomeDescription").text(),
            "a\u{FFFD}b\u{FFFD}c"
        );
        assert!(record_details(&root).contains(&("detail".to_string(), r.detail.clone())));
    }

    #[test]
    fn a_refused_store_is_a_minor_failure_and_a_failed_one_serious() {
        let mut r = record("store-refused");
        r.outcome = Outcome::Refused;
        r.detail = "A700: documents first: no referral for 1.2.246.537.10.1".into();
        let (_, root) = render(&r);
        let event = root.child("EventIdentification");
        assert_eq!(event.attr("EventOutcomeIndicator"), Some("4"));
        assert_eq!(event.attr("EventActionCode"), Some("C"));
        assert_eq!(codes(event, "EventID")[0].0, "110104");
        assert_eq!(event.child("EventOutcomeDescription").text(), r.detail);

        r.outcome = Outcome::Failed;
        let (_, root) = render(&r);
        let event = root.child("EventIdentification");
        assert_eq!(event.attr("EventOutcomeIndicator"), Some("8"));
    }

    #[test]
    fn a_search_is_a_query_with_its_criteria_and_no_study_when_none() {
        let mut r = record("search");
        r.study = String::new();
        r.patient = String::new();
        r.protocol = "dicomweb".into();
        r.peer = "10.0.0.8:443".into();
        r.detail = "level Study, 3 filters, 12 hits".into();
        let (_, root) = render(&r);
        let event = root.child("EventIdentification");
        assert_eq!(codes(event, "EventID"), [code("110112", "DCM", "Query")]);
        assert_eq!(event.attr("EventActionCode"), Some("E"));
        assert!(object_with_id_type(&root, "110180").is_none(), "no study");
        assert!(object_with_id_type(&root, "2").is_none(), "no patient");

        let participants = root.all("ActiveParticipant");
        let caller = participants[0];
        assert_eq!(caller.attr("AlternativeUserID"), None, "no AE over HTTP");
        assert_eq!(caller.attr("NetworkAccessPointID"), Some("10.0.0.8"));
        assert_eq!(caller.attr("NetworkAccessPointTypeCode"), Some("2"));
        assert_eq!(codes(caller, "RoleIDCode")[0].0, "110153");
        assert_eq!(codes(participants[1], "RoleIDCode")[0].0, "110152");

        let query = object_with_id_type(&root, "query-service").expect("query object");
        assert_eq!(query.attr("ParticipantObjectID"), Some("dicomweb:search"));
        assert_eq!(query.attr("ParticipantObjectTypeCode"), Some("2"));
        assert_eq!(query.attr("ParticipantObjectTypeCodeRole"), Some("3"));
        let sent = base64_decode(&query.child("ParticipantObjectQuery").text());
        assert_eq!(sent, r.detail.as_bytes());

        r.study = "1.2.3".into();
        let (_, root) = render(&r);
        let study = object_with_id_type(&root, "110180").expect("study object");
        assert_eq!(study.attr("ParticipantObjectID"), Some("1.2.3"));
    }

    #[test]
    fn a_read_makes_the_caller_the_destination() {
        for action in [
            "retrieve",
            "retrieve-frames",
            "retrieve-metadata",
            "patient-view",
        ] {
            let (_, root) = render(&record(action));
            let event = root.child("EventIdentification");
            assert_eq!(codes(event, "EventID")[0].0, "110103", "{action}");
            assert_eq!(event.attr("EventActionCode"), Some("R"), "{action}");
            let participants = root.all("ActiveParticipant");
            assert_eq!(codes(participants[0], "RoleIDCode")[0].0, "110152");
            assert_eq!(codes(participants[1], "RoleIDCode")[0].0, "110153");
        }
    }

    #[test]
    fn event_date_time_is_utc_with_milliseconds() {
        assert_eq!(event_date_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            event_date_time(1_764_115_200_123),
            "2025-11-26T00:00:00.123Z"
        );
        assert_eq!(event_date_time(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(event_date_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            event_date_time(4_102_444_799_999),
            "2099-12-31T23:59:59.999Z"
        );
        // Extremes do not panic and stay in the xs:dateTime form.
        for ms in [i64::MIN, i64::MAX] {
            let text = event_date_time(ms);
            assert!(text.ends_with('Z') && text.contains('T'), "{text}");
        }
    }

    #[test]
    fn an_unknown_action_is_application_activity() {
        let (_, root) = render(&record("storage-commitment"));
        let event = root.child("EventIdentification");
        assert_eq!(
            codes(event, "EventID"),
            [code("110100", "DCM", "Application Activity")]
        );
        assert_eq!(event.attr("EventActionCode"), Some("E"));
        assert_eq!(
            codes(event, "EventTypeCode"),
            [code(
                "storage-commitment",
                "99KUVASTO",
                "storage-commitment"
            )]
        );
        let archive = root.all("ActiveParticipant")[1];
        assert_eq!(
            codes(archive, "RoleIDCode"),
            [code("110150", "DCM", "Application")]
        );
        assert_eq!(event_id(""), ("110100", "Application Activity"));
    }

    #[test]
    fn every_action_maps_to_its_event() {
        let table: &[(&str, &str, &str)] = &[
            ("store", "110104", "C"),
            ("store-refused", "110104", "C"),
            ("quarantine", "110104", "C"),
            ("import-override", "110104", "C"),
            ("retrieve", "110103", "R"),
            ("retrieve-metadata", "110103", "R"),
            ("retrieve-bulkdata", "110103", "R"),
            ("retrieve-metadata", "110103", "R"),
            ("retrieve-frames", "110103", "R"),
            ("retrieve-bulkdata", "110103", "R"),
            ("document-read", "110110", "R"),
            ("prohibition-read", "110110", "R"),
            ("commit-verify", "110103", "R"),
            ("patient-view", "110103", "R"),
            ("search", "110112", "E"),
            ("delete", "110103", "D"),
            ("reject", "110103", "D"),
            ("invalidate", "110103", "D"),
            ("expire", "110103", "D"),
            ("release", "110103", "U"),
            ("restore", "110103", "U"),
            ("restore-instance", "110103", "U"),
            ("authorization-create", "110113", "E"),
            ("authorization-revoke", "110113", "E"),
            ("prohibition-set", "110110", "U"),
            ("prohibition-clear", "110110", "U"),
            ("document-register", "110110", "C"),
            ("read", "110100", "E"),
            ("Store", "110100", "E"),
        ];
        for &(action, id, action_code) in table {
            assert_eq!(event_id(action).0, id, "{action}");
            let (_, root) = render(&record(action));
            let event = root.child("EventIdentification");
            assert_eq!(event.attr("EventActionCode"), Some(action_code), "{action}");
            assert_eq!(codes(event, "EventID")[0].0, id, "{action}");
        }
        assert_eq!(event_id("store"), ("110104", "DICOM Instances Transferred"));
        assert_eq!(event_id("retrieve"), ("110103", "DICOM Instances Accessed"));
        assert_eq!(event_id("search"), ("110112", "Query"));
        assert_eq!(event_id("prohibition-set"), ("110110", "Patient Record"));
        assert_eq!(
            event_id("authorization-create"),
            ("110113", "Security Alert")
        );
    }

    #[test]
    fn an_authorization_change_is_a_security_alert_on_the_register() {
        let mut r = record("authorization-create");
        r.patient = String::new();
        r.study = String::new();
        r.detail = "producer 1.2.246.10.7654321 may read and write until 2026-12-31".into();
        let (_, root) = render(&r);
        let event = root.child("EventIdentification");
        assert_eq!(event.attr("EventActionCode"), Some("E"));
        assert_eq!(
            codes(event, "EventTypeCode"),
            [
                code("110136", "DCM", "Security Roles Changed"),
                code("authorization-create", "99KUVASTO", "authorization-create")
            ]
        );
        let register = object_with_id_type(&root, "register").expect("register object");
        assert_eq!(
            register.attr("ParticipantObjectID"),
            Some("1.2.246.10.1234567.10.1")
        );
        assert_eq!(register.attr("ParticipantObjectTypeCode"), Some("2"));
        assert_eq!(register.attr("ParticipantObjectTypeCodeRole"), Some("13"));
        let alert = register.child("ParticipantObjectDetail");
        assert_eq!(alert.attr("type"), Some("Alert Description"));
        let text = base64_decode(alert.attr("value").unwrap_or_default());
        assert_eq!(
            text,
            format!("authorization-create: {}", r.detail).as_bytes()
        );
    }

    #[test]
    fn a_prohibition_updates_the_patient_record() {
        let mut r = record("prohibition-set");
        r.study = String::new();
        let (_, root) = render(&r);
        let event = root.child("EventIdentification");
        assert_eq!(
            codes(event, "EventID"),
            [code("110110", "DCM", "Patient Record")]
        );
        assert_eq!(event.attr("EventActionCode"), Some("U"));
        let patient = object_with_id_type(&root, "2").expect("patient object");
        assert_eq!(patient.attr("ParticipantObjectID"), Some("010101-123N"));
    }

    #[test]
    fn a_portal_user_is_the_only_requestor() {
        let mut r = record("patient-view");
        r.role = "portal".into();
        r.system = "omakanta".into();
        r.on_behalf_of = "010101-123N".into();
        r.protocol = "api".into();
        r.peer = "10.1.2.3:55000".into();
        let (_, root) = render(&r);
        let only = requestors(&root);
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].attr("UserID"), Some("010101-123N"));
        let participants = root.all("ActiveParticipant");
        assert_eq!(participants.len(), 3);
        assert_eq!(participants[0].attr("UserID"), Some("omakanta"));
        assert_eq!(participants[0].attr("UserIsRequestor"), Some("false"));
        assert_eq!(
            codes(participants[0], "RoleIDCode"),
            [
                code("110152", "DCM", "Destination Role ID"),
                code("portal", "99KUVASTO", "portal")
            ]
        );

        // Without one, the calling system is the one requestor.
        let (_, root) = render(&record("patient-view"));
        let only = requestors(&root);
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].attr("UserID"), Some("pacs-north"));
    }

    #[test]
    fn peers_split_into_ae_title_and_network_access_point() {
        assert_eq!(
            split_peer("MODALITY1@10.0.0.7:50412"),
            (Some("MODALITY1"), "10.0.0.7:50412")
        );
        assert_eq!(split_peer("A@B@[::1]:104"), (Some("A@B"), "[::1]:104"));
        assert_eq!(split_peer("@10.0.0.7:1"), (None, "10.0.0.7:1"));
        assert_eq!(split_peer("10.0.0.7:1"), (None, "10.0.0.7:1"));
        assert_eq!(
            network_access_point("[::1]:104"),
            Some(("::1".to_string(), "2"))
        );
        assert_eq!(
            network_access_point("10.0.0.7"),
            Some(("10.0.0.7".to_string(), "2"))
        );
        assert_eq!(
            network_access_point("pacs.example:104"),
            Some(("pacs.example".to_string(), "1"))
        );
        assert_eq!(network_access_point(""), None);

        let mut r = record("store");
        r.peer = "STORESCU@[2001:db8::7]:11112".into();
        let (_, root) = render(&r);
        let caller = root.all("ActiveParticipant")[0];
        assert_eq!(caller.attr("AlternativeUserID"), Some("AETITLES=STORESCU"));
        assert_eq!(caller.attr("NetworkAccessPointID"), Some("2001:db8::7"));

        r.peer = String::new();
        let (_, root) = render(&r);
        let caller = root.all("ActiveParticipant")[0];
        assert_eq!(caller.attr("NetworkAccessPointID"), None);
        assert_eq!(caller.attr("NetworkAccessPointTypeCode"), None);
    }

    #[test]
    fn every_message_is_well_formed() {
        let actions = [
            "store",
            "search",
            "delete",
            "authorization-revoke",
            "prohibition-clear",
            "document-register",
            "",
            "x<y",
        ];
        let texts = [
            "",
            " ",
            "<&>\"'",
            "\u{0}\u{7}\u{1F}",
            "ä€𝄞\u{FFFE}",
            "]]>",
            "&#1;",
        ];
        for action in actions {
            for text in texts {
                for outcome in [Outcome::Success, Outcome::Refused, Outcome::Failed] {
                    let r = AuditRecord {
                        seq: u64::MAX,
                        time_unix_ms: i64::MIN,
                        organisation: text.into(),
                        system: text.into(),
                        role: text.into(),
                        on_behalf_of: text.into(),
                        protocol: text.into(),
                        peer: format!("{text}@{text}"),
                        action: action.into(),
                        outcome,
                        patient: text.into(),
                        study: text.into(),
                        register: text.into(),
                        detail: text.into(),
                    };
                    let xml = dicom_audit_message(&r, text);
                    let root = parse(&xml).unwrap_or_else(|e| panic!("{e}: {xml}"));
                    assert_eq!(requestors(&root).len(), 1, "{xml}");
                    assert!(!xml.ends_with('\n'));
                }
            }
        }
    }

    #[test]
    fn the_checker_rejects_what_is_not_well_formed() {
        for bad in [
            "<a>",
            "<a></b>",
            "<a x=\"1\" x=\"2\"/>",
            "<a x=\"<\"/>",
            "<a>&nope;</a>",
            "<a>&#1;</a>",
            "<a>x & y</a>",
            "<a/><b/>",
            "<a>]]></a>",
            "<a x=1/>",
            "<a\u{1}/>",
        ] {
            let doc = format!(r#"<?xml version="1.0" encoding="UTF-8"?>{bad}"#);
            assert!(parse(&doc).is_err(), "accepted {bad:?}");
        }
        let good = r#"<?xml version="1.0" encoding="UTF-8"?><a x="&#10;&lt;"><b/>t&amp;</a>"#;
        let root = parse(good).expect("well-formed");
        assert_eq!(root.attr("x"), Some("\n<"));
        assert_eq!(root.text(), "t&");
    }

    #[test]
    fn base64_matches_rfc_4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
            assert_eq!(base64_decode(encoded), plain.as_bytes());
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(base64_decode(&base64(&all)), all);
    }
}
