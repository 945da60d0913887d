"""Every way of rewriting a signed audit log without the key that used to pass `wanrt audit verify --trust`, and
drawn rewrites of drawn logs: the key holder now detects each one.

The logs are written by the real AuditLog (signed genesis, checkpoints every N, restarts, rotations, the second
sink); the attacker can read and rewrite the audit files and the chain's hashes, not the key or the second sink.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytest

from wanrt.cli import main
from wanrt.errors import AuditChainError
from wanrt.server.audit import AuditLog
from wanrt.server.audit_chain import GENESIS, read_heads, verify_chain


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    from wanrt.trust.keys import generate_keypair, load_public_key, load_signer

    private, public = generate_keypair(tmp_path_factory.mktemp("audit-key") / "audit.key")
    return load_signer(private), load_public_key(public), public


def _write(path: Path, keys: tuple, calls: int, *, every: int, sink: Path | None = None,
           close: bool = True) -> AuditLog:
    from wanrt.server.audit_sink import HeadSink

    log = AuditLog(path, fsync=False, checkpoint_every=every, signer=keys[0],
                   head_sink=HeadSink(str(sink)) if sink else None)
    for i in range(calls):
        log.write({"method": "Generate", "request_id": f"r{i}", "status": "OK", "principal": "alice"})
    if close:
        log.close()
    return log


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def _rechain(records: list[dict], *, renumber: bool = True) -> bytes:
    """What anyone can do without the key: renumber from the first record's seq and recompute every link."""
    first = records[0]["seq"]
    prev, out = records[0]["prev"], []
    for i, record in enumerate(records):
        if renumber:
            record["seq"] = first + i
        record["prev"] = prev
        line = json.dumps(record, separators=(",", ":")).encode()
        prev = hashlib.sha256(line).hexdigest()
        out.append(line + b"\n")
    return b"".join(out)


def _refused(paths: list[Path], keys: tuple, **kwargs: object) -> str:
    with pytest.raises(AuditChainError) as err:
        verify_chain(paths, [keys[1]], **kwargs)
    return str(err.value)


def test_an_edited_log_with_every_checkpoint_deleted_is_refused(tmp_path, keys, capsys):
    path = tmp_path / "audit.jsonl"
    _write(path, keys, 7, every=2)
    assert main(["audit", "verify", str(path), "--trust", str(keys[2])]) == 0
    records = _records(path)
    records[3]["principal"] = "mallory"
    # The attack as reported: every checkpoint line deleted, chain renumbered and relinked; here with a genesis
    # record of the attacker's own, so that the chain is well formed.
    calls = [r for r in records if "event" not in r]
    forged_genesis = {k: v for k, v in records[0].items() if k != "checkpoint"}
    forged_genesis["checkpoint_every"] = 0
    path.write_bytes(_rechain([forged_genesis, *calls]))
    assert main(["audit", "verify", str(path)]) == 0  # without the key the chain is self-consistent...
    assert main(["audit", "verify", str(path), "--trust", str(keys[2])]) == 1  # ...with it, it is not
    assert "the genesis record at seq 1 is not signed" in capsys.readouterr().err
    calls[0]["prev"] = GENESIS  # or no genesis at all
    path.write_bytes(_rechain(calls))
    assert "neither the genesis record" in _refused([path], keys)
    # Keeping the signed genesis does not help: N records may not pass without a checkpoint.
    path.write_bytes(_rechain([records[0], *calls]))
    assert "checkpointed every 2: checkpoints were removed" in _refused([path], keys)


def test_records_deleted_from_the_start_are_refused_even_up_to_a_checkpoint(tmp_path, keys):
    path = tmp_path / "audit.jsonl"
    _write(path, keys, 6, every=2)
    lines = path.read_bytes().splitlines(keepends=True)
    kinds = [r.get("kind") for r in _records(path)]
    for cut in range(1, len(lines) - 1):  # every cut, those that leave a signed checkpoint first among them
        path.write_bytes(b"".join(lines[cut:]))
        message = _refused([path], keys)
        assert "neither the genesis record (seq 1) nor the start of a continued file" in message, (cut, kinds[cut])


