"""The smaller holes: the audit log created 0600 and never left empty by a refused start; the memory-estimate
cache trusted only when this installation's key vouches for it; prompts audited as HMACs; the state folder
refused where others could write it."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wanrt.cli import main
from wanrt.errors import StateError

REEF = Path(__file__).parents[2] / "reef" / "model"


def test_a_refused_start_leaves_no_audit_file_and_a_started_one_makes_it_0600(tmp_path, capsys):
    audit = tmp_path / "audit.jsonl"
    refused = ["serve", "--model", str(REEF), "--listen", "0.0.0.0:0", "--insecure", "--audit-log", str(audit)]
    assert main(refused) == 2  # plaintext off loopback: refused after the audit option was checked
    assert "--insecure" in capsys.readouterr().err
    assert not audit.exists()
    from wanrt.server.audit import AuditLog

    os.umask(0o022)
    AuditLog(audit, fsync=False).close()
    assert stat.S_IMODE(audit.stat().st_mode) == 0o600
    assert [json.loads(line)["kind"] for line in audit.read_text().splitlines()] == ["genesis", "shutdown"]


def test_state_folder_is_made_private_and_refused_when_others_can_write(tmp_path):
    from wanrt.state import ensure_dir, secret

    folder = tmp_path / "state"
    first = secret("k", folder)
    assert secret("k", folder) == first and len(first) == 32
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE((folder / "k").stat().st_mode) == 0o600
    folder.chmod(0o777)
    with pytest.raises(StateError, match="only this user may write to it"):
        ensure_dir(folder)
    folder.chmod(0o700)
    (folder / "k").chmod(0o644)
    with pytest.raises(StateError, match="others may read it"):
        secret("k", folder)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match=r"WANRT_STATE_DIR.*cannot be used"):
        ensure_dir(blocker / "state")


def _reef_profiles(cache: Path) -> tuple:
    """Profiles of the reef graphs in a fresh process, cached under ``cache``; and the estimate of a request."""
    code = (
        "import json,sys; from pathlib import Path; from wanrt.engine.loader import load_pipeline;"
        "from wanrt.engine.memory import MemoryEstimator; from wanrt.engine.request import GenerationRequest;"
        f"p=load_pipeline(Path({str(REEF)!r}),'onnxruntime');"
        "e=MemoryEstimator(p.graphs,p.spec,resident=0);"
        "print(json.dumps(e.estimate(GenerationRequest(prompt='x',frames=17,height=96,width=96)).stages))")
    env = {**os.environ, "WANRT_CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_an_overwritten_estimate_cache_is_never_trusted(tmp_path):
    from wanrt.engine import memory

    cache = tmp_path / "cache"
    honest = _reef_profiles(cache)
    files = sorted(cache.glob("memory-*.profile"))
    assert files, "profiles were cached"
    # The attack: every cached profile replaced by one claiming the graphs need (almost) nothing, as a plain
    # .npz (the old format), with the tag of another key, and with the tag cut off.
    for path in files:
        data = path.read_bytes()
        profile = memory._load_cached(__import__("io").BytesIO(data[32:]))
        tiny = dataclasses.replace(profile, bytes_at_probe=np.zeros_like(profile.bytes_at_probe))
        path.with_suffix(".npz").write_bytes(b"")  # an old-format file beside it is ignored too
        forged = __import__("io").BytesIO()
        np.savez(forged, **dataclasses.asdict(tiny))
        other_key = memory._tag(b"another installation's key", path.stem.removeprefix("memory-"), forged.getvalue())
        path.write_bytes(other_key + forged.getvalue())
    assert _reef_profiles(cache) == honest  # made again, not read from the forged files
    for path in files:  # and the profiles written back are this installation's again
        key = path.stem.removeprefix("memory-")
        body = path.read_bytes()[32:]
        assert path.read_bytes()[:32] == memory._tag(memory._cache_key(), key, body)


def test_without_a_usable_state_folder_nothing_is_cached(tmp_path, monkeypatch):
    from wanrt.engine import memory

    monkeypatch.setenv("WANRT_STATE_DIR", str(tmp_path / "file" / "state"))
    (tmp_path / "file").write_text("")
    assert memory._cache_key() is None
    assert memory._load_trusted(tmp_path / "x.profile", "k") is None


def test_prompts_are_audited_as_hmacs_and_found_with_the_key(tmp_path, capsys):
    from wanrt.engine.request import GenerationRequest
    from wanrt.server.convert import audit_params, prompt_hmac

    key_file = tmp_path / "prompt.key"
    key_file.write_text(os.urandom(32).hex())
    key_file.chmod(0o600)
    request = GenerationRequest(prompt="a sea turtle glides over a coral reef", negative_prompt="blurry")
    key = bytes.fromhex(key_file.read_text())
    params = audit_params(request, "mp4", keep_text=False, prompt_key=key)
    assert params["prompt_hmac"] == hmac.new(key, request.prompt.encode(), hashlib.sha256).hexdigest()
    assert request.prompt not in json.dumps(params)
    assert hashlib.sha256(request.prompt.encode()).hexdigest() not in json.dumps(params)  # a guess is not confirmed
    assert audit_params(request, "mp4", keep_text=True, prompt_key=key)["prompt"] == request.prompt
    assert prompt_hmac(request.prompt, b"another key" * 3) != params["prompt_hmac"]
    assert main(["audit", "prompt-hmac", request.prompt, "--key", str(key_file)]) == 0
    assert capsys.readouterr().out.strip() == params["prompt_hmac"]
    key_file.chmod(0o644)
    assert main(["audit", "prompt-hmac", request.prompt, "--key", str(key_file)]) == 2
    assert "others may read it" in capsys.readouterr().err
