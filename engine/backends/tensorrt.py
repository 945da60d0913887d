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

from wanrt.engine.artifact import MANIFEST_NAME, TOKENIZER_NAME, Manifest, open_artifact
from wanrt.engine.backends.base import DecoderState
from wanrt.engine.defaults import defaults_for_artifact
from wanrt.engine.device import parse_device, resolve_device
from wanrt.engine.model_files import FileBytes, ManifestCheck, ModelFolder, read_manifest_bytes
from wanrt.engine.pipeline import VideoPipeline
from wanrt.engine.tensorrt.engine_manifest import (
    ENGINES_MANIFEST,
    ENGINES_NOT_FOUND,
    EnginesManifest,
    artifact_dir,
    check_artifact,
    check_runtime,
    parse_engines_manifest,
)
from wanrt.engine.tensorrt.memory import EngineMemory, plan_memory, requested_text_encoder
from wanrt.engine.tensorrt.plan import BindingError, Planner
from wanrt.engine.tensorrt.profiles import TEXT_ENCODER, VAE_INIT, VAE_STEP, vae_cache_layout
from wanrt.engine.text import PromptTokenizer
from wanrt.errors import ArtifactError, InvalidRequestError, SignatureError

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
    travel through the host and no device-to-device copy is needed (one set cannot do: a TensorRT engine does
    not update its inputs in place). Each video gets its own pair, allocated at its first latent frame and freed
    with the state after its last (on whichever thread drops it: DeviceBuffer pushes the context to free): the
    memory plan counts it in the decode stage only, where it shares the room a released text encoder left, and
    concurrent decodes on one backend cannot clobber each other's caches.
    """

    shapes: dict[str, tuple[int, ...]]  # step-input cache name -> shape
    current: list  # DeviceBuffer per cache, holding the caches for the next frame
    spare: list

    def swap(self) -> None:
        self.current, self.spare = self.spare, self.current


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, engines_dir: Path, artifact: Manifest, engines: EnginesManifest, *,
                 device_index: int = 0, folder: ModelFolder | None = None,
                 artifact_folder: ModelFolder | None = None) -> None:
        from wanrt.engine.tensorrt.engine import CudaDevice, Scratch, tensorrt_module

        trt = tensorrt_module()
        self._device = CudaDevice(device_index)
        check_runtime(engines, self._device.runtime_info(trt))
        self._planner = Planner(artifact, {graph: e.profiles for graph, e in engines.engines.items()})
        layout = vae_cache_layout(artifact.vae_decoder)
        self._cache_names = [name for name, _, _ in layout]
        self._cache_outputs = list(artifact.vae_decoder["cache"]["output_names"])
        self._dir = Path(engines_dir)
        # Every engine is read once, through the folder opened once, hashed as it is read, and deserialised from
        # that buffer (engine/model_files.py): the bytes checked are the bytes TensorRT gets.
        self._folder = folder or ModelFolder(self._dir, strict=False)
        self._entries = engines.engines
        self._experts = artifact.spec.experts
        self._memory = engines.memory
        text_mode = self._memory.text_encoder
        # Execution contexts hold no memory of their own (USER_MANAGED) and are not safe to share between
        # threads: calls are serialised, and every engine borrows this one scratch buffer while it runs.
        self._lock = threading.Lock()
        self._scratch = Scratch(self._device)
        self._engines: dict = {}
        # Engines that come and go (the second expert per stage, a released text encoder) keep the verified
        # buffer they were read into and are deserialised from it when needed: never read from disk again, so a
        # file changed after start changes nothing that runs, and no read or hash per video.
        self._host: dict[str, FileBytes] = {}
        # Checked before any engine loads: a text encoder graph onnxruntime cannot run on the CPU is refused first.
        self._text_session = None
        if text_mode == "cpu":
            self._text_session = _cpu_text_encoder(
                artifact_folder or ModelFolder(artifact_dir(self._dir, engines), strict=False), artifact)
        with self._device.active():
            sizes = []
            # The first stage's expert last: under per-stage the others are loaded, measured and unloaded before
            # it, so two experts never share the GPU (at A14B size they would not fit). A text encoder that may be
            # released goes back off the GPU before the experts come.
            order = [g for g in engines.engines if g not in self._experts] + list(reversed(self._experts))
            for graph in order:
                if graph == TEXT_ENCODER and text_mode == "cpu":  # the engine is not run: its size is planned
                    entry = self._entries[graph]
                    sizes.append(EngineMemory(graph, (self._dir / entry.file).stat().st_size, 0, 0))
                    continue
                data = self._read(graph)
                engine = self._load(graph, data)
                sizes.append(self._sizes(graph, engine, data.data.nbytes))
                swapped = (graph == TEXT_ENCODER and text_mode != "resident") or (
                    self._memory.residency == "per-stage" and graph in self._experts)
                if swapped:
                    self._host[graph] = data
                    if graph != self._experts[0]:  # the first stage's expert stays for the first video
                        self._unload(graph)
                del data  # unless kept above, the host buffer goes: TensorRT holds the engine's weights now
            # The build planned from estimates; the engines now say what they really need.
            self.memory_plan = plan_memory(sizes, self._experts, self._device.memory()[1],
                                           residency=self._memory.residency,
                                           streaming_budget=self._memory.weight_streaming_budget,
                                           text_encoder=text_mode, vae_caches=self._planner.cache_bytes())
            if self.memory_plan.text_encoder == "resident" and TEXT_ENCODER in self._host:
                self._load(TEXT_ENCODER, self._host.pop(TEXT_ENCODER))
            self._scratch.reserve(self.memory_plan.scratch)

    def _read(self, graph: str) -> FileBytes:
        """The engine file's bytes, hashed as read and refused unless they match engines.json."""
        entry = self._entries[graph]
        return self._folder.read(entry.file, entry.sha256, listed_in=ENGINES_MANIFEST)

    def _load(self, graph: str, data: FileBytes) -> object:
        """Deserialises ``graph`` from ``data`` (verified by ``_read``, at start) and sizes its I/O buffers."""
        from wanrt.engine.tensorrt.engine import Engine

        entry = self._entries[graph]
        engine = Engine(self._dir / entry.file)
        engine.load(entry, weight_streaming_budget=self._memory.weight_streaming_budget
                    if entry.weight_streaming else None, data=data.data)
        engine.activate()
        self._planner.check_engine_io(graph, engine.io_tensors())
        # I/O buffers at the largest shapes now, as the plan counts them: no allocation while requests run.
        for profile in self._entries[graph].profiles:
            plan = self._planner.plan(graph, {name: p.max for name, p in profile.inputs.items()})
            engine.allocate(plan, self._device, skip=[*self._cache_names, *self._cache_outputs])
        self._engines[graph] = engine
        return engine

    def _unload(self, graph: str) -> None:
        self._engines.pop(graph).unload()

    def _sizes(self, graph: str, engine: object, serialized_bytes: int) -> EngineMemory:
        # A serialized engine is its weights plus a little metadata; streaming engines report them directly.
        weights = engine.streamable_bytes if self._entries[graph].weight_streaming else serialized_bytes
        return EngineMemory(graph, int(weights), engine.scratch_bytes, self._planner.io_bytes(graph))

    def _engine(self, graph: str) -> object:
        """The engine for ``graph``, deserialised from host memory if it is not on the GPU (the other expert
        swapped out first under the per-stage residency)."""
        engine = self._engines.get(graph)
        if engine is None:
            if graph in self._experts:
                for other in [g for g in self._experts if g in self._engines]:
                    self._unload(other)
            engine = self._load(graph, self._host[graph])
        return engine

    def _run(self, graph: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        plan = self._planner.plan(graph, {name: a.shape for name, a in feeds.items()})  # before any GPU work
        with self._lock, self._device.active():
            engine = self._engine(graph)
            try:
                buffers = engine.allocate(plan, self._device)
                for spec in plan.inputs:
                    self._device.upload(buffers[spec.name], feeds[spec.name], spec)
                engine.run(plan, buffers, self._device, self._scratch)
                return {spec.name: self._device.download(buffers[spec.name], spec) for spec in plan.outputs}
            finally:
                if graph == TEXT_ENCODER and self.memory_plan.text_encoder == "release" and graph in self._engines:
                    self._unload(graph)  # its room is the denoising and decoding stages'

    def close(self) -> None:
        """Frees every engine, buffer and the scratch now (also what garbage collection would do)."""
        with self._lock, self._device.active():
            for graph in list(self._engines):
                self._unload(graph)
            self._scratch.release()

    def encode_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if self._text_session is not None:
            self._planner.plan(TEXT_ENCODER, {"input_ids": input_ids.shape, "attention_mask": attention_mask.shape})
            return self._text_session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]
        out = self._run(TEXT_ENCODER, {"input_ids": input_ids, "attention_mask": attention_mask})
        return out["last_hidden_state"]

    def predict_noise(self, expert: str, latents: np.ndarray, timestep: np.ndarray, text: np.ndarray) -> np.ndarray:
        feeds = {"hidden_states": latents, "timestep": timestep, "encoder_hidden_states": text}
        return self._run(expert, feeds)["noise_pred"]

    def decode_first(self, latent: np.ndarray) -> tuple[np.ndarray, DecoderState]:
        plan = self._planner.plan(VAE_INIT, {"latent": latent.shape})
        with self._lock, self._device.active():
            engine = self._engine(VAE_INIT)
            shapes = {name: plan.spec(name).shape for name in self._cache_names}
            state = _DecoderState(shapes, [self._device.alloc(plan.spec(n).nbytes) for n in self._cache_names],
                                  [self._device.alloc(plan.spec(n).nbytes) for n in self._cache_names])
            buffers = engine.allocate(plan, self._device, skip=self._cache_names)
            buffers.update(zip(self._cache_names, state.current, strict=True))  # init writes the first caches
            self._device.upload(buffers["latent"], latent, plan.spec("latent"))
            engine.run(plan, buffers, self._device, self._scratch)
            frames = self._device.download(buffers["frames"], plan.spec("frames"))
        return frames, state

    def decode_next(self, latent: np.ndarray, state: DecoderState) -> tuple[np.ndarray, DecoderState]:
        if not isinstance(state, _DecoderState):
            raise BindingError(VAE_STEP, "decoder state must come from this backend's decode_first")
        plan = self._planner.plan(VAE_STEP, {"latent": latent.shape, **state.shapes})
        with self._lock, self._device.active():
            engine = self._engine(VAE_STEP)
            buffers = engine.allocate(plan, self._device, skip=[*self._cache_names, *self._cache_outputs])
            buffers.update(zip(self._cache_names, state.current, strict=True))
            buffers.update(zip(self._cache_outputs, state.spare, strict=True))
            self._device.upload(buffers["latent"], latent, plan.spec("latent"))
            engine.run(plan, buffers, self._device, self._scratch)
            frames = self._device.download(buffers["frames"], plan.spec("frames"))  # waits for the engine
            state.swap()
        return frames, state


