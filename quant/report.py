"""The accuracy report: the quantized networks against the unquantized artifact on held-out prompts.

Both runs use the same requests (prompt, seed, so the same initial noise). Per expert: each call of the FP32
run is replayed through the quantized expert with the very same inputs, giving the error of one network
call per timestep, free of drift. End to end: the whole clip is generated again with the quantized networks
(errors compound along the trajectory, as served), and its frames are compared with PSNR and SSIM.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from wanrt import measures
from wanrt.engine.pipeline import VideoPipeline
from wanrt.engine.request import GenerationRequest
from wanrt.engine.text import zero_padding_positions
from wanrt.quant.backend_wrappers import RecordingBackend, SubstitutingBackend, with_backend

Say = Callable[[str], None]


@dataclasses.dataclass
class QuantizedNetworks:
    """onnxruntime sessions of the quantized graphs; ``predict_noise``/``encode_text`` mirror the backend's."""

    experts: dict[str, Any]
    text_encoder: Any | None = None

    def predict_noise(self, expert: str, latents: np.ndarray, timestep: np.ndarray, text: np.ndarray) -> np.ndarray:
        feeds = {"hidden_states": latents, "timestep": timestep, "encoder_hidden_states": text}
        return self.experts[expert].run(None, feeds)[0]

    def encode_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.text_encoder.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]

    def serving(self, pipeline: VideoPipeline) -> VideoPipeline:
        """A pipeline like ``pipeline`` (the FP32 artifact's) that runs these quantized networks instead."""
        swaps: dict[str, Any] = {"predict_noise": self.predict_noise}
        if self.text_encoder is not None:
            swaps["encode_text"] = self.encode_text
        return with_backend(pipeline, SubstitutingBackend(pipeline.backend, **swaps))


def _clip(pipeline: VideoPipeline, request: GenerationRequest) -> np.ndarray:
    return np.concatenate(list(pipeline.generate(request)))


def measure(pipeline: VideoPipeline, quantized: QuantizedNetworks, requests: Sequence[GenerationRequest],
            say: Say) -> dict[str, Any]:
    """Runs every request in FP32 and quantized; returns the report's measurements (JSON-ready)."""
    per_call: dict[str, dict[float, list[tuple[float, float]]]] = {}
    seconds: dict[str, dict[str, list[float]]] = {}
    text_rows: list[dict[str, float]] = []
    clips = []
    served = quantized.serving(pipeline)
    for i, request in enumerate(requests):
        recorder = RecordingBackend(pipeline.backend, keep_outputs=True)
        reference = _clip(with_backend(pipeline, recorder), request)
        record = recorder.record
        for call in record.expert_calls:
            started = time.perf_counter()
            out = quantized.predict_noise(call.expert, **_positional(call.feeds))
            elapsed = time.perf_counter() - started
            per_call.setdefault(call.expert, {}).setdefault(call.timestep, []).append(
                (measures.norm_relative_error(out, call.output), measures.cosine(out, call.output)))
            timing = seconds.setdefault(call.expert, {"fp32": [], "quantized": []})
            timing["fp32"].append(call.seconds)
            timing["quantized"].append(elapsed)
        if quantized.text_encoder is not None:
            text_rows += [_text_error(pipeline, quantized, feeds) for feeds in record.text_calls]
        clip = _clip(served, request)
        row = {"prompt": request.prompt, "seed": request.seed, "psnr_db": round(measures.psnr(clip, reference), 3),
               "ssim": round(measures.ssim(clip, reference), 5)}
        clips.append(row)
        say(f"report [{i + 1}/{len(requests)}] PSNR {row['psnr_db']:.2f} dB SSIM {row['ssim']:.4f}  {request.prompt}")
    experts = {name: _expert_summary(by_t) for name, by_t in per_call.items()}
    psnrs, ssims = [c["psnr_db"] for c in clips], [c["ssim"] for c in clips]
    result: dict[str, Any] = {
        "experts": experts,
        "end_to_end": {"clips": clips, "psnr_db_mean": round(float(np.mean(psnrs)), 3),
                       "psnr_db_min": round(float(np.min(psnrs)), 3), "ssim_mean": round(float(np.mean(ssims)), 5),
                       "ssim_min": round(float(np.min(ssims)), 5)},
        # onnxruntime on this CPU, information only: Q/DQ runs as extra ops here; INT8 pays off in TensorRT.
        "cpu_ms_per_call": {name: {k: round(1000 * float(np.median(v)), 2) for k, v in t.items()}
                            for name, t in seconds.items()},
    }
    if text_rows:
        result["text_encoder"] = {"rel_error_mean": float(np.mean([r["rel_error"] for r in text_rows])),
                                  "cosine_min": float(np.min([r["cosine"] for r in text_rows]))}
    return result


def _positional(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"latents": feeds["hidden_states"], "timestep": feeds["timestep"], "text": feeds["encoder_hidden_states"]}


