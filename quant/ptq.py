"""ModelOpt ONNX post-training quantization of one graph: calibrated Q/DQ, written as an artifact graph.

ModelOpt rewrites the file it is given (shape inference in place) and leaves intermediate files beside it, so
it only ever sees a private copy of the source graph in a scratch folder. The result is re-saved under the
artifact's own naming (``<name>.onnx`` + ``<name>.onnx.data``).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import onnx

from wanrt.engine.precisions import QUANTIZATION_MODES
from wanrt.quant import QuantizationError
from wanrt.quant.backend_wrappers import Feeds

MODES = QUANTIZATION_MODES
CALIBRATION_METHODS = ("max", "entropy")
# Weights stay inline below this size (scales, zero points); everything larger goes to the .onnx.data file.
_INLINE_BYTES = 1024


def modelopt_version() -> str:
    try:
        from importlib.metadata import version

        return version("nvidia-modelopt")
    except Exception:  # noqa: BLE001 - not installed: reported by require_modelopt
        return "absent"


def require_modelopt() -> None:
    """Fails early, before any calibration run, when ModelOpt's ONNX quantization cannot be imported."""
    fake_trt = _tensorrt_is_a_bare_folder()
    saved = sys.modules.get("tensorrt")
    if fake_trt:
        sys.modules["tensorrt"] = None  # type: ignore[assignment]  # makes `import tensorrt` raise ImportError
    try:
        import modelopt.onnx.quantization  # noqa: F401
        import modelopt.onnx.trt_utils as trt_utils
    except ImportError as err:
        raise QuantizationError(f"`wanrt quantize` needs NVIDIA ModelOpt's ONNX quantization (pip install "
                                f"'wanrt[quant]'): {err}") from None
    finally:
        if fake_trt:
            if saved is None:
                sys.modules.pop("tensorrt", None)
            else:
                sys.modules["tensorrt"] = saved
    if fake_trt:
        # ModelOpt decided at its import whether TensorRT is there; if it was imported earlier it saw the folder.
        trt_utils.TRT_PYTHON_AVAILABLE = False


