"""The reef model's tokenizer and its attribute targets: a word-level vocabulary of the training prompts.

English is split into words, Chinese into characters (BERT's CJK rule), everything lowercased. Only the
training split's phrasing builds the vocabulary, so held-out wording that uses new filler words meets <unk>,
as any real prompt would.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from wanrt.reef.prompts import LANGUAGES, all_phrases
from wanrt.reef.renderer import MOTIONS, PALETTES, SPEEDS, SUBJECTS, SceneAttributes

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # UMT5's layout: pad 0, eos 1
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
# Longest training prompt is ~35 tokens; the pipeline pads to Wan's 512 and zero-fills the padding.
TRAIN_TEXT_LENGTH = 48


def build_tokenizer(out_dir: Path) -> None:
    """Writes a fast tokenizer (tokenizer.json + configs) that transformers and `tokenizers` both read."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False,
                                                lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1)
    corpus = [re.sub(r"\{[a-z]\}", " ", p) for lang in LANGUAGES for p in all_phrases("train", lang)]
    tok.train_from_iterator(corpus, trainer=trainer)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [PAD_ID, EOS_ID, UNK_ID]
    # UMT5 appends </s> to every sequence, as Wan's tokenizer does.
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS_ID)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)
    fast.save_pretrained(out_dir)


# --- attribute targets for the text encoder's auxiliary head ---------------------------------------------

ATTRIBUTE_CLASSES: dict[str, tuple[str, ...]] = {
    "subject": SUBJECTS, "motion": MOTIONS, "speed": SPEEDS, "palette": PALETTES,
}


def attribute_targets(attrs: list[SceneAttributes | None]) -> dict[str, np.ndarray]:
    """Class indices per attribute; -100 (ignored) for dropped prompts and for the speed of still scenes."""
    out = {}
    for name, classes in ATTRIBUTE_CLASSES.items():
        values = []
        for a in attrs:
            ignored = a is None or (name == "speed" and a.motion == "still")
            values.append(-100 if ignored else classes.index(getattr(a, name)))
        out[name] = np.array(values, np.int64)
    return out
