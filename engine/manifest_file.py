"""Reading the JSON manifest of a wanrt folder (an artifact's manifest.json, an engines folder's engines.json).

One reader, so both kinds of folder fail the same way and name the same things: the folder is not one (and the
command that makes one), the file is not JSON or not an object, or its format_version is not the one this wanrt
reads (and what to do about it). The typed models (artifact.Manifest, tensorrt.engine_manifest.EnginesManifest)
then parse the fields.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wanrt.errors import ArtifactError


def read_manifest(folder: Path, name: str, *, format_version: int, not_found: str, outdated: str) -> dict[str, Any]:
    """``folder/name`` parsed; ArtifactError when the folder or file is missing, the JSON is malformed or not an
    object, or its format_version differs. ``not_found`` ends the message for a folder without the file
    ("not a wanrt artifact (make one with `wanrt export`)"), ``outdated`` the one for another format."""
    folder = Path(folder)
    path = folder / name
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is not a directory")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{folder} has no {name}: {not_found}") from None
    return parse_manifest(path, data, format_version=format_version, outdated=outdated)


def parse_manifest(path: Path, data: bytes, *, format_version: int, outdated: str) -> dict[str, Any]:
    """A manifest's exact bytes, parsed (the bytes a signature was checked on: see engine/model_files.py)."""
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(parsed, dict):
        raise ArtifactError(f"{path} is not a JSON object")
    version = parsed.get("format_version")
    if version != format_version:
        raise ArtifactError(f"{path} has format_version {version!r}; this wanrt reads format {format_version} "
                            f"({outdated})")
    return parsed
