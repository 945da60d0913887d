"""The Wan VAE decoder one latent frame per call, in torch: diffusers' own ``WanDecoder3d`` wrapped so that its
causal-convolution caches are explicit inputs and outputs.

``export/vae_decoder.py`` traces these modules into the two ONNX graphs every backend but torch runs, and the torch
backend runs them as they are, so both decode the same way. Why a fixed 2-frame cache is exact: every cache
diffusers keeps is consumed only by a ``WanCausalConv3d`` whose causal time padding is 2 (``CACHE_T``); the conv
concatenates the cache and zero-pads whatever is missing of those 2 frames. So a short (1-frame, first chunk) cache
equals the same cache left-padded with zeros, and the ``"Rep"`` marker upsample3d stores on the first chunk equals a
2-frame zero cache (its branch prepends zeros to the new cache and runs ``time_conv`` with plain zero padding).
``probe_cache_layout`` checks the padding claim on the actual model with hooks rather than trusting it.

torch and diffusers (the `export` extra) are imported at the top: only torch code paths import this module.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wanrt.errors import ExportVerificationError

CACHE_FRAMES = 2  # diffusers' CACHE_T: the left context of a temporal kernel of 3
_PROBE_HW = (2, 3)  # distinct so a scale mix-up between h and w cannot pass


@dataclasses.dataclass(frozen=True)
class VaeCacheLayout:
    """Per-cache shapes (B, channels[k], 2, h * scales[k], w * scales[k]) for latent size (h, w), plus the
    decoder's frame geometry."""

    names: tuple[str, ...]
    channels: tuple[int, ...]
    scales: tuple[int, ...]
    z_dim: int
    out_channels: int
    temporal_stride: int  # video frames per latent frame after the first (which gives 1)
    spatial_scale: int  # video pixels per latent pixel
    frames: int = CACHE_FRAMES

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of the step graph's updated caches (ONNX forbids reusing the input names)."""
        return tuple(f"{n}_out" for n in self.names)

    def shapes(self, batch: int, h: int, w: int) -> list[tuple[int, int, int, int, int]]:
        """Concrete cache shapes for a latent of spatial size (h, w)."""
        return [(batch, c, self.frames, h * s, w * s) for c, s in zip(self.channels, self.scales, strict=True)]

    def as_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "output_names": list(self.output_names), "channels": list(self.channels),
                "scales": list(self.scales), "frames": self.frames}


# Layout per VAE object, so the torch backend probes once rather than on every video it decodes.
_LAYOUTS: weakref.WeakKeyDictionary[nn.Module, VaeCacheLayout] = weakref.WeakKeyDictionary()


def _finish(vae_config: Any, out: torch.Tensor) -> torch.Tensor:
    # The tail of diffusers' _decode: unpatchify (Wan2.2 5B VAE only) then clamp.
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    if vae_config.patch_size is not None:
        out = unpatchify(out, patch_size=vae_config.patch_size)
    return torch.clamp(out, min=-1.0, max=1.0)


def _cache_slots(decoder: nn.Module) -> int:
    # An upper bound diffusers itself uses (it also counts 1x1 shortcuts that never touch the cache).
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    return sum(isinstance(m, WanCausalConv3d) for m in decoder.modules())


