"""The torch route of `wanrt quantize`: ModelOpt PTQ on bf16 experts, the Q/DQ it writes into the dynamo graph,
the recipe's exclusions, the memory refusal, and the whole command on the tiny two-expert folder.

Experts are drawn at random (widths, heads, blocks) from a printed seed, so a failure can be replayed:
``WANRT_TEST_SEED=N pytest tests/quant/test_torch_route.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random

import numpy as np
import onnx
import pytest

if importlib.util.find_spec("modelopt") is None:
    pytest.skip("needs the quant extra (nvidia-modelopt)", allow_module_level=True)

from wanrt.cli import main  # noqa: E402
from wanrt.errors import InsufficientMemoryError, InvalidRequestError  # noqa: E402
from wanrt.quant import QuantizationError, placement  # noqa: E402
from wanrt.quant.torch_recipe import CalibrationShape, TorchRecipe  # noqa: E402

SEED = int(os.environ.get("WANRT_TEST_SEED", random.SystemRandom().randrange(1 << 16)))


def _drawn_expert(seed: int):  # noqa: ANN202
    """A random WanTransformer3DModel in bf16 as diffusers loads it (fp32 modules kept), and its config."""
    import torch

    from wanrt.benchmarks.synthetic import build_expert

    rng = random.Random(seed)
    heads = rng.choice([1, 2, 4])
    config = dict(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=rng.choice([8, 16]),
                  in_channels=16, out_channels=16, text_dim=rng.choice([16, 32]), freq_dim=32,
                  ffn_dim=rng.choice([32, 48, 64]), num_layers=rng.randint(2, 4), cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=32)
    return build_expert(config, "cpu", torch.bfloat16), config


def _calibrate(expert, config, recipe: TorchRecipe, seed: int):  # noqa: ANN202
    import torch

    from wanrt.quant import torch_ptq

    g = torch.Generator().manual_seed(seed)
    calls = [(torch.randn(2, 16, 2, 8, 8, generator=g) * s, torch.tensor([900.0, 900.0]),
              torch.randn(2, 7, config["text_dim"], generator=g)) for s in (0.5, 1.0, 2.0)]

    def loop(model):  # noqa: ANN001, ANN202
        with torch.no_grad():
            for x, t, e in calls:
                model(hidden_states=x.bfloat16(), timestep=t, encoder_hidden_states=e.bfloat16(), return_dict=False)

    return torch_ptq.quantize(expert, recipe, loop), calls[1]


@pytest.fixture(scope="module")
def fp8_graph(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A drawn expert quantized FP8 (attention included, block 0 kept by the recipe), exported and Q/DQ'd."""
    import torch

    from wanrt.engine.spec import ModelSpec
    from wanrt.export import onnx_io
    from wanrt.export.transformer import ExpertGraph, export_inputs
    from wanrt.quant import qdq_graph, torch_ptq

    print(f"\nWANRT_TEST_SEED={SEED}")
    expert, config = _drawn_expert(SEED)
    recipe = TorchRecipe(mode="fp8", high_precision_blocks=(0,))
    ranges, call = _calibrate(expert, config, recipe, SEED)
    spec = ModelSpec(experts=("transformer",), boundary_ratio=None, scheduler_config={}, latent_channels=16,
                     patch_size=(1, 2, 2), vae_scale_temporal=4, vae_scale_spatial=8, latents_mean=(0.0,) * 16,
                     latents_std=(1.0,) * 16, text_length=512, text_dim=config["text_dim"])
    out = tmp_path_factory.mktemp("fp8")
    module = ExpertGraph(expert, compute_dtype=torch.bfloat16)
    example, shapes = export_inputs(spec, expert.config)
    with torch_ptq.quantizers_off(expert):
        onnx_io.export_graph(module, tuple(torch.from_numpy(v) for v in example.values()), out / "bf16.onnx",
                             input_names=list(example), output_names=["noise_pred"], dynamic_shapes=shapes,
                             external_data_threshold=0)
    result = qdq_graph.insert_qdq(out / "bf16.onnx", out / "q.onnx", ranges, recipe.placement_rules())
    return {"expert": expert, "module": module, "config": config, "ranges": ranges, "result": result, "out": out,
            "call": call, "recipe": recipe}


