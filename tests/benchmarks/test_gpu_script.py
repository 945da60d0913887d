"""The GPU script (benchmarks/gpu_a14b.py) run on the CPU at a test's size: the same code an H200 runs."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("diffusers")


@pytest.mark.slow  # builds experts and a VAE with diffusers, times them
def test_gpu_script_runs_at_reduced_size_and_writes_its_results(tmp_path):
    from wanrt.benchmarks import gpu_a14b
    from wanrt.benchmarks.flops import DitShape, VideoShape, forward_flops
    from wanrt.benchmarks.synthetic import expert_config

    assert gpu_a14b.main(["--out", str(tmp_path), "--device", "cpu", "--model", "tiny", "--vae", "tiny",
                          "--layers", "2", "--presets", "5x32x32,9x32x48", "--runs", "1", "--no-compile",
                          "--peak-tflops", "1.0"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eager_5x32x32.json", "eager_9x32x48.json",
                                                          "vae_5x32x32.json"]
    eager = json.loads((tmp_path / "eager_5x32x32.json").read_text())
    assert eager["machine"]["cpu"] and eager["peers"][0]["s_per_step"] == 5.14
    assert any("scaled_dot_product" in k for k in eager["attention_kernels"])
    shape = DitShape.from_config(expert_config("tiny", 2))
    per_sample = forward_flops(shape, VideoShape(5, 32, 32).tokens(shape)).total
    for batch in (1, 2):
        entry = eager[f"batch{batch}"]
        assert entry["flops_extrapolated"] == batch * per_sample  # tiny's full depth is 2 layers
        assert entry["extrapolated_s"] == pytest.approx(
            entry["no_blocks"]["median_s"] + 2 * entry["per_layer_s"])
        assert entry["measured"]["runs"] == 1 and entry["measured"]["peak_rss_mb"] > 0
        assert math.isclose(entry["fraction_of_peak"], entry["achieved_tflops_per_s"] / 1.0)
    wide = json.loads((tmp_path / "eager_9x32x48.json").read_text())
    assert wide["tokens"] == 3 * 2 * 3 and "batch2" in wide and "batch1" not in wide  # CFG pair only
    vae = json.loads((tmp_path / "vae_5x32x32.json").read_text())
    assert vae["first_frame"]["median_s"] > 0 and vae["next_frame"]["median_s"] > 0
