"""The CPU image installs its third-party packages from a hashed lock: every runtime dependency that
pyproject.toml declares is pinned there, at a version its specifier accepts, with hashes, and the
Dockerfile installs with --require-hashes and nothing outside the lock."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from deploy_support import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

LOCK = REPO / "deploy" / "docker" / "requirements-cpu.lock"


def _locked(lock: Path = LOCK) -> dict[str, tuple[str, list[str]]]:
    pins: dict[str, tuple[str, list[str]]] = {}
    name = None
    for line in lock.read_text(encoding="utf-8").splitlines():
        if match := re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line):
            name = canonicalize_name(match.group(1))
            pins[name] = (match.group(2), [])
        elif name and (h := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            pins[name][1].append(h.group(1))
    return pins


def test_lock_pins_every_runtime_dependency_with_hashes() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    locked = _locked()
    build = [Requirement(r) for r in pyproject["build-system"]["requires"]]
    for requirement in [Requirement(r) for r in pyproject["project"]["dependencies"]] + build:
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in {LOCK.name}: run deploy/docker/lock.sh"
        version, _ = locked[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{name}=={version} does not satisfy {requirement.specifier}: run deploy/docker/lock.sh")
    unhashed = sorted(n for n, (_v, hashes) in locked.items() if not hashes)
    assert not unhashed, unhashed


def test_image_installs_from_the_lock_only() -> None:
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text(encoding="utf-8"))
    cpu_builder = text.split("AS cpu-builder", 1)[1].split("\nFROM ", 1)[0]
    installs = re.findall(r"pip install ([^&\n]+)", cpu_builder)
    assert installs, "the CPU builder installs nothing?"
    assert "--require-hashes" in installs[0] and "deploy/docker/requirements-cpu.lock" in installs[0]
    for later in installs[1:]:
        assert "--no-deps" in later and "--no-index" in later, later  # wanrt itself, no further downloads


GPU_LOCK = REPO / "deploy" / "docker" / "requirements-gpu.lock"


def test_gpu_lock_pins_the_runtime_and_pycuda_with_hashes() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    locked = _locked(GPU_LOCK)
    pycuda = next(Requirement(r) for r in pyproject["project"]["optional-dependencies"]["tensorrt"]
                  if r.startswith("pycuda"))
    for requirement in [Requirement(r) for r in pyproject["project"]["dependencies"]] + [pycuda]:
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in {GPU_LOCK.name}: run deploy/docker/lock.sh"
        assert requirement.specifier.contains(locked[name][0], prereleases=True), name
    assert "tensorrt" not in locked  # the base image's bindings, matching its libnvinfer
    # pycuda is built from its sdist without build isolation: its build requirements must be locked too
    assert {"setuptools", "wheel", "numpy"} <= set(locked)
    assert not sorted(n for n, (_v, hashes) in locked.items() if not hashes)


def test_gpu_image_installs_from_the_lock_and_builds_pycuda_as_a_wheel() -> None:
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text(encoding="utf-8"))
    builder = text.split("AS gpu-builder", 1)[1].split("\nFROM ", 1)[0]
    runtime = text.split("AS gpu\n", 1)[1].split("\nFROM ", 1)[0]
    pip = re.findall(r"pip (download|install|wheel) ([^&\n]+)", builder)
    assert pip[0][0] == "download" and "--require-hashes" in pip[0][1] and "requirements-gpu.lock" in pip[0][1]
    for verb, args in pip[1:]:  # after the hashed download, nothing is fetched
        assert "--no-index" in args and "--no-deps" in args, (verb, args)
    wheel = [args for verb, args in pip if verb == "wheel"]
    assert len(wheel) == 1 and "pycuda-" in wheel[0] and "--no-build-isolation" in wheel[0]
    assert "pip" not in re.sub(r"pip uninstall -y pip", "", runtime).replace("pipefail", "")  # no install there
