"""CFG-parallel: the cond and uncond halves of each guided step on two devices at once, with the same video as
on one device. On the CPU the two "devices" are two onnxruntime sessions of the same artifact."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from wanrt.cli import main
from wanrt.engine.backends.cfg_parallel import CfgParallelBackend
from wanrt.engine.loader import load_pipeline, load_pipelines
from wanrt.engine.request import GenerationRequest
from wanrt.server.config import ServerConfig
from wanrt.server.errors import ConfigError

GUIDED = GenerationRequest(prompt="a turtle glides over coral", negative_prompt="blurry", frames=5, height=32,
                           width=32, steps=4, guidance=4.0, guidance_2=3.0, seed=5)


def _frames(pipeline: object, request: GenerationRequest = GUIDED) -> np.ndarray:
    return np.concatenate(list(pipeline.generate(request)))


def test_two_sessions_make_the_same_video_bit_for_bit(tiny_artifact_dir):
    one = load_pipeline(tiny_artifact_dir, "onnxruntime")
    (pair,) = load_pipelines(tiny_artifact_dir, "onnxruntime", ("cpu", "cpu"), cfg_parallel=True)
    assert isinstance(pair.backend, CfgParallelBackend)
    assert np.array_equal(_frames(pair), _frames(one))
    unguided = dataclasses.replace(GUIDED, guidance=1.0, guidance_2=1.0)
    assert np.array_equal(_frames(pair, unguided), _frames(one, unguided))


class _Rendezvous:
    """Wraps a backend: each guided half must meet the other half inside predict_noise, which only happens
    when the two run at the same time (sequential calls would break the barrier)."""

    def __init__(self, backend: object, barrier: threading.Barrier, seen: list) -> None:
        self._backend, self._barrier, self._seen = backend, barrier, seen

    def __getattr__(self, name: str) -> object:
        return getattr(self._backend, name)

    def predict_noise(self, expert, latents, timestep, text):
        self._seen.append((threading.current_thread().name, latents.shape[0], text.copy()))
        self._barrier.wait(timeout=20)
        return self._backend.predict_noise(expert, latents, timestep, text)


def test_halves_run_at_once_on_their_own_devices(tiny_artifact_dir):
    a = load_pipeline(tiny_artifact_dir, "onnxruntime")
    b = load_pipeline(tiny_artifact_dir, "onnxruntime")
    barrier = threading.Barrier(2)
    seen_a, seen_b = [], []
    backend = CfgParallelBackend(_Rendezvous(a.backend, barrier, seen_a), _Rendezvous(b.backend, barrier, seen_b))
    text = np.random.default_rng(0).standard_normal((2, 7, 32), dtype=np.float32)
    latents = np.random.default_rng(1).standard_normal((2, 16, 2, 4, 4), dtype=np.float32)
    expert = a.spec.experts[0]
    out = backend.predict_noise(expert, latents, np.full(2, 900.0, np.float32), text)
    assert out.shape[0] == 2
    ((thread_a, rows_a, text_a),), ((thread_b, rows_b, text_b),) = seen_a, seen_b
    assert rows_a == rows_b == 1 and thread_a != thread_b
    assert np.array_equal(text_a[0], text[0]) and np.array_equal(text_b[0], text[1])  # cond here, uncond there


def test_generate_cli_cfg_parallel_equals_one_device(tiny_artifact_dir, tmp_path):
    common = ["generate", "--model", str(tiny_artifact_dir), "--prompt", "bubbles rise", "--frames", "5",
              "--height", "32", "--width", "32", "--steps", "3", "--guidance", "5", "--seed", "2"]
    assert main([*common, "--out", str(tmp_path / "one.npy")]) == 0
    assert main([*common, "--device", "cpu", "--device", "cpu", "--cfg-parallel", "--out",
                 str(tmp_path / "two.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy"))
    assert main([*common, "--device", "cpu", "--device", "cpu", "--out", str(tmp_path / "x.npy")]) == 2
    assert not (tmp_path / "x.npy").exists()


@pytest.mark.parametrize(("devices", "cfg_parallel", "field"), [
    (("cpu", "cpu"), False, "device"),
    (("cuda:0", "cuda:0"), True, "device"),
    (("cuda:0", "cuda:1", "cuda:2"), True, "cfg_parallel"),
    (("cuda:0",), True, "cfg_parallel"),
])
def test_serve_refuses_device_lists_cfg_parallel_cannot_pair(tmp_path, devices, cfg_parallel, field):
    config = ServerConfig(model=None, insecure=True, audit_log=tmp_path / "a.jsonl", devices=devices,
                          cfg_parallel=cfg_parallel)
    with pytest.raises(ConfigError) as err:
        config.validated(model_required=False)
    assert err.value.field == field


def test_serve_accepts_pairs(tmp_path):
    for devices in (("cpu", "cpu"), ("cuda:0", "cuda:1", "cuda:2", "cuda:3")):
        ServerConfig(model=None, insecure=True, audit_log=tmp_path / "a.jsonl", devices=devices,
                     cfg_parallel=True).validated(model_required=False)
