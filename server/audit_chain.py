"""The audit log's hash chain: each line's ``seq`` and ``prev`` (sha256 of the line before), its chain events
(genesis, checkpoints), its continuation across restarts and rotated files, and the verifier behind
`wanrt audit verify`.

A line's hash is the sha256 of its exact bytes without the newline, so verification needs no canonical JSON.

Chain events are lines with an ``event``: ``genesis`` (seq 1 of a new log) and ``checkpoint`` of a ``kind``:
``periodic`` (after every N records), ``rotation`` (the last line of a rotated file), ``start`` (a server starting:
the first line of a new file after rotation when ``file_start``, else appended after the previous run's last
line) and ``shutdown`` (the last line a server writes). With a signing key each event carries a DSSE envelope
signing the record before it (seq, sha256) and the event itself (kind, N, file_start): rewriting what lies
before a signed event needs the key. What the key holder can therefore always detect (verify_chain):

- a chain that starts anywhere but at the genesis record (seq 1) or a signed ``start`` with ``file_start``: records
  were removed from the start;
- more than N records without a signed event: checkpoints were removed (and the records around them rewritten);
- anything between a ``shutdown`` and the next ``start``: written while no server was running;
- a chain that stops short of the latest head written to the second sink (``--audit-head-sink``): a cut tail.

Records after the last signed event are not anchored (a running server's last records, or a crashed one's):
they are reported, and refused unless the caller accepts a live log's tail.
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
EVENTS = ("genesis", "checkpoint")
KINDS = ("genesis", "periodic", "rotation", "start", "shutdown")
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
    checkpoints: int  # signed chain events verified (0 without trusted keys)
    anchored_to: int  # the last seq a signed event vouches for (0 without keys)
    unanchored: list[tuple[int, int]]  # seq ranges no signed event vouches for (a crash's or a live log's tail)
    signed: bool  # verified against trusted keys


def record_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def head_of_file(path: Path) -> ChainHead | None:
    """The head a file ends with, read from its tail; None when it is missing or empty."""
    last = last_record(path)
    return None if last is None else last[0]


def last_record(path: Path) -> tuple[ChainHead, dict[str, Any]] | None:
    """The head a file ends with and that last record; None when the file is missing or empty."""
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
    seq, _prev, record = _parse(line, f"{path} (last record)")
    return ChainHead(seq, record_hash(line)), record


def resume_point(path: Path) -> tuple[ChainHead, dict[str, Any] | None, bool]:
    """Where a log opened at ``path`` continues: (head, the record there, whether ``path`` already holds
    records). The head is the path's own last record, else the newest rotated sibling's, else the genesis."""
    path = Path(path)
    own = last_record(path)
    if own is not None:
        return own[0], own[1], True
    siblings = [p for p in Path(path.parent).glob(glob.escape(path.name) + ".*")
                if p.is_file() and not p.name.endswith(_COMPRESSED) and p.stat().st_size > 0]
    if siblings:
        found = last_record(max(siblings, key=lambda p: p.stat().st_mtime))
        if found is not None:
            return found[0], found[1], False
    return ChainHead(0, GENESIS), None, False


def resume_head(path: Path) -> ChainHead:
    return resume_point(path)[0]


def event_statement(head: ChainHead, kind: str, checkpoint_every: int, *, file_start: bool) -> dict[str, Any]:
    """The in-toto statement a chain event signs: the record before it, and the event itself."""
    from wanrt.trust import envelope

    return envelope.statement({f"audit-record-{head.seq}": head.sha256}, CHECKPOINT_PREDICATE,
                              {"seq": head.seq, "kind": kind, "checkpoint_every": checkpoint_every,
                               "file_start": file_start})


def checkpoint_envelope(head: ChainHead, signer: Any, kind: str = "periodic", checkpoint_every: int = 0, *,
                        file_start: bool = False) -> dict[str, Any]:
    """A DSSE envelope signing ``head`` (the record just before the event line) and the event."""
    from wanrt.trust import envelope

    return envelope.sign(event_statement(head, kind, checkpoint_every, file_start=file_start), signer)


@dataclasses.dataclass
class _Walk:
    """The verifier's state while it follows the chain."""

    keys: Sequence[Any]
    head: ChainHead | None = None
    first_seq: int = 0
    records: int = 0
    checkpoints: int = 0
    every: int = 0  # N of the last event (0: no periodic checkpoints promised)
    anchor: int = 0  # seq of the last chain event
    since_anchor: int = 0  # records after it
    after_shutdown: int = 0  # seq of a shutdown event not yet followed by a start
    signed_to: int = 0
    unanchored: list = dataclasses.field(default_factory=list)


