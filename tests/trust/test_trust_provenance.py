"""C2PA provenance: `wanrt generate --c2pa-cert/--c2pa-key` embeds a signed manifest that c2pa's Reader validates,
declares the clip AI-generated and names the generator; altering the video breaks validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from trust_tamper import flip_byte

from wanrt.cli import main
from wanrt.engine.artifact import sha256_file
from wanrt.engine.video import read_mp4_frames
from wanrt.trust import provenance

REEF = Path(__file__).parents[2] / "reef" / "model"  # an exported artifact that needs no torch to make

SMALL = ["--frames", "5", "--height", "32", "--width", "48", "--steps", "2"]
TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


def _generate(model, out, material, *extra):
    return main(["generate", "--model", str(model), "--prompt", "a ray glides", *SMALL, "--out", str(out),
                 "--c2pa-cert", str(material["cert"]), "--c2pa-key", str(material[extra[0] if extra else "key"])])


def _media_offset(data: bytes) -> int:
    """The middle of the last top-level ``mdat`` box: coded picture data (not an index box like ``mfra``, which
    C2PA's BMFF hash excludes by design)."""
    offset, found = 0, None
    while offset + 8 <= len(data):
        size, kind = int.from_bytes(data[offset:offset + 4], "big"), data[offset + 4:offset + 8]
        if size < 8:
            break
        if kind == b"mdat":
            found = offset + size // 2
        offset += size
    assert found is not None, "no mdat box"
    return found


def _assertions(store: dict) -> dict:
    active = store["manifests"][store["active_manifest"]]
    return {a["label"]: a["data"] for a in active["assertions"]}


@pytest.fixture(scope="module")
def signed_clip(c2pa_material, tmp_path_factory):
    out = tmp_path_factory.mktemp("clip") / "clip.mp4"
    assert _generate(REEF, out, c2pa_material) == 0
    return out


def test_generated_clip_carries_a_valid_manifest(signed_clip, c2pa_material):
    store = provenance.read(signed_clip)
    assert store["validation_state"] == "Valid"  # signature and hashes good; its CA is not a public one
    trusted = provenance.read(signed_clip, trust_anchors=c2pa_material["ca"].read_bytes())
    assert trusted["validation_state"] == "Trusted"
    assertions = _assertions(store)
    actions = assertions["c2pa.actions.v2"]["actions"]
    assert any(a["action"] == "c2pa.created" and a.get("digitalSourceType") == TRAINED for a in actions), actions
    generation = assertions[provenance.ASSERTION]
    assert generation["generator"]["name"] == "wanrt"
    assert generation["model"]["manifest_sha256"] == sha256_file(REEF / "manifest.json")
    assert generation["model"]["transformer_sha256"]
    assert len(generation["request_id"]) == 32
    assert read_mp4_frames(signed_clip).shape == (5, 32, 48, 3)  # still a playable clip


def test_altering_the_video_breaks_validation(signed_clip, tmp_path):
    altered = tmp_path / "altered.mp4"
    altered.write_bytes(signed_clip.read_bytes())
    flip_byte(altered, offset=_media_offset(altered.read_bytes()))  # one bit of the last frame's picture
    store = provenance.read(altered)
    assert store["validation_state"] == "Invalid"
    failures = [s["code"] for s in store["validation_results"]["activeManifest"]["failure"]]
    assert "assertion.bmffHash.mismatch" in failures


def test_sidecar_validates_streamed_bytes_and_breaks_when_they_change(signed_clip, c2pa_material, tmp_path):
    """The server's form: a detached manifest over the exact bytes already streamed."""
    from wanrt.engine.video import encode_mp4

    frames = read_mp4_frames(signed_clip)
    video = b"".join(encode_mp4([frames], 16))
    key = provenance.ProvenanceKey.load(c2pa_material["cert"], c2pa_material["key"])
    manifest = provenance.sidecar(video, key, provenance.manifest_definition({"backend": "x"}, "req-1",
                                                                             wanrt_version="test"))
    clip = tmp_path / "streamed.mp4"
    clip.write_bytes(video)
    store = provenance.read(clip, manifest=manifest)
    assert store["validation_state"] == "Valid"
    assert _assertions(store)[provenance.ASSERTION]["request_id"] == "req-1"
    flip_byte(clip, offset=_media_offset(video))
    assert provenance.read(clip, manifest=manifest)["validation_state"] == "Invalid"


def test_npy_is_refused_when_provenance_is_configured(c2pa_material, tmp_path, capsys):
    out = tmp_path / "frames.npy"
    assert _generate(REEF, out, c2pa_material) == 2
    assert "--out: raw .npy frames cannot carry a C2PA manifest" in capsys.readouterr().err
    assert not out.exists()


def test_a_key_of_another_certificate_is_refused(c2pa_material, tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    assert _generate(REEF, out, c2pa_material, "other_key") == 2
    assert "does not belong to the certificate" in capsys.readouterr().err
    assert not out.exists()
