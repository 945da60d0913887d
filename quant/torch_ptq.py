"""ModelOpt post-training quantization of one bf16 expert in torch (``modelopt.torch.quantization``).

``mtq.quantize`` inserts fake quantizers and calibrates them with a forward loop over real trajectories
(quant/trajectories.py); INT8 runs ModelOpt's SmoothQuant, which rescales each quantized Linear's weight and
gives its input quantizer a per-channel ``pre_quant_scale``. What the calibration found is then read out as
plain numbers per module (``CalibratedRanges``), which quant/qdq_graph.py writes into the exported ONNX graph
as QuantizeLinear/DequantizeLinear. ModelOpt's own ONNX export is not used: it goes through the TorchScript
exporter at opset 20, which spells attention as MatMul -> Softmax -> MatMul (a tokens x tokens matrix per head
at 33k-76k tokens) and cannot export ``aten::rms_norm``; wanrt's graphs keep the fused ONNX Attention operator.

With every quantizer disabled the ModelOpt-converted module computes exactly the bf16 model (SmoothQuant's
``pre_quant_scale`` still applies, as an explicit Mul the exporter keeps), so the same module object is the
bf16 reference, the fake-quantized model and the module that is exported: one expert in memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from wanrt.quant import QuantizationError
from wanrt.quant.torch_recipe import SOFTMAX_AMAX, TorchRecipe

FP8_MAX = 448.0  # largest E4M3 value
INT8_MAX = 127.0


@dataclasses.dataclass(frozen=True)
class LinearRanges:
    input_amax: float
    weight_amax: np.ndarray  # one per output channel
    pre_quant_scale: np.ndarray | None  # SmoothQuant's per-input-channel factor (already in the graph as a Mul)


@dataclasses.dataclass(frozen=True)
class CalibratedRanges:
    """What calibration found, by module path relative to the expert ("blocks.3.attn1.to_q")."""

    mode: str
    linears: dict[str, LinearRanges]
    attention: dict[str, dict[str, float]]  # "blocks.3.attn1" -> {"q": amax, "k": ..., "v": ..., "softmax": 1.0}

    def summary(self) -> dict[str, Any]:
        return {"linears": len(self.linears), "attention": len(self.attention),
                "smoothquant": sum(r.pre_quant_scale is not None for r in self.linears.values())}


def require_modelopt_torch() -> None:
    try:
        import modelopt.torch.quantization  # noqa: F401
    except ImportError as err:
        raise QuantizationError(f"the torch route of `wanrt quantize` needs NVIDIA ModelOpt (pip install "
                                f"'wanrt[quant]'): {err}") from None


def quantize(expert: Any, recipe: TorchRecipe, forward_loop: Callable[[Any], None]) -> CalibratedRanges:
    """Inserts ModelOpt's quantizers into ``expert`` (in place) and calibrates them with ``forward_loop``."""
    import modelopt.torch.quantization as mtq

    blocks = len(getattr(expert, "blocks", ()))
    if blocks and set(range(blocks)) <= set(recipe.high_precision_blocks):
        raise QuantizationError(f"all {blocks} blocks are kept in high precision by --high-precision-blocks "
                                f"{','.join(map(str, recipe.high_precision_blocks))}: nothing to quantize")
    mtq.quantize(expert, recipe.modelopt_config(), forward_loop)
    snap_ranges(expert, recipe.mode)
    ranges = read_ranges(expert, recipe)
    if not ranges.linears:
        raise QuantizationError("ModelOpt quantized no layer: every block is kept in high precision by "
                                f"--high-precision-blocks {','.join(map(str, recipe.high_precision_blocks))}")
    return ranges


def snap_ranges(expert: Any, mode: str) -> None:
    """Moves every calibrated range to the nearest one whose scale (range / 448 for E4M3, / 127 for INT8) bf16
    holds exactly. The graph stores its scales in bf16, the activations' type (an fp32 scale would make each
    DequantizeLinear output fp32); snapped, ModelOpt's fake quantization and the graph round every value on the
    same grid. Unsnapped, the two grids differ by up to 2^-9 and put values in different FP8 bins: measured,
    two equally good quantizations about as far apart as either is from bf16, so the report would not measure the
    graph that is shipped."""
    import torch

    qmax = FP8_MAX if mode == "fp8" else INT8_MAX
    for module in expert.modules():
        if type(module).__name__ != "TensorQuantizer" or not module.is_enabled or module.amax is None:
            continue
        amax = module.amax
        scale = (amax.float() / qmax).to(torch.bfloat16).float()
        # Replaces the buffer rather than copying into it: ModelOpt keeps it in the module's dtype (bf16), and
        # 448 x a bf16 value needs 11 significant bits.
        module._amax = scale * qmax


