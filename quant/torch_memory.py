"""What the torch route of `wanrt quantize` holds, from the folder's real tensor sizes, and the refusal at its
start when that cannot fit (the `wanrt plan` quantize estimate, until the plan module calls or replaces it).

GPU: one expert's weights in bf16 plus the calibration forward's largest transient, the feed-forward activation
of the CFG pair (2 x tokens x ffn_dim, bf16, and its GELU twin). Host: the expert as stored while
``from_pretrained`` reads it, the exporter's host copy of the bf16 weights it writes, the clips handed from one
expert to the next (latents and scheduler history) and the encoded prompts. The text encoder and the VAE run
alone before and after the experts. Measured on the full-width A14B expert cut to two layers (stored fp32,
3.49 GiB), on the CPU, where both parts are host memory: peak RSS 8.87 GiB (fp8) against the estimate's 7.0 GiB:
the estimate leaves out ~1 GiB of interpreter and libraries and undercounts by ~10% beyond that
(tests/trt/test_trt_quantized_contract.py allows 15% + 1.5 GiB).
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from pathlib import Path
from typing import Any

from wanrt.errors import InsufficientMemoryError
from wanrt.quant.torch_recipe import CalibrationShape

_DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "U8": 1, "I8": 1, "F8_E4M3": 1}
GIB = 1024**3


def safetensors_bytes(folder: Path, itemsize: int | None = None) -> int:
    """Bytes of every tensor in the folder's safetensors files, read from their headers (no weights loaded);
    with ``itemsize``, what they take at that many bytes an element (2: loaded in bf16)."""
    total = 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for d in entry["shape"]:
                count *= int(d)
            total += count * (itemsize or _DTYPE_BYTES.get(entry["dtype"], 4))
    return total


@dataclasses.dataclass(frozen=True)
class QuantizeEstimate:
    gpu_bytes: int
    host_bytes: int
    expert_bytes: dict[str, int]  # as stored (the checkpoint's dtype)
    tokens: int

    def as_dict(self) -> dict[str, Any]:
        return {"gpu_gib": round(self.gpu_bytes / GIB, 2), "host_gib": round(self.host_bytes / GIB, 2),
                "expert_gib": {k: round(v / GIB, 2) for k, v in self.expert_bytes.items()}, "tokens": self.tokens}


def estimate_torch_quantize(model_dir: Path, spec: Any, shape: CalibrationShape, prompts: int) -> QuantizeEstimate:
    """The peak GPU and host memory of the torch route on ``model_dir`` at calibration ``shape``."""
    config = json.loads((Path(model_dir) / spec.experts[0] / "config.json").read_text())
    pt, ph, pw = spec.patch_size
    latent = ((shape.frames - 1) // spec.vae_scale_temporal + 1, shape.height // spec.vae_scale_spatial,
              shape.width // spec.vae_scale_spatial)
    tokens = (latent[0] // pt) * (latent[1] // ph) * (latent[2] // pw)
    experts = {name: safetensors_bytes(Path(model_dir) / name) for name in spec.experts}
    largest = max(experts.values())
    bf16 = max(safetensors_bytes(Path(model_dir) / name, itemsize=2) for name in spec.experts)
    activations = 2 * 2 * tokens * int(config.get("ffn_dim", 4 * config.get("num_attention_heads", 1) * 128)) * 2
    latent_bytes = spec.latent_channels * latent[0] * latent[1] * latent[2] * 4
    text_bytes = spec.text_length * spec.text_dim * 2
    handoff = prompts * (4 * latent_bytes + text_bytes)  # latents + UniPC history, and the prompt's embedding
    return QuantizeEstimate(gpu_bytes=bf16 + activations, host_bytes=largest + bf16 + handoff,
                            expert_bytes=experts, tokens=tokens)


def available_memory(device: str) -> tuple[int | None, int | None]:
    """(free GPU bytes on ``device`` or None on the CPU, available host bytes or None when unknown)."""
    gpu = None
    if device.startswith("cuda"):
        import torch

        gpu = int(torch.cuda.mem_get_info(torch.device(device))[0])
    host = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                host = int(line.split()[1]) * 1024
    except OSError:
        pass
    return gpu, host


def refuse_unless_fits(estimate: QuantizeEstimate, device: str) -> None:
    """Raises InsufficientMemoryError, naming what to change, when the estimate exceeds this machine.

    ``WANRT_QUANTIZE_GPU_BYTES`` / ``WANRT_QUANTIZE_HOST_BYTES`` override the measured free memory (to plan for
    another machine, and for tests)."""
    gpu, host = available_memory(device)
    gpu = int(os.environ.get("WANRT_QUANTIZE_GPU_BYTES", gpu or 0)) or None
    host = int(os.environ.get("WANRT_QUANTIZE_HOST_BYTES", host or 0)) or None
    # On the CPU the expert and its activations live in host memory.
    needs = [("host", estimate.host_bytes + (estimate.gpu_bytes if gpu is None else 0), host)]
    if gpu is not None:
        needs.append(("GPU", estimate.gpu_bytes, gpu))
    for where, need, have in needs:
        if have is not None and need > have:
            raise InsufficientMemoryError(
                f"quantize needs about {need / GIB:.1f} GiB of {where} memory at {estimate.tokens} tokens a call "
                f"(expert {max(estimate.expert_bytes.values()) / GIB:.1f} GiB as stored), {have / GIB:.1f} GiB is "
                "free: "
                "calibrate at a smaller --frames/--height/--width, with fewer --calib-prompts, or on a larger "
                "machine")
