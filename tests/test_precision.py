"""bf16/fp16 graphs (export/precision.py): fp32 I/O, what stays fp32, parity with PyTorch and with diffusers.

bf16 text encoder and experts are traced from the module loaded in bf16 (as diffusers/transformers run it) and
checked against that module; fp16 graphs and the VAE decoder are exported fp32 and lowered (AutoCast, the rules of
export/precision.py), checked against fp32 PyTorch.

onnxruntime's CPU provider runs the fp16 graphs but has no bf16 MatMul or Conv; bf16 graphs run here emulated
(precision.emulate_bf16: bf16 roundings, fp32 arithmetic), cross-checked against ONNX's reference evaluator.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_parity import FRAMES, HEIGHT, NEGATIVE, PROMPT, STEPS, WIDTH, _noise, _wanrt_frames

from wanrt.engine.artifact import MANIFEST_NAME, load_artifact
from wanrt.errors import InvalidRequestError
from wanrt.export import precision
from wanrt.export.scopes import module_path
from wanrt.measures import max_relative_error

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]  # two exports and a quantization
FLOAT, INT64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
LOW = {"fp16": onnx.TensorProto.FLOAT16, "bf16": onnx.TensorProto.BFLOAT16}
# Measured max relative error of each low-precision graph against PyTorch on the tiny models, with headroom
# (printed by test_manifest_records_dtype_and_parity): the text encoder and experts against the module in the same
# dtype (bf16 measured 4e-3..1.2e-2), the VAE decoder against fp32. The export gate is precision.PARITY_LIMITS.
TINY_LIMITS = {"fp16": 2e-3, "bf16": 2e-2}
TINY_VAE_LIMITS = {"bf16": 7e-2}
# A Q/DQ graph lowered: the low-precision activations can flip an INT8 rounding, so it moves more than fp32 does.
TINY_QDQ_LIMITS = {"fp16": 1e-2, "bf16": 2e-2}


def _export(model_dir: Path, out: Path, **kwargs: str) -> Path:
    from wanrt.export.exporter import export_pipeline

    export_pipeline(model_dir, out, **kwargs)
    return out


@pytest.fixture(scope="module")
def fp16_artifact(single_expert_model_dir, tmp_path_factory) -> Path:
    """fp16 text encoder and expert, bf16 VAE decoder."""
    return _export(single_expert_model_dir, tmp_path_factory.mktemp("fp16") / "art", dtype="fp16", vae_dtype="bf16")


@pytest.fixture(scope="module")
def bf16_artifact(tiny_model_dir, tmp_path_factory) -> Path:
    """The two-expert (A14B layout) model with bf16 text encoder and experts, fp32 VAE decoder."""
    return _export(tiny_model_dir, tmp_path_factory.mktemp("bf16") / "art", dtype="bf16")


def _graph(art: Path, name: str) -> onnx.ModelProto:
    return onnx.load(art / f"{name}.onnx", load_external_data=False)


@pytest.mark.parametrize(("fixture", "dtypes"), [
    ("fp16_artifact", {"text_encoder": "fp16", "transformer": "fp16", "vae_decoder_init": "bf16",
                       "vae_decoder_step": "bf16"}),
    ("bf16_artifact", {"text_encoder": "bf16", "transformer": "bf16", "transformer_2": "bf16",
                       "vae_decoder_init": "fp32", "vae_decoder_step": "fp32"}),
])
def test_manifest_records_dtype_and_parity(fixture, dtypes, request):
    art = request.getfixturevalue(fixture)
    manifest = load_artifact(art)
    assert {name: g["dtype"] for name, g in manifest.graphs.items()} == dtypes
    for name, dtype in dtypes.items():
        model = _graph(art, name)
        assert precision.graph_dtype(model) == dtype, name
        # Graph I/O stays fp32 (token ids int64): the pipeline and every backend are unchanged.
        assert {i.type.tensor_type.elem_type for i in model.graph.input} <= {FLOAT, INT64}, name
        assert {o.type.tensor_type.elem_type for o in model.graph.output} == {FLOAT}, name
        checks = [p for p in manifest.parity if p["graph"] == f"{name}.onnx"]
        vae = name.startswith("vae_")
        if dtype == "fp32":
            assert len(checks) >= 2 and all(p["max_rel_error"] <= 1e-4 for p in checks), name
            continue
        graph = manifest.graphs[name]
        assert 0 < graph["low_precision_compute_nodes"] <= graph["compute_nodes"], name
        if vae or dtype == "fp16":  # exported fp32, checked, lowered, checked again against fp32 PyTorch
            fp32 = [p for p in checks if p["dtype"] == "fp32"]
            assert len(fp32) >= 2 and all(p["max_rel_error"] <= 1e-4 for p in fp32), name
            lowered = [p for p in checks if p["dtype"] == dtype]
            assert len(lowered) == len(fp32) and {p["reference"] for p in lowered} == {"fp32"}, name
        else:  # traced in bf16, checked against the same module in bf16; no fp32 copy ever exists
            lowered = checks
            assert len(lowered) >= 2 and {(p["dtype"], p["reference"]) for p in lowered} == {(dtype, dtype)}, name
            island = "DenseReluDense.wo" if name == "text_encoder" else "time_embedder.linear_1"
            assert any(k.endswith(island) for k in graph["fp32_kept"]), graph["fp32_kept"]
        worst = max(p["max_rel_error"] for p in lowered)
        print(f"{name} {dtype}: max relative error vs {lowered[0]['reference']} torch {worst:.2e}")
        gate = (precision.VAE_PARITY_LIMITS if vae else precision.PARITY_LIMITS)[dtype]
        assert all(p["tolerance"] == gate for p in lowered)
        tiny = (TINY_VAE_LIMITS if vae else TINY_LIMITS)[dtype]
        assert 1e-6 < worst <= tiny, f"{name}: {worst:.2e}"  # > 1e-6: really low precision


def test_manifest_refuses_an_unknown_dtype(fp16_artifact):
    from wanrt.engine.artifact import Manifest
    from wanrt.errors import ArtifactError

    raw = json.loads((fp16_artifact / MANIFEST_NAME).read_text())
    Manifest.from_dict(raw)
    raw["graphs"]["transformer"]["dtype"] = "fp64"
    with pytest.raises(ArtifactError, match="dtype must be one of fp32, bf16, fp16"):
        Manifest.from_dict(raw)


def _compute_types(model: onnx.ModelProto) -> dict[str, set[tuple[str, int]]]:
    """module path (block numbers as N) -> {(op, type of its first input)} over the weighted ops and norms."""
    types = precision.tensor_types(model)
    seen: dict[str, set[tuple[str, int]]] = {}
    for node in model.graph.node:
        if node.op_type in (*precision.COMPUTE_OPS, "LayerNormalization"):
            module = re.sub(r"(blocks?)\.\d+", r"\1.N", module_path(node) or "?")
            seen.setdefault(module, set()).add((node.op_type, types.get(node.input[0])))
    return seen


def test_what_stays_fp32(fp16_artifact, bf16_artifact):
    """diffusers' and transformers' fp32 islands are fp32 in the graphs, the heavy products are low precision. bf16
    graphs compute what diffusers' bf16 module computes (``_keep_in_fp32_modules``, its ``.float()`` norms); fp16
    graphs follow export/precision.py's rules, which also keep the embeddings fp32 (diffusers' layerwise casting)."""
    embeddings = ("patch_embedding", "condition_embedder.time_proj", "condition_embedder.text_embedder.linear_1")
    for art, dtype in ((fp16_artifact, "fp16"), (bf16_artifact, "bf16")):
        low = LOW[dtype]
        dit = _compute_types(_graph(art, "transformer"))
        for module in ("blocks.N.attn1.to_q", "blocks.N.attn2.to_k", "blocks.N.attn1.to_out.0", "blocks.N.ffn.net.2",
                       "blocks.N.attn1", "proj_out", *(embeddings if dtype == "bf16" else ())):
            assert {t for _, t in dit[module]} == {low}, f"{dtype} {module}: {dit[module]}"
        for module in ("blocks.N.norm1", "blocks.N.norm2", "blocks.N.norm3", "norm_out",
                       "condition_embedder.time_embedder.linear_1", *(embeddings if dtype == "fp16" else ())):
            assert {t for _, t in dit[module]} == {FLOAT}, f"{dtype} {module}: {dit[module]}"
        t5 = _compute_types(_graph(art, "text_encoder"))
        assert {t for _, t in t5["encoder.block.N.layer.1.DenseReluDense.wo"]} == {FLOAT}
        assert {t for _, t in t5["encoder.block.N.layer.1.DenseReluDense.wi_0"]} == {low}
        assert {t for _, t in t5["encoder.block.N.layer.0.SelfAttention.q"]} == {low}
    vae = _compute_types(_graph(fp16_artifact, "vae_decoder_step"))
    assert {t for m, ops in vae.items() if m.endswith(("conv1", "conv2")) for _, t in ops} == {LOW["bf16"]}


def test_bf16_emulation_agrees_with_the_reference_evaluator(bf16_artifact, tiny_model_dir):
    """ONNX's reference evaluator runs the bf16 graph itself (numpy + ml_dtypes' bfloat16, slow): the emulation
    onnxruntime runs must agree with it to bf16's rounding noise, and both with fp32 torch to the tiny limit."""
    import torch
    from onnx.reference import ReferenceEvaluator

    from wanrt.engine.spec import spec_from_diffusers
    from wanrt.export.transformer import _feeds, load_expert

    feeds = _feeds(spec_from_diffusers(tiny_model_dir), batch=2, patches=(2, 2, 2), length=5, seed=4)
    with torch.no_grad():
        reference = load_expert(tiny_model_dir, "transformer_2")(*(torch.from_numpy(v) for v in feeds.values()))
    path = bf16_artifact / "transformer_2.onnx"
    emulated = precision.cpu_session(path).run(None, feeds)[0]
    evaluated = ReferenceEvaluator(onnx.load(path)).run(None, feeds)[0]
    errors = {"emulated": max_relative_error(emulated, reference.numpy()),
              "reference evaluator": max_relative_error(evaluated, reference.numpy()),
              "between": max_relative_error(emulated, evaluated)}
    print(f"bf16 expert vs fp32 torch: {errors}")
    assert errors["between"] <= TINY_LIMITS["bf16"] and errors["emulated"] <= TINY_LIMITS["bf16"]
    assert errors["reference evaluator"] <= 2 * TINY_LIMITS["bf16"]


