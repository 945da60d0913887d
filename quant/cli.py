"""`wanrt quantize`: explicit INT8/FP8 Q/DQ experts with ModelOpt, an accuracy report and a PSNR gate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wanrt.engine.precisions import GRAPH_DTYPES, QUANTIZATION_MODES


def register(subparsers: argparse._SubParsersAction) -> None:
    from wanrt.quant.quantizer import DEFAULT_MIN_PSNR_DB, QuantizeConfig

    d = QuantizeConfig()
    parser = subparsers.add_parser(
        "quantize", help="quantize an artifact's DiT experts (explicit Q/DQ, ModelOpt) with an accuracy report",
        description="Calibrates on real denoising runs of the FP32 artifact, writes a new artifact whose expert "
                    "graphs carry QuantizeLinear/DequantizeLinear, and compares it with the FP32 artifact on "
                    "held-out prompts (quant_report.json). Refuses (exit 1, nothing written) when the worst "
                    "held-out clip's PSNR is under --min-psnr, unless --force.")
    parser.add_argument("--model", type=Path, required=True, help="unquantized artifact folder (`wanrt export`)")
    parser.add_argument("--mode", choices=QUANTIZATION_MODES, default=d.mode)
    parser.add_argument("--out", type=Path, required=True, help="artifact folder to create (absent or empty)")
    parser.add_argument("--calib-prompts", type=Path, default=None,
                        help="prompt file, one per line (default: the built-in underwater set)")
    parser.add_argument("--calib-steps", type=int, default=d.calib_steps,
                        help="denoising steps per calibration run, also used by the report (default %(default)s)")
    parser.add_argument("--calib-max-samples", type=int, default=None,
                        help="use only the first N recorded calls per expert (default: all)")
    parser.add_argument("--calib-method", choices=("max", "entropy"), default=d.calib_method,
                        help="activation range calibration (default %(default)s)")
    parser.add_argument("--smooth-alpha", type=float, default=d.smooth_alpha,
                        help="SmoothQuant migration strength in [0, 1); 0 turns it off (default: 0.8 for int8, "
                             "0.7 for fp8)")
    parser.add_argument("--frames", type=int, default=d.frames, help="calibration and report clip length")
    parser.add_argument("--height", type=int, default=d.height)
    parser.add_argument("--width", type=int, default=d.width)
    parser.add_argument("--quantize-text-encoder", action="store_true",
                        help="also quantize the text encoder (default: it stays FP32, as the VAE decoder does)")
    parser.add_argument("--report-prompts", type=Path, default=None,
                        help="held-out prompt file for the report (default: the built-in held-out set)")
    parser.add_argument("--eval-prompts", type=int, default=d.eval_prompts,
                        help="also compare `wanrt eval` prompt adherence on N held-out reef prompts (default: skip)")
    parser.add_argument("--min-psnr", type=float, default=DEFAULT_MIN_PSNR_DB,
                        help="gate: worst held-out clip PSNR vs FP32 in dB (default %(default)s)")
    parser.add_argument("--dtype", choices=GRAPH_DTYPES, default=d.dtype,
                        help="precision of the quantized graphs' unquantized part (norms, embeddings and modulation "
                             "stay fp32 as in `wanrt export --dtype`; default %(default)s)")
    parser.add_argument("--force", action="store_true", help="write the artifact even when the gate fails")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=d.device,
                        help="onnxruntime device for calibration runs and the report (default %(default)s)")
    parser.set_defaults(handler=_quantize)


def _quantize(args: argparse.Namespace) -> int:
    from wanrt.quant.prompts import read_prompt_file
    from wanrt.quant.quantizer import QuantizeConfig, quantize_artifact

    extra = {}
    if args.calib_prompts is not None:
        extra["calib_prompts"] = read_prompt_file(args.calib_prompts)
    if args.report_prompts is not None:
        extra["report_prompts"] = read_prompt_file(args.report_prompts, field="report_prompts")
    config = QuantizeConfig(
        mode=args.mode, calib_steps=args.calib_steps, frames=args.frames, height=args.height, width=args.width,
        calib_max_samples=args.calib_max_samples, calib_method=args.calib_method, smooth_alpha=args.smooth_alpha,
        quantize_text_encoder=args.quantize_text_encoder, eval_prompts=args.eval_prompts,
        min_psnr_db=args.min_psnr, force=args.force, device=args.device, dtype=args.dtype, **extra)
    report = quantize_artifact(args.model, args.out, config, say=lambda msg: print(msg, file=sys.stderr))
    e2e = report["end_to_end"]
    print(f"{args.out}: {args.mode}, end-to-end PSNR mean {e2e['psnr_db_mean']:.2f} dB (worst "
          f"{e2e['psnr_db_min']:.2f}), SSIM mean {e2e['ssim_mean']:.4f}")
    return 0
