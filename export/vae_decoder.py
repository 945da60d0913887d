"""Streaming AutoencoderKLWan decoder: one latent frame per call, causal-conv caches as graph inputs/outputs.

Tracing ``vae.decode`` unrolls diffusers' per-frame loop to the traced frame count, so it neither generalises
to other lengths nor runs in constant memory. Instead two graphs wrap diffusers' own ``WanDecoder3d``:

- ``vae_decoder_init``: ``latent`` (B, z, 1, h, w) -> ``frames`` (B, 3, 1, H, W), ``cache_0..cache_{N-1}``
- ``vae_decoder_step``: ``latent``, ``cache_0..`` -> ``frames`` (B, 3, 4, H, W), ``cache_0_out..``

Why a fixed 2-frame cache is exact: every cache diffusers keeps is consumed only by a ``WanCausalConv3d``
whose causal time padding is 2 (``CACHE_T``); the conv concatenates the cache and zero-pads whatever is
missing of those 2 frames. So a short (1-frame, first chunk) cache equals the same cache left-padded with
zeros, and the ``"Rep"`` marker upsample3d stores on the first chunk equals a 2-frame zero cache (its branch
prepends zeros to the new cache and runs ``time_conv`` with plain zero padding). ``probe_cache_layout``
checks the padding claim on the actual model with hooks rather than trusting it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wanrt.errors import ExportVerificationError
from wanrt.export import attention
from wanrt.export.onnx_io import EXTERNAL_DATA_THRESHOLD_BYTES, check_parity, export_graph

INIT_FILE = "vae_decoder_init.onnx"
STEP_FILE = "vae_decoder_step.onnx"
CACHE_FRAMES = 2  # diffusers' CACHE_T: the left context of a temporal kernel of 3
PARITY_TOLERANCE = 1e-4
MAX_BATCH = 2
MIN_LATENT_HW = 2  # 1 would be specialised away by torch.export's 0/1 rule
# (batch, latent h, latent w): export at one size, verify at two others so dynamic h/w/batch are exercised.
_EXPORT_SIZE = (2, 4, 6)
_PARITY_SIZES = ((1, 2, 3), (2, 5, 4))
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


def _no_grad(fn: nn.Module, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
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
    frames, *caches = _no_grad(init, z[:, :, :1])
    yield frames
    for i in range(1, z.shape[2]):
        frames, *caches = _no_grad(step, z[:, :, i : i + 1], *caches)
        yield frames


@contextlib.contextmanager
def _nearest_upsampling(decoder: nn.Module) -> Iterator[None]:
    """Temporarily switches diffusers' 2x ``nearest-exact`` upsampling to ``nearest`` while exporting.

    At an integer factor both pick source index floor(dst / 2) (exact: floor((dst + 0.5) / 2) is the same for
    integer dst), so the output is identical; but onnxscript has no ``nearest-exact`` translation and
    decomposes it into index arithmetic + GatherND, while ``nearest`` becomes a single Resize, which is what
    TensorRT wants and also makes the export noticeably cheaper.
    """
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanUpsample

    switched = [m for m in decoder.modules() if isinstance(m, WanUpsample) and m.mode == "nearest-exact"
                and m.scale_factor is not None and all(float(f).is_integer() for f in m.scale_factor)]
    for m in switched:
        m.mode = "nearest"
    try:
        yield
    finally:
        for m in switched:
            m.mode = "nearest-exact"


def _dynamic_shapes(layout: VaeCacheLayout, with_caches: bool) -> tuple[Any, ...]:
    from torch.export import Dim

    batch = Dim("batch", min=1, max=MAX_BATCH)
    h = Dim("height", min=MIN_LATENT_HW)
    w = Dim("width", min=MIN_LATENT_HW)
    latent = {0: batch, 3: h, 4: w}
    if not with_caches:
        return (latent,)
    # Derived dims tie every cache to the latent size, so the graph keeps h and w as its only free sizes.
    # torch.export binds forward's *caches as one argument, hence the nested tuple.
    return (latent, tuple({0: batch, 3: h if s == 1 else s * h, 4: w if s == 1 else s * w} for s in layout.scales))


def _feeds(
    init: VaeDecoderInit, layout: VaeCacheLayout, batch: int, h: int, w: int, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    # Step inputs are real caches from running init, not noise, so parity is checked on realistic values.
    gen = torch.Generator().manual_seed(seed)
    dtype = next(init.parameters()).dtype
    first = torch.randn(batch, layout.z_dim, 1, h, w, generator=gen).to(dtype)
    second = torch.randn(batch, layout.z_dim, 1, h, w, generator=gen).to(dtype)
    _, *caches = _no_grad(init, first)
    step_feeds = {"latent": second.numpy()} | {n: c.numpy() for n, c in zip(layout.names, caches, strict=True)}
    return {"latent": first.numpy()}, step_feeds


def export_vae_decoder(
    vae: nn.Module, out_dir: Path, *, external_data_threshold: int = EXTERNAL_DATA_THRESHOLD_BYTES,
    dtype: str = "fp32",
) -> dict[str, Any]:
    """Writes ``vae_decoder_init.onnx`` and ``vae_decoder_step.onnx`` to ``out_dir``, checks both against
    PyTorch in onnxruntime at two sizes, and returns the manifest entry.

    The VAE is exported in float32 on CPU (caller's responsibility); batch is dynamic in 1..2, latent h and
    w in >= 2.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vae = vae.eval()
    layout = probe_cache_layout(vae)
    init, step = VaeDecoderInit(vae, layout).eval(), VaeDecoderStep(vae).eval()

    b, h, w = _EXPORT_SIZE
    init_feeds, step_feeds = _feeds(init, layout, b, h, w, seed=0)
    init_outputs = ["frames", *layout.names]
    step_inputs = ["latent", *layout.names]
    step_outputs = ["frames", *layout.output_names]
    with _nearest_upsampling(vae.decoder):
        init_files = export_graph(
            init, (torch.from_numpy(init_feeds["latent"]),), out_dir / INIT_FILE,
            input_names=["latent"], output_names=init_outputs, dynamic_shapes=_dynamic_shapes(layout, False),
            external_data_threshold=external_data_threshold,
        )
        step_files = export_graph(
            step, tuple(torch.from_numpy(v) for v in step_feeds.values()), out_dir / STEP_FILE,
            input_names=step_inputs, output_names=step_outputs, dynamic_shapes=_dynamic_shapes(layout, True),
            external_data_threshold=external_data_threshold,
        )

    # Parity against the unmodified (nearest-exact) decoder, so the switch above is checked too.
    feeds = [_feeds(init, layout, pb, ph, pw, seed=seed) for seed, (pb, ph, pw) in enumerate(_PARITY_SIZES, 1)]
    parity = []
    feeds = [_feeds(init, layout, pb, ph, pw, seed=seed) for seed, (pb, ph, pw) in enumerate(_PARITY_SIZES, start=1)]
    for i_feeds, s_feeds in feeds:
        parity.append(check_parity(out_dir / INIT_FILE, init, i_feeds, tolerance=PARITY_TOLERANCE).as_dict())
        parity.append(check_parity(out_dir / STEP_FILE, step, s_feeds, tolerance=PARITY_TOLERANCE).as_dict())
    precision: dict[str, dict[str, Any]] = {"init": {"dtype": "fp32"}, "step": {"dtype": "fp32"}}
    if dtype != "fp32":
        from wanrt.export.precision import VAE_DECODER_FP32, VAE_PARITY_LIMITS, lower_verified

        for key, module, files, index in (("init", init, init_files, 0), ("step", step, step_files, 1)):
            checks, precision[key] = lower_verified(out_dir / files[0].name, module, [f[index] for f in feeds],
                                                    dtype, VAE_DECODER_FP32, external_data=len(files) > 1,
                                                    limits=VAE_PARITY_LIMITS)
            parity += [c.as_dict() for c in checks]
    # The mid-block's spatial attention: its onnxruntime form (fp32 graphs), checked on the same feeds.
    init_attention, init_parity = attention.record(out_dir / INIT_FILE, lambda variant: [
        check_parity(variant, init, f[0], tolerance=PARITY_TOLERANCE) for f in feeds],
        onnxruntime_form=dtype == "fp32")
    step_attention, step_parity = attention.record(out_dir / STEP_FILE, lambda variant: [
        check_parity(variant, step, f[1], tolerance=PARITY_TOLERANCE) for f in feeds],
        onnxruntime_form=dtype == "fp32")
    parity += [p.as_dict() for p in init_parity + step_parity]

    return {
        "init": {"file": INIT_FILE, "files": [p.name for p in init_files],
                 "inputs": ["latent"], "outputs": init_outputs, "attention": init_attention, **precision["init"]},
        "step": {"file": STEP_FILE, "files": [p.name for p in step_files],
                 "inputs": step_inputs, "outputs": step_outputs, "attention": step_attention, **precision["step"]},
        "cache": layout.as_dict(),
        "z_dim": layout.z_dim,
        "out_channels": layout.out_channels,
        "temporal_stride": layout.temporal_stride,
        "spatial_scale": layout.spatial_scale,
        "max_batch": MAX_BATCH,
        "min_latent_hw": MIN_LATENT_HW,
        "parity": parity,
    }
