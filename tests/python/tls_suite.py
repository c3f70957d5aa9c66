"""TLS and mutual TLS against a running Kuvasto (national profile), with clients nobody here
wrote: `requests` and `dicomweb-client` over HTTPS with client certificates, pynetdicom with an
`ssl.SSLContext`.

`server/tests/server/tls.rs` makes the certificates (`--pki DIR`: ca.crt, and NAME.crt /
NAME.key for county, kuvantamo, clinic, registry, operator, untrusted) and starts the server
with `http.authentication = "certificate"`. Scenarios (`--scenario`):

- `required`: `tls.client_certificates = "required"`, DICOM over TLS on `--dimse`. A right
  certificate acts as its organisation (STOW-RS, QIDO-RS, C-ECHO, C-STORE; the audit log names
  the organisation and the certificate's CN); no certificate, an untrusted one, one whose CN no
  identity lists, a bearer token instead of a certificate, and a certificate with another
  organisation's AE title are refused.
- `optional`: `"optional"`, a TLS listener on `--dimse` beside plain DICOM on
  `--plain-dimse`. Without a certificate the AE title decides (DIMSE) and HTTP refuses the
  caller (bearer tokens are not accepted); a certificate presented still decides.

Every check is counted; a failed one is reported and the suite goes on. Exits non-zero when any
check failed; prints a JSON summary last.
"""
import argparse
import io
import json
import logging
import os
import ssl
import sys
import time
import traceback

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_FIND

CALLED = "KUVASTO"
CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
COUNTY = "1.2.246.10.1001"
KUVANTAMO = "1.2.246.10.2002"
CLINIC = "1.2.246.10.3003"
PATIENT = "FI-010203-123A"
OPERATOR_TOKEN = "operator-example-token-01"

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


def pki(name):
    return os.path.join(ARGS.pki, name)


def cert(who):
    return (pki(f"{who}.crt"), pki(f"{who}.key")) if who else None


def https(path):
    return f"https://{ARGS.http}{path}"


def call(method, path, who, **kwargs):
    """An HTTPS request as client `who` (None: no client certificate); the response, or the
    exception when the connection failed."""
    try:
        return requests.request(method, https(path), cert=cert(who), verify=pki("ca.crt"),
                                timeout=30, **kwargs)
    except requests.exceptions.RequestException as e:
        return e


def refused_at_handshake(result):
    return isinstance(result, requests.exceptions.RequestException)


def describe(result):
    if isinstance(result, Exception):
        return f"{type(result).__name__}: {result}"
    return f"{result.status_code} {result.text[:300]!r}"


def accession(study):
    """The study's accession number (SH: at most 16 characters)."""
    return "T" + study.replace(".", "")[-15:]


def instance(study):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientID = PATIENT
    ds.PatientName = "Virtanen^Aino"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyDate = "20261120"
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession(study)
    ds.StudyDescription = "NA1AA Kaularangan röntgentutkimus"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
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


def part10(ds):
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def announce(doc_id, study):
    """The study's request, announced by the patient data repository's certificate."""
    body = {
        "resourceType": "DocumentReference",
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:{doc_id}"},
        "status": "current",
        "type": {"coding": [{"system": "urn:kuvasto:document-type", "code": "request"}]},
        "subject": {"identifier": {"system": "urn:oid:1.2.246.21", "value": PATIENT}},
        "date": "2026-11-20T09:00:00+02:00",
        "author": [{"identifier": {"value": f"urn:oid:{COUNTY}"}}],
        "custodian": {"identifier": {"value": f"urn:oid:{COUNTY}"}},
        "context": {"related": [
            {"identifier": {"system": "urn:kuvasto:accession-number",
                            "value": accession(study)}},
            {"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{study}"}},
        ]},
    }
    return call("POST", "/api/documents", "registry", json=body)


def stow(who, ds, extra_headers=None):
    boundary = "KUVASTOBOUNDARY"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + part10(ds) + f"\r\n--{boundary}--\r\n".encode())
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
               "Accept": "application/dicom+json"}
    headers.update(extra_headers or {})
    return call("POST", "/dicom-web/studies", who, data=body, headers=headers)


