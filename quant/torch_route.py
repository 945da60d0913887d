"""`wanrt quantize --model DIFFUSERS_FOLDER`: the torch route, ModelOpt PTQ on each bf16 expert.

Per expert, in order, one in memory at a time (two 14B experts on an 80 GB GPU):

1. load it in bf16 as diffusers does (fp32 islands kept), on the GPU when there is one;
2. calibrate: ``mtq.quantize`` with a forward loop over the expert's own segment of real denoising trajectories
   (quant/trajectories.py: the high-noise expert sees the timesteps at or above the boundary, the low-noise
   one the clips the first handed over);
3. report: the held-out clips' segment again, quantized (FP8 softmax included) and bf16 (quantizers off),
   with each quantized call compared to bf16 on the same input;
4. export: the dynamo exporter on the same module with its quantizers off (bf16, fused Attention), then
   quant/qdq_graph.py writes the calibrated ranges in as Q/DQ; placement, attention and dtype checks;
5. free it.

Then the VAE decodes both sets of clips (PSNR/SSIM against bf16, the gate), and the artifact is completed with
the text encoder, VAE decoder and tokenizer of a `wanrt export` (``--base ART``, or exported here) and
published atomically, like every stage.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from wanrt import measures
from wanrt.engine.artifact import (
    MANIFEST_NAME,
    GraphQuantization,
    Manifest,
    Quantization,
    hash_folder,
    load_artifact,
    write_manifest,
)
from wanrt.errors import InvalidRequestError
from wanrt.publish import destination, publishing
from wanrt.quant import REPORT_NAME, QuantizationError, QuantizationGateError, placement, prompts, trajectories
from wanrt.quant.torch_recipe import RECIPE_SHAPE, REPORT_SHAPE, CalibrationShape, TorchRecipe

REPORT_SEED = 10_000
# The quantized graph, run by onnxruntime on the CPU, against the fake-quantized torch module: only graphs this
# small (bf16 weights) are run, the rest is checked by its structure. The limit is the bf16 noise floor of the
# two (measured at the same time, same input) times this factor, plus an absolute floor for tiny models.
ONNX_CHECK_MAX_BYTES = 1024**3
ONNX_CHECK_FACTOR, ONNX_CHECK_FLOOR = 3.0, 2e-2

Say = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class TorchQuantizeConfig:
    recipe: TorchRecipe = TorchRecipe()
    calib_prompts: tuple[str, ...] = prompts.CALIBRATION_PROMPTS
    calib_shape: CalibrationShape = RECIPE_SHAPE
    report_prompts: tuple[str, ...] = prompts.REPORT_PROMPTS[:4]
    report_shape: CalibrationShape = REPORT_SHAPE
    device: str = "cpu"
    min_psnr_db: float = 30.0
    force: bool = False
    base: Path | None = None  # a `wanrt export` of the same folder: its text encoder, VAE and tokenizer
    text_dtype: str = "bf16"  # when exporting them here instead
    seed: int = 0

    def validate(self) -> None:
        self.recipe.validate()
        self.calib_shape.validate("calib_shape")
        self.report_shape.validate("report_shape")
        if not self.calib_prompts:
            raise InvalidRequestError("calib_prompts", "no prompt")
        if not self.report_prompts:
            raise InvalidRequestError("report_prompts", "no prompt")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise InvalidRequestError("device", f"must be cpu or cuda[:N], got {self.device!r}")


def quantize_diffusers(model_dir: Path, out_dir: Path, config: TorchQuantizeConfig, *,
                       say: Say | None = None) -> dict[str, Any]:
    """Quantizes the experts of the diffusers folder ``model_dir`` into the artifact ``out_dir``; returns the
    report. Raises QuantizationGateError (nothing written) when the worst report clip is under the gate."""
    from wanrt.engine.spec import spec_from_diffusers
    from wanrt.quant import torch_memory, torch_ptq

    say = say or (lambda _m: None)
    config.validate()
    model_dir = Path(model_dir)
    spec = spec_from_diffusers(model_dir)
    torch_ptq.require_modelopt_torch()
    base = _check_base(config.base, spec) if config.base is not None else None
    estimate = torch_memory.estimate_torch_quantize(model_dir, spec, config.calib_shape, len(config.calib_prompts))
    say(f"memory estimate: {estimate.as_dict()}")
    torch_memory.refuse_unless_fits(estimate, config.device)
    out_dir = destination(out_dir)
    with publishing(out_dir) as partial:
        report = _quantize_into(model_dir, spec, partial, config, base, estimate, say)
    say(f"wrote {out_dir}")
    return report


def _check_base(base: Path, spec: Any) -> Manifest:
    manifest = load_artifact(Path(base))
    if manifest.quantization is not None:
        raise InvalidRequestError("base", f"{base} is already quantized: give the `wanrt export` artifact")
    if manifest.spec.experts != spec.experts:
        raise InvalidRequestError("base", f"{base} has experts {manifest.spec.experts}, the model {spec.experts}")
    return manifest


def _quantize_into(model_dir: Path, spec: Any, art_dir: Path, config: TorchQuantizeConfig, base: Manifest | None,
                   estimate: Any, say: Say) -> dict[str, Any]:
    base_manifest = _non_expert_parts(model_dir, art_dir, config, base, say)
    say(f"encoding {len(config.calib_prompts)} calibration and {len(config.report_prompts)} report prompts")
    encoded = trajectories.encode_prompts(model_dir, [*config.calib_prompts, *config.report_prompts],
                                          device=config.device, max_sequence_length=spec.text_length)
    n_calib = len(config.calib_prompts)
    calib_embeds, report_embeds = encoded.embeds[:n_calib], encoded.embeds[n_calib:]
    calib = [trajectories.start(model_dir, config.calib_shape, config.seed + i, spec) for i in range(n_calib)]
    reference = [trajectories.start(model_dir, config.report_shape, REPORT_SEED + i, spec)
                 for i in range(len(report_embeds))]
    quantized_clips = list(reference)
    graphs, details, experts_report = {}, {}, {}
    for name in spec.experts:
        say(f"{name}: load bf16, calibrate ({config.recipe.mode}) on {n_calib} trajectories "
            f"({config.calib_shape.frames}x{config.calib_shape.height}x{config.calib_shape.width}, "
            f"{config.calib_shape.steps} steps)")
        expert = trajectories.load_expert(model_dir, name, config.device)
        calib, calls, ranges = _calibrate(expert, name, calib, calib_embeds, encoded.negative, spec, config)
        say(f"{name}: {calls} calibration calls; report segment on {len(report_embeds)} held-out clips")
        reference, quantized_clips, experts_report[name] = _report_segment(
            expert, name, reference, quantized_clips, report_embeds, encoded.negative, spec, config)
        say(f"{name}: export and Q/DQ")
        graphs[name], details[name] = _export_expert(expert, name, spec, art_dir, ranges, config, calls,
                                                     experts_report[name])
        del expert
        trajectories._free(config.device)
    say("decoding report clips")
    end_to_end = _clips(model_dir, reference, quantized_clips, config)
    result = _report(config, spec, experts_report, end_to_end, estimate, model_dir)
    (art_dir / REPORT_NAME).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if not result["gate"]["passed"] and not config.force:
        raise QuantizationGateError(
            f"worst report clip PSNR {result['gate']['value_db']:.2f} dB against bf16 is under the gate's "
            f"{config.min_psnr_db:.1f} dB: nothing written (more calibration prompts, --high-precision-blocks, "
            "int8, or --force to keep it)")
    _write_manifest(art_dir, base_manifest, spec, graphs, details, config, result, model_dir)
    return result


def _non_expert_parts(model_dir: Path, art_dir: Path, config: TorchQuantizeConfig, base: Manifest | None,
                      say: Say) -> Manifest:
    """The text encoder, VAE decoder, tokenizer and scheduler config: copied from ``--base`` or exported here."""
    from wanrt.engine.graph_forms import referenced_files

    exported_here = base is None
    if base is None:
        from wanrt.export.exporter import export_pipeline

        say(f"exporting the text encoder ({config.text_dtype}) and VAE decoder")
        source = art_dir / ".base"
        base = export_pipeline(model_dir, source, dtype=config.text_dtype, experts=False,
                               progress=lambda m: say(f"  export: {m}"))
    else:
        source = Path(config.base)  # type: ignore[arg-type]

    skip = {f for name in base.spec.experts if name in base.graphs
            for f in base.graphs[name].get("files", [base.graphs[name]["file"]]) + referenced_files(base.graphs[name])}
    for rel in base.files:
        if rel not in skip:
            (art_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / rel, art_dir / rel)
    if exported_here:
        shutil.rmtree(source)
    return base


def _calibrate(expert: Any, name: str, clips: list, embeds: tuple, negative: Any, spec: Any,
               config: TorchQuantizeConfig) -> tuple[list, int, Any]:
    from wanrt.quant import torch_ptq

    handed: list = list(clips)
    calls = [0]

    def count(*_: Any) -> None:
        calls[0] += 1

    def forward_loop(model: Any) -> None:
        calls[0] = 0
        for i, clip in enumerate(clips):
            handed[i] = trajectories.run_segment(
                model, name, clip, embeds[i], negative, trajectories.guidance_for(spec, name, config.calib_shape),
                spec, device=config.device, hook=count)

    ranges = torch_ptq.quantize(expert, config.recipe, forward_loop)
    if not calls[0]:
        raise QuantizationError(f"{name}: the calibration trajectories never reached this expert (more "
                                "--calib-steps?)")
    return handed, calls[0], ranges


def _report_segment(expert: Any, name: str, reference: list, quantized: list, embeds: tuple, negative: Any,
                    spec: Any, config: TorchQuantizeConfig) -> tuple[list, list, dict[str, Any]]:
    """Both report trajectories through this expert's segment, and its per-call error on the quantized one."""
    import torch

    from wanrt.quant import torch_ptq

    guidance = trajectories.guidance_for(spec, name, config.report_shape)
    per_call: list[dict[str, float]] = []

    def compare(_name: str, step: int, t: float, inputs: tuple, out: Any) -> None:
        hidden, timestep, text = inputs
        with torch_ptq.quantizers_off(expert):
            ref = expert(hidden_states=hidden, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
        got, want = out.float().cpu().numpy(), ref.float().cpu().numpy()
        per_call.append({"step": step, "timestep": t, "rel_error": measures.norm_relative_error(got, want),
                         "cosine": measures.cosine(got, want)})

    next_reference, next_quantized = [], []
    with torch.no_grad():
        for i in range(len(embeds)):
            with torch_ptq.quantizers_off(expert):
                next_reference.append(trajectories.run_segment(expert, name, reference[i], embeds[i], negative,
                                                               guidance, spec, device=config.device))
            with torch_ptq.fp8_softmax(config.recipe.quantize_attention) as softmax_emulated:
                next_quantized.append(trajectories.run_segment(expert, name, quantized[i], embeds[i], negative,
                                                               guidance, spec, device=config.device, hook=compare))
    errors = [c["rel_error"] for c in per_call]
    summary = {"calls": len(per_call), "rel_error_mean": float(np.mean(errors)) if errors else None,
               "rel_error_max": float(np.max(errors)) if errors else None,
               "cosine_min": float(min(c["cosine"] for c in per_call)) if per_call else None,
               "softmax_fp8_emulated": bool(softmax_emulated and config.recipe.quantize_attention),
               "per_timestep": _per_timestep(per_call)}
    return next_reference, next_quantized, summary


def _per_timestep(calls: list[dict[str, float]]) -> list[dict[str, float]]:
    by_t: dict[float, list[float]] = {}
    for c in calls:
        by_t.setdefault(round(c["timestep"], 3), []).append(c["rel_error"])
    return [{"timestep": t, "rel_error_mean": float(np.mean(v))} for t, v in sorted(by_t.items(), reverse=True)]


def _export_expert(expert: Any, name: str, spec: Any, art_dir: Path, ranges: Any, config: TorchQuantizeConfig,
                   calls: int, expert_report: dict[str, Any]) -> tuple[dict[str, Any], GraphQuantization]:
    import torch

    from wanrt.export import attention, onnx_io
    from wanrt.export.transformer import ExpertGraph, export_inputs
    from wanrt.quant import qdq_graph, torch_ptq

    scratch = art_dir / f".{name}-bf16"
    scratch.mkdir()
    bf16_path = scratch / f"{name}.onnx"
    module = ExpertGraph(expert, compute_dtype=torch.bfloat16).eval()
    example, dynamic_shapes = export_inputs(spec, expert.config)
    with torch_ptq.quantizers_off(expert):
        # Exported on the CPU or the GPU, where the expert is; the example is tiny either way.
        device = next(expert.parameters()).device
        args = tuple(torch.from_numpy(v).to(device) for v in example.values())
        onnx_io.export_graph(module, args, bf16_path, input_names=list(example), output_names=["noise_pred"],
                             dynamic_shapes=dynamic_shapes, external_data_threshold=0)
    dest = art_dir / f"{name}.onnx"
    result = qdq_graph.insert_qdq(bf16_path, dest, ranges, config.recipe.placement_rules())
    expert_report["onnx_check"] = _onnx_check(module, expert, bf16_path, dest, example)
    shutil.rmtree(scratch)
    problems = _structure_problems(dest, result, config)
    if problems:
        raise QuantizationError(f"{name}: the quantized graph breaks the rules: {'; '.join(problems[:5])}")
    record, _ = attention.record(dest, lambda _v: [], required=True, onnxruntime_form=False)
    record["quantized"] = result.attention_record(config.recipe.mode)
    files = [dest.name] + ([dest.name + ".data"] if (art_dir / (dest.name + ".data")).exists() else [])
    entry = {"file": dest.name, "files": files, "inputs": list(example), "outputs": ["noise_pred"],
             "shape_ranges": onnx_io.shape_ranges(example, dynamic_shapes), "attention": record, "dtype": "bf16",
             "opset": onnx_io.OPSET}
    detail = GraphQuantization(quantized=result.quantized + result.attention, excluded=result.excluded,
                               calibration_calls=calls,
                               smoothquant={"alpha": config.recipe.smoothquant_alpha,
                                            "activations": ranges.summary()["smoothquant"]}
                               if config.recipe.mode == "int8" else None)
    return entry, detail


def _structure_problems(dest: Path, result: Any, config: TorchQuantizeConfig) -> list[str]:
    """Placement and attention Q/DQ rules, and no compute op in fp32 outside diffusers' own fp32 modules."""
    import onnx

    from wanrt.quant import qdq_graph

    model = onnx.load(os.fspath(dest), load_external_data=False)
    _, problems = placement.check_placement(model, result.plan, config.recipe.mode,
                                            attention={a["name"] for a in result.attention})
    problems += qdq_graph.check_attention_qdq(dest, result)
    fp32 = qdq_graph.compute_dtypes(dest)["high_precision"].get("FLOAT", [])
    problems += [f"{m} computes in fp32" for m in fp32 if not _diffusers_fp32(m)]
    return problems


def _diffusers_fp32(module: str) -> bool:
    """Modules diffusers itself runs in fp32 in a bf16 Wan (WanTransformer3DModel._keep_in_fp32_modules)."""
    from diffusers import WanTransformer3DModel

    keep = set(WanTransformer3DModel._keep_in_fp32_modules or ())
    return bool(keep & set(module.split(".")))


def _onnx_check(module: Any, expert: Any, bf16_path: Path, dest: Path, example: dict) -> dict[str, Any]:
    """onnxruntime (CPU, bf16 emulated) on the bf16 and the quantized graph against torch on one input; only for
    graphs small enough to run here (a 14B expert's is checked by structure and by `wanrt verify` on its GPU)."""
    import torch

    from wanrt.export.precision import cpu_session
    from wanrt.quant import torch_ptq
    from wanrt.quant.ptq import ORT_SESSION_CONFIG

    size = sum(p.stat().st_size for p in bf16_path.parent.iterdir())
    if size > ONNX_CHECK_MAX_BYTES:
        return {"ran": False, "reason": f"bf16 graph of {size / 1024**3:.1f} GiB: checked by structure only"}
    feeds = {k: np.asarray(v) for k, v in example.items()}
    device = next(expert.parameters()).device
    args = [torch.from_numpy(v).to(device) for v in feeds.values()]
    with torch.no_grad():
        with torch_ptq.fp8_softmax(False):
            fake_quant = module(*args).float().cpu().numpy()
        with torch_ptq.quantizers_off(expert):
            bf16 = module(*args).float().cpu().numpy()
    got_bf16 = cpu_session(bf16_path).run(None, feeds)[0]
    got_q = cpu_session(dest, ORT_SESSION_CONFIG).run(None, feeds)[0]
    floor = measures.norm_relative_error(got_bf16, bf16)
    error = measures.norm_relative_error(got_q, fake_quant)
    limit = ONNX_CHECK_FACTOR * floor + ONNX_CHECK_FLOOR
    if not error <= limit:
        raise QuantizationError(f"{dest.name}: onnxruntime on the Q/DQ graph differs from ModelOpt's fake-quantized "
                                f"module by {error:.3e} (the bf16 graph differs from bf16 torch by {floor:.3e})")
    return {"ran": True, "rel_error_vs_fake_quant": error, "bf16_floor": floor, "limit": limit,
            "note": "the graph's softmax quantization is recorded, not run, in onnxruntime; compared without it"}


def _clips(model_dir: Path, reference: list, quantized: list, config: TorchQuantizeConfig) -> dict[str, Any]:
    if not all(c.done() for c in [*reference, *quantized]):
        raise QuantizationError("a report clip did not reach its last step: the experts do not cover the schedule")
    ref_frames = list(trajectories.decode(model_dir, [c.latents for c in reference], device=config.device))
    got_frames = list(trajectories.decode(model_dir, [c.latents for c in quantized], device=config.device))
    clips = [{"prompt": p, "seed": REPORT_SEED + i, "psnr_db": measures.psnr(g, r), "ssim": measures.ssim(g, r)}
             for i, (p, g, r) in enumerate(zip(config.report_prompts, got_frames, ref_frames, strict=True))]
    psnrs, ssims = [c["psnr_db"] for c in clips], [c["ssim"] for c in clips]
    return {"clips": clips, "psnr_db_mean": float(np.mean(psnrs)), "psnr_db_min": float(np.min(psnrs)),
            "ssim_mean": float(np.mean(ssims)), "ssim_min": float(np.min(ssims))}


def _report(config: TorchQuantizeConfig, spec: Any, experts: dict[str, Any], end_to_end: dict[str, Any],
            estimate: Any, model_dir: Path) -> dict[str, Any]:
    blocks = _num_blocks(model_dir, spec)
    worst = end_to_end["psnr_db_min"]
    return {
        "route": "torch (ModelOpt PTQ on the bf16 experts)",
        "mode": config.recipe.mode,
        "reference": "the same bf16 experts, quantizers off (diffusers' bf16 with its fp32 modules)",
        "recipe": config.recipe.as_dict(blocks),
        "calibration": {"prompts": len(config.calib_prompts), **config.calib_shape.as_dict(),
                        "prompts_sha256": prompts.prompts_sha256(config.calib_prompts)},
        "request": config.report_shape.as_dict(), "prompts": list(config.report_prompts),
        "device": config.device, "memory_estimate": estimate.as_dict(),
        "experts": experts, "end_to_end": end_to_end,
        "gate": {"metric": "end-to-end PSNR of the worst report clip against bf16 (dB)", "value_db": worst,
                 "threshold_db": config.min_psnr_db, "passed": worst >= config.min_psnr_db, "forced": config.force},
    }


def _num_blocks(model_dir: Path, spec: Any) -> int:
    return int(json.loads((Path(model_dir) / spec.experts[0] / "config.json").read_text())["num_layers"])


def _write_manifest(art_dir: Path, base: Manifest, spec: Any, graphs: dict, details: dict,
                    config: TorchQuantizeConfig, result: dict[str, Any], model_dir: Path) -> None:
    import modelopt
    import onnx
    import torch

    import wanrt

    tools = {"nvidia-modelopt": modelopt.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
             "wanrt": wanrt.__version__}
    recipe = config.recipe
    quantization = Quantization(
        mode=recipe.mode, graphs=details, onnxruntime_session_config={"session.disable_quant_qdq": "1"},
        weights=f"{recipe.mode} symmetric, per output channel (constant, behind DequantizeLinear)",
        activations=f"{recipe.mode} per tensor (QuantizeLinear/DequantizeLinear), ModelOpt max calibration"
                    + (f", SmoothQuant alpha {recipe.smoothquant_alpha}" if recipe.mode == "int8" else ""),
        tools=tools,
        source={"diffusers": str(model_dir.resolve()), "route": "torch",
                "base_artifact": str(Path(config.base).resolve()) if config.base else None},
        calibration=result["calibration"] | {"calls": {n: d.calibration_calls for n, d in details.items()}},
        unquantized={"experts": "bf16, diffusers' fp32 modules kept", "text_encoder": config.text_dtype
                     if config.base is None else base.graphs.get("text_encoder", {}).get("dtype", "fp32"),
                     "recipe": result["recipe"]},
        report={"file": REPORT_NAME, "psnr_db_mean": result["end_to_end"]["psnr_db_mean"],
                "psnr_db_min": result["end_to_end"]["psnr_db_min"], "ssim_mean": result["end_to_end"]["ssim_mean"],
                "experts": {n: {"rel_error_mean": e["rel_error_mean"], "cosine_min": e["cosine_min"]}
                            for n, e in result["experts"].items()}},
        gate=result["gate"])
    manifest = dataclasses.replace(
        base, graphs={**base.graphs, **graphs}, files=hash_folder(art_dir),
        versions={**base.versions, **tools}, quantization=quantization,
        source_model={**base.source_model, "base_manifest_sha256": _sha256(config.base)},
        created_utc=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    write_manifest(art_dir, manifest)
    load_artifact(art_dir)  # what we publish must read back, hashes included


def _sha256(base: Path | None) -> str | None:
    return hashlib.sha256((Path(base) / MANIFEST_NAME).read_bytes()).hexdigest() if base else None
