"""Prompt tokenisation with WanPipeline's semantics, on the `tokenizers` library alone (no transformers/torch)."""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np

from wanrt.errors import ModelFormatError

PAD_TOKEN = "<pad>"  # UMT5's padding token (id 0 in Wan's tokenizer)


def clean_prompt(text: str) -> str:
    """WanPipeline's prompt_clean without ftfy: unescape HTML twice, collapse whitespace.

    ftfy (mojibake repair) is applied by diffusers only when it happens to be installed; results must not
    depend on an optional package, so it is left out here and callers send well-formed UTF-8.
    """
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class PromptTokenizer:
    """Turns prompts into fixed-length (ids, mask) pairs: truncated and padded to ``length`` tokens."""

    def __init__(self, tokenizer_json: Path | bytes, length: int, *, where: object = None) -> None:
        """``tokenizer_json``: the file, or its bytes as already read and checked (``where`` names them)."""
        from tokenizers import Tokenizer

        where = where or tokenizer_json
        try:
            if isinstance(tokenizer_json, bytes):
                self._tokenizer = Tokenizer.from_buffer(tokenizer_json)
            else:
                self._tokenizer = Tokenizer.from_file(str(tokenizer_json))
        except Exception as err:  # the library raises plain Exception subclasses from Rust
            raise ModelFormatError(f"cannot read tokenizer {where}: {err}") from None
        pad_id = self._tokenizer.token_to_id(PAD_TOKEN)
        if pad_id is None:
            raise ModelFormatError(f"tokenizer {where} has no {PAD_TOKEN!r} token")
        self._tokenizer.enable_truncation(max_length=length)
        self._tokenizer.enable_padding(length=length, pad_id=pad_id, pad_token=PAD_TOKEN)
        self.length = length

    def __call__(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self._tokenizer.encode_batch([clean_prompt(p) for p in prompts], add_special_tokens=True)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return ids, mask


def zero_padding_positions(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """WanPipeline keeps only each prompt's real tokens and zero-fills the rest of the fixed-length context."""
    lengths = mask.astype(bool).sum(axis=1)
    positions = np.arange(hidden.shape[1])[None, :]
    return np.where((positions < lengths[:, None])[..., None], hidden, 0).astype(np.float32)
