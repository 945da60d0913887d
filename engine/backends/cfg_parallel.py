"""CFG-parallel: the cond and uncond halves of a guided step run on two devices at once.

A guided step is one batch-of-two expert call (pipeline._guided_prediction); here its two rows go to two
backends, each holding the whole model on its own device, and are put back in order. Everything else (text,
unguided steps, the decoder) runs on the first device, so the pipeline and its numbers are unchanged: each
row sees exactly the computation it would see in the batch, which makes the video the same as on one
device (bit for bit where a backend's kernels do not depend on the batch size, as onnxruntime's CPU ones).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from wanrt.engine.backends.base import Backend, DecoderState


class CfgParallelBackend:
    """Backend over two backends of the same model on two devices; guided expert calls are split by row."""

    def __init__(self, primary: Backend, secondary: Backend) -> None:
        self.name = primary.name
        self._primary = primary
        self._secondary = secondary
        # One thread: the secondary device's half runs while the calling thread runs the primary's.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wanrt-cfg")

    def encode_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self._primary.encode_text(input_ids, attention_mask)

    def predict_noise(self, expert: str, latents: np.ndarray, timestep: np.ndarray, text: np.ndarray) -> np.ndarray:
        if latents.shape[0] != 2:
            return self._primary.predict_noise(expert, latents, timestep, text)
        uncond = self._pool.submit(self._secondary.predict_noise, expert, latents[1:], timestep[1:], text[1:])
        try:
            cond = self._primary.predict_noise(expert, latents[:1], timestep[:1], text[:1])
        finally:
            uncond_noise = uncond.result()  # never leave the other device's call running behind an error
        return np.concatenate([cond, uncond_noise])

    def decode_first(self, latent: np.ndarray) -> tuple[np.ndarray, DecoderState]:
        return self._primary.decode_first(latent)

    def decode_next(self, latent: np.ndarray, state: DecoderState) -> tuple[np.ndarray, DecoderState]:
        return self._primary.decode_next(latent, state)
