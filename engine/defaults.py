"""A model's request defaults: what a request that leaves a field unset gets (the manifest's ``defaults``).

Set at export from the model's recipe (the settings its authors generate with) and the schedule chosen for the
artifact, so a front end never guesses: a Wan2.2 A14B artifact defaults to 81 frames at 832x480, 40 steps,
guidance 4.0 / 3.0; one with the Lightning LoRAs merged and ``--schedule lightning-4step`` to 4 Euler steps
without guidance; the reef demo model to what it was trained for. Every field is flat and named as the request
field it fills, so `--help`, `client describe` and the servers can print it as it is.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from wanrt.engine.request import GenerationRequest, Limits
from wanrt.engine.schedules import BASE, PRESETS, check_schedule, schedule_shift, scheduler_class
from wanrt.engine.spec import ModelSpec
from wanrt.errors import ArtifactError, InvalidRequestError, ModelFormatError

# A model folder may carry its trainer's recipe (reef/train.py writes one); export and the torch backend read it.
RECIPE_FILE = "wanrt_defaults.json"
_SIZE = re.compile(r"^(\d+)x(\d+)$")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a model's authors generate with it (before any distilled schedule replaces steps and guidance)."""

    name: str
    frames: int
    sizes: tuple[str, ...]  # "WIDTHxHEIGHT", the first is the default
    steps: int
    guidance: float
    guidance_2: float
    fps: int


_PREVIEW = GenerationRequest.defaults()
RECIPES: dict[str, Recipe] = {
    # Wan2.2's own config (t2v_A14B: sample_steps 40, sample_guide_scale (3.0, 4.0) for (low, high) noise,
    # 81 frames at 16 fps; 480p and 720p).
    "wan2.2-t2v-a14b": Recipe("wan2.2-t2v-a14b", 81, ("832x480", "1280x720"), 40, 4.0, 3.0, 16),
    "wan2.1-t2v-14b": Recipe("wan2.1-t2v-14b", 81, ("832x480", "1280x720"), 50, 5.0, 5.0, 16),
    "wan2.1-t2v-1.3b": Recipe("wan2.1-t2v-1.3b", 81, ("832x480",), 50, 5.0, 5.0, 16),
    # A model wanrt does not recognise (tiny test models): a short preview clip, wanrt's request defaults.
    "preview": Recipe("preview", _PREVIEW.frames, (f"{_PREVIEW.width}x{_PREVIEW.height}",), _PREVIEW.steps,
                      _PREVIEW.guidance, _PREVIEW.guidance, _PREVIEW.fps),
}
# (experts, layers, width) of the published architectures.
_KNOWN = {(2, 40, 5120): "wan2.2-t2v-a14b", (1, 40, 5120): "wan2.1-t2v-14b", (1, 30, 1536): "wan2.1-t2v-1.3b"}


_SCHEDULE_FIELDS = ("scheduler", "steps", "guidance", "guidance_2", "shift")


@dataclasses.dataclass(frozen=True)
class ModelDefaults:
    """The manifest's ``defaults`` section: the default schedule's values flat (what a request that names nothing
    gets), and in ``schedules`` those of every schedule this model can run, so a request naming another one gets
    its steps, guidance and shift (the base schedule's come from the model's recipe, which only export knows)."""

    schedule: str  # "base" or a preset of engine/schedules.py
    scheduler: str  # the diffusers scheduler class that schedule runs
    steps: int
    guidance: float
    guidance_2: float
    shift: float
    frames: int
    height: int
    width: int
    fps: int
    sizes: tuple[str, ...] = ()  # the sizes the recipe names ("WIDTHxHEIGHT"); the first is width x height
    recipe: str = ""  # where frames, size, fps (and steps, guidance for the base schedule) come from
    # name -> {"scheduler", "steps", "guidance", "guidance_2", "shift"}, the default schedule among them
    schedules: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["sizes"] = list(self.sizes)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> ModelDefaults:
        if not isinstance(data, dict):
            raise ArtifactError("manifest.json defaults is not an object")
        names = {f.name for f in dataclasses.fields(cls)}
        required = names - {"sizes", "recipe", "schedules"}
        missing = sorted(required - set(data))
        if missing:
            raise ArtifactError(f"manifest.json defaults lacks {', '.join(missing)}")
        values = {k: data[k] for k in names if k in data}
        values["sizes"] = tuple(values.get("sizes", ()))
        try:
            defaults = cls(**values)
            if not isinstance(defaults.schedules, dict):
                raise TypeError("schedules must map names to objects")
            for name in {defaults.schedule, *defaults.schedules}:
                defaults.request(prompt="-", schedule=name).validate(Limits())
        except (TypeError, ValueError, AttributeError) as err:
            raise ArtifactError(f"manifest.json defaults are invalid: {err}") from None
        return defaults

    def request(self, prompt: str = "", *, schedule: str | None = None, **fields: Any) -> GenerationRequest:
        """A request with these defaults, or those of ``schedule`` when it names another schedule (its steps,
        guidance and shift), and ``fields`` over them."""
        values = {"prompt": prompt, "frames": self.frames, "height": self.height, "width": self.width,
                  "fps": self.fps, **self.schedule_values(schedule)}
        values.update({k: v for k, v in fields.items() if v is not None})
        return GenerationRequest(**values)

    def schedule_values(self, schedule: str | None) -> dict[str, Any]:
        """{"schedule", "steps", "guidance", "guidance_2", "shift"} of ``schedule`` (None: the default one)."""
        if schedule is None or schedule == self.schedule:
            entry = {k: getattr(self, k) for k in _SCHEDULE_FIELDS}
        else:
            check_schedule(schedule)
            if schedule in PRESETS and schedule not in self.schedules:  # a preset is the same for every model
                entry = dataclasses.asdict(PRESETS[schedule])
            elif schedule not in self.schedules:
                raise InvalidRequestError("schedule", f"this model records no defaults for {schedule!r}; give steps, "
                                                      "guidance and shift, or choose one of "
                                                      f"{', '.join(sorted({self.schedule, *self.schedules}))}")
            else:
                entry = self.schedules[schedule]
        return {"schedule": schedule or self.schedule,
                **{k: entry[k] for k in _SCHEDULE_FIELDS if k != "scheduler"}}


