"""The one parser of device strings (``cpu``, ``cuda``, ``cuda:N``, ``auto``), shared by every backend and by
`wanrt serve`, so the same mistake gets the same message and exit code whichever backend was asked for; and the
one place a device is resolved: ``cuda`` that cannot be used is an error (exit 2, one line saying why), never a
silent run on the CPU. Only ``auto`` falls back, and says so."""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import re
from collections.abc import Callable

from wanrt.errors import DeviceUnavailableError, InvalidRequestError

log = logging.getLogger("wanrt.engine")

_DEVICE = re.compile(r"(cpu)|(auto)|(cuda)(?::(\d+))?")
DEVICE_CHOICES = "cpu, cuda, cuda:N or auto"

# Why a backend cannot run on CUDA device N (driver, provider, library), or None when it can.
CudaProbe = Callable[[int], "str | None"]


@dataclasses.dataclass(frozen=True)
class Device:
    kind: str  # "cpu", "cuda" or "auto" (cuda:0 if the backend can use it, else the CPU, logged)
    index: int = 0  # the CUDA device ordinal ("cuda" is cuda:0); 0 for the CPU

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def __str__(self) -> str:
        return self.kind if self.kind in ("cpu", "auto") else f"cuda:{self.index}"


def parse_device(text: str) -> Device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``; anything else is InvalidRequestError on the ``device`` field."""
    match = _DEVICE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidRequestError("device", f"must be {DEVICE_CHOICES}, got {text!r}")
    if match.group(1):
        return Device("cpu")
    if match.group(2):
        return Device("auto")
    return Device("cuda", int(match.group(4) or 0))


def resolve_device(text: str, backend: str, probe: CudaProbe, *, cpu_capable: bool = True) -> str:
    """The device to run on: ``cpu`` as asked; ``cuda[:N]`` only if ``probe`` finds it usable, else
    DeviceUnavailableError with the probe's reason; ``auto``: cuda:0 when usable, else the CPU with a warning
    (or the error, for a backend that has no CPU path)."""
    device = parse_device(text)
    if device.kind == "cpu":
        return "cpu"
    target = Device("cuda", device.index)
    problem = probe(target.index)
    if problem is None:
        return str(target)
    if device.kind == "auto" and cpu_capable:
        log.warning("--device auto: the %s backend cannot use %s (%s); running on the CPU", backend, target, problem)
        return "cpu"
    raise DeviceUnavailableError(str(target) if device.kind == "cuda" else f"auto ({target})", problem)


def cuda_driver_problem(index: int) -> str | None:
    """Why the NVIDIA driver cannot give a process CUDA device ``index``, asked of libcuda itself (no CUDA
    toolkit, no torch needed), or None when it can."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as err:
        return f"no NVIDIA driver on this machine ({err})"
    status = cuda.cuInit(0)
    if status != 0:
        return f"the NVIDIA driver cannot initialise CUDA: {_cuda_error_name(cuda, status)}"
    count = ctypes.c_int(0)
    status = cuda.cuDeviceGetCount(ctypes.byref(count))
    if status != 0:
        return f"the NVIDIA driver cannot count devices: {_cuda_error_name(cuda, status)}"
    if index >= count.value:
        return f"no CUDA device {index} (the driver sees {count.value})"
    return None


def _cuda_error_name(cuda: ctypes.CDLL, status: int) -> str:
    name = ctypes.c_char_p()
    if cuda.cuGetErrorName(status, ctypes.byref(name)) == 0 and name.value:
        return name.value.decode()
    return f"CUresult {status}"
