"""One whole Wan2.2-A14B clip through diffusers' WanPipeline at full width, random weights, on one device.

The end-to-end torch baseline beside the per-component rows of ``gpu_a14b``: the UMT5-XXL text encoder, both
14B experts switched at the boundary (each with its own guidance scale), a few UniPC steps and the Wan2.1 VAE
decoder, every module built at the real model's width and depth directly on the device (nothing is downloaded;
the weights are random, so the clip is noise and only the time and memory mean anything). Text encoding, each
denoising step (with the expert it ran) and the VAE decode are timed apart; the steps are those of
``WanPipeline.__call__`` itself, read from its step callback, so the flow is diffusers' own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

from wanrt.benchmarks.flops import DitShape, VideoShape, forward_flops
from wanrt.benchmarks.synthetic import build_expert, device_sync, expert_config, keep_fp32_modules

# transformers' UMT5Config of the text encoder Wan2.2-T2V-A14B ships (google/umt5-xxl's encoder), and a tiny one
# for tests of this code on a CPU.
TEXT_ENCODERS: dict[str, dict[str, Any]] = {
    "umt5-xxl": dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                     relative_attention_num_buckets=32, relative_attention_max_distance=128,
                     feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1),
    "tiny": dict(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                 relative_attention_num_buckets=8, relative_attention_max_distance=16,
                 feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1),
}
# The Wan2.2-T2V-A14B sampling recipe: flow shift, the high/low-noise boundary, guidance for each expert.
A14B_FLOW_SHIFT = 12.0
A14B_BOUNDARY = 0.875
A14B_GUIDANCE = (4.0, 3.0)


@dataclasses.dataclass(frozen=True)
class ClipRun:
    model: str  # a synthetic.CONFIGS name (each expert)
    text_encoder: str  # a TEXT_ENCODERS name
    vae: str  # a synthetic.VAE_CONFIGS name
    video: VideoShape
    device: str
    steps: int = 4
    layers: int | None = None  # None: the real depth
    dtype: str = "bfloat16"
    vae_dtype: str = "float32"  # diffusers' Wan examples decode in fp32
    prompt: str = "a school of glowing jellyfish drifts past a hydrothermal vent bubbles rising"


@contextlib.contextmanager
def default_dtype(dtype: Any) -> Iterator[None]:  # noqa: ANN401
    """Builds modules in ``dtype`` directly, so a 14B module never exists in fp32 on the device first."""
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def build_tokenizer(vocab: list[str]) -> Any:  # noqa: ANN401
    """A WordLevel tokenizer over the prompt's own words, pad 0 and eos 1 as UMT5's (the ids only index rows)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<unk>", *dict.fromkeys(vocab)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_text_encoder(name: str, device: str, dtype: Any) -> Any:  # noqa: ANN401
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):
        model = UMT5EncoderModel(UMT5Config(**TEXT_ENCODERS[name]))
    return keep_fp32_modules(model.eval().requires_grad_(False))


