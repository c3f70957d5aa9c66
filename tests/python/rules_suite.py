"""The archive rules (national profile) against a running Kuvasto, over both protocols, with
clients nobody here wrote: `requests` for DICOMweb and the rules API, `pynetdicom` for DIMSE.

The server runs `docs/examples/national.toml` (a county, an imaging company, another clinic,
the portal, the patient data repository, an operator) with a C-MOVE destination `MOVESCP`
this suite listens as. Scenarios (one per server, `--scenario`):

- `matrix`: the authorization matrix. Every read path (QIDO-RS, WADO-RS instance, frames and
  metadata, C-FIND, C-MOVE, C-GET) and both write paths (STOW-RS, C-STORE) for the register's
  controller, the imaging company with no / valid / revoked / expired / read-only /
  write-only authorization, another organisation, with and without a disclosure prohibition,
  and the portal for the right and the wrong patient; every cell asserts the outcome and the
  audit record written. Then the patient view, document content, invalidation, IOCM.
- `reject`: documents first in reject mode; validation (identity codes, examination codes,
  SOP class per content type, wrong patient).
- `quarantine-1` / `quarantine-2`: quarantine mode; release when the document arrives; expiry;
  a study left in quarantine across a restart (the server is restarted between the two).

Every check is counted; a failed one is reported and the suite goes on. Exits non-zero when any
check failed; prints a JSON summary last.

Usage: rules_suite.py --scenario NAME --http HOST:PORT --dimse HOST:PORT --move-port P
"""
import argparse
import base64
import io
import json
import logging
import sys
import threading
import time
import traceback

import pydicom
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt

CALLED = "KUVASTO"
CT = "1.2.840.10008.5.1.4.1.1.2"
ECG = "1.2.840.10008.5.1.4.1.1.9.1.1"
KOS = "1.2.840.10008.5.1.4.1.1.88.59"
SR_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
SR_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
SR_GET = "1.2.840.10008.5.1.4.1.2.2.3"

COUNTY = "1.2.246.10.1001"
KUVANTAMO = "1.2.246.10.2002"
CLINIC = "1.2.246.10.3003"
TOKENS = {
    "county": "county-pacs-example-token",
    "kuvantamo": "kuvantamo-example-token",
    "clinic": "clinic-pacs-example-token",
    "portal": "portal-example-token-0001",
    "registry": "registry-example-token-01",
    "operator": "operator-example-token-01",
}
AE_TITLES = {"county": "COUNTYPACS", "kuvantamo": "KUVANTAMO", "clinic": "CLINICPACS",
             "operator": "OPERATOR"}
SYSTEMS = {"county": "county-pacs", "kuvantamo": "kuvantamo-ris", "clinic": "clinic-pacs",
           "portal": "portal", "registry": "patient-data-repository", "operator": "operator"}

# Valid personal identity codes (check characters verified by the server's own tests).
P1 = "131052-308T"
P2 = "311299U450R"
P3 = "291224B123J"
P4 = "150601F899S"
P5 = "290200A002C"
RADIOLOGY = "NA1AA Kaularangan röntgentutkimus"

logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)

PASSED = 0
FAILED = []
ARGS = None


def check(name, ok, detail=""):
    global PASSED
    if ok:
        PASSED += 1
    else:
        FAILED.append(f"{name}: {detail}")
        print(f"FAIL {name}: {detail}", flush=True)


def http(path):
    return f"http://{ARGS.http}{path}"


def headers(who, patient=None, extra=None):
    h = {"Authorization": f"Bearer {TOKENS[who]}"}
    if patient:
        h["X-On-Behalf-Of"] = patient
    if extra:
        h.update(extra)
    return h


# ---------------------------------------------------------------- instances and documents

def instance(patient, study, series, *, service_event="", accession="", description=RADIOLOGY,
             sop_class=CT, number=1, modality="CT"):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient
    ds.IssuerOfPatientID = "1.2.246.21"
    ds.PatientName = "Testinen^Potilas"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.StudyDate = "20261120"
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession
    ds.StudyDescription = description
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    if service_event:
        ds.PlacerOrderNumberImagingServiceRequest = service_event
    if sop_class == CT:
        ds.Rows = 8
        ds.Columns = 8
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.PixelData = bytes(range(128))
    return ds


def data_set_bytes(ds):
    """The data set as stored (Explicit VR LE, no file meta): what any retrieval must contain."""
    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = False
    pydicom.filewriter.write_dataset(buf, ds)
    return buf.getvalue()


def part10(ds):
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def rejection_note(original, referenced, code="113001"):
    """An IOCM rejection note (KOS) in the study of `original`, rejecting `referenced`."""
    ds = instance(original.PatientID, original.StudyInstanceUID, generate_uid(),
                  service_event=original.get("PlacerOrderNumberImagingServiceRequest", ""),
                  accession=original.AccessionNumber, description=original.StudyDescription,
                  sop_class=KOS, modality="KO")
    concept = Dataset()
    concept.CodeValue = code
    concept.CodingSchemeDesignator = "DCM"
    concept.CodeMeaning = "Rejected for Quality Reasons"
    ds.ConceptNameCodeSequence = Sequence([concept])
    ds.ValueType = "CONTAINER"
    sops = []
    for r in referenced:
        item = Dataset()
        item.ReferencedSOPClassUID = r.SOPClassUID
        item.ReferencedSOPInstanceUID = r.SOPInstanceUID
        sops.append(item)
    series = Dataset()
    series.SeriesInstanceUID = referenced[0].SeriesInstanceUID
    series.ReferencedSOPSequence = Sequence(sops)
    evidence = Dataset()
    evidence.StudyInstanceUID = original.StudyInstanceUID
    evidence.ReferencedSeriesSequence = Sequence([series])
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([evidence])
    return ds


