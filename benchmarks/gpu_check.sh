#!/usr/bin/env bash
# seqcast GPU check: the speed comparison of benchmarks/run.py on CUDA with bf16 autocast, at the reference shape
# (temperature, L=48, H=24, LSTM/GRU 2x64, batch 256) and a larger one (synthetic 64 series, L=336, H=48, 2x256,
# batch 1024): seqcast against a bare cuDNN loop, Darts and NeuralForecast. docs/benchmarks.md, section "GPU".
#
#   bash benchmarks/gpu_check.sh                    # on the GPU machine, from a copy of the repo; a few minutes
#   SEQCAST_GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh   # dry run here: the same steps, --device cpu --quick
#   bash benchmarks/gpu_check.sh --prepare-wheels   # here, with PyPI: wheels of what the GPU image lacks (see below)
#
# It runs once on a fresh machine that has a CUDA build of torch but maybe nothing else of seqcast's, and no
# package index. So it:
#   1. prints nvidia-smi and finds a python whose torch sees CUDA (SEQCAST_PYTHON first, then python3, python, ...;
#      the repo's .venv last: it holds the CPU build). None: a message and exit 3.
#   2. makes seqcast's imports work without installing anything from outside:
#      - wheels in build/gpu-wheels (SEQCAST_GPU_WHEELS), made by --prepare-wheels and carried along, are unpacked
#        with `pip install --no-index --no-deps --target` into a temporary folder put on PYTHONPATH;
#      - only if pydantic is still missing and pip reaches an index: a venv with --system-site-packages gets
#        pydantic and Prefect (and `pip install -e . --no-deps`, and the peers), torch pinned to the one there;
#      - Prefect still missing: a stand-in package with only what the training code imports (the @task
#        decorator, NO_CACHE, the run logger) is put on PYTHONPATH; the benchmark calls the plain functions.
#      - pydantic still missing: a message and exit 4 (seqcast's configs are pydantic models).
#      Darts or NeuralForecast missing: run.py skips them with a note, and their targets read "not measured".
#   3. runs `run.py --device cuda --sections speed --shapes reference,large` under `timeout` (420 s), writing
#      latest.json, latest.md and the logs to $OUT when set (the device tool brings back what is under $OUT),
#      else to benchmarks/results/gpu; then prints latest.md. A run cut off by the budget leaves partial.json
#      with the shapes already measured.
#
# Environment: SEQCAST_GPU_CHECK_DEVICE (cuda | cpu; cpu = dry run with --quick), SEQCAST_GPU_CHECK_QUICK=1
# (--quick on cuda too), SEQCAST_GPU_CHECK_TOOLS (default seqcast,bare,darts,neuralforecast),
# SEQCAST_GPU_CHECK_SHAPES (default reference,large), SEQCAST_GPU_CHECK_TIMEOUT (seconds, default 420),
# SEQCAST_PYTHON, SEQCAST_GPU_WHEELS, SEQCAST_GPU_CHECK_PREFECT_STUB=1 (use the Prefect stand-in even where
# Prefect is installed; the smoke test does, to check that the stand-in is enough), OUT.
#
# --prepare-wheels (run here, where pip reaches PyPI): downloads, for CPython SEQCAST_GPU_PYTHON_VERSION (3.12,
# the GPU image's python3) on manylinux x86_64, the versions installed in .venv of pydantic, pydantic-core,
# annotated-types, typing-inspection, darts and holidays into build/gpu-wheels (ignored by git; a few MiB).
# Name build/gpu-wheels in the device tool's `carry`. NeuralForecast is not included: it imports ray at import
# time, and ray's wheel alone is larger than the 64 MiB the device tool carries.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
DEVICE=${SEQCAST_GPU_CHECK_DEVICE:-cuda}
TOOLS=${SEQCAST_GPU_CHECK_TOOLS:-seqcast,bare,darts,neuralforecast}
SHAPES=${SEQCAST_GPU_CHECK_SHAPES:-reference,large}
BUDGET=${SEQCAST_GPU_CHECK_TIMEOUT:-420}
WHEELS=${SEQCAST_GPU_WHEELS:-$ROOT/build/gpu-wheels}
WORK=${TMPDIR:-/tmp}/seqcast-gpu-check.$$

prepare_wheels() {
    local py=${SEQCAST_PYTHON:-$ROOT/.venv/bin/python} pyver=${SEQCAST_GPU_PYTHON_VERSION:-3.12} specs=() dist version
    for dist in pydantic pydantic-core annotated-types typing-inspection darts holidays; do
        version=$("$py" -c "import importlib.metadata as m; print(m.version('$dist'))" 2>/dev/null) || {
            echo "gpu_check: $dist is not installed in $py; install the bench extra first (make bench)" >&2
            return 2
        }
        specs+=("$dist==$version")
    done
    mkdir -p "$WHEELS"
    echo "gpu_check: downloading ${specs[*]} for CPython $pyver, manylinux x86_64, into $WHEELS"
    "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$WHEELS" "${specs[@]}" || return 1
    ls -l "$WHEELS"
    du -sh "$WHEELS"
    echo "gpu_check: carry build/gpu-wheels with the repo (device tool: carry=[\"build/gpu-wheels\"])"
}

