"""One benchmark run: every setting's components on one request shape, as ratios to torch eager in the same run."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from wanrt.benchmarks.components import RunPlan, component_calls, end_to_end_call, mp4_call, time_components
from wanrt.benchmarks.flops import VideoShape, forward_flops
from wanrt.benchmarks.settings import TORCH_COMPILE, TORCH_EAGER, Setting
from wanrt.benchmarks.shapes import dit_shape
from wanrt.benchmarks.timing import measure
from wanrt.errors import WanrtError

REFERENCE = TORCH_EAGER


def _dit_flops(setting: Setting, pipeline: Any, plan: RunPlan) -> dict[str, int]:  # noqa: ANN401
    """FLOPs of each DiT component of ``setting`` at the plan's shape (none where the widths are unknown)."""
    spec, request = pipeline.spec, plan.request
    video = VideoShape(request.frames, request.height, request.width)
    out = {}
    for expert in spec.experts:
        shape = dit_shape(setting.model, expert)
        if shape is None:
            continue
        tokens = video.tokens(shape, spec.vae_scale_temporal, spec.vae_scale_spatial)
        total = forward_flops(shape, tokens, spec.text_length).total
        out[f"{expert}_cfg_pair"], out[f"{expert}_batch1"] = 2 * total, total
    if len(out) == 2 * len(spec.experts):
        out["end_to_end"] = sum(out[name] for name in _dit_calls(pipeline, request))  # the DiT's share only
    return out


def _dit_calls(pipeline: Any, request: Any) -> list[str]:  # noqa: ANN401
    """The DiT component each denoising step of ``request`` runs, as the pipeline chooses them (every step:
    the step cache, when on, skips some of them at run time)."""
    from wanrt.engine.schedules import make_scheduler

    spec = pipeline.spec
    scheduler = make_scheduler(spec.scheduler_config, request.schedule or pipeline.defaults.schedule, request.steps,
                               request.shift)
    scales = {spec.experts[0]: request.guidance, spec.experts[-1]: request.effective_guidance_2}
    calls = []
    for t in scheduler.timesteps:
        expert = spec.expert_for(float(t))
        calls.append(f"{expert}_cfg_pair" if scales[expert] > 1.0 else f"{expert}_batch1")
    return calls


def run_settings(settings: list[Setting], plan: RunPlan, *, peak_tflops: float | None,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Loads each setting in turn (one in memory at a time), times its components, then adds the ratios."""
    say = progress or (lambda _m: None)
    results: list[dict[str, Any]] = []
    for setting in settings:
        entry: dict[str, Any] = {"label": setting.label, "backend": setting.backend, "precision": setting.precision,
                                 "model": str(setting.model), "device": setting.device}
        say(f"{setting.label}: loading")
        try:
            started = time.perf_counter()
            pipeline = setting.load()
            entry["load_s"] = time.perf_counter() - started
        except WanrtError as err:  # e.g. torch.compile without a compiler: recorded, the others still run
            entry["skipped"] = str(err)
            results.append(entry)
            continue
        calls = component_calls(pipeline, plan)
        seen: list[Any] = []  # the end-to-end runs' progress: DiT calls as the pipeline made them
        if "end_to_end" in plan.components:
            calls["end_to_end"] = end_to_end_call(pipeline, plan.request, on_progress=seen.append)
        # torch's allocator peak where torch runs on the GPU; onnxruntime and TensorRT keep their own pools.
        torch_cuda = setting.backend in (TORCH_EAGER, TORCH_COMPILE) and setting.device.startswith("cuda")
        timings = time_components(calls, plan, cuda=torch_cuda,
                                  progress=lambda name, s=setting: say(f"{s.label}: {name}"))
        flops = _dit_flops(setting, pipeline, plan)
        # DiT calls per clip (one sample through one expert; a CFG pair is two): the machine-independent cost.
        planned = sum(2 if name.endswith("_cfg_pair") else 1 for name in _dit_calls(pipeline, plan.request))
        entry["dit_calls_per_clip"] = seen[-1].dit_calls if seen else planned
        entry["dit_calls_saved_per_clip"] = seen[-1].dit_calls_saved if seen else 0
        entry["components"] = {}
        for name, timing in timings.items():
            row = timing.summary()
            if name in flops:
                row["flops"] = flops[name]
                row["achieved_tflops_per_s"] = flops[name] / timing.median_s / 1e12
                row["fraction_of_peak"] = row["achieved_tflops_per_s"] / peak_tflops if peak_tflops else None
            entry["components"][name] = row
        results.append(entry)
        del pipeline, calls
        gc.collect()
    _add_ratios(results)
    out: dict[str, Any] = {"settings": results, "reference": REFERENCE}
    if "mp4" in plan.components:
        say("mp4 encode")
        out["mp4_encode"] = measure(mp4_call(plan.request), warmup=plan.warmup, runs=plan.runs).summary()
    return out


def _add_ratios(results: list[dict[str, Any]]) -> None:
    """Each component's median over torch eager's for the same component (the first torch eager setting)."""
    reference = next((r for r in results if r["backend"] == REFERENCE and "components" in r), None)
    for entry in results:
        for name, row in entry.get("components", {}).items():
            base = reference["components"].get(name) if reference else None
            row["ratio_to_torch_eager"] = row["median_s"] / base["median_s"] if base else None
