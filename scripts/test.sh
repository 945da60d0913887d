#!/usr/bin/env bash
# The test command: makes .venv, installs wanrt with its export and test extras, lints, runs the suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k parity`). Without any it runs every tier; the quick
# loop leaves out exports, quantization, training, parity, soak and fuzzing: `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
PY=.venv/bin/python
"$PY" -m pip install --quiet --upgrade pip
# CPU build of torch pinned for test machines without a GPU; a GPU image brings its own torch.
"$PY" -m pip install --quiet "torch==2.13.0"
"$PY" -m pip install --quiet -e ".[export,quant,bench,test]"

"$PY" -m ruff check .
# Bench smoke (a few seconds): the demo model's DiT and VAE on onnxruntime at a tiny shape; results to a temp dir.
# Before pytest, so that pytest's summary stays the last line; without its progress bars (errors still show).
BENCH_OUT="$(mktemp -d)"
TQDM_DISABLE=1 "$PY" -m wanrt.cli bench --backends onnxruntime --components dit,vae --frames 1 --height 16 \
  --width 16 --runs 1 --warmup 0 --peak-tflops 1 --out "$BENCH_OUT" > /dev/null
rm -rf "$BENCH_OUT"
# The slowest tests are listed before the summary, so a CI log shows where its minutes went.
"$PY" -m pytest -q --durations=25 "$@"
