"""Random Wan LoRA files for tests, drawn from a seed: which blocks and layers they adapt, their ranks, alphas.

Written in the two layouts users bring: diffusers/peft keys (``transformer.blocks.0.attn1.to_q.lora_A.weight``)
and the original Wan / LightX2V layout (``diffusion_model.blocks.0.self_attn.q.lora_down.weight`` with
``.alpha`` and ``.diff_b``), which diffusers' Wan loader converts. Shapes come from the model itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# diffusers module -> Wan-original module, for the layers LoRAs adapt in each block.
ORIGINAL_NAMES = {
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k", "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o", "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
}


def write_lora(transformer, path: Path, seed: int, *, layout: str, strength: float = 0.5) -> dict:
    """Writes a LoRA for ``transformer`` (a WanTransformer3DModel) and returns what was drawn."""
    import torch
    from safetensors.torch import save_file

    rng = np.random.default_rng(seed)
    blocks = len(transformer.blocks)
    chosen_blocks = sorted(rng.choice(blocks, size=int(rng.integers(1, blocks + 1)), replace=False).tolist())
    names = sorted(ORIGINAL_NAMES)
    targets = sorted(rng.choice(names, size=int(rng.integers(2, len(names) + 1)), replace=False).tolist())
    rank = int(rng.integers(1, 9))
    with_bias = layout == "original" and bool(rng.integers(2))
    tensors: dict[str, torch.Tensor] = {}
    for block in chosen_blocks:
        for target in targets:
            layer = transformer.blocks[block].get_submodule(target)
            out_f, in_f = layer.weight.shape
            alpha = float(rng.uniform(0.5, 2.0) * rank)
            # Deltas of about `strength` times the layer's own weights: visible in the video, not explosive.
            scale = strength * float(layer.weight.detach().abs().mean()) / np.sqrt(rank) * 2
            down = torch.from_numpy(rng.standard_normal((rank, in_f)).astype(np.float32) / np.sqrt(in_f))
            up = torch.from_numpy(rng.standard_normal((out_f, rank)).astype(np.float32) * scale * np.sqrt(in_f / 3))
            if layout == "diffusers":
                key = f"transformer.blocks.{block}.{target}"
                tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"] = down, up
            else:
                key = f"diffusion_model.blocks.{block}.{ORIGINAL_NAMES[target]}"
                tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"] = down, up
                tensors[f"{key}.alpha"] = torch.tensor(alpha)
                if with_bias and rng.random() < 0.7:  # LightX2V's files give some layers diff_b, not all
                    tensors[f"{key}.diff_b"] = torch.from_numpy(rng.standard_normal(out_f).astype(np.float32) * 0.02)
    save_file({k: v.to(torch.float32).contiguous() for k, v in tensors.items()}, str(path))  # as real files: one dtype
    drawn = {"seed": seed, "layout": layout, "blocks": chosen_blocks, "targets": targets, "rank": rank,
             "bias": with_bias}
    print(f"LoRA {path.name}: {drawn}")
    return drawn
