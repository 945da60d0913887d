"""tensorrt backend: runs an artifact's graphs as the TensorRT engines `wanrt build-engines` made for this GPU.

``--model`` names the engines folder; its engines.json points at the artifact (tokenizer, spec, scheduler)
and records what the engines were built from. Every check that needs no GPU (engines match the artifact's
ONNX hashes, profiles match the recorded limits) runs before TensorRT is imported; then the TensorRT version
and GPU model are checked, and each engine's bytes are hashed as they are loaded.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from wanrt.engine.artifact import MANIFEST_NAME, TOKENIZER_NAME, Manifest, load_artifact, sha256_file
from wanrt.engine.backends.base import DecoderState
from wanrt.engine.device import parse_device
from wanrt.engine.pipeline import VideoPipeline
from wanrt.engine.tensorrt.engine_manifest import (
    ENGINES_MANIFEST,
    EnginesManifest,
    artifact_dir,
    check_artifact,
    check_runtime,
    read_engines_manifest,
)
from wanrt.engine.tensorrt.plan import BindingError, Planner
from wanrt.engine.tensorrt.profiles import TEXT_ENCODER, VAE_INIT, VAE_STEP, vae_cache_layout
from wanrt.engine.text import PromptTokenizer
from wanrt.errors import ArtifactError, InvalidRequestError

_MODEL_SUFFIXES = (".onnx", ".onnx.data")  # the files engines replace at serving time (never read here)


def cuda_device_index(device: str) -> int:
    """"cuda" -> 0, "cuda:N" -> N; anything else is refused: TensorRT runs on NVIDIA GPUs only."""
    parsed = parse_device(device)
    if not parsed.is_cuda:
        raise InvalidRequestError("device", f"the tensorrt backend runs on a CUDA GPU: use cuda or cuda:N, "
                                            f"got {device!r}")
    return parsed.index


@dataclasses.dataclass
class _DecoderState:
    """The streaming decoder's causal caches, kept on the GPU between frames.

    Two sets of buffers: the step engine reads one and writes the other, then they swap, so caches never
    travel through the host and no device-to-device copy is needed. Each video gets its own pair (freed
    with the state), so concurrent decodes on one backend cannot clobber each other's caches.
    """

    shapes: dict[str, tuple[int, ...]]  # step-input cache name -> shape
    current: list  # DeviceBuffer per cache, holding the caches for the next frame
    spare: list

    def swap(self) -> None:
        self.current, self.spare = self.spare, self.current


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, engines_dir: Path, artifact: Manifest, engines: EnginesManifest, *,
                 device_index: int = 0) -> None:
        from wanrt.engine.tensorrt.engine import CudaDevice, Engine, tensorrt_module

        trt = tensorrt_module()
        self._device = CudaDevice(device_index)
        check_runtime(engines, self._device.runtime_info(trt))
        self._planner = Planner(artifact, {graph: e.profiles for graph, e in engines.engines.items()})
        layout = vae_cache_layout(artifact.vae_decoder)
        self._cache_names = [name for name, _, _ in layout]
        self._cache_outputs = list(artifact.vae_decoder["cache"]["output_names"])
        # One execution context per engine, not safe to share between threads: calls are serialised.
        self._lock = threading.Lock()
        self._engines = {}
        with self._device.active():
            for graph, entry in engines.engines.items():
                engine = Engine(Path(engines_dir) / entry.file)
                engine.load(entry)
                engine.activate()
                self._planner.check_engine_io(graph, engine.io_tensors())
                self._engines[graph] = engine

    def _run(self, graph: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        plan = self._planner.plan(graph, {name: a.shape for name, a in feeds.items()})  # before any GPU work
        with self._lock, self._device.active():
            engine = self._engines[graph]
            buffers = engine.allocate(plan, self._device)
            for spec in plan.inputs:
                self._device.upload(buffers[spec.name], feeds[spec.name], spec)
            engine.run(plan, buffers, self._device)
            return {spec.name: self._device.download(buffers[spec.name], spec) for spec in plan.outputs}

    def encode_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        out = self._run(TEXT_ENCODER, {"input_ids": input_ids, "attention_mask": attention_mask})
        return out["last_hidden_state"]

    def predict_noise(self, expert: str, latents: np.ndarray, timestep: np.ndarray, text: np.ndarray) -> np.ndarray:
        feeds = {"hidden_states": latents, "timestep": timestep, "encoder_hidden_states": text}
        return self._run(expert, feeds)["noise_pred"]

    def decode_first(self, latent: np.ndarray) -> tuple[np.ndarray, DecoderState]:
        plan = self._planner.plan(VAE_INIT, {"latent": latent.shape})
        engine = self._engines[VAE_INIT]
        with self._lock, self._device.active():
            shapes = {name: plan.spec(name).shape for name in self._cache_names}
            state = _DecoderState(shapes, [self._device.alloc(plan.spec(n).nbytes) for n in self._cache_names],
                                  [self._device.alloc(plan.spec(n).nbytes) for n in self._cache_names])
            buffers = engine.allocate(plan, self._device, skip=self._cache_names)
            buffers.update(zip(self._cache_names, state.current, strict=True))  # init writes the first caches
            self._device.upload(buffers["latent"], latent, plan.spec("latent"))
            engine.run(plan, buffers, self._device)
            frames = self._device.download(buffers["frames"], plan.spec("frames"))
        return frames, state

    def decode_next(self, latent: np.ndarray, state: DecoderState) -> tuple[np.ndarray, DecoderState]:
        if not isinstance(state, _DecoderState):
            raise BindingError(VAE_STEP, "decoder state must come from this backend's decode_first")
        plan = self._planner.plan(VAE_STEP, {"latent": latent.shape, **state.shapes})
        engine = self._engines[VAE_STEP]
        with self._lock, self._device.active():
            buffers = engine.allocate(plan, self._device, skip=[*self._cache_names, *self._cache_outputs])
            buffers.update(zip(self._cache_names, state.current, strict=True))
            buffers.update(zip(self._cache_outputs, state.spare, strict=True))
            self._device.upload(buffers["latent"], latent, plan.spec("latent"))
            engine.run(plan, buffers, self._device)
            frames = self._device.download(buffers["frames"], plan.spec("frames"))  # waits for the engine
            state.swap()
        return frames, state


def _verify_served_files(art_dir: Path, artifact: Manifest) -> None:
    """Hashes the artifact files the engines do not replace (tokenizer, scheduler config): they are read."""
    for rel, expected in artifact.files.items():
        if rel.endswith(_MODEL_SUFFIXES):
            continue
        actual = sha256_file(art_dir / rel)
        if actual != expected:
            raise ArtifactError(f"{art_dir / rel} does not match {MANIFEST_NAME} (sha256 {actual}, expected "
                                f"{expected}): the file changed after export")


def open_engines(engines_dir: Path) -> tuple[Path, Manifest, EnginesManifest]:
    """Reads engines.json and its artifact and checks they belong together; needs no TensorRT or GPU."""
    engines = read_engines_manifest(engines_dir)
    art_dir = artifact_dir(engines_dir, engines)
    # The ONNX graphs are not read when serving engines, so hashing them (tens of GB) would only slow startup;
    # what engines.json records about them is compared with the artifact's manifest instead.
    artifact = load_artifact(art_dir, verify_hashes=False)
    _verify_served_files(art_dir, artifact)
    check_artifact(engines, artifact)
    return art_dir, artifact, engines


def load_tensorrt_pipeline(engines_dir: Path, device: str) -> VideoPipeline:
    """A VideoPipeline over the engines in ``engines_dir``, limited to the requests their profiles cover."""
    engines_dir = Path(engines_dir)
    index = cuda_device_index(device)
    art_dir, artifact, engines = open_engines(engines_dir)
    backend = TensorRTBackend(engines_dir, artifact, engines, device_index=index)
    spec = artifact.spec
    identity = {
        "backend": "tensorrt",
        "model": str(engines_dir.resolve()),
        "engines_manifest_sha256": sha256_file(engines_dir / ENGINES_MANIFEST),
        "artifact": str(art_dir.resolve()),
        "manifest_sha256": sha256_file(art_dir / MANIFEST_NAME),
        "tensorrt_version": engines.runtime.tensorrt_version,
        "gpu": engines.runtime.device_name,
        "precision": engines.precision,
        # Same keys as the onnxruntime backend for the graphs, so audits can tell which export made a clip.
        **{f"{graph}_sha256": e.onnx_sha256 for graph, e in engines.engines.items()},
        **{f"{graph}_engine_sha256": e.sha256 for graph, e in engines.engines.items()},
    }
    return VideoPipeline(spec, PromptTokenizer(art_dir / TOKENIZER_NAME, spec.text_length), backend,
                         identity=identity, limits=engines.limits)