def _text_error(pipeline: VideoPipeline, quantized: QuantizedNetworks, feeds: dict[str, np.ndarray]) -> dict:
    mask = feeds["attention_mask"]
    ref = zero_padding_positions(pipeline.backend.encode_text(feeds["input_ids"], mask), mask)
    out = zero_padding_positions(quantized.encode_text(feeds["input_ids"], mask), mask)
    return {"rel_error": measures.norm_relative_error(out, ref), "cosine": measures.cosine(out, ref)}


def _expert_summary(by_timestep: dict[float, list[tuple[float, float]]]) -> dict[str, Any]:
    rows = [{"timestep": round(t, 3), "calls": len(v), "rel_error": float(np.mean([e for e, _ in v])),
             "cosine": float(np.min([c for _, c in v]))} for t, v in sorted(by_timestep.items(), reverse=True)]
    errors = [e for v in by_timestep.values() for e, _ in v]
    return {"timesteps": rows, "rel_error_mean": float(np.mean(errors)), "rel_error_max": float(np.max(errors)),
            "cosine_min": float(min(r["cosine"] for r in rows))}


def eval_change(pipeline: VideoPipeline, quantized: QuantizedNetworks, prompts: int, say: Say,
                request: GenerationRequest) -> dict[str, Any]:
    """`wanrt eval`'s prompt adherence of the FP32 and quantized networks on the same held-out cases."""
    from wanrt.evaluate.eval import ATTRIBUTES, evaluate, heldout_cases
    from wanrt.evaluate.probes import Probes

    cases, probes = heldout_cases(prompts, 0), Probes.load()

    def accuracy(on: VideoPipeline) -> dict[str, float]:
        def generate(case: Any) -> np.ndarray:
            return _clip(on, dataclasses.replace(request, prompt=case.prompt, seed=case.seed))

        return evaluate(generate, cases, probes, reference=False, frames=request.frames, height=request.height,
                        width=request.width)["summary"]["accuracy"]

    say(f"eval: {prompts} held-out prompts, FP32")
    fp32 = accuracy(pipeline)
    say(f"eval: {prompts} held-out prompts, quantized")
    quant = accuracy(quantized.serving(pipeline))
    return {"prompts": prompts, "request": {"frames": request.frames, "height": request.height,
                                            "width": request.width, "steps": request.steps,
                                            "guidance": request.guidance},
            "fp32": fp32, "quantized": quant,
            "change_points": {k: round(100 * (quant[k] - fp32[k]), 2) for k in ATTRIBUTES}}


def format_table(report: dict[str, Any]) -> str:
    """The report as the plain-text table `wanrt quantize` prints."""
    mode = report["mode"].upper()
    lines = [f"{'expert':<14} {'timestep':>9} {'calls':>5} {'rel.err':>9} {'cosine':>9}"]
    for name, summary in report["experts"].items():
        for row in summary["timesteps"]:
            lines.append(f"{name:<14} {row['timestep']:>9.1f} {row['calls']:>5} {row['rel_error']:>9.3%} "
                         f"{row['cosine']:>9.6f}")
        lines.append(f"{name:<14} {'all':>9} {'':>5} {summary['rel_error_mean']:>9.3%} {summary['cosine_min']:>9.6f}")
    if "text_encoder" in report:
        te = report["text_encoder"]
        lines.append(f"{'text_encoder':<14} {'':>9} {'':>5} {te['rel_error_mean']:>9.3%} {te['cosine_min']:>9.6f}")
    e2e, req = report["end_to_end"], report["request"]
    lines.append("")
    lines.append(f"end to end, {len(e2e['clips'])} held-out prompts ({req['frames']} frames {req['height']}x"
                 f"{req['width']}, {req['steps']} steps), {mode} vs FP32, same noise:")
    lines.append(f"  PSNR mean {e2e['psnr_db_mean']:.2f} dB, min {e2e['psnr_db_min']:.2f} dB;  "
                 f"SSIM mean {e2e['ssim_mean']:.4f}, min {e2e['ssim_min']:.4f}")
    if "eval" in report:
        ev = report["eval"]
        lines.append(f"  `wanrt eval` adherence ({ev['prompts']} prompts, {ev['request']['steps']} steps), FP32 -> "
                     f"{mode}: " + ", ".join(
            f"{k} {ev['fp32'][k]:.0%} -> {ev['quantized'][k]:.0%}" for k in ev["fp32"]))
    lines.append("  CPU onnxruntime ms per expert call (information only; Q/DQ pays off in TensorRT, not here): "
                 + ", ".join(f"{n} {t['fp32']:.1f} -> {t['quantized']:.1f}"
                             for n, t in report["cpu_ms_per_call"].items()))
    gate = report["gate"]
    verdict = "pass" if gate["passed"] else ("FAIL, forced" if gate["forced"] else "FAIL")
    lines.append(f"gate: worst-clip PSNR {gate['value_db']:.2f} dB vs threshold {gate['threshold_db']:.1f} dB: "
                 f"{verdict}")
    return "\n".join(lines)
