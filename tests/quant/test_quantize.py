"""`wanrt quantize` on the tiny two-expert artifact: Q/DQ placement, the artifact it writes, the gate, FP8.

The placement checks parse the quantized graphs here, independently of wanrt.quant.placement, and take each
node's torch module from the unquantized graph's exporter metadata (ONNX node names are opaque).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

# find_spec, not importorskip: importing ModelOpt here would bypass wanrt's own import of it.
if importlib.util.find_spec("modelopt") is None:
    pytest.skip("needs the quant extra (nvidia-modelopt)", allow_module_level=True)

from wanrt.cli import main  # noqa: E402
from wanrt.engine.artifact import load_artifact, sha256_file  # noqa: E402
from wanrt.quant.quantizer import QuantizeConfig, quantize_artifact  # noqa: E402

pytestmark = pytest.mark.slow

EXPERTS = ("transformer", "transformer_2")
SIZE = {"frames": 5, "height": 32, "width": 32}
# Two calibration prompts x 4 steps: timesteps 999, 900 go to the high-noise expert, 750, 500 to the low-noise.
CALIB = ("A school of fish swims left in deep blue water.", "A turtle sinks slowly in murky green water.")
REPORT = ("A glowing jellyfish rises over a red vent.",)
QUANTIZED_MODULE = re.compile(r"^blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ffn\.net\.(0\.proj|2))$")


def _config(**overrides: object) -> QuantizeConfig:
    return QuantizeConfig(**{"calib_prompts": CALIB, "calib_steps": 4, "report_prompts": REPORT, **SIZE,
                             **overrides})


@pytest.fixture(scope="module")
def int8_dir(tiny_artifact_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("quant") / "tiny-int8"
    quantize_artifact(tiny_artifact_dir, out, _config())
    return out


def _modules(graph_path: Path) -> dict[str, str]:
    """node name -> torch module path (root stripped), from the exporter's name-scope metadata."""
    model = onnx.load(graph_path, load_external_data=False)
    out = {}
    for node in model.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        scopes = [s for s in ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]")) if s][:-1]
        if scopes:
            deepest = max(scopes, key=len)
            out[node.name] = deepest[len(scopes[0]) + 1:] if deepest.startswith(scopes[0] + ".") else ""
    return out


def _qdq_view(path: Path) -> tuple[onnx.GraphProto, dict, dict, dict]:
    graph = onnx.load(path).graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return graph, inits, producer, consumers


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _check_graph(art: Path, src: Path, name: str, weight_type: int) -> set[str]:
    """Asserts the placement rules on one quantized expert; returns the names of its quantized nodes."""
    modules = _modules(src / f"{name}.onnx")
    graph, inits, producer, consumers = _qdq_view(art / f"{name}.onnx")
    quantized = set()
    for node in graph.node:
        dq = [producer.get(i) for i in node.input]
        if not any(p is not None and p.op_type == "DequantizeLinear" for p in dq):
            continue
        quantized.add(node.name)
        assert node.op_type == "MatMul", f"{node.name}: Q/DQ on a {node.op_type}"
        act, weight = dq[0], dq[1]
        # Weight: a constant of the mode's type, symmetric, one scale per output channel (axis 1 of K x N).
        w = inits[weight.input[0]]
        assert w.data_type == weight_type and len(w.dims) == 2
        assert _attr(weight, "axis", 1) == 1
        assert list(inits[weight.input[1]].dims) == [w.dims[1]]
        assert not numpy_helper.to_array(inits[weight.input[2]]).astype(np.float32).any()
        # Activation: a Q/DQ pair with a single (per-tensor) scale and zero point 0.
        assert act.op_type == "DequantizeLinear" and producer[act.input[0]].op_type == "QuantizeLinear"
        assert numpy_helper.to_array(inits[act.input[1]]).size == 1
        assert not numpy_helper.to_array(inits[act.input[2]]).astype(np.float32).any()
    # Exactly the attention projections and feed-forward MatMuls carry Q/DQ.
    expected = {n for n, m in modules.items() if QUANTIZED_MODULE.match(m) and n in {x.name for x in graph.node}
                and next(x for x in graph.node if x.name == n).op_type == "MatMul"}
    assert quantized == expected
    # No dequantized tensor reaches anything else: norms, modulation, embeddings, attention scores stay FP32.
    for node in graph.node:
        if node.op_type == "DequantizeLinear":
            assert {c.name for c in consumers[node.output[0]]} <= quantized
    return quantized


