"""`wanrt serve` as a process and `wanrt client` against it; SIGTERM drains and exits 0 (runs last here)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from server_testkit import LONG, TINY, health_status, read_audit, serve_process, wait_until

from wanrt.engine.video import read_mp4_frames
from wanrt.server.client import Client
from wanrt.server.errors import RemoteError

TINY_ARGS = ["--prompt", TINY.prompt, "--frames", "1", "--height", "16", "--width", "16", "--steps", "1",
             "--guidance", "1"]


@pytest.fixture(scope="module")
def serving(tiny_model_dir, tmp_path_factory):
    with serve_process(tiny_model_dir, tmp_path_factory.mktemp("serve"), "--log-format", "json") as process:
        yield process


def wanrt(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wanrt.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_client_health_and_describe(serving):
    health = wanrt("client", "health", "--server", serving.address, "--insecure")
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING"), health.stderr
    describe = wanrt("client", "describe", "--server", serving.address, "--insecure")
    assert describe.returncode == 0, describe.stderr
    info = json.loads(describe.stdout)
    assert info["limits"]["maxFrames"] == 9
    assert {"frames", "height", "width", "steps", "guidance"} <= set(info["defaults"]), info  # the model's own
    tls = wanrt("client", "health", "--server", serving.address)  # a TLS client to the plaintext server
    assert tls.returncode != 0 and "answered in plaintext, not TLS" in tls.stderr and "--insecure" in tls.stderr, \
        tls.stderr


def test_client_generate_writes_the_clip_the_audit_log_names(serving, tmp_path):
    out = tmp_path / "clip.mp4"
    result = wanrt("client", "generate", "--server", serving.address, "--insecure", *TINY_ARGS, "--out", str(out),
                   "--client-request-id", "cli-1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    assert read_mp4_frames(out).shape == (1, 16, 16, 3)
    record = [r for r in read_audit(serving.audit_log) if r.get("client_request_id") == "cli-1"]
    assert record[0]["output"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert record[0]["output"]["sha256"] in result.stderr  # the client reports the digest it verified


def test_each_request_is_one_json_log_line_without_its_prompt(serving, tmp_path):
    out = tmp_path / "logged.mp4"
    result = wanrt("client", "generate", "--server", serving.address, "--insecure", *TINY_ARGS, "--out", str(out),
                   "--client-request-id", "log-1")
    assert result.returncode == 0, result.stderr
    (audited,) = [r for r in read_audit(serving.audit_log) if r.get("client_request_id") == "log-1"]
    # Every line of Python's logging is JSON (native libraries may still write their own lines to stderr).
    lines = [json.loads(line) for line in serving.log.read_text().splitlines() if line.startswith("{")]
    (line,) = [entry for entry in lines if entry.get("request", {}).get("id") == audited["request_id"]]
    params = audited["params"]
    assert line["logger"] == "wanrt.server.requests" and line["request"] == {
        "id": audited["request_id"], "method": "Generate", "api": "grpc", "caller": audited["principal"],
        "status": "OK", "seconds": audited["timings"]["total_s"],
        "size": f"{params['frames']}x{params['height']}x{params['width']}", "steps": params["steps"]}
    prompt = TINY_ARGS[TINY_ARGS.index("--prompt") + 1]
    assert prompt not in serving.log.read_text()  # the prompt stays in the audit log's care (as an HMAC)


def test_client_generate_npy_holds_raw_frames(serving, tmp_path):
    out = tmp_path / "frames.npy"
    result = wanrt("client", "generate", "--server", serving.address, "--insecure", *TINY_ARGS, "--out", str(out))
    assert result.returncode == 0, result.stderr
    frames = np.load(out)
    assert frames.shape == (1, 16, 16, 3) and frames.dtype == np.uint8


def test_client_generate_reports_bad_options_like_generate(serving, tmp_path):
    out = tmp_path / "bad.mp4"
    args = list(TINY_ARGS)
    args[args.index("--frames") + 1] = "6"
    result = wanrt("client", "generate", "--server", serving.address, "--insecure", *args, "--out", str(out))
    assert result.returncode == 2
    assert "--frames: must be 4k+1" in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


def test_sigterm_drains_then_exits_zero(serving):
    """Health turns NOT_SERVING at once, new calls are refused, the running job finishes, exit code 0."""
    outcome = {}
    accepted = threading.Event()

    def long_job() -> None:
        with Client(serving.address, insecure=True) as client:
            def progress(p) -> None:
                if p.stage == "denoise":
                    accepted.set()
            try:
                outcome["result"] = client.generate(LONG, on_progress=progress)
            except Exception as err:  # reported by the assertion below
                outcome["error"] = err

    worker = threading.Thread(target=long_job)
    worker.start()
    assert accepted.wait(60), "the long job never started"
    serving.terminate()
    signalled = time.monotonic()
    assert wait_until(lambda: health_status(serving.address) == "NOT_SERVING", 2.0)
    assert time.monotonic() - signalled < 2.0
    with Client(serving.address, insecure=True) as client, pytest.raises(RemoteError) as refused:
        client.generate(TINY)
    assert refused.value.code == "UNAVAILABLE"
    worker.join(120)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].frames == LONG.frames
    assert serving.process.wait(60) == 0
    records = read_audit(serving.audit_log)
    assert records[-1]["status"] == "OK" and records[-1]["request_id"] == outcome["result"].job_id
    with pytest.raises(grpc.RpcError):  # and it is gone
        health_status(serving.address)
