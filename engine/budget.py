"""How much memory this process may use: ``--memory-budget``, else the container's cgroup limit or physical
memory, whichever is lower, less a reserve for what the limit also counts (other processes, kernel memory)."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from wanrt.errors import InvalidRequestError

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a page-rounded 2^63 - 1
MIN_RESERVE = 256 << 20
RESERVE_FRACTION = 0.05


@dataclasses.dataclass(frozen=True)
class MemoryBudget:
    bytes: int
    source: str  # where the number came from, for the start-up line and refusals

    def __str__(self) -> str:
        return f"{format_bytes(self.bytes)} ({self.source})"


def format_bytes(value: float) -> str:
    return f"{value / (1 << 30):.2f} GiB" if value >= 1 << 30 else f"{value / (1 << 20):.0f} MiB"


def parse_size(field: str, text: str) -> int:
    """``6G``, ``6GiB``, ``512M``, ``1.5g`` or a plain number of bytes (units are powers of 1024)."""
    match = _SIZE_RE.fullmatch(str(text).strip())
    if match is None:
        raise InvalidRequestError(field, f"must be a size such as 6G, 512M or 1073741824, got {text!r}")
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise InvalidRequestError(field, f"must be more than 0 bytes, got {text!r}")
    return value


def cgroup_memory_limit(proc_cgroup: Path = Path("/proc/self/cgroup"),
                        root: Path = Path("/sys/fs/cgroup")) -> tuple[int, Path] | None:
    """The tightest memory limit on this process's cgroup and its ancestors (v1 or v2), with the file
    that set it; None when there is none."""
    try:
        lines = proc_cgroup.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    candidates: list[Path] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if "memory" in controllers.split(","):  # v1: its own hierarchy
            candidates += _ancestors(root / "memory", relative, "memory.limit_in_bytes")
        elif controllers == "" and (root / "cgroup.controllers").is_file():  # v2: the unified hierarchy
            candidates += _ancestors(root, relative, "memory.max")
    limits = []
    for file in candidates:
        try:
            text = file.read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < _UNLIMITED:
            limits.append((int(text), file))
    return min(limits) if limits else None


def _ancestors(mount: Path, relative: str, name: str) -> list[Path]:
    """``mount/a/b/name``, ``mount/a/name``, ``mount/name``. Inside a container's cgroup namespace the path
    is "/" and the mount's root is the container's own cgroup."""
    parts = [p for p in relative.split("/") if p]
    return [mount.joinpath(*parts[:depth], name) for depth in range(len(parts), -1, -1)]


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def host_memory_budget(given: int | None = None) -> MemoryBudget:
    """``given`` (``--memory-budget``) as is; else the cgroup limit or physical memory less the reserve."""
    if given is not None:
        return MemoryBudget(given, "--memory-budget")
    physical = physical_memory()
    limit, source = physical, "physical memory"
    cgroup = cgroup_memory_limit()
    if cgroup is not None and cgroup[0] < physical:
        limit, source = cgroup[0], f"cgroup limit {cgroup[1]}"
    reserve = max(MIN_RESERVE, int(limit * RESERVE_FRACTION))
    return MemoryBudget(max(0, limit - reserve), f"{source} {format_bytes(limit)} less {format_bytes(reserve)}")


def resident_bytes() -> int:
    """This process's resident set now (weights and runtime once a model is loaded)."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
