"""Serving: the same request through `wanrt serve` (a child process, plaintext on 127.0.0.1) and in-process,
alternated in one run; then throughput and p50/p95 latency with 1, 2, 4 and 8 concurrent clients on the queue."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from wanrt.engine.request import GenerationRequest

CONCURRENCY = (1, 2, 4, 8)


@contextlib.contextmanager
def serve(model: Path, backend: str, device: str, queue_size: int, timeout: float = 180) -> Iterator[str]:
    """Runs `wanrt serve` on a free loopback port; yields its address once it says it is serving."""
    with tempfile.TemporaryDirectory(prefix="wanrt-bench-serve-") as tmp:
        command = [sys.executable, "-m", "wanrt.cli", "serve", "--model", str(model), "--backend", backend,
                   "--device", device, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--insecure",
                   "--audit-log", str(Path(tmp) / "audit.jsonl"), "--queue-size", str(queue_size)]
        with open(Path(tmp) / "stderr.log", "w+") as stderr:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
            try:
                deadline, line = time.monotonic() + timeout, ""
                while time.monotonic() < deadline and not line.startswith("{"):
                    line = process.stdout.readline()
                    if not line:
                        break
                if not line.startswith("{"):
                    stderr.seek(0)
                    raise RuntimeError(f"wanrt serve did not start: {stderr.read()[-2000:]}")
                yield json.loads(line)["grpc"]
            finally:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _percentiles(latencies: list[float]) -> dict[str, float]:
    a = np.asarray(latencies)
    return {"p50_s": float(np.percentile(a, 50)), "p95_s": float(np.percentile(a, 95)), "requests": len(a)}


def bench_serving(model: Path, request: GenerationRequest, *, backend: str = "onnxruntime", device: str = "cpu",
                  repeats: int = 3, per_client: int = 2, concurrency: tuple[int, ...] = CONCURRENCY) -> dict[str, Any]:
    from wanrt.engine.loader import load_pipeline
    from wanrt.engine.video import encode_mp4, read_mp4_metadata
    from wanrt.server.client import Client

    pipeline = load_pipeline(model, backend, device=device)

    def in_process(metadata: dict | None = None) -> bytes:
        return b"".join(encode_mp4(pipeline.generate(request), request.fps, metadata=metadata))

    result: dict[str, Any] = {"model": str(model), "backend": backend, "device": device}
    with serve(model, backend, device, queue_size=max(concurrency) * per_client) as address:
        client = Client(address, insecure=True)
        # Warm-up, and the check that both paths make the same clip (else the comparison would mean nothing).
        served_clip = client.generate(request).video
        # The server writes what made the clip into its MP4 (its model's defaults filled in): so does this one.
        result["identical_output"] = served_clip == in_process(read_mp4_metadata(served_clip))
        local, remote = [], []
        for _ in range(repeats):  # alternated, so load drifts on the machine hit both alike
            start = time.perf_counter()
            in_process()
            local.append(time.perf_counter() - start)
            start = time.perf_counter()
            client.generate(request)
            remote.append(time.perf_counter() - start)
        result["in_process_s"] = float(np.median(local))
        result["served_s"] = float(np.median(remote))
        result["served_over_in_process"] = result["served_s"] / result["in_process_s"]
        result["concurrency"] = []
        for clients in concurrency:
            latencies: list[float] = []
            lock = threading.Lock()

            def worker(_: int, latencies: list[float] = latencies, lock: threading.Lock = lock) -> None:
                own = Client(address, insecure=True)
                for _ in range(per_client):
                    began = time.perf_counter()
                    own.generate(request)
                    with lock:
                        latencies.append(time.perf_counter() - began)

            began = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(worker, range(clients)))
            wall = time.perf_counter() - began
            result["concurrency"].append({"clients": clients, "wall_s": wall,
                                          "requests_per_s": len(latencies) / wall, **_percentiles(latencies)})
    return result
