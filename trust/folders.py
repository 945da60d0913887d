"""Signatures over model folders: an exported or quantized artifact (``manifest.json``) or a TensorRT engines
folder (``engines.json``).

A folder's manifest already hashes every file it needs, so the signature covers the manifest: the statement's
subjects are the manifest's own sha256 plus every file it lists (so a generic in-toto verifier can check the
files too), and for an engines folder the predicate binds the sha256 of the artifact manifest the engines were
built from. The detached envelope sits next to the manifest as ``signature.dsse.json``.

Checking has two depths. ``deep=False`` (`generate`, `serve`) verifies the envelope and the manifests' own
bytes; the loader then hashes every file before any network is loaded, naming the file that changed.
``deep=True`` (`wanrt verify`, `wanrt sign`, `wanrt qualify`) hashes every file here. `wanrt qualify`'s
report folder is signed the same way (``qualification.json`` lists the files it comes with).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key, Signer

from wanrt.engine.artifact import MANIFEST_NAME, open_artifact
from wanrt.engine.model_files import ManifestCheck, ModelFolder
from wanrt.errors import ArtifactError, SignatureError
from wanrt.trust import envelope

SIGNATURE_NAME = "signature.dsse.json"
PREDICATE_TYPE = "https://wanrt.invalid/attestations/signed-folder/v1"
ENGINES_MANIFEST = "engines.json"  # engine/tensorrt/engine_manifest.py's name, without importing its parser
REPORT_MANIFEST = "qualification.json"  # `wanrt qualify`'s report, which lists the files it comes with
_MANIFESTS = (MANIFEST_NAME, ENGINES_MANIFEST, REPORT_MANIFEST)


@dataclasses.dataclass(frozen=True)
class FolderContents:
    """What a folder's manifest says it holds."""

    kind: str  # "artifact", "engines" or "report"
    manifest: str  # the manifest's file name in the folder
    files: dict[str, str]  # every file the manifest lists (relative POSIX path -> sha256)
    source_dir: Path | None = None  # engines: the artifact folder they were built from
    source_manifest_sha256: str | None = None  # engines: that artifact's manifest.json sha256


def manifest_name(folder: Path | ModelFolder) -> str:
    """Which manifest the folder has (engines, report or artifact); ArtifactError when none."""
    for name in (ENGINES_MANIFEST, REPORT_MANIFEST, MANIFEST_NAME):
        if folder.exists(name) if isinstance(folder, ModelFolder) else (Path(folder) / name).is_file():
            return name
    where = folder.path if isinstance(folder, ModelFolder) else folder
    raise ArtifactError(f"{where} has neither {MANIFEST_NAME} nor {ENGINES_MANIFEST}: not a wanrt artifact or "
                        "engines folder")


def contents_of(folder: Path, name: str, data: Any) -> FolderContents:
    """What the manifest ``name`` (parsed) says the folder holds."""
    if name == ENGINES_MANIFEST:
        return engines_contents(folder, data)
    files = data.get("files") if isinstance(data, dict) else None
    if name == REPORT_MANIFEST:
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in (*files, *files.values())):
            raise ArtifactError(f"{folder / REPORT_MANIFEST} has no files map")
        return FolderContents("report", REPORT_MANIFEST, dict(files))
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ArtifactError(f"{folder / MANIFEST_NAME} has no files map")
    return FolderContents("artifact", MANIFEST_NAME, dict(files))


def engines_contents(folder: Path, data: Any) -> FolderContents:
    """The one place that knows where engines.json lists its files and its source artifact."""
    where = folder / ENGINES_MANIFEST
    try:
        files = {e["file"]: e["sha256"] for e in data["engines"].values()}
        source = data["artifact"]
        source_dir, source_sha = folder / source["path"], source["manifest_sha256"]
    except (KeyError, TypeError, AttributeError) as err:
        raise ArtifactError(f"{where} is malformed: {err!r}") from None
    if not all(isinstance(v, str) for v in (*files, *files.values(), source_sha)):
        raise ArtifactError(f"{where} is malformed: file names and hashes must be strings")
    return FolderContents("engines", ENGINES_MANIFEST, files, source_dir, source_sha)


