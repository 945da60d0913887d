"""Hyperparameters of a reef training run, and its presets."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    frames: int = 17
    size: int = 96
    flow_shift: float = 3.0
    # text encoder
    text_dim: int = 64
    text_layers: int = 2
    text_steps: int = 300
    text_batch: int = 64
    word_dropout: float = 0.1
    aux_weight: float = 0.1
    # VAE
    vae_base_dim: int = 8
    vae_decoder_dim: int = 12
    vae_clips: int = 200  # clips the latent basis is fitted on and the decoder learns from
    vae_image_steps: int = 900  # decoder on single frames (the first-frame path): spatial decoding, cheap
    vae_image_batch: int = 16
    vae_clip_steps: int = 300  # then on whole clips: the temporal path (4 frames per latent frame)
    vae_clip_batch: int = 2
    vae_crop: int = 48
    vae_lr: float = 2e-3
    # experts
    clips: int = 3200
    heads: int = 4
    head_dim: int = 24
    ffn_dim: int = 256
    layers: int = 4
    joint_steps: int = 5000
    expert_steps: int = 3000  # per expert, interleaved
    # The high-noise expert's own count when set (0: expert_steps): it lays out where the subject is and how it
    # travels, the layout the low-noise expert then has to keep.
    high_expert_steps: int = 0
    batch: int = 16
    lr: float = 6e-4
    text_lr: float = 3e-4
    ema: float = 0.998
    drop_prompt: float = 0.1
    checkpoint_every: int = 2500  # flow steps (trunk and experts) between snapshots in OUT/checkpoints; 0: none
    # Extra flow-matching loss weight on the latent cells a clip's subject occupies (0: plain MSE): a small
    # subject fills a few cells of hundreds, so plain MSE is won by drawing the water alone. Cell weights are
    # 1 + subject_weight * (the subject's share of the cell's latent energy, relative to the clip's most occupied
    # cell), from each clip rendered with and without it (flow.subject_cell_weights).
    subject_weight: float = 0.0

    @classmethod
    def gpu(cls, seed: int = 0) -> TrainConfig:
        """For one GPU (``--device cuda``): wider, deeper experts (6 heads, 6 layers), 32x the clips per step,
        and twice the high-noise expert's steps. The exported model still runs on a CPU."""
        return cls(seed=seed, clips=6400, heads=6, ffn_dim=512, layers=6, joint_steps=1200, expert_steps=750,
                   high_expert_steps=1500, batch=512, lr=1.2e-3, checkpoint_every=600)

    @classmethod
    def quick(cls, seed: int = 0) -> TrainConfig:
        """Minutes-long settings for tests: the same code path on tiny sizes, no claim on quality."""
        return cls(seed=seed, frames=5, size=32, text_steps=5, text_batch=8, vae_clips=4, vae_image_steps=2,
                   vae_image_batch=2, vae_clip_steps=2, vae_clip_batch=1, vae_crop=16, clips=6, layers=1, heads=2,
                   head_dim=12, ffn_dim=32, joint_steps=2, expert_steps=2, batch=2)