find_python() {  # $1: the probe (python code that exits 0 when the python will do)
    local candidates=() c path
    [ -n "${SEQCAST_PYTHON:-}" ] && candidates+=("$SEQCAST_PYTHON")
    [ "$DEVICE" = cpu ] && candidates+=("$ROOT/.venv/bin/python")
    candidates+=(python3 python /opt/torch/.venv/bin/python3 /opt/conda/bin/python /usr/local/bin/python3 /usr/bin/python3)
    [ "$DEVICE" = cuda ] && candidates+=("$ROOT/.venv/bin/python")
    for c in "${candidates[@]}"; do
        path=$(command -v "$c" 2>/dev/null) || continue
        if timeout 180 "$path" -c "$1" >/dev/null 2>&1; then
            echo "$path"
            return 0
        fi
        echo "gpu_check:   $path: no usable torch (for --device $DEVICE)" >&2
    done
    return 1
}

importable() { "$PY" -c "import $1" >/dev/null 2>&1; }

write_prefect_stub() {  # $1: folder to put on PYTHONPATH
    mkdir -p "$1/prefect"
    cat >"$1/prefect/__init__.py" <<'PY'
"""Stand-in for Prefect, written by benchmarks/gpu_check.sh where Prefect is not installed. It holds only what
seqcast's training code imports: the @task decorator (returns the function unchanged), NO_CACHE and the run logger
(which says there is no run context, so the code logs to its module logger). The benchmark calls the plain
functions (fit_forecaster, prepare_windows), so no Prefect feature is used."""


__version__ = "stand-in (benchmarks/gpu_check.sh)"


def task(__fn=None, **kwargs):
    if callable(__fn):
        return __fn
    return lambda fn: fn


def flow(__fn=None, **kwargs):
    return task(__fn, **kwargs)
PY
    echo 'NO_CACHE = None' >"$1/prefect/cache_policies.py"
    printf 'class MissingContextError(RuntimeError):\n    pass\n' >"$1/prefect/exceptions.py"
    cat >"$1/prefect/logging.py" <<'PY'
from prefect.exceptions import MissingContextError


def get_run_logger(*args, **kwargs):
    raise MissingContextError("no Prefect run context (stand-in written by benchmarks/gpu_check.sh)")
PY
}

index_reachable() { timeout 25 "$PY" -m pip index versions pip >/dev/null 2>&1; }

