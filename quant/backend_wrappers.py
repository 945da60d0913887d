"""Backends that wrap a real one (engine/backends/base.py's protocol), for calibration and the accuracy report.

The real backend is never modified: a wrapper is handed to a fresh pipeline (``with_backend``), so the FP32
pipeline, its recording and its quantized variant can run side by side without restoring anything.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from wanrt.engine.backends.base import Backend, DecoderState
from wanrt.engine.pipeline import VideoPipeline

Feeds = dict[str, np.ndarray]
NETWORKS = ("encode_text", "predict_noise", "decode_first", "decode_next")  # the Backend protocol's methods


@dataclasses.dataclass
class ExpertCall:
    """One denoising call as the pipeline made it."""

    expert: str
    timestep: float
    feeds: Feeds  # hidden_states, timestep, encoder_hidden_states: the graph's own input names
    output: np.ndarray | None = None
    seconds: float = 0.0


@dataclasses.dataclass
class Recording:
    expert_calls: list[ExpertCall] = dataclasses.field(default_factory=list)
    text_calls: list[Feeds] = dataclasses.field(default_factory=list)  # input_ids, attention_mask

    def samples(self, expert: str) -> list[Feeds]:
        return [c.feeds for c in self.expert_calls if c.expert == expert]


class RecordingBackend:
    """Runs ``inner`` and records the inputs of every text-encoder and expert call (and, with ``keep_outputs``,
    each expert's output) in ``record``."""

    def __init__(self, inner: Backend, *, keep_outputs: bool = False) -> None:
        self.name = inner.name
        self.record = Recording()
        self._inner = inner
        self._keep_outputs = keep_outputs
        self._last_text: np.ndarray | None = None

    def encode_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        self.record.text_calls.append({"input_ids": input_ids.copy(), "attention_mask": attention_mask.copy()})
        return self._inner.encode_text(input_ids, attention_mask)

    def predict_noise(self, expert: str, latents: np.ndarray, timestep: np.ndarray, text: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        out = self._inner.predict_noise(expert, latents, timestep, text)
        seconds = time.perf_counter() - started
        feeds = {"hidden_states": latents.copy(), "timestep": timestep.copy(),
                 "encoder_hidden_states": self._shared_text(text)}
        self.record.expert_calls.append(ExpertCall(expert, float(timestep[0]), feeds,
                                                   out.copy() if self._keep_outputs else None, seconds))
        return out

    def decode_first(self, latent: np.ndarray) -> tuple[np.ndarray, DecoderState]:
        return self._inner.decode_first(latent)

    def decode_next(self, latent: np.ndarray, state: DecoderState) -> tuple[np.ndarray, DecoderState]:
        return self._inner.decode_next(latent, state)

    def _shared_text(self, text: np.ndarray) -> np.ndarray:
        # Every step of a clip passes the same context: keep one copy per clip, not one per step.
        last = self._last_text
        if last is None or last.shape != text.shape or not np.array_equal(last, text):
            self._last_text = last = text.copy()
        return last


class SubstitutingBackend:
    """``inner`` with some of its networks replaced: each keyword (a Backend method name) gives the callable
    that runs instead, with the same signature; the other networks are ``inner``'s."""

    def __init__(self, inner: Backend, **networks: Callable[..., Any]) -> None:
        unknown = sorted(set(networks) - set(NETWORKS))
        if unknown:
            raise TypeError(f"not a backend network: {', '.join(unknown)} (one of {', '.join(NETWORKS)})")
        self.name = inner.name
        self._run = {name: networks.get(name) or getattr(inner, name) for name in NETWORKS}

    def encode_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self._run["encode_text"](input_ids, attention_mask)

    def predict_noise(self, expert: str, latents: np.ndarray, timestep: np.ndarray, text: np.ndarray) -> np.ndarray:
        return self._run["predict_noise"](expert, latents, timestep, text)

    def decode_first(self, latent: np.ndarray) -> tuple[np.ndarray, DecoderState]:
        return self._run["decode_first"](latent)

    def decode_next(self, latent: np.ndarray, state: DecoderState) -> tuple[np.ndarray, DecoderState]:
        return self._run["decode_next"](latent, state)


def without_decoder(inner: Backend) -> SubstitutingBackend:
    """``inner`` whose VAE decoder returns no frames: a generation then runs every denoising step (all that
    calibration needs) and skips the decode, whatever order the pipeline does them in."""

    def no_frames(latent: np.ndarray, state: DecoderState = None) -> tuple[np.ndarray, DecoderState]:
        return np.zeros((1, 3, 0, 1, 1), np.float32), None

    return SubstitutingBackend(inner, decode_first=no_frames, decode_next=no_frames)


def with_backend(pipeline: VideoPipeline, backend: Backend) -> VideoPipeline:
    """A new pipeline like ``pipeline`` (spec, tokenizer, identity, limits) that runs ``backend``."""
    return VideoPipeline(pipeline.spec, pipeline.tokenizer, backend, identity=pipeline.identity,
                         limits=pipeline.limits, defaults=pipeline.defaults)