def qido(who, study, extra_headers=None):
    headers = {"Accept": "application/dicom+json"}
    headers.update(extra_headers or {})
    return call("GET", f"/dicom-web/studies?StudyInstanceUID={study}", who, headers=headers)


def found_studies(result):
    if isinstance(result, Exception) or result.status_code != 200 or not result.content:
        return []
    return [s["0020000D"]["Value"][0] for s in result.json()]


def audit(action):
    r = call("GET", f"/api/audit?action={action}", "operator")
    if isinstance(r, Exception) or r.status_code != 200:
        return []
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


# ---------------------------------------------------------------- DIMSE

def context(who, ca="ca.crt"):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki(ca))
    if who:
        ctx.load_cert_chain(*cert(who))
    return ctx


def associate(address, calling, tls_context):
    host, port = address.rsplit(":", 1)
    ae = AE(ae_title=calling)
    ae.acse_timeout = 15
    ae.network_timeout = 15
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(CT, ExplicitVRLittleEndian)
    ae.add_requested_context(STUDY_FIND)
    tls_args = (tls_context, host) if tls_context is not None else None
    return ae.associate(host, int(port), ae_title=CALLED, tls_args=tls_args)


def echo(address, calling, tls_context):
    """'ok' (C-ECHO answered 0000), 'rejected' (A-ASSOCIATE-RJ) or 'failed'."""
    assoc = associate(address, calling, tls_context)
    if assoc.is_rejected:
        return "rejected"
    if not assoc.is_established:
        return "failed"
    status = assoc.send_c_echo()
    assoc.release()
    return "ok" if status and status.Status == 0 else f"status {status}"


def find_with_cancel(address, tls_context, matches_expected):
    """C-FIND over TLS: all answers; then again with a C-CANCEL right behind the request (the
    server's cancel check must see it through rustls): FE00 before all answers."""
    assoc = associate(address, "COUNTYPACS", tls_context)
    if not assoc.is_established:
        check("C-FIND association over TLS", False, "not established")
        return
    try:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.PatientID = PATIENT
        identifier.StudyInstanceUID = ""
        answers, final = 0, None
        for status, _ in assoc.send_c_find(identifier, STUDY_FIND, msg_id=5):
            if status and status.Status in (0xFF00, 0xFF01):
                answers += 1
            elif status:
                final = status.Status
        check("C-FIND over TLS answers every study", final == 0 and answers >= matches_expected,
              f"{answers} answers, final {final}")
        cx = next(c.context_id for c in assoc.accepted_contexts
                  if c.abstract_syntax == STUDY_FIND)
        dimse = assoc.dimse
        send_msg = dimse.send_msg

        def send_then_cancel(primitive, context_id):
            send_msg(primitive, context_id)
            if isinstance(primitive, C_FIND) and primitive.MessageID == 6:
                dimse.send_msg = send_msg
                assoc.send_c_cancel(6, cx)

        dimse.send_msg = send_then_cancel
        pendings, final = 0, None
        try:
            for status, _ in assoc.send_c_find(identifier, STUDY_FIND, msg_id=6):
                if status and status.Status in (0xFF00, 0xFF01):
                    pendings += 1
                elif status:
                    final = status.Status
        finally:
            dimse.send_msg = send_msg
        check("C-CANCEL over TLS ends the C-FIND with FE00 before all answers",
              final == 0xFE00 and pendings < answers, f"{pendings} pending, final {final}")
        status = assoc.send_c_echo(msg_id=7)
        check("the association serves a C-ECHO after the cancelled C-FIND",
              status is not None and status.Status == 0, status)
    finally:
        assoc.release()


def c_store(address, calling, tls_context, ds):
    assoc = associate(address, calling, tls_context)
    if not assoc.is_established:
        return "rejected" if assoc.is_rejected else "failed"
    status = assoc.send_c_store(ds)
    assoc.release()
    return f"{status.Status:04X}" if status else "no response"


# ---------------------------------------------------------------- scenarios

