"""SmoothQuant on an ONNX graph: move activation outliers into the weights before per-tensor quantization.

For a MatMul ``X @ W`` with per-input-channel scale ``s``: ``X @ W == (X / s) @ (s[:, None] * W)``. Channels
where X has outliers get divided down, and per-output-channel weight quantization absorbs the larger weight
rows. ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` (Xiao et al. 2023). MatMuls sharing an input (q, k, v)
share one ``s``. The division is an explicit Mul by a constant vector in front of the QuantizeLinear: in
Wan the activations come from a timestep-dependent modulation, so there is no static op to fold ``1/s`` into,
and TensorRT fuses the Mul into the pointwise kernel before the quantization.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from wanrt.quant.backend_wrappers import Feeds

MAX_STAT_SAMPLES = 16  # channel maxima settle fast; bounds the extra FP32 passes


def smooth(model: onnx.ModelProto, nodes: Sequence[str], samples: Sequence[Feeds], alpha: float) -> dict[str, int]:
    """Rewrites ``model`` in place for the MatMuls named in ``nodes``; returns {activation: channels} smoothed."""
    inits = {i.name: i for i in model.graph.initializer}
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if node.name in set(nodes) and node.op_type == "MatMul" and node.input[1] in inits \
                and len(inits[node.input[1]].dims) == 2:
            groups.setdefault(node.input[0], []).append(node)
    if not groups:
        return {}
    act_max = _channel_maxima(model, list(groups), samples)
    use_count: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            use_count[name] = use_count.get(name, 0) + 1
    smoothed = {}
    for act, members in groups.items():
        weights = [numpy_helper.to_array(inits[n.input[1]]).astype(np.float32) for n in members]
        w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        a_max = act_max[act]
        if a_max.shape != w_max.shape:
            continue  # not a plain (..., K) @ (K, N): leave it
        scale = (np.maximum(a_max, 1e-5) ** alpha / np.maximum(w_max, 1e-5) ** (1.0 - alpha)).astype(np.float32)
        scale = np.clip(scale, 1e-4, 1e4)
        inv = numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{act}_smooth_inv_scale")
        out = f"{act}_smoothed"
        model.graph.initializer.append(inv)
        model.graph.node.append(helper.make_node("Mul", [act, inv.name], [out], name=f"{act}_smooth_mul"))
        for node, w in zip(members, weights, strict=True):
            new_w = numpy_helper.from_array(w * scale[:, None], f"{node.input[1]}_smoothed")
            model.graph.initializer.append(new_w)
            node.input[0], node.input[1] = out, new_w.name
        smoothed[act] = int(scale.size)
    _drop_unused_initializers(model)
    _toposort(model)
    return smoothed


def _channel_maxima(model: onnx.ModelProto, tensors: list[str], samples: Sequence[Feeds]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in tensors:
        if name not in existing:
            probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        # Through a file with external data: protobuf cannot serialise a model over 2 GB in one message.
        path = os.path.join(tmp, "probe.onnx")
        onnx.save_model(probe, path, save_as_external_data=True, location="probe.onnx.data")
        del probe
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    maxima: dict[str, np.ndarray] = {}
    step = max(1, len(samples) // MAX_STAT_SAMPLES)  # spread over the trajectory, not its first steps
    for feeds in list(samples)[::step][:MAX_STAT_SAMPLES]:
        values = session.run(tensors, feeds)
        for name, value in zip(tensors, values, strict=True):
            m = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            maxima[name] = m if name not in maxima else np.maximum(maxima[name], m)
    return maxima


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _toposort(model: onnx.ModelProto) -> None:
    """Puts the appended Mul nodes before their consumers (ONNX requires topological order)."""
    graph = model.graph
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError("graph has a cycle or a missing input")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
