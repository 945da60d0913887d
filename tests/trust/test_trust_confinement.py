"""`wanrt serve --require-selinux-type`: starts only when the process runs as the type AND a canary the policy must
deny is denied with EACCES; refuses (exit 2, saying what it found and the likely cause) otherwise.

The context and selinuxfs are read from files the tests write; the canary is either injected (to reach the
enforced path, which needs an SELinux kernel) or the real connect() against this kernel."""

from __future__ import annotations

import errno
import socket

import pytest

from wanrt.cli import main
from wanrt.errors import ConfinementError
from wanrt.trust.confinement import connect_canary, current_context, inspect, require_selinux_type

CONFINED = b"system_u:system_r:wanrt_container_t:s0:c100,c200\0"


def _proc(tmp_path, context: bytes | None, enforce: str | None, *, per_lsm: bool = False):
    attr = tmp_path / ("selinux_current" if per_lsm else "attr_current")
    if context is not None:
        attr.write_bytes(context)
    fs = tmp_path / "selinuxfs"
    if enforce is not None:
        fs.mkdir()
        (fs / "enforce").write_text(enforce)
    return {"attr_current": attr, "selinuxfs": fs}


def _denied() -> int:
    return errno.EACCES


@pytest.mark.parametrize("enforce", ["1", None])  # None: selinuxfs masked (podman) or not mounted: not needed
def test_the_required_type_with_a_denied_canary_passes(tmp_path, enforce):
    found = require_selinux_type("wanrt_container_t", **_proc(tmp_path, CONFINED, enforce), canary=_denied)
    assert found.type == "wanrt_container_t" and found.canary_denied
    assert "EACCES (denied)" in found.describe()


@pytest.mark.parametrize(("context", "enforce", "canary", "words"), [
    (b"system_u:system_r:spc_t:s0\0", "1", errno.EACCES, ["runs as spc_t", "label=disable"]),  # podman-compose + GPU
    (b"system_u:system_r:container_t:s0:c1,c2\0", None, errno.EACCES, ["runs as container_t", "policy module"]),
    (b"system_u:system_r:container_runtime_t:s0\0", None, None, ["container_runtime_t", "selinux-enabled"]),
    (b"unconfined_u:unconfined_r:unconfined_t:s0\0", "1", None, ["runs as unconfined_t"]),
    (CONFINED, "0", errno.ECONNREFUSED, ["host is permissive"]),
    # selinuxfs masked, host or domain permissive: only the canary can tell
    (CONFINED, None, errno.ECONNREFUSED, ["canary", "ECONNREFUSED", "permissive"]),
    (CONFINED, "1", errno.ECONNREFUSED, ["canary", "semanage permissive"]),  # enforcing host, permissive domain
    (CONFINED, None, None, ["canary", "connected", "grants name_connect"]),
    (CONFINED, None, errno.EPERM, ["EPERM", "seccomp", "not by SELinux"]),
    (None, None, errno.ECONNREFUSED, ["SELinux is not enabled in this kernel", "AppArmor"]),
    (b"unconfined\n", None, errno.ECONNREFUSED, ["SELinux is not enabled"]),  # AppArmor's label, not a context
])
def test_anything_else_is_refused_with_the_likely_cause(tmp_path, context, enforce, canary, words):
    with pytest.raises(ConfinementError) as err:
        require_selinux_type("wanrt_container_t", **_proc(tmp_path, context, enforce), canary=lambda: canary)
    for word in words:
        assert word in str(err.value)


def test_the_per_lsm_attribute_wins_over_the_shared_one(tmp_path):
    selinux = tmp_path / "selinux_current"
    selinux.write_bytes(CONFINED)
    shared = tmp_path / "current"
    shared.write_bytes(b"docker-default (enforce)\0")  # what AppArmor puts in the shared attribute
    assert current_context((selinux, shared)) == CONFINED.rstrip(b"\0").decode()
    assert current_context((tmp_path / "absent", shared)) is None
    assert current_context((tmp_path / "absent", selinux)) == CONFINED.rstrip(b"\0").decode()


def test_the_real_canary_against_this_kernel():
    """The canary is a real connect(): refused by nobody here but the absent listener, or connected."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        assert connect_canary(("127.0.0.1", port)) is None
    assert connect_canary(("127.0.0.1", port)) == errno.ECONNREFUSED
    found = inspect()  # this machine: no SELinux, so no context and no denial
    assert found.context is None and not found.canary_denied


def test_serve_exits_2_before_loading_the_model(tmp_path, capsys, monkeypatch):
    """This machine (and CI) has SELinux off: the real /proc/self/attr/current must refuse."""
    import wanrt.engine.loader

    monkeypatch.setattr(wanrt.engine.loader, "load_pipeline", lambda *a, **k: pytest.fail("loaded"))
    code = main(["serve", "--require-selinux-type", "wanrt_container_t", "--insecure", "--listen", "127.0.0.1:0",
                 "--metrics-listen", "127.0.0.1:0", "--audit-log", str(tmp_path / "audit.jsonl")])
    assert code == 2
    err = capsys.readouterr().err
    assert "--require-selinux-type wanrt_container_t: SELinux is not enabled in this kernel" in err


def test_confinement_command_reports_and_judges(capsys):
    import json

    assert main(["confinement"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["context"] is None and report["canary_denied"] is False and "canary" in report["summary"]
    assert main(["confinement", "--require-selinux-type", "wanrt_container_t"]) == 2
    assert "SELinux is not enabled" in capsys.readouterr().err
