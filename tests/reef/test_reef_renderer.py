"""The renderer draws what the attributes say, with the promised physics."""

from __future__ import annotations

import numpy as np
import pytest

from wanrt.evaluate.probes import motion_velocity
from wanrt.reef.renderer import (
    MOTIONS,
    PALETTES,
    SUBJECTS,
    SceneAttributes,
    all_attributes,
    render_clip,
    sample_attributes,
)


def test_clip_shape_dtype_and_determinism():
    attrs = SceneAttributes("fish", "left", "fast", "turquoise")
    clip = render_clip(attrs, frames=17, height=96, width=80, seed=3)
    assert clip.shape == (17, 96, 80, 3) and clip.dtype == np.uint8
    assert np.array_equal(clip, render_clip(attrs, frames=17, height=96, width=80, seed=3))
    assert not np.array_equal(clip, render_clip(attrs, frames=17, height=96, width=80, seed=4))


def test_invalid_attributes_are_refused():
    with pytest.raises(ValueError, match="bubbles"):
        SceneAttributes("bubbles", "down", "slow", "deep_blue")
    with pytest.raises(ValueError, match="palette"):
        SceneAttributes("fish", "left", "slow", "pink")


def test_every_combination_is_covered():
    combos = all_attributes()
    assert {a.subject for a in combos} == set(SUBJECTS)
    assert {a.motion for a in combos} == set(MOTIONS)
    assert {a.palette for a in combos} == set(PALETTES)
    rng = np.random.default_rng(0)
    assert all(sample_attributes(rng) in combos for _ in range(50))


@pytest.mark.parametrize("subject", ["fish", "turtle", "ray", "jellyfish", "particles"])
@pytest.mark.parametrize("motion", MOTIONS)
def test_subject_moves_the_way_the_attributes_say(subject, motion):
    attrs = SceneAttributes(subject, motion, "fast", "deep_blue")
    dx, dy, _, _ = motion_velocity(render_clip(attrs, seed=1))
    expected = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0), "still": (0, 0)}[motion]
    if motion == "still":
        assert max(abs(dx), abs(dy)) < 0.005
    else:
        along = dx * expected[0] + dy * expected[1]
        across = abs(dx * expected[1]) + abs(dy * expected[0])
        assert along > 0.015 and across < along / 2


def test_fast_is_faster_than_slow():
    speeds = {}
    for speed in ("slow", "fast"):
        dx, _, _, _ = motion_velocity(render_clip(SceneAttributes("turtle", "right", speed, "turquoise"), seed=2))
        speeds[speed] = dx
    assert 0 < speeds["slow"] < speeds["fast"]


def test_bubbles_rise_and_accelerate():
    clip = render_clip(SceneAttributes("bubbles", "up", "fast", "deep_blue"), seed=5)
    _, early, _, _ = motion_velocity(clip[:9])
    _, late, _, _ = motion_velocity(clip[8:])
    assert early < 0 and late < early  # upward (negative y), faster later


def _band_means(clip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = clip.astype(np.float64) / 255
    return f[:, :20].mean(axis=(0, 1, 2)), f[:, -20:].mean(axis=(0, 1, 2))


@pytest.mark.parametrize("palette", ["deep_blue", "turquoise", "green_murk", "sunbeams"])
def test_light_fades_and_turns_blue_green_with_depth(palette):
    top, bottom = _band_means(render_clip(SceneAttributes("particles", "still", "slow", palette), seed=0))
    assert bottom.sum() < top.sum()  # darker with depth
    # red is absorbed first: its share of the light drops with depth
    assert bottom[0] / bottom.sum() < top[0] / top.sum()


def test_palettes_look_like_their_names():
    means = {p: _band_means(render_clip(SceneAttributes("fish", "still", "slow", p), seed=0)) for p in PALETTES}
    top, bottom = means["deep_blue"]
    assert top[2] > top[1] > top[0] and top.sum() < 1.0  # dark, blue
    top, _ = means["turquoise"]
    assert top[1] > 0.7 and top[2] > 0.7 and top[0] < 0.6  # bright green-blue
    top, _ = means["green_murk"]
    assert top[1] > top[2] and top[1] > top[0]  # green
    top, bottom = means["red_vent"]
    assert bottom[0] > bottom[2] and bottom[0] > 2 * top[0]  # red glow from below
    top, bottom = means["sunbeams"]
    assert top.sum() > 2.0 and top.sum() > 1.5 * bottom.sum()  # bright from above


def test_jellyfish_pulse():
    clip = render_clip(SceneAttributes("jellyfish", "still", "slow", "deep_blue"), seed=0).astype(np.float64)
    background = np.median(clip, axis=0)
    area = (np.abs(clip - background).sum(axis=-1) > 30).sum(axis=(1, 2))
    assert area.std() / area.mean() > 0.03  # the bell's size changes over the clip


def test_school_moves_together():
    # fish are small and numerous; their common velocity is what the probe reads, and it is the school's
    dx, dy, match, _ = motion_velocity(render_clip(SceneAttributes("fish", "down", "fast", "turquoise"), seed=9))
    assert dy > 0.015 and abs(dx) < 0.005 and match > 0.3
