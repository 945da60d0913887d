"""benchmarks/vs_diffusers.py: both commands really run, as processes of their own, and the report says so."""

from __future__ import annotations

import json

import pytest

from wanrt.benchmarks.vs_diffusers import main


@pytest.mark.slow  # recovers the reef's diffusers folder and runs diffusers and wanrt once each (~30 s)
def test_side_by_side_on_the_reef_model(tmp_path, capsys):
    assert main(["--points", "5:32x32:2", "--runs", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "vs-diffusers.json").read_text())
    (row,) = report["points"]
    for name in ("diffusers", "wanrt"):
        (run,) = row["runs"][name]
        # Each is a whole process that imported its stack and loaded the model: seconds and 100+ MiB, not a stub.
        assert run["seconds"] > 0.5 and run["cpu_seconds"] > 0.5 and run["peak_rss_bytes"] > 100 << 20
    assert row["wall_ratio"] == pytest.approx(row["median"]["wanrt"]["seconds"] / row["median"]["diffusers"]["seconds"])
    assert "| 5x32x32, 2 |" in (tmp_path / "vs-diffusers.md").read_text()
    assert "wanrt / diffusers" in capsys.readouterr().out
