"""onnxruntime backend: runs an exported artifact's graphs (CPU reference; CUDA where onnxruntime-gpu has it)."""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from wanrt.engine.backends.base import DecoderState
from wanrt.engine.device import cuda_driver_problem, parse_device
from wanrt.engine.model_files import FileBytes, ModelFolder
from wanrt.errors import ArtifactError, DeviceUnavailableError

_CUDA_PROVIDER_LIBRARY = "libonnxruntime_providers_cuda.so"


def cuda_problem(index: int) -> str | None:
    """Why onnxruntime cannot run on CUDA device ``index`` (provider, driver, library), or None.

    Asked before any session exists: onnxruntime's own answer is a dozen logged errors per session and then a
    silent run on the CPU provider."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (f"onnxruntime {ort.__version__} here has no CUDA provider (the CPU package is installed; "
                "install onnxruntime-gpu instead of onnxruntime)")
    problem = cuda_driver_problem(index)
    if problem is not None:
        return problem
    capi = Path(ort.__file__).parent / "capi"
    try:
        # The CUDA provider's own dependencies (CUDA runtime, cuBLAS, cuDNN): loading it names the first missing.
        ctypes.CDLL(os.fspath(capi / "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(os.fspath(capi / _CUDA_PROVIDER_LIBRARY))
    except OSError as err:
        return f"onnxruntime {ort.__version__}'s CUDA provider cannot load a library it needs: {err}"
    return None

log = logging.getLogger("wanrt.engine")


def providers_for(device: str) -> list[object]:
    """``cpu``, ``cuda`` or ``cuda:N`` -> onnxruntime's provider list (one GPU per worker)."""
    parsed = parse_device(device)
    if not parsed.is_cuda:
        return ["CPUExecutionProvider"]
    return [("CUDAExecutionProvider", {"device_id": parsed.index}), "CPUExecutionProvider"]


def session_options(session_config: Mapping[str, str]) -> object:
    """onnxruntime session options with the given config entries (an artifact's
    ``Manifest.onnxruntime_session_config``: what its quantized graphs were measured and must run with)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    for key, value in session_config.items():
        options.add_session_config_entry(key, value)
    return options


def return_freed_memory() -> None:
    """glibc raises its mmap threshold after freeing a large block (up to 32 MB), after which video-sized
    tensors come from the heap and stay in the process when freed; a fixed threshold hands them back."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass  # not glibc: its allocator has its own policy


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
# 1 MiB: what the estimate was measured with (README, "Memory admission"). Its cost is the page faults of buffers
# allocated again: 1.06x onnxruntime's defaults in CPU time on the demo clip since the graphs' attention is linear
# (1.27x when the scores were materialised; scripts/measure_memory.py --speed 17:96x96). Larger thresholds, a
# shared arena or onnxruntime's own arenas each let a measured peak pass the estimate (README lists them).
MMAP_THRESHOLD = 1 << 20


