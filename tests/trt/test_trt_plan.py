"""Binding plans against the real tiny artifact: output shapes equal onnxruntime's real outputs for every call
the pipeline makes, and shapes outside the profiles are refused naming the graph, input and dimension."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from wanrt.engine.backends.onnxruntime import OnnxRuntimeBackend
from wanrt.engine.pipeline import VideoPipeline
from wanrt.engine.request import GenerationRequest
from wanrt.engine.tensorrt.plan import BindingError, Planner, TensorSpec
from wanrt.engine.tensorrt.profiles import GraphProfile, InputProfile, compute_profiles
from wanrt.engine.text import PromptTokenizer
from wanrt.errors import ArtifactError, InvalidRequestError


@pytest.fixture(scope="module")
def planner(artifact, limits) -> Planner:
    return Planner(artifact, {g: [p] for g, p in compute_profiles(artifact, limits).items()})


def _expert_feeds(batch=2, frames=3, h=8, w=6, length=512, dim=32, timestep=None):
    return {"hidden_states": (batch, 16, frames, h, w), "timestep": (batch,) if timestep is None else timestep,
            "encoder_hidden_states": (batch, length, dim)}


def test_output_shapes_and_dtypes(artifact, planner):
    text = planner.plan("text_encoder", {"input_ids": (2, 512), "attention_mask": (2, 512)})
    assert text.inputs == (TensorSpec("input_ids", (2, 512), "int64"), TensorSpec("attention_mask", (2, 512), "int64"))
    assert text.outputs == (TensorSpec("last_hidden_state", (2, 512, 32), "float32"),)
    noise = planner.plan("transformer_2", _expert_feeds(batch=1, frames=1, h=2, w=4))
    assert noise.outputs == (TensorSpec("noise_pred", (1, 16, 1, 2, 4), "float32"),)
    assert noise.profile_index == 0
    init = planner.plan("vae_decoder_init", {"latent": (1, 16, 1, 8, 6)})
    assert init.spec("frames").shape == (1, 3, 1, 64, 48)
    step_feeds = {"latent": (1, 16, 1, 8, 6)} | {s.name: s.shape for s in init.outputs[1:]}
    step = planner.plan("vae_decoder_step", step_feeds)
    assert step.spec("frames").shape == (1, 3, 4, 64, 48)
    # The step's updated caches have the shapes of the caches it reads: they feed the next frame.
    assert [s.shape for s in step.outputs[1:]] == [s.shape for s in init.outputs[1:]]
    assert [s.name for s in step.outputs[1:]] == artifact.vae_decoder["cache"]["output_names"]
    assert init.spec("frames").nbytes == 3 * 64 * 48 * 4


class PlanCheckingBackend:
    """The real onnxruntime backend, with every call planned first and its real outputs checked against the
    plan: if the pipeline asked for a shape outside the profiles, or a plan predicted a wrong output shape or
    dtype, this fails."""

    name = "plan-check"

    def __init__(self, art_dir, artifact, planner):
        self.ort = OnnxRuntimeBackend(art_dir, {n: g["file"] for n, g in artifact.graphs.items()})
        self.planner = planner
        self.cache_names = artifact.vae_decoder["cache"]["names"]
        self.cache_outputs = artifact.vae_decoder["cache"]["output_names"]
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def _check(self, graph, feeds, outputs):
        plan = self.planner.plan(graph, {name: a.shape for name, a in feeds.items()})
        for spec in plan.inputs:
            assert feeds[spec.name].dtype == np.dtype(spec.dtype), (graph, spec)
        assert [s.name for s in plan.outputs] == list(outputs)
        for spec in plan.outputs:
            got = outputs[spec.name]
            assert (got.shape, got.dtype) == (spec.shape, np.dtype(spec.dtype)), (graph, spec)
        self.calls.append((graph, plan.inputs[0].shape))

    def encode_text(self, input_ids, attention_mask):
        out = self.ort.encode_text(input_ids, attention_mask)
        self._check("text_encoder", {"input_ids": input_ids, "attention_mask": attention_mask},
                    {"last_hidden_state": out})
        return out

    def predict_noise(self, expert, latents, timestep, text):
        out = self.ort.predict_noise(expert, latents, timestep, text)
        self._check(expert, {"hidden_states": latents, "timestep": timestep, "encoder_hidden_states": text},
                    {"noise_pred": out})
        return out

    def decode_first(self, latent):
        frames, caches = self.ort.decode_first(latent)
        outputs = {"frames": frames, **dict(zip(self.cache_names, caches, strict=True))}
        self._check("vae_decoder_init", {"latent": latent}, outputs)
        return frames, caches

    def decode_next(self, latent, state):
        frames, caches = self.ort.decode_next(latent, state)
        self._check("vae_decoder_step", {"latent": latent, **dict(zip(self.cache_names, state, strict=True))},
                    {"frames": frames, **dict(zip(self.cache_outputs, caches, strict=True))})
        return frames, caches


def test_profiles_cover_every_call_of_real_pipelines(tiny_artifact_dir, artifact, limits, planner):
    backend = PlanCheckingBackend(tiny_artifact_dir, artifact, planner)
    spec = artifact.spec
    # limits=: the pipeline serves exactly what the engines were built for, as load_tensorrt_pipeline sets it.
    pipeline = VideoPipeline(spec, PromptTokenizer(tiny_artifact_dir / "tokenizer.json", spec.text_length),
                             backend, identity={}, limits=limits)
    requests = [
        GenerationRequest(prompt="a fish", frames=1, height=16, width=16, steps=2, guidance=1.0),  # smallest
        GenerationRequest(prompt="a reef", frames=limits.max_frames, height=limits.max_height,
                          width=limits.max_width, steps=2, guidance=4.0),  # largest, CFG on
        # CFG on the high-noise expert only: batch 2 then batch 1; tall and narrow.
        GenerationRequest(prompt="sunbeams", frames=5, height=48, width=16, steps=4, guidance=4.0, guidance_2=1.0),
    ]
    for request in requests:
        frames = np.concatenate(list(pipeline.generate(request)))
        assert frames.shape == (request.frames, request.height, request.width, 3)
    seen = {(graph, shape[0]) for graph, shape in backend.calls}
    assert {("text_encoder", 1), ("text_encoder", 2), ("transformer", 1), ("transformer", 2),
            ("transformer_2", 1), ("transformer_2", 2), ("vae_decoder_init", 1), ("vae_decoder_step", 1)} <= seen
    latents = {shape for graph, shape in backend.calls if graph == "transformer"}
    assert (2, 16, 3, 8, 6) in latents and (1, 16, 1, 2, 2) in latents  # both corners of the profile
    # Beyond the engines' limits the pipeline refuses the request before any network runs.
    backend.calls.clear()
    with pytest.raises(InvalidRequestError, match="height"):
        next(pipeline.generate(GenerationRequest(prompt="x", height=limits.max_height + 16, width=16, frames=1)))
    assert backend.calls == []


@pytest.mark.parametrize(("graph", "feeds", "words", "tensor", "dim"), [
    ("transformer", _expert_feeds(h=10), ["transformer: input 'hidden_states' dim 3 (latent height) is 10",
                                          "outside the engine profile's range 2..8"], "hidden_states", 3),
    ("transformer", _expert_feeds(frames=4), ["dim 2 (latent frames) is 4", "range 1..3"], "hidden_states", 2),
    ("transformer_2", _expert_feeds(w=8), ["dim 4 (latent width) is 8", "range 2..6"], "hidden_states", 4),
    ("transformer", _expert_feeds(batch=3), ["dim 0 (batch) is 3", "range 1..2"], "hidden_states", 0),
    ("transformer", _expert_feeds(length=77), ["'encoder_hidden_states' dim 1 (text length) is 77", "512..512"],
     "encoder_hidden_states", 1),
    ("transformer", _expert_feeds(dim=64), ["dim 2 (text dim) is 64"], "encoder_hidden_states", 2),
    ("transformer", _expert_feeds(h=3), ["'hidden_states' dim 3 (latent height) is 3, not a multiple of the patch "
                                         "size 2"], "hidden_states", 3),
    ("transformer", _expert_feeds(timestep=(1,)), ["disagree on the batch size"], None, 0),
    ("transformer", _expert_feeds(timestep=(2, 1)), ["'timestep' has rank 2"], "timestep", None),
    ("vae_decoder_init", {"latent": (2, 16, 1, 8, 6)}, ["vae_decoder_init: input 'latent' dim 0 (batch) is 2",
                                                        "range 1..1"], "latent", 0),
    ("vae_decoder_init", {"latent": (1, 16, 2, 8, 6)}, ["dim 2 (latent frames) is 2", "range 1..1"], "latent", 2),
    ("text_encoder", {"input_ids": (2, 512), "attention_mask": (2, 300)}, ["'attention_mask' dim 1 (text length) "
                                                                          "is 300"], "attention_mask", 1),
    ("text_encoder", {"input_ids": (2, 512)}, ["missing ['attention_mask']"], None, None),
    ("text_encoder", {"input_ids": (2, 512), "attention_mask": (2, 512), "token_type_ids": (2, 512)},
     ["unexpected ['token_type_ids']"], None, None),
    ("vae_decoder", {"latent": (1, 16, 1, 8, 6)}, ["no engine for this graph"], None, None),
])
def test_shapes_outside_the_profiles_are_named(planner, graph, feeds, words, tensor, dim):
    with pytest.raises(BindingError) as err:
        planner.plan(graph, feeds)
    for word in words:
        assert word in str(err.value)
    assert (err.value.graph, err.value.tensor, err.value.dim) == (graph, tensor, dim)


def test_step_caches_must_match_the_latent(planner):
    init = planner.plan("vae_decoder_init", {"latent": (1, 16, 1, 8, 6)})
    feeds = {"latent": (1, 16, 1, 8, 6)} | {s.name: s.shape for s in init.outputs[1:]}
    feeds["latent"] = (1, 16, 1, 6, 6)  # the caches were made for height 8
    with pytest.raises(BindingError, match=r"input 'cache_0' dim 3 \(cache height\) is 8, but latent "
                                           r"\(1, 16, 1, 6, 6\) needs cache shape") as err:
        planner.plan("vae_decoder_step", feeds)
    assert (err.value.tensor, err.value.dim) == ("cache_0", 3)


def test_the_first_fitting_profile_is_chosen(artifact, limits):
    profiles = compute_profiles(artifact, limits)
    big = profiles["transformer"]
    hidden = big.inputs["hidden_states"]
    small = GraphProfile({**big.inputs, "hidden_states": InputProfile(hidden.min, hidden.min, hidden.min)})
    planner = Planner(artifact, {g: [small, big] if g == "transformer" else [p] for g, p in profiles.items()})
    assert planner.plan("transformer", _expert_feeds(batch=1, frames=1, h=2, w=2)).profile_index == 0
    assert planner.plan("transformer", _expert_feeds()).profile_index == 1
    with pytest.raises(BindingError, match=r"fits none of the engine's profiles: profile 0: input 'hidden_states' "
                                           r"dim 0 \(batch\) is 3.*; profile 1: input 'hidden_states' dim 0"):
        planner.plan("transformer", _expert_feeds(batch=3))


def test_engine_io_is_checked(planner):
    io = {"input_ids": ("input", "int64"), "attention_mask": ("input", "int64"),
          "last_hidden_state": ("output", "float32")}
    planner.check_engine_io("text_encoder", io)
    with pytest.raises(ArtifactError, match=r"differing: .*'input_ids', \('input', 'int32'\)"):
        planner.check_engine_io("text_encoder", {**io, "input_ids": ("input", "int32")})
    with pytest.raises(ArtifactError, match="rebuild it"):
        planner.check_engine_io("text_encoder", {k: v for k, v in io.items() if k != "last_hidden_state"})


def test_planner_refuses_graphs_it_does_not_know(artifact, limits):
    profiles = {g: [p] for g, p in compute_profiles(artifact, limits).items()}
    graphs = copy.deepcopy(artifact.graphs)
    graphs["transformer"]["outputs"] = ["noise_pred", "extra"]
    with pytest.raises(ArtifactError, match=r"graph 'transformer' has outputs \['noise_pred', 'extra'\]"):
        Planner(dataclasses.replace(artifact, graphs=graphs), profiles)
    with pytest.raises(ArtifactError, match="no optimisation profile for graph 'transformer_2'"):
        Planner(artifact, {g: p for g, p in profiles.items() if g != "transformer_2"})
