"""Which file of an exported graph each backend runs, and whether that form materialises attention.

A graph entry written since attention became one ONNX operator carries an ``attention`` record (see
export/attention.py): ``{"operator": "Attention", "nodes": N, "onnxruntime": {"file": "<graph>.ort.onnx", ...}}``.
TensorRT reads the entry's ``file`` (the standard Attention operator, its fused attention layer); onnxruntime
reads the ``onnxruntime`` form when there is one (its linear-memory MultiHeadAttention kernel). Entries
without the record come from older exports: MatMul -> Softmax -> MatMul, every backend materialising.
"""

from __future__ import annotations

from typing import Any


def onnxruntime_file(entry: dict[str, Any]) -> str:
    """The file the onnxruntime backend loads for this graph entry."""
    variant = (entry.get("attention") or {}).get("onnxruntime") or {}
    return variant.get("file") or entry["file"]


def referenced_files(entry: dict[str, Any]) -> list[str]:
    """Every graph file the entry names (the manifest must list and hash each of them)."""
    return list(dict.fromkeys([entry["file"], onnxruntime_file(entry)]))


def materialises_attention(entry: dict[str, Any], backend: str) -> bool:
    """Whether running this graph on ``backend`` writes out a tokens x tokens score matrix per head.

    ``backend``: ``onnxruntime`` (its CPU kernel for the standard Attention operator still materialises, its
    MultiHeadAttention form does not) or ``tensorrt`` (the parser maps Attention to the fused attention layer).
    """
    record = entry.get("attention")
    if not record or not record.get("nodes"):
        return bool(record is None)  # old export: explicit softmax; a graph with no attention at all: never
    if backend == "tensorrt":
        return False
    return not (record.get("onnxruntime") and not record["onnxruntime"].get("kept"))
