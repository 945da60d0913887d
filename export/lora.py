"""LoRAs merged into the experts before export (`wanrt export --lora FILE[:SCALE] --lora-2 FILE[:SCALE]`).

Reading and merging are diffusers' own, the code behind ``WanPipeline.load_lora_weights`` + ``fuse_lora``:
``WanLoraLoaderMixin.lora_state_dict`` reads the file and converts the community layouts it knows (the original
Wan / LightX2V "diffusion_model." keys with lora_down/lora_up/alpha/diff_b, musubi-tuner's "lora_unet_"),
``load_lora_into_transformer`` injects the adapter with peft, ``fuse_lora`` adds it to the weights and
``unload_lora`` removes the adapter layers. So a merged artifact generates what diffusers generates with the
same LoRA loaded and fused (tests/test_lora.py holds it to 3 uint8 levels).

At size: the merge happens in the one expert export holds at a time, in place (peft's unsafe merge adds each
layer's delta to its weight: one layer's delta, out_features x in_features, is the only extra tensor); the
adapter itself is rank x (in + out) per layer, tens of MB for rank 64. No second copy of the expert is made.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from wanrt.engine.artifact import sha256_file
from wanrt.errors import ModelFormatError

ADAPTER = "wanrt_export"
_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".lora_B.bias")


@dataclasses.dataclass(frozen=True)
class LoraFile:
    path: Path
    scale: float
    expert: str  # "transformer" (high noise, or the only expert) or "transformer_2" (low noise)


def parse_lora(text: str, expert: str) -> LoraFile:
    """``FILE`` or ``FILE:SCALE`` (a file name may itself hold colons: only a numeric tail is a scale)."""
    path, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            scale = float(tail)
            path = head
        except ValueError:
            pass
    if scale != scale or abs(scale) == float("inf"):
        raise ModelFormatError(f"LoRA scale must be finite: {text!r}")
    file = Path(path)
    if not file.is_file():
        raise ModelFormatError(f"LoRA file {file} does not exist")
    return LoraFile(file, scale, expert)


def merge_loras(transformer: Any, loras: list[LoraFile]) -> list[dict[str, Any]]:  # noqa: ANN401
    """Merges each LoRA into ``transformer`` (a diffusers WanTransformer3DModel), in order; returns what the
    manifest records of each. Raises ModelFormatError when a file is not a LoRA diffusers can read, or when any
    of its layers found nothing to attach to (a LoRA for another architecture must not merge partly)."""
    return [_merge_one(transformer, lora) for lora in loras]


def _merge_one(transformer: Any, lora: LoraFile) -> dict[str, Any]:  # noqa: ANN401
    from diffusers import WanPipeline

    digest = sha256_file(lora.path)  # before reading: the bytes recorded are the bytes merged
    with _diffusers_warnings_as_errors(lora.path):
        try:
            state_dict, metadata = WanPipeline.lora_state_dict(str(lora.path), return_lora_metadata=True)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise ModelFormatError(f"{lora.path} is not a Wan LoRA diffusers can read: {err}") from None
        targets = _targets(state_dict, lora.path)
        layout = _layout(lora.path)
        try:
            WanPipeline.load_lora_into_transformer(state_dict, transformer=transformer, adapter_name=ADAPTER,
                                                   metadata=metadata, low_cpu_mem_usage=True)
        except (ValueError, KeyError, RuntimeError) as err:  # peft: no matching module, shape mismatch
            raise ModelFormatError(f"{lora.path} does not fit {lora.expert}: {_first_line(err)}") from None
    attached = _adapter_modules(transformer)
    missing = sorted(targets - attached)
    if missing:
        transformer.unload_lora()
        raise ModelFormatError(f"{lora.path}: {len(missing)} LoRA layers match no layer of {lora.expert} "
                               f"(e.g. {missing[0]}): not a LoRA for this model")
    rank = max((int(v.shape[0]) for k, v in state_dict.items() if k.endswith(".lora_A.weight")), default=0)
    try:
        transformer.fuse_lora(lora_scale=lora.scale, adapter_names=[ADAPTER])
    except RuntimeError as err:  # e.g. a file whose up and down matrices differ in dtype
        transformer.unload_lora()
        raise ModelFormatError(f"{lora.path} cannot be fused into {lora.expert}: {_first_line(err)}") from None
    transformer.unload_lora()  # the fused weights stay; the adapter layers go
    return {"expert": lora.expert, "file": lora.path.name, "sha256": digest, "scale": lora.scale,
            "format": layout, "rank": rank, "modules": len(targets)}


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__


def _targets(state_dict: dict[str, Any], path: Path) -> set[str]:
    prefix = "transformer."
    keys = [k for k in state_dict if k.startswith(prefix)]
    if not keys:
        raise ModelFormatError(f"{path} holds no Wan transformer LoRA weights")
    targets = set()
    for key in keys:
        for suffix in _SUFFIXES:
            if key.endswith(suffix):
                targets.add(key[len(prefix):-len(suffix)])
                break
        else:
            raise ModelFormatError(f"{path}: key {key!r} is not a LoRA weight wanrt can merge")
    return targets


def _adapter_modules(transformer: Any) -> set[str]:  # noqa: ANN401
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {name for name, module in transformer.named_modules()
            if isinstance(module, BaseTunerLayer) and ADAPTER in getattr(module, "lora_A", {})}


def _layout(path: Path) -> str:
    """Which key layout the file uses (diffusers converts the community ones)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception:  # not safetensors: diffusers read it (a pickled .bin), the layout is what it says
        return "unknown"
    if any(k.startswith("diffusion_model.") for k in keys):
        return "wan-original (diffusion_model.*, LightX2V/Lightning)"
    if any(k.startswith("lora_unet_") for k in keys):
        return "musubi-tuner (lora_unet_*)"
    return "diffusers/peft (transformer.*)"


class _diffusers_warnings_as_errors:
    """diffusers only logs a warning for LoRA keys it could not place; here that is an error, named."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[str] = []

    def __enter__(self) -> _diffusers_warnings_as_errors:
        self._handler = _Collect(self.messages)
        self._loggers = [logging.getLogger(n) for n in ("diffusers.utils.peft_utils", "diffusers.loaders.peft")]
        for logger in self._loggers:
            logger.addHandler(self._handler)
        return self

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        for logger in self._loggers:
            logger.removeHandler(self._handler)
        if kind is None:
            unplaced = [m for m in self.messages if "unexpected keys" in m or _missing_weights(m)]
            if unplaced:
                raise ModelFormatError(f"{self.path}: {unplaced[0][:300]}")


def _missing_weights(message: str) -> bool:
    """A "missing keys" warning that names a LoRA weight. Missing lora_B biases are not: a file with diff_b on
    some layers only (LightX2V's) gives every adapted layer a bias, and those it lacks stay zero, in diffusers
    as here."""
    _, sep, keys = message.partition("missing keys in the model:")
    return bool(sep) and any(not key.strip().rstrip(".").endswith(".bias") for key in keys.split(","))


class _Collect(logging.Handler):
    def __init__(self, messages: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
