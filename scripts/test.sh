#!/usr/bin/env bash
# Runs Kuvasto's whole test suite, installing what it needs first (rustfmt/clippy if missing,
# pydicom in .venv for its sample files, cargo-fuzz). CI (.ci/run) calls this.
#
#   FUZZ_SECONDS          seconds per fuzz target (default 60; 0 skips fuzzing)
#   KUVASTO_CRASH_CYCLES  kill -9 cycles of the crash test (default 15)
#   KUVASTO_MODEL_CASES   proptest cases of the model test (default 400)
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
mkdir -p target
step() { printf '\n==> %s\n' "$*"; }

step "toolchain components (rustfmt, clippy)"
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
fi

step "format"
cargo fmt --all -- --check
(cd fuzz && cargo fmt -- --check)

step "lint"
cargo clippy --workspace --all-targets -- -D warnings

step "system test dependencies (curl, jq and dcmtk: clients the server tests drive it with)"
if ! command -v curl >/dev/null 2>&1 || ! command -v jq >/dev/null 2>&1 || [ ! -x /usr/bin/echoscu ]; then
    apt-get update -qq && apt-get install -y -qq curl jq dcmtk
fi

step "python test dependencies (.venv: pydicom and its sample files, dicomweb-client, pynetdicom)"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check "pydicom>=3,<4" "dicomweb-client>=0.59,<1" "pynetdicom>=3,<4" "requests>=2,<3"
export KUVASTO_REQUIRE_SAMPLES=1

step "tests: unit, property, fault injection, kill -9, DICOM differential"
cargo test --workspace 2>&1 | tee target/test.log
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' target/test.log | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '([0-9]+) failed' target/test.log | awk '{s+=$1} END {print s+0}')

step "benches, one iteration each (they must keep working; figures come from full runs)"
cargo bench -p kuvasto-benches -- --test

if [ "$FUZZ_SECONDS" -gt 0 ]; then
    step "fuzzing every target for ${FUZZ_SECONDS}s"
    if ! cargo fuzz --version >/dev/null 2>&1; then
        cargo install cargo-fuzz --locked
    fi
    # Seeds: real segment files (sealed and unsealed) written by the engine.
    for target in $(cargo fuzz list); do
        cargo run -q -p kuvasto-tests --bin make_fuzz_seeds -- "fuzz/corpus/$target"
    done
    # DICOM seeds: pydicom's sample files (installed into .venv above).
    for target in extract_dicom differential_extract; do
        mkdir -p "fuzz/corpus/$target"
        cp .venv/lib/python3*/site-packages/pydicom/data/test_files/*.dcm "fuzz/corpus/$target/"
    done
    for target in $(cargo fuzz list); do
        step "fuzz $target"
        # Extraction must stay within its configured bounds: tight memory limits there.
        case "$target" in
            extract_dicom) limits="-rss_limit_mb=256 -malloc_limit_mb=64" ;;
            *) limits="-rss_limit_mb=2048" ;;
        esac
        # AddressSanitizer needs unstable flags; RUSTC_BOOTSTRAP lets the stable compiler take them.
        # shellcheck disable=SC2086 # $limits is two flags
        RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- \
            -max_total_time="$FUZZ_SECONDS" $limits -max_len=131072 -print_final_stats=1
    done
fi

step "summary"
echo "tests: ${passed} passed, ${failed} failed"
