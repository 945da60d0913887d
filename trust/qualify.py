"""`wanrt qualify`: installation, operational and performance qualification (IQ/OQ/PQ) of one model on this
machine, written as JSON and Markdown and signed like the artifacts (``signature.dsse.json`` over both).

IQ: versions of every component, the model folder checked against its signature (every file hashed), the
process's SELinux type, the GPU and driver. OQ: fixed reference prompts and seeds whose frames must match the
reference recorded for this installation (``--record-reference``) by sha256 when the backend is deterministic
(onnxruntime on CPU), else by PSNR against the recorded frames (threshold ``PSNR_THRESHOLD_DB``); the
bad-request table refused with the field named; the audit chain verified. PQ: latency of N runs of a declared
request inside a declared envelope. Any failed check makes the command exit 1 (after writing the report).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import math
import platform
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wanrt.engine.request import GenerationRequest
from wanrt.errors import InvalidRequestError, WanrtError

REPORT_JSON, REPORT_MD = "qualification.json", "qualification.md"
REFERENCE_JSON = "reference.json"
PSNR_THRESHOLD_DB = 40.0  # non-deterministic backends (GPU kernels): frames within 40 dB of the reference
COMPONENTS = ("wanrt", "numpy", "onnx", "onnxruntime-gpu", "onnxruntime", "tokenizers", "av", "grpcio", "protobuf",
              "securesystemslib", "cryptography", "c2pa-python", "tensorrt", "torch", "diffusers")

# OQ: fixed prompts and seeds (small: qualification must run in minutes on the machine being qualified).
REFERENCE_CASES = (
    GenerationRequest(prompt="a sea turtle glides over a coral reef, sunlight from above", frames=5, height=32,
                      width=32, steps=4, guidance=4.0, seed=11),
    GenerationRequest(prompt="a school of silver fish turns in murky green water", frames=5, height=32, width=48,
                      steps=4, guidance=3.0, seed=12),
)
# OQ: requests the pipeline must refuse, and the field it must name.
BAD_REQUESTS = (
    ("frames", dict(frames=6)), ("frames", dict(frames=0)), ("height", dict(height=24)), ("width", dict(width=8)),
    ("steps", dict(steps=0)), ("guidance", dict(guidance=float("nan"))), ("prompt", dict(prompt="")),
    ("seed", dict(seed=-1)), ("fps", dict(fps=0)),
)


@dataclasses.dataclass
class Check:
    stage: str  # "IQ", "OQ" or "PQ"
    name: str
    status: str  # "pass", "fail" or "info" (recorded, nothing to compare against)
    detail: str
    data: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class QualifyOptions:
    model: Path
    backend: str
    device: str
    trust: Sequence[Any]  # securesystemslib keys
    reference: Path | None
    audit_logs: Sequence[Path]
    runs: int
    max_latency_s: float
    require_selinux_type: str | None


def qualify(options: QualifyOptions, pipeline_loader: Callable[[Path, str, str], Any]) -> list[Check]:
    """Runs every check; never raises for a failed check (each becomes a "fail" entry)."""
    checks = installation(options)
    if any(c.status == "fail" and c.name == "artifact signature" for c in checks):
        return checks  # never run a model that failed its signature
    try:
        pipeline = pipeline_loader(options.model, options.backend, options.device)
    except WanrtError as err:
        return [*checks, Check("OQ", "model loads", "fail", str(err))]
    checks += operational(options, pipeline)
    checks += performance(options, pipeline)
    return checks


def installation(options: QualifyOptions) -> list[Check]:
    from wanrt.errors import ConfinementError
    from wanrt.trust.confinement import inspect as inspect_confinement
    from wanrt.trust.confinement import judge
    from wanrt.trust.folders import verify_folder

    versions = {name: _version(name) for name in COMPONENTS}
    checks = [Check("IQ", "component versions", "info", f"python {platform.python_version()}, "
                    + ", ".join(f"{k} {v}" for k, v in versions.items() if v),
                    {"python": platform.python_version(), "platform": platform.platform(), **versions})]
    try:
        statement = verify_folder(options.model, options.trust, deep=True)
        checks.append(Check("IQ", "artifact signature", "pass",
                            f"{len(statement['subject'])} files match the signed manifest",
                            {"subjects": {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}}))
    except WanrtError as err:
        checks.append(Check("IQ", "artifact signature", "fail", str(err)))
    found = inspect_confinement()
    selinux = {"type": found.type, "enforcing": found.enforce, "canary_errno": found.canary_errno}
    if options.require_selinux_type:
        try:
            judge(options.require_selinux_type, found)
            checks.append(Check("IQ", "SELinux type", "pass", found.describe(), selinux))
        except ConfinementError as err:
            checks.append(Check("IQ", "SELinux type", "fail", str(err), selinux))
    else:
        checks.append(Check("IQ", "SELinux type", "info", found.describe(), selinux))
    gpus = _gpus()
    needs_gpu = options.backend == "tensorrt" or options.device.startswith("cuda")
    status = ("pass" if gpus else "fail") if needs_gpu else "info"
    checks.append(Check("IQ", "GPU and driver", status, "; ".join(g["name"] + " driver " + g["driver"] for g in gpus)
                        or "no NVIDIA GPU (nvidia-smi absent or found none)", {"gpus": gpus}))
    return checks


def operational(options: QualifyOptions, pipeline: Any) -> list[Check]:
    checks = [_reference_check(options, pipeline), _bad_request_check(pipeline)]
    if options.audit_logs:
        from wanrt.server.audit_chain import verify_chain

        try:
            report = verify_chain(options.audit_logs, options.trust, live=True)  # the server may be running
            checks.append(Check("OQ", "audit chain", "pass", f"{report.records} records intact (seq "
                                f"{report.first_seq}..{report.head.seq}), {report.checkpoints} signed checkpoints",
                                dataclasses.asdict(report)))
        except WanrtError as err:
            checks.append(Check("OQ", "audit chain", "fail", str(err)))
    else:
        checks.append(Check("OQ", "audit chain", "fail", "no --audit-log given: the audit trail was not verified"))
    return checks


def performance(options: QualifyOptions, pipeline: Any) -> list[Check]:
    request = REFERENCE_CASES[0]
    _frames(pipeline, request)  # warm-up, not counted (first-call allocations, lazy initialisation)
    latencies = []
    for _ in range(options.runs):
        started = time.perf_counter()
        _frames(pipeline, request)
        latencies.append(time.perf_counter() - started)
    worst = max(latencies)
    ok = worst <= options.max_latency_s
    return [Check("PQ", "latency envelope", "pass" if ok else "fail",
                  f"{options.runs} runs of {request.frames}x{request.height}x{request.width}, {request.steps} steps: "
                  f"worst {worst:.3f} s, median {sorted(latencies)[len(latencies) // 2]:.3f} s; envelope "
                  f"{options.max_latency_s} s", {"latencies_s": latencies, "envelope_s": options.max_latency_s})]


def record_reference(pipeline: Any, out: Path, backend: str, device: str) -> Path:
    """Generates the reference cases and stores their frames and hashes in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cases = []
    for i, request in enumerate(REFERENCE_CASES):
        frames = _frames(pipeline, request)
        np.save(out / f"case{i}.npy", frames)
        cases.append({"request": _request_dict(request), "sha256": _sha256(frames), "frames": f"case{i}.npy"})
    data = {"backend": backend, "device": device, "identity": dict(pipeline.identity), "cases": cases}
    (out / REFERENCE_JSON).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return out / REFERENCE_JSON


