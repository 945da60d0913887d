"""Which torch module each exported ONNX node came from, read off the dynamo exporter's scope metadata.

ONNX node names are opaque; quantization placement (quant/placement.py) and precision lowering
(export/precision.py) both decide per node from its module path. No torch import: quant reads artifacts without it.
"""

from __future__ import annotations

import ast

import onnx

# The one piece of exporter metadata an artifact keeps: each node's module path.
SCOPE_METADATA_KEY = "pkg.torch.onnx.name_scopes"


def module_path(node: onnx.NodeProto) -> str | None:
    """The innermost torch module a node was exported from, relative to the graph's root module, or None."""
    scopes_text = next((p.value for p in node.metadata_props if p.key == SCOPE_METADATA_KEY), None)
    if scopes_text is None:
        return None
    scopes = [s for s in ast.literal_eval(scopes_text) if s]
    modules = scopes[:-1]  # the last scope names the op itself (linear_5, conv3d, ...)
    if not modules:
        return ""
    root, innermost = modules[0], max(modules, key=len)
    return innermost[len(root) + 1:] if innermost.startswith(root + ".") else ""
