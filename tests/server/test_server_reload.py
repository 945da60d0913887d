"""Token expiry and rotation, SIGHUP reload of TLS material and tokens without dropping jobs, and the preStop
step of a drain (stop admitting, let admitted jobs finish), on a real server running the tiny model."""

from __future__ import annotations

import datetime
import http.client
import json
import shutil
import ssl
import subprocess
import sys
import threading
import time

import grpc
import pytest
from server_testkit import LONG, TINY, health_status, make_certs, running_server, serve_process, wait_until

from wanrt.server.app import STOP_MARGIN_S
from wanrt.server.auth import TokenStore, hash_token
from wanrt.server.client import Client
from wanrt.server.errors import ConfigError, RemoteError

SERVER_BACKENDS = ("onnxruntime",)
SERVICE = "wanrt.v1.VideoGeneration"


def wanrt(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wanrt.cli", *args], capture_output=True, text=True, timeout=120,
                          input=stdin)


def new_token(tokens, token_id: str, *extra: str) -> str:
    made = wanrt("token", "new", "--id", token_id, "--append", str(tokens), *extra)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def _bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def test_expired_tokens_are_refused_at_call_time(tmp_path):
    tokens = tmp_path / "tokens.jsonl"
    now = datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)
    tokens.write_text("# comment\n" + "\n".join(json.dumps(r) for r in [
        {"id": "old", "sha256": hash_token("t-old"), "expires": "2026-11-01T12:00:00Z"},
        {"id": "new", "sha256": hash_token("t-new"), "expires": "2026-11-01T14:00:00+02:00"},  # = 12:00Z
        {"id": "forever", "sha256": hash_token("t-forever")}]) + "\n")
    clock = [now]
    store = TokenStore.load(tokens, clock=lambda: clock[0])
    assert store.check(_bearer("t-old"), "Generate").code is None and store.valid_now() == 3
    clock[0] = now + datetime.timedelta(hours=12)  # exactly the end: refused
    refused = store.check(_bearer("t-old"), "Generate")
    assert refused.code == grpc.StatusCode.UNAUTHENTICATED and "expired at 2026-11-01T12:00:00Z" in refused.message
    assert store.check(_bearer("t-new"), "Generate").code == grpc.StatusCode.UNAUTHENTICATED
    assert store.check(_bearer("t-forever"), "Generate").code is None
    with pytest.raises(ConfigError, match="every token in it has expired"):
        tokens.write_text(json.dumps({"id": "x", "sha256": hash_token("x"), "expires": "2000-01-01T00:00:00Z"}))
        TokenStore.load(tokens)
    for bad in ("2027-01-01", "tomorrow", 5):  # no zone, no time, not text: refused, never guessed
        tokens.write_text(json.dumps({"id": "x", "sha256": hash_token("x"), "expires": bad}))
        with pytest.raises(ConfigError, match="RFC 3339"):
            TokenStore.load(tokens)


def test_rotate_gives_a_new_token_and_ends_the_old_after_the_overlap(tmp_path):
    tokens = tmp_path / "tokens.jsonl"
    tokens.write_text("# batch renderers\n")
    tokens.chmod(0o640)
    first = new_token(tokens, "batch", "--methods", "Generate")
    other = new_token(tokens, "viewer")
    rotated = wanrt("token", "rotate", "--id", "batch", "--file", str(tokens), "--overlap", "2h")
    assert rotated.returncode == 0, rotated.stderr
    second = rotated.stdout.strip()
    assert second not in (first, other) and "wanrt reload" in rotated.stderr
    text = tokens.read_text()
    assert text.startswith("# batch renderers\n") and (tokens.stat().st_mode & 0o777) == 0o640
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    by_hash = {r["sha256"]: r for r in records}
    assert by_hash[hash_token(second)]["methods"] == ["Generate"] and "expires" not in by_hash[hash_token(second)]
    assert "expires" not in by_hash[hash_token(other)]
    ends = datetime.datetime.fromisoformat(by_hash[hash_token(first)]["expires"].replace("Z", "+00:00"))
    assert abs((ends - datetime.datetime.now(datetime.UTC)).total_seconds() - 7200) < 60
    later = TokenStore.load(tokens, clock=lambda: ends)
    assert later.check(_bearer(first), "Generate").code == grpc.StatusCode.UNAUTHENTICATED
    assert later.check(_bearer(second), "Generate").token_id == "batch"
    assert wanrt("token", "rotate", "--id", "nobody", "--file", str(tokens)).returncode == 2
    assert wanrt("token", "rotate", "--id", "batch", "--file", str(tokens), "--overlap", "soon").returncode == 2
    assert tokens.read_text() == text  # refused rotations wrote nothing


