"""The audit log's hash chain: `wanrt audit verify` names the first broken link for an edited, deleted, reordered
or truncated record; the chain continues across restarts and rotations; signed checkpoints catch a rewritten chain.
"""

from __future__ import annotations

import hashlib
import json
import signal
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


def test_records_carry_seq_and_the_previous_hash(audit):
    records = [json.loads(line) for line in _lines(audit)]
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert records[0]["prev"] == GENESIS
    for record, raw in zip(records[1:], _lines(audit), strict=False):
        assert record["prev"] == hashlib.sha256(raw.rstrip(b"\n")).hexdigest()
    assert verify_chain([audit]).head.seq == 5


def test_edited_record_is_named(audit):
    lines = _lines(audit)
    lines[1] = lines[1].replace(b'"status":"OK"', b'"status":"NO"')
    _rewrite(audit, lines)
    message = _broken([audit])
    assert f"{audit}:3" in message and "seq 2 was edited" in message


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
    assert f"{audit}:5: the last record is incomplete" in _broken([audit])


def test_removed_tail_is_caught_against_the_logged_head(audit):
    head = verify_chain([audit]).head
    _rewrite(audit, _lines(audit)[:3])
    assert verify_chain([audit]).head.seq == 3  # the chain alone cannot see a clean cut at the end...
    assert "records were removed from the end" in _broken([audit], expect_head=head)  # ...the logged head can


def test_cli_exits_1_naming_the_link(audit, capsys):
    assert main(["audit", "verify", str(audit)]) == 0
    first = hashlib.sha256(_lines(audit)[0].rstrip()).hexdigest()
    assert "seq 1..5" in capsys.readouterr().out
    lines = _lines(audit)
    del lines[0]  # a file may start mid-chain (older files rotated away), so only a known head shows this
    _rewrite(audit, lines)
    assert main(["audit", "verify", str(audit), "--expect-head", f"1:{first}"]) == 1
    assert "removed from the start" in capsys.readouterr().err
    lines.insert(1, lines[0])  # a duplicated record
    _rewrite(audit, lines)
    assert main(["audit", "verify", str(audit)]) == 1
    assert f"{audit}:2" in capsys.readouterr().err


def test_restart_continues_the_chain(audit):
    _log(audit, 2).close()
    assert verify_chain([audit]).head.seq == 7


def test_rotation_continues_in_the_new_file(audit, tmp_path):
    log = AuditLog(audit, fsync=False)
    log.write({"method": "DescribeModel"})
    rotated = tmp_path / "audit.jsonl.1"
    audit.rename(rotated)
    log.write({"method": "DescribeModel"})  # still the old file until SIGHUP
    log.reopen()
    log.write({"method": "DescribeModel"})
    log.close()
    first_new = json.loads(_lines(audit)[0])
    assert first_new["seq"] == 8 and first_new["prev"] == hashlib.sha256(_lines(rotated)[-1].rstrip()).hexdigest()
    assert verify_chain([rotated, audit]).records == 8
    assert "follows seq 8" in _broken([audit, rotated])  # files out of order
    # Restarted after rotation with no new file yet: the newest rotated sibling gives the head.
    audit.rename(tmp_path / "audit.jsonl.2")
    _log(audit, 1).close()
    assert verify_chain([rotated, tmp_path / "audit.jsonl.2", audit]).head.seq == 9


def test_reopen_refuses_a_file_someone_else_wrote(audit, tmp_path):
    log = AuditLog(audit, fsync=False)
    audit.rename(tmp_path / "old.jsonl")
    _log(audit, 1).close()  # another writer started a new chain at the path
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
    records = [json.loads(line) for line in _lines(path)]
    assert [r.get("event") for r in records].count("checkpoint") == 2
    key = load_public_key(public)
    assert verify_chain([path], [key]).checkpoints == 2
    # Someone without the key edits record 2 and recomputes every later link: the chain alone looks intact...
    records[1]["status"] = "NO"
    prev, out = GENESIS, []
    for record in records:
        record["prev"] = prev
        line = json.dumps(record, separators=(",", ":")).encode()
        prev = hashlib.sha256(line).hexdigest()
        out.append(line + b"\n")
    _rewrite(path, out)
    assert verify_chain([path]).records == 8
    # ...but the checkpoint no longer signs the record before it.
    assert f"{path}:4" in _broken([path], keys=[key])
    other_private, other_public = generate_keypair(tmp_path / "other.key")
    assert "no valid signature" in _broken([path], keys=[load_public_key(other_public)])


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
    assert report.first_seq == 1 and report.head == ChainHead(2, report.head.sha256)
