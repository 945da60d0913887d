"""Random-weight Wan experts with real shapes, made directly on the target device (no download).

``wan2.2-a14b``: one expert of Wan2.2-T2V-A14B (dim 5120 = 40 heads x 128, ffn 13824, 40 layers, text 4096,
text length 512), optionally cut to N layers. Time per layer is measured as the difference between the
N-layer expert and the same expert with no blocks (embeddings and output projection only), so the per-layer
time and the 40-layer extrapolation are separate fields, never one mixed number.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from wanrt.benchmarks.flops import TEXT_LENGTH, WAN22_A14B, DitShape, VideoShape, forward_flops
from wanrt.benchmarks.timing import measure

# diffusers WanTransformer3DModel configs: the A14B expert, and a tiny one for tests of this code on a CPU.
CONFIGS: dict[str, dict[str, Any]] = {
    "wan2.2-a14b": dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
                        out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40,
                        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024),
    "tiny": dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16,
                 out_channels=16, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64),
}
assert DitShape.from_config(CONFIGS["wan2.2-a14b"]) == WAN22_A14B  # one source of truth for the FLOP model


def expert_config(name: str, layers: int | None = None) -> dict[str, Any]:
    config = dict(CONFIGS[name])
    if layers is not None:
        config["num_layers"] = layers
    return config


def keep_fp32_modules(model: Any) -> Any:  # noqa: ANN401
    """As from_pretrained(torch_dtype=...) loads a model: the modules its class keeps in fp32 (diffusers' norms,
    modulation and rope in the Wan DiT; UMT5's feed-forward output ``wo``) go back to fp32."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if keep & set(name.split(".")) and tensor.is_floating_point():
            tensor.data = tensor.data.float()
    return model


def build_expert(config: dict[str, Any], device: str, dtype: Any, seed: int = 0) -> Any:  # noqa: ANN401
    """A WanTransformer3DModel with random weights, created on ``device`` (a 14B expert never sits on the host)."""
    import torch
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    with torch.device(device):
        model = WanTransformer3DModel(**config)
    return keep_fp32_modules(model.to(dtype).eval().requires_grad_(False))


def expert_inputs(config: dict[str, Any], video: VideoShape, batch: int, device: str, dtype: Any,
                  text_tokens: int = TEXT_LENGTH) -> dict[str, Any]:
    import torch

    g = torch.Generator(device).manual_seed(0)
    latent = (batch, config["in_channels"], (video.frames - 1) // 4 + 1, video.height // 8, video.width // 8)
    return {"hidden_states": torch.randn(latent, generator=g, device=device, dtype=dtype),
            "timestep": torch.full((batch,), 900.0, device=device),
            "encoder_hidden_states": torch.randn((batch, text_tokens, config["text_dim"]), generator=g,
                                                 device=device, dtype=dtype)}


def device_sync(device: str) -> Callable[[], None] | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.synchronize


def attention_kernels(model: Any, inputs: dict[str, Any]) -> list[str]:  # noqa: ANN401
    """The SDPA implementations one forward ran (torch profiler op names, e.g. flash or cuDNN attention)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch.inference_mode(), profile(activities=activities) as prof:
        model(**inputs, return_dict=False)
    return sorted({e.key for e in prof.key_averages()
                   if "scaled_dot_product" in e.key and e.key != "aten::scaled_dot_product_attention"})


@dataclasses.dataclass(frozen=True)
class ExpertRun:
    model: str  # a CONFIGS name
    layers: int
    video: VideoShape
    device: str
    dtype: str = "bfloat16"
    compiled: bool = False
    warmup: int = 1
    runs: int = 3


def time_expert(run: ExpertRun, batches: tuple[int, ...] = (2, 1),
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Times the N-layer expert and its no-block twin at each batch (2: the CFG pair in one call)."""
    import torch

    dtype = getattr(torch, run.dtype)
    say = progress or (lambda _m: None)
    sync = device_sync(run.device)
    cuda = run.device.startswith("cuda")
    shape = DitShape.from_config(expert_config(run.model, run.layers))
    tokens = run.video.tokens(shape)
    result: dict[str, Any] = {"model": run.model, "layers": run.layers, "dtype": run.dtype, "compiled": run.compiled,
                              "video": dataclasses.asdict(run.video), "tokens": tokens, "device": run.device}
    timed: dict[int, dict[int, Any]] = {}
    for layers in (run.layers, 0):
        model = build_expert(expert_config(run.model, layers), run.device, dtype)
        if run.compiled and layers:
            model.compile_repeated_blocks(fullgraph=True)
        for batch in batches:
            inputs = expert_inputs(model.config, run.video, batch, run.device, dtype)
            if layers and batch == batches[0] and not run.compiled:
                result["attention_kernels"] = attention_kernels(model, inputs)

            def call(m: Any = model, x: dict = inputs) -> Any:  # noqa: ANN401
                with torch.inference_mode():
                    return m(**x, return_dict=False)[0]

            say(f"{run.model} {layers} layers, batch {batch}{' compiled' if run.compiled else ''}")
            timed.setdefault(layers, {})[batch] = measure(call, warmup=run.warmup, runs=run.runs, sync=sync,
                                                          cuda=cuda)
        del model
        if cuda:
            torch.cuda.empty_cache()
    depth = CONFIGS[run.model]["num_layers"]  # the real model's depth
    for batch in batches:
        full, base = timed[run.layers][batch], timed[0][batch]
        per_layer = (full.median_s - base.median_s) / run.layers
        flops = forward_flops(shape, tokens)
        result[f"batch{batch}"] = {
            "measured": full.summary(), "no_blocks": base.summary(),
            "per_layer_s": per_layer,
            "extrapolated_layers": depth,
            "extrapolated_s": base.median_s + depth * per_layer,
            "flops_measured": batch * (flops.embeddings + flops.per_layer * run.layers),
            "flops_extrapolated": batch * (flops.embeddings + flops.per_layer * depth),
            "per_layer_tflops_per_s": batch * flops.per_layer / per_layer / 1e12 if per_layer > 0 else None,
        }
    return result


# AutoencoderKLWan's defaults are the Wan2.1 VAE that Wan2.2-T2V-A14B decodes with; "tiny" is for tests.
VAE_CONFIGS: dict[str, dict[str, Any]] = {
    "wan2.1": {},
    "tiny": dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                 temperal_downsample=[False, True, True]),
}


def time_vae_decode(vae_name: str, video: VideoShape, device: str, dtype_name: str = "float32", *,
                    warmup: int = 1, runs: int = 3) -> dict[str, Any]:
    """The streaming decoder (export/vae_decoder.py's modules): first latent frame, then a later one."""
    import torch
    from diffusers import AutoencoderKLWan

    from wanrt.export.vae_decoder import VaeDecoderInit, VaeDecoderStep

    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    with torch.device(device):
        vae = AutoencoderKLWan(**VAE_CONFIGS[vae_name])
    vae = vae.to(dtype).eval().requires_grad_(False)
    init, step = VaeDecoderInit(vae).eval(), VaeDecoderStep(vae).eval()
    latent = torch.randn((1, vae.config.z_dim, 2, video.height // 8, video.width // 8), device=device, dtype=dtype)
    sync, cuda = device_sync(device), device.startswith("cuda")
    with torch.inference_mode():
        caches = init(latent[:, :, :1])[1:]
        first = measure(lambda: init(latent[:, :, :1]), warmup=warmup, runs=runs, sync=sync, cuda=cuda)
        nxt = measure(lambda: step(latent[:, :, 1:2], *caches), warmup=warmup, runs=runs, sync=sync, cuda=cuda)
    return {"vae": vae_name, "dtype": dtype_name, "video": dataclasses.asdict(video), "device": device,
            "first_frame": first.summary(), "next_frame": nxt.summary(),
            "per_clip_s": first.median_s + ((video.frames - 1) // 4) * nxt.median_s}
