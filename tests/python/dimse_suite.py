"""Drives a running Kuvasto server over DIMSE with `pynetdicom` (a DICOM network library nobody
here wrote): C-ECHO; C-STORE of pydicom's sample files (sent as their raw data set bytes, in
their own transfer syntax) and of generated objects (CT, XA multi-frame, 12-lead ECG,
encapsulated PDF, intra-oral X-ray, ophthalmic photography, Basic Text SR, KOS) and the
refusals (0122, A900, 0111); C-FIND in the Patient and Study Root models at every level,
C-CANCEL of a C-FIND; C-GET and C-MOVE at every level with the received bytes compared with the
bytes sent (and with WADO-RS); Storage Commitment with the result on the same and on a new
association; Instance Availability Notification (N-CREATE) to a subscriber after a store.

Every check is counted; a failed one is reported and the suite goes on. Exits non-zero when any
check failed; prints a JSON summary last.

Usage: dimse_suite.py --dimse HOST:PORT --http HOST:PORT --scp-port P1 --commit-port P2
       --ian-port P3
The server must know the peers `PYSCP=127.0.0.1:P1`, `COMMITSCU=127.0.0.1:P2/new-association`
and `IANSCP=127.0.0.1:P3/notify` (--dimse-peers).
"""
import argparse
import copy
import fnmatch
import io
import json
import logging
import os
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.sequence import Sequence
from pydicom.uid import UID, generate_uid
from pynetdicom import AE, _config, build_context, build_role, evt
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import create_file_meta, encode, encode_file_meta

CALLED = "KUVASTO"
CALLING = "PYSUITE"
SCP_AE = "PYSCP"
COMMIT_AE = "COMMITSCU"
IAN_AE = "IANSCP"
IAN = "1.2.840.10008.5.1.4.33"

VERIFICATION = "1.2.840.10008.1.1"
PR_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PR_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PR_GET = "1.2.840.10008.5.1.4.1.2.1.3"
SR_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
SR_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
SR_GET = "1.2.840.10008.5.1.4.1.2.2.3"
COMMITMENT = "1.2.840.10008.1.20.1"
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"

CT = "1.2.840.10008.5.1.4.1.1.2"
XA = "1.2.840.10008.5.1.4.1.1.12.1"
ECG = "1.2.840.10008.5.1.4.1.1.9.1.1"
PDF = "1.2.840.10008.5.1.4.1.1.104.1"
IO = "1.2.840.10008.5.1.4.1.1.1.3"
OP = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
KOS = "1.2.840.10008.5.1.4.1.1.88.59"
SC = "1.2.840.10008.5.1.4.1.1.7"
PRIVATE_CLASS = "1.2.3.4.5.6"

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"

# Keys an answer carries whether asked for or not (PS3.4 C.4.1.1.3.2).
CONTROL_KEYWORDS = {"QueryRetrieveLevel", "RetrieveAETitle", "SpecificCharacterSet"}
OPTIONAL_EXTRAS = {"StorageMediaFileSetID", "StorageMediaFileSetUID", "InstanceAvailability",
                   "TimezoneOffsetFromUTC", "RetrieveURL"}


# --------------------------------------------------------------------------------------------
# Checks


class Checks:
    def __init__(self, verbose):
        self.verbose = verbose
        self.passed = 0
        self.failed = []
        self.sections = {}
        self.section = "setup"

    def begin(self, name):
        self.section = name
        self.sections.setdefault(name, [0, 0])
        print(f"== {name}", flush=True)

    def __call__(self, condition, message):
        counts = self.sections.setdefault(self.section, [0, 0])
        if condition:
            self.passed += 1
            counts[0] += 1
            if self.verbose:
                print(f"  ok: {message}", flush=True)
        else:
            self.failed.append(f"[{self.section}] {message}")
            counts[1] += 1
            print(f"  FAILED: {message}", flush=True)
        return bool(condition)

    def run(self, name, function, *args):
        self.begin(name)
        started = time.monotonic()
        try:
            function(*args)
        except Exception as e:  # a section that breaks is one failed check; the rest go on
            traceback.print_exc()
            self(False, f"{name} raised {type(e).__name__}: {e}")
        print(f"   ({time.monotonic() - started:.1f} s)", flush=True)


check = None  # a Checks, set in main()


def status_of(ds):
    return getattr(ds, "Status", None) if ds is not None else None


def hexs(code):
    return "none" if code is None else f"{code:04X}"


# --------------------------------------------------------------------------------------------
# What was stored


class Stored:
    """One instance the server answered 0000 for, with the data set bytes that were sent."""

    def __init__(self, name, ds, ts, data):
        self.name = name
        self.sop_class = str(ds.SOPClassUID)
        self.sop = str(ds.SOPInstanceUID)
        self.ts = str(ts)
        self.data = data
        self.study = str(ds.get("StudyInstanceUID", ""))
        self.series = str(ds.get("SeriesInstanceUID", ""))
        self.patient_id = str(ds.get("PatientID", "") or "")
        self.patient_name = str(ds.get("PatientName", "") or "")
        self.study_date = str(ds.get("StudyDate", "") or "")
        self.modality = str(ds.get("Modality", "") or "")


class Archive:
    """The suite's own account of what the server holds."""

    def __init__(self):
        self.instances = {}  # SOP Instance UID -> Stored

    def add(self, stored):
        self.instances[stored.sop] = stored

    def where(self, predicate):
        return [s for s in self.instances.values() if predicate(s)]

    def study(self, uid):
        return self.where(lambda s: s.study == uid)

    def series(self, uid):
        return self.where(lambda s: s.series == uid)

    def pairs(self, instances=None):
        instances = self.instances.values() if instances is None else instances
        return sorted({(s.sop_class, s.ts) for s in instances})


# --------------------------------------------------------------------------------------------
# Part 10 files


def dataset_offset(fp):
    """The offset of the data set after the file meta group of a Part 10 stream."""
    read_preamble(fp, False)
    read_dataset(fp, is_implicit_VR=False, is_little_endian=True,
                 stop_when=lambda tag, vr, length: tag.group != 2)
    return fp.tell()


def split_part10(data):
    """(transfer syntax, data set bytes) of Part 10 bytes."""
    fp = io.BytesIO(data)
    meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    return str(meta.TransferSyntaxUID), data[dataset_offset(fp):]


def part10(ds, ts, meta_sop=None, meta_class=None):
    """`ds` as Part 10 bytes in `ts`: (whole file, data set bytes). `meta_sop` / `meta_class`
    override the file meta's UIDs."""
    ts = UID(ts)
    meta = create_file_meta(sop_class_uid=UID(meta_class or ds.SOPClassUID),
                            sop_instance_uid=UID(meta_sop or ds.SOPInstanceUID),
                            transfer_syntax=ts)
    data = encode(ds, ts.is_implicit_VR, ts.is_little_endian)
    if data is None:
        raise ValueError(f"pydicom cannot encode {ds.SOPInstanceUID} in {ts}")
    return b"\0" * 128 + b"DICM" + encode_file_meta(meta) + data, data


def write_part10(path, ds, ts, meta_sop=None, meta_class=None):
    """Writes `ds` as a Part 10 file in `ts` and returns the data set bytes (what goes on the
    wire when the file is sent raw)."""
    whole, data = part10(ds, ts, meta_sop, meta_class)
    with open(path, "wb") as f:
        f.write(whole)
    return data


# --------------------------------------------------------------------------------------------
# Generated objects