class OnnxRuntimeBackend:
    """Sessions over an artifact's graphs, each created from the bytes read (and hashed) through ``folder``.

    ``folder``: a ModelFolder (the loader's, opened once; ``file_hashes`` the manifest's, which every file read
    must match) or a path (tools and tests: read once, not checked against anything).
    """

    name = "onnxruntime"

    def __init__(self, folder: Path | ModelFolder, graph_files: Mapping[str, str], *, device: str = "cpu",
                 session_config: Mapping[str, str] | None = None,
                 file_hashes: Mapping[str, str] | None = None) -> None:
        providers = providers_for(device)
        folder = folder if isinstance(folder, ModelFolder) else ModelFolder(Path(folder), strict=False)
        return_freed_memory()
        self._scratch = tempfile.TemporaryDirectory(prefix="wanrt-graphs-")
        self._reader = GraphReader(folder, file_hashes, Path(self._scratch.name))

        def make_options() -> object:
            return _tracked_memory_options(session_config)

        self._sessions = {name: self._reader.session(name, file, make_options, providers)
                          for name, file in graph_files.items()}
        if parse_device(device).is_cuda:
            for name, session in self._sessions.items():
                if "CUDAExecutionProvider" not in session.get_providers():
                    # The probe (cuda_problem) passed but onnxruntime fell back anyway: refuse rather than serve
                    # from the CPU.
                    raise DeviceUnavailableError(device, f"onnxruntime put {graph_files[name]} on the CPU, not on "
                                                         "the GPU (its log above says why)")
        # The step decoder's cache inputs, in the order the init/step graphs emit them after the frames.
        self._cache_names = [i.name for i in self._sessions["vae_decoder_step"].get_inputs()][1:]

    @property
    def files_read(self) -> dict[str, str]:
        """Every file the sessions were made from (relative path -> sha256 of the bytes read)."""
        return dict(self._reader.digests)

    @property
    def estimate_graphs(self) -> dict[str, Path]:
        """Per graph, a private copy of the graph as it runs, weights left out (what the memory estimate reads)."""
        return dict(self._reader.estimate_graphs)

    def encode_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self._sessions["text_encoder"].run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]

    def predict_noise(self, expert: str, latents: np.ndarray, timestep: np.ndarray, text: np.ndarray) -> np.ndarray:
        feeds = {"hidden_states": latents, "timestep": timestep, "encoder_hidden_states": text}
        return self._sessions[expert].run(None, feeds)[0]

    def decode_first(self, latent: np.ndarray) -> tuple[np.ndarray, DecoderState]:
        frames, *caches = self._sessions["vae_decoder_init"].run(None, {"latent": latent})
        return frames, caches

    def decode_next(self, latent: np.ndarray, state: DecoderState) -> tuple[np.ndarray, DecoderState]:
        feeds = {"latent": latent, **dict(zip(self._cache_names, state, strict=True))}
        frames, *caches = self._sessions["vae_decoder_step"].run(None, feeds)
        return frames, caches


def _tracked_memory_options(session_config: Mapping[str, str] | None) -> object:
    options = session_options(session_config or {})
    # Memory that follows the live tensors (what engine/memory.py estimates and admission relies on): no CPU
    # arena (it keeps each session's peak for good, so stages would add up) and no memory pattern (one block per
    # run, planned with gaps); freed buffers go back to the system at once.
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    return options


