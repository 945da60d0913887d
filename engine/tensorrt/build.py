"""`wanrt build-engines`: an exported artifact -> a folder of TensorRT engines plus engines.json.

``plan_build`` decides everything (profiles, per-graph precision and builder flags, quantization checks)
without TensorRT, so bad arguments fail in seconds and the decisions are unit-tested; ``build_engines``
then hands each decision to engine.Engine.build and publishes the folder atomically, like `wanrt export`.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Callable
from pathlib import Path

from wanrt.engine.artifact import Manifest, load_artifact
from wanrt.engine.request import Limits
from wanrt.engine.tensorrt.engine_manifest import (
    ENGINE_SUFFIX,
    FORMAT_VERSION,
    BuilderOptions,
    EngineEntry,
    EnginesManifest,
    write_engines_manifest,
)
from wanrt.engine.tensorrt.profiles import TEXT_ENCODER, GraphProfile, VideoShape, compute_profiles, serving_limits
from wanrt.errors import ArtifactError, InvalidRequestError
from wanrt.publish import destination, publishing

PRECISIONS = ("fp16", "bf16", "int8", "fp8")
# Builder flags per graph precision. TF32 everywhere: fp32 layers (norms, softmax fallbacks) use tensor cores.
# int8/fp8 are explicit quantization: the Q/DQ nodes in the ONNX choose the quantized layers and the flag only
# permits them; the remaining layers run in bf16, Wan's training precision (fp16 risks overflow in its DiT).
FLAGS = {
    "fp32": ("TF32",),
    "fp16": ("FP16", "TF32"),
    "bf16": ("BF16", "TF32"),
    "int8": ("INT8", "BF16", "TF32"),
    "fp8": ("FP8", "BF16", "TF32"),
}
# Lowest compute capability whose tensor cores run the precision (bf16 is also int8/fp8's fallback precision).
_MIN_CAPABILITY = {"bf16": (8, 0), "int8": (8, 0), "fp8": (8, 9)}
# The precisions that are explicit quantization: the graph's Q/DQ nodes must be of that type.
_QUANTIZED = {"int8", "fp8"}

Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class GraphBuild:
    """What to build for one graph."""

    graph: str
    onnx_file: str
    onnx_sha256: str
    engine_file: str
    precision: str
    flags: tuple[str, ...]
    profiles: tuple[GraphProfile, ...]


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    art_dir: Path
    manifest: Manifest
    precision: str
    limits: Limits
    opt: VideoShape
    graphs: tuple[GraphBuild, ...]


def graph_precision(graph: str, precision: str, experts: tuple[str, ...],
                    compute_capability: tuple[int, int] | None, quantized: str | None = None) -> str:
    """The precision ``graph`` is built in when ``precision`` is asked for.

    A graph with Q/DQ nodes (``quantized``: their element type) is built in that type: the export decided.
    Otherwise only the DiT experts take the requested precision: they are where the time goes. The UMT5 text
    encoder overflows in fp16, so it runs in bf16 as Wan and NVIDIA's Wan demo run it (fp32 on GPUs without
    bf16). The VAE decoder stays fp32 (TF32): its causal caches carry rounding error from frame to frame, and
    diffusers decodes Wan in fp32 too.
    """
    if quantized is not None:
        return quantized
    if graph in experts:
        return precision
    if graph == TEXT_ENCODER:
        return "bf16" if compute_capability is None or compute_capability >= (8, 0) else "fp32"
    return "fp32"


def check_precision_supported(precision: str, compute_capability: tuple[int, int], device_name: str = "this GPU"
                              ) -> None:
    """InvalidRequestError("precision") when the GPU's tensor cores lack ``precision``."""
    needed = _MIN_CAPABILITY.get(precision)
    if needed is not None and compute_capability < needed:
        raise InvalidRequestError("precision", f"{precision} needs compute capability {needed[0]}.{needed[1]} or "
                                               f"newer; {device_name} is {compute_capability[0]}."
                                               f"{compute_capability[1]}")


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


