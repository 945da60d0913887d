"""shellcheck on every shell script of the repository (*.sh, .ci/run, anything with a sh/bash shebang), and
the deployment scripts' own conventions (bash, `set -euo pipefail`, executable)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from deploy_support import REPO, git_files, require_tool

SHEBANGS = ("#!/bin/sh", "#!/bin/bash", "#!/usr/bin/env bash", "#!/usr/bin/env sh", "#!/usr/bin/bash")


def _is_shell(path: Path) -> bool:
    rel = path.relative_to(REPO).as_posix()
    if rel.endswith(".sh") or rel == ".ci/run":
        return True
    try:
        with path.open("rb") as fh:
            first = fh.readline(64).decode("utf-8", "replace").strip()
    except OSError:
        return False
    return first.startswith(SHEBANGS)


def shell_scripts() -> list[Path]:
    return sorted(p for p in git_files() if "tests/deploy/selinux_bad" not in p.as_posix() and _is_shell(p))


SCRIPTS = shell_scripts()
OWN = [p for p in SCRIPTS if p.relative_to(REPO).parts[0] in ("deploy", "selinux")]


def test_scripts_found() -> None:
    rels = {p.relative_to(REPO).as_posix() for p in SCRIPTS}
    assert {"deploy/ci/install-tools.sh", "deploy/ci/check-selinux.sh", "selinux/install.sh"} <= rels


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.relative_to(REPO).as_posix() for p in SCRIPTS])
def test_shellcheck(script: Path) -> None:
    tool = require_tool("shellcheck")
    proc = subprocess.run([tool, "--external-sources", "--format=gcc", str(script)], capture_output=True, text=True,
                          cwd=script.parent, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", OWN, ids=[p.relative_to(REPO).as_posix() for p in OWN])
def test_deploy_script_conventions(script: Path) -> None:
    text = script.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(script, os.X_OK), f"chmod +x {script.relative_to(REPO)}"
