"""Trains the reef model: a small Wan2.2-A14B-shaped text-to-video pipeline for the procedural underwater world.

    python -m wanrt.reef.train --out DIR --seed 0

Stages, reproducible from the seed (and --threads, default 2); with --device cuda the same seed draws the same
data, noise and prompts, but GPU kernels (attention's backward among them) do not promise bit-equal results:
1. tokenizer: word-level over the training prompts (English words, Chinese characters);
2. text encoder (UMT5): first taught to name a prompt's attributes (an auxiliary head, discarded), so the
   experts get an informative condition from their first step, then trained on with the flow loss;
3. VAE (AutoencoderKLWan, 4x temporal, 8x spatial, 16 channels): the latent space is a whitened block PCA
   (BlockPCA: well conditioned by construction) and the Wan decoder is trained to invert it, single frames
   first, then whole clips; the basis is saved next to the VAE weights;
4. latents of the training clips are cached, normalised per channel (the VAE config's latents_mean/std);
5. experts (WanTransformer3DModel): one model on all noise levels first, then split, as Wan2.2 grew its two
   experts out of one: `transformer` on sigma >= boundary (0.875), `transformer_2` below, each with an EMA,
   flow matching (x_t = (1 - s) x0 + s noise, target noise - x0), 10% empty prompts for CFG.
The result is a diffusers WanPipeline folder (save_pretrained) that `wanrt export` turns into an artifact.
`--init-from DIR` trains the experts of such a folder on (stage 5 alone, on fresh clips), so device time lent in
short leases adds up; reef_training.json then lists the runs the weights went through.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import multiprocessing
import multiprocessing.pool
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from wanrt.reef.prompts import make_prompt
from wanrt.reef.renderer import SceneAttributes, all_attributes, render_clip
from wanrt.reef.text import (
    ATTRIBUTE_CLASSES,
    EOS_ID,
    PAD_ID,
    TRAIN_TEXT_LENGTH,
    UNK_ID,
    attribute_targets,
    build_tokenizer,
)

WAN_TEXT_LENGTH = 512  # the pipeline's context length; padding positions are zeros, as WanPipeline makes them
BOUNDARY_RATIO = 0.875  # Wan2.2-A14B's switch between the high- and low-noise experts


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
    # The high-noise expert's own count when set (0: expert_steps). It lays out where the subject is and how it
    # travels; the low-noise expert must keep that layout, and small subjects are lost there (reef/README.md).
    high_expert_steps: int = 0
    batch: int = 16
    lr: float = 6e-4
    text_lr: float = 3e-4
    ema: float = 0.998
    drop_prompt: float = 0.1
    checkpoint_every: int = 2500  # flow steps (trunk and experts) between snapshots in OUT/checkpoints; 0: none
    # Extra flow-matching loss weight on the latent cells a clip's subject occupies (0: plain MSE). A school of
    # fish or a few bubbles fill a few cells of 720, so plain MSE is won by drawing the water well and the
    # subject not at all (reef/README.md): cell weights are 1 + subject_weight * (subject's share of the cell's
    # latent energy, relative to the clip's most occupied cell), from each clip rendered with and without it.
    subject_weight: float = 0.0

    @classmethod
    def gpu(cls, seed: int = 0) -> TrainConfig:
        """The shipped model's first run (with ``--device cuda``): wider, deeper experts (6 heads, 6 layers), 32x
        the clips per step, and twice the high-noise expert's steps. On one H200 (--workers 15): about 2 min of
        text, VAE and latents, then 96 ms a flow step, 7.5 min in all. The artifact runs on a CPU. The shipped
        experts were trained on from here with ``subject_weight`` and ``--init-from`` (reef/README.md)."""
        return cls(seed=seed, clips=6400, heads=6, ffn_dim=512, layers=6, joint_steps=1200, expert_steps=750,
                   high_expert_steps=1500, batch=512, lr=1.2e-3, checkpoint_every=600)

    @classmethod
    def quick(cls, seed: int = 0) -> TrainConfig:
        """Minutes-long settings for tests: the same code path on tiny sizes, no claim on quality."""
        return cls(seed=seed, frames=5, size=32, text_steps=5, text_batch=8, vae_clips=4, vae_image_steps=2,
                   vae_image_batch=2, vae_clip_steps=2, vae_clip_batch=1, vae_crop=16, clips=6, layers=1, heads=2,
                   head_dim=12, ffn_dim=32, joint_steps=2, expert_steps=2, batch=2)


Log = Callable[[str], None]


# --- models ----------------------------------------------------------------------------------------------

def build_text_encoder(vocab_size: int, cfg: TrainConfig) -> torch.nn.Module:
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=vocab_size, d_model=cfg.text_dim, d_kv=cfg.text_dim // 4,
                        d_ff=cfg.text_dim * 2, num_layers=cfg.text_layers, num_heads=4,
                        relative_attention_num_buckets=16, relative_attention_max_distance=32, dropout_rate=0.0,
                        pad_token_id=PAD_ID, eos_token_id=EOS_ID, decoder_start_token_id=PAD_ID)
    return UMT5EncoderModel(config)


def build_vae(cfg: TrainConfig) -> torch.nn.Module:
    from diffusers import AutoencoderKLWan

    # Wan's layout (3 spatial halvings, 2 temporal), narrow: the encoder only runs while training.
    return AutoencoderKLWan(base_dim=cfg.vae_base_dim, decoder_base_dim=cfg.vae_decoder_dim, z_dim=16,
                            dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True])


def build_expert(cfg: TrainConfig) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=cfg.heads, attention_head_dim=cfg.head_dim, in_channels=16,
        out_channels=16, text_dim=cfg.text_dim, freq_dim=64, ffn_dim=cfg.ffn_dim, num_layers=cfg.layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64)


def build_scheduler(cfg: TrainConfig) -> object:
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                   num_train_timesteps=1000, flow_shift=cfg.flow_shift)


class AttributeHead(torch.nn.Module):
    """Predicts the scene attributes from the mean of the text encoder's real tokens (training only)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(dim, len(v)) for k, v in ATTRIBUTE_CLASSES.items()})

    def loss(self, hidden: torch.Tensor, mask: torch.Tensor, targets: dict[str, np.ndarray]) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        return sum(F.cross_entropy(head(pooled), torch.from_numpy(targets[k]).to(hidden.device), ignore_index=-100)
                   for k, head in self.heads.items())