def test_fp8_graph_keeps_fused_attention_with_qdq_and_bf16_elsewhere(fp8_graph):
    from wanrt.export.attention import count_ops
    from wanrt.quant import qdq_graph

    path, result, config = fp8_graph["out"] / "q.onnx", fp8_graph["result"], fp8_graph["config"]
    blocks = config["num_layers"]
    assert count_ops(path) == {"Attention": 2 * blocks, "Softmax": 0}  # self and cross per block, fused
    # Block 0 is the recipe's high-precision block: its attention keeps bf16 inputs, the others take E4M3 Q/DQ.
    assert sorted(a["module"] for a in result.attention) == sorted(
        f"blocks.{b}.attn{i}" for b in range(1, blocks) for i in (1, 2))
    assert qdq_graph.check_attention_qdq(path, result) == []
    model = onnx.load(path, load_external_data=False)
    _, problems = placement.check_placement(model, result.plan, "fp8", attention={a["name"] for a in result.attention})
    assert problems == []
    assert len(result.quantized) == 10 * (blocks - 1)  # q, k, v, out of two attentions + two FFN per block
    dtypes = qdq_graph.compute_dtypes(path)
    assert set(dtypes["quantized"]) == {"BFLOAT16"}  # every DequantizeLinear feeds its op in bf16
    fp32 = dtypes["high_precision"].get("FLOAT", [])
    assert fp32 and all(m.startswith("condition_embedder.time_embedder") for m in fp32), fp32  # diffusers' own
    assert any(m.startswith("blocks.0.") for m in dtypes["high_precision"]["BFLOAT16"])


def test_fp8_graph_computes_what_modelopt_fake_quantization_computes(fp8_graph):
    """onnxruntime on the Q/DQ graph against ModelOpt's fake-quantized module: closer to it than the bf16 graph is
    (the graph computes the quantized model, on the same grid: torch_ptq.snap_ranges), within the two runtimes'
    bf16 noise floor plus half the quantization error, and far from it when a range is planted wrong."""
    import torch

    from wanrt.export.precision import cpu_session
    from wanrt.quant import qdq_graph, torch_ptq
    from wanrt.quant.metrics import relative_error

    x, t, e = fp8_graph["call"]
    feeds = {"hidden_states": x.numpy(), "timestep": t.numpy(), "encoder_hidden_states": e.numpy()}
    module, expert, out = fp8_graph["module"], fp8_graph["expert"], fp8_graph["out"]
    with torch.no_grad():
        fake_quant = module(x, t, e).numpy()
        with torch_ptq.quantizers_off(expert):
            bf16 = module(x, t, e).numpy()
    config = {"session.disable_quant_qdq": "1"}
    graph_bf16 = cpu_session(out / "bf16.onnx").run(None, feeds)[0]
    floor = relative_error(graph_bf16, bf16)
    error = relative_error(cpu_session(out / "q.onnx", config).run(None, feeds)[0], fake_quant)
    quantization = relative_error(fake_quant, bf16)
    print(f"seed {SEED}: onnx Q/DQ vs fake quant {error:.2e}, bf16 graph vs fake quant "
          f"{relative_error(graph_bf16, fake_quant):.2e}, bf16 floor {floor:.2e}, quantization {quantization:.2e}")
    assert error < relative_error(graph_bf16, fake_quant)
    assert error <= 2 * floor + 0.5 * quantization
    # A planted mistake: activation ranges 16x too narrow (E4M3 saturates at 448). The graph no longer matches
    # what ModelOpt calibrated, and the comparison shows it.
    import dataclasses

    wrong = dataclasses.replace(fp8_graph["ranges"], linears={
        k: dataclasses.replace(v, input_amax=v.input_amax / 16) for k, v in fp8_graph["ranges"].linears.items()})
    qdq_graph.insert_qdq(out / "bf16.onnx", out / "wrong.onnx", wrong, fp8_graph["recipe"].placement_rules())
    planted = relative_error(cpu_session(out / "wrong.onnx", config).run(None, feeds)[0], fake_quant)
    assert planted > 2 * floor + 0.5 * quantization, planted


def test_softmax_emulation_changes_the_attention_output():
    import torch

    from wanrt.quant import torch_ptq

    g = torch.Generator().manual_seed(SEED)
    q, k, v = (torch.randn(1, 2, 64, 16, generator=g, dtype=torch.bfloat16) for _ in range(3))
    exact = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
    emulated = torch_ptq._attention_with_fp8_softmax(q, k, v).float()
    diff = float((emulated - exact).abs().max() / exact.abs().max())
    assert 1e-4 < diff < 0.1, diff  # E4M3 probabilities: a visible but small change


