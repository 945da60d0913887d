"""The thin layer over TensorRT and pycuda: build an engine from ONNX, load it, bind a plan and run it.

Modelled on the Engine class of TensorRT's demo/Diffusion (one small class that builds, loads, binds and
runs). One code path for TensorRT 10.14+ and 11.x: every network is strongly typed, so each layer runs in the
precision its ONNX graph gives it (TensorRT 11 removed the precision builder flags; 10.12+ deprecates them).
Execution contexts get their scratch memory from the caller (USER_MANAGED), so one buffer serves every engine.
Everything that can be decided without a GPU (profiles, shapes, compatibility, memory) is decided elsewhere,
in pure modules with unit tests. tensorrt and pycuda are imported lazily so the package imports (and its pure
parts run) where neither is installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wanrt.engine.tensorrt.engine_manifest import BuilderOptions, EngineEntry, RuntimeInfo, verify_engine_bytes
from wanrt.engine.tensorrt.plan import BindingError, BindingPlan, TensorSpec
from wanrt.engine.tensorrt.profiles import GraphProfile
from wanrt.errors import ArtifactError, BackendUnavailableError, WanrtError

_INSTALL = "install the tensorrt extra (pip install 'wanrt[tensorrt]') on a machine with an NVIDIA GPU"
# 10.14: the first ONNX parser that reads the ONNX Attention op the exported DiT uses. 12: not yet released.
MIN_VERSION = (10, 14)
SUPPORTED_MAJORS = (10, 11)
_LOGGER: Any = None  # TensorRT requires the logger to outlive every builder, runtime and engine made with it
# Scratch memory TensorRT asks for must be 256-byte aligned; cuMemAlloc's allocations are (512 bytes).
_SCRATCH_ALIGNMENT = 256


# tensorrt.DataType member name -> numpy dtype name (by name: trt.nptype lacks some types, e.g. BF16).
_NUMPY_NAMES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT64": "int64", "INT32": "int32",
                "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}

Say = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


class EngineBuildError(WanrtError):
    """TensorRT could not parse a graph or build an engine from it."""


class EngineRunError(WanrtError):
    """TensorRT failed to enqueue an engine (its log says why)."""


def tensorrt_module() -> Any:
    """The ``tensorrt`` module, or BackendUnavailableError saying how to get a usable one."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as err:  # OSError: bindings present but libnvinfer missing
        raise BackendUnavailableError(f"TensorRT is not usable here ({err}); {_INSTALL}") from None
    version = tuple(int(v) for v in str(trt.__version__).split(".")[:2])
    if version < MIN_VERSION or version[0] not in SUPPORTED_MAJORS:
        raise BackendUnavailableError(f"wanrt's TensorRT backend runs TensorRT {MIN_VERSION[0]}.{MIN_VERSION[1]} "
                                      f"to {SUPPORTED_MAJORS[-1]}.x; found {trt.__version__}")
    return trt


def cuda_problem(index: int) -> str | None:
    """Why the TensorRT backend cannot run on CUDA device ``index`` (TensorRT, pycuda, the driver), or None."""
    try:
        tensorrt_module()
        cuda = _pycuda()
    except BackendUnavailableError as err:
        return str(err)
    try:
        cuda.init()
        count = cuda.Device.count()
    except Exception as err:  # pycuda's LogicError/RuntimeError: no driver, driver too old, no device
        return f"pycuda cannot initialise CUDA: {str(err).strip().splitlines()[0] if str(err).strip() else err!r}"
    return None if index < count else f"no CUDA device {index} (this machine has {count})"


def _logger(trt: Any) -> Any:
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def _pycuda() -> Any:
    try:
        import pycuda.driver as cuda
    except (ImportError, OSError) as err:
        raise BackendUnavailableError(f"pycuda is not usable here ({err}); install the tensorrt extra "
                                      "(pip install 'wanrt[tensorrt]')") from None
    return cuda


