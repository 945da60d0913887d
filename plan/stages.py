"""Per-stage estimates of host memory, GPU memory, disk and time, from a checkpoint's real tensor sizes.

Every figure is a sum of named terms (weights, the largest shard being read, activations at a shape, a process
baseline), so a refusal can say what dominates. Which terms are measured and which are assumptions is said at
each constant and in plan/README.md; times are orders of magnitude (what to book a machine for), not promises.

Stages:
- ``export``: one graph at a time (export/onnx_io.py): the module in its dtype, the largest shard mapped while
  loading, one tensor's transient copy while writing, then the parity session (module dropped).
- ``quantize``: the torch route (ModelOpt PTQ on one bf16 expert at a time on the GPU, calibration over real
  trajectories at the user's shape) or the ONNX route (ModelOpt ONNX PTQ on the CPU; small models only).
- ``build-engines``: one TensorRT engine at a time.
- ``serve``: engine/tensorrt/memory.py's runtime plan (its public API: EngineMemory, plan_memory).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

from wanrt.benchmarks.flops import TEXT_LENGTH, DitShape, forward_flops
from wanrt.benchmarks.peaks import GPU_BF16_TFLOPS as GPU_BF16_TFLOPS_TABLE
from wanrt.engine.tensorrt import memory as trt_memory
from wanrt.plan.checkpoint import DTYPE_BYTES, Checkpoint, Component

GB = 10**9
GIB = 1024**3
# Resident memory of a process that has imported torch, diffusers, transformers, onnx and onnxruntime before it
# holds any weight: measured 0.8-0.9 GB on this CPU (benchmarks/export_memory.py, the "start" stage).
PROCESS_BASE = int(0.9 * GB)
# A CUDA context, cuBLAS/cuDNN workspaces and the caching allocator's slack: assumed (not measured here).
CUDA_OVERHEAD = int(2.0 * GB)
# What tracing holds beside the weights: the FX graph, the ONNX IR and its metadata, per layer of the network.
# Measured on the 2-layer full-width expert (export/README.md); it does not grow with the width.
TRACE_BYTES_PER_LAYER = int(0.03 * GB)
# Throughputs for the time estimates (orders of magnitude): sequential disk read/write and sha256 of NVMe-class
# storage; tracing per layer measured on this CPU (the 2-layer expert: about 20 s per layer on 2 busy cores).
READ_BYTES_PER_S = 1.0 * GB
WRITE_BYTES_PER_S = 1.0 * GB
HASH_BYTES_PER_S = 0.7 * GB
TRACE_S_PER_LAYER = 20.0
# Share of a GPU's dense bf16 peak that PyTorch eager reaches on these shapes (published Wan peers reach 35-66%
# of it: benchmarks/peaks.py); CPU fp32 throughput of a server for parity and ONNX-route calibration.
GPU_EFFICIENCY = 0.4
CPU_TFLOPS = 1.0
GPU_BF16_TFLOPS = dict(GPU_BF16_TFLOPS_TABLE)["H100"]  # dense bf16 peak of an H100/H200 SXM
# PyTorch eager keeps more alive than the TensorRT activation model of engine/tensorrt/memory.py (unfused
# kernels; ModelOpt's calibrators take |x| of each quantized input): twice it, assumed.
EAGER_ACTIVATION_FACTOR = 2
# ModelOpt's ONNX PTQ holds the fp32 graph, its calibration-augmented copy, the onnxruntime session over it and
# (INT8) SmoothQuant's rewritten copy: four copies of the weights, counted from its code, not measured at size.
ONNX_PTQ_WEIGHT_COPIES = 4
# TensorRT's ONNX parser keeps the graph's weights in host memory while the builder makes its own copy.
TRT_BUILD_WEIGHT_COPIES = 2
# Order of magnitude of a TensorRT build per engine (tactic timing dominates, per distinct layer, not per
# weight): assumed from the size of the network, no build has run here.
TRT_BUILD_S_PER_LAYER = 20.0
# ModelOpt's Wan2.2 recipe keeps these in high precision (quant/README.md): embeddings, output projection and
# the first and last three blocks.
RECIPE_EXCLUDED = ("patch_embedding", "condition_embedder", "proj_out", "blocks.0.", "blocks.1.", "blocks.2.")
RECIPE_EXCLUDED_LAST = 3


@dataclasses.dataclass(frozen=True)
class Machine:
    """What the stage will run on: host memory, GPU memory (None: no GPU), free disk where it writes."""

    host_bytes: int
    gpu_bytes: int | None = None
    disk_bytes: int | None = None
    gpu_tflops: float = GPU_BF16_TFLOPS
    cpu_tflops: float = CPU_TFLOPS


@dataclasses.dataclass(frozen=True)
class GraphEstimate:
    """One unit a stage handles alone (a graph, an expert, an engine): its peak needs."""

    name: str
    weight_bytes: int
    host_bytes: int
    gpu_bytes: int = 0
    seconds: float = 0.0
    terms: tuple[tuple[str, int], ...] = ()  # the host (or GPU) peak's parts, largest first, for the refusal


@dataclasses.dataclass(frozen=True)
class StagePlan:
    stage: str  # export, quantize, build-engines, serve
    settings: str  # what the estimate assumed (dtype, device, shape)
    graphs: dict[str, GraphEstimate]
    disk_bytes: int
    notes: tuple[str, ...] = ()
    # serve: the GPU figure comes from engine/tensorrt/memory.py's plan instead of the graphs
    gpu_override: int | None = None
    seconds_override: float | None = None

    @property
    def host_bytes(self) -> int:
        return max((g.host_bytes for g in self.graphs.values()), default=PROCESS_BASE)

    @property
    def gpu_bytes(self) -> int:
        if self.gpu_override is not None:
            return self.gpu_override
        return max((g.gpu_bytes for g in self.graphs.values()), default=0)

    @property
    def seconds(self) -> float:
        if self.seconds_override is not None:
            return self.seconds_override
        return sum(g.seconds for g in self.graphs.values())

    def shortfalls(self, machine: Machine) -> list[tuple[str, int, int | None]]:
        """(resource, needed, available) for each resource this plan exceeds on ``machine``."""
        short: list[tuple[str, int, int | None]] = []
        if self.host_bytes > machine.host_bytes:
            short.append(("host memory", self.host_bytes, machine.host_bytes))
        if self.gpu_bytes and (machine.gpu_bytes is None or self.gpu_bytes > machine.gpu_bytes):
            short.append(("GPU memory", self.gpu_bytes, machine.gpu_bytes))
        if machine.disk_bytes is not None and self.disk_bytes > machine.disk_bytes:
            short.append(("disk", self.disk_bytes, machine.disk_bytes))
        return short

    def fits(self, machine: Machine) -> bool:
        return not self.shortfalls(machine)


# ---------------------------------------------------------------------------------------------------- export


def export_plan(checkpoint: Checkpoint | Any, *, dtype: str = "bf16", vae_dtype: str = "fp32",
                device: str = "cpu") -> StagePlan:
    """`wanrt export`: each graph alone (text encoder, each expert, VAE decoder), its peak host (and GPU) memory."""
    checkpoint = _checkpoint(checkpoint)
    on_gpu = device.startswith("cuda")
    graphs: dict[str, GraphEstimate] = {}
    for component in (checkpoint.components["text_encoder"], *checkpoint.experts, checkpoint.components["vae"]):
        graph_dtype = vae_dtype if component.name == "vae" else dtype
        name = "vae_decoder" if component.name == "vae" else component.name
        graphs[name] = _export_graph(component, graph_dtype, on_gpu)
    disk = sum(g.weight_bytes for g in graphs.values())
    notes = ["one graph at a time: the peak is the largest graph's, never two",
             "host peak per graph = process + weights + the largest of (shard mapped while loading, one tensor "
             "widened by the parity session) + tracing state"]
    if on_gpu:
        notes.append("--device cuda: weights load straight to the GPU (device_map), the graph is written one "
                     "tensor at a time, onnxruntime-gpu's parity session is assumed to stage one initializer at a "
                     "time on the host (not measured: no GPU here)")
    return StagePlan("export", f"{dtype} (VAE {vae_dtype}) on {device}", graphs, disk, tuple(notes))


def _export_graph(component: Component, dtype: str, on_gpu: bool) -> GraphEstimate:
    weights = component.bytes_in(dtype)
    layers = _layers(component)
    trace = TRACE_BYTES_PER_LAYER * layers
    # bf16 parity on the CPU widens one weight at a time to fp32 (export/precision.py: emulate_bf16).
    widened = component.largest_tensor("fp32") if dtype == "bf16" and not on_gpu else component.largest_tensor(dtype)
    if on_gpu:
        staged = component.largest_tensor(dtype)
        terms = [("process", PROCESS_BASE), ("largest shard mapped while loading", component.largest_shard),
                 ("one weight staged on its way to the GPU", staged), ("tracing state", trace)]
        host = PROCESS_BASE + max(component.largest_shard, staged) + trace
        gpu = weights + CUDA_OVERHEAD
    else:
        extra = max(component.largest_shard, widened)
        terms = [("weights", weights), ("process", PROCESS_BASE),
                 ("largest shard mapped while loading" if component.largest_shard >= widened
                  else "one weight widened to fp32 for parity", extra), ("tracing state", trace)]
        host = PROCESS_BASE + weights + extra + trace
        gpu = 0
    parity_flops = 2 * component.params * (TEXT_LENGTH + 64) * 3  # three small parity calls, text-length bound
    seconds = (component.file_bytes / READ_BYTES_PER_S + TRACE_S_PER_LAYER * layers + weights / WRITE_BYTES_PER_S
               + weights / HASH_BYTES_PER_S + parity_flops / (CPU_TFLOPS * 1e12))
    return GraphEstimate(component.name, weights, host, gpu, seconds,
                         tuple(sorted(terms, key=lambda t: -t[1])))


def _layers(component: Component) -> int:
    config = component.config
    return int(config.get("num_layers") or config.get("num_hidden_layers") or 1)


# -------------------------------------------------------------------------------------------------- quantize


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The calibration a quantize run does: a clip shape, prompts and denoising steps (ModelOpt's Wan2.2 recipe
    by default: 128 prompts, 20 steps, 81 frames at 1280x720)."""

    frames: int = 81
    height: int = 720
    width: int = 1280
    prompts: int = 128
    steps: int = 20
    cfg: bool = True  # cond and uncond per step (batch of two)


