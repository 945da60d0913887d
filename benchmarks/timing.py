"""Timing one callable: warm-up, N timed runs, median and p10/p90, peak host RSS and peak device memory."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclasses.dataclass
class Timing:
    runs: list[float]
    peak_rss_mb: float | None  # host, during the timed calls (the process's high-water mark, reset first)
    peak_device_mb: float | None  # torch's CUDA allocator peak during the timed calls, where torch runs on CUDA

    @property
    def median_s(self) -> float:
        return float(np.median(self.runs))

    def summary(self) -> dict[str, Any]:
        runs = np.asarray(self.runs)
        return {"median_s": float(np.median(runs)), "p10_s": float(np.percentile(runs, 10)),
                "p90_s": float(np.percentile(runs, 90)), "runs": len(runs),
                "peak_rss_mb": self.peak_rss_mb, "peak_device_mb": self.peak_device_mb}


def reset_peak_rss() -> bool:
    """Resets the kernel's resident-set high-water mark (VmHWM) of this process; False where it cannot."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def measure(fn: Callable[[], Any], *, warmup: int = 1, runs: int = 5, sync: Callable[[], None] | None = None,
            cuda: bool = False, on_run: Callable[[], None] | None = None) -> Timing:
    """Times ``fn``; ``sync`` waits for queued device work (CUDA) so a run ends when its results exist."""
    wait = sync or (lambda: None)
    for _ in range(warmup):
        fn()
        wait()
    rss_reset = reset_peak_rss()
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        wait()
        times.append(time.perf_counter() - start)
        if on_run is not None:
            on_run()
    device_mb = None
    if cuda:
        import torch

        device_mb = torch.cuda.max_memory_allocated() / 2**20
    return Timing(times, peak_rss_mb() if rss_reset else None, device_mb)
