"""`wanrt verify --torch-reference DIFFUSERS_FOLDER`: the engines against the model itself, in bf16 torch.

The reference is diffusers' own Wan in bf16 (its fp32 modules kept), run on the GPU one network at a time:
the text encoder, then each expert over its segment of every clip (quant/trajectories.py), then the VAE. It is
computed whole before the engines load, and only its results stay (frames, and per expert the inputs and
outputs of its first call), so the reference never shares the GPU with the engines. The clips start from the
latents wanrt's pipeline would draw for the same seed, handed to both, so the frames are comparable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wanrt.engine.tensorrt.profiles import VideoShape

# What verify runs when not told: small enough to run beside nothing else in seconds to minutes on a GPU, large
# enough to exercise every network (5 latent frames, 1,560 tokens at patch 1x2x2).
REDUCED = VideoShape(frames=17, height=480, width=832)


def default_shape(opt: VideoShape, limits: Any) -> VideoShape:
    """REDUCED, but never past the engines' tuned size, and a size the engines accept."""
    frames = min(REDUCED.frames, opt.frames)
    frames -= (frames - 1) % limits.frame_multiple
    sizes = []
    for reduced, tuned in ((REDUCED.height, opt.height), (REDUCED.width, opt.width)):
        size = max(limits.min_size, min(reduced, tuned))
        sizes.append(size - size % limits.size_multiple)
    return VideoShape(frames, *sizes)


@dataclasses.dataclass
class TorchReference:
    prompts: list[str]
    latents: list[np.ndarray]  # the starting noise of each clip (wanrt's draw for its seed)
    frames: list[np.ndarray]  # (T, H, W, 3) uint8 per clip
    text: dict[str, np.ndarray]  # "cond" (first prompt) and "uncond" embeddings, fp32
    calls: dict[str, tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]]  # expert -> (inputs, output)
    seconds: dict[str, float]


def compute(model_dir: Path, spec: Any, prompts: Sequence[str], shape: VideoShape, *, steps: int, guidance: float,
            guidance_2: float, seeds: Sequence[int], device: str) -> TorchReference:
    import time

    import torch

    from wanrt.engine.request import GenerationRequest
    from wanrt.quant import trajectories
    from wanrt.quant.torch_recipe import CalibrationShape

    calib = CalibrationShape(frames=shape.frames, height=shape.height, width=shape.width, steps=steps,
                             guidance=guidance, guidance_2=guidance_2)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    encoded = trajectories.encode_prompts(model_dir, prompts, device=device, max_sequence_length=spec.text_length)
    seconds["text_encoder"] = time.perf_counter() - start
    latents = []
    clips = []
    for prompt, seed in zip(prompts, seeds, strict=True):
        request = GenerationRequest(prompt=prompt, frames=shape.frames, height=shape.height, width=shape.width)
        noise = np.random.default_rng(seed).standard_normal(
            request.latent_shape(spec.latent_channels, spec.vae_scale_temporal, spec.vae_scale_spatial),
            dtype=np.float32)
        latents.append(noise)
        clips.append(trajectories.start(model_dir, calib, seed, spec, latents=torch.from_numpy(noise)))
    calls: dict[str, Any] = {}
    for name in spec.experts:
        start = time.perf_counter()
        expert = trajectories.load_expert(model_dir, name, device)

        def first_call(expert_name: str, _step: int, _t: float, inputs: tuple, out: Any) -> None:
            if expert_name not in calls:
                calls[expert_name] = (tuple(v.float().cpu().numpy() for v in inputs), out.float().cpu().numpy())

        clips = [trajectories.run_segment(expert, name, clip, encoded.embeds[i], encoded.negative,
                                          trajectories.guidance_for(spec, name, calib), spec, device=device,
                                          hook=first_call) for i, clip in enumerate(clips)]
        del expert
        trajectories._free(device)
        seconds[name] = time.perf_counter() - start
    start = time.perf_counter()
    frames = list(trajectories.decode(model_dir, [c.latents for c in clips], device=device))
    seconds["vae"] = time.perf_counter() - start
    text = {"cond": encoded.embeds[0].float().numpy(), "uncond": encoded.negative.float().numpy()}
    return TorchReference(list(prompts), latents, frames, text, calls, seconds)
