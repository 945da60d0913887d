"""Streaming AutoencoderKLWan decoder: one latent frame per call, causal-conv caches as graph inputs/outputs.

Tracing ``vae.decode`` unrolls diffusers' per-frame loop to the traced frame count, so it neither generalises
to other lengths nor runs in constant memory. Instead two graphs wrap diffusers' own ``WanDecoder3d``:

- ``vae_decoder_init``: ``latent`` (B, z, 1, h, w) -> ``frames`` (B, 3, 1, H, W), ``cache_0..cache_{N-1}``
- ``vae_decoder_step``: ``latent``, ``cache_0..`` -> ``frames`` (B, 3, 4, H, W), ``cache_0_out..``

The torch modules behind both graphs, and why their fixed 2-frame caches are exact, are in
``engine/backends/torch_vae.py``: the torch backend runs the same modules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wanrt.engine.backends.torch_vae import (
    VaeCacheLayout,
    VaeDecoderInit,
    VaeDecoderStep,
    probe_cache_layout,
    run_no_grad,
)
from wanrt.export import attention
from wanrt.export.onnx_io import EXTERNAL_DATA_THRESHOLD_BYTES, check_parity, export_graph, lower_verified
from wanrt.export.precision import VAE_DECODER_FP32, VAE_PARITY_LIMITS

INIT_FILE = "vae_decoder_init.onnx"
STEP_FILE = "vae_decoder_step.onnx"
PARITY_TOLERANCE = 1e-4
MAX_BATCH = 2
MIN_LATENT_HW = 2  # 1 would be specialised away by torch.export's 0/1 rule
# (batch, latent h, latent w): export at one size, verify at two others so dynamic h/w/batch are exercised.
_EXPORT_SIZE = (2, 4, 6)
_PARITY_SIZES = ((1, 2, 3), (2, 5, 4))


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
    _, *caches = run_no_grad(init, first)
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
