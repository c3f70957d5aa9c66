"""Drives a running Kuvasto server with the `dicomweb-client` package (a client nobody here
wrote): store, search at every level, retrieve instances / metadata / frames / bulk data,
delete. Exits non-zero on the first failed expectation; prints a JSON summary last.

Usage: dicomweb_suite.py --url http://127.0.0.1:PORT/dicom-web FILE...
"""
import argparse
import io
import json
import sys

import pydicom
from dicomweb_client.api import DICOMwebClient
from requests.exceptions import HTTPError


def value(item, tag):
    element = item.get(tag, {})
    values = element.get("Value", [])
    return values[0] if values else None


def expect(condition, message):
    if not condition:
        print(f"FAILED: {message}", file=sys.stderr)
        sys.exit(1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    client = DICOMwebClient(url=args.url)
    summary = {"stored": 0, "refused": [], "unreadable": 0, "frames_checked": 0,
               "native_frames_compared": 0, "bulkdata_checked": 0, "sop_classes": set(),
               "transfer_syntaxes": set()}
    stored = []
    for path in args.files:
        try:
            ds = pydicom.dcmread(path)
            ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPClassUID
            ds.file_meta.TransferSyntaxUID
        except Exception:
            summary["unreadable"] += 1  # pydicom itself cannot send it
            continue
        try:
            response = client.store_instances(datasets=[ds])
        except HTTPError as e:
            summary["refused"].append([path.rsplit("/", 1)[-1], e.response.status_code,
                                       e.response.headers.get("Warning", "")])
            continue
        except Exception as e:  # the client could not encode it
            summary["refused"].append([path.rsplit("/", 1)[-1], "client", str(e)[:120]])
            continue
        referenced = response.get("ReferencedSOPSequence", [])
        expect(len(referenced) == 1 and referenced[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID,
               f"{path}: the store response references the instance")
        stored.append((path, ds))
        summary["stored"] += 1
        summary["sop_classes"].add(str(ds.SOPClassUID))
        summary["transfer_syntaxes"].add(str(ds.file_meta.TransferSyntaxUID))

    expect(stored, "something was stored")
    for path, ds in stored:
        study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        # Search at every level.
        studies = client.search_for_studies(search_filters={"StudyInstanceUID": study})
        expect(len(studies) == 1 and value(studies[0], "0020000D") == study, f"{path}: study found")
        expect(int(value(studies[0], "00201208")) >= 1, f"{path}: study counts instances")
        all_series = client.search_for_series(study_instance_uid=study)
        expect(any(value(s, "0020000E") == series for s in all_series), f"{path}: series found")
        instances = client.search_for_instances(study_instance_uid=study, series_instance_uid=series)
        expect(any(value(i, "00080018") == sop for i in instances), f"{path}: instance found")
        if ds.get("PatientID"):
            by_patient = client.search_for_studies(search_filters={"PatientID": ds.PatientID})
            expect(any(value(s, "0020000D") == study for s in by_patient), f"{path}: by PatientID")
        # Retrieve: the instance comes back equal to what was stored.
        got = client.retrieve_instance(study, series, sop)
        expect(got.SOPInstanceUID == sop, f"{path}: retrieved the right instance")
        # The client sent pydicom.dcmwrite(ds); what comes back must read the same.
        sent = io.BytesIO()
        pydicom.dcmwrite(sent, ds)
        sent = pydicom.dcmread(io.BytesIO(sent.getvalue()))
        expect(got == sent, f"{path}: retrieved data set equals the one sent")
        if "PixelData" in ds:
            expect(got.PixelData == sent.PixelData, f"{path}: pixel data equal")
        # Metadata, with a BulkDataURI for Pixel Data.
        metadata = client.retrieve_instance_metadata(study, series, sop)
        expect(value(metadata, "00080018") == sop, f"{path}: metadata names the instance")
        deflated = ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1.99"
        if "PixelData" in ds and not deflated:
            pixel = metadata.get("7FE00010", {})
            uri = pixel.get("BulkDataURI")
            expect(uri, f"{path}: Pixel Data has a BulkDataURI")
            if ds.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1"):
                bulk = client.retrieve_bulkdata(uri)
                expect(bulk[0] == ds.PixelData, f"{path}: Pixel Data bulk data equals the value")
                summary["bulkdata_checked"] += 1
            # Frames.
            frames = client.retrieve_instance_frames(study, series, sop, frame_numbers=[1])
            expect(len(frames) == 1 and len(frames[0]) > 0, f"{path}: frame 1 retrieved")
            summary["frames_checked"] += 1
            rows, columns = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
            bits, samples = int(ds.get("BitsAllocated", 0)), int(ds.get("SamplesPerPixel", 1))
            native = not ds.file_meta.TransferSyntaxUID.is_compressed
            if native and bits >= 8 and ds.file_meta.TransferSyntaxUID != "1.2.840.10008.1.2.2":
                frame_len = rows * columns * samples * bits // 8
                if ds.get("PhotometricInterpretation", "") in ("YBR_FULL_422",):
                    frame_len = frame_len * 2 // 3
                expect(frames[0] == ds.PixelData[:frame_len], f"{path}: frame 1 bytes equal")
                summary["native_frames_compared"] += 1

    # Study- and series-level retrieval and metadata of the first study.
    path, ds = stored[0]
    datasets = client.retrieve_study(ds.StudyInstanceUID)
    expect(any(d.SOPInstanceUID == ds.SOPInstanceUID for d in datasets), "study retrieval")
    series_md = client.retrieve_series_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID)
    expect(any(value(m, "00080018") == ds.SOPInstanceUID for m in series_md), "series metadata")
    study_md = client.retrieve_study_metadata(ds.StudyInstanceUID)
    expect(len(study_md) >= 1, "study metadata")

    # Paging, wildcards, fuzzy matching, includefield.
    # Identical re-sends (pydicom ships byte-identical variants) are stored once.
    unique = len({str(d.SOPInstanceUID) for _, d in stored})
    everything = client.search_for_instances(limit=100000)
    expect(len(everything) == unique, f"all {unique} instances listed, got {len(everything)}")
    page = client.search_for_instances(limit=3, offset=2)
    expect(len(page) == min(3, max(0, unique - 2)), "limit and offset")
    named = [d for _, d in stored if str(d.get("PatientName", ""))]
    if named:
        name = str(named[0].PatientName)
        prefix = name[:2] + "*"
        hits = client.search_for_studies(search_filters={"PatientName": prefix})
        expect(any(value(h, "0020000D") == named[0].StudyInstanceUID for h in hits), "PN wildcard")
        lower = name.split("^")[0][:3].lower()
        if lower:
            fuzzy = client.search_for_studies(search_filters={"PatientName": lower}, fuzzymatching=True)
            expect(any(value(h, "0020000D") == named[0].StudyInstanceUID for h in fuzzy), "fuzzy PN")
    with_fields = client.search_for_studies(fields=["all"], limit=1)
    expect(len(with_fields) == 1, "includefield=all")

    # Delete one instance: gone from searches and retrieval.
    path, ds = stored[-1]
    client.delete_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    left = client.search_for_instances(search_filters={"SOPInstanceUID": ds.SOPInstanceUID})
    expect(len(left) == 0, "deleted instance is not found")
    try:
        client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        expect(False, "retrieving a deleted instance fails")
    except HTTPError as e:
        expect(e.response.status_code == 404, "deleted instance: 404")

    summary["sop_classes"] = sorted(summary["sop_classes"])
    summary["transfer_syntaxes"] = sorted(summary["transfer_syntaxes"])
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