def _tensorrt_is_a_bare_folder() -> bool:
    """True when ``import tensorrt`` would find a plain directory (a namespace package, e.g. a tests/tensorrt
    folder on sys.path) rather than TensorRT: ModelOpt would then call ``tensorrt.Logger`` and fail."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("tensorrt")
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin in (None, "namespace") and not hasattr(
        sys.modules.get("tensorrt"), "Logger")


def _reader(samples: Sequence[Feeds]) -> object:
    from onnxruntime.quantization.calibrate import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """Feeds recorded calls one by one; ModelOpt rewinds it between its passes."""

        def __init__(self) -> None:
            self._index = 0

        def get_next(self) -> Feeds | None:
            if self._index >= len(samples):
                return None
            self._index += 1
            return samples[self._index - 1]

        def get_first(self) -> Feeds:
            return samples[0]

        def rewind(self) -> None:
            self._index = 0

        def __len__(self) -> int:
            return len(samples)

    return Reader()


def quantize_graph(
    source: onnx.ModelProto,
    dest: Path,
    *,
    mode: str,
    samples: Sequence[Feeds],
    nodes_to_quantize: list[str],
    nodes_to_exclude: list[str],
    calibration_method: str,
    scratch: Path,
    device: str = "cpu",
) -> onnx.ModelProto:
    """Quantizes ``source`` (weights loaded) with ModelOpt and writes it to ``dest``; returns the result.

    Weights become constant INT8/FP8 tensors behind a DequantizeLinear (``dq_only``: what TensorRT folds,
    and a quarter of the FP32 size); activations get a QuantizeLinear/DequantizeLinear pair. Everything not
    quantized stays FP32 (``high_precision_dtype``): the CPU reference then differs from the unquantized graph
    only by quantization, and TensorRT picks FP16/BF16 for the rest at build time.
    """
    require_modelopt()
    from modelopt.onnx.quantization import quantize

    if mode not in MODES:
        raise QuantizationError(f"mode must be one of {MODES}, got {mode!r}")
    if not samples:
        raise QuantizationError("no calibration samples for this graph: the calibration runs never called it "
                                "(more --calib-steps?)")
    scratch.mkdir(parents=True, exist_ok=True)
    src_path, out_path = scratch / "source.onnx", scratch / "quantized.onnx"
    onnx.save_model(source, os.fspath(src_path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="source.onnx.data", size_threshold=_INLINE_BYTES)
    _quiet_modelopt()
    try:
        quantize(
            os.fspath(src_path),
            quantize_mode=mode,
            calibration_data_reader=_reader(samples),
            calibration_method=calibration_method,
            # Calibration is an FP32 onnxruntime run: the CPU is enough for small models; big ones want the GPU.
            calibration_eps=["cuda:0", "cpu"] if device == "cuda" else ["cpu"],
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_quantize=list(nodes_to_quantize),
            nodes_to_exclude=list(nodes_to_exclude),
            high_precision_dtype="fp32",
            dq_only=True,
            use_external_data_format=True,
            output_path=os.fspath(out_path),
            log_level="ERROR",
        )
    except Exception as err:  # ModelOpt and onnxruntime raise many untyped errors
        raise QuantizationError(f"ModelOpt {mode} quantization failed: {type(err).__name__}: {err}") from err
    if not out_path.is_file():
        raise QuantizationError(f"ModelOpt wrote no quantized model for {dest.name}")
    model = onnx.load(os.fspath(out_path), load_external_data=True)
    write_graph(model, dest)
    shutil.rmtree(scratch, ignore_errors=True)
    return model


def write_graph(model: onnx.ModelProto, dest: Path) -> list[Path]:
    """Saves ``model`` as ``dest`` with its weights in ``<dest name>.data`` (the exporter's layout)."""
    data = dest.with_name(dest.name + ".data")
    if data.exists():
        data.unlink()
    onnx.save_model(model, os.fspath(dest), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=_INLINE_BYTES)
    written = [dest, data] if data.exists() else [dest]
    for path in written:
        path.chmod(0o644)  # onnx creates the data file private (0600); an artifact is read by the server's user
    return written


def load_graph(path: Path) -> onnx.ModelProto:
    return onnx.load(os.fspath(path), load_external_data=True)


class _NoGpuNoise(logging.Filter):
    """Drops ModelOpt's "Failed to get GPU count" error: on a CPU-only machine that is expected, not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Failed to get GPU count" not in record.getMessage()


def _quiet_modelopt() -> None:
    log = logging.getLogger("modelopt.onnx")
    if not any(isinstance(f, _NoGpuNoise) for f in log.filters):
        log.addFilter(_NoGpuNoise())  # filters survive ModelOpt's handler reset in configure_logging
    from onnx_graphsurgeon.logger import G_LOGGER

    # Its warnings here are about terminal colours and float8 numpy types it passes through untouched.
    G_LOGGER.severity = G_LOGGER.ERROR


# onnxruntime session settings for quantized graphs, recorded in the manifest (Quantization.onnxruntime_session_config)
# for the serving backend, which reads them from there.
# onnxruntime's QDQ fusions rewrite DequantizeLinear -> MatMul into its own integer kernels: for FP8 into a
# MatMulIntegerToFloat that takes no float8 input (the session fails to load, onnxruntime 1.31), and for INT8
# into an AVX2 kernel whose result differs from the Q/DQ arithmetic by ~0.4% relative on the reef model.
# Unfused, onnxruntime computes exactly what the graph says, which is what TensorRT computes, at the same
# speed on this CPU.
ORT_SESSION_CONFIG = {"session.disable_quant_qdq": "1"}


def session(model_or_path: onnx.ModelProto | Path, device: str = "cpu") -> object:
    """An onnxruntime session for a quantized graph: the reference for what TensorRT computes."""
    import onnxruntime as ort

    from wanrt.engine.backends.onnxruntime import session_options

    options = session_options(ORT_SESSION_CONFIG)
    source = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) \
        else os.fspath(model_or_path)
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    return ort.InferenceSession(source, options, providers=providers)
