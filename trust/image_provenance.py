"""SLSA provenance for a built container image: an in-toto Statement v1 (predicate SLSA Provenance v1) whose
subject is the image's digest, signed into a DSSE envelope with the same ed25519 keys as `wanrt sign`.

`wanrt attest-image` writes it after a build (deploy/ci/podman-smoke.sh does, for the CPU image);
`wanrt verify-image-attestation` checks it against a trusted key and the digest of the image about to run.
The predicate records what the image was built from: the Dockerfile and target, the base image, the build
arguments, the source revision, and the digests of the files that decide its contents (the Dockerfile, the
hashed locks, pyproject.toml), so a reviewer can rebuild it or compare two builds.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key, Signer

from wanrt.errors import InvalidRequestError, SignatureError
from wanrt.trust import envelope

SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://github.com/wanrt/wanrt/deploy/image-build/v1"
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")


def image_digest(value: str) -> str:
    """``sha256:<64 hex>`` (an image id or manifest digest) -> the hex; InvalidRequestError otherwise."""
    match = _DIGEST.match(value.strip())
    if not match:
        raise InvalidRequestError("image_digest", f"must be sha256:<64 hex digits>, got {value!r}")
    return match.group(1)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def provenance_statement(image: str, digest: str, *, target: str, dockerfile: Path, base_image: str,
                         build_args: Mapping[str, str], materials: Sequence[Path], revision: str,
                         builder: str, started: str, finished: str) -> dict[str, Any]:
    """The statement for ``image`` (a name, e.g. ``localhost/wanrt:cpu``) at ``digest`` (sha256:...)."""
    predicate = {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {"dockerfile": Path(dockerfile).name, "target": target,
                                   "buildArgs": dict(sorted(build_args.items()))},
            "internalParameters": {},
            "resolvedDependencies": [
                {"uri": base_image, "annotations": {"role": "base image"}},
                *({"uri": f"file:{Path(m).name}", "digest": {"sha256": _file_digest(m)}} for m in materials),
                *([{"uri": "git", "digest": {"gitCommit": revision}}] if revision else []),
            ],
        },
        "runDetails": {"builder": {"id": builder},
                       "metadata": {"startedOn": started, "finishedOn": finished}},
    }
    return envelope.statement({image: image_digest(digest)}, SLSA_PROVENANCE, predicate)


def attest(statement: Mapping[str, Any], signer: Signer, out: Path) -> Path:
    return envelope.write(out, envelope.sign(statement, signer))


def verify_attestation(path: Path, digest: str, keys: Sequence[Key]) -> dict[str, Any]:
    """The verified statement when ``path`` is signed by a trusted key and attests exactly ``digest``."""
    statement = envelope.read_and_verify(path, keys)
    if statement.get("predicateType") != SLSA_PROVENANCE:
        raise SignatureError(f"{path}: predicate {statement.get('predicateType')!r}, expected {SLSA_PROVENANCE}")
    subjects = envelope.subject_digests(statement, str(path))
    want = image_digest(digest)
    if want not in subjects.values():
        raise SignatureError(f"{path} attests {', '.join(f'{n}@sha256:{d}' for n, d in subjects.items())}, not "
                             f"sha256:{want}: this image is not the one that was built and signed")
    return statement


def summary(statement: Mapping[str, Any]) -> str:
    definition = statement["predicate"]["buildDefinition"]
    return json.dumps({"subject": statement["subject"], "target": definition["externalParameters"]["target"],
                       "dependencies": definition["resolvedDependencies"]}, sort_keys=True)
