"""A simulated ``pycuda.driver`` with pycuda's threading rules, and a ledger of device memory.

pycuda's rules, as its C++ core (cuda.hpp) applies them: a context is current per thread (push/pop on the
calling thread's stack); allocating, copying and making streams need a current context; freeing an allocation
whose context is not current on the calling thread re-activates it only on the thread that made the context,
and on any other thread the free fails: pycuda warns "could not be cleaned up" and the memory stays allocated
(leaked). Device memory is host bytearrays keyed by fake device addresses, so TensorRT's simulated engines can
read inputs and write outputs where the project told them to.
"""

from __future__ import annotations

import itertools
import threading
import warnings
from typing import Any

import numpy as np

TOTAL_MEMORY = 143771 * 2**20  # an H200
_ADDRESSES = itertools.count(0x7F00_0000_0000, 1 << 20)
_LOCK = threading.Lock()
_LOCAL = threading.local()

LIVE: dict[int, DeviceAllocation] = {}  # address -> allocation
LEAKED: list[int] = []  # sizes of allocations whose free failed
STATS = {"allocs": 0, "frees": 0}
HIGH_WATER = {"bytes": 0}  # most bytes live at once since reset_high_water()


def reset_high_water() -> int:
    with _LOCK:
        HIGH_WATER["bytes"] = sum(a.size for a in LIVE.values())
        return HIGH_WATER["bytes"]


class LogicError(RuntimeError):
    pass


def _stack() -> list[Context]:
    if not hasattr(_LOCAL, "stack"):
        _LOCAL.stack = []
    return _LOCAL.stack


def current() -> Context | None:
    stack = _stack()
    return stack[-1] if stack else None


def require_context(what: str) -> Context:
    ctx = current()
    if ctx is None:
        raise LogicError(f"{what}: no CUDA context is current on thread {threading.current_thread().name}")
    return ctx


def live_bytes() -> int:
    with _LOCK:
        return sum(a.size for a in LIVE.values())


def init(flags: int = 0) -> None:
    pass


def mem_get_info() -> tuple[int, int]:
    require_context("mem_get_info")
    return TOTAL_MEMORY - live_bytes(), TOTAL_MEMORY


class Context:
    def __init__(self) -> None:
        self.thread = threading.get_ident()  # the thread pycuda lets re-activate it implicitly

    def push(self) -> None:
        _stack().append(self)

    @staticmethod
    def pop() -> None:
        stack = _stack()
        if not stack:
            raise LogicError("context::pop: no context is current on this thread")
        stack.pop()

    def detach(self) -> None:
        pass


class Device:
    _contexts: dict[int, Context] = {}

    def __init__(self, index: int) -> None:
        self.index = index

    @staticmethod
    def count() -> int:
        return 1

    def name(self) -> str:
        return "NVIDIA H200 (simulated)"

    def compute_capability(self) -> tuple[int, int]:
        return (9, 0)

    def total_memory(self) -> int:
        return TOTAL_MEMORY

    def retain_primary_context(self) -> Context:
        with _LOCK:
            return self._contexts.setdefault(self.index, Context())


class DeviceAllocation:
    def __init__(self, size: int, context: Context) -> None:
        self.size = int(size)
        self.context = context
        self.address = next(_ADDRESSES)
        self.data = bytearray(self.size)
        self.freed = False
        with _LOCK:
            LIVE[self.address] = self
            STATS["allocs"] += 1
            HIGH_WATER["bytes"] = max(HIGH_WATER["bytes"], sum(a.size for a in LIVE.values()))

    def __int__(self) -> int:
        return self.address

    __index__ = __int__

    def free(self) -> None:
        if self.freed:
            return
        if current() is not self.context and threading.get_ident() != self.context.thread:
            # pycuda: scoped_context_activation throws cannot_activate_out_of_thread_context; the free is skipped.
            warnings.warn("a clean-up operation failed (dead context maybe?)\ncuMemFree failed: cannot activate "
                          "out-of-thread context: device allocation could not be cleaned up", stacklevel=2)
            with _LOCK:
                LEAKED.append(self.size)
            self.freed = True  # pycuda forgets it; the device memory stays allocated
            return
        self.freed = True
        with _LOCK:
            LIVE.pop(self.address, None)
            STATS["frees"] += 1

    def __del__(self) -> None:
        self.free()


def mem_alloc(nbytes: int) -> DeviceAllocation:
    return DeviceAllocation(nbytes, require_context("mem_alloc"))


def lookup(address: int, nbytes: int) -> memoryview:
    """The device bytes at ``address`` (an allocation's start, as TensorRT is given them)."""
    with _LOCK:
        allocation = LIVE.get(int(address))
    if allocation is None:
        raise LogicError(f"address {address:#x} is not a live device allocation")
    if nbytes > allocation.size:
        raise LogicError(f"{nbytes} bytes at {address:#x} overrun its {allocation.size}-byte allocation")
    return memoryview(allocation.data)[:nbytes]


def memcpy_htod(dest: Any, src: np.ndarray) -> None:
    require_context("memcpy_htod")
    data = np.ascontiguousarray(src).view(np.uint8).reshape(-1)
    lookup(int(dest), data.nbytes)[:] = data.tobytes()


def memcpy_dtoh(dest: np.ndarray, src: Any) -> None:
    require_context("memcpy_dtoh")
    flat = dest.reshape(-1).view(np.uint8)
    flat[:] = np.frombuffer(lookup(int(src), flat.nbytes), np.uint8)


class Stream:
    _handles = itertools.count(0x5000)

    def __init__(self, flags: int = 0) -> None:
        require_context("Stream")
        self.handle = next(self._handles)

    def synchronize(self) -> None:
        require_context("Stream.synchronize")
