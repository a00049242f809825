#!/usr/bin/env bash
# The workers' CUDA path, checked on a GPU machine in one short run:
#   1. what the machine is (GPU, driver, torch, bubblewrap, prlimit);
#   2. tests/workers/test_gpu.py: CUDA model hosts under bubblewrap and as plain children, each
#      format, GPU out-of-memory, and a GPU worker (-Q gpu, MM_WORKER_DEVICE=cuda) validating and
#      serving a version through the API;
#   3. bench/runtime.py --quick --device cuda (cold start and warm overhead on the GPU);
#   4. the end-to-end suites of tests/workers and tests/inference with validations and
#      predictions routed to a second worker on the GPU (time permitting);
#   5. bench/runtime.py --quick on the CPU of the same machine (time permitting).
#
# Usage, from the repository root:  OUT=/tmp/check bash bench/device_check.sh [SECONDS]
# SECONDS (default 420) bounds the whole run; later steps are skipped when too little is left.
# The machine needs python3 with torch; the project's other packages come from .devicekit/whl
# (cp312 wheels) and bubblewrap from .devicekit/bubblewrap_*.deb when they are there.
set -u
BUDGET=${1:-420}
OUT=${OUT:-/tmp/mm-device-check}
KIT=${KIT:-.devicekit}
STARTED=$(date +%s)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

left() { echo $((BUDGET - ($(date +%s) - STARTED))); }

# step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, print its tail.
step() {
    local name=$1 limit=$2
    shift 2
    local begun=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $(($(date +%s) - begun)) s (limit $limit s)"
    tail -n "${TAIL:-12}" "$OUT/$name.log" | cut -c1-220
    return $rc
}

if [ -d "$KIT/whl" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/mm-site "$KIT"/whl/*.whl >"$OUT/install.log" 2>&1 ||
        { echo "wheel install failed"; tail -20 "$OUT/install.log"; exit 1; }
    export PYTHONPATH="/tmp/mm-site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
if ! command -v bwrap >/dev/null && ls "$KIT"/bubblewrap_*.deb >/dev/null 2>&1; then
    dpkg -x "$KIT"/bubblewrap_*.deb /tmp/mm-bwrap && export PATH="/tmp/mm-bwrap/usr/bin:$PATH"
fi

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c 'import sys, torch; print(sys.version.split()[0], torch.__version__,
torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name())'
    echo "bwrap: $(command -v bwrap) $(bwrap --version 2>&1)"
    echo "prlimit: $(command -v prlimit)"
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    ls /dev/nvidia* 2>&1 | tr '\n' ' '
    echo
    nproc
} >"$OUT/machine.log" 2>&1
cat "$OUT/machine.log"

PYTEST=(python3 -m pytest -p no:cacheprovider)
# pytest-timeout is on the GPU image (not a project dependency): one stuck test must not eat
# the run.
TIMEOUT=()
python3 -c "import pytest_timeout" 2>/dev/null && TIMEOUT=(--timeout=75)

# Which sandbox a CUDA host can start in here, and with which sysfs/procfs (bench/gpu_probe.py
# tries the default binds, then the whole of /sys, then no bubblewrap, and says which worked).
step gpu-probe 90 python3 bench/gpu_probe.py
probe=$(tail -n 1 "$OUT/gpu-probe.log")
case "$probe" in
    "binds: "*) export MM_HOST_GPU_BINDS="${probe#binds: }" ;;
esac

step gpu-tests 170 "${PYTEST[@]}" "${TIMEOUT[@]}" tests/workers/test_gpu.py -v

step runtime-cuda 150 python3 bench/runtime.py --quick --device cuda --json "$OUT/runtime-cuda.json"

if [ "$(left)" -gt 120 ]; then
    MM_INFERENCE_QUEUE=gpu MM_VALIDATION_QUEUE=gpu MM_TEST_SECOND_WORKER_QUEUES=gpu \
        MM_TEST_SECOND_WORKER_DEVICE=cuda \
        step e2e-on-gpu $(($(left) - 100)) "${PYTEST[@]}" tests/workers tests/inference \
        -m "e2e and not browser and not gpu" --ignore-glob "*browser*" \
        --ignore tests/inference/test_oip.py "${TIMEOUT[@]}" -q
else
    echo "== e2e-on-gpu: skipped, $(left) s left"
fi

if [ "$(left)" -gt 90 ]; then
    step runtime-cpu $(($(left) - 5)) python3 bench/runtime.py --quick --json "$OUT/runtime-cpu.json"
else
    echo "== runtime-cpu: skipped, $(left) s left"
fi
echo "== done in $(($(date +%s) - STARTED)) s"
