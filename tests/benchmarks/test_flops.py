"""The FLOP model: against a hand computation for Wan2.2-A14B at 480p, and against torch's own FLOP counter."""

from __future__ import annotations

import pytest

from wanrt.benchmarks.flops import (
    PRESETS,
    WAN22_A14B,
    DitShape,
    VideoShape,
    attention_score_flops,
    forward_flops,
    step_flops,
)


def test_a14b_480p_tokens_and_flops_match_a_hand_computation():
    # 81 frames -> (81-1)/4+1 = 21 latent frames; 480/8 = 60 and 832/8 = 104 latent rows and columns;
    # patches of 1x2x2: 21 * 30 * 52 = 32,760 tokens.
    n = PRESETS["480p"].tokens(WAN22_A14B)
    assert n == 32_760
    # Per block, with d = 5120, f = 13824, text length 512 (d^2 = 26,214,400):
    #   projections 12*n*d^2 (self q,k,v,o: 8 n d^2; cross q,o: 4 n d^2) = 12 * 32760 * 26214400 = 10,305,404,928,000
    #   cross k,v on the text           4 * 512 * d^2                =                            53,687,091,200
    #   self scores QK^T, AV            4 * n^2 * d = 4 * 1,073,217,600 * 5120 =              21,979,496,448,000
    #   cross scores                    4 * n * 512 * d               =                           343,513,497,600
    #   feed-forward                    4 * n * d * f                 =                         9,274,864,435,200
    #   block total                                                   =                        41,956,966,400,000
    flops = forward_flops(WAN22_A14B, n)
    assert flops.per_layer == 41_956_966_400_000
    # Once per forward: patch embedding 2*n*64*d (21,470,822,400), output projection the same, text embedder
    # 2*512*(4096*d + d^2) (48,318,382,080), time embedder 2*(256*d + d^2 + 6*d^2) (369,623,040): 91,627,192,320.
    assert flops.embeddings == 91_627_192_320
    # 40 blocks: 1,678,278,656,000,000 + 91,627,192,320 = 1,678,370,283,192,320 per sample (1.68 PFLOP);
    # a CFG step runs it twice: 3.357 PFLOP. SGLang's 5.14 s/step on an H200 is then 653 TFLOP/s, 66% of 989.4.
    assert flops.total == 1_678_370_283_192_320
    assert step_flops(WAN22_A14B, n) == 2 * 1_678_370_283_192_320
    assert step_flops(WAN22_A14B, n, cfg=False) == 1_678_370_283_192_320
    assert step_flops(WAN22_A14B, n) / 5.14 / 989.4e12 == pytest.approx(0.660, abs=1e-3)


def test_720p_token_count():
    # 21 latent frames x 45 x 80 patches (720/16, 1280/16).
    assert PRESETS["720p"].tokens(WAN22_A14B) == 75_600


def test_flops_agree_with_torch_flop_counter_on_a_real_wan_expert():
    """torch counts every linear and convolution of diffusers' WanTransformer3DModel; on the CPU it does not see
    inside SDPA, so the model's score FLOPs are added to its count: the two must agree exactly."""
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    from wanrt.benchmarks.synthetic import build_expert, expert_config, expert_inputs

    config = expert_config("tiny", layers=2)
    model = build_expert(config, "cpu", torch.float32)
    video, text_tokens = VideoShape(9, 32, 48), 24
    inputs = expert_inputs(config, video, batch=1, device="cpu", dtype=torch.float32, text_tokens=text_tokens)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(**inputs, return_dict=False)
    shape = DitShape.from_config(config)
    tokens = video.tokens(shape)
    assert tokens == 3 * 2 * 3
    scores = attention_score_flops(shape, tokens, text_tokens) * shape.layers
    assert counter.get_total_flops() + scores == forward_flops(shape, tokens, text_tokens).total
