"""`wanrt plan`: will export, quantize, build-engines and serve fit this machine, and about how long will they take?"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from wanrt.errors import InvalidRequestError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan", help="host memory, GPU memory, disk and time of each offline stage for a model on a machine",
        description="Reads the diffusers folder's safetensors headers (no weights) and estimates, per stage (export, "
                    "quantize, build-engines, serve), the peak host memory, peak GPU memory, disk written and an "
                    "order-of-magnitude time on the machine described, with the option that would fit where a "
                    "stage does not. Sizes are powers of 1024 (an H100 80 GB shows 79.6G, an H200 141 GB 140.4G). "
                    "Exit 1 when some stage does not fit. Each stage runs the same check when it starts.")
    parser.add_argument("--model", type=Path, required=True, help="diffusers-format Wan pipeline folder")
    parser.add_argument("--host-memory", default=None, help="host memory (default: this machine's budget)")
    parser.add_argument("--gpu-memory", default=None, help="GPU memory (default: no GPU)")
    parser.add_argument("--disk", default=None, help="free disk for the outputs (default: not checked)")
    parser.add_argument("--gpu-tflops", type=float, default=989.4,
                        help="the GPU's dense bf16 peak, for times (default %(default)s: H100/H200 SXM)")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="bf16",
                        help="export precision of the text encoder and experts (default %(default)s)")
    parser.add_argument("--export-device", default="cpu", help="cpu or cuda (default %(default)s)")
    parser.add_argument("--quantize", choices=("fp8", "int8", "none"), default="fp8",
                        help="quantization mode, or none to build engines from the export (default %(default)s)")
    parser.add_argument("--quantize-route", choices=("torch", "onnx"), default="torch",
                        help="torch: ModelOpt PTQ on the GPU, one expert at a time; onnx: ModelOpt ONNX PTQ on the "
                             "CPU, small models only (default %(default)s)")
    parser.add_argument("--calib-frames", type=int, default=81)
    parser.add_argument("--calib-height", type=int, default=720)
    parser.add_argument("--calib-width", type=int, default=1280)
    parser.add_argument("--calib-prompts", type=int, default=128)
    parser.add_argument("--calib-steps", type=int, default=20)
    parser.add_argument("--max-frames", type=int, default=81, help="largest request engines are built for")
    parser.add_argument("--max-height", type=int, default=720)
    parser.add_argument("--max-width", type=int, default=1280)
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(handler=_plan)


def _plan(args: argparse.Namespace) -> int:
    from wanrt.engine.budget import host_memory_budget, parse_size
    from wanrt.plan.checkpoint import read_checkpoint
    from wanrt.plan.report import plan_all, render

    for field in ("calib_frames", "calib_height", "calib_width", "calib_prompts", "calib_steps", "max_frames",
                  "max_height", "max_width"):
        if getattr(args, field) < 1:
            raise InvalidRequestError(field, f"must be positive, got {getattr(args, field)}")
    from wanrt.plan.stages import Calibration, Machine, Serving

    machine = Machine(
        host_bytes=parse_size("host_memory", args.host_memory) if args.host_memory else host_memory_budget().bytes,
        gpu_bytes=parse_size("gpu_memory", args.gpu_memory) if args.gpu_memory else None,
        disk_bytes=parse_size("disk", args.disk) if args.disk else None,
        gpu_tflops=args.gpu_tflops)
    checkpoint = read_checkpoint(args.model)
    report = plan_all(checkpoint, machine, dtype=args.dtype, export_device=args.export_device,
                      quantize=None if args.quantize == "none" else args.quantize, route=args.quantize_route,
                      calibration=Calibration(args.calib_frames, args.calib_height, args.calib_width,
                                              args.calib_prompts, args.calib_steps),
                      serving=Serving(args.max_frames, args.max_height, args.max_width))
    print(json.dumps(report, indent=1) if args.json else render(report))
    return 0 if all(row["fits"] for row in report["stages"]) else 1

