"""`wanrt eval`: held-out prompt set, scoring, table and JSON."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np

from wanrt.evaluate.eval import evaluate, format_table, heldout_cases
from wanrt.evaluate.probes import Probes
from wanrt.reef.prompts import make_prompt
from wanrt.reef.renderer import MOTIONS, PALETTES, render_clip


def test_heldout_cases_are_balanced_and_held_out():
    cases = heldout_cases(25, seed=0)
    assert Counter(c.attrs.motion for c in cases) == {m: 5 for m in MOTIONS}
    assert Counter(c.attrs.palette for c in cases) == {p: 5 for p in PALETTES}
    assert {c.lang for c in cases} == {"en", "zh"}
    rng = np.random.default_rng(0)
    for case in cases[:6]:
        train = {make_prompt(case.attrs, rng, split="train", lang=case.lang) for _ in range(100)}
        assert case.prompt not in train
    assert [c.prompt for c in heldout_cases(25, seed=0)] == [c.prompt for c in cases]  # deterministic


def test_a_perfect_generator_scores_full_marks():
    cases = heldout_cases(10, seed=1)
    result = evaluate(lambda case: render_clip(case.attrs, seed=case.seed + 7), cases, Probes.load(),
                      reference=False)
    acc = result["summary"]["accuracy"]
    assert acc["motion"] >= 0.9 and acc["palette"] == 1.0
    assert "motion" in format_table(result) and len(result["rows"]) == 10


def test_eval_command_on_a_model(tiny_artifact_dir, tmp_path, capsys):
    from wanrt.cli import main

    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(tiny_artifact_dir), "--prompts", "2", "--frames", "5", "--height", "32",
                 "--width", "32", "--steps", "2", "--json", str(out)]) == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["summary"]["cases"] == 2 and len(data["rows"]) == 2
    assert set(data["rows"][0]) >= {"prompt", "motion", "palette", "subject", "reference"}
    assert "accuracy" in capsys.readouterr().out
