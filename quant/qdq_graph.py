"""Writes the ranges ModelOpt calibrated in torch into an exported expert graph as explicit Q/DQ.

The graph is the bf16 expert as the dynamo exporter wrote it (opset 23: attention is one ONNX ``Attention``
node, every node carries its torch module path, export/scopes.py). Per the placement rules (quant/placement.py)
and the recipe's high-precision blocks:

- each quantized MatMul gets a per-tensor QuantizeLinear/DequantizeLinear on its activation (SmoothQuant's
  per-channel factor is already there, the Mul the exporter kept from ModelOpt's ``pre_quant_scale``) and its
  weight stored quantized (FP8 E4M3 or INT8, symmetric, one scale per output channel) behind a
  DequantizeLinear;
- each quantized attention gets E4M3 Q/DQ on its Q, K and V inputs, the Attention operator itself unchanged,
  and its softmax-output quantization (E4M3, fixed range [0, 1], as ModelOpt's ``--quantize-mha`` exports it)
  recorded on the node (``wanrt.softmax_quantization`` metadata) and in the manifest: the standard operator
  has no input for it; TensorRT's IAttention sets it as its normalization quantization.

Scales are in the activation's type (bf16), so every DequantizeLinear feeds its consumer in bf16 and nothing
new runs in fp32. Weights stream through one tensor at a time (onnx_ir reads the external data lazily): a 14B
expert's graph never sits in memory whole.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from wanrt.export.scopes import module_path
from wanrt.quant import QuantizationError, placement
from wanrt.quant.torch_ptq import FP8_MAX, INT8_MAX, CalibratedRanges

SOFTMAX_METADATA_KEY = "wanrt.softmax_quantization"
# Scales and zero points stay inside the .onnx file (checks read them without the weights): per-channel ones are
# at most 13,824 channels x 2 bytes.
INLINE_BYTES = 128 * 1024
_QMAX = {"fp8": FP8_MAX, "int8": INT8_MAX}


@dataclasses.dataclass(frozen=True)
class QdqResult:
    quantized: list[dict[str, str]]  # {"name", "module"} of each quantized MatMul
    attention: list[dict[str, str]]  # {"name", "module"} of each Attention with Q/DQ on Q, K, V
    excluded: list[dict[str, str]]  # placement decisions left in high precision, with the reason
    plan: placement.Placement  # decided on the graph before Q/DQ (its MatMul names are kept)

    def attention_record(self, mode: str) -> dict[str, Any]:
        return {"qdq": mode, "inputs": ["query", "key", "value"], "nodes": len(self.attention),
                "softmax": {"quantize_to": mode, "amax": 1.0, "scale": 1.0 / _QMAX[mode]}} if self.attention \
            else {"qdq": None, "nodes": 0}


def insert_qdq(source: Path, dest: Path, ranges: CalibratedRanges, rules: tuple[placement.Rule, ...]) -> QdqResult:
    """Reads the graph at ``source``, writes it with Q/DQ to ``dest`` (+ ``dest.data``); returns what it did."""
    import onnx_ir as ir

    plan = placement.plan(onnx.load(os.fspath(source), load_external_data=False), rules)
    planned = {d.name: d.module for d in plan.decisions if d.quantize}
    unplanned = sorted(set(ranges.linears) - set(planned.values()))
    if unplanned:
        raise QuantizationError(f"ModelOpt quantized modules the placement rules keep in high precision: "
                                f"{unplanned[:5]}")
    model = ir.load(os.fspath(source))
    graph = model.graph
    qmax, qtype = _QMAX[ranges.mode], _QTYPE[ranges.mode]
    quantized, attention = [], []
    for node in list(graph):
        module = _module(node)
        if node.name in planned:
            linear = ranges.linears.get(planned[node.name])
            if linear is None:
                raise QuantizationError(f"{planned[node.name]} ({node.name}) is planned for quantization but "
                                        "ModelOpt left it unquantized")
            _quantize_activation(graph, node, 0, linear.input_amax / qmax, qtype)
            _quantize_weight(graph, node, linear.weight_amax / qmax, qtype)
            quantized.append({"name": node.name, "module": planned[node.name]})
        elif node.op_type == "Attention" and module in ranges.attention:
            amax = ranges.attention[module]
            for index, key in enumerate("qkv"):
                _quantize_activation(graph, node, index, amax[key] / FP8_MAX, _QTYPE["fp8"])
            node.metadata_props[SOFTMAX_METADATA_KEY] = json.dumps(
                {"quantize_to": "fp8", "scale": amax["softmax"] / FP8_MAX})
            attention.append({"name": node.name, "module": module})
    missing = sorted(set(ranges.attention) - {a["module"] for a in attention})
    if missing:
        raise QuantizationError(f"no Attention operator found for the quantized attention of {missing[:5]}")
    for name in [n for n, v in graph.initializers.items() if not v.uses()]:
        graph.initializers.pop(name)  # the bf16 weights now stored quantized
    data = dest.with_name(dest.name + ".data")
    if data.exists():
        data.unlink()
    ir.save(model, os.fspath(dest), external_data=data.name, size_threshold_bytes=INLINE_BYTES)
    if data.exists() and not data.stat().st_size:
        data.unlink()  # every tensor was small enough to stay inline
    for path in (dest, data):
        if path.exists():
            path.chmod(0o644)
    excluded = [d.as_dict() for d in plan.excluded]
    return QdqResult(quantized, attention, excluded, plan)


_QTYPE = {"fp8": "FLOAT8E4M3FN", "int8": "INT8"}


def _module(node: Any) -> str | None:
    scopes = node.metadata_props.get("pkg.torch.onnx.name_scopes")
    if scopes is None:
        return None
    proto = onnx.NodeProto()
    proto.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=scopes)
    return module_path(proto)


def _numpy_dtype(ir_type: Any) -> Any:
    return ir_type.numpy()


def _quantize_activation(graph: Any, node: Any, index: int, scale: float, qtype: str) -> None:
    import onnx_ir as ir

    value = node.inputs[index]
    float_type = value.dtype
    base = f"{node.name}/input{index}"
    scale_value = _initializer(graph, f"{base}/scale", np.asarray(scale, dtype=_numpy_dtype(float_type)))
    zero = _initializer(graph, f"{base}/zero_point", np.zeros((), dtype=_numpy_dtype(getattr(ir.DataType, qtype))))
    q = ir.node("QuantizeLinear", [value, scale_value, zero], name=f"{base}/QuantizeLinear")
    dq = ir.node("DequantizeLinear", [q.outputs[0], scale_value, zero], name=f"{base}/DequantizeLinear")
    q.outputs[0].name, dq.outputs[0].name = f"{base}/quantized", f"{base}/dequantized"
    dq.outputs[0].dtype, dq.outputs[0].shape = float_type, value.shape
    _copy_scope(node, q, dq)
    graph.insert_before(node, [q, dq])
    node.replace_input_with(index, dq.outputs[0])


def _quantize_weight(graph: Any, node: Any, scale: np.ndarray, qtype: str) -> None:
    """The constant weight of a MatMul ([in, out]) or Gemm (transB: [out, in]) stored quantized per out channel."""
    import onnx_ir as ir

    weight = node.inputs[1]
    if weight.const_value is None:
        raise QuantizationError(f"{node.name}: weight is not a constant")
    transposed = node.op_type == "Gemm" and node.attributes.get("transB") is not None \
        and node.attributes["transB"].value == 1
    axis = 0 if transposed else weight.const_value.shape.rank() - 1
    float_type = weight.dtype
    w = weight.const_value.numpy().astype(np.float32)
    if scale.size != w.shape[axis]:
        raise QuantizationError(f"{node.name}: {scale.size} weight ranges for {w.shape[axis]} output channels")
    scale = scale.astype(_numpy_dtype(float_type))  # the scale the graph stores is the one to quantize with
    shape = [1] * w.ndim
    shape[axis] = -1
    q = _round(w / np.maximum(scale.astype(np.float32), np.finfo(np.float32).tiny).reshape(shape), qtype)
    base = f"{node.name}/weight"
    quantized = _initializer(graph, f"{base}/quantized", q)
    scale_value = _initializer(graph, f"{base}/scale", scale)
    zero = _initializer(graph, f"{base}/zero_point", np.zeros(scale.shape, dtype=q.dtype))
    dq = ir.node("DequantizeLinear", [quantized, scale_value, zero], attributes={"axis": axis},
                 name=f"{base}/DequantizeLinear")
    dq.outputs[0].name = f"{base}/dequantized"
    dq.outputs[0].dtype, dq.outputs[0].shape = float_type, weight.shape
    _copy_scope(node, dq)
    graph.insert_before(node, [dq])
    node.replace_input_with(1, dq.outputs[0])


def _round(values: np.ndarray, qtype: str) -> np.ndarray:
    import ml_dtypes

    if qtype == "INT8":
        return np.clip(np.rint(values), -INT8_MAX, INT8_MAX).astype(np.int8)
    return np.clip(values, -FP8_MAX, FP8_MAX).astype(ml_dtypes.float8_e4m3fn)  # round to nearest even


def _initializer(graph: Any, name: str, array: np.ndarray) -> Any:
    import onnx_ir as ir

    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    value.dtype, value.shape = value.const_value.dtype, ir.Shape(array.shape)
    graph.register_initializer(value)
    return value


def _copy_scope(source: Any, *nodes: Any) -> None:
    """New nodes carry the module scope of the node they serve (placement and precision rules read it)."""
    scopes = source.metadata_props.get("pkg.torch.onnx.name_scopes")
    if scopes is not None:
        for node in nodes:
            node.metadata_props["pkg.torch.onnx.name_scopes"] = scopes


def compute_dtypes(path: Path) -> dict[str, dict[str, list[str]]]:
    """For each MatMul/Gemm/Conv/Attention of the graph at ``path``: its output type and whether a
    DequantizeLinear feeds it, grouped as {"quantized"|"high_precision": {dtype: [module, ...]}}."""
    from wanrt.export.precision import tensor_types

    model = onnx.load(os.fspath(path), load_external_data=False)
    types = tensor_types(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    result: dict[str, dict[str, list[str]]] = {"quantized": {}, "high_precision": {}}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv", "Attention"):
            continue
        fed = any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in node.input)
        dtype = onnx.TensorProto.DataType.Name(types.get(node.output[0], 0))
        group = result["quantized" if fed else "high_precision"]
        group.setdefault(dtype, []).append(module_path(node) or node.name)
    return result


def check_attention_qdq(path: Path, result: QdqResult) -> list[str]:
    """Problems with the attention Q/DQ of the written graph: each listed Attention must take Q, K and V through
    a per-tensor E4M3 QuantizeLinear -> DequantizeLinear pair (zero point 0) and carry its softmax record."""
    model = onnx.load(os.fspath(path), load_external_data=False)
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    problems = []
    for entry in result.attention:
        node = by_name.get(entry["name"])
        if node is None or node.op_type != "Attention":
            problems.append(f"{entry['name']}: no Attention node of that name")
            continue
        for index in range(3):
            dq = producer.get(node.input[index])
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is None or q.op_type != "QuantizeLinear":
                problems.append(f"{node.name}: input {index} is not a Q/DQ pair")
                continue
            zero = inits.get(q.input[2]) if len(q.input) > 2 else None
            if zero is None or zero.data_type != onnx.TensorProto.FLOAT8E4M3FN or list(zero.dims):
                problems.append(f"{node.name}: input {index} is not quantized per tensor to E4M3")
        if not any(p.key == SOFTMAX_METADATA_KEY for p in node.metadata_props):
            problems.append(f"{node.name}: no softmax quantization record")
    return problems
