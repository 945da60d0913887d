"""The ONNX route's heavy steps each in a process of their own, so no fp32 pipeline stays resident beside them.

1. capture: a child process loads the fp32 artifact in onnxruntime, runs the calibration requests, writes every
   recorded call to an .npz and exits (its pipeline goes with it);
2. PTQ: one child per graph loads only that graph and the captured calls (SmoothQuant, ModelOpt ONNX PTQ,
   placement check, lowering) and writes the quantized graph and what it did;
3. the parent, which held neither, loads the fp32 pipeline again only for the report, after the last PTQ.

    python -m wanrt.quant.isolated capture|ptq JOB.json
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from wanrt.quant import QuantizationError
from wanrt.quant.backend_wrappers import ExpertCall, Recording


def save_recording(record: Recording, path: Path) -> None:
    arrays: dict[str, np.ndarray] = {}
    meta = {"experts": [], "text": len(record.text_calls)}
    for i, call in enumerate(record.expert_calls):
        meta["experts"].append({"expert": call.expert, "timestep": call.timestep, "keys": list(call.feeds)})
        arrays.update({f"e{i}/{k}": v for k, v in call.feeds.items()})
    for i, feeds in enumerate(record.text_calls):
        arrays.update({f"t{i}/{k}": v for k, v in feeds.items()})
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(path, **arrays)


def load_recording(path: Path) -> Recording:
    with np.load(path) as data:
        meta = json.loads(data["meta"].tobytes())
        calls = [ExpertCall(c["expert"], c["timestep"], {k: data[f"e{i}/{k}"] for k in c["keys"]})
                 for i, c in enumerate(meta["experts"])]
        texts = [{k: data[f"t{i}/{k}"] for k in ("input_ids", "attention_mask")} for i in range(meta["text"])]
    return Recording(calls, texts)


def _run_child(kind: str, job: dict[str, Any], scratch: Path) -> dict[str, Any]:
    job_path = scratch / f"{kind}-{job.get('name', 'job')}.json"
    job_path.write_text(json.dumps(job))
    run = subprocess.run([sys.executable, "-m", "wanrt.quant.isolated", kind, str(job_path)], capture_output=True,
                         text=True)
    result_path = job_path.with_suffix(".result.json")
    if run.returncode != 0 or not result_path.exists():
        raise QuantizationError(f"the {kind} process failed (exit {run.returncode}): {run.stderr.strip()[-2000:]}")
    return json.loads(result_path.read_text())


def capture(source: Path, config: Any, scratch: Path) -> Recording:
    """The calibration calls of ``config``'s requests on the fp32 artifact, recorded in a child process."""
    scratch.mkdir(parents=True, exist_ok=True)
    out = scratch / "calibration.npz"
    _run_child("capture", {"source": str(source), "config": _config_dict(config), "out": str(out)}, scratch)
    return load_recording(out)


def quantize_graph(source: Path, art_dir: Path, entry: dict[str, Any], name: str, samples_path: Path,
                   config: Any, scratch: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """quantizer._quantize_one for graph ``name`` in a child process; returns its manifest entry and detail."""
    job = {"name": name, "source": str(source), "art_dir": str(art_dir), "entry": entry,
           "samples": str(samples_path), "config": _config_dict(config)}
    result = _run_child("ptq", job, scratch)
    return result["entry"], result["detail"]


def save_samples(samples: list[dict[str, np.ndarray]], path: Path) -> Path:
    np.savez(path, **{f"{i}/{k}": v for i, feeds in enumerate(samples) for k, v in feeds.items()})
    return path


def _load_samples(path: Path) -> list[dict[str, np.ndarray]]:
    with np.load(path) as data:
        samples: dict[int, dict[str, np.ndarray]] = {}
        for key in data.files:
            index, name = key.split("/", 1)
            samples.setdefault(int(index), {})[name] = data[key]
    return [samples[i] for i in sorted(samples)]


def _config_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _config(data: dict[str, Any]) -> Any:
    from wanrt.quant.quantizer import QuantizeConfig

    for key in ("calib_prompts", "report_prompts"):
        data[key] = tuple(data[key])
    return QuantizeConfig(**data)


def _main(kind: str, job_path: Path) -> int:
    job = json.loads(job_path.read_text())
    config = _config(job["config"])
    if kind == "capture":
        from wanrt.engine.loader import load_pipeline
        from wanrt.quant import calibration

        pipeline = load_pipeline(Path(job["source"]), "onnxruntime", device=config.device)
        requests = calibration.calibration_requests(config.calib_prompts, steps=config.calib_steps,
                                                    frames=config.frames, height=config.height, width=config.width)
        save_recording(calibration.capture(pipeline, requests), Path(job["out"]))
        result: dict[str, Any] = {"calls": "written"}
    elif kind == "ptq":
        from wanrt.quant import placement
        from wanrt.quant.quantizer import _quantize_one

        name = job["name"]
        rules = placement.TEXT_ENCODER_RULES if name == "text_encoder" else placement.EXPERT_RULES
        _, entry, detail = _quantize_one(Path(job["source"]), Path(job["art_dir"]), job["entry"], name, rules,
                                         _load_samples(Path(job["samples"])), config)
        result = {"entry": entry, "detail": detail.to_dict()}
    else:
        raise SystemExit(f"unknown step {kind!r}")
    job_path.with_suffix(".result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1], Path(sys.argv[2])))
