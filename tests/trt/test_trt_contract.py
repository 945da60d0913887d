"""THE CONTRACT TEST: wanrt's TensorRT path against the real TensorRT 10 and 11 Python APIs, without a GPU.

For each major, a subprocess imports the registry's real binding wheel over stub libraries (contract/bindings.py)
behind checked proxies (contract/checked.py: any attribute the real class lacks, any call no pybind11 overload
accepts, fails), simulates execution with onnxruntime (contract/trtsim.py) and pycuda with its one-thread context
rule (contract/cudasim.py), and runs wanrt's own commands (contract/scenario.py): build-engines, generate and
serve with 20 jobs, verify. Outputs must equal onnxruntime's; device memory must return to its baseline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CONTRACT = Path(__file__).parent / "contract"
sys.path.insert(0, str(CONTRACT))
from bindings import BINDINGS, Unavailable, prepare  # noqa: E402

# Every TensorRT name the project may use; the test fails if it uses one not listed (review the new use, then
# add it) and prints them, so a reader sees the whole surface wanrt depends on.
EXPECTED_API = {
    "Builder", "Builder.build_serialized_network", "Builder.create_builder_config", "Builder.create_network",
    "Builder.create_optimization_profile", "BuilderFlag", "BuilderFlag.TF32", "BuilderFlag.WEIGHT_STREAMING",
    "ExecutionContextAllocationStrategy", "ExecutionContextAllocationStrategy.USER_MANAGED",
    "IBuilderConfig.add_optimization_profile", "IBuilderConfig.builder_optimization_level",
    "IBuilderConfig.create_timing_cache", "IBuilderConfig.get_timing_cache", "IBuilderConfig.set_flag",
    "IBuilderConfig.set_memory_pool_limit", "IBuilderConfig.set_timing_cache", "ICudaEngine.create_execution_context",
    "ICudaEngine.device_memory_size_v2", "ICudaEngine.get_device_memory_size_for_profile_v2",
    "ICudaEngine.get_tensor_dtype", "ICudaEngine.get_tensor_mode", "ICudaEngine.get_tensor_name",
    "ICudaEngine.num_io_tensors", "ICudaEngine.streamable_weights_size", "ICudaEngine.weight_streaming_budget_v2",
    "IExecutionContext.execute_async_v3", "IExecutionContext.get_tensor_shape", "IExecutionContext.set_device_memory",
    "IExecutionContext.set_input_shape", "IExecutionContext.set_optimization_profile_async",
    "IExecutionContext.set_tensor_address", "INetworkDefinition.get_input",
    "INetworkDefinition.num_inputs", "IOptimizationProfile.set_shape", "ITensor.name", "ITimingCache.serialize",
    "Logger", "MemoryPoolType", "MemoryPoolType.WORKSPACE", "NetworkDefinitionCreationFlag",
    "NetworkDefinitionCreationFlag.STRONGLY_TYPED", "OnnxParser", "OnnxParser.get_error", "OnnxParser.num_errors",
    "OnnxParser.parse_from_file", "Runtime", "Runtime.deserialize_cuda_engine", "TensorIOMode", "TensorIOMode.INPUT",
}


def _environment(major: int) -> dict[str, str]:
    try:
        site, libs = prepare(major)
    except Unavailable as err:
        pytest.skip(f"TensorRT {major} bindings unavailable here: {err}")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(CONTRACT / "shim"), str(CONTRACT), str(site),
                                         *filter(None, [env.get("PYTHONPATH")])])
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(libs), *filter(None, [env.get("LD_LIBRARY_PATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")
    env["WANRT_CONTRACT_NAMES"] = ",".join(sorted(EXPECTED_API))
    return env


def _scenario(major: int, art: Path, work: Path, *extra: str) -> dict:
    result = subprocess.run([sys.executable, str(CONTRACT / "scenario.py"), "--artifact", str(art), "--work",
                             str(work), *extra], env=_environment(major), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((work / "report.json").read_text())


@pytest.mark.parametrize("major", sorted(BINDINGS))
def test_contract(major, tiny_artifact_dir, tmp_path, capsys):
    report = _scenario(major, tiny_artifact_dir, tmp_path)
    assert report["tensorrt"] == BINDINGS[major][1]
    assert "error" not in report, report["error"]
    assert report["violations"] == []
    used = set(report["used"])
    with capsys.disabled():  # shown in every run's log, not only on failure
        print(f"\nTensorRT {report['tensorrt']} API used by wanrt ({len(used)} names, each checked against the real "
              f"class): " + ", ".join(sorted(used)))
    assert used <= EXPECTED_API, f"new TensorRT names in use (review, then list them): {sorted(used - EXPECTED_API)}"
    # Unexercised here: the parser's error path (a graph TensorRT cannot parse) and switching profiles (wanrt builds
    # one per engine today).
    assert EXPECTED_API - used <= {"OnnxParser.get_error", "OnnxParser.num_errors",
                                   "IExecutionContext.set_optimization_profile_async"}
    steps = report["steps"]

    # Strongly typed networks only; no precision flags; the experts streamable only when asked.
    assert report["built"] and all(b["strongly_typed"] for b in report["built"])
    assert all(set(b["flags"]) <= {"TF32", "WEIGHT_STREAMING"} for b in report["built"])
    assert sum("WEIGHT_STREAMING" in b["flags"] for b in report["built"]) == 2  # the two experts of one build
    # The parser gets the experts' attention as the standard ONNX Attention operator (TensorRT 10.14+ maps it
    # to its fused attention layer): never the onnxruntime-only MultiHeadAttention form, never a Softmax.
    experts = [b for b in report["built"] if Path(b["onnx"]).name.startswith("transformer")]
    assert experts and all("Attention" in b["op_types"] for b in experts), experts
    assert not any({"MultiHeadAttention", "Softmax"} & set(b["op_types"]) for b in report["built"])
    # The foreign timing cache was reported and replaced by this build's own.
    assert "was rejected by TensorRT" in steps["build"]["log"] and steps["build"]["cache_rebuilt"]
    assert "memory plan (resident, text encoder resident)" in steps["build"]["log"]
    assert "memory plan (per-stage, text encoder" in steps["build_per_stage"]
    assert "memory plan (streaming" in steps["build_streaming"]

    assert steps["generate"] == {"engines": True, "engines-per-stage": True, "engines-streaming": True}
    # Per stage, the two experts never share the GPU (not even while the backend measures them at load).
    assert steps["experts_on_gpu"] == {"engines": 2, "engines-per-stage": 1, "engines-streaming": 2}

    # The plan counts what the backend allocates: per stage, the most device bytes live at once equal the plan's
    # figure (its CUDA context and reserve aside), for every residency and text encoder placement.
    checked = {(c["residency"], c["text_encoder"]) for c in steps["plan_vs_ledger"]}
    assert checked == {(r, t) for r in ("resident", "per-stage", "streaming") for t in ("resident", "release", "cpu")}
    for case in steps["plan_vs_ledger"]:
        assert case["ledger"] == case["plan"], case["render"]
        assert case["engines_moved"] == 5  # the clips ran with no engine file on disk: swaps never re-read one
    serve = steps["serve"]
    assert serve["errors"] == [] and serve["rc"] == 0
    assert serve["jobs"] == 20 and serve["mismatches"] == []
    assert serve["after"] == serve["baseline"], "device memory did not return to its baseline after 20 jobs"
    assert serve["leaked"]["count"] == 0 and report["leaked"]["count"] == 0

    verify = steps["verify"]
    assert verify["rc"] == 0, verify["stderr"]
    assert verify["report"]["passed"] and len(verify["report"]["clips"]) == 2
    assert set(verify["report"]["networks"]) == {"text_encoder", "transformer", "transformer_2", "vae_decoder_init",
                                                 "vae_decoder_step"}
    torch_ref = steps["verify_torch"]
    assert torch_ref["rc"] == 0, torch_ref["stderr"]
    assert torch_ref["report"]["reference_kind"].startswith("torch bf16") and torch_ref["report"]["passed"]
    assert set(torch_ref["report"]["networks"]) == {"text_encoder", "transformer", "transformer_2"}
    assert torch_ref["report"]["shape"] == {"frames": 5, "height": 32, "width": 32}  # the engines' own, smaller
    strict = steps["verify_strict"]
    assert strict["rc"] == 1 and strict["passed"] is False and "past the thresholds" in strict["stderr"]


@pytest.mark.parametrize(("major", "planted", "message"), [
    (10, "Engine.run:execute_async_v3=execute_async_v4", "IExecutionContext has no attribute 'execute_async_v4'"),
    (11, "Engine.run:set_tensor_address(spec.name, buffer.ptr)=set_tensor_address(spec.name, buffer)",
     "IExecutionContext.set_tensor_address(str, DeviceBuffer) matches none of its overloads"),
    # The weakly typed way of TensorRT 10 (a precision builder flag): gone in 11.
    (11, "Engine.build:builder_flag_names(weight_streaming)=(*builder_flag_names(weight_streaming), 'BF16')",
     "BuilderFlag has no attribute 'BF16' in TensorRT 11.4.0.106"),
])
def test_a_planted_api_mistake_fails_the_contract(major, planted, message, tiny_artifact_dir, tmp_path):
    report = _scenario(major, tiny_artifact_dir, tmp_path, "--plant", planted)
    assert any(message in v for v in report["violations"]), report["violations"]
    assert "ContractViolation" in report["error"]


def test_a_free_without_the_context_current_leaks_and_fails_the_contract(tiny_artifact_dir, tmp_path):
    # What wanrt did before: a DeviceBuffer freed by the garbage collector on a gRPC worker thread, with the CUDA
    # context current only on the thread that loaded the engines. pycuda cannot free it there: it leaks.
    report = _scenario(10, tiny_artifact_dir, tmp_path, "--only-serve", "--plant",
                       "DeviceBuffer.free:with self._device.active():=if True:")
    serve = report["steps"]["serve"]
    assert serve["leaked"]["count"] > 0 and serve["after"]["live_bytes"] > serve["baseline"]["live_bytes"]


@pytest.mark.slow  # exports each drawn model (once per session)
def test_contract_on_a_drawn_model(drawn_wan, drawn_artifact_dir, tmp_path):
    """A model never seen (tests/drawn_models.py: its heads, head size, layers, patch and expert layout) builds
    through the real TensorRT 10 API and generates what onnxruntime generates from the same graphs."""
    report = _scenario(10, drawn_artifact_dir, tmp_path, "--only-generate")
    assert "error" not in report, report["error"]
    assert report["violations"] == []
    experts = [b for b in report["built"] if Path(b["onnx"]).name.startswith("transformer")]
    assert len(experts) == (2 if drawn_wan.two_experts else 1)
    assert all("Attention" in b["op_types"] and "Softmax" not in b["op_types"] for b in experts), experts
    assert report["steps"]["generate"] == {"engines": True}