def _scaled_wo(model: onnx.ModelProto, factor: float) -> onnx.ModelProto:
    """The text encoder with every ``wo`` weight multiplied by ``factor``."""
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if (module_path(node) or "").endswith("DenseReluDense.wo"):
            weight = inits[node.input[1]]
            weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * factor, weight.name))
    return model


def test_t5_fp16_overflow_needs_wo_and_residual_in_fp32(single_expert_model_dir, single_expert_artifact_dir,
                                                         tmp_path):
    """UMT5-XXL's feed-forward outputs exceed fp16's 65504 (why transformers keeps ``wo`` in fp32); random tiny
    weights never do, so the trap is planted: ``wo`` scaled until its outputs are ~1e5. With the rules the fp16
    graph stays within its limit (measured 9e-4); lowering everything is ~100x further off (9e-2), over the export
    gate, which would refuse it."""
    import torch

    from wanrt.export.text_encoder import _feeds, load_text_encoder

    factor = 2e5
    module = load_text_encoder(single_expert_model_dir)
    with torch.no_grad():
        for block in module.encoder.encoder.block:
            block.layer[1].DenseReluDense.wo.weight.mul_(factor)
    feeds = _feeds(int(module.encoder.config.vocab_size), batch=2, length=9, seed=3)
    with torch.no_grad():
        reference = module(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    source = _scaled_wo(onnx.load(single_expert_artifact_dir / "text_encoder.onnx"), factor)

    errors = {}
    for label, rules in (("rules", precision.TEXT_ENCODER_FP32), ("everything", ())):
        path = tmp_path / f"{label}.onnx"
        onnx.save(source, path)
        precision.lower_graph(path, "fp16", rules, external_data=False)
        errors[label] = max_relative_error(precision.cpu_session(path).run(None, feeds)[0], reference)
    print(f"T5 with activations ~1e5, fp16: {errors}")
    assert errors["rules"] <= precision.PARITY_LIMITS["fp16"]
    assert not errors["everything"] <= precision.PARITY_LIMITS["fp16"]  # far off, or inf/NaN


def test_quantized_graph_unquantized_part_lowered(single_expert_model_dir, single_expert_artifact_dir, tmp_path):
    """`wanrt quantize --dtype`: Q/DQ kept, DequantizeLinear emits the low type into its MatMul, norms stay fp32."""
    import torch

    from wanrt.engine.spec import spec_from_diffusers
    from wanrt.export.transformer import _feeds, load_expert
    from wanrt.quant import placement, ptq

    spec = spec_from_diffusers(single_expert_model_dir)
    source = ptq.load_graph(single_expert_artifact_dir / "transformer.onnx")
    plan = placement.plan(source, placement.EXPERT_RULES)
    samples = [_feeds(spec, batch=2, patches=(2, 2, 3), length=16, seed=s) for s in range(3)]
    dest = tmp_path / "transformer.onnx"
    ptq.quantize_graph(source, dest, mode="int8", samples=samples, nodes_to_quantize=plan.quantize,
                       nodes_to_exclude=[d.name for d in plan.excluded], calibration_method="max",
                       scratch=tmp_path / "scratch")
    feeds = _feeds(spec, batch=2, patches=(3, 3, 2), length=7, seed=9)
    qdq_fp32 = ptq.session(dest).run(None, feeds)[0]
    with torch.no_grad():
        reference = load_expert(single_expert_model_dir, "transformer")(
            *(torch.from_numpy(v) for v in feeds.values())).numpy()
    for dtype in ("fp16", "bf16"):
        path = tmp_path / f"{dtype}.onnx"
        shutil.copy(dest, path)
        # (the copy still points at transformer.onnx.data beside it; the lowered graph is saved inline)
        precision.lower_graph(path, dtype, precision.EXPERT_FP32, external_data=False,
                              scopes=precision.scopes_of(source))
        model = onnx.load(path)
        types = precision.tensor_types(model)
        dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
        assert dq and {types[n.output[0]] for n in dq} == {LOW[dtype]}, dtype
        assert {types[n.input[0]] for n in model.graph.node if n.op_type == "LayerNormalization"} == {FLOAT}
        got = precision.cpu_session(path).run(None, feeds)[0]
        vs_qdq, vs_torch = max_relative_error(got, qdq_fp32), max_relative_error(got, reference)
        print(f"int8 Q/DQ, {dtype} rest: vs fp32 Q/DQ {vs_qdq:.2e}, vs fp32 torch {vs_torch:.2e} "
              f"(fp32 Q/DQ vs torch {max_relative_error(qdq_fp32, reference):.2e})")
        assert 1e-6 < vs_qdq <= TINY_QDQ_LIMITS[dtype]


def test_quantize_dtype_lowers_the_quantized_experts(tiny_artifact_dir, tmp_path):
    """`wanrt quantize --dtype bf16`: the experts' Q/DQ graphs run bf16 outside Q/DQ, the manifest says so, and the
    report (the PSNR gate) measured those graphs, bf16 emulated on the CPU."""
    from wanrt.quant.quantizer import QuantizeConfig, quantize_artifact

    out = tmp_path / "int8-bf16"
    config = QuantizeConfig(calib_prompts=("A school of fish swims left in deep blue water.",), calib_steps=4,
                            report_prompts=("A glowing jellyfish rises over a red vent.",), frames=5, height=32,
                            width=32, dtype="bf16")
    report = quantize_artifact(tiny_artifact_dir, out, config)
    manifest = load_artifact(out)
    for name in ("transformer", "transformer_2"):
        graph = manifest.graphs[name]
        assert graph["dtype"] == "bf16" and graph["opset"] >= 22, graph
        model = _graph(out, name)
        assert precision.graph_dtype(model) == "bf16"
        assert {i.type.tensor_type.elem_type for i in model.graph.input} == {FLOAT}
        assert any(n.op_type == "DequantizeLinear" for n in model.graph.node)
    assert manifest.graphs["text_encoder"].get("dtype", "fp32") == "fp32"  # not quantized: as exported
    block = json.loads((out / MANIFEST_NAME).read_text())["quantization"]
    assert block["unquantized"]["quantized_graphs_dtype"] == "bf16"
    print(f"int8 + bf16 experts: end-to-end PSNR vs fp32 {report['end_to_end']['psnr_db_min']:.1f} dB")
    assert report["gate"]["passed"] and all(e["cosine_min"] > 0.99 for e in report["experts"].values())


def test_quantize_refuses_a_lowered_source(bf16_artifact, tmp_path):
    from wanrt.quant.quantizer import QuantizeConfig, quantize_artifact

    with pytest.raises(InvalidRequestError, match="bf16/fp16; quantize the fp32 export"):
        quantize_artifact(bf16_artifact, tmp_path / "q", QuantizeConfig(dtype="fp16"))
    assert not (tmp_path / "q").exists()


def test_bad_dtype_is_refused_before_export(single_expert_model_dir, tmp_path):
    from wanrt.export.exporter import export_pipeline

    with pytest.raises(InvalidRequestError, match="fp32, bf16"):
        export_pipeline(single_expert_model_dir, tmp_path / "out", vae_dtype="fp16")
    assert not (tmp_path / "out").exists()


def _frames_with_cpu_sessions(art: Path, monkeypatch: pytest.MonkeyPatch, guidance: float,
                              guidance_2: float | None) -> np.ndarray:
    """The onnxruntime backend's pipeline, its bf16 graphs emulated (no bf16 CPU kernels)."""
    import onnxruntime

    real = onnxruntime.InferenceSession

    def session(path_or_bytes, *args, **kwargs):  # noqa: ANN001, ANN202
        path = path_or_bytes
        if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):  # the verified bytes the backend read
            path = Path(tempfile.mkdtemp(prefix="emulated-")) / "graph.onnx"
            path.write_bytes(bytes(path_or_bytes))
        if precision.graph_dtype(onnx.load(path, load_external_data=False)) == "bf16":
            return real(precision.emulate_bf16(Path(path)).SerializeToString(), *args, **kwargs)
        return real(path_or_bytes, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    return _wanrt_frames(art, "onnxruntime", _noise(0), guidance, guidance_2)


def _diffusers(model_dir: Path, dtype: str, guidance: float, guidance_2: float | None) -> np.ndarray:
    import torch
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(model_dir, torch_dtype=getattr(torch, dtype))
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"guidance_scale_2": guidance_2} if guidance_2 is not None else {}
    video = pipe(PROMPT, negative_prompt=NEGATIVE, num_frames=FRAMES, height=HEIGHT, width=WIDTH,
                 num_inference_steps=STEPS, guidance_scale=guidance, output_type="np",
                 latents=torch.from_numpy(_noise(0)).to(getattr(torch, dtype)), **kwargs).frames[0]
    return np.round(np.asarray(video, dtype=np.float32) * 255.0).astype(np.uint8)