def _reference_check(options: QualifyOptions, pipeline: Any) -> Check:
    if options.reference is None:
        return Check("OQ", "reference outputs", "fail", "no --reference: record one at installation with "
                     "`wanrt qualify --record-reference DIR`")
    try:
        reference = json.loads((options.reference / REFERENCE_JSON).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        return Check("OQ", "reference outputs", "fail", f"cannot read {options.reference / REFERENCE_JSON}: {err}")
    deterministic = options.backend == "onnxruntime" and options.device == "cpu"
    if reference.get("backend") != options.backend:
        return Check("OQ", "reference outputs", "fail", f"the reference was recorded for backend "
                     f"{reference.get('backend')!r}, not {options.backend!r}")
    results, ok = [], True
    for i, (case, request) in enumerate(zip(reference["cases"], REFERENCE_CASES, strict=True)):
        if case["request"] != _request_dict(request):
            return Check("OQ", "reference outputs", "fail", f"reference case {i} is not this wanrt's case {i}")
        frames = _frames(pipeline, request)
        entry = {"case": i, "sha256": _sha256(frames), "expected_sha256": case["sha256"]}
        if deterministic:
            entry["match"] = entry["sha256"] == case["sha256"]
        else:
            expected = np.load(options.reference / case["frames"], allow_pickle=False)
            entry["psnr_db"] = _psnr(frames, expected)
            entry["match"] = entry["psnr_db"] >= PSNR_THRESHOLD_DB
        ok &= entry["match"]
        results.append(entry)
    how = "by sha256 (deterministic backend)" if deterministic else f"by PSNR >= {PSNR_THRESHOLD_DB} dB"
    bad = [r["case"] for r in results if not r["match"]]
    return Check("OQ", "reference outputs", "pass" if ok else "fail",
                 f"{len(results)} cases compared {how}" + (f"; cases {bad} differ" if bad else ""), {"cases": results})


def _bad_request_check(pipeline: Any) -> Check:
    results, ok = [], True
    for field, change in BAD_REQUESTS:
        request = dataclasses.replace(REFERENCE_CASES[0], **change)
        try:
            next(iter(pipeline.generate(request)))
            got = None
        except InvalidRequestError as err:
            got = err.field
        results.append({"change": {k: str(v) for k, v in change.items()}, "expected_field": field,
                        "refused_field": got})
        ok &= got == field
    bad = [r for r in results if r["refused_field"] != r["expected_field"]]
    return Check("OQ", "bad requests refused", "pass" if ok else "fail",
                 f"{len(results) - len(bad)} of {len(results)} refused naming the right field", {"table": results})


def write_report(out: Path, checks: list[Check], options: QualifyOptions, signer: Any) -> Path:
    """Writes qualification.json and .md into ``out`` and signs both (signature.dsse.json)."""
    from wanrt import __version__
    from wanrt.trust.folders import sign_folder

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    passed = all(c.status != "fail" for c in checks)
    markdown = _markdown(checks, options, passed)
    (out / REPORT_MD).write_text(markdown, encoding="utf-8")
    report = {
        "kind": "wanrt-qualification", "passed": passed, "wanrt_version": __version__,
        "created_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": str(Path(options.model).resolve()), "backend": options.backend, "device": options.device,
        "checks": [dataclasses.asdict(c) for c in checks],
        "files": {REPORT_MD: hashlib.sha256(markdown.encode()).hexdigest()},
    }
    (out / REPORT_JSON).write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    sign_folder(out, signer, wanrt_version=__version__)
    return out


def _markdown(checks: list[Check], options: QualifyOptions, passed: bool) -> str:
    lines = [f"# wanrt qualification: {'PASSED' if passed else 'FAILED'}", "",
             f"- model: `{Path(options.model).resolve()}`", f"- backend: {options.backend} on {options.device}",
             f"- reference: `{options.reference}`", f"- PSNR threshold (non-deterministic backends): "
             f"{PSNR_THRESHOLD_DB} dB", "", "| stage | check | result | detail |", "|---|---|---|---|"]
    lines += [f"| {c.stage} | {c.name} | {c.status.upper()} | {c.detail.replace('|', '/')} |" for c in checks]
    return "\n".join(lines) + "\n"


def _frames(pipeline: Any, request: GenerationRequest) -> np.ndarray:
    return np.concatenate(list(pipeline.generate(request)))


def _sha256(frames: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(frames, dtype=np.uint8).tobytes()).hexdigest()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return 0.0
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse == 0 else min(100.0, 10 * math.log10(255.0**2 / mse))  # capped: JSON has no infinity


def _request_dict(request: GenerationRequest) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(request).items() if k != "latents"}


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpus() -> list[dict[str, str]]:
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return []
    try:
        out = subprocess.run([tool, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [[part.strip() for part in line.split(",")] for line in out.splitlines() if line.strip()]
    return [{"name": r[0], "driver": r[1], "memory": r[2] if len(r) > 2 else ""} for r in rows if len(r) >= 2]
