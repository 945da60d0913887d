"""The torch-side quantization recipe: what ModelOpt quantizes in a Wan expert, in which format, and the
calibration request it is calibrated on. Data and small pure functions only (no torch import at module load).

Defaults follow ModelOpt's own Wan2.2 recipe (examples/diffusers/quantization, ``--model wan2.2-t2v-14b
--format fp8 --quantize-mha``): 720x1280x81 frames, 20 steps, guidance 4.0 (high-noise expert) / 3.0
(low-noise), boundary 0.875; patch_embedding, condition_embedder, proj_out and blocks 0-2 and 37-39 kept in
high precision; E4M3 per-tensor quantizers on the attention's Q, K, V and on the softmax output.

Two deliberate differences from ModelOpt's FP8 preset, both for the ONNX graph TensorRT builds:
weights are quantized per output channel (ModelOpt's FP8 preset uses one scale per tensor; TensorRT runs
per-channel FP8 GEMMs on Hopper since 10.6, and wanrt's placement check wants one rule for INT8 and FP8), and
what is not quantized stays in the checkpoint's bf16 with diffusers' own fp32 islands, never fp32.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from wanrt.errors import InvalidRequestError

TORCH_MODES = ("fp8", "int8")
# E4M3: 4 exponent bits, 3 mantissa bits (ModelOpt's ``num_bits=(4, 3)``); INT8 symmetric.
_NUM_BITS: dict[str, Any] = {"fp8": (4, 3), "int8": 8}
# The softmax output lies in [0, 1]: its quantizer's range is fixed, not calibrated (as ModelOpt exports it).
SOFTMAX_AMAX = 1.0
# ModelOpt's Wan2.2 A14B recipe keeps these whole modules in high precision ...
RECIPE_HIGH_PRECISION_MODULES = ("patch_embedding", "condition_embedder", "proj_out")
# ... and these transformer blocks (the first three and last three of A14B's 40).
RECIPE_HIGH_PRECISION_BLOCKS = (0, 1, 2, 37, 38, 39)
DEFAULT_SMOOTHQUANT_ALPHA = 0.8  # INT8: the strength measured best on the reef model (quant/README.md)


@dataclasses.dataclass(frozen=True)
class CalibrationShape:
    """One calibration (or report) request: clip size, steps and the guidance pair (high-, low-noise expert)."""

    frames: int = 81
    height: int = 720
    width: int = 1280
    steps: int = 20
    guidance: float = 4.0
    guidance_2: float = 3.0

    def validate(self, field: str) -> None:
        if self.frames < 1 or (self.frames - 1) % 4:
            raise InvalidRequestError(field, f"frames must be 4k+1, got {self.frames}")
        if self.height < 16 or self.width < 16 or self.height % 16 or self.width % 16:
            raise InvalidRequestError(field, f"height and width must be multiples of 16, got "
                                             f"{self.height}x{self.width}")
        if self.steps < 1:
            raise InvalidRequestError(field, f"steps must be at least 1, got {self.steps}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


RECIPE_SHAPE = CalibrationShape()
# The report compares quantized and bf16 clips at a reduced size (its attention with the FP8 softmax is
# computed explicitly, head by head): 17 frames at 480x832 is 7,800 tokens a call.
REPORT_SHAPE = CalibrationShape(frames=17, height=480, width=832, steps=20)


@dataclasses.dataclass(frozen=True)
class TorchRecipe:
    mode: str = "fp8"
    quantize_attention: bool = True  # ModelOpt's --quantize-mha: Q, K, V and softmax output in E4M3
    high_precision_blocks: tuple[int, ...] = RECIPE_HIGH_PRECISION_BLOCKS
    smoothquant_alpha: float = DEFAULT_SMOOTHQUANT_ALPHA  # INT8 only

    def validate(self) -> None:
        if self.mode not in TORCH_MODES:
            raise InvalidRequestError("mode", f"must be one of {', '.join(TORCH_MODES)}, got {self.mode!r}")
        if self.quantize_attention and self.mode != "fp8":
            # TensorRT's fused attention quantizes Q/K/V and the softmax output to FP8 only (as ModelOpt's MHA).
            raise InvalidRequestError("quantize_attention", "attention is quantized in fp8 mode only")
        if not 0.0 < self.smoothquant_alpha < 1.0:
            raise InvalidRequestError("smooth_alpha", f"must be in (0, 1), got {self.smoothquant_alpha}")
        if any(b < 0 for b in self.high_precision_blocks):
            raise InvalidRequestError("high_precision_blocks", "block indices are 0 or more")

    def placement_rules(self) -> tuple[tuple[str, bool, str], ...]:
        """quant/placement.py's expert rules with the recipe's high-precision blocks in front."""
        from wanrt.quant.placement import EXPERT_RULES

        if not self.high_precision_blocks:
            return EXPERT_RULES
        blocks = "|".join(str(b) for b in sorted(set(self.high_precision_blocks)))
        return ((rf"^blocks\.({blocks})\.", False, "kept in high precision by the recipe (first and last blocks)"),
                *EXPERT_RULES)

    def excluded_modules(self, num_blocks: int) -> list[str]:
        """The recipe's exclusions that exist in a model with ``num_blocks`` blocks (for the report)."""
        blocks = [f"blocks.{b}" for b in sorted(set(self.high_precision_blocks)) if b < num_blocks]
        return [*RECIPE_HIGH_PRECISION_MODULES, *blocks]

    def modelopt_config(self) -> dict[str, Any]:
        """The ``mtq.quantize`` config: ModelOpt's pattern syntax, first all off, then what the recipe wants."""
        bits = _NUM_BITS[self.mode]
        quant_cfg: list[dict[str, Any]] = [
            {"quantizer_name": "*", "enable": False},
            {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": bits, "axis": 0}},
            {"quantizer_name": "*input_quantizer", "cfg": {"num_bits": bits, "axis": None}},
        ]
        if self.quantize_attention:
            quant_cfg += [{"quantizer_name": f"*{q}_bmm_quantizer", "cfg": {"num_bits": bits, "axis": None}}
                          for q in "qkv"]
        # The exclusions go in before calibration, so SmoothQuant never rescales a layer that stays high precision.
        quant_cfg += [{"quantizer_name": f"{module}*", "enable": False} for module in RECIPE_HIGH_PRECISION_MODULES]
        quant_cfg += [{"quantizer_name": f"blocks.{b}.*", "enable": False}
                      for b in sorted(set(self.high_precision_blocks))]
        algorithm: Any = "max"
        if self.mode == "int8":
            algorithm = {"method": "smoothquant", "alpha": self.smoothquant_alpha}
        return {"quant_cfg": quant_cfg, "algorithm": algorithm}

    def as_dict(self, num_blocks: int) -> dict[str, Any]:
        return {"mode": self.mode, "quantize_attention": self.quantize_attention,
                "weights": f"{self.mode} symmetric, per output channel",
                "activations": f"{self.mode} per tensor, max calibration"
                               + (f", SmoothQuant alpha {self.smoothquant_alpha}" if self.mode == "int8" else ""),
                "attention": "E4M3 per tensor on Q, K, V; softmax output E4M3 with a fixed range [0, 1]"
                             if self.quantize_attention else "not quantized",
                "high_precision": self.excluded_modules(num_blocks)}