def test_a_record_appended_after_the_last_checkpoint_is_refused(tmp_path, keys, capsys):
    path = tmp_path / "audit.jsonl"
    _write(path, keys, 3, every=2)  # a stopped server: its log ends with the signed shutdown checkpoint
    forged = _records(path)
    forged.append({"seq": 0, "prev": "", "method": "Generate", "request_id": "forged", "status": "OK"})
    path.write_bytes(_rechain(forged))
    assert main(["audit", "verify", str(path), "--trust", str(keys[2])]) == 1
    assert "written while no server was running" in capsys.readouterr().err
    assert main(["audit", "verify", str(path), "--trust", str(keys[2]), "--live"]) == 1  # in every mode


def test_a_running_servers_tail_is_reported_unanchored_and_its_next_write_exposes_a_forgery(tmp_path, keys, capsys):
    path = tmp_path / "audit.jsonl"
    log = _write(path, keys, 5, every=2, close=False)  # genesis, r0 r1 cp, r2 r3 cp, r4: running
    assert "seq 8..8 follow the last signed checkpoint" in _refused([path], keys)
    assert main(["audit", "verify", str(path), "--trust", str(keys[2]), "--live"]) == 0
    assert "UNANCHORED: seq 8..8" in capsys.readouterr().out
    records = _records(path)
    records.append({"seq": 0, "prev": "", "method": "Generate", "request_id": "forged", "status": "OK"})
    path.write_bytes(_rechain(records))
    log.write({"method": "Generate", "request_id": "r5", "status": "OK"})  # the server's own next record
    assert "seq 9 follows seq 9" in _refused([path], keys, live=True)  # the forged record took its place


def test_a_tail_cut_back_to_an_earlier_checkpoint_shows_against_the_second_sink(tmp_path, keys, capsys):
    path, sink = tmp_path / "audit.jsonl", tmp_path / "other-mount" / "heads.jsonl"
    sink.parent.mkdir()
    _write(path, keys, 5, every=2, sink=sink)
    records = _records(path)
    last_periodic = max(i for i, r in enumerate(records) if r.get("kind") == "periodic")
    path.write_bytes(b"".join(line for line in path.read_bytes().splitlines(keepends=True)[:last_periodic + 1]))
    verify_chain([path], [keys[1]])  # what is left ends on a signed checkpoint: consistent on its own...
    heads = read_heads(sink, [keys[1]])
    assert heads[0].seq == len(records)  # the shutdown checkpoint itself
    assert "records were removed from the end" in _refused([path], keys, heads=heads)  # ...not with the sink
    assert main(["audit", "verify", str(path), "--trust", str(keys[2]), "--heads", str(sink)]) == 1
    assert "removed from the end" in capsys.readouterr().err


def test_heads_in_the_sink_must_be_signed(tmp_path, keys):
    path, sink = tmp_path / "audit.jsonl", tmp_path / "heads.jsonl"
    _write(path, keys, 3, every=2, sink=sink)
    entries = [json.loads(line) for line in sink.read_text().splitlines()]
    entries[-1]["checkpoint"]["payload"] = entries[0]["checkpoint"]["payload"]  # a head without its signature
    sink.write_text("".join(json.dumps(e) + "\n" for e in entries))
    with pytest.raises(AuditChainError, match="no valid signature"):
        read_heads(sink, [keys[1]])


def test_a_forged_restart_cannot_hide_records_written_while_stopped(tmp_path, keys):
    path = tmp_path / "audit.jsonl"
    _write(path, keys, 2, every=2)
    records = _records(path)
    shutdown = records[-1]
    # Inserting records before a real restart's start checkpoint: the start signs what it found...
    records.append({"seq": 0, "prev": "", "method": "Generate", "request_id": "forged", "status": "OK"})
    path.write_bytes(_rechain(records))
    _write(path, keys, 1, every=2)
    message = _refused([path], keys)
    assert f"follows the shutdown checkpoint (seq {shutdown['seq']})" in message  # ...but not after a shutdown


# --- drawn logs and drawn rewrites ----------------------------------------------------------------------------

