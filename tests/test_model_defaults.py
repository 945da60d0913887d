"""Request defaults from the model (the manifest's `defaults`), named schedules and the distilled preset."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest

from wanrt.engine.defaults import RECIPES, ModelDefaults, defaults_from_recipe, recipe_for
from wanrt.engine.request import GenerationRequest, Limits
from wanrt.engine.schedulers import FlowMatchEulerScheduler
from wanrt.engine.schedules import PRESETS, make_scheduler
from wanrt.engine.spec import ModelSpec
from wanrt.errors import ArtifactError, InvalidRequestError

UNIPC = {"_class_name": "UniPCMultistepScheduler", "flow_shift": 3.0, "num_train_timesteps": 1000,
         "prediction_type": "flow_prediction", "use_flow_sigmas": True}


def _spec(experts: int = 2) -> ModelSpec:
    return ModelSpec(experts=("transformer", "transformer_2")[:experts], boundary_ratio=0.875 if experts == 2 else None,
                     scheduler_config=UNIPC, latent_channels=16, patch_size=(1, 2, 2), vae_scale_temporal=4,
                     vae_scale_spatial=8, latents_mean=(0.0,) * 16, latents_std=(1.0,) * 16, text_length=512,
                     text_dim=4096)


def test_euler_with_given_sigmas_matches_diffusers():
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    seed = random.SystemRandom().randrange(2**31)
    rng = np.random.default_rng(seed)
    steps, shift = int(rng.integers(1, 12)), float(rng.uniform(1.0, 12.0))
    sigmas = np.sort(rng.uniform(0.05, 1.0, steps))[::-1].tolist()
    print(f"seed {seed}: {steps} steps, shift {shift:.3f}")
    ours = FlowMatchEulerScheduler(shift=shift)
    ours.set_timesteps(steps, sigmas=sigmas)
    theirs = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    theirs.set_timesteps(sigmas=sigmas)
    theirs.set_begin_index(0)
    np.testing.assert_allclose(ours.timesteps, theirs.timesteps.numpy(), rtol=1e-6)
    np.testing.assert_allclose(ours.sigmas, theirs.sigmas.numpy(), rtol=1e-6)
    x = rng.standard_normal((1, 4, 2, 3, 3)).astype(np.float32)
    y = torch.from_numpy(x.copy())
    for t, t2 in zip(ours.timesteps, theirs.timesteps, strict=True):
        v = np.sin(x).astype(np.float32)
        x = ours.step(v, t, x)
        y = theirs.step(torch.from_numpy(v), t2, y, return_dict=False)[0]
    np.testing.assert_allclose(x, y.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(InvalidRequestError, match="sigmas"):
        ours.set_timesteps(2, sigmas=[1.0, 1.5])


def test_lightning_preset_runs_lightx2v_timesteps_split_two_and_two():
    spec = _spec()
    scheduler = make_scheduler(spec.scheduler_config, "lightning-4step", 4)
    # LightX2V: denoising_step_list [1000, 750, 500, 250] through shift 5, boundary_step_index 2.
    np.testing.assert_allclose(scheduler.timesteps, [1000.0, 937.5, 833.3333, 625.0], rtol=1e-5)
    experts = [spec.expert_for(float(t)) for t in scheduler.timesteps]
    assert experts == ["transformer"] * 2 + ["transformer_2"] * 2 == [
        "transformer"] * PRESETS["lightning-4step"].expert_steps[0] + ["transformer_2"] * 2
    # The base schedule keeps the model's own scheduler, only its shift replaced when asked.
    base = make_scheduler(spec.scheduler_config, "base", 8, shift=5.0)
    assert type(base).__name__ == "UniPCFlowScheduler" and base.flow_shift == 5.0


def test_recipes_follow_the_architecture(tmp_path):
    spec = _spec()
    for name, (experts, layers, heads, head_dim) in {"wan2.2-t2v-a14b": (2, 40, 40, 128),
                                                     "wan2.1-t2v-1.3b": (1, 30, 12, 128),
                                                     "preview": (2, 2, 2, 12)}.items():
        folder = tmp_path / name
        (folder / "transformer").mkdir(parents=True)
        (folder / "transformer" / "config.json").write_text(json.dumps(
            {"num_layers": layers, "num_attention_heads": heads, "attention_head_dim": head_dim}))
        assert recipe_for(folder, _spec(experts)).name == name
    a14b = defaults_from_recipe(RECIPES["wan2.2-t2v-a14b"], spec)
    assert (a14b.frames, a14b.width, a14b.height, a14b.steps, a14b.guidance, a14b.guidance_2, a14b.fps) == (
        81, 832, 480, 40, 4.0, 3.0, 16)
    assert a14b.sizes == ("832x480", "1280x720") and a14b.shift == 3.0 and a14b.schedule == "base"
    distilled = defaults_from_recipe(RECIPES["wan2.2-t2v-a14b"], spec, "lightning-4step")
    assert (distilled.steps, distilled.guidance, distilled.guidance_2, distilled.shift, distilled.scheduler,
            distilled.frames) == (4, 1.0, 1.0, 5.0, "FlowMatchEulerDiscreteScheduler", 81)
    # A trainer's own recipe file wins (reef/train.py writes one).
    own = tmp_path / "reef"
    own.mkdir()
    (own / "wanrt_defaults.json").write_text(json.dumps({"recipe": "reef", "frames": 17, "size": "96x96",
                                                         "steps": 8, "guidance": 4.0, "fps": 16}))
    assert recipe_for(own, spec) == RECIPES["preview"].__class__("reef", 17, ("96x96",), 8, 4.0, 4.0, 16)


def test_defaults_round_trip_and_refuse_bad_sections():
    defaults = defaults_from_recipe(RECIPES["wan2.2-t2v-a14b"], _spec(), "lightning-4step")
    data = json.loads(json.dumps(defaults.to_dict()))
    assert ModelDefaults.from_dict(data) == defaults
    for broken in ({**data, "steps": 0}, {**data, "schedule": "turbo"}, {k: v for k, v in data.items() if k != "fps"},
                   {**data, "height": 481}, "nope"):
        with pytest.raises(ArtifactError):
            ModelDefaults.from_dict(broken)


def test_a_request_takes_the_schedule_it_names_and_the_fields_given():
    defaults = defaults_from_recipe(RECIPES["wan2.2-t2v-a14b"], _spec())
    plain = defaults.request("p")
    assert (plain.steps, plain.guidance, plain.guidance_2, plain.schedule, plain.frames) == (40, 4.0, 3.0, "base", 81)
    fast = defaults.request("p", schedule="lightning-4step", steps=6)
    assert (fast.steps, fast.guidance, fast.guidance_2, fast.shift, fast.schedule) == (6, 1.0, 1.0, 5.0,
                                                                                      "lightning-4step")
    for field, value in (("schedule", "turbo"), ("shift", 0.0), ("shift", float("nan")), ("step_cache", 1.5),
                         ("step_cache", True)):
        with pytest.raises(InvalidRequestError) as err:
            dataclasses.replace(plain, **{field: value}).validate(Limits())
        assert err.value.field == field


def test_server_request_fills_from_the_model_defaults():
    pytest.importorskip("grpc")
    from wanrt.server.convert import request_from_proto
    from wanrt.server.v1 import wanrt_pb2 as pb

    defaults = defaults_from_recipe(RECIPES["wan2.2-t2v-a14b"], _spec())
    request, _ = request_from_proto(pb.GenerateRequest(prompt="p"), defaults, step_cache=0.2)
    assert (request.frames, request.height, request.width, request.steps, request.guidance, request.guidance_2,
            request.step_cache) == (81, 480, 832, 40, 4.0, 3.0, 0.2)
    request, _ = request_from_proto(pb.GenerateRequest(prompt="p", schedule="lightning-4step", step_cache=0.0),
                                    defaults, step_cache=0.2)
    assert (request.steps, request.guidance, request.shift, request.step_cache) == (4, 1.0, 5.0, 0.0)
    request, _ = request_from_proto(pb.GenerateRequest(prompt="p", guidance=6.0), defaults)
    assert request.effective_guidance_2 == 6.0  # unset guidance_2 follows the guidance given
    with pytest.raises(InvalidRequestError, match="schedule"):
        request_from_proto(pb.GenerateRequest(prompt="p", schedule="turbo"), defaults)
    # Without model defaults (an old caller), wanrt's own request defaults apply as before.
    request, _ = request_from_proto(pb.GenerateRequest(prompt="p"))
    assert request == dataclasses.replace(GenerationRequest.defaults(), prompt="p")