def code(value, scheme, meaning):
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def base(sop_class, modality, patient, study, series, number, sop=None):
    """Patient, study, series and instance attributes of a generated object.
    `patient`: (name, id, birth date, sex); `study`: (uid, date, description, accession);
    `series`: (uid, number)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop or generate_uid()
    ds.StudyDate = study[1]
    ds.SeriesDate = study[1]
    ds.ContentDate = study[1]
    ds.StudyTime = "101500"
    ds.ContentTime = "101500"
    ds.AccessionNumber = study[3]
    ds.Modality = modality
    ds.Manufacturer = "Kuvasto test suite"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study[2]
    ds.PatientName = patient[0]
    ds.PatientID = patient[1]
    ds.PatientBirthDate = patient[2]
    ds.PatientSex = patient[3]
    ds.StudyInstanceUID = study[0]
    ds.SeriesInstanceUID = series[0]
    ds.StudyID = "1"
    ds.SeriesNumber = series[1]
    ds.InstanceNumber = number
    return ds


def pixels(ds, rows, columns, bits, frames=1, samples=1, seed=0):
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = str(frames)
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = bits
    ds.BitsStored = 12 if bits == 16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    count = rows * columns * frames * samples
    values = (np.arange(count, dtype=np.uint64) * 7 + seed * 131) % (4096 if bits == 16 else 251)
    data = values.astype("<u2" if bits == 16 else "u1").tobytes()
    ds.add_new(0x7FE00010, "OW" if bits == 16 else "OB", data)


def ct(patient, study, series, number):
    ds = base(CT, "CT", patient, study, series, number)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [0, 0, number * 5]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = "5"
    ds.KVP = "120"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    pixels(ds, 512, 512, 16, seed=number)
    return ds


def xa(patient, study, series, frames=10):
    ds = base(XA, "XA", patient, study, series, 1)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "SINGLE PLANE"]
    ds.FrameTime = "33.3"
    ds.FrameIncrementPointer = 0x00181063
    ds.PositionerPrimaryAngle = "0"
    ds.PositionerSecondaryAngle = "0"
    pixels(ds, 256, 256, 8, frames=frames)
    return ds


LEADS = [("5.6.3-9-1", "Lead I"), ("5.6.3-9-2", "Lead II"), ("5.6.3-9-61", "Lead III"),
         ("5.6.3-9-62", "aVR"), ("5.6.3-9-63", "aVL"), ("5.6.3-9-64", "aVF"),
         ("5.6.3-9-3", "Lead V1"), ("5.6.3-9-4", "Lead V2"), ("5.6.3-9-5", "Lead V3"),
         ("5.6.3-9-6", "Lead V4"), ("5.6.3-9-7", "Lead V5"), ("5.6.3-9-8", "Lead V6")]


def ecg(patient, study, series):
    ds = base(ECG, "ECG", patient, study, series, 1)
    ds.AcquisitionDateTime = study[1] + "101500"
    samples = 5000
    group = Dataset()
    group.MultiplexGroupTimeOffset = "0"
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = len(LEADS)
    group.NumberOfWaveformSamples = samples
    group.SamplingFrequency = "500"
    group.MultiplexGroupLabel = "RHYTHM"
    channels = []
    for lead, meaning in LEADS:
        channel = Dataset()
        source = code(lead, "SCPECG", meaning)
        source.CodingSchemeVersion = "1.3"
        channel.ChannelSourceSequence = Sequence([source])
        channel.ChannelSensitivity = "2.5"
        channel.ChannelSensitivityUnitsSequence = Sequence([code("uV", "UCUM", "microvolt")])
        channel.ChannelSensitivityCorrectionFactor = "1"
        channel.ChannelBaseline = "0"
        channel.ChannelSampleSkew = "0"
        channel.WaveformBitsStored = 16
        channels.append(channel)
    group.ChannelDefinitionSequence = Sequence(channels)
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    t = np.arange(samples)
    waves = np.stack([(np.sin(t / (40 + 3 * i)) * (300 + 10 * i)) for i in range(len(LEADS))],
                     axis=1)
    group.add_new(0x54001010, "OW", waves.astype("<i2").tobytes())  # interleaved by sample
    ds.WaveformSequence = Sequence([group])
    return ds


def pdf(patient, study, series):
    ds = base(PDF, "DOC", patient, study, series, 1)
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = "Referral letter"
    ds.ConceptNameCodeSequence = Sequence([code("18748-4", "LN", "Diagnostic imaging report")])
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    document = (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
                b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\n"
                + b"% Kuvasto test document\n" * 400 + b"trailer << /Root 1 0 R >>\n%%EOF\n")
    if len(document) % 2:
        document += b"\0"
    ds.add_new(0x00420011, "OB", document)
    return ds


def intra_oral(patient, study, series):
    ds = base(IO, "IO", patient, study, series, 1)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.ImageLaterality = "U"
    ds.PositionerType = "NONE"
    pixels(ds, 300, 400, 16, seed=3)
    return ds


def ophthalmic(patient, study, series):
    ds = base(OP, "OP", patient, study, series, 1)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ImageLaterality = "R"
    ds.LossyImageCompression = "00"
    pixels(ds, 240, 320, 8, samples=3, seed=5)
    return ds


def text_sr(patient, study, series, finding):
    ds = base(BASIC_TEXT_SR, "SR", patient, study, series, 1)
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([code("11528-7", "LN", "Radiology Report")])
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    ds.PerformedProcedureCodeSequence = Sequence()
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = Sequence([code("121071", "DCM", "Finding")])
    item.TextValue = finding
    ds.ContentSequence = Sequence([item])
    return ds


def key_objects(patient, study, series, referenced):
    ds = base(KOS, "KO", patient, study, series, 1)
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([code("113000", "DCM", "Of Interest")])
    ds.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "2010"
    ds.ContentTemplateSequence = Sequence([template])
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    by_series = {}
    for r in referenced:
        by_series.setdefault(str(r.SeriesInstanceUID), []).append(r)
    evidence = Dataset()
    evidence.StudyInstanceUID = study[0]
    series_items = []
    for uid, members in by_series.items():
        item = Dataset()
        item.SeriesInstanceUID = uid
        item.ReferencedSOPSequence = Sequence([sop_reference(r) for r in members])
        series_items.append(item)
    evidence.ReferencedSeriesSequence = Sequence(series_items)
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([evidence])
    content = []
    for r in referenced:
        item = Dataset()
        item.RelationshipType = "CONTAINS"
        item.ValueType = "IMAGE"
        item.ReferencedSOPSequence = Sequence([sop_reference(r)])
        content.append(item)
    ds.ContentSequence = Sequence(content)
    return ds


def sop_reference(ds):
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    return item


def secondary_capture(patient, study, series, number):
    ds = base(SC, "OT", patient, study, series, number)
    ds.ConversionType = "WSD"
    pixels(ds, 8, 8, 8, seed=number)
    return ds


class Generated:
    """The generated patients, studies and series (UIDs fixed for the run)."""

    def __init__(self):
        self.p1 = ("Virtanen^Aino", "KUV-P1", "19700101", "F")
        self.p2 = ("Korhonen^Väinö", "KUV-P2", "19551231", "M")
        self.p3 = ("Peruutus^Monta", "KUV-P3", "19800606", "O")
        self.s1 = (generate_uid(), "20240105", "CT thorax", "KUV-A1")
        self.s2 = (generate_uid(), "20240210", "Coronary angiography", "KUV-A2")
        self.s3 = (generate_uid(), "20240315", "Dental and eye", "KUV-A3")
        self.ct_series = (generate_uid(), 1)
        self.sr_series = (generate_uid(), 2)
        self.ko_series = (generate_uid(), 3)
        self.xa_series = (generate_uid(), 1)
        self.ecg_series = (generate_uid(), 2)
        self.pdf_series = (generate_uid(), 1)
        self.io_series = (generate_uid(), 2)
        self.op_series = (generate_uid(), 3)
        self.cts = [ct(self.p1, self.s1, self.ct_series, n) for n in (1, 2, 3)]
        self.sr = text_sr(self.p1, self.s1, self.sr_series, "No acute findings.")
        self.kos = key_objects(self.p1, self.s1, self.ko_series, self.cts[:2])
        self.xa = xa(self.p1, self.s2, self.xa_series)
        self.ecg = ecg(self.p1, self.s2, self.ecg_series)
        self.pdf = pdf(self.p2, self.s3, self.pdf_series)
        self.io = intra_oral(self.p2, self.s3, self.io_series)
        self.op = ophthalmic(self.p2, self.s3, self.op_series)
        # Many studies for C-CANCEL.
        self.many = []
        for n in range(30):
            study = (generate_uid(), f"202301{n + 1:02d}", f"Study {n + 1}", f"KUV-M{n + 1}")
            self.many.append(secondary_capture(self.p3, study, (generate_uid(), 1), 1))

    def objects(self):
        """(label, data set, transfer syntax) of everything stored with 0000 expected."""
        out = [(f"CT {i + 1}", ds, EXPLICIT) for i, ds in enumerate(self.cts)]
        out += [("Basic Text SR", self.sr, EXPLICIT), ("KOS", self.kos, EXPLICIT),
                ("XA 10 frames", self.xa, IMPLICIT), ("12-lead ECG", self.ecg, EXPLICIT),
                ("Encapsulated PDF", self.pdf, EXPLICIT), ("Intra-oral X-ray", self.io, EXPLICIT),
                ("Ophthalmic photography", self.op, EXPLICIT)]
        return out


# --------------------------------------------------------------------------------------------
# Associations


class Peer:
    def __init__(self, args):
        host, port = args.dimse.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.http = args.http
        self.scp_port = args.scp_port
        self.commit_port = args.commit_port
        self.ian_port = args.ian_port

    def ae(self, title=CALLING):
        ae = AE(ae_title=title)
        ae.acse_timeout = 30
        ae.dimse_timeout = 120
        ae.network_timeout = 120
        return ae

    def associate(self, contexts, title=CALLING, ext_neg=None, handlers=None):
        ae = self.ae(title)
        assoc = ae.associate(self.host, self.port, contexts=contexts, ae_title=CALLED,
                             ext_neg=ext_neg, evt_handlers=handlers)
        if not assoc.is_established:
            raise RuntimeError(f"association with {CALLED} not established ({title})")
        return assoc


def context_id(assoc, abstract_syntax):
    for cx in assoc.accepted_contexts:
        if cx.abstract_syntax == abstract_syntax:
            return cx.context_id
    raise RuntimeError(f"{abstract_syntax} not accepted")


def chunks(items, size):
    for i in range(0, len(items), size):
        yield items[i:i + size]


# --------------------------------------------------------------------------------------------
# 1. C-ECHO


def section_echo(peer):
    assoc = peer.associate([build_context(VERIFICATION)])
    try:
        check(status_of(assoc.send_c_echo()) == 0x0000, "C-ECHO answered 0000")
        check(status_of(assoc.send_c_echo(msg_id=2)) == 0x0000,
              "a second C-ECHO on the association")
    finally:
        assoc.release()


# --------------------------------------------------------------------------------------------
# 2. C-STORE


def send_files(peer, files):
    """Sends Part 10 files raw (the data set bytes as in the file), each on a presentation
    context for its own SOP class and transfer syntax. `files`: (path, class, ts) tuples.
    Returns the status of each (None when pynetdicom could not send it)."""
    statuses = {}
    pairs = sorted({(cls, ts) for _, cls, ts in files})
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        for group in chunks(pairs, 100):
            wanted = set(group)
            contexts = [build_context(cls, [ts]) for cls, ts in group]
            assoc = peer.associate(contexts)
            try:
                for path, cls, ts in files:
                    if (cls, ts) not in wanted:
                        continue
                    try:
                        statuses[path] = status_of(assoc.send_c_store(path))
                    except (ValueError, AttributeError) as e:
                        print(f"   pynetdicom cannot send {Path(path).name}: {e}")
                        statuses[path] = None
            finally:
                assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    return statuses


def sample_files():
    root = Path(pydicom.__file__).parent / "data" / "test_files"
    return sorted(p for p in root.rglob("*") if p.is_file())


def section_store_samples(peer, archive, summary):
    files, unreadable, deflated, meta_mismatch = [], 0, 0, set()
    readable = {}
    for path in sample_files():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            ds.SOPClassUID, ds.SOPInstanceUID
            meta = ds.file_meta
            ts = str(meta.TransferSyntaxUID)
            cls = str(meta.MediaStorageSOPClassUID)
            str(meta.MediaStorageSOPInstanceUID)
        except Exception:
            unreadable += 1
            continue
        if ts == DEFLATED:
            deflated += 1
        with open(path, "rb") as f:
            offset = dataset_offset(f)
        data = path.read_bytes()[offset:]
        readable[str(path)] = (ds, ts, data)
        if (meta.MediaStorageSOPInstanceUID != ds.SOPInstanceUID
                or meta.MediaStorageSOPClassUID != ds.SOPClassUID):
            meta_mismatch.add(str(path))
        files.append((str(path), cls, ts))
    print(f"   {len(files)} sample files to send ({unreadable} not readable by pydicom or "
          f"without UIDs and file meta, skipped; {deflated} deflated among them)")
    statuses = send_files(peer, files)
    stored, refused = 0, []
    first_stored = {}  # SOP Instance UID -> (ts, data) of the sample stored first
    for path, cls, ts in files:
        code = statuses.get(path)
        ds, ts, data = readable[path]
        name = os.path.relpath(path, Path(pydicom.__file__).parent / "data" / "test_files")
        sop = str(ds.SOPInstanceUID)
        if "truncated" in name:
            pass  # damaged on purpose: refused as unreadable (C000) or not, nothing predicted
        elif path in meta_mismatch:
            check(code == 0xA900, f"{name}: file meta UIDs disagree with the data set: "
                                  f"A900 expected, got {hexs(code)}")
        elif sop in first_stored and first_stored[sop] != (ts, data):
            check(code == 0x0111, f"{name}: SOP Instance UID stored earlier with other content: "
                                  f"0111 expected, got {hexs(code)}")
        elif sop in first_stored:
            check(code == 0x0000, f"{name}: identical re-send: 0000 expected, got {hexs(code)}")
        elif ts == DEFLATED:
            check(code == 0x0000, f"{name}: deflated, stored as received: 0000 expected, "
                                  f"got {hexs(code)}")
        if code == 0x0000:
            if sop not in first_stored:
                stored += 1
                first_stored[sop] = (ts, data)
                archive.add(Stored(name, ds, ts, data))
        else:
            refused.append(f"{name}: {hexs(code)}")
    summary["samples_stored"] = stored
    summary["samples_refused"] = len(refused)
    print(f"   stored {stored} distinct sample instances, refused {len(refused)}:")
    for line in refused:
        print(f"     {line}")
    check(stored >= 40, f"at least 40 sample files stored (stored {stored})")


def section_store_generated(peer, archive, gen, workdir):
    files, expected = [], {}
    for label, ds, ts in gen.objects() + [(f"SC {i}", d, EXPLICIT) for i, d in enumerate(gen.many)]:
        path = str(workdir / f"{ds.SOPInstanceUID}.dcm")
        data = write_part10(path, ds, ts)
        files.append((path, str(ds.SOPClassUID), ts))
        expected[path] = (label, ds, ts, data)
    statuses = send_files(peer, files)
    for path, _, _ in files:
        label, ds, ts, data = expected[path]
        code = statuses.get(path)
        if label.startswith("SC "):
            if code == 0x0000:
                archive.add(Stored(label, ds, ts, data))
            continue
        if check(code == 0x0000,
                 f"C-STORE {label} ({ds.SOPClassUID}, {ts}): 0000, got {hexs(code)}"):
            archive.add(Stored(label, ds, ts, data))
    many = sum(1 for d in gen.many if str(d.SOPInstanceUID) in archive.instances)
    check(many == 30, f"30 one-instance studies stored for the cancel test ({many})")

    # Refusals, each on its own context.
    private = base(PRIVATE_CLASS, "OT", gen.p2, gen.s3, (generate_uid(), 9), 1)
    private.ContentLabel = "PRIVATE"
    wrong_sop = ct(gen.p2, gen.s3, (generate_uid(), 8), 1)
    wrong_sop_path = str(workdir / "wrong-sop.dcm")
    write_part10(wrong_sop_path, wrong_sop, EXPLICIT, meta_sop=generate_uid())
    wrong_class = intra_oral(gen.p2, gen.s3, (generate_uid(), 7))
    wrong_class_path = str(workdir / "wrong-class.dcm")
    write_part10(wrong_class_path, wrong_class, EXPLICIT, meta_class=CT)
    changed = copy.deepcopy(gen.cts[0])  # same UIDs, one more attribute
    changed.file_meta = create_file_meta(sop_class_uid=UID(CT),
                                         sop_instance_uid=UID(gen.cts[0].SOPInstanceUID),
                                         transfer_syntax=UID(EXPLICIT))
    changed.PatientComments = "changed after storage"
    private.file_meta = create_file_meta(sop_class_uid=UID(PRIVATE_CLASS),
                                         sop_instance_uid=UID(private.SOPInstanceUID),
                                         transfer_syntax=UID(EXPLICIT))
    identical_path = str(workdir / f"{gen.cts[0].SOPInstanceUID}.dcm")
    assoc = peer.associate([build_context(PRIVATE_CLASS, [EXPLICIT]),
                            build_context(CT, [EXPLICIT])])
    try:
        code = status_of(assoc.send_c_store(private))
        check(code == 0x0122,
              f"C-STORE of private SOP class {PRIVATE_CLASS}: 0122, got {hexs(code)}")
        code = status_of(assoc.send_c_store(changed))
        check(code == 0x0111, f"C-STORE of a stored SOP Instance UID with other content: 0111, "
                              f"got {hexs(code)}")
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            code = status_of(assoc.send_c_store(wrong_sop_path))
            check(code == 0xA900, f"C-STORE whose data set SOP Instance UID differs from the "
                                  f"command's: A900, got {hexs(code)}")
            code = status_of(assoc.send_c_store(identical_path))
            check(code == 0x0000, f"identical re-send of a stored CT: 0000, got {hexs(code)}")
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = False
    finally:
        assoc.release()
    assoc = peer.associate([build_context(CT, [EXPLICIT])])
    try:
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            code = status_of(assoc.send_c_store(wrong_class_path))
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = False
        check(code == 0xA900, f"C-STORE on a CT context of a data set whose SOP Class UID is "
                              f"intra-oral: A900, got {hexs(code)}")
    finally:
        assoc.release()
    for uid in (private.SOPInstanceUID, wrong_sop.SOPInstanceUID, wrong_class.SOPInstanceUID):
        check(str(uid) not in archive.instances, "refused instance not in the account")


# --------------------------------------------------------------------------------------------
# 3. C-FIND


def query(level, **keys):
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def find(assoc, model, identifier, label):
    """Answers (identifiers), pending statuses and the final status."""
    answers, pendings, final = [], [], None
    for status, answer in assoc.send_c_find(identifier, model):
        code = status_of(status)
        if code in (0xFF00, 0xFF01):
            pendings.append(code)
            answers.append(answer)
        else:
            final = code
    # Every answer: the keys asked for, the level and the retrieve AE title, nothing else.
    asked = {e.keyword for e in identifier if e.keyword not in CONTROL_KEYWORDS}
    for answer in answers:
        if answer is None:
            check(False, f"{label}: a pending response without an identifier")
            continue
        got = {e.keyword for e in answer}
        missing, extra = asked - got, got - asked - CONTROL_KEYWORDS - OPTIONAL_EXTRAS
        check(not missing and not extra,
              f"{label}: answer keys are the keys asked for (missing {sorted(missing)}, "
              f"extra {sorted(extra)})")
        check(answer.get("QueryRetrieveLevel") == identifier.QueryRetrieveLevel,
              f"{label}: answer QueryRetrieveLevel {answer.get('QueryRetrieveLevel')!r}")
        check(answer.get("RetrieveAETitle") == CALLED,
              f"{label}: answer RetrieveAETitle {answer.get('RetrieveAETitle')!r}")
    return answers, pendings, final


def values(answers, keyword):
    return [str(a.get(keyword, "")) for a in answers]


def pn_matches(pattern, name):
    return fnmatch.fnmatchcase(name.lower(), pattern.lower())


def expect_find(assoc, model, identifier, label, expected, key, pending=0xFF00):
    """Runs a C-FIND and checks the final status, the pending statuses and that the answers'
    `key` values are exactly `expected`. Returns the answers by `key`."""
    answers, pendings, final = find(assoc, model, identifier, label)
    check(final == 0x0000, f"{label}: final status 0000, got {hexs(final)}")
    check(all(p == pending for p in pendings),
          f"{label}: pending statuses {hexs(pending)} (got {sorted({hexs(p) for p in pendings})})")
    got = values(answers, key)
    check(len(got) == len(set(got)), f"{label}: no {key} answered twice")
    check(set(got) == set(expected),
          f"{label}: {key} set: missing {sorted(set(expected) - set(got))[:5]}, "
          f"unexpected {sorted(set(got) - set(expected))[:5]}")
    return {str(a.get(key, "")): a for a in answers}


def section_find(peer, archive, gen):
    assoc = peer.associate([build_context(PR_FIND), build_context(SR_FIND)])
    try:
        run_finds(assoc, archive, gen)
    finally:
        assoc.release()


def run_finds(assoc, archive, gen):
    s1, s2, s3 = (str(s[0]) for s in (gen.s1, gen.s2, gen.s3))
    all_studies = {s.study for s in archive.instances.values()}

    # Patient Root, PATIENT level, by ID: one patient with its counts.
    label = "PR PATIENT PatientID=KUV-P1"
    got = expect_find(assoc, PR_FIND, query("PATIENT", PatientID="KUV-P1", PatientName="",
                                            PatientBirthDate="", NumberOfPatientRelatedStudies="",
                                            NumberOfPatientRelatedSeries="",
                                            NumberOfPatientRelatedInstances=""),
                      label, ["KUV-P1"], "PatientID")
    if "KUV-P1" in got:
        a = got["KUV-P1"]
        p1 = archive.where(lambda s: s.patient_id == "KUV-P1")
        check(str(a.PatientName) == "Virtanen^Aino", f"{label}: PatientName {a.PatientName}")
        check(a.PatientBirthDate == "19700101", f"{label}: PatientBirthDate {a.PatientBirthDate}")
        for keyword, n in (("NumberOfPatientRelatedStudies", len({s.study for s in p1})),
                           ("NumberOfPatientRelatedSeries", len({s.series for s in p1})),
                           ("NumberOfPatientRelatedInstances", len(p1))):
            check(str(a.get(keyword, "")) == str(n), f"{label}: {keyword} {a.get(keyword)!r}, "
                                                      f"expected {n}")

    # PATIENT level, wildcard name in lower case (PN matching is case-insensitive).
    label = "PR PATIENT PatientName=virtanen*"
    expected = {s.patient_id
                for s in archive.where(lambda s: pn_matches("virtanen*", s.patient_name))}
    expect_find(assoc, PR_FIND, query("PATIENT", PatientName="virtanen*", PatientID=""),
                label, expected, "PatientID")
    label = "PR PATIENT PatientName=virtanen^aino (exact, other case)"
    expect_find(assoc, PR_FIND, query("PATIENT", PatientName="virtanen^aino", PatientID=""),
                label, ["KUV-P1"], "PatientID")
    label = "PR PATIENT PatientName=?ORHONEN*"
    got = expect_find(assoc, PR_FIND, query("PATIENT", PatientName="?ORHONEN*", PatientID=""),
                      label, ["KUV-P2"], "PatientID")
    if "KUV-P2" in got:
        check(str(got["KUV-P2"].PatientName) == "Korhonen^Väinö",
              f"{label}: non-ASCII PatientName {str(got['KUV-P2'].PatientName)!r}")

    # STUDY level under a patient, with a date range.
    label = "PR STUDY PatientID=KUV-P1 StudyDate=20240101-20240131"
    got = expect_find(assoc, PR_FIND,
                      query("STUDY", PatientID="KUV-P1", StudyDate="20240101-20240131",
                            StudyInstanceUID="", AccessionNumber="", StudyDescription="",
                            NumberOfStudyRelatedSeries="", NumberOfStudyRelatedInstances="",
                            ModalitiesInStudy=""),
                      label, [s1], "StudyInstanceUID")
    if s1 in got:
        a = got[s1]
        check(a.AccessionNumber == "KUV-A1", f"{label}: AccessionNumber {a.AccessionNumber!r}")
        check(a.StudyDescription == "CT thorax", f"{label}: StudyDescription")
        check(str(a.NumberOfStudyRelatedInstances) == "5",
              f"{label}: NumberOfStudyRelatedInstances {a.NumberOfStudyRelatedInstances!r}, "
              f"expected 5")
        check(str(a.NumberOfStudyRelatedSeries) == "3",
              f"{label}: NumberOfStudyRelatedSeries {a.NumberOfStudyRelatedSeries!r}, expected 3")
        modalities = a.ModalitiesInStudy
        modalities = {modalities} if isinstance(modalities, str) else set(modalities)
        check(modalities == {"CT", "SR", "KO"}, f"{label}: ModalitiesInStudy {sorted(modalities)}")
    label = "PR STUDY PatientID=KUV-P1 (all its studies)"
    expect_find(assoc, PR_FIND, query("STUDY", PatientID="KUV-P1", StudyInstanceUID=""),
                label, [s1, s2], "StudyInstanceUID")

    # SERIES level, with counts.
    label = "PR SERIES study 1"
    got = expect_find(assoc, PR_FIND,
                      query("SERIES", PatientID="KUV-P1", StudyInstanceUID=s1, SeriesInstanceUID="",
                            Modality="", SeriesNumber="", NumberOfSeriesRelatedInstances=""),
                      label, [str(gen.ct_series[0]), str(gen.sr_series[0]), str(gen.ko_series[0])],
                      "SeriesInstanceUID")
    for series, modality, count in ((gen.ct_series, "CT", 3), (gen.sr_series, "SR", 1),
                                    (gen.ko_series, "KO", 1)):
        a = got.get(str(series[0]))
        if a is not None:
            check(a.Modality == modality, f"{label}: Modality {a.Modality!r}, expected {modality}")
            check(str(a.SeriesNumber) == str(series[1]),
                  f"{label}: SeriesNumber {a.SeriesNumber!r}")
            check(str(a.NumberOfSeriesRelatedInstances) == str(count),
                  f"{label}: {modality} NumberOfSeriesRelatedInstances "
                  f"{a.NumberOfSeriesRelatedInstances!r}, expected {count}")

    # IMAGE level.
    label = "PR IMAGE CT series"
    got = expect_find(assoc, PR_FIND,
                      query("IMAGE", PatientID="KUV-P1", StudyInstanceUID=s1,
                            SeriesInstanceUID=str(gen.ct_series[0]), SOPInstanceUID="",
                            SOPClassUID="", InstanceNumber=""),
                      label, [str(d.SOPInstanceUID) for d in gen.cts], "SOPInstanceUID")
    for d in gen.cts:
        a = got.get(str(d.SOPInstanceUID))
        if a is not None:
            check(a.SOPClassUID == CT, f"{label}: SOPClassUID {a.SOPClassUID}")
            check(str(a.InstanceNumber) == str(d.InstanceNumber), f"{label}: InstanceNumber")

    # Study Root, STUDY level: a UID list of two studies.
    label = "SR STUDY StudyInstanceUID=<study 1>\\<study 3>"
    got = expect_find(assoc, SR_FIND, query("STUDY", StudyInstanceUID=[s1, s3], PatientID="",
                                            PatientName=""),
                      label, [s1, s3], "StudyInstanceUID")
    if s3 in got:
        check(got[s3].PatientID == "KUV-P2", f"{label}: PatientID of study 3")
    # ModalitiesInStudy matching.
    label = "SR STUDY ModalitiesInStudy=XA"
    expected = {s.study for s in archive.where(lambda s: s.modality == "XA")}
    check(s2 in expected, "study 2 holds an XA")
    expect_find(assoc, SR_FIND, query("STUDY", ModalitiesInStudy="XA", StudyInstanceUID=""),
                label, expected, "StudyInstanceUID")
    label = "SR STUDY ModalitiesInStudy=OP PatientID=KUV-P2"
    expect_find(assoc, SR_FIND, query("STUDY", ModalitiesInStudy="OP", PatientID="KUV-P2",
                                      StudyInstanceUID=""),
                label, [s3], "StudyInstanceUID")
    # A wildcard name (upper case) and an open date range.
    label = "SR STUDY PatientName=*ORHON* StudyDate=20240301-"
    expected = {s.study for s in archive.where(
        lambda s: pn_matches("*orhon*", s.patient_name) and s.study_date >= "20240301")}
    expect_find(assoc, SR_FIND, query("STUDY", PatientName="*ORHON*", StudyDate="20240301-",
                                      StudyInstanceUID=""),
                label, expected, "StudyInstanceUID")
    label = "SR STUDY StudyDate=20240210"
    expected = {s.study for s in archive.where(lambda s: s.study_date == "20240210")}
    expect_find(assoc, SR_FIND, query("STUDY", StudyDate="20240210", StudyInstanceUID=""),
                label, expected, "StudyInstanceUID")
    label = "SR STUDY StudyDate=-20230105 PatientID=KUV-P3"
    expected = [str(d.StudyInstanceUID) for d in gen.many[:5]]
    expect_find(assoc, SR_FIND, query("STUDY", StudyDate="-20230105", PatientID="KUV-P3",
                                      StudyInstanceUID=""),
                label, expected, "StudyInstanceUID")
    # Universal match: every stored study, each with its instance and series counts.
    label = "SR STUDY universal"
    got = expect_find(assoc, SR_FIND, query("STUDY", StudyInstanceUID="",
                                            NumberOfStudyRelatedInstances="",
                                            NumberOfStudyRelatedSeries=""),
                      label, all_studies, "StudyInstanceUID")
    wrong = []
    for uid, a in got.items():
        members = archive.study(uid)
        series_count = len({m.series for m in members})
        if (str(a.get("NumberOfStudyRelatedInstances", "")) != str(len(members))
                or str(a.get("NumberOfStudyRelatedSeries", "")) != str(series_count)):
            wrong.append(f"{uid}: {a.get('NumberOfStudyRelatedInstances')!r}/"
                         f"{a.get('NumberOfStudyRelatedSeries')!r} vs {len(members)}/"
                         f"{len({m.series for m in members})}")
    check(not wrong, f"{label}: instance and series counts of every study ({wrong[:3]})")

    # SERIES and IMAGE levels.
    label = "SR SERIES study 2"
    got = expect_find(assoc, SR_FIND, query("SERIES", StudyInstanceUID=s2, SeriesInstanceUID="",
                                            Modality=""),
                      label, [str(gen.xa_series[0]), str(gen.ecg_series[0])], "SeriesInstanceUID")
    modalities = sorted(str(a.Modality) for a in got.values())
    check(modalities == ["ECG", "XA"], f"{label}: modalities {modalities}")
    label = "SR SERIES Modality=IO"
    expected = {s.series for s in archive.where(lambda s: s.modality == "IO" and s.study == s3)}
    expect_find(assoc, SR_FIND, query("SERIES", StudyInstanceUID=s3, Modality="IO",
                                      SeriesInstanceUID=""),
                label, expected, "SeriesInstanceUID")
    label = "SR IMAGE PDF series"
    got = expect_find(assoc, SR_FIND, query("IMAGE", StudyInstanceUID=s3,
                                            SeriesInstanceUID=str(gen.pdf_series[0]),
                                            SOPInstanceUID="", SOPClassUID=""),
                      label, [str(gen.pdf.SOPInstanceUID)], "SOPInstanceUID")
    for a in got.values():
        check(a.SOPClassUID == PDF, f"{label}: SOPClassUID {a.SOPClassUID}")
    label = "SR IMAGE SOPInstanceUID list of two CTs"
    two = [str(gen.cts[0].SOPInstanceUID), str(gen.cts[2].SOPInstanceUID)]
    expect_find(assoc, SR_FIND, query("IMAGE", StudyInstanceUID=s1,
                                      SeriesInstanceUID=str(gen.ct_series[0]),
                                      SOPInstanceUID=two),
                label, two, "SOPInstanceUID")
    label = "SR IMAGE every instance of each stored study"
    wrong = []
    for uid in sorted(all_studies):
        series = {s.series for s in archive.study(uid)}
        found = set()
        for se in series:
            answers, _, final = find(assoc, SR_FIND, query("IMAGE", StudyInstanceUID=uid,
                                                           SeriesInstanceUID=se,
                                                           SOPInstanceUID=""), label)
            found |= set(values(answers, "SOPInstanceUID"))
            if final != 0:
                wrong.append(f"{uid}/{se}: final {hexs(final)}")
        if found != {s.sop for s in archive.study(uid)}:
            wrong.append(f"{uid}: {len(found)} found, {len(archive.study(uid))} stored")
    check(not wrong, f"{label}: {wrong[:3]}")

    # A key the archive cannot match on: answered, with pending status FF01.
    label = "SR STUDY with InstitutionName (not matched)"
    expect_find(assoc, SR_FIND, query("STUDY", StudyInstanceUID=s1, InstitutionName="Somewhere"),
                label, [s1], "StudyInstanceUID", pending=0xFF01)
    # Nothing matches: success without answers.
    label = "SR STUDY no match"
    expect_find(assoc, SR_FIND, query("STUDY", PatientID="NO-SUCH-PATIENT", StudyInstanceUID=""),
                label, [], "StudyInstanceUID")
    # Study Root has no PATIENT level.
    answers, _, final = find(assoc, SR_FIND, query("PATIENT", PatientID=""), "SR PATIENT")
    check(final is not None and (0xA900 <= final <= 0xA9FF or 0xC000 <= final <= 0xCFFF)
          and not answers, f"SR PATIENT level refused with a failure status, got {hexs(final)}")


def section_find_cancel(peer, gen):
    """C-CANCEL during a C-FIND with 30 matches ends it with FE00; the association goes on."""
    assoc = peer.associate([build_context(PR_FIND), build_context(VERIFICATION)])
    try:
        identifier = query("STUDY", PatientID="KUV-P3", StudyInstanceUID="", StudyDate="")
        answers, _, final = find(assoc, PR_FIND, identifier, "PR STUDY KUV-P3")
        check(final == 0 and len(answers) == 30, f"the uncancelled C-FIND has 30 answers "
                                                 f"({len(answers)}, final {hexs(final)})")
        cx = context_id(assoc, PR_FIND)
        msg_id = 7
        # The C-CANCEL goes out right behind the C-FIND-RQ (PS3.7 allows it any time before the
        # final response), so the server has it before it answers anything. Sent after the
        # first pending response instead, it races with the server answering all 30 matches
        # within a millisecond (checked below, where either outcome is correct).
        dimse = assoc.dimse
        send_msg = dimse.send_msg

        def send_then_cancel(primitive, context):
            send_msg(primitive, context)
            if isinstance(primitive, C_FIND) and primitive.MessageID == msg_id:
                dimse.send_msg = send_msg
                assoc.send_c_cancel(msg_id, cx)

        dimse.send_msg = send_then_cancel
        pendings, final = 0, None
        try:
            for status, _ in assoc.send_c_find(identifier, PR_FIND, msg_id=msg_id):
                code = status_of(status)
                if code in (0xFF00, 0xFF01):
                    pendings += 1
                else:
                    final = code
        finally:
            dimse.send_msg = send_msg
        check(final == 0xFE00, f"C-FIND cancelled right behind its request: final status FE00, "
                               f"got {hexs(final)} after {pendings} pending")
        check(pendings < 30, f"the cancelled C-FIND stopped early ({pendings} of 30 answers)")
        # Cancelled while iterating (the first answer already in): ends with FE00 or, when the
        # server had already answered every match, 0000.
        pendings, final = 0, None
        for status, _ in assoc.send_c_find(identifier, PR_FIND, msg_id=8):
            code = status_of(status)
            if code in (0xFF00, 0xFF01):
                if pendings == 0:
                    assoc.send_c_cancel(8, cx)
                pendings += 1
            else:
                final = code
        check(final == 0xFE00 or (final == 0 and pendings == 30),
              f"C-FIND cancelled after its first answer: FE00 (or 0000 with all 30 answers), "
              f"got {hexs(final)} after {pendings}")
        print(f"   cancel after the first answer: {hexs(final)} after {pendings} answers")
        check(status_of(assoc.send_c_echo(msg_id=9)) == 0,
              "the association serves a C-ECHO after the cancelled C-FIND")
    finally:
        assoc.release()


# --------------------------------------------------------------------------------------------
# 4. C-GET, 5. C-MOVE


class Received:
    """Instances a C-STORE handler received, by SOP Instance UID."""

    def __init__(self):
        self.lock = threading.Lock()
        self.instances = {}
        self.duplicates = []
        self.originators = set()

    def handler(self, event):
        req = event.request
        sop = str(req.AffectedSOPInstanceUID)
        data = req.DataSet.getvalue()
        with self.lock:
            if sop in self.instances:
                self.duplicates.append(sop)
            self.instances[sop] = (str(req.AffectedSOPClassUID), str(event.context.transfer_syntax),
                                   data)
            self.originators.add((req.MoveOriginatorApplicationEntityTitle,
                                  req.MoveOriginatorMessageID))
        return 0x0000

    def take(self):
        with self.lock:
            out, self.instances, self.duplicates = self.instances, {}, []
            self.originators = set()
        return out


def sub_counts(status):
    return tuple(status.get(k) for k in (
        "NumberOfRemainingSuboperations", "NumberOfCompletedSuboperations",
        "NumberOfFailedSuboperations", "NumberOfWarningSuboperations"))


def check_retrieve(label, responses, expected, received, all_retrieved):
    """Checks a C-GET / C-MOVE: the statuses and counts, and that exactly `expected` (Stored
    objects) arrived with the bytes that were sent."""
    total = len(expected)
    final = responses[-1] if responses else None
    pendings = responses[:-1]
    code = status_of(final)
    check(code == 0x0000, f"{label}: final status 0000, got {hexs(code)}")
    if final is not None:
        _, completed, failed, warning = sub_counts(final)
        check((completed, failed or 0, warning or 0) == (total, 0, 0),
              f"{label}: final counts completed/failed/warning {completed}/{failed}/{warning}, "
              f"expected {total}/0/0")
    remaining_seen = []
    for p in pendings:
        c = status_of(p)
        remaining, completed, failed, warning = sub_counts(p)
        ok = (c == 0xFF00 and None not in (remaining, completed, failed, warning)
              and remaining + completed + failed + warning == total)
        check(ok, f"{label}: pending {hexs(c)} counts {remaining}/{completed}/{failed}/{warning} "
                  f"add up to {total}")
        remaining_seen.append(remaining if remaining is not None else -1)
    check(remaining_seen == sorted(remaining_seen, reverse=True) and len(set(remaining_seen))
          == len(remaining_seen), f"{label}: remaining counts decrease {remaining_seen}")
    wanted = {s.sop: s for s in expected}
    check(set(received) == set(wanted),
          f"{label}: instances received: missing {sorted(set(wanted) - set(received))[:3]}, "
          f"unexpected {sorted(set(received) - set(wanted))[:3]}")
    mismatched = []
    for sop, (cls, ts, data) in received.items():
        s = wanted.get(sop)
        if s is None:
            continue
        if cls != s.sop_class or ts != s.ts or data != s.data:
            mismatched.append(f"{s.name} (class {cls == s.sop_class}, ts {ts} vs {s.ts}, "
                              f"{len(data)} vs {len(s.data)} bytes)")
        all_retrieved.setdefault(sop, []).append(data)
    check(not mismatched, f"{label}: received bytes equal the bytes sent ({mismatched[:3]})")


def retrieve(assoc, send, identifier, model, received, *extra):
    received.take()
    responses = [status for status, _ in send(identifier, model, *extra)]
    return responses, received.take()


def get_association(peer, pairs, received):
    contexts = [build_context(PR_GET), build_context(SR_GET)]
    contexts += [build_context(cls, [ts]) for cls, ts in pairs]
    roles = [build_role(cls, scp_role=True) for cls in sorted({cls for cls, _ in pairs})]
    return peer.associate(contexts, ext_neg=roles, handlers=[(evt.EVT_C_STORE, received.handler)])


def retrieval_plan(archive, gen):
    """(label, model, identifier, expected instances) of the C-GETs and C-MOVEs."""
    s1, s2, s3 = (str(s[0]) for s in (gen.s1, gen.s2, gen.s3))
    plan = [
        ("SR STUDY study 1", SR_GET, query("STUDY", StudyInstanceUID=s1), archive.study(s1)),
        ("PR STUDY study 2", PR_GET, query("STUDY", PatientID="KUV-P1", StudyInstanceUID=s2),
         archive.study(s2)),
        ("PR PATIENT KUV-P2", PR_GET, query("PATIENT", PatientID="KUV-P2"), archive.study(s3)),
        ("PR SERIES XA", PR_GET, query("SERIES", PatientID="KUV-P1", StudyInstanceUID=s2,
                                       SeriesInstanceUID=str(gen.xa_series[0])),
         archive.series(str(gen.xa_series[0]))),
        ("SR SERIES ECG", SR_GET, query("SERIES", StudyInstanceUID=s2,
                                        SeriesInstanceUID=str(gen.ecg_series[0])),
         archive.series(str(gen.ecg_series[0]))),
        ("SR IMAGE PDF", SR_GET, query("IMAGE", StudyInstanceUID=s3,
                                       SeriesInstanceUID=str(gen.pdf_series[0]),
                                       SOPInstanceUID=str(gen.pdf.SOPInstanceUID)),
         [archive.instances[str(gen.pdf.SOPInstanceUID)]]),
        ("SR IMAGE two CTs", SR_GET, query("IMAGE", StudyInstanceUID=s1,
                                           SeriesInstanceUID=str(gen.ct_series[0]),
                                           SOPInstanceUID=[str(gen.cts[0].SOPInstanceUID),
                                                           str(gen.cts[1].SOPInstanceUID)]),
         [archive.instances[str(d.SOPInstanceUID)] for d in gen.cts[:2]]),
        ("SR STUDY nothing stored", SR_GET, query("STUDY", StudyInstanceUID=generate_uid()), []),
    ]
    generated = {s.study for s in archive.where(lambda s: s.patient_id.startswith("KUV-"))}
    for uid in sorted({s.study for s in archive.instances.values()} - generated):
        plan.append((f"SR STUDY sample study {uid}", SR_GET, query("STUDY", StudyInstanceUID=uid),
                     archive.study(uid)))
    return plan


def grouped(plan, archive):
    """The plan split so that one association's storage contexts stay under pynetdicom's 128."""
    groups, current, pairs = [], [], set()
    for step in plan:
        step_pairs = set(archive.pairs(step[3]))
        if current and len(pairs | step_pairs) > 120:
            groups.append((current, sorted(pairs)))
            current, pairs = [], set()
        current.append(step)
        pairs |= step_pairs
    if current:
        groups.append((current, sorted(pairs)))
    return groups


def section_get(peer, archive, gen, retrieved):
    received = Received()
    plan = retrieval_plan(archive, gen)
    for steps, pairs in grouped(plan, archive):
        assoc = get_association(peer, pairs or [(CT, EXPLICIT)], received)
        try:
            for label, model, identifier, expected in steps:
                responses, got = retrieve(assoc, assoc.send_c_get, identifier, model, received)
                check_retrieve(f"C-GET {label}", responses, expected, got, retrieved["get"])
        finally:
            assoc.release()
    # Without the level's unique key: refused.
    assoc = get_association(peer, [(CT, EXPLICIT)], received)
    try:
        responses, got = retrieve(assoc, assoc.send_c_get, query("STUDY", PatientID="KUV-P1"),
                                  SR_GET, received)
        code = status_of(responses[-1]) if responses else None
        check(code is not None and (0xA900 <= code <= 0xA9FF or 0xC000 <= code <= 0xCFFF)
              and not got,
              f"C-GET STUDY without StudyInstanceUID: failure status, got {hexs(code)}")
    finally:
        assoc.release()


def section_get_cancel(peer, gen):
    """A C-CANCEL sent while the first C-STORE sub-operation of a 30-instance C-GET is being
    answered ends the C-GET with FE00 and counts that add up."""
    received = Received()
    msg_id, state = 31, {"cancelled": False}

    def cancel_on_first(event):
        status = received.handler(event)
        if not state["cancelled"]:
            state["cancelled"] = True
            assoc.send_c_cancel(msg_id, context_id(assoc, PR_GET))
        return status

    contexts = [build_context(PR_GET), build_context(SC, [EXPLICIT]), build_context(VERIFICATION)]
    assoc = peer.associate(contexts, ext_neg=[build_role(SC, scp_role=True)],
                           handlers=[(evt.EVT_C_STORE, cancel_on_first)])
    try:
        identifier = query("PATIENT", PatientID="KUV-P3")
        responses = [s for s, _ in assoc.send_c_get(identifier, PR_GET, msg_id=msg_id)]
        got = received.take()
        final = responses[-1] if responses else None
        code = status_of(final)
        check(code == 0xFE00,
              f"C-GET cancelled after its first sub-operation: FE00, got {hexs(code)}")
        if final is not None:
            remaining, completed, failed, warning = sub_counts(final)
            check(completed is not None and 1 <= completed < 30 and completed == len(got),
                  f"cancelled C-GET: {completed} completed, {len(got)} received, fewer than 30")
            total = sum(n or 0 for n in (remaining, completed, failed, warning))
            check(total == 30, f"cancelled C-GET: remaining/completed/failed/warning "
                               f"{remaining}/{completed}/{failed}/{warning} add up to 30")
        check(status_of(assoc.send_c_echo(msg_id=32)) == 0,
              "the association serves a C-ECHO after the cancelled C-GET")
    finally:
        assoc.release()


def section_move(peer, archive, gen, retrieved):
    received = Received()
    scp = peer.ae(SCP_AE)
    for cls, ts in archive.pairs():
        scp.add_supported_context(cls, ts)
    server = scp.start_server(("127.0.0.1", peer.scp_port), block=False,
                              evt_handlers=[(evt.EVT_C_STORE, received.handler)])
    try:
        plan = [(label, {PR_GET: PR_MOVE, SR_GET: SR_MOVE}[model], identifier, expected)
                for label, model, identifier, expected in retrieval_plan(archive, gen)]
        assoc = peer.associate([build_context(PR_MOVE), build_context(SR_MOVE)])
        try:
            for label, model, identifier, expected in plan:
                received.take()
                responses = [s for s, _ in assoc.send_c_move(identifier, SCP_AE, model, msg_id=21)]
                with received.lock:
                    originators = set(received.originators)
                got = received.take()
                check_retrieve(f"C-MOVE {label}", responses, expected, got, retrieved["move"])
                if got:
                    check(originators == {(CALLING, 21)},
                          f"C-MOVE {label}: sub-operations name the move originator "
                          f"{sorted(originators, key=str)}")
            # An unknown destination.
            responses = [s for s, _ in assoc.send_c_move(plan[0][2], "NOWHERE", SR_MOVE)]
            code = status_of(responses[-1]) if responses else None
            check(code == 0xA801, f"C-MOVE to an unknown destination: A801, got {hexs(code)}")
            check(not received.take(), "nothing moved to an unknown destination")
            # Without the level's unique key.
            no_key = query("SERIES", StudyInstanceUID=str(gen.s1[0]))
            responses = [s for s, _ in assoc.send_c_move(no_key, SCP_AE, SR_MOVE)]
            code = status_of(responses[-1]) if responses else None
            check(code is not None and (0xA900 <= code <= 0xA9FF or 0xC000 <= code <= 0xCFFF),
                  f"C-MOVE SERIES without SeriesInstanceUID: failure status, got {hexs(code)}")
        finally:
            assoc.release()
    finally:
        server.shutdown()
    # Both ways of retrieving delivered the same bytes.
    differing = [sop for sop, copies in retrieved["get"].items()
                 if sop in retrieved["move"] and any(c != copies[0] for c in
                                                     copies + retrieved["move"][sop])]
    planned = {s.sop for step in retrieval_plan(archive, gen) for s in step[3]}
    both = set(retrieved["get"]) & set(retrieved["move"])
    check(not differing and both == planned,
          f"C-GET and C-MOVE delivered identical bytes for every instance retrieved "
          f"({len(both)} of {len(planned)} retrieved both ways, {len(differing)} differ)")


# --------------------------------------------------------------------------------------------
# 6. Storage Commitment


def commitment_request(references):
    ds = Dataset()
    ds.TransactionUID = generate_uid()
    items = []
    for cls, sop in references:
        item = Dataset()
        item.ReferencedSOPClassUID = cls
        item.ReferencedSOPInstanceUID = sop
        items.append(item)
    ds.ReferencedSOPSequence = Sequence(items)
    return ds


class Reports:
    def __init__(self):
        self.event = threading.Event()
        self.answered = threading.Event()
        self.reports = []

    def sent(self, event):
        if type(event.message).__name__ == "N_EVENT_REPORT_RSP":
            self.answered.set()

    def handlers(self):
        return [(evt.EVT_N_EVENT_REPORT, self.handler), (evt.EVT_DIMSE_SENT, self.sent)]

    def wait_answered(self):
        """Until the N-EVENT-REPORT-RSP is on its way (then a release cannot overtake it)."""
        ok = self.answered.wait(10)
        time.sleep(0.1)
        return ok

    def handler(self, event):
        req = event.request
        self.reports.append({
            "event_type": req.EventTypeID,
            "class": str(req.AffectedSOPClassUID),
            "instance": str(req.AffectedSOPInstanceUID),
            "info": event.event_information,
            "assoc": event.assoc,
            "requestor": event.assoc.requestor.ae_title,
        })
        self.event.set()
        return 0x0000, None


def references_of(info, keyword):
    out = {}
    for item in info.get(keyword, []) or []:
        out[str(item.ReferencedSOPInstanceUID)] = item
    return out


def section_commitment(peer, archive, gen):
    # The result on the requesting association.
    stored = [(CT, str(d.SOPInstanceUID)) for d in gen.cts] + [(PDF, str(gen.pdf.SOPInstanceUID)),
                                                               (XA, str(gen.xa.SOPInstanceUID))]
    never = (CT, generate_uid())
    conflict = (CT, str(gen.ecg.SOPInstanceUID))  # stored, but as an ECG
    request = commitment_request(stored + [never, conflict])
    reports = Reports()
    assoc = peer.associate([build_context(COMMITMENT)], handlers=reports.handlers())
    try:
        status, _ = assoc.send_n_action(request, 1, COMMITMENT, COMMITMENT_INSTANCE)
        check(status_of(status) == 0x0000, f"N-ACTION request storage commitment: 0000, got "
                                           f"{hexs(status_of(status))}")
        arrived = reports.event.wait(30)
        check(arrived, "N-EVENT-REPORT arrived on the requesting association")
        check(arrived and reports.wait_answered(), "N-EVENT-REPORT answered")
    finally:
        assoc.release()
    if arrived:
        report = reports.reports[0]
        info = report["info"]
        check(report["assoc"] is assoc, "the report came on the requesting association")
        check(report["event_type"] == 2, f"event type 2 (failures), got {report['event_type']}")
        check(report["class"] == COMMITMENT and report["instance"] == COMMITMENT_INSTANCE,
              f"report names the Push Model instance ({report['class']}, {report['instance']})")
        check(info is not None and info.get("TransactionUID") == request.TransactionUID,
              "report carries the request's TransactionUID")
        committed = references_of(info, "ReferencedSOPSequence")
        failed = references_of(info, "FailedSOPSequence")
        check(set(committed) == {sop for _, sop in stored},
              f"the stored instances are committed ({len(committed)} of {len(stored)})")
        for cls, sop in stored:
            item = committed.get(sop)
            check(item is not None and item.ReferencedSOPClassUID == cls,
                  f"committed reference keeps its SOP class {cls}")
        check(set(failed) == {never[1], conflict[1]},
              f"FailedSOPSequence has the never stored and the conflicting instance "
              f"({sorted(failed)})")
        reason = failed.get(never[1], Dataset()).get("FailureReason")
        check(reason == 0x0112, f"never stored: FailureReason 0112, got {reason}")
        reason = failed.get(conflict[1], Dataset()).get("FailureReason")
        check(reason == 0x0119, f"wrong SOP class: FailureReason 0119, got {reason}")

    # The result on a new association to the requester's configured address: one AE both
    # requests (as COMMITSCU) and listens where the server knows COMMITSCU to be; it accepts
    # the server's SCP role for the Push Model on the association the server requests.
    reports = Reports()
    commit_ae = peer.ae(COMMIT_AE)
    commit_ae.add_supported_context(COMMITMENT, [IMPLICIT, EXPLICIT], scu_role=False,
                                    scp_role=True)
    commit_ae.add_requested_context(COMMITMENT)
    listener = commit_ae.start_server(("127.0.0.1", peer.commit_port), block=False,
                                      evt_handlers=reports.handlers())
    try:
        everything = [(s.sop_class, s.sop)
                      for s in archive.where(lambda s: s.patient_id == "KUV-P2")]
        everything += [(SC, str(d.SOPInstanceUID)) for d in gen.many[:10]]
        request = commitment_request(everything)
        assoc = commit_ae.associate(peer.host, peer.port, ae_title=CALLED,
                                    evt_handlers=reports.handlers())
        check(assoc.is_established, f"{COMMIT_AE} associates")
        try:
            status, _ = assoc.send_n_action(request, 1, COMMITMENT, COMMITMENT_INSTANCE)
            check(status_of(status) == 0x0000,
                  f"N-ACTION as {COMMIT_AE}: 0000, got {hexs(status_of(status))}")
            arrived = reports.event.wait(30)
            check(arrived, f"N-EVENT-REPORT arrived for {COMMIT_AE}")
            check(arrived and reports.wait_answered(), "N-EVENT-REPORT answered")
        finally:
            assoc.release()
        if arrived:
            report = reports.reports[0]
            info = report["info"]
            check(report["assoc"] is not assoc and report["requestor"].strip() == CALLED,
                  f"the report came on a new association requested by {CALLED} "
                  f"(requestor {report['requestor']!r})")
            check(report["event_type"] == 1,
                  f"event type 1 (all committed), got {report['event_type']}")
            check(info is not None and info.get("TransactionUID") == request.TransactionUID,
                  "report carries the request's TransactionUID")
            committed = references_of(info, "ReferencedSOPSequence")
            check(set(committed) == {sop for _, sop in everything},
                  f"every instance committed ({len(committed)} of {len(everything)})")
            check(not info.get("FailedSOPSequence"), "no FailedSOPSequence")
            time.sleep(0.2)
            check(len(reports.reports) == 1, f"one report ({len(reports.reports)})")
    finally:
        listener.shutdown()


# --------------------------------------------------------------------------------------------
# 7. WADO-RS bytes equal C-GET bytes


def section_wado(peer, archive, gen, retrieved):
    picks = [archive.instances.get(str(d.SOPInstanceUID))
             for d in (gen.cts[0], gen.xa, gen.ecg, gen.pdf, gen.op, gen.kos)]
    by_ts = {}
    for s in archive.where(lambda s: not s.patient_id.startswith("KUV-")):
        by_ts.setdefault(s.ts, s)
    picks += list(by_ts.values())
    for s in picks:
        if s is None:
            check(False, "a generated instance to fetch over WADO-RS was not stored")
            continue
        url = (f"http://{peer.http}/dicom-web/studies/{s.study}/series/{s.series}"
               f"/instances/{s.sop}")
        request = urllib.request.Request(url, headers={"Accept": "application/dicom"})
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read()
            kind = response.headers.get("Content-Type", "")
        check(kind.startswith("application/dicom"), f"WADO-RS {s.name}: Content-Type {kind!r}")
        ts, data = split_part10(body)
        check(ts == s.ts, f"WADO-RS {s.name}: transfer syntax {ts}, stored {s.ts}")
        via_get = retrieved["get"].get(s.sop, [None])[0]
        check(via_get is not None and data == via_get,
              f"WADO-RS {s.name}: data set bytes equal the C-GET bytes ({len(data)} bytes)")
        check(data == s.data, f"WADO-RS {s.name}: data set bytes equal the bytes sent")


# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# 9. Instance Availability Notification


def section_availability(peer, gen):
    """A subscriber (IANSCP, configured with /notify) hears of a study once the association
    that stored it ends: every series and instance, ONLINE, retrievable from KUVASTO."""
    notes = []
    arrived = threading.Event()

    def handler(event):
        notes.append((str(event.request.AffectedSOPClassUID), event.attribute_list))
        arrived.set()
        return 0x0000, event.attribute_list

    scp = peer.ae(IAN_AE)
    scp.add_supported_context(IAN, [EXPLICIT, IMPLICIT])
    server = scp.start_server(("127.0.0.1", peer.ian_port), block=False,
                              evt_handlers=[(evt.EVT_N_CREATE, handler)])
    try:
        study = (generate_uid(), "20240420", "Availability", "KUV-IAN")
        series = [(generate_uid(), 1), (generate_uid(), 2)]
        objects = [ct(gen.p1, study, series[0], 1), ct(gen.p1, study, series[0], 2),
                   ct(gen.p1, study, series[1], 1)]
        assoc = peer.associate([build_context(CT, [EXPLICIT])])
        try:
            for ds in objects:
                ds.file_meta = pydicom.dataset.FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = EXPLICIT
                code = status_of(assoc.send_c_store(ds))
                check(code == 0x0000, f"C-STORE for the notification: 0000, got {hexs(code)}")
        finally:
            assoc.release()
        deadline = time.monotonic() + 20
        mine = None
        while time.monotonic() < deadline and mine is None:
            arrived.wait(0.5)
            arrived.clear()
            for sop_class, ds in list(notes):
                if ds is not None and str(ds.get("StudyInstanceUID", "")) == study[0]:
                    mine = (sop_class, ds)
        if not check(mine is not None, "an N-CREATE for the stored study arrived"):
            return
        sop_class, ds = mine
        check(sop_class == IAN, f"N-CREATE of the Instance Availability Notification class "
                                f"({sop_class})")
        check("ReferencedPerformedProcedureStepSequence" in ds,
              "ReferencedPerformedProcedureStepSequence present (type 2)")
        got = {}
        for item in ds.get("ReferencedSeriesSequence", []) or []:
            got[str(item.SeriesInstanceUID)] = {
                str(sop.ReferencedSOPInstanceUID): sop for sop in item.ReferencedSOPSequence}
        expected = {}
        for obj in objects:
            expected.setdefault(str(obj.SeriesInstanceUID), set()).add(str(obj.SOPInstanceUID))
        check({k: set(v) for k, v in got.items()} == expected,
              "every series and instance of the study listed, nothing else")
        for sops in got.values():
            for sop in sops.values():
                check(sop.InstanceAvailability == "ONLINE"
                      and sop.RetrieveAETitle == CALLED
                      and str(sop.ReferencedSOPClassUID) == CT,
                      f"{sop.ReferencedSOPInstanceUID}: ONLINE, retrievable from {CALLED}, CT")

        # A study stored with STOW-RS is announced too.
        web_study = (generate_uid(), "20240421", "Availability over HTTP", "KUV-IAN2")
        web = ct(gen.p1, web_study, (generate_uid(), 1), 1)
        part, _ = part10(web, EXPLICIT)
        boundary = "KUVASTO-IAN"
        body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part
                + f"\r\n--{boundary}--\r\n".encode())
        request = urllib.request.Request(
            f"http://{peer.http}/dicom-web/studies", data=body, method="POST",
            headers={"Content-Type": f'multipart/related; type="application/dicom"; '
                                     f'boundary={boundary}',
                     "Accept": "application/dicom+json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            check(response.status == 200, f"STOW-RS of one CT: 200, got {response.status}")
        deadline = time.monotonic() + 20
        announced = None
        while time.monotonic() < deadline and announced is None:
            arrived.wait(0.5)
            arrived.clear()
            for _, ds in list(notes):
                if ds is not None and str(ds.get("StudyInstanceUID", "")) == web_study[0]:
                    announced = ds
        sops = set()
        for item in (announced.get("ReferencedSeriesSequence", []) if announced else []) or []:
            sops |= {str(sop.ReferencedSOPInstanceUID) for sop in item.ReferencedSOPSequence}
        check(sops == {str(web.SOPInstanceUID)},
              "the study stored with STOW-RS was announced with its instance")
    finally:
        server.shutdown()


def main():
    global check
    parser = argparse.ArgumentParser()
    parser.add_argument("--dimse", required=True, help="HOST:PORT of the server's DIMSE listener")
    parser.add_argument("--http", required=True, help="HOST:PORT of the server's HTTP listener")
    parser.add_argument("--scp-port", type=int, required=True,
                        help=f"port of this suite's storage SCP ({SCP_AE})")
    parser.add_argument("--commit-port", type=int, required=True,
                        help=f"port this suite listens on as {COMMIT_AE}")
    parser.add_argument("--ian-port", type=int, required=True,
                        help=f"port this suite listens on as {IAN_AE}")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if args.verbose else logging.CRITICAL)
    if args.verbose:
        logging.basicConfig()
        logging.getLogger("pynetdicom").setLevel(logging.INFO)
    check = Checks(args.verbose)
    started = time.monotonic()
    peer = Peer(args)
    archive = Archive()
    gen = Generated()
    summary = {}
    retrieved = {"get": {}, "move": {}}
    with tempfile.TemporaryDirectory() as workdir:
        check.run("C-ECHO", section_echo, peer)
        check.run("C-STORE pydicom samples", section_store_samples, peer, archive, summary)
        check.run("C-STORE generated objects and refusals", section_store_generated, peer,
                  archive, gen, Path(workdir))
    check.run("C-FIND", section_find, peer, archive, gen)
    check.run("C-FIND with C-CANCEL", section_find_cancel, peer, gen)
    check.run("C-GET", section_get, peer, archive, gen, retrieved)
    check.run("C-GET with C-CANCEL", section_get_cancel, peer, gen)
    check.run("C-MOVE", section_move, peer, archive, gen, retrieved)
    check.run("Storage Commitment", section_commitment, peer, archive, gen)
    check.run("WADO-RS bytes", section_wado, peer, archive, gen, retrieved)
    check.run("Instance Availability Notification", section_availability, peer, gen)

    print("\nsection                                   passed failed")
    for name, (ok, bad) in check.sections.items():
        print(f"  {name:40} {ok:6} {bad:6}")
    if check.failed:
        print(f"\n{len(check.failed)} FAILED:")
        for line in check.failed:
            print(f"  {line}")
    summary.update({
        "checks": check.passed + len(check.failed),
        "passed": check.passed,
        "failed": len(check.failed),
        "instances": len(archive.instances),
        "sop_classes": len({s.sop_class for s in archive.instances.values()}),
        "transfer_syntaxes": sorted({s.ts for s in archive.instances.values()}),
        "seconds": round(time.monotonic() - started, 1),
    })
    print(json.dumps(summary), flush=True)
    sys.exit(1 if check.failed else 0)


if __name__ == "__main__":
    main()
