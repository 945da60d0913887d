"""Attention as one operator: what export writes (issue 22), the onnxruntime form, and how backends pick a form.

The full exports are conftest's session fixtures; the rewrite itself is also checked on hand-made graphs, where
every case (plain, masked, causal, grouped heads) can be built exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from attention_forms import cpu_session, plant_in_form
from onnx import TensorProto, helper, numpy_helper

from wanrt.engine.artifact import MANIFEST_NAME, load_artifact
from wanrt.engine.graph_forms import materialises_attention, onnxruntime_file, referenced_files
from wanrt.engine.loader import load_pipeline
from wanrt.errors import ArtifactError, ExportVerificationError
from wanrt.export import attention
from wanrt.export.onnxruntime_attention import CONTRIB_OPERATOR, variant_path, write_onnxruntime_variant

EXPERTS = ("transformer", "transformer_2")


def _ops(path: Path) -> dict[str, int]:
    model = onnx.load(path, load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_experts_carry_attention_as_one_operator(tiny_artifact_dir):
    manifest = load_artifact(tiny_artifact_dir)
    assert manifest.opset == attention.OPSET == 23
    for name in EXPERTS:
        entry = manifest.graphs[name]
        ops = _ops(tiny_artifact_dir / entry["file"])
        # Two layers x (self + cross) attention, and no score matrix anywhere outside the operator.
        assert ops.get("Attention") == 4 and "Softmax" not in ops, ops
        assert entry["attention"]["nodes"] == 4 and entry["attention"]["softmax_nodes"] == 0
        ort_entry = entry["attention"]["onnxruntime"]
        assert ort_entry == {"file": f"{name}.ort.onnx", "operator": "com.microsoft.MultiHeadAttention",
                             "nodes": 4, "kept": 0}
        ort_ops = _ops(tiny_artifact_dir / ort_entry["file"])
        assert ort_ops.get(CONTRIB_OPERATOR) == 4 and "Attention" not in ort_ops and "Softmax" not in ort_ops
        assert ort_entry["file"] in manifest.files  # hashed like every other graph
        # Both forms were checked against PyTorch at two shapes.
        for file in (entry["file"], ort_entry["file"]):
            shapes = {json.dumps(p["shapes"]) for p in manifest.parity if p["graph"] == file}
            assert len(shapes) == 2, file
    # The text encoder's attention has a mask (its relative position bias): kept as the standard operator.
    text = manifest.graphs["text_encoder"]["attention"]
    assert text["nodes"] == 2 and "onnxruntime" not in text
    # The VAE's mid-block attention runs in onnxruntime's linear-memory form too.
    for name in ("vae_decoder_init", "vae_decoder_step"):
        assert manifest.graphs[name]["attention"]["onnxruntime"]["nodes"] == 1


def test_onnxruntime_form_shares_the_weight_file(tiny_artifact_dir):
    """Threshold 0 puts weights in <graph>.onnx.data: the onnxruntime form points at it, it has no copy."""
    def inline_and_locations(name: str) -> tuple[set[str], set[str]]:
        model = onnx.load(tiny_artifact_dir / name, load_external_data=False)
        inline = {t.name for t in model.graph.initializer if not t.external_data}
        return inline, {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}

    inline, locations = inline_and_locations("transformer.ort.onnx")
    base_inline, base_locations = inline_and_locations("transformer.onnx")
    assert locations == base_locations == {"transformer.onnx.data"}
    # Only the rewrite's two reshape targets are new, and they are inline.
    assert inline - base_inline == {"wanrt_mha_merge_heads", "wanrt_mha_split_2_heads"}
    assert not (tiny_artifact_dir / "transformer.ort.onnx.data").exists()


def test_onnxruntime_backend_loads_the_onnxruntime_form(tiny_artifact_dir):
    manifest = load_artifact(tiny_artifact_dir)
    pipeline = load_pipeline(tiny_artifact_dir, "onnxruntime")
    assert pipeline.identity["transformer_sha256"] == manifest.files["transformer.ort.onnx"]
    assert pipeline.identity["text_encoder_sha256"] == manifest.files["text_encoder.onnx"]


def test_unlisted_onnxruntime_form_is_refused(tiny_artifact_dir, tmp_path):
    art = Path(shutil.copytree(tiny_artifact_dir, tmp_path / "art"))
    path = art / MANIFEST_NAME
    data = json.loads(path.read_text())
    del data["files"]["transformer.ort.onnx"]
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"graph 'transformer' file 'transformer.ort.onnx' is not listed"):
        load_artifact(art, verify_hashes=False)


def test_graph_forms_of_old_and_new_entries():
    old = {"file": "transformer.onnx"}  # exported before attention was one operator
    assert onnxruntime_file(old) == "transformer.onnx" and referenced_files(old) == ["transformer.onnx"]
    assert materialises_attention(old, "onnxruntime") and materialises_attention(old, "tensorrt")
    new = {"file": "transformer.onnx", "attention": {"operator": "Attention", "nodes": 4, "onnxruntime": {
        "file": "transformer.ort.onnx", "nodes": 4, "kept": 0}}}
    assert onnxruntime_file(new) == "transformer.ort.onnx"
    assert referenced_files(new) == ["transformer.onnx", "transformer.ort.onnx"]
    assert not materialises_attention(new, "onnxruntime") and not materialises_attention(new, "tensorrt")
    masked = {"file": "text_encoder.onnx", "attention": {"operator": "Attention", "nodes": 2}}
    assert materialises_attention(masked, "onnxruntime") and not materialises_attention(masked, "tensorrt")
    assert not materialises_attention({"file": "x.onnx", "attention": {"nodes": 0}}, "onnxruntime")


def _attention_graph(path: Path, *, heads: int = 3, kv_heads: int | None = None, mask: bool = False,
                     causal: bool = False, scale: float | None = None) -> Path:
    kv_heads = kv_heads or heads
    inputs = [helper.make_tensor_value_info("q", TensorProto.FLOAT, ["b", heads, "s", 8]),
              helper.make_tensor_value_info("k", TensorProto.FLOAT, ["b", kv_heads, "l", 8]),
              helper.make_tensor_value_info("v", TensorProto.FLOAT, ["b", kv_heads, "l", 8])]
    names = ["q", "k", "v"]
    if mask:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["s", "l"]))
        names.append("mask")
    attrs = {"is_causal": int(causal)} | ({"scale": scale} if scale is not None else {})
    # A weight after the attention, so the rewritten graph must keep initializers working.
    weight = numpy_helper.from_array(np.linspace(-1, 1, 8, dtype=np.float32), "w")
    nodes = [helper.make_node("Attention", names, ["y"], "attn", **attrs),
             helper.make_node("Mul", ["y", "w"], ["out"], "mul")]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10), path)
    return path


def _run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


@pytest.mark.parametrize("scale", [None, 0.2])
def test_rewrite_matches_the_standard_operator(tmp_path, scale):
    path = _attention_graph(tmp_path / "a.onnx", scale=scale)
    variant = write_onnxruntime_variant(path)
    assert variant is not None and variant.path == variant_path(path) == tmp_path / "a.ort.onnx"
    assert (variant.rewritten, variant.kept) == (1, 0)
    rng = np.random.default_rng(0)
    # Cross-attention shape: 5 queries over 7 keys, batch 2.
    feeds = {"q": rng.standard_normal((2, 3, 5, 8), dtype=np.float32),
             "k": rng.standard_normal((2, 3, 7, 8), dtype=np.float32),
             "v": rng.standard_normal((2, 3, 7, 8), dtype=np.float32)}
    expected, got = _run(path, feeds), _run(variant.path, feeds)
    assert got.shape == expected.shape == (2, 3, 5, 8)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # And the standard operator itself is the reference maths (softmax(q k^T * scale) v).
    logits = feeds["q"] @ feeds["k"].transpose(0, 1, 3, 2) * (scale or 8 ** -0.5)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    reference = (weights / weights.sum(-1, keepdims=True)) @ feeds["v"] * np.linspace(-1, 1, 8, dtype=np.float32)
    np.testing.assert_allclose(expected, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", [{"mask": True}, {"causal": True}, {"kv_heads": 1}],
                         ids=["mask", "causal", "grouped-heads"])
def test_attention_the_contrib_kernel_cannot_take_is_kept(tmp_path, case):
    path = _attention_graph(tmp_path / "a.onnx", **case)
    assert write_onnxruntime_variant(path) is None
    assert not variant_path(path).exists()


def test_export_refuses_an_expert_with_softmax(tmp_path):
    """An attention that bypasses scaled_dot_product_attention would export as MatMul -> Softmax -> MatMul."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "softmax.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10), path)
    with pytest.raises(ExportVerificationError, match="0 Attention and 1 Softmax"):
        attention.record(path, lambda _variant: [], required=True)
    entry, parity = attention.record(path, lambda _variant: [])  # the text encoder/VAE are only recorded
    assert entry["nodes"] == 0 and entry["softmax_nodes"] == 1 and parity == []


