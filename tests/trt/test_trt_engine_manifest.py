"""engines.json: round trip, and refusals of engines that do not belong to this artifact, TensorRT or GPU.

Engine files here are stand-in bytes: only their hashes are checked, nothing runs them.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from trt_testkit import RUNTIME, tensorrt_unavailable, write_standin_engines

from wanrt.engine.backends.tensorrt import cuda_device_index, open_engines
from wanrt.engine.loader import BACKENDS, load_pipeline
from wanrt.engine.tensorrt.engine_manifest import (
    ENGINES_MANIFEST,
    EnginesManifest,
    artifact_dir,
    check_artifact,
    check_runtime,
    read_engines_manifest,
    verify_engine_bytes,
)
from wanrt.engine.tensorrt.profiles import serving_limits
from wanrt.errors import ArtifactError, BackendUnavailableError, InvalidRequestError

HAVE_TENSORRT = tensorrt_unavailable() is None


@pytest.fixture
def engines_dir(tmp_path, tiny_artifact_dir, artifact, limits):
    write_standin_engines(tmp_path / "engines", tiny_artifact_dir, artifact, limits)
    return tmp_path / "engines"


def _edit(engines_dir, change):
    path = engines_dir / ENGINES_MANIFEST
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_round_trip(engines_dir, tiny_artifact_dir, artifact):
    manifest = read_engines_manifest(engines_dir)
    assert EnginesManifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest
    assert artifact_dir(engines_dir, manifest).resolve() == tiny_artifact_dir.resolve()
    assert set(manifest.engines) == set(artifact.graphs)
    check_artifact(manifest, artifact)
    check_runtime(manifest, RUNTIME)


def test_engines_of_another_export_are_refused(engines_dir, artifact):
    _edit(engines_dir, lambda d: d["engines"]["transformer_2"].update(onnx_sha256="0" * 64))
    with pytest.raises(ArtifactError) as err:
        check_artifact(read_engines_manifest(engines_dir), artifact)
    message = str(err.value)
    assert "engine transformer_2.plan was built from transformer_2.onnx with sha256 " + "0" * 64 in message
    assert f"the artifact's transformer_2.onnx has sha256 {artifact.files['transformer_2.onnx']}" in message
    assert "wanrt build-engines" in message


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["engines"].pop("vae_decoder_step"), "has no engine for graph 'vae_decoder_step'"),
    (lambda d: d["engines"].update(extra=d["engines"]["transformer"]), "engines for graphs the artifact lacks: extra"),
    (lambda d: d["engines"]["transformer"]["profiles"][0]["inputs"]["hidden_states"]["max"].__setitem__(3, 10),
     "engine transformer.plan: recorded profile differs"),
    (lambda d: d["limits"].update(max_height=1280), "limits do not fit the artifact: max_height: 1280"),
    (lambda d: d["engines"]["text_encoder"].update(onnx_file="transformer.onnx"), "built from transformer.onnx"),
])
def test_inconsistent_engines_are_refused(engines_dir, artifact, change, message):
    _edit(engines_dir, change)
    with pytest.raises(ArtifactError, match=message):
        check_artifact(read_engines_manifest(engines_dir), artifact)


@pytest.mark.parametrize(("runtime", "words"), [
    (dataclasses.replace(RUNTIME, tensorrt_version="11.4.0.106"),
     ["built with TensorRT 10.16.1.11, this is TensorRT 11.4.0.106"]),
    (dataclasses.replace(RUNTIME, device_name="NVIDIA A100-SXM4-80GB", compute_capability="8.0"),
     ["built for compute capability 9.0 (NVIDIA H100 80GB HBM3)", "NVIDIA A100-SXM4-80GB, is 8.0"]),
    (dataclasses.replace(RUNTIME, device_name="NVIDIA H100 PCIe"),
     ["built on a NVIDIA H100 80GB HBM3; this GPU is a NVIDIA H100 PCIe", "specific to the GPU model"]),
])
def test_other_tensorrt_or_gpu_is_refused(engines_dir, runtime, words):
    with pytest.raises(ArtifactError) as err:
        check_runtime(read_engines_manifest(engines_dir), runtime)
    for word in words + ["wanrt build-engines"]:
        assert word in str(err.value)


def test_changed_engine_bytes_are_refused(engines_dir):
    manifest = read_engines_manifest(engines_dir)
    entry = manifest.engines["transformer"]
    path = engines_dir / entry.file
    verify_engine_bytes(path, entry, path.read_bytes())
    with pytest.raises(ArtifactError, match=r"transformer\.plan does not match engines\.json \(sha256 [0-9a-f]{64}, "
                                            rf"expected {entry.sha256}\)"):
        verify_engine_bytes(path, entry, path.read_bytes() + b"x")


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(format_version=1), "format_version 1; this wanrt reads format 2"),
    (lambda d: d.pop("runtime"), "lacks runtime"),
    (lambda d: d["runtime"].pop("compute_capability"), "is malformed"),
    (lambda d: d["engines"]["transformer"].update(file="../transformer.plan"), "must be a plain file name"),
    (lambda d: d["engines"]["transformer"].pop("sha256"), r"engines\.transformer lacks a string 'sha256'"),
    (lambda d: d["engines"]["transformer"].update(profiles=[]), "profiles must be a non-empty list"),
    (lambda d: d["engines"]["transformer"].update(weight_streaming="no"), "weight_streaming must be true or false"),
    (lambda d: d.pop("memory"), "engines.json lacks memory"),
    (lambda d: d.update(engines={}), "engines must be a non-empty object"),
    (lambda d: d["limits"].pop("max_width"), "limits is malformed"),
])
def test_malformed_engines_json_is_named(engines_dir, change, message):
    _edit(engines_dir, change)
    with pytest.raises(ArtifactError, match=message):
        read_engines_manifest(engines_dir)


def test_missing_or_broken_engines_json(tmp_path):
    with pytest.raises(ArtifactError, match="has no engines.json: not a folder of wanrt TensorRT engines"):
        read_engines_manifest(tmp_path)
    (tmp_path / ENGINES_MANIFEST).write_text("{")
    with pytest.raises(ArtifactError, match="is not valid JSON"):
        read_engines_manifest(tmp_path)


def test_artifact_is_found_relative_to_the_engines(tmp_path, tiny_artifact_dir, artifact, limits):
    # Moving both together keeps them paired; moving the engines alone is refused with the stored path.
    root = tmp_path / "models"
    shutil.copytree(tiny_artifact_dir, root / "art")
    write_standin_engines(root / "engines", root / "art", artifact, limits)
    shutil.move(root, tmp_path / "moved")
    art_dir, loaded, _ = open_engines(tmp_path / "moved" / "engines")
    assert art_dir.resolve() == (tmp_path / "moved" / "art").resolve() and loaded == artifact
    shutil.move(tmp_path / "moved" / "engines", tmp_path / "engines")
    with pytest.raises(ArtifactError, match=r"built from the artifact at '\.\./art'"):
        open_engines(tmp_path / "engines")


def test_served_artifact_files_are_hashed(tmp_path, tiny_artifact_dir, artifact, limits):
    shutil.copytree(tiny_artifact_dir, tmp_path / "art")
    write_standin_engines(tmp_path / "engines", tmp_path / "art", artifact, limits)
    with open(tmp_path / "art" / "tokenizer.json", "a") as f:
        f.write(" ")
    with pytest.raises(ArtifactError, match=r"tokenizer\.json does not match manifest\.json"):
        open_engines(tmp_path / "engines")


def test_loader_checks_everything_it_can_before_tensorrt(engines_dir):
    assert "tensorrt" in BACKENDS
    _edit(engines_dir, lambda d: d["engines"]["transformer"].update(onnx_sha256="f" * 64))
    with pytest.raises(ArtifactError, match="the model was re-exported since"):
        load_pipeline(engines_dir, "tensorrt", device="cuda")


def test_loader_refuses_cpu_device(engines_dir):
    with pytest.raises(InvalidRequestError, match="device: the tensorrt backend runs on a CUDA GPU"):
        load_pipeline(engines_dir, "tensorrt", device="cpu")
    assert (cuda_device_index("cuda"), cuda_device_index("cuda:3")) == (0, 3)


@pytest.mark.skipif(HAVE_TENSORRT, reason="tensorrt is installed: the GPU tests cover loading")
def test_loader_without_tensorrt_says_how_to_get_it(engines_dir):
    with pytest.raises(BackendUnavailableError, match=r"TensorRT is not usable here .*wanrt\[tensorrt\]"):
        load_pipeline(engines_dir, "tensorrt", device="cuda")


def test_limits_recorded_are_the_pipeline_limits(engines_dir, artifact):
    manifest = read_engines_manifest(engines_dir)
    assert manifest.limits == serving_limits(artifact.spec, max_frames=manifest.limits.max_frames,
                                             max_height=manifest.limits.max_height,
                                             max_width=manifest.limits.max_width)


def test_artifact_and_engines_folders_share_one_reader(tmp_path):
    from wanrt.engine.artifact import load_artifact

    for read, name in ((load_artifact, "manifest.json"), (read_engines_manifest, ENGINES_MANIFEST)):
        with pytest.raises(ArtifactError, match="is not a directory"):
            read(tmp_path / "absent")
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        (folder / name).write_text("[]")
        with pytest.raises(ArtifactError, match=rf"{name} is not a JSON object"):
            read(folder)
        (folder / name).write_text('{"format_version": 99}')
        with pytest.raises(ArtifactError, match=rf"{name} has format_version 99; this wanrt reads format \d"):
            read(folder)