# --- text ------------------------------------------------------------------------------------------------

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


def wan_context(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, 512, D) context as WanPipeline builds it from the encoder's states: real tokens, then zeros."""
    hidden = hidden * mask.unsqueeze(-1).to(hidden.dtype)
    return F.pad(hidden, (0, 0, 0, WAN_TEXT_LENGTH - hidden.shape[1]))


def compact_context(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L + 1, D): the first L positions of :func:`wan_context` and one zero row standing for the rest.

    Used with :class:`CompactCrossAttention`, which gives that row the weight of all 512 - L zero rows.
    """
    hidden = hidden * mask.unsqueeze(-1).to(hidden.dtype)
    return F.pad(hidden, (0, 0, 0, 1))


class CompactCrossAttention:
    """Training-only cross-attention processor, exact for contexts built by :func:`compact_context`.

    WanPipeline pads the text states with zeros to 512 positions, and every zero row becomes the same key and
    value (the text projection and k/v projections are position-wise). n equal keys weigh as one key whose
    logit is raised by log(n), so the experts attend over L + 1 rows instead of 512: cross-attention was
    three quarters of a training step's attention time. Saved models keep diffusers' own processor.
    """

    def __init__(self, padded_rows: int) -> None:
        self.log_rows = math.log(padded_rows)

    def __call__(self, attn: torch.nn.Module, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 rotary_emb: object = None) -> torch.Tensor:
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        key = attn.norm_k(attn.to_k(encoder_hidden_states)).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        value = attn.to_v(encoder_hidden_states).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        bias = torch.zeros(1, key.shape[2], dtype=query.dtype, device=query.device)
        bias[0, -1] = self.log_rows
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def use_compact_cross_attention(expert: torch.nn.Module, text_length: int) -> None:
    """Installs :class:`CompactCrossAttention` on every block's cross-attention (``attn2``) of ``expert``."""
    processor = CompactCrossAttention(WAN_TEXT_LENGTH - text_length)
    for block in expert.blocks:
        block.attn2.set_processor(processor)


def use_diffusers_attention(expert: torch.nn.Module) -> None:
    """Puts diffusers' own processor back (what a saved and exported model runs)."""
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    for block in expert.blocks:
        block.attn2.set_processor(WanAttnProcessor())


# --- data ------------------------------------------------------------------------------------------------

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


