"""Publishes an output folder atomically: export, quantize and build-engines write into a hidden sibling that is
renamed into place only when everything in it is done, so a folder at the destination is always complete.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from wanrt.errors import InvalidRequestError


def destination(out_dir: Path) -> Path:
    """``out_dir`` made absolute and normalised (so "." or "art/.." has a real name and parent), after checking
    it is absent or an empty directory; InvalidRequestError("out") otherwise. Callers check early with it,
    before hours of work, and ``publishing`` checks again."""
    out_dir = Path(os.path.abspath(out_dir))
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidRequestError("out", f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise InvalidRequestError("out", f"{out_dir} already exists and is not empty; refusing to overwrite it")
    return out_dir


@contextlib.contextmanager
def publishing(out_dir: Path) -> Iterator[Path]:
    """Yields an empty hidden folder beside ``out_dir`` to write into; renames it to ``out_dir`` when the block
    ends normally and removes it when anything (KeyboardInterrupt included) escapes the block or the rename."""
    out_dir = destination(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A sibling, so the final rename stays on one filesystem and is atomic; hidden, so nothing lists it as a model.
    partial = out_dir.parent / f".{out_dir.name}.partial-{secrets.token_hex(4)}"
    partial.mkdir()
    try:
        yield partial
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above); raises if something appeared there meanwhile
        partial.rename(out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
