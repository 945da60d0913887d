"""`wanrt build-engines`: TensorRT engines for an exported artifact, on (and for) this machine's GPU."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wanrt.engine.shapes import WAN_TRAINED_FRAMES

# Wan2.2 A14B's 720p setting: 81 frames of 1280x720 (either orientation: landscape here).
DEFAULT_MAX_FRAMES = WAN_TRAINED_FRAMES
DEFAULT_MAX_HEIGHT = 720
DEFAULT_MAX_WIDTH = 1280


def add_text_encoder_argument(parser: argparse.ArgumentParser, note: str = "") -> None:
    """``--text-encoder``, shared by build-engines, generate and serve."""
    from wanrt.engine.tensorrt.memory import TEXT_ENCODER_MODES

    parser.add_argument("--text-encoder", choices=TEXT_ENCODER_MODES, default=None,
                        help="resident: kept on the GPU; release: loaded for each prompt and freed before "
                             "denoising; cpu: run on the host (onnxruntime, an fp32/fp16 text encoder graph). "
                             f"Default: the cheapest that fits the GPU's memory plan {note}".rstrip())


def register(subparsers: argparse._SubParsersAction) -> None:
    from wanrt.engine.tensorrt.memory import RESIDENCIES

    parser = subparsers.add_parser(
        "build-engines", help="build TensorRT engines for an exported artifact (TensorRT 10.14+ or 11, a GPU)",
        description="Builds one strongly typed TensorRT engine per graph of an artifact (each in the precision "
                    "its ONNX graph has: choose it with `wanrt export --dtype` or `wanrt quantize`), with "
                    "optimisation profiles that cover every request up to the given maxima, and writes "
                    "engines.json. Prints the GPU memory plan first and refuses one that cannot run. Engines only "
                    "run on the TensorRT version and GPU model that built them.")
    parser.add_argument("--model", type=Path, required=True, help="artifact folder made by `wanrt export`")
    parser.add_argument("--out", type=Path, required=True, help="engines folder to create (absent or empty)")
    parser.add_argument("--max-frames", type=int, default=DEFAULT_MAX_FRAMES, help="largest request, 4k+1")
    parser.add_argument("--max-height", type=int, default=DEFAULT_MAX_HEIGHT, help="largest request height")
    parser.add_argument("--max-width", type=int, default=DEFAULT_MAX_WIDTH, help="largest request width")
    parser.add_argument("--min-size", type=int, default=16,
                        help="smallest request height/width (a tighter range gives faster engines)")
    parser.add_argument("--opt-frames", type=int, default=None, help="size TensorRT tunes for (default: max)")
    parser.add_argument("--opt-height", type=int, default=None)
    parser.add_argument("--opt-width", type=int, default=None)
    parser.add_argument("--workspace-gib", type=float, default=None,
                        help="builder scratch memory limit (default: TensorRT's, the whole GPU)")
    parser.add_argument("--optimization-level", type=int, default=3, choices=range(6), metavar="0-5",
                        help="TensorRT builder optimisation level (default %(default)s)")
    parser.add_argument("--timing-cache", type=Path, default=None,
                        help="timing cache file, read if present and updated (speeds up rebuilds)")
    parser.add_argument("--residency", choices=RESIDENCIES, default=None,
                        help="resident: every engine loaded at start; per-stage: one DiT expert on the GPU at a "
                             "time; streaming: see --weight-streaming-budget (default: the first that fits)")
    parser.add_argument("--weight-streaming-budget", type=float, default=None, metavar="GIB",
                        help="build the experts with weight streaming, keeping GIB of each one's weights on the "
                             "GPU and streaming the rest from host memory (default: chosen by the plan where "
                             "streaming costs less per video than loading experts per stage)")
    add_text_encoder_argument(parser, "(recorded in engines.json; generate/serve may override it)")
    parser.add_argument("--device-index", type=int, default=0, help="CUDA device to build on (default 0)")
    parser.set_defaults(handler=_build)

    verify = subparsers.add_parser(
        "verify", help="check TensorRT engines against a reference on this GPU (per network and end to end)",
        description="Runs the same inputs through the engines and through a reference: the model itself in bf16 "
                    "torch on the GPU (--torch-reference DIFFUSERS_FOLDER, one network at a time, before the engines "
                    "load: the reference at A14B size), or onnxruntime on the artifact they were built from (small "
                    "models). Max/mean relative error and cosine per network, PSNR and SSIM over N prompts, latency "
                    "per component, at a reduced shape unless --frames/--height/--width say otherwise. Writes a JSON "
                    "report; exits 1 when a number is past its threshold (defaults follow each engine's precision).")
    verify.add_argument("--engines", type=Path, required=True, help="engines folder made by `wanrt build-engines`")
    verify.add_argument("--prompts", type=int, default=2, help="end-to-end clips to compare (default %(default)s)")
    verify.add_argument("--steps", type=int, default=4, help="denoising steps per clip (default %(default)s)")
    verify.add_argument("--device", default="cuda", help="cuda or cuda:N")
    verify.add_argument("--reference", type=Path, default=None,
                        help="artifact onnxruntime runs as the reference (default: the engines' own; give an fp32 "
                             "export of the same model to measure bf16/fp16/quantized engines against fp32)")
    verify.add_argument("--torch-reference", type=Path, default=None, metavar="DIFFUSERS_FOLDER",
                        help="the diffusers folder the engines come from: reference in bf16 torch on this GPU")
    verify.add_argument("--frames", type=int, default=None, help="clip size (default 17x480x832, or the engines' "
                                                                  "tuned size if smaller)")
    verify.add_argument("--height", type=int, default=None)
    verify.add_argument("--width", type=int, default=None)
    verify.add_argument("--report", type=Path, default=None, help="JSON report (default: verify.json here)")
    verify.add_argument("--max-rel", type=float, default=None, help="largest max relative error per network")
    verify.add_argument("--min-cosine", type=float, default=None, help="smallest cosine per network")
    verify.add_argument("--min-psnr", type=float, default=None, help="smallest clip PSNR in dB")
    verify.add_argument("--min-ssim", type=float, default=None, help="smallest clip SSIM")
    verify.set_defaults(handler=_verify)


def _verify(args: argparse.Namespace) -> int:
    from wanrt.engine.tensorrt.verify import Thresholds, VerificationFailed, summary, verify_engines, write_report
    from wanrt.errors import InvalidRequestError

    if args.prompts < 0 or args.steps < 1:
        raise InvalidRequestError("prompts" if args.prompts < 0 else "steps", "must be positive")
    if args.torch_reference is not None and args.reference is not None:
        raise InvalidRequestError("reference", "give --reference (onnxruntime) or --torch-reference, not both")
    shape = None
    if any(v is not None for v in (args.frames, args.height, args.width)):
        from wanrt.engine.tensorrt.engine_manifest import read_engines_manifest
        from wanrt.engine.tensorrt.profiles import VideoShape
        from wanrt.engine.tensorrt.torch_reference import default_shape

        engines = read_engines_manifest(args.engines)
        reduced = default_shape(engines.opt, engines.limits)
        shape = VideoShape(args.frames or reduced.frames, args.height or reduced.height, args.width or reduced.width)
    report = verify_engines(args.engines, prompts=args.prompts, steps=args.steps, device=args.device,
                            reference=args.reference, torch_model=args.torch_reference, shape=shape,
                            thresholds=Thresholds(args.max_rel, args.min_cosine, args.min_psnr, args.min_ssim))
    path = args.report or Path("verify.json")
    write_report(report, path)
    print(summary(report))
    print(path)
    if not report["passed"]:
        raise VerificationFailed(f"the engines differ from the reference past the thresholds (see {path})")
    return 0


def _build(args: argparse.Namespace) -> int:
    from wanrt.engine.tensorrt.build import build_engines
    from wanrt.engine.tensorrt.engine_manifest import BuilderOptions, MemoryOptions
    from wanrt.engine.tensorrt.memory import GIB
    from wanrt.engine.tensorrt.profiles import VideoShape
    from wanrt.errors import InvalidRequestError

    opts = (args.opt_frames, args.opt_height, args.opt_width)
    opt = None
    if any(v is not None for v in opts):
        # A partial opt point defaults its other dims to the maxima.
        opt = VideoShape(*(v if v is not None else m for v, m in zip(
            opts, (args.max_frames, args.max_height, args.max_width), strict=True)))
    if args.workspace_gib is not None and not args.workspace_gib > 0:
        raise InvalidRequestError("workspace_gib", f"must be positive, got {args.workspace_gib}")
    budget = args.weight_streaming_budget
    if budget is not None and not budget > 0:
        raise InvalidRequestError("weight_streaming_budget", f"must be positive, got {budget}")
    memory = MemoryOptions(args.residency, int(budget * GIB) if budget is not None else None, args.text_encoder)
    options = BuilderOptions(
        workspace_bytes=int(args.workspace_gib * 1024**3) if args.workspace_gib else None,
        optimization_level=args.optimization_level,
        timing_cache=str(args.timing_cache.resolve()) if args.timing_cache else None,
    )
    manifest = build_engines(
        args.model, args.out, max_frames=args.max_frames, max_height=args.max_height,
        max_width=args.max_width, min_size=args.min_size, opt=opt, options=options, memory=memory,
        device_index=args.device_index,
        progress=lambda message: print(message, file=sys.stderr),
    )
    print(f"{args.out}: {len(manifest.engines)} engines for {manifest.runtime.device_name} "
          f"(TensorRT {manifest.runtime.tensorrt_version}, {manifest.precision})")
    return 0
