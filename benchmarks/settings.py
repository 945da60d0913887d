"""What to measure: each --model folder becomes the backend/precision settings this machine can run it with.

An exported artifact (manifest.json) runs on onnxruntime (CPU provider, and the CUDA provider where present); a
diffusers folder (model_index.json) on torch eager and torch.compile; an engines folder (engines.json) on
TensorRT. The precision is what the folder says: an artifact's quantization mode (int8, fp8) or fp32, the
engines' precision.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from wanrt.engine.pipeline import VideoPipeline
from wanrt.errors import BackendUnavailableError, ModelFormatError

TORCH_EAGER = "torch"
TORCH_COMPILE = "torch.compile"
ALL_BACKENDS = ("onnxruntime", "onnxruntime-cuda", TORCH_EAGER, TORCH_COMPILE, "tensorrt")


@dataclasses.dataclass(frozen=True)
class Setting:
    backend: str  # one of ALL_BACKENDS
    precision: str
    model: Path
    device: str
    load: Callable[[], VideoPipeline] = dataclasses.field(compare=False, repr=False)

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision} ({self.model.name})"


def model_kind(model: Path) -> str:
    for file, kind in (("engines.json", "engines"), ("manifest.json", "artifact"), ("model_index.json", "diffusers")):
        if (Path(model) / file).is_file():
            return kind
    raise ModelFormatError(f"{model} is neither an exported artifact (manifest.json), a diffusers Wan folder "
                           "(model_index.json) nor an engines folder (engines.json)")


def artifact_precision(art_dir: Path) -> str:
    data = json.loads((Path(art_dir) / "manifest.json").read_text(encoding="utf-8"))
    quantization = data.get("quantization")
    if isinstance(quantization, dict):
        return str(quantization.get("mode"))
    # `wanrt export --dtype bf16|fp16` records each graph's compute precision; the experts' is the one that counts.
    experts = [g for name, g in data.get("graphs", {}).items() if name.startswith("transformer")]
    return str(experts[0].get("dtype", "fp32")) if experts else "fp32"


def _cuda_onnxruntime() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def settings_for(model: Path, device: str, backends: tuple[str, ...] = ALL_BACKENDS) -> list[Setting]:
    """The settings ``model`` can be measured with on this machine, among ``backends``."""
    from wanrt.engine.loader import load_pipeline

    model = Path(model)
    kind = model_kind(model)
    out: list[Setting] = []
    if kind == "artifact":
        precision = artifact_precision(model)
        if "onnxruntime" in backends:
            out.append(Setting("onnxruntime", precision, model, "cpu",
                               lambda: load_pipeline(model, "onnxruntime", device="cpu")))
        if "onnxruntime-cuda" in backends and device.startswith("cuda") and _cuda_onnxruntime():
            out.append(Setting("onnxruntime-cuda", precision, model, device,
                               lambda: load_pipeline(model, "onnxruntime", device=device)))
    elif kind == "diffusers":
        for backend in (TORCH_EAGER, TORCH_COMPILE):
            if backend in backends:
                out.append(Setting(backend, "fp32", model, device,
                                   lambda b=backend: _load_torch(model, device, compiled=b == TORCH_COMPILE)))
    elif "tensorrt" in backends and device.startswith("cuda"):
        precision = json.loads((model / "engines.json").read_text(encoding="utf-8")).get("precision", "?")
        out.append(Setting("tensorrt", str(precision), model, device,
                           lambda: load_pipeline(model, "tensorrt", device=device)))
    return out


def _load_torch(model: Path, device: str, *, compiled: bool) -> VideoPipeline:
    from wanrt.engine.loader import load_pipeline

    pipeline = load_pipeline(model, "torch", device=device)
    if compiled:
        try:
            pipeline.backend.compile_experts()
        except RuntimeError as err:  # e.g. no C++ compiler for inductor's CPU kernels
            raise BackendUnavailableError(f"torch.compile is unavailable here: {err}") from None
    return pipeline
