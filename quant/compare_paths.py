"""Measures ModelOpt's two INT8 routes on the same calibration data, per expert call on held-out inputs:

1. ONNX PTQ (what `wanrt quantize` does): the exported FP32 graph, calibrated in onnxruntime;
2. torch quantization (``modelopt.torch.quantization``, optionally SmoothQuant) exported to ONNX.

    python -m wanrt.quant.compare_paths --source DIFFUSERS_DIR --artifact FP32_ARTIFACT [--steps 8]

Route 2 exists only as this measurement. ModelOpt's fake-quant ops export through the TorchScript exporter
alone (torch.export stops at their data-dependent ``if min_amax < 0``), and that exporter cannot export
``aten::rms_norm``, so RMSNorm is decomposed for the export; it also needs the torch weights, which an
artifact does not carry. Both routes are compared on the held-out calls' outputs against the FP32 artifact.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from wanrt import measures
from wanrt.quant.backend_wrappers import Feeds
from wanrt.quant.calibration import calibration_requests, capture


def _torch_route(source: Path, expert: str, calib: list[Feeds], smoothquant: bool, out: Path) -> Path:
    import modelopt.torch.quantization as mtq
    import torch
    import torch.nn.functional as F

    from wanrt.export.transformer import load_expert

    module = load_expert(source, expert)
    cfg = copy.deepcopy(mtq.INT8_SMOOTHQUANT_CFG if smoothquant else mtq.INT8_DEFAULT_CFG)
    # The same exclusions as the ONNX route (wanrt.quant.placement): only attention projections and FFN.
    cfg["quant_cfg"] += [{"quantizer_name": f"*{part}*", "enable": False}
                         for part in ("condition_embedder", "patch_embedding", "proj_out")]

    def forward_loop(model: torch.nn.Module) -> None:
        for feeds in calib:
            model(*(torch.from_numpy(feeds[k]) for k in ("hidden_states", "timestep", "encoder_hidden_states")))

    mtq.quantize(module, cfg, forward_loop)

    def rms_norm(x: torch.Tensor, shape: Any, weight: torch.Tensor | None = None, eps: float | None = None) -> Any:
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + (1e-6 if eps is None else eps))
        return y if weight is None else y * weight

    example = tuple(torch.from_numpy(calib[0][k]) for k in ("hidden_states", "timestep", "encoder_hidden_states"))
    original = F.rms_norm
    F.rms_norm = rms_norm  # the TorchScript exporter has no aten::rms_norm
    try:
        torch.onnx.export(module, example, str(out), dynamo=False, opset_version=17,
                          input_names=["hidden_states", "timestep", "encoder_hidden_states"],
                          output_names=["noise_pred"])
    finally:
        F.rms_norm = original
    return out


def _errors(session: Any, reference: Any, held_out: list[Feeds]) -> dict[str, float]:
    rel, cos = [], []
    for feeds in held_out:
        ref = reference.run(None, feeds)[0]
        out = session.run(None, feeds)[0]
        rel.append(measures.norm_relative_error(out, ref))
        cos.append(measures.cosine(out, ref))
    return {"rel_error_mean": float(np.mean(rel)), "rel_error_max": float(np.max(rel)), "cosine_min": float(min(cos))}


def compare(source: Path, artifact: Path, steps: int, frames: int, size: int) -> dict[str, dict[str, dict]]:
    import onnx
    import onnxruntime as ort

    from wanrt.engine.loader import load_pipeline
    from wanrt.quant import placement, ptq
    from wanrt.quant.prompts import CALIBRATION_PROMPTS, REPORT_PROMPTS
    from wanrt.quant.smooth import smooth

    pipeline = load_pipeline(artifact, "onnxruntime")
    sizes = {"steps": steps, "frames": frames, "height": size, "width": size}
    calib = capture(pipeline, calibration_requests(CALIBRATION_PROMPTS, **sizes))
    held = capture(pipeline, calibration_requests(REPORT_PROMPTS, first_seed=10_000, **sizes))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for expert in pipeline.spec.experts:
            samples, held_out = calib.samples(expert), held.samples(expert)
            reference = ort.InferenceSession(str(artifact / f"{expert}.onnx"), options,
                                             providers=["CPUExecutionProvider"])
            rows = {}
            for label, alpha in (("onnx_ptq", None), ("onnx_ptq_smooth0.7", 0.7)):
                model = ptq.load_graph(artifact / f"{expert}.onnx")
                plan = placement.plan(model, placement.EXPERT_RULES)
                if alpha is not None:
                    smooth(model, plan.quantize, samples, alpha)
                dest = Path(tmp) / f"{expert}-{label}.onnx"
                ptq.quantize_graph(model, dest, mode="int8", samples=samples, nodes_to_quantize=plan.quantize,
                                   nodes_to_exclude=[d.name for d in plan.excluded], calibration_method="max",
                                   scratch=Path(tmp) / "scratch")
                rows[label] = _errors(ptq.session(dest), reference, held_out)
                del model
            for label, sq in (("torch_mtq", False), ("torch_mtq_smoothquant", True)):
                path = _torch_route(source, expert, samples, sq, Path(tmp) / f"{expert}-{label}.onnx")
                n_qdq = sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node)
                rows[label] = {**_errors(ort.InferenceSession(str(path), options,
                                                              providers=["CPUExecutionProvider"]),
                                         reference, held_out), "quantize_linear_nodes": n_qdq}
            results[expert] = rows
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wanrt.quant.compare_paths", description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="the diffusers folder the artifact came from")
    parser.add_argument("--artifact", type=Path, required=True, help="its FP32 artifact")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=96)
    args = parser.parse_args(argv)
    results = compare(args.source, args.artifact, args.steps, args.frames, args.size)
    print(f"{'expert':<14} {'route':<24} {'rel.err mean':>12} {'rel.err max':>12} {'cosine min':>11}")
    for expert, rows in results.items():
        for label, r in rows.items():
            print(f"{expert:<14} {label:<24} {r['rel_error_mean']:>12.4%} {r['rel_error_max']:>12.4%} "
                  f"{r['cosine_min']:>11.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
