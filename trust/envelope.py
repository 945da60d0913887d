"""in-toto Statement v1 in a DSSE envelope: the one signed format wanrt writes (folders, reports, checkpoints).

The statement names files by sha256 (``subject``) and says what they are (``predicate``); the envelope signs the
statement's exact bytes. Standard on both sides, so `cosign verify-blob-attestation`, in-toto tooling or any
DSSE verifier can check a wanrt signature without wanrt.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from securesystemslib import exceptions
from securesystemslib.dsse import Envelope
from securesystemslib.signer import Key, Signer

from wanrt.errors import SignatureError

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"


def statement(subjects: Mapping[str, str], predicate_type: str, predicate: Mapping[str, Any]) -> dict[str, Any]:
    """An in-toto statement over ``subjects`` (name -> sha256 hex)."""
    return {"_type": STATEMENT_TYPE,
            "subject": [{"name": name, "digest": {"sha256": digest}} for name, digest in subjects.items()],
            "predicateType": predicate_type, "predicate": dict(predicate)}


def sign(statement_: Mapping[str, Any], signer: Signer) -> dict[str, Any]:
    """The DSSE envelope (as JSON-ready dict) of the statement, signed by ``signer``."""
    payload = json.dumps(statement_, sort_keys=True, separators=(",", ":")).encode()
    envelope = Envelope(payload, PAYLOAD_TYPE, {})
    envelope.sign(signer)
    return envelope.to_dict()


def write(path: Path, envelope: Mapping[str, Any]) -> Path:
    Path(path).write_text(json.dumps(envelope, indent=2) + "\n", encoding="utf-8")
    return Path(path)


def verify(envelope_data: Any, keys: Sequence[Key], where: str) -> dict[str, Any]:
    """Checks a parsed envelope against trusted keys and returns its statement; SignatureError naming ``where``."""
    if not keys:
        raise SignatureError(f"{where}: no trusted public key to check it against (--trust KEY.pub)")
    try:
        envelope = Envelope.from_dict(envelope_data)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise SignatureError(f"{where} is not a DSSE envelope: {err!r}") from None
    if envelope.payload_type != PAYLOAD_TYPE:
        raise SignatureError(f"{where}: payload type {envelope.payload_type!r}, expected {PAYLOAD_TYPE}")
    try:
        envelope.verify(list(keys), 1)
    except exceptions.VerificationError:
        ids = ", ".join(sorted(s.keyid[:16] for s in envelope.signatures.values())) or "none"
        raise SignatureError(f"{where}: no valid signature by a trusted key (signed by key ids: {ids}); the file "
                             "changed after signing, or the signer is not trusted") from None
    try:
        data = json.loads(envelope.payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SignatureError(f"{where}: signed payload is not JSON: {err}") from None
    if not isinstance(data, dict) or data.get("_type") != STATEMENT_TYPE or not isinstance(data.get("subject"), list):
        raise SignatureError(f"{where}: signed payload is not an in-toto Statement v1")
    return data


def read_and_verify(path: Path, keys: Sequence[Key]) -> dict[str, Any]:
    """Reads an envelope file and verifies it (see :func:`verify`)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SignatureError(f"{path} is missing: the folder is not signed (`wanrt sign`)") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SignatureError(f"{path} cannot be read as JSON: {err}") from None
    return verify(data, keys, str(path))


def subject_digests(statement_: Mapping[str, Any], where: str) -> dict[str, str]:
    """name -> sha256 of a verified statement's subjects."""
    digests = {}
    for item in statement_["subject"]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) \
                or not isinstance(item.get("digest", {}).get("sha256"), str):
            raise SignatureError(f"{where}: malformed subject {item!r}")
        digests[item["name"]] = item["digest"]["sha256"]
    return digests
