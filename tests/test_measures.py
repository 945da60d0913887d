"""The two relative errors measure different things: the worst element (export's parity gate) and the error's
share of the whole signal (quantization's report, `wanrt verify`)."""

from __future__ import annotations

import numpy as np
import pytest

from wanrt.measures import max_relative_error, norm_relative_error


def test_one_wrong_element_counts_fully_in_the_max_and_diluted_in_the_norm():
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    reference = rng.uniform(1.0, 2.0, size=10_000)
    actual = reference.copy()
    actual[rng.integers(reference.size)] += 1.0
    assert max_relative_error(actual, reference) == pytest.approx(1.0 / reference.max())
    assert norm_relative_error(actual, reference) == pytest.approx(1.0 / np.linalg.norm(reference))
    assert norm_relative_error(actual, reference) < max_relative_error(actual, reference) / 50


def test_a_uniform_relative_change_reads_the_same_in_both():
    reference = np.linspace(-3.0, 3.0, 101)
    assert max_relative_error(1.01 * reference, reference) == pytest.approx(0.01)
    assert norm_relative_error(1.01 * reference, reference) == pytest.approx(0.01)
    assert max_relative_error(np.zeros(0), np.zeros(0)) == 0.0
