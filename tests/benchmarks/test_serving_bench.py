"""`wanrt bench --serve`'s measurement: `wanrt serve` in a child process vs in-process, and concurrent clients."""

from __future__ import annotations

import pytest

from wanrt.benchmarks.report import serving_markdown
from wanrt.benchmarks.serving import bench_serving
from wanrt.engine.request import GenerationRequest
from wanrt.reef import default_model_dir


@pytest.mark.slow  # starts `wanrt serve` and runs 8 requests
def test_served_and_in_process_runs_make_the_same_clip_and_concurrency_is_counted():
    request = GenerationRequest(prompt="a turtle glides over the reef", frames=1, height=16, width=16, steps=1)
    result = bench_serving(default_model_dir(), request, repeats=1, per_client=2, concurrency=(1, 3))
    assert result["identical_output"] is True
    assert result["served_s"] > 0 and result["in_process_s"] > 0
    assert [c["clients"] for c in result["concurrency"]] == [1, 3]
    assert [c["requests"] for c in result["concurrency"]] == [2, 6]
    for row in result["concurrency"]:
        assert row["p50_s"] <= row["p95_s"] and row["requests_per_s"] > 0
    assert "| 3 | 6 |" in serving_markdown(result)
