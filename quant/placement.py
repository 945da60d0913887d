"""Where Q/DQ goes, following TensorRT's explicit-quantization rules, and the check that a graph obeys them.

Quantized: the matrix multiplies of the attention projections (q, k, v, out; self- and cross-attention) and of
the feed-forward, with a constant weight: weights symmetric INT8 (or FP8 E4M3) per output channel, activations
per tensor. Everything else stays in high precision: the time embedding and modulation, the text and patch
embeddings, the final projection, the norms, RoPE, and attention itself (one ONNX Attention node since opset 23:
scores, softmax and context, two activations and no weight; older exports spell it as MatMul -> Softmax ->
MatMul, whose products are never candidates either). Decisions are made from the torch module each ONNX node
came from, which the dynamo exporter records in every node's ``pkg.torch.onnx.name_scopes`` metadata; ONNX node
names are opaque.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection
from typing import Any

import onnx

from wanrt.export.scopes import module_path
from wanrt.quant import QuantizationError

COMPUTE_OPS = ("MatMul", "Gemm", "Conv")  # ops with weights: the candidates, each decided and listed
QUANTIZED_OPS = ("MatMul", "Gemm")
WEIGHT_DTYPES = {"int8": onnx.TensorProto.INT8, "fp8": onnx.TensorProto.FLOAT8E4M3FN}
NEVER_QUANTIZED = ("LayerNormalization (norms)", "modulation Mul/Add (scale_shift_table + time projection)",
                   "RoPE", "attention (the Attention operator, or Softmax and its score/context MatMuls)")

# (module path regex relative to the graph's root module, quantize?, why). First match wins.
Rule = tuple[str, bool, str]
EXPERT_RULES: tuple[Rule, ...] = (
    (r"^blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$", True, "attention projection"),
    (r"^blocks\.\d+\.ffn\.net\.(0\.proj|2)$", True, "feed-forward"),
    (r"^blocks\.\d+\.attn[12]$", False, "attention scores/context (activation x activation)"),
    (r"^condition_embedder\.(time_embedder|time_proj)", False, "time embedding and modulation"),
    (r"^condition_embedder\.text_embedder", False, "text embedding projection"),
    (r"^condition_embedder\.image_embedder", False, "image embedding"),
    (r"^patch_embedding", False, "patch embedding"),
    (r"^proj_out", False, "final projection"),
)
TEXT_ENCODER_RULES: tuple[Rule, ...] = (
    (r"^encoder\.block\.\d+\.layer\.0\.SelfAttention\.(q|k|v|o)$", True, "attention projection"),
    (r"^encoder\.block\.\d+\.layer\.1\.DenseReluDense\.(wi|wi_0|wi_1)$", True, "feed-forward input"),
    # T5's feed-forward output carries large activation outliers (transformers keeps it in fp32 for fp16 too).
    (r"^encoder\.block\.\d+\.layer\.1\.DenseReluDense\.wo$", False, "feed-forward output (activation outliers)"),
    (r"\.SelfAttention$", False, "attention scores/context (activation x activation)"),
)
_DEFAULT_REASON = "outside the attention projections and feed-forward"


@dataclasses.dataclass(frozen=True)
class NodeDecision:
    name: str
    op_type: str
    module: str  # the torch module path relative to the graph's root ("blocks.0.attn1.to_q")
    quantize: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op_type, "module": self.module, "reason": self.reason}


@dataclasses.dataclass(frozen=True)
class Placement:
    """The decision for every weighted compute node of one graph."""

    decisions: tuple[NodeDecision, ...]

    @property
    def quantize(self) -> list[str]:
        return [d.name for d in self.decisions if d.quantize]

    @property
    def excluded(self) -> list[NodeDecision]:
        return [d for d in self.decisions if not d.quantize]


def plan(model: onnx.ModelProto, rules: tuple[Rule, ...]) -> Placement:
    """Decides every MatMul/Gemm/Conv of ``model`` (an exported, unquantized graph) by its module path."""
    initializers = {i.name for i in model.graph.initializer}
    constants = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    decisions = []
    for node in model.graph.node:
        if node.op_type not in COMPUTE_OPS:
            continue
        module = module_path(node)
        if module is None:
            raise QuantizationError(f"node {node.name} has no module scope metadata: the graph was not made by "
                                    "`wanrt export` (torch dynamo exporter); re-export it")
        quantize, reason = next(((q, r) for pattern, q, r in rules if re.search(pattern, module)),
                                (False, _DEFAULT_REASON))
        has_weight = len(node.input) > 1 and (node.input[1] in initializers or node.input[1] in constants)
        if quantize and (node.op_type not in QUANTIZED_OPS or not has_weight):
            quantize, reason = False, "no constant weight"
        decisions.append(NodeDecision(node.name, node.op_type, module, quantize, reason))
    if not any(d.quantize for d in decisions):
        raise QuantizationError("no attention projection or feed-forward MatMul found: is this a Wan graph?")
    return Placement(tuple(decisions))


def check_placement(model: onnx.ModelProto, placement: Placement, mode: str,
                    attention: Collection[str] = ()) -> tuple[list[str], list[str]]:
    """Checks a quantized graph against the rules; returns (quantized node names, problems found).

    Every Q/DQ pair must feed a planned MatMul/Gemm (or one of the ``attention`` nodes, whose Q/K/V Q/DQ
    quant/qdq_graph.check_attention_qdq checks); each quantized node must take a per-tensor quantized
    activation (scalar scale, zero point 0) and a constant weight of the mode's type with one scale per output
    channel (zero points 0: symmetric); no excluded node may take a dequantized input.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    planned = set(placement.quantize) | set(attention)
    excluded = {d.name for d in placement.excluded}
    problems: list[str] = []
    for n in graph.node:
        if n.op_type == "DequantizeLinear":
            bad = [c.name for c in consumers.get(n.output[0], []) if c.name not in planned]
            if bad:
                problems.append(f"DequantizeLinear {n.name} feeds {bad}, which are not planned for quantization")
        elif n.op_type == "QuantizeLinear":
            if any(c.op_type != "DequantizeLinear" for c in consumers.get(n.output[0], [])):
                problems.append(f"QuantizeLinear {n.name} feeds something other than a DequantizeLinear")
    quantized = []
    for n in graph.node:
        dq_inputs = [producer.get(i) for i in n.input[:2]]
        if not any(p is not None and p.op_type == "DequantizeLinear" for p in dq_inputs):
            continue
        if n.name in excluded:
            problems.append(f"{n.name} is excluded but takes a dequantized input")
            continue
        if n.name in attention:
            continue
        quantized.append(n.name)
        problems += _check_node(n, dq_inputs, inits, producer, WEIGHT_DTYPES[mode])
    return quantized, problems


