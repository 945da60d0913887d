"""Streaming VAE decode (init + per-frame step graphs) against diffusers' full ``vae.decode``."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


from wanrt.engine.backends.torch_vae import decode_streaming_torch, probe_cache_layout  # noqa: E402
from wanrt.export.vae_decoder import INIT_FILE, STEP_FILE  # noqa: E402
from wanrt.measures import max_relative_error  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def vae(tiny_model_dir: Path) -> Any:
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan.from_pretrained(tiny_model_dir / "vae").eval()


@pytest.fixture(scope="module")
def exported(tiny_artifact_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The session's exported artifact (weights in external data, so .onnx.data loading is exercised too)."""
    from wanrt.engine.artifact import load_artifact

    manifest = load_artifact(tiny_artifact_dir)
    return tiny_artifact_dir, {**manifest.vae_decoder, "init": manifest.graphs["vae_decoder_init"],
                               "step": manifest.graphs["vae_decoder_step"],
                               "parity": [p for p in manifest.parity if p["graph"].startswith("vae_decoder")]}


@pytest.fixture(scope="module")
def sessions(exported: tuple[Path, dict[str, Any]]) -> tuple[ort.InferenceSession, ort.InferenceSession]:
    out, manifest = exported
    options = ort.SessionOptions()
    options.log_severity_level = 3

    def load(name: str) -> ort.InferenceSession:
        return ort.InferenceSession(os.fspath(out / name), options, providers=["CPUExecutionProvider"])

    return load(manifest["init"]["file"]), load(manifest["step"]["file"])


def ort_stream(sessions: tuple[ort.InferenceSession, ort.InferenceSession], manifest: dict[str, Any],
               z: np.ndarray) -> Iterator[np.ndarray]:
    """What a runtime does: init on frame 0, then feed each step's caches back by position."""
    init, step = sessions
    names = manifest["cache"]["names"]
    frames, *caches = init.run(None, {"latent": z[:, :, :1]})
    yield frames
    for i in range(1, z.shape[2]):
        frames, *caches = step.run(None, {"latent": z[:, :, i : i + 1], **dict(zip(names, caches, strict=True))})
        yield frames


def latents(batch: int, frames: int, h: int, w: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 16, frames, h, w, generator=torch.Generator().manual_seed(seed))


def reference(vae: Any, z: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return vae.decode(z).sample.numpy()


@pytest.mark.parametrize(("frames", "h", "w"), [(1, 4, 4), (2, 4, 4), (5, 4, 4), (3, 3, 5)])
def test_streaming_matches_full_decode(vae: Any, exported: tuple[Path, dict[str, Any]], sessions: Any,
                                       frames: int, h: int, w: int) -> None:
    _, manifest = exported
    z = latents(1, frames, h, w, seed=frames * 100 + h * 10 + w)
    expected = reference(vae, z)
    assert expected.shape == (1, 3, 1 + 4 * (frames - 1), 8 * h, 8 * w)

    torch_chunks = [c.numpy() for c in decode_streaming_torch(vae, z)]
    onnx_chunks = list(ort_stream(sessions, manifest, z.numpy()))
    # Frames leave per latent frame: 1 video frame first, then temporal_stride each.
    assert [c.shape[2] for c in torch_chunks] == [1] + [4] * (frames - 1)
    assert [c.shape[2] for c in onnx_chunks] == [1] + [4] * (frames - 1)

    torch_err = max_relative_error(np.concatenate(torch_chunks, axis=2), expected)
    onnx_err = max_relative_error(np.concatenate(onnx_chunks, axis=2), expected)
    assert torch_err <= TOL, torch_err
    assert onnx_err <= TOL, onnx_err


def test_reported_layout_matches_graphs(vae: Any, exported: tuple[Path, dict[str, Any]], sessions: Any) -> None:
    out, manifest = exported
    layout = probe_cache_layout(vae)
    cache = manifest["cache"]
    assert cache["names"] == list(layout.names) and cache["channels"] == list(layout.channels)
    assert cache["scales"] == list(layout.scales) and cache["frames"] == 2
    assert manifest["temporal_stride"] == 4 and manifest["spatial_scale"] == 8
    assert manifest["init"]["file"] == INIT_FILE and manifest["step"]["file"] == STEP_FILE
    for part in ("init", "step"):
        assert all((out / f).exists() for f in manifest[part]["files"])
        assert f"{manifest[part]['file']}.data" in manifest[part]["files"]  # threshold 0 => external data
    # Two sizes x (init, step), each graph and its onnxruntime attention form (the mid-block's attention).
    assert len(manifest["parity"]) == 8 and all(p["max_rel_error"] <= TOL for p in manifest["parity"])
    assert {p["graph"] for p in manifest["parity"]} == {INIT_FILE, STEP_FILE, manifest["init"]["attention"][
        "onnxruntime"]["file"], manifest["step"]["attention"]["onnxruntime"]["file"]}

    def io(name: str) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
        graph = onnx.load(os.fspath(out / name), load_external_data=False).graph

        def dims(values: Any) -> dict[str, list[Any]]:
            return {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in values}

        return dims(graph.input), dims(graph.output)

    init_in, init_out = io(INIT_FILE)
    step_in, step_out = io(STEP_FILE)
    assert list(init_in) == manifest["init"]["inputs"] == ["latent"]
    assert list(init_out) == manifest["init"]["outputs"] == ["frames", *cache["names"]]
    assert list(step_in) == manifest["step"]["inputs"] == ["latent", *cache["names"]]
    assert list(step_out) == manifest["step"]["outputs"] == ["frames", *cache["output_names"]]
    for k, (name, ch) in enumerate(zip(cache["names"], cache["channels"], strict=True)):
        for shape in (init_out[name], step_in[name], step_out[cache["output_names"][k]]):
            # Channels and the 2 cache frames are fixed; batch, height and width stay symbolic.
            assert shape[1:3] == [ch, 2], (name, shape)
            assert all(isinstance(d, str) for d in (shape[0], shape[3], shape[4])), (name, shape)

    # And the concrete shapes onnxruntime produces at a size the graphs were not exported at.
    z = latents(1, 2, 3, 5, seed=7).numpy()
    init, step = sessions
    _, *caches = init.run(None, {"latent": z[:, :, :1]})
    assert [c.shape for c in caches] == layout.shapes(1, 3, 5)
    frames, *caches = step.run(None, {"latent": z[:, :, 1:], **dict(zip(cache["names"], caches, strict=True))})
    assert frames.shape == (1, 3, 4, 24, 40)
    assert [c.shape for c in caches] == layout.shapes(1, 3, 5)


def test_graph_decodes_other_sizes(vae: Any, exported: tuple[Path, dict[str, Any]], sessions: Any) -> None:
    """Exported at batch 2, latent 4x6; decodes batch 2 at 6x2 and batch 1 at the minimum 2x2."""
    _, manifest = exported
    for batch, h, w in ((2, 6, 2), (1, 2, 2)):
        z = latents(batch, 2, h, w, seed=h * 10 + w)
        got = np.concatenate(list(ort_stream(sessions, manifest, z.numpy())), axis=2)
        expected = reference(vae, z)
        assert got.shape == expected.shape == (batch, 3, 5, 8 * h, 8 * w)
        assert max_relative_error(got, expected) <= TOL