@pytest.mark.slow
def test_int8_smoothquant_keeps_the_scale_as_a_mul_and_no_attention_qdq(tmp_path):
    import torch

    from wanrt.engine.spec import ModelSpec
    from wanrt.export import onnx_io
    from wanrt.export.transformer import ExpertGraph, export_inputs
    from wanrt.quant import qdq_graph, torch_ptq

    expert, config = _drawn_expert(SEED + 1)
    recipe = TorchRecipe(mode="int8", quantize_attention=False, high_precision_blocks=())
    ranges, _ = _calibrate(expert, config, recipe, SEED)
    assert ranges.summary()["smoothquant"] == ranges.summary()["linears"] > 0 and not ranges.attention
    spec = ModelSpec(("transformer",), None, {}, 16, (1, 2, 2), 4, 8, (0.0,) * 16, (1.0,) * 16, 512,
                     config["text_dim"])
    example, shapes = export_inputs(spec, expert.config)
    with torch_ptq.quantizers_off(expert):
        onnx_io.export_graph(ExpertGraph(expert, torch.bfloat16), tuple(torch.from_numpy(v) for v in example.values()),
                             tmp_path / "bf16.onnx", input_names=list(example), output_names=["noise_pred"],
                             dynamic_shapes=shapes)
    result = qdq_graph.insert_qdq(tmp_path / "bf16.onnx", tmp_path / "q.onnx", ranges, recipe.placement_rules())
    model = onnx.load(tmp_path / "q.onnx", load_external_data=False)
    producer = {o: n for n in model.graph.node for o in n.output}
    for entry in result.quantized:  # SmoothQuant's per-channel Mul sits right before each activation Q/DQ
        node = next(n for n in model.graph.node if n.name == entry["name"])
        quantize = producer[producer[node.input[0]].input[0]]
        assert quantize.op_type == "QuantizeLinear" and producer[quantize.input[0]].op_type == "Mul", entry
    assert placement.check_placement(model, result.plan, "int8")[1] == []
    assert result.attention == [] and onnx.TensorProto.INT8 in {i.data_type for i in model.graph.initializer}


def test_recipe_keeps_modelopt_wan_exclusions_and_refuses_what_cannot_work():
    recipe = TorchRecipe()
    assert recipe.excluded_modules(40) == ["patch_embedding", "condition_embedder", "proj_out", "blocks.0",
                                           "blocks.1", "blocks.2", "blocks.37", "blocks.38", "blocks.39"]
    names = {e["quantizer_name"] for e in recipe.modelopt_config()["quant_cfg"] if e.get("enable") is False}
    assert {"blocks.0.*", "blocks.39.*", "proj_out*", "condition_embedder*", "patch_embedding*"} <= names
    assert TorchRecipe(mode="int8", quantize_attention=False).modelopt_config()["algorithm"]["method"] == "smoothquant"
    with pytest.raises(InvalidRequestError, match="fp8 mode only"):
        TorchRecipe(mode="int8", quantize_attention=True).validate()
    with pytest.raises(InvalidRequestError, match="multiples of 16"):
        CalibrationShape(height=100).validate("calib_shape")
    with pytest.raises(InvalidRequestError, match="4k\\+1"):
        CalibrationShape(frames=80).validate("calib_shape")


def test_quantizing_nothing_is_refused():
    expert, config = _drawn_expert(SEED)
    recipe = TorchRecipe(high_precision_blocks=tuple(range(config["num_layers"])))
    with pytest.raises(QuantizationError, match="nothing to quantize"):
        _calibrate(expert, config, recipe, SEED)