def _memory_options(engines: EnginesManifest, residency: str | None, text_encoder: str | None) -> EnginesManifest:
    """The engines' recorded placement, with what generate/serve asked for instead: resident and per-stage swap
    freely at load; weight streaming is built into the experts, so it is neither added nor removed here."""
    recorded = engines.memory
    requested_text_encoder(text_encoder)
    if residency is not None:
        if residency not in ("resident", "per-stage"):
            raise InvalidRequestError("residency", f"must be resident or per-stage at load, got {residency!r} "
                                                   "(weight streaming is chosen by `wanrt build-engines`)")
        if recorded.residency == "streaming":
            raise InvalidRequestError("residency", "these engines were built with weight streaming; rebuild "
                                                   f"them with `wanrt build-engines --residency {residency}`")
    memory = dataclasses.replace(recorded, residency=residency or recorded.residency,
                                 text_encoder=text_encoder or recorded.text_encoder)
    return dataclasses.replace(engines, memory=memory)


def _cpu_text_encoder(art_folder: ModelFolder, artifact: Manifest) -> object:
    """An onnxruntime CPU session on the artifact's text encoder graph (``--text-encoder cpu``), checked first:
    onnxruntime's CPU provider has no bf16 kernels, and the graph (read once through the artifact folder, hashed
    against its manifest) must be the one the engine was built from."""
    from wanrt.engine.backends.onnxruntime import VerifiedCpuSession
    from wanrt.engine.graph_forms import onnxruntime_file

    entry = artifact.graphs[TEXT_ENCODER]
    if entry.get("dtype") == "bf16":
        raise InvalidRequestError("text_encoder", "cpu runs the artifact's text encoder graph with onnxruntime, "
                                                  "whose CPU provider has no bf16 kernels, and this one is bf16: "
                                                  "use release, or export the text encoder in fp32 or fp16")
    return VerifiedCpuSession(art_folder, onnxruntime_file(entry), artifact.files,
                              artifact.onnxruntime_session_config)


