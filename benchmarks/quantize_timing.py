"""Times the torch route's FP8 quantize of one full-width Wan2.2-A14B expert cut to N layers, at a request's real
token count, on whatever device is here, and writes the numbers to JSON.

    python -m wanrt.benchmarks.quantize_timing --out DIR [--layers 2] [--frames 81 --height 480 --width 832]
        [--clips 2] [--steps 4] [--device cuda]

The expert is made directly on the device in bf16 (random weights, diffusers' fp32 modules kept; the
layers' shapes are A14B's: dim 5120, 40 heads, ffn 13824, text 4096), so no checkpoint or folder is needed. What
runs is the route's own code: ``torch_ptq.quantize`` (ModelOpt ``mtq.quantize``, FP8 recipe with attention)
with a forward loop of ``trajectories.run_segment`` over real UniPC schedules (cond and uncond batched, random
text embeddings of 512 tokens), then one call each in bf16 and fake-quantized, then the dynamo export of the
bf16 graph (fused Attention) and the Q/DQ insertion. Wall time of each phase, peak GPU memory and the process's
peak RSS go to ``DIR/quantize_timing.json``; the per-layer time is the N-layer time divided by N (the embeddings
are a small share at these widths; say so when extrapolating to 40 layers).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _stub_unused_imports() -> list[str]:
    """ModelOpt imports scipy (entropy calibrator, NAS) and pulp (NAS searcher) when its quantization package
    loads; FP8 max calibration calls neither. Where they are not installed (a GPU box without network, wheels
    carried by hand), stand-in modules let the import finish: any name taken from them is a class that raises
    ImportError when used. Returns the top-level names stubbed."""
    import importlib.abc
    import importlib.machinery
    import importlib.util
    import types

    missing = [name for name in ("scipy", "pulp") if importlib.util.find_spec(name) is None]

    class StandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname: str, path: object, target: object = None) -> Any:
            if fullname.split(".")[0] in missing:
                return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
            return None

        def create_module(self, spec: Any) -> types.ModuleType:
            module = types.ModuleType(spec.name)

            def attribute(attr: str, _name: str = spec.name) -> Any:
                if attr.startswith("__"):
                    raise AttributeError(attr)
                return type(attr, (_Unavailable,), {"where": f"{_name}.{attr}"})

            module.__getattr__ = attribute  # type: ignore[method-assign]
            return module

        def exec_module(self, module: types.ModuleType) -> None:
            module.__path__ = []

    if missing:
        sys.meta_path.append(StandIn())
    return missing


class _Unavailable:
    where = ""

    def __init__(self, *_: object, **__: object) -> None:
        raise ImportError(f"{self.where}: not installed here (stubbed for the import only)")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _eager_fp8() -> None:
    """ModelOpt's FP8 fake quantization in plain torch ops instead of its CUDA extension, which it compiles with
    ninja and nvcc on first use (minutes, where the toolchain exists): a bounded run on a lent GPU."""
    import modelopt.torch.quantization.tensor_quant as tensor_quant

    tensor_quant.get_cuda_ext_fp8 = lambda raise_if_failed=False: None


def run(out_dir: Path, *, layers: int, frames: int, height: int, width: int, clips: int, steps: int,
        device: str, eager_fp8: bool = False) -> dict[str, Any]:
    import torch
    from diffusers import UniPCMultistepScheduler, WanTransformer3DModel  # noqa: F401 - before the stand-ins

    stubbed = _stub_unused_imports()  # diffusers has looked for scipy already; ModelOpt is imported after this
    if eager_fp8:
        _eager_fp8()

    from wanrt.benchmarks.synthetic import build_expert, expert_config
    from wanrt.engine.spec import ModelSpec
    from wanrt.export import onnx_io
    from wanrt.export.transformer import ExpertGraph, export_inputs
    from wanrt.quant import qdq_graph, torch_ptq, trajectories
    from wanrt.quant.torch_recipe import CalibrationShape, TorchRecipe

    path = out_dir / "quantize_timing.json"

    def save() -> None:  # after every phase: a run stopped by a time limit still leaves what it measured
        path.write_text(json.dumps(result, indent=2) + "\n")

    result: dict[str, Any] = {"layers": layers, "video": [frames, height, width], "clips": clips, "steps": steps,
                              "device": device, "stubbed_imports": stubbed, "torch": torch.__version__,
                              "fp8_fake_quant": "torch eager ops" if eager_fp8 or not device.startswith("cuda")
                              else "ModelOpt CUDA extension if it compiles, else torch eager ops"}
    if device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name(torch.device(device))
        torch.cuda.reset_peak_memory_stats()
    config = expert_config("wan2.2-a14b", layers)
    t0 = time.perf_counter()
    expert = build_expert(config, device, torch.bfloat16)
    _sync(device)
    result["build_s"] = time.perf_counter() - t0
    save()
    result["expert_bf16_gib"] = sum(p.numel() * p.element_size() for p in expert.parameters()) / 1024**3
    spec = ModelSpec(experts=("transformer",), boundary_ratio=None, scheduler_config={}, latent_channels=16,
                     patch_size=(1, 2, 2), vae_scale_temporal=4, vae_scale_spatial=8, latents_mean=(0.0,) * 16,
                     latents_std=(1.0,) * 16, text_length=512, text_dim=config["text_dim"])
    shape = CalibrationShape(frames=frames, height=height, width=width, steps=steps)
    latent = (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
    result["tokens"] = latent[2] * (latent[3] // 2) * (latent[4] // 2)
    g = torch.Generator("cpu").manual_seed(0)
    text = [torch.randn(1, 512, config["text_dim"], generator=g).bfloat16() for _ in range(clips)]
    negative = torch.zeros(1, 512, config["text_dim"], dtype=torch.bfloat16)

    def clip(i: int) -> trajectories.Handoff:
        scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                            num_train_timesteps=1000, flow_shift=3.0)
        scheduler.set_timesteps(steps, device="cpu")
        scheduler.set_begin_index(0)
        return trajectories.Handoff(torch.randn(latent, generator=g), scheduler, 0)

    starts = [clip(i) for i in range(clips)]
    calls = [0]

    def count(*_: Any) -> None:
        calls[0] += 1

    def loop(model: Any) -> None:
        for i, c in enumerate(starts):
            trajectories.run_segment(model, "transformer", c, text[i], negative, shape.guidance, spec,
                                     device=device, hook=count)

    recipe = TorchRecipe(mode="fp8", quantize_attention=True, high_precision_blocks=())
    t0 = time.perf_counter()
    ranges = torch_ptq.quantize(expert, recipe, loop)
    _sync(device)
    result["calibrate_s"] = time.perf_counter() - t0
    result["calibration_calls"] = calls[0]
    result["quantized"] = ranges.summary()
    save()
    x = torch.randn(2, *latent[1:], generator=g).to(device, torch.bfloat16)
    t = torch.full((2,), 900.0, device=device)
    e = torch.cat([text[0], negative]).to(device)
    with torch.no_grad():
        for label, context in (("bf16", torch_ptq.quantizers_off(expert)), ("fake_quant", _nothing())):
            with context:
                expert(hidden_states=x, timestep=t, encoder_hidden_states=e, return_dict=False)  # warm-up
                _sync(device)
                t0 = time.perf_counter()
                expert(hidden_states=x, timestep=t, encoder_hidden_states=e, return_dict=False)
                _sync(device)
                result[f"call_{label}_s"] = time.perf_counter() - t0
    del x, e
    save()
    with tempfile.TemporaryDirectory(dir=out_dir) as scratch:
        example, shapes = export_inputs(spec, expert.config)
        module = ExpertGraph(expert, compute_dtype=torch.bfloat16)
        t0 = time.perf_counter()
        with torch_ptq.quantizers_off(expert):
            args = tuple(torch.from_numpy(v).to(device) for v in example.values())
            onnx_io.export_graph(module, args, Path(scratch) / "bf16.onnx", input_names=list(example),
                                 output_names=["noise_pred"], dynamic_shapes=shapes, external_data_threshold=0)
        result["export_s"] = time.perf_counter() - t0
        save()
        t0 = time.perf_counter()
        qdq = qdq_graph.insert_qdq(Path(scratch) / "bf16.onnx", Path(scratch) / "q.onnx", ranges,
                                   recipe.placement_rules())
        result["qdq_insert_s"] = time.perf_counter() - t0
        result["qdq"] = {"matmuls": len(qdq.quantized), "attention": len(qdq.attention),
                         "problems": qdq_graph.check_attention_qdq(Path(scratch) / "q.onnx", qdq)}
        result["graph_gib"] = sum(p.stat().st_size for p in Path(scratch).glob("q.onnx*")) / 1024**3
    if device.startswith("cuda"):
        result["gpu_peak_gib"] = torch.cuda.max_memory_allocated() / 1024**3
    result["host_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    result["per_layer_calibrate_s"] = result["calibrate_s"] / layers
    return result


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wanrt.benchmarks.quantize_timing",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default=None, help="default cuda when there is one")
    parser.add_argument("--eager-fp8", action="store_true",
                        help="ModelOpt's FP8 fake quantization in torch ops, not its JIT-compiled CUDA extension")
    args = parser.parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = run(args.out, layers=args.layers, frames=args.frames, height=args.height, width=args.width,
                 clips=args.clips, steps=args.steps, device=device, eager_fp8=args.eager_fp8)
    result["total_s"] = time.perf_counter() - started
    path = args.out / "quantize_timing.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
