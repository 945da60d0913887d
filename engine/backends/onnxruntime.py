"""onnxruntime backend: runs an exported artifact's graphs (CPU reference; CUDA where onnxruntime-gpu has it)."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from wanrt.engine.backends.base import DecoderState
from wanrt.engine.device import cuda_driver_problem, parse_device
from wanrt.errors import ArtifactError, DeviceUnavailableError

_CUDA_PROVIDER_LIBRARY = "libonnxruntime_providers_cuda.so"


def cuda_problem(index: int) -> str | None:
    """Why onnxruntime cannot run on CUDA device ``index`` (provider, driver, library), or None.

    Asked before any session exists: onnxruntime's own answer is a dozen logged errors per session and then a
    silent run on the CPU provider."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (f"onnxruntime {ort.__version__} here has no CUDA provider (the CPU package is installed; "
                "install onnxruntime-gpu instead of onnxruntime)")
    problem = cuda_driver_problem(index)
    if problem is not None:
        return problem
    capi = Path(ort.__file__).parent / "capi"
    try:
        # The CUDA provider's own dependencies (CUDA runtime, cuBLAS, cuDNN): loading it names the first missing.
        ctypes.CDLL(os.fspath(capi / "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(os.fspath(capi / _CUDA_PROVIDER_LIBRARY))
    except OSError as err:
        return f"onnxruntime {ort.__version__}'s CUDA provider cannot load a library it needs: {err}"
    return None


def providers_for(device: str) -> list[object]:
    """``cpu``, ``cuda`` or ``cuda:N`` -> onnxruntime's provider list (one GPU per worker)."""
    parsed = parse_device(device)
    if not parsed.is_cuda:
        return ["CPUExecutionProvider"]
    return [("CUDAExecutionProvider", {"device_id": parsed.index}), "CPUExecutionProvider"]


def session_options(session_config: Mapping[str, str]) -> object:
    """onnxruntime session options with the given config entries (an artifact's
    ``Manifest.onnxruntime_session_config``: what its quantized graphs were measured and must run with)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    for key, value in session_config.items():
        options.add_session_config_entry(key, value)
    return options


def cpu_session(path: Path, session_config: Mapping[str, str] | None = None) -> object:
    """One graph on onnxruntime's CPU provider (a GPU backend's text encoder kept off the GPU)."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(os.fspath(path), session_options(session_config or {}),
                                    providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own untyped errors for unreadable graphs
        raise ArtifactError(f"onnxruntime cannot load {Path(path).name}: {err}") from None


def return_freed_memory() -> None:
    """glibc raises its mmap threshold after freeing a large block (up to 32 MB), after which video-sized
    tensors come from the heap and stay in the process when freed; a fixed threshold hands them back."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass  # not glibc: its allocator has its own policy


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
# 1 MiB: what the estimate was measured with (README, "Memory admission"). It costs speed on small clips
# (1.6x on the demo clip, scripts/measure_memory.py --speed 17:96x96); 16 MiB costs nothing there but the heap
# then keeps mid-sized tensors and 17 frames at 256x256 peaked 8% above the estimate.
MMAP_THRESHOLD = 1 << 20


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, art_dir: Path, graph_files: Mapping[str, str], *, device: str = "cpu",
                 session_config: Mapping[str, str] | None = None) -> None:
        import onnxruntime as ort

        providers = providers_for(device)
        on_cuda = parse_device(device).is_cuda
        options = session_options(session_config or {})
        # Memory that follows the live tensors (what engine/memory.py estimates and admission relies on): no
        # CPU arena (it keeps each session's peak for good, so stages would add up) and no memory pattern
        # (one block per run, planned with gaps); freed buffers go back to the system at once.
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        return_freed_memory()
        self._sessions = {}
        for name, file in graph_files.items():
            try:
                self._sessions[name] = ort.InferenceSession(os.fspath(Path(art_dir) / file), options,
                                                            providers=providers)
            except Exception as err:  # onnxruntime raises its own untyped errors for unreadable graphs
                raise ArtifactError(f"onnxruntime cannot load {file}: {err}") from None
            if on_cuda and "CUDAExecutionProvider" not in self._sessions[name].get_providers():
                # The probe passed but onnxruntime fell back anyway: refuse rather than serve from the CPU.
                raise DeviceUnavailableError(device, f"onnxruntime put {file} on the CPU, not on the GPU "
                                                     "(its log above says why)")
        # The step decoder's cache inputs, in the order the init/step graphs emit them after the frames.
        self._cache_names = [i.name for i in self._sessions["vae_decoder_step"].get_inputs()][1:]

    def encode_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self._sessions["text_encoder"].run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]

    def predict_noise(self, expert: str, latents: np.ndarray, timestep: np.ndarray, text: np.ndarray) -> np.ndarray:
        feeds = {"hidden_states": latents, "timestep": timestep, "encoder_hidden_states": text}
        return self._sessions[expert].run(None, feeds)[0]

    def decode_first(self, latent: np.ndarray) -> tuple[np.ndarray, DecoderState]:
        frames, *caches = self._sessions["vae_decoder_init"].run(None, {"latent": latent})
        return frames, caches

    def decode_next(self, latent: np.ndarray, state: DecoderState) -> tuple[np.ndarray, DecoderState]:
        feeds = {"latent": latent, **dict(zip(self._cache_names, state, strict=True))}
        frames, *caches = self._sessions["vae_decoder_step"].run(None, feeds)
        return frames, caches
