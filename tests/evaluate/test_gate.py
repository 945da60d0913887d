"""`wanrt eval --against full`: the quality gate of shortcuts, on the reef demo model at a small size."""

from __future__ import annotations

import json

import pytest

from wanrt.cli import main
from wanrt.errors import InvalidRequestError
from wanrt.evaluate.gate import PSNR_GATE_DB, SSIM_GATE, Setting, parse_setting


def test_gate_measures_each_setting_against_full_with_its_floors(tmp_path, capsys):
    out = tmp_path / "gate.json"
    assert main(["eval", "--prompts", "2", "--frames", "5", "--height", "32", "--width", "32", "--against", "full",
                 "--setting", "cache=1.0", "--setting", "schedule=lightning-4step,label=fast",
                 "--json", str(out), "--markdown", str(tmp_path / "gate.md")]) == 0
    result = json.loads(out.read_text())
    rows = {r["setting"]: r for r in result["rows"]}
    assert list(rows) == ["full", "full, run again", "full, another seed", "cache=1.0", "fast"]
    full, again, reseeded = rows["full"], rows["full, run again"], rows["full, another seed"]
    assert full["dit_calls"] == 16 and full["time_ratio"] == 1.0  # 8 guided steps: 16 samples through an expert
    # On a CPU the same setting twice is bit-exact: the floor of the measurement itself.
    assert again["psnr_db"] == 100.0 and again["ssim"] == pytest.approx(1.0)
    assert reseeded["psnr_db"] < 100.0  # another seed is another clip
    cache = rows["cache=1.0"]
    assert cache["dit_calls"] + cache["dit_calls_saved"] == 16
    assert rows["fast"]["dit_calls"] == 4  # 4 steps without guidance
    for row in result["rows"][1:]:
        assert row["below_gate"] == (row["psnr_db"] < PSNR_GATE_DB or row["ssim"] < SSIM_GATE)
        assert row["psnr_db_worst"] <= row["psnr_db"] + 1e-9 and 0 < row["time_ratio"]
    clips = result["clips"]["fast"]
    assert [c["seed"] for c in clips] == [c["seed"] for c in result["clips"]["full"]]  # same seeds as full
    table = (tmp_path / "gate.md").read_text()
    assert table.startswith("| setting |") and "| fast | 4.0 |" in table
    assert "| fast |" in capsys.readouterr().out


def test_settings_parse_and_bad_ones_are_refused(capsys):
    assert parse_setting("full") == Setting("full")
    assert parse_setting("cache=0.2,steps=20") == Setting("cache=0.2,steps=20", None,
                                                          (("step_cache", 0.2), ("steps", 20)))
    assert parse_setting("model=/x,label=merged").model.as_posix() == "/x"
    for bad in ("cache", "cache=abc", "speed=2", "steps=1.5"):
        with pytest.raises(InvalidRequestError):
            parse_setting(bad)
    assert main(["eval", "--against", "full", "--setting", "cache=9"]) == 2
    assert "step-cache" in capsys.readouterr().err
    assert main(["eval", "--against", "full"]) == 2  # nothing to measure
