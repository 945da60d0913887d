"""Wan DiT experts -> ``transformer.onnx`` / ``transformer_2.onnx``: one denoising call, cond and uncond batched."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.export import Dim

from wanrt.engine.spec import ModelSpec
from wanrt.export import onnx_io

MAX_BATCH = 2  # CFG: conditional and unconditional prediction in one call


class ExpertGraph(torch.nn.Module):
    """One expert with positional tensor inputs and the noise prediction as its only output.

    ``compute_dtype`` (a bf16 module, as diffusers loads it): the fp32 latents and text embeddings are cast to
    it on the way in and the prediction back to fp32 on the way out, as WanPipeline does, so the graph's inputs
    and outputs stay fp32 whatever it computes in.
    """

    def __init__(self, transformer: torch.nn.Module, compute_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.transformer = transformer
        self.compute_dtype = compute_dtype

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor,
                encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        if self.compute_dtype is not None:
            hidden_states = hidden_states.to(self.compute_dtype)
            encoder_hidden_states = encoder_hidden_states.to(self.compute_dtype)
        out = self.transformer(hidden_states=hidden_states, timestep=timestep,
                               encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
        return out if self.compute_dtype is None else out.float()


def load_expert(model_dir: Path, name: str, dtype: str = "fp32", device: str = "cpu") -> ExpertGraph:
    """Expert ``name`` as diffusers loads it in ``dtype`` (its ``_keep_in_fp32_modules`` stay fp32), on ``device``."""
    from diffusers import WanTransformer3DModel

    from wanrt.export.precision import torch_dtype

    transformer = WanTransformer3DModel.from_pretrained(Path(model_dir) / name, local_files_only=True,
                                                        torch_dtype=torch_dtype(dtype),
                                                        device_map=None if device == "cpu" else device)
    return ExpertGraph(transformer.eval(), torch_dtype(dtype)).eval()


def export_expert(
    model_dir: Path,
    out_dir: Path,
    spec: ModelSpec,
    name: str,
    *,
    external_data_threshold: int = onnx_io.EXTERNAL_DATA_THRESHOLD_BYTES,
    dtype: str = "fp32",
    device: str = "cpu",
    progress: onnx_io.Progress | None = None,
    merge: Callable[[torch.nn.Module], None] | None = None,
) -> onnx_io.ExportedGraph:
    """Exports and verifies expert ``name`` (``transformer`` or ``transformer_2``) to ``<name>.onnx``, loaded in
    ``dtype`` on ``device``; ``merge`` changes the loaded diffusers module in place first (LoRAs: export/lora.py)."""
    from diffusers import WanTransformer3DModel

    from wanrt.export.precision import EXPERT_FP32

    def load(traced: str) -> ExpertGraph:
        module = load_expert(model_dir, name, traced, device)
        if merge is not None:
            merge(module.transformer)
        return module

    example, dynamic_shapes = export_inputs(
        spec, WanTransformer3DModel.load_config(Path(model_dir) / name, local_files_only=True))
    return onnx_io.export_verified(
        load, name, out_dir, example,
        output_names=["noise_pred"],
        dynamic_shapes=dynamic_shapes,
        # Shapes differ from the example and each other: a single-frame unguided call at the serving text
        # length, and a CFG pair with a short context.
        parity_feeds=[_feeds(spec, batch=1, patches=(1, 1, 2), length=spec.text_length, seed=1),
                      _feeds(spec, batch=2, patches=(3, 3, 2), length=7, seed=2)],
        external_data_threshold=external_data_threshold, dtype=dtype, fp32_rules=EXPERT_FP32, device=device,
        progress=progress,
        require_fused_attention=True,  # self- and cross-attention as the Attention operator, no Softmax left
    )


def export_inputs(spec: ModelSpec,
                  config: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, dict[int, Any]]]:
    """The example inputs an expert (of this diffusers ``config``) is traced with and its dynamic axes (batch 1-2,
    any whole number of patches up to the rotary tables' length, text up to 512 tokens)."""
    # Rotary tables hold rope_max_seq_len positions per axis: more patches than that cannot be embedded.
    max_patches = int(config["rope_max_seq_len"])
    pt, ph, pw = spec.patch_size
    batch = Dim("batch", min=1, max=MAX_BATCH)
    length = Dim("text_length", min=1, max=max(512, spec.text_length))
    latent_axes = {0: batch, 2: _patched("latent_frames", pt, max_patches),
                   3: _patched("latent_height", ph, max_patches), 4: _patched("latent_width", pw, max_patches)}
    # Example sizes avoid 0 and 1 (in patches), which torch.export would specialise into constants.
    example = _feeds(spec, batch=2, patches=(2, 2, 3), length=16, seed=0)
    return example, {"hidden_states": latent_axes, "timestep": {0: batch},
                     "encoder_hidden_states": {0: batch, 1: length}}


def _patched(name: str, patch: int, max_patches: int) -> Any:
    """A dimension that must be a whole number of patches (a torch.export derived Dim when patch > 1)."""
    patches = Dim(f"{name}_patches" if patch > 1 else name, min=1, max=max_patches)
    return patch * patches if patch > 1 else patches


def _feeds(spec: ModelSpec, *, batch: int, patches: tuple[int, int, int], length: int,
           seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    f, h, w = (n * p for n, p in zip(patches, spec.patch_size, strict=True))
    latents = rng.standard_normal((batch, spec.latent_channels, f, h, w), dtype=np.float32)
    timestep = rng.uniform(0, spec.num_train_timesteps, size=batch).astype(np.float32)
    text = rng.standard_normal((batch, length, spec.text_dim), dtype=np.float32)
    return {"hidden_states": latents, "timestep": timestep, "encoder_hidden_states": text}