def _drawn_log(folder: Path, keys: tuple, rng: random.Random) -> tuple[list[Path], Path]:
    """A log written by the real AuditLog over a few server runs, with rotations, ending with a clean stop."""
    path, sink = folder / "audit.jsonl", folder / "heads.jsonl"
    every = rng.randint(1, 5)
    files: list[Path] = []
    for run in range(rng.randint(1, 3)):
        log = _write(path, keys, rng.randint(0, 12), every=every, sink=sink, close=False)
        if rng.random() < 0.5:
            rotated = folder / f"audit.jsonl.{len(files) + 1}"
            path.rename(rotated)
            files.append(rotated)
            log.reopen()
            log.write({"method": "Generate", "request_id": f"after-rotation-{run}", "status": "OK"})
        log.close()
    return [*files, path], sink


ATTACKS = ("edit", "delete", "insert", "swap", "cut start", "cut end", "append", "drop checkpoint")


def _attack(files: list[Path], attack: str, rng: random.Random) -> str:
    """Rewrites one file as someone without the key could; returns what was done."""
    target = rng.choice(files)
    records = _records(target)
    calls = [i for i, r in enumerate(records) if "event" not in r]
    if attack == "edit" and calls:
        i = rng.choice(calls)
        records[i]["status"] = "PERMISSION_DENIED" if records[i].get("status") == "OK" else "OK"
    elif attack == "delete" and len(records) > 1:
        del records[rng.randrange(len(records))]
    elif attack == "insert":
        records.insert(rng.randrange(1, len(records) + 1), {"seq": 0, "prev": "", "request_id": "forged"})
    elif attack == "swap" and len(records) > 2:
        i = rng.randrange(1, len(records) - 1)
        records[i], records[i + 1] = records[i + 1], records[i]
    elif attack == "cut start" and len(records) > 1:
        records = records[rng.randrange(1, len(records)):]
    elif attack == "cut end" and len(records) > 1:
        records = records[:rng.randrange(1, len(records))]
    elif attack == "append":
        records.append({"seq": 0, "prev": "", "request_id": "forged", "status": "OK"})
    elif attack == "drop checkpoint" and any("event" in r for r in records[1:]):
        del records[rng.choice([i for i, r in enumerate(records) if "event" in r and i > 0])]
    else:
        return ""
    target.write_bytes(_rechain(records))
    return f"{attack} in {target.name}"


def test_drawn_rewrites_of_drawn_logs_are_all_detected(tmp_path, keys):
    seed = int(os.environ.get("WANRT_TEST_SEED", random.randrange(1 << 30)))
    print(f"audit attack seed {seed}")
    rng = random.Random(seed)
    detected = 0
    for case in range(24):
        folder = tmp_path / f"case{case}"
        folder.mkdir()
        files, sink = _drawn_log(folder, keys, rng)
        heads = read_heads(sink, [keys[1]])
        verify_chain(files, [keys[1]], heads=heads)  # the untouched log verifies
        done = _attack(files, ATTACKS[case % len(ATTACKS)], rng)
        if not done:
            continue
        with pytest.raises(AuditChainError):
            verify_chain(files, [keys[1]], heads=heads)
            pytest.fail(f"seed {seed} case {case}: {done} was not detected")
        detected += 1
    assert detected >= 16


def test_heads_reach_syslog_and_verify_from_its_lines(tmp_path, keys):
    """The second sink as syslog (journald reads /dev/log): the same signed heads, one datagram each."""
    import socket

    address = str(tmp_path / "log.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(address)
    receiver.settimeout(5)
    try:
        from wanrt.server.audit_sink import HeadSink

        log = AuditLog(tmp_path / "audit2.jsonl", fsync=False, checkpoint_every=2, signer=keys[0],
                       head_sink=HeadSink(f"syslog:{address}"))
        for i in range(3):
            log.write({"method": "Generate", "request_id": f"r{i}", "status": "OK"})
        log.close()
        received = []
        while len(received) < 3:  # genesis, the periodic checkpoint after r1, shutdown
            try:
                received.append(receiver.recv(65536).decode())
            except TimeoutError:
                break
    finally:
        receiver.close()
    assert received and all("wanrt-audit: {" in line for line in received)  # syslog's ident, then the JSON
    journal = tmp_path / "journal.txt"
    journal.write_text("\n".join(received) + "\n")
    heads = read_heads(journal, [keys[1]])
    report = verify_chain([tmp_path / "audit2.jsonl"], [keys[1]], heads=heads)
    assert heads[0].seq == report.head.seq  # the shutdown checkpoint, the log's last line