# uint8 levels per pixel (max, mean), end to end against diffusers fp32 and against diffusers run in the artifact's
# dtype (which also runs its latents, scheduler and VAE in that dtype; wanrt keeps them fp32 unless --vae-dtype).
# fp32 artifacts stay within (3, 0.5) of diffusers fp32 (test_parity.py). Measured: fp16 (+ bf16 VAE) (4, 0.30) and
# (4, 0.31); bf16 (1, 0.08) and (4, 0.43), diffusers' own bf16 run being (4, 0.43) from its fp32 run.
E2E_LIMITS = {"fp16": (6, 0.5), "bf16": (6, 0.5)}
TORCH_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}


@pytest.mark.parametrize(("fixture", "model_fixture", "dtype", "guidance"), [
    ("fp16_artifact", "single_expert_model_dir", "fp16", (5.0, None)),
    ("bf16_artifact", "tiny_model_dir", "bf16", (4.0, 3.0)),
])
def test_end_to_end_against_diffusers(fixture, model_fixture, dtype, guidance, request, monkeypatch):
    art, model_dir = request.getfixturevalue(fixture), request.getfixturevalue(model_fixture)
    ours = _frames_with_cpu_sessions(art, monkeypatch, *guidance)
    runs = {name: _diffusers(model_dir, name, *guidance) for name in ("float32", TORCH_DTYPES[dtype])}

    def levels(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
        return int(diff.max()), float(diff.mean())

    ours_same, ours_fp32 = levels(ours, runs[TORCH_DTYPES[dtype]]), levels(ours, runs["float32"])
    theirs_fp32 = levels(runs[TORCH_DTYPES[dtype]], runs["float32"])
    manifest = json.loads((art / MANIFEST_NAME).read_text())
    print(f"{dtype} artifact (VAE {manifest['graphs']['vae_decoder_step']['dtype']}), uint8 levels (max, mean): "
          f"vs diffusers {dtype} {ours_same}, vs diffusers fp32 {ours_fp32}; diffusers {dtype} vs fp32 {theirs_fp32}")
    limit_max, limit_mean = E2E_LIMITS[dtype]
    for levels_off in (ours_fp32, ours_same):
        assert levels_off[0] <= limit_max and levels_off[1] < limit_mean
    assert ours.std() > 5


def test_the_memory_plan_reads_weights_and_activation_dtypes_from_the_graphs(bf16_artifact, tiny_model_dir):
    """build-engines' estimate: every weight at the dtype the bf16 graph stores it in (export traces the modules as
    diffusers/transformers load them in bf16, their fp32 islands at 4 bytes), and the activation dtypes read from
    the graph (bf16 matrix products; the residual stream at whatever dtype the graph carries it)."""
    import torch
    from diffusers import WanTransformer3DModel
    from transformers import UMT5EncoderModel

    from wanrt.engine.tensorrt.build import read_graph_facts
    from wanrt.export.precision import TEXT_ENCODER_FP32

    def loaded_bytes(model, kept_fp32=()) -> tuple[int, int]:
        """Bytes as loaded in bf16, with the modules export itself keeps fp32 (UMT5's `wo`) at 4; and all at 2."""
        tensors = [*model.named_parameters(), *model.named_buffers()]
        kept = [any(re.search(p, name.rpartition(".")[0]) for p, _, _ in kept_fp32) for name, _ in tensors]
        exact = sum(t.numel() * (4 if keep else t.element_size()) for (_, t), keep in zip(tensors, kept, strict=True))
        return exact, sum(t.numel() for _, t in tensors) * 2

    for graph, cls, kept_fp32 in (("transformer", WanTransformer3DModel, ()),
                                  ("text_encoder", UMT5EncoderModel, TEXT_ENCODER_FP32)):
        facts = read_graph_facts(bf16_artifact / f"{graph}.onnx")
        expected, all_low = loaded_bytes(cls.from_pretrained(tiny_model_dir / graph, torch_dtype=torch.bfloat16),
                                         kept_fp32)
        print(graph, facts.weight_bytes, expected, all_low, facts.compute_itemsize, facts.stream_itemsize)
        # Within the exporter's small constants (shapes, epsilons) and buffers the trace folds away, independent of
        # the model's size; the fp32 islands are there (more than bf16 everywhere would be).
        assert abs(facts.weight_bytes - expected) <= 4096 < expected - all_low, (graph, facts.weight_bytes, expected)
        assert facts.compute_itemsize == 2 and facts.stream_itemsize in (2, 4), graph