def document(doc_id, kind, patient, *, service_event="", accession="", study="",
             register=COUNTY, author=COUNTY, content=None, status="current"):
    related = []
    if service_event:
        related.append({"identifier": {"system": "urn:kuvasto:service-event",
                                       "value": f"urn:oid:{service_event}"}})
    if accession:
        related.append({"identifier": {"system": "urn:kuvasto:accession-number",
                                       "value": accession}})
    if study:
        related.append({"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{study}"}})
    body = {
        "resourceType": "DocumentReference",
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:{doc_id}"},
        "status": status,
        "type": {"coding": [{"system": "urn:kuvasto:document-type", "code": kind}]},
        "subject": {"identifier": {"system": "urn:oid:1.2.246.21", "value": patient}},
        "date": "2026-11-20T09:00:00+02:00",
        "author": [{"identifier": {"value": f"urn:oid:{author}"}}],
        "custodian": {"identifier": {"value": f"urn:oid:{register}"}},
        "context": {"related": related},
    }
    if content is not None:
        body["content"] = [{"attachment": {"contentType": "application/pdf",
                                           "data": base64.b64encode(content).decode()}}]
    return body


def announce(body, who="registry"):
    return requests.post(http("/api/documents"), json=body, headers=headers(who))


# ---------------------------------------------------------------- DICOMweb

def stow(who, datasets, patient=None):
    boundary = "KUVASTOBOUNDARY"
    body = b""
    for ds in datasets:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += part10(ds) + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    h = headers(who, patient, {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json"})
    r = requests.post(http("/dicom-web/studies"), data=body, headers=h)
    reasons = []
    try:
        for item in r.json().get("00081198", {}).get("Value", []):
            reasons.append(item["00081197"]["Value"][0])
    except ValueError:
        pass
    return r.status_code, reasons, r


def qido_studies(who, study, patient=None):
    r = requests.get(http(f"/dicom-web/studies?StudyInstanceUID={study}"),
                     headers=headers(who, patient, {"Accept": "application/dicom+json"}))
    return r.status_code, (r.json() if r.status_code == 200 and r.content else [])


def qido_instances(who, study, patient=None):
    r = requests.get(http(f"/dicom-web/studies/{study}/instances"),
                     headers=headers(who, patient, {"Accept": "application/dicom+json"}))
    if r.status_code != 200 or not r.content:
        return r.status_code, []
    return 200, [i["00080018"]["Value"][0] for i in r.json()]


def wado_instance(who, ds, patient=None):
    r = requests.get(
        http(f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
             f"/instances/{ds.SOPInstanceUID}"),
        headers=headers(who, patient, {"Accept": 'multipart/related; type="application/dicom"'}))
    return r.status_code, r


def wado_metadata(who, study, patient=None):
    r = requests.get(http(f"/dicom-web/studies/{study}/metadata"),
                     headers=headers(who, patient, {"Accept": "application/dicom+json"}))
    return r.status_code, r


# ---------------------------------------------------------------- DIMSE

def associate(who, contexts, ext_neg=None, handlers=None):
    ae = AE(ae_title=AE_TITLES[who])
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, syntaxes)
    host, port = ARGS.dimse.split(":")
    return ae.associate(host, int(port), ae_title=CALLED, ext_neg=ext_neg,
                        evt_handlers=handlers)


def c_store(who, ds):
    assoc = associate(who, [(ds.SOPClassUID, [ExplicitVRLittleEndian])])
    if not assoc.is_established:
        return None, "association not established"
    try:
        status = assoc.send_c_store(ds)
        code = status.Status if status else None
        comment = str(status.get("ErrorComment", "")) if status else ""
        return code, comment
    finally:
        assoc.release()


def c_find_study(who, study):
    assoc = associate(who, [(SR_FIND, [ExplicitVRLittleEndian])])
    if not assoc.is_established:
        return None
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = study
    ident.PatientID = ""
    matches = 0
    try:
        for status, identifier in assoc.send_c_find(ident, SR_FIND):
            if status and status.Status in (0xFF00, 0xFF01) and identifier is not None:
                matches += 1
    finally:
        assoc.release()
    return matches


class MoveDestination:
    """The C-MOVE destination `MOVESCP`: counts the instances it receives."""

    def __init__(self, port):
        self.received = []
        self.lock = threading.Lock()
        ae = AE(ae_title="MOVESCP")
        for cls in (CT, KOS, ECG):
            ae.add_supported_context(cls, [ExplicitVRLittleEndian])
        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self.on_store)])

    def on_store(self, event):
        with self.lock:
            self.received.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    def take(self):
        with self.lock:
            out, self.received = self.received, []
        return out


def c_move_study(who, study, destination):
    destination.take()
    assoc = associate(who, [(SR_MOVE, [ExplicitVRLittleEndian])])
    if not assoc.is_established:
        return None, []
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = study
    completed = None
    try:
        for status, _ in assoc.send_c_move(ident, "MOVESCP", SR_MOVE):
            if status and status.Status in (0x0000, 0xB000, 0xA702, 0xC000, 0xA801, 0xA900):
                completed = int(status.get("NumberOfCompletedSuboperations", 0))
    finally:
        assoc.release()
    return completed, destination.take()


