"""The reef model's networks (diffusers' and transformers' own Wan classes, small), and the training-only
pieces around them: the attribute head, the compact cross-attention, the decoder's unclamped decode."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from wanrt.engine.spec import WAN_TEXT_LENGTH
from wanrt.reef.config import TrainConfig
from wanrt.reef.text import ATTRIBUTE_CLASSES, EOS_ID, PAD_ID


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
    logit is raised by log(n), so the experts attend over L + 1 rows instead of 512 (over 512 rows,
    cross-attention is most of a training step's attention time). Saved models keep diffusers' own processor.
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

