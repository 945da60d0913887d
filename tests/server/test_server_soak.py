"""A bounded soak: 50 sequential real jobs at the tiniest size. Live jobs, threads, file descriptors and memory
must not grow."""

from __future__ import annotations

import dataclasses
import os
import threading

import pytest
from server_testkit import TINY, rss_bytes, running_server

pytestmark = pytest.mark.slow
SERVER_BACKENDS = ("onnxruntime",)  # leaks are looked for on what production serves with

JOBS = 50
WARMUP = 5
MAX_RSS_GROWTH = 64 << 20  # allocator noise over 45 jobs is a few MB; a per-job leak of a clip is far more


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_soak_fifty_jobs(pipeline, tmp_path):
    with running_server(pipeline, tmp_path) as served, served.client() as client:
        digests, live = set(), []
        baseline = None
        for i in range(JOBS):
            if i == WARMUP:
                baseline = (rss_bytes(), threading.active_count(), open_fds())
            result = client.generate(dataclasses.replace(TINY, seed=i % 5))
            digests.add(result.sha256)
            live.append(served.server.jobs.live_jobs)
        rss, threads, fds = rss_bytes(), threading.active_count(), open_fds()
        assert live == [0] * JOBS
        assert len(digests) == 5  # the seed decides the clip, and only the seed
        assert served.metric("wanrt_requests_total", method="Generate", code="OK") == JOBS
        assert served.metric("wanrt_live_jobs") == 0
        assert threads <= baseline[1] + 2, (baseline, threads)
        assert fds <= baseline[2] + 4, (baseline, fds)
        growth = rss - baseline[0]
        print(f"RSS after warm-up {baseline[0] / 2**20:.0f} MiB, after {JOBS} jobs {rss / 2**20:.0f} MiB "
              f"(+{growth / 2**20:.1f} MiB)")
        assert growth < MAX_RSS_GROWTH
    assert len(served.audit()) == JOBS
