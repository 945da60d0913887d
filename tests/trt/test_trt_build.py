"""`wanrt build-engines` decisions made without TensorRT: each graph's precision read from its ONNX, quantization
checks, GPU capability checks, memory estimates, and the CLI's refusals (all before any TensorRT import or GPU
work)."""

from __future__ import annotations

import dataclasses
import shutil

import onnx
import pytest
from onnx import TensorProto, helper
from trt_testkit import MAX_FRAMES, MAX_HEIGHT, MAX_WIDTH, tensorrt_unavailable

from wanrt.cli import build_parser, main
from wanrt.engine.artifact import sha256_file
from wanrt.engine.tensorrt.build import (
    check_precision_supported,
    graph_facts,
    onnx_quantization,
    plan_build,
    read_graph_facts,
)
from wanrt.engine.tensorrt.engine_manifest import MemoryOptions
from wanrt.engine.tensorrt.memory import GIB
from wanrt.engine.tensorrt.profiles import VideoShape, compute_profiles
from wanrt.errors import InvalidRequestError


def test_plan_builds_every_graph_in_its_graphs_precision(tiny_artifact_dir, artifact, limits):
    plan = plan_build(tiny_artifact_dir, artifact, limits, compute_capability=(9, 0))
    by_graph = {b.graph: b for b in plan.graphs}
    assert list(by_graph) == list(artifact.graphs)
    # The tiny export is fp32: every engine is fp32 (TF32), whatever the GPU could do.
    assert {g: b.precision for g, b in by_graph.items()} == dict.fromkeys(artifact.graphs, "fp32")
    assert plan.precision == "fp32" and not any(b.weight_streaming for b in plan.graphs)
    profiles = compute_profiles(artifact, limits)
    for graph, build in by_graph.items():
        assert build.profiles == (profiles[graph],)
        assert build.onnx_file == artifact.graphs[graph]["file"]
        assert build.onnx_sha256 == artifact.files[build.onnx_file]
        assert build.engine_file == f"{graph}.plan"
        # Weights are counted exactly: the fp32 initializers' bytes (kept in external data by this export).
        data = tiny_artifact_dir / (build.onnx_file + ".data")
        assert build.memory.weights == pytest.approx(data.stat().st_size, rel=0.05)
        assert build.memory.scratch > 0
    assert plan.opt == VideoShape(MAX_FRAMES, MAX_HEIGHT, MAX_WIDTH)
    assert plan.memory is None  # no GPU given: no memory plan yet


def test_plan_with_a_gpu_plans_memory(tiny_artifact_dir, artifact, limits):
    plan = plan_build(tiny_artifact_dir, artifact, limits, compute_capability=(9, 0), gpu_bytes=80 * GIB)
    assert plan.memory is not None and plan.memory.residency == "resident" and plan.memory.fits
    streaming = plan_build(tiny_artifact_dir, artifact, limits, gpu_bytes=80 * GIB,
                           memory=MemoryOptions(weight_streaming_budget=1024))
    assert streaming.memory.residency == "streaming"
    assert {b.graph for b in streaming.graphs if b.weight_streaming} == {"transformer", "transformer_2"}
    with pytest.raises(InvalidRequestError, match="more than the GPU's") as err:
        plan_build(tiny_artifact_dir, artifact, limits, gpu_bytes=GIB)  # the CUDA context alone fills it
    assert "lower --max-frames" in str(err.value)


def test_plan_picks_weight_streaming_where_nothing_cheaper_fits(tiny_artifact_dir, artifact, limits, monkeypatch):
    # The tiny experts' I/O (a 512-token text embedding) outweighs their weights, so streaming (both experts' I/O
    # on the GPU) can never undercut swapping them; at A14B size the weights are 300x the I/O. As there:
    from wanrt.engine.tensorrt import build

    read = build.read_graph_facts

    def heavier(path):
        facts = read(path)
        expert = path.name.startswith("transformer")
        return dataclasses.replace(facts, weight_bytes=facts.weight_bytes * 300) if expert else facts

    monkeypatch.setattr(build, "read_graph_facts", heavier)
    roomy = plan_build(tiny_artifact_dir, artifact, limits, gpu_bytes=80 * GIB)
    per_stage = dataclasses.replace(roomy.memory, residency="per-stage", text_encoder="release")
    tight = plan_build(tiny_artifact_dir, artifact, limits, gpu_bytes=per_stage.peak - 1)
    assert tight.memory.residency == "streaming" and tight.memory.fits
    assert {b.graph for b in tight.graphs if b.weight_streaming} == {"transformer", "transformer_2"}
    assert "expected cost" in tight.memory.render() and "per step" in tight.memory.render()


def _typed_graph(path, dtype):
    itemsize = 4 if dtype == TensorProto.FLOAT else 2
    w = helper.make_tensor("w", dtype, [64, 64], bytes(64 * 64 * itemsize), raw=True)
    x = helper.make_tensor_value_info("x", dtype, [1, 64])
    y = helper.make_tensor_value_info("y", dtype, [1, 64])
    bias = helper.make_tensor("b", TensorProto.FLOAT, [1], [0.0])  # a small fp32 constant does not decide
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], initializer=[w, bias])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)
    return path


