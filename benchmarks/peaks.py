"""Peak throughputs of known GPUs and the published latencies of other Wan systems (theirs, not measured here)."""

from __future__ import annotations

# Dense (no 2:4 sparsity) BF16 tensor-core TFLOP/s from NVIDIA's data sheets, matched against
# torch.cuda.get_device_name() in order: the first fragment found in the name wins.
GPU_BF16_TFLOPS = (
    ("H200 NVL", 835.5),
    ("H200", 989.4),  # H200 SXM
    ("H100 NVL", 835.5),
    ("H100 PCIe", 756.5),
    ("H100", 989.4),  # H100 SXM5
    ("A100", 312.0),
)

# Published latencies of other systems, per denoising step and (where published) per clip. Each is quoted from
# its source, for comparison only.
PEERS = (
    {"system": "SGLang", "gpu": "1x H200", "model": "Wan2.2-T2V-A14B", "shape": "832x480, 81 frames, BF16",
     "s_per_step": 5.14, "clip_s": 264, "source": "sgl-project/sglang PR #25483 (264 s for 50 steps)"},
    {"system": "LightX2V", "gpu": "1x H200", "model": "Wan2.1-I2V-14B, 4-step distilled",
     "shape": "480p, FP8, SageAttention2", "s_per_step": None, "clip_s": 14,
     "source": "LightX2V's published H200 figures (191 s at 40 steps with FP8 and SageAttention2)"},
    {"system": "LightX2V", "gpu": "1x H100", "model": "Wan2.1-14B", "shape": "480p, 81 frames",
     "s_per_step": 5.18, "source": "LightX2V README benchmark table (github.com/ModelTC/lightx2v)"},
    {"system": "SGLang", "gpu": "1x H100", "model": "Wan2.1-14B", "shape": "480p, 81 frames",
     "s_per_step": 6.13, "source": "LightX2V README benchmark table (github.com/ModelTC/lightx2v)"},
    {"system": "FastVideo", "gpu": "1x H100", "model": "Wan2.1-14B", "shape": "480p, 81 frames",
     "s_per_step": 7.35, "source": "LightX2V README benchmark table (github.com/ModelTC/lightx2v)"},
    {"system": "diffusers", "gpu": "1x H100", "model": "Wan2.1-14B", "shape": "480p, 81 frames",
     "s_per_step": 9.77, "source": "LightX2V README benchmark table (github.com/ModelTC/lightx2v)"},
)


def known_gpu_peak(device_name: str) -> float | None:
    """BF16 dense TFLOP/s of a GPU this table knows, else None (pass --peak-tflops)."""
    for fragment, tflops in GPU_BF16_TFLOPS:
        if fragment in device_name:
            return tflops
    return None


def cpu_gemm_ceiling_tflops(n: int = 2048, runs: int = 5) -> float:
    """The best fp32 GEMM rate this process reaches (numpy's BLAS, and torch's where installed): the CPU's
    practical peak, measured, since no data sheet names the cores and clocks a shared machine gives us."""
    import time

    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    multiplies = [lambda: a @ a]
    try:
        import torch

        t = torch.from_numpy(a)
        multiplies.append(lambda: t @ t)
    except ImportError:
        pass
    best = float("inf")
    for multiply in multiplies:
        multiply()
        for _ in range(runs):
            start = time.perf_counter()
            multiply()
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e12
