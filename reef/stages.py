"""The training stages: the text encoder on its own, the VAE decoder against the latent basis, then the experts
(a shared trunk, split into the high- and low-noise experts)."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from wanrt.reef.config import TrainConfig
from wanrt.reef.data import PromptBatcher, to_video_tensor
from wanrt.reef.flow import boundary_u, flow_matching_loss, shifted_sigmas
from wanrt.reef.latent_basis import BlockPCA
from wanrt.reef.networks import (
    AttributeHead,
    build_expert,
    compact_context,
    decode_unclamped,
    start_decoder_per_frame,
    use_compact_cross_attention,
    use_diffusers_attention,
)
from wanrt.reef.renderer import SceneAttributes, all_attributes
from wanrt.reef.text import TRAIN_TEXT_LENGTH, attribute_targets

Log = Callable[[str], None]


def _cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate scale: linear warm-up over ``warmup`` steps, then a cosine from 1 down to 0.1."""
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
            recon = decode_unclamped(vae, torch.from_numpy(pca.encode(video)).to(device))
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

