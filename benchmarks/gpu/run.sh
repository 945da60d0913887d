#!/usr/bin/env bash
# The A14B torch measurements on one GPU machine (H100/H200) with PyTorch (CUDA), no TensorRT and no network,
# in one command of about 8 minutes, from the repository root:
#
#   OUT=/some/dir bash benchmarks/gpu/run.sh        # results: $OUT/gpu-a14b/*.json (default OUT: benchmarks/results)
#
# diffusers (pure Python) may be missing there, and that machine cannot reach PyPI: its wheel travels with the
# working tree in benchmarks/gpu/wheels/ (gitignored, ~8 MB), fetched beforehand where PyPI is reachable:
#
#   pip download --no-deps -d benchmarks/gpu/wheels diffusers==0.42.1 importlib_metadata zipp huggingface_hub safetensors
#
# wanrt itself is not pip-installed there (that needs setuptools and resolves dependencies): a folder of symlinks
# gives the stage folders their wanrt.<stage> names, as pyproject's package-dir does.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
OUT="${OUT:-benchmarks/results}"
WHEELS=benchmarks/gpu/wheels

if ! "$PY" -c "import diffusers" 2>/dev/null; then
  "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" diffusers \
    || "$PY" -m pip install --quiet --no-index --no-deps "$WHEELS"/*.whl
fi

SITE="$(mktemp -d)"
trap 'rm -rf "$SITE"' EXIT
mkdir "$SITE/wanrt"
ln -s "$PWD"/wanrt/*.py "$SITE/wanrt/"
for stage in benchmarks export engine reef; do ln -s "$PWD/$stage" "$SITE/wanrt/$stage"; done

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
# A run cut short still leaves every job it finished (each writes its JSON when done).
PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" timeout "${BUDGET_S:-480}" "$PY" -m wanrt.benchmarks.gpu_a14b \
  --out "$OUT/gpu-a14b" "$@"
