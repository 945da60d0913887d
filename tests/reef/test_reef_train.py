"""The training script: its pieces (loss, sigma ranges, text context) and a quick end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wanrt.engine.spec import WAN_TEXT_LENGTH
from wanrt.reef import config, data, flow, latent_basis, networks, stages
from wanrt.reef import train as T

pytestmark = pytest.mark.slow  # trains quick reef models end to end


def test_sigma_ranges_meet_at_the_expert_boundary():
    u = flow.boundary_u(3.0)
    assert abs(float(flow.shifted_sigmas(torch.tensor(u), 3.0)) - flow.BOUNDARY_RATIO) < 1e-6
    assert float(flow.shifted_sigmas(torch.tensor(0.0), 3.0)) == 0.0
    assert float(flow.shifted_sigmas(torch.tensor(1.0), 3.0)) == 1.0


def _expert_and_batch(n: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A tiny expert and a batch of ``n`` (context, x0, sigma 0.5, noise), all seeded."""
    torch.manual_seed(0)
    cfg = config.TrainConfig.quick()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, 16, 2, 4, 4, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    context = torch.randn(n, WAN_TEXT_LENGTH, cfg.text_dim, generator=gen)
    return networks.build_expert(cfg), context, x0, torch.full((n,), 0.5), noise


