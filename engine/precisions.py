"""The precisions wanrt knows, in one table: which a graph can be lowered to, which quantization writes, how
many bytes an element takes, and the GPU (compute capability) TensorRT needs for each. Export, quantize, the
artifact reader and the engine builder take their choices from here."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Precision:
    name: str
    itemsize: int  # bytes per stored element
    quantized: bool  # explicit Q/DQ (`wanrt quantize`) rather than a float compute type (`wanrt export --dtype`)
    vae: bool  # the VAE decoder may be lowered to it (`--vae-dtype`)
    min_capability: tuple[int, int] | None  # lowest compute capability whose tensor cores run it (None: any)


PRECISIONS = {p.name: p for p in (
    Precision("fp32", 4, quantized=False, vae=True, min_capability=None),
    Precision("bf16", 2, quantized=False, vae=True, min_capability=(8, 0)),
    Precision("fp16", 2, quantized=False, vae=False, min_capability=None),
    Precision("int8", 1, quantized=True, vae=False, min_capability=(8, 0)),
    Precision("fp8", 1, quantized=True, vae=False, min_capability=(8, 9)),
)}
# Compute precisions a graph may record ("dtype"; absent: fp32). Graph inputs and outputs stay fp32 whatever it is.
GRAPH_DTYPES = tuple(p.name for p in PRECISIONS.values() if not p.quantized)
VAE_DTYPES = tuple(p.name for p in PRECISIONS.values() if p.vae)
QUANTIZATION_MODES = tuple(p.name for p in PRECISIONS.values() if p.quantized)
MIN_CAPABILITY = {p.name: p.min_capability for p in PRECISIONS.values() if p.min_capability is not None}