class DeviceBuffer:
    """One device allocation of at least ``nbytes``, freed with its context current on the freeing thread.

    pycuda frees an allocation only while the context that made it is current on the calling thread; one freed
    by the garbage collector on a gRPC worker thread (the context was made on the main thread) is leaked with a
    "could not be cleaned up" warning. So the free pushes the device's context itself, whatever the thread.
    """

    def __init__(self, device: CudaDevice, nbytes: int) -> None:
        self._device = device
        with device.active():
            self.allocation: Any = device.cuda.mem_alloc(max(int(nbytes), 1))
        self.nbytes = int(nbytes)

    @property
    def ptr(self) -> int:
        return int(self.allocation)

    def free(self) -> None:
        allocation, self.allocation = self.allocation, None
        if allocation is not None:
            with self._device.active():
                allocation.free()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: the driver may already be gone
            self.free()


class CudaDevice:
    """A GPU, its retained primary context and one stream; every CUDA call is made inside ``active()``."""

    def __init__(self, index: int = 0) -> None:
        cuda = self.cuda = _pycuda()
        cuda.init()
        if not 0 <= index < cuda.Device.count():
            raise BackendUnavailableError(f"no CUDA device {index} (this machine has {cuda.Device.count()})")
        self.device = cuda.Device(index)
        # The primary context is the one the CUDA runtime, and so TensorRT, uses on this device; pycuda.autoinit
        # would create a second context whose allocations TensorRT's kernels must not touch. Retaining it leaves
        # it current nowhere: each call pushes it on its own thread and pops it after.
        self.context = self.device.retain_primary_context()
        with self.active():
            self.stream = cuda.Stream()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Makes the context current on the calling thread: gRPC workers call from threads other than the loader's."""
        self.context.push()
        try:
            yield
        finally:
            self.cuda.Context.pop()

    def runtime_info(self, trt: Any) -> RuntimeInfo:
        major, minor = self.device.compute_capability()
        return RuntimeInfo(str(trt.__version__), str(self.device.name()), f"{major}.{minor}")

    def memory(self) -> tuple[int, int]:
        """(free, total) bytes of device memory."""
        with self.active():
            free, total = self.cuda.mem_get_info()
        return int(free), int(total)

    def alloc(self, nbytes: int) -> DeviceBuffer:
        return DeviceBuffer(self, nbytes)

    def upload(self, buffer: DeviceBuffer, array: np.ndarray, spec: TensorSpec) -> None:
        data = np.ascontiguousarray(array, dtype=spec.dtype)
        if data.shape != spec.shape or data.nbytes > buffer.nbytes:
            raise ValueError(f"{spec.name}: array {data.shape} does not fit the planned {spec.shape}")
        # Synchronous copy from pageable memory: it completes before the engine is enqueued on our stream.
        self.cuda.memcpy_htod(buffer.allocation, data)

    def download(self, buffer: DeviceBuffer, spec: TensorSpec) -> np.ndarray:
        out = np.empty(spec.shape, spec.dtype)
        self.stream.synchronize()  # the engine writes outputs asynchronously on our stream
        self.cuda.memcpy_dtoh(out, buffer.allocation)
        return out