main() {
    echo "== seqcast GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ): device $DEVICE, results in $RESULTS"
    echo "== host: $(uname -srm), $(nproc 2>/dev/null || echo '?') cores"
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
    else
        echo "nvidia-smi: not found"
    fi

    local probe='import torch'
    [ "$DEVICE" = cuda ] && probe='import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'
    PY=$(find_python "$probe") || {
        if [ "$DEVICE" = cuda ]; then
            echo "gpu_check: ERROR: no python here imports a CUDA build of torch that sees a GPU (tried SEQCAST_PYTHON," \
                "python3, python, /opt/torch/.venv/bin/python3, /opt/conda/bin/python, /usr/local/bin/python3," \
                "/usr/bin/python3, .venv/bin/python). Set SEQCAST_PYTHON=/path/to/python."
        else
            echo "gpu_check: ERROR: no python with torch found; set SEQCAST_PYTHON=/path/to/python."
        fi
        return 3
    }
    echo "== python: $PY"
    "$PY" - <<'PY'
import platform, sys
import torch
print(f"python {platform.python_version()} ({sys.executable})")
cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, cuDNN {cudnn}, cuda available {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(f"GPU 0: {torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability(0)}, "
          f"bf16 supported {torch.cuda.is_bf16_supported()}")
PY

    mkdir -p "$WORK"
    local site="$WORK/site" stubs="$WORK/stubs" whl=()
    shopt -s nullglob
    whl=("$WHEELS"/*.whl)
    shopt -u nullglob
    if [ ${#whl[@]} -gt 0 ]; then
        echo "== unpacking ${#whl[@]} carried wheels from $WHEELS into $site (no index, no dependencies)"
        if "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
            "${whl[@]}"; then
            export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
        else
            echo "gpu_check: NOTE: unpacking the wheels failed; going on without them"
        fi
    fi

    if ! importable pydantic; then  # (Prefect alone is covered by the stand-in below)
        if index_reachable; then
            local venv="$WORK/venv" torch_version
            torch_version=$("$PY" -c 'import torch; print(torch.__version__)')
            echo "== pip reaches an index: venv with --system-site-packages at $venv (torch kept at $torch_version)"
            echo "torch==$torch_version" >"$WORK/constraints.txt"
            if "$PY" -m venv --system-site-packages "$venv" &&
                "$venv/bin/python" -m pip install --quiet -c "$WORK/constraints.txt" pydantic prefect &&
                "$venv/bin/python" -m pip install --quiet --no-deps -e .; then
                PY="$venv/bin/python"
                for peer in darts neuralforecast; do
                    importable "$peer" || "$PY" -m pip install --quiet -c "$WORK/constraints.txt" "$peer" ||
                        echo "gpu_check: NOTE: could not install $peer; run.py will skip it"
                done
            else
                echo "gpu_check: NOTE: the venv install failed; going on with $PY"
            fi
        else
            echo "== no package index reachable: nothing is installed"
        fi
    fi
    if [ "${SEQCAST_GPU_CHECK_PREFECT_STUB:-0}" = 1 ] || ! importable prefect; then
        write_prefect_stub "$stubs"
        export PYTHONPATH="$stubs${PYTHONPATH:+:$PYTHONPATH}"
        echo "gpu_check: NOTE: Prefect is not installed (or SEQCAST_GPU_CHECK_PREFECT_STUB=1): using the stand-in in" \
            "$stubs/prefect (the @task decorator, NO_CACHE, the run logger); the benchmark calls plain functions"
    fi
    if ! importable pydantic; then
        echo "gpu_check: ERROR: pydantic is not importable and no index is reachable; seqcast's configs need it." \
            "On a machine with PyPI run 'bash benchmarks/gpu_check.sh --prepare-wheels' and carry build/gpu-wheels."
        return 4
    fi
    echo "== imports (one process; a peer that does not import is skipped by run.py with the reason):"
    "$PY" - <<'PY'
import importlib
for name in ("numpy", "pandas", "pydantic", "prefect", "pytorch_lightning", "darts", "neuralforecast", "psutil"):
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable here"
        print(f"   {name}: NOT importable ({exc.__class__.__name__}: {exc})")
    else:
        print(f"   {name}: {getattr(module, '__version__', 'ok')}")
PY

    local args=(benchmarks/run.py --device "$DEVICE" --sections speed --shapes "$SHAPES" --tools "$TOOLS" --out "$RESULTS")
    if [ "$DEVICE" = cpu ] || [ "${SEQCAST_GPU_CHECK_QUICK:-0}" = 1 ]; then
        args+=(--quick)
    fi
    echo "== $PY ${args[*]} (time budget ${BUDGET} s)"
    local rc
    if command -v timeout >/dev/null 2>&1; then
        PYTHONUNBUFFERED=1 timeout --kill-after=15 "$BUDGET" "$PY" "${args[@]}"
        rc=$?
    else
        PYTHONUNBUFFERED=1 "$PY" "${args[@]}"
        rc=$?
    fi
    case $rc in
        0) echo "== run.py finished" ;;
        124 | 137) echo "gpu_check: ERROR: run.py ran past its ${BUDGET} s budget; what it measured is in $RESULTS/partial.json" ;;
        *) echo "gpu_check: ERROR: run.py exited with $rc (a section that failed is in latest.json's meta.errors)" ;;
    esac
    if [ -f "$RESULTS/latest.md" ] && [ "$rc" != 124 ] && [ "$rc" != 137 ]; then
        echo "== $RESULTS/latest.md"
        cat "$RESULTS/latest.md"
    fi
    return "$rc"
}

if [ "${1:-}" = --prepare-wheels ]; then
    prepare_wheels
    exit $?
elif [ $# -gt 0 ]; then
    echo "usage: bash benchmarks/gpu_check.sh [--prepare-wheels]  (settings: see the comments at the top)" >&2
    exit 2
fi
case $DEVICE in
    cuda | cpu) ;;
    *)
        echo "gpu_check: SEQCAST_GPU_CHECK_DEVICE must be cuda or cpu, not '$DEVICE'" >&2
        exit 2
        ;;
esac
if [ -n "${OUT:-}" ]; then
    RESULTS=$OUT
elif [ "$DEVICE" = cuda ]; then
    RESULTS=$ROOT/benchmarks/results/gpu
else
    RESULTS=${TMPDIR:-/tmp}/seqcast-gpu-check-dry
fi
mkdir -p "$RESULTS" || exit 2
main 2>&1 | tee "$RESULTS/gpu_check.log"
status=${PIPESTATUS[0]}
rm -rf "$WORK"
exit "$status"
