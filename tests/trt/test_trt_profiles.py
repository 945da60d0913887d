"""Optimisation profiles from the real tiny artifact's manifest: exact envelopes, coverage, precise refusals."""

from __future__ import annotations

import copy
import dataclasses

import pytest
from trt_testkit import MAX_FRAMES, MAX_HEIGHT, MAX_WIDTH

from wanrt.engine.request import GenerationRequest, Limits
from wanrt.engine.tensorrt.profiles import (
    GraphProfile,
    InputProfile,
    VideoShape,
    compute_profiles,
    limits_from_dict,
    limits_to_dict,
    serving_limits,
    vae_cache_layout,
)
from wanrt.errors import ArtifactError, InvalidRequestError


def test_profiles_are_the_exact_envelope(artifact, limits):
    spec = artifact.spec
    profiles = compute_profiles(artifact, limits)
    assert list(profiles) == list(artifact.graphs)
    length, dim, c = spec.text_length, spec.text_dim, spec.latent_channels
    ids = profiles["text_encoder"].inputs["input_ids"]
    assert (ids.min, ids.opt, ids.max) == ((1, length), (2, length), (2, length))
    # 9 frames -> 3 latent frames; 64x48 -> 8x6 latent; smallest request 1 frame of 16x16 -> 1x2x2.
    for expert in spec.experts:
        inputs = profiles[expert].inputs
        assert list(inputs) == artifact.graphs[expert]["inputs"]
        assert inputs["hidden_states"] == InputProfile((1, c, 1, 2, 2), (2, c, 3, 8, 6), (2, c, 3, 8, 6))
        assert inputs["timestep"] == InputProfile((1,), (2,), (2,))
        assert inputs["encoder_hidden_states"] == InputProfile((1, length, dim), (2, length, dim), (2, length, dim))
    z = artifact.vae_decoder["z_dim"]
    init, step = profiles["vae_decoder_init"].inputs, profiles["vae_decoder_step"].inputs
    assert init == {"latent": InputProfile((1, z, 1, 2, 2), (1, z, 1, 8, 6), (1, z, 1, 8, 6))}
    assert list(step) == ["latent", *artifact.vae_decoder["cache"]["names"]]
    for name, channels, scale in vae_cache_layout(artifact.vae_decoder):
        largest = (1, channels, 2, 8 * scale, 6 * scale)
        assert step[name] == InputProfile((1, channels, 2, 2 * scale, 2 * scale), largest, largest)


def test_opt_point_is_where_tensorrt_tunes(artifact, limits):
    profiles = compute_profiles(artifact, limits, VideoShape(frames=5, height=32, width=48))
    assert profiles["transformer"].inputs["hidden_states"].opt[2:] == (2, 4, 6)
    assert profiles["vae_decoder_init"].inputs["latent"].opt[3:] == (4, 6)
    # min and max do not move with opt
    assert profiles["transformer"].inputs["hidden_states"].max[2:] == (3, 8, 6)


@pytest.mark.parametrize(("opt", "field"), [
    (VideoShape(6, 32, 32), "opt_frames"),  # not 4k+1
    (VideoShape(13, 32, 32), "opt_frames"),  # beyond max_frames
    (VideoShape(5, 40, 32), "opt_height"),  # not a multiple of 16
    (VideoShape(5, 32, 64), "opt_width"),  # beyond max_width
])
def test_bad_opt_point_is_named(artifact, limits, opt, field):
    with pytest.raises(InvalidRequestError) as err:
        compute_profiles(artifact, limits, opt)
    assert err.value.field == field


def test_every_valid_request_fits_and_nothing_beyond(artifact, limits):
    """Walks every request the limits allow, through the pipeline's own latent arithmetic."""
    spec = artifact.spec
    profiles = compute_profiles(artifact, limits)
    hidden = profiles["transformer"].inputs["hidden_states"]
    latent = profiles["vae_decoder_step"].inputs["latent"]
    count = 0
    for frames in range(1, limits.max_frames + 1, limits.frame_multiple):
        for height in range(limits.size_multiple, limits.max_height + 1, limits.size_multiple):
            for width in range(limits.size_multiple, limits.max_width + 1, limits.size_multiple):
                request = GenerationRequest(prompt="x", frames=frames, height=height, width=width)
                request.validate(limits)
                shape = request.latent_shape(spec.latent_channels, spec.vae_scale_temporal, spec.vae_scale_spatial)
                for batch in (1, 2):
                    assert hidden.first_outside((batch, *shape[1:])) is None, (request, batch)
                assert latent.first_outside((1, shape[1], 1, *shape[3:])) is None, request
                count += 1
    assert count == 3 * 4 * 3
    # One step beyond each maximum leaves the profile, in the dim it should.
    c = spec.latent_channels
    assert hidden.first_outside((2, c, 4, 8, 6)) == 2  # 13 frames
    assert hidden.first_outside((2, c, 3, 10, 6)) == 3  # height 80
    assert hidden.first_outside((2, c, 3, 8, 8)) == 4  # width 64
    assert hidden.first_outside((3, c, 3, 8, 6)) == 0  # batch 3


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"max_height": 1280}, "max_height", ["transformer.onnx accepts hidden_states dim 3 (latent height) up to 64",
                                          "need 160", "at most 512 pixels"]),
    ({"max_width": 1024}, "max_width", ["hidden_states dim 4 (latent width) up to 64", "at most 512 pixels"]),
    ({"max_frames": 129}, "max_frames", ["hidden_states dim 2 (latent frames) up to 32", "at most 125 video frames"]),
    ({"max_frames": 6}, "max_frames", ["must be 4k+1, got 6"]),
    ({"max_frames": 0}, "max_frames", ["must be 4k+1"]),
    ({"max_height": 100}, "max_height", ["a multiple of 16", "got 100"]),
    ({"max_width": 8}, "max_width", ["at least min_size 16"]),
])
def test_limits_the_artifact_cannot_serve_are_named(artifact, change, field, words):
    sizes = {"max_frames": MAX_FRAMES, "max_height": MAX_HEIGHT, "max_width": MAX_WIDTH, **change}
    with pytest.raises(InvalidRequestError) as err:
        compute_profiles(artifact, serving_limits(artifact.spec, **sizes))
    assert err.value.field == field
    for word in words:
        assert word in str(err.value)


