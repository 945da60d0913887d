"""`--device cuda` never falls back silently: where the device cannot be used, generate and serve exit 2 with one
line saying why (driver, provider, library); only `--device auto` runs on the CPU, and logs that it does.

On a machine without a usable GPU (CI) the exits below are real: nothing is patched in the subprocess tests.
Where a GPU is usable, those tests skip (it would run on it)."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest

from wanrt.engine.device import Device, parse_device, resolve_device
from wanrt.errors import DeviceUnavailableError, InvalidRequestError

TINY = ["--frames", "1", "--height", "16", "--width", "16", "--steps", "1"]


def _cuda_problem(backend: str) -> str | None:
    from wanrt.engine.loader import usable_device

    try:
        usable_device("cuda", backend)
    except DeviceUnavailableError as err:
        return err.reason
    return None


def _wanrt(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wanrt.cli", *argv], capture_output=True, text=True,
                          timeout=timeout)


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("wanrt: error: --device cuda:0: "), stderr
    return lines[0]


@pytest.mark.parametrize(("backend", "why"), [
    ("onnxruntime", ("driver", "provider", "library", "libcuda", "onnxruntime")),
    ("torch", ("without CUDA", "driver", "libcuda")),
    ("tensorrt", ("TensorRT", "pycuda", "driver")),
])
def test_generate_on_an_unusable_gpu_exits_2_with_one_line(backend, why, tmp_path):
    if _cuda_problem(backend) is None:
        pytest.skip(f"CUDA is usable by the {backend} backend here")
    model = [] if backend == "onnxruntime" else ["--model", str(tmp_path)]  # the reef model, or none needed
    result = _wanrt("generate", "--backend", backend, *model, "--device", "cuda", "--prompt", "a ray", *TINY,
                    "--out", str(tmp_path / "clip.npy"))
    assert result.returncode == 2, result.stderr
    line = _one_line(result.stderr)
    assert any(word in line for word in why), line
    assert not (tmp_path / "clip.npy").exists()


def test_serve_on_an_unusable_gpu_exits_2_with_one_line(tmp_path):
    if _cuda_problem("onnxruntime") is None:
        pytest.skip("CUDA is usable by onnxruntime here")
    result = _wanrt("serve", "--device", "cuda", "--insecure", "--listen", "127.0.0.1:0", "--metrics-listen",
                    "127.0.0.1:0", "--audit-log", str(tmp_path / "audit.jsonl"))
    assert result.returncode == 2, result.stderr
    _one_line(result.stderr)
    assert result.stdout == ""  # never got as far as serving


def test_auto_runs_on_the_cpu_and_says_so(tmp_path):
    problem = _cuda_problem("onnxruntime")
    if problem is None:
        pytest.skip("CUDA is usable by onnxruntime here: auto would take it")
    result = _wanrt("generate", "--device", "auto", "--prompt", "a ray", *TINY, "--out", str(tmp_path / "c.npy"))
    assert result.returncode == 0, result.stderr
    assert "--device auto: the onnxruntime backend cannot use cuda:0" in result.stderr
    assert "running on the CPU" in result.stderr and problem in result.stderr
    assert np.load(tmp_path / "c.npy").shape == (1, 16, 16, 3)


def test_resolution_rules():
    usable = lambda index: None  # noqa: E731
    broken = lambda index: f"no CUDA device {index}"  # noqa: E731
    assert resolve_device("cpu", "onnxruntime", broken) == "cpu"
    assert resolve_device("cuda:1", "onnxruntime", usable) == "cuda:1"
    assert resolve_device("auto", "torch", usable) == "cuda:0"
    with pytest.raises(DeviceUnavailableError, match=r"^--device cuda:2: no CUDA device 2$") as err:
        resolve_device("cuda:2", "onnxruntime", broken)
    assert err.value.reason == "no CUDA device 2"
    # TensorRT has no CPU path: auto cannot fall back there.
    with pytest.raises(DeviceUnavailableError, match=r"--device auto \(cuda:0\): no CUDA device 0"):
        resolve_device("auto", "tensorrt", broken, cpu_capable=False)
    assert parse_device("auto") == Device("auto") and str(parse_device("auto")) == "auto"
    with pytest.raises(InvalidRequestError):
        resolve_device("gpu", "onnxruntime", usable)


def test_auto_falls_back_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="wanrt.engine"):
        assert resolve_device("auto", "onnxruntime", lambda index: "no NVIDIA driver") == "cpu"
    assert "no NVIDIA driver" in caplog.text and "running on the CPU" in caplog.text


def test_onnxruntime_falling_back_after_the_probe_is_refused(monkeypatch):
    """Belt and braces: should onnxruntime still put a graph on the CPU provider when CUDA was asked for, the
    backend refuses instead of serving from the CPU."""
    import wanrt.engine.backends.onnxruntime as ort_backend
    from wanrt.engine.artifact import load_artifact
    from wanrt.engine.graph_forms import onnxruntime_file
    from wanrt.reef import default_model_dir

    if _cuda_problem("onnxruntime") is None:
        pytest.skip("CUDA is usable by onnxruntime here")
    art = default_model_dir()
    manifest = load_artifact(art)
    graphs = {name: onnxruntime_file(entry) for name, entry in manifest.graphs.items()}
    with pytest.raises(DeviceUnavailableError, match="onnxruntime put .* on the CPU"):
        ort_backend.OnnxRuntimeBackend(art, graphs, device="cuda:0")
