"""Prompts say what the clip shows, in English and Chinese, and held-out wording is really held out."""

from __future__ import annotations

import numpy as np
import pytest

from wanrt.reef.prompts import LANGUAGES, all_phrases, make_prompt
from wanrt.reef.renderer import SceneAttributes, all_attributes

# The word every phrasing of a value contains: the prompt names the attribute.
KEYWORDS = {
    "en": {"bubbles": "bubbles", "jellyfish": "jellyfish", "fish": "fish", "turtle": "turtle", "ray": "ray",
           "particles": ("particles", "specks", "snow"), "up": ("up", "rising"),
           "down": ("down", "sinking", "descending"), "left": "left", "right": "right",
           "still": ("still", "motionless", "hovering"), "deep_blue": "blue", "turquoise": "turquoise",
           "green_murk": "murk", "red_vent": "vent", "sunbeams": ("sunbeams", "sunlight"),
           "slow": ("slowly", "gently"), "fast": ("quickly", "fast")},
    "zh": {"bubbles": "气泡", "jellyfish": "水母", "fish": "鱼", "turtle": "海龟",
           "ray": ("蝠鲼", "鳐", "魔鬼鱼"), "particles": ("微粒", "海雪", "颗粒"), "up": "上", "down": "下",
           "left": "左", "right": "右", "still": ("不动", "停"), "deep_blue": "蓝", "turquoise": ("碧绿", "蓝绿"),
           "green_murk": "浑浊", "red_vent": "热泉", "sunbeams": "阳光", "slow": ("慢", "缓"), "fast": ("快", "迅速")},
}


def _mentions(text: str, words: str | tuple[str, ...]) -> bool:
    return any(w in text.lower() for w in ((words,) if isinstance(words, str) else words))


@pytest.mark.parametrize("split", ["train", "heldout"])
@pytest.mark.parametrize("lang", LANGUAGES)
def test_prompt_names_every_attribute(split, lang):
    rng = np.random.default_rng(0)
    for attrs in all_attributes():
        text = make_prompt(attrs, rng, split=split, lang=lang)
        for field in ("subject", "motion", "palette"):
            assert _mentions(text, KEYWORDS[lang][getattr(attrs, field)]), (text, field)
        if attrs.motion != "still":
            assert _mentions(text, KEYWORDS[lang][attrs.speed]), text


def test_both_languages_are_drawn():
    rng = np.random.default_rng(1)
    texts = [make_prompt(SceneAttributes("ray", "left", "slow", "sunbeams"), rng) for _ in range(40)]
    assert any(t.isascii() for t in texts) and any(not t.isascii() for t in texts)


def test_heldout_wording_is_never_a_training_sentence():
    rng = np.random.default_rng(2)
    for lang in LANGUAGES:
        assert not set(all_phrases("train", lang)) & set(all_phrases("heldout", lang))
        for attrs in all_attributes()[::7]:
            train = {make_prompt(attrs, rng, split="train", lang=lang) for _ in range(100)}
            heldout = {make_prompt(attrs, rng, split="heldout", lang=lang) for _ in range(20)}
            assert not train & heldout


def test_heldout_keywords_are_in_the_training_vocabulary(tmp_path):
    from tokenizers import Tokenizer

    from wanrt.reef.text import UNK_ID, build_tokenizer

    build_tokenizer(tmp_path)
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    rng = np.random.default_rng(3)
    for lang in LANGUAGES:
        for attrs in all_attributes():
            text = make_prompt(attrs, rng, split="heldout", lang=lang)
            for field in ("subject", "motion", "palette"):
                words = KEYWORDS[lang][getattr(attrs, field)]
                present = [w for w in ((words,) if isinstance(words, str) else words) if w in text.lower()]
                # the keyword is in the sentence and every piece of it (word or character) is known
                assert present and all(UNK_ID not in tok.encode(w, add_special_tokens=False).ids
                                       for w in present), (text, field)
