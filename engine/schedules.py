"""Named denoising schedules: the model's own ("base") and presets for step-distilled models.

A distilled Wan model (the Wan2.2-Lightning / LightX2V 4-step LoRAs merged at export, or a distilled checkpoint)
is trained for one schedule: a few Euler steps on fixed timesteps, no classifier-free guidance (so no
unconditional pass), its own shift. The preset records that schedule as its authors publish it; `wanrt export
--schedule NAME` makes it the artifact's default, and a request may still name another schedule or override
its steps, guidance or shift.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from wanrt.engine.schedulers import Scheduler, scheduler_from_config
from wanrt.errors import InvalidRequestError, ModelFormatError

BASE = "base"  # the model's own scheduler_config.json, as diffusers' WanPipeline runs it
# The key that holds the flow shift in each scheduler's diffusers config.
SHIFT_KEYS = {"UniPCMultistepScheduler": "flow_shift", "FlowMatchEulerDiscreteScheduler": "shift"}
MAX_SHIFT = 100.0


@dataclasses.dataclass(frozen=True)
class SchedulePreset:
    """A distilled model's schedule as its authors run it."""

    name: str
    scheduler: str  # diffusers class name
    steps: int
    guidance: float  # high-noise expert; 1.0: no unconditional pass
    guidance_2: float  # low-noise expert
    shift: float
    # "uniform": unshifted sigmas 1 - i/steps (LightX2V's denoising_step_list 1000, 750, 500, 250 for 4 steps),
    # passed to the scheduler as diffusers' set_timesteps(sigmas=...) would be.
    sigmas: str
    expert_steps: tuple[int, int] | None  # the authors' split of the steps between high- and low-noise experts
    source: str


PRESETS: dict[str, SchedulePreset] = {
    "lightning-4step": SchedulePreset(
        name="lightning-4step", scheduler="FlowMatchEulerDiscreteScheduler", steps=4, guidance=1.0, guidance_2=1.0,
        shift=5.0, sigmas="uniform", expert_steps=(2, 2),
        source="Wan2.2-Lightning / LightX2V 4-step distillation (LightX2V configs/wan22/wan_moe_t2v_distill.json: "
               "denoising_step_list [1000, 750, 500, 250], sample_shift 5.0, enable_cfg false, "
               "boundary_step_index 2); the Wan2.1 lightx2v distill LoRAs use the same steps and shift"),
}


def schedule_names() -> tuple[str, ...]:
    return (BASE, *PRESETS)


def check_schedule(name: object) -> str:
    if name not in schedule_names():
        raise InvalidRequestError("schedule", f"must be one of {', '.join(schedule_names())}, got {name!r}")
    return str(name)


def base_shift(scheduler_config: Mapping[str, Any]) -> float:
    """The flow shift the model's own scheduler config applies."""
    name = scheduler_config.get("_class_name")
    if name not in SHIFT_KEYS:
        raise ModelFormatError(f"scheduler {name!r} has no flow shift wanrt knows")
    return float(scheduler_config.get(SHIFT_KEYS[name], 1.0))


def schedule_shift(scheduler_config: Mapping[str, Any], schedule: str) -> float:
    """The shift a schedule runs with when the request does not set one."""
    return base_shift(scheduler_config) if schedule == BASE else PRESETS[schedule].shift


def scheduler_class(scheduler_config: Mapping[str, Any], schedule: str) -> str:
    return str(scheduler_config.get("_class_name")) if schedule == BASE else PRESETS[schedule].scheduler


def make_scheduler(scheduler_config: Mapping[str, Any], schedule: str, steps: int,
                   shift: float | None = None) -> Scheduler:
    """The numpy scheduler for ``schedule`` with its timesteps set for ``steps``. The base schedule is the model's
    config with only the shift replaced; a preset switches the class and keeps the model's training length."""
    check_schedule(schedule)
    shift = schedule_shift(scheduler_config, schedule) if shift is None else shift
    if schedule == BASE:
        name = str(scheduler_config.get("_class_name"))
        config = {**scheduler_config, SHIFT_KEYS.get(name, "shift"): shift}
        scheduler = scheduler_from_config(config)
        scheduler.set_timesteps(steps)
        return scheduler
    preset = PRESETS[schedule]
    config = {"_class_name": preset.scheduler, SHIFT_KEYS[preset.scheduler]: shift,
              "num_train_timesteps": scheduler_config.get("num_train_timesteps", 1000)}
    scheduler = scheduler_from_config(config)
    if preset.sigmas == "uniform":
        scheduler.set_timesteps(steps, sigmas=(1.0 - np.arange(steps) / steps).tolist())
    else:
        scheduler.set_timesteps(steps)
    return scheduler


def check_shift(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating) or not np.isfinite(value):
        raise InvalidRequestError("shift", f"must be a finite number, got {value!r}")
    if not 0.0 < value <= MAX_SHIFT:
        raise InvalidRequestError("shift", f"must be in (0, {MAX_SHIFT:g}], got {value}")
