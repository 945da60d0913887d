"""`wanrt export`: a diffusers Wan folder -> a verified ONNX artifact folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wanrt.engine.precisions import GRAPH_DTYPES, VAE_DTYPES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a diffusers Wan pipeline folder to ONNX")
    parser.add_argument("--model", type=Path, required=True, help="diffusers-format Wan pipeline folder")
    parser.add_argument("--out", type=Path, required=True, help="artifact folder to create (absent or empty)")
    parser.add_argument("--dtype", choices=GRAPH_DTYPES, default="fp32",
                        help="compute precision of the text encoder and DiT graphs; norms, embeddings, modulation "
                             "and T5's wo stay fp32, graph I/O is fp32 (default %(default)s)")
    parser.add_argument("--vae-dtype", choices=VAE_DTYPES, default="fp32",
                        help="compute precision of the VAE decoder graphs (default %(default)s)")
    parser.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    from wanrt.export.exporter import export_pipeline

    manifest = export_pipeline(args.model, args.out, progress=lambda msg: print(msg, file=sys.stderr),
                               dtype=args.dtype, vae_dtype=args.vae_dtype)
    worst: dict[str, float] = {}
    for check in manifest.parity:  # fp32 graphs, then the lowered ones, each against fp32 PyTorch
        dtype = check.get("dtype", "fp32")
        worst[dtype] = max(worst.get(dtype, 0.0), check["max_rel_error"])
    errors = ", ".join(f"{dtype} {error:.2e}" for dtype, error in worst.items())
    print(f"{args.out}: {len(manifest.files)} files, worst parity error vs fp32 PyTorch: {errors}")
    return 0
