"""Wan models the project has never seen: small diffusers Wan pipelines drawn at random, for tests.

A fixed fixture (tests/tiny_wan.py) only shows that the code works on that one model; a tolerance or shape rule
that happens to hold for it passes unnoticed. So tests that must hold for *any* Wan-shaped model take their
model from here: each test run draws a few architectures from a seed, prints the seed, and a failure replays
exactly with that seed.

Use it through the pytest fixtures (tests/conftest.py), which draw ``WANRT_DRAWN_MODELS`` models (default 2) per
session from ``WANRT_TEST_SEED`` (default: a fresh seed each run, printed in pytest's header and in each test's
id) and build and export each at most once per session::

    def test_something(drawn_wan, drawn_model_dir, drawn_artifact_dir):
        # drawn_wan: the DrawnWan drawn (architecture, seed, a prompt of drawn length)
        # drawn_model_dir: its diffusers WanPipeline folder (save_pretrained; load with from_pretrained)
        # drawn_artifact_dir: that folder after `wanrt export` (fp32, parity-checked)
        ...

Replay a failure: ``WANRT_TEST_SEED=1234 pytest tests/...`` (the seed the header printed). Or build one model by
hand, e.g. the ones issue 31 found quantize failing on::

    from drawn_models import draw
    wan = draw(11, heads=2, head_dim=16, layers=2)   # any field can be fixed; the rest is drawn from the seed
    wan.build(tmp_path / "model")                    # -> diffusers folder

What is drawn (all tiny: a model builds in about a second; its export, the VAE's reused, took 1-3 minutes on the
shared 2-core machine under a load of 8): attention heads (1-4) and head size (8, 12, 16 or 24), layers (1-3), feed-
forward width, text-encoder width (the experts' text dim), spatial patch size (1 or 2: Wan's own 2, or tokens at
every latent pixel), the A14B two-expert layout with a boundary ratio drawn in [0.5, 0.95] or a single expert
(Wan2.1 / TI2V-5B style), the expert weights' torch seeds, and a prompt length (words). The VAE, scheduler and
tokenizer vocabulary stay those of tiny_wan.py.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from pathlib import Path

import numpy as np
from tiny_wan import VOCAB_WORDS, build_pipeline

SEED_ENV = "WANRT_TEST_SEED"
COUNT_ENV = "WANRT_DRAWN_MODELS"
DEFAULT_COUNT = 2


@dataclasses.dataclass(frozen=True)
class DrawnWan:
    """One drawn architecture. ``seed`` alone determines every other field (see :func:`draw`)."""

    seed: int
    heads: int
    head_dim: int
    layers: int
    ffn_dim: int
    text_dim: int
    patch: int  # spatial patch size (the temporal one is 1, as in every Wan release)
    two_experts: bool
    boundary_ratio: float | None  # None for a single expert
    prompt_words: int

    @property
    def id(self) -> str:
        """Short test id, e.g. ``s11-2x16-l2-f48-t32-p2-two0.81``: seed, heads x head dim, layers, ffn, text dim,
        patch, layout."""
        layout = f"two{self.boundary_ratio:.2f}" if self.two_experts else "one"
        return (f"s{self.seed}-{self.heads}x{self.head_dim}-l{self.layers}-f{self.ffn_dim}-t{self.text_dim}"
                f"-p{self.patch}-{layout}")

    @property
    def prompt(self) -> str:
        """A prompt of ``prompt_words`` words of the test vocabulary, fixed by the seed."""
        rng = np.random.default_rng(self.seed + 1)
        return " ".join(rng.choice(VOCAB_WORDS, self.prompt_words))

    @property
    def architecture(self) -> dict[str, object]:
        """The WanTransformer3DModel settings drawn (tiny_wan.build_transformer's keys)."""
        return {"patch_size": (1, self.patch, self.patch), "num_attention_heads": self.heads,
                "attention_head_dim": self.head_dim, "ffn_dim": self.ffn_dim, "num_layers": self.layers,
                "text_dim": self.text_dim}

    def build(self, out_dir: Path) -> Path:
        """Writes the diffusers WanPipeline folder (random weights, save_pretrained) and returns it."""
        return build_pipeline(Path(out_dir), two_experts=self.two_experts,
                              boundary_ratio=self.boundary_ratio or 0.875,
                              seeds=(2 * self.seed + 1, 2 * self.seed + 2), **self.architecture)


def draw(seed: int, **fixed: object) -> DrawnWan:
    """The architecture drawn from ``seed``; keyword arguments fix fields instead of drawing them."""
    rng = np.random.default_rng(seed)
    two_experts = bool(rng.integers(0, 3))  # the A14B layout two times in three
    drawn = {
        "heads": int(rng.integers(1, 5)),
        "head_dim": int(rng.choice([8, 12, 16, 24])),  # even, and >= 8: RoPE splits it over (t, h, w)
        "layers": int(rng.integers(1, 4)),
        "ffn_dim": int(rng.choice([16, 32, 48, 64, 96])),
        "text_dim": int(rng.choice([16, 32, 48])),  # a multiple of 4: the tiny UMT5 has 4 heads
        "patch": int(rng.choice([1, 2])),
        "two_experts": two_experts,
        "boundary_ratio": round(float(rng.uniform(0.5, 0.95)), 3) if two_experts else None,
        "prompt_words": int(rng.integers(1, 40)),
    }
    values = {**drawn, **fixed}
    if "two_experts" in fixed and "boundary_ratio" not in fixed:
        values["boundary_ratio"] = (drawn["boundary_ratio"] or 0.875) if values["two_experts"] else None
    return DrawnWan(seed=seed, **values)


def session_seed() -> int:
    """``$WANRT_TEST_SEED`` if set, else a fresh random seed (printed by conftest so the run can be replayed)."""
    value = os.environ.get(SEED_ENV, "").strip()
    if value:
        try:
            return int(value)
        except ValueError:
            raise SystemExit(f"{SEED_ENV} must be an integer, got {value!r}") from None
    return secrets.randbelow(10**6)


def draw_many(seed: int, count: int | None = None) -> list[DrawnWan]:
    """``count`` (default ``$WANRT_DRAWN_MODELS`` or 2) architectures from one session seed: model i is
    ``draw(seed + i)``, so any single one replays on its own as ``draw(<its seed>)``."""
    if count is None:
        count = int(os.environ.get(COUNT_ENV, DEFAULT_COUNT))
    return [draw(seed + i) for i in range(count)]
