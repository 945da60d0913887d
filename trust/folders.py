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
import json
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from securesystemslib.signer import Key, Signer

from wanrt.engine.artifact import MANIFEST_NAME, load_artifact, sha256_file
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


def folder_contents(folder: Path) -> FolderContents:
    """Reads the folder's manifest; ArtifactError when it is neither kind of folder."""
    folder = Path(folder)
    if (folder / ENGINES_MANIFEST).is_file():
        return engines_contents(folder, _read_json(folder / ENGINES_MANIFEST))
    if (folder / REPORT_MANIFEST).is_file():
        report = _read_json(folder / REPORT_MANIFEST)
        files = report.get("files") if isinstance(report, dict) else None
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in (*files, *files.values())):
            raise ArtifactError(f"{folder / REPORT_MANIFEST} has no files map")
        return FolderContents("report", REPORT_MANIFEST, dict(files))
    if (folder / MANIFEST_NAME).is_file():
        manifest = _read_json(folder / MANIFEST_NAME)
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise ArtifactError(f"{folder / MANIFEST_NAME} has no files map")
        return FolderContents("artifact", MANIFEST_NAME, dict(files))
    raise ArtifactError(f"{folder} has neither {MANIFEST_NAME} nor {ENGINES_MANIFEST}: not a wanrt artifact or "
                        "engines folder")


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
    contents = folder_contents(folder)
    _check_files(folder, contents)  # sign only what is consistent now
    predicate: dict[str, Any] = {
        "kind": contents.kind, "manifest": contents.manifest, "wanrt_version": wanrt_version,
        "signed_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if contents.kind == "engines":
        predicate["source_artifact"] = {"manifest_sha256": contents.source_manifest_sha256}
    statement = envelope.statement(_subjects(folder, contents), PREDICATE_TYPE, predicate)
    return envelope.write(folder / SIGNATURE_NAME, envelope.sign(statement, signer))


def verify_folder(folder: Path, keys: Sequence[Key], *, deep: bool) -> dict[str, Any]:
    """Refuses an unsigned, wrongly signed or changed folder with a SignatureError or ArtifactError naming the file;
    returns the verified statement."""
    folder = Path(folder)
    signature = folder / SIGNATURE_NAME
    statement = envelope.read_and_verify(signature, keys)
    if statement.get("predicateType") != PREDICATE_TYPE or not isinstance(statement.get("predicate"), dict):
        raise SignatureError(f"{signature} does not sign a wanrt folder (predicateType "
                             f"{statement.get('predicateType')!r})")
    signed = envelope.subject_digests(statement, str(signature))
    predicate = statement["predicate"]
    manifest_name = predicate.get("manifest")
    if manifest_name not in _MANIFESTS or manifest_name not in signed:
        raise SignatureError(f"{signature} does not name the folder's manifest")
    manifest_path = folder / manifest_name
    if not manifest_path.is_file():
        raise SignatureError(f"{manifest_path} is missing but {signature} signs it")
    actual = sha256_file(manifest_path)
    if actual != signed[manifest_name]:
        raise SignatureError(f"{manifest_path} changed after it was signed (sha256 {actual}, signed "
                             f"{signed[manifest_name]})")
    contents = folder_contents(folder)
    if contents.kind != predicate.get("kind") or _subjects_from(contents, actual) != signed:
        raise SignatureError(f"{signature} does not list the files {manifest_name} lists")
    if contents.kind == "engines":
        _check_source(folder, contents, predicate)
    if deep:
        _check_files(folder, contents)
    return statement


def _check_source(folder: Path, contents: FolderContents, predicate: dict[str, Any]) -> None:
    bound = (predicate.get("source_artifact") or {}).get("manifest_sha256")
    if bound != contents.source_manifest_sha256:
        raise SignatureError(f"{folder / SIGNATURE_NAME} binds source artifact manifest {bound}, but "
                             f"{ENGINES_MANIFEST} names {contents.source_manifest_sha256}")
    source_manifest = contents.source_dir / MANIFEST_NAME
    if not source_manifest.is_file():
        raise ArtifactError(f"{source_manifest} (the engines' source artifact) is missing")
    actual = sha256_file(source_manifest)
    if actual != bound:
        raise SignatureError(f"{source_manifest} is not the artifact manifest the signed engines were built from "
                             f"(sha256 {actual}, signed {bound})")


def _check_files(folder: Path, contents: FolderContents) -> None:
    """Hashes every listed file (naming the first that differs); for engines, the source artifact too."""
    if contents.kind == "artifact":
        load_artifact(folder, verify_hashes=True)  # also refuses unlisted model files and bad paths
        return
    for rel, expected in contents.files.items():
        path = folder / rel
        if PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
            raise ArtifactError(f"{folder / contents.manifest} lists an invalid path {rel!r}")
        if not path.is_file():
            raise ArtifactError(f"{path} is listed in {contents.manifest} but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactError(f"{path} does not match {contents.manifest} (sha256 {actual}, expected {expected})")
    if contents.kind == "report":
        return
    source_manifest = contents.source_dir / MANIFEST_NAME
    if not source_manifest.is_file() or sha256_file(source_manifest) != contents.source_manifest_sha256:
        raise ArtifactError(f"{source_manifest} is not the manifest of the artifact the engines were built from "
                            f"(expected sha256 {contents.source_manifest_sha256})")
    load_artifact(contents.source_dir, verify_hashes=True)


def _subjects(folder: Path, contents: FolderContents) -> dict[str, str]:
    return _subjects_from(contents, sha256_file(folder / contents.manifest))


def _subjects_from(contents: FolderContents, manifest_sha256: str) -> dict[str, str]:
    return {contents.manifest: manifest_sha256, **contents.files}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path} cannot be read as JSON: {err}") from None
