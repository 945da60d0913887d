"""Estimated vs measured peak memory of `wanrt generate` over a grid of sizes (CPU, onnxruntime).

Each grid point runs in its own process, the way `wanrt generate` does (load, admission estimate, generate,
H.264 encode); its peak resident set (VmHWM) is what the kernel would have charged. Run it alone on the
machine, serialised with other heavy jobs:

    flock /tmp/wanrt-heavy.lock .venv/bin/python scripts/measure_memory.py [--model DIR] [--grid F:HxW[:G] ...]

and paste the table into README.md ("Memory admission"). ``--speed`` instead times the serving setting (no
onnxruntime CPU arena, no memory pattern) against onnxruntime's defaults, alternating runs in one process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# frames:HEIGHTxWIDTH[:guidance]; up to ~6 GB measured on the reef model, denoise-bound and decode-bound.
DEFAULT_GRID = ("17:96x96", "17:256x256", "17:256x384", "33:256x384", "33:384x384", "33:384x384:1",
                "41:384x448", "5:768x768", "1:1024x1024")


def measure_one(model: str | None, frames: int, height: int, width: int, guidance: float) -> dict[str, object]:
    """In this process: what `wanrt generate` does, then the estimate and the measured peak."""
    from wanrt.engine.admission import admission_for
    from wanrt.engine.loader import load_pipeline
    from wanrt.engine.request import GenerationRequest
    from wanrt.engine.video import write_video

    if model is None:
        from wanrt.reef import default_model_dir

        model = str(default_model_dir())
    pipeline = load_pipeline(Path(model), "onnxruntime")
    admission = admission_for(pipeline, 1 << 50, ("cpu",))
    request = GenerationRequest(prompt="a sea turtle glides over a coral reef", frames=frames, height=height,
                                width=width, steps=1, guidance=guidance)
    estimate = admission.estimator.estimate(request)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        write_video(Path(tmp) / "clip.mp4", pipeline.generate(request), request.fps)
    return {"frames": frames, "height": height, "width": width, "guidance": guidance,
            "estimate": estimate.total, "resident": estimate.resident, "stage": estimate.peak_stage,
            "measured": _status_bytes("VmHWM"), "seconds": round(time.monotonic() - started, 1)}


def compare_speed(model: str | None, point: str, runs: int, steps: int | None = None) -> None:
    """Seconds per clip with the serving session options and with onnxruntime's arena and memory pattern."""
    import statistics

    import onnxruntime as ort

    from wanrt.engine.loader import load_pipeline
    from wanrt.engine.request import GenerationRequest

    if model is None:
        from wanrt.reef import default_model_dir

        model = str(default_model_dir())
    original = ort.InferenceSession.__init__
    arena = {"on": False}

    def session(self: object, path: object, options: object = None, *args: object, **kwargs: object) -> None:
        if arena["on"]:  # what onnxruntime does by default: the arena keeps each session's peak
            options.enable_cpu_mem_arena = options.enable_mem_pattern = True
        original(self, path, options, *args, **kwargs)

    ort.InferenceSession.__init__ = session
    pipelines = {}
    for setting in ("serving", "arena"):
        arena["on"] = setting == "arena"
        pipelines[setting] = load_pipeline(Path(model), "onnxruntime")
    frames, height, width, guidance = _parse_point(point)
    request = GenerationRequest(prompt="a sea turtle glides over a coral reef", frames=frames, height=height,
                                width=width, guidance=guidance, **({"steps": steps} if steps else {}))
    # Wall time, and what a loaded machine disturbs less: this process's CPU time and minor page faults (each a
    # page the kernel zeroes: what returning freed buffers to the system costs when they are allocated again).
    samples: dict[str, list[tuple[float, float, int]]] = {"serving": [], "arena": []}
    for _ in range(runs):
        for setting, pipeline in pipelines.items():
            started, cpu, faults = time.perf_counter(), time.process_time(), _minor_faults()
            for _chunk in pipeline.generate(request):
                pass
            samples[setting].append((time.perf_counter() - started, time.process_time() - cpu,
                                     _minor_faults() - faults))
    median = {k: [statistics.median(s[i] for s in v) for i in range(3)] for k, v in samples.items()}
    (wall, cpu, faults), (wall_d, cpu_d, faults_d) = median["serving"], median["arena"]
    print(f"{model} {point}, {request.steps} steps, {runs} runs each (medians): serving {wall:.2f} s "
          f"(CPU {cpu:.2f} s, {faults} page faults), onnxruntime defaults {wall_d:.2f} s (CPU {cpu_d:.2f} s, "
          f"{faults_d} page faults); serving / defaults: wall {wall / wall_d:.2f}, CPU {cpu / cpu_d:.2f}")


def _minor_faults() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _parse_point(text: str) -> tuple[int, int, int, float]:
    frames, size, *guidance = text.split(":")
    height, width = size.split("x")
    return int(frames), int(height), int(width), float(guidance[0]) if guidance else 4.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="artifact folder (default: the embedded reef model)")
    parser.add_argument("--grid", nargs="+", default=list(DEFAULT_GRID), help="points F:HxW[:guidance]")
    parser.add_argument("--speed", metavar="F:HxW", help="compare speed with onnxruntime's arena at this point")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="--speed: denoising steps (default: the request's)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child mode: one point, JSON on stdout
    args = parser.parse_args(argv)
    if args.speed:
        compare_speed(args.model, args.speed, args.runs, args.steps)
        return 0
    if args.one:
        print(json.dumps(measure_one(args.model, *_parse_point(args.one))))
        return 0
    rows = []
    for point in args.grid:
        command = [sys.executable, __file__, "--one", point] + (["--model", args.model] if args.model else [])
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"{point}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            return 1
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{point}: {row}", file=sys.stderr, flush=True)
    mib = 1 << 20
    print("| frames | size | CFG | estimate MiB | measured peak RSS MiB | estimate / measured | stage | run s |")
    print("|---:|---:|:---:|---:|---:|---:|:---|---:|")
    for r in rows:
        print(f"| {r['frames']} | {r['height']}x{r['width']} | {'yes' if r['guidance'] > 1 else 'no'} | "
              f"{r['estimate'] / mib:.0f} | {r['measured'] / mib:.0f} | {r['estimate'] / r['measured']:.2f} | "
              f"{r['stage']} | {r['seconds']} |")
    worst = min(r["estimate"] / r["measured"] for r in rows)
    print(f"\nsmallest estimate / measured: {worst:.2f} (below 1.00 would be an under-estimate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
