#!/usr/bin/env bash
# Install the peer tools medhub's overhead benchmark compares against, and make its data.
#
# usage: bench/setup_peers.sh [WORK_DIR]        (default /work/peer-bench-work)
#
# Idempotent: every step checks whether its result is already there and skips itself.
# Everything goes under WORK_DIR (outside the repository; never commit it):
#   venv-modern/   dcmqi (itkimage2segimage), plastimatch (PyPI build, the one MHub's numbers use),
#                  highdicom (the SEG peer), rt-utils (the RTSTRUCT peer),
#                  pydicom 3 + SimpleITK + scipy for ../shared/peer-bench/make_data.py
#   venv-legacy/   thedicomsort (MHub's sorter; it pins pydicom<3, hence its own venv)
#   data/          unsorted300 (420 files), series/ct300, labels/label300.nii.gz, meta.json, uids.txt
# plus, system wide through apt: plastimatch, dcm2niix (+ pigz), dicom3tools (dciodvfy), time.
#
# Peer versions are pinned to the ones ../shared/peer-bench/RESULTS_SNAPSHOT.md measured, so
# figures stay comparable with DESIGN.md's table.
set -euo pipefail

WORK="${1:-/work/peer-bench-work}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PEER_BENCH="${PEER_BENCH:-$(cd "$HERE/../.." && pwd)/shared/peer-bench}"
PY="${PYTHON:-python3}"

log() { printf '[setup_peers] %s\n' "$*"; }

if [ ! -f "$PEER_BENCH/make_data.py" ]; then
    echo "setup_peers: $PEER_BENCH/make_data.py not found (set PEER_BENCH=/path/to/shared/peer-bench)" >&2
    exit 2
fi
mkdir -p "$WORK"

# --- system packages -------------------------------------------------------------------
need_apt=()
for pair in plastimatch:/usr/bin/plastimatch dcm2niix:/usr/bin/dcm2niix \
            dicom3tools:/usr/bin/dciodvfy time:/usr/bin/time pigz:/usr/bin/pigz; do
    pkg="${pair%%:*}"; bin="${pair#*:}"
    [ -x "$bin" ] || need_apt+=("$pkg")
done
if [ "${#need_apt[@]}" -gt 0 ]; then
    log "apt-get install ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
else
    log "apt packages present"
fi

# --- venvs -------------------------------------------------------------------------------
make_venv() {  # make_venv DIR MARKER_EXECUTABLE PACKAGE...
    local dir="$1" marker="$2"; shift 2
    if [ -x "$dir/bin/$marker" ]; then
        log "$(basename "$dir") present"
        return
    fi
    log "creating $(basename "$dir"): $*"
    "$PY" -m venv "$dir"
    "$dir/bin/pip" install -q -U pip
    "$dir/bin/pip" install -q "$@"
}

make_venv "$WORK/venv-modern" itkimage2segimage \
    "pydicom==3.0.2" "highdicom==0.28.2" nibabel numpy scipy SimpleITK \
    "dcmqi==1.5.7" "plastimatch==1.10.0" "rt-utils==1.2.7"
make_venv "$WORK/venv-legacy" dicomsort "thedicomsort==1.0.1"
# rt-utils (the RTSTRUCT peer) came later: add it to a venv-modern made before it.
if ! "$WORK/venv-modern/bin/python" -c 'import rt_utils' 2>/dev/null; then
    log "adding rt-utils to venv-modern"
    "$WORK/venv-modern/bin/pip" install -q "rt-utils==1.2.7"
fi

# --- data -----------------------------------------------------------------------------------
DATA="$WORK/data"
n_unsorted=$(find "$DATA/unsorted300" -maxdepth 1 -type f 2>/dev/null | wc -l || true)
if [ "$n_unsorted" -eq 420 ] && [ -f "$DATA/labels/label300.nii.gz" ] && [ -f "$DATA/uids.txt" ]; then
    log "data present ($n_unsorted files in unsorted300)"
else
    log "making data with $PEER_BENCH/make_data.py (about 15-30 s)"
    DATA="$DATA" "$WORK/venv-modern/bin/python" "$PEER_BENCH/make_data.py"
fi
if [ ! -f "$DATA/meta.json" ]; then
    "$WORK/venv-modern/bin/python" "$PEER_BENCH/tools/make_meta.py" "$DATA/meta.json"
fi

log "versions:"
{
    /usr/bin/plastimatch --version 2>&1 | head -1 | sed 's/^/  apt: /'
    /usr/bin/dcm2niix --version 2>&1 | grep -m1 -i version | sed 's/^/  apt: /' || true
    "$WORK/venv-modern/bin/pip" list 2>/dev/null | grep -Ei '^(dcmqi|plastimatch|pydicom|highdicom|simpleitk|rt-utils) ' | sed 's/^/  venv-modern: /'
    "$WORK/venv-legacy/bin/pip" list 2>/dev/null | grep -Ei '^(thedicomsort|pydicom) ' | sed 's/^/  venv-legacy: /'
} || true
log "done: WORK=$WORK"
