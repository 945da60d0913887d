"""The audit log's hash chain: each line's ``seq`` and ``prev`` (sha256 of the line before), its continuation
across restarts and rotated files, signed checkpoints, and the verifier behind `wanrt audit verify`.

A line's hash is the sha256 of its exact bytes without the newline, so verification needs no canonical JSON.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wanrt.errors import AuditChainError, SignatureError

GENESIS = "0" * 64  # ``prev`` of the first record of a chain
CHECKPOINT_PREDICATE = "https://wanrt.invalid/attestations/audit-checkpoint/v1"
_COMPRESSED = (".gz", ".xz", ".bz2", ".zst")  # rotated files wanrt cannot resume from (keep `delaycompress`)
_TAIL_BLOCK = 64 * 1024


@dataclasses.dataclass(frozen=True)
class ChainHead:
    seq: int  # the last record's seq; 0 before the first
    sha256: str  # the last record's hash; GENESIS before the first


@dataclasses.dataclass(frozen=True)
class ChainReport:
    records: int
    first_seq: int
    head: ChainHead
    checkpoints: int  # signed checkpoints verified (0 without trusted keys)


def record_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def head_of_file(path: Path) -> ChainHead | None:
    """The head a file ends with, read from its tail; None when it is missing or empty."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        tail, start = b"", size
        while start > 0 and tail.count(b"\n") < 2:
            start = max(0, start - _TAIL_BLOCK)
            f.seek(start)
            tail = f.read(size - start)
    if not tail.endswith(b"\n"):
        raise AuditChainError(f"{path} ends in a partial record (truncated, or a write was cut off): run `wanrt "
                              "audit verify` on it, move it aside, and restart")
    line = tail[:-1].rsplit(b"\n", 1)[-1]
    seq, _prev, _record = _parse(line, f"{path} (last record)")
    return ChainHead(seq, record_hash(line))


def resume_head(path: Path) -> ChainHead:
    """Where a log opened at ``path`` continues: its own last record, else the newest rotated sibling's."""
    path = Path(path)
    head = head_of_file(path)
    if head is not None:
        return head
    siblings = [p for p in Path(path.parent).glob(glob.escape(path.name) + ".*")
                if p.is_file() and not p.name.endswith(_COMPRESSED) and p.stat().st_size > 0]
    if siblings:
        newest = max(siblings, key=lambda p: p.stat().st_mtime)
        return head_of_file(newest) or ChainHead(0, GENESIS)
    return ChainHead(0, GENESIS)


def checkpoint_envelope(head: ChainHead, signer: Any) -> dict[str, Any]:
    """A DSSE envelope signing ``head`` (the record just before the checkpoint line)."""
    from wanrt.trust import envelope

    statement = envelope.statement({f"audit-record-{head.seq}": head.sha256}, CHECKPOINT_PREDICATE,
                                   {"seq": head.seq})
    return envelope.sign(statement, signer)


def verify_chain(paths: Sequence[Path], keys: Sequence[Any] = (), *,
                 expect_head: ChainHead | None = None) -> ChainReport:
    """Follows the chain through ``paths`` in order; AuditChainError naming the first broken link.

    The first file may start mid-chain (older files rotated away); every later link must hold. With ``keys``,
    every checkpoint must carry a valid signature over the record before it. ``expect_head``: a (seq, sha256)
    the server logged; the chain must contain exactly that record (a removed tail fails here)."""
    head: ChainHead | None = None
    first_seq, records, checkpoints, seen_expected = 0, 0, 0, expect_head is None
    for path in paths:
        data = Path(path).read_bytes()
        if data and not data.endswith(b"\n"):
            lines_before = data.count(b"\n")
            raise AuditChainError(f"{path}:{lines_before + 1}: the last record is incomplete (truncated)")
        for lineno, line in enumerate(data.splitlines(), 1):
            where = f"{path}:{lineno}"
            seq, prev, record = _parse(line, where)
            if head is None:
                first_seq = seq
                if seq == 1 and prev != GENESIS:
                    raise AuditChainError(f"{where}: seq 1 does not start from the genesis hash")
            elif seq != head.seq + 1:
                raise AuditChainError(f"{where}: seq {seq} follows seq {head.seq}: a record was deleted, inserted "
                                      "or moved here")
            elif prev != head.sha256:
                raise AuditChainError(f"{where}: seq {seq} does not link to the record before it (prev {prev}, "
                                      f"actual {head.sha256}): seq {head.seq} was edited or replaced")
            if record.get("event") == "checkpoint" and keys:
                _check_checkpoint(record, seq, prev, keys, where)
                checkpoints += 1
            head = ChainHead(seq, record_hash(line))
            if expect_head is not None and seq == expect_head.seq:
                if head != expect_head:
                    raise AuditChainError(f"{where}: seq {seq} has sha256 {head.sha256}, not the expected "
                                          f"{expect_head.sha256}")
                seen_expected = True
            records += 1
    if head is None:
        raise AuditChainError("no audit records in " + ", ".join(map(str, paths)))
    if not seen_expected and expect_head.seq < first_seq:
        raise AuditChainError(f"the chain starts at seq {first_seq}, after the expected head seq {expect_head.seq}: "
                              "records were removed from the start (or an older file was not given)")
    if not seen_expected:
        raise AuditChainError(f"the chain ends at seq {head.seq}, before the expected head seq {expect_head.seq}: "
                              "records were removed from the end")
    return ChainReport(records, first_seq, head, checkpoints)


def _check_checkpoint(record: dict[str, Any], seq: int, prev: str, keys: Sequence[Any], where: str) -> None:
    from wanrt.trust import envelope

    try:
        statement = envelope.verify(record.get("checkpoint"), keys, f"{where} (checkpoint)")
    except SignatureError as err:
        raise AuditChainError(str(err)) from None
    signed = envelope.subject_digests(statement, where)
    if statement.get("predicateType") != CHECKPOINT_PREDICATE or signed != {f"audit-record-{seq - 1}": prev}:
        raise AuditChainError(f"{where}: the checkpoint signs another record than seq {seq - 1} ({prev})")


def _parse(line: bytes, where: str) -> tuple[int, str, dict[str, Any]]:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AuditChainError(f"{where}: not a complete JSON record (edited or truncated)") from None
    if not isinstance(record, dict):
        raise AuditChainError(f"{where}: not a JSON object")
    seq, prev = record.get("seq"), record.get("prev")
    if type(seq) is not int or seq < 1 or not isinstance(prev, str) or len(prev) != 64:
        raise AuditChainError(f"{where}: record has no chain fields (seq, prev): not written by a chained wanrt "
                              "audit log, or edited")
    return seq, prev, record
