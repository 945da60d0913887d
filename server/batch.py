"""`wanrt client batch PROMPTS.jsonl --out DIR`: one video per line of a JSON-lines file, over gRPC or HTTP.

Each line is a JSON object: ``prompt`` (required), ``negative_prompt``, ``seed`` (-1: the server chooses, and the
summary records its choice), ``size`` ("WIDTHxHEIGHT") or ``width``/``height``, ``frames``, ``steps``,
``guidance``, ``guidance_2``, ``fps``, and ``name`` (the output file's stem; default the line number).

Resumable: ``DIR/summary.jsonl`` gets one record per finished item as it finishes (flushed and fsynced: a killed
run loses at most the items in flight); a rerun skips every item whose record says done, whose file is there
with the recorded sha256, and whose line is unchanged, and does the rest. At the end the summary is rewritten
with one record per line (status, seconds, sha256, seed, job id, error). The exit status is 1 when a line
failed, naming them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wanrt.engine.request import GenerationRequest
from wanrt.errors import InvalidRequestError, WanrtError
from wanrt.server.errors import RemoteError

SUMMARY = "summary.jsonl"
_LINE_FIELDS = {"prompt", "negative_prompt", "seed", "size", "width", "height", "frames", "steps", "guidance",
                "guidance_2", "fps", "name"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_SIZE = re.compile(r"^([0-9]{1,5})x([0-9]{1,5})$")
_RETRY_S = (0.2, 0.5, 1.0, 2.0, 5.0)  # waits while the server's queue is full (it said: retry later)


@dataclasses.dataclass(frozen=True)
class Item:
    line: int  # 1-based
    name: str
    request: GenerationRequest | None  # None: the line is malformed (``error`` says why)
    fingerprint: str  # sha256 of the line's request as written: a changed line is redone
    error: str | None = None

    @property
    def file(self) -> str:
        return f"{self.name}.mp4"


@dataclasses.dataclass(frozen=True)
class Made:
    """One generated video as either API returns it."""

    video: bytes
    sha256: str
    seed: int
    job_id: str


def read_items(path: Path) -> list[Item]:
    """Every non-blank line as an item; a malformed line becomes a failed item naming what is wrong."""
    items, names = [], set()
    for number, text in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        fingerprint = hashlib.sha256(text.strip().encode("utf-8", "surrogatepass")).hexdigest()
        try:
            fields = json.loads(text)
            request, name = _request(fields, number)
            if name in names:
                raise InvalidRequestError("name", f"{name!r} is used by an earlier line")
        except (ValueError, RecursionError) as err:
            message = f"{err.field}: {err.message}" if isinstance(err, InvalidRequestError) else f"not JSON: {err}"
            items.append(Item(number, f"{number:06d}", None, fingerprint, message))
            continue
        names.add(name)
        items.append(Item(number, name, request, fingerprint))
    return items


def _request(fields: object, number: int) -> tuple[GenerationRequest, str]:
    if not isinstance(fields, dict):
        raise InvalidRequestError("line", "must be a JSON object")
    unknown = sorted(set(fields) - _LINE_FIELDS)
    if unknown:
        raise InvalidRequestError(unknown[0], f"is not a field of a batch line ({', '.join(sorted(_LINE_FIELDS))})")
    if not isinstance(fields.get("prompt"), str):
        raise InvalidRequestError("prompt", "is required (a string)")
    values = {k: v for k, v in fields.items() if k not in ("size", "name")}
    if "size" in fields:
        match = _SIZE.match(fields["size"]) if isinstance(fields["size"], str) else None
        if match is None or "width" in fields or "height" in fields:
            raise InvalidRequestError("size", "must be WIDTHxHEIGHT (and replaces width and height)")
        values["width"], values["height"] = int(match.group(1)), int(match.group(2))
    name = fields.get("name", f"{number:06d}")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidRequestError("name", "must be 1-100 letters, digits, '.', '_' or '-'")
    return GenerationRequest(**values), name


# --- the two APIs --------------------------------------------------------------------------------------------

def grpc_maker(client: Any) -> Callable[[GenerationRequest, str], Made]:  # noqa: ANN401
    """Generates with a wanrt.server.client.Client (the video's sha256 is checked as it arrives)."""
    def make(request: GenerationRequest, client_request_id: str) -> Made:
        result = client.generate(request, client_request_id=client_request_id)
        return Made(result.video, result.sha256, result.seed, result.job_id)

    return make


def http_maker(base_url: str, *, token: str | None, context: Any = None) -> Callable[[GenerationRequest, str], Made]:  # noqa: ANN401
    """Generates through OpenAI's /v1/videos: create, poll, download (sha256 checked), delete."""
    import urllib.error
    import urllib.request

    headers = {"authorization": f"Bearer {token}"} if token else {}

    def call(method: str, path: str, body: dict | None = None, extra: dict | None = None) -> tuple[bytes, dict]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(base_url + path, data=data, method=method,
                                         headers={**headers, **(extra or {}),
                                                  **({"content-type": "application/json"} if data else {})})
        try:
            with urllib.request.urlopen(request, timeout=60, context=context) as response:
                return response.read(), dict(response.headers)
        except urllib.error.HTTPError as err:
            error = json.loads(err.read() or b"{}").get("error", {})
            if err.code == 400 and error.get("param") and error.get("code") == "invalid_argument":
                raise InvalidRequestError(error["param"], error.get("message", "")) from None
            code = {429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}.get(err.code, error.get("code", str(err.code)))
            raise RemoteError(code.upper(), error.get("message", str(err)), retryable=err.code == 429) from None

    def make(request: GenerationRequest, client_request_id: str) -> Made:
        body = {"prompt": request.prompt, "negative_prompt": request.negative_prompt,
                "size": f"{request.width}x{request.height}", "frames": request.frames, "steps": request.steps,
                "guidance": request.guidance, "seed": request.seed, "fps": request.fps}
        if request.guidance_2 is not None:
            body["guidance_2"] = request.guidance_2
        video = json.loads(call("POST", "/v1/videos", body, {"x-client-request-id": client_request_id})[0])
        wait = 0.02
        while video["status"] in ("queued", "in_progress"):
            time.sleep(wait)
            wait = min(1.0, wait * 1.5)
            video = json.loads(call("GET", f"/v1/videos/{video['id']}")[0])
        if video["status"] != "completed":
            error = video.get("error") or {}
            raise RemoteError(str(error.get("code", "failed")).upper(), error.get("message", "the job failed"))
        data, response_headers = call("GET", f"/v1/videos/{video['id']}/content")
        sha256 = hashlib.sha256(data).hexdigest()
        if sha256 != {k.lower(): v for k, v in response_headers.items()}.get("x-video-sha256"):
            raise WanrtError(f"video {video['id']}: the bytes received do not match the server's sha256")
        call("DELETE", f"/v1/videos/{video['id']}")
        return Made(data, sha256, int(video["settings"]["seed"]), video["id"])

    return make


# --- the run ---------------------------------------------------------------------------------------------------

class Summary:
    """``DIR/summary.jsonl``: records appended durably as items finish; the last record of a line wins."""

    def __init__(self, out: Path) -> None:
        self.path = out / SUMMARY
        self.records: dict[int, dict[str, Any]] = {}
        if self.path.exists():
            for text in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(text)
                except ValueError:
                    continue  # a line cut by a kill: its item is simply redone
                self.records[int(record["line"])] = record
        self._lock = threading.Lock()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (held for the run)

    def done(self, item: Item, out: Path) -> bool:
        """Done and verified: the record says ok for this very line, and the file has the recorded sha256."""
        record = self.records.get(item.line)
        if record is None or record.get("status") != "ok" or record.get("request_sha256") != item.fingerprint:
            return False
        path = out / item.file
        return path.is_file() and _sha256_file(path) == record.get("sha256")

    def add(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.records[record["line"]] = record
            self._file.write(json.dumps(record, sort_keys=True) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self, lines: list[int]) -> None:
        """Rewrites the summary with one record per line of the batch, in line order."""
        self._file.close()
        partial = self.path.with_name(f".{SUMMARY}.partial")
        with open(partial, "w", encoding="utf-8") as f:
            for line in lines:
                if line in self.records:
                    f.write(json.dumps(self.records[line], sort_keys=True) + "\n")
        partial.replace(self.path)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def run_batch(items: list[Item], out: Path, make: Callable[[GenerationRequest, str], Made], *, concurrency: int,
              progress: bool) -> list[dict[str, Any]]:
    """Runs every item not already done; returns the failed items' records."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    summary = Summary(out)
    todo = [item for item in items if not summary.done(item, out)]
    bar = tqdm(total=len(items), initial=len(items) - len(todo), unit="clip", file=sys.stderr,
               disable=not progress)

    def one(item: Item) -> dict[str, Any]:
        record: dict[str, Any] = {"line": item.line, "name": item.name, "file": item.file,
                                  "request_sha256": item.fingerprint}
        started = time.monotonic()
        try:
            if item.request is None:
                raise _Malformed(item.error or "malformed")
            made = _with_retries(lambda: make(item.request, f"batch-{item.fingerprint[:16]}-line{item.line}"))
            partial = out / f".{item.file}.partial"
            partial.write_bytes(made.video)
            partial.replace(out / item.file)
            record.update(status="ok", sha256=made.sha256, bytes=len(made.video), seed=made.seed,
                          job_id=made.job_id)
        except (WanrtError, OSError) as err:
            record.update(status="failed", error=str(err))
        record["seconds"] = round(time.monotonic() - started, 3)
        summary.add(record)
        bar.update(1)
        return record

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
            futures = [pool.submit(one, item) for item in todo]
            try:
                for future in concurrent.futures.as_completed(futures):
                    future.result()
            except BaseException:  # Ctrl-C: what finished is recorded; nothing new starts
                for future in futures:
                    future.cancel()
                raise
    finally:
        bar.close()
        summary.close([item.line for item in items])
    return [summary.records[i.line] for i in items if summary.records.get(i.line, {}).get("status") != "ok"]


class _Malformed(WanrtError):
    """A line that could not be read as a request (its record's error says why)."""


def _with_retries(make: Callable[[], Made]) -> Made:
    """Retries while the server says its queue is full (RESOURCE_EXHAUSTED with a retry hint, HTTP 429)."""
    for wait in (*_RETRY_S, None):
        try:
            return make()
        except RemoteError as err:
            if wait is None or not err.retryable:
                raise
            time.sleep(wait)
    raise AssertionError("unreachable")


def cmd_batch(args: argparse.Namespace) -> int:
    from wanrt.server.client_cli import connect

    if args.concurrency < 1 or args.concurrency > 256:
        raise InvalidRequestError("concurrency", f"must be from 1 to 256, got {args.concurrency}")
    items = read_items(args.prompts)
    if not items:
        raise InvalidRequestError("prompts", f"{args.prompts} holds no request")
    if args.api == "grpc":
        with connect(args) as client:
            failed = run_batch(items, args.out, grpc_maker(client), concurrency=args.concurrency,
                               progress=sys.stderr.isatty() and not args.quiet)
    else:
        failed = run_batch(items, args.out, _http_maker_for(args), concurrency=args.concurrency,
                           progress=sys.stderr.isatty() and not args.quiet)
    done = len(items) - len(failed)
    print(f"{done} of {len(items)} done; summary in {args.out / SUMMARY}", file=sys.stderr)
    if failed:
        lines = ", ".join(str(r["line"]) for r in failed[:20]) + (" ..." if len(failed) > 20 else "")
        print(f"wanrt: error: {len(failed)} line(s) of {args.prompts} failed: {lines}", file=sys.stderr)
        for record in failed[:5]:
            print(f"  line {record['line']}: {record.get('error')}", file=sys.stderr)
        return 1
    return 0


def _http_maker_for(args: argparse.Namespace) -> Callable[[GenerationRequest, str], Made]:
    """The HTTP API at --server with the same TLS, client certificate and token rules as gRPC."""
    import ssl

    from wanrt.server.config import ClientConfig

    config = ClientConfig(server=args.server, insecure=args.insecure, ca=args.ca, cert=args.cert, key=args.key,
                          token_file=args.token_file, server_name=args.server_name).validated()
    context = None
    if not config.insecure:
        context = ssl.create_default_context(cafile=str(config.ca) if config.ca else None)
        if config.cert is not None:
            context.load_cert_chain(config.cert, config.key)
        if config.server_name:
            raise InvalidRequestError("server_name", "is for gRPC; over HTTP use the certificate's host in --server")
    scheme = "http" if config.insecure else "https"
    return http_maker(f"{scheme}://{config.server}", token=config.read_token(), context=context)


def register(commands: argparse._SubParsersAction, add_connection_arguments: Callable) -> None:
    batch = commands.add_parser("batch", help="one video per line of a JSON-lines file; resumable",
                                description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawTextHelpFormatter)
    batch.add_argument("prompts", type=Path, metavar="PROMPTS.jsonl")
    batch.add_argument("--out", type=Path, required=True, help="folder for the videos and summary.jsonl")
    batch.add_argument("--concurrency", type=int, default=2, help="requests in flight at once (default 2)")
    batch.add_argument("--api", choices=("grpc", "http"), default="grpc",
                       help="gRPC (--server is the gRPC listener) or OpenAI-HTTP (--server is --http-listen's)")
    batch.add_argument("--quiet", action="store_true", help="no progress bar (none when stderr is not a terminal)")
    add_connection_arguments(batch)
    batch.set_defaults(handler=cmd_batch)