def test_head_counts_come_from_the_source_graph_when_lost(tmp_path):
    """ModelOpt's quantized graphs keep tensor names but not the exporter's shapes: the FP32 graph supplies them."""
    source = _attention_graph(tmp_path / "source.onnx")
    model = onnx.load(source)
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            dim.dim_param = "unknown"  # as symbolic re-inference leaves them
    derived = tmp_path / "derived.onnx"
    onnx.save(model, derived)
    assert write_onnxruntime_variant(derived) is None
    variant = write_onnxruntime_variant(derived, shapes_from=source)
    assert variant is not None and variant.rewritten == 1



def _expert_feeds(manifest, batch: int = 2, patches: tuple[int, int, int] = (2, 2, 3), text: int = 9,
                  seed: int = 0) -> dict[str, np.ndarray]:
    spec = manifest.spec
    rng = np.random.default_rng(seed)
    f, h, w = (n * p for n, p in zip(patches, spec.patch_size, strict=True))
    return {"hidden_states": rng.standard_normal((batch, spec.latent_channels, f, h, w), dtype=np.float32),
            "timestep": rng.uniform(0, 1000, batch).astype(np.float32),
            "encoder_hidden_states": rng.standard_normal((batch, text, spec.text_dim), dtype=np.float32)}


@pytest.mark.slow  # exports each drawn model (once per session)
def test_drawn_experts_carry_attention_as_one_operator(drawn_wan, drawn_artifact_dir):
    """On a model never seen: every layer's self- and cross-attention is one operator in both forms, and the
    onnxruntime form is the graph's computation (export/form_check.py) at fp32 tolerance."""
    from wanrt.export.form_check import check_onnxruntime_form

    manifest = load_artifact(drawn_artifact_dir)
    experts = ("transformer", "transformer_2") if drawn_wan.two_experts else ("transformer",)
    assert manifest.spec.experts == experts
    for name in experts:
        entry = manifest.graphs[name]
        ops, ort_ops = _ops(drawn_artifact_dir / entry["file"]), _ops(drawn_artifact_dir / f"{name}.ort.onnx")
        assert ops.get("Attention") == 2 * drawn_wan.layers and "Softmax" not in ops, ops
        assert ort_ops.get(CONTRIB_OPERATOR) == 2 * drawn_wan.layers and "Attention" not in ort_ops, ort_ops
        assert entry["attention"]["onnxruntime"]["nodes"] == 2 * drawn_wan.layers
        error = check_onnxruntime_form(drawn_artifact_dir / entry["file"], drawn_artifact_dir / f"{name}.ort.onnx",
                                       _expert_feeds(manifest), cpu_session, tolerance=1e-4)
        print(f"{drawn_wan.id} {name}: attention forms agree to {error:.1e}")


@pytest.mark.slow
@pytest.mark.parametrize(("change", "message"), [("scale", "differs from"), ("heads", "differs from"),
                                                 ("outside", "nodes outside attention differ")])
def test_a_wrong_onnxruntime_form_fails_the_form_check(drawn_wan, drawn_artifact_dir, tmp_path, change, message):
    from wanrt.export.form_check import check_onnxruntime_form

    art = Path(shutil.copytree(drawn_artifact_dir, tmp_path / "art"))
    feeds = _expert_feeds(load_artifact(art))
    planted = plant_in_form(art / "transformer.ort.onnx", change, drawn_wan.head_dim)
    with pytest.raises(ExportVerificationError, match=message):
        check_onnxruntime_form(art / "transformer.onnx", planted, feeds, cpu_session, tolerance=1e-4)