def _quantized_type(onnx_file: str, found: set[str], precision: str) -> str | None:
    """The one quantized type ``onnx_file``'s Q/DQ nodes use, checked against the requested precision."""
    if not found:
        return None
    if len(found) > 1 or not found <= _QUANTIZED:
        raise InvalidRequestError("precision", f"{onnx_file} has Q/DQ nodes of {sorted(found)}; TensorRT engines "
                                               "are built from int8 or fp8 Q/DQ graphs only, one type per graph")
    (kind,) = found
    if precision != kind:
        raise InvalidRequestError("precision", f"{onnx_file} carries {kind} Q/DQ nodes (a quantized export): "
                                               f"build it with --precision {kind}, not {precision}")
    return kind


def plan_build(
    art_dir: Path,
    manifest: Manifest,
    precision: str,
    limits: Limits,
    opt: VideoShape | None = None,
    *,
    compute_capability: tuple[int, int] | None = None,
    device_name: str = "this GPU",
) -> BuildPlan:
    """Decides every engine to build; raises before any TensorRT work when the request cannot be served.

    ``compute_capability`` None skips the GPU-dependent checks (the CLI calls this once before touching the
    GPU, to fail fast, and again with the real device).
    """
    if precision not in PRECISIONS:
        raise InvalidRequestError("precision", f"must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    profiles = compute_profiles(manifest, limits, opt)
    spec = manifest.spec
    builds = []
    for graph, entry in manifest.graphs.items():
        quantized = _quantized_type(entry["file"], onnx_quantization(Path(art_dir) / entry["file"]), precision)
        if quantized is None and graph in spec.experts and precision in _QUANTIZED:
            raise InvalidRequestError(
                "precision", f"{precision} is explicit quantization: {entry['file']} needs QuantizeLinear/"
                             f"DequantizeLinear nodes of {precision} (make a quantized artifact with `wanrt "
                             f"quantize --mode {precision}`); it has none")
        graph_prec = graph_precision(graph, precision, spec.experts, compute_capability, quantized)
        if compute_capability is not None:
            check_precision_supported(graph_prec, compute_capability, device_name)
        builds.append(GraphBuild(graph, entry["file"], manifest.files[entry["file"]], graph + ENGINE_SUFFIX,
                                 graph_prec, FLAGS[graph_prec], (profiles[graph],)))
    chosen = opt or VideoShape(limits.max_frames, limits.max_height, limits.max_width)
    return BuildPlan(Path(art_dir), manifest, precision, limits, chosen, tuple(builds))


def build_engines(
    art_dir: Path,
    out_dir: Path,
    precision: str,
    *,
    max_frames: int,
    max_height: int,
    max_width: int,
    min_size: int = Limits.min_size,
    opt: VideoShape | None = None,
    options: BuilderOptions | None = None,
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
    plan_build(art_dir, manifest, precision, limits, opt)  # every GPU-independent refusal, before TensorRT
    out_dir = destination(out_dir)

    trt = tensorrt_module()
    device = CudaDevice(device_index)
    runtime = device.runtime_info(trt)
    major, minor = (int(v) for v in runtime.compute_capability.split("."))
    plan = plan_build(art_dir, manifest, precision, limits, opt, compute_capability=(major, minor),
                      device_name=runtime.device_name)

    with publishing(out_dir) as partial:  # a half-built folder must never look usable
        engines = {}
        with device.active():
            for build in plan.graphs:
                say(f"{build.graph}: building {build.engine_file} ({build.precision}; {', '.join(build.flags)})")
                sha = Engine.build(art_dir / build.onnx_file, partial / build.engine_file, build.profiles,
                                   build.flags, options)
                engines[build.graph] = EngineEntry(build.engine_file, sha, build.onnx_file, build.onnx_sha256,
                                                   build.precision, build.flags, build.profiles)
        result = EnginesManifest(
            format_version=FORMAT_VERSION,
            # Relative, so the artifact and the engines can move together (containers mount them elsewhere).
            artifact={"path": os.path.relpath(art_dir.resolve(), out_dir.parent.resolve() / out_dir.name),
                      "manifest_sha256": _manifest_sha256(art_dir)},
            runtime=runtime, precision=precision, limits=limits, opt=plan.opt, builder=options,
            engines=engines, created_utc=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
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
