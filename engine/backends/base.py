"""The one interface every backend implements: it runs networks and nothing else.

Scheduling, guidance, the expert switch, tokenisation and video encoding live in the pipeline, so every
backend makes the same video from the same numbers.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

DecoderState = Any  # opaque to the pipeline: each backend keeps its causal-conv caches its own way


class Backend(Protocol):
    name: str

    def encode_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """(B, L) int64 ids and mask -> (B, L, D) float32 last hidden state."""
        ...

    def predict_noise(self, expert: str, latents: np.ndarray, timestep: np.ndarray, text: np.ndarray) -> np.ndarray:
        """One DiT expert call: (B, C, F, H, W) latents, (B,) timesteps, (B, L, D) text -> flow prediction."""
        ...

    def decode_first(self, latent: np.ndarray) -> tuple[np.ndarray, DecoderState]:
        """First latent frame (1, C, 1, h, w) -> video frames (1, 3, 1, H, W) in [-1, 1] and the caches."""
        ...

    def decode_next(self, latent: np.ndarray, state: DecoderState) -> tuple[np.ndarray, DecoderState]:
        """A later latent frame -> (1, 3, temporal_stride, H, W) frames and the updated caches."""
        ...
