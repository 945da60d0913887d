"""Simulated TensorRT objects behind the checked proxies: building records what was asked, running executes the
ONNX graph with onnxruntime on the bytes at the device addresses the project bound.

What the simulation enforces, as TensorRT does: a strongly typed network refuses precision builder flags; a
timing cache from another device/version is rejected by set_timing_cache (returns False); a USER_MANAGED context
runs only with device memory of at least the engine's size set; every I/O tensor needs an address and every
input a shape inside the profile; a weight-streaming budget can only be set on a weight-streaming engine; and
the CUDA context must be current on the thread that enqueues.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import weakref
from pathlib import Path
from typing import Any

import checked
import cudasim
import numpy as np
import onnx
import onnxruntime as ort
from checked import Checked, HostMemory, checked_constructor, violation

REAL: Any = None
DEVICE_KEY = "simulated-H200"
_PRECISION_FLAGS = ("FP16", "BF16", "INT8", "FP8", "INT4", "FP4")
_NP = {"float32": "FLOAT", "int64": "INT64", "float16": "HALF", "int32": "INT32", "bool": "BOOL"}
ENGINES_BUILT: list[dict] = []  # what each build asked for (network flags, builder flags), for the test
LIVE_ENGINES: weakref.WeakSet = weakref.WeakSet()  # deserialized engines not yet freed
PEAK = {"experts": 0}  # most DiT expert engines alive at once (their weights on the GPU together)


def _wrap(cls_name: str, sim: Any) -> Checked:
    return Checked(getattr(REAL, cls_name), sim)


class SimTensor:
    def __init__(self, name: str, shape: tuple, dtype: str) -> None:
        self.name, self.shape, self.dtype = name, shape, dtype


class SimNetwork:
    def __init__(self, flags: int) -> None:
        self.flags = int(flags)
        self.inputs: list[SimTensor] = []
        self.outputs: list[SimTensor] = []
        self.onnx_path: str | None = None

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_input(self, index: int) -> Checked:
        return _wrap("ITensor", self.inputs[index])

    def get_output(self, index: int) -> Checked:
        return _wrap("ITensor", self.outputs[index])


class SimParser:
    def __init__(self, network: Checked, logger: Any) -> None:
        self.network = object.__getattribute__(network, "_sim")
        self.errors: list[str] = []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> str:
        return self.errors[index]

    def parse_from_file(self, model: str) -> bool:
        graph = onnx.load(model, load_external_data=False).graph
        inits = {i.name for i in graph.initializer}
        self.network.inputs = [SimTensor(v.name, (), "") for v in graph.input if v.name not in inits]
        self.network.outputs = [SimTensor(v.name, (), "") for v in graph.output]
        self.network.onnx_path = str(Path(model).resolve())
        self.network.op_types = sorted({n.op_type for n in graph.node})  # what the parser was handed
        self.network.attention = _attention_inputs(graph)
        return True


def _attention_inputs(graph: Any) -> list[dict]:
    """Per Attention node the parser is handed: what makes its Q, K and V (a DequantizeLinear of a QuantizeLinear
    to which element type, or a plain op), and the softmax quantization recorded on it."""
    producer = {o: n for n in graph.node for o in n.output}
    types = {i.name: i.data_type for i in graph.initializer}
    found = []
    for node in graph.node:
        if node.op_type != "Attention":
            continue
        inputs = []
        for name in node.input[:3]:
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear" and len(q.input) > 2:
                inputs.append(f"QDQ:{onnx.TensorProto.DataType.Name(types.get(q.input[2], 0))}")
            else:
                inputs.append(dq.op_type if dq is not None else "input")
        meta = {m.key: m.value for m in node.metadata_props}
        found.append({"name": node.name, "qkv": inputs, "softmax": meta.get("wanrt.softmax_quantization")})
    return found


class SimProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - TensorRT's names
        self.shapes[input] = (tuple(min), tuple(opt), tuple(max))


class SimTimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)

    def serialize(self) -> HostMemory:
        return HostMemory(self.data or f"timing-cache:{REAL.__version__}:{DEVICE_KEY}".encode())

    def combine(self, input_cache: Any, ignore_mismatch: bool) -> bool:
        return True


class SimConfig:
    def __init__(self) -> None:
        self.flags = {"TF32"}  # on by default in TensorRT
        self.profiles: list[SimProfile] = []
        self.pools: dict[str, int] = {}
        self.builder_optimization_level = 3
        self.cache: SimTimingCache | None = None

    def set_flag(self, flag: Any) -> None:
        self.flags.add(flag.name)

    def clear_flag(self, flag: Any) -> None:
        self.flags.discard(flag.name)

    def get_flag(self, flag: Any) -> bool:
        return flag.name in self.flags

    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
        self.pools[pool.name] = int(pool_size)

    def add_optimization_profile(self, profile: Checked) -> int:
        self.profiles.append(object.__getattribute__(profile, "_sim"))
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: Any) -> Checked:
        return _wrap("ITimingCache", SimTimingCache(bytes(serialized_timing_cache)))

    def set_timing_cache(self, cache: Checked, ignore_mismatch: bool) -> bool:
        sim = object.__getattribute__(cache, "_sim")
        expected = f"timing-cache:{REAL.__version__}:{DEVICE_KEY}".encode()
        if sim.data and sim.data != expected and not ignore_mismatch:
            return False  # TensorRT logs the header mismatch and keeps no cache
        self.cache = sim
        return True

    def get_timing_cache(self) -> Checked | None:
        return _wrap("ITimingCache", self.cache) if self.cache is not None else None


class SimBuilder:
    def __init__(self, logger: Any) -> None:
        pass

    def create_network(self, flags: int = 0) -> Checked:
        return _wrap("INetworkDefinition", SimNetwork(flags))

    def create_builder_config(self) -> Checked:
        return _wrap("IBuilderConfig", SimConfig())

    def create_optimization_profile(self) -> Checked:
        return _wrap("IOptimizationProfile", SimProfile())

    def build_serialized_network(self, network: Checked, config: Checked) -> HostMemory | None:
        net, cfg = object.__getattribute__(network, "_sim"), object.__getattribute__(config, "_sim")
        strongly_typed = bool(net.flags & (1 << int(REAL.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
        ENGINES_BUILT.append({"onnx": net.onnx_path, "strongly_typed": strongly_typed, "flags": sorted(cfg.flags),
                              "op_types": getattr(net, "op_types", []), "attention": getattr(net, "attention", [])})
        if strongly_typed and cfg.flags & set(_PRECISION_FLAGS):
            return None  # TensorRT: precision flags are not allowed on a strongly typed network
        if not cfg.profiles:
            return None
        payload = {"onnx": net.onnx_path, "profiles": [p.shapes for p in cfg.profiles],
                   "weight_streaming": "WEIGHT_STREAMING" in cfg.flags, "version": REAL.__version__,
                   "onnx_sha256": hashlib.sha256(Path(net.onnx_path).read_bytes()).hexdigest()}
        # A serialized engine is mostly its weights: padded to the graph's weight bytes, as a real plan file is.
        header = json.dumps(payload).encode()
        return HostMemory(b"SIMENGINE" + len(header).to_bytes(8, "little") + header
                          + bytes(_graph_weight_bytes(net.onnx_path)))


def _graph_weight_bytes(path: str) -> int:
    return sum(p.stat().st_size for p in Path(path).parent.glob(Path(path).name + "*"))


class SimRuntime:
    def __init__(self, logger: Any) -> None:
        pass

    def deserialize_cuda_engine(self, serialized_engine: Any) -> Checked | None:
        data = bytes(serialized_engine)
        if not data.startswith(b"SIMENGINE"):
            return None
        start = len(b"SIMENGINE") + 8
        payload = json.loads(data[start:start + int.from_bytes(data[start - 8:start], "little")])
        if payload["version"] != REAL.__version__:
            return None
        return _wrap("ICudaEngine", SimEngine(payload, len(data)))


_SESSIONS: dict[str, ort.InferenceSession] = {}
_SESSION_LOCK = threading.Lock()


def _session(path: str) -> ort.InferenceSession:
    with _SESSION_LOCK:
        if path not in _SESSIONS:
            options = ort.SessionOptions()
            # onnxruntime's default threads, as wanrt's onnxruntime backend has: frames are compared bit for bit,
            # and MLAS splits some MatMuls differently on one thread (a drawn model, seed 161063, differed).
            _SESSIONS[path] = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return _SESSIONS[path]


class SimEngine:
    """A deserialized engine. Like TensorRT, it holds its weights in device memory (the serialized size; for a
    weight-streaming engine, its budget) from deserialisation until it is destroyed: the ledger sees them."""

    def __init__(self, payload: dict, serialized_bytes: int) -> None:
        self.payload = payload
        self.session = _session(payload["onnx"])
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = {o.name: o for o in self.session.get_outputs()}
        self.names = [*self.inputs, *self.outputs]
        self.weights = serialized_bytes
        self.device_weights = cudasim.mem_alloc(self.weights)  # needs the CUDA context current, as TensorRT does
        self._budget: int | None = None
        LIVE_ENGINES.add(self)
        experts = sum(Path(e.payload["onnx"]).name.startswith("transformer") for e in LIVE_ENGINES)
        PEAK["experts"] = max(PEAK["experts"], experts)

    def __del__(self) -> None:
        # TensorRT frees an engine's weights when the engine is destroyed (the ledger holds the allocation itself,
        # so it is freed here, under the same one-thread context rule as any other free).
        self.device_weights.free()

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    @property
    def num_optimization_profiles(self) -> int:
        return len(self.payload["profiles"])

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> Any:
        return REAL.TensorIOMode.INPUT if name in self.inputs else REAL.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> Any:
        info = self.inputs.get(name) or self.outputs[name]
        numpy_name = {"tensor(float)": "float32", "tensor(int64)": "int64"}[info.type]
        return getattr(REAL.DataType, _NP[numpy_name])

    def scratch_for(self, profile: int) -> int:
        # Activation memory grows with the profile's largest inputs; a budget below the weights adds staging.
        largest = sum(math.prod(s[2]) * 4 for s in self.payload["profiles"][profile].values())
        staging = 1 << 20 if self._budget is not None and self._budget < self.weights else 0
        return 16 * largest + staging

    @property
    def device_memory_size_v2(self) -> int:
        return max(self.scratch_for(i) for i in range(self.num_optimization_profiles))

    def get_device_memory_size_for_profile_v2(self, profile_index: int) -> int:
        return self.scratch_for(profile_index)

    @property
    def streamable_weights_size(self) -> int:
        return self.weights if self.payload["weight_streaming"] else 0

    @property
    def weight_streaming_budget_v2(self) -> int:
        return self._budget if self._budget is not None else self.streamable_weights_size

    @weight_streaming_budget_v2.setter
    def weight_streaming_budget_v2(self, value: int) -> None:
        if not self.payload["weight_streaming"]:
            raise violation("weight_streaming_budget_v2 set on an engine built without BuilderFlag.WEIGHT_STREAMING")
        self._budget = int(value)
        self.device_weights.free()
        self.device_weights = cudasim.mem_alloc(min(self._budget, self.weights))  # the rest streams from the host

    def create_execution_context(self, strategy: Any = None) -> Checked:
        if strategy is None or strategy != REAL.ExecutionContextAllocationStrategy.USER_MANAGED:
            raise violation("execution contexts must be USER_MANAGED (one shared scratch buffer), got "
                            f"{strategy!r}")
        return _wrap("IExecutionContext", SimContext(self))


class SimContext:
    def __init__(self, engine: SimEngine) -> None:
        self.engine = engine
        self.profile = 0
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.memory: tuple[int, int] | None = None

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
        self.profile = int(profile_index)
        return 0 <= self.profile < self.engine.num_optimization_profiles

    def set_device_memory(self, memory: int, size: int) -> None:
        cudasim.lookup(int(memory), int(size))  # must lie inside a live allocation
        if int(memory) % 256:
            raise violation("set_device_memory: memory must be 256-byte aligned")
        self.memory = (int(memory), int(size))

    def set_input_shape(self, name: str, shape: Any) -> bool:
        lo, _, hi = self.engine.payload["profiles"][self.profile][name]
        shape = tuple(int(v) for v in shape)
        if len(shape) != len(lo) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
            return False
        self.shapes[name] = shape
        return True

    def _output_shapes(self) -> dict[str, tuple]:
        # TensorRT infers output shapes from the input shapes; onnxruntime on zeros does the same here.
        feeds = {n: np.zeros(self.shapes[n], "int64" if i.type == "tensor(int64)" else "float32")
                 for n, i in self.engine.inputs.items()}
        key = tuple(sorted(self.shapes.items()))
        cache = self.engine.__dict__.setdefault("_shape_cache", {})
        if key not in cache:
            outs = self.engine.session.run(None, feeds)
            cache[key] = {n: o.shape for n, o in zip(self.engine.outputs, outs, strict=True)}
        return cache[key]

    def get_tensor_shape(self, name: str) -> tuple:
        if name in self.engine.inputs:
            return self.shapes[name]
        return self._output_shapes()[name]

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self.addresses[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        cudasim.require_context("execute_async_v3")
        need = self.engine.get_device_memory_size_for_profile_v2(self.profile)
        if self.memory is None or self.memory[1] < need:
            raise violation(f"execute_async_v3 on a USER_MANAGED context with device memory {self.memory}, "
                            f"needs {need} bytes")
        cudasim.lookup(*self.memory)
        missing = [n for n in self.engine.names if n not in self.addresses]
        if missing or any(n not in self.shapes for n in self.engine.inputs):
            raise violation(f"execute_async_v3 with tensors unbound: {missing}")
        feeds = {}
        for name, info in self.engine.inputs.items():
            dtype = np.dtype("int64" if info.type == "tensor(int64)" else "float32")
            shape = self.shapes[name]
            raw = cudasim.lookup(self.addresses[name], math.prod(shape) * dtype.itemsize)
            feeds[name] = np.frombuffer(raw, dtype).reshape(shape).copy()
        outs = self.engine.session.run(None, feeds)
        for name, out in zip(self.engine.outputs, outs, strict=True):
            data = np.ascontiguousarray(out, np.float32).view(np.uint8).reshape(-1)
            cudasim.lookup(self.addresses[name], data.nbytes)[:] = data.tobytes()
        return True


def install(real: Any, namespace: dict) -> None:
    """Fills the ``tensorrt`` shim module: real enums and Logger, checked stand-ins for what needs a GPU."""
    global REAL
    REAL = real
    checked.set_real_module(real)
    namespace["__version__"] = real.__version__
    namespace["Builder"] = checked_constructor(real.Builder, SimBuilder)
    namespace["Runtime"] = checked_constructor(real.Runtime, SimRuntime)
    namespace["OnnxParser"] = checked_constructor(real.OnnxParser, SimParser)

    def module_getattr(name: str) -> Any:
        checked.use(name)
        if not hasattr(real, name):
            raise violation(f"module tensorrt has no attribute {name!r} in TensorRT {real.__version__}")
        value = getattr(real, name)
        return _EnumProxy(value) if hasattr(value, "__members__") else value

    namespace["__getattr__"] = module_getattr


class _EnumProxy:
    """A real enum type whose member lookups are recorded and checked (BuilderFlag.BF16 is gone in 11)."""

    def __init__(self, enum: Any) -> None:
        self._enum = enum

    def __getattr__(self, name: str) -> Any:
        return checked.real_attribute(self._enum, name)

    def __eq__(self, other: object) -> bool:
        return self._enum == other

    def __hash__(self) -> int:
        return hash(self._enum)
