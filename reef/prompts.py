"""Prompts written from scene attributes, in English and Chinese, with disjoint training and held-out wordings.

Every attribute value has several phrases and every language several sentence templates. Both are split:
training prompts use only the "train" phrases and templates, and `wanrt eval` uses only the "heldout" ones,
so a held-out prompt is never a sentence the model saw. The attribute words themselves (left, turquoise,
jellyfish, 左, 水母 ...) are shared: a model cannot know a word it never read, and the point of the held-out
split is new phrasing, not new vocabulary. tests/reef/test_prompts.py checks both properties.
"""

from __future__ import annotations

import re

import numpy as np

from wanrt.reef.renderer import SceneAttributes

LANGUAGES = ("en", "zh")
SPLITS = ("train", "heldout")

# value -> (train phrases, held-out phrases)
_Phrases = dict[str, tuple[tuple[str, ...], tuple[str, ...]]]

_SUBJECT_EN: _Phrases = {
    "bubbles": (("bubbles", "air bubbles", "a stream of bubbles", "silver bubbles"), ("a column of air bubbles",)),
    "jellyfish": (("a jellyfish", "a pulsing jellyfish", "a glowing jellyfish"), ("a translucent jellyfish",)),
    "fish": (("a school of fish", "a school of small fish", "a shoal of fish"), ("a school of silver fish",)),
    "turtle": (("a sea turtle", "a turtle", "a green turtle"), ("a green sea turtle",)),
    "ray": (("a manta ray", "a ray", "a stingray"), ("a dark manta ray",)),
    "particles": (("drifting particles", "marine snow", "tiny floating specks"), ("small drifting specks",)),
}
_MOTION_EN: _Phrases = {
    "up": (("moving up", "rising", "swimming upward", "heading up toward the surface"), ("rising upward",)),
    "down": (("moving down", "sinking", "swimming downward", "descending toward the sand"), ("sinking downward",)),
    "left": (("moving left", "drifting to the left", "swimming from right to left"), ("heading to the left",)),
    "right": (("moving right", "drifting to the right", "swimming from left to right"), ("heading to the right",)),
    "still": (("staying still", "hovering in place", "motionless"), ("hovering motionless",)),
}
_SPEED_EN: _Phrases = {
    "slow": (("slowly", "gently"), ("very slowly",)),
    "fast": (("quickly", "fast"), ("very quickly",)),
}
_PALETTE_EN: _Phrases = {
    "deep_blue": (("in deep blue water", "in the dark blue deep", "in deep dark blue water"),
                  ("deep in dark blue water",)),
    "turquoise": (("in bright turquoise water", "in clear turquoise shallows", "in turquoise water"),
                  ("in clear bright turquoise water",)),
    "green_murk": (("in murky green water", "in green murk", "in murky water"), ("in dark green murky water",)),
    "red_vent": (("lit by the red glow of a hydrothermal vent below", "above a glowing red vent",
                  "in the red light of a vent"), ("over a red glowing hydrothermal vent",)),
    "sunbeams": (("under sunbeams from above", "with sunbeams shining down", "in shafts of sunlight"),
                 ("with bright sunbeams from above",)),
}