def required():
    study = generate_uid()
    r = announce(generate_uid(prefix="1.2.246.10.1001.77."), study)
    check("the registry's certificate announces a request", not isinstance(r, Exception)
          and r.status_code == 201, describe(r))

    # STOW-RS and QIDO-RS with the county's certificate: its organisation.
    ds = instance(study)
    r = stow("county", ds)
    check("STOW-RS with the county's certificate", not isinstance(r, Exception)
          and r.status_code == 200, describe(r))
    r = qido("county", study)
    check("QIDO-RS with the county's certificate finds the study",
          found_studies(r) == [study], describe(r))
    if not isinstance(r, Exception) and r.status_code == 200 and r.content:
        url = r.json()[0].get("00081190", {}).get("Value", [""])[0]
        check("RetrieveURL is https", url.startswith(f"https://{ARGS.http}/dicom-web/studies/"),
              url)
    stores = [a for a in audit("store") if a["study"] == study]
    check("one store record for the STOW", len(stores) == 1, stores)
    if stores:
        a = stores[0]
        check("the store acted as the county's identity",
              (a["organisation"], a["system"], a["protocol"], a["outcome"])
              == (COUNTY, "county-pacs", "dicomweb", "success"), a)
        check("the audit peer names the certificate", "CN=pacs.county.example" in a["peer"], a)

    # dicomweb-client with a session carrying the certificate.
    session = requests.Session()
    session.cert = cert("county")
    session.verify = pki("ca.crt")
    # Otherwise REQUESTS_CA_BUNDLE in the environment would win over the session's CA.
    session.trust_env = False
    client = DICOMwebClient(url=https("/dicom-web"), session=session)
    try:
        studies = client.search_for_studies(search_filters={"StudyInstanceUID": study})
        found = [s["0020000D"]["Value"][0] for s in studies]
    except Exception as e:  # noqa: BLE001 - reported as a failed check
        found = [repr(e)]
    check("dicomweb-client with the county's certificate", found == [study], found)

    # The company's certificate (its wildcard identity): its own organisation, which may not
    # read the county's study.
    r = qido("kuvantamo", study)
    check("the company's certificate is answered, without the county's study",
          not isinstance(r, Exception) and r.status_code == 200 and found_studies(r) == [],
          describe(r))
    searches = [a for a in audit("search") if a["organisation"] == KUVANTAMO]
    check("the company's search is audited as the company",
          any(a["system"] == "kuvantamo-ris" for a in searches), searches[-3:])

    # Refused: a certificate whose CN no identity lists (403 naming OID and CN); none; an
    # untrusted CA's; a bearer token instead of a certificate.
    r = qido("clinic", study)
    expected = (f"client certificate for organisation {CLINIC} (CN other.clinic.example) "
                "matches no identity")
    check("a certificate matching no identity gets 403 with the reason",
          not isinstance(r, Exception) and r.status_code == 403 and expected in r.text,
          describe(r))
    r = qido(None, study)
    check("no client certificate: the handshake is refused", refused_at_handshake(r),
          describe(r))
    r = qido("untrusted", study)
    check("a certificate from an untrusted CA: the handshake is refused",
          refused_at_handshake(r), describe(r))
    r = call("GET", "/api/audit", None, headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
    check("a bearer token without a certificate is refused", refused_at_handshake(r)
          or r.status_code in (401, 403), describe(r))
    r = call("GET", "/api/audit", "county", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
    check("the certificate decides, not the operator's bearer token beside it",
          not isinstance(r, Exception) and r.status_code == 403, describe(r))

    # pynetdicom with an SSLContext.
    check("C-ECHO with the county's certificate",
          echo(ARGS.dimse, "COUNTYPACS", context("county")) == "ok")
    tls12 = context("county")
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    check("C-ECHO with the county's certificate over TLS 1.2",
          echo(ARGS.dimse, "COUNTYPACS", tls12) == "ok")
    study2 = generate_uid()
    announce(generate_uid(prefix="1.2.246.10.1001.77."), study2)
    ds2 = instance(study2)
    result = c_store(ARGS.dimse, "COUNTYPACS", context("county"), ds2)
    check("C-STORE with the county's certificate", result == "0000", result)
    stores = [a for a in audit("store") if a["study"] == study2]
    check("the C-STORE acted as the county's identity",
          [(a["organisation"], a["system"], a["protocol"]) for a in stores]
          == [(COUNTY, "county-pacs", "dimse")], stores)
    result = echo(ARGS.dimse, "COUNTYPACS", context(None))
    check("no client certificate: no association", result in ("failed", "rejected"), result)
    result = echo(ARGS.dimse, "COUNTYPACS", context("untrusted"))
    check("an untrusted certificate: no association", result in ("failed", "rejected"), result)
    result = echo(ARGS.dimse, "KUVANTAMO", context("county"))
    check("the county's certificate as the company's AE title is rejected",
          result == "rejected", result)
    result = c_store(ARGS.dimse, "CLINICPACS", context("clinic"), instance(generate_uid()))
    check("a certificate matching no identity is rejected", result == "rejected", result)

    # More of the county's studies, then C-FIND and C-CANCEL over TLS.
    stored = 0
    for _ in range(12):
        s = generate_uid()
        announce(generate_uid(prefix="1.2.246.10.1001.77."), s)
        stored += c_store(ARGS.dimse, "COUNTYPACS", context("county"), instance(s)) == "0000"
    check("12 more studies stored over TLS", stored == 12, stored)
    find_with_cancel(ARGS.dimse, context("county"), 14)


def optional():
    study = generate_uid()
    r = qido(None, study, {"Authorization": f"Bearer {OPERATOR_TOKEN}"})
    check("a bearer token alone is refused with 403",
          not isinstance(r, Exception) and r.status_code == 403
          and "bearer tokens are not accepted" in r.text, describe(r))
    r = qido(None, study)
    check("no certificate and no token is refused with 403",
          not isinstance(r, Exception) and r.status_code == 403, describe(r))
    r = qido("county", study)
    check("the county's certificate is answered",
          not isinstance(r, Exception) and r.status_code == 200, describe(r))
    r = qido("clinic", study)
    check("a certificate matching no identity gets 403",
          not isinstance(r, Exception) and r.status_code == 403 and CLINIC in r.text,
          describe(r))
    r = qido("untrusted", study)
    check("an untrusted certificate is refused even when certificates are optional",
          refused_at_handshake(r), describe(r))

    # DIMSE over TLS: without a certificate the AE title decides; with one, the certificate.
    check("C-ECHO over TLS without a certificate, known AE title",
          echo(ARGS.dimse, "COUNTYPACS", context(None)) == "ok")
    check("C-ECHO over TLS without a certificate, unknown AE title",
          echo(ARGS.dimse, "STRANGER", context(None)) == "rejected")
    check("C-ECHO over TLS with the county's certificate",
          echo(ARGS.dimse, "COUNTYPACS", context("county")) == "ok")
    check("the county's certificate as the company's AE title is rejected",
          echo(ARGS.dimse, "KUVANTAMO", context("county")) == "rejected")
    announce(generate_uid(prefix="1.2.246.10.1001.77."), study)
    result = c_store(ARGS.dimse, "COUNTYPACS", context("county"), instance(study))
    check("C-STORE over TLS with the county's certificate", result == "0000", result)
    stores = [a for a in audit("store") if a["study"] == study]
    check("the C-STORE acted as the county's identity",
          [(a["organisation"], a["system"], a["protocol"]) for a in stores]
          == [(COUNTY, "county-pacs", "dimse")], stores)
    # Plain DICOM beside it.
    check("C-ECHO on the plain listener",
          echo(ARGS.plain_dimse, "COUNTYPACS", None) == "ok")
    check("plain DICOM to the TLS listener fails",
          echo(ARGS.dimse, "COUNTYPACS", None) in ("failed", "rejected"))


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", required=True, choices=["required", "optional"])
    parser.add_argument("--http", required=True)
    parser.add_argument("--dimse", required=True)
    parser.add_argument("--plain-dimse", default="")
    parser.add_argument("--pki", required=True)
    ARGS = parser.parse_args()
    started = time.time()
    try:
        {"required": required, "optional": optional}[ARGS.scenario]()
    except Exception:  # noqa: BLE001 - a crash is a failed check, reported
        FAILED.append("crashed: " + traceback.format_exc())
        print(traceback.format_exc(), flush=True)
    for failure in FAILED:
        print(f"FAILED {failure}", file=sys.stderr)
    print(json.dumps({"scenario": ARGS.scenario, "passed": PASSED, "failed": len(FAILED),
                      "seconds": round(time.time() - started, 1)}))
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
