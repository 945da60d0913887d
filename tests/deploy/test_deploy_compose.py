"""docker-compose.yml: valid for the Compose binary and the compose-spec schema, and hardened.

The hardening assertions run twice: on the YAML as written (PyYAML, merge keys resolved) and on what the
Compose binary resolves (`docker-compose config --format json`: interpolation, merges, profiles).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from deploy_support import REPO, default_of, load_yaml, require_tool

COMPOSE = REPO / "docker-compose.yml"
GPU, CPU = "wanrt", "wanrt-cpu"
SECRETS = {"wanrt_tls_cert", "wanrt_tls_key", "wanrt_tls_ca", "wanrt_tokens"}


@pytest.fixture(scope="module")
def compose_env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Environment with dummy secret files and host dirs (the real ones live on the production host)."""
    tmp = tmp_path_factory.mktemp("compose")
    secrets = tmp / "secrets"
    secrets.mkdir()
    for name in ("tls.crt", "tls.key", "ca.crt", "tokens.jsonl"):
        (secrets / name).write_text("dummy\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANRT_", "COMPOSE_", "DOCKER_"))}
    env.update(WANRT_SECRETS_DIR=str(secrets), DOCKER_CONFIG=str(tmp / "docker-config"))
    return env


def _compose(env: dict, *args: str, file: Path = COMPOSE) -> subprocess.CompletedProcess:
    tool = require_tool("docker-compose")
    return subprocess.run([tool, "-f", str(file), *args], capture_output=True, text=True, env=env,
                          cwd=file.parent, timeout=120, check=False)


@pytest.mark.parametrize("profile", [[], ["--profile", "cpu"]], ids=["default", "cpu"])
def test_compose_binary_validates(compose_env: dict, profile: list[str]) -> None:
    proc = _compose(compose_env, *profile, "config", "-q")
    assert proc.returncode == 0, proc.stderr