@pytest.mark.parametrize("name", EXPERTS)
def test_placement_rules(int8_dir, tiny_artifact_dir, name):
    quantized = _check_graph(int8_dir, tiny_artifact_dir, name, onnx.TensorProto.INT8)
    assert len(quantized) == 2 * 10  # 2 blocks x (4 self-attn + 4 cross-attn + 2 feed-forward)
    manifest = json.loads((int8_dir / "manifest.json").read_text())
    listed = manifest["quantization"]["graphs"][name]
    assert {q["name"] for q in listed["quantized"]} == quantized
    excluded = {e["module"]: e for e in listed["excluded"]}
    # The sensitive parts are listed as left out, and none of them carries Q/DQ.
    for module in ("patch_embedding", "condition_embedder.time_embedder.linear_1",
                   "condition_embedder.time_embedder.linear_2", "condition_embedder.time_proj", "proj_out",
                   "condition_embedder.text_embedder.linear_1"):
        assert module in excluded, module
        assert excluded[module]["name"] not in quantized
    # Attention stays one high-precision operator (no score MatMuls left to leave out), in both forms.
    assert _op_count(int8_dir / f"{name}.onnx", "Attention") == 4
    assert _op_count(int8_dir / f"{name}.ort.onnx", "MultiHeadAttention") == 4
    assert not any(_op_count(int8_dir / f"{name}{form}", "Softmax") for form in (".onnx", ".ort.onnx"))
    assert _op_count(int8_dir / f"{name}.ort.onnx", "DequantizeLinear") == \
        _op_count(int8_dir / f"{name}.onnx", "DequantizeLinear") > 0


def _op_count(path: Path, op_type: str) -> int:
    return sum(n.op_type == op_type for n in onnx.load(path, load_external_data=False).graph.node)


def test_artifact_manifest_and_untouched_parts(int8_dir, tiny_artifact_dir):
    manifest = load_artifact(int8_dir)  # hashes verified
    src = load_artifact(tiny_artifact_dir)
    for name in ("text_encoder", "vae_decoder_init", "vae_decoder_step"):
        for rel in src.graphs[name]["files"]:
            assert sha256_file(int8_dir / rel) == sha256_file(tiny_artifact_dir / rel), rel
    for name in EXPERTS:
        assert manifest.files[f"{name}.onnx"] != src.files[f"{name}.onnx"]
        # The onnxruntime attention form is remade from the quantized graph, not copied from the FP32 one.
        assert manifest.graphs[name]["attention"]["onnxruntime"]["file"] == f"{name}.ort.onnx"
        assert manifest.files[f"{name}.ort.onnx"] != src.files[f"{name}.ort.onnx"]
    block = json.loads((int8_dir / "manifest.json").read_text())["quantization"]
    assert block["mode"] == "int8" and block["tools"]["nvidia-modelopt"]
    assert block["unquantized"]["text_encoder"] == "fp32" and block["unquantized"]["vae_decoder"] == "fp32"
    assert block["calibration"]["prompts"] == 2 and len(block["calibration"]["prompts_sha256"]) == 64
    assert block["calibration"]["calls"] == {"transformer": 4, "transformer_2": 4}
    report = json.loads((int8_dir / "quant_report.json").read_text())
    for name in EXPERTS:
        rows = report["experts"][name]["timesteps"]
        assert [r["timestep"] for r in rows] == ([999.0, 900.0] if name == "transformer" else [750.0, 500.0])
        assert all(r["cosine"] > 0.999 for r in rows)
    assert report["end_to_end"]["psnr_db_min"] > 35 and report["gate"]["passed"]
    assert not list(int8_dir.parent.glob(".*partial*"))


def test_generate_runs_quantized_artifact(int8_dir, tiny_artifact_dir, tmp_path):
    args = ["generate", "--prompt", "a turtle drifts", "--backend", "onnxruntime", *_size_args(), "--steps", "4",
            "--seed", "0"]  # the same noise for both (an unset seed is drawn at random)
    assert main([*args, "--model", str(int8_dir), "--out", str(tmp_path / "q.npy")]) == 0
    assert main([*args, "--model", str(tiny_artifact_dir), "--out", str(tmp_path / "f.npy")]) == 0
    q, f = np.load(tmp_path / "q.npy"), np.load(tmp_path / "f.npy")
    assert q.shape == f.shape == (5, 32, 32, 3)
    assert np.abs(q.astype(int) - f.astype(int)).mean() < 2


def _size_args() -> list[str]:
    return [a for k, v in SIZE.items() for a in (f"--{k}", str(v))]


def test_gate_refuses_and_writes_nothing(tiny_artifact_dir, tmp_path, capsys):
    prompts = tmp_path / "one.txt"
    prompts.write_text("# one prompt, one step: a single calibration call per expert\nA ray swims right.\n")
    out = tmp_path / "refused"
    code = main(["quantize", "--model", str(tiny_artifact_dir), "--out", str(out), "--calib-prompts", str(prompts),
                 "--calib-steps", "2", *_size_args(), "--min-psnr", "1000"])
    assert code == 1
    assert "gate" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == [prompts]


def test_refuses_bad_input(int8_dir, tiny_artifact_dir, tmp_path):
    assert main(["quantize", "--model", str(int8_dir), "--out", str(tmp_path / "x")]) == 2  # already quantized
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    assert main(["quantize", "--model", str(tiny_artifact_dir), "--out", str(tmp_path / "busy")]) == 2
    assert main(["quantize", "--model", str(tiny_artifact_dir), "--out", str(tmp_path / "y"),
                 "--calib-prompts", str(tmp_path / "missing.txt")]) == 2