def _generate_in_thread(client: Client, request, outcome: dict, started: threading.Event) -> threading.Thread:
    def run() -> None:
        try:
            outcome["result"] = client.generate(request, on_progress=lambda p: p.stage == "denoise" and started.set())
        except Exception as err:  # noqa: BLE001 - reported by the test's assertions
            outcome["error"] = err
            started.set()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_reload_swaps_tokens_and_certificates_without_dropping_a_job(pipeline, tmp_path):
    first_certs, second_certs = make_certs(tmp_path / "ca1"), make_certs(tmp_path / "ca2")
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "tls.crt", live / "tls.key"
    shutil.copy(first_certs.server_cert, cert)
    shutil.copy(first_certs.server_key, key)
    tokens = tmp_path / "tokens.jsonl"
    old = new_token(tokens, "batch")
    with running_server(pipeline, tmp_path, tls_cert=cert, tls_key=key, tokens=tokens,
                        http_listen="127.0.0.1:0") as served:
        old_client = served.client(ca=first_certs.ca, token=old)
        outcome, started = {}, threading.Event()
        worker = _generate_in_thread(old_client, LONG, outcome, started)
        assert started.wait(60) and "error" not in outcome

        # Rotation with no overlap, new certificate from another CA, then the reload.
        rotated = wanrt("token", "rotate", "--id", "batch", "--file", str(tokens), "--overlap", "0s")
        new = rotated.stdout.strip()
        shutil.copy(second_certs.server_cert, cert)
        shutil.copy(second_certs.server_key, key)
        assert served.server.reload() == {"tls": "changed", "tokens": 1, "errors": []}

        # The job admitted before the reload finishes on its connection.
        worker.join(120)
        assert "error" not in outcome, outcome.get("error")
        assert outcome["result"].frames == LONG.frames
        old_client.close()
        # New connections see the new certificate and the new token; the old token has expired.
        with served.client(ca=second_certs.ca, token=new) as client:
            assert client.generate(TINY).frames == 1
        with served.client(ca=second_certs.ca, token=old) as client, pytest.raises(RemoteError) as refused:
            client.generate(TINY)
        assert refused.value.code == "UNAUTHENTICATED" and "expired" in str(refused.value)
        with served.client(ca=first_certs.ca, token=new) as client, pytest.raises(RemoteError) as untrusted:
            client.health(timeout=5)  # the old CA no longer verifies the server's certificate
        assert untrusted.value.code == "UNAVAILABLE" and "handshake" in str(untrusted.value).lower()
        # The HTTPS listener too: the new certificate and the new token.
        assert _https_status(served.server.http.port, second_certs.ca, new) == 200
        assert _https_status(served.server.http.port, second_certs.ca, old) == 401
        with pytest.raises(ssl.SSLError):
            _https_status(served.server.http.port, first_certs.ca, new)

        # A broken file is refused on reload and what is in use stays.
        tokens.write_text("{not json\n")
        key.write_text("-----BEGIN PRIVATE KEY-----\ntruncated\n")
        outcome = served.server.reload()
        assert outcome["tls"] is None and outcome["tokens"] is None and len(outcome["errors"]) == 2
        with served.client(ca=second_certs.ca, token=new) as client:
            assert client.generate(TINY).frames == 1
    statuses = [r["status"] for r in served.audit() if r["method"] == "Generate"]
    assert statuses.count("OK") == 3 and "UNAUTHENTICATED" in statuses


def _https_status(port: int, ca, token: str) -> int:
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10,
                                             context=ssl.create_default_context(cafile=str(ca)))
    try:
        connection.request("GET", "/v1/videos", headers={"Authorization": f"Bearer {token}"})
        return connection.getresponse().status
    finally:
        connection.close()


def test_stop_admitting_keeps_admitted_jobs_and_liveness(pipeline, tmp_path):
    with running_server(pipeline, tmp_path, queue_size=2, stop_timeout=40.0) as served:
        client = served.client()
        outcome, started = {}, threading.Event()
        worker = _generate_in_thread(client, LONG, outcome, started)
        assert started.wait(60)
        served.server.stop_admitting()
        assert health_status(served.address, SERVICE) == "NOT_SERVING"  # readiness: out of the load balancer
        assert health_status(served.address) == "SERVING"  # liveness: not restarted while it finishes
        with served.client() as other, pytest.raises(RemoteError) as refused:
            other.generate(TINY)
        assert refused.value.code == "UNAVAILABLE"
        worker.join(120)
        assert "error" not in outcome, outcome.get("error")
        # --stop-timeout 40: the drain gives the jobs what is left of it after the first stop signal, less the
        # margin for shutting down.
        time.sleep(0.2)
        grace = served.server.drain_grace()
        assert 0 < grace < 40 - STOP_MARGIN_S - 0.2 + 0.05
        client.close()


def test_signals_from_the_cli_reach_a_serving_process(tiny_artifact_dir, tmp_path):
    """`wanrt stop-admission` (the preStop hook) and `wanrt reload`, against `wanrt serve` as a process."""
    tokens = tmp_path / "tokens.jsonl"
    new_token(tokens, "batch")
    with serve_process(tiny_artifact_dir, tmp_path, "--backend", "onnxruntime", "--tokens", str(tokens),
                       "--stop-timeout", "60") as serving:
        pid = str(serving.process.pid)
        assert wanrt("reload", "--pid", pid).returncode == 0
        event = json.loads(serving.process.stdout.readline())
        assert event == {"event": "reloaded", "tls": None, "tokens": 1, "errors": []}
        assert wanrt("stop-admission", "--pid", pid).returncode == 0
        assert wait_until(lambda: health_status(serving.address, SERVICE) == "NOT_SERVING", 5)
        assert health_status(serving.address) == "SERVING"
        serving.terminate()
        assert serving.process.wait(60) == 0
    assert wanrt("reload", "--pid", "999999999").returncode != 0
