"""Video <-> latent <-> token arithmetic of Wan models, and the frame counts clips are made at: the one home of
these formulas (the pipeline, memory estimates, engine profiles, benchmarks and every API use them).

A Wan VAE turns ``frames = temporal * (latent_frames - 1) + 1`` video frames into ``latent_frames`` latent
frames (the first frame alone, then ``temporal`` frames each), ``spatial`` pixels into one latent pixel; the DiT
cuts the latent into patches of ``patch`` (frames, rows, columns), one token each.
"""

from __future__ import annotations

import math

# Wan2.1/2.2 VAE strides and DiT patch (diffusers' AutoencoderKLWan, WanTransformer3DModel defaults).
WAN_TEMPORAL_STRIDE = 4
WAN_SPATIAL_STRIDE = 8
WAN_PATCH = (1, 2, 2)
WAN_LATENT_CHANNELS = 16
# The clip length Wan2.2-T2V-A14B was trained at: 81 frames, 5 s at its native 16 frames per second.
WAN_TRAINED_FRAMES = 81
WAN_NATIVE_FPS = 16
# The longest clip a model is served at unless an engine build or the operator lowers it (8 s at 16 fps).
MAX_FRAMES = 129


def latent_frames(frames: int, temporal: int = WAN_TEMPORAL_STRIDE) -> int:
    """Latent frames for ``frames`` video frames (a valid count is ``temporal * k + 1``)."""
    return (frames - 1) // temporal + 1


def video_frames(latents: int, temporal: int = WAN_TEMPORAL_STRIDE) -> int:
    """Video frames decoded from ``latents`` latent frames."""
    return (latents - 1) * temporal + 1


def latent_shape(frames: int, height: int, width: int, *, channels: int = WAN_LATENT_CHANNELS,
                 temporal: int = WAN_TEMPORAL_STRIDE, spatial: int = WAN_SPATIAL_STRIDE,
                 batch: int = 1) -> tuple[int, int, int, int, int]:
    """(batch, channels, latent frames, latent height, latent width) of a clip."""
    return (batch, channels, latent_frames(frames, temporal), height // spatial, width // spatial)


def dit_tokens(frames: int, height: int, width: int, *, temporal: int = WAN_TEMPORAL_STRIDE,
               spatial: int = WAN_SPATIAL_STRIDE, patch: tuple[int, int, int] = WAN_PATCH) -> int:
    """Tokens one DiT call attends over: 32,760 at 81x480x832, 75,600 at 81x720x1280."""
    latent = latent_shape(frames, height, width, temporal=temporal, spatial=spatial)[2:]
    return math.prod(n // p for n, p in zip(latent, patch, strict=True))


def frame_counts(max_frames: int, multiple: int = WAN_TEMPORAL_STRIDE) -> list[int]:
    """Every valid frame count up to ``max_frames``: 1, 5, 9, ... (multiple * k + 1)."""
    return list(range(1, max_frames + 1, multiple))


def frames_for_seconds(seconds: float, fps: int, multiple: int = WAN_TEMPORAL_STRIDE) -> int:
    """The valid frame count (multiple * k + 1) nearest to ``seconds * fps``, at least 1 (at 16 fps: 1 s -> 17,
    5 s -> 81). ``seconds`` must be finite; very long durations give very large counts for the caller to refuse."""
    return max(0, round((seconds * fps - 1) / multiple)) * multiple + 1


def seconds_of(frames: int, fps: int) -> float:
    return frames / fps