def _check_node(node: onnx.NodeProto, dq_inputs: list[onnx.NodeProto | None], inits: dict[str, onnx.TensorProto],
                producer: dict[str, onnx.NodeProto], weight_dtype: int) -> list[str]:
    act, weight = dq_inputs
    problems = []
    if act is None or act.op_type != "DequantizeLinear" or producer.get(act.input[0]) is None \
            or producer[act.input[0]].op_type != "QuantizeLinear":
        problems.append(f"{node.name}: activation input is not a Q/DQ pair")
    elif _size(act.input[1], inits) != 1 or not _zero(act, inits):
        problems.append(f"{node.name}: activation is not quantized per tensor with zero point 0")
    if weight is None or weight.op_type != "DequantizeLinear" or weight.input[0] not in inits:
        return problems + [f"{node.name}: weight is not a constant behind a DequantizeLinear"]
    w = inits[weight.input[0]]
    if w.data_type != weight_dtype:
        problems.append(f"{node.name}: weight type {onnx.TensorProto.DataType.Name(w.data_type)}")
    transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
    out_axis = 0 if transposed else len(w.dims) - 1
    axis = next((a.i for a in weight.attribute if a.name == "axis"), 1)
    channels = w.dims[out_axis] if w.dims else 0
    if weight.input[1] not in inits or axis % max(len(w.dims), 1) != out_axis \
            or _size(weight.input[1], inits) != channels:
        problems.append(f"{node.name}: weight is not quantized per output channel (axis {axis}, {channels} channels)")
    if not _zero(weight, inits):
        problems.append(f"{node.name}: weight zero point is not 0 (not symmetric)")
    return problems


def _size(name: str, inits: dict[str, onnx.TensorProto]) -> int:
    tensor = inits.get(name)
    if tensor is None:
        return -1
    size = 1
    for d in tensor.dims:
        size *= d
    return size


def _zero(dq: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    from onnx import numpy_helper

    if len(dq.input) < 3 or not dq.input[2]:
        return True  # no zero point means 0
    tensor = inits.get(dq.input[2])
    if tensor is None:
        return False
    return not numpy_helper.to_array(tensor).astype("float32").any()