def test_fp8_graphs_and_quantized_text_encoder(tiny_artifact_dir, tmp_path):
    out = tmp_path / "tiny-fp8"
    report = quantize_artifact(tiny_artifact_dir, out, _config(mode="fp8", quantize_text_encoder=True))
    for name in EXPERTS:
        _check_graph(out, tiny_artifact_dir, name, onnx.TensorProto.FLOAT8E4M3FN)
    graph, inits, producer, _ = _qdq_view(out / "text_encoder.onnx")
    qdq = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert qdq and all(inits[n.input[2]].data_type == onnx.TensorProto.FLOAT8E4M3FN for n in qdq)
    block = json.loads((out / "manifest.json").read_text())["quantization"]
    assert block["mode"] == "fp8" and block["unquantized"]["text_encoder"] == "quantized"
    assert block["onnxruntime_session_config"] == {"session.disable_quant_qdq": "1"}
    assert load_artifact(out).quantization.onnxruntime_session_config == block["onnxruntime_session_config"]
    # onnxruntime loads FP8 Q/DQ graphs only with that config: the serving backend reads it from the manifest.
    args = ["generate", "--prompt", "a turtle drifts", "--backend", "onnxruntime", *_size_args(), "--steps", "2"]
    assert main([*args, "--model", str(out), "--out", str(tmp_path / "fp8.npy")]) == 0
    assert report["text_encoder"]["cosine_min"] > 0.99
    assert all(e["cosine_min"] > 0.99 for e in report["experts"].values())


# Models never seen (tests/drawn_models.py). Issue 31: on three such models quantize failed 5 runs in 6, its
# onnxruntime-form check comparing whole Q/DQ graphs at the fp32 tolerance (export/form_check.py says why that
# cannot hold); it now checks the forms attention by attention, and must pass on any model export passed.
@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_quantize_drawn_model(drawn_wan, drawn_artifact_dir, tmp_path, mode):
    out = tmp_path / f"drawn-{mode}"
    # 8 steps: a boundary drawn as low as 0.5 still sends the low-noise expert calls to calibrate on.
    report = quantize_artifact(drawn_artifact_dir, out, _config(mode=mode, calib_steps=8,
                                                                calib_prompts=(drawn_wan.prompt, *CALIB)))
    manifest = load_artifact(out)
    experts = manifest.spec.experts
    assert experts == (("transformer", "transformer_2") if drawn_wan.two_experts else ("transformer",))
    for name in experts:
        # Every block's 4 + 4 attention projections and 2 feed-forward MatMuls, in both forms.
        assert len(manifest.quantization.graphs[name].quantized) == 10 * drawn_wan.layers
        assert _op_count(out / f"{name}.ort.onnx", "MultiHeadAttention") == 2 * drawn_wan.layers
        assert _op_count(out / f"{name}.ort.onnx", "DequantizeLinear") == \
            _op_count(out / f"{name}.onnx", "DequantizeLinear") > 0
    print(f"{drawn_wan.id} {mode}: worst clip {report['end_to_end']['psnr_db_min']:.1f} dB")
    assert report["gate"]["passed"]


def test_quantize_refuses_a_wrong_onnxruntime_form(drawn_wan, drawn_artifact_dir, tmp_path, tmp_path_factory,
                                                  monkeypatch):
    """The check still has teeth: a copy whose attention uses a wrong scale fails quantize, nothing written.

    Each graph's PTQ runs in a process of its own (quant/isolated.py), so the wrong copy is planted there: a
    sitecustomize on the children's PYTHONPATH wraps the writer of the onnxruntime form before wanrt runs."""
    from wanrt.quant import QuantizationError

    plant = tmp_path_factory.mktemp("plant")
    (plant / "sitecustomize.py").write_text(f"""
import sys
sys.path.insert(0, {str(Path(__file__).parents[1])!r})  # tests/, for attention_forms
from attention_forms import plant_in_form
from wanrt.export import onnxruntime_attention

real = onnxruntime_attention.write_onnxruntime_variant

def wrong_scale(graph_path, **kwargs):
    variant = real(graph_path, **kwargs)
    if variant is not None:
        plant_in_form(variant.path, "scale", {drawn_wan.head_dim}).replace(variant.path)
    return variant

onnxruntime_attention.write_onnxruntime_variant = wrong_scale
""", encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, (str(plant), os.environ.get("PYTHONPATH")))))
    out = tmp_path / "refused"
    with pytest.raises(QuantizationError, match=r"transformer\.ort\.onnx: the attention writing .* differs"):
        quantize_artifact(drawn_artifact_dir, out, _config(calib_prompts=CALIB[:1], calib_steps=8))
    assert not out.exists() and list(tmp_path.iterdir()) == []