class VerifiedCpuSession:
    """One graph on onnxruntime's CPU provider (a GPU backend's text encoder kept off the GPU), made from the
    bytes read once through ``folder`` and checked against ``file_hashes`` (the artifact manifest's)."""

    def __init__(self, folder: ModelFolder, file: str, file_hashes: Mapping[str, str],
                 session_config: Mapping[str, str] | None = None) -> None:
        self._scratch = tempfile.TemporaryDirectory(prefix="wanrt-graphs-")
        self._reader = GraphReader(folder, file_hashes, Path(self._scratch.name))  # holds the weights it lends
        self._session = self._reader.session(PurePosixPath(file).stem, file,
                                             lambda: _tracked_memory_options(session_config),
                                             ["CPUExecutionProvider"])

    def run(self, outputs: list[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(outputs, feeds)


# External tensors up to this size are inlined into the estimate's copy of a graph (shape tensors a Reshape
# reads); larger ones stay out: shape inference needs their type and shape, never their values.
_INLINE_FOR_ESTIMATE = 64 * 1024


class GraphReader:
    """Makes onnxruntime sessions from graph bytes read once through a ModelFolder.

    A graph with inline weights is handed over as bytes. A graph with external data: its weights are read
    (hashed) into one buffer per data file and given to onnxruntime as initializers that are views of that
    buffer, which onnxruntime uses in place (``SessionOptions.add_initializer``: no copy on the CPU; measured in
    trust/README.md, "What is verified is what is loaded"). onnxruntime still checks that an external-data file of
    that name exists next to the graph, so the session is created from a private copy of the graph's own bytes
    beside an empty file of each name: a tensor left without its initializer would read from an empty file and
    fail, never load other bytes.
    """

    def __init__(self, folder: ModelFolder, file_hashes: Mapping[str, str] | None, scratch: Path) -> None:
        self._folder = folder
        self._hashes = file_hashes
        self._scratch = scratch
        self._data: dict[str, FileBytes] = {}  # external-data file -> its bytes, shared by the graphs using it
        self.digests: dict[str, str] = {}
        self.estimate_graphs: dict[str, Path] = {}
        self.held: list[Any] = []  # the OrtValues (and so the buffers) the sessions use in place

    def _read(self, rel: str) -> FileBytes:
        if self._hashes is not None and rel not in self._hashes:
            raise ArtifactError(f"{self._folder.where(rel)} is used by a graph but not listed in the manifest")
        data = self._folder.read(rel, None if self._hashes is None else self._hashes[rel], listed_in="manifest.json")
        self.digests[rel] = data.sha256
        return data

    def session(self, name: str, file: str, make_options: Callable[[], Any], providers: list) -> Any:
        import onnx
        import onnxruntime as ort

        graph = self._read(file)
        model = onnx.ModelProto()
        try:
            model.ParseFromString(memoryview(graph.data))
        except Exception as err:  # protobuf's DecodeError and friends
            raise ArtifactError(f"{self._folder.where(file)} is not an ONNX model: {err}") from None
        external = [t for t in _initializers(model) if t.data_location == onnx.TensorProto.EXTERNAL]
        estimate = self._scratch / "estimate" / f"{name}.onnx"
        estimate.parent.mkdir(parents=True, exist_ok=True)
        try:
            if not external:
                estimate.write_bytes(graph.data)
                # Weights inline: the graph is under protobuf's 2 GB, and onnxruntime takes it as bytes only.
                session = ort.InferenceSession(graph.tobytes(), make_options(), providers=providers)
            else:
                for tensor in external:  # every data file read (and hashed) once, before any session sees it
                    self._data_of(tensor, file)
                try:
                    session = self._session(name, file, graph, external, _matmul_weights(model), make_options,
                                            providers)
                except Exception as err:
                    if _PLACEHOLDER_READ not in str(err):
                        raise
                    # This onnxruntime's graph optimizers read a weight (to fold or re-layout it): give it every
                    # tensor to copy. Correct, but the weights of this graph are held twice while it is made.
                    log.warning("onnxruntime's optimizers read the weights of %s: loading it with copied "
                                "weights (%s)", file, _first_line(err))
                    session = self._session(name, file, graph, external, set(), make_options, providers)
                estimate.write_bytes(_weightless(model, file, self._data).SerializeToString())
        except ArtifactError:
            raise
        except Exception as err:  # onnxruntime raises its own untyped errors for unreadable graphs
            raise ArtifactError(f"onnxruntime cannot load {file}: {err}") from None
        self.estimate_graphs[name] = estimate
        return session

    def _data_of(self, tensor: Any, file: str) -> np.ndarray:
        """The raw bytes of an external tensor, a view of its data file as read."""
        location, offset, length = _external_location(tensor, file)
        rel = PurePosixPath(file).parent.joinpath(location).as_posix()
        if rel not in self._data:
            self._data[rel] = self._read(rel)
        data = self._data[rel].data
        if offset + length > data.size:
            raise ArtifactError(f"{self._folder.where(file)}: tensor {tensor.name!r} lies past the end of {rel}")
        return data[offset:offset + length]

    def _session(self, name: str, file: str, graph: FileBytes, external: list, in_place: set[str],
                 make_options: Callable[[], Any], providers: list) -> Any:
        """A session whose ``in_place`` weights are views of the bytes read (onnxruntime runs them where they lie)
        and whose other external tensors onnxruntime copies in (its optimizers may read those: small constants,
        convolution kernels it re-lays out)."""
        import onnxruntime as ort

        options, held, copied = make_options(), [], ([], [])
        for tensor in external:
            array = _typed_view(self._data_of(tensor, file), tensor)
            value = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array, tensor.data_type)
            if tensor.name in in_place:
                options.add_initializer(tensor.name, value)
                held.append((array, value))  # onnxruntime reads the array's memory for the session's life
            else:
                copied[0].append(tensor.name)
                copied[1].append(value)
        if copied[0]:
            options.add_external_initializers(*copied)
        if held:
            # The CPU kernels would keep a pre-packed copy of every MatMul weight beside the buffer they were
            # given (which must outlive the session): the weights twice. Unpacked, they are held once, at a
            # measured cost in MatMul speed (README: "What is verified is what is loaded").
            options.add_session_config_entry("session.disable_prepacking", "1")
        folder = self._scratch / "sessions" / name
        folder.mkdir(parents=True)
        try:
            path = folder / PurePosixPath(file).name
            path.write_bytes(graph.data)
            for tensor in external:
                placeholder = folder / _external_location(tensor, file)[0]
                placeholder.parent.mkdir(parents=True, exist_ok=True)
                placeholder.touch()
            session = ort.InferenceSession(os.fspath(path), options, providers=providers)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.held.extend(held)
        return session


# What onnxruntime says when it reads an external tensor from the empty file standing for its data file.
_PLACEHOLDER_READ = "External initializer"


def _matmul_weights(model: Any) -> set[str]:
    """Initializers read only as the weight operand of MatMul/Gemm: what a transformer's bytes are, and what
    onnxruntime's graph optimizers leave alone (its kernels pre-pack them from the session's own tensors)."""
    uses: dict[str, set[tuple[str, int]]] = {}
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            for index, name in enumerate(node.input):
                uses.setdefault(name, set()).add((node.op_type if node.domain in ("", "ai.onnx") else "", index))
            for attribute in node.attribute:
                graphs.extend([attribute.g] if attribute.HasField("g") else list(attribute.graphs))
    return {name for name, used in uses.items() if used and used <= {("MatMul", 1), ("Gemm", 1)}}


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__


def _initializers(model: Any) -> list:
    """Every initializer of the graph and of its subgraphs (If/Loop bodies)."""
    found, graphs = [], [model.graph]
    while graphs:
        graph = graphs.pop()
        found.extend(graph.initializer)
        for node in graph.node:
            for attribute in node.attribute:
                graphs.extend([attribute.g] if attribute.HasField("g") else list(attribute.graphs))
    return found


def _external_location(tensor: Any, file: str) -> tuple[str, int, int]:
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    parts = PurePosixPath(location).parts
    if not parts or PurePosixPath(location).is_absolute() or ".." in parts:
        raise ArtifactError(f"{file}: tensor {tensor.name!r} names external data outside its folder ({location!r})")
    try:
        offset, length = int(info.get("offset", 0)), int(info["length"])
    except (KeyError, ValueError):
        raise ArtifactError(f"{file}: tensor {tensor.name!r} has no valid external-data offset/length") from None
    return location, offset, length


# ONNX element types by the width of their storage; those numpy lacks (bfloat16, float8) ride on an unsigned
# integer of that width and are given to onnxruntime with their ONNX type.
_STORAGE = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
            9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64, 16: np.uint16,
            17: np.uint8, 18: np.uint8, 19: np.uint8, 20: np.uint8}


