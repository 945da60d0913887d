"""Training data: rendered clips of balanced scenes, and prompts tokenised exactly as the serving pipeline does."""

from __future__ import annotations

import multiprocessing.pool
from pathlib import Path

import numpy as np
import torch

from wanrt.reef.config import TrainConfig
from wanrt.reef.prompts import make_prompt
from wanrt.reef.renderer import SceneAttributes, all_attributes, render_clip
from wanrt.reef.text import TRAIN_TEXT_LENGTH, UNK_ID


class PromptBatcher:
    """Writes prompts for attributes and tokenises them exactly as the serving pipeline does."""

    def __init__(self, tokenizer_json: Path, rng: np.random.Generator, word_dropout: float,
                 device: torch.device | str = "cpu") -> None:
        from wanrt.engine.text import PromptTokenizer

        self.tokenizer = PromptTokenizer(tokenizer_json, TRAIN_TEXT_LENGTH)
        self.rng = rng
        self.word_dropout = word_dropout
        self.device = torch.device(device)

    def __call__(self, attrs: list[SceneAttributes | None]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = ["" if a is None else make_prompt(a, self.rng, split="train") for a in attrs]
        ids, mask = self.tokenizer(prompts)
        if self.word_dropout:
            # Unknown words in new phrasings become <unk>: seeing some in training keeps them harmless.
            drop = (self.rng.uniform(size=ids.shape) < self.word_dropout) & (ids > UNK_ID)
            ids = np.where(drop, UNK_ID, ids)
        return torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)



def balanced_attributes(n: int, rng: np.random.Generator) -> list[SceneAttributes]:
    """``n`` scenes cycling through every valid combination (shuffled), so none is under-represented."""
    combos = all_attributes()
    out: list[SceneAttributes] = []
    while len(out) < n:
        out.extend(combos[i] for i in rng.permutation(len(combos)))
    return out[:n]


def to_video_tensor(clips: np.ndarray) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 -> (B, 3, T, H, W) in [-1, 1]."""
    return torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


def _render_one(job: tuple[SceneAttributes, int, int, int, bool]) -> np.ndarray:
    attrs, frames, size, seed, with_water = job
    clip = render_clip(attrs, frames=frames, height=size, width=size, seed=seed)
    if not with_water:
        return clip
    return np.stack([clip, render_clip(attrs, frames=frames, height=size, width=size, seed=seed, subject=False)])


def render_set(attrs: list[SceneAttributes], cfg: TrainConfig, rng: np.random.Generator,
               pool: multiprocessing.pool.Pool | None = None, with_water: bool = False) -> np.ndarray:
    """Renders one clip per attribute set; the seeds are drawn first, so a ``pool`` never changes a pixel.

    ``with_water`` gives (N, 2, T, H, W, 3): each clip and the same clip without its subject (same seeds, and
    the same draws from ``rng``, as without it)."""
    jobs = [(a, cfg.frames, cfg.size, int(s), with_water)
            for a, s in zip(attrs, rng.integers(0, 2**31, len(attrs)), strict=True)]
    return np.stack(pool.map(_render_one, jobs, chunksize=4) if pool else [_render_one(job) for job in jobs])

