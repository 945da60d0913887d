"""The one parser of device strings (``cpu``, ``cuda``, ``cuda:N``), shared by every backend and by `wanrt serve`,
so the same mistake gets the same message and exit code whichever backend was asked for."""

from __future__ import annotations

import dataclasses
import re

from wanrt.errors import InvalidRequestError

_DEVICE = re.compile(r"(cpu)|(cuda)(?::(\d+))?")


@dataclasses.dataclass(frozen=True)
class Device:
    kind: str  # "cpu" or "cuda"
    index: int = 0  # the CUDA device ordinal ("cuda" is cuda:0); 0 for the CPU

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"


def parse_device(text: str) -> Device:
    """``cpu``, ``cuda`` or ``cuda:N``; anything else is InvalidRequestError on the ``device`` field."""
    match = _DEVICE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidRequestError("device", f"must be cpu, cuda or cuda:N, got {text!r}")
    if match.group(1):
        return Device("cpu")
    return Device("cuda", int(match.group(3) or 0))