_SUBJECT_ZH: _Phrases = {
    "bubbles": (("气泡", "一串气泡", "银色的气泡"), ("一串串银色气泡",)),
    "jellyfish": (("一只水母", "一只发光的水母", "半透明的水母"), ("一只半透明的发光水母",)),
    "fish": (("一群鱼", "一群小鱼", "鱼群"), ("一群银色的小鱼",)),
    "turtle": (("一只海龟", "一只绿海龟"), ("一只绿色的海龟",)),
    "ray": (("一条蝠鲼", "一条鳐鱼", "一条魔鬼鱼"), ("一条黑色的蝠鲼",)),
    "particles": (("漂浮的微粒", "海雪", "细小的颗粒"), ("细小的漂浮微粒",)),
}
_MOTION_ZH: _Phrases = {
    "up": (("向上游", "向上升起", "朝水面上升"), ("逐渐向上升",)),
    "down": (("向下沉", "向下游", "朝沙底下沉"), ("一直向下",)),
    "left": (("向左游", "向左漂移", "从右向左游"), ("朝左边移动",)),
    "right": (("向右游", "向右漂移", "从左向右游"), ("朝右边移动",)),
    "still": (("一动不动", "静止不动", "停在原地"), ("静静地停着",)),
}
_SPEED_ZH: _Phrases = {
    "slow": (("缓缓地", "慢慢地"), ("很慢地",)),
    "fast": (("快速地", "迅速地"), ("很快地",)),
}
_PALETTE_ZH: _Phrases = {
    "deep_blue": (("在深蓝色的海水中", "在幽暗的深蓝海里"), ("在深深的蓝色海水里",)),
    "turquoise": (("在明亮的碧绿色海水中", "在清澈的蓝绿色浅海里"), ("在清澈明亮的碧绿海水里",)),
    "green_murk": (("在浑浊的绿色海水中", "在昏暗浑浊的水里"), ("在浑浊昏暗的绿色海水里",)),
    "red_vent": (("在海底热泉的红光中", "在发出红光的热泉口上方"), ("被下方热泉的红光照亮",)),
    "sunbeams": (("在从上方照下的阳光中", "在穿透海水的阳光光束中"), ("在上方照下的明亮阳光里",)),
}

# {s}=subject, {m}=motion, {v}=speed, {p}=palette
_TEMPLATES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "en": ((
        "{s} {v} {m} {p}.",
        "{s} {m} {v} {p}.",
        "{p}, {s} {m} {v}.",
        "Underwater, {s} {v} {m} {p}.",
        "A clip of {s} {m} {v} {p}.",
    ), (
        "{p}: {s}, {v} {m}.",
        "Video of {s} {p}, {m} {v}.",
    )),
    "zh": ((
        "{s}{p}{v}{m}。",
        "{p}，{s}{v}{m}。",
        "水下画面：{s}{p}{v}{m}。",
    ), (
        "{p}，可以看到{s}{v}{m}。",
        "镜头里{s}{v}{m}，{p}。",
    )),
}
# "Still" has no speed: templates drop {v} for it.
_NO_SPEED = {"en": "", "zh": ""}


def _tables(lang: str) -> tuple[_Phrases, _Phrases, _Phrases, _Phrases]:
    if lang == "en":
        return _SUBJECT_EN, _MOTION_EN, _SPEED_EN, _PALETTE_EN
    if lang == "zh":
        return _SUBJECT_ZH, _MOTION_ZH, _SPEED_ZH, _PALETTE_ZH
    raise ValueError(f"language must be one of {LANGUAGES}, got {lang!r}")


def _pick(options: tuple[str, ...], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def make_prompt(attrs: SceneAttributes, rng: np.random.Generator, *, split: str = "train",
                lang: str | None = None) -> str:
    """A prompt describing ``attrs``, drawn from ``split``'s phrasing; ``lang`` None picks en or zh at random."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    lang = lang or LANGUAGES[int(rng.integers(len(LANGUAGES)))]
    which = SPLITS.index(split)
    subjects, motions, speeds, palettes = _tables(lang)
    speed = _NO_SPEED[lang] if attrs.motion == "still" else _pick(speeds[attrs.speed][which], rng)
    text = _pick(_TEMPLATES[lang][which], rng).format(
        s=_pick(subjects[attrs.subject][which], rng), m=_pick(motions[attrs.motion][which], rng), v=speed,
        p=_pick(palettes[attrs.palette][which], rng))
    text = re.sub(r"\s+", " ", text).replace(" ,", ",").replace(" .", ".").strip()
    return text[0].upper() + text[1:] if lang == "en" else text


def all_phrases(split: str, lang: str) -> list[str]:
    """Every phrase and template of a split: what the tokenizer's vocabulary is built from (train split)."""
    which = SPLITS.index(split)
    phrases = [p for table in _tables(lang) for options in table.values() for p in options[which]]
    return phrases + list(_TEMPLATES[lang][which])