def verify_chain(paths: Sequence[Path], keys: Sequence[Any] = (), *, expect_head: ChainHead | None = None,
                 heads: Sequence[ChainHead] = (), live: bool = False) -> ChainReport:
    """Follows the chain through ``paths`` in order; AuditChainError naming the first broken link or rule.

    With ``keys`` every chain event must carry a valid signature, and records no signed event vouches for at the
    end are refused unless ``live`` (a running server's log: reported instead). ``expect_head`` and ``heads``
    (signed heads from the second sink): records the chain must contain, so a removed tail shows."""
    walk = _Walk(keys)
    wanted = [h for h in [expect_head, *heads] if h is not None]
    seen: set[ChainHead] = set()
    for path in paths:
        data = Path(path).read_bytes()
        if data and not data.endswith(b"\n"):
            lines_before = data.count(b"\n")
            raise AuditChainError(f"{path}:{lines_before + 1}: the last record is incomplete (truncated)")
        for lineno, line in enumerate(data.splitlines(), 1):
            where = f"{path}:{lineno}"
            seq, prev, record = _parse(line, where)
            _link(walk, seq, prev, record, where)
            if record.get("event") in EVENTS:
                _event(walk, seq, prev, record, where)
            else:
                _record(walk, seq, where)
            walk.head = ChainHead(seq, record_hash(line))
            walk.records += 1
            if any(h.seq == seq for h in wanted):
                seen.add(walk.head)
    if walk.head is None:
        raise AuditChainError("no audit records in " + ", ".join(map(str, paths)))
    for head in wanted:
        _check_contains(walk, head, seen)
    if walk.since_anchor:
        walk.unanchored.append((walk.anchor + 1, walk.head.seq))
        if keys and not live:
            raise AuditChainError(f"seq {walk.anchor + 1}..{walk.head.seq} follow the last signed checkpoint (seq "
                                  f"{walk.anchor}): nothing vouches for them, so records appended or edited there "
                                  "cannot be told from the server's own. A stopped server's log ends with its signed "
                                  "shutdown checkpoint; for a running server's log pass --live (the tail is then "
                                  "reported as unanchored)")
    return ChainReport(walk.records, walk.first_seq, walk.head, walk.checkpoints, walk.signed_to, walk.unanchored,
                       bool(keys))


def _link(walk: _Walk, seq: int, prev: str, record: dict[str, Any], where: str) -> None:
    head = walk.head
    if head is None:
        walk.first_seq = seq
        starts = (record.get("event") == "genesis" and seq == 1 and prev == GENESIS) or (
            record.get("event") == "checkpoint" and record.get("kind") == "start" and record.get("file_start") is True)
        if not starts:
            raise AuditChainError(f"{where}: the chain starts at seq {seq}, which is neither the genesis record (seq "
                                  "1) nor the start of a continued file: records before it were removed (or an "
                                  "older file was not given)")
    elif seq != head.seq + 1:
        raise AuditChainError(f"{where}: seq {seq} follows seq {head.seq}: a record was deleted, inserted "
                              "or moved here")
    elif prev != head.sha256:
        raise AuditChainError(f"{where}: seq {seq} does not link to the record before it (prev {prev}, "
                              f"actual {head.sha256}): seq {head.seq} was edited or replaced")


def _record(walk: _Walk, seq: int, where: str) -> None:
    if walk.after_shutdown:
        raise AuditChainError(f"{where}: seq {seq} follows the shutdown checkpoint (seq {walk.after_shutdown}) "
                              "before any server start: it was written while no server was running")
    walk.since_anchor += 1
    if walk.every and walk.since_anchor > walk.every:
        raise AuditChainError(f"{where}: seq {seq} is the {walk.since_anchor}th record after the last checkpoint "
                              f"(seq {walk.anchor}), but this log is checkpointed every {walk.every}: checkpoints "
                              "were removed")


