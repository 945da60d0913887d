"""The GPU memory plan's arithmetic (engine/tensorrt/memory.py): stages, residencies, text encoder placements,
the choice by expected cost, refusals, and the A14B numbers the README quotes, with the A14B parameter counts
checked against the real diffusers/transformers modules (meta device: no weights) under export's precision rules.

That the backend allocates exactly what a plan counts is shown by the TensorRT contract test (test_trt_contract.py,
its plan_vs_ledger step)."""

from __future__ import annotations

import dataclasses
import random

import pytest

from wanrt.engine.tensorrt.memory import (
    A14B_EXPERT_FP32_PARAMS,
    A14B_EXPERT_PARAMS,
    A14B_TEXT_FP32_PARAMS,
    A14B_TEXT_PARAMS,
    A14B_VAE_CACHES,
    CUDA_CONTEXT,
    DEFAULT_RESERVE,
    GIB,
    EngineMemory,
    a14b_engines,
    a14b_plan,
    a14b_torch_plan,
    a14b_vae_caches,
    dit_tokens,
    plan_memory,
)
from wanrt.errors import InvalidRequestError

EXPERTS = ("transformer", "transformer_2")
ENGINES = (EngineMemory("text_encoder", 10 * GIB, 1 * GIB), EngineMemory("transformer", 30 * GIB, 8 * GIB),
           EngineMemory("transformer_2", 30 * GIB, 8 * GIB), EngineMemory("vae_decoder_step", 1 * GIB, 6 * GIB))
H100, H200 = 81559 * 2**20, 143771 * 2**20
FIXED = CUDA_CONTEXT + DEFAULT_RESERVE


def test_resident_adds_all_weights_and_the_largest_scratch_once():
    plan = plan_memory(ENGINES, EXPERTS, 100 * GIB)
    assert plan.residency == "resident" and plan.text_encoder == "resident"
    assert plan.scratch == 8 * GIB  # shared by every engine, not 8 + 8 + 6 + 1
    assert plan.peak == (10 + 30 + 30 + 1 + 8) * GIB + FIXED


def test_io_buffers_and_decoder_caches_are_counted():
    engines = [dataclasses.replace(e, io=(k + 1) * 2**20) for k, e in enumerate(ENGINES)]
    plan = plan_memory(engines, EXPERTS, 100 * GIB, vae_caches=3 * GIB, text_encoder="resident")
    assert plan.stages["denoise"] == (10 + 30 + 30 + 1 + 8) * GIB + 10 * 2**20 + FIXED
    assert plan.stages["decode"] == plan.stages["denoise"] + 3 * GIB == plan.peak  # caches only while decoding


def test_per_stage_holds_one_expert():
    plan = plan_memory(ENGINES, EXPERTS, 70 * GIB, residency="per-stage", text_encoder="resident")
    assert plan.peak == (10 + 30 + 1 + 8) * GIB + FIXED
    assert "one expert on the GPU at a time" in plan.render()
    assert plan.load_seconds_per_video() == pytest.approx(60 * GIB / plan.bandwidth)  # both experts, every video


def test_a_released_text_encoder_and_the_decoder_caches_share_the_room():
    plan = plan_memory(ENGINES, EXPERTS, 100 * GIB, text_encoder="release", vae_caches=7 * GIB)
    base = (30 + 30 + 1 + 8) * GIB + FIXED
    assert plan.stages == {"text": base + 10 * GIB, "denoise": base, "decode": base + 7 * GIB}
    resident = dataclasses.replace(plan, text_encoder="resident")
    assert resident.peak == base + 17 * GIB > plan.peak


def test_a_text_encoder_on_the_cpu_takes_no_gpu_memory():
    engines = (EngineMemory("text_encoder", 10 * GIB, 20 * GIB), *ENGINES[1:])  # its scratch would dominate
    plan = plan_memory(engines, EXPERTS, 100 * GIB, text_encoder="cpu")
    assert plan.scratch == 8 * GIB and plan.peak == (30 + 30 + 1 + 8) * GIB + FIXED