def quantize_plan(checkpoint: Checkpoint | Any, *, mode: str = "fp8", route: str = "torch", device: str = "cuda",
                  calibration: Calibration | None = None, gpu_tflops: float = GPU_BF16_TFLOPS) -> StagePlan:
    """`wanrt quantize`, the call for i25b's quantize to make at its start (see plan/README.md).

    ``route="torch"``: ModelOpt PTQ on one bf16 expert at a time on ``device`` (weights + ModelOpt's quantizer
    state + eager activations at the calibration shape), the text encoder first (prompt embeddings kept on the
    host), the other expert's bf16 weights only read from the mmap'd safetensors; then the Q/DQ export, which
    streams weights like `wanrt export`. ``route="onnx"``: ModelOpt ONNX PTQ over an fp32 export on the CPU.
    """
    checkpoint = _checkpoint(checkpoint)
    calib = calibration or Calibration()
    shape = DitShape.from_config(checkpoint.experts[0].config)
    tokens = trt_memory.dit_tokens(calib.frames, calib.height, calib.width, patch=shape.patch_size)
    batch = 2 if calib.cfg else 1
    calls = calib.prompts * calib.steps * batch  # expert forwards over both experts together
    flops = calls * forward_flops(shape, tokens).total
    latent_bytes = 16 * ((calib.frames - 1) // 4 + 1) * (calib.height // 8) * (calib.width // 8) * 4
    embeddings = calib.prompts * batch * TEXT_LENGTH * shape.text_dim * 4
    graphs: dict[str, GraphEstimate] = {}
    on_gpu = device.startswith("cuda")
    text = checkpoint.components["text_encoder"]
    if route == "torch":
        activations = EAGER_ACTIVATION_FACTOR * trt_memory.dit_scratch(tokens, shape.dim, shape.ffn_dim, 2, batch)
        host_data = embeddings + calib.prompts * latent_bytes
        text_weights = text.bytes_in("bf16")
        graphs["text_encoder"] = _resident("text_encoder", text_weights, on_gpu,
                                           [("prompt embeddings kept", embeddings)], 0.0, text.largest_shard)
        per_expert_flops = flops / len(checkpoint.experts)
        for expert in checkpoint.experts:
            weights = expert.bytes_in("bf16")
            state = _quantizer_state(expert, mode)
            seconds = per_expert_flops / ((gpu_tflops * GPU_EFFICIENCY if on_gpu else CPU_TFLOPS) * 1e12)
            graphs[expert.name] = _resident(
                expert.name, weights, on_gpu,
                [("activations at the calibration shape", activations), ("ModelOpt quantizer state", state),
                 ("prompt embeddings and boundary latents", host_data)],
                seconds + _qdq_export_seconds(expert), expert.largest_shard)
        settings = (f"{mode}, torch route on {device}, calibration {calib.prompts} prompts x {calib.steps} steps at "
                    f"{calib.frames}x{calib.height}x{calib.width} ({tokens} tokens)")
    elif route == "onnx":
        activations = trt_memory.dit_scratch(tokens, shape.dim, shape.ffn_dim, 4, batch)
        for expert in checkpoint.experts:
            weights = expert.bytes_in("fp32")
            host = PROCESS_BASE + ONNX_PTQ_WEIGHT_COPIES * weights + activations + embeddings
            seconds = flops / len(checkpoint.experts) / (CPU_TFLOPS * 1e12)
            graphs[expert.name] = GraphEstimate(
                expert.name, weights, host, 0, seconds,
                ((f"{ONNX_PTQ_WEIGHT_COPIES} copies of the fp32 graph", ONNX_PTQ_WEIGHT_COPIES * weights),
                 ("onnxruntime activations at the calibration shape", activations), ("process", PROCESS_BASE)))
        settings = (f"{mode}, ONNX route on the CPU, calibration {calib.prompts} prompts x {calib.steps} steps at "
                    f"{calib.frames}x{calib.height}x{calib.width} ({tokens} tokens)")
    else:
        raise ValueError(f"route must be torch or onnx, got {route!r}")
    disk = sum(quantized_expert_bytes(e, mode) for e in checkpoint.experts) + text.bytes_in("bf16") + \
        checkpoint.components["vae"].bytes_in("fp32")
    notes = (f"calibration: {calls} expert calls of {forward_flops(shape, tokens).total / 1e15:.2f} PFLOP each",
             "activations: twice engine/tensorrt/memory.py's TensorRT activation model (PyTorch eager, "
             "calibrators), attention tiled (flash/cuDNN SDPA, linear in tokens)")
    return StagePlan("quantize", settings, graphs, disk, notes)


def _resident(name: str, weights: int, on_gpu: bool, extra: Sequence[tuple[str, int]], seconds: float,
              shard: int) -> GraphEstimate:
    """A module that runs where it lives: on the GPU (host holds the process and one shard while loading) or on
    the CPU (host holds everything)."""
    extra_bytes = sum(b for _, b in extra)
    if on_gpu:
        host_data = sum(b for label, b in extra if "prompt" in label)
        host = PROCESS_BASE + shard + host_data
        gpu = weights + CUDA_OVERHEAD + extra_bytes - host_data
        terms = [("weights", weights), ("CUDA context and allocator", CUDA_OVERHEAD),
                 *[(label, b) for label, b in extra if "prompt" not in label]]
    else:
        host = PROCESS_BASE + weights + extra_bytes
        gpu = 0
        terms = [("weights", weights), ("process", PROCESS_BASE), *extra]
    return GraphEstimate(name, weights, host, gpu, seconds, tuple(sorted(terms, key=lambda t: -t[1])))


def _quantizer_state(expert: Component, mode: str) -> int:
    """ModelOpt's per-channel amax (weights) and per-tensor amax (inputs) per Linear, SmoothQuant's per input
    channel scales for INT8: fp32 each."""
    linear = [t for t in expert.tensors if len(t.shape) == 2 and t.name.endswith(".weight")]
    per_channel = sum(t.shape[0] + (t.shape[1] if mode == "int8" else 0) for t in linear)
    return 4 * (per_channel + 2 * len(linear))


def quantized_expert_bytes(expert: Component, mode: str) -> int:
    """A Q/DQ expert's weights: 8-bit Linear weights outside the recipe's exclusions, the rest bf16."""
    layers = _layers(expert)
    excluded = RECIPE_EXCLUDED + tuple(f"blocks.{i}." for i in range(max(layers - RECIPE_EXCLUDED_LAST, 0), layers))
    return expert.quantized_bytes(mode, "bf16", excluded)


def _qdq_export_seconds(expert: Component) -> float:
    weights = expert.bytes_in("bf16")
    return TRACE_S_PER_LAYER * _layers(expert) + weights / WRITE_BYTES_PER_S + weights / HASH_BYTES_PER_S


# --------------------------------------------------------------------------------------- build-engines, serve


@dataclasses.dataclass(frozen=True)
class Serving:
    """The largest request engines are built for and served at, and how the experts sit on the GPU."""

    frames: int = 81
    height: int = 720
    width: int = 1280
    residency: str | None = None  # None: the cheapest that fits (engine/tensorrt/memory.py)
    weight_streaming_budget: int | None = None
    steps: int = 40


def engine_memory(checkpoint: Checkpoint | Any, precision: str, serving: Serving) -> list[Any]:
    """The engines' weights (from the checkpoint's tensors at the engines' precision) and scratch (the activation
    model of engine/tensorrt/memory.py at the largest request), as engine/tensorrt/memory.EngineMemory."""
    checkpoint = _checkpoint(checkpoint)
    shape = DitShape.from_config(checkpoint.experts[0].config)
    tokens = trt_memory.dit_tokens(serving.frames, serving.height, serving.width, patch=shape.patch_size)
    quantized = precision in ("fp8", "int8")
    dit_itemsize = 2 if precision != "fp32" else 4
    engines = []
    text = checkpoint.components["text_encoder"]
    text_config = text.config
    text_dtype = "bf16" if quantized else precision
    stream = trt_memory.STREAM_ITEMSIZE
    engines.append(trt_memory.EngineMemory(
        "text_encoder", text.bytes_in(text_dtype),
        trt_memory.dit_scratch(TEXT_LENGTH, int(text_config.get("d_model", shape.text_dim)),
                               int(text_config.get("d_ff", 4 * shape.text_dim)), DTYPE_BYTES[text_dtype],
                               stream_itemsize=stream)))
    for expert in checkpoint.experts:
        weights = quantized_expert_bytes(expert, precision) if quantized else expert.bytes_in(precision)
        engines.append(trt_memory.EngineMemory(
            expert.name, weights,
            trt_memory.dit_scratch(tokens, shape.dim, shape.ffn_dim, dit_itemsize, stream_itemsize=stream)))
    vae = checkpoint.components["vae"]
    channels = trt_memory.A14B_VAE_FULLRES_CHANNELS * int(vae.config.get("base_dim", 96)) // 96
    scratch = trt_memory.vae_scratch(4, serving.height, serving.width, channels)
    decoder = _decoder_bytes(vae)
    engines.append(trt_memory.EngineMemory("vae_decoder_init", decoder, scratch // 4))
    engines.append(trt_memory.EngineMemory("vae_decoder_step", decoder, scratch))
    return engines


def vae_cache_bytes(checkpoint: Checkpoint, serving: Serving) -> int:
    """The decoder's cache pair at the largest size (the A14B layout, its channels scaled by the VAE's width)."""
    base_dim = int(checkpoint.components["vae"].config.get("base_dim", 96))
    return trt_memory.a14b_vae_caches(serving.height, serving.width) * base_dim // 96


def _decoder_bytes(vae: Component) -> int:
    return sum(t.numel * 4 for t in vae.tensors if t.is_float and not t.name.startswith(("encoder.", "quant_conv")))


def build_plan(checkpoint: Checkpoint | Any, *, precision: str = "fp8", serving: Serving | None = None,
               gpu_bytes: int | None = None) -> StagePlan:
    """`wanrt build-engines`: one engine at a time; host holds the parsed graph and the builder's copy."""
    checkpoint = _checkpoint(checkpoint)
    serving = serving or Serving()
    graphs = {}
    for engine in engine_memory(checkpoint, precision, serving):
        component = _component_of(checkpoint, engine.graph)
        host = PROCESS_BASE + TRT_BUILD_WEIGHT_COPIES * engine.weights
        gpu = engine.weights + engine.scratch + CUDA_OVERHEAD
        seconds = TRT_BUILD_S_PER_LAYER * _layers(component) + engine.weights / WRITE_BYTES_PER_S
        graphs[engine.graph] = GraphEstimate(
            engine.graph, engine.weights, host, gpu, seconds,
            ((f"{TRT_BUILD_WEIGHT_COPIES} copies of the weights (parser and builder)",
              TRT_BUILD_WEIGHT_COPIES * engine.weights), ("process", PROCESS_BASE)))
    disk = sum(g.weight_bytes for g in graphs.values())
    notes = ("TensorRT has not run here: host copies and build times are assumptions; the builder's tactic "
             "workspace takes what the GPU has free (--workspace-gib caps it)",
             "every engine is also checked against the serve plan before it is built (build-engines does)")
    return StagePlan("build-engines", f"{precision} engines up to {serving.frames}x{serving.height}x{serving.width}",
                     graphs, disk, notes)


def serve_plan(checkpoint: Checkpoint | Any, *, precision: str = "fp8", serving: Serving | None = None,
               gpu_bytes: int, gpu_tflops: float = GPU_BF16_TFLOPS) -> tuple[StagePlan, Any]:
    """`wanrt serve` on TensorRT: engine/tensorrt/memory.py's plan (raises its InvalidRequestError, which names
    --residency or --weight-streaming-budget, when nothing fits) and a clip's order-of-magnitude time."""
    checkpoint = _checkpoint(checkpoint)
    serving = serving or Serving()
    engines = engine_memory(checkpoint, precision, serving)
    # As build-engines plans: streaming is a candidate while the engines are not built yet.
    memory_plan = trt_memory.plan_memory(engines, checkpoint.spec.experts, gpu_bytes, residency=serving.residency,
                                         streaming_budget=serving.weight_streaming_budget,
                                         vae_caches=vae_cache_bytes(checkpoint, serving),
                                         allow_streaming=serving.residency is None)
    shape = DitShape.from_config(checkpoint.experts[0].config)
    tokens = trt_memory.dit_tokens(serving.frames, serving.height, serving.width, patch=shape.patch_size)
    speedup = 2.0 if precision in ("fp8", "int8") else 1.0  # 8-bit tensor cores: twice bf16's peak
    seconds = serving.steps * 2 * forward_flops(shape, tokens).total / (gpu_tflops * 1e12 * GPU_EFFICIENCY * speedup)
    largest = max(e.weights for e in engines)
    streamed = 0
    if memory_plan.residency == "streaming":
        streamed = sum(e.weights - memory_plan.on_gpu(e) for e in engines if e.graph in checkpoint.spec.experts)
    host = PROCESS_BASE + largest + streamed
    terms = (("largest engine deserialised from a host buffer", largest), ("pinned streamed weights", streamed),
             ("process", PROCESS_BASE))
    graphs = {"pipeline": GraphEstimate("pipeline", sum(e.weights for e in engines), host, memory_plan.peak,
                                        seconds, tuple(t for t in terms if t[1]))}
    notes = (f"GPU: engine/tensorrt/memory.py's plan, residency {memory_plan.residency}",
             f"time: one clip at the largest request, {serving.steps} steps with CFG, at {GPU_EFFICIENCY:.0%} of "
             "the GPU's dense peak (8-bit engines twice bf16's); attention dominates at 720p")
    return (StagePlan("serve", f"{precision} engines, {serving.frames}x{serving.height}x{serving.width}", graphs,
                      0, notes, gpu_override=memory_plan.peak, seconds_override=seconds), memory_plan)


def _component_of(checkpoint: Checkpoint, graph: str) -> Component:
    return checkpoint.components["vae" if graph.startswith("vae") else graph]


def _checkpoint(value: Checkpoint | Any) -> Checkpoint:
    from wanrt.plan.checkpoint import read_checkpoint

    return value if isinstance(value, Checkpoint) else read_checkpoint(value)


# --------------------------------------------------------------------------------------------------- refusal


def first_fitting(machine: Machine, alternatives: Sequence[tuple[str, Callable[[], StagePlan]]]) -> str | None:
    """The option text of the first alternative whose plan fits ``machine`` (None when none does)."""
    for option, make in alternatives:
        try:
            if make().fits(machine):
                return option
        except Exception:  # noqa: BLE001 - an alternative that cannot even be planned does not fit
            continue
    return None


def gb(nbytes: float) -> str:
    """GiB, as --host-memory/--gpu-memory read sizes (engine/budget.parse_size) and engine/tensorrt/memory.py
    prints them."""
    return f"{nbytes / GIB:.1f} GiB"


def duration(seconds: float) -> str:
    """An order of magnitude: ~40 s, ~12 min, ~3 h, ~2 days."""
    if seconds < 90:
        return f"~{max(1, round(seconds, -1 if seconds >= 20 else 0)):.0f} s"
    if seconds < 90 * 60:
        return f"~{math.ceil(seconds / 60):.0f} min"
    if seconds < 48 * 3600:
        return f"~{seconds / 3600:.1f} h"
    return f"~{seconds / 86400:.1f} days"
