"""`wanrt bench`: latency per component and end to end, per backend and precision, against the FLOP floor."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from wanrt.benchmarks.components import COMPONENTS
from wanrt.benchmarks.flops import PRESETS
from wanrt.benchmarks.settings import ALL_BACKENDS, TORCH_COMPILE, TORCH_EAGER
from wanrt.benchmarks.synthetic import CONFIGS
from wanrt.engine.request import GenerationRequest
from wanrt.engine.schedules import schedule_names
from wanrt.errors import InvalidRequestError

DEFAULT_OUT = Path("benchmarks/results")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="time each component and the whole request, per backend and "
                                                 "precision, against torch eager and the FLOP floor")
    what = parser.add_argument_group("what to measure")
    what.add_argument("--model", type=Path, action="append", default=[],
                      help="artifact (onnxruntime), diffusers folder (torch, torch.compile) or engines folder "
                           "(tensorrt); repeat to compare several in one run. Default: the reef demo model")
    what.add_argument("--reef-twin", action="store_true",
                      help="also run torch eager and torch.compile on a random-weight diffusers folder with the reef "
                           "model's architecture (the reference the ratios need; needs the export extra)")
    what.add_argument("--synthetic", choices=sorted(CONFIGS), default=None,
                      help="instead: a random-weight expert with this config made on --device (wan2.2-a14b: dim "
                           "5120, 40 heads, ffn 13824), one DiT call with torch eager and torch.compile")
    what.add_argument("--layers", type=int, default=None, help="--synthetic: cut the expert to N layers")
    what.add_argument("--dtype", default="bfloat16", help="--synthetic: torch dtype (default %(default)s)")
    what.add_argument("--backends", default=",".join(ALL_BACKENDS),
                      help="comma-separated subset of %(default)s (those the machine has run)")
    what.add_argument("--components", default=",".join(COMPONENTS), help="comma-separated subset of %(default)s")
    what.add_argument("--serve", action="store_true",
                      help="also: the request through `wanrt serve` vs in-process, and 1/2/4/8 concurrent clients")
    shape = parser.add_argument_group("request shape (default: wanrt's request defaults)")
    shape.add_argument("--preset", choices=sorted(PRESETS), default=None, help="81 frames at 832x480 or 1280x720")
    defaults = GenerationRequest(prompt="-")
    shape.add_argument("--frames", type=int, default=None)
    shape.add_argument("--height", type=int, default=None)
    shape.add_argument("--width", type=int, default=None)
    shape.add_argument("--steps", type=int, default=defaults.steps)
    shape.add_argument("--guidance", type=float, default=defaults.guidance)
    shape.add_argument("--schedule", choices=schedule_names(), default=None,
                       help="denoising schedule (default: each model's own); give its --steps and --guidance too")
    shape.add_argument("--step-cache", type=float, default=None, metavar="THRESHOLD",
                       help="adaptive step cache threshold (default off); DiT calls per clip then count it")
    run = parser.add_argument_group("how")
    run.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    run.add_argument("--warmup", type=int, default=1)
    run.add_argument("--runs", type=int, default=5, help="timed runs per component")
    run.add_argument("--end-to-end-runs", type=int, default=3)
    run.add_argument("--peak-tflops", type=float, default=None,
                     help="the peak the fraction is taken of (default: the GPU's known BF16 peak; on a CPU the "
                          "measured fp32 GEMM ceiling)")
    run.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder (default %(default)s)")
    run.add_argument("--name", default=None, help="results file stem (default: derived from the run)")
    parser.set_defaults(handler=_bench)


def _request(args: argparse.Namespace) -> GenerationRequest:
    base = GenerationRequest(prompt="a green sea turtle glides over a coral reef, sunbeams from above",
                             negative_prompt="blurry, static")
    preset = PRESETS.get(args.preset) if args.preset else None
    frames = args.frames or (preset.frames if preset else base.frames)
    height = args.height or (preset.height if preset else base.height)
    width = args.width or (preset.width if preset else base.width)
    return GenerationRequest(prompt=base.prompt, negative_prompt=base.negative_prompt, frames=frames, height=height,
                             width=width, steps=args.steps, guidance=args.guidance, schedule=args.schedule,
                             step_cache=args.step_cache)


def _choices(text: str, allowed: tuple[str, ...], field: str) -> tuple[str, ...]:
    chosen = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [v for v in chosen if v not in allowed]
    if unknown or not chosen:
        raise InvalidRequestError(field, f"choose from {', '.join(allowed)}; got {text!r}")
    return chosen


def _peak(args: argparse.Namespace) -> dict[str, Any]:
    from wanrt.benchmarks.peaks import cpu_gemm_ceiling_tflops, known_gpu_peak

    if args.peak_tflops:
        return {"tflops": args.peak_tflops, "source": "--peak-tflops"}
    if args.device.startswith("cuda"):
        import torch

        name = torch.cuda.get_device_name()
        tflops = known_gpu_peak(name)
        return {"tflops": tflops, "source": f"{name} BF16 dense data sheet" if tflops else f"{name}: unknown"}
    return {"tflops": round(cpu_gemm_ceiling_tflops(), 4), "source": "measured fp32 GEMM ceiling of this CPU"}


def _bench(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from wanrt.benchmarks.machine import machine_info
    from wanrt.benchmarks.peaks import PEERS
    from wanrt.benchmarks.report import write_results

    backends = _choices(args.backends, ALL_BACKENDS, "backends")
    components = _choices(args.components, COMPONENTS, "components")
    request = _request(args)
    request.validate(_limits())
    bar = tqdm(desc="bench", unit="step", leave=False, file=sys.stderr)

    def say(message: str) -> None:
        bar.set_description_str(message[:70])
        bar.update(1)

    peak = _peak(args)
    result: dict[str, Any] = {"command": "wanrt " + " ".join(sys.argv[1:]),
                              "machine": machine_info(), "peak": peak, "peers": list(PEERS),
                              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        if args.synthetic:
            result.update(_synthetic(args, request, backends, peak["tflops"], say))
            name = args.name or f"synthetic-{args.synthetic}-{args.layers or 'full'}l-{args.device.split(':')[0]}"
        else:
            result.update(_models(args, request, backends, components, peak["tflops"], say))
            name = args.name or f"models-{args.device.split(':')[0]}"
    finally:
        bar.close()
    paths = write_results(result, args.out, name)
    if paths["md"].exists():
        print(paths["md"].read_text(encoding="utf-8"))
    print("\n".join(str(p) for p in paths.values() if p.exists()))
    return 0


def _limits() -> Any:  # noqa: ANN401
    from wanrt.engine.request import Limits

    return Limits(max_frames=161, max_height=1280, max_width=1280)


def _models(args: argparse.Namespace, request: GenerationRequest, backends: tuple[str, ...],
            components: tuple[str, ...], peak: float | None, say: Any) -> dict[str, Any]:  # noqa: ANN401
    from wanrt.benchmarks.bench import run_settings
    from wanrt.benchmarks.components import RunPlan
    from wanrt.benchmarks.settings import model_kind, settings_for

    models = list(args.model)
    if not models:
        from wanrt.reef import default_model_dir

        models = [default_model_dir()]
    plan = RunPlan(request=request, components=components, warmup=args.warmup, runs=args.runs,
                   end_to_end_runs=args.end_to_end_runs)
    out: dict[str, Any] = {"request": _describe(request), "plan": {"warmup": plan.warmup, "runs": plan.runs,
                                                                    "end_to_end_runs": plan.end_to_end_runs}}
    served = next((m for m in models if model_kind(m) == "artifact"), None)  # the first artifact given
    if served is None and (args.reef_twin or args.serve):
        raise InvalidRequestError("model", "--reef-twin and --serve need an exported artifact among --model")
    with tempfile.TemporaryDirectory(prefix="wanrt-bench-") as tmp:
        if args.reef_twin:
            from wanrt.benchmarks.reef_twin import build_reef_twin

            say("building the reef twin")
            models.insert(0, build_reef_twin(served, Path(tmp) / "reef-twin"))  # first: the reference
        settings = [s for m in models for s in settings_for(m, args.device, backends)]
        settings.sort(key=lambda s: s.backend != TORCH_EAGER)  # the reference first, then in the order given
        out.update(run_settings(settings, plan, peak_tflops=peak, progress=say))
    if args.serve:
        from wanrt.benchmarks.serving import bench_serving

        say("serving")
        out["serving"] = bench_serving(served, request, device=args.device)
    return out


def _describe(request: GenerationRequest) -> str:
    cfg = f"CFG {request.guidance:g}" if request.guidance > 1 else "no CFG"
    extra = "".join([f", schedule {request.schedule}" if request.schedule else "",
                     f", step cache {request.step_cache:g}" if request.step_cache else ""])
    return f"{request.frames} frames {request.width}x{request.height}, {request.steps} steps, {cfg}{extra}"


def _synthetic(args: argparse.Namespace, request: GenerationRequest, backends: tuple[str, ...],
               peak: float | None, say: Any) -> dict[str, Any]:  # noqa: ANN401
    from wanrt.benchmarks.flops import VideoShape
    from wanrt.benchmarks.synthetic import ExpertRun, time_expert

    video = VideoShape(request.frames, request.height, request.width)
    layers = args.layers or CONFIGS[args.synthetic]["num_layers"]
    runs = []
    for backend in (b for b in (TORCH_EAGER, TORCH_COMPILE) if b in backends):
        run = ExpertRun(args.synthetic, layers, video, args.device, dtype=args.dtype,
                        compiled=backend == TORCH_COMPILE, warmup=args.warmup, runs=args.runs)
        timed = time_expert(run, progress=say)
        for key in ("batch1", "batch2"):
            entry = timed[key]
            entry["achieved_tflops_per_s"] = entry["flops_measured"] / entry["measured"]["median_s"] / 1e12
            entry["fraction_of_peak"] = entry["achieved_tflops_per_s"] / peak if peak else None
        runs.append({"backend": backend, **timed})
    return {"request": f"one DiT call, {video.frames} frames {video.width}x{video.height}", "synthetic": runs}
