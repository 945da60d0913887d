"""A stage's start-of-run check: the machine it runs on, and a refusal that names the option that would fit."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from wanrt.errors import InsufficientMemoryError
from wanrt.plan.stages import Machine, StagePlan, first_fitting, gb

# Where each resource's figure comes from on the command line, for the refusal's wording.
_FLAGS = {"host memory": "--memory-budget", "GPU memory": "the GPU's free memory", "disk": "free space at --out"}


def this_machine(out_dir: Path | None = None, *, device: str = "cpu", host_bytes: int | None = None) -> Machine:
    """The machine a stage starts on: its host memory budget (engine/budget.py: ``host_bytes``, else the cgroup
    limit or physical memory less a reserve), free disk where ``out_dir`` will be, the GPU's free memory."""
    from wanrt.engine.budget import host_memory_budget

    disk = None
    if out_dir is not None:
        existing = Path(out_dir).resolve()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        disk = shutil.disk_usage(existing).free
    gpu = None
    if device.startswith("cuda"):
        import torch

        from wanrt.engine.device import parse_device
        from wanrt.errors import BackendUnavailableError

        if not torch.cuda.is_available():
            raise BackendUnavailableError(f"--device {device}: PyTorch sees no CUDA device on this machine")
        gpu = int(torch.cuda.mem_get_info(parse_device(device).index)[0])
    return Machine(host_memory_budget(host_bytes).bytes, gpu, disk)


def refuse_unless_fits(plan: StagePlan, machine: Machine,
                       alternatives: Sequence[tuple[str, Callable[[], StagePlan]]] = ()) -> None:
    """Raises InsufficientMemoryError when ``plan`` does not fit ``machine``: what is short, by how much, what
    dominates the need, and the first of ``alternatives`` (option text, plan with it) that fits."""
    short = plan.shortfalls(machine)
    if not short:
        return
    raise InsufficientMemoryError(refusal_message(plan, machine, alternatives))


def refusal_message(plan: StagePlan, machine: Machine,
                    alternatives: Sequence[tuple[str, Callable[[], StagePlan]]] = ()) -> str:
    parts = []
    for resource, need, have in plan.shortfalls(machine):
        available = "none" if have is None else f"{gb(have)} ({_FLAGS[resource]})"
        worst = max(plan.graphs.values(), key=lambda g: g.gpu_bytes if resource == "GPU memory" else g.host_bytes)
        dominated = ", ".join(f"{label} {gb(b)}" for label, b in worst.terms[:3]) if resource != "disk" else ""
        parts.append(f"{resource}: needs an estimated {gb(need)}, available {available}"
                     + (f" ({worst.name}: {dominated})" if dominated else ""))
    option = first_fitting(machine, alternatives)
    hint = (f"{option} would fit" if option else
            "no option of this stage fits this machine: see `wanrt plan` for the machine it needs")
    return f"{plan.stage} ({plan.settings}) does not fit: " + "; ".join(parts) + f". {hint}"
