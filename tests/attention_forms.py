"""Helpers for tests of the onnxruntime attention form (export/onnxruntime_attention.py, export/form_check.py)."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
from onnx import helper

CONTRIB_OPERATOR = "MultiHeadAttention"


def cpu_session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    """An onnxruntime CPU session on a model or a file (form_check's ``session`` argument for fp32 graphs)."""
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def plant_in_form(variant: Path, change: str, head_dim: int) -> Path:
    """A copy of the onnxruntime form ``variant`` with one mistake planted in its first attention or around it:
    ``scale`` (0.9 x the default 1/sqrt(head dim): a wrong softmax temperature), ``heads`` (twice the heads over
    half the width each) or ``outside`` (the first Add, not attention, becomes a Sub). Returns the copy's path."""
    model = onnx.load(variant, load_external_data=False)  # weights stay where they are (external data too)
    first = next(n for n in model.graph.node if n.op_type == CONTRIB_OPERATOR)
    if change == "scale":
        first.attribute.append(helper.make_attribute("scale", 0.9 * head_dim ** -0.5))
    elif change == "heads":
        next(a for a in first.attribute if a.name == "num_heads").i *= 2
    elif change == "outside":
        next(n for n in model.graph.node if n.op_type == "Add").op_type = "Sub"
    else:
        raise ValueError(f"unknown change {change!r}")
    out = variant.with_name(f"planted-{change}-{variant.name}")
    onnx.save(model, out)
    return out