def test_memory_estimate_refuses_before_any_work(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from wanrt.engine.spec import spec_from_diffusers
    from wanrt.quant.torch_memory import estimate_torch_quantize, refuse_unless_fits, safetensors_bytes
    from wanrt.quant.torch_recipe import RECIPE_SHAPE

    spec = spec_from_diffusers(tiny_model_dir)
    estimate = estimate_torch_quantize(tiny_model_dir, spec, RECIPE_SHAPE, prompts=128)
    weights = sum(p.stat().st_size for p in (tiny_model_dir / "transformer").glob("*.safetensors"))
    assert 0 < safetensors_bytes(tiny_model_dir / "transformer") <= weights
    assert estimate.tokens == 21 * 45 * 80  # 81x720x1280 in 1x2x2 patches of the 4x8x8-compressed latents
    monkeypatch.setenv("WANRT_QUANTIZE_HOST_BYTES", str(estimate.host_bytes // 2))
    with pytest.raises(InsufficientMemoryError, match="--frames/--height/--width"):
        refuse_unless_fits(estimate, "cpu")
    # The command refuses before anything is loaded or written.
    monkeypatch.setenv("WANRT_QUANTIZE_HOST_BYTES", str(1024**2))
    rc = main(["quantize", "--model", str(tiny_model_dir), "--out", str(tmp_path / "q"), "--device", "cpu"])
    assert rc == 2 and "host memory" in capsys.readouterr().err and not (tmp_path / "q").exists()


def test_cli_routes_and_refuses_flags_of_the_other_route(tiny_model_dir, tmp_path, capsys):
    assert main(["quantize", "--model", str(tiny_model_dir), "--out", str(tmp_path / "a"),
                 "--quantize-text-encoder"]) == 2
    assert "apply to the ONNX route" in capsys.readouterr().err
    artifact = tmp_path / "artifact"  # no model_index.json: an artifact, refused before it is read
    artifact.mkdir()
    assert main(["quantize", "--model", str(artifact), "--out", str(tmp_path / "b"),
                 "--high-precision-blocks", "none"]) == 2
    assert "apply to the torch route" in capsys.readouterr().err
    assert main(["quantize", "--model", str(tiny_model_dir), "--out", str(tmp_path / "c"),
                 "--high-precision-blocks", "0,x"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fp8", "int8"])
def test_torch_route_on_the_tiny_two_expert_folder(mode, tiny_model_dir, tiny_artifact_dir, tmp_path, capsys):
    """The whole command: each expert on its own timesteps, the artifact readable, the report against bf16."""
    from wanrt.engine.artifact import load_artifact
    from wanrt.quant import qdq_graph

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a school of fish swims left\n# a comment\na turtle rises in blue water\n")
    out = tmp_path / f"q-{mode}"
    rc = main(["quantize", "--model", str(tiny_model_dir), "--out", str(out), "--mode", mode, "--device", "cpu",
               "--base", str(tiny_artifact_dir), "--frames", "5", "--height", "32", "--width", "32",
               "--calib-steps", "4", "--report-size", "5", "32", "32", "--report-steps", "4",
               "--calib-prompts", str(prompts), "--report-prompts", str(prompts), "--high-precision-blocks", "0",
               "--min-psnr", "20"])
    assert rc == 0, capsys.readouterr().err
    manifest = load_artifact(out)
    report = json.loads((out / "quant_report.json").read_text())
    assert manifest.quantization.mode == mode and report["gate"]["passed"]
    # 4 steps, boundary 0.875: timesteps 999 and 900 to the high-noise expert, 750 and 500 to the low-noise one.
    assert [p["timestep"] for p in report["experts"]["transformer"]["per_timestep"]] == [999.0, 900.0]
    assert [p["timestep"] for p in report["experts"]["transformer_2"]["per_timestep"]] == [750.0, 500.0]
    assert manifest.quantization.calibration["calls"] == {"transformer": 4, "transformer_2": 4}
    assert "blocks.0" in report["recipe"]["high_precision"]
    for name in ("transformer", "transformer_2"):
        entry = manifest.graphs[name]
        assert entry["dtype"] == "bf16" and entry["attention"]["operator"] == "Attention"
        assert entry["attention"]["quantized"]["qdq"] == (mode if mode == "fp8" else None)
        assert report["experts"][name]["onnx_check"]["ran"]
        dtypes = qdq_graph.compute_dtypes(out / entry["file"])
        assert set(dtypes["quantized"]) == {"BFLOAT16"}
        assert all(m.startswith("condition_embedder.time_embedder") for m in dtypes["high_precision"]["FLOAT"])
    # The rest of the artifact is the base export's, byte for byte.
    base = load_artifact(tiny_artifact_dir)
    assert manifest.files["text_encoder.onnx"] == base.files["text_encoder.onnx"]
    e2e = report["end_to_end"]
    print(f"{mode}: PSNR vs bf16 {e2e['psnr_db_mean']:.1f} dB (worst {e2e['psnr_db_min']:.1f}), "
          f"per call {report['experts']['transformer']['rel_error_mean']:.2%}")
    assert np.isfinite(e2e["psnr_db_min"]) and e2e["ssim_min"] > 0.5