@pytest.mark.parametrize(("dtype", "name"), [(TensorProto.FLOAT, "fp32"), (TensorProto.BFLOAT16, "bf16"),
                                             (TensorProto.FLOAT16, "fp16")])
def test_precision_is_read_from_the_graph(tmp_path, dtype, name):
    facts = read_graph_facts(_typed_graph(tmp_path / "g.onnx", dtype))
    assert facts.precision == name and facts.float_type == name
    assert facts.weight_bytes == 64 * 64 * (4 if name == "fp32" else 2) + 4


def test_the_exports_recorded_dtype_decides_over_weight_bytes(tmp_path):
    path = _typed_graph(tmp_path / "g.onnx", TensorProto.FLOAT)  # most bytes fp32, as a small bf16 DiT's are
    assert graph_facts(path, {"file": "g.onnx", "dtype": "bf16"}).precision == "bf16"
    assert graph_facts(path, {"file": "g.onnx"}).precision == "fp32"  # older manifests: read from the graph


@pytest.mark.parametrize(("precision", "capability", "message"), [
    ("bf16", (7, 5), "the artifact's graphs are bf16, which needs compute capability 8.0 or newer; Tesla T4 is 7.5"),
    ("fp8", (8, 6), "the artifact's graphs are fp8, which needs compute capability 8.9 or newer; Tesla T4 is 8.6"),
])
def test_gpu_without_the_precision_is_refused(precision, capability, message):
    with pytest.raises(InvalidRequestError, match=message) as err:
        check_precision_supported(precision, capability, "Tesla T4")
    assert err.value.field == "model"
    check_precision_supported(precision, (9, 0))
    check_precision_supported("fp16", (7, 5))
    check_precision_supported("fp32", (7, 5))


def _qdq_model(path, zero_point_type, *, op="QuantizeLinear", with_zero_point=True, as_constant=False):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [0.1])
    zero = helper.make_tensor("zero", zero_point_type, [], [0])
    inputs = ["x", "scale", "zero"] if with_zero_point else ["x", "scale"]
    nodes = [helper.make_node(op, inputs, ["q"], domain="trt" if op.startswith("TRT") else ""),
             helper.make_node("DequantizeLinear" if not op.startswith("TRT") else "TRT_FP8DequantizeLinear",
                              inputs, ["y"], domain="trt" if op.startswith("TRT") else "")]
    initializers = [scale]
    if as_constant:
        nodes.insert(0, helper.make_node("Constant", [], ["zero"], value=zero))
    else:
        initializers.append(zero)
    graph = helper.make_graph(nodes, "qdq", [x], [y], initializer=initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)
    return path


def _weights_only_model(path, weight_type):
    # `wanrt quantize` stores weights quantized behind a DequantizeLinear, with no QuantizeLinear of their own.
    w = helper.make_tensor("w", weight_type, [4], [0, 1, 2, 3])
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [0.1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    graph = helper.make_graph([helper.make_node("DequantizeLinear", ["w", "scale"], ["y"])], "dq", [], [y],
                              initializer=[w, scale])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)
    return path


def test_quantization_types_are_read_from_the_graph(tmp_path, tiny_artifact_dir):
    assert onnx_quantization(_weights_only_model(tmp_path / "w8.onnx", TensorProto.INT8)) == {"int8"}
    assert onnx_quantization(_weights_only_model(tmp_path / "wf8.onnx", TensorProto.FLOAT8E4M3FN)) == {"fp8"}
    assert onnx_quantization(_qdq_model(tmp_path / "a.onnx", TensorProto.INT8)) == {"int8"}
    assert onnx_quantization(_qdq_model(tmp_path / "b.onnx", TensorProto.FLOAT8E4M3FN)) == {"fp8"}
    assert onnx_quantization(_qdq_model(tmp_path / "c.onnx", TensorProto.FLOAT8E4M3FN, as_constant=True)) == {"fp8"}
    assert onnx_quantization(_qdq_model(tmp_path / "d.onnx", TensorProto.INT8, with_zero_point=False)) == {"int8"}
    assert onnx_quantization(_qdq_model(tmp_path / "e.onnx", TensorProto.INT4)) == {"int4"}
    assert onnx_quantization(_qdq_model(tmp_path / "f.onnx", TensorProto.FLOAT, op="TRT_FP8QuantizeLinear")) == {"fp8"}
    # The real export (weights in external data, not loaded) has no Q/DQ at all.
    assert onnx_quantization(tiny_artifact_dir / "transformer.onnx") == set()


def _build(tiny_artifact_dir, out, *extra):
    return main(["build-engines", "--model", str(tiny_artifact_dir), "--out", str(out), "--max-frames",
                 str(MAX_FRAMES), "--max-height", str(MAX_HEIGHT), "--max-width", str(MAX_WIDTH), *extra])


