"""Regenerates ``wanrt.server.v1`` (the protobuf and gRPC Python modules) from proto/wanrt/v1/wanrt.proto.

The generated modules are committed rather than produced at install time: installing wanrt then needs no
protoc (grpcio-tools) and no custom build step, the generated code is reviewed like any other diff, and
tests/server/test_codegen.py fails when the committed files differ from what this script generates. The
price is a floor on the runtimes (protobuf >= the gencode version, grpcio >= the plugin version), stated in
pyproject.toml. Run after editing the .proto::

    .venv/bin/python -m wanrt.server.codegen
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parents[1] / "proto"  # the repository's proto/ (the package's wanrt.proto)
PROTO = "wanrt/v1/wanrt.proto"
OUT_DIR = Path(__file__).resolve().parent / "v1"
GENERATED = ("wanrt_pb2.py", "wanrt_pb2.pyi", "wanrt_pb2_grpc.py")
# protoc names Python modules after the .proto's path (wanrt.v1); they live in wanrt.server.v1 instead, so
# that the .proto keeps its canonical path (what reflection and other languages see).
_IMPORT_FROM, _IMPORT_TO = "from wanrt.v1 import wanrt_pb2", "from wanrt.server.v1 import wanrt_pb2"
_HEADER = ("# ruff: noqa\n"
           "# Generated from proto/wanrt/v1/wanrt.proto by `python -m wanrt.server.codegen`; do not edit.\n")


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Writes the generated modules into ``out_dir`` and returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # A separate interpreter: grpc_tools.protoc keeps global state between runs in one process.
        subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_root}", f"--python_out={tmp}",
             f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", PROTO],
            check=True,
        )
        written = []
        for name in GENERATED:
            text = (Path(tmp) / "wanrt" / "v1" / name).read_text(encoding="utf-8")
            if name.endswith("_grpc.py"):
                if _IMPORT_FROM not in text:
                    raise RuntimeError(f"{name}: expected import {_IMPORT_FROM!r} not found; update codegen.py")
                text = text.replace(_IMPORT_FROM, _IMPORT_TO)
            target = out_dir / name
            target.write_text(_HEADER + text, encoding="utf-8")
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    for path in generate(args.out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
