"""torch backend: runs the diffusers/transformers modules of a diffusers Wan folder directly (the reference)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from wanrt.engine.backends.base import DecoderState
from wanrt.engine.device import cuda_driver_problem, parse_device
from wanrt.errors import BackendUnavailableError, InvalidRequestError

log = logging.getLogger("wanrt.engine")


def cuda_problem(index: int) -> str | None:
    """Why torch cannot run on CUDA device ``index`` (its build, the driver), or None."""
    try:
        import torch
    except ImportError:
        return None  # the backend itself says how to install torch
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return f"this torch ({torch.__version__}) is built without CUDA: install a CUDA build of torch"
    problem = cuda_driver_problem(index)
    if problem is not None:
        return problem
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if not available:
        said = "; ".join(str(w.message).splitlines()[0] for w in caught) or "torch.cuda.is_available() is False"
        return f"torch {torch.__version__} cannot use CUDA: {said}"
    if index >= torch.cuda.device_count():
        return f"no CUDA device {index} (torch sees {torch.cuda.device_count()})"
    return None


TORCH_DTYPES = ("bf16", "fp32")
# The size the start-up memory plan is made for: Wan2.2's 480p default (larger requests need more).
PLAN_VIDEO = (81, 480, 832)


class TorchBackend:
    """The diffusers/transformers modules, on the GPU in bf16 with the libraries' own fp32 islands (diffusers'
    ``_keep_in_fp32_modules`` for the experts; transformers keeps UMT5's ``wo`` fp32 only under fp16) or on the
    CPU in fp32 (the reference every engine is measured against). On a GPU the modules load into host memory,
    are planned (engine/tensorrt/memory.py) and placed: ``residency`` per-stage keeps one expert on the GPU at a
    time (the other moved at the expert switch); ``text_encoder`` release moves it to the GPU for the prompt
    only, cpu runs it on the host in fp32; None: the cheapest that fits. The VAE decoder stays fp32, as
    WanPipeline runs it."""

    name = "torch"

    def __init__(self, model_dir: Path, experts: tuple[str, ...], *, device: str = "cpu", dtype: str | None = None,
                 residency: str | None = None, text_encoder: str | None = None) -> None:
        try:
            import torch
            from diffusers import AutoencoderKLWan, WanTransformer3DModel
            from transformers import UMT5EncoderModel
        except ImportError as err:
            raise BackendUnavailableError(f"the torch backend needs the export extra (pip install 'wanrt[export]'):"
                                          f" {err}") from None
        from wanrt.engine.backends.torch_vae import VaeDecoderInit, VaeDecoderStep  # imports torch
        from wanrt.engine.tensorrt.memory import requested_text_encoder

        self._torch = torch
        self._device = torch.device(str(parse_device(device)))
        self._host = torch.device("cpu")
        on_gpu = self._device.type == "cuda"
        dtype = dtype or ("bf16" if on_gpu else "fp32")
        if dtype not in TORCH_DTYPES:
            raise InvalidRequestError("dtype", f"must be one of {', '.join(TORCH_DTYPES)}, got {dtype!r}")
        requested_text_encoder(text_encoder)
        if residency not in (None, "resident", "per-stage"):
            raise InvalidRequestError("residency", f"must be resident or per-stage, got {residency!r}")
        if not on_gpu and (residency or "resident", text_encoder or "resident") != ("resident", "resident"):
            raise InvalidRequestError("residency" if residency not in (None, "resident") else "text_encoder",
                                      "places networks between the GPU and host memory: it needs --device cuda")
        low = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
        model_dir = Path(model_dir)

        def load(cls: type, sub: str, **dtype_kw: object) -> torch.nn.Module:
            return cls.from_pretrained(model_dir / sub, local_files_only=True, **dtype_kw).eval()

        # Loaded into host memory, planned, then placed: what goes to the GPU is what the plan counted.
        text_dtype = torch.float32 if text_encoder == "cpu" else low
        self._text_encoder = load(UMT5EncoderModel, "text_encoder", dtype=text_dtype)
        self._experts = {name: load(WanTransformer3DModel, name, torch_dtype=low) for name in experts}
        vae = load(AutoencoderKLWan, "vae", torch_dtype=torch.float32)
        # Only the decoder goes to the device (the wrappers hold its modules); the VAE's encoder stays on the host.
        self._decode_init = VaeDecoderInit(vae).eval()
        self._decode_step = VaeDecoderStep(vae).eval()
        self._vae_config = vae.config
        self.residency, self.text_placement = residency or "resident", text_encoder or "resident"
        self.memory_plan = None
        if on_gpu:
            self.memory_plan = self.plan(*PLAN_VIDEO, _device_total(torch, self._device), residency=residency,
                                         text_encoder=text_encoder)
            if self.memory_plan is not None:
                self.residency, self.text_placement = self.memory_plan.residency, self.memory_plan.text_encoder
        self._decode_init.to(self._device)
        if self.text_placement == "resident":
            self._text_encoder.to(self._device)
        for k, model in enumerate(self._experts.values()):  # per stage: the first stage's expert starts there
            if self.residency == "resident" or k == 0:
                model.to(self._device)

    def plan(self, frames: int, height: int, width: int, gpu_bytes: int, *, residency: str | None = None,
             text_encoder: str | None = None) -> object:
        """The memory plan of these modules for videos up to ``frames`` x ``height`` x ``width`` (weights exact,
        counted per tensor at its dtype; activations by engine/tensorrt/memory.py's model); the placement asked
        for, or (None) the cheapest that fits. None, with a warning, when nothing fits."""
        from wanrt.engine.tensorrt.memory import (
            EngineMemory,
            decoder_cache_bytes,
            dit_scratch,
            dit_tokens,
            plan_memory,
            vae_scratch,
        )

        def weights(module: object) -> int:
            return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))

        engines = []
        for name, expert in self._experts.items():
            config = expert.config
            tokens = dit_tokens(frames, height, width, patch=tuple(config.patch_size))
            dim = config.num_attention_heads * config.attention_head_dim
            itemsize = next(expert.proj_out.parameters()).element_size()
            engines.append(EngineMemory(name, weights(expert), dit_scratch(tokens, dim, config.ffn_dim, itemsize)))
        t5 = self._text_encoder.config
        engines.append(EngineMemory("text_encoder", weights(self._text_encoder),
                                    dit_scratch(512, t5.d_model, t5.d_ff, self._text_encoder.dtype.itemsize)))
        decoder = self._decode_init
        layout = decoder.layout
        engines.append(EngineMemory("vae_decoder", weights(decoder),
                                    vae_scratch(layout.temporal_stride, height, width,
                                                2 * int(self._vae_config.base_dim))))
        caches = decoder_cache_bytes(zip(layout.channels, layout.scales, strict=True), height // layout.spatial_scale,
                                     width // layout.spatial_scale, frames=layout.frames)
        try:
            return plan_memory(engines, tuple(self._experts), gpu_bytes, residency=residency,
                               text_encoder=text_encoder, vae_caches=caches)
        except InvalidRequestError as err:
            log.warning("torch backend at %dx%dx%d: %s", frames, height, width, err.message)
            return None

    def compile_experts(self) -> None:
        """torch.compile each expert's transformer blocks (diffusers' regional compilation: one compiled block
        serves all of them, so compiling a 40-layer expert costs about one layer). Compiles on the first call."""
        for expert in self._experts.values():
            expert.compile_repeated_blocks(fullgraph=True)

    def _tensor(self, array: np.ndarray, where: object, dtype: object = None) -> object:
        tensor = self._torch.from_numpy(np.ascontiguousarray(array)).to(where)
        return tensor if dtype is None or not tensor.is_floating_point() else tensor.to(dtype)

    def encode_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        model = self._text_encoder
        where = self._host if self.text_placement == "cpu" else self._device
        if self.text_placement == "release":
            model.to(self._device)
        try:
            with self._torch.inference_mode():
                out = model(input_ids=self._tensor(input_ids, where),
                            attention_mask=self._tensor(attention_mask, where)).last_hidden_state
                return out.float().cpu().numpy()
        finally:
            if self.text_placement == "release":
                model.to(self._host)  # its room is the denoising and decoding stages'

    def predict_noise(self, expert: str, latents: np.ndarray, timestep: np.ndarray, text: np.ndarray) -> np.ndarray:
        model = self._experts[expert]
        if self.residency == "per-stage" and next(model.parameters()).device != self._device:
            for other in self._experts.values():
                if other is not model:
                    other.to(self._host)
            model.to(self._device)
        dtype = model.dtype  # bf16 inputs where the model is bf16, as WanPipeline feeds it
        with self._torch.inference_mode():
            out = model(hidden_states=self._tensor(latents, self._device, dtype),
                        timestep=self._tensor(timestep, self._device),
                        encoder_hidden_states=self._tensor(text, self._device, dtype), return_dict=False)[0]
        return out.float().cpu().numpy()

    def decode_first(self, latent: np.ndarray) -> tuple[np.ndarray, DecoderState]:
        with self._torch.inference_mode():
            frames, *caches = self._decode_init(self._tensor(latent, self._device))
        return frames.float().cpu().numpy(), caches

    def decode_next(self, latent: np.ndarray, state: DecoderState) -> tuple[np.ndarray, DecoderState]:
        with self._torch.inference_mode():
            frames, *caches = self._decode_step(self._torch.from_numpy(latent).to(self._device), *state)
        return frames.float().cpu().numpy(), caches


def _device_total(torch: object, device: object) -> int:
    return int(torch.cuda.get_device_properties(device).total_memory)
