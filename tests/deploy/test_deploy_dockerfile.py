"""Dockerfile: hadolint-clean, and the runtime stages keep the deployment contract (fixed non-root UID,
no compilers, HEALTHCHECK through `wanrt client health`, OCI labels, pinned bases, extra-CA build secret);
.dockerignore lets in the package folders pyproject.toml names, and nothing else of note."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from deploy_support import REPO, require_tool

DOCKERFILE = REPO / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _stages() -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for word, rest in _instructions():
        if word == "FROM":
            current = rest.split()[-1] if " AS " in rest.upper() else rest
            stages[current] = []
        elif current is not None:
            stages[current].append((word, rest))
    return stages


def _global_args() -> dict[str, str]:
    args = {}
    for word, rest in _instructions():
        if word == "FROM":
            break
        if word == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value
    return args


def test_hadolint() -> None:
    tool = require_tool("hadolint")
    proc = subprocess.run([tool, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_stages_and_pinned_bases() -> None:
    assert list(_stages()) == ["gpu-builder", "gpu", "cpu-builder", "cpu"]  # cpu last: the default target
    args = _global_args()
    assert re.fullmatch(r"nvcr\.io/nvidia/tensorrt:\d\d\.\d\d-py3(@sha256:[0-9a-f]{64})?", args["GPU_BASE"])
    assert re.fullmatch(r"python:3\.11-slim-bookworm(@sha256:[0-9a-f]{64})?", args["CPU_BASE"])
    froms = [rest for word, rest in _instructions() if word == "FROM"]
    assert froms == ["${GPU_BASE} AS gpu-builder", "${GPU_BASE} AS gpu", "${CPU_BASE} AS cpu-builder",
                     "${CPU_BASE} AS cpu"]


@pytest.mark.parametrize("stage", ["gpu", "cpu"])
def test_runtime_stage(stage: str) -> None:
    ins = _stages()[stage]
    words = [w for w, _ in ins]
    user = [rest for w, rest in ins if w == "USER"]
    assert user == ["10001:10001"]
    # USER comes after the last RUN: nothing of the image runs as root after that point
    assert max(i for i, w in enumerate(words) if w == "RUN") < words.index("USER")
    assert [rest for w, rest in ins if w == "COPY"] == [f"--from={stage}-builder /opt/wanrt /opt/wanrt"]
    health = " ".join(rest for w, rest in ins if w == "HEALTHCHECK")
    # Health over the server's own unix socket: no TCP connect from inside the SELinux domain.
    assert re.search(r'CMD \["wanrt", "client", "health", "--server", "unix:(/[^"]+)", "--insecure"\]', health), health
    labels = " ".join(rest for w, rest in ins if w == "LABEL")
    for key in ("title", "description", "version", "revision", "created", "licenses", "vendor", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert [rest for w, rest in ins if w == "EXPOSE"] == ["50051 9464"]
    assert [rest for w, rest in ins if w == "ENTRYPOINT"] == ['["wanrt"]']
    cmd = " ".join(rest for w, rest in ins if w == "CMD")
    assert '"--insecure"' not in cmd and '"/run/secrets/wanrt_tls_key"' in cmd
    socket = re.search(r'"--server", "unix:(/[^"]+)"', health).group(1)
    assert f'"--health-socket", "{socket}"' in cmd, "the HEALTHCHECK dials a socket the server does not open"
    runs = " ".join(rest for w, rest in ins if w == "RUN")
    assert not re.search(r"apt-get install|pip install", runs), "the runtime stage installs nothing"
    assert "--mount=type=secret" not in runs
    envs = " ".join(rest for w, rest in ins if w in ("ENV", "ARG"))
    assert not re.search(r"(TOKEN|PASSWORD|SECRET)[A-Z_]*=", envs)


@pytest.mark.parametrize("stage", ["gpu-builder", "cpu-builder"])
def test_builder_stage_takes_the_extra_ca_secret(stage: str) -> None:
    runs = [rest for w, rest in _stages()[stage] if w == "RUN"]
    pip_runs = [r for r in runs if "pip install" in r]
    assert pip_runs and all("--mount=type=secret,id=extra_ca,required=false" in r and "with-extra-ca" in r
                            for r in pip_runs)


def test_no_compiler_gate() -> None:
    """The GPU runtime stage purges the TensorRT image's compilers and fails the build if one is left."""
    runs = " ".join(rest for w, rest in _stages()["gpu"] if w == "RUN")
    assert "apt-get purge" in runs and "nvcc" in runs and "import tensorrt" in runs
    runs = " ".join(rest for w, rest in _stages()["cpu"] if w == "RUN")
    assert "for c in cc c++ gcc g++ clang" in runs


def test_dockerignore_allows_exactly_the_package() -> None:
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    assert lines[0] == "**", "the build context is an allow-list"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    package_dirs = {d.split("/")[0] for d in pyproject["tool"]["setuptools"]["package-dir"].values()}
    missing = sorted(package_dirs - allowed)
    hint = ["!" + m + "/" for m in missing]
    assert not missing, f"add to .dockerignore so that `pip install .` in the image finds them: {hint}"
    assert "pyproject.toml" in allowed
    # everything the Dockerfile COPYs from the context is let in
    for word, rest in _instructions():
        if word == "COPY" and not rest.startswith("--from"):
            src = rest.split()[0]
            assert src == "." or src in allowed, src
    for never in (".git", ".venv", "tests", "selinux", "secrets"):
        assert never not in allowed


def test_extra_ca_helper_without_secret_just_runs(tmp_path: Path) -> None:
    helper = REPO / "deploy/docker/with-extra-ca.sh"
    env = {"PATH": "/usr/bin:/bin", "EXTRA_CA_FILE": str(tmp_path / "absent.pem")}
    out = subprocess.run(["bash", str(helper), "bash", "-c", 'echo "${PIP_CERT:-none}"'], capture_output=True,
                         text=True, env=env, check=True).stdout
    assert out.strip() == "none"
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nextra\n-----END CERTIFICATE-----\n", encoding="utf-8")
    env["EXTRA_CA_FILE"] = str(ca)
    script = 'grep -c extra "$PIP_CERT"; grep -c CAInfo "$APT_CONFIG"; echo "$PIP_CERT" > "$0"'
    record = tmp_path / "bundle-path"
    out = subprocess.run(["bash", str(helper), "bash", "-c", script, str(record)], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert out.split() == ["1", "1"]
    assert not Path(record.read_text(encoding="utf-8").strip()).exists(), "the bundle is removed afterwards"
