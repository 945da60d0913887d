"""The GPU memory plan's arithmetic (engine/tensorrt/memory.py): residencies, refusals and the A14B numbers the
README quotes."""

from __future__ import annotations

import pytest

from wanrt.engine.tensorrt.memory import (
    DEFAULT_RESERVE,
    GIB,
    EngineMemory,
    a14b_engines,
    dit_tokens,
    plan_memory,
)
from wanrt.errors import InvalidRequestError

EXPERTS = ("transformer", "transformer_2")
ENGINES = (EngineMemory("text_encoder", 10 * GIB, 1 * GIB), EngineMemory("transformer", 30 * GIB, 8 * GIB),
           EngineMemory("transformer_2", 30 * GIB, 8 * GIB), EngineMemory("vae_decoder_step", 1 * GIB, 6 * GIB))
H100, H200 = 81559 * 2**20, 143771 * 2**20


def test_resident_adds_all_weights_and_the_largest_scratch_once():
    plan = plan_memory(ENGINES, EXPERTS, 100 * GIB)
    assert plan.residency == "resident"
    assert plan.scratch == 8 * GIB  # shared by every engine, not 8 + 8 + 6 + 1
    assert plan.peak == (10 + 30 + 30 + 1 + 8) * GIB + DEFAULT_RESERVE


def test_per_stage_holds_one_expert_when_both_do_not_fit():
    plan = plan_memory(ENGINES, EXPERTS, 70 * GIB)
    assert plan.residency == "per-stage"
    assert plan.peak == (10 + 30 + 1 + 8) * GIB + DEFAULT_RESERVE
    assert "one expert at a time" in plan.render()


def test_weight_streaming_keeps_the_budget_of_each_expert():
    plan = plan_memory(ENGINES, EXPERTS, 40 * GIB, streaming_budget=5 * GIB)
    assert plan.residency == "streaming"
    assert plan.peak == (10 + 5 + 5 + 1 + 8) * GIB + DEFAULT_RESERVE
    assert [plan.on_gpu(e) for e in ENGINES] == [10 * GIB, 5 * GIB, 5 * GIB, 1 * GIB]


def test_too_small_a_gpu_is_refused_naming_the_budget_that_fits():
    with pytest.raises(InvalidRequestError) as err:
        plan_memory(ENGINES, EXPERTS, 40 * GIB)
    # 40 - (10 + 1 + 8 + 4 reserve) = 17 GiB spare for two experts: 8.5 GiB each.
    assert err.value.field == "residency"
    assert "--weight-streaming-budget 8.5" in err.value.message
    assert "per-stage" in err.value.message and "DOES NOT FIT" in err.value.message


def test_resident_asked_for_but_too_big_names_per_stage():
    with pytest.raises(InvalidRequestError, match="build with --residency per-stage"):
        plan_memory(ENGINES, EXPERTS, 70 * GIB, residency="resident")


def test_a_budget_too_large_is_refused_and_nothing_fits_says_so():
    with pytest.raises(InvalidRequestError, match="--weight-streaming-budget 8.5") as err:
        plan_memory(ENGINES, EXPERTS, 40 * GIB, streaming_budget=20 * GIB)
    assert err.value.field == "weight_streaming_budget"
    with pytest.raises(InvalidRequestError, match="lower --max-frames"):
        plan_memory(ENGINES, EXPERTS, 20 * GIB)


def test_a14b_tokens_and_weights():
    assert dit_tokens(81, 480, 832) == 21 * 30 * 52 == 32760  # the 32,760 tokens at 480p
    assert dit_tokens(81, 720, 1280) == 21 * 45 * 80 == 75600
    engines = {e.graph: e for e in a14b_engines(81, 720, 1280)}
    assert engines["transformer"].weights == pytest.approx(28.6e9, rel=0.01)  # bf16 expert
    assert engines["text_encoder"].weights == pytest.approx(11.4e9, rel=0.01)  # bf16 umT5-XXL encoder


@pytest.mark.parametrize(("gpu", "height", "width", "residency", "peak_gib"), [
    (H100, 480, 832, "resident", 73.8),
    (H100, 720, 1280, "per-stage", 54.3),
    (H200, 480, 832, "resident", 73.8),
    (H200, 720, 1280, "resident", 80.9),
])
def test_the_a14b_plans_the_readme_gives(gpu, height, width, residency, peak_gib):
    plan = plan_memory(a14b_engines(81, height, width), EXPERTS, gpu)
    assert plan.residency == residency and plan.peak / GIB == pytest.approx(peak_gib, abs=0.05)
