#!/usr/bin/env bash
# Regenerate the images' hashed lock files from pyproject.toml's runtime dependencies (and the build backend the
# images build wanrt with): the CPU image's, and the GPU image's (plus pycuda and its build backend). Run after
# changing [project].dependencies; CI fails until you do (tests/deploy/test_deploy_lock.py). Needs `uv` (pip
# install uv) and PyPI.
#
# Usage: deploy/docker/lock.sh        writes deploy/docker/requirements-cpu.lock and requirements-gpu.lock
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
uv="${UV:-uv}"
# The CPU image: Debian bookworm's Python 3.11 on x86_64 (glibc 2.36).
"$uv" pip compile pyproject.toml deploy/docker/build-requirements.in --generate-hashes --no-header --quiet \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 -o deploy/docker/requirements-cpu.lock
# The GPU image: NVIDIA's TensorRT image, Ubuntu 24.04's Python 3.12 on x86_64 (glibc 2.39).
"$uv" pip compile pyproject.toml deploy/docker/build-requirements.in deploy/docker/gpu-requirements.in \
    --generate-hashes --no-header --quiet --python-version 3.12 --python-platform x86_64-manylinux_2_28 \
    -o deploy/docker/requirements-gpu.lock
echo "lock.sh: wrote deploy/docker/requirements-cpu.lock and deploy/docker/requirements-gpu.lock"
