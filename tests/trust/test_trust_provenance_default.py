"""Provenance by default: with nothing configured every MP4 is signed by this installation's own certificate,
made on first use; `wanrt provenance verify` says trusted, valid, altered or missing; --no-provenance opts out
and is recorded; an unusable state folder stops the command before the model loads, naming the place."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from trust_tamper import flip_byte

from wanrt.cli import main
from wanrt.trust import provenance

REEF = Path(__file__).parents[2] / "reef" / "model"
SMALL = ["--frames", "5", "--height", "32", "--width", "48", "--steps", "2"]
README_PROMPT = "a school of glowing jellyfish drifts past a hydrothermal vent, bubbles rising"


@pytest.fixture(scope="module")
def default_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's first command, as a fresh machine runs it: the embedded reef model, no provenance options
    (a smaller clip, to keep the test short)."""
    out = tmp_path_factory.mktemp("default") / "reef.mp4"
    done = subprocess.run([sys.executable, "-m", "wanrt.cli", "generate", "--prompt", README_PROMPT, *SMALL,
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


def _verify(capsys, *args: str) -> tuple[int, str]:
    code = main(["provenance", "verify", *args])
    return code, capsys.readouterr().out


def test_a_default_clip_reads_as_ai_generated_in_c2pas_reader(default_clip, wanrt_state_dir):
    store = provenance.read(default_clip)  # c2pa's Reader
    active = store["manifests"][store["active_manifest"]]
    actions = {a["label"]: a["data"] for a in active["assertions"]}["c2pa.actions.v2"]["actions"]
    assert any(a["action"] == "c2pa.created" and a.get("digitalSourceType") == provenance.TRAINED for a in actions)
    assert store["validation_state"] == "Valid"
    ca = (wanrt_state_dir / "provenance" / "ca.pem").read_bytes()
    assert provenance.read(default_clip, trust_anchors=ca)["validation_state"] == "Trusted"
    assert not (wanrt_state_dir / "provenance" / "ca.key").exists()  # the CA's key was never written


def test_verify_reports_trusted_valid_altered_and_missing(default_clip, tmp_path, capsys):
    assert main(["provenance", "show", "--pem"]) == 0
    ca = tmp_path / "ca.pem"
    ca.write_text(capsys.readouterr().out)
    code, out = _verify(capsys, str(default_clip), "--trust-anchor", str(ca))
    assert code == 0 and ": trusted:" in out and "AI-generated (trainedAlgorithmicMedia): yes" in out
    code, out = _verify(capsys, str(default_clip))
    assert code == 0 and ": valid:" in out and "no --trust-anchor" in out
    other = tmp_path / "other-ca.pem"
    other.write_bytes(_other_ca())
    code, out = _verify(capsys, str(default_clip), "--trust-anchor", str(other))
    assert code == 1 and ": valid:" in out  # intact, but not signed under the operator's anchor
    altered = tmp_path / "altered.mp4"
    shutil.copy(default_clip, altered)
    data = altered.read_bytes()
    flip_byte(altered, data.rfind(b"mdat") + 16)  # one bit of the last fragment's picture
    code, out = _verify(capsys, str(altered), "--trust-anchor", str(ca))
    assert code == 1 and ": altered:" in out
    bare = tmp_path / "bare.mp4"
    assert main(["generate", "--prompt", "x", *SMALL, "--out", str(bare), "--no-provenance"]) == 0
    assert "provenance off (--no-provenance)" in capsys.readouterr().err
    code, out = _verify(capsys, str(bare))
    assert code == 1 and ": missing:" in out


def _other_ca() -> bytes:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "some other CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def test_an_unusable_state_folder_fails_before_anything_runs(tmp_path, monkeypatch, capsys):
    import onnxruntime

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("WANRT_STATE_DIR", str(blocker / "state"))
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "clip.mp4"
    assert main(["generate", "--prompt", "x", *SMALL, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"lives in {blocker / 'state'}" in err and "WANRT_STATE_DIR" in err and "--no-provenance" in err
    assert not out.exists()
    code = main(["serve", "--insecure", "--listen", "127.0.0.1:0", "--audit-log", str(tmp_path / "audit.jsonl")])
    assert code == 2 and "WANRT_STATE_DIR" in capsys.readouterr().err


def test_processes_starting_together_make_one_certificate(tmp_path, monkeypatch):
    from wanrt.trust.installation import installation_key

    monkeypatch.setenv("WANRT_STATE_DIR", str(tmp_path / "fresh"))
    keys: list = []
    threads = [threading.Thread(target=lambda: keys.append(installation_key())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 4 and len({k.cert_chain for k in keys}) == 1 and keys[0].origin == "installation"
    assert not [p for p in (tmp_path / "fresh").iterdir() if p.name != "provenance"]  # no partial folders left


def test_serve_signs_by_default_and_records_an_opt_out(tmp_path):
    sys.path.insert(0, str(Path(__file__).parents[1] / "server"))
    from server_testkit import TINY, running_server

    from wanrt.engine.loader import load_pipeline

    pipeline = load_pipeline(REEF, "onnxruntime")
    with running_server(pipeline, tmp_path) as served, served.client() as client:
        result = client.generate(TINY)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(result.video)
    assert provenance.check_clip(clip, manifest=result.c2pa_manifest).ai_generated  # the sidecar, by default
    start = json.loads(served.audit_log.read_text().splitlines()[0])
    assert start["provenance"] == "installation"
    with running_server(pipeline, tmp_path, no_provenance=True) as served, served.client() as client:
        result = client.generate(TINY)
    assert not result.c2pa_manifest
    records = [json.loads(line) for line in served.audit_log.read_text().splitlines()]
    assert records[0]["provenance"] == "off"
    assert [r["output"]["provenance"] for r in records if r.get("method") == "Generate"] == ["off"]
