"""Graph precision for strongly typed TensorRT: an exported fp32 graph -> bf16/fp16 compute, fp32 where Wan needs it.

TensorRT 11 has no precision builder flags: a strongly typed network runs each layer in the type its graph says.
So the precision lives in the ONNX graph. Export always traces and verifies fp32 first (the reference), then
ModelOpt's AutoCast rewrites the verified graph: weights and activations in bf16/fp16, Cast nodes at the
boundaries, graph inputs and outputs kept fp32 (``keep_io_types``) so the numpy pipeline and every backend feed
and read the same arrays as before.

What stays fp32 is decided per node from the torch module it came from (export/scopes.py), following what
diffusers and transformers do when they run these models in bf16/fp16 (the ``*_FP32`` rules below). AutoCast's
data-driven check (``data_max``: keep nodes whose outputs exceed a bound on sample inputs) is off: export's
sample inputs are random, not the model's real activations, so the rules are explicit and the parity check
against fp32 PyTorch (with a limit per dtype) is the gate.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from wanrt.engine.artifact import GRAPH_DTYPES
from wanrt.errors import InvalidRequestError
from wanrt.export.scopes import module_path

DTYPES = GRAPH_DTYPES
VAE_DTYPES = ("fp32", "bf16")
# Largest relative error (max |graph - fp32 torch| / max |fp32 torch|) a graph may show at export's parity inputs.
# bf16 keeps 8 significant bits (rounding 2^-9 ~ 2e-3 per op), fp16 11 (2^-12 ~ 2.4e-4); a few dozen chained
# ops multiply that. Measured on the tiny test models: see tests/test_precision.py and the README.
PARITY_LIMITS = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}
# The VAE decoder chains ~30 convolutions into pixels: bf16 measured up to 5e-2 on the tiny test VAE.
VAE_PARITY_LIMITS = {"fp32": 1e-4, "bf16": 1e-1}
_ONNX_TYPES = {"fp32": onnx.TensorProto.FLOAT, "bf16": onnx.TensorProto.BFLOAT16, "fp16": onnx.TensorProto.FLOAT16}

# (module path regex, op types that still go to low precision there, why). A node matching a rule stays fp32
# unless its op is listed; nodes without scope metadata (exporter glue: reshapes, unpatchify) stay fp32 too.
Rule = tuple[str, tuple[str, ...], str]
_NORMS: Rule = (r"(^|\.)[^.]*norm[^.]*$", (), "norms (diffusers' keep_in_fp32 norm1/2/3; layerwise casting and "
                                              "T5LayerNorm's fp32 variance keep every norm in fp32)")
_ROOT: Rule = (r"^$", (), "the model's own forward: final modulation with scale_shift_table, clamp")
EXPERT_FP32: tuple[Rule, ...] = (
    _ROOT,
    _NORMS,
    (r"^rope$", (), "rotary tables (WanTransformer3DModel._keep_in_fp32_modules)"),
    (r"^condition_embedder(\.|$)", (), "time and text embeddings (keep_in_fp32: time_embedder; layerwise casting "
                                      "skips condition_embedder)"),
    (r"^patch_embedding$", (), "patch embedding (layerwise casting skips it)"),
    (r"^blocks\.\d+$", (), "modulation with scale_shift_table and gated residual adds (diffusers computes them "
                           "in fp32: .float())"),
    (r"^blocks\.\d+\.attn[12]$", ("MatMul", "Softmax", "Attention"),
     "RoPE applied in fp32 as diffusers does; scores and context stay low precision"),
)
TEXT_ENCODER_FP32: tuple[Rule, ...] = (
    _ROOT,
    _NORMS,
    (r"^encoder$", (), "attention mask arithmetic"),
    (r"\.DenseReluDense\.wo$", (), "T5 feed-forward output: activations overflow fp16 "
                                  "(UMT5EncoderModel._keep_in_fp32_modules = ['wo'])"),
    (r"^encoder\.block\.\d+\.layer\.\d+$", (), "residual stream (transformers: the fp32 wo output promotes it)"),
    (r"\.SelfAttention$", ("MatMul", "Softmax"), "relative position buckets (fp32 in transformers)"),
)
VAE_DECODER_FP32: tuple[Rule, ...] = (
    _ROOT,
    _NORMS,
)
RULES = {"expert": EXPERT_FP32, "text_encoder": TEXT_ENCODER_FP32, "vae_decoder": VAE_DECODER_FP32}


def check_dtype(field: str, dtype: str, allowed: tuple[str, ...] = DTYPES) -> str:
    if dtype not in allowed:
        raise InvalidRequestError(field, f"must be one of {', '.join(allowed)}, got {dtype!r}")
    return dtype


def keeps_fp32(node: onnx.NodeProto, rules: tuple[Rule, ...], module: str | None = None) -> bool:
    """Whether ``node`` (from torch module ``module``, default: its scope metadata) stays fp32 under ``rules``;
    nodes without a module scope do."""
    module = module_path(node) if module is None else module
    if module is None:
        return True
    return any(re.search(pattern, module) and node.op_type not in low_ops for pattern, low_ops, _ in rules)


def fp32_nodes(model: onnx.ModelProto, rules: tuple[Rule, ...],
               scopes: Mapping[str, str | None] | None = None) -> set[str]:
    """Names of the nodes of ``model`` that stay fp32.

    ModelOpt's quantization drops the scope metadata and adds Q/DQ nodes: ``scopes`` (node name -> module path,
    from the unquantized graph) gives the module of the nodes it kept, and Q/DQ nodes follow the node they feed
    (a DequantizeLinear is as precise as its MatMul, a QuantizeLinear as its DequantizeLinear).
    """
    scopes = scopes or {}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    kept: set[str] = set()
    decided: dict[str, bool] = {}

    def keep(node: onnx.NodeProto) -> bool:
        if node.name not in decided:
            fed = [c for o in node.output for c in consumers.get(o, [])]
            if node.op_type in _QDQ and fed:
                decided[node.name] = any(keep(c) for c in fed)
            else:
                decided[node.name] = keeps_fp32(node, rules, scopes.get(node.name))
        return decided[node.name]

    for node in model.graph.node:
        if keep(node):
            kept.add(node.name)
    return kept


_QDQ = ("QuantizeLinear", "DequantizeLinear")


def _scope_rule(kept: set[str]) -> Any:
    from modelopt.onnx.autocast.nodeclassifier import NodeRuleBase

    class ScopeRule(NodeRuleBase):
        """AutoCast rule: keep a node fp32 when its torch module says so (a set lookup, no name regexes)."""

        def _check_inner(self, node: onnx.NodeProto) -> bool:
            return node.name in kept

        def _log_skipped(self, node: onnx.NodeProto, **kwargs: Any) -> None:
            pass  # one INFO line per kept node is tens of thousands of lines at 14B

    return ScopeRule()


@dataclasses.dataclass(frozen=True)
class Lowering:
    """What the manifest records about a lowered graph."""

    dtype: str
    opset: int  # AutoCast raises it to 22 for bf16 (bf16 in more operators)
    compute_nodes: int  # MatMul/Gemm/Conv/Attention nodes
    low_precision_compute_nodes: int
    fp32_rules: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "opset": self.opset, "compute_nodes": self.compute_nodes,
                "low_precision_compute_nodes": self.low_precision_compute_nodes, "fp32_kept": list(self.fp32_rules)}


COMPUTE_OPS = ("MatMul", "Gemm", "Conv", "Attention")


def lower_graph(path: Path, dtype: str, rules: tuple[Rule, ...], *, external_data: bool,
                scopes: Mapping[str, str | None] | None = None) -> Lowering:
    """Rewrites the fp32 graph at ``path`` in place to ``dtype`` compute (fp32 where ``rules`` say), I/O fp32.

    ``scopes`` gives node name -> module path for graphs whose metadata was lost (ModelOpt's Q/DQ output).
    """
    check_dtype("dtype", dtype)
    if dtype == "fp32":
        raise ValueError("lower_graph is for bf16/fp16; an fp32 graph is already what export wrote")
    from modelopt.onnx.autocast import convert_to_mixed_precision

    _quiet_autocast()
    path = Path(path)
    source = onnx.load(os.fspath(path), load_external_data=False)
    kept = fp32_nodes(source, rules, scopes)
    model = convert_to_mixed_precision(
        os.fspath(path), low_precision_type=dtype, keep_io_types=True, custom_rule=_scope_rule(kept),
        # No reference run (see the module docstring) and no range check on weights: bf16 has fp32's range,
        # and fp16 weights of these models are far below 65504 (a bigger one would fail the parity check).
        data_max=np.inf, init_max=np.inf,
    )
    _copy_metadata(source, model)
    _save(model, path, external_data)
    del model  # shape inference below must see the graph without weights (protobuf's 2 GiB limit)
    saved = onnx.load(os.fspath(path), load_external_data=False)
    opset = next(o.version for o in saved.opset_import if o.domain in ("", "ai.onnx"))
    return Lowering(dtype, opset, *_count_compute(saved, dtype), tuple(r[2] for r in rules))


def _copy_metadata(source: onnx.ModelProto, lowered: onnx.ModelProto) -> None:
    """Puts each node's scope metadata back (AutoCast's graph rewrite drops it; quantization placement reads it)."""
    props = {n.name: n.metadata_props for n in source.graph.node if n.metadata_props}
    for node in lowered.graph.node:
        if node.name in props and not node.metadata_props:
            node.metadata_props.extend(props[node.name])


def scopes_of(model: onnx.ModelProto) -> dict[str, str | None]:
    """Node name -> module path, to carry over to a rewritten copy of ``model`` (see ``lower_graph``)."""
    return {n.name: module_path(n) for n in model.graph.node}


def _save(model: onnx.ModelProto, path: Path, external_data: bool) -> None:
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    if external_data:
        onnx.save_model(model, os.fspath(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
    else:
        onnx.save_model(model, os.fspath(path))


def _count_compute(model: onnx.ModelProto, dtype: str) -> tuple[int, int]:
    types = tensor_types(model)
    low = _ONNX_TYPES[dtype]
    compute = [n for n in model.graph.node if n.op_type in COMPUTE_OPS]
    return len(compute), sum(types.get(n.input[0]) == low for n in compute)


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every typed tensor of ``model`` (inputs, outputs, initializers, inferred values).

    Give it the graph loaded without external data: ONNX shape inference refuses models over 2 GiB.
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output, *graph.value_info]}
    types.update({i.name: i.data_type for i in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                types[node.output[0]] = value.data_type
    return types


def graph_dtype(model: onnx.ModelProto) -> str:
    """The low-precision type a graph computes in (``fp32`` when it has none)."""
    present = {i.data_type for i in model.graph.initializer}
    for name, onnx_type in _ONNX_TYPES.items():
        if name != "fp32" and onnx_type in present:
            return name
    return "fp32"


def _quiet_autocast() -> None:
    import logging

    logging.getLogger("modelopt.onnx").setLevel(logging.WARNING)
    logging.getLogger("modelopt.onnx.autocast").setLevel(logging.WARNING)


def emulate_bf16(path: Path) -> onnx.ModelProto:
    """An fp32-compute graph that computes what the bf16 graph at ``path`` computes on a GPU, for onnxruntime's CPU.

    onnxruntime's CPU provider has no bf16 MatMul/Conv (NOT_IMPLEMENTED, 1.31). bf16 GPU kernels (TensorRT's
    included) read bf16 tensors, accumulate in fp32 and round their result to bf16; so here every op runs in
    fp32 on the exact fp32 values of its bf16 inputs, and each tensor the graph stores in bf16 is rounded to bf16
    (Cast to bf16 and back) right after the op that makes it. Same graph, same roundings.

    The weights are not widened: each bf16 initializer stays bf16 (and where it was: a graph with external data
    keeps pointing at its ``.data`` file) and a Cast to fp32 feeds its consumers, so a session holds the weights
    once, at bf16's size, and widens one tensor at a time while it runs (``cpu_session`` turns off the constant
    folding that would widen them all at load). The model returned is loaded without its external data.
    """
    types = tensor_types(onnx.load(os.fspath(path), load_external_data=False))
    model = onnx.load(os.fspath(path), load_external_data=False)
    graph = model.graph
    for tensor in (a.t for n in graph.node for a in n.attribute if a.HasField("t")):  # small Constant values
        if tensor.data_type == _BF16:
            tensor.CopyFrom(onnx.numpy_helper.from_array(
                onnx.numpy_helper.to_array(tensor).astype(np.float32), tensor.name))
    widened = {i.name: f"{i.name}__fp32" for i in graph.initializer if i.data_type == _BF16}
    nodes = [onnx.helper.make_node("Cast", [name], [wide], to=onnx.TensorProto.FLOAT)
             for name, wide in widened.items()]
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.name == "to" and attribute.i == _BF16:
                attribute.i = onnx.TensorProto.FLOAT
        node.input[:] = [widened.get(i, i) for i in node.input]
        rounded = {o: f"{o}__fp32" for o in node.output if types.get(o) == _BF16 and node.op_type != "Constant"}
        node.output[:] = [rounded.get(o, o) for o in node.output]
        nodes.append(node)
        for name, unrounded in rounded.items():
            nodes.append(onnx.helper.make_node("Cast", [unrounded], [f"{name}__bf16"], to=_BF16))
            nodes.append(onnx.helper.make_node("Cast", [f"{name}__bf16"], [name], to=onnx.TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # bf16 types recorded there no longer hold
    return model


_BF16 = onnx.TensorProto.BFLOAT16


def cpu_session(path: Path, config: Mapping[str, str] | None = None) -> Any:
    """An onnxruntime CPU session for any exported graph (bf16 ones through ``emulate_bf16``).

    Sessions hold the weights once: no arena, no pre-packed copies of MatMul weights (a second copy of every
    weight, for a few percent of speed that parity checks and calibration do not need).
    """
    import onnxruntime as ort

    path = Path(path)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False
    options.add_session_config_entry("session.disable_prepacking", "1")
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    if graph_dtype(onnx.load(os.fspath(path), load_external_data=False)) != "bf16":
        return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    # Folding Cast(initializer) at load would widen every weight: keep the graph as emulate_bf16 wrote it.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                     os.fspath(path.resolve().parent))
    return ort.InferenceSession(emulate_bf16(path).SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def parity_session(path: Path, device: str = "cpu") -> Any:
    """The onnxruntime session export's parity check runs ``path`` in: the CPU (``cpu_session``), or onnxruntime-gpu's
    CUDA provider for ``cuda``/``cuda:N``, which runs bf16 natively. Never falls back to the CPU silently."""
    if not device.startswith("cuda"):
        return cpu_session(path)
    import onnxruntime as ort

    from wanrt.engine.device import parse_device
    from wanrt.errors import BackendUnavailableError

    index = parse_device(device).index
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(os.fspath(path), options,
                                   providers=[("CUDAExecutionProvider", {"device_id": index})])
    if "CUDAExecutionProvider" not in session.get_providers():
        raise BackendUnavailableError(f"onnxruntime's CUDA provider is not usable here (providers: "
                                      f"{session.get_providers()}): run export's parity on --device cpu")
    return session


TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def torch_dtype(dtype: str) -> Any:
    import torch

    return getattr(torch, TORCH_DTYPES[check_dtype("dtype", dtype)])


def fp32_modules(module: Any) -> tuple[str, ...]:
    """The parameters and buffers of ``module`` that are fp32 (block numbers as N, ``.weight``/``.bias`` dropped):
    what a bf16/fp16 graph traced from it keeps in fp32, as the manifest records it."""
    import torch

    names = {re.sub(r"\.(weight|bias)$", "", re.sub(r"\.\d+(?=\.|$)", ".N", name))
             for name, tensor in [*module.named_parameters(), *module.named_buffers()]
             if tensor.dtype == torch.float32}
    return tuple(sorted(names))


def keep_fp32(model: Any, modules: Any) -> Any:
    """Puts the submodules of ``model`` named in ``modules`` (last name component) back in fp32, as
    ``from_pretrained`` does for a model's ``_keep_in_fp32_modules``; returns ``model``."""
    wanted = set(modules or ())
    for name, sub in model.named_modules():
        if name.rsplit(".", 1)[-1] in wanted:
            sub.float()
    return model


