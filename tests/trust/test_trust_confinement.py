"""`wanrt serve --require-selinux-type`: refuses to start (exit 2, saying what it found and why) when the process
runs under another SELinux type, when SELinux is permissive, or when it is off."""

from __future__ import annotations

import pytest

from wanrt.cli import main
from wanrt.errors import ConfinementError
from wanrt.trust.confinement import require_selinux_type


def _proc(tmp_path, context: bytes | None, enforce: str | None):
    attr = tmp_path / "attr_current"
    if context is not None:
        attr.write_bytes(context)
    fs = tmp_path / "selinuxfs"
    if enforce is not None:
        fs.mkdir()
        (fs / "enforce").write_text(enforce)
    return {"attr_current": attr, "selinuxfs": fs}


def test_the_required_type_enforced_passes(tmp_path):
    paths = _proc(tmp_path, b"system_u:system_r:wanrt_container_t:s0:c100,c200\0", "1")
    assert require_selinux_type("wanrt_container_t", **paths) == "wanrt_container_t"


@pytest.mark.parametrize(("context", "enforce", "words"), [
    (b"system_u:system_r:spc_t:s0\0", "1", ["runs as spc_t", "label=disable"]),  # podman-compose + GPU
    (b"system_u:system_r:container_t:s0:c1,c2\0", "1", ["runs as container_t", "policy module"]),
    (b"unconfined_u:unconfined_r:unconfined_t:s0\0", "1", ["runs as unconfined_t"]),
    (b"system_u:system_r:wanrt_container_t:s0\0", "0", ["permissive"]),
    (None, None, ["SELinux is off", "selinux-enabled"]),  # Docker CE without selinux-enabled / no SELinux
    (b"system_u:system_r:wanrt_container_t:s0\0", None, ["SELinux is off", "not mounted"]),
])
def test_anything_else_is_refused_with_the_likely_cause(tmp_path, context, enforce, words):
    with pytest.raises(ConfinementError) as err:
        require_selinux_type("wanrt_container_t", **_proc(tmp_path, context, enforce))
    for word in words:
        assert word in str(err.value)


def test_serve_exits_2_before_loading_the_model(tmp_path, capsys, monkeypatch):
    """This machine (and CI) has SELinux off: the real /proc/self/attr/current must refuse."""
    import wanrt.engine.loader

    monkeypatch.setattr(wanrt.engine.loader, "load_pipeline", lambda *a, **k: pytest.fail("loaded"))
    code = main(["serve", "--require-selinux-type", "wanrt_container_t", "--insecure", "--listen", "127.0.0.1:0",
                 "--metrics-listen", "127.0.0.1:0", "--audit-log", str(tmp_path / "audit.jsonl")])
    assert code == 2
    err = capsys.readouterr().err
    assert "--require-selinux-type wanrt_container_t" in err and ("SELinux is off" in err or "runs as" in err)
