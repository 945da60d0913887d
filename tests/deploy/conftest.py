"""Fixtures of the deployment checks: the SELinux policy linked as shipped and with bad modules."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from deploy_support import BAD_MODULES, REPO


def _run_check_selinux(tmp: Path, name: str, extra: list[Path], neverallow: bool) -> subprocess.Popen:
    work = tmp / name
    work.mkdir()
    cmd = ["bash", str(REPO / "deploy/ci/check-selinux.sh"), "--workdir", str(work), "--json", str(work / "goals.json")]
    for module in extra:
        cmd += ["--extra-module", str(module)]
    if not neverallow:
        cmd.append("--no-neverallow")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="session")
def selinux_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Link the policy four ways, in parallel (~7 s CPU each):

    shipped: the module as shipped, with the base policy's neverallow assertions checked;
    bad_rules / bad_netdomain: a deliberately bad module, neverallows off so the goal table alone judges;
    bad_rules_neverallow: the bad module with neverallows on: the link itself must fail.

    Returns name -> {"rc", "out", "err", "goals": {id: result}}. Skips when the toolchain is missing.
    """
    if not Path("/usr/bin/python3").exists():
        pytest.skip("/usr/bin/python3 (Debian's, with python3-setools) not found")
    tmp = tmp_path_factory.mktemp("selinux")
    variants = {
        "shipped": ([], True),
        "bad_rules": ([BAD_MODULES / "wanrtbad_rules.te"], False),
        "bad_netdomain": ([BAD_MODULES / "wanrtbad_netdomain.te"], False),
        "bad_rules_neverallow": ([BAD_MODULES / "wanrtbad_rules.te"], True),
    }
    procs = {name: _run_check_selinux(tmp, name, extra, nev) for name, (extra, nev) in variants.items()}
    runs = {}
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        goals_file = tmp / name / "goals.json"
        goals = {}
        if goals_file.exists():
            goals = {g["id"]: g for g in json.loads(goals_file.read_text(encoding="utf-8"))}
        runs[name] = {"rc": proc.returncode, "out": out, "err": err, "goals": goals}
    if runs["shipped"]["rc"] == 2:
        pytest.skip(f"SELinux toolchain missing: {runs['shipped']['err'].strip()}")
    return runs