def c_get_study(who, study):
    received = []

    def on_store(event):
        received.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    roles = [build_role(CT, scp_role=True), build_role(KOS, scp_role=True)]
    assoc = associate(who, [(SR_GET, [ExplicitVRLittleEndian]), (CT, [ExplicitVRLittleEndian]),
                            (KOS, [ExplicitVRLittleEndian])],
                      ext_neg=roles, handlers=[(evt.EVT_C_STORE, on_store)])
    if not assoc.is_established:
        return None
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = study
    try:
        for _status, _ in assoc.send_c_get(ident, SR_GET):
            pass
    finally:
        assoc.release()
    return len(received)


# ---------------------------------------------------------------- the rules API and audit

class Audit:
    """Reads the audit log as the operator, a cursor at a time."""

    def __init__(self):
        self.after = 0
        self.pending = []
        self.new()

    def reset(self):
        """Forgets records not yet matched (a new cell starts)."""
        self.pending = self.new()
        self.pending = []

    def new(self):
        r = requests.get(http(f"/api/audit?after={self.after}"), headers=headers("operator"))
        records = [json.loads(line) for line in r.text.splitlines() if line.strip()]
        if records:
            self.after = max(x["seq"] for x in records)
        return [x for x in records if x["action"] != "audit-export"]

    def expect(self, name, who, actions, outcome, study=None, contains=None):
        """Asserts that a record of `who` with one of `actions` and `outcome` was written
        since the last call."""
        self.pending += self.new()
        records = self.pending
        actions = [actions] if isinstance(actions, str) else actions
        found = [x for x in records if x["system"] == SYSTEMS[who] and x["action"] in actions
                 and x["outcome"] == outcome and (study is None or x["study"] == study)
                 and (contains is None or contains in x["detail"])]
        if found:
            records.remove(found[0])
        check(f"{name}: audit {actions} {outcome}", found,
              f"records since: {[(x['system'], x['action'], x['outcome'], x['study'], x['detail'][:80]) for x in records]}")
        return found


def authorize(who, producer, *, read, write, valid_from=None, valid_until="2099-01-01",
              patients=None):
    body = {"register": COUNTY, "producer": producer, "read": read, "write": write,
            "valid_until": valid_until}
    if valid_from:
        body["valid_from"] = valid_from
    if patients:
        body["patients"] = patients
    r = requests.post(http("/api/authorizations"), json=body, headers=headers(who))
    return r


def revoke(who, authorization_id):
    return requests.post(http(f"/api/authorizations/{authorization_id}/revoke"),
                         headers=headers(who))


# ---------------------------------------------------------------- scenarios

def read_paths(name, who, study, ds, allowed, audit, destination, patient=None):
    """Every read path for one cell: outcome and audit record."""
    expect_n = 1 if allowed else 0
    outcome = "success" if allowed else "refused"
    audit.reset()
    # QIDO-RS
    status, hits = qido_studies(who, study, patient)
    check(f"{name}: QIDO", status == 200 and len(hits) == expect_n, f"{status} {len(hits)} hits")
    audit.expect(f"{name}: QIDO", who, "search", "success", contains=f"hits={expect_n}")
    # WADO-RS instance
    status, r = wado_instance(who, ds, patient)
    check(f"{name}: WADO instance", status == (200 if allowed else 403),
          f"{status} {r.text[:200] if status != 200 else ''}")
    if allowed:
        check(f"{name}: WADO bytes", data_set_bytes(ds) in r.content, "retrieved bytes differ")
    audit.expect(f"{name}: WADO instance", who, "retrieve", outcome, study=study)
    # WADO-RS frames
    r = requests.get(
        http(f"/dicom-web/studies/{study}/series/{ds.SeriesInstanceUID}/instances/"
             f"{ds.SOPInstanceUID}/frames/1"),
        headers=headers(who, patient, {"Accept": 'multipart/related; type="application/octet-stream"'}))
    check(f"{name}: WADO frames", r.status_code == (200 if allowed else 403), f"{r.status_code}")
    if allowed:
        check(f"{name}: frame bytes", bytes(range(128)) in r.content, "frame bytes differ")
    audit.expect(f"{name}: WADO frames", who, "retrieve-frames", outcome, study=study)
    # WADO-RS metadata
    status, r = wado_metadata(who, study, patient)
    check(f"{name}: WADO metadata", status == (200 if allowed else 403), f"{status}")
    audit.expect(f"{name}: WADO metadata", who, "retrieve-metadata", outcome, study=study)
    if who in AE_TITLES:
        # C-FIND
        matches = c_find_study(who, study)
        check(f"{name}: C-FIND", matches == expect_n, f"{matches} matches")
        audit.expect(f"{name}: C-FIND", who, "search", "success", contains=f"hits={expect_n}")
        # C-MOVE
        completed, received = c_move_study(who, study, destination)
        check(f"{name}: C-MOVE", (completed or 0) >= expect_n and (len(received) > 0) == allowed,
              f"completed {completed}, received {len(received)}")
        audit.expect(f"{name}: C-MOVE", who, "search", "success")
        if allowed:
            audit.expect(f"{name}: C-MOVE retrieve", who, "retrieve", "success", study=study)
        # C-GET
        got = c_get_study(who, study)
        check(f"{name}: C-GET", (got or 0) > 0 if allowed else got == 0, f"received {got}")
        audit.expect(f"{name}: C-GET", who, "search", "success")