def defaults_from_recipe(recipe: Recipe, spec: ModelSpec, schedule: str = BASE) -> ModelDefaults:
    """The defaults of a model generating as ``recipe`` says, with ``schedule`` the default schedule."""
    check_schedule(schedule)
    width, height = parse_size(recipe.sizes[0])
    config = spec.scheduler_config
    schedules = {BASE: {"scheduler": scheduler_class(config, BASE), "steps": recipe.steps,
                        "guidance": recipe.guidance, "guidance_2": recipe.guidance_2,
                        "shift": schedule_shift(config, BASE)}}
    for name, preset in PRESETS.items():
        schedules[name] = {"scheduler": preset.scheduler, "steps": preset.steps, "guidance": preset.guidance,
                           "guidance_2": preset.guidance_2, "shift": preset.shift}
    return ModelDefaults(schedule=schedule, **schedules[schedule], frames=recipe.frames, height=height, width=width,
                         fps=recipe.fps, sizes=recipe.sizes, recipe=recipe.name, schedules=schedules)


def recipe_for(model_dir: Path, spec: ModelSpec) -> Recipe:
    """The model's own recipe file, else the published recipe of its architecture, else the preview."""
    model_dir = Path(model_dir)
    own = model_dir / RECIPE_FILE
    if own.is_file():
        return read_recipe(own)
    try:
        config = json.loads((model_dir / spec.experts[0] / "config.json").read_text(encoding="utf-8"))
        key = (len(spec.experts), int(config.get("num_layers", 0)),
               int(config.get("num_attention_heads", 0)) * int(config.get("attention_head_dim", 0)))
    except (OSError, ValueError, TypeError):
        key = None
    return RECIPES[_KNOWN.get(key, "preview")]


def read_recipe(path: Path) -> Recipe:
    """A recipe file: {"recipe": name, "frames", "size": "WxH" (or "sizes"), "steps", "guidance", "guidance_2",
    "fps"}; a missing field takes the preview's value."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelFormatError(f"{path}: {err}") from None
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path} is not a JSON object")
    preview = RECIPES["preview"]
    sizes = tuple(data.get("sizes") or [data.get("size", preview.sizes[0])])
    guidance = float(data.get("guidance", preview.guidance))
    recipe = Recipe(str(data.get("recipe", Path(path).parent.name)), int(data.get("frames", preview.frames)), sizes,
                    int(data.get("steps", preview.steps)), guidance, float(data.get("guidance_2", guidance)),
                    int(data.get("fps", preview.fps)))
    for size in recipe.sizes:
        parse_size(size)
    return recipe


def write_recipe(folder: Path, recipe: Recipe) -> Path:
    """Writes a model folder's own recipe (what `wanrt export` records as its defaults)."""
    path = Path(folder) / RECIPE_FILE
    data = {"recipe": recipe.name, "frames": recipe.frames, "sizes": list(recipe.sizes), "steps": recipe.steps,
            "guidance": recipe.guidance, "guidance_2": recipe.guidance_2, "fps": recipe.fps}
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def parse_size(text: str) -> tuple[int, int]:
    match = _SIZE.match(str(text))
    if not match:
        raise ModelFormatError(f"size {text!r} is not WIDTHxHEIGHT")
    return int(match.group(1)), int(match.group(2))


def defaults_for_artifact(manifest_defaults: ModelDefaults | None, spec: ModelSpec) -> ModelDefaults:
    """An artifact's defaults; one exported before the section existed (the shipped reef model among them) gets
    the preview recipe, which is what wanrt's requests defaulted to then."""
    if manifest_defaults is not None:
        return manifest_defaults
    return defaults_from_recipe(RECIPES["preview"], spec)
