"""Peak host memory of `wanrt export`, per graph and stage, measured in a child process.

    flock /work/wt/heavy.lock python -m wanrt.benchmarks.export_memory --model DIR --dtype bf16 [--out REPORT.json]

The export runs in a child process (nothing of this process's memory is counted). At each stage boundary the
exporter reports (its progress messages, ``<graph>: <stage>``), the child reads its peak resident set since the
last boundary (``VmHWM`` in /proc/self/status, which counts every page it touched: anonymous memory and mapped
files alike) and resets it (``/proc/self/clear_refs``; the reset also resets what getrusage would report, so the
whole run's peak is the largest stage's). Each graph's peak is set beside its weight bytes (the initializers it
wrote) and beside the plan's estimate (wanrt.plan), so the ratio the README states is computed here, not by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current resident set (Linux >= 4.0)


def _child(model: Path, out: Path, dtype: str, device: str, report: Path) -> None:
    from wanrt.export.exporter import export_pipeline

    stages: list[dict[str, Any]] = []
    current = {"graph": "-", "stage": "start", "started": time.monotonic(), "rss": _status("VmRSS")}

    def progress(message: str) -> None:
        now = time.monotonic()
        stages.append({"graph": current["graph"], "stage": current["stage"], "peak_rss": _status("VmHWM"),
                       "rss_at_start": current["rss"], "seconds": round(now - current["started"], 1)})
        _reset_peak()
        graph, _, stage = message.partition(": ")
        current.update(graph=graph if stage else "-", stage=stage or message, started=now, rss=_status("VmRSS"))
        print(message, file=sys.stderr, flush=True)

    _reset_peak()
    manifest = export_pipeline(model, out, dtype=dtype, device=device, progress=progress)
    files = {name: sum((out / f).stat().st_size for f in entry.get("files", [entry["file"]]))
             for name, entry in manifest.graphs.items()}
    report.write_text(json.dumps({"stages": stages, "graph_file_bytes": files}, indent=1))


def measure(model: Path, dtype: str, device: str = "cpu", out: Path | None = None) -> dict[str, Any]:
    """Runs the export of ``model`` in a child process; per graph: peak host memory, weight bytes, their ratio,
    and the plan's estimate."""
    from wanrt.plan.stages import export_plan

    with tempfile.TemporaryDirectory(prefix="wanrt-export-memory-") as scratch:
        art = Path(out) if out else Path(scratch) / "artifact"
        report = Path(scratch) / "stages.json"
        start = time.monotonic()
        subprocess.run([sys.executable, "-m", "wanrt.benchmarks.export_memory", "--child", "--model", str(model),
                        "--out", str(art), "--dtype", dtype, "--device", device, "--report", str(report)],
                       check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        raw = json.loads(report.read_text())
    plan = export_plan(model, dtype=dtype, device=device)
    graphs: dict[str, Any] = {}
    for row in raw["stages"]:
        if row["graph"] in plan.graphs:
            # The process before this graph: interpreter and libraries, nothing of the graph (the one before freed).
            entry = graphs.setdefault(row["graph"], {"stages": {}, "peak_rss": 0, "process_rss": row["rss_at_start"]})
            entry["stages"][row["stage"]] = {"peak_rss": row["peak_rss"], "seconds": row["seconds"]}
            entry["peak_rss"] = max(entry["peak_rss"], row["peak_rss"])
    for name, entry in graphs.items():
        estimate = plan.graphs[name]
        entry.update(weight_bytes=estimate.weight_bytes, planned_host_bytes=estimate.host_bytes,
                     file_bytes=raw["graph_file_bytes"].get(name),
                     ratio=round(entry["peak_rss"] / estimate.weight_bytes, 3),
                     # what grows with the model: the peak above the process it started in
                     ratio_above_process=round((entry["peak_rss"] - entry["process_rss"]) / estimate.weight_bytes, 3))
    return {"model": str(model), "dtype": dtype, "device": device, "graphs": graphs,
            "peak_rss": max(row["peak_rss"] for row in raw["stages"]),
            "wall_seconds": round(time.monotonic() - start, 1)}


def render(result: dict[str, Any]) -> str:
    gb = 1e9
    rows = [f"export of {result['model']} ({result['dtype']}, {result['device']}), wall {result['wall_seconds']} s",
            f"{'graph':<18} {'weights':>9} {'process':>9} {'peak RSS':>9} {'ratio':>6} {'above':>6} {'plan':>9}  "
            "per stage (peak GB)"]
    for name, g in result["graphs"].items():
        stages = ", ".join(f"{stage} {s['peak_rss'] / gb:.2f}" for stage, s in g["stages"].items())
        rows.append(f"{name:<18} {g['weight_bytes'] / gb:>8.2f}G {g['process_rss'] / gb:>8.2f}G "
                    f"{g['peak_rss'] / gb:>8.2f}G {g['ratio']:>6.2f} {g['ratio_above_process']:>6.2f} "
                    f"{g['planned_host_bytes'] / gb:>8.2f}G  {stages}")
    rows.append("ratio: peak / weights; above: (peak - process before the graph) / weights")
    rows.append(f"whole run peak: {result['peak_rss'] / gb:.2f} GB (GB = 1e9 bytes)")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wanrt.benchmarks.export_memory",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="JSON report (the artifact itself is discarded)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.model, args.out, args.dtype, args.device, args.report)
        return 0
    result = measure(args.model, args.dtype, args.device)
    print(render(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
