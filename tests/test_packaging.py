"""Packaging cannot silently drop a stage: every folder with an ``__init__.py`` is a listed package, the image's
build context (.dockerignore) lets it in, and a wheel built from that context, as the Dockerfile installs it,
contains every stage's modules and data."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[1]
# Not shipped: the tests, build outputs and environments.
_NOT_SHIPPED = {"tests", "build", "dist"}
# Files each data package must carry in the wheel (a glob per package-data folder).
_DATA = {"reef/model": "manifest.json", "proto/wanrt/v1": "wanrt.proto", "server/v1": "wanrt_pb2.pyi",
         "evaluate": "probes.npz"}


def _setuptools(root: Path) -> dict:
    return tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def _folder_of(package: str, package_dir: dict[str, str]) -> str:
    """The folder setuptools takes ``package`` from: its own package-dir entry, or its nearest mapped parent's
    folder plus the rest of the dotted name."""
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in package_dir:
            return PurePosixPath(package_dir[prefix], *parts[cut:]).as_posix()
    return PurePosixPath(*parts).as_posix()


def _package_folders(root: Path) -> dict[str, str]:
    """folder (relative, POSIX) -> package name, for every package pyproject.toml lists."""
    config = _setuptools(root)
    return {_folder_of(p, config.get("package-dir", {})): p for p in config["packages"]}


def _python_folders(root: Path) -> set[str]:
    """Every folder of the source tree with an ``__init__.py`` (hidden folders, tests and builds aside)."""
    found = set()
    for init in root.rglob("__init__.py"):
        rel = init.parent.relative_to(root)
        if not any(part.startswith(".") or part.endswith(".egg-info") for part in rel.parts) \
                and rel.parts[:1] and rel.parts[0] not in _NOT_SHIPPED:
            found.add(rel.as_posix())
    return found


def unlisted_python_folders(root: Path) -> list[str]:
    return sorted(_python_folders(root) - set(_package_folders(root)))


def _dockerignore_rules(root: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(.dockerignore's rules in order as (excludes?, regex)); Docker's syntax: ``*`` within a path segment,
    ``**`` across segments, ``!`` re-includes, the last matching rule wins."""
    rules = []
    for line in (root / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        for token in re.split(r"(\*\*/|/\*\*|\*\*|\*|\?)", pattern):
            regex += {"**/": "(?:.*/)?", "/**": "(?:/.*)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                token, re.sub(r"\\\[(.*?)\\\]", r"[\1]", re.escape(token)))
        rules.append((not include, re.compile(regex)))
    return rules


def build_context(root: Path) -> list[str]:
    """The files `docker build` sends from ``root`` (relative, POSIX): those .dockerignore does not exclude.
    A rule matching a folder applies to everything under it."""
    rules = _dockerignore_rules(root)
    sent = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel.startswith((".git/", ".venv/")):
            continue
        parts = rel.split("/")
        candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        excluded = False
        for excludes, regex in rules:
            if any(regex.fullmatch(c) for c in candidates):
                excluded = excludes
        if not excluded:
            sent.append(rel)
    return sent


def test_every_python_folder_is_a_listed_package():
    missing = unlisted_python_folders(REPO)
    assert not missing, f"add to pyproject.toml's packages (and package-dir for a new top-level folder): {missing}"
    for folder, package in _package_folders(REPO).items():
        assert (REPO / folder).is_dir(), f"{package} is listed but {folder}/ does not exist"


def test_the_check_notices_a_forgotten_stage(tmp_path):
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    for folder in _package_folders(REPO):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "__init__.py").touch()
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "__init__.py").touch()
    assert unlisted_python_folders(tmp_path) == []
    (tmp_path / "signing").mkdir()
    (tmp_path / "signing" / "__init__.py").touch()
    (tmp_path / "engine" / "cache").mkdir()
    (tmp_path / "engine" / "cache" / "__init__.py").touch()
    assert unlisted_python_folders(tmp_path) == ["engine/cache", "signing"]


def test_the_image_installs_the_build_context():
    """Both builder stages copy the whole context and pip-install it: the image holds what the wheel holds."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text(encoding="utf-8"))
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)
    for name in ("gpu-builder", "cpu-builder"):
        stage = next(s for s in stages if re.match(rf"\S+ AS {name}\b", s))
        assert re.search(r"^COPY \. /src$", stage, re.MULTILINE), name
        assert re.search(r"pip install (--[\w-]+ )*\"?/src(\[[a-z,]+\])?\"?(\s|$)", stage), name


def test_the_build_context_carries_every_stage():
    sent = set(build_context(REPO))
    assert "pyproject.toml" in sent and not any(f.startswith("tests/") for f in sent)
    for folder in sorted(_python_folders(REPO) | set(_package_folders(REPO))):
        shipped = [p.relative_to(REPO).as_posix() for p in (REPO / folder).iterdir()
                   if p.is_file() and (p.suffix in (".py", ".pyi", ".proto") or folder in _DATA)]
        dropped = sorted(set(shipped) - sent)
        assert not dropped, f".dockerignore keeps {dropped} out of the image"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[zipfile.ZipFile, str]:
    """A wheel built, as the image builds it, from a copy of the build context (pip builds in the source tree)."""
    tmp = tmp_path_factory.mktemp("wheel")
    context = tmp / "context"
    for rel in build_context(REPO):
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, context / rel)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
                           "--no-cache-dir", "-w", str(tmp / "dist"), str(context)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = (tmp / "dist").glob("wanrt-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive, proc.stdout + proc.stderr


@pytest.mark.slow  # builds a wheel (~10-20 s)
def test_the_wheel_contains_every_stage(wheel):
    archive, _ = wheel
    names = set(archive.namelist())
    for folder, package in _package_folders(REPO).items():
        target = package.replace(".", "/")
        expected = [p.name for p in (REPO / folder).iterdir() if p.is_file() and p.suffix == ".py"]
        if folder in _DATA:
            expected.append(_DATA[folder])
        assert expected, f"{folder}/ ships nothing"
        missing = sorted(f"{target}/{name}" for name in expected if f"{target}/{name}" not in names)
        assert not missing, f"the wheel lacks {missing}"
    assert {n for n in names if n.startswith("wanrt/reef/model/")} == \
        {f"wanrt/reef/model/{p.name}" for p in (REPO / "reef" / "model").iterdir()}
    assert not any(n.startswith(("tests/", "wanrt/tests/")) for n in names)


@pytest.mark.slow  # builds a wheel (~10-20 s)
def test_the_wheel_builds_without_package_warnings(wheel):
    _, log = wheel
    warnings = re.findall(r"Package '[\w.]+' is absent from the `packages` configuration", log)
    assert not warnings, f"list these data folders in pyproject.toml's packages: {warnings}"
