"""The `wanrt` command. Each stage contributes its subcommands; errors are mapped to exit codes here, once."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from wanrt.errors import (
    ArtifactError,
    ConfinementError,
    DeviceUnavailableError,
    InsufficientMemoryError,
    InvalidRequestError,
    ModelFormatError,
    StateError,
    WanrtError,
)

EXIT_USAGE = 2  # bad arguments or input (a missing or unwritable file among them): nothing was produced
EXIT_FAILED = 1  # a check failed (e.g. export parity) or the runtime is unavailable

# Stages that add subcommands; each module exposes register(subparsers). Imported lazily so that, e.g.,
# `wanrt generate --backend onnxruntime` never imports torch through the export stage.
_STAGES = ("wanrt.export.cli", "wanrt.engine.cli", "wanrt.server.cli",
           "wanrt.engine.tensorrt.cli", "wanrt.quant.cli", "wanrt.evaluate.cli",
           "wanrt.trust.cli", "wanrt.benchmarks.cli", "wanrt.plan.cli")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    from wanrt import __version__

    parser = argparse.ArgumentParser(prog="wanrt", description="Wan2.x text-to-video inference engine")
    parser.add_argument("--version", action="version", version=f"wanrt {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _STAGES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except InvalidRequestError as err:
        print(f"wanrt: error: --{err.field.replace('_', '-')}: {err.message}", file=sys.stderr)
        return EXIT_USAGE
    except WanrtError as err:
        print(f"wanrt: error: {err}", file=sys.stderr)
        usage = (ArtifactError, ModelFormatError, ConfinementError, InsufficientMemoryError, DeviceUnavailableError,
                 StateError)
        return EXIT_USAGE if isinstance(err, usage) else EXIT_FAILED
    except MemoryError:  # outside a pipeline run (loading, writing): still one line, not a traceback
        print("wanrt: error: out of memory", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # a missing input or an unwritable output: the file and the reason, no traceback
        print(f"wanrt: error: {describe_os_error(err)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def describe_os_error(err: OSError) -> str:
    """``/out/clip.mp4: Permission denied`` rather than ``[Errno 13] Permission denied: '/out/clip.mp4'``."""
    if err.filename is None or not err.strerror:
        return str(err)
    where = f"{err.filename} -> {err.filename2}" if err.filename2 is not None else str(err.filename)
    return f"{where}: {err.strerror}"


if __name__ == "__main__":
    sys.exit(main())
