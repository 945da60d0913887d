"""The real TensorRT Python bindings from the registry, importable without NVIDIA's libraries.

`tensorrt-cu12-bindings` (TensorRT 10) and `tensorrt-cu13-bindings` (TensorRT 11) are small real wheels; the
libraries they link (libnvinfer, libnvonnxparser, libnvinfer_plugin) come from download-stub wheels that cannot
install here. So the module is imported over stub libraries built with gcc that export the C entry points it
resolves; its classes, enums and pybind11 signatures are then that version's real API (creating a real Builder
or Runtime returns nothing: trtsim simulates those).

Wheels and stubs are cached (WANRT_TRT_BINDINGS_CACHE, default ~/.cache/wanrt/tensorrt-bindings): downloaded
once per machine, so a CI run downloads them once.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

# major -> (distribution, version). 10.16 is the newest 10.x wheel on the registry (10.14 is the floor wanrt
# needs: its ONNX parser reads the Attention op); 11.4 the newest 11.x.
BINDINGS = {10: ("tensorrt-cu12-bindings", "10.16.1.11"), 11: ("tensorrt-cu13-bindings", "11.4.0.106")}
LIBRARIES = ("nvinfer", "nvonnxparser", "nvinfer_plugin")
# What `nm -D --undefined-only tensorrt.so` lists from those libraries, in both majors.
_STUB_C = r"""
#include <stddef.h>
void *createInferBuilder_INTERNAL(void *logger, int version) { return NULL; }
void *createInferRuntime_INTERNAL(void *logger, int version) { return NULL; }
void *createInferRefitter_INTERNAL(void *engine, void *logger, int version) { return NULL; }
void *createNvOnnxParser_INTERNAL(void *network, void *logger, int version) { return NULL; }
void *createNvOnnxParserRefitter_INTERNAL(void *refitter, void *logger, int version) { return NULL; }
void *getBuilderPluginRegistry(int capability) { return NULL; }
void *getPluginRegistry(void) { return NULL; }
int initLibNvInferPlugins(void *logger, const char *ns) { return 1; }
int getInferLibVersion(void) { return STUB_VERSION; }
int getNvOnnxParserVersion(void) { return STUB_VERSION; }
"""


class Unavailable(Exception):
    """Why the bindings cannot be prepared here (no gcc, no registry)."""


def cache_dir() -> Path:
    return Path(os.environ.get("WANRT_TRT_BINDINGS_CACHE", Path.home() / ".cache" / "wanrt" / "tensorrt-bindings"))


def prepare(major: int) -> tuple[Path, Path]:
    """(folder holding the ``tensorrt_bindings`` package, folder of stub libraries) for TensorRT ``major``."""
    dist, version = BINDINGS[major]
    root = cache_dir() / f"{dist}-{version}"
    site, libs = root / "site", root / "lib"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:  # two test processes never half-extract the same cache
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (site / "tensorrt_bindings" / "tensorrt.so").is_file():
            _download(dist, version, root)
        if not all((libs / f"lib{name}.so.{major}").is_file() for name in LIBRARIES):
            _build_stubs(major, version, libs)
    return site, libs


def _download(dist: str, version: str, root: Path) -> None:
    wheels = root / "wheel"
    wheels.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(wheels),
                             f"{dist}=={version}"], capture_output=True, text=True)
    found = sorted(wheels.glob("*.whl"))
    if result.returncode != 0 or not found:
        raise Unavailable(f"pip download {dist}=={version} failed: {result.stderr.strip()[-500:]}")
    site = root / "site"
    shutil.rmtree(site, ignore_errors=True)
    with zipfile.ZipFile(found[0]) as wheel:
        wheel.extractall(site)


def _build_stubs(major: int, version: str, libs: Path) -> None:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise Unavailable("no C compiler (gcc) to build the stub libnvinfer (deploy/ci/install-tools.sh installs it)")
    libs.mkdir(parents=True, exist_ok=True)
    source = libs / "stub.c"
    source.write_text(_STUB_C)
    parts = [int(v) for v in version.split(".")[:3]]
    number = parts[0] * 10000 + parts[1] * 100 + parts[2]
    for name in LIBRARIES:
        target = libs / f"lib{name}.so.{major}"
        subprocess.run([gcc, "-shared", "-fPIC", f"-DSTUB_VERSION={number}", f"-Wl,-soname,{target.name}", "-o",
                        str(target), str(source)], check=True, capture_output=True)
