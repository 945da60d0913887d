"""Signed artifacts: `wanrt sign`/`verify`, and `generate`/`serve --trust` refusing, before anything loads, a folder
that is unsigned, signed by another key, or changed in any one byte of any kind of file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trust_tamper import flip_byte

from wanrt.cli import main
from wanrt.errors import SignatureError
from wanrt.trust.folders import SIGNATURE_NAME

# One file of each kind the artifact holds (the tiny export keeps every weight in external data).
ARTIFACT_FILES = {
    "graph": "transformer.onnx",
    "external data": "transformer.onnx.data",
    "tokenizer": "tokenizer.json",
    "scheduler config": "scheduler_config.json",
    "manifest": "manifest.json",
}


def _verify(folder, public, capsys):
    code = main(["verify-signature", str(folder), "--trust", str(public)])
    return code, capsys.readouterr()


def test_signed_artifact_verifies(signed_artifact, key_pair, capsys):
    code, out = _verify(signed_artifact, key_pair[1], capsys)
    assert code == 0, out.err
    statement = json.loads(__import__("base64").b64decode(
        json.loads((signed_artifact / SIGNATURE_NAME).read_text())["payload"]))
    names = {s["name"] for s in statement["subject"]}
    assert set(ARTIFACT_FILES.values()) <= names  # every file, the manifest included, is a subject


@pytest.mark.parametrize("kind", ARTIFACT_FILES)
def test_one_flipped_byte_in_any_artifact_file_is_refused(signed_artifact, key_pair, capsys, kind):
    name = ARTIFACT_FILES[kind]
    flip_byte(signed_artifact / name)
    code, out = _verify(signed_artifact, key_pair[1], capsys)
    assert code == 2
    assert str(signed_artifact / name) in out.err


@pytest.mark.parametrize("change", ["removed", "other key", "flipped"])
def test_missing_foreign_or_damaged_signature_is_refused(signed_artifact, key_pair, other_key_pair, capsys, change):
    signature = signed_artifact / SIGNATURE_NAME
    if change == "removed":
        signature.unlink()
    elif change == "other key":
        from wanrt.trust.folders import sign_folder
        from wanrt.trust.keys import load_signer

        sign_folder(signed_artifact, load_signer(other_key_pair[0]), wanrt_version="test")
    else:
        data = json.loads(signature.read_text())
        data["signatures"][0]["sig"] = data["signatures"][0]["sig"][:-4] + "AAA="
        signature.write_text(json.dumps(data))
    code, out = _verify(signed_artifact, key_pair[1], capsys)
    assert code == 2
    assert str(signature) in out.err


def test_either_of_several_trusted_keys_suffices(signed_artifact, key_pair, other_key_pair, capsys):
    assert main(["verify-signature", str(signed_artifact), "--trust", str(other_key_pair[1]), "--trust",
                 str(key_pair[1])]) == 0


def _no_network_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    def no_load(*_args, **_kwargs):
        raise AssertionError("a network was loaded before the folder's signature was checked")

    monkeypatch.setattr(onnxruntime, "InferenceSession", no_load)


def test_generate_refuses_before_loading_anything(signed_artifact, key_pair, tmp_path, capsys, monkeypatch):
    flip_byte(signed_artifact / "manifest.json")
    _no_network_loads(monkeypatch)
    out = tmp_path / "clip.npy"
    code = main(["generate", "--model", str(signed_artifact), "--trust", str(key_pair[1]), "--prompt", "reef",
                 "--frames", "5", "--height", "32", "--width", "48", "--steps", "2", "--out", str(out)])
    assert code == 2
    assert str(signed_artifact / "manifest.json") in capsys.readouterr().err
    assert not out.exists()


def test_generate_with_a_trusted_signature_runs_and_trust_env_is_read(signed_artifact, key_pair, tmp_path,
                                                                        capsys, monkeypatch):
    out = tmp_path / "clip.npy"
    monkeypatch.setenv("WANRT_TRUST", str(key_pair[1]))
    args = ["generate", "--model", str(signed_artifact), "--prompt", "reef", "--frames", "5", "--height", "32",
            "--width", "48", "--steps", "2", "--out", str(out)]
    assert main(args) == 0
    flip_byte(signed_artifact / "tokenizer.json")  # the loader's hash check names it: signature covers manifest
    assert main(args) == 2
    assert str(signed_artifact / "tokenizer.json") in capsys.readouterr().err


def test_serve_refuses_an_unsigned_model(tiny_artifact_dir, key_pair, tmp_path, capsys, monkeypatch):
    _no_network_loads(monkeypatch)
    code = main(["serve", "--model", str(tiny_artifact_dir), "--trust", str(key_pair[1]), "--insecure",
                 "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                 "--audit-log", str(tmp_path / "audit.jsonl")])
    assert code == 2
    assert str(tiny_artifact_dir / SIGNATURE_NAME) in capsys.readouterr().err


ENGINES_FILES = {"engines manifest": "engines.json", "engine": "transformer.plan"}


def test_signed_engines_verify_and_bind_their_artifact(signed_engines, key_pair, capsys):
    code, out = _verify(signed_engines, key_pair[1], capsys)
    assert code == 0, out.err
    predicate = json.loads(__import__("base64").b64decode(
        json.loads((signed_engines / SIGNATURE_NAME).read_text())["payload"]))["predicate"]
    assert predicate["kind"] == "engines"
    from wanrt.engine.artifact import sha256_file

    art = signed_engines.parent / "art"
    assert predicate["source_artifact"]["manifest_sha256"] == sha256_file(art / "manifest.json")


@pytest.mark.parametrize("kind", ENGINES_FILES)
def test_one_flipped_byte_in_an_engines_folder_is_refused(signed_engines, key_pair, capsys, kind):
    name = ENGINES_FILES[kind]
    flip_byte(signed_engines / name)
    code, out = _verify(signed_engines, key_pair[1], capsys)
    assert code == 2
    assert str(signed_engines / name) in out.err


@pytest.mark.parametrize("kind", ["manifest", "graph"])
def test_engines_refuse_a_changed_source_artifact(signed_engines, key_pair, capsys, kind):
    art = signed_engines.parent / "art"
    flip_byte(art / ARTIFACT_FILES[kind])
    code, out = _verify(signed_engines, key_pair[1], capsys)
    assert code == 2
    assert ARTIFACT_FILES[kind] in out.err


def test_engines_signature_removed(signed_engines, key_pair, capsys):
    (signed_engines / SIGNATURE_NAME).unlink()
    code, out = _verify(signed_engines, key_pair[1], capsys)
    assert code == 2 and "not signed" in out.err


def test_sign_refuses_an_inconsistent_folder(signed_artifact, key_pair, capsys):
    flip_byte(signed_artifact / "transformer.onnx")
    assert main(["sign", str(signed_artifact), "--key", str(key_pair[0])]) == 2
    assert "transformer.onnx" in capsys.readouterr().err


def test_keygen_refuses_to_overwrite_and_keeps_the_key_private(tmp_path, capsys):
    key = tmp_path / "k"
    assert main(["keygen", str(key)]) == 0
    assert key.stat().st_mode & 0o777 == 0o600
    assert main(["keygen", str(key)]) == 2


def test_a_stage_owning_verify_gets_trust_checked_first(signed_engines, key_pair, tmp_path):
    """The TensorRT stage's `wanrt verify --engines DIR` (accuracy on a GPU) refuses an unsigned folder before it
    runs; the folder check is then `wanrt verify-signature`."""
    import argparse

    from wanrt.trust import cli as trust_cli

    ran = []
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="command")
    other = subparsers.add_parser("verify")
    other.add_argument("--engines", type=Path, required=True)
    other.set_defaults(handler=lambda args: ran.append(args.engines) or 0)
    trust_cli.register(subparsers)
    args = parser.parse_args(["verify", "--engines", str(signed_engines), "--trust", str(key_pair[1])])
    assert args.handler(args) == 0 and ran == [signed_engines]
    (signed_engines / SIGNATURE_NAME).unlink()
    with pytest.raises(SignatureError):
        args.handler(args)
    assert ran == [signed_engines]  # not run again
    args = parser.parse_args(["verify-signature", str(signed_engines.parent / "art"), "--trust", str(key_pair[1])])
    assert args.handler(args) == 0
