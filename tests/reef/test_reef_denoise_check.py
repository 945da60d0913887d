"""The denoise check: the experts' output when started from a rendered clip at a chosen noise level."""

from __future__ import annotations

import numpy as np
import pytest

from wanrt.evaluate.eval import heldout_cases
from wanrt.evaluate.probes import Probes
from wanrt.reef import denoise_check as D
from wanrt.reef import train as T
from wanrt.reef.renderer import render_clip

pytestmark = pytest.mark.slow  # trains a quick reef model first


@pytest.fixture(scope="module")
def sampler(tmp_path_factory):
    out = tmp_path_factory.mktemp("reef") / "model"
    # Full-size clips (the check renders wanrt eval's 17 x 96 x 96), tiny networks and a few steps.
    assert T.main(["--out", str(out), "--preset", "quick", "--threads", "1", "--set", "frames=17",
                   "--set", "size=96", "--set", "vae_crop=48"]) == 0
    return D.TrueStartSampler(out)


def test_the_later_the_start_the_closer_the_clip_stays_to_the_truth(sampler):
    case = heldout_cases(1)[0]
    truth = render_clip(case.attrs, seed=case.seed).astype(np.float32)
    late, early = (sampler.clip(case, start) for start in (0.3, 1.0))
    assert late.shape == early.shape == (17, 96, 96, 3) and late.dtype == np.uint8
    assert np.array_equal(sampler.clip(case, 0.3), late)  # the case's seed fixes the noise
    # An untrained model barely moves a clip it is given at sigma 0.3; from pure noise nothing of it is left.
    assert np.abs(late - truth).mean() < np.abs(early - truth).mean()


def test_the_report_snaps_starts_to_the_grid_and_counts_by_subject(sampler):
    cases = heldout_cases(2)
    report = D.motion_by_start(sampler, cases, [1.0, 0.31], Probes.load())
    assert list(report) == ["1.00", "0.30"]
    for row in report.values():
        assert 0.0 <= row["motion"] <= 1.0
        assert sum(n for _, n in row["by_subject"].values()) == len(cases)
