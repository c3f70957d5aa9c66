#!/usr/bin/env bash
# A walkthrough of Kuvasto's national profile: an imaging company stores a study for a
# wellbeing services county under a purchased-service authorization, the radiologist's report
# arrives, the patient sees it all in the portal, and the operator exports the audit records.
#
# Start the server with the example configuration first, then run this in a second terminal:
#
#   cargo run --release -p kuvasto-server -- serve --config docs/examples/national.toml
#   bash docs/examples/walkthrough.sh
#
# Needs curl, jq and dcmtk (dump2dcm, storescu). KUVASTO_HTTP (DICOMweb and /api) and
# KUVASTO_DIMSE name the server's addresses. Every run uses new UIDs and OIDs, so the script
# can run again and again against the same server. It stops with a message at the first
# answer that is not what the national profile promises.
set -euo pipefail

HTTP="${KUVASTO_HTTP:-127.0.0.1:8080}"
DIMSE="${KUVASTO_DIMSE:-127.0.0.1:11112}"
BASE="http://$HTTP"

# Organisations and bearer tokens of docs/examples/national.toml.
COUNTY=1.2.246.10.1001      # Testimaan hyvinvointialue: the register's controller
KUVANTAMO=1.2.246.10.2002   # Kuvantamo Oy: the private imaging company
COUNTY_TOKEN=county-pacs-example-token
KUVANTAMO_TOKEN=kuvantamo-example-token
CLINIC_TOKEN=clinic-pacs-example-token
PORTAL_TOKEN=portal-example-token-0001
REGISTRY_TOKEN=registry-example-token-01
OPERATOR_TOKEN=operator-example-token-01
PATIENT=131052-308T         # a valid (made-up) Finnish personal identity code

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

step() { printf '\n== %s\n' "$*"; }
fail() { echo "walkthrough FAILED: $*" >&2; exit 1; }

# call METHOD PATH TOKEN [curl options...]: the answer's body goes to $TMP/body, its headers
# to $TMP/headers; prints the HTTP status code.
call() {
    local method=$1 path=$2 token=$3
    shift 3
    : > "$TMP/body"
    curl -sS -m 60 -X "$method" -o "$TMP/body" -D "$TMP/headers" -w '%{http_code}' \
        -H "Authorization: Bearer $token" "$@" "$BASE$path" || true
}
# expect WANT GOT WHAT: stops unless the status code is the expected one.
expect() {
    [ "$2" = "$1" ] || fail "$3: HTTP $2, expected $1: $(head -c 600 "$TMP/body")"
}

# Unique per run: the service event (an OID of the county), document ids, DICOM UIDs.
RUN=$(date +%s%N)
SERVICE_EVENT="1.2.246.10.1001.99.$RUN"
REQUEST_ID="1.2.246.10.1001.88.$RUN.1"
REPORT_ID="1.2.246.10.1001.88.$RUN.2"
ACCESSION="A${RUN: -15}"   # a DICOM SH holds 16 characters
uid() { echo "2.25.$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')"; }
STUDY=$(uid)
SERIES=$(uid)

step "1. Waiting for Kuvasto at $HTTP (DICOMweb, /api) and $DIMSE (DIMSE)"
for _ in $(seq 30); do
    code=$(curl -s -m 2 -o /dev/null -w '%{http_code}' "$BASE/api/authorizations" || true)
    [ "$code" != 000 ] && break
    sleep 1
done
[ "$code" != 000 ] || fail "no answer from http://$HTTP in 30 s: start the server with
  kuvasto serve --config docs/examples/national.toml   (or set KUVASTO_HTTP)"
code=$(call GET /api/authorizations "$COUNTY_TOKEN")
[ "$code" = 200 ] || fail "the county's token gets HTTP $code: is the server running with docs/examples/national.toml?"
/usr/bin/echoscu -aet KUVANTAMO -aec KUVASTO "${DIMSE%:*}" "${DIMSE##*:}" \
    || fail "no C-ECHO answer at $DIMSE (set KUVASTO_DIMSE)"
echo "server is up: DICOMweb, /api and DIMSE answer"
# A run before this one left its authorization in force; revoke it so that step 3 shows the
# refusal again (its reason now names the revoked authorization).
for id in $(jq -r --arg k "$KUVANTAMO" '.[] | select(.producer == $k and .revoked == null) | .id' "$TMP/body"); do
    expect 200 "$(call POST "/api/authorizations/$id/revoke" "$COUNTY_TOKEN")" "revoking an earlier run's authorization"
    echo "revoked authorization $id left by an earlier run"
done

