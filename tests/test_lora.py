"""LoRAs merged at export: the weights diffusers' load_lora_weights + fuse_lora make, the video it generates.

The LoRAs are drawn from seeds (blocks, layers, rank, alpha, bias; tests/lora_files.py) in both layouts the
Wan loader reads; each test prints what it drew.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from lora_files import write_lora  # noqa: E402

from wanrt.errors import ModelFormatError  # noqa: E402
from wanrt.export.lora import LoraFile, merge_loras, parse_lora  # noqa: E402

PROMPT = "a school of glowing jellyfish drifts past a hydrothermal vent"
NEGATIVE = "murky dark water"


def _expert(model_dir: Path, name: str):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel.from_pretrained(model_dir / name, torch_dtype=torch.float32).eval()


def _diffusers_fused(model_dir: Path, high: tuple[Path, float] | None, low: tuple[Path, float] | None):
    """diffusers' own way: load_lora_weights (+ load_into_transformer_2) then fuse_lora per component."""
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(model_dir, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    for component, lora, kwargs in (("transformer", high, {}), ("transformer_2", low,
                                                                {"load_into_transformer_2": True})):
        if lora is not None:
            pipe.load_lora_weights(str(lora[0]), adapter_name=component, **kwargs)
            pipe.fuse_lora(components=[component], lora_scale=lora[1], adapter_names=[component])
    return pipe


@pytest.mark.parametrize("layout", ["diffusers", "original"])
def test_merge_equals_diffusers_fuse(layout, tiny_model_dir, tmp_path):
    seed = random.SystemRandom().randrange(2**31)
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    files = {}
    for name in ("transformer", "transformer_2"):
        files[name] = tmp_path / f"{name}.safetensors"
        write_lora(_expert(tiny_model_dir, name), files[name], int(rng.integers(2**31)), layout=layout)
    scales = {name: float(np.round(rng.uniform(0.3, 1.5), 2)) for name in files}
    pipe = _diffusers_fused(tiny_model_dir, (files["transformer"], scales["transformer"]),
                            (files["transformer_2"], scales["transformer_2"]))
    for name in ("transformer", "transformer_2"):
        ours = _expert(tiny_model_dir, name)
        before = {k: v.clone() for k, v in ours.state_dict().items()}
        records = merge_loras(ours, [LoraFile(files[name], scales[name], name)])
        assert records[0]["sha256"] and records[0]["scale"] == scales[name] and records[0]["modules"] >= 2
        # The pipeline keeps peft's layers around its fused weights: compare the base layers.
        theirs = {k.replace(".base_layer.", "."): v for k, v in getattr(pipe, name).state_dict().items()
                  if ".lora_" not in k}
        mine = ours.state_dict()
        assert set(mine) == set(before), "adapter layers must be gone after the merge"
        changed = [k for k in mine if not torch.equal(mine[k], before[k])]
        assert changed, "the LoRA changed nothing"
        for key, value in mine.items():
            torch.testing.assert_close(value, theirs[key], rtol=1e-6, atol=1e-6, msg=key)


def test_foreign_or_broken_lora_is_refused(tiny_model_dir, tmp_path):
    from safetensors.torch import save_file

    expert = _expert(tiny_model_dir, "transformer")
    foreign = tmp_path / "foreign.safetensors"  # a block this 2-block model does not have
    save_file({"transformer.blocks.7.attn1.to_q.lora_A.weight": torch.zeros(2, 24),
               "transformer.blocks.7.attn1.to_q.lora_B.weight": torch.zeros(24, 2)}, str(foreign))
    with pytest.raises(ModelFormatError, match="foreign.safetensors"):
        merge_loras(expert, [LoraFile(foreign, 1.0, "transformer")])
    not_lora = tmp_path / "weights.safetensors"
    save_file({"blocks.0.attn1.to_q.weight": torch.zeros(24, 24)}, str(not_lora))
    with pytest.raises(ModelFormatError):
        merge_loras(_expert(tiny_model_dir, "transformer"), [LoraFile(not_lora, 1.0, "transformer")])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelFormatError, match="garbage"):
        merge_loras(_expert(tiny_model_dir, "transformer"), [LoraFile(garbage, 1.0, "transformer")])