@dataclasses.dataclass
class OpenedEngines:
    """An engines folder and its artifact, each opened once; what the engines need read and checked."""

    folder: ModelFolder
    artifact_folder: ModelFolder
    artifact: Manifest
    engines: EnginesManifest
    engines_sha256: str  # of engines.json's bytes as read
    manifest_sha256: str  # of the artifact's manifest.json as read
    tokenizer: bytes


def open_engines_folder(engines_dir: Path, check: ManifestCheck | None = None) -> OpenedEngines:
    """Reads engines.json and its artifact and checks they belong together; needs no TensorRT or GPU.

    ``check`` (``--trust``) sees engines.json's bytes first; the artifact is then held to the manifest hash the
    (signed) engines.json records, and every file is read strictly inside its folder."""
    folder = ModelFolder(engines_dir, strict=check is not None)
    raw = read_manifest_bytes(folder, ENGINES_MANIFEST, check, not_found=ENGINES_NOT_FOUND)
    engines = parse_engines_manifest(folder.where(ENGINES_MANIFEST), raw.tobytes())
    art_folder = ModelFolder(artifact_dir(engines_dir, engines), strict=check is not None)
    artifact, manifest_sha256 = open_artifact(art_folder)
    bound = engines.artifact["manifest_sha256"]
    if check is not None and manifest_sha256 != bound:
        raise SignatureError(f"{art_folder.where(MANIFEST_NAME)} is not the artifact manifest the signed engines "
                             f"were built from (sha256 {manifest_sha256}, signed {bound})")
    # The ONNX graphs are not read when serving engines, so hashing them (tens of GB) would only slow startup;
    # what engines.json records about them is compared with the artifact's manifest instead. The files that are
    # read (tokenizer, scheduler config) are hashed.
    for rel, expected in artifact.files.items():
        if not rel.endswith(_MODEL_SUFFIXES) and rel != TOKENIZER_NAME:
            art_folder.digest(rel, expected, listed_in=MANIFEST_NAME)
    if TOKENIZER_NAME not in artifact.files:
        raise ArtifactError(f"{art_folder.where(MANIFEST_NAME)} does not list {TOKENIZER_NAME}")
    tokenizer = art_folder.read(TOKENIZER_NAME, artifact.files[TOKENIZER_NAME], listed_in=MANIFEST_NAME)
    check_artifact(engines, artifact)
    return OpenedEngines(folder, art_folder, artifact, engines, raw.sha256, manifest_sha256, tokenizer.tobytes())


