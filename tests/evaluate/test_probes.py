"""The probes read the renderer's own clips correctly: they are fit to judge generated ones."""

from __future__ import annotations

import numpy as np

from wanrt.evaluate.probes import LinearProbe, Probes, degrade, motion_direction, motion_velocity
from wanrt.reef.renderer import render_clip, sample_attributes


def test_probes_classify_rendered_clips():
    probes = Probes.load()
    rng = np.random.default_rng(123)  # not the seed the shipped probes were fitted with
    n, hits = 36, {"motion": 0, "palette": 0, "subject": 0}
    for i in range(n):
        attrs = sample_attributes(rng)
        clip = render_clip(attrs, seed=50_000 + i)
        if i % 2:
            clip = degrade(clip, rng)  # blurred and noisy, like a small generator's output
        found = probes.classify(clip)
        for k in hits:
            hits[k] += found[k] == getattr(attrs, k)
    assert hits["motion"] / n >= 0.9
    assert hits["palette"] / n >= 0.95
    assert hits["subject"] / n >= 0.75


def test_motion_of_a_translated_texture():
    rng = np.random.default_rng(0)
    texture = rng.uniform(0, 1, (64, 200, 3))
    # 17 frames of a window sliding right over the texture: content moves left by 2 px per frame
    clip = np.stack([texture[:, 2 * t:2 * t + 64] for t in range(17)])
    dx, dy, match, _ = motion_velocity((clip * 255).astype(np.uint8))
    assert abs(dx * 64 + 2) <= 0.25 and abs(dy) < 0.01 and match > 0.5
    assert motion_direction((clip * 255).astype(np.uint8)) == "left"
    still = np.repeat(clip[:1], 17, axis=0)
    assert motion_direction((still * 255).astype(np.uint8)) == "still"


def test_linear_probe_fits_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-2, 1, (50, 3)), rng.normal(2, 1, (50, 3))])
    labels = ["a"] * 50 + ["b"] * 50
    probe = LinearProbe.fit(x, labels, ("a", "b"), steps=300)
    assert np.mean(np.array(probe.predict(x)) == np.array(labels)) > 0.95
    probes = Probes(probe, probe)
    probes.save(tmp_path / "p.npz")
    loaded = Probes.load(tmp_path / "p.npz")
    assert loaded.subject.classes == ("a", "b")
    assert np.allclose(loaded.palette.logits(x), probe.logits(x))
