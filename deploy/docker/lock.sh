#!/usr/bin/env bash
# Regenerate the CPU image's hashed lock file from pyproject.toml's runtime dependencies (and the build
# backend the image builds wanrt with). Run after changing [project].dependencies; CI fails until you do
# (tests/deploy/test_deploy_lock.py). Needs `uv` (pip install uv) and PyPI.
#
# Usage: deploy/docker/lock.sh        writes deploy/docker/requirements-cpu.lock
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
uv="${UV:-uv}"
# The CPU image: Debian bookworm's Python 3.11 on x86_64 (glibc 2.36).
"$uv" pip compile pyproject.toml deploy/docker/build-requirements.in --generate-hashes --no-header --quiet \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 -o deploy/docker/requirements-cpu.lock
echo "lock.sh: wrote deploy/docker/requirements-cpu.lock"