# document KIND ID [PDF FILE]: a FHIR DocumentReference of the patient data repository, in the
# county's register, authored by the county, tied to the service event.
document() {
    jq -n --arg kind "$1" --arg id "$2" --arg patient "$PATIENT" --arg county "$COUNTY" \
        --arg event "$SERVICE_EVENT" --arg accession "$ACCESSION" \
        --arg data "$([ $# -gt 2 ] && base64 -w0 "$3" || true)" '{
      resourceType: "DocumentReference",
      masterIdentifier: {system: "urn:ietf:rfc:3986", value: "urn:oid:\($id)"},
      status: "current",
      type: {coding: [{system: "urn:kuvasto:document-type", code: $kind}]},
      subject: {identifier: {system: "urn:oid:1.2.246.21", value: $patient}},
      date: (now | strftime("%Y-%m-%dT%H:%M:%SZ")),
      author: [{identifier: {value: "urn:oid:\($county)"}}],
      custodian: {identifier: {value: "urn:oid:\($county)"}},
      context: {related: [
        {identifier: {system: "urn:kuvasto:service-event", value: "urn:oid:\($event)"}},
        {identifier: {system: "urn:kuvasto:accession-number", value: $accession}}]}
    } + if $data == "" then {} else
        {content: [{attachment: {contentType: "application/pdf", data: $data}}]} end'
}

step "2. The patient data repository announces the request for service event $SERVICE_EVENT"
document request "$REQUEST_ID" > "$TMP/request.json"
code=$(call POST /api/documents "$REGISTRY_TOKEN" -H 'Content-Type: application/json' --data-binary @"$TMP/request.json")
expect 201 "$code" "announcing the request"
jq -c '{id, released}' "$TMP/body"

# The study: two CT instances written by dump2dcm from a text dump (explicit VR little endian,
# 8x8 16-bit pixels). The examination code NA1AA starts the StudyDescription; the service
# event travels in (0040,2016) Placer Order Number / Imaging Service Request.
PIXELS=$(for i in $(seq 0 63); do printf '%04x\\' $((i * 64)); done)
make_instance() { # make_instance NUMBER FILE
    local sop
    sop=$(uid)
    cat > "$TMP/ct.dump" <<EOF
(0008,0005) CS [ISO_IR 192]
(0008,0016) UI =CTImageStorage
(0008,0018) UI [$sop]
(0008,0020) DA [$(date +%Y%m%d)]
(0008,0030) TM [$(date +%H%M%S)]
(0008,0050) SH [$ACCESSION]
(0008,0060) CS [CT]
(0008,1030) LO [NA1AA Kaularangan röntgentutkimus]
(0010,0010) PN [Testinen^Potilas]
(0010,0020) LO [$PATIENT]
(0020,000d) UI [$STUDY]
(0020,000e) UI [$SERIES]
(0020,0011) IS [1]
(0020,0013) IS [$1]
(0028,0002) US 1
(0028,0004) CS [MONOCHROME2]
(0028,0010) US 8
(0028,0011) US 8
(0028,0100) US 16
(0028,0101) US 12
(0028,0102) US 11
(0028,0103) US 0
(0040,2016) LO [$SERVICE_EVENT]
(7fe0,0010) OW ${PIXELS%\\}
EOF
    dump2dcm --write-xfer-little "$TMP/ct.dump" "$2" || fail "dump2dcm could not write $2"
}
make_instance 1 "$TMP/ct1.dcm"
make_instance 2 "$TMP/ct2.dcm"

# stow TOKEN FILE: STOW-RS of one instance in a multipart/related body.
stow() {
    { printf -- '--KUVASTO\r\nContent-Type: application/dicom\r\n\r\n'
      cat "$2"
      printf -- '\r\n--KUVASTO--\r\n'; } > "$TMP/stow.body"
    call POST /dicom-web/studies "$1" --data-binary @"$TMP/stow.body" \
        -H 'Content-Type: multipart/related; type="application/dicom"; boundary=KUVASTO' \
        -H 'Accept: application/dicom+json'
}

step "3. Kuvantamo Oy stores the study before it holds an authorization"
code=$(stow "$KUVANTAMO_TOKEN" "$TMP/ct1.dcm")
expect 409 "$code" "a store without an authorization"
reason=$(jq -r '."00081198".Value[0]."00081197".Value[0]' "$TMP/body")
[ "$reason" = 292 ] || fail "FailureReason $reason, expected 292 (0x0124, not authorized): $(tr -d '\r' < "$TMP/headers" | grep -i '^warning:')"
echo "refused: FailureReason 0x0124"
grep -i '^Warning:' "$TMP/headers" | tr -d '\r' | sed 's/^[^:]*: /reason: /' \
    || fail "no Warning header giving the reason"

step "4. The county authorizes Kuvantamo Oy to read and write its register for one year"
jq -n --arg county "$COUNTY" --arg kuvantamo "$KUVANTAMO" \
    --arg until "$(date -u -d '+1 year' +%Y-%m-%dT%H:%M:%SZ)" \
    '{register: $county, producer: $kuvantamo, read: true, write: true, valid_until: $until}' \
    > "$TMP/authorization.json"
code=$(call POST /api/authorizations "$COUNTY_TOKEN" -H 'Content-Type: application/json' --data-binary @"$TMP/authorization.json")
expect 201 "$code" "creating the authorization"
jq -c '{id, register, producer, read, write, valid_from, valid_until}' "$TMP/body"

step "5a. Kuvantamo Oy stores instance 1 over DICOMweb (STOW-RS)"
code=$(stow "$KUVANTAMO_TOKEN" "$TMP/ct1.dcm")
expect 200 "$code" "STOW-RS under the authorization"
echo "stored: $(jq -r '."00081199".Value | length' "$TMP/body") instance(s), study $STUDY"