def test_a_training_step_lowers_the_flow_matching_loss():
    expert, context, x0, sigma, noise = _expert_and_batch(4)
    opt = torch.optim.AdamW(expert.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = flow.flow_matching_loss(expert, context, x0, sigma, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_compact_cross_attention_is_exact_and_removable():
    """Training attends over L + 1 context rows; the pipeline over 512 with zero padding: same outputs."""
    torch.manual_seed(0)
    cfg = config.TrainConfig.quick()
    expert = networks.build_expert(cfg).eval()
    length = 12
    x = torch.randn(3, 16, 2, 4, 4)
    hidden = torch.randn(3, length, cfg.text_dim)
    mask = (torch.arange(length)[None] < torch.tensor([[3], [7], [12]])).long()
    timestep = torch.tensor([10.0, 500.0, 990.0])

    def run(context: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return expert(hidden_states=x, timestep=timestep, encoder_hidden_states=context, return_dict=False)[0]

    full = run(networks.wan_context(hidden, mask))
    networks.use_compact_cross_attention(expert, length)
    compact = run(networks.compact_context(hidden, mask))
    assert networks.compact_context(hidden, mask).shape[1] == length + 1
    assert torch.allclose(compact, full, atol=1e-5) and full.abs().max() > 0.1
    # Without the padding row's weight the output differs: the bias is what makes it exact.
    assert not torch.allclose(run(networks.compact_context(hidden, mask)[:, :length]), full, atol=1e-3)
    networks.use_diffusers_attention(expert)
    assert torch.allclose(run(networks.wan_context(hidden, mask)), full, atol=1e-6)


def test_training_context_equals_the_pipeline_context(tmp_path):
    """Training encodes prompts at 48 tokens; the pipeline at 512. Real tokens must come out the same."""
    from wanrt.engine.text import PromptTokenizer, zero_padding_positions
    from wanrt.reef.text import TRAIN_TEXT_LENGTH, build_tokenizer

    build_tokenizer(tmp_path)
    torch.manual_seed(0)
    encoder = networks.build_text_encoder(200, config.TrainConfig.quick()).eval()
    prompts = ["A sea turtle slowly moving left in deep blue water.", "一群小鱼在浑浊的绿色海水中向右游。", ""]
    with torch.no_grad():
        ids, mask = (torch.from_numpy(a) for a in PromptTokenizer(tmp_path / "tokenizer.json",
                                                                   TRAIN_TEXT_LENGTH)(prompts))
        ours = networks.wan_context(encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask).numpy()
        ids, mask = PromptTokenizer(tmp_path / "tokenizer.json", WAN_TEXT_LENGTH)(prompts)
        hidden = encoder(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
    theirs = zero_padding_positions(hidden.numpy(), mask)
    assert ours.shape == theirs.shape == (3, WAN_TEXT_LENGTH, 64)
    assert np.abs(ours - theirs).max() < 1e-5


def test_the_attribute_head_learns_from_prompts(tmp_path):
    from wanrt.reef.text import build_tokenizer

    build_tokenizer(tmp_path)
    cfg = config.TrainConfig(text_steps=80, text_batch=16, word_dropout=0.0)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    batcher = data.PromptBatcher(tmp_path / "tokenizer.json", rng, 0.0)
    encoder = networks.build_text_encoder(300, cfg)
    head = networks.AttributeHead(cfg.text_dim)
    final = stages.train_text_encoder(encoder, head, batcher, cfg, rng, lambda _m: None)
    assert final < 4.0  # from ~ln(6)+ln(5)+ln(2)+ln(5) = 5.8 at random


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reef") / "model"
    assert T.main(["--out", str(out), "--preset", "quick", "--seed", "3", "--threads", "1", "--workers", "2"]) == 0
    return out


def test_quick_run_writes_a_wan22_pipeline_folder(quick_run):
    from wanrt.engine.spec import spec_from_diffusers

    spec = spec_from_diffusers(quick_run)
    assert spec.experts == ("transformer", "transformer_2") and spec.boundary_ratio == 0.875
    assert (spec.vae_scale_temporal, spec.vae_scale_spatial, spec.latent_channels) == (4, 8, 16)
    summary = json.loads((quick_run / "reef_training.json").read_text(encoding="utf-8"))
    assert summary["config"]["seed"] == 3 and summary["threads"] == 1
    assert all(np.isfinite(v) for v in summary["losses"].values())
    # Its generation recipe, which export records as the artifact's request defaults.
    from wanrt.engine.defaults import recipe_for

    recipe = recipe_for(quick_run, spec)
    assert (recipe.name, recipe.frames, recipe.sizes) == ("reef", summary["config"]["frames"],
                                                          (f"{summary['config']['size']}x{summary['config']['size']}",))


def test_quick_run_generates_with_the_torch_backend(quick_run):
    from wanrt.engine.loader import load_pipeline
    from wanrt.engine.request import GenerationRequest

    pipeline = load_pipeline(quick_run, "torch")
    frames = np.concatenate(list(pipeline.generate(GenerationRequest(prompt="一只海龟向左游", frames=5, height=32,
                                                                     width=32, steps=2))))
    assert frames.shape == (5, 32, 32, 3) and frames.dtype == np.uint8


def test_training_on_from_a_run_keeps_its_latent_space_and_says_where_it_came_from(quick_run, tmp_path):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    out = tmp_path / "more"
    assert T.main(["--out", str(out), "--preset", "quick", "--seed", "4", "--threads", "1", "--init-from",
                   str(quick_run), "--set", "expert_steps=2", "--set", "high_expert_steps=3",
                   "--set", "subject_weight=4"]) == 0
    before, after = (AutoencoderKLWan.from_pretrained(d / "vae").config for d in (quick_run, out))
    # The experts were trained in the first run's normalisation and basis: both must survive unchanged.
    assert after.latents_mean == before.latents_mean and after.latents_std == before.latents_std
    for kept in ("vae/reef_latent_basis.npz", "tokenizer/tokenizer.json"):
        assert (out / kept).read_bytes() == (quick_run / kept).read_bytes(), kept
    old, new = (WanTransformer3DModel.from_pretrained(d / "transformer").state_dict() for d in (quick_run, out))
    assert any(not torch.equal(old[k], new[k]) for k in old), "the high-noise expert did not train on"
    summary = json.loads((out / "reef_training.json").read_text(encoding="utf-8"))
    assert [r["path"] for r in summary["init_from"]] == [str(quick_run)]
    assert summary["init_from"][0]["config"]["seed"] == 3 and "text_encoder" not in summary["seconds"]
    assert summary["config"]["subject_weight"] == 4.0 and np.isfinite(summary["losses"]["transformer"])


def test_init_from_refuses_a_folder_without_the_latent_basis(tmp_path):
    with pytest.raises(FileNotFoundError, match="reef_latent_basis.npz"):
        T.load_trained(tmp_path, "cpu")


def test_init_from_refuses_a_folder_that_cannot_say_how_it_was_made_before_any_work(tmp_path):
    with pytest.raises(FileNotFoundError, match="reef_training.json"):
        T.train(tmp_path / "out", config.TrainConfig.quick(), init_from=tmp_path)
    assert not (tmp_path / "out").exists()


def test_a_snapshot_records_its_step_and_can_be_trained_on(tmp_path):
    first, more = tmp_path / "first", tmp_path / "more"
    assert T.main(["--out", str(first), "--preset", "quick", "--threads", "1", "--set", "checkpoint_every=3"]) == 0
    snapshot = first / "checkpoints" / "step_3"
    assert json.loads((snapshot / "reef_training.json").read_text(encoding="utf-8"))["flow_step"] == 3
    assert T.main(["--out", str(more), "--preset", "quick", "--threads", "1", "--init-from", str(snapshot)]) == 0
    lineage = json.loads((more / "reef_training.json").read_text(encoding="utf-8"))["init_from"]
    assert [(r["path"], r["flow_step"]) for r in lineage] == [(str(snapshot), 3)]


def test_expert_order_spreads_the_high_noise_expert_evenly():
    assert stages.expert_order(3, 3) == [0, 1, 0, 1, 0, 1]  # equal counts alternate, high-noise first
    order = stages.expert_order(1500, 750)
    assert order.count(0) == 1500 and order.count(1) == 750
    assert all(order[i:i + 3].count(0) == 2 for i in range(0, len(order), 3))


def test_block_pca_latents_have_wan_shape_and_unit_scale():
    from wanrt.reef.renderer import SceneAttributes, render_clip

    clips = np.stack([render_clip(SceneAttributes(s, "left", "fast", p), frames=9, height=32, width=48, seed=i)
                      for i, (s, p) in enumerate([("fish", "turquoise"), ("ray", "red_vent"), ("turtle", "sunbeams"),
                                                  ("particles", "deep_blue")])])
    pca = latent_basis.BlockPCA.fit(clips)
    z = pca.encode(clips)
    assert z.shape == (4, 16, 3, 4, 6)  # 1 + (9 - 1) / 4 latent frames, 8x smaller
    assert float(pca.arrays["first_explained"]) > 0.95 and float(pca.arrays["rest_explained"]) > 0.9
    assert 0.5 < float(z.std()) < 1.5


def test_render_set_with_a_pool_gives_the_same_pixels():
    import multiprocessing

    cfg = config.TrainConfig.quick()
    attrs = data.balanced_attributes(6, np.random.default_rng(1))
    serial = data.render_set(attrs, cfg, np.random.default_rng(7))
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pooled = data.render_set(attrs, cfg, np.random.default_rng(7), pool=pool)
    assert serial.shape == (6, 5, 32, 32, 3) and np.array_equal(pooled, serial)


def test_render_set_with_water_gives_the_same_clips_and_draws():
    cfg = config.TrainConfig.quick()
    attrs = data.balanced_attributes(3, np.random.default_rng(1))
    rng_plain, rng_pairs = np.random.default_rng(7), np.random.default_rng(7)
    plain = data.render_set(attrs, cfg, rng_plain)
    pairs = data.render_set(attrs, cfg, rng_pairs, with_water=True)
    assert pairs.shape == (3, 2, *plain.shape[1:]) and np.array_equal(pairs[:, 0], plain)
    assert not np.array_equal(pairs[:, 1], plain)  # the subject is gone from the second clip
    assert rng_plain.integers(2**31) == rng_pairs.integers(2**31)  # a weighted run sees the same data


def test_subject_cell_weights_mark_where_the_subject_is():
    from wanrt.reef.renderer import SceneAttributes, render_clip

    attrs = SceneAttributes("turtle", "right", "slow", "turquoise")
    clip, water = (render_clip(attrs, frames=9, height=96, width=96, seed=5, subject=s)[None] for s in (True, False))
    pca = latent_basis.BlockPCA.fit(np.concatenate([clip, water]))
    weights = flow.subject_cell_weights(torch.from_numpy(pca.encode(clip)), torch.from_numpy(pca.encode(water)),
                                       strength=8.0)
    assert weights.shape == (1, 1, 3, 12, 12)
    assert float(weights.max()) == pytest.approx(9.0) and float(weights.min()) == pytest.approx(1.0, abs=1e-3)
    # The turtle swims through the middle of the frame: its cells outweigh the border's.
    centre, border = weights[..., 3:9, 3:9].mean(), torch.cat([weights[..., :2, :].flatten(),
                                                               weights[..., -2:, :].flatten()]).mean()
    assert float(centre) > 2 * float(border)


def test_the_weighted_flow_loss_is_mse_under_flat_weights_and_follows_the_weights():
    expert, context, x0, sigma, noise = _expert_and_batch(2)
    plain = flow.flow_matching_loss(expert, context, x0, sigma, noise)
    flat = flow.flow_matching_loss(expert, context, x0, sigma, noise, torch.full((2, 1, 2, 4, 4), 3.0))
    assert flat.item() == pytest.approx(plain.item(), rel=1e-5)
    # All the weight on one cell: the loss is that cell's squared error alone.
    pred = expert(hidden_states=(x0 + noise) / 2, timestep=sigma * 1000, encoder_hidden_states=context,
                  return_dict=False)[0]
    one = torch.zeros(2, 1, 2, 4, 4)
    one[1, 0, 1, 2, 3] = 1.0
    cell = (pred - (noise - x0))[1, :, 1, 2, 3].square().mean()
    weighted = flow.flow_matching_loss(expert, context, x0, sigma, noise, one)
    assert float(weighted) == pytest.approx(float(cell), rel=1e-4)
