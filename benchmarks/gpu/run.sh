#!/usr/bin/env bash
# The A14B torch measurements on one GPU machine (H100/H200) with PyTorch (CUDA), no TensorRT and no network,
# in one command of about 8 minutes, from the repository root:
#
#   OUT=/some/dir bash benchmarks/gpu/run.sh        # results: $OUT/gpu-a14b/*.json + summary.md
#
# Each job runs in a process of its own and leaves its JSON even when another fails or the budget runs out
# (python -m wanrt.benchmarks.gpu_a14b --help). The Python packages it needs beyond the machine's PyTorch stack
# are listed in benchmarks/gpu/wheels.txt; on a machine without network they travel with the working tree in
# benchmarks/gpu/wheels/ (gitignored), fetched beforehand where PyPI is reachable:
#
#   pip download --no-deps -d benchmarks/gpu/wheels -r benchmarks/gpu/wheels.txt
#
# wanrt itself is not pip-installed there (that needs setuptools and resolves dependencies): a folder of symlinks
# gives the stage folders their wanrt.<stage> names, as pyproject's package-dir does.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
OUT="${OUT:-benchmarks/results}"
WHEELS=benchmarks/gpu/wheels

SITE="$(mktemp -d)"
trap 'rm -rf "$SITE"' EXIT
mkdir "$SITE/wanrt"
ln -s "$PWD"/wanrt/*.py "$SITE/wanrt/"
for stage in benchmarks export engine reef; do ln -s "$PWD/$stage" "$SITE/wanrt/$stage"; done
# PYTHONSAFEPATH: the repository root (the working directory) holds a plain wanrt/ that would shadow the site.
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1

# Every module the jobs import, checked before any GPU time is spent; the carried wheels fill what is missing.
CHECK='import diffusers, transformers, tokenizers, onnx, torch, wanrt.benchmarks.gpu_e2e, wanrt.export.vae_decoder'
if ! "$PY" -c "$CHECK" 2>/dev/null && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install --quiet --no-index --no-deps --no-compile --target "$SITE/wheels" "$WHEELS"/*.whl
  export PYTHONPATH="$PYTHONPATH:$SITE/wheels"
fi
if ! "$PY" -c "$CHECK"; then
  echo "run.sh: a module above is missing; fetch benchmarks/gpu/wheels.txt's wheels into $WHEELS (see its header)" >&2
  exit 2
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
# The jobs keep to BUDGET_S between them; the outer timeout only guards the guard.
"$PY" -m wanrt.benchmarks.gpu_a14b --out "$OUT/gpu-a14b" --budget-s "${BUDGET_S:-480}" "$@"
