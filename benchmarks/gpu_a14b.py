"""The A14B expert on one GPU with torch (no TensorRT, no network): what `benchmarks/gpu/run.sh` runs.

    python -m wanrt.benchmarks.gpu_a14b --out DIR [--device cuda] [--layers 40] [--presets 480p,720p]

Measures, each into DIR/<name>.json as soon as it is done (a run cut short keeps what it finished):
- ``eager_480p``: one denoising step of a random-weight Wan2.2-A14B expert in bf16, torch eager (SDPA; the
  attention kernels that ran are recorded), the CFG pair in one batch and batch 1;
- ``compile_480p``: the same with torch.compile (diffusers' regional compilation of the repeated blocks);
- ``eager_720p``: the CFG pair at 1280x720;
- ``vae_480p``: the Wan2.1 VAE decoder (what A14B decodes with) per latent frame at 832x480;
each against the FLOP floor and the GPU's peak, beside SGLang's published 5.14 s/step on one H200.
``--model tiny --vae tiny --presets 5x32x32 --device cpu`` runs the same code at a test's size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from wanrt.benchmarks.flops import PRESETS, VideoShape
from wanrt.benchmarks.machine import machine_info
from wanrt.benchmarks.peaks import PEERS, known_gpu_peak
from wanrt.benchmarks.synthetic import ExpertRun, time_expert, time_vae_decode


def parse_video(text: str) -> VideoShape:
    """A preset name (480p, 720p) or FRAMESxHEIGHTxWIDTH."""
    if text in PRESETS:
        return PRESETS[text]
    frames, height, width = (int(v) for v in text.split("x"))
    return VideoShape(frames, height, width)


def with_floor(result: dict[str, Any], peak_tflops: float | None) -> dict[str, Any]:
    """Adds achieved TFLOP/s and the fraction of peak to each batch's extrapolated full-depth time."""
    for key in ("batch1", "batch2"):
        entry = result.get(key)
        if entry is None:
            continue
        tflops = entry["flops_extrapolated"] / entry["extrapolated_s"] / 1e12
        entry["achieved_tflops_per_s"] = tflops
        entry["fraction_of_peak"] = tflops / peak_tflops if peak_tflops else None
        entry["floor_s"] = entry["flops_extrapolated"] / (peak_tflops * 1e12) if peak_tflops else None
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wanrt.benchmarks.gpu_a14b", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="wan2.2-a14b", help="wan2.2-a14b, or tiny (tests)")
    parser.add_argument("--vae", default="wan2.1", help="wan2.1, or tiny (tests)")
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--presets", default="480p,720p", help="first: eager+compile+VAE; others: eager CFG pair")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None, help="default: the GPU's known BF16 peak")
    args = parser.parse_args(argv)

    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    peak = args.peak_tflops or (known_gpu_peak(torch.cuda.get_device_name()) if args.device.startswith("cuda")
                                else None)
    header = {"command": " ".join(sys.argv), "machine": machine, "peak_tflops": peak, "peers": list(PEERS),
              "note": "torch backend numbers (eager / torch.compile, bf16); TensorRT is not on this machine"}

    def save(name: str, result: dict[str, Any], started: float) -> None:
        result = {**header, "wall_s": round(time.monotonic() - started, 1), **result}
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"{name}: {json.dumps({k: v for k, v in result.items() if k.startswith('batch')})[:600]}", flush=True)

    def say(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    videos = [parse_video(p) for p in args.presets.split(",")]
    first, *others = videos
    label = lambda v: f"{v.height}p" if f"{v.height}p" in PRESETS else f"{v.frames}x{v.height}x{v.width}"  # noqa: E731
    jobs: list[tuple[str, Any]] = [
        (f"eager_{label(first)}", lambda: with_floor(time_expert(
            ExpertRun(args.model, args.layers, first, args.device, runs=args.runs), progress=say), peak)),
        (f"vae_{label(first)}", lambda: time_vae_decode(args.vae, first, args.device, runs=args.runs)),
    ]
    if not args.no_compile:
        jobs.insert(1, (f"compile_{label(first)}", lambda: with_floor(time_expert(
            ExpertRun(args.model, args.layers, first, args.device, compiled=True, runs=args.runs), progress=say),
            peak)))
    for video in others:
        jobs.append((f"eager_{label(video)}", lambda v=video: with_floor(time_expert(
            ExpertRun(args.model, args.layers, v, args.device, runs=max(2, args.runs - 1)), batches=(2,),
            progress=say), peak)))
    for name, job in jobs:
        started = time.monotonic()
        say(f"{name} ...")
        save(name, job(), started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
