"""`wanrt build-engines` decisions made without TensorRT: per-graph precision and flags, quantization checks,
GPU capability checks, and the CLI's refusals (all before any TensorRT import or GPU work)."""

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
    FLAGS,
    check_precision_supported,
    graph_precision,
    onnx_quantization,
    plan_build,
)
from wanrt.engine.tensorrt.profiles import VideoShape, compute_profiles
from wanrt.errors import InvalidRequestError


def test_plan_builds_every_graph_with_its_precision(tiny_artifact_dir, artifact, limits):
    plan = plan_build(tiny_artifact_dir, artifact, "fp16", limits, compute_capability=(9, 0))
    by_graph = {b.graph: b for b in plan.graphs}
    assert list(by_graph) == list(artifact.graphs)
    precisions = {g: b.precision for g, b in by_graph.items()}
    assert precisions == {"text_encoder": "bf16", "transformer": "fp16", "transformer_2": "fp16",
                          "vae_decoder_init": "fp32", "vae_decoder_step": "fp32"}
    assert by_graph["transformer"].flags == ("FP16", "TF32") and by_graph["vae_decoder_step"].flags == ("TF32",)
    profiles = compute_profiles(artifact, limits)
    for graph, build in by_graph.items():
        assert build.profiles == (profiles[graph],)
        assert build.onnx_file == artifact.graphs[graph]["file"]
        assert build.onnx_sha256 == artifact.files[build.onnx_file]
        assert build.engine_file == f"{graph}.plan"
    assert plan.opt == VideoShape(MAX_FRAMES, MAX_HEIGHT, MAX_WIDTH)


def test_precision_policy():
    experts = ("transformer", "transformer_2")
    for precision in ("fp16", "bf16", "int8", "fp8"):
        assert graph_precision("transformer_2", precision, experts, (9, 0)) == precision
        assert graph_precision("vae_decoder_init", precision, experts, (9, 0)) == "fp32"
    assert graph_precision("text_encoder", "fp16", experts, (8, 6)) == "bf16"
    assert graph_precision("text_encoder", "fp16", experts, (7, 5)) == "fp32"  # Turing has no bf16
    # Quantized experts keep bf16 for their unquantized layers.
    assert FLAGS["int8"] == ("INT8", "BF16", "TF32") and FLAGS["fp8"] == ("FP8", "BF16", "TF32")


@pytest.mark.parametrize(("precision", "capability", "message"), [
    ("bf16", (7, 5), "bf16 needs compute capability 8.0 or newer; Tesla T4 is 7.5"),
    ("fp8", (8, 6), "fp8 needs compute capability 8.9 or newer; Tesla T4 is 8.6"),
])
def test_gpu_without_the_precision_is_refused(precision, capability, message):
    with pytest.raises(InvalidRequestError, match=message) as err:
        check_precision_supported(precision, capability, "Tesla T4")
    assert err.value.field == "precision"
    check_precision_supported(precision, (9, 0))
    check_precision_supported("fp16", (7, 5))


def test_plan_checks_the_gpu_when_it_has_one(tiny_artifact_dir, artifact, limits):
    with pytest.raises(InvalidRequestError, match="bf16 needs compute capability 8.0 or newer; NVIDIA T4 is 7.5"):
        plan_build(tiny_artifact_dir, artifact, "bf16", limits, compute_capability=(7, 5), device_name="NVIDIA T4")
    plan = plan_build(tiny_artifact_dir, artifact, "fp16", limits, compute_capability=(7, 5))
    assert {b.graph: b.precision for b in plan.graphs}["text_encoder"] == "fp32"


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_quantized_precision_needs_a_quantized_export(tiny_artifact_dir, artifact, limits, precision):
    with pytest.raises(InvalidRequestError) as err:
        plan_build(tiny_artifact_dir, artifact, precision, limits)
    assert err.value.field == "precision"
    assert (f"{precision} is explicit quantization: transformer.onnx needs QuantizeLinear/DequantizeLinear nodes "
            f"of {precision}") in str(err.value)
    assert "it has none" in str(err.value)


