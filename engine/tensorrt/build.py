"""`wanrt build-engines`: an exported artifact -> a folder of TensorRT engines plus engines.json.

``plan_build`` decides everything (profiles, each graph's precision as its ONNX graph states it, quantization
checks, the GPU memory plan) without TensorRT, so bad arguments fail in seconds and the decisions are
unit-tested; ``build_engines`` then hands each decision to engine.Engine.build and publishes the folder
atomically, like `wanrt export`.

Precision is the graph's: the networks are strongly typed (the only kind TensorRT 11 builds), so a bf16 export
gives bf16 engines, a Q/DQ export int8/fp8 ones, an fp32 export fp32 (TF32) ones. Choose it at export time.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import os
from collections.abc import Callable
from pathlib import Path

from wanrt.engine.artifact import Manifest, load_artifact
from wanrt.engine.precisions import MIN_CAPABILITY, QUANTIZATION_MODES
from wanrt.engine.request import Limits
from wanrt.engine.tensorrt.engine_manifest import (
    ENGINE_SUFFIX,
    FORMAT_VERSION,
    BuilderOptions,
    EngineEntry,
    EnginesManifest,
    MemoryOptions,
    write_engines_manifest,
)
from wanrt.engine.tensorrt.memory import (
    EngineMemory,
    MemoryPlan,
    dit_scratch,
    plan_memory,
    requested_residency,
    requested_text_encoder,
    vae_scratch,
)
from wanrt.engine.tensorrt.plan import Planner
from wanrt.engine.tensorrt.profiles import (
    TEXT_ENCODER,
    VAE_STEP,
    GraphProfile,
    VideoShape,
    compute_profiles,
    serving_limits,
)
from wanrt.errors import ArtifactError, InvalidRequestError
from wanrt.publish import destination, publishing

_QUANTIZED = set(QUANTIZATION_MODES)

Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class GraphBuild:
    """What to build for one graph."""

    graph: str
    onnx_file: str
    onnx_sha256: str
    engine_file: str
    precision: str
    weight_streaming: bool
    profiles: tuple[GraphProfile, ...]
    memory: EngineMemory  # estimated before building


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    art_dir: Path
    manifest: Manifest
    limits: Limits
    opt: VideoShape
    graphs: tuple[GraphBuild, ...]
    memory: MemoryPlan | None  # None when planned without a GPU

    @property
    def precision(self) -> str:
        """The experts' precision: what the engines folder is known by."""
        experts = [b.precision for b in self.graphs if b.graph in self.manifest.spec.experts]
        return experts[0] if experts else self.graphs[0].precision


def check_precision_supported(precision: str, compute_capability: tuple[int, int], device_name: str = "this GPU"
                              ) -> None:
    """InvalidRequestError("model") when the GPU's tensor cores lack ``precision`` (a graph's element type)."""
    needed = MIN_CAPABILITY.get(precision)
    if needed is not None and compute_capability < needed:
        raise InvalidRequestError("model", f"the artifact's graphs are {precision}, which needs compute capability "
                                           f"{needed[0]}.{needed[1]} or newer; {device_name} is "
                                           f"{compute_capability[0]}.{compute_capability[1]} (export in fp16 or "
                                           "fp32 for this GPU)")


@dataclasses.dataclass(frozen=True)
class GraphFacts:
    """What a graph's ONNX says about its precision and weights, read without its external weights."""

    float_type: str  # the float type most weight bytes are stored in: fp32, bf16 or fp16
    quantized: frozenset[str]  # Q/DQ element types (int8, fp8, ...)
    weight_bytes: int  # every initializer and constant, each at its own dtype's size (fp32 islands at 4 bytes)
    matrix_dims: tuple[tuple[int, ...], ...]  # shapes of the 2-D and conv weights (for the scratch estimate)
    compute_itemsize: int = 4  # bytes per value of the matrix products' outputs (the activation dtype)
    stream_itemsize: int = 4  # bytes per value of the normalisations' outputs (the residual stream's dtype)

    @property
    def precision(self) -> str:
        return next(iter(self.quantized)) if len(self.quantized) == 1 else self.float_type


