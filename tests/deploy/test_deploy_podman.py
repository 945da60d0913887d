"""The CPU image, built with rootful podman from a locally bootstrapped Debian base (deploy/ci/podman-smoke.sh).

Opt-in (minutes, network to Debian's mirror and PyPI): WANRT_PODMAN_SMOKE=1. WANRT_PODMAN_SMOKE=serve (what
.ci/run sets) also starts the server in the hardened container, waits for the image HEALTHCHECK, and drives it
from this interpreter with the project's client: health, one clip generated and decoded, audit record,
read-only root and non-root user (needs the embedded demo model, or SMOKE_MODEL=<artifact folder>).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from deploy_support import REPO, require_tool

MODE = os.environ.get("WANRT_PODMAN_SMOKE", "")


@pytest.mark.skipif(not MODE, reason="opt-in: WANRT_PODMAN_SMOKE=1 (builds the CPU image with podman, minutes)")
def test_cpu_image_builds_and_runs_hardened(tmp_path_factory: pytest.TempPathFactory) -> None:
    for tool in ("podman", "runc", "debootstrap"):
        require_tool(tool)
    if os.geteuid() != 0:
        pytest.skip("rootful podman: run as root")
    cmd = ["bash", str(REPO / "deploy/ci/podman-smoke.sh"), "--workdir", str(tmp_path_factory.mktemp("podman"))]
    if MODE == "serve":
        cmd.append("--serve")
    env = {**os.environ, "WANRT_PYTHON": sys.executable}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    print(proc.stdout)  # the per-part timings, for `pytest -s`
    # Confinement from inside the container: on this kind of host (no SELinux) serve --require-selinux-type is
    # refused, labelled and with label=disable, for that cause; on a confining host it serves with the flag.
    assert ("refused in the container" in proc.stdout) != ("this host confines" in proc.stdout), proc.stdout
    assert "podman-smoke: SBOM: CycloneDX 1.5" in proc.stdout and "signed SLSA provenance" in proc.stdout
    if MODE == "serve":
        assert "client generated and decoded a clip (17x96x96x3 1)" in proc.stdout