def write_paths(name, who, make, allowed, audit, reason_code=0x0124, contains=None):
    """Both write paths for one cell: C-STORE and STOW-RS of a new instance each."""
    audit.reset()
    ds = make()
    comment = None
    if who in AE_TITLES:
        code, comment = c_store(who, ds)
        want = 0x0000 if allowed else reason_code
        check(f"{name}: C-STORE", code == want, f"status {code:#06x} {comment}" if code is not None else comment)
        audit.expect(f"{name}: C-STORE", who, "store" if allowed else "store-refused",
                     "success" if allowed else "refused", study=ds.StudyInstanceUID)
    ds = make()
    status, reasons, r = stow(who, [ds])
    if allowed:
        check(f"{name}: STOW", status == 200, f"{status} {r.text[:300]}")
    else:
        check(f"{name}: STOW", status == 409 and reasons == [reason_code],
              f"{status} {reasons} {r.text[:300]}")
        warning = r.headers.get("Warning", "")
        check(f"{name}: STOW reason", contains is None or contains in warning, warning)
        if comment is not None:
            # ErrorComment (LO) holds 64 characters: the same reason, cut.
            ascii_comment = "".join(c if c.isascii() else "?" for c in comment).replace('"', "'")
            check(f"{name}: C-STORE comment", comment and ascii_comment in warning,
                  f"{comment!r} vs {warning!r}")
    audit.expect(f"{name}: STOW", who, "store" if allowed else "store-refused",
                 "success" if allowed else "refused", study=ds.StudyInstanceUID)


