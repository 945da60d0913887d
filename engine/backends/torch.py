"""torch backend: runs the diffusers/transformers modules of a diffusers Wan folder directly (the reference)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from wanrt.engine.backends.base import DecoderState
from wanrt.engine.device import cuda_driver_problem, parse_device
from wanrt.errors import BackendUnavailableError


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


class TorchBackend:
    name = "torch"

    def __init__(self, model_dir: Path, experts: tuple[str, ...], *, device: str = "cpu") -> None:
        try:
            import torch
            from diffusers import AutoencoderKLWan, WanTransformer3DModel
            from transformers import UMT5EncoderModel
        except ImportError as err:
            raise BackendUnavailableError(f"the torch backend needs the export extra (pip install 'wanrt[export]'):"
                                          f" {err}") from None
        from wanrt.export.vae_decoder import VaeDecoderInit, VaeDecoderStep

        self._torch = torch
        self._device = torch.device(str(parse_device(device)))
        model_dir = Path(model_dir)

        # float32: the reference every lower-precision engine is measured against.
        def load(cls: type, sub: str, **dtype: object) -> torch.nn.Module:
            return cls.from_pretrained(model_dir / sub, local_files_only=True, **dtype).to(self._device).eval()

        self._text_encoder = load(UMT5EncoderModel, "text_encoder", dtype=torch.float32)
        self._experts = {name: load(WanTransformer3DModel, name, torch_dtype=torch.float32) for name in experts}
        vae = load(AutoencoderKLWan, "vae", torch_dtype=torch.float32)
        self._decode_init, self._decode_step = VaeDecoderInit(vae).eval(), VaeDecoderStep(vae).eval()

    def compile_experts(self) -> None:
        """torch.compile each expert's transformer blocks (diffusers' regional compilation: one compiled block
        serves all of them, so compiling a 40-layer expert costs about one layer). Compiles on the first call."""
        for expert in self._experts.values():
            expert.compile_repeated_blocks(fullgraph=True)

    def _run(self, module: object, *arrays: np.ndarray) -> object:
        with self._torch.inference_mode():
            return module(*(self._torch.from_numpy(np.ascontiguousarray(a)).to(self._device) for a in arrays))

    def encode_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        out = self._run(lambda i, m: self._text_encoder(input_ids=i, attention_mask=m).last_hidden_state,
                        input_ids, attention_mask)
        return out.float().cpu().numpy()

    def predict_noise(self, expert: str, latents: np.ndarray, timestep: np.ndarray, text: np.ndarray) -> np.ndarray:
        model = self._experts[expert]
        out = self._run(lambda x, t, e: model(hidden_states=x, timestep=t, encoder_hidden_states=e,
                                              return_dict=False)[0], latents, timestep, text)
        return out.float().cpu().numpy()

    def decode_first(self, latent: np.ndarray) -> tuple[np.ndarray, DecoderState]:
        frames, *caches = self._run(self._decode_init, latent)
        return frames.float().cpu().numpy(), caches

    def decode_next(self, latent: np.ndarray, state: DecoderState) -> tuple[np.ndarray, DecoderState]:
        with self._torch.inference_mode():
            frames, *caches = self._decode_step(self._torch.from_numpy(latent).to(self._device), *state)
        return frames.float().cpu().numpy(), caches
