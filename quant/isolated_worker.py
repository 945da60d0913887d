"""The child process of quant/isolated.py: one heavy step (capture or one graph's PTQ) from a job file, its
result written beside it. Apart from isolated.py so that the parent's side never imports the quantizer it serves
(quantizer -> isolated -> quantizer would be a cycle).

    python -m wanrt.quant.isolated_worker capture|ptq JOB.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from wanrt.quant import isolated, placement
from wanrt.quant.quantizer import QuantizeConfig, _quantize_one


def config_from(data: dict[str, Any]) -> QuantizeConfig:
    for key in ("calib_prompts", "report_prompts"):
        data[key] = tuple(data[key])
    return QuantizeConfig(**data)


def main(kind: str, job_path: Path) -> int:
    job = json.loads(job_path.read_text())
    config = config_from(job["config"])
    if kind == "capture":
        from wanrt.engine.loader import load_pipeline
        from wanrt.quant import calibration

        pipeline = load_pipeline(Path(job["source"]), "onnxruntime", device=config.device)
        requests = calibration.calibration_requests(config.calib_prompts, steps=config.calib_steps,
                                                    frames=config.frames, height=config.height, width=config.width)
        isolated.save_recording(calibration.capture(pipeline, requests), Path(job["out"]))
        result: dict[str, Any] = {"calls": "written"}
    elif kind == "ptq":
        name = job["name"]
        rules = placement.TEXT_ENCODER_RULES if name == "text_encoder" else placement.EXPERT_RULES
        _, entry, detail = _quantize_one(Path(job["source"]), Path(job["art_dir"]), job["entry"], name, rules,
                                         isolated.load_samples(Path(job["samples"])), config)
        result = {"entry": entry, "detail": detail.to_dict()}
    else:
        raise SystemExit(f"unknown step {kind!r}")
    job_path.with_suffix(".result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2])))
