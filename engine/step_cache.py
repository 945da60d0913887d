"""Adaptive step cache: skip an expert's network call when its output can be predicted from its last one.

Runtime-adaptive, in the manner of EasyCache (Zhou et al., 2025): it needs only each step's network input (the
latents) and output (the guided velocity), nothing calibrated and no retraining. After two full calls of an
expert it knows that expert's transformation rate k = |output change| / |input change| (mean absolute values).
At a later step the relative change of the output is estimated as k x |input change since the previous step| /
|last output| and accumulated; while the sum stays under the threshold, the step reuses the last
transformation (output - input) added to the current input, and the network is not called. A full call resets
the sum and re-measures k.

Each expert has its own state, dropped at the expert boundary: the high-noise expert's rate says nothing about
the low-noise one, and Wan2.2 A14B's experts are different networks. Each expert's first ``warmup`` steps
and the schedule's last step always run, and at most ``max_skip`` steps in a row are reused.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from wanrt.errors import InvalidRequestError

MAX_THRESHOLD = 1.0


@dataclasses.dataclass(frozen=True)
class CachePolicy:
    """The cache's fixed rules (the threshold comes with each request)."""

    warmup: int = 2  # full calls at the start of each expert's steps (two are needed to measure k)
    max_skip: int = 2  # reused steps in a row, at most

    def __post_init__(self) -> None:
        if self.warmup < 2:
            raise InvalidRequestError("step_cache_warmup", f"must be at least 2 (k needs two calls), got {self.warmup}")
        if self.max_skip < 1:
            raise InvalidRequestError("step_cache_max_skip", f"must be at least 1, got {self.max_skip}")


def check_threshold(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating) or not math.isfinite(value):
        raise InvalidRequestError("step_cache", f"must be a finite number, got {value!r}")
    if not 0.0 <= value <= MAX_THRESHOLD:
        raise InvalidRequestError("step_cache", f"must be between 0 (off) and {MAX_THRESHOLD:g}, got {value}")


def _mean_abs(a: np.ndarray) -> float:
    return float(np.mean(np.abs(a), dtype=np.float64))


class ExpertStepCache:
    """One expert's run of consecutive steps."""

    def __init__(self, threshold: float, policy: CachePolicy) -> None:
        self.threshold = threshold
        self.policy = policy
        self.full_calls = 0
        self._rate: float | None = None  # k
        self._error = 0.0  # estimated relative output change since the last full call
        self._run = 0  # steps reused in a row
        self._last_in: np.ndarray | None = None  # at the last full call
        self._last_out: np.ndarray | None = None
        self._prev_in: np.ndarray | None = None  # at the previous step, full or reused

    def reuse(self, latents: np.ndarray, *, final: bool) -> np.ndarray | None:
        """The predicted output for ``latents``, or None when the network must run."""
        if (self.threshold <= 0 or final or self.full_calls < self.policy.warmup or self._rate is None
                or self._run >= self.policy.max_skip):
            return None
        scale = _mean_abs(self._last_out)
        if scale == 0.0:
            return None
        estimate = self._rate * _mean_abs(latents - self._prev_in) / scale
        if self._error + estimate >= self.threshold:
            return None
        self._error += estimate
        self._run += 1
        self._prev_in = latents
        return (latents + (self._last_out - self._last_in)).astype(np.float32)

    def record(self, latents: np.ndarray, output: np.ndarray) -> None:
        """A full call's input and output."""
        if self._last_out is not None:
            moved = _mean_abs(latents - self._last_in)
            self._rate = _mean_abs(output - self._last_out) / moved if moved > 0 else None
        self._last_in, self._last_out, self._prev_in = latents, output, latents
        self._error, self._run = 0.0, 0
        self.full_calls += 1
