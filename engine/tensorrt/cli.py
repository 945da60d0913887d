"""`wanrt build-engines`: TensorRT engines for an exported artifact, on (and for) this machine's GPU."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Wan2.2 A14B's 720p setting: 81 frames of 1280x720 (either orientation: landscape here).
DEFAULT_MAX_FRAMES = 81
DEFAULT_MAX_HEIGHT = 720
DEFAULT_MAX_WIDTH = 1280


def register(subparsers: argparse._SubParsersAction) -> None:
    from wanrt.engine.tensorrt.build import PRECISIONS

    parser = subparsers.add_parser(
        "build-engines", help="build TensorRT engines for an exported artifact (needs TensorRT 10 and a GPU)",
        description="Builds one TensorRT engine per graph of an artifact, with optimisation profiles that cover "
                    "every request up to the given maxima, and writes engines.json. Engines only run on the "
                    "TensorRT version and GPU model that built them.")
    parser.add_argument("--model", type=Path, required=True, help="artifact folder made by `wanrt export`")
    parser.add_argument("--out", type=Path, required=True, help="engines folder to create (absent or empty)")
    parser.add_argument("--precision", choices=PRECISIONS, default="bf16",
                        help="the DiT experts' precision (default %(default)s; int8/fp8 need an artifact made "
                             "by `wanrt quantize`); the text encoder runs in bf16 and the VAE decoder in fp32 "
                             "unless their graphs carry Q/DQ nodes")
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
    parser.add_argument("--device-index", type=int, default=0, help="CUDA device to build on (default 0)")
    parser.set_defaults(handler=_build)


def _build(args: argparse.Namespace) -> int:
    from wanrt.engine.tensorrt.build import build_engines
    from wanrt.engine.tensorrt.engine_manifest import BuilderOptions
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
    options = BuilderOptions(
        workspace_bytes=int(args.workspace_gib * 1024**3) if args.workspace_gib else None,
        optimization_level=args.optimization_level,
        timing_cache=str(args.timing_cache.resolve()) if args.timing_cache else None,
    )
    manifest = build_engines(
        args.model, args.out, args.precision, max_frames=args.max_frames, max_height=args.max_height,
        max_width=args.max_width, min_size=args.min_size, opt=opt, options=options, device_index=args.device_index,
        progress=lambda message: print(message, file=sys.stderr),
    )
    print(f"{args.out}: {len(manifest.engines)} engines for {manifest.runtime.device_name} "
          f"(TensorRT {manifest.runtime.tensorrt_version}, {manifest.precision})")
    return 0