def read_graph_facts(path: Path) -> GraphFacts:
    import onnx

    model = onnx.load(os.fspath(path), load_external_data=False)
    inits = [*model.graph.initializer, *(n.attribute[0].t for n in model.graph.node
                                         if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value")]
    by_type: collections.Counter[str] = collections.Counter()
    total = 0
    for init in inits:
        itemsize = _ITEMSIZE.get(init.data_type, 1)
        numel = 1
        for d in init.dims:
            numel *= int(d)
        total += numel * itemsize
        name = _FLOAT_NAMES.get(init.data_type)
        if name is not None:
            by_type[name] += numel * itemsize
    float_type = by_type.most_common(1)[0][0] if by_type else "fp32"
    dims = tuple(tuple(int(d) for d in i.dims) for i in model.graph.initializer if len(i.dims) in (2, 5))
    compute, stream = activation_itemsizes(model)
    return GraphFacts(float_type, frozenset(onnx_quantization(path)), total, dims, compute, stream)


_COMPUTE_OPS = ("MatMul", "Gemm", "Conv", "Attention")
_NORM_OPS = ("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization", "GroupNormalization")


def activation_itemsizes(model: object) -> tuple[int, int]:
    """(compute, stream) bytes per activation value, from the graph's own types (ONNX type inference on the
    structure, no weights): the dtype most matrix products write, and the dtype most normalisations write (the
    residual stream and modulation they feed: fp32 in wanrt's bf16 exports; the compute dtype where the graph
    has no normalisation operator)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}
    types.update({i.name: i.data_type for i in graph.initializer})

    def itemsize(ops: tuple[str, ...]) -> int | None:
        found = collections.Counter(types.get(n.output[0]) for n in graph.node if n.op_type in ops and n.output)
        floats = [(count, t) for t, count in found.items() if t in _FLOAT_NAMES]
        return _ITEMSIZE[max(floats)[1]] if floats else None

    compute = itemsize(_COMPUTE_OPS) or 4
    return compute, itemsize(_NORM_OPS) or compute


def graph_facts(path: Path, entry: dict) -> GraphFacts:
    """The graph's facts, with its float type as the export recorded it when it did (`wanrt export --dtype`):
    counting weight bytes misreads a small bf16 graph whose fp32-kept embeddings outweigh its bf16 blocks."""
    facts = read_graph_facts(path)
    recorded = entry.get("dtype")
    return dataclasses.replace(facts, float_type=recorded) if recorded in _FLOAT_NAMES.values() else facts


_FLOAT_NAMES = {1: "fp32", 16: "bf16", 10: "fp16"}  # onnx.TensorProto FLOAT, BFLOAT16, FLOAT16
_ITEMSIZE = {1: 4, 16: 2, 10: 2, 11: 8, 7: 8, 6: 4, 3: 1, 2: 1, 9: 1, 17: 1, 19: 1, 22: 1, 21: 1}


def onnx_quantization(path: Path) -> set[str]:
    """Element types ("int8", "fp8", "int4", ...) quantized by the Q/DQ nodes of an ONNX graph: those of
    QuantizeLinear outputs (activations) and of constant DequantizeLinear inputs (weights stored quantized,
    as `wanrt quantize` writes them).

    Reads the graph only (no external weights): element types are metadata, so this stays cheap even for a
    14B-parameter model.
    """
    import onnx

    model = onnx.load(os.fspath(path), load_external_data=False)
    nodes = [*model.graph.node, *(n for f in model.functions for n in f.node)]
    types = {init.name: init.data_type for init in model.graph.initializer}
    for node in nodes:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    names = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "int8", onnx.TensorProto.INT4: "int4",
             onnx.TensorProto.UINT4: "int4", onnx.TensorProto.FLOAT8E4M3FN: "fp8", onnx.TensorProto.FLOAT8E5M2: "fp8"}
    found = set()
    for node in nodes:
        if node.op_type in ("TRT_FP8QuantizeLinear", "TRT_FP8DequantizeLinear"):  # ModelOpt's older FP8 ops
            found.add("fp8")
        elif node.op_type == "QuantizeLinear":
            # The zero point's type is the output type; without one it is uint8 (ONNX's default).
            zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else None
            dtype = types.get(zero_point, onnx.TensorProto.UINT8) if zero_point else onnx.TensorProto.UINT8
            found.add(names.get(dtype, f"type {dtype}"))
        elif node.op_type == "DequantizeLinear" and node.input[0] in types:
            dtype = types[node.input[0]]
            found.add(names.get(dtype, f"type {dtype}"))
    return found


def _graph_precision(onnx_file: str, facts: GraphFacts) -> str:
    """The one precision ``onnx_file`` computes in; a graph mixing Q/DQ types is refused."""
    if len(facts.quantized) > 1 or not facts.quantized <= _QUANTIZED:
        raise InvalidRequestError("model", f"{onnx_file} has Q/DQ nodes of {sorted(facts.quantized)}; TensorRT "
                                           "engines are built from int8 or fp8 Q/DQ graphs only, one type per graph")
    return facts.precision


def estimate_memory(graph: str, facts: GraphFacts, profile: GraphProfile, manifest: Manifest,
                    precision: str, io: int = 0) -> EngineMemory:
    """Weights (exact, from the initializers at their dtypes), I/O buffers (``io``, from the binding plan at the
    profile's largest shapes) and scratch (the activation model of memory.py, at the graph's activation dtypes)
    of one engine. ``precision`` is kept for callers; the dtypes come from the graph."""
    spec = manifest.spec
    itemsize, stream = facts.compute_itemsize, facts.stream_itemsize
    matrices = [d for d in facts.matrix_dims if len(d) == 2]
    counts = collections.Counter(x for d in matrices for x in d)
    # The feed-forward width repeats in every block; a vocabulary (the text encoder's embedding) appears once.
    ffn = max((x for x, n in counts.items() if n >= 2), default=1)
    dim = counts.most_common(1)[0][0] if counts else 1
    if graph in spec.experts:
        batch, _, frames, height, width = profile.inputs["hidden_states"].max
        tokens = (frames // spec.patch_size[0]) * (height // spec.patch_size[1]) * (width // spec.patch_size[2])
        scratch = dit_scratch(tokens, dim, ffn, itemsize, batch, stream_itemsize=stream)
    elif graph == TEXT_ENCODER:
        batch, length = profile.inputs["input_ids"].max
        scratch = dit_scratch(length, dim, ffn, itemsize, batch, stream_itemsize=stream)
    else:
        vae = manifest.vae_decoder
        _, _, _, h, w = profile.inputs["latent"].max
        scale = int(vae["spatial_scale"])
        out = int(vae["out_channels"])
        # The last convolution maps the widest full-resolution stage's input to RGB; the stage before it is twice
        # as wide (Wan's decoder: 96 -> 3 after a 192-channel upsampling stage).
        last = [d[1] for d in facts.matrix_dims if len(d) == 5 and d[0] == out]
        channels = 2 * max(last, default=out)
        frames = int(vae["temporal_stride"]) if graph == VAE_STEP else 1
        scratch = vae_scratch(frames, h * scale, w * scale, channels, itemsize)
    return EngineMemory(graph, facts.weight_bytes, scratch, io)


def plan_build(
    art_dir: Path,
    manifest: Manifest,
    limits: Limits,
    opt: VideoShape | None = None,
    *,
    compute_capability: tuple[int, int] | None = None,
    device_name: str = "this GPU",
    gpu_bytes: int | None = None,
    memory: MemoryOptions | None = None,
) -> BuildPlan:
    """Decides every engine to build; raises before any TensorRT work when the request cannot be served.

    ``compute_capability`` and ``gpu_bytes`` None skip the GPU-dependent checks (the CLI calls this once before
    touching the GPU, to fail fast, and again with the real device).
    """
    memory = memory or MemoryOptions()
    requested_residency(memory.residency, memory.weight_streaming_budget)
    requested_text_encoder(memory.text_encoder)
    profiles = compute_profiles(manifest, limits, opt)
    planner = Planner(manifest, {graph: (profile,) for graph, profile in profiles.items()})
    spec = manifest.spec
    builds = []
    for graph, entry in manifest.graphs.items():
        facts = graph_facts(Path(art_dir) / entry["file"], entry)
        precision = _graph_precision(entry["file"], facts)
        if compute_capability is not None:
            check_precision_supported(precision, compute_capability, device_name)
        streaming = memory.weight_streaming_budget is not None and graph in spec.experts
        builds.append(GraphBuild(graph, entry["file"], manifest.files[entry["file"]], graph + ENGINE_SUFFIX,
                                 precision, streaming, (profiles[graph],),
                                 estimate_memory(graph, facts, profiles[graph], manifest, precision,
                                                 planner.io_bytes(graph))))
    mem_plan = None
    if gpu_bytes is not None:
        # Not told how: weight streaming is a candidate too, chosen where it costs less than swapping experts.
        mem_plan = plan_memory([b.memory for b in builds], spec.experts, gpu_bytes, residency=memory.residency,
                               streaming_budget=memory.weight_streaming_budget, text_encoder=memory.text_encoder,
                               vae_caches=planner.cache_bytes(), allow_streaming=memory.residency is None)
        if mem_plan.residency == "streaming":
            builds = [dataclasses.replace(b, weight_streaming=b.graph in spec.experts) for b in builds]
    chosen = opt or VideoShape(limits.max_frames, limits.max_height, limits.max_width)
    return BuildPlan(Path(art_dir), manifest, limits, chosen, tuple(builds), mem_plan)


def build_engines(
    art_dir: Path,
    out_dir: Path,
    *,
    max_frames: int,
    max_height: int,
    max_width: int,
    min_size: int = Limits.min_size,
    opt: VideoShape | None = None,
    options: BuilderOptions | None = None,
    memory: MemoryOptions | None = None,
    device_index: int = 0,
    progress: Progress | None = None,
) -> EnginesManifest:
    """Builds every engine for the artifact at ``art_dir`` into ``out_dir`` (absent or empty), published only
    if all of them built; the engines serve every request up to the given maxima. Needs TensorRT and a GPU."""
    from wanrt.engine.tensorrt.engine import CudaDevice, Engine, tensorrt_module

    say = progress or (lambda _message: None)
    options = options or BuilderOptions()
    art_dir = Path(art_dir)
    say("checking the artifact")
    manifest = load_artifact(art_dir)
    limits = serving_limits(manifest.spec, max_frames=max_frames, max_height=max_height, max_width=max_width,
                            min_size=min_size)
    plan_build(art_dir, manifest, limits, opt, memory=memory)  # every GPU-independent refusal, before TensorRT
    out_dir = destination(out_dir)

    trt = tensorrt_module()
    device = CudaDevice(device_index)
    runtime = device.runtime_info(trt)
    major, minor = (int(v) for v in runtime.compute_capability.split("."))
    plan = plan_build(art_dir, manifest, limits, opt, compute_capability=(major, minor),
                      device_name=runtime.device_name, gpu_bytes=device.memory()[1], memory=memory)
    assert plan.memory is not None
    say(plan.memory.render())
    chosen_memory = MemoryOptions(plan.memory.residency, plan.memory.streaming_budget, plan.memory.text_encoder)

    with publishing(out_dir) as partial:  # a half-built folder must never look usable
        engines = {}
        with device.active():
            for build in plan.graphs:
                say(f"{build.graph}: building {build.engine_file} ({build.precision}, strongly typed"
                    f"{', weight streaming' if build.weight_streaming else ''})")
                sha = Engine.build(art_dir / build.onnx_file, partial / build.engine_file, build.profiles, options,
                                   weight_streaming=build.weight_streaming, say=say)
                engines[build.graph] = EngineEntry(build.engine_file, sha, build.onnx_file, build.onnx_sha256,
                                                   build.precision, build.weight_streaming, build.profiles)
        result = EnginesManifest(
            format_version=FORMAT_VERSION,
            # Relative, so the artifact and the engines can move together (containers mount them elsewhere).
            artifact={"path": os.path.relpath(art_dir.resolve(), out_dir.parent.resolve() / out_dir.name),
                      "manifest_sha256": _manifest_sha256(art_dir)},
            runtime=runtime, precision=plan.precision, limits=limits, opt=plan.opt, builder=options,
            memory=chosen_memory, engines=engines,
            created_utc=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            wanrt_version=_wanrt_version(),
        )
        write_engines_manifest(partial, result)
    say(f"wrote {out_dir}")
    return result


def _manifest_sha256(art_dir: Path) -> str:
    from wanrt.engine.artifact import MANIFEST_NAME, sha256_file

    path = art_dir / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(f"{path} is missing")
    return sha256_file(path)


def _wanrt_version() -> str:
    import wanrt

    return str(getattr(wanrt, "__version__", "unknown"))
