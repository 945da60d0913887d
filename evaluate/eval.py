"""Prompt adherence: generate clips for held-out prompts and read their attributes back with the probes.

Works on any model the engine loads (an artifact with onnxruntime, a diffusers folder with torch), so the same
numbers measure what export, quantization or a new backend cost. The prompts come from the reef world's
held-out wording, never used in training; the cases cross every motion with every palette (a Latin square), so
each motion and each palette is asked for equally often and chance is 1/5 for both.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from wanrt.evaluate.probes import Probes, motion_velocity
from wanrt.reef.prompts import LANGUAGES, make_prompt
from wanrt.reef.renderer import MOTIONS, PALETTES, SUBJECTS, SceneAttributes, allowed_motions, render_clip

ATTRIBUTES = ("motion", "palette", "subject")
CHANCE = {"motion": 1 / len(MOTIONS), "palette": 1 / len(PALETTES), "subject": 1 / len(SUBJECTS)}


@dataclasses.dataclass(frozen=True)
class EvalCase:
    prompt: str
    attrs: SceneAttributes
    lang: str
    seed: int


def heldout_cases(n: int, seed: int = 0) -> list[EvalCase]:
    """``n`` held-out prompts: motion x palette pairs in a shuffled fixed order, subjects and languages rotating."""
    rng = np.random.default_rng(seed)
    pairs = [(m, p) for m in MOTIONS for p in PALETTES]
    cases = []
    for i in range(n):
        if i % len(pairs) == 0:
            order = rng.permutation(len(pairs))
        motion, palette = pairs[order[i % len(pairs)]]
        subjects = [s for s in SUBJECTS if motion in allowed_motions(s)]
        subject = subjects[int(rng.integers(len(subjects)))]
        attrs = SceneAttributes(subject, motion, ("slow", "fast")[int(rng.integers(2))], palette)
        lang = LANGUAGES[i % len(LANGUAGES)]
        cases.append(EvalCase(make_prompt(attrs, rng, split="heldout", lang=lang), attrs, lang, 1000 + i))
    return cases


def _accuracy(rows: list[dict[str, Any]], key: str) -> float:
    return float(np.mean([r[key]["correct"] for r in rows])) if rows else float("nan")


def score_clip(probes: Probes, frames: np.ndarray, attrs: SceneAttributes) -> dict[str, dict[str, Any]]:
    """Probe readings of one clip next to what was asked for."""
    found = probes.classify(frames)
    dx, dy, match, _ = motion_velocity(frames)
    out = {k: {"expected": getattr(attrs, k), "found": found[k], "correct": found[k] == getattr(attrs, k)}
           for k in ATTRIBUTES}
    out["motion"]["velocity"] = [round(dx, 4), round(dy, 4)]
    out["motion"]["match"] = round(match, 3)
    return out


def evaluate(generate: Callable[[EvalCase], np.ndarray], cases: list[EvalCase], probes: Probes, *,
             reference: bool = True, frames: int = 17, height: int = 96, width: int = 96,
             progress: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Scores ``generate(case) -> (T, H, W, 3) uint8`` on every case; with ``reference``, also the renderer's
    own clips of the same attributes (what the probes achieve on ground truth: the ceiling)."""
    rows = []
    for i, case in enumerate(cases):
        started = time.monotonic()
        clip = generate(case)
        seconds = time.monotonic() - started
        row = {"prompt": case.prompt, "lang": case.lang, "seed": case.seed, "seconds": round(seconds, 2),
               **score_clip(probes, clip, case.attrs)}
        if reference:
            truth = render_clip(case.attrs, frames=frames, height=height, width=width, seed=case.seed)
            row["reference"] = {k: v["correct"] for k, v in score_clip(probes, truth, case.attrs).items()}
        rows.append(row)
        if progress is not None:
            progress(i, row)
    summary: dict[str, Any] = {"cases": len(rows),
                               "accuracy": {k: _accuracy(rows, k) for k in ATTRIBUTES},
                               "chance": CHANCE,
                               "by_language": {lang: {k: _accuracy([r for r in rows if r["lang"] == lang], k)
                                                      for k in ATTRIBUTES}
                                               for lang in LANGUAGES if any(r["lang"] == lang for r in rows)},
                               "motion_by_class": {m: _accuracy([r for r in rows if r["motion"]["expected"] == m],
                                                                "motion")
                                                   for m in MOTIONS},
                               "palette_by_class": {p: _accuracy([r for r in rows
                                                                  if r["palette"]["expected"] == p], "palette")
                                                    for p in PALETTES},
                               "seconds_per_clip": float(np.mean([r["seconds"] for r in rows])) if rows else 0.0}
    if reference:
        summary["reference_accuracy"] = {k: float(np.mean([r["reference"][k] for r in rows])) for k in ATTRIBUTES}
    return {"summary": summary, "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table: accuracy per attribute, the renderer ceiling, chance, then per class."""
    s = result["summary"]
    lines = [f"{'attribute':<10} {'accuracy':>9} {'renderer':>9} {'chance':>7}   ({s['cases']} held-out prompts)"]
    for k in ATTRIBUTES:
        ref = s.get("reference_accuracy", {}).get(k)
        ref_text = f"{ref:>9.1%}" if ref is not None else f"{'-':>9}"
        lines.append(f"{k:<10} {s['accuracy'][k]:>9.1%} {ref_text} {s['chance'][k]:>7.1%}")
    lines.append("")
    lines.append("motion:  " + "  ".join(f"{m} {v:.0%}" for m, v in s["motion_by_class"].items() if v == v))
    lines.append("palette: " + "  ".join(f"{p} {v:.0%}" for p, v in s["palette_by_class"].items() if v == v))
    for lang, acc in s["by_language"].items():
        lines.append(f"{lang}: " + "  ".join(f"{k} {v:.0%}" for k, v in acc.items()))
    lines.append(f"{s['seconds_per_clip']:.1f} s per clip")
    return "\n".join(lines)


def write_json(path: Path, result: dict[str, Any], meta: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**meta, **result}, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