def test_weight_streaming_keeps_the_budget_of_each_expert():
    plan = plan_memory(ENGINES, EXPERTS, 40 * GIB, streaming_budget=5 * GIB, text_encoder="resident")
    assert plan.residency == "streaming"
    assert plan.peak == (10 + 5 + 5 + 1 + 8) * GIB + FIXED
    assert [plan.on_gpu(e) for e in ENGINES] == [10 * GIB, 5 * GIB, 5 * GIB, 1 * GIB]
    assert plan.streaming_seconds_per_step() == pytest.approx(25 * GIB / plan.bandwidth)


def test_the_cheapest_fitting_choice_wins():
    # Everything resident needs 87.5 GiB with 7 GiB of decoder caches; releasing the text encoder lets the caches
    # use its room (80.5 GiB), and loading it per video (10 GiB) costs less than loading both experts (60 GiB).
    plan = plan_memory(ENGINES, EXPERTS, 82 * GIB, vae_caches=7 * GIB)
    assert (plan.residency, plan.text_encoder) == ("resident", "release") and plan.peak == 80.5 * GIB
    # Streaming is a candidate only before building; per-stage (60 GiB per video) beats streaming most of an
    # expert every step at 40 steps, and loses to it at 2 steps.
    tight = 55 * GIB
    assert plan_memory(ENGINES, EXPERTS, tight, allow_streaming=True).residency == "per-stage"
    fast = plan_memory(ENGINES, EXPERTS, tight, allow_streaming=True, steps=2)
    assert fast.residency == "streaming" and fast.fits
    assert fast.seconds_per_video() < dataclasses.replace(fast, residency="per-stage").seconds_per_video()
    assert "expected cost" in fast.render() and "per step" in fast.render()


def test_too_small_a_gpu_is_refused_naming_what_fits():
    with pytest.raises(InvalidRequestError) as err:
        plan_memory(ENGINES, EXPERTS, 40 * GIB, residency="resident")
    assert err.value.field == "residency"
    assert "what fits:" in err.value.message and "--weight-streaming-budget" in err.value.message
    assert "DOES NOT FIT" in err.value.message


def test_a_budget_too_large_is_refused_and_nothing_fits_says_so():
    with pytest.raises(InvalidRequestError, match="what fits: --residency per-stage --text-encoder resident") as err:
        plan_memory(ENGINES, EXPERTS, 52 * GIB, streaming_budget=20 * GIB)
    assert err.value.field == "weight_streaming_budget"
    with pytest.raises(InvalidRequestError, match="lower --max-frames"):
        plan_memory(ENGINES, EXPERTS, 10 * GIB)
    with pytest.raises(InvalidRequestError, match="text_encoder: must be one of resident, release, cpu"):
        plan_memory(ENGINES, EXPERTS, 100 * GIB, text_encoder="gpu")


def test_drawn_plans_keep_their_invariants():
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    for _ in range(200):
        engines = [EngineMemory(g, rng.randrange(1, 40) * GIB, rng.randrange(0, 10) * GIB, rng.randrange(0, 1 << 28))
                   for g in ("text_encoder", "transformer", "transformer_2", "vae_decoder_step")]
        caches = rng.randrange(0, 20) * GIB
        plans = {(r, t): plan_memory(engines, EXPERTS, 1 << 50, residency=r, text_encoder=t, vae_caches=caches)
                 for r in ("resident", "per-stage") for t in ("resident", "release", "cpu")}
        for (r, t), plan in plans.items():
            assert plan.peak == max(plan.stages.values()) and plan.peak >= plan.stages["denoise"]
            assert plans[("per-stage", t)].peak <= plans[("resident", t)].peak, seed
            assert plans[(r, "cpu")].peak <= plans[(r, "release")].peak <= plans[(r, "resident")].peak, seed
        gpu = rng.randrange(20, 120) * GIB
        try:
            chosen = plan_memory(engines, EXPERTS, gpu, vae_caches=caches)
        except InvalidRequestError:
            assert not any(p.peak <= gpu for (r, t), p in plans.items() if t != "cpu"), seed
            continue
        fitting = [p for (r, t), p in plans.items() if p.peak <= gpu and t != "cpu"]
        assert chosen.fits and chosen.seconds_per_video() == min(p.seconds_per_video() for p in fitting), seed


