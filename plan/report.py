"""Every stage planned on one machine, with the option that would fit where a stage does not: `wanrt plan`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from wanrt.errors import InvalidRequestError
from wanrt.plan.checkpoint import Checkpoint
from wanrt.plan.refusal import refusal_message
from wanrt.plan.stages import (
    Calibration,
    Machine,
    Serving,
    StagePlan,
    build_plan,
    duration,
    export_plan,
    gb,
    quantize_plan,
    serve_plan,
)

Alternatives = list[tuple[str, Callable[[], StagePlan]]]


def export_alternatives(checkpoint: Checkpoint, *, dtype: str, vae_dtype: str = "fp32",
                        device: str = "cpu") -> Alternatives:
    """Options `wanrt export` could take instead, cheapest change first."""
    options: Alternatives = []
    if dtype == "fp32":
        options.append(("--dtype bf16", lambda: export_plan(checkpoint, dtype="bf16", vae_dtype=vae_dtype,
                                                            device=device)))
    if not device.startswith("cuda"):
        options.append(("--device cuda", lambda: export_plan(checkpoint, dtype=dtype, vae_dtype=vae_dtype,
                                                             device="cuda")))
    else:
        options.append(("--device cpu", lambda: export_plan(checkpoint, dtype=dtype, vae_dtype=vae_dtype)))
    return options


def quantize_alternatives(checkpoint: Checkpoint, *, mode: str, route: str, device: str,
                          calibration: Calibration) -> Alternatives:
    """Options `wanrt quantize` could take instead: the torch route on a GPU, then smaller calibration shapes."""
    options: Alternatives = []
    if route == "onnx" or not device.startswith("cuda"):
        options.append(("the torch route on a GPU (--device cuda)",
                        lambda: quantize_plan(checkpoint, mode=mode, route="torch", device="cuda",
                                              calibration=calibration)))
    for frames, height, width in ((calibration.frames, 480, 832), (33, 480, 832), (17, 480, 832)):
        if (frames, height, width) != (calibration.frames, calibration.height, calibration.width) and \
                frames * height * width < calibration.frames * calibration.height * calibration.width:
            smaller = dataclasses.replace(calibration, frames=frames, height=height, width=width)
            options.append((f"a calibration shape of --frames {frames} --height {height} --width {width}",
                            lambda c=smaller: quantize_plan(checkpoint, mode=mode, route=route, device=device,
                                                            calibration=c)))
    return options


def plan_all(checkpoint: Checkpoint, machine: Machine, *, dtype: str = "bf16", export_device: str = "cpu",
             quantize: str | None = "fp8", route: str = "torch", calibration: Calibration | None = None,
             serving: Serving | None = None) -> dict[str, Any]:
    calibration = calibration or Calibration()
    serving = serving or Serving()
    precision = quantize or dtype
    rows = []

    def add(plan: StagePlan, alternatives: Alternatives) -> None:
        fits = plan.fits(machine)
        rows.append({"stage": plan.stage, "settings": plan.settings, "host_bytes": plan.host_bytes,
                     "gpu_bytes": plan.gpu_bytes, "disk_bytes": plan.disk_bytes, "seconds": round(plan.seconds),
                     "fits": fits, "refusal": None if fits else refusal_message(plan, machine, alternatives),
                     "graphs": {n: dataclasses.asdict(g) for n, g in plan.graphs.items()},
                     "notes": list(plan.notes)})

    add(export_plan(checkpoint, dtype=dtype, device=export_device),
        export_alternatives(checkpoint, dtype=dtype, device=export_device))
    if quantize:
        device = "cuda" if route == "torch" else "cpu"
        add(quantize_plan(checkpoint, mode=quantize, route=route, device=device, calibration=calibration,
                          gpu_tflops=machine.gpu_tflops),
            quantize_alternatives(checkpoint, mode=quantize, route=route, device=device, calibration=calibration))
    add(build_plan(checkpoint, precision=precision, serving=serving), [])
    if machine.gpu_bytes is not None:
        try:
            plan, _ = serve_plan(checkpoint, precision=precision, serving=serving, gpu_bytes=machine.gpu_bytes,
                                 gpu_tflops=machine.gpu_tflops)
            add(plan, [])
        except InvalidRequestError as err:
            rows.append({"stage": "serve", "settings": f"{precision} engines", "fits": False,
                         "refusal": err.message.splitlines()[0], "host_bytes": None, "gpu_bytes": None,
                         "disk_bytes": 0, "seconds": None, "graphs": {}, "notes": []})
    return {"model": str(checkpoint.path), "machine": dataclasses.asdict(machine),
            "components": {n: {"params": c.params, "file_bytes": c.file_bytes, "shards": len(c.shards)}
                           for n, c in checkpoint.components.items()},
            "stages": rows}


def render(report: dict[str, Any]) -> str:
    machine = report["machine"]
    parts = ", ".join(f"{n} {c['params'] / 1e9:.2f}B params ({gb(c['file_bytes'])}, {c['shards']} shards)"
                      for n, c in report["components"].items())
    lines = [f"{report['model']}: {parts}",
             f"machine: host {gb(machine['host_bytes'])}, GPU "
             f"{gb(machine['gpu_bytes']) if machine['gpu_bytes'] else 'none'}, disk "
             f"{gb(machine['disk_bytes']) if machine['disk_bytes'] else 'not checked'}", "",
             "| stage | settings | host peak | GPU peak | disk written | time | fits |",
             "|---|---|---|---|---|---|---|"]
    for row in report["stages"]:
        def size(value: int | None) -> str:
            return "-" if not value else gb(value)

        time = duration(row["seconds"]) if row["seconds"] is not None else "-"
        lines.append(f"| {row['stage']} | {row['settings']} | {size(row['host_bytes'])} | {size(row['gpu_bytes'])} "
                     f"| {size(row['disk_bytes'])} | {time} | {'yes' if row['fits'] else 'NO'} |")
    for row in report["stages"]:
        lines.append("")
        lines.append(f"{row['stage']}:")
        for name, g in row["graphs"].items():
            terms = ", ".join(f"{label} {gb(b)}" for label, b in g["terms"])
            lines.append(f"  {name}: host {gb(g['host_bytes'])}" + (f", GPU {gb(g['gpu_bytes'])}" if g["gpu_bytes"]
                                                                   else "") + f", {duration(g['seconds'])}"
                         + (f" ({terms})" if terms else ""))
        lines.extend(f"  note: {note}" for note in row["notes"])
        if row["refusal"]:
            lines.append(f"  refused: {row['refusal']}")
    return "\n".join(lines)
