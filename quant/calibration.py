"""Calibration data from real generation runs: what each expert (and the text encoder) actually receives.

The pipeline's backend is wrapped, not re-implemented: every ``predict_noise`` call of a real FP32 run is
recorded with its inputs (the CFG pair, cond and uncond in one batch of two, exactly as served) and output, so
each expert is calibrated on the timesteps where the boundary sends work to it, and nowhere else.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from wanrt.engine.pipeline import VideoPipeline
from wanrt.engine.request import GenerationRequest

Feeds = dict[str, np.ndarray]


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


@contextlib.contextmanager
def recording(pipeline: VideoPipeline, *, keep_outputs: bool = False) -> Iterator[Recording]:
    """Records every network input of ``pipeline`` while the context is open (its backend is restored after)."""
    import time

    backend = pipeline.backend
    record = Recording()
    predict_noise, encode_text = backend.predict_noise, backend.encode_text
    last_text: list[np.ndarray] = []

    def shared_text(text: np.ndarray) -> np.ndarray:
        # Every step of a clip passes the same context: keep one copy per clip, not one per step.
        if last_text and last_text[0].shape == text.shape and np.array_equal(last_text[0], text):
            return last_text[0]
        last_text[:] = [text.copy()]
        return last_text[0]

    def recorded_predict_noise(expert: str, latents: np.ndarray, timestep: np.ndarray,
                               text: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        out = predict_noise(expert, latents, timestep, text)
        call = ExpertCall(expert, float(timestep[0]),
                          {"hidden_states": latents.copy(), "timestep": timestep.copy(),
                           "encoder_hidden_states": shared_text(text)},
                          out.copy() if keep_outputs else None, time.perf_counter() - started)
        record.expert_calls.append(call)
        return out

    def recorded_encode_text(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        record.text_calls.append({"input_ids": input_ids.copy(), "attention_mask": attention_mask.copy()})
        return encode_text(input_ids, attention_mask)

    with patched(backend, predict_noise=recorded_predict_noise, encode_text=recorded_encode_text):
        yield record


@contextlib.contextmanager
def patched(obj: object, **attributes: object) -> Iterator[None]:
    """Sets instance attributes for the duration of the context, then restores exactly what was there before
    (the class's methods when nothing was), so recordings and overrides nest."""
    saved = {name: vars(obj)[name] for name in attributes if name in vars(obj)}
    for name, value in attributes.items():
        setattr(obj, name, value)
    try:
        yield
    finally:
        for name in attributes:
            if name in saved:
                setattr(obj, name, saved[name])
            else:
                delattr(obj, name)


def denoise_only(pipeline: VideoPipeline, request: GenerationRequest) -> None:
    """Runs the text encoder and every denoising step of ``request``; decodes one latent frame, not the clip.

    The pipeline denoises fully before it yields the first decoded chunk, so stopping there is enough.
    """
    chunks = pipeline.generate(request)
    try:
        next(chunks)
    finally:
        chunks.close()


def calibration_requests(prompts: Sequence[str], *, steps: int, frames: int, height: int, width: int,
                         guidance: float | None = None, first_seed: int = 0) -> list[GenerationRequest]:
    """One request per prompt, seeds ``first_seed``, ``first_seed + 1``, ...; guidance as served by default."""
    base = GenerationRequest(prompt="-", frames=frames, height=height, width=width, steps=steps)
    if guidance is not None:
        base = dataclasses.replace(base, guidance=guidance)
    return [dataclasses.replace(base, prompt=p, seed=first_seed + i) for i, p in enumerate(prompts)]


def capture(pipeline: VideoPipeline, requests: Sequence[GenerationRequest]) -> Recording:
    """Runs the requests' denoising loops on ``pipeline`` (the unquantized artifact) and records the inputs."""
    with recording(pipeline) as record:
        for request in requests:
            denoise_only(pipeline, request)
    return record


def limit_samples(samples: list[Feeds], max_samples: int | None) -> list[Feeds]:
    """The first ``max_samples`` calls (all when None): a knob to demonstrate what too little data does."""
    return samples if max_samples is None else samples[:max_samples]
