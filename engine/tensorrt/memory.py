"""GPU memory plans: will these engines run on this GPU, and how (experts resident, loaded per stage, or
streaming their weights)?

A plan adds weights and scratch per engine. Scratch is shared: the backend gives every execution context the
same buffer (calls are serialised), so the largest engine's scratch counts once. The choice, cheapest first:

- ``resident``: every engine loaded at start;
- ``per-stage``: the text encoder and VAE resident, one DiT expert at a time (the other is loaded when the
  denoising loop reaches its stage: a disk read per switch, but both A14B experts never share the GPU);
- ``streaming``: the experts built with weight streaming, each keeping ``budget`` bytes of its weights on the
  GPU and streaming the rest from pinned host memory (TensorRT's weight streaming; needs a strongly typed
  network, which every wanrt engine is).

``wanrt build-engines`` plans from estimates before building (weights from the ONNX initializers, scratch from
the activation model below) and refuses what cannot run, naming the option that would fit; the loader plans
again from the engines' own sizes. Pure Python: the arithmetic is unit-tested.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from wanrt.engine.shapes import WAN_TRAINED_FRAMES, dit_tokens
from wanrt.errors import InvalidRequestError

GIB = 1024**3
# Kept free for what no engine accounts for: the CUDA context and kernels' modules (~0.5-1 GB on Hopper), the
# pipeline's I/O buffers, the VAE decoder's caches, allocator fragmentation.
DEFAULT_RESERVE = 4 * GIB
RESIDENCIES = ("resident", "per-stage", "streaming")


@dataclasses.dataclass(frozen=True)
class EngineMemory:
    graph: str
    weights: int  # bytes of weights the engine keeps on the GPU when fully loaded
    scratch: int  # bytes of activation memory its largest profile needs


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    engines: tuple[EngineMemory, ...]
    experts: tuple[str, ...]
    gpu_bytes: int
    residency: str
    streaming_budget: int | None  # bytes per expert, for "streaming"
    reserve: int

    @property
    def scratch(self) -> int:
        return max((e.scratch for e in self.engines), default=0)

    def on_gpu(self, engine: EngineMemory) -> int:
        """Weight bytes ``engine`` holds on the GPU under this plan."""
        if engine.graph in self.experts and self.residency == "streaming":
            return min(engine.weights, int(self.streaming_budget or 0))
        return engine.weights

    @property
    def peak(self) -> int:
        others = sum(self.on_gpu(e) for e in self.engines if e.graph not in self.experts)
        experts = [self.on_gpu(e) for e in self.engines if e.graph in self.experts]
        held = max(experts, default=0) if self.residency == "per-stage" else sum(experts)
        return others + held + self.scratch + self.reserve

    @property
    def fits(self) -> bool:
        return self.peak <= self.gpu_bytes

    def render(self) -> str:
        rows = [f"memory plan ({self.residency}"
                + (f", {gib(self.streaming_budget or 0)} of each expert's weights on the GPU" if
                   self.residency == "streaming" else "") + "):",
                f"  {'engine':<18} {'weights':>10} {'on GPU':>10} {'scratch':>10}"]
        for e in self.engines:
            rows.append(f"  {e.graph:<18} {gib(e.weights):>10} {gib(self.on_gpu(e)):>10} {gib(e.scratch):>10}")
        note = "one expert at a time" if self.residency == "per-stage" else "all engines together"
        rows.append(f"  peak {gib(self.peak)} = weights ({note}) + shared scratch {gib(self.scratch)} + reserve "
                    f"{gib(self.reserve)}; GPU {gib(self.gpu_bytes)}: {'fits' if self.fits else 'DOES NOT FIT'}")
        return "\n".join(rows)


def gib(nbytes: int) -> str:
    return f"{nbytes / GIB:.1f} GiB"


def plan_memory(engines: Sequence[EngineMemory], experts: Sequence[str], gpu_bytes: int, *,
                residency: str | None = None, streaming_budget: int | None = None,
                reserve: int = DEFAULT_RESERVE) -> MemoryPlan:
    """The cheapest plan that fits (``residency`` None) or the one asked for; InvalidRequestError when it does
    not fit, naming the option that would. A ``streaming_budget`` asks for weight streaming."""
    engines, experts = tuple(engines), tuple(e for e in experts if any(x.graph == e for x in engines))

    def make(kind: str, budget: int | None = None) -> MemoryPlan:
        return MemoryPlan(engines, experts, int(gpu_bytes), kind, budget, int(reserve))

    residency = requested_residency(residency, streaming_budget)
    if residency == "streaming":
        plan = make("streaming", int(streaming_budget))
        if plan.fits:
            return plan
        raise _refusal(plan, _fitting_budget(make("streaming", 0)))
    candidates = [residency] if residency else ["resident", "per-stage"]
    for kind in candidates:
        plan = make(kind)
        if plan.fits:
            return plan
    budget = _fitting_budget(make("streaming", 0))
    raise _refusal(plan, budget)


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


def _fitting_budget(plan: MemoryPlan) -> int:
    """The largest per-expert weight-streaming budget that fits (0 or less: none does)."""
    spare = plan.gpu_bytes - plan.peak  # the plan with a zero budget: everything but the experts' weights
    return spare // max(len(plan.experts), 1) if plan.experts else 0


def _refusal(plan: MemoryPlan, budget: int) -> InvalidRequestError:
    over = plan.peak - plan.gpu_bytes
    if plan.residency == "resident" and plan.experts and make_per_stage_fits(plan):
        hint = "build with --residency per-stage (one expert on the GPU at a time)"
    elif budget >= GIB // 4:
        gib_budget = math.floor(budget / GIB * 10) / 10
        hint = (f"build with --weight-streaming-budget {gib_budget} (GiB of each expert's weights kept on the GPU; "
                "the rest streams from pinned host memory)")
    else:
        hint = ("no residency fits: lower --max-frames/--max-height/--max-width (the scratch grows with them), or "
                "use a quantized export (`wanrt quantize`) or a GPU with more memory")
    return InvalidRequestError("residency" if plan.residency != "streaming" else "weight_streaming_budget",
                               f"the engines need {gib(plan.peak)} of GPU memory as {plan.residency}, "
                               f"{gib(over)} more than the GPU's {gib(plan.gpu_bytes)}: {hint}\n{plan.render()}")


def make_per_stage_fits(plan: MemoryPlan) -> bool:
    return dataclasses.replace(plan, residency="per-stage").fits


# Activation model for estimates made before building (the engines report their real scratch once built).
# A DiT block in TensorRT holds, at its peak, the residual stream, the normalised input, Q/K/V (fused attention
# never materialises the L x L scores) and the feed-forward hidden layer: about (ffn + 6 * dim) values per
# token, for the batch of two (cond/uncond) the pipeline runs.
_DIT_VALUES_PER_TOKEN = 6
# The VAE decoder at full resolution: the widest tensors of its last up-block, a few alive at once.
_VAE_LIVE_TENSORS = 4


def dit_scratch(tokens: int, dim: int, ffn_dim: int, itemsize: int, batch: int = 2) -> int:
    return batch * tokens * (ffn_dim + _DIT_VALUES_PER_TOKEN * dim) * itemsize


def vae_scratch(frames: int, height: int, width: int, channels: int, itemsize: int = 4) -> int:
    return _VAE_LIVE_TENSORS * frames * height * width * channels * itemsize


# Wan2.2-T2V-A14B (diffusers' configs): two 40-layer DiT experts of 14.3B parameters (dim 5120, ffn 13824),
# umT5-XXL's encoder (5.7B), the Wan2.1 VAE decoder (~74M parameters).
A14B_EXPERT_PARAMS = 14_288_901_184
A14B_TEXT_PARAMS = 5_680_910_336
A14B_VAE_DECODER_PARAMS = 73_700_000
A14B_DIM, A14B_FFN = 5120, 13824
A14B_VAE_FULLRES_CHANNELS = 192  # the decoder's last upsampling stage, at full resolution


def a14b_engines(frames: int, height: int, width: int, dit_itemsize: int = 2, text_itemsize: int = 2,
                 vae_itemsize: int = 4) -> tuple[EngineMemory, ...]:
    """Estimated engines of Wan2.2-T2V-A14B for requests up to ``frames`` x ``height`` x ``width``."""
    tokens = dit_tokens(frames, height, width)
    dit = dit_scratch(tokens, A14B_DIM, A14B_FFN, dit_itemsize)
    text = dit_scratch(512, 4096, 10240, text_itemsize)
    # The streaming decoder makes 4 frames per step at full resolution.
    vae = vae_scratch(4, height, width, A14B_VAE_FULLRES_CHANNELS, vae_itemsize)
    return (EngineMemory("text_encoder", A14B_TEXT_PARAMS * text_itemsize, text),
            EngineMemory("transformer", A14B_EXPERT_PARAMS * dit_itemsize, dit),
            EngineMemory("transformer_2", A14B_EXPERT_PARAMS * dit_itemsize, dit),
            EngineMemory("vae_decoder_init", A14B_VAE_DECODER_PARAMS * vae_itemsize, vae // 4),
            EngineMemory("vae_decoder_step", A14B_VAE_DECODER_PARAMS * vae_itemsize, vae))


def main() -> None:
    """Prints the A14B plans the README quotes (python -m wanrt.engine.tensorrt.memory)."""
    print("| A14B, 81 frames | GPU | residency | weights on GPU | shared scratch | peak (+4 GiB reserve) |")
    print("|---|---|---|---|---|---|")
    # What the cards report as total memory (nvidia-smi): H100 80GB 81559 MiB, H200 143771 MiB.
    for gpu_name, gpu in (("80 GB (H100)", 81559 * 2**20), ("141 GB (H200)", 143771 * 2**20)):
        for label, (h, w) in (("480p (832x480)", (480, 832)), ("720p (1280x720)", (720, 1280))):
            try:
                plan = plan_memory(a14b_engines(WAN_TRAINED_FRAMES, h, w), ("transformer", "transformer_2"), gpu)
            except InvalidRequestError as err:
                print(f"| {label} | {gpu_name} | refused: {err.message.splitlines()[0]} | | | |")
                continue
            weights = plan.peak - plan.scratch - plan.reserve
            print(f"| {label} | {gpu_name} ({gib(gpu)}) | {plan.residency} | {gib(weights)} | {gib(plan.scratch)} | "
                  f"{gib(plan.peak)} |")


if __name__ == "__main__":
    main()
