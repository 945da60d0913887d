"""`wanrt export`: a diffusers Wan folder -> a verified ONNX artifact folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wanrt.engine.schedules import BASE, schedule_names


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a diffusers Wan pipeline folder to ONNX")
    parser.add_argument("--model", type=Path, required=True, help="diffusers-format Wan pipeline folder")
    parser.add_argument("--out", type=Path, required=True, help="artifact folder to create (absent or empty)")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="compute precision of the text encoder and DiT graphs: each is loaded and traced in it "
                             "as diffusers/transformers run it (their fp32 modules stay fp32), graph I/O is fp32 "
                             "(default %(default)s)")
    parser.add_argument("--vae-dtype", choices=("fp32", "bf16"), default="fp32",
                        help="compute precision of the VAE decoder graphs (default %(default)s)")
    parser.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                        help="merge this LoRA (diffusers, Wan-original/LightX2V or musubi layout; scale default 1) "
                             "into the high-noise expert, or the only one; repeat to stack")
    parser.add_argument("--lora-2", action="append", default=[], metavar="FILE[:SCALE]",
                        help="merge this LoRA into the low-noise expert (transformer_2); repeat to stack")
    parser.add_argument("--schedule", choices=schedule_names(), default=BASE,
                        help="the artifact's default schedule: base (the model's own scheduler and recipe) or a "
                             "distilled preset such as lightning-4step (4 Euler steps, no CFG, shift 5) for the "
                             "Lightning/LightX2V LoRAs (default %(default)s)")
    parser.add_argument("--device", default="cpu",
                        help="cpu, cuda or cuda:N: where PyTorch loads and traces each network and where parity is "
                             "checked (cuda: onnxruntime-gpu's CUDA provider); default %(default)s")
    parser.add_argument("--memory-budget", default=None,
                        help="host memory the export may use, e.g. 200G (default: the cgroup limit or physical "
                             "memory, less a reserve); the export refuses at start what its plan says exceeds it")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (host and GPU memory, disk, time per graph) and exit: 0 fits, 2 not")
    parser.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    from wanrt.engine.budget import parse_size
    from wanrt.export.exporter import check_plan, export_pipeline
    from wanrt.export.lora import parse_lora

    budget = parse_size("memory_budget", args.memory_budget) if args.memory_budget else None
    if args.dry_run:
        print(check_plan(args.model, args.out, dtype=args.dtype, vae_dtype=args.vae_dtype, device=args.device,
                         memory_budget=budget))
        return 0
    loras = ([parse_lora(text, "transformer") for text in args.lora]
             + [parse_lora(text, "transformer_2") for text in args.lora_2])
    manifest = export_pipeline(args.model, args.out, progress=lambda msg: print(msg, file=sys.stderr),
                               dtype=args.dtype, vae_dtype=args.vae_dtype, device=args.device,
                               memory_budget=budget, loras=loras, schedule=args.schedule)
    worst: dict[str, float] = {}
    for check in manifest.parity:  # each graph against PyTorch in its own precision
        dtype = check.get("dtype", "fp32")
        worst[dtype] = max(worst.get(dtype, 0.0), check["max_rel_error"])
    errors = ", ".join(f"{dtype} {error:.2e}" for dtype, error in worst.items())
    print(f"{args.out}: {len(manifest.files)} files, worst parity error vs PyTorch: {errors}")
    return 0
