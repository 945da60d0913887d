"""GPU memory plans: will these engines run on this GPU, and how (experts resident, loaded per stage, or
streaming their weights; the text encoder kept, released after each prompt, or on the CPU)?

A plan counts everything the TensorRT backend allocates on the device, stage by stage:

- each engine's **weights** as its graph holds them (bytes per tensor and dtype: a bf16 export keeps UMT5's
  ``wo`` and the experts' condition embedders, norms and modulation tables in fp32);
- each loaded engine's **I/O buffers** at the largest shapes its profiles accept (the backend's grow-only pools);
- one **scratch** buffer shared by every engine (calls are serialised), sized for the largest engine's need;
- the streaming VAE decoder's **cache pair** while a video decodes (the step engine reads one set and writes the
  other: TensorRT cannot update an engine's inputs in place), allocated at the first latent frame and freed after
  the last, so it shares the room a released text encoder leaves;
- the **CUDA context** (with the kernel modules TensorRT and cuBLAS load) and a small **reserve** for allocation
  granularity.

The peak is the largest stage (text, denoise, decode). Choices, all counted:

- residency ``resident`` (every engine loaded at start), ``per-stage`` (one DiT expert on the GPU at a time: the
  other is deserialised from host memory when the denoising loop reaches its stage, two loads per video) or
  ``streaming`` (experts built with weight streaming keep ``budget`` bytes each on the GPU and stream the rest
  over PCIe every step);
- text encoder ``resident``, ``release`` (loaded for the prompt, freed before denoising: one load per video) or
  ``cpu`` (onnxruntime on the host: no GPU memory at all).

When not told, the planner takes the fitting choice with the lowest expected cost per video (host-to-GPU copies
at ``HOST_TO_GPU_BYTES_PER_S``), and prints it with that cost. ``wanrt build-engines`` plans from estimates
(weights and activation dtypes read from the ONNX graphs, scratch from the activation model below) and the
backend plans again at load from the engines' own sizes: both print the same ``MemoryPlan``. Pure Python.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Sequence

from wanrt.engine.shapes import WAN_TRAINED_FRAMES, dit_tokens
from wanrt.engine.tensorrt.profiles import TEXT_ENCODER
from wanrt.errors import InvalidRequestError

GIB = 1024**3
# The CUDA context with the kernel modules TensorRT, cuBLAS and cuDNN load into it: 0.5-1 GiB on Hopper with
# CUDA 12/13's lazy module loading. An estimate until measured on the GPU (nvidia-smi before/after loading).
CUDA_CONTEXT = GIB
# Room for what is not a wanrt allocation: cuMemAlloc rounds every buffer up to 2 MiB pages, TensorRT keeps
# small internal buffers per engine and context.
DEFAULT_RESERVE = GIB // 2
RESIDENCIES = ("resident", "per-stage", "streaming")
TEXT_ENCODER_MODES = ("resident", "release", "cpu")
# Host memory -> GPU: what deserialising an engine held in host memory, or streaming weights, moves per second.
# PCIe Gen5 x16 peaks at ~55 GB/s pinned; pageable copies and TensorRT's deserialisation reach about half.
HOST_TO_GPU_BYTES_PER_S = 25e9
DEFAULT_STEPS = 40  # Wan2.2's default denoising steps: what a per-step cost is multiplied by to compare choices
STAGES = ("text", "denoise", "decode")


@dataclasses.dataclass(frozen=True)
class EngineMemory:
    graph: str
    weights: int  # bytes of weights the engine keeps on the GPU when fully loaded
    scratch: int  # bytes of activation memory its largest profile needs
    io: int = 0  # bytes of its input/output buffers at the largest shapes (decoder caches not included)


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    engines: tuple[EngineMemory, ...]
    experts: tuple[str, ...]
    gpu_bytes: int
    residency: str
    streaming_budget: int | None  # bytes per expert, for "streaming"
    reserve: int
    text_encoder: str = "resident"  # resident | release | cpu
    vae_caches: int = 0  # the decoder's two cache sets at the largest latent, held while a video decodes
    context: int = CUDA_CONTEXT
    steps: int = DEFAULT_STEPS  # per video, for the expected cost
    bandwidth: float = HOST_TO_GPU_BYTES_PER_S

    def on_gpu(self, engine: EngineMemory) -> int:
        """Weight bytes ``engine`` holds on the GPU while loaded under this plan."""
        if engine.graph == TEXT_ENCODER and self.text_encoder == "cpu":
            return 0
        if engine.graph in self.experts and self.residency == "streaming":
            return min(engine.weights, int(self.streaming_budget or 0))
        return engine.weights

    def held(self, engine: EngineMemory) -> int:
        """Weights and I/O buffers of ``engine`` while it is loaded (0 for a text encoder on the CPU)."""
        if engine.graph == TEXT_ENCODER and self.text_encoder == "cpu":
            return 0
        return self.on_gpu(engine) + engine.io

    @property
    def scratch(self) -> int:
        return max((e.scratch for e in self.engines if self.held(e) or e.graph != TEXT_ENCODER), default=0)

    def _engine(self, graph: str) -> EngineMemory | None:
        return next((e for e in self.engines if e.graph == graph), None)

    @property
    def stages(self) -> dict[str, int]:
        """Bytes on the GPU at the peak of each stage of a video."""
        experts = [self.held(e) for e in self.engines if e.graph in self.experts]
        held_experts = max(experts, default=0) if self.residency == "per-stage" else sum(experts)
        text = self._engine(TEXT_ENCODER)
        text_bytes = self.held(text) if text is not None else 0
        others = sum(self.held(e) for e in self.engines if e.graph not in self.experts and e.graph != TEXT_ENCODER)
        base = self.context + self.reserve + self.scratch + others + held_experts
        resident_text = text_bytes if self.text_encoder == "resident" else 0
        return {"text": base + text_bytes, "denoise": base + resident_text,
                "decode": base + resident_text + self.vae_caches}

    @property
    def peak(self) -> int:
        return max(self.stages.values())

    @property
    def peak_stage(self) -> str:
        stages = self.stages
        return max(STAGES, key=lambda s: stages[s])

    @property
    def fits(self) -> bool:
        return self.peak <= self.gpu_bytes

    def load_seconds_per_video(self) -> float:
        """Engines deserialised from host memory for every video: both experts per stage, a released encoder."""
        moved = 0
        if self.residency == "per-stage" and len(self.experts) > 1:
            moved += sum(e.weights for e in self.engines if e.graph in self.experts)
        text = self._engine(TEXT_ENCODER)
        if text is not None and self.text_encoder == "release":
            moved += text.weights
        return moved / self.bandwidth

    def streaming_seconds_per_step(self) -> float:
        """Expert weights streamed over PCIe every step (each step runs one expert; the average of the two)."""
        if self.residency != "streaming":
            return 0.0
        streamed = [e.weights - self.on_gpu(e) for e in self.engines if e.graph in self.experts]
        return (sum(streamed) / len(streamed) / self.bandwidth) if streamed else 0.0

    def seconds_per_video(self) -> float:
        return self.load_seconds_per_video() + self.steps * self.streaming_seconds_per_step()

    def describe_choice(self) -> str:
        parts = {"resident": "both experts resident", "per-stage": "one expert on the GPU at a time",
                 "streaming": f"experts streaming, {gib(self.streaming_budget or 0)} of each kept on the GPU"}
        text = {"resident": "text encoder resident", "release": "text encoder released after each prompt",
                "cpu": "text encoder on the CPU"}
        return f"{parts[self.residency]}, {text[self.text_encoder]}"

    def describe_cost(self) -> str:
        per_step = self.streaming_seconds_per_step()
        per_video = self.seconds_per_video()
        if per_video == 0:
            return "expected cost: none (nothing is loaded or streamed per video)"
        what = []
        if self.load_seconds_per_video():
            what.append(f"{self.load_seconds_per_video():.2f} s loading engines from host memory per video")
        if per_step:
            what.append(f"{per_step:.3f} s streaming weights per step")
        return (f"expected cost: {' + '.join(what)} = {per_video:.1f} s per {self.steps}-step video "
                f"({per_video / self.steps:.3f} s per step; host->GPU at {self.bandwidth / 1e9:.0f} GB/s)")

    def render(self) -> str:
        rows = [f"memory plan ({self.residency}"
                + (f", {gib(self.streaming_budget or 0)} of each expert's weights on the GPU" if
                   self.residency == "streaming" else "") + f", text encoder {self.text_encoder}):",
                f"  {'engine':<18} {'weights':>10} {'on GPU':>10} {'I/O':>10} {'scratch':>10}"]
        for e in self.engines:
            rows.append(f"  {e.graph:<18} {gib(e.weights):>10} {gib(self.on_gpu(e)):>10} {gib(e.io):>10} "
                        f"{gib(e.scratch):>10}")
        stages = self.stages
        rows.append(f"  CUDA context {gib(self.context)}, reserve {gib(self.reserve)}, shared scratch "
                    f"{gib(self.scratch)}, VAE decoder caches {gib(self.vae_caches)} (while decoding)")
        rows.append("  per stage: " + ", ".join(f"{s} {gib(stages[s])}" for s in STAGES))
        rows.append(f"  peak {gib(self.peak)} ({self.peak_stage}; {self.describe_choice()}); GPU "
                    f"{gib(self.gpu_bytes)}: {'fits' if self.fits else 'DOES NOT FIT'}")
        rows.append(f"  {self.describe_cost()}")
        return "\n".join(rows)


def gib(nbytes: int) -> str:
    return f"{nbytes / GIB:.1f} GiB"


def plan_memory(engines: Sequence[EngineMemory], experts: Sequence[str], gpu_bytes: int, *,
                residency: str | None = None, streaming_budget: int | None = None,
                reserve: int = DEFAULT_RESERVE, text_encoder: str | None = None, vae_caches: int = 0,
                context: int = CUDA_CONTEXT, steps: int = DEFAULT_STEPS, allow_streaming: bool = False,
                bandwidth: float = HOST_TO_GPU_BYTES_PER_S) -> MemoryPlan:
    """The plan asked for, or (what is None) the fitting one with the lowest expected cost per video;
    InvalidRequestError when nothing asked for fits, naming the options that would.

    A ``streaming_budget`` asks for weight streaming; with ``allow_streaming`` (engines not built yet) the
    planner may also choose streaming itself, at the largest budget that fits, where it costs less than
    swapping experts."""
    engines, experts = tuple(engines), tuple(e for e in experts if any(x.graph == e for x in engines))
    residency = requested_residency(residency, streaming_budget)
    text_encoder = requested_text_encoder(text_encoder)
    has_text = any(e.graph == TEXT_ENCODER for e in engines)

    def make(kind: str, text: str, budget: int | None = None) -> MemoryPlan:
        return MemoryPlan(engines, experts, int(gpu_bytes), kind, budget, int(reserve), text, int(vae_caches),
                          int(context), int(steps), float(bandwidth))

    def candidates(kinds: Iterable[str], texts: Iterable[str], budget: int | None) -> list[MemoryPlan]:
        plans = []
        for kind, text in itertools.product(kinds, texts):
            if kind != "streaming":
                plans.append(make(kind, text))
            elif budget is not None:
                plans.append(make(kind, text, int(budget)))
            else:
                fitting = _fitting_budget(make(kind, text, 0))
                if fitting > 0:
                    plans.append(make(kind, text, fitting))
        return plans

    texts = [text_encoder] if text_encoder else (["resident", "release"] if has_text else ["resident"])
    kinds = [residency] if residency else ["resident", "per-stage"] + (["streaming"] if allow_streaming else [])
    chosen = [p for p in candidates(kinds, texts, streaming_budget) if p.fits]
    if chosen:
        return min(chosen, key=lambda p: p.seconds_per_video())  # min keeps the first of equal costs
    asked = make(residency or "resident", text_encoder or "resident",
                 int(streaming_budget) if residency == "streaming" else None)
    other_texts = [t for t in TEXT_ENCODER_MODES if t != "cpu" or text_encoder == "cpu"] if has_text else ["resident"]
    alternatives = [p for p in candidates(RESIDENCIES, other_texts, None) if p.fits]
    raise _refusal(asked, sorted(alternatives, key=lambda p: p.seconds_per_video()))


def requested_residency(residency: str | None, streaming_budget: int | None) -> str | None:
    """The residency asked for (None: choose), checked; a weight-streaming budget means "streaming"."""
    if residency is not None and residency not in RESIDENCIES:
        raise InvalidRequestError("residency", f"must be one of {', '.join(RESIDENCIES)}, got {residency!r}")
    if streaming_budget is not None:
        if residency not in (None, "streaming"):
            raise InvalidRequestError("weight_streaming_budget", f"weight streaming is its own residency, not "
                                                                 f"{residency}")
        residency = "streaming"
    if residency == "streaming" and (streaming_budget is None or streaming_budget <= 0):
        raise InvalidRequestError("weight_streaming_budget", "weight streaming needs a positive budget")
    return residency


def requested_text_encoder(mode: str | None) -> str | None:
    """The text encoder placement asked for (None: choose), checked."""
    if mode is not None and mode not in TEXT_ENCODER_MODES:
        raise InvalidRequestError("text_encoder", f"must be one of {', '.join(TEXT_ENCODER_MODES)}, got {mode!r}")
    return mode


def _fitting_budget(plan: MemoryPlan) -> int:
    """The largest per-expert weight-streaming budget that fits (0 or less: none does)."""
    spare = plan.gpu_bytes - plan.peak  # the plan with a zero budget: everything but the experts' weights
    return spare // max(len(plan.experts), 1) if plan.experts else 0


def _option(plan: MemoryPlan) -> str:
    flags = {"resident": "--residency resident", "per-stage": "--residency per-stage",
             "streaming": f"--weight-streaming-budget {math.floor((plan.streaming_budget or 0) / GIB * 10) / 10}"}
    return (f"{flags[plan.residency]} --text-encoder {plan.text_encoder} (peak {gib(plan.peak)}; "
            f"{plan.seconds_per_video():.1f} s per video)")


def _refusal(plan: MemoryPlan, alternatives: Sequence[MemoryPlan]) -> InvalidRequestError:
    over = plan.peak - plan.gpu_bytes
    if alternatives:
        hint = "what fits: " + "; ".join(_option(p) for p in alternatives[:3])
    else:
        hint = ("no residency fits: lower --max-frames/--max-height/--max-width (the scratch and the decoder's "
                "caches grow with them), or use a quantized export (`wanrt quantize`) or a GPU with more memory")
    return InvalidRequestError("residency" if plan.residency != "streaming" else "weight_streaming_budget",
                               f"the engines need {gib(plan.peak)} of GPU memory as {plan.residency} with the text "
                               f"encoder {plan.text_encoder}, {gib(over)} more than the GPU's "
                               f"{gib(plan.gpu_bytes)}: {hint}\n{plan.render()}")


def make_per_stage_fits(plan: MemoryPlan) -> bool:
    return dataclasses.replace(plan, residency="per-stage").fits


# Activation model for estimates made before building (the engines report their real scratch once built).
# A DiT block in TensorRT holds, at its peak, the residual stream and the normalised, modulated input (in the
# graph's stream dtype: fp32 in wanrt's bf16 exports, as diffusers computes them), and Q/K/V, the attention
# output and the feed-forward hidden layer in the compute dtype (fused attention never materialises the L x L
# scores): for the batch of two (cond/uncond) the pipeline runs.
_DIT_STREAM_VALUES = 2  # x dim, per token
# The stream's itemsize in every export: modulation and gated residual adds run in fp32 (diffusers' .float()), and
# UMT5's fp32 `wo` promotes its residual stream.
STREAM_ITEMSIZE = 4
_DIT_COMPUTE_VALUES = 4  # x dim, per token, plus the feed-forward width
# The VAE decoder at full resolution: the widest tensors of its last up-block, a few alive at once.
_VAE_LIVE_TENSORS = 4


def dit_scratch(tokens: int, dim: int, ffn_dim: int, itemsize: int, batch: int = 2,
                stream_itemsize: int | None = None) -> int:
    """Activation bytes of one DiT (or T5) call; ``stream_itemsize`` (default ``itemsize``) is that of the
    residual stream and modulation, ``itemsize`` that of the matrix products."""
    stream = itemsize if stream_itemsize is None else stream_itemsize
    per_token = _DIT_STREAM_VALUES * dim * stream + (ffn_dim + _DIT_COMPUTE_VALUES * dim) * itemsize
    return batch * tokens * per_token


def vae_scratch(frames: int, height: int, width: int, channels: int, itemsize: int = 4) -> int:
    return _VAE_LIVE_TENSORS * frames * height * width * channels * itemsize


def decoder_cache_bytes(layout: Iterable[tuple[int, int]], latent_height: int, latent_width: int,
                        frames: int = 2, itemsize: int = 4, sets: int = 2) -> int:
    """Bytes of the streaming decoder's caches, ``(channels, spatial scale)`` each, for one latent size: ``sets``
    sets (the step engine reads one and writes the other) of ``frames``-frame caches."""
    values = sum(channels * frames * latent_height * scale * latent_width * scale for channels, scale in layout)
    return sets * values * itemsize


# Wan2.2-T2V-A14B (diffusers' configs), parameters per dtype of a `wanrt export --dtype bf16`, which traces each
# network as diffusers/transformers load it in bf16 (export/onnx_io.py; tests/trt/test_trt_memory.py counts them on
# the real modules): two 40-layer DiT experts (dim 5120, ffn 13824), umT5-XXL's encoder, the Wan2.1 VAE decoder
# (fp32 unless exported with --vae-dtype bf16). The torch backend loads the same modules the same way.
A14B_EXPERT_PARAMS = 14_288_753_728  # parameters and the rotary tables (buffers) each expert graph holds
# WanTransformer3DModel._keep_in_fp32_modules: rope, time_embedder, scale_shift_table, norm1/2/3.
A14B_EXPERT_FP32_PARAMS = 29_446_144
A14B_TEXT_PARAMS = 5_680_910_336
A14B_TEXT_FP32_PARAMS = 1_006_632_960  # UMT5's feed-forward outputs `wo` (export/text_encoder.py keeps them fp32)
A14B_VAE_DECODER_PARAMS = 73_295_603  # decoder and post_quant_conv: each of the init and step engines holds them
A14B_DIM, A14B_FFN = 5120, 13824
A14B_TEXT_DIM, A14B_TEXT_FFN, A14B_TEXT_LENGTH = 4096, 10240, 512
A14B_VAE_FULLRES_CHANNELS = 192  # the decoder's last upsampling stage, at full resolution
# (channels, spatial scale) of the 32 causal-convolution caches of the Wan2.1 VAE decoder (export/vae_decoder.py's
# probe_cache_layout on the real config); each holds 2 frames.
A14B_VAE_CACHES = ((16, 1), *((384, 1),) * 11, (192, 2), *((384, 2),) * 6, *((192, 4),) * 6, *((96, 8),) * 7)


def _weight_bytes(params: int, fp32_params: int, itemsize: int) -> int:
    return fp32_params * 4 + (params - fp32_params) * itemsize


def _io_bytes(*shapes_and_sizes: tuple[tuple[int, ...], int]) -> int:
    return sum(math.prod(shape) * size for shape, size in shapes_and_sizes)


def a14b_engines(frames: int, height: int, width: int, dit_itemsize: int = 2, text_itemsize: int = 2,
                 vae_itemsize: int = 4) -> tuple[EngineMemory, ...]:
    """Estimated engines of Wan2.2-T2V-A14B for requests up to ``frames`` x ``height`` x ``width``: weights as a
    ``--dtype bf16`` export holds them (fp32 islands counted at 4 bytes), I/O buffers at the largest shapes
    (the graphs' fp32 I/O, int64 token ids), scratch from the activation model (fp32 residual stream)."""
    tokens = dit_tokens(frames, height, width)
    latent = (16, (frames - 1) // 4 + 1, height // 8, width // 8)
    dit = dit_scratch(tokens, A14B_DIM, A14B_FFN, dit_itemsize, stream_itemsize=STREAM_ITEMSIZE)
    text = dit_scratch(A14B_TEXT_LENGTH, A14B_TEXT_DIM, A14B_TEXT_FFN, text_itemsize, stream_itemsize=STREAM_ITEMSIZE)
    # The streaming decoder makes 4 frames per step at full resolution.
    vae = vae_scratch(4, height, width, A14B_VAE_FULLRES_CHANNELS, vae_itemsize)
    dit_io = _io_bytes(((2, *latent), 4), ((2,), 4), ((2, A14B_TEXT_LENGTH, A14B_TEXT_DIM), 4), ((2, *latent), 4))
    text_io = _io_bytes(((2, A14B_TEXT_LENGTH), 8), ((2, A14B_TEXT_LENGTH), 8),
                        ((2, A14B_TEXT_LENGTH, A14B_TEXT_DIM), 4))
    vae_io = {n: _io_bytes(((1, 16, 1, *latent[2:]), 4), ((1, 3, f, height, width), 4))
              for n, f in (("init", 1), ("step", 4))}
    expert = _weight_bytes(A14B_EXPERT_PARAMS, A14B_EXPERT_FP32_PARAMS, dit_itemsize)
    return (EngineMemory("text_encoder", _weight_bytes(A14B_TEXT_PARAMS, A14B_TEXT_FP32_PARAMS, text_itemsize),
                         text, text_io),
            EngineMemory("transformer", expert, dit, dit_io),
            EngineMemory("transformer_2", expert, dit, dit_io),
            EngineMemory("vae_decoder_init", A14B_VAE_DECODER_PARAMS * vae_itemsize, vae // 4, vae_io["init"]),
            EngineMemory("vae_decoder_step", A14B_VAE_DECODER_PARAMS * vae_itemsize, vae, vae_io["step"]))


# The torch backend: transformers keeps UMT5's `wo` fp32 only under fp16, so in bf16 the whole text encoder is
# bf16. Its VAE decoder is fp32 (the encoder stays on the host).


def a14b_torch_engines(frames: int, height: int, width: int) -> tuple[EngineMemory, ...]:
    """Wan2.2-T2V-A14B as the torch backend holds it on a GPU (bf16, the libraries' fp32 islands), activations by
    the same model in bf16 throughout (diffusers casts the residual stream back to bf16 after each block)."""
    tokens = dit_tokens(frames, height, width)
    dit = dit_scratch(tokens, A14B_DIM, A14B_FFN, 2)
    expert = _weight_bytes(A14B_EXPERT_PARAMS, A14B_EXPERT_FP32_PARAMS, 2)
    return (EngineMemory("text_encoder", A14B_TEXT_PARAMS * 2,
                         dit_scratch(A14B_TEXT_LENGTH, A14B_TEXT_DIM, A14B_TEXT_FFN, 2)),
            EngineMemory("transformer", expert, dit), EngineMemory("transformer_2", expert, dit),
            EngineMemory("vae_decoder", A14B_VAE_DECODER_PARAMS * 4,
                         vae_scratch(4, height, width, A14B_VAE_FULLRES_CHANNELS, 4)))


def a14b_torch_plan(frames: int, height: int, width: int, gpu_bytes: int, **options: object) -> MemoryPlan:
    """The torch backend's plan for Wan2.2-T2V-A14B (``residency``, ``text_encoder`` as plan_memory's)."""
    return plan_memory(a14b_torch_engines(frames, height, width), ("transformer", "transformer_2"), gpu_bytes,
                       vae_caches=a14b_vae_caches(height, width), **options)  # type: ignore[arg-type]


def a14b_vae_caches(height: int, width: int, itemsize: int = 4) -> int:
    """Bytes of the A14B decoder's cache pair for videos up to ``height`` x ``width``."""
    return decoder_cache_bytes(A14B_VAE_CACHES, height // 8, width // 8, itemsize=itemsize)


def a14b_plan(frames: int, height: int, width: int, gpu_bytes: int, **options: object) -> MemoryPlan:
    """The plan for Wan2.2-T2V-A14B engines serving up to ``frames`` x ``height`` x ``width`` (bf16 experts and
    text encoder, fp32 VAE); ``options`` as plan_memory's."""
    return plan_memory(a14b_engines(frames, height, width), ("transformer", "transformer_2"), gpu_bytes,
                       vae_caches=a14b_vae_caches(height, width), **options)  # type: ignore[arg-type]


# What the cards report as total memory (nvidia-smi): H100 80GB 81559 MiB, H200 143771 MiB.
A14B_GPUS = (("80 GB (H100)", 81559 * 2**20), ("141 GB (H200)", 143771 * 2**20))
A14B_SIZES = (("480p (832x480)", (480, 832)), ("720p (1280x720)", (720, 1280)))


def _row(backend: str, label: str, gpu_name: str, gpu: int, plan: MemoryPlan) -> str:
    by = {e.graph: plan.on_gpu(e) for e in plan.engines}
    experts = [by[e] for e in plan.experts]
    held = f"{gib(max(experts))} (one at a time)" if plan.residency == "per-stage" else gib(sum(experts))
    vae = sum(v for g, v in by.items() if g.startswith("vae"))
    return (f"| {backend} | {label} | {gpu_name} ({gib(gpu)}) | {plan.describe_choice()} | "
            f"{gib(by.get(TEXT_ENCODER, 0))} / {held} / {gib(vae)} | {gib(plan.scratch)} | {gib(plan.vae_caches)} | "
            f"{gib(plan.peak)} ({plan.peak_stage}) | {plan.seconds_per_video():.1f} s |")


def main() -> None:
    """Prints the A14B plans the README quotes (python -m wanrt.engine.tensorrt.memory)."""
    print("| backend | A14B, 81 frames | GPU | chosen | weights on GPU (text / experts / VAE) | scratch "
          "| decoder caches | peak (stage) | load + stream per 40-step video |")
    print("|---|---|---|---|---|---|---|---|---|")
    for gpu_name, gpu in A14B_GPUS:
        for label, (h, w) in A14B_SIZES:
            for backend, make, options in (("tensorrt", a14b_plan, {"allow_streaming": True}),
                                           ("torch", a14b_torch_plan, {})):
                try:
                    print(_row(backend, label, gpu_name, gpu, make(WAN_TRAINED_FRAMES, h, w, gpu, **options)))
                except InvalidRequestError as err:
                    print(f"| {backend} | {label} | {gpu_name} | refused: {err.message.splitlines()[0]} "
                          "| | | | | |")


if __name__ == "__main__":
    main()
