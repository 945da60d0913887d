"""The adaptive step cache: its rules (warm-up, final step, longest run, never across the expert boundary), the
calls it reports, and that a threshold of 0 changes nothing. Runs the reef demo model at a small size."""

from __future__ import annotations

import random

import numpy as np
import pytest

from wanrt.engine.loader import load_pipeline
from wanrt.engine.step_cache import CachePolicy, ExpertStepCache
from wanrt.errors import InvalidRequestError
from wanrt.reef import default_model_dir

PROMPT = "a green sea turtle glides over a coral reef"


@pytest.fixture(scope="module")
def reef():
    return load_pipeline(default_model_dir(), "onnxruntime")


def _run(pipeline, **fields):
    """(frames, [(step, expert, ran the network)], last progress)."""
    steps: list[tuple[float, str]] = []
    real = pipeline.backend.predict_noise

    def recording(expert, latents, timestep, text):
        steps.append((float(timestep[0]), expert))
        return real(expert, latents, timestep, text)

    pipeline.backend.predict_noise = recording
    progress = []
    try:
        request = pipeline.defaults.request(PROMPT, frames=5, height=32, width=32, **fields)
        frames = np.concatenate(list(pipeline.generate(request, on_progress=progress.append)))
    finally:
        pipeline.backend.predict_noise = real
    return frames, steps, progress[-1], request


def test_threshold_zero_is_the_plain_schedule(reef):
    plain, calls, last, request = _run(reef, steps=6)
    cached, calls0, last0, _ = _run(reef, steps=6, step_cache=0.0)
    assert np.array_equal(plain, cached) and calls == calls0
    assert (last.dit_calls, last.dit_calls_saved) == (last0.dit_calls, last0.dit_calls_saved) == (12, 0)


def test_cache_keeps_its_rules_and_counts_what_it_saved(reef):
    seed = random.SystemRandom().randrange(2**31)
    rng = np.random.default_rng(seed)
    steps = int(rng.integers(12, 30))
    threshold = float(rng.uniform(0.5, 1.0))  # high: the rules, not the estimate, must bound the skipping
    guidance = float(rng.choice([1.0, 4.0]))
    print(f"seed {seed}: {steps} steps, threshold {threshold:.3f}, guidance {guidance}")
    _, full_calls, full_last, request = _run(reef, steps=steps, guidance=guidance, guidance_2=guidance)
    frames, calls, last, _ = _run(reef, steps=steps, guidance=guidance, guidance_2=guidance, step_cache=threshold)
    schedule = [t for t, _ in full_calls]  # every timestep, in order, with its expert
    experts = dict(full_calls)
    ran = {t for t, _ in calls}
    assert [e for _, e in calls] == [experts[t] for t, _ in calls]  # each step still goes to its own expert
    passes = 2 if guidance > 1 else 1
    assert last.dit_calls == passes * len(calls) and last.dit_calls_saved == passes * (steps - len(calls))
    assert last.dit_calls + last.dit_calls_saved == full_last.dit_calls == passes * steps
    assert last.dit_calls_saved > 0, "a threshold this high must skip something"
    assert schedule[-1] in ran, "the final step always runs"
    policy = CachePolicy()
    run = segment_start = 0
    for i, t in enumerate(schedule):
        if i and experts[schedule[i - 1]] != experts[t]:
            segment_start = i
        if i - segment_start < policy.warmup:  # warm-up, counted afresh for each expert: no state crosses
            assert t in ran, f"step {i} is in {experts[t]}'s warm-up"
        run = 0 if t in ran else run + 1
        assert run <= policy.max_skip
    assert frames.shape == (5, 32, 32, 3)


def test_expert_cache_reuses_the_last_transformation():
    cache = ExpertStepCache(0.5, CachePolicy(warmup=2, max_skip=3))
    x0, x1, x2 = (np.full((1, 2), v, np.float32) for v in (1.0, 0.9, 0.8))
    assert cache.reuse(x0, final=False) is None
    cache.record(x0, x0 * 0 + 3.0)
    assert cache.reuse(x1, final=False) is None  # warm-up: the rate needs a second call
    cache.record(x1, x1 * 0 + 3.05)  # output moved 0.05 for an input move of 0.1: k = 0.5
    reused = cache.reuse(x2, final=False)
    np.testing.assert_allclose(reused, x2 + (3.05 - 0.9))  # the last transformation, on the new input
    assert cache.reuse(x2 - 0.1, final=True) is None
    with pytest.raises(InvalidRequestError):
        CachePolicy(warmup=1)
