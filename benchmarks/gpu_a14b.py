"""The A14B torch measurements on one GPU (no TensorRT, no network): what `benchmarks/gpu/run.sh` runs.

    python -m wanrt.benchmarks.gpu_a14b --out DIR [--device cuda] [--presets 480p,720p] [--budget-s 480]

Each job runs in a process of its own and writes DIR/<job>.json when it ends, with its result or, when it
failed or ran out of time, the error and the end of its output, so one job's failure (an out-of-memory VAE, a
torch.compile crash) never loses another's result. In order (the most wanted first, in case time runs out):
- ``e2e_480p``: one whole clip through diffusers' WanPipeline at full width and depth (UMT5-XXL, both experts
  with the boundary switch, a few steps, the Wan2.1 VAE), random weights, bf16, stage by stage (gpu_e2e.py);
- ``eager_480p``: one denoising step of one expert, torch eager (SDPA; the attention kernels that ran are
  recorded), the CFG pair in one batch and batch 1, per layer and extrapolated to 40 layers;
- ``vae_480p``: the Wan2.1 VAE decoder per latent frame (the streaming decoder of export/vae_decoder.py);
- ``eager_720p``: the CFG pair at 1280x720;
- ``compile_480p``: eager_480p with torch.compile (diffusers' regional compilation of the repeated blocks).
Then DIR/summary.md puts them in one table beside the published peers. ``--model tiny --vae tiny
--text-encoder tiny --presets 5x32x32 --device cpu`` runs the same code at a test's size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wanrt.benchmarks.flops import PRESETS, VideoShape
from wanrt.benchmarks.peaks import PEERS, known_gpu_peak

# What a job's child process may print back into its error record.
_TAIL_CHARS = 4000
# Seconds the parent keeps for itself after the last job (the summary, the copy back).
_RESERVE_S = 10


def parse_video(text: str) -> VideoShape:
    """A preset name (480p, 720p) or FRAMESxHEIGHTxWIDTH."""
    if text in PRESETS:
        return PRESETS[text]
    frames, height, width = (int(v) for v in text.split("x"))
    return VideoShape(frames, height, width)


def label(video: VideoShape) -> str:
    name = f"{video.height}p"
    return name if PRESETS.get(name) == video else f"{video.frames}x{video.height}x{video.width}"


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


def jobs(args: argparse.Namespace, peak: float | None,
         say: Callable[[str], None]) -> dict[str, Callable[[], dict[str, Any]]]:
    """Job name -> the call that measures it, in the order they run."""
    from wanrt.benchmarks.gpu_e2e import ClipRun, time_clip
    from wanrt.benchmarks.synthetic import ExpertRun, time_expert, time_vae_decode

    first, *others = [parse_video(p) for p in args.presets.split(",")]
    table: dict[str, Callable[[], dict[str, Any]]] = {
        f"e2e_{label(first)}": lambda: time_clip(ClipRun(
            args.model, args.text_encoder, args.vae, first, args.device, steps=args.steps,
            layers=args.layers), progress=say),
        f"eager_{label(first)}": lambda: with_floor(time_expert(
            ExpertRun(args.model, args.layers, first, args.device, runs=args.runs), progress=say), peak),
        f"vae_{label(first)}": lambda: time_vae_decode(args.vae, first, args.device, runs=args.runs),
    }
    for video in others:
        table[f"eager_{label(video)}"] = lambda v=video: with_floor(time_expert(
            ExpertRun(args.model, args.layers, v, args.device, runs=max(2, args.runs - 1)), batches=(2,),
            progress=say), peak)
    if not args.no_compile:
        table[f"compile_{label(first)}"] = lambda: with_floor(time_expert(
            ExpertRun(args.model, args.layers, first, args.device, compiled=True, runs=args.runs), progress=say),
            peak)
    return table


def run_job(name: str, args: argparse.Namespace, header: dict[str, Any]) -> int:
    """In the child: measures one job and writes its JSON."""
    def say(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {message}", flush=True)

    started = time.monotonic()
    result = jobs(args, header["peak_tflops"], say)[name]()
    record = {**header, "job": name, "status": "ok", "wall_s": round(time.monotonic() - started, 1), **result}
    (args.out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    say("done")
    return 0


def run_all(args: argparse.Namespace, argv: list[str], header: dict[str, Any]) -> int:
    """In the parent: each job in its own process, within what is left of the budget; then the summary."""
    deadline = time.monotonic() + args.budget_s
    names = list(jobs(args, header["peak_tflops"], print))
    if args.jobs:
        unknown = sorted(set(args.jobs.split(",")) - set(names))
        if unknown:
            raise SystemExit(f"unknown job(s) {', '.join(unknown)}; this run has {', '.join(names)}")
        names = [n for n in names if n in args.jobs.split(",")]
    failed = 0
    for name in names:
        left = deadline - time.monotonic() - _RESERVE_S
        if left <= 0:
            write_failure(args.out, name, header, "not started: the budget was spent", None, "")
            failed += 1
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {name}: start ({left:.0f} s left)", flush=True)
        started = time.monotonic()
        command = [sys.executable, "-m", "wanrt.benchmarks.gpu_a14b", *argv, "--run-job", name]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=left)
            output, code = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as expired:
            output, code = _text(expired.stdout) + _text(expired.stderr), None
        print(output[-_TAIL_CHARS:], end="", flush=True)
        if code != 0 or not (args.out / f"{name}.json").exists():
            reason = "timed out" if code is None else f"exit {code}"
            write_failure(args.out, name, header, reason, code, output, time.monotonic() - started)
            failed += 1
    (args.out / "summary.md").write_text(summary(args.out, names), encoding="utf-8")
    print((args.out / "summary.md").read_text(), flush=True)
    return 1 if failed else 0


def _text(data: str | bytes | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def write_failure(out: Path, name: str, header: dict[str, Any], reason: str, code: int | None, output: str,
                  wall_s: float = 0.0) -> None:
    record = {**header, "job": name, "status": "failed", "reason": reason, "returncode": code,
              "wall_s": round(wall_s, 1), "output_tail": output[-_TAIL_CHARS:]}
    (out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def summary(out: Path, names: list[str]) -> str:
    """Our rows (this run) and the published peers' in one table, per denoising step and per clip."""
    rows = ["| system | GPU | model | shape | s/step | clip s | note |", "|---|---|---|---|---|---|---|"]
    for name in names:
        record = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
        gpu = (record.get("machine", {}).get("gpu") or {}).get("name") or record.get("device", "?")
        if record["status"] != "ok":
            rows.append(f"| wanrt torch `{name}` | {gpu} | | | | | {record['status']}: {record['reason']} |")
            continue
        video = record.get("video") or {}
        shape = f"{video.get('width')}x{video.get('height')}, {video.get('frames')} frames"
        if name.startswith("e2e"):
            rows.append(f"| wanrt torch (diffusers WanPipeline), this run | {gpu} | {record['model']} random weights, "
                        f"{record['layers']} layers | {shape}, {record['dtype']} | {record['mean_step_s']:.2f} | "
                        f"{record['clip_s']:.1f} | {len(record['steps'])} steps; encode "
                        f"{record['text_encode_s']:.2f} s, decode {record['decode_s']:.1f} s |")
        elif "batch2" in record:
            kind = "torch.compile" if record.get("compiled") else "torch eager"
            pair = record["batch2"]
            rows.append(f"| wanrt {kind} expert, this run | {gpu} | {record['model']} expert, "
                        f"{record['layers']} layers measured | {shape}, {record['dtype']} | "
                        f"{pair['extrapolated_s']:.2f} | | CFG pair in one batch, extrapolated to "
                        f"{pair['extrapolated_layers']} layers |")
        else:
            rows.append(f"| wanrt torch VAE decode, this run | {gpu} | {record['vae']} VAE | {shape}, "
                        f"{record['dtype']} | | {record['per_clip_s']:.1f} | streaming decoder, per clip |")
    for peer in PEERS:
        rows.append(f"| {peer['system']} (published) | {peer['gpu']} | {peer['model']} | {peer['shape']} | "
                    f"{peer['s_per_step'] or '-'} | {peer.get('clip_s') or '-'} | {peer['source']} |")
    return "# A14B on one GPU, torch backend\n\n" + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m wanrt.benchmarks.gpu_a14b", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="wan2.2-a14b", help="wan2.2-a14b, or tiny (tests)")
    parser.add_argument("--text-encoder", default="umt5-xxl", help="umt5-xxl, or tiny (tests)")
    parser.add_argument("--vae", default="wan2.1", help="wan2.1, or tiny (tests)")
    parser.add_argument("--layers", type=int, default=None, help="expert depth (default: the model's own)")
    parser.add_argument("--presets", default="480p,720p", help="first: e2e+eager+VAE+compile; others: eager CFG pair")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps of the end-to-end clip")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--jobs", default=None, help="comma-separated subset of the jobs (default: all)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget for every job together")
    parser.add_argument("--peak-tflops", type=float, default=None, help="default: the GPU's known BF16 peak")
    parser.add_argument("--run-job", default=None, help=argparse.SUPPRESS)  # the child's one job
    args = parser.parse_args(argv)
    if args.layers is None:
        from wanrt.benchmarks.synthetic import CONFIGS

        args.layers = CONFIGS[args.model]["num_layers"]
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    from wanrt.benchmarks.machine import machine_info

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    peak = args.peak_tflops or (known_gpu_peak(torch.cuda.get_device_name()) if cuda else None)
    header = {"command": "python -m wanrt.benchmarks.gpu_a14b " + " ".join(argv), "machine": machine_info(),
              "peak_tflops": peak, "peers": list(PEERS),
              "note": "torch backend numbers (bf16, random weights at the real widths); TensorRT is not on this "
                      "machine"}
    if args.run_job:
        return run_job(args.run_job, args, header)
    return run_all(args, argv, header)


if __name__ == "__main__":
    sys.exit(main())