def describe_precision(path: Path, dtype: str, fp32_kept: tuple[str, ...]) -> dict[str, Any]:
    """The manifest fields of a graph exported in ``dtype``: opset, compute nodes and how many run low."""
    saved = onnx.load(os.fspath(path), load_external_data=False)
    opset = next(o.version for o in saved.opset_import if o.domain in ("", "ai.onnx"))
    return Lowering(dtype, opset, *_count_compute(saved, dtype), tuple(fp32_kept)).as_dict()


Checked = tuple[tuple[Any, ...], dict[str, Any]]  # (parity results, the graph's manifest fields)


def lower_verified(path: Path, module: Any, parity_feeds: Any, dtype: str, rules: tuple[Rule, ...], *,
                   external_data: bool, limits: Mapping[str, float] = PARITY_LIMITS) -> Checked:
    """Lowers the verified fp32 graph at ``path`` and checks it against fp32 ``module`` on every feed.

    Returns the parity results and the graph's manifest fields; raises ExportVerificationError over the
    dtype's limit in ``limits``.
    """
    from wanrt.export import onnx_io

    lowering = lower_graph(path, dtype, rules, external_data=external_data)
    parity = tuple(onnx_io.check_parity(path, module, feeds, tolerance=limits[dtype], dtype=dtype)
                   for feeds in parity_feeds)
    return parity, lowering.as_dict()
