"""`wanrt verify --engines DIR`: the acceptance test a user runs on their GPU after `wanrt build-engines`.

The same inputs go through the TensorRT engines and through a reference, network by network (max and mean
relative error, cosine) and end to end over N prompts (PSNR, SSIM of the clips), with each component's latency.
The reference is either the model itself in bf16 torch on the GPU (``torch_model``: the diffusers folder; one
network at a time, computed before the engines load: engine/tensorrt/torch_reference.py), the one that works at
A14B size, or onnxruntime on the artifact the engines were built from (small models: its CPU kernels write out
attention and run no bf16). Both run at a reduced shape unless told (``shape``), never the engines' 720p.
Writes a JSON report; fails (exit 1) when a number is past its threshold. Thresholds follow each engine's
precision and can be overridden.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from wanrt.engine.request import GenerationRequest
from wanrt.errors import WanrtError
from wanrt.quant.metrics import cosine, psnr, ssim

# Per engine precision: (largest max relative error, smallest cosine). The max relative error is the largest
# element error over the reference's largest magnitude; bf16 keeps 8 mantissa bits (relative step 2^-8).
NETWORK_THRESHOLDS = {"fp32": (1e-2, 0.9999), "fp16": (5e-2, 0.999), "bf16": (1e-1, 0.998),
                      "int8": (2.5e-1, 0.99), "fp8": (2.5e-1, 0.99)}
# End to end (dB, SSIM) per the experts' precision: the denoising loop amplifies per-step differences.
CLIP_THRESHOLDS = {"fp32": (35.0, 0.97), "fp16": (22.0, 0.8), "bf16": (20.0, 0.75), "int8": (16.0, 0.6),
                   "fp8": (16.0, 0.6)}
PROMPTS = ("a school of glowing jellyfish drifts past a hydrothermal vent, bubbles rising",
           "a sea turtle glides over a coral reef in clear blue water",
           "a manta ray banks slowly through murky green water",
           "a diver's torch sweeps across a sunken ship at night", "kelp sways in a strong current under grey light")


class VerificationFailed(WanrtError):
    """TensorRT's outputs differ from onnxruntime's by more than the thresholds."""


@dataclasses.dataclass(frozen=True)
class Thresholds:
    max_rel: float | None = None  # None: by precision
    min_cosine: float | None = None
    min_psnr: float | None = None
    min_ssim: float | None = None

    def network(self, precision: str) -> tuple[float, float]:
        rel, cos = NETWORK_THRESHOLDS.get(precision, NETWORK_THRESHOLDS["int8"])
        return (self.max_rel if self.max_rel is not None else rel, self.min_cosine if self.min_cosine is not None
                else cos)

    def clip(self, precision: str) -> tuple[float, float]:
        db, s = CLIP_THRESHOLDS.get(precision, CLIP_THRESHOLDS["int8"])
        return (self.min_psnr if self.min_psnr is not None else db, self.min_ssim if self.min_ssim is not None else s)


def compare(actual: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    a, r = actual.astype(np.float64), reference.astype(np.float64)
    if a.shape != r.shape:
        raise VerificationFailed(f"output shape {a.shape} differs from onnxruntime's {r.shape}")
    diff = np.abs(a - r)
    return {"max_rel": float(diff.max() / max(np.abs(r).max(), 1e-30)),
            "mean_rel": float(diff.mean() / max(np.abs(r).mean(), 1e-30)), "cosine": cosine(a, r),
            "finite": bool(np.isfinite(a).all())}


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def verify_engines(engines_dir: Path, *, prompts: int = 2, steps: int = 4, thresholds: Thresholds | None = None,
                   device: str = "cuda", seed: int = 0, reference: Path | None = None,
                   torch_model: Path | None = None, shape: Any = None) -> dict[str, Any]:
    """Runs both backends and returns the report (``passed`` says whether every number is within bounds).

    ``reference``: the artifact onnxruntime runs (default: the one the engines were built from). Point it at an
    fp32 export of the same model to measure bf16/fp16/quantized engines against fp32 (onnxruntime's CPU
    provider lacks many bf16 kernels, so a bf16 artifact is a poor reference anyway).
    """
    from wanrt.engine.artifact import load_artifact
    from wanrt.engine.backends.onnxruntime import OnnxRuntimeBackend
    from wanrt.engine.backends.tensorrt import load_tensorrt_pipeline, open_engines
    from wanrt.engine.loader import load_pipeline
    from wanrt.engine.tensorrt.profiles import TEXT_ENCODER, VAE_INIT, VAE_STEP
    from wanrt.engine.tensorrt.torch_reference import default_shape
    from wanrt.engine.text import PromptTokenizer

    thresholds = thresholds or Thresholds()
    art_dir, artifact, engines = open_engines(Path(engines_dir))
    shape = shape or default_shape(engines.opt, engines.limits)
    if torch_model is not None:
        return _verify_against_torch(Path(engines_dir), Path(torch_model), artifact, engines, prompts=prompts,
                                     steps=steps, thresholds=thresholds, device=device, seed=seed, shape=shape)
    trt_pipeline = load_tensorrt_pipeline(Path(engines_dir), device)
    trt = trt_pipeline.backend
    ref_dir = Path(reference) if reference is not None else art_dir
    ref = load_artifact(ref_dir) if reference is not None else artifact
    if set(ref.graphs) != set(artifact.graphs):
        raise VerificationFailed(f"the reference {ref_dir} has graphs {sorted(ref.graphs)}, the engines "
                                 f"{sorted(artifact.graphs)}: not the same model")
    ort = OnnxRuntimeBackend(ref_dir, {n: g["file"] for n, g in ref.graphs.items()},
                             session_config=ref.onnxruntime_session_config)
    spec = artifact.spec
    opt = shape
    rng = np.random.default_rng(seed)
    networks: dict[str, dict[str, Any]] = {}

    def record(graph: str, ours: Callable[[], Any], ref: Callable[[], Any]) -> Any:
        got, t_trt = _timed(ours)
        want, t_ort = _timed(ref)
        got_main, want_main = (got[0], want[0]) if isinstance(got, tuple) else (got, want)
        result = compare(got_main, want_main)
        precision = engines.engines[graph].precision
        max_rel, min_cos = thresholds.network(precision)
        result.update(precision=precision, tensorrt_s=t_trt, onnxruntime_s=t_ort, max_rel_limit=max_rel,
                      cosine_limit=min_cos,
                      passed=result["finite"] and result["max_rel"] <= max_rel and result["cosine"] >= min_cos)
        previous = networks.get(graph)
        if previous is None or previous["max_rel"] < result["max_rel"]:
            networks[graph] = result
        return got, want

    tokenizer = PromptTokenizer(art_dir / "tokenizer.json", spec.text_length)
    ids, mask = tokenizer([PROMPTS[0], ""])
    _, text = record(TEXT_ENCODER, lambda: trt.encode_text(ids, mask), lambda: ort.encode_text(ids, mask))
    latent_frames = (opt.frames - 1) // spec.vae_scale_temporal + 1
    shape = (2, spec.latent_channels, latent_frames, opt.height // spec.vae_scale_spatial,
             opt.width // spec.vae_scale_spatial)
    latents = rng.standard_normal(shape, dtype=np.float32)
    timestep = np.full(2, 500.0, np.float32)
    for expert in spec.experts:
        record(expert, lambda e=expert: trt.predict_noise(e, latents, timestep, text),
               lambda e=expert: ort.predict_noise(e, latents, timestep, text))
    z = latents[:1]
    (_, trt_state), (_, ort_state) = record(VAE_INIT, lambda: trt.decode_first(z[:, :, :1]),
                                            lambda: ort.decode_first(z[:, :, :1]))
    for k in range(1, min(latent_frames, 3)):
        (_, trt_state), (_, ort_state) = record(
            VAE_STEP, lambda k=k, s=trt_state: trt.decode_next(z[:, :, k:k + 1], s),
            lambda k=k, s=ort_state: ort.decode_next(z[:, :, k:k + 1], s))

    ort_pipeline = load_pipeline(ref_dir, "onnxruntime")
    min_db, min_ssim = thresholds.clip(engines.precision)
    clips = []
    for i in range(prompts):
        request = GenerationRequest(prompt=PROMPTS[i % len(PROMPTS)], frames=opt.frames, height=opt.height,
                                    width=opt.width, steps=steps, seed=seed + i)
        got, t_trt = _timed(lambda r=request: np.concatenate(list(trt_pipeline.generate(r))))
        want, t_ort = _timed(lambda r=request: np.concatenate(list(ort_pipeline.generate(r))))
        db, s = psnr(got, want), ssim(got, want)
        clips.append({"prompt": request.prompt, "seed": request.seed, "psnr_db": db, "ssim": s, "tensorrt_s": t_trt,
                      "onnxruntime_s": t_ort, "passed": db >= min_db and s >= min_ssim})
    report = {
        "engines": str(Path(engines_dir).resolve()), "artifact": str(art_dir.resolve()),
        "reference": str(ref_dir.resolve()),
        "tensorrt_version": engines.runtime.tensorrt_version, "gpu": engines.runtime.device_name,
        "precision": engines.precision, "shape": dataclasses.asdict(opt), "steps": steps,
        "reference_kind": "onnxruntime",
        "networks": networks, "clips": clips, "psnr_limit_db": min_db, "ssim_limit": min_ssim,
        "memory_plan": trt.memory_plan.render(),
    }
    report["passed"] = all(n["passed"] for n in networks.values()) and all(c["passed"] for c in clips)
    return report


def _verify_against_torch(engines_dir: Path, model_dir: Path, artifact: Any, engines: Any, *, prompts: int,
                          steps: int, thresholds: Thresholds, device: str, seed: int, shape: Any) -> dict[str, Any]:
    import torch

    from wanrt.engine.backends.tensorrt import load_tensorrt_pipeline
    from wanrt.engine.tensorrt import torch_reference
    from wanrt.engine.tensorrt.engine_manifest import artifact_dir
    from wanrt.engine.tensorrt.profiles import TEXT_ENCODER
    from wanrt.engine.text import PromptTokenizer, zero_padding_positions

    spec = artifact.spec
    # The engines run on ``device``; the reference too when torch sees that GPU (else on the CPU, said in the report).
    torch_device = device if device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    chosen = [PROMPTS[i % len(PROMPTS)] for i in range(max(prompts, 1))]
    seeds = [seed + i for i in range(len(chosen))]
    base = GenerationRequest(prompt="-", frames=shape.frames, height=shape.height, width=shape.width, steps=steps)
    reference = torch_reference.compute(model_dir, spec, chosen, shape, steps=steps, guidance=base.guidance,
                                        guidance_2=base.effective_guidance_2, seeds=seeds, device=torch_device)
    # Only now the engines: the torch networks are gone from the GPU.
    trt_pipeline = load_tensorrt_pipeline(engines_dir, device)
    trt = trt_pipeline.backend
    networks: dict[str, dict[str, Any]] = {}

    def record(graph: str, got: np.ndarray, want: np.ndarray, seconds: float, reference_s: float) -> None:
        result = compare(got, want)
        precision = engines.engines[graph].precision
        max_rel, min_cos = thresholds.network(_against_bf16(precision))
        result.update(precision=precision, tensorrt_s=seconds, torch_s=reference_s, max_rel_limit=max_rel,
                      cosine_limit=min_cos,
                      passed=result["finite"] and result["max_rel"] <= max_rel and result["cosine"] >= min_cos)
        networks[graph] = result

    tokenizer = PromptTokenizer(artifact_dir(engines_dir, engines) / "tokenizer.json", spec.text_length)
    ids, mask = tokenizer([chosen[0], ""])
    text, t_text = _timed(lambda: zero_padding_positions(trt.encode_text(ids, mask), mask))
    want = np.concatenate([reference.text["cond"], reference.text["uncond"]])
    record(TEXT_ENCODER, text, want, t_text, reference.seconds["text_encoder"])
    for expert, (inputs, output) in reference.calls.items():
        got, t_expert = _timed(lambda e=expert, i=inputs: trt.predict_noise(e, *i))
        record(expert, got, output, t_expert, reference.seconds[expert])
    min_db, min_ssim = thresholds.clip(_against_bf16(engines.precision))
    clips = []
    for prompt, clip_seed, noise, want_frames in zip(chosen[:prompts], seeds, reference.latents, reference.frames,
                                                     strict=False):
        request = dataclasses.replace(base, prompt=prompt, seed=clip_seed, latents=noise)
        got_frames, t_trt = _timed(lambda r=request: np.concatenate(list(trt_pipeline.generate(r))))
        db, s = psnr(got_frames, want_frames), ssim(got_frames, want_frames)
        clips.append({"prompt": prompt, "seed": clip_seed, "psnr_db": db, "ssim": s, "tensorrt_s": t_trt,
                      "passed": db >= min_db and s >= min_ssim})
    report = {
        "engines": str(engines_dir.resolve()), "reference": str(model_dir.resolve()),
        "reference_kind": "torch bf16 (diffusers), one network at a time, before the engines loaded",
        "reference_device": torch_device,
        "reference_seconds": reference.seconds,
        "tensorrt_version": engines.runtime.tensorrt_version, "gpu": engines.runtime.device_name,
        "precision": engines.precision, "shape": dataclasses.asdict(shape), "steps": steps,
        "networks": networks, "clips": clips, "psnr_limit_db": min_db, "ssim_limit": min_ssim,
        "memory_plan": trt.memory_plan.render(),
    }
    report["passed"] = all(n["passed"] for n in networks.values()) and all(c["passed"] for c in clips)
    return report


def _against_bf16(precision: str) -> str:
    """The thresholds of a comparison with a bf16 reference: the engine's own, or bf16's when it is finer."""
    return precision if precision in ("bf16", "int8", "fp8") else "bf16"


def summary(report: dict[str, Any]) -> str:
    lines = [f"{'network':<18} {'precision':>9} {'max rel':>9} {'mean rel':>9} {'cosine':>9} {'TRT ms':>8} "
             f"{'ref ms':>8}"]
    for graph, n in report["networks"].items():
        lines.append(f"{graph:<18} {n['precision']:>9} {n['max_rel']:>9.2e} {n['mean_rel']:>9.2e} "
                     f"{n['cosine']:>9.6f} {1e3 * n['tensorrt_s']:>8.1f} "
                     f"{1e3 * n.get('onnxruntime_s', n.get('torch_s', 0.0)):>8.1f}"
                     f"{'' if n['passed'] else '  FAIL'}")
    for c in report["clips"]:
        reference = f", ORT {c['onnxruntime_s']:.2f} s" if "onnxruntime_s" in c else ""
        lines.append(f"clip seed {c['seed']}: PSNR {c['psnr_db']:.1f} dB, SSIM {c['ssim']:.4f} "
                     f"(TRT {c['tensorrt_s']:.2f} s{reference}){'' if c['passed'] else '  FAIL'}")
    lines.append("PASSED" if report["passed"] else "FAILED")
    return "\n".join(lines)


def write_report(report: dict[str, Any], path: Path) -> None:
    Path(path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