def _event(walk: _Walk, seq: int, prev: str, record: dict[str, Any], where: str) -> None:
    kind = "genesis" if record.get("event") == "genesis" else record.get("kind")
    if kind not in KINDS:
        raise AuditChainError(f"{where}: unknown chain event kind {kind!r}")
    if kind == "genesis" and (seq != 1 or prev != GENESIS):
        raise AuditChainError(f"{where}: a genesis record at seq {seq}: a chain has one, at seq 1")
    if walk.after_shutdown and kind != "start":
        raise AuditChainError(f"{where}: a {kind} checkpoint follows the shutdown checkpoint (seq "
                              f"{walk.after_shutdown}) before any server start")
    if walk.every and walk.since_anchor > walk.every:
        raise AuditChainError(f"{where}: {walk.since_anchor} records since the last checkpoint (seq {walk.anchor}); "
                              f"this log is checkpointed every {walk.every}: checkpoints were removed")
    every, file_start = record.get("checkpoint_every", 0), record.get("file_start", False)
    if walk.keys:
        every, file_start = _check_signature(record, seq, prev, kind, walk.keys, where)
        walk.checkpoints += 1
        walk.signed_to = seq - 1
    if kind == "start" and walk.since_anchor and walk.head is not None:
        # The previous run stopped without its shutdown checkpoint (a crash, kill -9): its last records were
        # never vouched for before this start; the chain from here on covers them as they were found.
        walk.unanchored.append((walk.anchor + 1, walk.head.seq))
    walk.every = every if isinstance(every, int) and every > 0 else 0
    walk.anchor, walk.since_anchor = seq, 0
    walk.after_shutdown = seq if kind == "shutdown" else 0


def _check_signature(record: dict[str, Any], seq: int, prev: str, kind: str, keys: Sequence[Any],
                     where: str) -> tuple[int, bool]:
    from wanrt.trust import envelope

    if record.get("checkpoint") is None:
        raise AuditChainError(f"{where}: the {kind} record at seq {seq} is not signed (this log was written without "
                              "--audit-signing-key, or the signature was stripped)")
    try:
        statement = envelope.verify(record.get("checkpoint"), keys, f"{where} ({kind} checkpoint)")
    except SignatureError as err:
        raise AuditChainError(str(err)) from None
    signed = envelope.subject_digests(statement, where)
    predicate = statement.get("predicate") or {}
    if statement.get("predicateType") != CHECKPOINT_PREDICATE or signed != {f"audit-record-{seq - 1}": prev} \
            or predicate.get("seq") != seq - 1:
        raise AuditChainError(f"{where}: the checkpoint signs another record than seq {seq - 1} ({prev})")
    if predicate.get("kind") != kind or record.get("file_start", False) != predicate.get("file_start", False):
        raise AuditChainError(f"{where}: the record says a {kind} checkpoint, its signature a "
                              f"{predicate.get('kind')} one: the record was edited")
    return predicate.get("checkpoint_every", 0), bool(predicate.get("file_start", False))


def _check_contains(walk: _Walk, head: ChainHead, seen: set[ChainHead]) -> None:
    if head in seen:
        return
    if head.seq < walk.first_seq:
        raise AuditChainError(f"the chain starts at seq {walk.first_seq}, after the expected head seq {head.seq}: "
                              "records were removed from the start (or an older file was not given)")
    if head.seq > walk.head.seq:
        raise AuditChainError(f"the chain ends at seq {walk.head.seq}, before the expected head seq {head.seq}: "
                              "records were removed from the end")
    raise AuditChainError(f"seq {head.seq} does not have the expected sha256 {head.sha256}: the record was replaced")


def read_heads(path: Path, keys: Sequence[Any]) -> list[ChainHead]:
    """The signed heads a second sink holds (one JSON object per line; a syslog or journal export's line prefixes
    are skipped), each checked against ``keys``; AuditChainError naming a line that does not verify."""
    from wanrt.trust import envelope

    heads = []
    for lineno, raw in enumerate(Path(path).read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        start = raw.find("{")
        if start < 0:
            continue
        where = f"{path}:{lineno}"
        try:
            entry = json.loads(raw[start:].rstrip("\0 \r"))
            statement = envelope.verify(entry["checkpoint"], keys, where)
        except (json.JSONDecodeError, KeyError, TypeError):
            raise AuditChainError(f"{where}: not a wanrt audit head") from None
        except SignatureError as err:
            raise AuditChainError(str(err)) from None
        (name, digest), = envelope.subject_digests(statement, where).items()
        heads.append(ChainHead(int(name.rsplit("-", 1)[-1]), digest))
    if not heads:
        raise AuditChainError(f"{path} holds no signed audit head")
    return [max(heads, key=lambda h: h.seq)]


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