def matrix():
    audit = Audit()
    destination = MoveDestination(ARGS.move_port)
    se1, se2 = "1.2.246.10.1001.77.1", "1.2.246.10.1001.77.2"
    s1, s2 = generate_uid(), generate_uid()
    s1_series = generate_uid()
    # Unknown callers get nothing.
    r = requests.get(http("/dicom-web/studies"))
    check("no token: 401", r.status_code == 401 and "WWW-Authenticate" in r.headers, r.status_code)
    r = requests.get(http("/dicom-web/studies"), headers={"Authorization": "Bearer not-a-token-of-anyone"})
    check("unknown token: 401", r.status_code == 401, r.status_code)
    ae = AE(ae_title="STRANGER")
    ae.add_requested_context(CT, [ExplicitVRLittleEndian])
    host, port = ARGS.dimse.split(":")
    assoc = ae.associate(host, int(port), ae_title=CALLED)
    # Rejected (A-ASSOCIATE-RJ, calling AE title not recognized); pynetdicom sometimes sees
    # the connection close first and reports an abort instead.
    check("unknown AE title: refused", not assoc.is_established
          and (assoc.is_rejected or assoc.is_aborted), "association established")
    if assoc.is_established:
        assoc.release()
    r = requests.get(http("/dicom-web/studies"), headers=headers("portal"))
    check("portal without patient: 400", r.status_code == 400, r.status_code)

    # The patient data repository announces the requests; only it (and operators) may.
    r = announce(document("1.2.246.10.1001.88.1", "request", P1, service_event=se1))
    check("request 1 announced", r.status_code == 201, f"{r.status_code} {r.text}")
    audit.expect("request 1", "registry", "document-register", "success")
    r = announce(document("1.2.246.10.1001.88.9", "request", P1, service_event=se1), who="county")
    check("a system may not announce documents", r.status_code == 403, f"{r.status_code} {r.text}")
    audit.expect("announce by a system", "county", "document-register", "refused")
    bad = document("1.2.246.10.1001.88.2", "request", "131052-308X", service_event=se2)
    r = announce(bad)
    check("document with a broken identity code: 400", r.status_code == 400 and "check character" in r.text, r.text)
    r = announce(document("1.2.246.10.1001.88.2", "request", P2, service_event=se2))
    check("request 2 announced", r.status_code == 201, f"{r.status_code} {r.text}")

    # The county stores study 1 into its own register, over both protocols.
    first = instance(P1, s1, s1_series, service_event=se1, number=1)
    code, comment = c_store("county", first)
    check("county C-STORE into its register", code == 0, f"{code} {comment}")
    audit.expect("county C-STORE", "county", "store", "success", study=s1)
    second = instance(P1, s1, s1_series, service_event=se1, number=2)
    status, reasons, r = stow("county", [second])
    check("county STOW into its register", status == 200, f"{status} {r.text[:200]}")
    audit.expect("county STOW", "county", "store", "success", study=s1)
    rec = audit.new()  # nothing else pending

    def s2_instance():
        return instance(P2, s2, generate_uid(), service_event=se2)

    # No authorization: the imaging company may neither read nor write the county's register.
    read_paths("controller", "county", s1, first, True, audit, destination)
    read_paths("producer without authorization", "kuvantamo", s1, first, False, audit, destination)
    write_paths("producer without authorization", "kuvantamo", s2_instance, False, audit,
                contains="neither controls register")
    read_paths("other organisation", "clinic", s1, first, False, audit, destination)
    write_paths("other organisation", "clinic", s2_instance, False, audit)
    read_paths("registry identity", "registry", s1, first, False, audit, destination)

    # Only the controller creates authorizations for its register.
    r = authorize("kuvantamo", KUVANTAMO, read=True, write=True)
    check("producer may not authorize itself", r.status_code == 403, f"{r.status_code} {r.text}")
    audit.expect("self-authorization", "kuvantamo", "authorization-create", "refused")
    r = authorize("county", KUVANTAMO, read=True, write=True)
    check("authorization created", r.status_code == 201, f"{r.status_code} {r.text}")
    a1 = r.json()["id"]
    audit.expect("authorization created", "county", "authorization-create", "success")
    r = requests.get(http("/api/authorizations"), headers=headers("kuvantamo"))
    check("producer lists its authorization", r.status_code == 200 and any(a["id"] == a1 for a in r.json()), r.text[:200])
    r = requests.get(http("/api/authorizations"), headers=headers("clinic"))
    check("others do not see it", r.status_code == 200 and not any(a["id"] == a1 for a in r.json()), r.text[:200])
    read_paths("valid authorization", "kuvantamo", s1, first, True, audit, destination)
    write_paths("valid authorization", "kuvantamo", s2_instance, True, audit)

    # Revoked: stops at once.
    r = revoke("clinic", a1)
    check("others may not revoke", r.status_code == 403, f"{r.status_code} {r.text}")
    audit.expect("revoke by other", "clinic", "authorization-revoke", "refused")
    r = revoke("county", a1)
    check("authorization revoked", r.status_code == 200 and r.json()["revoked"], r.text)
    audit.expect("revoked", "county", "authorization-revoke", "success")
    read_paths("revoked authorization", "kuvantamo", s1, first, False, audit, destination)
    write_paths("revoked authorization", "kuvantamo", s2_instance, False, audit, contains="revoked")

    # Expired.
    r = authorize("county", KUVANTAMO, read=True, write=True, valid_from="2020-01-01",
                  valid_until="2021-01-01")
    check("expired authorization created", r.status_code == 201, r.text)
    read_paths("expired authorization", "kuvantamo", s1, first, False, audit, destination)
    write_paths("expired authorization", "kuvantamo", s2_instance, False, audit, contains="expired")

    # Read-only.
    r = authorize("county", KUVANTAMO, read=True, write=False)
    check("read-only authorization created", r.status_code == 201, r.text)
    a3 = r.json()["id"]
    read_paths("read-only authorization", "kuvantamo", s1, first, True, audit, destination)
    write_paths("read-only authorization", "kuvantamo", s2_instance, False, audit,
                contains="does not grant write")

    # Disclosure prohibition: only the controller that archived the study sees it.
    r = requests.put(http(f"/api/patients/{P1}/prohibition"), headers=headers("portal", P2))
    check("portal may not prohibit for another patient", r.status_code == 403, f"{r.status_code}")
    audit.expect("prohibition for another", "portal", "prohibition-set", "refused")
    r = requests.put(http(f"/api/patients/{P1}/prohibition"), headers=headers("county"))
    check("a system may not prohibit", r.status_code == 403, f"{r.status_code}")
    r = requests.put(http(f"/api/patients/{P1}/prohibition"), headers=headers("portal", P1))
    check("portal sets the prohibition", r.status_code == 200 and r.json()["prohibited"], r.text)
    audit.expect("prohibition set", "portal", "prohibition-set", "success")
    read_paths("prohibition, controller", "county", s1, first, True, audit, destination)
    read_paths("prohibition, read authorization", "kuvantamo", s1, first, False, audit, destination)
    read_paths("prohibition, other organisation", "clinic", s1, first, False, audit, destination)
    read_paths("prohibition, portal for the patient", "portal", s1, first, True, audit,
               destination, patient=P1)
    r = requests.delete(http(f"/api/patients/{P1}/prohibition"), headers=headers("operator"))
    check("operator clears the prohibition", r.status_code == 200 and not r.json()["prohibited"], r.text)
    audit.expect("prohibition cleared", "operator", "prohibition-clear", "success")
    read_paths("prohibition cleared", "kuvantamo", s1, first, True, audit, destination)

    # Write-only.
    revoke("county", a3)
    r = authorize("county", KUVANTAMO, read=False, write=True)
    check("write-only authorization created", r.status_code == 201, r.text)
    read_paths("write-only authorization", "kuvantamo", s1, first, False, audit, destination)
    write_paths("write-only authorization", "kuvantamo", s2_instance, True, audit)

    # Authorization limited to other patients.
    r = authorize("county", CLINIC, read=True, write=True, patients=[P5])
    check("patient-limited authorization created", r.status_code == 201, r.text)
    read_paths("authorization for another patient", "clinic", s1, first, False, audit, destination)

    # The portal: the right patient and the wrong one; it never writes.
    read_paths("portal, right patient", "portal", s1, first, True, audit, destination, patient=P1)
    read_paths("portal, wrong patient", "portal", s1, first, False, audit, destination, patient=P2)
    status, reasons, r = stow("portal", [instance(P1, s1, s1_series, service_event=se1, number=9)], patient=P1)
    check("portal STOW refused", status == 409 and reasons == [0x0124], f"{status} {reasons}")
    audit.expect("portal STOW", "portal", "store-refused", "refused", study=s1)

    # A report with content arrives; the patient sees the study, its documents and who
    # accessed the data.
    pdf = b"%PDF-1.4\n% Kuvasto test report\n%%EOF\n"
    r = announce(document("1.2.246.10.1001.88.3", "report", P2, service_event=se2, content=pdf))
    check("report announced", r.status_code == 201, r.text)
    r = requests.get(http(f"/api/patients/{P2}/view"), headers=headers("portal", P2))
    check("patient view", r.status_code == 200, f"{r.status_code} {r.text[:300]}")
    view = r.json() if r.status_code == 200 else {}
    studies = {s["study"]: s for s in view.get("studies", [])}
    check("patient view lists study 2", s2 in studies, list(studies))
    if s2 in studies:
        s = studies[s2]
        check("study 2 was made by the imaging company in the county's register",
              s["organisation"] == KUVANTAMO and s["organisation_name"] == "Kuvantamo Oy"
              and s["register"] == COUNTY and s["register_controller"] == COUNTY, s)
        check("study 2 examination", s["examination_code"] == "NA1AA" and s["examination_name"], s)
        kinds = sorted(d["kind"] for d in s["documents"])
        check("study 2 documents: request and report", kinds == ["report", "request"], kinds)
    accesses = view.get("accesses", [])
    check("accesses list the imaging company's stores",
          any(a["organisation"] == KUVANTAMO and a["action"] == "store" for a in accesses),
          accesses[:5])
    check("accesses name organisations", any(a["organisation_name"] == "Kuvantamo Oy" for a in accesses), "")
    audit.expect("patient view", "portal", "patient-view", "success")
    r = requests.get(http(f"/api/patients/{P2}/view"), headers=headers("portal", P1))
    check("patient view of another patient: 403", r.status_code == 403, r.status_code)
    r = requests.get(http("/api/documents/1.2.246.10.1001.88.3/content"), headers=headers("portal", P2))
    check("report content for the patient", r.status_code == 200 and r.content == pdf, r.status_code)
    r = requests.get(http("/api/documents/1.2.246.10.1001.88.3/content"), headers=headers("portal", P1))
    check("report content for another patient: 403", r.status_code == 403, r.status_code)
    r = requests.get(http("/api/documents/1.2.246.10.1001.88.3"), headers=headers("county"))
    check("controller reads the document", r.status_code == 200 and r.json()["resourceType"] == "DocumentReference", r.text[:200])
    r = requests.get(http("/api/documents/1.2.246.10.1001.88.3"), headers=headers("clinic"))
    check("other organisation may not read the document", r.status_code == 403, r.status_code)

    # IOCM: a rejection note hides what it rejects from every read path, reversibly.
    s3, s3_series = generate_uid(), generate_uid()
    r = announce(document("1.2.246.10.1001.88.4", "request", P3, accession="ACC-IOCM"))
    check("request 3 announced (accession number)", r.status_code == 201, r.text)
    keep = instance(P3, s3, s3_series, accession="ACC-IOCM", number=1)
    bad_image = instance(P3, s3, s3_series, accession="ACC-IOCM", number=2)
    status, _, r = stow("county", [keep, bad_image])
    check("study 3 stored", status == 200, r.text[:200])
    note = rejection_note(keep, [bad_image])
    code, comment = c_store("county", note)
    check("rejection note stored", code == 0, f"{code} {comment}")
    audit.expect("rejection", "county", ["store", "reject"], "success", study=s3)
    status, sops = qido_instances("county", s3)
    check("rejected instance and note hidden from QIDO", sops == [keep.SOPInstanceUID], sops)
    status, _ = wado_instance("county", bad_image)
    check("rejected instance hidden from WADO", status == 404, status)
    got = c_get_study("county", s3)
    check("rejected instance hidden from C-GET", got == 1, got)
    r = requests.get(http("/api/rejections"), headers=headers("operator"))
    hidden = {h["sop_instance"]: h for h in r.json()} if r.status_code == 200 else {}
    check("operator lists the rejection", bad_image.SOPInstanceUID in hidden
          and hidden[bad_image.SOPInstanceUID]["reason_code"] == "113001", list(hidden))
    r = requests.post(http(f"/api/rejections/{bad_image.SOPInstanceUID}/restore"), headers=headers("county"))
    check("a system may not restore", r.status_code == 403, r.status_code)
    r = requests.post(http(f"/api/rejections/{bad_image.SOPInstanceUID}/restore"), headers=headers("operator"))
    check("operator restores the instance", r.status_code == 200, r.text)
    status, sops = qido_instances("county", s3)
    check("restored instance visible again", sorted(sops) == sorted([keep.SOPInstanceUID, bad_image.SOPInstanceUID]), sops)
    # Over STOW-RS, with another reason code; a note from an organisation that may not write
    # the study is refused like any other instance.
    note2 = rejection_note(keep, [bad_image], code="113038")
    status, reasons, r = stow("clinic", [note2])
    check("a rejection note from another organisation: 0124", status == 409 and reasons == [0x0124], f"{status} {reasons}")
    status, sops = qido_instances("county", s3)
    check("nothing hidden by the refused note", len(sops) == 2, sops)
    status, _, r = stow("county", [note2])
    check("rejection note over STOW", status == 200, r.text[:200])
    status, sops = qido_instances("county", s3)
    check("hidden again", sops == [keep.SOPInstanceUID], sops)
    r = requests.get(http("/api/rejections"), headers=headers("operator"))
    hidden = {h["sop_instance"]: h for h in r.json()} if r.status_code == 200 else {}
    check("the new reason is recorded", hidden.get(bad_image.SOPInstanceUID, {}).get("reason_code") == "113038", hidden.get(bad_image.SOPInstanceUID))

    # Study invalidation (e.g. wrong patient): hidden everywhere until restored.
    r = requests.post(http(f"/api/studies/{s1}/invalidate"), json={"reason": "wrong patient"},
                      headers=headers("county"))
    check("a system may not invalidate", r.status_code == 403, r.status_code)
    r = requests.post(http(f"/api/studies/{s1}/invalidate"), json={"reason": "wrong patient"},
                      headers=headers("operator"))
    check("operator invalidates study 1", r.status_code == 200, r.text)
    audit.expect("invalidate", "operator", "invalidate", "success", study=s1)
    read_paths("invalidated study", "county", s1, first, False, audit, destination)
    code, comment = c_store("county", instance(P1, s1, s1_series, service_event=se1, number=7))
    check("an invalidated study takes nothing", code == 0xC015, f"{code} {comment}")
    r = requests.post(http(f"/api/studies/{s1}/restore"), headers=headers("operator"))
    check("operator restores study 1", r.status_code == 200, r.text)
    read_paths("restored study", "county", s1, first, True, audit, destination)

    # Correction: study 1 belonged to another service event, in the imaging company's own
    # register; it moves there (and back), logged.
    se7 = "1.2.246.10.2002.77.7"
    r = announce(document("1.2.246.10.2002.88.7", "request", P1, service_event=se7,
                          register=KUVANTAMO, author=KUVANTAMO))
    check("request in the imaging company's register", r.status_code == 201, r.text)
    body = {"service_event": se7, "reason": "linked to the wrong request"}
    r = requests.post(http(f"/api/studies/{s1}/correct"), json=body, headers=headers("county"))
    check("a system may not correct", r.status_code == 403, r.status_code)
    r = requests.post(http(f"/api/studies/{s1}/correct"), json=body, headers=headers("operator"))
    check("operator corrects study 1", r.status_code == 200 and r.json().get("register") == KUVANTAMO, r.text)
    audit.expect("correct", "operator", "correct", "success", study=s1, contains=se7)
    read_paths("corrected: new controller", "kuvantamo", s1, first, True, audit, destination)
    read_paths("corrected: old controller", "county", s1, first, False, audit, destination)
    r = requests.post(http(f"/api/studies/{s1}/correct"), json={"service_event": "1.2.246.10.1001.77.999", "reason": "x"},
                      headers=headers("operator"))
    check("correction to a service event without documents: 409", r.status_code == 409, f"{r.status_code} {r.text}")
    r = requests.post(http(f"/api/studies/{s1}/correct"), json={"service_event": se1, "reason": "undo"},
                      headers=headers("operator"))
    check("operator corrects it back", r.status_code == 200 and r.json().get("register") == COUNTY, r.text)
    read_paths("corrected back", "county", s1, first, True, audit, destination)

    # The audit log exports as DICOM audit messages too.
    r = requests.get(http(f"/api/audit?study={s1}&format=dicom&limit=5"), headers=headers("operator"))
    lines = r.text.splitlines()
    check("DICOM audit messages", r.status_code == 200 and len(lines) == 5
          and all(l.startswith("<?xml") and "<AuditMessage>" in l for l in lines), r.text[:300])
    r = requests.get(http("/api/audit"), headers=headers("county"))
    check("only operators export the audit log", r.status_code == 403, r.status_code)
    destination.server.shutdown()


