"""gRPC and HTTP overhead: the same request on the same model, in-process vs through `wanrt serve` on 127.0.0.1.

    .venv/bin/python tests/server/bench_overhead.py --model MODEL --backend torch [--repeats 7]

Starts `wanrt serve` (plaintext on loopback, and TLS with a throwaway certificate) as separate processes,
loads the same model in this process, then alternates in-process and remote runs of each request so that
machine load drifts affect both alike. In-process = ``encode_mp4(pipeline.generate(request))`` to bytes
in a worker thread, as the server's worker runs it; remote = ``Client.generate`` until the verified Result is in hand,
or, for HTTP, the `openai` package's create, poll (every 20 ms) and download_content. Every path makes identical
bytes (checked).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from server_testkit import make_certs, read_audit, serve_process  # noqa: E402

from wanrt.engine.loader import load_pipeline  # noqa: E402
from wanrt.engine.request import GenerationRequest  # noqa: E402
from wanrt.engine.video import encode_mp4, read_mp4_frames  # noqa: E402
from wanrt.server.client import Client  # noqa: E402

REQUESTS = {
    "1 frame 16x16, 1 step, no CFG": GenerationRequest(prompt="a turtle swims over coral", frames=1, height=16,
                                                         width=16, steps=1, guidance=1.0),
    "17 frames 96x96, 8 steps, CFG 4 (wanrt defaults)": GenerationRequest(prompt="a turtle swims over coral"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    pipeline = load_pipeline(args.model, args.backend)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        certs = make_certs(tmp / "certs")
        backend = ["--backend", args.backend]
        with serve_process(args.model, tmp, *backend, "--http-listen", "127.0.0.1:0", limits=None) as plain, \
                serve_process(args.model, tmp, *backend, tls=certs, limits=None) as tls:
            clients = {"gRPC plaintext": Client(plain.address, insecure=True),
                       "gRPC TLS": Client(tls.address, ca=certs.ca),
                       "HTTP plaintext (openai SDK)": OpenAIVideos(plain.ready["http_port"], plain.audit_log)}
            print(f"model {args.model} ({args.backend}), {args.repeats} runs each, median [min-max] seconds;")
            print("transport = client-observed time minus the server's own Result.timings.total_s\n")
            print("| request | in-process | path | end to end | vs in-process | server total_s | transport |")
            print("|---|---|---|---|---|---|---|")
            for label, request in REQUESTS.items():
                times: dict[str, list[float]] = {"in-process": []}
                digests = set()
                for i in range(args.repeats + 1):  # run 0 warms every path up and is not counted
                    seeded = dataclasses.replace(request, seed=i)
                    local, seconds = in_worker_thread(pipeline, seeded)
                    sample = {"in-process": seconds}
                    for name, client in clients.items():
                        started = time.perf_counter()
                        remote = client.generate(seeded)
                        sample[name] = time.perf_counter() - started
                        sample[f"{name} server"] = remote.timings["total_s"]
                        sample[f"{name} transport"] = sample[name] - remote.timings["total_s"]
                        # The same frames (the server's MP4 also carries the clip's settings as metadata).
                        digests.add(bool((read_mp4_frames(remote.video) == read_mp4_frames(local)).all()))
                    if i:
                        for key, value in sample.items():
                            times.setdefault(key, []).append(value)
                assert digests == {True}, "remote and in-process frames differ"
                base = statistics.median(times["in-process"])
                for name in clients:
                    median = statistics.median(times[name])
                    versus = f"{(median - base) * 1000:+.0f} ms ({(median / base - 1) * 100:+.1f}%)"
                    transport = f"{statistics.median(times[f'{name} transport']) * 1000:.1f} ms"
                    print(f"| {label} | {_cell(times['in-process'])} | {name} | {_cell(times[name])} | {versus} | "
                          f"{_cell(times[f'{name} server'])} | {transport} |")
            for name, client in list(clients.items())[:2]:
                rtts = []
                for _ in range(50):
                    started = time.perf_counter()
                    client.describe()
                    rtts.append(time.perf_counter() - started)
                print(f"\nDescribeModel round trip, {name}: median {statistics.median(rtts) * 1000:.2f} ms")
            for client in clients.values():
                client.close()
    return 0


@dataclasses.dataclass
class _HttpResult:
    video: bytes
    timings: dict[str, float]


class OpenAIVideos:
    """The HTTP path as a client sees it: `openai` create, poll, download; the server's own time from its audit line."""

    def __init__(self, port: int, audit_log: Path) -> None:
        import warnings

        import openai

        warnings.filterwarnings("ignore", "The Sora API", DeprecationWarning)
        self._client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
        self._audit_log = audit_log

    def generate(self, request: GenerationRequest) -> _HttpResult:
        fields = {"frames": request.frames, "steps": request.steps, "guidance": request.guidance, "seed": request.seed}
        video = self._client.videos.create(prompt=request.prompt, size=f"{request.width}x{request.height}",
                                           extra_body=fields)
        video = self._client.videos.poll(video.id, poll_interval_ms=20)
        data = self._client.videos.download_content(video.id).read()
        (record,) = [r for r in read_audit(self._audit_log) if r["request_id"] == video.id]
        assert hashlib.sha256(data).hexdigest() == record["output"]["sha256"]
        return _HttpResult(data, record["timings"])

    def close(self) -> None:
        self._client.close()


def in_worker_thread(pipeline: object, request: GenerationRequest) -> tuple[bytes, float]:
    """Generates and encodes in a fresh thread, as the server's worker does. On a busy 2-core machine torch's
    intra-op threads behave very differently in the main thread (2-3x slower here), which would make the
    comparison about threading, not about gRPC."""
    out: list = []

    def run() -> None:
        started = time.perf_counter()
        data = b"".join(encode_mp4(pipeline.generate(request), request.fps))
        out.append((data, time.perf_counter() - started))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return out[0]


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


if __name__ == "__main__":
    sys.exit(main())