def aligned_scratch(nbytes: int) -> int:
    """``nbytes`` rounded up as the shared scratch buffer allocates it."""
    return -(-int(nbytes) // _SCRATCH_ALIGNMENT) * _SCRATCH_ALIGNMENT


class Scratch:
    """The one scratch (activation) buffer every engine's execution context borrows while it runs.

    Contexts are created USER_MANAGED, so none holds memory of its own: with calls serialised, the A14B
    engines need the largest single engine's scratch rather than the sum of all of them.
    """

    def __init__(self, device: CudaDevice) -> None:
        self._device = device
        self.buffer: DeviceBuffer | None = None

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes if self.buffer is not None else 0

    def reserve(self, nbytes: int) -> DeviceBuffer:
        """The buffer, grown to at least ``nbytes`` (the old one freed first: only one is ever held)."""
        nbytes = aligned_scratch(nbytes)
        if self.buffer is None or self.buffer.nbytes < nbytes:
            if self.buffer is not None:
                self.buffer.free()
            self.buffer = self._device.alloc(nbytes)
        return self.buffer

    def release(self) -> None:
        if self.buffer is not None:
            self.buffer.free()
            self.buffer = None


def builder_flag_names(weight_streaming: bool) -> tuple[str, ...]:
    """The BuilderFlag members set on every build. None chooses a precision (the graph does); TF32 is on by
    default and stays on: fp32 layers (norms, softmax, the fp32 VAE) use tensor cores."""
    return ("TF32", "WEIGHT_STREAMING") if weight_streaming else ("TF32",)


def load_timing_cache(trt: Any, config: Any, path: Path | None, say: Say) -> None:
    """Attaches the timing cache at ``path`` to ``config``; one the builder rejects (another GPU or TensorRT
    version) is reported and replaced by an empty cache, which this build then fills and rewrites."""
    if path is None:
        return
    data = path.read_bytes() if path.is_file() else b""
    if config.set_timing_cache(config.create_timing_cache(data), False):
        return
    say(f"timing cache {path} was rejected by TensorRT {trt.__version__} (made by another GPU or TensorRT "
        "version); starting a new one there")
    if not config.set_timing_cache(config.create_timing_cache(b""), False):
        raise EngineBuildError("TensorRT rejected an empty timing cache")


class Engine:
    """One TensorRT engine: built from ONNX with profiles, loaded, bound to buffers per plan, run."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.engine: Any = None
        self.context: Any = None
        self._runtime: Any = None  # must outlive the engine it deserialized
        self._profile = 0
        self._pool: dict[str, DeviceBuffer] = {}

    @staticmethod
    def build(onnx_path: Path, engine_path: Path, profiles: Sequence[GraphProfile], options: BuilderOptions, *,
              weight_streaming: bool = False, say: Say = _stderr) -> str:
        """Builds ``onnx_path`` into ``engine_path``; returns the engine's sha256. Needs TensorRT and a GPU."""
        trt = tensorrt_module()
        logger = _logger(trt)
        builder = trt.Builder(logger)
        # Strongly typed: every tensor keeps the type the ONNX graph gives it (bf16/fp16 graphs, Q/DQ graphs);
        # implied on TensorRT 11, where the flag still exists.
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        # parse_from_file, not parse(bytes): only with the path does the parser find <name>.onnx.data weights.
        if not parser.parse_from_file(os.fspath(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineBuildError(f"TensorRT cannot parse {Path(onnx_path).name}: {errors}")
        inputs = [network.get_input(i).name for i in range(network.num_inputs)]
        for profile in profiles:
            if sorted(profile.inputs) != sorted(inputs):
                raise EngineBuildError(f"{Path(onnx_path).name} has inputs {inputs}; the profile covers "
                                       f"{list(profile.inputs)}")
        config = builder.create_builder_config()
        for name in builder_flag_names(weight_streaming):
            config.set_flag(getattr(trt.BuilderFlag, name))
        if options.workspace_bytes:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_bytes))
        config.builder_optimization_level = int(options.optimization_level)
        for profile in profiles:
            trt_profile = builder.create_optimization_profile()
            for name, p in profile.inputs.items():
                trt_profile.set_shape(name, p.min, p.opt, p.max)
            config.add_optimization_profile(trt_profile)
        cache_path = Path(options.timing_cache) if options.timing_cache else None
        load_timing_cache(trt, config, cache_path, say)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineBuildError(f"TensorRT failed to build {Path(engine_path).name} from "
                                   f"{Path(onnx_path).name} (its log above says why)")
        if cache_path is not None:
            cache_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
        with open(engine_path, "wb") as f:
            f.write(serialized)
        return hashlib.sha256(serialized).hexdigest()

    def load(self, entry: EngineEntry | None = None, *, weight_streaming_budget: int | None = None,
             data: Any = None) -> None:
        """Deserializes the engine, first checking its bytes against ``entry``'s sha256 when given; a
        weight-streaming engine keeps ``weight_streaming_budget`` bytes of its weights on the GPU. ``data``: the
        engine's bytes as already read and checked (engine/model_files.py), deserialized as they are."""
        trt = tensorrt_module()
        if data is None:
            data = self.path.read_bytes()
            if entry is not None:
                verify_engine_bytes(self.path, entry, data)
        self._runtime = trt.Runtime(_logger(trt))
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise ArtifactError(f"TensorRT cannot deserialize {self.path} (its log above says why)")
        if weight_streaming_budget is not None:
            self.engine.weight_streaming_budget_v2 = int(weight_streaming_budget)

    @property
    def scratch_bytes(self) -> int:
        """Scratch memory the engine's largest profile needs (after any weight-streaming budget is set), rounded
        up as the shared scratch buffer allocates it."""
        return aligned_scratch(int(self.engine.device_memory_size_v2))

    @property
    def streamable_bytes(self) -> int:
        return int(self.engine.streamable_weights_size)

    def activate(self) -> None:
        """Creates the execution context, holding no memory: ``run`` lends it the shared scratch buffer."""
        trt = tensorrt_module()
        self.context = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if self.context is None:
            raise EngineRunError(f"cannot create an execution context for {self.path.name} (out of GPU memory?)")
        self._profile = 0

    def unload(self) -> None:
        """Frees the context, the engine (its weights) and the I/O buffers; call with the context current."""
        for buffer in self._pool.values():
            buffer.free()
        self._pool.clear()
        self.context = self.engine = self._runtime = None

    def io_tensors(self) -> dict[str, tuple[str, str]]:
        """name -> ("input" | "output", numpy dtype name), as the engine declares them."""
        trt = tensorrt_module()
        tensors = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            mode = "input" if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
            dtype = self.engine.get_tensor_dtype(name)
            tensors[name] = (mode, _NUMPY_NAMES.get(dtype.name, dtype.name))
        return tensors

    def allocate(self, plan: BindingPlan, device: CudaDevice, *, skip: Sequence[str] = ()) -> dict[str, DeviceBuffer]:
        """Buffers for every tensor of ``plan`` but ``skip``: grow-only, so steady-state calls allocate nothing."""
        buffers = {}
        for spec in plan.tensors:
            if spec.name in skip:
                continue
            buffer = self._pool.get(spec.name)
            if buffer is None or buffer.nbytes < spec.nbytes:
                if buffer is not None:
                    buffer.free()
                buffer = self._pool[spec.name] = device.alloc(spec.nbytes)
            buffers[spec.name] = buffer
        return buffers

    def run(self, plan: BindingPlan, buffers: Mapping[str, DeviceBuffer], device: CudaDevice, scratch: Scratch
            ) -> None:
        """Sets the plan's shapes and addresses, lends the context the scratch buffer and enqueues the engine on
        the device's stream (asynchronous)."""
        context, stream = self.context, device.stream.handle
        if plan.profile_index != self._profile:
            if not context.set_optimization_profile_async(plan.profile_index, stream):
                raise EngineRunError(f"{plan.graph}: cannot select optimisation profile {plan.profile_index}")
            self._profile = plan.profile_index
        needed = int(self.engine.get_device_memory_size_for_profile_v2(plan.profile_index))
        memory = scratch.reserve(needed)
        context.set_device_memory(memory.ptr, memory.nbytes)
        for spec in plan.inputs:
            if not context.set_input_shape(spec.name, spec.shape):
                raise BindingError(plan.graph, f"TensorRT refused shape {spec.shape} for input {spec.name!r}",
                                   tensor=spec.name)
        for spec in plan.outputs:
            # The plan derives output shapes from the graph's semantics; the engine must agree before we trust
            # the buffer sizes computed from them.
            actual = tuple(context.get_tensor_shape(spec.name))
            if actual != spec.shape:
                raise BindingError(plan.graph, f"engine output {spec.name!r} has shape {actual}, the plan expected "
                                               f"{spec.shape}", tensor=spec.name)
        for spec in plan.tensors:
            buffer = buffers[spec.name]
            if buffer.nbytes < spec.nbytes:
                raise BindingError(plan.graph, f"buffer for {spec.name!r} holds {buffer.nbytes} bytes, needs "
                                               f"{spec.nbytes}", tensor=spec.name)
            context.set_tensor_address(spec.name, buffer.ptr)
        if not context.execute_async_v3(stream):
            raise EngineRunError(f"{plan.graph}: TensorRT failed to enqueue {self.path.name} (its log says why)")