def reject():
    audit = Audit()
    se, s = "1.2.246.10.1001.77.10", generate_uid()
    # Documents first: no request, no study.
    write_paths("no documents", "county", lambda: instance(P4, s, generate_uid(), service_event=se),
                False, audit, reason_code=0xC010, contains="documents first")
    r = announce(document("1.2.246.10.1001.88.10", "visit-note", P4, service_event=se))
    check("visit note announced", r.status_code == 201, r.text)
    write_paths("visit note there", "county", lambda: instance(P4, s, generate_uid(), service_event=se),
                True, audit)
    # A report alone does not link a study.
    se_r, s_r = "1.2.246.10.1001.77.11", generate_uid()
    announce(document("1.2.246.10.1001.88.11", "report", P4, service_event=se_r))
    write_paths("report only", "county", lambda: instance(P4, s_r, generate_uid(), service_event=se_r),
                False, audit, reason_code=0xC010)
    # Validation: each failure its own code and reason.
    cases = [
        ("broken check character", dict(patient="131052-308X"), 0xC011, "check character"),
        ("impossible birth date", dict(patient="310299-1234"), 0xC011, "birth date"),
        ("bad century sign", dict(patient="131052Q308T"), 0xC011, "century"),
        ("missing PatientID", dict(patient=""), 0xC011, "PatientID"),
        ("unknown temporary form", dict(patient="TMP123"), 0xC011, "TMP123"),
        ("unknown examination code", dict(description="ZZ9ZZ Tuntematon"), 0xC012, "ZZ9ZZ"),
        ("malformed examination code", dict(description="röntgen"), 0xC012, "ntgen"),
        ("no examination code", dict(description=""), 0xC012, ""),
        ("ECG class for a radiology examination", dict(sop_class=ECG, modality="ECG"), 0xC013, "radiology"),
    ]
    for name, change, code_want, text in cases:
        def make(change=change):
            fields = dict(patient=P4, description=RADIOLOGY, sop_class=CT, modality="CT")
            fields.update(change)
            return instance(fields["patient"], s, generate_uid(), service_event=se,
                            description=fields["description"], sop_class=fields["sop_class"],
                            modality=fields["modality"])
        write_paths(name, "county", make, False, audit, reason_code=code_want, contains=text)
    # Accepted forms: a temporary identity code (900-999), a configured temporary id, a
    # real personal identity code of the 2000s with a new century sign; an ECG class under an
    # ECG examination code.
    for name, patient in [("temporary identity code", "010594Y9032"),
                          ("configured temporary id", "TMP12345678"),
                          ("century sign F", "150601F899S")]:
        sev = f"1.2.246.10.1001.77.2{len(name)}"
        announce(document(f"1.2.246.10.1001.88.2{len(name)}", "request", patient, service_event=sev))
        study = generate_uid()
        write_paths(name, "county", lambda patient=patient, sev=sev, study=study:
                    instance(patient, study, generate_uid(), service_event=sev), True, audit)
    se_ecg, s_ecg = "1.2.246.10.1001.77.30", generate_uid()
    announce(document("1.2.246.10.1001.88.30", "request", P5, service_event=se_ecg))
    write_paths("ECG class for an ECG examination", "county",
                lambda: instance(P5, s_ecg, generate_uid(), service_event=se_ecg,
                                 description="XEK10 Lepo-EKG", sop_class=ECG, modality="ECG"),
                True, audit)
    # The same study for another patient: refused.
    write_paths("wrong patient", "county",
                lambda: instance(P5, s, generate_uid(), service_event=se), False, audit,
                reason_code=0xC014, contains="another patient")


