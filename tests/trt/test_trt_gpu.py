"""Real TensorRT engines built from the tiny artifact and compared with onnxruntime (the fp32 reference).

Skipped, with the reason, where TensorRT (10.14+ or 11), pycuda or a CUDA device is missing (always on CI machines:
TensorRT's libraries do not install there; tests/trt/test_trt_contract.py checks the same code against the real
bindings with simulated execution). On a GPU machine:

    pip install -e '.[export,test,tensorrt]'
    pytest tests/trt/test_trt_gpu.py -v -rs
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from trt_testkit import MAX_FRAMES, MAX_HEIGHT, MAX_WIDTH, gpu_unavailable

from wanrt.cli import main
from wanrt.engine.backends.onnxruntime import OnnxRuntimeBackend
from wanrt.engine.loader import load_pipeline
from wanrt.engine.request import GenerationRequest
from wanrt.engine.tensorrt.engine_manifest import ENGINES_MANIFEST, check_artifact, read_engines_manifest
from wanrt.engine.tensorrt.plan import BindingError
from wanrt.engine.text import PromptTokenizer
from wanrt.errors import ArtifactError, InvalidRequestError
from wanrt.measures import max_relative_error

REASON = gpu_unavailable()
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(REASON is not None, reason=f"needs TensorRT 10.14+/11 and a CUDA GPU: {REASON}")]

# The tiny export is fp32: strongly typed engines run it in fp32 with TF32 matmuls/convs (10 mantissa bits).
TF32_TOLERANCE = 1e-2


def _rel_error(actual: np.ndarray, expected: np.ndarray) -> float:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    return max_relative_error(actual, expected)


@pytest.fixture(scope="module")
def engines_dir(tiny_artifact_dir, tmp_path_factory):
    """Built once through the CLI, exactly as a user would."""
    out = tmp_path_factory.mktemp("trt") / "engines"
    assert main(["build-engines", "--model", str(tiny_artifact_dir), "--out", str(out),
                 "--max-frames", str(MAX_FRAMES), "--max-height", str(MAX_HEIGHT), "--max-width", str(MAX_WIDTH),
                 "--opt-frames", "5", "--opt-height", "32"]) == 0
    return out


@pytest.fixture(scope="module")
def backends(engines_dir, tiny_artifact_dir):
    from wanrt.engine.backends.tensorrt import TensorRTBackend, open_engines

    _, artifact, engines = open_engines(engines_dir)
    ort = OnnxRuntimeBackend(tiny_artifact_dir, {n: g["file"] for n, g in artifact.graphs.items()})
    return TensorRTBackend(engines_dir, artifact, engines), ort


def test_engines_json_records_the_build(engines_dir, artifact):
    from wanrt.engine.tensorrt.engine import CudaDevice, tensorrt_module

    manifest = read_engines_manifest(engines_dir)
    assert manifest.runtime == CudaDevice(0).runtime_info(tensorrt_module())
    check_artifact(manifest, artifact)
    for graph, entry in manifest.engines.items():
        assert hashlib.sha256((engines_dir / entry.file).read_bytes()).hexdigest() == entry.sha256, graph
    assert {g: e.precision for g, e in manifest.engines.items()} == dict.fromkeys(manifest.engines, "fp32")
    assert manifest.memory.residency == "resident"
    assert manifest.opt.frames == 5 and manifest.opt.height == 32 and manifest.opt.width == MAX_WIDTH
    assert not list(engines_dir.parent.glob(".engines.partial-*"))


def test_every_network_matches_onnxruntime(backends, tiny_artifact_dir, artifact):
    trt, ort = backends
    spec = artifact.spec
    ids, mask = PromptTokenizer(tiny_artifact_dir / "tokenizer.json", spec.text_length)(["a glowing jellyfish", ""])
    text = ort.encode_text(ids, mask)
    assert _rel_error(trt.encode_text(ids, mask), text) < TF32_TOLERANCE
    assert _rel_error(trt.encode_text(ids[:1], mask[:1]), text[:1]) < TF32_TOLERANCE
    rng = np.random.default_rng(0)
    # Both corners of the profile and a point inside, batch 1 and 2, both experts.
    for expert, shape in [("transformer", (1, 16, 1, 2, 2)), ("transformer", (2, 16, 3, 8, 6)),
                          ("transformer_2", (2, 16, 2, 4, 6)), ("transformer_2", (1, 16, 3, 8, 2))]:
        latents = rng.standard_normal(shape, dtype=np.float32)
        timestep = rng.uniform(0, 1000, shape[0]).astype(np.float32)
        expected = ort.predict_noise(expert, latents, timestep, text[: shape[0]])
        assert _rel_error(trt.predict_noise(expert, latents, timestep, text[: shape[0]]), expected) < TF32_TOLERANCE
    z = rng.standard_normal((1, 16, 3, 8, 6), dtype=np.float32)
    got, state = trt.decode_first(z[:, :, :1])
    want, ort_state = ort.decode_first(z[:, :, :1])
    assert _rel_error(got, want) < TF32_TOLERANCE
    for k in (1, 2):  # the caches stay on the GPU and must carry the same history as onnxruntime's
        got, state = trt.decode_next(z[:, :, k : k + 1], state)
        want, ort_state = ort.decode_next(z[:, :, k : k + 1], ort_state)
        assert got.shape == (1, 3, 4, 64, 48) and _rel_error(got, want) < TF32_TOLERANCE


def test_interleaved_decodes_keep_their_own_caches(backends):
    trt, _ = backends
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal((1, 16, 2, 4, 6), dtype=np.float32) for _ in range(2))
    alone = [trt.decode_first(a[:, :, :1])]
    alone.append(trt.decode_next(a[:, :, 1:], alone[0][1]))
    fa, sa = trt.decode_first(a[:, :, :1])
    fb, sb = trt.decode_first(b[:, :, :1])
    na, _ = trt.decode_next(a[:, :, 1:], sa)
    trt.decode_next(b[:, :, 1:], sb)
    assert np.array_equal(fa, alone[0][0]) and np.array_equal(na, alone[1][0])


def test_out_of_profile_calls_are_refused_before_running(backends):
    trt, _ = backends
    text = np.zeros((1, 512, 32), np.float32)
    with pytest.raises(BindingError, match=r"input 'hidden_states' dim 3 \(latent height\) is 10"):
        trt.predict_noise("transformer", np.zeros((1, 16, 1, 10, 6), np.float32), np.zeros(1, np.float32), text)
    with pytest.raises(BindingError, match=r"input 'latent' dim 0 \(batch\) is 2"):
        trt.decode_first(np.zeros((2, 16, 1, 4, 4), np.float32))
    # and the engines still run afterwards
    out = trt.predict_noise("transformer", np.zeros((1, 16, 1, 4, 4), np.float32), np.zeros(1, np.float32), text)
    assert out.shape == (1, 16, 1, 4, 4) and np.isfinite(out).all()


def test_pipeline_matches_onnxruntime(engines_dir, tiny_artifact_dir):
    trt_pipeline = load_pipeline(engines_dir, "tensorrt", device="cuda")
    ort_pipeline = load_pipeline(tiny_artifact_dir, "onnxruntime")
    request = GenerationRequest(prompt="a school of fish swims past the reef", frames=5, height=32, width=48,
                                steps=3, seed=7)
    got = np.concatenate(list(trt_pipeline.generate(request)))
    want = np.concatenate(list(ort_pipeline.generate(request)))
    assert got.shape == want.shape == (5, 32, 48, 3)
    assert np.abs(got.astype(int) - want.astype(int)).mean() < 6  # TF32 vs fp32 over 3 steps, in 0..255
    assert trt_pipeline.identity["backend"] == "tensorrt"
    for graph in ("transformer", "transformer_2", "text_encoder"):
        assert trt_pipeline.identity[f"{graph}_sha256"] == ort_pipeline.identity[f"{graph}_sha256"]
    assert trt_pipeline.limits.max_height == MAX_HEIGHT
    with pytest.raises(InvalidRequestError, match="height"):
        next(trt_pipeline.generate(GenerationRequest(prompt="x", frames=1, height=MAX_HEIGHT + 16, width=16)))


def test_generate_cli(engines_dir, tmp_path):
    out = tmp_path / "clip.npy"
    assert main(["generate", "--model", str(engines_dir), "--backend", "tensorrt", "--device", "cuda", "--prompt",
                 "bubbles rise", "--frames", "9", "--height", "64", "--width", "48", "--steps", "2", "--out",
                 str(out)]) == 0
    assert np.load(out).shape == (9, 64, 48, 3)


def _copy_engines(engines_dir, tiny_artifact_dir, dest, edit=None):
    shutil.copytree(engines_dir, dest)
    data = json.loads((dest / ENGINES_MANIFEST).read_text())
    data["artifact"]["path"] = str(tiny_artifact_dir.resolve())  # absolute works too; keeps the copy paired
    if edit is not None:
        edit(data)
    (dest / ENGINES_MANIFEST).write_text(json.dumps(data))
    return dest


def test_changed_engine_file_is_refused_at_load(engines_dir, tiny_artifact_dir, tmp_path):
    copy = _copy_engines(engines_dir, tiny_artifact_dir, tmp_path / "engines")
    with open(copy / "transformer.plan", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ArtifactError, match=r"transformer\.plan does not match engines\.json"):
        load_pipeline(copy, "tensorrt", device="cuda")


def test_other_tensorrt_version_is_refused_at_load(engines_dir, tiny_artifact_dir, tmp_path):
    copy = _copy_engines(engines_dir, tiny_artifact_dir, tmp_path / "engines",
                         lambda d: d["runtime"].update(tensorrt_version="10.0.0.0"))
    with pytest.raises(ArtifactError, match="built with TensorRT 10.0.0.0, this is TensorRT"):
        load_pipeline(copy, "tensorrt", device="cuda")
