"""A FLOP model for Wan DiT shapes: the floor every backend's time is compared with.

Counted: every matrix multiply (2 FLOPs per multiply-add) of one expert forward: patch embedding, text and time
embedders, per block the self-attention projections and scores (QK^T, AV), the cross-attention projections
(its keys and values come from the text tokens), the feed-forward, and the output projection. Not counted:
norms, modulation, RoPE, softmax and activations (elementwise, under 1% at Wan sizes). Attention's FLOPs do
not depend on the head count (heads x head_dim = dim), so the model needs none.
"""

from __future__ import annotations

import dataclasses
import math

from wanrt.engine.shapes import WAN_TRAINED_FRAMES, dit_tokens


@dataclasses.dataclass(frozen=True)
class DitShape:
    """The widths of a Wan DiT expert (diffusers' WanTransformer3DModel config names in comments)."""

    dim: int  # num_attention_heads * attention_head_dim
    ffn_dim: int  # ffn_dim
    layers: int  # num_layers
    text_dim: int  # text_dim (the text encoder's width)
    in_channels: int = 16  # in_channels
    out_channels: int = 16  # out_channels
    patch_size: tuple[int, int, int] = (1, 2, 2)
    freq_dim: int = 256  # freq_dim (sinusoidal timestep features)

    @classmethod
    def from_config(cls, config: dict) -> DitShape:
        """From a WanTransformer3DModel config.json (or its ``config`` attribute)."""
        return cls(dim=int(config["num_attention_heads"]) * int(config["attention_head_dim"]),
                   ffn_dim=int(config["ffn_dim"]), layers=int(config["num_layers"]),
                   text_dim=int(config["text_dim"]), in_channels=int(config["in_channels"]),
                   out_channels=int(config.get("out_channels") or config["in_channels"]),
                   patch_size=tuple(config["patch_size"]), freq_dim=int(config["freq_dim"]))

    def with_layers(self, layers: int) -> DitShape:
        return dataclasses.replace(self, layers=layers)


# Wan2.2-T2V-A14B: each of its two experts (Wan-AI/Wan2.2-T2V-A14B-Diffusers transformer/config.json).
WAN22_A14B = DitShape(dim=5120, ffn_dim=13824, layers=40, text_dim=4096)
A14B_HEADS = 40
TEXT_LENGTH = 512  # WanPipeline's text context: padded to 512 tokens, attended whole


@dataclasses.dataclass(frozen=True)
class VideoShape:
    frames: int
    height: int
    width: int

    def tokens(self, shape: DitShape, temporal_stride: int = 4, spatial_stride: int = 8) -> int:
        """Patchified video tokens: latent frames x latent rows x latent columns over the patch size."""
        return dit_tokens(self.frames, self.height, self.width, temporal=temporal_stride, spatial=spatial_stride,
                          patch=shape.patch_size)


PRESETS = {"480p": VideoShape(WAN_TRAINED_FRAMES, 480, 832), "720p": VideoShape(WAN_TRAINED_FRAMES, 720, 1280)}


@dataclasses.dataclass(frozen=True)
class ForwardFlops:
    """FLOPs of one expert forward for one sample, split where the time goes."""

    embeddings: int  # patch, text and time embedders and the output projection (once per forward)
    per_layer: int  # one transformer block
    layers: int

    @property
    def total(self) -> int:
        return self.embeddings + self.per_layer * self.layers


def attention_score_flops(shape: DitShape, tokens: int, text_tokens: int = TEXT_LENGTH) -> int:
    """One block's QK^T and AV products: self-attention over the video tokens, cross-attention to the text."""
    return 2 * tokens * tokens * shape.dim * 2 + 2 * tokens * text_tokens * shape.dim * 2


def block_flops(shape: DitShape, tokens: int, text_tokens: int = TEXT_LENGTH) -> int:
    d, n, lt = shape.dim, tokens, text_tokens
    self_projections = 2 * n * d * d * 4  # q, k, v, out
    cross_projections = 2 * n * d * d * 2 + 2 * lt * d * d * 2  # q and out on the video tokens; k and v on the text
    feed_forward = 2 * n * d * shape.ffn_dim * 2
    return self_projections + cross_projections + feed_forward + attention_score_flops(shape, n, lt)


def forward_flops(shape: DitShape, tokens: int, text_tokens: int = TEXT_LENGTH) -> ForwardFlops:
    """One expert call on one sample (a CFG pair is two samples)."""
    d = shape.dim
    patch = math.prod(shape.patch_size)
    embeddings = (2 * tokens * shape.in_channels * patch * d  # patch embedding (a strided Conv3d)
                  + 2 * text_tokens * (shape.text_dim * d + d * d)  # text embedder: two linears
                  + 2 * (shape.freq_dim * d + d * d + d * 6 * d)  # time embedder and its 6-way modulation
                  + 2 * tokens * d * shape.out_channels * patch)  # output projection back to patches
    return ForwardFlops(embeddings=embeddings, per_layer=block_flops(shape, tokens, text_tokens), layers=shape.layers)


def step_flops(shape: DitShape, tokens: int, *, cfg: bool = True, text_tokens: int = TEXT_LENGTH) -> int:
    """One denoising step: the expert on the conditional and (with CFG) the unconditional sample."""
    return forward_flops(shape, tokens, text_tokens).total * (2 if cfg else 1)


def tflops_per_second(flops: float, seconds: float) -> float:
    return flops / seconds / 1e12
