"""What a diffusers Wan folder holds, read from its safetensors headers: every tensor's dtype and shape, every
shard's size, each component's config. No weight is read, so planning a 27B-parameter checkpoint takes
milliseconds and no memory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wanrt.engine.spec import ModelSpec, spec_from_diffusers
from wanrt.errors import ModelFormatError

# safetensors dtype -> bytes per element (https://github.com/huggingface/safetensors, format section)
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2,
             "I8": 1, "U8": 1, "BOOL": 1}
_FLOATS = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
# wanrt precision names -> bytes per element
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}

# What stays fp32 when a component is loaded in bf16/fp16, matched as diffusers matches it (any dotted part of the
# tensor's name): WanTransformer3DModel._keep_in_fp32_modules, and UMT5EncoderModel._keep_in_fp32_modules, which
# export keeps for bf16 as well (export/text_encoder.py). tests/plan check these against the libraries.
KEEP_FP32 = {"transformer": ("rope", "time_embedder", "scale_shift_table", "norm1", "norm2", "norm3"),
             "text_encoder": ("wo",)}
_HEADER_LIMIT = 100 * 2**20  # safetensors' own bound on a header


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors' name: F32, BF16, ...
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * _ITEMSIZE[self.dtype]

    @property
    def is_float(self) -> bool:
        return self.dtype in _FLOATS


@dataclasses.dataclass(frozen=True)
class Component:
    """One model folder of the pipeline (``transformer``, ``transformer_2``, ``text_encoder``, ``vae``)."""

    name: str
    tensors: tuple[TensorInfo, ...]
    shards: tuple[int, ...]  # bytes of each safetensors file
    config: dict[str, Any]

    @property
    def params(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def file_bytes(self) -> int:
        return sum(self.shards)

    @property
    def largest_shard(self) -> int:
        return max(self.shards, default=0)

    def keep_fp32(self) -> tuple[str, ...]:
        return KEEP_FP32.get("transformer" if self.name.startswith("transformer") else self.name, ())

    def kept_fp32(self, tensor: TensorInfo) -> bool:
        return bool(set(tensor.name.split(".")) & set(self.keep_fp32()))

    def bytes_in(self, dtype: str) -> int:
        """Weight bytes once loaded in ``dtype``: floating tensors in it (fp32 where the library keeps them),
        integer tensors as stored."""
        return sum(self._tensor_bytes(t, dtype) for t in self.tensors)

    def largest_tensor(self, dtype: str) -> int:
        return max((self._tensor_bytes(t, dtype) for t in self.tensors), default=0)

    def _tensor_bytes(self, tensor: TensorInfo, dtype: str) -> int:
        if not tensor.is_float:
            return tensor.nbytes
        if dtype != "fp32" and self.kept_fp32(tensor):
            return tensor.numel * 4
        return tensor.numel * DTYPE_BYTES[dtype]

    def quantized_bytes(self, weight_dtype: str, rest_dtype: str, excluded: Sequence[str] = ()) -> int:
        """Bytes when every 2-D ``*.weight`` of a Linear outside ``excluded`` (name prefixes) is ``weight_dtype``
        and the rest ``rest_dtype``: a Q/DQ export's weights (scales are negligible)."""
        total = 0
        for t in self.tensors:
            linear = t.is_float and len(t.shape) == 2 and t.name.endswith(".weight") and not self.kept_fp32(t)
            if linear and not any(t.name.startswith(prefix) for prefix in excluded):
                total += t.numel * DTYPE_BYTES[weight_dtype]
            else:
                total += self._tensor_bytes(t, rest_dtype)
        return total


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    path: Path
    spec: ModelSpec
    components: dict[str, Component]

    @property
    def experts(self) -> tuple[Component, ...]:
        return tuple(self.components[name] for name in self.spec.experts)

    @property
    def file_bytes(self) -> int:
        return sum(c.file_bytes for c in self.components.values())


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of one safetensors file (its first 8 bytes give the header's length)."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise ModelFormatError(f"{path}: not a safetensors file (shorter than its header length)")
        (length,) = struct.unpack("<Q", prefix)
        if length > _HEADER_LIMIT:
            raise ModelFormatError(f"{path}: safetensors header of {length} bytes, over the format's limit")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelFormatError(f"{path}: unreadable safetensors header ({err})") from None
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path}: the safetensors header is not a JSON object")
    return header


def read_component(model_dir: Path, name: str) -> Component:
    folder = Path(model_dir) / name
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelFormatError(f"{folder} has no .safetensors weights (wanrt plans from safetensors headers; "
                               "re-save the model with safe_serialization=True)")
    tensors: list[TensorInfo] = []
    for path in files:
        for key, entry in read_header(path).items():
            if key == "__metadata__":
                continue
            try:
                tensors.append(TensorInfo(key, str(entry["dtype"]), tuple(int(d) for d in entry["shape"])))
            except (KeyError, TypeError, ValueError):
                raise ModelFormatError(f"{path}: tensor {key!r} has no readable dtype/shape") from None
            if tensors[-1].dtype not in _ITEMSIZE:
                raise ModelFormatError(f"{path}: tensor {key!r} has dtype {tensors[-1].dtype}, unknown to wanrt")
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    return Component(name, tuple(tensors), tuple(p.stat().st_size for p in files), config)


def read_checkpoint(model_dir: Path) -> Checkpoint:
    """Every component of the Wan pipeline folder ``model_dir``, from headers and configs."""
    model_dir = Path(model_dir)
    spec = spec_from_diffusers(model_dir)  # a non-Wan folder fails here, with the reason
    names = ("text_encoder", *spec.experts, "vae")
    return Checkpoint(model_dir, spec, {name: read_component(model_dir, name) for name in names})
