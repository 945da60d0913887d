"""A run's results as JSON, a markdown table and a PNG plot (time per component per setting, FLOP floor marked)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wanrt.benchmarks.peaks import PEERS


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def markdown(result: dict[str, Any]) -> str:
    settings = [s for s in result["settings"] if "components" in s]
    names = list(dict.fromkeys(n for s in settings for n in s["components"]))
    peak = result.get("peak") or {}
    lines = [f"Request: {result['request']}. Median of {result['plan']['runs']} runs (end to end: "
             f"{result['plan']['end_to_end_runs']}) after {result['plan']['warmup']} warm-up; in brackets the ratio "
             f"to torch eager measured in the same run; DiT rows also give achieved TFLOP/s and the fraction of "
             f"{peak.get('tflops', '?')} TFLOP/s ({peak.get('source', 'no peak given')}).", "",
             "| component | " + " | ".join(s["label"] for s in settings) + " |",
             "|---|" + "---|" * len(settings)]
    for name in names:
        cells = []
        for s in settings:
            row = s["components"].get(name)
            if row is None:
                cells.append("-")
                continue
            cell = _fmt_s(row["median_s"])
            if row.get("ratio_to_torch_eager") is not None:
                cell += f" ({row['ratio_to_torch_eager']:.2f}x)"
            if row.get("achieved_tflops_per_s") is not None:
                cell += f", {row['achieved_tflops_per_s'] * 1e3:.1f} GFLOP/s"
                if row.get("fraction_of_peak") is not None:
                    cell += f" = {row['fraction_of_peak']:.1%}"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if any("dit_calls_per_clip" in s for s in settings):
        lines.append("| DiT calls per clip | " + " | ".join(
            f"{s['dit_calls_per_clip']}" + (f" ({s['dit_calls_saved_per_clip']} saved by the step cache)"
                                            if s.get("dit_calls_saved_per_clip") else "")
            for s in settings) + " |")
    if "mp4_encode" in result:
        lines += ["", f"MP4 (H.264, PyAV) encode of the request's frames: {_fmt_s(result['mp4_encode']['median_s'])}."]
    rss = [f"{s['label']}: {max(r['peak_rss_mb'] or 0 for r in s['components'].values()):.0f} MB" for s in settings]
    lines += ["", "Peak host RSS while timing: " + "; ".join(rss) + "."]
    for s in result["settings"]:
        if "skipped" in s:
            lines.append(f"Skipped {s['label']}: {s['skipped']}")
    if "serving" in result:
        lines += ["", serving_markdown(result["serving"])]
    return "\n".join(lines) + "\n"


def serving_markdown(serving: dict[str, Any]) -> str:
    lines = [f"Served (`wanrt serve`, {serving['backend']}, plaintext gRPC on 127.0.0.1) vs in-process, same request "
             f"alternated: {_fmt_s(serving['served_s'])} vs {_fmt_s(serving['in_process_s'])} "
             f"({serving['served_over_in_process']:.2f}x).", "",
             "| concurrent clients | requests | requests/s | p50 | p95 |", "|---|---|---|---|---|"]
    lines += [f"| {c['clients']} | {c['requests']} | {c['requests_per_s']:.2f} | {_fmt_s(c['p50_s'])} | "
              f"{_fmt_s(c['p95_s'])} |" for c in serving["concurrency"]]
    return "\n".join(lines) + "\n"


def synthetic_markdown(result: dict[str, Any]) -> str:
    peak = result.get("peak") or {}
    lines = [f"{result['request']}; peak {peak.get('tflops', '?')} TFLOP/s ({peak.get('source', '-')}).", "",
             "| backend | model | layers | tokens | batch | measured | per layer | extrapolated | TFLOP/s | of peak |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for run in result["synthetic"]:
        for key in ("batch2", "batch1"):
            e = run.get(key)
            if e is None:
                continue
            frac = e.get("fraction_of_peak")
            lines.append(f"| {run['backend']} | {run['model']} {run['dtype']} | {run['layers']} | {run['tokens']} | "
                         f"{key[5:]} | {_fmt_s(e['measured']['median_s'])} | {_fmt_s(e['per_layer_s'])} | "
                         f"{_fmt_s(e['extrapolated_s'])} ({e['extrapolated_layers']} layers) | "
                         f"{e['achieved_tflops_per_s']:.3f} | {f'{frac:.1%}' if frac is not None else '-'} |")
    return "\n".join(lines) + "\n"


def peers_markdown() -> str:
    lines = ["| system | GPU | model | shape | s/step | clip s | source |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {p['system']} | {p['gpu']} | {p['model']} | {p['shape']} | {p['s_per_step'] or '-'} | "
              f"{p.get('clip_s') or '-'} | {p['source']} |" for p in PEERS]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> Path:
    """Horizontal bars, log time axis: one group per component, one bar per setting; black ticks: FLOP floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [s for s in result["settings"] if "components" in s]
    names = list(dict.fromkeys(n for s in settings for n in s["components"]))
    peak = (result.get("peak") or {}).get("tflops")
    height = 0.8 / max(1, len(settings))
    fig, ax = plt.subplots(figsize=(10, 2.2 + 0.45 * len(names) * max(1, len(settings)) ** 0.5))
    for k, s in enumerate(settings):
        ys = [i + k * height for i, n in enumerate(names) if n in s["components"]]
        xs = [s["components"][n]["median_s"] for n in names if n in s["components"]]
        ax.barh(ys, xs, height=height, label=s["label"])
    floor_label = f"FLOP floor at {peak} TFLOP/s"
    for i, name in enumerate(names):
        flops = next((s["components"][name].get("flops") for s in settings
                      if s["components"].get(name, {}).get("flops")), None)
        if flops and peak:
            ax.plot([flops / (peak * 1e12)] * 2, [i - 0.1, i + 0.9], color="black", lw=2, label=floor_label)
            floor_label = None
    floors = [r["flops"] / (peak * 1e12) for s in settings for r in s["components"].values() if peak and r.get("flops")]
    shortest = min([r["median_s"] for s in settings for r in s["components"].values()] + floors)
    ax.set_xlim(left=shortest / 3)  # a log axis has no zero: bars (and floor ticks) start left of the shortest
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(names))], names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("seconds (median, log scale)")
    ax.set_title(f"wanrt bench: {result['request']}", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results(result: dict[str, Any], out_dir: Path, name: str) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{name}.json", "md": out_dir / f"{name}.md"}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if result.get("settings"):
        paths["md"].write_text(markdown(result), encoding="utf-8")
        paths["png"] = plot(result, out_dir / f"{name}.png")
    elif result.get("synthetic"):
        paths["md"].write_text(synthetic_markdown(result), encoding="utf-8")
    return paths
