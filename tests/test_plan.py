"""`wanrt plan` and the stages' start-of-run checks (wanrt.plan): figures from real tensor sizes, refusals that
name the option that fits.

Sizes are checked against what the libraries really load, on drawn random folders (seed printed); the full
Wan2.2-A14B layout is a header-only replica (real safetensors headers, sparse data) built from diffusers' and
transformers' own classes on the meta device.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from wanrt.errors import InsufficientMemoryError
from wanrt.plan.checkpoint import KEEP_FP32, read_checkpoint
from wanrt.plan.stages import GIB, Calibration, Machine, export_plan, quantize_plan, serve_plan

SEEDS = (11, 23, 57)


def _draw_folder(out: Path, seed: int) -> Path:
    """A WanPipeline folder with randomly drawn widths and depths, saved in small shards."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from tiny_wan import build_tokenizer
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    rng = random.Random(seed)
    print(f"drawn folder seed {seed}")
    build_tokenizer(out / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    text_dim = rng.choice((8, 16, 24, 40))
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=text_dim, d_kv=rng.choice((4, 8)), d_ff=rng.choice((16, 48)),
        num_layers=rng.randint(1, 3), num_heads=rng.choice((2, 4)), relative_attention_num_buckets=8,
        relative_attention_max_distance=16, pad_token_id=0, eos_token_id=1))

    def expert() -> WanTransformer3DModel:
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=rng.randint(1, 3), attention_head_dim=rng.choice((8, 12, 16)),
            in_channels=16, out_channels=16, text_dim=text_dim, freq_dim=rng.choice((16, 32)),
            ffn_dim=rng.choice((16, 40, 64)), num_layers=rng.randint(1, 3), cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32)

    two = rng.random() < 0.7
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder,
                       vae=AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                            temperal_downsample=[False, True, True]),
                       scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                         flow_shift=3.0),
                       transformer=expert(), transformer_2=expert() if two else None,
                       boundary_ratio=0.875 if two else None)
    pipe.save_pretrained(out, max_shard_size="40KB")
    return out


@pytest.fixture(scope="module", params=SEEDS)
def drawn_folder(request, tmp_path_factory) -> Path:
    return _draw_folder(tmp_path_factory.mktemp(f"drawn{request.param}") / "wan", request.param)


def _state_bytes(module) -> int:  # noqa: ANN001
    """Bytes of what ``module`` would save: parameters and persistent buffers, tied weights once."""
    seen, total = set(), 0
    for tensor in module.state_dict(keep_vars=True).values():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_sizes_are_what_the_libraries_load(drawn_folder, dtype):
    """Every component's bytes in a dtype, from headers alone, equal the module export loads in that dtype
    (diffusers' _keep_in_fp32_modules, UMT5's wo kept fp32): the plan's rule is the loaders' rule."""
    from diffusers import AutoencoderKLWan

    from wanrt.export.text_encoder import load_text_encoder
    from wanrt.export.transformer import load_expert

    checkpoint = read_checkpoint(drawn_folder)
    for expert in checkpoint.experts:
        module = load_expert(drawn_folder, expert.name, dtype).transformer
        assert expert.bytes_in(dtype) == _state_bytes(module), (expert.name, dtype)
        assert expert.params == sum(p.numel() for p in module.parameters())
        assert len(expert.shards) > 1 and expert.largest_shard == max(
            p.stat().st_size for p in (drawn_folder / expert.name).glob("*.safetensors"))
    text = checkpoint.components["text_encoder"]
    assert text.bytes_in(dtype) == _state_bytes(load_text_encoder(drawn_folder, dtype).encoder)
    vae = AutoencoderKLWan.from_pretrained(drawn_folder / "vae")
    assert checkpoint.components["vae"].bytes_in("fp32") == _state_bytes(vae)


def test_fp32_lists_are_the_libraries():
    from diffusers import WanTransformer3DModel
    from transformers import UMT5EncoderModel

    assert KEEP_FP32["transformer"] == tuple(WanTransformer3DModel._keep_in_fp32_modules)
    assert KEEP_FP32["text_encoder"] == tuple(UMT5EncoderModel._keep_in_fp32_modules)


