"""`wanrt quantize`: explicit INT8/FP8 Q/DQ experts with ModelOpt, an accuracy report and a PSNR gate.

Two routes, chosen by what --model is: a diffusers folder takes the torch route (ModelOpt PTQ on each bf16
expert, quant/torch_route.py; the default, and the one that runs at A14B size on a GPU); an exported artifact
(`wanrt export`) takes the ONNX route (ModelOpt ONNX PTQ of its fp32 graphs, quant/quantizer.py; small models).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wanrt.errors import InvalidRequestError


def register(subparsers: argparse._SubParsersAction) -> None:
    from wanrt.quant.quantizer import DEFAULT_MIN_PSNR_DB, QuantizeConfig
    from wanrt.quant.torch_recipe import RECIPE_HIGH_PRECISION_BLOCKS, RECIPE_SHAPE, REPORT_SHAPE

    d = QuantizeConfig()
    parser = subparsers.add_parser(
        "quantize", help="quantize a model's DiT experts (explicit Q/DQ, ModelOpt) with an accuracy report",
        description="A diffusers folder (--model with model_index.json) takes the torch route: ModelOpt PTQ on "
                    "each bf16 expert, calibrated on real denoising trajectories, one expert in memory at a time, "
                    "exported with Q/DQ and the fused Attention operator, compared with bf16 on held-out clips. "
                    "An exported artifact (manifest.json) takes the ONNX route: ModelOpt ONNX PTQ of its fp32 "
                    "graphs, for small models. Both refuse (exit 1, nothing written) when the worst held-out "
                    "clip's PSNR is under --min-psnr, unless --force.")
    parser.add_argument("--model", type=Path, required=True,
                        help="diffusers Wan folder (torch route) or unquantized artifact folder (ONNX route)")
    parser.add_argument("--mode", choices=("int8", "fp8"), default=None,
                        help="torch route: fp8 (default; int8 on a CUDA GPU older than Ada/Hopper); ONNX route: "
                             f"default {d.mode}")
    parser.add_argument("--out", type=Path, required=True, help="artifact folder to create (absent or empty)")
    parser.add_argument("--calib-prompts", type=Path, default=None,
                        help="prompt file, one per line (default: the built-in underwater set)")
    parser.add_argument("--calib-steps", type=int, default=None,
                        help=f"denoising steps per calibration run (torch default {RECIPE_SHAPE.steps}, ONNX "
                             f"{d.calib_steps}, also its report's)")
    parser.add_argument("--frames", type=int, default=None,
                        help=f"calibration clip (torch default {RECIPE_SHAPE.frames}x{RECIPE_SHAPE.height}x"
                             f"{RECIPE_SHAPE.width}, ModelOpt's Wan2.2 recipe; ONNX {d.frames}x{d.height}x"
                             f"{d.width}, also its report's)")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--report-prompts", type=Path, default=None,
                        help="held-out prompt file for the report (default: the built-in held-out set)")
    parser.add_argument("--min-psnr", type=float, default=DEFAULT_MIN_PSNR_DB,
                        help="gate: worst held-out clip PSNR vs the unquantized model in dB (default %(default)s)")
    parser.add_argument("--force", action="store_true", help="write the artifact even when the gate fails")
    parser.add_argument("--smooth-alpha", type=float, default=None,
                        help="SmoothQuant migration strength (INT8; ONNX route: FP8 too, 0 turns it off)")
    parser.add_argument("--device", default=None,
                        help="torch route: cuda[:N] or cpu (default cuda when there is one); ONNX route: the "
                             "onnxruntime device, cpu or cuda (default cpu)")

    torch = parser.add_argument_group("torch route (diffusers folder)")
    torch.add_argument("--guidance", type=float, nargs=2, default=None, metavar=("HIGH", "LOW"),
                       help=f"guidance of the high- and low-noise expert (default {RECIPE_SHAPE.guidance} "
                            f"{RECIPE_SHAPE.guidance_2})")
    torch.add_argument("--report-size", type=int, nargs=3, default=None, metavar=("FRAMES", "HEIGHT", "WIDTH"),
                       help=f"report clips (default {REPORT_SHAPE.frames} {REPORT_SHAPE.height} {REPORT_SHAPE.width})")
    torch.add_argument("--report-steps", type=int, default=None, help=f"default {REPORT_SHAPE.steps}")
    torch.add_argument("--high-precision-blocks", default=None, metavar="LIST",
                       help="blocks kept in high precision, comma-separated, or 'none' (default "
                            f"{','.join(map(str, RECIPE_HIGH_PRECISION_BLOCKS))}, ModelOpt's A14B recipe)")
    torch.add_argument("--no-quantize-attention", action="store_true",
                       help="leave attention unquantized (default: E4M3 Q/DQ on Q, K, V and the softmax output)")
    torch.add_argument("--base", type=Path, default=None,
                       help="a `wanrt export` artifact of the same folder: its text encoder, VAE decoder and "
                            "tokenizer are used (default: export them here, text encoder in bf16)")

    onnx = parser.add_argument_group("ONNX route (exported artifact)")
    onnx.add_argument("--calib-max-samples", type=int, default=None,
                      help="use only the first N recorded calls per expert (default: all)")
    onnx.add_argument("--calib-method", choices=("max", "entropy"), default=d.calib_method,
                      help="activation range calibration (default %(default)s)")
    onnx.add_argument("--quantize-text-encoder", action="store_true",
                      help="also quantize the text encoder (default: it stays FP32, as the VAE decoder does)")
    onnx.add_argument("--eval-prompts", type=int, default=d.eval_prompts,
                      help="also compare `wanrt eval` prompt adherence on N held-out reef prompts (default: skip)")
    onnx.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=d.dtype,
                      help="precision of the quantized graphs' unquantized part (default %(default)s)")
    parser.set_defaults(handler=_quantize)


def _quantize(args: argparse.Namespace) -> int:
    if (args.model / "model_index.json").is_file():
        return _torch_route(args)
    return _onnx_route(args)


def _torch_route(args: argparse.Namespace) -> int:
    import dataclasses

    from wanrt.quant.prompts import CALIBRATION_PROMPTS, REPORT_PROMPTS, read_prompt_file
    from wanrt.quant.torch_recipe import (
        DEFAULT_SMOOTHQUANT_ALPHA,
        RECIPE_HIGH_PRECISION_BLOCKS,
        RECIPE_SHAPE,
        REPORT_SHAPE,
        TorchRecipe,
    )
    from wanrt.quant.torch_route import TorchQuantizeConfig, quantize_diffusers

    onnx_only = [flag for flag, given in (("--calib-max-samples", args.calib_max_samples is not None),
                                          ("--quantize-text-encoder", args.quantize_text_encoder),
                                          ("--eval-prompts", bool(args.eval_prompts)),
                                          ("--calib-method", args.calib_method != "max")) if given]
    if onnx_only:
        raise InvalidRequestError("model", f"{' '.join(onnx_only)} apply to the ONNX route (an exported artifact); "
                                           f"{args.model} is a diffusers folder")
    device = args.device or _default_device()
    calib = RECIPE_SHAPE
    if args.guidance:
        calib = dataclasses.replace(calib, guidance=args.guidance[0], guidance_2=args.guidance[1])
    calib = _sized(calib, args.frames, args.height, args.width, args.calib_steps)
    report = REPORT_SHAPE if args.report_size is None else _sized(REPORT_SHAPE, *args.report_size, None)
    report = _sized(report, None, None, None, args.report_steps)
    report = dataclasses.replace(report, guidance=calib.guidance, guidance_2=calib.guidance_2)
    recipe = TorchRecipe(
        mode=args.mode or _default_mode(device), quantize_attention=not args.no_quantize_attention,
        high_precision_blocks=_blocks(args.high_precision_blocks, RECIPE_HIGH_PRECISION_BLOCKS),
        smoothquant_alpha=args.smooth_alpha if args.smooth_alpha is not None else DEFAULT_SMOOTHQUANT_ALPHA)
    if recipe.mode == "int8" and not args.no_quantize_attention:
        recipe = dataclasses.replace(recipe, quantize_attention=False)  # FP8 attention only (TensorRT, ModelOpt)
    config = TorchQuantizeConfig(
        recipe=recipe, calib_shape=calib, report_shape=report, device=device, min_psnr_db=args.min_psnr,
        force=args.force, base=args.base,
        calib_prompts=read_prompt_file(args.calib_prompts) if args.calib_prompts else CALIBRATION_PROMPTS,
        report_prompts=read_prompt_file(args.report_prompts, field="report_prompts") if args.report_prompts
        else REPORT_PROMPTS[:4])
    result = quantize_diffusers(args.model, args.out, config, say=lambda msg: print(msg, file=sys.stderr))
    e2e = result["end_to_end"]
    print(f"{args.out}: {recipe.mode} (torch route), PSNR vs bf16 mean {e2e['psnr_db_mean']:.2f} dB (worst "
          f"{e2e['psnr_db_min']:.2f}), SSIM mean {e2e['ssim_mean']:.4f}")
    return 0


def _sized(shape: object, frames: int | None, height: int | None, width: int | None, steps: int | None) -> object:
    import dataclasses

    given = {k: v for k, v in (("frames", frames), ("height", height), ("width", width), ("steps", steps))
             if v is not None}
    return dataclasses.replace(shape, **given)  # type: ignore[type-var]


def _blocks(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    if text is None:
        return default
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise InvalidRequestError("high_precision_blocks", f"a comma-separated list of block indices or 'none', "
                                                           f"got {text!r}") from None


def _default_device() -> str:
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _default_mode(device: str) -> str:
    """FP8 where the GPU runs it (compute capability 8.9+: Ada, Hopper, Blackwell) and on the CPU; INT8 else."""
    if not device.startswith("cuda"):
        return "fp8"
    import torch

    return "fp8" if torch.cuda.get_device_capability(torch.device(device)) >= (8, 9) else "int8"


def _onnx_route(args: argparse.Namespace) -> int:
    from wanrt.quant.prompts import read_prompt_file
    from wanrt.quant.quantizer import QuantizeConfig, quantize_artifact

    torch_only = [flag for flag, given in (("--guidance", args.guidance), ("--report-size", args.report_size),
                                           ("--report-steps", args.report_steps is not None),
                                           ("--high-precision-blocks", args.high_precision_blocks is not None),
                                           ("--no-quantize-attention", args.no_quantize_attention),
                                           ("--base", args.base is not None)) if given]
    if torch_only:
        raise InvalidRequestError("model", f"{' '.join(torch_only)} apply to the torch route (a diffusers folder); "
                                           f"{args.model} is an exported artifact")
    d = QuantizeConfig()
    extra = {}
    if args.calib_prompts is not None:
        extra["calib_prompts"] = read_prompt_file(args.calib_prompts)
    if args.report_prompts is not None:
        extra["report_prompts"] = read_prompt_file(args.report_prompts, field="report_prompts")
    config = QuantizeConfig(
        mode=args.mode or d.mode, calib_steps=args.calib_steps or d.calib_steps, frames=args.frames or d.frames,
        height=args.height or d.height, width=args.width or d.width,
        calib_max_samples=args.calib_max_samples, calib_method=args.calib_method, smooth_alpha=args.smooth_alpha,
        quantize_text_encoder=args.quantize_text_encoder, eval_prompts=args.eval_prompts,
        min_psnr_db=args.min_psnr, force=args.force, device=args.device or d.device, dtype=args.dtype, **extra)
    report = quantize_artifact(args.model, args.out, config, say=lambda msg: print(msg, file=sys.stderr))
    e2e = report["end_to_end"]
    print(f"{args.out}: {config.mode}, end-to-end PSNR mean {e2e['psnr_db_mean']:.2f} dB (worst "
          f"{e2e['psnr_db_min']:.2f}), SSIM mean {e2e['ssim_mean']:.4f}")
    return 0