def build_pipeline(run: ClipRun) -> Any:  # noqa: ANN401
    """WanPipeline in the A14B layout (two experts, boundary 0.875) with random full-size modules."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline

    from wanrt.benchmarks.synthetic import VAE_CONFIGS

    dtype = getattr(torch, run.dtype)
    config = expert_config(run.model, run.layers)
    with default_dtype(dtype):
        high, low = (build_expert(config, run.device, dtype, seed=seed) for seed in (1, 2))
    torch.manual_seed(0)
    with torch.device(run.device):
        vae = AutoencoderKLWan(**VAE_CONFIGS[run.vae])
    vae = vae.to(getattr(torch, run.vae_dtype)).eval().requires_grad_(False)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=A14B_FLOW_SHIFT)
    return WanPipeline(tokenizer=build_tokenizer(run.prompt.split()),
                       text_encoder=build_text_encoder(run.text_encoder, run.device, dtype),
                       vae=vae, scheduler=scheduler, transformer=high, transformer_2=low,
                       boundary_ratio=A14B_BOUNDARY)


def expert_schedule(scheduler: Any, steps: int) -> list[tuple[float, str]]:  # noqa: ANN401
    """The timesteps ``steps`` UniPC steps visit and the expert WanPipeline gives each (its own rule)."""
    scheduler.set_timesteps(steps)
    boundary = A14B_BOUNDARY * scheduler.config.num_train_timesteps
    return [(float(t), "transformer" if t >= boundary else "transformer_2") for t in scheduler.timesteps]


def warm_up(pipe: Any, run: ClipRun) -> None:  # noqa: ANN401
    """One call of each expert at the clip's shape and a one-frame decode: kernel choice is not timed."""
    import torch

    latent = (1, 16, (run.video.frames - 1) // 4 + 1, run.video.height // 8, run.video.width // 8)
    dtype = getattr(torch, run.dtype)
    text = torch.zeros((1, 512, pipe.text_encoder.config.d_model), device=run.device, dtype=dtype)
    with torch.inference_mode():
        for expert in (pipe.transformer, pipe.transformer_2):
            expert(hidden_states=torch.zeros(latent, device=run.device, dtype=dtype),
                   timestep=torch.full((1,), 900.0, device=run.device), encoder_hidden_states=text,
                   return_dict=False)
        pipe.vae.decode(torch.zeros((*latent[:2], 1, *latent[3:]), device=run.device, dtype=pipe.vae.dtype))


def time_clip(run: ClipRun, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Builds the pipeline, warms it, then times one clip stage by stage."""
    import torch

    say = progress or (lambda _m: None)
    sync = device_sync(run.device) or (lambda: None)
    cuda = run.device.startswith("cuda")
    started = time.perf_counter()
    pipe = build_pipeline(run)
    pipe.set_progress_bar_config(disable=True)
    built_s = time.perf_counter() - started
    schedule = expert_schedule(pipe.scheduler, run.steps)
    say(f"built in {built_s:.1f} s; steps {schedule}")
    warm_up(pipe, run)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    with torch.inference_mode():
        start = time.perf_counter()
        embeds, negative = pipe.encode_prompt(run.prompt, negative_prompt="", max_sequence_length=512,
                                              device=run.device)
        sync()
        encoded = time.perf_counter()
        step_ends: list[float] = []

        def on_step_end(_pipe: Any, _i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:  # noqa: ANN401
            sync()
            step_ends.append(time.perf_counter())
            return kwargs

        high_guidance, low_guidance = A14B_GUIDANCE
        frames = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, height=run.video.height,
                      width=run.video.width, num_frames=run.video.frames, num_inference_steps=run.steps,
                      guidance_scale=high_guidance, guidance_scale_2=low_guidance, output_type="np",
                      generator=torch.Generator(run.device).manual_seed(0), callback_on_step_end=on_step_end,
                      return_dict=False)[0]
        sync()
        finished = time.perf_counter()

    step_s = [b - a for a, b in zip([encoded, *step_ends], step_ends, strict=False)]
    shape = DitShape.from_config(pipe.transformer.config)
    tokens = run.video.tokens(shape)
    per_forward = forward_flops(shape, tokens).total
    result: dict[str, Any] = {
        "model": run.model, "text_encoder": run.text_encoder, "vae": run.vae, "layers": shape.layers,
        "dtype": run.dtype, "vae_dtype": run.vae_dtype, "video": dataclasses.asdict(run.video), "tokens": tokens,
        "device": run.device, "flow_shift": A14B_FLOW_SHIFT, "boundary_ratio": A14B_BOUNDARY,
        "guidance": list(A14B_GUIDANCE), "build_s": built_s,
        "steps": [{"timestep": t, "expert": expert, "s": s} for (t, expert), s in zip(schedule, step_s, strict=True)],
        "text_encode_s": encoded - start,
        "denoise_s": step_ends[-1] - encoded,
        "decode_s": finished - step_ends[-1],  # the VAE decode and diffusers' postprocess to uint8-ready floats
        "clip_s": finished - start,
        "frames_out": list(frames.shape),
        "step_flops": 2 * per_forward,  # the CFG pair: WanPipeline runs the two calls one after the other
        "peak_device_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "experts_used": sorted({expert for _, expert in schedule}),
    }
    result["mean_step_s"] = result["denoise_s"] / run.steps
    return result

