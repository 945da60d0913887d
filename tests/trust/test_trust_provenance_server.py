"""C2PA on the serving path: chunks stream as decoded, the Result carries a signed sidecar over exactly those
bytes (the audit log records its hash), raw frames are refused, and `wanrt client generate` writes <out>.c2pa."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "server"))
from server_testkit import TINY, running_server  # noqa: E402

from wanrt.errors import InvalidRequestError  # noqa: E402
from wanrt.server.jobs import RAW_RGB24  # noqa: E402
from wanrt.trust import provenance  # noqa: E402

REEF = Path(__file__).parents[2] / "reef" / "model"


@pytest.fixture(scope="module")
def reef_pipeline():
    from wanrt.engine.loader import load_pipeline

    return load_pipeline(REEF, "onnxruntime")


@pytest.fixture
def served(reef_pipeline, c2pa_material, tmp_path):
    with running_server(reef_pipeline, tmp_path, c2pa_cert=c2pa_material["cert"],
                        c2pa_key=c2pa_material["key"]) as running:
        yield running


def test_result_carries_a_sidecar_for_the_streamed_bytes(served, tmp_path):
    with served.client() as client:
        result = client.generate(TINY, client_request_id="c2pa-1")
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(result.video)
    store = provenance.read(clip, manifest=result.c2pa_manifest)
    assert store["validation_state"] == "Valid"
    active = store["manifests"][store["active_manifest"]]
    generation = {a["label"]: a["data"] for a in active["assertions"]}[provenance.ASSERTION]
    record = [r for r in served.audit() if r.get("client_request_id") == "c2pa-1"][0]
    assert generation["request_id"] == record["request_id"]  # the audit record and the manifest name one request
    assert generation["model"]["manifest_sha256"] == result.identity["manifest_sha256"]
    assert record["output"]["c2pa_manifest_sha256"] == hashlib.sha256(result.c2pa_manifest).hexdigest()
    clip.write_bytes(_altered(result.video))
    assert provenance.read(clip, manifest=result.c2pa_manifest)["validation_state"] == "Invalid"


def _altered(video: bytes) -> bytes:
    start = video.rfind(b"mdat")  # the last fragment's picture data
    data = bytearray(video)
    data[start + 8] ^= 1
    return bytes(data)


def test_raw_frames_are_refused(served):
    with served.client() as client, pytest.raises(InvalidRequestError) as err:
        client.generate(TINY, video_format=RAW_RGB24)
    assert err.value.field == "format" and "C2PA" in err.value.message


def test_client_cli_writes_the_sidecar(served, tmp_path):
    out = tmp_path / "clip.mp4"
    result = subprocess.run([sys.executable, "-m", "wanrt.cli", "client", "generate", "--server", served.address,
                             "--insecure", "--prompt", TINY.prompt, "--frames", "1", "--height", "16", "--width",
                             "16", "--steps", "1", "--guidance", "1", "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    sidecar = out.with_name("clip.mp4.c2pa")
    assert provenance.read(out, manifest=sidecar.read_bytes())["validation_state"] == "Valid"


def test_a_mismatched_key_stops_the_server_before_it_starts(reef_pipeline, c2pa_material, tmp_path):
    from wanrt.server.errors import ConfigError

    with pytest.raises(ConfigError, match="does not belong"), running_server(
            reef_pipeline, tmp_path, c2pa_cert=c2pa_material["cert"], c2pa_key=c2pa_material["other_key"]):
        pass
