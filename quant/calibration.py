"""Calibration data from real generation runs: what each expert (and the text encoder) actually receives.

The pipeline's backend is wrapped (quant/backend_wrappers.py), not re-implemented: every ``predict_noise`` call
of a real FP32 run is recorded with its inputs (the CFG pair, cond and uncond in one batch of two, exactly as
served), so each expert is calibrated on the timesteps where the boundary sends work to it, and nowhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from wanrt.engine.pipeline import VideoPipeline
from wanrt.engine.request import GenerationRequest
from wanrt.quant.backend_wrappers import Feeds, Recording, RecordingBackend, with_backend, without_decoder


def calibration_requests(prompts: Sequence[str], *, steps: int, frames: int, height: int, width: int,
                         guidance: float | None = None, first_seed: int = 0) -> list[GenerationRequest]:
    """One request per prompt, seeds ``first_seed``, ``first_seed + 1``, ...; guidance as served by default."""
    base = GenerationRequest(prompt="-", frames=frames, height=height, width=width, steps=steps)
    if guidance is not None:
        base = dataclasses.replace(base, guidance=guidance)
    return [dataclasses.replace(base, prompt=p, seed=first_seed + i) for i, p in enumerate(prompts)]


def capture(pipeline: VideoPipeline, requests: Sequence[GenerationRequest]) -> Recording:
    """Runs the requests' denoising loops on ``pipeline`` (the unquantized artifact) and records the inputs;
    ``pipeline`` itself is left as it was."""
    recorder = RecordingBackend(pipeline.backend)
    denoising = with_backend(pipeline, without_decoder(recorder))
    for request in requests:
        for _ in denoising.generate(request):
            pass
    return recorder.record


def limit_samples(samples: list[Feeds], max_samples: int | None) -> list[Feeds]:
    """The first ``max_samples`` calls (all when None): a knob to demonstrate what too little data does."""
    return samples if max_samples is None else samples[:max_samples]
