"""Prompt sets: what calibration runs generate, and the held-out prompts the accuracy report compares on.

The defaults are varied underwater scenes (subjects, motions, speeds, light, English and Chinese), written in
the reef world's vocabulary so that the built-in demo model reads every word; a real Wan model reads them as
ordinary prompts. The report prompts share no sentence with the calibration prompts: the report measures
prompts the calibration never saw.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from wanrt.errors import InvalidRequestError

CALIBRATION_PROMPTS: tuple[str, ...] = (
    "A school of fish swimming from left to right in deep blue water.",
    "A pulsing jellyfish slowly rising in bright turquoise water.",
    "A sea turtle gently drifting to the left under sunbeams from above.",
    "A manta ray quickly moving down in murky green water.",
    "Bubbles rising fast above a glowing red vent.",
    "Drifting particles hovering in place in the dark blue deep.",
    "Underwater, a green turtle swimming upward with sunbeams shining down.",
    "In clear turquoise shallows, a shoal of fish moving right quickly.",
    "A clip of a stingray sinking slowly in the red light of a vent.",
    "Marine snow staying still in murky water.",
    "A glowing jellyfish drifting to the right in deep dark blue water.",
    "A stream of bubbles heading up toward the surface in turquoise water.",
    "In green murk, a school of small fish swimming from right to left fast.",
    "A ray gently moving left in shafts of sunlight.",
    "Tiny floating specks descending toward the sand, lit by the red glow of a hydrothermal vent below.",
    "A turtle motionless in deep blue water.",
    "一群小鱼在深蓝色的海水中快速地向右游。",
    "一只发光的水母在浑浊的绿色海水中缓缓地向上升起。",
    "在从上方照下的阳光中，一只海龟慢慢地向左漂移。",
    "一条蝠鲼在海底热泉的红光中迅速地向下沉。",
    "银色的气泡在明亮的碧绿色海水中快速地朝水面上升。",
    "海雪在幽暗的深蓝海里静止不动。",
    "水下画面：一条鳐鱼在穿透海水的阳光光束中缓缓地从左向右游。",
    "在昏暗浑浊的水里，鱼群迅速地向下游。",
)

# Held out from calibration: what the report's end-to-end PSNR/SSIM and per-timestep errors are measured on.
REPORT_PROMPTS: tuple[str, ...] = (
    "Deep in dark blue water: a translucent jellyfish, very slowly rising upward.",
    "Video of a dark manta ray with bright sunbeams from above, heading to the left very quickly.",
    "在清澈明亮的碧绿海水里，可以看到一群银色的小鱼很快地朝右边移动。",
    "Over a red glowing hydrothermal vent: a column of air bubbles, hovering motionless.",
    "Video of a green sea turtle in dark green murky water, sinking downward very slowly.",
    "镜头里一条黑色的蝠鲼很慢地逐渐向上升，在深深的蓝色海水里。",
    "In clear bright turquoise water: small drifting specks, very quickly heading to the right.",
    "被下方热泉的红光照亮，可以看到一只半透明的发光水母很快地一直向下。",
)


def read_prompt_file(path: Path, *, field: str = "calib_prompts") -> tuple[str, ...]:
    """One prompt per line; blank lines and lines starting with ``#`` are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidRequestError(field, f"cannot read {path}: {err}") from None
    prompts = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    if not prompts:
        raise InvalidRequestError(field, f"{path} holds no prompt")
    return prompts


def prompts_sha256(prompts: tuple[str, ...] | list[str]) -> str:
    """Identifies a prompt set in the manifest: sha256 of the prompts joined by newlines (UTF-8)."""
    return hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()