def test_parse_lora_argument(tmp_path):
    odd = tmp_path / "a:b.safetensors"
    odd.write_bytes(b"")
    assert parse_lora(f"{odd}:0.75", "transformer") == LoraFile(odd, 0.75, "transformer")
    assert parse_lora(str(odd), "transformer_2") == LoraFile(odd, 1.0, "transformer_2")
    with pytest.raises(ModelFormatError, match="does not exist"):
        parse_lora(str(tmp_path / "missing.safetensors:1"), "transformer")
    with pytest.raises(ModelFormatError, match="finite"):
        parse_lora(f"{odd}:nan", "transformer")


# --- the merged artifact end to end (one export, two schedules) ----------------------------------------------

FRAMES, HEIGHT, WIDTH = 9, 64, 48


@pytest.fixture(scope="module")
def merged(tiny_model_dir, tmp_path_factory):
    """The two-expert model exported with a LoRA per expert (the two layouts) and the Lightning schedule."""
    from wanrt.export.exporter import export_pipeline

    seed = random.SystemRandom().randrange(2**31)
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    tmp = tmp_path_factory.mktemp("lora")
    high, low = tmp / "high.safetensors", tmp / "low.safetensors"
    write_lora(_expert(tiny_model_dir, "transformer"), high, int(rng.integers(2**31)), layout="original")
    write_lora(_expert(tiny_model_dir, "transformer_2"), low, int(rng.integers(2**31)), layout="diffusers")
    scales = (float(np.round(rng.uniform(0.5, 1.2), 2)), float(np.round(rng.uniform(0.5, 1.2), 2)))
    out = tmp / "art"
    export_pipeline(tiny_model_dir, out, loras=[LoraFile(high, scales[0], "transformer"),
                                               LoraFile(low, scales[1], "transformer_2")],
                    schedule="lightning-4step")
    return out, (high, scales[0]), (low, scales[1])


def _frames_close(ours: np.ndarray, reference: np.ndarray, label: str) -> None:
    diff = np.abs(ours.astype(np.int16) - reference.astype(np.int16))
    print(f"{label}: max {diff.max()} mean {diff.mean():.4f} uint8 levels")
    assert reference.std() > 5, "the reference must be a real video"
    assert diff.max() <= 3 and diff.mean() < 0.5, f"{label}: max {diff.max()}, mean {diff.mean():.3f}"


