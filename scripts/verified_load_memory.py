"""Host memory of loading a graph whose weights lie in ONNX external data, three ways, side by side.

- ``path``: onnxruntime opens the files itself (what wanrt did before: the checked file is opened again, by
  name, after its hash was taken; onnxruntime maps the weights from the file);
- ``verified``: wanrt's loader (engine/model_files.py + engine/backends/onnxruntime.py): the data file read once
  through the opened folder, hashed as read, its MatMul weights handed to onnxruntime as views of that buffer;
- ``files-in-memory``: the same hashed buffer given to onnxruntime's add_external_initializers_from_files_in_memory,
  which copies it while the session is made.

Each runs in its own process; the figures are the process's peak resident memory (VmHWM) after the session is
made and after the runs, and the time of one run. Usage: python scripts/verified_load_memory.py [--gib 1.0] [--seed N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 4096  # one weight: DIM x DIM float32 = 64 MiB
TOKENS, RUNS = 256, 3  # each run multiplies 256 tokens through the chain


def build(folder: Path, gib: float, seed: int) -> dict[str, str]:
    """A chain of MatMuls whose weights (random, drawn from ``seed``) fill ``gib`` GiB of external data."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    count = max(1, round(gib * (1 << 30) / (DIM * DIM * 4)))
    nodes, weights, previous = [], [], "x"
    for i in range(count):
        weight = (rng.standard_normal((DIM, DIM), dtype=np.float32) / np.sqrt(DIM)).astype(np.float32)
        weights.append(numpy_helper.from_array(weight, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [previous, f"w{i}"], [f"y{i}"]))
        previous = f"y{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["tokens", DIM])],
                              [helper.make_tensor_value_info(previous, TensorProto.FLOAT, ["tokens", DIM])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save_model(model, str(folder / "graph.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="graph.onnx.data", size_threshold=0)
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in ("graph.onnx",
                                                                                          "graph.onnx.data")}


def _peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def child(mode: str, folder: Path, hashes: dict[str, str]) -> dict[str, float]:
    import onnxruntime as ort

    started = time.perf_counter()
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False
    if mode == "path":
        session = ort.InferenceSession(str(folder / "graph.onnx"), options, providers=["CPUExecutionProvider"])
    elif mode == "verified":
        from wanrt.engine.backends.onnxruntime import GraphReader
        from wanrt.engine.model_files import ModelFolder

        scratch = tempfile.mkdtemp(prefix="wanrt-bench-")
        reader = GraphReader(ModelFolder(folder, strict=True), hashes, Path(scratch))

        def make_options() -> object:
            fresh = ort.SessionOptions()
            fresh.enable_cpu_mem_arena = False
            return fresh

        session = reader.session("graph", "graph.onnx", make_options, ["CPUExecutionProvider"])
    else:
        from wanrt.engine.model_files import ModelFolder

        opened = ModelFolder(folder, strict=True)
        graph = opened.read("graph.onnx", hashes["graph.onnx"])
        data = opened.read("graph.onnx.data", hashes["graph.onnx.data"])
        options.add_external_initializers_from_files_in_memory(["graph.onnx.data"], [data.data], [data.data.size])
        session = ort.InferenceSession(graph.tobytes(), options, providers=["CPUExecutionProvider"])
        del data
    loaded = _peak_kib()
    load_s = time.perf_counter() - started
    x = np.random.default_rng(0).standard_normal((TOKENS, DIM)).astype(np.float32)
    session.run(None, {"x": x})  # first run: one-off allocations
    started = time.perf_counter()
    for _ in range(RUNS):
        out = session.run(None, {"x": x})[0]
    return {"after_load_gib": loaded / (1 << 20), "after_run_gib": _peak_kib() / (1 << 20), "load_s": load_s,
            "run_s": (time.perf_counter() - started) / RUNS, "checksum": float(np.abs(out).sum())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="external data size (default %(default)s GiB)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, folder, hashes = args.child
        print(json.dumps(child(mode, Path(folder), json.loads(hashes))))
        return 0
    seed = np.random.SeedSequence().entropy % (1 << 31) if args.seed is None else args.seed
    with tempfile.TemporaryDirectory(prefix="wanrt-verified-load-") as tmp:
        folder = Path(tmp)
        hashes = build(folder, args.gib, seed)
        size = (folder / "graph.onnx.data").stat().st_size / (1 << 30)
        print(f"seed {seed}: {size:.2f} GiB of MatMul weights in graph.onnx.data; peak RSS (VmHWM) per process")
        print("| load | after the session is made | after the runs | load time | one run (256 tokens) | checksum |")
        print("|---|---|---|---|---|---|")
        for mode in ("path", "verified", "files-in-memory"):
            done = subprocess.run([sys.executable, __file__, "--child", mode, str(folder), json.dumps(hashes)],
                                  capture_output=True, text=True, check=True, env={**os.environ})
            r = json.loads(done.stdout.splitlines()[-1])
            print(f"| {mode} | {r['after_load_gib']:.2f} GiB | {r['after_run_gib']:.2f} GiB | {r['load_s']:.2f} s | "
                  f"{r['run_s']:.2f} s | {r['checksum']:.6g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
