"""The audit log's hash chain: `wanrt audit verify` names the first broken link for an edited, deleted, reordered
or truncated record; the chain continues across restarts and rotations; signed checkpoints catch a rewritten chain.
"""

from __future__ import annotations

import hashlib
import json
import signal
import stat
import sys
import time
from pathlib import Path

import pytest
from server_testkit import serve_process, wait_until

from wanrt.cli import main
from wanrt.errors import AuditChainError
from wanrt.server.audit import AuditLog
from wanrt.server.audit_chain import GENESIS, ChainHead, verify_chain

REEF = Path(__file__).parents[2] / "reef" / "model"


def _log(path: Path, n: int, **kwargs: object) -> AuditLog:
    log = AuditLog(path, fsync=False, **kwargs)
    for i in range(n):
        log.write({"method": "Generate", "request_id": f"r{i}", "status": "OK"})
    return log


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _rewrite(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def _broken(paths: list[Path], **kwargs: object) -> str:
    with pytest.raises(AuditChainError) as err:
        verify_chain(paths, **kwargs)
    return str(err.value)


@pytest.fixture
def audit(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    _log(path, 5).close()
    return path


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in _lines(path)]


def _kinds(path: Path) -> list[str | None]:
    return [r.get("kind") for r in _records(path)]


def test_records_carry_seq_and_the_previous_hash(audit):
    records = _records(audit)
    # genesis, five calls, shutdown
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5, 6, 7]
    assert _kinds(audit) == ["genesis", None, None, None, None, None, "shutdown"]
    assert records[0]["prev"] == GENESIS
    for record, raw in zip(records[1:], _lines(audit), strict=False):
        assert record["prev"] == hashlib.sha256(raw.rstrip(b"\n")).hexdigest()
    assert verify_chain([audit]).head.seq == 7