step "5b. Kuvantamo Oy stores instance 2 over DIMSE (storescu, AE title KUVANTAMO)"
# storescu exits non-zero unless the C-STORE response is a success; -v logs that response.
if TCP_NODELAY=1 /usr/bin/storescu -v -aet KUVANTAMO -aec KUVASTO "${DIMSE%:*}" "${DIMSE##*:}" \
    "$TMP/ct2.dcm" > "$TMP/storescu.log" 2>&1; then
    grep 'Store Response' "$TMP/storescu.log"
else
    cat "$TMP/storescu.log" >&2
    fail "storescu: the C-STORE was not a success"
fi

step "6. The radiologist's report arrives from the patient data repository, with a PDF"
printf '%%PDF-1.4\n%% Kuvasto walkthrough report: no findings.\n%%%%EOF\n' > "$TMP/report.pdf"
document report "$REPORT_ID" "$TMP/report.pdf" > "$TMP/report.json"
code=$(call POST /api/documents "$REGISTRY_TOKEN" -H 'Content-Type: application/json' --data-binary @"$TMP/report.json")
expect 201 "$code" "announcing the report"
jq -c '{id}' "$TMP/body"

step "7. The patient opens the portal: their studies, documents and who accessed the data"
code=$(call GET "/api/patients/$PATIENT/view" "$PORTAL_TOKEN" -H "X-On-Behalf-Of: $PATIENT")
expect 200 "$code" "the patient view"
jq -e --arg s "$STUDY" '[.studies[] | select(.study == $s)] | length == 1' "$TMP/body" > /dev/null \
    || fail "the patient view does not list study $STUDY"
jq -r --arg s "$STUDY" '
  "studies of the patient: \(.studies | length); the one stored now:",
  (.studies[] | select(.study == $s) |
    "  \(.date)  \(.modalities)  \(.examination_code) \(.examination_name)",
    "  made by \(.organisation_name), register \(.register)",
    (.documents[] | "    document: \(.kind) \(.status) \(.time) content: \(.has_content)")),
  "accesses to this study:",
  (.accesses[] | select(.study == $s) | "  \(.time)  \(.organisation_name)  \(.action) (\(.outcome))")
' "$TMP/body"
kinds=$(jq -r --arg s "$STUDY" '[.studies[] | select(.study == $s) | .documents[].kind] | sort | join(",")' "$TMP/body")
[ "$kinds" = "report,request" ] || fail "the study's documents are [$kinds], expected request and report"
code=$(call GET "/api/documents/$REPORT_ID/content" "$PORTAL_TOKEN" -H "X-On-Behalf-Of: $PATIENT")
expect 200 "$code" "the report's PDF for the patient"
cmp -s "$TMP/body" "$TMP/report.pdf" || fail "the report's PDF came back changed"
echo "the patient opens the report: $(wc -c < "$TMP/body") bytes of PDF, as sent"

step "8. The county finds the study with QIDO-RS; another organisation does not"
qido() { call GET "/dicom-web/studies?StudyInstanceUID=$STUDY" "$1" -H 'Accept: application/dicom+json'; }
code=$(qido "$COUNTY_TOKEN")
expect 200 "$code" "the county's QIDO-RS"
jq -r '.[] | "county: study \(."0020000D".Value[0]), \(."00201208".Value[0]) instances, \(."00081030".Value[0])"' "$TMP/body"
[ "$(jq length "$TMP/body")" = 1 ] || fail "the county's search found $(jq length "$TMP/body") studies, expected 1"
code=$(qido "$CLINIC_TOKEN")
[ "$code" = 200 ] || [ "$code" = 204 ] || fail "the clinic's QIDO-RS: HTTP $code"
hits=$(jq -s 'if length == 0 then 0 else .[0] | length end' "$TMP/body")
echo "Muu Klinikka Oy: $hits results"
[ "$hits" = 0 ] || fail "another organisation found the study"

step "9. The operator exports the study's audit records"
code=$(call GET "/api/audit?study=$STUDY" "$OPERATOR_TOKEN")
expect 200 "$code" "the audit export (JSON lines)"
jq -r '"  \(.time_unix_ms / 1000 | todate)  \(.system)  \(.protocol)  \(.action)  \(.outcome)"' "$TMP/body"
# The refused attempt and the two stores, and the county's search that found the study
# (a search is recorded against the study when all its hits are that study's).
stores=$(jq -rs '[.[] | .action + "/" + .outcome] | sort | join(",")' "$TMP/body")
[ "$stores" = "search/success,store-refused/refused,store/success,store/success" ] \
    || fail "the study's audit records are [$stores], expected a search, one refused store and two stores"
code=$(call GET "/api/audit?study=$STUDY&format=dicom&limit=1" "$OPERATOR_TOKEN")
expect 200 "$code" "the audit export (DICOM audit messages)"
grep -q '<AuditMessage>' "$TMP/body" || fail "no DICOM audit message in the export"
echo "first DICOM audit message: $(head -c 400 "$TMP/body")..."

echo
echo "walkthrough finished: OK"
