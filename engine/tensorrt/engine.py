"""The thin layer over TensorRT 10 and pycuda: build an engine from ONNX, load it, bind a plan and run it.

Modelled on the Engine class of TensorRT's demo/Diffusion. Everything that can be decided without a GPU
(profiles, shapes, compatibility, precision policy) is decided elsewhere, in pure modules with unit tests;
this module only translates those decisions into API calls. tensorrt and pycuda are imported lazily so the
package imports (and its pure parts run) where neither is installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wanrt.engine.tensorrt.engine_manifest import BuilderOptions, EngineEntry, RuntimeInfo, verify_engine_bytes
from wanrt.engine.tensorrt.plan import BindingError, BindingPlan, TensorSpec
from wanrt.engine.tensorrt.profiles import GraphProfile
from wanrt.errors import ArtifactError, BackendUnavailableError, WanrtError

_INSTALL = "install the tensorrt extra (pip install 'wanrt[tensorrt]') on a machine with an NVIDIA GPU"
SUPPORTED_MAJOR = 10  # TensorRT 11 removed the weakly-typed precision flags (BuilderFlag.FP16, ...) used here
_LOGGER: Any = None  # TensorRT requires the logger to outlive every builder, runtime and engine made with it


# tensorrt.DataType member name -> numpy dtype name (by name: trt.nptype lacks some types, e.g. BF16).
_NUMPY_NAMES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT64": "int64", "INT32": "int32",
                "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}


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
    major = int(str(trt.__version__).split(".")[0])
    if major != SUPPORTED_MAJOR:
        raise BackendUnavailableError(f"wanrt's TensorRT backend targets TensorRT {SUPPORTED_MAJOR}.x; found "
                                      f"{trt.__version__}")
    return trt


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
    """One device allocation of at least ``nbytes`` (freed when garbage collected)."""

    def __init__(self, cuda: Any, nbytes: int) -> None:
        self.allocation = cuda.mem_alloc(max(int(nbytes), 1))
        self.nbytes = int(nbytes)

    @property
    def ptr(self) -> int:
        return int(self.allocation)


class CudaDevice:
    """A GPU, its primary context and one stream; every CUDA call is made inside ``active()``."""

    def __init__(self, index: int = 0) -> None:
        cuda = self._cuda = _pycuda()
        cuda.init()
        if not 0 <= index < cuda.Device.count():
            raise BackendUnavailableError(f"no CUDA device {index} (this machine has {cuda.Device.count()})")
        self.device = cuda.Device(index)
        # The primary context is the one the CUDA runtime, and so TensorRT, uses on this device; pycuda.autoinit
        # would create a second context whose allocations TensorRT's kernels must not touch.
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
            self._cuda.Context.pop()

    def runtime_info(self, trt: Any) -> RuntimeInfo:
        major, minor = self.device.compute_capability()
        return RuntimeInfo(str(trt.__version__), str(self.device.name()), f"{major}.{minor}")

    def alloc(self, nbytes: int) -> DeviceBuffer:
        return DeviceBuffer(self._cuda, nbytes)

    def upload(self, buffer: DeviceBuffer, array: np.ndarray, spec: TensorSpec) -> None:
        data = np.ascontiguousarray(array, dtype=spec.dtype)
        if data.shape != spec.shape or data.nbytes > buffer.nbytes:
            raise ValueError(f"{spec.name}: array {data.shape} does not fit the planned {spec.shape}")
        # Synchronous copy from pageable memory: it completes before the engine is enqueued on our stream.
        self._cuda.memcpy_htod(buffer.allocation, data)

    def download(self, buffer: DeviceBuffer, spec: TensorSpec) -> np.ndarray:
        out = np.empty(spec.shape, spec.dtype)
        self.stream.synchronize()  # the engine writes outputs asynchronously on our stream
        self._cuda.memcpy_dtoh(out, buffer.allocation)
        return out


class Engine:
    """One TensorRT engine: built from ONNX with profiles and flags, loaded, bound to buffers per plan, run."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.engine: Any = None
        self.context: Any = None
        self._runtime: Any = None  # must outlive the engine it deserialized
        self._profile = 0
        self._pool: dict[str, DeviceBuffer] = {}

    @staticmethod
    def build(onnx_path: Path, engine_path: Path, profiles: Sequence[GraphProfile], flags: Sequence[str],
              options: BuilderOptions) -> str:
        """Builds ``onnx_path`` into ``engine_path``; returns the engine's sha256. Needs TensorRT and a GPU."""
        trt = tensorrt_module()
        logger = _logger(trt)
        builder = trt.Builder(logger)
        # Weakly typed (no STRONGLY_TYPED flag): the fp32 ONNX graph takes its precision from the flags below.
        network = builder.create_network(0)
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
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default: clear it so the recorded flags are all that is set
        for name in flags:
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
        if cache_path is not None:
            cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
            config.set_timing_cache(cache, False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineBuildError(f"TensorRT failed to build {Path(engine_path).name} from "
                                   f"{Path(onnx_path).name} (its log above says why)")
        if cache_path is not None:
            cache_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
        with open(engine_path, "wb") as f:
            f.write(serialized)
        return hashlib.sha256(serialized).hexdigest()

    def load(self, entry: EngineEntry | None = None) -> None:
        """Deserializes the engine, first checking its bytes against ``entry``'s sha256 when given."""
        trt = tensorrt_module()
        data = self.path.read_bytes()
        if entry is not None:
            verify_engine_bytes(self.path, entry, data)
        self._runtime = trt.Runtime(_logger(trt))
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise ArtifactError(f"TensorRT cannot deserialize {self.path} (its log above says why)")

    def activate(self) -> None:
        """Creates the execution context (it owns the activation memory for the largest profile shape)."""
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineRunError(f"cannot create an execution context for {self.path.name} (out of GPU memory?)")
        self._profile = 0

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
                buffer = self._pool[spec.name] = device.alloc(spec.nbytes)
            buffers[spec.name] = buffer
        return buffers

    def run(self, plan: BindingPlan, buffers: Mapping[str, DeviceBuffer], device: CudaDevice) -> None:
        """Sets the plan's shapes and addresses and enqueues the engine on the device's stream (asynchronous)."""
        context, stream = self.context, device.stream.handle
        if plan.profile_index != self._profile:
            if not context.set_optimization_profile_async(plan.profile_index, stream):
                raise EngineRunError(f"{plan.graph}: cannot select optimisation profile {plan.profile_index}")
            self._profile = plan.profile_index
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
