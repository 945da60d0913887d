"""`wanrt bench` end to end on the reef demo model (onnxruntime) at a tiny shape, and the ratio logic."""

from __future__ import annotations

import json

import pytest

from wanrt.benchmarks.bench import _add_ratios
from wanrt.benchmarks.timing import measure
from wanrt.cli import main


def test_bench_writes_json_markdown_and_plot_for_the_demo_model(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["bench", "--backends", "onnxruntime", "--components", "dit,vae,mp4,end_to_end", "--frames", "5",
                 "--height", "16", "--width", "16", "--steps", "2", "--runs", "2", "--warmup", "0",
                 "--end-to-end-runs", "1", "--peak-tflops", "0.5", "--out", str(tmp_path), "--name", "t"]) == 0
    result = json.loads((tmp_path / "t.json").read_text())
    assert result["command"].startswith("wanrt ") and result["peak"] == {"tflops": 0.5, "source": "--peak-tflops"}
    [setting] = result["settings"]
    assert (setting["backend"], setting["precision"]) == ("onnxruntime", "fp32")
    rows = setting["components"]
    assert set(rows) == {"transformer_cfg_pair", "transformer_batch1", "transformer_2_cfg_pair",
                         "transformer_2_batch1", "vae_first_frame", "vae_next_frame", "end_to_end"}
    pair, single = rows["transformer_cfg_pair"], rows["transformer_batch1"]
    assert pair["flops"] == 2 * single["flops"] > 0
    assert pair["fraction_of_peak"] == pytest.approx(pair["flops"] / pair["median_s"] / 0.5e12)
    assert pair["ratio_to_torch_eager"] is None  # no torch setting in this run: no ratio is made up
    # End to end, the floor counts the DiT calls the pipeline makes: 2 steps, each a CFG pair (the reef experts
    # have the same widths, so which expert a step uses does not change the count).
    assert rows["end_to_end"]["flops"] == 2 * pair["flops"] == 2 * rows["transformer_2_cfg_pair"]["flops"]
    assert result["mp4_encode"]["median_s"] > 0
    # DiT calls per clip, as the run made them: 2 steps, each a CFG pair (two samples through an expert).
    assert (setting["dit_calls_per_clip"], setting["dit_calls_saved_per_clip"]) == (4, 0)
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "t.md").read_text()
    assert "| transformer_cfg_pair |" in table and "onnxruntime fp32 (model)" in table
    assert "| DiT calls per clip | 4 |" in table
    assert str(tmp_path / "t.json") in capsys.readouterr().out


def test_bench_counts_dit_calls_of_a_distilled_schedule(tmp_path):
    """4 Euler steps without guidance: 4 DiT calls per clip where 4 guided steps make 8."""
    assert main(["bench", "--backends", "onnxruntime", "--components", "end_to_end", "--frames", "5", "--height",
                 "16", "--width", "16", "--schedule", "lightning-4step", "--steps", "4", "--guidance", "1",
                 "--runs", "1", "--warmup", "0", "--end-to-end-runs", "1", "--peak-tflops", "0.5", "--out",
                 str(tmp_path), "--name", "d"]) == 0
    [setting] = json.loads((tmp_path / "d.json").read_text())["settings"]
    assert setting["dit_calls_per_clip"] == 4


def test_bench_refuses_an_unknown_backend(tmp_path, capsys):
    assert main(["bench", "--backends", "onnxruntime,tensorflow", "--out", str(tmp_path)]) == 2
    assert "--backends" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_ratios_are_to_torch_eager_of_the_same_component():
    results = [{"backend": "onnxruntime", "components": {"a": {"median_s": 3.0}, "b": {"median_s": 1.0}}},
               {"backend": "torch", "components": {"a": {"median_s": 2.0}}},
               {"backend": "torch.compile", "skipped": "no compiler"}]
    _add_ratios(results)
    assert results[0]["components"]["a"]["ratio_to_torch_eager"] == 1.5
    assert results[0]["components"]["b"]["ratio_to_torch_eager"] is None
    assert results[1]["components"]["a"]["ratio_to_torch_eager"] == 1.0


def test_measure_counts_runs_and_orders_percentiles():
    calls = []
    timing = measure(lambda: calls.append(1), warmup=2, runs=7)
    assert len(calls) == 9 and len(timing.runs) == 7
    summary = timing.summary()
    assert summary["p10_s"] <= summary["median_s"] <= summary["p90_s"] and summary["runs"] == 7


def test_precision_is_read_from_the_artifact(tmp_path):
    from wanrt.benchmarks.settings import artifact_precision
    from wanrt.reef import default_model_dir

    assert artifact_precision(default_model_dir()) == "fp32"
    manifest = json.loads((default_model_dir() / "manifest.json").read_text())
    for name in ("transformer", "transformer_2"):
        manifest["graphs"][name]["dtype"] = "bf16"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert artifact_precision(tmp_path) == "bf16"
    manifest["quantization"] = {"mode": "int8"}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert artifact_precision(tmp_path) == "int8"
