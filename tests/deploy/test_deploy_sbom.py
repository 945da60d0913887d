"""deploy/docker/sbom.py, the SBOM both images write at build: valid CycloneDX 1.5, OS packages from dpkg's
status with Debian/Ubuntu purls, the Python distributions the interpreter sees, deterministic."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from deploy_support import REPO

STATUS = """Package: libc6
Status: install ok installed
Architecture: amd64
Source: glibc
Version: 2.36-9+deb12u10

Package: removed-thing
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: python3.11
Status: install ok installed
Architecture: amd64
Version: 3.11.2-6+deb12u6
"""


def _run(tmp_path, out, timestamp: str) -> dict:
    status, release = tmp_path / "status", tmp_path / "os-release"
    status.write_text(STATUS)
    release.write_text('ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n')
    subprocess.run([sys.executable, str(REPO / "deploy/docker/sbom.py"), "--out", str(out), "--name", "wanrt-cpu",
                    "--version", "0.1.0", "--dpkg-status", str(status), "--os-release", str(release),
                    "--timestamp", timestamp], check=True, capture_output=True, timeout=120)
    return json.loads(out.read_text())


def test_sbom_lists_os_and_python_packages_and_validates(tmp_path):
    validation = pytest.importorskip("cyclonedx.validation.json", reason="cyclonedx-bom not installed")
    from cyclonedx.schema import SchemaVersion

    document = _run(tmp_path, tmp_path / "a.json", "2026-11-01T00:00:00Z")
    assert validation.JsonStrictValidator(SchemaVersion.V1_5).validate_str(json.dumps(document)) is None
    purls = [c.get("purl", "") for c in document["components"]]
    debs = [p for p in purls if p.startswith("pkg:deb/")]
    assert debs == ["pkg:deb/debian/libc6@2.36-9%2Bdeb12u10?arch=amd64&distro=debian-12",
                    "pkg:deb/debian/python3.11@3.11.2-6%2Bdeb12u6?arch=amd64&distro=debian-12"]
    import importlib.metadata

    pypi = {p for p in purls if p.startswith("pkg:pypi/")}
    assert f"pkg:pypi/wanrt@{importlib.metadata.version('wanrt')}" in pypi
    assert f"pkg:pypi/numpy@{importlib.metadata.version('numpy')}" in pypi
    assert document["components"][0]["type"] == "operating-system"
    again = _run(tmp_path, tmp_path / "b.json", "2026-11-01T00:00:00Z")
    assert again == document  # same content, same serial number
    unknown = _run(tmp_path, tmp_path / "c.json", "unknown")  # BUILD_DATE not given
    assert unknown["metadata"]["timestamp"] == "1970-01-01T00:00:00Z"