def test_compose_binary_rejects_a_broken_file(compose_env: dict, tmp_path: Path) -> None:
    """The validator is not a no-op: a misspelt hardening key fails it."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text(encoding="utf-8").replace("  read_only: true", "  read_onyl: true", 1),
                      encoding="utf-8")
    shutil.copy(REPO / "Dockerfile", tmp_path / "Dockerfile")
    proc = _compose(compose_env, "config", "-q", file=broken)
    assert proc.returncode != 0
    assert "read_onyl" in proc.stderr


def test_compose_spec_schema() -> None:
    tool = require_tool("check-jsonschema")
    proc = subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _resolved(compose_env: dict) -> dict:
    proc = _compose(compose_env, "--profile", "cpu", "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module", params=["yaml", "resolved"])
def config(request: pytest.FixtureRequest, compose_env: dict) -> dict:
    if request.param == "yaml":
        return load_yaml(COMPOSE)
    return _resolved(compose_env)


@pytest.fixture(params=[GPU, CPU])
def service(request: pytest.FixtureRequest, config: dict) -> dict:
    return config["services"][request.param]


def _s(value: object) -> str:
    return default_of(str(value))


def test_read_only_root_fs(service: dict) -> None:
    assert service.get("read_only") is True


def test_all_capabilities_dropped(service: dict) -> None:
    assert service.get("cap_drop") == ["ALL"]
    assert not service.get("cap_add")


def test_security_opts(service: dict) -> None:
    opts = [_s(o) for o in service.get("security_opt", [])]
    assert "no-new-privileges:true" in opts
    assert "label=type:wanrt_container_t" in opts
    # a fixed MCS level: files written by one run stay readable by the next
    assert any(o.startswith("label=level:s0:c") for o in opts), opts
    assert not any(o in ("label=disable", "label:disable") or "unconfined" in o for o in opts), opts


def test_server_checks_it_got_the_label_it_asks_for(service: dict) -> None:
    """The process refuses to start unless it runs as the type security_opt asks the engine for."""
    label = [_s(o).split(":", 1)[1] for o in service["security_opt"] if _s(o).startswith("label=type:")]
    cmd = [_s(c) for c in service["command"]]
    assert cmd[cmd.index("--require-selinux-type") + 1] == label[0] == "wanrt_container_t"


def test_not_privileged_no_host_namespaces(service: dict) -> None:
    assert not service.get("privileged")
    for key in ("network_mode", "pid", "ipc", "uts", "userns_mode", "cgroup"):
        assert _s(service.get(key, "")) != "host", key
    assert not service.get("devices"), "raw device pass-through: GPUs come through deploy reservations"
    assert not service.get("sysctls")


def test_non_root_fixed_uid(service: dict) -> None:
    assert _s(service.get("user")) == "10001:10001"


def test_mounts(service: dict) -> None:
    vols = {v["target"]: v for v in service["volumes"]}
    assert set(vols) == {"/models", "/var/lib/wanrt/outputs", "/var/log/wanrt", "/var/cache/wanrt"}
    assert vols["/models"]["read_only"] is True
    for vol in vols.values():
        assert vol["type"] == "bind"
        # deliberately no :z/:Z relabel of host directories (see the comment in docker-compose.yml)
        assert "selinux" not in (vol.get("bind") or {}), vol
        assert (vol.get("bind") or {}).get("create_host_path") is False
        assert not _s(vol["source"]).endswith(("docker.sock", "podman.sock")) and _s(vol["source"]) != "/"


def test_tmpfs_tmp(service: dict) -> None:
    tmpfs = service.get("tmpfs")
    tmpfs = [tmpfs] if isinstance(tmpfs, str) else tmpfs
    entry = next(t for t in tmpfs if t.split(":", 1)[0] == "/tmp")
    opts = set(entry.split(":", 1)[1].split(","))
    assert {"nosuid", "nodev", "noexec"} <= opts
    assert any(o.startswith("size=") for o in opts)


def test_resource_limits(service: dict) -> None:
    limits = service["deploy"]["resources"]["limits"]
    assert {"cpus", "memory", "pids"} <= set(limits)
    assert int(limits["pids"]) > 0
    assert service["ulimits"]["nofile"]


def test_healthcheck(service: dict) -> None:
    test = [_s(t) for t in service["healthcheck"]["test"]]
    assert test[:4] == ["CMD", "wanrt", "client", "health"]
    target = test[test.index("--server") + 1]
    assert target.startswith("unix:/"), "health must not need a TCP connect (SELinux grants no name_connect)"
    cmd = [_s(c) for c in service["command"]]
    assert cmd[cmd.index("--health-socket") + 1] == target.removeprefix("unix:")


def test_secrets(service: dict, config: dict) -> None:
    names = {s if isinstance(s, str) else s["source"] for s in service["secrets"]}
    assert names == SECRETS
    for name in SECRETS:
        assert "file" in config["secrets"][name]
    cmd = [_s(c) for c in service["command"]]
    # mutual TLS: clients must present a certificate signed by the CA of secret wanrt_tls_ca
    flags = (("--tls-cert", "wanrt_tls_cert"), ("--tls-key", "wanrt_tls_key"), ("--tokens", "wanrt_tokens"),
             ("--client-ca", "wanrt_tls_ca"))
    for flag, secret in flags:
        assert cmd[cmd.index(flag) + 1] == f"/run/secrets/{secret}"
    assert "--insecure" not in cmd
    env = service.get("environment") or {}
    items = env.items() if isinstance(env, dict) else (e.split("=", 1) for e in env)
    for key, _ in items:
        assert not any(w in key.upper() for w in ("TOKEN", "PASSWORD", "SECRET", "KEY")), key


def test_ports(service: dict) -> None:
    ports = {p["target"]: p for p in service["ports"]}
    assert set(ports) == {50051, 9464}
    # plaintext metrics: loopback unless the operator says otherwise
    assert _s(ports[9464]["host_ip"]) == "127.0.0.1"
    cmd = [_s(c) for c in service["command"]]
    assert cmd[cmd.index("--listen") + 1].endswith(":50051")
    assert cmd[cmd.index("--metrics-listen") + 1].endswith(":9464")
    assert "--audit-log" in cmd and cmd[cmd.index("--audit-log") + 1].startswith("/var/log/wanrt/")


def test_gpu_service(config: dict) -> None:
    gpu = config["services"][GPU]
    assert not gpu.get("profiles"), "the GPU service is the default one"
    assert _s(gpu.get("network_mode", "")) != "host"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1 and devices[0]["capabilities"] == ["gpu"]
    assert gpu["build"]["target"] == "gpu"
    cmd = [_s(c) for c in gpu["command"]]
    assert cmd[cmd.index("--backend") + 1] == "tensorrt"


def test_cpu_service(config: dict) -> None:
    cpu = config["services"][CPU]
    assert cpu["profiles"] == ["cpu"]
    assert "devices" not in cpu["deploy"]["resources"].get("reservations", {})
    assert cpu["build"]["target"] == "cpu"
    cmd = [_s(c) for c in cpu["command"]]
    assert cmd[cmd.index("--backend") + 1] == "onnxruntime"
    # side by side with the GPU service: different host ports
    gpu_ports = {_s(p["published"]) for p in config["services"][GPU]["ports"]}
    assert not gpu_ports & {_s(p["published"]) for p in cpu["ports"]}


def test_container_logs_are_bounded(service: dict) -> None:
    logging = service["logging"]
    assert logging["driver"] == "json-file"
    assert _s(logging["options"]["max-size"]).endswith("m") and int(_s(logging["options"]["max-file"])) >= 1


PODMAN_GPU = REPO / "deploy" / "podman" / "compose.gpu-cdi.yml"


def test_podman_gpu_override_maps_the_gpu_by_cdi_and_stays_confined(compose_env: dict) -> None:
    """podman-compose turns a GPU reservation into label=disable; the override maps the CDI device instead."""
    tool = require_tool("docker-compose")
    proc = subprocess.run([tool, "-f", str(COMPOSE), "-f", str(PODMAN_GPU), "config", "--format", "json"],
                          capture_output=True, text=True, env=compose_env, cwd=REPO, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    gpu = json.loads(proc.stdout)["services"][GPU]
    assert not gpu["deploy"]["resources"].get("reservations", {}).get("devices")
    assert [d["source"] if isinstance(d, dict) else d for d in gpu["devices"]] == ["nvidia.com/gpu=0"]
    labels = [_s(o) for o in gpu["security_opt"]]
    assert "label=type:wanrt_container_t" in labels and not any("disable" in o for o in labels)
    # the rest of the hardening is untouched by the override
    assert gpu["read_only"] is True and gpu["cap_drop"] == ["ALL"]
    assert gpu["deploy"]["resources"]["limits"]["pids"]


def test_one_audit_file_per_service(config: dict) -> None:
    """Two servers appending to one file would fork its hash chain: every service has a file of its own."""
    files = []
    for service in config["services"].values():
        cmd = [_s(c) for c in service["command"]]
        files.append(cmd[cmd.index("--audit-log") + 1])
    assert len(files) == len(set(files)) == len(config["services"]), files


def test_writes_go_to_scratch_never_to_the_image_label(service: dict) -> None:
    """The /tmp tmpfs carries the image's own label (container_file_t, executable to the domain): the domain may
    not write files there, so HOME, TMPDIR and the caches point at the scratch volume (wanrt_tmp_t)."""
    vols = {v["target"]: v for v in service["volumes"]}
    scratch = vols["/var/cache/wanrt"]
    assert scratch["type"] == "bind" and not scratch.get("read_only")
    assert _s(scratch["source"]) == "/var/lib/wanrt/scratch"
    env = service["environment"]
    for name in ("HOME", "TMPDIR", "XDG_CACHE_HOME", "CUDA_CACHE_PATH"):
        assert _s(env[name]).startswith("/var/cache/wanrt"), name