def test_the_log_is_created_0600_complete(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, fsync=False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _kinds(path) == ["genesis"]  # never an empty file: created holding its first record
    log.close()


def test_edited_record_is_named(audit):
    lines = _lines(audit)
    lines[2] = lines[2].replace(b'"status":"OK"', b'"status":"NO"')
    _rewrite(audit, lines)
    message = _broken([audit])
    assert f"{audit}:4" in message and "seq 3 was edited" in message


def test_deleted_record_is_named(audit):
    lines = _lines(audit)
    del lines[2]
    _rewrite(audit, lines)
    assert f"{audit}:3: seq 4 follows seq 2" in _broken([audit])


def test_reordered_records_are_named(audit):
    lines = _lines(audit)
    lines[1], lines[2] = lines[2], lines[1]
    _rewrite(audit, lines)
    assert f"{audit}:2: seq 3 follows seq 1" in _broken([audit])


def test_truncated_record_is_named(audit):
    audit.write_bytes(audit.read_bytes()[:-10])
    assert f"{audit}:7: the last record is incomplete" in _broken([audit])


def test_removed_tail_is_caught_against_the_logged_head(audit):
    head = verify_chain([audit]).head
    _rewrite(audit, _lines(audit)[:3])
    assert verify_chain([audit]).head.seq == 3  # unsigned, the chain alone cannot see a clean cut at the end...
    assert "records were removed from the end" in _broken([audit], expect_head=head)  # ...the logged head can


def test_cli_exits_1_naming_the_link(audit, capsys):
    assert main(["audit", "verify", str(audit)]) == 0
    out = capsys.readouterr().out
    assert "seq 1..7" in out and "signatures not checked" in out
    lines = _lines(audit)
    del lines[0]
    _rewrite(audit, lines)
    assert main(["audit", "verify", str(audit)]) == 1
    assert "neither the genesis record" in capsys.readouterr().err
    lines.insert(1, lines[0])  # a duplicated record
    _rewrite(audit, lines)
    assert main(["audit", "verify", str(audit)]) == 1
    assert f"{audit}:" in capsys.readouterr().err


def test_restart_continues_the_chain(audit):
    _log(audit, 2).close()
    assert _kinds(audit)[-4:] == ["start", None, None, "shutdown"]
    assert verify_chain([audit]).head.seq == 11


def test_rotation_continues_in_the_new_file(audit, tmp_path):
    log = AuditLog(audit, fsync=False)  # seq 8: start
    log.write({"method": "DescribeModel"})  # 9
    rotated = tmp_path / "audit.jsonl.1"
    audit.rename(rotated)
    log.write({"method": "DescribeModel"})  # 10: still the old file until SIGHUP
    log.reopen()  # 11: rotation (old file), 12: start (new file)
    log.write({"method": "DescribeModel"})  # 13
    log.close()  # 14: shutdown
    assert _kinds(rotated)[-1] == "rotation"
    first_new = _records(audit)[0]
    assert first_new["seq"] == 12 and first_new["kind"] == "start" and first_new["file_start"] is True
    assert first_new["prev"] == hashlib.sha256(_lines(rotated)[-1].rstrip()).hexdigest()
    assert verify_chain([rotated, audit]).records == 14
    assert verify_chain([audit]).first_seq == 12  # a continued file may be checked on its own
    assert "follows seq 14" in _broken([audit, rotated])  # files out of order
    # Restarted after rotation with no new file yet: the newest rotated sibling gives the head.
    audit.rename(tmp_path / "audit.jsonl.2")
    _log(audit, 1).close()
    assert verify_chain([rotated, tmp_path / "audit.jsonl.2", audit]).head.seq == 17


def test_reopen_refuses_a_file_someone_else_wrote(audit, tmp_path):
    log = AuditLog(audit, fsync=False)
    audit.rename(tmp_path / "old.jsonl")
    path_log = AuditLog(audit, fsync=False)  # another writer started a chain at the path
    path_log.write({"method": "DescribeModel"})
    log.reopen()
    with pytest.raises(OSError, match="not open"):
        log.write({"method": "DescribeModel"})  # the service fails closed (NOT_SERVING)


def test_damaged_tail_refuses_to_start(audit):
    audit.write_bytes(audit.read_bytes()[:-1])
    with pytest.raises(AuditChainError, match="partial record"):
        AuditLog(audit)


def test_signed_checkpoints_catch_a_rewritten_chain(tmp_path):
    from wanrt.trust.keys import generate_keypair, load_public_key, load_signer

    private, public = generate_keypair(tmp_path / "audit.key")
    path = tmp_path / "audit.jsonl"
    _log(path, 6, checkpoint_every=3, signer=load_signer(private)).close()
    assert _kinds(path) == ["genesis", None, None, None, "periodic", None, None, None, "periodic", "shutdown"]
    key = load_public_key(public)
    assert verify_chain([path], [key]).checkpoints == 4
    # Someone without the key edits record 2 and recomputes every later link: the chain alone looks intact...
    records = _records(path)
    records[1]["status"] = "NO"
    _rewrite(path, _relinked(records))
    assert verify_chain([path]).records == 10
    # ...but the checkpoint no longer signs the record before it.
    assert f"{path}:5" in _broken([path], keys=[key])
    other_private, other_public = generate_keypair(tmp_path / "other.key")
    assert "no valid signature" in _broken([path], keys=[load_public_key(other_public)])


def _relinked(records: list[dict]) -> list[bytes]:
    """Records renumbered from 1 and re-chained, as someone without the key can always do."""
    prev, out = GENESIS, []
    for seq, record in enumerate(records, 1):
        record["seq"], record["prev"] = seq, prev
        line = json.dumps(record, separators=(",", ":")).encode()
        prev = hashlib.sha256(line).hexdigest()
        out.append(line + b"\n")
    return out


def test_sighup_reopens_the_log_of_a_running_server(tmp_path):
    with serve_process(REEF, tmp_path, "--backend", "onnxruntime", limits=None) as served:
        def describe() -> None:
            import subprocess

            result = subprocess.run([sys.executable, "-m", "wanrt.cli", "client", "describe", "--server",
                                     served.address, "--insecure"], capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, result.stderr

        describe()
        rotated = served.audit_log.with_name(served.audit_log.name + ".1")
        served.audit_log.rename(rotated)
        served.process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        describe()
        assert wait_until(lambda: served.audit_log.is_file() and served.audit_log.stat().st_size > 0, 10)
        served.terminate()
        served.process.wait(timeout=60)
    report = verify_chain([rotated, served.audit_log])
    # genesis, a call, rotation | start, a call, shutdown
    assert report.first_seq == 1 and report.head == ChainHead(6, report.head.sha256)
    assert _kinds(rotated) == ["genesis", None, "rotation"]
    assert _kinds(served.audit_log) == ["start", None, "shutdown"]