def test_a14b_tokens_weights_and_caches():
    assert dit_tokens(81, 480, 832) == 21 * 30 * 52 == 32760  # the 32,760 tokens at 480p
    assert dit_tokens(81, 720, 1280) == 21 * 45 * 80 == 75600
    engines = {e.graph: e for e in a14b_engines(81, 720, 1280)}
    # bf16 with fp32 islands: 26.67 GiB per expert, 12.46 GiB for umT5-XXL (its wo in fp32): 66.3 GiB in all.
    assert engines["transformer"].weights / GIB == pytest.approx(26.67, abs=0.01)
    assert engines["text_encoder"].weights / GIB == pytest.approx(12.46, abs=0.01)
    assert sum(e.weights for e in engines.values()) / GIB == pytest.approx(66.34, abs=0.01)
    # Two sets of the 32 decoder caches, fp32: the 7.0 GiB at 480p and 16.2 GiB at 720p.
    assert a14b_vae_caches(480, 832) / GIB == pytest.approx(7.03, abs=0.01)
    assert a14b_vae_caches(720, 1280) / GIB == pytest.approx(16.23, abs=0.01)


@pytest.mark.parametrize(("gpu", "height", "width", "choice", "peak_gib"), [
    (H100, 480, 832, ("resident", "release"), 74.7),
    (H100, 720, 1280, ("per-stage", "resident"), 73.0),
    (H200, 480, 832, ("resident", "resident"), 81.7),
    (H200, 720, 1280, ("resident", "resident"), 99.8),
])
def test_the_a14b_plans_the_readme_gives(gpu, height, width, choice, peak_gib):
    plan = a14b_plan(81, height, width, gpu, allow_streaming=True)
    assert (plan.residency, plan.text_encoder) == choice and plan.peak / GIB == pytest.approx(peak_gib, abs=0.05)
    # Everything resident at 480p on an H100 is the OOM the old plan did not see.
    assert not a14b_plan(81, 480, 832, H200, residency="resident", text_encoder="resident").peak <= H100


def test_the_torch_backend_fits_an_h100_at_480p_resident():
    plan = a14b_torch_plan(81, 480, 832, H100, residency="resident", text_encoder="resident")
    assert plan.fits and plan.peak < H100, plan.render()  # 78.2 GiB of the 79.6 GiB an H100 80GB has


def _meta_a14b() -> tuple[object, object]:
    torch = pytest.importorskip("torch")
    from diffusers import WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    # Wan2.2-T2V-A14B's transformer/config.json and umT5-XXL's encoder config.
    with torch.device("meta"):
        expert = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
            text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024)
        text = UMT5EncoderModel(UMT5Config(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
                                           vocab_size=256384, feed_forward_proj="gated-gelu"))
    return expert, text


def _tensors(model: object) -> list[tuple[str, int]]:
    return [(name, t.numel()) for name, t in (*model.named_parameters(), *model.named_buffers())]


def test_a14b_parameter_counts_are_those_of_the_real_modules_as_export_loads_them():
    def fp32(model: object) -> int:  # from_pretrained keeps a tensor fp32 when a part of its name is listed
        kept = set(type(model)._keep_in_fp32_modules)
        return sum(n for name, n in _tensors(model) if set(name.split(".")) & kept)

    expert, text = _meta_a14b()
    assert sum(n for _, n in _tensors(expert)) == A14B_EXPERT_PARAMS
    assert fp32(expert) == A14B_EXPERT_FP32_PARAMS  # diffusers' list, for bf16 as for fp16
    assert sum(n for _, n in _tensors(text)) == A14B_TEXT_PARAMS
    assert fp32(text) == A14B_TEXT_FP32_PARAMS  # transformers' list (wo), which export keeps for bf16 too


@pytest.mark.slow
def test_a14b_decoder_cache_layout_is_the_real_vaes():
    """The Wan2.1 VAE at its real config (random weights, ~0.5 GB): export's probe reads its cache layout."""
    pytest.importorskip("diffusers")
    from diffusers import AutoencoderKLWan

    from wanrt.export.vae_decoder import probe_cache_layout

    layout = probe_cache_layout(AutoencoderKLWan())
    assert tuple(zip(layout.channels, layout.scales, strict=True)) == A14B_VAE_CACHES and layout.frames == 2
