"""`wanrt attest-image` / `wanrt verify-image-attestation`: SLSA provenance over an image digest, signed with
`wanrt keygen` keys (DSSE), accepted for that digest and that key only."""

from __future__ import annotations

import json
import random

import pytest

from wanrt.cli import main

SEED = random.randrange(1 << 30)


def _digest(rng: random.Random) -> str:
    return "sha256:" + "".join(rng.choice("0123456789abcdef") for _ in range(64))


@pytest.fixture
def keys(tmp_path):
    assert main(["keygen", str(tmp_path / "k")]) == 0
    assert main(["keygen", str(tmp_path / "other")]) == 0
    return tmp_path / "k", tmp_path / "k.pub", tmp_path / "other.pub"


def test_attestation_verifies_for_its_digest_and_key_only(tmp_path, keys, capsys):
    print(f"seed {SEED}")
    rng = random.Random(SEED)
    key, pub, other = keys
    lock = tmp_path / "requirements-gpu.lock"
    lock.write_text(f"numpy==2.{rng.randrange(9)}.0 --hash=sha256:{'ab' * 32}\n")
    digest, out = _digest(rng), tmp_path / "gpu.provenance.dsse.json"
    args = ["attest-image", "--image", "registry/wanrt:gpu", "--digest", digest, "--target", "gpu",
            "--base-image", f"nvcr.io/nvidia/tensorrt:26.10-py3@{_digest(rng)}", "--build-arg", "VCS_REF=abc",
            "--material", str(lock), "--revision", "0" * 40, "--started", "2026-11-01T10:00:00Z",
            "--finished", "2026-11-01T10:20:00Z", "--key", str(key), "--out", str(out)]
    assert main(args) == 0
    envelope = json.loads(out.read_text())
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    capsys.readouterr()
    assert main(["verify-image-attestation", str(out), "--digest", digest, "--trust", str(pub)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["target"] == "gpu" and summary["subject"][0]["digest"]["sha256"] == digest[7:]
    lock_entry = next(d for d in summary["dependencies"] if d["uri"] == "file:requirements-gpu.lock")
    import hashlib

    assert lock_entry["digest"]["sha256"] == hashlib.sha256(lock.read_bytes()).hexdigest()
    # another image, another key, a changed envelope: refused, naming why
    assert main(["verify-image-attestation", str(out), "--digest", _digest(rng), "--trust", str(pub)]) == 2
    assert "not the one that was built and signed" in capsys.readouterr().err
    assert main(["verify-image-attestation", str(out), "--digest", digest, "--trust", str(other)]) == 2
    assert "no valid signature by a trusted key" in capsys.readouterr().err
    envelope["payload"] = envelope["payload"][:-4] + "AAAA"
    out.write_text(json.dumps(envelope))
    assert main(["verify-image-attestation", str(out), "--digest", digest, "--trust", str(pub)]) == 2
    bad = [*args[:4], "sha256:short", *args[5:]]
    assert main(bad) == 2 and "--image-digest: must be sha256:<64 hex digits>" in capsys.readouterr().err
