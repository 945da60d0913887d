"""The denoising pipeline, one for every backend: text encoding, CFG, expert switch, scheduler, streaming decode.

It mirrors diffusers' WanPipeline step for step (see tests/test_parity.py) but holds its state in numpy, so
the serving path needs no torch. Backends only run the networks.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from wanrt.engine.backends.base import Backend
from wanrt.engine.defaults import ModelDefaults, defaults_for_artifact
from wanrt.engine.request import GenerationRequest, Limits
from wanrt.engine.schedules import make_scheduler
from wanrt.engine.spec import ModelSpec
from wanrt.engine.step_cache import CachePolicy, ExpertStepCache
from wanrt.engine.text import PromptTokenizer, zero_padding_positions
from wanrt.errors import CancelledError, InsufficientMemoryError, InvalidRequestError


@dataclasses.dataclass(frozen=True)
class Progress:
    stage: str  # "text", "denoise" or "decode"
    step: int  # steps (or latent frames) done in this stage
    total: int
    elapsed_s: float  # since the job started
    # DiT calls so far: one sample through one expert (a guided step's cond + uncond pair is two, even in one
    # batched call), the machine-independent cost of a clip; and those the step cache spared.
    dit_calls: int = 0
    dit_calls_saved: int = 0


ProgressCallback = Callable[[Progress], None]
StopCheck = Callable[[], bool]


class VideoPipeline:
    """Generates uint8 video frames for a request; frames stream out as the VAE decoder produces them."""

    def __init__(
        self, spec: ModelSpec, tokenizer: PromptTokenizer, backend: Backend, *, identity: dict[str, str],
        limits: Limits | None = None, graphs: dict[str, Path] | None = None, defaults: ModelDefaults | None = None,
        cache_policy: CachePolicy | None = None,
    ) -> None:
        self.spec = spec
        self.defaults = defaults or defaults_for_artifact(None, spec)  # what unset request fields mean
        self.cache_policy = cache_policy or CachePolicy()
        self.tokenizer = tokenizer
        self.backend = backend
        self.identity = identity  # what made the video: model path, artifact hashes, backend (for audit)
        self.graphs = graphs  # the ONNX graphs the backend runs as they are: what the memory estimate reads
        self.limits = limits or Limits(
            frame_multiple=spec.vae_scale_temporal, size_multiple=spec.vae_scale_spatial * spec.patch_size[1]
        )

    def warnings(self, request: GenerationRequest) -> list[str]:
        """What the request asks that this model will quietly do less well: words its vocabulary lacks (the model
        does not see them), a size it was not made for. Said on every API and by `generate`, never dropped."""
        warnings = []
        unknown = self.tokenizer.unknown_words(request.prompt)
        if unknown:
            warnings.append(f"the model's vocabulary lacks {', '.join(map(repr, unknown))}: the model does not "
                            "see those words")
        size = self.defaults.size_warning(request.width, request.height) if self.defaults else None
        return warnings + ([size] if size else [])

    def generate(
        self,
        request: GenerationRequest,
        *,
        on_progress: ProgressCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> Iterator[np.ndarray]:
        """Yields (T, H, W, 3) uint8 chunks in order; raises CancelledError at a step boundary when asked."""
        request.validate(self.limits)
        latents = self._initial_latents(request)  # checked before any network runs
        try:
            yield from self._run(request, latents, on_progress, should_stop)
        except Exception as err:
            if not is_allocation_failure(err):
                raise
            raise InsufficientMemoryError(f"out of memory while generating {request.frames} frames at "
                                          f"{request.height}x{request.width}: {_first_line(err)}") from err

    def _run(self, request: GenerationRequest, latents: np.ndarray, on_progress: ProgressCallback | None,
             should_stop: StopCheck | None) -> Iterator[np.ndarray]:
        started = time.monotonic()
        counted = [0, 0]  # DiT calls made and saved, carried into the decode stage's reports

        def report(stage: str, step: int, total: int, *calls: int) -> None:
            if should_stop is not None and should_stop():
                raise CancelledError(f"cancelled during {stage} at {step}/{total}")
            if calls:
                counted[:] = calls
            if on_progress is not None:
                on_progress(Progress(stage, step, total, time.monotonic() - started, *counted))

        scales = {self.spec.experts[0]: request.guidance, self.spec.experts[-1]: request.effective_guidance_2}
        use_cfg = any(s > 1.0 for s in scales.values())
        report("text", 0, 1)
        text = self._encode([request.prompt, request.negative_prompt] if use_cfg else [request.prompt])
        report("text", 1, 1)
        latents = self._denoise(request, latents, text, scales, report)
        yield from self._decode(latents, report)

    def _denoise(self, request: GenerationRequest, latents: np.ndarray, text: np.ndarray, scales: dict[str, float],
                 report: Callable[..., None]) -> np.ndarray:
        """The request's schedule, each step by its expert, a step the cache can predict without its call."""
        schedule = request.schedule or self.defaults.schedule
        scheduler = make_scheduler(self.spec.scheduler_config, schedule, request.steps, request.shift)
        timesteps = scheduler.timesteps
        cache, cache_expert = None, ""
        calls = saved = 0  # DiT calls: one sample through one expert (a guided step's pair is two)
        for i, t in enumerate(timesteps):
            expert = self.spec.expert_for(float(t))
            if cache is None or cache_expert != expert:  # a fresh cache per expert: never across the boundary
                cache, cache_expert = ExpertStepCache(request.step_cache or 0.0, self.cache_policy), expert
            passes = 2 if scales[expert] > 1.0 else 1
            prediction = cache.reuse(latents, final=i == len(timesteps) - 1)
            if prediction is None:
                prediction = self._guided_prediction(expert, scales[expert], latents, float(t), text)
                cache.record(latents, prediction)
                calls += passes
            else:
                saved += passes
            latents = scheduler.step(prediction, t, latents)
            report("denoise", i + 1, len(timesteps), calls, saved)
        return latents

    def _encode(self, prompts: list[str]) -> np.ndarray:
        ids, mask = self.tokenizer(prompts)
        return zero_padding_positions(self.backend.encode_text(ids, mask), mask)

    def _guided_prediction(self, expert: str, scale: float, latents: np.ndarray, t: float,
                           text: np.ndarray) -> np.ndarray:
        """Cond and uncond go through the expert in one batch of two; guidance is applied only where it acts."""
        if scale > 1.0:
            batch = np.concatenate([latents, latents]).astype(np.float32)
            cond, uncond = self.backend.predict_noise(expert, batch, np.full(2, t, np.float32), text[:2])
            return uncond[None] + np.float32(scale) * (cond[None] - uncond[None])
        return self.backend.predict_noise(expert, latents.astype(np.float32), np.full(1, t, np.float32), text[:1])

    def _initial_latents(self, request: GenerationRequest) -> np.ndarray:
        spec = self.spec
        shape = request.latent_shape(spec.latent_channels, spec.vae_scale_temporal, spec.vae_scale_spatial)
        if request.latents is None:
            # numpy's PCG64 stream, not torch's: a seed reproduces wanrt's clips on every backend and machine.
            return np.random.default_rng(request.seed).standard_normal(shape, dtype=np.float32)
        if request.latents.shape != shape:
            raise InvalidRequestError("latents", f"shape {request.latents.shape} does not match frames/height/width:"
                                                 f" expected {shape}")
        return request.latents.astype(np.float32)

    def _decode(self, latents: np.ndarray, report: Callable[[str, int, int], None]) -> Iterator[np.ndarray]:
        spec = self.spec
        mean = np.asarray(spec.latents_mean, np.float32).reshape(1, -1, 1, 1, 1)
        inv_std = (1.0 / np.asarray(spec.latents_std, np.float32)).reshape(1, -1, 1, 1, 1)
        z = (latents / inv_std + mean).astype(np.float32)  # WanPipeline's exact denormalisation
        total = z.shape[2]
        state = None
        for k in range(total):
            frame = z[:, :, k : k + 1]
            video, state = (self.backend.decode_first(frame) if k == 0
                            else self.backend.decode_next(frame, state))
            yield to_uint8_frames(video)
            report("decode", k + 1, total)


def is_allocation_failure(error: BaseException) -> bool:
    """An allocation that failed while a network ran: MemoryError, onnxruntime's "Failed to allocate memory",
    torch's OutOfMemoryError / "can't allocate memory", CUDA's "out of memory"."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    text = str(error)
    return any(sign in text for sign in ("Failed to allocate memory", "can't allocate memory", "out of memory",
                                         "bad_alloc", "OUT_OF_MEMORY"))


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__


def to_uint8_frames(video: np.ndarray) -> np.ndarray:
    """(1, 3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8, as diffusers' postprocess then x255 and round."""
    frames = np.clip(video[0] / 2.0 + 0.5, 0.0, 1.0)
    return np.round(frames.transpose(1, 2, 3, 0) * 255.0).astype(np.uint8)
