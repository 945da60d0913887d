"""ONNX writing and checking shared by every exported graph: dynamo export, external data, parity vs PyTorch.

Memory at size (a 14B expert is 28.6 GB in bf16): the graph's weights are never copied as a whole. The ONNX
initializers the exporter makes are views of the module's own parameters, the transposes it puts on Linear
weights are folded lazily (each transposed tensor exists only while it is written), the weights stream to
``<graph>.onnx.data`` one tensor at a time, and the torch module is dropped before any parity session opens:
PyTorch's outputs at the parity shapes are computed first and kept (they are small). Measured: export/README.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wanrt.errors import ExportVerificationError
from wanrt.export import attention
from wanrt.export.scopes import SCOPE_METADATA_KEY

Progress = Callable[[str], None]
OPSET = attention.OPSET  # attention exports as one operator from this opset on (see attention.py)
# Weights go to external data above this: serialising a graph inline builds the protobuf and its bytes in memory
# (two more copies of the weights), and protobuf refuses single messages over 2 GiB anyway. Small graphs (the reef
# model's, the tiny test models') stay one self-contained file.
EXTERNAL_DATA_THRESHOLD_BYTES = 256 * 1024**2


def export_graph(
    module: torch.nn.Module,
    args: tuple[Any, ...],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_shapes: Any,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD_BYTES,
    opset: int | None = None,
) -> list[Path]:
    """Exports ``module(*args)`` with the dynamo exporter and returns the files written (graph, data).

    Weights go to ``<name>.onnx.data`` when the serialised model would exceed ``external_data_threshold``.
    ``opset``: OPSET unless a benchmark asks for the graphs exported before it (18: attention as MatMul ->
    Softmax -> MatMul).
    """
    path = Path(path)
    with torch.no_grad(), attention.native_attention():
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            opset_version=opset or OPSET,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=dynamic_shapes,
            optimize=False,  # optimised below, once the weight transposes are folded without copies
            verify=False,
        )
    fold_weight_transposes(program.model)
    program.optimize()
    _strip_trace_metadata(program.model)
    external = _weight_bytes(module) > external_data_threshold
    program.save(path, external_data=external)  # external: onnx_ir writes one tensor at a time
    _drop_weights(program)
    data = path.with_name(path.name + ".data")
    return [path, data] if external and data.exists() else [path]


def _drop_weights(program: Any) -> None:
    """Cuts the exported program's references to the module's parameters.

    Objects of the exporter outlive the export call (its IR values are still referenced after the ONNXProgram is
    gone), and each initializer's value is a view of a parameter: left alone, they keep the whole module alive
    through the parity sessions, a second copy of the weights exactly when onnxruntime loads the first.
    """
    for value in program.model.graph.initializers.values():
        value.const_value = None
    program.model.graph.initializers.clear()
    program.exported_program = None


def fold_weight_transposes(model: Any) -> int:
    """Replaces each ``Transpose`` of a module parameter by a transposed *view* of that parameter; returns how many.

    The exporter writes ``Linear`` as ``MatMul(x, Transpose(W))``; the ONNX optimiser's constant folding then
    materialises every transposed weight as a new numpy array while the module still holds the original: a
    second copy of nearly all the weights. A view costs nothing; it is made contiguous one tensor at a time
    when the graph is written. The graph is the one the optimiser would have made (MatMul on a [in, out]
    initializer, named after the Transpose's output).
    """
    import onnx_ir as ir
    from torch.onnx._internal.exporter._core import TorchTensor

    graph = model.graph
    folded = 0
    for node in list(graph):
        source = node.inputs[0] if node.inputs else None
        if (node.op_type != "Transpose" or node.domain not in ("", "ai.onnx") or source is None
                or not source.is_initializer() or not isinstance(source.const_value, TorchTensor)):
            continue
        tensor = source.const_value.raw
        perm = node.attributes.get_ints("perm", list(reversed(range(tensor.dim()))))
        output = node.outputs[0]
        if output.is_graph_output():
            continue
        name = output.name
        view = TorchTensor(tensor.detach().permute(*perm), name=name)
        value = ir.Value(name=None, shape=ir.Shape(view.shape), type=ir.TensorType(view.dtype), const_value=view)
        output.replace_all_uses_with(value)
        graph.remove(node, safe=True)
        value.name = name
        graph.register_initializer(value)
        if not source.uses():
            graph.initializers.pop(source.name)
            source.const_value = None  # the exporter's records outlive the graph (see _drop_weights)
        folded += 1
    return folded


def _strip_trace_metadata(model: Any) -> None:
    """Keeps only each node's module scope (``pkg.torch.onnx.name_scopes``, which quant/placement.py reads).

    The exporter also records the Python stack trace, class hierarchy and FX node: they hold paths of the
    machine that exported (so the same export differed byte for byte between machines), and they were a fifth
    of a small model's file. The graph and its weights are untouched.
    """
    import onnx_ir as ir

    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for key in [k for k in node.metadata_props if k != SCOPE_METADATA_KEY]:
            del node.metadata_props[key]


def _weight_bytes(module: torch.nn.Module) -> int:
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclasses.dataclass(frozen=True)
class ParityResult:
    graph: str
    shapes: dict[str, tuple[int, ...]]
    max_rel_error: float
    dtype: str = "fp32"  # the graph's compute precision when checked
    tolerance: float = 1e-4
    reference: str = "fp32"  # the precision PyTorch ran the reference in (the module exported, or fp32)

    def as_dict(self) -> dict[str, Any]:
        return {"graph": self.graph, "dtype": self.dtype, "shapes": {k: list(v) for k, v in self.shapes.items()},
                "max_rel_error": self.max_rel_error, "tolerance": self.tolerance, "reference": self.reference}


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Largest absolute difference relative to the reference's largest magnitude (scale-free, no 0/0)."""
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    diff = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64)))) if expected.size else 0.0
    return diff / max(scale, 1e-12)


