"""The memory estimate, the budget and admission at the CLI edge (issue 21). The measured side is in
scripts/measure_memory.py and the README table; the cgroup tests with a real server are in
tests/server/test_server_memory.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from wanrt.engine.budget import cgroup_memory_limit, host_memory_budget, parse_size
from wanrt.engine.memory import MemoryEstimator, profile_graph
from wanrt.engine.request import GenerationRequest
from wanrt.errors import InsufficientMemoryError, InvalidRequestError

TOKENS, HIDDEN, HEADS = "tokens", 16, 2


def _save(tmp_path: Path, name: str, nodes: list, opsets: list) -> Path:
    shape = ["batch", TOKENS, HIDDEN]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("q", "k", "v")]
    graph = helper.make_graph(nodes, name, inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return path


def _profile(path: Path):
    probes = [(2, 64.0, {"batch": 2, TOKENS: 64}), (2, 512.0, {"batch": 2, TOKENS: 512}),
              (1, 64.0, {"batch": 1, TOKENS: 64})]
    return profile_graph(path, path.stem, probes)


def _explicit_attention(tmp_path: Path) -> Path:
    """MatMul -> Softmax -> MatMul: the (tokens x tokens) scores are graph tensors."""
    kt = helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1])
    scores = helper.make_node("MatMul", ["q", "kt"], ["scores"])
    probs = helper.make_node("Softmax", ["scores"], ["probs"], axis=-1)
    out = helper.make_node("MatMul", ["probs", "v"], ["out"])
    return _save(tmp_path, "explicit", [kt, scores, probs, out], [helper.make_opsetid("", 18)])


def test_materialised_attention_gives_a_quadratic_term(tmp_path):
    profile = _profile(_explicit_attention(tmp_path))
    assert profile.has_quadratic_term
    small, large = profile.peak_bytes(1, 1000), profile.peak_bytes(1, 2000)
    # Two (tokens x tokens) float32 matrices live at once (scores, then probabilities) dominate.
    assert large / small == pytest.approx(4.0, rel=0.05)
    assert profile.peak_bytes(1, 2000) >= 2 * 4 * 2000 * 2000
    assert profile.peak_bytes(2, 2000) == pytest.approx(2 * profile.peak_bytes(1, 2000), rel=0.01)


def test_fused_attention_is_linear_only_where_the_kernel_does_not_build_the_scores(tmp_path):
    tiled = _save(tmp_path, "mha", [helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["out"],
                                                     domain="com.microsoft", num_heads=HEADS)],
                  [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    whole = _save(tmp_path, "attention", [helper.make_node("Attention", ["q", "k", "v"], ["out"],
                                                           q_num_heads=HEADS, kv_num_heads=HEADS)],
                  [helper.make_opsetid("", 23)])
    linear = _profile(tiled)
    assert not linear.has_quadratic_term
    assert linear.peak_bytes(1, 2000) == pytest.approx(2 * linear.peak_bytes(1, 1000), rel=0.01)
    # onnxruntime's CPU kernel for ONNX Attention builds the whole probability matrix (see _workspace).
    quadratic = _profile(whole)
    assert quadratic.has_quadratic_term
    assert quadratic.peak_bytes(1, 2000) >= 4 * HEADS * 2000 * 2000


@pytest.fixture(scope="module")
def reef_estimator():
    from wanrt.engine.artifact import load_artifact
    from wanrt.engine.graph_forms import onnxruntime_file
    from wanrt.reef import default_model_dir

    art = default_model_dir()
    manifest = load_artifact(art, verify_hashes=False)
    # The files the onnxruntime backend runs (their linear-memory attention form), as admission estimates them.
    return MemoryEstimator({n: art / onnxruntime_file(g) for n, g in manifest.graphs.items()}, manifest.spec,
                           resident=0)


def test_the_reef_model_runs_attention_in_linear_memory_and_memory_grows_with_every_dimension(reef_estimator):
    assert reef_estimator.quadratic_graphs == []  # issue 31: the shipped model re-exported with fused attention
    base = GenerationRequest(prompt="x", frames=17, height=96, width=96)

    def denoise(**change: object) -> int:
        return reef_estimator.estimate(GenerationRequest(**{**base.__dict__, **change})).stages["denoise"]

    assert denoise(frames=33) > denoise() and denoise(height=192) > denoise() and denoise(width=192) > denoise()
    # Linear in tokens: 4.2x the latent frames (5 -> 21) costs at most that; it was 51 GiB at 81x384x640 before.
    assert denoise(frames=81, height=384, width=640) < 4.2 * denoise(frames=17, height=384, width=640)
    assert denoise(frames=81, height=384, width=640) < 1 << 30
    # Without classifier-free guidance the expert runs a batch of one.
    assert denoise(guidance=1.0, frames=81) < denoise(frames=81)


def test_the_standard_attention_form_is_quadratic_on_the_cpu():
    """TensorRT's form (ONNX Attention) would build every score matrix in onnxruntime's CPU kernel: the reason the
    onnxruntime backend loads the MultiHeadAttention form, and what the estimate says of each."""
    from wanrt.engine.artifact import load_artifact
    from wanrt.reef import default_model_dir

    art = default_model_dir()
    manifest = load_artifact(art, verify_hashes=False)
    standard = MemoryEstimator({n: art / g["file"] for n, g in manifest.graphs.items()}, manifest.spec, resident=0)
    assert {"transformer", "transformer_2"} <= set(standard.quadratic_graphs)


def test_parse_size():
    assert parse_size("memory_budget", "6G") == 6 << 30
    assert parse_size("memory_budget", "512MiB") == 512 << 20
    assert parse_size("memory_budget", "1.5g") == 3 << 29
    assert parse_size("memory_budget", "4096") == 4096
    for bad in ("", "6X", "-1G", "0"):
        with pytest.raises(InvalidRequestError, match="memory_budget"):
            parse_size("memory_budget", bad)


def test_cgroup_limit_v1_takes_the_tightest_ancestor(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("5:cpu:/x\n4:memory:/outer/inner\n0::/\n")
    memory = tmp_path / "memory"
    for path, value in ((memory, "9223372036854771712"), (memory / "outer", "3221225472"),
                        (memory / "outer" / "inner", "9223372036854771712")):
        path.mkdir(parents=True, exist_ok=True)
        (path / "memory.limit_in_bytes").write_text(value + "\n")
    assert cgroup_memory_limit(proc, tmp_path) == (3 << 30, memory / "outer" / "memory.limit_in_bytes")
    (memory / "outer" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert cgroup_memory_limit(proc, tmp_path) is None


def test_cgroup_limit_v2(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("0::/pod/ctr\n")
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    (tmp_path / "pod" / "ctr").mkdir(parents=True)
    (tmp_path / "pod" / "memory.max").write_text("max\n")
    (tmp_path / "pod" / "ctr" / "memory.max").write_text(f"{6 << 30}\n")
    assert cgroup_memory_limit(proc, tmp_path) == (6 << 30, tmp_path / "pod" / "ctr" / "memory.max")


def test_default_budget_is_below_what_the_process_may_use():
    budget = host_memory_budget()
    limit = cgroup_memory_limit()
    from wanrt.engine.budget import physical_memory

    ceiling = min(physical_memory(), limit[0] if limit else physical_memory())
    assert 0 < budget.bytes < ceiling
    assert host_memory_budget(1 << 30).bytes == 1 << 30


def test_generate_refuses_a_request_over_the_budget_before_running(tmp_path):
    from wanrt.cli import main

    out = tmp_path / "clip.mp4"
    code = main(["generate", "--prompt", "a turtle", "--frames", "81", "--height", "384", "--width", "640",
                 "--steps", "1", "--memory-budget", "512M", "--out", str(out)])
    assert code == 2
    assert not out.exists()


def test_the_refusal_names_the_estimate_the_budget_and_what_fits(tmp_path):
    # A process of its own: the memory already held counts against the budget, and a test process holds
    # whatever earlier tests loaded.
    done = subprocess.run([sys.executable, "-m", "wanrt.cli", "generate", "--prompt", "a turtle", "--frames", "81",
                           "--height", "384", "--width", "640", "--steps", "1", "--memory-budget", "512M",
                           "--out", str(tmp_path / "clip.mp4")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert not (tmp_path / "clip.mp4").exists()
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("wanrt: error: 81 frames at 384x640 need an estimated ")
    assert "over the memory budget of 512 MiB (--memory-budget)" in line
    # What fits: fewer frames at that size and/or a smaller size at 81 frames (the decoder's step, the peak at this
    # size, does not shrink with fewer frames).
    assert re.search(r"; at most (\d+ frames at 384x640|\d+x\d+ at 81 frames)( or at most \d+x\d+ at 81 frames)? "
                     r"would fit$", line), line


def test_an_allocation_failure_at_run_time_is_one_line_and_exit_2(tmp_path):
    """The estimate is bypassed (a huge --memory-budget) and the address space capped, so onnxruntime's
    allocation of the first expert step's activations (about 2 GiB at this size) really fails."""
    import resource

    limit = 2 << 30

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = subprocess.run([sys.executable, "-m", "wanrt.cli", "generate", "--prompt", "a turtle", "--frames", "129",
                           "--height", "768", "--width", "1024", "--steps", "1", "--memory-budget", "1T",
                           "--out", str(tmp_path / "clip.mp4")], capture_output=True, text=True, preexec_fn=cap,
                          timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "wanrt: error: out of memory while generating 129 frames at 768x1024" in done.stderr


def test_status_for_maps_memory_errors_to_resource_exhausted():
    from wanrt.server.frontdoor import Code, status_for
    from wanrt.server.service import grpc_status

    for error in (InsufficientMemoryError("too big"), MemoryError()):
        assert grpc_status(status_for(error).code) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert status_for(error).code == Code.RESOURCE_EXHAUSTED and status_for(error).reason == "memory"


def test_allocation_failures_are_recognised():
    from wanrt.engine.pipeline import is_allocation_failure

    assert is_allocation_failure(MemoryError())
    assert is_allocation_failure(RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate "
                                              "memory for requested buffer of size 55297376256"))
    assert is_allocation_failure(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate"))
    assert not is_allocation_failure(RuntimeError("shape mismatch"))
    assert not is_allocation_failure(ValueError(np.float32(1)))


def test_the_budget_lowers_the_reported_limits_to_what_fits(reef_estimator):
    from wanrt.engine.admission import Admission
    from wanrt.engine.budget import MemoryBudget
    from wanrt.engine.request import Limits

    admission = Admission(reef_estimator, MemoryBudget(400 << 20, "test"), Limits())
    lowered = admission.lowered(Limits())
    side = lowered.max_height
    assert lowered.max_width == side < Limits().max_height
    one_frame = GenerationRequest(prompt="x", frames=1, height=side, width=side, steps=1)
    assert admission.fits(one_frame)
    assert not admission.fits(GenerationRequest(prompt="x", frames=1, height=side + 16, width=side + 16, steps=1))
    with pytest.raises(InsufficientMemoryError, match=r"at most \d+x\d+ at 1 frames would fit"):
        admission.check(GenerationRequest(prompt="x", frames=1, height=side + 16, width=side + 16, steps=1))


@pytest.mark.slow  # exports each drawn model (once per session)
def test_drawn_model_estimate_is_linear_and_covers_the_measured_peak(drawn_wan, drawn_artifact_dir, tmp_path):
    """A model never seen (tests/drawn_models.py: patch 1 names its latent axes differently): the estimate reads
    its graphs, no stage grows with the square of the tokens, and a real `generate` process stays under it."""
    import json

    from wanrt.engine.artifact import load_artifact
    from wanrt.engine.graph_forms import onnxruntime_file

    manifest = load_artifact(drawn_artifact_dir)
    graphs = {n: drawn_artifact_dir / onnxruntime_file(g) for n, g in manifest.graphs.items()}
    estimator = MemoryEstimator(graphs, manifest.spec, resident=0)
    assert not set(estimator.quadratic_graphs) & set(manifest.spec.experts)

    def denoise(frames: int) -> int:
        return estimator.estimate(GenerationRequest(prompt="x", frames=frames, height=256, width=256)).stages[
            "denoise"]

    assert denoise(81) < 5 * denoise(17)  # 21 latent frames against 5: linear, not 17x
    script = Path(__file__).parents[1] / "scripts" / "measure_memory.py"
    done = subprocess.run([sys.executable, str(script), "--model", str(drawn_artifact_dir), "--one", "33:128x128"],
                          capture_output=True, text=True, timeout=600, env={**os.environ,
                                                                             "WANRT_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    point = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{drawn_wan.id} 33x128x128: estimate {point['estimate'] >> 20} MiB, measured {point['measured'] >> 20} MiB")
    assert point["measured"] <= point["estimate"]
