"""ONNX writing and checking shared by every exported graph: dynamo export, external data, parity vs PyTorch."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wanrt.errors import ExportVerificationError
from wanrt.export import attention
from wanrt.export.precision import PARITY_LIMITS, Rule, cpu_session, lower_graph
from wanrt.export.scopes import SCOPE_METADATA_KEY
from wanrt.measures import max_relative_error

OPSET = attention.OPSET  # attention exports as one operator from this opset on (see attention.py)
# protobuf refuses single messages over 2 GiB; ONNX's own rule is to move weights out beyond that.
EXTERNAL_DATA_THRESHOLD_BYTES = 2 * 1024**3 - 64 * 1024**2


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
            optimize=True,
            verify=False,
        )
    _strip_trace_metadata(program.model)
    external = _weight_bytes(module) > external_data_threshold
    program.save(path, external_data=external)
    data = path.with_name(path.name + ".data")
    return [path, data] if external and data.exists() else [path]


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
    dtype: str = "fp32"  # the graph's compute precision when checked (always against fp32 PyTorch)
    tolerance: float = 1e-4

    def as_dict(self) -> dict[str, Any]:
        return {"graph": self.graph, "dtype": self.dtype, "shapes": {k: list(v) for k, v in self.shapes.items()},
                "max_rel_error": self.max_rel_error, "tolerance": self.tolerance}


def check_parity(
    path: Path,
    module: torch.nn.Module,
    feeds: Mapping[str, np.ndarray],
    *,
    tolerance: float,
    dtype: str = "fp32",
) -> ParityResult:
    """Runs the ONNX graph in onnxruntime on the CPU (bf16 graphs emulated: precision.emulate_bf16) and ``module``
    in PyTorch on the same inputs; raises on drift."""
    got = cpu_session(path).run(None, dict(feeds))
    with torch.no_grad():
        expected = module(*(torch.from_numpy(np.ascontiguousarray(v)) for v in feeds.values()))
    if isinstance(expected, torch.Tensor):
        expected = (expected,)
    worst = max(max_relative_error(g, e.numpy()) for g, e in zip(got, expected, strict=True))
    result = ParityResult(Path(path).name, {k: tuple(v.shape) for k, v in feeds.items()}, worst, dtype, tolerance)
    if not worst <= tolerance:
        raise ExportVerificationError(
            f"{result.graph} ({dtype}): the graph differs from fp32 PyTorch by max relative error {worst:.3e} "
            f"(tolerance {tolerance:.0e}) at input shapes {result.shapes}"
        )
    return result


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


def export_verified(
    module: torch.nn.Module,
    name: str,
    out_dir: Path,
    example: Mapping[str, np.ndarray],
    *,
    output_names: Sequence[str],
    dynamic_shapes: Mapping[str, Mapping[int, Any]],
    parity_feeds: Sequence[Mapping[str, np.ndarray]],
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD_BYTES,
    tolerance: float = PARITY_TOLERANCE,
    require_fused_attention: bool = False,
    dtype: str = "fp32",
    fp32_rules: tuple[Any, ...] = (),
) -> ExportedGraph:
    """Exports ``module`` to ``out_dir/<name>.onnx`` and checks parity on every feed in ``parity_feeds``, for
    the graph and for its onnxruntime attention form if it has one.

    ``example`` and each feed are keyed by the module's forward argument names, in call order; those names
    become the graph's input names. With ``dtype`` bf16/fp16 the verified fp32 graph is then lowered
    (export/precision.py, ``fp32_rules`` saying what stays fp32) and checked again against fp32 PyTorch.
    """
    path = Path(out_dir) / f"{name}.onnx"
    args = tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in example.values())
    files = export_graph(module, args, path, input_names=list(example),
                         output_names=output_names, dynamic_shapes=dict(dynamic_shapes),
                         external_data_threshold=external_data_threshold)
    parity = [check_parity(path, module, feeds, tolerance=tolerance) for feeds in parity_feeds]
    precision = {"dtype": "fp32"}
    if dtype != "fp32":
        lowered, precision = lower_verified(path, module, parity_feeds, dtype, fp32_rules,
                                            external_data=len(files) > 1)
        parity += list(lowered)
    # Recorded on the final graph; only an fp32 graph gets the onnxruntime form (its parity is fp32's).
    entry, variant_parity = attention.record(
        path, lambda variant: [check_parity(variant, module, f, tolerance=tolerance) for f in parity_feeds],
        required=require_fused_attention, onnxruntime_form=dtype == "fp32")
    return ExportedGraph(name, tuple(files), tuple(example), tuple(output_names),
                         _shape_ranges(example, dynamic_shapes), tuple(parity + variant_parity), entry, precision)


def _shape_ranges(example: Mapping[str, np.ndarray],
                  dynamic_shapes: Mapping[str, Mapping[int, Any]]) -> dict[str, dict[str, list[int]]]:
    ranges = {}
    for input_name, tensor in example.items():
        dims = dynamic_shapes.get(input_name, {})
        low = [int(dims[i].min) if i in dims else size for i, size in enumerate(tensor.shape)]
        high = [int(dims[i].max) if i in dims else size for i, size in enumerate(tensor.shape)]
        ranges[input_name] = {"min": low, "max": high}
    return ranges


Checked = tuple[tuple[ParityResult, ...], dict[str, Any]]  # (parity results, the graph's manifest fields)


def lower_verified(path: Path, module: Any, parity_feeds: Any, dtype: str, rules: tuple[Rule, ...], *,
                   external_data: bool, limits: Mapping[str, float] = PARITY_LIMITS) -> Checked:
    """Lowers the verified fp32 graph at ``path`` (export/precision.py) and checks it against fp32 ``module`` on
    every feed.

    Returns the parity results and the graph's manifest fields; raises ExportVerificationError over the
    dtype's limit in ``limits``.
    """
    lowering = lower_graph(path, dtype, rules, external_data=external_data)
    parity = tuple(check_parity(path, module, feeds, tolerance=limits[dtype], dtype=dtype) for feeds in parity_feeds)
    return parity, lowering.as_dict()