def sign_folder(folder: Path, signer: Signer, *, wanrt_version: str) -> Path:
    """Checks every file of the folder against its manifest, then writes ``signature.dsse.json``."""
    folder = Path(folder)
    with ModelFolder(folder, strict=True) as opened:  # sign what `--trust` will load: no links inside
        name = manifest_name(opened)
        manifest = opened.read(name)
        contents = contents_of(folder, name, json.loads(manifest.tobytes().decode("utf-8")))
        _check_files(opened, contents)  # sign only what is consistent now
    if contents.kind == "engines":
        with ModelFolder(contents.source_dir, strict=True) as source:
            if source.digest(MANIFEST_NAME) != contents.source_manifest_sha256:
                raise ArtifactError(f"{source.where(MANIFEST_NAME)} is not the manifest of the artifact the "
                                    f"engines were built from (expected sha256 {contents.source_manifest_sha256})")
            _check_artifact_files(source)
    predicate: dict[str, Any] = {
        "kind": contents.kind, "manifest": contents.manifest, "wanrt_version": wanrt_version,
        "signed_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if contents.kind == "engines":
        predicate["source_artifact"] = {"manifest_sha256": contents.source_manifest_sha256}
    statement = envelope.statement(_subjects_from(contents, manifest.sha256), PREDICATE_TYPE, predicate)
    return envelope.write(folder / SIGNATURE_NAME, envelope.sign(statement, signer))


def verify_folder(folder: Path, keys: Sequence[Key], *, deep: bool) -> dict[str, Any]:
    """Refuses an unsigned, wrongly signed or changed folder with a SignatureError or ArtifactError naming the file;
    returns the verified statement. Every file is read through the opened folder, links refused; ``deep`` hashes
    every listed file (`wanrt verify`, `wanrt qualify`), otherwise the manifests alone."""
    with ModelFolder(folder, strict=True) as opened:
        name = manifest_name(opened)
        statement, contents = verify_manifest(opened, name, opened.read(name).tobytes(), keys)
        if contents.kind == "engines":
            with ModelFolder(contents.source_dir, strict=True) as source:
                if not source.exists(MANIFEST_NAME):
                    raise ArtifactError(f"{source.where(MANIFEST_NAME)} (the engines' source artifact) is missing")
                actual = source.digest(MANIFEST_NAME)
                if actual != contents.source_manifest_sha256:
                    raise SignatureError(f"{source.where(MANIFEST_NAME)} is not the artifact manifest the signed "
                                         f"engines were built from (sha256 {actual}, signed "
                                         f"{contents.source_manifest_sha256})")
                if deep:
                    _check_artifact_files(source)
        if deep:
            _check_files(opened, contents)
    return statement


def manifest_check(keys: Sequence[Key]) -> ManifestCheck:
    """The check ``--trust`` hands the loader: it runs on the very manifest bytes the loader then parses, whose
    hashes the loader then holds every file it reads to (engine/model_files.py)."""

    def check(folder: ModelFolder, name: str, data: bytes) -> None:
        verify_manifest(folder, name, data, keys)

    return check


def verify_manifest(folder: ModelFolder, name: str, data: bytes,
                    keys: Sequence[Key]) -> tuple[dict[str, Any], FolderContents]:
    """Checks ``folder``'s signature over the manifest ``name`` whose exact bytes are ``data``."""
    signature = folder.where(SIGNATURE_NAME)
    if not folder.exists(SIGNATURE_NAME):
        raise SignatureError(f"{signature} is missing: the folder is not signed (`wanrt sign`)")
    try:
        envelope_data = json.loads(folder.read(SIGNATURE_NAME).tobytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SignatureError(f"{signature} cannot be read as JSON: {err}") from None
    statement = envelope.verify(envelope_data, keys, str(signature))
    if statement.get("predicateType") != PREDICATE_TYPE or not isinstance(statement.get("predicate"), dict):
        raise SignatureError(f"{signature} does not sign a wanrt folder (predicateType "
                             f"{statement.get('predicateType')!r})")
    signed = envelope.subject_digests(statement, str(signature))
    predicate = statement["predicate"]
    if predicate.get("manifest") != name or name not in signed:
        raise SignatureError(f"{signature} does not name the folder's manifest {name}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != signed[name]:
        raise SignatureError(f"{folder.where(name)} changed after it was signed (sha256 {actual}, signed "
                             f"{signed[name]})")
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{folder.where(name)} cannot be read as JSON: {err}") from None
    contents = contents_of(folder.path, name, parsed)
    if contents.kind != predicate.get("kind") or _subjects_from(contents, actual) != signed:
        raise SignatureError(f"{signature} does not list the files {name} lists")
    if contents.kind == "engines":
        bound = (predicate.get("source_artifact") or {}).get("manifest_sha256")
        if bound != contents.source_manifest_sha256:
            raise SignatureError(f"{signature} binds source artifact manifest {bound}, but {ENGINES_MANIFEST} "
                                 f"names {contents.source_manifest_sha256}")
    return statement, contents


def _check_files(folder: ModelFolder, contents: FolderContents) -> None:
    """Hashes every listed file through the opened folder, naming the first that differs."""
    if contents.kind == "artifact":
        _check_artifact_files(folder)
        return
    for rel, expected in contents.files.items():
        folder.digest(rel, expected, listed_in=contents.manifest)


def _check_artifact_files(folder: ModelFolder) -> None:
    manifest, _ = open_artifact(folder)  # also refuses unlisted model files and bad paths
    for rel, expected in manifest.files.items():
        folder.digest(rel, expected, listed_in=MANIFEST_NAME)


def _subjects_from(contents: FolderContents, manifest_sha256: str) -> dict[str, str]:
    return {contents.manifest: manifest_sha256, **contents.files}