def test_export_refuses_at_start_naming_the_option(drawn_folder, tmp_path):
    """A budget the bf16 export fits and the fp32 one does not: fp32 is refused before anything is written, the
    message names what is short and ``--dtype bf16``; with no budget left at all, no option is named."""
    from wanrt.export.exporter import export_pipeline

    checkpoint = read_checkpoint(drawn_folder)
    budget = export_plan(checkpoint, dtype="bf16").host_bytes
    assert export_plan(checkpoint, dtype="fp32").host_bytes > budget
    out = tmp_path / "art"
    with pytest.raises(InsufficientMemoryError, match=r"host memory: needs an estimated .*--dtype bf16 would fit"):
        export_pipeline(drawn_folder, out, dtype="fp32", memory_budget=budget)
    with pytest.raises(InsufficientMemoryError, match="no option of this stage fits"):
        export_pipeline(drawn_folder, out, dtype="bf16", memory_budget=budget // 2)
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def a14b(tmp_path_factory) -> Path:
    from wanrt.benchmarks.a14b_folder import build_a14b_headers

    return build_a14b_headers(tmp_path_factory.mktemp("a14b") / "Wan2.2-T2V-A14B", "fp32")


def test_a14b_replica_has_the_published_sizes(a14b):
    """The header-only replica holds the parameter counts engine/tensorrt/memory.py states for the real model,
    takes no disk, and the plan reads it in well under a second."""
    import os
    import time

    from wanrt.engine.tensorrt import memory

    start = time.perf_counter()
    checkpoint = read_checkpoint(a14b)
    assert time.perf_counter() - start < 5
    assert checkpoint.components["text_encoder"].params == memory.A14B_TEXT_PARAMS
    for expert in checkpoint.experts:  # memory.py's count includes the rope tables diffusers does not save
        assert abs(expert.params - memory.A14B_EXPERT_PARAMS) < 1e-4 * memory.A14B_EXPERT_PARAMS
        assert len(expert.shards) == 12
    used = sum(os.stat(p).st_blocks * 512 for p in a14b.rglob("*.safetensors"))
    assert checkpoint.file_bytes > 100 * GIB and used < 64 * 2**20


def test_a14b_on_an_h100(a14b):
    """The H100 80 GB / 256 GB host walkthrough: every stage fits; the serve figure is memory.py's plan."""
    from wanrt.engine.tensorrt import memory
    from wanrt.plan.report import plan_all

    machine = Machine(host_bytes=256 * GIB, gpu_bytes=81559 * 2**20)
    report = plan_all(read_checkpoint(a14b), machine)
    stages = {row["stage"]: row for row in report["stages"]}
    assert all(row["fits"] for row in stages.values()), [r["refusal"] for r in stages.values()]
    expert_bf16 = stages["export"]["graphs"]["transformer"]["weight_bytes"]
    assert 2 * 14.28e9 < expert_bf16 < 2 * 14.3e9 + 0.1e9  # bf16 with the small fp32 islands
    reference = memory.a14b_plan(81, 720, 1280, machine.gpu_bytes, allow_streaming=True)
    checkpoint = read_checkpoint(a14b)
    plan, memory_plan = serve_plan(checkpoint, precision="bf16", gpu_bytes=machine.gpu_bytes)
    assert memory_plan.residency == reference.residency == "per-stage"
    assert memory_plan.vae_caches == reference.vae_caches  # the decoder's cache pair, 16.2 GiB at 720p
    # The checkpoint's tensors, read with export's fp32 islands, give memory.py's counts (less the small I/O).
    assert abs(plan.gpu_bytes - reference.peak) < 0.005 * reference.peak, (plan.gpu_bytes, reference.peak)


def test_a14b_refusals_name_the_option(a14b):
    from wanrt.plan.refusal import refusal_message
    from wanrt.plan.report import export_alternatives, quantize_alternatives

    checkpoint = read_checkpoint(a14b)
    small_host = Machine(host_bytes=24 * GIB, gpu_bytes=80 * GIB)
    plan = export_plan(checkpoint, dtype="bf16")
    assert not plan.fits(small_host)
    message = refusal_message(plan, small_host, export_alternatives(checkpoint, dtype="bf16"))
    assert "host memory" in message and "--device cuda would fit" in message, message
    # The ONNX route holds the fp32 graph several times over: refused on a 256 GB host, the torch route named.
    calibration = Calibration()
    onnx_route = quantize_plan(checkpoint, route="onnx", device="cpu", calibration=calibration)
    host = Machine(host_bytes=256 * GIB, gpu_bytes=80 * GIB)
    message = refusal_message(onnx_route, host, quantize_alternatives(checkpoint, mode="fp8", route="onnx",
                                                                      device="cpu", calibration=calibration))
    assert "the torch route on a GPU" in message, message
    # The torch route at the recipe's 720p on a 40 GB GPU: a smaller calibration shape is named.
    small_gpu = Machine(host_bytes=256 * GIB, gpu_bytes=40 * GIB)
    torch_route = quantize_plan(checkpoint, calibration=calibration)
    assert torch_route.fits(host) and not torch_route.fits(small_gpu)
    message = refusal_message(torch_route, small_gpu, quantize_alternatives(
        checkpoint, mode="fp8", route="torch", device="cuda", calibration=calibration))
    assert "GPU memory" in message and "--height 480 --width 832 would fit" in message, message


def test_quantize_estimate_grows_with_the_calibration(a14b):
    checkpoint = read_checkpoint(a14b)
    small = quantize_plan(checkpoint, calibration=Calibration(17, 480, 832, prompts=4, steps=4))
    big = quantize_plan(checkpoint, calibration=Calibration())
    assert small.gpu_bytes < big.gpu_bytes and small.seconds < big.seconds
    assert big.seconds > 3600  # 128 prompts x 20 steps at 720p: hours of an H100, not minutes


def test_cli_prints_every_stage_and_exits_1_when_one_does_not_fit(a14b, capsys):
    from wanrt.cli import main

    assert main(["plan", "--model", str(a14b), "--gpu-memory", "79.6G", "--host-memory", "256G"]) == 0
    table = capsys.readouterr().out
    for stage in ("export", "quantize", "build-engines", "serve"):
        assert f"| {stage} |" in table
    assert main(["plan", "--model", str(a14b), "--gpu-memory", "79.6G", "--host-memory", "16G", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    refused = {row["stage"]: row["refusal"] for row in report["stages"] if not row["fits"]}
    assert "export" in refused and "--device cuda would fit" in refused["export"], refused


def test_a_folder_without_safetensors_is_named(tmp_path, drawn_folder):
    import shutil

    from wanrt.errors import ModelFormatError

    copy = tmp_path / "copy"
    shutil.copytree(drawn_folder, copy)
    for shard in (copy / "vae").glob("*.safetensors"):
        shard.unlink()
    with pytest.raises(ModelFormatError, match="vae has no .safetensors"):
        read_checkpoint(copy)
