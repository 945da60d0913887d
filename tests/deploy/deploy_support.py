"""Helpers for the deployment checks (Dockerfile, compose, SELinux policy, shell scripts).

Every check runs offline on a CPU-only Debian machine. A check whose tool is missing SKIPS with the tool's
name and the install command (deploy/ci/install-tools.sh installs them all).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL_HINT = "install with deploy/ci/install-tools.sh"
BAD_MODULES = REPO / "tests" / "deploy" / "selinux_bad"


def find_tool(name: str) -> str | None:
    """A CLI from PATH or from the running interpreter's bin directory (the venv's pip-installed tools)."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None


def require_tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        pytest.skip(f"{name} not installed ({INSTALL_HINT})")
    return path


def load_yaml(path: Path) -> dict:
    yaml = pytest.importorskip("yaml", reason=f"PyYAML not installed ({INSTALL_HINT})")
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


_DEFAULT = re.compile(r"\$\{[A-Z0-9_]+:?-([^}]*)\}")


def default_of(value: str) -> str:
    """Interpolate `${VAR:-default}` and `${VAR-default}` with their defaults (compose with no environment)."""
    return _DEFAULT.sub(lambda m: m.group(1), str(value))


def git_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored files (what CI's fresh clone of a commit would hold)."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"],
                             capture_output=True, check=True).stdout
        return [REPO / p for p in out.decode().split("\0") if p and (REPO / p).is_file()]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "node_modules", "__pycache__", ".ruff_cache", ".pytest_cache"}
        files = []
        for root, dirs, names in os.walk(REPO):
            dirs[:] = [d for d in dirs if d not in skip]
            files += [Path(root) / n for n in names]
        return files
