"""The torch backend on a GPU: bf16 with the libraries' own fp32 islands, placed by the memory plan (offload by
option). Here on the CPU with dtype bf16 asked for explicitly: the dtypes, the plan's counting and the options."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from wanrt.engine.backends.torch import TorchBackend  # noqa: E402
from wanrt.engine.tensorrt.memory import GIB  # noqa: E402
from wanrt.errors import InvalidRequestError  # noqa: E402

EXPERTS = ("transformer", "transformer_2")


@pytest.fixture(scope="module")
def bf16_backend(tiny_model_dir) -> TorchBackend:
    return TorchBackend(tiny_model_dir, EXPERTS, device="cpu", dtype="bf16")


def test_experts_run_bf16_with_diffusers_fp32_islands(bf16_backend):
    expert = bf16_backend._experts["transformer"]
    kept = set(type(expert)._keep_in_fp32_modules)
    dtypes = {name: t.dtype for name, t in expert.named_parameters()}
    islands = {n for n in dtypes if set(n.split(".")) & kept}
    assert islands and all(dtypes[n] == torch.float32 for n in islands)
    assert all(d == torch.bfloat16 for n, d in dtypes.items() if n not in islands)
    assert next(bf16_backend._decode_init.parameters()).dtype == torch.float32  # the VAE decoder stays fp32
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((2, 16, 2, 8, 8), dtype=np.float32)
    text = rng.standard_normal((2, 8, expert.config.text_dim), dtype=np.float32)
    out = bf16_backend.predict_noise("transformer", latents, np.full(2, 900.0, np.float32), text)
    assert out.dtype == np.float32 and out.shape == latents.shape and np.isfinite(out).all()


def test_its_plan_counts_each_tensor_at_its_dtype(bf16_backend):
    plan = bf16_backend.plan(17, 64, 64, 80 * GIB)
    by = {e.graph: e.weights for e in plan.engines}
    expert = bf16_backend._experts["transformer"]
    exact = sum(t.numel() * t.element_size() for t in (*expert.parameters(), *expert.buffers()))
    assert by["transformer"] == exact
    assert exact < 4 * sum(t.numel() for t in expert.parameters())  # bf16, not the fp32 it used to load
    encoder = bf16_backend._text_encoder
    assert by["text_encoder"] == sum(p.numel() * p.element_size() for p in encoder.parameters())
    decoder = bf16_backend._decode_init
    assert by["vae_decoder"] == sum(p.numel() * 4 for p in decoder.parameters())  # the VAE's encoder not counted
    assert plan.vae_caches > 0 and plan.fits and plan.residency == "resident"


def test_offload_options_need_a_gpu(tiny_model_dir):
    for options in ({"residency": "per-stage"}, {"text_encoder": "release"}, {"text_encoder": "cpu"}):
        with pytest.raises(InvalidRequestError, match="needs --device cuda"):
            TorchBackend(tiny_model_dir, EXPERTS, device="cpu", **options)
    with pytest.raises(InvalidRequestError, match="dtype: must be one of bf16, fp32"):
        TorchBackend(tiny_model_dir, EXPERTS, device="cpu", dtype="fp16")