def read_ranges(expert: Any, recipe: TorchRecipe) -> CalibratedRanges:
    linears: dict[str, LinearRanges] = {}
    attention: dict[str, dict[str, float]] = {}
    for name, module in expert.named_modules():
        weight_q, input_q = getattr(module, "weight_quantizer", None), getattr(module, "input_quantizer", None)
        if weight_q is not None and input_q is not None and weight_q.is_enabled and input_q.is_enabled:
            pqs = input_q.pre_quant_scale
            linears[name] = LinearRanges(
                input_amax=_scalar(input_q, name), weight_amax=_numpy(weight_q.amax).reshape(-1),
                pre_quant_scale=None if pqs is None else _numpy(pqs).reshape(-1))
        bmm = {k: getattr(module, f"{k}_bmm_quantizer", None) for k in "qkv"}
        if recipe.quantize_attention and all(q is not None and q.is_enabled for q in bmm.values()):
            attention[name] = {k: _scalar(q, f"{name}.{k}_bmm_quantizer") for k, q in bmm.items()}
            attention[name]["softmax"] = SOFTMAX_AMAX
    return CalibratedRanges(recipe.mode, linears, attention)


def _numpy(tensor: Any) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _scalar(quantizer: Any, name: str) -> float:
    amax = quantizer.amax
    if amax is None:
        raise QuantizationError(f"{name} was never calibrated: the calibration runs did not reach it")
    value = float(_numpy(amax).max())
    if not np.isfinite(value) or value <= 0:
        raise QuantizationError(f"{name} calibrated to range {value}: the calibration data never exercised it")
    return value


@contextlib.contextmanager
def quantizers_off(expert: Any) -> Iterator[None]:
    """``expert`` computes its bf16 self while inside (SmoothQuant's exact rescaling aside)."""
    quantizers = [m for m in expert.modules() if type(m).__name__ == "TensorQuantizer" and m.is_enabled]
    for q in quantizers:
        q.disable()
    try:
        yield
    finally:
        for q in quantizers:
            q.enable()


@contextlib.contextmanager
def fp8_softmax(enabled: bool = True) -> Iterator[bool]:
    """Makes ModelOpt's quantized attention also round the softmax output to E4M3 (range [0, 1]), as the
    FP8 attention kernel does before its second matrix product. ModelOpt's torch forward leaves the softmax
    unquantized (only its ONNX export adds it), so without this the report would miss that error.

    The scores are written out head by head: use it at report sizes, not 720p. Yields whether it took effect
    (False when this ModelOpt version's attention no longer goes through the hook patched here).
    """
    if not enabled:
        yield False
        return
    try:
        from modelopt.torch.quantization.plugins.diffusion import diffusers as plugin
    except ImportError:
        yield False
        return
    original = getattr(plugin, "original_scaled_dot_product_attention", None)
    if original is None:
        yield False
        return
    plugin.original_scaled_dot_product_attention = _attention_with_fp8_softmax
    try:
        yield True
    finally:
        plugin.original_scaled_dot_product_attention = original


def _attention_with_fp8_softmax(query: Any, key: Any, value: Any, attn_mask: Any = None, dropout_p: float = 0.0,
                                is_causal: bool = False, scale: float | None = None, **_: Any) -> Any:
    import torch

    if attn_mask is not None or is_causal or dropout_p:
        raise QuantizationError("the FP8 softmax emulation covers Wan's unmasked attention only")
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    heads = []
    for h in range(query.shape[1]):  # one head's scores at a time
        scores = (query[:, h].float() @ key[:, h].float().transpose(-1, -2)) * scale
        probs = torch.softmax(scores, dim=-1)
        factor = FP8_MAX / SOFTMAX_AMAX
        probs = (probs * factor).to(torch.float8_e4m3fn).float() / factor
        heads.append((probs @ value[:, h].float()).to(query.dtype))
    return torch.stack(heads, dim=1)