def test_too_small_a_minimum_blames_min_size(artifact):
    # Size multiple 8 allows 8-pixel requests: latent side 1, below the export's 2 (patch size).
    limits = Limits(max_frames=9, min_size=8, max_height=64, max_width=48, frame_multiple=4, size_multiple=8)
    with pytest.raises(InvalidRequestError) as err:
        compute_profiles(artifact, limits)
    assert err.value.field == "min_size"
    assert "latent height) from 2, but the limits need 1" in str(err.value)
    assert "at least 16 pixels" in str(err.value)


def _with_graph(artifact, name, edit):
    graphs = copy.deepcopy(artifact.graphs)
    edit(graphs[name])
    return dataclasses.replace(artifact, graphs=graphs)


def test_artifact_without_batch_two_is_an_artifact_error(artifact, limits):
    def single_batch(graph):
        graph["shape_ranges"]["hidden_states"]["max"][0] = 1

    with pytest.raises(ArtifactError, match=r"transformer\.onnx accepts hidden_states dim 0 \(batch\) up to 1"):
        compute_profiles(_with_graph(artifact, "transformer", single_batch), limits)


def test_artifact_vae_without_batch_one_room_is_named(artifact, limits):
    vae = copy.deepcopy(artifact.vae_decoder)
    vae["min_latent_hw"] = 4  # an export that cannot decode 16-pixel requests
    with pytest.raises(InvalidRequestError, match=r"vae_decoder_init\.onnx accepts latent dim 3 \(latent height\) "
                                                  r"from 4, but the limits need 2") as err:
        compute_profiles(dataclasses.replace(artifact, vae_decoder=vae), limits)
    assert err.value.field == "min_size"


@pytest.mark.parametrize(("edit", "message"), [
    (lambda g: g["inputs"].append("extra"), "has inputs .* drives"),
    (lambda g: g.pop("shape_ranges"), "no valid shape_ranges"),
    (lambda g: g["shape_ranges"].pop("timestep"), "no shape range for input 'timestep'"),
    (lambda g: g["shape_ranges"]["timestep"].update(min=[1, 1], max=[2, 2]), "rank 2 in the manifest"),
])
def test_manifest_graphs_wanrt_cannot_drive_are_refused(artifact, limits, edit, message):
    with pytest.raises(ArtifactError, match=message):
        compute_profiles(_with_graph(artifact, "transformer_2", edit), limits)


def test_single_expert_artifact(artifact, limits):
    graphs = {k: v for k, v in artifact.graphs.items() if k != "transformer_2"}
    single = dataclasses.replace(artifact, graphs=graphs,
                                 spec=dataclasses.replace(artifact.spec, experts=("transformer",), boundary_ratio=None))
    assert "transformer_2" not in compute_profiles(single, limits)
    with pytest.raises(ArtifactError, match="no transformer graph"):
        compute_profiles(dataclasses.replace(single, graphs={k: v for k, v in graphs.items() if k != "transformer"}),
                         limits)


def test_profile_json_round_trip_and_malformed(artifact, limits):
    for profile in compute_profiles(artifact, limits).values():
        assert GraphProfile.from_dict(profile.to_dict()) == profile
    with pytest.raises(ArtifactError, match="engines.x is malformed"):
        GraphProfile.from_dict({"inputs": {"a": {"min": [1], "max": [2]}}}, "engines.x")
    with pytest.raises(ArtifactError, match="min <= opt <= max"):
        GraphProfile.from_dict({"inputs": {"a": {"min": [2], "opt": [1], "max": [3]}}})
    assert limits_from_dict(limits_to_dict(limits)) == limits
    with pytest.raises(ArtifactError, match="limits is malformed"):
        limits_from_dict({"max_frames": 9})


def test_input_profile_invariants():
    with pytest.raises(ValueError, match="ranks differ"):
        InputProfile((1, 2), (1,), (1, 2))
    with pytest.raises(ValueError, match="min <= opt <= max"):
        InputProfile((0,), (1,), (1,))
