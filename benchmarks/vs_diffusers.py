"""`wanrt generate` against diffusers' own WanPipeline on the same model, as whole processes, side by side.

Each run is a fresh process doing everything a user's command does (import, load, text encoding, every denoising
step with CFG, decoding, H.264 encode to an mp4): ``wanrt generate`` on an exported artifact (onnxruntime), and
diffusers' ``WanPipeline.from_pretrained(...)(...)`` on the diffusers folder it was exported from (torch eager,
fp32, the same prompt, size, steps and guidance pair), its frames written with the same encoder. The two
commands alternate (diffusers, wanrt, diffusers, ...) so a loaded machine slows both alike; each process's wall
time and peak resident set (its own ``ru_maxrss`` from ``wait4``) are recorded, and the medians compared.

    flock /tmp/wanrt-heavy.lock python -m wanrt.benchmarks.vs_diffusers --points 33:128x128:20 81:256x256:20 --runs 3

Without ``--model``/``--diffusers`` it compares the embedded reef model with its diffusers folder recovered from
the artifact's own graphs (reef/recover.py; the same weights, checked against every graph). Writes
``--out``/vs-diffusers.json and .md (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a school of glowing jellyfish drifts past a hydrothermal vent, bubbles rising"
GUIDANCE, GUIDANCE_2, SEED = 4.0, 3.0, 0


def _parse_point(text: str) -> tuple[int, int, int, int]:
    frames, size, steps = text.split(":")
    height, width = size.split("x")
    return int(frames), int(height), int(width), int(steps)


def wanrt_command(artifact: Path, point: str, out: Path) -> list[str]:
    frames, height, width, steps = _parse_point(point)
    return [sys.executable, "-m", "wanrt.cli", "generate", "--model", str(artifact), "--backend", "onnxruntime",
            "--prompt", PROMPT, "--frames", str(frames), "--height", str(height), "--width", str(width),
            "--steps", str(steps), "--guidance", str(GUIDANCE), "--guidance-2", str(GUIDANCE_2),
            "--seed", str(SEED), "--out", str(out)]


def diffusers_command(folder: Path, point: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "wanrt.benchmarks.vs_diffusers", "--run-diffusers", str(folder), point, str(out)]


def run_diffusers(folder: Path, point: str, out: Path) -> None:
    """The diffusers side, in its own process: what a diffusers user writes, then the same mp4 encoder."""
    import numpy as np
    import torch
    from diffusers import WanPipeline

    from wanrt.engine.video import write_video

    frames, height, width, steps = _parse_point(point)
    pipe = WanPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    video = pipe(PROMPT, num_frames=frames, height=height, width=width, num_inference_steps=steps,
                 guidance_scale=GUIDANCE, guidance_scale_2=GUIDANCE_2, output_type="np",
                 generator=torch.Generator().manual_seed(SEED)).frames[0]
    write_video(out, [np.round(video * 255.0).astype(np.uint8)], 16)


def measure(command: list[str]) -> dict[str, float]:
    """Wall seconds, CPU seconds and peak RSS of one process (its own rusage, from wait4; Linux carries the
    parent's peak at fork into it, so this process must stay small: nothing heavy is imported here)."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... exited {process.returncode}: {stderr[-2000:]}")
    return {"seconds": seconds, "peak_rss_bytes": usage.ru_maxrss * 1024,
            "cpu_seconds": usage.ru_utime + usage.ru_stime}


def compare(artifact: Path, folder: Path, points: list[str], runs: int, say: object = print) -> dict:
    results = []
    with tempfile.TemporaryDirectory(prefix="wanrt-vs-diffusers-") as tmp:
        for point in points:
            rows: dict[str, list[dict[str, float]]] = {"diffusers": [], "wanrt": []}
            for run in range(runs):
                for name, command in (("diffusers", diffusers_command(folder, point, Path(tmp) / "d.mp4")),
                                      ("wanrt", wanrt_command(artifact, point, Path(tmp) / "w.mp4"))):
                    rows[name].append(measure(command))
                    say(f"{point} run {run + 1}/{runs} {name}: {rows[name][-1]['seconds']:.1f} s, "
                        f"{rows[name][-1]['peak_rss_bytes'] / 2**20:.0f} MiB")
            median = {name: {key: statistics.median(r[key] for r in values) for key in values[0]}
                      for name, values in rows.items()}
            ours, theirs = median["wanrt"], median["diffusers"]
            results.append({"point": point, "runs": rows, "median": median,
                            "wall_ratio": ours["seconds"] / theirs["seconds"],
                            "peak_rss_ratio": ours["peak_rss_bytes"] / theirs["peak_rss_bytes"]})
    return {"points": results}


def _table(report: dict) -> str:
    lines = ["| frames x size, steps | diffusers WanPipeline: wall, CPU, peak RSS "
             "| wanrt generate: wall, CPU, peak RSS | wanrt / diffusers: wall, CPU, memory |", "|---|---|---|---|"]
    for row in report["points"]:
        frames, height, width, steps = _parse_point(row["point"])
        d, w = row["median"]["diffusers"], row["median"]["wanrt"]
        lines.append(f"| {frames}x{height}x{width}, {steps} "
                     f"| {d['seconds']:.1f} s, {d['cpu_seconds']:.1f} s, {d['peak_rss_bytes'] / 2**20:.0f} MiB "
                     f"| {w['seconds']:.1f} s, {w['cpu_seconds']:.1f} s, {w['peak_rss_bytes'] / 2**20:.0f} MiB "
                     f"| {row['wall_ratio']:.2f}x, {w['cpu_seconds'] / d['cpu_seconds']:.2f}x, "
                     f"{row['peak_rss_ratio']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wanrt.benchmarks.vs_diffusers",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="artifact folder for wanrt (default: the embedded reef model)")
    parser.add_argument("--diffusers", type=Path, help="the diffusers folder it was exported from (default: the "
                                                       "reef model's, recovered from its graphs)")
    parser.add_argument("--points", nargs="+", default=["33:128x128:20", "81:256x256:20"], help="F:HxW:STEPS")
    parser.add_argument("--runs", type=int, default=3, help="runs of each command per point (default %(default)s)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    parser.add_argument("--run-diffusers", nargs=3, help=argparse.SUPPRESS)  # child: FOLDER POINT OUT
    args = parser.parse_args(argv)
    if args.run_diffusers:
        folder, point, out = args.run_diffusers
        run_diffusers(Path(folder), point, Path(out))
        return 0
    if (args.model is None) != (args.diffusers is None):
        parser.error("give both --model and --diffusers, or neither (the reef model)")
    with tempfile.TemporaryDirectory(prefix="wanrt-reef-diffusers-") as tmp:
        artifact, folder = args.model, args.diffusers
        if artifact is None:
            from wanrt.reef import default_model_dir

            artifact, folder = default_model_dir(), Path(tmp) / "reef"
            # In a child: this process stays small, since a child's peak RSS starts from its parent's at fork.
            subprocess.run([sys.executable, "-m", "wanrt.reef.recover", "--artifact", str(artifact), "--out",
                            str(folder)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        report = compare(artifact, folder, args.points, args.runs)
    import diffusers
    import onnxruntime
    import torch

    report |= {"command": " ".join(["python -m wanrt.benchmarks.vs_diffusers", *(argv or sys.argv[1:])]),
               "model": str(args.model or "reef/model (diffusers side recovered from it)"),
               "prompt": PROMPT, "guidance": [GUIDANCE, GUIDANCE_2],
               "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "load_average_at_end": os.getloadavg()},
               "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                            "onnxruntime": onnxruntime.__version__, "torch_threads": torch.get_num_threads()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vs-diffusers.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    table = _table(report)
    (args.out / "vs-diffusers.md").write_text(f"`{report['command']}`\n\n{table}", encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
