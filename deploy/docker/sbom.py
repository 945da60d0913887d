"""CycloneDX 1.5 SBOM of a wanrt image, written inside the image at build time (both Dockerfile targets run it
as their last step): the operating system's packages (dpkg's status database, Debian or Ubuntu) and every Python
distribution the image's interpreter sees (the /opt/wanrt venv, and for the GPU image the base image's
TensorRT bindings through --system-site-packages). Standard library only: it runs with the image's Python.

    python3 deploy/docker/sbom.py --out /opt/wanrt/share/sbom.cdx.json --name wanrt --version 0.1.0 \
        [--dpkg-status /var/lib/dpkg/status] [--os-release /etc/os-release] [--timestamp 2026-11-01T00:00:00Z]

Deterministic: the serial number is derived from the content, and the timestamp is the build's (BUILD_DATE).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import re
import urllib.parse
import uuid
from pathlib import Path


def os_release(path: Path) -> dict[str, str]:
    fields = {}
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value.strip().strip('"')
    return fields


def dpkg_packages(status: Path) -> list[dict[str, str]]:
    """Installed packages of dpkg's status file ("install ok installed" only)."""
    packages = []
    for stanza in status.read_text(encoding="utf-8", errors="replace").split("\n\n") if status.exists() else []:
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", stanza, re.M))
        if fields.get("Status") == "install ok installed" and "Package" in fields:
            packages.append(fields)
    return sorted(packages, key=lambda p: (p["Package"], p.get("Architecture", "")))


def deb_component(package: dict[str, str], distro: str, distro_version: str) -> dict:
    name, version, arch = package["Package"], package["Version"], package.get("Architecture", "all")
    qualifiers = urllib.parse.urlencode({"arch": arch, "distro": f"{distro}-{distro_version}"})
    purl = f"pkg:deb/{distro}/{name}@{urllib.parse.quote(version, safe='')}?{qualifiers}"
    component = {"type": "library", "bom-ref": purl, "name": name, "version": version, "purl": purl}
    if package.get("Source"):
        component["properties"] = [{"name": "deb:source", "value": package["Source"]}]
    return component


def python_components() -> list[dict]:
    found: dict[str, dict] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if not name:
            continue
        normalized = re.sub(r"[-_.]+", "-", name).lower()
        purl = f"pkg:pypi/{normalized}@{dist.version}"
        component = {"type": "library", "bom-ref": purl, "name": normalized, "version": dist.version, "purl": purl}
        license_ = dist.metadata.get("License-Expression")
        if license_:
            component["licenses"] = [{"expression": license_}]
        found.setdefault(purl, component)  # a distribution seen twice (venv and system) is listed once
    return sorted(found.values(), key=lambda c: c["bom-ref"])


def sbom(name: str, version: str, status: Path, release: Path, timestamp: str) -> dict:
    os_info = os_release(release)
    distro, distro_version = os_info.get("ID", "unknown"), os_info.get("VERSION_ID", "unknown")
    components = [{"type": "operating-system", "bom-ref": f"os:{distro}-{distro_version}", "name": distro,
                   "version": distro_version, "description": os_info.get("PRETTY_NAME", distro)}]
    components += [deb_component(p, distro, distro_version) for p in dpkg_packages(status)]
    components += python_components()
    body = {"components": components,
            "metadata": {"timestamp": timestamp,
                         "tools": {"components": [{"type": "application", "name": "wanrt deploy/docker/sbom.py"}]},
                         "component": {"type": "container", "bom-ref": f"wanrt-image:{name}@{version}",
                                       "name": name, "version": version}}}
    serial = uuid.uuid5(uuid.NAMESPACE_URL, hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest())
    return {"bomFormat": "CycloneDX", "specVersion": "1.5", "serialNumber": f"urn:uuid:{serial}", "version": 1,
            **body}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name", default="wanrt")
    ap.add_argument("--version", default="0.0.0")
    ap.add_argument("--dpkg-status", type=Path, default=Path("/var/lib/dpkg/status"))
    ap.add_argument("--os-release", type=Path, default=Path("/etc/os-release"))
    ap.add_argument("--timestamp", default="1970-01-01T00:00:00Z")
    args = ap.parse_args()
    # BUILD_DATE may be "unknown" (a build that did not set it): CycloneDX needs a date-time, so the epoch stands in.
    timestamp = args.timestamp if re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)",
                                               args.timestamp) else "1970-01-01T00:00:00Z"
    document = sbom(args.name, args.version, args.dpkg_status, args.os_release, timestamp)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    kinds = {"deb": sum(c["purl"].startswith("pkg:deb/") for c in document["components"] if "purl" in c),
             "pypi": sum(c["purl"].startswith("pkg:pypi/") for c in document["components"] if "purl" in c)}
    print(f"sbom.py: {args.out}: {kinds['deb']} OS packages, {kinds['pypi']} Python distributions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
