"""A generation request and its validation: the one place every front end (CLI, gRPC) checks parameters."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import secrets
from collections.abc import Sequence

import numpy as np

from wanrt.engine.schedules import check_schedule, check_shift
from wanrt.engine.shapes import MAX_FRAMES, WAN_TEMPORAL_STRIDE, latent_shape
from wanrt.engine.step_cache import check_threshold
from wanrt.errors import InvalidRequestError

MAX_PROMPT_BYTES = 4096
RANDOM_SEED = -1  # asks for a seed chosen at random; the chosen one is reported with the video
MAX_SEED = 2**63 - 1


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a loaded model accepts; the server reports these to clients."""

    max_frames: int = MAX_FRAMES
    min_size: int = 16
    max_height: int = 1280
    max_width: int = 1280
    max_steps: int = 100
    frame_multiple: int = WAN_TEMPORAL_STRIDE  # frames = k * frame_multiple + 1 (the VAE's temporal stride)
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

    def with_seed_chosen(self) -> GenerationRequest:
        """This request, with a random seed in place of RANDOM_SEED (any other seed is kept as it is)."""
        if self.seed != RANDOM_SEED:
            return self
        return dataclasses.replace(self, seed=secrets.randbelow(MAX_SEED + 1))

    @property
    def effective_guidance_2(self) -> float:
        return self.guidance if self.guidance_2 is None else self.guidance_2

    def latent_shape(self, channels: int, temporal: int, spatial: int) -> tuple[int, int, int, int, int]:
        return latent_shape(self.frames, self.height, self.width, channels=channels, temporal=temporal, spatial=spatial)

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
        _check_int("seed", self.seed, 0, MAX_SEED)
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
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate ("\ud800") that JSON can carry and UTF-8 cannot
        raise InvalidRequestError(field, f"is not valid Unicode: an unpaired surrogate at character {err.start}") \
            from None
    if not allow_empty and not value.strip():
        raise InvalidRequestError(field, "must not be empty")
    if len(encoded) > MAX_PROMPT_BYTES:
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


def model_name(identity: dict[str, str]) -> str:
    """A served model's name: its folder's (what the HTTP APIs take as ``model``)."""
    path = identity.get("model", "wanrt")
    return path.rstrip("/").rsplit("/", 1)[-1] or "wanrt"


def clip_settings(request: GenerationRequest, identity: dict[str, str],
                  warnings: Sequence[str] = ()) -> dict[str, object]:
    """What made a clip, returned with it on every API and written into its MP4 (engine/video.py): the prompts'
    sha256, the seed, size, frames, steps, guidance, schedule, shift, step cache, the model's identity and what the
    model did less well than asked (``warnings``: VideoPipeline.warnings). Deterministic: the same request on the
    same model gives the same settings (and so the same bytes)."""
    return {"prompt_sha256": sha256_text(request.prompt),
            "negative_prompt_sha256": sha256_text(request.negative_prompt), "seed": request.seed,
            "size": f"{request.width}x{request.height}", "width": request.width, "height": request.height,
            "frames": request.frames, "fps": request.fps, "steps": request.steps, "guidance": request.guidance,
            "guidance_2": request.effective_guidance_2, "schedule": request.schedule, "shift": request.shift,
            "step_cache": request.step_cache, "latents_given": request.latents is not None,
            "model": model_name(identity), "identity": dict(identity), "warnings": list(warnings)}


def sha256_text(text: str) -> str:
    """Hex sha256 of a text's UTF-8 bytes (an unpaired surrogate, refused by ``validate``, still hashes)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
