"""A generation request and its validation: the one place every front end (CLI, gRPC) checks parameters."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from wanrt.engine.schedules import check_schedule, check_shift
from wanrt.engine.step_cache import check_threshold
from wanrt.errors import InvalidRequestError

MAX_PROMPT_BYTES = 4096


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a loaded model accepts; the server reports these to clients."""

    max_frames: int = 129
    min_size: int = 16
    max_height: int = 1280
    max_width: int = 1280
    max_steps: int = 100
    frame_multiple: int = 4  # frames = k * frame_multiple + 1 (the VAE's temporal stride)
    size_multiple: int = 16  # VAE spatial stride x transformer patch size
    max_guidance: float = 50.0
    max_fps: int = 60


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    """Everything that determines a clip. Two equal requests on the same artifact give the same frames."""

    prompt: str
    negative_prompt: str = ""
    frames: int = 17
    height: int = 96
    width: int = 96
    steps: int = 8
    guidance: float = 4.0
    guidance_2: float | None = None  # low-noise expert's scale; None means the same as ``guidance``
    seed: int = 0
    fps: int = 16
    latents: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
    # None: the model's default schedule (its manifest's defaults), and that schedule's own shift.
    schedule: str | None = None
    shift: float | None = None
    # Adaptive step cache threshold (engine/step_cache.py); None or 0: every step runs the network.
    step_cache: float | None = None

    @classmethod
    def defaults(cls) -> GenerationRequest:
        """Every field at its default and an empty prompt (which ``validate`` refuses): what front ends fill
        unset options from, never a request to run as it is."""
        return cls(prompt="")

    @property
    def effective_guidance_2(self) -> float:
        return self.guidance if self.guidance_2 is None else self.guidance_2

    def latent_shape(self, channels: int, temporal: int, spatial: int) -> tuple[int, int, int, int, int]:
        return (1, channels, (self.frames - 1) // temporal + 1, self.height // spatial, self.width // spatial)

    def validate(self, limits: Limits) -> None:
        """Raises InvalidRequestError naming the first bad field."""
        _check_text("prompt", self.prompt, allow_empty=False)
        _check_text("negative_prompt", self.negative_prompt, allow_empty=True)
        _check_int("frames", self.frames, 1, limits.max_frames)
        if (self.frames - 1) % limits.frame_multiple:
            raise InvalidRequestError("frames", f"must be {limits.frame_multiple}k+1 (1, 5, 9, 13, 17, ...), "
                                                f"got {self.frames}")
        _check_int("height", self.height, limits.min_size, limits.max_height)
        _check_int("width", self.width, limits.min_size, limits.max_width)
        for name in ("height", "width"):
            if getattr(self, name) % limits.size_multiple:
                raise InvalidRequestError(name, f"must be a multiple of {limits.size_multiple}, "
                                                f"got {getattr(self, name)}")
        _check_int("steps", self.steps, 1, limits.max_steps)
        _check_float("guidance", self.guidance, limits.max_guidance)
        if self.guidance_2 is not None:
            _check_float("guidance_2", self.guidance_2, limits.max_guidance)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_int("fps", self.fps, 1, limits.max_fps)
        if self.schedule is not None:
            check_schedule(self.schedule)
        if self.shift is not None:
            check_shift(self.shift)
        if self.step_cache is not None:
            check_threshold(self.step_cache)
        if self.latents is not None:
            self._check_latents()

    def _check_latents(self) -> None:
        latents = self.latents
        if not isinstance(latents, np.ndarray) or latents.dtype.kind != "f":
            raise InvalidRequestError("latents", "must be a floating-point numpy array")
        if latents.ndim != 5 or latents.shape[0] != 1:
            raise InvalidRequestError("latents", f"must have shape (1, C, F, H, W), got {latents.shape}")
        if not np.isfinite(latents).all():
            raise InvalidRequestError("latents", "contains NaN or infinity")


def _check_text(field: str, value: object, *, allow_empty: bool) -> None:
    if not isinstance(value, str):
        raise InvalidRequestError(field, "must be a string")
    if not allow_empty and not value.strip():
        raise InvalidRequestError(field, "must not be empty")
    if len(value.encode("utf-8")) > MAX_PROMPT_BYTES:
        raise InvalidRequestError(field, f"is longer than {MAX_PROMPT_BYTES} bytes")


def _check_int(field: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidRequestError(field, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise InvalidRequestError(field, f"must be between {low} and {high}, got {value}")


def _check_float(field: str, value: object, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        raise InvalidRequestError(field, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise InvalidRequestError(field, f"must be finite, got {value}")
    if not 0.0 <= value <= high:
        raise InvalidRequestError(field, f"must be between 0 and {high}, got {value}")