def quarantine_1():
    audit = Audit()
    se5, s5 = "1.2.246.10.1001.77.50", generate_uid()
    held = instance(P4, s5, generate_uid(), service_event=se5)
    code, comment = c_store("county", held)
    check("quarantined C-STORE succeeds", code == 0, f"{code} {comment}")
    audit.expect("quarantine", "county", "quarantine", "success", study=s5)
    status, hits = qido_studies("county", s5)
    check("quarantined study invisible to its producer", status == 200 and hits == [], hits)
    status, _ = wado_instance("county", held)
    check("quarantined instance not retrievable", status == 403, status)
    status, hits = qido_studies("operator", s5)
    check("operator sees the quarantined study", len(hits) == 1, hits)
    r = requests.get(http("/api/quarantine"), headers=headers("operator"))
    listed = {q["study"]: q for q in r.json()} if r.status_code == 200 else {}
    check("quarantine lists the study", s5 in listed and listed[s5]["instances"] == 1
          and "documents first" in listed[s5]["reason"], listed)
    r = requests.get(http("/api/quarantine"), headers=headers("county"))
    check("only operators list the quarantine", r.status_code == 403, r.status_code)
    r = requests.post(http(f"/api/quarantine/{s5}/release"), headers=headers("operator"))
    check("release without documents: 409", r.status_code == 409, f"{r.status_code} {r.text}")
    r = announce(document("1.2.246.10.1001.88.50", "request", P4, service_event=se5))
    check("document arrival releases the study", r.status_code == 201 and r.json()["released"] == [s5], r.text)
    audit.expect("release", "registry", "release", "success", study=s5)
    status, hits = qido_studies("county", s5)
    check("released study visible", len(hits) == 1, hits)
    status, r = wado_instance("county", held)
    check("released instance byte-identical", status == 200 and data_set_bytes(held) in r.content, status)
    # Expiry of a quarantined study deletes it, logged.
    se7, s7 = "1.2.246.10.1001.77.70", generate_uid()
    code, _ = c_store("county", instance(P4, s7, generate_uid(), service_event=se7))
    check("second quarantined study", code == 0, code)
    r = requests.post(http(f"/api/quarantine/{s7}/expire"), headers=headers("operator"))
    check("operator expires it", r.status_code == 200 and r.json()["instances_deleted"] == 1, r.text)
    audit.expect("expire", "operator", "expire", "success", study=s7)
    status, hits = qido_studies("operator", s7)
    check("expired study gone", hits == [], hits)
    # A study left in quarantine for the restart.
    se6, s6 = "1.2.246.10.1001.77.60", generate_uid()
    kept = instance(P5, s6, generate_uid(), service_event=se6)
    code, _ = c_store("county", kept)
    check("study held across the restart", code == 0, code)
    with open(ARGS.state, "w") as f:
        json.dump({"s6": s6, "se6": se6, "bytes": base64.b64encode(data_set_bytes(kept)).decode(),
                   "series": kept.SeriesInstanceUID, "sop": kept.SOPInstanceUID}, f)


