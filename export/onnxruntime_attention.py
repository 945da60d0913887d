"""The onnxruntime form of a graph: each ONNX ``Attention`` node becomes ``com.microsoft.MultiHeadAttention``.

Why a second form: onnxruntime 1.31's CPU kernel for the standard ``Attention`` operator still computes the
full tokens x tokens score matrix per head, while its contrib ``MultiHeadAttention`` on (batch, tokens,
heads x dim) inputs runs a tiled (flash-style) kernel whose memory is linear in tokens (its 4D key/value layout
falls back to materialising). Measured side by side by scripts/attention_benchmark.py (README, "Attention").
TensorRT keeps the standard form, which its parser maps to its fused attention layer.

Only the attention nodes change: each gets a Transpose + Reshape per input and the reverse after it, which
onnxruntime's transpose optimiser cancels against the exporter's own transposes. Weights are not touched, so a
graph whose weights live in ``<graph>.onnx.data`` gets a variant that points at that same file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

CONTRIB_DOMAIN = "com.microsoft"
CONTRIB_OPERATOR = "MultiHeadAttention"
VARIANT_SUFFIX = ".ort.onnx"  # transformer.onnx -> transformer.ort.onnx
_TO_TOKENS_FIRST = [0, 2, 1, 3]  # (batch, heads, tokens, dim) <-> (batch, tokens, heads, dim): its own inverse
_MERGE_HEADS = "wanrt_mha_merge_heads"  # Reshape target (0, 0, -1): keep batch and tokens, merge heads x dim


@dataclasses.dataclass(frozen=True)
class Variant:
    path: Path
    rewritten: int  # Attention nodes now run as MultiHeadAttention
    kept: int  # Attention nodes left as they are (a mask, causal, soft-capped, grouped heads or unknown heads)


def variant_path(graph_path: Path) -> Path:
    graph_path = Path(graph_path)
    return graph_path.with_name(graph_path.name.removesuffix(".onnx") + VARIANT_SUFFIX)


def write_onnxruntime_variant(graph_path: Path, *, shapes_from: Path | None = None) -> Variant | None:
    """Writes ``<graph>.ort.onnx`` next to ``graph_path`` when at least one Attention node can be rewritten;
    returns None (and writes nothing) when none can.

    Head counts come from the shapes the exporter recorded in the graph; ``shapes_from`` names the graph this
    one was made from, and wins where both record a tensor (ModelOpt's quantized graphs keep tensor names but
    re-infer shapes symbolically, losing the head count).
    """
    graph_path = Path(graph_path)
    model = onnx.load(graph_path, load_external_data=False)
    shapes = _known_shapes(model.graph)
    if shapes_from is not None:
        shapes |= _known_shapes(onnx.load(shapes_from, load_external_data=False).graph)
    nodes: list[onnx.NodeProto] = []
    kept = 0
    head_counts: list[int] = []
    for index, node in enumerate(model.graph.node):
        heads = _rewritable_heads(node, shapes) if _is_attention(node) else None
        if heads is None:
            kept += _is_attention(node)
            nodes.append(node)
            continue
        nodes.extend(_as_multi_head(node, heads, index))
        head_counts.append(heads)
    if not head_counts:
        return None
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), _MERGE_HEADS))
    for heads in sorted(set(head_counts)):
        model.graph.initializer.append(numpy_helper.from_array(np.array([0, 0, heads, -1], np.int64),
                                                               _split_name(heads)))
    if not any(o.domain == CONTRIB_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    out = variant_path(graph_path)
    # Initializers still carry their external-data references (location relative to the folder), so the
    # variant reads the base graph's weight file; inline weights are copied with the graph.
    onnx.save(model, out)
    return Variant(out, len(head_counts), kept)


def _is_attention(node: onnx.NodeProto) -> bool:
    return node.op_type == "Attention" and node.domain in ("", "ai.onnx")


def _known_shapes(graph: onnx.GraphProto) -> dict[str, list[int | None]]:
    values = [*graph.value_info, *graph.input, *graph.output]
    return {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in values if v.type.HasField("tensor_type")}


def _rewritable_heads(node: onnx.NodeProto, shapes: dict[str, list[int | None]]) -> int | None:
    """The head count when ``node`` is plain scaled dot-product attention on 4D inputs, else None."""
    inputs = list(node.input)
    if len(inputs) < 3 or any(inputs[3:]):  # a mask or a KV cache: MultiHeadAttention's mask semantics differ
        return None
    if any(o for o in list(node.output)[1:]):  # present key/value or the scores are used
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("is_causal", 0) or attrs.get("softcap", 0.0) or attrs.get("softmax_precision") is not None:
        return None
    q, k, v = (shapes.get(name) for name in inputs[:3])
    if not (q and k and v) or {len(q), len(k), len(v)} != {4}:
        return None
    if q[1] is None or q[1] != k[1] or q[1] != v[1] or q[3] != k[3]:  # grouped-query or unknown head count
        return None
    return q[1]


def _as_multi_head(node: onnx.NodeProto, heads: int, index: int) -> list[onnx.NodeProto]:
    prefix = f"{node.name or 'attention'}_mha{index}"
    nodes, merged = [], []
    for role, name in zip("qkv", node.input[:3], strict=True):
        tokens_first, flat = f"{prefix}_{role}_bsnh", f"{prefix}_{role}_bsd"
        nodes.append(helper.make_node("Transpose", [name], [tokens_first], f"{prefix}_{role}_transpose",
                                      perm=_TO_TOKENS_FIRST))
        nodes.append(helper.make_node("Reshape", [tokens_first, _MERGE_HEADS], [flat], f"{prefix}_{role}_reshape"))
        merged.append(flat)
    scale = [a for a in node.attribute if a.name == "scale"]
    attention = helper.make_node(CONTRIB_OPERATOR, merged, [f"{prefix}_y_bsd"], prefix, domain=CONTRIB_DOMAIN,
                                 num_heads=heads)
    attention.attribute.extend(scale)  # both operators default to 1/sqrt(head dim)
    attention.metadata_props.extend(node.metadata_props)  # keeps the module scope quant/placement.py reads
    nodes.append(attention)
    nodes.append(helper.make_node("Reshape", [f"{prefix}_y_bsd", _split_name(heads)], [f"{prefix}_y_bsnh"],
                                  f"{prefix}_y_reshape"))
    nodes.append(helper.make_node("Transpose", [f"{prefix}_y_bsnh"], [node.output[0]], f"{prefix}_y_transpose",
                                  perm=_TO_TOKENS_FIRST))
    return nodes


def _split_name(heads: int) -> str:
    return f"wanrt_mha_split_{heads}_heads"

