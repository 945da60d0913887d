"""The quality gate of every shortcut (`wanrt eval --against full --setting ...`).

Each setting (a step-cache threshold, a distilled schedule, another artifact such as a LoRA-merged one) makes
clips for the same held-out prompts and seeds as the reference (by default the model's own full schedule), and
is measured against them: PSNR and SSIM of the frames, the reef probes' motion and palette readings (accuracy
against the prompt, agreement with the reference's reading), DiT calls per clip and time per clip, the time as a
ratio to the reference's in the same run (cases interleave the settings, so machine load falls on all alike).

Beside them, the floors a careful reader needs: the reference run twice (what the backend's own
non-determinism costs: on a CPU it is bit-exact, 100 dB / SSIM 1, on a GPU usually not), and the reference
with another seed (how different two equally good clips of the same prompt are: a shortcut near that line has
drifted to another sample). A setting whose mean PSNR falls under 30 dB or SSIM under 0.90 against the
reference is marked, as SGLang's and TensorRT-LLM's video CI gates do. PSNR is over all clips' pixels together
(the mean squared error pooled), beside the worst clip's.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from wanrt.engine.pipeline import VideoPipeline
from wanrt.engine.request import GenerationRequest
from wanrt.errors import InvalidRequestError
from wanrt.evaluate.eval import EvalCase, score_clip
from wanrt.evaluate.probes import Probes
from wanrt.quant.metrics import PSNR_CAP_DB, psnr, ssim

PSNR_GATE_DB = 30.0
SSIM_GATE = 0.90
REPEAT, RESEED = "full, run again", "full, another seed"
# Setting keys -> request fields (values are parsed by the field's type and checked by GenerationRequest).
_FIELDS = {"cache": ("step_cache", float), "step_cache": ("step_cache", float), "steps": ("steps", int),
           "guidance": ("guidance", float), "guidance_2": ("guidance_2", float), "shift": ("shift", float),
           "schedule": ("schedule", str), "preset": ("schedule", str)}


@dataclasses.dataclass(frozen=True)
class Setting:
    """How to make a clip: a model (None: the one under test) and request fields over its defaults."""

    label: str
    model: Path | None = None
    fields: tuple[tuple[str, Any], ...] = ()

    def request(self, pipeline: VideoPipeline, case: EvalCase, shape: dict[str, int], seed: int) -> GenerationRequest:
        fields = dict(self.fields)
        return pipeline.defaults.request(case.prompt, schedule=fields.pop("schedule", None), seed=seed,
                                         **shape, **fields)


def parse_setting(text: str) -> Setting:
    """``full`` (the model's defaults) or comma-separated ``key=value``: cache (or step_cache), steps, guidance,
    guidance_2, shift, schedule (or preset), model (another artifact), label."""
    text = text.strip()
    if text in ("", "full"):
        return Setting("full")
    fields: dict[str, Any] = {}
    model, label = None, None
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise InvalidRequestError("setting", f"{part!r} in {text!r} is not key=value")
        if key == "model":
            model = Path(value)
        elif key == "label":
            label = value
        elif key in _FIELDS:
            name, kind = _FIELDS[key]
            try:
                fields[name] = kind(value)
            except ValueError:
                raise InvalidRequestError("setting", f"{key}={value!r} is not a {kind.__name__}") from None
        else:
            raise InvalidRequestError("setting", f"unknown key {key!r} in {text!r}; use model, label or "
                                                 f"{', '.join(_FIELDS)}")
    return Setting(label or text, model, tuple(sorted(fields.items())))


def run_gate(pipelines: Callable[[Path | None], VideoPipeline], reference: Setting, settings: list[Setting],
             cases: list[EvalCase], probes: Probes, shape: dict[str, int],
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Generates every case with the reference (twice, and with another seed) and each setting; returns the
    per-setting summary rows (reference first, then the two floors, then the settings) and per-clip readings."""
    say = progress or (lambda _m: None)
    runs = [(REPEAT, reference, 0), (RESEED, reference, 1)] + [(s.label, s, 0) for s in settings]
    clips: dict[str, list[dict[str, Any]]] = {reference.label: []} | {label: [] for label, _, _ in runs}
    for model in dict.fromkeys(s.model for s in (reference, *settings)):  # first runs (session set-up) untimed
        say(f"warm-up {model or 'model'}")
        _clip(pipelines(model), reference if model == reference.model else Setting("warm-up", model), cases[0],
              shape, 0, probes)
    for i, case in enumerate(cases):
        full, full_row = _clip(pipelines(reference.model), reference, case, shape, 0, probes)
        clips[reference.label].append(full_row)
        for label, setting, reseed in runs:
            say(f"[{i + 1}/{len(cases)}] {label}")
            frames, row = _clip(pipelines(setting.model), setting, case, shape, reseed, probes)
            row.update(psnr=psnr(frames, full), ssim=ssim(frames, full),
                       motion_agrees=row["motion"] == full_row["motion"],
                       palette_agrees=row["palette"] == full_row["palette"])
            clips[label].append(row)
    base_seconds = float(np.mean([r["seconds"] for r in clips[reference.label]]))
    rows = [_summary(label, rows, base_seconds) for label, rows in clips.items()]
    return {"reference": reference.label, "gate": {"psnr_db": PSNR_GATE_DB, "ssim": SSIM_GATE}, "rows": rows,
            "clips": clips}


def _clip(pipeline: VideoPipeline, setting: Setting, case: EvalCase, shape: dict[str, int], reseed: int,
          probes: Probes) -> tuple[np.ndarray, dict[str, Any]]:
    request = setting.request(pipeline, case, shape, case.seed + 7919 * reseed)
    last: list[Any] = []
    started = time.perf_counter()
    frames = np.concatenate(list(pipeline.generate(request, on_progress=last.append)))
    seconds = time.perf_counter() - started
    score = score_clip(probes, frames, case.attrs)
    return frames, {"prompt": case.prompt, "seed": request.seed, "seconds": seconds,
                    "dit_calls": last[-1].dit_calls if last else 0,
                    "dit_calls_saved": last[-1].dit_calls_saved if last else 0,
                    "motion": score["motion"]["found"], "motion_correct": score["motion"]["correct"],
                    "palette": score["palette"]["found"], "palette_correct": score["palette"]["correct"],
                    "schedule": request.schedule, "steps": request.steps}


def _summary(label: str, rows: list[dict[str, Any]], base_seconds: float) -> dict[str, Any]:
    mean = (lambda key: float(np.mean([r[key] for r in rows])))  # noqa: E731
    out = {"setting": label, "clips": len(rows), "dit_calls": mean("dit_calls"),
           "dit_calls_saved": mean("dit_calls_saved"), "seconds": mean("seconds"),
           "time_ratio": mean("seconds") / base_seconds if base_seconds else None,
           "motion_accuracy": mean("motion_correct"), "palette_accuracy": mean("palette_correct")}
    if "psnr" in rows[0]:
        # PSNR of the pooled error (mean MSE over the clips), not the mean of per-clip PSNRs, which identical
        # clips (capped at 100 dB) would inflate.
        mse = float(np.mean([255.0**2 / 10 ** (r["psnr"] / 10) for r in rows]))
        pooled = min(PSNR_CAP_DB, 10 * float(np.log10(255.0**2 / mse)))
        out.update(psnr_db=pooled, psnr_db_worst=float(min(r["psnr"] for r in rows)), ssim=mean("ssim"),
                   ssim_worst=float(min(r["ssim"] for r in rows)), motion_agreement=mean("motion_agrees"),
                   palette_agreement=mean("palette_agrees"))
        out["below_gate"] = out["psnr_db"] < PSNR_GATE_DB or out["ssim"] < SSIM_GATE
    return out


def format_gate(result: dict[str, Any]) -> str:
    """The gate as a Markdown table; rows under 30 dB / 0.90 are marked."""
    head = ("| setting | DiT calls / clip | time vs full | PSNR dB (worst) | SSIM (worst) | motion / palette "
            "correct | agree with full |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        calls = f"{r['dit_calls']:.1f}" + (f" (-{r['dit_calls_saved']:.1f})" if r["dit_calls_saved"] else "")
        ratio = f"{r['time_ratio']:.2f}" if r["time_ratio"] is not None else "-"
        correct = f"{r['motion_accuracy']:.0%} / {r['palette_accuracy']:.0%}"
        if "psnr_db" in r:
            mark = " **below 30 dB / 0.90**" if r["below_gate"] else ""
            quality = (f"{r['psnr_db']:.1f} ({r['psnr_db_worst']:.1f}){mark} | {r['ssim']:.3f} ({r['ssim_worst']:.3f})"
                       f" | {correct} | {r['motion_agreement']:.0%} / {r['palette_agreement']:.0%}")
        else:
            quality = f"reference | reference | {correct} | -"
        lines.append(f"| {r['setting']} | {calls} | {ratio} | {quality} |")
    return "\n".join(lines)