def quarantine_2():
    audit = Audit()
    with open(ARGS.state) as f:
        state = json.load(f)
    s6, se6 = state["s6"], state["se6"]
    r = requests.get(http("/api/quarantine"), headers=headers("operator"))
    listed = {q["study"]: q for q in r.json()} if r.status_code == 200 else {}
    check("after the restart the study is still in quarantine", s6 in listed
          and listed[s6]["instances"] == 1, listed)
    status, hits = qido_studies("county", s6)
    check("and still invisible", hits == [], hits)
    r = announce(document("1.2.246.10.1001.88.60", "visit-note", P5, service_event=se6))
    check("its visit note releases it", r.status_code == 201 and r.json()["released"] == [s6], r.text)
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = s6, state["series"], state["sop"]
    status, r = wado_instance("county", ds)
    check("nothing lost across the restart", status == 200
          and base64.b64decode(state["bytes"]) in r.content, status)
    audit.expect("release after restart", "registry", "release", "success", study=s6)


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--http", required=True)
    parser.add_argument("--dimse", required=True)
    parser.add_argument("--move-port", type=int, default=0)
    parser.add_argument("--state", default="")
    ARGS = parser.parse_args()
    scenario = {"matrix": matrix, "reject": reject, "quarantine-1": quarantine_1,
                "quarantine-2": quarantine_2}[ARGS.scenario]
    started = time.time()
    try:
        scenario()
    except Exception:
        FAILED.append("exception: " + traceback.format_exc())
        print(traceback.format_exc(), flush=True)
    print(json.dumps({"scenario": ARGS.scenario, "passed": PASSED, "failed": len(FAILED),
                      "seconds": round(time.time() - started, 1)}))
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