def reference_outputs(module: torch.nn.Module, feeds: Mapping[str, np.ndarray],
                      device: str = "cpu") -> tuple[np.ndarray, ...]:
    """``module``'s outputs on ``feeds`` (on ``device``), as fp32 numpy arrays on the host."""
    with torch.no_grad():
        out = module(*(torch.from_numpy(np.ascontiguousarray(v)).to(device) for v in feeds.values()))
    outputs = (out,) if isinstance(out, torch.Tensor) else tuple(out)
    return tuple(o.detach().float().cpu().numpy() for o in outputs)


def compare(path: Path, feeds: Mapping[str, np.ndarray], expected: Sequence[np.ndarray], *, tolerance: float,
            dtype: str = "fp32", reference: str = "fp32", device: str = "cpu") -> ParityResult:
    """Runs the ONNX graph at ``path`` in onnxruntime on ``device`` (export/precision.py's parity session) and
    compares its outputs with ``expected``; raises ExportVerificationError on drift."""
    from wanrt.export.precision import parity_session

    got = parity_session(path, device).run(None, dict(feeds))
    worst = max(relative_error(g, e) for g, e in zip(got, expected, strict=True))
    result = ParityResult(Path(path).name, {k: tuple(v.shape) for k, v in feeds.items()}, worst, dtype, tolerance,
                          reference)
    if not worst <= tolerance:
        raise ExportVerificationError(
            f"{result.graph} ({dtype}): the graph differs from {reference} PyTorch by max relative error "
            f"{worst:.3e} (tolerance {tolerance:.0e}) at input shapes {result.shapes}"
        )
    return result


def check_parity(path: Path, module: torch.nn.Module, feeds: Mapping[str, np.ndarray], *, tolerance: float,
                 dtype: str = "fp32") -> ParityResult:
    """``compare`` against fp32 ``module`` run now (graphs small enough to keep their module alive: the VAE)."""
    return compare(path, feeds, reference_outputs(module, feeds), tolerance=tolerance, dtype=dtype)


PARITY_TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class ExportedGraph:
    """One exported and verified graph: what the artifact manifest records about it."""

    name: str
    files: tuple[Path, ...]  # the graph first, then its external data if any
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    # Per input, the smallest and largest shape the export accepts (what a TensorRT profile needs).
    shape_ranges: dict[str, dict[str, list[int]]]
    parity: tuple[ParityResult, ...]
    attention: dict[str, Any]  # attention.record(): the operator, and the onnxruntime form's file if any
    precision: dict[str, Any] = dataclasses.field(default_factory=lambda: {"dtype": "fp32"})

    def manifest_entry(self) -> dict[str, Any]:
        return {"file": self.files[0].name, "files": [p.name for p in self.files], "inputs": list(self.inputs),
                "outputs": list(self.outputs), "shape_ranges": self.shape_ranges, "attention": self.attention,
                **self.precision}


# Precisions a network is traced in directly (loaded in it as diffusers/transformers run it). fp16 is traced in fp32
# and lowered by AutoCast with export/precision.py's rules: the exporter's fp16 UMT5 graph mixes fp16 and fp32
# operands in one Mul (torch.onnx 2.13), which onnxruntime refuses.
TRACED_DTYPES = ("fp32", "bf16")


