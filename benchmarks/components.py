"""Per-component and end-to-end timings of one loaded pipeline (any backend), on one request shape.

Components: the text encoder (prompt and negative prompt in one batch), one DiT call per expert with the CFG
pair in one batch and with batch 1, the VAE decoder's first latent frame and a later one, the MP4 encode, and
the whole request. Inputs are random at the request's shapes: time does not depend on their values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from wanrt.benchmarks.timing import Timing, measure
from wanrt.engine.pipeline import Progress, VideoPipeline
from wanrt.engine.request import GenerationRequest
from wanrt.engine.video import encode_mp4

COMPONENTS = ("text", "dit", "vae", "mp4", "end_to_end")


@dataclasses.dataclass(frozen=True)
class RunPlan:
    request: GenerationRequest
    components: tuple[str, ...] = COMPONENTS
    warmup: int = 1
    runs: int = 5
    end_to_end_runs: int = 3


def _inputs(pipeline: VideoPipeline, request: GenerationRequest) -> dict[str, np.ndarray]:
    spec = pipeline.spec
    rng = np.random.default_rng(0)
    latents = rng.standard_normal(request.latent_shape(spec.latent_channels, spec.vae_scale_temporal,
                                                       spec.vae_scale_spatial), dtype=np.float32)
    ids, mask = pipeline.tokenizer([request.prompt, request.negative_prompt])
    text = rng.standard_normal((2, spec.text_length, spec.text_dim), dtype=np.float32)
    return {"latents": latents, "ids": ids, "mask": mask, "text": text}


def component_calls(pipeline: VideoPipeline, plan: RunPlan) -> dict[str, Callable[[], Any]]:
    """Name -> a call that runs that component once, in the order they run in a request."""
    backend, spec, request = pipeline.backend, pipeline.spec, plan.request
    x = _inputs(pipeline, request)
    calls: dict[str, Callable[[], Any]] = {}
    if "text" in plan.components:
        calls["text_encoder"] = lambda: backend.encode_text(x["ids"], x["mask"])
    if "dit" in plan.components:
        pair = np.concatenate([x["latents"], x["latents"]])
        t = float(spec.num_train_timesteps) * 0.9
        for expert in spec.experts:
            calls[f"{expert}_cfg_pair"] = (lambda e=expert: backend.predict_noise(
                e, pair, np.full(2, t, np.float32), x["text"]))
            calls[f"{expert}_batch1"] = (lambda e=expert: backend.predict_noise(
                e, x["latents"], np.full(1, t, np.float32), x["text"][:1]))
    first = x["latents"][:, :, :1]
    if "vae" in plan.components:
        calls["vae_first_frame"] = lambda: backend.decode_first(first)
        if x["latents"].shape[2] > 1:
            state = backend.decode_first(first)[1]
            calls["vae_next_frame"] = lambda: backend.decode_next(x["latents"][:, :, 1:2], state)
    return calls


def mp4_call(request: GenerationRequest) -> Callable[[], Any]:
    """The MP4 (H.264) encode of a request-sized clip: PyAV, the same on every backend."""
    frames = np.random.default_rng(0).integers(0, 256, (request.frames, request.height, request.width, 3), np.uint8)
    return lambda: b"".join(encode_mp4([frames], request.fps))


def end_to_end_call(pipeline: VideoPipeline, request: GenerationRequest,
                    on_progress: Callable[[Progress], None] | None = None) -> Callable[[], Any]:
    """The whole request as the server runs it: text, denoising, streaming decode and the MP4 bytes."""
    return lambda: b"".join(encode_mp4(pipeline.generate(request, on_progress=on_progress), request.fps))


def time_components(calls: dict[str, Callable[[], Any]], plan: RunPlan, *, sync: Callable[[], None] | None = None,
                    cuda: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, Timing]:
    out = {}
    for name, call in calls.items():
        runs = plan.end_to_end_runs if name == "end_to_end" else plan.runs
        if progress is not None:
            progress(name)
        out[name] = measure(call, warmup=plan.warmup, runs=runs, sync=sync, cuda=cuda)
    return out