def subject_cell_weights(latents: torch.Tensor, water: torch.Tensor, strength: float) -> torch.Tensor:
    """(N, 1, T, H, W) loss weights from normalised latents of clips and of the same clips without their subject:
    1 where the subject is absent, up to 1 + ``strength`` in the cell it fills most."""
    energy = (latents - water).square().sum(dim=1, keepdim=True)
    peak = energy.amax(dim=(2, 3, 4), keepdim=True).clamp(min=1e-6)
    return 1 + strength * energy / peak


# --- training stages -------------------------------------------------------------------------------------

def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_text_encoder(text_encoder: torch.nn.Module, head: AttributeHead, batcher: PromptBatcher,
                       cfg: TrainConfig, rng: np.random.Generator, log: Log) -> float:
    """Teaches the encoder to tell attributes apart from prompt text alone (cheap: no video involved)."""
    params = list(text_encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    combos = all_attributes()
    loss_value = float("nan")
    for step in range(cfg.text_steps):
        attrs = [combos[i] for i in rng.integers(0, len(combos), cfg.text_batch)]
        ids, mask = batcher(attrs)
        loss = head.loss(text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask,
                         attribute_targets(attrs))
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss_value = loss.item()
        if step % 100 == 0 or step == cfg.text_steps - 1:
            log(f"text {step}/{cfg.text_steps} attribute loss {loss_value:.4f}")
    return loss_value


def decode_unclamped(vae: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """AutoencoderKLWan._decode without its final clamp to [-1, 1].

    The clamp has zero gradient outside the range: a decoder whose dark pixels start below -1 (deep water is
    near black) would never learn them. Same causal frame-by-frame loop and cache as diffusers 0.42.
    """
    vae.clear_cache()
    x = vae.post_quant_conv(z)
    frames = []
    for i in range(x.shape[2]):
        vae._conv_idx = [0]
        frames.append(vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                                  first_chunk=i == 0))
    vae.clear_cache()
    return torch.cat(frames, 2)


class BlockPCA:
    """The latent space: whitened principal components of each latent cell's pixel block.

    Wan's VAE maps frame 0 alone, then every 4 frames, to one latent frame, and 8x8 pixels to one latent cell.
    Here a cell's latent is the top-16 PCA projection of its block (8x8x3 for frame 0, 4x8x8x3 after),
    divided by the components' standard deviations: well conditioned by construction (unit variance,
    uncorrelated channels) and, on these scenes, >99% of the pixel variance. The Wan decoder is trained to
    invert it; the Wan encoder is not needed for text-to-video and stays as initialised (see reef/README.md).
    """

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    @staticmethod
    def _blocks(video: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, T, H, W, 3) in [-1, 1] -> frame-0 blocks (N, h, w, 192), later blocks (N, T', h, w, 768)."""
        n, t, h, w, _ = video.shape
        first = video[:, 0].reshape(n, h // 8, 8, w // 8, 8, 3).transpose(0, 1, 3, 2, 4, 5)
        first = first.reshape(n, h // 8, w // 8, -1)
        if t == 1:
            return first, None
        rest = video[:, 1:].reshape(n, (t - 1) // 4, 4, h // 8, 8, w // 8, 8, 3).transpose(0, 1, 3, 5, 2, 4, 6, 7)
        return first, rest.reshape(n, (t - 1) // 4, h // 8, w // 8, -1)

    @classmethod
    def fit(cls, clips: np.ndarray, channels: int = 16) -> BlockPCA:
        first, rest = cls._blocks(clips.astype(np.float32) / 127.5 - 1)
        arrays = {}
        for name, data in (("first", first), ("rest", rest)):
            data = data.reshape(-1, data.shape[-1]).astype(np.float64)
            mean = data.mean(axis=0)
            values, vectors = np.linalg.eigh(np.cov((data - mean).T))
            top = np.argsort(values)[::-1][:channels]
            arrays[f"{name}_mean"] = mean.astype(np.float32)
            arrays[f"{name}_basis"] = vectors[:, top].astype(np.float32)
            arrays[f"{name}_scale"] = np.sqrt(np.maximum(values[top], 1e-8)).astype(np.float32)
            arrays[f"{name}_explained"] = np.array(values[top].sum() / values.sum(), np.float32)
        return cls(arrays)

    def encode(self, clips: np.ndarray) -> torch.Tensor:
        """(N, T, H, W, 3) uint8 -> (N, 16, 1 + (T - 1) / 4, H / 8, W / 8) float32."""
        a = self.arrays
        first, rest = self._blocks(clips.astype(np.float32) / 127.5 - 1)
        z = [((first - a["first_mean"]) @ a["first_basis"] / a["first_scale"])[:, None]]
        if rest is not None:
            z.append((rest - a["rest_mean"]) @ a["rest_basis"] / a["rest_scale"])
        return torch.from_numpy(np.ascontiguousarray(np.concatenate(z, axis=1).transpose(0, 4, 1, 2, 3)))

    def project(self, clips: np.ndarray) -> np.ndarray:
        """(N, T, H, W, 3) uint8 -> the clips as the latent space keeps them, in [-1, 1] units (unclipped):
        every block projected onto its components. The Wan decoder is trained towards this."""
        a = self.arrays
        n, t, h, w, _ = clips.shape
        first, rest = self._blocks(clips.astype(np.float32) / 127.5 - 1)

        def keep(blocks: np.ndarray, name: str) -> np.ndarray:
            basis, mean = a[f"{name}_basis"], a[f"{name}_mean"]
            return (blocks - mean) @ basis @ basis.T + mean

        frames = [keep(first, "first").reshape(n, 1, h // 8, w // 8, 8, 8, 3)]
        if rest is not None:
            kept = keep(rest, "rest").reshape(n, (t - 1) // 4, h // 8, w // 8, 4, 8, 8, 3)
            frames.append(kept.transpose(0, 1, 4, 2, 3, 5, 6, 7).reshape(n, t - 1, h // 8, w // 8, 8, 8, 3))
        video = np.concatenate(frames, axis=1)  # (N, T, h, w, 8, 8, 3): blocks back into frames
        return video.transpose(0, 1, 2, 4, 3, 5, 6).reshape(n, t, h, w, 3)

    def save(self, path: Path) -> None:
        np.savez(path, **self.arrays)

    @classmethod
    def load(cls, model_dir: Path) -> BlockPCA:
        """The basis saved beside the VAE of a folder this script wrote."""
        path = Path(model_dir) / "vae" / "reef_latent_basis.npz"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: not a folder written by python -m wanrt.reef.train")
        with np.load(path) as arrays:
            return cls(dict(arrays))


@torch.no_grad()
def start_decoder_per_frame(vae: torch.nn.Module) -> None:
    """Makes the untrained decoder treat time trivially: causal convs see only the current frame and each
    temporal upsampling repeats its input frame.

    The single-frame phase never feeds the convs' past-frame taps (they see zero padding there), so random
    past taps would scramble every later frame once whole clips arrive. Starting from "each latent frame
    decodes to copies of itself", the clip phase only has to learn what happens between frames.
    """
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, WanResample

    for module in vae.decoder.modules():
        if isinstance(module, WanResample) and module.mode == "upsample3d":
            conv = module.time_conv
            conv.weight.zero_()
            conv.bias.zero_()
            channels = conv.in_channels
            eye = torch.eye(channels)
            conv.weight[:channels, :, -1, 0, 0] = eye  # first of the two output frames
            conv.weight[channels:, :, -1, 0, 0] = eye  # second
        elif isinstance(module, WanCausalConv3d) and module.kernel_size[0] > 1:
            module.weight[:, :, :-1] = 0.0  # keep only the current frame's tap


def train_vae_decoder(vae: torch.nn.Module, pca: BlockPCA, clips: np.ndarray, cfg: TrainConfig,
                      rng: np.random.Generator, log: Log) -> float:
    """Teaches the Wan decoder to invert the PCA latents: single frames first, then whole clips.

    Single frames go through the decoder's first-frame path only and cost 1/17 of a clip, so the spatial
    decoding (most of the work) is learned cheaply; whole clips then train the temporal upsampling.
    """
    start_decoder_per_frame(vae)
    device = next(vae.parameters()).device
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    n, t, h, w, _ = clips.shape
    crop = min(cfg.vae_crop, h, w) // 8 * 8
    running = float("nan")
    vae.train()
    # Whole clips at half the rate: they refine the temporal taps without undoing the spatial decoding.
    for phase, steps, batch, lr in (("frames", cfg.vae_image_steps, cfg.vae_image_batch, cfg.vae_lr),
                                    ("clips", cfg.vae_clip_steps, cfg.vae_clip_batch, cfg.vae_lr / 2)):
        opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
        running = float("nan")
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr * _cosine(step, steps, 30)
            pieces = []
            for i in rng.integers(0, n, batch):
                y0, x0 = (int(v) * 8 for v in rng.integers(0, [(h - crop) // 8 + 1, (w - crop) // 8 + 1]))
                frames = [int(rng.integers(t))] if phase == "frames" else list(range(t))
                pieces.append(clips[i, frames, y0:y0 + crop, x0:x0 + crop])
            video = np.stack(pieces)
            recon = decode_unclamped(vae, pca.encode(video).to(device))
            target = to_video_tensor(video).to(device)
            loss = F.l1_loss(recon, target) + F.mse_loss(recon, target)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            running = loss.item() if step == 0 else 0.95 * running + 0.05 * loss.item()
            if step % 50 == 0 or step == steps - 1:
                log(f"vae decoder ({phase}) {step}/{steps} loss {running:.4f}")
    vae.eval()
    return float(running)


def shifted_sigmas(u: torch.Tensor, shift: float) -> torch.Tensor:
    """The scheduler's time shift: uniform u -> sigma, so training sees noise levels as sampling visits them."""
    return shift * u / (1 + (shift - 1) * u)


def boundary_u(shift: float, boundary: float = BOUNDARY_RATIO) -> float:
    """The u whose shifted sigma is the expert boundary (0.7 for shift 3 and boundary 0.875)."""
    return boundary / (shift - (shift - 1) * boundary)


def flow_matching_loss(expert: torch.nn.Module, context: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor,
                       noise: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between the expert's velocity and noise - x0 at x_t = (1 - sigma) x0 + sigma noise, t = 1000 sigma;
    with ``weight`` (broadcast to x0), the weighted mean of the squared error."""
    s = sigma.view(-1, 1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * noise
    pred = expert(hidden_states=x_t, timestep=sigma * 1000, encoder_hidden_states=context, return_dict=False)[0]
    if weight is None:
        return F.mse_loss(pred, noise - x0)
    weight = weight.expand_as(x0)
    return (weight * (pred - (noise - x0)).square()).sum() / weight.sum()


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, in one fused call (a loop launches a kernel per tensor)."""
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)


class ExpertTrainer:
    """One expert (or the shared trunk before the split): optimiser, schedule, EMA and its sigma range."""

    def __init__(self, name: str, model: torch.nn.Module, u_range: tuple[float, float], cfg: TrainConfig,
                 total_steps: int, ema: bool) -> None:
        self.name, self.model, self.u_range, self.cfg, self.total = name, model, u_range, cfg, total_steps
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.01,
                                     fused=next(model.parameters()).is_cuda)
        self.ema = copy.deepcopy(model).eval().requires_grad_(False) if ema else None
        self.step = 0
        self.running: float | None = None

    def sigmas(self, n: int, gen: torch.Generator) -> torch.Tensor:
        lo, hi = self.u_range
        return shifted_sigmas(lo + (hi - lo) * torch.rand(n, generator=gen, device=gen.device), self.cfg.flow_shift)

    def update_ema(self) -> None:
        if self.ema is None:
            return
        ema_update(self.ema, self.model, self.cfg.ema)

    def record(self, loss: float) -> None:
        self.running = loss if self.running is None else 0.98 * self.running + 0.02 * loss
        self.step += 1


Checkpoint = Callable[[int, torch.nn.Module, torch.nn.Module, torch.nn.Module], None]


def expert_order(high: int, low: int) -> list[int]:
    """Which expert (0: high-noise, 1: low-noise) trains at each step after the split: spread evenly, the
    high-noise one first, so equal counts alternate 0, 1, 0, 1, ..."""
    total = high + low
    return [0 if -(-(k + 1) * high // total) > -(-k * high // total) else 1 for k in range(total)]


def train_experts(text_encoder: torch.nn.Module, head: AttributeHead, batcher: PromptBatcher,
                  latents: torch.Tensor, attrs: list[SceneAttributes], cfg: TrainConfig,
                  rng: np.random.Generator, gen: torch.Generator, log: Log,
                  checkpoint: Checkpoint | None = None,
                  start: tuple[torch.nn.Module, torch.nn.Module] | None = None,
                  weights: torch.Tensor | None = None,
                  ) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, float]]:
    """Shared trunk on all noise levels, then high- and low-noise experts interleaved (``expert_order``).

    With ``start`` (trained high- and low-noise experts) there is no trunk: both train on from those weights,
    and the text encoder stays as it is (their condition must not move under them, and the attribute head
    that kept it informative is gone).
    ``weights`` ((N, 1, T, H, W), one map per latent clip) weights the loss cell by cell (``subject_weight``).
    ``checkpoint(step, high, low, text_encoder)`` is called every ``cfg.checkpoint_every`` steps (the trunk
    stands for both experts before the split), so a long run can be evaluated while it goes on.
    """
    ub = boundary_u(cfg.flow_shift)
    train_text = start is None
    joint_steps = cfg.joint_steps if start is None else 0
    text_opt = torch.optim.AdamW(list(text_encoder.parameters()) + list(head.parameters()), lr=cfg.text_lr,
                                 weight_decay=0.01) if train_text else None
    if start is None:
        trunk = ExpertTrainer("trunk", build_expert(cfg).to(latents.device), (0.0, 1.0), cfg, joint_steps,
                              ema=False)
        use_compact_cross_attention(trunk.model, TRAIN_TEXT_LENGTH)  # the experts are copies: they inherit it
        start = (trunk.model, trunk.model)
    else:
        trunk = None
        for expert in start:
            use_compact_cross_attention(expert, TRAIN_TEXT_LENGTH)
    high_steps = cfg.high_expert_steps or cfg.expert_steps
    order = expert_order(high_steps, cfg.expert_steps)
    experts: list[ExpertTrainer] = []
    text_ema = text_encoder
    total = joint_steps + len(order)
    started = time.monotonic()
    text_encoder.train(train_text).requires_grad_(train_text)
    for i in range(total):
        if i == joint_steps:  # the split: both experts start from the trunk (or from ``start``)
            experts = [ExpertTrainer("transformer", copy.deepcopy(start[0]), (ub, 1.0), cfg, high_steps, ema=True),
                       ExpertTrainer("transformer_2", copy.deepcopy(start[1]), (0.0, ub), cfg, cfg.expert_steps,
                                     ema=True)]
            if train_text:
                text_ema = copy.deepcopy(text_encoder).eval().requires_grad_(False)
        job = trunk if i < joint_steps else experts[order[i - joint_steps]]
        lr_scale = _cosine(job.step, job.total, 50 if job is trunk else 20)
        for group in job.opt.param_groups:
            group["lr"] = cfg.lr * lr_scale

        idx = rng.integers(0, len(latents), cfg.batch)
        batch_attrs: list[SceneAttributes | None] = [
            None if rng.uniform() < cfg.drop_prompt else attrs[j] for j in idx]
        ids, mask = batcher(batch_attrs)
        hidden = text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        context = compact_context(hidden, mask)
        rows = torch.from_numpy(idx).to(latents.device)
        x0 = latents[rows]
        noise = torch.randn(x0.shape, generator=gen, device=gen.device)
        loss = flow_matching_loss(job.model, context, x0, job.sigmas(len(idx), gen), noise,
                                  None if weights is None else weights[rows])
        job.opt.zero_grad()
        objective = loss
        if text_opt is not None:
            for group in text_opt.param_groups:
                group["lr"] = cfg.text_lr * _cosine(i, total, 50)
            aux = head.loss(hidden, mask, attribute_targets(batch_attrs))
            text_opt.zero_grad()
            objective = loss + cfg.aux_weight * aux
        objective.backward()
        torch.nn.utils.clip_grad_norm_(job.model.parameters(), 1.0)
        job.opt.step()
        if text_opt is not None:
            text_opt.step()
        job.update_ema()
        job.record(loss.item())
        if experts and train_text:
            ema_update(text_ema, text_encoder, cfg.ema)
        if i % 50 == 0 or i == total - 1:
            elapsed = time.monotonic() - started
            losses = " ".join(f"{j.name} {j.running:.4f}" for j in ([trunk] if not experts else experts)
                              if j.running is not None)
            aux_note = f" aux {aux.item():.3f}" if text_opt is not None else ""
            log(f"flow {i}/{total} {losses}{aux_note} ({elapsed:.0f}s, eta "
                f"{elapsed / (i + 1) * (total - i - 1):.0f}s)")
        if checkpoint is not None and cfg.checkpoint_every and (i + 1) % cfg.checkpoint_every == 0 and i + 1 < total:
            if experts:
                checkpoint(i + 1, experts[0].ema, experts[1].ema, text_ema)
            else:
                checkpoint(i + 1, trunk.model, trunk.model, text_encoder)
    text_encoder.eval()
    if experts:
        if train_text:
            text_encoder.load_state_dict(text_ema.state_dict())
        high, low = experts[0].ema, experts[1].ema
    else:  # no expert steps (tests): both experts are the trunk
        high, low = start[0], copy.deepcopy(start[1])
    for expert in (high, low):
        use_diffusers_attention(expert)
    final = {j.name: float(j.running) for j in ([trunk, *experts]) if j is not None and j.running is not None}
    return high.eval(), low.eval(), final


# --- the whole run ---------------------------------------------------------------------------------------

def load_trained(folder: Path, device: str) -> tuple[torch.nn.Module, torch.nn.Module, BlockPCA,
                                                     tuple[torch.nn.Module, torch.nn.Module]]:
    """Text encoder, VAE, latent basis and both experts of a folder this script wrote, to train on from."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5EncoderModel

    pca = BlockPCA.load(folder)
    text_encoder = UMT5EncoderModel.from_pretrained(folder / "text_encoder").to(device)
    vae = AutoencoderKLWan.from_pretrained(folder / "vae").to(device)
    experts = tuple(WanTransformer3DModel.from_pretrained(folder / name).to(device)
                    for name in ("transformer", "transformer_2"))
    return text_encoder, vae, pca, experts


def lineage(init_from: Path | None) -> list[dict[str, object]]:
    """The runs a model's weights went through, oldest first: each run's summary without its own lineage."""
    if init_from is None:
        return []
    record = Path(init_from) / "reef_training.json"
    if not record.is_file():
        raise FileNotFoundError(f"{record} is missing: a model trained on must say how it was made")
    summary = json.loads(record.read_text(encoding="utf-8"))
    earlier = summary.pop("init_from", [])
    return [*earlier, {"path": str(init_from), **summary}]


def train(out_dir: Path, cfg: TrainConfig, log: Log = print, device: str = "cpu",
          workers: int = 1, init_from: Path | None = None) -> dict[str, object]:
    """Runs every stage and writes a diffusers WanPipeline folder to ``out_dir``; returns the run summary.

    ``device`` runs the models there (see the module's note on reproducibility); ``workers`` processes render
    the clips and change no pixel. ``init_from`` (a folder this function wrote) trains its experts on: its
    tokenizer, text encoder, VAE and latent normalisation are kept, and fresh clips are drawn from ``cfg.seed``.
    """
    from diffusers import WanPipeline
    from transformers import AutoTokenizer

    history = lineage(init_from)  # before any work: a folder that cannot say how it was made is refused
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    if str(device).startswith("cuda"):
        torch.set_float32_matmul_precision("high")  # TF32 tensor cores: these small models are otherwise slow
    gen = torch.Generator(device).manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    timings: dict[str, float] = {}
    clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        timings[name] = round(now - clock, 1)
        clock = now
        log(f"== {name} done in {timings[name]:.0f}s")

    tok_dir = out_dir / "tokenizer"
    start = None
    if init_from is None:
        build_tokenizer(tok_dir)
    else:
        shutil.copytree(Path(init_from) / "tokenizer", tok_dir, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    batcher = PromptBatcher(tok_dir / "tokenizer.json", rng, cfg.word_dropout, device)
    head = AttributeHead(cfg.text_dim).to(device)
    losses: dict[str, float] = {}
    if init_from is None:
        text_encoder = build_text_encoder(len(tokenizer), cfg).to(device)
        losses["text_attributes"] = train_text_encoder(text_encoder, head, batcher, cfg, rng, log)
        lap("text_encoder")
        vae = build_vae(cfg).to(device)
    else:
        text_encoder, vae, pca, start = load_trained(Path(init_from), device)
        lap("loaded")

    # Workers are spawned, not forked: the parent may hold CUDA and torch's thread pools.
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        if init_from is None:
            vae_clips = render_set(balanced_attributes(cfg.vae_clips, rng), cfg, rng, pool)
            pca = BlockPCA.fit(vae_clips)
            log(f"latent basis explains {float(pca.arrays['first_explained']):.4f} (frame 0) and "
                f"{float(pca.arrays['rest_explained']):.4f} (later frames) of the pixel variance")
            losses["vae"] = train_vae_decoder(vae, pca, vae_clips, cfg, rng, log)
            del vae_clips
            lap("vae")

        attrs = balanced_attributes(cfg.clips, rng)
        chunks, water_chunks = [], []
        for first in range(0, cfg.clips, 100):  # render and encode in chunks: pixels never all sit in memory
            rendered = render_set(attrs[first:first + 100], cfg, rng, pool, with_water=cfg.subject_weight > 0)
            if cfg.subject_weight > 0:
                water_chunks.append(pca.encode(rendered[:, 1]))
                rendered = rendered[:, 0]
            chunks.append(pca.encode(rendered))
            if first % 1000 == 0:
                log(f"latents {min(first + 100, cfg.clips)}/{cfg.clips}")
    finally:  # the workers go even when a stage fails
        if pool is not None:
            pool.terminate()
    raw = torch.cat(chunks).to(device)
    if init_from is None:
        mean = raw.mean(dim=(0, 2, 3, 4))
        std = raw.std(dim=(0, 2, 3, 4)).clamp(min=1e-3)
        vae.register_to_config(latents_mean=[round(float(v), 6) for v in mean],
                               latents_std=[round(float(v), 6) for v in std])
    else:  # the experts were trained in this normalisation: keep it
        mean = torch.tensor(vae.config.latents_mean, device=device)
        std = torch.tensor(vae.config.latents_std, device=device)
    latents = (raw - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)
    weights = None
    if water_chunks:
        water = (torch.cat(water_chunks).to(device) - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)
        weights = subject_cell_weights(latents, water, cfg.subject_weight)
        del water
        log(f"subject cell weights: mean {float(weights.mean()):.3f}, cells above 2: "
            f"{float((weights > 2).float().mean()):.2%}")
    lap("latents")

    def save(folder: Path, high: torch.nn.Module, low: torch.nn.Module, text: torch.nn.Module,
             **record: object) -> dict[str, object]:
        """Writes the pipeline, the latent basis and reef_training.json (how the weights were made)."""
        def cpu(model: torch.nn.Module) -> torch.nn.Module:
            return copy.deepcopy(model).to("cpu")

        pipe = WanPipeline(tokenizer=tokenizer, text_encoder=cpu(text), vae=cpu(vae), scheduler=build_scheduler(cfg),
                           transformer=cpu(high), transformer_2=cpu(low), boundary_ratio=BOUNDARY_RATIO)
        pipe.save_pretrained(folder)
        pca.save(folder / "vae" / "reef_latent_basis.npz")  # the encoder the latents were made with
        summary = {"config": dataclasses.asdict(cfg), "seconds": dict(timings),
                   "total_seconds": round(sum(timings.values()), 1), **record, "init_from": history,
                   "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
                   "device_name": torch.cuda.get_device_name() if str(device).startswith("cuda") else "cpu"}
        (folder / "reef_training.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        return summary

    def checkpoint(step: int, high: torch.nn.Module, low: torch.nn.Module, text: torch.nn.Module) -> None:
        # A snapshot says how it was made too: a lease that ends mid-run leaves it to train on from.
        save(out_dir / "checkpoints" / f"step_{step}", high, low, text, flow_step=step, losses=losses)
        log(f"checkpoint at flow step {step}")

    high, low, flow_losses = train_experts(text_encoder, head, batcher, latents, attrs, cfg, rng, gen, log,
                                           checkpoint, start, weights)
    lap("experts")
    summary = save(out_dir, high, low, text_encoder, losses={**losses, **flow_losses})
    log(f"wrote {out_dir} in {summary['total_seconds']:.0f}s")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wanrt.reef.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="diffusers WanPipeline folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=["cpu", "gpu", "quick"], default="cpu",
                        help="cpu: the defaults, about an hour on 2 cores; gpu: the shipped model's settings "
                             "(use with --device cuda); quick: tiny sizes and a few steps (tests)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (results depend on it)")
    parser.add_argument("--device", default="cpu", help="torch device for the models, e.g. cuda")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering clips (no effect on results)")
    parser.add_argument("--init-from", type=Path, default=None, metavar="DIR",
                        help="a folder this script wrote: train its experts on (fresh clips from --seed), keeping "
                             "its tokenizer, text encoder and VAE; the architecture is the folder's")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a TrainConfig field, e.g. --set joint_steps=200")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = {"cpu": TrainConfig, "gpu": TrainConfig.gpu, "quick": TrainConfig.quick}[args.preset](seed=args.seed)
    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        kind = type(getattr(cfg, name))
        overrides[name] = kind(value)
    cfg = dataclasses.replace(cfg, **overrides)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    train(args.out, cfg, log, args.device, args.workers, args.init_from)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
