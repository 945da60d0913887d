"""The latent-space check: projection onto the block basis, and the subject-detail share it reports."""

from __future__ import annotations

import numpy as np
import pytest

from wanrt.reef import latent_check as L
from wanrt.reef.data import balanced_attributes
from wanrt.reef.latent_basis import BlockPCA
from wanrt.reef.renderer import SceneAttributes, render_clip


def _clips(n: int, frames: int = 9) -> np.ndarray:
    attrs = balanced_attributes(n, np.random.default_rng(0))
    return np.stack([render_clip(a, frames=frames, height=32, width=32, seed=i) for i, a in enumerate(attrs)])


def test_projection_with_every_component_gives_the_clip_back():
    clips = _clips(3)
    pca = BlockPCA.fit(clips, channels=768)  # complete bases: nothing is dropped
    assert np.allclose(pca.project(clips), clips.astype(np.float32) / 127.5 - 1, atol=1e-4)


def test_projection_drops_what_the_top_components_miss():
    clips = _clips(6)
    pca = BlockPCA.fit(clips, channels=4)
    error = np.abs(pca.project(clips) - (clips.astype(np.float32) / 127.5 - 1)).mean()
    assert 0.001 < error < 0.2


def test_a_clip_without_its_subject_differs_only_where_the_subject_is():
    attrs = SceneAttributes("turtle", "left", "slow", "turquoise")
    clip = render_clip(attrs, seed=5)
    water = render_clip(attrs, seed=5, subject=False)
    changed = (np.abs(clip.astype(int) - water.astype(int)).max(axis=-1) > 0).mean()
    assert 0.02 < changed < 0.3  # the turtle's pixels, and only those (same water, light and grain)
    assert np.array_equal(render_clip(attrs, seed=5, subject=True), clip)


def test_large_subjects_keep_more_of_their_detail_than_specks():
    pca = BlockPCA.fit(np.stack([render_clip(a, seed=i) for i, a in
                                 enumerate(balanced_attributes(24, np.random.default_rng(1)))]))
    turtle = L.detail_kept(pca, SceneAttributes("turtle", "right", "fast", "turquoise"), seed=3)
    specks = L.detail_kept(pca, SceneAttributes("particles", "right", "fast", "turquoise"), seed=3)
    assert 0.0 <= specks < turtle <= 1.0


def test_the_check_refuses_a_folder_without_a_basis(tmp_path):
    with pytest.raises(FileNotFoundError, match="reef_latent_basis.npz"):
        L.main(["--model", str(tmp_path)])
