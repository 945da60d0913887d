"""Helpers for the TensorRT tests: small serving limits and a folder of stand-in engine files.

The stand-in files exercise engines.json's hash bookkeeping only; nothing ever runs them (GPU tests build
real engines).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from wanrt.engine.artifact import MANIFEST_NAME, Manifest, sha256_file
from wanrt.engine.request import Limits
from wanrt.engine.tensorrt.engine_manifest import (
    FORMAT_VERSION,
    BuilderOptions,
    EngineEntry,
    EnginesManifest,
    MemoryOptions,
    RuntimeInfo,
    write_engines_manifest,
)
from wanrt.engine.tensorrt.profiles import VideoShape, compute_profiles

# Small enough that onnxruntime runs whole pipelines on CPU in seconds, large enough for 3 latent frames and
# distinct latent height/width (a swapped h/w cannot pass).
MAX_FRAMES, MAX_HEIGHT, MAX_WIDTH = 9, 64, 48
RUNTIME = RuntimeInfo(tensorrt_version="10.16.1.11", device_name="NVIDIA H100 80GB HBM3", compute_capability="9.0")


def write_standin_engines(engines_dir: Path, art_dir: Path, artifact: Manifest, limits: Limits,
                          runtime: RuntimeInfo = RUNTIME) -> EnginesManifest:
    """An engines folder whose engines.json is what build_engines would write, with placeholder engine bytes."""
    engines_dir.mkdir(parents=True, exist_ok=True)
    profiles = compute_profiles(artifact, limits)
    entries = {}
    for graph, entry in artifact.graphs.items():
        data = f"stand-in engine bytes for {graph}".encode()
        (engines_dir / f"{graph}.plan").write_bytes(data)
        entries[graph] = EngineEntry(f"{graph}.plan", hashlib.sha256(data).hexdigest(), entry["file"],
                                     artifact.files[entry["file"]], "bf16", False, (profiles[graph],))
    manifest = EnginesManifest(
        FORMAT_VERSION,
        {"path": os.path.relpath(art_dir.resolve(), engines_dir.resolve()),
         "manifest_sha256": sha256_file(art_dir / MANIFEST_NAME)},
        runtime, "bf16", limits, VideoShape(limits.max_frames, limits.max_height, limits.max_width),
        BuilderOptions(), MemoryOptions("resident"), entries, "2026-01-01T00:00:00Z", "0.1.0",
    )
    write_engines_manifest(engines_dir, manifest)
    return manifest


def tensorrt_unavailable() -> str | None:
    """Why TensorRT cannot be used here, or None (the backend's own check: importable, and the supported major)."""
    from wanrt.engine.tensorrt.engine import tensorrt_module
    from wanrt.errors import BackendUnavailableError

    try:
        tensorrt_module()
    except BackendUnavailableError as err:
        return str(err)
    return None


def gpu_unavailable() -> str | None:
    """Why the GPU tests cannot run here (no usable TensorRT, no pycuda, no CUDA device), or None."""
    reason = tensorrt_unavailable()
    if reason is not None:
        return reason
    try:
        import pycuda.driver as cuda

        cuda.init()
        count = cuda.Device.count()
    except Exception as err:  # ImportError, or pycuda's LogicError/RuntimeError when there is no driver
        return f"no CUDA through pycuda: {err!r}"
    return None if count > 0 else "no CUDA device"
