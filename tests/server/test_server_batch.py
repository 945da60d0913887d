"""`wanrt client batch`: a 200-line prompt file runs to completion against a real server, resumes after the client
is killed with nothing redone (the server's audit log counts every job), and reports failed lines by number."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import time

import pytest
from server_testkit import running_server, wait_until
from tiny_wan import VOCAB_WORDS

from wanrt.engine.video import read_mp4_metadata

SERVER_BACKENDS = ("onnxruntime",)  # the subject is the client and the queue: one backend shows it


@pytest.fixture(scope="module")
def served(pipeline, tmp_path_factory):
    with running_server(pipeline, tmp_path_factory.mktemp("batch"), http_listen="127.0.0.1:0",
                        queue_size=2) as running:
        yield running


def start(served, prompts, out, *extra, api="grpc") -> subprocess.Popen:
    address = served.address if api == "grpc" else f"127.0.0.1:{served.server.http.port}"
    return subprocess.Popen([sys.executable, "-m", "wanrt.cli", "client", "batch", str(prompts), "--out", str(out),
                             "--server", address, "--insecure", "--api", api, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def summary(out) -> dict[int, dict]:
    path = out / "summary.jsonl"
    if not path.exists():
        return {}
    records = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        records[record["line"]] = record
    return records


def generated(served) -> dict[str, int]:
    """Successful Generate calls per client request id, from the server's audit log."""
    counts: dict[str, int] = {}
    for record in served.audit():
        if record["method"] == "Generate" and record["status"] == "OK" and record.get("client_request_id"):
            counts[record["client_request_id"]] = counts.get(record["client_request_id"], 0) + 1
    return counts


def draw_lines(rng: random.Random, count: int) -> list[dict]:
    lines = []
    for number in range(1, count + 1):
        line = {"prompt": " ".join(rng.choice(VOCAB_WORDS) for _ in range(rng.randint(2, 8))),
                "seed": rng.choice([-1, rng.randrange(2**31)]), "size": rng.choice(["16x16", "32x16", "16x32"]),
                "frames": 1, "steps": 1, "guidance": 1.0}
        if rng.random() < 0.2:
            line["name"] = f"clip-{number}"
        lines.append(line)
    return lines


@pytest.mark.slow  # 200 jobs and four client processes: about 80 s on 2 cores
def test_200_lines_resume_after_a_kill_with_nothing_redone(served, tmp_path):
    seed = random.randrange(2**32)
    print(f"drawing the batch with seed {seed}")
    lines = draw_lines(random.Random(seed), 200)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"

    first = start(served, prompts, out, "--concurrency", "3")
    assert wait_until(lambda: len(summary(out)) >= 60 or first.poll() is not None, 120), first.stderr.read()
    first.kill()  # no chance to tidy up: the summary's records must already be on disk
    first.wait(30)
    done_before = {n for n, r in summary(out).items() if r["status"] == "ok"}
    assert 60 <= len(done_before) < 200, len(done_before)

    second = start(served, prompts, out, "--concurrency", "3")
    _, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr
    assert "200 of 200 done" in stderr
    records = summary(out)
    assert sorted(records) == list(range(1, 201)) and {r["status"] for r in records.values()} == {"ok"}
    counts = generated(served)
    for number in done_before:  # done before the kill: made exactly once, across both runs
        assert counts[f"batch-{records[number]['request_sha256'][:16]}-line{number}"] == 1, number
    assert len(counts) == 200  # every line was made, some twice at most (in flight at the kill)
    assert sum(counts.values()) <= 200 + 3

    for number, record in records.items():
        line = lines[number - 1]
        data = (out / record["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["sha256"]
        assert record["file"] == f"{line.get('name', f'{number:06d}')}.mp4"
        settings = read_mp4_metadata(data)
        assert settings["seed"] == record["seed"] and settings["size"] == line["size"]
        if line["seed"] != -1:
            assert record["seed"] == line["seed"]
        assert settings["prompt_sha256"] == hashlib.sha256(line["prompt"].encode()).hexdigest()

    # A third run has nothing to do; a damaged file is found by its sha256 and only it is made again.
    before = sum(generated(served).values())
    third = start(served, prompts, out)
    assert third.wait(120) == 0 and sum(generated(served).values()) == before
    victim = records[7]
    (out / victim["file"]).write_bytes(b"not the video")
    fourth = start(served, prompts, out)
    assert fourth.wait(120) == 0 and sum(generated(served).values()) == before + 1
    assert hashlib.sha256((out / victim["file"]).read_bytes()).hexdigest() == summary(out)[7]["sha256"]


def test_http_api_failed_lines_are_named_and_the_exit_is_1(served, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join([
        json.dumps({"prompt": "a turtle swims", "size": "16x16", "frames": 1, "steps": 1, "seed": -1}),
        json.dumps({"prompt": "a ray", "size": "16x16", "frames": 6, "steps": 1}),  # the server refuses: 4k+1
        "{not json",
        json.dumps({"prompt": "a", "style": "noir"}),
        json.dumps({"prompt": "fish", "size": "16x16", "frames": 1, "steps": 1, "name": "same"}),
        json.dumps({"prompt": "fish", "size": "16x16", "frames": 1, "steps": 1, "name": "same"}),
    ]) + "\n")
    out = tmp_path / "out"
    started = time.monotonic()
    run = start(served, prompts, out, api="http")
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 1, stderr
    assert "4 line(s) of" in stderr and "failed: 2, 3, 4, 6" in stderr, stderr
    records = summary(out)
    assert records[2]["error"].startswith("frames: ") and "4k+1" in records[2]["error"]
    assert "not JSON" in records[3]["error"] and records[4]["error"].startswith("style: ")
    assert records[6]["error"].startswith("name: ")
    settings = read_mp4_metadata((out / records[1]["file"]).read_bytes())
    assert settings["seed"] == records[1]["seed"] != -1  # chosen by the server, reported, written in the MP4
    assert records[1]["seconds"] < time.monotonic() - started
