"""Real denoising trajectories in torch, one expert in memory at a time.

Wan2.2-A14B hands a clip from the high-noise expert (``transformer``, timesteps at or above the boundary) to the
low-noise one (``transformer_2``). To calibrate, report on or verify each expert on the inputs it really
receives without holding both 14B experts, a trajectory is run in segments: every prompt's high-noise segment
runs with the first expert, which is then freed; its latents and scheduler state (``Handoff``) carry the clip
into the second expert's segment. The loop is diffusers' ``WanPipeline.__call__`` (same scheduler object, same
boundary rule, same guidance formula, latents kept fp32), with cond and uncond batched in one call as wanrt
serves them.

Host memory held between segments: per clip, its latents and the scheduler's history (UniPC keeps ``order``
model outputs), each one latent tensor: about 4 x 19 MB at 720p, so 10 GB for 128 calibration prompts.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from wanrt.quant.torch_recipe import CalibrationShape

# Called with (expert name, step index, timestep, model input, expert output) after each expert call.
StepHook = Callable[[str, int, float, Any, Any], None]


@dataclasses.dataclass
class Handoff:
    """A clip between segments: its latents (fp32, on the host) and its own scheduler, mid-schedule."""

    latents: Any
    scheduler: Any
    step: int  # index of the next timestep to run

    def done(self) -> bool:
        return self.step >= len(self.scheduler.timesteps)


@dataclasses.dataclass(frozen=True)
class Prompts:
    """Encoded prompts (cond) and the negative prompt (uncond), on the host, in the text encoder's dtype."""

    embeds: tuple[Any, ...]
    negative: Any


def encode_prompts(model_dir: Path, prompts: Sequence[str], *, device: str, negative_prompt: str = "",
                   max_sequence_length: int = 512) -> Prompts:
    """Runs the folder's own text encoder through diffusers' ``WanPipeline.encode_prompt`` (padding and trimming
    as diffusers does), then frees it: a 5.7B UMT5 never sits beside an expert."""
    import torch
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(model_dir, transformer=None, transformer_2=None, vae=None,
                                       torch_dtype=torch.bfloat16, local_files_only=True)
    pipe.text_encoder.to(device)
    embeds = []
    with torch.no_grad():
        for prompt in prompts:
            cond, uncond = pipe.encode_prompt(prompt, negative_prompt=negative_prompt,
                                              do_classifier_free_guidance=True, num_videos_per_prompt=1,
                                              max_sequence_length=max_sequence_length, device=device)
            embeds.append(cond.cpu())
        negative = uncond.cpu()
    del pipe
    _free(device)
    return Prompts(tuple(embeds), negative)


def start(model_dir: Path, shape: CalibrationShape, seed: int, spec: Any, latents: Any = None) -> Handoff:
    """A fresh clip: the scheduler from the folder's config set to ``shape.steps``, Gaussian latents from
    ``seed`` (drawn on the CPU, so a seed gives the same clip on every device) unless ``latents`` are given."""
    import torch
    from diffusers import UniPCMultistepScheduler

    scheduler = UniPCMultistepScheduler.from_pretrained(model_dir, subfolder="scheduler", local_files_only=True)
    scheduler.set_timesteps(shape.steps, device="cpu")
    scheduler.set_begin_index(0)
    latent_shape = (1, spec.latent_channels, (shape.frames - 1) // spec.vae_scale_temporal + 1,
                    shape.height // spec.vae_scale_spatial, shape.width // spec.vae_scale_spatial)
    if latents is None:
        latents = torch.randn(latent_shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
    elif tuple(latents.shape) != latent_shape:
        raise ValueError(f"latents of shape {tuple(latents.shape)} for a clip of latent shape {latent_shape}")
    return Handoff(latents.float(), scheduler, 0)


def owner(spec: Any, timestep: float) -> str:
    """The expert that denoises at ``timestep`` (WanPipeline's rule: at or above the boundary, the first)."""
    boundary = spec.boundary_timestep
    return spec.experts[0] if boundary is None or timestep >= boundary else spec.experts[1]


def run_segment(expert: Any, name: str, clip: Handoff, cond: Any, uncond: Any, guidance: float, spec: Any, *,
                device: str, hook: StepHook | None = None) -> Handoff:
    """Denoises ``clip`` with ``expert`` for as long as the timesteps belong to ``name``; returns the clip
    where the next expert takes over (or finished). ``clip`` itself is not modified."""
    import torch

    scheduler = copy.deepcopy(clip.scheduler)
    latents = clip.latents.to(device)
    text = torch.cat([cond, uncond]).to(device)
    step = clip.step
    _move_scheduler(scheduler, device)
    dtype = next(p.dtype for p in expert.parameters() if p.is_floating_point() and p.dtype != torch.float32)
    with torch.no_grad():
        while step < len(scheduler.timesteps):
            t = scheduler.timesteps[step]
            if owner(spec, float(t)) != name:
                break
            model_input = latents.to(dtype).expand(2, *latents.shape[1:])
            timestep = t.to(device).expand(2)
            out = expert(hidden_states=model_input, timestep=timestep, encoder_hidden_states=text,
                         return_dict=False)[0]
            if hook is not None:
                hook(name, step, float(t), (model_input, timestep, text), out)
            noise_cond, noise_uncond = out[:1], out[1:]
            noise = noise_uncond + guidance * (noise_cond - noise_uncond)
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
            step += 1
    _move_scheduler(scheduler, "cpu")
    return Handoff(latents.cpu(), scheduler, step)


def guidance_for(spec: Any, name: str, shape: CalibrationShape) -> float:
    return shape.guidance if name == spec.experts[0] else shape.guidance_2


def _move_scheduler(scheduler: Any, device: str) -> None:
    """The scheduler's history tensors follow the latents (diffusers keeps them on the latents' device)."""
    import torch

    for key, value in vars(scheduler).items():
        if isinstance(value, torch.Tensor) and key not in ("timesteps", "sigmas"):
            setattr(scheduler, key, value.to(device))
        elif isinstance(value, list) and any(isinstance(v, torch.Tensor) for v in value):
            setattr(scheduler, key, [v.to(device) if isinstance(v, torch.Tensor) else v for v in value])


def load_expert(model_dir: Path, name: str, device: str) -> Any:
    """One expert in bf16 as diffusers loads it (``_keep_in_fp32_modules`` stay fp32), straight onto ``device``."""
    from wanrt.export.transformer import load_expert as load_expert_graph

    return load_expert_graph(model_dir, name, "bf16", device).transformer.requires_grad_(False)


def decode(model_dir: Path, latents: Sequence[Any], *, device: str) -> Iterator[Any]:
    """uint8 frames (T, H, W, 3) of each finished clip, decoded by the folder's VAE as WanPipeline does."""
    import numpy as np
    import torch
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(Path(model_dir) / "vae", torch_dtype=torch.float32,
                                           local_files_only=True).to(device).eval()
    mean = torch.tensor(vae.config.latents_mean, device=device).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, device=device).view(1, -1, 1, 1, 1)
    try:
        with torch.no_grad():
            for z in latents:
                video = vae.decode(z.to(device, torch.float32) * std + mean, return_dict=False)[0]
                frames = ((video[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (C, T, H, W)
                yield np.ascontiguousarray(frames.permute(1, 2, 3, 0).cpu().numpy())
    finally:
        del vae
        _free(device)


def _free(device: str) -> None:
    import gc

    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