def probe_cache_layout(vae: nn.Module) -> VaeCacheLayout:
    """Runs diffusers' decoder eagerly for two latent frames at a tiny size and reads the cache layout off it.

    Also checks, with hooks, that every conv handed a cache pads exactly ``CACHE_FRAMES`` frames in time,
    which is what makes zero-padded 2-frame caches equivalent to diffusers' short ones.
    """
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    param = next(vae.parameters())
    h, w = _PROBE_HW
    z_dim = vae.config.z_dim
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(1, z_dim, 2, h, w, generator=gen).to(param)

    bad: list[str] = []

    def check(module: nn.Module, args: tuple[Any, ...]) -> None:
        has_cache = len(args) > 1 and args[1] is not None
        if has_cache and module._padding[4] != CACHE_FRAMES:
            bad.append(f"{type(module).__name__} kernel {module.kernel_size} time padding {module._padding[4]}")

    hooks = [m.register_forward_pre_hook(check) for m in vae.decoder.modules() if isinstance(m, WanCausalConv3d)]
    try:
        with torch.no_grad():
            x = vae.post_quant_conv(z)
            slots: list[Any] = [None] * _cache_slots(vae.decoder)
            idx = [0]
            first = _finish(vae.config, vae.decoder(x[:, :, :1], feat_cache=slots, feat_idx=idx, first_chunk=True))
            n = idx[0]
            idx = [0]
            step = _finish(vae.config, vae.decoder(x[:, :, 1:2], feat_cache=slots, feat_idx=idx))
    finally:
        for hk in hooks:
            hk.remove()
    if bad:
        raise ExportVerificationError("streaming VAE decode assumes 2-frame causal caches; found " + "; ".join(bad))
    if idx[0] != n or any(s is not None for s in slots[n:]):
        raise ExportVerificationError(f"decoder used {n} caches on the first chunk but {idx[0]} on the next")
    channels, scales = [], []
    for k, c in enumerate(slots[:n]):
        if not isinstance(c, torch.Tensor) or c.shape[2] != CACHE_FRAMES or c.shape[3] % h:
            raise ExportVerificationError(f"cache {k} after one step is not a 2-frame tensor: {getattr(c, 'shape', c)}")
        s = c.shape[3] // h
        if c.shape[4] != w * s:
            raise ExportVerificationError(f"cache {k} scales h and w differently: {tuple(c.shape)} for latent {h}x{w}")
        channels.append(int(c.shape[1]))
        scales.append(int(s))
    if first.shape[2] != 1 or step.shape[3] % h or step.shape[4] != w * (step.shape[3] // h):
        raise ExportVerificationError(f"unexpected frame shapes {tuple(first.shape)}, {tuple(step.shape)}")
    return VaeCacheLayout(
        names=tuple(f"cache_{k}" for k in range(n)),
        channels=tuple(channels),
        scales=tuple(scales),
        z_dim=int(z_dim),
        out_channels=int(step.shape[1]),
        temporal_stride=int(step.shape[2]),
        spatial_scale=int(step.shape[3] // h),
    )


class VaeDecoderInit(nn.Module):
    """First latent frame: ``latent`` -> (frames with 1 video frame, *caches zero-padded to 2 frames)."""

    def __init__(self, vae: nn.Module, layout: VaeCacheLayout | None = None) -> None:
        super().__init__()
        # Only the decoding parts, so export_graph's weight count (external data decision) ignores the encoder.
        self.post_quant_conv = vae.post_quant_conv
        self.decoder = vae.decoder
        self.config = vae.config
        self.layout = layout if layout is not None else probe_cache_layout(vae)
        self._slots = _cache_slots(vae.decoder)

    def forward(self, latent: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.post_quant_conv(latent)
        cache: list[Any] = [None] * self._slots
        out = self.decoder(x, feat_cache=cache, feat_idx=[0], first_chunk=True)
        b, h, w = latent.shape[0], latent.shape[3], latent.shape[4]
        caches = []
        for k, (c, ch, s) in enumerate(zip(cache, self.layout.channels, self.layout.scales, strict=False)):
            if isinstance(c, str):  # "Rep": upsample3d skipped time_conv; a zero cache is its step-path equal
                c = latent.new_zeros((b, ch, CACHE_FRAMES, h * s, w * s))
            elif c is None:
                raise RuntimeError(f"decoder left cache {k} unset on the first chunk")
            else:
                c = F.pad(c, (0, 0, 0, 0, CACHE_FRAMES - c.shape[2], 0))  # missing frames are zeros in front
            caches.append(c)
        return (_finish(self.config, out), *caches)


class VaeDecoderStep(nn.Module):
    """Every later latent frame: (``latent``, *caches) -> (frames with ``temporal_stride`` frames, *caches)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.post_quant_conv = vae.post_quant_conv
        self.decoder = vae.decoder
        self.config = vae.config

    def forward(self, latent: torch.Tensor, *caches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cache: list[Any] = list(caches)
        idx = [0]
        out = self.decoder(self.post_quant_conv(latent), feat_cache=cache, feat_idx=idx)
        if idx[0] != len(caches):
            raise ValueError(f"decoder consumed {idx[0]} caches, {len(caches)} given")
        return (_finish(self.config, out), *cache)


def run_no_grad(fn: nn.Module, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
    # Not a `with` around the yields below: it would leak no-grad mode into the caller between frames.
    with torch.no_grad():
        return fn(*args)


def decode_streaming_torch(vae: nn.Module, z: torch.Tensor) -> Iterator[torch.Tensor]:
    """Decodes latents ``z`` (B, z_dim, T, h, w), already denormalised by the caller, one latent frame at a time.

    Yields (B, 3, 1, H, W) for the first latent frame, then (B, 3, temporal_stride, H, W) per later one;
    their concatenation on dim 2 equals ``vae.decode(z).sample``.
    """
    layout = _LAYOUTS.get(vae)
    if layout is None:
        layout = _LAYOUTS[vae] = probe_cache_layout(vae)
    init, step = VaeDecoderInit(vae, layout), VaeDecoderStep(vae)
    frames, *caches = run_no_grad(init, z[:, :, :1])
    yield frames
    for i in range(1, z.shape[2]):
        frames, *caches = run_no_grad(step, z[:, :, i : i + 1], *caches)
        yield frames