def export_verified(
    load: Callable[[str], torch.nn.Module],
    name: str,
    out_dir: Path,
    example: Mapping[str, np.ndarray],
    *,
    output_names: Sequence[str],
    dynamic_shapes: Mapping[str, Mapping[int, Any]],
    parity_feeds: Sequence[Mapping[str, np.ndarray]],
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD_BYTES,
    require_fused_attention: bool = False,
    dtype: str = "fp32",
    fp32_rules: tuple[Any, ...] = (),
    device: str = "cpu",
    progress: Progress | None = None,
) -> ExportedGraph:
    """Loads the module (``load(dtype)``, on ``device``), exports it to ``out_dir/<name>.onnx`` and checks parity
    on every feed in ``parity_feeds``, for the graph and its onnxruntime attention form if any.

    One graph's weights are in memory once: PyTorch's outputs on the parity feeds are computed first, the module
    is dropped once the graph is written, and only then do onnxruntime sessions open. A bf16 module exports as it
    runs in diffusers/transformers (its ``_keep_in_fp32_modules`` in fp32, the casts its code makes) and is
    checked against itself with bf16's limit (precision.PARITY_LIMITS); fp16 is traced in fp32, checked, lowered
    (``fp32_rules`` say what stays fp32) and checked again against the fp32 outputs. Graph inputs and outputs
    are fp32 whatever the dtype (the module wrappers cast). ``example`` and each feed are keyed by the module's
    forward argument names, in call order; those names become the graph's input names.
    """
    from wanrt.export.precision import PARITY_LIMITS, check_dtype, describe_precision, fp32_modules, lower_graph

    check_dtype("dtype", dtype)
    say = progress or (lambda _message: None)
    path = Path(out_dir) / f"{name}.onnx"
    traced = dtype if dtype in TRACED_DTYPES else "fp32"
    module = load(traced)
    say(f"{name}: PyTorch reference at {len(parity_feeds)} parity shapes")
    expected = [reference_outputs(module, feeds, device) for feeds in parity_feeds]
    kept = fp32_modules(module) if traced != "fp32" else ()
    say(f"{name}: ONNX export")
    args = tuple(torch.from_numpy(np.ascontiguousarray(v)).to(device) for v in example.values())
    files = export_graph(module, args, path, input_names=list(example),
                         output_names=output_names, dynamic_shapes=dict(dynamic_shapes),
                         external_data_threshold=external_data_threshold)
    del module, args
    release(device)
    say(f"{name}: parity check ({traced} graph vs {traced} PyTorch)")

    def check(graph: Path, graph_dtype: str = traced) -> list[ParityResult]:
        return [compare(graph, feeds, want, tolerance=PARITY_LIMITS[graph_dtype], dtype=graph_dtype,
                        reference=traced, device=device)
                for feeds, want in zip(parity_feeds, expected, strict=True)]

    parity = check(path)
    precision = describe_precision(path, traced, kept) if traced != "fp32" else {"dtype": "fp32"}
    if traced != dtype:
        say(f"{name}: lowered to {dtype}, parity check against fp32 PyTorch")
        precision = lower_graph(path, dtype, fp32_rules, external_data=len(files) > 1).as_dict()
        parity += check(path, dtype)
    # Only an fp32 graph gets the onnxruntime form (the low-precision graphs keep the standard one everywhere).
    entry, variant_parity = attention.record(path, check, required=require_fused_attention,
                                             onnxruntime_form=dtype == "fp32")
    return ExportedGraph(name, tuple(files), tuple(example), tuple(output_names),
                         shape_ranges(example, dynamic_shapes), tuple(parity + variant_parity), entry, precision)


def release(device: str = "cpu") -> None:
    """Frees what a dropped module held now, not at some later allocation (peak memory stays one graph's)."""
    import gc

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def shape_ranges(example: Mapping[str, np.ndarray],
                  dynamic_shapes: Mapping[str, Mapping[int, Any]]) -> dict[str, dict[str, list[int]]]:
    ranges = {}
    for input_name, tensor in example.items():
        dims = dynamic_shapes.get(input_name, {})
        low = [int(dims[i].min) if i in dims else size for i, size in enumerate(tensor.shape)]
        high = [int(dims[i].max) if i in dims else size for i, size in enumerate(tensor.shape)]
        ranges[input_name] = {"min": low, "max": high}
    return ranges
