"""Admission by memory with a real `wanrt serve` (the embedded reef model, onnxruntime) in a memory cgroup:
what would not fit is refused before it runs, what fits runs inside the limit, and the server stays up
(issue 21). Run-time allocation failures end the job, not the server."""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import uuid
from pathlib import Path

import pytest
from server_testkit import read_audit, serve_process

from wanrt.engine.request import GenerationRequest
from wanrt.server.client import Client
from wanrt.server.errors import RemoteError

CGROUP_V1 = Path("/sys/fs/cgroup/memory")
LIMIT = 1 << 30  # the container's mem_limit, as cheap as a test can make it
RESERVE = 256 << 20  # engine/budget.py: MIN_RESERVE (5% of 1 GiB is less)
ISSUE_REQUEST = GenerationRequest(prompt="a turtle glides over the reef", frames=81, height=384, width=640, steps=1)
# Larger than any cap below can hold even with linear attention (its first expert step alone needs ~2 GiB), so an
# uncapped budget lets it through to a real allocation failure, early in the step.
HUGE_REQUEST = GenerationRequest(prompt="a turtle glides over the reef", frames=129, height=768, width=1024, steps=1)
# The model's own limits: what the issue's operator had (a CPU server's defaults would refuse the request as
# INVALID_ARGUMENT before admission looks at it).
MODEL_LIMITS = {"max_frames": 129, "max_height": 1280, "max_width": 1280, "max_steps": 100}
NEXT = GenerationRequest(prompt="a ray over sand", frames=5, height=64, width=64, steps=1)
_JOIN_CGROUP = "import os, sys; open(sys.argv[1], 'w').write(str(os.getpid())); os.execv(sys.argv[2], sys.argv[2:])"


def _own_memory_cgroup() -> Path | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            here = CGROUP_V1 / path.lstrip("/")
            return here if here.is_dir() else CGROUP_V1
    return None


@pytest.fixture
def memory_cgroup():
    """A child memory cgroup (v1) limited to LIMIT; skips where it cannot be made."""
    parent = _own_memory_cgroup() if CGROUP_V1.is_dir() else None
    if parent is None:
        pytest.skip("no cgroup v1 memory controller at /sys/fs/cgroup/memory")
    group = parent / f"wanrt-test-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(LIMIT))
    except OSError as err:
        pytest.skip(f"cannot create a memory cgroup under {parent}: {err.strerror}")
    try:
        yield group
    finally:
        try:
            group.rmdir()
        except OSError:
            pass


def _fits_message(error: RemoteError, frames: int) -> int:
    """The side of the largest square the refusal says fits at ``frames``."""
    match = re.search(rf"at most (\d+)x(\d+) at {frames} frames", error.details)
    assert match and match.group(1) == match.group(2), error.details
    return int(match.group(1))


@pytest.mark.slow  # about 50 s on the shared 2-core machine: the just-under request really runs
def test_requests_over_the_cgroup_budget_are_refused_and_those_under_it_run(memory_cgroup, tmp_path):
    from wanrt.reef import default_model_dir

    prefix = (sys.executable, "-c", _JOIN_CGROUP, str(memory_cgroup / "cgroup.procs"))
    with serve_process(default_model_dir(), tmp_path, "--backend", "onnxruntime", limits=MODEL_LIMITS,
                       prefix=prefix) as served:
        # The default budget comes from the cgroup the server runs in, and lowers nothing it cannot keep.
        assert served.ready["memory_budget"] == LIMIT - RESERVE
        with Client(served.address, insecure=True) as client:
            limits = client.describe().limits
            reported = served.ready["limits"]
            assert (limits.max_frames, limits.max_height, limits.max_width) == \
                (reported["max_frames"], reported["max_height"], reported["max_width"])
            assert limits.max_height == limits.max_width < 1280  # the budget lowers the model's 1280

            # What the issue saw kill a 6 GB server: refused at once, with what would fit.
            with pytest.raises(RemoteError) as refused:
                client.generate(ISSUE_REQUEST)
            assert refused.value.code == "RESOURCE_EXHAUSTED"
            assert "over the memory budget of 768 MiB (cgroup limit" in refused.value.details

            # The largest square that fits at one frame count, and one step (16 pixels) more. (With the reef's
            # attention linear in tokens, the decoder's step binds first, and it depends on the size, not on the
            # frame count.)
            probe = GenerationRequest(prompt="a school of fish", frames=5, height=640, width=640, steps=1)
            with pytest.raises(RemoteError) as too_large:
                client.generate(probe)
            side = _fits_message(too_large.value, 5)
            with pytest.raises(RemoteError) as just_over:
                client.generate(dataclasses.replace(probe, height=side + 16, width=side + 16))
            assert just_over.value.code == "RESOURCE_EXHAUSTED"
            just_under = client.generate(dataclasses.replace(probe, height=side, width=side))
            assert (just_under.frames, just_under.height, just_under.width) == (5, side, side)

            assert client.generate(NEXT).frames == NEXT.frames
        assert served.process.poll() is None, "the server died (the kernel's OOM killer?)"

    statuses = [(r["status"], r.get("memory")) for r in read_audit(served.audit_log) if r["method"] == "Generate"]
    assert [s for s, _ in statuses] == ["RESOURCE_EXHAUSTED"] * 3 + ["OK", "OK"]
    for _, memory in statuses[:3]:
        assert memory["estimate_bytes"] > memory["budget_bytes"] == LIMIT - RESERVE
    assert statuses[3][1]["estimate_bytes"] <= LIMIT - RESERVE


def test_an_allocation_failure_ends_the_job_not_the_server(tmp_path):
    """Admission off in effect (a huge budget) and the address space capped: onnxruntime's allocation of the
    expert step's activations really fails in the worker."""
    from wanrt.reef import default_model_dir

    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("needs Linux resource limits")
    cap = ("import resource, os, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
           "os.execv(sys.argv[1], sys.argv[1:])")
    with serve_process(default_model_dir(), tmp_path, "--backend", "onnxruntime", "--memory-budget", "1T",
                       limits=MODEL_LIMITS, prefix=(sys.executable, "-c", cap)) as served:
        with Client(served.address, insecure=True) as client:
            with pytest.raises(RemoteError) as failed:
                client.generate(HUGE_REQUEST)
            assert failed.value.code == "RESOURCE_EXHAUSTED"
            assert "out of memory while generating 129 frames at 768x1024" in failed.value.details
            assert client.generate(NEXT).frames == NEXT.frames
        assert served.process.poll() is None
