"""What a result was measured on: CPU and GPU model, driver, library versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from typing import Any

_LIBRARIES = ("wanrt", "torch", "onnxruntime-gpu", "onnxruntime", "diffusers", "transformers", "numpy", "tensorrt",
              "nvidia-modelopt")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gpu() -> dict[str, Any] | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    info: dict[str, Any] = {"name": torch.cuda.get_device_name(), "cuda": torch.version.cuda,
                            "memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)}
    try:
        info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["driver"] = None
    return info


def machine_info() -> dict[str, Any]:
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {"cpu": cpu_model(), "cpu_cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "gpu": _gpu(), "libraries": versions,
            "threads": {k: os.environ[k] for k in ("OMP_NUM_THREADS",) if k in os.environ}}