def _noise(seed: int) -> np.ndarray:
    shape = (1, 16, (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8)
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


class _UniformSigmasEuler:
    """diffusers' FlowMatchEulerDiscreteScheduler made to take LightX2V's sigmas, which WanPipeline cannot pass."""

    @staticmethod
    def make(shift: float):
        from diffusers import FlowMatchEulerDiscreteScheduler

        class Uniform(FlowMatchEulerDiscreteScheduler):
            def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
                sigmas = (1.0 - np.arange(num_inference_steps) / num_inference_steps).tolist()
                super().set_timesteps(sigmas=sigmas, device=device)

        return Uniform(shift=shift)


@pytest.mark.slow
def test_merged_artifact_matches_diffusers(merged, tiny_model_dir):
    from wanrt.engine.artifact import load_artifact
    from wanrt.engine.loader import load_pipeline

    art, high, low = merged
    manifest = load_artifact(art)
    assert [(e["expert"], e["scale"]) for e in manifest.loras] == [("transformer", high[1]), ("transformer_2", low[1])]
    assert manifest.loras[0]["format"].startswith("wan-original") and manifest.loras[1]["format"].startswith("diff")
    from wanrt.engine.artifact import sha256_file

    assert [e["sha256"] for e in manifest.loras] == [sha256_file(high[0]), sha256_file(low[0])]
    defaults = manifest.defaults
    assert (defaults.schedule, defaults.steps, defaults.guidance, defaults.guidance_2, defaults.shift) == (
        "lightning-4step", 4, 1.0, 1.0, 5.0)
    pipe = _diffusers_fused(tiny_model_dir, high, low)
    pipeline = load_pipeline(art, "onnxruntime")

    # The base schedule with guidance, as WanPipeline runs by default.
    latents = _noise(3)
    request = pipeline.defaults.request(PROMPT, schedule="base", negative_prompt=NEGATIVE, frames=FRAMES,
                                        height=HEIGHT, width=WIDTH, steps=6, guidance=4.0, guidance_2=3.0,
                                        latents=latents)
    ours = np.concatenate(list(pipeline.generate(request)))
    video = pipe(PROMPT, negative_prompt=NEGATIVE, num_frames=FRAMES, height=HEIGHT, width=WIDTH,
                 num_inference_steps=6, guidance_scale=4.0, guidance_scale_2=3.0,
                 latents=torch.from_numpy(latents), output_type="np").frames[0]
    _frames_close(ours, np.round(video * 255.0).astype(np.uint8), "LoRA merged, base schedule")

    # The artifact's default: the distilled preset, 4 Euler steps on LightX2V's timesteps, no unconditional pass.
    latents = _noise(4)
    calls = []
    real = pipeline.backend.predict_noise
    pipeline.backend.predict_noise = lambda e, x, t, c: calls.append((e, float(t[0]), x.shape[0])) or real(e, x, t, c)
    request = pipeline.defaults.request(PROMPT, frames=FRAMES, height=HEIGHT, width=WIDTH, latents=latents)
    ours = np.concatenate(list(pipeline.generate(request)))
    assert [(e, b) for e, _, b in calls] == [("transformer", 1), ("transformer", 1), ("transformer_2", 1),
                                             ("transformer_2", 1)], calls
    np.testing.assert_allclose([t for _, t, _ in calls], [1000.0, 937.5, 833.3333, 625.0], rtol=1e-5)
    pipe.scheduler = _UniformSigmasEuler.make(5.0)
    video = pipe(PROMPT, num_frames=FRAMES, height=HEIGHT, width=WIDTH, num_inference_steps=4, guidance_scale=1.0,
                 guidance_scale_2=1.0, latents=torch.from_numpy(latents), output_type="np").frames[0]
    _frames_close(ours, np.round(video * 255.0).astype(np.uint8), "LoRA merged, lightning-4step")
    # And the LoRAs matter: the same model without them makes another clip.
    plain = _diffusers_fused(tiny_model_dir, None, None)
    plain.scheduler = _UniformSigmasEuler.make(5.0)
    video = plain(PROMPT, num_frames=FRAMES, height=HEIGHT, width=WIDTH, num_inference_steps=4, guidance_scale=1.0,
                  guidance_scale_2=1.0, latents=torch.from_numpy(latents), output_type="np").frames[0]
    unmerged = np.abs(np.round(video * 255.0).astype(np.int16) - ours.astype(np.int16))
    print(f"without the LoRAs: max {unmerged.max()} mean {unmerged.mean():.2f} levels")
    # Drawn LoRAs can be weak (rank 1, a few targets): what matters is that the parity check above could tell the
    # unmerged clip apart, i.e. it falls outside _frames_close's own tolerance.
    assert unmerged.max() > 3 or unmerged.mean() >= 0.5, "the LoRAs changed nothing the parity check can see"


@pytest.mark.slow
def test_export_cli_records_loras_and_refuses_lora_2_on_one_expert(merged, single_expert_model_dir, tmp_path,
                                                                   capsys):
    from wanrt.cli import main

    _, high, _ = merged
    out = tmp_path / "never"
    assert main(["export", "--model", str(single_expert_model_dir), "--out", str(out),
                 "--lora-2", f"{high[0]}:0.5"]) == 2
    assert "low-noise" in capsys.readouterr().err and not out.exists()
    manifest = json.loads((merged[0] / "manifest.json").read_text())
    assert manifest["defaults"]["schedule"] == "lightning-4step" and len(manifest["loras"]) == 2
