#!/usr/bin/env bash
# The prepared GPU check: on a bare GPU machine (recent torch with CUDA, Python 3.12, no Detectron2) it
# installs the core into a venv that reuses the machine's torch, runs the CUDA tests and the CUDA benchmark
# (fp32/bf16/fp16 autocast, torch.compile, batched ROIAlign crops vs the per-box loop, batches 1-256), the
# pipeline rows (torchvision Faster R-CNN first stage + v3_79, crops on the GPU: the detector's images/s alone
# and with the second stage, the second stage's share of the latency at 20 boxes) and prints the tables for
# docs/benchmarks.md, in at most GPU_CHECK_BUDGET_S seconds (default 480).
#
#   tools/gpu_check.sh [--output DIR] [--venv DIR | --no-venv] [--no-compile] [--cpu] [--dry-run]
#
#   --cpu       run every step on CPU with the test-suite benchmark settings (no CUDA needed: checks the script)
#   --dry-run   print the steps without running them
#   PYTHON=...  the interpreter whose torch is reused (default python3); GPU_CHECK_SECTIONS=models,crops;
#   GPU_CHECK_PIPELINE=0 skips the pipeline rows
# Exit: 0 all steps passed, 1 a step failed or ran out of time (the others still ran), 2 bad usage / no CUDA.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

OUT=output/gpu_check
VENV=.venv-gpu
USE_VENV=1
COMPILE=1
DEVICE=cuda
PRESET=gpu
DRY=0
PYTHON=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-480}
SECTIONS=${GPU_CHECK_SECTIONS:-models,crops}  # benchmark sections (the CPU-side test runs crops only)
PIPELINE=${GPU_CHECK_PIPELINE:-1}

usage() { sed -n '9,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while (($#)); do
    case $1 in
        --output) OUT=${2:?--output needs a folder}; shift ;;
        --venv) VENV=${2:?--venv needs a folder}; shift ;;
        --no-venv) USE_VENV=0 ;;
        --no-compile) COMPILE=0 ;;
        --cpu) DEVICE=cpu; PRESET=tiny ;;
        --dry-run) DRY=1 ;;
        -h|--help) usage ;;
        *) echo "error: unknown option $1" >&2; usage ;;
    esac
    shift
done

START=$SECONDS
FAILED=()
left() { echo $((BUDGET - (SECONDS - START))); }

# step NAME CMD...: runs CMD with what is left of the budget; a failure is recorded, the next steps still run.
step() {
    local name=$1 t
    shift
    t=$(left)
    echo
    echo "== $name ($t s left)"
    echo "+ $*"
    ((DRY)) && return 0
    if ((t <= 5)); then
        echo "skipped: the ${BUDGET} s budget is spent"
        FAILED+=("$name (no time left)")
        return 1
    fi
    timeout "$t" "$@"
    local rc=$?
    if ((rc != 0)); then
        FAILED+=("$name (exit $rc)")
    fi
    return $rc
}

PY=$PYTHON
if ((USE_VENV)); then
    step "venv reusing the machine's torch" "$PYTHON" -m venv --system-site-packages "$VENV" || exit 1
    PY=$VENV/bin/python
    # The core only (no Detectron2). Offline machines: fall back to the package alone, using what is installed.
    if ! step "install the core" "$PY" -m pip install -q -e '.[test]'; then
        FAILED=()
        step "install the core (offline: no dependencies)" "$PY" -m pip install -q --no-deps --no-build-isolation -e . \
            || exit 1
    fi
fi

step "environment" "$PY" -c "
import sys, torch
print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', torch.version.cuda,
      '| available', torch.cuda.is_available())
if torch.cuda.is_available():
    print('device:', torch.cuda.get_device_name(0))
import crop_classifier, fvcore, pycocotools, cv2, albumentations, safetensors  # the core's imports
if '$DEVICE' == 'cuda' and not torch.cuda.is_available():
    sys.exit('error: no CUDA device visible to torch (use --cpu to check the script on CPU)')
" || { ((DRY)) || exit 2; }

# CUDA tests: marked `cuda` (they skip without a device, so --cpu runs the selection itself).
step "CUDA tests" "$PY" -m pytest -q -p no:cacheprovider -m cuda tests

COMPILE_PY=False
((COMPILE)) && [[ $DEVICE == cuda ]] && COMPILE_PY=True
# benchmarks/ is not installed with the package: `python -c` run from the repository root imports it from there.
step "benchmark ($SECTIONS) on $DEVICE" "$PY" -c "
import os
os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')
from benchmarks.runner import run_benchmark
run_benchmark('$OUT/benchmark', preset='$PRESET', device='$DEVICE', only='$SECTIONS'.split(','),
              compile=$COMPILE_PY, command='tools/gpu_check.sh')
"

# The GPU pipeline rows: torchvision's Faster R-CNN (no Detectron2 here) + v3_79, crops on the device.
if ((PIPELINE)); then
    step "pipeline (torchvision first stage + v3_79) on $DEVICE" "$PY" -c "
from benchmarks.pipeline import TV_PIPELINE_PRESETS, run_torchvision_pipeline, write_torchvision_pipeline
write_torchvision_pipeline(run_torchvision_pipeline(device='$DEVICE', **TV_PIPELINE_PRESETS['$PRESET']), '$OUT/pipeline')
"
fi

for md in "$OUT/benchmark/benchmark.md" "$OUT/pipeline/pipeline.md"; do
    if ((!DRY)) && [[ -f $md ]]; then
        echo
        cat "$md"
    fi
done
echo
echo "gpu_check: $((SECONDS - START)) s of ${BUDGET} s; results in $OUT/benchmark/benchmark.json, $OUT/pipeline/pipeline.json"
if ((${#FAILED[@]})); then
    printf 'FAILED: %s\n' "${FAILED[@]}"
    exit 1
fi
echo "all steps passed"
