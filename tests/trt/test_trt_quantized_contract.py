"""The torch route's quantized experts through `wanrt build-engines` against the real TensorRT 10 and 11 APIs
(contract/scenario.py --only-build): the parser must be handed each expert's attention as the fused ONNX
Attention operator whose Q, K and V come through E4M3 QuantizeLinear -> DequantizeLinear, with its softmax
quantization recorded, and no Softmax or onnxruntime-only operator anywhere.

The tiny two-expert folder runs in the slow tier; the full-width Wan2.2-A14B expert cut to two layers
(benchmarks/a14b_folder.py: dim 5120, 40 heads, ffn 13824) is minutes and ~8 GB of memory: run it under the
shared lock (``flock /work/wt/heavy.lock pytest tests/trt/test_trt_quantized_contract.py``).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

if importlib.util.find_spec("modelopt") is None:
    pytest.skip("needs the quant extra (nvidia-modelopt)", allow_module_level=True)

from test_trt_contract import _scenario  # noqa: E402

from wanrt.cli import main  # noqa: E402

pytestmark = pytest.mark.slow
SMALL = ["--frames", "5", "--height", "32", "--width", "32", "--calib-steps", "2", "--report-size", "5", "32", "32",
         "--report-steps", "2", "--device", "cpu", "--min-psnr", "0"]


@pytest.fixture(scope="module")
def tiny_fp8(tiny_model_dir, tiny_artifact_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tq") / "tiny-fp8"
    prompts = out.parent / "prompts.txt"
    prompts.write_text("a school of fish swims left\n")
    assert main(["quantize", "--model", str(tiny_model_dir), "--out", str(out), "--mode", "fp8", *SMALL,
                 "--base", str(tiny_artifact_dir), "--high-precision-blocks", "none",
                 "--calib-prompts", str(prompts), "--report-prompts", str(prompts)]) == 0
    return out


def _check_parser_saw_fp8_attention(report: dict, experts: tuple[str, ...], attention_per_expert: int) -> None:
    assert "error" not in report, report.get("error")
    assert report["violations"] == [] and report["steps"]["build"]["rc"] == 0, report["steps"]["build"]["log"]
    built = {Path(b["onnx"]).stem: b for b in report["built"]}
    for name in experts:
        entry = built[name]
        assert entry["strongly_typed"] and set(entry["flags"]) <= {"TF32", "WEIGHT_STREAMING"}
        assert {"Attention", "QuantizeLinear", "DequantizeLinear"} <= set(entry["op_types"])
        assert not {"Softmax", "MultiHeadAttention"} & set(entry["op_types"])
        assert len(entry["attention"]) == attention_per_expert
        for attention in entry["attention"]:
            assert attention["qkv"] == ["QDQ:FLOAT8E4M3FN"] * 3, attention
            assert json.loads(attention["softmax"]) == {"quantize_to": "fp8", "scale": 1 / 448}


@pytest.mark.parametrize("major", [10, 11])
def test_fp8_attention_qdq_reaches_the_parser(major, tiny_fp8, tmp_path):
    report = _scenario(major, tiny_fp8, tmp_path, "--only-build")
    _check_parser_saw_fp8_attention(report, ("transformer", "transformer_2"), attention_per_expert=4)


@pytest.fixture(scope="module")
def a14b_two_layers(tmp_path_factory) -> Path:
    from wanrt.benchmarks.a14b_folder import build_a14b_folder

    return build_a14b_folder(tmp_path_factory.mktemp("a14b") / "a14b-2", layers=2)


def _quantize_in_a_process(model: Path, out: Path, *args: str) -> tuple[dict, int]:
    """`wanrt quantize` in a process of its own; returns its report and that process's peak RSS (bytes)."""
    code = ("import resource, sys; from wanrt.cli import main; rc = main(sys.argv[1:]); "
            "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
    run = subprocess.run([sys.executable, "-c", code, "quantize", "--model", str(model), "--out", str(out),
                          *SMALL, *args], capture_output=True, text=True, timeout=3600)
    assert run.returncode == 0, run.stderr[-4000:]
    peak = int(next(line.split()[1] for line in run.stdout.splitlines() if line.startswith("PEAK_RSS_KIB"))) * 1024
    return json.loads((out / "quant_report.json").read_text()), peak


@pytest.mark.parametrize("mode", ["fp8", "int8"])
def test_full_width_a14b_expert_quantizes_in_bf16_within_its_estimate(mode, a14b_two_layers, tmp_path):
    from wanrt.engine.artifact import load_artifact
    from wanrt.quant import qdq_graph

    out = tmp_path / f"a14b-{mode}"
    report, peak = _quantize_in_a_process(a14b_two_layers, out, "--mode", mode, "--high-precision-blocks",
                                          "none" if mode == "fp8" else "0")
    manifest = load_artifact(out)
    dtypes = qdq_graph.compute_dtypes(out / "transformer.onnx")
    # Non-quantized compute is bf16; fp32 only where diffusers itself keeps it (the time embedder).
    assert set(dtypes["quantized"]) == {"BFLOAT16"}
    assert set(dtypes["high_precision"]) <= {"BFLOAT16", "FLOAT"}
    assert all(m.startswith("condition_embedder.time_embedder") for m in dtypes["high_precision"].get("FLOAT", []))
    attention = manifest.graphs["transformer"]["attention"]
    assert attention["nodes"] == 4 and attention["softmax_nodes"] == 0
    assert attention["quantized"]["nodes"] == (4 if mode == "fp8" else 0)
    # Peak host memory against the route's own estimate (on the CPU the expert and its activations are host
    # memory too), plus the interpreter with torch, ModelOpt and the exporter loaded (~1 GiB).
    estimate = report["memory_estimate"]
    allowed = (estimate["host_gib"] + estimate["gpu_gib"]) * 1.15 * 1024**3 + 1.5 * 1024**3
    print(f"{mode}: peak RSS {peak / 1024**3:.2f} GiB, estimate {estimate}, allowed {allowed / 1024**3:.2f} GiB")
    assert peak <= allowed
    if mode == "fp8":
        scenario = _scenario(11, out, tmp_path / "trt", "--only-build")
        _check_parser_saw_fp8_attention(scenario, ("transformer",), attention_per_expert=4)
