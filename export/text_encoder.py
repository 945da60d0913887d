"""UMT5 text encoder -> ``text_encoder.onnx``: (input_ids, attention_mask) -> last_hidden_state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.export import Dim

from wanrt.engine.spec import ModelSpec
from wanrt.export import onnx_io

GRAPH_NAME = "text_encoder"
MAX_BATCH = 2  # prompt + negative prompt, encoded together for CFG


class TextEncoderGraph(torch.nn.Module):
    """The encoder with plain tensor inputs and a single fp32 tensor output, as the serving backends call it."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()


def load_text_encoder(model_dir: Path, dtype: str = "fp32", device: str = "cpu") -> TextEncoderGraph:
    """UMT5 as transformers loads it in ``dtype``, on ``device``, with its feed-forward output ``wo`` in fp32.

    transformers keeps ``UMT5EncoderModel._keep_in_fp32_modules`` (``wo``) in fp32 only when loading fp16 (its
    ``_keep_in_fp32_modules_strict`` would apply to bf16 too, and UMT5 has none); wanrt keeps ``wo`` in fp32 for
    bf16 as well: T5's feed-forward outputs are the model's largest activations, and transformers' own forward
    then runs ``wo`` in fp32 and lets its output promote the residual stream, as in fp16.
    """
    from transformers import UMT5EncoderModel

    from wanrt.export.precision import keep_fp32, torch_dtype

    encoder = UMT5EncoderModel.from_pretrained(Path(model_dir) / "text_encoder", local_files_only=True,
                                               dtype=torch_dtype(dtype),
                                               device_map=None if device == "cpu" else device)
    if dtype != "fp32":
        keep_fp32(encoder, UMT5EncoderModel._keep_in_fp32_modules)
    return TextEncoderGraph(encoder.eval()).eval()


def export_text_encoder(
    model_dir: Path,
    out_dir: Path,
    spec: ModelSpec,
    *,
    external_data_threshold: int = onnx_io.EXTERNAL_DATA_THRESHOLD_BYTES,
    dtype: str = "fp32",
    device: str = "cpu",
    progress: onnx_io.Progress | None = None,
) -> onnx_io.ExportedGraph:
    """Exports and verifies the text encoder with dynamic batch (1..2) and text length, loaded in ``dtype`` on
    ``device``."""
    from transformers import UMT5Config

    from wanrt.export.precision import TEXT_ENCODER_FP32

    vocab = int(UMT5Config.from_pretrained(Path(model_dir) / "text_encoder", local_files_only=True).vocab_size)
    max_length = max(512, spec.text_length)
    batch = Dim("batch", min=1, max=MAX_BATCH)
    length = Dim("text_length", min=1, max=max_length)
    axes = {0: batch, 1: length}
    # Example sizes avoid 0 and 1, which torch.export would specialise into constants.
    example = _feeds(vocab, batch=2, length=16, seed=0)
    return onnx_io.export_verified(
        lambda traced: load_text_encoder(model_dir, traced, device), GRAPH_NAME, out_dir, example,
        output_names=["last_hidden_state"],
        dynamic_shapes={"input_ids": axes, "attention_mask": axes},
        # Shapes differ from the example: one short prompt alone, and a CFG pair at the serving length.
        parity_feeds=[_feeds(vocab, batch=1, length=7, seed=1), _feeds(vocab, batch=2, length=spec.text_length,
                                                                       seed=2)],
        external_data_threshold=external_data_threshold, dtype=dtype, fp32_rules=TEXT_ENCODER_FP32, device=device,
        progress=progress,
    )


def _feeds(vocab: int, *, batch: int, length: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(batch, length), dtype=np.int64)
    mask = np.ones((batch, length), dtype=np.int64)
    mask[1:, max(1, length // 3):] = 0  # later rows padded, as a short negative prompt would be
    return {"input_ids": ids, "attention_mask": mask}
