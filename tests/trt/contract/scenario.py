"""The contract scenario, run in a process whose ``import tensorrt`` / ``import pycuda.driver`` are the checked
shims (shim/) over the real bindings of one TensorRT major: the project's own commands, end to end.

    python scenario.py --artifact DIR --work DIR [--plant OLD=NEW]

1. `wanrt build-engines` with a timing cache from another GPU (rejected: reported and rebuilt), then again with
   --residency per-stage and with --weight-streaming-budget;
2. `wanrt generate --backend tensorrt` on each folder, equal to `wanrt generate --backend onnxruntime` (on the
   graphs TensorRT was given: see standard_forms);
3. `wanrt serve --backend tensorrt` with 20 jobs from 4 client threads, each equal to onnxruntime's frames, and
   device allocations back to their baseline afterwards, none leaked;
4. `wanrt verify --engines DIR --prompts 2`, and once with a threshold nothing meets (exit 1).

--only-serve runs step 1's first build and step 3; --only-generate that build and one generate of step 2 (the
drawn-model contract test). --plant Class.method:OLD=NEW first plants a mistake in engine/tensorrt/engine.py (the
test shows each is caught).
Writes work/report.json: the TensorRT API names used, contract violations, what was built, the memory ledger.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import io
import json
import os
import signal
import socket
import sys
import textwrap
import threading
import time
import traceback
from pathlib import Path

import checked
import cudasim
import numpy as np
import trtsim

SIZE = ["--frames", "5", "--height", "32", "--width", "32"]
MAX = ["--max-frames", "5", "--max-height", "32", "--max-width", "32"]


def plant(spec: str) -> None:
    """``Class.method:OLD=NEW``: recompiles that method of engine/tensorrt/engine.py with OLD replaced."""
    from wanrt.engine.tensorrt import engine as module

    target, _, change = spec.partition(":")
    old, _, new = change.partition("=")
    cls_name, _, method = target.partition(".")
    cls = getattr(module, cls_name)
    source = textwrap.dedent(inspect.getsource(getattr(cls, method)))
    if old not in source:
        raise SystemExit(f"cannot plant: {old!r} is not in {target}")
    namespace: dict = {}
    exec(compile(source.replace(old, new), module.__file__, "exec"), module.__dict__, namespace)
    setattr(cls, method, namespace[method])


class StopScenario(Exception):
    pass


def leaks() -> dict:
    return {"count": len(cudasim.LEAKED), "bytes": sum(cudasim.LEAKED)}


def cli(*argv: str) -> tuple[int, str]:
    from wanrt.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, err.getvalue()


def generate(model: Path, backend: str, out: Path, *extra: str) -> np.ndarray:
    rc, err = cli("generate", "--model", str(model), "--backend", backend, "--device",
                  "cuda" if backend == "tensorrt" else "cpu", "--prompt", "a turtle glides over the reef",
                  *SIZE, "--steps", "2", "--seed", "3", "--out", str(out), *extra)
    if rc != 0:
        raise RuntimeError(f"generate --backend {backend} exited {rc}: {err[-2000:]}")
    return np.load(out)


def build(art: Path, out: Path, *extra: str) -> str:
    rc, err = cli("build-engines", "--model", str(art), "--out", str(out), *MAX, "--opt-frames", "5", *extra)
    if rc != 0:
        raise RuntimeError(f"build-engines exited {rc}: {err[-3000:]}")
    return err


def standard_forms(art: Path, work: Path) -> Path:
    """A copy of ``art`` whose onnxruntime backend runs the very graphs TensorRT was given (the standard
    Attention operator), so frames can be compared exactly: the artifact's own onnxruntime form
    (MultiHeadAttention, export/onnxruntime_attention.py) rounds differently in the last bit."""
    import shutil

    from wanrt.engine.artifact import MANIFEST_NAME, hash_folder

    ref = work / "standard-forms"
    if ref.exists():
        return ref
    shutil.copytree(art, ref)
    manifest = json.loads((ref / MANIFEST_NAME).read_text())
    for entry in manifest["graphs"].values():
        form = (entry.get("attention") or {}).pop("onnxruntime", None)
        if form:
            (ref / form["file"]).unlink()
    manifest["files"] = hash_folder(ref)
    (ref / MANIFEST_NAME).write_text(json.dumps(manifest))
    return ref


def serve_jobs(engines: Path, art: Path, work: Path) -> dict:
    """`wanrt serve` on this (main) thread; a client thread runs the jobs, checks the ledger, then SIGTERMs."""
    from wanrt.engine.loader import load_pipeline
    from wanrt.engine.request import GenerationRequest
    from wanrt.server.client import Client
    from wanrt.server.jobs import RAW_RGB24

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    requests = [GenerationRequest(prompt=f"a ray over sand, take {i % 3}", frames=5, height=32, width=32, steps=2,
                                  seed=i % 3) for i in range(20)]
    reference = load_pipeline(standard_forms(art, work), "onnxruntime")
    expected = {r.seed: np.concatenate(list(reference.generate(r))) for r in requests[:3]}
    outcome: dict = {"jobs": 0, "mismatches": [], "errors": []}

    def client() -> None:
        try:
            with Client(f"127.0.0.1:{port}", insecure=True) as c:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if c.health() == "SERVING":
                            break
                    except Exception:
                        if time.monotonic() > deadline:
                            raise
                    time.sleep(0.2)

                def run(request: GenerationRequest) -> None:
                    result = c.generate(request, video_format=RAW_RGB24, timeout=120)
                    frames = np.frombuffer(result.video, np.uint8).reshape(expected[request.seed].shape)
                    with lock:
                        outcome["jobs"] += 1
                        if not np.array_equal(frames, expected[request.seed]):
                            diff = np.abs(frames.astype(int) - expected[request.seed]).max()
                            outcome["mismatches"].append(f"seed {request.seed}: max |diff| {diff}")

                lock = threading.Lock()
                run(requests[0])  # warms the grow-only I/O pools: the baseline is what serving holds at rest
                gc.collect()
                outcome["baseline"] = {"live_bytes": cudasim.live_bytes(), "live": len(cudasim.LIVE)}
                workers = [threading.Thread(target=lambda k=k: [run(r) for r in requests[1 + k::4]], name=f"client-{k}")
                           for k in range(4)]
                for w in workers:
                    w.start()
                for w in workers:
                    w.join()
                gc.collect()
                outcome["after"] = {"live_bytes": cudasim.live_bytes(), "live": len(cudasim.LIVE)}
                outcome["leaked"] = leaks()
        except Exception:
            outcome["errors"].append(traceback.format_exc())
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=client, name="contract-client")
    thread.start()
    rc, err = cli("serve", "--model", str(engines), "--backend", "tensorrt", "--device", "cuda", "--listen",
                  f"127.0.0.1:{port}", "--metrics-listen", "127.0.0.1:0", "--insecure", "--audit-log",
                  str(work / "audit.jsonl"), "--max-frames", "5", "--max-height", "32", "--max-width", "32",
                  "--queue-size", "32")
    thread.join()
    outcome["rc"] = rc
    if rc != 0:
        outcome["errors"].append(err[-3000:])
    return outcome


STAGE_OF = {"encode_text": "text", "predict_noise": "denoise", "decode_first": "decode", "decode_next": "decode"}


def plan_vs_ledger(engines: Path, residency: str | None, text_encoder: str | None) -> dict:
    """Loads the engines as generate/serve do, runs one clip at the largest size they accept, and records for each
    stage the most device bytes live at once (the simulated driver's ledger), beside the plan the backend started
    with (less the CUDA context and reserve, which are not allocations)."""
    from wanrt.engine.loader import load_pipeline
    from wanrt.engine.request import GenerationRequest
    from wanrt.engine.tensorrt.memory import STAGES

    gc.collect()
    before = cudasim.live_bytes()
    pipeline = load_pipeline(engines, "tensorrt", device="cuda", residency=residency, text_encoder=text_encoder)
    backend = pipeline.backend
    ledger: dict[str, int] = {}
    for method, stage in STAGE_OF.items():
        def counted(*args: object, _call: object = getattr(backend, method), _stage: str = stage) -> object:
            cudasim.reset_high_water()
            try:
                return _call(*args)
            finally:
                ledger[_stage] = max(ledger.get(_stage, 0), cudasim.HIGH_WATER["bytes"] - before)
        setattr(backend, method, counted)
    # Every engine was read and hashed at load; swaps (per-stage experts, a released text encoder) deserialise
    # from those verified bytes. With the files moved away a re-read from disk would fail: the clips must not.
    away = [(p, p.with_name(p.name + ".away")) for p in sorted(engines.glob("*.plan"))]
    for path, moved in away:
        path.rename(moved)
    try:
        for _ in range(2):  # the second clip starts with the other expert loaded (per stage) and no pool to grow
            list(pipeline.generate(GenerationRequest(prompt="a ray over sand", frames=5, height=32, width=32,
                                                     steps=4, seed=1)))
    finally:
        for path, moved in away:
            moved.rename(path)
    plan = backend.memory_plan
    result = {"residency": plan.residency, "text_encoder": plan.text_encoder, "ledger": ledger,
              "engines_moved": len(away),
              "plan": {s: plan.stages[s] - plan.context - plan.reserve for s in STAGES}, "render": plan.render()}
    backend.close()
    del pipeline, backend
    gc.collect()
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--plant", default=None, help="Class.method:OLD=NEW in engine/tensorrt/engine.py")
    parser.add_argument("--only-serve", action="store_true", help="build one folder and serve it, nothing else")
    parser.add_argument("--only-generate", action="store_true",
                        help="build one folder and generate from it, nothing else (models drawn at random)")
    parser.add_argument("--only-build", action="store_true",
                        help="build one folder, nothing else (graphs onnxruntime cannot run here: bf16 at full width)")
    parser.add_argument("--max", nargs=3, default=None, metavar=("FRAMES", "HEIGHT", "WIDTH"),
                        help="--only-build: the largest request (default 5 32 32)")
    args = parser.parse_args()
    art, work = args.artifact, args.work
    work.mkdir(parents=True, exist_ok=True)
    import tensorrt

    report: dict = {"tensorrt": tensorrt.__version__, "steps": {}}
    try:
        if args.plant:
            plant(args.plant)
        if args.only_build:
            sizes = ["--max-frames", args.max[0], "--max-height", args.max[1], "--max-width", args.max[2],
                     "--opt-frames", args.max[0]] if args.max else [*MAX, "--opt-frames", "5"]
            rc, err = cli("build-engines", "--model", str(art), "--out", str(work / "engines"), *sizes)
            report["steps"]["build"] = {"rc": rc, "log": err[-3000:]}
            raise StopScenario
        cache = work / "timing.cache"
        cache.write_bytes(b"timing-cache:9.0.0:another-gpu")
        log = build(art, work / "engines", "--timing-cache", str(cache), "--workspace-gib", "2")
        report["steps"]["build"] = {
            "log": log, "cache_rebuilt": cache.read_bytes().decode().endswith(trtsim.DEVICE_KEY)}
        if args.only_serve:
            report["steps"]["serve"] = serve_jobs(work / "engines", art, work)
            raise StopScenario
        if args.only_generate:
            want = generate(standard_forms(art, work), "onnxruntime", work / "ort.npy")
            got = generate(work / "engines", "tensorrt", work / "engines.npy")
            report["steps"]["generate"] = {"engines": bool(np.array_equal(got, want))}
            raise StopScenario
        report["steps"]["build_per_stage"] = build(art, work / "engines-per-stage", "--residency", "per-stage")
        report["steps"]["build_streaming"] = build(art, work / "engines-streaming",
                                                   "--weight-streaming-budget", "0.0001")
        want = generate(standard_forms(art, work), "onnxruntime", work / "ort.npy")
        report["steps"]["generate"], report["steps"]["experts_on_gpu"] = {}, {}
        for name in ("engines", "engines-per-stage", "engines-streaming"):
            gc.collect()  # the previous command's engines are gone before this one counts
            trtsim.PEAK["experts"] = 0
            got = generate(work / name, "tensorrt", work / f"{name}.npy")
            report["steps"]["generate"][name] = bool(np.array_equal(got, want))
            report["steps"]["experts_on_gpu"][name] = trtsim.PEAK["experts"]
        report["steps"]["plan_vs_ledger"] = [
            plan_vs_ledger(work / folder, residency, text)
            for folder, residency in (("engines", None), ("engines", "per-stage"), ("engines-streaming", None))
            for text in ("resident", "release", "cpu")]
        report["steps"]["serve"] = serve_jobs(work / "engines", art, work)
        rc, err = cli("verify", "--engines", str(work / "engines"), "--prompts", "2", "--steps", "2",
                      "--reference", str(art), "--report", str(work / "verify.json"))
        report["steps"]["verify"] = {"rc": rc, "stderr": err[-2000:],
                                     "report": json.loads((work / "verify.json").read_text()) if rc == 0 else None}
        # The same engines against the model itself in bf16 torch (the reference at A14B size; here on the CPU).
        source = json.loads((art / "manifest.json").read_text())["source_model"]["path"]
        rc, err = cli("verify", "--engines", str(work / "engines"), "--prompts", "1", "--steps", "2",
                      "--torch-reference", source, "--report", str(work / "verify-torch.json"))
        report["steps"]["verify_torch"] = {
            "rc": rc, "stderr": err[-2000:],
            "report": json.loads((work / "verify-torch.json").read_text()) if (work / "verify-torch.json").exists()
            else None}
        # A threshold no clip can meet (PSNR is capped at 100 dB): verify must exit 1 and say why.
        rc, err = cli("verify", "--engines", str(work / "engines"), "--prompts", "1", "--steps", "1",
                      "--min-psnr", "101", "--report", str(work / "verify-strict.json"))
        report["steps"]["verify_strict"] = {"rc": rc, "stderr": err[-2000:],
                                            "passed": json.loads((work / "verify-strict.json").read_text())["passed"]}
    except StopScenario:
        pass
    except Exception:
        report["error"] = traceback.format_exc()
    report["used"] = sorted(checked.USED)
    # Names on paths this scenario cannot reach (the parser's error path, ...) must exist all the same.
    for name in filter(None, os.environ.get("WANRT_CONTRACT_NAMES", "").split(",")):
        owner, _, attr = name.partition(".")
        cls = getattr(trtsim.REAL, owner, None)
        if cls is None or (attr and not hasattr(cls, attr)):
            checked.violation(f"{name} does not exist in TensorRT {trtsim.REAL.__version__}")
    report["violations"] = list(checked.VIOLATIONS)
    report["built"] = trtsim.ENGINES_BUILT
    report["leaked"] = leaks()
    (work / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
