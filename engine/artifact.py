"""The exported artifact folder: ONNX graphs, tokenizer, scheduler config and a manifest that hashes them all.

Read on the serving path, so this module imports neither torch nor the exporter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Any

from wanrt.engine.graph_forms import referenced_files
from wanrt.engine.spec import ModelSpec
from wanrt.errors import ArtifactError, ModelFormatError

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
TOKENIZER_NAME = "tokenizer.json"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"
# Files onnxruntime or TensorRT would load: one present but unlisted means the folder was tampered with.
_MODEL_SUFFIXES = (".onnx", ".onnx.data")


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Everything ``manifest.json`` records; ``files`` maps each relative path (POSIX) to its sha256."""

    format_version: int
    source_model: dict[str, Any]  # {"path": ..., "config_sha256": {relative config path: sha256}}
    spec: ModelSpec
    graphs: dict[str, dict[str, Any]]  # name -> {"file", "inputs", "outputs", ...}
    vae_decoder: dict[str, Any]  # the streaming decoder's cache layout and temporal stride
    files: dict[str, str]
    opset: int
    versions: dict[str, str]
    parity: list[dict[str, Any]]
    created_utc: str

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["spec"] = self.spec.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Builds a manifest from parsed JSON; raises ArtifactError when a field is missing or malformed."""
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in data]
        if missing:
            raise ArtifactError(f"{MANIFEST_NAME} lacks {', '.join(missing)}")
        values = {f.name: data[f.name] for f in dataclasses.fields(cls)}
        for name in ("source_model", "spec", "graphs", "vae_decoder", "files", "versions"):
            if not isinstance(values[name], dict):
                raise ArtifactError(f"{MANIFEST_NAME}: {name} is not an object")
        if not all(isinstance(g, dict) and isinstance(g.get("file"), str) for g in values["graphs"].values()):
            raise ArtifactError(f"{MANIFEST_NAME}: every graph needs a \"file\"")
        if not all(isinstance(h, str) for h in values["files"].values()):
            raise ArtifactError(f"{MANIFEST_NAME}: files must map paths to sha256 strings")
        try:
            values["spec"] = ModelSpec.from_dict(values["spec"])
        except (ModelFormatError, TypeError) as err:
            raise ArtifactError(f"{MANIFEST_NAME} has an invalid spec: {err}") from None
        return cls(**values)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so tens of GB of weights never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def hash_folder(art_dir: Path) -> dict[str, str]:
    """sha256 of every file under ``art_dir`` except the manifest, keyed by POSIX relative path, sorted."""
    art_dir = Path(art_dir)
    return {rel: sha256_file(art_dir / rel) for rel in _listed_on_disk(art_dir)}


def write_manifest(art_dir: Path, manifest: Manifest) -> Path:
    """Writes ``manifest.json`` into ``art_dir`` and returns its path."""
    path = Path(art_dir) / MANIFEST_NAME
    path.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def load_artifact(art_dir: Path, *, verify_hashes: bool = True) -> Manifest:
    """Reads and checks an artifact folder; raises ArtifactError naming the first problem found.

    Checks: the manifest exists, parses and has a known format; every listed file is present (and, with
    ``verify_hashes``, unchanged); every graph's file is listed; no unlisted ONNX file lies in the folder.
    """
    from wanrt.engine.manifest_file import read_manifest

    art_dir = Path(art_dir)
    data = read_manifest(art_dir, MANIFEST_NAME, format_version=FORMAT_VERSION,
                         not_found="not a wanrt artifact (make one with `wanrt export`)",
                         outdated="re-export the model with this version")
    manifest = Manifest.from_dict(data)
    _check_files(art_dir, manifest, verify_hashes)
    return manifest


def _check_files(art_dir: Path, manifest: Manifest, verify_hashes: bool) -> None:
    for rel in manifest.files:
        # A manifest must not point outside its folder (absolute paths, "..").
        parts = PurePosixPath(rel)
        if parts.is_absolute() or ".." in parts.parts or rel == MANIFEST_NAME:
            raise ArtifactError(f"{art_dir / MANIFEST_NAME} lists an invalid path {rel!r}")
    for name, graph in manifest.graphs.items():
        for file in referenced_files(graph):
            if file not in manifest.files:
                raise ArtifactError(f"{art_dir / MANIFEST_NAME}: graph {name!r} file {file!r} is not listed in files")
    for rel in manifest.files:
        if not (art_dir / rel).is_file():
            raise ArtifactError(f"{art_dir / rel} is listed in {MANIFEST_NAME} but missing")
    for rel in _listed_on_disk(art_dir):
        if rel.endswith(_MODEL_SUFFIXES) and rel not in manifest.files:
            raise ArtifactError(f"{art_dir / rel} is not listed in {MANIFEST_NAME}: remove it or re-export")
    if verify_hashes:
        for rel, expected in manifest.files.items():
            actual = sha256_file(art_dir / rel)
            if actual != expected:
                raise ArtifactError(f"{art_dir / rel} does not match {MANIFEST_NAME} (sha256 {actual}, "
                                    f"expected {expected}): the file changed after export")


def _listed_on_disk(art_dir: Path) -> list[str]:
    return sorted(p.relative_to(art_dir).as_posix() for p in art_dir.rglob("*")
                  if p.is_file() and p.relative_to(art_dir).as_posix() != MANIFEST_NAME)
