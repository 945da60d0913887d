"""Attention as one ONNX operator in the exported graphs, and what the manifest records about it.

The hook is small on purpose. diffusers' Wan attention (``WanAttnProcessor``) calls ``dispatch_attention_fn``,
whose "native" backend is ``torch.nn.functional.scaled_dot_product_attention``, and torch.onnx's dynamo exporter
at opset 23 translates that call into the single ONNX ``Attention`` operator (transformers' UMT5 and diffusers'
VAE attention go through the same function). So nothing in the model is rewritten: export runs at opset 23
with diffusers pinned to its native backend (``DIFFUSERS_ATTN_BACKEND`` or an ``attention_backend`` set by the
caller could name a kernel library that torch.export cannot trace), and the result is checked: a graph that
carries attention has no Softmax left outside the operator, so no tokens x tokens matrix is ever written out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from wanrt.errors import ExportVerificationError

OPERATOR = "Attention"
OPSET = 23  # the first opset with Attention (and RMSNormalization)


@contextlib.contextmanager
def native_attention() -> Iterator[None]:
    """diffusers' attention dispatch pinned to PyTorch's scaled_dot_product_attention while exporting."""
    try:
        from diffusers.models.attention_dispatch import attention_backend
    except ImportError:  # a diffusers without the dispatcher calls scaled_dot_product_attention directly
        yield
        return
    with attention_backend("native"):
        yield


def count_ops(path: Path) -> dict[str, int]:
    """Attention and Softmax nodes in the graph at ``path``, its functions and subgraphs included."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    counts = {OPERATOR: 0, "Softmax": 0}
    graphs = [model.graph, *model.functions]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            if node.op_type in counts and node.domain in ("", "ai.onnx"):
                counts[node.op_type] += 1
            for attribute in node.attribute:  # If/Loop/Scan bodies
                graphs.extend([attribute.g] if attribute.HasField("g") else attribute.graphs)
    return counts


def record(path: Path, check: Callable[[Path], Sequence[Any]], *, required: bool = False,
           shapes_from: Path | None = None, onnxruntime_form: bool = True) -> tuple[dict, list]:
    """The manifest's ``attention`` entry for the graph at ``path``, and parity results for its onnxruntime form.

    Writes ``<graph>.ort.onnx`` (see onnxruntime_attention.py) when some attention can run as onnxruntime's
    linear-memory kernel, and checks it with ``check`` (the same feeds and tolerance as the graph itself).
    ``required``: the graph must carry attention as the operator and nothing else (the DiT experts).
    ``shapes_from``: the graph ``path`` was derived from, for tensor shapes ``path`` no longer records.
    ``onnxruntime_form``: False for bf16/fp16 graphs, which keep the standard form on every backend.
    """
    from wanrt.export.onnxruntime_attention import CONTRIB_DOMAIN, CONTRIB_OPERATOR, write_onnxruntime_variant

    counts = count_ops(path)
    if required and (counts[OPERATOR] == 0 or counts["Softmax"]):
        raise ExportVerificationError(
            f"{Path(path).name}: expected attention as the ONNX {OPERATOR} operator only, found "
            f"{counts[OPERATOR]} {OPERATOR} and {counts['Softmax']} Softmax nodes (is an attention processor "
            "bypassing scaled_dot_product_attention?)")
    entry: dict[str, Any] = {"operator": OPERATOR, "opset": OPSET, "nodes": counts[OPERATOR],
                             "softmax_nodes": counts["Softmax"]}
    if not counts[OPERATOR] or not onnxruntime_form:
        return entry, []
    variant = write_onnxruntime_variant(path, shapes_from=shapes_from)
    if variant is None:
        return entry, []
    parity = list(check(variant.path))
    entry["onnxruntime"] = {"file": variant.path.name, "operator": f"{CONTRIB_DOMAIN}.{CONTRIB_OPERATOR}",
                            "nodes": variant.rewritten, "kept": variant.kept}
    return entry, parity