def _typed_view(raw: np.ndarray, tensor: Any) -> np.ndarray:
    dtype = _STORAGE.get(tensor.data_type)
    if dtype is None:
        raise ArtifactError(f"tensor {tensor.name!r}: external data of ONNX type {tensor.data_type} is not supported")
    itemsize = np.dtype(dtype).itemsize
    shape = tuple(int(d) for d in tensor.dims)
    if raw.size != int(np.prod(shape, dtype=np.int64)) * itemsize:
        raise ArtifactError(f"tensor {tensor.name!r}: external data holds {raw.size} bytes, its shape needs "
                            f"{int(np.prod(shape, dtype=np.int64)) * itemsize}")
    if raw.ctypes.data % itemsize:  # unaligned in the file: this tensor alone is copied
        raw = raw.copy()
    return raw.view(dtype).reshape(shape)


def _weightless(model: Any, file: str, data: Mapping[str, FileBytes]) -> Any:
    """A copy of the graph for the memory estimate: small external tensors inlined from the bytes read, the
    rest left external (the estimate turns them into typed inputs and never reads them)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in _initializers(copy):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location, offset, length = _external_location(tensor, file)
        if length > _INLINE_FOR_ESTIMATE:
            continue
        source = data[PurePosixPath(file).parent.joinpath(location).as_posix()]
        tensor.raw_data = source.data[offset:offset + length].tobytes()
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]
    return copy
