"""`wanrt export`: a diffusers Wan folder -> a verified ONNX artifact folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a diffusers Wan pipeline folder to ONNX")
    parser.add_argument("--model", type=Path, required=True, help="diffusers-format Wan pipeline folder")
    parser.add_argument("--out", type=Path, required=True, help="artifact folder to create (absent or empty)")
    parser.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    from wanrt.export.exporter import export_pipeline

    manifest = export_pipeline(args.model, args.out, progress=lambda msg: print(msg, file=sys.stderr))
    worst = max(p["max_rel_error"] for p in manifest.parity)
    print(f"{args.out}: {len(manifest.files)} files, worst parity error {worst:.2e}")
    return 0