def test_unknown_precision(tiny_artifact_dir, artifact, limits):
    with pytest.raises(InvalidRequestError, match="must be one of fp16, bf16, int8, fp8, got 'fp4'"):
        plan_build(tiny_artifact_dir, artifact, "fp4", limits)


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
    (["--precision", "int8"], "--precision: int8 is explicit quantization"),
    (["--workspace-gib", "0"], "--workspace-gib: must be positive"),
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


def test_cli_help_lists_the_command():
    parser = build_parser()
    assert parser.parse_args(["build-engines", "--model", "a", "--out", "b"]).precision == "bf16"
    with pytest.raises(SystemExit):
        parser.parse_args(["build-engines", "--model", "a", "--out", "b", "--precision", "fp4"])


@pytest.mark.skipif(tensorrt_unavailable() is None, reason="tensorrt is usable here: the GPU tests build engines")
def test_cli_without_tensorrt_fails_cleanly(tiny_artifact_dir, tmp_path, capsys):
    assert _build(tiny_artifact_dir, tmp_path / "engines") == 1
    assert "TensorRT is not usable here" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def _quantized_copy(tiny_artifact_dir, artifact, dest, graphs, kind):
    """A copy of the artifact whose ``graphs`` carry one extra Q/DQ pair of ``kind``: only the graph structure
    matters to the build plan (the copy is never run)."""
    shutil.copytree(tiny_artifact_dir, dest)
    files = dict(artifact.files)
    zero_type = {"int8": TensorProto.INT8, "fp8": TensorProto.FLOAT8E4M3FN}[kind]
    for graph in graphs:
        path = dest / artifact.graphs[graph]["file"]
        model = onnx.load(str(path), load_external_data=False)
        first = model.graph.input[0].name
        model.graph.initializer.extend([helper.make_tensor("qdq_scale", TensorProto.FLOAT, [], [0.1]),
                                        helper.make_tensor("qdq_zero", zero_type, [], [0])])
        model.graph.node.extend([helper.make_node("QuantizeLinear", [first, "qdq_scale", "qdq_zero"], ["qdq_q"]),
                                 helper.make_node("DequantizeLinear", ["qdq_q", "qdq_scale", "qdq_zero"],
                                                  ["qdq_dq"])])
        onnx.save(model, str(path))
        files[path.name] = sha256_file(path)
    return dataclasses.replace(artifact, files=files)


def test_quantized_artifact_builds_in_its_own_type(tiny_artifact_dir, artifact, limits, tmp_path):
    experts = ["transformer", "transformer_2"]
    quantized = _quantized_copy(tiny_artifact_dir, artifact, tmp_path / "int8", [*experts, "text_encoder"], "int8")
    plan = plan_build(tmp_path / "int8", quantized, "int8", limits, compute_capability=(9, 0))
    by_graph = {b.graph: b for b in plan.graphs}
    # The quantized text encoder follows its Q/DQ nodes; the VAE keeps fp32.
    assert {g: b.precision for g, b in by_graph.items()} == {
        "text_encoder": "int8", "transformer": "int8", "transformer_2": "int8", "vae_decoder_init": "fp32",
        "vae_decoder_step": "fp32"}
    assert by_graph["transformer"].flags == ("INT8", "BF16", "TF32")
    assert by_graph["transformer"].onnx_sha256 == quantized.files["transformer.onnx"] != artifact.files[
        "transformer.onnx"]
    for wrong in ("bf16", "fp8"):
        with pytest.raises(InvalidRequestError, match=rf"text_encoder\.onnx carries int8 Q/DQ nodes \(a quantized "
                                                      rf"export\): build it with --precision int8, not {wrong}"):
            plan_build(tmp_path / "int8", quantized, wrong, limits)


def test_an_expert_left_unquantized_is_refused(tiny_artifact_dir, artifact, limits, tmp_path):
    quantized = _quantized_copy(tiny_artifact_dir, artifact, tmp_path / "fp8", ["transformer"], "fp8")
    with pytest.raises(InvalidRequestError, match=r"transformer_2\.onnx needs QuantizeLinear/DequantizeLinear nodes "
                                                  r"of fp8 \(make a quantized artifact with `wanrt quantize --mode "
                                                  r"fp8`\); it has none"):
        plan_build(tmp_path / "fp8", quantized, "fp8", limits)
