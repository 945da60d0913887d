"""Admission by memory: a request whose estimated peak exceeds the budget is refused before anything runs.

Used by `wanrt generate` (before the pipeline runs) and `wanrt serve` (before the job is queued), so a valid
request can never make the kernel kill the process, with every other job in it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from wanrt.engine.budget import MemoryBudget, format_bytes, host_memory_budget, resident_bytes
from wanrt.engine.memory import MemoryEstimate, MemoryEstimator
from wanrt.engine.pipeline import VideoPipeline
from wanrt.engine.request import GenerationRequest, Limits
from wanrt.engine.shapes import frame_counts
from wanrt.errors import InsufficientMemoryError

log = logging.getLogger("wanrt.engine")


class Admission:
    """Checks requests against a memory budget with a loaded pipeline's estimator."""

    def __init__(self, estimator: MemoryEstimator, budget: MemoryBudget, limits: Limits) -> None:
        self.estimator = estimator
        self.budget = budget
        self.limits = limits  # the pipeline's own limits: what the searches for a fitting size stay within

    def fits(self, request: GenerationRequest) -> bool:
        return self.estimator.estimate(request).total <= self.budget.bytes

    def check(self, request: GenerationRequest) -> MemoryEstimate:
        """Returns the estimate, or raises InsufficientMemoryError naming it, the budget and what would fit."""
        estimate = self.estimator.estimate(request)
        if estimate.total <= self.budget.bytes:
            return estimate
        raise InsufficientMemoryError(
            f"{request.frames} frames at {request.height}x{request.width} need an estimated "
            f"{format_bytes(estimate.total)} ({format_bytes(estimate.resident)} held + "
            f"{format_bytes(estimate.stages[estimate.peak_stage])} for {estimate.peak_stage}), over the memory "
            f"budget of {self.budget}; {self._what_fits(request)}")

    def _what_fits(self, request: GenerationRequest) -> str:
        frames = self.largest_frames(request)
        size = self.largest_size(request)
        options = []
        if frames is not None:
            options.append(f"at most {frames} frames at {request.height}x{request.width}")
        if size is not None:
            options.append(f"at most {size[0]}x{size[1]} at {request.frames} frames")
        return " or ".join(options) + " would fit" if options else "nothing this model accepts fits at this budget"

    def largest_frames(self, request: GenerationRequest) -> int | None:
        """Most frames (4k+1) that fit at the request's size, or None."""
        step = self.limits.frame_multiple
        counts = frame_counts(self.limits.max_frames, step)
        best = _last_fitting(counts, lambda n: self.fits(dataclasses.replace(request, frames=n, latents=None)))
        return None if best is None else counts[best]

    def largest_size(self, request: GenerationRequest) -> tuple[int, int] | None:
        """Largest height x width with the request's aspect ratio that fits at its frame count, or None."""
        multiple = self.limits.size_multiple
        aspect = request.width / request.height
        sizes = []
        for height in range(self.limits.min_size, self.limits.max_height + 1, multiple):
            width = max(self.limits.min_size, round(height * aspect / multiple) * multiple)
            if width <= self.limits.max_width and height % multiple == 0:
                sizes.append((height, width))
        best = _last_fitting(sizes, lambda hw: self.fits(
            dataclasses.replace(request, height=hw[0], width=hw[1], latents=None)))
        return None if best is None else sizes[best]

    def lowered(self, limits: Limits) -> Limits:
        """``limits`` as the budget lowers them, for DescribeModel and the start-up line: height and width to
        the largest square that fits at one frame, frames to the most that fit at the smallest size. Other
        combinations within the model's limits are checked per request (RESOURCE_EXHAUSTED naming what fits)."""
        smallest = GenerationRequest(prompt="-", frames=1, height=limits.min_size, width=limits.min_size, steps=1)
        frames = frame_counts(limits.max_frames, limits.frame_multiple)
        sides = list(range(limits.min_size, max(limits.max_height, limits.max_width) + 1, limits.size_multiple))
        most_frames = _last_fitting(frames, lambda n: self.fits(dataclasses.replace(smallest, frames=n)))
        side = _last_fitting(sides, lambda s: self.fits(dataclasses.replace(smallest, height=s, width=s)))
        largest = 0 if side is None else sides[side]
        return dataclasses.replace(limits, max_frames=0 if most_frames is None else frames[most_frames],
                                   max_height=min(limits.max_height, largest),
                                   max_width=min(limits.max_width, largest))

    def describe(self) -> str:
        return (f"memory budget {self.budget}, {format_bytes(self.estimator.resident)} held after loading; "
                f"attention materialised (quadratic) in: {', '.join(self.estimator.quadratic_graphs) or 'none'}")


def _last_fitting(values: list, fits: object) -> int | None:
    """Index of the last value that fits, by bisection (memory grows with each of frames, height, width)."""
    low, high = 0, len(values) - 1
    if not values or not fits(values[0]):
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if fits(values[middle]):
            low = middle
        else:
            high = middle - 1
    return low


def admission_for(pipeline: VideoPipeline, budget_bytes: int | None, devices: Sequence[str]) -> Admission | None:
    """Admission for a loaded pipeline, or None where no estimate exists (the torch backend, GPU devices:
    there the budget is device memory, which the host-side estimate does not cover)."""
    graphs = getattr(pipeline, "graphs", None)  # stand-ins for a pipeline (tests) have none
    if graphs is None or tuple(devices) != ("cpu",):
        backend = getattr(getattr(pipeline, "backend", None), "name", "this")
        log.warning("no memory admission for the %s backend on %s: requests are not checked against memory "
                    "(allocation failures still end the job with RESOURCE_EXHAUSTED)", backend, ", ".join(devices))
        return None
    estimator = MemoryEstimator(graphs, pipeline.spec, resident=resident_bytes())
    return Admission(estimator, host_memory_budget(budget_bytes), pipeline.limits)