def open_engines(engines_dir: Path) -> tuple[Path, Manifest, EnginesManifest]:
    """Reads engines.json and its artifact and checks they belong together; needs no TensorRT or GPU."""
    opened = open_engines_folder(engines_dir)
    return opened.artifact_folder.path, opened.artifact, opened.engines


def load_tensorrt_pipeline(engines_dir: Path, device: str, check: ManifestCheck | None = None, *,
                           residency: str | None = None, text_encoder: str | None = None) -> VideoPipeline:
    """A VideoPipeline over the engines in ``engines_dir``, limited to the requests their profiles cover."""
    from wanrt.engine.tensorrt.engine import cuda_problem

    engines_dir = Path(engines_dir)
    if parse_device(device).kind == "cpu":
        cuda_device_index(device)  # refused: TensorRT has no CPU path
    opened = open_engines_folder(engines_dir, check)
    artifact, engines = opened.artifact, opened.engines
    index = cuda_device_index(resolve_device(device, "tensorrt", cuda_problem, cpu_capable=False))
    backend = TensorRTBackend(engines_dir, artifact, _memory_options(engines, residency, text_encoder),
                              device_index=index, folder=opened.folder, artifact_folder=opened.artifact_folder)
    spec = artifact.spec
    identity = {
        "backend": "tensorrt",
        "model": str(engines_dir.resolve()),
        "engines_manifest_sha256": opened.engines_sha256,
        "artifact": str(opened.artifact_folder.path.resolve()),
        "manifest_sha256": opened.manifest_sha256,
        "tensorrt_version": engines.runtime.tensorrt_version,
        "gpu": engines.runtime.device_name,
        "precision": engines.precision,
        # Same keys as the onnxruntime backend for the graphs, so audits can tell which export made a clip.
        **{f"{graph}_sha256": e.onnx_sha256 for graph, e in engines.engines.items()},
        # The engines deserialized: each read once and refused unless its bytes hash to this.
        **{f"{graph}_engine_sha256": e.sha256 for graph, e in engines.engines.items()},
    }
    return VideoPipeline(spec, PromptTokenizer(opened.tokenizer, spec.text_length,
                                               where=opened.artifact_folder.where(TOKENIZER_NAME)), backend,
                         identity=identity, limits=engines.limits,
                         defaults=defaults_for_artifact(artifact.defaults, spec))