@pytest.mark.parametrize(("extra", "message"), [
    (["--max-height", "100"], "--max-height: must be a multiple of 16"),
    (["--max-height", "1280"], "--max-height: 1280 is beyond what the artifact serves"),
    (["--max-frames", "8"], "--max-frames: must be 4k+1, got 8"),
    (["--opt-height", "40"], "--opt-height: must be a valid request size between 16 and 64, got 40"),
    (["--opt-frames", "13"], "--opt-frames: must be a valid request size between 1 and 9, got 13"),
    (["--workspace-gib", "0"], "--workspace-gib: must be positive"),
    (["--weight-streaming-budget", "0"], "--weight-streaming-budget: must be positive"),
    (["--residency", "per-stage", "--weight-streaming-budget", "1"],
     "--weight-streaming-budget: weight streaming is its own residency, not per-stage"),
])
def test_cli_refuses_bad_arguments_before_tensorrt(tiny_artifact_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "engines"
    assert _build(tiny_artifact_dir, out, *extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".engines.partial-*"))


def test_cli_refuses_a_non_empty_out_and_a_non_artifact(tiny_artifact_dir, tmp_path, capsys):
    (tmp_path / "engines").mkdir()
    (tmp_path / "engines" / "keep").write_text("x")
    assert _build(tiny_artifact_dir, tmp_path / "engines") == 2
    assert "--out:" in capsys.readouterr().err and (tmp_path / "engines" / "keep").read_text() == "x"
    assert _build(tmp_path / "engines", tmp_path / "other") == 2
    assert "has no manifest.json: not a wanrt artifact" in capsys.readouterr().err


def test_cli_has_no_precision_option():
    parser = build_parser()
    args = parser.parse_args(["build-engines", "--model", "a", "--out", "b", "--residency", "per-stage"])
    assert args.residency == "per-stage" and args.weight_streaming_budget is None
    with pytest.raises(SystemExit):  # precision comes from the graphs (wanrt export --dtype, wanrt quantize)
        parser.parse_args(["build-engines", "--model", "a", "--out", "b", "--precision", "bf16"])


@pytest.mark.skipif(tensorrt_unavailable() is None, reason="tensorrt is usable here: the GPU tests build engines")
def test_cli_without_tensorrt_fails_cleanly(tiny_artifact_dir, tmp_path, capsys):
    assert _build(tiny_artifact_dir, tmp_path / "engines") == 1
    assert "TensorRT is not usable here" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def _quantized_copy(tiny_artifact_dir, artifact, dest, graphs, kind, suffix=""):
    """A copy of the artifact whose ``graphs`` carry one extra Q/DQ pair of ``kind``: only the graph structure
    matters to the build plan (the copy is never run)."""
    shutil.copytree(tiny_artifact_dir, dest)
    files = dict(artifact.files)
    zero_type = {"int8": TensorProto.INT8, "fp8": TensorProto.FLOAT8E4M3FN}[kind]
    for graph in graphs:
        path = dest / artifact.graphs[graph]["file"]
        model = onnx.load(str(path), load_external_data=False)
        first = model.graph.input[0].name
        q, scale, zero = f"qdq_q{suffix}", f"qdq_scale{suffix}", f"qdq_zero{suffix}"
        model.graph.initializer.extend([helper.make_tensor(scale, TensorProto.FLOAT, [], [0.1]),
                                        helper.make_tensor(zero, zero_type, [], [0])])
        model.graph.node.extend([helper.make_node("QuantizeLinear", [first, scale, zero], [q]),
                                 helper.make_node("DequantizeLinear", [q, scale, zero], [f"qdq_dq{suffix}"])])
        onnx.save(model, str(path))
        files[path.name] = sha256_file(path)
    return dataclasses.replace(artifact, files=files)


def test_quantized_artifact_builds_in_its_own_type(tiny_artifact_dir, artifact, limits, tmp_path):
    experts = ["transformer", "transformer_2"]
    quantized = _quantized_copy(tiny_artifact_dir, artifact, tmp_path / "int8", [*experts, "text_encoder"], "int8")
    plan = plan_build(tmp_path / "int8", quantized, limits, compute_capability=(9, 0))
    by_graph = {b.graph: b for b in plan.graphs}
    assert {g: b.precision for g, b in by_graph.items()} == {
        "text_encoder": "int8", "transformer": "int8", "transformer_2": "int8", "vae_decoder_init": "fp32",
        "vae_decoder_step": "fp32"}
    assert plan.precision == "int8"
    assert by_graph["transformer"].onnx_sha256 == quantized.files["transformer.onnx"] != artifact.files[
        "transformer.onnx"]


def test_a_graph_mixing_quantized_types_is_refused(tiny_artifact_dir, artifact, limits, tmp_path):
    _quantized_copy(tiny_artifact_dir, artifact, tmp_path / "mixed", ["transformer"], "int8")
    quantized = _quantized_copy(tmp_path / "mixed", artifact, tmp_path / "mixed2", ["transformer"], "fp8",
                                suffix="_b")
    with pytest.raises(InvalidRequestError, match=r"transformer\.onnx has Q/DQ nodes of \['fp8', 'int8'\]"):
        plan_build(tmp_path / "mixed2", quantized, limits)

