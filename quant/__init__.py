"""`wanrt quantize`: explicit INT8 / FP8 Q/DQ expert graphs made with NVIDIA ModelOpt, calibrated on real
denoising trajectories, with an accuracy report against the unquantized artifact and a PSNR gate.

ModelOpt, its ONNX dependencies and torch are imported only inside the functions that need them, so reading a
quantized artifact (placement checks, the report) needs neither.
"""

from wanrt.errors import WanrtError

REPORT_NAME = "quant_report.json"  # beside the quantized artifact's manifest, whichever route made it


class QuantizationError(WanrtError):
    """Quantization could not be done (ModelOpt missing, a graph without module scopes, a broken placement)."""


class QuantizationGateError(WanrtError):
    """The quantized artifact is less accurate than the gate allows; nothing was written."""
